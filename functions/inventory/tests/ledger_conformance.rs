//! One suite, every `Ledger`: DynamoDB Local (the real one) and memory.

mod support;

use std::sync::Arc;

use chrono::Utc;
use inventory::gate::Hold;
use inventory::ledger::{ConfirmOutcome, ConfirmRequest, HoldTruth, Ledger};
use inventory::sale::{HoldId, Order, OrderId, SaleDefinition};
use support::{ledgers, sale, user};

fn order(s: &SaleDefinition, user: &str, qty: u32, key: Option<&str>) -> Order {
    let hold_id = match key {
        Some(k) => HoldId::for_idempotency_key(user, k),
        None => HoldId::random(),
    };
    Order {
        order_id: OrderId {
            sale_id: s.sale_id.clone(),
            hold_id,
        },
        user_id: user.to_owned(),
        quantity: qty,
        created_at: Utc::now(),
        idempotency_key: key.map(str::to_owned),
    }
}

fn request(s: &SaleDefinition, order: &Order, attempt: i64) -> ConfirmRequest {
    ConfirmRequest {
        order: order.clone(),
        attempt,
        stock_total: s.stock_total,
        per_user_limit: s.per_user_limit,
    }
}

async fn created(ledger: &Arc<dyn Ledger>, s: &SaleDefinition) {
    assert!(ledger.create_sale(s).await.unwrap());
}

fn same_order(a: &Order, b: &Order) -> bool {
    // DynamoDB keeps milliseconds; compare what the contract shows.
    a.order_id == b.order_id
        && a.user_id == b.user_id
        && a.quantity == b.quantity
        && a.created_at.timestamp_millis() == b.created_at.timestamp_millis()
}

#[tokio::test]
async fn sales_are_created_once_and_read_back() {
    for (name, ledger) in ledgers().await {
        let s = sale(100, 2);
        created(&ledger, &s).await;
        assert!(
            !ledger.create_sale(&s).await.unwrap(),
            "{name}: the id is taken"
        );
        let back = ledger.sale(&s.sale_id).await.unwrap().expect("stored");
        assert_eq!(
            (back.stock_total, back.per_user_limit, back.name.as_str()),
            (100, 2, "Test sale"),
            "{name}"
        );
        assert_eq!(
            back.starts_at.timestamp_millis(),
            s.starts_at.timestamp_millis()
        );
        assert!(
            ledger
                .sale(&support::sale(1, 1).sale_id)
                .await
                .unwrap()
                .is_none(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn an_order_is_written_once_and_found_by_its_owner_only() {
    for (name, ledger) in ledgers().await {
        let s = sale(10, 2);
        created(&ledger, &s).await;
        let u = user();
        let o = order(&s, &u, 2, None);
        assert_eq!(
            ledger.confirm(&request(&s, &o, 1)).await.unwrap(),
            ConfirmOutcome::Confirmed(o.clone()),
            "{name}"
        );
        // The same attempt retried (same ClientRequestToken): DynamoDB
        // answers success without writing again.
        match ledger.confirm(&request(&s, &o, 1)).await.unwrap() {
            ConfirmOutcome::AlreadyConfirmed(x) | ConfirmOutcome::Confirmed(x) => {
                assert!(same_order(&x, &o), "{name}")
            }
            other => panic!("{name}: {other:?}"),
        }
        // Another attempt at the same order id finds the order already there.
        match ledger.confirm(&request(&s, &o, 2)).await.unwrap() {
            ConfirmOutcome::AlreadyConfirmed(existing) => {
                assert!(same_order(&existing, &o), "{name}")
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(
            same_order(&ledger.order(&o.order_id, &u).await.unwrap().unwrap(), &o),
            "{name}"
        );
        assert!(
            ledger.order(&o.order_id, &user()).await.unwrap().is_none(),
            "{name}: not someone else's"
        );
        assert_eq!(
            ledger.confirmed_units(&s.sale_id).await.unwrap(),
            2,
            "{name}"
        );
        assert_eq!(
            ledger
                .user_orders(&u, Some(&s.sale_id))
                .await
                .unwrap()
                .len(),
            1,
            "{name}"
        );
        assert_eq!(
            ledger.sale_orders(&s.sale_id).await.unwrap().len(),
            1,
            "{name}"
        );
        let everywhere = ledger.user_orders(&u, None).await.unwrap();
        assert!(
            everywhere.iter().any(|x| x.order_id == o.order_id),
            "{name}: listed across sales"
        );
    }
}

#[tokio::test]
async fn the_ledger_refuses_overselling_and_over_limit_on_its_own() {
    for (name, ledger) in ledgers().await {
        let s = sale(3, 2);
        created(&ledger, &s).await;
        let u = user();
        assert!(matches!(
            ledger
                .confirm(&request(&s, &order(&s, &u, 2, None), 1))
                .await
                .unwrap(),
            ConfirmOutcome::Confirmed(_)
        ));
        assert_eq!(
            ledger
                .confirm(&request(&s, &order(&s, &u, 1, None), 1))
                .await
                .unwrap(),
            ConfirmOutcome::LimitReached,
            "{name}"
        );
        assert!(matches!(
            ledger
                .confirm(&request(&s, &order(&s, &user(), 1, None), 1))
                .await
                .unwrap(),
            ConfirmOutcome::Confirmed(_)
        ));
        assert_eq!(
            ledger
                .confirm(&request(&s, &order(&s, &user(), 1, None), 1))
                .await
                .unwrap(),
            ConfirmOutcome::SoldOut,
            "{name}"
        );
        assert_eq!(
            ledger.confirmed_units(&s.sale_id).await.unwrap(),
            3,
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_voided_attempt_can_never_be_confirmed_but_a_later_one_can() {
    for (name, ledger) in ledgers().await {
        let s = sale(5, 1);
        created(&ledger, &s).await;
        let u = user();
        let o = order(&s, &u, 1, Some("k"));
        let hold = Hold {
            hold_id: o.order_id.hold_id.clone(),
            user_id: u.clone(),
            quantity: 1,
            expires_ms: 100,
        };
        assert_eq!(
            ledger.resolve(&s.sale_id, &hold).await.unwrap(),
            HoldTruth::Voided,
            "{name}"
        );
        assert_eq!(
            ledger.resolve(&s.sale_id, &hold).await.unwrap(),
            HoldTruth::Voided,
            "{name}: idempotent"
        );
        assert_eq!(
            ledger.confirm(&request(&s, &o, 100)).await.unwrap(),
            ConfirmOutcome::Voided,
            "{name}"
        );
        assert_eq!(
            ledger.confirmed_units(&s.sale_id).await.unwrap(),
            0,
            "{name}: nothing counted"
        );
        // The same key retried later is a new attempt, and may succeed.
        assert_eq!(
            ledger.confirm(&request(&s, &o, 200)).await.unwrap(),
            ConfirmOutcome::Confirmed(o.clone()),
            "{name}"
        );
        let hold2 = Hold {
            expires_ms: 200,
            ..hold
        };
        match ledger.resolve(&s.sale_id, &hold2).await.unwrap() {
            HoldTruth::Confirmed(found) => assert!(same_order(&found, &o), "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

/// A key is scoped to its user and its sale (`ledger/dynamo/schema.rs`):
/// the same key on another sale is another request, with its own order.
#[tokio::test]
async fn an_idempotency_key_is_scoped_to_its_sale() {
    for (name, ledger) in ledgers().await {
        let (a, b) = (sale(5, 1), sale(5, 1));
        created(&ledger, &a).await;
        created(&ledger, &b).await;
        let u = user();
        let first = order(&a, &u, 1, Some("same-key"));
        assert_eq!(
            ledger.confirm(&request(&a, &first, 1)).await.unwrap(),
            ConfirmOutcome::Confirmed(first.clone()),
            "{name}"
        );
        let other = order(&b, &u, 1, Some("same-key"));
        assert_eq!(
            ledger.confirm(&request(&b, &other, 1)).await.unwrap(),
            ConfirmOutcome::Confirmed(other.clone()),
            "{name}"
        );
        assert_ne!(first.order_id, other.order_id, "{name}: two orders");
        for s in [&a, &b] {
            assert_eq!(
                ledger.confirmed_units(&s.sale_id).await.unwrap(),
                1,
                "{name}: one unit in each sale"
            );
        }
        // In its own sale the key still names its one order.
        match ledger.confirm(&request(&a, &first, 2)).await.unwrap() {
            ConfirmOutcome::AlreadyConfirmed(found) => {
                assert!(same_order(&found, &first), "{name}")
            }
            x => panic!("{name}: {x:?}"),
        }
    }
}

#[tokio::test]
async fn concurrent_writes_never_exceed_the_stock() {
    for (name, ledger) in ledgers().await {
        let s = sale(10, 1);
        created(&ledger, &s).await;
        let writes = (0..40).map(|_| {
            let ledger = ledger.clone();
            let s = s.clone();
            tokio::spawn(async move {
                ledger
                    .confirm(&request(&s, &order(&s, &user(), 1, None), 1))
                    .await
            })
        });
        let mut confirmed = 0;
        for w in writes {
            match w.await.unwrap().unwrap() {
                ConfirmOutcome::Confirmed(_) => confirmed += 1,
                ConfirmOutcome::SoldOut => {}
                other => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!(confirmed, 10, "{name}");
        assert_eq!(
            ledger.confirmed_units(&s.sale_id).await.unwrap(),
            10,
            "{name}"
        );
        assert_eq!(
            ledger.sale_orders(&s.sale_id).await.unwrap().len(),
            10,
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_burst_of_orders_all_fit_and_one_user_still_gets_one() {
    for (name, ledger) in ledgers().await {
        let s = sale(100, 1);
        created(&ledger, &s).await;
        let twice = user();
        let mut writes = Vec::new();
        for i in 0..60 {
            let ledger = ledger.clone();
            let s = s.clone();
            // Two of them are the same user: only one may be confirmed.
            let u = if i < 2 { twice.clone() } else { user() };
            writes.push(tokio::spawn(async move {
                ledger
                    .confirm(&request(&s, &order(&s, &u, 1, None), 1))
                    .await
            }));
        }
        let mut confirmed = 0;
        let mut limited = 0;
        for w in writes {
            match w.await.unwrap().unwrap() {
                ConfirmOutcome::Confirmed(_) => confirmed += 1,
                ConfirmOutcome::LimitReached => limited += 1,
                other => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!((confirmed, limited), (59, 1), "{name}");
        assert_eq!(
            ledger.confirmed_units(&s.sale_id).await.unwrap(),
            59,
            "{name}"
        );
        assert_eq!(
            ledger.sale_orders(&s.sale_id).await.unwrap().len(),
            59,
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_late_void_of_an_older_attempt_never_reopens_a_newer_one() {
    for (name, ledger) in ledgers().await {
        let s = sale(5, 1);
        created(&ledger, &s).await;
        let u = user();
        let o = order(&s, &u, 1, Some("k"));
        let attempt = |expires_ms| Hold {
            hold_id: o.order_id.hold_id.clone(),
            user_id: u.clone(),
            quantity: 1,
            expires_ms,
        };
        // The newer attempt (200) is voided first; the sweeper of the older
        // one (100) arrives late.
        assert_eq!(
            ledger.resolve(&s.sale_id, &attempt(200)).await.unwrap(),
            HoldTruth::Voided,
            "{name}"
        );
        assert_eq!(
            ledger.resolve(&s.sale_id, &attempt(100)).await.unwrap(),
            HoldTruth::Voided,
            "{name}: the older attempt is void too"
        );
        for late in [200, 100] {
            assert_eq!(
                ledger.confirm(&request(&s, &o, late)).await.unwrap(),
                ConfirmOutcome::Voided,
                "{name}: attempt {late} must stay void after the older void came in"
            );
        }
        assert_eq!(
            ledger.confirmed_units(&s.sale_id).await.unwrap(),
            0,
            "{name}"
        );
        // A newer attempt still can.
        assert_eq!(
            ledger.confirm(&request(&s, &o, 300)).await.unwrap(),
            ConfirmOutcome::Confirmed(o.clone()),
            "{name}"
        );
    }
}

#[tokio::test]
async fn the_ledger_refuses_an_order_taken_outside_the_sale_window() {
    for (name, ledger) in ledgers().await {
        let now = Utc::now();
        let s = SaleDefinition::new(
            &format!("t-{}", ulid::Ulid::new()),
            "windowed",
            5,
            Some(1),
            Some(&(now - chrono::Duration::minutes(10)).to_rfc3339()),
            Some(&(now + chrono::Duration::minutes(10)).to_rfc3339()),
            now - chrono::Duration::hours(1),
        )
        .unwrap();
        created(&ledger, &s).await;
        for (when, at) in [
            ("before the start", now - chrono::Duration::minutes(20)),
            ("after the end", now + chrono::Duration::minutes(20)),
        ] {
            let mut o = order(&s, &user(), 1, None);
            o.created_at = at;
            assert_eq!(
                ledger.confirm(&request(&s, &o, 1)).await.unwrap(),
                ConfirmOutcome::NotLive,
                "{name}: an order {when}"
            );
        }
        assert_eq!(
            ledger.confirmed_units(&s.sale_id).await.unwrap(),
            0,
            "{name}"
        );
        let o = order(&s, &user(), 1, None);
        assert_eq!(
            ledger.confirm(&request(&s, &o, 1)).await.unwrap(),
            ConfirmOutcome::Confirmed(o.clone()),
            "{name}: inside the window"
        );
    }
}

#[tokio::test]
async fn a_refused_order_in_a_burst_costs_the_others_nothing() {
    for (name, ledger) in ledgers().await {
        let s = sale(100, 1);
        created(&ledger, &s).await;
        // One user already has their unit; in a burst of 20, their second
        // order must be refused and the 19 others confirmed.
        let greedy = user();
        let first = order(&s, &greedy, 1, None);
        ledger.confirm(&request(&s, &first, 1)).await.unwrap();
        let mut orders: Vec<Order> = (0..19).map(|_| order(&s, &user(), 1, None)).collect();
        orders.insert(7, order(&s, &greedy, 1, None));
        let answers = futures::future::join_all(orders.iter().map(|o| {
            let ledger = ledger.clone();
            let req = request(&s, o, 1);
            async move { ledger.confirm(&req).await.unwrap() }
        }))
        .await;
        for (o, answer) in orders.iter().zip(&answers) {
            let expected = if o.user_id == greedy {
                ConfirmOutcome::LimitReached
            } else {
                ConfirmOutcome::Confirmed(o.clone())
            };
            assert_eq!(answer, &expected, "{name}");
        }
        assert_eq!(
            ledger.confirmed_units(&s.sale_id).await.unwrap(),
            20,
            "{name}"
        );
    }
}
