//! Admission tokens (waiting room, contract v1.1): short-lived Ed25519 JWTs
//! that say "this user may check out of this sale now".
//!
//! The stock function issues them (it runs the waiting room and alone holds
//! `ADMISSION_SIGNING_KEY`); the order function verifies them with
//! `ADMISSION_PUBLIC_KEY`, locally, with no call on the checkout path. They
//! are signed with a key of their own and carry their own issuer and
//! audience, so an access token can never pass for an admission or the
//! other way round.

use super::{Claims, TokenError, TokenSigner, TokenVerifier};
use crate::config::{var, ConfigError};

pub const ADMISSION_ISSUER: &str = "flashsale-stock";
pub const ADMISSION_AUDIENCE: &str = "flashsale-admission";

/// What a verified admission grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub ticket: String,
    pub expires_at: i64,
}

#[derive(Debug)]
pub struct AdmissionSigner(TokenSigner);

impl AdmissionSigner {
    /// `ADMISSION_SIGNING_KEY` (a base64url Ed25519 seed, as `auth keygen`
    /// prints one); `None` when unset: then sales with a waiting room
    /// cannot be created on this deployment.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        var("ADMISSION_SIGNING_KEY")
            .map(|seed| {
                TokenSigner::from_seed(&seed, ADMISSION_ISSUER, ADMISSION_AUDIENCE, 0)
                    .map_err(|e| ConfigError::new("ADMISSION_SIGNING_KEY", e.problem))
            })
            .transpose()
            .map(|s| s.map(Self))
    }

    /// A fresh key; for tests.
    pub fn generate() -> Self {
        Self(TokenSigner::generate(
            ADMISSION_ISSUER,
            ADMISSION_AUDIENCE,
            0,
        ))
    }

    pub fn public_key_b64(&self) -> String {
        self.0.public_key_b64()
    }

    pub fn verifier(&self) -> AdmissionVerifier {
        AdmissionVerifier(self.0.verifier())
    }

    /// An admission of `user` to `sale` through `ticket`, valid until
    /// `expires_at` (seconds since the epoch).
    pub fn issue(&self, user: &str, sale: &str, ticket: &str, now: i64, expires_at: i64) -> String {
        self.0.sign_claims(&Claims {
            sub: user.to_owned(),
            iss: ADMISSION_ISSUER.to_owned(),
            aud: ADMISSION_AUDIENCE.to_owned(),
            iat: now,
            exp: expires_at,
            nbf: Some(now),
            sale: Some(sale.to_owned()),
            jti: Some(ticket.to_owned()),
        })
    }
}

#[derive(Debug, Clone)]
pub struct AdmissionVerifier(TokenVerifier);

impl AdmissionVerifier {
    /// `ADMISSION_PUBLIC_KEY` (comma separated for rotation); `None` when
    /// unset: then no checkout of a waiting-room sale is admitted.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let Some(raw) = var("ADMISSION_PUBLIC_KEY") else {
            return Ok(None);
        };
        let keys: Vec<String> = raw
            .split(',')
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        TokenVerifier::from_public_keys(&keys, ADMISSION_ISSUER, ADMISSION_AUDIENCE)
            .map(|v| Some(Self(v)))
            .map_err(|e| ConfigError::new("ADMISSION_PUBLIC_KEY", e.problem))
    }

    /// The admission, if `token` admits `user` to `sale` at `now`. Expiry
    /// is exact here (no leeway): an admission is short by design.
    pub fn verify(
        &self,
        token: &str,
        user: &str,
        sale: &str,
        now: i64,
    ) -> Result<Admission, TokenError> {
        let claims = self.0.verify(token, now)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.sub != user || claims.sale.as_deref() != Some(sale) {
            return Err(TokenError::WrongIssuerOrAudience);
        }
        let ticket = claims.jti.ok_or(TokenError::Malformed)?;
        Ok(Admission {
            ticket,
            expires_at: claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn an_admission_is_for_one_user_one_sale_until_it_expires() {
        let signer = AdmissionSigner::generate();
        let v = signer.verifier();
        let t = signer.issue("u1", "phones", "t1", NOW, NOW + 60);
        assert_eq!(
            v.verify(&t, "u1", "phones", NOW + 1),
            Ok(Admission {
                ticket: "t1".into(),
                expires_at: NOW + 60
            })
        );
        assert!(v.verify(&t, "u2", "phones", NOW).is_err(), "another user");
        assert!(v.verify(&t, "u1", "laptops", NOW).is_err(), "another sale");
        assert!(v.verify(&t, "u1", "phones", NOW + 60).is_err(), "expired");
        let other = AdmissionSigner::generate();
        let forged = other.issue("u1", "phones", "t1", NOW, NOW + 60);
        assert!(
            v.verify(&forged, "u1", "phones", NOW).is_err(),
            "another key"
        );
    }

    #[test]
    fn an_access_token_is_not_an_admission() {
        let auth = TokenSigner::generate("flashsale-auth", "flashsale", 900);
        let access = auth.issue("u1", NOW);
        let admission = AdmissionSigner::generate();
        assert!(admission
            .verifier()
            .verify(&access, "u1", "phones", NOW)
            .is_err());
        // Even signed with the admission key, the wrong audience is refused.
        let wrong = admission.0.issue("u1", NOW);
        assert!(admission
            .verifier()
            .verify(&wrong, "u1", "phones", NOW)
            .is_err());
    }
}
