//! Proxy settings, with the documented DynamoDB numbers as defaults.

use std::net::SocketAddr;
use std::time::Duration;

/// Default per-partition write limit: "1,000 WCU per second" per partition
/// (bp-partition-key-design.html).
pub const PARTITION_WCU: f64 = 1_000.0;
/// Default per-partition read limit: "3,000 RCU per second".
pub const PARTITION_RCU: f64 = 3_000.0;
/// "A client request token is valid for 10 minutes after the first request
/// that uses it is completed."
pub const TOKEN_WINDOW: Duration = Duration::from_secs(600);

/// How the proxy behaves. Build it with struct update syntax:
/// `Config { partition_wcu: 50.0, ..Config::default() }`.
#[derive(Clone, Debug)]
pub struct Config {
    /// DynamoDB Local (or anything speaking the DynamoDB JSON protocol).
    /// Default: `$DYNAMODB_ENDPOINT`, else `http://127.0.0.1:8000`.
    pub upstream: String,
    /// Write units per second per partition-key value (default 1,000).
    pub partition_wcu: f64,
    /// Read units per second per partition-key value (default 3,000).
    pub partition_rcu: f64,
    /// How long each `TransactWriteItems` is held (owning its items) before
    /// it is forwarded. Real transactions take ~10-25 ms; DynamoDB Local
    /// answers in ~1 ms, so overlaps (and conflicts) need this to be
    /// realistic. Default 0.
    pub tx_latency: Duration,
    /// Where to listen; must be a loopback address. Default `127.0.0.1:0`
    /// (a free port, see [`crate::Proxy::endpoint`]).
    pub listen: SocketAddr,
    /// Idempotency window of `ClientRequestToken` (default 10 minutes).
    pub token_window: Duration,
    /// Seconds of per-key rows kept for the stats (default 300).
    pub stats_window_seconds: u64,
    /// Most per-key rows a stats snapshot returns (default 20,000; the most
    /// consuming ones when there are more).
    pub stats_max_rows: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            upstream: std::env::var("DYNAMODB_ENDPOINT")
                .ok()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "http://127.0.0.1:8000".to_string()),
            partition_wcu: PARTITION_WCU,
            partition_rcu: PARTITION_RCU,
            tx_latency: Duration::ZERO,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token_window: TOKEN_WINDOW,
            stats_window_seconds: 300,
            stats_max_rows: 20_000,
        }
    }
}
