//! The parts of a gate whose sale has several buckets: a checkout whose
//! home bucket is empty taking its stock from the others (and giving it all
//! back when it cannot be made whole), and settling or adopting the parts
//! of a hold wherever they are. (Loading them is in `load.rs`.) A sale of
//! one bucket never comes here.

use redis::Value;

use super::super::buckets::Layout;
use super::super::{GateError, Hold, HoldOutcome};
use super::{bad_reply, push_orders, text, RedisGate};

impl RedisGate {
    /// After the user's home bucket had no stock and took their count as a
    /// user part: the stock from the other buckets, as much from each as
    /// it has, until the hold is whole. If they have too little between
    /// them, everything taken goes back and the answer is sold out.
    pub(super) async fn take_elsewhere(
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
                Some("loading") => refusal = Some(HoldOutcome::Loading),
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
    pub(super) async fn release_parts(
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
    pub(super) async fn settle_bucketed(
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
            let home = layout.home(&order.user_id);
            if !f.user {
                // Found nowhere a moment ago. If the home bucket has a record
                // now, a concurrent settle or a load adopted it meanwhile,
                // and that one places its stock.
                if f.stock == 0 {
                    match self.adopt(layout, home, "b", false, order).await? {
                        Adopted::Yes => {
                            adopted += 1;
                            continue;
                        }
                        Adopted::Exists => continue,
                        Adopted::NoRoom => {}
                    }
                }
                if self.adopt(layout, home, "u", true, order).await? == Adopted::Exists {
                    continue;
                }
            }
            adopted += 1;
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
    /// a bucket other than the user's home: the first with room, by the
    /// rule a load places stock with (`load.rs`), so that a load and a
    /// settle of one order meet at one record. One there already means it
    /// is counted.
    async fn adopt_stock_elsewhere(
        &self,
        layout: &Layout,
        home: u16,
        part: &Hold,
    ) -> Result<(), GateError> {
        for b in layout.others(home) {
            if self.adopt(layout, b, "k", false, part).await? != Adopted::NoRoom {
                return Ok(());
            }
        }
        // No bucket has room: the ledger holds more than the gate thinks is
        // left; count it anyway (remaining dips below zero) so nothing is
        // sold twice.
        for b in layout.others(home) {
            if self.adopt(layout, b, "k", true, part).await? != Adopted::NoRoom {
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
    ) -> Result<Adopted, GateError> {
        let mut args = vec![
            "adopt".to_owned(),
            part.to_owned(),
            if force { "1" } else { "0" }.to_owned(),
        ];
        push_orders(&mut args, std::slice::from_ref(order));
        let reply: Value = self.call(layout, bucket, args).await?;
        match text(&reply).as_deref() {
            Some("1") => Ok(Adopted::Yes),
            Some("0") => Ok(Adopted::NoRoom),
            Some("-") => Ok(Adopted::Exists),
            Some("-1") => Err(GateError("the sale left the gate while settling".into())),
            _ => Err(bad_reply("adopt", &reply)),
        }
    }
}

/// What adopting one order's part in one bucket did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adopted {
    Yes,
    /// A stock part, and the bucket has too little left.
    NoRoom,
    /// The bucket has a record of the hold already.
    Exists,
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
