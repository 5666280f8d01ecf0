//! Tokens: who a user is, in which tenant, with which role, for which call, until when.
//!
//! Two kinds of signature carry the same [`Claims`]:
//!
//! - **HS256** under the relay's own secret (`blindrelay::token`): the development default.
//!   Whoever runs the relay can mint any identity with it.
//! - **EdDSA (Ed25519)** signed by an *issuer* whose public key the relay and the clients
//!   are given ([`issue_eddsa`], [`verify_eddsa_at`]). The relay can verify these tokens but
//!   not mint them, and a client can check an identity without trusting the relay.
//!
//! Key files are PEM: PKCS#8 for the private key (`-----BEGIN PRIVATE KEY-----`, as
//! `openssl genpkey -algorithm ed25519` writes it) and SPKI for the public key
//! (`-----BEGIN PUBLIC KEY-----`). A key is named by its RFC 7638 JWK thumbprint
//! ([`kid_of`]), which is also the default `kid` of the tokens it signs.
//!
//! A token may carry a `cnf` claim (RFC 7800, [`Cnf`]) holding the Ed25519 public key of
//! the client it was issued to, so a client's MLS signature key can be bound to the issuer's
//! word about who it is.

use crate::signal::ErrorCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use zeroize::Zeroizing;

/// Token roles. Bots are the recording / captions / transcription services that an E2EE
/// call refuses.
pub const ROLES: [&str; 4] = ["user", "bot:recording", "bot:captions", "bot:transcription"];

/// Longest identifier (`sub`, `tenant`) a token may carry, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Longest `kid` accepted, in bytes (a thumbprint is 43).
pub const MAX_KID_BYTES: usize = 256;

/// Default longest token lifetime (`auth.max_ttl`).
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The claims of every token, HS256 or EdDSA. The JSON field names are the interface.
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
    /// Proof-of-possession key (RFC 7800): the key the holder signs with. The relay ignores
    /// it; clients compare it with the MLS signature key of the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Cnf>,
}

impl Claims {
    /// Claims issued at `iat` (Unix seconds) for `ttl`; `exp` saturates instead of
    /// overflowing. No `nbf`, no `cnf`.
    pub fn new(
        sub: &str,
        tenant: &str,
        role: &str,
        call: Option<&str>,
        iat: u64,
        ttl: Duration,
    ) -> Claims {
        Claims {
            sub: sub.to_string(),
            tenant: tenant.to_string(),
            role: role.to_string(),
            call: call.map(str::to_string),
            exp: iat.saturating_add(ttl.as_secs()),
            iat,
            nbf: None,
            cnf: None,
        }
    }

    pub fn is_bot(&self) -> bool {
        self.role.starts_with("bot:")
    }
}

/// The `cnf` claim (RFC 7800 section 3.2): `{"jwk": {...}}`. Other confirmation methods
/// parse (the relay lets them through) but carry no key here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cnf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwk: Option<CnfJwk>,
}

/// A public JWK as `cnf` carries it. Only what an Ed25519 key needs is read; other
/// members are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CnfJwk {
    pub kty: String,
    #[serde(default)]
    pub crv: String,
    /// The raw public key, base64url without padding (RFC 8037).
    #[serde(default)]
    pub x: String,
}

impl Cnf {
    /// `{"jwk":{"kty":"OKP","crv":"Ed25519","x":"<base64url of public>"}}`.
    pub fn ed25519(public: &[u8; 32]) -> Cnf {
        Cnf {
            jwk: Some(CnfJwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: URL_SAFE_NO_PAD.encode(public),
            }),
        }
    }

    /// The Ed25519 public key this `cnf` names, if it names one (an OKP JWK on Ed25519
    /// whose `x` is 32 bytes of base64url).
    pub fn ed25519_key(&self) -> Option<[u8; 32]> {
        let jwk = self.jwk.as_ref()?;
        if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
            return None;
        }
        URL_SAFE_NO_PAD.decode(&jwk.x).ok()?.try_into().ok()
    }
}

/// What a token must satisfy besides a good signature.
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
    /// The header's `alg` is not the one this verifier takes (e.g. HS256 where only
    /// issuer-signed EdDSA tokens are accepted).
    #[error("token algorithm {0} is not accepted here (only {1})")]
    WrongAlgorithm(String, &'static str),
    #[error("token has no kid: an issuer-signed token names its key")]
    MissingKid,
    /// No configured issuer key has this `kid` (shown shortened).
    #[error("token signed by an unknown issuer key (kid `{0}`)")]
    UnknownKid(String),
}

impl TokenError {
    pub fn code(&self) -> ErrorCode {
        match self {
            TokenError::Expired => ErrorCode::TokenExpired,
            _ => ErrorCode::Unauthorized,
        }
    }
}

/// Why a key file or key cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not a PKCS#8 Ed25519 private key (\"-----BEGIN PRIVATE KEY-----\"): {0}")]
    Private(String),
    #[error("not an SPKI Ed25519 public key (\"-----BEGIN PUBLIC KEY-----\"): {0}")]
    Public(String),
    /// A small-order point: any signature would verify under it.
    #[error("weak Ed25519 public key (small order); refusing it")]
    Weak,
    #[error("cannot get randomness for a new key: {0}")]
    Random(String),
    #[error("cannot encode the key as PEM: {0}")]
    Encode(String),
}

/// An Ed25519 private key: the 32-byte seed (zeroized on drop) and its public key.
pub struct Ed25519Secret {
    seed: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl Ed25519Secret {
    /// The key with this seed (RFC 8032 private key).
    pub fn from_seed(seed: &[u8; 32]) -> Ed25519Secret {
        let public = SigningKey::from_bytes(seed).verifying_key().to_bytes();
        Ed25519Secret {
            seed: Zeroizing::new(*seed),
            public,
        }
    }

    /// The 32-byte seed, e.g. for an MLS signature key pair. Never log it.
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// The public key's thumbprint ([`kid_of`]).
    pub fn kid(&self) -> String {
        kid_of(&self.public)
    }

    /// Ed25519 signature of `msg` (RFC 8032).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        SigningKey::from_bytes(&self.seed).sign(msg).to_bytes()
    }
}

impl std::fmt::Debug for Ed25519Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ed25519Secret")
            .field("seed", &"<redacted>")
            .field("kid", &self.kid())
            .finish()
    }
}

/// A new Ed25519 key pair from the OS's CSPRNG: the private key as PKCS#8 PEM (v1, as
/// OpenSSL writes it) and the public key as SPKI PEM.
pub fn generate_ed25519() -> Result<(Zeroizing<String>, String), KeyError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).map_err(|e| KeyError::Random(e.to_string()))?;
    let secret = Ed25519Secret::from_seed(&seed);
    Ok((private_pem(&secret)?, public_pem(secret.public())?))
}

/// `secret` as a PKCS#8 (v1) PEM private key.
pub fn private_pem(secret: &Ed25519Secret) -> Result<Zeroizing<String>, KeyError> {
    let bytes = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: *secret.seed(),
        public_key: None,
    };
    bytes
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Encode(e.to_string()))
}

/// `public` as an SPKI PEM public key.
pub fn public_pem(public: &[u8; 32]) -> Result<String, KeyError> {
    VerifyingKey::from_bytes(public)
        .map_err(|e| KeyError::Public(e.to_string()))?
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::Encode(e.to_string()))
}

/// Read a PKCS#8 PEM Ed25519 private key (v1, or v2 whose public key must match).
pub fn read_ed25519_private(pem: &str) -> Result<Ed25519Secret, KeyError> {
    let key =
        SigningKey::from_pkcs8_pem(pem.trim()).map_err(|e| KeyError::Private(e.to_string()))?;
    Ok(Ed25519Secret::from_seed(&key.to_bytes()))
}

/// Read an SPKI PEM Ed25519 public key. Small-order (weak) keys are refused.
pub fn read_ed25519_public(pem: &str) -> Result<[u8; 32], KeyError> {
    let key = VerifyingKey::from_public_key_pem(pem.trim())
        .map_err(|e| KeyError::Public(e.to_string()))?;
    if key.is_weak() {
        return Err(KeyError::Weak);
    }
    Ok(key.to_bytes())
}

/// The RFC 7638 JWK thumbprint of an Ed25519 public key (RFC 8037 section 2): base64url of
/// the SHA-256 of `{"crv":"Ed25519","kty":"OKP","x":"<base64url key>"}`.
pub fn kid_of(public: &[u8; 32]) -> String {
    let jwk = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()))
}

/// Seconds since the Unix epoch by the system clock (0 if it is before 1970).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sign `claims` as an EdDSA JWT whose header names `kid`. The role must be one of
/// [`ROLES`]; nothing else is checked (the verifier does that).
pub fn issue_eddsa(
    private: &Ed25519Secret,
    kid: &str,
    claims: &Claims,
) -> Result<String, TokenError> {
    if !ROLES.contains(&claims.role.as_str()) {
        return Err(TokenError::BadRole(claims.role.clone()));
    }
    if kid.is_empty() || kid.len() > MAX_KID_BYTES {
        return Err(TokenError::Invalid(format!(
            "kid must be 1 to {MAX_KID_BYTES} bytes"
        )));
    }
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_string());
    let signing_input = format!("{}.{}", b64_json(&header)?, b64_json(claims)?);
    let signature = private.sign(signing_input.as_bytes());
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// base64url (no padding) of `v`'s JSON: one part of a compact JWS.
fn b64_json<T: Serialize>(v: &T) -> Result<String, TokenError> {
    serde_json::to_vec(v)
        .map(|b| URL_SAFE_NO_PAD.encode(b))
        .map_err(|e| TokenError::Invalid(e.to_string()))
}

/// Check an issuer-signed token at `now_unix` (seconds). Only `alg: EdDSA` is accepted
/// (HS256, `none` and every other algorithm are refused, so a public key can never be
/// used as an HMAC secret); the key is the one in `keys` whose kid is the header's `kid`.
/// Then the same checks as HS256 tokens: `exp`, `nbf`, lifetime against `rules.max_ttl`,
/// role, subject and tenant ([`check_claims`]). `cnf` is returned as it came. Reads no
/// clock.
pub fn verify_eddsa_at(
    token: &str,
    keys: &[(String, [u8; 32])],
    rules: &TokenRules,
    now_unix: u64,
) -> Result<Claims, TokenError> {
    let header = decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::WrongAlgorithm(
            format!("{:?}", header.alg),
            "EdDSA",
        ));
    }
    let kid = header.kid.ok_or(TokenError::MissingKid)?;
    // Kids and keys are public: a plain comparison leaks nothing.
    let Some((_, public)) = keys.iter().find(|(k, _)| *k == kid) else {
        return Err(TokenError::UnknownKid(shorten(&kid)));
    };
    let weak = VerifyingKey::from_bytes(public).map_or(true, |k| k.is_weak());
    if weak {
        return Err(TokenError::Invalid(format!(
            "issuer key `{}` is not a usable Ed25519 key",
            shorten(&kid)
        )));
    }
    let mut v = Validation::new(Algorithm::EdDSA);
    // Time is checked below against `now_unix`, never against the system clock.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.leeway = 0;
    v.set_required_spec_claims(&["exp", "sub"]);
    let claims = decode::<Claims>(token, &DecodingKey::from_ed_der(public), &v)
        .map_err(|e| TokenError::Invalid(e.to_string()))?
        .claims;
    check_claims(claims, rules, now_unix)
}

/// A kid from a token, cut to 64 bytes (on a char boundary) for error messages.
fn shorten(kid: &str) -> String {
    let mut end = kid.len().min(64);
    while !kid.is_char_boundary(end) {
        end -= 1;
    }
    kid[..end].to_string()
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

/// The checks after the signature, shared by HS256 and EdDSA tokens: `exp`, `nbf`,
/// lifetime against `rules.max_ttl`, role, subject and tenant, at `now_unix`.
pub fn check_claims(
    claims: Claims,
    rules: &TokenRules,
    now_unix: u64,
) -> Result<Claims, TokenError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;

    /// A virtual "now", far from the real clock, so no test depends on it.
    const NOW: u64 = 1_000_000_000;

    /// A key pair written by `openssl genpkey -algorithm ed25519` and
    /// `openssl pkey -pubout` (OpenSSL 3.0), with the seed and public key `openssl pkey
    /// -text` printed for it.
    const OPENSSL_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIGWxhPA+g9IU9UTG8tNxMnohk7AfrcC/kWPy9gsYRa2U
-----END PRIVATE KEY-----
";
    const OPENSSL_PUB: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAHWvjApVzmlu7ZJtY2W7pw9lNymhXOz+VGaf3B+xnfhY=
-----END PUBLIC KEY-----
";
    const OPENSSL_SEED: &str = "65b184f03e83d214f544c6f2d371327a2193b01fadc0bf9163f2f60b1845ad94";
    const OPENSSL_PUBLIC: &str = "1d6be30295739a5bbb649b58d96ee9c3d94dca68573b3f9519a7f707ec677e16";

    fn rules(leeway: u64, max_ttl: u64) -> TokenRules {
        TokenRules {
            leeway: Duration::from_secs(leeway),
            max_ttl: Duration::from_secs(max_ttl),
        }
    }

    fn claims() -> Claims {
        Claims::new(
            "alice",
            "t1",
            "user",
            Some("demo"),
            NOW,
            Duration::from_secs(600),
        )
    }

    fn fresh() -> Ed25519Secret {
        let (private, _) = generate_ed25519().expect("the OS has randomness");
        read_ed25519_private(&private).expect("a generated key reads back")
    }

    fn keys(secret: &Ed25519Secret) -> Vec<(String, [u8; 32])> {
        vec![(secret.kid(), *secret.public())]
    }

    fn hex32(s: &str) -> [u8; 32] {
        let v: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex literal"))
            .collect();
        v.try_into().expect("32 bytes")
    }

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).expect("base64url literal")
    }

    #[test]
    fn thumbprint_matches_rfc_8037_appendix_a3() {
        let x: [u8; 32] = b64("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .try_into()
            .expect("32 bytes");
        assert_eq!(kid_of(&x), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn signature_matches_rfc_8037_appendix_a4() {
        // A.1's private key; A.4 signs "Example of Ed25519 signing" under {"alg":"EdDSA"}.
        let d: [u8; 32] = b64("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .try_into()
            .expect("32 bytes");
        let secret = Ed25519Secret::from_seed(&d);
        assert_eq!(
            URL_SAFE_NO_PAD.encode(secret.public()),
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        let sig = secret.sign(b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc");
        assert_eq!(
            URL_SAFE_NO_PAD.encode(sig),
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
        assert!(!format!("{secret:?}").contains(&format!("{:?}", secret.seed())));
    }

    #[test]
    fn openssl_key_files_read() {
        let secret = read_ed25519_private(OPENSSL_KEY).expect("OpenSSL private key");
        assert_eq!(secret.seed(), &hex32(OPENSSL_SEED));
        assert_eq!(secret.public(), &hex32(OPENSSL_PUBLIC));
        assert_eq!(read_ed25519_public(OPENSSL_PUB), Ok(hex32(OPENSSL_PUBLIC)));
        // Written back, byte for byte what OpenSSL wrote: the same file format.
        assert_eq!(private_pem(&secret).expect("encodes").as_str(), OPENSSL_KEY);
        assert_eq!(public_pem(secret.public()).expect("encodes"), OPENSSL_PUB);
    }

    #[test]
    fn generated_keys_are_pem_and_read_back() {
        let (private, public) = generate_ed25519().expect("randomness");
        assert!(
            private.starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "{}",
            public
        );
        assert!(
            public.starts_with("-----BEGIN PUBLIC KEY-----\n"),
            "{public}"
        );
        let secret = read_ed25519_private(&private).expect("reads");
        assert_eq!(read_ed25519_public(&public), Ok(*secret.public()));
        let (other, _) = generate_ed25519().expect("randomness");
        assert_ne!(*private, *other, "two keys from the CSPRNG are equal");
    }

    #[test]
    fn bad_key_files_are_typed_errors() {
        assert!(matches!(
            read_ed25519_private(""),
            Err(KeyError::Private(_))
        ));
        assert!(matches!(
            read_ed25519_private(OPENSSL_PUB),
            Err(KeyError::Private(_))
        ));
        assert!(matches!(
            read_ed25519_public(OPENSSL_KEY),
            Err(KeyError::Public(_))
        ));
        assert!(matches!(
            read_ed25519_public(
                "-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n"
            ),
            Err(KeyError::Public(_))
        ));
        // A P-256 public key from `openssl pkey -pubout`: SPKI, but not Ed25519.
        let p256 = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE7D18Rkw1qle7yjUGs2VQtWUQXpbq
jDHEM3SrXTkdjudXtSktizsCXbbXpXZKd8WbOfIB9+aO8TYe1VTR9ZoAGg==
-----END PUBLIC KEY-----
";
        assert!(matches!(
            read_ed25519_public(p256),
            Err(KeyError::Public(_))
        ));
        // The identity point (small order): any signature verifies under it.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let pem = public_pem(&identity).expect("encodes");
        assert_eq!(read_ed25519_public(&pem), Err(KeyError::Weak));
    }

    #[test]
    fn eddsa_round_trip() {
        let issuer = fresh();
        let t = issue_eddsa(&issuer, &issuer.kid(), &claims()).expect("issues");
        let header = decode_header(&t).expect("header");
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(issuer.kid().as_str()));
        let c = verify_eddsa_at(&t, &keys(&issuer), &rules(5, 3600), NOW).expect("verifies");
        assert_eq!(c, claims());
        // The checks HS256 tokens get apply: expiry at the virtual clock.
        assert_eq!(
            verify_eddsa_at(&t, &keys(&issuer), &rules(5, 3600), NOW + 606),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_eddsa_at(&t, &keys(&issuer), &rules(5, 300), NOW),
            Err(TokenError::TtlTooLong)
        );
        let mut admin = claims();
        admin.role = "admin".into();
        assert_eq!(
            issue_eddsa(&issuer, "k", &admin),
            Err(TokenError::BadRole("admin".into()))
        );
    }

    #[test]
    fn a_token_jsonwebtoken_signs_verifies() {
        // Interop: jsonwebtoken's own EdDSA signer, fed the PKCS#8 key, makes a token this
        // module accepts, and this module's tokens match its wire format.
        let secret = read_ed25519_private(OPENSSL_KEY).expect("reads");
        let der = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: *secret.seed(),
            public_key: None,
        }
        .to_pkcs8_der()
        .expect("encodes");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
        let t = jsonwebtoken::encode(
            &header,
            &claims(),
            &EncodingKey::from_ed_der(der.as_bytes()),
        )
        .expect("jsonwebtoken signs");
        let keys = vec![("k1".to_string(), *secret.public())];
        assert_eq!(
            verify_eddsa_at(&t, &keys, &rules(5, 3600), NOW),
            Ok(claims())
        );
    }

    #[test]
    fn wrong_key_and_unknown_kid_are_refused() {
        let issuer = fresh();
        let mallory = fresh();
        // Mallory signs under the issuer's kid.
        let forged = issue_eddsa(&mallory, &issuer.kid(), &claims()).expect("issues");
        let e = verify_eddsa_at(&forged, &keys(&issuer), &rules(5, 3600), NOW).unwrap_err();
        assert!(matches!(e, TokenError::Invalid(_)), "{e:?}");
        assert_eq!(e.code(), ErrorCode::Unauthorized);
        // Mallory's own kid is not configured.
        let own = issue_eddsa(&mallory, &mallory.kid(), &claims()).expect("issues");
        assert_eq!(
            verify_eddsa_at(&own, &keys(&issuer), &rules(5, 3600), NOW),
            Err(TokenError::UnknownKid(mallory.kid()))
        );
        // A long kid is shortened in the error, not echoed whole.
        let long = "k".repeat(200);
        let t = issue_eddsa(&mallory, &long, &claims()).expect("issues");
        let e = verify_eddsa_at(&t, &keys(&issuer), &rules(5, 3600), NOW).unwrap_err();
        assert_eq!(e, TokenError::UnknownKid("k".repeat(64)));
        // A tampered payload fails the signature.
        let good = issue_eddsa(&issuer, &issuer.kid(), &claims()).expect("issues");
        let parts: Vec<&str> = good.split('.').collect();
        let mut evil = claims();
        evil.sub = "mallory".into();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64_json(&evil).expect("json"),
            parts[2]
        );
        assert!(matches!(
            verify_eddsa_at(&tampered, &keys(&issuer), &rules(5, 3600), NOW),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn rotation_picks_the_key_by_kid() {
        let old = fresh();
        let new = fresh();
        let both = vec![
            (old.kid(), *old.public()),
            ("2026".to_string(), *new.public()),
        ];
        for (key, kid) in [(&old, old.kid()), (&new, "2026".to_string())] {
            let t = issue_eddsa(key, &kid, &claims()).expect("issues");
            assert_eq!(
                verify_eddsa_at(&t, &both, &rules(5, 3600), NOW),
                Ok(claims())
            );
        }
        // The new key under the old kid: the old key is tried, and fails.
        let t = issue_eddsa(&new, &old.kid(), &claims()).expect("issues");
        assert!(matches!(
            verify_eddsa_at(&t, &both, &rules(5, 3600), NOW),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn alg_confusion_is_refused() {
        let issuer = fresh();
        let keys = keys(&issuer);
        // HS256 whose HMAC secret is the issuer's public key (bytes, and as PEM).
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(issuer.kid());
        let pem = public_pem(issuer.public()).expect("encodes");
        for secret in [issuer.public().as_slice(), pem.as_bytes()] {
            let t = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret))
                .expect("encodes");
            assert_eq!(
                verify_eddsa_at(&t, &keys, &rules(5, 3600), NOW),
                Err(TokenError::WrongAlgorithm("HS256".into(), "EdDSA"))
            );
        }
        // `alg: none` (any spelling) and other algorithms, unsigned or not.
        let payload = b64_json(&claims()).expect("json");
        for alg in [
            "none", "None", "NONE", "HS384", "ES256", "RS256", "eddsa", "",
        ] {
            let h = URL_SAFE_NO_PAD.encode(format!(
                r#"{{"alg":"{alg}","typ":"JWT","kid":"{}"}}"#,
                issuer.kid()
            ));
            for sig in ["", "AAAA"] {
                let t = format!("{h}.{payload}.{sig}");
                let e = verify_eddsa_at(&t, &keys, &rules(5, 3600), NOW).unwrap_err();
                assert!(
                    matches!(e, TokenError::Invalid(_) | TokenError::WrongAlgorithm(..)),
                    "{alg}: {e:?}"
                );
            }
        }
        // EdDSA without a kid.
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","typ":"JWT"}"#);
        let input = format!("{h}.{payload}");
        let sig = URL_SAFE_NO_PAD.encode(issuer.sign(input.as_bytes()));
        assert_eq!(
            verify_eddsa_at(&format!("{input}.{sig}"), &keys, &rules(5, 3600), NOW),
            Err(TokenError::MissingKid)
        );
        // Garbage is a typed error, not a panic.
        for t in [
            "",
            ".",
            "..",
            "a.b.c",
            "not a token",
            "\u{1F600}.\u{1F600}.x",
        ] {
            assert!(
                verify_eddsa_at(t, &keys, &rules(5, 3600), NOW).is_err(),
                "{t}"
            );
        }
    }

    #[test]
    fn weak_configured_key_is_refused() {
        let mallory = fresh();
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let t = issue_eddsa(&mallory, "weak", &claims()).expect("issues");
        let e =
            verify_eddsa_at(&t, &[("weak".into(), identity)], &rules(5, 3600), NOW).unwrap_err();
        assert!(matches!(e, TokenError::Invalid(_)), "{e:?}");
    }

    #[test]
    fn cnf_round_trip() {
        let issuer = fresh();
        let client = fresh();
        let mut c = claims();
        c.cnf = Some(Cnf::ed25519(client.public()));
        let t = issue_eddsa(&issuer, &issuer.kid(), &c).expect("issues");
        // On the wire, as RFC 7800 and RFC 8037 spell it.
        let payload = t.split('.').nth(1).expect("three parts");
        let json: serde_json::Value =
            serde_json::from_slice(&b64(payload)).expect("claims are JSON");
        assert_eq!(
            json["cnf"],
            serde_json::json!({"jwk": {"kty": "OKP", "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(client.public())}})
        );
        let back = verify_eddsa_at(&t, &keys(&issuer), &rules(5, 3600), NOW).expect("verifies");
        assert_eq!(back, c);
        assert_eq!(
            back.cnf.as_ref().and_then(Cnf::ed25519_key),
            Some(*client.public())
        );
        // A token without cnf has none, and serializes without the field.
        let plain = b64_json(&claims()).expect("json");
        assert!(!String::from_utf8_lossy(&b64(&plain)).contains("cnf"));
    }

    #[test]
    fn cnf_that_names_no_ed25519_key_parses_and_yields_none() {
        for cnf in [
            serde_json::json!({"jkt": "abc"}),
            serde_json::json!({"jwk": {"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}}),
            serde_json::json!({"jwk": {"kty": "OKP", "crv": "X25519", "x": URL_SAFE_NO_PAD.encode([1u8; 32])}}),
            serde_json::json!({"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "c2hvcnQ"}}),
            serde_json::json!({"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "not base64!"}}),
        ] {
            let mut raw = serde_json::to_value(claims()).expect("json");
            raw["cnf"] = cnf.clone();
            let c: Claims = serde_json::from_value(raw).expect("parses");
            let got = c.cnf.as_ref().and_then(Cnf::ed25519_key);
            assert_eq!(got, None, "{cnf}");
        }
    }

    #[test]
    fn claim_checks_are_shared() {
        let mut c = claims();
        c.nbf = Some(NOW + 60);
        assert_eq!(
            check_claims(c.clone(), &rules(5, 3600), NOW),
            Err(TokenError::NotYetValid)
        );
        c.nbf = None;
        c.sub = String::new();
        assert!(matches!(
            check_claims(c.clone(), &rules(5, 3600), NOW),
            Err(TokenError::BadSubject(_))
        ));
        c.sub = "a".into();
        c.tenant = "t".repeat(MAX_ID_BYTES + 1);
        assert!(matches!(
            check_claims(c, &rules(5, 3600), NOW),
            Err(TokenError::BadTenant(_))
        ));
        let c = Claims::new("a", "t", "user", None, u64::MAX - 1, Duration::MAX);
        assert_eq!(c.exp, u64::MAX);
    }
}
