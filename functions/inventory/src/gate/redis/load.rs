//! Loading a sale into the gate in chunks (the protocol is in `gate/mod.rs`,
//! the scripts' side in `gate.lua`'s `begin`, `load` and `finish`).
//!
//! Each call carries at most [`LOAD_CHUNK`] orders, so however big the
//! sale, no script holds Redis for more than a few milliseconds. In a sale
//! of several buckets each order's user is counted at their home bucket and
//! its stock placed by the room each bucket has *now*: at home if it fits,
//! else in the first bucket after home (in `Layout::others` order) that has
//! room, else forced into the first. A settle that adopts an order
//! meanwhile places it by the same rule, and room only shrinks while a sale
//! loads (no holds are taken), so the two pick the same bucket and the
//! second finds the first's record there: each unit is counted once.

use redis::Value;

use super::super::buckets::Layout;
use super::super::{GateError, Hold, LoadLease, LoadStart};
use super::{bad_reply, parse_snapshot, push_orders, text, RedisGate};
use crate::sale::SaleDefinition;

/// Orders per `load` script call. Each costs Redis two hash commands, so
/// a call takes ~0.1 ms of its time (0.4 ms on a loaded 2-core host), far
/// below what would delay the sale's other clients; more per call would
/// save round trips only (`tests/gate_rebuild.rs` measures both).
pub(super) const LOAD_CHUNK: usize = 100;

impl RedisGate {
    pub(super) async fn begin(
        &self,
        sale: &SaleDefinition,
        lease_ms: i64,
    ) -> Result<LoadStart, GateError> {
        let layout = Layout::new(&sale.sale_id, sale.stock_buckets);
        let n = layout.buckets();
        let replace = n > 1 && self.lost_a_bucket(sale, &layout).await?;
        let token = ulid::Ulid::new().to_string();
        let args = |b: u16| -> Vec<String> {
            vec![
                "begin".to_owned(),
                token.clone(),
                lease_ms.to_string(),
                sale.bucket_share(b).to_string(),
                sale.per_user_limit.to_string(),
                sale.starts_ms().to_string(),
                sale.ends_ms().to_string(),
                n.to_string(),
                if b == 0 { "1" } else { "0" }.to_owned(),
                if replace { "1" } else { "0" }.to_owned(),
            ]
        };
        let answer: String = self.call(&layout, 0, args(0)).await?;
        match answer.as_str() {
            "begun" => {}
            "loaded" => return Ok(LoadStart::Loaded),
            "busy" => return Ok(LoadStart::Busy),
            _ => return Err(bad_reply("begin", &answer)),
        }
        for b in 1..n {
            let _: String = self.call(&layout, b, args(b)).await?;
        }
        self.remember(&sale.sale_id, layout);
        Ok(LoadStart::Begun(LoadLease { token, lease_ms }))
    }

    /// Whether bucket 0 has the sale loaded but another bucket is gone (its
    /// shard restarted empty, or a failover lost the writes). Which orders
    /// that bucket counted is known to no one (the ledger does not record
    /// placements), so the whole sale is loaded again, as after losing all
    /// of Redis: holds in flight elsewhere are dropped with it, and their
    /// orders are adopted when they settle.
    async fn lost_a_bucket(
        &self,
        sale: &SaleDefinition,
        layout: &Layout,
    ) -> Result<bool, GateError> {
        let replies: Vec<Vec<String>> = self
            .each_bucket(layout, vec!["snapshot".to_owned()])
            .await?;
        let mut snaps = Vec::with_capacity(replies.len());
        for r in &replies {
            snaps.push(parse_snapshot(r)?);
        }
        let lost = match snaps.first() {
            Some(Some(first)) if !first.loading => snaps.iter().filter(|s| s.is_none()).count(),
            _ => 0,
        };
        if lost > 0 {
            tracing::warn!(sale_id = %sale.sale_id, lost, "gate lost buckets of the sale; loading all of it again");
        }
        Ok(lost > 0)
    }

    pub(super) async fn page(
        &self,
        sale: &SaleDefinition,
        lease: &LoadLease,
        orders: &[Hold],
    ) -> Result<bool, GateError> {
        let layout = Layout::new(&sale.sale_id, sale.stock_buckets);
        let n = layout.buckets();
        if n == 1 {
            return Ok(self
                .load_all(&layout, 0, lease, "whole", orders)
                .await?
                .is_some());
        }
        let mut by_home: Vec<Vec<Hold>> = vec![Vec::new(); usize::from(n)];
        for o in orders {
            by_home[usize::from(layout.home(&o.user_id))].push(o.clone());
        }
        // Users first, at home. Bucket 0 is called even with nothing for
        // it: its lease is the one `begin` judges, renewed every page.
        let mut spilled: Vec<Vec<Hold>> = vec![Vec::new(); usize::from(n)];
        for (b, group) in by_home.iter().enumerate() {
            if group.is_empty() && b != 0 {
                continue;
            }
            let Some(codes) = self
                .load_all(&layout, b as u16, lease, "home", group)
                .await?
            else {
                return Ok(false);
            };
            spilled[b] = pick(group, &codes, b'u');
        }
        // Then the stock of the orders whose home had no room for it.
        for (home, mut wanting) in spilled.into_iter().enumerate() {
            let home = home as u16;
            for b in layout.others(home) {
                if wanting.is_empty() {
                    break;
                }
                let Some(codes) = self.load_all(&layout, b, lease, "stock", &wanting).await? else {
                    return Ok(false);
                };
                wanting = pick(&wanting, &codes, b'0');
            }
            if wanting.is_empty() {
                continue;
            }
            // No bucket has room: the ledger holds more than the gate's
            // stock; count it anyway (remaining dips below zero) so nothing
            // is sold twice.
            let first = layout.others(home).next().unwrap_or(home);
            if self
                .load_all(&layout, first, lease, "force", &wanting)
                .await?
                .is_none()
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// `load` calls of at most [`LOAD_CHUNK`] orders each (one call for
    /// none: it renews the lease); one code per order, or `None` if the
    /// lease is lost.
    async fn load_all(
        &self,
        layout: &Layout,
        bucket: u16,
        lease: &LoadLease,
        mode: &str,
        orders: &[Hold],
    ) -> Result<Option<Vec<u8>>, GateError> {
        let chunks: Vec<&[Hold]> = if orders.is_empty() {
            vec![&[]]
        } else {
            orders.chunks(LOAD_CHUNK).collect()
        };
        let mut codes = Vec::with_capacity(orders.len());
        for chunk in chunks {
            let mut args = vec![
                "load".to_owned(),
                lease.token.clone(),
                lease.lease_ms.to_string(),
                mode.to_owned(),
            ];
            push_orders(&mut args, chunk);
            match self.call::<Value>(layout, bucket, args).await? {
                Value::Int(-1) => return Ok(None),
                v => match text(&v) {
                    Some(c) if c.len() == chunk.len() => codes.extend_from_slice(c.as_bytes()),
                    _ => return Err(bad_reply("load", &v)),
                },
            }
        }
        Ok(Some(codes))
    }

    pub(super) async fn finish(
        &self,
        sale: &SaleDefinition,
        lease: &LoadLease,
    ) -> Result<bool, GateError> {
        let layout = Layout::new(&sale.sale_id, sale.stock_buckets);
        // Bucket 0 last: `begin` answers busy while it is loading, so a
        // sale loaded there is open in every bucket.
        for b in (0..layout.buckets()).rev() {
            let args = vec!["finish".to_owned(), lease.token.clone()];
            let finished: i64 = self.call(&layout, b, args).await?;
            if finished != 1 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The orders whose code is `code`.
fn pick(orders: &[Hold], codes: &[u8], code: u8) -> Vec<Hold> {
    orders
        .iter()
        .zip(codes)
        .filter(|(_, c)| **c == code)
        .map(|(o, _)| o.clone())
        .collect()
}
