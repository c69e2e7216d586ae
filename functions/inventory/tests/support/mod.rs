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
    common::redis_testbed::plain().apply(&mut s);
    s.dynamodb_endpoint =
        Some(std::env::var("DYNAMODB_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:8000".into()));
    s.store = common::config::StoreMode::Aws;
    // DynamoDB Local on a busy 2-core machine can take seconds per call;
    // the production default (2 s) is for the real service.
    s.backend_timeout_ms = 15_000;
    s
}

pub async fn redis_conn() -> common::backends::RedisConn {
    common::redis_testbed::plain().connect().await
}

pub async fn redis_gate() -> Arc<dyn StockGate> {
    Arc::new(RedisGate::new(redis_conn().await))
}

/// Every Redis shape of the test bed (plain, TLS-only, cluster), connected.
pub async fn redis_variants() -> Vec<(&'static str, common::backends::RedisConn)> {
    let mut conns = Vec::new();
    for variant in common::redis_testbed::all() {
        conns.push((variant.name, variant.connect().await));
    }
    conns
}

pub async fn rate_limiters() -> Vec<(&'static str, Arc<dyn RateLimiter>)> {
    let mut limiters: Vec<(&'static str, Arc<dyn RateLimiter>)> =
        vec![("memory", Arc::new(MemoryRateLimiter::default()))];
    for (name, conn) in redis_variants().await {
        limiters.push((name, Arc::new(RedisRateLimiter::new(conn))));
    }
    limiters
}

pub async fn gates() -> Vec<(&'static str, Arc<dyn StockGate>)> {
    let mut gates: Vec<(&'static str, Arc<dyn StockGate>)> =
        vec![("memory", Arc::new(MemoryGate::default()))];
    for (name, conn) in redis_variants().await {
        gates.push((name, Arc::new(RedisGate::new(conn))));
    }
    gates
}

/// A DynamoDB Local ledger on a table of its own, so test runs never meet.
pub async fn dynamo_ledger() -> Arc<dyn Ledger> {
    Arc::new(dynamo_ledger_at(settings()).await)
}

/// The same through the limits proxy (`infra/ddb-limits`): DynamoDB's
/// per-partition budgets, transaction conflicts (each transaction held
/// `tx_latency` so they overlap as on the real service) and token rules.
/// The proxy lives as long as the test's runtime.
pub async fn limited_ledger(config: ddb_limits::Config) -> (DynamoLedger, ddb_limits::Proxy) {
    let proxy = ddb_limits::start(config)
        .await
        .expect("start the DynamoDB limits proxy");
    let mut s = settings();
    s.dynamodb_endpoint = Some(proxy.endpoint());
    (dynamo_ledger_at(s).await, proxy)
}

/// Keeps a proxy listening until the test's runtime ends (dropping a
/// `Proxy` stops it).
pub fn keep_alive(proxy: ddb_limits::Proxy) {
    static PROXIES: std::sync::Mutex<Vec<ddb_limits::Proxy>> = std::sync::Mutex::new(Vec::new());
    PROXIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(proxy);
}

async fn dynamo_ledger_at(mut s: common::config::Settings) -> DynamoLedger {
    s.ledger_table = format!("test-ledger-{}", ulid::Ulid::new());
    let client = common::backends::dynamodb(&s).await;
    let ledger = DynamoLedger::new(client, &s.ledger_table);
    if let Err(e) = ledger.migrate().await {
        panic!(
            "DynamoDB Local is not reachable at {:?} ({e}); start it with `just backends`",
            s.dynamodb_endpoint
        );
    }
    ledger
}

pub async fn ledgers() -> Vec<(&'static str, Arc<dyn Ledger>)> {
    let (limited, proxy) = limited_ledger(ddb_limits::Config {
        tx_latency: std::time::Duration::from_millis(5),
        ..Default::default()
    })
    .await;
    keep_alive(proxy);
    vec![
        ("memory", Arc::new(MemoryLedger::default())),
        ("dynamodb", dynamo_ledger().await),
        ("dynamodb+limits", Arc::new(limited)),
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
