//! The sold-out path with 100,000 distinct tokens (issue 13, item 4): a
//! figure, not a pass/fail test, so it is a bench (release build):
//!
//! ```sh
//! cargo bench -p system-tests --bench sold_out
//! ```
//!
//! Two measurements, each printed:
//!
//! * the verified-token cache alone (`TokenVerifier::verify_cached`) from
//!   4 threads: a first pass over all tokens (each one verified and
//!   inserted), then passes over the same tokens (all answered from
//!   memory when they fit);
//! * the whole sold-out answer over HTTP (the order app, real Redis and
//!   DynamoDB Local behind it, 64 keep-alive connections, each cycling
//!   through its share of the tokens), cold and warm.
//!
//! Each is run with 100,000 tokens (the cache's nominal size) and 150,000
//! (past it: the old cache emptied itself whenever it reached 100,000).
//! `BENCH_SECONDS` (default 5) sets the length of each warm HTTP run.

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
}

/// One keep-alive connection sending its requests in turn, once through
/// (`repeat == false`) or round and round until `deadline`.
async fn connection(
    addr: String,
    requests: Vec<String>,
    body: Bytes,
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
    let mut samples = Vec::with_capacity(requests.len());
    let mut i = 0;
    while Instant::now() < deadline {
        if i >= requests.len() {
            if !repeat || requests.is_empty() {
                break;
            }
            i = 0;
        }
        let req = hyper::Request::post("/orders")
            .header("host", "bench")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", requests[i]))
            .body(Full::new(body.clone()))
            .expect("request");
        i += 1;
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
                });
            }
            Err(_) => break,
        }
    }
    samples
}

fn print(name: &str, samples: &[Sample], elapsed: Duration) {
    let mut lat: Vec<u32> = samples.iter().map(|s| s.micros).collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |v| f64::from(*v) / 1000.0)
    };
    let mut by_status = std::collections::BTreeMap::new();
    for s in samples {
        *by_status.entry(s.status).or_insert(0usize) += 1;
    }
    println!(
        "{name:<46} {:>8} req {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  {by_status:?}",
        samples.len(),
        samples.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
    );
}

async fn http_run(
    addr: &str,
    tokens: &[String],
    body: &Bytes,
    duration: Duration,
    repeat: bool,
) -> (Vec<Sample>, Duration) {
    let mut per_connection: Vec<Vec<String>> = vec![Vec::new(); 64];
    for (i, t) in tokens.iter().enumerate() {
        per_connection[i % 64].push(t.clone());
    }
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = per_connection
        .into_iter()
        .map(|reqs| {
            tokio::spawn(connection(
                addr.to_owned(),
                reqs,
                body.clone(),
                deadline,
                repeat,
            ))
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("connection task"));
    }
    (all, started.elapsed())
}

/// `verify_cached` from 4 threads over `tokens`: one pass, then `passes`
/// more. Returns (first pass, later passes) in ns per call.
fn cache_run(stack: &TestStack, tokens: &Arc<Vec<String>>, passes: usize) -> (f64, f64) {
    let verifier = Arc::new(stack.signer.verifier());
    let now = chrono::Utc::now().timestamp();
    let run = |rounds: usize| {
        let started = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (verifier, tokens) = (verifier.clone(), tokens.clone());
                std::thread::spawn(move || {
                    let mut ok = 0usize;
                    for _ in 0..rounds {
                        for token in tokens.iter().skip(t).step_by(4) {
                            ok += usize::from(verifier.verify_cached(token, now).is_ok());
                        }
                    }
                    ok
                })
            })
            .collect();
        let ok: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(ok, tokens.len() * rounds, "every token verifies");
        started.elapsed().as_nanos() as f64 / (tokens.len() * rounds) as f64
    };
    (run(1), run(passes))
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
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
    let stack = server_rt.block_on(TestStack::spawn_with(Options::default()));
    let sale = server_rt.block_on(stack.create_sale(1, 1));
    let (_, buyer) = stack.new_user();
    let r = server_rt.block_on(stack.checkout(&buyer, &json!({"sale_id": sale}), None));
    assert_eq!(r.status, 201, "{}", r.body);
    let body = Bytes::from(json!({"sale_id": sale}).to_string());
    let addr = stack.order.trim_start_matches("http://").to_owned();

    for n in [100_000usize, 150_000] {
        let tokens: Arc<Vec<String>> = Arc::new((0..n).map(|_| stack.new_user().1).collect());
        let (cold, warm) = cache_run(&stack, &tokens, 3);
        println!(
            "verify_cached, {n} tokens, 4 threads: first pass {cold:>7.0} ns/call, later passes {warm:>7.0} ns/call"
        );
        // A fresh order app per size would need a fresh stack; instead
        // each size uses tokens the app has never seen.
        let (samples, took) = client_rt.block_on(http_run(
            &addr,
            &tokens,
            &body,
            Duration::from_secs(120),
            false,
        ));
        print(
            &format!("sold out, {n} tokens, cold (one pass)"),
            &samples,
            took,
        );
        let (samples, took) = client_rt.block_on(http_run(
            &addr,
            &tokens,
            &body,
            Duration::from_secs(seconds),
            true,
        ));
        print(
            &format!("sold out, {n} tokens, warm ({seconds} s)"),
            &samples,
            took,
        );
    }
    drop(stack);
    server_rt.shutdown_timeout(Duration::from_secs(1));
}
