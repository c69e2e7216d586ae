//! The auth function: `POST /auth/register`, `POST /auth/login`,
//! `GET /auth/jwks.json`, `GET /healthz`.
//!
//! It is the CPU-heavy function (argon2id). Hashing runs on a bounded pool
//! ([`hasher`]) so a login storm is shed with `503` instead of starving
//! anything else, and tokens are signed here and verified everywhere else
//! without a call back.

pub mod domain;
pub mod hasher;
pub mod routes;
pub mod store;
pub mod throttle;

use std::sync::Arc;
use std::time::Duration;

use common::config::{parsed_or, var, ConfigError, Settings, StoreMode};
use common::token::TokenSigner;

use hasher::{HashCost, HasherPool};
use store::{DynamoUserStore, MemoryUserStore, UserStore};
use throttle::{LoginThrottle, MemoryThrottle, RedisThrottle, ThrottlePolicy};

/// The auth function's own configuration, on top of [`Settings`].
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub settings: Settings,
    /// `TOKEN_SIGNING_KEY`: base64url Ed25519 seed (see `auth keygen`).
    pub signing_key: common::config::Secret,
    pub token_ttl_secs: i64,
    pub hash_workers: usize,
    pub hash_queue: usize,
    pub hash_cost: HashCost,
    pub throttle: ThrottlePolicy,
}

impl AuthConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let settings = Settings::from_env()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let defaults = HashCost::default();
        Ok(Self {
            signing_key: var("TOKEN_SIGNING_KEY")
                .map(common::config::Secret::new)
                .ok_or_else(|| {
                    ConfigError::new(
                        "TOKEN_SIGNING_KEY",
                        "required: generate a key pair with `auth keygen`",
                    )
                })?,
            token_ttl_secs: parsed_or("TOKEN_TTL_SECONDS", 900)?,
            hash_workers: parsed_or("HASH_WORKERS", cores)?,
            hash_queue: parsed_or("HASH_QUEUE", 4 * cores)?,
            hash_cost: HashCost {
                memory_kib: parsed_or("ARGON2_MEMORY_KIB", defaults.memory_kib)?,
                iterations: parsed_or("ARGON2_ITERATIONS", defaults.iterations)?,
                parallelism: parsed_or("ARGON2_PARALLELISM", defaults.parallelism)?,
            },
            throttle: ThrottlePolicy {
                max_failures: parsed_or("LOGIN_MAX_FAILURES", 5)?,
                window: Duration::from_secs(parsed_or("LOGIN_LOCK_SECONDS", 300)?),
            },
            settings,
        })
    }
}

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AuthState {
    pub users: Arc<dyn UserStore>,
    pub throttle: Arc<dyn LoginThrottle>,
    pub hasher: HasherPool,
    pub signer: Arc<TokenSigner>,
}

impl AuthState {
    /// Builds the state from configuration, connecting to the configured backends.
    pub async fn from_config(config: &AuthConfig) -> anyhow::Result<Self> {
        let s = &config.settings;
        let signer = TokenSigner::from_seed(
            config.signing_key.expose(),
            &s.token_issuer,
            &s.token_audience,
            config.token_ttl_secs,
        )?;
        let (users, throttle): (Arc<dyn UserStore>, Arc<dyn LoginThrottle>) = match s.store {
            StoreMode::Aws => (
                Arc::new(DynamoUserStore::new(
                    common::backends::dynamodb(s).await,
                    &s.users_table,
                )),
                Arc::new(RedisThrottle::new(
                    common::backends::redis(s)?,
                    config.throttle,
                )),
            ),
            StoreMode::Memory => (
                Arc::new(MemoryUserStore::default()),
                Arc::new(MemoryThrottle::new(config.throttle)),
            ),
        };
        Ok(Self {
            users,
            throttle,
            hasher: HasherPool::new(config.hash_workers, config.hash_queue, config.hash_cost),
            signer: Arc::new(signer),
        })
    }
}

/// The complete auth service: routes plus the shared middleware.
pub fn app(state: AuthState, http: &common::http::HttpOptions) -> axum::Router {
    common::http::with_common_layers(routes::router(state), http)
}
