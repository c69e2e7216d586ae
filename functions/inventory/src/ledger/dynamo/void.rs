//! The void of a lapsed hold: a marker written under the order's own key
//! unless the order is there, so exactly one of the two ever exists.

use super::schema::{bucket_pk, order_from_item, order_sk};
use super::{classify, get_s, n, s, Inner};
use crate::gate::Hold;
use crate::ledger::{HoldTruth, LedgerError};
use crate::sale::SaleId;

impl Inner {
    pub(super) async fn void(&self, sale: &SaleId, hold: &Hold) -> Result<HoldTruth, LedgerError> {
        let Some(layout) = self.layout(sale).await? else {
            return Err(LedgerError::Definite(format!(
                "no sale {sale} in the ledger"
            )));
        };
        let pk = bucket_pk(sale, layout.user_bucket(&hold.user_id));
        let sk = order_sk(&hold.user_id, &hold.hold_id);
        // A void replaces only the void of an older attempt (or repeats its
        // own): a late void of an older attempt must never overwrite a newer
        // one, or the newer attempt's order could be written after all.
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(&pk))
            .item("sk", s(&sk))
            .item("status", s("void"))
            .item("attempt", n(hold.expires_ms))
            .condition_expression(
                "attribute_not_exists(pk) OR (#status = :void AND attempt <= :attempt)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":void", s("void"))
            .expression_attribute_values(":attempt", n(hold.expires_ms))
            .send()
            .await;
        match result {
            Ok(_) => Ok(HoldTruth::Voided),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                match self.get(pk, sk).await?.as_ref() {
                    // A newer attempt was voided: this older one can never
                    // be written either (`items::order_put`).
                    Some(item) if get_s(item, "status") == Some("void") => Ok(HoldTruth::Voided),
                    Some(item) => {
                        order_from_item(item)
                            .map(HoldTruth::Confirmed)
                            .ok_or_else(|| {
                                LedgerError::Uncertain(
                                    "order item unreadable while resolving".into(),
                                )
                            })
                    }
                    None => Err(LedgerError::Uncertain(
                        "order changed while resolving its hold".into(),
                    )),
                }
            }
            Err(e) => Err(classify(e)),
        }
    }
}
