//! Simulcast: a sender sends each video track as two or three layers (SSRCs, lowest
//! resolution first), and the relay sends each receiver one of them under the track's
//! own SSRC, with sequence numbers and timestamps that run on across switches, so the
//! receiver sees one ordinary stream.
//!
//! A receiver is moved from one layer to another only where the new layer can be decoded
//! from: the first packet of a key frame, read from the payload descriptor the packetiser
//! writes (VP8, VP9, AV1) or the NAL header (H264). The E2EE framing leaves those bytes
//! clear (web/sframe.js), so the relay switches layers without reading a frame.

use blindrelay_protocol::rtp::vp8_descriptor_len;
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
}

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
    used: bool,
}

/// One receiver's view of one simulcast track.
#[derive(Debug, Clone)]
pub struct LayerState {
    pub track: u32,
    /// The tallest picture it asked for (`u16::MAX`: no limit).
    pub max_height: u16,
    /// The layer it is being sent, or [`NO_LAYER`].
    pub current: u8,
    /// Switches from one layer to another, ever.
    pub switches: u64,
    seq_delta: u16,
    ts_delta: u32,
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
            current: NO_LAYER,
            switches: 0,
            seq_delta: 0,
            ts_delta: 0,
            last_seq: 0,
            last_ts: 0,
            sent: false,
            last_at: None,
            runs: [Run::default(); RUNS],
            run_next: 0,
        }
    }

    /// The layer it should be on: the tallest whose height, known from its key frames,
    /// is within its limit; the lowest if none is known to be.
    pub fn target(&self, t: &SimulcastTrack) -> u8 {
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
            self.runs[self.run_next] = Run {
                first: out_seq,
                layer,
                seq_delta: self.seq_delta,
                ts_delta: self.ts_delta,
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

    /// The packet a receiver's sequence number `out_seq` was: (layer, the layer's own
    /// sequence number, the timestamp offset), if it is in a remembered run.
    pub fn original(&self, out_seq: u16) -> Option<(u8, u16, u32)> {
        // The newest run that began at or before it.
        (1..=RUNS)
            .map(|k| &self.runs[(self.run_next + RUNS - k) % RUNS])
            .take_while(|r| r.used)
            .find(|r| (out_seq.wrapping_sub(r.first) as i16) >= 0)
            .filter(|_| (self.last_seq.wrapping_sub(out_seq) as i16) >= 0)
            .map(|r| (r.layer, out_seq.wrapping_sub(r.seq_delta), r.ts_delta))
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
    let h = payload.get(n..n + 10)?;
    if h[0] & 0x01 != 0 || h[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    Some(u16::from_le_bytes([h[8], h[9]]) & 0x3fff)
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
        assert_eq!(s.original(502), Some((2, 502, 0)));
        assert_eq!(s.original(505), Some((0, 72, 12900u32.wrapping_sub(3100))));
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
        assert_eq!(s.original(65535), Some((1, 65535, 0)));
        assert_eq!(s.original(0).map(|o| (o.0, o.1)), Some((0, 1000)));
    }
}
