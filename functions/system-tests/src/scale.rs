//! Scale-out: one sale, many order instances, the way the platforms run them.
//!
//! Every other system test proves the guarantees with ONE order instance.
//! In production `order` runs as many: Knative scales it to N pods, Lambda to
//! N execution environments. Each instance has its own [`Inventory`]: its own
//! DynamoDB client and group-commit queue (`ledger/dynamo`: per sale one
//! transaction in flight *per instance*, so N instances mean N transactions
//! racing for the sale's counter item), its own sold-out and sale caches and
//! its own lazy sweeps of lapsed holds. They share only Redis (the gate) and
//! the ledger table. A [`Cluster`] builds that, in process, in two shapes:
//!
//! - [`Shape::Http`]: N instances, each an order `Router` served on its own
//!   loopback port, with clients spread over them round-robin, as Knative's
//!   activator and queue-proxies spread requests over pods.
//! - [`Shape::Lambda`]: execution environments that serve **one request at
//!   a time** and are **frozen between requests**. See [`lambda`] for how the
//!   freeze is made real (a current-thread runtime per environment, driven
//!   only while a request is served) and how the dispatcher in front hands
//!   each request to an idle environment, starting a new one when none is
//!   idle, up to the function's concurrency.
//!
//! Around the order instances sits an ordinary [`TestStack`] (auth, stock,
//! the admin breakdown, direct ledger reads for audits) on DynamoDB Local
//! itself: only the order instances go through the DynamoDB endpoint given
//! in [`ScaleOptions::dynamodb_endpoint`] (the limits proxy in the scale-out
//! tests), so audits are neither throttled nor counted in the proxy's
//! figures. The stack's own stock app sweeps when a *sale view* is read, so
//! tests that want to see what the order instances alone do read the
//! breakdown (which never sweeps) until the end.
//!
//! [`buyers`] is the client model (each buyer retries a `503` after its
//! `Retry-After`, with the same `Idempotency-Key`) and [`audit`] checks every
//! answer against the contract and the stores against its guarantees.

pub mod audit;
pub mod buyers;
pub mod lambda;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::client_ip::ClientIpPolicy;
use common::config::Settings;
use common::http::HttpOptions;
use common::token::TokenVerifier;
use inventory::admission::{CheckoutLimits, RatePolicy, RedisRateLimiter};
use inventory::gate::RedisGate;
use inventory::ledger::{DynamoLedger, Ledger};
use inventory::{Inventory, InventoryConfig};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::{Options, Reply, TestStack};

/// `MAX_IN_FLIGHT`'s default for the order function (`order/src/main.rs`).
pub const ORDER_MAX_IN_FLIGHT: usize = 4096;

/// Wraps each instance's real ledger (e.g. in a [`crate::FaultyLedger`]);
/// called once per instance, from inside that instance's runtime.
pub type SharedLedgerWrapper = Arc<dyn Fn(Arc<dyn Ledger>) -> Arc<dyn Ledger> + Send + Sync>;

/// How the platform runs the order function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Long-lived pods behind a load balancer (Knative, a container).
    Http,
    /// Lambda: one request per environment at a time, frozen in between.
    Lambda,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Shape::Http => "http",
            Shape::Lambda => "lambda",
        })
    }
}

pub struct ScaleOptions {
    pub shape: Shape,
    /// HTTP: the number of instances (pods). Lambda: the most environments
    /// alive at once (the function's concurrency).
    pub instances: usize,
    /// Every instance's inventory settings (Lambda-shaped ones also get
    /// `inline_upkeep`, see [`instance_config`]).
    pub inventory: InventoryConfig,
    /// Where the order instances reach DynamoDB; `None`: DynamoDB Local,
    /// like the stack around them.
    pub dynamodb_endpoint: Option<String>,
    pub wrap_ledger: Option<SharedLedgerWrapper>,
    /// Requests one HTTP instance serves at once before shedding (`503`).
    pub max_in_flight: usize,
}

impl ScaleOptions {
    /// Production inventory settings except a short hold TTL (3 s), so the
    /// bound on lapsed holds is cheap to observe.
    pub fn new(shape: Shape, instances: usize) -> Self {
        Self {
            shape,
            instances,
            inventory: InventoryConfig {
                hold_ttl: Duration::from_secs(3),
                ..InventoryConfig::default()
            },
            dynamodb_endpoint: None,
            wrap_ledger: None,
            max_in_flight: ORDER_MAX_IN_FLIGHT,
        }
    }
}

/// What every order instance is built from. Each instance builds its own
/// clients from it, so nothing but Redis and the table is shared.
#[derive(Clone)]
struct InstanceSpec {
    settings: Settings,
    inventory: InventoryConfig,
    verifier: Arc<TokenVerifier>,
    wrap_ledger: Option<SharedLedgerWrapper>,
    per_user_rate: Option<RatePolicy>,
    per_ip_rate: Option<RatePolicy>,
    max_in_flight: usize,
}

/// The inventory settings of one instance of `shape`.
///
/// Lambda freezes an environment between requests, so upkeep that the
/// engine leaves to background tasks (sweeps, the delayed resolve of an
/// uncertain checkout) runs only while some request is being served there.
/// `inline_upkeep` tells the engine so, and it does that upkeep inside the
/// request instead.
pub fn instance_config(shape: Shape, base: &InventoryConfig) -> InventoryConfig {
    InventoryConfig {
        inline_upkeep: shape == Shape::Lambda,
        ..base.clone()
    }
}

/// Builds one order instance (its own DynamoDB client, ledger queue, Redis
/// connection, caches) and returns its Router. Runs inside
/// the runtime that will drive the instance, so the clients' background
/// tasks (connection drivers, the ledger's committer) live there too.
async fn build_instance(spec: InstanceSpec) -> axum::Router {
    let s = &spec.settings;
    let dynamo = common::backends::dynamodb(s).await;
    let ledger: Arc<dyn Ledger> = Arc::new(DynamoLedger::new(dynamo, &s.ledger_table));
    let ledger = match &spec.wrap_ledger {
        Some(wrap) => wrap(ledger),
        None => ledger,
    };
    let redis = common::backends::redis(s).expect("REDIS_URL is valid (the stack used it)");
    let limits = CheckoutLimits::new(
        Arc::new(RedisRateLimiter::new(redis.clone())),
        spec.per_user_rate,
        spec.per_ip_rate,
    );
    let inventory = Inventory::with_limits(
        Arc::new(RedisGate::new(redis)),
        ledger,
        spec.inventory,
        Some(limits),
    );
    let state = order::OrderState {
        inventory,
        verifier: spec.verifier,
        client_ip: Arc::new(ClientIpPolicy::default()),
        admissions: Default::default(),
    };
    let http = HttpOptions {
        max_in_flight: spec.max_in_flight,
    };
    order::app(state, &http)
}

/// One sale's worth of order instances around a [`TestStack`].
pub struct Cluster {
    /// Auth, stock, admin breakdown and ledger reads, on DynamoDB Local.
    pub stack: TestStack,
    pub shape: Shape,
    /// The inventory settings every instance runs with.
    pub config: InventoryConfig,
    front: Front,
}

enum Front {
    Http(HttpFront),
    Lambda(lambda::LambdaFront),
}

impl Cluster {
    pub async fn start(options: ScaleOptions) -> Self {
        let config = instance_config(options.shape, &options.inventory);
        let stack = TestStack::spawn_with(Options {
            inventory: options.inventory.clone(),
            ..Options::default()
        })
        .await;
        let mut settings = stack.settings.clone();
        if let Some(endpoint) = options.dynamodb_endpoint {
            settings.dynamodb_endpoint = Some(endpoint);
        }
        let spec = InstanceSpec {
            settings,
            inventory: config.clone(),
            verifier: Arc::new(stack.signer.verifier()),
            wrap_ledger: options.wrap_ledger,
            // The production checkout rate limits, as in the stack.
            per_user_rate: inventory::admission::DEFAULT_PER_USER.parse().ok(),
            per_ip_rate: inventory::admission::DEFAULT_PER_IP.parse().ok(),
            max_in_flight: options.max_in_flight,
        };
        let instances = options.instances.max(1);
        let front = match options.shape {
            Shape::Http => Front::Http(HttpFront::start(spec, instances).await),
            Shape::Lambda => Front::Lambda(lambda::LambdaFront::new(instances, move || {
                let spec = spec.clone();
                Box::pin(build_instance(spec))
            })),
        };
        Self {
            stack,
            shape: options.shape,
            config,
            front,
        }
    }

    /// `POST /orders` through the platform's front: the next HTTP instance
    /// round-robin, or an idle (or new) Lambda environment. `Err` is a
    /// transport failure: no HTTP answer at all.
    pub async fn checkout(
        &self,
        token: &str,
        body: &Value,
        key: Option<&str>,
    ) -> Result<Reply, String> {
        match &self.front {
            Front::Http(front) => front.checkout(token, body, key).await,
            Front::Lambda(front) => front.checkout(token, body, key).await,
        }
    }

    /// HTTP: the instances. Lambda: the environments started so far (cold
    /// starts), never more than the concurrency.
    pub fn instances_started(&self) -> usize {
        match &self.front {
            Front::Http(front) => front.urls.len(),
            Front::Lambda(front) => front.started(),
        }
    }

    /// How long after it lapses a hold must be resolved, while requests keep
    /// arriving (README, guarantee 4): one sweep interval for the next sweep
    /// to start, one ledger timeout for it to get its answer.
    pub fn lapse_bound(&self) -> Duration {
        self.config.sweep_interval + self.config.ledger_timeout
    }
}

/// N order instances on N loopback ports, and a round-robin client.
struct HttpFront {
    urls: Vec<String>,
    next: AtomicUsize,
    client: reqwest::Client,
    /// Dropping these stops the servers.
    _shutdown: Vec<oneshot::Sender<()>>,
}

impl HttpFront {
    async fn start(spec: InstanceSpec, instances: usize) -> Self {
        let mut urls = Vec::with_capacity(instances);
        let mut shutdown = Vec::with_capacity(instances);
        for _ in 0..instances {
            let (url, stop) = serve(build_instance(spec.clone()).await).await;
            urls.push(url);
            shutdown.push(stop);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1024)
            .build()
            .expect("http client");
        Self {
            urls,
            next: AtomicUsize::new(0),
            client,
            _shutdown: shutdown,
        }
    }

    async fn checkout(
        &self,
        token: &str,
        body: &Value,
        key: Option<&str>,
    ) -> Result<Reply, String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len();
        let mut req = self
            .client
            .post(format!("{}/orders", self.urls[i]))
            .bearer_auth(token)
            .json(body);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let response = req.send().await.map_err(|e| format!("instance {i}: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("instance {i}: reading the body: {e}"))?;
        Ok(Reply {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    }
}

/// Serves `router` on a random loopback port until the sender is dropped.
async fn serve(router: axum::Router) -> (String, oneshot::Sender<()>) {
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
