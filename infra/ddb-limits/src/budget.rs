//! Per-partition-key capacity budgets.
//!
//! Real DynamoDB caps every partition at 3,000 RCU and 1,000 WCU per second
//! ("Best practices for designing and using partition keys effectively",
//! <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-partition-key-design.html>),
//! and one partition-key value always lives on one partition (a single
//! item, and with an ordered sort key a whole item collection, cannot be
//! split further). So the proxy gives each partition-key value of each
//! table (or GSI) its own budget of `partition_wcu` / `partition_rcu` per
//! second.
//!
//! # Why no burst on top
//!
//! DynamoDB "retains up to 5 minutes (300 seconds) of unused read and write
//! capacity" as *burst capacity* ("Burst capacity",
//! <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/burst-adaptive-capacity.html>),
//! but that burst is table-level headroom over a table's *provisioned* rate
//! and, in AWS's words, "burst capacity can't alleviate partition-level
//! throttling ... If a resulting hot partition exceeds the per partition
//! limits of 3,000 RCU or 1,000 WCU per second, your table throttles"
//! (re:Post knowledge center,
//! <https://repost.aws/knowledge-center/dynamodb-spiky-workloads-short-intervals>).
//! Adaptive capacity isolates hot items and splits partitions, but only over
//! minutes, and never lifts one key above the per-partition limit. A
//! per-key budget already *is* that hard limit, so the documented burst
//! adds nothing on top of it: a sudden spike on one key gets exactly
//! `partition_wcu` per second, and the rest is throttled.
//!
//! # The window
//!
//! The limit is stated "per second", so budgets are counted in whole
//! wall-clock seconds: within one second a key accepts at most its budget.
//! (A sliding token bucket would let a key take up to twice its budget in a
//! calendar second after idling, which the per-second reports would then
//! show as over the limit.)
//!
//! Writes are charged before they are forwarded (their size is in the
//! request). Reads are charged after the answer, when the size is known, so
//! a read is admitted while its key has budget left in this second and may
//! overdraw it by its own size, as DynamoDB's own after-the-fact read
//! accounting does.

use std::collections::HashMap;

/// One budget: a table (or `table/index/NAME`) and a partition-key value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BudgetKey {
    /// Table name, or `table/index/INDEX` for a GSI's own partitions.
    pub resource: String,
    /// The partition-key value, as shown in reports.
    pub partition: String,
}

#[derive(Clone, Copy, Debug, Default)]
struct Window {
    second: u64,
    wcu: f64,
    rcu: f64,
}

/// The current second's consumption of every key seen recently.
#[derive(Debug)]
pub struct Budgets {
    wcu_per_s: f64,
    rcu_per_s: f64,
    keys: HashMap<BudgetKey, Window>,
}

/// Above this many keys, windows of past seconds are dropped (they hold no
/// budget any more; only the current second matters).
const PRUNE_AT: usize = 50_000;

impl Budgets {
    pub fn new(wcu_per_s: f64, rcu_per_s: f64) -> Budgets {
        Budgets {
            wcu_per_s,
            rcu_per_s,
            keys: HashMap::new(),
        }
    }

    fn window(&mut self, key: &BudgetKey, second: u64) -> &mut Window {
        if self.keys.len() > PRUNE_AT && !self.keys.contains_key(key) {
            self.keys.retain(|_, w| w.second == second);
        }
        let w = self.keys.entry(key.clone()).or_default();
        if w.second != second {
            *w = Window {
                second,
                wcu: 0.0,
                rcu: 0.0,
            };
        }
        w
    }

    /// Would `wcu` more write units fit in this key's budget for `second`?
    pub fn write_fits(&mut self, key: &BudgetKey, wcu: f64, second: u64) -> bool {
        let limit = self.wcu_per_s;
        let w = self.window(key, second);
        w.wcu + wcu <= limit + 1e-9
    }

    /// May a read on this key start (budget left), and would `rcu` units
    /// charged up front still fit?
    pub fn read_fits(&mut self, key: &BudgetKey, rcu: f64, second: u64) -> bool {
        let limit = self.rcu_per_s;
        let w = self.window(key, second);
        w.rcu < limit && w.rcu + rcu <= limit + 1e-9
    }

    /// Spend units from this key's budget for `second`.
    pub fn charge(&mut self, key: &BudgetKey, wcu: f64, rcu: f64, second: u64) {
        let w = self.window(key, second);
        w.wcu += wcu;
        w.rcu += rcu;
    }

    /// Forget all consumption (a stats reset starts budgets afresh too).
    pub fn clear(&mut self) {
        self.keys.clear();
    }
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
    fn a_key_takes_its_budget_per_second_and_no_more() {
        let mut b = Budgets::new(1_000.0, 3_000.0);
        let hot = key("hot");
        let mut accepted = 0.0;
        // a sudden spike of 5,000 1-KB writes inside one second
        for _ in 0..5_000 {
            if b.write_fits(&hot, 1.0, 100) {
                b.charge(&hot, 1.0, 0.0, 100);
                accepted += 1.0;
            }
        }
        assert_eq!(accepted, 1_000.0, "no burst absorbs a spike on one key");
        // another key is not affected
        assert!(b.write_fits(&key("cold"), 1.0, 100));
        // the next second starts a fresh budget
        assert!(b.write_fits(&hot, 1_000.0, 101));
        assert!(!b.write_fits(&hot, 1_001.0, 101));
    }

    #[test]
    fn reads_may_overdraw_once_but_not_start_when_spent() {
        let mut b = Budgets::new(1_000.0, 3_000.0);
        let k = key("k");
        assert!(b.read_fits(&k, 0.0, 7));
        b.charge(&k, 0.0, 2_999.5, 7);
        assert!(b.read_fits(&k, 0.0, 7));
        b.charge(&k, 0.0, 100.0, 7); // the answer was bigger than what was left
        assert!(!b.read_fits(&k, 0.0, 7));
        assert!(b.read_fits(&k, 0.0, 8));
    }

    #[test]
    fn reads_and_writes_are_separate_budgets() {
        let mut b = Budgets::new(10.0, 10.0);
        let k = key("k");
        b.charge(&k, 10.0, 0.0, 1);
        assert!(!b.write_fits(&k, 1.0, 1));
        assert!(b.read_fits(&k, 1.0, 1));
    }
}
