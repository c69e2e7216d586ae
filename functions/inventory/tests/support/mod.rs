//! Backends for the conformance suites: every implementation of each trait.
//! The real ones must be reachable; a missing Redis or DynamoDB Local fails
//! the suite loudly (start them with `just backends`), it is never skipped.

#![allow(dead_code)]

use std::sync::Arc;

use chrono::Utc;
use inventory::admission::{MemoryRateLimiter, RateLimiter, RedisRateLimiter};
use inventory::gate::{MemoryGate, RedisGate, StockGate};
use inventory::ledger::{DynamoLedger, Ledger, MemoryLedger};
use inventory::sale::SaleDefinition;

pub fn settings() -> common::config::Settings {
    let mut s = common::config::Settings::memory();
    s.redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    s.dynamodb_endpoint =
        Some(std::env::var("DYNAMODB_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:8000".into()));
    s.store = common::config::StoreMode::Aws;
    s
}

pub async fn redis_conn() -> redis::aio::ConnectionManager {
    let s = settings();
    let conn = common::backends::redis(&s).expect("REDIS_URL is a valid URL");
    if let Err(e) = common::backends::redis_ping(&conn).await {
        panic!(
            "Redis is not reachable at {} ({e}); start it with `just backends`",
            s.redis_url
        );
    }
    conn
}

pub async fn redis_gate() -> Arc<dyn StockGate> {
    Arc::new(RedisGate::new(redis_conn().await))
}

pub async fn rate_limiters() -> Vec<(&'static str, Arc<dyn RateLimiter>)> {
    vec![
        ("memory", Arc::new(MemoryRateLimiter::default())),
        ("redis", Arc::new(RedisRateLimiter::new(redis_conn().await))),
    ]
}

pub async fn gates() -> Vec<(&'static str, Arc<dyn StockGate>)> {
    vec![
        ("memory", Arc::new(MemoryGate::default())),
        ("redis", redis_gate().await),
    ]
}

/// A DynamoDB Local ledger on a table of its own, so test runs never meet.
pub async fn dynamo_ledger() -> Arc<dyn Ledger> {
    let mut s = settings();
    s.ledger_table = format!("test-ledger-{}", ulid::Ulid::new());
    let client = common::backends::dynamodb(&s).await;
    let ledger = DynamoLedger::new(client, &s.ledger_table);
    if let Err(e) = ledger.migrate().await {
        panic!(
            "DynamoDB Local is not reachable at {:?} ({e}); start it with `just backends`",
            s.dynamodb_endpoint
        );
    }
    Arc::new(ledger)
}

pub async fn ledgers() -> Vec<(&'static str, Arc<dyn Ledger>)> {
    vec![
        ("memory", Arc::new(MemoryLedger::default())),
        ("dynamodb", dynamo_ledger().await),
    ]
}

/// A live sale with a unique id.
pub fn sale(stock: i64, limit: i64) -> SaleDefinition {
    let id = format!("t-{}", ulid::Ulid::new());
    SaleDefinition::new(
        &id,
        "Test sale",
        stock,
        Some(limit),
        None,
        None,
        Utc::now() - chrono::Duration::hours(1),
    )
    .expect("valid test sale")
}

pub fn user() -> String {
    ulid::Ulid::new().to_string()
}
