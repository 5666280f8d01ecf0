//! A cluster node's half of calls that span nodes (a cascade), in the control plane's
//! driver.
//!
//! A call has one owner node, claimed in the directory by the first node a joiner of
//! the call reaches: its plane holds the call (participants, negotiation, MLS ordering,
//! policy). A joiner that reaches another node (its edge) keeps its WebSocket, ICE, DTLS
//! and SRTP there; the edge carries its signalling to the owner over the node link
//! (`open`, `text`, `gone`), and the owner's plane sees it as a connection like any other
//! whose media address and DTLS fingerprint are the edge's. The plane's commands for it
//! go back the same way (`deliver`, `close`, `ice`, `attach`, `receive`, `remove`), and
//! the edge's media news (`keyed`, `activity`, `dtls_failed`, `dtls_closed`) comes to it.
//!
//! Media: every node of the call holds, in the call's forwarding loop, one link end per
//! other node of the call, a peer whose hop is the link (see [`crate::hop::MediaHop`]).
//! The owner says which tracks each end sends and is sent (`route`, `unroute`; see
//! [`crate::core::cascade`]); the receiving node of each pair chooses the flow ids of
//! the tracks it is sent (`flows`), so flows never collide on a link.

use super::driver::Driver;
use super::events::{Event, EventTx, KeyedMedia};
use super::media::{is_link_addr, link_addr, LinkOut, Packet, PacketQueue, RecvCtl, WorkerMsg};
use crate::cluster::directory::Directory;
use crate::cluster::link::{Control, LinkEvent, Links, MediaDrop};
use crate::core::cascade::{CallRoutes, LinkEnd};
use crate::core::forward::{PeerTables, PeerTablesWire, LINK_PT_BASE};
use crate::core::plane::bucket::Bucket;
use crate::core::plane::{
    CloseReason, ConnId, ControlPlane, IcePeer, Input, MediaEndpoint, Output, SenderInfo,
};
use crate::core::{CallKey, PeerId};
use crate::hop::MediaHop;
use crate::metrics::Metrics;
use blindrelay_protocol::sdp::{Codec, Fingerprint};
use blindrelay_protocol::signal::{ClientMessage, ErrorCode, ServerMessage};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Ids this node gives what it holds for other nodes (participants it serves for an
/// owner elsewhere, link ends, sessions it carries, calls owned elsewhere) start here, far
/// above its own plane's, which count from 1.
const ALIAS_BASE: u64 = 1 << 48;

/// Bytes allocated at a time for packets arriving on links: about 50 full-size packets.
const LINK_CHUNK: usize = 64 * 1024;

/// How long a joiner's edge waits for a link to its call's owner.
const OWNER_DIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Frames a connection may send while the directory is asked where its call lives.
const MAX_HELD_FRAMES: usize = 32;

/// Where media arriving on links goes: by peer node and flow, the forwarding loop and
/// the link end it comes from.
type LinkIn = Arc<RwLock<HashMap<String, HashMap<u64, (usize, PeerId)>>>>;

/// Flows a far node chose (track SSRC and flow, the call's RTCP flow) before this node
/// held its end toward it.
type Flows = (Vec<(u32, u64)>, u64);

type OwnedIds = Arc<Mutex<HashMap<String, BTreeMap<String, String>>>>;

/// Where a connection's frames go.
enum Route {
    /// The directory is being asked; its frames wait, in order.
    Resolving(Vec<String>),
    /// This node's plane holds its call.
    Local,
    /// The owner node's plane does; `greeted` until its answer to the hello (already
    /// answered here) has been swallowed. `rate`: the connection's message rate, held here
    /// as the owner's plane holds it, so that one client cannot fill the link's control
    /// queue (which closes the link, and every call on it).
    Remote {
        owner: String,
        greeted: bool,
        rate: Bucket,
    },
}

/// A participant this node serves for another node's plane.
struct Served {
    owner: String,
    peer: u64,
    call: String,
    ufrag: String,
}

/// A call whose media passes through this node: its forwarding loop and its link ends.
struct LocalCall {
    /// The node whose plane holds the call.
    owner: String,
    key: CallKey,
    worker: usize,
    ends: HashMap<String, End>,
}

/// This node's end of the link toward one other node, in one call.
struct End {
    peer: PeerId,
    addr: SocketAddr,
    far_quic: SocketAddr,
    /// The flows this node chose for the far node's tracks, and for the call's RTCP.
    flows_in: Vec<(u32, u64)>,
    rtcp_in: u64,
}

/// A call this node's plane holds.
#[derive(Default)]
struct Owned {
    call: String,
    routes: CallRoutes,
    sent: BTreeMap<(String, String), LinkEnd>,
}

/// What a node needs to take part in calls across nodes.
pub struct CascadeSetup {
    pub node: String,
    pub quic: SocketAddr,
    pub links: Links,
    pub dir: Directory,
    /// How long a call's owner claim lives without a refresh.
    pub call_ttl: Duration,
    pub refresh: Duration,
    pub media: MediaEndpoint,
    pub workers: usize,
    pub queues: Vec<Arc<PacketQueue>>,
    pub events: EventTx,
    pub metrics: Arc<Metrics>,
    /// `signal.messages_per_second` and `signal.message_burst`.
    pub message_rate: (u32, u32),
}

pub struct Cascade {
    me: String,
    quic: SocketAddr,
    links: Links,
    dir: Directory,
    call_ttl: Duration,
    events: EventTx,
    message_rate: (u32, u32),
    metrics: Arc<Metrics>,
    media: MediaEndpoint,
    workers: usize,
    next_worker: usize,
    next_id: u64,
    link_in: LinkIn,
    // As an edge.
    routes: HashMap<ConnId, Route>,
    hellos: HashMap<ConnId, String>,
    served: HashMap<PeerId, Served>,
    alias: HashMap<(String, u64), PeerId>,
    keyed: HashMap<PeerId, Box<KeyedMedia>>,
    // As an owner.
    via: HashMap<ConnId, (String, u64)>,
    via_conn: HashMap<(String, u64), ConnId>,
    served_by: HashMap<PeerId, String>,
    peer_call: HashMap<PeerId, CallKey>,
    /// Public ids of the participants of owned calls.
    public: HashMap<PeerId, String>,
    owned: HashMap<CallKey, Owned>,
    /// The calls this node owns and their members (participant -> node), for the
    /// directory.
    owned_ids: OwnedIds,
    // Every node.
    calls: HashMap<String, LocalCall>,
    early_flows: HashMap<(String, String), Flows>,
}

fn fingerprint_text(f: &Fingerprint) -> String {
    let hex: Vec<String> = f.sha256.iter().map(|b| format!("{b:02X}")).collect();
    format!("sha-256 {}", hex.join(":"))
}

/// Whether a datagram on a link is RTCP (RFC 5761 §4: payload types 64-95 with the
/// marker bit are RTCP's 192-223).
fn is_rtcp(packet: &[u8]) -> bool {
    packet.get(1).is_some_and(|b| (192..=223).contains(b))
}

impl Cascade {
    /// Start serving links: their media to the forwarding loops, their news to the
    /// driver; and keep this node's call claims alive.
    pub fn start(s: CascadeSetup) -> Cascade {
        let link_in: LinkIn = Arc::default();
        {
            let link_in = link_in.clone();
            let queues = s.queues.clone();
            let metrics = s.metrics.clone();
            let events = s.events.clone();
            // Packets from links are copied out of shared chunks, as the framer does on the
            // way out: a chunk is reused once its packets are forwarded, so a packet costs
            // no allocation of its own.
            let chunk = Mutex::new(bytes::BytesMut::new());
            s.links.serve(
                Arc::new(move |peer: &str, flow: u64, packet: &[u8]| {
                    let t = link_in.read().unwrap_or_else(|p| p.into_inner());
                    let Some(&(w, end)) = t.get(peer).and_then(|m| m.get(&flow)) else {
                        return false;
                    };
                    let data = {
                        let mut c = chunk.lock().unwrap_or_else(|p| p.into_inner());
                        if c.capacity() - c.len() < packet.len() {
                            c.reserve(LINK_CHUNK.max(packet.len()));
                        }
                        c.extend_from_slice(packet);
                        c.split()
                    };
                    let p = Packet {
                        peer: end,
                        rtcp: is_rtcp(packet),
                        data,
                        at: Instant::now(),
                    };
                    if queues.get(w).is_none_or(|q| q.push(p).is_err()) {
                        metrics
                            .cluster_media_dropped(MediaDrop::QueueFull)
                            .increment(1);
                    }
                    true
                }),
                Arc::new(move |e| events.try_send(Event::Link(e)).is_ok()),
            );
        }
        let owned_ids: OwnedIds = Arc::default();
        {
            let (dir, me, ids, ttl) =
                (s.dir.clone(), s.node.clone(), owned_ids.clone(), s.call_ttl);
            let metrics = s.metrics.clone();
            let every = s.refresh;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let calls: Vec<(String, Vec<(String, String)>)> = ids
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .map(|(c, m)| (c.clone(), m.clone().into_iter().collect()))
                        .collect();
                    if let Err(e) = dir.refresh_calls(&me, &calls, ttl).await {
                        metrics.cluster_directory_error("call_refresh").increment(1);
                        warn!(error = %e, "call claims not refreshed");
                    }
                }
            });
        }
        Cascade {
            me: s.node,
            quic: s.quic,
            links: s.links,
            dir: s.dir,
            call_ttl: s.call_ttl,
            events: s.events,
            message_rate: s.message_rate,
            metrics: s.metrics.clone(),
            media: s.media,
            workers: s.workers.max(1),
            next_worker: 0,
            next_id: ALIAS_BASE,
            link_in,
            routes: HashMap::new(),
            hellos: HashMap::new(),
            served: HashMap::new(),
            alias: HashMap::new(),
            keyed: HashMap::new(),
            via: HashMap::new(),
            via_conn: HashMap::new(),
            served_by: HashMap::new(),
            peer_call: HashMap::new(),
            public: HashMap::new(),
            owned: HashMap::new(),
            owned_ids,
            calls: HashMap::new(),
            early_flows: HashMap::new(),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Send a control message to `node`; without a live link it is lost, and the link's
    /// loss is dealt with when the link reports it down.
    fn send(&self, node: &str, msg: Control) {
        match self.links.get(node) {
            Some(l) => {
                if let Err(e) = l.send_control(msg) {
                    warn!(peer = %node, error = %e, "control message not sent");
                }
            }
            None => debug!(peer = %node, "no link: control message not sent"),
        }
    }

    /// Ask the directory where `call` lives, link to its owner if that is another node,
    /// and tell the driver.
    fn resolve(&self, conn: ConnId, call: String) {
        let (dir, links, me, ttl, events) = (
            self.dir.clone(),
            self.links.clone(),
            self.me.clone(),
            self.call_ttl,
            self.events.clone(),
        );
        tokio::spawn(async move {
            let owner = async {
                let owner = dir
                    .claim_call(&call, &me, ttl)
                    .await
                    .map_err(|e| e.to_string())?;
                if owner == me {
                    return Ok(None);
                }
                let rec = dir
                    .node(&owner)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("owner node {owner} is not listed"))?;
                let addr = tokio::net::lookup_host(&rec.quic)
                    .await
                    .map_err(|e| e.to_string())?
                    .next()
                    .ok_or_else(|| format!("no address for {}", rec.quic))?;
                // A dead owner's record outlives it by up to `node_ttl`: do not wait for
                // QUIC's idle timeout to learn that it does not answer.
                tokio::time::timeout(OWNER_DIAL_TIMEOUT, links.connect(&owner, addr))
                    .await
                    .map_err(|_| format!("owner node {owner} did not answer"))?
                    .map_err(|e| e.to_string())?;
                Ok(Some(owner))
            }
            .await;
            let _ = events.send(Event::Routed { conn, owner }).await;
        });
    }
}

impl Driver {
    /// The local alias of the participant `peer` that node `from` owns and this node
    /// serves, and its forwarding loop.
    fn served_loop(
        &mut self,
        from: &str,
        peer: u64,
    ) -> Option<(PeerId, tokio::sync::mpsc::Sender<WorkerMsg>)> {
        let c = self.cascade();
        let alias = *c.alias.get(&(from.to_owned(), peer))?;
        let worker = c
            .served
            .get(&alias)
            .and_then(|s| c.calls.get(&s.call))
            .map(|lc| lc.worker)?;
        Some((alias, self.media.workers.get(worker)?.clone()))
    }

    fn cascade(&mut self) -> &mut Cascade {
        // Only called on a cluster node's driver.
        self.cascade
            .as_mut()
            .unwrap_or_else(|| unreachable!("a cascade event on a node without a cascade"))
    }

    /// An event on a cluster node: handled here if it concerns a call another node holds
    /// (or the cascade itself), else handed back for the plane.
    pub(super) async fn cascade_event(
        &mut self,
        now: Instant,
        plane: &mut ControlPlane,
        ev: Event,
    ) -> Option<Event> {
        match ev {
            Event::Text { conn, text, permit } => {
                let c = self.cascade();
                let (per_second, burst) = c.message_rate;
                match c.routes.get_mut(&conn) {
                    Some(Route::Remote { owner, rate, .. }) => {
                        if rate.take(now, f64::from(per_second), burst) {
                            let owner = owner.clone();
                            c.send(
                                &owner,
                                Control::Text {
                                    session: conn,
                                    text,
                                },
                            );
                        } else {
                            // Dropped, counted and answered here, as the owner's plane would.
                            c.metrics
                                .rate_limited(crate::core::budget::RateLimit::Messages);
                            let m = ServerMessage::Error {
                                code: ErrorCode::RateLimited,
                                message: format!(
                                    "more than {per_second} messages a second: dropped"
                                ),
                            };
                            if let Some(q) = self.conns.get(&conn) {
                                let _ =
                                    q.push(serde_json::to_string(&m).unwrap_or_else(|_| {
                                        unreachable!("ServerMessage serializes")
                                    }));
                            }
                        }
                        None
                    }
                    Some(Route::Resolving(held)) => {
                        if held.len() >= MAX_HELD_FRAMES {
                            if let Some(q) = self.conns.get(&conn) {
                                q.close("rate_limited");
                            }
                        } else {
                            held.push(text);
                        }
                        None
                    }
                    Some(Route::Local) => Some(Event::Text { conn, text, permit }),
                    None => match serde_json::from_str::<ClientMessage>(&text) {
                        Ok(ClientMessage::Hello { .. }) => {
                            c.hellos.insert(conn, text.clone());
                            Some(Event::Text { conn, text, permit })
                        }
                        Ok(ClientMessage::Join { call, .. }) if c.hellos.contains_key(&conn) => {
                            c.routes.insert(conn, Route::Resolving(vec![text]));
                            c.resolve(conn, call);
                            None
                        }
                        _ => Some(Event::Text { conn, text, permit }),
                    },
                }
            }
            Event::Disconnected { conn } => {
                let c = self.cascade();
                c.hellos.remove(&conn);
                match c.routes.remove(&conn) {
                    Some(Route::Remote { owner, .. }) => {
                        c.send(&owner, Control::Gone { session: conn });
                        self.conns.remove(&conn);
                        None
                    }
                    _ => Some(Event::Disconnected { conn }),
                }
            }
            Event::Routed { conn, owner } => {
                self.routed(now, plane, conn, owner);
                None
            }
            Event::Keyed { peer, media } => {
                let c = self.cascade();
                match c.served.get(&peer) {
                    Some(s) => {
                        let (owner, p) = (s.owner.clone(), s.peer);
                        c.keyed.insert(peer, media);
                        c.send(&owner, Control::Keyed { peer: p });
                        None
                    }
                    None => Some(Event::Keyed { peer, media }),
                }
            }
            Event::Activity { peer } => self.served_news(peer, Event::Activity { peer }, |p| {
                Control::Activity { peer: p }
            }),
            Event::DtlsFailed { peer } => self.served_news(peer, Event::DtlsFailed { peer }, |p| {
                Control::DtlsFailed { peer: p }
            }),
            Event::DtlsClosed { peer } => self.served_news(peer, Event::DtlsClosed { peer }, |p| {
                Control::DtlsClosed { peer: p }
            }),
            Event::Link(e) => {
                self.link_event(now, plane, e).await;
                None
            }
            Event::Shutdown { done } => {
                // The clients this node carries for other nodes move too.
                let c = self.cascade();
                let carried: Vec<(ConnId, String)> = c
                    .routes
                    .iter()
                    .filter_map(|(k, r)| match r {
                        Route::Remote { owner, .. } => Some((*k, owner.clone())),
                        _ => None,
                    })
                    .collect();
                for (conn, owner) in carried {
                    let c = self.cascade();
                    c.send(&owner, Control::Gone { session: conn });
                    c.routes.remove(&conn);
                    if let Some(q) = self.conns.get(&conn) {
                        q.close(CloseReason::Shutdown.as_str());
                    }
                }
                Some(Event::Shutdown { done })
            }
            e => Some(e),
        }
    }

    /// Media-path news about a participant served here for another node's plane goes
    /// there; any other is the local plane's.
    fn served_news(
        &mut self,
        peer: PeerId,
        ev: Event,
        msg: impl FnOnce(u64) -> Control,
    ) -> Option<Event> {
        let c = self.cascade();
        match c.served.get(&peer) {
            Some(s) => {
                let owner = s.owner.clone();
                let m = msg(s.peer);
                c.send(&owner, m);
                None
            }
            None => Some(ev),
        }
    }

    fn routed(
        &mut self,
        now: Instant,
        plane: &mut ControlPlane,
        conn: ConnId,
        owner: Result<Option<String>, String>,
    ) {
        let c = self.cascade();
        let Some(Route::Resolving(held)) = c.routes.remove(&conn) else {
            // The client left meanwhile.
            return;
        };
        match owner {
            Ok(Some(owner)) => {
                let hello = c.hellos.remove(&conn).unwrap_or_default();
                // This node's plane forgets the connection (it was only signed in); the
                // owner's plane signs it in again and holds it from now on.
                plane.handle_input(now, Input::Disconnected { conn });
                c.send(
                    &owner,
                    Control::Open {
                        session: conn,
                        media: c.media.addr,
                        fingerprint: fingerprint_text(&c.media.fingerprint),
                    },
                );
                c.send(
                    &owner,
                    Control::Text {
                        session: conn,
                        text: hello,
                    },
                );
                let carried = 1 + held.len();
                for text in held {
                    c.send(
                        &owner,
                        Control::Text {
                            session: conn,
                            text,
                        },
                    );
                }
                info!(owner = %owner, "a joiner's call is held by another node");
                // Charged for the frames it already carried (the hello and those held), as
                // the owner's plane charged them.
                let (per_second, burst) = c.message_rate;
                let mut rate = Bucket::full(burst, now);
                for _ in 0..carried {
                    rate.take(now, f64::from(per_second), burst);
                }
                c.routes.insert(
                    conn,
                    Route::Remote {
                        owner,
                        greeted: false,
                        rate,
                    },
                );
            }
            Err(e) => {
                // No call is split between two owners: the client tries again (the
                // owner's record expires within `node_ttl` if it died).
                warn!(error = %e, "call owner unreachable: the joiner must retry");
                c.hellos.remove(&conn);
                plane.handle_input(now, Input::Disconnected { conn });
                if let Some(q) = self.conns.get(&conn) {
                    q.close("owner_unavailable");
                }
            }
            Ok(None) => {
                c.hellos.remove(&conn);
                c.routes.insert(conn, Route::Local);
                for text in held {
                    plane.handle_input(now, Input::Text { conn, text });
                }
            }
        }
    }

    async fn link_event(&mut self, now: Instant, plane: &mut ControlPlane, e: LinkEvent) {
        match e {
            LinkEvent::Up(node) => {
                // Flows toward it may have waited for the link.
                let c = self.cascade();
                for (call, lc) in &c.calls {
                    if let Some(end) = lc.ends.get(&node) {
                        c.send(
                            &node,
                            Control::Flows {
                                call: call.clone(),
                                flows: end.flows_in.clone(),
                                rtcp: end.rtcp_in,
                            },
                        );
                    }
                }
            }
            LinkEvent::Down(node) => self.node_lost(now, plane, &node).await,
            LinkEvent::Message(from, m) => self.link_message(now, plane, from, *m).await,
        }
    }

    /// A link is gone: the sessions carried to or from that node end, its participants
    /// served here go, and link ends toward it close.
    async fn node_lost(&mut self, now: Instant, plane: &mut ControlPlane, node: &str) {
        warn!(peer = %node, "node link lost");
        let c = self.cascade();
        let carried: Vec<ConnId> = c
            .routes
            .iter()
            .filter(|(_, r)| matches!(r, Route::Remote { owner, .. } if owner == node))
            .map(|(k, _)| *k)
            .collect();
        let from_there: Vec<ConnId> = c
            .via
            .iter()
            .filter(|(_, (n, _))| n == node)
            .map(|(k, _)| *k)
            .collect();
        let served: Vec<PeerId> = c
            .served
            .iter()
            .filter(|(_, s)| s.owner == node)
            .map(|(k, _)| *k)
            .collect();
        for conn in carried {
            self.cascade().routes.remove(&conn);
            // The client joins again (through this node or another): its call has moved.
            if let Some(q) = self.conns.get(&conn) {
                q.close("node_lost");
            }
        }
        for peer in served {
            self.remove_served(peer).await;
        }
        for conn in from_there {
            let c = self.cascade();
            if let Some(k) = c.via.remove(&conn) {
                c.via_conn.remove(&k);
            }
            plane.handle_input(now, Input::Disconnected { conn });
        }
        let calls: Vec<(String, bool)> = self
            .cascade()
            .calls
            .iter()
            .map(|(k, lc)| (k.clone(), lc.owner == node))
            .collect();
        for (call, owned_there) in calls {
            if owned_there {
                // Its owner is gone: the call is rebuilt by whichever node its
                // participants reach next.
                self.drop_call(&call).await;
            } else {
                self.unroute(&call, node).await;
            }
        }
    }

    async fn remove_served(&mut self, peer: PeerId) {
        let c = self.cascade();
        let Some(s) = c.served.remove(&peer) else {
            return;
        };
        c.alias.remove(&(s.owner.clone(), s.peer));
        if let Some(m) = c.keyed.remove(&peer) {
            self.closing_task(m.dtls);
        }
        self.media_remove(peer, s.ufrag).await;
        self.forget_call_if_idle(&s.call);
    }

    /// The call's forwarding state here, made on first use: an owned call's is its
    /// plane's; another node's call gets a key and loop of this node's.
    async fn local_call(&mut self, call: &str, owner: &str) -> (CallKey, usize) {
        match self.cascade().calls.get(call) {
            Some(lc) if lc.owner == owner => return (lc.key, lc.worker),
            // The call moved (its old owner is gone): what was here of it goes.
            Some(_) => self.drop_call(call).await,
            None => {}
        }
        let c = self.cascade();
        let key = c.id();
        let worker = c.next_worker % c.workers;
        c.next_worker += 1;
        c.calls.insert(
            call.to_string(),
            LocalCall {
                owner: owner.to_string(),
                key,
                worker,
                ends: HashMap::new(),
            },
        );
        if let Some(cap) = &self.capture {
            cap.on_join(call, key);
        }
        (key, worker)
    }

    /// Drop everything of `call` here: its link ends and the participants served for it.
    async fn drop_call(&mut self, call: &str) {
        let c = self.cascade();
        let served: Vec<PeerId> = c
            .served
            .iter()
            .filter(|(_, s)| s.call == call)
            .map(|(k, _)| *k)
            .collect();
        let ends: Vec<String> = c
            .calls
            .get(call)
            .map(|lc| lc.ends.keys().cloned().collect())
            .unwrap_or_default();
        for far in ends {
            self.unroute(call, &far).await;
        }
        for p in served {
            self.remove_served(p).await;
        }
        self.cascade().calls.remove(call);
    }

    /// Forget a call another node holds once nothing of it is here.
    fn forget_call_if_idle(&mut self, call: &str) {
        let c = self.cascade();
        let in_use = c.served.values().any(|s| s.call == call)
            || c.calls.get(call).is_some_and(|lc| !lc.ends.is_empty())
            || c.owned.values().any(|o| o.call == call);
        if !in_use {
            c.calls.remove(call);
        }
    }

    async fn link_message(
        &mut self,
        now: Instant,
        plane: &mut ControlPlane,
        from: String,
        m: Control,
    ) {
        match m {
            Control::Hello { .. } | Control::Welcome { .. } => {}
            // As the owner.
            Control::Open {
                session,
                media,
                fingerprint,
            } => {
                let Ok(fingerprint) = Fingerprint::parse(&fingerprint) else {
                    warn!(peer = %from, "open with a bad fingerprint refused");
                    return;
                };
                let c = self.cascade();
                let conn = c.id();
                c.via.insert(conn, (from.clone(), session));
                c.via_conn.insert((from, session), conn);
                plane.handle_input(
                    now,
                    Input::ConnectedVia {
                        conn,
                        media: MediaEndpoint {
                            addr: media,
                            fingerprint,
                        },
                    },
                );
            }
            Control::Text { session, text } => {
                if let Some(conn) = self.cascade().via_conn.get(&(from, session)) {
                    plane.handle_input(now, Input::Text { conn: *conn, text });
                }
            }
            Control::Gone { session } => {
                let c = self.cascade();
                if let Some(conn) = c.via_conn.remove(&(from, session)) {
                    c.via.remove(&conn);
                    plane.handle_input(now, Input::Disconnected { conn });
                }
            }
            Control::Keyed { peer } => {
                self.owner_news(now, plane, &from, peer, |peer| Input::Keyed { peer })
            }
            Control::Activity { peer } => {
                self.owner_news(now, plane, &from, peer, |peer| Input::Activity { peer })
            }
            Control::DtlsFailed { peer } => {
                self.owner_news(now, plane, &from, peer, |peer| Input::DtlsFailed { peer })
            }
            Control::DtlsClosed { peer } => {
                self.owner_news(now, plane, &from, peer, |peer| Input::DtlsClosed { peer })
            }
            // As an edge.
            Control::Deliver { session, text } => {
                let c = self.cascade();
                let Some(Route::Remote { owner, greeted, .. }) = c.routes.get_mut(&session) else {
                    return;
                };
                if *owner != from {
                    return;
                }
                if !*greeted {
                    *greeted = true;
                    // This node answered the hello already.
                    if serde_json::from_str::<ServerMessage>(&text)
                        .is_ok_and(|m| matches!(m, ServerMessage::Capabilities { .. }))
                    {
                        return;
                    }
                }
                if let Some(q) = self.conns.get(&session) {
                    if !q.push(text) {
                        debug!("message to a closed or slow connection dropped");
                    }
                }
            }
            Control::Close { session, reason } => {
                let c = self.cascade();
                if matches!(c.routes.get(&session), Some(Route::Remote { owner, .. }) if *owner == from)
                {
                    if let Some(q) = self.conns.get(&session) {
                        // The owner's plane names one of its own reasons.
                        let reason = CloseReason::ALL
                            .iter()
                            .find(|r| r.as_str() == reason)
                            .map_or("removed", |r| r.as_str());
                        q.close(reason);
                    }
                }
            }
            Control::Ice {
                session,
                peer,
                call,
                local_ufrag,
                local_pwd,
                remote_ufrag,
                fingerprint,
                ssrcs,
            } => {
                let c = self.cascade();
                if !matches!(c.routes.get(&session), Some(Route::Remote { owner, .. }) if *owner == from)
                {
                    return;
                }
                let Ok(fingerprint) = Fingerprint::parse(&fingerprint) else {
                    return;
                };
                let (call_key, worker) = self.local_call(&call, &from).await;
                let c = self.cascade();
                let alias = c.id();
                c.alias.insert((from.clone(), peer), alias);
                c.served.insert(
                    alias,
                    Served {
                        owner: from,
                        peer,
                        call: call.clone(),
                        ufrag: local_ufrag.clone(),
                    },
                );
                let p = IcePeer {
                    peer: alias,
                    conn: session,
                    call_key,
                    worker,
                    local_ufrag,
                    local_pwd,
                    remote_ufrag,
                    fingerprint,
                    ssrcs,
                };
                let _ = self.media.recv.send(RecvCtl::AddIce(Box::new(p))).await;
            }
            Control::Attach {
                peer,
                tables,
                participant,
            } => {
                let c = self.cascade();
                let Some(&alias) = c.alias.get(&(from, peer)) else {
                    return;
                };
                let Some(m) = c.keyed.remove(&alias) else {
                    return;
                };
                let Some(call) = c.served.get(&alias).map(|s| s.call.clone()) else {
                    return;
                };
                let Some((key, worker)) = c.calls.get(&call).map(|lc| (lc.key, lc.worker)) else {
                    return;
                };
                let sender = SenderInfo {
                    participant,
                    codecs: tables
                        .codecs
                        .iter()
                        .filter_map(|(pt, c)| Codec::ALL.get(usize::from(*c)).map(|c| (*pt, *c)))
                        .collect(),
                };
                let tables = match PeerTables::from_wire(*tables) {
                    Ok(t) => t,
                    Err(e) => {
                        warn!(error = %e, "a participant's tables from its owner refused");
                        return;
                    }
                };
                self.attach(alias, key, worker, tables, &sender, *m).await;
            }
            Control::Receive { peer, ssrcs } => {
                if let Some((alias, w)) = self.served_loop(&from, peer) {
                    let _ = w.send(WorkerMsg::Receive(alias, ssrcs)).await;
                }
            }
            Control::MaxHeight {
                peer,
                track,
                height,
            } => {
                if let Some((alias, w)) = self.served_loop(&from, peer) {
                    let _ = w.send(WorkerMsg::MaxHeight(alias, track, height)).await;
                }
            }
            Control::Remove { peer } => {
                let c = self.cascade();
                if let Some(&alias) = c.alias.get(&(from, peer)) {
                    self.remove_served(alias).await;
                }
            }
            // Every node of a call.
            Control::Route {
                call,
                peer_node,
                peer_quic,
                ssrcs,
                video,
                repairs,
                receiving,
                simulcast,
                keyframe_on_join,
            } => {
                let end = LinkEnd {
                    ssrcs,
                    video,
                    repairs,
                    receiving,
                    simulcast,
                    keyframe_on_join,
                };
                self.route(&from, &call, &peer_node, peer_quic, end).await
            }
            Control::Unroute { call, peer_node } => {
                if self
                    .cascade()
                    .calls
                    .get(&call)
                    .is_some_and(|lc| lc.owner == from)
                {
                    self.unroute(&call, &peer_node).await;
                }
            }
            Control::Flows { call, flows, rtcp } => self.flows(&call, &from, flows, rtcp).await,
        }
    }

    fn owner_news(
        &mut self,
        now: Instant,
        plane: &mut ControlPlane,
        from: &str,
        peer: u64,
        input: impl FnOnce(PeerId) -> Input,
    ) {
        // Only the node that serves a participant speaks for its media.
        if self.cascade().served_by.get(&peer).map(String::as_str) == Some(from) {
            plane.handle_input(now, input(peer));
        }
    }

    /// Hold (or update) this node's end toward `far` in `call`.
    async fn route(
        &mut self,
        owner: &str,
        call: &str,
        far: &str,
        far_quic: SocketAddr,
        end: LinkEnd,
    ) {
        let LinkEnd {
            ssrcs,
            video,
            repairs,
            receiving,
            simulcast,
            keyframe_on_join,
        } = end;
        let (key, worker) = self.local_call(call, owner).await;
        let Some(w) = self.media.workers.get(worker).cloned() else {
            return;
        };
        let c = self.cascade();
        let existing = c
            .calls
            .get(call)
            .and_then(|lc| lc.ends.get(far))
            .map(|e| e.peer);
        let peer = match existing {
            Some(p) => {
                let _ = w
                    .send(WorkerMsg::SetLink {
                        peer: p,
                        ssrcs: ssrcs.clone(),
                        video: video.clone(),
                        repairs,
                        receiving,
                        simulcast,
                    })
                    .await;
                p
            }
            None => {
                let peer = c.id();
                let addr = link_addr(peer);
                // Described to the capture like a participant: the far node's senders'
                // packets come in from this end, on the link's payload types.
                if let Some(cap) = &self.capture {
                    let sender = SenderInfo {
                        participant: format!("node:{far}"),
                        codecs: Codec::ALL
                            .into_iter()
                            .map(|k| (LINK_PT_BASE + k as u8, k))
                            .collect(),
                    };
                    cap.on_attach(peer, key, addr, &sender);
                }
                let mut tables = PeerTables::link(ssrcs.clone(), video, receiving);
                tables.repairs = repairs;
                tables.keyframe_on_join = keyframe_on_join;
                if let Err(e) = tables.set_link_layers(&simulcast) {
                    warn!(peer = %far, error = %e, "a node link's simulcast tracks are refused");
                }
                let c = self.cascade();
                let _ = w
                    .send(WorkerMsg::AddPeer {
                        peer,
                        call: key,
                        addr,
                        inbound: Box::new(MediaHop::Link),
                        outbound: Box::new(MediaHop::Link),
                        tables: Box::new(tables),
                    })
                    .await;
                if let Some(lc) = c.calls.get_mut(call) {
                    lc.ends.insert(
                        far.to_string(),
                        End {
                            peer,
                            addr,
                            far_quic,
                            flows_in: Vec::new(),
                            rtcp_in: 0,
                        },
                    );
                }
                peer
            }
        };
        // Flows for the far node's tracks: new ones get a number, gone ones are dropped.
        let mut fresh = Vec::new();
        let c = self.cascade();
        let Some(end) = c.calls.get(call).and_then(|lc| lc.ends.get(far)) else {
            return;
        };
        let mut flows_in: Vec<(u32, u64)> = end
            .flows_in
            .iter()
            .filter(|(s, _)| ssrcs.contains(s))
            .copied()
            .collect();
        let mut rtcp_in = end.rtcp_in;
        for s in &ssrcs {
            if !flows_in.iter().any(|(x, _)| x == s) {
                fresh.push(*s);
            }
        }
        for s in fresh {
            let f = c.id() - ALIAS_BASE;
            flows_in.push((s, f));
        }
        if rtcp_in == 0 {
            rtcp_in = c.id() - ALIAS_BASE;
        }
        {
            let mut t = c.link_in.write().unwrap_or_else(|p| p.into_inner());
            let m = t.entry(far.to_string()).or_default();
            m.retain(|_, (_, p)| *p != peer);
            for (_, f) in &flows_in {
                m.insert(*f, (worker, peer));
            }
            m.insert(rtcp_in, (worker, peer));
        }
        if let Some(end) = c.calls.get_mut(call).and_then(|lc| lc.ends.get_mut(far)) {
            end.flows_in = flows_in.clone();
            end.rtcp_in = rtcp_in;
        }
        let msg = Control::Flows {
            call: call.to_string(),
            flows: flows_in,
            rtcp: rtcp_in,
        };
        if c.links.get(far).is_some() {
            c.send(far, msg);
        } else if c.me.as_str() < far {
            // Of two nodes, the one with the lower id dials (both dialling at once would
            // make two links, one of which must go); the other waits for the link.
            // The link's `up` sends the flows.
            let (links, far) = (c.links.clone(), far.to_string());
            tokio::spawn(async move {
                if let Err(e) = links.connect(&far, far_quic).await {
                    warn!(peer = %far, error = %e, "no link to a node of a call");
                }
            });
        }
        // Flows the far node chose before this end existed.
        if let Some((flows, rtcp)) = c.early_flows.remove(&(call.to_string(), far.to_string())) {
            self.flows(call, far, flows, rtcp).await;
        }
    }

    async fn unroute(&mut self, call: &str, far: &str) {
        let c = self.cascade();
        let Some(lc) = c.calls.get_mut(call) else {
            return;
        };
        let worker = lc.worker;
        let Some(end) = lc.ends.remove(far) else {
            return;
        };
        {
            let mut t = c.link_in.write().unwrap_or_else(|p| p.into_inner());
            if let Some(m) = t.get_mut(far) {
                m.retain(|_, (_, p)| *p != end.peer);
            }
        }
        c.early_flows.remove(&(call.to_string(), far.to_string()));
        if let Some(w) = self.media.workers.get(worker) {
            let _ = w.send(WorkerMsg::RemovePeer(end.peer)).await;
            let _ = w.send(WorkerMsg::LinkOut(end.addr, None)).await;
        }
        if let Some(cap) = &self.capture {
            cap.on_leave(end.peer);
        }
        let _ = end.far_quic;
        self.forget_call_if_idle(call);
    }

    /// The far node chose flows for what this node sends it in `call`.
    async fn flows(&mut self, call: &str, far: &str, flows: Vec<(u32, u64)>, rtcp: u64) {
        let c = self.cascade();
        let end = c
            .calls
            .get(call)
            .and_then(|lc| lc.ends.get(far).map(|e| (lc.worker, e.addr)));
        let Some((worker, addr)) = end else {
            c.early_flows
                .insert((call.to_string(), far.to_string()), (flows, rtcp));
            return;
        };
        let Some(link) = c.links.get(far) else {
            return;
        };
        debug_assert!(is_link_addr(&addr));
        if let Some(w) = self.media.workers.get(worker) {
            let out = LinkOut {
                link,
                flows: flows.into_iter().collect(),
                rtcp,
            };
            let _ = w.send(WorkerMsg::LinkOut(addr, Some(Box::new(out)))).await;
        }
    }

    /// A plane output on a cluster node: carried to the node that serves the participant
    /// if that is another, and noted for the call's routes; handed back if it is local.
    pub(super) async fn cascade_output(&mut self, o: Output) -> Option<Output> {
        let me = self.cascade().me.clone();
        match o {
            Output::Send { conn, msg } => match self.cascade().via.get(&conn).cloned() {
                Some((node, session)) => {
                    let text = serde_json::to_string(&msg)
                        .unwrap_or_else(|_| unreachable!("ServerMessage serializes"));
                    self.cascade()
                        .send(&node, Control::Deliver { session, text });
                    None
                }
                None => Some(Output::Send { conn, msg }),
            },
            Output::Close { conn, reason } => match self.cascade().via.get(&conn).cloned() {
                Some((node, session)) => {
                    self.cascade().send(
                        &node,
                        Control::Close {
                            session,
                            reason: reason.as_str().to_string(),
                        },
                    );
                    None
                }
                None => Some(Output::Close { conn, reason }),
            },
            Output::CallStarted { call, call_key } => {
                let c = self.cascade();
                c.owned_ids
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(call.clone(), BTreeMap::new());
                c.owned.insert(
                    call_key,
                    Owned {
                        call: call.clone(),
                        ..Owned::default()
                    },
                );
                Some(Output::CallStarted { call, call_key })
            }
            Output::CallEnded { call, call_key } => {
                let c = self.cascade();
                c.owned_ids
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&call);
                if let Some(o) = c.owned.remove(&call_key) {
                    for (near, far) in o.sent.keys() {
                        if *near == c.me {
                            continue;
                        }
                        c.send(
                            near,
                            Control::Unroute {
                                call: call.clone(),
                                peer_node: far.clone(),
                            },
                        );
                    }
                }
                let (dir, me2) = (c.dir.clone(), c.me.clone());
                let call2 = call.clone();
                tokio::spawn(async move {
                    if let Err(e) = dir.release_call(&call2, &me2).await {
                        debug!(error = %e, "call claim not released (it expires)");
                    }
                });
                let ends: Vec<String> = c
                    .calls
                    .get(&call)
                    .map(|lc| lc.ends.keys().cloned().collect())
                    .unwrap_or_default();
                for far in ends {
                    self.unroute(&call, &far).await;
                }
                self.cascade().calls.remove(&call);
                Some(Output::CallEnded { call, call_key })
            }
            Output::IceAdd(p) => {
                let c = self.cascade();
                let call = c.owned.get(&p.call_key).map(|o| o.call.clone());
                if let Some(call) = &call {
                    // The owner's own media for the call is its plane's; what was here of
                    // the call under an owner that is gone goes first.
                    let stale = c
                        .calls
                        .get(call)
                        .is_some_and(|lc| lc.owner != me || lc.key != p.call_key);
                    if stale {
                        self.drop_call(call).await;
                    }
                    self.cascade()
                        .calls
                        .entry(call.clone())
                        .or_insert(LocalCall {
                            owner: me.clone(),
                            key: p.call_key,
                            worker: p.worker,
                            ends: HashMap::new(),
                        });
                }
                let c = self.cascade();
                c.peer_call.insert(p.peer, p.call_key);
                match c.via.get(&p.conn).cloned() {
                    Some((node, session)) => {
                        c.served_by.insert(p.peer, node.clone());
                        c.send(
                            &node,
                            Control::Ice {
                                session,
                                peer: p.peer,
                                call: call.unwrap_or_default(),
                                local_ufrag: p.local_ufrag,
                                local_pwd: p.local_pwd,
                                remote_ufrag: p.remote_ufrag,
                                fingerprint: fingerprint_text(&p.fingerprint),
                                ssrcs: p.ssrcs,
                            },
                        );
                        None
                    }
                    None => {
                        c.served_by.insert(p.peer, me);
                        Some(Output::IceAdd(p))
                    }
                }
            }
            Output::Attach {
                peer,
                call_key,
                worker,
                tables,
                sender,
            } => {
                let c = self.cascade();
                let node = c.served_by.get(&peer).cloned().unwrap_or(me.clone());
                if let Some(o) = c.owned.get_mut(&call_key) {
                    if let Some(m) = c
                        .owned_ids
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(&o.call)
                    {
                        m.insert(sender.participant.clone(), node.clone());
                    }
                    c.public.insert(peer, sender.participant.clone());
                    o.routes.set_member(
                        peer,
                        &node,
                        &tables.ssrcs,
                        &tables.video_ssrcs,
                        &tables.repairs,
                    );
                    let layers: Vec<Vec<u32>> = tables
                        .simulcast
                        .iter()
                        .map(|t| t.layers.ssrcs().to_vec())
                        .collect();
                    o.routes.set_layers(peer, &layers);
                    o.routes.set_keyframe_on_join(tables.keyframe_on_join);
                    if let Some(r) = &tables.receiving {
                        o.routes.set_receiving(peer, r);
                    }
                }
                let out = if node == me {
                    Some(Output::Attach {
                        peer,
                        call_key,
                        worker,
                        tables,
                        sender,
                    })
                } else {
                    let wire: PeerTablesWire = tables.to_wire();
                    c.send(
                        &node,
                        Control::Attach {
                            peer,
                            tables: Box::new(wire),
                            participant: sender.participant.clone(),
                        },
                    );
                    None
                };
                self.reroute(call_key).await;
                out
            }
            Output::Receive {
                peer,
                worker,
                ssrcs,
            } => {
                let c = self.cascade();
                let node = c.served_by.get(&peer).cloned().unwrap_or(me.clone());
                let key = c.peer_call.get(&peer).copied();
                if let Some(o) = key.and_then(|k| c.owned.get_mut(&k)) {
                    o.routes.set_receiving(peer, &ssrcs);
                }
                let out = if node == me {
                    Some(Output::Receive {
                        peer,
                        worker,
                        ssrcs,
                    })
                } else {
                    c.send(&node, Control::Receive { peer, ssrcs });
                    None
                };
                if let Some(k) = key {
                    self.reroute(k).await;
                }
                out
            }
            Output::MaxHeight {
                peer,
                worker,
                track,
                height,
            } => {
                let c = self.cascade();
                let node = c.served_by.get(&peer).cloned().unwrap_or(me.clone());
                if node == me {
                    Some(Output::MaxHeight {
                        peer,
                        worker,
                        track,
                        height,
                    })
                } else {
                    c.send(
                        &node,
                        Control::MaxHeight {
                            peer,
                            track,
                            height,
                        },
                    );
                    None
                }
            }
            Output::MediaRemove { peer, ufrag } => {
                let c = self.cascade();
                let node = c.served_by.remove(&peer).unwrap_or(me.clone());
                let key = c.peer_call.remove(&peer);
                let public = c.public.remove(&peer);
                if let Some(o) = key.and_then(|k| c.owned.get_mut(&k)) {
                    o.routes.remove(peer);
                    if let (Some(m), Some(p)) = (
                        c.owned_ids
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_mut(&o.call),
                        public,
                    ) {
                        m.remove(&p);
                    }
                }
                let out = if node == me {
                    Some(Output::MediaRemove { peer, ufrag })
                } else {
                    c.send(&node, Control::Remove { peer });
                    None
                };
                if let Some(k) = key {
                    self.reroute(k).await;
                }
                out
            }
            Output::Move { peer, .. } if self.cascade().served_by.get(&peer) != Some(&me) => {
                // The plane refuses merges that touch a participant another node serves;
                // should one get here, it stays where it is rather than half-move.
                warn!("a merge of a participant served by another node ignored");
                None
            }
            o => Some(o),
        }
    }

    /// Send the owned call's nodes the link ends that changed.
    async fn reroute(&mut self, call_key: CallKey) {
        let c = self.cascade();
        let Some(o) = c.owned.get_mut(&call_key) else {
            return;
        };
        let ends = o.routes.ends();
        let old = std::mem::replace(&mut o.sent, ends.clone());
        let call = o.call.clone();
        let mut local = Vec::new();
        for ((near, far), e) in &ends {
            if old.get(&(near.clone(), far.clone())) == Some(e) {
                continue;
            }
            let far_quic = if *far == c.me {
                Some(c.quic)
            } else {
                c.links.get(far).map(|l| l.conn.remote_address())
            };
            let Some(far_quic) = far_quic else {
                warn!(peer = %far, "no link to a node of an owned call");
                continue;
            };
            if *near == c.me {
                local.push((far.clone(), far_quic, e.clone()));
            } else {
                c.send(
                    near,
                    Control::Route {
                        call: call.clone(),
                        peer_node: far.clone(),
                        peer_quic: far_quic,
                        ssrcs: e.ssrcs.clone(),
                        video: e.video.clone(),
                        repairs: e.repairs.clone(),
                        receiving: e.receiving.clone(),
                        simulcast: e.simulcast.clone(),
                        keyframe_on_join: e.keyframe_on_join,
                    },
                );
            }
        }
        let mut gone = Vec::new();
        for (near, far) in old.keys() {
            if ends.contains_key(&(near.clone(), far.clone())) {
                continue;
            }
            if *near == c.me {
                gone.push(far.clone());
            } else {
                c.send(
                    near,
                    Control::Unroute {
                        call: call.clone(),
                        peer_node: far.clone(),
                    },
                );
            }
        }
        let me = self.cascade().me.clone();
        for (far, quic, e) in local {
            self.route(&me, &call, &far, quic, e).await;
        }
        for far in gone {
            self.unroute(&call, &far).await;
        }
    }
}
