//! `ddb-limits`: run the limits proxy in front of DynamoDB Local.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// A DynamoDB JSON-protocol proxy that makes DynamoDB Local push back like
/// real DynamoDB: per-partition-key WCU/RCU budgets (no burst above them),
/// TransactionConflict between in-flight transactions, the transaction
/// limits (100 actions, 4 MB, one action per item), ClientRequestToken
/// idempotency, and injected faults. Point clients at --listen instead of
/// DynamoDB Local.
///
/// Control API on the same port: GET /_limits/healthz, GET /_limits/stats,
/// POST /_limits/reset, GET|POST /_limits/faults (JSON such as
/// {"drop_after_commit":1,"throttle_next":1,"operation":"TransactWriteItems"}),
/// GET /_limits/config. A summary is printed on exit.
#[derive(Debug, Parser)]
#[command(name = "ddb-limits", version, verbatim_doc_comment)]
struct Args {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:8001")]
    listen: SocketAddr,
    /// DynamoDB Local to forward to.
    #[arg(
        long,
        env = "DYNAMODB_ENDPOINT",
        default_value = "http://127.0.0.1:8000"
    )]
    upstream: String,
    /// Write capacity units per second per partition-key value.
    #[arg(long, default_value_t = ddb_limits::config::PARTITION_WCU)]
    partition_wcu: f64,
    /// Read capacity units per second per partition-key value.
    #[arg(long, default_value_t = ddb_limits::config::PARTITION_RCU)]
    partition_rcu: f64,
    /// Hold each TransactWriteItems this long (owning its items) before
    /// forwarding it; real transactions take ~10-25 ms.
    #[arg(long, default_value_t = 0)]
    tx_latency_ms: u64,
    /// Stop (printing the summary) after this many seconds.
    #[arg(long)]
    max_seconds: Option<u64>,
    /// Print the summary every S seconds while running.
    #[arg(long)]
    stats_every: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "--listen must be a loopback address (127.0.0.0/8 or ::1), not {}",
        args.listen.ip()
    );
    let config = ddb_limits::Config {
        upstream: args.upstream,
        partition_wcu: args.partition_wcu,
        partition_rcu: args.partition_rcu,
        tx_latency: Duration::from_millis(args.tx_latency_ms),
        listen: args.listen,
        ..ddb_limits::Config::default()
    };
    let proxy = ddb_limits::start(config).await?;
    eprintln!(
        "ddb-limits: {} -> {} ({} WCU/s, {} RCU/s per partition key, tx latency {} ms)",
        proxy.endpoint(),
        proxy.config().upstream,
        proxy.config().partition_wcu,
        proxy.config().partition_rcu,
        args.tx_latency_ms
    );

    let deadline = async {
        match args.max_seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    let periodic = async {
        let Some(every) = args.stats_every.filter(|s| *s > 0) else {
            return std::future::pending().await;
        };
        let mut tick = tokio::time::interval(Duration::from_secs(every));
        tick.tick().await;
        loop {
            tick.tick().await;
            eprint!("{}", ddb_limits::stats::summary(&proxy.stats()));
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let why = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = deadline => "--max-seconds reached",
        () = periodic => "stats loop ended",
    };
    let stats = proxy.stats();
    proxy.shutdown().await;
    eprintln!("ddb-limits: stopping ({why})");
    eprint!("{}", ddb_limits::stats::summary(&stats));
    Ok(())
}
