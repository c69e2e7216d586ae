//! Shared test helpers: SDK clients, unique tables, item builders.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ProvisionedThroughput, ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use ddb_limits::{Config, Proxy};

pub type Item = HashMap<String, AttributeValue>;

pub fn upstream() -> String {
    Config::default().upstream
}

/// A client like `functions/common/src/backends.rs` builds, pointed at
/// `endpoint`, with dummy credentials; `attempts == 1` disables retries so
/// a test sees the raw answer.
pub async fn client(endpoint: &str, attempts: u32) -> Client {
    let retry = if attempts <= 1 {
        RetryConfig::disabled()
    } else {
        RetryConfig::standard()
            .with_max_attempts(attempts)
            .with_initial_backoff(Duration::from_millis(5))
    };
    // The SDK is built without its default HTTP client (see the workspace
    // Cargo.toml): the proxy speaks plain HTTP, so no TLS provider is set.
    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "local",
            "local",
            None,
            None,
            "ddb-limits-tests",
        ))
        .retry_config(retry)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(10))
                .build(),
        )
        .load()
        .await;
    Client::new(&config)
}

/// A proxy in front of DynamoDB Local with `config` (upstream filled in).
pub async fn proxy(config: Config) -> Proxy {
    match ddb_limits::start(config).await {
        Ok(p) => p,
        Err(e) => panic!("proxy did not start: {e:#}"),
    }
}

static TABLES: AtomicU32 = AtomicU32::new(0);

/// A table name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "ddbl-{prefix}-{}-{nanos}-{}",
        std::process::id(),
        TABLES.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates `pk` (string) [+ `sk`] table, on-demand unless `provisioned`.
pub async fn create_table(
    client: &Client,
    prefix: &str,
    with_sort_key: bool,
    provisioned: bool,
) -> String {
    let name = unique(prefix);
    let mut create = client
        .create_table()
        .table_name(&name)
        .attribute_definitions(attr("pk"))
        .key_schema(key("pk", KeyType::Hash));
    if with_sort_key {
        create = create
            .attribute_definitions(attr("sk"))
            .key_schema(key("sk", KeyType::Range));
    }
    create = if provisioned {
        create.provisioned_throughput(
            ProvisionedThroughput::builder()
                .read_capacity_units(5)
                .write_capacity_units(5)
                .build()
                .unwrap_or_else(|e| panic!("{e}")),
        )
    } else {
        create.billing_mode(BillingMode::PayPerRequest)
    };
    if let Err(e) = create.send().await {
        panic!(
            "create table {name}: {}",
            aws_sdk_dynamodb::error::DisplayErrorContext(e)
        );
    }
    name
}

fn attr(name: &str) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

/// An item of about `kb` KB (never over `kb` × 1024 bytes) on `pk`.
pub fn item(pk: &str, kb: usize) -> Item {
    let pad = (kb * 1024).saturating_sub(pk.len() + 2 + 3 + 16);
    HashMap::from([
        ("pk".to_string(), s(pk)),
        ("pad".to_string(), s(&"x".repeat(pad))),
    ])
}

pub fn key_of(pk: &str) -> Item {
    HashMap::from([("pk".to_string(), s(pk))])
}

/// Reads an item straight from DynamoDB Local (not through the proxy).
pub async fn direct_get(table: &str, pk: &str) -> Option<Item> {
    let direct = client(&upstream(), 3).await;
    match direct
        .get_item()
        .table_name(table)
        .set_key(Some(key_of(pk)))
        .consistent_read(true)
        .send()
        .await
    {
        Ok(out) => out.item,
        Err(e) => panic!(
            "direct get: {}",
            aws_sdk_dynamodb::error::DisplayErrorContext(e)
        ),
    }
}

/// Waits (bounded) until `cond` holds on the proxy's stats.
pub async fn until(proxy: &Proxy, what: &str, cond: impl Fn(&ddb_limits::Stats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond(&proxy.stats()) {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sum of WCU and RCU the stats charged to `partition` of `table`.
pub fn consumed(stats: &ddb_limits::Stats, table: &str, partition: &str) -> (f64, f64) {
    stats
        .per_key_second
        .iter()
        .filter(|r| r.table == table && r.partition_key == partition)
        .fold((0.0, 0.0), |(w, r), row| (w + row.wcu, r + row.rcu))
}

/// The `__type` code of an SDK error, whatever operation it came from.
pub fn code<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(e: &E) -> String {
    e.code().unwrap_or("").to_string()
}

/// A `ClientRequestToken` unique to this run (at most 36 characters):
/// DynamoDB Local remembers tokens account-wide for 10 minutes, so a fixed
/// token would collide with the previous run's.
pub fn token(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or(0);
    let t = format!("{tag}-{}-{nanos}", TABLES.fetch_add(1, Ordering::Relaxed));
    t.chars().take(36).collect()
}

/// Deletes a test's table (straight on DynamoDB Local; best effort).
pub async fn drop_table(table: &str) {
    let direct = client(&upstream(), 3).await;
    let _ = direct.delete_table().table_name(table).send().await;
}
