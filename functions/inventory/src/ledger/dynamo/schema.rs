//! The table layout (version 2): a sale's writes spread over `buckets`
//! partition keys, so no key and no item takes more than its share.
//!
//! | pk                  | sk                     | what                                                  |
//! |---------------------|------------------------|-------------------------------------------------------|
//! | `SALE#<sale>`       | `SALE`                 | the sale; `layout` 2, `ledger_buckets` = B. Read-only once written |
//! | `SALE#<sale>#P<k>`  | `STOCK`                | bucket k's `capacity` (its share of the stock) and `confirmed` units, the sale window copied |
//! | `SALE#<sale>#P<k>`  | `USER#<user>`          | one user in the sale (users whose hash lands on k): their `confirmed` units, and each of their orders or void markers as an attribute `o_<hold>` |
//!
//! A user's orders live on their user item, so an order is *one* conditional
//! update of *one* item (the order absent, and the user's total within the
//! limit): 2 WCU on real DynamoDB, where the first layout wrote three items
//! and a shared counter. Per-user limits are small, so the item stays small
//! (and DynamoDB caps it at 400 KB).
//!
//! **An Idempotency-Key is scoped to its user and its sale.** A keyed
//! order's hold id is a hash of (user, key), so the order's attribute is
//! the key's record in the sale: a replay finds it, and the same key with
//! another quantity is refused (`409 idempotency_key_reused`). The same key
//! on *another* sale is another request and makes its own order there. (An
//! earlier version kept an `IDEM#<key>` item per user to refuse that too:
//! a second item in every order's transaction, which cost DynamoDB Local
//! 40 % of its throughput and real DynamoDB 2 more WCU per order, to catch
//! a client bug the contract does not ask about. Such items written by it
//! are never read.)
//!
//! Why it holds at a stampede's rate, for one hot sale on real DynamoDB
//! (1,000 WCU/s per partition key, a transactional write is 2 WCU per KB,
//! transactions on one item conflict):
//! - a buyer's user item sits on the partition of their user's hash: B
//!   partitions share the orders evenly, and two buyers never write the
//!   same item;
//! - the stock is B counters, each capped at its share, so their sum (what
//!   the ledger holds) can never pass `stock_total`. A committer charges its
//!   batch to a bucket of its own choosing and moves away from a bucket
//!   another instance is writing (a conflict) or that is full (see
//!   `stock.rs`), so instances rarely meet on a counter;
//! - the `SALE` item is never written during the sale: the window is
//!   checked on the bucket counters, which carry a copy of it.
//!
//! Rebuilds read the B partitions one after another, page by page, with
//! strongly consistent queries. The `by_user` index (user_id, created_at:
//! the user's first order in the sale) lists one user's sales, and so their
//! orders, across sales.
//!
//! **The old layout** (version 1: every item of a sale under `SALE#<sale>`,
//! one `confirmed` counter on the `SALE` item) used the same key schema, so
//! `migrate` has nothing to convert and the table stays. A sale written by
//! it still reads as a definition, but its orders are not read and no order
//! is written to it: a checkout on it is refused (`LedgerError::Definite`,
//! a `503`), and the log says why. Flash sales are short; create such a
//! sale again under this version.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType,
};
use chrono::{DateTime, Utc};

use super::{get_n, get_s, time, Inner, Item};
use crate::sale::{HoldId, Order, OrderId, SaleDefinition, SaleId};

/// The layout this code writes, stored on every sale it creates.
pub(super) const LAYOUT: u32 = 2;

/// Buckets per sale unless configured (`LEDGER_BUCKETS`). An order costs
/// its user's partition 2 WCU (one transactional write of the user item),
/// so 32 partitions take ~16,000 orders a second; 32 counters leave room for ~16
/// committers to charge one each, rarely meeting.
pub const DEFAULT_BUCKETS: u16 = 32;

/// Units a bucket holds at least (unless the sale has fewer): two full
/// batches of orders.
pub const MIN_BUCKET_UNITS: u64 = 64;

/// A sale is created in one transaction: its item and one counter per
/// bucket, within DynamoDB's 100 items per transaction.
pub const MAX_BUCKETS: u16 = 99;

/// The layout of one sale, fixed when it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SaleLayout {
    pub buckets: u16,
    pub stock_total: u64,
    /// The sale window, for orders taken outside it (by the gate's clock).
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
}

impl SaleLayout {
    /// The configured number of buckets, but never so many that a bucket
    /// holds less than [`MIN_BUCKET_UNITS`]: a bucket that runs dry after a
    /// batch or two sends its committer looking for another every few
    /// transactions, which costs a small sale more than spreading gains it
    /// (load/capacity.md, "A ledger whose writes spread").
    pub fn for_new_sale(sale: &SaleDefinition, configured: u16) -> Self {
        let max = u64::from(configured.clamp(1, MAX_BUCKETS));
        let by_units = sale.stock_total / MIN_BUCKET_UNITS;
        Self {
            buckets: by_units.clamp(1, max) as u16,
            stock_total: sale.stock_total,
            starts_at: sale.starts_at,
            ends_at: sale.ends_at,
        }
    }

    /// Whether an order whose hold the gate granted at `at` was taken
    /// inside the sale's window.
    pub fn in_window(&self, at: DateTime<Utc>) -> bool {
        at >= self.starts_at && self.ends_at.is_none_or(|end| at < end)
    }

    /// Bucket k's share of the stock: equal shares, the remainder to the
    /// first buckets.
    pub fn capacity(&self, k: u16) -> u64 {
        let n = u64::from(self.buckets.max(1));
        self.stock_total / n + u64::from(u64::from(k) < self.stock_total % n)
    }

    /// The partition of a user's items in this sale: a stable hash (FNV-1a)
    /// of the user id, so every instance finds them without a lookup.
    pub fn user_bucket(&self, user_id: &str) -> u16 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in user_id.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        (hash % u64::from(self.buckets.max(1))) as u16
    }
}

pub(super) fn sale_pk(sale: &SaleId) -> String {
    format!("SALE#{sale}")
}

/// The partition key of bucket k of a sale.
pub(super) fn bucket_pk(sale: &SaleId, k: u16) -> String {
    format!("SALE#{sale}#P{k}")
}

pub(super) const STOCK_SK: &str = "STOCK";

pub(super) fn user_sk(user_id: &str) -> String {
    format!("USER#{user_id}")
}

/// The attribute of the user item that holds one of their orders (or the
/// void marker of one of their holds). Hold ids are 26 characters of
/// Crockford base32: always a valid attribute name.
pub(super) fn order_attr(hold: &HoldId) -> String {
    format!("o_{hold}")
}

/// One entry `o_<hold>` of a user item: an order, or the void of a hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    Confirmed(Order),
    Void { attempt: i64 },
}

fn entry_from(user_id: &str, value: &AttributeValue) -> Option<Entry> {
    let m = value.as_m().ok()?;
    let text = |name: &str| m.get(name)?.as_s().ok().map(String::as_str);
    let num = |name: &str| m.get(name)?.as_n().ok()?.parse::<i64>().ok();
    match text("status")? {
        "void" => Some(Entry::Void {
            attempt: num("attempt")?,
        }),
        "confirmed" => Some(Entry::Confirmed(Order {
            order_id: OrderId::parse(text("order_id")?)?,
            user_id: user_id.to_owned(),
            quantity: u32::try_from(num("quantity")?).ok()?,
            created_at: time(text("created_at")?)?,
            idempotency_key: text("idempotency_key").map(str::to_owned),
        })),
        _ => None,
    }
}

/// The entry of one hold on a user item, if there is one.
pub(super) fn entry(item: &Item, hold: &HoldId) -> Option<Entry> {
    let user_id = get_s(item, "user_id").unwrap_or_default();
    entry_from(user_id, item.get(&order_attr(hold))?)
}

/// Every confirmed order on a user item.
pub(super) fn orders_of(item: &Item) -> Vec<Order> {
    let Some(user_id) = get_s(item, "user_id") else {
        return Vec::new();
    };
    item.iter()
        .filter(|(name, _)| name.starts_with("o_"))
        .filter_map(|(_, value)| match entry_from(user_id, value)? {
            Entry::Confirmed(order) => Some(order),
            Entry::Void { .. } => None,
        })
        .collect()
}

pub(super) fn sale_from_item(sale_id: &SaleId, item: &Item) -> Option<SaleDefinition> {
    Some(SaleDefinition {
        sale_id: sale_id.clone(),
        name: get_s(item, "name")?.to_owned(),
        stock_total: get_n(item, "stock_total")?,
        per_user_limit: get_n(item, "per_user_limit")?,
        starts_at: time(get_s(item, "starts_at")?)?,
        ends_at: get_s(item, "ends_at").and_then(time),
        created_at: time(get_s(item, "created_at")?)?,
        // Sales written before buckets existed are one bucket.
        stock_buckets: get_n(item, "stock_buckets").unwrap_or(1),
        waiting_room: get_n(item, "wr_admit_per_second").map(|rate| {
            crate::waiting_room::RoomConfig {
                admit_per_second: rate,
                admission_ttl_seconds: get_n(item, "wr_admission_ttl_seconds")
                    .unwrap_or(crate::waiting_room::DEFAULT_ADMISSION_TTL_SECS),
            }
        }),
    })
}

/// The layout a sale item records; `None` for a sale of the old layout.
pub(super) fn layout_of(item: &Item) -> Option<SaleLayout> {
    if get_n::<u32>(item, "layout")? != LAYOUT {
        return None;
    }
    Some(SaleLayout {
        buckets: get_n(item, "ledger_buckets")?,
        stock_total: get_n(item, "stock_total")?,
        starts_at: time(get_s(item, "starts_at")?)?,
        ends_at: get_s(item, "ends_at").and_then(time),
    })
}

impl Inner {
    /// Creates the ledger table (and its `by_user` index) if it is absent.
    /// The key schema is the old layout's: nothing to convert (see above).
    pub async fn migrate(&self) -> anyhow::Result<bool> {
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
        };
        let create = self
            .client
            .create_table()
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk")?)
            .attribute_definitions(attr("sk")?)
            .attribute_definitions(attr("user_id")?)
            .attribute_definitions(attr("created_at")?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name("by_user")
                    .key_schema(key("user_id", KeyType::Hash)?)
                    .key_schema(key("created_at", KeyType::Range)?)
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()?,
            );
        common::backends::create_table_if_absent(&self.client, &self.table, create).await
    }
}

/// The key of one item.
pub(super) fn key(pk: String, sk: String) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(pk)),
        ("sk".to_owned(), AttributeValue::S(sk)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(buckets: u16, stock_total: u64) -> SaleLayout {
        SaleLayout {
            buckets,
            stock_total,
            starts_at: Utc::now(),
            ends_at: None,
        }
    }

    #[test]
    fn capacities_add_up_to_the_stock() {
        for (b, total) in [(1, 1), (32, 1000), (32, 5), (7, 100), (99, 1_000_000)] {
            let l = layout(b, total);
            let sum: u64 = (0..b).map(|k| l.capacity(k)).sum();
            assert_eq!(sum, total, "{b} buckets of {total}");
        }
    }

    #[test]
    fn users_spread_over_the_buckets_and_always_land_on_the_same_one() {
        let l = layout(32, 1000);
        let mut seen = vec![0u32; 32];
        for u in 0..3200 {
            let user = format!("user-{u}");
            let k = l.user_bucket(&user);
            assert_eq!(k, l.user_bucket(&user));
            seen[usize::from(k)] += 1;
        }
        assert!(seen.iter().all(|&c| (50..=150).contains(&c)), "{seen:?}");
    }

    #[test]
    fn a_small_sale_gets_few_buckets_a_big_one_the_configured_number() {
        let sale = |total| {
            SaleDefinition::new("s", "s", total, None, None, None, chrono::Utc::now())
                .expect("a valid sale")
        };
        let buckets =
            |total, configured| SaleLayout::for_new_sale(&sale(total), configured).buckets;
        assert_eq!(buckets(3, 32), 1);
        assert_eq!(buckets(1000, 32), 15);
        assert_eq!(buckets(100_000, 32), 32);
        assert_eq!(buckets(100_000, 500), MAX_BUCKETS);
        assert_eq!(buckets(100_000, 0), 1);
    }
}
