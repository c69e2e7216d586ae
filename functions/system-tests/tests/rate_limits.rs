//! Per-user and per-IP checkout rate limits (issue 6, OWASP API6), over
//! HTTP on the real backends: `429 rate_limited` with `Retry-After`, nothing
//! held or stored for a limited attempt, and an address that a client cannot
//! spoof.

use serde_json::json;
use system_tests::{Options, Reply, TestStack};

use common::client_ip::{ClientIpPolicy, ClientIpSource, Networks};

fn policy(raw: &str) -> Option<inventory::admission::RatePolicy> {
    Some(raw.parse().expect("valid policy"))
}

/// A fresh documentation-range address in a /64 of its own (IPv6 clients
/// are counted per /64), so test runs never share a budget.
fn random_ip() -> String {
    let bits = ulid::Ulid::new().random() as u64;
    format!(
        "2001:db8:{:x}:{:x}::{:x}",
        (bits >> 48) as u16,
        (bits >> 32) as u16,
        bits as u16
    )
}

async fn checkout_from(stack: &TestStack, token: &str, sale: &str, forwarded_for: &str) -> Reply {
    let r = stack
        .client
        .post(format!("{}/orders", stack.order))
        .bearer_auth(token)
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({ "sale_id": sale }))
        .send()
        .await;
    Reply::from(r).await
}

fn retry_after(r: &Reply) -> u64 {
    r.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a numeric Retry-After: {:?}", r.headers))
}

#[tokio::test]
async fn one_user_hammering_checkout_gets_429_with_retry_after_and_nothing_is_held() {
    let stack = TestStack::spawn_with(Options {
        per_user_rate: policy("3/1m"),
        per_ip_rate: None,
        ..Options::default()
    })
    .await;
    let sale = stack.create_sale(100, 10).await;
    let (_, token) = stack.new_user();
    for _ in 0..3 {
        let r = stack
            .checkout(&token, &json!({ "sale_id": sale }), None)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    for _ in 0..5 {
        let r = stack
            .checkout(&token, &json!({ "sale_id": sale }), None)
            .await;
        r.assert_error(429, "rate_limited");
        // 1 minute / 3 = one attempt every 20 s.
        let wait = retry_after(&r);
        assert!((1..=20).contains(&wait), "Retry-After {wait}");
    }
    // Somebody else is not affected.
    let (_, other) = stack.new_user();
    let r = stack
        .checkout(&other, &json!({ "sale_id": sale }), None)
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // The limited attempts took nothing: 4 sold, 96 left, nothing held.
    let view = stack.sale_view(&sale).await;
    assert_eq!(view["stock_remaining"], 96, "{view}");
    let breakdown = stack.breakdown(&sale).await;
    assert_eq!(breakdown["held"], 0, "{breakdown}");
    assert_eq!(stack.ledger_orders(&sale).await.len(), 4);
}

#[tokio::test]
async fn many_accounts_from_one_address_are_limited_and_the_address_cannot_be_spoofed() {
    let stack = TestStack::spawn_with(Options {
        per_user_rate: None,
        per_ip_rate: policy("4/1m"),
        // As under Knative: the client's address is the right-most entry of
        // X-Forwarded-For that is not one of our proxies (loopback and the
        // pod CIDR, which a cluster sets in TRUSTED_PROXIES).
        client_ip: ClientIpPolicy {
            source: ClientIpSource::ForwardedFor,
            trusted_proxies: "127.0.0.0/8, ::1, 10.244.0.0/16"
                .parse()
                .expect("valid networks"),
            exempt: Networks::default(),
            ..ClientIpPolicy::default()
        },
        ..Options::default()
    })
    .await;
    let sale = stack.create_sale(100, 1).await;
    let (bot, other) = (random_ip(), random_ip());
    for _ in 0..4 {
        let (_, token) = stack.new_user();
        let r = checkout_from(&stack, &token, &sale, &bot).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let (_, fifth) = stack.new_user();
    let r = checkout_from(&stack, &fifth, &sale, &bot).await;
    r.assert_error(429, "rate_limited");
    assert!((1..=15).contains(&retry_after(&r)));
    // Writing another address in front does not help: our proxy appends the
    // real one, and that is the one that counts (our pod hops skipped).
    let spoofed = format!("{other}, {bot}, 10.244.0.7");
    let r = checkout_from(&stack, &fifth, &sale, &spoofed).await;
    r.assert_error(429, "rate_limited");
    // A different address has its own budget.
    let r = checkout_from(&stack, &fifth, &sale, &other).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(stack.ledger_orders(&sale).await.len(), 5);
}

#[tokio::test]
async fn loopback_is_exempt_from_the_per_ip_limit_by_default() {
    // The local stack, its router and the load tests all come from
    // 127.0.0.1: a tight per-IP policy must not throttle them.
    let stack = TestStack::spawn_with(Options {
        per_user_rate: None,
        per_ip_rate: policy("2/1h"),
        ..Options::default()
    })
    .await;
    let sale = stack.create_sale(20, 1).await;
    for _ in 0..10 {
        let (_, token) = stack.new_user();
        let r = stack
            .checkout(&token, &json!({ "sale_id": sale }), None)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
}

// The contract's "one user, 50 concurrent checkouts, limit 2" test in
// guarantees.rs runs under the production default limits, so it also proves
// they leave room for that burst (2 x 201, 48 x limit_reached, no 429).
