//! Redis connections as the clouds run them: one node or a cluster, plain
//! TCP or TLS.
//!
//! Three settings name the deployment (they are part of its contract):
//!
//! * `REDIS_URL`: `redis://host:port` or `rediss://host:port` (TLS). In
//!   cluster mode, one or more seed nodes, comma-separated; the client
//!   discovers the rest of the cluster from them.
//! * `REDIS_MODE`: `single` (the default) or `cluster`.
//! * `REDIS_CA_FILE`: a PEM bundle that server certificates are verified
//!   against instead of the system roots (a private CA). There is no
//!   "insecure" switch: a `rediss://` connection always verifies the
//!   certificate and the host name.
//!
//! Whatever the shape, callers get one [`RedisConn`]: cheap to clone,
//! multiplexed, lazy (a function starts while Redis is down and connects
//! once it is back) and bounded by timeouts. In cluster mode the `redis`
//! crate follows `MOVED`/`ASK` redirections and refreshes its slot map when
//! the topology changes (a failover, a resharding), and `SCRIPT LOAD` goes to
//! every primary, so `EVALSHA` after a `NOSCRIPT` works on whichever node
//! owns the key.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, TlsCertificates, Value};

use crate::config::ConfigError;

/// `REDIS_MODE`: how the Redis named by `REDIS_URL` is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisMode {
    /// One primary (optionally with replicas behind a failover endpoint).
    #[default]
    Single,
    /// Redis Cluster (ElastiCache / MemoryDB cluster mode, `redis-server
    /// --cluster-enabled yes`): keys are spread over hash slots.
    Cluster,
}

impl FromStr for RedisMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "single" | "standalone" => Ok(Self::Single),
            "cluster" => Ok(Self::Cluster),
            other => Err(format!(
                "unknown Redis mode {other:?} (expected single or cluster)"
            )),
        }
    }
}

impl fmt::Display for RedisMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Single => "single",
            Self::Cluster => "cluster",
        })
    }
}

/// A validated Redis deployment: the nodes to dial, how, and whom to trust.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub mode: RedisMode,
    /// One URL in single mode; the seed nodes in cluster mode.
    pub nodes: Vec<String>,
    /// Whether the nodes speak TLS (`rediss://`); all or none of them do.
    pub tls: bool,
    /// PEM roots from `REDIS_CA_FILE`, instead of the system's.
    pub ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry a password (`rediss://:secret@host`): never log it.
        let nodes: Vec<String> = self.nodes.iter().map(|n| redact_url(n)).collect();
        f.debug_struct("RedisTarget")
            .field("mode", &self.mode)
            .field("nodes", &nodes)
            .field("tls", &self.tls)
            .field("private_ca", &self.ca_pem.is_some())
            .finish()
    }
}

/// `scheme://host:port` with any user and password removed.
fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://[redacted]@{host}"),
        _ => url.to_owned(),
    }
}

impl RedisTarget {
    /// Parses the three settings; every mistake is a [`ConfigError`] naming
    /// the variable, so a bad deployment fails at start-up, not at the first
    /// checkout.
    pub fn parse(url: &str, mode: RedisMode, ca_file: Option<&str>) -> Result<Self, ConfigError> {
        let nodes: Vec<String> = url
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if nodes.is_empty() {
            return Err(ConfigError::new("REDIS_URL", "no Redis node named"));
        }
        let mut tls = None;
        for node in &nodes {
            let node_tls = match node.split_once("://").map(|(s, _)| s) {
                Some("redis") => false,
                Some("rediss") => true,
                _ => {
                    return Err(ConfigError::new(
                        "REDIS_URL",
                        format!("{} is not a redis:// or rediss:// URL", redact_url(node)),
                    ))
                }
            };
            if tls.is_some_and(|t| t != node_tls) {
                return Err(ConfigError::new(
                    "REDIS_URL",
                    "mixes redis:// and rediss:// nodes; all must be TLS or none",
                ));
            }
            tls = Some(node_tls);
            // Let the crate check host, port and the rest of the syntax now.
            redis::IntoConnectionInfo::into_connection_info(node.as_str())
                .map_err(|e| ConfigError::new("REDIS_URL", format!("{}: {e}", redact_url(node))))?;
            if node.contains("#insecure") {
                return Err(ConfigError::new(
                    "REDIS_URL",
                    "#insecure is not supported: certificates are always verified \
                     (set REDIS_CA_FILE for a private CA)",
                ));
            }
        }
        if mode == RedisMode::Single && nodes.len() > 1 {
            return Err(ConfigError::new(
                "REDIS_URL",
                format!(
                    "names {} nodes, but REDIS_MODE is single (set REDIS_MODE=cluster \
                     for a list of cluster seed nodes)",
                    nodes.len()
                ),
            ));
        }
        let tls = tls.unwrap_or(false);
        let ca_pem = match ca_file {
            None => None,
            Some(_) if !tls => {
                return Err(ConfigError::new(
                    "REDIS_CA_FILE",
                    "is set, but REDIS_URL is not rediss:// (TLS)",
                ))
            }
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError::new("REDIS_CA_FILE", format!("cannot read {path}: {e}"))
                })?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(ConfigError::new(
                        "REDIS_CA_FILE",
                        format!("{path} holds no PEM certificate"),
                    ));
                }
                Some(pem)
            }
        };
        Ok(Self {
            mode,
            nodes,
            tls,
            ca_pem,
        })
    }

    fn certificates(&self) -> Option<TlsCertificates> {
        self.ca_pem.as_ref().map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        })
    }
}

/// Timeouts and retries for every connection, derived from the function's
/// backend budget (`BACKEND_TIMEOUT_MS`).
#[derive(Debug, Clone, Copy)]
pub struct RedisTimeouts {
    pub connect: Duration,
    pub response: Duration,
}

impl RedisTimeouts {
    pub fn from_budget(budget: Duration) -> Self {
        Self {
            connect: Duration::from_millis(500).min(budget),
            response: budget,
        }
    }
}

/// One handle on Redis, whatever its shape. Clones share the connection(s).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(Arc<ClusterHandle>),
}

/// The cluster connection, replaced by a fresh one when it has stopped
/// delivering.
///
/// Why: the `redis` crate's async cluster connection (1.8) can stay broken
/// after every node of the cluster went away at once while requests were in
/// flight (the whole cluster restarted): each later request times out, for
/// minutes, although the cluster is healthy again, while a new connection to
/// the same seeds works at once (chaos scenario `redis-cluster-restart-empty`).
/// So when no request has succeeded for [`ClusterHandle::reset_after`] and
/// one fails on the client's side (a timeout, an I/O error, no connection to
/// a node), the next requests go to a new connection, made from the same
/// client (seeds, TLS, timeouts), at most once per `reset_after`. An answer
/// from a server, an error reply included (`CLUSTERDOWN`, `NOSCRIPT`...),
/// counts as a working connection.
pub struct ClusterHandle {
    client: ClusterClient,
    config: ClusterConfig,
    current: RwLock<ClusterConnection>,
    health: Mutex<ClusterHealth>,
    reset_after: Duration,
}

struct ClusterHealth {
    last_ok: Instant,
    last_reset: Instant,
}

impl ClusterHandle {
    fn new(client: ClusterClient, config: ClusterConfig, reset_after: Duration) -> Self {
        let conn = client.get_pending_async_connection_with_config(config.clone());
        let now = Instant::now();
        Self {
            client,
            config,
            current: RwLock::new(conn),
            health: Mutex::new(ClusterHealth {
                last_ok: now,
                last_reset: now,
            }),
            reset_after,
        }
    }

    fn connection(&self) -> ClusterConnection {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Notes how a request went; replaces the connection if it is stuck.
    fn observe(&self, error: Option<&RedisError>) {
        let now = Instant::now();
        let mut health = self
            .health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match error {
            Some(e) if client_side_failure(e) => {
                if now.duration_since(health.last_ok) >= self.reset_after
                    && now.duration_since(health.last_reset) >= self.reset_after
                {
                    health.last_reset = now;
                    drop(health);
                    let fresh = self
                        .client
                        .get_pending_async_connection_with_config(self.config.clone());
                    *self
                        .current
                        .write()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
                    crate::metrics::counter("redis_cluster_reconnects_total").inc();
                    tracing::warn!(
                        error = %e,
                        "no Redis Cluster request succeeded for {:?}: reconnecting from the seed nodes",
                        self.reset_after
                    );
                }
            }
            _ => health.last_ok = now,
        }
    }
}

/// The connection failed to deliver a request, as opposed to a server
/// answering with an error.
fn client_side_failure(e: &RedisError) -> bool {
    e.is_timeout()
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.kind() == ErrorKind::ClusterConnectionNotFound
}

impl RedisConn {
    /// Builds the handle without dialling: the first command connects.
    pub fn connect(target: &RedisTarget, timeouts: RedisTimeouts) -> redis::RedisResult<Self> {
        match target.mode {
            RedisMode::Single => {
                let url = target.nodes[0].as_str();
                let client = match target.certificates() {
                    Some(certs) => redis::Client::build_with_tls(url, certs)?,
                    None => redis::Client::open(url)?,
                };
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeouts.connect))
                    .set_response_timeout(Some(timeouts.response))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(200));
                Ok(Self::Single(ConnectionManager::new_lazy_with_config(
                    client, config,
                )?))
            }
            RedisMode::Cluster => {
                let mut builder =
                    ClusterClientBuilder::new(target.nodes.iter().map(String::as_str))
                        .connection_timeout(timeouts.connect)
                        .response_timeout(timeouts.response)
                        // Redirections and the slot-map refresh after a failover
                        // are retries too; a few, quickly, within the budget.
                        .retries(4)
                        .min_retry_wait(20)
                        .max_retry_wait(400);
                if let Some(certs) = target.certificates() {
                    builder = builder.certs(certs);
                }
                let client = builder.build()?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeouts.connect)
                    .set_response_timeout(timeouts.response);
                // Two response timeouts without one success: stuck, not slow.
                let reset_after = (2 * timeouts.response).max(Duration::from_secs(1));
                Ok(Self::Cluster(Arc::new(ClusterHandle::new(
                    client,
                    config,
                    reset_after,
                ))))
            }
        }
    }

    pub fn mode(&self) -> RedisMode {
        match self {
            Self::Single(_) => RedisMode::Single,
            Self::Cluster(_) => RedisMode::Cluster,
        }
    }

    /// `PING`, for readiness checks. In cluster mode it asks the node that
    /// owns an arbitrary key, which also proves the slot map was loaded.
    pub async fn ping(&self) -> Result<(), String> {
        let mut conn = self.clone();
        let mut result = ping_once(&mut conn).await;
        if result.as_ref().is_err_and(|e| e.is_connection_dropped()) {
            // The first command after a Redis restart meets the dead connection.
            result = ping_once(&mut conn).await;
        }
        result.map(|_| ()).map_err(|e| format!("redis: {e}"))
    }
}

async fn ping_once(conn: &mut RedisConn) -> redis::RedisResult<String> {
    match conn {
        RedisConn::Single(_) => redis::cmd("PING").query_async(conn).await,
        // `PING` with no key goes to a random node in cluster mode; routing
        // by a key instead makes it exercise the slot map too.
        RedisConn::Cluster(_) => {
            redis::cmd("ECHO")
                .arg("fs:{healthz}")
                .query_async::<String>(conn)
                .await
        }
    }
}

/// Runs a prepared script (`EVALSHA`, re-sent with the script on
/// `NOSCRIPT`), once more if the first attempt met a connection that died
/// with a Redis restart: that command never reached Redis, and by now the
/// connection has been replaced, so sending it again is safe.
pub async fn invoke_script<T: redis::FromRedisValue>(
    conn: &RedisConn,
    invocation: &redis::ScriptInvocation<'_>,
) -> redis::RedisResult<T> {
    let mut conn = conn.clone();
    match invocation.invoke_async(&mut conn).await {
        Err(e) if e.is_connection_dropped() || e.is_connection_refusal() => {
            invocation.invoke_async(&mut conn).await
        }
        other => other,
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(handle) => Box::pin(async move {
                let mut conn = handle.connection();
                let result = conn.req_packed_command(cmd).await;
                handle.observe(result.as_ref().err());
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(handle) => Box::pin(async move {
                let mut conn = handle.connection();
                let result = conn.req_packed_commands(pipeline, offset, count).await;
                handle.observe(result.as_ref().err());
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(handle) => handle.connection().get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str, mode: RedisMode) -> Result<RedisTarget, ConfigError> {
        RedisTarget::parse(url, mode, None)
    }

    #[test]
    fn single_node_plain_and_tls() {
        let t = parse("redis://127.0.0.1:6379", RedisMode::Single).unwrap();
        assert!(!t.tls);
        assert_eq!(t.nodes, ["redis://127.0.0.1:6379"]);
        let t = parse("rediss://cache.example.com:6379", RedisMode::Single).unwrap();
        assert!(t.tls);
    }

    #[test]
    fn cluster_takes_comma_separated_seeds() {
        let t = parse(
            " redis://10.0.0.1:7000, redis://10.0.0.2:7000 ,",
            RedisMode::Cluster,
        )
        .unwrap();
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.nodes[1], "redis://10.0.0.2:7000");
    }

    #[test]
    fn mistakes_name_the_variable() {
        let cases = [
            ("", RedisMode::Single, "REDIS_URL"),
            ("http://x:1", RedisMode::Single, "REDIS_URL"),
            ("redis://a:1,redis://b:1", RedisMode::Single, "REDIS_URL"),
            ("redis://a:1,rediss://b:1", RedisMode::Cluster, "REDIS_URL"),
            ("rediss://a:1/#insecure", RedisMode::Single, "REDIS_URL"),
        ];
        for (url, mode, name) in cases {
            let err = parse(url, mode).expect_err(url);
            assert_eq!(err.name, name, "{url}");
        }
    }

    #[test]
    fn a_private_ca_needs_tls_and_a_pem_file() {
        let err = RedisTarget::parse("redis://a:1", RedisMode::Single, Some("/etc/hostname"))
            .unwrap_err();
        assert_eq!(err.name, "REDIS_CA_FILE");
        let err = RedisTarget::parse("rediss://a:1", RedisMode::Single, Some("/nonexistent"))
            .unwrap_err();
        assert!(err.problem.contains("cannot read"), "{}", err.problem);
        let err = RedisTarget::parse("rediss://a:1", RedisMode::Single, Some("/etc/hostname"))
            .unwrap_err();
        assert!(err.problem.contains("no PEM"), "{}", err.problem);
    }

    #[test]
    fn passwords_never_reach_debug_output() {
        let t = parse("rediss://:hunter2@cache:6379", RedisMode::Single).unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("cache:6379"), "{shown}");
    }

    #[test]
    fn modes_parse_case_insensitively() {
        assert_eq!("Cluster".parse::<RedisMode>(), Ok(RedisMode::Cluster));
        assert_eq!("single".parse::<RedisMode>(), Ok(RedisMode::Single));
        assert!("sentinel".parse::<RedisMode>().is_err());
    }
}
