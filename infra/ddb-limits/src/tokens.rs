//! `ClientRequestToken` idempotency for `TransactWriteItems`.
//!
//! From the API reference (TransactWriteItems, `ClientRequestToken`,
//! <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html>):
//! "multiple identical calls have the same effect as one single call";
//! "A client request token is valid for 10 minutes after the first request
//! that uses it is completed"; "If you submit a request with the same client
//! token but a change in other parameters within the 10-minute idempotency
//! window, DynamoDB returns an IdempotentParameterMismatch exception"; and
//! `TransactionInProgressException` when "the transaction with the given
//! request token is already in progress".
//!
//! DynamoDB Local implements the replay and the mismatch itself (measured:
//! same token twice applies once; another payload gets
//! `IdempotentParameterMismatchException` with an empty message), but cannot
//! show "in progress" since it runs one request at a time. The proxy keeps
//! its own table so the three answers are right whatever upstream does, and
//! so that a replay of an answer the proxy dropped on purpose
//! (`drop_after_commit`) is served without touching upstream again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

/// A success answer kept for replays.
#[derive(Clone, Debug)]
pub struct Cached {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// A request is remembered by a digest of its canonical JSON, not the JSON
/// itself: the SDK gives every transaction a token, so a long bench keeps
/// hundreds of thousands of them.
#[derive(Debug)]
enum Entry {
    InFlight {
        request: u64,
    },
    Done {
        request: u64,
        answer: Cached,
        at: Instant,
    },
}

/// A digest of `value` that ignores object key order.
pub fn digest(value: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    fn feed(v: &Value, h: &mut std::collections::hash_map::DefaultHasher) {
        match v {
            Value::Null => 0u8.hash(h),
            Value::Bool(b) => (1u8, b).hash(h),
            Value::Number(n) => (2u8, n.to_string()).hash(h),
            Value::String(s) => (3u8, s).hash(h),
            Value::Array(a) => {
                (4u8, a.len()).hash(h);
                a.iter().for_each(|e| feed(e, h));
            }
            Value::Object(o) => {
                (5u8, o.len()).hash(h);
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                for k in keys {
                    k.hash(h);
                    feed(&o[k], h);
                }
            }
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    feed(value, &mut h);
    h.finish()
}

/// What a token says about a new request.
#[derive(Debug)]
pub enum Check {
    /// First use (or expired): go ahead; the token is now in flight.
    New,
    /// Same request already succeeded: answer this again, forward nothing.
    Replay(Cached),
    /// Same token, other parameters.
    Mismatch,
    /// Same token, same request, still running.
    InProgress,
}

/// Tokens per credential scope (tokens are per account).
#[derive(Debug)]
pub struct Tokens {
    window: Duration,
    entries: HashMap<(String, String), Entry>,
}

/// Upper bound on remembered tokens; the oldest completed ones go first.
const MAX_TOKENS: usize = 200_000;

impl Tokens {
    pub fn new(window: Duration) -> Tokens {
        Tokens {
            window,
            entries: HashMap::new(),
        }
    }

    /// Looks `token` up for `request` (the whole request body, token
    /// included, compared as JSON so key order does not matter).
    pub fn check(&mut self, scope: &str, token: &str, request: &Value, now: Instant) -> Check {
        let request = digest(request);
        let key = (scope.to_string(), token.to_string());
        let fresh = match self.entries.get(&key) {
            None => true,
            Some(Entry::Done { at, .. }) => now.duration_since(*at) > self.window,
            Some(_) => false,
        };
        if fresh {
            self.evict(now);
            self.entries.insert(key, Entry::InFlight { request });
            return Check::New;
        }
        match self.entries.get(&key) {
            Some(Entry::InFlight { request: r }) if *r == request => Check::InProgress,
            Some(Entry::Done {
                request: r, answer, ..
            }) if *r == request => Check::Replay(answer.clone()),
            _ => Check::Mismatch,
        }
    }

    /// The request with this token succeeded: its answer is replayed for
    /// the next 10 minutes.
    pub fn complete(&mut self, scope: &str, token: &str, answer: Cached, now: Instant) {
        let key = (scope.to_string(), token.to_string());
        if let Some(Entry::InFlight { request }) = self.entries.remove(&key) {
            self.entries.insert(
                key,
                Entry::Done {
                    request,
                    answer,
                    at: now,
                },
            );
        }
    }

    /// The request with this token failed or its fate is unknown: the token
    /// is free again (a retry is a new request, upstream dedupes if needed).
    pub fn abandon(&mut self, scope: &str, token: &str) {
        let key = (scope.to_string(), token.to_string());
        if matches!(self.entries.get(&key), Some(Entry::InFlight { .. })) {
            self.entries.remove(&key);
        }
    }

    fn evict(&mut self, now: Instant) {
        if self.entries.len() < MAX_TOKENS {
            return;
        }
        let window = self.window;
        self.entries.retain(|_, e| match e {
            Entry::Done { at, .. } => now.duration_since(*at) <= window,
            Entry::InFlight { .. } => true,
        });
        if self.entries.len() >= MAX_TOKENS {
            // still full of live tokens: forget the oldest completed half
            let mut done: Vec<(Instant, (String, String))> = self
                .entries
                .iter()
                .filter_map(|(k, e)| match e {
                    Entry::Done { at, .. } => Some((*at, k.clone())),
                    Entry::InFlight { .. } => None,
                })
                .collect();
            done.sort();
            for (_, k) in done.into_iter().take(MAX_TOKENS / 2) {
                self.entries.remove(&k);
            }
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok() -> Cached {
        Cached {
            status: 200,
            headers: vec![],
            body: Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn token_lifecycle() {
        let mut t = Tokens::new(Duration::from_secs(600));
        let now = Instant::now();
        let a = json!({"ClientRequestToken": "x", "TransactItems": [1]});
        let b = json!({"ClientRequestToken": "x", "TransactItems": [2]});
        assert!(matches!(t.check("s", "x", &a, now), Check::New));
        assert!(matches!(t.check("s", "x", &a, now), Check::InProgress));
        assert!(matches!(t.check("s", "x", &b, now), Check::Mismatch));
        t.complete("s", "x", ok(), now);
        assert!(matches!(t.check("s", "x", &a, now), Check::Replay(_)));
        assert!(matches!(t.check("s", "x", &b, now), Check::Mismatch));
        // another account's token of the same name is another token
        assert!(matches!(t.check("other", "x", &b, now), Check::New));
        // 10 minutes after completion the token is new again
        let later = now + Duration::from_secs(601);
        assert!(matches!(t.check("s", "x", &b, later), Check::New));
    }

    #[test]
    fn digest_ignores_key_order_only() {
        let a: Value = serde_json::from_str(r#"{"a": 1, "b": [1, {"c": "x", "d": null}]}"#)
            .unwrap_or_default();
        let b: Value = serde_json::from_str(r#"{"b": [1, {"d": null, "c": "x"}], "a": 1}"#)
            .unwrap_or_default();
        let c: Value = serde_json::from_str(r#"{"b": [{"d": null, "c": "x"}, 1], "a": 1}"#)
            .unwrap_or_default();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&c));
    }

    #[test]
    fn a_failed_request_frees_its_token() {
        let mut t = Tokens::new(Duration::from_secs(600));
        let now = Instant::now();
        let a = json!({"ClientRequestToken": "y"});
        assert!(matches!(t.check("s", "y", &a, now), Check::New));
        t.abandon("s", "y");
        assert!(matches!(t.check("s", "y", &a, now), Check::New));
    }
}
