//! The admission decision: given a planned request, forward it, refuse it
//! with the error real DynamoDB would give, or replay a cached answer, and
//! afterwards settle what it consumed and owned.
//!
//! All state that one decision reads and writes (budgets, item ownership,
//! tokens, counters) sits behind one lock, taken once per decision and never
//! held across an await, so a check and its charge are atomic.

use std::time::Instant;

use serde_json::Value;

use crate::batch::split_batch;
use crate::validate::{too_many_actions, validate_transact_write, MAX_TRANSACT_ACTIONS};

use crate::budget::{BudgetKey, Budgets};
use crate::conflicts::Conflicts;
use crate::plan::{self, Plan, Touch};
use crate::protocol::{self, Access, Cancel, ErrorAnswer, Throttled};
use crate::stats::Recorder;
use crate::tokens::{Cached, Check, Tokens};

/// What to do with a request.
#[derive(Debug)]
pub enum Admission {
    /// Forward it (with this body, when the proxy split a batch).
    Forward(Ticket),
    /// Answer this instead of forwarding.
    Refuse(ErrorAnswer),
    /// Answer this cached success again, forwarding nothing.
    Replay(Cached),
}

/// What an admitted request holds until its answer is settled.
#[derive(Debug, Default)]
pub struct Ticket {
    tx: Option<u64>,
    items: Vec<String>,
    token: Option<(String, String)>,
    /// A batch the proxy split: the body to forward instead.
    pub body: Option<Value>,
    /// ... and the part it kept back, to add to the answer's unprocessed set.
    pub unprocessed: Option<(&'static str, Value)>,
}

impl Ticket {
    /// The transaction's `ClientRequestToken`, when the answer must be cached.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }
}

/// How a forwarded request ended.
pub enum Outcome<'a> {
    /// Upstream answered (status, parsed body when JSON, raw answer).
    Answered {
        status: u16,
        body: Option<&'a Value>,
        raw: Option<Cached>,
    },
    /// No answer: upstream unreachable, or the request was abandoned.
    Lost,
}

/// The shared limit state.
#[derive(Debug)]
pub struct Limits {
    pub budgets: Budgets,
    pub conflicts: Conflicts,
    pub tokens: Tokens,
    pub recorder: Recorder,
    next_tx: u64,
    in_flight: u64,
}

fn throttled_of(t: &Touch, access: Access) -> Throttled {
    Throttled {
        table_arn: t.schema.arn.clone(),
        index: t.index.clone(),
        access,
        on_demand: t.schema.on_demand,
    }
}

impl Limits {
    pub fn new(budgets: Budgets, tokens: Tokens, recorder: Recorder) -> Limits {
        Limits {
            budgets,
            conflicts: Conflicts::default(),
            tokens,
            recorder,
            next_tx: 1,
            in_flight: 0,
        }
    }

    /// Whether one touch fits its key's budget for `second` (without charging).
    fn fits(&mut self, t: &Touch, wcu: f64, rcu: f64, second: u64) -> Option<Access> {
        if (wcu > 0.0 || t.is_write()) && !self.budgets.write_fits(&t.budget, wcu, second) {
            return Some(Access::Write);
        }
        let reads = rcu > 0.0 || t.read.is_some();
        if reads && !self.budgets.read_fits(&t.budget, rcu, second) {
            return Some(Access::Read);
        }
        None
    }

    fn charge(&mut self, key: &BudgetKey, wcu: f64, rcu: f64, second: u64) {
        self.budgets.charge(key, wcu, rcu, second);
        self.recorder.consumed(key, wcu, rcu, second);
    }

    fn refuse_throttled(
        &mut self,
        plan: &Plan,
        refused: &[(usize, Access)],
        second: u64,
    ) -> ErrorAnswer {
        self.recorder.throttled(&plan.op);
        let mut what: Vec<Throttled> = Vec::new();
        for (i, access) in refused {
            let t = &plan.touches[*i];
            self.recorder.key_throttled(&t.budget, second);
            let th = throttled_of(t, *access);
            if !what.contains(&th) {
                what.push(th);
            }
        }
        protocol::throttled(&what)
    }

    /// Decides on a planned request. `scope` is the caller's credential
    /// scope (tokens are per account), `body` its parsed JSON.
    pub fn admit(
        &mut self,
        plan: &Plan,
        body: &Value,
        scope: &str,
        second: u64,
        now: Instant,
    ) -> Admission {
        match plan.op.as_str() {
            "PutItem" | "UpdateItem" | "DeleteItem" => self.admit_single_write(plan, second),
            "GetItem" | "Query" => {
                let Some(t) = plan.touches.first() else {
                    return Admission::Forward(Ticket::default());
                };
                match self.fits(t, 0.0, 0.0, second) {
                    Some(access) => {
                        Admission::Refuse(self.refuse_throttled(plan, &[(0, access)], second))
                    }
                    None => Admission::Forward(Ticket::default()),
                }
            }
            "BatchGetItem" | "BatchWriteItem" => self.admit_batch(plan, body, second),
            "TransactGetItems" => self.admit_transact_get(plan, second),
            "TransactWriteItems" => self.admit_transact_write(plan, body, scope, second, now),
            _ => Admission::Forward(Ticket::default()),
        }
    }

    fn admit_single_write(&mut self, plan: &Plan, second: u64) -> Admission {
        let Some(t) = plan.touches.first() else {
            return Admission::Forward(Ticket::default());
        };
        if self.conflicts.owned(&[t.item.as_deref()])[0] {
            self.recorder.counters().conflict_exceptions += 1;
            return Admission::Refuse(protocol::transaction_conflict());
        }
        if let Some(access) = self.fits(t, t.wcu, 0.0, second) {
            return Admission::Refuse(self.refuse_throttled(plan, &[(0, access)], second));
        }
        self.charge(&t.budget, t.wcu, 0.0, second);
        Admission::Forward(Ticket::default())
    }

    /// A batch is not atomic: DynamoDB processes what fits and returns the
    /// rest as `UnprocessedItems` / `UnprocessedKeys`, and only "if none of
    /// the items can be processed due to insufficient provisioned throughput"
    /// answers with the throttling exception (API reference, BatchWriteItem
    /// and BatchGetItem). Items owned by an in-flight transaction are kept
    /// back the same way.
    fn admit_batch(&mut self, plan: &Plan, body: &Value, second: u64) -> Admission {
        // Only writes conflict: a read of an item a transaction is writing
        // sees the last committed version ("Transaction conflict handling").
        let owned = if plan.op == "BatchWriteItem" {
            self.conflicts.owned(
                &plan
                    .touches
                    .iter()
                    .map(|t| t.item.as_deref())
                    .collect::<Vec<_>>(),
            )
        } else {
            vec![false; plan.touches.len()]
        };
        let mut kept: Vec<usize> = Vec::new();
        let mut refused: Vec<(usize, Access)> = Vec::new();
        let mut held_back: Vec<usize> = Vec::new();
        for (i, t) in plan.touches.iter().enumerate() {
            if owned[i] {
                held_back.push(i);
            } else if let Some(access) = self.fits(t, t.wcu, 0.0, second) {
                refused.push((i, access));
                held_back.push(i);
            } else {
                self.charge(&t.budget, t.wcu, 0.0, second);
                kept.push(i);
            }
        }
        if held_back.is_empty() {
            return Admission::Forward(Ticket::default());
        }
        if kept.is_empty() && !refused.is_empty() {
            return Admission::Refuse(self.refuse_throttled(plan, &refused, second));
        }
        for (i, _) in &refused {
            self.recorder
                .key_throttled(&plan.touches[*i].budget, second);
        }
        let (forward, unprocessed, member) = split_batch(plan, body, &kept, &held_back);
        Admission::Forward(Ticket {
            body: Some(forward),
            unprocessed: Some((member, unprocessed)),
            ..Ticket::default()
        })
    }

    fn admit_transact_get(&mut self, plan: &Plan, second: u64) -> Admission {
        if plan.touches.len() > MAX_TRANSACT_ACTIONS {
            self.recorder.counters().validation_errors += 1;
            return Admission::Refuse(too_many_actions());
        }
        let owned = self.conflicts.owned(
            &plan
                .touches
                .iter()
                .map(|t| t.item.as_deref())
                .collect::<Vec<_>>(),
        );
        let mut reasons = Vec::with_capacity(plan.touches.len());
        for (i, t) in plan.touches.iter().enumerate() {
            reasons.push(if owned[i] {
                Cancel::Conflict
            } else if self.fits(t, 0.0, 0.0, second).is_some() {
                self.recorder.key_throttled(&t.budget, second);
                Cancel::Throttled {
                    on_demand: t.schema.on_demand,
                }
            } else {
                Cancel::None
            });
        }
        match self.cancel_if_needed(&plan.op, &reasons) {
            Some(answer) => Admission::Refuse(answer),
            None => Admission::Forward(Ticket::default()),
        }
    }

    fn cancel_if_needed(&mut self, op: &str, reasons: &[Cancel]) -> Option<ErrorAnswer> {
        if reasons.iter().all(|r| *r == Cancel::None) {
            return None;
        }
        if reasons.contains(&Cancel::Conflict) {
            self.recorder.counters().conflicts += 1;
        }
        if reasons
            .iter()
            .any(|r| matches!(r, Cancel::Throttled { .. }))
        {
            self.recorder.throttled(op);
        }
        Some(protocol::transaction_canceled(reasons))
    }

    fn admit_transact_write(
        &mut self,
        plan: &Plan,
        body: &Value,
        scope: &str,
        second: u64,
        now: Instant,
    ) -> Admission {
        if let Some(invalid) = validate_transact_write(plan) {
            self.recorder.counters().validation_errors += 1;
            return Admission::Refuse(invalid);
        }
        let token = body["ClientRequestToken"].as_str().map(str::to_string);
        if let Some(tok) = &token {
            match self.tokens.check(scope, tok, body, now) {
                Check::New => {}
                Check::Replay(answer) => {
                    self.recorder.counters().idempotent_replays += 1;
                    return Admission::Replay(answer);
                }
                Check::Mismatch => {
                    self.recorder.counters().idempotent_mismatches += 1;
                    return Admission::Refuse(protocol::idempotent_parameter_mismatch());
                }
                Check::InProgress => {
                    self.recorder.counters().in_progress_refusals += 1;
                    return Admission::Refuse(protocol::transaction_in_progress());
                }
            }
        }
        let owned = self.conflicts.owned(
            &plan
                .touches
                .iter()
                .map(|t| t.item.as_deref())
                .collect::<Vec<_>>(),
        );
        // Sum each partition key's units first: three 2-WCU actions on one
        // key need 6 WCU of that key's budget, all or nothing.
        let mut per_key: std::collections::BTreeMap<&BudgetKey, (f64, f64)> = Default::default();
        for t in &plan.touches {
            let e = per_key.entry(&t.budget).or_default();
            e.0 += t.wcu;
            e.1 += t.rcu;
        }
        let mut short: std::collections::BTreeSet<BudgetKey> = Default::default();
        for (key, (wcu, rcu)) in per_key {
            let fits_w = wcu <= 0.0 || self.budgets.write_fits(key, wcu, second);
            let fits_r = rcu <= 0.0 || self.budgets.read_fits(key, rcu, second);
            if !(fits_w && fits_r) {
                short.insert(key.clone());
            }
        }
        let reasons: Vec<Cancel> = plan
            .touches
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if owned[i] {
                    Cancel::Conflict
                } else if short.contains(&t.budget) {
                    self.recorder.key_throttled(&t.budget, second);
                    Cancel::Throttled {
                        on_demand: t.schema.on_demand,
                    }
                } else {
                    Cancel::None
                }
            })
            .collect();
        if let Some(answer) = self.cancel_if_needed(&plan.op, &reasons) {
            if let Some(tok) = &token {
                self.tokens.abandon(scope, tok);
            }
            return Admission::Refuse(answer);
        }
        for t in &plan.touches {
            self.charge(&t.budget, t.wcu, t.rcu, second);
        }
        let tx = self.next_tx;
        self.next_tx += 1;
        let items: Vec<String> = plan.touches.iter().filter_map(|t| t.item.clone()).collect();
        self.conflicts.claim(tx, items.iter().map(String::as_str));
        self.in_flight += 1;
        Admission::Forward(Ticket {
            tx: Some(tx),
            items,
            token: token.map(|t| (scope.to_string(), t)),
            ..Ticket::default()
        })
    }

    /// Settles an admitted request: frees its items, caches or frees its
    /// token, charges its reads, counts the commit.
    pub fn finish(
        &mut self,
        plan: Option<&Plan>,
        ticket: &mut Ticket,
        outcome: Outcome<'_>,
        second: u64,
        now: Instant,
    ) {
        if let Some(tx) = ticket.tx.take() {
            self.conflicts
                .release(tx, ticket.items.iter().map(String::as_str));
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        let token = ticket.token.take();
        match outcome {
            Outcome::Answered {
                status: 200,
                body,
                raw,
            } => {
                if let (Some((scope, tok)), Some(raw)) = (&token, raw) {
                    self.tokens.complete(scope, tok, raw, now);
                } else if let Some((scope, tok)) = &token {
                    self.tokens.abandon(scope, tok);
                }
                if let Some(plan) = plan {
                    if plan.op == "TransactWriteItems" {
                        self.recorder.counters().transactions_committed += 1;
                    }
                    if let Some(body) = body {
                        for (key, rcu) in plan::read_charges(plan, body) {
                            self.charge(&key, 0.0, rcu, second);
                        }
                    }
                }
            }
            _ => {
                if let Some((scope, tok)) = &token {
                    self.tokens.abandon(scope, tok);
                }
            }
        }
    }

    /// The throttled answer the `throttle_next` fault gives this request (a
    /// transaction cancelled with a throttling reason on every action), or
    /// with `request_level` the one `throttle_request_next` gives (a
    /// throttling exception for the whole request, transactions included).
    pub fn forced_throttle(
        &mut self,
        plan: Option<&Plan>,
        op: &str,
        request_level: bool,
        second: u64,
    ) -> ErrorAnswer {
        let Some(plan) = plan.filter(|p| !p.touches.is_empty() || p.scan.is_some()) else {
            self.recorder.throttled(op);
            return protocol::throttled(&[]);
        };
        if !request_level && (op == "TransactWriteItems" || op == "TransactGetItems") {
            let reasons: Vec<Cancel> = plan
                .touches
                .iter()
                .map(|t| Cancel::Throttled {
                    on_demand: t.schema.on_demand,
                })
                .collect();
            return self
                .cancel_if_needed(op, &reasons)
                .unwrap_or_else(|| protocol::transaction_canceled(&reasons));
        }
        let access = if protocol::is_write(op) {
            Access::Write
        } else {
            Access::Read
        };
        if let Some((schema, index, _)) = &plan.scan {
            self.recorder.throttled(op);
            return protocol::throttled(&[Throttled {
                table_arn: schema.arn.clone(),
                index: index.clone(),
                access,
                on_demand: schema.on_demand,
            }]);
        }
        let all: Vec<(usize, Access)> = (0..plan.touches.len()).map(|i| (i, access)).collect();
        self.refuse_throttled(plan, &all, second)
    }

    /// The counters, with the live gauges filled in.
    pub fn snapshot(&self) -> crate::stats::Stats {
        crate::stats::Stats {
            transactions_in_flight: self.in_flight,
            ..self.recorder.snapshot()
        }
    }

    /// Forget all consumption, ownership stays (it belongs to live requests).
    pub fn reset(&mut self) {
        self.budgets.clear();
        self.recorder.reset();
    }
}
