//! Reads: single items, the bucket counters, a sale's orders page by page,
//! a user's orders. Everything a checkout or a rebuild depends on is read
//! strongly consistent; only the cross-sale `by_user` index is not (an
//! index cannot be).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};

use super::schema::{bucket_pk, entry, key, orders_of, user_sk, Entry, SaleLayout, STOCK_SK};
use super::stock::Counter;
use super::{classify, get_n, s, Inner, Item};
use crate::ledger::{LedgerError, SalePage};
use crate::sale::{Order, OrderId, SaleId};

/// Where a page of a sale's orders continues: the bucket, and the last
/// sort key read in it (`None`: the bucket from its start).
#[derive(serde::Serialize, serde::Deserialize)]
struct Cursor {
    bucket: u16,
    after: Option<String>,
}

impl Inner {
    pub(super) async fn get(&self, pk: String, sk: String) -> Result<Option<Item>, LedgerError> {
        self.client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map(|out| out.item)
            .map_err(classify)
    }

    /// Every bucket counter of the sale, in bucket order, in one strongly
    /// consistent batch read (B ≤ 99 < the 100 keys of one call), reading
    /// again what DynamoDB left unprocessed.
    pub(super) async fn read_counters(
        &self,
        sale: &SaleId,
        layout: SaleLayout,
    ) -> Result<Vec<Counter>, LedgerError> {
        let mut keys: Vec<Item> = (0..layout.buckets)
            .map(|k| key(bucket_pk(sale, k), STOCK_SK.into()))
            .collect();
        let mut found: HashMap<String, Counter> = HashMap::new();
        for _ in 0..10 {
            if keys.is_empty() {
                break;
            }
            let request = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut keys)))
                .consistent_read(true)
                .build()
                .map_err(super::build_error)?;
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(classify)?;
            for item in out
                .responses
                .and_then(|mut r| r.remove(&self.table))
                .unwrap_or_default()
            {
                let pk = super::get_s(&item, "pk").unwrap_or_default().to_owned();
                found.insert(
                    pk,
                    Counter {
                        capacity: get_n(&item, "capacity").unwrap_or(0),
                        confirmed: get_n(&item, "confirmed").unwrap_or(0),
                    },
                );
            }
            keys = out
                .unprocessed_keys
                .and_then(|mut u| u.remove(&self.table))
                .map(|k| k.keys)
                .unwrap_or_default();
        }
        (0..layout.buckets)
            .map(|k| {
                found.remove(&bucket_pk(sale, k)).ok_or_else(|| {
                    LedgerError::Uncertain(format!("stock counter {k} of sale {sale} not read"))
                })
            })
            .collect()
    }

    /// One query of one partition: the items whose sort key starts with
    /// `prefix`, after `start`, at most `limit`; and where the next query
    /// would start (`None`: the partition is done).
    async fn query_page(
        &self,
        pk: String,
        prefix: &str,
        start: Option<String>,
        limit: usize,
    ) -> Result<(Vec<Item>, Option<String>), LedgerError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(&pk))
            .expression_attribute_values(":prefix", s(prefix))
            .set_exclusive_start_key(start.map(|sk| key(pk, sk)))
            .limit(limit.clamp(1, 1000) as i32)
            .consistent_read(true)
            .send()
            .await
            .map_err(classify)?;
        let next = out
            .last_evaluated_key
            .as_ref()
            .and_then(|k| k.get("sk"))
            .and_then(|v| v.as_s().ok())
            .cloned();
        Ok((out.items.unwrap_or_default(), next))
    }

    /// The confirmed orders of up to `limit` users of the sale after the
    /// cursor (a user has at most `per_user_limit` orders): the buckets'
    /// partitions one after another, each in key order.
    pub(super) async fn page(
        &self,
        sale: &SaleId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SalePage, LedgerError> {
        let Some(layout) = self.layout(sale).await? else {
            return Ok(SalePage::default());
        };
        let mut cursor = match after {
            None => Cursor {
                bucket: 0,
                after: None,
            },
            Some(raw) => serde_json::from_str(raw)
                .map_err(|_| LedgerError::Definite(format!("not a page cursor: {raw}")))?,
        };
        let limit = limit.max(1);
        let mut orders = Vec::new();
        let mut users = 0;
        while users < limit && cursor.bucket < layout.buckets {
            let (items, next) = self
                .query_page(
                    bucket_pk(sale, cursor.bucket),
                    "USER#",
                    cursor.after.take(),
                    limit - users,
                )
                .await?;
            users += items.len();
            orders.extend(items.iter().flat_map(orders_of));
            match next {
                Some(sk) => cursor.after = Some(sk),
                None => cursor.bucket += 1,
            }
        }
        let next = (cursor.bucket < layout.buckets)
            .then(|| serde_json::to_string(&cursor))
            .transpose()
            .map_err(|e| LedgerError::Definite(format!("page cursor: {e}")))?;
        Ok(SalePage { orders, next })
    }

    pub(super) async fn get_order(
        &self,
        order_id: &OrderId,
        user_id: &str,
    ) -> Result<Option<Order>, LedgerError> {
        let Some(layout) = self.layout(&order_id.sale_id).await? else {
            return Ok(None);
        };
        let pk = bucket_pk(&order_id.sale_id, layout.user_bucket(user_id));
        let item = self.get(pk, user_sk(user_id)).await?;
        Ok(
            match item.as_ref().and_then(|i| entry(i, &order_id.hold_id)) {
                Some(Entry::Confirmed(order)) => Some(order),
                _ => None,
            },
        )
    }

    /// A user's orders in one sale (their user item, strongly consistent),
    /// or in all (the `by_user` index: one item per sale they ordered in).
    pub(super) async fn orders_of_user(
        &self,
        user_id: &str,
        sale: Option<&SaleId>,
    ) -> Result<Vec<Order>, LedgerError> {
        let items = match sale {
            Some(sale) => {
                let Some(layout) = self.layout(sale).await? else {
                    return Ok(Vec::new());
                };
                let pk = bucket_pk(sale, layout.user_bucket(user_id));
                self.get(pk, user_sk(user_id)).await?.into_iter().collect()
            }
            None => self.by_user_index(user_id).await?,
        };
        let mut orders: Vec<Order> = items.iter().flat_map(orders_of).collect();
        orders.sort_by_key(|o| o.created_at);
        Ok(orders)
    }

    async fn by_user_index(&self, user_id: &str) -> Result<Vec<Item>, LedgerError> {
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("by_user")
                .key_condition_expression("user_id = :user")
                .expression_attribute_values(":user", s(user_id))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(classify)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }
}
