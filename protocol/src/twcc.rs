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

/// Longest run a run-length chunk describes (13 bits).
const MAX_RUN: usize = 0x1fff;

/// Symbols in a two-bit status vector chunk.
const VECTOR: usize = 7;

/// Write one feedback packet about `arrivals` (sorted by sequence number, no duplicates,
/// spanning at most [`MAX_STATUS`]) into `out`, which is cleared first. `fb_count`
/// numbers the feedback packets. Returns false (and writes nothing) for no arrivals.
///
/// Runs of one status take a run-length chunk, so a feedback costs at most
/// [`max_feedback_len`] bytes: its size follows the packets it acknowledges, never the
/// gaps between their sequence numbers (two packets 4,000 apart would otherwise take
/// 1.2 KB of status vectors, a sender's way to make the relay send more than it sent).
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
    let count = (last.seq - first.seq + 1).min(MAX_STATUS) as usize;
    let ref_time = first.at_us.div_euclid(64_000);
    out.extend_from_slice(&[0x80 | FMT_TRANSPORT_CC, PT_RTPFB, 0, 0]);
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&media_ssrc.to_be_bytes());
    out.extend_from_slice(&(first.seq as u16).to_be_bytes());
    out.extend_from_slice(&(count as u16).to_be_bytes());
    let rt = (ref_time as u32) & 0x00ff_ffff;
    out.extend_from_slice(&rt.to_be_bytes()[1..4]);
    out.push(fb_count);
    // Status symbols: 0 not received, 1 received with a one-byte delta, 2 received with
    // a two-byte delta. On the stack: this runs on the packet path, which allocates
    // nothing.
    let mut syms = [0u8; MAX_STATUS as usize];
    let mut prev_us = ref_time * 64_000;
    let deltas = |a: &Arrival, prev_us: &mut i64| {
        let d = (a.at_us - *prev_us + 125).div_euclid(250);
        *prev_us += d * 250;
        d
    };
    let mut p = prev_us;
    for a in arrivals {
        let i = (a.seq - first.seq) as usize;
        if i >= count {
            break;
        }
        syms[i] = if (0..=255).contains(&deltas(a, &mut p)) {
            1
        } else {
            2
        };
    }
    // Chunks: a run of 7 or more equal symbols is one run-length chunk; anything else is
    // a two-bit status vector chunk of the next 7 (past `count` they are padding the
    // receiver ignores).
    let mut i = 0;
    while i < count {
        let s = syms[i];
        let run = syms[i..count.min(i + MAX_RUN)]
            .iter()
            .take_while(|x| **x == s)
            .count();
        let chunk: u16 = if run >= VECTOR {
            i += run;
            (u16::from(s) << 13) | run as u16
        } else {
            let mut c: u16 = 0b11 << 14;
            for (k, s) in syms[i..count.min(i + VECTOR)].iter().enumerate() {
                c |= u16::from(*s) << (12 - 2 * k);
            }
            i += VECTOR;
            c
        };
        out.extend_from_slice(&chunk.to_be_bytes());
    }
    for a in arrivals {
        if a.seq - first.seq >= count as u64 {
            break;
        }
        let d = deltas(a, &mut prev_us);
        if (0..=255).contains(&d) {
            out.push(d as u8);
        } else {
            let d = d.clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16;
            out.extend_from_slice(&d.to_be_bytes());
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

/// The most bytes [`write_feedback`] writes for `arrivals` packets: the 20-byte header,
/// per packet at most a status vector chunk, a run-length chunk for the gap after it and
/// a two-byte delta, and 3 bytes of padding.
pub const fn max_feedback_len(arrivals: usize) -> usize {
    20 + 6 * arrivals + 3
}

/// A transport-cc feedback packet that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FeedbackError {
    #[error("transport-cc feedback is shorter than its header or its chunks say")]
    Truncated,
    #[error("transport-cc feedback uses the reserved status symbol")]
    ReservedSymbol,
}

/// Read a transport-cc feedback packet (one RTCP packet, header included) a receiver
/// sent about the packets the relay numbered for it: `each(seq, arrival)` is called for
/// every packet it describes, in order, with its arrival in microseconds on the
/// receiver's clock, or `None` if it did not arrive. Nothing is allocated: this runs on
/// the packet path. On an error, the packets before the fault have been reported.
pub fn read_feedback(
    p: &[u8],
    mut each: impl FnMut(u16, Option<i64>),
) -> Result<(), FeedbackError> {
    let head = p.get(..20).ok_or(FeedbackError::Truncated)?;
    let base = u16::from_be_bytes([head[12], head[13]]);
    let count = usize::from(u16::from_be_bytes([head[14], head[15]]));
    // The reference time is a signed 24-bit count of 64 ms.
    let rt = i64::from(i32::from_be_bytes([head[16], head[17], head[18], 0]) >> 8);
    // The chunks come first and the deltas after them, so the symbols are read in one
    // pass to find where the deltas start, then again beside the deltas.
    let mut at = 20;
    let mut n = 0;
    while n < count {
        let v = chunk(p, at)?;
        at += 2;
        n += if v >> 15 == 0 {
            usize::from(v & 0x1fff)
        } else if v >> 14 == 0b11 {
            VECTOR
        } else {
            14
        };
    }
    let mut deltas = at;
    let mut t = rt * 64_000;
    let mut seq = base;
    let mut left = count;
    let mut symbol = |s: u16, seq: &mut u16| -> Result<(), FeedbackError> {
        let arrival = match s {
            0 => None,
            1 => {
                let d = *p.get(deltas).ok_or(FeedbackError::Truncated)?;
                deltas += 1;
                t += i64::from(d) * 250;
                Some(t)
            }
            2 => {
                let d = p.get(deltas..deltas + 2).ok_or(FeedbackError::Truncated)?;
                deltas += 2;
                t += i64::from(i16::from_be_bytes([d[0], d[1]])) * 250;
                Some(t)
            }
            _ => return Err(FeedbackError::ReservedSymbol),
        };
        each(*seq, arrival);
        *seq = seq.wrapping_add(1);
        Ok(())
    };
    let mut c = 20;
    while left > 0 {
        let v = chunk(p, c)?;
        c += 2;
        if v >> 15 == 0 {
            let run = usize::from(v & 0x1fff).min(left);
            for _ in 0..run {
                symbol((v >> 13) & 0b11, &mut seq)?;
            }
            left -= run;
        } else if v >> 14 == 0b11 {
            for k in 0..VECTOR.min(left) {
                symbol((v >> (12 - 2 * k)) & 0b11, &mut seq)?;
            }
            left -= VECTOR.min(left);
        } else {
            for k in 0..14.min(left) {
                symbol((v >> (13 - k)) & 0b1, &mut seq)?;
            }
            left -= 14.min(left);
        }
    }
    Ok(())
}

fn chunk(p: &[u8], at: usize) -> Result<u16, FeedbackError> {
    p.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(FeedbackError::Truncated)
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
        let mut out = Vec::new();
        let mut next = base;
        read_feedback(p, |seq, at| {
            assert_eq!(seq, next, "in order");
            next = next.wrapping_add(1);
            out.push(at);
        })
        .expect("parses");
        (base, count, rt, out)
    }

    /// libwebrtc also writes one-bit status vectors (received with a small delta, or
    /// not), and a negative reference time; a cut packet is an error, not a panic.
    #[test]
    fn reads_one_bit_vectors_and_refuses_cut_packets() {
        let mut p = vec![0x8f, 205, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2];
        p.extend_from_slice(&65_534u16.to_be_bytes()); // base, wrapping
        p.extend_from_slice(&4u16.to_be_bytes()); // count
        p.extend_from_slice(&[0xff, 0xff, 0xfe, 9]); // reference time -2, fb count 9
                                                     // One-bit vector: received, lost, received, received (then padding symbols).
        p.extend_from_slice(&0b1010_1100_0000_0000_u16.to_be_bytes());
        p.extend_from_slice(&[4, 0, 8, 0]); // three one-byte deltas, then padding
        let mut got = Vec::new();
        read_feedback(&p, |seq, at| got.push((seq, at))).expect("parses");
        let t0 = -2 * 64_000;
        assert_eq!(
            got,
            vec![
                (65_534, Some(t0 + 1_000)),
                (65_535, None),
                (0, Some(t0 + 1_000)),
                (1, Some(t0 + 3_000)),
            ]
        );
        for cut in 0..22 {
            assert_eq!(
                read_feedback(&p[..cut], |_, _| {}),
                Err(FeedbackError::Truncated),
                "{cut} bytes"
            );
        }
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

    /// Arrivals from a seed: sorted, no duplicates, within MAX_STATUS, gaps and time
    /// jumps of every size.
    fn arrivals(seed: u64, n: usize) -> Vec<Arrival> {
        let mut x = seed;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut seq = 100_000u64;
        let mut at_us = 5_000_000i64;
        let mut out = Vec::new();
        for _ in 0..n {
            let gap = match next() % 4 {
                0 => 1,
                1 => 1 + next() % 8,
                2 => 1 + next() % 40,
                _ => 1 + next() % 600,
            };
            if seq + gap - 100_000 >= MAX_STATUS {
                break;
            }
            seq += gap;
            at_us += (next() % 400_000) as i64 - 20_000;
            out.push(Arrival { seq, at_us });
        }
        out
    }

    #[test]
    fn feedback_size_follows_the_packets_not_the_gaps() {
        // Two packets 4,000 apart: a run-length chunk, not 572 status vector chunks.
        let two = [
            Arrival {
                seq: 1_000,
                at_us: 0,
            },
            Arrival {
                seq: 5_000,
                at_us: 1_000,
            },
        ];
        let mut out = Vec::new();
        assert!(write_feedback(&mut out, 1, 2, 0, &two));
        assert!(out.len() <= max_feedback_len(2), "{} bytes", out.len());
        let (_, count, _, got) = parse(&out);
        assert_eq!(count, 4_001);
        assert_eq!(got.iter().filter(|s| s.is_some()).count(), 2);
        assert_eq!((got[0], got[4_000]), (Some(0), Some(1_000)));
        // Any pattern: within the bound, and it reads back to the arrivals (to 250 µs).
        for seed in 1..400u64 {
            let a = arrivals(seed, 1 + (seed as usize % 300));
            assert!(write_feedback(&mut out, 1, 2, 0, &a));
            assert!(
                out.len() <= max_feedback_len(a.len()),
                "seed {seed}: {} bytes for {} packets",
                out.len(),
                a.len()
            );
            let (base, count, _, got) = parse(&out);
            assert_eq!(base, a[0].seq as u16);
            assert_eq!(u64::from(count), a[a.len() - 1].seq - a[0].seq + 1);
            let received: Vec<(u64, i64)> = got
                .iter()
                .enumerate()
                .filter_map(|(i, t)| t.map(|t| (a[0].seq + i as u64, t)))
                .collect();
            assert_eq!(received.len(), a.len(), "seed {seed}");
            for ((seq, t), want) in received.iter().zip(&a) {
                assert_eq!(*seq, want.seq);
                // Deltas are clamped to 16 bits of 250 µs; these jumps stay inside.
                assert!(
                    (t - want.at_us).abs() <= 125,
                    "seed {seed}: {t} vs {}",
                    want.at_us
                );
            }
        }
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
