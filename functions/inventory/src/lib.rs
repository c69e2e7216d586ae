//! A sale's stock, shared by the stock and order functions.
//!
//! *Where is overselling prevented?* Twice, independently:
//! 1. [`gate`] — `gate/gate.lua`, one atomic Redis script per checkout that
//!    checks window, per-user limit and stock before taking a hold;
//! 2. [`ledger`] — the DynamoDB transaction that writes an order only if the
//!    sale's and the user's confirmed totals stay within their limits.
//!
//! [`engine`] drives the two: checkout, sweeping lapsed holds, rebuilding
//! the gate from the ledger, and the admin breakdown of guarantee 5.

pub mod engine;
pub mod error;
pub mod gate;
pub mod ledger;
pub mod sale;

use std::sync::Arc;

pub use engine::{Breakdown, Checkout, CheckoutRequest, Inventory, InventoryConfig, SweepReport};
pub use error::InventoryError;

use common::config::{Settings, StoreMode};

/// Builds the inventory on the configured backends.
pub async fn from_settings(
    settings: &Settings,
    config: InventoryConfig,
) -> anyhow::Result<Inventory> {
    let (gate, ledger): (Arc<dyn gate::StockGate>, Arc<dyn ledger::Ledger>) = match settings.store {
        StoreMode::Aws => (
            Arc::new(gate::RedisGate::new(common::backends::redis(settings)?)),
            Arc::new(ledger::DynamoLedger::new(
                common::backends::dynamodb(settings).await,
                &settings.ledger_table,
            )),
        ),
        StoreMode::Memory => (
            Arc::new(gate::MemoryGate::default()),
            Arc::new(ledger::MemoryLedger::default()),
        ),
    };
    Ok(Inventory::new(gate, ledger, config))
}
