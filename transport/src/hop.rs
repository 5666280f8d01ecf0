//! One participant's hop SRTP state on the relay, behind one small type so the forwarding
//! loop does not care which implementation runs: the in-place path ([`FastSrtpContext`],
//! AEAD_AES_128_GCM or AES128_CM_HMAC_SHA1_80, no allocation), or webrtc-srtp (the
//! reference, `media.srtp = "reference"`).

use crate::fast_srtp::{FastSrtpContext, FastSrtpError, SendIndexGuard, DEFAULT_MAX_SSRCS};
use std::ops::Range;
use thiserror::Error;
use webrtc_srtp::context::Context;

/// Why a packet was refused, in the relay's drop vocabulary.
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

/// A protect failure, in the relay's drop vocabulary.
fn protect_error(e: FastSrtpError) -> HopError {
    match e {
        FastSrtpError::IndexReused { .. } => HopError::IndexReused,
        _ => HopError::Protect,
    }
}

fn from_fast(e: FastSrtpError) -> HopError {
    match e {
        FastSrtpError::AuthFailed => HopError::AuthFailed,
        FastSrtpError::Replay { .. } => HopError::Replay,
        _ => HopError::Malformed,
    }
}

fn from_reference(e: webrtc_srtp::Error) -> HopError {
    use webrtc_srtp::Error as E;
    match e {
        // An AEAD open failure is a tag mismatch.
        E::ErrFailedToVerifyAuthTag | E::AesGcm(_) => HopError::AuthFailed,
        E::SrtpSsrcDuplicated(..) | E::SrtcpSsrcDuplicated(..) | E::ErrDuplicated => {
            HopError::Replay
        }
        _ => HopError::Malformed,
    }
}

/// SRTP state for one direction of one participant's hop.
pub enum HopContext {
    Fast(Box<FastSrtpContext>),
    Reference(Box<ReferenceHop>),
}

/// A webrtc-srtp context and the RTP indices it protected: webrtc-srtp would seal a
/// repeated index again, so the hop refuses one itself, as [`FastSrtpContext`] does.
pub struct ReferenceHop {
    ctx: Context,
    sent: SendIndexGuard,
    /// The SSRCs (RTP, RTCP) whose packets the context was asked to unprotect: it keeps
    /// state for each from the first packet on, authentic or not, so at most
    /// [`DEFAULT_MAX_SSRCS`] of each are let through, as [`FastSrtpContext`] allows.
    unprotected: [Vec<u32>; 2],
}

impl ReferenceHop {
    /// Protect a clear RTP packet, refusing an index protected before.
    fn encrypt_rtp(&mut self, clear: &[u8]) -> Result<bytes::Bytes, HopError> {
        let (ssrc, index) = self.sent.check(clear).map_err(protect_error)?;
        let sealed = self.ctx.encrypt_rtp(clear).map_err(|_| HopError::Protect)?;
        self.sent.record(ssrc, index);
        Ok(sealed)
    }
}

/// RTP or RTCP: the two differ only in which SRTP transform runs.
#[derive(Clone, Copy)]
enum Kind {
    Rtp,
    Rtcp,
}

impl HopContext {
    /// A hop on webrtc-srtp (AES128_CM_HMAC_SHA1_80, or GCM when the in-place path is off).
    pub fn reference(ctx: Context) -> Self {
        HopContext::Reference(Box::new(ReferenceHop {
            ctx,
            sent: SendIndexGuard::default(),
            unprotected: [Vec::new(), Vec::new()],
        }))
    }

    /// How many SSRCs (RTP and RTCP) this hop keeps receive state for: bounded, whatever
    /// a participant sends.
    pub fn unprotect_ssrc_count(&self) -> usize {
        match self {
            HopContext::Fast(c) => c.rtp_ssrc_count() + c.rtcp_ssrc_count(),
            HopContext::Reference(c) => c.unprotected.iter().map(Vec::len).sum(),
        }
    }

    /// Unprotect an SRTP packet into `scratch` (reused, so no allocation on the fast path);
    /// returns the clear RTP packet.
    pub fn unprotect_rtp<'a>(
        &mut self,
        input: &[u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], HopError> {
        self.unprotect(Kind::Rtp, input, scratch)
    }

    /// [`HopContext::unprotect_rtp`] where the caller owns the packet: the in-place
    /// context opens it where it lies, saving the copy into `scratch` (a tenth of the
    /// relay's CPU at 400k packets/s: the packet is cold by the time the forwarding loop
    /// gets it, bench/RESULTS.md); webrtc-srtp still decrypts into `scratch`. On error
    /// `buf` may hold neither the SRTP nor the clear packet.
    pub fn unprotect_rtp_in_place<'a>(
        &mut self,
        buf: &'a mut [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], HopError> {
        match self {
            HopContext::Fast(c) => {
                let n = c.unprotect_rtp(buf).map_err(from_fast)?;
                Ok(&buf[..n])
            }
            HopContext::Reference(_) => self.unprotect(Kind::Rtp, buf, scratch),
        }
    }

    /// Unprotect an SRTCP compound packet into `scratch`.
    pub fn unprotect_rtcp<'a>(
        &mut self,
        input: &[u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], HopError> {
        self.unprotect(Kind::Rtcp, input, scratch)
    }

    /// Protect a clear RTP packet for this receiver, appending the SRTP packet to `arena`;
    /// returns where it landed. The arena is the forwarding loop's reused output buffer, so
    /// the in-place path allocates nothing once the arena has grown to its working size.
    /// On error `arena` is left as it was.
    pub fn protect_rtp_into(
        &mut self,
        clear: &[u8],
        arena: &mut Vec<u8>,
    ) -> Result<Range<usize>, HopError> {
        self.protect_into(Kind::Rtp, clear, arena)
    }

    /// [`HopContext::protect_rtp_into`] for a packet given as a rewritten `header` and the
    /// untouched `payload`: the two are copied once, straight into the arena, so a
    /// per-receiver header rewrite costs no extra copy of the payload.
    pub fn protect_rtp_parts_into(
        &mut self,
        header: &[u8],
        payload: &[u8],
        arena: &mut Vec<u8>,
    ) -> Result<Range<usize>, HopError> {
        match self {
            HopContext::Fast(c) => {
                let start = arena.len();
                let len = header.len() + payload.len();
                arena.extend_from_slice(header);
                arena.extend_from_slice(payload);
                arena.resize(start + len + c.rtp_overhead(), 0);
                match c.protect_rtp_in(&mut arena[start..], len) {
                    Ok(n) => {
                        arena.truncate(start + n);
                        Ok(start..start + n)
                    }
                    Err(e) => {
                        arena.truncate(start);
                        Err(protect_error(e))
                    }
                }
            }
            HopContext::Reference(c) => {
                // webrtc-srtp needs one contiguous packet and allocates its output anyway.
                let mut clear = Vec::with_capacity(header.len() + payload.len());
                clear.extend_from_slice(header);
                clear.extend_from_slice(payload);
                let sealed = c.encrypt_rtp(&clear)?;
                let start = arena.len();
                arena.extend_from_slice(&sealed);
                Ok(start..arena.len())
            }
        }
    }

    /// Protect a clear RTCP compound packet for this receiver, appending the SRTCP packet
    /// to `arena`; returns where it landed. On error `arena` is left as it was.
    pub fn protect_rtcp_into(
        &mut self,
        clear: &[u8],
        arena: &mut Vec<u8>,
    ) -> Result<Range<usize>, HopError> {
        self.protect_into(Kind::Rtcp, clear, arena)
    }

    fn unprotect<'a>(
        &mut self,
        kind: Kind,
        input: &[u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], HopError> {
        scratch.clear();
        match self {
            HopContext::Fast(c) => {
                scratch.extend_from_slice(input);
                let n = match kind {
                    Kind::Rtp => c.unprotect_rtp(scratch),
                    Kind::Rtcp => c.unprotect_rtcp(scratch),
                }
                .map_err(from_fast)?;
                Ok(&scratch[..n])
            }
            HopContext::Reference(c) => {
                // The SSRC is in clear in SRTP (bytes 8..12) and SRTCP (4..8).
                let (at, seen) = match kind {
                    Kind::Rtp => (8, &mut c.unprotected[0]),
                    Kind::Rtcp => (4, &mut c.unprotected[1]),
                };
                let ssrc = input
                    .get(at..at + 4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or(HopError::Malformed)?;
                if !seen.contains(&ssrc) {
                    if seen.len() >= DEFAULT_MAX_SSRCS {
                        return Err(HopError::Malformed);
                    }
                    seen.push(ssrc);
                }
                let clear = match kind {
                    Kind::Rtp => c.ctx.decrypt_rtp(input),
                    Kind::Rtcp => c.ctx.decrypt_rtcp(input),
                }
                .map_err(from_reference)?;
                scratch.extend_from_slice(&clear);
                Ok(&scratch[..])
            }
        }
    }

    fn protect_into(
        &mut self,
        kind: Kind,
        clear: &[u8],
        arena: &mut Vec<u8>,
    ) -> Result<Range<usize>, HopError> {
        let start = arena.len();
        match self {
            HopContext::Fast(c) => {
                let overhead = match kind {
                    Kind::Rtp => c.rtp_overhead(),
                    Kind::Rtcp => c.rtcp_overhead(),
                };
                // Copy the clear packet to the arena's end, leave room for the trailer, and
                // transform it where it lies.
                arena.extend_from_slice(clear);
                arena.resize(start + clear.len() + overhead, 0);
                let packet = &mut arena[start..];
                let n = match kind {
                    Kind::Rtp => c.protect_rtp_in(packet, clear.len()),
                    Kind::Rtcp => c.protect_rtcp_in(packet, clear.len()),
                };
                match n {
                    Ok(n) => {
                        // protect_*_in returns exactly len + overhead; keep the arena in step
                        // with the range we hand back all the same.
                        arena.truncate(start + n);
                        Ok(start..start + n)
                    }
                    Err(e) => {
                        arena.truncate(start);
                        Err(protect_error(e))
                    }
                }
            }
            // The reference implementation returns a fresh buffer; copy it over.
            HopContext::Reference(c) => {
                // SRTCP indices are webrtc-srtp's own counter: they never repeat.
                let sealed = match kind {
                    Kind::Rtp => c.encrypt_rtp(clear)?,
                    Kind::Rtcp => c.ctx.encrypt_rtcp(clear).map_err(|_| HopError::Protect)?,
                };
                arena.extend_from_slice(&sealed);
                Ok(start..arena.len())
            }
        }
    }

    /// Which implementation, as a bounded label.
    pub fn kind(&self) -> &'static str {
        match self {
            HopContext::Fast(c) => match c.profile() {
                "AES128_CM_HMAC_SHA1_80" => "fast_cm",
                _ => "fast_gcm",
            },
            HopContext::Reference(_) => "webrtc_srtp",
        }
    }
}
