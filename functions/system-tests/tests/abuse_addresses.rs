//! Abuse hardening, client addresses: per-address limits cannot be
//! sidestepped (a forged `X-Forwarded-For` from a private-range client, IPv6
//! /64s, unreadable chains).

mod abuse;

use abuse::random_u64;
use axum::extract::ConnectInfo;
use common::client_ip::{ClientIpPolicy, ClientIpSource};
use common::http::HttpOptions;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use system_tests::{Options, TestStack};
use tower::ServiceExt;

// ------------------------------------------------------- 2. addresses

/// The order app alone, called in process with a chosen TCP peer (the
/// servers here only listen on loopback, so a private-range or IPv6 peer
/// can only be had this way).
fn order_app(stack: &TestStack, policy: ClientIpPolicy) -> axum::Router {
    order::app(
        order::OrderState {
            inventory: stack.inventory.clone(),
            verifier: Arc::new(stack.signer.verifier()),
            client_ip: Arc::new(policy),
            admissions: Default::default(),
        },
        &HttpOptions { max_in_flight: 64 },
    )
}

async fn checkout_from(
    app: &axum::Router,
    stack: &TestStack,
    sale: &str,
    peer: &str,
    forwarded_for: Option<&str>,
) -> (u16, Value) {
    let (_, token) = stack.new_user();
    let mut req = axum::http::Request::post("/orders")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"));
    if let Some(xff) = forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    let mut req = req
        .body(axum::body::Body::from(json!({"sale_id": sale}).to_string()))
        .expect("request");
    let peer: SocketAddr = peer.parse().expect("peer address");
    req.extensions_mut().insert(ConnectInfo(peer));
    let response = app.clone().oneshot(req).await.expect("infallible");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn statuses(replies: &[(u16, Value)]) -> Vec<u16> {
    replies.iter().map(|r| r.0).collect()
}

/// A stack whose only limit is 3 checkouts per address per minute.
async fn per_ip_stack() -> TestStack {
    TestStack::spawn_with(Options {
        per_user_rate: None,
        per_ip_rate: Some("3/1m".parse().expect("policy")),
        ..Options::default()
    })
    .await
}

fn random_private_v4() -> String {
    let b = random_u64();
    format!(
        "10.{}.{}.{}",
        (b >> 16) as u8,
        (b >> 8) as u8,
        (b as u8).max(1)
    )
}

#[tokio::test]
async fn a_private_range_client_forging_x_forwarded_for_is_counted_under_its_own_address() {
    let stack = per_ip_stack().await;
    let sale = stack.create_sale(1000, 1).await;
    let modes = [
        ClientIpPolicy::default(),
        ClientIpPolicy {
            source: ClientIpSource::ForwardedFor,
            ..ClientIpPolicy::default()
        },
    ];
    for policy in modes {
        let source = policy.source;
        let app = order_app(&stack, policy);
        let client = random_private_v4();
        let mut replies = Vec::new();
        for i in 0..6 {
            // A fresh "address" in front every time, and one of ours too.
            let forged = format!("198.51.100.{i}, 10.0.0.{i}, 127.0.0.1");
            let peer = format!("{client}:{}", 40_000 + i);
            replies.push(checkout_from(&app, &stack, &sale, &peer, Some(&forged)).await);
        }
        assert_eq!(
            statuses(&replies),
            [201, 201, 201, 429, 429, 429],
            "{source:?}: {:?}",
            replies.last()
        );
        assert_eq!(replies[3].1["error"]["code"], "rate_limited");
        // Its neighbour has a budget of its own.
        let neighbour = format!("{}:1", random_private_v4());
        let r = checkout_from(&app, &stack, &sale, &neighbour, Some("198.51.100.1")).await;
        assert_eq!(r.0, 201, "{source:?}: {}", r.1);
    }
}

#[tokio::test]
async fn ipv6_clients_are_counted_per_64_not_per_address() {
    let stack = per_ip_stack().await;
    let sale = stack.create_sale(1000, 1).await;
    let b = random_u64();
    let net = format!("2001:db8:{:x}:{:x}", (b >> 16) as u16, b as u16);
    // Directly connected, a fresh interface id every time.
    let app = order_app(&stack, ClientIpPolicy::default());
    let mut replies = Vec::new();
    for i in 1..=5u64 {
        let peer = format!("[{net}:{:x}:{:x}::{i:x}]:443", random_u64() as u16, i);
        replies.push(checkout_from(&app, &stack, &sale, &peer, None).await);
    }
    assert_eq!(statuses(&replies), [201, 201, 201, 429, 429]);
    // Through our proxy (loopback) the same network is the same budget.
    let proxied = order_app(
        &stack,
        ClientIpPolicy {
            source: ClientIpSource::ForwardedFor,
            ..ClientIpPolicy::default()
        },
    );
    let xff = format!("{net}:dead:beef:1:2");
    let r = checkout_from(&proxied, &stack, &sale, "127.0.0.1:5000", Some(&xff)).await;
    assert_eq!(r.0, 429, "{}", r.1);
    // The next /64 over is somebody else.
    let next = format!(
        "[2001:db8:{:x}:{:x}::1]:443",
        (b >> 16) as u16,
        (b as u16) ^ 1
    );
    let r = checkout_from(&app, &stack, &sale, &next, None).await;
    assert_eq!(r.0, 201, "{}", r.1);
}

#[tokio::test]
async fn an_unreadable_chain_is_counted_under_the_peer_and_never_exempt() {
    let stack = per_ip_stack().await;
    let sale = stack.create_sale(1000, 1).await;
    let app = order_app(
        &stack,
        ClientIpPolicy {
            source: ClientIpSource::ForwardedFor,
            ..ClientIpPolicy::default()
        },
    );
    // The peer is loopback (our proxy; exempt as a client): a readable
    // chain that ends in loopback is exempt...
    let b = random_u64();
    let peer = format!(
        "127.{}.{}.{}:8012",
        (b >> 16) as u8,
        (b >> 8) as u8,
        (b as u8).max(1)
    );
    for _ in 0..5 {
        let r = checkout_from(&app, &stack, &sale, &peer, Some("127.0.0.1")).await;
        assert_eq!(r.0, 201, "{}", r.1);
    }
    // ...but a broken one is counted under that peer: 3, then 429.
    let mut replies = Vec::new();
    for broken in [
        "198.51.100.7, not-an-address",
        "198.51.100.8,",
        "198.51.100.9:443",
        "[::1], 198.51.100.10, garbage",
    ] {
        replies.push(checkout_from(&app, &stack, &sale, &peer, Some(broken)).await);
    }
    assert_eq!(statuses(&replies), [201, 201, 201, 429]);
}
