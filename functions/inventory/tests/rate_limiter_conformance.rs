//! One suite, every `RateLimiter`: Redis (shared by all order instances) and
//! memory (embedded mode). Time is passed in, so the GCRA arithmetic is
//! checked exactly, without sleeping.

mod support;

use std::sync::Arc;
use std::time::Duration;

use inventory::admission::{Admission, CheckoutLimits, RateLimiter, RatePolicy};
use inventory::sale::now_ms;
use inventory::InventoryError;
use support::rate_limiters;

fn key() -> String {
    format!("fs:rate:test:{}", ulid::Ulid::new())
}

fn policy(raw: &str) -> RatePolicy {
    raw.parse().expect("a valid policy")
}

async fn attempts(
    limiter: &Arc<dyn RateLimiter>,
    key: &str,
    p: RatePolicy,
    now: i64,
    n: usize,
) -> Vec<Admission> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(limiter.attempt(key, p, now).await.expect("limiter answers"));
    }
    out
}

#[tokio::test]
async fn a_burst_is_allowed_then_the_next_attempt_waits_one_interval() {
    for (name, limiter) in rate_limiters().await {
        let (k, p, t0) = (key(), policy("5/10s"), now_ms());
        let got = attempts(&limiter, &k, p, t0, 7).await;
        assert!(
            got[..5].iter().all(|a| *a == Admission::Allowed),
            "{name}: {got:?}"
        );
        // 10 s / 5 = one attempt every 2 s; the sixth fits 2 s from now.
        for extra in &got[5..] {
            assert_eq!(
                *extra,
                Admission::Limited {
                    retry_after: Duration::from_secs(2)
                },
                "{name}"
            );
        }
    }
}

#[tokio::test]
async fn a_limited_attempt_costs_nothing_and_budget_refills_evenly() {
    for (name, limiter) in rate_limiters().await {
        let (k, p, t0) = (key(), policy("3/3s"), now_ms());
        assert!(attempts(&limiter, &k, p, t0, 3)
            .await
            .iter()
            .all(|a| *a == Admission::Allowed));
        // Hammering while limited does not push the next slot further away.
        for _ in 0..20 {
            assert!(
                matches!(
                    limiter.attempt(&k, p, t0 + 10).await.unwrap(),
                    Admission::Limited { .. }
                ),
                "{name}"
            );
        }
        let later = limiter.attempt(&k, p, t0 + 999).await.unwrap();
        assert_eq!(
            later,
            Admission::Limited {
                retry_after: Duration::from_millis(1)
            },
            "{name}"
        );
        assert_eq!(
            limiter.attempt(&k, p, t0 + 1_000).await.unwrap(),
            Admission::Allowed,
            "{name}"
        );
        // One interval buys exactly one attempt, not a burst.
        assert!(
            matches!(
                limiter.attempt(&k, p, t0 + 1_000).await.unwrap(),
                Admission::Limited { .. }
            ),
            "{name}"
        );
        // After a full period of silence the whole burst is back.
        let t1 = t0 + 5_000;
        assert!(
            attempts(&limiter, &k, p, t1, 3)
                .await
                .iter()
                .all(|a| *a == Admission::Allowed),
            "{name}"
        );
        assert!(
            matches!(
                limiter.attempt(&k, p, t1).await.unwrap(),
                Admission::Limited { .. }
            ),
            "{name}"
        );
    }
}

#[tokio::test]
async fn keys_are_independent() {
    for (name, limiter) in rate_limiters().await {
        let (a, b, p, t0) = (key(), key(), policy("1/1m"), now_ms());
        assert_eq!(
            limiter.attempt(&a, p, t0).await.unwrap(),
            Admission::Allowed,
            "{name}"
        );
        assert!(
            matches!(
                limiter.attempt(&a, p, t0).await.unwrap(),
                Admission::Limited { .. }
            ),
            "{name}"
        );
        assert_eq!(
            limiter.attempt(&b, p, t0).await.unwrap(),
            Admission::Allowed,
            "{name}"
        );
    }
}

#[tokio::test]
async fn concurrent_attempts_never_exceed_the_burst() {
    for (name, limiter) in rate_limiters().await {
        let (k, p, t0) = (key(), policy("25/1h"), now_ms());
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (limiter, k) = (limiter.clone(), k.clone());
                tokio::spawn(async move { limiter.attempt(&k, p, t0).await })
            })
            .collect();
        let mut allowed = 0;
        for task in tasks {
            if task.await.unwrap().unwrap() == Admission::Allowed {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 25, "{name}: exactly the burst gets through");
    }
}

#[tokio::test]
async fn checkout_limits_apply_per_user_and_per_ip_and_report_retry_after() {
    for (name, limiter) in rate_limiters().await {
        let user_a = format!("user-{}", ulid::Ulid::new());
        let user_b = format!("user-{}", ulid::Ulid::new());
        let ip = Some(random_ip());
        let limits = CheckoutLimits::new(
            limiter.clone(),
            Some(policy("2/10s")),
            Some(policy("3/30s")),
        );
        let t0 = now_ms();
        assert_eq!(limits.admit(&user_a, ip, t0).await, Ok(()), "{name}");
        assert_eq!(limits.admit(&user_a, ip, t0).await, Ok(()), "{name}");
        // user a is out of budget (5 s to the next slot)...
        assert_eq!(
            limits.admit(&user_a, None, t0).await,
            Err(InventoryError::RateLimited {
                retry_after_secs: 5
            }),
            "{name}"
        );
        // ...user b is not, but the address has one attempt left.
        assert_eq!(limits.admit(&user_b, ip, t0).await, Ok(()), "{name}");
        assert_eq!(
            limits.admit(&user_b, ip, t0).await,
            Err(InventoryError::RateLimited {
                retry_after_secs: 10
            }),
            "{name}: the address's budget (3 per 30 s) is spent"
        );
        // Every attempt counts against each budget it passes: user b's
        // second attempt spent its user budget although the address refused.
        assert!(limits.admit(&user_b, None, t0).await.is_err(), "{name}");
        // An unknown or exempt address (None) has no per-IP limit.
        let user_c = format!("user-{}", ulid::Ulid::new());
        assert_eq!(limits.admit(&user_c, None, t0).await, Ok(()), "{name}");
        // No policies, no limits.
        let none = CheckoutLimits::new(limiter.clone(), None, None);
        for _ in 0..50 {
            assert_eq!(none.admit(&user_a, ip, t0).await, Ok(()), "{name}");
        }
    }
}

/// A fresh documentation-range IPv6 address, so runs never share a budget.
fn random_ip() -> std::net::IpAddr {
    let bits = ulid::Ulid::new().random() as u64;
    std::net::IpAddr::V6(std::net::Ipv6Addr::new(
        0x2001,
        0x0db8,
        0,
        0,
        (bits >> 48) as u16,
        (bits >> 32) as u16,
        (bits >> 16) as u16,
        bits as u16,
    ))
}
