//! One suite, every `StockGate`: Redis (the real one) and memory. (A sale
//! loaded in chunks: `gate_loading.rs`; split into buckets: `gate_buckets.rs`.)

mod support;

use std::sync::Arc;

use inventory::gate::{GateSnapshot, Hold, HoldOutcome, HoldState, StockGate};
use inventory::sale::{now_ms, HoldId, SaleDefinition};
use support::{gates, sale, user};

const TTL: i64 = 15_000;

async fn hold(gate: &Arc<dyn StockGate>, s: &SaleDefinition, user: &str, qty: u32) -> HoldOutcome {
    gate.try_hold(&s.sale_id, &HoldId::random(), user, qty, TTL)
        .await
        .unwrap()
}

async fn snap(gate: &Arc<dyn StockGate>, s: &SaleDefinition) -> GateSnapshot {
    gate.snapshot(&s.sale_id)
        .await
        .unwrap()
        .expect("sale loaded")
}

fn balanced(s: GateSnapshot) -> bool {
    s.remaining + s.held + s.confirmed == s.total
}

fn held(outcome: HoldOutcome) -> Hold {
    match outcome {
        HoldOutcome::Held(h) => h,
        other => panic!("expected a hold, got {other:?}"),
    }
}

#[tokio::test]
async fn a_hold_moves_stock_from_remaining_to_held() {
    for (name, gate) in gates().await {
        let s = sale(10, 3);
        assert!(gate.load(&s, &[]).await.unwrap(), "{name}");
        assert!(
            !gate.load(&s, &[]).await.unwrap(),
            "{name}: a loaded sale is never reloaded"
        );
        let h = held(hold(&gate, &s, &user(), 2).await);
        assert_eq!(h.quantity, 2);
        let sn = snap(&gate, &s).await;
        assert_eq!(
            (sn.remaining, sn.held, sn.confirmed, sn.open_holds),
            (8, 2, 0, 1),
            "{name}"
        );
        assert!(balanced(sn), "{name}");
    }
}

#[tokio::test]
async fn stock_and_limits_are_enforced() {
    for (name, gate) in gates().await {
        let s = sale(3, 2);
        gate.load(&s, &[]).await.unwrap();
        let alice = user();
        held(hold(&gate, &s, &alice, 2).await);
        assert_eq!(
            hold(&gate, &s, &alice, 1).await,
            HoldOutcome::LimitReached,
            "{name}"
        );
        let bob = user();
        assert!(
            matches!(
                hold(&gate, &s, &bob, 2).await,
                HoldOutcome::SoldOut {
                    remaining: 1,
                    held: 2
                }
            ),
            "{name}: two units asked, one left"
        );
        held(hold(&gate, &s, &bob, 1).await);
        assert_eq!(
            hold(&gate, &s, &user(), 1).await,
            HoldOutcome::SoldOut {
                remaining: 0,
                held: 3
            },
            "{name}"
        );
        assert!(balanced(snap(&gate, &s).await), "{name}");
    }
}

#[tokio::test]
async fn the_sale_window_is_enforced() {
    for (name, gate) in gates().await {
        let now = chrono::Utc::now();
        let later = (now + chrono::Duration::hours(1)).to_rfc3339();
        let upcoming = SaleDefinition::new(
            &format!("t-{}", ulid::Ulid::new()),
            "n",
            5,
            None,
            Some(&later),
            None,
            now,
        )
        .unwrap();
        gate.load(&upcoming, &[]).await.unwrap();
        assert_eq!(
            hold(&gate, &upcoming, &user(), 1).await,
            HoldOutcome::Upcoming,
            "{name}"
        );
        let start = (now - chrono::Duration::hours(2)).to_rfc3339();
        let end = (now - chrono::Duration::hours(1)).to_rfc3339();
        let ended = SaleDefinition::new(
            &format!("t-{}", ulid::Ulid::new()),
            "n",
            5,
            None,
            Some(&start),
            Some(&end),
            now,
        )
        .unwrap();
        gate.load(&ended, &[]).await.unwrap();
        assert_eq!(
            hold(&gate, &ended, &user(), 1).await,
            HoldOutcome::Ended,
            "{name}"
        );
    }
}

#[tokio::test]
async fn settle_and_release_end_a_hold_exactly_once() {
    for (name, gate) in gates().await {
        let s = sale(5, 5);
        gate.load(&s, &[]).await.unwrap();
        let a = held(hold(&gate, &s, &user(), 2).await);
        let b = held(hold(&gate, &s, &user(), 1).await);
        assert_eq!(
            gate.settle(&s.sale_id, std::slice::from_ref(&a))
                .await
                .unwrap(),
            Some(0),
            "{name}"
        );
        assert_eq!(
            gate.settle(&s.sale_id, std::slice::from_ref(&a))
                .await
                .unwrap(),
            Some(0),
            "{name}: idempotent"
        );
        assert!(
            !gate.release(&s.sale_id, &a).await.unwrap(),
            "{name}: a settled hold cannot be released"
        );
        let stale = Hold {
            expires_ms: b.expires_ms - 1,
            ..b.clone()
        };
        assert!(
            !gate.release(&s.sale_id, &stale).await.unwrap(),
            "{name}: only the exact hold is released"
        );
        assert!(gate.release(&s.sale_id, &b).await.unwrap(), "{name}");
        assert!(
            !gate.release(&s.sale_id, &b).await.unwrap(),
            "{name}: released once"
        );
        let sn = snap(&gate, &s).await;
        assert_eq!(
            (sn.remaining, sn.held, sn.confirmed, sn.open_holds),
            (3, 0, 2, 0),
            "{name}"
        );
        assert!(balanced(sn), "{name}");
    }
}

#[tokio::test]
async fn a_replayed_hold_id_reports_the_existing_hold() {
    for (name, gate) in gates().await {
        let s = sale(5, 1);
        gate.load(&s, &[]).await.unwrap();
        let u = user();
        let id = HoldId::for_idempotency_key(&u, "key-1");
        let h = held(gate.try_hold(&s.sale_id, &id, &u, 1, TTL).await.unwrap());
        let again = gate.try_hold(&s.sale_id, &id, &u, 1, TTL).await.unwrap();
        assert_eq!(
            again,
            HoldOutcome::Exists(HoldState::Held(h.clone())),
            "{name}"
        );
        gate.settle(&s.sale_id, std::slice::from_ref(&h))
            .await
            .unwrap();
        let again = gate.try_hold(&s.sale_id, &id, &u, 1, TTL).await.unwrap();
        assert_eq!(
            again,
            HoldOutcome::Exists(HoldState::Settled {
                user_id: u.clone(),
                quantity: 1
            }),
            "{name}"
        );
        assert_eq!(
            gate.lookup(&s.sale_id, &id).await.unwrap(),
            Some(HoldState::Settled {
                user_id: u,
                quantity: 1
            })
        );
    }
}

#[tokio::test]
async fn an_unknown_sale_is_missing_and_a_rebuild_counts_confirmed_orders() {
    for (name, gate) in gates().await {
        let s = sale(10, 5);
        assert_eq!(
            hold(&gate, &s, &user(), 1).await,
            HoldOutcome::Missing,
            "{name}"
        );
        assert_eq!(gate.settle(&s.sale_id, &[]).await.unwrap(), None, "{name}");
        let u = user();
        let confirmed = vec![
            Hold {
                hold_id: HoldId::random(),
                user_id: u.clone(),
                quantity: 2,
                expires_ms: 0,
            },
            Hold {
                hold_id: HoldId::random(),
                user_id: user(),
                quantity: 3,
                expires_ms: 0,
            },
        ];
        assert!(gate.load(&s, &confirmed).await.unwrap());
        let sn = snap(&gate, &s).await;
        assert_eq!((sn.remaining, sn.held, sn.confirmed), (5, 0, 5), "{name}");
        // The rebuilt per-user count still limits that user.
        assert!(
            matches!(hold(&gate, &s, &u, 4).await, HoldOutcome::LimitReached),
            "{name}"
        );
        // An order confirmed while the gate was being rebuilt is adopted.
        let late = Hold {
            hold_id: HoldId::random(),
            user_id: user(),
            quantity: 1,
            expires_ms: 0,
        };
        assert_eq!(
            gate.settle(&s.sale_id, std::slice::from_ref(&late))
                .await
                .unwrap(),
            Some(1),
            "{name}"
        );
        assert_eq!(
            gate.settle(&s.sale_id, &confirmed).await.unwrap(),
            Some(0),
            "{name}: known orders are not counted twice"
        );
        let sn = snap(&gate, &s).await;
        assert_eq!((sn.remaining, sn.confirmed), (4, 6), "{name}");
        assert!(balanced(sn));
        gate.forget(&s.sale_id).await.unwrap();
        assert_eq!(gate.snapshot(&s.sale_id).await.unwrap(), None, "{name}");
    }
}

#[tokio::test]
async fn lapsed_holds_are_claimed_by_the_gates_clock_until_resolved() {
    for (name, gate) in gates().await {
        let s = sale(5, 5);
        gate.load(&s, &[]).await.unwrap();
        let before = now_ms();
        let short = held(
            gate.try_hold(&s.sale_id, &HoldId::random(), &user(), 1, 1)
                .await
                .unwrap(),
        );
        let long = held(
            gate.try_hold(&s.sale_id, &HoldId::random(), &user(), 1, TTL)
                .await
                .unwrap(),
        );
        // Expiry is the gate's now + ttl (Redis and this host share a clock
        // here, within the test's slack).
        assert!(
            (long.expires_ms - (before + TTL)).abs() < 2_000,
            "{name}: {long:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let claimed = gate.claim_expired(&s.sale_id, 100, 60_000).await.unwrap();
        assert_eq!(claimed, vec![short.clone()], "{name}: only the lapsed hold");
        assert!(
            gate.claim_expired(&s.sale_id, 100, 60_000)
                .await
                .unwrap()
                .is_empty(),
            "{name}: a claimed hold is not handed to a second sweeper"
        );
        gate.release(&s.sale_id, &short).await.unwrap();
        assert_eq!(
            snap(&gate, &s).await.oldest_expiry_ms,
            Some(long.expires_ms),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_claim_that_lapses_hands_the_hold_to_the_next_sweeper() {
    for (name, gate) in gates().await {
        let s = sale(5, 5);
        gate.load(&s, &[]).await.unwrap();
        let h = held(
            gate.try_hold(&s.sale_id, &HoldId::random(), &user(), 1, 1)
                .await
                .unwrap(),
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        // The first sweeper claims it for 30 ms, then dies.
        assert_eq!(
            gate.claim_expired(&s.sale_id, 10, 30).await.unwrap(),
            vec![h.clone()],
            "{name}"
        );
        assert!(gate
            .claim_expired(&s.sale_id, 10, 30)
            .await
            .unwrap()
            .is_empty());
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        assert_eq!(
            gate.claim_expired(&s.sale_id, 10, 30).await.unwrap(),
            vec![h.clone()],
            "{name}: claimed again once the lease lapsed, the same attempt"
        );
        // A settled hold is never claimed again.
        gate.settle(&s.sale_id, std::slice::from_ref(&h))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        assert!(
            gate.claim_expired(&s.sale_id, 10, 30)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
        assert!(balanced(snap(&gate, &s).await), "{name}");
    }
}

#[tokio::test]
async fn many_sweepers_at_once_claim_each_hold_once() {
    for (name, gate) in gates().await {
        let s = sale(100, 100);
        gate.load(&s, &[]).await.unwrap();
        for _ in 0..60 {
            held(
                gate.try_hold(&s.sale_id, &HoldId::random(), &user(), 1, 1)
                    .await
                    .unwrap(),
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let sweepers = (0..8).map(|_| {
            let gate = gate.clone();
            let id = s.sale_id.clone();
            tokio::spawn(async move { gate.claim_expired(&id, 10, 60_000).await })
        });
        let mut seen = std::collections::HashSet::new();
        let mut total = 0;
        for sweeper in sweepers {
            for hold in sweeper.await.unwrap().unwrap() {
                total += 1;
                seen.insert(hold.hold_id);
            }
        }
        assert_eq!(
            total, 60,
            "{name}: 8 sweepers x 10 cover the 60 lapsed holds"
        );
        assert_eq!(seen.len(), 60, "{name}: no hold was handed out twice");
    }
}

#[tokio::test]
async fn concurrent_holds_never_take_more_than_the_stock() {
    for (name, gate) in gates().await {
        let s = sale(50, 1);
        gate.load(&s, &[]).await.unwrap();
        let attempts = (0..300).map(|_| {
            let gate = gate.clone();
            let id = s.sale_id.clone();
            tokio::spawn(
                async move { gate.try_hold(&id, &HoldId::random(), &user(), 1, TTL).await },
            )
        });
        let mut won = 0;
        for a in attempts {
            if let HoldOutcome::Held(_) = a.await.unwrap().unwrap() {
                won += 1;
            }
        }
        assert_eq!(won, 50, "{name}");
        let sn = snap(&gate, &s).await;
        assert_eq!((sn.remaining, sn.held), (0, 50), "{name}");
    }
}
