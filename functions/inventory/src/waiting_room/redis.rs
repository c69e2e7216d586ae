//! The waiting room on Redis: every call is one `room.lua` script on the
//! sale's slot (`{sale}`, beside the gate's first bucket).

use async_trait::async_trait;
use common::backends::RedisConn;
use redis::Script;

use super::{
    new_ticket, random_place, JoinOutcome, RoomConfig, RoomError, RoomStats, StockLevel, Ticket,
    TicketStatus, WaitingRoom,
};
use crate::sale::{SaleDefinition, SaleId};

pub struct RedisRoom {
    conn: RedisConn,
    script: Script,
}

impl RedisRoom {
    pub fn new(conn: RedisConn) -> Self {
        Self {
            conn,
            script: Script::new(include_str!("room.lua")),
        }
    }

    fn keys(sale: &SaleId) -> [String; 5] {
        ["wr", "wr:queue", "wr:users", "wr:tickets", "wr:open"]
            .map(|k| format!("fs:{{{sale}}}:{k}"))
    }

    async fn call(
        &self,
        sale: &SaleId,
        common: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<String>, RoomError> {
        let mut invocation = self.script.prepare_invoke();
        for key in Self::keys(sale) {
            invocation.key(key);
        }
        for arg in common.into_iter().chain(args) {
            invocation.arg(arg);
        }
        common::redis_client::invoke_script(&self.conn, &invocation)
            .await
            .map_err(|e| RoomError(e.to_string()))
    }
}

/// The arguments every operation starts with.
fn common_args(
    op: &str,
    sale: &SaleDefinition,
    room: &RoomConfig,
    stock: StockLevel,
) -> Vec<String> {
    vec![
        op.to_owned(),
        sale.starts_ms().to_string(),
        sale.ends_ms().to_string(),
        room.admit_per_second.to_string(),
        (u64::from(room.admission_ttl_seconds) * 1000).to_string(),
        stock.remaining.max(0).to_string(),
        if stock.sold_out { "1" } else { "0" }.to_owned(),
    ]
}

/// `{status, ticket, position, expires, now, ...}` as `room.lua` answers.
fn parse_ticket(f: &[String]) -> Result<Ticket, RoomError> {
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<i64>().ok());
    let bad = || RoomError(format!("unexpected waiting room reply {f:?}"));
    let status = match f.first().map(String::as_str) {
        Some("waiting") => TicketStatus::Waiting {
            position: num(2).ok_or_else(bad)?.max(1) as u64,
        },
        Some("admitted") => TicketStatus::Admitted {
            expires_ms: num(3).ok_or_else(bad)?,
        },
        Some("expired") => TicketStatus::Expired {
            expires_ms: num(3).ok_or_else(bad)?,
        },
        Some("sold_out") => TicketStatus::SoldOut,
        _ => return Err(bad()),
    };
    Ok(Ticket {
        ticket: f.get(1).cloned().ok_or_else(bad)?,
        status,
        now_ms: num(4).ok_or_else(bad)?,
    })
}

#[async_trait]
impl WaitingRoom for RedisRoom {
    async fn join(
        &self,
        sale: &SaleDefinition,
        room: &RoomConfig,
        stock: StockLevel,
        user: &str,
    ) -> Result<JoinOutcome, RoomError> {
        let args = vec![user.to_owned(), new_ticket(), random_place().to_string()];
        let f = self
            .call(&sale.sale_id, common_args("join", sale, room, stock), args)
            .await?;
        match f.first().map(String::as_str) {
            Some("ended") => Ok(JoinOutcome::Ended),
            Some("sold_out") if f.len() == 1 => Ok(JoinOutcome::SoldOut),
            _ => {
                let ticket = parse_ticket(&f)?;
                Ok(if f.last().map(String::as_str) == Some("existing") {
                    JoinOutcome::Existing(ticket)
                } else {
                    JoinOutcome::Joined(ticket)
                })
            }
        }
    }

    async fn poll(
        &self,
        sale: &SaleDefinition,
        room: &RoomConfig,
        stock: StockLevel,
        ticket: &str,
        user: &str,
    ) -> Result<Option<Ticket>, RoomError> {
        let f = self
            .call(
                &sale.sale_id,
                common_args("poll", sale, room, stock),
                vec![ticket.to_owned(), user.to_owned()],
            )
            .await?;
        if f.first().map(String::as_str) == Some("not_found") {
            return Ok(None);
        }
        parse_ticket(&f).map(Some)
    }

    async fn used(&self, sale: &SaleId, ticket: &str) -> Result<(), RoomError> {
        // The common arguments are not looked at by 'used'.
        let mut invocation = self.script.prepare_invoke();
        for key in Self::keys(sale) {
            invocation.key(key);
        }
        for arg in ["used", "0", "0", "0", "0", "0", "0", ticket] {
            invocation.arg(arg);
        }
        common::redis_client::invoke_script::<i64>(&self.conn, &invocation)
            .await
            .map(|_| ())
            .map_err(|e| RoomError(e.to_string()))
    }

    async fn stats(
        &self,
        sale: &SaleDefinition,
        room: &RoomConfig,
        stock: StockLevel,
    ) -> Result<RoomStats, RoomError> {
        let f = self
            .call(
                &sale.sale_id,
                common_args("stats", sale, room, stock),
                vec![],
            )
            .await?;
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        Ok(RoomStats {
            joined: num(0),
            admitted: num(1),
            open_admissions: num(2),
        })
    }
}
