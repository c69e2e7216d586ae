//! The ledger in process memory, for embedded mode: the same conditions as
//! the DynamoDB transaction, checked under one lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{ConfirmOutcome, ConfirmRequest, HoldTruth, Ledger, LedgerError, SalePage};
use crate::gate::Hold;
use crate::sale::{HoldId, Order, OrderId, SaleDefinition, SaleId};

#[derive(Clone)]
enum Entry {
    Confirmed(Order),
    Void { attempt: i64 },
}

#[derive(Default)]
struct State {
    sales: HashMap<SaleId, (SaleDefinition, u64)>,
    user_units: HashMap<(SaleId, String), u64>,
    /// Ordered, so that a sale's orders are read a page at a time by
    /// range, as the DynamoDB ledger reads its partitions.
    orders: BTreeMap<(SaleId, String, HoldId), Entry>,
}

#[derive(Default)]
pub struct MemoryLedger {
    state: Mutex<State>,
}

impl MemoryLedger {
    fn state(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

fn order_key(o: &Order) -> (SaleId, String, HoldId) {
    (
        o.sale_id().clone(),
        o.user_id.clone(),
        o.order_id.hold_id.clone(),
    )
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn create_sale(&self, sale: &SaleDefinition) -> Result<bool, LedgerError> {
        let mut state = self.state();
        if state.sales.contains_key(&sale.sale_id) {
            return Ok(false);
        }
        state.sales.insert(sale.sale_id.clone(), (sale.clone(), 0));
        Ok(true)
    }

    async fn sale(&self, sale_id: &SaleId) -> Result<Option<SaleDefinition>, LedgerError> {
        Ok(self.state().sales.get(sale_id).map(|(s, _)| s.clone()))
    }

    async fn confirmed_units(&self, sale_id: &SaleId) -> Result<u64, LedgerError> {
        Ok(self.state().sales.get(sale_id).map_or(0, |(_, c)| *c))
    }

    async fn confirm(&self, req: &ConfirmRequest) -> Result<ConfirmOutcome, LedgerError> {
        let mut state = self.state();
        let o = &req.order;
        let key = order_key(o);
        match state.orders.get(&key) {
            Some(Entry::Confirmed(existing)) => {
                return Ok(ConfirmOutcome::AlreadyConfirmed(existing.clone()))
            }
            Some(Entry::Void { attempt }) if *attempt >= req.attempt => {
                return Ok(ConfirmOutcome::Voided)
            }
            _ => {}
        }
        let qty = u64::from(o.quantity);
        let Some((sale, confirmed)) = state.sales.get(o.sale_id()) else {
            return Ok(ConfirmOutcome::SoldOut);
        };
        // In milliseconds, as the gate and DynamoDB keep time.
        let at = o.created_at.timestamp_millis();
        if at < sale.starts_ms() || at >= sale.ends_ms() {
            return Ok(ConfirmOutcome::NotLive);
        }
        if *confirmed + qty > req.stock_total {
            return Ok(ConfirmOutcome::SoldOut);
        }
        let user_key = (o.sale_id().clone(), o.user_id.clone());
        if state.user_units.get(&user_key).copied().unwrap_or(0) + qty
            > u64::from(req.per_user_limit)
        {
            return Ok(ConfirmOutcome::LimitReached);
        }
        if let Some((_, confirmed)) = state.sales.get_mut(o.sale_id()) {
            *confirmed += qty;
        }
        *state.user_units.entry(user_key).or_default() += qty;
        state.orders.insert(key, Entry::Confirmed(o.clone()));
        Ok(ConfirmOutcome::Confirmed(o.clone()))
    }

    async fn resolve(&self, sale_id: &SaleId, hold: &Hold) -> Result<HoldTruth, LedgerError> {
        let mut state = self.state();
        let key = (sale_id.clone(), hold.user_id.clone(), hold.hold_id.clone());
        match state.orders.get(&key) {
            Some(Entry::Confirmed(order)) => return Ok(HoldTruth::Confirmed(order.clone())),
            // A newer attempt's void stands; this older attempt is void too.
            Some(Entry::Void { attempt }) if *attempt > hold.expires_ms => {
                return Ok(HoldTruth::Voided)
            }
            _ => {}
        }
        state.orders.insert(
            key,
            Entry::Void {
                attempt: hold.expires_ms,
            },
        );
        Ok(HoldTruth::Voided)
    }

    async fn order(&self, order_id: &OrderId, user_id: &str) -> Result<Option<Order>, LedgerError> {
        let key = (
            order_id.sale_id.clone(),
            user_id.to_owned(),
            order_id.hold_id.clone(),
        );
        Ok(match self.state().orders.get(&key) {
            Some(Entry::Confirmed(o)) => Some(o.clone()),
            _ => None,
        })
    }

    async fn user_orders(
        &self,
        user_id: &str,
        sale_id: Option<&SaleId>,
    ) -> Result<Vec<Order>, LedgerError> {
        let mut orders: Vec<Order> = self
            .state()
            .orders
            .values()
            .filter_map(|e| match e {
                Entry::Confirmed(o)
                    if o.user_id == user_id && sale_id.is_none_or(|s| s == o.sale_id()) =>
                {
                    Some(o.clone())
                }
                _ => None,
            })
            .collect();
        orders.sort_by_key(|o| o.created_at);
        Ok(orders)
    }

    async fn sale_orders(&self, sale_id: &SaleId) -> Result<Vec<Order>, LedgerError> {
        Ok(self
            .state()
            .orders
            .values()
            .filter_map(|e| match e {
                Entry::Confirmed(o) if o.sale_id() == sale_id => Some(o.clone()),
                _ => None,
            })
            .collect())
    }

    async fn sale_orders_page(
        &self,
        sale_id: &SaleId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SalePage, LedgerError> {
        use std::ops::Bound;
        // The cursor is the last (user, hold) key read, as JSON.
        let start = match after {
            None => Bound::Unbounded,
            Some(raw) => {
                let (user, hold): (String, String) = serde_json::from_str(raw)
                    .map_err(|_| LedgerError::Definite(format!("not a page cursor: {raw}")))?;
                let hold = HoldId::parse(&hold)
                    .ok_or_else(|| LedgerError::Definite(format!("not a page cursor: {raw}")))?;
                Bound::Excluded((sale_id.clone(), user, hold))
            }
        };
        let state = self.state();
        let limit = limit.max(1);
        let mut orders = Vec::new();
        let mut last = None;
        let mut more = false;
        let from = match start {
            Bound::Unbounded => Bound::Included((sale_id.clone(), String::new(), HoldId::lowest())),
            bound => bound,
        };
        for (key, entry) in state.orders.range((from, Bound::Unbounded)) {
            if &key.0 != sale_id {
                break;
            }
            if orders.len() == limit {
                more = true;
                break;
            }
            if let Entry::Confirmed(o) = entry {
                orders.push(o.clone());
            }
            last = Some(key);
        }
        let next = match (more, last) {
            (true, Some((_, user, hold))) => Some(
                serde_json::to_string(&(user, hold.as_str()))
                    .map_err(|e| LedgerError::Definite(format!("page cursor: {e}")))?,
            ),
            _ => None,
        };
        Ok(SalePage { orders, next })
    }

    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}
