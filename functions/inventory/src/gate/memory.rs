//! The gate in process memory, for embedded mode: the same rules as
//! `gate.lua`, with a mutex standing in for Redis' single thread.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    GateError, GateSnapshot, Hold, HoldOutcome, HoldState, LoadLease, LoadStart, StockGate,
};
use crate::sale::{now_ms, HoldId, SaleDefinition, SaleId};

#[derive(Default)]
struct SaleGate {
    total: i64,
    limit: i64,
    starts_ms: i64,
    ends_ms: i64,
    remaining: i64,
    held: i64,
    confirmed: i64,
    users: HashMap<String, i64>,
    holds: HashMap<HoldId, HoldState>,
    /// Open holds by when they are next due for a sweep: their expiry, or
    /// the end of a sweeper's claim on them (`score` is that instant).
    expiry: BTreeSet<(i64, HoldId)>,
    score: HashMap<HoldId, i64>,
    /// While the sale loads: its loader's token and when its lease lapses.
    loader: Option<(String, i64)>,
}

impl SaleGate {
    fn schedule(&mut self, id: &HoldId, at: i64) {
        self.unschedule(id);
        self.expiry.insert((at, id.clone()));
        self.score.insert(id.clone(), at);
    }

    fn unschedule(&mut self, id: &HoldId) {
        if let Some(at) = self.score.remove(id) {
            self.expiry.remove(&(at, id.clone()));
        }
    }

    fn adopt(&mut self, order: &Hold) {
        let qty = i64::from(order.quantity);
        self.remaining -= qty;
        self.confirmed += qty;
        *self.users.entry(order.user_id.clone()).or_default() += qty;
        self.holds.insert(
            order.hold_id.clone(),
            HoldState::Settled {
                user_id: order.user_id.clone(),
                quantity: order.quantity,
            },
        );
    }

    fn settle(&mut self, order: &Hold) -> bool {
        match self.holds.get(&order.hold_id).cloned() {
            Some(HoldState::Settled { .. }) => false,
            Some(HoldState::Held(hold)) => {
                let qty = i64::from(hold.quantity);
                self.held -= qty;
                self.confirmed += qty;
                self.unschedule(&hold.hold_id);
                self.holds.insert(
                    hold.hold_id.clone(),
                    HoldState::Settled {
                        user_id: hold.user_id,
                        quantity: hold.quantity,
                    },
                );
                false
            }
            None => {
                self.adopt(order);
                true
            }
        }
    }
}

#[derive(Default)]
pub struct MemoryGate {
    sales: Mutex<HashMap<SaleId, SaleGate>>,
}

impl MemoryGate {
    fn sales(&self) -> MutexGuard<'_, HashMap<SaleId, SaleGate>> {
        match self.sales.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The sale, if `lease` is its loader's; renews the lease.
    fn loading<'a>(
        sales: &'a mut HashMap<SaleId, SaleGate>,
        sale: &SaleId,
        lease: &LoadLease,
    ) -> Option<&'a mut SaleGate> {
        let gate = sales.get_mut(sale)?;
        match &mut gate.loader {
            Some((token, until)) if *token == lease.token => {
                *until = now_ms() + lease.lease_ms;
                Some(gate)
            }
            _ => None,
        }
    }
}

#[async_trait]
impl StockGate for MemoryGate {
    async fn begin_load(
        &self,
        sale: &SaleDefinition,
        lease_ms: i64,
    ) -> Result<LoadStart, GateError> {
        let now = now_ms();
        let mut sales = self.sales();
        match sales.get(&sale.sale_id).map(|g| &g.loader) {
            Some(None) => return Ok(LoadStart::Loaded),
            Some(Some((_, until))) if *until > now => return Ok(LoadStart::Busy),
            _ => {}
        }
        let total = sale.stock_total as i64;
        let lease = LoadLease {
            token: ulid::Ulid::new().to_string(),
            lease_ms,
        };
        let gate = SaleGate {
            total,
            limit: i64::from(sale.per_user_limit),
            starts_ms: sale.starts_ms(),
            ends_ms: sale.ends_ms(),
            remaining: total,
            loader: Some((lease.token.clone(), now + lease_ms)),
            ..SaleGate::default()
        };
        sales.insert(sale.sale_id.clone(), gate);
        Ok(LoadStart::Begun(lease))
    }

    async fn load_page(
        &self,
        sale: &SaleDefinition,
        lease: &LoadLease,
        orders: &[Hold],
    ) -> Result<bool, GateError> {
        let mut sales = self.sales();
        let Some(gate) = Self::loading(&mut sales, &sale.sale_id, lease) else {
            return Ok(false);
        };
        for order in orders {
            if !gate.holds.contains_key(&order.hold_id) {
                gate.adopt(order);
            }
        }
        Ok(true)
    }

    async fn finish_load(
        &self,
        sale: &SaleDefinition,
        lease: &LoadLease,
    ) -> Result<bool, GateError> {
        let mut sales = self.sales();
        let Some(gate) = Self::loading(&mut sales, &sale.sale_id, lease) else {
            return Ok(false);
        };
        gate.loader = None;
        Ok(true)
    }

    async fn try_hold(
        &self,
        sale: &SaleId,
        hold_id: &HoldId,
        user_id: &str,
        quantity: u32,
        ttl_ms: i64,
    ) -> Result<HoldOutcome, GateError> {
        let now_ms = now_ms();
        let mut sales = self.sales();
        let Some(gate) = sales.get_mut(sale) else {
            return Ok(HoldOutcome::Missing);
        };
        if let Some(existing) = gate.holds.get(hold_id) {
            return Ok(HoldOutcome::Exists(existing.clone()));
        }
        if now_ms < gate.starts_ms {
            return Ok(HoldOutcome::Upcoming);
        }
        if now_ms >= gate.ends_ms {
            return Ok(HoldOutcome::Ended);
        }
        if gate.loader.is_some() {
            return Ok(HoldOutcome::Loading);
        }
        let qty = i64::from(quantity);
        if gate.remaining < qty {
            return Ok(HoldOutcome::SoldOut {
                remaining: gate.remaining,
                held: gate.held,
            });
        }
        let taken = gate.users.get(user_id).copied().unwrap_or(0);
        if taken + qty > gate.limit {
            return Ok(HoldOutcome::LimitReached);
        }
        let hold = Hold {
            hold_id: hold_id.clone(),
            user_id: user_id.to_owned(),
            quantity,
            expires_ms: now_ms + ttl_ms,
        };
        gate.remaining -= qty;
        gate.held += qty;
        *gate.users.entry(user_id.to_owned()).or_default() += qty;
        gate.holds
            .insert(hold_id.clone(), HoldState::Held(hold.clone()));
        gate.schedule(hold_id, hold.expires_ms);
        Ok(HoldOutcome::Held(hold))
    }

    async fn settle(&self, sale: &SaleId, orders: &[Hold]) -> Result<Option<u64>, GateError> {
        let mut sales = self.sales();
        let Some(gate) = sales.get_mut(sale) else {
            return Ok(None);
        };
        Ok(Some(orders.iter().filter(|o| gate.settle(o)).count() as u64))
    }

    async fn release(&self, sale: &SaleId, hold: &Hold) -> Result<bool, GateError> {
        let mut sales = self.sales();
        let Some(gate) = sales.get_mut(sale) else {
            return Ok(false);
        };
        let current = match gate.holds.get(&hold.hold_id) {
            Some(HoldState::Held(h)) if h.expires_ms == hold.expires_ms => h.clone(),
            _ => return Ok(false),
        };
        let qty = i64::from(current.quantity);
        gate.remaining += qty;
        gate.held -= qty;
        if let Some(taken) = gate.users.get_mut(&current.user_id) {
            *taken -= qty;
            if *taken <= 0 {
                gate.users.remove(&current.user_id);
            }
        }
        gate.holds.remove(&hold.hold_id);
        gate.unschedule(&current.hold_id);
        Ok(true)
    }

    async fn lookup(
        &self,
        sale: &SaleId,
        hold_id: &HoldId,
    ) -> Result<Option<HoldState>, GateError> {
        Ok(self
            .sales()
            .get(sale)
            .and_then(|g| g.holds.get(hold_id).cloned()))
    }

    async fn claim_expired(
        &self,
        sale: &SaleId,
        max: usize,
        lease_ms: i64,
    ) -> Result<Vec<Hold>, GateError> {
        let now = now_ms();
        let mut sales = self.sales();
        let Some(gate) = sales.get_mut(sale) else {
            return Ok(Vec::new());
        };
        let due: Vec<HoldId> = gate
            .expiry
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(max)
            .map(|(_, id)| id.clone())
            .collect();
        let mut claimed = Vec::with_capacity(due.len());
        for id in due {
            match gate.holds.get(&id) {
                Some(HoldState::Held(h)) => {
                    claimed.push(h.clone());
                    gate.schedule(&id, now + lease_ms);
                }
                _ => gate.unschedule(&id),
            }
        }
        Ok(claimed)
    }

    async fn snapshot(&self, sale: &SaleId) -> Result<Option<GateSnapshot>, GateError> {
        Ok(self.sales().get(sale).map(|g| GateSnapshot {
            total: g.total,
            remaining: g.remaining,
            held: g.held,
            confirmed: g.confirmed,
            open_holds: g.expiry.len() as u64,
            oldest_expiry_ms: g.expiry.first().map(|(e, _)| *e),
            loading: g.loader.is_some(),
        }))
    }

    async fn forget(&self, sale: &SaleId) -> Result<(), GateError> {
        self.sales().remove(sale);
        Ok(())
    }

    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}
