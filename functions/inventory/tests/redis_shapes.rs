//! What only the deployed Redis shapes can show: certificates that are
//! really verified, sales that land on every shard of a cluster, and scripts
//! that come back after a node forgot them.

mod support;

use std::time::Duration;

use common::redis_client::{RedisConn, RedisMode, RedisTarget, RedisTimeouts};
use common::redis_testbed;
use inventory::gate::{Hold, HoldOutcome, Layout, RedisGate, StockGate};
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

async fn slot_of(conn: &RedisConn, key: &str) -> u16 {
    let mut c = conn.clone();
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

/// One hot sale over the cluster: three buckets, three primaries (the
/// test cluster splits the slots in thirds, as `redis-cli --cluster
/// create` does).
#[tokio::test]
async fn three_buckets_of_one_sale_land_on_three_primaries() {
    let conn = redis_testbed::cluster().connect().await;
    for _ in 0..10 {
        let s = sale(30, 2).with_stock_buckets(3).unwrap();
        let layout = Layout::new(&s.sale_id, 3);
        let mut thirds = std::collections::BTreeSet::new();
        for b in 0..3 {
            let keys = layout.keys(b);
            let slot = slot_of(&conn, &keys[0]).await;
            for k in &keys[1..] {
                assert_eq!(slot_of(&conn, k).await, slot, "one bucket, one slot");
            }
            thirds.insert(slot / 5462);
        }
        assert_eq!(thirds.len(), 3, "{}", s.sale_id);
    }
}

/// A shard that restarts empty loses its bucket of the sale: the gate
/// reports the sale incomplete, and the rebuild loads all of it again from
/// the ledger (no one knows which orders that bucket counted), exactly.
#[tokio::test]
async fn a_bucket_lost_with_its_shard_means_the_sale_is_loaded_again() {
    let conn = redis_testbed::cluster().connect().await;
    let gate = RedisGate::new(conn.clone());
    let s = sale(9, 3).with_stock_buckets(3).unwrap();
    assert!(gate.load(&s, &[]).await.unwrap());
    let mut confirmed = Vec::new();
    for _ in 0..6 {
        let u = user();
        match gate
            .try_hold(&s.sale_id, &HoldId::random(), &u, 1, 10_000)
            .await
            .unwrap()
        {
            HoldOutcome::Held(h) => confirmed.push(h),
            other => panic!("{other:?}"),
        }
    }
    gate.settle(&s.sale_id, &confirmed).await.unwrap();
    let layout = Layout::new(&s.sale_id, 3);
    let mut c = conn.clone();
    let _: i64 = redis::cmd("DEL")
        .arg(&layout.keys(2)[..])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(gate.bucket_snapshots(&s.sale_id).await.unwrap(), None);
    let as_orders: Vec<Hold> = confirmed
        .iter()
        .map(|h| Hold {
            expires_ms: 0,
            ..h.clone()
        })
        .collect();
    assert!(gate.load(&s, &as_orders).await.unwrap(), "the sale loads");
    let buckets = gate.bucket_snapshots(&s.sale_id).await.unwrap().unwrap();
    assert!(buckets.iter().all(|b| b.balanced()), "{buckets:?}");
    let sum = inventory::gate::GateSnapshot::sum(&buckets);
    assert_eq!(
        (sum.confirmed, sum.held, sum.remaining),
        (6, 0, 3),
        "{buckets:?}"
    );
    assert!(!gate.load(&s, &as_orders).await.unwrap(), "loaded once");
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
    // Every node, replicas included: a promoted replica has no cache of
    // the old primary's scripts either.
    for mut conn in variant.nodes(false).await {
        let _: String = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("SCRIPT FLUSH on {}: {e}", variant.name));
    }
}
