//! A ledger that really pages, for the rebuild tests: a `MemoryLedger`
//! plus *bulk* orders that exist only as a count, made a page at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use inventory::gate::Hold;
use inventory::ledger::{
    ConfirmOutcome, ConfirmRequest, HoldTruth, Ledger, LedgerError, MemoryLedger, SalePage,
};
use inventory::sale::{HoldId, Order, OrderId, SaleDefinition, SaleId};
use tokio::sync::Notify;

/// Bulk orders' hold ids are ULIDs of this timestamp: they sort before any
/// real order's, in index order, so one cursor walks both.
const BULK_TS: u64 = 1;

#[derive(Default)]
pub struct Latch {
    open: AtomicBool,
    notify: Notify,
}

impl Latch {
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
    pub async fn wait(&self) {
        while !self.open.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout(Duration::from_millis(20), self.notify.notified()).await;
        }
    }
}

#[derive(Default)]
pub struct PagingLedger {
    pub inner: MemoryLedger,
    bulk: Mutex<HashMap<SaleId, usize>>,
    pub largest_page: AtomicUsize,
    pub pages: AtomicUsize,
    pub whole_reads: AtomicUsize,
    /// Pages served before the next one waits for `resume` (0: never).
    pub pause_after: AtomicUsize,
    pub paused: Latch,
    pub resume: Latch,
}

impl PagingLedger {
    pub fn add_bulk(&self, sale: &SaleId, n: usize) {
        self.bulk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sale.clone(), n);
    }

    fn bulk_of(&self, sale: &SaleId) -> usize {
        let bulk = self.bulk.lock().unwrap_or_else(|p| p.into_inner());
        bulk.get(sale).copied().unwrap_or(0)
    }
}

/// Bulk order `i`: users of two units each (one per order), the limit.
fn bulk_order(sale: &SaleId, i: usize) -> Order {
    let id = ulid::Ulid::from_parts(BULK_TS, i as u128).to_string();
    Order {
        order_id: OrderId {
            sale_id: sale.clone(),
            hold_id: HoldId::parse(&id).expect("a ULID is a hold id"),
        },
        user_id: format!("bulk-{}", i / 2),
        quantity: 1,
        created_at: chrono::Utc::now(),
        idempotency_key: None,
    }
}

#[async_trait]
impl Ledger for PagingLedger {
    async fn create_sale(&self, sale: &SaleDefinition) -> Result<bool, LedgerError> {
        self.inner.create_sale(sale).await
    }
    async fn sale(&self, id: &SaleId) -> Result<Option<SaleDefinition>, LedgerError> {
        self.inner.sale(id).await
    }
    async fn confirmed_units(&self, id: &SaleId) -> Result<u64, LedgerError> {
        Ok(self.inner.confirmed_units(id).await? + self.bulk_of(id) as u64)
    }
    async fn confirm(&self, request: &ConfirmRequest) -> Result<ConfirmOutcome, LedgerError> {
        self.inner.confirm(request).await
    }
    async fn resolve(&self, id: &SaleId, hold: &Hold) -> Result<HoldTruth, LedgerError> {
        self.inner.resolve(id, hold).await
    }
    async fn order(&self, id: &OrderId, user: &str) -> Result<Option<Order>, LedgerError> {
        self.inner.order(id, user).await
    }
    async fn user_orders(
        &self,
        user: &str,
        sale: Option<&SaleId>,
    ) -> Result<Vec<Order>, LedgerError> {
        self.inner.user_orders(user, sale).await
    }
    async fn sale_orders(&self, id: &SaleId) -> Result<Vec<Order>, LedgerError> {
        self.whole_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.sale_orders(id).await
    }
    async fn sale_orders_page(
        &self,
        id: &SaleId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SalePage, LedgerError> {
        let served = self.pages.fetch_add(1, Ordering::SeqCst);
        let pause = self.pause_after.load(Ordering::SeqCst);
        if pause > 0 && served == pause {
            self.paused.open();
            self.resume.wait().await;
        }
        let n = self.bulk_of(id);
        let from = match after.map(ulid::Ulid::from_string) {
            None => 0,
            Some(Ok(u)) if u.timestamp_ms() == BULK_TS => u.random() as usize + 1,
            Some(_) => n,
        };
        let mut orders: Vec<Order> = (from..n.min(from + limit))
            .map(|i| bulk_order(id, i))
            .collect();
        if orders.len() < limit {
            let mut real = self.inner.sale_orders(id).await?;
            real.sort_by(|a, b| a.order_id.hold_id.as_str().cmp(b.order_id.hold_id.as_str()));
            let past = |o: &&Order| after.is_none_or(|a| o.order_id.hold_id.as_str() > a);
            let room = limit - orders.len();
            orders.extend(real.iter().filter(past).take(room).cloned());
        }
        self.largest_page.fetch_max(orders.len(), Ordering::SeqCst);
        let next = (orders.len() == limit)
            .then(|| orders.last().map(|o| o.order_id.hold_id.to_string()))
            .flatten();
        Ok(SalePage { orders, next })
    }
    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}
