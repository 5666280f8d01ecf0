//! SFrame key schedule (RFC 9605 §4.4.2) and sender-key ratchet (§5.1).
//!
//! ```text
//! sframe_secret = HKDF-Extract("", base_key)
//! sframe_key    = HKDF-Expand(sframe_secret, "SFrame 1.0 Secret key "  + KID + suite, Nk)
//! sframe_salt   = HKDF-Expand(sframe_secret, "SFrame 1.0 Secret salt " + KID + suite, Nn)
//! base_key'     = HKDF-Expand(HKDF-Extract("", base_key), "SFrame 1.0 Ratchet", Nh)
//! ```
//! KID is 8 bytes big-endian, the suite 2 bytes big-endian. HKDF-Extract with an empty salt is
//! the same as with `Nh` zero bytes (HMAC zero-pads its key), which is what `hkdf` does for
//! `salt = None`.

use core::fmt;

use hkdf::Hkdf;
use sha2::{Sha256, Sha512};
use zeroize::Zeroizing;

use super::suite::{CipherSuite, HashAlg};

/// Nonce length of every RFC 9605 suite.
pub const NONCE_LEN: usize = 12;

const KEY_LABEL: &[u8] = b"SFrame 1.0 Secret key ";
const SALT_LABEL: &[u8] = b"SFrame 1.0 Secret salt ";
const RATCHET_LABEL: &[u8] = b"SFrame 1.0 Ratchet";

/// Secret bytes that are zeroed on drop and never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Copies `bytes` into a new secret buffer.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    fn zeroed(len: usize) -> Self {
        Self(Zeroizing::new(vec![0u8; len]))
    }

    /// The secret bytes. Named so that every read of key material is easy to grep for.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {}])", self.0.len())
    }
}

/// An HKDF instance keyed with a PRK, for whichever hash the suite uses.
enum Prk {
    Sha256(Hkdf<Sha256>),
    Sha512(Hkdf<Sha512>),
}

impl Prk {
    /// HKDF-Extract with an empty salt; returns the PRK bytes and the expander.
    fn extract(hash: HashAlg, ikm: &[u8]) -> (SecretBytes, Prk) {
        match hash {
            HashAlg::Sha256 => {
                let (prk, hk) = Hkdf::<Sha256>::extract(None, ikm);
                (SecretBytes::from_slice(&prk), Prk::Sha256(hk))
            }
            HashAlg::Sha512 => {
                let (prk, hk) = Hkdf::<Sha512>::extract(None, ikm);
                (SecretBytes::from_slice(&prk), Prk::Sha512(hk))
            }
        }
    }

    fn expand(&self, info: &[&[u8]], okm: &mut [u8]) {
        let res = match self {
            Prk::Sha256(hk) => hk.expand_multi_info(info, okm),
            Prk::Sha512(hk) => hk.expand_multi_info(info, okm),
        };
        // Invariant: every caller asks for at most 64 bytes (Nk <= 48, Nn = 12, Nh <= 64),
        // far below HKDF's limit of 255 * HashLen, the only error `expand` can return.
        res.expect("HKDF output length is at most 64 bytes");
    }
}

/// The per-KID AEAD key and salt derived from a base key.
#[derive(Clone)]
pub struct DerivedKey {
    key: SecretBytes,
    salt: Zeroizing<[u8; NONCE_LEN]>,
}

impl DerivedKey {
    /// `sframe_key` (`Nk` bytes).
    pub fn key(&self) -> &[u8] {
        self.key.expose_secret()
    }

    /// `sframe_salt` (`Nn` bytes).
    pub fn salt(&self) -> &[u8; NONCE_LEN] {
        &self.salt
    }
}

impl fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DerivedKey")
            .field("key", &self.key)
            .field("salt", &"[REDACTED]")
            .finish()
    }
}

/// `"SFrame 1.0 Secret key " || KID (8 bytes BE) || suite (2 bytes BE)`.
pub fn key_label(suite: CipherSuite, kid: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..22].copy_from_slice(KEY_LABEL);
    out[22..30].copy_from_slice(&kid.to_be_bytes());
    out[30..].copy_from_slice(&suite.id().to_be_bytes());
    out
}

/// `"SFrame 1.0 Secret salt " || KID (8 bytes BE) || suite (2 bytes BE)`.
pub fn salt_label(suite: CipherSuite, kid: u64) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[..23].copy_from_slice(SALT_LABEL);
    out[23..31].copy_from_slice(&kid.to_be_bytes());
    out[31..].copy_from_slice(&suite.id().to_be_bytes());
    out
}

/// `sframe_secret = HKDF-Extract("", base_key)` (exposed for test-vector checks).
pub fn sframe_secret(suite: CipherSuite, base_key: &[u8]) -> SecretBytes {
    Prk::extract(suite.hash(), base_key).0
}

/// Derives `sframe_key` and `sframe_salt` for `kid` (RFC 9605 §4.4.2).
///
/// Done once per key, not per frame: [`super::FrameKey`] caches the result together with the
/// expanded AES key schedule.
pub fn derive_key_salt(suite: CipherSuite, kid: u64, base_key: &[u8]) -> DerivedKey {
    let (_, prk) = Prk::extract(suite.hash(), base_key);
    let mut key = SecretBytes::zeroed(suite.nk());
    prk.expand(&[&key_label(suite, kid)], &mut key.0);
    let mut salt = Zeroizing::new([0u8; NONCE_LEN]);
    prk.expand(&[&salt_label(suite, kid)], &mut salt[..]);
    DerivedKey { key, salt }
}

/// One sender-key ratchet step (RFC 9605 §5.1):
/// `HKDF-Expand(HKDF-Extract("", base_key), "SFrame 1.0 Ratchet", Nh)`.
pub fn ratchet_base_key(suite: CipherSuite, base_key: &[u8]) -> SecretBytes {
    let (_, prk) = Prk::extract(suite.hash(), base_key);
    let mut next = SecretBytes::zeroed(suite.nh());
    prk.expand(&[RATCHET_LABEL], &mut next.0);
    next
}

/// `nonce = salt XOR CTR` with CTR encoded big-endian and left-padded to `Nn` bytes.
pub fn frame_nonce(salt: &[u8; NONCE_LEN], ctr: u64) -> [u8; NONCE_LEN] {
    let mut nonce = *salt;
    for (n, c) in nonce[NONCE_LEN - 8..].iter_mut().zip(ctr.to_be_bytes()) {
        *n ^= c;
    }
    nonce
}
