//! The gate on Redis: every operation is one call of `gate.lua`.
//!
//! `EVALSHA` is tried first and the script is re-sent on `NOSCRIPT`, so a
//! Redis that restarted (and forgot its scripts) costs one extra round trip.

use async_trait::async_trait;
use common::backends::RedisConn;
use redis::{Script, Value};

use super::{parse_record, GateError, GateSnapshot, Hold, HoldOutcome, HoldState, StockGate};
use crate::sale::{HoldId, SaleDefinition, SaleId};

pub struct RedisGate {
    conn: RedisConn,
    script: Script,
}

impl RedisGate {
    pub fn new(conn: RedisConn) -> Self {
        Self {
            conn,
            script: Script::new(include_str!("gate.lua")),
        }
    }

    /// The four keys of a sale; the `{sale}` hash tag keeps them in one slot.
    fn keys(sale: &SaleId) -> [String; 4] {
        ["sale", "users", "holds", "expiry"].map(|k| format!("fs:{{{sale}}}:{k}"))
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        sale: &SaleId,
        args: Vec<String>,
    ) -> Result<T, GateError> {
        let mut invocation = self.script.prepare_invoke();
        for key in Self::keys(sale) {
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

#[async_trait]
impl StockGate for RedisGate {
    async fn load(&self, sale: &SaleDefinition, confirmed: &[Hold]) -> Result<bool, GateError> {
        let mut args = vec![
            "load".to_owned(),
            sale.stock_total.to_string(),
            sale.per_user_limit.to_string(),
            sale.starts_ms().to_string(),
            sale.ends_ms().to_string(),
        ];
        push_orders(&mut args, confirmed);
        let loaded: i64 = self.call(&sale.sale_id, args).await?;
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
        let args = vec![
            "hold".to_owned(),
            hold_id.to_string(),
            user_id.to_owned(),
            quantity.to_string(),
            ttl_ms.to_string(),
        ];
        let reply: Vec<Value> = self.call(sale, args).await?;
        let fields: Vec<String> = reply.iter().filter_map(text).collect();
        let num = |i: usize| fields.get(i).and_then(|s| s.parse::<i64>().ok());
        let outcome = match fields.first().map(String::as_str) {
            Some("held") => HoldOutcome::Held(Hold {
                hold_id: hold_id.clone(),
                user_id: user_id.to_owned(),
                quantity,
                expires_ms: num(1).ok_or_else(|| bad_reply("hold", &fields))?,
            }),
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
            let adopted: i64 = self.call(sale, args).await?;
            if adopted < 0 {
                return Ok(None);
            }
            adopted_total += adopted as u64;
        }
        Ok(Some(adopted_total))
    }

    async fn release(&self, sale: &SaleId, hold: &Hold) -> Result<bool, GateError> {
        let args = vec![
            "release".to_owned(),
            hold.hold_id.to_string(),
            hold.expires_ms.to_string(),
        ];
        let released: i64 = self.call(sale, args).await?;
        Ok(released == 1)
    }

    async fn lookup(
        &self,
        sale: &SaleId,
        hold_id: &HoldId,
    ) -> Result<Option<HoldState>, GateError> {
        let rec: Option<String> = self
            .call(sale, vec!["lookup".to_owned(), hold_id.to_string()])
            .await?;
        Ok(rec.and_then(|r| parse_record(hold_id, &r)))
    }

    async fn claim_expired(
        &self,
        sale: &SaleId,
        max: usize,
        lease_ms: i64,
    ) -> Result<Vec<Hold>, GateError> {
        let args = vec!["claim".to_owned(), max.to_string(), lease_ms.to_string()];
        let flat: Vec<String> = self.call(sale, args).await?;
        Ok(flat
            .chunks(2)
            .filter_map(|pair| {
                let id = HoldId::parse(pair.first()?)?;
                match parse_record(&id, pair.get(1)?)? {
                    HoldState::Held(hold) => Some(hold),
                    HoldState::Settled { .. } => None,
                }
            })
            .collect())
    }

    async fn snapshot(&self, sale: &SaleId) -> Result<Option<GateSnapshot>, GateError> {
        let f: Vec<String> = self.call(sale, vec!["snapshot".to_owned()]).await?;
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

    async fn forget(&self, sale: &SaleId) -> Result<(), GateError> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(&Self::keys(sale)[..])
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| GateError(e.to_string()))
    }

    async fn ready(&self) -> Result<(), String> {
        common::backends::redis_ping(&self.conn).await
    }
}
