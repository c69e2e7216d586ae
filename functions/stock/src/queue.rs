//! The waiting room's two calls (contract v1.1) and the page buyers see.
//!
//! `POST /stock/sales/{id}/queue` joins the caller to the sale's line;
//! `GET /stock/sales/{id}/queue/{ticket}` tells them where they stand and,
//! when it is their turn, hands them an admission token for `POST /orders`.
//! The rules of the line live in `inventory::waiting_room`.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{json, Value};

use common::token::admission::AdmissionSigner;
use common::token::TokenVerifier;
use common::{ApiError, ApiResult};
use inventory::sale::{rfc3339, SaleDefinition, SaleId};
use inventory::waiting_room::{JoinOutcome, RoomConfig, Ticket, TicketStatus};

use crate::StockState;

/// The caller, proven by an access token (as the order function checks
/// them: locally, with the auth function's public key).
pub struct Buyer(String);

impl FromRequestParts<StockState> for Buyer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &StockState) -> Result<Self, ApiError> {
        let verifier: &Arc<TokenVerifier> =
            state.verifier.as_ref().ok_or(ApiError::Unauthorized)?;
        let token = common::http::bearer_token(&parts.headers).ok_or(ApiError::Unauthorized)?;
        verifier
            .verify_cached(token, chrono::Utc::now().timestamp())
            .map(|claims| Buyer(claims.sub))
            .map_err(|_| ApiError::Unauthorized)
    }
}

/// The sale and its room, or the contract's error for why there is none.
async fn room_of(state: &StockState, raw: &str) -> ApiResult<(Arc<SaleDefinition>, RoomConfig)> {
    let sale_id = SaleId::parse(raw).map_err(|_| ApiError::SaleNotFound)?;
    let sale = state.inventory.definition(&sale_id).await?;
    let room = sale.waiting_room.ok_or(ApiError::NoWaitingRoom)?;
    Ok((sale, room))
}

pub async fn join(
    State(state): State<StockState>,
    Path(raw): Path<String>,
    buyer: Buyer,
) -> ApiResult<Response> {
    let (sale, room) = room_of(&state, &raw).await?;
    let level = state.inventory.stock_level(&sale).await?;
    let outcome = state
        .room
        .join(&sale, &room, level, &buyer.0)
        .await
        .map_err(room_unavailable)?;
    let (status, ticket) = match outcome {
        JoinOutcome::Joined(t) => (StatusCode::CREATED, t),
        JoinOutcome::Existing(t) => (StatusCode::OK, t),
        JoinOutcome::SoldOut => return Err(ApiError::SoldOut),
        JoinOutcome::Ended => return Err(ApiError::SaleNotLive),
    };
    common::metrics::counter("waiting_room_joins_total").inc();
    answer(
        &state,
        &sale,
        &room,
        &buyer.0,
        level.remaining,
        status,
        &ticket,
        true,
    )
}

pub async fn poll(
    State(state): State<StockState>,
    Path((raw, ticket)): Path<(String, String)>,
    buyer: Buyer,
) -> ApiResult<Response> {
    // A sale without a room has no tickets either.
    let (sale, room) = room_of(&state, &raw).await.map_err(|e| match e {
        ApiError::NoWaitingRoom => ApiError::TicketNotFound,
        other => other,
    })?;
    if ticket.len() > 64 {
        return Err(ApiError::TicketNotFound);
    }
    let level = state.inventory.stock_level(&sale).await?;
    let found = state
        .room
        .poll(&sale, &room, level, &ticket, &buyer.0)
        .await
        .map_err(room_unavailable)?
        .ok_or(ApiError::TicketNotFound)?;
    answer(
        &state,
        &sale,
        &room,
        &buyer.0,
        level.remaining,
        StatusCode::OK,
        &found,
        false,
    )
}

/// The room's store did not answer: `503` to the buyer, the cause logged.
fn room_unavailable(e: inventory::waiting_room::RoomError) -> ApiError {
    tracing::warn!(error = %e, "waiting room unavailable");
    ApiError::overloaded()
}

/// How long until a buyer at `position` is admitted, at the room's rate.
fn wait_secs(position: u64, room: &RoomConfig) -> u64 {
    position.div_ceil(u64::from(room.admit_per_second.max(1)))
}

#[allow(clippy::too_many_arguments)]
fn answer(
    state: &StockState,
    sale: &SaleDefinition,
    room: &RoomConfig,
    user: &str,
    stock_remaining: i64,
    status: StatusCode,
    ticket: &Ticket,
    joining: bool,
) -> ApiResult<Response> {
    let mut body = json!({ "ticket": ticket.ticket });
    let mut retry_after = None;
    match &ticket.status {
        TicketStatus::Waiting { position } => {
            let wait = wait_secs(*position, room);
            body["status"] = "waiting".into();
            body["position"] = (*position).into();
            body["estimated_wait_seconds"] = wait.into();
            // Poll about twice per expected wait, at least every 5 s so a
            // sell-out is learned quickly, and never more than once a second.
            retry_after = Some((wait / 2).clamp(1, 5));
        }
        TicketStatus::Admitted { expires_ms } => {
            let signer: &AdmissionSigner = state.admission.as_deref().ok_or_else(|| {
                tracing::error!(
                    "a waiting room sale, but no ADMISSION_SIGNING_KEY on this stock function"
                );
                ApiError::overloaded()
            })?;
            let now = ticket.now_ms / 1000;
            let token = signer.issue(
                user,
                sale.sale_id.as_str(),
                &ticket.ticket,
                now,
                expires_ms / 1000,
            );
            body["status"] = "admitted".into();
            body["admission_token"] = token.into();
            body["expires_at"] = expires_at(*expires_ms);
            if joining {
                body["position"] = 0.into();
            }
        }
        TicketStatus::Expired { expires_ms } => {
            body["status"] = "expired".into();
            body["expires_at"] = expires_at(*expires_ms);
        }
        TicketStatus::SoldOut => body["status"] = "sold_out".into(),
    }
    if joining && body.get("position").is_none() {
        body["position"] = Value::Null;
    }
    body["stock_remaining"] = stock_remaining.max(0).into();
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(secs) = retry_after {
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    Ok(response)
}

fn expires_at(ms: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(rfc3339)
        .map_or(Value::Null, Value::from)
}

/// `GET /stock/sales/{id}/room`: the page buyers see (static, no external
/// assets; it talks to the calls above and to `POST /orders`).
pub async fn page(Path(raw): Path<String>) -> Response {
    if SaleId::parse(&raw).is_err() {
        return ApiError::SaleNotFound.into_response();
    }
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(include_str!("room.html")),
    )
        .into_response()
}
