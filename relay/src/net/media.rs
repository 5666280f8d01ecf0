//! The packet path: one receive loop demultiplexes the shared port (RFC 7983) and hands
//! SRTP/SRTCP to the forwarding loop its call is pinned to; each forwarding loop owns its
//! participants' SRTP contexts outright, so no lock is taken per packet.

use super::events::{Event, EventTx, KeyedMedia};
use super::udp::{gso_run_end, Datagram, MediaSocket, RecvBuffers, MAX_BATCH_DATAGRAMS};
use crate::core::forward::{MediaTap, Outbox, PeerTables};
use crate::core::ice::{handle_stun, StunOutcome};
use crate::core::plane::IcePeer;
use crate::core::{CallKey, PeerId};
use crate::hop::MediaHop;
use crate::metrics::{kind_index, DropReason, Metrics};
use blindrelay_protocol::demux::{classify, PacketKind};
use blindrelay_protocol::sdp::Fingerprint;
use blindrelay_transport::{handshake, DtlsIdentity, DtlsRole, PacketConn};
use bytes::{Bytes, BytesMut};
// foldhash, seeded per process: SipHash was ~2 % of the relay's CPU at 300k packets/s.
use foldhash::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// Depth of each forwarding loop's packet ring.
pub const WORKER_QUEUE: usize = 8192;
/// Depth of each forwarding loop's control queue (joins, leaves, moves).
pub const CONTROL_QUEUE: usize = 1024;
/// Depth of each peer's DTLS queue, in datagrams (handshake flights are a few).
const DTLS_QUEUE: usize = 64;

/// A forwarding loop's state, over the relay's SRTP contexts.
type Forwarder = crate::core::forward::Forwarder<MediaHop>;
use crate::core::forward::PeerTransfer;

/// Messages to a forwarding loop.
pub enum WorkerMsg {
    AddPeer {
        peer: PeerId,
        call: CallKey,
        addr: SocketAddr,
        inbound: Box<MediaHop>,
        outbound: Box<MediaHop>,
        tables: Box<PeerTables>,
    },
    /// A node link's end in a call now sends `ssrcs` (`video` of them video) and is sent
    /// `receiving` (see [`crate::core::forward::Forwarder::set_link`]).
    SetLink {
        peer: PeerId,
        ssrcs: Vec<u32>,
        video: Vec<u32>,
        repairs: Vec<(u32, u32)>,
        receiving: Vec<u32>,
        simulcast: Vec<Vec<u32>>,
    },
    /// Where packets for a link end's address go: a node link and the flows the far node
    /// chose; `None` forgets the address.
    LinkOut(SocketAddr, Option<Box<LinkOut>>),
    RemovePeer(PeerId),
    /// The remote SSRCs the participant has tracks for.
    Receive(PeerId, Vec<u32>),
    /// The tallest pictures it asks for of one remote track (see
    /// [`crate::core::forward::Forwarder::set_max_height`]).
    MaxHeight(PeerId, u32, u16),
    /// Hand a participant's hop state back to the driver (merge), which queues it at its
    /// new loop itself; dropping the sender says the participant is not here.
    TakePeer(PeerId, oneshot::Sender<PeerTransfer<MediaHop>>),
    /// The participant's ICE agent nominated the pair at this address: send to it there.
    /// Every loop is told; those that do not hold the participant ignore it.
    SetAddr(PeerId, SocketAddr),
}

/// Where a forwarding loop sends a node link's end's packets (see [`WorkerMsg::LinkOut`]).
pub struct LinkOut {
    pub link: crate::cluster::link::Link,
    /// The far node's flow for each track it receives from this node in the call.
    pub flows: HashMap<u32, u64>,
    /// Its flow for the call's RTCP.
    pub rtcp: u64,
}

/// A forwarding loop's link ends: their addresses (see [`link_addr`]) and the framer of
/// their datagrams.
#[derive(Default)]
struct LinkSend {
    out: HashMap<SocketAddr, Box<LinkOut>>,
    framer: crate::cluster::link::MediaFramer,
}

/// The address a link end stands under in a forwarding loop: `n` in the IPv6 discard
/// prefix 100::/64 (RFC 6666), so that no packet for it could reach a host, even by
/// mistake. The loop hands what it queues there to the node link instead of the socket.
pub fn link_addr(n: u64) -> SocketAddr {
    let w = |k: u32| ((n >> k) & 0xffff) as u16;
    SocketAddr::from((
        std::net::Ipv6Addr::new(0x100, 0, 0, 0, w(48), w(32), w(16), w(0)),
        9,
    ))
}

pub fn is_link_addr(a: &SocketAddr) -> bool {
    match a {
        SocketAddr::V6(v) => v.ip().segments()[..4] == [0x100, 0, 0, 0],
        SocketAddr::V4(_) => false,
    }
}

impl LinkSend {
    /// One packet for a link end: on the far node's flow for its track (RTP) or the call
    /// (RTCP). Returns whether it was sent.
    fn send(&mut self, to: &SocketAddr, rtcp: bool, data: &[u8], m: &Metrics) -> bool {
        use crate::cluster::link::MediaDrop;
        let Some(o) = self.out.get(to) else {
            m.cluster_media_dropped(MediaDrop::NoFlow).increment(1);
            return false;
        };
        let flow = if rtcp {
            Some(o.rtcp)
        } else {
            data.get(8..12)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .and_then(|ssrc| o.flows.get(&ssrc).copied())
        };
        let Some(flow) = flow else {
            m.cluster_media_dropped(MediaDrop::NoFlow).increment(1);
            return false;
        };
        o.link.send_media(&mut self.framer, flow, data).is_ok()
    }
}

/// One SRTP or SRTCP datagram for a forwarding loop.
pub struct Packet {
    pub peer: PeerId,
    pub rtcp: bool,
    /// Owned, so the forwarding loop opens it in place.
    pub data: BytesMut,
    /// When the receive loop took it off the socket.
    pub at: Instant,
}

/// The packet half of a forwarding loop's inbox: a ring of fixed size, allocated once.
/// tokio's mpsc allocates a new block whenever its queue deepens past the blocks it kept,
/// which was the relay's last heap allocation per forwarded packet (one per ~10k).
/// Control messages keep their mpsc. A packet that finds its participant unknown makes
/// the loop apply pending control messages and try again, so it does not overtake its
/// participant's `AddPeer`; packets still in the ring when a participant leaves are
/// dropped as `not_connected`.
pub struct PacketQueue {
    ring: crossbeam_queue::ArrayQueue<Packet>,
    ready: tokio::sync::Notify,
}

impl PacketQueue {
    pub fn new(capacity: usize) -> Self {
        PacketQueue {
            ring: crossbeam_queue::ArrayQueue::new(capacity.max(1)),
            ready: tokio::sync::Notify::new(),
        }
    }

    /// Queue a packet; hands it back when the ring is full.
    pub fn push(&self, p: Packet) -> Result<(), Packet> {
        self.ring.push(p)?;
        // Stores a permit if the loop is not waiting yet, so no wake-up is lost.
        self.ready.notify_one();
        Ok(())
    }

    pub fn pop(&self) -> Option<Packet> {
        self.ring.pop()
    }

    /// Wait until a packet may be there.
    pub async fn wait(&self) {
        self.ready.notified().await
    }
}

/// Messages to the receive loop, from the control plane's driver, in the order the
/// plane made them.
pub enum RecvCtl {
    /// Accept ICE checks for a joined participant.
    AddIce(Box<IcePeer>),
    RemovePeer {
        peer: PeerId,
        ufrag: String,
    },
    /// The participant's call now lives on another forwarding loop.
    SetWorker {
        peer: PeerId,
        ufrag: String,
        worker: usize,
        call_key: CallKey,
    },
}

struct AddrEntry {
    peer: PeerId,
    worker: usize,
    dtls_tx: mpsc::Sender<Bytes>,
    /// Its DTLS association's datagram path: a nomination points it at the new address.
    conn: Arc<PacketConn>,
    /// When a valid binding request's activity was last reported to the control plane
    /// (ms since start).
    reported_ms: u64,
    /// It moved here and the driver has not been told: the receive loop never waits for
    /// the event queue, so it tries again with the participant's next datagram.
    move_due: bool,
    /// When a move was last reported (ms since start).
    move_reported_ms: Option<u64>,
}

/// How often at most a participant's liveness is reported to the control plane from its
/// binding requests (the forwarding loop reports authenticated SRTP/SRTCP at the same
/// pace, [`crate::core::forward::ACTIVITY_INTERVAL`]): consent is judged in seconds, and
/// the receive loop must not send an event per packet.
const ACTIVITY_REPORT_MS: u64 = 1000;

/// How often at most one participant's moves are reported to the driver, which tells
/// every forwarding loop of each: a client that nominates pair after pair cannot make the
/// relay's control path do more than that. Its last address is what is reported.
const MOVE_REPORT_MS: u64 = 100;

/// What the receive loop needs besides its socket.
pub struct RecvSetup {
    pub media: Arc<MediaSocket>,
    pub queues: Vec<Arc<PacketQueue>>,
    pub metrics: Arc<Metrics>,
    pub events: EventTx,
    pub dtls: DtlsSetup,
}

/// What each participant's DTLS handshake needs.
#[derive(Clone)]
pub struct DtlsSetup {
    pub identity: Arc<DtlsIdentity>,
    pub connect_timeout: std::time::Duration,
    /// In-place AEAD_AES_128_GCM SRTP when negotiated (`media.srtp = fast`).
    pub fast: bool,
}

/// Report liveness to the control plane at most once per [`ACTIVITY_REPORT_MS`]. Never
/// waits: a full inbox means the report is tried again with the next packet. Only a
/// binding request whose MESSAGE-INTEGRITY verified comes here; SRTP and SRTCP count once
/// they authenticated, in the forwarding loop.
fn report_activity(events: &EventTx, e: &mut AddrEntry, now_ms: u64) {
    if now_ms.saturating_sub(e.reported_ms) >= ACTIVITY_REPORT_MS
        && events.try_send(Event::Activity { peer: e.peer }).is_ok()
    {
        e.reported_ms = now_ms;
    }
}

/// Tell the driver where a participant that moved is now (`addr`, the key of its entry),
/// if a report is due: at most once per [`MOVE_REPORT_MS`], and never waiting (a full
/// inbox means it is tried again with the participant's next datagram).
fn report_move(events: &EventTx, e: &mut AddrEntry, addr: SocketAddr, now_ms: u64) {
    if e.move_due
        && e.move_reported_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= MOVE_REPORT_MS)
        && events
            .try_send(Event::Nominated { peer: e.peer, addr })
            .is_ok()
    {
        e.move_due = false;
        e.move_reported_ms = Some(now_ms);
    }
}

/// Move a bound participant from `old` to `new`: its entry re-keyed, its DTLS conn
/// pointed there. False, and nothing changed, when `new` is someone's already (a check
/// with one participant's credentials from another's address takes nothing away) or
/// `old` is not bound.
fn rebind(
    addrs: &mut HashMap<SocketAddr, AddrEntry>,
    peer_addr: &mut HashMap<PeerId, SocketAddr>,
    old: SocketAddr,
    new: SocketAddr,
) -> bool {
    if addrs.contains_key(&new) {
        return false;
    }
    let Some(mut e) = addrs.remove(&old) else {
        return false;
    };
    e.conn.set_remote(new);
    e.move_due = true;
    peer_addr.insert(e.peer, new);
    addrs.insert(new, e);
    true
}

/// Receive, classify and dispatch every datagram on the media port.
pub async fn recv_loop(setup: RecvSetup, mut ctl: mpsc::Receiver<RecvCtl>) {
    let RecvSetup {
        media,
        queues,
        metrics: m,
        events,
        dtls,
    } = setup;
    let epoch = Instant::now();
    let mut ice: HashMap<String, IcePeer> = HashMap::default();
    let mut addrs: HashMap<SocketAddr, AddrEntry> = HashMap::default();
    let mut peer_addr: HashMap<PeerId, SocketAddr> = HashMap::default();
    let mut batch: Vec<Datagram> = Vec::with_capacity(MAX_BATCH_DATAGRAMS);
    let mut full: Vec<bool> = Vec::with_capacity(queues.len());
    let mut bufs = RecvBuffers::new();
    let mut copied = 0;
    loop {
        tokio::select! {
            r = media.recv_batch(&mut bufs, &mut batch) => {
                if let Err(e) = r {
                    // ICMP port unreachable surfaces here on Linux; nothing to do but go on.
                    debug!(error = %e, "media recv error");
                    continue;
                }
            }
            c = ctl.recv() => {
                match c {
                    Some(c) => apply(&mut ice, &mut addrs, &mut peer_addr, c),
                    None => return,
                }
                continue;
            }
        }
        // Control first: a participant's AddIce was queued before its client could send
        // the check in this batch.
        while let Ok(c) = ctl.try_recv() {
            apply(&mut ice, &mut addrs, &mut peer_addr, c);
        }
        let now = Instant::now();
        let now_ms = now.duration_since(epoch).as_millis() as u64;
        // A loop that stayed full through its yields in this batch gets no more yields in
        // it: its packets are dropped at once, so one overloaded loop cannot slow the
        // receive loop (and every other call) down to its pace.
        full.clear();
        full.resize(queues.len(), false);
        // Counted per batch, not per datagram: two shared counters per packet were over
        // 1 % of the relay's CPU at 500k packets/s.
        let mut received = [(0u64, 0u64); 5];
        if bufs.copied() != copied {
            m.receive_backlog_copies.increment(bufs.copied() - copied);
            copied = bufs.copied();
        }
        for Datagram { from, data, at } in batch.drain(..) {
            let kind = classify(&data);
            let k = kind_index(kind);
            if let Some((p, b)) = received.get_mut(k) {
                *p += 1;
                *b += data.len() as u64;
            }
            match kind {
                PacketKind::Stun => match handle_stun(&data, from, |u| ice.get(u)) {
                    StunOutcome::Binding(b) => {
                        if let Err(e) = media.send(from, &b.response).await {
                            debug!(error = %e, "STUN response send failed");
                        } else {
                            m.stun_responses.increment(1);
                        }
                        // The first valid check binds the participant's 5-tuple. After
                        // that only the controlling agent's nomination (USE-CANDIDATE)
                        // moves it: a lite agent takes the nominated pair as selected
                        // (RFC 8445 §7.3.1.5), and under loss a browser may nominate a
                        // pair other than the first to get through. A check on another
                        // pair without it is answered and moves nothing.
                        let p = b.entry;
                        if let Some(bound) = peer_addr.get(&p.peer).copied() {
                            let mut at = bound;
                            if bound != from
                                && b.use_candidate
                                && rebind(&mut addrs, &mut peer_addr, bound, from)
                            {
                                m.ice_nominated_moves.increment(1);
                                at = from;
                            }
                            if let Some(e) = addrs.get_mut(&at) {
                                report_activity(&events, e, now_ms);
                                report_move(&events, e, at, now_ms);
                            }
                        } else if let std::collections::hash_map::Entry::Vacant(slot) =
                            addrs.entry(from)
                        {
                            let (conn, dtls_tx) =
                                PacketConn::new(media.socket.clone(), from, DTLS_QUEUE);
                            let repeats = m.dtls_last_flight_repeats.clone();
                            conn.on_last_flight_repeat(move || repeats.increment(1));
                            let e = slot.insert(AddrEntry {
                                peer: p.peer,
                                worker: p.worker,
                                dtls_tx,
                                conn: conn.clone(),
                                reported_ms: 0,
                                move_due: false,
                                move_reported_ms: None,
                            });
                            report_activity(&events, e, now_ms.max(ACTIVITY_REPORT_MS));
                            peer_addr.insert(p.peer, from);
                            tokio::spawn(dtls_task(
                                dtls.clone(),
                                m.clone(),
                                events.clone(),
                                p.peer,
                                p.fingerprint.clone(),
                                conn,
                            ));
                        }
                    }
                    // A binding indication carries no MESSAGE-INTEGRITY (RFC 8445 §11): anyone
                    // can send one from a participant's address, so it refreshes nothing.
                    StunOutcome::Indication => {}
                    StunOutcome::Drop(r) => m.dropped(r),
                },
                PacketKind::Dtls => match addrs.get_mut(&from) {
                    Some(e) => {
                        report_move(&events, e, from, now_ms);
                        if e.dtls_tx.try_send(data.freeze()).is_err() {
                            m.dropped(DropReason::DtlsQueueFull);
                        }
                    }
                    None => m.dropped(DropReason::DtlsUnknownSource),
                },
                // Not proof of life yet: consent is refreshed by the forwarding loop once the
                // packet has authenticated.
                PacketKind::Rtp | PacketKind::Rtcp => match addrs.get_mut(&from) {
                    Some(e) => {
                        if e.move_due {
                            report_move(&events, e, from, now_ms);
                        }
                        let msg = Packet {
                            peer: e.peer,
                            rtcp: kind == PacketKind::Rtcp,
                            data,
                            at,
                        };
                        let gave_up = full.get(e.worker).copied().unwrap_or(false);
                        let queued = if gave_up {
                            queues[e.worker].push(msg).is_ok()
                        } else {
                            dispatch(&queues[e.worker], msg).await
                        };
                        if !queued {
                            if let Some(f) = full.get_mut(e.worker) {
                                *f = true;
                            }
                            m.dropped(DropReason::WorkerQueueFull);
                        }
                    }
                    None => m.dropped(DropReason::UnknownSource),
                },
                PacketKind::Unknown => m.dropped(DropReason::UnknownProtocol),
            }
        }
        for (k, (p, b)) in received.iter().enumerate() {
            if *p > 0 {
                m.received_packets[k].increment(*p);
                m.received_bytes[k].increment(*b);
            }
        }
    }
}

/// How many times the receive loop yields to a full forwarding loop before it drops.
const FULL_QUEUE_YIELDS: usize = 8;

/// Hand a packet to its forwarding loop. A full queue is usually a burst the loop is
/// still working through (after the kernel held a backlog while this thread was
/// preempted, say), not overload: when the loop shares this thread it cannot drain
/// while the receive loop keeps filling it, so yield to it a few times before dropping.
/// A loop that stays full is overloaded and its packets are dropped, as before.
async fn dispatch(worker: &PacketQueue, mut msg: Packet) -> bool {
    for _ in 0..FULL_QUEUE_YIELDS {
        match worker.push(msg) {
            Ok(()) => return true,
            Err(m) => {
                msg = m;
                tokio::task::yield_now().await;
            }
        }
    }
    worker.push(msg).is_ok()
}

fn apply(
    ice: &mut HashMap<String, IcePeer>,
    addrs: &mut HashMap<SocketAddr, AddrEntry>,
    peer_addr: &mut HashMap<PeerId, SocketAddr>,
    c: RecvCtl,
) {
    match c {
        RecvCtl::AddIce(p) => {
            ice.insert(p.local_ufrag.clone(), *p);
        }
        RecvCtl::RemovePeer { peer, ufrag } => {
            ice.remove(&ufrag);
            if let Some(a) = peer_addr.remove(&peer) {
                if addrs.get(&a).is_some_and(|e| e.peer == peer) {
                    addrs.remove(&a);
                }
            }
        }
        RecvCtl::SetWorker {
            peer,
            ufrag,
            worker,
            call_key,
        } => {
            if let Some(p) = ice.get_mut(&ufrag) {
                p.worker = worker;
                p.call_key = call_key;
            }
            if let Some(e) = peer_addr.get(&peer).and_then(|a| addrs.get_mut(a)) {
                e.worker = worker;
            }
        }
    }
}

/// Handshake with one participant, hand its SRTP contexts to the control plane's driver
/// (which gives them to the participant's forwarding loop), then wait for the association
/// to end (close_notify or error).
async fn dtls_task(
    setup: DtlsSetup,
    m: Arc<Metrics>,
    events: EventTx,
    peer: PeerId,
    fingerprint: Fingerprint,
    conn: Arc<PacketConn>,
) {
    let started = Instant::now();
    // Boxed: the handshake's state is several KiB, and inline it would size this task
    // for the participant's whole life; boxed, it is freed once the handshake is over.
    let result = Box::pin(handshake(
        conn.clone(),
        &setup.identity,
        DtlsRole::Server,
        fingerprint,
        setup.connect_timeout,
        // Only a client's list counts; the relay picks GCM whenever it is offered.
        &blindrelay_transport::DEFAULT_PROFILES,
    ))
    .await;
    let session = match result {
        Ok(s) => s,
        Err(e) => {
            m.dtls_handshake(e.reason()).increment(1);
            warn!(error = %e, "DTLS handshake failed");
            let _ = events.send(Event::DtlsFailed { peer }).await;
            return;
        }
    };
    m.dtls_handshake("ok").increment(1);
    m.dtls_handshake_time
        .record(started.elapsed().as_secs_f64());
    let dtls = session.conn.clone();
    let (outbound, inbound) = match session.hop_contexts(setup.fast) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "SRTP setup failed");
            let _ = dtls.close().await;
            let _ = events.send(Event::DtlsFailed { peer }).await;
            return;
        }
    };
    let profile = blindrelay_transport::profile_label(session.profile);
    // The forwarding loop owns the hop contexts now; the session's own webrtc-srtp
    // contexts and keys are not needed for the rest of the participant's life.
    drop(session);
    let keyed = Event::Keyed {
        peer,
        media: Box::new(KeyedMedia {
            dtls: dtls.clone(),
            conn,
            inbound,
            outbound,
        }),
    };
    if events.send(keyed).await.is_err() {
        return;
    }
    debug!(profile, "participant keyed");
    // Only alerts arrive after the handshake (no data channels), and a small buffer is
    // held per participant for its whole call.
    let mut buf = [0u8; 512];
    loop {
        match dtls.read(&mut buf, None).await {
            // Application data is not part of this call's media (no data channels):
            // an over-size record is discarded, not taken for the end of the association.
            Ok(_) | Err(blindrelay_transport::webrtc_dtls::Error::ErrBufferTooSmall) => continue,
            Err(e) => {
                debug!(error = %e, "DTLS association ended");
                break;
            }
        }
    }
    let _ = events.send(Event::DtlsClosed { peer }).await;
}

/// One forwarding loop: packets of the calls pinned to it, in arrival order.
pub async fn worker_loop(
    mut rx: mpsc::Receiver<WorkerMsg>,
    packets: Arc<PacketQueue>,
    media: Arc<MediaSocket>,
    m: Arc<Metrics>,
    tap: Option<MediaTap>,
    events: EventTx,
) {
    let mut fwd = Forwarder::new(tap);
    let mut links = LinkSend::default();
    // Reused between batches: the arena and transmit list grow to the working size once.
    let mut out = Outbox::with_capacity(512, 512 * 1500);
    let mut arrivals: Vec<Instant> = Vec::with_capacity(WORKER_BATCH);
    // Reused buffer for GSO sends: no allocation per batch after warm-up.
    let mut gso: Vec<u8> = Vec::with_capacity(64 * 1500);
    loop {
        // Control first: a participant's AddPeer is applied before the packets that
        // followed it into the ring.
        if !drain_control(&mut rx, &mut fwd, &mut links) {
            return;
        }
        let mut n = 0;
        // A round also ends when the outbox holds ARENA_CAP bytes, so a large call's
        // fan-out (256 packets x every receiver) cannot grow the arena, which keeps its
        // high-water mark, to tens of MB.
        while n < WORKER_BATCH && out.arena().len() < ARENA_CAP {
            let Some(mut p) = packets.pop() else { break };
            n += 1;
            let mut r = forward(&mut fwd, &mut p, &mut out);
            if r == Err(DropReason::NotConnected) {
                // Its AddPeer may have been queued after this round began (a join, or
                // the target of a merge): apply what is pending and try once more.
                if !drain_control(&mut rx, &mut fwd, &mut links) {
                    return;
                }
                r = forward(&mut fwd, &mut p, &mut out);
            }
            match r {
                Ok(_) => arrivals.push(p.at),
                Err(reason) => {
                    match reason {
                        DropReason::SrtpAuthFailed => m.srtp_auth_failures.increment(1),
                        DropReason::SrtpReplay => m.srtp_replay_failures.increment(1),
                        _ => {}
                    }
                    m.dropped(reason);
                }
            }
        }
        if n == 0 {
            tokio::select! {
                _ = packets.wait() => {}
                msg = rx.recv() => match msg {
                    Some(msg) => worker_control(&mut fwd, &mut links, msg),
                    None => return,
                },
            }
            continue;
        }
        // Liveness of the participants whose packets authenticated (never waits: an
        // undelivered report is due again with the participant's next packet), and the
        // receivers' copies that could not be protected.
        fwd.take_activity(|peer| events.try_send(Event::Activity { peer }).is_ok());
        fwd.take_receiver_drops(|reason, n| m.dropped_n(reason, n));
        fwd.take_retransmits(|kind, n| m.retransmits(kind, n));
        m.layer_switches.increment(fwd.take_layer_switches());
        m.probe_padding
            .increment(fwd.take_probes(|result, n| m.probes(result, n)));
        fwd.take_estimates(|e| m.receiver_estimate.record(e as f64));
        let (pauses, paused) = fwd.take_pauses();
        if pauses > 0 || paused != 0 {
            m.video_pauses.increment(pauses);
            m.paused_tracks.increment(paused as f64);
        }
        // The round stopped short of an empty ring: more is probably waiting.
        let more = n == WORKER_BATCH || out.arena().len() >= ARENA_CAP;
        send_all(&media, &mut out, &mut gso, &mut links, &m).await;
        let now = Instant::now();
        for at in arrivals.drain(..) {
            m.forwarding_latency.record(now.duration_since(at));
        }
        if more {
            // More is waiting: let the receive loop (often on this same thread) run
            // between batches.
            tokio::task::yield_now().await;
        } else {
            // The ring, its Notify and the socket's try_io use no cooperative budget, so
            // under a steady trickle this loop would never give its thread back and a
            // task it woke (a merge's target loop, say) could starve in the LIFO slot.
            tokio::task::coop::consume_budget().await;
        }
    }
}

/// One packet through the forwarder, at its arrival time.
fn forward(fwd: &mut Forwarder, p: &mut Packet, out: &mut Outbox) -> Result<usize, DropReason> {
    fwd.set_time(p.at);
    if p.rtcp {
        fwd.on_rtcp(p.peer, &p.data, out)
    } else {
        fwd.on_rtp_in_place(p.peer, &mut p.data, out)
    }
}

/// Apply every pending control message; false once the relay has dropped the sender.
fn drain_control(
    rx: &mut mpsc::Receiver<WorkerMsg>,
    fwd: &mut Forwarder,
    links: &mut LinkSend,
) -> bool {
    loop {
        match rx.try_recv() {
            Ok(msg) => worker_control(fwd, links, msg),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
}

/// Packets a forwarding loop takes per round before sending.
const WORKER_BATCH: usize = 256;
/// Outbox bytes after which a round stops taking packets and sends: a 1:1 call's full
/// round is about 0.3 MiB, so only calls with many receivers reach it.
const ARENA_CAP: usize = 2 << 20;

/// A control message for a forwarding loop: its link ends' destinations, or its
/// forwarder's.
fn worker_control(fwd: &mut Forwarder, links: &mut LinkSend, msg: WorkerMsg) {
    match msg {
        WorkerMsg::LinkOut(addr, Some(o)) => {
            links.out.insert(addr, o);
        }
        WorkerMsg::LinkOut(addr, None) => {
            links.out.remove(&addr);
        }
        msg => control(fwd, msg),
    }
}

pub(super) fn control(fwd: &mut Forwarder, msg: WorkerMsg) {
    match msg {
        WorkerMsg::AddPeer {
            peer,
            call,
            addr,
            inbound,
            outbound,
            tables,
        } => fwd.add_peer(peer, call, addr, *inbound, *outbound, *tables),
        WorkerMsg::SetLink {
            peer,
            ssrcs,
            video,
            repairs,
            receiving,
            simulcast,
        } => {
            if let Err(e) = fwd.set_link(peer, ssrcs, video, repairs, receiving, &simulcast) {
                warn!(error = %e, "a node link's simulcast tracks are refused");
            }
        }
        WorkerMsg::LinkOut(..) => {}
        WorkerMsg::RemovePeer(p) => fwd.remove_peer(p),
        WorkerMsg::Receive(p, ssrcs) => fwd.set_receiving(p, ssrcs),
        WorkerMsg::MaxHeight(p, track, height) => {
            fwd.set_max_height(p, track, height);
        }
        WorkerMsg::SetAddr(peer, addr) => {
            fwd.set_addr(peer, addr);
        }
        WorkerMsg::TakePeer(peer, reply) => {
            if let Some(t) = fwd.take_peer(peer) {
                // The driver stopped waiting only if it is shutting down.
                let _ = reply.send(t);
            }
        }
    }
}

/// Send a batch of transmits, then clear it. Consecutive packets to the same receiver
/// whose sizes allow it (all equal, the last possibly shorter) go out in one UDP GSO
/// syscall: a video frame's packets to one receiver are exactly that. Such a run is
/// normally contiguous in the outbox arena and is sent from there; `gso` is the reused
/// fallback for a run that is not.
async fn send_all(
    media: &MediaSocket,
    out: &mut Outbox,
    gso: &mut Vec<u8>,
    links: &mut LinkSend,
    m: &Metrics,
) {
    let ts = out.transmits();
    // (packets, bytes) sent: RTP, RTCP.
    let mut sent = [(0u64, 0u64); 2];
    let mut i = 0;
    while i < ts.len() {
        let to = ts[i].to;
        let size = ts[i].len;
        if is_link_addr(&to) {
            let t = &ts[i];
            if links.send(&to, t.rtcp, out.data(t), m) {
                let k = usize::from(t.rtcp);
                sent[k].0 += 1;
                sent[k].1 += t.len as u64;
            }
            i += 1;
            continue;
        }
        let j = gso_run_end(i, ts.len(), media.gso_segments_for(size), |k| {
            (ts[k].to, ts[k].len)
        });
        let run = &ts[i..j];
        let contiguous = run.windows(2).all(|w| w[1].start == w[0].start + w[0].len);
        let result = if j - i == 1 {
            media.send(to, out.data(&ts[i])).await
        } else if contiguous {
            let end = ts[j - 1].start + ts[j - 1].len;
            media
                .send_segments(to, &out.arena()[ts[i].start..end], Some(size))
                .await
        } else {
            gso.clear();
            for t in run {
                gso.extend_from_slice(out.data(t));
            }
            media.send_segments(to, gso, Some(size)).await
        };
        match &result {
            Ok(()) => {
                for t in run {
                    let k = usize::from(t.rtcp);
                    sent[k].0 += 1;
                    sent[k].1 += t.len as u64;
                }
            }
            Err(e) => {
                debug!(error = %e, "media send failed");
                m.dropped_n(DropReason::SendFailed, run.len() as u64);
            }
        }
        i = j;
    }
    // Counted per batch, not per packet (shared atomics: 1.7 % of the relay's CPU at
    // 400k packets/s).
    for (k, (packets, bytes)) in sent.into_iter().enumerate() {
        if packets > 0 {
            let (p, b) = if k == 1 {
                (&m.forwarded_packets_rtcp, &m.forwarded_bytes_rtcp)
            } else {
                (&m.forwarded_packets_rtp, &m.forwarded_bytes_rtp)
            };
            p.increment(packets);
            b.increment(bytes);
        }
    }
    out.clear();
}
