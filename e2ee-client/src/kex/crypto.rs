//! Hashing, key derivation and key generation for the key agreement.
//!
//! Kept apart from the state machine so the byte-level format (what exactly is hashed)
//! is in one place and easy to audit or re-implement.

use std::convert::Infallible;
use std::fmt;

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use x25519_dalek::rand_core::{TryCryptoRng, TryRng};
use x25519_dalek::{EphemeralSecret, PublicKey};

use super::code::VerificationCode;
use super::{KexError, Role};

/// Domain-separation prefix of the commitment hash.
pub(crate) const COMMIT_LABEL: &[u8] = b"blindrelay-e2ee-v1 commit";
/// Domain-separation prefix of the transcript hash.
pub(crate) const TRANSCRIPT_LABEL: &[u8] = b"blindrelay-e2ee-v1 transcript";
/// HKDF info for the initiator-to-responder 16-byte key.
pub(crate) const I2R_LABEL: &[u8] = b"blindrelay-e2ee-v1 sframe i2r";
/// HKDF info for the responder-to-initiator 16-byte key.
pub(crate) const R2I_LABEL: &[u8] = b"blindrelay-e2ee-v1 sframe r2i";
/// HKDF info for the initiator-to-responder 32-byte key.
pub(crate) const I2R_LABEL_256: &[u8] = b"blindrelay-e2ee-v1 sframe-256 i2r";
/// HKDF info for the responder-to-initiator 32-byte key.
pub(crate) const R2I_LABEL_256: &[u8] = b"blindrelay-e2ee-v1 sframe-256 r2i";
/// HKDF info for the verification code.
pub(crate) const CODE_LABEL: &[u8] = b"blindrelay-e2ee-v1 verification code";

/// Length of X25519 public keys and SHA-256 hashes on the wire.
pub(crate) const KEY_LEN: usize = 32;

/// Length of the SFrame base keys to derive; must match the SFrame cipher suite.
///
/// Each length uses its own HKDF labels: HKDF-Expand with the same info but a longer
/// output returns a *prefix-extended* key, so without distinct labels the AES-128 key
/// would be the first half of the AES-256 key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BaseKeyLength {
    /// 16 bytes, for `AES_128_GCM_SHA256_128` (the default SFrame suite).
    #[default]
    Aes128,
    /// 32 bytes, for `AES_256_GCM_SHA512_128`-style suites.
    Aes256,
}

impl BaseKeyLength {
    /// The key length in bytes.
    pub fn bytes(self) -> usize {
        match self {
            Self::Aes128 => 16,
            Self::Aes256 => 32,
        }
    }

    fn labels(self) -> (&'static [u8], &'static [u8]) {
        match self {
            Self::Aes128 => (I2R_LABEL, R2I_LABEL),
            Self::Aes256 => (I2R_LABEL_256, R2I_LABEL_256),
        }
    }
}

/// An SFrame base key. `Debug` never prints the bytes; equality is constant time.
#[derive(Clone)]
pub struct SframeBaseKey {
    bytes: Vec<u8>,
}

impl SframeBaseKey {
    /// The raw key bytes, to hand to the SFrame layer.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for SframeBaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SframeBaseKey(<redacted {} bytes>)", self.bytes.len())
    }
}

impl ConstantTimeEq for SframeBaseKey {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.bytes.as_slice().ct_eq(other.bytes.as_slice())
    }
}

impl PartialEq for SframeBaseKey {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for SframeBaseKey {}

impl Drop for SframeBaseKey {
    /// Best-effort wipe (no `zeroize` dependency in the workspace); `black_box` keeps the
    /// optimiser from discarding the dead store.
    fn drop(&mut self) {
        self.bytes.fill(0);
        std::hint::black_box(&self.bytes);
    }
}

/// The result of a successful key agreement.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// Base key for media we send (our SFrame encryption key).
    pub send_key: SframeBaseKey,
    /// Base key for media we receive (the peer's SFrame encryption key).
    pub recv_key: SframeBaseKey,
    /// Code both users compare out of band to rule out a man in the middle.
    pub verification_code: VerificationCode,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field("send_key", &self.send_key)
            .field("recv_key", &self.recv_key)
            .field("verification_code", &self.verification_code)
            .finish()
    }
}

/// `len(call_id) || call_id || len(initiator_id) || initiator_id || len(responder_id) ||
/// responder_id`, each length a big-endian u16. Computed once and shared by the
/// commitment and the transcript so both bind the same identities.
pub(crate) fn encode_context(
    call_id: &str,
    initiator_id: &str,
    responder_id: &str,
) -> Result<Vec<u8>, KexError> {
    let mut out = Vec::with_capacity(6 + call_id.len() + initiator_id.len() + responder_id.len());
    for (field, value) in [
        ("call_id", call_id),
        ("initiator_id", initiator_id),
        ("responder_id", responder_id),
    ] {
        let len = u16::try_from(value.len()).map_err(|_| KexError::FieldTooLong {
            field,
            len: value.len(),
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    Ok(out)
}

/// `SHA-256(COMMIT_LABEL || context || pk_i)`.
pub(crate) fn commit_hash(context: &[u8], pk_i: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    Sha256::new()
        .chain_update(COMMIT_LABEL)
        .chain_update(context)
        .chain_update(pk_i)
        .finalize()
        .into()
}

/// `SHA-256(TRANSCRIPT_LABEL || context || commit || pk_r || pk_i)`; the trailing fields
/// are fixed-length, so no prefixes are needed for unambiguity.
pub(crate) fn transcript_hash(
    context: &[u8],
    commit: &[u8; KEY_LEN],
    pk_r: &[u8; KEY_LEN],
    pk_i: &[u8; KEY_LEN],
) -> [u8; KEY_LEN] {
    Sha256::new()
        .chain_update(TRANSCRIPT_LABEL)
        .chain_update(context)
        .chain_update(commit)
        .chain_update(pk_r)
        .chain_update(pk_i)
        .finalize()
        .into()
}

/// Runs X25519 and derives the session keys for `role`.
///
/// Consumes the secret so it is wiped (by `x25519-dalek`) right after use.
pub(crate) fn derive_session_keys(
    secret: EphemeralSecret,
    peer_public: &[u8; KEY_LEN],
    transcript: &[u8; KEY_LEN],
    role: Role,
    key_length: BaseKeyLength,
) -> Result<SessionKeys, KexError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer_public));
    // An all-zero result means the peer chose a low-order point and the "shared" secret
    // is public knowledge; the check is constant time.
    if !shared.was_contributory() {
        return Err(KexError::LowOrderPublicKey);
    }
    let hkdf = Hkdf::<Sha256>::new(Some(transcript), shared.as_bytes());

    let (i2r_label, r2i_label) = key_length.labels();
    let expand = |info: &[u8]| -> Result<SframeBaseKey, KexError> {
        let mut bytes = vec![0u8; key_length.bytes()];
        hkdf.expand(info, &mut bytes)
            .map_err(|_| KexError::KeyDerivation)?;
        Ok(SframeBaseKey { bytes })
    };
    let i2r = expand(i2r_label)?;
    let r2i = expand(r2i_label)?;

    let mut code = [0u8; 16];
    hkdf.expand(CODE_LABEL, &mut code)
        .map_err(|_| KexError::KeyDerivation)?;
    let verification_code = VerificationCode::from_okm(code);

    let (send_key, recv_key) = match role {
        Role::Initiator => (i2r, r2i),
        Role::Responder => (r2i, i2r),
    };
    Ok(SessionKeys {
        send_key,
        recv_key,
        verification_code,
    })
}

/// Creates an ephemeral key pair from 32 OS-random bytes.
///
/// Uses `getrandom` 0.3 directly (not `EphemeralSecret::random`, which panics on RNG
/// failure) so a broken RNG becomes a typed error.
pub(crate) fn generate_keypair() -> Result<(EphemeralSecret, [u8; KEY_LEN]), KexError> {
    let mut seed = [0u8; KEY_LEN];
    getrandom::fill(&mut seed).map_err(|_| KexError::Rng)?;
    Ok(keypair_from_seed(seed))
}

/// Turns 32 secret bytes into an `EphemeralSecret` (whose scalar is exactly those bytes)
/// and its public key. Also the hook for deterministic unit tests.
pub(crate) fn keypair_from_seed(seed: [u8; KEY_LEN]) -> (EphemeralSecret, [u8; KEY_LEN]) {
    let mut rng = SeedRng { seed, offset: 0 };
    let secret = EphemeralSecret::random_from_rng(&mut rng);
    let public = PublicKey::from(&secret).to_bytes();
    (secret, public)
}

/// Hands out a 32-byte seed to `EphemeralSecret::random_from_rng`, which reads exactly
/// 32 bytes. `x25519-dalek` wants a `rand_core` 0.10 RNG and offers no other way to
/// build an `EphemeralSecret`, so this adapter bridges from `getrandom` 0.3. Should more
/// bytes ever be requested, it continues with `SHA-256(seed || counter)` blocks rather
/// than repeating or returning zeros.
struct SeedRng {
    seed: [u8; KEY_LEN],
    offset: usize,
}

impl TryRng for SeedRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut buf = [0u8; 4];
        self.try_fill_bytes(&mut buf)?;
        Ok(u32::from_le_bytes(buf))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut buf = [0u8; 8];
        self.try_fill_bytes(&mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for byte in dst.iter_mut() {
            let block_index = self.offset / KEY_LEN;
            let within = self.offset % KEY_LEN;
            *byte = if block_index == 0 {
                self.seed[within]
            } else {
                let block: [u8; KEY_LEN] = Sha256::new()
                    .chain_update(self.seed)
                    .chain_update((block_index as u64).to_be_bytes())
                    .finalize()
                    .into();
                block[within]
            };
            self.offset += 1;
        }
        Ok(())
    }
}

impl TryCryptoRng for SeedRng {}

impl Drop for SeedRng {
    fn drop(&mut self) {
        self.seed.fill(0);
        std::hint::black_box(&self.seed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_secret_is_exactly_the_seed() {
        let seed = [7u8; 32];
        let (_, public) = keypair_from_seed(seed);
        assert_eq!(
            public,
            x25519_dalek::x25519(seed, x25519_dalek::X25519_BASEPOINT_BYTES)
        );
    }

    #[test]
    fn seed_rng_continues_past_the_seed() {
        let mut rng = SeedRng {
            seed: [1; 32],
            offset: 0,
        };
        let mut buf = [0u8; 96];
        let _ = rng.try_fill_bytes(&mut buf);
        assert_eq!(&buf[..32], &[1; 32]);
        assert_ne!(&buf[32..64], &[1; 32]);
        assert_ne!(&buf[32..64], &buf[64..96]);
    }

    #[test]
    fn context_rejects_overlong_fields() {
        let long = "x".repeat(65_536);
        assert_eq!(
            encode_context("c", &long, "b"),
            Err(KexError::FieldTooLong {
                field: "initiator_id",
                len: 65_536
            })
        );
        assert!(encode_context(&"x".repeat(65_535), "a", "b").is_ok());
    }

    #[test]
    fn context_is_unambiguous() {
        // Moving a byte between fields must change the encoding.
        assert_ne!(
            encode_context("ab", "c", "d").ok(),
            encode_context("a", "bc", "d").ok()
        );
    }

    #[test]
    fn key_lengths_use_independent_labels() {
        let (secret_a, _) = keypair_from_seed([3; 32]);
        let (secret_b, _) = keypair_from_seed([3; 32]);
        let (_, peer) = keypair_from_seed([9; 32]);
        let t = [0u8; 32];
        let short =
            derive_session_keys(secret_a, &peer, &t, Role::Initiator, BaseKeyLength::Aes128);
        let long = derive_session_keys(secret_b, &peer, &t, Role::Initiator, BaseKeyLength::Aes256);
        let (Ok(short), Ok(long)) = (short, long) else {
            panic!("derivation failed");
        };
        assert_eq!(short.send_key.as_bytes().len(), 16);
        assert_eq!(long.send_key.as_bytes().len(), 32);
        assert_ne!(short.send_key.as_bytes(), &long.send_key.as_bytes()[..16]);
        assert_eq!(short.verification_code, long.verification_code);
    }
}
