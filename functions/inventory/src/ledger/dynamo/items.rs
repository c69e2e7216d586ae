//! The conditional transaction that writes orders: THIS is the ledger's
//! half of "never oversell" (the gate's is `gate/gate.lua`).
//!
//! A batch of orders is one transaction, all or nothing:
//!
//! | item                                  | condition                                              |
//! |---------------------------------------|--------------------------------------------------------|
//! | `STOCK` of each bucket charged        | `confirmed + units <= capacity`, inside the sale window |
//! | per order: its user's `USER#<user>` item, `o_<hold>` set | no order there, or only the void of an *older* attempt; and `confirmed + q <= per_user_limit` |
//!
//! One item per order: a keyed order's hold id is a hash of (user, key), so
//! `o_<hold>` on the user's item of the sale is also the key's record in
//! that sale (see `schema.rs` on the scope of a key).
//!
//! The counters' capacities add up to the stock, so no plan of charges can
//! make the ledger hold more than the stock. [`Layout`] says which order
//! (or counter) each item belongs to, so a refusal can be pinned on the
//! orders that caused it.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};

use super::schema::{bucket_pk, entry, order_attr, user_sk, Entry, SaleLayout, STOCK_SK};
use super::stock::Plan;
use super::{build_error, n, s, Inner};
use crate::ledger::{ConfirmOutcome, ConfirmRequest, LedgerError};
use crate::sale::{rfc3339, SaleId};

/// What each transaction item is: a bucket counter, or the user item of
/// the batch's order `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    Counter(u16),
    Order(usize),
}

pub(super) struct Layout {
    pub owners: Vec<Owner>,
}

/// An order set on its user's item, and the user's total raised.
pub const ORDER_UPDATE: &str =
    "SET #o = :entry, confirmed = if_not_exists(confirmed, :zero) + :q, \
     user_id = :user, sale_id = :sale, created_at = if_not_exists(created_at, :created)";

/// Only the void of an *older* attempt of this id may be replaced (its hold
/// was released; this is a new hold of the same key); a void of this
/// attempt or a newer one, or an order, may not. And the user's total stays
/// within the limit.
pub const ORDER_CONDITION: &str =
    "(attribute_not_exists(#o) OR (#o.#status = :void AND #o.attempt < :attempt)) \
     AND (attribute_not_exists(confirmed) OR confirmed <= :max_before)";

/// Items in one transaction at most (DynamoDB's limit).
pub(super) const MAX_ITEMS: usize = 100;

/// The cancellation code DynamoDB gives an item whose condition failed.
pub(super) const CONDITION_FAILED: &str = "ConditionalCheckFailed";

impl Inner {
    /// `confirmed += units` on bucket k, only while that stays within its
    /// capacity and every order of the batch was taken inside the window
    /// (by the gate's clock: `created_at` is when the gate granted the hold).
    fn counter_update(
        &self,
        sale: &SaleId,
        layout: SaleLayout,
        (k, units): (u16, u64),
        (earliest, latest): (&str, &str),
    ) -> Result<Update, LedgerError> {
        Update::builder()
            .table_name(&self.table)
            .key("pk", s(bucket_pk(sale, k)))
            .key("sk", s(STOCK_SK))
            .update_expression("SET confirmed = confirmed + :q")
            .condition_expression(
                "attribute_exists(pk) AND confirmed <= :max_before AND starts_at <= :earliest \
                 AND (attribute_not_exists(ends_at) OR ends_at > :latest)",
            )
            .expression_attribute_values(":q", n(units))
            .expression_attribute_values(":max_before", n(layout.capacity(k) as i64 - units as i64))
            // RFC 3339 in one fixed form (UTC, milliseconds) sorts as time.
            .expression_attribute_values(":earliest", s(earliest))
            .expression_attribute_values(":latest", s(latest))
            .build()
            .map_err(build_error)
    }

    /// The order's item: its user's item, the order set on it and the
    /// user's total raised within the limit, in one conditional update.
    fn order_item(
        &self,
        layout: SaleLayout,
        req: &ConfirmRequest,
    ) -> Result<TransactWriteItem, LedgerError> {
        let o = &req.order;
        let qty = u64::from(o.quantity);
        let mut entry = HashMap::from([
            ("status".to_owned(), s("confirmed")),
            ("order_id".to_owned(), s(o.order_id.to_string())),
            ("quantity".to_owned(), n(o.quantity)),
            ("created_at".to_owned(), s(rfc3339(o.created_at))),
            ("attempt".to_owned(), n(req.attempt)),
        ]);
        if let Some(key) = &o.idempotency_key {
            entry.insert("idempotency_key".to_owned(), s(key));
        }
        let user_update = Update::builder()
            .table_name(&self.table)
            .key(
                "pk",
                s(bucket_pk(o.sale_id(), layout.user_bucket(&o.user_id))),
            )
            .key("sk", s(user_sk(&o.user_id)))
            .update_expression(ORDER_UPDATE)
            .condition_expression(ORDER_CONDITION)
            .expression_attribute_names("#o", order_attr(&o.order_id.hold_id))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":entry", AttributeValue::M(entry))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":q", n(qty))
            .expression_attribute_values(":user", s(&o.user_id))
            .expression_attribute_values(":sale", s(o.sale_id().to_string()))
            .expression_attribute_values(":created", s(rfc3339(o.created_at)))
            .expression_attribute_values(":void", s("void"))
            .expression_attribute_values(":attempt", n(req.attempt))
            .expression_attribute_values(
                ":max_before",
                n(i64::from(req.per_user_limit) - qty as i64),
            )
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().update(user_update).build())
    }

    /// The counters of the plan, then each order's item, and which order
    /// each item belongs to.
    pub(super) fn batch_items(
        &self,
        layout: SaleLayout,
        batch: &[&ConfirmRequest],
        plan: &Plan,
    ) -> Result<(Vec<TransactWriteItem>, Layout), LedgerError> {
        let first = batch
            .first()
            .ok_or_else(|| LedgerError::Definite("empty batch".into()))?;
        let sale = first.order.sale_id();
        let created = batch.iter().map(|r| r.order.created_at);
        let earliest = rfc3339(created.clone().min().unwrap_or(first.order.created_at));
        let latest = rfc3339(created.max().unwrap_or(first.order.created_at));
        let mut items = Vec::new();
        let mut owners = Vec::new();
        for &charge in &plan.charges {
            let update = self.counter_update(sale, layout, charge, (&earliest, &latest))?;
            items.push(TransactWriteItem::builder().update(update).build());
            owners.push(Owner::Counter(charge.0));
        }
        for (i, req) in batch.iter().enumerate() {
            items.push(self.order_item(layout, req)?);
            owners.push(Owner::Order(i));
        }
        if items.len() > MAX_ITEMS {
            return Err(LedgerError::Definite(format!(
                "a transaction of {} items (at most {MAX_ITEMS})",
                items.len()
            )));
        }
        Ok((items, Layout { owners }))
    }

    /// Why one order was refused, its user item having failed its
    /// condition: this order (or a void of it) is there, or the user's
    /// total would pass the limit.
    pub(super) async fn explain_refusal(
        &self,
        layout: SaleLayout,
        req: &ConfirmRequest,
    ) -> Result<ConfirmOutcome, LedgerError> {
        let o = &req.order;
        let pk = bucket_pk(o.sale_id(), layout.user_bucket(&o.user_id));
        let item = self.get(pk, user_sk(&o.user_id)).await?;
        Ok(
            match item.as_ref().and_then(|i| entry(i, &o.order_id.hold_id)) {
                Some(Entry::Confirmed(existing)) => ConfirmOutcome::AlreadyConfirmed(existing),
                Some(Entry::Void { attempt }) if attempt >= req.attempt => ConfirmOutcome::Voided,
                _ => ConfirmOutcome::LimitReached,
            },
        )
    }
}

/// A cancelled batch's codes: the counters that refused, the counters that
/// were contended, and each order's code.
pub(super) struct Codes {
    pub refused_counters: Vec<u16>,
    pub contended_counters: Vec<u16>,
    pub orders: Vec<Option<String>>,
}

pub(super) fn codes_by_order(layout: &Layout, codes: &[Option<String>], orders: usize) -> Codes {
    let mut out = Codes {
        refused_counters: Vec::new(),
        contended_counters: Vec::new(),
        orders: vec![None; orders],
    };
    for (idx, owner) in layout.owners.iter().enumerate() {
        let code = codes.get(idx).cloned().flatten();
        match *owner {
            Owner::Counter(k) => match code.as_deref() {
                Some(CONDITION_FAILED) => out.refused_counters.push(k),
                Some("TransactionConflict") => out.contended_counters.push(k),
                _ => {}
            },
            Owner::Order(i) => {
                if let Some(slot) = out.orders.get_mut(i) {
                    *slot = code;
                }
            }
        }
    }
    out
}

/// Did this order's item fail its condition in a cancelled batch?
pub(super) fn refused(code: &Option<String>) -> bool {
    code.as_deref() == Some(CONDITION_FAILED)
}
