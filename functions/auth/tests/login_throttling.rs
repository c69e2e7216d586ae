//! The login route and its throttle together, in process on memory stores
//! (the Redis twin and two instances are in `system-tests/tests/abuse_logins.rs`):
//! the number of passwords actually checked is what is asserted, counted by
//! the hashing pool itself.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use auth::domain::{Password, Username};
use auth::hasher::{HashCost, HasherPool};
use auth::store::{MemoryUserStore, UserRecord, UserStore};
use auth::throttle::{Attempt, LoginThrottle, MemoryThrottle, ThrottlePolicy, ThrottleUnavailable};
use auth::AuthState;
use common::token::TokenSigner;
use serde_json::{json, Value};

const PASSWORD: &str = "the right password";

/// Cheap argon2 parameters: these tests count hashes, they do not time them.
const CHEAP: HashCost = HashCost {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

async fn state(
    throttle: Arc<dyn LoginThrottle>,
    workers: usize,
    queue: usize,
) -> (AuthState, HasherPool) {
    state_costing(throttle, workers, queue, CHEAP).await
}

async fn state_costing(
    throttle: Arc<dyn LoginThrottle>,
    workers: usize,
    queue: usize,
    cost: HashCost,
) -> (AuthState, HasherPool) {
    let hasher = HasherPool::new(workers, queue, cost);
    let users = MemoryUserStore::default();
    let password_hash = hasher
        .hash(Password::parse(PASSWORD).unwrap())
        .await
        .unwrap();
    users
        .insert(&UserRecord {
            user_id: "user-1".into(),
            username: Username::parse("alice").unwrap(),
            password_hash,
            created_at: "2026-01-01T00:00:00.000Z".into(),
        })
        .await
        .unwrap();
    let state = AuthState {
        users: Arc::new(users),
        throttle,
        hasher: hasher.clone(),
        signer: Arc::new(TokenSigner::generate("flashsale-auth", "flashsale", 900)),
    };
    (state, hasher)
}

async fn serve(state: AuthState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = auth::app(
        state,
        &common::http::HttpOptions {
            max_in_flight: 1024,
        },
    );
    tokio::spawn(common::serve::serve_on(
        listener,
        app,
        std::future::pending::<()>(),
    ));
    url
}

async fn login(
    client: &reqwest::Client,
    url: &str,
    username: &str,
    password: &str,
) -> (u16, Option<String>, Value) {
    let r = client
        .post(format!("{url}/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

fn policy(max_failures: u32, secs: u64) -> ThrottlePolicy {
    ThrottlePolicy {
        max_failures,
        window: Duration::from_secs(secs),
    }
}

#[tokio::test]
async fn two_hundred_concurrent_guesses_get_five_passwords_checked() {
    let throttle = Arc::new(MemoryThrottle::new(policy(5, 60)));
    let (state, hasher) = state(throttle, 2, 512).await;
    let url = serve(state).await;
    let client = reqwest::Client::new();
    for who in ["alice", "nobody-here"] {
        let before = hasher.verifications();
        let guesses: Vec<String> = (0..200).map(|i| format!("wrong guess {i:04}")).collect();
        let replies =
            futures::future::join_all(guesses.iter().map(|g| login(&client, &url, who, g))).await;
        let checked = hasher.verifications() - before;
        let wrong = replies.iter().filter(|r| r.0 == 401).count();
        let locked: Vec<_> = replies.iter().filter(|r| r.0 == 429).collect();
        assert_eq!(checked, 5, "{who}: passwords checked");
        assert_eq!(wrong, 5, "{who}");
        assert_eq!(locked.len(), 195, "{who}");
        for (_, retry, body) in locked {
            assert_eq!(body["error"]["code"], "too_many_attempts");
            let secs: u64 = retry.as_deref().unwrap_or("").parse().unwrap();
            assert!((1..=60).contains(&secs), "{secs}");
        }
    }
    // Locked even for the right password, and without checking it.
    let before = hasher.verifications();
    let (status, _, _) = login(&client, &url, "alice", PASSWORD).await;
    assert_eq!(status, 429);
    assert_eq!(hasher.verifications(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_attempt_gives_its_slot_back() {
    // One worker, one queue slot, real argon2 cost: of 12 concurrent
    // logins the 5 that get a slot overflow the pool, and some are shed
    // with 503. Only the attempts that were checked may count.
    let throttle = Arc::new(MemoryThrottle::new(policy(5, 60)));
    let (state, hasher) = state_costing(throttle, 1, 1, HashCost::default()).await;
    let url = serve(state).await;
    let client = reqwest::Client::new();
    let before = hasher.verifications();
    let burst =
        futures::future::join_all((0..12).map(|_| login(&client, &url, "alice", "a wrong guess!")))
            .await;
    let shed = burst.iter().filter(|r| r.0 == 503).count();
    assert!(
        shed > 0,
        "{:?}",
        burst.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    let checked_in_burst = (hasher.verifications() - before) as usize;
    // One after the other, the remaining slots are exactly 5 minus the
    // passwords checked so far: shed attempts took none for good.
    let mut more = 0;
    for _ in 0..10 {
        match login(&client, &url, "alice", "a wrong guess!").await.0 {
            401 => more += 1,
            429 => break,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(checked_in_burst + more, 5);
}

#[tokio::test]
async fn the_right_password_clears_the_count() {
    let throttle = Arc::new(MemoryThrottle::new(policy(3, 60)));
    let (state, _) = state(throttle, 1, 8).await;
    let url = serve(state).await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        assert_eq!(login(&client, &url, "alice", "a wrong guess!").await.0, 401);
    }
    let (status, _, body) = login(&client, &url, "ALICE", PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..3 {
        assert_eq!(login(&client, &url, "alice", "a wrong guess!").await.0, 401);
    }
    assert_eq!(login(&client, &url, "alice", "a wrong guess!").await.0, 429);
}

/// A throttle whose store is down.
struct Down;

#[async_trait]
impl LoginThrottle for Down {
    async fn attempt(&self, _: &str) -> Result<Attempt, ThrottleUnavailable> {
        Err(ThrottleUnavailable("redis: connection refused".into()))
    }
    async fn refund(&self, _: &str) -> Result<(), ThrottleUnavailable> {
        Err(ThrottleUnavailable("redis: connection refused".into()))
    }
    async fn clear(&self, _: &str) -> Result<(), ThrottleUnavailable> {
        Err(ThrottleUnavailable("redis: connection refused".into()))
    }
    async fn ready(&self) -> Result<(), String> {
        Err("redis: connection refused".into())
    }
}

#[tokio::test]
async fn without_a_throttle_logins_fail_closed_and_check_nothing() {
    let (state, hasher) = state(Arc::new(Down), 1, 8).await;
    let url = serve(state).await;
    let client = reqwest::Client::new();
    let before = hasher.verifications();
    let (status, retry, body) = login(&client, &url, "alice", PASSWORD).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "overloaded");
    assert!(retry.is_some());
    assert!(!body.to_string().to_lowercase().contains("redis"), "{body}");
    assert_eq!(hasher.verifications(), before);
    // Readiness says so too, without the backend's words.
    let r = client.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let text = r.text().await.unwrap();
    assert!(!text.to_lowercase().contains("redis"), "{text}");
}
