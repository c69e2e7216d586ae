//! Batched signature checks: group commit, for Ed25519.
//!
//! A stampede brings thousands of tokens an instance has never seen, each
//! costing one Ed25519 verification (~35 µs): in the scale-out bench that
//! was 30 % of an order instance's CPU. Checked together, n signatures cost
//! about half as much each (`ed25519_dalek::verify_batch`: one multiscalar
//! multiplication for the whole batch; ~17 µs each from 8 signatures on,
//! load/capacity.md). So signatures queue here, and one task checks
//! whatever has queued while it was busy:
//!
//! ```text
//!   check ─► queue ─► drain task: take up to MAX_BATCH ─► verify_batch
//!     ◄── answer ◄───  passed: all valid
//!                      failed: each checked alone (verify_strict)
//! ```
//!
//! With no contention a batch is one signature, checked alone exactly as
//! before, so an idle instance pays only the hand-off.
//!
//! **What a batch accepts.** `verify_batch` checks a random linear
//! combination of the signatures' equations (the coefficients derived from
//! the inputs, so no RNG is needed), and so rejects a forged signature
//! with overwhelming probability, as a single check does. It differs from
//! `verify_strict` in one corner only: a *valid* signature whose R had a
//! small-order point added passes a batch with probability 1/8 and never
//! passes alone. Anyone holding a token can make that variant, and it
//! carries the same claims, so it grants nothing the token did not. Keys
//! that are themselves of small order (which no real key is, and which
//! `verify_strict` refuses outright) are never batched.
//!
//! A batch that fails is checked again signature by signature, so a forged
//! token in a batch costs the others nothing but time (~1.5x the work of
//! checking them alone), and is answered `401` like any other.

use std::sync::{Arc, Mutex};

use ed25519_dalek::{Signature, VerifyingKey};
use tokio::sync::oneshot;

/// Signatures checked in one batch at most: ~1 ms of one core, the longest
/// one task runs before it yields.
const MAX_BATCH: usize = 64;

struct Job {
    key: VerifyingKey,
    message: Vec<u8>,
    signature: Signature,
    reply: oneshot::Sender<bool>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// A drain task is running (and will see any job queued now).
    draining: bool,
}

/// The queue of signatures waiting for a check; one per verifier.
#[derive(Default)]
pub struct SignatureBatcher {
    queue: Mutex<Queue>,
}

impl SignatureBatcher {
    /// Whether `signature` is `key`'s signature of `message`, checked in a
    /// batch with whatever else is waiting.
    pub async fn verify(
        self: &Arc<Self>,
        key: &VerifyingKey,
        message: &[u8],
        signature: &Signature,
    ) -> bool {
        if key.is_weak() {
            return key.verify_strict(message, signature).is_ok();
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            key: *key,
            message: message.to_vec(),
            signature: *signature,
            reply,
        };
        let start_drain = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.jobs.push(job);
            !std::mem::replace(&mut queue.draining, true)
        };
        if start_drain {
            tokio::spawn(Arc::clone(self).drain());
        }
        // The drain task answers every job it takes; it ends only when the
        // queue is empty, and a panic in it drops the job (a refusal) and
        // lets the next caller start a new one (`Draining`).
        answer.await.unwrap_or(false)
    }

    /// Checks batch after batch until the queue is empty.
    async fn drain(self: Arc<Self>) {
        let _draining = Draining(&self);
        loop {
            let batch: Vec<Job> = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if queue.jobs.is_empty() {
                    // Cleared under the lock: a job pushed after this sees
                    // `draining == false` and starts a new task.
                    queue.draining = false;
                    return;
                }
                let take = queue.jobs.len().min(MAX_BATCH);
                queue.jobs.drain(..take).collect()
            };
            check(batch);
            // Let the requests just answered (and others) run before the
            // next batch.
            tokio::task::yield_now().await;
        }
    }
}

/// Marks the queue as not being drained when the drain task ends in any
/// way (a panic included), so the next job starts a new one.
struct Draining<'a>(&'a SignatureBatcher);

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.draining = false;
    }
}

/// Answers every job of the batch.
fn check(batch: Vec<Job>) {
    let all_valid = match batch.as_slice() {
        [one] => one.key.verify_strict(&one.message, &one.signature).is_ok(),
        jobs => {
            let messages: Vec<&[u8]> = jobs.iter().map(|j| j.message.as_slice()).collect();
            let signatures: Vec<Signature> = jobs.iter().map(|j| j.signature).collect();
            let keys: Vec<VerifyingKey> = jobs.iter().map(|j| j.key).collect();
            ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
        }
    };
    record_batch(batch.len(), all_valid);
    for job in batch {
        let valid = all_valid || job.key.verify_strict(&job.message, &job.signature).is_ok();
        // The caller may have gone (its request was dropped): nothing to do.
        let _ = job.reply.send(valid);
    }
}

fn record_batch(size: usize, all_valid: bool) {
    crate::metrics::counter("token_signature_batches_total").inc();
    if !all_valid {
        crate::metrics::counter("token_signature_batches_failed_total").inc();
    }
    crate::metrics::counter("token_signatures_batched_total").add(size as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn key() -> SigningKey {
        SigningKey::generate(&mut rand::rngs::OsRng)
    }

    /// Many checks at once, some forged: each gets its own answer, whether
    /// it was batched with valid or forged neighbours.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_signature_gets_its_own_answer_in_a_crowd() {
        let signer = key();
        let other = key();
        let batcher = Arc::new(SignatureBatcher::default());
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let batcher = batcher.clone();
                let message = format!("token {i}").into_bytes();
                // Every 7th is signed by someone else: forged.
                let forged = i % 7 == 0;
                let signature = if forged {
                    other.sign(&message)
                } else {
                    signer.sign(&message)
                };
                let key = signer.verifying_key();
                tokio::spawn(
                    async move { (forged, batcher.verify(&key, &message, &signature).await) },
                )
            })
            .collect();
        for task in tasks {
            let (forged, valid) = task.await.unwrap();
            assert_eq!(valid, !forged);
        }
        // The drain task answers, then finds the queue empty and ends.
        let drained = || {
            let queue = batcher.queue.lock().unwrap();
            queue.jobs.is_empty() && !queue.draining
        };
        for _ in 0..100 {
            if drained() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(drained(), "the drain task ended with the queue empty");
    }

    #[tokio::test]
    async fn a_signature_of_another_message_is_refused_alone_and_in_a_batch() {
        let signer = key();
        let batcher = Arc::new(SignatureBatcher::default());
        let vk = signer.verifying_key();
        let signature = signer.sign(b"one message");
        assert!(batcher.verify(&vk, b"one message", &signature).await);
        assert!(!batcher.verify(&vk, b"another", &signature).await);
        let checks = (0..10).map(|i| {
            let message: &[u8] = if i == 3 { b"another" } else { b"one message" };
            let batcher = batcher.clone();
            async move { batcher.verify(&vk, message, &signature).await }
        });
        let answers = futures::future::join_all(checks).await;
        let expected: Vec<bool> = (0..10).map(|i| i != 3).collect();
        assert_eq!(answers, expected);
    }

    /// `check` itself: a batch of valid signatures passes as a whole, and a
    /// batch with one forged signature answers each on its own.
    #[test]
    fn a_batch_is_checked_as_a_whole_and_again_one_by_one_when_it_fails() {
        let signer = key();
        let vk = signer.verifying_key();
        let mut answers = Vec::new();
        let batch: Vec<Job> = (0..16)
            .map(|i| {
                let message = format!("m{i}").into_bytes();
                let signature = if i == 5 {
                    key().sign(&message)
                } else {
                    signer.sign(&message)
                };
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                Job {
                    key: vk,
                    message,
                    signature,
                    reply,
                }
            })
            .collect();
        check(batch);
        let got: Vec<bool> = answers
            .into_iter()
            .map(|mut a| a.try_recv().unwrap())
            .collect();
        let expected: Vec<bool> = (0..16).map(|i| i != 5).collect();
        assert_eq!(got, expected);
    }
}
