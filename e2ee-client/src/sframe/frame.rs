//! Per-key SFrame context: derived key, salt and keyed AEAD, built once and reused per frame.

use core::{fmt, ops::Range};

use zeroize::Zeroizing;

use super::{
    aead::{Aad, AeadKey, MAX_PLAINTEXT_LEN},
    error::SframeError,
    header::Header,
    kdf::{derive_key_salt, frame_nonce, NONCE_LEN},
    suite::CipherSuite,
};

/// Where the plaintext of an opened frame ended up, plus the header values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedFrame {
    /// KID from the header.
    pub kid: u64,
    /// CTR from the header.
    pub ctr: u64,
    /// Plaintext location inside the buffer that was opened.
    pub plaintext: Range<usize>,
}

/// A frame key for one (suite, KID, base key): `sframe_key`/`sframe_salt` derived and the AES
/// key schedule expanded once, so per-frame work is just the AEAD pass.
///
/// `FrameKey` is stateless with respect to counters: it neither picks CTRs nor checks for
/// replays. Use [`super::Sender`] and [`super::Receiver`] for that; `FrameKey` is the building
/// block for callers that manage counters themselves.
pub struct FrameKey {
    suite: CipherSuite,
    kid: u64,
    salt: Zeroizing<[u8; NONCE_LEN]>,
    aead: AeadKey,
}

impl fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameKey")
            .field("suite", &self.suite)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl FrameKey {
    /// Derives the key for `kid` from `base_key` (any length) per RFC 9605 §4.4.2.
    pub fn new(suite: CipherSuite, kid: u64, base_key: &[u8]) -> Self {
        let derived = derive_key_salt(suite, kid, base_key);
        let aead = match AeadKey::new(suite, derived.key()) {
            Ok(aead) => aead,
            // Invariant: `derive_key_salt` outputs exactly `suite.nk()` bytes, the only
            // length `AeadKey::new` accepts, so this arm is unreachable.
            Err(e) => unreachable!("derived key has the suite's key length: {e}"),
        };
        Self {
            suite,
            kid,
            salt: Zeroizing::new(*derived.salt()),
            aead,
        }
    }

    /// The cipher suite.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The KID this key is bound to.
    pub fn kid(&self) -> u64 {
        self.kid
    }

    /// Authentication tag length (`Nt`).
    pub fn tag_len(&self) -> usize {
        self.aead.tag_len()
    }

    /// Length of the SFrame ciphertext for a `plaintext_len`-byte frame sealed with `ctr`.
    pub fn sealed_len(&self, ctr: u64, plaintext_len: usize) -> usize {
        Header::new(self.kid, ctr).encoded_len() + plaintext_len + self.tag_len()
    }

    /// Seals into the front of `out`: `header || ciphertext || tag`. Returns bytes written.
    ///
    /// The caller guarantees `ctr` is never reused with this key. Allocates only for AES-GCM
    /// with non-empty metadata (to join header and metadata); [`super::Sender`] avoids even
    /// that with a reusable scratch buffer.
    pub fn seal_to_slice(
        &self,
        ctr: u64,
        metadata: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, SframeError> {
        self.seal_with(ctr, metadata, plaintext, out, &mut Vec::new())
    }

    pub(crate) fn seal_with(
        &self,
        ctr: u64,
        metadata: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<usize, SframeError> {
        check_plaintext_len(plaintext.len())?;
        let header = Header::new(self.kid, ctr).encode();
        let hlen = header.len();
        let total = hlen + plaintext.len() + self.tag_len();
        let available = out.len();
        let dst = out.get_mut(..total).ok_or(SframeError::BufferTooSmall {
            needed: total,
            available,
        })?;
        dst[..hlen].copy_from_slice(header.as_bytes());
        dst[hlen..hlen + plaintext.len()].copy_from_slice(plaintext);
        self.seal_prefilled(ctr, hlen, metadata, dst, scratch)?;
        Ok(total)
    }

    /// Seals a buffer laid out as `header (hlen bytes) || plaintext || tag space`.
    pub(crate) fn seal_prefilled(
        &self,
        ctr: u64,
        hlen: usize,
        metadata: &[u8],
        buf: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), SframeError> {
        let nt = self.tag_len();
        let body_len = buf
            .len()
            .checked_sub(hlen + nt)
            .ok_or(SframeError::BufferTooSmall {
                needed: hlen + nt,
                available: buf.len(),
            })?;
        let (header, rest) = buf.split_at_mut(hlen);
        let (body, tag) = rest.split_at_mut(body_len);
        let nonce = frame_nonce(&self.salt, ctr);
        let res = self
            .aead
            .seal(&nonce, Aad { header, metadata }, body, tag, scratch);
        if res.is_err() {
            // Never leave plaintext in a buffer that looks like a sealed frame.
            buf.fill(0);
        }
        res
    }

    /// Opens an SFrame ciphertext in place, without replay protection.
    ///
    /// On success the plaintext is at `buf[opened.plaintext]`. On failure `buf` never holds
    /// unauthenticated plaintext (it is unchanged, or its ciphertext part zeroed for AES-GCM).
    /// Fails with [`SframeError::UnknownKid`] if the header names another KID.
    pub fn open_in_place(
        &self,
        metadata: &[u8],
        buf: &mut [u8],
    ) -> Result<OpenedFrame, SframeError> {
        let (header, hlen) = Header::decode(buf)?;
        if header.kid != self.kid {
            return Err(SframeError::UnknownKid { kid: header.kid });
        }
        self.open_decoded(header, hlen, metadata, buf, &mut Vec::new())
    }

    /// Opens `buf` whose header was already decoded as `header` (`hlen` bytes).
    pub(crate) fn open_decoded(
        &self,
        header: Header,
        hlen: usize,
        metadata: &[u8],
        buf: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<OpenedFrame, SframeError> {
        let nt = self.tag_len();
        let after_header = buf.len().saturating_sub(hlen);
        let body_len = after_header
            .checked_sub(nt)
            .ok_or(SframeError::CiphertextTooShort {
                len: after_header,
                tag_len: nt,
            })?;
        let (head, rest) = buf.split_at_mut(hlen);
        let (body, tag) = rest.split_at_mut(body_len);
        self.open_parts(header.ctr, head, metadata, body, tag, scratch)?;
        Ok(OpenedFrame {
            kid: header.kid,
            ctr: header.ctr,
            plaintext: hlen..hlen + body_len,
        })
    }

    /// Verifies and decrypts `body` in place given the raw header bytes and the tag.
    pub(crate) fn open_parts(
        &self,
        ctr: u64,
        header: &[u8],
        metadata: &[u8],
        body: &mut [u8],
        tag: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), SframeError> {
        let nonce = frame_nonce(&self.salt, ctr);
        self.aead
            .open(&nonce, Aad { header, metadata }, body, tag, scratch)
    }
}

pub(crate) fn check_plaintext_len(len: usize) -> Result<(), SframeError> {
    if len as u64 > MAX_PLAINTEXT_LEN {
        return Err(SframeError::FrameTooLarge {
            len: len as u64,
            max: MAX_PLAINTEXT_LEN,
        });
    }
    Ok(())
}
