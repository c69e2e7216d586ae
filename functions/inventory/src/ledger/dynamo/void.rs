//! The void of a lapsed hold: a marker written under the order's own name
//! (`o_<hold>` on the user's item) unless the order is there, so exactly one
//! of the two ever exists.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::schema::{bucket_pk, entry, order_attr, user_sk, Entry};
use super::{classify, n, s, Inner};
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
        let sk = user_sk(&hold.user_id);
        let marker = HashMap::from([
            ("status".to_owned(), s("void")),
            ("attempt".to_owned(), n(hold.expires_ms)),
        ]);
        // A void replaces only the void of an older attempt (or repeats its
        // own): a late void of an older attempt must never overwrite a newer
        // one, or the newer attempt's order could be written after all.
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .key("sk", s(&sk))
            .update_expression("SET #o = :marker")
            .condition_expression(
                "attribute_not_exists(#o) OR (#o.#status = :void AND #o.attempt <= :attempt)",
            )
            .expression_attribute_names("#o", order_attr(&hold.hold_id))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":marker", AttributeValue::M(marker))
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
                let item = self.get(pk, sk).await?;
                match item.as_ref().and_then(|i| entry(i, &hold.hold_id)) {
                    // A newer attempt was voided: this older one can never
                    // be written either (`items::own_items`).
                    Some(Entry::Void { .. }) => Ok(HoldTruth::Voided),
                    Some(Entry::Confirmed(order)) => Ok(HoldTruth::Confirmed(order)),
                    None => Err(LedgerError::Uncertain(
                        "order changed while resolving its hold".into(),
                    )),
                }
            }
            Err(e) => Err(classify(e)),
        }
    }
}
