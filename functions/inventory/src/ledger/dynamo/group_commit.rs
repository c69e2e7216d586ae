//! Group commit: per sale, one order transaction in flight at a time per
//! instance, and the orders that arrive meanwhile go together in the next.
//!
//! ```text
//!   confirm ─► queue of the sale ─► committer task: take a batch of live
//!                                    orders ─► one TransactWriteItems
//!        ◄── answer ◄─── committed: all confirmed
//!                        refused: the orders whose own conditions failed get
//!                                 their answer; the rest are sent again
//!                        a stock counter refused or conflicted: the batch
//!                                 is charged elsewhere (`stock.rs`) and sent again
//! ```
//!
//! Three rules keep it honest under faults:
//! - only *live* orders are sent: one whose caller gave up (it timed out and
//!   will resolve its hold by voiding it) is dropped, not written later;
//! - a refusal is pinned on the orders its cancellation reasons name; the
//!   others of the batch are not punished for it;
//! - only an explicit cancellation, or attempts that were all certainly
//!   never applied, are a definite "not written". A transaction is retried
//!   here (with the same `ClientRequestToken`), not by the SDK, so every
//!   attempt's fate is known: after one that may have committed, whatever
//!   the last attempt says, the order is *uncertain* and its hold is
//!   resolved against the ledger instead of being released.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::items::{codes_by_order, refused, MAX_ITEMS};
use super::stock::Cover;
use super::transact::{client_token, Transacted, ATTEMPTS};
use super::Inner;
use crate::ledger::{ConfirmOutcome, ConfirmRequest, LedgerError};
use crate::sale::{jittered, SaleId};

/// Orders committed together at most: one item per order and a few stock
/// counters stay well within DynamoDB's 100 items per transaction. (32
/// rather than 24: a transaction's fixed cost shared by more orders took
/// the 4-instance sell-out from 2.50 s to 2.22 s, load/capacity.md.)
const MAX_BATCH: usize = 32;

pub(super) struct Pending {
    request: ConfirmRequest,
    reply: oneshot::Sender<Result<ConfirmOutcome, LedgerError>>,
}

type Answer = Result<ConfirmOutcome, LedgerError>;

impl Inner {
    /// Queues an order for its sale's next transaction and waits for the
    /// answer; starts the sale's committer if none is running.
    pub(super) async fn enqueue(self: Arc<Self>, request: ConfirmRequest) -> Answer {
        let (reply, answer) = oneshot::channel();
        let sale = request.order.sale_id().clone();
        let start_committer = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            let start = !queues.contains_key(&sale);
            queues
                .entry(sale.clone())
                .or_default()
                .push(Pending { request, reply });
            start
        };
        if start_committer {
            tokio::spawn(self.commit_queue(sale));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(LedgerError::Uncertain("ledger committer stopped".into())))
    }

    /// Commits the queued orders of one sale, batch after batch, until the
    /// queue is empty.
    async fn commit_queue(self: Arc<Self>, sale: SaleId) {
        loop {
            let batch = {
                let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                let Some(queue) = queues.get_mut(&sale) else {
                    return;
                };
                // A caller that gave up has stopped listening: it answered
                // `503` and resolves its hold itself. Writing its order now
                // would only race that resolution and spend capacity.
                queue.retain(|p| !p.reply.is_closed());
                if queue.is_empty() {
                    queues.remove(&sale);
                    return;
                }
                take_batch(queue)
            };
            common::metrics::histogram("ledger_batch_orders")
                .observe(Duration::from_millis(batch.len() as u64));
            let requests: Vec<&ConfirmRequest> = batch.iter().map(|p| &p.request).collect();
            let outcomes = self.confirm_batch(&requests).await;
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                let _ = pending.reply.send(outcome);
            }
        }
    }

    /// Writes a batch of orders, in as few transactions as their conditions
    /// allow; one answer per order, in order.
    async fn confirm_batch(&self, batch: &[&ConfirmRequest]) -> Vec<Answer> {
        let mut answers: Vec<Option<Answer>> = vec![None; batch.len()];
        let Some(first) = batch.first() else {
            return Vec::new();
        };
        let sale = first.order.sale_id().clone();
        let layout = match self.layout(&sale).await {
            Ok(Some(layout)) => layout,
            Ok(None) => {
                let e = LedgerError::Definite(format!("no sale {sale} in the ledger"));
                return batch.iter().map(|_| Err(e.clone())).collect();
            }
            Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
        };
        // The window, by the gate's clock (the counters check it again).
        let mut live: Vec<usize> = Vec::new();
        for (i, req) in batch.iter().enumerate() {
            if layout.in_window(req.order.created_at) {
                live.push(i);
            } else {
                answers[i] = Some(Ok(ConfirmOutcome::NotLive));
            }
        }
        let mut backoff = Duration::from_millis(2);
        let mut rounds = 0;
        while !live.is_empty() {
            rounds += 1;
            if rounds > ATTEMPTS {
                let e = LedgerError::Definite(format!(
                    "orders not written after {ATTEMPTS} plans (stock counters kept refusing or conflicting)"
                ));
                fill(&mut answers, &live, |_| Err(e.clone()));
                break;
            }
            let own = live.len();
            let quantities: Vec<u64> = live
                .iter()
                .map(|&i| u64::from(batch[i].order.quantity))
                .collect();
            let plan = self.plan(&sale, layout, &quantities, MAX_ITEMS.saturating_sub(own));
            // No buckets have these units between them: sold out (the
            // belief is never below the truth, see `stock`).
            for (k, &i) in live.iter().enumerate() {
                if plan.cover[k] == Cover::SoldOut {
                    answers[i] = Some(Ok(ConfirmOutcome::SoldOut));
                }
            }
            let now: Vec<usize> = (0..live.len())
                .filter(|&k| plan.cover[k] == Cover::Yes)
                .map(|k| live[k])
                .collect();
            live = (0..live.len())
                .filter(|&k| plan.cover[k] != Cover::SoldOut)
                .map(|k| live[k])
                .collect();
            if now.is_empty() {
                continue;
            }
            let requests: Vec<&ConfirmRequest> = now.iter().map(|&i| batch[i]).collect();
            let (items, item_layout) = match self.batch_items(layout, &requests, &plan) {
                Ok(built) => built,
                Err(e) => {
                    fill(&mut answers, &live, |_| Err(e.clone()));
                    break;
                }
            };
            match self.transact(&client_token(&requests, &plan), items).await {
                Ok(Transacted::Committed) => {
                    self.charged(&sale, layout, &plan);
                    fill(&mut answers, &now, |i| {
                        Ok(ConfirmOutcome::Confirmed(batch[i].order.clone()))
                    });
                    live.retain(|i| !now.contains(i));
                }
                Ok(Transacted::Contended(codes)) => {
                    let codes = codes_by_order(&item_layout, &codes, now.len());
                    self.contended(&sale, layout, &codes.contended_counters);
                    // Charged elsewhere next, after a short, jittered wait
                    // that doubles while the meetings go on: one meeting
                    // parts two committers at once, and a crowd of them
                    // (more committers than buckets: Lambda environments,
                    // one order each) backs off instead of storming.
                    tokio::time::sleep(jittered(backoff, 1.0)).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Ok(Transacted::Refused(codes)) => {
                    let codes = codes_by_order(&item_layout, &codes, now.len());
                    // Orders refused by their own items get their answer;
                    // the others are not punished for it.
                    let mut blamed = HashSet::new();
                    for (k, &i) in now.iter().enumerate() {
                        if !refused(&codes.orders[k]) {
                            continue;
                        }
                        blamed.insert(i);
                        answers[i] = Some(self.explain_refusal(layout, batch[i]).await);
                    }
                    live.retain(|i| !blamed.contains(i));
                    if !codes.refused_counters.is_empty() {
                        // Another instance took what this one believed was
                        // left: read the counters and plan again.
                        if let Err(e) = self.refresh(&sale, layout).await {
                            fill(&mut answers, &live, |_| Err(e.clone()));
                            break;
                        }
                    } else if blamed.is_empty() {
                        let e = LedgerError::Definite(
                            "transaction refused for no stated reason".into(),
                        );
                        fill(&mut answers, &now, |_| Err(e.clone()));
                        live.retain(|i| !now.contains(i));
                    }
                }
                Err(e) => {
                    fill(&mut answers, &now, |_| Err(e.clone()));
                    live.retain(|i| !now.contains(i));
                }
            }
        }
        answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| Err(LedgerError::Uncertain("order left unanswered".into())))
            })
            .collect()
    }
}

fn fill(answers: &mut [Option<Answer>], live: &[usize], answer: impl Fn(usize) -> Answer) {
    for &i in live {
        answers[i] = Some(answer(i));
    }
}

/// Takes up to [`MAX_BATCH`] orders off the queue, no two touching the same
/// user's items (a transaction may name an item only once); the rest wait.
fn take_batch(queue: &mut Vec<Pending>) -> Vec<Pending> {
    let mut users = HashSet::new();
    let mut batch = Vec::new();
    let mut rest = Vec::new();
    for pending in queue.drain(..) {
        if batch.len() < MAX_BATCH && users.insert(pending.request.order.user_id.clone()) {
            batch.push(pending);
        } else {
            rest.push(pending);
        }
    }
    *queue = rest;
    batch
}
