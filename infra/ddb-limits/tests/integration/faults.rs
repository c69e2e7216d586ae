//! Every fault mode does what it says, observed from the SDK and from
//! DynamoDB Local itself.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use ddb_limits::{Config, Faults};

use crate::common::*;

fn put(table: &str, it: Item) -> TransactWriteItem {
    TransactWriteItem::builder()
        .put(
            Put::builder()
                .table_name(table)
                .set_item(Some(it))
                .build()
                .expect("put"),
        )
        .build()
}

/// An SDK error that carries no answer from the service (the connection
/// closed under it).
fn no_answer<E: std::fmt::Debug, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool {
    use aws_sdk_dynamodb::error::SdkError;
    matches!(
        e,
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) | SdkError::TimeoutError(_)
    )
}

#[tokio::test]
async fn drop_after_commit_applies_the_write_but_loses_the_answer() {
    let proxy = proxy(Config::default()).await;
    let db = client(&proxy.endpoint(), 1).await;
    let table = create_table(&db, "dropafter", false, false).await;
    proxy.set_faults(Faults {
        drop_after_commit: 1,
        operation: Some("TransactWriteItems".into()),
        ..Faults::default()
    });
    // a put of another operation is not affected
    db.put_item()
        .table_name(&table)
        .set_item(Some(item("plain", 1)))
        .send()
        .await
        .expect("put");

    let tok = token("drop");
    let send = || {
        db.transact_write_items()
            .client_request_token(&tok)
            .transact_items(put(&table, item("committed", 1)))
            .send()
    };
    let err = send().await.expect_err("the answer is lost");
    assert!(no_answer(&err), "no answer at all, got {err:?}");
    assert!(
        direct_get(&table, "committed").await.is_some(),
        "but the write IS in DynamoDB Local"
    );
    // the client's retry with the same token gets the success, applied once
    send().await.expect("token replay");
    let stats = proxy.stats();
    assert_eq!(stats.idempotent_replays, 1);
    assert_eq!(stats.faults_injected.get("drop_after_commit"), Some(&1));
    assert_eq!(proxy.faults().drop_after_commit, 0);
    drop_table(&table).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn commit_drop_then_throttle_the_sdk_retry() {
    // The sequence of issue 10 item 3: attempt 1 commits and its answer is
    // lost, the SDK's retry is throttled; the caller sees a throttle for a
    // transaction that in fact committed.
    let proxy = proxy(Config::default()).await;
    let db = client(&proxy.endpoint(), 3).await;
    let table = create_table(&db, "seq", false, false).await;
    proxy.set_faults(Faults {
        drop_after_commit: 1,
        throttle_next: 1,
        operation: Some("TransactWriteItems".into()),
        ..Faults::default()
    });
    let err = db
        .transact_write_items()
        .client_request_token(token("seq"))
        .transact_items(put(&table, item("sold", 1)))
        .send()
        .await
        .expect_err("the retry is throttled");
    let TransactWriteItemsError::TransactionCanceledException(c) = err.into_service_error() else {
        panic!("TransactionCanceledException");
    };
    assert_eq!(c.cancellation_reasons()[0].code(), Some("ThrottlingError"));
    assert!(
        direct_get(&table, "sold").await.is_some(),
        "attempt 1 committed"
    );
    assert_eq!(
        proxy.stats().requests_by_op.get("TransactWriteItems"),
        Some(&2)
    );
    drop_table(&table).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn commit_drop_then_request_level_throttles_every_retry() {
    // The same, with the retries refused as whole requests: the SDK retries
    // a ThrottlingException, so every attempt after the first is throttled
    // and the error it finally returns is a throttle, for a committed write.
    let proxy = proxy(Config::default()).await;
    let db = client(&proxy.endpoint(), 3).await;
    let table = create_table(&db, "seqreq", false, false).await;
    proxy.set_faults(Faults {
        drop_after_commit: 1,
        throttle_request_next: 10,
        operation: Some("TransactWriteItems".into()),
        ..Faults::default()
    });
    let err = db
        .transact_write_items()
        .transact_items(put(&table, item("sold", 1)))
        .send()
        .await
        .expect_err("every retry is throttled");
    match err.into_service_error() {
        TransactWriteItemsError::ThrottlingException(t) => {
            assert_eq!(
                t.throttling_reasons()[0].reason(),
                Some("TableWriteKeyRangeThroughputExceeded")
            );
        }
        other => panic!("ThrottlingException, got {other:?}"),
    }
    assert!(
        direct_get(&table, "sold").await.is_some(),
        "attempt 1 committed"
    );
    let stats = proxy.stats();
    assert_eq!(
        stats.requests_by_op.get("TransactWriteItems"),
        Some(&3),
        "3 attempts"
    );
    assert_eq!(stats.faults_injected.get("throttle_request_next"), Some(&2));
    assert_eq!(proxy.faults().throttle_request_next, 8);
    drop_table(&table).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn drop_before_and_error_500_are_never_applied() {
    let proxy = proxy(Config::default()).await;
    let db = client(&proxy.endpoint(), 1).await;
    let table = create_table(&db, "before", false, false).await;
    proxy.set_faults(Faults {
        drop_before: 1,
        error_500: 1,
        ..Faults::default()
    });
    let err = db
        .put_item()
        .table_name(&table)
        .set_item(Some(item("d", 1)))
        .send()
        .await
        .expect_err("dropped");
    assert!(no_answer(&err), "{err:?}");
    let err = db
        .put_item()
        .table_name(&table)
        .set_item(Some(item("e", 1)))
        .send()
        .await
        .expect_err("500");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    assert!(err.into_service_error().is_internal_server_error());
    assert!(direct_get(&table, "d").await.is_none());
    assert!(direct_get(&table, "e").await.is_none());
    db.put_item()
        .table_name(&table)
        .set_item(Some(item("f", 1)))
        .send()
        .await
        .expect("faults used up");
    drop_table(&table).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn throttle_next_answers_a_real_throttle_and_the_sdk_retries_it() {
    let proxy = proxy(Config::default()).await;
    let raw = client(&proxy.endpoint(), 1).await;
    let table = create_table(&raw, "thr", false, false).await;
    proxy.set_faults(Faults {
        throttle_next: 1,
        ..Faults::default()
    });
    let err = raw
        .get_item()
        .table_name(&table)
        .set_key(Some(key_of("k")))
        .send()
        .await
        .expect_err("throttled");
    match err.into_service_error() {
        aws_sdk_dynamodb::operation::get_item::GetItemError::ThrottlingException(t) => {
            assert_eq!(
                t.throttling_reasons()[0].reason(),
                Some("TableReadKeyRangeThroughputExceeded")
            );
        }
        other => panic!("ThrottlingException, got {other:?}"),
    }
    // with retries on, a throttle is retried and the write lands once
    proxy.set_faults(Faults {
        throttle_next: 2,
        ..Faults::default()
    });
    let retrying = client(&proxy.endpoint(), 3).await;
    retrying
        .put_item()
        .table_name(&table)
        .set_item(Some(item("k", 1)))
        .send()
        .await
        .expect("third attempt");
    assert!(direct_get(&table, "k").await.is_some());
    assert_eq!(proxy.stats().throttled, 3);
    drop_table(&table).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn hold_delays_answers_and_freeze_answers_nothing_until_thawed() {
    let proxy = proxy(Config::default()).await;
    let db = client(&proxy.endpoint(), 1).await;
    let table = create_table(&db, "freeze", false, false).await;
    proxy.set_faults(Faults {
        hold_answers_ms: 300,
        ..Faults::default()
    });
    let started = Instant::now();
    db.put_item()
        .table_name(&table)
        .set_item(Some(item("held", 1)))
        .send()
        .await
        .expect("held put");
    assert!(started.elapsed() >= Duration::from_millis(300));

    proxy.set_faults(Faults {
        freeze: true,
        ..Faults::default()
    });
    let frozen = {
        let (db, table) = (db.clone(), table.clone());
        tokio::spawn(async move {
            db.put_item()
                .table_name(&table)
                .set_item(Some(item("ice", 1)))
                .send()
                .await
        })
    };
    until(&proxy, "the put to be held by the freeze", |s| {
        s.waiting_frozen == 1
    })
    .await;
    assert!(!frozen.is_finished());
    assert!(
        direct_get(&table, "ice").await.is_none(),
        "a frozen proxy forwards nothing"
    );
    proxy.set_faults(Faults::default());
    frozen.await.expect("task").expect("answered once thawed");
    assert!(direct_get(&table, "ice").await.is_some());
    drop_table(&table).await;
    proxy.shutdown().await;
}
