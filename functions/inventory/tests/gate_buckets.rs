//! A sale's stock split into buckets (one per Redis Cluster shard), on every
//! gate: the contract holds exactly as for one bucket. `409 sold_out` only
//! when no bucket has the units, the per-user limit is atomic across
//! buckets, and guarantee 5 holds per bucket and summed.

mod support;

use std::sync::Arc;

use inventory::gate::{GateSnapshot, Hold, HoldOutcome, HoldState, StockGate};
use inventory::sale::{HoldId, SaleDefinition};
use support::{gates, sale, user};

const TTL: i64 = 15_000;

fn bucketed(stock: i64, limit: i64, buckets: i64) -> SaleDefinition {
    sale(stock, limit).with_stock_buckets(buckets).unwrap()
}

async fn buckets_of(gate: &Arc<dyn StockGate>, s: &SaleDefinition) -> Vec<GateSnapshot> {
    gate.bucket_snapshots(&s.sale_id)
        .await
        .unwrap()
        .expect("sale loaded")
}

/// Guarantee 5 in every bucket and summed; returns the sum.
async fn assert_balanced(
    name: &str,
    gate: &Arc<dyn StockGate>,
    s: &SaleDefinition,
) -> GateSnapshot {
    let buckets = buckets_of(gate, s).await;
    for (b, snap) in buckets.iter().enumerate() {
        assert!(snap.balanced(), "{name}: bucket {b} unbalanced: {snap:?}");
    }
    let sum = GateSnapshot::sum(&buckets);
    assert_eq!(sum.total, s.stock_total as i64, "{name}");
    assert_eq!(
        gate.snapshot(&s.sale_id).await.unwrap(),
        Some(sum),
        "{name}"
    );
    sum
}

async fn try_hold(gate: &Arc<dyn StockGate>, s: &SaleDefinition, u: &str, qty: u32) -> HoldOutcome {
    gate.try_hold(&s.sale_id, &HoldId::random(), u, qty, TTL)
        .await
        .unwrap()
}

fn held(outcome: HoldOutcome) -> Hold {
    match outcome {
        HoldOutcome::Held(h) => h,
        other => panic!("expected a hold, got {other:?}"),
    }
}

#[tokio::test]
async fn every_unit_of_every_bucket_sells_and_not_one_more() {
    for (name, gate) in gates().await {
        let s = bucketed(10, 1, 3);
        assert!(gate.load(&s, &[]).await.unwrap(), "{name}");
        let buyers: Vec<String> = (0..40).map(|_| user()).collect();
        let outcomes =
            futures::future::join_all(buyers.iter().map(|u| try_hold(&gate, &s, u, 1))).await;
        let holds: Vec<Hold> = outcomes
            .iter()
            .filter_map(|o| match o {
                HoldOutcome::Held(h) => Some(h.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            holds.len(),
            10,
            "{name}: exactly the stock, from all buckets"
        );
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, HoldOutcome::Held(_) | HoldOutcome::SoldOut { .. })),
            "{name}: {outcomes:?}"
        );
        let sum = assert_balanced(name, &gate, &s).await;
        assert_eq!((sum.remaining, sum.held), (0, 10), "{name}");
        // One unit back anywhere: the next buyer gets it, whatever their home.
        assert!(gate.release(&s.sale_id, &holds[3]).await.unwrap(), "{name}");
        let late = held(try_hold(&gate, &s, &user(), 1).await);
        assert_eq!(late.quantity, 1);
        let kept: Vec<Hold> = holds
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, h)| h.clone())
            .collect();
        assert_eq!(
            gate.settle(&s.sale_id, &kept).await.unwrap(),
            Some(0),
            "{name}"
        );
        let sum = assert_balanced(name, &gate, &s).await;
        assert_eq!(
            (sum.remaining, sum.held, sum.confirmed),
            (0, 1, 9),
            "{name}"
        );
    }
}

#[tokio::test]
async fn the_per_user_limit_is_atomic_across_buckets() {
    for (name, gate) in gates().await {
        let s = bucketed(40, 3, 4);
        gate.load(&s, &[]).await.unwrap();
        let u = user();
        // Drain most of the stock first, so the user's own home bucket runs
        // dry and their checkouts take their units from other buckets.
        for _ in 0..30 {
            held(try_hold(&gate, &s, &user(), 1).await);
        }
        let outcomes = futures::future::join_all((0..20).map(|_| try_hold(&gate, &s, &u, 1))).await;
        let got = outcomes
            .iter()
            .filter(|o| matches!(o, HoldOutcome::Held(_)))
            .count();
        let limited = outcomes
            .iter()
            .filter(|o| matches!(o, HoldOutcome::LimitReached))
            .count();
        assert_eq!((got, limited), (3, 17), "{name}: {outcomes:?}");
        let sum = assert_balanced(name, &gate, &s).await;
        assert_eq!(sum.held, 33, "{name}");
    }
}

#[tokio::test]
async fn a_hold_of_several_units_takes_them_from_several_buckets() {
    for (name, gate) in gates().await {
        // One unit per bucket: three units only exist as a set of buckets.
        let s = bucketed(3, 3, 3);
        gate.load(&s, &[]).await.unwrap();
        let u = user();
        let h = held(try_hold(&gate, &s, &u, 3).await);
        assert_eq!(h.quantity, 3);
        let sum = assert_balanced(name, &gate, &s).await;
        assert_eq!((sum.remaining, sum.held), (0, 3), "{name}");
        assert!(
            matches!(
                try_hold(&gate, &s, &user(), 1).await,
                HoldOutcome::SoldOut { remaining: 0, .. }
            ),
            "{name}"
        );
        // Released whole, every part back where it came from.
        assert!(gate.release(&s.sale_id, &h).await.unwrap(), "{name}");
        let sum = assert_balanced(name, &gate, &s).await;
        assert_eq!((sum.remaining, sum.held), (3, 0), "{name}");
        // More units than remain anywhere: sold out, and nothing kept.
        held(try_hold(&gate, &s, &user(), 1).await);
        assert!(
            matches!(
                try_hold(&gate, &s, &u, 3).await,
                HoldOutcome::SoldOut { remaining: 2, .. }
            ),
            "{name}"
        );
        let sum = assert_balanced(name, &gate, &s).await;
        assert_eq!((sum.remaining, sum.held), (2, 1), "{name}");
        // And two can still be had; settled, they count once.
        let two = held(try_hold(&gate, &s, &u, 2).await);
        gate.settle(&s.sale_id, std::slice::from_ref(&two))
            .await
            .unwrap();
        gate.settle(&s.sale_id, std::slice::from_ref(&two))
            .await
            .unwrap();
        let sum = assert_balanced(name, &gate, &s).await;
        assert_eq!(
            (sum.remaining, sum.held, sum.confirmed),
            (0, 1, 2),
            "{name}"
        );
        assert_eq!(
            gate.lookup(&s.sale_id, &two.hold_id).await.unwrap(),
            Some(HoldState::Settled {
                user_id: u.clone(),
                quantity: 2
            }),
            "{name}"
        );
        // The user has 2 of 3, and the one unit left is held: two more are
        // refused, for the stock or for the limit, and take nothing.
        let o = try_hold(&gate, &s, &u, 2).await;
        assert!(
            matches!(o, HoldOutcome::SoldOut { .. } | HoldOutcome::LimitReached),
            "{name}: {o:?}"
        );
        let sum = assert_balanced(name, &gate, &s).await;
        assert_eq!(
            (sum.remaining, sum.held, sum.confirmed),
            (0, 1, 2),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_rebuild_places_every_confirmed_order_and_the_limits_still_hold() {
    for (name, gate) in gates().await {
        let s = bucketed(12, 2, 3);
        let crowd: Vec<String> = (0..6).map(|_| user()).collect();
        let confirmed: Vec<Hold> = crowd
            .iter()
            .map(|u| Hold {
                hold_id: HoldId::random(),
                user_id: u.clone(),
                quantity: 2,
                expires_ms: 0,
            })
            .collect();
        assert!(gate.load(&s, &confirmed).await.unwrap(), "{name}");
        let sum = assert_balanced(name, &gate, &s).await;
        assert_eq!((sum.remaining, sum.confirmed), (0, 12), "{name}");
        for u in &crowd {
            // Sold out, or at the limit: either way nothing is taken.
            let o = try_hold(&gate, &s, u, 1).await;
            assert!(
                matches!(o, HoldOutcome::SoldOut { .. } | HoldOutcome::LimitReached),
                "{name}: {o:?}"
            );
        }
        // Settling the same orders again adopts nothing.
        assert_eq!(
            gate.settle(&s.sale_id, &confirmed).await.unwrap(),
            Some(0),
            "{name}"
        );
        assert_balanced(name, &gate, &s).await;
    }
}

#[tokio::test]
async fn a_lapsed_split_hold_is_claimed_once_and_released_whole() {
    for (name, gate) in gates().await {
        let s = bucketed(2, 2, 2);
        gate.load(&s, &[]).await.unwrap();
        let h = gate
            .try_hold(&s.sale_id, &HoldId::random(), &user(), 2, 1)
            .await
            .unwrap();
        let h = held(h);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let claimed = gate.claim_expired(&s.sale_id, 10, 5_000).await.unwrap();
        assert_eq!(claimed.len(), 1, "{name}: {claimed:?}");
        assert_eq!(claimed[0].hold_id, h.hold_id, "{name}");
        assert!(
            gate.release(&s.sale_id, &claimed[0]).await.unwrap(),
            "{name}"
        );
        let sum = assert_balanced(name, &gate, &s).await;
        assert_eq!(
            (sum.remaining, sum.held, sum.open_holds),
            (2, 0, 0),
            "{name}"
        );
    }
}
