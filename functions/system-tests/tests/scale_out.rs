//! Many order instances on one sale, on a DynamoDB that pushes back.
//!
//! 1,000 units to 10,000 buyers on 4 HTTP instances and on Lambda-shaped
//! environments (one request each at a time, frozen in between), every order
//! instance reaching DynamoDB through the limits proxy (`infra/ddb-limits`:
//! 1,000 WCU/s and 3,000 RCU/s per partition key, transactions cancelled on
//! conflicting items). Today's ledger puts a whole sale on one partition key
//! and one counter item, so it throttles and conflicts here: that is
//! expected, and must cost only time. Every answer must still be one the
//! contract allows, and afterwards every guarantee of api.md is audited (see
//! `system_tests::scale::audit`).
//!
//! The tests run one at a time (they would only slow each other down on a
//! small machine), and print their figures (`--nocapture` to see them).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use system_tests::scale::audit::{audit, SaleFacts};
use system_tests::scale::buyers::{contract_problem, mop_up, watched_stampede};
use system_tests::scale::{Cluster, ScaleOptions, Shape, SharedLedgerWrapper};
use system_tests::{Fault, FaultyLedger};

/// The scale-out tests are heavy; one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// DynamoDB as the order instances see it: the limits proxy in front of
/// DynamoDB Local, with real DynamoDB's per-partition budgets (the proxy's
/// defaults: 1,000 WCU/s, 3,000 RCU/s per partition key) and a realistic
/// transaction latency, so that concurrent transactions overlap and
/// conflict as they do on the real service. This is the one place that
/// picks the endpoint.
struct Dynamo {
    proxy: ddb_limits::Proxy,
}

/// How long the proxy holds each transaction (its items owned) before
/// forwarding it: real DynamoDB transactions take ~10-25 ms.
const TX_LATENCY: Duration = Duration::from_millis(15);

impl Dynamo {
    async fn start() -> Self {
        let proxy = ddb_limits::start(ddb_limits::Config {
            tx_latency: TX_LATENCY,
            ..ddb_limits::Config::default()
        })
        .await
        .expect("start the DynamoDB limits proxy");
        Self { proxy }
    }

    fn endpoint(&self) -> Option<String> {
        Some(self.proxy.endpoint())
    }

    /// The proxy's figures, for the test's printout.
    fn figures(&self) -> String {
        let s = self.proxy.stats();
        format!(
            "through the limits proxy: {} requests, {} throttled {:?}, {} transaction conflicts, {} conflict exceptions, {} transactions committed, max partition {:.0} WCU/s, {:.0} RCU/s",
            s.requests,
            s.throttled,
            s.throttled_by_op,
            s.conflicts,
            s.conflict_exceptions,
            s.transactions_committed,
            s.max_partition_wcu_per_s,
            s.max_partition_rcu_per_s
        )
    }
}

const UNITS: u64 = 1000;
const BUYERS: usize = 10_000;
/// Buyers in flight at once (each one request at a time).
const CLIENTS: usize = 512;
/// How long buyers keep retrying `503`s.
const BUYER_DEADLINE: Duration = Duration::from_secs(45);

/// 1,000 units to 10,000 buyers through `options`, then the mop-up and the
/// audit; panics with every violation found.
async fn stampede_and_audit(options: ScaleOptions) {
    let _one_at_a_time = HEAVY.lock().await;
    let dynamo = Dynamo::start().await;
    let shape = options.shape;
    let instances = options.instances;
    let cluster = Cluster::start(ScaleOptions {
        dynamodb_endpoint: dynamo.endpoint(),
        ..options
    })
    .await;
    let sale = cluster.stack.create_sale(UNITS, 1).await;
    let buyers = cluster.buyers(BUYERS);
    let deadline = Instant::now() + BUYER_DEADLINE;
    let (wave, mut watch) = watched_stampede(&cluster, &sale, &buyers, CLIENTS, deadline).await;
    let stampede_took = wave.elapsed;
    // Holds still open lapse within the TTL; the bound then gives them
    // sweep interval + ledger timeout to come back, and buyers to sell to.
    let within = cluster.config.hold_ttl + cluster.lapse_bound() + Duration::from_secs(10);
    let mop = mop_up(&cluster, &sale, within, &mut watch).await;
    let facts = SaleFacts {
        sale_id: sale.clone(),
        stock_total: UNITS,
        per_user_limit: 1,
    };
    let report = audit(&cluster, &facts, &[&wave, &mop], &watch).await;
    let sold_out_after = wave.last_created_after().unwrap_or_default();
    println!(
        "{shape} x{}: stampede {:.1} s, last 201 after {:.2} s ({:.0} orders/s), {} 503s; mop-up {:.1} s, {} buyers; {} looks at the breakdown, worst lapse overdue {:?}; DynamoDB {}",
        cluster.instances_started(),
        stampede_took.as_secs_f64(),
        sold_out_after.as_secs_f64(),
        report.sold as f64 / sold_out_after.as_secs_f64().max(1e-3),
        wave.count(503) + mop.count(503),
        mop.elapsed.as_secs_f64(),
        mop.outcomes.len(),
        watch.looks,
        watch.worst_overdue,
        dynamo.figures(),
    );
    println!("{report}");
    assert_eq!(
        wave.not_started, 0,
        "every buyer was sent before the deadline"
    );
    // HTTP: every pod is up. Lambda: the stampede fanned out to many
    // environments, never more than the concurrency.
    let started = cluster.instances_started();
    match shape {
        Shape::Http => assert_eq!(started, instances),
        Shape::Lambda => assert!((2..=instances).contains(&started), "{started} environments"),
    }
    assert!(report.is_clean(), "{shape}: guarantees broken:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_http_instances_sell_a_thousand_units_to_ten_thousand_buyers_exactly() {
    stampede_and_audit(ScaleOptions::new(Shape::Http, 4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lambda_shaped_environments_sell_a_thousand_units_to_ten_thousand_buyers_exactly() {
    stampede_and_audit(ScaleOptions::new(Shape::Lambda, 32)).await;
}

/// A wrapper that makes every instance's ledger faulty and hands the test
/// the handles, to switch the faults from outside.
fn faulty_ledgers() -> (SharedLedgerWrapper, Arc<Mutex<Vec<Arc<FaultyLedger>>>>) {
    let made: Arc<Mutex<Vec<Arc<FaultyLedger>>>> = Arc::default();
    let handles = made.clone();
    let wrap: SharedLedgerWrapper = Arc::new(move |inner| {
        let faulty = FaultyLedger::new(inner);
        made.lock().expect("not poisoned").push(faulty.clone());
        faulty
    });
    (wrap, handles)
}

/// Lambda freezes an environment between requests. One that answered `503`
/// (its ledger answer was lost) and then got no request while the hold
/// lapsed must still resolve the hold within the bound once requests come
/// again, however short they are: nothing may depend on a background task
/// that never runs. The test first proves the freeze is real (with no
/// request, nothing resolves the hold, not even the delayed resolve the
/// checkout scheduled for itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_lambda_environment_resolves_a_lapsed_hold_on_its_next_requests() {
    let _one_at_a_time = HEAVY.lock().await;
    let dynamo = Dynamo::start().await;
    let (wrap, faulty) = faulty_ledgers();
    let cluster = Cluster::start(ScaleOptions {
        dynamodb_endpoint: dynamo.endpoint(),
        wrap_ledger: Some(wrap),
        ..ScaleOptions::new(Shape::Lambda, 1)
    })
    .await;
    let sale = cluster.stack.create_sale(1, 1).await;
    let body = json!({"sale_id": sale});

    // Start the environment (INIT builds its ledger) with a harmless
    // request, then make its ledger lose the answer of its next write (the
    // write never lands): 503, the hold stays, the environment freezes.
    let warm_up = cluster.buyers(1).remove(0);
    let unknown = cluster
        .checkout(&warm_up.token, &json!({"sale_id": "no-such-sale"}), None)
        .await
        .expect("the environment answers");
    unknown.assert_error(404, "sale_not_found");
    let ledger = faulty.lock().expect("not poisoned")[0].clone();
    ledger.set(Fault::TimeoutBeforeWrite);
    let first = cluster.buyers(1).remove(0);
    let lost = cluster
        .checkout(&first.token, &body, Some(&first.key))
        .await
        .expect("the environment answers");
    lost.assert_error(503, "overloaded");
    ledger.set(Fault::None);
    let b = cluster.stack.breakdown(&sale).await;
    assert_eq!(
        (b["held"].as_i64(), b["stock_remaining"].as_i64()),
        (Some(1), Some(0)),
        "{b}"
    );
    let expires = b["oldest_hold_expires_at"]
        .as_str()
        .expect("a hold is open");
    let expires = chrono::DateTime::parse_from_rfc3339(expires).expect("rfc 3339");

    // Frozen past the lapse and past the checkout's own delayed resolve.
    let thaw_at =
        expires.timestamp_millis() + cluster.config.ledger_timeout.as_millis() as i64 + 1000;
    let wait = thaw_at - chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
    let b = cluster.stack.breakdown(&sale).await;
    assert_eq!(
        b["held"].as_i64(),
        Some(1),
        "with no request, a frozen environment resolves nothing (else the harness does not freeze): {b}"
    );

    // ONE request comes, then none again for the length of the bound. The
    // README's bound is "the first checkout after the lapse starts a sweep
    // that resolves it": what that one request leaves to a background task
    // would stay frozen, so it must resolve the hold itself.
    let thawed = Instant::now();
    let bound = cluster.lapse_bound();
    let mut answers = vec![single_checkout(&cluster, &sale).await];
    let resolved_after = held_until_zero(&cluster, &sale, thawed + bound).await;
    println!(
        "frozen {:.1} s past the lapse; after one request, resolved after {resolved_after:?} (bound {bound:?}); environments {}",
        (thaw_at - expires.timestamp_millis()) as f64 / 1000.0,
        cluster.instances_started()
    );
    let resolved_after = resolved_after.unwrap_or_else(|| {
        panic!("guarantee 4: the lapsed hold was still held {bound:?} after the first request that followed the lapse (answered {answers:?})")
    });
    // The unit is back (or that request already bought it): sell it.
    while !answers.iter().any(|(status, _)| *status == 201) && answers.len() < 10 {
        answers.push(single_checkout(&cluster, &sale).await);
    }
    assert_eq!(
        cluster.instances_started(),
        1,
        "one environment served everything"
    );
    assert!(resolved_after <= bound);
    let winners: Vec<&(u16, Option<(String, String)>)> = answers
        .iter()
        .filter(|(status, _)| *status == 201)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "the unit came back and was sold once: {answers:?}"
    );
    let (winner, order_id) = winners[0]
        .1
        .clone()
        .expect("a 201 names its buyer and order");
    let orders = cluster.stack.ledger_orders(&sale).await;
    assert_eq!(orders.len(), 1, "exactly the one unit is in the ledger");
    assert_eq!(orders[0].user_id, winner, "to the buyer told 201");
    assert_eq!(orders[0].order_id.to_string(), order_id);
    let b = cluster.stack.breakdown(&sale).await;
    assert_eq!(
        (
            b["stock_remaining"].as_i64(),
            b["held"].as_i64(),
            b["confirmed"].as_i64(),
            b["ledger_confirmed"].as_i64()
        ),
        (Some(0), Some(0), Some(1), Some(1)),
        "{b}"
    );
}

/// One fresh buyer's single checkout, checked against the contract: its
/// status and, for a `201`, (buyer, order id).
async fn single_checkout(cluster: &Cluster, sale: &str) -> (u16, Option<(String, String)>) {
    let buyer = cluster.buyers(1).remove(0);
    let reply = cluster
        .checkout(&buyer.token, &json!({"sale_id": sale}), Some(&buyer.key))
        .await
        .expect("the environment answers");
    if let Some(problem) = contract_problem(&reply, sale, &buyer.user_id) {
        panic!("not a contract answer: {problem}");
    }
    let order = reply.body["order_id"]
        .as_str()
        .map(|id| (buyer.user_id.clone(), id.to_owned()));
    (reply.status, order)
}

/// Reads the breakdown (which never sweeps) until nothing is held or
/// `until`; how long after now that took, or `None`.
async fn held_until_zero(cluster: &Cluster, sale: &str, until: Instant) -> Option<Duration> {
    let from = Instant::now();
    loop {
        let b = cluster.stack.breakdown(sale).await;
        assert_eq!(b["balanced"], true, "guarantee 5: {b}");
        if b["held"] == 0 {
            return Some(from.elapsed());
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
