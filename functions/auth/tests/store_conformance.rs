//! One suite, every implementation: `UserStore` (DynamoDB Local and memory)
//! and `LoginThrottle` (Redis and memory), including the atomic slot that
//! bounds concurrent guesses. The real backends must be
//! reachable (`just backends`); a missing one fails the suite.

use std::sync::Arc;
use std::time::Duration;

use auth::domain::Username;
use auth::store::{DynamoUserStore, MemoryUserStore, StoreError, UserRecord, UserStore};
use auth::throttle::{Attempt, LoginThrottle, MemoryThrottle, RedisThrottle, ThrottlePolicy};

fn settings() -> common::config::Settings {
    let mut s = common::config::Settings::memory();
    common::redis_testbed::plain().apply(&mut s);
    s.dynamodb_endpoint =
        Some(std::env::var("DYNAMODB_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:8000".into()));
    s.backend_timeout_ms = 15_000;
    s
}

async fn user_stores() -> Vec<(&'static str, Arc<dyn UserStore>)> {
    let s = settings();
    let table = format!(
        "test-users-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    let dynamo = DynamoUserStore::new(common::backends::dynamodb(&s).await, &table);
    if let Err(e) = dynamo.migrate().await {
        panic!(
            "DynamoDB Local not reachable at {:?}: {e}. Run `just backends`.",
            s.dynamodb_endpoint
        );
    }
    vec![
        ("memory", Arc::new(MemoryUserStore::default())),
        ("dynamodb", Arc::new(dynamo)),
    ]
}

/// The in-memory throttle and the Redis one on every shape of the test bed
/// (plain, TLS-only, cluster).
async fn throttles(policy: ThrottlePolicy) -> Vec<(&'static str, Arc<dyn LoginThrottle>)> {
    let mut throttles: Vec<(&'static str, Arc<dyn LoginThrottle>)> =
        vec![("memory", Arc::new(MemoryThrottle::new(policy)))];
    for variant in common::redis_testbed::all() {
        let conn = variant.connect().await;
        throttles.push((variant.name, Arc::new(RedisThrottle::new(conn, policy))));
    }
    throttles
}

fn record(name: &str) -> UserRecord {
    UserRecord {
        user_id: ulid::Ulid::new().to_string(),
        username: Username::parse(name).unwrap(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        created_at: "2026-11-29T12:00:00.000Z".into(),
    }
}

fn unique() -> String {
    format!("u{}", ulid::Ulid::new().to_string().to_lowercase())
}

#[tokio::test]
async fn a_user_is_stored_once_and_found_by_name() {
    for (name, store) in user_stores().await {
        let user = record(&unique());
        store.insert(&user).await.unwrap();
        assert_eq!(
            store.find(&user.username).await.unwrap(),
            Some(user.clone()),
            "{name}"
        );
        let again = UserRecord {
            user_id: "other".into(),
            ..user.clone()
        };
        assert!(
            matches!(store.insert(&again).await, Err(StoreError::Taken)),
            "{name}"
        );
        assert_eq!(
            store.find(&user.username).await.unwrap().unwrap().user_id,
            user.user_id,
            "{name}: first one kept"
        );
        assert_eq!(
            store
                .find(&Username::parse(&unique()).unwrap())
                .await
                .unwrap(),
            None,
            "{name}"
        );
        assert!(store.ready().await.is_ok(), "{name}");
    }
}

#[tokio::test]
async fn concurrent_inserts_of_one_name_store_exactly_one() {
    for (name, store) in user_stores().await {
        let username = unique();
        let inserts = (0..20).map(|_| {
            let store = store.clone();
            let user = record(&username);
            tokio::spawn(async move { store.insert(&user).await })
        });
        let mut ok = 0;
        for i in inserts {
            match i.await.unwrap() {
                Ok(()) => ok += 1,
                Err(StoreError::Taken) => {}
                Err(e) => panic!("{name}: {e}"),
            }
        }
        assert_eq!(ok, 1, "{name}");
    }
}

fn locked_secs(attempt: Attempt) -> Option<u64> {
    match attempt {
        Attempt::Admitted => None,
        Attempt::Locked { retry_after_secs } => Some(retry_after_secs),
    }
}

#[tokio::test]
async fn attempts_take_slots_until_the_account_locks_for_the_rest_of_the_window() {
    let policy = ThrottlePolicy {
        max_failures: 3,
        window: Duration::from_secs(2),
    };
    for (name, throttle) in throttles(policy).await {
        let who = unique();
        for i in 0..3 {
            assert_eq!(
                throttle.attempt(&who).await.unwrap(),
                Attempt::Admitted,
                "{name}: slot {i}"
            );
        }
        let locked = locked_secs(throttle.attempt(&who).await.unwrap());
        assert!(matches!(locked, Some(1..=2)), "{name}: {locked:?}");
        assert_eq!(
            throttle.attempt(&unique()).await.unwrap(),
            Attempt::Admitted,
            "{name}: per account"
        );
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(
            throttle.attempt(&who).await.unwrap(),
            Attempt::Admitted,
            "{name}: the window ended"
        );
    }
}

#[tokio::test]
async fn a_refund_gives_one_slot_back_and_a_clear_all_of_them() {
    let policy = ThrottlePolicy {
        max_failures: 2,
        window: Duration::from_secs(60),
    };
    for (name, throttle) in throttles(policy).await {
        let who = unique();
        for _ in 0..2 {
            assert_eq!(throttle.attempt(&who).await.unwrap(), Attempt::Admitted);
        }
        assert!(locked_secs(throttle.attempt(&who).await.unwrap()).is_some());
        throttle.refund(&who).await.unwrap();
        assert_eq!(
            throttle.attempt(&who).await.unwrap(),
            Attempt::Admitted,
            "{name}: the refunded slot"
        );
        assert!(
            locked_secs(throttle.attempt(&who).await.unwrap()).is_some(),
            "{name}: only one slot came back"
        );
        throttle.clear(&who).await.unwrap();
        for _ in 0..2 {
            assert_eq!(
                throttle.attempt(&who).await.unwrap(),
                Attempt::Admitted,
                "{name}: cleared"
            );
        }
        // A refund never makes more slots than the policy has.
        let fresh = unique();
        for _ in 0..5 {
            throttle.refund(&fresh).await.unwrap();
        }
        for _ in 0..2 {
            assert_eq!(throttle.attempt(&fresh).await.unwrap(), Attempt::Admitted);
        }
        assert!(
            locked_secs(throttle.attempt(&fresh).await.unwrap()).is_some(),
            "{name}: refunds below zero are ignored"
        );
    }
}

#[tokio::test]
async fn two_hundred_concurrent_attempts_on_two_instances_get_exactly_the_slots() {
    let policy = ThrottlePolicy {
        max_failures: 5,
        window: Duration::from_secs(60),
    };
    // Two Redis throttles on two connections stand for two auth instances,
    // on every Redis shape; the memory one is a single instance, raced from
    // many tasks.
    let memory: Arc<dyn LoginThrottle> = Arc::new(MemoryThrottle::new(policy));
    let mut pairs: Vec<(&str, [Arc<dyn LoginThrottle>; 2])> =
        vec![("memory", [memory.clone(), memory])];
    for variant in common::redis_testbed::all() {
        let instance =
            |conn| -> Arc<dyn LoginThrottle> { Arc::new(RedisThrottle::new(conn, policy)) };
        pairs.push((
            variant.name,
            [
                instance(variant.connect().await),
                instance(variant.connect().await),
            ],
        ));
    }
    for (name, instances) in pairs {
        let who = unique();
        let attempts = (0..200).map(|i| {
            let throttle = instances[i % 2].clone();
            let who = who.clone();
            tokio::spawn(async move { throttle.attempt(&who).await })
        });
        let mut admitted = 0;
        for a in futures::future::join_all(attempts).await {
            match a.unwrap().unwrap() {
                Attempt::Admitted => admitted += 1,
                Attempt::Locked { retry_after_secs } => {
                    assert!((1..=60).contains(&retry_after_secs), "{name}")
                }
            }
        }
        assert_eq!(admitted, 5, "{name}: exactly max_failures slots");
    }
}

#[tokio::test]
async fn an_unreachable_redis_is_reported_not_admitted() {
    let mut s = settings();
    s.redis_url = "redis://127.0.0.1:1".into();
    s.backend_timeout_ms = 300;
    let conn = common::backends::redis(&s).expect("valid REDIS_URL");
    let throttle = RedisThrottle::new(conn, ThrottlePolicy::default());
    assert!(throttle.attempt(&unique()).await.is_err());
    assert!(throttle.ready().await.is_err());
}
