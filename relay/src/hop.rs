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

/// A forwarding loop's hop for one peer: a participant's SRTP, or a node link's end in a
/// call (a cascade), where packets travel clear inside the link's QUIC encryption and
/// the SFrame payload inside them is what its sender sealed.
pub enum MediaHop {
    Srtp(SrtpHop),
    /// Nothing to add or remove: QUIC authenticates and encrypts the link, and the far
    /// node seals each packet again for its own receivers.
    Link,
}

impl From<HopContext> for MediaHop {
    fn from(c: HopContext) -> Self {
        MediaHop::Srtp(SrtpHop(c))
    }
}

/// `clear` appended to `arena`: where it landed.
fn append(arena: &mut Vec<u8>, parts: &[&[u8]]) -> Range<usize> {
    let start = arena.len();
    for p in parts {
        arena.extend_from_slice(p);
    }
    start..arena.len()
}

impl HopCipher for MediaHop {
    #[inline]
    fn unprotect_rtp<'a>(
        &mut self,
        input: &[u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], HopError> {
        match self {
            MediaHop::Srtp(h) => h.unprotect_rtp(input, scratch),
            MediaHop::Link => {
                scratch.clear();
                scratch.extend_from_slice(input);
                Ok(scratch)
            }
        }
    }
    #[inline]
    fn unprotect_rtp_in_place<'a>(
        &mut self,
        buf: &'a mut [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], HopError> {
        match self {
            MediaHop::Srtp(h) => h.unprotect_rtp_in_place(buf, scratch),
            MediaHop::Link => Ok(buf),
        }
    }
    #[inline]
    fn unprotect_rtcp<'a>(
        &mut self,
        input: &[u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], HopError> {
        match self {
            MediaHop::Srtp(h) => h.unprotect_rtcp(input, scratch),
            MediaHop::Link => {
                scratch.clear();
                scratch.extend_from_slice(input);
                Ok(scratch)
            }
        }
    }
    #[inline]
    fn protect_rtp_into(
        &mut self,
        clear: &[u8],
        arena: &mut Vec<u8>,
    ) -> Result<Range<usize>, HopError> {
        match self {
            MediaHop::Srtp(h) => h.protect_rtp_into(clear, arena),
            MediaHop::Link => Ok(append(arena, &[clear])),
        }
    }
    #[inline]
    fn protect_rtp_parts_into(
        &mut self,
        header: &[u8],
        payload: &[u8],
        arena: &mut Vec<u8>,
    ) -> Result<Range<usize>, HopError> {
        match self {
            MediaHop::Srtp(h) => h.protect_rtp_parts_into(header, payload, arena),
            MediaHop::Link => Ok(append(arena, &[header, payload])),
        }
    }
    #[inline]
    fn protect_rtcp_into(
        &mut self,
        clear: &[u8],
        arena: &mut Vec<u8>,
    ) -> Result<Range<usize>, HopError> {
        match self {
            MediaHop::Srtp(h) => h.protect_rtcp_into(clear, arena),
            MediaHop::Link => Ok(append(arena, &[clear])),
        }
    }
}
