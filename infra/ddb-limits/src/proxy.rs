//! The listener: accepts HTTP/1.1 connections on loopback, routes
//! `/_limits/*` to the control API and everything else to the DynamoDB
//! handler, and stops cleanly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::budget::Budgets;
use crate::config::Config;
use crate::control;
use crate::faults::Faults;
use crate::handler::{self, Dropped};
use crate::limits::Limits;
use crate::schema::SchemaCache;
use crate::stats::{Recorder, Stats};
use crate::tokens::Tokens;
use crate::upstream::Upstream;

/// Largest request body accepted: a BatchWriteItem may carry 16 MB.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// State shared by every connection.
pub struct Shared {
    pub config: Config,
    pub upstream: Upstream,
    pub schemas: SchemaCache,
    limits: Mutex<Limits>,
    faults: Mutex<Faults>,
    frozen: watch::Sender<bool>,
    waiting_frozen: AtomicU64,
    request_ids: AtomicU64,
}

impl Shared {
    fn new(config: Config) -> anyhow::Result<Shared> {
        let upstream = Upstream::new(&config.upstream)?;
        let limits = Limits::new(
            Budgets::new(config.partition_wcu, config.partition_rcu),
            Tokens::new(config.token_window),
            Recorder::new(config.stats_window_seconds, config.stats_max_rows),
        );
        Ok(Shared {
            config,
            upstream,
            schemas: SchemaCache::default(),
            limits: Mutex::new(limits),
            faults: Mutex::new(Faults::default()),
            frozen: watch::channel(false).0,
            waiting_frozen: AtomicU64::new(0),
            request_ids: AtomicU64::new(1),
        })
    }

    /// The limit state (a poisoned lock is still usable: every update to it
    /// is a plain counter or map write).
    pub fn limits(&self) -> MutexGuard<'_, Limits> {
        self.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_faults(&self, faults: Faults) {
        let freeze = faults.freeze;
        *self.faults() = faults;
        self.frozen.send_replace(freeze);
    }

    /// Consumes one `drop_after_commit` for a request being forwarded now.
    pub fn take_after_commit(&self, op: &str) -> bool {
        let taken = self.faults().take_after_commit(op);
        if taken {
            self.limits().recorder.fault("drop_after_commit");
        }
        taken
    }

    /// Returns once the proxy is not frozen.
    pub async fn wait_unfrozen(&self) {
        let mut rx = self.frozen.subscribe();
        if !*rx.borrow() {
            return;
        }
        self.waiting_frozen.fetch_add(1, Ordering::SeqCst);
        // Counted down even if the client gives up while frozen.
        struct Waiting<'a>(&'a AtomicU64);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _waiting = Waiting(&self.waiting_frozen);
        // the sender lives as long as `self`, so this cannot fail
        let _ = rx.wait_for(|frozen| !*frozen).await;
    }

    pub fn request_id(&self) -> String {
        let n = self.request_ids.fetch_add(1, Ordering::Relaxed);
        format!("DDBLIMITS{n:020}")
    }

    pub fn stats(&self) -> Stats {
        Stats {
            waiting_frozen: self.waiting_frozen.load(Ordering::SeqCst),
            ..self.limits().snapshot()
        }
    }
}

/// A running proxy. Dropping it without [`Proxy::shutdown`] leaves the
/// listener running until the runtime ends.
pub struct Proxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts a proxy on `config.listen` (default `127.0.0.1:0`, a free port).
pub async fn start(config: Config) -> anyhow::Result<Proxy> {
    anyhow::ensure!(
        config.listen.ip().is_loopback(),
        "ddb-limits listens on loopback only, not {}",
        config.listen
    );
    anyhow::ensure!(
        config.partition_wcu > 0.0 && config.partition_rcu > 0.0,
        "partition budgets must be positive"
    );
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared::new(config)?);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(serve(listener, shared.clone(), stopped));
    Ok(Proxy {
        shared,
        addr,
        stop,
        task,
    })
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| route(shared.clone(), req));
                    // An error here is a closed or dropped connection: nothing to do.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn route(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let (parts, body) = request.into_parts();
    let Ok(body) = Limited::new(body, MAX_BODY).collect().await else {
        return Err(Dropped("request body unreadable or too large"));
    };
    let body = body.to_bytes();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Some(rest) = parts.uri.path().strip_prefix("/_limits/") {
        return Ok(control::handle(&shared, &parts.method, rest, &body));
    }
    handler::dynamodb(shared, path, parts.headers, body).await
}

impl Proxy {
    /// `http://127.0.0.1:PORT`: give this to the SDK as its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything counted since start or the last reset.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Zeroes the counters and the per-key budgets.
    pub fn reset_stats(&self) {
        self.shared.limits().reset();
    }

    /// Replaces the fault settings (see [`Faults`]).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// The fault settings now (counters decrease as faults fire).
    pub fn faults(&self) -> Faults {
        self.shared.faults().clone()
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Stops listening and closes every connection (requests in flight are
    /// abandoned: their items and tokens are released).
    pub async fn shutdown(self) {
        self.shared.set_faults(Faults::default());
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}
