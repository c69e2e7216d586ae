//! Per-account login throttling that holds under concurrency.
//!
//! Every login attempt takes one of the account's `max_failures` slots
//! *before* its password is hashed, in one atomic step ([`LoginThrottle::attempt`]):
//! a slot is either granted, or the account is locked and the attempt is
//! refused with `429` + `Retry-After` without any work. A wrong password
//! keeps its slot until the window (counted from the first attempt) ends; a
//! right one clears them all; an attempt that was never checked (the
//! hashing pool shed it, the user store was down) gives its slot back.
//!
//! Checking the lock first and recording the failure after the hash, as a
//! read-then-write, would let a client that fires 200 guesses at once have
//! all 200 checked: they would all read "not locked" before the first
//! failure landed. Taking the slot atomically makes "at most `max_failures`
//! passwords checked per account per window" true however many requests
//! arrive at once and on however many instances: the count lives in Redis
//! (one Lua script per attempt), or in process memory in embedded mode.
//!
//! Unknown usernames take slots the same way, so the throttle reveals
//! nothing about who exists.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    /// Passwords checked per account per window, right or wrong.
    pub max_failures: u32,
    /// Counted from the first attempt; the lock ends with it.
    pub window: Duration,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::from_secs(300),
        }
    }
}

/// What the throttle says about one login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The attempt holds a slot: check its password.
    Admitted,
    /// Every slot of this window is taken: refuse without checking.
    Locked { retry_after_secs: u64 },
}

/// The throttle's store could not answer. Logins then fail closed (`503`):
/// an outage must not turn into unlimited guessing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("login throttle unavailable: {0}")]
pub struct ThrottleUnavailable(pub String);

#[async_trait]
pub trait LoginThrottle: Send + Sync + 'static {
    /// Takes one slot for an attempt on `username`, atomically, or says
    /// how long the account is locked for. Refused attempts take nothing.
    async fn attempt(&self, username: &str) -> Result<Attempt, ThrottleUnavailable>;
    /// Gives back the slot of an attempt whose password was never checked.
    async fn refund(&self, username: &str) -> Result<(), ThrottleUnavailable>;
    /// The right password: the account starts afresh.
    async fn clear(&self, username: &str) -> Result<(), ThrottleUnavailable>;
    async fn ready(&self) -> Result<(), String>;
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

// ---------------------------------------------------------------- Redis

/// Takes a slot or reports the lock, in one step. Returns `{1, 0}` when a
/// slot was taken, `{0, ms}` when the account is locked for `ms` more. The
/// window's expiry is set with the first slot, in the same script, so a
/// crash can never leave a counter that does not expire.
const ATTEMPT_LUA: &str = r"
local max = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local taken = tonumber(redis.call('GET', KEYS[1]) or '0')
if taken >= max then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], window)
    ttl = window
  end
  return {0, ttl}
end
if redis.call('INCR', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], window)
end
return {1, 0}
";

/// Gives a slot back, never below zero and never to a key that is gone.
const REFUND_LUA: &str = r"
local taken = tonumber(redis.call('GET', KEYS[1]) or '0')
if taken > 0 then redis.call('DECR', KEYS[1]) end
return taken
";

pub struct RedisThrottle {
    conn: common::backends::RedisConn,
    policy: ThrottlePolicy,
    attempt: redis::Script,
    refund: redis::Script,
}

impl RedisThrottle {
    pub fn new(conn: common::backends::RedisConn, policy: ThrottlePolicy) -> Self {
        Self {
            conn,
            policy,
            attempt: redis::Script::new(ATTEMPT_LUA),
            refund: redis::Script::new(REFUND_LUA),
        }
    }

    fn key(username: &str) -> String {
        format!("fs:login-attempts:{username}")
    }
}

fn unavailable(e: redis::RedisError) -> ThrottleUnavailable {
    ThrottleUnavailable(e.to_string())
}

#[async_trait]
impl LoginThrottle for RedisThrottle {
    async fn attempt(&self, username: &str) -> Result<Attempt, ThrottleUnavailable> {
        let mut conn = self.conn.clone();
        let (admitted, ttl_ms): (i64, i64) = self
            .attempt
            .key(Self::key(username))
            .arg(self.policy.max_failures)
            .arg(self.policy.window.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(if admitted == 1 {
            Attempt::Admitted
        } else {
            Attempt::Locked {
                retry_after_secs: secs_ceil(Duration::from_millis(ttl_ms.max(0) as u64)),
            }
        })
    }

    async fn refund(&self, username: &str) -> Result<(), ThrottleUnavailable> {
        let mut conn = self.conn.clone();
        self.refund
            .key(Self::key(username))
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn clear(&self, username: &str) -> Result<(), ThrottleUnavailable> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(Self::key(username))
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn ready(&self) -> Result<(), String> {
        common::backends::redis_ping(&self.conn).await
    }
}

// ---------------------------------------------------------------- memory

/// The same counts in process memory (embedded mode, one instance). One
/// mutex makes "read the count, take a slot" a single step.
pub struct MemoryThrottle {
    policy: ThrottlePolicy,
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    /// Slots taken and when the window started, per account.
    windows: HashMap<String, (u32, Instant)>,
    /// Size at which ended windows are dropped: at least [`MEMORY_PRUNE_AT`]
    /// and twice what survived the last pruning, so guesses at endless
    /// made-up names cannot grow the map without bound, and a map of live
    /// windows is not rescanned on every attempt.
    prune_at: usize,
}

const MEMORY_PRUNE_AT: usize = 10_000;

impl MemoryThrottle {
    pub fn new(policy: ThrottlePolicy) -> Self {
        Self {
            policy,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

#[async_trait]
impl LoginThrottle for MemoryThrottle {
    async fn attempt(&self, username: &str) -> Result<Attempt, ThrottleUnavailable> {
        let window = self.policy.window;
        let mut state = self.state();
        let MemoryState { windows, prune_at } = &mut *state;
        if windows.len() >= (*prune_at).max(MEMORY_PRUNE_AT) {
            windows.retain(|_, (_, started)| started.elapsed() < window);
            *prune_at = 2 * windows.len();
        }
        let entry = windows
            .entry(username.to_owned())
            .or_insert((0, Instant::now()));
        if entry.1.elapsed() >= window {
            *entry = (0, Instant::now());
        }
        if entry.0 >= self.policy.max_failures {
            let left = window.saturating_sub(entry.1.elapsed());
            return Ok(Attempt::Locked {
                retry_after_secs: secs_ceil(left),
            });
        }
        entry.0 += 1;
        Ok(Attempt::Admitted)
    }

    async fn refund(&self, username: &str) -> Result<(), ThrottleUnavailable> {
        if let Some(entry) = self.state().windows.get_mut(username) {
            entry.0 = entry.0.saturating_sub(1);
        }
        Ok(())
    }

    async fn clear(&self, username: &str) -> Result<(), ThrottleUnavailable> {
        self.state().windows.remove(username);
        Ok(())
    }

    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}
