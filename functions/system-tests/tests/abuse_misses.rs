//! Abuse hardening, cheap misses: random unknown sale ids cost a bounded
//! number of ledger reads.

mod abuse;

use abuse::unique;
use inventory::gate::Hold;
use inventory::ledger::{ConfirmOutcome, ConfirmRequest, HoldTruth, Ledger, LedgerError};
use inventory::sale::{Order, OrderId, SaleDefinition, SaleId};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use system_tests::{bounded, Options, TestStack};

// ------------------------------------------------------------ 4. misses

/// Counts the ledger's sale lookups.
struct CountingLedger {
    inner: Arc<dyn Ledger>,
    sale_reads: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Ledger for CountingLedger {
    async fn create_sale(&self, sale: &SaleDefinition) -> Result<bool, LedgerError> {
        self.inner.create_sale(sale).await
    }
    async fn sale(&self, id: &SaleId) -> Result<Option<SaleDefinition>, LedgerError> {
        self.sale_reads.fetch_add(1, Ordering::Relaxed);
        self.inner.sale(id).await
    }
    async fn confirmed_units(&self, id: &SaleId) -> Result<u64, LedgerError> {
        self.inner.confirmed_units(id).await
    }
    async fn confirm(&self, request: &ConfirmRequest) -> Result<ConfirmOutcome, LedgerError> {
        self.inner.confirm(request).await
    }
    async fn resolve(&self, id: &SaleId, hold: &Hold) -> Result<HoldTruth, LedgerError> {
        self.inner.resolve(id, hold).await
    }
    async fn order(&self, id: &OrderId, user: &str) -> Result<Option<Order>, LedgerError> {
        self.inner.order(id, user).await
    }
    async fn user_orders(
        &self,
        user: &str,
        sale: Option<&SaleId>,
    ) -> Result<Vec<Order>, LedgerError> {
        self.inner.user_orders(user, sale).await
    }
    async fn sale_orders(&self, id: &SaleId) -> Result<Vec<Order>, LedgerError> {
        self.inner.sale_orders(id).await
    }
    async fn ready(&self) -> Result<(), String> {
        self.inner.ready().await
    }
}

/// The documented miss budget per instance (`engine/mod.rs`): 50 reads a
/// second, 50 at once.
fn read_budget(elapsed: Duration) -> u64 {
    50 + (50.0 * elapsed.as_secs_f64()).ceil() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_unknown_sale_ids_cost_a_bounded_number_of_ledger_reads() {
    let sale_reads = Arc::new(AtomicU64::new(0));
    let counter = sale_reads.clone();
    let stack = TestStack::spawn_with(Options {
        wrap_ledger: Box::new(move |inner| {
            Arc::new(CountingLedger {
                inner,
                sale_reads: counter,
            })
        }),
        ..Options::default()
    })
    .await;
    let (_, token) = stack.new_user();

    // 3,000 random ids, through the sale view and through checkout (both
    // functions share this instance's inventory).
    let started = Instant::now();
    let before = sale_reads.load(Ordering::Relaxed);
    let replies = bounded(
        32,
        (0..3_000).map(|i| {
            let (stack, token) = (&stack, &token);
            async move {
                let id = unique("scrape-");
                if i % 2 == 0 {
                    stack
                        .get(&stack.stock, &format!("/stock/sales/{id}"), None)
                        .await
                } else {
                    stack.checkout(token, &json!({"sale_id": id}), None).await
                }
            }
        }),
    )
    .await;
    let elapsed = started.elapsed();
    let reads = sale_reads.load(Ordering::Relaxed) - before;
    for r in &replies {
        r.assert_error(404, "sale_not_found");
    }
    assert!(
        reads <= read_budget(elapsed),
        "{reads} ledger reads for 3,000 misses in {elapsed:?}"
    );
    assert!(reads >= 1, "misses are still looked up within the budget");
    println!("3,000 random ids in {elapsed:?}: {reads} ledger reads");

    // A stampede on one unknown id is answered from memory between reads.
    tokio::time::sleep(Duration::from_secs(2)).await; // the bucket refills
    let typo = unique("typo-");
    let started = Instant::now();
    let before = sale_reads.load(Ordering::Relaxed);
    let replies = bounded(
        32,
        (0..1_000).map(|_| {
            let (stack, typo) = (&stack, &typo);
            async move {
                stack
                    .get(&stack.stock, &format!("/stock/sales/{typo}"), None)
                    .await
            }
        }),
    )
    .await;
    let reads = sale_reads.load(Ordering::Relaxed) - before;
    let elapsed = started.elapsed();
    for r in &replies {
        r.assert_error(404, "sale_not_found");
    }
    // One read per second of the stampede at most (plus the concurrent
    // first lookups that raced the first answer).
    assert!(
        reads <= 32 + elapsed.as_secs() + 1,
        "{reads} reads for one id over {elapsed:?}"
    );

    // Real sales are still found, and once read they cost no more reads.
    let sale = stack.create_sale(10, 1).await;
    let before = sale_reads.load(Ordering::Relaxed);
    for _ in 0..100 {
        assert_eq!(stack.sale_view(&sale).await["sale_id"], sale.as_str());
    }
    assert_eq!(sale_reads.load(Ordering::Relaxed) - before, 0);
}
