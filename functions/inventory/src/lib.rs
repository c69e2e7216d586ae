//! A sale's stock, shared by the stock and order functions.
//!
//! *Where is overselling prevented?* Twice, independently:
//! 1. [`gate`] — `gate/gate.lua`, one atomic Redis script per checkout that
//!    checks window, per-user limit and stock before taking a hold;
//! 2. [`ledger`] — the DynamoDB transaction that writes an order only if the
//!    sale's and the user's confirmed totals stay within their limits.
//!
//! [`admission`] rate-limits checkout attempts per user and per IP before
//! they reach the gate; [`overload`] sheds them when the ledger cannot keep
//! up. [`engine`] drives the two: checkout, sweeping lapsed holds, rebuilding
//! the gate from the ledger, and the admin breakdown of guarantee 5.

pub mod admission;
pub mod engine;
pub mod error;
pub mod gate;
pub mod ledger;
pub mod overload;
pub mod sale;
pub mod waiting_room;

use std::sync::Arc;

pub use engine::{Breakdown, Checkout, CheckoutRequest, Inventory, InventoryConfig, SweepReport};
pub use error::InventoryError;

use common::config::{Settings, StoreMode};

/// Builds the inventory on the configured backends.
pub async fn from_settings(
    settings: &Settings,
    config: InventoryConfig,
) -> anyhow::Result<Inventory> {
    type Stores = (
        Arc<dyn gate::StockGate>,
        Arc<dyn ledger::Ledger>,
        Arc<dyn admission::RateLimiter>,
    );
    let (gate, ledger, limiter): Stores = match settings.store {
        StoreMode::Aws => {
            // One multiplexed connection: the gate's and the limiter's
            // commands are pipelined together.
            let redis = common::backends::redis(settings)?;
            (
                Arc::new(gate::RedisGate::new(redis.clone())),
                Arc::new(ledger::DynamoLedger::with_buckets(
                    common::backends::dynamodb(settings).await,
                    &settings.ledger_table,
                    settings.ledger_buckets,
                )),
                Arc::new(admission::RedisRateLimiter::new(redis)),
            )
        }
        StoreMode::Memory => (
            Arc::new(gate::MemoryGate::default()),
            Arc::new(ledger::MemoryLedger::default()),
            Arc::new(admission::MemoryRateLimiter::default()),
        ),
    };
    let limits = admission::CheckoutLimits::from_env(limiter)?;
    Ok(Inventory::with_limits(gate, ledger, config, Some(limits)))
}

/// The waiting rooms, on the store the settings name (Redis, or memory in
/// embedded mode).
pub fn waiting_rooms(settings: &Settings) -> anyhow::Result<Arc<dyn waiting_room::WaitingRoom>> {
    Ok(match settings.store {
        StoreMode::Aws => Arc::new(waiting_room::RedisRoom::new(common::backends::redis(
            settings,
        )?)),
        StoreMode::Memory => Arc::new(waiting_room::MemoryRoom::default()),
    })
}
