//! The waiting room (contract v1.1), every row and error over HTTP, on the
//! real backends: joining, polling, admission tokens the order function
//! verifies, fairness, the rate, sell-out and expiry.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use system_tests::{bounded, Reply, TestStack};

fn new_id() -> String {
    format!("s-{}", ulid::Ulid::new())
}

async fn room_sale(
    stack: &TestStack,
    stock: u64,
    limit: u32,
    room: Value,
    starts_at: Option<String>,
) -> String {
    let id = new_id();
    let mut body = json!({"sale_id": id, "name": "Queued", "stock": stock, "per_user_limit": limit, "waiting_room": room});
    if let Some(s) = starts_at {
        body["starts_at"] = s.into();
    }
    let r = stack.post_admin("/stock/sales", &body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    id
}

async fn join(stack: &TestStack, sale: &str, token: Option<&str>) -> Reply {
    let mut req = stack
        .client
        .post(format!("{}/stock/sales/{sale}/queue", stack.stock));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    Reply::from(req.send().await).await
}

async fn poll(stack: &TestStack, sale: &str, ticket: &str, token: &str) -> Reply {
    stack
        .get(
            &stack.stock,
            &format!("/stock/sales/{sale}/queue/{ticket}"),
            Some(token),
        )
        .await
}

async fn checkout_admitted(
    stack: &TestStack,
    sale: &str,
    token: &str,
    admission: Option<&str>,
) -> Reply {
    let mut req = stack
        .client
        .post(format!("{}/orders", stack.order))
        .bearer_auth(token)
        .json(&json!({"sale_id": sale}));
    if let Some(a) = admission {
        req = req.header("admission-token", a);
    }
    Reply::from(req.send().await).await
}

/// Polls (honouring nothing: tests poll briskly) until the ticket is no
/// longer waiting.
async fn until_decided(
    stack: &TestStack,
    sale: &str,
    ticket: &str,
    token: &str,
    within: Duration,
) -> Reply {
    let deadline = Instant::now() + within;
    loop {
        let r = poll(stack, sale, ticket, token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body["status"] != "waiting" || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_sale_is_created_with_a_waiting_room_and_its_view_shows_it() {
    let stack = TestStack::spawn().await;
    let id = room_sale(&stack, 10, 1, json!({"admit_per_second": 7}), None).await;
    let view = stack.sale_view(&id).await;
    assert_eq!(view["waiting_room"]["admit_per_second"], 7, "{view}");
    // A plain sale's view is unchanged: exactly the contract's fields.
    let plain = stack.create_sale(5, 1).await;
    assert!(stack.sale_view(&plain).await.get("waiting_room").is_none());
    for bad in [
        json!({"admit_per_second": 0}),
        json!({"admit_per_second": -3}),
        json!({"admit_per_second": "fast"}),
        json!({"admit_per_second": 5, "surprise": 1}),
        json!({"admit_per_second": 5, "admission_ttl_seconds": 0}),
        json!("yes"),
    ] {
        stack
            .post_admin(
                "/stock/sales",
                &json!({"sale_id": new_id(), "name": "n", "stock": 5, "waiting_room": bad}),
            )
            .await
            .assert_error(400, "invalid_request");
    }
}

#[tokio::test]
async fn joining_gives_one_ticket_per_user_and_every_error_is_the_contracts() {
    let stack = TestStack::spawn().await;
    let sale = room_sale(&stack, 10, 1, json!({"admit_per_second": 1}), None).await;
    let (_, alice) = stack.new_user();
    let first = join(&stack, &sale, Some(&alice)).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let ticket = first.body["ticket"].as_str().unwrap().to_owned();
    assert!(
        first.body.get("status").is_some() && first.body.get("position").is_some(),
        "{}",
        first.body
    );
    let again = join(&stack, &sale, Some(&alice)).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["ticket"], ticket.as_str(), "the same ticket");

    join(&stack, &sale, None)
        .await
        .assert_error(401, "unauthorized");
    join(&stack, &sale, Some("not-a-token"))
        .await
        .assert_error(401, "unauthorized");
    join(&stack, "no-such-sale", Some(&alice))
        .await
        .assert_error(404, "sale_not_found");
    let plain = stack.create_sale(5, 1).await;
    join(&stack, &plain, Some(&alice))
        .await
        .assert_error(409, "no_waiting_room");

    // Polling: only the ticket's own user sees it.
    let (_, bob) = stack.new_user();
    poll(&stack, &sale, &ticket, &bob)
        .await
        .assert_error(404, "ticket_not_found");
    poll(&stack, &sale, "tnosuchticket", &alice)
        .await
        .assert_error(404, "ticket_not_found");
    let r = stack
        .get(
            &stack.stock,
            &format!("/stock/sales/{sale}/queue/{ticket}"),
            None,
        )
        .await;
    r.assert_error(401, "unauthorized");
    // Bob waits behind Alice at one admission a second: Retry-After says when to ask again.
    let b = join(&stack, &sale, Some(&bob)).await;
    assert_eq!(b.status, 201);
    if b.body["status"] == "waiting" {
        assert!(b.body["position"].as_u64().unwrap() >= 1, "{}", b.body);
        let r = poll(&stack, &sale, b.body["ticket"].as_str().unwrap(), &bob).await;
        if r.body["status"] == "waiting" {
            let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=5).contains(&retry), "{retry}");
        }
    }
}

#[tokio::test]
async fn checkout_needs_this_users_admission_to_this_sale() {
    let stack = TestStack::spawn().await;
    let sale = room_sale(&stack, 10, 1, json!({"admit_per_second": 50}), None).await;
    let other = room_sale(&stack, 10, 1, json!({"admit_per_second": 50}), None).await;
    let (_, alice) = stack.new_user();
    let (_, bob) = stack.new_user();
    checkout_admitted(&stack, &sale, &alice, None)
        .await
        .assert_error(403, "admission_required");
    checkout_admitted(&stack, &sale, &alice, Some("garbage"))
        .await
        .assert_error(403, "admission_required");
    let t = join(&stack, &sale, Some(&alice)).await.body["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let admitted = until_decided(&stack, &sale, &t, &alice, Duration::from_secs(10)).await;
    assert_eq!(admitted.body["status"], "admitted", "{}", admitted.body);
    let token = admitted.body["admission_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(admitted.body["expires_at"].as_str().is_some());
    // Not Bob's, not another sale's.
    checkout_admitted(&stack, &sale, &bob, Some(&token))
        .await
        .assert_error(403, "admission_required");
    checkout_admitted(&stack, &other, &alice, Some(&token))
        .await
        .assert_error(403, "admission_required");
    // Alice's, here: one order, and never a second past her limit.
    let r = checkout_admitted(&stack, &sale, &alice, Some(&token)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    checkout_admitted(&stack, &sale, &alice, Some(&token))
        .await
        .assert_error(409, "limit_reached");
    // A sale without a room never asks for one.
    let plain = stack.create_sale(5, 1).await;
    assert_eq!(
        stack
            .checkout(&bob, &json!({"sale_id": plain}), None)
            .await
            .status,
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admission_keeps_to_the_rate_in_line_order() {
    let stack = TestStack::spawn().await;
    let rate = 10;
    let sale = room_sale(&stack, 1000, 1, json!({"admit_per_second": rate}), None).await;
    let buyers: Vec<String> = (0..60).map(|_| stack.new_user().1).collect();
    let started = Instant::now();
    // One at a time, so the line's order is the buyers' order.
    let tickets: Vec<String> = bounded(
        1,
        buyers.iter().map(|t| async {
            join(&stack, &sale, Some(t)).await.body["ticket"]
                .as_str()
                .unwrap()
                .to_owned()
        }),
    )
    .await;
    // Everyone polls until admitted; record when.
    let mut admitted_at = Vec::new();
    let mut pending: Vec<usize> = (0..buyers.len()).collect();
    while !pending.is_empty() && started.elapsed() < Duration::from_secs(20) {
        let mut still = Vec::new();
        for i in pending {
            let r = poll(&stack, &sale, &tickets[i], &buyers[i]).await;
            match r.body["status"].as_str() {
                Some("admitted") => admitted_at.push((started.elapsed(), i)),
                Some("waiting") => still.push(i),
                other => panic!("unexpected {other:?}: {}", r.body),
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        pending.is_empty(),
        "{} still waiting after 20 s",
        pending.len()
    );
    // Never more than rate x elapsed, plus the fifth of a second's worth
    // the bucket may hold (and one for the polling round in flight).
    for (n, (at, _)) in admitted_at.iter().enumerate() {
        let allowed =
            (at.as_secs_f64() * f64::from(rate)).ceil() as usize + (rate as usize / 5).max(1) + 1;
        assert!(n < allowed, "{} admitted by {at:?} at {rate}/s", n + 1);
    }
    // First come, first served: nobody is let in far ahead of their turn
    // (a polling round may see a second's admissions in any order).
    for (n, (_, i)) in admitted_at.iter().enumerate() {
        assert!(*i <= n + rate as usize, "joiner {i} admitted as number {n}");
    }
    let took = admitted_at.last().unwrap().0;
    assert!(
        took >= Duration::from_secs(4),
        "60 at 10/s cannot all be in within {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn early_arrivals_are_shuffled_at_the_start() {
    let stack = TestStack::spawn().await;
    let starts = chrono::Utc::now() + chrono::Duration::seconds(2);
    let sale = room_sale(
        &stack,
        100,
        1,
        json!({"admit_per_second": 1}),
        Some(starts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    )
    .await;
    let buyers: Vec<String> = (0..30).map(|_| stack.new_user().1).collect();
    let mut tickets = Vec::new();
    for t in &buyers {
        let r = join(&stack, &sale, Some(t)).await;
        assert_eq!(
            (r.status, r.body["status"].as_str()),
            (201, Some("waiting")),
            "{}",
            r.body
        );
        tickets.push(r.body["ticket"].as_str().unwrap().to_owned());
    }
    // Before the start nobody is admitted, and no one's place is told.
    let r = poll(&stack, &sale, &tickets[0], &buyers[0]).await;
    assert_eq!(
        r.body["position"], 30,
        "everyone is one of the 30 early: {}",
        r.body
    );
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let mut places = Vec::new();
    for (t, b) in tickets.iter().zip(&buyers) {
        let r = poll(&stack, &sale, t, b).await;
        places.push(match r.body["status"].as_str() {
            Some("admitted") => 0,
            _ => r.body["position"].as_u64().unwrap(),
        });
    }
    let distinct: HashSet<u64> = places.iter().copied().collect();
    assert_eq!(distinct.len(), 30, "a strict order: {places:?}");
    let in_join_order = places.windows(2).all(|w| w[0] < w[1]);
    assert!(
        !in_join_order,
        "the line is shuffled, not join order: {places:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_queue_closes_when_the_stock_is_gone() {
    let stack = TestStack::spawn().await;
    let sale = room_sale(&stack, 2, 1, json!({"admit_per_second": 100}), None).await;
    let buyers: Vec<String> = (0..8).map(|_| stack.new_user().1).collect();
    let mut tickets = Vec::new();
    for t in &buyers {
        tickets.push(
            join(&stack, &sale, Some(t)).await.body["ticket"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Two units: at most two open admissions; both buy.
    let mut bought = 0;
    for (t, b) in tickets.iter().zip(&buyers) {
        let r = poll(&stack, &sale, t, b).await;
        if r.body["status"] == "admitted" {
            let a = r.body["admission_token"].as_str().unwrap();
            assert_eq!(
                checkout_admitted(&stack, &sale, b, Some(a)).await.status,
                201
            );
            bought += 1;
        }
    }
    assert_eq!(bought, 2, "never more admissions than units");
    let sold = Instant::now();
    for (t, b) in tickets.iter().zip(&buyers).skip(2) {
        let r = poll(&stack, &sale, t, b).await;
        if r.body["status"] != "admitted" {
            assert_eq!(r.body["status"], "sold_out", "{}", r.body);
        }
    }
    assert!(sold.elapsed() < Duration::from_secs(5));
    let (_, late) = stack.new_user();
    join(&stack, &sale, Some(&late))
        .await
        .assert_error(409, "sold_out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unused_admission_expires_and_frees_the_place_for_the_next() {
    let stack = TestStack::spawn().await;
    let sale = room_sale(
        &stack,
        1,
        1,
        json!({"admit_per_second": 100, "admission_ttl_seconds": 2}),
        None,
    )
    .await;
    let (_, first) = stack.new_user();
    let (_, second) = stack.new_user();
    let a = join(&stack, &sale, Some(&first)).await.body["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = join(&stack, &sale, Some(&second)).await.body["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let ra = poll(&stack, &sale, &a, &first).await;
    assert_eq!(ra.body["status"], "admitted", "{}", ra.body);
    let stale = ra.body["admission_token"].as_str().unwrap().to_owned();
    let rb = poll(&stack, &sale, &b, &second).await;
    assert_eq!(
        rb.body["status"], "waiting",
        "one unit, one open admission: {}",
        rb.body
    );
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let rb = until_decided(&stack, &sale, &b, &second, Duration::from_secs(5)).await;
    assert_eq!(rb.body["status"], "admitted", "{}", rb.body);
    let ra = poll(&stack, &sale, &a, &first).await;
    assert_eq!(ra.body["status"], "expired", "{}", ra.body);
    checkout_admitted(&stack, &sale, &first, Some(&stale))
        .await
        .assert_error(403, "admission_required");
    let token = rb.body["admission_token"].as_str().unwrap();
    assert_eq!(
        checkout_admitted(&stack, &sale, &second, Some(token))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn an_ended_sale_takes_no_one_and_the_page_is_served() {
    let stack = TestStack::spawn().await;
    let past = (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339();
    let ended = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let id = new_id();
    let r = stack
        .post_admin(
            "/stock/sales",
            &json!({"sale_id": id, "name": "Over", "stock": 5, "starts_at": past, "ends_at": ended, "waiting_room": {"admit_per_second": 5}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let (_, t) = stack.new_user();
    join(&stack, &id, Some(&t))
        .await
        .assert_error(409, "sale_not_live");
    let page = stack
        .client
        .get(format!("{}/stock/sales/{id}/room", stack.stock))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(
        html.contains("/queue") && !html.contains("http://") && !html.contains("https://"),
        "self-contained"
    );
}
