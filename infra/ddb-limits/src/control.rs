//! The control API, on the proxy's own listener (the SDK only ever POSTs
//! `/`, so `/_limits/*` cannot collide with DynamoDB traffic):
//!
//! | method and path          | does                                           |
//! |--------------------------|------------------------------------------------|
//! | `GET /_limits/healthz`   | `{"ok":true,...}`: the proxy is up             |
//! | `GET /_limits/stats`     | the [`crate::Stats`] JSON                      |
//! | `POST /_limits/reset`    | zero the stats and the per-key budgets         |
//! | `GET /_limits/faults`    | the fault settings now (counters count down)   |
//! | `POST /_limits/faults`   | replace them with the [`crate::Faults`] JSON   |
//! | `GET /_limits/config`    | the budgets and upstream in force              |

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::faults::Faults;
use crate::proxy::Shared;

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn faults_json(f: &Faults) -> Value {
    serde_json::to_value(f).unwrap_or(Value::Null)
}

/// Answers `method /_limits/<path>`.
pub fn handle(shared: &Shared, method: &Method, path: &str, body: &Bytes) -> Response<Full<Bytes>> {
    match (method.as_str(), path.trim_end_matches('/')) {
        ("GET", "healthz") => reply(
            StatusCode::OK,
            json!({ "ok": true, "upstream": shared.upstream.base() }),
        ),
        ("GET", "stats") => reply(
            StatusCode::OK,
            serde_json::to_value(shared.stats()).unwrap_or(Value::Null),
        ),
        ("POST", "reset") => {
            shared.limits().reset();
            reply(StatusCode::OK, json!({ "reset": true }))
        }
        ("GET", "faults") => reply(StatusCode::OK, faults_json(&shared.faults())),
        ("POST", "faults") => {
            let text = if body.is_empty() {
                &b"{}"[..]
            } else {
                &body[..]
            };
            match serde_json::from_slice::<Faults>(text) {
                Ok(faults) => {
                    shared.set_faults(faults.clone());
                    reply(StatusCode::OK, faults_json(&faults))
                }
                Err(e) => reply(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": format!("bad faults JSON: {e}") }),
                ),
            }
        }
        ("GET", "config") => {
            let c = &shared.config;
            reply(
                StatusCode::OK,
                json!({
                    "upstream": c.upstream,
                    "partition_wcu": c.partition_wcu,
                    "partition_rcu": c.partition_rcu,
                    "tx_latency_ms": c.tx_latency.as_millis() as u64,
                    "token_window_s": c.token_window.as_secs(),
                }),
            )
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({ "error": "unknown control path", "paths": ["GET healthz", "GET stats", "POST reset", "GET faults", "POST faults", "GET config"] }),
        ),
    }
}
