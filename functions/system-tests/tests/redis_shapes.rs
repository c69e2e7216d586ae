//! The whole engine on the Redis shapes the clouds run: a TLS-only node
//! (rediss://, a private CA) and a Redis Cluster (3 primaries with a replica
//! each), with a hot sale's stock in one bucket and over three (one per
//! shard). The same stampede and audit as the single-node guarantees.

use common::redis_testbed;
use system_tests::stampede::{
    sells_exactly_the_stock, the_limit_holds_for_fifty_concurrent_checkouts,
};
use system_tests::{settings_on, Options, TestStack};

/// The same stampede with the engine on a Redis Cluster (3 primaries with a
/// replica each: the gate's keys on whichever shard the sale hashes to, the
/// rate limiter's and login throttle's spread over all of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_redis_cluster_the_stampede_sells_exactly_the_stock() {
    let stack = TestStack::spawn_with(Options {
        settings: settings_on(&redis_testbed::cluster()),
        ..Options::default()
    })
    .await;
    sells_exactly_the_stock(stack, 300, 1500).await;
}

/// And on a TLS-only Redis verified against a private CA (`rediss://`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_tls_redis_the_stampede_sells_exactly_the_stock() {
    let stack = TestStack::spawn_with(Options {
        settings: settings_on(&redis_testbed::tls()),
        ..Options::default()
    })
    .await;
    sells_exactly_the_stock(stack, 300, 1500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_redis_cluster_one_user_gets_exactly_the_limit() {
    let stack = TestStack::spawn_with(Options {
        settings: settings_on(&redis_testbed::cluster()),
        ..Options::default()
    })
    .await;
    the_limit_holds_for_fifty_concurrent_checkouts(stack).await;
}

/// One hot sale over the whole cluster: its stock in three buckets, one per
/// primary. Buyers whose home bucket runs dry take from the others, so the
/// sale still sells every unit and not one more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_redis_cluster_a_sale_over_three_buckets_sells_exactly_the_stock() {
    let stack = TestStack::spawn_with(Options {
        settings: settings_on(&redis_testbed::cluster()),
        default_stock_buckets: 3,
        ..Options::default()
    })
    .await;
    sells_exactly_the_stock(stack, 300, 1500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_three_buckets_one_user_gets_exactly_the_limit() {
    let stack = TestStack::spawn_with(Options {
        settings: settings_on(&redis_testbed::cluster()),
        default_stock_buckets: 3,
        ..Options::default()
    })
    .await;
    the_limit_holds_for_fifty_concurrent_checkouts(stack).await;
}
