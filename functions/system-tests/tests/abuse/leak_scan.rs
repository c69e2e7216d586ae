//! The leak scan: what no error body may contain, the error answers
//! collected, and a ledger whose failures carry real-looking backend text.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use inventory::gate::Hold;
use inventory::ledger::{ConfirmOutcome, ConfirmRequest, HoldTruth, Ledger, LedgerError};
use inventory::sale::{Order, OrderId, SaleDefinition, SaleId};
use system_tests::Reply;

/// What no error body may contain: backend names and messages, traces,
/// file paths, cloud resource names, keys and secrets.
pub fn leaks_in(text: &str, secrets: &[&str]) -> Vec<String> {
    const ANY_CASE: &[&str] = &[
        "dynamodb",
        "redis",
        ".lua",
        "redis.call",
        "exception",
        "panicked",
        "backtrace",
        "at src/",
        "src/",
        ".rs:",
        "aws",
        "arn:",
        "/home/",
        "/root/",
        "/work/",
        "/usr/",
        "127.0.0.1",
        "localhost",
        ":6379",
        ":8000",
        "os error",
        "connection refused",
        "fs:",
        "test-ledger-",
        "test-users-",
        "flashsale-ledger",
        "flashsale-users",
        "secret-marker",
    ];
    const EXACT: &[&str] = &["Service", "Error {", "Some(", "ERR "];
    let lower = text.to_lowercase();
    let mut found: Vec<String> = ANY_CASE
        .iter()
        .filter(|p| lower.contains(*p))
        .map(|p| p.to_string())
        .collect();
    found.extend(
        EXACT
            .iter()
            .chain(secrets)
            .filter(|p| !p.is_empty() && text.contains(*p))
            .map(|p| p.to_string()),
    );
    found
}

/// Every reply that is an error, with what was asked.
#[derive(Default)]
pub struct Answers(pub Vec<(String, Reply)>);

impl Answers {
    pub fn add(&mut self, what: impl Into<String>, r: Reply) {
        self.0.push((what.into(), r));
    }

    /// Asserts the contract's shape and the absence of leaks in every error
    /// answer collected; returns how many were checked.
    pub fn check(&self, secrets: &[&str]) -> usize {
        let mut checked = 0;
        let mut problems = Vec::new();
        for (what, r) in &self.0 {
            if r.status < 400 {
                continue;
            }
            checked += 1;
            let text = r.body.to_string();
            let shaped = r.body["error"]["code"].as_str().is_some()
                && r.body["error"]["message"].as_str().is_some()
                && r.body.as_object().is_some_and(|o| o.len() == 1);
            if !shaped {
                problems.push(format!("{what}: not the error shape: {} {text}", r.status));
            }
            let leaks = leaks_in(&text, secrets);
            if !leaks.is_empty() {
                problems.push(format!("{what}: {leaks:?} in {} {text}", r.status));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        checked
    }
}

/// A ledger that passes everything through until switched to failing,
/// then refuses every call with the kind of text a real backend error
/// carries (and a marker), to prove none of it reaches a caller.
pub struct LeakyLedger {
    pub inner: Arc<dyn Ledger>,
    pub failing: Arc<AtomicBool>,
}

pub const BACKEND_TEXT: &str = "dynamodb: ServiceError { source: ResourceNotFoundException: \
    arn:aws:dynamodb:us-east-1:123456789012:table/flashsale-ledger key fs:sale:x \
    at src/ledger/dynamo/items.rs:42 /root/.cargo SECRET-MARKER-7f3a }";

impl LeakyLedger {
    fn fail<T>(&self) -> Option<Result<T, LedgerError>> {
        self.failing
            .load(Ordering::Relaxed)
            .then(|| Err(LedgerError::Definite(BACKEND_TEXT.into())))
    }
}

#[async_trait::async_trait]
impl Ledger for LeakyLedger {
    async fn create_sale(&self, sale: &SaleDefinition) -> Result<bool, LedgerError> {
        match self.fail() {
            Some(e) => e,
            None => self.inner.create_sale(sale).await,
        }
    }
    async fn sale(&self, id: &SaleId) -> Result<Option<SaleDefinition>, LedgerError> {
        match self.fail() {
            Some(e) => e,
            None => self.inner.sale(id).await,
        }
    }
    async fn confirmed_units(&self, id: &SaleId) -> Result<u64, LedgerError> {
        match self.fail() {
            Some(e) => e,
            None => self.inner.confirmed_units(id).await,
        }
    }
    async fn confirm(&self, request: &ConfirmRequest) -> Result<ConfirmOutcome, LedgerError> {
        match self.fail() {
            Some(e) => e,
            None => self.inner.confirm(request).await,
        }
    }
    async fn resolve(&self, id: &SaleId, hold: &Hold) -> Result<HoldTruth, LedgerError> {
        match self.fail() {
            Some(e) => e,
            None => self.inner.resolve(id, hold).await,
        }
    }
    async fn order(&self, id: &OrderId, user: &str) -> Result<Option<Order>, LedgerError> {
        match self.fail() {
            Some(e) => e,
            None => self.inner.order(id, user).await,
        }
    }
    async fn user_orders(
        &self,
        user: &str,
        sale: Option<&SaleId>,
    ) -> Result<Vec<Order>, LedgerError> {
        match self.fail() {
            Some(e) => e,
            None => self.inner.user_orders(user, sale).await,
        }
    }
    async fn sale_orders(&self, id: &SaleId) -> Result<Vec<Order>, LedgerError> {
        match self.fail() {
            Some(e) => e,
            None => self.inner.sale_orders(id).await,
        }
    }
    async fn ready(&self) -> Result<(), String> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(BACKEND_TEXT.into());
        }
        self.inner.ready().await
    }
}
