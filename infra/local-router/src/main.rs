//! The local front door: one base URL (default `http://127.0.0.1:8080`) that
//! routes by the first path segment, as the contract says:
//! `/auth/*` → auth, `/stock/*` → stock, `/orders*` → order.
//!
//! * proxy mode (default): forwards to the three function processes;
//! * `--embedded`: runs all three functions in this process on in-memory
//!   stores, so the API can be tried with nothing but cargo.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use clap::Parser;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;

#[derive(Parser)]
#[command(
    name = "local-router",
    version,
    about = "Routes /auth/*, /stock/*, /orders* to the three functions (or hosts them all with --embedded)."
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "ROUTER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Base URL of the auth function.
    #[arg(long, env = "AUTH_URL", default_value = "http://127.0.0.1:8081")]
    auth: String,
    /// Base URL of the stock function.
    #[arg(long, env = "STOCK_URL", default_value = "http://127.0.0.1:8082")]
    stock: String,
    /// Base URL of the order function.
    #[arg(long, env = "ORDER_URL", default_value = "http://127.0.0.1:8083")]
    order: String,
    /// Host all three functions in this process on in-memory stores.
    #[arg(long)]
    embedded: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Function {
    Auth,
    Stock,
    Order,
}

/// The contract's routing rule: by first path segment.
fn route(path: &str) -> Option<Function> {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "auth" => Some(Function::Auth),
        "stock" => Some(Function::Stock),
        f if f == "orders" || f.starts_with("orders?") => Some(Function::Order),
        _ => None,
    }
}

#[derive(Clone)]
enum Upstreams {
    Proxy {
        client: Box<Client<HttpConnector, Body>>,
        bases: Arc<[String; 3]>,
    },
    Embedded(Arc<[Router; 3]>),
}

impl Upstreams {
    async fn call(&self, which: Function, req: Request) -> Response {
        let i = which as usize;
        match self {
            Upstreams::Embedded(routers) => match routers[i].clone().oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            },
            Upstreams::Proxy { client, bases } => {
                let (mut parts, body) = req.into_parts();
                let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let uri = match format!("{}{}", bases[i], path).parse() {
                    Ok(uri) => uri,
                    Err(_) => return common::ApiError::invalid("bad request path").into_response(),
                };
                parts.uri = uri;
                match client.request(Request::from_parts(parts, body)).await {
                    Ok(r) => r.map(Body::new),
                    Err(e) => {
                        tracing::warn!(function = ?which, error = %e, "upstream unreachable");
                        common::ApiError::overloaded().into_response()
                    }
                }
            }
        }
    }
}

async fn embedded_routers() -> anyhow::Result<[Router; 3]> {
    let settings = common::config::Settings::memory();
    let signer =
        common::token::TokenSigner::generate(&settings.token_issuer, &settings.token_audience, 900);
    let verifier = Arc::new(signer.verifier());
    let admin_token =
        common::config::var("ADMIN_TOKEN").unwrap_or_else(|| "dev-admin-token".into());
    let http = common::http::HttpOptions {
        max_in_flight: 4096,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let auth_state = auth::AuthState {
        users: Arc::new(auth::store::MemoryUserStore::default()),
        throttle: Arc::new(auth::throttle::MemoryThrottle::new(Default::default())),
        hasher: auth::hasher::HasherPool::new(cores, 4 * cores, Default::default()),
        signer: Arc::new(signer),
    };
    let inventory =
        inventory::from_settings(&settings, inventory::InventoryConfig::default()).await?;
    // One process: the stock and order functions share the rooms and a
    // fresh admission key.
    let rooms = inventory::waiting_rooms(&settings)?;
    let admission = Arc::new(common::token::admission::AdmissionSigner::generate());
    println!("embedded mode: in-memory stores; admin token: {admin_token}");
    Ok([
        auth::app(auth_state, &http),
        stock::app(
            stock::StockState {
                inventory: inventory.clone(),
                admin_token: Some(common::config::Secret::new(admin_token)),
                // In-memory gate: one process, nothing to spread over.
                default_stock_buckets: 1,
                room: rooms.clone(),
                admission: Some(admission.clone()),
                verifier: Some(verifier.clone()),
            },
            &http,
        ),
        order::app(
            order::OrderState {
                inventory,
                verifier,
                client_ip: Arc::new(common::client_ip::ClientIpPolicy::from_env()?),
                admissions: order::Admissions {
                    verifier: Some(Arc::new(admission.verifier())),
                    rooms: Some(rooms),
                },
            },
            &http,
        ),
    ])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before any TLS client (DynamoDB, Redis) exists: one crypto provider.
    common::backends::install_crypto_provider();
    let cli = Cli::parse();
    common::telemetry::init("local-router");
    let upstreams = if cli.embedded {
        Upstreams::Embedded(Arc::new(embedded_routers().await?))
    } else {
        Upstreams::Proxy {
            // No pooled connections: a function closes a connection whose
            // request body it did not read (a 405, a 415), and a pooled
            // client would race that close and fail the *next* request.
            // A fresh loopback connection per request costs microseconds.
            client: Box::new(
                Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(0)
                    .build_http(),
            ),
            bases: Arc::new(
                [cli.auth, cli.stock, cli.order].map(|b| b.trim_end_matches('/').to_owned()),
            ),
        }
    };
    let app = Router::new().fallback(move |req: Request| {
        let upstreams = upstreams.clone();
        async move {
            match route(req.uri().path()) {
                Some(which) => upstreams.call(which, req).await,
                None => common::ApiError::RouteNotFound.into_response(),
            }
        }
    });
    // Its own answers (unknown route, upstream down) carry a request id too;
    // forwarded ones keep the id the function echoes.
    let request_id = http::HeaderName::from_static("x-request-id");
    let app = app
        .layer(tower_http::request_id::PropagateRequestIdLayer::new(
            request_id.clone(),
        ))
        .layer(tower_http::request_id::SetRequestIdLayer::new(
            request_id,
            tower_http::request_id::MakeRequestUuid,
        ));
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    common::serve::serve_on(listener, app, common::serve::shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_first_segment() {
        assert_eq!(route("/auth/login"), Some(Function::Auth));
        assert_eq!(route("/stock/sales/x"), Some(Function::Stock));
        assert_eq!(route("/orders"), Some(Function::Order));
        assert_eq!(route("/orders/abc"), Some(Function::Order));
        assert_eq!(route("/authx/login"), None);
        assert_eq!(route("/healthz"), None);
        assert_eq!(route("/"), None);
    }
}
