//! Recovery: everything that repairs what a fault left behind, so that no
//! stock leaks for good (guarantee 4) and the gate agrees with the ledger
//! (guarantee 5). None of it is on the checkout's critical path, and none
//! of it needs an always-on process: requests that touch a sale start it.

use std::time::Duration;

use tokio::time::Instant;

use super::{due, lock, Breakdown, BucketBreakdown, Inventory, Result, SweepReport};
use crate::error::InventoryError;
use crate::gate::{GateSnapshot, Hold, LoadLease, LoadStart};
use crate::ledger::{as_settled_hold, HoldTruth};
use crate::sale::{jittered, rfc3339, SaleDefinition, SaleId};
use crate::waiting_room::StockLevel;

/// Lapsed holds one sweep claims at most.
const SWEEP_BATCH: usize = 500;
/// Holds resolved at once by one sweep.
const SWEEP_WIDTH: usize = 32;
/// Early resolves of uncertain checkouts running at once per instance.
pub(super) const EARLY_RESOLVES: usize = 16;
/// Orders a rebuild or a reconcile reads from the ledger at a time: all of
/// a sale an instance holds in memory at once, however big the sale.
const REBUILD_PAGE: usize = 1_000;
/// A loader's lease on a sale, renewed by every page it loads. If it dies,
/// another instance takes the load over this long after its last page.
const LOAD_LEASE: Duration = Duration::from_secs(10);
/// The longest pause between two looks at a sale another instance loads.
const LOAD_POLL_MAX: Duration = Duration::from_millis(250);

impl Inventory {
    /// The sale's counters, loading it from the ledger first if the gate
    /// lost it, or waiting for the load if one is under way.
    pub(super) async fn snapshot_or_rebuild(&self, sale: &SaleDefinition) -> Result<GateSnapshot> {
        match self.inner.gate.snapshot(&sale.sale_id).await? {
            Some(s) if !s.loading => return Ok(s),
            _ => self.rebuild(sale).await?,
        }
        match self.inner.gate.snapshot(&sale.sale_id).await? {
            Some(s) if !s.loading => Ok(s),
            _ => Err(InventoryError::Unavailable(
                "gate lost the sale again".into(),
            )),
        }
    }

    /// Every bucket's counters, rebuilding the sale (or the buckets it
    /// lost) from the ledger first if need be.
    async fn buckets_or_rebuild(&self, sale: &SaleDefinition) -> Result<Vec<GateSnapshot>> {
        let loaded = |b: &Option<Vec<GateSnapshot>>| {
            b.as_ref().is_some_and(|b| b.iter().all(|s| !s.loading))
        };
        let buckets = self.inner.gate.bucket_snapshots(&sale.sale_id).await?;
        if loaded(&buckets) {
            return Ok(buckets.unwrap_or_default());
        }
        self.rebuild(sale).await?;
        let buckets = self.inner.gate.bucket_snapshots(&sale.sale_id).await?;
        if loaded(&buckets) {
            return Ok(buckets.unwrap_or_default());
        }
        Err(InventoryError::Unavailable(
            "gate lost the sale again".into(),
        ))
    }

    /// Makes sure the gate has the sale loaded: loads it from the ledger
    /// if no one is, or waits for the instance that is. The wait is bounded
    /// by the ledger timeout (a checkout waiting for a rebuild waits no
    /// longer than for the ledger itself), then the answer is `503`; the
    /// load goes on without the caller (in a task of its own, so a request
    /// cancelled midway does not cancel it), and a later request finds the
    /// sale loaded. Where tasks are frozen between requests
    /// (`inline_upkeep`), the load runs inside the request that begins it.
    pub(super) async fn rebuild(&self, sale: &SaleDefinition) -> Result<()> {
        let deadline = Instant::now() + self.inner.config.ledger_timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let loaded = match self.inner.gate.bucket_snapshots(&sale.sale_id).await? {
                Some(buckets) => buckets.iter().all(|s| !s.loading),
                None => false,
            };
            if loaded {
                return Ok(());
            }
            // Where this process loads a sale already, or is about to,
            // watch the gate rather than queue up behind it.
            let idle = self.inner.rebuilding.try_lock().is_ok();
            if idle && self.load_or_join(sale, deadline).await? {
                return Ok(());
            }
            if Instant::now() + pause >= deadline {
                return Err(InventoryError::Unavailable(
                    "the sale is being loaded from the ledger".into(),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LOAD_POLL_MAX);
        }
    }

    /// One attempt at loading the sale, waited for until `deadline`:
    /// `true` once it is loaded, `false` while another loader has it.
    async fn load_or_join(&self, sale: &SaleDefinition, deadline: Instant) -> Result<bool> {
        let this = self.clone();
        let sale = sale.clone();
        let attempt = async move { this.load_once(&sale).await };
        if self.inner.config.inline_upkeep {
            return attempt.await;
        }
        match tokio::time::timeout_at(deadline, tokio::spawn(attempt)).await {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) => Err(InventoryError::Unavailable(format!("rebuild failed: {e}"))),
            Err(_) => Err(InventoryError::Unavailable(
                "the sale is still being loaded from the ledger".into(),
            )),
        }
    }

    /// Begins loading the sale (one loader at a time per process, and one
    /// per sale among all by the gate's lease) and, if this instance is the
    /// loader, loads it.
    async fn load_once(&self, sale: &SaleDefinition) -> Result<bool> {
        let _one_at_a_time = self.inner.rebuilding.lock().await;
        let lease_ms = LOAD_LEASE.as_millis() as i64;
        match self.inner.gate.begin_load(sale, lease_ms).await? {
            LoadStart::Loaded => Ok(true),
            LoadStart::Busy => Ok(false),
            LoadStart::Begun(lease) => self.load_pages(sale, &lease).await,
        }
    }

    /// Feeds the ledger's confirmed orders to the gate a page at a time.
    /// Orders confirmed meanwhile are counted by their settle if no page
    /// carries them, and once if both do. `false` if the lease was lost (a
    /// page took longer than the lease and another instance took over).
    async fn load_pages(&self, sale: &SaleDefinition, lease: &LoadLease) -> Result<bool> {
        let (gate, ledger) = (&self.inner.gate, &self.inner.ledger);
        let started = std::time::Instant::now();
        let mut after: Option<String> = None;
        let mut orders = 0usize;
        loop {
            let page = ledger
                .sale_orders_page(&sale.sale_id, after.as_deref(), REBUILD_PAGE)
                .await?;
            let holds: Vec<Hold> = page.orders.iter().map(as_settled_hold).collect();
            orders += holds.len();
            if !gate.load_page(sale, lease, &holds).await? {
                tracing::warn!(sale_id = %sale.sale_id, orders, "lost the lease on loading the sale; another instance loads it");
                return Ok(false);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        if !gate.finish_load(sale, lease).await? {
            return Ok(false);
        }
        common::metrics::counter("gate_rebuilds_total").inc();
        tracing::warn!(sale_id = %sale.sale_id, orders, took_ms = started.elapsed().as_millis() as u64, "gate rebuilt from the ledger");
        Ok(true)
    }

    // ------------------------------------------------------------ upkeep

    /// Resolves the lapsed holds of a sale by asking the ledger, a few at
    /// a time. Each is claimed first (`claim_expired`), so of many
    /// instances sweeping one sale, one resolves a given hold.
    pub async fn sweep(&self, sale_id: &SaleId) -> Result<SweepReport> {
        use futures::StreamExt;
        let lease = self.inner.config.claim_lease.as_millis() as i64;
        let claimed = self
            .inner
            .gate
            .claim_expired(sale_id, SWEEP_BATCH, lease)
            .await?;
        let outcomes: Vec<Result<HoldTruth>> = futures::stream::iter(claimed)
            .map(|hold| async move { self.resolve_hold(sale_id, &hold).await })
            .buffer_unordered(SWEEP_WIDTH)
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
                    self.forget_refusal(sale_id);
                }
            }
        }
        Ok(truth)
    }

    /// After an answer we could not trust, find the truth soon rather than
    /// when the hold lapses: wait out the write that may still be in flight,
    /// then resolve. (If this process dies first, or is frozen, as a Lambda
    /// environment is between requests, the sweeper does it.)
    pub(super) fn resolve_later(&self, sale_id: &SaleId, hold: Hold) {
        common::metrics::counter("checkouts_uncertain_total").inc();
        let this = self.clone();
        let sale_id = sale_id.clone();
        tokio::spawn(async move {
            // Spread out: after an outage, every checkout that timed out in
            // it would otherwise ask the recovering ledger in the same
            // instant, and at most EARLY_RESOLVES at once per instance.
            let timeout = this.inner.config.ledger_timeout;
            tokio::time::sleep(jittered(timeout, 0.5)).await;
            let Ok(_turn) = this.inner.early_resolves.acquire().await else {
                return;
            };
            if let Err(e) = this.resolve_hold(&sale_id, &hold).await {
                tracing::warn!(%sale_id, error = %e, "early resolve failed; the sweeper will retry");
            }
        });
    }

    /// Starts a sweep of the sale unless one ran within `sweep_interval` or
    /// one is still running in this process: in a spawned task, or, where
    /// background tasks are frozen between requests (`inline_upkeep`),
    /// inside this request, bounded by the ledger timeout (a claim it does
    /// not finish lapses and is taken again by a later sweep).
    pub(super) async fn start_sweep(&self, sale_id: &SaleId) {
        if self.inner.config.inline_upkeep {
            if due(
                &self.inner.last_sweep,
                sale_id,
                self.inner.config.sweep_interval,
            ) {
                let budget = self.inner.config.ledger_timeout;
                match tokio::time::timeout(budget, self.sweep(sale_id)).await {
                    Ok(Err(e)) => tracing::warn!(%sale_id, error = %e, "inline sweep failed"),
                    Err(_) => {
                        tracing::warn!(%sale_id, "inline sweep ran out of time; the rest is claimed again later")
                    }
                    Ok(Ok(_)) => {}
                }
            }
            return;
        }
        self.sweep_in_background(sale_id);
    }

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

    pub(super) fn reconcile_in_background(&self, sale_id: &SaleId) {
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
    /// order the gate does not know, reading the ledger a page at a time.
    /// Safe at any time, on a live sale.
    pub async fn reconcile(&self, sale_id: &SaleId) -> Result<Breakdown> {
        let sale = self.definition(sale_id).await?;
        self.snapshot_or_rebuild(&sale).await?;
        self.sweep(sale_id).await?;
        let mut after: Option<String> = None;
        let mut adopted = 0;
        loop {
            let page = self
                .inner
                .ledger
                .sale_orders_page(sale_id, after.as_deref(), REBUILD_PAGE)
                .await?;
            let holds: Vec<Hold> = page.orders.iter().map(as_settled_hold).collect();
            match self.inner.gate.settle(sale_id, &holds).await? {
                Some(n) => adopted += n,
                // Lost meanwhile: the rebuild reads every page itself.
                None => {
                    self.rebuild(&sale).await?;
                    break;
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        if adopted > 0 {
            tracing::warn!(%sale_id, adopted, "reconcile counted orders the gate had missed");
        }
        self.breakdown(sale_id).await
    }

    /// What the sale can still serve, for its waiting room: units neither
    /// held nor sold, and whether nothing is left that could come back.
    /// Starts a sweep, so lapsed holds return and a sell-out is final.
    pub async fn stock_level(&self, sale: &SaleDefinition) -> Result<StockLevel> {
        self.start_sweep(&sale.sale_id).await;
        let snap = self.snapshot_or_rebuild(sale).await?;
        Ok(StockLevel {
            remaining: snap.remaining,
            sold_out: snap.remaining <= 0 && snap.held <= 0,
        })
    }

    /// Guarantee 5's terms, as both stores see them now.
    pub async fn breakdown(&self, sale_id: &SaleId) -> Result<Breakdown> {
        let sale = self.definition(sale_id).await?;
        let buckets = self.buckets_or_rebuild(&sale).await?;
        let snap = GateSnapshot::sum(&buckets);
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
            balanced: snap.total == total && buckets.iter().all(GateSnapshot::balanced),
            consistent: snap.confirmed <= lc && lc <= snap.confirmed + snap.held && lc <= total,
            hold_ttl_seconds: self.inner.config.hold_ttl.as_secs(),
            buckets: (buckets.len() > 1).then(|| {
                buckets
                    .iter()
                    .enumerate()
                    .map(|(b, s)| BucketBreakdown {
                        bucket: b as u16,
                        stock_total: s.total,
                        stock_remaining: s.remaining,
                        held: s.held,
                        confirmed: s.confirmed,
                        open_holds: s.open_holds,
                        balanced: s.balanced(),
                    })
                    .collect()
            }),
        })
    }
}
