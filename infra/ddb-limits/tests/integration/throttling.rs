//! Per-partition-key budgets and the throttling answers, as the SDK sees them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use ddb_limits::Config;

use crate::common::*;

#[tokio::test]
async fn an_item_over_the_key_budget_is_throttled_with_the_documented_shape() {
    let proxy = proxy(Config {
        partition_wcu: 2.0,
        ..Config::default()
    })
    .await;
    let db = client(&proxy.endpoint(), 1).await;
    let table = create_table(&db, "shape", false, false).await;

    // 1 KB fits a 2-WCU budget; 3 KB never does, whatever the second.
    db.put_item()
        .table_name(&table)
        .set_item(Some(item("a", 1)))
        .send()
        .await
        .expect("1 KB put");
    let err = db
        .put_item()
        .table_name(&table)
        .set_item(Some(item("b", 3)))
        .send()
        .await
        .expect_err("3 KB on a 2 WCU/s key");
    let service = err.as_service_error().expect("a service error, parsed");
    let aws_sdk_dynamodb::operation::put_item::PutItemError::ThrottlingException(t) = service
    else {
        panic!("on-demand table: ThrottlingException, got {service:?}");
    };
    let reasons = t.throttling_reasons();
    assert_eq!(reasons.len(), 1);
    assert_eq!(
        reasons[0].reason(),
        Some("TableWriteKeyRangeThroughputExceeded")
    );
    let arn = reasons[0].resource().unwrap_or("");
    assert!(
        arn.starts_with("arn:aws:dynamodb:") && arn.ends_with(&format!(":table/{table}")),
        "{arn}"
    );
    assert!(t
        .message()
        .unwrap_or("")
        .starts_with("Throughput exceeds the current capacity"));
    assert!(
        direct_get(&table, "b").await.is_none(),
        "a throttled write is not forwarded"
    );
    assert_eq!(proxy.stats().throttled, 1);
    drop_table(&table).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn provisioned_tables_get_provisioned_throughput_exceeded() {
    let proxy = proxy(Config {
        partition_wcu: 2.0,
        partition_rcu: 1.0,
        ..Config::default()
    })
    .await;
    let db = client(&proxy.endpoint(), 1).await;
    let table = create_table(&db, "prov", false, true).await;
    let err = db
        .put_item()
        .table_name(&table)
        .set_item(Some(item("b", 3)))
        .send()
        .await
        .expect_err("3 KB on a 2 WCU/s key");
    match err.as_service_error() {
        Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ProvisionedThroughputExceededException(e)) => {
            assert_eq!(e.throttling_reasons()[0].reason(), Some("TableWriteKeyRangeThroughputExceeded"));
            assert!(e.message().unwrap_or("").contains("provisioned throughput"));
        }
        other => panic!("ProvisionedThroughputExceededException, got {other:?}"),
    }
    // Reads: each strong 8 KB read costs 2 RCU against a 1 RCU/s key, so
    // the second read in any one second is refused.
    direct_put(&table, item("r", 8)).await;
    let mut throttled = None;
    for _ in 0..20 {
        match db
            .get_item()
            .table_name(&table)
            .set_key(Some(key_of("r")))
            .consistent_read(true)
            .send()
            .await
        {
            Ok(_) => continue,
            Err(e) => {
                throttled = Some(e);
                break;
            }
        }
    }
    let err = throttled.expect("a read over budget");
    match err.as_service_error() {
        Some(aws_sdk_dynamodb::operation::get_item::GetItemError::ProvisionedThroughputExceededException(e)) => {
            assert_eq!(e.throttling_reasons()[0].reason(), Some("TableReadKeyRangeThroughputExceeded"));
        }
        other => panic!("ProvisionedThroughputExceededException on read, got {other:?}"),
    }
    drop_table(&table).await;
    proxy.shutdown().await;
}

async fn direct_put(table: &str, it: Item) {
    let direct = client(&upstream(), 3).await;
    direct
        .put_item()
        .table_name(table)
        .set_item(Some(it))
        .send()
        .await
        .expect("direct put");
}

#[tokio::test]
async fn a_hot_key_is_held_to_its_budget_while_another_key_is_untouched() {
    // Low enough that the writers outrun it even when DynamoDB Local is
    // slowed by a busy machine (24 writers at 300 ms a put are 80 WCU/s).
    const BUDGET: f64 = 20.0;
    let proxy = proxy(Config {
        partition_wcu: BUDGET,
        ..Config::default()
    })
    .await;
    let db = client(&proxy.endpoint(), 1).await;
    let table = Arc::new(create_table(&db, "hot", false, false).await);
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let until_t = Instant::now() + Duration::from_millis(2_000);

    // 24 writers hammer one key with 1 KB writes for ~2 s ...
    let mut tasks = Vec::new();
    for w in 0..24 {
        let (db, table, accepted, refused) =
            (db.clone(), table.clone(), accepted.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until_t && n < 5_000 {
                n += 1;
                let mut it = item("hot", 1);
                it.insert("sk".into(), s(&format!("{w}-{n}")));
                match db
                    .put_item()
                    .table_name(table.as_str())
                    .set_item(Some(it))
                    .send()
                    .await
                {
                    Ok(_) => accepted.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        assert_eq!(code(&e.into_service_error()), "ThrottlingException");
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    // ... while a second key writes well under budget (10 WCU/s).
    let cold = {
        let (db, table) = (db.clone(), table.clone());
        tokio::spawn(async move {
            let mut ok = 0;
            while Instant::now() < until_t {
                db.put_item()
                    .table_name(table.as_str())
                    .set_item(Some(item("cold", 1)))
                    .send()
                    .await
                    .expect("the cold key is never throttled");
                ok += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ok
        })
    };
    for t in tasks {
        t.await.expect("writer");
    }
    let cold_writes = cold.await.expect("cold writer");

    let stats = proxy.stats();
    let hot_rows: Vec<_> = stats
        .per_key_second
        .iter()
        .filter(|r| r.table == *table && r.partition_key == "hot")
        .collect();
    let seconds = hot_rows.len() as f64;
    let accepted = accepted.load(Ordering::Relaxed) as f64;
    eprintln!(
        "hot key: {accepted} accepted, {} refused over {seconds} s {:?}; cold key: {cold_writes} writes",
        refused.load(Ordering::Relaxed),
        hot_rows.iter().map(|r| r.wcu).collect::<Vec<_>>()
    );
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "the hammer outran {BUDGET} WCU/s"
    );
    for row in &hot_rows {
        assert!(
            row.wcu <= BUDGET,
            "second {} took {} WCU > {BUDGET}",
            row.second,
            row.wcu
        );
    }
    assert_eq!(
        consumed(&stats, &table, "hot").0,
        accepted,
        "stats agree with the client"
    );
    assert!(
        accepted <= BUDGET * seconds,
        "{accepted} accepted in {seconds} s"
    );
    assert!(stats.max_partition_wcu_per_s <= BUDGET);
    assert_eq!(consumed(&stats, &table, "cold").0, cold_writes as f64);
    assert!(stats
        .per_key_second
        .iter()
        .filter(|r| r.partition_key == "cold")
        .all(|r| r.throttled == 0));
    drop_table(&table).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn transactional_writes_cost_double_and_are_cancelled_per_item() {
    let proxy = proxy(Config {
        partition_wcu: 3.0,
        ..Config::default()
    })
    .await;
    let db = client(&proxy.endpoint(), 1).await;
    let table = create_table(&db, "txcost", false, false).await;
    let put = |it: Item| {
        TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&table)
                    .set_item(Some(it))
                    .build()
                    .expect("put"),
            )
            .build()
    };
    db.put_item()
        .table_name(&table)
        .set_item(Some(item("plain", 1)))
        .send()
        .await
        .expect("put");
    db.transact_write_items()
        .transact_items(put(item("tx", 1)))
        .send()
        .await
        .expect("tx");
    let stats = proxy.stats();
    assert_eq!(
        consumed(&stats, &table, "plain").0,
        1.0,
        "1 KB standard write = 1 WCU"
    );
    assert_eq!(
        consumed(&stats, &table, "tx").0,
        2.0,
        "1 KB transactional write = 2 WCU"
    );

    // [fits: 1 KB × 2 = 2 WCU on "ok"] [over: 2 KB × 2 = 4 WCU > 3 on "big"]
    let err = db
        .transact_write_items()
        .transact_items(put(item("ok", 1)))
        .transact_items(put(item("big", 2)))
        .send()
        .await
        .expect_err("the second action is over its key's budget");
    let service = err.into_service_error();
    let aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c) =
        &service
    else {
        panic!("TransactionCanceledException, got {service:?}");
    };
    let codes: Vec<&str> = c
        .cancellation_reasons()
        .iter()
        .map(|r| r.code().unwrap_or(""))
        .collect();
    assert_eq!(codes, ["None", "ThrottlingError"]);
    assert_eq!(
        c.message(),
        Some("Transaction cancelled, please refer cancellation reasons for specific reasons [None, ThrottlingError]")
    );
    assert!(
        direct_get(&table, "ok").await.is_none(),
        "a cancelled transaction applies nothing"
    );
    drop_table(&table).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn reads_are_charged_by_size_and_consistency() {
    let proxy = proxy(Config::default()).await;
    let db = client(&proxy.endpoint(), 1).await;
    let table = create_table(&db, "reads", true, false).await;
    for sk in ["1", "2"] {
        let mut it = item("q", 3);
        it.insert("sk".into(), s(sk));
        direct_put(&table, it).await;
    }
    let mut big = item("g", 8);
    big.insert("sk".into(), s("0"));
    direct_put(&table, big).await;
    let key =
        std::collections::HashMap::from([("pk".to_string(), s("g")), ("sk".to_string(), s("0"))]);

    db.get_item()
        .table_name(&table)
        .set_key(Some(key.clone()))
        .consistent_read(true)
        .send()
        .await
        .expect("get");
    assert_eq!(
        consumed(&proxy.stats(), &table, "g").1,
        2.0,
        "8 KB strong = 2 RCU"
    );
    db.get_item()
        .table_name(&table)
        .set_key(Some(key.clone()))
        .send()
        .await
        .expect("get");
    assert_eq!(
        consumed(&proxy.stats(), &table, "g").1,
        3.0,
        "8 KB eventual = 1 RCU"
    );

    let q = db
        .query()
        .table_name(&table)
        .key_condition_expression("#p = :p")
        .expression_attribute_names("#p", "pk")
        .expression_attribute_values(":p", s("q"))
        .consistent_read(true)
        .send()
        .await
        .expect("query");
    assert_eq!(q.count(), 2);
    assert_eq!(
        consumed(&proxy.stats(), &table, "q").1,
        2.0,
        "2 × 3 KB = 6 KB → 8 KB = 2 RCU"
    );

    let get = aws_sdk_dynamodb::types::Get::builder()
        .table_name(&table)
        .set_key(Some(key))
        .build()
        .expect("get");
    db.transact_get_items()
        .transact_items(
            aws_sdk_dynamodb::types::TransactGetItem::builder()
                .get(get)
                .build(),
        )
        .send()
        .await
        .expect("transact get");
    assert_eq!(
        consumed(&proxy.stats(), &table, "g").1,
        7.0,
        "8 KB transactional = 4 RCU"
    );
    drop_table(&table).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_batch_forwards_what_fits_and_returns_the_rest_unprocessed() {
    let proxy = proxy(Config {
        partition_wcu: 2.0,
        ..Config::default()
    })
    .await;
    let db = client(&proxy.endpoint(), 1).await;
    let table = create_table(&db, "batch", true, false).await;
    let request = |sk: &str, kb: usize| {
        let mut it = item("hot", kb);
        it.insert("sk".into(), s(sk));
        aws_sdk_dynamodb::types::WriteRequest::builder()
            .put_request(
                aws_sdk_dynamodb::types::PutRequest::builder()
                    .set_item(Some(it))
                    .build()
                    .expect("put"),
            )
            .build()
    };
    let out = db
        .batch_write_item()
        .request_items(
            &table,
            vec![request("1", 1), request("2", 1), request("3", 1)],
        )
        .send()
        .await
        .expect("a batch with some room is not an error");
    let left = out
        .unprocessed_items()
        .and_then(|u| u.get(&table))
        .map_or(0, Vec::len);
    assert_eq!(left, 1, "2 WCU/s: two 1 KB puts go through, one comes back");
    assert_eq!(consumed(&proxy.stats(), &table, "hot").0, 2.0);

    let err = db
        .batch_write_item()
        .request_items(&table, vec![request("4", 3)])
        .send()
        .await
        .expect_err("nothing fits: the whole batch is throttled");
    assert_eq!(code(&err.into_service_error()), "ThrottlingException");
    drop_table(&table).await;
    proxy.shutdown().await;
}
