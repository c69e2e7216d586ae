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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, Put, ScalarAttributeType, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};

use super::{ConfirmOutcome, ConfirmRequest, HoldTruth, Ledger, LedgerError};
use crate::gate::Hold;
use crate::sale::{rfc3339, HoldId, Order, OrderId, SaleDefinition, SaleId};

type Item = HashMap<String, AttributeValue>;

/// How often a transaction that lost a race on a hot item is retried.
const CONFLICT_RETRIES: u32 = 12;

/// Orders committed together at most: 1 sale item + 3 items per order stays
/// within DynamoDB's 100 items per transaction.
const MAX_BATCH: usize = 24;

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

struct Pending {
    request: ConfirmRequest,
    reply: oneshot::Sender<Result<ConfirmOutcome, LedgerError>>,
}

/// How a transaction ended, when DynamoDB answered.
enum Transacted {
    Committed,
    /// A condition failed; the cancellation reason of each item, in order.
    Refused(Vec<Option<String>>),
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

/// A service error is a refusal: the write did not happen. A timeout, a
/// lost connection or a 5xx leaves the outcome unknown.
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
            // A void of an *earlier* attempt of this id may be replaced; a
            // void of this attempt, or a confirmed order, may not.
            .condition_expression(
                "attribute_not_exists(pk) OR (#status = :void AND attempt <> :attempt)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":void", s("void"))
            .expression_attribute_values(":attempt", n(req.attempt));
        if let Some(key) = &o.idempotency_key {
            put = put.item("idempotency_key", s(key));
        }
        put.build().map_err(build_error)
    }

    /// `confirmed += qty` on the sale, only while that stays within the stock.
    fn sale_update(
        &self,
        sale: &SaleId,
        qty: u64,
        stock_total: u64,
    ) -> Result<Update, LedgerError> {
        Update::builder()
            .table_name(&self.table)
            .key("pk", s(sale_pk(sale)))
            .key("sk", s("SALE"))
            .update_expression("SET confirmed = confirmed + :q")
            .condition_expression("attribute_exists(pk) AND confirmed <= :max_before")
            .expression_attribute_values(":q", n(qty))
            .expression_attribute_values(":max_before", n(stock_total as i64 - qty as i64))
            .build()
            .map_err(build_error)
    }

    /// The items of one order's transaction, in the order `explain_cancel`
    /// reads their cancellation reasons: order, sale, user, idempotency key.
    fn items(&self, req: &ConfirmRequest) -> Result<Vec<TransactWriteItem>, LedgerError> {
        let o = &req.order;
        let pk = sale_pk(o.sale_id());
        let qty = u64::from(o.quantity);
        let sale_update = self.sale_update(o.sale_id(), qty, req.stock_total)?;
        let user_update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(&pk))
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
            TransactWriteItem::builder().update(sale_update).build(),
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

    /// Why a cancelled transaction was cancelled, checked in order of meaning.
    async fn explain_cancel(
        &self,
        req: &ConfirmRequest,
        codes: &[Option<String>],
    ) -> Result<Option<ConfirmOutcome>, LedgerError> {
        let failed =
            |i: usize| codes.get(i).and_then(|c| c.as_deref()) == Some("ConditionalCheckFailed");
        let o = &req.order;
        if failed(0) {
            let item = self
                .get(
                    sale_pk(o.sale_id()),
                    order_sk(&o.user_id, &o.order_id.hold_id),
                )
                .await?;
            return Ok(Some(match item.as_ref().and_then(order_from_item) {
                Some(existing) => ConfirmOutcome::AlreadyConfirmed(existing),
                None => ConfirmOutcome::Voided,
            }));
        }
        if failed(3) {
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
                        return Ok(Some(ConfirmOutcome::KeyUsed(existing)));
                    }
                }
                return Err(LedgerError::Definite(format!(
                    "idempotency record for {key} names no order"
                )));
            }
        }
        if failed(1) {
            return Ok(Some(ConfirmOutcome::SoldOut));
        }
        if failed(2) {
            return Ok(Some(ConfirmOutcome::LimitReached));
        }
        Ok(None)
    }
}

impl Inner {
    /// Commits the queued orders of one sale, batch after batch, until the
    /// queue is empty.
    async fn commit_queue(self: Arc<Self>, sale: SaleId) {
        loop {
            let batch = {
                let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                let Some(queue) = queues.get_mut(&sale) else {
                    return;
                };
                if queue.is_empty() {
                    queues.remove(&sale);
                    return;
                }
                take_batch(queue)
            };
            let requests: Vec<ConfirmRequest> = batch.iter().map(|p| p.request.clone()).collect();
            common::metrics::histogram("ledger_batch_orders")
                .observe(Duration::from_millis(requests.len() as u64));
            let outcomes = self.confirm_batch(&requests).await;
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                let _ = pending.reply.send(outcome);
            }
        }
    }

    async fn confirm_batch(
        &self,
        batch: &[ConfirmRequest],
    ) -> Vec<Result<ConfirmOutcome, LedgerError>> {
        if let [single] = batch {
            return vec![self.confirm_one(single).await];
        }
        let items = match self.batch_items(batch) {
            Ok(items) => items,
            Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
        };
        match self.transact(&client_token(batch), items).await {
            Ok(Transacted::Committed) => batch
                .iter()
                .map(|r| Ok(ConfirmOutcome::Confirmed(r.order.clone())))
                .collect(),
            // Some order of the batch may not go through: nothing was
            // written, so each is tried alone and gets its own answer.
            Ok(Transacted::Refused(_)) => {
                let mut outcomes = Vec::with_capacity(batch.len());
                for request in batch {
                    outcomes.push(self.confirm_one(request).await);
                }
                outcomes
            }
            Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    async fn confirm_one(&self, req: &ConfirmRequest) -> Result<ConfirmOutcome, LedgerError> {
        match self
            .transact(&client_token(std::slice::from_ref(req)), self.items(req)?)
            .await?
        {
            Transacted::Committed => Ok(ConfirmOutcome::Confirmed(req.order.clone())),
            Transacted::Refused(codes) => {
                self.explain_cancel(req, &codes).await?.ok_or_else(|| {
                    LedgerError::Definite("transaction refused for no stated reason".into())
                })
            }
        }
    }

    /// One sale-counter update for the whole batch, then each order's items.
    fn batch_items(&self, batch: &[ConfirmRequest]) -> Result<Vec<TransactWriteItem>, LedgerError> {
        let first = &batch[0];
        let total: u64 = batch.iter().map(|r| u64::from(r.order.quantity)).sum();
        let mut items = vec![TransactWriteItem::builder()
            .update(self.sale_update(first.order.sale_id(), total, first.stock_total)?)
            .build()];
        for req in batch {
            let mut own = self.items(req)?;
            own.remove(1); // each order's own sale update, replaced by the shared one
            items.extend(own);
        }
        Ok(items)
    }

    /// Sends a transaction, retrying it while it only lost races on hot items.
    async fn transact(
        &self,
        token: &str,
        items: Vec<TransactWriteItem>,
    ) -> Result<Transacted, LedgerError> {
        let mut backoff = Duration::from_millis(5);
        for _ in 0..CONFLICT_RETRIES {
            let result = self
                .client
                .transact_write_items()
                .client_request_token(token)
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let err = match result {
                Ok(_) => return Ok(Transacted::Committed),
                Err(e) => e,
            };
            match err.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                    let codes: Vec<Option<String>> = c
                        .cancellation_reasons()
                        .iter()
                        .map(|r| r.code().map(str::to_owned))
                        .collect();
                    if codes
                        .iter()
                        .any(|c| c.as_deref() == Some("ConditionalCheckFailed"))
                    {
                        return Ok(Transacted::Refused(codes));
                    }
                    // Cancelled with no failed condition: a conflict with a
                    // concurrent transaction on the same item. Retry.
                }
                Some(TransactWriteItemsError::TransactionInProgressException(_)) => {}
                _ => return Err(classify(err)),
            }
            common::metrics::counter("ledger_conflicts_total").inc();
            tokio::time::sleep(
                backoff + Duration::from_millis(rand_jitter(backoff.as_millis() as u64)),
            )
            .await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
        Err(LedgerError::Definite("transaction kept conflicting".into()))
    }
}

/// Takes up to [`MAX_BATCH`] orders off the queue, no two touching the same
/// user's items (a transaction may name an item only once); the rest wait.
fn take_batch(queue: &mut Vec<Pending>) -> Vec<Pending> {
    let mut users = HashSet::new();
    let mut batch = Vec::new();
    let mut rest = Vec::new();
    for pending in queue.drain(..) {
        if batch.len() < MAX_BATCH && users.insert(pending.request.order.user_id.clone()) {
            batch.push(pending);
        } else {
            rest.push(pending);
        }
    }
    *queue = rest;
    batch
}

/// Makes a retried transaction (by the SDK after a timeout, or by us)
/// idempotent for ten minutes: the same orders can never be written twice.
fn client_token(batch: &[ConfirmRequest]) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for req in batch {
        digest.update(req.order.order_id.to_string());
        digest.update(req.attempt.to_le_bytes());
    }
    digest.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
            .item("starts_at", s(rfc3339(sale.starts_at)))
            .item("created_at", s(rfc3339(sale.created_at)))
            .item("confirmed", n(0))
            .condition_expression("attribute_not_exists(pk)");
        if let Some(end) = sale.ends_at {
            put = put.item("ends_at", s(rfc3339(end)));
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
        let (reply, answer) = oneshot::channel();
        let sale = req.order.sale_id().clone();
        let start_committer = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            let start = !queues.contains_key(&sale);
            queues.entry(sale.clone()).or_default().push(Pending {
                request: req.clone(),
                reply,
            });
            start
        };
        if start_committer {
            tokio::spawn(self.inner.clone().commit_queue(sale));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(LedgerError::Uncertain("ledger committer stopped".into())))
    }

    async fn resolve(&self, sale_id: &SaleId, hold: &Hold) -> Result<HoldTruth, LedgerError> {
        let pk = sale_pk(sale_id);
        let sk = order_sk(&hold.user_id, &hold.hold_id);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(&pk))
            .item("sk", s(&sk))
            .item("status", s("void"))
            .item("attempt", n(hold.expires_ms))
            .condition_expression("attribute_not_exists(pk) OR #status = :void")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":void", s("void"))
            .send()
            .await;
        match result {
            Ok(_) => Ok(HoldTruth::Voided),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                let item = self.get(pk, sk).await?;
                item.as_ref()
                    .and_then(order_from_item)
                    .map(HoldTruth::Confirmed)
                    .ok_or_else(|| {
                        LedgerError::Uncertain("order changed while resolving its hold".into())
                    })
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

fn rand_jitter(max: u64) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now()) % max.max(1)
}
