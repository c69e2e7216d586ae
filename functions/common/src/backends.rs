//! Clients for the two real backends, built from [`Settings`].
//!
//! Both are lazy: a function starts (and can answer `/healthz` with `503`)
//! even while Redis or DynamoDB is down, and connects once they are back.
//! Both carry timeouts, so a slow backend becomes a `503`, never a hang.
//!
//! One TLS stack serves every client in the process: rustls 0.23 with ring
//! as its crypto provider (the workspace Cargo.toml says why), installed
//! process-wide by [`install_crypto_provider`].

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::config::Credentials;

use crate::config::Settings;
pub use crate::redis_client::RedisConn;
use crate::redis_client::RedisTimeouts;

/// Makes ring the process's default rustls crypto provider. Call it first
/// thing in `main` (each function does), before any TLS client exists.
///
/// rustls picks a provider by itself only when exactly one of its `ring` /
/// `aws_lc_rs` features is compiled in; a dependency that switches on the
/// other one would otherwise make `rustls::ClientConfig::builder()` (the
/// Redis TLS client's) panic at the first connection. Installing one
/// explicitly keeps that choice ours. Idempotent: a second call (tests
/// build many clients in one process) leaves the first provider in place.
pub fn install_crypto_provider() {
    // Err only means a provider is installed already, which is the goal.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A DynamoDB client; talks to DynamoDB Local when `DYNAMODB_ENDPOINT` is set.
pub async fn dynamodb(settings: &Settings) -> aws_sdk_dynamodb::Client {
    install_crypto_provider();
    let timeout = Duration::from_millis(settings.backend_timeout_ms);
    // The same client also fetches credentials (IMDS, the ECS/Lambda
    // container endpoint, STS for web identity): without the SDK's default
    // features there is no other.
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        // HTTP/1.1 on hyper 1 + rustls/ring, the system's CA bundle
        // (`SSL_CERT_FILE` in the images); `http://` endpoints (DynamoDB
        // Local) through the same client without TLS.
        .http_client(crate::aws_http::client())
        .region(Region::new(settings.aws_region.clone()))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(500).min(timeout))
                .operation_attempt_timeout(timeout)
                .operation_timeout(timeout + timeout / 2)
                .build(),
        );
    if let Some(endpoint) = &settings.dynamodb_endpoint {
        loader = loader.endpoint_url(endpoint);
        // DynamoDB Local accepts any credentials; don't make developers set them.
        if crate::config::var("AWS_ACCESS_KEY_ID").is_none() {
            loader = loader.credentials_provider(Credentials::new(
                "local",
                "local",
                None,
                None,
                "flashsale-local",
            ));
        }
    }
    aws_sdk_dynamodb::Client::new(&loader.load().await)
}

/// A multiplexed, self-reconnecting Redis handle (single node or cluster,
/// plain or TLS, as `REDIS_URL`/`REDIS_MODE`/`REDIS_CA_FILE` say) that
/// connects on first use.
pub fn redis(settings: &Settings) -> anyhow::Result<RedisConn> {
    let target = settings.redis_target()?;
    let timeouts = RedisTimeouts::from_budget(Duration::from_millis(settings.backend_timeout_ms));
    Ok(RedisConn::connect(&target, timeouts)?)
}

/// `PING`, for readiness checks.
pub async fn redis_ping(conn: &RedisConn) -> Result<(), String> {
    conn.ping().await
}

/// `DescribeTable`, for readiness checks and `migrate`.
pub async fn dynamodb_table_ready(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<(), String> {
    client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| {
            format!(
                "dynamodb table {table}: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(e)
            )
        })
}

/// Sends a prepared `CreateTable` unless the table exists; `true` if it
/// created it. Used by each function's `migrate`, for its own tables.
pub async fn create_table_if_absent(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    create: aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder,
) -> anyhow::Result<bool> {
    if dynamodb_table_ready(client, table).await.is_ok() {
        return Ok(false);
    }
    match create.table_name(table).send().await {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(anyhow::anyhow!(
            "create table {table}: {}",
            aws_sdk_dynamodb::error::DisplayErrorContext(e)
        )),
    }
}
