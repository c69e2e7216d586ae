//! Verifying access tokens: locally, with the public key(s), the verified
//! ones remembered (`cache.rs`) and new ones' signatures checked in batches
//! (`batch.rs`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};

use super::batch::SignatureBatcher;
use super::cache::VerifiedTokens;
use super::{decode_key_bytes, key_id, Claims, Header, TokenError, LEEWAY_SECS, MAX_TOKEN_BYTES};
use crate::config::ConfigError;

/// Verifies tokens locally. Every function has one.
///
/// A stampede presents the same few thousand tokens over and over, and an
/// Ed25519 verification costs tens of microseconds, so tokens that verified
/// are remembered (bounded, sharded, evicted gradually: see `token/cache.rs`;
/// expiry is still checked on every use), and new tokens that arrive
/// together have their signatures checked together (`token/batch.rs`).
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Vec<(String, VerifyingKey)>,
    issuer: String,
    audience: String,
    verified: std::sync::Arc<VerifiedTokens>,
    batcher: std::sync::Arc<SignatureBatcher>,
}

/// About how many verified tokens are remembered (one per buyer of a big
/// sale); a full cache drops a little at a time, never all at once.
const VERIFIED_CACHE_SIZE: usize = 100_000;

fn verified_cache() -> std::sync::Arc<VerifiedTokens> {
    std::sync::Arc::new(VerifiedTokens::new(VERIFIED_CACHE_SIZE))
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("TokenVerifier")
            .field("kids", &kids)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl TokenVerifier {
    /// From base64url public keys (`TOKEN_PUBLIC_KEY`, comma separated).
    pub fn from_public_keys(
        keys_b64: &[String],
        issuer: &str,
        audience: &str,
    ) -> Result<Self, ConfigError> {
        if keys_b64.is_empty() {
            return Err(ConfigError::new(
                "TOKEN_PUBLIC_KEY",
                "required: the Ed25519 public key that verifies access tokens (see `auth keygen`)",
            ));
        }
        let keys = keys_b64
            .iter()
            .map(|raw| {
                let bytes = decode_key_bytes("TOKEN_PUBLIC_KEY", raw)?;
                let key = VerifyingKey::from_bytes(&bytes).map_err(|_| {
                    ConfigError::new("TOKEN_PUBLIC_KEY", "not a valid Ed25519 point")
                })?;
                Ok((key_id(&key), key))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self::new(keys, issuer, audience))
    }

    pub(super) fn new(keys: Vec<(String, VerifyingKey)>, issuer: &str, audience: &str) -> Self {
        Self {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            verified: verified_cache(),
            batcher: Default::default(),
        }
    }

    /// Like [`verify_cached`](Self::verify_cached), but a new token's
    /// signature is checked in a batch with the others arriving at the same
    /// time (`token/batch.rs`): what a request handler calls.
    pub async fn verify_batched(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if let Some(remembered) = self.remembered(token, now)? {
            return Ok(remembered);
        }
        let signed = self.signed_parts(token)?;
        let verified = match signed.keys.as_slice() {
            [key] => {
                self.batcher
                    .verify(key, signed.input.as_bytes(), &signed.signature)
                    .await
            }
            keys => signed.verified_by_any(keys),
        };
        if !verified {
            return Err(TokenError::BadSignature);
        }
        let claims = self.claims(signed.payload, now)?;
        self.verified.insert(token, claims.clone());
        Ok(claims)
    }

    /// Like [`verify`](Self::verify), remembering tokens that verified.
    pub fn verify_cached(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if let Some(remembered) = self.remembered(token, now)? {
            return Ok(remembered);
        }
        // Verified outside any lock: a burst of new tokens is checked in
        // parallel, and only the insert takes (one shard's) lock.
        let claims = self.verify(token, now)?;
        self.verified.insert(token, claims.clone());
        Ok(claims)
    }

    /// A token that verified before, its time checked again; `None` if it
    /// is not remembered. Oversized tokens are refused unread.
    fn remembered(&self, token: &str, now: i64) -> Result<Option<Claims>, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        self.verified
            .get(token)
            .map(|claims| Self::check_time(claims, now))
            .transpose()
    }

    fn check_time(claims: Claims, now: i64) -> Result<Claims, TokenError> {
        if claims.exp + LEEWAY_SECS <= now {
            return Err(TokenError::Expired);
        }
        if claims.nbf.unwrap_or(claims.iat) - LEEWAY_SECS > now {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }

    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let signed = self.signed_parts(token)?;
        if !signed.verified_by_any(&signed.keys) {
            return Err(TokenError::BadSignature);
        }
        self.claims(signed.payload, now)
    }

    /// A token split into what its signature covers, the signature, and
    /// the keys that may have made it (the one its `kid` names, or all).
    fn signed_parts<'t>(&self, token: &'t str) -> Result<Signed<'t>, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Header = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if header.alg != "EdDSA" {
            return Err(TokenError::WrongAlgorithm);
        }
        let signature: [u8; 64] = B64
            .decode(s)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(TokenError::Malformed)?;
        let keys = self
            .keys
            .iter()
            .filter(|(kid, _)| header.kid.as_deref().is_none_or(|want| want == kid))
            .map(|(_, key)| *key)
            .collect();
        Ok(Signed {
            input: &token[..h.len() + 1 + p.len()],
            payload: p,
            signature: Signature::from_bytes(&signature),
            keys,
        })
    }

    /// The claims of a token whose signature verified, checked.
    fn claims(&self, payload: &str, now: i64) -> Result<Claims, TokenError> {
        let claims: Claims = B64
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.iss != self.issuer || claims.aud != self.audience {
            return Err(TokenError::WrongIssuerOrAudience);
        }
        if claims.sub.is_empty() {
            return Err(TokenError::Malformed);
        }
        Self::check_time(claims, now)
    }
}

/// A parsed token, before its signature is checked.
struct Signed<'t> {
    /// `header.payload`: what the signature covers.
    input: &'t str,
    payload: &'t str,
    signature: Signature,
    keys: Vec<VerifyingKey>,
}

impl Signed<'_> {
    fn verified_by_any(&self, keys: &[VerifyingKey]) -> bool {
        keys.iter().any(|key| {
            key.verify_strict(self.input.as_bytes(), &self.signature)
                .is_ok()
        })
    }
}
