//! Typed configuration, read from the environment once at start-up.
//!
//! Every function calls [`Settings::from_env`]; the function-specific knobs
//! live next to the function that uses them, built with the helpers here.
//! Secrets are wrapped in [`Secret`] so that printing a config can never leak
//! them into a log line.

use std::fmt;
use std::str::FromStr;

/// A configuration mistake: which variable, and what was wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {name}: {problem}")]
pub struct ConfigError {
    pub name: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(name: &str, problem: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            problem: problem.into(),
        }
    }
}

/// A value that must never appear in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The one deliberate way to read the secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The variable's value, if it is set and not blank.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The variable parsed as `T`, or `default` when unset.
pub fn parsed_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(raw) => raw
            .parse()
            .map_err(|e| ConfigError::new(name, format!("cannot parse {raw:?}: {e}"))),
    }
}

/// Where the functions keep their state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// Redis + DynamoDB (Local or AWS): the real, tested path.
    Aws,
    /// In-process stores, for trying the API with nothing but cargo.
    Memory,
}

impl FromStr for StoreMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "aws" | "dynamodb" | "redis" => Ok(Self::Aws),
            "memory" | "embedded" => Ok(Self::Memory),
            other => Err(format!("unknown store {other:?} (expected aws or memory)")),
        }
    }
}

/// What every function needs to know about the world around it.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store: StoreMode,
    /// `REDIS_URL` as given: one URL, or cluster seeds separated by commas.
    pub redis_url: String,
    /// `REDIS_MODE`: single (default) or cluster.
    pub redis_mode: crate::redis_client::RedisMode,
    /// `REDIS_CA_FILE`: PEM roots for `rediss://`, instead of the system's.
    pub redis_ca_file: Option<String>,
    /// `None` on real AWS; `http://127.0.0.1:8000` for DynamoDB Local.
    pub dynamodb_endpoint: Option<String>,
    pub aws_region: String,
    pub users_table: String,
    pub ledger_table: String,
    /// `LEDGER_BUCKETS`: how many stock counters (and partition keys) the
    /// ledger spreads each new sale over, 1 to 99 (default 32; a sale never
    /// gets more than it has units). Existing sales keep theirs.
    pub ledger_buckets: u16,
    pub token_issuer: String,
    pub token_audience: String,
    /// Base64url Ed25519 public keys that verify access tokens (comma separated
    /// in the environment, so keys can be rotated).
    pub token_public_keys: Vec<String>,
    /// How long a backend call may take before the caller gets `503`.
    pub backend_timeout_ms: u64,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let settings = Self {
            store: parsed_or("STORE", StoreMode::Aws)?,
            redis_url: var("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            redis_mode: parsed_or("REDIS_MODE", crate::redis_client::RedisMode::Single)?,
            redis_ca_file: var("REDIS_CA_FILE"),
            dynamodb_endpoint: var("DYNAMODB_ENDPOINT"),
            aws_region: var("AWS_REGION")
                .or_else(|| var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            users_table: var("USERS_TABLE").unwrap_or_else(|| "flashsale-users".into()),
            ledger_table: var("LEDGER_TABLE").unwrap_or_else(|| "flashsale-ledger".into()),
            ledger_buckets: parsed_or("LEDGER_BUCKETS", 32)?,
            token_issuer: var("TOKEN_ISSUER").unwrap_or_else(|| "flashsale-auth".into()),
            token_audience: var("TOKEN_AUDIENCE").unwrap_or_else(|| "flashsale".into()),
            token_public_keys: var("TOKEN_PUBLIC_KEY")
                .map(|v| {
                    v.split(',')
                        .map(|k| k.trim().to_owned())
                        .filter(|k| !k.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            backend_timeout_ms: parsed_or("BACKEND_TIMEOUT_MS", 2_000)?,
        };
        if !(1..=99).contains(&settings.ledger_buckets) {
            return Err(ConfigError::new(
                "LEDGER_BUCKETS",
                format!("must be 1 to 99, not {}", settings.ledger_buckets),
            ));
        }
        if settings.store == StoreMode::Aws {
            // A wrong Redis setting fails the start, not the first checkout.
            settings.redis_target()?;
        }
        Ok(settings)
    }

    /// The Redis deployment these settings name, validated.
    pub fn redis_target(&self) -> Result<crate::redis_client::RedisTarget, ConfigError> {
        crate::redis_client::RedisTarget::parse(
            &self.redis_url,
            self.redis_mode,
            self.redis_ca_file.as_deref(),
        )
    }

    /// Settings for tests and embedded mode: in-memory stores, no keys.
    pub fn memory() -> Self {
        Self {
            store: StoreMode::Memory,
            redis_url: String::new(),
            redis_mode: crate::redis_client::RedisMode::Single,
            redis_ca_file: None,
            dynamodb_endpoint: None,
            aws_region: "us-east-1".into(),
            users_table: "flashsale-users".into(),
            ledger_table: "flashsale-ledger".into(),
            ledger_buckets: 32,
            token_issuer: "flashsale-auth".into(),
            token_audience: "flashsale".into(),
            token_public_keys: Vec::new(),
            backend_timeout_ms: 2_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let s = Secret::new("hunter2-hunter2");
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(s.expose(), "hunter2-hunter2");
    }

    #[test]
    fn store_mode_parses_known_names_only() {
        assert_eq!("memory".parse::<StoreMode>(), Ok(StoreMode::Memory));
        assert_eq!("AWS".parse::<StoreMode>(), Ok(StoreMode::Aws));
        assert!("mongo".parse::<StoreMode>().is_err());
    }
}
