//! SFrame: end-to-end encryption of media frames (RFC 9605).
//!
//! * [`Sender`] seals frames for one KID with a strictly increasing CTR and refuses to reuse
//!   a counter; [`Receiver`] opens frames for many KIDs with a per-KID replay window and the
//!   §5.1 sender-key ratchet.
//! * The per-frame paths work in place on caller buffers and do not allocate after warm-up;
//!   key derivation and the AES key schedule happen once per key ([`FrameKey`]).
//! * [`encrypt`]/[`decrypt`] are stateless one-shot helpers (no replay protection) used by
//!   the test-vector runner in [`vectors`] and the CLI.
//!
//! All five RFC 9605 suites are supported; see [`CipherSuite`].

mod aead;
mod error;
mod frame;
mod header;
pub mod kdf;
mod ratchet;
mod receiver;
mod replay;
mod sender;
mod suite;
pub mod vectors;

pub use aead::{aead_decrypt, aead_encrypt, MAX_PLAINTEXT_LEN};
pub use error::{HeaderError, SframeError};
pub use frame::{FrameKey, OpenedFrame};
pub use header::{EncodedHeader, Header, MAX_HEADER_LEN};
pub use kdf::{ratchet_base_key, SecretBytes};
pub use ratchet::RatchetParams;
pub use receiver::{Receiver, DEFAULT_MAX_RATCHET_JUMP, DEFAULT_RATCHET_RETENTION};
pub use replay::{ReplayWindow, DEFAULT_REPLAY_WINDOW, MAX_REPLAY_WINDOW};
pub use sender::Sender;
pub use suite::CipherSuite;
pub use vectors::{open_hex, run_file, seal_hex, VectorSummary, VectorsError};

/// Seals one frame with an explicit (KID, CTR): returns `header || ciphertext || tag`.
///
/// Stateless, so nothing stops counter reuse: intended for test vectors and tools. Live
/// traffic should go through [`Sender`].
pub fn encrypt(
    suite: CipherSuite,
    base_key: &[u8],
    kid: u64,
    ctr: u64,
    metadata: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SframeError> {
    let key = FrameKey::new(suite, kid, base_key);
    let mut out = vec![0u8; key.sealed_len(ctr, plaintext.len())];
    let n = key.seal_to_slice(ctr, metadata, plaintext, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// Opens one frame with the key derived from `base_key` for the KID in its header; returns
/// `(kid, ctr, plaintext)`.
///
/// Stateless, so there is no replay protection: intended for test vectors and tools. Live
/// traffic should go through [`Receiver`].
pub fn decrypt(
    suite: CipherSuite,
    base_key: &[u8],
    metadata: &[u8],
    ciphertext: &[u8],
) -> Result<(u64, u64, Vec<u8>), SframeError> {
    let (header, _) = Header::decode(ciphertext)?;
    let key = FrameKey::new(suite, header.kid, base_key);
    let mut buf = ciphertext.to_vec();
    let opened = key.open_in_place(metadata, &mut buf)?;
    let len = opened.plaintext.len();
    buf.copy_within(opened.plaintext, 0);
    buf.truncate(len);
    Ok((opened.kid, opened.ctr, buf))
}
