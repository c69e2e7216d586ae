//! What can go wrong with a sale or an order, and how each maps to the
//! contract's codes (the `From` impl below is that one place).

use common::ApiError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error("no such sale")]
    SaleNotFound,
    #[error("a sale with that id already exists")]
    SaleExists,
    #[error("sold out")]
    SoldOut,
    #[error("per-user limit reached")]
    LimitReached,
    #[error("sale not live")]
    NotLive,
    #[error("quantity must be between 1 and {limit} (this sale's per-user limit)")]
    InvalidQuantity { limit: u32 },
    #[error("Idempotency-Key reused for a different request")]
    KeyReused,
    #[error("no such order")]
    OrderNotFound,
    /// Too many checkout attempts by this user or from this address.
    #[error("too many checkout attempts; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The checkout could not finish in time (its hold lapsed, or a replay
    /// waited too long for the first request); retrying is safe.
    #[error("busy, try again")]
    Busy,
    #[error("backend unavailable: {0}")]
    Unavailable(String),
}

impl From<InventoryError> for ApiError {
    fn from(e: InventoryError) -> Self {
        match e {
            InventoryError::SaleNotFound => ApiError::SaleNotFound,
            InventoryError::SaleExists => ApiError::SaleExists,
            InventoryError::SoldOut => ApiError::SoldOut,
            InventoryError::LimitReached => ApiError::LimitReached,
            InventoryError::NotLive => ApiError::SaleNotLive,
            e @ InventoryError::InvalidQuantity { .. } => ApiError::invalid(e.to_string()),
            InventoryError::KeyReused => ApiError::IdempotencyKeyReused,
            InventoryError::OrderNotFound => ApiError::OrderNotFound,
            InventoryError::RateLimited { retry_after_secs } => {
                ApiError::RateLimited { retry_after_secs }
            }
            InventoryError::Busy => ApiError::overloaded(),
            InventoryError::Unavailable(problem) => {
                tracing::warn!(problem, "backend unavailable");
                ApiError::overloaded()
            }
        }
    }
}

impl From<crate::gate::GateError> for InventoryError {
    fn from(e: crate::gate::GateError) -> Self {
        InventoryError::Unavailable(e.to_string())
    }
}

impl From<crate::ledger::LedgerError> for InventoryError {
    fn from(e: crate::ledger::LedgerError) -> Self {
        InventoryError::Unavailable(e.to_string())
    }
}
