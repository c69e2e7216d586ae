//! Sales and orders as domain types: an id that exists is a valid id.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

/// `^[A-Za-z0-9_-]{1,64}$`. Also safe inside Redis keys and DynamoDB sort keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SaleId(String);

impl SaleId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = (1..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err("sale_id must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SaleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An order's id: the sale it belongs to and the hold that became it,
/// written `<sale_id>.<hold_id>`. Opaque to clients; carrying the sale lets
/// `GET /orders/{id}` find the order with one strongly consistent read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrderId {
    pub sale_id: SaleId,
    pub hold_id: HoldId,
}

impl OrderId {
    pub fn parse(raw: &str) -> Option<Self> {
        let (sale, hold) = raw.split_once('.')?;
        Some(Self {
            sale_id: SaleId::parse(sale).ok()?,
            hold_id: HoldId::parse(hold)?,
        })
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.sale_id, self.hold_id)
    }
}

/// 26 characters of Crockford base32: a ULID for a plain checkout, or a hash
/// of (user, Idempotency-Key) so that every replay names the same hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HoldId(String);

impl HoldId {
    pub fn random() -> Self {
        Self(ulid::Ulid::new().to_string())
    }

    /// The same user and key always give the same id; different users never
    /// collide in practice (128 bits of SHA-256).
    pub fn for_idempotency_key(user_id: &str, key: &str) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new()
            .chain_update(user_id.as_bytes())
            .chain_update([0u8])
            .chain_update(key.as_bytes())
            .finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(ulid::Ulid::from_bytes(bytes).to_string())
    }

    pub fn parse(raw: &str) -> Option<Self> {
        (raw.len() == 26 && raw.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Sorts before every id: a range bound for ordered maps, never an id.
    pub(crate) fn lowest() -> Self {
        Self(String::new())
    }
}

impl fmt::Display for HoldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a sale is; immutable once created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleDefinition {
    pub sale_id: SaleId,
    pub name: String,
    pub stock_total: u64,
    pub per_user_limit: u32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// How many parts the gate splits the stock into, each under a hash tag
    /// of its own so that on a Redis Cluster they land on different shards
    /// (see `gate/buckets.rs`). 1, the default, is one part: one shard.
    pub stock_buckets: u16,
    /// Contract v1.1: buyers are admitted to checkout through a waiting
    /// room (`waiting_room/`); `None` for a sale without one.
    pub waiting_room: Option<crate::waiting_room::RoomConfig>,
}

pub const MAX_STOCK: u64 = 10_000_000;
/// More parts than shards buys nothing; 64 covers any cluster we expect.
pub const MAX_STOCK_BUCKETS: u16 = 64;

impl SaleDefinition {
    /// Validates a new sale as the contract states it.
    pub fn new(
        sale_id: &str,
        name: &str,
        stock_total: i64,
        per_user_limit: Option<i64>,
        starts_at: Option<&str>,
        ends_at: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Self, String> {
        let sale_id = SaleId::parse(sale_id)?;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err("name must be 1-200 characters".into());
        }
        if !(1..=MAX_STOCK as i64).contains(&stock_total) {
            return Err(format!("stock must be between 1 and {MAX_STOCK}"));
        }
        let per_user_limit = per_user_limit.unwrap_or(1);
        if !(1..=u32::MAX as i64).contains(&per_user_limit) {
            return Err("per_user_limit must be at least 1".into());
        }
        let parse_time = |field: &str, raw: &str| {
            DateTime::parse_from_rfc3339(raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| format!("{field} must be an RFC 3339 timestamp"))
        };
        let starts_at = starts_at
            .map(|s| parse_time("starts_at", s))
            .transpose()?
            .unwrap_or(now);
        let ends_at = ends_at.map(|s| parse_time("ends_at", s)).transpose()?;
        if ends_at.is_some_and(|end| end <= starts_at) {
            return Err("ends_at must be after starts_at".into());
        }
        Ok(Self {
            sale_id,
            name: name.to_owned(),
            stock_total: stock_total as u64,
            per_user_limit: per_user_limit as u32,
            starts_at,
            ends_at,
            created_at: now,
            stock_buckets: 1,
            waiting_room: None,
        })
    }

    /// The same sale with its stock split into `buckets` parts; every part
    /// must hold at least one unit.
    pub fn with_stock_buckets(mut self, buckets: i64) -> Result<Self, String> {
        let max = i64::from(MAX_STOCK_BUCKETS).min(self.stock_total as i64);
        if !(1..=max).contains(&buckets) {
            return Err(format!(
                "stock_buckets must be between 1 and {max} (at most {MAX_STOCK_BUCKETS}, and no more than the stock)"
            ));
        }
        self.stock_buckets = buckets as u16;
        Ok(self)
    }

    /// Units in bucket `b`: the stock split as evenly as it goes, the first
    /// `stock_total % buckets` parts one unit larger.
    pub fn bucket_share(&self, b: u16) -> u64 {
        let n = u64::from(self.stock_buckets.max(1));
        self.stock_total / n + u64::from(u64::from(b) < self.stock_total % n)
    }

    pub fn window(&self, now: DateTime<Utc>) -> Window {
        if now < self.starts_at {
            Window::Upcoming
        } else if self.ends_at.is_some_and(|end| now >= end) {
            Window::Ended
        } else {
            Window::Open
        }
    }

    pub fn starts_ms(&self) -> i64 {
        self.starts_at.timestamp_millis()
    }

    /// `i64::MAX` stands for "never ends".
    pub fn ends_ms(&self) -> i64 {
        self.ends_at.map_or(i64::MAX, |t| t.timestamp_millis())
    }

    pub fn view(&self, stock_remaining: u64, now: DateTime<Utc>) -> SaleView {
        let status = match self.window(now) {
            Window::Upcoming => SaleStatus::Upcoming,
            _ if stock_remaining == 0 => SaleStatus::SoldOut,
            Window::Ended => SaleStatus::Ended,
            Window::Open => SaleStatus::Live,
        };
        SaleView {
            sale_id: self.sale_id.to_string(),
            name: self.name.clone(),
            stock_total: self.stock_total,
            stock_remaining,
            per_user_limit: self.per_user_limit,
            status,
            starts_at: rfc3339(self.starts_at),
            ends_at: self.ends_at.map(rfc3339),
            waiting_room: self.waiting_room,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Upcoming,
    Open,
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleStatus {
    Upcoming,
    Live,
    SoldOut,
    Ended,
}

/// The contract's sale view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SaleView {
    pub sale_id: String,
    pub name: String,
    pub stock_total: u64,
    pub stock_remaining: u64,
    pub per_user_limit: u32,
    pub status: SaleStatus,
    pub starts_at: String,
    pub ends_at: Option<String>,
    /// Only on a sale with a waiting room: the same object it was created with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_room: Option<crate::waiting_room::RoomConfig>,
}

/// A confirmed order, as the ledger stores it and the contract shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub order_id: OrderId,
    pub user_id: String,
    pub quantity: u32,
    pub created_at: DateTime<Utc>,
    pub idempotency_key: Option<String>,
}

impl Order {
    pub fn sale_id(&self) -> &SaleId {
        &self.order_id.sale_id
    }
}

/// The contract's order body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderView {
    pub order_id: String,
    pub sale_id: String,
    pub user_id: String,
    pub quantity: u32,
    pub status: &'static str,
    pub created_at: String,
}

impl From<&Order> for OrderView {
    fn from(o: &Order) -> Self {
        Self {
            order_id: o.order_id.to_string(),
            sale_id: o.sale_id().to_string(),
            user_id: o.user_id.clone(),
            quantity: o.quantity,
            status: "confirmed",
            created_at: rfc3339(o.created_at),
        }
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// `base` plus up to `spread` of it, different at every call: retries and
/// delayed work spread out instead of arriving together. (No `rand` needed
/// for this.)
pub fn jittered(base: std::time::Duration, spread: f64) -> std::time::Duration {
    use std::hash::{BuildHasher, RandomState};
    let bits = RandomState::new().hash_one(std::time::Instant::now());
    let fraction = (bits >> 11) as f64 / (1u64 << 53) as f64;
    base + base.mul_f64(fraction * spread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn sale_validation_follows_the_contract() {
        let ok =
            SaleDefinition::new("phone-drop_1", "Phones", 1000, None, None, None, now()).unwrap();
        assert_eq!(ok.per_user_limit, 1);
        assert_eq!(ok.starts_at, now());
        for (id, stock, limit) in [
            ("", 1, None),
            ("a b", 1, None),
            ("a", 0, None),
            ("a", 10_000_001, None),
            ("a", 5, Some(0)),
            ("a", -1, None),
        ] {
            assert!(
                SaleDefinition::new(id, "n", stock, limit, None, None, now()).is_err(),
                "{id} {stock} {limit:?}"
            );
        }
        assert!(SaleDefinition::new(&"x".repeat(65), "n", 1, None, None, None, now()).is_err());
        assert!(SaleDefinition::new("a", "n", 1, None, Some("yesterday"), None, now()).is_err());
        assert!(SaleDefinition::new(
            "a",
            "n",
            1,
            None,
            Some("2026-12-01T00:00:00Z"),
            Some("2026-11-30T00:00:00Z"),
            now()
        )
        .is_err());
        assert!(SaleDefinition::new("a", "  ", 1, None, None, None, now()).is_err());
    }

    #[test]
    fn status_follows_window_and_stock() {
        let later = "2026-11-29T13:00:00Z";
        let end = "2026-11-29T14:00:00Z";
        let sale = SaleDefinition::new("s", "n", 10, None, Some(later), Some(end), now()).unwrap();
        assert_eq!(sale.view(10, now()).status, SaleStatus::Upcoming);
        let during = now() + chrono::Duration::minutes(90);
        assert_eq!(sale.view(10, during).status, SaleStatus::Live);
        assert_eq!(sale.view(0, during).status, SaleStatus::SoldOut);
        let after = now() + chrono::Duration::hours(3);
        assert_eq!(sale.view(3, after).status, SaleStatus::Ended);
        assert_eq!(sale.view(0, after).status, SaleStatus::SoldOut);
    }

    #[test]
    fn order_ids_round_trip_and_reject_junk() {
        let id = OrderId {
            sale_id: SaleId::parse("s-1").unwrap(),
            hold_id: HoldId::random(),
        };
        assert_eq!(OrderId::parse(&id.to_string()), Some(id));
        for junk in [
            "",
            "nodot",
            "s.short",
            "bad id.01ARZ3NDEKTSV4RRFFQ69G5FAV",
            ".01ARZ3NDEKTSV4RRFFQ69G5FAV",
        ] {
            assert_eq!(OrderId::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn idempotency_holds_are_stable_per_user_and_key() {
        let a = HoldId::for_idempotency_key("u1", "k");
        assert_eq!(a, HoldId::for_idempotency_key("u1", "k"));
        assert_ne!(a, HoldId::for_idempotency_key("u2", "k"));
        assert_ne!(a, HoldId::for_idempotency_key("u1", "k2"));
        assert!(HoldId::parse(a.as_str()).is_some());
    }

    proptest! {
        #[test]
        fn parsed_sale_ids_match_the_pattern(raw in "\\PC{0,70}") {
            if let Ok(id) = SaleId::parse(&raw) {
                prop_assert!((1..=64).contains(&id.as_str().len()));
                prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
            }
        }

        #[test]
        fn stock_is_accepted_exactly_in_range(stock in any::<i64>()) {
            let ok = SaleDefinition::new("s", "n", stock, None, None, None, now()).is_ok();
            prop_assert_eq!(ok, (1..=10_000_000).contains(&stock));
        }
    }
}
