//! Tokens: minted here (`blindrelay token`, `POST /dev/token`), checked at `hello` by the
//! core ([`blindrelay_core::token`], re-exported here), which reads no clock.
//!
//! - **HS256** under the relay's own `auth.api_secret` (the no-flag default): the relay
//!   both issues and checks them, so whoever runs it can mint any identity.
//! - **Issuer** (`auth.issuer_public_keys`): EdDSA tokens signed by an issuer whose public
//!   keys alone the relay holds. It verifies them and refuses HS256, so it cannot mint.
//!
//! Claims, rules and errors are shared with the clients: `blindrelay_protocol::token`.

pub use blindrelay_core::token::{verify_at, TokenVerifier};
pub use blindrelay_protocol::token::{
    check_claims, now_secs, Claims, Cnf, TokenError, TokenRules, DEFAULT_MAX_TTL, MAX_ID_BYTES,
    ROLES,
};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::time::Duration;

/// Sign a token.
pub fn issue(
    secret: &str,
    user: &str,
    tenant: &str,
    role: &str,
    call: Option<&str>,
    ttl: Duration,
) -> Result<String, TokenError> {
    if !ROLES.contains(&role) {
        return Err(TokenError::BadRole(role.to_string()));
    }
    let claims = Claims::new(user, tenant, role, call, now_secs(), ttl);
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| TokenError::Invalid(e.to_string()))
}

/// [`verify_at`] by the system clock, with a `max_ttl` of [`DEFAULT_MAX_TTL`].
pub fn verify(secret: &str, token: &str, leeway: Duration) -> Result<Claims, TokenError> {
    let rules = TokenRules {
        leeway,
        max_ttl: DEFAULT_MAX_TTL,
    };
    verify_at(secret, token, &rules, now_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use blindrelay_protocol::signal::ErrorCode;
    use serde::Serialize;
    const S: &str = "0123456789abcdef0123";

    #[test]
    fn issue_and_verify() {
        let t = issue(
            S,
            "alice",
            "t1",
            "user",
            Some("demo"),
            Duration::from_secs(60),
        )
        .unwrap();
        let c = verify(S, &t, Duration::ZERO).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.call.as_deref(), Some("demo"));
        assert!(matches!(
            verify("another-secret-123456", &t, Duration::ZERO),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            verify(S, "not.a.token", Duration::ZERO),
            Err(TokenError::Invalid(_))
        ));
        assert_eq!(
            issue(S, "a", "t", "admin", None, Duration::from_secs(1)),
            Err(TokenError::BadRole("admin".into()))
        );
    }

    fn claims(iat: u64, exp: u64) -> Claims {
        Claims {
            sub: "a".into(),
            tenant: "t".into(),
            role: "user".into(),
            call: None,
            exp,
            iat,
            nbf: None,
            cnf: None,
        }
    }

    fn sign<T: Serialize>(claims: &T) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(S.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn expired_is_its_own_error() {
        let c = claims(now_secs() - 200, now_secs() - 100);
        let e = verify(S, &sign(&c), Duration::from_secs(5)).unwrap_err();
        assert_eq!(e, TokenError::Expired);
        assert_eq!(e.code(), ErrorCode::TokenExpired);
    }

    #[test]
    fn issue_cannot_overflow() {
        let t = issue(S, "a", "t", "user", None, Duration::MAX).unwrap();
        assert_eq!(verify(S, &t, Duration::ZERO), Err(TokenError::TtlTooLong));
    }
}
