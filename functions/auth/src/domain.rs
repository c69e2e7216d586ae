//! Parse, don't validate: a [`Username`] or [`Password`] that exists is valid.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("username must be 3-32 characters of a-z, 0-9, '_', '.', '-' (case-insensitive)")]
    BadUsername,
    #[error("password must be 12-128 characters")]
    BadPassword,
}

/// A lower-cased username matching `^[a-z0-9_.-]{3,32}$`. Lower-casing first
/// makes `Alice` and `alice` the same account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let lowered = raw.to_lowercase();
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c);
        if (3..=32).contains(&lowered.len()) && lowered.chars().all(allowed) {
            Ok(Self(lowered))
        } else {
            Err(DomainError::BadUsername)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password of 12 to 128 characters (characters, not bytes: a passphrase in
/// any script counts the way its owner counts it). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        if (12..=128).contains(&raw.chars().count()) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(DomainError::BadPassword)
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn usernames_are_lowercased_and_checked() {
        assert_eq!(Username::parse("Alice_01").unwrap().as_str(), "alice_01");
        assert_eq!(Username::parse("a.b-c").unwrap().as_str(), "a.b-c");
        for bad in [
            "ab",
            "",
            "has space",
            "émile",
            "ünïcode",
            "semi;colon",
            &"x".repeat(33),
        ] {
            assert_eq!(
                Username::parse(bad),
                Err(DomainError::BadUsername),
                "{bad:?}"
            );
        }
        assert!(Username::parse(&"x".repeat(32)).is_ok());
    }

    #[test]
    fn passwords_count_characters_not_bytes() {
        assert!(Password::parse("short").is_err());
        assert!(Password::parse(&"p".repeat(12)).is_ok());
        assert!(Password::parse(&"p".repeat(128)).is_ok());
        assert!(Password::parse(&"p".repeat(129)).is_err());
        // 12 characters, 36 bytes.
        assert!(Password::parse(&"密".repeat(12)).is_ok());
        assert!(Password::parse(&"密".repeat(11)).is_err());
        assert_eq!(
            format!("{:?}", Password::parse(&"p".repeat(12)).unwrap()),
            "Password([redacted])"
        );
    }

    proptest! {
        #[test]
        fn any_parsed_username_matches_the_contract_pattern(raw in "\\PC{0,40}") {
            if let Ok(u) = Username::parse(&raw) {
                let s = u.as_str();
                prop_assert!((3..=32).contains(&s.len()));
                prop_assert!(s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c)));
                // Parsing is idempotent: a stored username parses to itself.
                prop_assert_eq!(Username::parse(s).unwrap(), u.clone());
            }
        }

        #[test]
        fn valid_usernames_always_parse(raw in "[A-Za-z0-9_.-]{3,32}") {
            let parsed = Username::parse(&raw).unwrap();
            prop_assert_eq!(parsed.as_str(), raw.to_lowercase());
        }

        #[test]
        fn password_acceptance_is_exactly_the_length_rule(raw in "\\PC{0,140}") {
            let n = raw.chars().count();
            prop_assert_eq!(Password::parse(&raw).is_ok(), (12..=128).contains(&n));
        }
    }
}
