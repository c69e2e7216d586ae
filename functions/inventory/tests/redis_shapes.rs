//! What only the deployed Redis shapes can show: certificates that are
//! really verified, sales that land on every shard of a cluster, and scripts
//! that come back after a node forgot them.

mod support;

use std::time::Duration;

use common::redis_client::{RedisConn, RedisMode, RedisTarget, RedisTimeouts};
use common::redis_testbed;
use inventory::gate::{HoldOutcome, RedisGate, StockGate};
use inventory::sale::HoldId;
use support::{sale, user};

fn quick() -> RedisTimeouts {
    RedisTimeouts::from_budget(Duration::from_millis(1_500))
}

#[tokio::test]
async fn tls_verifies_the_servers_certificate() {
    let tls = redis_testbed::tls();
    // With the private CA: connects.
    tls.connect().await;
    // With the system roots only: the local CA is unknown, so the handshake
    // must fail; an engine that connected here would trust any server.
    let untrusted = RedisTarget::parse(&tls.url, RedisMode::Single, None).unwrap();
    let conn = RedisConn::connect(&untrusted, quick()).unwrap();
    let err = conn
        .ping()
        .await
        .expect_err("an unknown CA must be refused");
    assert!(
        err.to_lowercase().contains("certificate") || err.to_lowercase().contains("unknownissuer"),
        "{err}"
    );
    // The certificate names localhost and 127.0.0.1, not other loopback
    // addresses: the host name is checked too.
    let port = tls.url.rsplit(':').next().unwrap();
    let wrong_name = RedisTarget::parse(
        &format!("rediss://127.0.0.2:{port}"),
        RedisMode::Single,
        tls.ca_file.as_deref(),
    )
    .unwrap();
    let conn = RedisConn::connect(&wrong_name, quick()).unwrap();
    conn.ping()
        .await
        .expect_err("a certificate for another name must be refused");
}

#[tokio::test]
async fn plain_text_to_a_tls_only_node_fails_cleanly() {
    let tls = redis_testbed::tls();
    let plain_url = tls.url.replacen("rediss://", "redis://", 1);
    let target = RedisTarget::parse(&plain_url, RedisMode::Single, None).unwrap();
    let conn = RedisConn::connect(&target, quick()).unwrap();
    assert!(conn.ping().await.is_err());
}

/// Sales whose hash tags fall on every primary all work through one handle:
/// the client follows the slot map (and `MOVED` when it is stale).
#[tokio::test]
async fn a_cluster_serves_sales_on_every_shard() {
    let conn = redis_testbed::cluster().connect().await;
    let gate = RedisGate::new(conn.clone());
    let mut shards = std::collections::BTreeSet::new();
    for _ in 0..24 {
        let s = sale(5, 2);
        let key = format!("fs:{{{}}}:sale", s.sale_id);
        let mut c = conn.clone();
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        shards.insert(slot / 5462); // redis-cli splits 16384 slots in thirds
        assert!(gate.load(&s, &[]).await.unwrap());
        match gate
            .try_hold(&s.sale_id, &HoldId::random(), &user(), 2, 10_000)
            .await
            .unwrap()
        {
            HoldOutcome::Held(_) => {}
            other => panic!("expected a hold, got {other:?}"),
        }
        let snap = gate.snapshot(&s.sale_id).await.unwrap().unwrap();
        assert_eq!((snap.remaining, snap.held), (3, 2));
    }
    assert_eq!(shards.len(), 3, "24 random sales should touch all 3 shards");
}

/// `SCRIPT FLUSH` on every node (what a failover to a replica or a restart
/// looks like to `EVALSHA`): the gate reloads its script where it runs.
#[tokio::test]
async fn the_gate_script_is_reloaded_on_every_node_after_noscript() {
    for variant in redis_testbed::all() {
        let conn = variant.connect().await;
        let gate = RedisGate::new(conn.clone());
        let s = sale(10, 5);
        assert!(gate.load(&s, &[]).await.unwrap(), "{}", variant.name);
        flush_scripts(&variant).await;
        let outcome = gate
            .try_hold(&s.sale_id, &HoldId::random(), &user(), 1, 10_000)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", variant.name));
        assert!(
            matches!(outcome, HoldOutcome::Held(_)),
            "{}: {outcome:?}",
            variant.name
        );
    }
}

async fn flush_scripts(variant: &redis_testbed::RedisVariant) {
    let nodes: Vec<String> = match variant.mode {
        RedisMode::Single => vec![variant.url.clone()],
        // Every node, replicas included: a promoted replica has no cache
        // of the old primary's scripts either.
        RedisMode::Cluster => {
            let mut conn = variant.connect().await;
            let listing: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut conn)
                .await
                .unwrap();
            listing
                .lines()
                .filter_map(|line| line.split_whitespace().nth(1))
                .filter_map(|addr| addr.split('@').next())
                .map(|addr| format!("redis://{addr}"))
                .collect()
        }
    };
    assert!(!nodes.is_empty());
    for url in nodes {
        let target =
            RedisTarget::parse(&url, RedisMode::Single, variant.ca_file.as_deref()).unwrap();
        let mut conn = RedisConn::connect(&target, quick()).unwrap();
        let _: String = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("SCRIPT FLUSH on {url}: {e}"));
    }
}
