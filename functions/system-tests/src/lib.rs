//! A test harness in the spirit of zero-to-production: every test gets the
//! real auth, stock and order apps on random loopback ports, on real Redis
//! and DynamoDB Local, with tables of its own so tests never see each other.
//!
//! `REDIS_URL` and `DYNAMODB_ENDPOINT` say where the backends are (defaults:
//! the ports `just backends` uses). If they are not reachable, tests fail.

pub mod scale;
pub mod stampede;

use std::sync::Arc;
use std::time::Duration;

use common::client_ip::ClientIpPolicy;
use common::config::{Secret, Settings, StoreMode};
use common::http::HttpOptions;
use common::token::TokenSigner;
use inventory::admission::{CheckoutLimits, RatePolicy, RedisRateLimiter};
use inventory::gate::{RedisGate, StockGate};
use inventory::ledger::{DynamoLedger, Ledger};
use inventory::{Inventory, InventoryConfig};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub fn settings() -> Settings {
    let mut s = Settings::memory();
    s.store = StoreMode::Aws;
    common::redis_testbed::plain().apply(&mut s);
    s.dynamodb_endpoint =
        Some(std::env::var("DYNAMODB_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:8000".into()));
    let run = ulid::Ulid::new().to_string().to_lowercase();
    s.users_table = format!("test-users-{run}");
    s.ledger_table = format!("test-ledger-{run}");
    // DynamoDB Local on a busy 2-core machine can take seconds per call;
    // the production default (2 s) is for the real service.
    s.backend_timeout_ms = 15_000;
    s
}

/// [`settings`] on another Redis shape of the test bed (TLS-only, cluster).
pub fn settings_on(redis: &common::redis_testbed::RedisVariant) -> Settings {
    let mut s = settings();
    redis.apply(&mut s);
    s
}

/// Replaces the stack's ledger with one built around the real one.
pub type LedgerWrapper = Box<dyn FnOnce(Arc<dyn Ledger>) -> Arc<dyn Ledger> + Send>;

/// How to build a stack; the defaults are the production ones, except the
/// hashing queue, which is deep enough that concurrency tests see no sheds.
pub struct Options {
    pub settings: Settings,
    pub inventory: InventoryConfig,
    pub hash_workers: usize,
    pub hash_queue: usize,
    /// Wraps the real ledger, e.g. to inject faults.
    pub wrap_ledger: LedgerWrapper,
    /// Checkout rate limits (per user, per IP); the production defaults.
    pub per_user_rate: Option<RatePolicy>,
    pub per_ip_rate: Option<RatePolicy>,
    pub client_ip: ClientIpPolicy,
    /// `SALE_STOCK_BUCKETS`: gate buckets of a sale created without a count.
    pub default_stock_buckets: u16,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            settings: settings(),
            inventory: InventoryConfig {
                ledger_timeout: Duration::from_secs(10),
                hold_ttl: Duration::from_secs(30),
                ..InventoryConfig::default()
            },
            hash_workers: 2,
            hash_queue: 64,
            wrap_ledger: Box::new(|l| l),
            per_user_rate: inventory::admission::DEFAULT_PER_USER.parse().ok(),
            per_ip_rate: inventory::admission::DEFAULT_PER_IP.parse().ok(),
            client_ip: ClientIpPolicy::default(),
            default_stock_buckets: 1,
        }
    }
}

pub struct TestStack {
    pub auth: String,
    pub stock: String,
    pub order: String,
    pub client: reqwest::Client,
    pub signer: Arc<TokenSigner>,
    pub inventory: Inventory,
    pub gate: Arc<dyn StockGate>,
    pub ledger: Arc<dyn Ledger>,
    pub settings: Settings,
    shutdown: Vec<oneshot::Sender<()>>,
}

async fn spawn_app(router: axum::Router) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound address");
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = common::serve::serve_on(listener, router, async {
            let _ = rx.await;
        })
        .await;
    });
    (format!("http://{addr}"), tx)
}

impl TestStack {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> Self {
        // Logs are captured per test and shown when it fails.
        common::telemetry::init("system-test");
        let s = options.settings;
        let dynamo = common::backends::dynamodb(&s).await;
        let users = auth::store::DynamoUserStore::new(dynamo.clone(), &s.users_table);
        let ledger = DynamoLedger::new(dynamo, &s.ledger_table);
        if let Err(e) = users.migrate().await {
            panic!(
                "DynamoDB Local not reachable at {:?}: {e}. Run `just backends`.",
                s.dynamodb_endpoint
            );
        }
        ledger.migrate().await.expect("create the ledger table");
        let redis = common::backends::redis(&s).expect("valid REDIS_URL");
        if let Err(e) = common::backends::redis_ping(&redis).await {
            panic!(
                "Redis not reachable at {}: {e}. Run `just backends`.",
                s.redis_url
            );
        }
        let gate: Arc<dyn StockGate> = Arc::new(RedisGate::new(redis.clone()));
        let redis_for_rooms = redis.clone();
        let ledger: Arc<dyn Ledger> = (options.wrap_ledger)(Arc::new(ledger));
        let limits = CheckoutLimits::new(
            Arc::new(RedisRateLimiter::new(redis.clone())),
            options.per_user_rate,
            options.per_ip_rate,
        );
        let inventory = Inventory::with_limits(
            gate.clone(),
            ledger.clone(),
            options.inventory,
            Some(limits),
        );
        let signer = Arc::new(TokenSigner::generate(
            &s.token_issuer,
            &s.token_audience,
            900,
        ));
        let http = HttpOptions {
            max_in_flight: 8192,
        };

        let auth_state = auth::AuthState {
            users: Arc::new(users),
            throttle: Arc::new(auth::throttle::RedisThrottle::new(
                redis,
                Default::default(),
            )),
            hasher: auth::hasher::HasherPool::new(
                options.hash_workers,
                options.hash_queue,
                Default::default(),
            ),
            signer: signer.clone(),
        };
        let (auth, a) = spawn_app(auth::app(auth_state, &http)).await;
        // Waiting rooms on the stack's Redis; admission tokens signed by a
        // key of the stack's own, verified by its order function.
        let rooms: Arc<dyn inventory::waiting_room::WaitingRoom> =
            Arc::new(inventory::waiting_room::RedisRoom::new(redis_for_rooms));
        let admission = Arc::new(common::token::admission::AdmissionSigner::generate());
        let stock_state = stock::StockState {
            inventory: inventory.clone(),
            admin_token: Some(Secret::new(ADMIN_TOKEN)),
            default_stock_buckets: options.default_stock_buckets,
            room: rooms.clone(),
            admission: Some(admission.clone()),
            verifier: Some(Arc::new(signer.verifier())),
        };
        let (stock, b) = spawn_app(stock::app(stock_state, &http)).await;
        let order_state = order::OrderState {
            inventory: inventory.clone(),
            verifier: Arc::new(signer.verifier()),
            client_ip: Arc::new(options.client_ip),
            admissions: order::Admissions {
                verifier: Some(Arc::new(admission.verifier())),
                rooms: Some(rooms),
            },
        };
        let (order, c) = spawn_app(order::app(order_state, &http)).await;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(512)
            .build()
            .expect("http client");
        Self {
            auth,
            stock,
            order,
            client,
            signer,
            inventory,
            gate,
            ledger,
            settings: s,
            shutdown: vec![a, b, c],
        }
    }

    /// An access token for a user id, minted with the stack's signing key
    /// (so concurrency tests need not pay for argon2 per buyer).
    pub fn token(&self, user_id: &str) -> String {
        self.signer.issue(user_id, chrono::Utc::now().timestamp())
    }

    pub fn new_user(&self) -> (String, String) {
        let id = ulid::Ulid::new().to_string();
        let token = self.token(&id);
        (id, token)
    }

    /// Creates a live sale with a unique id; returns the id.
    pub async fn create_sale(&self, stock: u64, per_user_limit: u32) -> String {
        let sale_id = format!("s-{}", ulid::Ulid::new());
        let r = self
            .post_admin("/stock/sales", &json!({"sale_id": sale_id, "name": "Test sale", "stock": stock, "per_user_limit": per_user_limit}))
            .await;
        assert_eq!(r.status, 201, "create sale: {}", r.body);
        sale_id
    }

    pub async fn post_admin(&self, path: &str, body: &Value) -> Reply {
        let r = self
            .client
            .post(format!("{}{path}", self.stock))
            .bearer_auth(ADMIN_TOKEN)
            .json(body)
            .send()
            .await;
        Reply::from(r).await
    }

    pub async fn checkout(&self, token: &str, body: &Value, key: Option<&str>) -> Reply {
        let mut req = self
            .client
            .post(format!("{}/orders", self.order))
            .bearer_auth(token)
            .json(body);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        Reply::from(req.send().await).await
    }

    pub async fn get(&self, base: &str, path: &str, token: Option<&str>) -> Reply {
        let mut req = self.client.get(format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Reply::from(req.send().await).await
    }

    pub async fn sale_view(&self, sale_id: &str) -> Value {
        let r = self
            .get(&self.stock, &format!("/stock/sales/{sale_id}"), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    pub async fn breakdown(&self, sale_id: &str) -> Value {
        let r = self
            .get(
                &self.stock,
                &format!("/stock/sales/{sale_id}/breakdown"),
                Some(ADMIN_TOKEN),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    /// Confirmed orders of a sale straight from the ledger (the truth).
    pub async fn ledger_orders(&self, sale_id: &str) -> Vec<inventory::sale::Order> {
        let id = inventory::sale::SaleId::parse(sale_id).expect("sale id");
        self.ledger.sale_orders(&id).await.expect("ledger readable")
    }
}

impl Drop for TestStack {
    fn drop(&mut self) {
        for tx in self.shutdown.drain(..) {
            let _ = tx.send(());
        }
    }
}

/// A response, read whole: status, headers and JSON body (Null if none).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub async fn from(r: reqwest::Result<reqwest::Response>) -> Self {
        let r = r.expect("request reached the server");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.expect("read body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// Asserts the contract's error shape and returns the code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.code(), code, "body: {}", self.body);
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "message: {}",
            self.body
        );
        assert!(self.headers.contains_key("x-request-id"));
        if status == 429 || status == 503 {
            assert!(
                self.headers.contains_key("retry-after"),
                "{status} without Retry-After"
            );
        }
    }
}

/// Runs `n` futures with at most `width` in flight; results in input order.
pub async fn bounded<T, F>(width: usize, futures: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    use futures::StreamExt;
    futures::stream::iter(futures)
        .buffered(width)
        .collect()
        .await
}

impl TestStack {
    /// Only the auth app, on settings whose Redis may be unreachable; for
    /// readiness tests. Returns its base URL (the app stops with the test).
    pub async fn spawn_with_unchecked_redis(s: Settings) -> String {
        let dynamo = common::backends::dynamodb(&s).await;
        let users = auth::store::DynamoUserStore::new(dynamo, &s.users_table);
        users.migrate().await.expect("create the users table");
        let redis = common::backends::redis(&s).expect("valid REDIS_URL");
        let state = auth::AuthState {
            users: Arc::new(users),
            throttle: Arc::new(auth::throttle::RedisThrottle::new(
                redis,
                Default::default(),
            )),
            hasher: auth::hasher::HasherPool::new(1, 4, Default::default()),
            signer: Arc::new(TokenSigner::generate(
                &s.token_issuer,
                &s.token_audience,
                900,
            )),
        };
        let (url, tx) = spawn_app(auth::app(state, &HttpOptions { max_in_flight: 64 })).await;
        std::mem::forget(tx); // keep serving until the test process ends
        url
    }
}

/// What the faulty ledger does to the next order writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// The service refuses the write: it certainly did not happen.
    RefuseBeforeWrite,
    /// The write happens, but the caller sees a timeout.
    TimeoutAfterWrite,
    /// The caller sees a timeout and the write never happened.
    TimeoutBeforeWrite,
    /// The write takes this long, then happens.
    Slow(Duration),
}

/// A ledger that injects faults into `confirm` and passes everything else
/// through to the real one: the store trait is the injection point.
pub struct FaultyLedger {
    inner: Arc<dyn Ledger>,
    fault: std::sync::Mutex<Fault>,
    last_request: std::sync::Mutex<Option<inventory::ledger::ConfirmRequest>>,
}

impl FaultyLedger {
    pub fn new(inner: Arc<dyn Ledger>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            fault: std::sync::Mutex::new(Fault::None),
            last_request: std::sync::Mutex::new(None),
        })
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    /// The last order write attempted, to replay a "late" write by hand.
    pub fn last_request(&self) -> Option<inventory::ledger::ConfirmRequest> {
        self.last_request
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait::async_trait]
impl Ledger for FaultyLedger {
    async fn create_sale(
        &self,
        sale: &inventory::sale::SaleDefinition,
    ) -> Result<bool, inventory::ledger::LedgerError> {
        self.inner.create_sale(sale).await
    }
    async fn sale(
        &self,
        id: &inventory::sale::SaleId,
    ) -> Result<Option<inventory::sale::SaleDefinition>, inventory::ledger::LedgerError> {
        self.inner.sale(id).await
    }
    async fn confirmed_units(
        &self,
        id: &inventory::sale::SaleId,
    ) -> Result<u64, inventory::ledger::LedgerError> {
        self.inner.confirmed_units(id).await
    }
    async fn confirm(
        &self,
        request: &inventory::ledger::ConfirmRequest,
    ) -> Result<inventory::ledger::ConfirmOutcome, inventory::ledger::LedgerError> {
        use inventory::ledger::LedgerError;
        *self.last_request.lock().unwrap_or_else(|p| p.into_inner()) = Some(request.clone());
        let fault = *self.fault.lock().unwrap_or_else(|p| p.into_inner());
        match fault {
            Fault::None => self.inner.confirm(request).await,
            Fault::RefuseBeforeWrite => Err(LedgerError::Definite("injected: refused".into())),
            Fault::TimeoutBeforeWrite => Err(LedgerError::Uncertain(
                "injected: timeout before write".into(),
            )),
            Fault::TimeoutAfterWrite => {
                self.inner.confirm(request).await?;
                Err(LedgerError::Uncertain(
                    "injected: timeout after write".into(),
                ))
            }
            Fault::Slow(delay) => {
                tokio::time::sleep(delay).await;
                self.inner.confirm(request).await
            }
        }
    }
    async fn resolve(
        &self,
        id: &inventory::sale::SaleId,
        hold: &inventory::gate::Hold,
    ) -> Result<inventory::ledger::HoldTruth, inventory::ledger::LedgerError> {
        self.inner.resolve(id, hold).await
    }
    async fn order(
        &self,
        id: &inventory::sale::OrderId,
        user: &str,
    ) -> Result<Option<inventory::sale::Order>, inventory::ledger::LedgerError> {
        self.inner.order(id, user).await
    }
    async fn user_orders(
        &self,
        user: &str,
        sale: Option<&inventory::sale::SaleId>,
    ) -> Result<Vec<inventory::sale::Order>, inventory::ledger::LedgerError> {
        self.inner.user_orders(user, sale).await
    }
    async fn sale_orders(
        &self,
        id: &inventory::sale::SaleId,
    ) -> Result<Vec<inventory::sale::Order>, inventory::ledger::LedgerError> {
        self.inner.sale_orders(id).await
    }
    async fn ready(&self) -> Result<(), String> {
        self.inner.ready().await
    }
}

/// A private redis-server on a free loopback port, for tests that flush or
/// kill Redis without disturbing anything else. Killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut me = Self { port, child: None };
        me.restart();
        me
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) an empty Redis on the same port.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH (run `just install`)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("private redis-server did not start on port {}", self.port);
    }

    /// SIGKILL: no goodbye, no persistence.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
