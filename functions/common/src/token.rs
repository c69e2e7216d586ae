//! Access tokens: compact JWTs signed with Ed25519 (`alg: EdDSA`).
//!
//! Only the auth function holds the signing key; every other function
//! verifies locally with the public key(s), so checkout never calls auth.
//! Verification is deliberately narrow: the algorithm is pinned (no `none`,
//! no HMAC confusion), issuer and audience must match, `exp`/`nbf` are checked
//! with a small leeway, and oversized tokens are refused before any parsing.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

pub mod admission;
mod batch;
mod cache;
mod verifier;

pub use verifier::TokenVerifier;

/// No legitimate token of ours comes near this; bigger ones are refused unread.
pub const MAX_TOKEN_BYTES: usize = 2048;
/// Clock skew tolerated between the issuer and a verifier.
pub const LEEWAY_SECS: i64 = 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Admission tokens only (`admission.rs`): the sale admitted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sale: Option<String>,
    /// Admission tokens only: the waiting-room ticket admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token is too large")]
    TooLarge,
    #[error("token algorithm is not EdDSA")]
    WrongAlgorithm,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer or audience is wrong")]
    WrongIssuerOrAudience,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// A key id derived from the public key, so rotation needs no bookkeeping.
fn key_id(key: &VerifyingKey) -> String {
    use sha2::{Digest, Sha256};
    B64.encode(&Sha256::digest(key.as_bytes())[..12])
}

fn decode_key_bytes(name: &str, raw: &str) -> Result<[u8; 32], ConfigError> {
    let bytes = B64
        .decode(raw.trim().trim_end_matches('='))
        .map_err(|_| ConfigError::new(name, "not base64url"))?;
    bytes
        .try_into()
        .map_err(|_| ConfigError::new(name, "an Ed25519 key is exactly 32 bytes"))
}

/// Issues tokens. Lives only in the auth function.
pub struct TokenSigner {
    key: SigningKey,
    kid: String,
    issuer: String,
    audience: String,
    ttl_secs: i64,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// From a base64url 32-byte seed, as `auth keygen` prints it.
    pub fn from_seed(
        seed_b64: &str,
        issuer: &str,
        audience: &str,
        ttl_secs: i64,
    ) -> Result<Self, ConfigError> {
        let seed = decode_key_bytes("TOKEN_SIGNING_KEY", seed_b64)?;
        Ok(Self::new(
            SigningKey::from_bytes(&seed),
            issuer,
            audience,
            ttl_secs,
        ))
    }

    pub fn new(key: SigningKey, issuer: &str, audience: &str, ttl_secs: i64) -> Self {
        let kid = key_id(&key.verifying_key());
        Self {
            key,
            kid,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl_secs,
        }
    }

    /// A fresh random key; for tests and `keygen`.
    pub fn generate(issuer: &str, audience: &str, ttl_secs: i64) -> Self {
        Self::new(
            SigningKey::generate(&mut rand::rngs::OsRng),
            issuer,
            audience,
            ttl_secs,
        )
    }

    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    pub fn seed_b64(&self) -> String {
        B64.encode(self.key.to_bytes())
    }

    pub fn public_key_b64(&self) -> String {
        B64.encode(self.key.verifying_key().as_bytes())
    }

    /// A verifier that accepts exactly what this signer issues.
    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier::new(
            vec![(self.kid.clone(), self.key.verifying_key())],
            &self.issuer,
            &self.audience,
        )
    }

    pub fn issue(&self, user_id: &str, now: i64) -> String {
        self.sign_claims(&Claims {
            sub: user_id.to_owned(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + self.ttl_secs,
            nbf: Some(now),
            sale: None,
            jti: None,
        })
    }

    /// Signs arbitrary claims; tests use it to forge expired or misaddressed tokens.
    pub fn sign_claims(&self, claims: &Claims) -> String {
        let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(serde_json::to_vec(claims).unwrap_or_default())
        );
        let signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(signature.to_bytes()))
    }

    /// The JSON Web Key Set served at `/auth/jwks.json` (RFC 8037 OKP keys).
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
                "kid": self.kid,
                "x": self.public_key_b64(),
            }]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn signer() -> TokenSigner {
        TokenSigner::generate("flashsale-auth", "flashsale", 900)
    }

    fn claims(signer: &TokenSigner) -> Claims {
        Claims {
            sub: "u1".into(),
            iss: signer.issuer.clone(),
            aud: signer.audience.clone(),
            iat: NOW,
            exp: NOW + 900,
            nbf: None,
            sale: None,
            jti: None,
        }
    }

    #[test]
    fn issued_tokens_verify_and_carry_the_user() {
        let s = signer();
        let c = s
            .verifier()
            .verify(&s.issue("user-42", NOW), NOW + 10)
            .unwrap();
        assert_eq!(c.sub, "user-42");
        assert_eq!(c.exp, NOW + 900);
    }

    #[test]
    fn keys_round_trip_through_their_text_form() {
        let s = signer();
        let again =
            TokenSigner::from_seed(&s.seed_b64(), "flashsale-auth", "flashsale", 900).unwrap();
        let verifier =
            TokenVerifier::from_public_keys(&[s.public_key_b64()], "flashsale-auth", "flashsale")
                .unwrap();
        assert!(verifier.verify(&again.issue("u", NOW), NOW).is_ok());
        assert!(TokenSigner::from_seed("c2hvcnQ", "i", "a", 1).is_err());
        assert!(TokenVerifier::from_public_keys(&[], "i", "a").is_err());
    }

    #[test]
    fn expired_and_future_tokens_are_refused() {
        let s = signer();
        let v = s.verifier();
        let token = s.issue("u", NOW);
        assert_eq!(
            v.verify(&token, NOW + 900 + LEEWAY_SECS),
            Err(TokenError::Expired)
        );
        let mut future = claims(&s);
        future.nbf = Some(NOW + 3600);
        assert_eq!(
            v.verify(&s.sign_claims(&future), NOW),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn wrong_issuer_or_audience_is_refused() {
        let s = signer();
        let mut c = claims(&s);
        c.aud = "someone-else".into();
        assert_eq!(
            s.verifier().verify(&s.sign_claims(&c), NOW),
            Err(TokenError::WrongIssuerOrAudience)
        );
        let mut c = claims(&s);
        c.iss = "evil".into();
        assert_eq!(
            s.verifier().verify(&s.sign_claims(&c), NOW),
            Err(TokenError::WrongIssuerOrAudience)
        );
    }

    #[test]
    fn alg_none_and_hmac_confusion_are_refused() {
        let s = signer();
        let payload = B64.encode(serde_json::to_vec(&claims(&s)).unwrap());
        let none = format!("{}.{payload}.", B64.encode(r#"{"alg":"none","typ":"JWT"}"#));
        assert_eq!(
            s.verifier().verify(&none, NOW),
            Err(TokenError::WrongAlgorithm)
        );

        // HS256 "signed" with the public key, the classic confusion attack.
        use sha2::Sha256;
        let header = B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        let input = format!("{header}.{payload}");
        let mac = hmac_sha256(s.public_key_b64().as_bytes(), input.as_bytes());
        let forged = format!("{input}.{}", B64.encode(mac));
        assert_eq!(
            s.verifier().verify(&forged, NOW),
            Err(TokenError::WrongAlgorithm)
        );
        let _ = Sha256::default;
    }

    fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
        use sha2::{Digest, Sha256};
        let mut k = [0u8; 64];
        k[..key.len().min(64)].copy_from_slice(&key[..key.len().min(64)]);
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::new()
            .chain_update(&ipad)
            .chain_update(msg)
            .finalize();
        Sha256::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize()
            .to_vec()
    }

    #[test]
    fn tampered_foreign_and_oversized_tokens_are_refused() {
        let s = signer();
        let token = s.issue("u1", NOW);
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let mut c = claims(&s);
        c.sub = "admin".into();
        let tampered = format!(
            "{head}.{}.{sig}",
            B64.encode(serde_json::to_vec(&c).unwrap())
        );
        assert_eq!(
            s.verifier().verify(&tampered, NOW),
            Err(TokenError::BadSignature)
        );

        let other = signer();
        assert_eq!(
            other.verifier().verify(&token, NOW),
            Err(TokenError::BadSignature)
        );

        let huge = format!("{token}{}", "A".repeat(MAX_TOKEN_BYTES));
        assert_eq!(s.verifier().verify(&huge, NOW), Err(TokenError::TooLarge));
        for junk in ["", "a.b", "a.b.c.d", "!!!.???.***"] {
            assert!(s.verifier().verify(junk, NOW).is_err(), "{junk}");
        }
    }

    #[test]
    fn remembered_tokens_still_expire_and_forgeries_are_not_remembered() {
        let s = signer();
        let v = s.verifier();
        let token = s.issue("u", NOW);
        assert!(v.verify_cached(&token, NOW).is_ok());
        assert!(v.verify_cached(&token, NOW + 1).is_ok(), "from memory");
        assert_eq!(
            v.verify_cached(&token, NOW + 900 + LEEWAY_SECS),
            Err(TokenError::Expired)
        );
        let mut bytes = token.clone().into_bytes();
        let i = bytes.len() - 10; // inside the signature
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(bytes).unwrap();
        assert!(v.verify_cached(&forged, NOW).is_err());
        assert!(
            v.verify_cached(&forged, NOW).is_err(),
            "a failure is never remembered as a success"
        );
    }

    #[test]
    fn jwks_publishes_the_verifying_key() {
        let s = signer();
        let jwks = s.jwks();
        assert_eq!(jwks["keys"][0]["kty"], "OKP");
        assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
        assert_eq!(jwks["keys"][0]["x"], s.public_key_b64());
    }
}

/// The caller of a user-facing route, proven by a valid access token.
/// Rejects with `401 unauthorized` before the handler runs.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: String,
}

impl<S> axum::extract::FromRequestParts<S> for AuthUser
where
    std::sync::Arc<TokenVerifier>: axum::extract::FromRef<S>,
    S: Send + Sync,
{
    type Rejection = crate::ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        use axum::extract::FromRef;
        let verifier = std::sync::Arc::<TokenVerifier>::from_ref(state);
        let token =
            crate::http::bearer_token(&parts.headers).ok_or(crate::ApiError::Unauthorized)?;
        let now = chrono::Utc::now().timestamp();
        match verifier.verify_batched(token, now).await {
            Ok(claims) => Ok(AuthUser {
                user_id: claims.sub,
            }),
            Err(reason) => {
                tracing::debug!(%reason, "token refused");
                Err(crate::ApiError::Unauthorized)
            }
        }
    }
}

/// Compares a presented admin token with the configured one in constant
/// time, so response timing reveals nothing about how much of it matched.
pub fn admin_token_matches(
    presented: Option<&str>,
    configured: Option<&crate::config::Secret>,
) -> bool {
    use subtle::ConstantTimeEq;
    match (presented, configured) {
        (Some(p), Some(c)) if !c.expose().is_empty() => {
            use sha2::{Digest, Sha256};
            // Hashing first makes the comparison length-independent too.
            let a = Sha256::digest(p.as_bytes());
            let b = Sha256::digest(c.expose().as_bytes());
            a.ct_eq(&b).into()
        }
        _ => false,
    }
}
