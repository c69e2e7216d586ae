//! The ledger whose writes spread (layout 2, `ledger/dynamo/schema.rs`):
//! read back page by page, sold by many instances at once through the
//! limits proxy (DynamoDB's per-partition budgets, transactions cancelled on
//! conflicting items) without ever passing the stock, and a sale of the old
//! layout refused rather than misread.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::Utc;
use inventory::ledger::{ConfirmOutcome, ConfirmRequest, DynamoLedger, Ledger, LedgerError};
use inventory::sale::{HoldId, Order, OrderId, SaleDefinition};
use support::{ledgers, sale, settings, user};

fn request(s: &SaleDefinition, user: &str, qty: u32) -> ConfirmRequest {
    ConfirmRequest {
        order: Order {
            order_id: OrderId {
                sale_id: s.sale_id.clone(),
                hold_id: HoldId::random(),
            },
            user_id: user.to_owned(),
            quantity: qty,
            created_at: Utc::now(),
            idempotency_key: None,
        },
        attempt: 1,
        stock_total: s.stock_total,
        per_user_limit: s.per_user_limit,
    }
}

#[tokio::test]
async fn a_sale_is_read_back_page_by_page_each_order_once() {
    for (name, ledger) in ledgers().await {
        // 320 units: 5 buckets (64 units each at least), so the pages run
        // across several partitions.
        let s = sale(320, 1);
        assert!(ledger.create_sale(&s).await.unwrap());
        let writes: Vec<_> = (0..320)
            .map(|_| {
                let (ledger, s) = (ledger.clone(), s.clone());
                tokio::spawn(async move { ledger.confirm(&request(&s, &user(), 1)).await })
            })
            .collect();
        for w in writes {
            let outcome = w.await.unwrap().unwrap();
            assert!(
                matches!(outcome, ConfirmOutcome::Confirmed(_)),
                "{name}: {outcome:?}"
            );
        }
        let mut seen = HashSet::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = ledger
                .sale_orders_page(&s.sale_id, after.as_deref(), 7)
                .await
                .unwrap();
            assert!(
                page.orders.len() <= 7,
                "{name}: a page of {}",
                page.orders.len()
            );
            for o in page.orders {
                assert!(
                    seen.insert(o.order_id.to_string()),
                    "{name}: {} twice",
                    o.order_id
                );
            }
            pages += 1;
            assert!(pages < 500, "{name}: the pages never end");
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.len(), 320, "{name}");
        let err = ledger
            .sale_orders_page(&s.sale_id, Some("not a cursor"), 7)
            .await
            .expect_err("a bad cursor is refused");
        assert!(matches!(err, LedgerError::Definite(_)), "{name}: {err:?}");
    }
}

/// `instances` ledgers (each with its own committer, beliefs and home
/// bucket, as separate pods have) on one table behind one limits proxy.
async fn instances(
    instances: usize,
    buckets: u16,
) -> (
    Vec<Arc<dyn Ledger>>,
    ddb_limits::Proxy,
    aws_sdk_dynamodb::Client,
    String,
) {
    let proxy = ddb_limits::start(ddb_limits::Config {
        tx_latency: std::time::Duration::from_millis(10),
        ..Default::default()
    })
    .await
    .expect("start the DynamoDB limits proxy");
    let mut s = settings();
    s.dynamodb_endpoint = Some(proxy.endpoint());
    s.ledger_table = format!("test-ledger-{}", ulid::Ulid::new());
    let client = common::backends::dynamodb(&s).await;
    DynamoLedger::new(client.clone(), &s.ledger_table)
        .migrate()
        .await
        .expect("DynamoDB Local reachable (just backends)");
    let ledgers = (0..instances)
        .map(|_| {
            Arc::new(DynamoLedger::with_buckets(
                client.clone(),
                &s.ledger_table,
                buckets,
            )) as Arc<dyn Ledger>
        })
        .collect();
    (ledgers, proxy, client, s.ledger_table)
}

#[tokio::test]
async fn four_instances_sell_exactly_the_stock_over_the_buckets_through_the_proxy() {
    let (ledgers, proxy, client, table) = instances(4, 8).await;
    // 520 units: 8 buckets (the configured number; 64 units each at least).
    let s = sale(520, 3);
    assert!(ledgers[0].create_sale(&s).await.unwrap());
    // 400 buyers of 1 to 3 units, spread over the instances: more demand
    // than stock, so the sale must end exactly sold out.
    let writes: Vec<_> = (0..400)
        .map(|i| {
            let ledger = ledgers[i % ledgers.len()].clone();
            let s = s.clone();
            tokio::spawn(async move {
                let qty = 1 + (i % 3) as u32;
                (qty, ledger.confirm(&request(&s, &user(), qty)).await)
            })
        })
        .collect();
    let (mut sold, mut sold_out, mut unavailable) = (0u64, 0, 0);
    for w in writes {
        match w.await.unwrap() {
            (qty, Ok(ConfirmOutcome::Confirmed(_))) => sold += u64::from(qty),
            (_, Ok(ConfirmOutcome::SoldOut)) => sold_out += 1,
            (_, Err(LedgerError::Definite(_))) => unavailable += 1,
            (_, other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(sold <= 520, "oversold: {sold}");
    let orders = ledgers[1].sale_orders(&s.sale_id).await.unwrap();
    let in_ledger: u64 = orders.iter().map(|o| u64::from(o.quantity)).sum();
    assert_eq!(
        in_ledger, sold,
        "every confirmed order is in the ledger, nothing else"
    );
    assert_eq!(ledgers[2].confirmed_units(&s.sale_id).await.unwrap(), sold);
    // A 503 (retried by a real buyer) may leave units unsold; with none,
    // every unit is sold: sold out is never answered while stock is left.
    if unavailable == 0 {
        assert_eq!(sold, 520, "{sold_out} sold out answers with stock left");
    }
    // No counter passed its capacity, and every bucket took charges.
    for k in 0..8 {
        let item = client
            .get_item()
            .table_name(&table)
            .key("pk", AttributeValue::S(format!("SALE#{}#P{k}", s.sale_id)))
            .key("sk", AttributeValue::S("STOCK".into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .expect("a counter per bucket");
        let num = |n: &str| -> u64 { item[n].as_n().unwrap().parse().unwrap() };
        assert!(num("confirmed") <= num("capacity"), "bucket {k}: {item:?}");
    }
    let stats = proxy.stats();
    eprintln!(
        "sold {sold}, sold out {sold_out}, 503 {unavailable}; conflicts {}, transactions {}, batch reads {:?}, hottest {:?}",
        stats.conflicts, stats.transactions, stats.requests_by_op.get("BatchGetItem"), stats.hottest_write
    );
    assert!(
        stats.max_partition_wcu_per_s <= 1_000.0,
        "a partition over its budget: {:?}",
        stats.hottest_write
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_sale_of_the_old_layout_is_refused_not_misread() {
    let (ledgers, proxy, client, table) = instances(1, 4).await;
    let s = sale(10, 1);
    // What the one-partition ledger wrote: no `layout`, a counter on SALE.
    let item = [
        ("pk", AttributeValue::S(format!("SALE#{}", s.sale_id))),
        ("sk", AttributeValue::S("SALE".into())),
        ("name", AttributeValue::S("old".into())),
        ("stock_total", AttributeValue::N("10".into())),
        ("per_user_limit", AttributeValue::N("1".into())),
        (
            "starts_at",
            AttributeValue::S(inventory::sale::rfc3339(s.starts_at)),
        ),
        (
            "created_at",
            AttributeValue::S(inventory::sale::rfc3339(s.created_at)),
        ),
        ("confirmed", AttributeValue::N("0".into())),
    ];
    client
        .put_item()
        .table_name(&table)
        .set_item(Some(
            item.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ))
        .send()
        .await
        .unwrap();
    let ledger = &ledgers[0];
    assert!(
        ledger.sale(&s.sale_id).await.unwrap().is_some(),
        "the definition reads"
    );
    let err = ledger
        .confirm(&request(&s, &user(), 1))
        .await
        .expect_err("no order is written to a sale of the old layout");
    assert!(
        matches!(&err, LedgerError::Definite(m) if m.contains("layout 1")),
        "{err:?}"
    );
    assert!(ledger.sale_orders(&s.sale_id).await.is_err());
    proxy.shutdown().await;
}
