//! `cargo bench -p system-tests --bench scale_out`: one sale on many order
//! instances, through the DynamoDB limits proxy (`infra/ddb-limits`: real
//! DynamoDB's 1,000 WCU/s and 3,000 RCU/s per partition key, transactions
//! cancelled on conflicting items), on real Redis and DynamoDB Local. It
//! measured the one-partition ledger (the baseline in `load/capacity.md`)
//! and measures the ledger whose writes spread over a sale's buckets
//! (`ledger/dynamo/schema.rs`).
//!
//! The instances, the stack and the proxy run on one Tokio runtime, the
//! buyers on another (Lambda-shaped environments on threads of their own,
//! see `system_tests::scale::lambda`), so they share the machine's cores the
//! way a co-located load generator would. Scenarios:
//!
//! 1. 1,000 units to 10,000 buyers on 1, 4 and 16 instances, HTTP and
//!    Lambda-shaped: orders/s, sell-out time, 503s, the proxy's throttles
//!    and conflicts per 1,000 checkouts (orders confirmed), and the highest
//!    WCU one partition key consumed in one second;
//! 2. 100,000 units to 200,000 buyers on one configuration, bounded in time:
//!    if it cannot sell out in time, the rate it reached is reported,
//!    labelled as such;
//! 3. DynamoDB Local's own ceiling on this machine with a bare client, no
//!    proxy and no engine: the transaction shapes `ledger/dynamo` writes
//!    (one order: a stock counter + the user item; a group commit: one
//!    counter and 24 orders), many at once, on one sale.
//!
//! Every buyer is its own user with its own Idempotency-Key and retries a
//! `503` after its `Retry-After`, as the scale-out tests' buyers do, and
//! every run ends with their audit (`system_tests::scale::audit`): each
//! answer against the contract, the ledger and the gate against every
//! guarantee; violations are printed and written to the JSON.
//!
//! Settings (environment): `SCALE_INSTANCES` (default `1,4,16`),
//! `SCALE_SHAPES` (`http,lambda`), `SCALE_UNITS` / `SCALE_BUYERS`
//! (`1000` / `10000`), `SCALE_CLIENTS` (buyers in flight, `512`),
//! `SCALE_SECONDS` (buyers' deadline per run, `90`), `SCALE_BIG_UNITS` /
//! `SCALE_BIG_BUYERS` (`100000` / `200000`; `0` skips the run),
//! `SCALE_BIG_SHAPE` / `SCALE_BIG_INSTANCES` (`http` / `16`),
//! `SCALE_BIG_SECONDS` (`300`: at ~700 orders/s the sale takes ~2.5 min
//! here), `SCALE_TX_LATENCY_MS` (the proxy's hold on each transaction,
//! `15`, as real transactions take 10–25 ms),
//! `SCALE_BARE_SECONDS` / `SCALE_BARE_CONCURRENCY` (`10` / `64`).
//! Figures are also written to the workspace's `target/bench-scale-out.json`.

/// The functions' allocator (their `main.rs`), for the instances run here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use serde_json::{json, Value};
use system_tests::scale::audit::{audit, SaleFacts};
use system_tests::scale::buyers::{stampede, HoldWatch, Wave};
use system_tests::scale::{Cluster, ScaleOptions, Shape};
use system_tests::TestStack;
use tokio::runtime::Runtime;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn shape_named(name: &str) -> Option<Shape> {
    match name.trim() {
        "http" => Some(Shape::Http),
        "lambda" => Some(Shape::Lambda),
        _ => None,
    }
}

/// One stampede to run.
#[derive(Clone, Copy)]
struct Run {
    shape: Shape,
    instances: usize,
    units: u64,
    buyers: usize,
    clients: usize,
    /// Buyers are sent, and retry, until this long after the start.
    seconds: u64,
}

/// What one run measured.
struct Figures {
    name: String,
    run: Run,
    sent: usize,
    attempts: usize,
    by_answer: std::collections::BTreeMap<String, usize>,
    /// Units confirmed in the ledger at the end.
    sold: u64,
    /// The last `201`, if every unit was sold.
    sold_out_after: Option<Duration>,
    /// When half, 90 % and 99 % of the `201`s had been answered.
    created_after: [Option<Duration>; 3],
    /// What the scale-out tests' audit found: every answer against the
    /// contract, the ledger and the gate against every guarantee.
    violations: Vec<String>,
    elapsed: Duration,
    orders_per_s: f64,
    answered_503: usize,
    environments: usize,
    proxy: ddb_limits::Stats,
}

impl Figures {
    fn per_thousand(&self, n: u64) -> f64 {
        n as f64 * 1000.0 / self.sold.max(1) as f64
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "shape": self.run.shape.to_string(),
            "instances": self.run.instances,
            "environments_started": self.environments,
            "units": self.run.units,
            "buyers": self.run.buyers,
            "buyers_sent": self.sent,
            "attempts": self.attempts,
            "answers": self.by_answer,
            "sold": self.sold,
            "sold_out_s": self.sold_out_after.map(|d| d.as_secs_f64()),
            "guarantee_violations": self.violations,
            "created_p50_p90_p99_s": self.created_after.map(|d| d.map(|d| d.as_secs_f64())),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "orders_per_s": self.orders_per_s,
            "per_1000_checkouts": {
                "conflicts": self.per_thousand(self.proxy.conflicts + self.proxy.conflict_exceptions),
                "throttles": self.per_thousand(self.proxy.throttled),
                "answers_503": self.per_thousand(self.answered_503 as u64),
            },
            "proxy": {
                "requests": self.proxy.requests,
                "throttled": self.proxy.throttled,
                "throttled_by_op": self.proxy.throttled_by_op,
                "conflicts": self.proxy.conflicts,
                "conflict_exceptions": self.proxy.conflict_exceptions,
                "transactions_committed": self.proxy.transactions_committed,
                "max_partition_wcu_per_s": self.proxy.max_partition_wcu_per_s,
                "max_partition_rcu_per_s": self.proxy.max_partition_rcu_per_s,
            },
        })
    }
}

fn print_header() {
    println!(
        "{:<22} {:>7} {:>9} {:>10} {:>11} {:>9} {:>10} {:>10} {:>9} {:>9}",
        "run",
        "envs",
        "sold",
        "sell-out",
        "orders/s",
        "503s",
        "confl/1k",
        "thrott/1k",
        "503/1k",
        "max WCU/s"
    );
}

fn print(f: &Figures) {
    let sell_out = f.sold_out_after.map_or("not sold out".to_owned(), |d| {
        format!("{:.2} s", d.as_secs_f64())
    });
    println!(
        "{:<22} {:>7} {:>9} {:>10} {:>11.0} {:>9} {:>10.1} {:>10.1} {:>9.1} {:>9.0}",
        f.name,
        f.environments,
        f.sold,
        sell_out,
        f.orders_per_s,
        f.answered_503,
        f.per_thousand(f.proxy.conflicts + f.proxy.conflict_exceptions),
        f.per_thousand(f.proxy.throttled),
        f.per_thousand(f.answered_503 as u64),
        f.proxy.max_partition_wcu_per_s,
    );
    let at =
        |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
    println!(
        "{:<22} 201s by {} (half), {} (90 %), {} (99 %); answers {:?}",
        "",
        at(f.created_after[0]),
        at(f.created_after[1]),
        at(f.created_after[2]),
        f.by_answer
    );
    if f.violations.is_empty() {
        println!("{:<22} audit: every answer and every guarantee held", "");
    } else {
        println!("{:<22} audit: {} VIOLATIONS", "", f.violations.len());
        for v in f.violations.iter().take(10) {
            println!("{:<24} {v}", "");
        }
    }
}

/// Starts the proxy and a cluster behind it, both on `server`.
fn cluster(server: &Runtime, run: Run, tx_latency: Duration) -> (ddb_limits::Proxy, Cluster) {
    server.block_on(async {
        let proxy = ddb_limits::start(ddb_limits::Config {
            tx_latency,
            ..ddb_limits::Config::default()
        })
        .await
        .expect("start the DynamoDB limits proxy");
        let cluster = Cluster::start(ScaleOptions {
            dynamodb_endpoint: Some(proxy.endpoint()),
            ..ScaleOptions::new(run.shape, run.instances)
        })
        .await;
        (proxy, cluster)
    })
}

/// One stampede: the buyers on `client`, everything else on `server`.
fn stampede_run(server: &Runtime, client: &Runtime, run: Run, tx_latency: Duration) -> Figures {
    let (proxy, cluster) = cluster(server, run, tx_latency);
    let sale = server.block_on(cluster.stack.create_sale(run.units, 1));
    let buyers = cluster.buyers(run.buyers);
    proxy.reset_stats();
    let deadline = Instant::now() + Duration::from_secs(run.seconds);
    let wave = client.block_on(stampede(&cluster, &sale, &buyers, run.clients, deadline));
    let stats = proxy.stats();
    let breakdown = server.block_on(cluster.stack.breakdown(&sale));
    let mut figures = figures(run, &wave, &breakdown, &cluster, stats);
    // Read after the figures: the audit's sale view starts a sweep.
    let facts = SaleFacts {
        sale_id: sale.clone(),
        stock_total: run.units,
        per_user_limit: 1,
    };
    figures.violations = server
        .block_on(audit(&cluster, &facts, &[&wave], &HoldWatch::default()))
        .violations;
    server.block_on(proxy.shutdown());
    drop(cluster);
    figures
}

fn figures(
    run: Run,
    wave: &Wave,
    breakdown: &Value,
    cluster: &Cluster,
    proxy: ddb_limits::Stats,
) -> Figures {
    let sold = breakdown["ledger_confirmed"].as_u64().unwrap_or(0);
    let sold_out_after = (sold == run.units)
        .then(|| wave.last_created_after())
        .flatten();
    let took = sold_out_after.unwrap_or(wave.elapsed);
    Figures {
        name: format!(
            "{} x{}: {}/{}",
            run.shape, run.instances, run.units, run.buyers
        ),
        run,
        sent: wave.outcomes.len(),
        attempts: wave.outcomes.iter().map(|o| o.attempts.len()).sum(),
        by_answer: wave.by_answer(),
        sold,
        sold_out_after,
        created_after: [0.5, 0.9, 0.99].map(|f| wave.created_after_fraction(f)),
        violations: Vec::new(),
        elapsed: wave.elapsed,
        orders_per_s: sold as f64 / took.as_secs_f64().max(1e-3),
        answered_503: wave.count(503),
        environments: cluster.instances_started(),
        proxy,
    }
}

// ------------------------------------------------------------ bare client

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Buckets of the bench's sales: the ledger's default.
const BUCKETS: u16 = inventory::ledger::DEFAULT_BUCKETS;

/// The stock-counter update of `ledger/dynamo/items.rs` for `qty` units
/// on bucket `k` (each writer charges a bucket of its own, as committers
/// of different instances mostly do).
fn counter(table: &str, sale: &str, k: u16, qty: usize, now: &str) -> TransactWriteItem {
    let update = Update::builder()
        .table_name(table)
        .key("pk", s(format!("SALE#{sale}#P{k}")))
        .key("sk", s("STOCK"))
        .update_expression("SET confirmed = confirmed + :q")
        .condition_expression(
            "attribute_exists(pk) AND confirmed <= :max_before AND starts_at <= :earliest \
             AND (attribute_not_exists(ends_at) OR ends_at > :latest)",
        )
        .expression_attribute_values(":q", n(qty))
        .expression_attribute_values(
            ":max_before",
            n(10_000_000 / i64::from(BUCKETS) - qty as i64),
        )
        .expression_attribute_values(":earliest", s(now))
        .expression_attribute_values(":latest", s(now))
        .build()
        .expect("a complete update");
    TransactWriteItem::builder().update(update).build()
}

/// One order's item, as the ledger writes it: the user's item on the
/// partition of the user's bucket (a random one here: user ids hash
/// evenly) with the order set on it.
fn order_items(table: &str, sale: &str, now: &str) -> Vec<TransactWriteItem> {
    let user = ulid::Ulid::new().to_string();
    let home = format!("SALE#{sale}#P{}", rand::random::<u16>() % BUCKETS);
    let hold = ulid::Ulid::new().to_string();
    let key = ulid::Ulid::new().to_string();
    let attempt = chrono::Utc::now().timestamp_millis();
    let entry = std::collections::HashMap::from([
        ("status".to_owned(), s("confirmed")),
        ("order_id".to_owned(), s(format!("{sale}.{hold}"))),
        ("quantity".to_owned(), n(1)),
        ("created_at".to_owned(), s(now)),
        ("attempt".to_owned(), n(attempt)),
        ("idempotency_key".to_owned(), s(&key)),
    ]);
    let user_item = Update::builder()
        .table_name(table)
        .key("pk", s(&home))
        .key("sk", s(format!("USER#{user}")))
        .update_expression(inventory::ledger::ORDER_UPDATE)
        .condition_expression(inventory::ledger::ORDER_CONDITION)
        .expression_attribute_names("#o", format!("o_{hold}"))
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":entry", AttributeValue::M(entry))
        .expression_attribute_values(":zero", n(0))
        .expression_attribute_values(":q", n(1))
        .expression_attribute_values(":user", s(&user))
        .expression_attribute_values(":sale", s(sale))
        .expression_attribute_values(":created", s(now))
        .expression_attribute_values(":void", s("void"))
        .expression_attribute_values(":attempt", n(attempt))
        .expression_attribute_values(":max_before", n(0))
        .build()
        .expect("a complete update");
    vec![TransactWriteItem::builder().update(user_item).build()]
}

/// One transaction of `batch` orders on one sale, like a group commit.
fn transaction(table: &str, sale: &str, k: u16, batch: usize) -> Vec<TransactWriteItem> {
    let now = inventory::sale::rfc3339(chrono::Utc::now());
    let mut items = vec![counter(table, sale, k, batch, &now)];
    for _ in 0..batch {
        items.extend(order_items(table, sale, &now));
    }
    items
}

/// DynamoDB Local's ceiling: `concurrency` writers sending `batch`-order
/// transactions on one sale for `seconds`, straight to DynamoDB Local.
/// Returns (orders/s, transactions/s, cancelled transactions).
async fn bare_ceiling(
    stack: &TestStack,
    batch: usize,
    concurrency: usize,
    seconds: u64,
) -> (f64, f64, u64) {
    let sale = stack.create_sale(10_000_000, 1).await;
    let client = common::backends::dynamodb(&stack.settings).await;
    let table = stack.settings.ledger_table.clone();
    let committed = Arc::new(AtomicU64::new(0));
    let cancelled = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let writers: Vec<_> = (0..concurrency)
        .map(|w| {
            let k = (w % usize::from(BUCKETS)) as u16;
            let (client, table, sale) = (client.clone(), table.clone(), sale.clone());
            let (committed, cancelled) = (committed.clone(), cancelled.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let sent = client
                        .transact_write_items()
                        .set_transact_items(Some(transaction(&table, &sale, k, batch)))
                        .send()
                        .await;
                    match sent {
                        Ok(_) => committed.fetch_add(1, Ordering::Relaxed),
                        Err(_) => cancelled.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for w in writers {
        let _ = w.await;
    }
    let took = started.elapsed().as_secs_f64();
    let transactions = committed.load(Ordering::Relaxed);
    (
        (transactions * batch as u64) as f64 / took,
        transactions as f64 / took,
        cancelled.load(Ordering::Relaxed),
    )
}

// ------------------------------------------------------------ main

/// A runtime of two workers, its threads named (so a profile tells the
/// instances from the buyers: `perf report --sort comm`).
fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

fn main() {
    let instances: Vec<usize> = std::env::var("SCALE_INSTANCES")
        .unwrap_or_else(|_| "1,4,16".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let shapes: Vec<Shape> = std::env::var("SCALE_SHAPES")
        .unwrap_or_else(|_| "http,lambda".into())
        .split(',')
        .filter_map(shape_named)
        .collect();
    let base = Run {
        shape: Shape::Http,
        instances: 1,
        units: env_or("SCALE_UNITS", 1000),
        buyers: env_or("SCALE_BUYERS", 10_000),
        clients: env_or("SCALE_CLIENTS", 512),
        seconds: env_or("SCALE_SECONDS", 90),
    };
    let tx_latency = Duration::from_millis(env_or("SCALE_TX_LATENCY_MS", 15));
    let server = runtime("instances");
    let client = runtime("buyers");
    common::telemetry::init("bench-scale-out");

    println!(
        "1. {} units to {} buyers, through the limits proxy (tx latency {tx_latency:?})",
        base.units, base.buyers
    );
    print_header();
    let mut runs = Vec::new();
    for &shape in &shapes {
        for &instances in &instances {
            let f = stampede_run(
                &server,
                &client,
                Run {
                    shape,
                    instances,
                    ..base
                },
                tx_latency,
            );
            print(&f);
            runs.push(f.json());
        }
    }

    let big = Run {
        shape: shape_named(&std::env::var("SCALE_BIG_SHAPE").unwrap_or_default())
            .unwrap_or(Shape::Http),
        instances: env_or("SCALE_BIG_INSTANCES", 16),
        units: env_or("SCALE_BIG_UNITS", 100_000),
        buyers: env_or("SCALE_BIG_BUYERS", 200_000),
        seconds: env_or("SCALE_BIG_SECONDS", 300),
        ..base
    };
    let mut big_json = Value::Null;
    if big.units > 0 && big.buyers > 0 {
        println!(
            "2. {} units to {} buyers, at most {} s",
            big.units, big.buyers, big.seconds
        );
        print_header();
        let f = stampede_run(&server, &client, big, tx_latency);
        print(&f);
        if f.sold_out_after.is_none() {
            println!(
                "   DID NOT SELL OUT within {} s: {} of {} units sold; the rate reached is {:.0} orders/s",
                big.seconds, f.sold, big.units, f.orders_per_s
            );
        }
        big_json = f.json();
    }

    let bare_seconds = env_or("SCALE_BARE_SECONDS", 10);
    let concurrency = env_or("SCALE_BARE_CONCURRENCY", 64);
    println!("3. DynamoDB Local's own ceiling: a bare client, {concurrency} transactions in flight, {bare_seconds} s each, no proxy, no engine");
    let stack = server.block_on(TestStack::spawn());
    let mut bare = Vec::new();
    for batch in [1usize, 24] {
        let (orders, transactions, cancelled) =
            server.block_on(bare_ceiling(&stack, batch, concurrency, bare_seconds));
        println!(
            "   {batch:>2} order(s) per transaction: {orders:>7.0} orders/s ({transactions:.0} transactions/s, {cancelled} cancelled or failed)"
        );
        bare.push(json!({"orders_per_transaction": batch, "concurrency": concurrency, "orders_per_s": orders, "transactions_per_s": transactions, "cancelled": cancelled}));
    }
    drop(stack);

    let out = json!({ "stampedes": runs, "big": big_json, "bare_dynamodb_local": bare, "tx_latency_ms": tx_latency.as_millis() as u64 });
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/bench-scale-out.json"
    );
    if let Err(e) = std::fs::write(path, serde_json::to_vec_pretty(&out).unwrap_or_default()) {
        eprintln!("could not write {path}: {e}");
    }
    server.shutdown_timeout(Duration::from_secs(1));
}
