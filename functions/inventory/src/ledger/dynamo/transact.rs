//! One transaction sent, retried, and its fate judged.
//!
//! The retries are ours, not the SDK's, so every attempt's fate is known:
//! only an explicit cancellation, or attempts that were all certainly never
//! applied, are a definite "not written"; after one that may have
//! committed, whatever the last attempt says, the outcome is *uncertain*
//! and the hold is resolved against the ledger instead of being released.

use std::time::Duration;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::TransactWriteItem;

use super::items::CONDITION_FAILED;
use super::stock::Plan;
use super::Inner;
use crate::ledger::{ConfirmRequest, LedgerError};
use crate::sale::jittered;

/// Attempts of one transaction (a throttle or an unknown outcome each cost
/// one) before the checkout is answered `503`; the engine's ledger timeout
/// usually ends the wait first.
pub(super) const ATTEMPTS: u32 = 12;

/// How a transaction ended, when DynamoDB answered.
pub(super) enum Transacted {
    Committed,
    /// A condition failed; the cancellation reason of each item, in order.
    Refused(Vec<Option<String>>),
    /// Cancelled because another transaction wrote one of its items at the
    /// same time, and no attempt may have applied: plan again and resend.
    Contended(Vec<Option<String>>),
}

impl Inner {
    /// Sends a transaction, retrying it while it was throttled or its
    /// outcome is unknown; a conflict goes back to the caller, who plans
    /// the batch again (unless an earlier attempt may have applied: then
    /// the same transaction is retried, with the same token).
    ///
    /// The retries are ours, not the SDK's (its retry is switched off for
    /// this call), so every attempt's fate is known here: a retry carries
    /// the same `ClientRequestToken`, so it can never apply twice, and an
    /// attempt that may have committed is remembered. At the end, only an
    /// explicit cancellation, or attempts that were all certainly never
    /// applied (refused before sending, throttled, cancelled), make a
    /// definite "not written"; anything else is uncertain.
    pub(super) async fn transact(
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
                Fate::Contended(codes) => {
                    common::metrics::counter("ledger_conflicts_total").inc();
                    if maybe_applied.is_none() {
                        return Ok(Transacted::Contended(codes));
                    }
                    last = "ledger_conflicts_total".to_owned();
                }
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
    /// Cancelled for a conflict with a concurrent transaction on one of its
    /// items: nothing was written.
    Contended(Vec<Option<String>>),
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
                    Fate::Contended(codes)
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

/// Makes a retried transaction (by the SDK after a timeout, or by us)
/// idempotent for ten minutes: the same orders can never be written twice.
pub(super) fn client_token(batch: &[&ConfirmRequest], plan: &Plan) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for req in batch {
        digest.update(req.order.order_id.to_string());
        digest.update(req.attempt.to_le_bytes());
    }
    // A new plan is a new transaction (resending another one under the
    // same token would be refused as a mismatch).
    for (k, units) in &plan.charges {
        digest.update(k.to_le_bytes());
        digest.update(units.to_le_bytes());
    }
    digest.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
