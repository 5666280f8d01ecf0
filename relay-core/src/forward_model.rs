//! Random sequences of forwarder inputs, checked after every step against a reference
//! model kept beside the [`Forwarder`] (issue 19, the forwarder's half of the property
//! tests; `plane_model` is the plane's). Shared by the property tests (proptest feeds it
//! bytes) and the `forward` fuzz target (libFuzzer does): [`run`] turns bytes into
//! [`Action`]s with `arbitrary`, drives a forwarder on a virtual clock as a worker loop
//! would, and panics with the broken invariant. Built for tests and with the `arbitrary`
//! feature only.
//!
//! The forwarder is generic over its hop cipher, and so is this model: the caller passes
//! the cipher to use for a key (the tests and the fuzz target pass the relay's real
//! in-place AES-GCM contexts). Each participant's client side is another context of the
//! same key: it protects what the participant sends and unprotects what it is sent, so
//! every delivered datagram is decrypted and compared byte for byte.
//!
//! Actions name things from small sets (five participant slots, two calls, eight SSRCs
//! plus a few nobody announces) so that collisions, forgeries and rejoins are common.
//! The model predicts, for every packet, the exact result (`Ok(copies)` or the drop
//! reason), the drops counted inside the datagram, who receives what (bytes included),
//! the relay's own RTCP to the sender (keyframe requests, transport-cc feedback) and
//! which participants' liveness is reported. Besides that prediction, checked on their
//! own after each action:
//! - [`Forwarder::check_invariants`] (call lists, SSRC owners, per-participant bounds),
//!   and the forwarder's SSRC owners equal the model's: at most one owner each, and a
//!   participant that leaves frees its SSRCs;
//! - every datagram taken in is accounted for: forwarded, refused with a reason, or
//!   (RTCP) terminated at the relay, and each receiver's copy not sent is counted;
//! - RTP reaches only the other participants of its sender's call, only from an SSRC its
//!   sender owns, and each receiver's sequence numbers per stream only increase (the
//!   relay adds no duplicate);
//! - an RTCP sender report (SR, SDES, BYE, APP, XR) reaches anyone only if every SSRC it
//!   speaks for is its sender's; feedback only its stream's sender, never in another's
//!   name;
//! - keyframe requests reach a stream's sender at most once per
//!   [`KEYFRAME_REQUEST_INTERVAL`], NACK entries a receiver sends through stay within
//!   [`NACK_ENTRIES_PER_SECOND`] over every window (plus the burst), and transport-cc
//!   feedback is no longer than the arrivals it reports justify;
//! - every datagram goes to its receiver's current address: a participant's nominated ICE
//!   pair moves (`set_addr`) at any time, and nothing is sent to where it was before;
//! - after everyone leaves, the forwarder holds nothing.

use crate::forward::{
    Forwarder, Outbox, PeerTables, ACTIVITY_INTERVAL, CACHE_PACKETS, KEYFRAME_REQUEST_INTERVAL,
    NACK_ENTRIES_PER_SECOND, RELAY_SSRC,
};
use crate::hop::HopCipher;
use crate::report::DropReason;
use crate::PeerId;
use arbitrary::{Arbitrary, Result, Unstructured};
use blindrelay_protocol::rtcp::{self, RtcpRoute};
use blindrelay_protocol::sdp::{Codec, Layers, Numbering, SentTrack};
use blindrelay_protocol::twcc;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Participant slots: a slot holds one participant at a time.
const SLOTS: u8 = 5;
/// Calls (call keys 0 and 1).
const CALLS: u8 = 2;
/// The SSRCs participants announce: few, so two often announce the same.
const POOL: [u32; 8] = [100, 101, 200, 201, 300, 301, 400, 401];
/// SSRCs nobody announces: the relay's own, a receive-only stack's, a stranger's, and 0
/// (feedback about nothing).
const UNANNOUNCED: [u32; 4] = [RELAY_SSRC, 999, 0xdead_beef, 0];
/// The transport-cc extension id of participants that negotiated it.
const TWCC_ID: u8 = 3;
/// Mirrors of the forwarder's private limits (`forward.rs`), which this model checks.
const MAX_CLAIMED_SSRCS: usize = 16;
const NACK_ENTRIES_BURST: u64 = 500;
const NACK_UNIT: u64 = 1_000_000;
const KEYFRAME_SLOTS: usize = 4;
const PLI_INTERVAL: Duration = Duration::from_millis(500);
const FEEDBACK_INTERVAL: Duration = Duration::from_millis(50);
const TWCC_PENDING: usize = 256;
const MAX_UPLINK_GAP: u16 = 64;

/// The forwarder's packet cache of one video stream, in the model: the highest sequence
/// number stored, and the sequence number each slot holds.
#[derive(Debug, Default)]
struct ModelCache {
    highest: Option<u16>,
    held: BTreeMap<usize, u16>,
}

impl ModelCache {
    fn slot(seq: u16) -> usize {
        usize::from(seq) % CACHE_PACKETS
    }

    fn holds(&self, seq: u16) -> bool {
        self.held.get(&Self::slot(seq)) == Some(&seq)
    }

    /// Store `seq`: the packets before it that never came, when the relay asks for them.
    fn put(&mut self, seq: u16) -> Vec<u16> {
        let mut gap = Vec::new();
        match self.highest {
            None => self.highest = Some(seq),
            Some(h) => {
                let ahead = seq.wrapping_sub(h);
                if ahead == 0 || ahead >= 0x8000 {
                    if usize::from(h.wrapping_sub(seq)) >= CACHE_PACKETS || self.holds(seq) {
                        return gap;
                    }
                } else {
                    if usize::from(ahead) >= CACHE_PACKETS {
                        self.held.clear();
                    }
                    for k in 1..ahead.min(CACHE_PACKETS as u16) {
                        self.held.remove(&Self::slot(h.wrapping_add(k)));
                    }
                    if (2..=MAX_UPLINK_GAP).contains(&ahead) {
                        gap = (1..ahead).map(|k| h.wrapping_add(k)).collect();
                    }
                    self.highest = Some(seq);
                }
            }
        }
        self.held.insert(Self::slot(seq), seq);
        gap
    }
}

/// An SSRC an action names: one of [`POOL`], else one of [`UNANNOUNCED`].
fn ssrc_of(i: u8) -> u32 {
    let i = usize::from(i) % (POOL.len() + UNANNOUNCED.len());
    match POOL.get(i) {
        Some(s) => *s,
        None => UNANNOUNCED[i - POOL.len()],
    }
}

/// The SSRCs of [`POOL`] whose bit is set in `mask`.
fn pool_subset(mask: u8) -> Vec<u32> {
    POOL.iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, s)| *s)
        .collect()
}

/// The payload type an RTP packet carries.
#[derive(Debug, Clone, Copy)]
pub enum Pt {
    /// The sender's Opus payload type.
    Opus,
    /// The sender's VP8 payload type.
    Vp8,
    /// Any (usually one the sender did not negotiate).
    Raw(u8),
}

/// What an RTP action sends.
#[derive(Debug, Clone, Copy)]
pub enum RtpKind {
    /// A media packet: payload, no padding.
    Media,
    /// Padding and nothing else (a bandwidth probe).
    PaddingOnly,
    /// Payload then padding.
    PaddedMedia,
    /// Fewer bytes than an RTP header.
    Truncated,
    /// A protected packet with its tag flipped: it does not authenticate.
    BadTag,
    /// Random bytes behind a clear header naming the SSRC.
    Noise,
}

/// One packet of an RTCP compound, with SSRCs named as in [`ssrc_of`].
#[derive(Debug, Clone)]
pub enum RtcpKind {
    Sr {
        ssrc: u8,
    },
    /// A receiver report with a block about each of `blocks` (at most 3).
    Rr {
        sender: u8,
        blocks: Vec<u8>,
    },
    /// A CNAME chunk for each of `ssrcs` (at most 3).
    Sdes {
        ssrcs: Vec<u8>,
    },
    Bye {
        ssrcs: Vec<u8>,
    },
    App {
        ssrc: u8,
    },
    Xr {
        ssrc: u8,
    },
    Pli {
        sender: u8,
        media: u8,
    },
    Fir {
        sender: u8,
        media: u8,
    },
    /// A generic NACK of `entries` lost-packet entries (at most 160).
    Nack {
        sender: u8,
        media: u8,
        entries: u8,
    },
    /// Transport-cc feedback (terminated at the relay).
    Twcc {
        sender: u8,
        media: u8,
    },
    /// REMB (terminated at the relay).
    Remb {
        sender: u8,
    },
}

/// What is done to an RTCP compound after building it.
#[derive(Debug, Clone, Copy)]
pub enum Corrupt {
    None,
    /// The tag flipped: it does not authenticate.
    BadTag,
    /// The last packet's length field says one word more than there is.
    Overrun,
    /// Sent twice: the second is a replay.
    Replay,
}

/// One step of the forwarder's life.
#[derive(Debug, Clone)]
pub enum Action {
    /// A participant's media path is keyed: it joins `call` announcing the SSRCs of
    /// `ssrcs` (a mask over [`POOL`]; none if `claims`, so it owns what it sends first),
    /// those of `video` among them as video. Ignored if the slot is taken.
    Add {
        slot: u8,
        call: u8,
        claims: bool,
        ssrcs: u8,
        video: u8,
        twcc: bool,
        /// Its payload types are not the others' (the relay rewrites them).
        alt_numbering: bool,
        /// Built by hand, without signalling: it is sent every stream.
        receives_all: bool,
    },
    /// It leaves.
    Remove { slot: u8 },
    /// Its hop state moves to the other call (a merge): taken and added again.
    Move { slot: u8 },
    /// It answered an offer: it now has tracks for the SSRCs of the mask.
    Receive { slot: u8, ssrcs: u8 },
    /// It sends RTP on SSRC `ssrc`, `gap` sequence numbers on from the stream's last
    /// (lost packets), `size` bytes of payload; `replay`: the same datagram twice.
    Rtp {
        slot: u8,
        ssrc: u8,
        pt: Pt,
        kind: RtpKind,
        gap: u8,
        size: u8,
        twcc: bool,
        replay: bool,
    },
    /// It sends an RTCP compound of (at most 4 of) `packets`, `repeat` times (1 to 8).
    Rtcp {
        slot: u8,
        packets: Vec<RtcpKind>,
        corrupt: Corrupt,
        repeat: u8,
    },
    /// Bytes that are no packet, as RTP or RTCP.
    Garbage {
        slot: u8,
        rtcp: bool,
        bytes: Vec<u8>,
    },
    /// Time passes: `ms` milliseconds (at most about 2 s).
    Advance { ms: u16 },
    /// Its client nominated another ICE pair: the relay sends to a new address
    /// (`set_addr`).
    Rebind { slot: u8 },
}

// By hand, as `plane_model`'s: the workspace's `arbitrary` has no derive, and each
// choice is one byte, so fuzz seeds are easy to write.
fn list<'a>(u: &mut Unstructured<'a>, max: u8) -> Result<Vec<u8>> {
    let n = u.int_in_range(0..=max)?;
    (0..n).map(|_| u8::arbitrary(u)).collect()
}

impl<'a> Arbitrary<'a> for Pt {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=4u8)? {
            0 | 1 => Pt::Opus,
            2 | 3 => Pt::Vp8,
            _ => Pt::Raw(u8::arbitrary(u)?),
        })
    }
}

impl<'a> Arbitrary<'a> for RtpKind {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=9u8)? {
            0..=4 => RtpKind::Media,
            5 => RtpKind::PaddingOnly,
            6 => RtpKind::PaddedMedia,
            7 => RtpKind::Truncated,
            8 => RtpKind::BadTag,
            _ => RtpKind::Noise,
        })
    }
}

impl<'a> Arbitrary<'a> for Corrupt {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=7u8)? {
            0..=4 => Corrupt::None,
            5 => Corrupt::BadTag,
            6 => Corrupt::Overrun,
            _ => Corrupt::Replay,
        })
    }
}

impl<'a> Arbitrary<'a> for RtcpKind {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut b = || u8::arbitrary(u);
        Ok(match b()? % 11 {
            0 => RtcpKind::Sr { ssrc: b()? },
            1 => RtcpKind::Rr {
                sender: b()?,
                blocks: list(u, 3)?,
            },
            2 => RtcpKind::Sdes { ssrcs: list(u, 3)? },
            3 => RtcpKind::Bye { ssrcs: list(u, 3)? },
            4 => RtcpKind::App { ssrc: b()? },
            5 => RtcpKind::Xr { ssrc: b()? },
            6 => RtcpKind::Pli {
                sender: b()?,
                media: b()?,
            },
            7 => RtcpKind::Fir {
                sender: b()?,
                media: b()?,
            },
            8 => RtcpKind::Nack {
                sender: b()?,
                media: b()?,
                entries: b()?,
            },
            9 => RtcpKind::Twcc {
                sender: b()?,
                media: b()?,
            },
            _ => RtcpKind::Remb { sender: b()? },
        })
    }
}

impl<'a> Arbitrary<'a> for Action {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let tag = u8::arbitrary(u)? % 20;
        let mut b = || u8::arbitrary(u);
        Ok(match tag {
            0..=3 => {
                let (slot, call, flags, ssrcs, video) = (b()?, b()?, b()?, b()?, b()?);
                Action::Add {
                    slot,
                    call,
                    claims: flags & 1 != 0,
                    ssrcs,
                    video,
                    twcc: flags & 2 != 0,
                    alt_numbering: flags & 4 != 0,
                    receives_all: flags & 8 != 0,
                }
            }
            4 => Action::Remove { slot: b()? },
            5 => Action::Move { slot: b()? },
            6 | 7 => Action::Receive {
                slot: b()?,
                ssrcs: b()?,
            },
            8..=12 => {
                let (slot, ssrc, gap, size, flags) = (b()?, b()?, b()?, b()?, b()?);
                Action::Rtp {
                    slot,
                    ssrc,
                    gap,
                    size,
                    twcc: flags & 1 != 0,
                    replay: flags & 2 != 0,
                    pt: Pt::arbitrary(u)?,
                    kind: RtpKind::arbitrary(u)?,
                }
            }
            13..=16 => {
                let slot = b()?;
                let n = u.int_in_range(1..=4u8)?;
                let packets = (0..n)
                    .map(|_| RtcpKind::arbitrary(u))
                    .collect::<Result<Vec<_>>>()?;
                Action::Rtcp {
                    slot,
                    packets,
                    corrupt: Corrupt::arbitrary(u)?,
                    repeat: u.int_in_range(1..=8)?,
                }
            }
            17 => {
                let (slot, rtcp) = (b()?, b()? & 1 != 0);
                let n = u.int_in_range(0..=40u8)?;
                let bytes = (0..n).map(|_| u8::arbitrary(u)).collect::<Result<_>>()?;
                Action::Garbage { slot, rtcp, bytes }
            }
            18 => Action::Advance {
                ms: u16::arbitrary(u)?,
            },
            _ => Action::Rebind { slot: b()? },
        })
    }
}

/// What the model knows of one participant.
struct Slot<H> {
    peer: PeerId,
    /// Where the forwarder sends to it: [`addr`] of its slot until it rebinds.
    addr: SocketAddr,
    call: u8,
    announced: Vec<u32>,
    video: Vec<u32>,
    twcc: bool,
    alt: bool,
    receiving: Option<Vec<u32>>,
    /// The forwarder's per-participant state, reset when it is added or moved.
    media_started: BTreeSet<u32>,
    claimed: usize,
    pli_due: bool,
    last_pli: Option<Instant>,
    /// Keyframe requests admitted toward this participant: (stream, when).
    keyframes: Vec<(u32, Instant)>,
    nack_tokens: u64,
    nack_at: Option<Instant>,
    /// NACK entries forwarded from this participant as receiver: (when, entries), as
    /// seen on what receivers got.
    nacks: Vec<(Instant, u64)>,
    /// Keyframe requests delivered to this participant: (stream, when), as seen on what
    /// it got.
    kf_delivered: Vec<(u32, Instant)>,
    /// Its next transport-wide sequence number.
    twcc_next: u16,
    twcc_pending: usize,
    twcc_media: u32,
    /// As a receiver that takes transport-cc: the transport-wide sequence number the
    /// relay numbers its next packet with (its own, starting at 1).
    down_next: u16,
    last_fb: Option<Instant>,
    activity_at: Option<Instant>,
    /// Its client side: what protects its packets and unprotects what it is sent.
    tx: H,
    rx: H,
    /// The last sequence number it was sent on each stream.
    delivered: BTreeMap<u32, u16>,
    /// Its video streams' packet caches, as the forwarder keeps them.
    caches: BTreeMap<u32, ModelCache>,
}

/// The forwarder, the model beside it, and the clock.
pub struct Harness<H, F> {
    fwd: Forwarder<H>,
    hop: F,
    slots: Vec<Option<Slot<H>>>,
    /// SSRC owners: (call, SSRC) to slot.
    owners: BTreeMap<(u8, u32), u8>,
    /// The next sequence number of each SSRC, whoever sends it: a stream that changes
    /// hands keeps counting, as its receivers' hops have seen the earlier numbers.
    next_seq: BTreeMap<u32, u16>,
    next_peer: PeerId,
    now: Instant,
    /// Participants whose packet authenticated during this action.
    authenticated: BTreeSet<u8>,
    /// Datagrams taken in, copies sent to receivers, and drops by reason (datagrams
    /// refused, and receivers' copies and RTCP packets refused inside one): see
    /// [`Harness::totals`].
    inputs: u64,
    copies: u64,
    /// `FWD_MODEL_TRACE` set: print each action (to read a failing case).
    trace: bool,
    /// Rebinds so far: each gets an address no one had before.
    rebinds: u16,
    refused: BTreeMap<&'static str, u64>,
}

fn addr(slot: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(slot)))
}

fn numbering(alt: bool, twcc: bool) -> Numbering {
    let mut n = Numbering::default();
    let (opus, vp8) = if alt { (109, 98) } else { (111, 96) };
    n.pt[Codec::Opus.index()] = Some(opus);
    n.pt[Codec::Vp8.index()] = Some(vp8);
    n.twcc = twcc.then_some(TWCC_ID);
    n
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The clear bytes of one RTCP packet of a compound.
fn build_rtcp(k: &RtcpKind, ssrc_of: &dyn Fn(u8) -> u32) -> Vec<u8> {
    let with_len = |mut p: Vec<u8>| {
        let words = (p.len() / 4 - 1) as u16;
        p[2..4].copy_from_slice(&words.to_be_bytes());
        p
    };
    let list = |v: &[u8]| v.iter().take(3).map(|i| ssrc_of(*i)).collect::<Vec<_>>();
    match k {
        RtcpKind::Sr { ssrc } => {
            let mut p = vec![0x80, rtcp::PT_SR, 0, 0];
            p.extend_from_slice(&ssrc_of(*ssrc).to_be_bytes());
            p.extend_from_slice(&[7; 20]);
            with_len(p)
        }
        RtcpKind::Rr { sender, blocks } => {
            let blocks = list(blocks);
            let mut p = vec![0x80 | blocks.len() as u8, rtcp::PT_RR, 0, 0];
            p.extend_from_slice(&ssrc_of(*sender).to_be_bytes());
            for (i, b) in blocks.iter().enumerate() {
                p.extend_from_slice(&b.to_be_bytes());
                p.extend_from_slice(&[i as u8; 20]);
            }
            with_len(p)
        }
        RtcpKind::Sdes { ssrcs } => {
            let ssrcs = list(ssrcs);
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
            with_len(p)
        }
        RtcpKind::Bye { ssrcs } => {
            let ssrcs = list(ssrcs);
            let mut p = vec![0x80 | ssrcs.len() as u8, rtcp::PT_BYE, 0, 0];
            for s in ssrcs {
                p.extend_from_slice(&s.to_be_bytes());
            }
            with_len(p)
        }
        RtcpKind::App { ssrc } => {
            let mut p = vec![0x81, rtcp::PT_APP, 0, 0];
            p.extend_from_slice(&ssrc_of(*ssrc).to_be_bytes());
            p.extend_from_slice(b"test");
            with_len(p)
        }
        RtcpKind::Xr { ssrc } => {
            let mut p = vec![0x80, rtcp::PT_XR, 0, 0];
            p.extend_from_slice(&ssrc_of(*ssrc).to_be_bytes());
            with_len(p)
        }
        RtcpKind::Pli { sender, media } => rtcp::pli(ssrc_of(*sender), ssrc_of(*media)).to_vec(),
        RtcpKind::Fir { sender, media } => {
            let mut p = vec![0x84, rtcp::PT_PSFB, 0, 0];
            p.extend_from_slice(&ssrc_of(*sender).to_be_bytes());
            p.extend_from_slice(&[0; 4]);
            p.extend_from_slice(&ssrc_of(*media).to_be_bytes());
            p.extend_from_slice(&[1, 0, 0, 0]);
            with_len(p)
        }
        RtcpKind::Nack {
            sender,
            media,
            entries,
        } => {
            let mut p = vec![0x81, rtcp::PT_RTPFB, 0, 0];
            p.extend_from_slice(&ssrc_of(*sender).to_be_bytes());
            p.extend_from_slice(&ssrc_of(*media).to_be_bytes());
            for i in 0..u16::from(*entries % 161) {
                p.extend_from_slice(&(i * 17).to_be_bytes());
                p.extend_from_slice(&[0xff, 0xff]);
            }
            with_len(p)
        }
        RtcpKind::Twcc { sender, media } => {
            let mut p = vec![0x80 | rtcp::FMT_TRANSPORT_CC, rtcp::PT_RTPFB, 0, 0];
            p.extend_from_slice(&ssrc_of(*sender).to_be_bytes());
            p.extend_from_slice(&ssrc_of(*media).to_be_bytes());
            p.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0, 0x20, 1, 0, 0]);
            with_len(p)
        }
        RtcpKind::Remb { sender } => {
            let mut p = vec![0x80 | rtcp::FMT_AFB, rtcp::PT_PSFB, 0, 0];
            p.extend_from_slice(&ssrc_of(*sender).to_be_bytes());
            p.extend_from_slice(&[0; 4]);
            p.extend_from_slice(b"REMB");
            p.extend_from_slice(&[1, 0, 0x10, 0]);
            p.extend_from_slice(&100u32.to_be_bytes());
            with_len(p)
        }
    }
}

/// The model's verdict on one datagram: the forwarder's return value, the drops it counts
/// inside the datagram, and each receiver's clear bytes.
#[derive(Debug, Default)]
struct Expect {
    result: Option<DropReason>,
    drops: BTreeMap<&'static str, u64>,
    /// Receiver slot and the clear datagram it gets.
    to: BTreeMap<u8, Vec<u8>>,
    /// The relay's own RTCP to the sender, if any: transport-cc feedback with at most
    /// this many arrivals, and a PLI for these SSRCs.
    feedback: Option<usize>,
    pli: Option<Vec<u32>>,
    /// The relay's NACK to the sender for a gap in its stream.
    nack: Option<Vec<u8>>,
    /// The relay's NACKs to senders for packets a receiver's NACK asked for and the cache
    /// lacks, queued before anything else (receiver slot, clear NACK).
    asked: Vec<(u8, Vec<u8>)>,
}

impl Expect {
    fn refused(r: DropReason) -> Self {
        Expect {
            result: Some(r),
            ..Default::default()
        }
    }
}

impl<H: HopCipher, F: Fn(u8) -> H> Harness<H, F> {
    /// A forwarder with no participants at a fixed start time; `hop(key)` makes a hop
    /// context for `key` (one side of a hop: both sides get one of the same key).
    pub fn new(hop: F) -> Self {
        let mut fwd = Forwarder::new(None);
        let now = Instant::now();
        fwd.set_time(now);
        Harness {
            fwd,
            hop,
            slots: (0..SLOTS).map(|_| None).collect(),
            owners: BTreeMap::new(),
            next_seq: BTreeMap::new(),
            next_peer: 1,
            now,
            authenticated: BTreeSet::new(),
            inputs: 0,
            copies: 0,
            trace: std::env::var_os("FWD_MODEL_TRACE").is_some(),
            rebinds: 0,
            refused: BTreeMap::new(),
        }
    }

    fn slot_of(&self, peer: PeerId) -> Option<u8> {
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.peer == peer))
            .map(|i| i as u8)
    }

    /// Members of `call` other than `except`, by slot.
    fn others(&self, call: u8, except: u8) -> Vec<u8> {
        (0..SLOTS)
            .filter(|i| *i != except)
            .filter(|i| {
                self.slots[*i as usize]
                    .as_ref()
                    .is_some_and(|s| s.call == call)
            })
            .collect()
    }

    /// The forwarder's `add_peer` in the model: SSRCs keep their first owner, everyone
    /// else in the call is due to be asked for a keyframe.
    fn attach(&mut self, i: u8, s: Slot<H>, inbound: H, outbound: H, tables: PeerTables) {
        for x in &s.announced {
            self.owners.entry((s.call, *x)).or_insert(i);
        }
        self.fwd
            .add_peer(s.peer, u64::from(s.call), s.addr, inbound, outbound, tables);
        for o in self.others(s.call, i) {
            if let Some(o) = self.slots[o as usize].as_mut() {
                o.pli_due = true;
            }
        }
        self.slots[i as usize] = Some(s);
    }

    fn release(&mut self, i: u8) {
        self.owners.retain(|_, o| *o != i);
    }

    /// Apply one action and check everything after it.
    pub fn step(&mut self, a: &Action) {
        if self.trace {
            eprintln!("{a:?}");
        }
        self.authenticated.clear();
        match a {
            Action::Add {
                slot,
                call,
                claims,
                ssrcs,
                video,
                twcc,
                alt_numbering,
                receives_all,
            } => {
                // Mostly a free slot, so calls fill up; sometimes a taken one (ignored).
                let free: Vec<u8> = (0..SLOTS)
                    .filter(|i| self.slots[*i as usize].is_none())
                    .collect();
                let i = match free.len() {
                    n if n > 0 && *slot < 224 => free[usize::from(*slot) % n],
                    _ => slot % SLOTS,
                };
                if self.slots[i as usize].is_some() {
                    return self.check();
                }
                let announced = if *claims {
                    Vec::new()
                } else {
                    pool_subset(*ssrcs)
                };
                let video: Vec<u32> = announced
                    .iter()
                    .copied()
                    .filter(|x| pool_subset(*video).contains(x))
                    .collect();
                let tracks: Vec<SentTrack> = announced
                    .iter()
                    .map(|x| SentTrack {
                        kind: if video.contains(x) { "video" } else { "audio" },
                        ssrc: *x,
                        rtx: None,
                        layers: Layers::NONE,
                    })
                    .collect();
                let mut tables =
                    PeerTables::new(&numbering(*alt_numbering, *twcc), &tracks, &announced);
                if *receives_all {
                    tables.receiving = None;
                }
                let peer = self.next_peer;
                self.next_peer += 1;
                // Keys differ per participant (a hop's two directions too).
                let key = (peer as u8).wrapping_mul(2);
                let s = Slot {
                    peer,
                    addr: addr(i),
                    call: call % CALLS,
                    announced,
                    video,
                    twcc: *twcc,
                    alt: *alt_numbering,
                    receiving: tables.receiving.clone(),
                    media_started: BTreeSet::new(),
                    claimed: 0,
                    pli_due: false,
                    last_pli: None,
                    keyframes: Vec::new(),
                    nack_tokens: NACK_ENTRIES_BURST * NACK_UNIT,
                    nack_at: None,
                    nacks: Vec::new(),
                    twcc_next: 0,
                    twcc_pending: 0,
                    twcc_media: 0,
                    down_next: 1,
                    last_fb: None,
                    activity_at: None,
                    kf_delivered: Vec::new(),
                    tx: (self.hop)(key),
                    rx: (self.hop)(key.wrapping_add(1)),
                    delivered: BTreeMap::new(),
                    caches: BTreeMap::new(),
                };
                let (inbound, outbound) = ((self.hop)(key), (self.hop)(key.wrapping_add(1)));
                self.attach(i, s, inbound, outbound, tables);
            }
            Action::Remove { slot } => {
                let i = self.pick(*slot);
                if let Some(s) = self.slots[i as usize].take() {
                    self.fwd.remove_peer(s.peer);
                    self.release(i);
                }
                assert!(
                    self.fwd.owners().all(|(_, _, p)| self.slot_of(p).is_some()),
                    "a removed participant still owns an SSRC"
                );
            }
            Action::Move { slot } => {
                let i = self.pick(*slot);
                if let Some(s) = self.slots[i as usize].take() {
                    let t = self
                        .fwd
                        .take_peer(s.peer)
                        .expect("the model's participants are the forwarder's");
                    assert_eq!(t.addr, s.addr, "the transfer keeps the address");
                    assert_eq!(t.tables.ssrcs, s.announced, "the transfer keeps the SSRCs");
                    self.release(i);
                    // What the forwarder keeps per participant starts afresh; the
                    // tables and hop contexts travel.
                    let moved = Slot {
                        call: (s.call + 1) % CALLS,
                        media_started: BTreeSet::new(),
                        claimed: 0,
                        pli_due: false,
                        last_pli: None,
                        keyframes: Vec::new(),
                        nack_tokens: NACK_ENTRIES_BURST * NACK_UNIT,
                        nack_at: None,
                        nacks: Vec::new(),
                        twcc_pending: 0,
                        twcc_media: 0,
                        down_next: 1,
                        last_fb: None,
                        activity_at: None,
                        kf_delivered: Vec::new(),
                        caches: BTreeMap::new(),
                        ..s
                    };
                    self.attach(i, moved, t.inbound, t.outbound, t.tables);
                }
            }
            Action::Receive { slot, ssrcs } => {
                let i = self.pick(*slot);
                if let Some(s) = self.slots[i as usize].as_mut() {
                    let r = pool_subset(*ssrcs);
                    s.media_started.retain(|x| r.contains(x));
                    s.receiving = Some(r.clone());
                    self.fwd.set_receiving(s.peer, r);
                }
            }
            Action::Rtp {
                slot,
                ssrc,
                pt,
                kind,
                gap,
                size,
                twcc,
                replay,
            } => {
                let i = self.pick(*slot);
                let ssrc = self.resolve(i, *ssrc);
                self.rtp(i, ssrc, *pt, *kind, *gap, *size, *twcc, *replay)
            }
            Action::Rtcp {
                slot,
                packets,
                corrupt,
                repeat,
            } => self.rtcp(self.pick(*slot), packets, *corrupt, *repeat),
            Action::Garbage { slot, rtcp, bytes } => {
                let i = self.pick(*slot);
                let mut out = Outbox::default();
                let peer = self.slots[i as usize].as_ref().map_or(0, |s| s.peer);
                let r = if *rtcp {
                    self.fwd.on_rtcp(peer, bytes, &mut out)
                } else {
                    self.fwd.on_rtp(peer, bytes, &mut out)
                };
                // Noise never authenticates: refused, whatever the reason.
                let reason = r.expect_err("garbage was forwarded");
                assert!(out.is_empty(), "garbage queued a datagram");
                self.account(Err(reason));
                self.take_drops(&BTreeMap::new());
            }
            Action::Advance { ms } => {
                self.now += Duration::from_millis(u64::from(*ms % 2048));
                self.fwd.set_time(self.now);
            }
            Action::Rebind { slot } => {
                let i = self.pick(*slot);
                match self.slots[i as usize].as_mut() {
                    Some(s) => {
                        // Above the slots' first addresses, and never reused.
                        self.rebinds += 1;
                        s.addr = SocketAddr::from(([127, 0, 0, 1], 2000 + self.rebinds));
                        assert!(self.fwd.set_addr(s.peer, s.addr), "a present participant");
                    }
                    None => assert!(
                        !self.fwd.set_addr(self.next_peer, addr(i)),
                        "set_addr of someone who is not there"
                    ),
                }
            }
        }
        self.check();
    }

    fn account(&mut self, r: Result<usize, DropReason>) {
        self.inputs += 1;
        match r {
            Ok(n) => self.copies += n as u64,
            Err(e) => *self.refused.entry(e.as_str()).or_default() += 1,
        }
    }

    /// The drops counted inside datagrams since the last call equal `expected`.
    fn take_drops(&mut self, expected: &BTreeMap<&'static str, u64>) {
        let mut got = BTreeMap::new();
        self.fwd
            .take_receiver_drops(|r, n| *got.entry(r.as_str()).or_default() += n);
        assert_eq!(&got, expected, "drops counted inside the datagram");
        for (r, n) in got {
            *self.refused.entry(r).or_default() += n;
        }
    }

    /// The slot an action byte names: mostly a present participant (so most packets
    /// come from someone), sometimes any slot.
    fn pick(&self, b: u8) -> u8 {
        let present: Vec<u8> = (0..SLOTS)
            .filter(|i| self.slots[*i as usize].is_some())
            .collect();
        match present.len() {
            n if n > 0 && b < 224 => present[usize::from(b) % n],
            _ => b % SLOTS,
        }
    }

    /// The SSRC an action byte names for slot `i`: one `i` owns, one another participant
    /// of its call owns, or one of [`ssrc_of`] (announced by anyone, or by nobody).
    fn resolve(&self, i: u8, b: u8) -> u32 {
        let call = self.slots[i as usize].as_ref().map(|s| s.call);
        let owned = |mine: bool| -> Vec<u32> {
            self.owners
                .iter()
                .filter(|((c, _), o)| Some(*c) == call && (**o == i) == mine)
                .map(|((_, x), _)| *x)
                .collect()
        };
        let pick = |v: Vec<u32>| v.get(usize::from(b / 4) % v.len().max(1)).copied();
        match b % 4 {
            0 | 1 => pick(owned(true)),
            // Another's stream, one `i` is sent if there is one (feedback about it goes).
            2 => {
                let receiving = self.slots[i as usize]
                    .as_ref()
                    .and_then(|s| s.receiving.as_ref());
                let others = owned(false);
                let sent: Vec<u32> = others
                    .iter()
                    .copied()
                    .filter(|x| receiving.is_none_or(|r| r.contains(x)))
                    .collect();
                pick(if sent.is_empty() || b >= 128 {
                    others
                } else {
                    sent
                })
            }
            _ => None,
        }
        .unwrap_or_else(|| ssrc_of(b / 4))
    }

    /// Whether `from` may send `ssrc` before unprotecting (the forwarder's first check).
    fn may_send(&self, i: u8, ssrc: u32) -> bool {
        let s = self.slots[i as usize].as_ref().expect("a present slot");
        match self.owners.get(&(s.call, ssrc)) {
            Some(o) => *o == i,
            None => s.announced.is_empty() && s.claimed < MAX_CLAIMED_SSRCS,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rtp(
        &mut self,
        i: u8,
        ssrc: u32,
        pt: Pt,
        kind: RtpKind,
        gap: u8,
        size: u8,
        with_twcc: bool,
        replay: bool,
    ) {
        let Some(s) = self.slots[i as usize].as_mut() else {
            let mut out = Outbox::default();
            let r = self.fwd.on_rtp(0, &[0x80; 40], &mut out);
            assert_eq!(r, Err(DropReason::NotConnected));
            self.account(r);
            return self.take_drops(&BTreeMap::new());
        };
        let seq = {
            let n = self.next_seq.entry(ssrc).or_insert(1);
            *n = n.wrapping_add(u16::from(gap % 4));
            let seq = *n;
            *n = n.wrapping_add(1);
            seq
        };
        let (opus, vp8) = if s.alt { (109, 98) } else { (111, 96) };
        let pt = match pt {
            Pt::Opus => opus,
            Pt::Vp8 => vp8,
            Pt::Raw(p) => p & 0x7f,
        };
        let size = usize::from(size % 64);
        let mut clear = vec![0x80, pt | if size % 2 == 0 { 0x80 } else { 0 }];
        clear.extend_from_slice(&seq.to_be_bytes());
        clear.extend_from_slice(&u32::from(seq).wrapping_mul(960).to_be_bytes());
        clear.extend_from_slice(&ssrc.to_be_bytes());
        let twcc_seq = s.twcc && with_twcc;
        if twcc_seq {
            clear[0] |= 0x10;
            clear.extend_from_slice(&[0xbe, 0xde, 0, 1, (TWCC_ID << 4) | 1]);
            clear.extend_from_slice(&s.twcc_next.to_be_bytes());
            s.twcc_next = s.twcc_next.wrapping_add(1);
            clear.push(0);
        }
        let media = |n: usize| (0..n).map(|k| (k as u8) ^ (seq as u8)).collect::<Vec<u8>>();
        match kind {
            RtpKind::PaddingOnly => {
                let n = size.max(1);
                clear[0] |= 0x20;
                clear.extend(std::iter::repeat_n(0, n - 1));
                clear.push(n as u8);
            }
            RtpKind::PaddedMedia => {
                clear[0] |= 0x20;
                clear.extend(media(size.max(1)));
                clear.extend_from_slice(&[0, 0, 3]);
            }
            _ => clear.extend(media(size)),
        }
        let mut wire = Vec::new();
        s.tx.protect_rtp_into(&clear, &mut wire)
            .expect("the client protects its own packet");
        match kind {
            RtpKind::Truncated => wire.truncate(usize::from(gap) % 12),
            RtpKind::BadTag => {
                if let Some(b) = wire.last_mut() {
                    *b ^= 1;
                }
            }
            RtpKind::Noise => {
                // The clear header (and extension) stays: the rest is noise.
                let header = 12 + if twcc_seq { 8 } else { 0 };
                for (k, b) in wire.iter_mut().enumerate().skip(header) {
                    *b = (k as u8).wrapping_mul(31) ^ size as u8;
                }
            }
            _ => {}
        }
        for k in 0..if replay { 2 } else { 1 } {
            let e = self.expect_rtp(i, &wire, &clear, kind, k == 1);
            self.deliver(i, &wire, false, e);
        }
    }

    /// The model's verdict on RTP `wire` from slot `i` (whose clear packet is `clear`),
    /// applied to the model's state.
    fn expect_rtp(
        &mut self,
        i: u8,
        wire: &[u8],
        clear: &[u8],
        kind: RtpKind,
        replayed: bool,
    ) -> Expect {
        if wire.len() < 12 {
            return Expect::refused(DropReason::SrtpMalformed);
        }
        let ssrc = u32_at(wire, 8);
        if !self.may_send(i, ssrc) {
            return Expect::refused(DropReason::SsrcNotOwned);
        }
        let now = self.now;
        let s = self.slots[i as usize].as_mut().expect("a present slot");
        match kind {
            RtpKind::BadTag | RtpKind::Noise => return Expect::refused(DropReason::SrtpAuthFailed),
            RtpKind::Truncated => unreachable!("shorter than a header"),
            _ => {}
        }
        if replayed {
            // The relay's hop has unprotected this index already.
            return Expect::refused(DropReason::SrtpReplay);
        }
        self.authenticated.insert(i);
        let call = s.call;
        // Unowned, and it may send it (checked above): sending it first claims it.
        if let std::collections::btree_map::Entry::Vacant(e) = self.owners.entry((call, ssrc)) {
            e.insert(i);
            s.claimed += 1;
        }
        let (opus, vp8) = if s.alt { (109, 98) } else { (111, 96) };
        let pt = clear[1] & 0x7f;
        let codec = if pt == opus {
            0
        } else if pt == vp8 {
            1
        } else {
            return Expect::refused(DropReason::UnknownPayloadType);
        };
        let mut e = Expect::default();
        // The relay's own RTCP to the sender.
        let twcc_ext = clear[0] & 0x10 != 0;
        if s.twcc {
            if twcc_ext {
                s.twcc_pending += 1;
                if s.twcc_media == 0 {
                    s.twcc_media = ssrc;
                }
            }
            let due = s
                .last_fb
                .is_none_or(|t| now.saturating_duration_since(t) >= FEEDBACK_INTERVAL);
            if s.twcc_pending > 0 && (due || s.twcc_pending == TWCC_PENDING) {
                e.feedback = Some(s.twcc_pending);
                s.twcc_pending = 0;
                s.last_fb = Some(now);
            }
        }
        if s.pli_due
            && !s.video.is_empty()
            && s.last_pli
                .is_none_or(|t| now.saturating_duration_since(t) >= PLI_INTERVAL)
        {
            s.pli_due = false;
            s.last_pli = Some(now);
            e.pli = Some(s.video.clone());
        }
        // Video of a stream it announced as video is cached; a gap is asked for.
        if codec == 1 && s.video.contains(&ssrc) {
            let gap = s
                .caches
                .entry(ssrc)
                .or_default()
                .put(u16::from_be_bytes([clear[2], clear[3]]));
            if !gap.is_empty() {
                let mut n = Vec::new();
                rtcp::write_nack(&mut n, RELAY_SSRC, ssrc, gap.into_iter());
                e.nack = Some(n);
            }
        }
        // Each receiver's copy: its payload type, no extension, the same payload.
        let ext_len = if twcc_ext { 8 } else { 0 };
        let payload = &clear[12 + ext_len..];
        let padding = clear[0] & 0x20 != 0 && payload.last() == Some(&(payload.len() as u8));
        for o in self.others(call, i) {
            let r = self.slots[o as usize].as_mut().expect("a member");
            if r.receiving.as_ref().is_some_and(|ok| !ok.contains(&ssrc)) {
                continue;
            }
            if r.receiving.is_some() && !r.media_started.contains(&ssrc) {
                if padding {
                    *e.drops
                        .entry(DropReason::PaddingBeforeMedia.as_str())
                        .or_default() += 1;
                    continue;
                }
                r.media_started.insert(ssrc);
            }
            let (ropus, rvp8) = if r.alt { (109, 98) } else { (111, 96) };
            let mut c = clear[..12].to_vec();
            c[0] &= !0x10;
            c[1] = (c[1] & 0x80) | if codec == 0 { ropus } else { rvp8 };
            if r.twcc {
                // Its own transport-wide number, for its downlink estimate.
                c[0] |= 0x10;
                let [hi, lo] = r.down_next.to_be_bytes();
                c.extend_from_slice(&[0xbe, 0xde, 0, 1, TWCC_ID << 4 | 1, hi, lo, 0]);
                r.down_next = r.down_next.wrapping_add(1);
            }
            c.extend_from_slice(payload);
            e.to.insert(o, c);
        }
        e
    }

    /// Send `wire` from slot `i` and compare everything the forwarder does with `e`.
    fn deliver(&mut self, i: u8, wire: &[u8], is_rtcp: bool, e: Expect) {
        let peer = self.slots[i as usize]
            .as_ref()
            .expect("a present slot")
            .peer;
        let mut out = Outbox::default();
        let r = if is_rtcp {
            self.fwd.on_rtcp(peer, wire, &mut out)
        } else {
            self.fwd.on_rtp(peer, wire, &mut out)
        };
        match e.result {
            Some(reason) => {
                assert_eq!(r, Err(reason), "refused as the model says");
                assert!(out.is_empty(), "a refused datagram queued something");
            }
            None => assert_eq!(r, Ok(e.to.len()), "copies queued"),
        }
        self.account(r);
        self.take_drops(&e.drops);
        // What each datagram is, decrypted by its receiver's client side.
        let mut got: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        assert!(
            out.len() >= e.asked.len(),
            "the relay's NACKs to senders: {} of {}",
            out.len(),
            e.asked.len()
        );
        let (mut feedback, mut pli, mut nack) = (None, None, None);
        for k in 0..out.len() {
            let (t, data) = out.get(k).expect("a queued datagram");
            let o = self
                .slots
                .iter()
                .position(|s| s.as_ref().is_some_and(|s| s.addr == t.to))
                .expect("sent to a present participant's current address")
                as u8;
            let r = self.slots[o as usize]
                .as_mut()
                .expect("a present participant");
            let mut buf = Vec::new();
            let clear = if t.rtcp {
                r.rx.unprotect_rtcp(data, &mut buf)
            } else {
                r.rx.unprotect_rtp(data, &mut buf)
            }
            .expect("the receiver's hop authenticates what it is sent")
            .to_vec();
            if let Some((to, asked)) = e.asked.get(k) {
                // The relay's own NACKs to senders come first.
                assert_eq!((o, &clear), (*to, asked), "the relay's NACK to a sender");
                continue;
            }
            if o == i {
                // The relay's own RTCP to the sender: feedback, then a keyframe request.
                assert!(t.rtcp && !is_rtcp, "only RTP earns its sender RTCP");
                let first = rtcp::packets(&clear)
                    .next()
                    .and_then(|p| p.ok())
                    .expect("the relay's RTCP parses");
                assert_eq!(first.sender_ssrc, Some(RELAY_SSRC));
                if first.packet_type == rtcp::PT_RTPFB && first.fmt == 1 {
                    assert_eq!(Some(&clear), e.nack.as_ref(), "the relay's NACK for a gap");
                    nack = Some(clear);
                } else if first.packet_type == rtcp::PT_RTPFB && first.fmt == rtcp::FMT_TRANSPORT_CC
                {
                    assert!(
                        feedback.is_none() && pli.is_none() && nack.is_none(),
                        "feedback first, once"
                    );
                    feedback = Some(clear);
                } else {
                    assert!(nack.is_none(), "a keyframe request before the NACK");
                    assert!(pli.is_none(), "one keyframe request");
                    pli = Some(clear);
                }
                continue;
            }
            assert_eq!(t.rtcp, is_rtcp, "forwarded as what it came as");
            assert!(got.insert(o, clear).is_none(), "one datagram per receiver");
        }
        assert_eq!(nack, e.nack, "the relay's NACK for a gap");
        self.check_delivered(i, is_rtcp, &got);
        assert_eq!(got, e.to, "what each receiver got");
        match (feedback, e.feedback) {
            (None, None) => {}
            (Some(f), Some(arrivals)) => {
                let s = self.slots[i as usize].as_ref().expect("present");
                assert!(
                    f.len() <= twcc::max_feedback_len(arrivals),
                    "transport-cc feedback of {} bytes for {arrivals} arrivals",
                    f.len()
                );
                assert_eq!(
                    u32_at(&f, 8),
                    s.twcc_media,
                    "feedback about the first stream"
                );
            }
            (f, x) => panic!("transport-cc feedback {f:?}, expected for {x:?} arrivals"),
        }
        match (pli, e.pli) {
            (None, None) => {}
            (Some(p), Some(video)) => {
                let want: Vec<u8> = video
                    .iter()
                    .flat_map(|v| rtcp::pli(RELAY_SSRC, *v))
                    .collect();
                assert_eq!(p, want, "a PLI per video SSRC");
            }
            (p, x) => panic!("keyframe request {p:?}, expected {x:?}"),
        }
    }

    /// The properties of what was delivered, on their own (not through the model).
    fn check_delivered(&mut self, i: u8, is_rtcp: bool, got: &BTreeMap<u8, Vec<u8>>) {
        let from = self.slots[i as usize].as_ref().expect("present");
        let (from_peer, call) = (from.peer, from.call);
        let owner = |fwd: &Forwarder<H>, ssrc: u32| {
            fwd.owners()
                .find(|(c, s, _)| *c == u64::from(call) && *s == ssrc)
                .map(|(_, _, p)| p)
        };
        for (o, clear) in got {
            let r = self.slots[*o as usize].as_ref().expect("present");
            assert_eq!(r.call, call, "delivered into another call");
            if !is_rtcp {
                let ssrc = u32_at(clear, 8);
                assert_eq!(
                    owner(&self.fwd, ssrc),
                    Some(from_peer),
                    "RTP on an SSRC its sender does not own"
                );
                let seq = u16::from_be_bytes([clear[2], clear[3]]);
                let r = self.slots[*o as usize].as_mut().expect("present");
                if let Some(last) = r.delivered.insert(ssrc, seq) {
                    assert!(
                        seq.wrapping_sub(last) != 0 && seq.wrapping_sub(last) < 0x8000,
                        "receiver {o} got sequence {seq} after {last} on {ssrc}"
                    );
                }
                continue;
            }
            for p in rtcp::packets(clear) {
                let p = p.expect("forwarded RTCP parses");
                match p.route() {
                    RtcpRoute::Others => {
                        for x in rtcp::source_ssrcs(&p) {
                            let x = x.expect("forwarded RTCP parses");
                            assert_eq!(
                                owner(&self.fwd, x),
                                Some(from_peer),
                                "a sender report for an SSRC its sender does not own"
                            );
                        }
                    }
                    RtcpRoute::ReportBlocks | RtcpRoute::MediaSender(_) => {
                        let media = match p.route() {
                            RtcpRoute::MediaSender(m) => m,
                            _ => u32_at(p.bytes, 8),
                        };
                        let to = self.slots[*o as usize].as_ref().expect("present").peer;
                        assert_eq!(
                            owner(&self.fwd, media),
                            Some(to),
                            "feedback to a non-sender"
                        );
                        let sender = p.sender_ssrc.unwrap_or(0);
                        assert!(
                            owner(&self.fwd, sender).is_none_or(|x| x == from_peer),
                            "feedback in another participant's name"
                        );
                        let now = self.now;
                        if rtcp::is_keyframe_request(&p) {
                            let r = self.slots[*o as usize].as_mut().expect("present");
                            assert!(
                                !r.kf_delivered.iter().any(|(s, t)| *s == media
                                    && now.saturating_duration_since(*t)
                                        < KEYFRAME_REQUEST_INTERVAL),
                                "two keyframe requests for {media} within the interval"
                            );
                            r.kf_delivered.push((media, now));
                        }
                        if let Some(n) = rtcp::nack_entries(&p) {
                            let s = self.slots[i as usize].as_mut().expect("present");
                            s.nacks.push((now, n as u64));
                        }
                    }
                    RtcpRoute::Terminate => panic!("RTCP for the relay was forwarded"),
                }
            }
        }
    }

    fn rtcp(&mut self, i: u8, packets: &[RtcpKind], corrupt: Corrupt, repeat: u8) {
        let packets = &packets[..packets.len().min(4)];
        if self.slots[i as usize].is_none() {
            let mut out = Outbox::default();
            let r = self.fwd.on_rtcp(0, &rtcp::pli(1, 2), &mut out);
            assert_eq!(r, Err(DropReason::NotConnected));
            self.account(r);
            return self.take_drops(&BTreeMap::new());
        };
        let resolve = |b: u8| self.resolve(i, b);
        let mut clear: Vec<u8> = packets
            .iter()
            .flat_map(|p| build_rtcp(p, &resolve))
            .collect();
        if clear.len() < 8 {
            // SRTCP needs a sender SSRC word in the clear header.
            clear.extend(build_rtcp(&RtcpKind::Xr { ssrc: 0 }, &resolve));
        }
        if let Corrupt::Overrun = corrupt {
            // The last packet's length field, one word too many.
            let mut at = 0;
            let mut last = 0;
            while at < clear.len() {
                last = at;
                at += (usize::from(u16::from_be_bytes([clear[at + 2], clear[at + 3]])) + 1) * 4;
            }
            let words = u16::from_be_bytes([clear[last + 2], clear[last + 3]]) + 1;
            clear[last + 2..last + 4].copy_from_slice(&words.to_be_bytes());
        }
        // The same compound `repeat` times at one instant (a flood), each protected
        // anew; a replay sends one datagram twice.
        for _ in 0..repeat.clamp(1, 8) {
            let s = self.slots[i as usize].as_mut().expect("present");
            let mut wire = Vec::new();
            s.tx.protect_rtcp_into(&clear, &mut wire)
                .expect("the client protects its own RTCP");
            if let Corrupt::BadTag = corrupt {
                // The tag ends 4 bytes (the SRTCP index) before the end.
                let n = wire.len();
                wire[n - 5] ^= 1;
            }
            let times = if let Corrupt::Replay = corrupt { 2 } else { 1 };
            for k in 0..times {
                let e = self.expect_rtcp(i, &clear, corrupt, k == 1);
                self.deliver(i, &wire, true, e);
            }
        }
    }

    /// The model's verdict on an RTCP compound from slot `i`, applied to its state.
    fn expect_rtcp(&mut self, i: u8, clear: &[u8], corrupt: Corrupt, replayed: bool) -> Expect {
        let now = self.now;
        let call = self.slots[i as usize].as_ref().expect("present").call;
        let owner = |h: &Self, s: u32| h.owners.get(&(call, s)).copied();
        if owner(self, u32_at(clear, 4)).is_some_and(|o| o != i) {
            return Expect::refused(DropReason::RtcpSsrcNotOwned);
        }
        if let Corrupt::BadTag = corrupt {
            return Expect::refused(DropReason::SrtpAuthFailed);
        }
        if replayed {
            return Expect::refused(DropReason::SrtpReplay);
        }
        self.authenticated.insert(i);
        if let Corrupt::Overrun = corrupt {
            return Expect::refused(DropReason::RtpMalformed);
        }
        let mut e = Expect::default();
        let drop = |e: &mut Expect, r: DropReason| *e.drops.entry(r.as_str()).or_default() += 1;
        // Feedback about `media` from `i`: to its sender if `i` gets it.
        let target = |h: &Self, media: u32| -> std::result::Result<Option<u8>, DropReason> {
            let Some(o) = owner(h, media).filter(|o| *o != i) else {
                return Ok(None);
            };
            let r = &h.slots[i as usize].as_ref().expect("present").receiving;
            if r.as_ref().is_none_or(|r| r.contains(&media)) {
                Ok(Some(o))
            } else {
                Err(DropReason::RtcpFeedbackNotReceived)
            }
        };
        let sender_ok =
            |h: &Self, p: &rtcp::RtcpPacket<'_>| match p.sender_ssrc.and_then(|s| owner(h, s)) {
                Some(o) if o != i => Err(DropReason::RtcpSsrcNotOwned),
                _ => Ok(()),
            };
        for p in rtcp::packets(clear) {
            let p = p.expect("the model builds well-formed RTCP");
            match p.route() {
                RtcpRoute::Others => {
                    let ssrcs: Vec<u32> = rtcp::source_ssrcs(&p)
                        .map(|x| x.expect("well-formed"))
                        .collect();
                    // The first SSRC it may not speak for decides why it is refused.
                    let refused = ssrcs
                        .iter()
                        .find_map(|x| match owner(self, *x) {
                            Some(o) if o == i => None,
                            Some(_) => Some(DropReason::RtcpSsrcNotOwned),
                            None => Some(DropReason::RtcpSsrcUnknown),
                        })
                        .or(ssrcs.is_empty().then_some(DropReason::RtcpSsrcUnknown));
                    if let Some(r) = refused {
                        drop(&mut e, r);
                    } else {
                        for o in self.others(call, i) {
                            e.to.entry(o).or_default().extend_from_slice(p.bytes);
                        }
                    }
                }
                RtcpRoute::ReportBlocks => {
                    if let Err(r) = sender_ok(self, &p) {
                        drop(&mut e, r);
                        continue;
                    }
                    for (media, block) in rtcp::report_blocks(&p) {
                        match target(self, media) {
                            Ok(Some(o)) => {
                                let part = e.to.entry(o).or_default();
                                part.extend_from_slice(&rtcp::rr_header(
                                    p.sender_ssrc.unwrap_or(0),
                                ));
                                part.extend_from_slice(block);
                            }
                            Ok(None) => {}
                            Err(r) => drop(&mut e, r),
                        }
                    }
                }
                RtcpRoute::MediaSender(media) => {
                    let t = match sender_ok(self, &p).and_then(|()| target(self, media)) {
                        Ok(t) => t,
                        Err(r) => {
                            drop(&mut e, r);
                            continue;
                        }
                    };
                    let Some(o) = t else { continue };
                    if rtcp::is_keyframe_request(&p) {
                        let m = self.slots[o as usize]
                            .as_mut()
                            .expect("an owner is present");
                        let fresh = |t: &Instant| {
                            now.saturating_duration_since(*t) < KEYFRAME_REQUEST_INTERVAL
                        };
                        let asked = m.keyframes.iter().any(|(s, t)| *s == media && fresh(t));
                        let streams: BTreeSet<u32> = m
                            .keyframes
                            .iter()
                            .filter(|(_, t)| fresh(t))
                            .map(|(s, _)| *s)
                            .collect();
                        if asked || streams.len() >= KEYFRAME_SLOTS {
                            drop(&mut e, DropReason::KeyframeRequestLimited);
                            continue;
                        }
                        m.keyframes.push((media, now));
                        m.keyframes.retain(|(_, t)| fresh(t));
                    } else if let Some(n) = rtcp::nack_entries(&p) {
                        let r = self.slots[i as usize].as_mut().expect("present");
                        if let Some(at) = r.nack_at {
                            let us = now.saturating_duration_since(at).as_micros() as u64;
                            r.nack_tokens = (r.nack_tokens + us * NACK_ENTRIES_PER_SECOND)
                                .min(NACK_ENTRIES_BURST * NACK_UNIT);
                        }
                        r.nack_at = Some(now);
                        let cost = n as u64 * NACK_UNIT;
                        if r.nack_tokens < cost {
                            drop(&mut e, DropReason::NackLimited);
                            continue;
                        }
                        r.nack_tokens -= cost;
                        // The sender's cache answers it: this receiver takes no RTX, so
                        // what the cache holds cannot go again; the rest is asked for.
                        let owner = self.slots[o as usize].as_ref().expect("present");
                        if let Some(c) = owner.caches.get(&media) {
                            let misses: Vec<u16> =
                                rtcp::nack_lost(&p).filter(|s| !c.holds(*s)).collect();
                            if !misses.is_empty() {
                                let mut n = Vec::new();
                                rtcp::write_nack(&mut n, RELAY_SSRC, media, misses.into_iter());
                                e.asked.push((o, n));
                            }
                            continue;
                        }
                    }
                    e.to.entry(o).or_default().extend_from_slice(p.bytes);
                }
                RtcpRoute::Terminate => {}
            }
        }
        e
    }

    /// Checked after every action.
    fn check(&mut self) {
        if let Err(e) = self.fwd.check_invariants() {
            panic!("forwarder invariant: {e}");
        }
        // The forwarder's owners are the model's, and each SSRC has one.
        let theirs: BTreeSet<(u64, u32, PeerId)> = self.fwd.owners().collect();
        let ours: BTreeSet<(u64, u32, PeerId)> = self
            .owners
            .iter()
            .map(|((c, s), i)| {
                let p = self.slots[*i as usize]
                    .as_ref()
                    .expect("owners are present");
                (u64::from(*c), *s, p.peer)
            })
            .collect();
        assert_eq!(theirs, ours, "SSRC owners");
        let present = self.slots.iter().flatten().count();
        assert_eq!(self.fwd.peer_count(), present, "participants");
        // Liveness: reported for who authenticated, at most once per interval.
        let mut reported = Vec::new();
        self.fwd.take_activity(|p| {
            reported.push(p);
            true
        });
        let mut expected = Vec::new();
        let now = self.now;
        for i in &self.authenticated {
            if let Some(s) = self.slots[*i as usize].as_mut() {
                if s.activity_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= ACTIVITY_INTERVAL)
                {
                    s.activity_at = Some(now);
                    expected.push(s.peer);
                }
            }
        }
        reported.sort_unstable();
        expected.sort_unstable();
        assert_eq!(reported, expected, "liveness reported");
        // NACK entries each receiver sent through, over every window ending now.
        for s in self.slots.iter().flatten() {
            let mut sum = 0;
            for (t, n) in s.nacks.iter().rev() {
                sum += n;
                let us = now.saturating_duration_since(*t).as_micros() as u64;
                assert!(
                    sum * NACK_UNIT
                        <= NACK_ENTRIES_BURST * NACK_UNIT + us * NACK_ENTRIES_PER_SECOND,
                    "{sum} NACK entries forwarded in {us} µs"
                );
            }
        }
    }

    /// Everyone leaves: the forwarder must hold nothing.
    pub fn finish(&mut self) {
        for i in 0..SLOTS {
            self.step(&Action::Remove { slot: i });
        }
        assert_eq!(self.fwd.peer_count(), 0);
        assert_eq!(
            self.fwd.owners().count(),
            0,
            "SSRC owners outlive their participants"
        );
        if let Err(e) = self.fwd.check_invariants() {
            panic!("forwarder invariant after everyone left: {e}");
        }
    }

    /// Datagrams taken in, copies sent to receivers, and drops by reason.
    pub fn totals(&self) -> (u64, u64, &BTreeMap<&'static str, u64>) {
        (self.inputs, self.copies, &self.refused)
    }
}

impl Pt {
    fn to_bytes(self) -> Vec<u8> {
        match self {
            Pt::Opus => vec![0],
            Pt::Vp8 => vec![2],
            Pt::Raw(p) => vec![4, p],
        }
    }
}

impl RtcpKind {
    fn to_bytes(&self) -> Vec<u8> {
        let list = |v: &[u8]| [&[v.len() as u8][..], v].concat();
        match self {
            RtcpKind::Sr { ssrc } => vec![0, *ssrc],
            RtcpKind::Rr { sender, blocks } => [vec![1, *sender], list(blocks)].concat(),
            RtcpKind::Sdes { ssrcs } => [vec![2], list(ssrcs)].concat(),
            RtcpKind::Bye { ssrcs } => [vec![3], list(ssrcs)].concat(),
            RtcpKind::App { ssrc } => vec![4, *ssrc],
            RtcpKind::Xr { ssrc } => vec![5, *ssrc],
            RtcpKind::Pli { sender, media } => vec![6, *sender, *media],
            RtcpKind::Fir { sender, media } => vec![7, *sender, *media],
            RtcpKind::Nack {
                sender,
                media,
                entries,
            } => vec![8, *sender, *media, *entries],
            RtcpKind::Twcc { sender, media } => vec![9, *sender, *media],
            RtcpKind::Remb { sender } => vec![10, *sender],
        }
    }
}

impl Action {
    /// The bytes [`Action::arbitrary`] reads as this action: how the fuzz target's seeds
    /// are written (`fuzz/seeds`).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Action::Add {
                slot,
                call,
                claims,
                ssrcs,
                video,
                twcc,
                alt_numbering,
                receives_all,
            } => {
                let flags = u8::from(*claims)
                    | u8::from(*twcc) << 1
                    | u8::from(*alt_numbering) << 2
                    | u8::from(*receives_all) << 3;
                vec![0, *slot, *call, flags, *ssrcs, *video]
            }
            Action::Remove { slot } => vec![4, *slot],
            Action::Move { slot } => vec![5, *slot],
            Action::Receive { slot, ssrcs } => vec![6, *slot, *ssrcs],
            Action::Rtp {
                slot,
                ssrc,
                pt,
                kind,
                gap,
                size,
                twcc,
                replay,
            } => {
                let flags = u8::from(*twcc) | u8::from(*replay) << 1;
                let kind = match kind {
                    RtpKind::Media => 0,
                    RtpKind::PaddingOnly => 5,
                    RtpKind::PaddedMedia => 6,
                    RtpKind::Truncated => 7,
                    RtpKind::BadTag => 8,
                    RtpKind::Noise => 9,
                };
                [
                    vec![8, *slot, *ssrc, *gap, *size, flags],
                    pt.to_bytes(),
                    vec![kind],
                ]
                .concat()
            }
            Action::Rtcp {
                slot,
                packets,
                corrupt,
                repeat,
            } => {
                let mut b = vec![13, *slot, packets.len() as u8 - 1];
                for p in packets {
                    b.extend(p.to_bytes());
                }
                b.push(match corrupt {
                    Corrupt::None => 0,
                    Corrupt::BadTag => 5,
                    Corrupt::Overrun => 6,
                    Corrupt::Replay => 7,
                });
                b.push(repeat - 1);
                b
            }
            Action::Garbage { slot, rtcp, bytes } => [
                vec![17, *slot, u8::from(*rtcp), bytes.len() as u8],
                bytes.clone(),
            ]
            .concat(),
            Action::Advance { ms } => [vec![18], ms.to_le_bytes().to_vec()].concat(),
            Action::Rebind { slot } => vec![19, *slot],
        }
    }
}

/// Named action sequences that reach the forwarder's interesting states at once: the
/// fuzz target's seeds (`fuzz/corpus/forward`), and checked by the tests to mean what
/// they say. Slot bytes of 0..4 name the slot itself while it is the only candidate;
/// SSRC bytes are resolved as [`Harness`] does (`4k`: the sender's own k-th SSRC,
/// `4k + 2`: another's, `4k + 3`: [`ssrc_of`]`(k)`).
pub fn scenarios() -> Vec<(&'static str, Vec<Action>)> {
    let add = |slot, ssrcs, video, flags: u8| Action::Add {
        slot,
        call: 0,
        claims: flags & 1 != 0,
        ssrcs,
        video,
        twcc: flags & 2 != 0,
        alt_numbering: flags & 4 != 0,
        receives_all: false,
    };
    let rtp = |slot, ssrc, kind| Action::Rtp {
        slot,
        ssrc,
        pt: Pt::Vp8,
        kind,
        gap: 0,
        size: 40,
        twcc: true,
        replay: false,
    };
    let rtcp = |slot, packets: Vec<RtcpKind>, corrupt, repeat| Action::Rtcp {
        slot,
        packets,
        corrupt,
        repeat,
    };
    // Three in call 0 sending 100/101, 200 and 300, each receiving the others.
    let call_of_three = vec![
        add(0, 0b0000_0011, 0b10, 2),
        add(1, 0b0000_0100, 0, 4),
        add(2, 0b0001_0000, 0, 0),
        Action::Receive {
            slot: 0,
            ssrcs: 0b0001_0100,
        },
        Action::Receive {
            slot: 1,
            ssrcs: 0b0001_0011,
        },
        Action::Receive {
            slot: 2,
            ssrcs: 0b0000_0111,
        },
        rtp(0, 0, RtpKind::Media),
        rtp(0, 4, RtpKind::PaddingOnly),
        rtp(1, 0, RtpKind::Media),
        Action::Advance { ms: 60 },
        rtp(0, 0, RtpKind::Media),
    ];
    let rtcp_of_every_kind = [
        call_of_three.clone(),
        vec![
            rtcp(
                1,
                vec![
                    RtcpKind::Sr { ssrc: 0 },
                    RtcpKind::Rr {
                        sender: 0,
                        blocks: vec![2, 6],
                    },
                    RtcpKind::Sdes { ssrcs: vec![0] },
                ],
                Corrupt::None,
                1,
            ),
            rtcp(
                1,
                vec![
                    RtcpKind::Bye { ssrcs: vec![2] },
                    RtcpKind::App { ssrc: 0 },
                    RtcpKind::Xr { ssrc: 2 },
                ],
                Corrupt::None,
                1,
            ),
            rtcp(
                2,
                vec![
                    RtcpKind::Pli {
                        sender: 0,
                        media: 2,
                    },
                    RtcpKind::Fir {
                        sender: 0,
                        media: 2,
                    },
                    RtcpKind::Twcc {
                        sender: 0,
                        media: 2,
                    },
                    RtcpKind::Remb { sender: 0 },
                ],
                Corrupt::None,
                2,
            ),
            rtcp(2, vec![RtcpKind::Sr { ssrc: 0 }], Corrupt::Replay, 1),
            rtcp(2, vec![RtcpKind::Sr { ssrc: 0 }], Corrupt::Overrun, 1),
        ],
    ]
    .concat();
    let nack_storm = [
        call_of_three.clone(),
        vec![
            rtcp(
                1,
                vec![
                    RtcpKind::Nack {
                        sender: 0,
                        media: 2,
                        entries: 160,
                    };
                    4
                ],
                Corrupt::None,
                8,
            ),
            Action::Advance { ms: 250 },
            rtcp(
                1,
                vec![RtcpKind::Nack {
                    sender: 0,
                    media: 2,
                    entries: 160,
                }],
                Corrupt::None,
                2,
            ),
        ],
    ]
    .concat();
    let forgeries_move_and_leave = [
        call_of_three.clone(),
        vec![
            rtp(1, 2, RtpKind::Media),
            rtp(1, 3, RtpKind::Media),
            rtp(2, 0, RtpKind::BadTag),
            rtp(2, 0, RtpKind::Truncated),
            Action::Garbage {
                slot: 1,
                rtcp: true,
                bytes: vec![0x80, 200, 0, 1, 0, 0, 0, 100],
            },
            Action::Move { slot: 0 },
            add(3, 0, 0, 1),
            rtp(3, 3, RtpKind::Media),
            Action::Remove { slot: 1 },
            Action::Remove { slot: 0 },
        ],
    ]
    .concat();
    // Two participants' nominated pairs move, one of them twice and across a move to the
    // other call: everything then goes to the new addresses.
    let ice_nomination = [
        call_of_three,
        vec![
            Action::Rebind { slot: 1 },
            rtp(0, 0, RtpKind::Media),
            rtp(1, 0, RtpKind::Media),
            Action::Rebind { slot: 0 },
            Action::Advance { ms: 600 },
            rtp(0, 0, RtpKind::Media),
            Action::Move { slot: 1 },
            Action::Rebind { slot: 1 },
            rtp(1, 0, RtpKind::Media),
            Action::Move { slot: 1 },
            rtp(0, 0, RtpKind::Media),
        ],
    ]
    .concat();
    vec![
        ("rtcp-of-every-kind", rtcp_of_every_kind),
        ("nack-storm", nack_storm),
        ("forgeries-move-and-leave", forgeries_move_and_leave),
        ("ice-nomination", ice_nomination),
    ]
}

/// The bytes of a scenario, as the fuzz target reads them.
pub fn scenario_bytes(actions: &[Action]) -> Vec<u8> {
    actions.iter().flat_map(Action::to_bytes).collect()
}

/// Most actions one input runs (the fuzz target's and the property tests' bound).
pub const MAX_ACTIONS: usize = 200;

/// Run the actions `data` describes (up to [`MAX_ACTIONS`]) on a fresh forwarder whose
/// hops `hop` makes, checking after each, then remove everyone. Panics with the broken
/// invariant; returns [`Harness::totals`].
pub fn run<H: HopCipher>(
    data: &[u8],
    hop: impl Fn(u8) -> H,
) -> (u64, u64, BTreeMap<&'static str, u64>) {
    let mut u = Unstructured::new(data);
    let mut h = Harness::new(hop);
    for _ in 0..MAX_ACTIONS {
        if u.is_empty() {
            break;
        }
        let Ok(a) = Action::arbitrary(&mut u) else {
            break;
        };
        h.step(&a);
    }
    h.finish();
    let (inputs, copies, refused) = h.totals();
    (inputs, copies, refused.clone())
}

/// Decode the actions of `data`, as [`run`] does (for tests that inspect them).
pub fn actions(data: &[u8]) -> Result<Vec<Action>> {
    let mut u = Unstructured::new(data);
    let mut v = Vec::new();
    while !u.is_empty() && v.len() < MAX_ACTIONS {
        v.push(Action::arbitrary(&mut u)?);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blindrelay_transport::fast_srtp::FastSrtpContext;
    use blindrelay_transport::hop::HopContext;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    /// The relay's in-place AES-GCM hop context for `key`.
    fn fast(key: u8) -> HopContext {
        HopContext::Fast(Box::new(
            FastSrtpContext::new(&[key; 16], &[key; 12]).expect("key and salt of their sizes"),
        ))
    }

    /// Every scenario decodes to its own actions, so the fuzz seeds mean what they say,
    /// and each runs with every check holding.
    #[test]
    fn scenarios_decode_to_their_actions_and_run() {
        for (name, actions) in scenarios() {
            let bytes = scenario_bytes(&actions);
            let decoded = super::actions(&bytes).expect("decodes");
            assert_eq!(format!("{decoded:?}"), format!("{actions:?}"), "{name}");
            let (inputs, copies, refused) = run(&bytes, fast);
            assert!(
                inputs > 0 && copies > 0,
                "{name}: {inputs} in, {copies} out"
            );
            if name == "nack-storm" {
                assert!(refused.contains_key("nack_limited"), "{name}: {refused:?}");
            }
        }
    }

    /// 1024 random sequences of up to 200 actions, from a fixed seed so CI runs the same
    /// cases: the model's prediction and every invariant after every action (see the
    /// module docs). Across them, packets are forwarded and every refusal the model
    /// predicts happens, so each check meets both of its sides.
    #[test]
    fn random_action_sequences_keep_the_invariants() {
        let config = Config {
            cases: 1024,
            failure_persistence: None,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[19; 32]);
        let mut runner = TestRunner::new_with_rng(config, rng);
        let bytes = proptest::collection::vec(any::<u8>(), 0..2000);
        let totals = std::cell::RefCell::new((0, 0, BTreeMap::new()));
        let result = runner.run(&bytes, |data| {
            let (inputs, copies, refused) = run(&data, fast);
            let mut t = totals.borrow_mut();
            t.0 += inputs;
            t.1 += copies;
            for (r, n) in refused {
                *t.2.entry(r).or_insert(0) += n;
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        let (inputs, copies, refused) = totals.into_inner();
        println!("{inputs} datagrams, {copies} copies forwarded, refused: {refused:?}");
        assert!(copies > inputs / 10, "too little forwarded to check much");
        for r in [
            DropReason::NotConnected,
            DropReason::SrtpMalformed,
            DropReason::SrtpAuthFailed,
            DropReason::SrtpReplay,
            DropReason::RtpMalformed,
            DropReason::SsrcNotOwned,
            DropReason::UnknownPayloadType,
            DropReason::RtcpSsrcNotOwned,
            DropReason::RtcpSsrcUnknown,
            DropReason::RtcpFeedbackNotReceived,
            DropReason::KeyframeRequestLimited,
            DropReason::PaddingBeforeMedia,
            DropReason::NackLimited,
        ] {
            assert!(refused.contains_key(r.as_str()), "never refused as {r:?}");
        }
    }
}
