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

mod load;
mod split;

use super::buckets::Layout;
use super::{
    parse_record, GateError, GateSnapshot, Hold, HoldOutcome, HoldState, LoadLease, LoadStart,
    StockGate,
};
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
            script: Script::new(include_str!("../gate.lua")),
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
        common::redis_client::invoke_script(&self.conn, &invocation)
            .await
            .map_err(|e| GateError(e.to_string()))
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
        // One call per bucket: a cluster refuses keys of several slots in
        // one. UNLINK: the holds of a big sale are freed off Redis' thread.
        for b in 0..layout.buckets() {
            redis::cmd("UNLINK")
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
}

/// A record of a stock part only (`hk`, `sk`): its quantity is the part's.
fn is_stock_part(rec: &str) -> bool {
    rec.as_bytes().get(1) == Some(&b'k')
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
            loading: f.get(6).is_some_and(|s| s == "1"),
        })
    })();
    parsed.map(Some).ok_or_else(|| bad_reply("snapshot", &f))
}

#[async_trait]
impl StockGate for RedisGate {
    async fn begin_load(
        &self,
        sale: &SaleDefinition,
        lease_ms: i64,
    ) -> Result<LoadStart, GateError> {
        self.begin(sale, lease_ms).await
    }

    async fn load_page(
        &self,
        sale: &SaleDefinition,
        lease: &LoadLease,
        orders: &[Hold],
    ) -> Result<bool, GateError> {
        self.page(sale, lease, orders).await
    }

    async fn finish_load(
        &self,
        sale: &SaleDefinition,
        lease: &LoadLease,
    ) -> Result<bool, GateError> {
        self.finish(sale, lease).await
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
            Some("loading") => HoldOutcome::Loading,
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
