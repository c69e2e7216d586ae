//! The Redis shapes of the local test bed, for every conformance suite.
//!
//! `just backends` starts all three (`infra/local/stack.sh` for the plain
//! node, `infra/local/redis.sh` for the TLS-only node and the cluster); each
//! address can be moved by an environment variable. A suite asks for all of
//! them and fails loudly when one is down: a mode that was not reachable is
//! never counted as passed.

use crate::redis_client::{RedisConn, RedisMode, RedisTarget, RedisTimeouts};
use std::time::Duration;

/// One Redis deployment shape the engine must work on.
#[derive(Debug, Clone)]
pub struct RedisVariant {
    /// `redis`, `redis-tls` or `redis-cluster`: the name suites report.
    pub name: &'static str,
    pub url: String,
    pub mode: RedisMode,
    pub ca_file: Option<String>,
}

impl RedisVariant {
    /// The environment a function needs to run on this variant.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("REDIS_URL", self.url.clone()),
            ("REDIS_MODE", self.mode.to_string()),
        ];
        if let Some(ca) = &self.ca_file {
            env.push(("REDIS_CA_FILE", ca.clone()));
        }
        env
    }

    /// Puts this variant into `settings` (everything else stays).
    pub fn apply(&self, settings: &mut crate::config::Settings) {
        settings.redis_url = self.url.clone();
        settings.redis_mode = self.mode;
        settings.redis_ca_file = self.ca_file.clone();
    }

    /// A connected handle; panics with the command that starts the variant
    /// when it is not reachable.
    pub async fn connect(&self) -> RedisConn {
        let target = RedisTarget::parse(&self.url, self.mode, self.ca_file.as_deref())
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        let conn = RedisConn::connect(&target, RedisTimeouts::from_budget(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        if let Err(e) = conn.ping().await {
            panic!(
                "{} is not reachable at {} ({e}); start it with `just backends`",
                self.name, self.url
            );
        }
        conn
    }
}

impl RedisVariant {
    /// Every node of this shape, each on a single-node connection: the one
    /// node, or a cluster's nodes as `CLUSTER NODES` lists them (all of
    /// them, or only the primaries). For tests that must reach each node
    /// itself (`SCRIPT FLUSH`, `INFO`).
    pub async fn nodes(&self, primaries_only: bool) -> Vec<RedisConn> {
        let urls: Vec<String> = match self.mode {
            RedisMode::Single => vec![self.url.clone()],
            RedisMode::Cluster => {
                let mut conn = self.connect().await;
                let listing: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("{}: CLUSTER NODES: {e}", self.name));
                listing
                    .lines()
                    .filter(|l| !primaries_only || l.contains("master"))
                    .filter_map(|l| l.split_whitespace().nth(1))
                    .filter_map(|a| a.split('@').next())
                    .map(|a| format!("redis://{a}"))
                    .collect()
            }
        };
        assert!(!urls.is_empty(), "{}: no nodes", self.name);
        urls.iter()
            .map(|u| {
                let t = RedisTarget::parse(u, RedisMode::Single, self.ca_file.as_deref())
                    .unwrap_or_else(|e| panic!("{u}: {e}"));
                RedisConn::connect(&t, RedisTimeouts::from_budget(Duration::from_secs(5)))
                    .unwrap_or_else(|e| panic!("{u}: {e}"))
            })
            .collect()
    }
}

fn stack_dir() -> String {
    std::env::var("STACK_DIR")
        .unwrap_or_else(|_| format!("{}/../../.local", env!("CARGO_MANIFEST_DIR")))
}

/// The plain single node (`REDIS_URL`, default `redis://127.0.0.1:6379`).
pub fn plain() -> RedisVariant {
    RedisVariant {
        name: "redis",
        url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        mode: RedisMode::Single,
        ca_file: None,
    }
}

/// The TLS-only node, verified against the CA `redis.sh` made.
pub fn tls() -> RedisVariant {
    RedisVariant {
        name: "redis-tls",
        url: std::env::var("TEST_REDIS_TLS_URL")
            .unwrap_or_else(|_| "rediss://localhost:6390".into()),
        mode: RedisMode::Single,
        ca_file: Some(
            std::env::var("TEST_REDIS_TLS_CA")
                .unwrap_or_else(|_| format!("{}/redis-tls/ca.crt", stack_dir())),
        ),
    }
}

/// The 3-primary, 3-replica cluster, named by its three seed primaries.
pub fn cluster() -> RedisVariant {
    RedisVariant {
        name: "redis-cluster",
        url: std::env::var("TEST_REDIS_CLUSTER_URL").unwrap_or_else(|_| {
            "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003".into()
        }),
        mode: RedisMode::Cluster,
        ca_file: None,
    }
}

/// Every shape, plain first.
pub fn all() -> [RedisVariant; 3] {
    [plain(), tls(), cluster()]
}
