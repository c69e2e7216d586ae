//! The stock function: `POST /stock/sales` (admin), `GET /stock/sales/{id}`,
//! the waiting room's `…/queue` calls and page (`queue.rs`), and the admin
//! extensions `…/breakdown`, `…/reconcile`, `…/orders`.
//! The stock itself is kept by the `inventory` crate.

pub mod queue;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use common::config::Secret;
use common::http::ApiJson;
use common::token::admission::AdmissionSigner;
use common::token::TokenVerifier;
use common::{ApiError, ApiResult};
use inventory::sale::{OrderView, SaleDefinition, SaleId};
use inventory::waiting_room::{RoomConfig, WaitingRoom};
use inventory::Inventory;

#[derive(Clone)]
pub struct StockState {
    pub inventory: Inventory,
    /// `ADMIN_TOKEN`; when unset, admin calls are refused.
    pub admin_token: Option<Secret>,
    /// `SALE_STOCK_BUCKETS`: gate buckets for a sale created without
    /// `stock_buckets`; 1 (one shard) unless the deployment says otherwise.
    pub default_stock_buckets: u16,
    /// The waiting rooms of the sales that have one.
    pub room: Arc<dyn WaitingRoom>,
    /// `ADMISSION_SIGNING_KEY`: signs admission tokens; without it, sales
    /// with a waiting room cannot be created here.
    pub admission: Option<Arc<AdmissionSigner>>,
    /// Verifies buyers' access tokens on the queue calls (`TOKEN_PUBLIC_KEY`).
    pub verifier: Option<Arc<TokenVerifier>>,
}

pub fn app(state: StockState, http: &common::http::HttpOptions) -> Router {
    let routes = Router::new()
        .route("/stock/sales", post(create_sale))
        .route("/stock/sales/{sale_id}", get(view_sale))
        .route("/stock/sales/{sale_id}/queue", post(queue::join))
        .route("/stock/sales/{sale_id}/queue/{ticket}", get(queue::poll))
        .route("/stock/sales/{sale_id}/room", get(queue::page))
        .route("/stock/sales/{sale_id}/breakdown", get(breakdown))
        .route("/stock/sales/{sale_id}/reconcile", post(reconcile))
        .route("/stock/sales/{sale_id}/orders", get(sale_orders))
        .route("/healthz", get(healthz))
        .with_state(state);
    common::http::with_common_layers(routes, http)
}

/// Proof that the caller presented the admin token.
struct Admin;

fn require_admin(state: &StockState, headers: &HeaderMap) -> ApiResult<Admin> {
    let presented = common::http::bearer_token(headers);
    if common::token::admin_token_matches(presented, state.admin_token.as_ref()) {
        Ok(Admin)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// A path id that cannot be a sale is simply a sale that does not exist.
fn sale_id(raw: &str) -> ApiResult<SaleId> {
    SaleId::parse(raw).map_err(|_| ApiError::SaleNotFound)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSale {
    sale_id: String,
    name: String,
    stock: i64,
    per_user_limit: Option<i64>,
    starts_at: Option<String>,
    ends_at: Option<String>,
    /// Extension: the stock split into this many gate buckets (one per
    /// Redis Cluster shard is the point); `SALE_STOCK_BUCKETS` when absent.
    stock_buckets: Option<i64>,
    /// Contract v1.1: admit buyers through a waiting room.
    waiting_room: Option<NewRoom>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRoom {
    /// Admissions per second; the ledger's measured capacity by default.
    admit_per_second: Option<i64>,
    /// Extension: how long an admission lasts (2-3600 s, default 60).
    admission_ttl_seconds: Option<i64>,
}

async fn create_sale(
    State(state): State<StockState>,
    headers: HeaderMap,
    body: Result<ApiJson<NewSale>, ApiError>,
) -> ApiResult<Response> {
    // Authorisation comes before looking at the body.
    require_admin(&state, &headers)?;
    let ApiJson(body) = body?;
    let sale = SaleDefinition::new(
        &body.sale_id,
        &body.name,
        body.stock,
        body.per_user_limit,
        body.starts_at.as_deref(),
        body.ends_at.as_deref(),
        chrono::Utc::now(),
    )
    .and_then(|sale| {
        // An explicit count is checked as given; the default shrinks to
        // fit a sale smaller than it (every bucket holds at least a unit).
        let buckets = body
            .stock_buckets
            .unwrap_or_else(|| i64::from(state.default_stock_buckets).min(sale.stock_total as i64));
        sale.with_stock_buckets(buckets)
    })
    .and_then(|mut sale| {
        if let Some(room) = &body.waiting_room {
            sale.waiting_room = Some(RoomConfig::new(
                room.admit_per_second,
                room.admission_ttl_seconds,
            )?);
        }
        Ok(sale)
    })
    .map_err(ApiError::invalid)?;
    if sale.waiting_room.is_some() && state.admission.is_none() {
        return Err(ApiError::invalid(
            "this deployment cannot run waiting rooms: the stock function has no ADMISSION_SIGNING_KEY",
        ));
    }
    let view = state.inventory.create_sale(sale).await?;
    tracing::info!(
        sale_id = view.sale_id,
        stock = view.stock_total,
        "sale created"
    );
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn view_sale(
    State(state): State<StockState>,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let view = state.inventory.view(&sale_id(&raw)?).await?;
    Ok(Json(view).into_response())
}

async fn breakdown(
    State(state): State<StockState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    require_admin(&state, &headers)?;
    Ok(Json(state.inventory.breakdown(&sale_id(&raw)?).await?).into_response())
}

async fn reconcile(
    State(state): State<StockState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    require_admin(&state, &headers)?;
    Ok(Json(state.inventory.reconcile(&sale_id(&raw)?).await?).into_response())
}

async fn sale_orders(
    State(state): State<StockState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    require_admin(&state, &headers)?;
    let orders = state.inventory.sale_orders(&sale_id(&raw)?).await?;
    let views: Vec<OrderView> = orders.iter().map(OrderView::from).collect();
    // Idempotency keys are included for audits; only the admin sees them.
    let keys: Vec<Option<&str>> = orders
        .iter()
        .map(|o| o.idempotency_key.as_deref())
        .collect();
    let body: Vec<serde_json::Value> = views
        .into_iter()
        .zip(keys)
        .map(|(v, k)| {
            let mut j = serde_json::to_value(v).unwrap_or_default();
            j["idempotency_key"] = k.map_or(serde_json::Value::Null, |k| k.into());
            j
        })
        .collect();
    Ok(Json(serde_json::json!({ "orders": body })).into_response())
}

async fn healthz(State(state): State<StockState>) -> Response {
    common::http::health_response(state.inventory.ready().await)
}
