//! HTTP handlers. Each one parses its input into domain types, does one
//! thing, and lets `?` turn failures into the contract's error responses.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use common::http::ApiJson;
use common::{ApiError, ApiResult};

use crate::domain::{Password, Username};
use crate::hasher::Overloaded;
use crate::store::{StoreError, UserRecord};
use crate::AuthState;

pub fn router(state: AuthState) -> Router {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/jwks.json", get(jwks))
        .route("/healthz", get(healthz))
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    username: String,
    password: String,
}

#[derive(Serialize)]
struct Registered {
    user_id: String,
    username: String,
}

#[derive(Serialize)]
struct LoggedIn {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Taken => ApiError::UsernameTaken,
        StoreError::Unavailable(problem) => {
            tracing::warn!(problem, "user store unavailable");
            ApiError::overloaded()
        }
    }
}

fn shed(_: Overloaded) -> ApiError {
    ApiError::Overloaded {
        retry_after_secs: 1,
    }
}

async fn register(
    State(state): State<AuthState>,
    ApiJson(body): ApiJson<Credentials>,
) -> ApiResult<Response> {
    let username = Username::parse(&body.username).map_err(|e| ApiError::invalid(e.to_string()))?;
    let password = Password::parse(&body.password).map_err(|e| ApiError::invalid(e.to_string()))?;
    // Cheap early answer for a taken name, before paying for a hash; the
    // conditional write below is what actually guarantees uniqueness.
    if state
        .users
        .find(&username)
        .await
        .map_err(store_error)?
        .is_some()
    {
        return Err(ApiError::UsernameTaken);
    }
    let password_hash = state.hasher.hash(password).await.map_err(shed)?;
    let user = UserRecord {
        user_id: ulid::Ulid::new().to_string(),
        username,
        password_hash,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    };
    state.users.insert(&user).await.map_err(store_error)?;
    tracing::info!(user_id = user.user_id, "registered");
    let body = Registered {
        user_id: user.user_id,
        username: user.username.to_string(),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn login(
    State(state): State<AuthState>,
    ApiJson(body): ApiJson<Credentials>,
) -> ApiResult<Json<LoggedIn>> {
    // A username that cannot exist is just another unknown user: same
    // answer, same work, so nothing distinguishes it from the outside.
    let key = body.username.to_lowercase();
    match state.throttle.locked_for(&key).await {
        Ok(Some(retry_after_secs)) => return Err(ApiError::TooManyAttempts { retry_after_secs }),
        Ok(None) => {}
        // Failing open keeps logins working while Redis is down; argon2's
        // cost still bounds guessing, and the outage is logged.
        Err(problem) => tracing::warn!(problem, "login throttle unavailable; failing open"),
    }
    let user = match Username::parse(&body.username) {
        Ok(username) => state.users.find(&username).await.map_err(store_error)?,
        Err(_) => None,
    };
    let user_id = user.as_ref().map(|u| u.user_id.clone());
    let verified = state
        .hasher
        .verify(body.password, user.map(|u| u.password_hash))
        .await
        .map_err(shed)?;
    let user_id = match (verified, user_id) {
        (true, Some(user_id)) => user_id,
        _ => {
            if let Err(problem) = state.throttle.record_failure(&key).await {
                tracing::warn!(problem, "could not record a failed login");
            }
            return Err(ApiError::InvalidCredentials);
        }
    };
    if let Err(problem) = state.throttle.clear(&key).await {
        tracing::warn!(problem, "could not clear failed logins");
    }
    let now = chrono::Utc::now().timestamp();
    Ok(Json(LoggedIn {
        access_token: state.signer.issue(&user_id, now),
        token_type: "Bearer",
        expires_in: state.signer.ttl_secs(),
    }))
}

async fn jwks(State(state): State<AuthState>) -> Json<serde_json::Value> {
    Json(state.signer.jwks())
}

async fn healthz(State(state): State<AuthState>) -> Response {
    let (users, throttle) = tokio::join!(state.users.ready(), state.throttle.ready());
    common::http::health_response(users.and(throttle))
}
