//! `cargo bench -p system-tests --bench checkout`: the checkout path on this
//! machine, on real Redis and DynamoDB Local, through real HTTP.
//!
//! The functions run on one Tokio runtime and a lean HTTP/1.1 load generator
//! (keep-alive connections, one request in flight each) on another, so the
//! two share the machine's cores the way a co-located load generator would.
//! Three scenarios, matching the checkout issue's targets:
//!
//! 1. sold-out answers at 64 connections (target ≥ 40,000 req/s, p99 ≤ 5 ms)
//! 2. successful checkouts at 200 concurrent buyers (target p99 ≤ 20 ms)
//! 3. 1,000 units to 10,000 buyers (target: sold out in ≤ 2 s)
//!
//! `BENCH_SECONDS` (default 10) sets the length of 1 and 2.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use system_tests::{Options, TestStack};
use tokio::net::TcpStream;

struct Sample {
    status: u16,
    micros: u32,
    done: Instant,
}

/// One keep-alive connection sending `bodies` (token, body) in turn until
/// `deadline` or until the list is exhausted.
async fn connection(
    addr: String,
    requests: Vec<(String, String)>,
    deadline: Instant,
    repeat: bool,
) -> Vec<Sample> {
    let stream = TcpStream::connect(&addr).await.expect("connect");
    stream.set_nodelay(true).ok();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let mut samples = Vec::with_capacity(4096);
    let mut i = 0;
    while Instant::now() < deadline {
        if i >= requests.len() {
            if !repeat || requests.is_empty() {
                break;
            }
            i = 0;
        }
        let (token, body) = &requests[i];
        i += 1;
        let req = hyper::Request::post("/orders")
            .header("host", "bench")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::from(body.clone())))
            .expect("request");
        let started = Instant::now();
        if sender.ready().await.is_err() {
            break;
        }
        match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                samples.push(Sample {
                    status,
                    micros: started.elapsed().as_micros() as u32,
                    done: Instant::now(),
                });
            }
            Err(_) => break,
        }
    }
    samples
}

struct Report {
    name: &'static str,
    requests: usize,
    by_status: Vec<(u16, usize)>,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    elapsed: Duration,
}

fn report(
    name: &'static str,
    mut samples: Vec<Sample>,
    elapsed: Duration,
    only: Option<u16>,
) -> Report {
    let mut by_status = std::collections::BTreeMap::new();
    for s in &samples {
        *by_status.entry(s.status).or_insert(0) += 1;
    }
    let requests = samples.len();
    if let Some(code) = only {
        samples.retain(|s| s.status == code);
    }
    let mut lat: Vec<u32> = samples.iter().map(|s| s.micros).collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |v| *v as f64 / 1000.0)
    };
    Report {
        name,
        requests,
        by_status: by_status.into_iter().collect(),
        rate: requests as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: lat.last().map_or(0.0, |v| *v as f64 / 1000.0),
        elapsed,
    }
}

fn print(r: &Report) {
    println!(
        "{:<44} {:>8} req {:>10.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  in {:>6.2} s  {:?}",
        r.name, r.requests, r.rate, r.p50_ms, r.p99_ms, r.max_ms, r.elapsed.as_secs_f64(), r.by_status
    );
}

async fn run(
    addr: &str,
    per_connection: Vec<Vec<(String, String)>>,
    duration: Duration,
    repeat: bool,
) -> (Vec<Sample>, Duration) {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = per_connection
        .into_iter()
        .map(|reqs| tokio::spawn(connection(addr.to_owned(), reqs, deadline, repeat)))
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("connection task"));
    }
    (all, started.elapsed())
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stack = Arc::new(server_rt.block_on(TestStack::spawn_with(Options::default())));
    let addr = stack.order.trim_start_matches("http://").to_owned();
    let body = |sale: &str| json!({"sale_id": sale}).to_string();

    // 1. Sold out: every answer is a 409 from memory or the gate.
    let sold_out_sale = server_rt.block_on(stack.create_sale(1, 1));
    let (_, t) = stack.new_user();
    server_rt.block_on(stack.checkout(&t, &json!({"sale_id": sold_out_sale}), None));
    let conns: Vec<Vec<(String, String)>> = (0..64)
        .map(|_| vec![(stack.new_user().1, body(&sold_out_sale))])
        .collect();
    let (samples, took) = client_rt.block_on(run(&addr, conns, Duration::from_secs(seconds), true));
    let sold_out = report(
        "1. sold-out answers, 64 connections",
        samples,
        took,
        Some(409),
    );
    print(&sold_out);

    // 2. Successful checkouts: 200 buyers at a time, each buying once.
    let big_sale = server_rt.block_on(stack.create_sale(1_000_000, 1));
    let conns: Vec<Vec<(String, String)>> = (0..200)
        .map(|_| {
            (0..2_000)
                .map(|_| (stack.new_user().1, body(&big_sale)))
                .collect()
        })
        .collect();
    let (samples, took) =
        client_rt.block_on(run(&addr, conns, Duration::from_secs(seconds), false));
    let success = report(
        "2. successful checkouts, 200 concurrent",
        samples,
        took,
        Some(201),
    );
    print(&success);

    // 3. A stampede: 1,000 units, 10,000 distinct buyers, 256 connections.
    let sale = server_rt.block_on(stack.create_sale(1000, 1));
    let buyers: Vec<(String, String)> = (0..10_000)
        .map(|_| (stack.new_user().1, body(&sale)))
        .collect();
    let mut conns: Vec<Vec<(String, String)>> = vec![Vec::new(); 256];
    for (i, b) in buyers.into_iter().enumerate() {
        conns[i % 256].push(b);
    }
    let started = Instant::now();
    let (samples, took) = client_rt.block_on(run(&addr, conns, Duration::from_secs(120), false));
    let sold = samples.iter().filter(|s| s.status == 201).count();
    let sold_out_after = samples
        .iter()
        .filter(|s| s.status == 201)
        .map(|s| s.done.duration_since(started))
        .max()
        .unwrap_or_default();
    let stampede = report("3. 1,000 units to 10,000 buyers", samples, took, None);
    print(&stampede);
    let view = server_rt.block_on(stack.sale_view(&sale));
    println!(
        "   sold {sold} (last unit sold after {:.2} s), sale now {} with {} remaining",
        sold_out_after.as_secs_f64(),
        view["status"],
        view["stock_remaining"]
    );

    let out = json!({
        "sold_out": {"rate": sold_out.rate, "p50_ms": sold_out.p50_ms, "p99_ms": sold_out.p99_ms},
        "success": {"rate": success.rate, "p50_ms": success.p50_ms, "p99_ms": success.p99_ms},
        "stampede": {"all_answered_s": stampede.elapsed.as_secs_f64(), "sold_out_s": sold_out_after.as_secs_f64(), "sold": sold, "p99_ms": stampede.p99_ms},
    });
    let _ = std::fs::write(
        "target/bench-checkout.json",
        serde_json::to_vec_pretty(&out).unwrap_or_default(),
    );
    drop(stack);
    server_rt.shutdown_timeout(Duration::from_secs(1));
}
