//! In-place SRTP/SRTCP for the forwarding path, with AEAD_AES_128_GCM (RFC 7714) or
//! AES128_CM_HMAC_SHA1_80 (RFC 3711).
//!
//! `webrtc_srtp::context::Context` allocates a fresh `Bytes` for every packet it protects
//! or unprotects, plus temporary `Vec`s for the IV and AAD. On an SFU that is two heap
//! allocations per forwarded packet per hop. [`FastSrtpContext`] does the same
//! transform on the caller's buffer instead: the header stays where it is, the payload is
//! encrypted or decrypted in place (`ring`'s AES-GCM, or RustCrypto's AES-CTR and
//! HMAC-SHA1), and the tag (plus the SRTCP index word) is written right after it. The only
//! allocation happens the first time an SSRC is seen (its state entry in a map).
//! AES128_CM_HMAC_SHA1_80 is the one profile webrtcbin, Janus and many native stacks
//! offer, so it gets the in-place path too (bench/RESULTS.md, "In-place AES-CM").
//!
//! The wire format, key derivation and IV construction mirror webrtc-srtp 0.17
//! (`key_derivation.rs`, `cipher/cipher_aead_aes_gcm.rs`,
//! `cipher/cipher_aes_cm_hmac_sha1.rs`), so either side of a session can use either
//! implementation; the integration tests cross-decrypt both ways, for both profiles.
//!
//! Differences from webrtc-srtp, all deliberate:
//! - Replay protection is always on and works on the full 48-bit SRTP index (RFC 3711
//!   §3.3.2), not on the 16-bit sequence number, so it stays correct across a rollover.
//! - The receive-side rollover counter follows the highest authenticated index (RFC 3711
//!   §3.3.1), so a reordered packet does not drag the ROC estimate backwards.
//! - State for a new SSRC is created only after a packet for it authenticated, so forged
//!   packets with random SSRCs cannot grow the map; the map is also capped.
//! - Exhausting the SRTP (2^48) or SRTCP (2^31) index space is an error rather than a
//!   wrap: with GCM a wrapped index would reuse a nonce, which leaks the GHASH key; with
//!   AES-CM it would reuse keystream.
//! - The send side keeps a replay window too, as libsrtp does (`srtp_protect` checks its
//!   `rtp_rdbx` and fails with `srtp_err_status_replay_fail` / `replay_old` unless the
//!   stream was created with `allow_repeat_tx`): protecting an (SSRC, index) that was
//!   already protected, or one older than the window, fails with
//!   [`FastSrtpError::IndexReused`] and seals nothing. Two different plaintexts under one
//!   GCM nonce would give away the GHASH key of the hop and let anyone forge on it.
//!   webrtc-srtp has no such check.
//! - SRTCP packets with the E flag clear (authenticated but not encrypted, RFC 7714 §9.3)
//!   are rejected with [`FastSrtpError::UnencryptedSrtcp`]; neither webrtc-srtp nor any
//!   browser sends them.

use aes::cipher::{BlockCipherEncrypt, KeyInit, StreamCipherCore};
use ctr::cipher::InnerIvInit;
use hmac::{Hmac, Mac};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use sha1::Sha1;
use std::collections::HashMap;
use std::fmt;
use thiserror::Error;
use zeroize::Zeroizing;

/// Master and session key length for AEAD_AES_128_GCM (RFC 7714 §12).
pub const KEY_LEN: usize = 16;
/// Master and session salt length for AEAD_AES_128_GCM (RFC 7714 §12).
pub const SALT_LEN: usize = 12;
/// The GCM authentication tag appended to every packet (RFC 7714 §14.2: 16 octets).
pub const TAG_LEN: usize = 16;
/// Length of the E flag + SRTCP index word that trails an SRTCP packet.
pub const SRTCP_INDEX_LEN: usize = 4;
/// Bytes that [`FastSrtpContext::protect_rtp`] adds to a packet under AEAD_AES_128_GCM
/// (see [`FastSrtpContext::rtp_overhead`] for either profile).
pub const RTP_OVERHEAD: usize = TAG_LEN;
/// Bytes that [`FastSrtpContext::protect_rtcp`] adds to a packet under AEAD_AES_128_GCM.
pub const RTCP_OVERHEAD: usize = TAG_LEN + SRTCP_INDEX_LEN;
/// Master and session salt length for AES128_CM_HMAC_SHA1_80 (RFC 3711 §8.2).
pub const CM_SALT_LEN: usize = 14;
/// Its authentication tag: HMAC-SHA1 truncated to 80 bits (RFC 3711 §5.2).
pub const CM_TAG_LEN: usize = 10;
/// Its session authentication key length (RFC 3711 §4.3.1: n_a = 160 bits).
const CM_AUTH_KEY_LEN: usize = 20;
/// The most either profile adds to an RTP packet, for callers that reserve room.
pub const MAX_RTP_OVERHEAD: usize = TAG_LEN;
/// The most either profile adds to an RTCP packet.
pub const MAX_RTCP_OVERHEAD: usize = TAG_LEN + SRTCP_INDEX_LEN;
/// Packets a replay window remembers behind the highest index (RFC 3711 asks for >= 64).
pub const REPLAY_WINDOW: u64 = 128;
/// Default cap on the number of SSRCs a context tracks per direction and protocol.
pub const DEFAULT_MAX_SSRCS: usize = 1024;

const RTP_HEADER_LEN: usize = 12;
const RTCP_HEADER_LEN: usize = 8;
const SRTCP_E_FLAG: u32 = 0x8000_0000;
const MAX_SRTCP_INDEX: u32 = 0x7fff_ffff;
const MAX_SRTP_INDEX: u64 = (1 << 48) - 1;

const LABEL_SRTP_ENCRYPTION: u8 = 0x00;
const LABEL_SRTP_AUTH: u8 = 0x01;
const LABEL_SRTP_SALT: u8 = 0x02;
const LABEL_SRTCP_ENCRYPTION: u8 = 0x03;
const LABEL_SRTCP_AUTH: u8 = 0x04;
const LABEL_SRTCP_SALT: u8 = 0x05;

/// Why a packet could not be protected or unprotected, or a context not built.
///
/// Every variant is cheap to construct (no allocation), so the error path of a forged or
/// truncated packet costs no more than the success path.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum FastSrtpError {
    #[error("master or session key must be {KEY_LEN} bytes, got {0}")]
    KeyLength(usize),
    #[error("master or session salt must be {SALT_LEN} bytes, got {0}")]
    SaltLength(usize),
    #[error("packet is shorter than its header plus the SRTP trailer")]
    Truncated,
    #[error("not an RTP/RTCP version 2 packet")]
    BadVersion,
    #[error("buffer has no room for the {0}-byte SRTP trailer")]
    NoRoom(usize),
    #[error("authentication tag did not verify")]
    AuthFailed,
    #[error("replayed or too old: SSRC {ssrc:#010x}, index {index}")]
    Replay { ssrc: u32, index: u64 },
    /// Protecting would reuse an (SSRC, index), i.e. a GCM nonce: the index was protected
    /// before, or lies behind the send window where that can no longer be ruled out.
    #[error(
        "SRTP index already protected or too old to protect: SSRC {ssrc:#010x}, index {index}"
    )]
    IndexReused { ssrc: u32, index: u64 },
    #[error("SRTCP packet is not encrypted (E flag clear); not supported")]
    UnencryptedSrtcp,
    #[error("SRTP/SRTCP index space exhausted for SSRC {0:#010x}: rekey needed")]
    IndexExhausted(u32),
    #[error("too many SSRCs in one SRTP context")]
    TooManySsrcs,
}

impl FastSrtpError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::KeyLength(_) => "key_length",
            Self::SaltLength(_) => "salt_length",
            Self::Truncated => "truncated",
            Self::BadVersion => "bad_version",
            Self::NoRoom(_) => "no_room",
            Self::AuthFailed => "auth_failed",
            Self::Replay { .. } => "replay",
            Self::IndexReused { .. } => "index_reused",
            Self::UnencryptedSrtcp => "unencrypted_srtcp",
            Self::IndexExhausted(_) => "index_exhausted",
            Self::TooManySsrcs => "too_many_ssrcs",
        }
    }
}

/// Sliding replay window over a 64-bit packet index (RFC 3711 §3.3.2), as a bitmask.
///
/// Bit `i` of `mask` is set when index `highest - i` has been accepted.
#[derive(Debug, Clone, Copy, Default)]
struct ReplayWindow {
    highest: u64,
    mask: u128,
    started: bool,
}

impl ReplayWindow {
    /// Whether `index` may be accepted; does not change the window (the packet has not
    /// authenticated yet).
    fn check(&self, index: u64) -> bool {
        if !self.started || index > self.highest {
            return true;
        }
        let behind = self.highest - index;
        behind < REPLAY_WINDOW && self.mask & (1u128 << behind) == 0
    }

    /// Records an authenticated `index`.
    fn accept(&mut self, index: u64) {
        if !self.started {
            self.started = true;
            self.highest = index;
            self.mask = 1;
        } else if index > self.highest {
            let shift = index - self.highest;
            self.mask = if shift >= 128 { 0 } else { self.mask << shift };
            self.mask |= 1;
            self.highest = index;
        } else {
            let behind = self.highest - index;
            if behind < REPLAY_WINDOW {
                self.mask |= 1u128 << behind;
            }
        }
    }
}

/// The RTP indices already protected, per SSRC, for an SRTP implementation that does not
/// refuse a repeated one itself (webrtc-srtp's AES_CM_HMAC_SHA1_80 contexts): a repeated
/// index reuses the AES-CM keystream, as it would reuse a GCM nonce. The same window,
/// index estimate and SSRC cap as [`FastSrtpContext`]'s own send side.
#[derive(Debug, Default)]
pub struct SendIndexGuard {
    sent: HashMap<u32, ReplayWindow>,
}

impl SendIndexGuard {
    /// The SSRC and index the clear RTP `packet` would be protected under, or
    /// [`FastSrtpError::IndexReused`] when that index was protected before (or lies more
    /// than [`REPLAY_WINDOW`] behind the highest). Changes nothing: call
    /// [`SendIndexGuard::record`] once the packet is protected.
    pub fn check(&self, packet: &[u8]) -> Result<(u32, u64), FastSrtpError> {
        rtp_header_len(packet)?;
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = read_u32(packet, 8)?;
        let window = self.sent.get(&ssrc);
        if window.is_none() && self.sent.len() >= DEFAULT_MAX_SSRCS {
            return Err(FastSrtpError::TooManySsrcs);
        }
        let tx = window.copied().unwrap_or_default();
        let index = estimate_index(tx.started.then_some(tx.highest), 0, seq)
            .ok_or(FastSrtpError::IndexExhausted(ssrc))?;
        if !tx.check(index) {
            return Err(FastSrtpError::IndexReused { ssrc, index });
        }
        Ok((ssrc, index))
    }

    /// Remember that `index` was protected for `ssrc`.
    pub fn record(&mut self, ssrc: u32, index: u64) {
        self.sent.entry(ssrc).or_default().accept(index);
    }
}

/// Per-SSRC SRTP state: a window over the 48-bit indices (ROC << 16 | SEQ) seen in each
/// direction.
#[derive(Clone, Copy, Default)]
struct RtpSsrcState {
    /// Indices protected: the highest, and which of the [`REPLAY_WINDOW`] below it were.
    /// Not started until the first packet.
    tx: ReplayWindow,
    /// No index below this is protected: a window [`FastSrtpContext::set_roc`] moved
    /// past forgets what it held, and an index estimated back into it (a late sequence
    /// number read as the ROC before) may have been sealed already.
    tx_floor: u64,
    /// ROC to assume for the first packet in each direction (RFC 3711: 0 unless signalled).
    initial_roc: u32,
    rx: ReplayWindow,
}

/// Per-SSRC SRTCP state.
#[derive(Clone, Copy, Default)]
struct RtcpSsrcState {
    /// Last SRTCP index used to protect; the next packet uses `tx_index + 1`.
    tx_index: u32,
    rx: ReplayWindow,
}

/// Guesses the 48-bit index of `seq` given the highest index seen so far (RFC 3711
/// §3.3.1 / Appendix A), or `initial_roc` for the first packet. `None` when the guess
/// would pass 2^48 - 1.
fn estimate_index(highest: Option<u64>, initial_roc: u32, seq: u16) -> Option<u64> {
    let Some(highest) = highest else {
        return Some((u64::from(initial_roc) << 16) | u64::from(seq));
    };
    let roc = highest >> 16;
    let s_l = highest as u16;
    let v = if s_l < 0x8000 {
        if u32::from(seq) > u32::from(s_l) + 0x8000 && roc > 0 {
            roc - 1
        } else {
            roc
        }
    } else if u32::from(seq) + 0x8000 < u32::from(s_l) {
        roc + 1
    } else {
        roc
    };
    let index = (v << 16) | u64::from(seq);
    (index <= MAX_SRTP_INDEX).then_some(index)
}

/// Length of the RTP header at the start of `packet` (fixed part, CSRCs and header
/// extension), i.e. the AAD of RFC 7714 §8.2. Errors rather than panics on any input.
fn rtp_header_len(packet: &[u8]) -> Result<usize, FastSrtpError> {
    let first = *packet.first().ok_or(FastSrtpError::Truncated)?;
    if first >> 6 != 2 {
        return Err(FastSrtpError::BadVersion);
    }
    if packet.len() < RTP_HEADER_LEN {
        return Err(FastSrtpError::Truncated);
    }
    let mut len = RTP_HEADER_LEN + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let ext = packet.get(len..len + 4).ok_or(FastSrtpError::Truncated)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    if packet.len() < len {
        return Err(FastSrtpError::Truncated);
    }
    Ok(len)
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, FastSrtpError> {
    let b = bytes.get(at..at + 4).ok_or(FastSrtpError::Truncated)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The AES-CM PRF of RFC 3711 §4.3.3 with key derivation rate 0, for one 16-byte output
/// block, as webrtc-srtp's `aes_cm_key_derivation` computes it for a 12-byte salt: the
/// salt is left-aligned in a 16-byte block, the label XORed into byte 7 and the block
/// counter (0) occupies the last two bytes.
fn prf_block(cipher: &aes::Aes128Enc, master_salt: &[u8; SALT_LEN], label: u8) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..SALT_LEN].copy_from_slice(master_salt);
    block[7] ^= label;
    let mut out = aes::Block::from(block);
    cipher.encrypt_block(&mut out);
    out.into()
}

/// The AES-CM PRF of RFC 3711 §4.3.3 (key derivation rate 0) with a 14-byte master salt,
/// filling `out` from as many 16-byte blocks as it needs: the salt in bytes 0..14 with the
/// label XORed into byte 7, the block counter in bytes 14..16.
fn cm_prf(cipher: &aes::Aes128Enc, master_salt: &[u8; CM_SALT_LEN], label: u8, out: &mut [u8]) {
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = Zeroizing::new([0u8; 16]);
        block[..CM_SALT_LEN].copy_from_slice(master_salt);
        block[7] ^= label;
        block[14..].copy_from_slice(&(i as u16).to_be_bytes());
        // Encrypted where it lies, so the PRF output is wiped with the block.
        cipher.encrypt_block((&mut *block).into());
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

/// One AES128_CM_HMAC_SHA1_80 session (SRTP or SRTCP): the keyed AES for the keystream,
/// the session salt, and the HMAC-SHA1 state after its key (cloned per packet, on the
/// stack).
struct CmSession {
    cipher: aes::Aes128Enc,
    salt: [u8; CM_SALT_LEN],
    mac: Hmac<Sha1>,
}

impl CmSession {
    /// Derive the session keys for `labels` (encryption, authentication, salt).
    fn derive(
        prf: &aes::Aes128Enc,
        master_salt: &[u8; CM_SALT_LEN],
        labels: [u8; 3],
    ) -> Result<CmSession, FastSrtpError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        let mut auth = Zeroizing::new([0u8; CM_AUTH_KEY_LEN]);
        let mut salt = [0u8; CM_SALT_LEN];
        cm_prf(prf, master_salt, labels[0], &mut *key);
        cm_prf(prf, master_salt, labels[1], &mut *auth);
        cm_prf(prf, master_salt, labels[2], &mut salt);
        let cipher = aes::Aes128Enc::new_from_slice(&*key);
        let mac = <Hmac<Sha1> as KeyInit>::new_from_slice(&*auth);
        Ok(CmSession {
            cipher: cipher.map_err(|_| FastSrtpError::KeyLength(KEY_LEN))?,
            salt,
            mac: mac.map_err(|_| FastSrtpError::KeyLength(CM_AUTH_KEY_LEN))?,
        })
    }

    /// XOR the AES-CM keystream for (`ssrc`, `index`) into `data` (RFC 3711 §4.1.1: IV =
    /// salt·2^16 XOR SSRC·2^64 XOR index·2^16; for SRTCP the index is the SRTCP index).
    fn apply(&self, ssrc: u32, index: u64, data: &mut [u8]) -> Result<(), FastSrtpError> {
        let mut iv = [0u8; 16];
        iv[..CM_SALT_LEN].copy_from_slice(&self.salt);
        for (v, b) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *v ^= b;
        }
        for (v, b) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..8]) {
            *v ^= b;
        }
        let core = ctr::CtrCore::<&aes::Aes128Enc, ctr::flavors::Ctr128BE>::inner_iv_init(
            &self.cipher,
            (&iv).into(),
        );
        // A 128-bit counter runs out only past 2^128 blocks: no packet gets there.
        core.try_apply_keystream_partial(data.into())
            .map_err(|_| FastSrtpError::Truncated)
    }

    /// The 80-bit tag over `parts` (RFC 3711 §4.2: HMAC-SHA1 over the authenticated
    /// portion, and for SRTP the ROC after it).
    fn tag(&self, parts: &[&[u8]]) -> [u8; CM_TAG_LEN] {
        let mut mac = self.mac.clone();
        for p in parts {
            mac.update(p);
        }
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; CM_TAG_LEN];
        tag.copy_from_slice(&full[..CM_TAG_LEN]);
        tag
    }

    /// Whether `tag` is the tag over `parts`, in constant time.
    fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        for p in parts {
            mac.update(p);
        }
        mac.verify_truncated_left(tag).is_ok()
    }
}

/// Session salts are overwritten when the session goes away (the AES and HMAC states
/// zero themselves only with their crates' `zeroize` features).
impl Drop for CmSession {
    fn drop(&mut self) {
        for b in self.salt.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference to a u8.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// A context's cipher suite and session keys. Held inline: a context is made once per
/// hop direction, and a box would cost a pointer chase on every packet.
#[allow(clippy::large_enum_variant)]
enum Suite {
    Gcm {
        srtp_key: LessSafeKey,
        srtcp_key: LessSafeKey,
        srtp_salt: [u8; SALT_LEN],
        srtcp_salt: [u8; SALT_LEN],
    },
    Cm {
        srtp: CmSession,
        srtcp: CmSession,
    },
}

fn gcm_key(key: &[u8]) -> Result<LessSafeKey, FastSrtpError> {
    UnboundKey::new(&AES_128_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| FastSrtpError::KeyLength(key.len()))
}

fn salt_array(salt: &[u8]) -> Result<[u8; SALT_LEN], FastSrtpError> {
    salt.try_into()
        .map_err(|_| FastSrtpError::SaltLength(salt.len()))
}

/// One direction-agnostic SRTP + SRTCP cryptographic context for AEAD_AES_128_GCM or
/// AES128_CM_HMAC_SHA1_80, working in place on caller buffers.
///
/// Like webrtc-srtp's `Context`, a context is normally used for one direction only (one
/// for what we send, one for what we receive); the send and receive state of an SSRC are
/// nevertheless kept apart, so using one context for both does not break either.
pub struct FastSrtpContext {
    suite: Suite,
    rtp: HashMap<u32, RtpSsrcState>,
    rtcp: HashMap<u32, RtcpSsrcState>,
    max_ssrcs: usize,
}

/// Key material stays out of logs: only the counts are shown.
impl fmt::Debug for FastSrtpContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastSrtpContext")
            .field("profile", &self.profile())
            .field("rtp_ssrcs", &self.rtp.len())
            .field("rtcp_ssrcs", &self.rtcp.len())
            .field("max_ssrcs", &self.max_ssrcs)
            .finish_non_exhaustive()
    }
}

/// Session salts are overwritten when the context goes away (ring zeroes its own keys
/// only on some platforms; this is best effort for the part we own).
impl Drop for FastSrtpContext {
    fn drop(&mut self) {
        if let Suite::Gcm {
            srtp_salt,
            srtcp_salt,
            ..
        } = &mut self.suite
        {
            for b in srtp_salt.iter_mut().chain(srtcp_salt.iter_mut()) {
                // SAFETY: `b` is a valid, aligned, exclusive reference to a u8.
                unsafe { std::ptr::write_volatile(b, 0) };
            }
        }
    }
}

impl FastSrtpContext {
    /// Builds a context from the DTLS-SRTP master key (16 bytes) and master salt
    /// (12 bytes), deriving the SRTP and SRTCP session keys and salts with the AES-CM PRF
    /// (labels 0x00/0x02 for SRTP, 0x03/0x05 for SRTCP), exactly as webrtc-srtp does.
    pub fn new(master_key: &[u8], master_salt: &[u8]) -> Result<Self, FastSrtpError> {
        let prf = aes::Aes128Enc::new_from_slice(master_key)
            .map_err(|_| FastSrtpError::KeyLength(master_key.len()))?;
        let master_salt = salt_array(master_salt)?;
        // Wiped when dropped: the contexts keep their own copies.
        let srtp_key = Zeroizing::new(prf_block(&prf, &master_salt, LABEL_SRTP_ENCRYPTION));
        let srtcp_key = Zeroizing::new(prf_block(&prf, &master_salt, LABEL_SRTCP_ENCRYPTION));
        let srtp_salt = Zeroizing::new(prf_block(&prf, &master_salt, LABEL_SRTP_SALT));
        let srtcp_salt = Zeroizing::new(prf_block(&prf, &master_salt, LABEL_SRTCP_SALT));
        Self::from_session_keys(
            &*srtp_key,
            &srtp_salt[..SALT_LEN],
            &*srtcp_key,
            &srtcp_salt[..SALT_LEN],
        )
    }

    /// Builds a context from already-derived session keys and salts. This is what the
    /// RFC 7714 §16/§17 test vectors specify (they skip key derivation); production code
    /// wants [`FastSrtpContext::new`].
    pub fn from_session_keys(
        srtp_key: &[u8],
        srtp_salt: &[u8],
        srtcp_key: &[u8],
        srtcp_salt: &[u8],
    ) -> Result<Self, FastSrtpError> {
        Ok(Self::with_suite(Suite::Gcm {
            srtp_key: gcm_key(srtp_key)?,
            srtcp_key: gcm_key(srtcp_key)?,
            srtp_salt: salt_array(srtp_salt)?,
            srtcp_salt: salt_array(srtcp_salt)?,
        }))
    }

    /// An AES128_CM_HMAC_SHA1_80 context from the DTLS-SRTP master key (16 bytes) and
    /// master salt (14 bytes), with RFC 3711's key derivation (labels 0-2 for SRTP, 3-5
    /// for SRTCP), as webrtc-srtp does.
    pub fn new_cm(master_key: &[u8], master_salt: &[u8]) -> Result<Self, FastSrtpError> {
        let prf = aes::Aes128Enc::new_from_slice(master_key)
            .map_err(|_| FastSrtpError::KeyLength(master_key.len()))?;
        let master_salt: Zeroizing<[u8; CM_SALT_LEN]> = Zeroizing::new(
            master_salt
                .try_into()
                .map_err(|_| FastSrtpError::SaltLength(master_salt.len()))?,
        );
        let srtp = CmSession::derive(
            &prf,
            &master_salt,
            [LABEL_SRTP_ENCRYPTION, LABEL_SRTP_AUTH, LABEL_SRTP_SALT],
        )?;
        let srtcp = CmSession::derive(
            &prf,
            &master_salt,
            [LABEL_SRTCP_ENCRYPTION, LABEL_SRTCP_AUTH, LABEL_SRTCP_SALT],
        )?;
        Ok(Self::with_suite(Suite::Cm { srtp, srtcp }))
    }

    fn with_suite(suite: Suite) -> Self {
        Self {
            suite,
            rtp: HashMap::new(),
            rtcp: HashMap::new(),
            max_ssrcs: DEFAULT_MAX_SSRCS,
        }
    }

    /// The SRTP profile, as its RFC name.
    pub fn profile(&self) -> &'static str {
        match self.suite {
            Suite::Gcm { .. } => "AEAD_AES_128_GCM",
            Suite::Cm { .. } => "AES128_CM_HMAC_SHA1_80",
        }
    }

    /// Bytes protecting adds to an RTP packet: the tag.
    pub fn rtp_overhead(&self) -> usize {
        match self.suite {
            Suite::Gcm { .. } => RTP_OVERHEAD,
            Suite::Cm { .. } => CM_TAG_LEN,
        }
    }

    /// Bytes protecting adds to an RTCP packet: the tag and the E flag + index word.
    pub fn rtcp_overhead(&self) -> usize {
        match self.suite {
            Suite::Gcm { .. } => RTCP_OVERHEAD,
            Suite::Cm { .. } => CM_TAG_LEN + SRTCP_INDEX_LEN,
        }
    }

    /// Caps how many SSRCs the context tracks (per protocol); packets for further SSRCs
    /// fail with [`FastSrtpError::TooManySsrcs`]. Bounds memory against a peer that
    /// cycles SSRCs.
    pub fn with_max_ssrcs(mut self, max_ssrcs: usize) -> Self {
        self.max_ssrcs = max_ssrcs;
        self
    }

    /// Sets the rollover counter to assume for the next packet of `ssrc` in both
    /// directions, forgetting what was received (e.g. when the ROC is signalled out of band
    /// for a stream joined mid-way). The send side forgets what it protected only when
    /// `roc` lies beyond every index it protected; otherwise it keeps its window (and its
    /// ROC), since going back would reuse nonces. Allocates if `ssrc` is new.
    pub fn set_roc(&mut self, ssrc: u32, roc: u32) {
        let old = self.rtp.get(&ssrc).copied().unwrap_or_default();
        let keep = old.tx.started && old.tx.highest >= u64::from(roc) << 16;
        let (tx, tx_floor) = if old.tx.started && !keep {
            // Everything up to the old highest may have been sealed.
            (
                ReplayWindow::default(),
                old.tx_floor.max(old.tx.highest + 1),
            )
        } else {
            (old.tx, old.tx_floor)
        };
        self.rtp.insert(
            ssrc,
            RtpSsrcState {
                initial_roc: roc,
                tx,
                tx_floor,
                ..RtpSsrcState::default()
            },
        );
    }

    /// The rollover counter of the highest index sent or received for `ssrc`.
    pub fn roc(&self, ssrc: u32) -> Option<u32> {
        let s = self.rtp.get(&ssrc)?;
        let highest = match (s.tx.started, s.rx.started) {
            (true, true) => s.tx.highest.max(s.rx.highest),
            (true, false) => s.tx.highest,
            (false, true) => s.rx.highest,
            (false, false) => return Some(s.initial_roc),
        };
        Some((highest >> 16) as u32)
    }

    /// Sets the last SRTCP index used to protect for `ssrc`, so the next protected packet
    /// carries `index + 1` (webrtc-srtp's `set_index` semantics). It never moves the index
    /// back: an index below the last one used is ignored, since reusing one would reuse a
    /// nonce. Allocates if `ssrc` is new.
    pub fn set_srtcp_index(&mut self, ssrc: u32, index: u32) {
        let e = self.rtcp.entry(ssrc).or_default();
        e.tx_index = e.tx_index.max(index & MAX_SRTCP_INDEX);
    }

    /// Number of SSRCs with SRTP state.
    pub fn rtp_ssrc_count(&self) -> usize {
        self.rtp.len()
    }

    /// Number of SSRCs with SRTCP state.
    pub fn rtcp_ssrc_count(&self) -> usize {
        self.rtcp.len()
    }

    /// Protects the RTP packet in `buf` in place and appends the tag, returning the new
    /// length. Reserve [`MAX_RTP_OVERHEAD`] spare capacity to avoid a reallocation.
    /// On error `buf` is left at its original length (its payload bytes unchanged).
    pub fn protect_rtp(&mut self, buf: &mut Vec<u8>) -> Result<usize, FastSrtpError> {
        let len = buf.len();
        buf.resize(len + self.rtp_overhead(), 0);
        match self.protect_rtp_in(buf, len) {
            Ok(n) => Ok(n),
            Err(e) => {
                buf.truncate(len);
                Err(e)
            }
        }
    }

    /// Protects the `len`-byte RTP packet at the start of `buf` in place, writing the tag
    /// at `buf[len..len + overhead]`; returns `len + overhead` (see
    /// [`FastSrtpContext::rtp_overhead`]). Refuses, with [`FastSrtpError::IndexReused`]
    /// and `buf` untouched, an index it protected before for the packet's SSRC or one
    /// more than [`REPLAY_WINDOW`] behind the highest.
    pub fn protect_rtp_in(&mut self, buf: &mut [u8], len: usize) -> Result<usize, FastSrtpError> {
        let overhead = self.rtp_overhead();
        let out_len = len + overhead;
        if buf.len() < out_len {
            return Err(FastSrtpError::NoRoom(overhead));
        }
        let (packet, rest) = buf.split_at_mut(len);
        let header_len = rtp_header_len(packet)?;
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = read_u32(packet, 8)?;

        let state = self.rtp.get(&ssrc).copied();
        let (tx, initial_roc) =
            state.map_or((ReplayWindow::default(), 0), |s| (s.tx, s.initial_roc));
        let highest = tx.started.then_some(tx.highest);
        let index =
            estimate_index(highest, initial_roc, seq).ok_or(FastSrtpError::IndexExhausted(ssrc))?;
        let floor = state.map_or(0, |s| s.tx_floor);
        if !tx.check(index) || index < floor {
            return Err(FastSrtpError::IndexReused { ssrc, index });
        }
        if state.is_none() && self.rtp.len() >= self.max_ssrcs {
            return Err(FastSrtpError::TooManySsrcs);
        }

        match &self.suite {
            Suite::Gcm {
                srtp_key,
                srtp_salt,
                ..
            } => {
                let nonce = rtp_nonce(srtp_salt, ssrc, index);
                let (header, payload) = packet.split_at_mut(header_len);
                let tag = srtp_key
                    .seal_in_place_separate_tag(nonce, Aad::from(&*header), payload)
                    .map_err(|_| FastSrtpError::Truncated)?;
                rest[..TAG_LEN].copy_from_slice(tag.as_ref());
            }
            Suite::Cm { srtp, .. } => {
                srtp.apply(ssrc, index, &mut packet[header_len..])?;
                let roc = ((index >> 16) as u32).to_be_bytes();
                rest[..CM_TAG_LEN].copy_from_slice(&srtp.tag(&[packet, &roc]));
            }
        }

        self.rtp.entry(ssrc).or_default().tx.accept(index);
        Ok(out_len)
    }

    /// Verifies and decrypts the SRTP packet `buf` in place; returns the plaintext RTP
    /// length (`buf.len()` less the tag). Truncate the buffer to it. On error the packet
    /// must be dropped: its payload may have been overwritten.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, FastSrtpError> {
        let header_len = rtp_header_len(buf)?;
        if buf.len() < header_len + self.rtp_overhead() {
            return Err(FastSrtpError::Truncated);
        }
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = read_u32(buf, 8)?;

        let state = self.rtp.get(&ssrc).copied();
        let (rx, initial_roc) =
            state.map_or((ReplayWindow::default(), 0), |s| (s.rx, s.initial_roc));
        let highest = rx.started.then_some(rx.highest);
        let index =
            estimate_index(highest, initial_roc, seq).ok_or(FastSrtpError::IndexExhausted(ssrc))?;
        if !rx.check(index) {
            return Err(FastSrtpError::Replay { ssrc, index });
        }
        if state.is_none() && self.rtp.len() >= self.max_ssrcs {
            return Err(FastSrtpError::TooManySsrcs);
        }

        let out_len = match &self.suite {
            Suite::Gcm {
                srtp_key,
                srtp_salt,
                ..
            } => {
                let nonce = rtp_nonce(srtp_salt, ssrc, index);
                let (header, payload) = buf.split_at_mut(header_len);
                let plain = srtp_key
                    .open_in_place(nonce, Aad::from(&*header), payload)
                    .map_err(|_| FastSrtpError::AuthFailed)?;
                header_len + plain.len()
            }
            Suite::Cm { srtp, .. } => {
                let n = buf.len() - CM_TAG_LEN;
                let (packet, tag) = buf.split_at_mut(n);
                let roc = ((index >> 16) as u32).to_be_bytes();
                // Authenticate before decrypting (RFC 3711 §3.3, step 5).
                if !srtp.verify(&[packet, &roc], tag) {
                    return Err(FastSrtpError::AuthFailed);
                }
                srtp.apply(ssrc, index, &mut packet[header_len..])?;
                n
            }
        };

        self.rtp.entry(ssrc).or_default().rx.accept(index);
        Ok(out_len)
    }

    /// Protects the RTCP (compound) packet in `buf` in place and appends the tag and the
    /// E flag + SRTCP index word, returning the new length. Reserve [`RTCP_OVERHEAD`]
    /// spare capacity to avoid a reallocation. On error `buf` keeps its original length.
    pub fn protect_rtcp(&mut self, buf: &mut Vec<u8>) -> Result<usize, FastSrtpError> {
        let len = buf.len();
        buf.resize(len + self.rtcp_overhead(), 0);
        match self.protect_rtcp_in(buf, len) {
            Ok(n) => Ok(n),
            Err(e) => {
                buf.truncate(len);
                Err(e)
            }
        }
    }

    /// Protects the `len`-byte RTCP packet at the start of `buf` in place, writing tag and
    /// index word after it; returns `len` plus [`FastSrtpContext::rtcp_overhead`].
    ///
    /// Layout, GCM (RFC 7714 §9.3): header (8) | ciphertext | tag (16) | E + index (4),
    /// AAD = header || E + index. AES-CM (RFC 3711 §3.4): header (8) | ciphertext |
    /// E + index (4) | tag (10), the tag over everything before it.
    pub fn protect_rtcp_in(&mut self, buf: &mut [u8], len: usize) -> Result<usize, FastSrtpError> {
        let overhead = self.rtcp_overhead();
        let out_len = len + overhead;
        if buf.len() < out_len {
            return Err(FastSrtpError::NoRoom(overhead));
        }
        let (packet, rest) = buf.split_at_mut(len);
        let ssrc = rtcp_header(packet)?;

        let state = self.rtcp.get(&ssrc).copied();
        if state.is_none() && self.rtcp.len() >= self.max_ssrcs {
            return Err(FastSrtpError::TooManySsrcs);
        }
        let last = state.map_or(0, |s| s.tx_index);
        if last >= MAX_SRTCP_INDEX {
            return Err(FastSrtpError::IndexExhausted(ssrc));
        }
        let index = last + 1;
        let word = (index | SRTCP_E_FLAG).to_be_bytes();

        match &self.suite {
            Suite::Gcm {
                srtcp_key,
                srtcp_salt,
                ..
            } => {
                let aad = rtcp_aad(packet, word);
                let nonce = rtcp_nonce(srtcp_salt, ssrc, index);
                let tag = srtcp_key
                    .seal_in_place_separate_tag(
                        nonce,
                        Aad::from(aad),
                        &mut packet[RTCP_HEADER_LEN..],
                    )
                    .map_err(|_| FastSrtpError::Truncated)?;
                rest[..TAG_LEN].copy_from_slice(tag.as_ref());
                rest[TAG_LEN..RTCP_OVERHEAD].copy_from_slice(&word);
            }
            Suite::Cm { srtcp, .. } => {
                srtcp.apply(ssrc, u64::from(index), &mut packet[RTCP_HEADER_LEN..])?;
                rest[..SRTCP_INDEX_LEN].copy_from_slice(&word);
                let tag = srtcp.tag(&[packet, &word]);
                rest[SRTCP_INDEX_LEN..SRTCP_INDEX_LEN + CM_TAG_LEN].copy_from_slice(&tag);
            }
        }

        self.rtcp.entry(ssrc).or_default().tx_index = index;
        Ok(out_len)
    }

    /// Verifies and decrypts the SRTCP packet `buf` in place; returns the plaintext RTCP
    /// length (`buf.len()` less [`FastSrtpContext::rtcp_overhead`]). On error the packet
    /// must be dropped.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, FastSrtpError> {
        if buf.len() < RTCP_HEADER_LEN + self.rtcp_overhead() {
            return Err(FastSrtpError::Truncated);
        }
        let ssrc = rtcp_header(buf)?;
        // Where the E + index word lies: last (GCM), or before the tag (AES-CM).
        let word_at = match self.suite {
            Suite::Gcm { .. } => buf.len() - SRTCP_INDEX_LEN,
            Suite::Cm { .. } => buf.len() - CM_TAG_LEN - SRTCP_INDEX_LEN,
        };
        let word_value = read_u32(buf, word_at)?;
        if word_value & SRTCP_E_FLAG == 0 {
            return Err(FastSrtpError::UnencryptedSrtcp);
        }
        let index = word_value & MAX_SRTCP_INDEX;

        let state = self.rtcp.get(&ssrc).copied();
        let rx = state.map_or(ReplayWindow::default(), |s| s.rx);
        if !rx.check(u64::from(index)) {
            return Err(FastSrtpError::Replay {
                ssrc,
                index: u64::from(index),
            });
        }
        if state.is_none() && self.rtcp.len() >= self.max_ssrcs {
            return Err(FastSrtpError::TooManySsrcs);
        }

        let out_len = match &self.suite {
            Suite::Gcm {
                srtcp_key,
                srtcp_salt,
                ..
            } => {
                let aad = rtcp_aad(buf, word_value.to_be_bytes());
                let nonce = rtcp_nonce(srtcp_salt, ssrc, index);
                let sealed = &mut buf[RTCP_HEADER_LEN..word_at];
                let plain = srtcp_key
                    .open_in_place(nonce, Aad::from(aad), sealed)
                    .map_err(|_| FastSrtpError::AuthFailed)?;
                RTCP_HEADER_LEN + plain.len()
            }
            Suite::Cm { srtcp, .. } => {
                let (authed, tag) = buf.split_at_mut(word_at + SRTCP_INDEX_LEN);
                if !srtcp.verify(&[authed], tag) {
                    return Err(FastSrtpError::AuthFailed);
                }
                srtcp.apply(
                    ssrc,
                    u64::from(index),
                    &mut authed[RTCP_HEADER_LEN..word_at],
                )?;
                word_at
            }
        };

        self.rtcp
            .entry(ssrc)
            .or_default()
            .rx
            .accept(u64::from(index));
        Ok(out_len)
    }
}

/// Checks the RTCP version and returns the sender SSRC (bytes 4..8).
fn rtcp_header(packet: &[u8]) -> Result<u32, FastSrtpError> {
    let first = *packet.first().ok_or(FastSrtpError::Truncated)?;
    if first >> 6 != 2 {
        return Err(FastSrtpError::BadVersion);
    }
    read_u32(packet, 4)
}

/// SRTCP AAD (RFC 7714 §9.3, encrypted case): the 8-byte RTCP header, then the E flag +
/// SRTCP index word. `packet` is at least 8 bytes long (checked by callers).
fn rtcp_aad(packet: &[u8], word: [u8; 4]) -> [u8; 12] {
    let mut aad = [0u8; 12];
    aad[..RTCP_HEADER_LEN].copy_from_slice(&packet[..RTCP_HEADER_LEN]);
    aad[RTCP_HEADER_LEN..].copy_from_slice(&word);
    aad
}

/// SRTP IV (RFC 7714 §8.1): (00 00 || SSRC || ROC || SEQ) XOR session salt, where
/// ROC || SEQ is the 48-bit packet index.
fn rtp_nonce(salt: &[u8; SALT_LEN], ssrc: u32, index: u64) -> Nonce {
    let mut iv = [0u8; SALT_LEN];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..12].copy_from_slice(&index.to_be_bytes()[2..8]);
    for (v, s) in iv.iter_mut().zip(salt) {
        *v ^= s;
    }
    Nonce::assume_unique_for_key(iv)
}

/// SRTCP IV (RFC 7714 §9.1): (00 00 || SSRC || 00 00 || 0 || 31-bit index) XOR salt.
fn rtcp_nonce(salt: &[u8; SALT_LEN], ssrc: u32, index: u32) -> Nonce {
    let mut iv = [0u8; SALT_LEN];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[8..12].copy_from_slice(&(index & MAX_SRTCP_INDEX).to_be_bytes());
    for (v, s) in iv.iter_mut().zip(salt) {
        *v ^= s;
    }
    Nonce::assume_unique_for_key(iv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex literal"))
            .collect()
    }

    /// RFC 3711 Appendix B.3: the AES-CM key derivation's cipher key, salt and the start
    /// of the authentication key.
    #[test]
    fn cm_key_derivation_matches_rfc3711_b3() {
        let prf = aes::Aes128Enc::new_from_slice(&hex("E1F97A0D3E018BE0D64FA32C06DE4139"))
            .expect("16-byte key");
        let salt: [u8; CM_SALT_LEN] = hex("0EC675AD498AFEEBB6960B3AABE6")
            .try_into()
            .expect("14-byte salt");
        let mut key = [0u8; 16];
        cm_prf(&prf, &salt, LABEL_SRTP_ENCRYPTION, &mut key);
        assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut k_s = [0u8; CM_SALT_LEN];
        cm_prf(&prf, &salt, LABEL_SRTP_SALT, &mut k_s);
        assert_eq!(k_s.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut auth = [0u8; CM_AUTH_KEY_LEN];
        cm_prf(&prf, &salt, LABEL_SRTP_AUTH, &mut auth);
        assert_eq!(
            auth.to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    #[test]
    fn replay_window_basics() {
        let mut w = ReplayWindow::default();
        assert!(w.check(1000));
        w.accept(1000);
        assert!(!w.check(1000));
        assert!(w.check(999));
        w.accept(999);
        assert!(!w.check(999));
        assert!(w.check(1001));
        w.accept(1000 + 200);
        assert!(!w.check(1000));
        assert!(w.check(1200 - 127));
        assert!(!w.check(1200 - 128));
    }

    #[test]
    fn roc_estimate_follows_rfc3711() {
        assert_eq!(estimate_index(None, 0, 65530), Some(65530));
        assert_eq!(estimate_index(Some(65535), 0, 0), Some(1 << 16));
        assert_eq!(estimate_index(Some(1 << 16), 0, 65535), Some(65535));
        assert_eq!(estimate_index(Some(100), 0, 65000), Some(65000));
        assert_eq!(estimate_index(Some(MAX_SRTP_INDEX), 0, 1), None);
    }

    fn rtp(ssrc: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 111];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    /// The nonce reuse of issue 12: a relay re-protecting for one receiver got A's packet
    /// and then B's forgery with A's SSRC and sequence number, and sealed both under the
    /// same nonce. XOR of the two ciphertexts is then the XOR of the two plaintexts (GCM
    /// is a stream cipher), and the two tags give away the GHASH key. The context must
    /// refuse the second seal and leave the buffer as it was.
    #[test]
    fn protect_refuses_an_index_it_already_sealed() {
        let mut tx = FastSrtpContext::new(&[7; 16], &[9; 12]).unwrap();
        let mut a = rtp(0xa, 5, b"alice's frame....");
        let a_len = a.len();
        assert_eq!(tx.protect_rtp(&mut a), Ok(a_len + TAG_LEN));

        let mut forged = rtp(0xa, 5, b"mallory's frame..");
        let before = forged.clone();
        assert_eq!(
            tx.protect_rtp(&mut forged),
            Err(FastSrtpError::IndexReused {
                ssrc: 0xa,
                index: 5
            })
        );
        assert_eq!(forged, before, "a refused packet is left as it was");
        assert_eq!(
            FastSrtpError::IndexReused { ssrc: 0, index: 0 }.kind(),
            "index_reused"
        );

        // The same packet again (a retransmission sent as is) is refused too: same nonce.
        let mut again = rtp(0xa, 5, b"alice's frame....");
        assert!(matches!(
            tx.protect_rtp(&mut again),
            Err(FastSrtpError::IndexReused { .. })
        ));
        // Another SSRC has its own indices.
        assert!(tx.protect_rtp(&mut rtp(0xb, 5, b"x")).is_ok());
    }

    #[test]
    fn protect_takes_reordered_fresh_indices_and_refuses_old_ones() {
        let mut tx = FastSrtpContext::new(&[7; 16], &[9; 12]).unwrap();
        for seq in [1000u16, 1002, 1001, 1003] {
            assert!(tx.protect_rtp(&mut rtp(1, seq, b"p")).is_ok(), "{seq}");
        }
        assert!(tx.protect_rtp(&mut rtp(1, 1001, b"q")).is_err());
        // Behind the window: it may have been sealed, so it is refused (libsrtp's
        // replay_old).
        assert!(tx.protect_rtp(&mut rtp(1, 1003 + 200, b"p")).is_ok());
        assert_eq!(
            tx.protect_rtp(&mut rtp(1, 1003, b"z")),
            Err(FastSrtpError::IndexReused {
                ssrc: 1,
                index: 1003
            })
        );
        // Across a rollover the full index counts: seq 1000 of ROC 1 is new.
        let mut seq = 1203u16;
        for _ in 0..(u16::MAX / 0x4000 + 1) * 4 {
            seq = seq.wrapping_add(0x4000);
            assert!(tx.protect_rtp(&mut rtp(1, seq, b"p")).is_ok());
        }
        assert!(tx.roc(1).is_some_and(|r| r >= 1));
        assert!(tx
            .protect_rtp(&mut rtp(1, seq.wrapping_add(1), b"p"))
            .is_ok());
    }

    #[test]
    fn set_roc_and_set_srtcp_index_never_go_back() {
        let mut tx = FastSrtpContext::new(&[7; 16], &[9; 12]).unwrap();
        assert!(tx.protect_rtp(&mut rtp(3, 10, b"p")).is_ok());
        tx.set_roc(3, 0);
        assert!(tx.protect_rtp(&mut rtp(3, 10, b"p")).is_err());
        // Forward is fine: every index of ROC 2 is new.
        tx.set_roc(3, 2);
        assert!(tx.protect_rtp(&mut rtp(3, 10, b"p")).is_ok());
        assert_eq!(tx.roc(3), Some(2));
        // A window moved forward does not forget what it sealed: index 0xfff0 (ROC 0),
        // then ROC 1 signalled, then seq 0xfff0 again (estimated back to ROC 0) is refused.
        assert!(tx.protect_rtp(&mut rtp(4, 0xfff0, b"p")).is_ok());
        tx.set_roc(4, 1);
        assert!(tx.protect_rtp(&mut rtp(4, 5, b"p")).is_ok());
        assert_eq!(
            tx.protect_rtp(&mut rtp(4, 0xfff0, b"q")),
            Err(FastSrtpError::IndexReused {
                ssrc: 4,
                index: 0xfff0
            })
        );

        let mut rtcp = vec![0x80, 201, 0, 1, 0, 0, 0, 3];
        let n = rtcp.len();
        assert!(tx.protect_rtcp(&mut rtcp).is_ok());
        let first = u32::from_be_bytes(rtcp[rtcp.len() - 4..].try_into().unwrap());
        tx.set_srtcp_index(3, 0);
        let mut next = vec![0x80, 201, 0, 1, 0, 0, 0, 3];
        assert!(tx.protect_rtcp(&mut next).is_ok());
        let second = u32::from_be_bytes(next[n + TAG_LEN..].try_into().unwrap());
        assert_eq!(second & MAX_SRTCP_INDEX, (first & MAX_SRTCP_INDEX) + 1);
    }

    #[test]
    fn header_len_handles_csrcs_and_extension() {
        let mut p = vec![0x92u8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        p.extend_from_slice(&[0; 8]); // 2 CSRCs
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]);
        assert_eq!(rtp_header_len(&p), Ok(28));
        assert_eq!(rtp_header_len(&p[..27]), Err(FastSrtpError::Truncated));
        assert_eq!(rtp_header_len(&[0x40; 12]), Err(FastSrtpError::BadVersion));
    }
}
