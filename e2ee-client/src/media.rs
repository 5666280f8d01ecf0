//! Synthetic media: frames whose every byte the receiver can predict, so a receiver proves
//! byte for byte that what arrived is what was sent. A frame is split over RTP packets with
//! the marker bit on its last packet; the receiver reassembles by timestamp and sequence.

use std::collections::BTreeMap;

/// Largest RTP payload we send: leaves room for the RTP header, SRTP tag and IP/UDP
/// headers under a 1,280-byte path MTU.
pub const MAX_RTP_PAYLOAD: usize = 1100;
const MAGIC: &[u8; 4] = b"BRF1";
/// Bytes of the frame header: magic, ssrc, frame number, send time (µs), length.
pub const FRAME_HEADER: usize = 24;

/// Build frame `n` of stream `ssrc`, `len` bytes long (at least [`FRAME_HEADER`]). The
/// filler is `canary` repeated when given, else a pseudo-random sequence seeded by
/// (ssrc, n) that [`verify_frame`] regenerates.
pub fn make_frame(
    ssrc: u32,
    n: u32,
    send_time_us: u64,
    len: usize,
    canary: Option<&[u8]>,
    out: &mut Vec<u8>,
) {
    let len = len.max(FRAME_HEADER);
    out.clear();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&send_time_us.to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
    fill(ssrc, n, canary, len - FRAME_HEADER, out);
}

fn fill(ssrc: u32, n: u32, canary: Option<&[u8]>, count: usize, out: &mut Vec<u8>) {
    match canary {
        Some(c) if !c.is_empty() => {
            out.extend(c.iter().copied().cycle().take(count));
        }
        _ => {
            // xorshift64*, seeded per frame.
            let mut x = ((ssrc as u64) << 32 | n as u64) ^ 0x9e37_79b9_7f4a_7c15;
            if x == 0 {
                x = 1;
            }
            let mut left = count;
            while left > 0 {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                let k = left.min(8);
                out.extend_from_slice(&v[..k]);
                left -= k;
            }
        }
    }
}

/// Whether `frame` is one of [`make_frame`]'s (its magic), before checking it: in the web
/// framing a browser's frames come alongside synthetic ones, and only these can be checked.
pub fn is_synthetic(frame: &[u8]) -> bool {
    frame.starts_with(MAGIC)
}

/// What a received frame says about itself, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    pub ssrc: u32,
    pub number: u32,
    pub send_time_us: u64,
}

/// Check a frame byte for byte against what its sender must have generated.
pub fn verify_frame(frame: &[u8], canary: Option<&[u8]>) -> Option<FrameInfo> {
    if frame.len() < FRAME_HEADER || &frame[0..4] != MAGIC {
        return None;
    }
    let ssrc = u32::from_be_bytes(frame[4..8].try_into().ok()?);
    let number = u32::from_be_bytes(frame[8..12].try_into().ok()?);
    let send_time_us = u64::from_be_bytes(frame[12..20].try_into().ok()?);
    let len = u32::from_be_bytes(frame[20..24].try_into().ok()?) as usize;
    if len != frame.len() {
        return None;
    }
    let mut expect = Vec::with_capacity(len);
    make_frame(ssrc, number, send_time_us, len, canary, &mut expect);
    (expect == frame).then_some(FrameInfo {
        ssrc,
        number,
        send_time_us,
    })
}

/// Split a frame into RTP payloads of at most [`MAX_RTP_PAYLOAD`] bytes.
pub fn packetize(frame: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    let n = frame.len().div_ceil(MAX_RTP_PAYLOAD).max(1);
    (0..n).map(move |i| {
        let start = i * MAX_RTP_PAYLOAD;
        let end = (start + MAX_RTP_PAYLOAD).min(frame.len());
        (&frame[start..end], i + 1 == n)
    })
}

/// Reassembles the frames of one incoming SSRC and counts loss from sequence gaps.
#[derive(Debug, Default)]
pub struct StreamReceiver {
    /// Extended sequence number of the last packet seen.
    highest: Option<u64>,
    first: Option<u64>,
    received: u64,
    cur_ts: Option<u32>,
    parts: BTreeMap<u64, Vec<u8>>,
    last_marker: Option<u64>,
    pub frames_incomplete: u64,
}

impl StreamReceiver {
    fn extend(&self, seq: u16) -> u64 {
        match self.highest {
            None => seq as u64 + (1 << 16),
            Some(h) => {
                let base = h & !0xffff;
                let cands = [
                    base.wrapping_sub(1 << 16) | seq as u64,
                    base | seq as u64,
                    (base + (1 << 16)) | seq as u64,
                ];
                // The candidate closest to the highest seen.
                cands
                    .into_iter()
                    .min_by_key(|c| c.abs_diff(h))
                    .unwrap_or(base | seq as u64)
            }
        }
    }

    /// Packets the sender sent that never arrived (RFC 3550 A.3 "cumulative lost").
    pub fn lost(&self) -> u64 {
        match (self.first, self.highest) {
            (Some(f), Some(h)) => (h - f + 1).saturating_sub(self.received),
            _ => 0,
        }
    }

    pub fn highest_seq(&self) -> u32 {
        self.highest.unwrap_or(0) as u32
    }

    /// Feed one RTP payload; returns a whole frame when this packet completes one.
    pub fn push(&mut self, seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Option<Vec<u8>> {
        let ext = self.extend(seq);
        self.received += 1;
        self.first = Some(self.first.map_or(ext, |f| f.min(ext)));
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        if self.cur_ts != Some(ts) {
            if !self.parts.is_empty() {
                self.frames_incomplete += 1;
                self.parts.clear();
            }
            self.cur_ts = Some(ts);
        }
        self.parts.insert(ext, payload.to_vec());
        if !marker {
            return None;
        }
        // A frame starts right after the previous frame's marker. Before any marker was
        // seen we cannot know where this frame began (a receiver may come in mid-frame,
        // and our payload has no start-of-frame bit), so that first frame is dropped as
        // incomplete rather than passed on truncated.
        let start = match self.last_marker {
            Some(m) if m < ext => m + 1,
            _ => {
                self.last_marker = Some(ext);
                self.frames_incomplete += 1;
                self.parts.clear();
                self.cur_ts = None;
                return None;
            }
        };
        self.last_marker = Some(ext);
        let complete = (start..=ext).all(|s| self.parts.contains_key(&s));
        let frame = if complete {
            let mut f = Vec::new();
            for s in start..=ext {
                if let Some(p) = self.parts.get(&s) {
                    f.extend_from_slice(p);
                }
            }
            Some(f)
        } else {
            self.frames_incomplete += 1;
            None
        };
        self.parts.clear();
        self.cur_ts = None;
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_verify_and_detect_any_change() {
        let mut f = Vec::new();
        make_frame(7, 3, 99, 3000, None, &mut f);
        assert_eq!(f.len(), 3000);
        assert_eq!(
            verify_frame(&f, None),
            Some(FrameInfo {
                ssrc: 7,
                number: 3,
                send_time_us: 99
            })
        );
        for i in [0, 10, 24, 2999] {
            let mut g = f.clone();
            g[i] ^= 1;
            assert_eq!(verify_frame(&g, None), None, "byte {i}");
        }
        make_frame(7, 3, 99, 100, Some(b"CANARY"), &mut f);
        assert!(f.windows(6).any(|w| w == b"CANARY"));
        assert!(verify_frame(&f, Some(b"CANARY")).is_some());
    }

    #[test]
    fn reassembles_and_counts_loss() {
        let mut f = Vec::new();
        make_frame(1, 0, 0, 2500, None, &mut f);
        let pkts: Vec<_> = packetize(&f).collect();
        assert_eq!(pkts.len(), 3);
        assert!(pkts[2].1 && !pkts[0].1);
        let mut r = StreamReceiver::default();
        // The tail of a frame that began before this receiver came in: dropped, since
        // where it started is unknown.
        assert_eq!(r.push(65532, 5, false, b"tail"), None);
        assert_eq!(r.push(65533, 5, true, b"end"), None);
        assert_eq!(r.frames_incomplete, 1);
        let mut out = None;
        for (i, (p, m)) in pkts.iter().enumerate() {
            out = r.push(65534u16.wrapping_add(i as u16), 10, *m, p);
        }
        assert_eq!(out.as_deref(), Some(&f[..]));
        // Next frame loses its middle packet.
        assert_eq!(r.push(1, 20, false, b"a"), None);
        assert_eq!(r.push(3, 20, true, b"c"), None);
        assert_eq!(r.lost(), 1);
        assert_eq!(r.frames_incomplete, 2);
    }
}
