//! Transaction conflicts, limits and idempotency tokens.

use std::time::Duration;

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{Get, Put, TransactGetItem, TransactWriteItem, Update};
use ddb_limits::Config;

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

fn add_one(table: &str, pk: &str) -> TransactWriteItem {
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(key_of(pk)))
        .update_expression("ADD n :one")
        .expression_attribute_values(
            ":one",
            aws_sdk_dynamodb::types::AttributeValue::N("1".into()),
        )
        .build()
        .expect("update");
    TransactWriteItem::builder().update(update).build()
}

fn counter(it: &Option<Item>) -> Option<String> {
    it.as_ref()?.get("n")?.as_n().ok().cloned()
}

#[tokio::test]
async fn concurrent_transactions_on_one_item_one_commits_one_conflicts() {
    let proxy = proxy(Config {
        tx_latency: Duration::from_millis(400),
        ..Config::default()
    })
    .await;
    let db = client(&proxy.endpoint(), 1).await;
    let table = create_table(&db, "conflict", false, false).await;
    // warm the schema cache so both transactions are admitted at once
    db.get_item()
        .table_name(&table)
        .set_key(Some(key_of("counter")))
        .send()
        .await
        .expect("get");

    let first = {
        let (db, table) = (db.clone(), table.clone());
        tokio::spawn(async move {
            db.transact_write_items()
                .transact_items(add_one(&table, "counter"))
                .transact_items(put(&table, item("order-1", 1)))
                .send()
                .await
        })
    };
    until(&proxy, "the first transaction to own its items", |s| {
        s.transactions_in_flight == 1
    })
    .await;

    // another transaction on the same counter: cancelled on exactly that item
    let err = db
        .transact_write_items()
        .transact_items(put(&table, item("order-2", 1)))
        .transact_items(add_one(&table, "counter"))
        .send()
        .await
        .expect_err("conflict");
    let TransactWriteItemsError::TransactionCanceledException(c) = err.into_service_error() else {
        panic!("TransactionCanceledException");
    };
    let codes: Vec<&str> = c
        .cancellation_reasons()
        .iter()
        .map(|r| r.code().unwrap_or(""))
        .collect();
    assert_eq!(codes, ["None", "TransactionConflict"]);
    assert_eq!(
        c.cancellation_reasons()[1].message(),
        Some("Transaction is ongoing for the item")
    );

    // a plain write to it: TransactionConflictException
    let err = db
        .put_item()
        .table_name(&table)
        .set_item(Some(item("counter", 1)))
        .send()
        .await
        .expect_err("conflict");
    assert!(err.into_service_error().is_transaction_conflict_exception());

    // a transactional read of it: cancelled too
    let get = Get::builder()
        .table_name(&table)
        .set_key(Some(key_of("counter")))
        .build()
        .expect("get");
    let err = db
        .transact_get_items()
        .transact_items(TransactGetItem::builder().get(get).build())
        .send()
        .await
        .expect_err("conflict");
    let aws_sdk_dynamodb::operation::transact_get_items::TransactGetItemsError::TransactionCanceledException(c) =
        err.into_service_error()
    else {
        panic!("TransactionCanceledException on TransactGetItems");
    };
    assert_eq!(
        c.cancellation_reasons()[0].code(),
        Some("TransactionConflict")
    );

    first
        .await
        .expect("task")
        .expect("the first transaction commits");
    assert_eq!(
        counter(&direct_get(&table, "counter").await).as_deref(),
        Some("1")
    );
    assert!(direct_get(&table, "order-1").await.is_some());
    assert!(direct_get(&table, "order-2").await.is_none());
    let stats = proxy.stats();
    assert_eq!((stats.conflicts, stats.conflict_exceptions), (2, 1));
    assert_eq!(stats.transactions_committed, 1);
    assert_eq!(stats.transactions_in_flight, 0);
    // once it is answered, the item is free
    db.put_item()
        .table_name(&table)
        .set_item(Some(item("order-3", 1)))
        .send()
        .await
        .expect("free");
    drop_table(&table).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn transaction_limits_are_validation_errors_and_nothing_is_forwarded() {
    let proxy = proxy(Config::default()).await;
    let db = client(&proxy.endpoint(), 1).await;
    let table = create_table(&db, "txlimits", false, false).await;

    let many: Vec<TransactWriteItem> = (0..101)
        .map(|i| put(&table, item(&format!("m{i}"), 1)))
        .collect();
    let err = db
        .transact_write_items()
        .set_transact_items(Some(many))
        .send()
        .await
        .expect_err("101");
    let e = err.into_service_error();
    assert_eq!(code(&e), "ValidationException");
    assert!(aws_sdk_dynamodb::error::ProvideErrorMetadata::message(&e)
        .unwrap_or("")
        .contains("less than or equal to 100"));

    let err = db
        .transact_write_items()
        .transact_items(put(&table, item("same", 1)))
        .transact_items(add_one(&table, "same"))
        .send()
        .await
        .expect_err("two actions on one item");
    let e = err.into_service_error();
    assert_eq!(code(&e), "ValidationException");
    assert!(aws_sdk_dynamodb::error::ProvideErrorMetadata::message(&e)
        .unwrap_or("")
        .contains("multiple operations on one item"));

    // 11 items of 390 KB: 4.2 MB > 4 MB
    let big: Vec<TransactWriteItem> = (0..11)
        .map(|i| put(&table, item(&format!("big{i}"), 390)))
        .collect();
    let err = db
        .transact_write_items()
        .set_transact_items(Some(big))
        .send()
        .await
        .expect_err("4 MB");
    let e = err.into_service_error();
    assert_eq!(code(&e), "ValidationException");
    assert!(aws_sdk_dynamodb::error::ProvideErrorMetadata::message(&e)
        .unwrap_or("")
        .contains("4 MB"));

    for pk in ["m0", "same", "big0"] {
        assert!(
            direct_get(&table, pk).await.is_none(),
            "{pk} was not forwarded"
        );
    }
    assert_eq!(proxy.stats().validation_errors, 3);
    drop_table(&table).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_client_request_token_applies_once() {
    let proxy = proxy(Config {
        tx_latency: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let db = client(&proxy.endpoint(), 1).await;
    let table = create_table(&db, "token", false, false).await;
    let send = |token: &str, pk: &str| {
        db.transact_write_items()
            .client_request_token(token)
            .transact_items(add_one(&table, pk))
            .send()
    };
    let (a, b) = (token("a"), token("b"));
    send(&a, "x").await.expect("first");
    send(&a, "x").await.expect("replay is a success");
    assert_eq!(
        counter(&direct_get(&table, "x").await).as_deref(),
        Some("1"),
        "applied once"
    );
    assert_eq!(proxy.stats().idempotent_replays, 1);

    let err = send(&a, "y").await.expect_err("same token, other request");
    assert!(matches!(
        err.into_service_error(),
        TransactWriteItemsError::IdempotentParameterMismatchException(_)
    ));

    // the same request again while the first is still running
    let first = {
        let db = db.clone();
        let t = add_one(&table, "z");
        let b2 = b.clone();
        tokio::spawn(async move {
            db.transact_write_items()
                .client_request_token(b2)
                .transact_items(t)
                .send()
                .await
        })
    };
    until(&proxy, "tok-b in flight", |s| s.transactions_in_flight == 1).await;
    let err = send(&b, "z").await.expect_err("in progress");
    assert!(matches!(
        err.into_service_error(),
        TransactWriteItemsError::TransactionInProgressException(_)
    ));
    first.await.expect("task").expect("first tok-b");
    send(&b, "z").await.expect("replay after completion");
    assert_eq!(
        counter(&direct_get(&table, "z").await).as_deref(),
        Some("1")
    );
    drop_table(&table).await;
    proxy.shutdown().await;
}
