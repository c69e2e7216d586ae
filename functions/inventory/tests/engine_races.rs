//! Deterministic interleavings of the engine against the real Redis gate
//! and DynamoDB Local ledger: several `Inventory` instances (separate pods)
//! on one sale, with a scripted ledger that can hold a call at a chosen
//! point, so a race that happens once in a million stampedes happens in
//! every run. After each script, guarantee 5 and the gate/ledger agreement
//! are checked.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use inventory::gate::{Hold, HoldOutcome, StockGate};
use inventory::ledger::{ConfirmOutcome, ConfirmRequest, HoldTruth, Ledger, LedgerError};
use inventory::sale::{HoldId, Order, OrderId, SaleDefinition, SaleId};
use inventory::{Breakdown, CheckoutRequest, Inventory, InventoryConfig, InventoryError};
use tokio::sync::Notify;

use support::{dynamo_ledger, redis_gate, sale, user};

/// A gate that opens once: `wait` blocks until `open` was called.
#[derive(Default)]
struct Latch {
    open: AtomicBool,
    notify: Notify,
}

impl Latch {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
    async fn wait(&self) {
        while !self.open.load(Ordering::SeqCst) {
            let notified = self.notify.notified();
            if self.open.load(Ordering::SeqCst) {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }
}

/// The real ledger with hooks: hold the next `confirm` before it is sent,
/// hold the first `sale_orders` after it read (a rebuild between reading
/// the ledger and loading the gate), and count `resolve` calls.
struct ScriptedLedger {
    inner: Arc<dyn Ledger>,
    hold_confirm: AtomicBool,
    confirm_released: Latch,
    pause_first_read: AtomicBool,
    read_done: Latch,
    read_released: Latch,
    resolves: AtomicU64,
}

impl ScriptedLedger {
    fn new(inner: Arc<dyn Ledger>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            hold_confirm: AtomicBool::new(false),
            confirm_released: Latch::default(),
            pause_first_read: AtomicBool::new(false),
            read_done: Latch::default(),
            read_released: Latch::default(),
            resolves: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl Ledger for ScriptedLedger {
    async fn create_sale(&self, sale: &SaleDefinition) -> Result<bool, LedgerError> {
        self.inner.create_sale(sale).await
    }
    async fn sale(&self, id: &SaleId) -> Result<Option<SaleDefinition>, LedgerError> {
        self.inner.sale(id).await
    }
    async fn confirmed_units(&self, id: &SaleId) -> Result<u64, LedgerError> {
        self.inner.confirmed_units(id).await
    }
    async fn confirm(&self, request: &ConfirmRequest) -> Result<ConfirmOutcome, LedgerError> {
        if self.hold_confirm.swap(false, Ordering::SeqCst) {
            self.confirm_released.wait().await;
        }
        self.inner.confirm(request).await
    }
    async fn resolve(&self, id: &SaleId, hold: &Hold) -> Result<HoldTruth, LedgerError> {
        self.resolves.fetch_add(1, Ordering::SeqCst);
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
        let orders = self.inner.sale_orders(id).await;
        if self.pause_first_read.swap(false, Ordering::SeqCst) {
            self.read_done.open();
            self.read_released.wait().await;
        }
        orders
    }
    async fn ready(&self) -> Result<(), String> {
        self.inner.ready().await
    }
}

fn config() -> InventoryConfig {
    InventoryConfig {
        hold_ttl: Duration::from_secs(30),
        ledger_timeout: Duration::from_secs(10),
        sweep_interval: Duration::from_secs(3600),
        ..InventoryConfig::default()
    }
}

/// Two instances (pods) on one gate and one ledger.
async fn two_instances() -> (
    Inventory,
    Inventory,
    Arc<ScriptedLedger>,
    Arc<dyn StockGate>,
) {
    let gate = redis_gate().await;
    let ledger = ScriptedLedger::new(dynamo_ledger().await);
    let a = Inventory::new(gate.clone(), ledger.clone(), config());
    let b = Inventory::new(gate.clone(), ledger.clone(), config());
    (a, b, ledger, gate)
}

fn checkout(sale: &SaleDefinition, quantity: u32, key: Option<&str>) -> CheckoutRequest {
    CheckoutRequest {
        sale_id: sale.sale_id.clone(),
        quantity,
        idempotency_key: key.map(str::to_owned),
        client_ip: None,
    }
}

/// Guarantee 5, and the gate counting exactly what the ledger holds.
fn assert_agrees(b: &Breakdown, confirmed: u64, why: &str) {
    assert!(b.balanced, "{why}: unbalanced {b:?}");
    assert!(b.consistent, "{why}: gate and ledger disagree {b:?}");
    assert_eq!(b.ledger_confirmed, confirmed, "{why}: {b:?}");
    assert_eq!(b.confirmed as u64, confirmed, "{why}: {b:?}");
    assert_eq!(b.held, 0, "{why}: {b:?}");
}

#[tokio::test]
async fn an_order_confirmed_while_another_instance_rebuilds_the_gate_is_counted() {
    let (a, b, ledger, gate) = two_instances().await;
    let s = sale(5, 1);
    a.create_sale(s.clone()).await.unwrap();

    // Instance A takes a hold; its ledger write waits.
    ledger.hold_confirm.store(true, Ordering::SeqCst);
    let buyer = user();
    let checkout_a = {
        let (a, req) = (a.clone(), checkout(&s, 1, None));
        tokio::spawn(async move { a.checkout(&buyer, req).await })
    };
    eventually(|| async { a.breakdown(&s.sale_id).await.map(|b| b.held) == Ok(1) }).await;

    // Redis loses everything. Instance B's next view rebuilds the gate: it
    // reads the ledger (no order yet) and stops before loading the gate.
    gate.forget(&s.sale_id).await.unwrap();
    ledger.pause_first_read.store(true, Ordering::SeqCst);
    let view_b = {
        let (b, id) = (b.clone(), s.sale_id.clone());
        tokio::spawn(async move { b.view(&id).await })
    };
    ledger.read_done.wait().await;

    // A's order lands now, and A settles it into the gate that B is about
    // to overwrite.
    ledger.confirm_released.open();
    eventually(|| async { ledger.inner.confirmed_units(&s.sale_id).await == Ok(1) }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ledger.read_released.open();

    let created = checkout_a.await.unwrap();
    assert!(
        matches!(created, Ok(inventory::Checkout::Created(_))),
        "{created:?}"
    );
    view_b.await.unwrap().unwrap();
    assert_agrees(
        &b.breakdown(&s.sale_id).await.unwrap(),
        1,
        "after a settle raced a rebuild",
    );
}

#[tokio::test]
async fn a_key_replayed_with_another_quantity_is_refused_and_the_gate_does_not_drift() {
    let (a, _b, ledger, _gate) = two_instances().await;
    let s = sale(10, 3);
    a.create_sale(s.clone()).await.unwrap();
    let buyer = user();
    // The key's first checkout (1 unit) is in the ledger, but the gate has
    // no record of its hold (it was released before the write was known to
    // land, or lost with the last second of a Redis restart).
    let first = Order {
        order_id: OrderId {
            sale_id: s.sale_id.clone(),
            hold_id: HoldId::for_idempotency_key(&buyer, "k"),
        },
        user_id: buyer.clone(),
        quantity: 1,
        created_at: chrono::Utc::now(),
        idempotency_key: Some("k".into()),
    };
    let written = ledger
        .confirm(&ConfirmRequest {
            order: first.clone(),
            attempt: 1,
            stock_total: s.stock_total,
            per_user_limit: s.per_user_limit,
        })
        .await
        .unwrap();
    assert_eq!(written, ConfirmOutcome::Confirmed(first));

    // The same key, now for 2 units.
    let again = a.checkout(&buyer, checkout(&s, 2, Some("k"))).await;
    assert_eq!(again, Err(InventoryError::KeyReused));
    let bd = a.breakdown(&s.sale_id).await.unwrap();
    assert_agrees(&bd, 1, "after a replay with another quantity");
    assert_eq!(bd.stock_remaining, 9);

    // And with the original quantity it is the same order again.
    let replay = a.checkout(&buyer, checkout(&s, 1, Some("k"))).await;
    assert!(
        matches!(replay, Ok(inventory::Checkout::Replayed(_))),
        "{replay:?}"
    );
    assert_agrees(&a.breakdown(&s.sale_id).await.unwrap(), 1, "after a replay");
}

#[tokio::test]
async fn instances_sweeping_one_sale_resolve_each_lapsed_hold_once() {
    let gate = redis_gate().await;
    let ledger = ScriptedLedger::new(dynamo_ledger().await);
    let instances: Vec<Inventory> = (0..4)
        .map(|_| Inventory::new(gate.clone(), ledger.clone(), config()))
        .collect();
    let s = sale(100, 1);
    instances[0].create_sale(s.clone()).await.unwrap();
    // 40 checkouts that died after taking their holds: holds that lapse.
    for _ in 0..40 {
        let taken = gate
            .try_hold(&s.sale_id, &HoldId::random(), &user(), 1, 1)
            .await
            .unwrap();
        assert!(matches!(taken, HoldOutcome::Held(_)), "{taken:?}");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;

    let sweeps = futures::future::join_all(instances.iter().map(|i| i.sweep(&s.sale_id))).await;
    let released: u64 = sweeps.iter().map(|r| r.as_ref().unwrap().released).sum();
    assert_eq!(released, 40, "{sweeps:?}");
    assert_eq!(
        ledger.resolves.load(Ordering::SeqCst),
        40,
        "four sweepers, one void write per lapsed hold"
    );
    assert_agrees(
        &instances[1].breakdown(&s.sale_id).await.unwrap(),
        0,
        "after the sweeps",
    );
}

async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
