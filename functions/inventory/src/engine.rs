//! Checkout and its bookkeeping: the one place that drives gate and ledger.
//!
//! ```text
//!   checkout ──► gate: take a hold ──► ledger: write the order ──► gate: settle
//!                    │ sold out / limit        │ refused                 (201)
//!                    ▼                          ▼
//!                  409 at once            gate: release ──► 409 / 503
//!                                              │ timed out: outcome unknown
//!                                              ▼
//!                     the hold lapses; the sweeper asks the ledger (void
//!                     unless confirmed) and settles or releases accordingly
//! ```
//!
//! Nothing here needs an always-on process: expired holds are swept lazily
//! by the requests that touch a sale (and by `reconcile`), so functions can
//! scale to zero. Bound: a hold lapses `hold_ttl` after it was taken; the
//! first stock view or checkout of that sale after that starts a sweep that
//! resolves it (at most one sweep per `sweep_interval` per instance), or
//! `reconcile` does. A checkout whose ledger answer was lost resolves its own
//! hold `ledger_timeout` later, without waiting for it to lapse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;

use crate::admission::CheckoutLimits;
use crate::error::InventoryError;
use crate::gate::{GateSnapshot, Hold, HoldOutcome, HoldState, StockGate};
use crate::ledger::{as_settled_hold, ConfirmOutcome, ConfirmRequest, HoldTruth, Ledger};
use crate::overload::LedgerQueue;
use crate::sale::{
    now_ms, rfc3339, HoldId, Order, OrderId, SaleDefinition, SaleId, SaleView, Window,
};

type Result<T> = std::result::Result<T, InventoryError>;

#[derive(Debug, Clone)]
pub struct InventoryConfig {
    /// How long a hold may stay unresolved before the sweeper resolves it.
    pub hold_ttl: Duration,
    /// How long checkout waits for the ledger before answering `503`.
    pub ledger_timeout: Duration,
    /// Minimum time between two sweeps of one sale by one instance.
    pub sweep_interval: Duration,
    /// How long "sold out, nothing held" is answered from memory.
    pub sold_out_cache: Duration,
    /// The same while some units are still held (they may come back).
    pub sold_out_cache_held: Duration,
    /// Checkouts always admitted to the ledger queue, whatever its measured
    /// rate (`overload.rs`); past `max(floor, rate × budget)` they are shed.
    pub ledger_queue_floor: usize,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        Self {
            hold_ttl: Duration::from_secs(15),
            ledger_timeout: Duration::from_secs(3),
            sweep_interval: Duration::from_secs(1),
            sold_out_cache: Duration::from_millis(1000),
            sold_out_cache_held: Duration::from_millis(50),
            ledger_queue_floor: 1024,
        }
    }
}

impl InventoryConfig {
    pub fn from_env() -> std::result::Result<Self, common::config::ConfigError> {
        use common::config::parsed_or;
        let d = Self::default();
        Ok(Self {
            hold_ttl: Duration::from_secs(parsed_or("HOLD_TTL_SECONDS", d.hold_ttl.as_secs())?),
            ledger_timeout: Duration::from_millis(parsed_or(
                "LEDGER_TIMEOUT_MS",
                d.ledger_timeout.as_millis() as u64,
            )?),
            sweep_interval: Duration::from_millis(parsed_or(
                "SWEEP_INTERVAL_MS",
                d.sweep_interval.as_millis() as u64,
            )?),
            ledger_queue_floor: parsed_or("CHECKOUT_QUEUE_FLOOR", d.ledger_queue_floor)?,
            ..d
        })
    }
}

#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    pub sale_id: SaleId,
    pub quantity: u32,
    pub idempotency_key: Option<String>,
    /// The buyer's address for the per-IP rate limit; `None` if unknown or
    /// exempt (see `common::http::ClientIp`).
    pub client_ip: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkout {
    /// A new order: `201`.
    Created(Order),
    /// The order this Idempotency-Key made before: `200`.
    Replayed(Order),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub settled: u64,
    pub released: u64,
    pub unresolved: u64,
}

/// Guarantee 5's terms for one sale, from both stores; the admin view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Breakdown {
    pub sale_id: String,
    pub stock_total: u64,
    pub stock_remaining: i64,
    pub held: i64,
    pub confirmed: i64,
    /// The ledger's own count; it may run ahead of `confirmed` by orders
    /// whose holds are not settled yet, never behind.
    pub ledger_confirmed: u64,
    pub open_holds: u64,
    pub oldest_hold_expires_at: Option<String>,
    /// `stock_remaining + held + confirmed == stock_total`.
    pub balanced: bool,
    /// `confirmed <= ledger_confirmed <= confirmed + held` and never oversold.
    pub consistent: bool,
    pub hold_ttl_seconds: u64,
}

/// The inventory service; cheap to clone, shared by all requests.
#[derive(Clone)]
pub struct Inventory {
    inner: Arc<Inner>,
}

struct Inner {
    gate: Arc<dyn StockGate>,
    ledger: Arc<dyn Ledger>,
    config: InventoryConfig,
    /// Per-user / per-IP checkout rate limits, if any (`admission.rs`).
    limits: Option<CheckoutLimits>,
    /// Bounds the checkouts waiting on the ledger (`overload.rs`).
    ledger_queue: Arc<LedgerQueue>,
    /// Sale definitions never change, so they are cached for good.
    sales: RwLock<HashMap<SaleId, Arc<SaleDefinition>>>,
    /// Unknown sale ids, briefly, so a stampede on a typo misses DynamoDB.
    unknown: Mutex<HashMap<SaleId, Instant>>,
    /// Sold-out answers given from memory until the instant stored.
    sold_out: RwLock<HashMap<SaleId, Instant>>,
    last_sweep: Mutex<HashMap<SaleId, Instant>>,
    /// Sales with a background sweep running now (one at a time per sale).
    sweeping: Mutex<std::collections::HashSet<SaleId>>,
    last_reconcile: Mutex<HashMap<SaleId, Instant>>,
    rebuilding: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// `true` (and records now) if `key` was not seen within `interval`.
fn due(map: &Mutex<HashMap<SaleId, Instant>>, key: &SaleId, interval: Duration) -> bool {
    let mut map = lock(map);
    let now = Instant::now();
    match map.get(key) {
        Some(last) if now.duration_since(*last) < interval => false,
        _ => {
            map.insert(key.clone(), now);
            true
        }
    }
}

impl Inventory {
    /// An inventory without checkout rate limits.
    pub fn new(gate: Arc<dyn StockGate>, ledger: Arc<dyn Ledger>, config: InventoryConfig) -> Self {
        Self::with_limits(gate, ledger, config, None)
    }

    pub fn with_limits(
        gate: Arc<dyn StockGate>,
        ledger: Arc<dyn Ledger>,
        config: InventoryConfig,
        limits: Option<CheckoutLimits>,
    ) -> Self {
        // An admitted checkout should be answered well within the ledger
        // timeout: two thirds of it is the queue's budget.
        let ledger_queue =
            LedgerQueue::new(config.ledger_queue_floor, config.ledger_timeout * 2 / 3);
        Self {
            inner: Arc::new(Inner {
                gate,
                ledger,
                config,
                limits,
                ledger_queue,
                sales: RwLock::default(),
                unknown: Mutex::default(),
                sold_out: RwLock::default(),
                last_sweep: Mutex::default(),
                sweeping: Mutex::default(),
                last_reconcile: Mutex::default(),
                rebuilding: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn config(&self) -> &InventoryConfig {
        &self.inner.config
    }

    pub async fn ready(&self) -> std::result::Result<(), String> {
        let (gate, ledger) = tokio::join!(self.inner.gate.ready(), self.inner.ledger.ready());
        gate.and(ledger)
    }

    // ------------------------------------------------------------ sales

    pub async fn create_sale(&self, sale: SaleDefinition) -> Result<SaleView> {
        let inner = &self.inner;
        if !inner.ledger.create_sale(&sale).await? {
            return Err(InventoryError::SaleExists);
        }
        // The ledger is the record; the gate can always be rebuilt from it,
        // so a gate failure here only delays loading until first use.
        match inner.gate.load(&sale, &[]).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(sale_id = %sale.sale_id, "stale gate state for a new sale: replacing it");
                inner.gate.forget(&sale.sale_id).await?;
                inner.gate.load(&sale, &[]).await?;
            }
            Err(e) => {
                tracing::warn!(sale_id = %sale.sale_id, error = %e, "gate not loaded; will rebuild on use")
            }
        }
        lock(&inner.unknown).remove(&sale.sale_id);
        let view = sale.view(sale.stock_total, Utc::now());
        self.cache(sale);
        Ok(view)
    }

    fn cache(&self, sale: SaleDefinition) -> Arc<SaleDefinition> {
        let sale = Arc::new(sale);
        if let Ok(mut map) = self.inner.sales.write() {
            map.insert(sale.sale_id.clone(), sale.clone());
        }
        sale
    }

    pub async fn definition(&self, sale_id: &SaleId) -> Result<Arc<SaleDefinition>> {
        if let Some(sale) = self
            .inner
            .sales
            .read()
            .ok()
            .and_then(|m| m.get(sale_id).cloned())
        {
            return Ok(sale);
        }
        if lock(&self.inner.unknown)
            .get(sale_id)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Err(InventoryError::SaleNotFound);
        }
        match self.inner.ledger.sale(sale_id).await? {
            Some(sale) => Ok(self.cache(sale)),
            None => {
                let mut unknown = lock(&self.inner.unknown);
                if unknown.len() >= 10_000 {
                    unknown.retain(|_, seen| seen.elapsed() < Duration::from_secs(1));
                }
                unknown.insert(sale_id.clone(), Instant::now());
                Err(InventoryError::SaleNotFound)
            }
        }
    }

    /// The public sale view, with live stock. Also starts a sweep of lapsed
    /// holds (in the background: a view never waits on the ledger).
    pub async fn view(&self, sale_id: &SaleId) -> Result<SaleView> {
        let sale = self.definition(sale_id).await?;
        self.sweep_in_background(sale_id);
        let snapshot = self.snapshot_or_rebuild(&sale).await?;
        Ok(sale.view(snapshot.remaining.max(0) as u64, Utc::now()))
    }

    async fn snapshot_or_rebuild(&self, sale: &SaleDefinition) -> Result<GateSnapshot> {
        if let Some(s) = self.inner.gate.snapshot(&sale.sale_id).await? {
            return Ok(s);
        }
        self.rebuild(sale).await?;
        self.inner
            .gate
            .snapshot(&sale.sale_id)
            .await?
            .ok_or_else(|| InventoryError::Unavailable("gate lost the sale again".into()))
    }

    /// Reloads a sale the gate does not have (Redis restarted empty) from
    /// the ledger: the sale and every confirmed order, in one atomic load.
    /// Orders confirmed while this runs are adopted when they settle.
    async fn rebuild(&self, sale: &SaleDefinition) -> Result<()> {
        let _one_at_a_time = self.inner.rebuilding.lock().await;
        if self.inner.gate.snapshot(&sale.sale_id).await?.is_some() {
            return Ok(()); // someone else just did it
        }
        let orders = self.inner.ledger.sale_orders(&sale.sale_id).await?;
        let holds: Vec<Hold> = orders.iter().map(as_settled_hold).collect();
        if self.inner.gate.load(sale, &holds).await? {
            common::metrics::counter("gate_rebuilds_total").inc();
            tracing::warn!(sale_id = %sale.sale_id, orders = orders.len(), "gate rebuilt from the ledger");
        }
        Ok(())
    }

    // ------------------------------------------------------------ checkout

    pub async fn checkout(&self, user_id: &str, req: CheckoutRequest) -> Result<Checkout> {
        let sale = self.definition(&req.sale_id).await?;
        if req.quantity < 1 || req.quantity > sale.per_user_limit {
            return Err(InventoryError::InvalidQuantity {
                limit: sale.per_user_limit,
            });
        }
        let keyed = req.idempotency_key.is_some();
        let hold_id = match &req.idempotency_key {
            Some(key) => HoldId::for_idempotency_key(user_id, key),
            None => HoldId::random(),
        };
        // Answers that need no round trip. A keyed request may be a replay
        // of an order made earlier, so it must ask the gate first.
        if !keyed {
            if sale.window(Utc::now()) != Window::Open {
                return Err(InventoryError::NotLive);
            }
            if self.sold_out_cached(&sale.sale_id) {
                common::metrics::counter("sold_out_fast_path_total").inc();
                return Err(InventoryError::SoldOut);
            }
        }
        // Shedding first: it costs no round trip, and a shed attempt then
        // spends none of the caller's rate budget.
        let Some(_slot) = self.inner.ledger_queue.try_enter() else {
            common::metrics::counter("checkout_shed_total").inc();
            return Err(InventoryError::Busy);
        };
        if let Some(limits) = &self.inner.limits {
            limits.admit(user_id, req.client_ip, now_ms()).await?;
        }
        self.sweep_in_background(&sale.sale_id);

        for _ in 0..3 {
            let outcome = self
                .inner
                .gate
                .try_hold(
                    &sale.sale_id,
                    &hold_id,
                    user_id,
                    req.quantity,
                    now_ms(),
                    self.inner.config.hold_ttl.as_millis() as i64,
                )
                .await?;
            match outcome {
                HoldOutcome::Held(hold) => {
                    common::metrics::counter("holds_taken_total").inc();
                    return self.confirm(&sale, hold, &req).await;
                }
                HoldOutcome::SoldOut { remaining, held } => {
                    if remaining <= 0 {
                        self.mark_sold_out(&sale.sale_id, held);
                    }
                    return Err(InventoryError::SoldOut);
                }
                HoldOutcome::LimitReached => return Err(InventoryError::LimitReached),
                HoldOutcome::Upcoming | HoldOutcome::Ended => return Err(InventoryError::NotLive),
                HoldOutcome::Missing => self.rebuild(&sale).await?,
                HoldOutcome::Exists(HoldState::Settled { .. }) => {
                    return self.replay(&sale.sale_id, &hold_id, user_id, &req).await;
                }
                HoldOutcome::Exists(HoldState::Held(_)) => {
                    // The same key is being checked out right now: wait for
                    // that request's outcome rather than racing it.
                    match self.wait_until_not_held(&sale.sale_id, &hold_id).await? {
                        Some(HoldState::Settled { .. }) => {
                            return self.replay(&sale.sale_id, &hold_id, user_id, &req).await
                        }
                        Some(HoldState::Held(_)) => return Err(InventoryError::Busy),
                        None => {} // it failed and was released: try ourselves
                    }
                }
            }
        }
        Err(InventoryError::Busy)
    }

    async fn confirm(
        &self,
        sale: &SaleDefinition,
        hold: Hold,
        req: &CheckoutRequest,
    ) -> Result<Checkout> {
        let inner = &self.inner;
        let order = Order {
            order_id: OrderId {
                sale_id: sale.sale_id.clone(),
                hold_id: hold.hold_id.clone(),
            },
            user_id: hold.user_id.clone(),
            quantity: hold.quantity,
            created_at: Utc::now(),
            idempotency_key: req.idempotency_key.clone(),
        };
        let request = ConfirmRequest {
            order,
            attempt: hold.expires_ms,
            stock_total: sale.stock_total,
            per_user_limit: sale.per_user_limit,
        };
        let written =
            tokio::time::timeout(inner.config.ledger_timeout, inner.ledger.confirm(&request)).await;
        let outcome = match written {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(crate::ledger::LedgerError::Definite(problem))) => {
                self.release(sale, &hold).await;
                return Err(InventoryError::Unavailable(problem));
            }
            Ok(Err(crate::ledger::LedgerError::Uncertain(problem))) => {
                self.resolve_later(&sale.sale_id, hold);
                return Err(InventoryError::Unavailable(problem));
            }
            Err(_elapsed) => {
                self.resolve_later(&sale.sale_id, hold);
                return Err(InventoryError::Unavailable("ledger write timed out".into()));
            }
        };
        match outcome {
            ConfirmOutcome::Confirmed(order) => {
                self.settle(&sale.sale_id, &hold).await;
                Ok(Checkout::Created(order))
            }
            ConfirmOutcome::AlreadyConfirmed(order) => {
                self.settle(&sale.sale_id, &hold).await;
                Ok(Checkout::Replayed(order))
            }
            ConfirmOutcome::Voided => {
                self.release(sale, &hold).await;
                Err(InventoryError::Busy)
            }
            ConfirmOutcome::SoldOut | ConfirmOutcome::LimitReached => {
                // The gate let through what the ledger refused: the gate is
                // out of step (e.g. rebuilt mid-checkout). Give the units
                // back and bring the gate in line with the ledger.
                self.release(sale, &hold).await;
                self.reconcile_in_background(&sale.sale_id);
                Err(if outcome == ConfirmOutcome::SoldOut {
                    InventoryError::SoldOut
                } else {
                    InventoryError::LimitReached
                })
            }
            ConfirmOutcome::KeyUsed(existing) => {
                self.release(sale, &hold).await;
                if existing.sale_id() == &req.sale_id && existing.quantity == req.quantity {
                    Ok(Checkout::Replayed(existing))
                } else {
                    Err(InventoryError::KeyReused)
                }
            }
        }
    }

    async fn settle(&self, sale_id: &SaleId, hold: &Hold) {
        match self
            .inner
            .gate
            .settle(sale_id, std::slice::from_ref(hold))
            .await
        {
            Ok(_) => common::metrics::counter("holds_settled_total").inc(),
            // The order is durable; the lapsed hold will be settled by the sweeper.
            Err(e) => tracing::warn!(%sale_id, error = %e, "settle failed; sweeper will finish it"),
        }
    }

    async fn release(&self, sale: &SaleDefinition, hold: &Hold) {
        match self.inner.gate.release(&sale.sale_id, hold).await {
            Ok(_) => {
                common::metrics::counter("holds_released_total").inc();
                self.clear_sold_out(&sale.sale_id);
            }
            Err(e) => {
                tracing::warn!(sale_id = %sale.sale_id, error = %e, "release failed; sweeper will finish it")
            }
        }
    }

    async fn replay(
        &self,
        sale_id: &SaleId,
        hold_id: &HoldId,
        user_id: &str,
        req: &CheckoutRequest,
    ) -> Result<Checkout> {
        let order_id = OrderId {
            sale_id: sale_id.clone(),
            hold_id: hold_id.clone(),
        };
        match self.inner.ledger.order(&order_id, user_id).await? {
            Some(order) if order.quantity == req.quantity => Ok(Checkout::Replayed(order)),
            Some(_) => Err(InventoryError::KeyReused),
            // Settled in the gate means confirmed in the ledger; a miss is a
            // race with a rebuild. Safe to retry.
            None => Err(InventoryError::Busy),
        }
    }

    async fn wait_until_not_held(
        &self,
        sale_id: &SaleId,
        hold_id: &HoldId,
    ) -> Result<Option<HoldState>> {
        let deadline =
            Instant::now() + self.inner.config.ledger_timeout + Duration::from_millis(500);
        let mut pause = Duration::from_millis(10);
        loop {
            let state = self.inner.gate.lookup(sale_id, hold_id).await?;
            if !matches!(state, Some(HoldState::Held(_))) || Instant::now() >= deadline {
                return Ok(state);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    fn sold_out_cached(&self, sale_id: &SaleId) -> bool {
        self.inner
            .sold_out
            .read()
            .ok()
            .and_then(|m| m.get(sale_id).copied())
            .is_some_and(|until| Instant::now() < until)
    }

    fn mark_sold_out(&self, sale_id: &SaleId, held: i64) {
        let ttl = if held > 0 {
            self.inner.config.sold_out_cache_held
        } else {
            self.inner.config.sold_out_cache
        };
        if let Ok(mut m) = self.inner.sold_out.write() {
            m.insert(sale_id.clone(), Instant::now() + ttl);
        }
    }

    fn clear_sold_out(&self, sale_id: &SaleId) {
        if self.sold_out_cached(sale_id) {
            if let Ok(mut m) = self.inner.sold_out.write() {
                m.remove(sale_id);
            }
        }
    }

    // ------------------------------------------------------------ orders

    pub async fn order(&self, user_id: &str, order_id: &str) -> Result<Order> {
        let order_id = OrderId::parse(order_id).ok_or(InventoryError::OrderNotFound)?;
        self.inner
            .ledger
            .order(&order_id, user_id)
            .await?
            .ok_or(InventoryError::OrderNotFound)
    }

    pub async fn user_orders(&self, user_id: &str, sale_id: Option<&SaleId>) -> Result<Vec<Order>> {
        Ok(self.inner.ledger.user_orders(user_id, sale_id).await?)
    }

    pub async fn sale_orders(&self, sale_id: &SaleId) -> Result<Vec<Order>> {
        self.definition(sale_id).await?;
        Ok(self.inner.ledger.sale_orders(sale_id).await?)
    }

    // ------------------------------------------------------------ upkeep

    /// Resolves every lapsed hold of a sale by asking the ledger, a few at
    /// a time.
    pub async fn sweep(&self, sale_id: &SaleId) -> Result<SweepReport> {
        use futures::StreamExt;
        let expired = self.inner.gate.expired(sale_id, now_ms(), 500).await?;
        let outcomes: Vec<Result<HoldTruth>> = futures::stream::iter(expired)
            .map(|hold| async move { self.resolve_hold(sale_id, &hold).await })
            .buffer_unordered(32)
            .collect()
            .await;
        let mut report = SweepReport::default();
        for outcome in outcomes {
            match outcome {
                Ok(HoldTruth::Confirmed(_)) => report.settled += 1,
                Ok(HoldTruth::Voided) => report.released += 1,
                Err(e) => {
                    tracing::warn!(%sale_id, error = %e, "could not resolve a lapsed hold");
                    report.unresolved += 1;
                }
            }
        }
        if report != SweepReport::default() {
            common::metrics::counter("holds_expired_total").add(report.settled + report.released);
            tracing::info!(%sale_id, ?report, "swept lapsed holds");
        }
        Ok(report)
    }

    /// Asks the ledger what became of a hold (voiding it unless its order
    /// is there) and ends the hold in the gate accordingly.
    async fn resolve_hold(&self, sale_id: &SaleId, hold: &Hold) -> Result<HoldTruth> {
        let truth = self.inner.ledger.resolve(sale_id, hold).await?;
        match truth {
            HoldTruth::Confirmed(_) => {
                self.inner
                    .gate
                    .settle(sale_id, std::slice::from_ref(hold))
                    .await?;
            }
            HoldTruth::Voided => {
                if self.inner.gate.release(sale_id, hold).await? {
                    self.clear_sold_out(sale_id);
                }
            }
        }
        Ok(truth)
    }

    /// After an answer we could not trust, find the truth soon rather than
    /// when the hold lapses: wait out the write that may still be in flight,
    /// then resolve. (If this process dies first, the sweeper does it.)
    fn resolve_later(&self, sale_id: &SaleId, hold: Hold) {
        common::metrics::counter("checkouts_uncertain_total").inc();
        let this = self.clone();
        let sale_id = sale_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(this.inner.config.ledger_timeout).await;
            if let Err(e) = this.resolve_hold(&sale_id, &hold).await {
                tracing::warn!(%sale_id, error = %e, "early resolve failed; the sweeper will retry");
            }
        });
    }

    /// Starts a sweep of the sale unless one ran within `sweep_interval` or
    /// one is still running in this process.
    fn sweep_in_background(&self, sale_id: &SaleId) {
        if !due(
            &self.inner.last_sweep,
            sale_id,
            self.inner.config.sweep_interval,
        ) {
            return;
        }
        if !lock(&self.inner.sweeping).insert(sale_id.clone()) {
            return;
        }
        let this = self.clone();
        let sale_id = sale_id.clone();
        tokio::spawn(async move {
            if let Err(e) = this.sweep(&sale_id).await {
                tracing::warn!(%sale_id, error = %e, "background sweep failed");
            }
            lock(&this.inner.sweeping).remove(&sale_id);
        });
    }

    fn reconcile_in_background(&self, sale_id: &SaleId) {
        if !due(&self.inner.last_reconcile, sale_id, Duration::from_secs(2)) {
            return;
        }
        let this = self.clone();
        let sale_id = sale_id.clone();
        tokio::spawn(async move {
            if let Err(e) = this.reconcile(&sale_id).await {
                tracing::warn!(%sale_id, error = %e, "background reconcile failed");
            }
        });
    }

    /// Brings the gate in line with the ledger: resolves lapsed holds,
    /// rebuilds the sale if the gate lost it, and counts every confirmed
    /// order the gate does not know. Safe at any time, on a live sale.
    pub async fn reconcile(&self, sale_id: &SaleId) -> Result<Breakdown> {
        let sale = self.definition(sale_id).await?;
        self.snapshot_or_rebuild(&sale).await?;
        self.sweep(sale_id).await?;
        let orders = self.inner.ledger.sale_orders(sale_id).await?;
        let holds: Vec<Hold> = orders.iter().map(as_settled_hold).collect();
        match self.inner.gate.settle(sale_id, &holds).await? {
            Some(adopted) if adopted > 0 => {
                tracing::warn!(%sale_id, adopted, "reconcile counted orders the gate had missed")
            }
            Some(_) => {}
            None => self.rebuild(&sale).await?,
        }
        self.breakdown(sale_id).await
    }

    /// Guarantee 5's terms, as both stores see them now.
    pub async fn breakdown(&self, sale_id: &SaleId) -> Result<Breakdown> {
        let sale = self.definition(sale_id).await?;
        let snap = self.snapshot_or_rebuild(&sale).await?;
        let ledger_confirmed = self.inner.ledger.confirmed_units(sale_id).await?;
        let total = sale.stock_total as i64;
        let lc = ledger_confirmed as i64;
        Ok(Breakdown {
            sale_id: sale_id.to_string(),
            stock_total: sale.stock_total,
            stock_remaining: snap.remaining,
            held: snap.held,
            confirmed: snap.confirmed,
            ledger_confirmed,
            open_holds: snap.open_holds,
            oldest_hold_expires_at: snap
                .oldest_expiry_ms
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(rfc3339),
            balanced: snap.remaining + snap.held + snap.confirmed == total,
            consistent: snap.confirmed <= lc && lc <= snap.confirmed + snap.held && lc <= total,
            hold_ttl_seconds: self.inner.config.hold_ttl.as_secs(),
        })
    }
}
