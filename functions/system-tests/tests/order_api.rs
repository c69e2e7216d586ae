//! Every order row of the contract, over HTTP, on the real backends.

use serde_json::{json, Value};
use system_tests::{Reply, TestStack};

fn order_fields_ok(order: &Value, sale_id: &str, user_id: &str, quantity: u64) {
    assert_eq!(order["sale_id"], sale_id, "{order}");
    assert_eq!(order["user_id"], user_id, "{order}");
    assert_eq!(order["quantity"], quantity, "{order}");
    assert_eq!(order["status"], "confirmed", "{order}");
    assert!(order["order_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(chrono::DateTime::parse_from_rfc3339(order["created_at"].as_str().unwrap()).is_ok());
    assert_eq!(
        order.as_object().unwrap().len(),
        6,
        "exactly the contract's fields: {order}"
    );
}

#[tokio::test]
async fn checkout_then_read_and_list_your_own_orders() {
    let stack = TestStack::spawn().await;
    let sale = stack.create_sale(10, 2).await;
    let (alice, alice_token) = stack.new_user();
    let r = stack
        .checkout(&alice_token, &json!({"sale_id": sale}), None)
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    order_fields_ok(&r.body, &sale, &alice, 1);
    let order_id = r.body["order_id"].as_str().unwrap().to_owned();

    let got = stack
        .get(
            &stack.order,
            &format!("/orders/{order_id}"),
            Some(&alice_token),
        )
        .await;
    assert_eq!((got.status, &got.body), (200, &r.body));

    // Someone else's order does not exist for you.
    let (_, bob_token) = stack.new_user();
    stack
        .get(
            &stack.order,
            &format!("/orders/{order_id}"),
            Some(&bob_token),
        )
        .await
        .assert_error(404, "order_not_found");
    stack
        .get(&stack.order, "/orders/not-an-order", Some(&alice_token))
        .await
        .assert_error(404, "order_not_found");

    let bob_order = stack
        .checkout(&bob_token, &json!({"sale_id": sale, "quantity": 2}), None)
        .await;
    assert_eq!(bob_order.status, 201);
    let mine = stack
        .get(
            &stack.order,
            &format!("/orders?sale_id={sale}"),
            Some(&alice_token),
        )
        .await;
    assert_eq!(mine.status, 200);
    assert_eq!(
        mine.body["orders"],
        json!([r.body.clone()]),
        "only the caller's own"
    );
    let all_mine = stack.get(&stack.order, "/orders", Some(&alice_token)).await;
    assert_eq!(all_mine.status, 200);
    assert!(all_mine.body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["user_id"] == alice.as_str()));

    // The sale view follows.
    assert_eq!(stack.sale_view(&sale).await["stock_remaining"], 7);
}

#[tokio::test]
async fn every_order_call_needs_a_valid_token() {
    let stack = TestStack::spawn().await;
    let sale = stack.create_sale(10, 1).await;
    let now = chrono::Utc::now().timestamp();
    let (user, _) = stack.new_user();
    let claims = |f: &dyn Fn(&mut common::token::Claims)| {
        let mut c = common::token::Claims {
            sub: user.clone(),
            iss: "flashsale-auth".into(),
            aud: "flashsale".into(),
            iat: now,
            exp: now + 600,
            nbf: None,
            sale: None,
            jti: None,
        };
        f(&mut c);
        stack.signer.sign_claims(&c)
    };
    let other_key = common::token::TokenSigner::generate("flashsale-auth", "flashsale", 600);
    let bad_tokens = vec![
        "".to_owned(),
        "garbage".to_owned(),
        claims(&|c| c.exp = now - 3600),
        claims(&|c| c.nbf = Some(now + 3600)),
        claims(&|c| c.aud = "elsewhere".into()),
        claims(&|c| c.iss = "mallory".into()),
        other_key.issue(&user, now),
        format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            claims(&|_| {}).split('.').nth(1).unwrap()
        ),
        "x".repeat(10_000),
    ];
    for token in &bad_tokens {
        stack
            .checkout(token, &json!({"sale_id": sale}), None)
            .await
            .assert_error(401, "unauthorized");
        stack
            .get(&stack.order, "/orders", Some(token))
            .await
            .assert_error(401, "unauthorized");
    }
    let r = stack
        .client
        .post(format!("{}/orders", stack.order))
        .json(&json!({"sale_id": sale}))
        .send()
        .await;
    Reply::from(r).await.assert_error(401, "unauthorized");
    stack
        .get(&stack.order, "/orders/x.y", None)
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(
        stack.sale_view(&sale).await["stock_remaining"],
        10,
        "nothing was sold"
    );
}

#[tokio::test]
async fn bad_checkouts_are_400_404_and_change_nothing() {
    let stack = TestStack::spawn().await;
    let sale = stack.create_sale(10, 2).await;
    let (_, token) = stack.new_user();
    for body in [
        json!({"sale_id": sale, "quantity": 0}),
        json!({"sale_id": sale, "quantity": -1}),
        json!({"sale_id": sale, "quantity": 3}),
        json!({"sale_id": sale, "quantity": 99_999_999_999_i64}),
        json!({"sale_id": sale, "quantity": "1"}),
        json!({"sale_id": sale, "quantity": 1.5}),
        json!({"sale_id": sale, "extra": 1}),
        json!({"quantity": 1}),
    ] {
        stack
            .checkout(&token, &body, None)
            .await
            .assert_error(400, "invalid_request");
    }
    stack
        .checkout(&token, &json!({"sale_id": sale}), Some(&"k".repeat(65)))
        .await
        .assert_error(400, "invalid_request");
    stack
        .checkout(&token, &json!({"sale_id": "no-such-sale"}), None)
        .await
        .assert_error(404, "sale_not_found");
    stack
        .checkout(&token, &json!({"sale_id": "bad id!"}), None)
        .await
        .assert_error(404, "sale_not_found");
    let b = stack.breakdown(&sale).await;
    assert_eq!(
        (b["stock_remaining"].as_i64(), b["held"].as_i64()),
        (Some(10), Some(0))
    );
}

#[tokio::test]
async fn sold_out_limit_reached_and_not_live_are_409s() {
    let stack = TestStack::spawn().await;
    let sale = stack.create_sale(2, 1).await;
    let (_, a) = stack.new_user();
    let (_, b) = stack.new_user();
    let (_, c) = stack.new_user();
    assert_eq!(
        stack
            .checkout(&a, &json!({"sale_id": sale}), None)
            .await
            .status,
        201
    );
    stack
        .checkout(&a, &json!({"sale_id": sale}), None)
        .await
        .assert_error(409, "limit_reached");
    assert_eq!(
        stack
            .checkout(&b, &json!({"sale_id": sale}), None)
            .await
            .status,
        201
    );
    stack
        .checkout(&c, &json!({"sale_id": sale}), None)
        .await
        .assert_error(409, "sold_out");
    let view = stack.sale_view(&sale).await;
    assert_eq!(
        (view["stock_remaining"].as_i64(), view["status"].as_str()),
        (Some(0), Some("sold_out"))
    );

    let start = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let upcoming = format!("s-{}", ulid::Ulid::new());
    stack
        .post_admin(
            "/stock/sales",
            &json!({"sale_id": upcoming, "name": "n", "stock": 5, "starts_at": start}),
        )
        .await;
    stack
        .checkout(&c, &json!({"sale_id": upcoming}), None)
        .await
        .assert_error(409, "sale_not_live");
    stack
        .checkout(&c, &json!({"sale_id": upcoming}), Some("key-1"))
        .await
        .assert_error(409, "sale_not_live");
}

#[tokio::test]
async fn an_idempotency_key_replays_the_very_same_order() {
    let stack = TestStack::spawn().await;
    let sale = stack.create_sale(5, 2).await;
    let (_, token) = stack.new_user();
    let first = stack
        .checkout(&token, &json!({"sale_id": sale}), Some("order-1"))
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = stack
        .checkout(&token, &json!({"sale_id": sale}), Some("order-1"))
        .await;
    assert_eq!((again.status, &again.body), (200, &first.body));
    assert_eq!(
        stack.sale_view(&sale).await["stock_remaining"],
        4,
        "one unit sold, not two"
    );
    // The same key for a different request is refused, not silently replayed.
    stack
        .checkout(
            &token,
            &json!({"sale_id": sale, "quantity": 2}),
            Some("order-1"),
        )
        .await
        .assert_error(409, "idempotency_key_reused");
    // A key is scoped to its sale: on another sale it is another request.
    let other_sale = stack.create_sale(5, 2).await;
    let elsewhere = stack
        .checkout(&token, &json!({"sale_id": other_sale}), Some("order-1"))
        .await;
    assert_eq!(elsewhere.status, 201, "{}", elsewhere.body);
    assert_eq!(elsewhere.body["sale_id"], other_sale.as_str());
    assert_ne!(elsewhere.body["order_id"], first.body["order_id"]);
    assert_eq!(stack.sale_view(&other_sale).await["stock_remaining"], 4);
    assert_eq!(
        stack.sale_view(&sale).await["stock_remaining"],
        4,
        "the first sale is untouched"
    );
    // Another user may use the same key.
    let (_, other) = stack.new_user();
    assert_eq!(
        stack
            .checkout(&other, &json!({"sale_id": sale}), Some("order-1"))
            .await
            .status,
        201
    );
    // A replay still works after the sale sells out.
    let (_, c) = stack.new_user();
    let (_, d) = stack.new_user();
    stack
        .checkout(&c, &json!({"sale_id": sale, "quantity": 2}), None)
        .await;
    stack.checkout(&d, &json!({"sale_id": sale}), None).await;
    stack
        .checkout(&d, &json!({"sale_id": sale}), None)
        .await
        .assert_error(409, "sold_out");
    let late = stack
        .checkout(&token, &json!({"sale_id": sale}), Some("order-1"))
        .await;
    assert_eq!((late.status, &late.body), (200, &first.body));
}
