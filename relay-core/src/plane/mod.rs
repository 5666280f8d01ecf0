//! The control plane, with one owner: signalling connections, sessions, calls, ICE
//! credentials, the lobby, invitations, parked calls, the MLS Delivery Service,
//! renegotiation and every timer.
//!
//! Sans-IO in the style of str0m and quinn-proto: the driver (`net::driver`) feeds
//! [`Input`]s and the time, and carries out the [`Output`]s it polls, in order. Nothing
//! here reads a clock, touches a socket or spawns a task, so every ordering and every
//! timer is testable with a virtual clock. Because one owner changes the state and emits
//! the events in the order it changed, a `participant_joined` cannot be lost between two
//! concurrent joins, and a refused request leaves nothing behind.
//!
//! # Parts
//!
//! [`ControlPlane`] (this file) is the thin plane: it dispatches each input, owns the
//! tables of connections and sessions, the call registry and the SSRC index, runs hello,
//! join, answer and removal (each touches several parts), and carries out what the parts
//! decide. Only the plane emits [`Output`]s and [`Report`]s; the parts never call each
//! other, they return decisions. Each part owns its state and has its own tests on a
//! virtual clock:
//!
//! - `timers.rs`, `Timers`: one deadline per `Timer` key, replaced when set again,
//!   cancelled with the state it serves, fired in (deadline, key) order.
//! - `lobby.rs`, `Lobby`: idle authenticated connections by `user@tenant`, invitations,
//!   parked calls and wrong-pickup-code buckets, each bounded; it sets and cancels its
//!   own timers in the `Timers` the plane lends it.
//! - `negotiator.rs`, `Negotiation` (one per session): its remote lines, the offers
//!   written for it, and each answer checked against the one outstanding offer.
//! - `mls_ds.rs`, `MlsDs` (one per group-E2EE call): KeyPackages, commit order, Welcomes
//!   and membership; it returns who gets what, or a typed `MlsRefused`.
//! - `sessions.rs`, `Conn` and `Session`: what the plane knows of each connection
//!   (authentication, message rate, broadcast budget, hello deadline) and participant
//!   (offer, ICE credentials, claimed SSRCs, its `Negotiation`).
//! - `features.rs`, `Feature`: chat and call features (invite, transfer, park, retrieve,
//!   merge, bots); a request is read into a `Feature`, then carried out with the lobby,
//!   the registry and removal. Features own no state: it is the lobby's and registry's.
//! - `bucket.rs`: the token bucket behind message rates and pickup-code attempts.
//! - `tests.rs`: the whole plane's behaviour, through its public API.
//!
//! # Flows
//!
//! - Join: `hello` verifies the token and puts the connection in the `Lobby`; `join`
//!   checks it (a live invitation from the `Lobby` admits to its call), admits it in the
//!   registry, claims its SSRCs, gives the session a `Negotiation`, sets its connect and
//!   consent timers, creates or joins the call's `MlsDs`, and renegotiates every member:
//!   `Negotiation::update` says whether to offer, `write_offer` writes it.
//! - Answer: `Negotiation::check_answer` (revision, mids, SSRC count), then the SSRC
//!   index (no SSRC of another), then `accept_answer` settles lines and says what the
//!   client now receives (`Output::Receive`); changes folded meanwhile are offered next.
//! - MLS commit: `MlsDs::commit` returns accepted (epoch, recipients, welcomed), stale,
//!   or refused; the plane charges the sender's broadcast budget and sends.
//! - Timeout: `Timers::pop_due` yields each due key; hello, consent and connect act on
//!   connections and sessions, invitation, parked and bucket timers go to the `Lobby`.
//! - Removal: the registry, the SSRC index, the session's timers, `MlsDs::left` (which
//!   may name a new group creator), then the others are told and renegotiate.
//!
//! [`ControlPlane::check_invariants`] checks what holds across the parts after every step.

use crate::budget::{self, BudgetRate, RateLimit};
use crate::calls::{CallRegistry, JoinRequest};
use crate::forward::PeerTables;
use crate::lines::Lines;
use crate::policy::CallingE2ee;
use crate::report::{RemovalReason, Report};
use crate::ssrcs::SsrcIndex;
use crate::token::{TokenRules, TokenVerifier};
use crate::{CallKey, PeerId};
use blindrelay_protocol::sdp::{
    self, Codec, CodecSet, Fingerprint, Numbering, RelayMedia, SentTrack,
};
use blindrelay_protocol::signal::{
    parse_client_message, CallMode, ClientMessage, E2eeOption, E2eeScheme, ErrorCode,
    ParticipantInfo, ServerMessage,
};
use blindrelay_protocol::tracks::{self, TrackLimits};
use lobby::{Lobby, LobbyLimits};
use mls_ds::{CommitOutcome, LeftOutcome, MlsDs, MlsRefused};
use negotiator::{Description, Negotiation};
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::SeedableRng;
pub use sessions::user_key;
use sessions::{role_label, Conn, Session};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use timers::{Timer, Timers};
use tracing::{debug, info};

pub mod bucket;
mod features;
mod lobby;
mod mls_ds;
mod negotiator;
mod sessions;
mod timers;

/// A signalling connection, numbered by the driver.
pub type ConnId = u64;

/// Features a client may ask for.
pub const FEATURES: [&str; 9] = [
    "add_participant",
    "transfer",
    "consult_transfer",
    "merge",
    "park",
    "retrieve",
    "record",
    "live_captions",
    "transcription",
];

/// Longest call id, in bytes.
const MAX_CALL_ID: usize = 256;

/// The control plane's settings: plain values, so the core never reads the relay's config
/// file format. The driver builds them from its config plus what only the running relay
/// knows (its media address and DTLS fingerprint).
#[derive(Debug, Clone)]
pub struct PlaneConfig {
    /// HS256 under the relay's secret, or issuer public keys only (`auth.issuer_public_keys`).
    pub tokens: TokenVerifier,
    pub token_rules: TokenRules,
    pub hello_timeout: Duration,
    pub consent_timeout: Duration,
    pub connect_timeout: Duration,
    pub invite_ttl: Duration,
    pub park_ttl: Duration,
    pub max_call_participants: usize,
    /// Tracks one participant may offer (`calls.max_audio_tracks`, `max_video_tracks`).
    pub track_limits: TrackLimits,
    pub max_calls: usize,
    pub max_total_participants: usize,
    pub max_invites: usize,
    pub max_parked: usize,
    pub messages_per_second: u32,
    pub message_burst: u32,
    /// Each sender's broadcast budget (see [`crate::budget`]).
    pub broadcast: BudgetRate,
    /// Largest chat body, in bytes.
    pub max_chat_bytes: usize,
    pub retrieve_attempts_per_minute: u32,
    pub workers: usize,
    pub media_addr: SocketAddr,
    pub fingerprint: Fingerprint,
}

/// A user's effective `calling_e2ee`, read at every hello and join so a policy change
/// applies at once. A lookup in memory, not IO.
pub type PolicyLookup = Box<dyn Fn(&str, &str) -> CallingE2ee + Send>;

/// What happened, as the driver saw it.
#[derive(Debug)]
pub enum Input {
    /// A WebSocket connection is up.
    Connected {
        conn: ConnId,
    },
    /// A connection another node carries (a cascade): that node serves the participant's
    /// media, so its descriptions name that node's media address and DTLS fingerprint.
    ConnectedVia {
        conn: ConnId,
        media: MediaEndpoint,
    },
    /// A text frame.
    Text {
        conn: ConnId,
        text: String,
    },
    /// A binary frame (signalling is JSON text).
    Binary {
        conn: ConnId,
    },
    /// The connection is gone, for whatever reason.
    Disconnected {
        conn: ConnId,
    },
    /// The participant's media path is alive (a valid STUN check, or media from its
    /// address); the driver reports it at most about once a second.
    Activity {
        peer: PeerId,
    },
    /// The participant's DTLS handshake finished; the driver holds its SRTP contexts.
    Keyed {
        peer: PeerId,
    },
    DtlsFailed {
        peer: PeerId,
    },
    DtlsClosed {
        peer: PeerId,
    },
    /// Refuse new work and remove everyone.
    Shutdown,
}

/// Why the relay closes a signalling connection (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    HelloTimeout,
    /// The relay removed the participant (consent, DTLS, transfer, park, replaced...).
    Removed,
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 3] = [
        CloseReason::HelloTimeout,
        CloseReason::Removed,
        CloseReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::HelloTimeout => "hello_timeout",
            CloseReason::Removed => "removed",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// What the media path needs to answer a participant's ICE checks and run its DTLS
/// handshake.
#[derive(Debug, Clone)]
pub struct IcePeer {
    pub peer: PeerId,
    /// The participant's signalling connection (a cascade carries the media path's
    /// commands to the node that holds it).
    pub conn: ConnId,
    pub call_key: CallKey,
    pub worker: usize,
    pub local_ufrag: String,
    pub local_pwd: String,
    pub remote_ufrag: String,
    pub fingerprint: Fingerprint,
    pub ssrcs: Vec<u32>,
}

impl crate::ice::IceCredentials for &IcePeer {
    fn local_pwd(&self) -> &str {
        &self.local_pwd
    }
    fn remote_ufrag(&self) -> &str {
        &self.remote_ufrag
    }
}

/// Where a participant's media goes when another node serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaEndpoint {
    pub addr: SocketAddr,
    pub fingerprint: Fingerprint,
}

/// Who a participant is to the media it sends: its public id and how it numbers codecs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderInfo {
    pub participant: String,
    /// Payload type -> codec, as its offer numbered them (the numbers its packets carry).
    pub codecs: Vec<(u8, Codec)>,
}

/// What the driver must do, in this order.
#[derive(Debug)]
pub enum Output {
    /// Queue a message on a connection.
    Send { conn: ConnId, msg: ServerMessage },
    /// Close a connection once what is queued for it is written.
    Close { conn: ConnId, reason: CloseReason },
    /// Accept ICE checks for this participant.
    IceAdd(IcePeer),
    /// Forget the participant on the media path: ICE, address, forwarding loops, and
    /// close its DTLS association (close_notify).
    MediaRemove { peer: PeerId, ufrag: String },
    /// Hand the participant's SRTP contexts (held by the driver) to its forwarding loop.
    Attach {
        peer: PeerId,
        call_key: CallKey,
        worker: usize,
        tables: Box<PeerTables>,
        /// Its public id and codec map (payload type -> codec, from its offer), so a
        /// capture can describe its streams to an auditor.
        sender: Box<SenderInfo>,
    },
    /// The remote SSRCs a participant has tracks for (it answered the offer that added
    /// them): the only media its forwarding loop sends it.
    Receive {
        peer: PeerId,
        worker: usize,
        ssrcs: Vec<u32>,
    },
    /// The tallest pictures a participant asks for of one remote video track (its SSRC;
    /// `u16::MAX`: no limit): its forwarding loop picks the simulcast layer.
    MaxHeight {
        peer: PeerId,
        worker: usize,
        track: u32,
        height: u16,
    },
    /// The participant's call now lives on another forwarding loop (merge).
    Move {
        peer: PeerId,
        ufrag: String,
        call_key: CallKey,
        from_worker: usize,
        to_worker: usize,
    },
    /// A call id got its relay-internal key (the capture filters by call id).
    CallStarted { call: String, call_key: CallKey },
    /// The call's last participant left (a cluster node gives up owning it).
    CallEnded { call: String, call_key: CallKey },
}

type Refusal = (ErrorCode, String);

/// The control plane. See the module docs.
pub struct ControlPlane {
    cfg: PlaneConfig,
    policy: PolicyLookup,
    /// Unix time (seconds) at `clock_origin`, for token expiry.
    clock_origin: (Instant, u64),
    rng: StdRng,
    registry: CallRegistry,
    conns: HashMap<ConnId, Conn>,
    sessions: HashMap<PeerId, Session>,
    /// Who claims each SSRC, per call.
    ssrcs: SsrcIndex,
    /// MLS Delivery Service state of each group-E2EE call, by call id.
    mls: HashMap<String, MlsDs>,
    /// The lobby, invitations, parked calls and pickup-code buckets.
    lobby: Lobby,
    timers: Timers,
    out: VecDeque<Output>,
    /// What happened, for the driver to count; drained with [`ControlPlane::poll_report`].
    reports: VecDeque<Report>,
    next_peer: PeerId,
    shutting_down: bool,
}

impl ControlPlane {
    /// `clock_origin` pairs an instant with the Unix time (seconds) at that instant; `seed`
    /// seeds ids, ICE credentials and pickup codes (from the OS in production, fixed in
    /// tests).
    pub fn new(
        cfg: PlaneConfig,
        policy: PolicyLookup,
        clock_origin: (Instant, u64),
        seed: [u8; 32],
    ) -> Self {
        let lobby = Lobby::new(LobbyLimits {
            max_invites: cfg.max_invites,
            max_parked: cfg.max_parked,
            invite_ttl: cfg.invite_ttl,
            park_ttl: cfg.park_ttl,
            retrieve_attempts_per_minute: cfg.retrieve_attempts_per_minute,
        });
        ControlPlane {
            registry: CallRegistry::new(cfg.workers, cfg.max_call_participants),
            cfg,
            policy,
            clock_origin,
            rng: StdRng::from_seed(seed),
            conns: HashMap::new(),
            sessions: HashMap::new(),
            ssrcs: SsrcIndex::default(),
            mls: HashMap::new(),
            lobby,
            timers: Timers::default(),
            out: VecDeque::new(),
            reports: VecDeque::new(),
            next_peer: 1,
            shutting_down: false,
        }
    }

    /// The next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next thing to count. The driver drains these after each input, as it does
    /// outputs, and turns them into metrics: the core itself records none.
    pub fn poll_report(&mut self) -> Option<Report> {
        self.reports.pop_front()
    }

    fn report(&mut self, r: Report) {
        self.reports.push_back(r);
    }

    /// When [`ControlPlane::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Participants in calls, calls, and open connections: for tests and the admin view.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.sessions.len(),
            self.registry.call_count(),
            self.conns.len(),
        )
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Check the plane's invariants (for property tests and fuzzing, after every step;
    /// each part checks its own, this the ones across parts). The first broken one, in
    /// words.
    ///
    /// 1. No participant in two calls: every session's call exists in the registry and
    ///    lists it, every registry member has a session, a connection has at most one
    ///    session and points at it.
    /// 2. Every SSRC has one owner per call: the [`SsrcIndex`] holds exactly the claims of
    ///    the sessions (offer and answer), and no two sessions of a call claim one SSRC.
    /// 3. Every timer belongs to live state, and live state that expires has its timer.
    /// 4. Queues within bounds: the lobby holds only idle authenticated connections (so
    ///    at most one entry per connection); invitations and parked calls within their
    ///    limits; each session's remote lines within their bound; MLS state only for
    ///    live calls, its members and waiting joiners sessions of that call, waiting at
    ///    most the call's size, at most `WELCOMES_KEPT` welcomes per joiner. The driver
    ///    drains outputs and reports after every step; undrained, one step queues at
    ///    most a few messages per (connection or session) x (call member), so the check
    ///    allows `8 x (connections + sessions + 1) x (max_call_participants + 1)` of each.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        // 1. Calls and sessions.
        for (call, members) in self.registry.member_lists() {
            for p in &members {
                match self.sessions.get(p) {
                    Some(s) if s.call == call => {}
                    Some(s) => {
                        return Err(format!(
                            "peer {p} is in call {call:?} but its session is in {:?}",
                            s.call
                        ))
                    }
                    None => return Err(format!("peer {p} of call {call:?} has no session")),
                }
            }
        }
        if self.registry.peers_in_calls() != self.sessions.len() {
            return Err(format!(
                "{} peers in calls, {} sessions",
                self.registry.peers_in_calls(),
                self.sessions.len()
            ));
        }
        let mut session_of_conn: HashMap<ConnId, PeerId> = HashMap::new();
        for (peer, s) in &self.sessions {
            match self.registry.call_of(*peer) {
                Some((call, _, _)) if call == s.call => {}
                other => {
                    return Err(format!(
                        "session {peer} in {:?}, registry says {other:?}",
                        s.call
                    ))
                }
            }
            if let Some(other) = session_of_conn.insert(s.conn, *peer) {
                return Err(format!(
                    "connection {} has sessions {other} and {peer}",
                    s.conn
                ));
            }
            if self.conns.get(&s.conn).and_then(|c| c.peer) != Some(*peer) {
                return Err(format!(
                    "session {peer}'s connection {} does not point at it",
                    s.conn
                ));
            }
            s.neg.check().map_err(|e| format!("session {peer}: {e}"))?;
        }
        for (conn, c) in &self.conns {
            if let Some(p) = c.peer {
                if session_of_conn.get(conn) != Some(&p) {
                    return Err(format!("connection {conn} points at {p}, not its session"));
                }
            }
        }
        // 2. SSRC owners.
        let mut claimed: HashMap<(&str, u32), PeerId> = HashMap::new();
        for (peer, s) in &self.sessions {
            for x in s.claimed_ssrcs() {
                match claimed.insert((s.call.as_str(), x), *peer) {
                    Some(o) if o != *peer => {
                        return Err(format!(
                            "SSRC {x} claimed by {o} and {peer} in call {:?}",
                            s.call
                        ))
                    }
                    _ => {}
                }
            }
        }
        let mut indexed = 0;
        for (call, x, owner) in self.ssrcs.claims() {
            indexed += 1;
            if claimed.get(&(call, x)) != Some(&owner) {
                return Err(format!(
                    "the SSRC index gives {x} in {call:?} to {owner}, the sessions do not"
                ));
            }
        }
        if indexed != claimed.len() {
            return Err(format!(
                "the SSRC index holds {indexed} claims, the sessions {}",
                claimed.len()
            ));
        }
        // 3. Timers.
        self.timers.check()?;
        for (at, t) in self.timers.iter() {
            let live = match t {
                Timer::Hello(conn) => self
                    .conns
                    .get(conn)
                    .is_some_and(|c| c.awaits_hello() && c.hello_deadline == Some(*at)),
                Timer::Consent(p) | Timer::Connect(p) => self.sessions.contains_key(p),
                Timer::Invite(..) | Timer::Parked(_) | Timer::RetrieveBucket(_) => {
                    self.lobby.owns_timer(t)
                }
            };
            if !live {
                return Err(format!("timer {t:?} outlived its state"));
            }
        }
        for (conn, c) in &self.conns {
            if c.awaits_hello() && self.timers.deadline(&Timer::Hello(*conn)) != c.hello_deadline {
                return Err(format!("connection {conn} awaits hello without its timer"));
            }
        }
        for peer in self.sessions.keys() {
            if self.timers.deadline(&Timer::Consent(*peer)).is_none() {
                return Err(format!("session {peer} has no consent timer"));
            }
        }
        self.lobby.check(&self.timers)?;
        // 4. Bounds.
        for (key, conn) in self.lobby.entries() {
            let idle = self.conns.get(&conn).is_some_and(|c| {
                !c.closing && c.peer.is_none() && c.user_key().as_deref() == Some(key)
            });
            if !idle {
                return Err(format!(
                    "lobby holds connection {conn} as {key}: not idle as that"
                ));
            }
        }
        for (call, ds) in &self.mls {
            let members = self.registry.participants(call);
            if members.is_empty() {
                return Err(format!("MLS state for call {call:?}, which has ended"));
            }
            if let Some(p) = ds.participants().find(|p| !members.contains(p)) {
                return Err(format!("MLS state of {call:?} lists {p}, not in the call"));
            }
            ds.check(members.len())
                .map_err(|e| format!("call {call:?}: {e}"))?;
        }
        let bound =
            8 * (self.conns.len() + self.sessions.len() + 1) * (self.cfg.max_call_participants + 1);
        if self.out.len() > bound || self.reports.len() > bound {
            return Err(format!(
                "{} outputs and {} reports queued, bound {bound}",
                self.out.len(),
                self.reports.len()
            ));
        }
        Ok(())
    }

    fn unix(&self, now: Instant) -> u64 {
        let (at, unix) = self.clock_origin;
        if now >= at {
            unix.saturating_add(now.duration_since(at).as_secs())
        } else {
            unix.saturating_sub(at.duration_since(now).as_secs())
        }
    }

    fn timer(&mut self, at: Instant, t: Timer) {
        self.timers.set(at, t);
    }

    fn send(&mut self, conn: ConnId, msg: ServerMessage) {
        if self.conns.get(&conn).is_some_and(|c| !c.closing) {
            self.out.push_back(Output::Send { conn, msg });
        }
    }

    fn error(&mut self, conn: ConnId, code: ErrorCode, message: String) {
        self.report(Report::SignallingError(code));
        self.send(conn, ServerMessage::Error { code, message });
    }

    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.closing {
                c.closing = true;
                self.out.push_back(Output::Close { conn, reason });
            }
        }
        // A closing connection is read no more: it awaits no hello.
        self.timers.cancel(&Timer::Hello(conn));
        self.leave_lobby(conn);
    }

    fn connected(&mut self, now: Instant, conn: ConnId, media: Option<MediaEndpoint>) {
        let deadline = now + self.cfg.hello_timeout;
        let mut c = Conn::new(now, deadline, self.cfg.message_burst, self.cfg.broadcast);
        c.media = media;
        self.conns.insert(conn, c);
        self.timer(deadline, Timer::Hello(conn));
    }

    /// Feed one input at time `now`.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Connected { conn } => self.connected(now, conn, None),
            Input::ConnectedVia { conn, media } => self.connected(now, conn, Some(media)),
            Input::Text { conn, text } => self.on_text(now, conn, &text),
            Input::Binary { conn } => {
                if self.admit_message(now, conn) {
                    self.error(
                        conn,
                        ErrorCode::BadRequest,
                        "signalling messages are JSON text frames".into(),
                    );
                }
            }
            Input::Disconnected { conn } => {
                self.leave_lobby(conn);
                self.timers.cancel(&Timer::Hello(conn));
                if let Some(c) = self.conns.remove(&conn) {
                    if let Some(p) = c.peer {
                        self.remove_peer(now, p, RemovalReason::SignallingLost);
                    }
                }
            }
            Input::Activity { peer } => {
                if let Some(s) = self.sessions.get_mut(&peer) {
                    s.last_activity = now;
                }
            }
            Input::Keyed { peer } => {
                let Some(s) = self.sessions.get_mut(&peer) else {
                    return;
                };
                if s.keyed {
                    return;
                }
                s.keyed = true;
                s.last_activity = now;
                self.timers.cancel(&Timer::Connect(peer));
                let since = now.saturating_duration_since(s.joined_at);
                let announced: Vec<u32> = s
                    .offer
                    .media
                    .iter()
                    .flat_map(|m| m.ssrcs.iter().copied())
                    .collect();
                let Some((call_id, call_key, mode)) = self.registry.call_of(peer) else {
                    return;
                };
                let mut tables = PeerTables::new(&s.numbering, &s.tracks, &announced);
                tables.receiving = Some(s.neg.receiving().to_vec());
                // An MLS joiner has no keys until a commit after its join; a 1:1 call's
                // pages agree theirs over signalling as they join, so a key frame asked
                // for on arrival is one they open (measured in bench/RESULTS.md).
                tables.keyframe_on_join =
                    !(mode == CallMode::E2ee && self.mls.contains_key(&call_id));
                let tables = Box::new(tables);
                let worker = s.worker;
                let caps = s.max_heights.clone();
                let sender = Box::new(SenderInfo {
                    participant: s.public_id.clone(),
                    codecs: Codec::ALL
                        .into_iter()
                        .filter_map(|c| s.numbering.pt_of(c).map(|pt| (pt, c)))
                        .collect(),
                });
                self.report(Report::JoinTime(since));
                self.out.push_back(Output::Attach {
                    peer,
                    call_key,
                    worker,
                    tables,
                    sender,
                });
                for (track, height) in caps {
                    self.out.push_back(Output::MaxHeight {
                        peer,
                        worker,
                        track,
                        height,
                    });
                }
            }
            Input::DtlsFailed { peer } => self.remove_peer(now, peer, RemovalReason::DtlsFailed),
            Input::DtlsClosed { peer } => self.remove_peer(now, peer, RemovalReason::DtlsClosed),
            Input::Shutdown => {
                self.shutting_down = true;
                let peers: Vec<PeerId> = self.sessions.keys().copied().collect();
                for p in peers {
                    self.remove_peer(now, p, RemovalReason::Shutdown);
                }
                let conns: Vec<ConnId> = self.conns.keys().copied().collect();
                for c in conns {
                    self.close(c, CloseReason::Shutdown);
                }
            }
        }
    }

    /// Fire every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(t) = self.timers.pop_due(now) {
            self.fire(now, t);
        }
    }

    fn fire(&mut self, now: Instant, t: Timer) {
        match t {
            Timer::Hello(conn) => {
                let due = self.conns.get(&conn).is_some_and(|c| c.hello_overdue(now));
                if due {
                    self.error(
                        conn,
                        ErrorCode::HelloTimeout,
                        format!(
                            "no valid hello within {}",
                            humantime::format_duration(self.cfg.hello_timeout)
                        ),
                    );
                    self.close(conn, CloseReason::HelloTimeout);
                }
            }
            Timer::Consent(peer) => {
                let Some(s) = self.sessions.get(&peer) else {
                    return;
                };
                let expires = s.last_activity + self.cfg.consent_timeout;
                if expires <= now {
                    self.remove_peer(now, peer, RemovalReason::ConsentTimeout);
                } else {
                    self.timer(expires, Timer::Consent(peer));
                }
            }
            Timer::Connect(peer) => {
                if self.sessions.get(&peer).is_some_and(|s| !s.keyed) {
                    self.remove_peer(now, peer, RemovalReason::ConnectTimeout);
                }
            }
            Timer::Invite(key, call) => self.lobby.expire_invite(now, key, call),
            Timer::Parked(code) => self.lobby.expire_parked(now, &code),
            Timer::RetrieveBucket(user) => self.lobby.refill_bucket(now, &mut self.timers, user),
        }
    }

    /// Rate limit: false (and a `rate_limited` error) when the connection is over it.
    fn admit_message(&mut self, now: Instant, conn: ConnId) -> bool {
        let (rate, burst) = (self.cfg.messages_per_second, self.cfg.message_burst);
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.closing {
            return false;
        }
        if c.admit(now, rate, burst) {
            return true;
        }
        let text = format!(
            "more than {} messages per second",
            self.cfg.messages_per_second
        );
        self.rate_limited(conn, RateLimit::Messages, text);
        false
    }

    /// Refuse a message with `rate_limited`, counted by the limit it went over (the one
    /// place such a refusal is counted).
    fn rate_limited(&mut self, conn: ConnId, limit: RateLimit, message: String) {
        self.report(Report::RateLimited(limit));
        self.error(conn, ErrorCode::RateLimited, message);
    }

    /// Charge `peer`'s broadcast budget for a message of `wire` bytes: its size times the
    /// other participants of the call, whoever it is addressed to (why: [`crate::budget`]).
    /// False, with a `rate_limited` refusal, when the budget does not cover it (commits,
    /// which the call cannot lose, are charged in `mls_commit`).
    fn charge_broadcast(&mut self, now: Instant, conn: ConnId, peer: PeerId, wire: u64) -> bool {
        let others = self
            .registry
            .peers_of(peer)
            .map_or(0, |(_, v)| v.len() as u64);
        let cost = wire.saturating_mul(others);
        let rate = self.cfg.broadcast;
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.broadcast.try_spend(now, cost, rate) {
            return true;
        }
        let text = format!(
            "over the broadcast budget of {} bytes per second: this message costs {cost} ({wire} bytes to each of {others} others); try again later",
            rate.bytes_per_second
        );
        self.rate_limited(conn, RateLimit::BroadcastBytes, text);
        false
    }

    fn on_text(&mut self, now: Instant, conn: ConnId, text: &str) {
        if !self.admit_message(now, conn) {
            return;
        }
        let msg = match parse_client_message(text) {
            Ok(m) => m,
            Err((code, message)) => return self.error(conn, code, message),
        };
        match msg {
            ClientMessage::Hello { token } => self.hello(now, conn, &token),
            ClientMessage::Join {
                call,
                e2ee_enabled,
                offer_sdp,
                e2ee_scheme,
            } => self.join(now, conn, call, e2ee_enabled, e2ee_scheme, &offer_sdp),
            ClientMessage::E2ee { to, blob } => self.relay_to(now, conn, &to, blob),
            ClientMessage::MlsKeyPackage { blob } => self.mls_key_package(now, conn, blob),
            ClientMessage::MlsCommit { commit, welcome } => {
                self.mls_commit(now, conn, commit, welcome)
            }
            ClientMessage::MlsJoined { epoch } => self.mls_joined(conn, epoch),
            ClientMessage::Chat { body } => self.chat(now, conn, body),
            ClientMessage::Feature { name, arg } => self.feature(now, conn, &name, arg),
            ClientMessage::Answer { sdp, revision } => self.answer(conn, &sdp, revision),
            ClientMessage::MaxResolution { mid, height } => self.max_resolution(conn, &mid, height),
            ClientMessage::Leave => match self.conns.get(&conn).and_then(|c| c.peer) {
                Some(p) => self.remove_peer(now, p, RemovalReason::Left),
                None => self.error(conn, ErrorCode::NotJoined, "not in a call".into()),
            },
        }
    }

    fn hello(&mut self, now: Instant, conn: ConnId, token: &str) {
        if self.conns.get(&conn).is_some_and(|c| c.peer.is_some()) {
            return self.error(conn, ErrorCode::AlreadyJoined, "hello after join".into());
        }
        let unix = self.unix(now);
        let verified = self
            .cfg
            .tokens
            .verify_at(token, &self.cfg.token_rules, unix);
        self.leave_lobby(conn);
        let hello_timeout = self.cfg.hello_timeout;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        match verified {
            Ok(claims) => {
                // The relay enforces the same option at join.
                let e2ee_option = if claims.is_bot() {
                    E2eeOption::Hidden
                } else {
                    (self.policy)(&claims.sub, &claims.tenant).option()
                };
                let reply = ServerMessage::Capabilities {
                    user: claims.sub.clone(),
                    tenant: claims.tenant.clone(),
                    role: claims.role.clone(),
                    e2ee_option,
                };
                let key = user_key(&claims.sub, &claims.tenant);
                c.authenticated(claims);
                self.timers.cancel(&Timer::Hello(conn));
                self.lobby.enter(key, conn);
                self.send(conn, reply);
            }
            Err(e) => {
                if let Some(d) = c.failed_hello(now + hello_timeout) {
                    self.timer(d, Timer::Hello(conn));
                }
                self.error(conn, e.code(), e.to_string());
            }
        }
    }

    fn leave_lobby(&mut self, conn: ConnId) {
        let Some(key) = self.conns.get(&conn).and_then(Conn::user_key) else {
            return;
        };
        self.lobby.leave(&key, conn);
    }

    fn refuse_join(&mut self, conn: ConnId, code: ErrorCode, msg: String) {
        self.report(Report::JoinRefused(code));
        self.error(conn, code, msg);
    }

    fn join(
        &mut self,
        now: Instant,
        conn: ConnId,
        call: String,
        e2ee: bool,
        e2ee_scheme: E2eeScheme,
        offer_sdp: &str,
    ) {
        if let Err((code, msg)) = self.check_join(now, conn, &call) {
            return self.refuse_join(conn, code, msg);
        }
        let Some(claims) = self.conns.get(&conn).and_then(|c| c.claims.clone()) else {
            return self.refuse_join(
                conn,
                ErrorCode::NotAuthenticated,
                "send hello with a token first".into(),
            );
        };
        let offer = match sdp::parse_offer(offer_sdp) {
            Ok(o) => o,
            Err(e) => return self.refuse_join(conn, ErrorCode::BadSdp, e.to_string()),
        };
        // Every other member's offers will carry these tracks: within the bounds the
        // relay's offers were sized for (checked before anything is set up for it).
        if let Err(e) = self.cfg.track_limits.check_offer(&offer) {
            return self.refuse_join(conn, ErrorCode::TooManyTracks, e.to_string());
        }
        let numbering = Numbering::from_offer(&offer);
        if !Codec::ALL
            .into_iter()
            .any(|c| c.mandatory() && numbering.pt_of(c).is_some())
        {
            return self.refuse_join(
                conn,
                ErrorCode::NoCommonCodec,
                "the offer has neither of the codecs every call carries: opus/48000/2 for audio, VP8/90000 for video".into(),
            );
        }
        let key = user_key(&claims.sub, &claims.tenant);
        // A second session of the same identity in this call replaces the first.
        let replaced = self
            .registry
            .participants(&call)
            .into_iter()
            .find(|p| self.sessions.get(p).is_some_and(|s| s.user_key == key));
        let policy = if claims.is_bot() {
            CallingE2ee::Disabled
        } else {
            (self.policy)(&claims.sub, &claims.tenant)
        };
        // SSRCs are unique in a call: the forwarder routes and checks ownership by SSRC, so
        // a second claimant would either take the owner's stream or lose its own. The
        // session this join replaces gives its SSRCs up.
        if let Some(ssrc) = offer
            .media
            .iter()
            .flat_map(|m| m.ssrcs.iter().copied())
            .find(|x| self.ssrcs.claimed_by_other(&call, *x, replaced))
        {
            return self.refuse_join(
                conn,
                ErrorCode::SsrcInUse,
                format!("SSRC {ssrc} is already sent by another participant of this call"),
            );
        }
        let peer = self.next_peer;
        let public_id = format!(
            "p-{}",
            Alphanumeric.sample_string(&mut self.rng, tracks::PUBLIC_ID_LEN - 2)
        );
        let req = JoinRequest {
            peer,
            public_id: public_id.clone(),
            user: claims.sub.clone(),
            tenant: claims.tenant.clone(),
            role: claims.role.clone(),
            call: call.clone(),
            e2ee_enabled: e2ee,
            policy,
            e2ee_scheme,
        };
        let joined = match self.registry.join_replacing(req, replaced) {
            Ok(j) => j,
            Err((code, msg)) => {
                if code == ErrorCode::E2eeCallRefusesBots {
                    self.report(Report::BotRefused(role_label(&claims.role)));
                }
                return self.refuse_join(conn, code, msg);
            }
        };
        // Admitted: from here on nothing can fail.
        self.next_peer += 1;
        let invite = self.lobby.take_invite(now, &mut self.timers, &key, &call);
        if let Some((old, left)) = joined.replaced.clone() {
            self.removed_side_effects(now, old, RemovalReason::Replaced, Some(left));
        }
        self.leave_lobby(conn);
        let role = role_label(&claims.role);
        let local_ufrag = Alphanumeric.sample_string(&mut self.rng, tracks::RELAY_UFRAG_LEN);
        let local_pwd = Alphanumeric.sample_string(&mut self.rng, tracks::RELAY_PWD_LEN);
        let ssrcs: Vec<u32> = offer
            .media
            .iter()
            .flat_map(|s| s.ssrcs.iter().copied())
            .collect();
        // The call's codecs with this participant in it; if that narrows them, the
        // others learn in the renegotiation this join starts.
        let codecs = sdp::call_codecs(
            joined
                .others
                .iter()
                .filter_map(|(p, _)| self.sessions.get(p).map(|s| &s.numbering))
                .chain([&numbering]),
        );
        let media = self.conns.get(&conn).and_then(|c| c.media.clone());
        let answer_sdp = sdp::write_relay_description(
            &offer,
            &numbering.restricted(&codecs),
            &[],
            &RelayMedia {
                ice_ufrag: &local_ufrag,
                ice_pwd: &local_pwd,
                fingerprint: media
                    .as_ref()
                    .map_or(&self.cfg.fingerprint, |m| &m.fingerprint),
                media_addr: media.as_ref().map_or(self.cfg.media_addr, |m| m.addr),
                session_id: peer,
                version: 0,
            },
            false,
        );
        if joined.others.is_empty() {
            self.report(Report::Calls(joined.mode, 1));
            self.out.push_back(Output::CallStarted {
                call: call.clone(),
                call_key: joined.call_key,
            });
        }
        self.out.push_back(Output::IceAdd(IcePeer {
            peer,
            conn,
            call_key: joined.call_key,
            worker: joined.worker,
            local_ufrag: local_ufrag.clone(),
            local_pwd: local_pwd.clone(),
            remote_ufrag: offer.ice_ufrag.clone(),
            fingerprint: offer.fingerprint.clone(),
            ssrcs: ssrcs.clone(),
        }));
        self.ssrcs.claim(&call, peer, ssrcs);
        let remote = Lines::new(
            &self.cfg.track_limits,
            self.cfg.max_call_participants,
            4 * self.cfg.max_call_participants,
        );
        self.sessions.insert(
            peer,
            Session {
                conn,
                public_id: public_id.clone(),
                user_key: key,
                role,
                call: call.clone(),
                local_ufrag,
                local_pwd,
                worker: joined.worker,
                tracks: offer.sent_tracks(),
                offer,
                numbering,
                joined_at: now,
                last_activity: now,
                keyed: false,
                neg: Negotiation::new(codecs, remote),
                answer_ssrcs: Vec::new(),
                media,
                max_heights: Vec::new(),
            },
        );
        if let Some(c) = self.conns.get_mut(&conn) {
            c.peer = Some(peer);
        }
        self.timer(now + self.cfg.connect_timeout, Timer::Connect(peer));
        self.timer(now + self.cfg.consent_timeout, Timer::Consent(peer));
        self.report(Report::Joined);
        self.report(Report::Participants(role, 1));
        if !joined.downgraded.is_empty() {
            self.report(Report::Calls(CallMode::E2ee, -1));
            self.report(Report::Calls(CallMode::Standard, 1));
        }
        self.send(
            conn,
            ServerMessage::Joined {
                participant: public_id.clone(),
                call_mode: joined.mode,
                mode_reason: joined.mode_reason.clone(),
                answer_sdp,
                participants: joined.others.iter().map(|(_, i)| i.clone()).collect(),
                e2ee_scheme: joined.scheme,
            },
        );
        if joined.scheme == Some(E2eeScheme::Mls) {
            if joined.others.is_empty() {
                // The first joiner creates the group (epoch 0): `joined` with nobody else
                // tells it to.
                self.mls.insert(call.clone(), MlsDs::created_by(peer));
            } else {
                self.mls.entry(call.clone()).or_default();
            }
        } else {
            // A downgraded or standard call has no group.
            self.mls.remove(&call);
        }
        for p in &joined.downgraded {
            if let Some(c) = self.sessions.get(p).map(|s| s.conn) {
                self.send(
                    c,
                    ServerMessage::CallModeChanged {
                        call_mode: joined.mode,
                        reason: joined.mode_reason.clone().unwrap_or_default(),
                    },
                );
            }
        }
        let me = ParticipantInfo {
            participant: public_id,
            user: claims.sub.clone(),
            tenant: claims.tenant.clone(),
            role: claims.role.clone(),
        };
        for (other, _) in &joined.others {
            if let Some(c) = self.sessions.get(other).map(|s| s.conn) {
                self.send(
                    c,
                    ServerMessage::ParticipantJoined {
                        participant: me.clone(),
                    },
                );
            }
        }
        info!(mode = joined.mode.as_str(), role, "participant joined");
        self.renegotiate_call_of(peer);
        if let Some(Some(replaced)) = invite.map(|i| i.replaces) {
            // A consultative transfer completes: the one who handed over leaves.
            self.remove_peer(now, replaced, RemovalReason::Transferred);
        }
    }

    /// Every check of a join that needs no registry change.
    fn check_join(&self, now: Instant, conn: ConnId, call: &str) -> Result<(), Refusal> {
        if self.shutting_down {
            return Err((ErrorCode::ShuttingDown, "relay is shutting down".into()));
        }
        let Some(c) = self.conns.get(&conn) else {
            return Err((ErrorCode::Internal, "connection is gone".into()));
        };
        let Some(claims) = &c.claims else {
            return Err((
                ErrorCode::NotAuthenticated,
                "send hello with a token first".into(),
            ));
        };
        if c.peer.is_some() {
            return Err((ErrorCode::AlreadyJoined, "already in a call".into()));
        }
        // Expiry is re-checked at join: a token may have expired since hello.
        let leeway = self.cfg.token_rules.leeway.as_secs();
        if claims.exp.saturating_add(leeway) < self.unix(now) {
            return Err((ErrorCode::TokenExpired, "token expired".into()));
        }
        if call.is_empty() || call.len() > MAX_CALL_ID {
            return Err((
                ErrorCode::BadRequest,
                format!("call id must be 1 to {MAX_CALL_ID} bytes"),
            ));
        }
        // An invitation (add_participant, transfer, retrieve, a bot brought in) admits to
        // its call whatever call the token names.
        let invited = self
            .lobby
            .invited(now, &user_key(&claims.sub, &claims.tenant), call);
        if let Some(allowed) = claims.call.as_ref().filter(|_| !invited) {
            if allowed != call {
                return Err((
                    ErrorCode::WrongCall,
                    format!("token admits to call `{allowed}` only"),
                ));
            }
        }
        if self.sessions.len() >= self.cfg.max_total_participants {
            return Err((
                ErrorCode::RelayFull,
                format!(
                    "the relay has {} participants, its limit",
                    self.sessions.len()
                ),
            ));
        }
        if !self.registry.has_call(call) && self.registry.call_count() >= self.cfg.max_calls {
            return Err((
                ErrorCode::RelayFull,
                format!(
                    "the relay has {} calls, its limit",
                    self.registry.call_count()
                ),
            ));
        }
        Ok(())
    }

    /// Remove a participant everywhere and tell its call. Idempotent.
    fn remove_peer(&mut self, now: Instant, peer: PeerId, reason: RemovalReason) {
        if !self.sessions.contains_key(&peer) {
            return;
        }
        let left = self.registry.leave(peer);
        self.removed_side_effects(now, peer, reason, left);
    }

    /// Everything but the registry change of a removal (a replacing join has made that
    /// change already).
    fn removed_side_effects(
        &mut self,
        _now: Instant,
        peer: PeerId,
        reason: RemovalReason,
        left: Option<crate::calls::Left>,
    ) {
        let Some(session) = self.sessions.remove(&peer) else {
            return;
        };
        self.timers.cancel(&Timer::Consent(peer));
        self.timers.cancel(&Timer::Connect(peer));
        self.ssrcs
            .release(&session.call, peer, session.claimed_ssrcs());
        self.mls_left(&session.call, peer);
        self.out.push_back(Output::MediaRemove {
            peer,
            ufrag: session.local_ufrag.clone(),
        });
        self.report(Report::Removed(reason));
        self.report(Report::Participants(session.role, -1));
        let conn = session.conn;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.peer = None;
        }
        if let Some(left) = left {
            if let Some(mode) = left.ended {
                self.report(Report::Calls(mode, -1));
                self.out.push_back(Output::CallEnded {
                    call: session.call.clone(),
                    call_key: left.call_key,
                });
            }
            if reason.told_to_self() {
                self.send(
                    conn,
                    ServerMessage::ParticipantLeft {
                        participant: left.public_id.clone(),
                        reason: reason.as_str().to_string(),
                    },
                );
            }
            for other in &left.remaining {
                if let Some(c) = self.sessions.get(other).map(|s| s.conn) {
                    self.send(
                        c,
                        ServerMessage::ParticipantLeft {
                            participant: left.public_id.clone(),
                            reason: reason.as_str().to_string(),
                        },
                    );
                }
            }
            for other in &left.remaining {
                self.renegotiate(*other);
            }
        }
        if reason.relay_initiated() {
            let why = if reason == RemovalReason::Shutdown {
                CloseReason::Shutdown
            } else {
                CloseReason::Removed
            };
            self.close(conn, why);
        } else if let Some(key) = self
            .conns
            .get(&conn)
            .filter(|c| !c.closing)
            .and_then(Conn::user_key)
        {
            // Left on purpose: back in the lobby, and free to join again.
            self.lobby.enter(key, conn);
        }
        debug!(reason = reason.as_str(), "participant removed");
    }

    /// A receiver's limit on one remote video track's picture height.
    fn max_resolution(&mut self, conn: ConnId, mid: &str, height: Option<u32>) {
        let Some(peer) = self.joined_peer(conn) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        let track = s
            .neg
            .track_of_mid(mid)
            .filter(|t| t.kind == "video" && t.active)
            .map(|t| t.ssrc);
        let Some(track) = track else {
            return self.error(
                conn,
                ErrorCode::UnknownTrack,
                "max_resolution names no remote video track of this session".into(),
            );
        };
        // Taller than any picture VP8 can code (14 bits) is no limit.
        let height = height.map_or(u16::MAX, |h| h.min(u32::from(u16::MAX - 1)) as u16);
        // One per track still on a line: the list stays within the session's lines.
        let neg = &s.neg;
        s.max_heights
            .retain(|(t, _)| *t != track && neg.has_track(*t));
        s.max_heights.push((track, height));
        if s.keyed {
            self.out.push_back(Output::MaxHeight {
                peer,
                worker: s.worker,
                track,
                height,
            });
        }
    }

    fn joined_peer(&mut self, conn: ConnId) -> Option<PeerId> {
        let p = self.conns.get(&conn).and_then(|c| c.peer);
        if p.is_none() {
            self.error(conn, ErrorCode::NotJoined, "join a call first".into());
        }
        p
    }

    /// Relay an opaque key-agreement blob to one participant of the caller's call.
    fn relay_to(&mut self, now: Instant, conn: ConnId, to: &str, blob: String) {
        let Some(peer) = self.joined_peer(conn) else {
            return;
        };
        let target = self
            .registry
            .find_in_call(peer, to)
            .and_then(|t| self.sessions.get(&t))
            .map(|s| s.conn);
        let from = self.sessions.get(&peer).map(|s| s.public_id.clone());
        match (target, from) {
            (Some(t), Some(from)) => {
                let msg = ServerMessage::E2ee { from, blob };
                if self.charge_broadcast(now, conn, peer, budget::wire_len(&msg)) {
                    self.send(t, msg);
                }
            }
            _ => self.error(
                conn,
                ErrorCode::UnknownParticipant,
                format!("no participant `{to}` in this call"),
            ),
        }
    }

    /// The MLS call `conn`'s participant is in, with its public id.
    fn mls_call_of(&mut self, conn: ConnId) -> Option<(PeerId, String, String)> {
        let peer = self.joined_peer(conn)?;
        let s = self.sessions.get(&peer)?;
        let (call, public) = (s.call.clone(), s.public_id.clone());
        if !self.mls.contains_key(&call) {
            self.error(
                conn,
                ErrorCode::BadRequest,
                "this call is not keyed with mls".into(),
            );
            return None;
        }
        Some((peer, call, public))
    }

    fn conns_of(&self, peers: impl IntoIterator<Item = PeerId>) -> Vec<ConnId> {
        peers
            .into_iter()
            .filter_map(|p| self.sessions.get(&p).map(|s| s.conn))
            .collect()
    }

    /// Refuse a participant's MLS message: it is told why, and the refusal is counted.
    fn refuse_mls(&mut self, conn: ConnId, why: MlsRefused) {
        let reason = why.reason();
        self.report(Report::MlsRefused(reason));
        debug!(reason = reason.as_str(), "MLS message refused");
        self.error(conn, ErrorCode::MlsRefused, why.to_string());
    }

    /// A joiner's KeyPackage: checked by the DS (one that does not parse is refused
    /// here, before any member could try to commit it), charged, kept until its owner
    /// joins, and passed to the group.
    fn mls_key_package(&mut self, now: Instant, conn: ConnId, blob: String) {
        let Some((peer, call, from)) = self.mls_call_of(conn) else {
            return;
        };
        let Some(ds) = self.mls.get(&call) else {
            return;
        };
        let kp = match ds.check_key_package(peer, &blob) {
            Ok(kp) => kp,
            Err(why) => return self.refuse_mls(conn, why),
        };
        // Charged before anything is kept: a refused KeyPackage leaves no trace.
        let msg = ServerMessage::MlsKeyPackage { from, blob };
        if !self.charge_broadcast(now, conn, peer, budget::wire_len(&msg)) {
            return;
        }
        let Some(ds) = self.mls.get_mut(&call) else {
            return;
        };
        let to = ds.add_key_package(peer, kp);
        for c in self.conns_of(to) {
            self.send(c, msg.clone());
        }
    }

    /// A member's commit, as the DS decides it: the first of its epoch goes to every
    /// other member and waiting joiner, and its Welcome to the waiting joiners it adds;
    /// a later one for that epoch is refused to its sender alone.
    fn mls_commit(&mut self, now: Instant, conn: ConnId, commit: String, welcome: Option<String>) {
        let Some((peer, call, from)) = self.mls_call_of(conn) else {
            return;
        };
        // A commit the DS accepts always goes out, even beyond the sender's broadcast
        // budget (the group cannot lose it), and puts the sender in debt. So a member in
        // debt commits again only once it is repaid: otherwise one member could fan out
        // commits of the largest size at the message rate, and each accepted one moves
        // the epoch on for the next. An honest committer is never in debt for long: it
        // is told `accepted: false`, as when it loses a race, and commits again.
        let rate = self.cfg.broadcast;
        let debt = self
            .conns
            .get_mut(&conn)
            .map_or(0, |c| c.broadcast.available(now, rate));
        let Some(ds) = self.mls.get_mut(&call) else {
            return;
        };
        if debt < 0 {
            let epoch = ds.epoch();
            self.send(
                conn,
                ServerMessage::MlsCommitResult {
                    epoch,
                    accepted: false,
                },
            );
            let text = format!(
                "over the broadcast budget of {} bytes per second: {} bytes in debt from earlier commits; commit again when it is repaid",
                rate.bytes_per_second,
                -debt
            );
            return self.rate_limited(conn, RateLimit::BroadcastBytes, text);
        }
        let (epoch, to, welcomed) = match ds.commit(peer, &commit, welcome.as_deref()) {
            Ok(CommitOutcome::Accepted {
                epoch,
                to,
                welcomed,
            }) => (epoch, to, welcomed),
            Ok(CommitOutcome::Stale { epoch }) => {
                return self.send(
                    conn,
                    ServerMessage::MlsCommitResult {
                        epoch,
                        accepted: false,
                    },
                )
            }
            Err(why) => return self.refuse_mls(conn, why),
        };
        self.send(
            conn,
            ServerMessage::MlsCommitResult {
                epoch,
                accepted: true,
            },
        );
        // Charged but always allowed: the group cannot lose an accepted commit or its
        // Welcome. (Only the first commit of an epoch gets here.)
        let commit_msg = ServerMessage::MlsCommit {
            from: from.clone(),
            epoch,
            commit,
        };
        let welcome_msg = welcome.map(|welcome| ServerMessage::MlsWelcome { from, welcome });
        // Charged for what it fans out: the commit to each recipient, the Welcome to each
        // joiner it adds.
        let cost = budget::wire_len(&commit_msg).saturating_mul(to.len() as u64)
            + welcome_msg
                .as_ref()
                .map_or(0, budget::wire_len)
                .saturating_mul(welcomed.len() as u64);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.broadcast.force(now, cost, rate);
        }
        for c in self.conns_of(to) {
            self.send(c, commit_msg.clone());
        }
        if let Some(msg) = welcome_msg {
            for c in self.conns_of(welcomed) {
                self.send(c, msg.clone());
            }
        }
    }

    /// A waiting joiner says it is in the group (the DS checks it was welcomed).
    fn mls_joined(&mut self, conn: ConnId, epoch: u64) {
        let Some((peer, call, _)) = self.mls_call_of(conn) else {
            return;
        };
        let Some(ds) = self.mls.get_mut(&call) else {
            return;
        };
        if let Err(why) = ds.joined(peer, epoch) {
            self.refuse_mls(conn, why);
        }
    }

    /// `peer` left an MLS call: the DS decides whether the group continues, ends, or is
    /// recreated by the earliest participant left with a session (one whose join is still
    /// being admitted, a replacing join, creates the group itself if it is alone).
    fn mls_left(&mut self, call: &str, peer: PeerId) {
        let first = self
            .registry
            .participants(call)
            .into_iter()
            .find(|p| *p != peer && self.sessions.contains_key(p));
        let Some(ds) = self.mls.get_mut(call) else {
            return;
        };
        match ds.left(peer, first) {
            LeftOutcome::Continues => {}
            LeftOutcome::Ended => {
                self.mls.remove(call);
            }
            LeftOutcome::Recreate {
                creator,
                key_packages,
            } => {
                let Some(conn) = self.sessions.get(&creator).map(|s| s.conn) else {
                    return;
                };
                self.send(conn, ServerMessage::MlsCreate {});
                for (p, blob) in key_packages {
                    if let Some(from) = self.sessions.get(&p).map(|s| s.public_id.clone()) {
                        self.send(conn, ServerMessage::MlsKeyPackage { from, blob });
                    }
                }
            }
        }
    }

    /// Renegotiate with everyone in `peer`'s call (itself included).
    fn renegotiate_call_of(&mut self, peer: PeerId) {
        let mut members: Vec<PeerId> = self
            .registry
            .peers_of(peer)
            .map(|(_, v)| v.into_iter().map(|(p, _)| p).collect())
            .unwrap_or_default();
        members.push(peer);
        for m in members {
            self.renegotiate(m);
        }
    }

    /// Bring `peer`'s remote tracks in line with its call: an m-line per track of every
    /// other participant (in a codec it can receive), departed ones inactive. If that
    /// changed anything, offer it, or, with an offer outstanding, offer once it is
    /// answered: at most one offer is outstanding per client, and later changes fold
    /// into the next one. Lines are bounded ([`Lines`]): a track no line may take yet
    /// waits for the client's next answer, which renegotiates again.
    fn renegotiate(&mut self, peer: PeerId) {
        let others: Vec<PeerId> = self
            .registry
            .peers_of(peer)
            .map(|(_, v)| v.into_iter().map(|(p, _)| p).collect())
            .unwrap_or_default();
        let codecs = self.call_codecs(peer, &others);
        let desired: Vec<(PeerId, String, SentTrack)> = others
            .iter()
            .filter_map(|o| self.sessions.get(o).map(|s| (*o, s)))
            .flat_map(|(o, s)| s.tracks.iter().map(move |t| (o, s.public_id.clone(), *t)))
            .collect();
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        let receives = s.numbering.restricted(&codecs);
        if s.neg.update(&codecs, &receives, desired) {
            self.send_offer(peer, codecs);
        }
    }

    /// The codecs of `peer`'s call: the mandatory ones plus what it and `others` share.
    fn call_codecs(&self, peer: PeerId, others: &[PeerId]) -> CodecSet {
        sdp::call_codecs(
            others
                .iter()
                .chain([&peer])
                .filter_map(|p| self.sessions.get(p).map(|s| &s.numbering)),
        )
    }

    /// Write `peer`'s next offer (with the call's `codecs`) and send it.
    fn send_offer(&mut self, peer: PeerId, codecs: CodecSet) {
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        let (sdp, revision) = s.neg.write_offer(
            codecs,
            &Description {
                offer: &s.offer,
                numbering: &s.numbering,
                ice_ufrag: &s.local_ufrag,
                ice_pwd: &s.local_pwd,
                fingerprint: s
                    .media
                    .as_ref()
                    .map_or(&self.cfg.fingerprint, |m| &m.fingerprint),
                media_addr: s.media.as_ref().map_or(self.cfg.media_addr, |m| m.addr),
                session_id: peer,
            },
        );
        let conn = s.conn;
        self.send(conn, ServerMessage::Offer { sdp, revision });
    }

    /// A client's answer to the relay's outstanding offer.
    fn answer(&mut self, conn: ConnId, sdp: &str, revision: u64) {
        let Some(peer) = self.joined_peer(conn) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        let answer_ssrcs = match s.neg.check_answer(sdp, revision) {
            Ok(ssrcs) => ssrcs,
            Err((code, msg)) => return self.error(conn, code, msg),
        };
        let call = s.call.clone();
        if let Some(ssrc) = answer_ssrcs
            .iter()
            .copied()
            .find(|x| self.ssrcs.claimed_by_other(&call, *x, Some(peer)))
        {
            // Refused like a malformed answer: the offer stays outstanding.
            return self.error(
                conn,
                ErrorCode::SsrcInUse,
                format!("answer to offer {revision}: SSRC {ssrc} is already sent by another participant of this call"),
            );
        }
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        self.ssrcs.release(&call, peer, s.claimed_ssrcs());
        s.answer_ssrcs = answer_ssrcs;
        self.ssrcs.claim(&call, peer, s.claimed_ssrcs());
        if let Some(receiving) = s.neg.accept_answer(revision) {
            if s.keyed {
                self.out.push_back(Output::Receive {
                    peer,
                    worker: s.worker,
                    ssrcs: receiving.to_vec(),
                });
            }
        }
        // Offer what changed meanwhile, and tracks that waited for a settled line.
        self.renegotiate(peer);
    }
}

#[cfg(test)]
mod tests;
