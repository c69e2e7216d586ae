//! After a stampede: every answer against the contract, and the stores
//! against every guarantee of api.md.
//!
//! The audit collects *all* violations rather than stopping at the first,
//! so a failing scale-out run reports exactly what broke and how often,
//! with examples: that is the evidence an engine fix starts from.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde_json::Value;

use super::buyers::{HoldWatch, Wave};
use super::Cluster;

/// The sale as it was created.
#[derive(Debug, Clone)]
pub struct SaleFacts {
    pub sale_id: String,
    pub stock_total: u64,
    pub per_user_limit: u32,
}

/// What was found. A run is clean when `violations` is empty.
#[derive(Debug, Default)]
pub struct Audit {
    pub violations: Vec<String>,
    pub buyers: usize,
    pub attempts: usize,
    pub by_answer: BTreeMap<String, usize>,
    /// Units in the ledger.
    pub sold: u64,
    /// Buyers told `201` or `200`.
    pub acknowledged: usize,
    /// Buyers whose last answer was a `503`/`429` (their deadline passed).
    pub gave_up: usize,
    /// Ledger orders whose buyer was never told (gave up on a `503`):
    /// allowed, a `503` means "not known yet".
    pub unacknowledged_orders: usize,
    pub final_breakdown: Value,
}

impl Audit {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} buyers, {} attempts {:?}; sold {}, acknowledged {}, gave up {}, unacknowledged orders {}",
            self.buyers,
            self.attempts,
            self.by_answer,
            self.sold,
            self.acknowledged,
            self.gave_up,
            self.unacknowledged_orders
        )?;
        writeln!(f, "final breakdown: {}", self.final_breakdown)?;
        if self.violations.is_empty() {
            return writeln!(f, "no violations");
        }
        writeln!(f, "{} violations:", self.violations.len())?;
        for v in &self.violations {
            writeln!(f, "  - {v}")?;
        }
        Ok(())
    }
}

/// Groups like problems: "N × problem (e.g. …)".
fn summarise(problems: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut groups: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (kind, example) in problems {
        let entry = groups.entry(kind).or_insert((0, example));
        entry.0 += 1;
    }
    groups
        .into_iter()
        .map(|(kind, (n, example))| format!("{n} × {kind} (e.g. {example})"))
        .collect()
}

/// Every answer must be one the contract allows (see `contract_problem`).
fn contract_violations(waves: &[&Wave]) -> Vec<String> {
    let problems = waves
        .iter()
        .flat_map(|w| &w.outcomes)
        .flat_map(|o| o.attempts.iter().map(move |a| (o, a)))
        .filter_map(|(o, a)| {
            let p = a.problem.as_ref()?;
            let kind = format!("contract: {} {}", a.status, a.code);
            Some((kind, format!("user {}: {p}", o.user_id)))
        });
    summarise(problems)
}

/// Guarantees 1, 2 and 3 from the ledger, and no order answered twice.
fn ledger_violations(
    facts: &SaleFacts,
    waves: &[&Wave],
    orders: &[inventory::sale::Order],
    audit: &mut Audit,
) -> Vec<String> {
    let mut v = Vec::new();
    let sold: u64 = orders.iter().map(|o| u64::from(o.quantity)).sum();
    audit.sold = sold;
    if sold > facts.stock_total {
        v.push(format!(
            "guarantee 1: oversold: {sold} units in the ledger of {}",
            facts.stock_total
        ));
    } else if sold < facts.stock_total {
        v.push(format!(
            "guarantee 4: only {sold} of {} units sold although buyers were left",
            facts.stock_total
        ));
    }
    let mut per_user: HashMap<&str, u64> = HashMap::new();
    for o in orders {
        *per_user.entry(&o.user_id).or_default() += u64::from(o.quantity);
    }
    let over: Vec<String> = per_user
        .iter()
        .filter(|(_, q)| **q > u64::from(facts.per_user_limit))
        .map(|(u, q)| format!("{u}: {q}"))
        .collect();
    if !over.is_empty() {
        v.push(format!(
            "guarantee 2: {} users over the limit, e.g. {:?}",
            over.len(),
            &over[..over.len().min(3)]
        ));
    }
    let stored: HashMap<String, &str> = orders
        .iter()
        .map(|o| (o.order_id.to_string(), o.user_id.as_str()))
        .collect();
    v.extend(acknowledgement_violations(waves, &stored, audit));
    v
}

/// Every `201`/`200` is in the ledger as the buyer's own order; no order id
/// went to two buyers as `201`; no buyer was told of two different orders.
fn acknowledgement_violations(
    waves: &[&Wave],
    stored: &HashMap<String, &str>,
    audit: &mut Audit,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut created_for: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut told: HashSet<&str> = HashSet::new();
    for outcome in waves.iter().flat_map(|w| &w.outcomes) {
        let ids: HashSet<&str> = outcome.acknowledged().map(|(_, id)| id).collect();
        if !ids.is_empty() {
            audit.acknowledged += 1;
            told.insert(&outcome.user_id);
        }
        if ids.len() > 1 {
            problems.push((
                "one buyer told of two orders".into(),
                format!("{}: {ids:?}", outcome.user_id),
            ));
        }
        for (attempt, id) in outcome.acknowledged() {
            if attempt.status == 201 {
                created_for.entry(id).or_default().insert(&outcome.user_id);
            }
            match stored.get(id) {
                None => problems.push((
                    "guarantee 3: acknowledged order missing from the ledger".into(),
                    format!("{} {id} to {}", attempt.status, outcome.user_id),
                )),
                Some(owner) if *owner != outcome.user_id => problems.push((
                    "guarantee 3: acknowledged order belongs to someone else".into(),
                    format!("{id}: told {}, owned by {owner}", outcome.user_id),
                )),
                Some(_) => {}
            }
        }
    }
    for (id, users) in &created_for {
        if users.len() > 1 {
            problems.push((
                "one order id answered 201 to different buyers".into(),
                format!("{id}: {users:?}"),
            ));
        }
    }
    audit.unacknowledged_orders = stored.values().filter(|u| !told.contains(**u)).count();
    summarise(problems)
}

/// Guarantee 5 and the final state: balanced and consistent, nothing held,
/// every unit confirmed in both stores.
fn breakdown_violations(facts: &SaleFacts, b: &Value) -> Vec<String> {
    let total = facts.stock_total as i64;
    let terms = (
        b["stock_remaining"].as_i64(),
        b["held"].as_i64(),
        b["confirmed"].as_i64(),
        b["ledger_confirmed"].as_i64(),
    );
    let mut v = Vec::new();
    if b["balanced"] != true || b["consistent"] != true {
        v.push(format!(
            "guarantee 5: final breakdown not balanced and consistent: {b}"
        ));
    }
    if terms != (Some(0), Some(0), Some(total), Some(total)) {
        v.push(format!(
            "final breakdown is not sold out with nothing held (remaining, held, confirmed, ledger) = {terms:?}, want (0, 0, {total}, {total})"
        ));
    }
    v
}

/// What the [`HoldWatch`] saw during the run.
fn watch_violations(cluster: &Cluster, watch: &HoldWatch) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(first) = watch.unbalanced.first() {
        v.push(format!(
            "guarantee 5: {} of {} looks unbalanced, e.g. {first}",
            watch.unbalanced.len(),
            watch.looks
        ));
    }
    if !watch.worst_overdue.is_zero() {
        v.push(format!(
            "guarantee 4: a lapsed hold stayed unresolved {:?} past its expiry + {:?} (sweep interval + ledger timeout), seen in {}",
            watch.worst_overdue,
            cluster.lapse_bound(),
            watch.worst_seen.as_ref().unwrap_or(&Value::Null)
        ));
    }
    v
}

/// Audits a finished sale. Reads the sale view last, because reading it
/// starts a sweep (from the stack's own stock instance).
pub async fn audit(
    cluster: &Cluster,
    facts: &SaleFacts,
    waves: &[&Wave],
    watch: &HoldWatch,
) -> Audit {
    let mut audit = Audit::default();
    for outcome in waves.iter().flat_map(|w| &w.outcomes) {
        audit.buyers += 1;
        audit.attempts += outcome.attempts.len();
        if outcome
            .last()
            .is_some_and(|a| matches!(a.status, 429 | 503))
        {
            audit.gave_up += 1;
        }
    }
    for w in waves {
        for (answer, n) in w.by_answer() {
            *audit.by_answer.entry(answer).or_default() += n;
        }
    }
    let mut violations = contract_violations(waves);
    let orders = cluster.stack.ledger_orders(&facts.sale_id).await;
    violations.extend(ledger_violations(facts, waves, &orders, &mut audit));
    let breakdown = cluster.stack.breakdown(&facts.sale_id).await;
    violations.extend(breakdown_violations(facts, &breakdown));
    violations.extend(watch_violations(cluster, watch));
    let view = cluster.stack.sale_view(&facts.sale_id).await;
    if view["status"] != "sold_out" || view["stock_remaining"] != 0 {
        violations.push(format!(
            "guarantee 4: the sale did not end sold_out: {view}"
        ));
    }
    audit.final_breakdown = breakdown;
    audit.violations = violations;
    audit
}

#[cfg(test)]
mod tests {
    //! The audit must be able to fail: each guarantee it checks, broken on
    //! purpose in made-up evidence, is reported.

    use std::time::{Duration, Instant};

    use inventory::sale::{HoldId, Order, OrderId, SaleId};

    use super::*;
    use crate::scale::buyers::{Attempt, BuyerOutcome};

    const SALE: &str = "s-audit";

    fn facts(stock_total: u64) -> SaleFacts {
        SaleFacts {
            sale_id: SALE.into(),
            stock_total,
            per_user_limit: 1,
        }
    }

    fn order(user: &str) -> Order {
        Order {
            order_id: OrderId {
                sale_id: SaleId::parse(SALE).expect("valid sale id"),
                hold_id: HoldId::random(),
            },
            user_id: user.into(),
            quantity: 1,
            created_at: chrono::Utc::now(),
            idempotency_key: None,
        }
    }

    fn told(status: u16, order_id: Option<&OrderId>) -> Attempt {
        Attempt {
            status,
            code: String::new(),
            order_id: order_id.map(ToString::to_string),
            problem: None,
            at: Instant::now(),
        }
    }

    fn wave(outcomes: Vec<(&str, Vec<Attempt>)>) -> Wave {
        Wave {
            outcomes: outcomes
                .into_iter()
                .map(|(user, attempts)| BuyerOutcome {
                    user_id: user.into(),
                    attempts,
                })
                .collect(),
            started: Instant::now(),
            elapsed: Duration::ZERO,
            not_started: 0,
        }
    }

    fn violations(facts: &SaleFacts, wave: &Wave, orders: &[Order]) -> Vec<String> {
        ledger_violations(facts, &[wave], orders, &mut Audit::default())
    }

    #[test]
    fn a_clean_sale_has_no_violations() {
        let (a, b) = (order("a"), order("b"));
        let w = wave(vec![
            ("a", vec![told(503, None), told(200, Some(&a.order_id))]),
            ("b", vec![told(201, Some(&b.order_id))]),
            ("c", vec![told(409, None)]),
        ]);
        assert_eq!(violations(&facts(2), &w, &[a, b]), Vec::<String>::new());
    }

    #[test]
    fn an_acknowledged_order_missing_from_the_ledger_is_reported() {
        let (a, b) = (order("a"), order("b"));
        let w = wave(vec![
            ("a", vec![told(201, Some(&a.order_id))]),
            ("b", vec![told(201, Some(&b.order_id))]),
        ]);
        let v = violations(&facts(1), &w, &[a]);
        assert!(
            v.iter().any(|v| v.contains("missing from the ledger")),
            "{v:?}"
        );
    }

    #[test]
    fn one_order_answered_201_to_two_buyers_is_reported() {
        let a = order("a");
        let w = wave(vec![
            ("a", vec![told(201, Some(&a.order_id))]),
            ("b", vec![told(201, Some(&a.order_id))]),
        ]);
        let v = violations(&facts(1), &w, &[a]);
        assert!(
            v.iter().any(|v| v.contains("201 to different buyers")),
            "{v:?}"
        );
        assert!(
            v.iter().any(|v| v.contains("belongs to someone else")),
            "{v:?}"
        );
    }

    #[test]
    fn overselling_a_user_over_the_limit_and_a_leak_are_reported() {
        let w = wave(vec![]);
        let v = violations(&facts(1), &w, &[order("a"), order("a")]);
        assert!(v.iter().any(|v| v.starts_with("guarantee 1")), "{v:?}");
        assert!(v.iter().any(|v| v.starts_with("guarantee 2")), "{v:?}");
        let v = violations(&facts(3), &w, &[order("a")]);
        assert!(v.iter().any(|v| v.starts_with("guarantee 4")), "{v:?}");
    }

    #[test]
    fn a_breakdown_that_is_not_sold_out_and_balanced_is_reported() {
        let b = serde_json::json!({"stock_remaining": 1, "held": 1, "confirmed": 1, "ledger_confirmed": 1, "balanced": false, "consistent": true});
        let v = breakdown_violations(&facts(2), &b);
        assert_eq!(v.len(), 2, "{v:?}");
    }
}
