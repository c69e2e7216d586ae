//! The checkout path: admit → hold → confirm → settle. The hot path; the
//! repairs it may leave for later are in `recovery.rs`.

use std::time::{Duration, Instant};

use chrono::DateTime;

use super::{Checkout, CheckoutRequest, Inventory, Result};
use crate::error::InventoryError;
use crate::gate::{Hold, HoldOutcome, HoldState};
use crate::ledger::{as_settled_hold, ConfirmOutcome, ConfirmRequest, LedgerError};
use crate::overload::QueueSlot;
use crate::sale::{now_ms, HoldId, Order, OrderId, SaleDefinition, SaleId};

/// How long "the sale has not started" is answered from memory after the
/// gate said so: short, so the start is seen within this much of Redis' clock.
const UPCOMING_CACHE: Duration = Duration::from_millis(100);
/// An ended sale never reopens.
const ENDED_CACHE: Duration = Duration::from_secs(3600);

impl Inventory {
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
        // Answers that need no round trip: what the gate said a moment ago.
        // (Never the instance's own clock: the gate's is the only one.) A
        // keyed request may be a replay of an order made earlier, so it
        // must ask the gate first.
        if !keyed {
            if let Some(refusal) = self.cached_refusal(&sale.sale_id) {
                common::metrics::counter("sold_out_fast_path_total").inc();
                return Err(refusal);
            }
        }
        // Shedding first: it costs no round trip, and a shed attempt then
        // spends none of the caller's rate budget.
        let Some(mut slot) = self.inner.ledger_queue.try_enter() else {
            common::metrics::counter("checkout_shed_total").inc();
            return Err(InventoryError::Busy);
        };
        if let Some(limits) = &self.inner.limits {
            limits.admit(user_id, req.client_ip, now_ms()).await?;
        }
        self.start_sweep(&sale.sale_id).await;

        let ttl_ms = self.inner.config.hold_ttl.as_millis() as i64;
        for _ in 0..3 {
            let outcome = self
                .inner
                .gate
                .try_hold(&sale.sale_id, &hold_id, user_id, req.quantity, ttl_ms)
                .await?;
            match outcome {
                HoldOutcome::Held(hold) => {
                    common::metrics::counter("holds_taken_total").inc();
                    return self.confirm(&sale, hold, &req, &mut slot).await;
                }
                HoldOutcome::SoldOut { remaining, held } => {
                    if remaining <= 0 {
                        self.remember_sold_out(&sale.sale_id, held);
                    }
                    return Err(InventoryError::SoldOut);
                }
                HoldOutcome::LimitReached => return Err(InventoryError::LimitReached),
                HoldOutcome::Upcoming => {
                    self.remember_refusal(&sale.sale_id, InventoryError::NotLive, UPCOMING_CACHE);
                    return Err(InventoryError::NotLive);
                }
                HoldOutcome::Ended => {
                    self.remember_refusal(&sale.sale_id, InventoryError::NotLive, ENDED_CACHE);
                    return Err(InventoryError::NotLive);
                }
                // Lost, or being loaded: load it or wait for its loader
                // (bounded: 503 if it takes longer), then try again.
                HoldOutcome::Missing | HoldOutcome::Loading => self.rebuild(&sale).await?,
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
        slot: &mut QueueSlot,
    ) -> Result<Checkout> {
        let inner = &self.inner;
        // The order is stamped with the moment the gate granted its hold, by
        // the gate's clock: the ledger checks it against the sale window.
        let taken_ms = hold.expires_ms - inner.config.hold_ttl.as_millis() as i64;
        let order = Order {
            order_id: OrderId {
                sale_id: sale.sale_id.clone(),
                hold_id: hold.hold_id.clone(),
            },
            user_id: hold.user_id.clone(),
            quantity: hold.quantity,
            created_at: DateTime::from_timestamp_millis(taken_ms).unwrap_or_else(chrono::Utc::now),
            idempotency_key: req.idempotency_key.clone(),
        };
        let request = ConfirmRequest {
            order,
            attempt: hold.expires_ms,
            stock_total: sale.stock_total,
            per_user_limit: sale.per_user_limit,
        };
        slot.reached_ledger();
        let written =
            tokio::time::timeout(inner.config.ledger_timeout, inner.ledger.confirm(&request)).await;
        let outcome = match written {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(LedgerError::Definite(problem))) => {
                self.release(sale, &hold).await;
                return Err(InventoryError::Unavailable(problem));
            }
            Ok(Err(LedgerError::Uncertain(problem))) => {
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
                self.settle(sale, &hold).await;
                Ok(Checkout::Created(order))
            }
            ConfirmOutcome::AlreadyConfirmed(order) if order.quantity == hold.quantity => {
                self.settle(sale, &hold).await;
                Ok(Checkout::Replayed(order))
            }
            ConfirmOutcome::AlreadyConfirmed(order) => {
                // The key's order exists with another quantity (its first
                // hold was released before its write was known to land).
                // The gate must count *that* order, not this hold: give the
                // hold back, count the order, and refuse the new request.
                self.release(sale, &hold).await;
                self.settle(sale, &as_settled_hold(&order)).await;
                Err(InventoryError::KeyReused)
            }
            ConfirmOutcome::Voided => {
                self.release(sale, &hold).await;
                Err(InventoryError::Busy)
            }
            ConfirmOutcome::NotLive => {
                self.release(sale, &hold).await;
                Err(InventoryError::NotLive)
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
        }
    }

    /// Counts a confirmed order in the gate. If the gate lost the sale
    /// meanwhile (Redis restarted, a rebuild is under way or about to be),
    /// "missing" is no success: the rebuild may have read the ledger before
    /// this order landed. So the sale is rebuilt (or the running rebuild
    /// awaited) and the order settled again, which adopts it if the rebuild
    /// missed it and is a no-op if it did not.
    pub(super) async fn settle(&self, sale: &SaleDefinition, hold: &Hold) {
        let sale_id = &sale.sale_id;
        for _ in 0..3 {
            match self
                .inner
                .gate
                .settle(sale_id, std::slice::from_ref(hold))
                .await
            {
                Ok(Some(_)) => {
                    common::metrics::counter("holds_settled_total").inc();
                    return;
                }
                Ok(None) => {
                    if let Err(e) = self.rebuild(sale).await {
                        tracing::warn!(%sale_id, error = %e, "rebuild for a settle failed; reconcile will count the order");
                        self.reconcile_in_background(sale_id);
                        return;
                    }
                }
                // The order is durable; the lapsed hold will be settled by the sweeper.
                Err(e) => {
                    tracing::warn!(%sale_id, error = %e, "settle failed; sweeper will finish it");
                    return;
                }
            }
        }
        self.reconcile_in_background(sale_id);
    }

    async fn release(&self, sale: &SaleDefinition, hold: &Hold) {
        match self.inner.gate.release(&sale.sale_id, hold).await {
            Ok(_) => {
                common::metrics::counter("holds_released_total").inc();
                self.forget_refusal(&sale.sale_id);
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

    fn cached_refusal(&self, sale_id: &SaleId) -> Option<InventoryError> {
        self.inner
            .refusals
            .read()
            .ok()?
            .get(sale_id)
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, refusal)| refusal.clone())
    }

    fn remember_refusal(&self, sale_id: &SaleId, refusal: InventoryError, ttl: Duration) {
        if let Ok(mut m) = self.inner.refusals.write() {
            m.insert(sale_id.clone(), (Instant::now() + ttl, refusal));
        }
    }

    fn remember_sold_out(&self, sale_id: &SaleId, held: i64) {
        let ttl = if held > 0 {
            self.inner.config.sold_out_cache_held
        } else {
            self.inner.config.sold_out_cache
        };
        self.remember_refusal(sale_id, InventoryError::SoldOut, ttl);
    }

    /// Units came back: "sold out" may no longer be true.
    pub(super) fn forget_refusal(&self, sale_id: &SaleId) {
        if self.cached_refusal(sale_id) == Some(InventoryError::SoldOut) {
            if let Ok(mut m) = self.inner.refusals.write() {
                m.remove(sale_id);
            }
        }
    }
}
