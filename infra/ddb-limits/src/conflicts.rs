//! Per-item write ownership of in-flight transactions.
//!
//! DynamoDB runs a `TransactWriteItems` in two phases and, while it is
//! running, the items it writes belong to it: "Transaction conflict
//! handling" (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html#transaction-conflict-handling>)
//! lists the resulting refusals:
//!
//! - a `PutItem`, `UpdateItem` or `DeleteItem` on such an item fails with
//!   `TransactionConflictException`;
//! - another `TransactWriteItems` touching it is cancelled
//!   (`TransactionCanceledException`, reason `TransactionConflict` on that
//!   item);
//! - a `TransactGetItems` touching it is cancelled the same way.
//!
//! DynamoDB Local serialises everything, so it never shows any of this. The
//! proxy makes a transaction own its items from the moment it is admitted
//! (including the `--tx-latency-ms` hold) until its upstream answer is in.

use std::collections::HashMap;

/// Which in-flight transaction owns which item.
#[derive(Debug, Default)]
pub struct Conflicts {
    owners: HashMap<String, u64>,
}

impl Conflicts {
    /// For each item, whether an in-flight transaction owns it.
    pub fn owned(&self, items: &[Option<&str>]) -> Vec<bool> {
        items
            .iter()
            .map(|item| item.is_some_and(|i| self.owners.contains_key(i)))
            .collect()
    }

    /// Transaction `tx` now owns `items`.
    pub fn claim<'a>(&mut self, tx: u64, items: impl IntoIterator<Item = &'a str>) {
        for item in items {
            self.owners.insert(item.to_string(), tx);
        }
    }

    /// Transaction `tx` is over: its items are free again.
    pub fn release<'a>(&mut self, tx: u64, items: impl IntoIterator<Item = &'a str>) {
        for item in items {
            if self.owners.get(item) == Some(&tx) {
                self.owners.remove(item);
            }
        }
    }

    /// How many items are owned right now.
    pub fn in_flight_items(&self) -> usize {
        self.owners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_lasts_until_release() {
        let mut c = Conflicts::default();
        c.claim(1, ["a", "b"]);
        assert_eq!(
            c.owned(&[Some("b"), Some("c"), None]),
            vec![true, false, false]
        );
        // a stale release by another transaction frees nothing
        c.release(2, ["a"]);
        assert_eq!(c.owned(&[Some("a")]), vec![true]);
        c.release(1, ["a", "b"]);
        assert_eq!(c.in_flight_items(), 0);
    }
}
