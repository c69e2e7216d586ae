//! What all three functions truly share, and nothing more.
//!
//! * [`config`]  — typed configuration read once from the environment;
//! * [`telemetry`] — JSON logs, one line per event, stamped with the request id;
//! * [`error`]   — the one error type, mapped to the contract's codes in one place;
//! * [`http`]    — the middleware every function wears (request ids, body limit,
//!   JSON extraction that speaks the contract, `/healthz`);
//! * [`token`]   — Ed25519 access tokens: issued by auth, verified locally elsewhere;
//! * [`client_ip`] — which address a request came from, for per-IP limits;
//! * [`backends`] — clients for DynamoDB and Redis built from the configuration
//!   ([`aws_http`]: the AWS SDK's HTTP/1.1 client on hyper + rustls);
//! * [`redis_client`] — Redis as deployed: single node or cluster, plain or TLS
//!   ([`redis_testbed`]: the local test bed's three shapes, for the suites);
//! * [`serve`]   — one Router, two runtimes: AWS Lambda or a plain HTTP server.

pub mod aws_http;
pub mod backends;
pub mod client_ip;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod redis_client;
pub mod redis_testbed;
pub mod serve;
pub mod telemetry;
pub mod token;

pub use error::{ApiError, ApiResult};
pub use serve::serve;
