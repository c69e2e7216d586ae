//! The one error type of the HTTP surface, and the one place that maps each
//! failure to the contract's status code, error code and `Retry-After`.
//!
//! Domain code returns its own precise errors; each function converts them
//! into an [`ApiError`] with a `From` impl, so a handler can use `?` and the
//! caller always gets `{"error":{"code","message"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, wrong type, missing or unknown field, or a value out of range.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("request body is larger than 16 KiB")]
    PayloadTooLarge,
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("missing, expired or invalid credentials")]
    Unauthorized,
    #[error("wrong username or password")]
    InvalidCredentials,
    #[error("too many failed attempts; try again later")]
    TooManyAttempts { retry_after_secs: u64 },
    /// Too many checkout attempts by one user or from one address (an
    /// extension of the contract: `429 rate_limited` with `Retry-After`).
    #[error("too many attempts; slow down and retry after the time given")]
    RateLimited { retry_after_secs: u64 },
    #[error("that username is taken")]
    UsernameTaken,
    #[error("a sale with that id already exists")]
    SaleExists,
    #[error("no such sale")]
    SaleNotFound,
    #[error("no such order")]
    OrderNotFound,
    #[error("the sale is sold out")]
    SoldOut,
    #[error("you have reached this sale's per-user limit")]
    LimitReached,
    #[error("the sale is not live (it has not started or has ended)")]
    SaleNotLive,
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    /// Waiting room (v1.1): checkout of a queued sale without a valid
    /// admission token for this user and sale.
    #[error("this sale admits buyers through its waiting room: join the queue and check out with your admission token")]
    AdmissionRequired,
    #[error("this sale has no waiting room")]
    NoWaitingRoom,
    #[error("no such ticket")]
    TicketNotFound,
    /// Load shedding or a backend that is down or slow: try again shortly.
    #[error("the service is busy; try again shortly")]
    Overloaded { retry_after_secs: u64 },
    /// A bug or an unexpected backend answer; logged, never shown in detail.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest(message.into())
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }

    /// A backend that did not answer in time, or at all.
    pub fn overloaded() -> Self {
        Self::Overloaded {
            retry_after_secs: 1,
        }
    }

    /// Status and the contract's snake_case error code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            RouteNotFound => (StatusCode::NOT_FOUND, "not_found"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            TooManyAttempts { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            UsernameTaken => (StatusCode::CONFLICT, "username_taken"),
            SaleExists => (StatusCode::CONFLICT, "sale_exists"),
            SaleNotFound => (StatusCode::NOT_FOUND, "sale_not_found"),
            OrderNotFound => (StatusCode::NOT_FOUND, "order_not_found"),
            SoldOut => (StatusCode::CONFLICT, "sold_out"),
            LimitReached => (StatusCode::CONFLICT, "limit_reached"),
            SaleNotLive => (StatusCode::CONFLICT, "sale_not_live"),
            IdempotencyKeyReused => (StatusCode::CONFLICT, "idempotency_key_reused"),
            AdmissionRequired => (StatusCode::FORBIDDEN, "admission_required"),
            NoWaitingRoom => (StatusCode::CONFLICT, "no_waiting_room"),
            TicketNotFound => (StatusCode::NOT_FOUND, "ticket_not_found"),
            Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ApiError::TooManyAttempts { retry_after_secs }
            | ApiError::RateLimited { retry_after_secs }
            | ApiError::Overloaded { retry_after_secs } => Some((*retry_after_secs).max(1)),
            _ => None,
        }
    }
}

/// The contract's error body, also used by middleware that answers before a
/// handler runs (body limit, load shedding, unknown routes).
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(err) = &self {
            tracing::error!(error = format!("{err:#}"), "internal error");
        }
        let mut response = error_response(status, code, &self.to_string());
        if let Some(secs) = self.retry_after_secs() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn errors_render_the_contract_body() {
        let response = ApiError::SoldOut.into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        let body = body_of(response).await;
        assert_eq!(body["error"]["code"], "sold_out");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sold out"));
    }

    #[tokio::test]
    async fn throttling_and_overload_carry_retry_after() {
        for err in [
            ApiError::TooManyAttempts {
                retry_after_secs: 30,
            },
            ApiError::RateLimited {
                retry_after_secs: 2,
            },
            ApiError::Overloaded {
                retry_after_secs: 0,
            },
        ] {
            let response = err.into_response();
            let retry = response.headers().get(header::RETRY_AFTER).unwrap();
            assert!(retry.to_str().unwrap().parse::<u64>().unwrap() >= 1);
        }
        assert!(ApiError::SoldOut
            .into_response()
            .headers()
            .get(header::RETRY_AFTER)
            .is_none());
    }

    #[tokio::test]
    async fn internal_errors_do_not_leak_details() {
        let response = ApiError::internal(anyhow::anyhow!("secret table name xyz")).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_of(response).await;
        assert!(!body.to_string().contains("xyz"));
    }
}
