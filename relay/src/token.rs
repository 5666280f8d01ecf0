//! Relay-signed HS256 tokens: who a user is, in which tenant, with which role, for which
//! call, until when. The relay both issues (`blindrelay token`) and checks them.

use blindrelay_protocol::signal::ErrorCode;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Token roles. Bots are the recording / captions / transcription services that an E2EE
/// call refuses.
pub const ROLES: [&str; 4] = ["user", "bot:recording", "bot:captions", "bot:transcription"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    pub tenant: String,
    pub role: String,
    /// The call this token admits to; `None` admits to any call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    pub exp: u64,
    pub iat: u64,
}

impl Claims {
    pub fn is_bot(&self) -> bool {
        self.role.starts_with("bot:")
    }
}

/// Why a token is refused; each maps to a stable signalling error code.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token invalid: {0}")]
    Invalid(String),
    #[error("unknown role `{0}`")]
    BadRole(String),
}

impl TokenError {
    pub fn code(&self) -> ErrorCode {
        match self {
            TokenError::Expired => ErrorCode::TokenExpired,
            _ => ErrorCode::Unauthorized,
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

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
    let iat = now_secs();
    let claims = Claims {
        sub: user.to_string(),
        tenant: tenant.to_string(),
        role: role.to_string(),
        call: call.map(str::to_string),
        exp: iat + ttl.as_secs(),
        iat,
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| TokenError::Invalid(e.to_string()))
}

/// Check signature (HS256 only; `alg: none` and others are refused) and expiry.
pub fn verify(secret: &str, token: &str, leeway: Duration) -> Result<Claims, TokenError> {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = leeway.as_secs();
    v.set_required_spec_claims(&["exp", "sub"]);
    let data =
        decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &v).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            }
        })?;
    if !ROLES.contains(&data.claims.role.as_str()) {
        return Err(TokenError::BadRole(data.claims.role));
    }
    Ok(data.claims)
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn expired_is_its_own_error() {
        let claims = Claims {
            sub: "a".into(),
            tenant: "t".into(),
            role: "user".into(),
            call: None,
            exp: now_secs() - 100,
            iat: now_secs() - 200,
        };
        let t = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(S.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            verify(S, &t, Duration::from_secs(5)),
            Err(TokenError::Expired)
        );
    }
}
