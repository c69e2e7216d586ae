//! Every stock row of the contract, over HTTP, on the real backends.

use serde_json::{json, Value};
use system_tests::{Reply, TestStack, ADMIN_TOKEN};

async fn create(stack: &TestStack, token: Option<&str>, body: &Value) -> Reply {
    let mut req = stack
        .client
        .post(format!("{}/stock/sales", stack.stock))
        .json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    Reply::from(req.send().await).await
}

fn new_id() -> String {
    format!("s-{}", ulid::Ulid::new())
}

#[tokio::test]
async fn an_admin_creates_a_sale_and_anyone_can_view_it() {
    let stack = TestStack::spawn().await;
    let id = new_id();
    let r = create(
        &stack,
        Some(ADMIN_TOKEN),
        &json!({"sale_id": id, "name": "Phones", "stock": 1000}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    for view in [r.body.clone(), stack.sale_view(&id).await] {
        assert_eq!(view["sale_id"], id.as_str());
        assert_eq!(view["name"], "Phones");
        assert_eq!(view["stock_total"], 1000);
        assert_eq!(view["stock_remaining"], 1000);
        assert_eq!(view["per_user_limit"], 1, "default limit");
        assert_eq!(view["status"], "live");
        assert!(chrono::DateTime::parse_from_rfc3339(view["starts_at"].as_str().unwrap()).is_ok());
        assert!(view["starts_at"].as_str().unwrap().ends_with('Z'), "UTC");
        assert_eq!(view["ends_at"], Value::Null);
        let keys: Vec<&String> = view.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 8, "exactly the contract's fields: {keys:?}");
    }
}

#[tokio::test]
async fn creating_needs_the_admin_token() {
    let stack = TestStack::spawn().await;
    let body = json!({"sale_id": new_id(), "name": "n", "stock": 5});
    create(&stack, None, &body)
        .await
        .assert_error(401, "unauthorized");
    create(&stack, Some("wrong-token"), &body)
        .await
        .assert_error(401, "unauthorized");
    // An ordinary user's access token is not an admin token.
    let (_, user_token) = stack.new_user();
    create(&stack, Some(&user_token), &body)
        .await
        .assert_error(401, "unauthorized");
    // Admin extensions are guarded the same way.
    let id = stack.create_sale(5, 1).await;
    stack
        .get(
            &stack.stock,
            &format!("/stock/sales/{id}/breakdown"),
            Some(&user_token),
        )
        .await
        .assert_error(401, "unauthorized");
    let r = stack
        .client
        .post(format!("{}/stock/sales/{id}/reconcile", stack.stock))
        .send()
        .await;
    Reply::from(r).await.assert_error(401, "unauthorized");
}

#[tokio::test]
async fn invalid_sales_are_400_and_nothing_is_created() {
    let stack = TestStack::spawn().await;
    let id = new_id();
    let cases = [
        json!({"sale_id": "has space", "name": "n", "stock": 5}),
        json!({"sale_id": "x".repeat(65), "name": "n", "stock": 5}),
        json!({"sale_id": id, "name": "n", "stock": 0}),
        json!({"sale_id": id, "name": "n", "stock": 10_000_001}),
        json!({"sale_id": id, "name": "n", "stock": -3}),
        json!({"sale_id": id, "name": "n", "stock": 5, "per_user_limit": 0}),
        json!({"sale_id": id, "name": "n", "stock": 5, "per_user_limit": -1}),
        json!({"sale_id": id, "name": "n", "stock": "5"}),
        json!({"sale_id": id, "name": "n", "stock": 5.5}),
        json!({"sale_id": id, "name": "n", "stock": 5, "color": "red"}),
        json!({"sale_id": id, "stock": 5}),
        json!({"sale_id": id, "name": "n", "stock": 5, "starts_at": "tomorrow"}),
        json!({"sale_id": id, "name": "n", "stock": 5, "starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}),
    ];
    for body in cases {
        create(&stack, Some(ADMIN_TOKEN), &body)
            .await
            .assert_error(400, "invalid_request");
    }
    stack
        .get(&stack.stock, &format!("/stock/sales/{id}"), None)
        .await
        .assert_error(404, "sale_not_found");
    // The extremes of the range are accepted.
    for stock in [1, 10_000_000] {
        let r = create(
            &stack,
            Some(ADMIN_TOKEN),
            &json!({"sale_id": new_id(), "name": "n", "stock": stock}),
        )
        .await;
        assert_eq!(r.status, 201, "{stock}: {}", r.body);
    }
}

#[tokio::test]
async fn a_sale_id_can_be_used_once() {
    let stack = TestStack::spawn().await;
    let id = new_id();
    let body = json!({"sale_id": id, "name": "n", "stock": 5});
    assert_eq!(create(&stack, Some(ADMIN_TOKEN), &body).await.status, 201);
    create(&stack, Some(ADMIN_TOKEN), &body)
        .await
        .assert_error(409, "sale_exists");
}

#[tokio::test]
async fn unknown_sales_are_404() {
    let stack = TestStack::spawn().await;
    for path in [
        "/stock/sales/nope-nothing-here",
        "/stock/sales/bad%20id",
        &format!("/stock/sales/{}", "x".repeat(80)),
    ] {
        stack
            .get(&stack.stock, path, None)
            .await
            .assert_error(404, "sale_not_found");
    }
}

#[tokio::test]
async fn status_follows_the_window() {
    let stack = TestStack::spawn().await;
    let now = chrono::Utc::now();
    let upcoming = new_id();
    let start = (now + chrono::Duration::hours(1)).to_rfc3339();
    let r = create(
        &stack,
        Some(ADMIN_TOKEN),
        &json!({"sale_id": upcoming, "name": "n", "stock": 5, "starts_at": start}),
    )
    .await;
    assert_eq!(r.body["status"], "upcoming");
    let ended = new_id();
    let (s, e) = (
        (now - chrono::Duration::hours(2)).to_rfc3339(),
        (now - chrono::Duration::hours(1)).to_rfc3339(),
    );
    create(
        &stack,
        Some(ADMIN_TOKEN),
        &json!({"sale_id": ended, "name": "n", "stock": 5, "starts_at": s, "ends_at": e}),
    )
    .await;
    assert_eq!(stack.sale_view(&ended).await["status"], "ended");
    assert_eq!(stack.sale_view(&upcoming).await["status"], "upcoming");
}

#[tokio::test]
async fn the_admin_breakdown_shows_guarantee_five() {
    let stack = TestStack::spawn().await;
    let id = stack.create_sale(10, 3).await;
    let (_, token) = stack.new_user();
    assert_eq!(
        stack
            .checkout(&token, &json!({"sale_id": id, "quantity": 3}), None)
            .await
            .status,
        201
    );
    let b = stack.breakdown(&id).await;
    assert_eq!(
        (
            b["stock_remaining"].as_i64(),
            b["held"].as_i64(),
            b["confirmed"].as_i64()
        ),
        (Some(7), Some(0), Some(3)),
        "{b}"
    );
    assert_eq!(b["ledger_confirmed"], 3);
    assert_eq!(
        (b["balanced"].as_bool(), b["consistent"].as_bool()),
        (Some(true), Some(true))
    );
    let r = stack
        .post_admin(&format!("/stock/sales/{id}/reconcile"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["balanced"], true);
    let orders = stack
        .get(
            &stack.stock,
            &format!("/stock/sales/{id}/orders"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(orders.body["orders"].as_array().map(Vec::len), Some(1));
}

/// Extension: `stock_buckets` splits a sale's stock over gate buckets (one
/// per Redis Cluster shard); the breakdown then shows each bucket.
#[tokio::test]
async fn a_sale_can_split_its_stock_into_buckets_within_bounds() {
    let stack = TestStack::spawn().await;
    let id = new_id();
    let r = create(
        &stack,
        Some(ADMIN_TOKEN),
        &json!({"sale_id": id, "name": "Phones", "stock": 10, "stock_buckets": 3}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let keys: Vec<&String> = r.body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 8, "the view is unchanged: {keys:?}");
    let b = stack.breakdown(&id).await;
    let buckets = b["buckets"].as_array().expect("three buckets shown");
    let shares: Vec<i64> = buckets
        .iter()
        .map(|k| k["stock_total"].as_i64().unwrap())
        .collect();
    assert_eq!(shares, [4, 3, 3]);
    assert!(buckets.iter().all(|k| k["balanced"] == true), "{b}");
    // One bucket (the default) shows none.
    let plain = stack.create_sale(10, 1).await;
    assert!(stack.breakdown(&plain).await.get("buckets").is_none());
    for bad in [
        json!(0),
        json!(-1),
        json!(11),
        json!(65),
        json!("3"),
        json!(1.5),
    ] {
        create(
            &stack,
            Some(ADMIN_TOKEN),
            &json!({"sale_id": new_id(), "name": "n", "stock": 10, "stock_buckets": bad}),
        )
        .await
        .assert_error(400, "invalid_request");
    }
}
