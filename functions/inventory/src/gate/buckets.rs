//! One hot sale over many Redis shards: the stock split into buckets.
//!
//! Redis Cluster puts a key in one of 16,384 hash slots by the CRC16 of its
//! hash tag (the part in `{}`), and each slot lives on one shard. A gate
//! whose keys share one tag runs on one shard's single core, however big
//! the cluster. So a sale of `n` buckets has `n` tags, one per bucket, chosen
//! so their slots fall in `n` different `1/n`-th parts of the slot space:
//! with the slots split evenly over `n` primaries (what `redis-cli --cluster
//! create` and ElastiCache do), each bucket lands on a primary of its own.
//!
//! * Bucket 0 keeps the tag `{sale}`: a sale of one bucket is laid out
//!   exactly as before buckets existed, and bucket 0 records how many
//!   buckets the sale has (the only fact an instance must look up).
//! * Each user has a *home* bucket (a hash of the user id). The home bucket
//!   counts every unit the user holds or bought, so the per-user limit is one
//!   atomic check in one place. A checkout takes its stock at home when it
//!   can (one script, one round trip), and otherwise takes the user's count
//!   at home (a *user part*) and the stock from the next bucket that has
//!   any (a *stock part*), giving the user part back if none has.
//! * `409 sold_out` therefore means every bucket was empty when asked.

use crate::sale::SaleId;

/// Hash slots in a Redis Cluster.
const SLOTS: u32 = 16_384;

/// Where each bucket of one sale lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    tags: Vec<String>,
}

impl Layout {
    pub fn new(sale: &SaleId, buckets: u16) -> Self {
        let n = u32::from(buckets.max(1));
        let base = sale.as_str().to_owned();
        let home_part = part_of(slot(base.as_bytes()), n);
        // The parts of the slot space not taken by bucket 0, in order.
        let mut free_parts = (0..n).filter(|p| *p != home_part);
        let mut tags = vec![base];
        for b in 1..n {
            let part = free_parts.next().unwrap_or(0);
            // '#' cannot appear in a sale id, so no other sale's tag can be
            // one of these. A matching suffix turns up after ~n tries.
            let tag = (0..10_000u32)
                .map(|k| format!("{sale}#{b}.{k}"))
                .find(|t| part_of(slot(t.as_bytes()), n) == part)
                .unwrap_or_else(|| format!("{sale}#{b}"));
            tags.push(tag);
        }
        Self { tags }
    }

    pub fn buckets(&self) -> u16 {
        self.tags.len() as u16
    }

    /// The four keys of bucket `b`, in `gate.lua`'s order.
    pub fn keys(&self, b: u16) -> [String; 4] {
        let tag = &self.tags[usize::from(b) % self.tags.len()];
        ["sale", "users", "holds", "expiry"].map(|k| format!("fs:{{{tag}}}:{k}"))
    }

    /// The bucket that counts `user`'s units. Any stable hash would do; the
    /// cluster's own CRC16 needs no extra dependency.
    pub fn home(&self, user: &str) -> u16 {
        (u32::from(crc16::State::<crc16::XMODEM>::calculate(user.as_bytes()))
            % self.tags.len() as u32) as u16
    }

    /// The other buckets, in the order a checkout tries them after `home`.
    pub fn others(&self, home: u16) -> impl Iterator<Item = u16> {
        let n = self.buckets();
        (1..n).map(move |i| (home + i) % n)
    }
}

/// The slot of a key whose whole text is its hash tag.
fn slot(tag: &[u8]) -> u32 {
    u32::from(crc16::State::<crc16::XMODEM>::calculate(tag)) % SLOTS
}

fn part_of(slot: u32, n: u32) -> u32 {
    slot * n / SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sale::SaleDefinition;

    fn sale_id(s: &str) -> SaleId {
        SaleId::parse(s).unwrap()
    }

    #[test]
    fn one_bucket_is_the_old_layout() {
        let l = Layout::new(&sale_id("phones"), 1);
        assert_eq!(l.keys(0)[0], "fs:{phones}:sale");
        assert_eq!(l.home("anyone"), 0);
        assert_eq!(l.others(0).count(), 0);
    }

    #[test]
    fn buckets_fall_in_different_parts_of_the_slot_space() {
        for n in [2u16, 3, 4, 8] {
            for s in ["phones", "a", "sale-2026-12", "Z_9"] {
                let l = Layout::new(&sale_id(s), n);
                let mut parts: Vec<u32> = (0..n)
                    .map(|b| {
                        let key = &l.keys(b)[0];
                        let tag = &key[key.find('{').unwrap() + 1..key.find('}').unwrap()];
                        part_of(slot(tag.as_bytes()), u32::from(n))
                    })
                    .collect();
                parts.sort();
                parts.dedup();
                assert_eq!(parts.len(), usize::from(n), "{s} over {n}");
            }
        }
    }

    #[test]
    fn slots_match_redis_cluster() {
        // What `redis-cli cluster keyslot` answers for these keys.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"phones"), 10512);
    }

    #[test]
    fn homes_spread_users_and_others_visit_every_other_bucket() {
        let l = Layout::new(&sale_id("phones"), 4);
        let mut seen = [0u32; 4];
        for i in 0..4000 {
            seen[usize::from(l.home(&format!("user-{i}")))] += 1;
        }
        assert!(seen.iter().all(|c| (700..1300).contains(c)), "{seen:?}");
        let mut others: Vec<u16> = l.others(2).collect();
        assert_eq!(others, [3, 0, 1]);
        others.sort();
        assert_eq!(others, [0, 1, 3]);
    }

    #[test]
    fn shares_add_up_to_the_stock() {
        let sale = SaleDefinition::new("s", "S", 10, None, None, None, chrono::Utc::now())
            .unwrap()
            .with_stock_buckets(3)
            .unwrap();
        let shares: Vec<u64> = (0..3).map(|b| sale.bucket_share(b)).collect();
        assert_eq!(shares, [4, 3, 3]);
    }
}
