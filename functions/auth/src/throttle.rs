//! Per-account failed-login throttling.
//!
//! After `max_failures` wrong passwords within `window`, the account is
//! locked until the window runs out and every login gets `429` with
//! `Retry-After`, before any password is hashed. Unknown usernames are
//! counted the same way, so the throttle reveals nothing about who exists.
//! Counters live in Redis so every auth instance sees the same count.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    pub max_failures: u32,
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

#[async_trait]
pub trait LoginThrottle: Send + Sync + 'static {
    /// Seconds until the account may try again, if it is locked now.
    async fn locked_for(&self, username: &str) -> Result<Option<u64>, String>;
    async fn record_failure(&self, username: &str) -> Result<(), String>;
    async fn clear(&self, username: &str) -> Result<(), String>;
    async fn ready(&self) -> Result<(), String>;
}

// ---------------------------------------------------------------- Redis

pub struct RedisThrottle {
    conn: redis::aio::ConnectionManager,
    policy: ThrottlePolicy,
    record: redis::Script,
}

impl RedisThrottle {
    pub fn new(conn: redis::aio::ConnectionManager, policy: ThrottlePolicy) -> Self {
        // INCR and the first EXPIRE must be atomic, or a crash between them
        // would leave a counter that never expires.
        let record = redis::Script::new(
            r"local n = redis.call('INCR', KEYS[1])
              if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
              return n",
        );
        Self {
            conn,
            policy,
            record,
        }
    }

    fn key(username: &str) -> String {
        format!("fs:login-failures:{username}")
    }
}

#[async_trait]
impl LoginThrottle for RedisThrottle {
    async fn locked_for(&self, username: &str) -> Result<Option<u64>, String> {
        let mut conn = self.conn.clone();
        let key = Self::key(username);
        let (count, ttl_ms): (Option<u32>, i64) = redis::pipe()
            .get(&key)
            .pttl(&key)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        if count.unwrap_or(0) >= self.policy.max_failures && ttl_ms > 0 {
            Ok(Some((ttl_ms as u64).div_ceil(1000)))
        } else {
            Ok(None)
        }
    }

    async fn record_failure(&self, username: &str) -> Result<(), String> {
        let mut conn = self.conn.clone();
        self.record
            .key(Self::key(username))
            .arg(self.policy.window.as_millis() as u64)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn clear(&self, username: &str) -> Result<(), String> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(Self::key(username))
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn ready(&self) -> Result<(), String> {
        common::backends::redis_ping(&self.conn).await
    }
}

// ---------------------------------------------------------------- memory

pub struct MemoryThrottle {
    policy: ThrottlePolicy,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl MemoryThrottle {
    pub fn new(policy: ThrottlePolicy) -> Self {
        Self {
            policy,
            failures: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Instant)>> {
        match self.failures.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

#[async_trait]
impl LoginThrottle for MemoryThrottle {
    async fn locked_for(&self, username: &str) -> Result<Option<u64>, String> {
        let map = self.failures();
        Ok(map.get(username).and_then(|(count, started)| {
            let left = self.policy.window.checked_sub(started.elapsed())?;
            (*count >= self.policy.max_failures).then(|| left.as_secs().max(1))
        }))
    }

    async fn record_failure(&self, username: &str) -> Result<(), String> {
        let mut map = self.failures();
        let entry = map
            .entry(username.to_owned())
            .or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.policy.window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
        Ok(())
    }

    async fn clear(&self, username: &str) -> Result<(), String> {
        self.failures().remove(username);
        Ok(())
    }

    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}
