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
use crate::throttle::{Attempt, ThrottleUnavailable};
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
    // The attempt takes its slot before anything is looked up or hashed
    // (see `throttle.rs`): that is what bounds the guesses checked.
    match state.throttle.attempt(&key).await.map_err(throttle_down)? {
        Attempt::Admitted => {}
        Attempt::Locked { retry_after_secs } => {
            return Err(ApiError::TooManyAttempts { retry_after_secs })
        }
    }
    match check_password(&state, &body.username, body.password).await {
        Ok(Some(user_id)) => {
            if let Err(e) = state.throttle.clear(&key).await {
                tracing::warn!(error = %e, "could not clear login attempts");
            }
            let now = chrono::Utc::now().timestamp();
            Ok(Json(LoggedIn {
                access_token: state.signer.issue(&user_id, now),
                token_type: "Bearer",
                expires_in: state.signer.ttl_secs(),
            }))
        }
        // A wrong password (or no such user) keeps its slot.
        Ok(None) => Err(ApiError::InvalidCredentials),
        // Nothing was checked: the slot goes back, so a shed login does
        // not count against the person who will retry it.
        Err(e) => {
            if let Err(refund) = state.throttle.refund(&key).await {
                tracing::warn!(error = %refund, "could not give a login slot back");
            }
            Err(e)
        }
    }
}

/// The user id if `username` names a user and `password` is theirs. Unknown
/// users cost one full verification too (against a dummy hash).
async fn check_password(
    state: &AuthState,
    username: &str,
    password: String,
) -> ApiResult<Option<String>> {
    let user = match Username::parse(username) {
        Ok(username) => state.users.find(&username).await.map_err(store_error)?,
        Err(_) => None,
    };
    let (user_id, stored) = match user {
        Some(u) => (Some(u.user_id), Some(u.password_hash)),
        None => (None, None),
    };
    let verified = state.hasher.verify(password, stored).await.map_err(shed)?;
    Ok(user_id.filter(|_| verified))
}

fn throttle_down(e: ThrottleUnavailable) -> ApiError {
    // Fail closed: without a count, nothing bounds the guesses checked.
    tracing::warn!(error = %e, "login refused: the attempt could not be counted");
    ApiError::overloaded()
}

async fn jwks(State(state): State<AuthState>) -> Json<serde_json::Value> {
    Json(state.signer.jwks())
}

async fn healthz(State(state): State<AuthState>) -> Response {
    let (users, throttle) = tokio::join!(state.users.ready(), state.throttle.ready());
    common::http::health_response(users.and(throttle))
}
