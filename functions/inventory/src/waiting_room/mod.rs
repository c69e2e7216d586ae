//! The waiting room (contract v1.1): fair, stock-aware admission to a sale.
//!
//! A sale created with a waiting room admits buyers to checkout through a
//! line. A buyer joins with their access token and gets a ticket; they poll
//! it; when their turn comes, the stock function hands them a short-lived
//! *admission token* (an Ed25519 JWT bound to user and sale, `admission.rs`
//! in `common::token`) that the order function verifies locally.
//!
//! * **No always-on process.** Every join and poll first advances the room
//!   to "now" by Redis' clock (`room.lua`): admission moves with time and
//!   stock, whichever instance asks.
//! * **Fair.** Buyers who join before the start get a random place among
//!   each other (a shuffle at the start); later ones, first come, first served.
//! * **Inventory-aware.** Never more open admissions than units remaining;
//!   when the sale is sold out every waiting buyer learns it on their next
//!   poll; an admission unused within its lifetime frees its place.
//!
//! Two implementations, one conformance suite (`tests/waiting_room.rs`):
//! [`RedisRoom`] and [`MemoryRoom`] (embedded mode).

mod memory;
mod redis;

pub use self::memory::MemoryRoom;
pub use self::redis::RedisRoom;

use async_trait::async_trait;
use serde::Serialize;

use crate::sale::{SaleDefinition, SaleId};

/// The default admission rate: what one order instance confirmed per
/// second through the DynamoDB limits proxy in the scale-out bench
/// (`load/capacity.md`, 278 orders/s), rounded down for headroom.
pub const DEFAULT_ADMIT_PER_SECOND: u32 = 250;
/// How long an admission lasts when the sale does not say.
pub const DEFAULT_ADMISSION_TTL_SECS: u32 = 60;
pub const MAX_ADMIT_PER_SECOND: u32 = 100_000;
/// The admission bucket's depth in seconds of the rate (`room.lua` has the
/// same): in any second at most 1.2 x the rate are admitted.
pub const BURST_SECONDS: f64 = 0.2;

/// A sale's waiting room settings, as created and as its view shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RoomConfig {
    pub admit_per_second: u32,
    pub admission_ttl_seconds: u32,
}

impl RoomConfig {
    /// Validates the settings a sale is created with.
    pub fn new(
        admit_per_second: Option<i64>,
        admission_ttl_seconds: Option<i64>,
    ) -> Result<Self, String> {
        let rate = admit_per_second.unwrap_or(i64::from(DEFAULT_ADMIT_PER_SECOND));
        if !(1..=i64::from(MAX_ADMIT_PER_SECOND)).contains(&rate) {
            return Err(format!(
                "waiting_room.admit_per_second must be between 1 and {MAX_ADMIT_PER_SECOND}"
            ));
        }
        let ttl = admission_ttl_seconds.unwrap_or(i64::from(DEFAULT_ADMISSION_TTL_SECS));
        if !(2..=3600).contains(&ttl) {
            return Err("waiting_room.admission_ttl_seconds must be between 2 and 3600".into());
        }
        Ok(Self {
            admit_per_second: rate as u32,
            admission_ttl_seconds: ttl as u32,
        })
    }
}

/// Where a ticket stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketStatus {
    /// In line; `position` 1 is next.
    Waiting { position: u64 },
    /// May check out until `expires_ms` (by the room's clock).
    Admitted { expires_ms: i64 },
    /// The sale has nothing left to admit anyone to.
    SoldOut,
    /// Admitted, but the admission lapsed.
    Expired { expires_ms: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub ticket: String,
    pub status: TicketStatus,
    /// The room's clock when it answered (ms since the epoch).
    pub now_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// A new ticket (`201`).
    Joined(Ticket),
    /// The user's ticket from before (`200`).
    Existing(Ticket),
    SoldOut,
    Ended,
}

/// What the stock can still serve, read from the gate just before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockLevel {
    /// Units neither held nor sold.
    pub remaining: i64,
    /// Nothing remaining and nothing held that could come back.
    pub sold_out: bool,
}

/// Counts for load tests and the breakdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RoomStats {
    pub joined: u64,
    pub admitted: u64,
    pub open_admissions: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("waiting room unavailable: {0}")]
pub struct RoomError(pub String);

#[async_trait]
pub trait WaitingRoom: Send + Sync + 'static {
    /// Joins `user` to the sale's line (or finds their ticket).
    async fn join(
        &self,
        sale: &SaleDefinition,
        room: &RoomConfig,
        stock: StockLevel,
        user: &str,
    ) -> Result<JoinOutcome, RoomError>;

    /// The ticket's status; `None` if there is no such ticket of this user.
    async fn poll(
        &self,
        sale: &SaleDefinition,
        room: &RoomConfig,
        stock: StockLevel,
        ticket: &str,
        user: &str,
    ) -> Result<Option<Ticket>, RoomError>;

    /// The admission was used (an order was made with it): its place in
    /// the open admissions goes to the next in line.
    async fn used(&self, sale: &SaleId, ticket: &str) -> Result<(), RoomError>;

    async fn stats(
        &self,
        sale: &SaleDefinition,
        room: &RoomConfig,
        stock: StockLevel,
    ) -> Result<RoomStats, RoomError>;
}

/// A fresh, unguessable ticket id.
pub fn new_ticket() -> String {
    format!("t{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// A random place in the pre-queue, in [0, 2^50): drawn by the server, so
/// no one can choose or improve their place by joining early.
pub fn random_place() -> u64 {
    rand::random::<u64>() >> 14
}
