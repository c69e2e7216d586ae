//! Load shedding in front of the ledger: how many checkouts may wait on it.
//!
//! Answering "sold out" costs microseconds; a checkout that takes a hold
//! costs a DynamoDB transaction, and the ledger commits only so many a
//! second. Offered more than that, an unbounded queue makes *every* admitted
//! checkout slower until they all pass the ledger timeout and answer `503`
//! after the work was done anyway: goodput collapses exactly when the sale
//! is hottest.
//!
//! So admission is bounded by Little's law: with the ledger finishing
//! `rate` checkouts a second, `rate × budget` of them in flight is a queue
//! that drains within `budget`. Past that, a checkout is refused *before*
//! it takes a hold, with `503 overloaded` + `Retry-After`, in microseconds
//! and without touching Redis. `rate` is measured, not configured (an
//! exponentially weighted average of completions per second), so the bound
//! follows the ledger as it speeds up or slows down. A fixed `floor` keeps a
//! cold instance (no rate measured yet) and any sale of ordinary size from
//! ever being shed: a 1,000-unit stampede has at most 1,000 checkouts
//! holding stock at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct LedgerQueue {
    in_flight: AtomicUsize,
    floor: usize,
    budget: Duration,
    rate: Mutex<RateWindow>,
}

struct RateWindow {
    started: Instant,
    completed: u64,
    /// Completions per second, smoothed; 0 until the first window closes.
    per_second: f64,
}

/// How long a rate window lasts before it updates the average.
const WINDOW: Duration = Duration::from_millis(500);

impl LedgerQueue {
    pub fn new(floor: usize, budget: Duration) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            floor: floor.max(1),
            budget,
            rate: Mutex::new(RateWindow {
                started: Instant::now(),
                completed: 0,
                per_second: 0.0,
            }),
        })
    }

    /// Checkouts the ledger can finish within the budget at the rate measured.
    pub fn limit(&self) -> usize {
        self.limit_at(self.lock().per_second)
    }

    fn limit_at(&self, per_second: f64) -> usize {
        ((per_second * self.budget.as_secs_f64()) as usize).max(self.floor)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A place in the queue, or `None` if it is full. The check and the
    /// increment are one atomic step, so the bound is never overshot.
    pub fn try_enter(self: &Arc<Self>) -> Option<QueueSlot> {
        let limit = self.limit();
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(QueueSlot {
            queue: self.clone(),
            reached_ledger: false,
        })
    }

    /// A place freed. Only a checkout that went to the ledger counts as a
    /// completion of the rate: answers the gate gave at once (sold out,
    /// limit reached, rate limited) cost the ledger nothing, and counting
    /// them would inflate the bound in exactly the stampede it is for.
    fn completed(&self, reached_ledger: bool) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !reached_ledger {
            return;
        }
        let mut window = self.lock();
        window.completed += 1;
        let elapsed = window.started.elapsed();
        if elapsed >= WINDOW {
            let now = window.completed as f64 / elapsed.as_secs_f64();
            window.per_second = if window.per_second == 0.0 {
                now
            } else {
                0.7 * window.per_second + 0.3 * now
            };
            window.started = Instant::now();
            window.completed = 0;
            let limit = self.limit_at(window.per_second);
            common::metrics::gauge("ledger_queue_limit").set(limit as i64);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RateWindow> {
        match self.rate.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Held while one checkout waits on the gate and the ledger; dropping it
/// (on any outcome, or if the request is cancelled) frees the place.
pub struct QueueSlot {
    queue: Arc<LedgerQueue>,
    reached_ledger: bool,
}

impl QueueSlot {
    /// This checkout is about to wait on the ledger: its end is a ledger
    /// completion for the measured rate.
    pub fn reached_ledger(&mut self) {
        self.reached_ledger = true;
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.queue.completed(self.reached_ledger);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_admits_until_full_then_refuses_until_a_slot_frees() {
        let queue = LedgerQueue::new(3, Duration::from_secs(2));
        let slots: Vec<_> = (0..3).map(|_| queue.try_enter()).collect();
        assert!(slots.iter().all(Option::is_some));
        assert!(queue.try_enter().is_none());
        assert_eq!(queue.in_flight(), 3);
        drop(slots);
        assert_eq!(queue.in_flight(), 0);
        assert!(queue.try_enter().is_some());
    }

    #[test]
    fn the_limit_follows_the_measured_rate() {
        let queue = LedgerQueue::new(2, Duration::from_secs(2));
        assert_eq!(queue.limit(), 2, "nothing measured yet: the floor");
        // 41 completions over one window (>= 0.5 s, more on a busy machine):
        // the rate is 41 / window, and 2 s of queue twice that.
        let started = Instant::now();
        let ledger_completion = || {
            if let Some(mut slot) = queue.try_enter() {
                slot.reached_ledger();
            }
        };
        for _ in 0..40 {
            ledger_completion();
        }
        std::thread::sleep(WINDOW.saturating_sub(started.elapsed()));
        ledger_completion();
        let window = started.elapsed().as_secs_f64();
        let limit = queue.limit() as f64;
        let expected = 41.0 / window * 2.0;
        assert!(
            limit <= 41.0 / WINDOW.as_secs_f64() * 2.0 + 1.0 && limit >= expected - 1.0,
            "limit {limit}, expected about {expected:.0}"
        );
        assert!(
            limit > 2.0,
            "the measured rate lifts the limit above the floor"
        );
    }

    #[test]
    fn answers_that_never_reach_the_ledger_do_not_lift_the_limit() {
        let queue = LedgerQueue::new(2, Duration::from_secs(2));
        // A stampede on a sold-out sale: thousands of instant answers.
        let started = Instant::now();
        while started.elapsed() < WINDOW + Duration::from_millis(50) {
            for _ in 0..1000 {
                drop(queue.try_enter());
            }
        }
        drop(queue.try_enter());
        assert_eq!(queue.limit(), 2, "no ledger completion was measured");
    }

    #[test]
    fn concurrent_entries_never_overshoot() {
        let queue = LedgerQueue::new(50, Duration::from_secs(2));
        let admitted = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if let Some(slot) = queue.try_enter() {
                            admitted.lock().unwrap().push(slot);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.lock().unwrap().len(), 50);
    }
}
