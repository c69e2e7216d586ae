//! The one place that drives gate and ledger, in two halves:
//! [`checkout`] is the hot path (admit → hold → confirm → settle), and
//! [`recovery`] is everything that repairs what a fault left behind (sweep
//! lapsed holds, resolve one, rebuild a lost gate, reconcile, breakdown).
//!
//! ```text
//!   checkout ──► gate: take a hold ──► ledger: write the order ──► gate: settle
//!                    │ sold out / limit        │ refused                 (201)
//!                    ▼                          ▼
//!                  409 at once            gate: release ──► 409 / 503
//!                                              │ timed out: outcome unknown
//!                                              ▼
//!                     the hold lapses; a sweep claims it, asks the ledger
//!                     (void unless confirmed) and settles or releases it
//! ```
//!
//! Nothing here needs an always-on process: expired holds are swept lazily
//! by the requests that touch a sale (and by `reconcile`), so functions can
//! scale to zero. Bound: a hold lapses `hold_ttl` after it was taken (by the
//! gate's clock); the first stock view or checkout of that sale after that,
//! on any instance, starts a sweep that resolves it (at most one sweep per
//! `sweep_interval` per instance; each lapsed hold is claimed by one sweep
//! at a time, and claimed again `claim_lease` later if that sweeper died),
//! or `reconcile` does. Where background tasks run (HTTP servers), a
//! checkout whose ledger answer was lost also resolves its own hold
//! `ledger_timeout` later. Where they are frozen between requests (Lambda:
//! `inline_upkeep`), the sweep runs inside the request that starts it, so
//! the bound is the same on both shapes.

mod checkout;
mod recovery;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;

use crate::admission::CheckoutLimits;
use crate::error::InventoryError;
use crate::gate::StockGate;
use crate::ledger::Ledger;
use crate::overload::LedgerQueue;
use crate::sale::{Order, OrderId, SaleDefinition, SaleId, SaleView};

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
    /// How long a sweep's claim on a lapsed hold keeps other sweeps off it;
    /// if the claimer dies, the hold is claimed again this much later.
    pub claim_lease: Duration,
    /// Background tasks are frozen between requests (AWS Lambda freezes an
    /// execution environment between invocations): run sweeps inside the
    /// request that starts them instead of in a spawned task.
    pub inline_upkeep: bool,
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
            claim_lease: Duration::from_secs(4),
            inline_upkeep: false,
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
            claim_lease: Duration::from_millis(parsed_or(
                "SWEEP_CLAIM_MS",
                d.claim_lease.as_millis() as u64,
            )?),
            // On Lambda unless told otherwise.
            inline_upkeep: parsed_or(
                "INLINE_UPKEEP",
                std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some(),
            )?,
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
    /// Extension: a sale split into several gate buckets shows each one
    /// (`balanced` then also requires every bucket to balance on its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<BucketBreakdown>>,
}

/// One bucket's terms of guarantee 5.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BucketBreakdown {
    pub bucket: u16,
    pub stock_total: i64,
    pub stock_remaining: i64,
    pub held: i64,
    pub confirmed: i64,
    pub open_holds: u64,
    pub balanced: bool,
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
    /// Unknown sale ids, and the budget of ledger reads for ids not seen
    /// before, so misses stay cheap (see [`UnknownSales`]).
    unknown: Mutex<UnknownSales>,
    /// "Sold out" or "not live" answered from memory until the instant
    /// stored; both are answers the gate gave moments ago.
    refusals: RwLock<HashMap<SaleId, (Instant, InventoryError)>>,
    last_sweep: Mutex<HashMap<SaleId, Instant>>,
    /// Sales with a background sweep running now (one at a time per sale).
    sweeping: Mutex<std::collections::HashSet<SaleId>>,
    last_reconcile: Mutex<HashMap<SaleId, Instant>>,
    rebuilding: tokio::sync::Mutex<()>,
    /// Turns for the early resolves of uncertain checkouts.
    early_resolves: tokio::sync::Semaphore,
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

/// What keeps lookups of sale ids that do not exist cheap:
///
/// * one ledger read per id at a time: concurrent lookups of an id join
///   the *flight* in progress and share its answer (a stampede on a sale
///   this instance has not read yet costs one read, not thousands);
/// * a bounded memory of ids found missing, each for [`UNKNOWN_FOR`], the
///   oldest dropped first, one at a time, when it is full;
/// * a token bucket of reads for ids neither known nor remembered missing:
///   [`MISS_READS_PER_SECOND`] a second, up to [`MISS_READ_BURST`] at once.
///
/// Random ids therefore cost at most that many ledger reads a second per
/// instance, however many arrive.
struct UnknownSales {
    missing: HashMap<SaleId, Instant>,
    /// Insertion order of `missing`, for eviction; an entry whose instant
    /// no longer matches the map's was re-added or removed since.
    order: std::collections::VecDeque<(SaleId, Instant)>,
    /// Lookups in progress, one per id.
    flights: HashMap<SaleId, Flight>,
    /// Reads left in the bucket, and when it was last refilled.
    reads: f64,
    refilled: Instant,
}

/// One lookup's answer, shared by everyone who asked for the id meanwhile:
/// the definition, `None` (missing, or not read: budget spent), or why the
/// ledger could not say.
type Flight = Arc<tokio::sync::OnceCell<Result<Option<Arc<SaleDefinition>>>>>;

enum Lookup {
    /// Found missing a moment ago: `404` from memory.
    Missing,
    /// Join (or start) the lookup of this id.
    Join(Flight),
}

/// How long an id found missing is answered from memory.
const UNKNOWN_FOR: Duration = Duration::from_secs(1);
/// Ids remembered missing at most.
const UNKNOWN_CAP: usize = 10_000;
/// Ledger reads per second per instance for ids not known to it. Real
/// sales are few and each is read once per instance; this is for a scraper.
const MISS_READS_PER_SECOND: f64 = 50.0;
const MISS_READ_BURST: f64 = 50.0;

impl Default for UnknownSales {
    fn default() -> Self {
        Self {
            missing: HashMap::new(),
            order: std::collections::VecDeque::new(),
            flights: HashMap::new(),
            reads: MISS_READ_BURST,
            refilled: Instant::now(),
        }
    }
}

impl UnknownSales {
    fn lookup(&mut self, id: &SaleId, now: Instant) -> Lookup {
        let missing = self
            .missing
            .get(id)
            .is_some_and(|seen| now.saturating_duration_since(*seen) < UNKNOWN_FOR);
        if missing {
            return Lookup::Missing;
        }
        Lookup::Join(self.flights.entry(id.clone()).or_default().clone())
    }

    /// Spends one read from the bucket, if there is one.
    fn take_read(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.reads = (self.reads + elapsed * MISS_READS_PER_SECOND).min(MISS_READ_BURST);
        self.refilled = now;
        if self.reads < 1.0 {
            return false;
        }
        self.reads -= 1.0;
        true
    }

    /// Remembers that `id` does not exist, evicting the oldest entries
    /// (expired or not) to stay within [`UNKNOWN_CAP`].
    fn remember(&mut self, id: &SaleId, now: Instant) {
        while let Some((old, seen)) = self.order.front() {
            let expired = now.saturating_duration_since(*seen) >= UNKNOWN_FOR;
            if !expired && self.missing.len() < UNKNOWN_CAP {
                break;
            }
            if self.missing.get(old) == Some(seen) {
                self.missing.remove(old);
            }
            self.order.pop_front();
        }
        self.missing.insert(id.clone(), now);
        self.order.push_back((id.clone(), now));
    }

    /// A sale with this id was just created.
    fn remove(&mut self, id: &SaleId) {
        self.missing.remove(id);
    }
}

/// Takes a finished flight off the map (later lookups then use the caches
/// it filled), or an abandoned one when its last participant leaves (a
/// cancelled request must not leave an entry behind for ever).
struct LeaveFlight<'a> {
    unknown: &'a Mutex<UnknownSales>,
    sale_id: &'a SaleId,
    flight: &'a Flight,
}

impl Drop for LeaveFlight<'_> {
    fn drop(&mut self) {
        let mut unknown = lock(self.unknown);
        // Two owners left: the map's and ours.
        let done = self.flight.initialized() || Arc::strong_count(self.flight) <= 2;
        let ours = unknown
            .flights
            .get(self.sale_id)
            .is_some_and(|f| Arc::ptr_eq(f, self.flight));
        if done && ours {
            unknown.flights.remove(self.sale_id);
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
                refusals: RwLock::default(),
                last_sweep: Mutex::default(),
                sweeping: Mutex::default(),
                last_reconcile: Mutex::default(),
                rebuilding: tokio::sync::Mutex::new(()),
                early_resolves: tokio::sync::Semaphore::new(recovery::EARLY_RESOLVES),
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

    /// The definition of a sale: from memory once it was read (definitions
    /// never change), else from the ledger.
    ///
    /// An id that is not in memory costs a ledger read, so a scraper or an
    /// attacker sending random ids could make every request one. Three
    /// things stop that (`UnknownSales`): concurrent lookups of one id share
    /// one read; an id just found missing is answered from memory for a
    /// moment; and reads for ids not in memory are limited to a budget per
    /// instance, past which the answer is `404 sale_not_found` without a
    /// read. The price: while the budget is spent, a real sale this
    /// instance has not read yet is `404` too, until one of its lookups
    /// gets a read (the budget refills continuously; the creating instance,
    /// and every instance that read it once, know it for good).
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
        let unknown = &self.inner.unknown;
        let flight = match lock(unknown).lookup(sale_id, Instant::now()) {
            Lookup::Missing => return Err(InventoryError::SaleNotFound),
            Lookup::Join(flight) => flight,
        };
        let _leave = LeaveFlight {
            unknown,
            sale_id,
            flight: &flight,
        };
        let read = async {
            if !lock(unknown).take_read(Instant::now()) {
                common::metrics::counter("sale_lookups_unread_total").inc();
                return Ok(None);
            }
            match self.inner.ledger.sale(sale_id).await? {
                Some(sale) => Ok(Some(self.cache(sale))),
                None => {
                    lock(unknown).remember(sale_id, Instant::now());
                    Ok(None)
                }
            }
        };
        flight
            .get_or_init(|| read)
            .await
            .clone()?
            .ok_or(InventoryError::SaleNotFound)
    }

    /// The public sale view, with live stock. Also starts a sweep of lapsed
    /// holds (in the background where there is one: see `start_sweep`).
    pub async fn view(&self, sale_id: &SaleId) -> Result<SaleView> {
        let sale = self.definition(sale_id).await?;
        self.start_sweep(sale_id).await;
        let snapshot = self.snapshot_or_rebuild(&sale).await?;
        Ok(sale.view(snapshot.remaining.max(0) as u64, Utc::now()))
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
}
