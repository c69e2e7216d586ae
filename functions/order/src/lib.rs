//! The order function: `POST /orders` (checkout), `GET /orders/{id}`,
//! `GET /orders?sale_id=…`. Access tokens are verified locally with the
//! auth function's public key: the checkout path never calls auth.

use std::sync::Arc;

use axum::extract::{FromRef, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use common::client_ip::{ClientIp, ClientIpPolicy};
use common::http::ApiJson;
use common::token::admission::AdmissionVerifier;
use common::token::{AuthUser, TokenVerifier};
use common::{ApiError, ApiResult};
use inventory::sale::{OrderView, SaleId};
use inventory::waiting_room::WaitingRoom;
use inventory::{Checkout, CheckoutRequest, Inventory};

#[derive(Clone)]
pub struct OrderState {
    pub inventory: Inventory,
    pub verifier: Arc<TokenVerifier>,
    /// Where the buyer's address comes from, for per-IP checkout limits.
    pub client_ip: Arc<ClientIpPolicy>,
    /// Checkouts of sales with a waiting room (contract v1.1).
    pub admissions: Admissions,
}

/// What the order function needs for sales with a waiting room: the key
/// that verifies admission tokens (`ADMISSION_PUBLIC_KEY`; without it, no
/// checkout of such a sale is admitted), and the rooms, to hand a used
/// admission's place to the next in line.
#[derive(Clone, Default)]
pub struct Admissions {
    pub verifier: Option<Arc<AdmissionVerifier>>,
    pub rooms: Option<Arc<dyn WaitingRoom>>,
}

impl Admissions {
    /// The ticket this request's `Admission-Token` admits to `sale`, or
    /// `403 admission_required`. Verified here, with no call out.
    fn check(&self, headers: &HeaderMap, user: &str, sale: &SaleId) -> ApiResult<String> {
        let token = headers
            .get("admission-token")
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::AdmissionRequired)?;
        let verifier = self.verifier.as_ref().ok_or_else(|| {
            tracing::warn!(
                "a waiting-room sale, but no ADMISSION_PUBLIC_KEY on this order function"
            );
            ApiError::AdmissionRequired
        })?;
        verifier
            .verify(token, user, sale.as_str(), chrono::Utc::now().timestamp())
            .map(|a| a.ticket)
            .map_err(|reason| {
                tracing::debug!(%reason, "admission refused");
                ApiError::AdmissionRequired
            })
    }

    /// Off the answer's path: if it fails, the admission simply stays
    /// counted until it expires (the room admits a little slower).
    fn used(&self, sale: &SaleId, ticket: String) {
        if let Some(rooms) = self.rooms.clone() {
            let sale = sale.clone();
            tokio::spawn(async move {
                if let Err(e) = rooms.used(&sale, &ticket).await {
                    tracing::warn!(%sale, error = %e, "could not mark an admission used");
                }
            });
        }
    }
}

impl FromRef<OrderState> for Arc<ClientIpPolicy> {
    fn from_ref(state: &OrderState) -> Self {
        state.client_ip.clone()
    }
}

impl FromRef<OrderState> for Arc<TokenVerifier> {
    fn from_ref(state: &OrderState) -> Self {
        state.verifier.clone()
    }
}

pub fn app(state: OrderState, http: &common::http::HttpOptions) -> Router {
    let routes = Router::new()
        .route("/orders", post(checkout).get(list_orders))
        .route("/orders/{order_id}", get(get_order))
        .route("/healthz", get(healthz))
        .with_state(state);
    common::http::with_common_layers(routes, http)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckoutBody {
    sale_id: String,
    quantity: Option<i64>,
}

/// `Idempotency-Key`: 1–64 visible ASCII characters, if present.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = raw
        .to_str()
        .ok()
        .filter(|k| (1..=64).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::invalid("Idempotency-Key must be 1-64 visible ASCII characters")
        })?;
    Ok(Some(key.to_owned()))
}

async fn checkout(
    State(state): State<OrderState>,
    user: AuthUser,
    ClientIp(client_ip): ClientIp,
    headers: HeaderMap,
    body: Result<ApiJson<CheckoutBody>, ApiError>,
) -> ApiResult<Response> {
    let ApiJson(body) = body?;
    let idempotency_key = idempotency_key(&headers)?;
    let quantity = body.quantity.unwrap_or(1);
    let quantity = u32::try_from(quantity)
        .ok()
        .filter(|q| *q >= 1)
        .ok_or_else(|| ApiError::invalid("quantity must be a positive whole number"))?;
    let sale_id = SaleId::parse(&body.sale_id).map_err(|_| ApiError::SaleNotFound)?;
    let sale = state.inventory.definition(&sale_id).await?;
    let admitted = match sale.waiting_room {
        Some(_) => Some(state.admissions.check(&headers, &user.user_id, &sale_id)?),
        None => None,
    };
    let request = CheckoutRequest {
        sale_id: sale_id.clone(),
        quantity,
        idempotency_key,
        client_ip,
    };
    let (status, order) = match state.inventory.checkout(&user.user_id, request).await? {
        Checkout::Created(order) => {
            if let Some(ticket) = admitted {
                state.admissions.used(&sale_id, ticket);
            }
            (StatusCode::CREATED, order)
        }
        Checkout::Replayed(order) => (StatusCode::OK, order),
    };
    let view = OrderView::from(&order);
    let location = format!("/orders/{}", view.order_id);
    Ok((status, [(header::LOCATION, location)], Json(view)).into_response())
}

async fn get_order(
    State(state): State<OrderState>,
    user: AuthUser,
    Path(order_id): Path<String>,
) -> ApiResult<Response> {
    let order = state.inventory.order(&user.user_id, &order_id).await?;
    Ok(Json(OrderView::from(&order)).into_response())
}

#[derive(Deserialize)]
struct ListParams {
    sale_id: Option<String>,
}

async fn list_orders(
    State(state): State<OrderState>,
    user: AuthUser,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(params) = params.map_err(|e| ApiError::invalid(e.body_text()))?;
    let sale_id = match params.sale_id.as_deref().map(SaleId::parse) {
        None => None,
        Some(Ok(id)) => Some(id),
        // No sale can have that id, so the caller has no orders in it.
        Some(Err(_)) => return Ok(Json(serde_json::json!({ "orders": [] })).into_response()),
    };
    let orders = state
        .inventory
        .user_orders(&user.user_id, sale_id.as_ref())
        .await
        .map_err(ApiError::from)?;
    let views: Vec<OrderView> = orders.iter().map(OrderView::from).collect();
    Ok(Json(serde_json::json!({ "orders": views })).into_response())
}

async fn healthz(State(state): State<OrderState>) -> Response {
    common::http::health_response(state.inventory.ready().await)
}
