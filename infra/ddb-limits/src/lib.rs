//! # ddb-limits: DynamoDB Local that pushes back like DynamoDB
//!
//! A test tool. An HTTP/1.1 reverse proxy for the DynamoDB JSON protocol
//! that sits in front of DynamoDB Local, forwards every request byte for
//! byte and returns every answer unchanged, except where real DynamoDB
//! would have answered otherwise:
//!
//! - **per-partition-key capacity** ([`budget`], [`capacity`]): each
//!   partition-key value of each table gets `partition_wcu` / `partition_rcu`
//!   units per second (default 1,000 / 3,000), with no burst above that;
//!   over budget, the request is answered as throttled and not forwarded;
//! - **transaction conflicts** ([`conflicts`]): an in-flight
//!   `TransactWriteItems` owns its items;
//! - **transaction limits and idempotency tokens** ([`limits`], [`tokens`]);
//! - **faults** ([`faults`]): answers lost after commit, connections dropped,
//!   500s, forced throttles, slow answers, a frozen service;
//! - **reporting** ([`stats`]): consumed capacity per key per second.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let proxy = ddb_limits::start(ddb_limits::Config {
//!     partition_wcu: 100.0,
//!     tx_latency: std::time::Duration::from_millis(15),
//!     ..ddb_limits::Config::default()
//! })
//! .await?;
//! // point the SDK at proxy.endpoint() ...
//! let stats = proxy.stats();
//! println!("hottest key: {} WCU/s", stats.max_partition_wcu_per_s);
//! proxy.shutdown().await;
//! # Ok(()) }
//! ```

pub mod batch;
pub mod budget;
pub mod capacity;
pub mod config;
pub mod conflicts;
mod control;
pub mod faults;
mod handler;
pub mod limits;
pub mod plan;
pub mod protocol;
mod proxy;
pub mod reads;
pub mod schema;
pub mod stats;
pub mod tokens;
mod upstream;
pub mod validate;

pub use config::Config;
pub use faults::Faults;
pub use proxy::{start, Proxy};
pub use stats::{KeySecond, Stats};
