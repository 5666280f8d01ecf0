//! The AEAD primitives behind the SFrame suites, keyed once and used in place.
//!
//! * AES-GCM (suites 4 and 5) comes from `ring`, whose stitched AES-NI/VAES + CLMUL code is
//!   about 3x faster than the `aes-gcm` crate on 1,200-byte frames (see bench/RESULTS.md);
//!   the test suite cross-checks it against `aes-gcm` and the RFC 9605 vectors.
//! * AES-CTR + HMAC-SHA256 (suites 1..=3) is RFC 9605 §4.5.1: the 48-byte AEAD key splits
//!   into a 16-byte AES key and a 32-byte HMAC key; the keystream starts at
//!   `nonce || 0x00000000`; the tag is
//!   `HMAC(auth_key, len(aad) || len(ct) || Nt || nonce || aad || ct)` (lengths as 8-byte
//!   big-endian), truncated to `Nt` bytes.
//!
//! The AES key schedule, GHASH key and HMAC pads are computed once in [`AeadKey::new`]; a
//! frame only clones a small hash state (CTR suites). Nothing here allocates except when an AES-GCM AAD has
//! to be made contiguous (header + non-empty metadata), and then only into a caller-owned
//! scratch buffer that keeps its capacity.

use aes::Aes128Enc;
use ctr::cipher::{InnerIvInit, KeyInit, StreamCipherCore};
use hmac::{Hmac, Mac};
use ring::aead::{self as ring_aead, LessSafeKey, UnboundKey};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{error::SframeError, kdf::NONCE_LEN, suite::CipherSuite};

/// Largest plaintext the AEADs accept (AES-GCM's limit, 2^36 - 32 bytes; the CTR suites'
/// 32-bit block counter allows slightly more, so one limit covers both).
pub const MAX_PLAINTEXT_LEN: u64 = (1 << 36) - 32;

const AES128_KEY_LEN: usize = 16;
const GCM_TAG_LEN: usize = 16;

/// Additional authenticated data in its two SFrame parts: `aad = header || metadata`.
#[derive(Clone, Copy)]
pub(crate) struct Aad<'a> {
    pub header: &'a [u8],
    pub metadata: &'a [u8],
}

impl<'a> Aad<'a> {
    /// The AAD as one slice, borrowing when one part is empty, else copying into `scratch`.
    fn contiguous<'s>(&self, scratch: &'s mut Vec<u8>) -> &'s [u8]
    where
        'a: 's,
    {
        if self.metadata.is_empty() {
            self.header
        } else if self.header.is_empty() {
            self.metadata
        } else {
            scratch.clear();
            scratch.extend_from_slice(self.header);
            scratch.extend_from_slice(self.metadata);
            scratch
        }
    }
}

/// A keyed AEAD with precomputed cipher state.
// One value per key, built once and never moved per frame; boxing the larger variant would
// only add a pointer chase to the hot path.
#[allow(clippy::large_enum_variant)]
pub(crate) enum AeadKey {
    CtrHmac {
        aes: Aes128Enc,
        mac: Hmac<Sha256>,
        tag_len: usize,
    },
    /// AES-128-GCM or AES-256-GCM (16-byte tag).
    Gcm(LessSafeKey),
}

impl AeadKey {
    /// Keys the AEAD for `suite` with the `Nk`-byte `key`.
    pub(crate) fn new(suite: CipherSuite, key: &[u8]) -> Result<Self, SframeError> {
        let bad_len = || SframeError::InvalidLength {
            what: "key",
            expected: suite.nk(),
            got: key.len(),
        };
        if key.len() != suite.nk() {
            return Err(bad_len());
        }
        Ok(match suite {
            CipherSuite::AesCtr128HmacSha256_80
            | CipherSuite::AesCtr128HmacSha256_64
            | CipherSuite::AesCtr128HmacSha256_32 => {
                let (enc_key, auth_key) = key.split_at(AES128_KEY_LEN);
                AeadKey::CtrHmac {
                    aes: Aes128Enc::new_from_slice(enc_key).map_err(|_| bad_len())?,
                    mac: <Hmac<Sha256> as KeyInit>::new_from_slice(auth_key)
                        .map_err(|_| bad_len())?,
                    tag_len: suite.nt(),
                }
            }
            CipherSuite::AesGcm128Sha256 => AeadKey::Gcm(LessSafeKey::new(
                UnboundKey::new(&ring_aead::AES_128_GCM, key).map_err(|_| bad_len())?,
            )),
            CipherSuite::AesGcm256Sha512 => AeadKey::Gcm(LessSafeKey::new(
                UnboundKey::new(&ring_aead::AES_256_GCM, key).map_err(|_| bad_len())?,
            )),
        })
    }

    /// `Nt` for this key's suite.
    pub(crate) fn tag_len(&self) -> usize {
        match self {
            AeadKey::CtrHmac { tag_len, .. } => *tag_len,
            AeadKey::Gcm(_) => GCM_TAG_LEN,
        }
    }

    /// Encrypts `buf` in place and writes the `Nt`-byte tag to `tag_out`.
    pub(crate) fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: Aad<'_>,
        buf: &mut [u8],
        tag_out: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), SframeError> {
        check_len(buf.len())?;
        if tag_out.len() != self.tag_len() {
            return Err(SframeError::BufferTooSmall {
                needed: self.tag_len(),
                available: tag_out.len(),
            });
        }
        match self {
            AeadKey::CtrHmac { aes, mac, tag_len } => {
                apply_ctr(aes, nonce, buf)?;
                let full = hmac_tag(mac, nonce, aad, buf, *tag_len);
                tag_out.copy_from_slice(&full[..*tag_len]);
            }
            AeadKey::Gcm(key) => {
                let tag = key
                    .seal_in_place_separate_tag(
                        ring_aead::Nonce::assume_unique_for_key(*nonce),
                        ring_aead::Aad::from(aad.contiguous(scratch)),
                        buf,
                    )
                    .map_err(|_| too_large(buf.len()))?;
                tag_out.copy_from_slice(tag.as_ref());
            }
        }
        Ok(())
    }

    /// Verifies `tag` and decrypts `buf` in place.
    ///
    /// On failure no unauthenticated plaintext is exposed: the CTR suites verify before
    /// decrypting and leave `buf` untouched; `ring`'s AES-GCM decrypts while it authenticates
    /// and zeroes `buf` if the tag is wrong.
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: Aad<'_>,
        buf: &mut [u8],
        tag: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), SframeError> {
        check_len(buf.len())?;
        if tag.len() != self.tag_len() {
            return Err(SframeError::AuthenticationFailed);
        }
        match self {
            AeadKey::CtrHmac { aes, mac, tag_len } => {
                let full = hmac_tag(mac, nonce, aad, buf, *tag_len);
                if !bool::from(full[..*tag_len].ct_eq(tag)) {
                    return Err(SframeError::AuthenticationFailed);
                }
                apply_ctr(aes, nonce, buf)?;
            }
            AeadKey::Gcm(key) => {
                let tag =
                    ring_aead::Tag::try_from(tag).map_err(|_| SframeError::AuthenticationFailed)?;
                key.open_in_place_separate_tag(
                    ring_aead::Nonce::assume_unique_for_key(*nonce),
                    ring_aead::Aad::from(aad.contiguous(scratch)),
                    tag,
                    buf,
                    0..,
                )
                .map_err(|_| SframeError::AuthenticationFailed)?;
            }
        }
        Ok(())
    }
}

fn too_large(len: usize) -> SframeError {
    SframeError::FrameTooLarge {
        len: len as u64,
        max: MAX_PLAINTEXT_LEN,
    }
}

fn check_len(len: usize) -> Result<(), SframeError> {
    if len as u64 > MAX_PLAINTEXT_LEN {
        Err(too_large(len))
    } else {
        Ok(())
    }
}

/// AES-128-CTR keystream starting at `nonce || 0x00000000`, XORed into `buf`.
fn apply_ctr(aes: &Aes128Enc, nonce: &[u8; NONCE_LEN], buf: &mut [u8]) -> Result<(), SframeError> {
    let mut iv = [0u8; 16];
    iv[..NONCE_LEN].copy_from_slice(nonce);
    let core = ctr::CtrCore::<&Aes128Enc, ctr::flavors::Ctr32BE>::inner_iv_init(aes, (&iv).into());
    let len = buf.len();
    core.try_apply_keystream_partial(buf.into())
        .map_err(|_| too_large(len))
}

/// Full (untruncated) HMAC-SHA256 tag of RFC 9605 §4.5.1.
fn hmac_tag(
    mac: &Hmac<Sha256>,
    nonce: &[u8; NONCE_LEN],
    aad: Aad<'_>,
    ct: &[u8],
    tag_len: usize,
) -> [u8; 32] {
    let aad_len = (aad.header.len() + aad.metadata.len()) as u64;
    let mut mac = mac.clone();
    mac.update(&aad_len.to_be_bytes());
    mac.update(&(ct.len() as u64).to_be_bytes());
    mac.update(&(tag_len as u64).to_be_bytes());
    mac.update(nonce);
    mac.update(aad.header);
    mac.update(aad.metadata);
    mac.update(ct);
    mac.finalize().into_bytes().into()
}

/// One-shot AEAD encryption with a raw `Nk`-byte key (used by the test-vector checker for the
/// `aes_ctr_hmac` section, which tests the primitive without the SFrame framing).
pub fn aead_encrypt(
    suite: CipherSuite,
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SframeError> {
    let aead = AeadKey::new(suite, key)?;
    let nonce = nonce_array(nonce)?;
    let mut out = Vec::with_capacity(plaintext.len() + aead.tag_len());
    out.extend_from_slice(plaintext);
    out.resize(plaintext.len() + aead.tag_len(), 0);
    let (body, tag) = out.split_at_mut(plaintext.len());
    let aad = Aad {
        header: aad,
        metadata: &[],
    };
    aead.seal(&nonce, aad, body, tag, &mut Vec::new())?;
    Ok(out)
}

/// One-shot AEAD decryption with a raw `Nk`-byte key; `ciphertext` includes the tag.
pub fn aead_decrypt(
    suite: CipherSuite,
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, SframeError> {
    let aead = AeadKey::new(suite, key)?;
    let nonce = nonce_array(nonce)?;
    let tag_len = aead.tag_len();
    let body_len =
        ciphertext
            .len()
            .checked_sub(tag_len)
            .ok_or(SframeError::CiphertextTooShort {
                len: ciphertext.len(),
                tag_len,
            })?;
    let (body, tag) = ciphertext.split_at(body_len);
    let mut out = body.to_vec();
    let aad = Aad {
        header: aad,
        metadata: &[],
    };
    aead.open(&nonce, aad, &mut out, tag, &mut Vec::new())?;
    Ok(out)
}

fn nonce_array(nonce: &[u8]) -> Result<[u8; NONCE_LEN], SframeError> {
    nonce.try_into().map_err(|_| SframeError::InvalidLength {
        what: "nonce",
        expected: NONCE_LEN,
        got: nonce.len(),
    })
}
