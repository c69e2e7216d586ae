//! `cargo bench -p system-tests --bench gate_shapes`: the stock gate's
//! throughput for one hot sale on each Redis shape of the test bed.
//!
//! Four shapes: a plain node, a TLS-only node, the cluster with the sale in
//! one bucket, and the cluster with the sale over three buckets (one per
//! primary). `GATE_BENCH_TASKS` tasks (default 256) each take a hold and
//! release it, over and over, for `BENCH_SECONDS` (default 8): every gate
//! call is one `gate.lua` script on the shard that owns its bucket.
//!
//! What a 2-core machine can and cannot show: the client, three primaries
//! and three replicas share two cores, so the cluster's total cannot rise
//! with its shards here. What does show is where the work lands: the bench
//! reads each node's `INFO commandstats` (scripts run) and `INFO cpu`
//! (CPU seconds) before and after, so the busiest shard's share and its CPU
//! time per script are measured. One shard's single core caps a sale at
//! 1 / (CPU per script); with a core per shard, a sale of `n` buckets is
//! capped at `n` times that, and the figures printed say so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_client::RedisConn;
use common::redis_testbed::{self, RedisVariant};
use inventory::gate::{HoldOutcome, RedisGate, StockGate};
use inventory::sale::{HoldId, SaleDefinition};

struct Run {
    label: String,
    holds_per_sec: f64,
    /// Scripts run on the busiest primary, as a share of all scripts.
    busiest_share: f64,
    /// CPU time (user + sys) per script on the busiest primary, µs.
    cpu_us_per_script: f64,
}

/// (scripts run, CPU seconds) of one node so far.
async fn counters(conn: &RedisConn) -> (u64, f64) {
    let mut c = conn.clone();
    let info: String = redis::cmd("INFO")
        .arg("all")
        .query_async(&mut c)
        .await
        .expect("INFO");
    let mut calls = 0;
    let mut cpu = 0.0;
    for line in info.lines() {
        if let Some(rest) = line
            .strip_prefix("cmdstat_evalsha:")
            .or_else(|| line.strip_prefix("cmdstat_eval:"))
        {
            calls += rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Some(v) = line
            .strip_prefix("used_cpu_user:")
            .or_else(|| line.strip_prefix("used_cpu_sys:"))
        {
            cpu += v.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    (calls, cpu)
}

async fn run(label: &str, variant: &RedisVariant, buckets: i64, seconds: u64, tasks: usize) -> Run {
    let gate = Arc::new(RedisGate::new(variant.connect().await));
    let sale = SaleDefinition::new(
        &format!("bench-{}", ulid::Ulid::new()),
        "Bench",
        10_000_000,
        Some(1_000_000),
        None,
        None,
        chrono::Utc::now() - chrono::Duration::minutes(1),
    )
    .and_then(|s| s.with_stock_buckets(buckets))
    .expect("bench sale");
    gate.load(&sale, &[]).await.expect("load");
    let nodes = variant.nodes(true).await;
    let mut before = Vec::new();
    for n in &nodes {
        before.push(counters(n).await);
    }
    let holds = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..tasks)
        .map(|t| {
            let gate = gate.clone();
            let holds = holds.clone();
            let sale_id = sale.sale_id.clone();
            tokio::spawn(async move {
                let user = format!("bench-user-{t}");
                while Instant::now() < deadline {
                    match gate
                        .try_hold(&sale_id, &HoldId::random(), &user, 1, 60_000)
                        .await
                    {
                        Ok(HoldOutcome::Held(h)) => {
                            holds.fetch_add(1, Ordering::Relaxed);
                            let _ = gate.release(&sale_id, &h).await;
                        }
                        Ok(other) => panic!("unexpected {other:?}"),
                        Err(e) => panic!("gate error: {e}"),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    let took = started.elapsed().as_secs_f64();
    let mut per_node = Vec::new();
    for (n, b) in nodes.iter().zip(&before) {
        let a = counters(n).await;
        per_node.push((a.0.saturating_sub(b.0), a.1 - b.1));
    }
    let all: u64 = per_node.iter().map(|p| p.0).sum();
    let busiest = per_node
        .iter()
        .copied()
        .max_by_key(|p| p.0)
        .unwrap_or((0, 0.0));
    let _ = gate.forget(&sale.sale_id).await;
    Run {
        label: label.to_owned(),
        holds_per_sec: holds.load(Ordering::Relaxed) as f64 / took,
        busiest_share: busiest.0 as f64 / all.max(1) as f64,
        cpu_us_per_script: busiest.1 * 1e6 / busiest.0.max(1) as f64,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let tasks: usize = std::env::var("GATE_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let plain = redis_testbed::plain();
    let tls = redis_testbed::tls();
    let cluster = redis_testbed::cluster();
    let shapes = [
        ("plain, 1 bucket", &plain, 1),
        ("TLS, 1 bucket", &tls, 1),
        ("cluster, 1 bucket", &cluster, 1),
        ("cluster, 3 buckets", &cluster, 3),
    ];
    let mut runs = Vec::new();
    for (label, variant, buckets) in shapes {
        eprintln!("gate_shapes: {label} for {seconds}s with {tasks} tasks ...");
        runs.push(run(label, variant, buckets, seconds, tasks).await);
    }
    let base = runs[0].holds_per_sec;
    println!("\n| shape | holds/s (hold + release) | vs plain | busiest primary's share of scripts | its CPU per script | one core per shard caps the sale at |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &runs {
        // Two scripts per hold (hold + release); the busiest shard's core
        // is the cap: scripts/s it can run, over its share.
        let cap_holds = 1e6 / r.cpu_us_per_script.max(0.001) / r.busiest_share.max(0.001) / 2.0;
        println!(
            "| {} | {:.0} | {:.2}x | {:.0}% | {:.1} µs | {:.0} holds/s |",
            r.label,
            r.holds_per_sec,
            r.holds_per_sec / base,
            r.busiest_share * 100.0,
            r.cpu_us_per_script,
            cap_holds
        );
    }
    let one = runs.iter().find(|r| r.label == "cluster, 1 bucket");
    let three = runs.iter().find(|r| r.label == "cluster, 3 buckets");
    if let (Some(one), Some(three)) = (one, three) {
        println!(
            "\ncluster: 3 buckets vs 1 here {:.2}x; busiest shard's share {:.0}% -> {:.0}%, so with a core per shard the sale's cap rises {:.2}x",
            three.holds_per_sec / one.holds_per_sec,
            one.busiest_share * 100.0,
            three.busiest_share * 100.0,
            one.busiest_share / three.busiest_share.max(0.001)
        );
    }
    if let Some(tls_run) = runs.iter().find(|r| r.label.starts_with("TLS")) {
        println!(
            "TLS vs plain: {:.2}x the throughput, {:.2}x the server CPU per script",
            tls_run.holds_per_sec / base,
            tls_run.cpu_us_per_script / runs[0].cpu_us_per_script.max(0.001)
        );
    }
}
