//! Every auth row of the contract, over HTTP, on the real backends.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use system_tests::{bounded, Options, Reply, TestStack};

async fn post(stack: &TestStack, path: &str, body: &Value) -> Reply {
    Reply::from(
        stack
            .client
            .post(format!("{}{path}", stack.auth))
            .json(body)
            .send()
            .await,
    )
    .await
}

fn unique_name() -> String {
    format!("u{}", ulid::Ulid::new().to_string().to_lowercase())
}

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn register_login_and_verify_with_the_published_key() {
    let stack = TestStack::spawn().await;
    let name = unique_name();
    let r = post(
        &stack,
        "/auth/register",
        &json!({"username": name.to_uppercase(), "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["username"], name, "stored lower-cased");
    let user_id = r.body["user_id"].as_str().expect("user_id").to_owned();
    assert!(r.headers.contains_key("x-request-id"));

    let r = post(
        &stack,
        "/auth/login",
        &json!({"username": name, "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], 900);
    let token = r.body["access_token"].as_str().expect("token").to_owned();

    // Anyone can verify the token with the JWKS alone.
    let jwks = stack.get(&stack.auth, "/auth/jwks.json", None).await;
    assert_eq!(jwks.status, 200);
    let key = &jwks.body["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["crv"].as_str(),
            key["alg"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );
    let x = key["x"].as_str().expect("x").to_owned();
    let verifier =
        common::token::TokenVerifier::from_public_keys(&[x], "flashsale-auth", "flashsale")
            .unwrap();
    let claims = verifier
        .verify(&token, chrono::Utc::now().timestamp())
        .expect("token verifies");
    assert_eq!(claims.sub, user_id);
    assert_eq!(claims.exp - claims.iat, 900);

    // Logging in with the username in another case is the same account.
    let r = post(
        &stack,
        "/auth/login",
        &json!({"username": name.to_uppercase(), "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn bad_registrations_are_400_and_store_nothing() {
    let stack = TestStack::spawn().await;
    let ok = unique_name();
    let cases = [
        json!({"username": "ab", "password": PASSWORD}),
        json!({"username": "has space", "password": PASSWORD}),
        json!({"username": "émile", "password": PASSWORD}),
        json!({"username": "x".repeat(33), "password": PASSWORD}),
        json!({"username": ok, "password": "short"}),
        json!({"username": ok, "password": "p".repeat(129)}),
        json!({"username": ok, "password": PASSWORD, "admin": true}),
        json!({"username": ok}),
        json!({"username": 42, "password": PASSWORD}),
        json!(["not", "an", "object"]),
    ];
    for body in cases {
        post(&stack, "/auth/register", &body)
            .await
            .assert_error(400, "invalid_request");
    }
    let malformed = stack
        .client
        .post(format!("{}/auth/register", stack.auth))
        .header("content-type", "application/json")
        .body("{\"username\": ")
        .send()
        .await;
    Reply::from(malformed)
        .await
        .assert_error(400, "invalid_request");
    // None of them created the account.
    post(
        &stack,
        "/auth/login",
        &json!({"username": ok, "password": PASSWORD}),
    )
    .await
    .assert_error(401, "invalid_credentials");
}

#[tokio::test]
async fn bodies_over_16_kib_are_413_and_wrong_types_415() {
    let stack = TestStack::spawn().await;
    let huge = json!({"username": unique_name(), "password": "p".repeat(17 * 1024)});
    post(&stack, "/auth/register", &huge)
        .await
        .assert_error(413, "payload_too_large");
    let r = stack
        .client
        .post(format!("{}/auth/login", stack.auth))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await;
    Reply::from(r)
        .await
        .assert_error(415, "unsupported_media_type");
}

#[tokio::test]
async fn a_username_is_taken_case_insensitively() {
    let stack = TestStack::spawn().await;
    let name = unique_name();
    assert_eq!(
        post(
            &stack,
            "/auth/register",
            &json!({"username": name, "password": PASSWORD})
        )
        .await
        .status,
        201
    );
    post(
        &stack,
        "/auth/register",
        &json!({"username": name.to_uppercase(), "password": "another password"}),
    )
    .await
    .assert_error(409, "username_taken");
}

#[tokio::test]
async fn twenty_concurrent_registrations_of_one_name_make_one_user() {
    let stack = TestStack::spawn().await;
    let name = unique_name();
    let replies = bounded(
        20,
        (0..20).map(|i| {
            let stack = &stack;
            let name = name.clone();
            async move {
                post(
                    stack,
                    "/auth/register",
                    &json!({"username": name, "password": format!("{PASSWORD} {i}")}),
                )
                .await
            }
        }),
    )
    .await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    let taken = replies
        .iter()
        .filter(|r| r.status == 409 && r.code() == "username_taken")
        .count();
    assert_eq!(
        (created, taken),
        (1, 19),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn unknown_user_and_wrong_password_look_the_same() {
    let stack = TestStack::spawn().await;
    let name = unique_name();
    post(
        &stack,
        "/auth/register",
        &json!({"username": name, "password": PASSWORD}),
    )
    .await;
    let wrong = post(
        &stack,
        "/auth/login",
        &json!({"username": name, "password": "not the password"}),
    )
    .await;
    let unknown = post(
        &stack,
        "/auth/login",
        &json!({"username": unique_name(), "password": "not the password"}),
    )
    .await;
    let invalid_name = post(
        &stack,
        "/auth/login",
        &json!({"username": "!!", "password": "not the password"}),
    )
    .await;
    for r in [&wrong, &unknown, &invalid_name] {
        r.assert_error(401, "invalid_credentials");
    }
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.body, invalid_name.body);
}

#[tokio::test]
async fn repeated_failures_lock_the_account_with_retry_after() {
    let stack = TestStack::spawn().await;
    let name = unique_name();
    post(
        &stack,
        "/auth/register",
        &json!({"username": name, "password": PASSWORD}),
    )
    .await;
    for _ in 0..5 {
        post(
            &stack,
            "/auth/login",
            &json!({"username": name, "password": "not the password"}),
        )
        .await
        .assert_error(401, "invalid_credentials");
    }
    // Locked now, even with the right password.
    let r = post(
        &stack,
        "/auth/login",
        &json!({"username": name, "password": PASSWORD}),
    )
    .await;
    r.assert_error(429, "too_many_attempts");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    // Unknown users are throttled the same way (nothing to enumerate).
    let ghost = unique_name();
    for _ in 0..5 {
        post(
            &stack,
            "/auth/login",
            &json!({"username": ghost, "password": "not the password"}),
        )
        .await;
    }
    post(
        &stack,
        "/auth/login",
        &json!({"username": ghost, "password": "x".repeat(12)}),
    )
    .await
    .assert_error(429, "too_many_attempts");
}

#[tokio::test]
async fn a_full_hashing_queue_sheds_with_503_at_once() {
    let stack = TestStack::spawn_with(Options {
        hash_workers: 1,
        hash_queue: 1,
        ..Options::default()
    })
    .await;
    let name = unique_name();
    let replies = bounded(
        12,
        (0..12).map(|_| {
            let stack = &stack;
            let name = name.clone();
            async move {
                let started = Instant::now();
                let r = post(
                    stack,
                    "/auth/login",
                    &json!({"username": name, "password": "whatever password"}),
                )
                .await;
                (r, started.elapsed())
            }
        }),
    )
    .await;
    let shed: Vec<&(Reply, Duration)> = replies.iter().filter(|(r, _)| r.status == 503).collect();
    assert!(
        !shed.is_empty(),
        "one worker and one queue slot cannot take 12 logins at once"
    );
    for (r, took) in &shed {
        r.assert_error(503, "overloaded");
        assert!(*took < Duration::from_millis(500), "shedding took {took:?}");
    }
    assert!(replies
        .iter()
        .all(|(r, _)| r.status == 503 || r.status == 401 || r.status == 429));
}

#[tokio::test]
async fn health_reports_ready_backends_and_503_without_them() {
    let stack = TestStack::spawn().await;
    for base in [&stack.auth, &stack.stock, &stack.order] {
        let r = stack.get(base, "/healthz", None).await;
        assert_eq!(
            (r.status, r.body.clone()),
            (200, json!({"status": "ok"})),
            "{base}"
        );
    }
    // The same app wired to a Redis that is not there is not ready.
    let mut settings = system_tests::settings();
    settings.redis_url = "redis://127.0.0.1:1".into();
    let down = TestStack::spawn_with_unchecked_redis(settings).await;
    let r = Reply::from(reqwest::get(format!("{down}/healthz")).await).await;
    r.assert_error(503, "unavailable");
}

#[tokio::test]
async fn request_ids_are_echoed_and_unknown_routes_are_404() {
    let stack = TestStack::spawn().await;
    let r = stack
        .client
        .get(format!("{}/auth/jwks.json", stack.auth))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-123");
    stack
        .get(&stack.auth, "/auth/nope", None)
        .await
        .assert_error(404, "not_found");
}
