#![no_main]
//! The media forwarder (`blindrelay_core::forward`) driven by random sequences of inputs:
//! participants added (SSRC sets that collide), removed, moved to the other call, their
//! received streams changed; RTP from owned and others' SSRCs (padding, bad tags,
//! replays, noise), RTCP of every kind with owned and forged SSRCs, floods, garbage and
//! time (issue 19). The actions and the checks are the property tests'
//! (`blindrelay_core::forward_model`): after every action the forwarder did exactly what
//! the reference model predicts, and its invariants hold (one owner per SSRC, RTP and
//! RTCP only from what the sender owns and only within its call, keyframe and NACK
//! limits, bounded tables, nothing left after everyone leaves). The hops are the relay's
//! real in-place AES-GCM contexts.

use blindrelay_core::hop::{HopCipher, HopError};
use blindrelay_transport::fast_srtp::FastSrtpContext;
use blindrelay_transport::hop::{self, HopContext};
use libfuzzer_sys::fuzz_target;
use std::ops::Range;

/// The relay's hop context, as the core's cipher (the relay's own newtype lives in its
/// binary crate).
struct Hop(HopContext);

fn err(e: hop::HopError) -> HopError {
    match e {
        hop::HopError::AuthFailed => HopError::AuthFailed,
        hop::HopError::Replay => HopError::Replay,
        hop::HopError::Malformed => HopError::Malformed,
        hop::HopError::Protect => HopError::Protect,
        hop::HopError::IndexReused => HopError::IndexReused,
    }
}

impl HopCipher for Hop {
    fn unprotect_rtp<'a>(&mut self, i: &[u8], s: &'a mut Vec<u8>) -> Result<&'a [u8], HopError> {
        self.0.unprotect_rtp(i, s).map_err(err)
    }
    fn unprotect_rtcp<'a>(&mut self, i: &[u8], s: &'a mut Vec<u8>) -> Result<&'a [u8], HopError> {
        self.0.unprotect_rtcp(i, s).map_err(err)
    }
    fn protect_rtp_into(&mut self, c: &[u8], a: &mut Vec<u8>) -> Result<Range<usize>, HopError> {
        self.0.protect_rtp_into(c, a).map_err(err)
    }
    fn protect_rtp_parts_into(
        &mut self,
        h: &[u8],
        p: &[u8],
        a: &mut Vec<u8>,
    ) -> Result<Range<usize>, HopError> {
        self.0.protect_rtp_parts_into(h, p, a).map_err(err)
    }
    fn protect_rtcp_into(&mut self, c: &[u8], a: &mut Vec<u8>) -> Result<Range<usize>, HopError> {
        self.0.protect_rtcp_into(c, a).map_err(err)
    }
}

fn fast(key: u8) -> Hop {
    // A 16-byte key and a 12-byte salt: the sizes AES-128-GCM takes.
    let ctx = FastSrtpContext::new(&[key; 16], &[key; 12]).expect("key and salt of their sizes");
    Hop(HopContext::Fast(Box::new(ctx)))
}

fuzz_target!(|data: &[u8]| {
    blindrelay_core::forward_model::run(data, fast);
});
