//! The sending side: one base key, one KID, a strictly increasing CTR.

use core::fmt;

use super::{
    error::SframeError,
    frame::{check_plaintext_len, FrameKey},
    header::Header,
    kdf::{ratchet_base_key, SecretBytes},
    ratchet::RatchetParams,
    suite::CipherSuite,
};

/// Protects outgoing frames for one KID.
///
/// The counter starts at 0 (or a chosen value) and increases by one per sealed frame. Once
/// CTR = 2^64-1 has been used the sender refuses to seal ([`SframeError::CounterExhausted`])
/// rather than wrap, because a repeated (KID, CTR) means a repeated AEAD nonce.
///
/// Per-frame methods ([`Self::seal_into`], [`Self::seal_in_place`], [`Self::seal_to_slice`])
/// do not allocate once the output buffers and the internal AAD scratch buffer have grown to
/// their working size.
pub struct Sender {
    key: FrameKey,
    base_key: SecretBytes,
    next_ctr: u64,
    exhausted: bool,
    ratchet: Option<RatchetParams>,
    scratch: Vec<u8>,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("suite", &self.key.suite())
            .field("kid", &self.key.kid())
            .field("next_ctr", &self.next_counter())
            .field("ratchet", &self.ratchet)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender for `kid` starting at CTR 0.
    pub fn new(suite: CipherSuite, kid: u64, base_key: &[u8]) -> Self {
        Self::with_counter(suite, kid, base_key, 0)
    }

    /// A sender resuming at `next_ctr`, for callers that persist the counter across restarts
    /// of a long-lived key. The caller must never hand out a counter it used before.
    pub fn with_counter(suite: CipherSuite, kid: u64, base_key: &[u8], next_ctr: u64) -> Self {
        Self {
            key: FrameKey::new(suite, kid, base_key),
            base_key: SecretBytes::from_slice(base_key),
            next_ctr,
            exhausted: false,
            ratchet: None,
            scratch: Vec::new(),
        }
    }

    /// A sender using the RFC 9605 §5.1 sender-key ratchet: `kid` is
    /// `(generation << R) | step` and [`Self::ratchet`] moves to the next step.
    pub fn new_ratcheting(
        suite: CipherSuite,
        params: RatchetParams,
        kid: u64,
        base_key: &[u8],
    ) -> Self {
        let mut s = Self::new(suite, kid, base_key);
        s.ratchet = Some(params);
        s
    }

    /// The cipher suite.
    pub fn suite(&self) -> CipherSuite {
        self.key.suite()
    }

    /// The KID currently used.
    pub fn kid(&self) -> u64 {
        self.key.kid()
    }

    /// The CTR the next frame will carry, or `None` once the counter space is exhausted.
    pub fn next_counter(&self) -> Option<u64> {
        (!self.exhausted).then_some(self.next_ctr)
    }

    /// Ratchets the base key forward one step (forward secrecy: the old key is dropped and
    /// zeroed), moves to the next KID and restarts CTR at 0, which is safe because the new
    /// KID has a fresh key and salt. Returns the new KID.
    pub fn ratchet(&mut self) -> Result<u64, SframeError> {
        let params = self.ratchet.ok_or(SframeError::InvalidRatchet(
            "sender was not created with Sender::new_ratcheting",
        ))?;
        let suite = self.suite();
        let next_base = ratchet_base_key(suite, self.base_key.expose_secret());
        let kid = params.next_kid(self.kid());
        self.key = FrameKey::new(suite, kid, next_base.expose_secret());
        self.base_key = next_base;
        self.next_ctr = 0;
        self.exhausted = false;
        Ok(kid)
    }

    /// Size of the next sealed frame for a `plaintext_len`-byte plaintext, for sizing caller
    /// buffers (later frames can be a byte longer each time the CTR needs another byte).
    pub fn sealed_len(&self, plaintext_len: usize) -> usize {
        self.key.sealed_len(self.next_ctr, plaintext_len)
    }

    fn current_ctr(&self) -> Result<u64, SframeError> {
        if self.exhausted {
            Err(SframeError::CounterExhausted { kid: self.kid() })
        } else {
            Ok(self.next_ctr)
        }
    }

    /// Consumes the current counter after a successful seal.
    fn advance(&mut self) {
        match self.next_ctr.checked_add(1) {
            Some(n) => self.next_ctr = n,
            None => self.exhausted = true,
        }
    }

    /// Seals into `out[..n]` and returns `n`; fails with [`SframeError::BufferTooSmall`]
    /// (consuming no counter) if `out` is too short. Use for fixed, preallocated buffers.
    pub fn seal_to_slice(
        &mut self,
        metadata: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, SframeError> {
        let ctr = self.current_ctr()?;
        let n = self
            .key
            .seal_with(ctr, metadata, plaintext, out, &mut self.scratch)?;
        self.advance();
        Ok(n)
    }

    /// Replaces the contents of `out` with the sealed frame, reusing its capacity (no
    /// allocation once `out` has grown to the frame size). Returns the frame length.
    pub fn seal_into(
        &mut self,
        metadata: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, SframeError> {
        let ctr = self.current_ctr()?;
        check_plaintext_len(plaintext.len())?;
        let header = Header::new(self.kid(), ctr).encode();
        out.clear();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(plaintext);
        out.resize(out.len() + self.key.tag_len(), 0);
        self.key
            .seal_prefilled(ctr, header.len(), metadata, out, &mut self.scratch)?;
        self.advance();
        Ok(out.len())
    }

    /// Seals the plaintext held in `buf` in place: `buf` becomes `header || ct || tag`.
    /// The plaintext is shifted by the header length; `buf` only reallocates if its capacity
    /// is short by the header + tag overhead.
    pub fn seal_in_place(
        &mut self,
        metadata: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<usize, SframeError> {
        let ctr = self.current_ctr()?;
        let pt_len = buf.len();
        check_plaintext_len(pt_len)?;
        let header = Header::new(self.kid(), ctr).encode();
        let hlen = header.len();
        buf.resize(hlen + pt_len + self.key.tag_len(), 0);
        buf.copy_within(..pt_len, hlen);
        buf[..hlen].copy_from_slice(header.as_bytes());
        self.key
            .seal_prefilled(ctr, hlen, metadata, buf, &mut self.scratch)?;
        self.advance();
        Ok(buf.len())
    }

    /// Allocating convenience wrapper around [`Self::seal_into`].
    pub fn seal(&mut self, metadata: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SframeError> {
        let mut out = Vec::with_capacity(self.sealed_len(plaintext.len()));
        self.seal_into(metadata, plaintext, &mut out)?;
        Ok(out)
    }
}
