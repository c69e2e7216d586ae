//! Which bucket counters a batch of orders is charged to.
//!
//! The stock is B counters, each capped at its share (`schema`), so the
//! ledger can never hold more than the sale's stock whatever is charged
//! where. Where to charge is a matter of speed only:
//!
//! - each instance charges one *home* bucket, picked at random, so that
//!   instances rarely write the same counter at the same time (real
//!   DynamoDB cancels transactions that meet on an item);
//! - a conflict on the home counter moves home elsewhere, at random: two
//!   instances that met part, and a crowd of them spreads out;
//! - when home runs dry, another is picked at random among those believed
//!   to have room;
//! - what each bucket has left is believed, not read, until a counter
//!   refuses a charge; then all are read (one strongly consistent batch)
//!   and the batch is planned again. A counter only ever grows (nothing
//!   leaves the ledger), so a belief, made from the capacities or from a
//!   read and lowered by this instance's own charges, is never below the
//!   truth: an order the believed room cannot cover is sold out.

use rand::Rng;

use super::schema::SaleLayout;
use super::{lock, Inner};
use crate::ledger::LedgerError;
use crate::sale::SaleId;

/// One bucket counter as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counter {
    pub capacity: u64,
    pub confirmed: u64,
}

/// What this instance believes about one sale's buckets.
pub(super) struct Buckets {
    /// At least what each bucket has left (see above).
    room: Vec<u64>,
    home: u16,
}

/// What a plan does with one order of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cover {
    /// Charged: it goes in this transaction.
    Yes,
    /// No buckets have its units between them.
    SoldOut,
    /// The transaction has no room for more counters: the next one.
    Later,
}

/// A batch's charges: units per bucket, and what it does with each order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    pub charges: Vec<(u16, u64)>,
    pub cover: Vec<Cover>,
}

impl Buckets {
    fn new(layout: SaleLayout) -> Self {
        Self {
            room: (0..layout.buckets).map(|k| layout.capacity(k)).collect(),
            home: rand::thread_rng().gen_range(0..layout.buckets.max(1)),
        }
    }

    /// A bucket other than home with room, at random (home if none).
    fn elsewhere(&self) -> u16 {
        let others: Vec<u16> = (0..self.room.len() as u16)
            .filter(|&k| k != self.home && self.room[usize::from(k)] > 0)
            .collect();
        if others.is_empty() {
            return self.home;
        }
        others[rand::thread_rng().gen_range(0..others.len())]
    }

    /// Orders in batch order, each charged from home first, then from the
    /// next buckets round; an order the buckets cannot cover is skipped
    /// (a smaller one after it may fit). At most `max_counters` counters.
    fn plan(&self, quantities: &[u64], max_counters: usize) -> Plan {
        let n = self.room.len();
        let mut room = self.room.clone();
        let mut charges: Vec<(u16, u64)> = Vec::new();
        let mut cover = Vec::with_capacity(quantities.len());
        for &q in quantities {
            let mut take: Vec<(u16, u64)> = Vec::new();
            let mut need = q;
            for step in 0..n {
                if need == 0 {
                    break;
                }
                let k = (usize::from(self.home) + step) % n;
                let units = room[k].min(need);
                if units > 0 {
                    take.push((k as u16, units));
                    need -= units;
                }
            }
            let new_counters = take
                .iter()
                .filter(|(k, _)| !charges.iter().any(|(c, _)| c == k))
                .count();
            if need > 0 {
                cover.push(Cover::SoldOut);
                continue;
            }
            if charges.len() + new_counters > max_counters {
                cover.push(Cover::Later);
                continue;
            }
            cover.push(Cover::Yes);
            for (k, units) in take {
                room[usize::from(k)] -= units;
                match charges.iter_mut().find(|(c, _)| *c == k) {
                    Some((_, total)) => *total += units,
                    None => charges.push((k, units)),
                }
            }
        }
        Plan { charges, cover }
    }
}

impl Inner {
    fn with_buckets<T>(
        &self,
        sale: &SaleId,
        layout: SaleLayout,
        f: impl FnOnce(&mut Buckets) -> T,
    ) -> T {
        let mut all = lock(&self.stock);
        let b = all
            .entry(sale.clone())
            .or_insert_with(|| Buckets::new(layout));
        f(b)
    }

    pub(super) fn plan(
        &self,
        sale: &SaleId,
        layout: SaleLayout,
        quantities: &[u64],
        max_counters: usize,
    ) -> Plan {
        self.with_buckets(sale, layout, |b| b.plan(quantities, max_counters))
    }

    /// A plan was committed: its units are gone from the buckets.
    pub(super) fn charged(&self, sale: &SaleId, layout: SaleLayout, plan: &Plan) {
        self.with_buckets(sale, layout, |b| {
            for &(k, units) in &plan.charges {
                let r = &mut b.room[usize::from(k)];
                *r = r.saturating_sub(units);
            }
            // Home ran dry: a random one next, not the neighbour every
            // committer spills into. (Reading the counters first, to pick
            // one surely with room, measured slower: a read per dry bucket
            // costs more than the occasional refused batch.)
            if b.room[usize::from(b.home)] == 0 {
                b.home = b.elsewhere();
            }
        });
    }

    /// A counter refused a charge: read what every bucket has left, and
    /// move home if it has nothing.
    pub(super) async fn refresh(
        &self,
        sale: &SaleId,
        layout: SaleLayout,
    ) -> Result<(), LedgerError> {
        let counters = self.read_counters(sale, layout).await?;
        self.with_buckets(sale, layout, |b| {
            b.room = counters
                .iter()
                .map(|c| c.capacity.saturating_sub(c.confirmed))
                .collect();
            if b.room[usize::from(b.home)] == 0 {
                b.home = b.elsewhere();
            }
        });
        Ok(())
    }

    /// Another transaction wrote one of these counters at the same time:
    /// go elsewhere next time.
    pub(super) fn contended(&self, sale: &SaleId, layout: SaleLayout, counters: &[u16]) {
        self.with_buckets(sale, layout, |b| {
            if counters.contains(&b.home) {
                b.home = b.elsewhere();
                common::metrics::counter("ledger_bucket_moves_total").inc();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(room: &[u64], home: u16) -> Buckets {
        Buckets {
            room: room.to_vec(),
            home,
        }
    }

    #[test]
    fn a_batch_is_charged_to_home_while_it_has_room() {
        let plan = buckets(&[5, 5, 5], 1).plan(&[1, 2, 1], 10);
        assert_eq!(plan.charges, vec![(1, 4)]);
        assert_eq!(plan.cover, vec![Cover::Yes; 3]);
    }

    #[test]
    fn an_order_larger_than_home_takes_the_rest_from_the_next_buckets() {
        let plan = buckets(&[2, 1, 0, 3], 1).plan(&[3, 2], 10);
        assert_eq!(plan.charges, vec![(1, 1), (3, 3), (0, 1)]);
        assert_eq!(plan.cover, vec![Cover::Yes; 2]);
    }

    #[test]
    fn an_order_nothing_covers_is_skipped_and_a_smaller_one_after_it_fits() {
        let plan = buckets(&[1, 1], 0).plan(&[3, 1, 2], 10);
        assert_eq!(plan.cover, vec![Cover::SoldOut, Cover::Yes, Cover::SoldOut]);
        assert_eq!(plan.charges, vec![(0, 1)]);
    }

    #[test]
    fn a_plan_never_names_more_counters_than_a_transaction_has_room_for() {
        let plan = buckets(&[1, 1, 1, 1], 0).plan(&[1, 1, 1, 1], 2);
        assert_eq!(
            plan.cover,
            vec![Cover::Yes, Cover::Yes, Cover::Later, Cover::Later]
        );
        assert_eq!(plan.charges.len(), 2);
    }

    #[test]
    fn moving_home_goes_to_a_bucket_with_room() {
        let mut b = buckets(&[0, 4, 0, 0], 0);
        for _ in 0..20 {
            b.home = 0;
            assert_eq!(b.elsewhere(), 1);
        }
        b = buckets(&[0, 0], 0);
        assert_eq!(b.elsewhere(), 0, "no bucket has room: home stays");
    }
}
