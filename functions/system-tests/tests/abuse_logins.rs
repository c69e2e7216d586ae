//! Abuse hardening, logins: the throttle holds under concurrency, across
//! two auth instances, and unknown and known users look the same.

mod abuse;

use abuse::{post_json, retry_after, serve, unique, PASSWORD};
use auth::hasher::HasherPool;
use auth::throttle::{RedisThrottle, ThrottlePolicy};
use common::config::Settings;
use common::http::HttpOptions;
use common::token::TokenSigner;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use system_tests::{Reply, TestStack};

// ------------------------------------------------------------ 1. logins

/// One more auth instance on the stack's users table and Redis, with its
/// own hashing pool (whose verification count is the measure).
async fn auth_instance(
    s: &Settings,
    signer: Arc<TokenSigner>,
    policy: ThrottlePolicy,
) -> (String, HasherPool) {
    let dynamo = common::backends::dynamodb(s).await;
    let redis = common::backends::redis(s).expect("valid REDIS_URL");
    let hasher = HasherPool::new(2, 512, Default::default());
    let state = auth::AuthState {
        users: Arc::new(auth::store::DynamoUserStore::new(dynamo, &s.users_table)),
        throttle: Arc::new(RedisThrottle::new(redis, policy)),
        hasher: hasher.clone(),
        signer,
    };
    let url = serve(auth::app(
        state,
        &HttpOptions {
            max_in_flight: 1024,
        },
    ))
    .await;
    (url, hasher)
}

struct Burst {
    wrong: Vec<Reply>,
    locked: Vec<Reply>,
    checked: u64,
}

/// 200 concurrent wrong guesses at `username`, alternating between the
/// instances.
async fn guess_200(
    client: &reqwest::Client,
    instances: &[(String, HasherPool); 2],
    username: &str,
) -> Burst {
    let checked = || {
        instances
            .iter()
            .map(|(_, h)| h.verifications())
            .sum::<u64>()
    };
    let before = checked();
    let replies = futures::future::join_all((0..200).map(|i| {
        let url = format!("{}/auth/login", instances[i % 2].0);
        let body = json!({"username": username, "password": format!("wrong guess number {i}")});
        async move { post_json(client, &url, &body).await }
    }))
    .await;
    let checked = checked() - before;
    let (wrong, rest): (Vec<Reply>, Vec<Reply>) =
        replies.into_iter().partition(|r| r.status == 401);
    let (locked, other): (Vec<Reply>, Vec<Reply>) = rest.into_iter().partition(|r| r.status == 429);
    assert!(
        other.is_empty(),
        "{:?}",
        other.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    Burst {
        wrong,
        locked,
        checked,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_guesses_on_two_instances_check_at_most_five_passwords() {
    let stack = TestStack::spawn().await;
    let policy = ThrottlePolicy {
        max_failures: 5,
        window: Duration::from_secs(8),
    };
    let instances = [
        auth_instance(&stack.settings, stack.signer.clone(), policy).await,
        auth_instance(&stack.settings, stack.signer.clone(), policy).await,
    ];
    let client = &stack.client;
    let name = unique("victim");
    let r = post_json(
        client,
        &format!("{}/auth/register", instances[0].0),
        &json!({"username": name, "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);

    let known = guess_200(client, &instances, &name).await;
    assert!(known.checked <= 5, "{} passwords checked", known.checked);
    assert_eq!(known.wrong.len() as u64, known.checked, "one 401 per check");
    assert_eq!(known.wrong.len(), 5, "no slot was lost");
    assert_eq!(known.locked.len(), 195);
    for r in known.wrong.iter().chain(&known.locked) {
        let code = if r.status == 401 {
            "invalid_credentials"
        } else {
            "too_many_attempts"
        };
        r.assert_error(r.status, code);
    }
    for r in &known.locked {
        assert!((1..=8).contains(&retry_after(r)), "{:?}", r.headers);
    }

    // An unknown name is throttled the same way and looks the same.
    let ghost = guess_200(client, &instances, &unique("ghost")).await;
    assert_eq!(
        (ghost.checked, ghost.wrong.len(), ghost.locked.len()),
        (5, 5, 195)
    );
    assert_eq!(ghost.wrong[0].body, known.wrong[0].body);
    assert_eq!(ghost.locked[0].body, known.locked[0].body);
    assert_eq!(ghost.wrong[0].status, known.wrong[0].status);

    // The right password waits out the lock, on either instance, unchecked.
    let before: u64 = instances.iter().map(|(_, h)| h.verifications()).sum();
    let right = json!({"username": name.to_uppercase(), "password": PASSWORD});
    let urls: Vec<String> = instances
        .iter()
        .map(|(url, _)| format!("{url}/auth/login"))
        .collect();
    let login = |i: usize| post_json(client, &urls[i], &right);
    let r = login(1).await;
    r.assert_error(429, "too_many_attempts");
    let after: u64 = instances.iter().map(|(_, h)| h.verifications()).sum();
    assert_eq!(after, before, "a locked login checks nothing");
    tokio::time::sleep(Duration::from_secs(retry_after(&r)) + Duration::from_millis(300)).await;
    let r = login(0).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["access_token"].as_str().is_some());
}
