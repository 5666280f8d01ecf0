//! One forwarding loop's state: the participants pinned to it, their hop SRTP contexts,
//! and who receives what. SRTP is unprotected with the sender's context, the RTP header is
//! read to route, and the same bytes are protected for each receiver: the payload (the
//! end-to-end encrypted frame) is never parsed or changed.

use super::hop::{HopCipher, HopError};
use super::report::{DropReason, ProbeResult, Retransmit};
use super::simulcast::{self, LayerState, Route, SimulcastTrack, NO_LAYER};
use super::{CallKey, PeerId};
use crate::bwe::DownlinkBwe;
use blindrelay_protocol::rtcp::{self, RtcpRoute};
use blindrelay_protocol::rtp::{find_extension, vp8_descriptor_len, RtpHeader};
use blindrelay_protocol::sdp::{Codec, Layers, Numbering, SentTrack, CODEC_COUNT, MAX_LAYERS};
use blindrelay_protocol::twcc::{self, Arrival, SeqUnwrapper};
// foldhash, seeded per process: SipHash was ~2 % of the relay's CPU at 300k packets/s.
use foldhash::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A hook that sees every RTP packet as the relay holds it after hop decryption (clear
/// header, end-to-end payload). Tests and the pcap capture use it to prove the relay holds
/// only ciphertext.
pub type MediaTap = Arc<dyn Fn(&TapPacket<'_>) + Send + Sync>;

/// One RTP packet handed to a [`MediaTap`]: who sent it and in which call, so a tap can
/// filter by call and write the sender's address without another lookup.
#[derive(Debug, Clone, Copy)]
pub struct TapPacket<'a> {
    /// The sender's transport address (its nominated ICE 5-tuple).
    pub from: SocketAddr,
    /// The call the packet belongs to.
    pub call: CallKey,
    /// The RTP packet after hop decryption: clear header, end-to-end payload.
    pub data: &'a [u8],
}

/// One datagram to send: its receiver, and where its bytes lie in the [`Outbox`] arena.
/// Small and `Copy`, so queuing one allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    /// Offset of the datagram in [`Outbox::arena`].
    pub start: usize,
    /// Length of the datagram.
    pub len: usize,
    pub rtcp: bool,
}

impl Transmit {
    /// Where the datagram lies in [`Outbox::arena`].
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }
}

/// The datagrams a forwarding loop queued, in order. Their bytes lie back to back in one
/// arena that is cleared, not freed, between batches: once it has grown to the working
/// size, forwarding allocates nothing per packet, and consecutive datagrams to one
/// receiver are already contiguous for a GSO send.
#[derive(Debug, Default)]
pub struct Outbox {
    arena: Vec<u8>,
    transmits: Vec<Transmit>,
}

impl Outbox {
    /// Room for `packets` datagrams totalling `bytes` before the first growth.
    pub fn with_capacity(packets: usize, bytes: usize) -> Self {
        Outbox {
            arena: Vec::with_capacity(bytes),
            transmits: Vec::with_capacity(packets),
        }
    }

    /// Forget every datagram, keeping the memory for the next batch.
    pub fn clear(&mut self) {
        self.arena.clear();
        self.transmits.clear();
    }

    pub fn len(&self) -> usize {
        self.transmits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.transmits.is_empty()
    }

    /// The queued datagrams, in order.
    pub fn transmits(&self) -> &[Transmit] {
        &self.transmits
    }

    /// Every queued datagram's bytes, back to back.
    pub fn arena(&self) -> &[u8] {
        &self.arena
    }

    /// The bytes of `t`, one of this outbox's transmits.
    pub fn data(&self, t: &Transmit) -> &[u8] {
        &self.arena[t.range()]
    }

    /// The bytes of the `i`th datagram, if there is one.
    pub fn get(&self, i: usize) -> Option<(Transmit, &[u8])> {
        let t = *self.transmits.get(i)?;
        Some((t, self.arena.get(t.range())?))
    }

    /// Protect `clear` with `ctx` straight into the arena and queue it for `to`.
    fn push(
        &mut self,
        to: SocketAddr,
        rtcp: bool,
        ctx: &mut impl HopCipher,
        clear: &[u8],
    ) -> Result<(), DropReason> {
        let r = if rtcp {
            ctx.protect_rtcp_into(clear, &mut self.arena)
        } else {
            ctx.protect_rtp_into(clear, &mut self.arena)
        }
        .map_err(hop_drop)?;
        self.transmits.push(Transmit {
            to,
            start: r.start,
            len: r.len(),
            rtcp,
        });
        Ok(())
    }
}

impl Outbox {
    /// [`Outbox::push`] for an RTP packet given as a rewritten header and its payload.
    fn push_rtp_parts(
        &mut self,
        to: SocketAddr,
        ctx: &mut impl HopCipher,
        header: &[u8],
        payload: &[u8],
    ) -> Result<(), DropReason> {
        let r = ctx
            .protect_rtp_parts_into(header, payload, &mut self.arena)
            .map_err(hop_drop)?;
        self.transmits.push(Transmit {
            to,
            start: r.start,
            len: r.len(),
            rtcp: false,
        });
        Ok(())
    }
}

/// The SSRC the relay's own RTCP (transport-cc feedback, PLI) is sent from.
pub const RELAY_SSRC: u32 = 1;

/// How often at most a sender gets transport-cc feedback (libwebrtc sends it about every
/// 50-100 ms) and, separately, a keyframe request.
const FEEDBACK_INTERVAL: Duration = Duration::from_millis(50);
const PLI_INTERVAL: Duration = Duration::from_millis(500);
/// How often at most receivers' keyframe requests (PLI, FIR) about one stream reach its
/// sender. One keyframe serves every receiver, so requests within the interval are
/// coalesced into the first, as mediasoup and Janus coalesce PLIs; the rest are dropped
/// and counted. A receiver still without a keyframe asks again (libwebrtc repeats its
/// request every few hundred milliseconds), so a decoder waits at most about this long
/// more, while a flood reaches the sender at no more than 4 requests a second a stream.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(250);
/// Streams per sender whose last keyframe request is remembered. A sender has at most a
/// few video streams; with every slot inside its interval, a request about yet another
/// stream is coalesced too, so a sender is asked at most this many times an interval.
const KEYFRAME_SLOTS: usize = 4;
/// Lost-packet entries (PID + BLP: up to 17 packets each) a receiver's NACKs may carry
/// per second, across every stream it receives, and as a burst. libwebrtc asks for each
/// lost packet a few times, an RTT apart: 10 % loss on 1,000 packets a second received
/// needs about 300. Beyond it a NACK is dropped and counted, so one receiver cannot turn
/// a sender's uplink into a retransmission storm (a 206 KB NACK storm reached its victim
/// before this limit).
pub const NACK_ENTRIES_PER_SECOND: u64 = 500;
const NACK_ENTRIES_BURST: u64 = 500;
/// NACK budget units per entry: a microsecond earns [`NACK_ENTRIES_PER_SECOND`] units,
/// so the budget is exact integer arithmetic.
const NACK_UNIT: u64 = 1_000_000;
/// Packets the relay sends one receiver again from its cache per second, and as a burst.
/// A NACK entry asks for up to 17 packets, so the entry budget alone would let one small
/// NACK make the relay seal and send thousands; this bounds what a receiver can make the
/// relay send (about 5 Mbit/s of 1,200-byte packets: 10 % loss of a call's video).
pub const RTX_PACKETS_PER_SECOND: u64 = 500;
const RTX_PACKETS_BURST: u64 = 500;
/// Arrivals held per sender between feedback packets.
const TWCC_PENDING: usize = 256;
const NO: u8 = 0xff;
/// Set in [`PeerTables`]' codec of a payload type that is that codec's RTX.
const RTX: u8 = 0x80;
/// Packets the relay keeps of each video stream it receives, to answer receivers' NACKs
/// (RFC 4585) itself: 0.7 s of an 8 Mbit/s stream, several seconds of a usual one, more
/// than a round trip on any path a call survives. A power of two dividing 2^16, so a
/// sequence number keeps its slot across the wrap.
pub const CACHE_PACKETS: usize = 512;
/// The largest packet cached (clear header without extensions, and payload): an
/// Ethernet MTU. Larger ones are forwarded and not cached.
const CACHE_SLOT_BYTES: usize = 1500;
/// A cache slot's length for a packet that came but whose bytes were not kept.
const SEEN_ONLY: u16 = u16::MAX;
/// A gap in a sender's sequence the relay asks it to fill (a NACK); a longer one is a
/// restart or a burst no retransmission would save.
const MAX_UPLINK_GAP: u16 = 64;
/// Video streams a participant (or node link end) may have cached at once.
const MAX_CACHED_STREAMS: usize = 64;
/// Remote simulcast tracks a receiver keeps a layer choice for: more than a call's
/// participants send. A track beyond it is not sent to that receiver.
pub const MAX_LAYER_STATES: usize = 64;
/// How often at most a receiver's layers are chosen again from its downlink estimate.
const ALLOC_INTERVAL: Duration = Duration::from_millis(500);
/// The share of a receiver's estimate its media is given. All of it: after congestion
/// the estimate is already 85 % of what got through, and a raise needs
/// [`RAISE_PERCENT`].
const BUDGET_PERCENT: u64 = 100;
/// A track is paused only once its receiver's budget has been short of the lowest
/// layers for this long: the estimate dips below the path's rate for a moment after
/// each congestion, and a pause costs a key frame to resume.
const PAUSE_AFTER: Duration = Duration::from_secs(2);
/// A layer above the one a receiver had is given it only if the budget holds this much
/// more than the layer's rate (percent), so a rate near a layer's does not flap.
const RAISE_PERCENT: u64 = 115;
/// The estimate fell within this long of raising a layer: the raise congested the path,
/// and raising is held off for [`HOLD_FIRST`], doubling up to [`HOLD_MAX`] each time
/// (a congested probe counts as a failed raise).
const RAISE_FAILED_WITHIN: Duration = Duration::from_secs(4);
const HOLD_FIRST: Duration = Duration::from_secs(8);
/// A path clear this long (and no raise or probe within it) may be probed for one layer
/// more than its estimate has room for; a receiver with no RTX to pad is given the
/// layer, and the raise is the probe.
const PROBE_AFTER: Duration = Duration::from_secs(2);
const HOLD_MAX: Duration = Duration::from_secs(64);
/// As [`PROBE_AFTER`], for a receiver that can be probed with padding.
const PAD_PROBE_AFTER: Duration = Duration::from_secs(1);
/// How long a probe pads a receiver's path before the raise it stands for; a probe whose
/// path congests ends at once.
const PROBE_FOR: Duration = Duration::from_millis(600);
/// A probe that the path carried at this share of its rate (percent of
/// [`Probe::target`], acknowledged by the receiver's feedback) holds.
const PROBE_CARRIED_PERCENT: u64 = 85;
/// The most padding a probe adds: about two top layers.
const PROBE_MAX_BPS: u64 = 4_000_000;
/// Padding packets sent after one forwarded packet at most, so a probe comes in short
/// trains and never in a burst that would congest any path.
const PADS_PER_PACKET: u64 = 4;
/// A padding packet's padding (RFC 3550: at most 255 bytes, the last one the count),
/// and its size on the wire with its header (fixed part and the transport-cc extension).
const PADDING: [u8; 255] = {
    let mut p = [0u8; 255];
    p[254] = 255;
    p
};
const PAD_WIRE: u64 = (12 + 8 + PADDING.len() + WIRE_OVERHEAD) as u64;
/// A track paused for its receiver (see [`choose_layers`]).
const PAUSE: u8 = 0xfe;
/// Estimates kept for the metrics between two [`Forwarder::take_estimates`].
const ESTIMATE_SAMPLES: usize = 256;
/// What a packet costs on the wire beyond its clear RTP: the SRTP tag (at most 16
/// bytes), UDP and IPv4 headers.
const WIRE_OVERHEAD: usize = 44;
/// The largest per-receiver header: fixed part and CSRCs, a transport-cc extension, a
/// VP8 descriptor.
const HEAD_MAX: usize = 12 + 4 * 15 + 8 + simulcast::MAX_VP8_DESCRIPTOR;

/// How often at most a participant's liveness (consent) is reported: consent is judged in
/// seconds, and the forwarding loop must not send the control plane an event per packet.
pub const ACTIVITY_INTERVAL: Duration = Duration::from_secs(1);

/// A participant's numbering and tracks as flat tables the per-packet path indexes
/// without hashing or allocating (see [`Numbering`]).
#[derive(Debug, Clone)]
pub struct PeerTables {
    /// The codec each payload type stands for; an RTX type is its codec's index with
    /// [`RTX`] set.
    codec_of_pt: [u8; 128],
    pt_of_codec: [u8; CODEC_COUNT],
    /// The participant's RTX payload type for each codec ([`NO`]: it takes no RTX).
    rtx_pt_of_codec: [u8; CODEC_COUNT],
    /// Its tracks' (media SSRC, RTX SSRC) pairs: what it retransmits on, and what the
    /// relay retransmits its tracks on to receivers that take RTX.
    pub repairs: Vec<(u32, u32)>,
    twcc_id: u8,
    /// The SSRCs the participant announced: it may send no other. Empty: it announced
    /// none, and owns the SSRCs it sends first.
    pub ssrcs: Vec<u32>,
    /// Its video SSRCs, for keyframe requests.
    pub video_ssrcs: Vec<u32>,
    /// The remote SSRCs it has tracks for (it answered the offer that added them): it is
    /// sent no other media. `None`: everything (tests and benchmarks that build
    /// forwarders by hand, without signalling).
    pub receiving: Option<Vec<u32>>,
    /// A node link's end in this call (a cascade), not a participant: what comes from one
    /// link never goes out on another, so media crosses each link once and never loops.
    pub link: bool,
    /// Whether its arrival asks the call's video senders for a key frame. Not in an MLS
    /// call: the joiner opens nothing sealed before a commit gives it keys, so that key
    /// frame is lost on it, and libwebrtc, which makes at most one key frame per 300 ms,
    /// then holds back the one the members ask for under the new keys (measured in
    /// bench/RESULTS.md: a late joiner's first key frame 550 -> 200 ms). The members ask
    /// once keyed, as the web client and e2ee-client do. A 1:1 E2EE call keeps it: its
    /// pages are keyed by the time media flows, and without it their first key frame
    /// came later (160 -> 290 ms across two nodes).
    pub keyframe_on_join: bool,
    /// As a receiver: the next sequence number of the RTX stream it is sent for each
    /// remote media SSRC (the relay numbers each receiver's retransmissions itself). Kept
    /// here so it moves with the hop contexts (`take_peer`): a numbering that restarted
    /// would only meet SRTP indices its hop refuses to seal again.
    rtx_next: Vec<(u32, u16)>,
    /// As a sender: its simulcast tracks (each layer also in `ssrcs` and `video_ssrcs`).
    pub simulcast: Vec<SimulcastTrack>,
    /// As a receiver: which layer of each remote simulcast track it is sent, and its own
    /// numbering of it (at most [`MAX_LAYER_STATES`]). Kept here, as `rtx_next`, so it
    /// moves with the hop contexts.
    layer_states: Vec<LayerState>,
}

/// Payload types on node links: one fixed number per codec, whatever the participants
/// at either end chose (the far node renumbers for its receivers, as for any sender).
pub const LINK_PT_BASE: u8 = 96;

/// [`PeerTables`] as plain data, for a node link: the owner node's plane makes a remote
/// participant's tables, and the node that serves it loads them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerTablesWire {
    pub codecs: Vec<(u8, u8)>,
    /// (RTX payload type, codec index).
    #[serde(default)]
    pub rtx: Vec<(u8, u8)>,
    #[serde(default)]
    pub repairs: Vec<(u32, u32)>,
    /// Simulcast tracks: each one's layer SSRCs, lowest first.
    #[serde(default)]
    pub simulcast: Vec<Vec<u32>>,
    pub twcc_id: u8,
    pub ssrcs: Vec<u32>,
    pub video_ssrcs: Vec<u32>,
    pub receiving: Option<Vec<u32>>,
    /// See [`PeerTables::keyframe_on_join`]; absent (an older node): yes, as before.
    #[serde(default = "yes")]
    pub keyframe_on_join: bool,
}

fn yes() -> bool {
    true
}

/// Simulcast tracks from their layers' SSRCs (each list lowest first), checked: 2 or 3
/// distinct layers each, every one a video SSRC of the participant's own. A track in
/// `known` with the same layers keeps its state.
fn simulcast_tracks(
    lists: &[Vec<u32>],
    ssrcs: &[u32],
    video: &[u32],
    known: &[SimulcastTrack],
) -> Result<Vec<SimulcastTrack>, TablesError> {
    if lists.len() > MAX_WIRE_SSRCS {
        return Err(TablesError::TooMany(lists.len()));
    }
    let mut out = Vec::with_capacity(lists.len());
    for layers in lists {
        let own = (2..=MAX_LAYERS).contains(&layers.len())
            && layers
                .iter()
                .enumerate()
                .all(|(i, l)| ssrcs.contains(l) && video.contains(l) && !layers[..i].contains(l));
        if !own {
            return Err(TablesError::Simulcast);
        }
        let mut l = Layers::NONE;
        l.ssrcs[..layers.len()].copy_from_slice(layers);
        l.count = layers.len() as u8;
        out.push(
            known
                .iter()
                .find(|t| t.layers == l)
                .copied()
                .unwrap_or_else(|| SimulcastTrack::new(layers[0], l)),
        );
    }
    Ok(out)
}

/// Tables from a node link that do not describe a participant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TablesError {
    #[error("payload type {0} is not a dynamic RTP payload type below 128")]
    PayloadType(u8),
    #[error("codec index {0} is unknown")]
    Codec(u8),
    #[error("{0} SSRCs is more than a participant may have")]
    TooMany(usize),
    #[error("a simulcast track has 2 or 3 layers, each an SSRC of the participant's own")]
    Simulcast,
}

/// SSRCs one side of a node link may list in one table: a call's worth of tracks.
pub const MAX_WIRE_SSRCS: usize = 4096;

impl PeerTables {
    pub fn new(n: &Numbering, tracks: &[SentTrack], announced: &[u32]) -> Self {
        let mut t = PeerTables {
            codec_of_pt: [NO; 128],
            pt_of_codec: [NO; CODEC_COUNT],
            rtx_pt_of_codec: [NO; CODEC_COUNT],
            repairs: tracks
                .iter()
                .filter_map(|t| Some((t.ssrc, t.rtx?)))
                .chain(tracks.iter().flat_map(|t| {
                    // Each layer but the lowest (the track's own SSRC, just above).
                    let l = &t.layers;
                    (1..l.count as usize).filter_map(|i| Some((l.ssrcs[i], l.rtx[i]?)))
                }))
                .collect(),
            twcc_id: n.twcc.unwrap_or(0),
            ssrcs: announced.to_vec(),
            video_ssrcs: tracks
                .iter()
                .filter(|t| t.kind == "video")
                .flat_map(|t| {
                    let layers = t.layers.ssrcs();
                    std::iter::once(t.ssrc).chain(layers.iter().copied().filter(|l| *l != t.ssrc))
                })
                .collect(),
            receiving: Some(Vec::new()),
            link: false,
            keyframe_on_join: true,
            rtx_next: Vec::new(),
            simulcast: tracks
                .iter()
                .filter(|t| t.kind == "video" && t.layers.count >= 2)
                .map(|t| SimulcastTrack::new(t.ssrc, t.layers))
                .collect(),
            layer_states: Vec::new(),
        };
        for c in Codec::ALL {
            if let Some(pt) = n.pt_of(c).filter(|pt| *pt < 128) {
                t.codec_of_pt[pt as usize] = c as u8;
                t.pt_of_codec[c.index()] = pt;
            }
        }
        for c in Codec::ALL {
            let rtx = n.rtx[c.index()].filter(|r| *r < 128);
            if let (Some(r), true) = (rtx, t.pt_of_codec[c.index()] != NO) {
                if t.codec_of_pt[r as usize] == NO {
                    t.codec_of_pt[r as usize] = c as u8 | RTX;
                    t.rtx_pt_of_codec[c.index()] = r;
                }
            }
        }
        t
    }

    /// A node link's end in a call: it sends the `ssrcs` of the far node's participants
    /// and is sent those of `receiving`, every codec on [`LINK_PT_BASE`] and up, with no
    /// transport-cc (QUIC paces the link).
    pub fn link(ssrcs: Vec<u32>, video_ssrcs: Vec<u32>, receiving: Vec<u32>) -> Self {
        let mut t = PeerTables {
            codec_of_pt: [NO; 128],
            pt_of_codec: [NO; CODEC_COUNT],
            rtx_pt_of_codec: [NO; CODEC_COUNT],
            repairs: Vec::new(),
            twcc_id: 0,
            ssrcs,
            video_ssrcs,
            receiving: Some(receiving),
            link: true,
            keyframe_on_join: true,
            rtx_next: Vec::new(),
            simulcast: Vec::new(),
            layer_states: Vec::new(),
        };
        for c in Codec::ALL {
            let pt = LINK_PT_BASE + c as u8;
            t.codec_of_pt[pt as usize] = c as u8;
            t.pt_of_codec[c.index()] = pt;
        }
        t
    }

    pub fn to_wire(&self) -> PeerTablesWire {
        PeerTablesWire {
            codecs: (0u8..128)
                .filter(|pt| self.codec_of_pt[*pt as usize] & RTX == 0)
                .map(|pt| (pt, self.codec_of_pt[pt as usize]))
                .collect(),
            rtx: Codec::ALL
                .into_iter()
                .filter(|c| self.rtx_pt_of_codec[c.index()] != NO)
                .map(|c| (self.rtx_pt_of_codec[c.index()], c as u8))
                .collect(),
            repairs: self.repairs.clone(),
            simulcast: self
                .simulcast
                .iter()
                .map(|t| t.layers.ssrcs().to_vec())
                .collect(),
            twcc_id: self.twcc_id,
            ssrcs: self.ssrcs.clone(),
            video_ssrcs: self.video_ssrcs.clone(),
            receiving: self.receiving.clone(),
            keyframe_on_join: self.keyframe_on_join,
        }
    }

    /// A remote participant's tables, checked: they index arrays on the packet path.
    pub fn from_wire(w: PeerTablesWire) -> Result<Self, TablesError> {
        let most = [
            w.ssrcs.len(),
            w.video_ssrcs.len(),
            w.repairs.len(),
            w.receiving.as_ref().map_or(0, Vec::len),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        if most > MAX_WIRE_SSRCS {
            return Err(TablesError::TooMany(most));
        }
        let simulcast = simulcast_tracks(&w.simulcast, &w.ssrcs, &w.video_ssrcs, &[])?;
        let mut t = PeerTables {
            codec_of_pt: [NO; 128],
            pt_of_codec: [NO; CODEC_COUNT],
            rtx_pt_of_codec: [NO; CODEC_COUNT],
            repairs: w.repairs,
            twcc_id: w.twcc_id,
            ssrcs: w.ssrcs,
            video_ssrcs: w.video_ssrcs,
            receiving: w.receiving,
            link: false,
            keyframe_on_join: w.keyframe_on_join,
            rtx_next: Vec::new(),
            simulcast,
            layer_states: Vec::new(),
        };
        for (pt, c) in w.codecs {
            if pt >= 128 {
                return Err(TablesError::PayloadType(pt));
            }
            if usize::from(c) >= CODEC_COUNT {
                return Err(TablesError::Codec(c));
            }
            t.codec_of_pt[pt as usize] = c;
            t.pt_of_codec[c as usize] = pt;
        }
        for (pt, c) in w.rtx {
            if pt >= 128 || t.codec_of_pt[pt as usize] != NO {
                return Err(TablesError::PayloadType(pt));
            }
            if usize::from(c) >= CODEC_COUNT || t.pt_of_codec[c as usize] == NO {
                return Err(TablesError::Codec(c));
            }
            t.codec_of_pt[pt as usize] = c | RTX;
            t.rtx_pt_of_codec[c as usize] = pt;
        }
        Ok(t)
    }

    /// A node link's end: the far participants' simulcast tracks (layer SSRCs, lowest
    /// first), so this node chooses a layer for each of its receivers. A track it knew
    /// keeps what it learnt (heights, rates); an invalid list leaves it with none.
    pub fn set_link_layers(&mut self, layers: &[Vec<u32>]) -> Result<(), TablesError> {
        match simulcast_tracks(layers, &self.ssrcs, &self.video_ssrcs, &self.simulcast) {
            Ok(t) => {
                self.simulcast = t;
                Ok(())
            }
            Err(e) => {
                self.simulcast.clear();
                Err(e)
            }
        }
    }

    /// Whether a cached packet can be sent to it again: it takes RTX for a video codec, or
    /// it is a node link (no SRTP index to spend).
    pub fn takes_retransmissions(&self) -> bool {
        self.link
            || Codec::ALL
                .into_iter()
                .any(|c| c.kind() == "video" && self.rtx_pt_of_codec[c.index()] != NO)
    }

    /// e2ee-client's numbering (Opus 111, VP8 96), no transport-cc: for tests and
    /// benchmarks that build forwarders by hand.
    pub fn standard(ssrcs: &[u32]) -> Self {
        let mut n = Numbering::default();
        n.pt[Codec::Opus.index()] = Some(blindrelay_protocol::sdp::AUDIO_PT);
        n.pt[Codec::Vp8.index()] = Some(blindrelay_protocol::sdp::VIDEO_PT);
        PeerTables {
            receiving: None,
            ..PeerTables::new(&n, &[], ssrcs)
        }
    }
}

/// Transport-cc state of one sender: arrivals not yet reported.
struct TwccState {
    unwrap: SeqUnwrapper,
    pending: [Arrival; TWCC_PENDING],
    n: usize,
    media_ssrc: u32,
    fb_count: u8,
    last_fb: Option<Instant>,
}

/// The last [`CACHE_PACKETS`] packets of one video stream, as the relay forwards them
/// (clear header without extensions, then the untouched payload), to answer receivers'
/// NACKs without asking the sender. Allocated once, when the stream's first packet
/// comes; storing a packet is a copy into its slot.
struct PacketCache {
    ssrc: u32,
    /// The highest sequence number stored; every slot holds a packet within
    /// [`CACHE_PACKETS`] of it, or nothing.
    highest: Option<u16>,
    /// Per slot: the sequence number it holds, its length (0: empty), its codec.
    slots: Box<[(u16, u16, u8)]>,
    data: Box<[u8]>,
}

/// What storing a packet in a [`PacketCache`] found.
#[derive(Debug, PartialEq, Eq)]
enum Stored {
    New,
    /// The cache already holds this sequence number, or it is too old to hold.
    Held,
    /// New, and `count` packets from `first` on never came: ask the sender for them.
    Gap {
        first: u16,
        count: u16,
    },
}

impl PacketCache {
    fn new(ssrc: u32) -> Self {
        PacketCache {
            ssrc,
            highest: None,
            slots: vec![(0, 0, 0); CACHE_PACKETS].into_boxed_slice(),
            data: vec![0; CACHE_PACKETS * CACHE_SLOT_BYTES].into_boxed_slice(),
        }
    }

    fn slot(seq: u16) -> usize {
        seq as usize % CACHE_PACKETS
    }

    /// The cached packet `seq` and its codec.
    fn get(&self, seq: u16) -> Option<(u8, &[u8])> {
        let i = Self::slot(seq);
        let (s, len, codec) = self.slots[i];
        let at = i * CACHE_SLOT_BYTES;
        (len > 0 && len != SEEN_ONLY && s == seq)
            .then(|| (codec, &self.data[at..at + len as usize]))
    }

    /// Whether packet `seq` came (kept or not).
    fn seen(&self, seq: u16) -> bool {
        let (s, len, _) = self.slots[Self::slot(seq)];
        len > 0 && s == seq
    }

    /// Note packet `seq` as come; its bytes are kept only if `keep`.
    fn put(&mut self, seq: u16, codec: u8, header: &[u8], payload: &[u8], keep: bool) -> Stored {
        let mut stored = Stored::New;
        match self.highest {
            None => self.highest = Some(seq),
            Some(h) => {
                let ahead = seq.wrapping_sub(h);
                if ahead == 0 || ahead >= 0x8000 {
                    // Behind the highest: a late or repaired packet, if still in reach.
                    let behind = h.wrapping_sub(seq) as usize;
                    if behind >= CACHE_PACKETS || self.seen(seq) {
                        return Stored::Held;
                    }
                } else {
                    // Skipped slots now stand for packets that never came, not for the
                    // ones a lap earlier.
                    if usize::from(ahead) >= CACHE_PACKETS {
                        self.slots.iter_mut().for_each(|s| s.1 = 0);
                    }
                    for k in 1..ahead.min(CACHE_PACKETS as u16) {
                        self.slots[Self::slot(h.wrapping_add(k))].1 = 0;
                    }
                    if (2..=MAX_UPLINK_GAP).contains(&ahead) {
                        stored = Stored::Gap {
                            first: h.wrapping_add(1),
                            count: ahead - 1,
                        };
                    }
                    self.highest = Some(seq);
                }
            }
        }
        let i = Self::slot(seq);
        let len = header.len() + payload.len();
        if !keep {
            self.slots[i] = (seq, SEEN_ONLY, codec);
        } else if len <= CACHE_SLOT_BYTES {
            let at = i * CACHE_SLOT_BYTES;
            self.data[at..at + header.len()].copy_from_slice(header);
            self.data[at + header.len()..at + len].copy_from_slice(payload);
            self.slots[i] = (seq, len as u16, codec);
        } else {
            self.slots[i].1 = 0;
        }
        stored
    }
}

/// A participant's hop state on its way from one call (or loop) to another.
pub struct PeerTransfer<H> {
    pub addr: SocketAddr,
    pub inbound: H,
    pub outbound: H,
    pub tables: PeerTables,
}

struct PeerMedia<H> {
    call: CallKey,
    addr: SocketAddr,
    inbound: H,
    outbound: H,
    tables: PeerTables,
    twcc: Option<Box<TwccState>>,
    /// A receiver joined: ask this participant for a keyframe with its next packet.
    pli_due: bool,
    last_pli: Option<Instant>,
    /// The streams of this participant receivers last asked a keyframe of, and when.
    keyframe_asked: [(u32, Option<Instant>); KEYFRAME_SLOTS],
    /// NACK entries this participant may still send as a receiver, and when that was
    /// last refilled (see [`NACK_ENTRIES_PER_SECOND`]).
    nack_tokens: u64,
    nack_at: Option<Instant>,
    /// Retransmissions this participant may still be sent, in [`NACK_UNIT`]s per packet
    /// (see [`RTX_PACKETS_PER_SECOND`]), and when that was last refilled.
    rtx_tokens: u64,
    rtx_at: Option<Instant>,
    /// The remote streams this participant has been sent a packet with media in (a
    /// subset of `tables.receiving`, capacity reserved when that is set, so recording
    /// one never allocates on the packet path): until then, padding-only packets of the
    /// stream are not forwarded to it (see [`padding_only`]).
    media_started: Vec<u32>,
    /// SSRCs it took ownership of by sending them first (it announced none).
    claimed: usize,
    /// Its video streams' recent packets (at most [`MAX_CACHED_STREAMS`]).
    caches: Vec<PacketCache>,
    /// When an authenticated packet last made this participant's liveness reportable.
    activity_at: Option<Instant>,
    /// Queued in [`Forwarder::take_activity`]'s list and not taken yet.
    activity_pending: bool,
    /// As a receiver that reports transport-cc: its downlink estimate, and how its
    /// layers are chosen within it.
    bwe: Option<Box<DownlinkBwe>>,
    alloc: Alloc,
}

/// The bandwidth allocator's state for one receiver (see [`allocate`]).
#[derive(Debug, Default)]
struct Alloc {
    last: Option<Instant>,
    /// Audio bytes sent it since `last`, and the rate they made.
    audio_bytes: u64,
    audio_bps: u64,
    /// When a layer was last raised for it; until when raising is held off after a
    /// raise that congested its path, and how long the next hold is.
    raised_at: Option<Instant>,
    hold: Duration,
    hold_until: Option<Instant>,
    /// Since when its budget has been short of its tracks' lowest layers.
    short_since: Option<Instant>,
    /// A probe of its path under way, and when the last one ended.
    probe: Option<Probe>,
    probe_ended: Option<Instant>,
}

/// Padding sent to a receiver on the RTX stream of one of its video tracks, at the rate a
/// layer raise would add, before the raise (see [`allocate`]).
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// The track whose RTX stream (SSRC `rtx`, payload type `pt`) carries the padding.
    track: u32,
    rtx: u32,
    pt: u8,
    /// The padding's rate, and the whole rate (bits per second) the raise needs.
    bps: u64,
    target: u64,
    started: Instant,
    until: Instant,
    /// Padding bytes sent so far (on the wire).
    sent: u64,
}

/// Forwarding state of one worker loop, over the driver's hop cipher `H`.
pub struct Forwarder<H> {
    peers: HashMap<PeerId, PeerMedia<H>>,
    calls: HashMap<CallKey, Vec<PeerId>>,
    ssrc_owner: HashMap<(CallKey, u32), PeerId>,
    tap: Option<MediaTap>,
    /// Reused list of receivers, so routing does not allocate.
    scratch: Vec<PeerId>,
    /// Reused buffer for the clear packet (the in-place SRTP path unprotects into it).
    clear: Vec<u8>,
    /// Reused list of an RTCP compound's receivers, in order of first appearance.
    rtcp_dests: Vec<PeerId>,
    /// Reused buffer where one receiver's share of an RTCP compound is assembled.
    rtcp_part: Vec<u8>,
    /// Reused: whether each packet of the RTCP compound being routed passed its checks.
    rtcp_pass: Vec<bool>,
    /// Reused buffer for the relay's own RTCP (feedback, PLI, NACK).
    own_rtcp: Vec<u8>,
    /// Reused buffer for a repaired packet or an RTX payload.
    rtx_buf: Vec<u8>,
    /// Reused list of the packets (stream, sequence number) a receiver's NACK asked for
    /// that the cache lacks.
    misses: Vec<(u32, u16)>,
    /// Retransmissions since the last [`Forwarder::take_retransmits`], by [`Retransmit`].
    retransmits: [u64; Retransmit::ALL.len()],
    /// Simulcast layer switches since the last [`Forwarder::take_layer_switches`].
    layer_switches: u64,
    /// Receivers' downlink estimates since the last [`Forwarder::take_estimates`]
    /// (capacity [`ESTIMATE_SAMPLES`]; beyond it a sample is left out), tracks paused
    /// for want of bandwidth since then, and the change in how many are paused.
    estimates: Vec<u64>,
    pauses: u64,
    paused_delta: i64,
    /// Bandwidth probes since the last [`Forwarder::take_probes`], by [`ProbeResult`],
    /// and the padding packets they sent.
    probes: [u64; ProbeResult::ALL.len()],
    padding_packets: u64,
    /// Members of each call that can be sent a packet again (see
    /// [`PeerTables::takes_retransmissions`]).
    rtx_takers: HashMap<CallKey, usize>,
    /// The arrival time of the packet being handled (sans-IO: the loop passes it in).
    now: Option<Instant>,

    /// Origin of the microsecond clock in transport-cc feedback.
    epoch: Option<Instant>,
    /// Participants whose SRTP or SRTCP authenticated since the last
    /// [`Forwarder::take_activity`] (at most once per [`ACTIVITY_INTERVAL`] each); its
    /// capacity is kept at the number of participants, so pushing never allocates.
    active: Vec<PeerId>,
    /// What was dropped inside a datagram that was otherwise handled, since the last
    /// [`Forwarder::take_receiver_drops`], by [`DropReason`]: receivers' copies not sent
    /// (a packet that reached some receivers and not others), and RTCP packets of a
    /// compound refused one by one.
    receiver_drops: [u64; DropReason::ALL.len()],
}

/// SSRCs a participant that announced none may take by sending them first: more than
/// any client's tracks, few enough that its hop keeps little state.
const MAX_CLAIMED_SSRCS: usize = 16;

/// The big-endian word at `at` of a packet's clear header.
/// An SRTP packet for [`Forwarder::on_rtp`]: one to copy before opening, or one the hop
/// may open where it lies.
enum Srtp<'a> {
    Borrowed(&'a [u8]),
    Owned(&'a mut [u8]),
}

impl Srtp<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Srtp::Borrowed(d) => d,
            Srtp::Owned(d) => d,
        }
    }
}

fn clear_u32(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn hop_drop(e: HopError) -> DropReason {
    match e {
        HopError::AuthFailed => DropReason::SrtpAuthFailed,
        HopError::Replay => DropReason::SrtpReplay,
        HopError::Malformed => DropReason::SrtpMalformed,
        HopError::Protect => DropReason::SrtpProtectFailed,
        HopError::IndexReused => DropReason::SrtpIndexReused,
    }
}

/// An authenticated packet from `p`: queue its liveness report if one is due.
fn note_activity<H>(
    p: &mut PeerMedia<H>,
    peer: PeerId,
    now: Option<Instant>,
    active: &mut Vec<PeerId>,
) {
    let Some(now) = now else { return };
    if !p.activity_pending
        && p.activity_at
            .is_none_or(|t| now.saturating_duration_since(t) >= ACTIVITY_INTERVAL)
    {
        p.activity_at = Some(now);
        p.activity_pending = true;
        active.push(peer);
    }
}

// By hand: a derived Default would ask `H: Default`, and a cipher has no default.
impl<H> Default for Forwarder<H> {
    fn default() -> Self {
        Forwarder {
            peers: HashMap::default(),
            calls: HashMap::default(),
            ssrc_owner: HashMap::default(),
            tap: None,
            scratch: Vec::new(),
            clear: Vec::new(),
            rtcp_dests: Vec::new(),
            rtcp_part: Vec::new(),
            rtcp_pass: Vec::new(),
            own_rtcp: Vec::new(),
            rtx_buf: Vec::new(),
            misses: Vec::new(),
            retransmits: [0; Retransmit::ALL.len()],
            layer_switches: 0,
            estimates: Vec::new(),
            pauses: 0,
            paused_delta: 0,
            probes: [0; ProbeResult::ALL.len()],
            padding_packets: 0,
            rtx_takers: HashMap::default(),
            now: None,
            epoch: None,
            active: Vec::new(),
            receiver_drops: [0; DropReason::ALL.len()],
        }
    }
}

impl<H: HopCipher> Forwarder<H> {
    pub fn new(tap: Option<MediaTap>) -> Self {
        Forwarder {
            tap,
            // A compound larger than this grows it once; routing then allocates nothing.
            rtcp_pass: Vec::with_capacity(64),
            estimates: Vec::with_capacity(ESTIMATE_SAMPLES),
            ..Default::default()
        }
    }

    /// Start forwarding for a participant whose DTLS handshake finished. Everyone else in
    /// its call is asked for a keyframe, so the newcomer's decoders start at once.
    pub fn add_peer(
        &mut self,
        peer: PeerId,
        call: CallKey,
        addr: SocketAddr,
        inbound: H,
        outbound: H,
        tables: PeerTables,
    ) {
        let keyframe_on_join = tables.keyframe_on_join;
        // An SSRC keeps its owner: the control plane refuses a second claimant
        // (`ssrc_in_use`), and should one get here anyway, its packets with that SSRC are
        // dropped (`ssrc_not_owned`) rather than the owner's.
        for s in &tables.ssrcs {
            let owner = *self.ssrc_owner.entry((call, *s)).or_insert(peer);
            if owner != peer {
                tracing::warn!("an SSRC another participant owns was announced again: ignored");
            }
        }
        let twcc = (tables.twcc_id != 0).then(|| {
            Box::new(TwccState {
                unwrap: SeqUnwrapper::default(),
                pending: [Arrival::default(); TWCC_PENDING],
                n: 0,
                media_ssrc: 0,
                fb_count: 0,
                last_fb: None,
            })
        });
        // Its own transport-wide numbering needs a one-byte extension id; a node link is
        // paced by QUIC.
        let bwe = ((1..=14).contains(&tables.twcc_id) && !tables.link)
            .then(|| Box::new(DownlinkBwe::new()));
        // Room for every stream it receives, as `set_receiving` reserves: a participant
        // moved here brings its streams along, and recording a start must not allocate.
        let media_started = Vec::with_capacity(tables.receiving.as_ref().map_or(0, Vec::len));
        if tables.takes_retransmissions() {
            *self.rtx_takers.entry(call).or_default() += 1;
        }
        if let Some(old) = self.peers.get(&peer) {
            // Added again (tables replaced): it no longer counts as it did.
            if old.tables.takes_retransmissions() {
                if let Some(n) = self.rtx_takers.get_mut(&old.call) {
                    *n = n.saturating_sub(1);
                }
            }
        }
        self.peers.insert(
            peer,
            PeerMedia {
                call,
                addr,
                inbound,
                outbound,
                tables,
                twcc,
                pli_due: false,
                last_pli: None,
                keyframe_asked: [(0, None); KEYFRAME_SLOTS],
                nack_tokens: NACK_ENTRIES_BURST * NACK_UNIT,
                nack_at: None,
                rtx_tokens: RTX_PACKETS_BURST * NACK_UNIT,
                rtx_at: None,
                media_started,
                claimed: 0,
                caches: Vec::new(),
                activity_at: None,
                activity_pending: false,
                bwe,
                alloc: Alloc::default(),
            },
        );
        if self.active.capacity() < self.peers.len() {
            self.active.reserve(self.peers.len() - self.active.len());
        }
        let members = self.calls.entry(call).or_default();
        if !members.contains(&peer) {
            members.push(peer);
        }
        for m in members.iter() {
            if *m != peer && keyframe_on_join {
                if let Some(p) = self.peers.get_mut(m) {
                    p.pli_due = true;
                }
            }
        }
    }

    /// The time of the packets handled next (their arrival): transport-cc feedback
    /// reports it, and feedback and keyframe requests are paced by it.
    pub fn set_time(&mut self, now: Instant) {
        self.now = Some(now);
        if self.epoch.is_none() {
            self.epoch = Some(now);
        }
    }

    /// The remote SSRCs `peer` now has tracks for.
    pub fn set_receiving(&mut self, peer: PeerId, ssrcs: Vec<u32>) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.media_started.retain(|s| ssrcs.contains(s));
            p.tables.rtx_next.retain(|(s, _)| ssrcs.contains(s));
            // Retransmissions and probe padding number on the packet path: no allocation.
            p.tables
                .rtx_next
                .reserve(ssrcs.len().saturating_sub(p.tables.rtx_next.len()));
            p.tables.layer_states.retain(|s| ssrcs.contains(&s.track));
            p.media_started
                .reserve(ssrcs.len().saturating_sub(p.media_started.len()));
            p.tables.receiving = Some(ssrcs);
        }
    }

    /// `peer` asks for pictures at most `max_height` tall (`u16::MAX`: no limit) of the
    /// remote simulcast track it knows as `track`: it is sent the tallest layer within
    /// that, moved at the layer's next key frame. If that is a layer above the one it is
    /// sent, the track's sender is asked for key frames at once. Returns whether `peer`
    /// is here (the driver tells every loop; the others ignore it).
    pub fn set_max_height(&mut self, peer: PeerId, track: u32, max_height: u16) -> bool {
        let Some(r) = self.peers.get_mut(&peer) else {
            return false;
        };
        let call = r.call;
        let states = &mut r.tables.layer_states;
        let i = match states.iter().position(|s| s.track == track) {
            Some(i) => i,
            None if states.len() < MAX_LAYER_STATES => {
                states.push(LayerState::new(track));
                states.len() - 1
            }
            None => return true,
        };
        states[i].max_height = max_height;
        let st = states[i].clone();
        let Some(owner) = self.ssrc_owner.get(&(call, track)).copied() else {
            return true;
        };
        if let Some(o) = self.peers.get_mut(&owner) {
            let up = o
                .tables
                .simulcast
                .iter()
                .find(|t| t.track == track)
                .is_some_and(|t| st.current == simulcast::NO_LAYER || st.target(t) > st.current);
            if up {
                o.pli_due = true;
            }
        }
        true
    }

    /// Bandwidth probes since the last call, by result, and the padding packets sent.
    pub fn take_probes(&mut self, mut count: impl FnMut(ProbeResult, u64)) -> u64 {
        for r in ProbeResult::ALL {
            count(r, std::mem::take(&mut self.probes[r as usize]));
        }
        std::mem::take(&mut self.padding_packets)
    }

    /// Layer switches made for receivers since the last call.
    pub fn take_layer_switches(&mut self) -> u64 {
        std::mem::take(&mut self.layer_switches)
    }

    /// Receivers' downlink estimates (bits per second) made since the last call, one
    /// each time a receiver's layers were chosen.
    pub fn take_estimates(&mut self, each: impl FnMut(u64)) {
        self.estimates.drain(..).for_each(each);
    }

    /// Tracks paused for want of a receiver's bandwidth since the last call, and the
    /// change since then in how many are paused now.
    pub fn take_pauses(&mut self) -> (u64, i64) {
        (
            std::mem::take(&mut self.pauses),
            std::mem::take(&mut self.paused_delta),
        )
    }

    /// A node link's end in its call now sends `ssrcs` (`video` of them video, repaired on
    /// the RTX SSRCs of `repairs`) and is sent `receiving`: participants came or went on
    /// the far node, or its receivers' tracks changed. An SSRC a participant here owns
    /// stays its own.
    pub fn set_link(
        &mut self,
        peer: PeerId,
        ssrcs: Vec<u32>,
        video: Vec<u32>,
        repairs: Vec<(u32, u32)>,
        receiving: Vec<u32>,
        layers: &[Vec<u32>],
    ) -> Result<(), TablesError> {
        let Some(p) = self.peers.get_mut(&peer) else {
            return Ok(());
        };
        if !p.tables.link {
            return Ok(());
        }
        let call = p.call;
        self.ssrc_owner
            .retain(|(c, s), o| !(*c == call && *o == peer && !ssrcs.contains(s)));
        for s in &ssrcs {
            self.ssrc_owner.entry((call, *s)).or_insert(peer);
        }
        p.tables.ssrcs = ssrcs;
        p.caches.retain(|c| video.contains(&c.ssrc));
        p.tables.video_ssrcs = video;
        p.tables.repairs = repairs;
        let layers = p.tables.set_link_layers(layers);
        self.set_receiving(peer, receiving);
        layers
    }

    /// Send to `peer` at `addr` from now on: the controlling ICE agent nominated the pair
    /// with that address (RFC 8445 §7.3.1.5), and the participant's media comes from it.
    /// Whatever the forwarder keeps about the participant stays. Returns whether `peer`
    /// is here (the driver tells every loop; the others ignore it).
    pub fn set_addr(&mut self, peer: PeerId, addr: SocketAddr) -> bool {
        match self.peers.get_mut(&peer) {
            Some(p) => {
                p.addr = addr;
                true
            }
            None => false,
        }
    }

    pub fn remove_peer(&mut self, peer: PeerId) {
        let _ = self.take_peer(peer);
    }

    /// Remove a participant and hand back its hop state, to re-home it in another call
    /// (merge), possibly on another forwarding loop.
    pub fn take_peer(&mut self, peer: PeerId) -> Option<PeerTransfer<H>> {
        let mut p = self.peers.remove(&peer)?;
        // Its estimate stays here: wherever it goes, its layers are chosen afresh.
        for st in p.tables.layer_states.iter_mut().filter(|s| s.paused) {
            st.paused = false;
            st.bwe_max = simulcast::NO_LAYER;
            self.paused_delta -= 1;
        }
        if p.tables.takes_retransmissions() {
            if let Some(n) = self.rtx_takers.get_mut(&p.call) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.rtx_takers.remove(&p.call);
                }
            }
        }
        if let Some(m) = self.calls.get_mut(&p.call) {
            m.retain(|x| *x != peer);
            if m.is_empty() {
                self.calls.remove(&p.call);
            }
        }
        self.ssrc_owner.retain(|_, owner| *owner != peer);
        Some(PeerTransfer {
            addr: p.addr,
            inbound: p.inbound,
            outbound: p.outbound,
            tables: p.tables,
        })
    }

    /// Hand each participant whose SRTP or SRTCP authenticated since the last call (at most
    /// once per [`ACTIVITY_INTERVAL`] each) to `report`, which says whether the report was
    /// delivered; an undelivered one is due again with the participant's next packet.
    /// Only authenticated packets count: a forged or replayed one from a participant's
    /// address must not keep it alive (consent, RFC 7675).
    pub fn take_activity(&mut self, mut report: impl FnMut(PeerId) -> bool) {
        for peer in self.active.drain(..) {
            let delivered = report(peer);
            if let Some(p) = self.peers.get_mut(&peer) {
                p.activity_pending = false;
                if !delivered {
                    p.activity_at = None;
                }
            }
        }
    }

    /// Hand the count of retransmissions by [`Retransmit`] since the last call to `count`
    /// (kinds with a count of 0 are skipped).
    pub fn take_retransmits(&mut self, mut count: impl FnMut(Retransmit, u64)) {
        for (kind, n) in Retransmit::ALL.iter().zip(self.retransmits.iter_mut()) {
            if *n > 0 {
                count(*kind, *n);
                *n = 0;
            }
        }
    }

    /// Hand the count of what was dropped inside handled datagrams (receivers' copies not
    /// sent, RTCP packets refused from a compound), per reason, since the last call to
    /// `count` (reasons with a count of 0 are skipped).
    pub fn take_receiver_drops(&mut self, mut count: impl FnMut(DropReason, u64)) {
        for (reason, n) in DropReason::ALL.iter().zip(self.receiver_drops.iter_mut()) {
            if *n > 0 {
                count(*reason, *n);
                *n = 0;
            }
        }
    }

    pub fn has_peer(&self, peer: PeerId) -> bool {
        self.peers.contains_key(&peer)
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Every SSRC owner: (call, SSRC, owner), for the model tests' comparison with their
    /// own table.
    #[doc(hidden)]
    pub fn owners(&self) -> impl Iterator<Item = (CallKey, u32, PeerId)> + '_ {
        self.ssrc_owner.iter().map(|((c, s), p)| (*c, *s, *p))
    }

    /// The forwarder's internal consistency, for the property tests and the `forward`
    /// fuzz target (`forward_model`): every participant is in exactly its call's member
    /// list, every SSRC owner is a participant of the call it owns the SSRC in, and every
    /// per-participant table stays within its bound. With no participants, every table
    /// is empty: nothing a participant made the forwarder keep outlives it.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut listed = 0;
        for (call, members) in &self.calls {
            if members.is_empty() {
                return Err(format!("call {call} has an empty member list"));
            }
            for (i, m) in members.iter().enumerate() {
                if members[..i].contains(m) {
                    return Err(format!("peer {m} listed twice in call {call}"));
                }
                match self.peers.get(m) {
                    Some(p) if p.call == *call => {}
                    Some(p) => {
                        return Err(format!("peer {m} listed in call {call}, is in {}", p.call))
                    }
                    None => return Err(format!("call {call} lists peer {m}, which is gone")),
                }
            }
            listed += members.len();
        }
        if listed != self.peers.len() {
            return Err(format!(
                "{listed} peers in call lists, {} peers",
                self.peers.len()
            ));
        }
        for ((call, ssrc), owner) in &self.ssrc_owner {
            match self.peers.get(owner) {
                Some(p) if p.call == *call => {}
                Some(p) => {
                    return Err(format!(
                        "SSRC {ssrc} of call {call} owned by peer {owner} of call {}",
                        p.call
                    ))
                }
                None => return Err(format!("SSRC {ssrc} of call {call} owned by gone {owner}")),
            }
        }
        for (id, p) in &self.peers {
            if p.claimed > MAX_CLAIMED_SSRCS {
                return Err(format!("peer {id} claimed {} SSRCs", p.claimed));
            }
            let owned = self.ssrc_owner.values().filter(|o| *o == id).count();
            if owned > p.tables.ssrcs.len() + p.claimed {
                return Err(format!(
                    "peer {id} owns {owned} SSRCs: more than it announced and claimed"
                ));
            }
            if let Some(r) = &p.tables.receiving {
                if let Some(s) = p.media_started.iter().find(|s| !r.contains(s)) {
                    return Err(format!(
                        "peer {id} started on {s}, which it does not receive"
                    ));
                }
            }
            if p.twcc.as_ref().is_some_and(|t| t.n > TWCC_PENDING) {
                return Err(format!("peer {id}: transport-cc pending over its bound"));
            }
            if p.nack_tokens > NACK_ENTRIES_BURST * NACK_UNIT
                || p.rtx_tokens > RTX_PACKETS_BURST * NACK_UNIT
            {
                return Err(format!("peer {id}: NACK or RTX budget above its burst"));
            }
            if p.caches.len() > MAX_CACHED_STREAMS
                || p.caches
                    .iter()
                    .any(|c| !p.tables.video_ssrcs.contains(&c.ssrc))
            {
                return Err(format!("peer {id}: caches a stream it does not send"));
            }
        }
        for a in &self.active {
            if self.peers.get(a).is_some_and(|p| !p.activity_pending) {
                return Err(format!("peer {a} queued for activity, not pending"));
            }
        }
        Ok(())
    }

    /// Unprotect an SRTP packet from `from` and protect it for every other participant of
    /// its call, appending to `out`. Each receiver gets the header in its own numbering
    /// (payload type), without header extensions (they are per hop); the payload (the
    /// end-to-end encrypted frame) is copied byte for byte. The sender gets transport-cc
    /// feedback and, when a receiver joined, a keyframe request. Returns how many
    /// transmits were queued for receivers.
    pub fn on_rtp(
        &mut self,
        from: PeerId,
        data: &[u8],
        out: &mut Outbox,
    ) -> Result<usize, DropReason> {
        self.rtp(from, Srtp::Borrowed(data), out)
    }

    /// [`Forwarder::on_rtp`] of a packet the caller owns and no longer needs as SRTP (the
    /// forwarding loop's received datagram): the hop opens it where it lies, with no copy.
    /// `NotConnected` (an unknown sender) is returned before `data` is touched, so the
    /// caller may retry with the same bytes after applying pending control messages.
    pub fn on_rtp_in_place(
        &mut self,
        from: PeerId,
        data: &mut [u8],
        out: &mut Outbox,
    ) -> Result<usize, DropReason> {
        self.rtp(from, Srtp::Owned(data), out)
    }

    fn rtp(&mut self, from: PeerId, data: Srtp<'_>, out: &mut Outbox) -> Result<usize, DropReason> {
        let sender = self.peers.get_mut(&from).ok_or(DropReason::NotConnected)?;
        // Ownership first, on the SSRC in the clear header: webrtc-srtp keeps state for
        // every SSRC it is shown, authentic or not, so a packet with an SSRC its sender
        // may not send never reaches the hop context.
        let ssrc = clear_u32(data.bytes(), 8).ok_or(DropReason::SrtpMalformed)?;
        match self.ssrc_owner.get(&(sender.call, ssrc)) {
            Some(o) if *o == from => {}
            None if sender.tables.ssrcs.is_empty() && sender.claimed < MAX_CLAIMED_SSRCS => {}
            _ => return Err(DropReason::SsrcNotOwned),
        }
        let plain = match data {
            Srtp::Borrowed(d) => sender.inbound.unprotect_rtp(d, &mut self.clear),
            Srtp::Owned(d) => sender.inbound.unprotect_rtp_in_place(d, &mut self.clear),
        }
        .map_err(hop_drop)?;
        note_activity(sender, from, self.now, &mut self.active);
        let hdr = RtpHeader::parse(plain).map_err(|_| DropReason::RtpMalformed)?;
        let call = sender.call;
        let from_addr = sender.addr;
        let from_link = sender.tables.link;
        // A participant sends only the SSRCs it announced (or, having announced none,
        // those nobody else owns): another's SSRC would make every receiver's context
        // seal two plaintexts under one nonce.
        let owner = match self.ssrc_owner.get(&(call, hdr.ssrc)) {
            Some(o) => *o,
            None if sender.tables.ssrcs.is_empty() && sender.claimed < MAX_CLAIMED_SSRCS => {
                self.ssrc_owner.insert((call, hdr.ssrc), from);
                sender.claimed += 1;
                from
            }
            None => return Err(DropReason::SsrcNotOwned),
        };
        if owner != from {
            return Err(DropReason::SsrcNotOwned);
        }
        let codec = sender.tables.codec_of_pt[hdr.payload_type as usize & 0x7f];
        if codec == NO {
            return Err(DropReason::UnknownPayloadType);
        }
        // The header every receiver gets: fixed part and CSRCs, extension bit cleared.
        let base = 12 + 4 * (plain[0] & 0x0f) as usize;
        let mut header = [0u8; 12 + 4 * 15];
        header[..base].copy_from_slice(&plain[..base]);
        header[0] &= !0x10;
        let media = if codec & RTX != 0 {
            sender
                .tables
                .repairs
                .iter()
                .find(|(_, r)| *r == hdr.ssrc)
                .map(|(m, _)| *m)
                .ok_or(DropReason::UnknownPayloadType)?
        } else {
            hdr.ssrc
        };
        // The sender's hop: feedback and keyframe requests, protected with its context.
        // Retransmissions and probes on an RTX stream count for transport-cc too.
        if let Some(now) = self.now {
            let epoch = self.epoch.unwrap_or(now);
            sender_rtcp(sender, plain, media, now, epoch, &mut self.own_rtcp, out);
        }
        let (codec, seq, payload, recovered) = if codec & RTX != 0 {
            // A retransmission on the sender's RTX stream (RFC 4588): the original
            // sequence number, then the original payload. It is forwarded as the packet
            // it repairs, which the relay never had.
            let Some((osn, original)) = hdr.payload(plain).split_first_chunk::<2>() else {
                // Padding alone: a bandwidth probe, already counted for transport-cc.
                return Err(DropReason::RtxPadding);
            };
            let codec = codec & !RTX;
            header[0] &= !0x20;
            header[1] = (header[1] & 0x80) | sender.tables.pt_of_codec[codec as usize];
            header[2..4].copy_from_slice(osn);
            header[8..12].copy_from_slice(&media.to_be_bytes());
            // Whole, for the tap only: receivers get the header and payload as parts.
            if self.tap.is_some() {
                self.rtx_buf.clear();
                self.rtx_buf.extend_from_slice(&header[..base]);
                self.rtx_buf.extend_from_slice(original);
            }
            (codec, u16::from_be_bytes(*osn), original, true)
        } else {
            (codec, hdr.sequence, &plain[hdr.header_len..], false)
        };
        if let Some(tap) = &self.tap {
            tap(&TapPacket {
                from: from_addr,
                call,
                data: if recovered { &self.rtx_buf } else { plain },
            });
        }
        // A simulcast layer: receivers know it by its track's SSRC, and each is sent one
        // layer, moved at key frames.
        let layer = sender.tables.simulcast.iter_mut().find_map(|t| {
            let l = t.layer_of(media)?;
            Some((t, l))
        });
        let key = layer.is_some() && simulcast::starts_keyframe(codec, payload);
        let layer = layer.map(|(t, l)| {
            if let Some(now) = self.now {
                t.seen[l as usize] = Some(now);
                t.count(l, base + payload.len() + WIRE_OVERHEAD, now);
            }
            if key && codec == Codec::Vp8 as u8 {
                // Its height now, for receivers that ask for at most some height.
                if let Some(h) = simulcast::vp8_keyframe_height(payload) {
                    t.heights[l as usize] = h;
                }
            }
            (*t, l)
        });
        let track = layer.map_or(media, |(t, _)| t.track);
        let ts = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if codec != Codec::Opus as u8 {
            // The bytes are kept only if someone else in the call could be sent them
            // again (takes RTX, or is a node link): the copy is most of the cache's cost.
            let takers = self.rtx_takers.get(&call).copied().unwrap_or(0);
            let keep = takers > usize::from(sender.tables.takes_retransmissions());
            let stored = cache_put(sender, media, seq, codec, &header[..base], payload, keep);
            match stored {
                // Forwarded when it first came (a late copy, or a retransmission): each
                // receiver's hop has spent its index.
                Some(Stored::Held) => return Err(DropReason::RetransmitDuplicate),
                Some(Stored::Gap { first, count }) => {
                    // Lost on the way here: ask the sender at once (each receiver would).
                    self.own_rtcp.clear();
                    rtcp::write_nack(
                        &mut self.own_rtcp,
                        RELAY_SSRC,
                        media,
                        (0..count).map(|k| first.wrapping_add(k)),
                    );
                    if out
                        .push(sender.addr, true, &mut sender.outbound, &self.own_rtcp)
                        .is_ok()
                    {
                        self.retransmits[Retransmit::Asked as usize] += u64::from(count);
                    }
                }
                _ => {}
            }
            if recovered {
                self.retransmits[Retransmit::Recovered as usize] += 1;
            }
        }
        let padding = padding_only(header[0], payload);
        self.scratch.clear();
        if let Some(members) = self.calls.get(&call) {
            let peers = &self.peers;
            self.scratch.extend(
                members
                    .iter()
                    .copied()
                    .filter(|p| *p != from && !(from_link && is_link(peers, *p))),
            );
        }
        let mut n = 0;
        let now = self.now;
        // Microseconds on the clock the receivers' transport-wide feedback is matched on.
        let now_us = now
            .zip(self.epoch)
            .map(|(n, e)| n.saturating_duration_since(e).as_micros() as i64);
        let mut keyframe_wanted = None;
        let mut realloc = None;
        // Sequence number, timestamp and SSRC as they came: a layer's receivers each get
        // their own in `header`, and a node link after them must get these.
        let mut as_came = [0u8; 10];
        as_came.copy_from_slice(&header[2..12]);
        for to in &self.scratch {
            let Some(r) = self.peers.get_mut(to) else {
                continue;
            };
            if layer.is_some() {
                header[2..12].copy_from_slice(&as_came);
            }
            // A probe's padding rides on every packet of the call, sent this receiver or
            // not: a receiver on a low layer is sent too few to pace it by.
            if let (true, Some(now), Some(us)) = (r.alloc.probe.is_some(), now, now_us) {
                self.padding_packets += pad_probe(r, ts, now, us, out);
            }
            // A simulcast VP8 packet's payload descriptor, renumbered for this receiver.
            let mut desc = ([0u8; simulcast::MAX_VP8_DESCRIPTOR], 0);
            if r.tables
                .receiving
                .as_ref()
                .is_some_and(|ok| !ok.contains(&track))
            {
                // No track for it yet: the receiver has not answered the offer adding it.
                continue;
            }
            let pt = r.tables.pt_of_codec[codec as usize];
            if pt == NO {
                // This receiver cannot decode the codec: it was never offered the track.
                continue;
            }
            // A node link is sent every layer as it came: the far node chooses its own
            // receivers' layers.
            if let (Some((t, l)), false) = (layer, r.tables.link) {
                let states = &mut r.tables.layer_states;
                let i = match states.iter().position(|s| s.track == track) {
                    Some(i) => i,
                    None if states.len() < MAX_LAYER_STATES => {
                        states.push(LayerState::new(track));
                        states.len() - 1
                    }
                    None => continue,
                };
                if states[i].paused {
                    // Its downlink has no room for the track's lowest layer. Tried again
                    // as time passes, even if nothing it is sent brings feedback.
                    realloc.get_or_insert(*to);
                    continue;
                }
                let target = states[i].target(&t);
                let before = states[i].switches;
                let route = states[i].route(l, target, seq, ts, key, now);
                self.layer_switches += states[i].switches - before;
                match route {
                    Route::Skip => {
                        // Waiting for a key frame to move at: ask for one of the layer
                        // it should be on if that layer is being sent, else (it has
                        // nothing yet) of this one. Senders send key frames only asked.
                        if keyframe_wanted.is_none() && states[i].current != target {
                            keyframe_wanted = if t.sending(target, now) {
                                t.ssrc_of(target)
                            } else if !states[i].is_live(now) {
                                Some(media)
                            } else {
                                None
                            };
                        }
                        continue;
                    }
                    Route::Send { seq, ts } => {
                        header[2..4].copy_from_slice(&seq.to_be_bytes());
                        header[4..8].copy_from_slice(&ts.to_be_bytes());
                        header[8..12].copy_from_slice(&track.to_be_bytes());
                        if codec == Codec::Vp8 as u8 {
                            if let Some(n) = vp8_descriptor_len(payload)
                                .filter(|n| *n <= simulcast::MAX_VP8_DESCRIPTOR)
                            {
                                desc.0[..n].copy_from_slice(&payload[..n]);
                                desc.1 = n;
                                states[i].map_vp8(&mut desc.0[..n]);
                            }
                        }
                    }
                }
            }
            if r.tables.receiving.is_some() && !r.media_started.contains(&track) {
                if padding {
                    // A sender's bandwidth probe carries the timestamp of its last frame.
                    // As a receiver's first packet of the stream it would be a frame of its
                    // own with no data, and an empty frame puts libavcodec's decoders
                    // (aiortc) into their end-of-stream state for good.
                    self.receiver_drops[DropReason::PaddingBeforeMedia as usize] += 1;
                    continue;
                }
                if r.media_started.len() < r.media_started.capacity() {
                    r.media_started.push(track);
                }
            }
            header[1] = (header[1] & 0x80) | pt;
            let twcc = r.bwe.as_deref().zip(now_us).map(|(b, _)| b.next_seq());
            // A copy that cannot be protected for one receiver (its hop would reuse an
            // SRTP index) is dropped for that receiver alone.
            let sent = if desc.1 > 0 || twcc.is_some() {
                // The header, this receiver's own transport-wide sequence number (a
                // one-byte header extension of its hop) and the renumbered descriptor, as
                // one part (the hop parses the header itself), then the rest of the
                // payload untouched.
                let mut head = [0u8; HEAD_MAX];
                let mut at = base;
                head[..base].copy_from_slice(&header[..base]);
                if let Some(seq) = twcc {
                    head[0] |= 0x10;
                    let [hi, lo] = seq.to_be_bytes();
                    let id = r.tables.twcc_id << 4 | 1;
                    head[at..at + 8].copy_from_slice(&[0xbe, 0xde, 0, 1, id, hi, lo, 0]);
                    at += 8;
                }
                head[at..at + desc.1].copy_from_slice(&desc.0[..desc.1]);
                at += desc.1;
                let rest = &payload[desc.1..];
                out.push_rtp_parts(r.addr, &mut r.outbound, &head[..at], rest)
                    .map(|()| at + rest.len())
            } else {
                out.push_rtp_parts(r.addr, &mut r.outbound, &header[..base], payload)
                    .map(|()| base + payload.len())
            };
            match sent {
                Ok(len) => {
                    n += 1;
                    if let (Some(b), Some(us)) = (r.bwe.as_deref_mut(), now_us) {
                        b.on_sent(us, len + WIRE_OVERHEAD);
                    }
                    if codec == Codec::Opus as u8 {
                        r.alloc.audio_bytes += (len + WIRE_OVERHEAD) as u64;
                    }
                }
                Err(reason) => self.receiver_drops[reason as usize] += 1,
            }
        }
        if let (Some(who), Some(now)) = (realloc, now) {
            let mut stats = AllocStats {
                estimates: &mut self.estimates,
                pauses: &mut self.pauses,
                paused_delta: &mut self.paused_delta,
                probes: &mut self.probes,
            };
            allocate(
                &mut self.peers,
                &self.ssrc_owner,
                call,
                who,
                now,
                &mut stats,
            );
        }
        if let (Some(ssrc), Some(now)) = (keyframe_wanted, now) {
            // Within KEYFRAME_REQUEST_INTERVAL per layer, however many receivers wait.
            if let Some(s) = self.peers.get_mut(&from) {
                if ask_keyframe(s, ssrc, now) {
                    self.own_rtcp.clear();
                    self.own_rtcp
                        .extend_from_slice(&rtcp::pli(RELAY_SSRC, ssrc));
                    let _ = out.push(s.addr, true, &mut s.outbound, &self.own_rtcp);
                }
            }
        }
        Ok(n)
    }

    /// Unprotect an SRTCP compound packet and route each packet in it: sender-side reports
    /// (SR, SDES, BYE, APP, XR) to every other participant, receiver-side ones (RR blocks,
    /// NACK, PLI, FIR) to whoever sends the SSRC they are about. Each receiver gets one
    /// compound of the packets meant for it, in their original order; receivers are
    /// served in the order they first appear. Returns how many transmits were queued.
    ///
    /// A participant speaks only for itself: a sender-side report must be about SSRCs it
    /// owns, feedback must not be sent from another's SSRC and must be about a stream it
    /// is sent, and keyframe requests reach a stream's sender at most once per
    /// [`KEYFRAME_REQUEST_INTERVAL`]. Each packet refused is counted by reason (see
    /// [`Forwarder::take_receiver_drops`]); the rest of its compound still goes.
    pub fn on_rtcp(
        &mut self,
        from: PeerId,
        data: &[u8],
        out: &mut Outbox,
    ) -> Result<usize, DropReason> {
        // Split borrows: the clear compound lives in `clear` while the other scratch
        // buffers and the receivers' contexts are used.
        let Forwarder {
            peers,
            calls,
            ssrc_owner,
            scratch: members,
            clear,
            rtcp_dests: dests,
            rtcp_part: part,
            rtcp_pass: pass,
            active,
            receiver_drops: drops,
            now,
            rtx_buf,
            misses,
            retransmits,
            own_rtcp,
            estimates,
            pauses,
            paused_delta,
            probes,
            ..
        } = self;
        let sender = peers.get_mut(&from).ok_or(DropReason::NotConnected)?;
        // The first packet's sender SSRC is in the clear header, and webrtc-srtp keeps
        // state for each one it is shown: another participant's is refused before the
        // hop context sees it (an unowned one may be a receive-only stack's own; the hop
        // bounds how many of those it keeps).
        let ssrc = clear_u32(data, 4).ok_or(DropReason::SrtpMalformed)?;
        if ssrc_owner
            .get(&(sender.call, ssrc))
            .is_some_and(|o| *o != from)
        {
            return Err(DropReason::RtcpSsrcNotOwned);
        }
        let plain = sender
            .inbound
            .unprotect_rtcp(data, clear)
            .map_err(hop_drop)?;
        note_activity(sender, from, *now, active);
        let call = sender.call;
        let from_link = sender.tables.link;
        members.clear();
        if let Some(m) = calls.get(&call) {
            members.extend(
                m.iter()
                    .copied()
                    .filter(|p| *p != from && !(from_link && is_link(peers, *p))),
            );
        }
        // The whole compound is parsed before anything is decided or queued, so a
        // malformed one queues nothing and uses up no keyframe request.
        for p in rtcp::packets(plain) {
            let p = p.map_err(|_| DropReason::RtpMalformed)?;
            if p.route() == RtcpRoute::Others && rtcp::source_ssrcs(&p).any(|s| s.is_err()) {
                return Err(DropReason::RtpMalformed);
            }
        }
        // Each packet's verdict, and who gets something, in order of first appearance.
        let mut fed = false;
        pass.clear();
        dests.clear();
        fn add(d: PeerId, dests: &mut Vec<PeerId>) {
            if !dests.contains(&d) {
                dests.push(d);
            }
        }
        for p in rtcp::packets(plain).flatten() {
            // A NACK the relay answered itself goes no further.
            let mut answered = false;
            let verdict = match p.route() {
                RtcpRoute::Others => {
                    let v = speaks_for_itself(&p, call, from, ssrc_owner);
                    if v.is_ok() {
                        for m in members.iter() {
                            add(*m, dests);
                        }
                    }
                    v
                }
                RtcpRoute::ReportBlocks => {
                    feedback_sender_ok(&p, call, from, ssrc_owner).map(|()| {
                        for (ssrc, _) in rtcp::report_blocks(&p) {
                            match feedback_target(peers, ssrc_owner, call, from, ssrc) {
                                Ok(Some(o)) => add(o, dests),
                                Ok(None) => {}
                                Err(reason) => drops[reason as usize] += 1,
                            }
                        }
                    })
                }
                RtcpRoute::MediaSender(ssrc) => feedback_sender_ok(&p, call, from, ssrc_owner)
                    .and_then(|()| feedback_target(peers, ssrc_owner, call, from, ssrc))
                    .and_then(|target| match (target, *now) {
                        (Some(o), Some(now))
                            if rtcp::is_keyframe_request(&p)
                                && !from_link
                                && simulcast_of(peers, o, ssrc).is_some() =>
                        {
                            // About the layer the receiver is sent (or is to be): the
                            // relay asks for it, in a PLI of its own.
                            if keyframe_for_layer(peers, from, o, ssrc, now, own_rtcp, out) {
                                answered = true;
                                Ok(None)
                            } else {
                                Err(DropReason::KeyframeRequestLimited)
                            }
                        }
                        (Some(o), Some(now)) if rtcp::is_keyframe_request(&p) => {
                            let admitted =
                                peers.get_mut(&o).is_none_or(|m| ask_keyframe(m, ssrc, now));
                            if admitted {
                                Ok(Some(o))
                            } else {
                                Err(DropReason::KeyframeRequestLimited)
                            }
                        }
                        (Some(o), Some(now)) => match rtcp::nack_entries(&p) {
                            Some(n) if !peers.get_mut(&from).is_none_or(|m| nack(m, n, now)) => {
                                Err(DropReason::NackLimited)
                            }
                            Some(_)
                                if peers.get(&o).is_some_and(|s| {
                                    s.caches.iter().any(|c| c.ssrc == ssrc)
                                        || s.tables.simulcast.iter().any(|t| t.track == ssrc)
                                }) =>
                            {
                                answer_nack(
                                    peers,
                                    from,
                                    o,
                                    ssrc,
                                    &p,
                                    rtx_buf,
                                    misses,
                                    retransmits,
                                    drops,
                                    now,
                                    out,
                                );
                                answered = true;
                                Ok(None)
                            }
                            _ => Ok(Some(o)),
                        },
                        (t, _) => Ok(t),
                    })
                    .map(|target| {
                        if let Some(o) = target {
                            add(o, dests);
                        }
                    }),
                RtcpRoute::Terminate
                    if p.packet_type == rtcp::PT_RTPFB && p.fmt == rtcp::FMT_TRANSPORT_CC =>
                {
                    // About the packets the relay numbered for this receiver: its
                    // downlink.
                    match (
                        peers.get_mut(&from).and_then(|m| m.bwe.as_deref_mut()),
                        *now,
                    ) {
                        (Some(b), Some(now)) => {
                            fed = true;
                            b.on_feedback(p.bytes, now)
                                .map(|_| ())
                                .map_err(|_| DropReason::RtpMalformed)
                        }
                        _ => Ok(()),
                    }
                }
                RtcpRoute::Terminate => Ok(()),
            };
            if let Err(reason) = verdict {
                drops[reason as usize] += 1;
            }
            pass.push(verdict.is_ok() && !answered);
        }
        if let (true, Some(now)) = (fed, *now) {
            let mut stats = AllocStats {
                estimates,
                pauses,
                paused_delta,
                probes,
            };
            allocate(peers, ssrc_owner, call, from, now, &mut stats);
        }
        let mut n = 0;
        for to in dests.iter() {
            // This receiver's share, in the compound's order; of a receiver report, the
            // blocks about its own streams, each as a report of its own.
            part.clear();
            for (p, ok) in rtcp::packets(plain).flatten().zip(pass.iter()) {
                if !ok {
                    continue;
                }
                match p.route() {
                    RtcpRoute::Others => match sender_report_layer(peers, from, &p) {
                        // A sender report about a simulcast layer goes only to the
                        // receivers sent that layer, as about the track and on their clock.
                        Some((track, layer)) => {
                            let delta = peers.get(to).and_then(|r| {
                                r.tables
                                    .layer_states
                                    .iter()
                                    .find(|x| x.track == track)
                                    .and_then(|x| x.ts_delta_of(layer))
                            });
                            if let (Some(d), Some(rtp_ts)) = (delta, p.bytes.get(16..20)) {
                                let ts = u32::from_be_bytes([
                                    rtp_ts[0], rtp_ts[1], rtp_ts[2], rtp_ts[3],
                                ]);
                                let at = part.len();
                                part.extend_from_slice(p.bytes);
                                part[at + 4..at + 8].copy_from_slice(&track.to_be_bytes());
                                part[at + 16..at + 20]
                                    .copy_from_slice(&ts.wrapping_add(d).to_be_bytes());
                            }
                        }
                        None => part.extend_from_slice(p.bytes),
                    },
                    RtcpRoute::ReportBlocks => {
                        for (ssrc, block) in rtcp::report_blocks(&p) {
                            if feedback_target(peers, ssrc_owner, call, from, ssrc) == Ok(Some(*to))
                            {
                                part.extend_from_slice(&rtcp::rr_header(
                                    p.sender_ssrc.unwrap_or(0),
                                ));
                                part.extend_from_slice(block);
                            }
                        }
                    }
                    RtcpRoute::MediaSender(ssrc) => {
                        if ssrc_owner.get(&(call, ssrc)) == Some(to) {
                            part.extend_from_slice(p.bytes);
                        }
                    }
                    RtcpRoute::Terminate => {}
                }
            }
            let Some(r) = peers.get_mut(to) else {
                continue;
            };
            if part.is_empty() {
                // Its share was only reports about simulcast layers it is not sent.
                continue;
            }
            match out.push(r.addr, true, &mut r.outbound, part) {
                Ok(()) => n += 1,
                Err(reason) => drops[reason as usize] += 1,
            }
        }
        Ok(n)
    }
}

/// Where [`allocate`] reports to the metrics.
struct AllocStats<'a> {
    estimates: &'a mut Vec<u64>,
    pauses: &'a mut u64,
    paused_delta: &'a mut i64,
    probes: &'a mut [u64; ProbeResult::ALL.len()],
}

/// Choose the layers of every simulcast track `who` receives within its downlink
/// estimate, at most every [`ALLOC_INTERVAL`]: audio first (what it was sent of it is
/// taken off the budget), then each track its lowest layer being sent, in the order it
/// came to receive them, then each in that order the highest layer that still fits and
/// that it asked for (`max_resolution`). A track whose lowest layer does not fit is
/// paused, so video gives way before audio does. The relay sees no audio levels (they
/// would be a header extension it does not negotiate), so there is no active speaker to
/// put first.
fn allocate<H>(
    peers: &mut HashMap<PeerId, PeerMedia<H>>,
    owners: &HashMap<(CallKey, u32), PeerId>,
    call: CallKey,
    who: PeerId,
    now: Instant,
    stats: &mut AllocStats<'_>,
) {
    let Some(r) = peers.get_mut(&who) else {
        return;
    };
    // A probe under way is judged with every feedback: its layers are chosen again at
    // once when it ends.
    if let (Some(p), Some(b)) = (r.alloc.probe, r.bwe.as_deref_mut()) {
        let fell = b.last_decrease().is_some_and(|t| t >= p.started);
        let rates = b.probe_rates();
        let ended = fell || (now >= p.until && rates.is_some()) || now >= p.until + PROBE_FOR;
        if ended {
            let carried = rates
                .filter(|x| !fell && x.received_bps * 100 >= x.sent_bps * PROBE_CARRIED_PERCENT)
                .map(|x| x.received_bps);
            match carried {
                Some(bps) => {
                    // What arrived as fast as it was sent: the path takes the target,
                    // or what came of it.
                    let target = p.target;
                    b.raise_to(if bps * 100 >= target * PROBE_CARRIED_PERCENT {
                        target
                    } else {
                        bps
                    });
                    stats.probes[ProbeResult::Carried as usize] += 1;
                }
                None => {
                    // What arrived of it is what the path carries (its queue was full):
                    // a truer figure than a window that began before the probe.
                    if let Some(x) = rates {
                        b.raise_to(x.received_bps * 85 / 100);
                    }
                    // As a raise that failed, at a fraction of the cost.
                    r.alloc.hold = (r.alloc.hold * 2).clamp(HOLD_FIRST, HOLD_MAX);
                    r.alloc.hold_until = Some(now + r.alloc.hold);
                    stats.probes[ProbeResult::Congested as usize] += 1;
                }
            }
            tracing::debug!(
                receiver = who,
                ?rates,
                fell,
                carried = carried.is_some(),
                "probe ended"
            );
            b.end_probe();
            r.alloc.probe = None;
            r.alloc.probe_ended = Some(now);
            r.alloc.last = None;
        }
    }
    if r.alloc
        .last
        .is_some_and(|t| now.saturating_duration_since(t) < ALLOC_INTERVAL)
    {
        return;
    }
    let Some(bwe) = r.bwe.as_deref_mut() else {
        return;
    };
    bwe.on_idle(now);
    let Some(estimate) = bwe.estimate() else {
        return;
    };
    let Some(r) = peers.get(&who) else {
        return;
    };
    // Each track's layer rates (0: not being sent) and the highest it asked for, on the
    // stack: this runs with every feedback, on the packet path.
    let mut tracks = [([0u64; MAX_LAYERS], 0u8); MAX_LAYER_STATES];
    for (k, st) in r.tables.layer_states.iter().enumerate() {
        let t = owners
            .get(&(call, st.track))
            .and_then(|o| peers.get(o))
            .and_then(|o| o.tables.simulcast.iter().find(|t| t.track == st.track));
        if let Some(t) = t {
            for l in 0..=t.top() {
                if t.sending(l, Some(now)) {
                    tracks[k].0[l as usize] = u64::from(t.rate_bps[l as usize]).max(1);
                }
            }
            tracks[k].1 = st.height_target(t);
        }
    }
    let pad = padding_stream(peers, owners, call, who);
    let Some(r) = peers.get_mut(&who) else {
        return;
    };
    let since = r.alloc.last.map(|t| now.saturating_duration_since(t));
    r.alloc.last = Some(now);
    if let Some(d) = since.filter(|d| !d.is_zero()) {
        r.alloc.audio_bps = r.alloc.audio_bytes * 8 * 1_000_000 / d.as_micros().max(1) as u64;
    }
    r.alloc.audio_bytes = 0;
    if stats.estimates.len() < stats.estimates.capacity() {
        stats.estimates.push(estimate);
    }
    // A raise followed by a decrease: hold further raises off, longer each time.
    if let (Some(raised), Some(fell)) = (
        r.alloc.raised_at,
        r.bwe.as_deref().and_then(DownlinkBwe::last_decrease),
    ) {
        if fell > raised && fell.saturating_duration_since(raised) < RAISE_FAILED_WITHIN {
            r.alloc.hold = (r.alloc.hold * 2).clamp(HOLD_FIRST, HOLD_MAX);
            r.alloc.hold_until = Some(now + r.alloc.hold);
            r.alloc.raised_at = None;
        } else if now.saturating_duration_since(raised) >= RAISE_FAILED_WITHIN {
            r.alloc.raised_at = None;
            r.alloc.hold = Duration::ZERO;
        }
    }
    let may_raise = r.alloc.hold_until.is_none_or(|t| now >= t);
    // Padding costs a path that cannot take it little: a receiver that can be padded is
    // probed sooner than one whose raise is the probe.
    let after = if pad.is_some() {
        PAD_PROBE_AFTER
    } else {
        PROBE_AFTER
    };
    let since = |t: Option<Instant>| t.is_none_or(|t| now.saturating_duration_since(t) >= after);
    let may_probe = may_raise
        && r.alloc.probe.is_none()
        && since(r.alloc.raised_at)
        && since(r.alloc.probe_ended);
    let probe = may_probe && r.bwe.as_deref().is_some_and(|b| b.clear_for(now) >= after);
    // A receiver short of its lowest layers is probed on a path that is not congested,
    // clear or not: the other way out is a paused track. On a busy machine Chromium's
    // arrival stamps stand 20-100 ms late for seconds, and waiting for a clear path
    // paused both of a receiver's tracks for 6 s (session 20's traced web test).
    let short_probe = may_probe && r.bwe.as_deref().is_some_and(|b| b.calm_for(now) >= after);
    let budget = (estimate * BUDGET_PERCENT / 100).saturating_sub(r.alloc.audio_bps);
    let n = r.tables.layer_states.len();
    // Short of the lowest layers for less than PAUSE_AFTER: they are kept for now.
    let lowest: u64 = tracks[..n]
        .iter()
        .filter_map(|(rates, _)| rates.iter().find(|r| **r > 0))
        .sum();
    let short = lowest > budget;
    // Nor while a probe is finding out whether the path takes them.
    let keep_all = short
        && (now.saturating_duration_since(*r.alloc.short_since.get_or_insert(now)) < PAUSE_AFTER
            || r.alloc.probe.is_some());
    if !short {
        r.alloc.short_since = None;
    }
    let ask = Ask {
        budget,
        keep_all,
        may_raise,
        probe,
    };
    let (mut chosen, mut spent, mut probed) =
        choose_layers(&tracks[..n], &r.tables.layer_states, ask);
    // Short of the lowest layers on a path that has been clear: the estimate may have
    // fallen while the receiver was sent little (a call's start), so a probe for what it
    // is sent finds out before a track is paused.
    if probed || (short_probe && short) {
        // Padding at the rate the raise would add, before it: a path that does not take
        // it congests for a moment and drops padding, not the picture. The target has
        // the raise's margin.
        if let (Some((track, rtx, pt)), Some(b)) = (pad, r.bwe.as_deref_mut()) {
            // At least the raise; up to everything it asked for, as far as twice the
            // estimate (libwebrtc probes exponentially too), so a receiver far below its
            // layers gets back to them in a few probes, not one layer at a time. Not
            // further: on a 600 kbit/s path a probe for all of two top layers (2.5
            // Mbit/s) overflowed the queue and froze the picture (0.33 of the frames).
            let (_, all, _) = choose_layers(
                &tracks[..n],
                &r.tables.layer_states,
                Ask {
                    budget: u64::MAX / 4,
                    keep_all: false,
                    may_raise: true,
                    probe: false,
                },
            );
            let step = (spent + r.alloc.audio_bps) * RAISE_PERCENT / BUDGET_PERCENT;
            let wanted = (all + r.alloc.audio_bps) * RAISE_PERCENT / BUDGET_PERCENT;
            // Short, its lowest layers and audio with the margin (what it is sent while
            // they are kept; more than it is sent once a track is paused), as far as
            // twice the estimate: on a path that is narrow, a probe beyond it would
            // only fill the queue the receiver's media is in.
            let target = if probed {
                step.max(wanted.min(estimate * 2))
            } else {
                let lowest = (lowest + r.alloc.audio_bps) * RAISE_PERCENT / BUDGET_PERCENT;
                step.max(lowest.min(estimate * 2))
            };
            (chosen, spent, _) = choose_layers(
                &tracks[..n],
                &r.tables.layer_states,
                Ask {
                    probe: false,
                    ..ask
                },
            );
            let now_sending = spent + r.alloc.audio_bps;
            r.alloc.probe = Some(Probe {
                track,
                rtx,
                pt,
                bps: target.saturating_sub(now_sending).min(PROBE_MAX_BPS),
                target,
                started: now,
                until: now + PROBE_FOR,
                sent: 0,
            });
            b.start_probe();
            stats.probes[ProbeResult::Started as usize] += 1;
            probed = false;
        }
    }
    let states = &mut r.tables.layer_states;
    tracing::trace!(
        receiver = who,
        estimate,
        acked = r.bwe.as_deref().map_or(0, DownlinkBwe::acked_bps),
        audio = r.alloc.audio_bps,
        budget,
        spent,
        probed,
        chosen = ?&chosen[..n],
        "layers chosen"
    );
    let mut raised = false;
    for (st, c) in states.iter_mut().zip(chosen) {
        if c == PAUSE {
            if !st.paused {
                st.paused = true;
                st.current = NO_LAYER;
                *stats.pauses += 1;
                *stats.paused_delta += 1;
            }
            continue;
        }
        if st.paused {
            st.paused = false;
            *stats.paused_delta -= 1;
            raised = true;
        }
        if st.bwe_max != NO_LAYER && c > st.bwe_max {
            raised = true;
        }
        st.bwe_max = c;
    }
    if raised {
        r.alloc.raised_at = Some(now);
    }
    if probed {
        let audio = r.alloc.audio_bps;
        if let Some(b) = r.bwe.as_deref_mut() {
            b.raise_to((spent + audio) * 100 / BUDGET_PERCENT);
        }
    }
}

/// The stream a probe of `who`'s path pads: the RTX stream of a video track it is sent
/// (not paused), if its sender has one and `who` takes RTX. `None`: raising is the
/// probe, as for a receiver with no RTX.
fn padding_stream<H>(
    peers: &HashMap<PeerId, PeerMedia<H>>,
    owners: &HashMap<(CallKey, u32), PeerId>,
    call: CallKey,
    who: PeerId,
) -> Option<(u32, u32, u8)> {
    let r = peers.get(&who)?;
    // VP8's if it has one (every simulcast sender here sends VP8), else any video codec's:
    // a padding-only packet is dropped by the receiver's RTX stream before its payload
    // type is looked at.
    let rtx = &r.tables.rtx_pt_of_codec;
    let pt = Some(rtx[Codec::Vp8 as usize])
        .filter(|p| *p != NO)
        .or_else(|| rtx.iter().copied().find(|p| *p != NO))?;
    r.tables
        .layer_states
        .iter()
        .filter(|st| !st.paused && st.current != NO_LAYER)
        .find_map(|st| {
            let s = peers.get(owners.get(&(call, st.track))?)?;
            let rtx = s.tables.repairs.iter().find(|(m, _)| *m == st.track)?.1;
            Some((st.track, rtx, pt))
        })
}

/// The next sequence number of `r`'s RTX stream for `track` (SSRC `rtx`): retransmissions
/// and probe padding share it.
fn next_rtx_seq(next: &mut Vec<(u32, u16)>, track: u32, rtx: u32) -> u16 {
    let n = match next.iter_mut().find(|(m, _)| *m == track) {
        Some((_, n)) => n,
        None => {
            // Any start will do: the receiver learns the stream from its first.
            next.push((track, (rtx >> 16) as u16 ^ rtx as u16));
            &mut next.last_mut().expect("just pushed").1
        }
    };
    let seq = *n;
    *n = seq.wrapping_add(1);
    seq
}

/// Padding on the probe's RTX stream, as much as `r`'s probe owes at `now` (at most
/// [`PADS_PER_PACKET`]): it rides after a packet `r` is sent, so it is paced by the
/// media. Each carries the receiver's transport-wide number, so its feedback measures
/// the probe. Returns how many were sent.
fn pad_probe<H: HopCipher>(
    r: &mut PeerMedia<H>,
    ts: u32,
    now: Instant,
    now_us: i64,
    out: &mut Outbox,
) -> u64 {
    let (Some(p), Some(b)) = (r.alloc.probe.as_mut(), r.bwe.as_deref_mut()) else {
        return 0;
    };
    if now >= p.until || b.last_decrease().is_some_and(|t| t >= p.started) {
        return 0;
    }
    let owed = p.bps * now.saturating_duration_since(p.started).as_micros() as u64 / 8_000_000;
    let mut n = 0;
    while p.sent + PAD_WIRE <= owed.max(PAD_WIRE) && n < PADS_PER_PACKET {
        let seq = next_rtx_seq(&mut r.tables.rtx_next, p.track, p.rtx);
        let [hi, lo] = b.next_seq().to_be_bytes();
        let mut head = [0u8; 20];
        head[0] = 0x80 | 0x20 | 0x10;
        head[1] = p.pt;
        head[2..4].copy_from_slice(&seq.to_be_bytes());
        head[4..8].copy_from_slice(&ts.to_be_bytes());
        head[8..12].copy_from_slice(&p.rtx.to_be_bytes());
        head[12..20].copy_from_slice(&[0xbe, 0xde, 0, 1, r.tables.twcc_id << 4 | 1, hi, lo, 0]);
        if out
            .push_rtp_parts(r.addr, &mut r.outbound, &head, &PADDING)
            .is_err()
        {
            break;
        }
        b.on_sent(now_us, PAD_WIRE as usize);
        p.sent += PAD_WIRE;
        n += 1;
    }
    n
}

/// What [`choose_layers`] chooses within.
#[derive(Clone, Copy)]
struct Ask {
    budget: u64,
    /// Short of the lowest layers for less than [`PAUSE_AFTER`]: nothing is paused yet.
    keep_all: bool,
    /// No hold after a failed raise is on.
    may_raise: bool,
    /// One raise beyond the budget may be made (the path has been clear for a while).
    probe: bool,
}

/// Each track's layer (`PAUSE`, or [`NO_LAYER`] for a track nothing of which is
/// coming), the rate chosen, and whether a raise beyond the budget was made.
fn choose_layers(
    tracks: &[([u64; MAX_LAYERS], u8)],
    states: &[LayerState],
    ask: Ask,
) -> ([u8; MAX_LAYER_STATES], u64, bool) {
    let Ask {
        budget,
        keep_all,
        may_raise,
        mut probe,
    } = ask;
    let n = states.len();
    // The layer each track gets, from its lowest being sent up: PAUSE, or NO_LAYER (no
    // limit) for a track nothing of which is coming.
    let mut probed = false;
    let mut chosen = [PAUSE; MAX_LAYER_STATES];
    let mut spent = 0u64;
    for k in 0..n {
        let (rates, _) = &tracks[k];
        match rates.iter().position(|r| *r > 0) {
            // Nothing of it is coming: nothing to pause, no rate to count.
            None => chosen[k] = NO_LAYER,
            Some(l) if keep_all && !states[k].paused => {
                chosen[k] = l as u8;
                spent += rates[l];
            }
            Some(l) => {
                // Resuming a paused track is a raise: margin, and no hold on.
                let paused = states[k].paused;
                let need = if paused {
                    rates[l] * RAISE_PERCENT / 100
                } else {
                    rates[l]
                };
                let fits = spent + need <= budget && (!paused || may_raise);
                if fits || (probe && paused) {
                    probed |= !fits;
                    probe &= fits;
                    chosen[k] = l as u8;
                    spent += rates[l];
                }
            }
        }
    }
    for k in 0..n {
        let (rates, top) = &tracks[k];
        let Some(mut at) = Some(chosen[k]).filter(|c| *c < PAUSE && rates[*c as usize] > 0) else {
            continue;
        };
        for l in at + 1..=*top {
            let rate = rates[l as usize];
            if rate == 0 {
                continue;
            }
            let had = states[k].bwe_max == NO_LAYER || l <= states[k].bwe_max;
            if !had && !may_raise {
                break;
            }
            let extra = rate.saturating_sub(rates[at as usize]);
            let need = if had {
                extra
            } else {
                extra * RAISE_PERCENT / 100
            };
            if spent + need > budget {
                if !probe || had {
                    break;
                }
                probe = false;
                probed = true;
            }
            spent += extra;
            at = l;
        }
        chosen[k] = at;
    }
    (chosen, spent, probed)
}

/// Store a video packet of `sender`'s stream `ssrc` in its cache, making the cache at
/// the stream's first packet. `None`: the stream is not one it announced as video (or
/// too many are cached), and is not cached.
fn cache_put<H>(
    sender: &mut PeerMedia<H>,
    ssrc: u32,
    seq: u16,
    codec: u8,
    header: &[u8],
    payload: &[u8],
    keep: bool,
) -> Option<Stored> {
    let i = match sender.caches.iter().position(|c| c.ssrc == ssrc) {
        Some(i) => i,
        None => {
            if !sender.tables.video_ssrcs.contains(&ssrc)
                || sender.caches.len() >= MAX_CACHED_STREAMS
            {
                return None;
            }
            sender.caches.push(PacketCache::new(ssrc));
            sender.caches.len() - 1
        }
    };
    Some(sender.caches[i].put(seq, codec, header, payload, keep))
}

/// `owner`'s simulcast track that receivers know as `ssrc`.
fn simulcast_of<H>(
    peers: &HashMap<PeerId, PeerMedia<H>>,
    owner: PeerId,
    ssrc: u32,
) -> Option<SimulcastTrack> {
    peers
        .get(&owner)?
        .tables
        .simulcast
        .iter()
        .find(|t| t.track == ssrc)
        .copied()
}

/// The (track, layer) a sender report from `from` is about, if it is about one of its
/// simulcast layers.
fn sender_report_layer<H>(
    peers: &HashMap<PeerId, PeerMedia<H>>,
    from: PeerId,
    p: &rtcp::RtcpPacket<'_>,
) -> Option<(u32, u8)> {
    if p.packet_type != rtcp::PT_SR {
        return None;
    }
    let ssrc = p.sender_ssrc?;
    peers
        .get(&from)?
        .tables
        .simulcast
        .iter()
        .find_map(|t| Some((t.track, t.layer_of(ssrc)?)))
}

/// A receiver's keyframe request about `owner`'s simulcast track `track`: the relay asks
/// `owner` for a key frame of the layer the receiver is on, or is waiting for, within
/// [`KEYFRAME_REQUEST_INTERVAL`] per layer. Returns whether it asked.
fn keyframe_for_layer<H: HopCipher>(
    peers: &mut HashMap<PeerId, PeerMedia<H>>,
    receiver: PeerId,
    owner: PeerId,
    track: u32,
    now: Instant,
    buf: &mut Vec<u8>,
    out: &mut Outbox,
) -> bool {
    let Some(t) = simulcast_of(peers, owner, track) else {
        return false;
    };
    let layer = peers
        .get(&receiver)
        .and_then(|r| r.tables.layer_states.iter().find(|s| s.track == track))
        .map_or(t.top(), |s| {
            if s.current == simulcast::NO_LAYER {
                s.target(&t)
            } else {
                s.current
            }
        });
    let Some(ssrc) = t.ssrc_of(layer) else {
        return false;
    };
    let Some(o) = peers.get_mut(&owner) else {
        return false;
    };
    if !ask_keyframe(o, ssrc, now) {
        return false;
    }
    buf.clear();
    buf.extend_from_slice(&rtcp::pli(RELAY_SSRC, ssrc));
    let _ = out.push(o.addr, true, &mut o.outbound, buf);
    true
}

/// Answer `receiver`'s NACK `p` about `sender`'s stream `ssrc` from the cache: each packet
/// it holds goes again, on the receiver's RTX stream (numbered per receiver), or as it
/// was over a node link (no SRTP there); the packets it lacks are asked of the sender in
/// one NACK of the relay's own. A receiver that takes no RTX cannot be sent a packet again
/// on its hop (the SRTP index is spent), and is counted `unavailable`.
#[allow(clippy::too_many_arguments)]
fn answer_nack<H: HopCipher>(
    peers: &mut HashMap<PeerId, PeerMedia<H>>,
    receiver: PeerId,
    sender: PeerId,
    ssrc: u32,
    p: &rtcp::RtcpPacket<'_>,
    buf: &mut Vec<u8>,
    misses: &mut Vec<(u32, u16)>,
    counts: &mut [u64; Retransmit::ALL.len()],
    drops: &mut [u64; DropReason::ALL.len()],
    now: Instant,
    out: &mut Outbox,
) {
    // Distinct keys: feedback_target never names the feedback's own sender.
    let [Some(r), Some(s)] = peers.get_disjoint_mut([&receiver, &sender]) else {
        return;
    };
    // A simulcast track: the receiver names its own numbers, each from one layer. A node
    // link is sent each layer as it came, and names its numbers.
    let sim = s
        .tables
        .simulcast
        .iter()
        .find(|t| t.track == ssrc && !r.tables.link)
        .copied();
    let state = sim.and_then(|_| {
        r.tables
            .layer_states
            .iter()
            .find(|x| x.track == ssrc)
            .cloned()
    });
    if sim.is_none() && !s.caches.iter().any(|c| c.ssrc == ssrc) {
        return;
    }
    let rtx_ssrc = s
        .tables
        .repairs
        .iter()
        .find(|(m, _)| *m == ssrc)
        .map(|(_, x)| *x);
    misses.clear();
    for seq in rtcp::nack_lost(p) {
        let (src, src_seq, ts_delta) = match (sim, &state) {
            (None, _) => (ssrc, seq, None),
            (Some(t), Some(st)) => match st
                .original(seq)
                .and_then(|(l, q, d, v)| Some((t.ssrc_of(l)?, q, d, v)))
            {
                Some((layer_ssrc, q, d, v)) => (layer_ssrc, q, Some((d, v))),
                // Not a number it was sent, or from before the switches remembered.
                None => continue,
            },
            (Some(_), None) => continue,
        };
        let cache = s.caches.iter().find(|c| c.ssrc == src);
        let Some((codec, packet)) = cache.and_then(|c| c.get(src_seq)) else {
            if cache.is_some_and(|c| c.seen(src_seq)) {
                // It came, and its bytes were not kept (nobody in the call could be sent
                // it again then): asking the sender would only bring a duplicate.
                counts[Retransmit::Unavailable as usize] += 1;
            } else {
                misses.push((src, src_seq));
            }
            continue;
        };
        let pt = r.tables.pt_of_codec[codec as usize];
        if pt == NO {
            continue;
        }
        let base = (12 + 4 * (packet[0] & 0x0f) as usize).min(packet.len());
        let mut header = [0u8; 12 + 4 * 15];
        header[..base].copy_from_slice(&packet[..base]);
        let payload = &packet[base..];
        // VP8 picture ids as the receiver was sent them (simulcast), if they moved.
        let mut vp8 = None;
        if let (Some((d, v)), true) = (ts_delta, base >= 12) {
            // As the receiver was sent it: its numbers, on its clock, under the track.
            let ts = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
            header[2..4].copy_from_slice(&seq.to_be_bytes());
            header[4..8].copy_from_slice(&ts.wrapping_add(d).to_be_bytes());
            header[8..12].copy_from_slice(&ssrc.to_be_bytes());
            if codec == Codec::Vp8 as u8 && v != simulcast::Vp8Offsets::default() {
                vp8 = vp8_descriptor_len(payload).map(|n| (n, v));
            }
        }
        let rtx_pt = r.tables.rtx_pt_of_codec[codec as usize];
        let can_send = r.tables.link || (rtx_ssrc.is_some() && rtx_pt != NO);
        if can_send
            && !take_tokens(
                &mut r.rtx_tokens,
                &mut r.rtx_at,
                (RTX_PACKETS_PER_SECOND, RTX_PACKETS_BURST),
                1,
                now,
            )
        {
            counts[Retransmit::Limited as usize] += 1;
            continue;
        }
        let sent = if r.tables.link {
            header[1] = (header[1] & 0x80) | pt;
            match vp8 {
                Some((n, v)) => {
                    buf.clear();
                    buf.extend_from_slice(payload);
                    simulcast::rewrite_vp8(&mut buf[..n], v);
                    out.push_rtp_parts(r.addr, &mut r.outbound, &header[..base], buf)
                }
                None => out.push_rtp_parts(r.addr, &mut r.outbound, &header[..base], payload),
            }
        } else if let (Some(rtx), true) = (rtx_ssrc, rtx_pt != NO) {
            let n = next_rtx_seq(&mut r.tables.rtx_next, ssrc, rtx);
            header[1] = (header[1] & 0x80) | rtx_pt;
            header[2..4].copy_from_slice(&n.to_be_bytes());
            header[8..12].copy_from_slice(&rtx.to_be_bytes());
            buf.clear();
            buf.extend_from_slice(&seq.to_be_bytes());
            buf.extend_from_slice(payload);
            if let Some((n, v)) = vp8 {
                simulcast::rewrite_vp8(&mut buf[2..2 + n], v);
            }
            out.push_rtp_parts(r.addr, &mut r.outbound, &header[..base], buf)
        } else {
            counts[Retransmit::Unavailable as usize] += 1;
            continue;
        };
        match sent {
            Ok(()) => counts[Retransmit::Sent as usize] += 1,
            Err(reason) => drops[reason as usize] += 1,
        }
    }
    if !misses.is_empty() {
        // One NACK per stream asked about (with simulcast, per layer), in one compound.
        buf.clear();
        for (i, (m, _)) in misses.iter().enumerate() {
            if misses[..i].iter().any(|(x, _)| x == m) {
                continue;
            }
            let lost = misses.iter().filter(|(x, _)| x == m).map(|(_, q)| *q);
            rtcp::write_nack(buf, RELAY_SSRC, *m, lost);
        }
        if out.push(s.addr, true, &mut s.outbound, buf).is_ok() {
            counts[Retransmit::Asked as usize] += misses.len() as u64;
        }
    }
}

/// Whether `peer` is a node link's end (see [`PeerTables::link`]).
fn is_link<H>(peers: &HashMap<PeerId, PeerMedia<H>>, peer: PeerId) -> bool {
    peers.get(&peer).is_some_and(|p| p.tables.link)
}

/// A sender-side report (SR, SDES, BYE, APP, XR) from `from` may go to the others only if
/// every SSRC it speaks for is one `from` owns in its call.
fn speaks_for_itself(
    p: &rtcp::RtcpPacket<'_>,
    call: CallKey,
    from: PeerId,
    ssrc_owner: &HashMap<(CallKey, u32), PeerId>,
) -> Result<(), DropReason> {
    let mut any = false;
    for ssrc in rtcp::source_ssrcs(p) {
        let ssrc = ssrc.map_err(|_| DropReason::RtpMalformed)?;
        any = true;
        match ssrc_owner.get(&(call, ssrc)) {
            Some(o) if *o == from => {}
            Some(_) => return Err(DropReason::RtcpSsrcNotOwned),
            None => return Err(DropReason::RtcpSsrcUnknown),
        }
    }
    if any {
        Ok(())
    } else {
        // A BYE or SDES listing nobody says nothing.
        Err(DropReason::RtcpSsrcUnknown)
    }
}

/// Feedback (a receiver report, NACK, PLI, FIR) may be sent from an SSRC `from` owns or
/// from one nobody owns (a receive-only stack reports from a local SSRC it never
/// announced: libwebrtc's 1, aiortc's receivers'), never from another participant's.
fn feedback_sender_ok(
    p: &rtcp::RtcpPacket<'_>,
    call: CallKey,
    from: PeerId,
    ssrc_owner: &HashMap<(CallKey, u32), PeerId>,
) -> Result<(), DropReason> {
    match p.sender_ssrc.and_then(|s| ssrc_owner.get(&(call, s))) {
        Some(o) if *o != from => Err(DropReason::RtcpSsrcNotOwned),
        _ => Ok(()),
    }
}

/// Who gets `from`'s feedback about `media`: its sender, if `from` is sent that stream;
/// nobody if the stream is `from`'s own or nobody's (it left); refused if `from` is not
/// sent it, since it can have nothing to say about it.
fn feedback_target<H>(
    peers: &HashMap<PeerId, PeerMedia<H>>,
    ssrc_owner: &HashMap<(CallKey, u32), PeerId>,
    call: CallKey,
    from: PeerId,
    media: u32,
) -> Result<Option<PeerId>, DropReason> {
    let Some(owner) = ssrc_owner.get(&(call, media)).filter(|o| **o != from) else {
        return Ok(None);
    };
    // A receiver reports on the RTX stream of a track it is sent as on the track.
    let repaired = peers
        .get(owner)
        .and_then(|o| o.tables.repairs.iter().find(|(_, x)| *x == media))
        .map_or(media, |(m, _)| *m);
    let receives = peers
        .get(&from)
        .and_then(|p| p.tables.receiving.as_ref())
        .is_none_or(|r| r.contains(&repaired));
    if receives {
        Ok(Some(*owner))
    } else {
        Err(DropReason::RtcpFeedbackNotReceived)
    }
}

/// Whether an RTP packet (its first byte and its payload, padding included) carries
/// padding and nothing else: a bandwidth probe (RFC 3550 5.1: the last padding byte
/// counts the padding bytes, itself included).
fn padding_only(first: u8, payload: &[u8]) -> bool {
    first & 0x20 != 0 && payload.last().is_some_and(|n| *n as usize == payload.len())
}

/// Whether a receiver's keyframe request about `sender`'s stream `ssrc` may reach it now
/// (see [`KEYFRAME_REQUEST_INTERVAL`]); if so, it is recorded.
fn ask_keyframe<H>(sender: &mut PeerMedia<H>, ssrc: u32, now: Instant) -> bool {
    let fresh = |t: Option<Instant>| {
        t.is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_REQUEST_INTERVAL)
    };
    let slots = &mut sender.keyframe_asked;
    let slot = match slots.iter().position(|(s, t)| *s == ssrc && t.is_some()) {
        Some(i) if fresh(slots[i].1) => return false,
        Some(i) => i,
        None => match slots.iter().position(|(_, t)| !fresh(*t)) {
            Some(i) => i,
            None => return false,
        },
    };
    slots[slot] = (ssrc, Some(now));
    true
}

/// Whether a NACK of `entries` lost-packet entries from receiver `r` may go now; if so,
/// they are taken from its budget (see [`NACK_ENTRIES_PER_SECOND`]).
fn nack<H>(r: &mut PeerMedia<H>, entries: usize, now: Instant) -> bool {
    take_tokens(
        &mut r.nack_tokens,
        &mut r.nack_at,
        (NACK_ENTRIES_PER_SECOND, NACK_ENTRIES_BURST),
        entries as u64,
        now,
    )
}

/// A token bucket in [`NACK_UNIT`]s: refill `tokens` at `rate.0` a second up to a burst
/// of `rate.1` since `at`, then take `n` if it holds them.
fn take_tokens(
    tokens: &mut u64,
    at: &mut Option<Instant>,
    rate: (u64, u64),
    n: u64,
    now: Instant,
) -> bool {
    if let Some(at) = *at {
        let us = now.saturating_duration_since(at).as_micros();
        let earned = u64::try_from(us).unwrap_or(u64::MAX).saturating_mul(rate.0);
        *tokens = tokens.saturating_add(earned).min(rate.1 * NACK_UNIT);
    }
    *at = Some(now);
    let cost = n.saturating_mul(NACK_UNIT);
    if *tokens >= cost {
        *tokens -= cost;
        true
    } else {
        false
    }
}

/// The relay's own RTCP to a sender on its hop: transport-cc feedback about the packet
/// just received (every [`FEEDBACK_INTERVAL`], or when the pending list is full) and a
/// PLI per video SSRC when a receiver joined (at most every [`PLI_INTERVAL`]).
fn sender_rtcp<H: HopCipher>(
    sender: &mut PeerMedia<H>,
    plain: &[u8],
    ssrc: u32,
    now: Instant,
    epoch: Instant,
    buf: &mut Vec<u8>,
    out: &mut Outbox,
) {
    if let Some(tw) = sender.twcc.as_deref_mut() {
        if let Some(v) = find_extension(plain, sender.tables.twcc_id).filter(|v| v.len() >= 2) {
            let seq = tw.unwrap.unwrap(u16::from_be_bytes([v[0], v[1]]));
            let at_us = now.saturating_duration_since(epoch).as_micros() as i64;
            if tw.n < TWCC_PENDING {
                tw.pending[tw.n] = Arrival { seq, at_us };
                tw.n += 1;
            }
            if tw.media_ssrc == 0 {
                tw.media_ssrc = ssrc;
            }
        }
        let due = tw
            .last_fb
            .is_none_or(|t| now.saturating_duration_since(t) >= FEEDBACK_INTERVAL);
        if tw.n > 0 && (due || tw.n == TWCC_PENDING) {
            let pending = &mut tw.pending[..tw.n];
            pending.sort_unstable_by_key(|a| a.seq);
            // One feedback covers at most MAX_STATUS sequence numbers from the first.
            let first = pending[0].seq;
            let mut end = pending.len();
            while end > 1 && pending[end - 1].seq - first >= twcc::MAX_STATUS {
                end -= 1;
            }
            let mut k = 0;
            for i in 0..end {
                if k == 0 || pending[i].seq != pending[k - 1].seq {
                    pending[k] = pending[i];
                    k += 1;
                }
            }
            if twcc::write_feedback(buf, RELAY_SSRC, tw.media_ssrc, tw.fb_count, &pending[..k]) {
                tw.fb_count = tw.fb_count.wrapping_add(1);
                let _ = out.push(sender.addr, true, &mut sender.outbound, buf);
            }
            // What did not fit stays for the next feedback.
            let rest = tw.n - end;
            tw.pending.copy_within(end..tw.n, 0);
            tw.n = rest;
            tw.last_fb = Some(now);
        }
    }
    if sender.pli_due
        && !sender.tables.video_ssrcs.is_empty()
        && sender
            .last_pli
            .is_none_or(|t| now.saturating_duration_since(t) >= PLI_INTERVAL)
    {
        sender.pli_due = false;
        sender.last_pli = Some(now);
        buf.clear();
        for v in &sender.tables.video_ssrcs {
            buf.extend_from_slice(&rtcp::pli(RELAY_SSRC, *v));
        }
        let _ = out.push(sender.addr, true, &mut sender.outbound, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blindrelay_transport::hop::{self, HopContext};
    use webrtc_srtp::protection_profile::ProtectionProfile;

    /// The relay's ciphers: the forwarder runs here on real SRTP, as in the relay.
    type Forwarder = super::Forwarder<HopContext>;

    fn hop_error(e: hop::HopError) -> HopError {
        match e {
            hop::HopError::AuthFailed => HopError::AuthFailed,
            hop::HopError::Replay => HopError::Replay,
            hop::HopError::Malformed => HopError::Malformed,
            hop::HopError::Protect => HopError::Protect,
            hop::HopError::IndexReused => HopError::IndexReused,
        }
    }

    impl HopCipher for HopContext {
        fn unprotect_rtp<'a>(
            &mut self,
            input: &[u8],
            scratch: &'a mut Vec<u8>,
        ) -> Result<&'a [u8], HopError> {
            HopContext::unprotect_rtp(self, input, scratch).map_err(hop_error)
        }
        fn unprotect_rtcp<'a>(
            &mut self,
            input: &[u8],
            scratch: &'a mut Vec<u8>,
        ) -> Result<&'a [u8], HopError> {
            HopContext::unprotect_rtcp(self, input, scratch).map_err(hop_error)
        }
        fn protect_rtp_into(
            &mut self,
            clear: &[u8],
            arena: &mut Vec<u8>,
        ) -> Result<Range<usize>, HopError> {
            HopContext::protect_rtp_into(self, clear, arena).map_err(hop_error)
        }
        fn protect_rtp_parts_into(
            &mut self,
            header: &[u8],
            payload: &[u8],
            arena: &mut Vec<u8>,
        ) -> Result<Range<usize>, HopError> {
            HopContext::protect_rtp_parts_into(self, header, payload, arena).map_err(hop_error)
        }
        fn protect_rtcp_into(
            &mut self,
            clear: &[u8],
            arena: &mut Vec<u8>,
        ) -> Result<Range<usize>, HopError> {
            HopContext::protect_rtcp_into(self, clear, arena).map_err(hop_error)
        }
    }

    use webrtc_srtp::context::Context;

    fn hop(c: Context) -> HopContext {
        HopContext::reference(c)
    }

    fn fast(key: u8) -> HopContext {
        HopContext::Fast(Box::new(
            blindrelay_transport::fast_srtp::FastSrtpContext::new(&[key; 16], &[key; 12]).unwrap(),
        ))
    }

    fn ctx(key: u8) -> Context {
        Context::new(
            &[key; 16],
            &[key; 12],
            ProtectionProfile::AeadAes128Gcm,
            None,
            None,
        )
        .unwrap()
    }
    /// Every packet in `out` for `to`, opened as SRTCP with `rx` (the test's own
    /// output: it must open).
    fn rtcp_to(out: &Outbox, to: SocketAddr, rx: &mut Context) -> Vec<Vec<u8>> {
        (0..out.len())
            .filter_map(|i| out.get(i))
            .filter(|(t, _)| t.to == to)
            .map(|(_, d)| rx.decrypt_rtcp(d).unwrap().to_vec())
            .collect()
    }

    fn ctx_replay(key: u8) -> Context {
        Context::new(
            &[key; 16],
            &[key; 12],
            ProtectionProfile::AeadAes128Gcm,
            Some(webrtc_srtp::option::srtp_replay_protection(64)),
            Some(webrtc_srtp::option::srtcp_replay_protection(64)),
        )
        .unwrap()
    }

    fn rtp(ssrc: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        RtpHeader {
            marker: false,
            payload_type: 96,
            sequence: seq,
            timestamp: 1,
            ssrc,
            header_len: 12,
            padding_len: 0,
        }
        .write_minimal(&mut b);
        b.extend_from_slice(payload);
        b
    }

    /// A participant who announced no SSRC owns what it sends first; when it leaves, the
    /// next such participant may take the same SSRC over and send the same sequence
    /// numbers. A receiver's hop context has sealed those indices already: sealing them
    /// again would reuse GCM nonces on its hop. That copy is dropped (and counted), and
    /// the receiver is sent each index once only.
    #[test]
    fn a_receiver_is_never_sent_one_index_sealed_twice() {
        never_sealed_twice(fast(13), ctx_replay(13));
    }

    /// The same on a hop that negotiated AES128_CM_HMAC_SHA1_80 (webrtc-srtp), where a
    /// repeated index would reuse the AES-CM keystream.
    #[test]
    fn a_receiver_on_aes_cm_is_never_sent_one_index_sealed_twice() {
        let cm = |replay: bool| {
            Context::new(
                &[13; 16],
                &[13; 14],
                ProtectionProfile::Aes128CmHmacSha1_80,
                replay.then(|| webrtc_srtp::option::srtp_replay_protection(64)),
                None,
            )
            .unwrap()
        };
        never_sealed_twice(HopContext::reference(cm(false)), cm(true));
    }

    fn aes_cm(key: u8) -> Context {
        Context::new(
            &[key; 16],
            &[key; 14],
            ProtectionProfile::Aes128CmHmacSha1_80,
            Some(webrtc_srtp::option::srtp_replay_protection(64)),
            Some(webrtc_srtp::option::srtcp_replay_protection(64)),
        )
        .unwrap()
    }

    /// SSRCs for a flood: random, none of them one the call's participants own.
    fn foreign_ssrcs(n: usize, owned: &[u32]) -> Vec<u32> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let s: u32 = rand::random();
            if !owned.contains(&s) && !v.contains(&s) {
                v.push(s);
            }
        }
        v
    }

    fn inbound_ssrcs(f: &Forwarder, peer: PeerId) -> usize {
        f.peers[&peer].inbound.unprotect_ssrc_count()
    }

    /// A participant on a webrtc-srtp (AES128_CM_HMAC_SHA1_80) hop, which keeps state for
    /// every SSRC it is shown, sends thousands of authentic packets with SSRCs it does not
    /// own, and SRTCP in another's name: each is dropped as not owned before its hop sees
    /// it, so the hop's state does not grow; SRTCP from SSRCs nobody owns (a receive-only
    /// stack's) is let through up to the hop's bound only. Its own media still flows.
    #[test]
    fn ssrcs_a_participant_does_not_own_never_reach_its_webrtc_srtp_hop() {
        let mut f = Forwarder::new(None);
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        f.add_peer(
            1,
            7,
            addr(1),
            fast(1),
            fast(11),
            PeerTables::standard(&[100]),
        );
        let relay_side = HopContext::reference(aes_cm(2));
        f.add_peer(
            2,
            7,
            addr(2),
            relay_side,
            fast(12),
            PeerTables::standard(&[200]),
        );
        let mut tx = aes_cm(2);
        let mut out = Outbox::default();
        let wire = tx.encrypt_rtp(&rtp(200, 1, b"own")).unwrap();
        assert_eq!(f.on_rtp(2, &wire, &mut out), Ok(1));
        assert_eq!(inbound_ssrcs(&f, 2), 1);

        let flood = foreign_ssrcs(5000, &[100, 200]);
        let mut not_owned = 0;
        for (i, ssrc) in flood.iter().chain(&[100]).enumerate() {
            let wire = tx.encrypt_rtp(&rtp(*ssrc, i as u16, b"flood")).unwrap();
            if f.on_rtp(2, &wire, &mut out) == Err(DropReason::SsrcNotOwned) {
                not_owned += 1;
            }
        }
        assert_eq!(not_owned, flood.len() + 1);
        assert_eq!(inbound_ssrcs(&f, 2), 1, "the flood grew the hop's state");

        // SRTCP in participant 1's name: refused before the hop sees it.
        for _ in 0..100 {
            let wire = tx.encrypt_rtcp(&sr(100)).unwrap();
            assert_eq!(
                f.on_rtcp(2, &wire, &mut out),
                Err(DropReason::RtcpSsrcNotOwned)
            );
        }
        assert_eq!(inbound_ssrcs(&f, 2), 1);
        // Receiver reports from SSRCs nobody owns are legitimate, up to the hop's bound.
        let max = blindrelay_transport::fast_srtp::DEFAULT_MAX_SSRCS;
        let (mut passed, mut refused) = (0, 0);
        for ssrc in &flood[..max + 500] {
            let rr = rtcp::receiver_report(*ssrc, 100, 0, 0, 9);
            let wire = tx.encrypt_rtcp(&rr).unwrap();
            match f.on_rtcp(2, &wire, &mut out) {
                Ok(1) => passed += 1,
                Err(DropReason::SrtpMalformed) => refused += 1,
                r => panic!("{r:?}"),
            }
        }
        assert_eq!((passed, refused), (max, 500));
        assert_eq!(inbound_ssrcs(&f, 2), 1 + max);

        out.clear();
        let wire = tx.encrypt_rtp(&rtp(200, 2, b"own")).unwrap();
        assert_eq!(f.on_rtp(2, &wire, &mut out), Ok(1));
    }

    /// A participant that announced no SSRC owns those it sends first, up to
    /// [`MAX_CLAIMED_SSRCS`]; more are dropped before its hop keeps state for them.
    #[test]
    fn a_participant_without_announced_ssrcs_claims_a_bounded_few() {
        let mut f = Forwarder::new(None);
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        f.add_peer(
            1,
            7,
            addr(1),
            fast(1),
            fast(11),
            PeerTables::standard(&[100]),
        );
        let relay_side = HopContext::reference(aes_cm(2));
        f.add_peer(
            2,
            7,
            addr(2),
            relay_side,
            fast(12),
            PeerTables::standard(&[]),
        );
        let mut tx = aes_cm(2);
        let mut out = Outbox::default();
        let ssrcs = foreign_ssrcs(1000, &[100]);
        let sent: Vec<_> = ssrcs
            .iter()
            .map(|s| {
                let wire = tx.encrypt_rtp(&rtp(*s, 1, b"x")).unwrap();
                f.on_rtp(2, &wire, &mut out)
            })
            .collect();
        assert!(sent[..MAX_CLAIMED_SSRCS].iter().all(|r| *r == Ok(1)));
        assert!(sent[MAX_CLAIMED_SSRCS..]
            .iter()
            .all(|r| *r == Err(DropReason::SsrcNotOwned)));
        assert_eq!(inbound_ssrcs(&f, 2), MAX_CLAIMED_SSRCS);
        // What it claimed stays its own.
        let wire = tx.encrypt_rtp(&rtp(ssrcs[0], 2, b"x")).unwrap();
        assert_eq!(f.on_rtp(2, &wire, &mut out), Ok(1));
    }

    /// Receiver 3 gets `outbound` as its hop context; `rx` is its side of that hop.
    fn never_sealed_twice(outbound: HopContext, mut rx: Context) {
        let mut f = Forwarder::new(None);
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        f.add_peer(1, 7, addr(1), fast(1), fast(11), PeerTables::standard(&[]));
        f.add_peer(
            3,
            7,
            addr(3),
            fast(3),
            outbound,
            PeerTables::standard(&[300]),
        );
        let mut out = Outbox::default();
        let mut a = ctx(1);
        for seq in 1..=3 {
            let wire = a.encrypt_rtp(&rtp(100, seq, b"alice")).unwrap();
            assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(1));
        }
        f.remove_peer(1);
        f.add_peer(2, 7, addr(2), fast(2), fast(12), PeerTables::standard(&[]));
        let mut b = ctx(2);
        // Seq 2 and 3 were sealed for 3 already; 4 is new.
        for seq in 2..=4 {
            let wire = b.encrypt_rtp(&rtp(100, seq, b"bob!!")).unwrap();
            let sent = f.on_rtp(2, &wire, &mut out);
            assert_eq!(sent, Ok(usize::from(seq == 4)), "seq {seq}");
        }
        let mut drops = Vec::new();
        f.take_receiver_drops(|r, n| drops.push((r, n)));
        assert_eq!(drops, [(DropReason::SrtpIndexReused, 2)]);
        f.take_receiver_drops(|r, n| panic!("counted twice: {r:?} {n}"));
        // What receiver 3 got: every index once, each opens with its hop key.
        let mut seen = Vec::new();
        for t in out.transmits() {
            assert_eq!(t.to, addr(3));
            let clear = rx
                .decrypt_rtp(out.data(t))
                .expect("authentic and not a replay");
            seen.push(u16::from_be_bytes([clear[2], clear[3]]));
        }
        assert_eq!(seen, [1, 2, 3, 4]);
    }

    /// Consent: only packets that authenticated make a participant's liveness reportable,
    /// at most once per [`ACTIVITY_INTERVAL`], and an undelivered report is due again.
    #[test]
    fn activity_is_reported_for_authenticated_packets_only() {
        let mut f = Forwarder::new(None);
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        let t0 = Instant::now();
        f.add_peer(
            1,
            7,
            addr(1),
            fast(1),
            fast(11),
            PeerTables::standard(&[100]),
        );
        f.add_peer(
            2,
            7,
            addr(2),
            fast(2),
            fast(12),
            PeerTables::standard(&[200]),
        );
        let mut out = Outbox::default();
        fn taken(f: &mut Forwarder, deliver: bool) -> Vec<PeerId> {
            let mut v = Vec::new();
            f.take_activity(|p| {
                v.push(p);
                deliver
            });
            v
        }
        let mut a = ctx(1);
        // Forged: a bad tag with the participant's SSRC, junk, a replay.
        f.set_time(t0);
        let good = a.encrypt_rtp(&rtp(100, 1, b"x")).unwrap();
        let mut forged = good.to_vec();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(
            f.on_rtp(1, &forged, &mut out),
            Err(DropReason::SrtpAuthFailed)
        );
        assert!(f
            .on_rtcp(1, &[0x80, 200, 0, 1, 0, 0, 0, 100], &mut out)
            .is_err());
        assert!(
            taken(&mut f, true).is_empty(),
            "forged packets are no proof of life"
        );
        assert_eq!(f.on_rtp(1, &good, &mut out), Ok(1));
        assert_eq!(taken(&mut f, true), [1]);
        assert_eq!(f.on_rtp(1, &good, &mut out), Err(DropReason::SrtpReplay));
        // Within the interval: nothing new, however many packets.
        f.set_time(t0 + ACTIVITY_INTERVAL / 2);
        let w = a.encrypt_rtp(&rtp(100, 2, b"x")).unwrap();
        assert_eq!(f.on_rtp(1, &w, &mut out), Ok(1));
        assert!(taken(&mut f, true).is_empty());
        // After it: reported again; undelivered, it is due with the next packet.
        f.set_time(t0 + ACTIVITY_INTERVAL);
        let w = a.encrypt_rtp(&rtp(100, 3, b"x")).unwrap();
        assert_eq!(f.on_rtp(1, &w, &mut out), Ok(1));
        assert_eq!(taken(&mut f, false), [1]);
        let w = a.encrypt_rtp(&rtp(100, 4, b"x")).unwrap();
        assert_eq!(f.on_rtp(1, &w, &mut out), Ok(1));
        assert_eq!(taken(&mut f, true), [1]);
        // SRTCP that authenticates counts too.
        f.set_time(t0 + 2 * ACTIVITY_INTERVAL);
        let rr = a.encrypt_rtcp(&[0x80, 201, 0, 1, 0, 0, 0, 100]).unwrap();
        assert!(f.on_rtcp(1, &rr, &mut out).is_ok());
        assert_eq!(taken(&mut f, true), [1]);
    }

    #[test]
    fn forwards_payload_unchanged_and_refuses_replay() {
        let mut f = Forwarder::new(None);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        // a sends with key 1 (relay inbound 1); relay sends to b with key 2.
        // The relay side runs the in-place GCM path; the clients run webrtc-srtp.
        f.add_peer(1, 7, a, fast(1), fast(3), PeerTables::standard(&[100]));
        f.add_peer(2, 7, b, fast(4), fast(2), PeerTables::standard(&[200]));
        let mut client_a_out = ctx(1);
        let mut client_b_in = ctx_replay(2);
        let pkt = rtp(100, 1, b"opaque e2ee frame");
        let wire = client_a_out.encrypt_rtp(&pkt).unwrap();
        let mut out = Outbox::default();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(1));
        assert_eq!(out.len(), 1);
        assert_eq!(out.transmits()[0].to, b);
        let got = client_b_in
            .decrypt_rtp(out.data(&out.transmits()[0]))
            .unwrap();
        assert_eq!(&got[..], &pkt[..]);
        assert_eq!(f.on_rtp(1, &wire, &mut out), Err(DropReason::SrtpReplay));
        // A fresh index with a damaged tag: authentication, not replay, refuses it.
        let mut bad = client_a_out
            .encrypt_rtp(&rtp(100, 2, b"opaque"))
            .unwrap()
            .to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(f.on_rtp(1, &bad, &mut out), Err(DropReason::SrtpAuthFailed));
        assert_eq!(f.on_rtp(3, &wire, &mut out), Err(DropReason::NotConnected));
    }

    #[test]
    fn tap_sees_sender_call_and_clear_packet() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let tap: MediaTap = Arc::new(move |p: &TapPacket<'_>| {
            s2.lock().unwrap().push((p.from, p.call, p.data.to_vec()));
        });
        let mut f = Forwarder::new(Some(tap));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        f.add_peer(
            1,
            7,
            a,
            hop(ctx_replay(1)),
            hop(ctx(3)),
            PeerTables::standard(&[100]),
        );
        f.add_peer(
            2,
            7,
            "127.0.0.1:2".parse().unwrap(),
            hop(ctx_replay(4)),
            hop(ctx(2)),
            PeerTables::standard(&[200]),
        );
        let pkt = rtp(100, 1, b"opaque e2ee frame");
        let wire = ctx(1).encrypt_rtp(&pkt).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut Outbox::default()), Ok(1));
        assert_eq!(*seen.lock().unwrap(), vec![(a, 7, pkt)]);
    }

    #[test]
    fn pli_goes_to_the_media_sender_only() {
        let mut f = Forwarder::new(None);
        f.add_peer(
            1,
            7,
            "127.0.0.1:1".parse().unwrap(),
            hop(ctx_replay(1)),
            hop(ctx(11)),
            PeerTables::standard(&[100]),
        );
        f.add_peer(
            2,
            7,
            "127.0.0.1:2".parse().unwrap(),
            hop(ctx_replay(2)),
            hop(ctx(12)),
            PeerTables::standard(&[200]),
        );
        f.add_peer(
            3,
            7,
            "127.0.0.1:3".parse().unwrap(),
            hop(ctx_replay(3)),
            hop(ctx(13)),
            PeerTables::standard(&[300]),
        );
        let mut c2 = ctx(2);
        let wire = c2.encrypt_rtcp(&rtcp::pli(200, 100)).unwrap();
        let mut out = Outbox::default();
        assert_eq!(f.on_rtcp(2, &wire, &mut out), Ok(1));
        assert_eq!(out.len(), 1);
        let (t, data) = out.get(0).unwrap();
        assert!(t.rtcp);
        assert_eq!(t.to, "127.0.0.1:1".parse::<SocketAddr>().unwrap());
        let plain = ctx_replay(11).decrypt_rtcp(data).unwrap();
        assert_eq!(&plain[..], &rtcp::pli(200, 100)[..]);
    }

    /// A compound from participant 2 (SR, an RR about 3's stream, a PLI about 1's) in a
    /// three-party call: each receiver gets one compound of what concerns it, in order.
    #[test]
    fn rtcp_compound_is_split_per_receiver() {
        let mut f = Forwarder::new(None);
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        f.add_peer(
            1,
            7,
            addr(1),
            fast(1),
            fast(11),
            PeerTables::standard(&[100]),
        );
        f.add_peer(
            2,
            7,
            addr(2),
            fast(2),
            fast(12),
            PeerTables::standard(&[200]),
        );
        f.add_peer(
            3,
            7,
            addr(3),
            fast(3),
            fast(13),
            PeerTables::standard(&[300]),
        );
        let mut sr = vec![0x80, rtcp::PT_SR, 0, 6];
        sr.extend_from_slice(&200u32.to_be_bytes());
        sr.extend_from_slice(&[0; 20]);
        let rr = rtcp::receiver_report(200, 300, 0, 0, 10);
        let pli = rtcp::pli(200, 100);
        // An RR without report blocks ends at the relay.
        let empty_rr = [0x80, rtcp::PT_RR, 0, 1, 0, 0, 0, 200];
        let mut compound = sr.clone();
        compound.extend_from_slice(&rr);
        compound.extend_from_slice(&empty_rr);
        compound.extend_from_slice(&pli);
        let mut c2 = ctx(2);
        let wire = c2.encrypt_rtcp(&compound).unwrap();
        let mut out = Outbox::default();
        assert_eq!(f.on_rtcp(2, &wire, &mut out), Ok(2));
        let (t1, d1) = out.get(0).unwrap();
        let (t3, d3) = out.get(1).unwrap();
        assert!(t1.rtcp && t3.rtcp);
        assert_eq!((t1.to, t3.to), (addr(1), addr(3)));
        let to1 = [&sr[..], &pli[..]].concat();
        let to3 = [&sr[..], &rr[..]].concat();
        assert_eq!(&ctx_replay(11).decrypt_rtcp(d1).unwrap()[..], &to1[..]);
        assert_eq!(&ctx_replay(13).decrypt_rtcp(d3).unwrap()[..], &to3[..]);
        assert_eq!(out.arena().len(), d1.len() + d3.len());

        // A malformed packet anywhere in the compound queues nothing.
        let mut bad = compound.clone();
        bad.extend_from_slice(&[0x80, rtcp::PT_SR, 0, 9]);
        let wire = c2.encrypt_rtcp(&bad).unwrap();
        let mut out = Outbox::default();
        assert_eq!(f.on_rtcp(2, &wire, &mut out), Err(DropReason::RtpMalformed));
        assert!(out.is_empty() && out.arena().is_empty());
    }

    /// Tables for a stack that numbers Opus `opus` and VP8 `vp8`, with transport-cc at
    /// extension id `twcc` (0: none).
    fn tables(opus: u8, vp8: u8, twcc: u8, ssrcs: &[u32], video: &[u32]) -> PeerTables {
        let mut n = Numbering::default();
        n.pt[Codec::Opus.index()] = Some(opus);
        n.pt[Codec::Vp8.index()] = Some(vp8);
        n.twcc = (twcc != 0).then_some(twcc);
        let tracks: Vec<SentTrack> = video
            .iter()
            .map(|s| SentTrack {
                kind: "video",
                ssrc: *s,
                rtx: None,
                layers: Layers::NONE,
            })
            .collect();
        PeerTables::new(&n, &tracks, ssrcs)
    }

    /// A VP8 packet from a Chrome-like sender (PT 96, one-byte extensions: transport-cc
    /// at id 3 with sequence `tseq`, and an abs-send-time at id 2).
    fn chrome_rtp(ssrc: u32, seq: u16, tseq: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0x90, 0x80 | 96];
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&1234u32.to_be_bytes());
        b.extend_from_slice(&ssrc.to_be_bytes());
        b.extend_from_slice(&[0xbe, 0xde, 0, 2, 0x22, 1, 2, 3, 0x31]);
        b.extend_from_slice(&tseq.to_be_bytes());
        b.push(0);
        b.extend_from_slice(payload);
        b
    }

    /// Regression (found by `forward_model`'s property test): a receiver moved to another
    /// call or loop (`take_peer`, then `add_peer` with its tables) keeps its streams, and
    /// once it has been sent media on one, that stream's padding reaches it too. Its list
    /// of started streams had no capacity after the move, so no start was ever recorded
    /// and every later probe was dropped as `padding_before_media`.
    #[test]
    fn a_moved_receiver_gets_padding_after_media() {
        let mut f = Forwarder::new(None);
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        f.add_peer(
            1,
            7,
            addr(1),
            fast(1),
            fast(11),
            tables(111, 96, 0, &[100], &[]),
        );
        f.add_peer(
            2,
            8,
            addr(2),
            fast(2),
            fast(12),
            tables(111, 96, 0, &[200], &[]),
        );
        f.set_receiving(2, vec![100]);
        let t = f.take_peer(2).expect("peer 2 is here");
        f.add_peer(2, 7, t.addr, t.inbound, t.outbound, t.tables);
        let mut tx = ctx(1);
        let mut out = Outbox::default();
        let wire = tx.encrypt_rtp(&rtp(100, 1, b"a frame")).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(1));
        let mut probe = rtp(100, 2, &[0, 0, 0, 4]);
        probe[0] |= 0x20;
        let wire = tx.encrypt_rtp(&probe).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(1));
        let mut dropped = Vec::new();
        f.take_receiver_drops(|r, n| dropped.push((r, n)));
        assert!(dropped.is_empty(), "{dropped:?}");
    }

    /// A participant whose nominated ICE pair moved (`set_addr`) is sent everything at its
    /// new address from then on: media as a receiver, feedback about its own stream as a
    /// sender. Its hop contexts and streams stay, and a transfer carries the new address.
    #[test]
    fn set_addr_sends_to_the_new_address() {
        let mut f = Forwarder::new(None);
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        for (peer, ssrc) in [(1, 100), (2, 200), (3, 300)] {
            f.add_peer(
                peer,
                7,
                addr(peer as u16),
                fast(peer as u8),
                fast(10 + peer as u8),
                PeerTables::standard(&[ssrc]),
            );
        }
        let mut c1 = ctx(1);
        let mut out = Outbox::default();
        let wire = c1.encrypt_rtp(&rtp(100, 1, b"before")).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(2));
        let mut to: Vec<_> = out.transmits().iter().map(|t| t.to).collect();
        to.sort();
        assert_eq!(to, [addr(2), addr(3)]);

        assert!(f.set_addr(2, addr(22)));
        assert!(f.set_addr(1, addr(21)));
        assert!(!f.set_addr(9, addr(29)), "not here");
        let mut out = Outbox::default();
        let wire = c1.encrypt_rtp(&rtp(100, 2, b"after")).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(2));
        let to_2 = out.transmits().iter().position(|t| t.to == addr(22));
        let (t, data) = out.get(to_2.unwrap()).unwrap();
        assert!(!t.rtcp);
        let clear = ctx(12).decrypt_rtp(data).unwrap();
        assert!(clear.ends_with(b"after"), "receiver 2's hop opens it");
        assert!(out.transmits().iter().all(|t| t.to != addr(2)));

        // Feedback about 1's stream goes to 1's new address.
        let mut out = Outbox::default();
        let wire = ctx(2).encrypt_rtcp(&rtcp::pli(200, 100)).unwrap();
        assert_eq!(f.on_rtcp(2, &wire, &mut out), Ok(1));
        assert_eq!(out.transmits()[0].to, addr(21));

        let t = f.take_peer(2).expect("peer 2 is here");
        assert_eq!(t.addr, addr(22));
    }

    /// A padding-only packet (a bandwidth probe, carrying its last frame's timestamp) is
    /// not a receiver's first packet of a stream: aiortc would decode it as an empty
    /// frame, which ends libavcodec's decoder for good. After media it goes as usual.
    #[test]
    fn padding_only_packets_wait_for_the_streams_first_media_per_receiver() {
        let mut f = Forwarder::new(None);
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        f.add_peer(
            1,
            7,
            addr(1),
            fast(1),
            fast(11),
            tables(111, 96, 3, &[100], &[100]),
        );
        f.add_peer(
            2,
            7,
            addr(2),
            fast(2),
            fast(12),
            tables(96, 97, 0, &[200], &[]),
        );
        f.set_receiving(2, vec![100]);
        let mut padding = chrome_rtp(100, 7, 0, &[0; 223]);
        padding[0] |= 0x20;
        padding.push(224);
        let media = chrome_rtp(100, 8, 1, b"\x90\xe0 a frame");
        let mut tx = ctx(1);
        let mut out = Outbox::default();
        let drops = |f: &mut Forwarder| {
            let mut n = 0;
            f.take_receiver_drops(|r, k| {
                assert_eq!(r, DropReason::PaddingBeforeMedia);
                n += k;
            });
            n
        };
        let wire = tx.encrypt_rtp(&padding).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(0));
        assert_eq!(drops(&mut f), 1);
        let wire = tx.encrypt_rtp(&media).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(1));
        // Padding with data in it is media, and padding after media goes.
        let mut padding2 = chrome_rtp(100, 9, 2, &[0; 223]);
        padding2[0] |= 0x20;
        padding2.push(224);
        let wire = tx.encrypt_rtp(&padding2).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(1));
        assert_eq!(drops(&mut f), 0);
        // A receiver given the stream again later (re-answered) keeps its start.
        f.set_receiving(2, vec![100, 300]);
        let mut padding3 = chrome_rtp(100, 10, 3, &[0; 223]);
        padding3[0] |= 0x20;
        padding3.push(224);
        let wire = tx.encrypt_rtp(&padding3).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(1));
        // Dropped from the receiver's streams and given back: it starts again.
        f.set_receiving(2, vec![300]);
        f.set_receiving(2, vec![100]);
        let mut padding4 = chrome_rtp(100, 11, 4, &[0; 223]);
        padding4[0] |= 0x20;
        padding4.push(224);
        let wire = tx.encrypt_rtp(&padding4).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(0));
        assert_eq!(drops(&mut f), 1);
        // A packet whose padding leaves payload bytes is not a probe.
        assert!(!padding_only(0xa0, &[1, 2, 2]));
        assert!(padding_only(0xa0, &[0, 0, 3]));
        assert!(!padding_only(0x80, &[0, 0, 3]));
        assert!(!padding_only(0xa0, &[]));
    }

    #[test]
    fn each_receiver_gets_its_own_payload_type_without_extensions_and_the_same_payload() {
        let mut f = Forwarder::new(None);
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        // Chrome-like sender (VP8 96), aiortc-like receiver (VP8 97), e2ee-client (96).
        f.add_peer(
            1,
            7,
            addr(1),
            fast(1),
            fast(11),
            tables(111, 96, 3, &[100], &[100]),
        );
        f.add_peer(
            2,
            7,
            addr(2),
            fast(2),
            fast(12),
            tables(96, 97, 0, &[200], &[]),
        );
        f.add_peer(
            3,
            7,
            addr(3),
            fast(3),
            fast(13),
            PeerTables::standard(&[300]),
        );
        let payload = b"\x90\xe0 an e2ee frame, byte for byte";
        let mut tx = ctx(1);
        // 2 has not answered the offer with 1's track yet: it gets nothing.
        let wire = tx.encrypt_rtp(&chrome_rtp(100, 4, 0, payload)).unwrap();
        let mut out = Outbox::default();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(1));
        assert_eq!(out.transmits()[0].to, addr(3));
        out.clear();
        f.set_receiving(2, vec![100]);
        let wire = tx.encrypt_rtp(&chrome_rtp(100, 5, 1, payload)).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(2));
        for (i, (key, pt)) in [(12u8, 97u8), (13, 96)].into_iter().enumerate() {
            let (t, d) = out.get(i).unwrap();
            assert!(!t.rtcp);
            let got = ctx_replay(key).decrypt_rtp(d).unwrap();
            assert_eq!(got[0] & 0x10, 0, "extension bit cleared");
            assert_eq!(got[1], 0x80 | pt, "marker kept, payload type rewritten");
            assert_eq!(&got[2..12], &chrome_rtp(100, 5, 1, payload)[2..12]);
            assert_eq!(&got[12..], &payload[..], "payload byte for byte");
        }
        // An SSRC the sender did not announce, or another's, is dropped.
        let wire = tx.encrypt_rtp(&chrome_rtp(300, 6, 2, payload)).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Err(DropReason::SsrcNotOwned));
        let wire = tx.encrypt_rtp(&chrome_rtp(999, 7, 3, payload)).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Err(DropReason::SsrcNotOwned));
        // A payload type outside the call's codecs is dropped.
        let mut odd = chrome_rtp(100, 8, 4, payload);
        odd[1] = 118;
        let wire = tx.encrypt_rtp(&odd).unwrap();
        assert_eq!(
            f.on_rtp(1, &wire, &mut out),
            Err(DropReason::UnknownPayloadType)
        );
    }

    #[test]
    fn a_joiner_asks_for_a_key_frame_only_where_it_can_open_one() {
        // Sender 1 (video SSRC 100) is alone; then 2 joins. In a standard call its join
        // asks 1 for a key frame; in an end-to-end encrypted one (no key frame on join)
        // only transport-cc feedback goes back: 2 cannot open frames sealed before it has
        // keys, and asks once keyed.
        for (on_join, want) in [(true, 2), (false, 1)] {
            let mut f = Forwarder::new(None);
            let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
            f.set_time(Instant::now());
            let sender = tables(111, 96, 3, &[100], &[100]);
            f.add_peer(1, 7, addr(1), fast(1), fast(11), sender);
            let joiner = PeerTables {
                keyframe_on_join: on_join,
                ..PeerTables::standard(&[200])
            };
            f.add_peer(2, 7, addr(2), fast(2), fast(12), joiner);
            let (mut tx, mut rx) = (ctx(1), ctx_replay(11));
            let mut out = Outbox::default();
            let wire = tx.encrypt_rtp(&chrome_rtp(100, 1, 10, b"x")).unwrap();
            assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(1));
            let to_sender = rtcp_to(&out, addr(1), &mut rx);
            assert_eq!(to_sender.len(), want, "key frame on join: {on_join}");
            let pli = rtcp::pli(RELAY_SSRC, 100);
            assert_eq!(to_sender.iter().any(|p| p[..] == pli[..]), on_join);
        }
    }

    #[test]
    fn senders_get_transport_cc_feedback_and_a_keyframe_request_when_someone_joins() {
        let mut f = Forwarder::new(None);
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        let t0 = Instant::now();
        f.set_time(t0);
        f.add_peer(
            1,
            7,
            addr(1),
            fast(1),
            fast(11),
            tables(111, 96, 3, &[100], &[100]),
        );
        f.add_peer(
            2,
            7,
            addr(2),
            fast(2),
            fast(12),
            PeerTables::standard(&[200]),
        );
        let mut tx = ctx(1);
        let mut rx = ctx_replay(11);
        let mut out = Outbox::default();
        // Packet 1 at t0: feedback (first) and the PLI asked for by 2's join.
        let wire = tx.encrypt_rtp(&chrome_rtp(100, 1, 10, b"x")).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(1));
        let to_sender = rtcp_to(&out, addr(1), &mut rx);
        assert_eq!(to_sender.len(), 2, "feedback and PLI");
        let fb = &to_sender[0];
        assert_eq!(
            (fb[0] & 0x1f, fb[1]),
            (rtcp::FMT_TRANSPORT_CC, rtcp::PT_RTPFB)
        );
        assert_eq!(u16::from_be_bytes([fb[12], fb[13]]), 10, "base sequence");
        assert_eq!(u16::from_be_bytes([fb[14], fb[15]]), 1, "status count");
        assert_eq!(&to_sender[1][..], &rtcp::pli(RELAY_SSRC, 100)[..]);
        // Packets 11 and 13 within 50 ms: no feedback yet; at 60 ms one covering 11..=14
        // with 12 missing.
        out.clear();
        for (ms, tseq, seq) in [(10, 11, 2), (20, 13, 3), (60, 14, 4)] {
            f.set_time(t0 + Duration::from_millis(ms));
            let wire = tx.encrypt_rtp(&chrome_rtp(100, seq, tseq, b"x")).unwrap();
            f.on_rtp(1, &wire, &mut out).unwrap();
        }
        let fbs: Vec<Vec<u8>> = (0..out.len())
            .filter_map(|i| out.get(i))
            .filter(|(t, _)| t.rtcp && t.to == addr(1))
            .map(|(_, d)| rx.decrypt_rtcp(d).unwrap().to_vec())
            .collect();
        assert_eq!(fbs.len(), 1, "one feedback, no second PLI");
        assert_eq!(u16::from_be_bytes([fbs[0][12], fbs[0][13]]), 11);
        assert_eq!(u16::from_be_bytes([fbs[0][14], fbs[0][15]]), 4);
        // Sparse transport sequence numbers do not inflate the feedback: 8 packets
        // 500 apart take a feedback the size their count justifies, not one per gap.
        out.clear();
        let mut sent = 0;
        for i in 0..8u16 {
            f.set_time(t0 + Duration::from_millis(100 + u64::from(i)));
            let wire = tx
                .encrypt_rtp(&chrome_rtp(100, 5 + i, 1_000 + 500 * i, b"x"))
                .unwrap();
            sent += wire.len();
            f.on_rtp(1, &wire, &mut out).unwrap();
        }
        f.set_time(t0 + Duration::from_millis(200));
        let wire = tx.encrypt_rtp(&chrome_rtp(100, 13, 4_600, b"x")).unwrap();
        sent += wire.len();
        f.on_rtp(1, &wire, &mut out).unwrap();
        let to_sender: Vec<(usize, Vec<u8>)> = (0..out.len())
            .filter_map(|i| out.get(i))
            .filter(|(t, _)| t.rtcp && t.to == addr(1))
            .map(|(_, d)| (d.len(), rx.decrypt_rtcp(d).unwrap().to_vec()))
            .collect();
        assert_eq!(to_sender.len(), 1, "one feedback for the nine");
        let (wire_len, fb) = &to_sender[0];
        assert_eq!(u16::from_be_bytes([fb[14], fb[15]]), 3_601, "status count");
        assert!(fb.len() <= twcc::max_feedback_len(9), "{} bytes", fb.len());
        assert!(
            *wire_len < sent / 4,
            "{wire_len} bytes of feedback for {sent} sent"
        );
        // Feedback from a receiver about this hop ends at the relay.
        let mut remb = rtcp::pli(200, 100);
        remb[0] = 0x80 | rtcp::FMT_AFB;
        let wire = ctx(2).encrypt_rtcp(&remb).unwrap();
        assert_eq!(f.on_rtcp(2, &wire, &mut Outbox::default()), Ok(0));
    }

    /// Participants 1, 2 and 3 of call 7 sending SSRCs 100 (and 101), 200 and 300;
    /// participant i's hop keys are i (inbound) and 10 + i (outbound).
    fn three() -> Forwarder {
        let mut f = Forwarder::new(None);
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        for (i, ssrcs) in [(1u8, &[100u32, 101][..]), (2, &[200]), (3, &[300])] {
            f.add_peer(
                u64::from(i),
                7,
                addr(u16::from(i)),
                fast(i),
                fast(10 + i),
                PeerTables::standard(ssrcs),
            );
        }
        f
    }

    fn drops(f: &mut Forwarder) -> Vec<(DropReason, u64)> {
        let mut v = Vec::new();
        f.take_receiver_drops(|r, n| v.push((r, n)));
        v
    }

    /// `from` sends the clear compound `c`; what each receiver got, decrypted. A compound
    /// refused whole (its first sender SSRC is another's, checked before unprotect) is
    /// counted with the refusals of single packets, as the worker loop counts both.
    fn send_rtcp(
        f: &mut Forwarder,
        tx: &mut Context,
        from: PeerId,
        c: &[u8],
    ) -> Vec<(u16, Vec<u8>)> {
        let wire = tx.encrypt_rtcp(c).unwrap();
        let mut out = Outbox::default();
        let n = match f.on_rtcp(from, &wire, &mut out) {
            Ok(n) => n,
            Err(DropReason::RtcpSsrcNotOwned) => {
                f.receiver_drops[DropReason::RtcpSsrcNotOwned as usize] += 1;
                0
            }
            Err(e) => panic!("not handled: {e:?}"),
        };
        assert_eq!(n, out.len());
        (0..out.len())
            .map(|i| {
                let (t, d) = out.get(i).unwrap();
                let port = t.to.port();
                let clear = ctx_replay(10 + port as u8).decrypt_rtcp(d).unwrap();
                (port, clear.to_vec())
            })
            .collect()
    }

    fn sr(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, rtcp::PT_SR, 0, 6];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[7; 20]);
        p
    }

    fn bye(ssrcs: &[u32]) -> Vec<u8> {
        let mut p = vec![0x80 | ssrcs.len() as u8, rtcp::PT_BYE, 0, ssrcs.len() as u8];
        for s in ssrcs {
            p.extend_from_slice(&s.to_be_bytes());
        }
        p
    }

    /// An SDES with a CNAME chunk per SSRC.
    fn sdes(ssrcs: &[u32]) -> Vec<u8> {
        let mut p = vec![0x80 | ssrcs.len() as u8, rtcp::PT_SDES, 0, 0];
        for s in ssrcs {
            p.extend_from_slice(&s.to_be_bytes());
            p.extend_from_slice(&[1, 3]);
            p.extend_from_slice(b"abc");
            p.push(0);
            while !p.len().is_multiple_of(4) {
                p.push(0);
            }
        }
        p[3] = (p.len() / 4 - 1) as u8;
        p
    }

    fn fir(sender: u32, media: u32, seq: u8) -> Vec<u8> {
        let mut p = vec![0x84, rtcp::PT_PSFB, 0, 4];
        p.extend_from_slice(&sender.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(&media.to_be_bytes());
        p.extend_from_slice(&[seq, 0, 0, 0]);
        p
    }

    fn nack(sender: u32, media: u32) -> Vec<u8> {
        let mut p = vec![0x81, rtcp::PT_RTPFB, 0, 3];
        p.extend_from_slice(&sender.to_be_bytes());
        p.extend_from_slice(&media.to_be_bytes());
        p.extend_from_slice(&[0, 5, 0, 0]);
        p
    }

    /// A participant announcing an SSRC another already owns does not take it over: the
    /// owner's packets keep flowing, the newcomer's with that SSRC are dropped.
    #[test]
    fn an_ssrc_keeps_its_owner() {
        let mut f = three();
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        f.add_peer(
            4,
            7,
            addr(4),
            fast(4),
            fast(14),
            PeerTables::standard(&[100, 400]),
        );
        let mut out = Outbox::default();
        let wire = ctx(1).encrypt_rtp(&rtp(100, 1, b"alice")).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(3));
        let mut m = ctx(4);
        let wire = m.encrypt_rtp(&rtp(100, 2, b"forged")).unwrap();
        assert_eq!(f.on_rtp(4, &wire, &mut out), Err(DropReason::SsrcNotOwned));
        let wire = m.encrypt_rtp(&rtp(400, 1, b"mine")).unwrap();
        assert_eq!(f.on_rtp(4, &wire, &mut out), Ok(3));
        // Leaving gives up only what it owned.
        f.remove_peer(4);
        let wire = ctx(1).encrypt_rtp(&rtp(100, 3, b"alice")).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut Outbox::default()), Ok(2));
    }

    /// SR, SDES, BYE (and APP, XR) go to the others only when every SSRC they speak for is
    /// the sender's own: one about another's stream is forged, one about a stream nobody
    /// sends says nothing. Each is dropped and counted; the rest of the compound goes.
    #[test]
    fn sender_reports_for_anothers_ssrc_are_dropped_and_counted() {
        let mut f = three();
        let mut c2 = ctx(2);
        for forged in [
            bye(&[100]),
            bye(&[200, 100]),
            sr(100),
            sdes(&[200, 101]),
            sdes(&[300]),
        ] {
            assert!(
                send_rtcp(&mut f, &mut c2, 2, &forged).is_empty(),
                "{forged:?}"
            );
            assert_eq!(drops(&mut f), [(DropReason::RtcpSsrcNotOwned, 1)]);
        }
        assert!(send_rtcp(&mut f, &mut c2, 2, &sr(999)).is_empty());
        assert_eq!(drops(&mut f), [(DropReason::RtcpSsrcUnknown, 1)]);
        // Its own SR and SDES go to 1 and 3; the forged BYE between them does not.
        let own = [sr(200), sdes(&[200])].concat();
        let compound = [sr(200), bye(&[100, 101]), sdes(&[200])].concat();
        assert_eq!(
            send_rtcp(&mut f, &mut c2, 2, &compound),
            [(1, own.clone()), (3, own)]
        );
        assert_eq!(drops(&mut f), [(DropReason::RtcpSsrcNotOwned, 1)]);
        // Its own BYE goes too.
        assert_eq!(send_rtcp(&mut f, &mut c2, 2, &bye(&[200])).len(), 2);
        // An SDES whose chunk overruns the packet is malformed: nothing is queued.
        let mut bad = sdes(&[200]);
        bad[9] = 200;
        let wire = c2.encrypt_rtcp(&bad).unwrap();
        let mut out = Outbox::default();
        assert_eq!(f.on_rtcp(2, &wire, &mut out), Err(DropReason::RtpMalformed));
        assert!(out.is_empty());
    }

    /// Feedback is never sent in another participant's name, and only about a stream its
    /// sender is sent; a receive-only stack's unannounced SSRC may send it.
    #[test]
    fn feedback_is_from_no_one_elses_ssrc_and_about_a_received_stream() {
        let mut f = three();
        f.set_receiving(2, vec![100]);
        let mut c2 = ctx(2);
        // About 3's stream, which 2 is not sent: refused.
        for p in [
            rtcp::pli(200, 300).to_vec(),
            nack(200, 300),
            rtcp::receiver_report(200, 300, 255, 1000, 9).to_vec(),
        ] {
            assert!(send_rtcp(&mut f, &mut c2, 2, &p).is_empty());
            assert_eq!(drops(&mut f), [(DropReason::RtcpFeedbackNotReceived, 1)]);
        }
        // In 3's name, about a stream 2 does get: refused.
        for p in [
            rtcp::pli(300, 100).to_vec(),
            rtcp::receiver_report(300, 100, 255, 1000, 9).to_vec(),
        ] {
            assert!(send_rtcp(&mut f, &mut c2, 2, &p).is_empty());
            assert_eq!(drops(&mut f), [(DropReason::RtcpSsrcNotOwned, 1)]);
        }
        // From its own SSRC, or an unannounced one (libwebrtc's receive-only 1), about a
        // stream it gets: to that stream's sender.
        for sender in [200, 1] {
            let rr = rtcp::receiver_report(sender, 100, 0, 0, 9);
            assert_eq!(send_rtcp(&mut f, &mut c2, 2, &rr), [(1, rr.to_vec())]);
            let n = nack(sender, 100);
            assert_eq!(send_rtcp(&mut f, &mut c2, 2, &n), [(1, n)]);
        }
        // An RR with blocks about 1's stream and 3's: only the first reaches 1.
        let mut rr = rtcp::receiver_report(200, 100, 0, 0, 9).to_vec();
        rr.extend_from_slice(&rtcp::receiver_report(200, 300, 0, 0, 9)[8..]);
        rr[0] = 0x82;
        rr[3] = 13;
        assert_eq!(
            send_rtcp(&mut f, &mut c2, 2, &rr),
            [(1, rtcp::receiver_report(200, 100, 0, 0, 9).to_vec())]
        );
        assert_eq!(drops(&mut f), [(DropReason::RtcpFeedbackNotReceived, 1)]);
        assert!(drops(&mut f).is_empty());
    }

    /// Keyframe requests about one stream reach its sender at most once per
    /// KEYFRAME_REQUEST_INTERVAL, whoever sends them; each stream has its own interval,
    /// and NACKs are not keyframe requests.
    #[test]
    fn keyframe_requests_are_coalesced_per_stream() {
        let mut f = three();
        let t0 = Instant::now();
        let (mut c2, mut c3) = (ctx(2), ctx(3));
        let ms = |n: u64| t0 + Duration::from_millis(n);
        f.set_time(t0);
        assert_eq!(send_rtcp(&mut f, &mut c2, 2, &rtcp::pli(200, 100)).len(), 1);
        // Another receiver, a FIR, 249 ms later: coalesced.
        f.set_time(ms(10));
        assert!(send_rtcp(&mut f, &mut c3, 3, &rtcp::pli(300, 100)).is_empty());
        f.set_time(ms(249));
        assert!(send_rtcp(&mut f, &mut c2, 2, &fir(200, 100, 1)).is_empty());
        assert_eq!(drops(&mut f), [(DropReason::KeyframeRequestLimited, 2)]);
        // 1's other stream is asked separately; NACKs are not keyframe requests.
        let pli101 = rtcp::pli(300, 101);
        assert_eq!(
            send_rtcp(&mut f, &mut c3, 3, &pli101),
            [(1, pli101.to_vec())]
        );
        for _ in 0..5 {
            assert_eq!(send_rtcp(&mut f, &mut c3, 3, &nack(300, 100)).len(), 1);
        }
        // After the interval, the next request goes.
        f.set_time(ms(250));
        let req = fir(200, 100, 2);
        assert_eq!(send_rtcp(&mut f, &mut c2, 2, &req), [(1, req)]);
        // A flood: 200 PLIs over one second reach the sender 4 times.
        let mut passed = 0;
        for i in 1..=200u64 {
            f.set_time(ms(250 + 5 * i));
            passed += send_rtcp(&mut f, &mut c3, 3, &rtcp::pli(300, 100)).len();
        }
        assert_eq!(passed, 4);
        assert_eq!(drops(&mut f), [(DropReason::KeyframeRequestLimited, 196)]);
    }

    /// A NACK of `entries` lost-packet entries, PIDs 0, 20, 40, ...
    fn nack_of(sender: u32, media: u32, entries: u16) -> Vec<u8> {
        let mut p = vec![0x81, rtcp::PT_RTPFB, 0, 0];
        p.extend_from_slice(&sender.to_be_bytes());
        p.extend_from_slice(&media.to_be_bytes());
        for i in 0..entries {
            p.extend_from_slice(&(i * 20).to_be_bytes());
            p.extend_from_slice(&[0xff, 0xff]);
        }
        let words = (p.len() / 4 - 1) as u16;
        p[2..4].copy_from_slice(&words.to_be_bytes());
        p
    }

    /// Each receiver's NACKs carry at most a burst and then a steady rate of lost-packet
    /// entries; the rest are dropped and counted, and one receiver's storm leaves
    /// another's NACKs alone.
    #[test]
    fn nacks_are_bounded_per_receiver() {
        let mut f = three();
        let t0 = Instant::now();
        let (mut c2, mut c3) = (ctx(2), ctx(3));
        let ms = |n: u64| t0 + Duration::from_millis(n);
        f.set_time(t0);
        // A storm from 2: 100-entry NACKs; the burst passes 5 of them whole.
        let storm = nack_of(200, 100, 100);
        let passed: usize = (0..50)
            .map(|_| send_rtcp(&mut f, &mut c2, 2, &storm).len())
            .sum();
        assert_eq!(passed, NACK_ENTRIES_BURST as usize / 100);
        assert_eq!(drops(&mut f), [(DropReason::NackLimited, 45)]);
        // 3, another receiver of the same stream, is unaffected.
        let one = nack_of(300, 100, 1);
        assert_eq!(send_rtcp(&mut f, &mut c3, 3, &one), [(1, one.clone())]);
        // 2 earns entries back at the steady rate: 200 ms buys 100.
        f.set_time(ms(199));
        assert!(send_rtcp(&mut f, &mut c2, 2, &storm).is_empty());
        f.set_time(ms(200));
        assert_eq!(send_rtcp(&mut f, &mut c2, 2, &storm).len(), 1);
        // Over 10 s of a 100-entry NACK every 10 ms, what reaches the sender is the rate.
        let mut entries = 0;
        for i in 1..=1000u64 {
            f.set_time(ms(200 + 10 * i));
            entries += 100 * send_rtcp(&mut f, &mut c2, 2, &storm).len();
        }
        assert_eq!(entries as u64, 10 * NACK_ENTRIES_PER_SECOND);
        assert!(drops(&mut f)
            .iter()
            .all(|(r, _)| *r == DropReason::NackLimited));
    }

    /// Tables of a Chrome-like participant with VP8 `vp8`, its RTX `rtx`, and a video
    /// track 100 + 100 * `who` repaired on the next SSRC.
    fn rtx_tables(vp8: u8, rtx: Option<u8>, who: u32) -> PeerTables {
        let mut n = Numbering::default();
        n.pt[Codec::Opus.index()] = Some(111);
        n.pt[Codec::Vp8.index()] = Some(vp8);
        n.rtx[Codec::Vp8.index()] = rtx;
        let (media, repair) = (100 * who, 100 * who + 1);
        let track = SentTrack {
            kind: "video",
            ssrc: media,
            rtx: rtx.map(|_| repair),
            layers: Layers::NONE,
        };
        PeerTables::new(&n, &[track], &[media, repair])
    }

    /// A call at `now` of a Chrome-like sender (1: VP8 96, RTX 97, track 100 repaired on
    /// 101) and a receiver of its track with other numbers (2: VP8 98, RTX 99), and the
    /// address of each participant.
    fn rtx_call(now: Instant) -> (Forwarder, fn(u16) -> SocketAddr) {
        fn addr(i: u16) -> SocketAddr {
            SocketAddr::from(([127, 0, 0, 1], i))
        }
        let mut f = Forwarder::new(None);
        f.set_time(now);
        f.add_peer(
            1,
            7,
            addr(1),
            fast(1),
            fast(11),
            rtx_tables(96, Some(97), 1),
        );
        f.add_peer(
            2,
            7,
            addr(2),
            fast(2),
            fast(12),
            rtx_tables(98, Some(99), 2),
        );
        f.set_receiving(2, vec![100]);
        (f, addr)
    }

    fn vp8_rtp(pt: u8, ssrc: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = rtp(ssrc, seq, payload);
        b[1] = pt;
        b
    }

    fn retransmits(f: &mut Forwarder) -> Vec<(Retransmit, u64)> {
        let mut v = Vec::new();
        f.take_retransmits(|k, n| v.push((k, n)));
        v
    }

    /// A receiver's NACK is answered from the sender's packet cache: a receiver that
    /// takes RTX gets each cached packet on its RTX stream (its own payload type, the
    /// sender's RTX SSRC, its own numbering, the original sequence number ahead of the
    /// untouched payload); what the cache lacks is asked of the sender in a NACK of the
    /// relay's own; a receiver without RTX gets nothing (its hop's index is spent), and
    /// the NACK never reaches the sender itself.
    #[test]
    fn nacks_are_answered_from_the_cache_on_each_receivers_rtx_stream() {
        let (mut f, addr) = rtx_call(Instant::now());
        f.add_peer(3, 7, addr(3), fast(3), fast(13), rtx_tables(96, None, 3));
        f.set_receiving(3, vec![100]);
        let mut tx = ctx(1);
        let payload = |seq: u16| format!("frame part {seq}").into_bytes();
        let mut out = Outbox::default();
        for seq in 10..=12 {
            let wire = tx
                .encrypt_rtp(&vp8_rtp(96, 100, seq, &payload(seq)))
                .unwrap();
            assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(2));
        }
        let mut c2 = ctx(2);
        let mut rtx_seq = None;
        for round in 0..3u16 {
            if round == 2 {
                // 2 moves (a merge, another loop): its RTX numbering goes on where it was.
                let t = f.take_peer(2).unwrap();
                f.add_peer(2, 7, t.addr, t.inbound, t.outbound, t.tables);
            }
            // 11 is cached; 5 never came.
            let mut n = Vec::new();
            rtcp::write_nack(&mut n, 2, 100, [5, 11].into_iter());
            let wire = c2.encrypt_rtcp(&n).unwrap();
            let mut out = Outbox::default();
            assert_eq!(f.on_rtcp(2, &wire, &mut out), Ok(0), "no part forwarded");
            assert_eq!(out.len(), 2, "the RTX packet, then the NACK to the sender");
            let (t, d) = out.get(0).unwrap();
            assert_eq!((t.to, t.rtcp), (addr(2), false));
            let got = ctx_replay(12).decrypt_rtp(d).unwrap();
            let h = RtpHeader::parse(&got).unwrap();
            assert_eq!((h.payload_type, h.ssrc, h.timestamp), (99, 101, 1));
            let first = *rtx_seq.get_or_insert(h.sequence);
            assert_eq!(
                h.sequence,
                first.wrapping_add(round),
                "numbered per receiver"
            );
            assert_eq!(&got[12..14], &11u16.to_be_bytes(), "the original sequence");
            assert_eq!(&got[14..], &payload(11)[..], "the payload, byte for byte");
            let (t, d) = out.get(1).unwrap();
            assert_eq!((t.to, t.rtcp), (addr(1), true));
            let asked = ctx_replay(11).decrypt_rtcp(d).unwrap();
            let p = rtcp::packets(&asked).next().unwrap().unwrap();
            assert_eq!(p.sender_ssrc, Some(RELAY_SSRC));
            assert_eq!(p.route(), RtcpRoute::MediaSender(100));
            assert_eq!(rtcp::nack_lost(&p).collect::<Vec<_>>(), [5]);
        }
        // 3 takes no RTX: nothing can go again on its hop.
        let mut n = Vec::new();
        rtcp::write_nack(&mut n, 3, 100, [11].into_iter());
        let mut out = Outbox::default();
        let wire = ctx(3).encrypt_rtcp(&n).unwrap();
        assert_eq!(f.on_rtcp(3, &wire, &mut out), Ok(0));
        assert!(out.is_empty());
        assert_eq!(
            retransmits(&mut f),
            [
                (Retransmit::Sent, 3),
                (Retransmit::Unavailable, 1),
                (Retransmit::Asked, 3)
            ]
        );
        assert_eq!(drops(&mut f), []);
    }

    /// In a call where nobody but the sender could be sent a packet again (no receiver
    /// takes RTX, no node link), the cache notes which packets came but keeps no bytes:
    /// the copy was a fifth of the forwarding cost (bench/RESULTS.md). A NACK for one
    /// that came is `unavailable`, as before; one that never came is still asked for, and
    /// a late copy of one that came is still a duplicate.
    #[test]
    fn the_cache_keeps_no_bytes_when_no_receiver_could_be_sent_them() {
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        let mut f = Forwarder::new(None);
        f.set_time(Instant::now());
        f.add_peer(
            1,
            7,
            addr(1),
            fast(1),
            fast(11),
            rtx_tables(96, Some(97), 1),
        );
        f.add_peer(3, 7, addr(3), fast(3), fast(13), rtx_tables(96, None, 3));
        f.set_receiving(3, vec![100]);
        let mut tx = ctx(1);
        let mut out = Outbox::default();
        for seq in [10, 11, 13] {
            let wire = tx.encrypt_rtp(&vp8_rtp(96, 100, seq, b"frame")).unwrap();
            assert!(f.on_rtp(1, &wire, &mut out).is_ok());
        }
        let cache = &f.peers[&1].caches[0];
        assert!(cache.seen(11) && cache.get(11).is_none(), "noted, not kept");
        let mut n = Vec::new();
        rtcp::write_nack(&mut n, 3, 100, [11, 12].into_iter());
        let wire = ctx(3).encrypt_rtcp(&n).unwrap();
        let mut out = Outbox::default();
        assert_eq!(f.on_rtcp(3, &wire, &mut out), Ok(0));
        let sent: Vec<_> = (0..out.len())
            .filter_map(|i| out.get(i))
            .map(|(t, _)| (t.to, t.rtcp))
            .collect();
        assert_eq!(
            sent,
            [(addr(1), true)],
            "12 asked of the sender; 11 cannot go again"
        );
        // 12 was asked at the gap, and again now.
        assert_eq!(
            retransmits(&mut f),
            [(Retransmit::Unavailable, 1), (Retransmit::Asked, 2)]
        );
        // A late copy of 11 on the sender's RTX stream is a duplicate.
        let mut rtx = vp8_rtp(97, 101, 1, &[0, 11]);
        rtx.extend_from_slice(b"frame");
        let wire = tx.encrypt_rtp(&rtx).unwrap();
        assert_eq!(
            f.on_rtp(1, &wire, &mut out),
            Err(DropReason::RetransmitDuplicate)
        );
        // A receiver that takes RTX joins: from now on the bytes are kept.
        f.add_peer(
            2,
            7,
            addr(2),
            fast(2),
            fast(12),
            rtx_tables(98, Some(99), 2),
        );
        let wire = tx.encrypt_rtp(&vp8_rtp(96, 100, 14, b"frame")).unwrap();
        assert!(f.on_rtp(1, &wire, &mut out).is_ok());
        assert!(f.peers[&1].caches[0].get(14).is_some());
    }

    /// One small NACK asks for many packets (17 an entry): what the relay sends one
    /// receiver again is bounded by its retransmission budget, the rest counted.
    #[test]
    fn retransmissions_to_one_receiver_are_budgeted() {
        let t0 = Instant::now();
        let (mut f, _) = rtx_call(t0);
        let mut tx = ctx(1);
        let mut out = Outbox::default();
        for seq in 0..600u16 {
            let wire = tx.encrypt_rtp(&vp8_rtp(96, 100, seq, b"p")).unwrap();
            assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(1));
            out.clear();
        }
        let mut c2 = ctx(2);
        let mut nack_all = |f: &mut Forwarder| {
            let mut n = Vec::new();
            rtcp::write_nack(&mut n, 2, 100, 90..600u16);
            let wire = c2.encrypt_rtcp(&n).unwrap();
            let mut out = Outbox::default();
            assert_eq!(f.on_rtcp(2, &wire, &mut out), Ok(0));
            out.len()
        };
        let burst = RTX_PACKETS_BURST as usize;
        assert_eq!(nack_all(&mut f), burst, "the burst, of 510 cached");
        assert_eq!(
            retransmits(&mut f),
            [(Retransmit::Sent, burst as u64), (Retransmit::Limited, 10)]
        );
        // 100 ms later it has earned 50 more.
        f.set_time(t0 + Duration::from_millis(100));
        assert_eq!(nack_all(&mut f), RTX_PACKETS_PER_SECOND as usize / 10);
    }

    /// A gap in a sender's stream is asked for at once; the packet that comes back on its
    /// RTX stream is forwarded as the packet it repairs (every receiver in its own
    /// numbering, never seen before on their hops), once: a second copy is dropped and
    /// counted. RTX padding (a probe) is taken for transport-cc and forwarded to no one.
    #[test]
    fn a_packet_lost_before_the_relay_is_asked_for_and_forwarded_when_it_comes() {
        let (mut f, addr) = rtx_call(Instant::now());
        let mut tx = ctx(1);
        let mut out = Outbox::default();
        let wire = tx.encrypt_rtp(&vp8_rtp(96, 100, 10, b"ten")).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(1));
        out.clear();
        let wire = tx.encrypt_rtp(&vp8_rtp(96, 100, 13, b"thirteen")).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(1));
        let nack = out
            .transmits()
            .iter()
            .position(|t| t.rtcp && t.to == addr(1))
            .expect("a NACK to the sender");
        let (_, d) = out.get(nack).unwrap();
        let asked = ctx_replay(11).decrypt_rtcp(d).unwrap();
        let p = rtcp::packets(&asked).next().unwrap().unwrap();
        assert_eq!(rtcp::nack_lost(&p).collect::<Vec<_>>(), [11, 12]);
        // 12 comes back on the RTX stream (SSRC 101, PT 97, its own numbering).
        let mut repair = vp8_rtp(97, 101, 500, &12u16.to_be_bytes());
        repair.extend_from_slice(b"twelve");
        for (attempt, want) in [(0u16, Ok(1)), (1, Err(DropReason::RetransmitDuplicate))] {
            repair[2..4].copy_from_slice(&(500 + attempt).to_be_bytes());
            let wire = tx.encrypt_rtp(&repair).unwrap();
            let mut out = Outbox::default();
            assert_eq!(f.on_rtp(1, &wire, &mut out), want);
            if want.is_ok() {
                let (t, d) = out.get(0).unwrap();
                assert_eq!(t.to, addr(2));
                let got = ctx_replay(12).decrypt_rtp(d).unwrap();
                let h = RtpHeader::parse(&got).unwrap();
                assert_eq!((h.payload_type, h.ssrc, h.sequence), (98, 100, 12));
                assert_eq!(&got[12..], b"twelve");
            }
        }
        // A probe on the RTX stream: padding only.
        let mut probe = vp8_rtp(97, 101, 502, &[0, 0, 0, 4]);
        probe[0] |= 0x20;
        let wire = tx.encrypt_rtp(&probe).unwrap();
        let mut out = Outbox::default();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Err(DropReason::RtxPadding));
        assert!(out.transmits().iter().all(|t| t.to == addr(1)));
        assert_eq!(
            retransmits(&mut f),
            [(Retransmit::Asked, 2), (Retransmit::Recovered, 1)]
        );
    }

    /// The cache holds the last [`CACHE_PACKETS`] of a stream across the sequence
    /// number's wrap, forgets the slots a jump skips (they stand for packets that never
    /// came), and takes a late packet only while it is within reach and not held.
    #[test]
    fn the_packet_cache_keeps_a_window_across_the_wrap() {
        let mut c = PacketCache::new(1);
        let h = [0x80u8; 12];
        assert_eq!(c.put(65530, 1, &h, b"a", true), Stored::New);
        assert_eq!(c.put(65531, 1, &h, b"b", true), Stored::New);
        assert_eq!(
            c.put(2, 1, &h, b"c", true),
            Stored::Gap {
                first: 65532,
                count: 6
            }
        );
        assert_eq!(c.get(65531).map(|(_, p)| &p[12..]), Some(&b"b"[..]));
        assert_eq!(
            c.get(2).map(|(codec, p)| (codec, &p[12..])),
            Some((1, &b"c"[..]))
        );
        assert!(c.get(0).is_none());
        assert_eq!(c.put(0, 1, &h, b"late", true), Stored::New);
        assert_eq!(c.put(0, 1, &h, b"again", true), Stored::Held);
        assert_eq!(c.get(0).map(|(_, p)| &p[12..]), Some(&b"late"[..]));
        // A jump of more than the window: nothing older is held, and no gap is asked.
        let far = 2u16.wrapping_add(CACHE_PACKETS as u16 + 100);
        assert_eq!(c.put(far, 1, &h, b"far", true), Stored::New);
        assert!(c.get(2).is_none() && c.get(65531).is_none());
        // A lap later, a slot does not answer for the packet a lap earlier.
        assert!(c.get(far.wrapping_sub(CACHE_PACKETS as u16)).is_none());
        assert_eq!(c.put(2, 1, &h, b"too old", true), Stored::Held);
        // Larger than a slot: not cached, and its slot is empty.
        let big = vec![0u8; CACHE_SLOT_BYTES];
        assert_eq!(c.put(far.wrapping_add(1), 1, &h, &big, true), Stored::New);
        assert!(c.get(far.wrapping_add(1)).is_none());
    }

    /// A VP8 packet's payload: the descriptor (start of the frame) and, on a key frame,
    /// the 10 bytes the web client leaves clear (frame tag, start code, 640 x `h`), then a
    /// body that stands for the sealed frame.
    fn vp8_frame(key: bool, h: u16, body: &[u8]) -> Vec<u8> {
        let mut p = vec![0x10];
        if key {
            p.extend_from_slice(&[0x50, 0x2a, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02]);
            p.extend_from_slice(&h.to_le_bytes());
        } else {
            p.extend_from_slice(&[0x31, 0x00, 0x00]);
        }
        p.extend_from_slice(body);
        p
    }

    fn with_ts(mut b: Vec<u8>, ts: u32) -> Vec<u8> {
        b[4..8].copy_from_slice(&ts.to_be_bytes());
        b
    }

    /// What receiver 2 was sent, in [`through_path`]: a layer's packet, or probe padding.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Got {
        Layer(u8),
        Padding,
    }

    /// Sender 1 simulcasts two layers (SSRCs 100 and 102; with `rtx`, repaired on 101 and
    /// 103, and receiver 2 takes RTX on payload type 97) for `until` ms at 30 frames a
    /// second: layer 0 one 400-byte packet a frame, layer 1 four of 1,100 (about 110 and
    /// 1,150 kbit/s on the wire), key frames every half second. Receiver 2's path has
    /// `rate(ms)` bits per second and a 20 KB queue (a tbf); it sends transport-cc
    /// feedback every 50 ms. Returns the forwarder and what receiver 2 got when (ms),
    /// checking on the way that its packets carry one run of transport-wide numbers
    /// from 1 and that padding is padding only, on the RTX stream of the track. `tick`
    /// is called before each frame with its time.
    /// A receiver's path at a moment: its rate (bits per second), and how late the
    /// receiver stamps arrivals (a busy machine: a delay that stands, not a queue).
    #[derive(Clone, Copy)]
    struct Path {
        rate: u64,
        late_us: i64,
    }

    /// A path of `rate` whose arrivals are stamped on time.
    fn rate(rate: u64) -> Path {
        Path { rate, late_us: 0 }
    }

    fn through_path(
        rtx: bool,
        until: u64,
        path: impl Fn(u64) -> Path,
        mut tick: impl FnMut(u64, &mut Forwarder),
    ) -> (Forwarder, Vec<(u64, Got)>) {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        let mut n = Numbering::default();
        n.pt[Codec::Opus.index()] = Some(111);
        n.pt[Codec::Vp8.index()] = Some(96);
        n.twcc = Some(3);
        let mut rn = n.clone();
        if rtx {
            rn.rtx[Codec::Vp8.index()] = Some(97);
        }
        let repairs = if rtx {
            [Some(101), Some(103), None]
        } else {
            [None; MAX_LAYERS]
        };
        let layers = Layers {
            ssrcs: [100, 102, 0],
            rtx: repairs,
            count: 2,
        };
        let track = SentTrack {
            kind: "video",
            ssrc: 100,
            rtx: repairs[0],
            layers,
        };
        let receiver = SentTrack {
            kind: "video",
            ssrc: 200,
            rtx: None,
            layers: Layers::NONE,
        };
        let mut f = Forwarder::new(None);
        f.set_time(ms(0));
        let announced: Vec<u32> = [100, 102]
            .into_iter()
            .chain(repairs.into_iter().flatten())
            .collect();
        f.add_peer(
            1,
            7,
            addr(1),
            fast(1),
            fast(11),
            PeerTables::new(&n, &[track], &announced),
        );
        f.add_peer(
            2,
            7,
            addr(2),
            fast(2),
            fast(12),
            PeerTables::new(&rn, &[receiver], &[200]),
        );
        f.set_receiving(2, vec![100]);
        let mut tx = ctx(1);
        let mut rx = ctx_replay(12);
        let mut c2 = ctx(2);
        // When the receiver's path is next free.
        let mut free_us: i64 = 0;
        let mut arrivals: Vec<twcc::Arrival> = Vec::new();
        let mut next_twcc = 1u16;
        let mut got = Vec::new();
        let (mut seqs, mut frame) = ([0u16; 2], 0u32);
        let mut at = 0u64;
        let mut last_fb = 0u64;
        while at < until {
            tick(at, &mut f);
            let Path { rate, late_us } = path(at);
            let key = frame % 15 == 0;
            for (l, (count, size)) in [(1usize, 400usize), (4, 1100)].into_iter().enumerate() {
                for p in 0..count {
                    f.set_time(ms(at));
                    let mut body = format!("layer {l} frame {frame} ").into_bytes();
                    body.resize(size, 0);
                    let payload = vp8_frame(key && p == 0, [180, 360][l], &body);
                    let pkt = with_ts(
                        vp8_rtp(96, layers.ssrcs[l], seqs[l], &payload),
                        frame * 3000,
                    );
                    seqs[l] = seqs[l].wrapping_add(1);
                    let mut out = Outbox::default();
                    f.on_rtp(1, &tx.encrypt_rtp(&pkt).unwrap(), &mut out)
                        .unwrap();
                    for i in 0..out.len() {
                        let (t, d) = out.get(i).unwrap();
                        if t.to != addr(2) {
                            continue;
                        }
                        let clear = rx.decrypt_rtp(d).unwrap();
                        let h = RtpHeader::parse(&clear).unwrap();
                        let v = find_extension(&clear, 3).expect("its transport-wide number");
                        let seq = u16::from_be_bytes([v[0], v[1]]);
                        assert_eq!(seq, next_twcc, "one run of its own numbers");
                        next_twcc += 1;
                        if h.ssrc == 101 {
                            assert_eq!(clear[1] & 0x7f, 97, "on the RTX stream");
                            assert!(clear[0] & 0x20 != 0, "padding");
                            let body = &clear[h.header_len..];
                            assert_eq!(
                                usize::from(*body.last().unwrap()),
                                body.len(),
                                "padding only"
                            );
                            got.push((at, Got::Padding));
                        } else {
                            assert_eq!(h.ssrc, 100, "the track");
                            let body = &clear[h.header_len..];
                            let k = body.windows(6).position(|w| w == b"layer ").unwrap();
                            got.push((at, Got::Layer(body[k + 6] - b'0')));
                        }
                        // Through the path: queued behind what is in it, or lost.
                        let size = d.len() as i64 + 28;
                        let now_us = at as i64 * 1000;
                        let start = free_us.max(now_us);
                        if (start - now_us) * rate as i64 / 8_000_000 + size <= 20_000 {
                            free_us = start + size * 8_000_000 / rate as i64;
                            arrivals.push(twcc::Arrival {
                                seq: u64::from(seq) + (1 << 16),
                                at_us: free_us + late_us,
                            });
                        }
                    }
                }
            }
            if at >= last_fb + 50 && !arrivals.is_empty() {
                last_fb = at;
                let mut fb = Vec::new();
                assert!(twcc::write_feedback(&mut fb, 200, 1, 0, &arrivals));
                arrivals.clear();
                let mut out = Outbox::default();
                f.set_time(ms(at));
                f.on_rtcp(2, &c2.encrypt_rtcp(&fb).unwrap(), &mut out)
                    .unwrap();
            }
            frame += 1;
            at = u64::from(frame) * 1000 / 30;
        }
        (f, got)
    }

    /// The layers in `got` from `from` to `to` ms, in order, each run once.
    fn layers_in(got: &[(u64, Got)], from: u64, to: u64) -> Vec<u8> {
        let mut v: Vec<u8> = got
            .iter()
            .filter(|(t, _)| (from..to).contains(t))
            .filter_map(|(_, g)| match g {
                Got::Layer(l) => Some(*l),
                Got::Padding => None,
            })
            .collect();
        v.dedup();
        v
    }

    /// A receiver whose transport-cc feedback shows a narrow path: it is moved to the
    /// layer that fits, then paused when nothing fits, then given video again when the
    /// path clears. Its packets carry its own transport-wide numbers, one run from 1.
    #[test]
    fn a_receivers_downlink_estimate_chooses_its_layer_and_pauses_the_track() {
        // 0-3 s: 300 kbit/s; 3-8 s: 60 kbit/s; then 50 Mbit/s.
        let (mut f, got) = through_path(
            false,
            20_000,
            |at| match at {
                0..3_000 => rate(300_000),
                3_000..8_000 => rate(60_000),
                _ => rate(50_000_000),
            },
            |_, _| {},
        );
        assert_eq!(
            layers_in(&got, 30, 300),
            [1],
            "the top layer before feedback says more"
        );
        assert_eq!(
            layers_in(&got, 2_000, 3_000),
            [0],
            "the layer that fits 300 kbit/s"
        );
        assert!(
            layers_in(&got, 7_100, 8_000).is_empty(),
            "paused: no layer fits 60 kbit/s"
        );
        // Video tried again before the path cleared (at 8 s) congested it, so raising
        // was held off for a while; once allowed, the raise (the probe) held.
        assert_eq!(
            layers_in(&got, 19_000, 20_000),
            [1],
            "the top layer again on a clear path"
        );
        assert!(
            got.iter().all(|(_, g)| *g != Got::Padding),
            "no RTX: no padding"
        );
        let (pauses, paused) = f.take_pauses();
        assert_eq!((pauses, paused), (1, 0), "paused at 60 kbit/s, and not now");
        let mut estimates = Vec::new();
        f.take_estimates(|e| estimates.push(e));
        assert!(estimates.iter().any(|e| *e < 150_000), "{estimates:?}");
        assert!(f.take_layer_switches() >= 2);
    }

    /// A receiver that takes RTX is probed with padding before a raise: on a 500 kbit/s
    /// path (room for the lower layer, not the upper) each probe congests it and the
    /// receiver stays on the lower layer throughout, with no move up and back down; once
    /// the path widens a probe is carried and the receiver moves up.
    #[test]
    fn a_raise_waits_for_a_padding_probe_the_path_carries() {
        let (mut f, got) = through_path(
            true,
            30_000,
            |at| rate(if at < 10_000 { 500_000 } else { 50_000_000 }),
            |_, _| {},
        );
        // The top layer first (the estimate starts high), then down.
        let top = got
            .iter()
            .position(|(_, g)| *g == Got::Layer(1))
            .expect("the top layer first");
        let down = got[top..]
            .iter()
            .find(|(_, g)| *g == Got::Layer(0))
            .map(|(t, _)| *t)
            .expect("moved down to the layer that fits");
        assert!(down < 3_000, "down at {down} ms");
        assert_eq!(
            layers_in(&got, down, 10_000),
            [0],
            "no raise on the narrow path: the probes took the congestion"
        );
        let padded = |from: u64, to: u64| {
            got.iter()
                .filter(|(t, g)| (from..to).contains(t) && *g == Got::Padding)
                .count()
        };
        assert!(padded(down, 10_000) > 0, "probed on the narrow path");
        assert_eq!(
            layers_in(&got, 25_000, 30_000),
            [1],
            "the top layer once a probe was carried"
        );
        let first_up = got
            .iter()
            .find(|(t, g)| *t >= 10_000 && *g == Got::Layer(1))
            .map(|(t, _)| *t)
            .expect("moved up");
        assert!(padded(10_000, first_up) > 0, "probed before moving up");
        let mut probes = [0u64; ProbeResult::ALL.len()];
        let pads = f.take_probes(|r, n| probes[r as usize] += n);
        assert_eq!(pads as usize, padded(0, 30_000));
        assert!(probes[ProbeResult::Congested as usize] >= 1, "{probes:?}");
        assert!(probes[ProbeResult::Carried as usize] >= 1, "{probes:?}");
        assert!(probes[ProbeResult::Started as usize] >= 2, "{probes:?}");
    }

    /// A receiver whose estimate fell while its path stayed clear (as at a call's start,
    /// when a delay came while it was sent little and the decrease took that little) is
    /// short of even the lowest layer (about 110 kbit/s here; 60 kbit/s is what audio
    /// would leave of the lowest estimate). Capped at that layer, it has no raise to probe
    /// with: it is probed anyway before its track would be paused, and keeps the layer.
    #[test]
    fn a_receiver_short_of_its_lowest_layer_on_a_clear_path_is_probed_not_paused() {
        short_receiver_is_probed_not_paused(0);
    }

    /// As above, on a path whose receiver stamps arrivals 80 ms late from the fall on
    /// (a busy machine): the path is never clear, but it is not congested either, and a
    /// probe is still the way out rather than a pause.
    #[test]
    fn a_short_receiver_whose_arrivals_stand_late_is_probed_not_paused() {
        short_receiver_is_probed_not_paused(80_000);
    }

    fn short_receiver_is_probed_not_paused(late_us: i64) {
        let (mut f, got) = through_path(
            true,
            10_000,
            |at| Path {
                rate: 50_000_000,
                late_us: if at >= 3_000 { late_us } else { 0 },
            },
            |at, f| {
                if at == 0 {
                    assert!(f.set_max_height(2, 100, 200), "capped at 180 lines");
                }
                if at == 3_000 {
                    let now = f.now.expect("set before the first frame");
                    let bwe = f.peers.get_mut(&2).and_then(|r| r.bwe.as_deref_mut());
                    bwe.expect("receiver 2 has an estimate")
                        .fall_to(60_000, now);
                }
            },
        );
        assert_eq!(layers_in(&got, 2_000, 3_000), [0], "the layer of its cap");
        let padded = got
            .iter()
            .filter(|(t, g)| *t >= 3_000 && *g == Got::Padding)
            .count();
        assert!(padded > 0, "probed after the fall");
        assert_eq!(f.take_pauses(), (0, 0), "no track paused");
        let sent = |from: u64, to: u64| {
            got.iter()
                .filter(|(t, g)| (from..to).contains(t) && *g == Got::Layer(0))
                .count()
        };
        // 30 frames a second, one packet each.
        assert!(sent(3_000, 10_000) >= 200, "{}", sent(3_000, 10_000));
    }

    /// A simulcast sender's three layers (SSRCs 100, 102, 104, heights 180, 360, 720):
    /// each receiver is sent one layer under the track's SSRC (100), numbered on across
    /// switches, moved only at key frames; its NACKs, keyframe requests and the sender's
    /// reports are mapped to the layer it gets.
    #[test]
    fn each_receiver_gets_one_simulcast_layer_under_the_tracks_ssrc() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        let mut n = Numbering::default();
        n.pt[Codec::Opus.index()] = Some(111);
        n.pt[Codec::Vp8.index()] = Some(96);
        n.rtx[Codec::Vp8.index()] = Some(97);
        let layers = Layers {
            ssrcs: [100, 102, 104],
            rtx: [Some(101), Some(103), Some(105)],
            count: 3,
        };
        let track = SentTrack {
            kind: "video",
            ssrc: 100,
            rtx: Some(101),
            layers,
        };
        let mut f = Forwarder::new(None);
        f.set_time(ms(0));
        let sender = PeerTables::new(&n, &[track], &[100, 101, 102, 103, 104, 105]);
        assert_eq!(sender.video_ssrcs, [100, 102, 104]);
        assert_eq!(sender.repairs, [(100, 101), (102, 103), (104, 105)]);
        f.add_peer(1, 7, addr(1), fast(1), fast(11), sender);
        f.add_peer(
            2,
            7,
            addr(2),
            fast(2),
            fast(12),
            rtx_tables(98, Some(99), 2),
        );
        f.add_peer(
            3,
            7,
            addr(3),
            fast(3),
            fast(13),
            rtx_tables(96, Some(97), 3),
        );
        f.set_receiving(2, vec![100]);
        f.set_receiving(3, vec![100]);
        // 3 asks for at most 200 lines: the 180 layer, once the heights are known.
        assert!(f.set_max_height(3, 100, 200));
        let heights = [180u16, 360, 720];
        let body = |l: usize, k: u16| format!("layer {l} frame {k}").into_bytes();
        /// (seq, ts, ssrc, pt, payload) of a packet a receiver got.
        type Got = (u16, u32, u32, u8, Vec<u8>);
        /// The sender's context, each receiver's, and what each got.
        struct Ends {
            tx: Context,
            rx: HashMap<u16, Context>,
            got: HashMap<u16, Vec<Got>>,
        }
        let mut e = Ends {
            tx: ctx(1),
            rx: [(2, ctx_replay(12)), (3, ctx_replay(13))]
                .into_iter()
                .collect(),
            got: HashMap::default(),
        };
        let send = |e: &mut Ends, f: &mut Forwarder, l: usize, k: u16, key: bool, at: u64| {
            f.set_time(ms(at));
            let seq = 1000 * (l as u16 + 1) + k;
            let ts = 90_000 * (l as u32 + 1) + 3000 * u32::from(k);
            let frame = vp8_frame(key, heights[l], &body(l, k));
            let pkt = with_ts(vp8_rtp(96, layers.ssrcs[l], seq, &frame), ts);
            let wire = e.tx.encrypt_rtp(&pkt).unwrap();
            let mut out = Outbox::default();
            f.on_rtp(1, &wire, &mut out).unwrap();
            for i in 0..out.len() {
                let (t, d) = out.get(i).unwrap();
                if t.rtcp {
                    continue;
                }
                let port = t.to.port();
                let clear = e.rx.get_mut(&port).unwrap().decrypt_rtp(d).unwrap();
                let h = RtpHeader::parse(&clear).unwrap();
                e.got.entry(port).or_default().push((
                    h.sequence,
                    h.timestamp,
                    h.ssrc,
                    h.payload_type,
                    clear[h.header_len..].to_vec(),
                ));
            }
        };
        // Frame 0: a key frame on every layer, lowest first, as Chromium sends them.
        for l in 0..3 {
            send(&mut e, &mut f, l, 0, true, 0);
        }
        for k in 1..4 {
            for l in 0..3 {
                send(&mut e, &mut f, l, k, false, 33 * u64::from(k));
            }
        }
        // 2 (no limit) climbed to the top at frame 0's key frames and stayed there.
        let g2 = e.got[&2].clone();
        let seqs: Vec<u16> = g2.iter().map(|g| g.0).collect();
        assert_eq!(
            seqs,
            [1000, 1001, 1002, 1003, 1004, 1005],
            "one run of numbers"
        );
        assert!(
            g2.iter().all(|g| g.2 == 100 && g.3 == 98),
            "the track's SSRC, 2's VP8"
        );
        assert_eq!(
            g2[2].4,
            vp8_frame(true, 720, &body(2, 0)),
            "the top layer, untouched"
        );
        assert_eq!(g2[5].4, vp8_frame(false, 720, &body(2, 3)));
        let ts2: Vec<u32> = g2.iter().map(|g| g.1).collect();
        assert_eq!(
            ts2[3..].windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>(),
            [3000, 3000]
        );
        // 3 (at most 200 lines) has the lowest layer only.
        let g3 = &e.got[&3];
        assert_eq!(g3.len(), 4);
        assert_eq!(
            g3.iter().map(|g| g.0).collect::<Vec<_>>(),
            [1000, 1001, 1002, 1003]
        );
        assert!(g3
            .iter()
            .zip(0..)
            .all(|(g, k)| g.4 == vp8_frame(k == 0, 180, &body(0, k))));
        assert_eq!(f.take_layer_switches(), 2, "2 moved up twice");

        // 2's NACK names its own numbers: 1004 was layer 2's frame 2.
        let mut nack = Vec::new();
        rtcp::write_nack(&mut nack, 2, 100, [1004].into_iter());
        let mut out = Outbox::default();
        let mut c2 = ctx(2);
        let wire = c2.encrypt_rtcp(&nack).unwrap();
        assert_eq!(f.on_rtcp(2, &wire, &mut out), Ok(0));
        assert_eq!(out.len(), 1);
        let (t, d) = out.get(0).unwrap();
        assert_eq!(t.to, addr(2));
        let r = e.rx.get_mut(&2).unwrap().decrypt_rtp(d).unwrap();
        let h = RtpHeader::parse(&r).unwrap();
        assert_eq!(
            (h.ssrc, h.payload_type, h.timestamp),
            (101, 99, g2[4].1),
            "on 2's RTX stream, its clock"
        );
        assert_eq!(
            &r[12..14],
            &1004u16.to_be_bytes(),
            "its own number as the original"
        );
        assert_eq!(&r[14..], &g2[4].4[..]);

        // Keyframe requests go to the layer each receiver is sent, from the relay.
        let mut c3 = ctx(3);
        for (who, c, layer) in [(2, &mut c2, 104), (3, &mut c3, 100)] {
            let mut out = Outbox::default();
            let pli = rtcp::pli(who as u32, 100);
            let wire = c.encrypt_rtcp(&pli).unwrap();
            assert_eq!(f.on_rtcp(who, &wire, &mut out), Ok(0));
            assert_eq!(out.len(), 1);
            let (t, d) = out.get(0).unwrap();
            assert_eq!(t.to, addr(1));
            let clear = ctx_replay(11).decrypt_rtcp(d).unwrap();
            let p = rtcp::packets(&clear).next().unwrap().unwrap();
            assert_eq!(
                (p.sender_ssrc, p.route()),
                (Some(RELAY_SSRC), RtcpRoute::MediaSender(layer))
            );
        }

        // The sender's report about layer 2 reaches 2 only, as about the track, on 2's
        // clock; the one about layer 1 reaches nobody.
        let mut sr2 = sr(104);
        sr2[16..20].copy_from_slice(&(90_000u32 * 3 + 9000).to_be_bytes());
        let mut c = sr2.clone();
        c.extend_from_slice(&sr(102));
        let wire = e.tx.encrypt_rtcp(&c).unwrap();
        let mut out = Outbox::default();
        assert_eq!(f.on_rtcp(1, &wire, &mut out), Ok(1));
        let (t, d) = out.get(0).unwrap();
        assert_eq!(t.to, addr(2));
        let clear = ctx_replay(12).decrypt_rtcp(d).unwrap();
        assert_eq!(clear.len(), sr2.len(), "one report");
        assert_eq!(&clear[4..8], &100u32.to_be_bytes());
        assert_eq!(
            &clear[16..20],
            &g2[5].1.to_be_bytes(),
            "frame 3's time on 2's clock"
        );

        // 3 lifts its limit: the sender is asked for key frames at its next packet, and
        // 3 moves to the top at the next one, its numbers running on.
        f.set_max_height(3, 100, u16::MAX);
        f.set_time(ms(600));
        let frame = vp8_frame(false, 180, &body(0, 4));
        let wire =
            e.tx.encrypt_rtp(&with_ts(vp8_rtp(96, 100, 1004, &frame), 90_000 + 12_000))
                .unwrap();
        let mut out = Outbox::default();
        f.on_rtp(1, &wire, &mut out).unwrap();
        let plis = (0..out.len())
            .filter_map(|i| out.get(i))
            .filter(|(t, _)| t.rtcp && t.to == addr(1))
            .count();
        assert_eq!(plis, 1, "one compound of PLIs to the sender");
        e.got.clear();
        send(&mut e, &mut f, 2, 5, true, 610);
        let g3 = &e.got[&3];
        assert_eq!(
            (g3[0].0, g3[0].2),
            (1005, 100),
            "1004 was layer 0's frame 4"
        );
        assert_eq!(g3[0].4, vp8_frame(true, 720, &body(2, 5)));
        assert_eq!(f.take_layer_switches(), 1);
        assert_eq!(drops(&mut f), []);
    }

    /// Across a node link every layer goes as it came (its own SSRC, numbers and
    /// payload), and the link's keyframe requests and NACKs name layers; on the far node
    /// the link end, told the track's layers, is a simulcast sender like any other: its
    /// receiver gets one layer under the track's SSRC.
    #[test]
    fn a_node_link_is_sent_every_layer_and_the_far_node_chooses() {
        let t0 = Instant::now();
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        let mut n = Numbering::default();
        n.pt[Codec::Vp8.index()] = Some(96);
        let layers = Layers {
            ssrcs: [100, 102, 104],
            rtx: [None; 3],
            count: 3,
        };
        let track = SentTrack {
            kind: "video",
            ssrc: 100,
            rtx: None,
            layers,
        };
        let packet = |pt: u8, l: usize, seq: u16| {
            let frame = vp8_frame(seq == 0, [180, 360, 720][l], b"frame");
            with_ts(
                vp8_rtp(pt, layers.ssrcs[l], seq, &frame),
                3000 * u32::from(seq),
            )
        };
        let link_vp8 = LINK_PT_BASE + Codec::Vp8 as u8;
        // Near node: the sender and a link end that receives the track.
        let mut f = Forwarder::new(None);
        f.set_time(t0);
        let sender = PeerTables::new(&n, &[track], &[100, 102, 104]);
        f.add_peer(1, 7, addr(1), fast(1), fast(11), sender);
        // A receiver on this node, served before the link: the numbering it is given
        // must not reach the link.
        f.add_peer(5, 7, addr(5), fast(5), fast(15), rtx_tables(96, None, 5));
        f.set_receiving(5, vec![100]);
        let link = PeerTables::link(vec![], vec![], vec![100, 102, 104]);
        f.add_peer(2, 7, addr(2), fast(2), fast(12), link);
        let mut tx = ctx(1);
        let mut rx = ctx_replay(12);
        let mut rx_local = ctx_replay(15);
        let (mut got, mut local) = (Vec::new(), Vec::new());
        for seq in 0..2u16 {
            for l in 0..3 {
                let mut out = Outbox::default();
                let pkt = packet(96, l, seq);
                f.on_rtp(1, &tx.encrypt_rtp(&pkt).unwrap(), &mut out)
                    .unwrap();
                let sent = |to| {
                    (0..out.len())
                        .filter_map(|i| out.get(i))
                        .find(|(t, _)| t.to == to && !t.rtcp)
                };
                if let Some((_, d)) = sent(addr(5)) {
                    let clear = rx_local.decrypt_rtp(d).unwrap();
                    local.push(RtpHeader::parse(&clear).unwrap().ssrc);
                }
                let (_, d) = sent(addr(2)).expect("the link is sent every layer");
                let clear = rx.decrypt_rtp(d).unwrap();
                assert_eq!(clear[1] & 0x7f, link_vp8);
                assert_eq!(clear[2..], pkt[2..], "as it came");
                got.push(RtpHeader::parse(&clear).unwrap().ssrc);
            }
        }
        assert_eq!(got, [100, 102, 104, 100, 102, 104]);
        assert!(
            local.len() >= 2 && local.iter().all(|s| *s == 100),
            "the local receiver is sent one layer as the track: {local:?}"
        );
        // The far node asks for layer 102's key frame: the sender is asked for 102.
        let mut c2 = ctx(2);
        let mut out = Outbox::default();
        let wire = c2.encrypt_rtcp(&rtcp::pli(RELAY_SSRC, 102)).unwrap();
        f.on_rtcp(2, &wire, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let (t, d) = out.get(0).expect("a PLI for the sender");
        assert_eq!(t.to, addr(1));
        let clear = ctx_replay(11).decrypt_rtcp(d).unwrap();
        let p = rtcp::packets(&clear).next().unwrap().unwrap();
        assert_eq!(p.route(), RtcpRoute::MediaSender(102));

        // Far node: the link end sends the layers, and knows them as one track.
        let mut g = Forwarder::new(None);
        g.set_time(t0);
        let mut end = PeerTables::link(vec![100, 102, 104], vec![100, 102, 104], vec![]);
        assert_eq!(
            end.set_link_layers(&[vec![100, 102, 107]]),
            Err(TablesError::Simulcast),
            "a layer the far participants do not send"
        );
        end.set_link_layers(&[vec![100, 102, 104]]).unwrap();
        g.add_peer(3, 8, addr(3), fast(3), fast(13), end);
        g.add_peer(4, 8, addr(4), fast(4), fast(14), rtx_tables(96, None, 4));
        g.set_receiving(4, vec![100]);
        assert!(g.set_max_height(4, 100, 360));
        let mut tx = ctx(3);
        let mut rx = ctx_replay(14);
        let mut heard = Vec::new();
        for seq in 0..2u16 {
            for l in 0..3 {
                let mut out = Outbox::default();
                g.on_rtp(
                    3,
                    &tx.encrypt_rtp(&packet(link_vp8, l, seq)).unwrap(),
                    &mut out,
                )
                .unwrap();
                for i in 0..out.len() {
                    let (t, d) = out.get(i).unwrap();
                    if t.to == addr(4) && !t.rtcp {
                        let clear = rx.decrypt_rtp(d).unwrap();
                        let h = RtpHeader::parse(&clear).unwrap();
                        heard.push((h.ssrc, clear[h.header_len..].to_vec()));
                    }
                }
            }
        }
        // Heights are learnt from frame 0's key frames: 360 lines from then on.
        assert!(heard.iter().all(|(s, _)| *s == 100), "{heard:?}");
        let last = &heard.last().expect("the receiver was sent the track").1;
        assert_eq!(*last, vp8_frame(false, 360, b"frame"));
    }
}
