//! One suite, every `WaitingRoom`: memory, and Redis in each shape of the
//! test bed (plain, TLS-only, cluster).

mod support;

use std::sync::Arc;
use std::time::Duration;

use inventory::waiting_room::{
    JoinOutcome, MemoryRoom, RedisRoom, RoomConfig, StockLevel, TicketStatus, WaitingRoom,
};
use support::{redis_variants, sale, user};

async fn rooms() -> Vec<(&'static str, Arc<dyn WaitingRoom>)> {
    let mut rooms: Vec<(&'static str, Arc<dyn WaitingRoom>)> =
        vec![("memory", Arc::new(MemoryRoom::default()))];
    for (name, conn) in redis_variants().await {
        rooms.push((name, Arc::new(RedisRoom::new(conn))));
    }
    rooms
}

const PLENTY: StockLevel = StockLevel {
    remaining: 1_000,
    sold_out: false,
};

fn ticket_of(o: &JoinOutcome) -> String {
    match o {
        JoinOutcome::Joined(t) | JoinOutcome::Existing(t) => t.ticket.clone(),
        other => panic!("no ticket: {other:?}"),
    }
}

#[tokio::test]
async fn one_ticket_per_user_and_admission_by_rate_then_by_stock() {
    for (name, room) in rooms().await {
        let s = sale(100, 1);
        let cfg = RoomConfig::new(Some(2), Some(30)).unwrap();
        let users: Vec<String> = (0..6).map(|_| user()).collect();
        let mut tickets = Vec::new();
        for u in &users {
            let o = room.join(&s, &cfg, PLENTY, u).await.unwrap();
            assert!(matches!(o, JoinOutcome::Joined(_)), "{name}: {o:?}");
            tickets.push(ticket_of(&o));
        }
        let again = room.join(&s, &cfg, PLENTY, &users[0]).await.unwrap();
        assert!(
            matches!(&again, JoinOutcome::Existing(t) if t.ticket == tickets[0]),
            "{name}: {again:?}"
        );
        // Another user cannot see the ticket.
        assert_eq!(
            room.poll(&s, &cfg, PLENTY, &tickets[0], &users[1])
                .await
                .unwrap(),
            None,
            "{name}"
        );
        // At 2/s with a one-second bucket, at most 2 in the first moments.
        let mut admitted = 0;
        for (t, u) in tickets.iter().zip(&users) {
            let p = room.poll(&s, &cfg, PLENTY, t, u).await.unwrap().unwrap();
            if matches!(p.status, TicketStatus::Admitted { .. }) {
                admitted += 1;
            }
        }
        assert!((1..=2).contains(&admitted), "{name}: {admitted}");
        // Stock caps it whatever the rate: one unit left, two open.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let one = StockLevel {
            remaining: 1,
            sold_out: false,
        };
        let stats = room.stats(&s, &cfg, one).await.unwrap();
        assert_eq!(
            stats.admitted, admitted as u64,
            "{name}: no admission beyond the stock"
        );
        // Nothing left: everyone waiting learns it.
        let gone = StockLevel {
            remaining: 0,
            sold_out: true,
        };
        let p = room
            .poll(&s, &cfg, gone, &tickets[5], &users[5])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.status, TicketStatus::SoldOut, "{name}");
        let o = room.join(&s, &cfg, gone, &user()).await.unwrap();
        assert_eq!(o, JoinOutcome::SoldOut, "{name}");
    }
}

#[tokio::test]
async fn a_used_admission_hands_its_place_on() {
    for (name, room) in rooms().await {
        let s = sale(100, 1);
        let cfg = RoomConfig::new(Some(100), Some(30)).unwrap();
        let one = StockLevel {
            remaining: 1,
            sold_out: false,
        };
        let (a, b) = (user(), user());
        let ta = ticket_of(&room.join(&s, &cfg, one, &a).await.unwrap());
        let tb = ticket_of(&room.join(&s, &cfg, one, &b).await.unwrap());
        let pa = room.poll(&s, &cfg, one, &ta, &a).await.unwrap().unwrap();
        assert!(
            matches!(pa.status, TicketStatus::Admitted { .. }),
            "{name}: {pa:?}"
        );
        let pb = room.poll(&s, &cfg, one, &tb, &b).await.unwrap().unwrap();
        assert!(
            matches!(pb.status, TicketStatus::Waiting { position: 1 }),
            "{name}: {pb:?}"
        );
        room.used(&s.sale_id, &ta).await.unwrap();
        let pb = room.poll(&s, &cfg, one, &tb, &b).await.unwrap().unwrap();
        assert!(
            matches!(pb.status, TicketStatus::Admitted { .. }),
            "{name}: {pb:?}"
        );
    }
}
