//! One suite, every implementation: `UserStore` (DynamoDB Local and memory)
//! and `LoginThrottle` (Redis and memory). The real backends must be
//! reachable (`just backends`); a missing one fails the suite.

use std::sync::Arc;
use std::time::Duration;

use auth::domain::Username;
use auth::store::{DynamoUserStore, MemoryUserStore, StoreError, UserRecord, UserStore};
use auth::throttle::{LoginThrottle, MemoryThrottle, RedisThrottle, ThrottlePolicy};

fn settings() -> common::config::Settings {
    let mut s = common::config::Settings::memory();
    s.redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
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

async fn throttles(policy: ThrottlePolicy) -> Vec<(&'static str, Arc<dyn LoginThrottle>)> {
    let s = settings();
    let conn = common::backends::redis(&s).expect("valid REDIS_URL");
    if let Err(e) = common::backends::redis_ping(&conn).await {
        panic!(
            "Redis not reachable at {}: {e}. Run `just backends`.",
            s.redis_url
        );
    }
    vec![
        ("memory", Arc::new(MemoryThrottle::new(policy))),
        ("redis", Arc::new(RedisThrottle::new(conn, policy))),
    ]
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

#[tokio::test]
async fn failures_lock_an_account_until_the_window_ends_and_success_clears() {
    let policy = ThrottlePolicy {
        max_failures: 3,
        window: Duration::from_secs(2),
    };
    for (name, throttle) in throttles(policy).await {
        let who = unique();
        for _ in 0..2 {
            throttle.record_failure(&who).await.unwrap();
        }
        assert_eq!(
            throttle.locked_for(&who).await.unwrap(),
            None,
            "{name}: under the limit"
        );
        throttle.record_failure(&who).await.unwrap();
        let locked = throttle.locked_for(&who).await.unwrap();
        assert!(matches!(locked, Some(1..=2)), "{name}: {locked:?}");
        assert_eq!(
            throttle.locked_for(&unique()).await.unwrap(),
            None,
            "{name}: per account"
        );
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(
            throttle.locked_for(&who).await.unwrap(),
            None,
            "{name}: the window ended"
        );
        for _ in 0..3 {
            throttle.record_failure(&who).await.unwrap();
        }
        throttle.clear(&who).await.unwrap();
        assert_eq!(
            throttle.locked_for(&who).await.unwrap(),
            None,
            "{name}: cleared"
        );
    }
}
