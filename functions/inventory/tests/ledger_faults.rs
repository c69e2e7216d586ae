//! The DynamoDB ledger under the faults real DynamoDB has and DynamoDB Local
//! never shows, injected by the limits proxy (`infra/ddb-limits`): answers
//! lost after a commit, throttled retries, slow transactions.

mod support;

use std::time::Duration;

use chrono::Utc;
use ddb_limits::Faults;
use inventory::gate::Hold;
use inventory::ledger::{ConfirmOutcome, ConfirmRequest, HoldTruth, Ledger, LedgerError};
use inventory::sale::{HoldId, Order, OrderId, SaleDefinition};
use support::{limited_ledger, sale, user};

fn request(s: &SaleDefinition, attempt: i64) -> ConfirmRequest {
    ConfirmRequest {
        order: Order {
            order_id: OrderId {
                sale_id: s.sale_id.clone(),
                hold_id: HoldId::random(),
            },
            user_id: user(),
            quantity: 1,
            created_at: Utc::now(),
            idempotency_key: None,
        },
        attempt,
        stock_total: s.stock_total,
        per_user_limit: s.per_user_limit,
    }
}

fn hold_of(req: &ConfirmRequest) -> Hold {
    Hold {
        hold_id: req.order.order_id.hold_id.clone(),
        user_id: req.order.user_id.clone(),
        quantity: req.order.quantity,
        expires_ms: req.attempt,
    }
}

#[tokio::test]
async fn a_commit_whose_answer_was_lost_and_whose_retry_was_throttled_is_uncertain() {
    let (ledger, proxy) = limited_ledger(ddb_limits::Config::default()).await;
    let s = sale(5, 1);
    assert!(ledger.create_sale(&s).await.unwrap());
    // Attempt 1 commits and its answer is lost; the SDK's retries are
    // throttled with a 4xx. The last error the SDK returns says nothing
    // about attempt 1.
    proxy.set_faults(Faults {
        drop_after_commit: 1,
        throttle_request_next: 50,
        operation: Some("TransactWriteItems".into()),
        ..Faults::default()
    });
    let req = request(&s, 7);
    let answer = ledger.confirm(&req).await;
    assert!(
        matches!(answer, Err(LedgerError::Uncertain(_))),
        "a 4xx after a lost answer must not be a definite refusal: {answer:?}"
    );
    proxy.set_faults(Faults::default());
    // The truth: it was written, and resolving the hold settles it.
    match ledger.resolve(&s.sale_id, &hold_of(&req)).await.unwrap() {
        HoldTruth::Confirmed(order) => assert_eq!(order.order_id, req.order.order_id),
        other => panic!("the committed order must be found: {other:?}"),
    }
    assert_eq!(ledger.confirmed_units(&s.sale_id).await.unwrap(), 1);
}

#[tokio::test]
async fn a_ledger_that_refuses_connections_is_a_definite_refusal() {
    // Nothing listens on the proxy's port once it is shut down: the
    // request is never sent, so the hold can be released at once.
    let (ledger, proxy) = limited_ledger(ddb_limits::Config::default()).await;
    let s = sale(5, 1);
    assert!(ledger.create_sale(&s).await.unwrap());
    proxy.shutdown().await;
    let answer = ledger.confirm(&request(&s, 1)).await;
    assert!(
        matches!(answer, Err(LedgerError::Definite(_))),
        "a request that was never sent is a definite refusal: {answer:?}"
    );
}

#[tokio::test]
async fn an_order_whose_caller_gave_up_while_queued_is_never_written() {
    // Each transaction takes 400 ms: the first order is in flight while
    // the second waits in the sale's queue.
    let (ledger, _proxy) = limited_ledger(ddb_limits::Config {
        tx_latency: Duration::from_millis(400),
        ..Default::default()
    })
    .await;
    let s = sale(5, 1);
    assert!(ledger.create_sale(&s).await.unwrap());
    let first = request(&s, 1);
    let abandoned = request(&s, 1);
    let in_flight = {
        let (ledger, first) = (ledger.clone(), first.clone());
        tokio::spawn(async move { ledger.confirm(&first).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The second caller times out while queued (and will void its hold).
    let gave_up =
        tokio::time::timeout(Duration::from_millis(100), ledger.confirm(&abandoned)).await;
    assert!(gave_up.is_err(), "it was still queued: {gave_up:?}");
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        ConfirmOutcome::Confirmed(first.order.clone())
    );
    // Give a later batch every chance to carry the abandoned order.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        ledger
            .order(&abandoned.order.order_id, &abandoned.order.user_id)
            .await
            .unwrap(),
        None,
        "an abandoned order must not be written after its caller gave up"
    );
    assert_eq!(ledger.confirmed_units(&s.sale_id).await.unwrap(), 1);
}

#[tokio::test]
async fn one_refused_order_in_a_batch_does_not_send_the_others_one_by_one() {
    // 300 ms per transaction: 20 orders queue behind a first one in flight
    // and go together in the next batch.
    let (ledger, proxy) = limited_ledger(ddb_limits::Config {
        tx_latency: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let s = sale(100, 1);
    assert!(ledger.create_sale(&s).await.unwrap());
    let greedy = request(&s, 1);
    let blocker = {
        let (ledger, greedy) = (ledger.clone(), greedy.clone());
        tokio::spawn(async move { ledger.confirm(&greedy).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The same user again, amid 19 others: over their limit.
    let mut second = request(&s, 2);
    second.order.user_id = greedy.order.user_id.clone();
    let mut batch: Vec<ConfirmRequest> = (0..19).map(|_| request(&s, 1)).collect();
    batch.insert(9, second.clone());
    let answers = futures::future::join_all(batch.iter().map(|r| ledger.confirm(r))).await;
    assert!(matches!(
        blocker.await.unwrap(),
        Ok(ConfirmOutcome::Confirmed(_))
    ));
    for (req, answer) in batch.iter().zip(answers) {
        let expected = if req.order.order_id == second.order.order_id {
            ConfirmOutcome::LimitReached
        } else {
            ConfirmOutcome::Confirmed(req.order.clone())
        };
        assert_eq!(answer.unwrap(), expected);
    }
    assert_eq!(ledger.confirmed_units(&s.sale_id).await.unwrap(), 20);
    let stats = proxy.stats();
    assert!(
        stats.transactions_committed <= 3,
        "the 19 good orders of the refused batch go together again, not one by one: {} transactions committed",
        stats.transactions_committed
    );
}
