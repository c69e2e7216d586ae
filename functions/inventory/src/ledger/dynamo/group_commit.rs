//! Group commit: per sale, one order transaction in flight at a time per
//! instance, and the orders that arrive meanwhile go together in the next.
//!
//! ```text
//!   confirm ─► queue of the sale ─► committer task: take a batch of live
//!                                    orders ─► one TransactWriteItems
//!        ◄── answer ◄─── committed: all confirmed
//!                        refused: the orders whose own conditions failed get
//!                                 their answer; the rest are sent again
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

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::TransactWriteItem;
use tokio::sync::oneshot;

use super::items::{codes_by_order, refused, CONDITION_FAILED};
use super::{ConfirmOutcome, ConfirmRequest, Inner, LedgerError};
use crate::sale::{jittered, SaleId};

/// Attempts of one transaction (a conflict on a hot item, a throttle or an
/// unknown outcome each cost one) before the checkout is answered `503`;
/// the engine's ledger timeout usually ends the wait first.
const ATTEMPTS: u32 = 12;

/// Orders committed together at most: 1 sale item + 3 items per order stays
/// within DynamoDB's 100 items per transaction.
const MAX_BATCH: usize = 24;

pub(super) struct Pending {
    request: ConfirmRequest,
    reply: oneshot::Sender<Result<ConfirmOutcome, LedgerError>>,
}

/// How a transaction ended, when DynamoDB answered.
enum Transacted {
    Committed,
    /// A condition failed; the cancellation reason of each item, in order.
    Refused(Vec<Option<String>>),
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
        // Positions in `batch` still to be written.
        let mut live: Vec<usize> = (0..batch.len()).collect();
        while !live.is_empty() {
            let requests: Vec<&ConfirmRequest> = live.iter().map(|&i| batch[i]).collect();
            let (items, layout) = match self.batch_items(&requests) {
                Ok(built) => built,
                Err(e) => {
                    fill(&mut answers, &live, |_| Err(e.clone()));
                    break;
                }
            };
            match self.transact(&client_token(&requests), items).await {
                Ok(Transacted::Committed) => {
                    fill(&mut answers, &live, |i| {
                        Ok(ConfirmOutcome::Confirmed(batch[i].order.clone()))
                    });
                    break;
                }
                Ok(Transacted::Refused(codes)) => {
                    let (counter_failed, own) = codes_by_order(&layout, &codes, live.len());
                    let blamed: Vec<usize> =
                        (0..live.len()).filter(|&k| refused(&own[k])).collect();
                    if blamed.is_empty() || live.len() == 1 {
                        // Only the shared counter refused (stock or window),
                        // or a lone order: no other order to spare. Each is
                        // answered on its own.
                        for (k, &i) in live.iter().enumerate() {
                            let answer = if live.len() == 1 {
                                self.explain_refusal(batch[i], &own[k], counter_failed)
                                    .await
                            } else {
                                self.confirm_alone(batch[i]).await
                            };
                            answers[i] = Some(answer);
                        }
                        break;
                    }
                    for &k in &blamed {
                        let i = live[k];
                        answers[i] = Some(self.explain_refusal(batch[i], &own[k], false).await);
                    }
                    let blamed: HashSet<usize> = blamed.into_iter().map(|k| live[k]).collect();
                    live.retain(|i| !blamed.contains(i));
                }
                Err(e) => {
                    fill(&mut answers, &live, |_| Err(e.clone()));
                    break;
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

    /// One order in a transaction of its own, and its own answer.
    async fn confirm_alone(&self, req: &ConfirmRequest) -> Answer {
        let (items, layout) = self.batch_items(&[req])?;
        match self.transact(&client_token(&[req]), items).await? {
            Transacted::Committed => Ok(ConfirmOutcome::Confirmed(req.order.clone())),
            Transacted::Refused(codes) => {
                let (counter_failed, own) = codes_by_order(&layout, &codes, 1);
                self.explain_refusal(req, &own[0], counter_failed).await
            }
        }
    }

    /// Sends a transaction, retrying it while it only lost races on hot
    /// items, was throttled, or its outcome is unknown.
    ///
    /// The retries are ours, not the SDK's (its retry is switched off for
    /// this call), so every attempt's fate is known here: a retry carries
    /// the same `ClientRequestToken`, so it can never apply twice, and an
    /// attempt that may have committed is remembered. At the end, only an
    /// explicit cancellation, or attempts that were all certainly never
    /// applied (refused before sending, throttled, cancelled), make a
    /// definite "not written"; anything else is uncertain.
    async fn transact(
        &self,
        token: &str,
        items: Vec<TransactWriteItem>,
    ) -> Result<Transacted, LedgerError> {
        let mut backoff = Duration::from_millis(5);
        let mut maybe_applied: Option<String> = None;
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let result = self
                .client
                .transact_write_items()
                .client_request_token(token)
                .set_transact_items(Some(items.clone()))
                .customize()
                .config_override(
                    aws_sdk_dynamodb::config::Builder::default()
                        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled()),
                )
                .send()
                .await;
            let err = match result {
                Ok(_) => return Ok(Transacted::Committed),
                Err(e) => e,
            };
            match attempt_fate(&err) {
                Fate::Refused(codes) => return Ok(Transacted::Refused(codes)),
                Fate::NotApplied(why) => {
                    common::metrics::counter(why).inc();
                    last = why.to_owned();
                }
                Fate::MaybeApplied => {
                    common::metrics::counter("ledger_uncertain_attempts_total").inc();
                    let text = DisplayErrorContext(&err).to_string();
                    last.clone_from(&text);
                    maybe_applied = Some(text);
                }
                Fate::Invalid => {
                    let text = DisplayErrorContext(&err).to_string();
                    return Err(match maybe_applied {
                        Some(earlier) => LedgerError::Uncertain(format!(
                            "{text}, after an attempt that may have committed: {earlier}"
                        )),
                        None => LedgerError::Definite(text),
                    });
                }
            }
            tokio::time::sleep(jittered(backoff, 1.0)).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
        Err(match maybe_applied {
            Some(earlier) => LedgerError::Uncertain(format!(
                "transaction not confirmed after {ATTEMPTS} attempts; one may have committed: {earlier}"
            )),
            // Every attempt was cancelled, throttled or never sent.
            None => LedgerError::Definite(format!(
                "transaction not written after {ATTEMPTS} attempts ({last})"
            )),
        })
    }
}

/// What one attempt of a transaction did, as far as its answer tells.
enum Fate {
    /// A condition failed: the cancellation reason of each item.
    Refused(Vec<Option<String>>),
    /// Certainly not applied, and worth another try (a conflict, a
    /// throttle, a connection that was never made); the metric to count.
    NotApplied(&'static str),
    /// Perhaps applied: a timeout, a connection lost after sending, a 5xx,
    /// the same token still in progress.
    MaybeApplied,
    /// Refused as malformed: no retry will do better.
    Invalid,
}

fn attempt_fate(err: &SdkError<TransactWriteItemsError, HttpResponse>) -> Fate {
    match err {
        SdkError::ConstructionFailure(_) => Fate::Invalid,
        SdkError::DispatchFailure(d) if never_connected(d.as_connector_error()) => {
            Fate::NotApplied("ledger_unreachable_total")
        }
        SdkError::ServiceError(se) => match se.err() {
            TransactWriteItemsError::TransactionCanceledException(c) => {
                let codes: Vec<Option<String>> = c
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().map(str::to_owned))
                    .collect();
                if codes.iter().any(|c| c.as_deref() == Some(CONDITION_FAILED)) {
                    Fate::Refused(codes)
                } else if codes
                    .iter()
                    .any(|c| c.as_deref() == Some("ThrottlingError"))
                {
                    Fate::NotApplied("ledger_throttled_total")
                } else {
                    // Cancelled for a conflict with a concurrent transaction
                    // on one of its items: nothing was written.
                    Fate::NotApplied("ledger_conflicts_total")
                }
            }
            // An earlier attempt with this token is still running.
            TransactWriteItemsError::TransactionInProgressException(_) => Fate::MaybeApplied,
            TransactWriteItemsError::ProvisionedThroughputExceededException(_)
            | TransactWriteItemsError::ThrottlingException(_)
            | TransactWriteItemsError::RequestLimitExceeded(_) => {
                Fate::NotApplied("ledger_throttled_total")
            }
            _ if se.raw().status().is_server_error() => Fate::MaybeApplied,
            _ => Fate::Invalid,
        },
        _ => Fate::MaybeApplied,
    }
}

/// Did the connection fail before a byte of the request was sent? (A
/// refused connect, a DNS failure: hyper reports these as connect errors.)
fn never_connected(e: Option<&aws_sdk_dynamodb::error::ConnectorError>) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = match e {
        Some(e) => Some(e),
        None => return false,
    };
    while let Some(err) = source {
        if let Some(hyper) = err.downcast_ref::<hyper_util::client::legacy::Error>() {
            return hyper.is_connect();
        }
        source = err.source();
    }
    false
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

/// Makes a retried transaction (by the SDK after a timeout, or by us)
/// idempotent for ten minutes: the same orders can never be written twice.
fn client_token(batch: &[&ConfirmRequest]) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for req in batch {
        digest.update(req.order.order_id.to_string());
        digest.update(req.attempt.to_le_bytes());
    }
    digest.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
