//! argon2id on a small, bounded pool of OS threads.
//!
//! Hashing is deliberately expensive (tens of milliseconds of pure CPU), so
//! it must never run on the async workers that serve every other request,
//! and it must never queue without bound: when `queue` jobs are already
//! waiting, the next login is refused *at once* with `503 overloaded` rather
//! than waiting behind them for seconds. That is what keeps the rest of the
//! system fast while a login storm burns CPU.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::oneshot;

use crate::domain::Password;

/// The pool's queue is full: answer `503 overloaded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("password hashing queue is full")]
pub struct Overloaded;

/// argon2id cost parameters; the defaults are OWASP's minimum for argon2id.
#[derive(Debug, Clone, Copy)]
pub struct HashCost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl HashCost {
    fn argon2(&self) -> Argon2<'static> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .unwrap_or_default();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }
}

type Job = Box<dyn FnOnce() + Send>;

#[derive(Clone)]
pub struct HasherPool {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: SyncSender<Job>,
    /// Jobs accepted and not yet finished (queued + running).
    in_flight: AtomicUsize,
    /// Password verifications run to completion, ever: what the login
    /// throttle bounds, so tests and operators can see that it holds.
    verifications: AtomicU64,
    cost: HashCost,
    /// A hash of a random password, verified against when the user does not
    /// exist so that "unknown user" costs the same as "wrong password".
    dummy: OnceLock<String>,
}

impl HasherPool {
    pub fn new(workers: usize, queue: usize, cost: HashCost) -> Self {
        let (jobs, rx) = sync_channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a hashing worker");
            }
        }
        Self {
            inner: Arc::new(Inner {
                jobs,
                in_flight: AtomicUsize::new(0),
                verifications: AtomicU64::new(0),
                cost,
                dummy: OnceLock::new(),
            }),
        }
    }

    /// Jobs accepted and not yet finished.
    pub fn depth(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Password verifications this pool has run, ever.
    pub fn verifications(&self) -> u64 {
        self.inner.verifications.load(Ordering::Relaxed)
    }

    pub async fn hash(&self, password: Password) -> Result<String, Overloaded> {
        let inner = self.inner.clone();
        self.run(move || hash_with(&inner.cost, password.expose()))
            .await
    }

    /// Checks `password` against `stored`, or against the dummy hash when
    /// there is no such user, so both cost one full verification.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, Overloaded> {
        let inner = self.inner.clone();
        self.run(move || {
            let is_real = stored.is_some();
            let phc = stored.unwrap_or_else(|| {
                inner
                    .dummy
                    .get_or_init(|| hash_with(&inner.cost, &ulid::Ulid::new().to_string()))
                    .clone()
            });
            let ok = PasswordHash::new(&phc)
                .map(|parsed| {
                    inner
                        .cost
                        .argon2()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false);
            inner.verifications.fetch_add(1, Ordering::Relaxed);
            common::metrics::counter("argon2_verifications_total").inc();
            ok && is_real
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Overloaded> {
        let (tx, rx) = oneshot::channel();
        let inner = self.inner.clone();
        let job: Job = Box::new(move || {
            let result = work();
            inner.in_flight.fetch_sub(1, Ordering::Relaxed);
            let _ = tx.send(result);
        });
        self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        match self.inner.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
                common::metrics::counter("argon2_shed_total").inc();
                return Err(Overloaded);
            }
        }
        common::metrics::gauge("argon2_queue_depth").set(self.depth() as i64);
        rx.await.map_err(|_| Overloaded)
    }
}

fn worker(rx: Arc<Mutex<Receiver<Job>>>) {
    loop {
        let job = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        match job {
            Ok(job) => job(),
            Err(_) => return, // the pool was dropped
        }
    }
}

fn hash_with(cost: &HashCost, password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    cost.argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        // Only fails for parameters out of range, which `HashCost` prevents.
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn pw(s: &str) -> Password {
        Password::parse(s).unwrap()
    }

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let pool = HasherPool::new(1, 4, HashCost::default());
        let phc = pool.hash(pw("correct horse battery")).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(pool
            .verify("correct horse battery".into(), Some(phc.clone()))
            .await
            .unwrap());
        assert!(!pool
            .verify("wrong horse battery".into(), Some(phc))
            .await
            .unwrap());
        assert!(!pool.verify("whatever password".into(), None).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_sheds_at_once() {
        // One worker, one queue slot: the third concurrent job must be shed,
        // and shedding must not wait for the running hashes.
        let pool = HasherPool::new(1, 1, HashCost::default());
        let a = tokio::spawn({
            let p = pool.clone();
            async move { p.hash(pw("first password!")).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = tokio::spawn({
            let p = pool.clone();
            async move { p.hash(pw("second password")).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let started = Instant::now();
        let shed = pool.hash(pw("third password!")).await;
        assert_eq!(shed, Err(Overloaded));
        assert!(
            started.elapsed() < Duration::from_millis(5),
            "shedding must not queue"
        );
        assert!(a.await.unwrap().is_ok());
        assert!(b.await.unwrap().is_ok());
        assert_eq!(pool.depth(), 0);
    }
}
