//! The ledger on DynamoDB: one table, one partition per sale.
//!
//! | pk              | sk                        | what                                  |
//! |-----------------|---------------------------|---------------------------------------|
//! | `SALE#<sale>`   | `SALE`                    | the sale, and its `confirmed` counter |
//! | `SALE#<sale>`   | `USER#<user>`             | one user's `confirmed` units          |
//! | `SALE#<sale>`   | `ORDER#<user>#<hold>`     | an order (`status` confirmed) or a void marker |
//! | `USER#<user>`   | `IDEM#<key>`              | which order an Idempotency-Key made   |
//!
//! Orders carry `user_id` and `created_at`, which feed the `by_user` index
//! used to list a user's orders across sales. Keeping a sale in one
//! partition makes a rebuild one strongly consistent query.

//! This file holds the schema, the reads and the void of a lapsed hold;
//! [`items`] builds an order's conditional transaction and explains its
//! refusals; [`group_commit`] batches the orders of a sale into few
//! transactions and sends them.

mod group_commit;
mod items;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};

use self::group_commit::Pending;
use super::{ConfirmOutcome, ConfirmRequest, HoldTruth, Ledger, LedgerError};
use crate::gate::Hold;
use crate::sale::{rfc3339, HoldId, Order, OrderId, SaleDefinition, SaleId};

type Item = HashMap<String, AttributeValue>;

/// The ledger on DynamoDB. Cheap to clone.
///
/// Every order of a sale also updates the sale's `confirmed` counter, one hot
/// item; concurrent transactions on it conflict, and one item takes only so
/// many writes a second. So order writes are *group-committed*: per sale, one
/// transaction is in flight at a time, and the orders that arrive meanwhile
/// go together in the next one (one counter update for all of them). At low
/// load a batch is a single order and nothing waits; under a stampede the
/// batches grow and throughput with them.
#[derive(Clone)]
pub struct DynamoLedger {
    inner: Arc<Inner>,
}

pub struct Inner {
    client: Client,
    table: String,
    /// Orders waiting for the next transaction of their sale. A sale is in
    /// the map exactly while a task is committing its orders.
    queues: Mutex<HashMap<SaleId, Vec<Pending>>>,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn sale_pk(sale: &SaleId) -> String {
    format!("SALE#{sale}")
}

fn order_sk(user_id: &str, hold: &HoldId) -> String {
    format!("ORDER#{user_id}#{hold}")
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Option<T> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn time(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// For reads and the void: a service error is a refusal, the request did
/// nothing. A timeout, a lost connection or a 5xx leaves it unknown. (An
/// order write is judged attempt by attempt: `group_commit::attempt_fate`.)
fn classify<E>(e: SdkError<E, HttpResponse>) -> LedgerError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let definite = match &e {
        SdkError::ServiceError(se) => !se.raw().status().is_server_error(),
        SdkError::ConstructionFailure(_) => true,
        _ => false,
    };
    let text = DisplayErrorContext(e).to_string();
    if definite {
        LedgerError::Definite(text)
    } else {
        LedgerError::Uncertain(text)
    }
}

fn build_error(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Definite(format!("building request: {e}"))
}

fn order_from_item(item: &Item) -> Option<Order> {
    if get_s(item, "status")? != "confirmed" {
        return None;
    }
    Some(Order {
        order_id: OrderId::parse(get_s(item, "order_id")?)?,
        user_id: get_s(item, "user_id")?.to_owned(),
        quantity: get_n(item, "quantity")?,
        created_at: time(get_s(item, "created_at")?)?,
        idempotency_key: get_s(item, "idempotency_key").map(str::to_owned),
    })
}

fn sale_from_item(sale_id: &SaleId, item: &Item) -> Option<SaleDefinition> {
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

impl std::ops::Deref for DynamoLedger {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl DynamoLedger {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                table: table.into(),
                queues: Mutex::default(),
            }),
        }
    }
}

impl Inner {
    /// Creates the ledger table (and its `by_user` index) if it is absent.
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

    async fn get_order(
        &self,
        order_id: &OrderId,
        user_id: &str,
    ) -> Result<Option<Order>, LedgerError> {
        let item = self
            .get(
                sale_pk(&order_id.sale_id),
                order_sk(user_id, &order_id.hold_id),
            )
            .await?;
        Ok(item.as_ref().and_then(order_from_item))
    }

    async fn get(&self, pk: String, sk: String) -> Result<Option<Item>, LedgerError> {
        self.client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map(|out| out.item)
            .map_err(classify)
    }

    /// All items of a query, following pagination.
    async fn query_all(
        &self,
        index: Option<&str>,
        key_condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Vec<Item>, LedgerError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression(key_condition)
                .filter_expression("#status = :confirmed")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":confirmed", s("confirmed"))
                .set_exclusive_start_key(start.take());
            for (name, value) in &values {
                q = q.expression_attribute_values(*name, value.clone());
            }
            q = match index {
                Some(index) => q.index_name(index),
                None => q.consistent_read(true),
            };
            let out = q.send().await.map_err(classify)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(items),
            }
        }
    }
}

#[async_trait]
impl Ledger for DynamoLedger {
    async fn create_sale(&self, sale: &SaleDefinition) -> Result<bool, LedgerError> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(sale_pk(&sale.sale_id)))
            .item("sk", s("SALE"))
            .item("name", s(&sale.name))
            .item("stock_total", n(sale.stock_total))
            .item("per_user_limit", n(sale.per_user_limit))
            .item("stock_buckets", n(sale.stock_buckets))
            .item("starts_at", s(rfc3339(sale.starts_at)))
            .item("created_at", s(rfc3339(sale.created_at)))
            .item("confirmed", n(0))
            .condition_expression("attribute_not_exists(pk)");
        if let Some(end) = sale.ends_at {
            put = put.item("ends_at", s(rfc3339(end)));
        }
        if let Some(room) = &sale.waiting_room {
            put = put
                .item("wr_admit_per_second", n(room.admit_per_second))
                .item("wr_admission_ttl_seconds", n(room.admission_ttl_seconds));
        }
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(classify(e)),
        }
    }

    async fn sale(&self, sale_id: &SaleId) -> Result<Option<SaleDefinition>, LedgerError> {
        let item = self.get(sale_pk(sale_id), "SALE".into()).await?;
        match item {
            None => Ok(None),
            Some(item) => sale_from_item(sale_id, &item)
                .map(Some)
                .ok_or_else(|| LedgerError::Definite(format!("sale item {sale_id} is malformed"))),
        }
    }

    async fn confirmed_units(&self, sale_id: &SaleId) -> Result<u64, LedgerError> {
        let item = self.get(sale_pk(sale_id), "SALE".into()).await?;
        Ok(item
            .as_ref()
            .and_then(|i| get_n(i, "confirmed"))
            .unwrap_or(0))
    }

    async fn confirm(&self, req: &ConfirmRequest) -> Result<ConfirmOutcome, LedgerError> {
        self.inner.clone().enqueue(req.clone()).await
    }

    async fn resolve(&self, sale_id: &SaleId, hold: &Hold) -> Result<HoldTruth, LedgerError> {
        let pk = sale_pk(sale_id);
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
                let item = self.get(pk, sk).await?;
                match item.as_ref() {
                    Some(item) if get_s(item, "status") == Some("void") => {
                        // A newer attempt was voided: this older one can
                        // never be written either (`items::order_put`).
                        Ok(HoldTruth::Voided)
                    }
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

    async fn order(&self, order_id: &OrderId, user_id: &str) -> Result<Option<Order>, LedgerError> {
        self.get_order(order_id, user_id).await
    }

    async fn user_orders(
        &self,
        user_id: &str,
        sale_id: Option<&SaleId>,
    ) -> Result<Vec<Order>, LedgerError> {
        let items = match sale_id {
            Some(sale) => {
                self.query_all(
                    None,
                    "pk = :pk AND begins_with(sk, :prefix)",
                    vec![
                        (":pk", s(sale_pk(sale))),
                        (":prefix", s(format!("ORDER#{user_id}#"))),
                    ],
                )
                .await?
            }
            None => {
                self.query_all(
                    Some("by_user"),
                    "user_id = :user",
                    vec![(":user", s(user_id))],
                )
                .await?
            }
        };
        let mut orders: Vec<Order> = items.iter().filter_map(order_from_item).collect();
        orders.sort_by_key(|o| o.created_at);
        Ok(orders)
    }

    async fn sale_orders(&self, sale_id: &SaleId) -> Result<Vec<Order>, LedgerError> {
        let items = self
            .query_all(
                None,
                "pk = :pk AND begins_with(sk, :prefix)",
                vec![(":pk", s(sale_pk(sale_id))), (":prefix", s("ORDER#"))],
            )
            .await?;
        Ok(items.iter().filter_map(order_from_item).collect())
    }

    async fn ready(&self) -> Result<(), String> {
        common::backends::dynamodb_table_ready(&self.client, &self.table).await
    }
}
