//! The conditional transaction that writes an order: THIS is the ledger's
//! half of "never oversell" (the gate's is `gate/gate.lua`).
//!
//! One order is four items, each with a condition, all or nothing:
//!
//! | # | item                        | condition                                              |
//! |---|-----------------------------|--------------------------------------------------------|
//! | 0 | `ORDER#<user>#<hold>` put    | no order there, or only the void of an *older* attempt |
//! | 1 | `SALE` counter update        | `confirmed + q <= stock_total`, inside the sale window |
//! | 2 | `USER#<user>` counter update | `confirmed + q <= per_user_limit`                      |
//! | 3 | `IDEM#<key>` put (if keyed)  | the key names no order yet                             |
//!
//! A group-committed batch shares one sale-counter update (item 0 of the
//! batch) and carries each order's other items after it; [`Layout`] says
//! which order each item belongs to, so a refusal can be pinned on the
//! orders that caused it.

use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};

use super::{
    build_error, get_s, n, order_from_item, order_sk, s, sale_pk, time, ConfirmOutcome,
    ConfirmRequest, Inner, LedgerError,
};
use crate::sale::{rfc3339, OrderId, SaleId};

/// Which order of a batch each transaction item belongs to (`None`: the
/// shared sale counter), and where it sits in that order's own layout.
pub(super) struct Layout {
    pub owners: Vec<Option<(usize, usize)>>,
}

/// An order's own items at most: order, user counter, idempotency key.
pub(super) const MAX_ORDER_ITEMS: usize = 3;

/// The cancellation code DynamoDB gives an item whose condition failed.
pub(super) const CONDITION_FAILED: &str = "ConditionalCheckFailed";

fn failed_at(codes: &[Option<String>], i: usize) -> bool {
    codes.get(i).and_then(|c| c.as_deref()) == Some(CONDITION_FAILED)
}

/// `confirmed += qty` on the sale, only while that stays within the stock
/// and every order of the write was taken inside the sale's window (by the
/// gate's clock: `created_at` is when the gate granted the hold).
struct SaleWrite<'a> {
    sale: &'a SaleId,
    qty: u64,
    stock_total: u64,
    earliest: String,
    latest: String,
}

impl Inner {
    fn order_put(&self, req: &ConfirmRequest) -> Result<Put, LedgerError> {
        let o = &req.order;
        let mut put = Put::builder()
            .table_name(&self.table)
            .item("pk", s(sale_pk(o.sale_id())))
            .item("sk", s(order_sk(&o.user_id, &o.order_id.hold_id)))
            .item("status", s("confirmed"))
            .item("order_id", s(o.order_id.to_string()))
            .item("sale_id", s(o.sale_id().to_string()))
            .item("user_id", s(&o.user_id))
            .item("quantity", n(o.quantity))
            .item("created_at", s(rfc3339(o.created_at)))
            .item("attempt", n(req.attempt))
            // Only the void of an *older* attempt of this id may be replaced
            // (its hold was released; this is a new hold of the same key). A
            // void of this attempt or a newer one, or an order, may not.
            .condition_expression(
                "attribute_not_exists(pk) OR (#status = :void AND attempt < :attempt)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":void", s("void"))
            .expression_attribute_values(":attempt", n(req.attempt));
        if let Some(key) = &o.idempotency_key {
            put = put.item("idempotency_key", s(key));
        }
        put.build().map_err(build_error)
    }

    fn sale_update(&self, w: SaleWrite<'_>) -> Result<Update, LedgerError> {
        Update::builder()
            .table_name(&self.table)
            .key("pk", s(sale_pk(w.sale)))
            .key("sk", s("SALE"))
            .update_expression("SET confirmed = confirmed + :q")
            .condition_expression(
                "attribute_exists(pk) AND confirmed <= :max_before AND starts_at <= :earliest \
                 AND (attribute_not_exists(ends_at) OR ends_at > :latest)",
            )
            .expression_attribute_values(":q", n(w.qty))
            .expression_attribute_values(":max_before", n(w.stock_total as i64 - w.qty as i64))
            // RFC 3339 in one fixed form (UTC, milliseconds) sorts as time.
            .expression_attribute_values(":earliest", s(w.earliest))
            .expression_attribute_values(":latest", s(w.latest))
            .build()
            .map_err(build_error)
    }

    /// The order's own items: order, user counter, idempotency key (the
    /// layout of one order without its sale counter).
    fn own_items(&self, req: &ConfirmRequest) -> Result<Vec<TransactWriteItem>, LedgerError> {
        let o = &req.order;
        let qty = u64::from(o.quantity);
        let user_update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(sale_pk(o.sale_id())))
            .key("sk", s(format!("USER#{}", o.user_id)))
            .update_expression("SET confirmed = if_not_exists(confirmed, :zero) + :q")
            .condition_expression("attribute_not_exists(confirmed) OR confirmed <= :max_before")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":q", n(qty))
            .expression_attribute_values(
                ":max_before",
                n(i64::from(req.per_user_limit) - qty as i64),
            )
            .build()
            .map_err(build_error)?;
        let mut items = vec![
            TransactWriteItem::builder()
                .put(self.order_put(req)?)
                .build(),
            TransactWriteItem::builder().update(user_update).build(),
        ];
        if let Some(key) = &o.idempotency_key {
            let idem = Put::builder()
                .table_name(&self.table)
                .item("pk", s(format!("USER#{}", o.user_id)))
                .item("sk", s(format!("IDEM#{key}")))
                .item("order_id", s(o.order_id.to_string()))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().put(idem).build());
        }
        Ok(items)
    }

    /// One sale-counter update for the whole batch, then each order's own
    /// items, and which order each item belongs to. A batch of one is the
    /// single-order transaction of the table above (counter first).
    pub(super) fn batch_items(
        &self,
        batch: &[&ConfirmRequest],
    ) -> Result<(Vec<TransactWriteItem>, Layout), LedgerError> {
        let first = batch
            .first()
            .ok_or_else(|| LedgerError::Definite("empty batch".into()))?;
        let created = batch.iter().map(|r| r.order.created_at);
        let earliest = created.clone().min().unwrap_or(first.order.created_at);
        let latest = created.max().unwrap_or(first.order.created_at);
        let counter = self.sale_update(SaleWrite {
            sale: first.order.sale_id(),
            qty: batch.iter().map(|r| u64::from(r.order.quantity)).sum(),
            stock_total: first.stock_total,
            earliest: rfc3339(earliest),
            latest: rfc3339(latest),
        })?;
        let mut items = vec![TransactWriteItem::builder().update(counter).build()];
        let mut owners = vec![None];
        for (i, req) in batch.iter().enumerate() {
            let own = self.own_items(req)?;
            owners.extend((0..own.len()).map(|k| Some((i, k))));
            items.extend(own);
        }
        debug_assert!(items.len() <= 1 + batch.len() * MAX_ORDER_ITEMS);
        Ok((items, Layout { owners }))
    }

    /// Why one order was refused, from the cancellation codes of its own
    /// items (`own[k]`: 0 order, 1 user, 2 key) and whether the sale
    /// counter failed; checked in order of meaning.
    pub(super) async fn explain_refusal(
        &self,
        req: &ConfirmRequest,
        own: &[Option<String>],
        counter_failed: bool,
    ) -> Result<ConfirmOutcome, LedgerError> {
        let o = &req.order;
        if failed_at(own, 0) {
            let item = self
                .get(
                    sale_pk(o.sale_id()),
                    order_sk(&o.user_id, &o.order_id.hold_id),
                )
                .await?;
            return Ok(match item.as_ref().and_then(order_from_item) {
                Some(existing) => ConfirmOutcome::AlreadyConfirmed(existing),
                None => ConfirmOutcome::Voided,
            });
        }
        if failed_at(own, 2) {
            if let Some(key) = &o.idempotency_key {
                let idem = self
                    .get(format!("USER#{}", o.user_id), format!("IDEM#{key}"))
                    .await?;
                let other = idem
                    .as_ref()
                    .and_then(|i| get_s(i, "order_id"))
                    .and_then(OrderId::parse);
                if let Some(other) = other {
                    if let Some(existing) = self.get_order(&other, &o.user_id).await? {
                        return Ok(ConfirmOutcome::KeyUsed(existing));
                    }
                }
                return Err(LedgerError::Definite(format!(
                    "idempotency record for {key} names no order"
                )));
            }
        }
        if counter_failed {
            return self.explain_counter(req).await;
        }
        if failed_at(own, 1) {
            return Ok(ConfirmOutcome::LimitReached);
        }
        Err(LedgerError::Definite(
            "transaction refused for no stated reason".into(),
        ))
    }

    /// The sale counter refused: the window, or the stock?
    async fn explain_counter(&self, req: &ConfirmRequest) -> Result<ConfirmOutcome, LedgerError> {
        let sale = self
            .get(sale_pk(req.order.sale_id()), "SALE".into())
            .await?;
        let at = req.order.created_at;
        let outside = sale.as_ref().is_some_and(|item| {
            let starts = get_s(item, "starts_at").and_then(time);
            let ends = get_s(item, "ends_at").and_then(time);
            starts.is_some_and(|s| at < s) || ends.is_some_and(|e| at >= e)
        });
        Ok(if outside {
            ConfirmOutcome::NotLive
        } else {
            ConfirmOutcome::SoldOut
        })
    }
}

/// Splits a cancelled batch's codes into the counter's and each order's own.
pub(super) fn codes_by_order(
    layout: &Layout,
    codes: &[Option<String>],
    orders: usize,
) -> (bool, Vec<Vec<Option<String>>>) {
    let mut own = vec![Vec::new(); orders];
    let mut counter_failed = false;
    for (i, owner) in layout.owners.iter().enumerate() {
        let code = codes.get(i).cloned().flatten();
        match owner {
            None => counter_failed |= code.as_deref() == Some(CONDITION_FAILED),
            Some((order, k)) => {
                let slots = &mut own[*order];
                if slots.len() <= *k {
                    slots.resize(k + 1, None);
                }
                slots[*k] = code;
            }
        }
    }
    (counter_failed, own)
}

/// Does this order's own part of a cancelled batch carry a failed condition?
pub(super) fn refused(own: &[Option<String>]) -> bool {
    own.iter().any(|c| c.as_deref() == Some(CONDITION_FAILED))
}
