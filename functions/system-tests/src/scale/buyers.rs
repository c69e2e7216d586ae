//! Buyers as a well-behaved client is written, and the waves they come in.
//!
//! A buyer is one user with one access token and one `Idempotency-Key`
//! (api.md: a `503` on checkout means "not known yet", and retrying with the
//! same key returns the order if it was made). It checks out once and, on a
//! `503` or `429`, waits the `Retry-After` the answer carries and tries
//! again with the same key, until it gets a final answer or its deadline
//! passes. Every answer it gets is checked against the contract as it
//! arrives ([`contract_problem`]), so a stampede's evidence is kept per
//! attempt, not only per buyer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};

use super::Cluster;
use crate::Reply;

/// One user who wants one unit.
#[derive(Debug, Clone)]
pub struct Buyer {
    pub user_id: String,
    pub token: String,
    pub key: String,
}

impl Cluster {
    /// `n` fresh buyers, each its own user, token and Idempotency-Key.
    pub fn buyers(&self, n: usize) -> Vec<Buyer> {
        (0..n)
            .map(|_| {
                let (user_id, token) = self.stack.new_user();
                Buyer {
                    user_id,
                    token,
                    key: ulid::Ulid::new().to_string(),
                }
            })
            .collect()
    }
}

/// One answer a buyer got, reduced to what the audit needs.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// HTTP status; 0 when no answer came at all (transport failure).
    pub status: u16,
    /// The error code, if it was an error.
    pub code: String,
    /// The order answered by a `201`/`200`.
    pub order_id: Option<String>,
    /// How the answer breaks the contract, if it does.
    pub problem: Option<String>,
    pub at: Instant,
}

/// Everything one buyer was told, in order.
#[derive(Debug, Clone)]
pub struct BuyerOutcome {
    pub user_id: String,
    pub attempts: Vec<Attempt>,
}

impl BuyerOutcome {
    pub fn last(&self) -> Option<&Attempt> {
        self.attempts.last()
    }

    /// The order this buyer was told it has (`201` or `200`), if any.
    pub fn acknowledged(&self) -> impl Iterator<Item = (&Attempt, &str)> {
        self.attempts
            .iter()
            .filter_map(|a| a.order_id.as_deref().map(|id| (a, id)))
    }
}

/// The seconds an answer says to wait, if it says so properly.
fn retry_after(reply: &Reply) -> Option<u64> {
    reply
        .headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Why `reply` is not an answer api.md allows a checkout of `sale` by
/// `user_id` to get, or `None` if it is one. The allowed answers: `201`/`200`
/// with the buyer's own confirmed order of this sale; `409 sold_out` or
/// `limit_reached`; `503 overloaded` and `429 rate_limited`, both with
/// `Retry-After`. Every one carries `x-request-id`; every error the
/// contract's error body.
pub fn contract_problem(reply: &Reply, sale: &str, user_id: &str) -> Option<String> {
    if !reply.headers.contains_key("x-request-id") {
        return Some(format!("{} without x-request-id", reply.status));
    }
    match reply.status {
        200 | 201 => order_problem(&reply.body, sale, user_id),
        409 | 429 | 503 => error_problem(reply),
        other => Some(format!(
            "status {other} is not a checkout answer: {}",
            reply.body
        )),
    }
}

fn order_problem(order: &Value, sale: &str, user_id: &str) -> Option<String> {
    let ok = order["order_id"].as_str().is_some_and(|id| !id.is_empty())
        && order["sale_id"] == sale
        && order["user_id"] == user_id
        && order["quantity"] == 1
        && order["status"] == "confirmed"
        && order["created_at"].as_str().is_some();
    (!ok).then(|| format!("not this buyer's confirmed order: {order}"))
}

fn error_problem(reply: &Reply) -> Option<String> {
    let code = reply.code();
    let allowed = match reply.status {
        409 => ["sold_out", "limit_reached"].contains(&code),
        429 => code == "rate_limited",
        _ => code == "overloaded",
    };
    if !allowed {
        return Some(format!(
            "{} {code}: not a checkout answer here: {}",
            reply.status, reply.body
        ));
    }
    if reply.body["error"]["message"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        return Some(format!(
            "{} without an error message: {}",
            reply.status, reply.body
        ));
    }
    if reply.status != 409 && retry_after(reply).is_none_or(|s| s < 1) {
        return Some(format!(
            "{} {code} without a valid Retry-After",
            reply.status
        ));
    }
    None
}

fn attempt(result: Result<Reply, String>, sale: &str, user_id: &str) -> (Attempt, Option<u64>) {
    let at = Instant::now();
    match result {
        Ok(reply) => {
            let problem = contract_problem(&reply, sale, user_id);
            let order_id = matches!(reply.status, 200 | 201)
                .then(|| reply.body["order_id"].as_str().map(str::to_owned))
                .flatten();
            let wait = matches!(reply.status, 429 | 503).then(|| retry_after(&reply).unwrap_or(1));
            let a = Attempt {
                status: reply.status,
                code: reply.code().to_owned(),
                order_id,
                problem,
                at,
            };
            (a, wait)
        }
        Err(e) => {
            let a = Attempt {
                status: 0,
                code: String::new(),
                order_id: None,
                problem: Some(format!("no answer: {e}")),
                at,
            };
            (a, None)
        }
    }
}

/// A little jitter (0–250 ms), so retries after the same `Retry-After` do
/// not all land in the same millisecond, as with any real population.
fn jitter(seed: &str) -> Duration {
    use std::hash::BuildHasher;
    let h = std::hash::RandomState::new().hash_one(seed);
    Duration::from_millis(h % 250)
}

/// One buyer's checkout: retries `503`/`429` after `Retry-After` with the
/// same key until a final answer or `deadline`.
pub async fn buy(cluster: &Cluster, sale: &str, buyer: &Buyer, deadline: Instant) -> BuyerOutcome {
    let body = json!({ "sale_id": sale });
    let mut attempts = Vec::new();
    loop {
        let result = cluster
            .checkout(&buyer.token, &body, Some(&buyer.key))
            .await;
        let (a, wait) = attempt(result, sale, &buyer.user_id);
        attempts.push(a);
        let Some(seconds) = wait else { break };
        let resume = Instant::now() + Duration::from_secs(seconds) + jitter(&buyer.key);
        if resume >= deadline {
            break;
        }
        tokio::time::sleep_until(resume.into()).await;
    }
    BuyerOutcome {
        user_id: buyer.user_id.clone(),
        attempts,
    }
}

/// What a wave of buyers was told, and how long it took.
pub struct Wave {
    pub outcomes: Vec<BuyerOutcome>,
    pub started: Instant,
    pub elapsed: Duration,
    /// Buyers never sent because the deadline passed first.
    pub not_started: usize,
}

impl Wave {
    /// From the start to the last `201`: the sell-out time of a stampede.
    pub fn last_created_after(&self) -> Option<Duration> {
        self.outcomes
            .iter()
            .flat_map(|o| &o.attempts)
            .filter(|a| a.status == 201)
            .map(|a| a.at.duration_since(self.started))
            .max()
    }

    /// When the given fraction of all the `201`s had been answered, from
    /// the start: how a sell-out time splits into the bulk and its tail.
    pub fn created_after_fraction(&self, fraction: f64) -> Option<Duration> {
        let mut times: Vec<Duration> = self
            .outcomes
            .iter()
            .flat_map(|o| &o.attempts)
            .filter(|a| a.status == 201)
            .map(|a| a.at.duration_since(self.started))
            .collect();
        times.sort_unstable();
        let last = times.len().checked_sub(1)?;
        let at = ((times.len() as f64 * fraction).ceil() as usize).clamp(1, times.len()) - 1;
        times.get(at.min(last)).copied()
    }

    pub fn count(&self, status: u16) -> usize {
        self.outcomes
            .iter()
            .flat_map(|o| &o.attempts)
            .filter(|a| a.status == status)
            .count()
    }

    /// Attempts by `status code`, e.g. `"409 sold_out"`.
    pub fn by_answer(&self) -> BTreeMap<String, usize> {
        let mut map = BTreeMap::new();
        for a in self.outcomes.iter().flat_map(|o| &o.attempts) {
            *map.entry(format!("{} {}", a.status, a.code).trim().to_owned())
                .or_insert(0) += 1;
        }
        map
    }
}

/// Sends `buyers`, at most `width` at once, each retrying until `deadline`;
/// a buyer whose turn comes after the deadline is not sent.
pub async fn stampede(
    cluster: &Cluster,
    sale: &str,
    buyers: &[Buyer],
    width: usize,
    deadline: Instant,
) -> Wave {
    let started = Instant::now();
    let outcomes: Vec<Option<BuyerOutcome>> = futures::stream::iter(buyers)
        .map(|b| async move {
            if Instant::now() >= deadline {
                return None;
            }
            Some(buy(cluster, sale, b, deadline).await)
        })
        .buffer_unordered(width.max(1))
        .collect()
        .await;
    let not_started = outcomes.iter().filter(|o| o.is_none()).count();
    Wave {
        outcomes: outcomes.into_iter().flatten().collect(),
        started,
        elapsed: started.elapsed(),
        not_started,
    }
}

/// What watching a sale's breakdown saw: guarantee 5 at every look, and
/// how long lapsed holds stayed unresolved.
#[derive(Debug, Default)]
pub struct HoldWatch {
    pub looks: usize,
    /// Breakdowns where remaining + held + confirmed ≠ total.
    pub unbalanced: Vec<Value>,
    /// The most a hold was seen unresolved past its expiry plus the bound
    /// (zero if never).
    pub worst_overdue: Duration,
    /// The breakdown of the look that saw `worst_overdue`.
    pub worst_seen: Option<Value>,
    pub last: Option<Value>,
}

impl HoldWatch {
    /// Records one look at the breakdown, read starting at `asked_ms`.
    fn record(&mut self, breakdown: Value, asked_ms: i64, bound: Duration) {
        self.looks += 1;
        if breakdown["balanced"] != true {
            self.unbalanced.push(breakdown.clone());
        }
        let oldest = breakdown["oldest_hold_expires_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis());
        if let Some(expires_ms) = oldest {
            let overdue_ms = asked_ms - expires_ms - bound.as_millis() as i64;
            if overdue_ms > 0 && Duration::from_millis(overdue_ms as u64) > self.worst_overdue {
                self.worst_overdue = Duration::from_millis(overdue_ms as u64);
                self.worst_seen = Some(breakdown.clone());
            }
        }
        self.last = Some(breakdown);
    }

    /// Looks at the breakdown every `every` until `stop` is set.
    pub async fn watch(cluster: &Cluster, sale: &str, every: Duration, stop: &AtomicBool) -> Self {
        let mut watch = Self::default();
        while !stop.load(Ordering::Relaxed) {
            watch.look(cluster, sale).await;
            tokio::time::sleep(every).await;
        }
        watch
    }

    pub async fn look(&mut self, cluster: &Cluster, sale: &str) -> Value {
        let asked_ms = chrono::Utc::now().timestamp_millis();
        let b = cluster.stack.breakdown(sale).await;
        self.record(b.clone(), asked_ms, cluster.lapse_bound());
        b
    }
}

/// A stampede with a [`HoldWatch`] looking at the breakdown throughout.
pub async fn watched_stampede(
    cluster: &Cluster,
    sale: &str,
    buyers: &[Buyer],
    width: usize,
    deadline: Instant,
) -> (Wave, HoldWatch) {
    let stop = AtomicBool::new(false);
    let run = async {
        let wave = stampede(cluster, sale, buyers, width, deadline).await;
        stop.store(true, Ordering::Relaxed);
        wave
    };
    let watch = HoldWatch::watch(cluster, sale, Duration::from_millis(250), &stop);
    tokio::join!(run, watch)
}

/// After a stampede: fresh buyers keep arriving (a few every 200 ms, more
/// while units remain) until every unit is confirmed and nothing is held,
/// or `within` passes. The traffic matters: sweeps are started by requests,
/// so this is also what makes lapsed holds come back (guarantee 4). Every
/// look at the breakdown goes into `watch`.
pub async fn mop_up(
    cluster: &Cluster,
    sale: &str,
    within: Duration,
    watch: &mut HoldWatch,
) -> Wave {
    let started = Instant::now();
    let deadline = started + within;
    let mut running = FuturesUnordered::new();
    let mut outcomes = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            Some(outcome) = running.next(), if !running.is_empty() => outcomes.push(outcome),
            _ = tick.tick() => {
                let b = watch.look(cluster, sale).await;
                let remaining = b["stock_remaining"].as_i64().unwrap_or(0);
                let held = b["held"].as_i64().unwrap_or(0);
                if (remaining <= 0 && held == 0) || Instant::now() >= deadline {
                    break;
                }
                let n = if remaining > 0 { remaining.min(20) as usize } else { 2 };
                for b in cluster.buyers(n) {
                    running.push(async move { buy(cluster, sale, &b, deadline).await });
                }
            }
        }
    }
    while let Some(outcome) = running.next().await {
        outcomes.push(outcome);
    }
    Wave {
        outcomes,
        started,
        elapsed: started.elapsed(),
        not_started: 0,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;

    fn reply(status: u16, body: Value, retry_after: Option<&str>) -> Reply {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("r"));
        if let Some(r) = retry_after {
            headers.insert("retry-after", HeaderValue::from_str(r).expect("ascii"));
        }
        Reply {
            status,
            headers,
            body,
        }
    }

    fn error(code: &str) -> Value {
        json!({"error": {"code": code, "message": "m"}})
    }

    #[test]
    fn contract_answers_pass() {
        let order = json!({"order_id": "s.h", "sale_id": "s", "user_id": "u", "quantity": 1, "status": "confirmed", "created_at": "2026-01-01T00:00:00.000Z"});
        for ok in [
            reply(201, order.clone(), None),
            reply(200, order, None),
            reply(409, error("sold_out"), None),
            reply(409, error("limit_reached"), None),
            reply(503, error("overloaded"), Some("1")),
            reply(429, error("rate_limited"), Some("3")),
        ] {
            assert_eq!(contract_problem(&ok, "s", "u"), None, "{ok:?}");
        }
    }

    #[test]
    fn answers_outside_the_contract_are_caught() {
        let someone_elses = json!({"order_id": "s.h", "sale_id": "s", "user_id": "v", "quantity": 1, "status": "confirmed", "created_at": "t"});
        for bad in [
            reply(500, error("internal"), None),
            reply(503, error("overloaded"), None),
            reply(503, error("overloaded"), Some("soon")),
            reply(409, error("idempotency_key_reused"), None),
            reply(409, json!({"error": {"code": "sold_out"}}), None),
            reply(201, someone_elses, None),
        ] {
            assert!(contract_problem(&bad, "s", "u").is_some(), "{bad:?}");
        }
        let mut no_id = reply(409, error("sold_out"), None);
        no_id.headers.remove("x-request-id");
        assert!(contract_problem(&no_id, "s", "u").is_some());
    }

    #[test]
    fn a_hold_unresolved_past_the_bound_is_seen_overdue() {
        let now = chrono::Utc::now().timestamp_millis();
        let look = |expired_ms_ago: i64| {
            let expires = chrono::DateTime::from_timestamp_millis(now - expired_ms_ago)
                .expect("a valid time")
                .to_rfc3339();
            json!({"balanced": true, "oldest_hold_expires_at": expires})
        };
        let mut watch = HoldWatch::default();
        watch.record(look(1_000), now, Duration::from_secs(4));
        watch.record(
            json!({"balanced": false, "oldest_hold_expires_at": null}),
            now,
            Duration::from_secs(4),
        );
        assert_eq!(watch.worst_overdue, Duration::ZERO, "within the bound");
        watch.record(look(10_000), now, Duration::from_secs(4));
        assert_eq!(watch.worst_overdue, Duration::from_secs(6));
        assert_eq!((watch.looks, watch.unbalanced.len()), (3, 1));
    }
}
