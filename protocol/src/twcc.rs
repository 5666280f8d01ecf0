//! Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-
//! extensions-01 §3.1): the relay tells each sender when each of its packets arrived, so
//! the sender's bandwidth estimate measures its own hop to the relay, not anyone else's.

use crate::rtcp::{FMT_TRANSPORT_CC, PT_RTPFB};

/// One packet's arrival: its transport-wide sequence number (unwrapped) and when it
/// arrived, in microseconds on the receiver's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Arrival {
    pub seq: u64,
    pub at_us: i64,
}

/// Most packets one feedback describes (received or not). Arrivals further apart are
/// sent in separate feedback packets.
pub const MAX_STATUS: u64 = 4096;

/// Unwrap 16-bit sequence numbers into a monotone 64-bit space.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqUnwrapper {
    last: Option<u64>,
}

impl SeqUnwrapper {
    pub fn unwrap(&mut self, seq: u16) -> u64 {
        let v = match self.last {
            None => u64::from(seq) + (1 << 16),
            Some(last) => {
                let delta = seq.wrapping_sub(last as u16) as i16;
                last.saturating_add_signed(i64::from(delta))
            }
        };
        if self.last.is_none_or(|l| v > l) {
            self.last = Some(v);
        }
        v
    }
}

/// Write one feedback packet about `arrivals` (sorted by sequence number, no duplicates,
/// spanning at most [`MAX_STATUS`]) into `out`, which is cleared first. `fb_count`
/// numbers the feedback packets. Returns false (and writes nothing) for no arrivals.
pub fn write_feedback(
    out: &mut Vec<u8>,
    sender_ssrc: u32,
    media_ssrc: u32,
    fb_count: u8,
    arrivals: &[Arrival],
) -> bool {
    out.clear();
    let (Some(first), Some(last)) = (arrivals.first(), arrivals.last()) else {
        return false;
    };
    let count = (last.seq - first.seq + 1).min(MAX_STATUS);
    let ref_time = first.at_us.div_euclid(64_000);
    out.extend_from_slice(&[0x80 | FMT_TRANSPORT_CC, PT_RTPFB, 0, 0]);
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&media_ssrc.to_be_bytes());
    out.extend_from_slice(&(first.seq as u16).to_be_bytes());
    out.extend_from_slice(&(count as u16).to_be_bytes());
    let rt = (ref_time as u32) & 0x00ff_ffff;
    out.extend_from_slice(&rt.to_be_bytes()[1..4]);
    out.push(fb_count);
    // Status symbols, 2 bits each, 7 to a status vector chunk: 0 not received, 1 received
    // with a one-byte delta, 2 received with a two-byte delta.
    let mut prev_us = ref_time * 64_000;
    // Chunks first: count them, reserve, then fill while writing deltas after them.
    let chunks = count.div_ceil(7) as usize;
    out.resize(out.len() + 2 * chunks, 0);
    let mut next = 0usize;
    let mut symbols = [0u8; 7];
    let mut in_chunk = 0usize;
    let mut chunk_i = 0usize;
    for i in 0..count {
        let seq = first.seq + i;
        let sym = if arrivals.get(next).is_some_and(|a| a.seq == seq) {
            let a = arrivals[next];
            next += 1;
            let d = (a.at_us - prev_us + 125).div_euclid(250);
            prev_us += d * 250;
            if (0..=255).contains(&d) {
                out.push(d as u8);
                1
            } else {
                let d = d.clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16;
                out.extend_from_slice(&d.to_be_bytes());
                2
            }
        } else {
            0
        };
        symbols[in_chunk] = sym;
        in_chunk += 1;
        if in_chunk == 7 || i + 1 == count {
            let mut c: u16 = 0b11 << 14;
            for (k, s) in symbols.iter().take(in_chunk).enumerate() {
                c |= u16::from(*s) << (12 - 2 * k);
            }
            let at = 20 + 2 * chunk_i;
            out[at..at + 2].copy_from_slice(&c.to_be_bytes());
            chunk_i += 1;
            in_chunk = 0;
            symbols = [0; 7];
        }
    }
    // Pad to 32 bits, RTCP style: P bit, the last byte says how many.
    let pad = (4 - out.len() % 4) % 4;
    if pad > 0 {
        out.resize(out.len() + pad, 0);
        let n = out.len();
        out[n - 1] = pad as u8;
        out[0] |= 0x20;
    }
    let words = (out.len() / 4 - 1) as u16;
    out[2..4].copy_from_slice(&words.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtcp::packets;

    /// Read a feedback back: base, count, reference time, and per packet Some(arrival
    /// in µs, to 250 µs) or None.
    fn parse(p: &[u8]) -> (u16, u16, i64, Vec<Option<i64>>) {
        let base = u16::from_be_bytes([p[12], p[13]]);
        let count = u16::from_be_bytes([p[14], p[15]]);
        let rt = i64::from(u32::from_be_bytes([0, p[16], p[17], p[18]]));
        let chunks = (count as usize).div_ceil(7);
        let mut syms = Vec::new();
        for c in 0..chunks {
            let v = u16::from_be_bytes([p[20 + 2 * c], p[21 + 2 * c]]);
            assert_eq!(v >> 14, 0b11, "two-bit status vector chunk");
            for k in 0..7 {
                syms.push((v >> (12 - 2 * k)) & 0b11);
            }
        }
        syms.truncate(count as usize);
        let mut at = 20 + 2 * chunks;
        let mut t = rt * 64_000;
        let mut out = Vec::new();
        for s in syms {
            match s {
                0 => out.push(None),
                1 => {
                    t += i64::from(p[at]) * 250;
                    at += 1;
                    out.push(Some(t));
                }
                2 => {
                    t += i64::from(i16::from_be_bytes([p[at], p[at + 1]])) * 250;
                    at += 2;
                    out.push(Some(t));
                }
                _ => panic!("reserved symbol"),
            }
        }
        (base, count, rt, out)
    }

    #[test]
    fn round_trips_with_losses_and_large_deltas() {
        let arrivals = [
            Arrival {
                seq: 70_000,
                at_us: 1_000_000,
            },
            Arrival {
                seq: 70_001,
                at_us: 1_000_500,
            },
            // 70_002 lost
            Arrival {
                seq: 70_003,
                at_us: 1_200_000,
            }, // large delta
            Arrival {
                seq: 70_004,
                at_us: 1_199_000,
            }, // negative delta (reordered arrival)
        ];
        let mut out = Vec::new();
        assert!(write_feedback(&mut out, 1, 0xabcd, 7, &arrivals));
        assert_eq!(out.len() % 4, 0);
        let p = packets(&out).next().unwrap().unwrap();
        assert_eq!((p.packet_type, p.fmt), (PT_RTPFB, FMT_TRANSPORT_CC));
        assert_eq!(out[19], 7);
        let (base, count, rt, got) = parse(&out);
        assert_eq!(base, 70_000u64 as u16);
        assert_eq!(count, 5);
        assert_eq!(rt, 1_000_000 / 64_000);
        assert_eq!(
            got,
            vec![
                Some(1_000_000),
                Some(1_000_500),
                None,
                Some(1_200_000),
                Some(1_199_000)
            ]
        );
        assert!(!write_feedback(&mut out, 1, 2, 0, &[]));
        assert!(out.is_empty());
    }

    #[test]
    fn unwraps_sequence_numbers() {
        let mut u = SeqUnwrapper::default();
        let a = u.unwrap(65_534);
        assert_eq!(u.unwrap(65_535), a + 1);
        assert_eq!(u.unwrap(0), a + 2);
        assert_eq!(
            u.unwrap(65_535),
            a + 1,
            "a late packet from before the wrap"
        );
        assert_eq!(u.unwrap(1), a + 3);
    }
}
