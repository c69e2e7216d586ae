//! Abuse hardening (issue 13, items 1–4), on the real backends:
//!
//! 1. login throttling holds under concurrency, across two auth instances;
//! 2. per-address limits cannot be sidestepped (forged `X-Forwarded-For`
//!    from a private-range client, IPv6 /64s, unreadable chains);
//! 3. no error answer carries a backend message, a trace or a key, with the
//!    backends up, refusing, or gone;
//! 4. random unknown sale ids cost a bounded number of ledger reads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auth::hasher::HasherPool;
use auth::throttle::{RedisThrottle, ThrottlePolicy};
use axum::extract::ConnectInfo;
use common::client_ip::{ClientIpPolicy, ClientIpSource};
use common::config::Settings;
use common::http::HttpOptions;
use common::token::{Claims, TokenSigner};
use http_body_util::BodyExt;
use inventory::gate::Hold;
use inventory::ledger::{ConfirmOutcome, ConfirmRequest, HoldTruth, Ledger, LedgerError};
use inventory::sale::{Order, OrderId, SaleDefinition, SaleId};
use serde_json::{json, Value};
use system_tests::{bounded, Options, PrivateRedis, Reply, TestStack, ADMIN_TOKEN};
use tower::ServiceExt;

const PASSWORD: &str = "correct horse battery staple";

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", ulid::Ulid::new().to_string().to_lowercase())
}

fn random_u64() -> u64 {
    ulid::Ulid::new().random() as u64
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("bound address"));
    tokio::spawn(common::serve::serve_on(
        listener,
        router,
        std::future::pending::<()>(),
    ));
    url
}

async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> Reply {
    Reply::from(client.post(url).json(body).send().await).await
}

fn retry_after(r: &Reply) -> u64 {
    r.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{} without a numeric Retry-After", r.status))
}

// ------------------------------------------------------------ 1. logins

/// One more auth instance on the stack's users table and Redis, with its
/// own hashing pool (whose verification count is the measure).
async fn auth_instance(
    s: &Settings,
    signer: Arc<TokenSigner>,
    policy: ThrottlePolicy,
) -> (String, HasherPool) {
    let dynamo = common::backends::dynamodb(s).await;
    let redis = common::backends::redis(s).expect("valid REDIS_URL");
    let hasher = HasherPool::new(2, 512, Default::default());
    let state = auth::AuthState {
        users: Arc::new(auth::store::DynamoUserStore::new(dynamo, &s.users_table)),
        throttle: Arc::new(RedisThrottle::new(redis, policy)),
        hasher: hasher.clone(),
        signer,
    };
    let url = serve(auth::app(
        state,
        &HttpOptions {
            max_in_flight: 1024,
        },
    ))
    .await;
    (url, hasher)
}

struct Burst {
    wrong: Vec<Reply>,
    locked: Vec<Reply>,
    checked: u64,
}

/// 200 concurrent wrong guesses at `username`, alternating between the
/// instances.
async fn guess_200(
    client: &reqwest::Client,
    instances: &[(String, HasherPool); 2],
    username: &str,
) -> Burst {
    let checked = || {
        instances
            .iter()
            .map(|(_, h)| h.verifications())
            .sum::<u64>()
    };
    let before = checked();
    let replies = futures::future::join_all((0..200).map(|i| {
        let url = format!("{}/auth/login", instances[i % 2].0);
        let body = json!({"username": username, "password": format!("wrong guess number {i}")});
        async move { post_json(client, &url, &body).await }
    }))
    .await;
    let checked = checked() - before;
    let (wrong, rest): (Vec<Reply>, Vec<Reply>) =
        replies.into_iter().partition(|r| r.status == 401);
    let (locked, other): (Vec<Reply>, Vec<Reply>) = rest.into_iter().partition(|r| r.status == 429);
    assert!(
        other.is_empty(),
        "{:?}",
        other.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    Burst {
        wrong,
        locked,
        checked,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_guesses_on_two_instances_check_at_most_five_passwords() {
    let stack = TestStack::spawn().await;
    let policy = ThrottlePolicy {
        max_failures: 5,
        window: Duration::from_secs(8),
    };
    let instances = [
        auth_instance(&stack.settings, stack.signer.clone(), policy).await,
        auth_instance(&stack.settings, stack.signer.clone(), policy).await,
    ];
    let client = &stack.client;
    let name = unique("victim");
    let r = post_json(
        client,
        &format!("{}/auth/register", instances[0].0),
        &json!({"username": name, "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);

    let known = guess_200(client, &instances, &name).await;
    assert!(known.checked <= 5, "{} passwords checked", known.checked);
    assert_eq!(known.wrong.len() as u64, known.checked, "one 401 per check");
    assert_eq!(known.wrong.len(), 5, "no slot was lost");
    assert_eq!(known.locked.len(), 195);
    for r in known.wrong.iter().chain(&known.locked) {
        let code = if r.status == 401 {
            "invalid_credentials"
        } else {
            "too_many_attempts"
        };
        r.assert_error(r.status, code);
    }
    for r in &known.locked {
        assert!((1..=8).contains(&retry_after(r)), "{:?}", r.headers);
    }

    // An unknown name is throttled the same way and looks the same.
    let ghost = guess_200(client, &instances, &unique("ghost")).await;
    assert_eq!(
        (ghost.checked, ghost.wrong.len(), ghost.locked.len()),
        (5, 5, 195)
    );
    assert_eq!(ghost.wrong[0].body, known.wrong[0].body);
    assert_eq!(ghost.locked[0].body, known.locked[0].body);
    assert_eq!(ghost.wrong[0].status, known.wrong[0].status);

    // The right password waits out the lock, on either instance, unchecked.
    let before: u64 = instances.iter().map(|(_, h)| h.verifications()).sum();
    let right = json!({"username": name.to_uppercase(), "password": PASSWORD});
    let urls: Vec<String> = instances
        .iter()
        .map(|(url, _)| format!("{url}/auth/login"))
        .collect();
    let login = |i: usize| post_json(client, &urls[i], &right);
    let r = login(1).await;
    r.assert_error(429, "too_many_attempts");
    let after: u64 = instances.iter().map(|(_, h)| h.verifications()).sum();
    assert_eq!(after, before, "a locked login checks nothing");
    tokio::time::sleep(Duration::from_secs(retry_after(&r)) + Duration::from_millis(300)).await;
    let r = login(0).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["access_token"].as_str().is_some());
}

// ------------------------------------------------------- 2. addresses

/// The order app alone, called in process with a chosen TCP peer (the
/// servers here only listen on loopback, so a private-range or IPv6 peer
/// can only be had this way).
fn order_app(stack: &TestStack, policy: ClientIpPolicy) -> axum::Router {
    order::app(
        order::OrderState {
            inventory: stack.inventory.clone(),
            verifier: Arc::new(stack.signer.verifier()),
            client_ip: Arc::new(policy),
        },
        &HttpOptions { max_in_flight: 64 },
    )
}

async fn checkout_from(
    app: &axum::Router,
    stack: &TestStack,
    sale: &str,
    peer: &str,
    forwarded_for: Option<&str>,
) -> (u16, Value) {
    let (_, token) = stack.new_user();
    let mut req = axum::http::Request::post("/orders")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"));
    if let Some(xff) = forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    let mut req = req
        .body(axum::body::Body::from(json!({"sale_id": sale}).to_string()))
        .expect("request");
    let peer: SocketAddr = peer.parse().expect("peer address");
    req.extensions_mut().insert(ConnectInfo(peer));
    let response = app.clone().oneshot(req).await.expect("infallible");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn statuses(replies: &[(u16, Value)]) -> Vec<u16> {
    replies.iter().map(|r| r.0).collect()
}

/// A stack whose only limit is 3 checkouts per address per minute.
async fn per_ip_stack() -> TestStack {
    TestStack::spawn_with(Options {
        per_user_rate: None,
        per_ip_rate: Some("3/1m".parse().expect("policy")),
        ..Options::default()
    })
    .await
}

fn random_private_v4() -> String {
    let b = random_u64();
    format!(
        "10.{}.{}.{}",
        (b >> 16) as u8,
        (b >> 8) as u8,
        (b as u8).max(1)
    )
}

#[tokio::test]
async fn a_private_range_client_forging_x_forwarded_for_is_counted_under_its_own_address() {
    let stack = per_ip_stack().await;
    let sale = stack.create_sale(1000, 1).await;
    let modes = [
        ClientIpPolicy::default(),
        ClientIpPolicy {
            source: ClientIpSource::ForwardedFor,
            ..ClientIpPolicy::default()
        },
    ];
    for policy in modes {
        let source = policy.source;
        let app = order_app(&stack, policy);
        let client = random_private_v4();
        let mut replies = Vec::new();
        for i in 0..6 {
            // A fresh "address" in front every time, and one of ours too.
            let forged = format!("198.51.100.{i}, 10.0.0.{i}, 127.0.0.1");
            let peer = format!("{client}:{}", 40_000 + i);
            replies.push(checkout_from(&app, &stack, &sale, &peer, Some(&forged)).await);
        }
        assert_eq!(
            statuses(&replies),
            [201, 201, 201, 429, 429, 429],
            "{source:?}: {:?}",
            replies.last()
        );
        assert_eq!(replies[3].1["error"]["code"], "rate_limited");
        // Its neighbour has a budget of its own.
        let neighbour = format!("{}:1", random_private_v4());
        let r = checkout_from(&app, &stack, &sale, &neighbour, Some("198.51.100.1")).await;
        assert_eq!(r.0, 201, "{source:?}: {}", r.1);
    }
}

#[tokio::test]
async fn ipv6_clients_are_counted_per_64_not_per_address() {
    let stack = per_ip_stack().await;
    let sale = stack.create_sale(1000, 1).await;
    let b = random_u64();
    let net = format!("2001:db8:{:x}:{:x}", (b >> 16) as u16, b as u16);
    // Directly connected, a fresh interface id every time.
    let app = order_app(&stack, ClientIpPolicy::default());
    let mut replies = Vec::new();
    for i in 1..=5u64 {
        let peer = format!("[{net}:{:x}:{:x}::{i:x}]:443", random_u64() as u16, i);
        replies.push(checkout_from(&app, &stack, &sale, &peer, None).await);
    }
    assert_eq!(statuses(&replies), [201, 201, 201, 429, 429]);
    // Through our proxy (loopback) the same network is the same budget.
    let proxied = order_app(
        &stack,
        ClientIpPolicy {
            source: ClientIpSource::ForwardedFor,
            ..ClientIpPolicy::default()
        },
    );
    let xff = format!("{net}:dead:beef:1:2");
    let r = checkout_from(&proxied, &stack, &sale, "127.0.0.1:5000", Some(&xff)).await;
    assert_eq!(r.0, 429, "{}", r.1);
    // The next /64 over is somebody else.
    let next = format!(
        "[2001:db8:{:x}:{:x}::1]:443",
        (b >> 16) as u16,
        (b as u16) ^ 1
    );
    let r = checkout_from(&app, &stack, &sale, &next, None).await;
    assert_eq!(r.0, 201, "{}", r.1);
}

#[tokio::test]
async fn an_unreadable_chain_is_counted_under_the_peer_and_never_exempt() {
    let stack = per_ip_stack().await;
    let sale = stack.create_sale(1000, 1).await;
    let app = order_app(
        &stack,
        ClientIpPolicy {
            source: ClientIpSource::ForwardedFor,
            ..ClientIpPolicy::default()
        },
    );
    // The peer is loopback (our proxy; exempt as a client): a readable
    // chain that ends in loopback is exempt...
    let b = random_u64();
    let peer = format!(
        "127.{}.{}.{}:8012",
        (b >> 16) as u8,
        (b >> 8) as u8,
        (b as u8).max(1)
    );
    for _ in 0..5 {
        let r = checkout_from(&app, &stack, &sale, &peer, Some("127.0.0.1")).await;
        assert_eq!(r.0, 201, "{}", r.1);
    }
    // ...but a broken one is counted under that peer: 3, then 429.
    let mut replies = Vec::new();
    for broken in [
        "198.51.100.7, not-an-address",
        "198.51.100.8,",
        "198.51.100.9:443",
        "[::1], 198.51.100.10, garbage",
    ] {
        replies.push(checkout_from(&app, &stack, &sale, &peer, Some(broken)).await);
    }
    assert_eq!(statuses(&replies), [201, 201, 201, 429]);
}

// ------------------------------------------------------------ 3. leaks

/// What no error body may contain: backend names and messages, traces,
/// file paths, cloud resource names, keys and secrets.
fn leaks_in(text: &str, secrets: &[&str]) -> Vec<String> {
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
struct Answers(Vec<(String, Reply)>);

impl Answers {
    fn add(&mut self, what: impl Into<String>, r: Reply) {
        self.0.push((what.into(), r));
    }

    /// Asserts the contract's shape and the absence of leaks in every error
    /// answer collected; returns how many were checked.
    fn check(&self, secrets: &[&str]) -> usize {
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
struct LeakyLedger {
    inner: Arc<dyn Ledger>,
    failing: Arc<AtomicBool>,
}

const BACKEND_TEXT: &str = "dynamodb: ServiceError { source: ResourceNotFoundException: \
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

async fn send(req: reqwest::RequestBuilder) -> Reply {
    Reply::from(req.send().await).await
}

/// Every error row of the contract (and of its extensions), once.
async fn contract_errors(stack: &TestStack, out: &mut Answers) {
    let c = &stack.client;
    let (auth, stockf, orderf) = (&stack.auth, &stack.stock, &stack.order);
    let name = unique("leak");
    let register = format!("{auth}/auth/register");
    let login = format!("{auth}/auth/login");
    let r = post_json(
        c,
        &register,
        &json!({"username": name, "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);

    // auth
    for (what, body) in [
        (
            "register: bad username",
            json!({"username": "!!", "password": PASSWORD}),
        ),
        (
            "register: short password",
            json!({"username": unique("u"), "password": "short"}),
        ),
        (
            "register: unknown field",
            json!({"username": unique("u"), "password": PASSWORD, "admin": true}),
        ),
        (
            "register: wrong type",
            json!({"username": 5, "password": PASSWORD}),
        ),
        ("register: missing field", json!({"username": unique("u")})),
        (
            "register: taken",
            json!({"username": name, "password": PASSWORD}),
        ),
        (
            "login: wrong password",
            json!({"username": name, "password": "not the password"}),
        ),
        (
            "login: unknown user",
            json!({"username": unique("nobody"), "password": PASSWORD}),
        ),
        (
            "login: invalid username",
            json!({"username": "!!", "password": PASSWORD}),
        ),
    ] {
        let url = if what.starts_with("register") {
            &register
        } else {
            &login
        };
        out.add(what, post_json(c, url, &body).await);
    }
    for _ in 0..5 {
        post_json(
            c,
            &login,
            &json!({"username": name, "password": "wrong again!"}),
        )
        .await;
    }
    out.add(
        "login: locked",
        post_json(c, &login, &json!({"username": name, "password": PASSWORD})).await,
    );
    out.add(
        "login: malformed JSON",
        send(
            c.post(&login)
                .header("content-type", "application/json")
                .body("{\"username\":"),
        )
        .await,
    );
    out.add(
        "login: not JSON",
        send(
            c.post(&login)
                .header("content-type", "text/plain")
                .body("hello"),
        )
        .await,
    );
    out.add(
        "login: 17 KiB",
        send(
            c.post(&login)
                .header("content-type", "application/json")
                .body(format!("{{\"username\":\"{}\"}}", "x".repeat(17 * 1024))),
        )
        .await,
    );
    out.add("GET /auth/login", send(c.get(&login)).await);
    out.add(
        "unknown auth route",
        send(c.get(format!("{auth}/auth/nope"))).await,
    );

    // stock
    let sales = format!("{stockf}/stock/sales");
    let sale = stack.create_sale(1, 1).await;
    let new_sale = json!({"sale_id": unique("s-"), "name": "n", "stock": 5});
    out.add(
        "create sale: no token",
        send(c.post(&sales).json(&new_sale)).await,
    );
    out.add(
        "create sale: user token",
        send(
            c.post(&sales)
                .bearer_auth(stack.token("u1"))
                .json(&new_sale),
        )
        .await,
    );
    out.add(
        "create sale: truncated admin token",
        send(
            c.post(&sales)
                .bearer_auth(&ADMIN_TOKEN[..10])
                .json(&new_sale),
        )
        .await,
    );
    for (what, body) in [
        (
            "create sale: stock 0",
            json!({"sale_id": unique("s-"), "name": "n", "stock": 0}),
        ),
        (
            "create sale: bad id",
            json!({"sale_id": "no spaces!", "name": "n", "stock": 1}),
        ),
        (
            "create sale: limit 0",
            json!({"sale_id": unique("s-"), "name": "n", "stock": 1, "per_user_limit": 0}),
        ),
        (
            "create sale: bad time",
            json!({"sale_id": unique("s-"), "name": "n", "stock": 1, "starts_at": "tomorrow"}),
        ),
        (
            "create sale: exists",
            json!({"sale_id": sale, "name": "n", "stock": 1}),
        ),
    ] {
        out.add(what, stack.post_admin("/stock/sales", &body).await);
    }
    for path in [
        "/stock/sales/does-not-exist".to_owned(),
        "/stock/sales/%2e%2e%2fetc".to_owned(),
        format!("/stock/sales/{}", "x".repeat(100)),
    ] {
        out.add(format!("GET {path}"), stack.get(stockf, &path, None).await);
    }
    out.add(
        "breakdown: no token",
        stack
            .get(stockf, &format!("/stock/sales/{sale}/breakdown"), None)
            .await,
    );
    out.add(
        "breakdown: unknown sale",
        stack
            .get(
                stockf,
                "/stock/sales/nope-nope/breakdown",
                Some(ADMIN_TOKEN),
            )
            .await,
    );
    out.add(
        "reconcile: no token",
        send(c.post(format!("{stockf}/stock/sales/{sale}/reconcile"))).await,
    );

    // order
    let (_, buyer) = stack.new_user();
    let first = stack
        .checkout(&buyer, &json!({"sale_id": sale}), None)
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let roomy = stack.create_sale(100, 2).await;
    let start = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let upcoming = unique("s-");
    let r = stack
        .post_admin(
            "/stock/sales",
            &json!({"sale_id": upcoming, "name": "n", "stock": 5, "starts_at": start}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let expired = stack.signer.sign_claims(&Claims {
        sub: "u1".into(),
        iss: stack.settings.token_issuer.clone(),
        aud: stack.settings.token_audience.clone(),
        iat: 1_000,
        exp: 2_000,
        nbf: None,
    });
    let foreign = TokenSigner::generate(
        &stack.settings.token_issuer,
        &stack.settings.token_audience,
        900,
    )
    .issue("u1", chrono::Utc::now().timestamp());
    let orders = format!("{orderf}/orders");
    out.add(
        "checkout: no token",
        send(c.post(&orders).json(&json!({"sale_id": roomy}))).await,
    );
    for (what, token) in [
        ("checkout: expired token", expired.as_str()),
        ("checkout: foreign token", foreign.as_str()),
        ("checkout: garbage token", "a.b.c"),
    ] {
        out.add(
            what,
            stack
                .checkout(token, &json!({"sale_id": roomy}), None)
                .await,
        );
    }
    let (_, other) = stack.new_user();
    for (what, body) in [
        (
            "checkout: quantity 0",
            json!({"sale_id": roomy, "quantity": 0}),
        ),
        (
            "checkout: quantity over the limit",
            json!({"sale_id": roomy, "quantity": 3}),
        ),
        (
            "checkout: quantity not a number",
            json!({"sale_id": roomy, "quantity": "two"}),
        ),
        (
            "checkout: unknown sale",
            json!({"sale_id": "no-such-sale-here"}),
        ),
        (
            "checkout: impossible sale id",
            json!({"sale_id": "../../etc/passwd"}),
        ),
        ("checkout: sold out", json!({"sale_id": sale})),
        ("checkout: not live", json!({"sale_id": upcoming})),
    ] {
        out.add(what, stack.checkout(&other, &body, None).await);
    }
    out.add(
        "checkout: limit reached",
        stack
            .checkout(&buyer, &json!({"sale_id": sale}), None)
            .await,
    );
    let key = unique("k");
    let r = stack
        .checkout(&other, &json!({"sale_id": roomy}), Some(&key))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    out.add(
        "checkout: key reused",
        stack
            .checkout(
                &other,
                &json!({"sale_id": roomy, "quantity": 2}),
                Some(&key),
            )
            .await,
    );
    out.add(
        "checkout: key too long",
        stack
            .checkout(&other, &json!({"sale_id": roomy}), Some(&"k".repeat(65)))
            .await,
    );
    out.add(
        "GET someone else's order",
        stack
            .get(
                orderf,
                &format!("/orders/{}", r.body["order_id"].as_str().unwrap_or("x")),
                Some(&buyer),
            )
            .await,
    );
    out.add(
        "GET /orders/garbage",
        stack.get(orderf, "/orders/garbage", Some(&buyer)).await,
    );
    out.add(
        "GET /orders without a token",
        stack.get(orderf, "/orders", None).await,
    );
    out.add("DELETE /orders", send(c.delete(&orders)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_error_answer_carries_backend_text_a_trace_or_a_key() {
    let failing = Arc::new(AtomicBool::new(false));
    let switch = failing.clone();
    let mut redis = PrivateRedis::start();
    let mut settings = system_tests::settings();
    settings.redis_url = redis.url();
    let stack = TestStack::spawn_with(Options {
        settings,
        per_user_rate: Some("50/1m".parse().expect("policy")),
        wrap_ledger: Box::new(move |inner| {
            Arc::new(LeakyLedger {
                inner,
                failing: switch,
            })
        }),
        ..Options::default()
    })
    .await;
    let mut answers = Answers::default();

    // Backends up: every error row of the contract.
    contract_errors(&stack, &mut answers).await;
    let (_, hammer) = stack.new_user();
    let sale = stack.create_sale(1000, 1).await;
    for _ in 0..60 {
        let r = stack
            .checkout(&hammer, &json!({"sale_id": sale}), None)
            .await;
        if r.status == 429 {
            answers.add("checkout: rate limited", r);
            break;
        }
    }
    let live = stack.create_sale(1000, 5).await;
    let (_, buyer) = stack.new_user();
    let bought = stack
        .checkout(&buyer, &json!({"sale_id": live}), None)
        .await;
    assert_eq!(bought.status, 201, "{}", bought.body);
    let order_id = bought.body["order_id"].as_str().unwrap_or("x").to_owned();

    // The ledger refuses everything, with a backend's words.
    failing.store(true, Ordering::Relaxed);
    let (_, fresh) = stack.new_user();
    answers.add(
        "ledger down: checkout",
        stack
            .checkout(&fresh, &json!({"sale_id": live}), None)
            .await,
    );
    answers.add(
        "ledger down: GET order",
        stack
            .get(&stack.order, &format!("/orders/{order_id}"), Some(&buyer))
            .await,
    );
    answers.add(
        "ledger down: GET orders",
        stack.get(&stack.order, "/orders", Some(&buyer)).await,
    );
    answers.add(
        "ledger down: unknown sale",
        stack
            .get(&stack.stock, "/stock/sales/never-seen-before", None)
            .await,
    );
    answers.add(
        "ledger down: create sale",
        stack
            .post_admin(
                "/stock/sales",
                &json!({"sale_id": unique("s-"), "name": "n", "stock": 1}),
            )
            .await,
    );
    answers.add(
        "ledger down: sale orders",
        stack
            .get(
                &stack.stock,
                &format!("/stock/sales/{live}/orders"),
                Some(ADMIN_TOKEN),
            )
            .await,
    );
    for base in [&stack.stock, &stack.order] {
        answers.add(
            format!("ledger down: {base}/healthz"),
            stack.get(base, "/healthz", None).await,
        );
    }
    failing.store(false, Ordering::Relaxed);

    // Redis is gone.
    redis.kill();
    answers.add(
        "redis down: checkout",
        stack
            .checkout(&fresh, &json!({"sale_id": live}), None)
            .await,
    );
    answers.add(
        "redis down: sale view",
        stack
            .get(&stack.stock, &format!("/stock/sales/{live}"), None)
            .await,
    );
    answers.add(
        "redis down: breakdown",
        stack
            .get(
                &stack.stock,
                &format!("/stock/sales/{live}/breakdown"),
                Some(ADMIN_TOKEN),
            )
            .await,
    );
    answers.add(
        "redis down: login",
        post_json(
            &stack.client,
            &format!("{}/auth/login", stack.auth),
            &json!({"username": unique("x"), "password": PASSWORD}),
        )
        .await,
    );
    for base in [&stack.auth, &stack.stock, &stack.order] {
        answers.add(
            format!("redis down: {base}/healthz"),
            stack.get(base, "/healthz", None).await,
        );
    }

    // Each backend-down answer is a 503 with Retry-After, not a 500.
    for (what, r) in answers.0.iter().filter(|(w, _)| w.contains(" down: ")) {
        assert_eq!(r.status, 503, "{what}: {}", r.body);
        assert!(r.headers.contains_key("retry-after"), "{what}");
    }
    let seed = stack.signer.seed_b64();
    let secrets = [
        ADMIN_TOKEN,
        seed.as_str(),
        stack.settings.ledger_table.as_str(),
        stack.settings.users_table.as_str(),
    ];
    let checked = answers.check(&secrets);
    assert!(checked >= 60, "only {checked} error answers were scanned");
    println!("{checked} error answers scanned");
}

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
