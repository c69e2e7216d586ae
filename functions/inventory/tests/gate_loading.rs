//! Loading a sale in chunks (`begin_load` / `load_page` / `finish_load`),
//! on every gate (memory, and Redis plain, TLS and cluster), for sales of
//! one bucket and of several: what a rebuild of a big sale relies on.

mod support;

use std::sync::Arc;
use std::time::Duration;

use inventory::gate::{GateSnapshot, Hold, HoldOutcome, Layout, LoadLease, LoadStart, StockGate};
use inventory::sale::{HoldId, SaleDefinition};
use support::{gates, sale, user};

const TTL: i64 = 15_000;
const LEASE: i64 = 10_000;

fn order(user_id: &str, quantity: u32) -> Hold {
    Hold {
        hold_id: HoldId::random(),
        user_id: user_id.to_owned(),
        quantity,
        expires_ms: 0,
    }
}

/// A sale like `s` under a new id.
fn twin(s: &SaleDefinition) -> SaleDefinition {
    let t = sale(s.stock_total as i64, i64::from(s.per_user_limit));
    t.with_stock_buckets(i64::from(s.stock_buckets)).unwrap()
}

async fn begin(gate: &Arc<dyn StockGate>, s: &SaleDefinition, lease_ms: i64) -> LoadLease {
    match gate.begin_load(s, lease_ms).await.unwrap() {
        LoadStart::Begun(lease) => lease,
        other => panic!("expected to load {}, got {other:?}", s.sale_id),
    }
}

async fn snap(gate: &Arc<dyn StockGate>, s: &SaleDefinition) -> GateSnapshot {
    gate.snapshot(&s.sale_id)
        .await
        .unwrap()
        .expect("sale there")
}

/// Guarantee 5 in every bucket; returns the sum.
async fn balanced(name: &str, gate: &Arc<dyn StockGate>, s: &SaleDefinition) -> GateSnapshot {
    let buckets = gate.bucket_snapshots(&s.sale_id).await.unwrap().unwrap();
    for (b, snap) in buckets.iter().enumerate() {
        assert!(snap.balanced(), "{name}: bucket {b}: {snap:?}");
    }
    GateSnapshot::sum(&buckets)
}

async fn hold(gate: &Arc<dyn StockGate>, s: &SaleDefinition, u: &str, qty: u32) -> HoldOutcome {
    gate.try_hold(&s.sale_id, &HoldId::random(), u, qty, TTL)
        .await
        .unwrap()
}

/// 300 users of 1–3 orders, 1–4 units in all (the limit is 4).
fn crowd() -> (Vec<String>, Vec<Hold>) {
    let users: Vec<String> = (0..300).map(|_| user()).collect();
    let mut orders = Vec::new();
    for (i, u) in users.iter().enumerate() {
        for k in 0..(1 + i % 3) {
            let qty = if k == 0 { 1 + (i % 2) as u32 } else { 1 };
            orders.push(order(u, qty));
        }
    }
    (users, orders)
}

#[tokio::test]
async fn a_sale_loaded_in_small_pages_equals_one_loaded_at_once() {
    for (name, gate) in gates().await {
        for buckets in [1, 3] {
            let one = sale(1_500, 4).with_stock_buckets(buckets).unwrap();
            let paged = twin(&one);
            let (users, orders) = crowd();
            let units: i64 = orders.iter().map(|o| i64::from(o.quantity)).sum();
            assert!(gate.load(&one, &orders).await.unwrap(), "{name}");
            let lease = begin(&gate, &paged, LEASE).await;
            for page in orders.chunks(97) {
                assert!(gate.load_page(&paged, &lease, page).await.unwrap());
            }
            // A page read twice (a retried read) counts nothing twice.
            assert!(gate.load_page(&paged, &lease, &orders[..50]).await.unwrap());
            assert!(gate.finish_load(&paged, &lease).await.unwrap(), "{name}");
            let (a, b) = (
                balanced(name, &gate, &one).await,
                balanced(name, &gate, &paged).await,
            );
            assert_eq!(a, b, "{name}/{buckets}");
            assert_eq!(
                (b.confirmed, b.remaining, b.held),
                (units, 1_500 - units, 0)
            );
            assert!(!b.loading, "{name}");
            // The per-user counts came through: the limit holds, after.
            for (i, u) in users.iter().enumerate().take(30) {
                let had: u32 = orders
                    .iter()
                    .filter(|o| &o.user_id == u)
                    .map(|o| o.quantity)
                    .sum();
                let over = hold(&gate, &paged, u, 4 - had + 1).await;
                assert_eq!(
                    over,
                    HoldOutcome::LimitReached,
                    "{name}/{buckets}: user {i}"
                );
                if had < 4 {
                    let ok = hold(&gate, &paged, u, 4 - had).await;
                    assert!(matches!(ok, HoldOutcome::Held(_)), "{name}: {ok:?}");
                }
            }
            let after = balanced(name, &gate, &paged).await;
            assert!(
                after.held > 0 && after.confirmed == units,
                "{name}: {after:?}"
            );
            assert_eq!(
                gate.begin_load(&paged, LEASE).await.unwrap(),
                LoadStart::Loaded,
                "{name}: a loaded sale is not loaded again"
            );
            assert_eq!(gate.settle(&paged.sale_id, &orders).await.unwrap(), Some(0));
        }
    }
}

#[tokio::test]
async fn while_a_sale_loads_holds_wait_and_a_settle_counts_once() {
    for (name, gate) in gates().await {
        for buckets in [1, 3] {
            // Every unit sold, every buyer at home in one bucket: their
            // stock spills over into the others, by load and by settle.
            let s = sale(12, 2).with_stock_buckets(buckets).unwrap();
            let layout = Layout::new(&s.sale_id, s.stock_buckets);
            let orders: Vec<Hold> = std::iter::repeat_with(user)
                .filter(|u| layout.home(u) == 0)
                .take(12)
                .map(|u| order(&u, 1))
                .collect();
            let lease = begin(&gate, &s, LEASE).await;
            assert!(snap(&gate, &s).await.loading, "{name}");
            assert_eq!(
                hold(&gate, &s, &user(), 1).await,
                HoldOutcome::Loading,
                "{name}"
            );
            assert!(gate.load_page(&s, &lease, &orders[..4]).await.unwrap());
            // Orders confirmed while it loads: settled (adopted) before or
            // after the page that carries them.
            assert_eq!(
                gate.settle(&s.sale_id, &orders[2..8]).await.unwrap(),
                Some(4)
            );
            assert!(gate.load_page(&s, &lease, &orders[4..]).await.unwrap());
            assert_eq!(
                gate.settle(&s.sale_id, &orders[10..]).await.unwrap(),
                Some(0)
            );
            assert_eq!(hold(&gate, &s, &user(), 1).await, HoldOutcome::Loading);
            assert!(gate.finish_load(&s, &lease).await.unwrap(), "{name}");
            let sum = balanced(name, &gate, &s).await;
            assert_eq!(
                (sum.confirmed, sum.remaining, sum.held, sum.loading),
                (12, 0, 0, false),
                "{name}/{buckets}: every unit once"
            );
            let buckets = gate.bucket_snapshots(&s.sale_id).await.unwrap().unwrap();
            assert!(
                buckets.iter().all(|b| b.remaining == 0),
                "{name}: {buckets:?}"
            );
            assert!(matches!(
                hold(&gate, &s, &user(), 1).await,
                HoldOutcome::SoldOut { .. }
            ));
            assert_eq!(
                gate.settle(&s.sale_id, &orders).await.unwrap(),
                Some(0),
                "{name}"
            );
        }
    }
}

#[tokio::test]
async fn a_lapsed_lease_is_taken_over_and_the_old_loader_refused() {
    for (name, gate) in gates().await {
        for buckets in [1, 2] {
            let s = sale(10, 5).with_stock_buckets(buckets).unwrap();
            let (a, b) = (order(&user(), 2), order(&user(), 3));
            let old = begin(&gate, &s, 100).await;
            assert!(gate
                .load_page(&s, &old, std::slice::from_ref(&a))
                .await
                .unwrap());
            assert_eq!(
                gate.begin_load(&s, LEASE).await.unwrap(),
                LoadStart::Busy,
                "{name}: the lease is live"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
            let new = begin(&gate, &s, LEASE).await;
            assert_eq!(
                snap(&gate, &s).await.confirmed,
                0,
                "{name}: begun again, empty"
            );
            // The old loader wakes up: refused, and nothing of it counts.
            assert!(!gate
                .load_page(&s, &old, std::slice::from_ref(&b))
                .await
                .unwrap());
            assert!(!gate.finish_load(&s, &old).await.unwrap(), "{name}");
            assert_eq!(snap(&gate, &s).await.confirmed, 0, "{name}");
            assert!(gate
                .load_page(&s, &new, &[a.clone(), b.clone()])
                .await
                .unwrap());
            assert!(gate.finish_load(&s, &new).await.unwrap(), "{name}");
            let sum = balanced(name, &gate, &s).await;
            assert_eq!((sum.confirmed, sum.remaining, sum.loading), (5, 5, false));
        }
    }
}

#[tokio::test]
async fn of_loaders_beginning_at_once_one_loads() {
    for (name, gate) in gates().await {
        let s = sale(50, 1).with_stock_buckets(2).unwrap();
        let starts = futures::future::join_all((0..8).map(|_| gate.begin_load(&s, LEASE))).await;
        let leases: Vec<LoadLease> = starts
            .into_iter()
            .filter_map(|r| match r.unwrap() {
                LoadStart::Begun(lease) => Some(lease),
                LoadStart::Busy => None,
                LoadStart::Loaded => panic!("{name}: nothing finished loading"),
            })
            .collect();
        assert_eq!(leases.len(), 1, "{name}: one loader");
        let orders: Vec<Hold> = (0..20).map(|_| order(&user(), 1)).collect();
        assert!(gate.load_page(&s, &leases[0], &orders).await.unwrap());
        assert!(gate.finish_load(&s, &leases[0]).await.unwrap());
        assert_eq!(gate.begin_load(&s, LEASE).await.unwrap(), LoadStart::Loaded);
        let sum = balanced(name, &gate, &s).await;
        assert_eq!((sum.confirmed, sum.remaining), (20, 30), "{name}");
    }
}

#[tokio::test]
async fn a_sale_forgotten_while_it_loads_refuses_its_loader() {
    for (name, gate) in gates().await {
        let s = sale(10, 5);
        let lease = begin(&gate, &s, LEASE).await;
        gate.forget(&s.sale_id).await.unwrap();
        let o = order(&user(), 1);
        assert!(
            !gate
                .load_page(&s, &lease, std::slice::from_ref(&o))
                .await
                .unwrap(),
            "{name}"
        );
        assert!(!gate.finish_load(&s, &lease).await.unwrap(), "{name}");
        assert_eq!(gate.snapshot(&s.sale_id).await.unwrap(), None, "{name}");
        assert_eq!(
            hold(&gate, &s, &user(), 1).await,
            HoldOutcome::Missing,
            "{name}"
        );
    }
}

/// Settles racing the load of the very same orders, in a sale whose home
/// bucket overflows, so that both place stock in other buckets: still each
/// unit once.
#[tokio::test]
async fn settles_racing_the_load_of_the_same_orders_count_each_once() {
    for (name, gate) in gates().await {
        for round in 0..3 {
            let s = sale(60, 1).with_stock_buckets(3).unwrap();
            let layout = Layout::new(&s.sale_id, 3);
            let orders: Vec<Hold> = std::iter::repeat_with(user)
                .filter(|u| layout.home(u) == 0)
                .take(60)
                .map(|u| order(&u, 1))
                .collect();
            let lease = begin(&gate, &s, LEASE).await;
            let load = async {
                for page in orders.chunks(7) {
                    assert!(gate.load_page(&s, &lease, page).await.unwrap());
                }
            };
            let settles = futures::future::join_all(
                orders.chunks(5).rev().map(|c| gate.settle(&s.sale_id, c)),
            );
            let (_, settled) = tokio::join!(load, settles);
            assert!(settled.iter().all(|r| matches!(r, Ok(Some(_)))), "{name}");
            assert!(gate.finish_load(&s, &lease).await.unwrap());
            let sum = balanced(name, &gate, &s).await;
            assert_eq!(
                (sum.confirmed, sum.remaining),
                (60, 0),
                "{name}: round {round}"
            );
        }
    }
}
