//! Who may try to take a hold, and how often: per-user and per-IP checkout
//! rate limits.
//!
//! The per-user limit of a sale already caps what one account can *buy*;
//! these limits cap how hard one account, or one address running many
//! accounts, can *hammer* the sale (OWASP API6, unrestricted access to a
//! sensitive business flow). A limited attempt gets `429 rate_limited` with
//! `Retry-After`, before it touches the stock gate.
//!
//! The algorithm is GCRA (the "generic cell rate algorithm", a token bucket
//! that needs one number per key): a policy `burst/period` allows `burst`
//! attempts at once, then one more every `period / burst`. The state lives in
//! Redis so every order instance counts against the same budget; an embedded
//! stack keeps it in memory. Both pass `tests/rate_limiter_conformance.rs`.
//!
//! The limits are checked *after* the answers that cost nothing (sold out,
//! not live), so a sold-out stampede pays no round trip for them. If the
//! limiter itself cannot answer, the attempt is let through: the gate, on the
//! same Redis, then decides, and a rate limiter must never be the reason a
//! sale stops selling.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::InventoryError;

/// `burst` attempts at once, refilled evenly over `period`: "30/10s".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePolicy {
    burst: u32,
    period: Duration,
}

impl RatePolicy {
    pub fn new(burst: u32, period: Duration) -> Result<Self, String> {
        if burst == 0 {
            return Err("the burst must be at least 1".into());
        }
        if period < Duration::from_millis(1) || period > Duration::from_secs(86_400) {
            return Err("the period must be between 1ms and 1d".into());
        }
        Ok(Self { burst, period })
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Milliseconds between two refills, at least 1.
    pub fn interval_ms(&self) -> i64 {
        (self.period.as_millis() as i64 / i64::from(self.burst)).max(1)
    }
}

impl fmt::Display for RatePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}ms", self.burst, self.period.as_millis())
    }
}

impl FromStr for RatePolicy {
    type Err = String;

    /// `<burst>/<period>` with the period in `ms`, `s`, `m` or `h`
    /// ("100/10s", "5/1m"); a bare number of seconds is accepted too.
    fn from_str(raw: &str) -> Result<Self, String> {
        let hint = "expected <burst>/<period>, e.g. 100/10s or 5/1m";
        let (burst, period) = raw.trim().split_once('/').ok_or(hint)?;
        let burst: u32 = burst.trim().parse().map_err(|_| hint)?;
        let period = period.trim();
        let split = period
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(period.len());
        let (amount, unit) = period.split_at(split);
        let amount: u64 = amount.parse().map_err(|_| hint)?;
        let millis = match unit {
            "ms" => Some(amount),
            "" | "s" => amount.checked_mul(1_000),
            "m" => amount.checked_mul(60_000),
            "h" => amount.checked_mul(3_600_000),
            _ => None,
        }
        .ok_or(hint)?;
        Self::new(burst, Duration::from_millis(millis))
    }
}

/// A policy, or none at all (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalPolicy(pub Option<RatePolicy>);

impl FromStr for OptionalPolicy {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        match raw.trim() {
            "off" | "none" | "0" => Ok(Self(None)),
            other => other.parse().map(|p| Self(Some(p))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Not now; this attempt fits in the budget again after `retry_after`.
    Limited {
        retry_after: Duration,
    },
}

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Counts one attempt against `key` at `now_ms`. A limited attempt
    /// changes nothing, so a client that backs off is not punished further.
    async fn attempt(
        &self,
        key: &str,
        policy: RatePolicy,
        now_ms: i64,
    ) -> Result<Admission, String>;
}

// ---------------------------------------------------------------- Redis

/// GCRA in one atomic script. The key holds the "theoretical arrival time"
/// (TAT) of the next attempt, in ms, and expires once it is in the past,
/// when it means the same as no key at all.
const GCRA_LUA: &str = r"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local next_tat = tat + interval
local fits_at = next_tat - interval * burst
if fits_at > now then return fits_at - now end
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', next_tat - now)
return 0
";

pub struct RedisRateLimiter {
    conn: common::backends::RedisConn,
    script: redis::Script,
}

impl RedisRateLimiter {
    pub fn new(conn: common::backends::RedisConn) -> Self {
        Self {
            conn,
            script: redis::Script::new(GCRA_LUA),
        }
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn attempt(
        &self,
        key: &str,
        policy: RatePolicy,
        now_ms: i64,
    ) -> Result<Admission, String> {
        let mut conn = self.conn.clone();
        let wait_ms: i64 = self
            .script
            .key(key)
            .arg(now_ms)
            .arg(policy.interval_ms())
            .arg(policy.burst())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(admission(wait_ms))
    }
}

fn admission(wait_ms: i64) -> Admission {
    if wait_ms <= 0 {
        Admission::Allowed
    } else {
        Admission::Limited {
            retry_after: Duration::from_millis(wait_ms as u64),
        }
    }
}

// ---------------------------------------------------------------- memory

/// The same algorithm in process memory (embedded mode, one instance).
#[derive(Default)]
pub struct MemoryRateLimiter {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    tats: HashMap<String, i64>,
    /// Size at which the keys whose TAT is in the past are dropped: at
    /// least [`MEMORY_PRUNE_AT`], and twice what survived the last pruning,
    /// so a map of live keys is not rescanned on every attempt.
    prune_at: usize,
}

const MEMORY_PRUNE_AT: usize = 100_000;

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn attempt(
        &self,
        key: &str,
        policy: RatePolicy,
        now_ms: i64,
    ) -> Result<Admission, String> {
        let mut state = match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let MemoryState { tats, prune_at } = &mut *state;
        if tats.len() >= (*prune_at).max(MEMORY_PRUNE_AT) {
            tats.retain(|_, tat| *tat > now_ms);
            *prune_at = 2 * tats.len();
        }
        let interval = policy.interval_ms();
        let tat = tats.get(key).copied().unwrap_or(0).max(now_ms);
        let next_tat = tat + interval;
        let fits_at = next_tat - interval * i64::from(policy.burst());
        if fits_at > now_ms {
            return Ok(admission(fits_at - now_ms));
        }
        tats.insert(key.to_owned(), next_tat);
        Ok(Admission::Allowed)
    }
}

// ---------------------------------------------------------------- checkout

/// The checkout limits and where their counts live.
#[derive(Clone)]
pub struct CheckoutLimits {
    limiter: Arc<dyn RateLimiter>,
    per_user: Option<RatePolicy>,
    per_ip: Option<RatePolicy>,
}

/// Defaults: a person does not click "buy" 100 times in 10 s, and 1,000
/// attempts per 10 s per address leaves room for many buyers behind one NAT.
pub const DEFAULT_PER_USER: &str = "100/10s";
pub const DEFAULT_PER_IP: &str = "1000/10s";

impl CheckoutLimits {
    pub fn new(
        limiter: Arc<dyn RateLimiter>,
        per_user: Option<RatePolicy>,
        per_ip: Option<RatePolicy>,
    ) -> Self {
        Self {
            limiter,
            per_user,
            per_ip,
        }
    }

    /// `CHECKOUT_RATE_PER_USER` and `CHECKOUT_RATE_PER_IP` (`<burst>/<period>`
    /// or `off`).
    pub fn from_env(limiter: Arc<dyn RateLimiter>) -> Result<Self, common::config::ConfigError> {
        use common::config::parsed_or;
        // The defaults are constants that `defaults_parse` checks.
        let default = |raw: &str| raw.parse().unwrap_or(OptionalPolicy(None));
        let per_user = parsed_or("CHECKOUT_RATE_PER_USER", default(DEFAULT_PER_USER))?;
        let per_ip = parsed_or("CHECKOUT_RATE_PER_IP", default(DEFAULT_PER_IP))?;
        Ok(Self::new(limiter, per_user.0, per_ip.0))
    }

    /// Counts one checkout attempt by `user_id` from `client_ip` (`None`:
    /// unknown or exempt address) against both budgets.
    pub async fn admit(
        &self,
        user_id: &str,
        client_ip: Option<IpAddr>,
        now_ms: i64,
    ) -> Result<(), InventoryError> {
        let user = async {
            match self.per_user {
                Some(policy) => {
                    let key = format!("fs:rate:checkout:user:{user_id}");
                    self.limiter.attempt(&key, policy, now_ms).await
                }
                None => Ok(Admission::Allowed),
            }
        };
        let ip = async {
            match (self.per_ip, client_ip) {
                (Some(policy), Some(ip)) => {
                    let key = format!("fs:rate:checkout:ip:{ip}");
                    self.limiter.attempt(&key, policy, now_ms).await
                }
                _ => Ok(Admission::Allowed),
            }
        };
        let (user, ip) = tokio::join!(user, ip);
        let mut wait = Duration::ZERO;
        for outcome in [user, ip] {
            match outcome {
                Ok(Admission::Allowed) => {}
                Ok(Admission::Limited { retry_after }) => wait = wait.max(retry_after),
                Err(problem) => {
                    // Fail open: see the module comment.
                    common::metrics::counter("rate_limiter_errors_total").inc();
                    tracing::warn!(problem, "rate limiter unavailable; attempt let through");
                }
            }
        }
        if wait.is_zero() {
            return Ok(());
        }
        common::metrics::counter("checkout_rate_limited_total").inc();
        Err(InventoryError::RateLimited {
            retry_after_secs: wait.as_millis().div_ceil(1000).max(1) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse() {
        let p: RatePolicy = "100/10s".parse().unwrap();
        assert_eq!((p.burst(), p.interval_ms()), (100, 100));
        let p: RatePolicy = "5/1m".parse().unwrap();
        assert_eq!((p.burst(), p.interval_ms()), (5, 12_000));
        let p: RatePolicy = "3/1500ms".parse().unwrap();
        assert_eq!(p.interval_ms(), 500);
        let p: RatePolicy = "2/4".parse().unwrap();
        assert_eq!(p.interval_ms(), 2_000);
        assert_eq!(
            "off".parse::<OptionalPolicy>().unwrap(),
            OptionalPolicy(None)
        );
        for bad in [
            "", "10", "0/1s", "x/1s", "10/", "10/1d", "10/0s", "10/25h", "-1/1s",
        ] {
            assert!(
                bad.parse::<RatePolicy>().is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(raw in "\\PC{0,24}") {
            if let Ok(p) = raw.parse::<RatePolicy>() {
                proptest::prop_assert!(p.burst() >= 1 && p.interval_ms() >= 1);
            }
        }

        #[test]
        fn a_policy_round_trips_through_its_display(burst in 1u32..1_000_000, ms in 1u64..86_400_000) {
            let p = RatePolicy::new(burst, Duration::from_millis(ms)).unwrap();
            proptest::prop_assert_eq!(p.to_string().parse::<RatePolicy>(), Ok(p));
        }
    }

    #[test]
    fn defaults_parse() {
        assert!(DEFAULT_PER_USER.parse::<RatePolicy>().is_ok());
        assert!(DEFAULT_PER_IP.parse::<RatePolicy>().is_ok());
    }
}
