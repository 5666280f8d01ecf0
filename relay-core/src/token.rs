//! How the control plane checks a token at `hello`. Two modes, chosen by the relay's
//! config:
//!
//! - **HS256** under the relay's own `auth.api_secret`: the relay both issues and checks
//!   them, so whoever runs it can mint any identity.
//! - **Issuer** (`auth.issuer_public_keys`): EdDSA tokens signed by an issuer whose public
//!   keys alone the relay holds. It verifies them and refuses HS256, so it cannot mint.
//!
//! Checking reads no clock: the caller passes the time. Minting, and checking by the
//! system clock, live in the relay crate (`blindrelay::token`). Claims, rules and errors
//! are shared with the clients: `blindrelay_protocol::token`.

pub use blindrelay_protocol::token::{
    check_claims, Claims, TokenError, TokenRules, MAX_ID_BYTES, ROLES,
};
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};

/// How `hello` checks a token. Built from the config's `[auth]`.
#[derive(Clone)]
pub enum TokenVerifier {
    /// HS256 under this secret; the relay can mint such tokens.
    Hs256(String),
    /// EdDSA under one of these issuer public keys, chosen by `kid`; HS256 is refused.
    Issuer(Vec<(String, [u8; 32])>),
}

impl TokenVerifier {
    /// Check `token` at `now_unix` by this verifier's mode.
    pub fn verify_at(
        &self,
        token: &str,
        rules: &TokenRules,
        now_unix: u64,
    ) -> Result<Claims, TokenError> {
        match self {
            TokenVerifier::Hs256(secret) => verify_at(secret, token, rules, now_unix),
            TokenVerifier::Issuer(keys) => {
                blindrelay_protocol::token::verify_eddsa_at(token, keys, rules, now_unix)
            }
        }
    }
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenVerifier::Hs256(_) => f.write_str("Hs256(<redacted>)"),
            TokenVerifier::Issuer(keys) => f
                .debug_tuple("Issuer")
                .field(&keys.iter().map(|(kid, _)| kid).collect::<Vec<_>>())
                .finish(),
        }
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
    check_claims(claims, rules, now_unix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blindrelay_protocol::signal::ErrorCode;
    use blindrelay_protocol::token::{generate_ed25519, issue_eddsa, read_ed25519_private};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde::Serialize;
    use std::time::Duration;
    const S: &str = "0123456789abcdef0123";

    #[test]
    fn each_mode_takes_only_its_own_tokens() {
        let (private, _) = generate_ed25519().expect("randomness");
        let issuer = read_ed25519_private(&private).expect("reads");
        let hs = TokenVerifier::Hs256(S.into());
        let ed = TokenVerifier::Issuer(vec![(issuer.kid(), *issuer.public())]);
        let r = rules(5, 3600);
        let c = claims(NOW, NOW + 60);
        let hs_token = sign(&c);
        let ed_token = issue_eddsa(&issuer, &issuer.kid(), &c).expect("issues");
        assert_eq!(hs.verify_at(&hs_token, &r, NOW), Ok(c.clone()));
        assert_eq!(ed.verify_at(&ed_token, &r, NOW), Ok(c.clone()));
        // An issuer-mode relay refuses what its own secret signs: it cannot mint.
        let e = ed.verify_at(&hs_token, &r, NOW).unwrap_err();
        assert_eq!(e, TokenError::WrongAlgorithm("HS256".into(), "EdDSA"));
        assert_eq!(e.code(), ErrorCode::Unauthorized);
        assert!(matches!(
            hs.verify_at(&ed_token, &r, NOW),
            Err(TokenError::Invalid(_))
        ));
        // The secret never shows in Debug; kids do.
        assert_eq!(format!("{hs:?}"), "Hs256(<redacted>)");
        assert!(format!("{ed:?}").contains(&issuer.kid()));
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

    fn check(claims: &Claims, leeway: u64, max_ttl: u64) -> Result<Claims, TokenError> {
        verify_at(S, &sign(claims), &rules(leeway, max_ttl), NOW)
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
}
