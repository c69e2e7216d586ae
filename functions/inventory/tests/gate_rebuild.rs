//! Rebuilding a big sale through the engine, on real Redis: the ledger is
//! read a page at a time (never all of it), the gate is loaded in calls
//! that never block Redis (Redis' SLOWLOG shows none of them slow), one
//! instance of several loads, and the others answer `503` meanwhile while
//! orders confirmed during the load count once.
//!
//! The ledger is a fake that really pages (`gate_rebuild/ledger.rs`): a
//! `MemoryLedger` plus *bulk* orders that exist only as a count, made a page
//! at a time on demand, so a sale of 200,000 (or, in the ignored bench,
//! 1,000,000) orders costs the test no memory of its own.
//!
//! `cargo test --release -p inventory --test gate_rebuild -- --ignored --nocapture`
//! prints the figures for a million orders (`REBUILD_BENCH_ORDERS` to change).

#[path = "gate_rebuild/ledger.rs"]
mod ledger;
#[path = "gate_rebuild/slowlog.rs"]
mod slowlog;
mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_testbed::{self, RedisVariant};
use inventory::gate::{RedisGate, StockGate};
use inventory::ledger::{as_settled_hold, ConfirmOutcome, ConfirmRequest, Ledger};
use inventory::sale::{HoldId, Order, OrderId, SaleDefinition};
use inventory::{CheckoutRequest, Inventory, InventoryConfig, InventoryError};
use ledger::PagingLedger;
use slowlog::SlowLog;
use support::{sale, user};

/// What the engine asks of the ledger per page (`engine/recovery.rs`).
const PAGE: usize = 1_000;

fn config(wait: Duration) -> InventoryConfig {
    InventoryConfig {
        ledger_timeout: wait,
        sweep_interval: Duration::from_secs(3600),
        ..InventoryConfig::default()
    }
}

fn buy(s: &SaleDefinition) -> CheckoutRequest {
    CheckoutRequest {
        sale_id: s.sale_id.clone(),
        quantity: 1,
        idempotency_key: None,
        client_ip: None,
    }
}

/// A sale of `bulk` confirmed orders (and `extra` units unsold) that the
/// gate has lost.
async fn lost_sale(
    inv: &Inventory,
    ledger: &PagingLedger,
    gate: &Arc<dyn StockGate>,
    bulk: usize,
    extra: i64,
    buckets: i64,
) -> SaleDefinition {
    let s = sale(bulk as i64 + extra, 2)
        .with_stock_buckets(buckets)
        .unwrap();
    inv.create_sale(s.clone()).await.unwrap();
    ledger.add_bulk(&s.sale_id, bulk);
    gate.forget(&s.sale_id).await.unwrap();
    s
}

struct Figures {
    took: Duration,
    slow_calls: Vec<(String, u64)>,
}

/// Loses and rebuilds a sale of `bulk` orders through `view`, with calls
/// slower than `micros` logged, and checks the outcome.
async fn rebuild_big(variant: &RedisVariant, buckets: i64, bulk: usize, micros: u64) -> Figures {
    let gate: Arc<dyn StockGate> = Arc::new(RedisGate::new(variant.connect().await));
    let ledger = Arc::new(PagingLedger::default());
    let inv = Inventory::new(
        gate.clone(),
        ledger.clone(),
        config(Duration::from_secs(600)),
    );
    let s = lost_sale(&inv, &ledger, &gate, bulk, 100, buckets).await;
    let log = SlowLog::start(variant, micros).await;
    let started = Instant::now();
    let rebuilt = inv.view(&s.sale_id).await;
    let took = started.elapsed();
    let slow_calls = log.stop(s.sale_id.as_str()).await;
    rebuilt.unwrap();

    let b = inv.breakdown(&s.sale_id).await.unwrap();
    assert!(b.balanced && b.consistent, "{b:?}");
    assert_eq!(
        (b.confirmed, b.ledger_confirmed),
        (bulk as i64, bulk as u64)
    );
    assert_eq!(
        ledger.whole_reads.load(Ordering::SeqCst),
        0,
        "never all at once"
    );
    let largest = ledger.largest_page.load(Ordering::SeqCst);
    assert!(largest <= PAGE, "a page of {largest} orders");
    assert!(
        ledger.pages.load(Ordering::SeqCst) <= bulk / PAGE + 1,
        "one pass"
    );
    // The rebuilt counts hold: bulk-0 has two units, the limit.
    let limited = inv.checkout("bulk-0", buy(&s)).await;
    assert_eq!(limited, Err(InventoryError::LimitReached));
    assert!(inv.checkout(&user(), buy(&s)).await.is_ok());
    gate.forget(&s.sale_id).await.unwrap();
    Figures { took, slow_calls }
}

/// The gate's calls of the sale that Redis logged as slower than 5 ms.
/// A call that did too much at once would be there every time (one call
/// loading this sale takes ~1 s). But a busy host stalls any command now
/// and then (a single HSETNX inside a script was seen taking 7 ms on this
/// loaded 2-core machine), so a few, short, are the host's: at most one in
/// a hundred of the sale's ~2,000 script calls, none over 50 ms. (A stall
/// inside a script shows twice, as the script and as its command: only
/// the gate's own calls are counted.)
#[tokio::test]
async fn a_big_sale_is_rebuilt_page_by_page_without_blocking_redis() {
    const ORDERS: usize = 200_000;
    let plain = redis_testbed::plain();
    let f = rebuild_big(&plain, 1, ORDERS, 5_000).await;
    println!(
        "rebuilt {ORDERS} orders in {:?}; calls of the sale over 5 ms: {:?}",
        f.took, f.slow_calls
    );
    let own: Vec<u64> = f
        .slow_calls
        .iter()
        .filter(|(command, _)| command.starts_with("EVAL") || command == "UNLINK")
        .map(|(_, us)| *us)
        .collect();
    let slowest = own.iter().copied().max().unwrap_or(0);
    assert!(
        own.len() <= ORDERS / 100 / 100 && slowest < 50_000,
        "calls of the sale over 5 ms: {:?}",
        f.slow_calls
    );
}

#[tokio::test]
async fn of_two_instances_rebuilding_at_once_one_reads_the_ledger() {
    for (variant, buckets) in [(redis_testbed::plain(), 1), (redis_testbed::cluster(), 3)] {
        let gate: Arc<dyn StockGate> = Arc::new(RedisGate::new(variant.connect().await));
        let ledger = Arc::new(PagingLedger::default());
        let wait = Duration::from_secs(60);
        let a = Inventory::new(gate.clone(), ledger.clone(), config(wait));
        let b = Inventory::new(gate.clone(), ledger.clone(), config(wait));
        let s = lost_sale(&a, &ledger, &gate, 5_000, 10, buckets).await;
        let (va, vb) = tokio::join!(a.view(&s.sale_id), b.view(&s.sale_id));
        assert_eq!(va.unwrap().stock_remaining, 10, "{}", variant.name);
        assert_eq!(vb.unwrap().stock_remaining, 10, "{}", variant.name);
        // Five full pages and the empty last: one pass over the ledger.
        assert_eq!(ledger.pages.load(Ordering::SeqCst), 6, "{}", variant.name);
        let bd = b.breakdown(&s.sale_id).await.unwrap();
        assert!(bd.balanced && bd.consistent, "{}: {bd:?}", variant.name);
        assert_eq!(bd.confirmed, 5_000, "{}", variant.name);
    }
}

/// An order whose checkout was in flight when Redis lost the sale lands
/// in the ledger, and settles, while another instance loads the sale.
async fn confirm_and_settle(ledger: &PagingLedger, gate: &Arc<dyn StockGate>, s: &SaleDefinition) {
    let order = confirm_lost_order(ledger, s).await;
    let hold = as_settled_hold(&order);
    let adopted = gate.settle(&s.sale_id, &[hold]).await.unwrap();
    assert_eq!(adopted, Some(1), "adopted while loading");
}

#[tokio::test]
async fn while_a_sale_loads_elsewhere_checkouts_get_503_and_late_orders_count_once() {
    let gate: Arc<dyn StockGate> = Arc::new(RedisGate::new(support::redis_conn().await));
    let ledger = Arc::new(PagingLedger::default());
    let loader = Inventory::new(
        gate.clone(),
        ledger.clone(),
        config(Duration::from_secs(60)),
    );
    let other = Inventory::new(
        gate.clone(),
        ledger.clone(),
        config(Duration::from_millis(300)),
    );
    let s = lost_sale(&loader, &ledger, &gate, 3_000, 10, 1).await;
    // Confirmed before the rebuild began, its hold lost: read by a page,
    // and settled too (its checkout's settle retried) while the sale loads.
    let lost = confirm_lost_order(&ledger, &s).await;
    ledger.pause_after.store(1, Ordering::SeqCst);
    let rebuild = {
        let (inv, id) = (loader.clone(), s.sale_id.clone());
        tokio::spawn(async move { inv.view(&id).await })
    };
    ledger.paused.wait().await;

    // Loading: the other instance waits its bound, then answers 503.
    let refused = other.checkout(&user(), buy(&s)).await;
    let Err(e @ InventoryError::Unavailable(_)) = refused else {
        panic!("expected 503, got {refused:?}");
    };
    let (status, code) = common::ApiError::from(e).status_and_code();
    assert_eq!((status.as_u16(), code), (503, "overloaded"));
    assert!(matches!(
        other.view(&s.sale_id).await,
        Err(InventoryError::Unavailable(_))
    ));
    // In-flight orders settle meanwhile: adopted now, skipped by the page.
    confirm_and_settle(&ledger, &gate, &s).await;
    let lost = as_settled_hold(&lost);
    assert_eq!(gate.settle(&s.sale_id, &[lost]).await.unwrap(), Some(1));
    ledger.resume.open();

    rebuild.await.unwrap().unwrap();
    let bd = other.breakdown(&s.sale_id).await.unwrap();
    assert!(bd.balanced && bd.consistent, "{bd:?}");
    assert_eq!(
        (bd.confirmed, bd.ledger_confirmed),
        (3_002, 3_002),
        "{bd:?}"
    );
    assert!(other.checkout(&user(), buy(&s)).await.is_ok());
}

/// An order in the ledger the gate never settled (its hold was lost).
async fn confirm_lost_order(ledger: &PagingLedger, s: &SaleDefinition) -> Order {
    let order = Order {
        order_id: OrderId {
            sale_id: s.sale_id.clone(),
            hold_id: HoldId::random(),
        },
        user_id: user(),
        quantity: 1,
        created_at: chrono::Utc::now(),
        idempotency_key: None,
    };
    let request = ConfirmRequest {
        order: order.clone(),
        attempt: 1,
        stock_total: s.stock_total,
        per_user_limit: s.per_user_limit,
    };
    let written = ledger.confirm(&request).await.unwrap();
    assert!(
        matches!(written, ConfirmOutcome::Confirmed(_)),
        "{written:?}"
    );
    order
}

/// The figures: a million confirmed orders rebuilt into real Redis, on a
/// plain node and over three buckets of the cluster, the sale's scripts
/// timed by Redis itself (every one over 100 µs is in the SLOWLOG; run it
/// alone, as it changes the SLOWLOG settings of every node for a while).
#[tokio::test]
#[ignore = "a bench: run explicitly, alone"]
async fn bench_rebuild_of_a_million_orders() {
    let bulk: usize = std::env::var("REBUILD_BENCH_ORDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let shapes = [(redis_testbed::plain(), 1), (redis_testbed::cluster(), 3)];
    for (variant, buckets) in shapes {
        let f = rebuild_big(&variant, buckets, bulk, 100).await;
        let mut calls: Vec<u64> = f
            .slow_calls
            .iter()
            .filter(|(command, _)| command.starts_with("EVAL"))
            .map(|(_, us)| *us)
            .collect();
        calls.sort_unstable();
        let pct = |p: f64| {
            calls
                .get(((calls.len() as f64 - 1.0) * p) as usize)
                .copied()
        };
        println!(
            "{} ({buckets} bucket(s)): {bulk} orders rebuilt in {:.1} s ({:.0} orders/s); \
             {} scripts of the sale ran over 100 µs: slowest {:?} µs, p99 {:?} µs, median {:?} µs; \
             largest ledger page {PAGE}; peak RSS {}",
            variant.name,
            f.took.as_secs_f64(),
            bulk as f64 / f.took.as_secs_f64(),
            calls.len(),
            calls.last(),
            pct(0.99),
            pct(0.5),
            peak_rss(),
        );
    }
}

/// This process' peak resident memory, from /proc.
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
        .unwrap_or_default()
}
