//! Stampedes and the audit after them, shared by the guarantee suites.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{bounded, Reply, TestStack};

/// Guarantee 5 as the breakdown shows it, in every bucket and summed.
pub fn assert_balanced(b: &Value) {
    let sum = b["stock_remaining"].as_i64().unwrap()
        + b["held"].as_i64().unwrap()
        + b["confirmed"].as_i64().unwrap();
    assert_eq!(sum, b["stock_total"].as_i64().unwrap(), "guarantee 5: {b}");
    assert_eq!(b["balanced"], true, "{b}");
    assert_eq!(b["consistent"], true, "{b}");
    if let Some(buckets) = b["buckets"].as_array() {
        let sum: i64 = buckets
            .iter()
            .map(|k| k["stock_total"].as_i64().unwrap())
            .sum();
        assert_eq!(
            sum,
            b["stock_total"].as_i64().unwrap(),
            "bucket shares: {b}"
        );
        for k in buckets {
            assert_eq!(k["balanced"], true, "bucket {k}");
        }
    }
}

/// Each buyer checks out once, and like any good client retries after a
/// `503` (honouring Retry-After, shortened here), up to `retries` times.
pub async fn stampede_with_retries(
    stack: &TestStack,
    sale: &str,
    buyers: usize,
    width: usize,
    retries: usize,
) -> Vec<Reply> {
    let tokens: Vec<String> = (0..buyers).map(|_| stack.new_user().1).collect();
    let body = json!({"sale_id": sale});
    let body = &body;
    bounded(
        width,
        tokens.into_iter().map(|t| async move {
            let mut reply = stack.checkout(&t, body, None).await;
            for _ in 0..retries {
                if reply.status != 503 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                reply = stack.checkout(&t, body, None).await;
            }
            reply
        }),
    )
    .await
}

pub async fn stampede(stack: &TestStack, sale: &str, buyers: usize, width: usize) -> Vec<Reply> {
    stampede_with_retries(stack, sale, buyers, width, 20).await
}

/// Buyers keep arriving (in small waves) until every unit is confirmed and
/// nothing is held: guarantee 4 says a sale with buyers left ends sold out
/// with exactly `stock_total` sold, once lapsed holds have come back.
pub async fn buyers_keep_coming(stack: &TestStack, sale: &str, within: Duration) -> Vec<Reply> {
    let deadline = Instant::now() + within;
    let mut replies = Vec::new();
    loop {
        let b = stack.breakdown(sale).await;
        assert_balanced(&b);
        if b["stock_remaining"] == 0 && b["held"] == 0 {
            return replies;
        }
        assert!(
            Instant::now() < deadline,
            "units still not sold or back after {within:?}: {b}"
        );
        if b["stock_remaining"].as_i64() > Some(0) {
            replies.extend(stampede(stack, sale, 50, 50).await);
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A stampede of `buyers` on a new sale of `units`, then buyers keep coming
/// until it is sold out: exactly the stock sold, every 201 in the ledger and
/// nothing else, everyone else told sold_out, the gate balanced.
pub async fn sells_exactly_the_stock(stack: TestStack, units: usize, buyers: usize) {
    let sale = stack.create_sale(units as u64, 1).await;
    let started = Instant::now();
    let mut replies = stampede(&stack, &sale, buyers, 256).await;
    let took = started.elapsed();
    let first_wave = replies.iter().filter(|r| r.status == 201).count();
    replies.extend(buyers_keep_coming(&stack, &sale, Duration::from_secs(90)).await);
    let shed = replies.iter().filter(|r| r.status == 503).count();
    assert!(
        shed * 100 <= replies.len(),
        "at most 1% of buyers end on a 503: {shed}"
    );
    let created = replies.iter().filter(|r| r.status == 201).count();
    let sold_out = replies
        .iter()
        .filter(|r| r.status == 409 && r.code() == "sold_out")
        .count();
    assert_eq!(created, units, "exactly the stock is sold");
    assert_eq!(
        sold_out + shed,
        replies.len() - units,
        "everyone else is told sold_out: {:?}",
        replies
            .iter()
            .filter(|r| r.status != 201 && r.code() != "sold_out")
            .map(|r| &r.body)
            .take(3)
            .collect::<Vec<_>>()
    );
    let orders = stack.ledger_orders(&sale).await;
    assert_eq!(
        orders.iter().map(|o| o.quantity).sum::<u32>() as usize,
        units,
        "the ledger agrees: 0 oversold"
    );
    let acknowledged: HashSet<String> = replies
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.body["order_id"].as_str().unwrap().to_owned())
        .collect();
    let stored: HashSet<String> = orders.iter().map(|o| o.order_id.to_string()).collect();
    assert_eq!(
        acknowledged, stored,
        "every 201 is in the ledger, and nothing else is"
    );
    let view = stack.sale_view(&sale).await;
    assert_eq!(
        (view["status"].as_str(), view["stock_remaining"].as_i64()),
        (Some("sold_out"), Some(0))
    );
    let b = stack.breakdown(&sale).await;
    assert_balanced(&b);
    assert_eq!(
        (
            b["held"].as_i64(),
            b["confirmed"].as_i64(),
            b["ledger_confirmed"].as_i64()
        ),
        (Some(0), Some(units as i64), Some(units as i64))
    );
    eprintln!("stampede: {buyers} buyers, {units} units: {first_wave} sold in the first wave in {took:?} (debug build, 256 in flight); {} buyers in all", replies.len());
}

/// One user fires fifty checkouts at once at a sale with a limit of two:
/// exactly two orders, in the gate and in the ledger.
pub async fn the_limit_holds_for_fifty_concurrent_checkouts(stack: TestStack) {
    let sale = stack.create_sale(100, 2).await;
    let (user, token) = stack.new_user();
    let body = json!({"sale_id": sale});
    let replies = bounded(50, (0..50).map(|_| stack.checkout(&token, &body, None))).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    let limited = replies
        .iter()
        .filter(|r| r.code() == "limit_reached")
        .count();
    assert_eq!((created, limited), (2, 48));
    let theirs: Vec<_> = stack
        .ledger_orders(&sale)
        .await
        .into_iter()
        .filter(|o| o.user_id == user)
        .collect();
    assert_eq!(theirs.iter().map(|o| o.quantity).sum::<u32>(), 2);
    assert_balanced(&stack.breakdown(&sale).await);
}
