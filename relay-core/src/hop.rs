//! What the forwarder needs of a participant's hop SRTP state, as a trait: the core
//! routes and checks packets, the driver supplies the cipher. The relay implements it
//! over `blindrelay_transport::hop::HopContext` (in-place AES-GCM, or webrtc-srtp, whose
//! dependencies pull in tokio); keeping that type out of the core keeps the core free of
//! IO crates. The forwarder is generic over it, so the hot path has no dynamic dispatch.

use std::ops::Range;
use thiserror::Error;

/// Why a hop refused a packet, in the forwarder's drop vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HopError {
    #[error("SRTP authentication failed")]
    AuthFailed,
    #[error("SRTP replay")]
    Replay,
    #[error("malformed SRTP")]
    Malformed,
    #[error("SRTP protect failed")]
    Protect,
    /// Protecting would have reused an SRTP index (a GCM nonce) on the receiver's hop.
    #[error("SRTP send index already used")]
    IndexReused,
}

/// SRTP state for one direction of one participant's hop.
///
/// Each method appends to or fills a buffer the forwarder reuses, so an implementation
/// that transforms in place allocates nothing per packet (`relay/tests/zero_alloc.rs`).
pub trait HopCipher {
    /// Unprotect an SRTP packet into `scratch`; returns the clear RTP packet.
    fn unprotect_rtp<'a>(
        &mut self,
        input: &[u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], HopError>;

    /// [`HopCipher::unprotect_rtp`] of a packet the caller owns and lets the cipher
    /// overwrite: an in-place cipher opens it where it lies, with no copy into `scratch`.
    /// On error `buf` may hold anything.
    fn unprotect_rtp_in_place<'a>(
        &mut self,
        buf: &'a mut [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], HopError> {
        self.unprotect_rtp(buf, scratch)
    }

    /// Unprotect an SRTCP compound packet into `scratch`; returns the clear compound.
    fn unprotect_rtcp<'a>(
        &mut self,
        input: &[u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], HopError>;

    /// Protect a clear RTP packet, appending the SRTP packet to `arena`; returns where it
    /// landed. On error `arena` is left as it was.
    fn protect_rtp_into(
        &mut self,
        clear: &[u8],
        arena: &mut Vec<u8>,
    ) -> Result<Range<usize>, HopError>;

    /// [`HopCipher::protect_rtp_into`] for a packet given as a rewritten `header` and its
    /// untouched `payload`, so a per-receiver header rewrite costs no extra payload copy.
    fn protect_rtp_parts_into(
        &mut self,
        header: &[u8],
        payload: &[u8],
        arena: &mut Vec<u8>,
    ) -> Result<Range<usize>, HopError>;

    /// Protect a clear RTCP compound packet, appending the SRTCP packet to `arena`.
    fn protect_rtcp_into(
        &mut self,
        clear: &[u8],
        arena: &mut Vec<u8>,
    ) -> Result<Range<usize>, HopError>;
}
