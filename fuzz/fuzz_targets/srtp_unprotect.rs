#![no_main]
//! In-place SRTP/SRTCP (transport::fast_srtp), a fixed key on both sides, the whole input
//! run once with AEAD_AES_128_GCM and once with AES128_CM_HMAC_SHA1_80. The input is a run
//! of records `[op][len][len bytes]`:
//!
//! - op % 4 == 0 / 1: the bytes are a datagram from the network: unprotect as SRTP / SRTCP.
//! - op % 4 == 2 / 3: the bytes are a clear RTP / RTCP packet: the peer protects it, a bit
//!   is flipped when op's high bit is set, and the receiver unprotects it. An untouched
//!   packet that authenticates must come back byte for byte; a touched one must never
//!   authenticate. An RTP packet the peer protected once is never protected again: the
//!   second seal of its (SSRC, index) fails with `IndexReused` (a GCM nonce, or an AES-CM
//!   keystream, is used once).
//!
//! One receiver context sees the whole run, so the replay windows and rollover estimates
//! carry state from record to record.

use blindrelay_transport::fast_srtp::{FastSrtpContext, FastSrtpError};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 16] = *b"fuzz-master-key!";
const SALT: [u8; 12] = *b"fuzz-salt-12";
const CM_SALT: [u8; 14] = *b"fuzz-cm-salt14";

fuzz_target!(|data: &[u8]| {
    let gcm = || FastSrtpContext::new(&KEY, &SALT).expect("a 16-byte key and a 12-byte salt");
    let cm = || FastSrtpContext::new_cm(&KEY, &CM_SALT).expect("a 16-byte key and a 14-byte salt");
    run(gcm(), gcm().with_max_ssrcs(8), data);
    run(cm(), cm().with_max_ssrcs(8), data);
});

fn run(mut tx: FastSrtpContext, mut rx: FastSrtpContext, data: &[u8]) {
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        rest = tail;
        let mut buf = chunk.to_vec();
        match op % 4 {
            0 => {
                if let Ok(n) = rx.unprotect_rtp(&mut buf) {
                    assert!(n <= chunk.len());
                }
            }
            1 => {
                if let Ok(n) = rx.unprotect_rtcp(&mut buf) {
                    assert!(n <= chunk.len());
                }
            }
            kind => {
                let rtcp = kind == 3;
                let sealed = if rtcp {
                    tx.protect_rtcp(&mut buf)
                } else {
                    tx.protect_rtp(&mut buf)
                };
                if sealed.is_err() {
                    continue;
                }
                if !rtcp {
                    let mut again = chunk.to_vec();
                    assert!(
                        matches!(
                            tx.protect_rtp(&mut again),
                            Err(FastSrtpError::IndexReused { .. })
                        ),
                        "one (SSRC, index) sealed twice"
                    );
                    assert_eq!(again, chunk, "a refused packet is left as it was");
                }
                let tampered = op & 0x80 != 0;
                if tampered {
                    let i = usize::from(*op) * 31 % buf.len();
                    buf[i] ^= 1 << (op % 8);
                }
                let opened = if rtcp {
                    rx.unprotect_rtcp(&mut buf)
                } else {
                    rx.unprotect_rtp(&mut buf)
                };
                if let Ok(n) = opened {
                    assert!(!tampered, "a tampered packet authenticated");
                    assert_eq!(&buf[..n], chunk, "round trip changed the packet");
                }
            }
        }
    }
}
