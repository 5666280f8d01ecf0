//! Error types for the SFrame module.
//!
//! Every failure mode a caller may want to react to differently (drop the frame silently, ask
//! for a key, re-key the sender, ...) has its own variant so that callers never have to parse
//! error strings.

use thiserror::Error;

/// Why an SFrame header could not be decoded (RFC 9605 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// The buffer ends before the header does (the config byte announces more KID/CTR bytes
    /// than are present, or the buffer is empty).
    #[error("truncated header: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the header needs according to its config byte.
        needed: usize,
        /// Bytes actually available.
        available: usize,
    },
    /// A KID or CTR value is not encoded with the minimum number of bytes, which RFC 9605
    /// §4.3 requires. Rejecting it keeps the (KID, CTR) -> header mapping one-to-one.
    #[error("non-minimal encoding of the {field} field")]
    NonMinimal {
        /// `"KID"` or `"CTR"`.
        field: &'static str,
    },
}

/// Errors returned by SFrame protection and unprotection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SframeError {
    /// The SFrame header is malformed.
    #[error("malformed SFrame header: {0}")]
    BadHeader(#[from] HeaderError),
    /// The cipher suite identifier is not one of the five RFC 9605 suites.
    #[error("unknown SFrame cipher suite 0x{0:04x}")]
    UnknownCipherSuite(u16),
    /// No key is installed for this KID (and it is not a ratchet step of a known sender).
    #[error("no key for KID {kid}")]
    UnknownKid {
        /// The KID from the frame header.
        kid: u64,
    },
    /// The AEAD tag did not verify: the header, metadata, ciphertext or tag was modified,
    /// or the frame was protected with a different key.
    #[error("authentication failed: frame was tampered with or protected with another key")]
    AuthenticationFailed,
    /// This (KID, CTR) was already accepted: the frame is a replay or a duplicate.
    #[error("replayed frame: KID {kid} CTR {ctr} was already received")]
    Replay {
        /// The KID from the frame header.
        kid: u64,
        /// The counter from the frame header.
        ctr: u64,
    },
    /// The CTR is older than the replay window, so it can no longer be checked for replay.
    #[error(
        "frame too old: KID {kid} CTR {ctr} is behind the replay window (oldest accepted {oldest})"
    )]
    TooOld {
        /// The KID from the frame header.
        kid: u64,
        /// The counter from the frame header.
        ctr: u64,
        /// The oldest counter the window still accepts.
        oldest: u64,
    },
    /// The caller-provided output buffer cannot hold the result.
    #[error("buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall {
        /// Bytes required.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The frame is shorter than header plus authentication tag.
    #[error("ciphertext too short: {len} bytes after the header, the tag alone is {tag_len}")]
    CiphertextTooShort {
        /// Bytes after the header.
        len: usize,
        /// Tag length of the cipher suite.
        tag_len: usize,
    },
    /// The sender already used CTR = 2^64-1 with this key; sealing again would reuse a nonce.
    #[error("counter space exhausted for KID {kid}: a new key (or ratchet step) is required")]
    CounterExhausted {
        /// The sender's KID.
        kid: u64,
    },
    /// The plaintext is longer than the AEAD allows (2^36 - 32 bytes).
    #[error("frame too large: {len} bytes, the maximum is {max}")]
    FrameTooLarge {
        /// Plaintext length.
        len: u64,
        /// Maximum plaintext length.
        max: u64,
    },
    /// A raw AEAD key or nonce has the wrong length for the suite.
    #[error("invalid {what} length: expected {expected} bytes, got {got}")]
    InvalidLength {
        /// `"key"` or `"nonce"`.
        what: &'static str,
        /// Length the suite needs.
        expected: usize,
        /// Length provided.
        got: usize,
    },
    /// Invalid sender-key ratchet parameters (RFC 9605 §5.1).
    #[error("invalid ratchet configuration: {0}")]
    InvalidRatchet(&'static str),
    /// The KID belongs to a ratcheting sender but is further ahead than the receiver is
    /// willing to ratchet in one go (bounds the work an attacker can cause per frame).
    #[error("KID {kid} is {steps} ratchet steps ahead, the limit is {max}")]
    RatchetJumpTooLarge {
        /// The KID from the frame header.
        kid: u64,
        /// Ratchet steps needed to reach it.
        steps: u64,
        /// Configured limit.
        max: u64,
    },
    /// The replay window size is outside `1..=MAX_REPLAY_WINDOW`.
    #[error("invalid replay window size {0}")]
    InvalidReplayWindow(u64),
    /// A hex argument could not be decoded.
    #[error("invalid hex in {field}: {reason}")]
    InvalidHex {
        /// Which argument.
        field: &'static str,
        /// Decoder message.
        reason: String,
    },
}

impl SframeError {
    /// A short, stable name for the kind of failure, for counting failures by reason
    /// (summaries, test diagnostics) without parsing messages.
    pub fn code(&self) -> &'static str {
        match self {
            SframeError::BadHeader(_) => "bad_header",
            SframeError::UnknownCipherSuite(_) => "unknown_suite",
            SframeError::UnknownKid { .. } => "unknown_kid",
            SframeError::AuthenticationFailed => "authentication_failed",
            SframeError::Replay { .. } => "replay",
            SframeError::TooOld { .. } => "too_old",
            SframeError::BufferTooSmall { .. } => "buffer_too_small",
            SframeError::CiphertextTooShort { .. } => "too_short",
            SframeError::CounterExhausted { .. } => "counter_exhausted",
            SframeError::FrameTooLarge { .. } => "too_large",
            SframeError::InvalidLength { .. } => "invalid_length",
            SframeError::InvalidRatchet(_) => "invalid_ratchet",
            SframeError::RatchetJumpTooLarge { .. } => "ratchet_jump",
            SframeError::InvalidReplayWindow(_) => "invalid_replay_window",
            SframeError::InvalidHex { .. } => "invalid_hex",
        }
    }
}
