//! The core's [`HopCipher`] over the relay's SRTP contexts. `HopContext` lives in the
//! transport crate, which the core must not depend on (webrtc-srtp pulls in tokio), so
//! the forwarding loops hold it in this newtype.

use crate::core::hop::{HopCipher, HopError};
use blindrelay_transport::hop::{self, HopContext};
use std::ops::Range;

/// One direction of one participant's hop: in-place AES-GCM or webrtc-srtp.
pub struct SrtpHop(pub HopContext);

impl From<HopContext> for SrtpHop {
    fn from(c: HopContext) -> Self {
        SrtpHop(c)
    }
}

fn hop_error(e: hop::HopError) -> HopError {
    match e {
        hop::HopError::AuthFailed => HopError::AuthFailed,
        hop::HopError::Replay => HopError::Replay,
        hop::HopError::Malformed => HopError::Malformed,
        hop::HopError::Protect => HopError::Protect,
        hop::HopError::IndexReused => HopError::IndexReused,
    }
}

impl HopCipher for SrtpHop {
    #[inline]
    fn unprotect_rtp<'a>(
        &mut self,
        input: &[u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], HopError> {
        self.0.unprotect_rtp(input, scratch).map_err(hop_error)
    }
    #[inline]
    fn unprotect_rtp_in_place<'a>(
        &mut self,
        buf: &'a mut [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], HopError> {
        self.0
            .unprotect_rtp_in_place(buf, scratch)
            .map_err(hop_error)
    }
    #[inline]
    fn unprotect_rtcp<'a>(
        &mut self,
        input: &[u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], HopError> {
        self.0.unprotect_rtcp(input, scratch).map_err(hop_error)
    }
    #[inline]
    fn protect_rtp_into(
        &mut self,
        clear: &[u8],
        arena: &mut Vec<u8>,
    ) -> Result<Range<usize>, HopError> {
        self.0.protect_rtp_into(clear, arena).map_err(hop_error)
    }
    #[inline]
    fn protect_rtp_parts_into(
        &mut self,
        header: &[u8],
        payload: &[u8],
        arena: &mut Vec<u8>,
    ) -> Result<Range<usize>, HopError> {
        self.0
            .protect_rtp_parts_into(header, payload, arena)
            .map_err(hop_error)
    }
    #[inline]
    fn protect_rtcp_into(
        &mut self,
        clear: &[u8],
        arena: &mut Vec<u8>,
    ) -> Result<Range<usize>, HopError> {
        self.0.protect_rtcp_into(clear, arena).map_err(hop_error)
    }
}
