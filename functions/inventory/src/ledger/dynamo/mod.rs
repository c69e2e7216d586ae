//! The ledger on DynamoDB: one table, a sale's writes spread over its
//! buckets' partition keys.
//!
//! One idea per file:
//! - [`schema`]: the table layout, its keys, `migrate`, and why it spreads;
//! - [`stock`]: which bucket counters a batch of orders is charged to;
//! - [`items`]: an order's conditional transaction, and its refusals explained;
//! - [`group_commit`]: orders batched per sale into few transactions;
//! - [`transact`]: one transaction sent, retried, and its fate judged;
//! - [`reads`]: reads, pages of a sale's orders, a user's orders;
//! - [`void`]: the void of a lapsed hold.

mod group_commit;
mod items;
mod reads;
mod schema;
mod stock;
mod transact;
mod void;

pub use self::items::{ORDER_CONDITION, ORDER_UPDATE};
pub use self::schema::{DEFAULT_BUCKETS, MAX_BUCKETS};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};

use self::group_commit::Pending;
use self::schema::{bucket_pk, layout_of, sale_pk, SaleLayout, LAYOUT, STOCK_SK};
use super::{ConfirmOutcome, ConfirmRequest, HoldTruth, Ledger, LedgerError, SalePage};
use crate::gate::Hold;
use crate::sale::{rfc3339, Order, OrderId, SaleDefinition, SaleId};

type Item = HashMap<String, AttributeValue>;

/// The ledger on DynamoDB. Cheap to clone.
///
/// Orders are *group-committed*: per sale, one transaction is in flight at
/// a time per instance, and the orders that arrive meanwhile go together in
/// the next one (one stock-counter update for all of them). At low load a
/// batch is a single order and nothing waits; under a stampede the batches
/// grow and throughput with them.
#[derive(Clone)]
pub struct DynamoLedger {
    inner: Arc<Inner>,
}

pub struct Inner {
    client: Client,
    table: String,
    /// Buckets of the sales this instance creates.
    new_sale_buckets: u16,
    /// Orders waiting for the next transaction of their sale. A sale is in
    /// the map exactly while a task is committing its orders.
    queues: Mutex<HashMap<SaleId, Vec<Pending>>>,
    /// Each known sale's layout (fixed at creation, so cached for good).
    layouts: Mutex<HashMap<SaleId, SaleLayout>>,
    /// Per sale: what this instance believes each bucket has left, and the
    /// bucket it charges first.
    stock: Mutex<HashMap<SaleId, stock::Buckets>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
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
/// order write is judged attempt by attempt: `transact::attempt_fate`.)
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

impl std::ops::Deref for DynamoLedger {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl DynamoLedger {
    /// A ledger creating sales of [`DEFAULT_BUCKETS`] buckets.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self::with_buckets(client, table, DEFAULT_BUCKETS)
    }

    /// A ledger creating sales of `buckets` buckets (1 to [`MAX_BUCKETS`];
    /// a sale never gets more buckets than units). Existing sales keep the
    /// layout they were created with.
    pub fn with_buckets(client: Client, table: impl Into<String>, buckets: u16) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                table: table.into(),
                new_sale_buckets: buckets.clamp(1, MAX_BUCKETS),
                queues: Mutex::default(),
                layouts: Mutex::default(),
                stock: Mutex::default(),
            }),
        }
    }
}

impl Inner {
    /// The sale's layout, from the cache or its item; `None` if there is no
    /// such sale. A sale of the old layout is an error: see `schema`.
    async fn layout(&self, sale: &SaleId) -> Result<Option<SaleLayout>, LedgerError> {
        if let Some(l) = lock(&self.layouts).get(sale) {
            return Ok(Some(*l));
        }
        let Some(item) = self.get(sale_pk(sale), "SALE".into()).await? else {
            return Ok(None);
        };
        let layout = layout_of(&item).ok_or_else(|| {
            tracing::error!(sale_id = %sale, "sale written by the old one-partition ledger layout: its orders are not read and none are written; create the sale again");
            LedgerError::Definite(format!(
                "sale {sale} uses ledger layout 1; this version reads and writes layout {LAYOUT} only"
            ))
        })?;
        lock(&self.layouts).insert(sale.clone(), layout);
        Ok(Some(layout))
    }

    /// The sale item and one counter per bucket, all or nothing.
    fn sale_items(
        &self,
        sale: &SaleDefinition,
        layout: SaleLayout,
    ) -> Result<Vec<TransactWriteItem>, LedgerError> {
        let mut put = Put::builder()
            .table_name(&self.table)
            .item("pk", s(sale_pk(&sale.sale_id)))
            .item("sk", s("SALE"))
            .item("layout", n(LAYOUT))
            .item("ledger_buckets", n(layout.buckets))
            .item("name", s(&sale.name))
            .item("stock_total", n(sale.stock_total))
            .item("per_user_limit", n(sale.per_user_limit))
            .item("stock_buckets", n(sale.stock_buckets))
            .item("starts_at", s(rfc3339(sale.starts_at)))
            .item("created_at", s(rfc3339(sale.created_at)))
            .condition_expression("attribute_not_exists(pk)");
        if let Some(end) = sale.ends_at {
            put = put.item("ends_at", s(rfc3339(end)));
        }
        if let Some(room) = &sale.waiting_room {
            put = put
                .item("wr_admit_per_second", n(room.admit_per_second))
                .item("wr_admission_ttl_seconds", n(room.admission_ttl_seconds));
        }
        let mut items = vec![TransactWriteItem::builder()
            .put(put.build().map_err(build_error)?)
            .build()];
        for k in 0..layout.buckets {
            let mut counter = Put::builder()
                .table_name(&self.table)
                .item("pk", s(bucket_pk(&sale.sale_id, k)))
                .item("sk", s(STOCK_SK))
                .item("capacity", n(layout.capacity(k)))
                .item("confirmed", n(0))
                .item("starts_at", s(rfc3339(sale.starts_at)))
                .condition_expression("attribute_not_exists(pk)");
            if let Some(end) = sale.ends_at {
                counter = counter.item("ends_at", s(rfc3339(end)));
            }
            items.push(
                TransactWriteItem::builder()
                    .put(counter.build().map_err(build_error)?)
                    .build(),
            );
        }
        Ok(items)
    }
}

#[async_trait]
impl Ledger for DynamoLedger {
    async fn create_sale(&self, sale: &SaleDefinition) -> Result<bool, LedgerError> {
        let layout = SaleLayout::for_new_sale(sale, self.new_sale_buckets);
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(self.sale_items(sale, layout)?))
            .send()
            .await;
        match result {
            Ok(_) => {
                lock(&self.layouts).insert(sale.sale_id.clone(), layout);
                Ok(true)
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_transaction_canceled_exception()) =>
            {
                // Taken already (the sale item's condition), or a race with
                // another create of the same id: either way, the id is used
                // unless nothing is there (then the caller may try again).
                match self.get(sale_pk(&sale.sale_id), "SALE".into()).await? {
                    Some(_) => Ok(false),
                    None => Err(LedgerError::Definite(format!(
                        "creating sale {} was cancelled: {}",
                        sale.sale_id,
                        DisplayErrorContext(e)
                    ))),
                }
            }
            Err(e) => Err(classify(e)),
        }
    }

    async fn sale(&self, sale_id: &SaleId) -> Result<Option<SaleDefinition>, LedgerError> {
        let item = self.get(sale_pk(sale_id), "SALE".into()).await?;
        match item {
            None => Ok(None),
            Some(item) => schema::sale_from_item(sale_id, &item)
                .map(Some)
                .ok_or_else(|| LedgerError::Definite(format!("sale item {sale_id} is malformed"))),
        }
    }

    async fn confirmed_units(&self, sale_id: &SaleId) -> Result<u64, LedgerError> {
        let Some(layout) = self.layout(sale_id).await? else {
            return Ok(0);
        };
        let counters = self.read_counters(sale_id, layout).await?;
        Ok(counters.iter().map(|c| c.confirmed).sum())
    }

    async fn confirm(&self, req: &ConfirmRequest) -> Result<ConfirmOutcome, LedgerError> {
        self.inner.clone().enqueue(req.clone()).await
    }

    async fn resolve(&self, sale_id: &SaleId, hold: &Hold) -> Result<HoldTruth, LedgerError> {
        self.void(sale_id, hold).await
    }

    async fn order(&self, order_id: &OrderId, user_id: &str) -> Result<Option<Order>, LedgerError> {
        self.get_order(order_id, user_id).await
    }

    async fn user_orders(
        &self,
        user_id: &str,
        sale_id: Option<&SaleId>,
    ) -> Result<Vec<Order>, LedgerError> {
        self.orders_of_user(user_id, sale_id).await
    }

    async fn sale_orders(&self, sale_id: &SaleId) -> Result<Vec<Order>, LedgerError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.page(sale_id, after.as_deref(), 1000).await?;
            all.extend(page.orders);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    async fn sale_orders_page(
        &self,
        sale_id: &SaleId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SalePage, LedgerError> {
        self.page(sale_id, after, limit).await
    }

    async fn ready(&self) -> Result<(), String> {
        common::backends::dynamodb_table_ready(&self.client, &self.table).await
    }
}
