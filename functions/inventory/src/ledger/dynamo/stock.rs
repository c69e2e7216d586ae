//! Which bucket counters a batch of orders is charged to.
//!
//! The stock is B counters, each capped at its share (`schema`), so the
//! ledger can never hold more than the sale's stock whatever is charged
//! where. Where to charge is a matter of speed only:
//!
//! - each instance walks the buckets in an order of its own, shuffled at
//!   random, and charges the first of them (its *home*) while it has room,
//!   so that instances rarely write the same counter at the same time (real
//!   DynamoDB cancels transactions that meet on an item);
//! - a batch home cannot cover takes the rest from the next buckets of the
//!   instance's own order, not from home's neighbours, which would be every
//!   instance's spill-over (measured: a batch spilling into a neighbour
//!   another instance was writing conflicted up to five times in a row);
//! - a counter another transaction was writing (a conflict) goes to the
//!   end of the walk, home or not: two instances that met part, and a crowd
//!   of them spreads out; a bucket that runs dry goes to the end too;
//! - what each bucket has left is believed, not read, until a counter
//!   refuses a charge; then all are read (one strongly consistent batch)
//!   and the batch is planned again. A counter only ever grows (nothing
//!   leaves the ledger), so a belief, made from the capacities or from a
//!   read and lowered by this instance's own charges, is never below the
//!   truth: an order the believed room cannot cover is sold out.

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
    /// Every bucket once, in the order this instance charges them: home
    /// first, buckets with room before dry ones.
    walk: Vec<u16>,
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
        use rand::seq::SliceRandom as _;
        let mut walk: Vec<u16> = (0..layout.buckets.max(1)).collect();
        walk.shuffle(&mut rand::thread_rng());
        Self {
            room: (0..layout.buckets).map(|k| layout.capacity(k)).collect(),
            walk,
        }
    }

    fn home(&self) -> u16 {
        self.walk.first().copied().unwrap_or(0)
    }

    /// Dry buckets to the end of the walk (the order otherwise kept).
    fn dry_last(&mut self) {
        let room = &self.room;
        self.walk
            .sort_by_key(|&k| room.get(usize::from(k)).is_none_or(|&r| r == 0));
    }

    /// These counters were being written by another transaction: to the
    /// end of the walk (before the dry ones). Whether home moved.
    fn avoid(&mut self, counters: &[u16]) -> bool {
        let home = self.home();
        let (mut kept, met): (Vec<u16>, Vec<u16>) =
            self.walk.iter().partition(|k| !counters.contains(k));
        kept.extend(met);
        self.walk = kept;
        self.dry_last();
        self.home() != home
    }

    /// Orders in batch order, each charged from home first, then from the
    /// next buckets of the walk; an order the buckets cannot cover is
    /// skipped (a smaller one after it may fit). At most `max_counters`
    /// counters.
    fn plan(&self, quantities: &[u64], max_counters: usize) -> Plan {
        let mut room = self.room.clone();
        let mut charges: Vec<(u16, u64)> = Vec::new();
        let mut cover = Vec::with_capacity(quantities.len());
        for &q in quantities {
            let mut take: Vec<(u16, u64)> = Vec::new();
            let mut need = q;
            for &k in &self.walk {
                if need == 0 {
                    break;
                }
                let Some(left) = room.get(usize::from(k)) else {
                    continue;
                };
                let units = (*left).min(need);
                if units > 0 {
                    take.push((k, units));
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
            // Home ran dry: the next of the walk, which is random, not the
            // neighbour every committer would spill into. (Reading the
            // counters first, to pick one surely with room, measured
            // slower: a read per dry bucket costs more than the occasional
            // refused batch.)
            b.dry_last();
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
            b.dry_last();
        });
        Ok(())
    }

    /// Another transaction wrote these counters at the same time: charge
    /// them last from now on.
    pub(super) fn contended(&self, sale: &SaleId, layout: SaleLayout, counters: &[u16]) {
        self.with_buckets(sale, layout, |b| {
            if b.avoid(counters) {
                common::metrics::counter("ledger_bucket_moves_total").inc();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets walked from `home` round, as a shuffled walk might be.
    fn buckets(room: &[u64], home: u16) -> Buckets {
        let n = room.len() as u16;
        Buckets {
            room: room.to_vec(),
            walk: (0..n).map(|step| (home + step) % n).collect(),
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
    fn a_dry_home_gives_way_to_the_next_bucket_of_the_walk_with_room() {
        let mut b = buckets(&[0, 0, 4, 0, 3], 0);
        b.dry_last();
        assert_eq!(b.home(), 2);
        assert_eq!(b.walk, vec![2, 4, 0, 1, 3], "dry ones last, order kept");
        b = buckets(&[0, 0], 1);
        b.dry_last();
        assert_eq!(b.home(), 1, "no bucket has room: home stays");
    }

    #[test]
    fn a_contended_counter_is_charged_last_and_spill_over_avoids_it() {
        // Home 0 has 2 left; a batch of 5 spilled into 1, which another
        // instance was writing.
        let mut b = buckets(&[2, 10, 10, 10], 0);
        assert_eq!(b.plan(&[5], 10).charges, vec![(0, 2), (1, 3)]);
        assert!(!b.avoid(&[1]), "home stays");
        assert_eq!(b.plan(&[5], 10).charges, vec![(0, 2), (2, 3)]);
        // Now home itself met another: it moves, and is charged last.
        assert!(b.avoid(&[0]));
        assert_eq!(b.home(), 2);
        assert_eq!(b.walk, vec![2, 3, 1, 0]);
        assert_eq!(b.plan(&[5], 10).charges, vec![(2, 5)]);
    }

    #[test]
    fn each_instance_walks_the_buckets_in_its_own_order() {
        let layout = SaleLayout {
            buckets: 16,
            stock_total: 1600,
            starts_at: chrono::Utc::now(),
            ends_at: None,
        };
        let walks: std::collections::HashSet<Vec<u16>> =
            (0..20).map(|_| Buckets::new(layout).walk).collect();
        assert!(walks.len() > 1, "shuffled, not one order for all");
        for walk in &walks {
            let mut sorted = walk.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..16).collect::<Vec<u16>>(), "every bucket once");
        }
    }
}
