//! The stock gate: the first line against overselling, sized for a stampede.
//!
//! Every checkout first takes a *hold* here: one atomic step that checks the
//! sale window, the user's limit and the remaining stock, then moves units
//! from `remaining` to `held`. A hold ends in exactly one of two ways:
//! *settled* (its order is in the ledger: `held` → `confirmed`) or
//! *released* (its checkout failed: `held` → `remaining`). A hold nobody
//! ends expires, and the sweeper asks the ledger which of the two it was.
//!
//! Two implementations: [`RedisGate`] (the real one; the logic is one Lua
//! script, `gate.lua`, run per bucket of a sale: see `buckets.rs`) and
//! [`MemoryGate`] (embedded mode, one process: a sale is one pool however
//! many buckets it names). Both pass the same conformance suite
//! (`tests/gate_conformance.rs`).
//!
//! A sale the gate lost is loaded back from the ledger in pages, never in
//! one call, so a sale of a million orders neither blocks Redis nor sits
//! in one process' memory at once: [`StockGate::begin_load`] creates the
//! sale empty and *loading* under a lease (one loader among all instances),
//! [`StockGate::load_page`] counts a page of confirmed orders, and
//! [`StockGate::finish_load`] opens the sale. While it loads, holds are
//! refused with [`HoldOutcome::Loading`]; settling works (an order confirmed
//! meanwhile is adopted, and the page that carries it too counts it once).

pub mod buckets;
mod memory;
mod redis;

pub use self::buckets::Layout;
pub use self::memory::MemoryGate;
pub use self::redis::RedisGate;

use async_trait::async_trait;

use crate::sale::{HoldId, SaleDefinition, SaleId};

/// Units set aside for one checkout until its order is written or it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub hold_id: HoldId,
    pub user_id: String,
    pub quantity: u32,
    /// When the hold lapses; also tells apart two holds of the same id
    /// (an Idempotency-Key retried after its first attempt failed).
    pub expires_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    Held(Hold),
    /// Not enough stock. `remaining` is what is left (maybe less than asked);
    /// `held` is what may still come back from unfinished checkouts.
    SoldOut {
        remaining: i64,
        held: i64,
    },
    LimitReached,
    Upcoming,
    Ended,
    /// The gate does not know this sale (new, or Redis lost it): rebuild it
    /// from the ledger and try again.
    Missing,
    /// A hold with this id exists already: an Idempotency-Key replay.
    Exists(HoldState),
    /// The sale is being loaded from the ledger (by this instance or
    /// another): wait for the load and try again.
    Loading,
}

/// What [`StockGate::begin_load`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadStart {
    /// The caller is the sale's loader: it feeds the ledger's pages to
    /// `load_page` under this lease, then calls `finish_load`.
    Begun(LoadLease),
    /// The gate has the sale, loaded.
    Loaded,
    /// Another caller is loading it, and its lease is live.
    Busy,
}

/// One loader's claim on loading a sale. Every page loaded renews it; once
/// it lapses (the loader died), the next `begin_load` wipes the half-loaded
/// sale and begins again, and the old loader's calls are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadLease {
    /// Tells this loader apart from one that took over after it.
    pub token: String,
    /// How long the lease lasts after the last call that renewed it.
    pub lease_ms: i64,
}

/// The lease of a load done in one call ([`StockGate::load`]).
pub const LOAD_LEASE_MS: i64 = 10_000;
/// Orders of one page `load` passes to `load_page`.
const LOAD_PAGE: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldState {
    Held(Hold),
    Settled { user_id: String, quantity: u32 },
}

/// The gate's counters for one sale; `remaining + held + confirmed = total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateSnapshot {
    pub total: i64,
    pub remaining: i64,
    pub held: i64,
    pub confirmed: i64,
    pub open_holds: u64,
    pub oldest_expiry_ms: Option<i64>,
    /// The sale is being loaded: the counters are not complete yet.
    pub loading: bool,
}

impl GateSnapshot {
    /// A sale's counters from its buckets' (each balanced on its own).
    pub fn sum(buckets: &[GateSnapshot]) -> GateSnapshot {
        GateSnapshot {
            total: buckets.iter().map(|b| b.total).sum(),
            remaining: buckets.iter().map(|b| b.remaining).sum(),
            held: buckets.iter().map(|b| b.held).sum(),
            confirmed: buckets.iter().map(|b| b.confirmed).sum(),
            open_holds: buckets.iter().map(|b| b.open_holds).sum(),
            oldest_expiry_ms: buckets.iter().filter_map(|b| b.oldest_expiry_ms).min(),
            loading: buckets.iter().any(|b| b.loading),
        }
    }

    pub fn balanced(&self) -> bool {
        self.remaining + self.held + self.confirmed == self.total
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("stock gate unavailable: {0}")]
pub struct GateError(pub String);

#[async_trait]
pub trait StockGate: Send + Sync + 'static {
    /// Loads a sale the gate does not have, counting `confirmed` orders as
    /// sold: the chunked protocol below, run by one caller that has every
    /// order at hand (a new sale, tests). Returns `false` (and changes
    /// nothing) if the gate has the sale already or another caller is
    /// loading it.
    async fn load(&self, sale: &SaleDefinition, confirmed: &[Hold]) -> Result<bool, GateError> {
        let lease = match self.begin_load(sale, LOAD_LEASE_MS).await? {
            LoadStart::Begun(lease) => lease,
            LoadStart::Loaded | LoadStart::Busy => return Ok(false),
        };
        let lost = || GateError(format!("lost the lease on loading {}", sale.sale_id));
        for page in confirmed.chunks(LOAD_PAGE) {
            if !self.load_page(sale, &lease, page).await? {
                return Err(lost());
            }
        }
        if !self.finish_load(sale, &lease).await? {
            return Err(lost());
        }
        Ok(true)
    }

    /// Starts loading a sale, unless the gate has it loaded (every bucket
    /// of it) or another loader's lease on it is live. Begun, the sale is
    /// there, empty and loading: holds are refused, settles adopt. A sale
    /// that lost only some of its buckets is loaded again whole.
    async fn begin_load(
        &self,
        sale: &SaleDefinition,
        lease_ms: i64,
    ) -> Result<LoadStart, GateError>;

    /// Counts a page of confirmed orders as sold and renews the lease.
    /// Idempotent per hold id: an order the gate knows already (adopted by
    /// a settle meanwhile, or in an earlier page) is not counted again.
    /// Done in calls of bounded size, whatever the page's. `false` if the
    /// lease is lost (another loader took over, or the sale was forgotten):
    /// then the caller stops, and whatever it counted goes with the sale
    /// (the new loader begins each bucket afresh before reading the ledger).
    async fn load_page(
        &self,
        sale: &SaleDefinition,
        lease: &LoadLease,
        orders: &[Hold],
    ) -> Result<bool, GateError>;

    /// Opens a loaded sale for holds. `false` if the lease was lost.
    async fn finish_load(
        &self,
        sale: &SaleDefinition,
        lease: &LoadLease,
    ) -> Result<bool, GateError>;

    /// The atomic check-and-take at the heart of checkout. The sale window
    /// and the hold's expiry are judged by the gate's own clock (Redis'
    /// `TIME`), never the caller's: one clock for every instance.
    async fn try_hold(
        &self,
        sale: &SaleId,
        hold_id: &HoldId,
        user_id: &str,
        quantity: u32,
        ttl_ms: i64,
    ) -> Result<HoldOutcome, GateError>;

    /// Marks orders confirmed. Idempotent; a hold the gate lost (Redis
    /// restarted) is adopted, i.e. counted as sold now. Returns how many
    /// were adopted, or `None` if the gate does not know the sale.
    async fn settle(&self, sale: &SaleId, orders: &[Hold]) -> Result<Option<u64>, GateError>;

    /// Gives a failed checkout's units back. `false` if that exact hold is
    /// no longer held (already settled, released or replaced).
    async fn release(&self, sale: &SaleId, hold: &Hold) -> Result<bool, GateError>;

    async fn lookup(&self, sale: &SaleId, hold_id: &HoldId)
        -> Result<Option<HoldState>, GateError>;

    /// Holds whose time is up (by the gate's clock), oldest first, at most
    /// `max` of them, each *claimed* for `lease_ms`: no other call returns
    /// it until the lease lapses, so of many instances sweeping one sale,
    /// one resolves a given hold (and if it dies, another does later).
    async fn claim_expired(
        &self,
        sale: &SaleId,
        max: usize,
        lease_ms: i64,
    ) -> Result<Vec<Hold>, GateError>;

    async fn snapshot(&self, sale: &SaleId) -> Result<Option<GateSnapshot>, GateError>;

    /// The counters of each bucket of the sale (one for a sale of one
    /// bucket, and for gates that do not split stock); `None` if the gate
    /// lacks the sale or any of its buckets.
    async fn bucket_snapshots(
        &self,
        sale: &SaleId,
    ) -> Result<Option<Vec<GateSnapshot>>, GateError> {
        Ok(self.snapshot(sale).await?.map(|s| vec![s]))
    }

    /// Drops everything the gate knows about a sale (a stale leftover of a
    /// sale the ledger does not have, or a test simulating a lost Redis).
    async fn forget(&self, sale: &SaleId) -> Result<(), GateError>;

    async fn ready(&self) -> Result<(), String>;
}

/// Parses a hold record `state|qty|expires|user`, the format `gate.lua`
/// writes. The state may carry a part (`hu`, `hp2`, `sk`, ...: a hold split
/// over buckets); every part tells the hold's state, user and quantity.
pub(crate) fn parse_record(hold_id: &HoldId, rec: &str) -> Option<HoldState> {
    let mut parts = rec.splitn(4, '|');
    let state = parts.next()?.get(..1)?;
    let quantity: u32 = parts.next()?.parse().ok()?;
    let expires_ms: i64 = parts.next()?.parse().ok()?;
    let user_id = parts.next()?.to_owned();
    match state {
        "h" => Some(HoldState::Held(Hold {
            hold_id: hold_id.clone(),
            user_id,
            quantity,
            expires_ms,
        })),
        "s" => Some(HoldState::Settled { user_id, quantity }),
        _ => None,
    }
}
