//! The waiting room in process memory (embedded mode, one instance): the
//! same rules as `room.lua`, under one mutex, on this process's clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    new_ticket, random_place, JoinOutcome, RoomConfig, RoomError, RoomStats, StockLevel, Ticket,
    TicketStatus, WaitingRoom,
};
use crate::sale::{now_ms, SaleDefinition, SaleId};

const AFTER_START: u64 = 1 << 51;

#[derive(Default)]
struct Room {
    /// Place in line -> ticket.
    line: BTreeMap<u64, String>,
    users: HashMap<String, String>,
    /// ticket -> (user, place, admission expiry if admitted, used)
    tickets: HashMap<String, (String, u64, Option<i64>, bool)>,
    served: usize,
    credit: f64,
    last_ms: Option<i64>,
    seq: u64,
}

impl Room {
    fn open(&self, now: i64) -> i64 {
        self.tickets
            .values()
            .filter(|(_, _, exp, used)| !used && exp.is_some_and(|e| e > now))
            .count() as i64
    }

    fn advance(&mut self, sale: &SaleDefinition, room: &RoomConfig, stock: StockLevel, now: i64) {
        let starts = sale.starts_ms();
        if now < starts {
            return;
        }
        let rate = f64::from(room.admit_per_second);
        let last = self.last_ms.unwrap_or(starts).max(starts);
        let credit = if self.last_ms.is_none() {
            1.0
        } else {
            self.credit
        };
        let mut credit = (credit + rate * (now - last) as f64 / 1000.0)
            .min((rate * super::BURST_SECONDS).max(1.0));
        let waiting = self.line.len().saturating_sub(self.served) as i64;
        let capacity = if stock.sold_out {
            0
        } else {
            stock.remaining.max(0) - self.open(now)
        };
        let k = (credit.floor() as i64).min(waiting).min(capacity);
        if k > 0 {
            let expires = now + i64::from(room.admission_ttl_seconds) * 1000;
            let next: Vec<String> = self
                .line
                .values()
                .skip(self.served)
                .take(k as usize)
                .cloned()
                .collect();
            for ticket in &next {
                if let Some(t) = self.tickets.get_mut(ticket) {
                    t.2 = Some(expires);
                }
            }
            self.served += next.len();
            credit -= next.len() as f64;
        }
        self.credit = credit;
        self.last_ms = Some(now);
    }

    fn status(
        &self,
        sale: &SaleDefinition,
        stock: StockLevel,
        ticket: &str,
        now: i64,
    ) -> Option<Ticket> {
        let (_, place, expires, _) = self.tickets.get(ticket)?;
        let status = match expires {
            Some(e) if now < *e => TicketStatus::Admitted { expires_ms: *e },
            Some(e) => TicketStatus::Expired { expires_ms: *e },
            None if stock.sold_out || now >= sale.ends_ms() => TicketStatus::SoldOut,
            None if now < sale.starts_ms() => TicketStatus::Waiting {
                position: self.line.range(..AFTER_START).count() as u64,
            },
            None => {
                let rank = self.line.range(..*place).count();
                TicketStatus::Waiting {
                    position: (rank.saturating_sub(self.served) + 1) as u64,
                }
            }
        };
        Some(Ticket {
            ticket: ticket.to_owned(),
            status,
            now_ms: now,
        })
    }
}

#[derive(Default)]
pub struct MemoryRoom {
    rooms: Mutex<HashMap<SaleId, Room>>,
}

impl MemoryRoom {
    fn with<T>(&self, sale: &SaleId, f: impl FnOnce(&mut Room) -> T) -> T {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        f(rooms.entry(sale.clone()).or_default())
    }
}

#[async_trait]
impl WaitingRoom for MemoryRoom {
    async fn join(
        &self,
        sale: &SaleDefinition,
        room: &RoomConfig,
        stock: StockLevel,
        user: &str,
    ) -> Result<JoinOutcome, RoomError> {
        let now = now_ms();
        Ok(self.with(&sale.sale_id, |r| {
            r.advance(sale, room, stock, now);
            if let Some(t) = r.users.get(user).cloned() {
                return match r.status(sale, stock, &t, now) {
                    Some(t) => JoinOutcome::Existing(t),
                    None => JoinOutcome::SoldOut,
                };
            }
            if now >= sale.ends_ms() {
                return JoinOutcome::Ended;
            }
            if stock.sold_out {
                return JoinOutcome::SoldOut;
            }
            let place = if now < sale.starts_ms() {
                random_place()
            } else {
                r.seq += 1;
                AFTER_START + r.seq
            };
            let ticket = new_ticket();
            r.line.insert(place, ticket.clone());
            r.users.insert(user.to_owned(), ticket.clone());
            r.tickets
                .insert(ticket.clone(), (user.to_owned(), place, None, false));
            r.advance(sale, room, stock, now);
            match r.status(sale, stock, &ticket, now) {
                Some(t) => JoinOutcome::Joined(t),
                None => JoinOutcome::SoldOut,
            }
        }))
    }

    async fn poll(
        &self,
        sale: &SaleDefinition,
        room: &RoomConfig,
        stock: StockLevel,
        ticket: &str,
        user: &str,
    ) -> Result<Option<Ticket>, RoomError> {
        let now = now_ms();
        Ok(self.with(&sale.sale_id, |r| {
            if r.tickets.get(ticket).map(|t| t.0.as_str()) != Some(user) {
                return None;
            }
            r.advance(sale, room, stock, now);
            r.status(sale, stock, ticket, now)
        }))
    }

    async fn used(&self, sale: &SaleId, ticket: &str) -> Result<(), RoomError> {
        self.with(sale, |r| {
            if let Some(t) = r.tickets.get_mut(ticket) {
                if t.2.is_some() {
                    t.3 = true;
                }
            }
        });
        Ok(())
    }

    async fn stats(
        &self,
        sale: &SaleDefinition,
        room: &RoomConfig,
        stock: StockLevel,
    ) -> Result<RoomStats, RoomError> {
        let now = now_ms();
        Ok(self.with(&sale.sale_id, |r| {
            r.advance(sale, room, stock, now);
            RoomStats {
                joined: r.line.len() as u64,
                admitted: r.served as u64,
                open_admissions: r.open(now) as u64,
            }
        }))
    }
}
