//! A member's long-term identity key (Ed25519), the one an issuer's token binds with its
//! `cnf` claim, and the issuer check run on other members' credentials.

use zeroize::Zeroizing;

/// An Ed25519 key pair: the seed never appears in `Debug` output or logs.
#[derive(Clone)]
pub struct IdentityKey {
    pub seed: Zeroizing<[u8; 32]>,
    pub public: [u8; 32],
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public", &hex::encode(self.public))
            .field("seed", &"<redacted>")
            .finish()
    }
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {error}")]
    Key {
        path: String,
        error: blindrelay_protocol::token::KeyError,
    },
}

fn read(path: &std::path::Path) -> Result<Zeroizing<String>, IdentityError> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|error| IdentityError::Read {
            path: path.display().to_string(),
            error,
        })
}

/// Load an identity key written by `e2ee-client keygen` (PKCS#8 PEM).
pub fn load_identity_key(path: &std::path::Path) -> Result<IdentityKey, IdentityError> {
    let s = blindrelay_protocol::token::read_ed25519_private(&read(path)?).map_err(|error| {
        IdentityError::Key {
            path: path.display().to_string(),
            error,
        }
    })?;
    Ok(IdentityKey {
        seed: Zeroizing::new(*s.seed()),
        public: *s.public(),
    })
}

/// Load an issuer's public key (SPKI PEM, as `blindrelay keygen` writes it).
pub fn load_issuer_key(path: &std::path::Path) -> Result<[u8; 32], IdentityError> {
    blindrelay_protocol::token::read_ed25519_public(&read(path)?).map_err(|error| {
        IdentityError::Key {
            path: path.display().to_string(),
            error,
        }
    })
}

/// Tokens in credentials are checked for signature and binding; their lifetime bound is
/// the issuer's business, so any lifetime up to a year passes here.
const CREDENTIAL_TOKEN_RULES: blindrelay_protocol::token::TokenRules =
    blindrelay_protocol::token::TokenRules {
        leeway: std::time::Duration::from_secs(60),
        max_ttl: std::time::Duration::from_secs(366 * 24 * 3600),
    };

/// The check every other member's credential must pass when this member holds issuer
/// keys: the credential carries a token one of them signed (EdDSA), for this call (or any
/// call), naming the credential's user, whose `cnf` is the credential's signature key.
/// A relay without the issuer's private key can then add no one.
pub fn issuer_check(issuer_keys: Vec<[u8; 32]>, call: String) -> crate::roster::CredentialCheck {
    use blindrelay_protocol::token::{now_secs, verify_eddsa_at};
    use subtle::ConstantTimeEq;
    Box::new(move |id, signature_key| {
        let token = id
            .token
            .as_deref()
            .ok_or("the credential carries no token")?;
        // The issuer names its key with any kid it likes; a member holds the public keys
        // only, so each is tried under the token's own kid.
        let kid = header_kid(token).ok_or("the token names no key (kid)")?;
        let mut claims = Err("no issuer key given".to_string());
        for k in &issuer_keys {
            claims = verify_eddsa_at(
                token,
                &[(kid.clone(), *k)],
                &CREDENTIAL_TOKEN_RULES,
                now_secs(),
            )
            .map_err(|e| format!("not an issuer's token: {e}"));
            if claims.is_ok() {
                break;
            }
        }
        let claims = claims?;
        if claims.sub != id.user {
            return Err(format!(
                "the token names user `{}`, the credential `{}`",
                claims.sub, id.user
            ));
        }
        if claims.call.as_ref().is_some_and(|c| *c != call) {
            return Err("the token is for another call".into());
        }
        let bound = claims
            .cnf
            .as_ref()
            .and_then(|c| c.ed25519_key())
            .ok_or("the token binds no Ed25519 key (cnf)")?;
        if !bool::from(bound.as_slice().ct_eq(signature_key)) {
            return Err("the credential's signature key is not the one the token binds".into());
        }
        Ok(())
    })
}

/// The `kid` of a JWT's header, read without checking anything.
fn header_kid(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v.get("kid")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roster::MemberIdentity;
    use blindrelay_protocol::token::{issue_eddsa, Claims, Cnf, Ed25519Secret};

    fn secret(b: u8) -> Ed25519Secret {
        Ed25519Secret::from_seed(&[b; 32])
    }

    fn token(
        issuer: &Ed25519Secret,
        kid: &str,
        user: &str,
        call: Option<&str>,
        cnf: Option<&[u8; 32]>,
    ) -> String {
        let mut c = Claims::new(
            user,
            "t",
            "user",
            call,
            blindrelay_protocol::token::now_secs(),
            std::time::Duration::from_secs(600),
        );
        c.cnf = cnf.map(Cnf::ed25519);
        issue_eddsa(issuer, kid, &c).expect("issue")
    }

    /// Only a token the issuer signed, naming the credential's user, for this call, whose
    /// cnf is the credential's signature key, passes; with any kid the issuer chose.
    #[test]
    fn credentials_must_carry_an_issuer_token_binding_their_key() {
        let issuer = secret(1);
        let relay = secret(2);
        let member = secret(3);
        let check = issuer_check(vec![*secret(9).public(), *issuer.public()], "c1".into());
        let id = |token: Option<String>| MemberIdentity {
            participant: "p-a".into(),
            user: "ann".into(),
            token,
        };
        let good = token(
            &issuer,
            "rotated-2026",
            "ann",
            Some("c1"),
            Some(member.public()),
        );
        assert_eq!(check(&id(Some(good.clone())), member.public()), Ok(()));
        let any_call = token(&issuer, &issuer.kid(), "ann", None, Some(member.public()));
        assert_eq!(check(&id(Some(any_call)), member.public()), Ok(()));
        let refused = [
            (id(None), *member.public(), "no token"),
            (
                id(Some(token(
                    &relay,
                    &issuer.kid(),
                    "ann",
                    Some("c1"),
                    Some(member.public()),
                ))),
                *member.public(),
                "signed by someone else",
            ),
            (
                id(Some(token(
                    &issuer,
                    "k",
                    "ben",
                    Some("c1"),
                    Some(member.public()),
                ))),
                *member.public(),
                "another user",
            ),
            (
                id(Some(token(
                    &issuer,
                    "k",
                    "ann",
                    Some("c2"),
                    Some(member.public()),
                ))),
                *member.public(),
                "another call",
            ),
            (
                id(Some(token(&issuer, "k", "ann", Some("c1"), None))),
                *member.public(),
                "no cnf",
            ),
            (
                id(Some(good)),
                *relay.public(),
                "a key the token does not bind",
            ),
        ];
        for (who, key, what) in refused {
            assert!(check(&who, &key).is_err(), "{what}");
        }
    }
}
