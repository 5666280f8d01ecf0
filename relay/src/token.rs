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

/// Longest identifier (`sub`, `tenant`) a token may carry, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Default longest token lifetime (`auth.max_ttl`).
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);

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
    /// Issued at; `0` when the token has none (then only `exp - now` bounds its lifetime).
    #[serde(default)]
    pub iat: u64,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

impl Claims {
    pub fn is_bot(&self) -> bool {
        self.role.starts_with("bot:")
    }
}

/// What [`verify_at`] accepts besides a good signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRules {
    /// Clock skew allowed on `exp`, `nbf` and the `exp - now` bound.
    pub leeway: Duration,
    /// Longest lifetime: `exp - max(iat, nbf)`, and `exp - now` (plus leeway).
    pub max_ttl: Duration,
}

/// Why a token is refused; each maps to a stable signalling error code.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token not yet valid (nbf is in the future)")]
    NotYetValid,
    #[error("token lifetime is longer than the relay accepts (auth.max_ttl)")]
    TtlTooLong,
    #[error("token invalid: {0}")]
    Invalid(String),
    #[error("unknown role `{0}`")]
    BadRole(String),
    #[error("invalid subject: {0}")]
    BadSubject(String),
    #[error("invalid tenant: {0}")]
    BadTenant(String),
}

impl TokenError {
    pub fn code(&self) -> ErrorCode {
        match self {
            TokenError::Expired => ErrorCode::TokenExpired,
            _ => ErrorCode::Unauthorized,
        }
    }
}

/// Seconds since the Unix epoch by the system clock (0 if it is before 1970).
pub fn now_secs() -> u64 {
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
        exp: iat.saturating_add(ttl.as_secs()),
        iat,
        nbf: None,
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| TokenError::Invalid(e.to_string()))
}

/// Why an identifier is unusable, if it is: empty or over [`MAX_ID_BYTES`]. The value
/// itself is not echoed.
fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        Some("empty".into())
    } else if id.len() > MAX_ID_BYTES {
        Some(format!(
            "{} bytes long, at most {MAX_ID_BYTES} allowed",
            id.len()
        ))
    } else {
        None
    }
}

/// Check a token at time `now_unix` (seconds): signature (HS256 only; `alg: none` and
/// others are refused), `exp`, `nbf`, lifetime against `rules.max_ttl`, role, subject and
/// tenant. Reads no clock.
pub fn verify_at(
    secret: &str,
    token: &str,
    rules: &TokenRules,
    now_unix: u64,
) -> Result<Claims, TokenError> {
    let mut v = Validation::new(Algorithm::HS256);
    // Time is checked below against `now_unix`, never against the system clock.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.leeway = 0;
    v.set_required_spec_claims(&["exp", "sub"]);
    let claims = decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &v)
        .map_err(|e| TokenError::Invalid(e.to_string()))?
        .claims;

    let leeway = rules.leeway.as_secs();
    let max_ttl = rules.max_ttl.as_secs();
    if claims.exp.saturating_add(leeway) < now_unix {
        return Err(TokenError::Expired);
    }
    if claims
        .nbf
        .is_some_and(|nbf| now_unix.saturating_add(leeway) < nbf)
    {
        return Err(TokenError::NotYetValid);
    }
    let iat = (claims.iat != 0).then_some(claims.iat);
    let start = iat.max(claims.nbf);
    if start.is_some_and(|start| claims.exp.saturating_sub(start) > max_ttl) {
        return Err(TokenError::TtlTooLong);
    }
    // A missing or back-dated `iat` must not buy a longer life.
    if claims.exp.saturating_sub(now_unix) > max_ttl.saturating_add(leeway) {
        return Err(TokenError::TtlTooLong);
    }

    if !ROLES.contains(&claims.role.as_str()) {
        return Err(TokenError::BadRole(claims.role));
    }
    if let Some(why) = id_problem(&claims.sub) {
        return Err(TokenError::BadSubject(why));
    }
    if let Some(why) = id_problem(&claims.tenant) {
        return Err(TokenError::BadTenant(why));
    }
    Ok(claims)
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

    /// A virtual "now", far from the real clock, so no test depends on it.
    const NOW: u64 = 1_000_000_000;

    fn rules(leeway: u64, max_ttl: u64) -> TokenRules {
        TokenRules {
            leeway: Duration::from_secs(leeway),
            max_ttl: Duration::from_secs(max_ttl),
        }
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

    fn check(claims: &Claims, leeway: u64, max_ttl: u64) -> Result<Claims, TokenError> {
        verify_at(S, &sign(claims), &rules(leeway, max_ttl), NOW)
    }

    #[test]
    fn expired_is_its_own_error() {
        let c = claims(now_secs() - 200, now_secs() - 100);
        let e = verify(S, &sign(&c), Duration::from_secs(5)).unwrap_err();
        assert_eq!(e, TokenError::Expired);
        assert_eq!(e.code(), ErrorCode::TokenExpired);
    }

    #[test]
    fn exp_is_honoured_with_leeway() {
        let c = claims(NOW - 100, NOW - 10);
        assert_eq!(check(&c, 5, 3600), Err(TokenError::Expired));
        assert_eq!(check(&c, 10, 3600), Ok(c.clone()));
        let c = claims(NOW - 100, NOW);
        assert_eq!(check(&c, 0, 3600), Ok(c));
    }

    #[test]
    fn exp_at_u64_max_is_too_long_not_a_panic() {
        for iat in [0, NOW] {
            let c = claims(iat, u64::MAX);
            assert_eq!(check(&c, 5, 3600), Err(TokenError::TtlTooLong));
        }
        // A huge leeway saturates instead of overflowing; exp - iat still counts.
        let c = claims(NOW, u64::MAX);
        assert_eq!(check(&c, u64::MAX, 3600), Err(TokenError::TtlTooLong));
        let mut c = claims(NOW, u64::MAX);
        c.nbf = Some(u64::MAX);
        assert_eq!(
            verify_at(S, &sign(&c), &rules(u64::MAX, u64::MAX), u64::MAX).map(|c| c.exp),
            Ok(u64::MAX)
        );
    }

    #[test]
    fn nbf_is_honoured_with_leeway() {
        let mut c = claims(NOW, NOW + 600);
        c.nbf = Some(NOW + 60);
        let e = check(&c, 5, 3600).unwrap_err();
        assert_eq!(e, TokenError::NotYetValid);
        assert_eq!(e.code(), ErrorCode::Unauthorized);
        c.nbf = Some(NOW + 5);
        assert_eq!(check(&c, 5, 3600), Ok(c.clone()));
        c.nbf = Some(NOW - 5);
        assert_eq!(check(&c, 0, 3600), Ok(c));
    }

    #[test]
    fn lifetime_over_max_ttl_is_refused() {
        // exp - iat over max_ttl, even though exp - now is short.
        let c = claims(NOW - 7200, NOW + 60);
        let e = check(&c, 5, 3600).unwrap_err();
        assert_eq!(e, TokenError::TtlTooLong);
        assert_eq!(e.code(), ErrorCode::Unauthorized);
        // Exactly max_ttl is fine.
        let c = claims(NOW, NOW + 3600);
        assert_eq!(check(&c, 0, 3600), Ok(c));
        // A later nbf shortens the lifetime that counts.
        let mut c = claims(NOW - 7200, NOW + 60);
        c.nbf = Some(NOW - 60);
        assert_eq!(check(&c, 0, 3600), Ok(c));
        // exp - now over max_ttl + leeway, whatever iat claims (here iat is in the future).
        let c = claims(NOW + 5000, NOW + 5000);
        assert_eq!(check(&c, 5, 3600), Err(TokenError::TtlTooLong));
        let c = claims(NOW + 3000, NOW + 3605);
        assert_eq!(check(&c, 5, 3600), Ok(c.clone()));
        assert_eq!(check(&c, 4, 3600), Err(TokenError::TtlTooLong));
    }

    #[test]
    fn token_without_iat_parses_and_is_judged_by_exp_minus_now() {
        let mut raw = serde_json::json!({
            "sub": "a", "tenant": "t", "role": "user", "exp": NOW + 600,
        });
        let c = verify_at(S, &sign(&raw), &rules(5, 3600), NOW).unwrap();
        assert_eq!((c.iat, c.exp, c.nbf), (0, NOW + 600, None));
        raw["exp"] = (NOW + 7200).into();
        assert_eq!(
            verify_at(S, &sign(&raw), &rules(5, 3600), NOW),
            Err(TokenError::TtlTooLong)
        );
        // exp and sub are still required.
        let raw = serde_json::json!({ "sub": "a", "tenant": "t", "role": "user", "iat": NOW });
        assert!(matches!(
            verify_at(S, &sign(&raw), &rules(5, 3600), NOW),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn subject_and_tenant_are_bounded() {
        let mut c = claims(NOW, NOW + 60);
        c.sub = String::new();
        assert!(matches!(check(&c, 0, 3600), Err(TokenError::BadSubject(_))));
        c.sub = "x".repeat(257);
        let e = check(&c, 0, 3600).unwrap_err();
        assert!(matches!(e, TokenError::BadSubject(_)), "{e:?}");
        assert!(!e.to_string().contains(&c.sub[..64]), "echoes the sub: {e}");
        assert_eq!(e.code(), ErrorCode::Unauthorized);
        c.sub = "x".repeat(256);
        assert!(check(&c, 0, 3600).is_ok());
        c.tenant = String::new();
        assert!(matches!(check(&c, 0, 3600), Err(TokenError::BadTenant(_))));
        c.tenant = "t".repeat(257);
        assert!(matches!(check(&c, 0, 3600), Err(TokenError::BadTenant(_))));
        c.tenant = "t".into();
        c.role = "admin".into();
        assert_eq!(check(&c, 0, 3600), Err(TokenError::BadRole("admin".into())));
    }

    #[test]
    fn alg_none_and_wrong_secret_are_refused() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let c = claims(NOW, NOW + 60);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        for alg in ["none", "None", "HS384"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            let t = format!("{header}.{payload}.");
            assert!(
                matches!(
                    verify_at(S, &t, &rules(5, 3600), NOW),
                    Err(TokenError::Invalid(_))
                ),
                "{alg}"
            );
        }
        let good = sign(&c);
        assert!(verify_at(S, &good, &rules(5, 3600), NOW).is_ok());
        let e = verify_at("another-secret-123456", &good, &rules(5, 3600), NOW).unwrap_err();
        assert!(matches!(e, TokenError::Invalid(_)), "{e:?}");
        assert_eq!(e.code(), ErrorCode::Unauthorized);
    }

    #[test]
    fn issue_cannot_overflow() {
        let t = issue(S, "a", "t", "user", None, Duration::MAX).unwrap();
        assert_eq!(verify(S, &t, Duration::ZERO), Err(TokenError::TtlTooLong));
    }
}
