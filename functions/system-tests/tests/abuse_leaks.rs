//! Abuse hardening, leaks: no error answer carries a backend message, a
//! trace or a key, with the backends up, refusing, or gone.

mod abuse;

use abuse::leak_scan::{Answers, LeakyLedger};
use abuse::{post_json, unique, PASSWORD};
use common::token::{Claims, TokenSigner};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use system_tests::{Options, PrivateRedis, Reply, TestStack, ADMIN_TOKEN};

// ------------------------------------------------------------ 3. leaks

async fn send(req: reqwest::RequestBuilder) -> Reply {
    Reply::from(req.send().await).await
}

/// Every error row of the contract (and of its extensions), once.
async fn contract_errors(stack: &TestStack, out: &mut Answers) {
    let c = &stack.client;
    let (auth, stockf, orderf) = (&stack.auth, &stack.stock, &stack.order);
    let name = unique("leak");
    let register = format!("{auth}/auth/register");
    let login = format!("{auth}/auth/login");
    let r = post_json(
        c,
        &register,
        &json!({"username": name, "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);

    // auth
    for (what, body) in [
        (
            "register: bad username",
            json!({"username": "!!", "password": PASSWORD}),
        ),
        (
            "register: short password",
            json!({"username": unique("u"), "password": "short"}),
        ),
        (
            "register: unknown field",
            json!({"username": unique("u"), "password": PASSWORD, "admin": true}),
        ),
        (
            "register: wrong type",
            json!({"username": 5, "password": PASSWORD}),
        ),
        ("register: missing field", json!({"username": unique("u")})),
        (
            "register: taken",
            json!({"username": name, "password": PASSWORD}),
        ),
        (
            "login: wrong password",
            json!({"username": name, "password": "not the password"}),
        ),
        (
            "login: unknown user",
            json!({"username": unique("nobody"), "password": PASSWORD}),
        ),
        (
            "login: invalid username",
            json!({"username": "!!", "password": PASSWORD}),
        ),
    ] {
        let url = if what.starts_with("register") {
            &register
        } else {
            &login
        };
        out.add(what, post_json(c, url, &body).await);
    }
    for _ in 0..5 {
        post_json(
            c,
            &login,
            &json!({"username": name, "password": "wrong again!"}),
        )
        .await;
    }
    out.add(
        "login: locked",
        post_json(c, &login, &json!({"username": name, "password": PASSWORD})).await,
    );
    out.add(
        "login: malformed JSON",
        send(
            c.post(&login)
                .header("content-type", "application/json")
                .body("{\"username\":"),
        )
        .await,
    );
    out.add(
        "login: not JSON",
        send(
            c.post(&login)
                .header("content-type", "text/plain")
                .body("hello"),
        )
        .await,
    );
    out.add(
        "login: 17 KiB",
        send(
            c.post(&login)
                .header("content-type", "application/json")
                .body(format!("{{\"username\":\"{}\"}}", "x".repeat(17 * 1024))),
        )
        .await,
    );
    out.add("GET /auth/login", send(c.get(&login)).await);
    out.add(
        "unknown auth route",
        send(c.get(format!("{auth}/auth/nope"))).await,
    );

    // stock
    let sales = format!("{stockf}/stock/sales");
    let sale = stack.create_sale(1, 1).await;
    let new_sale = json!({"sale_id": unique("s-"), "name": "n", "stock": 5});
    out.add(
        "create sale: no token",
        send(c.post(&sales).json(&new_sale)).await,
    );
    out.add(
        "create sale: user token",
        send(
            c.post(&sales)
                .bearer_auth(stack.token("u1"))
                .json(&new_sale),
        )
        .await,
    );
    out.add(
        "create sale: truncated admin token",
        send(
            c.post(&sales)
                .bearer_auth(&ADMIN_TOKEN[..10])
                .json(&new_sale),
        )
        .await,
    );
    for (what, body) in [
        (
            "create sale: stock 0",
            json!({"sale_id": unique("s-"), "name": "n", "stock": 0}),
        ),
        (
            "create sale: bad id",
            json!({"sale_id": "no spaces!", "name": "n", "stock": 1}),
        ),
        (
            "create sale: limit 0",
            json!({"sale_id": unique("s-"), "name": "n", "stock": 1, "per_user_limit": 0}),
        ),
        (
            "create sale: bad time",
            json!({"sale_id": unique("s-"), "name": "n", "stock": 1, "starts_at": "tomorrow"}),
        ),
        (
            "create sale: exists",
            json!({"sale_id": sale, "name": "n", "stock": 1}),
        ),
    ] {
        out.add(what, stack.post_admin("/stock/sales", &body).await);
    }
    for path in [
        "/stock/sales/does-not-exist".to_owned(),
        "/stock/sales/%2e%2e%2fetc".to_owned(),
        format!("/stock/sales/{}", "x".repeat(100)),
    ] {
        out.add(format!("GET {path}"), stack.get(stockf, &path, None).await);
    }
    out.add(
        "breakdown: no token",
        stack
            .get(stockf, &format!("/stock/sales/{sale}/breakdown"), None)
            .await,
    );
    out.add(
        "breakdown: unknown sale",
        stack
            .get(
                stockf,
                "/stock/sales/nope-nope/breakdown",
                Some(ADMIN_TOKEN),
            )
            .await,
    );
    out.add(
        "reconcile: no token",
        send(c.post(format!("{stockf}/stock/sales/{sale}/reconcile"))).await,
    );

    // order
    let (_, buyer) = stack.new_user();
    let first = stack
        .checkout(&buyer, &json!({"sale_id": sale}), None)
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let roomy = stack.create_sale(100, 2).await;
    let start = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let upcoming = unique("s-");
    let r = stack
        .post_admin(
            "/stock/sales",
            &json!({"sale_id": upcoming, "name": "n", "stock": 5, "starts_at": start}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let expired = stack.signer.sign_claims(&Claims {
        sub: "u1".into(),
        iss: stack.settings.token_issuer.clone(),
        aud: stack.settings.token_audience.clone(),
        iat: 1_000,
        exp: 2_000,
        nbf: None,
        sale: None,
        jti: None,
    });
    let foreign = TokenSigner::generate(
        &stack.settings.token_issuer,
        &stack.settings.token_audience,
        900,
    )
    .issue("u1", chrono::Utc::now().timestamp());
    let orders = format!("{orderf}/orders");
    out.add(
        "checkout: no token",
        send(c.post(&orders).json(&json!({"sale_id": roomy}))).await,
    );
    for (what, token) in [
        ("checkout: expired token", expired.as_str()),
        ("checkout: foreign token", foreign.as_str()),
        ("checkout: garbage token", "a.b.c"),
    ] {
        out.add(
            what,
            stack
                .checkout(token, &json!({"sale_id": roomy}), None)
                .await,
        );
    }
    let (_, other) = stack.new_user();
    for (what, body) in [
        (
            "checkout: quantity 0",
            json!({"sale_id": roomy, "quantity": 0}),
        ),
        (
            "checkout: quantity over the limit",
            json!({"sale_id": roomy, "quantity": 3}),
        ),
        (
            "checkout: quantity not a number",
            json!({"sale_id": roomy, "quantity": "two"}),
        ),
        (
            "checkout: unknown sale",
            json!({"sale_id": "no-such-sale-here"}),
        ),
        (
            "checkout: impossible sale id",
            json!({"sale_id": "../../etc/passwd"}),
        ),
        ("checkout: sold out", json!({"sale_id": sale})),
        ("checkout: not live", json!({"sale_id": upcoming})),
    ] {
        out.add(what, stack.checkout(&other, &body, None).await);
    }
    out.add(
        "checkout: limit reached",
        stack
            .checkout(&buyer, &json!({"sale_id": sale}), None)
            .await,
    );
    let key = unique("k");
    let r = stack
        .checkout(&other, &json!({"sale_id": roomy}), Some(&key))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    out.add(
        "checkout: key reused",
        stack
            .checkout(
                &other,
                &json!({"sale_id": roomy, "quantity": 2}),
                Some(&key),
            )
            .await,
    );
    out.add(
        "checkout: key too long",
        stack
            .checkout(&other, &json!({"sale_id": roomy}), Some(&"k".repeat(65)))
            .await,
    );
    out.add(
        "GET someone else's order",
        stack
            .get(
                orderf,
                &format!("/orders/{}", r.body["order_id"].as_str().unwrap_or("x")),
                Some(&buyer),
            )
            .await,
    );
    out.add(
        "GET /orders/garbage",
        stack.get(orderf, "/orders/garbage", Some(&buyer)).await,
    );
    out.add(
        "GET /orders without a token",
        stack.get(orderf, "/orders", None).await,
    );
    out.add("DELETE /orders", send(c.delete(&orders)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_error_answer_carries_backend_text_a_trace_or_a_key() {
    let failing = Arc::new(AtomicBool::new(false));
    let switch = failing.clone();
    let mut redis = PrivateRedis::start();
    let mut settings = system_tests::settings();
    settings.redis_url = redis.url();
    let stack = TestStack::spawn_with(Options {
        settings,
        per_user_rate: Some("50/1m".parse().expect("policy")),
        wrap_ledger: Box::new(move |inner| {
            Arc::new(LeakyLedger {
                inner,
                failing: switch,
            })
        }),
        ..Options::default()
    })
    .await;
    let mut answers = Answers::default();

    // Backends up: every error row of the contract.
    contract_errors(&stack, &mut answers).await;
    let (_, hammer) = stack.new_user();
    let sale = stack.create_sale(1000, 1).await;
    for _ in 0..60 {
        let r = stack
            .checkout(&hammer, &json!({"sale_id": sale}), None)
            .await;
        if r.status == 429 {
            answers.add("checkout: rate limited", r);
            break;
        }
    }
    let live = stack.create_sale(1000, 5).await;
    let (_, buyer) = stack.new_user();
    let bought = stack
        .checkout(&buyer, &json!({"sale_id": live}), None)
        .await;
    assert_eq!(bought.status, 201, "{}", bought.body);
    let order_id = bought.body["order_id"].as_str().unwrap_or("x").to_owned();

    // The ledger refuses everything, with a backend's words.
    failing.store(true, Ordering::Relaxed);
    let (_, fresh) = stack.new_user();
    answers.add(
        "ledger down: checkout",
        stack
            .checkout(&fresh, &json!({"sale_id": live}), None)
            .await,
    );
    answers.add(
        "ledger down: GET order",
        stack
            .get(&stack.order, &format!("/orders/{order_id}"), Some(&buyer))
            .await,
    );
    answers.add(
        "ledger down: GET orders",
        stack.get(&stack.order, "/orders", Some(&buyer)).await,
    );
    answers.add(
        "ledger down: unknown sale",
        stack
            .get(&stack.stock, "/stock/sales/never-seen-before", None)
            .await,
    );
    answers.add(
        "ledger down: create sale",
        stack
            .post_admin(
                "/stock/sales",
                &json!({"sale_id": unique("s-"), "name": "n", "stock": 1}),
            )
            .await,
    );
    answers.add(
        "ledger down: sale orders",
        stack
            .get(
                &stack.stock,
                &format!("/stock/sales/{live}/orders"),
                Some(ADMIN_TOKEN),
            )
            .await,
    );
    for base in [&stack.stock, &stack.order] {
        answers.add(
            format!("ledger down: {base}/healthz"),
            stack.get(base, "/healthz", None).await,
        );
    }
    failing.store(false, Ordering::Relaxed);

    // Redis is gone.
    redis.kill();
    answers.add(
        "redis down: checkout",
        stack
            .checkout(&fresh, &json!({"sale_id": live}), None)
            .await,
    );
    answers.add(
        "redis down: sale view",
        stack
            .get(&stack.stock, &format!("/stock/sales/{live}"), None)
            .await,
    );
    answers.add(
        "redis down: breakdown",
        stack
            .get(
                &stack.stock,
                &format!("/stock/sales/{live}/breakdown"),
                Some(ADMIN_TOKEN),
            )
            .await,
    );
    answers.add(
        "redis down: login",
        post_json(
            &stack.client,
            &format!("{}/auth/login", stack.auth),
            &json!({"username": unique("x"), "password": PASSWORD}),
        )
        .await,
    );
    for base in [&stack.auth, &stack.stock, &stack.order] {
        answers.add(
            format!("redis down: {base}/healthz"),
            stack.get(base, "/healthz", None).await,
        );
    }

    // Each backend-down answer is a 503 with Retry-After, not a 500.
    for (what, r) in answers.0.iter().filter(|(w, _)| w.contains(" down: ")) {
        assert_eq!(r.status, 503, "{what}: {}", r.body);
        assert!(r.headers.contains_key("retry-after"), "{what}");
    }
    let seed = stack.signer.seed_b64();
    let secrets = [
        ADMIN_TOKEN,
        seed.as_str(),
        stack.settings.ledger_table.as_str(),
        stack.settings.users_table.as_str(),
    ];
    let checked = answers.check(&secrets);
    assert!(checked >= 60, "only {checked} error answers were scanned");
    println!("{checked} error answers scanned");
}
