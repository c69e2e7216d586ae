//! What the proxy saw: consumed capacity per partition key per second,
//! throttles, conflicts and requests per operation.
//!
//! Rows are kept per (second, table-or-index, partition key) for the last
//! `window` seconds; the maxima are kept for the whole run (since the last
//! reset), so a long bench still reports its hottest second.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::budget::BudgetKey;

/// Consumption of one partition key in one wall-clock second.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeySecond {
    /// Unix time, whole seconds.
    pub second: u64,
    /// Table name, or `table/index/NAME` for a GSI.
    pub table: String,
    pub partition_key: String,
    /// Write units accepted (and so consumed) in this second.
    pub wcu: f64,
    /// Read units consumed in this second.
    pub rcu: f64,
    /// Requests (or transaction actions) refused for this key's budget.
    pub throttled: u64,
}

/// A snapshot of everything counted since start (or the last reset).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// DynamoDB requests received (control paths not counted).
    pub requests: u64,
    pub requests_by_op: BTreeMap<String, u64>,
    /// Requests answered as throttled (budget or `throttle_next`).
    pub throttled: u64,
    pub throttled_by_op: BTreeMap<String, u64>,
    /// Transactions cancelled with `TransactionConflict`.
    pub conflicts: u64,
    /// Single-item writes refused with `TransactionConflictException`.
    pub conflict_exceptions: u64,
    /// `TransactWriteItems` + `TransactGetItems` requests received.
    pub transactions: u64,
    /// `TransactWriteItems` forwarded and answered 200 by upstream.
    pub transactions_committed: u64,
    /// Answers replayed for a repeated `ClientRequestToken`.
    pub idempotent_replays: u64,
    pub idempotent_mismatches: u64,
    pub in_progress_refusals: u64,
    /// Requests refused by the transaction limits (ValidationException).
    pub validation_errors: u64,
    /// Faults injected, by kind (`drop_after_commit`, `error_500`, ...).
    pub faults_injected: BTreeMap<String, u64>,
    /// Total units consumed.
    pub consumed_wcu: f64,
    pub consumed_rcu: f64,
    /// The highest WCU one partition key consumed in one second.
    pub max_partition_wcu_per_s: f64,
    /// The highest RCU one partition key consumed in one second.
    pub max_partition_rcu_per_s: f64,
    /// The rows those maxima come from.
    pub hottest_write: Option<KeySecond>,
    pub hottest_read: Option<KeySecond>,
    /// Transactions admitted and not yet answered (owning their items) now.
    pub transactions_in_flight: u64,
    /// Requests held by `freeze` now.
    pub waiting_frozen: u64,
    /// Per-second rows of the retained window, oldest first (at most
    /// `max_rows`, the most consuming ones, if there are more).
    pub per_key_second: Vec<KeySecond>,
}

/// Counters behind [`Stats`].
#[derive(Debug)]
pub struct Recorder {
    stats: Stats,
    rows: BTreeMap<(u64, BudgetKey), KeySecond>,
    window: u64,
    max_rows: usize,
}

impl Recorder {
    pub fn new(window_seconds: u64, max_rows: usize) -> Recorder {
        Recorder {
            stats: Stats::default(),
            rows: BTreeMap::new(),
            window: window_seconds.max(1),
            max_rows: max_rows.max(1),
        }
    }

    /// Direct access to the plain counters.
    pub fn counters(&mut self) -> &mut Stats {
        &mut self.stats
    }

    pub fn request(&mut self, op: &str) {
        self.stats.requests += 1;
        *self.stats.requests_by_op.entry(op.to_string()).or_default() += 1;
        if op == "TransactWriteItems" || op == "TransactGetItems" {
            self.stats.transactions += 1;
        }
    }

    pub fn throttled(&mut self, op: &str) {
        self.stats.throttled += 1;
        *self
            .stats
            .throttled_by_op
            .entry(op.to_string())
            .or_default() += 1;
    }

    pub fn fault(&mut self, name: &str) {
        *self
            .stats
            .faults_injected
            .entry(name.to_string())
            .or_default() += 1;
    }

    fn row(&mut self, key: &BudgetKey, second: u64) -> &mut KeySecond {
        let oldest = second.saturating_sub(self.window);
        while let Some(((s, _), _)) = self.rows.first_key_value() {
            if *s >= oldest && self.rows.len() < self.max_rows * 4 {
                break;
            }
            self.rows.pop_first();
        }
        self.rows
            .entry((second, key.clone()))
            .or_insert_with(|| KeySecond {
                second,
                table: key.resource.clone(),
                partition_key: key.partition.clone(),
                ..KeySecond::default()
            })
    }

    /// Units consumed by `key` in `second`.
    pub fn consumed(&mut self, key: &BudgetKey, wcu: f64, rcu: f64, second: u64) {
        if wcu <= 0.0 && rcu <= 0.0 {
            return;
        }
        self.stats.consumed_wcu += wcu;
        self.stats.consumed_rcu += rcu;
        let row = self.row(key, second).clone();
        let row = KeySecond {
            wcu: row.wcu + wcu,
            rcu: row.rcu + rcu,
            ..row
        };
        if row.wcu > self.stats.max_partition_wcu_per_s {
            self.stats.max_partition_wcu_per_s = row.wcu;
            self.stats.hottest_write = Some(row.clone());
        }
        if row.rcu > self.stats.max_partition_rcu_per_s {
            self.stats.max_partition_rcu_per_s = row.rcu;
            self.stats.hottest_read = Some(row.clone());
        }
        *self.row(key, second) = row;
    }

    /// One refusal charged to `key`'s row.
    pub fn key_throttled(&mut self, key: &BudgetKey, second: u64) {
        self.row(key, second).throttled += 1;
    }

    pub fn snapshot(&self) -> Stats {
        let mut rows: Vec<KeySecond> = self.rows.values().cloned().collect();
        if rows.len() > self.max_rows {
            rows.sort_by(|a, b| (b.wcu + b.rcu).total_cmp(&(a.wcu + a.rcu)));
            rows.truncate(self.max_rows);
            rows.sort_by(|a, b| {
                (a.second, &a.table, &a.partition_key).cmp(&(b.second, &b.table, &b.partition_key))
            });
        }
        Stats {
            per_key_second: rows,
            ..self.stats.clone()
        }
    }

    pub fn reset(&mut self) {
        self.stats = Stats::default();
        self.rows.clear();
    }
}

/// The human summary printed at exit (and every `--stats-every` seconds).
pub fn summary(s: &Stats) -> String {
    let mut out = String::new();
    let ops: Vec<String> = s
        .requests_by_op
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    out.push_str(&format!(
        "ddb-limits: {} requests ({})\n",
        s.requests,
        ops.join(", ")
    ));
    out.push_str(&format!(
        "  throttled {}  conflicts {} (+{} TransactionConflictException)  transactions {} ({} committed)\n",
        s.throttled, s.conflicts, s.conflict_exceptions, s.transactions, s.transactions_committed
    ));
    out.push_str(&format!(
        "  token replays {}  mismatches {}  in progress {}  validation errors {}\n",
        s.idempotent_replays, s.idempotent_mismatches, s.in_progress_refusals, s.validation_errors
    ));
    if !s.faults_injected.is_empty() {
        let f: Vec<String> = s
            .faults_injected
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push_str(&format!("  faults injected: {}\n", f.join(", ")));
    }
    out.push_str(&format!(
        "  consumed {:.1} WCU, {:.1} RCU; highest per partition key: {:.1} WCU/s, {:.1} RCU/s\n",
        s.consumed_wcu, s.consumed_rcu, s.max_partition_wcu_per_s, s.max_partition_rcu_per_s
    ));
    for (label, row) in [("write", &s.hottest_write), ("read", &s.hottest_read)] {
        if let Some(r) = row {
            out.push_str(&format!(
                "  hottest {label} key: {} {} at {} ({:.1} WCU, {:.1} RCU, {} throttled)\n",
                r.table, r.partition_key, r.second, r.wcu, r.rcu, r.throttled
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str) -> BudgetKey {
        BudgetKey {
            resource: "t".into(),
            partition: p.into(),
        }
    }

    #[test]
    fn per_second_rows_and_maxima() {
        let mut r = Recorder::new(60, 1_000);
        r.consumed(&key("a"), 3.0, 0.0, 10);
        r.consumed(&key("a"), 2.0, 1.5, 10);
        r.consumed(&key("a"), 1.0, 0.0, 11);
        r.consumed(&key("b"), 4.0, 0.0, 11);
        r.key_throttled(&key("a"), 11);
        let s = r.snapshot();
        assert_eq!(s.max_partition_wcu_per_s, 5.0);
        assert_eq!(s.max_partition_rcu_per_s, 1.5);
        assert_eq!(s.per_key_second.len(), 3);
        assert_eq!(s.per_key_second[1].throttled, 1);
        assert_eq!(s.consumed_wcu, 10.0);
        // rows older than the window are dropped, the maxima are kept
        r.consumed(&key("c"), 1.0, 0.0, 100);
        let s = r.snapshot();
        assert_eq!(s.per_key_second.len(), 1);
        assert_eq!(s.max_partition_wcu_per_s, 5.0);
        assert!(summary(&s).contains("5.0 WCU/s"));
    }
}
