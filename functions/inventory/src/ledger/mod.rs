//! The ledger: sales and confirmed orders in DynamoDB, the record of truth.
//!
//! The gate lets a checkout through; the ledger decides. An order is written
//! in one transaction that also checks, again and independently of Redis,
//! that the sale's confirmed total and the user's confirmed quantity stay
//! within limits, and that the order (or its Idempotency-Key) does not exist.
//! If Redis forgot everything, the ledger still cannot oversell.
//!
//! A hold that lapsed without a known ending is resolved here too: the
//! sweeper writes a *void* marker under the order's key unless the order is
//! there already. The order write and the void are conditional on the same
//! item, so exactly one of them wins and the truth is never a guess.

mod dynamo;
mod memory;

pub use self::dynamo::{DynamoLedger, DEFAULT_BUCKETS, MAX_BUCKETS, ORDER_CONDITION, ORDER_UPDATE};
pub use self::memory::MemoryLedger;

use async_trait::async_trait;

use crate::gate::Hold;
use crate::sale::{Order, OrderId, SaleDefinition, SaleId};

/// What to write, and the limits the write must respect.
#[derive(Debug, Clone)]
pub struct ConfirmRequest {
    pub order: Order,
    /// Tells this attempt apart from an earlier, voided one of the same
    /// order id: the hold's expiry, unique per hold taken and later for a
    /// later hold of the same id (one clock, the gate's). A void marker of
    /// an attempt refuses that attempt and every older one.
    pub attempt: i64,
    pub stock_total: u64,
    pub per_user_limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmOutcome {
    Confirmed(Order),
    /// The order exists already (a retried write that had succeeded).
    AlreadyConfirmed(Order),
    /// The hold lapsed and the sweeper voided this attempt first.
    Voided,
    SoldOut,
    LimitReached,
    /// The hold was taken outside the sale's window (by the gate's clock):
    /// the ledger keeps the window too, whatever an instance's clock says.
    NotLive,
}

/// One page of a sale's confirmed orders ([`Ledger::sale_orders_page`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SalePage {
    pub orders: Vec<Order>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<String>,
}

/// What really happened to a hold whose checkout never said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldTruth {
    Confirmed(Order),
    Voided,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The write certainly did not happen (the service refused it).
    #[error("ledger refused the request: {0}")]
    Definite(String),
    /// It may or may not have happened (timeout, connection lost).
    #[error("ledger outcome unknown: {0}")]
    Uncertain(String),
}

#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Writes a new sale; `false` if the id is taken.
    async fn create_sale(&self, sale: &SaleDefinition) -> Result<bool, LedgerError>;
    async fn sale(&self, sale_id: &SaleId) -> Result<Option<SaleDefinition>, LedgerError>;
    /// Units of the sale confirmed so far, by the ledger's own counter.
    async fn confirmed_units(&self, sale_id: &SaleId) -> Result<u64, LedgerError>;
    async fn confirm(&self, request: &ConfirmRequest) -> Result<ConfirmOutcome, LedgerError>;
    /// Voids the hold's attempt unless its order is confirmed, and says which.
    /// A void never replaces the void of a newer attempt.
    async fn resolve(&self, sale_id: &SaleId, hold: &Hold) -> Result<HoldTruth, LedgerError>;
    /// A confirmed order of this user (someone else's is `None`).
    async fn order(&self, order_id: &OrderId, user_id: &str) -> Result<Option<Order>, LedgerError>;
    /// A user's confirmed orders, in one sale or in all.
    async fn user_orders(
        &self,
        user_id: &str,
        sale_id: Option<&SaleId>,
    ) -> Result<Vec<Order>, LedgerError>;
    /// Every confirmed order of a sale, all at once: for audits and tests.
    /// Rebuilds and reconciliation read [`Ledger::sale_orders_page`].
    async fn sale_orders(&self, sale_id: &SaleId) -> Result<Vec<Order>, LedgerError>;
    /// The confirmed orders of a sale a page at a time, in bounded memory:
    /// at most `limit` orders after the cursor `after` (`None`: from the
    /// start), and the cursor of the next page (`None`: that was the last).
    /// A cursor is opaque, valid for the sale it came from.
    async fn sale_orders_page(
        &self,
        sale_id: &SaleId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SalePage, LedgerError> {
        let _ = limit;
        if after.is_some() {
            return Ok(SalePage::default());
        }
        Ok(SalePage {
            orders: self.sale_orders(sale_id).await?,
            next: None,
        })
    }
    async fn ready(&self) -> Result<(), String>;
}

/// The gate's view of a confirmed order.
pub fn as_settled_hold(order: &Order) -> Hold {
    Hold {
        hold_id: order.order_id.hold_id.clone(),
        user_id: order.user_id.clone(),
        quantity: order.quantity,
        expires_ms: 0,
    }
}
