//! The gate on Redis: every operation is calls of `gate.lua`, one per
//! bucket it touches (see `buckets.rs` for how a sale's stock is split).
//!
//! `EVALSHA` is tried first and the script is re-sent on `NOSCRIPT`, so a
//! Redis that restarted (or a replica just promoted) costs one extra round
//! trip; in cluster mode the script is loaded on the primaries.
//!
//! A sale of one bucket takes exactly the round trips it always did. With
//! more, a checkout at a user's home bucket is still one; only checkouts
//! whose home bucket is empty visit the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::backends::RedisConn;
use redis::{Script, Value};

use super::buckets::{place_confirmed, Layout};
use super::{parse_record, GateError, GateSnapshot, Hold, HoldOutcome, HoldState, StockGate};
use crate::sale::{HoldId, SaleDefinition, SaleId};

/// Layouts remembered at most; sales are few, and a layout is cheap to
/// look up again.
const LAYOUT_CACHE: usize = 10_000;

pub struct RedisGate {
    conn: RedisConn,
    script: Script,
    /// A sale's bucket count never changes, so each instance looks it up
    /// once (in bucket 0) and keeps it.
    layouts: Mutex<HashMap<SaleId, Arc<Layout>>>,
}

impl RedisGate {
    pub fn new(conn: RedisConn) -> Self {
        Self {
            conn,
            script: Script::new(include_str!("gate.lua")),
            layouts: Mutex::new(HashMap::new()),
        }
    }

    /// One `gate.lua` call on one bucket.
    async fn call<T: redis::FromRedisValue>(
        &self,
        layout: &Layout,
        bucket: u16,
        args: Vec<String>,
    ) -> Result<T, GateError> {
        let mut invocation = self.script.prepare_invoke();
        for key in layout.keys(bucket) {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let mut conn = self.conn.clone();
        match invocation.invoke_async(&mut conn).await {
            Ok(v) => Ok(v),
            // A connection that died with a Redis restart fails the first
            // command sent on it; the manager has reconnected by now. The
            // command never reached Redis, so sending it again is safe.
            Err(e) if e.is_connection_dropped() || e.is_connection_refusal() => invocation
                .invoke_async(&mut conn)
                .await
                .map_err(|e| GateError(e.to_string())),
            Err(e) => Err(GateError(e.to_string())),
        }
    }

    fn remember(&self, sale: &SaleId, layout: Layout) -> Arc<Layout> {
        let layout = Arc::new(layout);
        let mut layouts = self.layouts.lock().unwrap_or_else(|p| p.into_inner());
        if layouts.len() >= LAYOUT_CACHE {
            layouts.clear();
        }
        layouts.insert(sale.clone(), layout.clone());
        layout
    }

    /// The sale's layout: remembered, or read from bucket 0. `None` when
    /// the gate does not have the sale.
    async fn layout(&self, sale: &SaleId) -> Result<Option<Arc<Layout>>, GateError> {
        let cached = self
            .layouts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sale)
            .cloned();
        if let Some(layout) = cached {
            return Ok(Some(layout));
        }
        let single = Layout::new(sale, 1);
        let buckets: Option<u16> = self.call(&single, 0, vec!["buckets".into()]).await?;
        Ok(buckets.map(|n| self.remember(sale, Layout::new(sale, n))))
    }

    async fn delete_buckets(&self, layout: &Layout) -> Result<(), GateError> {
        let mut conn = self.conn.clone();
        // One DEL per bucket: a cluster refuses keys of several slots in one.
        for b in 0..layout.buckets() {
            redis::cmd("DEL")
                .arg(&layout.keys(b)[..])
                .query_async::<i64>(&mut conn)
                .await
                .map_err(|e| GateError(e.to_string()))?;
        }
        Ok(())
    }

    /// Each bucket's reply to the same call, in bucket order, sent at once.
    async fn each_bucket<T: redis::FromRedisValue>(
        &self,
        layout: &Layout,
        args: Vec<String>,
    ) -> Result<Vec<T>, GateError> {
        let calls = (0..layout.buckets()).map(|b| self.call::<T>(layout, b, args.clone()));
        futures::future::try_join_all(calls).await
    }

    async fn load_bucketed(
        &self,
        sale: &SaleDefinition,
        layout: &Layout,
        confirmed: &[Hold],
    ) -> Result<bool, GateError> {
        // Which buckets the gate still has. Some but not all: a shard lost
        // its part of the sale (restarted empty, or a failover lost the
        // writes). Which orders that bucket counted is known to no one (the
        // ledger does not record placements), so the whole sale is loaded
        // again, as after losing all of Redis: holds in flight elsewhere are
        // dropped with it, and their orders are adopted when they settle.
        let present: Vec<Vec<String>> = self
            .each_bucket(layout, vec!["snapshot".to_owned()])
            .await?;
        let have = present.iter().filter(|f| !f.is_empty()).count();
        if have == present.len() {
            return Ok(false);
        }
        if have > 0 {
            tracing::warn!(sale_id = %sale.sale_id, lost = present.len() - have, "gate lost buckets of the sale; loading all of it again");
            self.delete_buckets(layout).await?;
        }
        let plan = place_confirmed(sale, layout, confirmed);
        let mut any = false;
        // Bucket 0 last: it records the bucket count, which is what tells
        // another instance the sale is there at all.
        for b in (0..layout.buckets()).rev() {
            let load = &plan[usize::from(b)];
            let mut args = window_args(sale, sale.bucket_share(b));
            push_orders(&mut args, &load.whole);
            args.push(layout.buckets().to_string());
            push_orders(&mut args, &load.user_parts);
            push_orders(&mut args, &load.stock_parts);
            let loaded: i64 = self.call(layout, b, args).await?;
            any |= loaded == 1;
        }
        Ok(any)
    }

    /// After the user's home bucket had no stock and took their count as a
    /// user part: the stock from the other buckets, as much from each as
    /// it has, until the hold is whole. If they have too little between
    /// them, everything taken goes back and the answer is sold out.
    async fn take_elsewhere(
        &self,
        layout: &Layout,
        home: u16,
        hold: Hold,
        home_counts: (i64, i64),
        taken_at_home: u64,
    ) -> Result<HoldOutcome, GateError> {
        let (mut held, mut remaining) = home_counts;
        let mut missing = u64::from(hold.quantity).saturating_sub(taken_at_home);
        let mut refusal = None;
        for b in layout.others(home) {
            if missing == 0 {
                break;
            }
            let args = vec![
                "take".to_owned(),
                hold.hold_id.to_string(),
                hold.user_id.clone(),
                missing.to_string(),
                hold.expires_ms.to_string(),
            ];
            let reply = match self.call::<Vec<Value>>(layout, b, args).await {
                Ok(reply) => reply,
                Err(e) => {
                    self.give_back(layout, home, &hold).await;
                    return Err(e);
                }
            };
            let fields: Vec<String> = reply.iter().filter_map(text).collect();
            let num = |i: usize| fields.get(i).and_then(|s| s.parse::<i64>().ok());
            match fields.first().map(String::as_str) {
                Some("held") => {
                    let taken = num(1).unwrap_or(0).max(0);
                    missing = missing.saturating_sub(taken as u64);
                    // Given back if the hold cannot be made whole: then
                    // these units count as what remains.
                    remaining += taken;
                }
                Some("sold_out") => {
                    held += num(1).unwrap_or(0);
                    remaining += num(2).unwrap_or(0);
                }
                // A stock part left by an earlier attempt with this id (its
                // release did not reach this bucket): it lapses and is swept.
                Some("exists") => {}
                Some("upcoming") => refusal = Some(HoldOutcome::Upcoming),
                Some("ended") => refusal = Some(HoldOutcome::Ended),
                Some("missing") => refusal = Some(HoldOutcome::Missing),
                _ => {
                    self.give_back(layout, home, &hold).await;
                    return Err(bad_reply("take", &fields));
                }
            }
            if refusal.is_some() {
                break;
            }
        }
        if missing == 0 && refusal.is_none() {
            return Ok(HoldOutcome::Held(hold));
        }
        self.give_back(layout, home, &hold).await;
        Ok(refusal.unwrap_or(HoldOutcome::SoldOut { remaining, held }))
    }

    /// Gives back every part of a hold that could not be made whole (best
    /// effort: a part this misses lapses, and the sweeper releases it, as
    /// the ledger has no order for it).
    async fn give_back(&self, layout: &Layout, home: u16, hold: &Hold) {
        if let Err(e) = self.release_parts(layout, home, hold).await {
            tracing::warn!(hold_id = %hold.hold_id, error = %e, "could not give a split hold back; it lapses");
        }
    }

    /// Releases the hold at home and, unless it was whole there, its stock
    /// parts everywhere else (only parts with this exact expiry go).
    async fn release_parts(
        &self,
        layout: &Layout,
        home: u16,
        hold: &Hold,
    ) -> Result<bool, GateError> {
        let args = vec![
            "release".to_owned(),
            hold.hold_id.to_string(),
            hold.expires_ms.to_string(),
        ];
        let released: i64 = self.call(layout, home, args.clone()).await?;
        if released == 1 || layout.buckets() == 1 {
            return Ok(released == 1);
        }
        let mut any = released != 0;
        for b in layout.others(home) {
            any |= self.call::<i64>(layout, b, args.clone()).await? != 0;
        }
        Ok(any)
    }

    /// Settles orders over buckets: each at its user's home first (where
    /// all of nearly every order is), then whatever parts are elsewhere,
    /// then adopts what no bucket had. Returns the orders adopted, or
    /// `None` if a bucket lost the sale.
    async fn settle_bucketed(
        &self,
        layout: &Layout,
        orders: &[Hold],
    ) -> Result<Option<u64>, GateError> {
        let n = usize::from(layout.buckets());
        let mut found = vec![Found::default(); orders.len()];
        let mut by_home: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, o) in orders.iter().enumerate() {
            by_home[usize::from(layout.home(&o.user_id))].push(i);
        }
        for (b, idx) in by_home.iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            let Some(codes) = self.settle_parts(layout, b as u16, orders, idx).await? else {
                return Ok(None);
            };
            mark(&mut found, idx, &codes);
        }
        // Stock parts live outside the home bucket: look everywhere else
        // for the orders whose home had less than all of their units.
        let wanting: Vec<usize> = (0..orders.len())
            .filter(|i| found[*i].stock < i64::from(orders[*i].quantity))
            .collect();
        if !wanting.is_empty() {
            for b in 0..n {
                let idx: Vec<usize> = wanting
                    .iter()
                    .copied()
                    .filter(|i| usize::from(layout.home(&orders[*i].user_id)) != b)
                    .collect();
                if idx.is_empty() {
                    continue;
                }
                let Some(codes) = self.settle_parts(layout, b as u16, orders, &idx).await? else {
                    return Ok(None);
                };
                mark(&mut found, &idx, &codes);
            }
        }
        let mut adopted = 0;
        for (i, order) in orders.iter().enumerate() {
            let f = found[i];
            let missing = i64::from(order.quantity) - f.stock;
            if f.user && missing <= 0 {
                continue;
            }
            adopted += 1;
            let home = layout.home(&order.user_id);
            if !f.user && f.stock == 0 && self.adopt(layout, home, "b", false, order).await? {
                continue;
            }
            if !f.user {
                self.adopt(layout, home, "u", true, order).await?;
            }
            if missing > 0 {
                let part = Hold {
                    quantity: missing as u32,
                    ..order.clone()
                };
                self.adopt_stock_elsewhere(layout, home, &part).await?;
            }
        }
        Ok(Some(adopted))
    }

    /// Counts a confirmed order's stock (all or what no part carried) in
    /// a bucket other than the user's home, one with room if any has.
    async fn adopt_stock_elsewhere(
        &self,
        layout: &Layout,
        home: u16,
        part: &Hold,
    ) -> Result<(), GateError> {
        for b in layout.others(home) {
            if self.adopt(layout, b, "k", false, part).await? {
                return Ok(());
            }
        }
        // No bucket has room: the ledger holds more than the gate thinks is
        // left; count it anyway (remaining dips below zero) so nothing is
        // sold twice.
        for b in layout.others(home) {
            if self.adopt(layout, b, "k", true, part).await? {
                return Ok(());
            }
        }
        tracing::warn!(hold_id = %part.hold_id, "no bucket could count a confirmed order's stock; a rebuild will");
        Ok(())
    }

    async fn settle_parts(
        &self,
        layout: &Layout,
        bucket: u16,
        orders: &[Hold],
        idx: &[usize],
    ) -> Result<Option<Vec<String>>, GateError> {
        let mut codes = Vec::with_capacity(idx.len());
        for chunk in idx.chunks(1000) {
            let mut args = vec!["settle_parts".to_owned()];
            let picked: Vec<Hold> = chunk.iter().map(|i| orders[*i].clone()).collect();
            push_orders(&mut args, &picked);
            match self.call::<Value>(layout, bucket, args).await? {
                Value::Int(-1) => return Ok(None),
                Value::Array(items) => {
                    codes.extend(items.iter().map(|v| text(v).unwrap_or_default()))
                }
                v => return Err(bad_reply("settle_parts", &v)),
            }
        }
        Ok(Some(codes))
    }

    async fn adopt(
        &self,
        layout: &Layout,
        bucket: u16,
        part: &str,
        force: bool,
        order: &Hold,
    ) -> Result<bool, GateError> {
        let mut args = vec![
            "adopt".to_owned(),
            part.to_owned(),
            if force { "1" } else { "0" }.to_owned(),
        ];
        push_orders(&mut args, std::slice::from_ref(order));
        let reply: Value = self.call(layout, bucket, args).await?;
        Ok(text(&reply).is_some_and(|codes| codes == "1"))
    }
}

/// What the buckets had of one order: its user's count, and units of stock.
#[derive(Debug, Default, Clone, Copy)]
struct Found {
    user: bool,
    stock: i64,
}

/// Records what one bucket reported of each order: `b`, `u`, `k` or `p`
/// followed by the units of stock that part carried, or `-`.
fn mark(found: &mut [Found], idx: &[usize], codes: &[String]) {
    for (i, code) in idx.iter().zip(codes) {
        let f = &mut found[*i];
        let units: i64 = code.get(1..).and_then(|n| n.parse().ok()).unwrap_or(0);
        match code.as_bytes().first() {
            Some(b'b' | b'u' | b'p') => f.user = true,
            Some(b'k') => {}
            _ => continue,
        }
        f.stock += units;
    }
}

/// A record of a stock part only (`hk`, `sk`): its quantity is the part's.
fn is_stock_part(rec: &str) -> bool {
    rec.as_bytes().get(1) == Some(&b'k')
}

fn window_args(sale: &SaleDefinition, total: u64) -> Vec<String> {
    vec![
        "load".to_owned(),
        total.to_string(),
        sale.per_user_limit.to_string(),
        sale.starts_ms().to_string(),
        sale.ends_ms().to_string(),
    ]
}

fn push_orders(args: &mut Vec<String>, orders: &[Hold]) {
    args.push(orders.len().to_string());
    for o in orders {
        args.push(o.hold_id.to_string());
        args.push(o.user_id.clone());
        args.push(o.quantity.to_string());
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn bad_reply(what: &str, v: &impl std::fmt::Debug) -> GateError {
    GateError(format!("unexpected reply to {what}: {v:?}"))
}

fn parse_snapshot(f: &[String]) -> Result<Option<GateSnapshot>, GateError> {
    if f.is_empty() {
        return Ok(None);
    }
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<i64>().ok());
    let parsed = (|| {
        Some(GateSnapshot {
            total: num(0)?,
            remaining: num(1)?,
            held: num(2)?,
            confirmed: num(3)?,
            open_holds: num(4)? as u64,
            oldest_expiry_ms: f
                .get(5)
                .and_then(|s| s.parse::<f64>().ok())
                .map(|v| v as i64),
        })
    })();
    parsed.map(Some).ok_or_else(|| bad_reply("snapshot", &f))
}

#[async_trait]
impl StockGate for RedisGate {
    async fn load(&self, sale: &SaleDefinition, confirmed: &[Hold]) -> Result<bool, GateError> {
        let layout = Layout::new(&sale.sale_id, sale.stock_buckets);
        if layout.buckets() > 1 {
            let loaded = self.load_bucketed(sale, &layout, confirmed).await?;
            self.remember(&sale.sale_id, layout);
            return Ok(loaded);
        }
        let mut args = window_args(sale, sale.stock_total);
        push_orders(&mut args, confirmed);
        let loaded: i64 = self.call(&layout, 0, args).await?;
        self.remember(&sale.sale_id, layout);
        Ok(loaded == 1)
    }

    async fn try_hold(
        &self,
        sale: &SaleId,
        hold_id: &HoldId,
        user_id: &str,
        quantity: u32,
        ttl_ms: i64,
    ) -> Result<HoldOutcome, GateError> {
        let Some(layout) = self.layout(sale).await? else {
            return Ok(HoldOutcome::Missing);
        };
        let home = layout.home(user_id);
        let spill = layout.buckets() > 1;
        let args = vec![
            "hold".to_owned(),
            hold_id.to_string(),
            user_id.to_owned(),
            quantity.to_string(),
            ttl_ms.to_string(),
            if spill { "1" } else { "0" }.to_owned(),
        ];
        let reply: Vec<Value> = self.call(&layout, home, args).await?;
        let fields: Vec<String> = reply.iter().filter_map(text).collect();
        let num = |i: usize| fields.get(i).and_then(|s| s.parse::<i64>().ok());
        let hold = |expires_ms| Hold {
            hold_id: hold_id.clone(),
            user_id: user_id.to_owned(),
            quantity,
            expires_ms,
        };
        let outcome = match fields.first().map(String::as_str) {
            Some("held") => {
                HoldOutcome::Held(hold(num(1).ok_or_else(|| bad_reply("hold", &fields))?))
            }
            Some("spill") => {
                let expires = num(1).ok_or_else(|| bad_reply("hold", &fields))?;
                let counts = (num(2).unwrap_or(0), num(3).unwrap_or(0));
                let here = num(4).unwrap_or(0).max(0) as u64;
                return self
                    .take_elsewhere(&layout, home, hold(expires), counts, here)
                    .await;
            }
            Some("sold_out") => HoldOutcome::SoldOut {
                held: num(1).unwrap_or(0),
                remaining: num(2).unwrap_or(0),
            },
            Some("limit") => HoldOutcome::LimitReached,
            Some("upcoming") => HoldOutcome::Upcoming,
            Some("ended") => HoldOutcome::Ended,
            Some("missing") => HoldOutcome::Missing,
            Some("exists") => {
                let rec = fields.get(1).ok_or_else(|| bad_reply("hold", &fields))?;
                HoldOutcome::Exists(
                    parse_record(hold_id, rec).ok_or_else(|| bad_reply("hold", rec))?,
                )
            }
            _ => return Err(bad_reply("hold", &fields)),
        };
        Ok(outcome)
    }

    async fn settle(&self, sale: &SaleId, orders: &[Hold]) -> Result<Option<u64>, GateError> {
        let Some(layout) = self.layout(sale).await? else {
            return Ok(None);
        };
        if layout.buckets() > 1 {
            return self.settle_bucketed(&layout, orders).await;
        }
        let mut adopted_total = 0;
        // Chunked so one call never carries an unbounded argument list.
        let chunks: Vec<&[Hold]> = if orders.is_empty() {
            vec![&[]]
        } else {
            orders.chunks(1000).collect()
        };
        for chunk in chunks {
            let mut args = vec!["settle".to_owned()];
            push_orders(&mut args, chunk);
            let adopted: i64 = self.call(&layout, 0, args).await?;
            if adopted < 0 {
                return Ok(None);
            }
            adopted_total += adopted as u64;
        }
        Ok(Some(adopted_total))
    }

    async fn release(&self, sale: &SaleId, hold: &Hold) -> Result<bool, GateError> {
        let Some(layout) = self.layout(sale).await? else {
            return Ok(false);
        };
        let home = layout.home(&hold.user_id);
        self.release_parts(&layout, home, hold).await
    }

    async fn lookup(
        &self,
        sale: &SaleId,
        hold_id: &HoldId,
    ) -> Result<Option<HoldState>, GateError> {
        let Some(layout) = self.layout(sale).await? else {
            return Ok(None);
        };
        // The id alone does not say which bucket is the user's home. The
        // record there (the only one that counts the user) tells the whole
        // hold; a stock part elsewhere tells the same state and user, but
        // only its own units.
        let recs: Vec<Option<String>> = self
            .each_bucket(&layout, vec!["lookup".to_owned(), hold_id.to_string()])
            .await?;
        let mut recs: Vec<String> = recs.into_iter().flatten().collect();
        recs.sort_by_key(|r| is_stock_part(r));
        Ok(recs.iter().find_map(|r| parse_record(hold_id, r)))
    }

    async fn claim_expired(
        &self,
        sale: &SaleId,
        max: usize,
        lease_ms: i64,
    ) -> Result<Vec<Hold>, GateError> {
        let Some(layout) = self.layout(sale).await? else {
            return Ok(Vec::new());
        };
        let per_bucket = max.div_ceil(usize::from(layout.buckets())).max(1);
        let args = vec![
            "claim".to_owned(),
            per_bucket.to_string(),
            lease_ms.to_string(),
        ];
        let flats: Vec<Vec<String>> = self.each_bucket(&layout, args).await?;
        // The parts of a split hold are one hold to resolve: keep one per
        // attempt (id and expiry), the user's part where it is among them.
        let mut records: Vec<(HoldId, String)> = flats
            .iter()
            .flat_map(|flat| flat.chunks(2))
            .filter_map(|pair| Some((HoldId::parse(pair.first()?)?, pair.get(1)?.clone())))
            .collect();
        records.sort_by_key(|(_, rec)| is_stock_part(rec));
        let mut seen = std::collections::HashSet::new();
        let mut holds = Vec::new();
        for (id, rec) in records {
            if let Some(HoldState::Held(hold)) = parse_record(&id, &rec) {
                if seen.insert((hold.hold_id.clone(), hold.expires_ms)) {
                    holds.push(hold);
                }
            }
        }
        Ok(holds)
    }

    async fn snapshot(&self, sale: &SaleId) -> Result<Option<GateSnapshot>, GateError> {
        let buckets = self.bucket_snapshots(sale).await?;
        Ok(buckets.map(|b| GateSnapshot::sum(&b)))
    }

    async fn bucket_snapshots(
        &self,
        sale: &SaleId,
    ) -> Result<Option<Vec<GateSnapshot>>, GateError> {
        let Some(layout) = self.layout(sale).await? else {
            return Ok(None);
        };
        let replies: Vec<Vec<String>> = self
            .each_bucket(&layout, vec!["snapshot".to_owned()])
            .await?;
        let mut snaps = Vec::with_capacity(replies.len());
        for f in &replies {
            match parse_snapshot(f)? {
                Some(s) => snaps.push(s),
                // A bucket lost (a shard restarted empty): rebuild.
                None => return Ok(None),
            }
        }
        Ok(Some(snaps))
    }

    async fn forget(&self, sale: &SaleId) -> Result<(), GateError> {
        let layout = match self.layout(sale).await? {
            Some(l) => l,
            None => Arc::new(Layout::new(sale, 1)),
        };
        self.layouts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sale);
        self.delete_buckets(&layout).await
    }

    async fn ready(&self) -> Result<(), String> {
        common::backends::redis_ping(&self.conn).await
    }
}
