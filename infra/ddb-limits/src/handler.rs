//! One DynamoDB request through the proxy: freeze, faults, plan, admission,
//! transaction hold, forward, settle, answer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use crate::batch::merge_unprocessed;
use crate::faults::Injected;
use crate::limits::{Admission, Outcome, Ticket};
use crate::plan::{self, Plan};
use crate::protocol::{self, ErrorAnswer};
use crate::proxy::Shared;
use crate::schema::{credential_scope, TableSchema};
use crate::tokens::Cached;
use crate::upstream::is_hop_by_hop;

/// The request's connection is to be closed without an answer.
#[derive(Debug)]
pub struct Dropped(pub &'static str);

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection dropped: {}", self.0)
    }
}

impl std::error::Error for Dropped {}

pub type Answer = Result<Response<Full<Bytes>>, Dropped>;

pub fn unix_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn respond(
    shared: &Shared,
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = response.headers_mut();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            name.parse::<http::HeaderName>(),
            HeaderValue::from_str(&value),
        ) {
            if !is_hop_by_hop(&n) {
                h.append(n, v);
            }
        }
    }
    if !h.contains_key("x-amzn-requestid") {
        if let Ok(v) = HeaderValue::from_str(&shared.request_id()) {
            h.insert("x-amzn-requestid", v);
        }
    }
    response
}

/// An answer the proxy makes itself.
pub fn error_response(shared: &Shared, e: &ErrorAnswer) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&e.body).unwrap_or_default();
    respond(
        shared,
        e.status,
        vec![("content-type".into(), protocol::CONTENT_TYPE.into())],
        Bytes::from(body),
    )
}

fn headers_vec(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// Settles the admitted request even if the connection goes away mid-flight
/// (hyper drops the request future): items are freed, the token forgotten.
struct InFlight<'a> {
    shared: &'a Shared,
    plan: Option<&'a Plan>,
    ticket: Option<Ticket>,
}

impl InFlight<'_> {
    fn finish(&mut self, outcome: Outcome<'_>) {
        if let Some(mut ticket) = self.ticket.take() {
            let mut limits = self.shared.limits();
            limits.finish(
                self.plan,
                &mut ticket,
                outcome,
                unix_second(),
                Instant::now(),
            );
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.finish(Outcome::Lost);
    }
}

/// Looks up (and caches) the schema of every table the request names.
async fn schemas(shared: &Shared, scope: &str, headers: &HeaderMap, tables: &[String]) {
    for table in tables {
        if shared.schemas.get(scope, table).is_some() {
            continue;
        }
        let mut h = HeaderMap::new();
        for name in [
            "authorization",
            "x-amz-date",
            "x-amz-security-token",
            "user-agent",
        ] {
            if let Some(v) = headers.get(name) {
                h.insert(name, v.clone());
            }
        }
        h.insert(
            "content-type",
            HeaderValue::from_static(protocol::CONTENT_TYPE),
        );
        h.insert(
            "x-amz-target",
            HeaderValue::from_static("DynamoDB_20120810.DescribeTable"),
        );
        let body = serde_json::json!({ "TableName": table }).to_string();
        let Ok(answer) = shared.upstream.send("/", &h, Bytes::from(body)).await else {
            continue;
        };
        if answer.status != 200 {
            continue;
        }
        if let Some(schema) = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .as_ref()
            .and_then(TableSchema::from_describe)
        {
            shared.schemas.insert(scope, schema);
        }
    }
}

/// Handles one `POST /` DynamoDB request.
pub async fn dynamodb(
    shared: Arc<Shared>,
    path: String,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    shared.wait_unfrozen().await;
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(op) = protocol::operation(target).map(str::to_string) else {
        return forward_plain(&shared, &path, &headers, body, None, 0).await;
    };
    shared.limits().recorder.request(&op);
    let (injected, hold_ms) = {
        let mut faults = shared.faults();
        (faults.take_before(&op), faults.hold_ms(&op))
    };
    if !matches!(injected, Injected::None | Injected::DropAfterCommit) {
        shared.limits().recorder.fault(injected.name());
    }
    match injected {
        Injected::DropBefore => return Err(Dropped("drop_before fault")),
        Injected::Error500 => {
            return Ok(error_response(&shared, &protocol::internal_server_error()))
        }
        _ => {}
    }

    let scope = credential_scope(headers.get("authorization").and_then(|v| v.to_str().ok()));
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    if matches!(op.as_str(), "DeleteTable" | "CreateTable") {
        if let Some(table) = parsed.as_ref().and_then(|b| b["TableName"].as_str()) {
            shared.schemas.forget(&scope, table);
        }
    }
    let plan = match &parsed {
        Some(json) if protocol::is_data_plane(&op) => {
            let tables = plan::tables(&op, json);
            schemas(&shared, &scope, &headers, &tables).await;
            let lookup = |t: &str| shared.schemas.get(&scope, t);
            plan::build(&op, json, &lookup)
        }
        _ => None,
    };

    if matches!(injected, Injected::Throttle | Injected::ThrottleRequest) {
        let request_level = injected == Injected::ThrottleRequest;
        let answer =
            shared
                .limits()
                .forced_throttle(plan.as_ref(), &op, request_level, unix_second());
        return Ok(error_response(&shared, &answer));
    }

    let (Some(plan), Some(json)) = (plan.as_ref(), parsed.as_ref()) else {
        return forward_plain(&shared, &path, &headers, body, Some(injected), hold_ms).await;
    };
    let admission = shared
        .limits()
        .admit(plan, json, &scope, unix_second(), Instant::now());
    let ticket = match admission {
        Admission::Refuse(answer) => return Ok(error_response(&shared, &answer)),
        Admission::Replay(cached) => {
            hold(hold_ms).await;
            return Ok(respond(&shared, cached.status, cached.headers, cached.body));
        }
        Admission::Forward(ticket) => ticket,
    };
    let mut flight = InFlight {
        shared: &shared,
        plan: Some(plan),
        ticket: Some(ticket),
    };
    if op == "TransactWriteItems" && !shared.config.tx_latency.is_zero() {
        tokio::time::sleep(shared.config.tx_latency).await;
    }
    let (forward_body, unprocessed) = match flight.ticket.as_mut() {
        Some(t) => (
            t.body.take().map(|b| Bytes::from(b.to_string())),
            t.unprocessed.take(),
        ),
        None => (None, None),
    };
    let drop_answer = injected == Injected::DropAfterCommit && shared.take_after_commit(&op);
    let Ok(answer) = shared
        .upstream
        .send(&path, &headers, forward_body.unwrap_or(body))
        .await
    else {
        flight.finish(Outcome::Lost);
        return Err(Dropped("upstream unreachable"));
    };

    let wants_token = flight.ticket.as_ref().is_some_and(Ticket::has_token);
    let mut answer_json: Option<Value> = serde_json::from_slice(&answer.body).ok();
    let mut out_body = answer.body.clone();
    let mut out_headers = headers_vec(&answer.headers);
    if let (Some((member, held)), Some(json)) = (&unprocessed, answer_json.as_mut()) {
        if answer.status == 200 {
            merge_unprocessed(json, member, held);
            out_body = Bytes::from(json.to_string());
            // the body changed: its checksum no longer holds
            out_headers.retain(|(n, _)| !n.eq_ignore_ascii_case("x-amz-crc32"));
        }
    }
    let raw = wants_token.then(|| Cached {
        status: answer.status,
        headers: out_headers.clone(),
        body: out_body.clone(),
    });
    flight.finish(Outcome::Answered {
        status: answer.status,
        body: answer_json.as_ref(),
        raw,
    });
    if drop_answer {
        return Err(Dropped("drop_after_commit fault"));
    }
    hold(hold_ms).await;
    Ok(respond(&shared, answer.status, out_headers, out_body))
}

async fn hold(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Forwards a request the proxy does not model (control plane, PartiQL,
/// malformed bodies), still honouring the answer faults.
async fn forward_plain(
    shared: &Shared,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
    injected: Option<Injected>,
    hold_ms: u64,
) -> Answer {
    let drop_answer = injected == Some(Injected::DropAfterCommit)
        && protocol::operation(
            headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        )
        .is_some_and(|op| shared.take_after_commit(op));
    let Ok(answer) = shared.upstream.send(path, headers, body).await else {
        return Err(Dropped("upstream unreachable"));
    };
    if drop_answer {
        return Err(Dropped("drop_after_commit fault"));
    }
    hold(hold_ms).await;
    Ok(respond(
        shared,
        answer.status,
        headers_vec(&answer.headers),
        answer.body,
    ))
}
