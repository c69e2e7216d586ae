//! The HTTP plumbing every function wears, so that the contract's common
//! rules hold for all of them by construction:
//!
//! * every response carries `x-request-id` (the caller's, or a fresh ULID);
//! * bodies over 16 KiB get `413`, wrong JSON gets `400 invalid_request`;
//! * unknown routes and methods answer in the contract's error shape;
//! * a bounded number of requests run at once; the rest are shed with `503`;
//! * a panic in a handler becomes a `500`, not a dropped connection;
//! * one JSON access-log line and one metrics sample per request.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::error::{error_response, ApiError};
use crate::metrics;

/// The contract's request body limit.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// How long a client may take to send its (at most 16 KiB) body.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A JSON body that fails the way the contract says: `400 invalid_request`
/// for anything malformed, `413` when too large, `415` for a non-JSON type.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType),
            Err(JsonRejection::BytesRejection(r))
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::PayloadTooLarge)
            }
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::invalid(e.body_text())),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::invalid(e.body_text())),
            Err(other) => Err(ApiError::invalid(other.body_text())),
        }
    }
}

/// Fresh request ids are ULIDs: sortable by time, which helps when reading logs.
#[derive(Clone, Copy, Default)]
struct MakeUlid;

impl MakeRequestId for MakeUlid {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&ulid::Ulid::new().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// Knobs of the shared middleware.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Requests handled at once before new ones are shed with `503`.
    pub max_in_flight: usize,
}

impl HttpOptions {
    pub fn from_env(default_max_in_flight: usize) -> Result<Self, crate::config::ConfigError> {
        Ok(Self {
            max_in_flight: crate::config::parsed_or("MAX_IN_FLIGHT", default_max_in_flight)?,
        })
    }
}

/// Wraps a function's routes in the shared middleware. Call it last, on the
/// complete router (with its state already provided).
pub fn with_common_layers(router: Router, options: &HttpOptions) -> Router {
    let permits = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
    router
        .route("/openapi.yaml", axum::routing::get(openapi))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // A body that trickles in (or never comes) must not hold an
        // in-flight slot for ever.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_READ_TIMEOUT,
        ))
        .layer(middleware::from_fn(move |req, next| {
            shed_and_limit(permits.clone(), req, next)
        }))
        .layer(CatchPanicLayer::custom(|_panic| {
            tracing::error!("handler panicked");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }))
        .layer(middleware::from_fn(access_log))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeUlid))
}

/// The whole public contract as OpenAPI 3 (`infra/openapi/openapi.yaml`),
/// served by every function; schemathesis tests the code against it.
pub const OPENAPI_YAML: &str = include_str!("../../../infra/openapi/openapi.yaml");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML)
}

/// Rejects early what no handler should see: too many requests at once, or a
/// declared body over the limit (so we never read it).
async fn shed_and_limit(permits: Arc<Semaphore>, req: Request, next: Next) -> Response {
    let declared_len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared_len.is_some_and(|len| len > MAX_BODY_BYTES) {
        return ApiError::PayloadTooLarge.into_response();
    }
    // Health checks must not be shed: a busy instance is still a live one.
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    match permits.try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => {
            metrics::counter("http_shed_total").inc();
            ApiError::Overloaded {
                retry_after_secs: 1,
            }
            .into_response()
        }
    }
}

/// One log line and one metrics sample per request, inside a span that
/// carries the request id so every line logged while serving it has it too.
async fn access_log(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        k_service = tracing::field::Empty,
        k_revision = tracing::field::Empty,
    );
    // Under Knative every line logged while serving says which revision served it.
    if let Some((service, revision)) = knative_identity() {
        span.record("k_service", service);
        span.record("k_revision", revision);
    }
    let response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics::observe_request(method.as_str(), &route, status, elapsed);
    let _entered = span.enter();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(%method, route, status, latency_ms, "request");
    } else {
        tracing::debug!(%method, route, status, latency_ms, "request");
    }
    response
}

/// `K_SERVICE` and `K_REVISION`, read once, when running under Knative.
fn knative_identity() -> Option<(&'static str, &'static str)> {
    static IDENTITY: std::sync::OnceLock<Option<(String, String)>> = std::sync::OnceLock::new();
    IDENTITY
        .get_or_init(|| {
            let service = crate::config::var("K_SERVICE")?;
            Some((
                service,
                crate::config::var("K_REVISION").unwrap_or_default(),
            ))
        })
        .as_ref()
        .map(|(s, r)| (s.as_str(), r.as_str()))
}

/// `GET /healthz`: `200 {"status":"ok"}` when the backends answer, else `503`.
///
/// Which backend failed, and how, goes to the log only: the probe is public
/// (Knative, a load balancer, anyone with the URL), and a backend's error
/// text names hosts, tables, ports and versions an attacker should not learn.
pub fn health_response(readiness: Result<(), String>) -> Response {
    match readiness {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok"})),
        )
            .into_response(),
        Err(problem) => {
            tracing::warn!(problem, "not ready");
            let mut response = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "not ready: a backend is unavailable; try again shortly",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

/// The bearer token of a request, if it has a well-formed `Authorization` header.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::{get, post};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Input {
        name: String,
    }

    fn app(max_in_flight: usize) -> Router {
        let routes = Router::new()
            .route(
                "/echo",
                post(|ApiJson(i): ApiJson<Input>| async move { i.name }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    "done"
                }),
            )
            .route(
                "/panic",
                get(|| async {
                    if true {
                        panic!("boom");
                    }
                    "unreachable"
                }),
            );
        with_common_layers(routes, &HttpOptions { max_in_flight })
    }

    async fn call(
        app: Router,
        req: http::Request<Body>,
    ) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let response = app.oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, headers, json)
    }

    fn post_json(body: impl Into<Body>) -> http::Request<Body> {
        http::Request::post("/echo")
            .header("content-type", "application/json")
            .body(body.into())
            .unwrap()
    }

    #[tokio::test]
    async fn bad_json_is_a_contract_400() {
        for body in [
            r#"{"name":"a","extra":1}"#,
            r#"{"name":5}"#,
            r#"{}"#,
            "{nope",
        ] {
            let (status, _, json) = call(app(8), post_json(body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(json["error"]["code"], "invalid_request", "{body}");
        }
    }

    #[tokio::test]
    async fn oversized_bodies_are_413_with_or_without_content_length() {
        let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(MAX_BODY_BYTES));
        let (status, _, json) = call(app(8), post_json(big.clone())).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(json["error"]["code"], "payload_too_large");
        // A streamed body declares no length: the limit still applies.
        let stream = futures_body(big);
        let (status, _, _) = call(app(8), post_json(stream)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    fn futures_body(s: String) -> Body {
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = s
            .into_bytes()
            .chunks(1024)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        Body::from_stream(futures::stream::iter(chunks))
    }

    #[tokio::test]
    async fn wrong_content_type_is_415_and_unknown_routes_404() {
        let req = http::Request::post("/echo")
            .header("content-type", "text/plain")
            .body(Body::from(r#"{"name":"a"}"#))
            .unwrap();
        let (status, _, json) = call(app(8), req).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(json["error"]["code"], "unsupported_media_type");

        let req = http::Request::get("/nowhere").body(Body::empty()).unwrap();
        let (status, headers, json) = call(app(8), req).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(json["error"]["code"], "not_found");
        assert!(headers.contains_key("x-request-id"));

        let req = http::Request::delete("/echo").body(Body::empty()).unwrap();
        let (status, _, json) = call(app(8), req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(json["error"]["code"], "method_not_allowed");
    }

    #[tokio::test]
    async fn request_id_is_echoed_or_minted() {
        let req = http::Request::post("/echo")
            .header("content-type", "application/json")
            .header("x-request-id", "abc-123")
            .body(Body::from(r#"{"name":"a"}"#))
            .unwrap();
        let (status, headers, _) = call(app(8), req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-request-id"], "abc-123");

        let (_, headers, _) = call(app(8), post_json(r#"{"name":"a"}"#)).await;
        assert_eq!(headers["x-request-id"].len(), 26, "a fresh ULID");
    }

    #[tokio::test]
    async fn panics_become_500s_and_excess_load_is_shed() {
        let req = http::Request::get("/panic").body(Body::empty()).unwrap();
        let (status, _, json) = call(app(8), req).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(json["error"]["code"], "internal");

        let app = app(1);
        let slow = tokio::spawn(call(
            app.clone(),
            http::Request::get("/slow").body(Body::empty()).unwrap(),
        ));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (status, headers, json) = call(
            app.clone(),
            http::Request::get("/slow").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json["error"]["code"], "overloaded");
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(slow.await.unwrap().0, StatusCode::OK);
    }

    #[tokio::test]
    async fn an_unready_health_answer_names_no_backend() {
        let problem = "dynamodb table flashsale-ledger: ResourceNotFoundException: \
            arn:aws:dynamodb:us-east-1:123456789012:table/x; redis: Connection refused (os error 111)";
        let response = health_response(Err(problem.to_owned()));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["code"], "unavailable");
        let text = body.to_string().to_lowercase();
        for leak in [
            "dynamodb",
            "redis",
            "arn:",
            "exception",
            "os error",
            "flashsale-ledger",
        ] {
            assert!(!text.contains(leak), "{leak} in {text}");
        }
    }

    #[tokio::test]
    async fn the_openapi_document_is_served() {
        let req = http::Request::get("/openapi.yaml")
            .body(Body::empty())
            .unwrap();
        let response = app(8).oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(
            text.starts_with("openapi: 3") || text.contains("\nopenapi: 3"),
            "{}",
            &text[..80.min(text.len())]
        );
        assert!(text.contains("/orders"));
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
    }
}
