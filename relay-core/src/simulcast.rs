//! Simulcast: a sender sends each video track as two or three layers (SSRCs, lowest
//! resolution first), and the relay sends each receiver one of them under the track's
//! own SSRC, with sequence numbers and timestamps that run on across switches, so the
//! receiver sees one ordinary stream.
//!
//! A receiver is moved from one layer to another only where the new layer can be decoded
//! from: the first packet of a key frame, read from the payload descriptor the packetiser
//! writes (VP8, VP9, AV1) or the NAL header (H264). The E2EE framing leaves those bytes
//! clear (web/sframe.js), so the relay switches layers without reading a frame.

use blindrelay_protocol::rtp::{vp8_descriptor_len, vp8_key_frame_size};
use blindrelay_protocol::sdp::{Codec, Layers, MAX_LAYERS};
use std::time::{Duration, Instant};

/// No layer yet: the receiver waits for a key frame of one.
pub const NO_LAYER: u8 = 0xff;

/// A layer that sent nothing to a receiver for this long has stopped (the sender dropped
/// it for its own bandwidth): the receiver may be moved to any other at its next key
/// frame, not only one nearer its target.
pub const LAYER_STALE: Duration = Duration::from_millis(500);

/// Layer runs remembered per receiver and track to answer its NACKs: a NACK names the
/// receiver's own numbers, and a packet from before the last few switches is too old to
/// repair anyway.
const RUNS: usize = 4;

/// A sender's simulcast track as the forwarder keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimulcastTrack {
    /// The SSRC receivers know the track by (its lowest layer's).
    pub track: u32,
    pub layers: Layers,
    /// Each layer's picture height, read from its last key frame (0: not known yet).
    pub heights: [u16; MAX_LAYERS],
    /// When each layer's last packet came (if the forwarder keeps time).
    pub seen: [Option<Instant>; MAX_LAYERS],
    /// Each layer's rate (bits per second, over the last [`RATE_WINDOW`]s, smoothed):
    /// what a receiver sent it needs of its downlink.
    pub rate_bps: [u32; MAX_LAYERS],
    bytes: [u32; MAX_LAYERS],
    rate_at: Option<Instant>,
}

/// How long each layer's bytes are summed for its rate.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

impl SimulcastTrack {
    /// Which layer of this track `ssrc` is.
    pub fn layer_of(&self, ssrc: u32) -> Option<u8> {
        self.layers
            .ssrcs()
            .iter()
            .position(|l| *l == ssrc)
            .map(|i| i as u8)
    }

    pub fn ssrc_of(&self, layer: u8) -> Option<u32> {
        self.layers.ssrcs().get(layer as usize).copied()
    }

    pub fn top(&self) -> u8 {
        self.layers.count.saturating_sub(1)
    }

    pub fn new(track: u32, layers: Layers) -> Self {
        SimulcastTrack {
            track,
            layers,
            heights: [0; MAX_LAYERS],
            seen: [None; MAX_LAYERS],
            rate_bps: [0; MAX_LAYERS],
            bytes: [0; MAX_LAYERS],
            rate_at: None,
        }
    }

    /// A packet of `len` bytes of `layer` came at `now`.
    pub fn count(&mut self, layer: u8, len: usize, now: Instant) {
        let Some(b) = self.bytes.get_mut(layer as usize) else {
            return;
        };
        *b = b.saturating_add(len as u32);
        let at = *self.rate_at.get_or_insert(now);
        let span = now.saturating_duration_since(at);
        if span >= RATE_WINDOW {
            let us = span.as_micros().max(1) as u64;
            for (r, b) in self.rate_bps.iter_mut().zip(self.bytes.iter_mut()) {
                let new = (u64::from(*b) * 8 * 1_000_000 / us).min(u64::from(u32::MAX)) as u32;
                // Key frames make one window's rate jump: half the last one smooths it.
                *r = if *r == 0 {
                    new
                } else {
                    (*r / 2).saturating_add(new / 2)
                };
                *b = 0;
            }
            self.rate_at = Some(now);
        }
    }

    /// Whether `layer` is being sent: a packet of it came within [`LAYER_STALE`].
    pub fn sending(&self, layer: u8, now: Option<Instant>) -> bool {
        match (self.seen.get(layer as usize).copied().flatten(), now) {
            (Some(t), Some(now)) => now.saturating_duration_since(t) < LAYER_STALE,
            _ => false,
        }
    }
}

/// Where one receiver's numbering of a track came from one layer.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    /// The receiver's sequence number of the run's first packet.
    first: u16,
    layer: u8,
    seq_delta: u16,
    ts_delta: u32,
    vp8: Vp8Offsets,
    used: bool,
}

/// What is added to a layer's VP8 PictureID (mod 2^15, or 2^7 in its short form) and
/// TL0PICIDX (mod 2^8) for one receiver. Each layer numbers its pictures on its own, and
/// libwebrtc's receiver takes a picture id behind the last one it decoded for an old frame
/// and drops it: without this a switch froze the picture for 3 s one time in two. The
/// descriptor is the packetiser's, outside the end-to-end encrypted frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vp8Offsets {
    pub pid: u16,
    pub tl0: u8,
}

/// The longest VP8 payload descriptor (RFC 7741 §4.2): the first byte, the extension
/// byte, a 15-bit PictureID, TL0PICIDX, and the TID/KEYIDX byte.
pub const MAX_VP8_DESCRIPTOR: usize = 6;

/// Where a VP8 payload descriptor holds its PictureID (offset, whether 15-bit) and its
/// TL0PICIDX.
fn vp8_id_fields(d: &[u8]) -> (Option<(usize, bool)>, Option<usize>) {
    let (Some(first), Some(ext)) = (d.first(), d.get(1)) else {
        return (None, None);
    };
    if first & 0x80 == 0 {
        return (None, None);
    }
    let mut at = 2;
    let pid = if ext & 0x80 != 0 {
        let long = d.get(at).is_some_and(|b| b & 0x80 != 0);
        let p = (at, long);
        at += if long { 2 } else { 1 };
        (at <= d.len()).then_some(p)
    } else {
        None
    };
    let tl0 = (ext & 0x40 != 0 && at < d.len()).then_some(at);
    (pid, tl0)
}

fn read_pid(d: &[u8], (at, long): (usize, bool)) -> u16 {
    if long {
        u16::from_be_bytes([d[at] & 0x7f, d[at + 1]])
    } else {
        u16::from(d[at] & 0x7f)
    }
}

fn write_pid(d: &mut [u8], (at, long): (usize, bool), pid: u16) {
    if long {
        let [hi, lo] = (pid & 0x7fff).to_be_bytes();
        d[at] = 0x80 | hi;
        d[at + 1] = lo;
    } else {
        d[at] = (pid & 0x7f) as u8;
    }
}

/// Add `o` to the PictureID and TL0PICIDX of the VP8 payload descriptor `d` (the bytes
/// [`vp8_descriptor_len`] counts), in place.
pub fn rewrite_vp8(d: &mut [u8], o: Vp8Offsets) {
    let (pid, tl0) = vp8_id_fields(d);
    if let Some(f) = pid {
        let v = read_pid(d, f).wrapping_add(o.pid);
        write_pid(d, f, v);
    }
    if let Some(at) = tl0 {
        d[at] = d[at].wrapping_add(o.tl0);
    }
}

/// One receiver's view of one simulcast track.
#[derive(Debug, Clone)]
pub struct LayerState {
    pub track: u32,
    /// The tallest picture it asked for (`u16::MAX`: no limit).
    pub max_height: u16,
    /// The highest layer its downlink has room for ([`NO_LAYER`]: no limit), and whether
    /// it has room for none: then it is sent nothing of the track (paused).
    pub bwe_max: u8,
    pub paused: bool,
    /// The layer it is being sent, or [`NO_LAYER`].
    pub current: u8,
    /// Switches from one layer to another, ever.
    pub switches: u64,
    seq_delta: u16,
    ts_delta: u32,
    /// The current run's VP8 offsets, whether they are still to be set from its first
    /// packet, and the last ids the receiver was sent.
    vp8: Vp8Offsets,
    vp8_due: bool,
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
    last_seq: u16,
    last_ts: u32,
    /// Whether it was sent a packet of the track yet, and when the last (if the forwarder
    /// knew the time).
    sent: bool,
    last_at: Option<Instant>,
    runs: [Run; RUNS],
    run_next: usize,
}

/// What a receiver gets of a packet of a simulcast layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Send it, numbered so.
    Send { seq: u16, ts: u32 },
    /// Not its layer (or from before its layer's switch point).
    Skip,
}

impl LayerState {
    pub fn new(track: u32) -> Self {
        LayerState {
            track,
            max_height: u16::MAX,
            bwe_max: NO_LAYER,
            paused: false,
            current: NO_LAYER,
            switches: 0,
            seq_delta: 0,
            ts_delta: 0,
            vp8: Vp8Offsets::default(),
            vp8_due: false,
            last_pid: None,
            last_tl0: None,
            last_seq: 0,
            last_ts: 0,
            sent: false,
            last_at: None,
            runs: [Run::default(); RUNS],
            run_next: 0,
        }
    }

    /// Whether it is being sent a layer that has not stopped.
    pub fn is_live(&self, now: Option<Instant>) -> bool {
        self.current != NO_LAYER
            && match (now, self.last_at) {
                (Some(now), Some(t)) => now.saturating_duration_since(t) < LAYER_STALE,
                _ => true,
            }
    }

    /// The layer it should be on: [`LayerState::height_target`], and no higher than its
    /// downlink has room for.
    pub fn target(&self, t: &SimulcastTrack) -> u8 {
        self.height_target(t).min(self.bwe_max)
    }

    /// The tallest layer whose height, known from its key frames, is within its limit;
    /// the lowest if none is known to be.
    pub fn height_target(&self, t: &SimulcastTrack) -> u8 {
        if self.max_height == u16::MAX {
            return t.top();
        }
        (0..=t.top())
            .rev()
            .find(|l| {
                let h = t.heights[*l as usize];
                h != 0 && h <= self.max_height
            })
            .unwrap_or(0)
    }

    /// Whether it should move to `layer` at that layer's next key frame: it has none yet,
    /// its layer stopped, or `layer` is nearer its target (below it, at equal distance:
    /// that one fits what the receiver asked for).
    fn wants(&self, layer: u8, target: u8, now: Option<Instant>) -> bool {
        let stale = match (now, self.last_at) {
            (Some(now), Some(t)) => now.saturating_duration_since(t) >= LAYER_STALE,
            _ => false,
        };
        if self.current == NO_LAYER || stale {
            return true;
        }
        let dist = |l: u8| l.abs_diff(target);
        dist(layer) < dist(self.current) || (dist(layer) == dist(self.current) && layer < target)
    }

    /// Route a packet of `layer` (sequence `seq`, timestamp `ts`; `key` when it starts a
    /// key frame) of a track it should get layer `target` of, arriving at `now` (if the caller
    /// keeps time: without it, a stopped layer is not noticed and a switch moves the clock
    /// on by one tick).
    pub fn route(
        &mut self,
        layer: u8,
        target: u8,
        seq: u16,
        ts: u32,
        key: bool,
        now: Option<Instant>,
    ) -> Route {
        if layer != self.current {
            if !(key && self.wants(layer, target, now)) {
                return Route::Skip;
            }
            // Switch: the new layer continues the receiver's numbering, and its clock
            // moves on by the time since the last packet sent (90 kHz, video).
            let (out_seq, out_ts) = if self.sent {
                let ticks = match (now, self.last_at) {
                    (Some(now), Some(t)) => {
                        now.saturating_duration_since(t).as_micros() * 90 / 1000
                    }
                    _ => 0,
                };
                (
                    self.last_seq.wrapping_add(1),
                    self.last_ts.wrapping_add((ticks as u32).max(1)),
                )
            } else {
                (seq, ts)
            };
            if self.current != NO_LAYER {
                self.switches += 1;
            }
            self.current = layer;
            self.seq_delta = out_seq.wrapping_sub(seq);
            self.ts_delta = out_ts.wrapping_sub(ts);
            self.vp8_due = true;
            self.runs[self.run_next] = Run {
                first: out_seq,
                layer,
                seq_delta: self.seq_delta,
                ts_delta: self.ts_delta,
                vp8: Vp8Offsets::default(),
                used: true,
            };
            self.run_next = (self.run_next + 1) % RUNS;
            self.last_seq = out_seq.wrapping_sub(1);
        }
        let out_seq = seq.wrapping_add(self.seq_delta);
        let run_first = self.runs[(self.run_next + RUNS - 1) % RUNS].first;
        if (out_seq.wrapping_sub(run_first) as i16) < 0 {
            // Before this layer's switch point: those numbers belong to the last layer.
            return Route::Skip;
        }
        let out_ts = ts.wrapping_add(self.ts_delta);
        if !self.sent || (out_seq.wrapping_sub(self.last_seq) as i16) > 0 {
            self.last_seq = out_seq;
            self.last_ts = out_ts;
        }
        self.sent = true;
        if now.is_some() {
            self.last_at = now;
        }
        Route::Send {
            seq: out_seq,
            ts: out_ts,
        }
    }

    /// Renumber the VP8 payload descriptor `d` of a packet just routed [`Route::Send`]
    /// for this receiver: its picture ids run on from the last it was sent across switches.
    pub fn map_vp8(&mut self, d: &mut [u8]) {
        let (pid, tl0) = vp8_id_fields(d);
        if self.vp8_due {
            // The run's first packet (a key frame): its picture follows the last one sent.
            self.vp8_due = false;
            let mut o = Vp8Offsets::default();
            if let (Some(f), Some(last)) = (pid, self.last_pid) {
                o.pid = last.wrapping_add(1).wrapping_sub(read_pid(d, f)) & 0x7fff;
            }
            if let (Some(at), Some(last)) = (tl0, self.last_tl0) {
                o.tl0 = last.wrapping_add(1).wrapping_sub(d[at]);
            }
            self.vp8 = o;
            self.runs[(self.run_next + RUNS - 1) % RUNS].vp8 = o;
        }
        rewrite_vp8(d, self.vp8);
        if let Some(f) = pid {
            let p = read_pid(d, f);
            let mask = if f.1 { 0x7fff } else { 0x7f };
            if self
                .last_pid
                .is_none_or(|l| (p.wrapping_sub(l) & mask) <= mask / 2)
            {
                self.last_pid = Some(p);
            }
        }
        if let Some(at) = tl0 {
            if self.last_tl0.is_none_or(|l| d[at].wrapping_sub(l) < 0x80) {
                self.last_tl0 = Some(d[at]);
            }
        }
    }

    /// The packet a receiver's sequence number `out_seq` was: (layer, the layer's own
    /// sequence number, the timestamp offset, the VP8 offsets), if it is in a remembered
    /// run.
    pub fn original(&self, out_seq: u16) -> Option<(u8, u16, u32, Vp8Offsets)> {
        // The newest run that began at or before it.
        (1..=RUNS)
            .map(|k| &self.runs[(self.run_next + RUNS - k) % RUNS])
            .take_while(|r| r.used)
            .find(|r| (out_seq.wrapping_sub(r.first) as i16) >= 0)
            .filter(|_| (self.last_seq.wrapping_sub(out_seq) as i16) >= 0)
            .map(|r| {
                (
                    r.layer,
                    out_seq.wrapping_sub(r.seq_delta),
                    r.ts_delta,
                    r.vp8,
                )
            })
    }

    /// The timestamp offset of `layer` if the receiver is on it now.
    pub fn ts_delta_of(&self, layer: u8) -> Option<u32> {
        (self.current == layer).then_some(self.ts_delta)
    }
}

/// The picture height a VP8 key frame's first packet announces (RFC 6386 §9.1: the
/// frame tag, the start code, then 14-bit width and height). The web client's E2EE framing
/// leaves exactly these 10 bytes clear.
pub fn vp8_keyframe_height(payload: &[u8]) -> Option<u16> {
    let n = vp8_descriptor_len(payload)?;
    vp8_key_frame_size(payload.get(n..)?).map(|(_, h)| h)
}

/// Whether an RTP payload of `codec` starts a key frame a decoder can begin at. Only the
/// payload format's own header is read: the descriptor (VP8, VP9, AV1) or the NAL header
/// (H264), which the packetiser writes around the (possibly end-to-end encrypted) frame.
pub fn starts_keyframe(codec: u8, payload: &[u8]) -> bool {
    fn vp8(p: &[u8]) -> Option<bool> {
        let first = *p.first()?;
        // S (start of a partition) and partition index 0: the frame's first packet.
        if first & 0x10 == 0 || first & 0x07 != 0 {
            return Some(false);
        }
        let n = vp8_descriptor_len(p)?;
        // The VP8 payload header's P bit: 0 on a key frame (RFC 7741 §4.3).
        Some(*p.get(n)? & 0x01 == 0)
    }
    fn vp9(p: &[u8]) -> Option<bool> {
        let first = *p.first()?;
        // B (first packet of the frame) and not P (not inter-picture predicted).
        if first & 0x08 == 0 || first & 0x40 != 0 {
            return Some(false);
        }
        let mut n = 1;
        if first & 0x80 != 0 {
            n += if *p.get(1)? & 0x80 != 0 { 2 } else { 1 };
        }
        if first & 0x20 != 0 {
            // Layer indices: the base spatial layer (SID 0) starts the picture.
            return Some(*p.get(n)? & 0x0e == 0);
        }
        Some(true)
    }
    fn h264(p: &[u8]) -> Option<bool> {
        let nal = *p.first()? & 0x1f;
        Some(match nal {
            5 | 7 => true,
            // STAP-A: an SPS or IDR among the aggregated units.
            24 => {
                let mut i = 1;
                let mut found = false;
                while let (Some(a), Some(b)) = (p.get(i), p.get(i + 1)) {
                    let len = u16::from_be_bytes([*a, *b]) as usize;
                    if let Some(h) = p.get(i + 2) {
                        found |= matches!(h & 0x1f, 5 | 7);
                    }
                    i += 2 + len;
                }
                found
            }
            // FU-A: the start of an IDR unit.
            28 => {
                let fu = *p.get(1)?;
                fu & 0x80 != 0 && fu & 0x1f == 5
            }
            _ => false,
        })
    }
    let r = match codec {
        c if c == Codec::Vp8 as u8 => vp8(payload),
        c if c == Codec::Vp9 as u8 => vp9(payload),
        // The aggregation header's N: the first packet of a coded video sequence, and Z
        // clear: it does not continue an OBU from an earlier packet.
        c if c == Codec::Av1 as u8 => payload.first().map(|h| h & 0x88 == 0x08),
        c if c == Codec::H264 as u8 => h264(payload),
        _ => None,
    };
    r.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframes_are_found_in_each_payload_format() {
        let vp8 = Codec::Vp8 as u8;
        // Chromium's descriptor (X, I with a 15-bit picture id), then P = 0.
        assert!(starts_keyframe(vp8, &[0x90, 0x80, 0x81, 0x23, 0x10, 0x02]));
        assert!(!starts_keyframe(vp8, &[0x90, 0x80, 0x81, 0x23, 0x11, 0x02]));
        // Not the frame's first packet.
        assert!(!starts_keyframe(vp8, &[0x80, 0x80, 0x81, 0x23, 0x10]));
        assert!(starts_keyframe(vp8, &[0x10, 0x00]));
        assert!(!starts_keyframe(vp8, &[0x10]), "truncated");
        let vp9 = Codec::Vp9 as u8;
        assert!(starts_keyframe(vp9, &[0x88, 0x01]));
        assert!(!starts_keyframe(vp9, &[0xc8, 0x01]), "inter-predicted");
        assert!(starts_keyframe(vp9, &[0xa8, 0x01, 0x00]), "SID 0");
        assert!(!starts_keyframe(vp9, &[0xa8, 0x01, 0x02]), "SID 1");
        let av1 = Codec::Av1 as u8;
        assert!(starts_keyframe(av1, &[0x18]));
        assert!(!starts_keyframe(av1, &[0x10]));
        assert!(!starts_keyframe(av1, &[0x88]), "continues an OBU");
        let h264 = Codec::H264 as u8;
        assert!(starts_keyframe(h264, &[0x65]));
        assert!(!starts_keyframe(h264, &[0x41]));
        assert!(starts_keyframe(h264, &[0x18, 0, 2, 0x67, 0x42, 0, 1, 0x68]));
        assert!(starts_keyframe(h264, &[0x7c, 0x85]));
        assert!(
            !starts_keyframe(h264, &[0x7c, 0x05]),
            "FU-A not at its start"
        );
        assert!(!starts_keyframe(Codec::Opus as u8, &[0x10, 0x00]));
        assert!(!starts_keyframe(vp8, &[]));
    }

    #[test]
    fn a_receiver_moves_only_at_key_frames_and_its_numbers_run_on() {
        let t0 = Instant::now();
        let ms = |n: u64| Some(t0 + Duration::from_millis(n));
        let mut s = LayerState::new(10);
        // Nothing until a key frame; then the target layer as it comes.
        assert_eq!(s.route(2, 2, 500, 9000, false, ms(0)), Route::Skip);
        assert_eq!(
            s.route(2, 2, 501, 9000, true, ms(0)),
            Route::Send { seq: 501, ts: 9000 }
        );
        assert_eq!(
            s.route(2, 2, 502, 9000, false, ms(1)),
            Route::Send { seq: 502, ts: 9000 }
        );
        // Target 0: its delta frames are skipped, its key frame switches.
        assert_eq!(s.route(0, 0, 70, 100, false, ms(2)), Route::Skip);
        assert_eq!(
            s.route(2, 0, 503, 12000, false, ms(33)),
            Route::Send {
                seq: 503,
                ts: 12000
            }
        );
        assert_eq!(
            s.route(0, 0, 71, 3100, true, ms(43)),
            Route::Send {
                seq: 504,
                ts: 12900
            }
        );
        assert_eq!((s.current, s.switches), (0, 1));
        // The old layer is not sent any more; nor is the new one from before its switch.
        assert_eq!(s.route(2, 0, 504, 15000, true, ms(44)), Route::Skip);
        assert_eq!(s.route(0, 0, 70, 100, false, ms(44)), Route::Skip);
        assert_eq!(
            s.route(0, 0, 72, 3100, false, ms(45)),
            Route::Send {
                seq: 505,
                ts: 12900
            }
        );
        // NACKs name the receiver's numbers: each maps back to its layer.
        let zero = Vp8Offsets::default();
        assert_eq!(s.original(502), Some((2, 502, 0, zero)));
        assert_eq!(
            s.original(505),
            Some((0, 72, 12900u32.wrapping_sub(3100), zero))
        );
        assert_eq!(s.original(506), None, "not sent yet");
        // A stopped layer: any key frame moves the receiver on.
        assert_eq!(
            s.route(1, 0, 9, 50, true, ms(45 + 600)),
            Route::Send {
                seq: 506,
                ts: 12900 + 600 * 90
            }
        );
        // Target 2: a key frame of the top layer moves it up; then one of layer 1 does
        // not (the top is nearer).
        assert_eq!(
            s.route(1, 2, 10, 50, true, ms(650)),
            Route::Send {
                seq: 507,
                ts: 12900 + 600 * 90
            }
        );
        assert!(matches!(
            s.route(2, 2, 600, 20000, true, ms(660)),
            Route::Send { seq: 508, .. }
        ));
        assert_eq!(s.route(1, 2, 11, 60, true, ms(661)), Route::Skip);
        assert_eq!(s.switches, 3);
        // Between two layers as near, the one below the target.
        let mut s = LayerState::new(10);
        assert!(matches!(
            s.route(2, 1, 1, 1, true, ms(0)),
            Route::Send { .. }
        ));
        assert!(matches!(
            s.route(0, 1, 1, 1, true, ms(1)),
            Route::Send { .. }
        ));
        assert_eq!(s.route(2, 1, 2, 1, true, ms(2)), Route::Skip);
    }

    #[test]
    fn the_target_is_the_tallest_layer_within_the_limit() {
        let mut t = SimulcastTrack::new(
            10,
            Layers {
                ssrcs: [10, 11, 12],
                rtx: [None; MAX_LAYERS],
                count: 3,
            },
        );
        let mut s = LayerState::new(10);
        assert_eq!(s.target(&t), 2, "no limit: the top");
        s.max_height = 400;
        assert_eq!(s.target(&t), 0, "no height known yet: the lowest");
        t.heights = [180, 360, 720];
        assert_eq!(s.target(&t), 1);
        s.max_height = 100;
        assert_eq!(s.target(&t), 0, "none fits: the lowest");
        assert_eq!(
            vp8_keyframe_height(&[
                0x90, 0x80, 0x81, 0x23, 0x50, 0x2a, 0, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xd0, 0x02
            ]),
            Some(720)
        );
        assert_eq!(
            vp8_keyframe_height(&[0x10, 0x51, 0x2a, 0, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xd0, 0x02]),
            None,
            "delta"
        );
        assert_eq!(
            vp8_keyframe_height(&[0x10, 0x50, 0x2a, 0, 0x9d]),
            None,
            "short"
        );
    }

    /// Each layer numbers its VP8 pictures on its own: a receiver's picture ids and
    /// TL0PICIDX run on across a switch (15-bit and 8-bit wrap), and a NACK's packet is
    /// renumbered as it was sent.
    #[test]
    fn vp8_picture_ids_run_on_across_switches() {
        // X; I (15-bit picture id), L (TL0PICIDX).
        let desc = |pid: u16, tl0: u8| {
            let [hi, lo] = pid.to_be_bytes();
            [0x90, 0xc0, 0x80 | hi, lo, tl0]
        };
        let ids = |d: &[u8; 5]| (u16::from_be_bytes([d[2] & 0x7f, d[3]]), d[4]);
        let t0 = Instant::now();
        let mut s = LayerState::new(1);
        let mut sent = Vec::new();
        let mut go =
            |s: &mut LayerState, layer: u8, target: u8, seq: u16, key: bool, pid: u16, tl0: u8| {
                if let Route::Send { .. } = s.route(layer, target, seq, 0, key, Some(t0)) {
                    let mut d = desc(pid, tl0);
                    s.map_vp8(&mut d);
                    sent.push(ids(&d));
                }
            };
        go(&mut s, 1, 1, 10, true, 32_766, 254);
        go(&mut s, 1, 1, 11, false, 32_767, 255);
        // Layer 0 numbers far behind: the receiver's ids run on, wrapping.
        go(&mut s, 0, 0, 500, true, 7, 3);
        go(&mut s, 0, 0, 501, false, 8, 4);
        assert_eq!(sent, [(32_766, 254), (32_767, 255), (0, 0), (1, 1)]);
        let (_, q, _, v) = s.original(13).expect("sent");
        assert_eq!(q, 501);
        let mut d = desc(8, 4);
        rewrite_vp8(&mut d, v);
        assert_eq!(ids(&d), (1, 1), "a retransmission as it was sent");
        // The short (7-bit) form wraps at 128.
        let mut d = [0x90, 0x80, 0x7f];
        rewrite_vp8(&mut d, Vp8Offsets { pid: 2, tl0: 0 });
        assert_eq!(d, [0x90, 0x80, 0x01]);
    }

    #[test]
    fn numbers_run_on_across_the_wrap() {
        let t0 = Instant::now();
        let mut s = LayerState::new(1);
        assert!(matches!(
            s.route(1, 1, 65534, u32::MAX - 10, true, Some(t0)),
            Route::Send { seq: 65534, .. }
        ));
        assert!(matches!(
            s.route(1, 1, 65535, u32::MAX - 10, false, Some(t0)),
            Route::Send { seq: 65535, .. }
        ));
        let r = s.route(0, 0, 1000, 5, true, Some(t0 + Duration::from_millis(20)));
        assert_eq!(
            r,
            Route::Send {
                seq: 0,
                ts: (u32::MAX - 10).wrapping_add(1800)
            }
        );
        assert_eq!(
            s.original(65535),
            Some((1, 65535, 0, Vp8Offsets::default()))
        );
        assert_eq!(s.original(0).map(|o| (o.0, o.1)), Some((0, 1000)));
    }
}
