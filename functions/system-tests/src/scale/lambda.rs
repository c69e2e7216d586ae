//! Lambda-shaped order instances, in process.
//!
//! Lambda runs a function in *execution environments*. An environment
//! serves one request at a time; between requests it is **frozen**: no
//! thread of it runs, so a background task (a sweep of lapsed holds, the
//! delayed resolve of a checkout whose ledger answer was lost, the ledger's
//! group committer, a connection driver) makes progress only while the
//! environment is serving some request. Code that is correct only because
//! "a background task will get to it" is wrong there.
//!
//! The freeze is made real here, without emulators or signals:
//!
//! - each environment is a dedicated OS thread that owns a `tokio`
//!   **current-thread** runtime. It builds its inventory and order Router
//!   inside that runtime (Lambda's INIT), so every task the instance ever
//!   spawns lands on it;
//! - it then loops: take one request from its channel,
//!   `runtime.block_on(router.oneshot(request))`, send the answer back. A
//!   current-thread runtime polls spawned tasks and fires timers only inside
//!   `block_on`, so between two requests nothing of the instance runs, and
//!   a timer that came due meanwhile fires only during the next request:
//!   exactly Lambda's freeze and thaw.
//!
//! In front, [`LambdaFront`] plays the Lambda service: it hands each request
//! to an idle environment (the most recently used first, as Lambda prefers
//! warm environments), starts a new one when none is idle, and never has
//! more than `concurrency` environments. Where real Lambda would throttle a
//! request beyond its concurrency (`429`), this one waits for an
//! environment to become idle; the requests the function sees are the same.
//! The environment gets no client address (no Lambda request context), so
//! only per-user checkout limits apply.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, Response};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::{oneshot, Semaphore};
use tower::ServiceExt;

use crate::Reply;

/// Builds one environment's Router; runs inside that environment's runtime.
pub type Init = Arc<dyn Fn() -> BoxFuture<'static, axum::Router> + Send + Sync>;

/// One request for an environment, and where its answer goes.
struct Invocation {
    request: Request<Body>,
    answer: oneshot::Sender<Answer>,
}

/// A response read whole inside the environment (its body may be produced
/// by tasks of that runtime, so it is collected before the freeze).
struct Answer {
    parts: axum::http::response::Parts,
    body: bytes::Bytes,
}

/// The dispatcher's handle on a live environment.
struct Environment {
    invocations: mpsc::Sender<Invocation>,
}

/// The Lambda service in front of the environments of one function.
pub struct LambdaFront {
    /// One permit per environment that may be busy at once.
    concurrency: Arc<Semaphore>,
    /// Environments waiting (frozen) for a request; the last one is the warmest.
    idle: Mutex<Vec<Environment>>,
    started: AtomicUsize,
    init: Init,
}

impl LambdaFront {
    /// A function that may run `concurrency` environments, each built by
    /// `init`. No environment starts before the first request.
    pub fn new(
        concurrency: usize,
        init: impl Fn() -> BoxFuture<'static, axum::Router> + Send + Sync + 'static,
    ) -> Self {
        Self {
            concurrency: Arc::new(Semaphore::new(concurrency.max(1))),
            idle: Mutex::default(),
            started: AtomicUsize::new(0),
            init: Arc::new(init),
        }
    }

    /// Environments started so far (cold starts).
    pub fn started(&self) -> usize {
        self.started.load(Ordering::Relaxed)
    }

    /// `POST /orders`, as API Gateway or a function URL would hand it over.
    pub async fn checkout(
        &self,
        token: &str,
        body: &Value,
        key: Option<&str>,
    ) -> Result<Reply, String> {
        let mut request = Request::post("/orders")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"));
        if let Some(k) = key {
            request = request.header("idempotency-key", k);
        }
        let request = request
            .body(Body::from(body.to_string()))
            .map_err(|e| format!("building the request: {e}"))?;
        let answer = self.invoke(request).await?;
        Ok(Reply {
            status: answer.parts.status.as_u16(),
            headers: answer.parts.headers,
            body: serde_json::from_slice(&answer.body).unwrap_or(Value::Null),
        })
    }

    /// Runs one request in an environment that is doing nothing else.
    async fn invoke(&self, request: Request<Body>) -> Result<Answer, String> {
        // A permit per busy environment: at most `concurrency` of them.
        let _busy = self
            .concurrency
            .acquire()
            .await
            .map_err(|_| "the function was shut down".to_owned())?;
        let environment = self.idle_or_new();
        let (answer, answered) = oneshot::channel();
        environment
            .invocations
            .send(Invocation { request, answer })
            .map_err(|_| "the environment stopped".to_owned())?;
        let answer = answered
            .await
            .map_err(|_| "the environment died while serving".to_owned())?;
        // Back to the idle list before the permit is returned, so a caller
        // that gets the permit finds it rather than starting one too many.
        lock(&self.idle).push(environment);
        Ok(answer)
    }

    /// The warmest idle environment, or a new one. The caller holds a
    /// permit, so fewer than `concurrency` environments are busy: if none is
    /// idle, fewer than `concurrency` exist and one more may start.
    fn idle_or_new(&self) -> Environment {
        if let Some(environment) = lock(&self.idle).pop() {
            return environment;
        }
        let id = self.started.fetch_add(1, Ordering::Relaxed);
        start_environment(id, self.init.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts an environment's thread; it lives until its channel closes (the
/// front is dropped), then drops its runtime and with it every task.
fn start_environment(id: usize, init: Init) -> Environment {
    let (invocations, requests) = mpsc::channel::<Invocation>();
    let spawned = std::thread::Builder::new()
        .name(format!("lambda-env-{id}"))
        .spawn(move || run_environment(init, requests));
    if let Err(e) = spawned {
        // The send in `invoke` then fails: the caller sees an error, not a hang.
        tracing::error!(error = %e, "could not start a Lambda environment thread");
    }
    Environment { invocations }
}

/// INIT, then one `block_on` per request: the only time this
/// environment's tasks and timers run.
fn run_environment(init: Init, requests: mpsc::Receiver<Invocation>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "could not build a Lambda environment's runtime");
            return;
        }
    };
    let router = runtime.block_on(init());
    while let Ok(Invocation { request, answer }) = requests.recv() {
        let served = runtime.block_on(serve_one(router.clone(), request));
        // The caller may have given up; the environment stays usable.
        let _ = answer.send(served);
    }
}

async fn serve_one(router: axum::Router, request: Request<Body>) -> Answer {
    let response: Response<Body> = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            tracing::warn!(error = %e, "response body failed in a Lambda environment");
            bytes::Bytes::new()
        }
    };
    Answer { parts, body }
}

#[cfg(test)]
mod tests {
    //! The harness itself: one request per environment at a time, never more
    //! environments than the concurrency, and a real freeze in between.

    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use axum::routing::post;

    use super::*;

    /// What the environments' handlers and background tasks saw.
    #[derive(Default)]
    struct Probe {
        busy: AtomicUsize,
        most_busy: AtomicUsize,
        /// The most requests one environment served at once.
        most_in_one: AtomicUsize,
        /// Ticks of every environment's background task (one per ms).
        ticks: AtomicU64,
    }

    /// An environment: a background task that ticks every millisecond, and
    /// a `POST /orders` that takes 20 ms and records how many run at once.
    fn init(probe: Arc<Probe>) -> impl Fn() -> BoxFuture<'static, axum::Router> + Send + Sync {
        move || {
            let probe = probe.clone();
            Box::pin(async move {
                let ticker = probe.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        ticker.ticks.fetch_add(1, Ordering::SeqCst);
                    }
                });
                let mine = Arc::new(AtomicUsize::new(0));
                axum::Router::new()
                    .route("/orders", post(move || serve(probe.clone(), mine.clone())))
            })
        }
    }

    async fn serve(probe: Arc<Probe>, mine: Arc<AtomicUsize>) -> axum::Json<Value> {
        let here = mine.fetch_add(1, Ordering::SeqCst) + 1;
        let all = probe.busy.fetch_add(1, Ordering::SeqCst) + 1;
        probe.most_in_one.fetch_max(here, Ordering::SeqCst);
        probe.most_busy.fetch_max(all, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        mine.fetch_sub(1, Ordering::SeqCst);
        probe.busy.fetch_sub(1, Ordering::SeqCst);
        axum::Json(serde_json::json!({"ok": true}))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn environments_serve_one_request_at_a_time_up_to_the_concurrency() {
        let probe = Arc::new(Probe::default());
        let front = LambdaFront::new(4, init(probe.clone()));
        let body = serde_json::json!({});
        let calls = (0..40).map(|_| front.checkout("t", &body, None));
        let replies = futures::future::join_all(calls).await;
        assert!(replies
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.status == 200)));
        assert_eq!(
            probe.most_in_one.load(Ordering::SeqCst),
            1,
            "one request per environment at a time"
        );
        assert_eq!(
            probe.most_busy.load(Ordering::SeqCst),
            4,
            "up to the concurrency, at once"
        );
        assert_eq!(
            front.started(),
            4,
            "a new environment only when none is idle"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_tasks_run_only_while_a_request_is_served() {
        let probe = Arc::new(Probe::default());
        let front = LambdaFront::new(1, init(probe.clone()));
        let body = serde_json::json!({});
        front.checkout("t", &body, None).await.expect("served");
        let after_first = probe.ticks.load(Ordering::SeqCst);
        assert!(after_first > 0, "the background task runs during a request");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            probe.ticks.load(Ordering::SeqCst),
            after_first,
            "frozen between requests"
        );
        front.checkout("t", &body, None).await.expect("served");
        assert!(
            probe.ticks.load(Ordering::SeqCst) > after_first,
            "thawed by the next request"
        );
    }
}
