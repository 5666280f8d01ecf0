//! The control plane, with one owner: signalling connections, sessions, calls, ICE
//! credentials, the lobby, invitations, parked calls, policy decisions and every timer.
//!
//! Sans-IO in the style of str0m and quinn-proto: the driver (`net::driver`) feeds
//! [`Input`]s and the time, and carries out the [`Output`]s it polls, in order. Nothing
//! here reads a clock, touches a socket or spawns a task, so every ordering and every
//! timer is testable with a virtual clock. Because one owner changes the state and emits
//! the events in the order it changed, a `participant_joined` cannot be lost between two
//! concurrent joins, and a refused request leaves nothing behind.

use super::budget::{self, BudgetRate, ByteBudget, RateLimit};
use super::calls::{CallRegistry, JoinRequest};
use super::forward::PeerTables;
use super::lines::Lines;
use super::policy::CallingE2ee;
use super::report::{MlsRefusal, RemovalReason, Report};
use super::ssrcs::SsrcIndex;
use super::{CallKey, PeerId};
use crate::token::{self, Claims, TokenRules, TokenVerifier};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use blindrelay_protocol::mls;
use blindrelay_protocol::sdp::{
    self, Codec, CodecSet, Fingerprint, Numbering, Offer, RelayMedia, RemoteTrack, SentTrack,
};
use blindrelay_protocol::signal::{
    parse_client_message, CallMode, ClientMessage, E2eeOption, E2eeScheme, ErrorCode,
    ParticipantInfo, ServerMessage,
};
use blindrelay_protocol::tracks::{self, TrackLimits};
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{debug, info};

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
    /// Each sender's broadcast budget (see [`super::budget`]).
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
    pub call_key: CallKey,
    pub worker: usize,
    pub local_ufrag: String,
    pub local_pwd: String,
    pub remote_ufrag: String,
    pub fingerprint: Fingerprint,
    pub ssrcs: Vec<u32>,
}

impl super::ice::IceCredentials for &IcePeer {
    fn local_pwd(&self) -> &str {
        &self.local_pwd
    }
    fn remote_ufrag(&self) -> &str {
        &self.remote_ufrag
    }
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
    },
    /// The remote SSRCs a participant has tracks for (it answered the offer that added
    /// them): the only media its forwarding loop sends it.
    Receive {
        peer: PeerId,
        worker: usize,
        ssrcs: Vec<u32>,
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
}

/// A token bucket: `rate` per second, up to `burst`.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }
    fn refill(&mut self, now: Instant, rate: f64, burst: u32) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(f64::from(burst));
        self.at = now;
    }
    fn take(&mut self, now: Instant, rate: f64, burst: u32) -> bool {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Conn {
    claims: Option<Claims>,
    peer: Option<PeerId>,
    rate: Bucket,
    /// What this connection's participant may still make the relay send to others; on
    /// the connection, so leaving and joining again does not refill it.
    broadcast: ByteBudget,
    hello_deadline: Option<Instant>,
    /// A close was ordered: nothing more is read from or sent to it.
    closing: bool,
}

impl Conn {
    fn user_key(&self) -> Option<String> {
        self.claims.as_ref().map(|c| user_key(&c.sub, &c.tenant))
    }
}

#[derive(Debug)]
struct Session {
    conn: ConnId,
    public_id: String,
    user_key: String,
    role: &'static str,
    call: String,
    local_ufrag: String,
    local_pwd: String,
    worker: usize,
    /// The participant's offer: its own m-lines, its numbering and what it sends.
    offer: Offer,
    numbering: Numbering,
    tracks: Vec<SentTrack>,
    joined_at: Instant,
    last_activity: Instant,
    keyed: bool,
    neg: Negotiation,
    /// The SSRCs its last accepted answer listed (a receive-only stack reports from
    /// them): claimed like the offer's, so nobody else in the call may announce them.
    answer_ssrcs: Vec<u32>,
}

impl Session {
    /// Whether this session claims `ssrc`: its offer announced it or its answer listed it.
    #[cfg(test)]
    fn claims_ssrc(&self, ssrc: u32) -> bool {
        self.claimed_ssrcs().any(|x| x == ssrc)
    }

    /// The SSRCs it claims (see [`Session::claims_ssrc`]), each at least once.
    fn claimed_ssrcs(&self) -> impl Iterator<Item = u32> + '_ {
        self.offer
            .media
            .iter()
            .flat_map(|m| m.ssrcs.iter().copied())
            .chain(self.answer_ssrcs.iter().copied())
    }
}

/// The relay's side of one participant's renegotiation.
#[derive(Debug, Default)]
struct Negotiation {
    /// The remote tracks written into its session, in m-line order, each with its sender
    /// (bounded; see [`Lines`] for when a line may carry another track).
    remote: Lines,
    /// Descriptions written (the answer to `join` was the first).
    version: u64,
    /// The last offer's revision.
    revision: u64,
    /// The revision of the offer awaiting an answer, the mids it had, and the remote
    /// SSRCs it made active.
    outstanding: Option<(u64, Vec<String>, Vec<u32>)>,
    /// Remote SSRCs of the last answered offer: the only media this client is sent, so
    /// no packet reaches it before it has a track for it (webrtcbin loses its receive
    /// path for good on an early one; aiortc misroutes it).
    receiving: Vec<u32>,
    /// Tracks changed while an offer was outstanding: offer again after its answer.
    dirty: bool,
    next_mid: u64,
    /// The call's codecs when its last description was written.
    codecs: CodecSet,
}

/// The relay as MLS Delivery Service for one group-E2EE call: it orders commits (the
/// first of each epoch wins) and hands each Welcome to the waiting participants it adds.
/// It reads only what MLS messages show in the clear, and holds no keys.
///
/// An honest relay so defends the members against a malicious participant: only a member
/// commits; only a participant a Welcome was delivered to becomes a member, for the epoch
/// that Welcome starts; a KeyPackage that does not parse never reaches a member; and the
/// state lives while anyone is in the call, so someone is always told to (re)create the
/// group.
#[derive(Debug, Default)]
struct MlsDs {
    /// The epoch whose commit is awaited.
    epoch: u64,
    group_id: Option<Vec<u8>>,
    /// In the group: its creator, and every joiner that reported `mls_joined`.
    members: BTreeSet<PeerId>,
    /// Waiting for a Welcome (until `mls_joined`), with their KeyPackage (at most one per
    /// participant).
    waiting: BTreeMap<PeerId, WaitingKeyPackage>,
    /// Delivered a Welcome: the epochs those Welcomes start (the last few). Only these
    /// participants may say `mls_joined`, and only for one of these epochs.
    welcomed: BTreeMap<PeerId, BTreeSet<u64>>,
}

/// Welcomes remembered per waiting participant: an honest group sends one.
const WELCOMES_KEPT: usize = 8;

/// A waiting joiner's KeyPackage, as sent, and what a Welcome adding it will name.
#[derive(Debug)]
struct WaitingKeyPackage {
    blob: String,
    reference: mls::KeyPackageRef,
    signature_key: Vec<u8>,
}

/// What is wrong with an MLS blob.
#[derive(Debug, thiserror::Error)]
enum BlobError {
    #[error("not base64")]
    Base64,
    #[error(transparent)]
    Mls(#[from] mls::MlsFramingError),
    #[error("not an MLS commit")]
    NotCommit,
}

/// Why the Delivery Service refused a participant's MLS message: sent to it as
/// `mls_refused` with this text, and counted by [`MlsRefusal`].
#[derive(Debug, thiserror::Error)]
enum MlsRefused {
    #[error("no Welcome starting epoch {0} was delivered to this participant: it is not a member")]
    JoinWithoutWelcome(u64),
    #[error("only a member of the group commits")]
    CommitFromNonMember,
    #[error("bad KeyPackage: {0}")]
    BadKeyPackage(BlobError),
    #[error("another waiting participant published this KeyPackage or signature key")]
    DuplicateKeyPackage,
    #[error("already in the group")]
    KeyPackageFromMember,
    #[error("bad commit: {0}")]
    BadCommit(BlobError),
    #[error("a commit for another MLS group")]
    WrongGroup,
    #[error("bad Welcome: {0}")]
    BadWelcome(BlobError),
}

impl MlsRefused {
    fn reason(&self) -> MlsRefusal {
        match self {
            MlsRefused::JoinWithoutWelcome(_) => MlsRefusal::JoinWithoutWelcome,
            MlsRefused::CommitFromNonMember => MlsRefusal::CommitFromNonMember,
            MlsRefused::BadKeyPackage(_) => MlsRefusal::BadKeyPackage,
            MlsRefused::DuplicateKeyPackage => MlsRefusal::DuplicateKeyPackage,
            MlsRefused::KeyPackageFromMember => MlsRefusal::KeyPackageFromMember,
            MlsRefused::BadCommit(_) => MlsRefusal::BadCommit,
            MlsRefused::WrongGroup => MlsRefusal::WrongGroup,
            MlsRefused::BadWelcome(_) => MlsRefusal::BadWelcome,
        }
    }
}

fn base64_blob(b: &str) -> Result<Vec<u8>, BlobError> {
    BASE64.decode(b.as_bytes()).map_err(|_| BlobError::Base64)
}

#[derive(Debug)]
struct Invite {
    expires: Instant,
    /// A consultative transfer completes when the invitee joins: this peer then leaves.
    replaces: Option<PeerId>,
}

#[derive(Debug)]
struct Parked {
    call: String,
    tenant: String,
    expires: Instant,
}

/// Timers, each checked against the state when it fires (stale ones do nothing), so
/// none has to be cancelled.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Hello(ConnId),
    Consent(PeerId),
    Connect(PeerId),
    Invite(String, String),
    Parked(String),
    RetrieveBucket(String),
}

/// `user@tenant`: how the lobby and invitations name people.
pub fn user_key(user: &str, tenant: &str) -> String {
    format!("{user}@{tenant}")
}

fn role_label(role: &str) -> &'static str {
    token::ROLES
        .into_iter()
        .find(|r| *r == role)
        .unwrap_or("user")
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
    /// Authenticated connections not in a call, by `user@tenant`: who can be invited.
    lobby: BTreeMap<String, Vec<ConnId>>,
    invites: HashMap<(String, String), Invite>,
    parked: HashMap<String, Parked>,
    /// Wrong pickup codes per user (only users who tried one have an entry).
    retrieves: HashMap<String, Bucket>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
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
            lobby: BTreeMap::new(),
            invites: HashMap::new(),
            parked: HashMap::new(),
            retrieves: HashMap::new(),
            timers: BinaryHeap::new(),
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
        self.timers.peek().map(|Reverse((t, _))| *t)
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

    fn unix(&self, now: Instant) -> u64 {
        let (at, unix) = self.clock_origin;
        if now >= at {
            unix.saturating_add(now.duration_since(at).as_secs())
        } else {
            unix.saturating_sub(at.duration_since(now).as_secs())
        }
    }

    fn timer(&mut self, at: Instant, t: Timer) {
        self.timers.push(Reverse((at, t)));
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
        self.leave_lobby(conn);
    }

    /// Feed one input at time `now`.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Connected { conn } => {
                let deadline = now + self.cfg.hello_timeout;
                self.conns.insert(
                    conn,
                    Conn {
                        claims: None,
                        peer: None,
                        rate: Bucket::full(self.cfg.message_burst, now),
                        broadcast: ByteBudget::full(self.cfg.broadcast, now),
                        hello_deadline: Some(deadline),
                        closing: false,
                    },
                );
                self.timer(deadline, Timer::Hello(conn));
            }
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
                let since = now.saturating_duration_since(s.joined_at);
                let announced: Vec<u32> = s
                    .offer
                    .media
                    .iter()
                    .flat_map(|m| m.ssrcs.iter().copied())
                    .collect();
                let mut tables = PeerTables::new(&s.numbering, &s.tracks, &announced);
                tables.receiving = Some(s.neg.receiving.clone());
                let tables = Box::new(tables);
                let worker = s.worker;
                let Some((_, call_key, _)) = self.registry.call_of(peer) else {
                    return;
                };
                self.report(Report::JoinTime(since));
                self.out.push_back(Output::Attach {
                    peer,
                    call_key,
                    worker,
                    tables,
                });
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
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, t))) = self.timers.pop() else {
                break;
            };
            self.fire(now, t);
        }
    }

    fn fire(&mut self, now: Instant, t: Timer) {
        match t {
            Timer::Hello(conn) => {
                let due = self.conns.get(&conn).is_some_and(|c| {
                    c.claims.is_none() && !c.closing && c.hello_deadline.is_some_and(|d| d <= now)
                });
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
            Timer::Invite(key, call) => {
                let k = (key, call);
                if self.invites.get(&k).is_some_and(|i| i.expires <= now) {
                    self.invites.remove(&k);
                }
            }
            Timer::Parked(code) => {
                if self.parked.get(&code).is_some_and(|p| p.expires <= now) {
                    self.parked.remove(&code);
                }
            }
            Timer::RetrieveBucket(user) => {
                let (rate, burst) = self.retrieve_rate();
                if let Some(b) = self.retrieves.get_mut(&user) {
                    b.refill(now, rate, burst);
                    if b.tokens >= f64::from(burst) {
                        self.retrieves.remove(&user);
                    } else {
                        self.timer(now + Duration::from_secs(60), Timer::RetrieveBucket(user));
                    }
                }
            }
        }
    }

    /// Rate limit: false (and a `rate_limited` error) when the connection is over it.
    fn admit_message(&mut self, now: Instant, conn: ConnId) -> bool {
        let (rate, burst) = (
            f64::from(self.cfg.messages_per_second),
            self.cfg.message_burst,
        );
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.closing {
            return false;
        }
        if c.rate.take(now, rate, burst) {
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
    /// other participants of the call, whoever it is addressed to (why: [`super::budget`]).
    /// `always`: a message the call cannot lose, spent even beyond the budget. Otherwise
    /// false, with a `rate_limited` refusal, when the budget does not cover it.
    fn charge_broadcast(
        &mut self,
        now: Instant,
        conn: ConnId,
        peer: PeerId,
        wire: u64,
        always: bool,
    ) -> bool {
        let others = self
            .registry
            .peers_of(peer)
            .map_or(0, |(_, v)| v.len() as u64);
        let cost = wire.saturating_mul(others);
        let rate = self.cfg.broadcast;
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if always {
            c.broadcast.force(now, cost, rate);
            return true;
        }
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
                c.claims = Some(claims);
                c.hello_deadline = None;
                self.lobby.entry(key).or_default().push(conn);
                self.send(conn, reply);
            }
            Err(e) => {
                // A connection that lost its authentication gets a new hello deadline.
                if c.claims.take().is_some() || c.hello_deadline.is_none() {
                    let d = now + hello_timeout;
                    c.hello_deadline = Some(d);
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
        if let Some(v) = self.lobby.get_mut(&key) {
            v.retain(|c| *c != conn);
            if v.is_empty() {
                self.lobby.remove(&key);
            }
        }
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
        let invite = self
            .invites
            .remove(&(key.clone(), call.clone()))
            .filter(|i| i.expires > now);
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
        let answer_sdp = sdp::write_relay_description(
            &offer,
            &numbering.restricted(&codecs),
            &[],
            &RelayMedia {
                ice_ufrag: &local_ufrag,
                ice_pwd: &local_pwd,
                fingerprint: &self.cfg.fingerprint,
                media_addr: self.cfg.media_addr,
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
                neg: Negotiation {
                    codecs,
                    remote,
                    ..Negotiation::default()
                },
                answer_ssrcs: Vec::new(),
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
            let ds = self.mls.entry(call.clone()).or_default();
            if joined.others.is_empty() {
                // The first joiner creates the group (epoch 0): `joined` with nobody else
                // tells it to.
                *ds = MlsDs::default();
                ds.members.insert(peer);
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
            .invites
            .get(&(user_key(&claims.sub, &claims.tenant), call.to_string()))
            .is_some_and(|i| i.expires > now);
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
        left: Option<super::calls::Left>,
    ) {
        let Some(session) = self.sessions.remove(&peer) else {
            return;
        };
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
            self.lobby.entry(key).or_default().push(conn);
        }
        debug!(reason = reason.as_str(), "participant removed");
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
                if self.charge_broadcast(now, conn, peer, budget::wire_len(&msg), false) {
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

    /// A joiner's KeyPackage: parsed and its KeyPackageRef computed now (one that does not
    /// parse is refused here, before any member could try to commit it), kept until its
    /// owner joins, and passed to the group's members.
    fn mls_key_package(&mut self, now: Instant, conn: ConnId, blob: String) {
        let Some((peer, call, from)) = self.mls_call_of(conn) else {
            return;
        };
        let parsed = base64_blob(&blob).and_then(|raw| {
            let kp = mls::parse_key_package(&raw)?;
            Ok((kp.reference()?, kp.signature_key.to_vec()))
        });
        let (reference, signature_key) = match parsed {
            Ok(p) => p,
            Err(e) => return self.refuse_mls(conn, MlsRefused::BadKeyPackage(e)),
        };
        let Some(ds) = self.mls.get_mut(&call) else {
            return;
        };
        if ds.members.contains(&peer) {
            return self.refuse_mls(conn, MlsRefused::KeyPackageFromMember);
        }
        // The same KeyPackage (or signing key) under two participants could only fail a
        // commit adding both, or be welcomed for the wrong one.
        if ds.waiting.iter().any(|(p, w)| {
            *p != peer && (w.reference == reference || w.signature_key == signature_key)
        }) {
            return self.refuse_mls(conn, MlsRefused::DuplicateKeyPackage);
        }
        // Charged before anything is kept: a refused KeyPackage leaves no trace.
        let wire = budget::wire_len(&ServerMessage::MlsKeyPackage {
            from: from.clone(),
            blob: blob.clone(),
        });
        if !self.charge_broadcast(now, conn, peer, wire, false) {
            return;
        }
        let Some(ds) = self.mls.get_mut(&call) else {
            return;
        };
        ds.waiting.insert(
            peer,
            WaitingKeyPackage {
                blob: blob.clone(),
                reference,
                signature_key,
            },
        );
        // Those waiting get it too: whoever is in the group by the time it commits may
        // be the committer.
        let others: Vec<PeerId> = ds
            .members
            .iter()
            .chain(ds.waiting.keys())
            .copied()
            .filter(|p| *p != peer)
            .collect();
        for c in self.conns_of(others) {
            self.send(
                c,
                ServerMessage::MlsKeyPackage {
                    from: from.clone(),
                    blob: blob.clone(),
                },
            );
        }
    }

    /// A member's commit: the first of its epoch is accepted and goes to every other
    /// member and waiting joiner, and its Welcome to the waiting joiners whose
    /// KeyPackageRef it names; a later one for that epoch is refused. Only clear parts
    /// are read: the commit's group id, epoch and content type, the Welcome's refs.
    fn mls_commit(&mut self, now: Instant, conn: ConnId, commit: String, welcome: Option<String>) {
        let Some((peer, call, from)) = self.mls_call_of(conn) else {
            return;
        };
        let raw = match base64_blob(&commit) {
            Ok(r) => r,
            Err(e) => return self.refuse_mls(conn, MlsRefused::BadCommit(e)),
        };
        let framing = match mls::parse_framing(&raw) {
            Ok(f) if f.content_type == mls::CONTENT_COMMIT => f,
            Ok(_) => return self.refuse_mls(conn, MlsRefused::BadCommit(BlobError::NotCommit)),
            Err(e) => return self.refuse_mls(conn, MlsRefused::BadCommit(e.into())),
        };
        let Some(ds) = self.mls.get(&call) else {
            return;
        };
        if !ds.members.contains(&peer) {
            return self.refuse_mls(conn, MlsRefused::CommitFromNonMember);
        }
        if ds
            .group_id
            .as_deref()
            .is_some_and(|g| g != framing.group_id)
        {
            return self.refuse_mls(conn, MlsRefused::WrongGroup);
        }
        let epoch = framing.epoch;
        if epoch != ds.epoch {
            return self.send(
                conn,
                ServerMessage::MlsCommitResult {
                    epoch,
                    accepted: false,
                },
            );
        }
        // Whom the Welcome adds, before accepting anything: a commit whose Welcome does
        // not parse would move the group on without its joiners.
        let welcomed: Vec<PeerId> = match welcome.as_deref().map(|w| {
            let raw = base64_blob(w)?;
            let parsed = mls::parse_welcome(&raw)?;
            let named: BTreeSet<&[u8]> = parsed.new_members().collect();
            Ok::<_, BlobError>(
                ds.waiting
                    .iter()
                    .filter(|(_, w)| named.contains(&w.reference[..]))
                    .map(|(p, _)| *p)
                    .collect(),
            )
        }) {
            None => Vec::new(),
            Some(Ok(w)) => w,
            Some(Err(e)) => return self.refuse_mls(conn, MlsRefused::BadWelcome(e)),
        };
        let Some(ds) = self.mls.get_mut(&call) else {
            return;
        };
        ds.group_id.get_or_insert_with(|| framing.group_id.to_vec());
        ds.epoch += 1;
        for p in &welcomed {
            let epochs = ds.welcomed.entry(*p).or_default();
            epochs.insert(ds.epoch);
            while epochs.len() > WELCOMES_KEPT {
                epochs.pop_first();
            }
        }
        // Commits go to those waiting as well: one accepted between a joiner's Welcome
        // and its `mls_joined` must reach it (it ignores those from before its epoch).
        let others: Vec<PeerId> = ds
            .members
            .iter()
            .chain(ds.waiting.keys())
            .copied()
            .filter(|p| *p != peer)
            .collect();
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
            commit: commit.clone(),
        };
        let mut wire = budget::wire_len(&commit_msg);
        if let Some(w) = &welcome {
            wire += budget::wire_len(&ServerMessage::MlsWelcome {
                from: from.clone(),
                welcome: w.clone(),
            });
        }
        self.charge_broadcast(now, conn, peer, wire, true);
        for c in self.conns_of(others) {
            self.send(
                c,
                ServerMessage::MlsCommit {
                    from: from.clone(),
                    epoch,
                    commit: commit.clone(),
                },
            );
        }
        if let Some(welcome) = welcome {
            for c in self.conns_of(welcomed) {
                self.send(
                    c,
                    ServerMessage::MlsWelcome {
                        from: from.clone(),
                        welcome: welcome.clone(),
                    },
                );
            }
        }
    }

    /// A waiting joiner is in the group now: only if a Welcome starting that epoch was
    /// delivered to it. (A participant that merely claims membership could otherwise get
    /// a garbage commit accepted as the epoch's, and freeze the real members there.)
    fn mls_joined(&mut self, conn: ConnId, epoch: u64) {
        let Some((peer, call, _)) = self.mls_call_of(conn) else {
            return;
        };
        let Some(ds) = self.mls.get_mut(&call) else {
            return;
        };
        let welcomed = ds.welcomed.get(&peer).is_some_and(|e| e.contains(&epoch));
        if !welcomed || ds.members.contains(&peer) {
            return self.refuse_mls(conn, MlsRefused::JoinWithoutWelcome(epoch));
        }
        ds.welcomed.remove(&peer);
        ds.waiting.remove(&peer);
        ds.members.insert(peer);
    }

    /// `peer` left an MLS call. If no member of the group is left but someone is still in
    /// the call, the earliest of them (whether or not its KeyPackage arrived) starts the
    /// group anew and gets the waiting KeyPackages. The state goes with the call's last
    /// participant, so a later joiner is never left without a group to be added to.
    fn mls_left(&mut self, call: &str, peer: PeerId) {
        let Some(ds) = self.mls.get_mut(call) else {
            return;
        };
        ds.members.remove(&peer);
        ds.waiting.remove(&peer);
        ds.welcomed.remove(&peer);
        if !ds.members.is_empty() {
            return;
        }
        // Only participants with a session: one whose join is still being admitted (a
        // replacing join) creates the group itself if it is alone.
        let first = self
            .registry
            .participants(call)
            .into_iter()
            .find(|p| *p != peer && self.sessions.contains_key(p));
        let (Some(first), Some(ds)) = (first, self.mls.get_mut(call)) else {
            self.mls.remove(call);
            return;
        };
        ds.waiting.remove(&first);
        // Welcomes into the old group are void: a joiner welcomed but not yet joined is
        // added again (its KeyPackage stays waiting).
        ds.welcomed.clear();
        ds.members.insert(first);
        ds.epoch = 0;
        ds.group_id = None;
        let kps: Vec<(PeerId, String)> = ds
            .waiting
            .iter()
            .map(|(p, w)| (*p, w.blob.clone()))
            .collect();
        let Some(conn) = self.sessions.get(&first).map(|s| s.conn) else {
            return;
        };
        self.send(conn, ServerMessage::MlsCreate {});
        for (p, blob) in kps {
            if let Some(from) = self.sessions.get(&p).map(|s| s.public_id.clone()) {
                self.send(conn, ServerMessage::MlsKeyPackage { from, blob });
            }
        }
    }

    /// A chat goes to every other participant of the call, within the sender's broadcast
    /// budget and `max_chat_bytes`.
    fn chat(&mut self, now: Instant, conn: ConnId, body: String) {
        let Some(peer) = self.joined_peer(conn) else {
            return;
        };
        if body.len() > self.cfg.max_chat_bytes {
            return self.error(
                conn,
                ErrorCode::MessageTooLarge,
                format!(
                    "a chat body of {} bytes exceeds signal.max_chat_bytes ({})",
                    body.len(),
                    self.cfg.max_chat_bytes
                ),
            );
        }
        let Some(from) = self.sessions.get(&peer).map(|s| s.public_id.clone()) else {
            return;
        };
        let others: Vec<ConnId> = self
            .registry
            .peers_of(peer)
            .map(|(_, v)| v.into_iter().map(|(p, _)| p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| self.sessions.get(&p).map(|s| s.conn))
            .collect();
        let msg = ServerMessage::Chat { from, body };
        if !self.charge_broadcast(now, conn, peer, budget::wire_len(&msg), false) {
            return;
        }
        for c in others {
            self.send(c, msg.clone());
        }
    }

    fn feature(&mut self, now: Instant, conn: ConnId, name: &str, arg: Option<String>) {
        let Some(label) = FEATURES.into_iter().find(|f| *f == name) else {
            return self.error(
                conn,
                ErrorCode::UnknownFeature,
                format!("unknown feature `{name}`"),
            );
        };
        let Some(claims) = self.conns.get(&conn).and_then(|c| c.claims.clone()) else {
            return self.error(
                conn,
                ErrorCode::NotAuthenticated,
                "send hello with a token first".into(),
            );
        };
        let peer = self.conns.get(&conn).and_then(|c| c.peer);
        let mode = peer.and_then(|p| self.registry.call_of(p).map(|(_, _, m)| m));
        debug!(feature = label, "feature requested");
        if mode == Some(CallMode::E2ee) {
            self.report(Report::FeatureRefused(label));
            return self.error(
                conn,
                ErrorCode::FeatureUnavailableInE2eeCall,
                format!("`{name}` is unavailable in an end-to-end encrypted call: it needs the media in the clear or a third party"),
            );
        }
        let mut after: Option<(PeerId, RemovalReason)> = None;
        // The request's result goes out before the events it caused (invitations, the
        // participants a merge brought in), so a client always learns the outcome first.
        let mark = self.out.len();
        let result = self.carry_out(now, conn, peer, &claims, label, arg.as_deref(), &mut after);
        let reply = match result {
            Ok(detail) => ServerMessage::FeatureResult {
                name: name.to_string(),
                ok: true,
                detail: Some(detail),
            },
            Err((code, message)) => {
                self.report(Report::SignallingError(code));
                ServerMessage::FeatureResult {
                    name: name.to_string(),
                    ok: false,
                    detail: Some(format!("{}: {message}", code.as_str())),
                }
            }
        };
        if self.conns.get(&conn).is_some_and(|c| !c.closing) {
            self.out.insert(mark, Output::Send { conn, msg: reply });
        }
        // A transfer or park hands over after the caller has its result.
        if let Some((p, reason)) = after {
            self.remove_peer(now, p, reason);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn carry_out(
        &mut self,
        now: Instant,
        conn: ConnId,
        peer: Option<PeerId>,
        claims: &Claims,
        name: &'static str,
        arg: Option<&str>,
        after: &mut Option<(PeerId, RemovalReason)>,
    ) -> Result<String, Refusal> {
        let me = user_key(&claims.sub, &claims.tenant);
        if name == "retrieve" {
            return self.retrieve(now, conn, claims, arg);
        }
        let peer = peer.ok_or((ErrorCode::NotJoined, "join a call first".to_string()))?;
        let (call, _, _) = self
            .registry
            .call_of(peer)
            .ok_or((ErrorCode::NotJoined, "not in a call".to_string()))?;
        let target = || {
            let a = arg.ok_or((
                ErrorCode::BadRequest,
                format!("{name} needs a user (user or user@tenant)"),
            ))?;
            Ok::<String, Refusal>(if a.contains('@') {
                a.to_string()
            } else {
                user_key(a, &claims.tenant)
            })
        };
        let offline = |who: &str| {
            (
                ErrorCode::UnknownParticipant,
                format!("{who} is not online"),
            )
        };
        match name {
            "add_participant" => {
                let who = target()?;
                self.invite(now, &who, &call, &claims.sub, name, None)?
                    .then(|| format!("invited {who}"))
                    .ok_or_else(|| offline(&who))
            }
            "transfer" => {
                let who = target()?;
                if !self.invite(now, &who, &call, &claims.sub, name, None)? {
                    return Err(offline(&who));
                }
                // A blind transfer: the caller hands over at once.
                *after = Some((peer, RemovalReason::Transferred));
                Ok(format!("call transferred to {who}"))
            }
            "consult_transfer" => {
                let who = target()?;
                self.invite(now, &who, &call, &claims.sub, name, Some(peer))?
                    .then(|| format!("consulting {who}; the call is theirs when they join"))
                    .ok_or_else(|| offline(&who))
            }
            "merge" => {
                let other = arg.ok_or((
                    ErrorCode::BadRequest,
                    "merge needs the other call's id".to_string(),
                ))?;
                // Membership decides, whatever call the token names: the requester's
                // identity must be in the other call too (see `CallRegistry::merge`).
                self.merge(peer, other)?;
                Ok(format!("merged call {other} into this call"))
            }
            "park" => {
                if self.parked.len() >= self.cfg.max_parked {
                    return Err((ErrorCode::RelayFull, "too many parked calls".into()));
                }
                // Unique among the parked calls: a retrieve can never find another's.
                let code = loop {
                    let c = format!("{:06}", self.rng.random_range(0..1_000_000u32));
                    if !self.parked.contains_key(&c) {
                        break c;
                    }
                };
                let expires = now + self.cfg.park_ttl;
                self.parked.insert(
                    code.clone(),
                    Parked {
                        call,
                        tenant: claims.tenant.clone(),
                        expires,
                    },
                );
                self.timer(expires, Timer::Parked(code.clone()));
                let _ = me;
                *after = Some((peer, RemovalReason::Parked));
                Ok(code)
            }
            "record" | "live_captions" | "transcription" => {
                let role = match name {
                    "record" => "bot:recording",
                    "live_captions" => "bot:captions",
                    _ => "bot:transcription",
                };
                let bot = self
                    .lobby
                    .iter()
                    .find(|(_, conns)| {
                        conns.iter().any(|c| {
                            self.conns
                                .get(c)
                                .and_then(|c| c.claims.as_ref())
                                .is_some_and(|cl| cl.role == role && cl.tenant == claims.tenant)
                        })
                    })
                    .map(|(k, _)| k.clone());
                match bot {
                    Some(k) if self.invite(now, &k, &call, &claims.sub, role, None)? => {
                        Ok(format!("{role} invited"))
                    }
                    _ => Err((
                        ErrorCode::UnknownParticipant,
                        format!("no {role} is available"),
                    )),
                }
            }
            _ => Err((
                ErrorCode::UnknownFeature,
                format!("unknown feature `{name}`"),
            )),
        }
    }

    fn retrieve_rate(&self) -> (f64, u32) {
        let per_min = self.cfg.retrieve_attempts_per_minute.max(1);
        (f64::from(per_min) / 60.0, per_min)
    }

    fn retrieve(
        &mut self,
        now: Instant,
        conn: ConnId,
        claims: &Claims,
        arg: Option<&str>,
    ) -> Result<String, Refusal> {
        let code = arg.ok_or((
            ErrorCode::BadRequest,
            "retrieve needs the pickup code".to_string(),
        ))?;
        let me = user_key(&claims.sub, &claims.tenant);
        let (rate, burst) = self.retrieve_rate();
        // Only wrong codes spend the budget; an exhausted one refuses every attempt.
        if let Some(b) = self.retrieves.get_mut(&me) {
            b.refill(now, rate, burst);
            if b.tokens < 1.0 {
                return Err((
                    ErrorCode::RateLimited,
                    "too many wrong pickup codes; try again later".into(),
                ));
            }
        }
        let found = self
            .parked
            .get(code)
            .filter(|p| p.tenant == claims.tenant && p.expires > now)
            .map(|p| p.call.clone());
        let Some(call) = found else {
            let fresh = !self.retrieves.contains_key(&me);
            let b = self
                .retrieves
                .entry(me.clone())
                .or_insert_with(|| Bucket::full(burst, now));
            b.tokens -= 1.0;
            if fresh {
                self.timer(now + Duration::from_secs(60), Timer::RetrieveBucket(me));
            }
            return Err((
                ErrorCode::BadRequest,
                "no call is parked under that code".into(),
            ));
        };
        if self.conns.get(&conn).is_some_and(|c| c.peer.is_some()) {
            return Err((
                ErrorCode::AlreadyJoined,
                "retrieve from a connection that is not in a call".into(),
            ));
        }
        self.parked.remove(code);
        // The retriever is invited to the parked call; its own lobby entry gets it.
        if !self.invite(now, &me, &call, &claims.sub, "retrieve", None)? {
            return Err((
                ErrorCode::NotJoined,
                "retrieve from a connection that is not in a call".into(),
            ));
        }
        Ok(format!("retrieving the call parked under {code}"))
    }

    /// Invite `key` (everyone of it in the lobby) to `call`. Ok(false): nobody to invite.
    fn invite(
        &mut self,
        now: Instant,
        key: &str,
        call: &str,
        by: &str,
        reason: &str,
        replaces: Option<PeerId>,
    ) -> Result<bool, Refusal> {
        let Some(conns) = self.lobby.get(key).cloned() else {
            return Ok(false);
        };
        let k = (key.to_string(), call.to_string());
        if !self.invites.contains_key(&k) && self.invites.len() >= self.cfg.max_invites {
            return Err((ErrorCode::RelayFull, "too many pending invitations".into()));
        }
        for c in conns {
            self.send(
                c,
                ServerMessage::Invite {
                    call: call.to_string(),
                    by: by.to_string(),
                    reason: reason.to_string(),
                },
            );
        }
        let expires = now + self.cfg.invite_ttl;
        self.invites.insert(k, Invite { expires, replaces });
        self.timer(expires, Timer::Invite(key.to_string(), call.to_string()));
        Ok(true)
    }

    /// Move the other call's participants into `peer`'s call: membership, forwarding
    /// loop, and everyone told who is now with them.
    fn merge(&mut self, peer: PeerId, other: &str) -> Result<(), Refusal> {
        // SSRCs stay unique in the merged call, as a join keeps them. Checked only when
        // the requester is in the other call too, so the refusal tells nothing of a call
        // it is not in (the registry refuses every other case alike).
        if let Some(ssrc) = self.merge_collision(peer, other) {
            return Err((
                ErrorCode::SsrcInUse,
                format!("SSRC {ssrc} is sent in both calls"),
            ));
        }
        let merged = self.registry.merge(peer, other)?;
        self.report(Report::Calls(CallMode::Standard, -1));
        for (p, _) in &merged.moved {
            if let Some(s) = self.sessions.get_mut(p) {
                s.worker = merged.worker;
                let to = self
                    .registry
                    .call_of(peer)
                    .map(|(id, _, _)| id)
                    .unwrap_or_default();
                let from = std::mem::replace(&mut s.call, to);
                self.ssrcs.release(&from, *p, s.claimed_ssrcs());
                self.ssrcs.claim(&s.call, *p, s.claimed_ssrcs());
                self.out.push_back(Output::Move {
                    peer: *p,
                    ufrag: s.local_ufrag.clone(),
                    call_key: merged.call_key,
                    from_worker: merged.from_worker,
                    to_worker: merged.worker,
                });
            }
        }
        let tell = |this: &mut Self,
                    to: &[(PeerId, ParticipantInfo)],
                    about: &[(PeerId, ParticipantInfo)]| {
            for (p, _) in to {
                if let Some(c) = this.sessions.get(p).map(|s| s.conn) {
                    for (_, info) in about {
                        this.send(
                            c,
                            ServerMessage::ParticipantJoined {
                                participant: info.clone(),
                            },
                        );
                    }
                }
            }
        };
        tell(self, &merged.existing, &merged.moved);
        tell(self, &merged.moved, &merged.existing);
        self.renegotiate_call_of(peer);
        Ok(())
    }

    /// An SSRC claimed both in `peer`'s call and in call `other`, if `peer`'s identity is
    /// in both.
    fn merge_collision(&self, peer: PeerId, other: &str) -> Option<u32> {
        let me = self.sessions.get(&peer)?;
        let theirs: Vec<&Session> = self
            .registry
            .participants(other)
            .iter()
            .filter_map(|p| self.sessions.get(p))
            .collect();
        if !theirs.iter().any(|s| s.user_key == me.user_key) {
            return None;
        }
        theirs
            .iter()
            .flat_map(|s| s.claimed_ssrcs())
            .find(|x| self.ssrcs.owner(&me.call, *x).is_some())
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
        let neg = &mut s.neg;
        // A join or leave that changes the call's codecs changes every description.
        let mut changed = neg.codecs != codecs;
        changed |= neg.remote.retire(|owner, ssrc| {
            desired
                .iter()
                .any(|(o, _, d)| *o == owner && d.ssrc == ssrc)
        });
        let mut waiting = 0;
        for (o, stream, d) in desired {
            if !receives.receives_kind(d.kind) || neg.remote.has_active(o, d.ssrc) {
                continue;
            }
            let track = RemoteTrack {
                mid: format!("r{}", neg.next_mid),
                kind: d.kind,
                stream,
                ssrc: d.ssrc,
                active: true,
            };
            if neg.remote.place(track, o) {
                neg.next_mid += 1;
                changed = true;
            } else {
                // No line may take it until the client answers: the answer renegotiates.
                waiting += 1;
            }
        }
        if waiting > 0 {
            debug!(waiting, "tracks wait for the client to settle lines");
        }
        if !changed && !neg.dirty {
            return;
        }
        if neg.outstanding.is_some() {
            neg.dirty = true;
            return;
        }
        self.send_offer(peer);
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

    fn send_offer(&mut self, peer: PeerId) {
        let (fingerprint, media_addr) = (self.cfg.fingerprint.clone(), self.cfg.media_addr);
        let others: Vec<PeerId> = self
            .registry
            .peers_of(peer)
            .map(|(_, v)| v.into_iter().map(|(p, _)| p).collect())
            .unwrap_or_default();
        let codecs = self.call_codecs(peer, &others);
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        s.neg.codecs = codecs;
        s.neg.revision += 1;
        s.neg.version += 1;
        s.neg.dirty = false;
        let remote: Vec<RemoteTrack> = s.neg.remote.tracks().cloned().collect();
        s.neg.remote.offered(s.neg.revision);
        let sdp = sdp::write_relay_description(
            &s.offer,
            &s.numbering.restricted(&codecs),
            &remote,
            &RelayMedia {
                ice_ufrag: &s.local_ufrag,
                ice_pwd: &s.local_pwd,
                fingerprint: &fingerprint,
                media_addr,
                session_id: peer,
                version: s.neg.version,
            },
            true,
        );
        let mids = s
            .offer
            .media
            .iter()
            .map(|m| m.mid.clone())
            .chain(remote.iter().map(|t| t.mid.clone()))
            .collect();
        let revision = s.neg.revision;
        let active = remote.iter().filter(|t| t.active).map(|t| t.ssrc).collect();
        s.neg.outstanding = Some((revision, mids, active));
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
        let checked = match &s.neg.outstanding {
            Some((r, mids, _)) if *r == revision => sdp::check_answer(sdp, mids).map_err(|e| {
                (
                    ErrorCode::BadSdp,
                    format!("answer to offer {revision}: {e}"),
                )
            }),
            _ => Err((
                ErrorCode::BadRequest,
                format!("no offer with revision {revision} is waiting for an answer"),
            )),
        };
        let answer_ssrcs = match checked {
            Ok(ssrcs) => ssrcs,
            Err((code, msg)) => return self.error(conn, code, msg),
        };
        // What a participant claims is bounded: the SSRC index grows with it.
        let lines = s
            .neg
            .outstanding
            .as_ref()
            .map_or(0, |(_, mids, _)| mids.len());
        if answer_ssrcs.len() > 2 * lines + tracks::MAX_SSRCS_PER_LINE {
            return self.error(
                conn,
                ErrorCode::BadSdp,
                format!(
                    "answer to offer {revision}: {} SSRCs for {lines} m-lines",
                    answer_ssrcs.len()
                ),
            );
        }
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
        s.neg.remote.answered(revision);
        if let Some((_, _, active)) = s.neg.outstanding.take() {
            s.neg.receiving = active;
            if s.keyed {
                self.out.push_back(Output::Receive {
                    peer,
                    worker: s.worker,
                    ssrcs: s.neg.receiving.clone(),
                });
            }
        }
        // Offer what changed meanwhile, and tracks that waited for a settled line.
        self.renegotiate(peer);
    }
}

// --- invariants (props branch) ---
impl ControlPlane {
    /// The plane's invariants, for property tests and the fuzz target (issue 19): `Err`
    /// names the first one broken. Not for production paths: it walks every table.
    ///
    /// (1) no participant in two calls; (2) the SSRC index is exactly the sessions'
    /// claims, one owner each; (3) every live state has its timer, and every other timer
    /// is stale in a way that makes its firing do nothing early (the heap is lazy: stale
    /// entries stay until their time); (4) tables and queues within their bounds.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        // (1) Sessions, connections and the registry agree.
        let mut calls: BTreeMap<&str, usize> = BTreeMap::new();
        for (p, s) in &self.sessions {
            let c = self
                .conns
                .get(&s.conn)
                .ok_or_else(|| format!("peer {p}: its conn {} is gone", s.conn))?;
            if c.peer != Some(*p) {
                return Err(format!("peer {p}: conn {} names {:?}", s.conn, c.peer));
            }
            if c.closing {
                return Err(format!("peer {p}: its conn {} is closing", s.conn));
            }
            match self.registry.call_of(*p) {
                Some((id, _, _)) if id == s.call => {}
                other => {
                    return Err(format!(
                        "peer {p}: session in {}, registry {other:?}",
                        s.call
                    ))
                }
            }
            if *p >= self.next_peer {
                return Err(format!("peer {p} not yet allocated"));
            }
            *calls.entry(s.call.as_str()).or_default() += 1;
        }
        for (conn, c) in &self.conns {
            if let Some(p) = c.peer {
                if self.sessions.get(&p).map(|s| s.conn) != Some(*conn) {
                    return Err(format!("conn {conn} names peer {p}, not its session"));
                }
            }
        }
        for (call, n) in &calls {
            let members = self.registry.participants(call);
            if members.len() != *n || members.iter().any(|p| !self.sessions.contains_key(p)) {
                return Err(format!("call {call}: registry {members:?}, {n} sessions"));
            }
        }
        if calls.len() != self.registry.call_count() {
            return Err(format!(
                "{} calls with sessions, {} in the registry",
                calls.len(),
                self.registry.call_count()
            ));
        }
        // (2) The SSRC index is the sessions' claims, and no SSRC has two claimants.
        let mut claims: HashMap<(&str, u32), PeerId> = HashMap::new();
        for (p, s) in &self.sessions {
            for x in s.claimed_ssrcs() {
                if let Some(o) = claims.insert((s.call.as_str(), x), *p) {
                    if o != *p {
                        return Err(format!("call {}: SSRC {x} claimed by {o} and {p}", s.call));
                    }
                }
            }
        }
        let indexed: usize = self.ssrcs.by_call.values().map(HashMap::len).sum();
        if indexed != claims.len() {
            return Err(format!("{indexed} SSRCs indexed, {} claimed", claims.len()));
        }
        for ((call, x), p) in &claims {
            if self.ssrcs.owner(call, *x) != Some(*p) {
                return Err(format!(
                    "call {call}: SSRC {x} claimed by {p}, index says {:?}",
                    self.ssrcs.owner(call, *x)
                ));
            }
        }
        // (3) Timers. Each live state's own entry, and what every entry refers to.
        let mut consent: HashMap<PeerId, usize> = HashMap::new();
        let mut connect: HashMap<PeerId, usize> = HashMap::new();
        let mut hello: BTreeSet<ConnId> = BTreeSet::new();
        let mut invites: BTreeSet<&(String, String)> = BTreeSet::new();
        let mut parked: BTreeSet<&str> = BTreeSet::new();
        let mut retrieves: BTreeSet<&str> = BTreeSet::new();
        for Reverse((at, t)) in self.timers.iter() {
            match t {
                Timer::Hello(conn) => {
                    if let Some(d) = self.conns.get(conn).and_then(|c| c.hello_deadline) {
                        match at.cmp(&d) {
                            std::cmp::Ordering::Equal => {
                                hello.insert(*conn);
                            }
                            std::cmp::Ordering::Greater => {
                                return Err(format!("conn {conn}: hello timer after its deadline"))
                            }
                            std::cmp::Ordering::Less => {}
                        }
                    }
                }
                Timer::Consent(p) => {
                    if *p >= self.next_peer {
                        return Err(format!("consent timer of unallocated peer {p}"));
                    }
                    if self.sessions.contains_key(p) {
                        *consent.entry(*p).or_default() += 1;
                    }
                }
                Timer::Connect(p) => {
                    if *p >= self.next_peer {
                        return Err(format!("connect timer of unallocated peer {p}"));
                    }
                    if let Some(s) = self.sessions.get(p) {
                        if *at != s.joined_at + self.cfg.connect_timeout {
                            return Err(format!("peer {p}: connect timer not at join + timeout"));
                        }
                        *connect.entry(*p).or_default() += 1;
                    }
                }
                Timer::Invite(key, call) => {
                    let k = (key.clone(), call.clone());
                    if let Some((k, i)) = self.invites.get_key_value(&k) {
                        if *at == i.expires {
                            invites.insert(k);
                        } else if *at > i.expires {
                            return Err(format!("invite {k:?}: timer after its expiry"));
                        }
                    }
                }
                Timer::Parked(code) => {
                    if let Some((c, p)) = self.parked.get_key_value(code) {
                        if *at == p.expires {
                            parked.insert(c.as_str());
                        } else if *at > p.expires {
                            return Err(format!("parked {code}: timer after its expiry"));
                        }
                    }
                }
                Timer::RetrieveBucket(user) => {
                    if let Some((u, _)) = self.retrieves.get_key_value(user) {
                        retrieves.insert(u.as_str());
                    }
                }
            }
        }
        for (p, s) in &self.sessions {
            if consent.get(p) != Some(&1) {
                return Err(format!("peer {p}: {:?} consent timers", consent.get(p)));
            }
            if !s.keyed && connect.get(p) != Some(&1) {
                return Err(format!(
                    "peer {p}: unkeyed with {:?} connect timers",
                    connect.get(p)
                ));
            }
        }
        for (conn, c) in &self.conns {
            let waits = c.claims.is_none() && !c.closing;
            if waits && (c.hello_deadline.is_none() || !hello.contains(conn)) {
                return Err(format!(
                    "conn {conn}: unauthenticated without a hello timer"
                ));
            }
        }
        if invites.len() != self.invites.len() {
            return Err(format!(
                "{} invites, {} with a timer",
                self.invites.len(),
                invites.len()
            ));
        }
        if parked.len() != self.parked.len() {
            return Err(format!(
                "{} parked, {} with a timer",
                self.parked.len(),
                parked.len()
            ));
        }
        if retrieves.len() != self.retrieves.len() {
            return Err(format!(
                "{} retrieve buckets, {} with a timer",
                self.retrieves.len(),
                retrieves.len()
            ));
        }
        // (4) Bounds. The lobby: exactly the authenticated, open connections not in a
        // call, each once, under its own name.
        let mut in_lobby: BTreeSet<ConnId> = BTreeSet::new();
        for (key, conns) in &self.lobby {
            if conns.is_empty() {
                return Err(format!("lobby entry {key} is empty"));
            }
            for conn in conns {
                let c = self
                    .conns
                    .get(conn)
                    .ok_or_else(|| format!("lobby holds gone conn {conn}"))?;
                if c.user_key().as_ref() != Some(key) || c.peer.is_some() || c.closing {
                    return Err(format!(
                        "lobby {key} holds conn {conn}: {:?}, peer {:?}, closing {}",
                        c.user_key(),
                        c.peer,
                        c.closing
                    ));
                }
                if !in_lobby.insert(*conn) {
                    return Err(format!("conn {conn} twice in the lobby"));
                }
            }
        }
        for (conn, c) in &self.conns {
            if c.claims.is_some() && c.peer.is_none() && !c.closing && !in_lobby.contains(conn) {
                return Err(format!(
                    "conn {conn}: authenticated, idle and not in the lobby"
                ));
            }
        }
        if self.invites.len() > self.cfg.max_invites {
            return Err(format!(
                "{} invites > {}",
                self.invites.len(),
                self.cfg.max_invites
            ));
        }
        if self.parked.len() > self.cfg.max_parked {
            return Err(format!(
                "{} parked > {}",
                self.parked.len(),
                self.cfg.max_parked
            ));
        }
        if self.sessions.len() > self.cfg.max_total_participants {
            return Err(format!("{} sessions over the limit", self.sessions.len()));
        }
        if self.registry.call_count() > self.cfg.max_calls {
            return Err(format!(
                "{} calls over the limit",
                self.registry.call_count()
            ));
        }
        let lines = |kind| {
            self.cfg
                .track_limits
                .remote_lines(kind, self.cfg.max_call_participants)
        };
        let max_lines = lines("audio") + lines("video");
        for (p, s) in &self.sessions {
            if s.neg.remote.len() > max_lines {
                return Err(format!(
                    "peer {p}: {} remote lines > {max_lines}",
                    s.neg.remote.len()
                ));
            }
            if calls.get(s.call.as_str()).copied().unwrap_or(0) > self.cfg.max_call_participants {
                return Err(format!("call {} over its participant limit", s.call));
            }
            if s.neg.outstanding.is_some() && s.neg.revision == 0 {
                return Err(format!(
                    "peer {p}: an offer outstanding before any was sent"
                ));
            }
        }
        // MLS: only calls in progress, a member always, everyone in it a participant of
        // the call; the waiting ones with one KeyPackage; a few Welcomes each.
        for (call, ds) in &self.mls {
            let members = self.registry.participants(call);
            if members.is_empty() {
                return Err(format!("MLS state of ended call {call}"));
            }
            if ds.members.is_empty() {
                return Err(format!("MLS call {call} without a member"));
            }
            let outsider = ds
                .members
                .iter()
                .chain(ds.waiting.keys())
                .chain(ds.welcomed.keys())
                .find(|p| !members.contains(p) || !self.sessions.contains_key(p));
            if let Some(p) = outsider {
                return Err(format!("MLS call {call} holds peer {p}, not a participant"));
            }
            if let Some(p) = ds.waiting.keys().find(|p| ds.members.contains(p)) {
                return Err(format!("MLS call {call}: member {p} also waiting"));
            }
            if ds
                .welcomed
                .values()
                .any(|e| e.len() > WELCOMES_KEPT || e.is_empty())
            {
                return Err(format!(
                    "MLS call {call}: Welcomes kept over {WELCOMES_KEPT}"
                ));
            }
        }
        // Output and report queues: the driver drains them after each input, and one
        // input makes at most a message per pair of participants or connections.
        let n = self.conns.len() + self.sessions.len() + 1;
        let bound = 64 + 8 * n * n;
        if self.out.len() > bound || self.reports.len() > bound {
            return Err(format!(
                "{} outputs and {} reports queued (bound {bound})",
                self.out.len(),
                self.reports.len()
            ));
        }
        Ok(())
    }
}
// --- end invariants ---

#[cfg(test)]
mod tests {
    //! The control plane on a virtual clock: no sockets, no sleeps, microseconds a test.
    use super::*;
    use blindrelay_protocol::sdp::{build_offer, OfferParams};
    use blindrelay_protocol::signal::MAX_MESSAGE_BYTES;

    const SECRET: &str = "unit-test-secret-0123456789";

    /// The plane's settings as the relay's shipped config (`config/relay.toml`) sets them,
    /// with two forwarding loops and a test secret.
    fn cfg() -> PlaneConfig {
        PlaneConfig {
            tokens: TokenVerifier::Hs256(SECRET.into()),
            token_rules: TokenRules {
                leeway: Duration::from_secs(5),
                max_ttl: Duration::from_secs(24 * 3600),
            },
            hello_timeout: Duration::from_secs(10),
            consent_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(10),
            invite_ttl: Duration::from_secs(120),
            park_ttl: Duration::from_secs(120),
            max_call_participants: 16,
            track_limits: blindrelay_protocol::tracks::TrackLimits { audio: 1, video: 2 },
            max_calls: 10_000,
            max_total_participants: 20_000,
            max_invites: 10_000,
            max_parked: 10_000,
            messages_per_second: 50,
            message_burst: 200,
            broadcast: BudgetRate {
                bytes_per_second: 65_536,
                burst_bytes: 262_144,
            },
            max_chat_bytes: 8192,
            retrieve_attempts_per_minute: 10,
            workers: 2,
            media_addr: "127.0.0.1:7402".parse().expect("literal"),
            fingerprint: Fingerprint { sha256: [7; 32] },
        }
    }

    fn offer(n: u32) -> String {
        build_offer(&OfferParams {
            ice_ufrag: "cufrag",
            ice_pwd: "clientpasswordclientpassword",
            fingerprint: &Fingerprint { sha256: [9; 32] },
            audio_ssrc: 2 * n + 1,
            video_ssrc: 2 * n + 2,
            cname: "c",
            session_id: u64::from(n),
        })
    }

    /// A plane and its virtual clock; outputs are collected per connection, reports in
    /// the order made.
    struct H {
        p: ControlPlane,
        now: Instant,
        out: Vec<Output>,
        reports: Vec<Report>,
        unix: u64,
    }

    impl H {
        fn with(cfg: PlaneConfig, policy: CallingE2ee) -> H {
            let now = Instant::now();
            let unix = 1_800_000_000;
            H {
                p: ControlPlane::new(
                    cfg,
                    Box::new(move |_: &str, _: &str| policy),
                    (now, unix),
                    [1; 32],
                ),
                now,
                out: Vec::new(),
                reports: Vec::new(),
                unix,
            }
        }
        fn new() -> H {
            H::with(cfg(), CallingE2ee::DisabledUserOverride)
        }
        fn token(&self, user: &str, call: Option<&str>, role: &str) -> String {
            self.token_in("t", user, call, role)
        }
        fn token_in(&self, tenant: &str, user: &str, call: Option<&str>, role: &str) -> String {
            let claims = Claims {
                sub: user.into(),
                tenant: tenant.into(),
                role: role.into(),
                call: call.map(str::to_string),
                exp: self.unix + 3600,
                iat: self.unix,
                nbf: None,
                cnf: None,
            };
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .expect("encodes")
        }
        fn input(&mut self, i: Input) {
            self.p.handle_input(self.now, i);
            self.drain();
        }
        fn drain(&mut self) {
            while let Some(o) = self.p.poll_output() {
                self.out.push(o);
            }
            while let Some(r) = self.p.poll_report() {
                self.reports.push(r);
            }
        }
        /// How many times the plane reported `r` so far.
        fn reported(&self, r: &Report) -> usize {
            self.reports.iter().filter(|x| *x == r).count()
        }
        fn mls_refused_count(&self, reason: MlsRefusal) -> usize {
            self.reported(&Report::MlsRefused(reason))
        }
        fn advance(&mut self, d: Duration) {
            let end = self.now + d;
            // Fire timers at their own instants, as the driver would.
            while let Some(t) = self.p.poll_timeout().filter(|t| *t <= end) {
                self.now = self.now.max(t);
                self.p.handle_timeout(self.now);
                self.drain();
            }
            self.now = end;
        }
        fn text(&mut self, conn: ConnId, m: &ClientMessage) {
            let text = serde_json::to_string(m).expect("serializes");
            self.input(Input::Text { conn, text });
        }
        /// Messages for `conn` since the last call, in order.
        fn take(&mut self, conn: ConnId) -> Vec<ServerMessage> {
            let mut mine = Vec::new();
            let mut rest = Vec::new();
            for o in self.out.drain(..) {
                match o {
                    Output::Send { conn: c, msg } if c == conn => mine.push(msg),
                    o => rest.push(o),
                }
            }
            self.out = rest;
            mine
        }
        fn closed(&self, conn: ConnId) -> Option<CloseReason> {
            self.out.iter().find_map(|o| match o {
                Output::Close { conn: c, reason } if *c == conn => Some(*reason),
                _ => None,
            })
        }
        fn hello(&mut self, conn: ConnId, user: &str, call: Option<&str>, role: &str) {
            let token = self.token(user, call, role);
            self.hello_with(conn, token)
        }
        /// A hello as `user` of `tenant`.
        fn hello_in(
            &mut self,
            conn: ConnId,
            tenant: &str,
            user: &str,
            call: Option<&str>,
            role: &str,
        ) {
            let token = self.token_in(tenant, user, call, role);
            self.hello_with(conn, token)
        }
        fn hello_with(&mut self, conn: ConnId, token: String) {
            self.input(Input::Connected { conn });
            self.text(conn, &ClientMessage::Hello { token });
            let m = self.take(conn);
            assert!(
                matches!(m.as_slice(), [ServerMessage::Capabilities { .. }]),
                "{m:?}"
            );
        }
        fn join(&mut self, conn: ConnId, call: &str, e2ee: bool) -> Vec<ServerMessage> {
            self.text(
                conn,
                &ClientMessage::Join {
                    call: call.into(),
                    e2ee_enabled: e2ee,
                    offer_sdp: offer(conn as u32),
                    e2ee_scheme: Default::default(),
                },
            );
            self.take(conn)
        }
        fn peer_of(&self, conn: ConnId) -> PeerId {
            self.p.conns[&conn].peer.expect("joined")
        }
    }

    fn joined_mode(m: &[ServerMessage]) -> CallMode {
        match m.first() {
            Some(ServerMessage::Joined { call_mode, .. }) => *call_mode,
            other => panic!("expected joined, got {other:?}"),
        }
    }

    fn error_code(m: &[ServerMessage]) -> ErrorCode {
        match m.last() {
            Some(ServerMessage::Error { code, .. }) => *code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn refused_join_leaves_no_trace_and_a_connection_can_join_again() {
        let mut h = H::new();
        h.hello(1, "mallory", None, "user");
        assert_eq!(joined_mode(&h.join(1, "c", true)), CallMode::E2ee);
        h.text(1, &ClientMessage::Leave);
        assert_eq!(h.p.counts().0, 0);
        // Joining again on the same connection works; a refused join changes nothing.
        assert_eq!(joined_mode(&h.join(1, "other", false)), CallMode::Standard);
        assert_eq!(error_code(&h.join(1, "c", false)), ErrorCode::AlreadyJoined);
        h.text(1, &ClientMessage::Leave);
        assert_eq!(h.p.counts(), (0, 0, 1));
        h.text(
            1,
            &ClientMessage::Join {
                call: "c".into(),
                e2ee_enabled: true,
                offer_sdp: "v=0 garbage".into(),
                e2ee_scheme: Default::default(),
            },
        );
        assert_eq!(error_code(&h.take(1)), ErrorCode::BadSdp);
        assert_eq!(h.p.counts(), (0, 0, 1));
        // Now a two-party E2EE call on that call id is E2EE and one-to-one.
        h.hello(2, "alice", None, "user");
        h.hello(3, "bob", None, "user");
        assert_eq!(joined_mode(&h.join(2, "c", true)), CallMode::E2ee);
        let bob = h.join(3, "c", true);
        assert_eq!(joined_mode(&bob), CallMode::E2ee);
        match &bob[0] {
            ServerMessage::Joined { participants, .. } => {
                assert_eq!(participants.len(), 1);
                assert_eq!(participants[0].user, "alice");
            }
            m => panic!("{m:?}"),
        }
        let a = h.take(2);
        assert!(
            matches!(&a[..], [ServerMessage::ParticipantJoined { participant }, ServerMessage::Offer { revision: 1, .. }] if participant.user == "bob"),
            "{a:?}"
        );
    }

    #[test]
    fn hello_timeout_closes_only_silent_connections() {
        let mut h = H::new();
        h.input(Input::Connected { conn: 1 });
        h.hello(2, "alice", None, "user");
        h.advance(Duration::from_millis(9_999));
        assert_eq!(h.closed(1), None);
        h.advance(Duration::from_millis(1));
        assert_eq!(error_code(&h.take(1)), ErrorCode::HelloTimeout);
        assert_eq!(h.closed(1), Some(CloseReason::HelloTimeout));
        assert_eq!(h.closed(2), None);
        // A bad hello does not extend the deadline.
        h.input(Input::Connected { conn: 3 });
        h.advance(Duration::from_secs(5));
        h.text(3, &ClientMessage::Hello { token: "x".into() });
        h.advance(Duration::from_secs(5));
        assert_eq!(h.closed(3), Some(CloseReason::HelloTimeout));
    }

    #[test]
    fn connect_and_consent_timeouts_remove_and_tell() {
        let mut h = H::new();
        h.hello(1, "alice", None, "user");
        h.hello(2, "bob", None, "user");
        h.join(1, "c", false);
        h.join(2, "c", false);
        let (a, b) = (h.peer_of(1), h.peer_of(2));
        h.take(1);
        // bob never finishes DTLS: removed at connect_timeout (10 s).
        h.input(Input::Keyed { peer: a });
        assert!(h
            .out
            .iter()
            .any(|o| matches!(o, Output::Attach { peer, .. } if *peer == a)));
        h.advance(Duration::from_secs(5));
        h.input(Input::Activity { peer: a });
        h.advance(Duration::from_secs(5));
        let to_b = h.take(2);
        assert!(
            matches!(&to_b[..], [ServerMessage::ParticipantLeft { reason, .. }] if reason == "connect_timeout"),
            "{to_b:?}"
        );
        assert_eq!(h.closed(2), Some(CloseReason::Removed));
        assert!(h
            .out
            .iter()
            .any(|o| matches!(o, Output::MediaRemove { peer, .. } if *peer == b)));
        // alice was active at 5 s: consent holds until 20 s, not 15 s.
        h.out.clear();
        h.advance(Duration::from_millis(9_900));
        assert_eq!(h.p.counts().0, 1);
        h.advance(Duration::from_millis(100));
        assert_eq!(h.p.counts().0, 0);
        let to_a = h.take(1);
        assert!(
            matches!(&to_a[..], [ServerMessage::ParticipantLeft { reason, .. }] if reason == "consent_timeout"),
            "{to_a:?}"
        );
    }

    #[test]
    fn duplicate_identity_replaces_the_first_session() {
        let mut h = H::new();
        h.hello(1, "alice", None, "user");
        h.hello(2, "bob", None, "user");
        h.hello(3, "alice", None, "user");
        h.join(1, "c", true);
        h.join(2, "c", true);
        h.take(1);
        // The same user again, in a one-to-one E2EE call: admitted, the old one replaced.
        let m = h.join(3, "c", true);
        assert_eq!(joined_mode(&m), CallMode::E2ee);
        let old = h.take(1);
        assert!(
            matches!(&old[..], [ServerMessage::ParticipantLeft { reason, .. }] if reason == "replaced"),
            "{old:?}"
        );
        assert_eq!(h.closed(1), Some(CloseReason::Removed));
        let to_bob = h.take(2);
        assert!(
            matches!(&to_bob[..], [ServerMessage::ParticipantLeft { reason, .. }, ServerMessage::ParticipantJoined { participant }] if reason == "replaced" && participant.user == "alice"),
            "{to_bob:?}"
        );
        assert_eq!(h.p.counts().0, 2);
        // A refused replacing join keeps the first session.
        h.out.clear();
        h.hello(4, "alice", None, "bot:recording");
        assert_eq!(
            error_code(&h.join(4, "c", false)),
            ErrorCode::E2eeCallRefusesBots
        );
        h.hello(5, "alice", None, "user");
        assert_eq!(error_code(&h.join(5, "c", false)), ErrorCode::E2eeRequired);
        assert_eq!(h.p.counts().0, 2);
        assert!(h.out.is_empty(), "no trace: {:?}", h.out);
    }

    #[test]
    fn concurrent_joins_lose_no_event() {
        let mut h = H::new();
        for i in 0..200u64 {
            h.hello(2 * i + 1, &format!("a{i}"), None, "user");
            h.hello(2 * i + 2, &format!("b{i}"), None, "user");
        }
        for i in 0..200u64 {
            let call = format!("call-{i}");
            h.text(
                2 * i + 1,
                &ClientMessage::Join {
                    call: call.clone(),
                    e2ee_enabled: true,
                    offer_sdp: offer(1),
                    e2ee_scheme: Default::default(),
                },
            );
            h.text(
                2 * i + 2,
                &ClientMessage::Join {
                    call,
                    e2ee_enabled: true,
                    offer_sdp: offer(2),
                    e2ee_scheme: Default::default(),
                },
            );
        }
        for i in 0..200u64 {
            let a = h.take(2 * i + 1);
            assert!(
                matches!(&a[..], [ServerMessage::Joined { call_mode: CallMode::E2ee, .. }, ServerMessage::ParticipantJoined { participant }, ServerMessage::Offer { revision: 1, .. }] if participant.user == format!("b{i}")),
                "{a:?}"
            );
            let b = h.take(2 * i + 2);
            assert!(
                matches!(&b[..], [ServerMessage::Joined { participants, .. }, ServerMessage::Offer { revision: 1, .. }] if participants.len() == 1),
                "{b:?}"
            );
        }
    }

    fn merge(h: &mut H, conn: ConnId, other: &str) -> Vec<ServerMessage> {
        h.text(
            conn,
            &ClientMessage::Feature {
                name: "merge".into(),
                arg: Some(other.into()),
            },
        );
        h.take(conn)
    }

    #[test]
    fn merge_moves_and_tells_both_sides() {
        let mut h = H::new();
        for (c, u) in [(1, "a"), (2, "b"), (3, "x"), (4, "y"), (5, "a")] {
            h.hello(c, u, None, "user");
        }
        h.join(1, "one", false);
        h.join(2, "one", false);
        h.join(3, "two", false);
        h.join(4, "two", false);
        // a is in both calls: a second session of the same identity is in "two".
        h.join(5, "two", false);
        for c in 1..=5 {
            h.take(c);
        }
        h.out.clear();
        let r = merge(&mut h, 1, "two");
        // The request's result, then the events it caused (x, y and a's other session
        // joined this call).
        assert!(
            matches!(
                &r[..],
                [
                    ServerMessage::FeatureResult { ok: true, .. },
                    ServerMessage::ParticipantJoined { .. },
                    ServerMessage::ParticipantJoined { .. },
                    ServerMessage::ParticipantJoined { .. }
                ]
            ),
            "{r:?}"
        );
        assert_eq!(h.take(3).len(), 2, "x hears of a and b");
        let moves = h
            .out
            .iter()
            .filter(|o| matches!(o, Output::Move { .. }))
            .count();
        assert_eq!(moves, 3);
        assert_eq!(h.p.counts().1, 1);
    }

    /// Merge needs the requester's identity (user@tenant) in both calls, both standard;
    /// every other case gets the same answer, whether or not the other call exists, and
    /// nothing moves.
    #[test]
    fn merge_is_refused_alike_unless_the_requester_is_in_both_calls() {
        let mut h = H::new();
        // a: a token without a call claim; x and y in "two"; e alone in an E2EE call;
        // a@u (another tenant, same user name) in "four" and in "two".
        h.hello(1, "a", None, "user");
        h.hello(2, "x", None, "user");
        h.hello(3, "y", None, "user");
        h.hello(4, "e", None, "user");
        h.hello_in(5, "u", "a", None, "user");
        h.hello_in(6, "u", "a", None, "user");
        h.join(1, "one", false);
        h.join(2, "two", false);
        h.join(3, "two", false);
        assert_eq!(joined_mode(&h.join(4, "three", true)), CallMode::E2ee);
        h.join(5, "four", false);
        h.join(6, "two", false);
        for c in 1..=6 {
            h.take(c);
        }
        h.out.clear();
        let before: Vec<_> = (1..=6)
            .map(|c| h.p.registry.call_of(h.peer_of(c)).map(|(id, _, _)| id))
            .collect();
        let refusal = |r: &[ServerMessage]| match r {
            [ServerMessage::FeatureResult {
                ok: false, detail, ..
            }] => detail.clone(),
            other => panic!("expected one refused result, got {other:?}"),
        };
        let mut answers = Vec::new();
        // Not in "two" (exists, standard), "three" (exists, E2EE), "nowhere" (does not
        // exist): a claim-less token merges only calls its identity is in.
        for other in ["two", "three", "nowhere"] {
            answers.push(refusal(&merge(&mut h, 1, other)));
        }
        // a@u is in "two", but a@u is not a@t: another tenant's member is refused alike,
        // for "one" (exists) and "nowhere".
        for other in ["one", "nowhere"] {
            answers.push(refusal(&merge(&mut h, 5, other)));
        }
        for a in &answers {
            assert_eq!(
                a.as_deref(),
                Some("merge_refused: you can only merge calls you are in"),
                "{answers:?}"
            );
        }
        assert!(
            !h.out.iter().any(|o| matches!(o, Output::Move { .. })),
            "nothing moved: {:?}",
            h.out
        );
        for c in 2..=6 {
            assert!(h.take(c).is_empty(), "nobody was told anything");
        }
        let after: Vec<_> = (1..=6)
            .map(|c| h.p.registry.call_of(h.peer_of(c)).map(|(id, _, _)| id))
            .collect();
        assert_eq!(before, after);
        // The control: a@u is in "four" and "two", so it may merge "two" into "four".
        let r = merge(&mut h, 5, "two");
        assert!(
            matches!(
                r.first(),
                Some(ServerMessage::FeatureResult { ok: true, .. })
            ),
            "{r:?}"
        );
        assert_eq!(
            h.p.registry.call_of(h.peer_of(2)).map(|(id, _, _)| id),
            Some("four".to_string())
        );
    }

    #[test]
    fn invites_and_parked_calls_expire() {
        let mut h = H::new();
        h.hello(1, "alice", Some("c"), "user");
        h.hello(2, "bob", Some("elsewhere"), "user");
        h.join(1, "c", false);
        h.text(
            1,
            &ClientMessage::Feature {
                name: "add_participant".into(),
                arg: Some("bob".into()),
            },
        );
        assert!(matches!(
            h.take(2).as_slice(),
            [ServerMessage::Invite { .. }]
        ));
        assert_eq!(h.p.invites.len(), 1);
        h.advance(Duration::from_secs(120));
        assert_eq!(h.p.invites.len(), 0, "expired invitation purged");
        assert_eq!(error_code(&h.join(2, "c", false)), ErrorCode::WrongCall);
        // Park: the code is valid for park_ttl, then purged.
        h.hello(3, "carol", None, "user");
        h.join(3, "d", false);
        h.text(
            3,
            &ClientMessage::Feature {
                name: "park".into(),
                arg: None,
            },
        );
        let r = h.take(3);
        assert!(
            matches!(&r[0], ServerMessage::FeatureResult { ok: true, .. }),
            "{r:?}"
        );
        assert!(
            matches!(&r[1], ServerMessage::ParticipantLeft { reason, .. } if reason == "parked"),
            "{r:?}"
        );
        assert_eq!(h.p.parked.len(), 1);
        h.advance(Duration::from_secs(120));
        assert_eq!(h.p.parked.len(), 0);
        assert!(h.p.timers.is_empty(), "every timer fired: {:?}", h.p.timers);
    }

    #[test]
    fn pickup_codes_are_rate_limited() {
        let mut h = H::new();
        h.hello(1, "alice", None, "user");
        h.hello(2, "alice", None, "user");
        h.join(1, "c", false);
        h.text(
            1,
            &ClientMessage::Feature {
                name: "park".into(),
                arg: None,
            },
        );
        let code = match &h.take(1)[0] {
            ServerMessage::FeatureResult {
                detail: Some(d), ..
            } => d.clone(),
            m => panic!("{m:?}"),
        };
        let wrong = if code == "000000" { "000001" } else { "000000" };
        let retrieve = |h: &mut H, c: &str| {
            h.text(
                2,
                &ClientMessage::Feature {
                    name: "retrieve".into(),
                    arg: Some(c.into()),
                },
            );
            match h.take(2).into_iter().next() {
                Some(ServerMessage::FeatureResult { ok, detail, .. }) => {
                    (ok, detail.unwrap_or_default())
                }
                m => panic!("{m:?}"),
            }
        };
        for _ in 0..10 {
            assert!(!retrieve(&mut h, wrong).0);
        }
        let (ok, detail) = retrieve(&mut h, &code);
        assert!(!ok && detail.starts_with("rate_limited"), "{detail}");
        h.advance(Duration::from_secs(7));
        let (ok, detail) = retrieve(&mut h, &code);
        assert!(ok, "{detail}");
    }

    #[test]
    fn message_rate_and_relay_caps() {
        let mut c = cfg();
        c.max_total_participants = 2;
        c.max_calls = 1;
        let mut h = H::with(c, CallingE2ee::DisabledUserOverride);
        h.hello(1, "a", None, "user");
        h.hello(2, "b", None, "user");
        h.hello(3, "c", None, "user");
        h.join(1, "one", false);
        assert_eq!(error_code(&h.join(2, "two", false)), ErrorCode::RelayFull);
        h.join(2, "one", false);
        assert_eq!(error_code(&h.join(3, "one", false)), ErrorCode::RelayFull);
        // 200 messages in a burst pass (hello used one), then the rate applies.
        // hello and the refused join took two.
        for _ in 0..198 {
            h.text(3, &ClientMessage::Leave);
        }
        assert!(h.take(3).iter().all(|m| matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::NotJoined,
                ..
            }
        )));
        h.text(3, &ClientMessage::Leave);
        assert_eq!(error_code(&h.take(3)), ErrorCode::RateLimited);
        h.advance(Duration::from_millis(40));
        h.text(3, &ClientMessage::Leave);
        assert_eq!(error_code(&h.take(3)), ErrorCode::NotJoined);
    }

    fn chats(m: &[ServerMessage]) -> usize {
        m.iter()
            .filter(|m| matches!(m, ServerMessage::Chat { .. }))
            .count()
    }

    fn rate_limited(m: &[ServerMessage]) -> usize {
        m.iter()
            .filter(|m| {
                matches!(
                    m,
                    ServerMessage::Error {
                        code: ErrorCode::RateLimited,
                        ..
                    }
                )
            })
            .count()
    }

    /// Chat is capped in size and charged to its sender at its wire size times the
    /// call's other participants: past the budget the sender is refused and counted, and
    /// the others get exactly what was accepted, never more than burst + rate * time.
    #[test]
    fn chat_is_capped_and_charged_to_the_senders_broadcast_budget() {
        let mut c = cfg();
        c.broadcast = BudgetRate {
            bytes_per_second: 10_000,
            burst_bytes: 100_000,
        };
        c.max_chat_bytes = 1000;
        let mut h = H::with(c, CallingE2ee::DisabledUserOverride);
        for (conn, u) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
            h.hello(conn, u, None, "user");
            h.join(conn, "room", false);
        }
        h.out.clear();
        // One byte over the cap: refused, nobody gets it, the budget is untouched.
        h.text(
            1,
            &ClientMessage::Chat {
                body: "x".repeat(1001),
            },
        );
        assert_eq!(error_code(&h.take(1)), ErrorCode::MessageTooLarge);
        assert!((2..=4).all(|c| h.take(c).is_empty()));
        let body = "x".repeat(1000);
        let from = h.p.sessions[&h.peer_of(1)].public_id.clone();
        let wire = budget::wire_len(&ServerMessage::Chat {
            from,
            body: body.clone(),
        });
        let cost = wire * 3;
        let fits = (100_000 / cost) as usize;
        // Sent well past the budget (still within the message rate): exactly `fits` pass.
        for _ in 0..fits + 5 {
            h.text(1, &ClientMessage::Chat { body: body.clone() });
        }
        let mine = h.take(1);
        assert_eq!(rate_limited(&mine), 5, "{mine:?}");
        assert_eq!(
            h.reported(&Report::RateLimited(RateLimit::BroadcastBytes)),
            5
        );
        assert_eq!(h.reported(&Report::RateLimited(RateLimit::Messages)), 0);
        for c in 2..=4 {
            assert_eq!(chats(&h.take(c)), fits);
        }
        // A second's rate buys 10,000 / cost more; the receivers' total stays within
        // burst + rate * time.
        h.advance(Duration::from_secs(1));
        let left = 100_000 - fits as u64 * cost;
        let more = ((left + 10_000) / cost) as usize;
        for _ in 0..more + 1 {
            h.text(1, &ClientMessage::Chat { body: body.clone() });
        }
        assert_eq!(rate_limited(&h.take(1)), 1);
        let got = chats(&h.take(2));
        assert_eq!(got, more);
        assert!((fits + got) as u64 * wire <= (100_000 + 10_000) / 3);
        // Another participant's budget is its own.
        h.text(2, &ClientMessage::Chat { body: body.clone() });
        assert_eq!(chats(&h.take(1)), 1);
        // A participant alone in its call sends to nobody and spends nothing.
        h.hello(5, "e", None, "user");
        h.join(5, "alone", false);
        for _ in 0..150 {
            h.text(5, &ClientMessage::Chat { body: body.clone() });
        }
        assert_eq!(rate_limited(&h.take(5)), 0);
    }

    /// Messages the call cannot lose pass an exhausted budget: an MLS commit (charged:
    /// the committer's chat stays refused) and participant events (the relay's own, like
    /// offers: never charged).
    /// A KeyPackage over the budget is refused and leaves nothing behind.
    #[test]
    fn messages_the_call_cannot_lose_pass_an_exhausted_budget() {
        let mut c = cfg();
        c.broadcast = BudgetRate {
            bytes_per_second: 1_000,
            burst_bytes: 20_000,
        };
        let mut h = H::with(c, CallingE2ee::DisabledUserOverride);
        for (conn, u) in [(1, "a"), (2, "b"), (3, "c")] {
            h.hello(conn, u, None, "user");
        }
        join_mls(&mut h, 1, "g");
        join_mls(&mut h, 2, "g");
        // b waits with its KeyPackage (commits go to members and those waiting).
        let (_, kp1) = kp_of(&real_mls::Member::new("b"));
        h.text(2, &ClientMessage::MlsKeyPackage { blob: kp1.clone() });
        assert!(h
            .take(1)
            .iter()
            .any(|m| matches!(m, ServerMessage::MlsKeyPackage { .. })));
        h.out.clear();
        let body = "x".repeat(4000);
        // Large chats, then small ones: less than a small chat's cost is left.
        let exhaust = |h: &mut H, conn: ConnId| {
            for _ in 0..10 {
                h.text(conn, &ClientMessage::Chat { body: body.clone() });
            }
            for _ in 0..60 {
                h.text(
                    conn,
                    &ClientMessage::Chat {
                        body: "y".repeat(50),
                    },
                );
            }
            assert!(rate_limited(&h.take(conn)) > 0);
        };
        exhaust(&mut h, 1);
        h.take(2);
        // A commit of 15 KB (its clear header, then what the relay does not read).
        let mut big = BASE64.decode(commit_b64(b"g/1", 0)).expect("base64");
        big.resize(big.len() + 15_000, 0xab);
        h.text(
            1,
            &ClientMessage::MlsCommit {
                commit: BASE64.encode(&big),
                welcome: None,
            },
        );
        assert!(matches!(
            h.take(1).as_slice(),
            [ServerMessage::MlsCommitResult {
                epoch: 0,
                accepted: true
            }]
        ));
        let b = h.take(2);
        assert!(
            matches!(b.as_slice(), [ServerMessage::MlsCommit { epoch: 0, .. }]),
            "{b:?}"
        );
        // The commit was charged: 20 KB on the wire put a into debt, which 8 s of rate
        // does not repay enough for a 4 KB chat.
        h.advance(Duration::from_secs(8));
        h.text(1, &ClientMessage::Chat { body: body.clone() });
        assert_eq!(rate_limited(&h.take(1)), 1);
        // A new KeyPackage over b's budget: refused, not kept (the first stays), not
        // passed on.
        exhaust(&mut h, 2);
        h.take(1);
        let (_, kp2) = kp_of(&real_mls::Member::new("b"));
        h.text(2, &ClientMessage::MlsKeyPackage { blob: kp2 });
        assert_eq!(rate_limited(&h.take(2)), 1);
        assert!(h.take(1).is_empty());
        assert_eq!(h.p.mls["g"].waiting[&h.peer_of(2)].blob, kp1);
        // A join's event reaches both exhausted senders.
        join_mls(&mut h, 3, "g");
        for conn in [1, 2] {
            let m = h.take(conn);
            assert!(
                m.iter()
                    .any(|m| matches!(m, ServerMessage::ParticipantJoined { .. })),
                "{m:?}"
            );
        }
    }

    #[test]
    fn signalling_loss_and_shutdown_remove_everyone() {
        let mut h = H::new();
        h.hello(1, "a", None, "user");
        h.hello(2, "b", None, "user");
        h.join(1, "c", false);
        h.join(2, "c", false);
        h.input(Input::Disconnected { conn: 1 });
        let b = h.take(2);
        assert!(
            matches!(b.last(), Some(ServerMessage::ParticipantLeft { reason, .. }) if reason == "signalling_lost"),
            "{b:?}"
        );
        h.input(Input::Shutdown);
        assert_eq!(h.p.counts().0, 0);
        assert_eq!(h.closed(2), Some(CloseReason::Shutdown));
        h.hello(3, "c", None, "user");
        assert_eq!(error_code(&h.join(3, "c", false)), ErrorCode::ShuttingDown);
    }

    fn offer_of(m: &[ServerMessage]) -> (String, u64) {
        m.iter()
            .find_map(|m| match m {
                ServerMessage::Offer { sdp, revision } => Some((sdp.clone(), *revision)),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no offer in {m:?}"))
    }

    /// SSRCs are unique in a call: a join, or an answer, listing one another participant
    /// claims is refused `ssrc_in_use` and counted; the owner keeps it; the same
    /// identity rejoining (replacing itself) may reuse its own.
    #[test]
    fn a_join_or_an_answer_claiming_anothers_ssrc_is_refused() {
        let mut h = H::new();
        let join_with = |h: &mut H, conn: ConnId, call: &str, n: u32| {
            h.text(
                conn,
                &ClientMessage::Join {
                    call: call.into(),
                    e2ee_enabled: false,
                    offer_sdp: offer(n),
                    e2ee_scheme: Default::default(),
                },
            );
            h.take(conn)
        };
        h.hello(1, "alice", None, "user");
        joined_mode(&h.join(1, "c", false));
        // Mallory's offer lists Alice's SSRCs (offer(1): 3 and 4).
        h.hello(2, "mallory", None, "user");
        assert_eq!(
            error_code(&join_with(&mut h, 2, "c", 1)),
            ErrorCode::SsrcInUse
        );
        assert!(h.take(1).is_empty(), "nobody joined: {:?}", h.out);
        let alice = h.peer_of(1);
        assert!(h.p.sessions[&alice].claims_ssrc(3));
        assert_eq!(
            h.reported(&Report::JoinRefused(ErrorCode::SsrcInUse)),
            1,
            "{:?}",
            h.reports
        );
        // The same SSRCs in another call are another call's business.
        h.hello(3, "carol", None, "user");
        joined_mode(&join_with(&mut h, 3, "d", 1));
        // With SSRCs of her own, Mallory joins; her answer may not list Alice's either.
        let m = join_with(&mut h, 2, "c", 2);
        joined_mode(&m);
        h.take(1);
        let (o, revision) = offer_of(&m);
        let clean = sdp::answer_relay_offer(
            &o,
            "cli",
            "clientpasswordclientpassword",
            &Fingerprint { sha256: [9; 32] },
        )
        .expect("answerable");
        let at = clean.find("a=mid:r0\r\n").expect("a remote line") + "a=mid:r0\r\n".len();
        let forged = format!("{}a=ssrc:3 cname:x\r\n{}", &clean[..at], &clean[at..]);
        h.text(
            2,
            &ClientMessage::Answer {
                sdp: forged,
                revision,
            },
        );
        assert_eq!(error_code(&h.take(2)), ErrorCode::SsrcInUse);
        let mallory = h.peer_of(2);
        assert!(
            h.p.sessions[&mallory].neg.outstanding.is_some(),
            "not settled"
        );
        assert!(!h.p.sessions[&mallory].claims_ssrc(3));
        h.text(
            2,
            &ClientMessage::Answer {
                sdp: clean,
                revision,
            },
        );
        assert!(h.take(2).is_empty());
        assert!(h.p.sessions[&mallory].neg.outstanding.is_none(), "settled");
        // Alice rejoining from another connection replaces herself, SSRCs and all.
        h.hello(4, "alice", None, "user");
        joined_mode(&join_with(&mut h, 4, "c", 1));
    }

    fn answer(h: &mut H, conn: ConnId, offer: &str, revision: u64) {
        let sdp = sdp::answer_relay_offer(
            offer,
            "cli",
            "clientpasswordclientpassword",
            &Fingerprint { sha256: [9; 32] },
        )
        .expect("answerable");
        h.text(conn, &ClientMessage::Answer { sdp, revision });
    }

    /// A commit's clear MLS header (public message, member sender 0, no aad) and body.
    fn commit_b64(group: &[u8], epoch: u64) -> String {
        let mut m = vec![0, 1, 0, 1, group.len() as u8];
        m.extend_from_slice(group);
        m.extend_from_slice(&epoch.to_be_bytes());
        m.extend_from_slice(&[1, 0, 0, 0, 0, 0, mls::CONTENT_COMMIT, 0xee, 0xff]);
        BASE64.encode(m)
    }

    /// Real MLS members (openmls, the clients' suite 0x0001) for the Delivery Service
    /// tests: real KeyPackages, commits and Welcomes, so the relay's parsers and refs are
    /// checked against what clients send.
    mod real_mls {
        use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
        use openmls::prelude::*;
        use openmls_basic_credential::SignatureKeyPair;
        use openmls_rust_crypto::OpenMlsRustCrypto;

        const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

        pub struct Member {
            provider: OpenMlsRustCrypto,
            signer: SignatureKeyPair,
            credential: CredentialWithKey,
            group: Option<MlsGroup>,
        }

        impl Member {
            pub fn new(identity: &str) -> Member {
                let provider = OpenMlsRustCrypto::default();
                let signer =
                    SignatureKeyPair::new(SUITE.signature_algorithm()).expect("a signing key");
                signer.store(provider.storage()).expect("stored");
                let credential = CredentialWithKey {
                    credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
                    signature_key: signer.public().into(),
                };
                Member {
                    provider,
                    signer,
                    credential,
                    group: None,
                }
            }

            /// A KeyPackage as clients send it: a serialised MLSMessage.
            pub fn key_package(&self) -> Vec<u8> {
                let bundle = KeyPackage::builder()
                    .build(SUITE, &self.provider, &self.signer, self.credential.clone())
                    .expect("a KeyPackage");
                MlsMessageOut::from(bundle.key_package().clone())
                    .tls_serialize_detached()
                    .expect("serialises")
            }

            pub fn create(&mut self, group_id: &[u8]) {
                let config = MlsGroupCreateConfig::builder()
                    .ciphersuite(SUITE)
                    .use_ratchet_tree_extension(true)
                    .build();
                self.group = Some(
                    MlsGroup::new_with_group_id(
                        &self.provider,
                        &self.signer,
                        &config,
                        GroupId::from_slice(group_id),
                        self.credential.clone(),
                    )
                    .expect("a group"),
                );
            }

            /// A pending commit adding the owners of `key_packages`: (commit, Welcome).
            pub fn commit(&mut self, key_packages: &[Vec<u8>]) -> (Vec<u8>, Option<Vec<u8>>) {
                let kps = key_packages
                    .iter()
                    .map(|kp| {
                        let msg = MlsMessageIn::tls_deserialize_exact(kp).expect("a message");
                        let MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else {
                            panic!("not a KeyPackage");
                        };
                        kp.validate(self.provider.crypto(), ProtocolVersion::Mls10)
                            .expect("valid")
                    })
                    .collect::<Vec<_>>();
                let (provider, signer) = (&self.provider, &self.signer);
                let group = self.group.as_mut().expect("in a group");
                let bundle = group
                    .commit_builder()
                    .propose_adds(kps)
                    .load_psks(provider.storage())
                    .expect("psks")
                    .build(provider.rand(), provider.crypto(), signer, |_| true)
                    .expect("built")
                    .stage_commit(provider)
                    .expect("staged");
                let (commit, welcome, _) = bundle.into_contents();
                (
                    commit.tls_serialize_detached().expect("serialises"),
                    welcome.map(|w| {
                        MlsMessageOut::from_welcome(w, ProtocolVersion::Mls10)
                            .tls_serialize_detached()
                            .expect("serialises")
                    }),
                )
            }

            pub fn accepted(&mut self) {
                let group = self.group.as_mut().expect("in a group");
                group.merge_pending_commit(&self.provider).expect("merged");
            }

            pub fn refused(&mut self) {
                let group = self.group.as_mut().expect("in a group");
                group
                    .clear_pending_commit(self.provider.storage())
                    .expect("cleared");
            }

            /// Join from a Welcome: the epoch it starts.
            pub fn join(&mut self, welcome: &[u8]) -> u64 {
                let msg = MlsMessageIn::tls_deserialize_exact(welcome).expect("a message");
                let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
                    panic!("not a Welcome");
                };
                let config = MlsGroupJoinConfig::builder()
                    .use_ratchet_tree_extension(true)
                    .build();
                let group = StagedWelcome::new_from_welcome(&self.provider, &config, welcome, None)
                    .expect("a Welcome for this member")
                    .into_group(&self.provider)
                    .expect("a group");
                let epoch = group.epoch().as_u64();
                self.group = Some(group);
                epoch
            }

            /// Apply another member's commit.
            pub fn process(&mut self, commit: &[u8]) {
                let msg = MlsMessageIn::tls_deserialize_exact(commit).expect("a message");
                let msg = msg
                    .try_into_protocol_message()
                    .expect("a handshake message");
                let provider = &self.provider;
                let group = self.group.as_mut().expect("in a group");
                let processed = group.process_message(provider, msg).expect("processed");
                let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content()
                else {
                    panic!("not a commit");
                };
                group
                    .merge_staged_commit(provider, *staged)
                    .expect("merged");
            }

            pub fn epoch(&self) -> u64 {
                self.group.as_ref().expect("in a group").epoch().as_u64()
            }

            pub fn authenticator(&self) -> Vec<u8> {
                let g = self.group.as_ref().expect("in a group");
                g.epoch_authenticator().as_slice().to_vec()
            }
        }

        /// openmls's own KeyPackageRef of a serialised KeyPackage message.
        pub fn openmls_ref(key_package: &[u8]) -> Vec<u8> {
            let msg = MlsMessageIn::tls_deserialize_exact(key_package).expect("a message");
            let MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else {
                panic!("not a KeyPackage");
            };
            let provider = OpenMlsRustCrypto::default();
            let kp = kp
                .validate(provider.crypto(), ProtocolVersion::Mls10)
                .expect("valid");
            kp.hash_ref(provider.crypto())
                .expect("a ref")
                .as_slice()
                .to_vec()
        }

        /// The refs openmls reads from a serialised Welcome message.
        pub fn openmls_welcome_refs(welcome: &[u8]) -> Vec<Vec<u8>> {
            let msg = MlsMessageIn::tls_deserialize_exact(welcome).expect("a message");
            let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
                panic!("not a Welcome");
            };
            welcome
                .secrets()
                .iter()
                .map(|s| s.new_member().as_slice().to_vec())
                .collect()
        }
    }

    fn kp_of(m: &real_mls::Member) -> (Vec<u8>, String) {
        let kp = m.key_package();
        let b64 = BASE64.encode(&kp);
        (kp, b64)
    }

    fn commit_of(commit: &[u8], welcome: Option<&[u8]>) -> ClientMessage {
        ClientMessage::MlsCommit {
            commit: BASE64.encode(commit),
            welcome: welcome.map(|w| BASE64.encode(w)),
        }
    }

    fn welcome_in(m: &[ServerMessage]) -> Option<Vec<u8>> {
        m.iter().find_map(|m| match m {
            ServerMessage::MlsWelcome { welcome, .. } => {
                Some(BASE64.decode(welcome).expect("base64"))
            }
            _ => None,
        })
    }

    fn commit_in(m: &[ServerMessage], epoch: u64) -> Vec<u8> {
        m.iter()
            .find_map(|m| match m {
                ServerMessage::MlsCommit {
                    epoch: e, commit, ..
                } if *e == epoch => Some(BASE64.decode(commit).expect("base64")),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no commit of epoch {epoch} in {m:?}"))
    }

    fn refused(m: &[ServerMessage]) -> String {
        match m.last() {
            Some(ServerMessage::Error {
                code: ErrorCode::MlsRefused,
                message,
            }) => message.clone(),
            other => panic!("expected mls_refused, got {other:?}"),
        }
    }

    fn join_mls(h: &mut H, conn: ConnId, call: &str) -> Vec<ServerMessage> {
        h.text(
            conn,
            &ClientMessage::Join {
                call: call.into(),
                e2ee_enabled: true,
                offer_sdp: offer(conn as u32),
                e2ee_scheme: E2eeScheme::Mls,
            },
        );
        h.take(conn)
    }

    /// The relay's KeyPackageRefs and Welcome parser agree with openmls: a Welcome adding
    /// two of three waiting KeyPackages names exactly those two refs.
    #[test]
    fn key_package_refs_and_welcome_match_openmls() {
        let mut a = real_mls::Member::new("a");
        a.create(b"call/refs");
        let joiners: Vec<real_mls::Member> = ["b", "c", "d"]
            .iter()
            .map(|n| real_mls::Member::new(n))
            .collect();
        let kps: Vec<Vec<u8>> = joiners.iter().map(real_mls::Member::key_package).collect();
        let refs: Vec<mls::KeyPackageRef> = kps
            .iter()
            .map(|kp| {
                let parsed = mls::parse_key_package(kp).expect("a KeyPackage parses");
                assert_eq!(
                    parsed.cipher_suite,
                    mls::SUITE_X25519_AES128GCM_SHA256_ED25519
                );
                let r = parsed.reference().expect("suite 1 has a ref");
                assert_eq!(
                    r.to_vec(),
                    real_mls::openmls_ref(kp),
                    "the ref is openmls's"
                );
                r
            })
            .collect();
        let (commit, welcome) = a.commit(&kps[..2]);
        let welcome = welcome.expect("adds have a Welcome");
        let parsed = mls::parse_welcome(&welcome).expect("a Welcome parses");
        assert_eq!(parsed.cipher_suite, 1);
        assert_eq!(parsed.count, 2);
        let named: BTreeSet<&[u8]> = parsed.new_members().collect();
        let want: BTreeSet<&[u8]> = refs[..2].iter().map(|r| &r[..]).collect();
        assert_eq!(named, want);
        assert!(!named.contains(&refs[2][..]));
        let theirs: BTreeSet<Vec<u8>> = real_mls::openmls_welcome_refs(&welcome)
            .into_iter()
            .collect();
        assert_eq!(theirs, named.iter().map(|r| r.to_vec()).collect());
        // The commit's header reads as before; a KeyPackage is not a Welcome or a commit.
        let f = mls::parse_framing(&commit).expect("a commit's header");
        assert_eq!((f.group_id, f.epoch), (&b"call/refs"[..], 0));
        assert!(mls::parse_welcome(&kps[0]).is_err());
        assert!(mls::parse_key_package(&welcome).is_err());
        assert!(mls::parse_framing(&kps[0]).is_err());
    }

    /// A Welcome reaches only the joiners it adds; `mls_joined` is taken only from one a
    /// Welcome for that epoch was delivered to; commits only from members. The attack of
    /// issue 18: a waiting joiner never added claims `mls_joined` and sends a garbage
    /// commit: both refused and counted, and the real members go on to the next epochs.
    #[test]
    fn mls_joined_needs_a_delivered_welcome_and_commits_a_member() {
        let mut h = H::new();
        for (c, u) in [(1, "a"), (2, "b"), (3, "c"), (4, "mallory")] {
            h.hello(c, u, None, "user");
        }
        join_mls(&mut h, 1, "g");
        let mut a = real_mls::Member::new("a");
        a.create(b"g/1");
        let mut b = real_mls::Member::new("b");
        let mut c = real_mls::Member::new("c");
        let mallory = real_mls::Member::new("mallory");
        for conn in [2, 3, 4] {
            join_mls(&mut h, conn, "g");
        }
        h.take(1);
        // A KeyPackage that does not parse never reaches a member.
        for blob in ["!!".to_string(), BASE64.encode(b"\x00\x01\x00\x05garbage")] {
            h.text(4, &ClientMessage::MlsKeyPackage { blob });
            assert!(refused(&h.take(4)).starts_with("bad KeyPackage"));
        }
        assert_eq!(h.mls_refused_count(MlsRefusal::BadKeyPackage), 2);
        assert!(h.take(1).is_empty());
        let (kp_b, kp_b64) = kp_of(&b);
        h.text(2, &ClientMessage::MlsKeyPackage { blob: kp_b64 });
        let (kp_c, kp_c64) = kp_of(&c);
        h.text(3, &ClientMessage::MlsKeyPackage { blob: kp_c64 });
        let (_, kp_m64) = kp_of(&mallory);
        h.text(
            4,
            &ClientMessage::MlsKeyPackage {
                blob: kp_m64.clone(),
            },
        );
        // The same KeyPackage under another participant is refused.
        h.text(3, &ClientMessage::MlsKeyPackage { blob: kp_m64 });
        assert!(refused(&h.take(3)).contains("another waiting participant"));
        assert_eq!(h.mls_refused_count(MlsRefusal::DuplicateKeyPackage), 1);
        let to_a = h.take(1);
        assert_eq!(
            to_a.iter()
                .filter(|m| matches!(m, ServerMessage::MlsKeyPackage { .. }))
                .count(),
            3,
            "{to_a:?}"
        );
        // a adds b only: b alone gets the Welcome; c and mallory get just the commit.
        let (commit0, welcome_b) = a.commit(std::slice::from_ref(&kp_b));
        h.text(1, &commit_of(&commit0, welcome_b.as_deref()));
        assert!(matches!(
            &h.take(1)[..],
            [ServerMessage::MlsCommitResult {
                epoch: 0,
                accepted: true
            }]
        ));
        a.accepted();
        let to_b = h.take(2);
        let w = welcome_in(&to_b).expect("b is added: its Welcome");
        assert_eq!(Some(&w), welcome_b.as_ref());
        for conn in [3, 4] {
            let m = h.take(conn);
            assert!(welcome_in(&m).is_none(), "{conn}: {m:?}");
            commit_in(&m, 0);
        }
        // The attack: mallory, never added, says it joined at epoch 1 (a member's
        // epoch) and sends a well-formed commit of garbage for it.
        h.text(4, &ClientMessage::MlsJoined { epoch: 1 });
        assert!(refused(&h.take(4)).contains("epoch 1"));
        h.text(
            4,
            &ClientMessage::MlsCommit {
                commit: commit_b64(b"g/1", 1),
                welcome: None,
            },
        );
        assert_eq!(refused(&h.take(4)), "only a member of the group commits");
        assert_eq!(h.mls_refused_count(MlsRefusal::JoinWithoutWelcome), 1);
        assert_eq!(h.mls_refused_count(MlsRefusal::CommitFromNonMember), 1);
        for conn in [1, 2, 3] {
            assert!(h.take(conn).is_empty(), "{conn} is told nothing");
        }
        // b joins from its Welcome, at the epoch it starts (a wrong epoch is refused).
        assert_eq!(b.join(&w), 1);
        h.text(2, &ClientMessage::MlsJoined { epoch: 2 });
        refused(&h.take(2));
        h.text(2, &ClientMessage::MlsJoined { epoch: 1 });
        assert!(h.take(2).is_empty());
        // ...once: it is a member now.
        h.text(2, &ClientMessage::MlsJoined { epoch: 1 });
        refused(&h.take(2));
        // The group goes on: b (a member now) commits epoch 1 adding c, a applies it.
        let (commit1, welcome_c) = b.commit(std::slice::from_ref(&kp_c));
        h.text(2, &commit_of(&commit1, welcome_c.as_deref()));
        assert!(matches!(
            &h.take(2)[..],
            [ServerMessage::MlsCommitResult {
                epoch: 1,
                accepted: true
            }]
        ));
        b.accepted();
        a.process(&commit_in(&h.take(1), 1));
        let to_c = h.take(3);
        assert_eq!(c.join(&welcome_in(&to_c).expect("c's Welcome")), 2);
        let to_m = h.take(4);
        assert!(welcome_in(&to_m).is_none(), "{to_m:?}");
        // mallory claims the epoch c's Welcome started: still not delivered to it.
        h.text(4, &ClientMessage::MlsJoined { epoch: 2 });
        refused(&h.take(4));
        h.text(3, &ClientMessage::MlsJoined { epoch: 2 });
        assert!(h.take(3).is_empty());
        // And on: a commits epoch 2 (adding nobody), everyone applies it.
        let (commit2, none) = a.commit(&[]);
        assert!(none.is_none());
        h.text(1, &commit_of(&commit2, None));
        assert!(matches!(
            &h.take(1)[..],
            [ServerMessage::MlsCommitResult {
                epoch: 2,
                accepted: true
            }]
        ));
        a.accepted();
        b.process(&commit_in(&h.take(2), 2));
        c.process(&commit_in(&h.take(3), 2));
        assert_eq!((a.epoch(), b.epoch(), c.epoch()), (3, 3, 3));
        assert_eq!(a.authenticator(), b.authenticator());
        assert_eq!(a.authenticator(), c.authenticator());
        assert_eq!(h.mls_refused_count(MlsRefusal::JoinWithoutWelcome), 4);
    }

    /// The group's state lives while anyone is in the call: when its last member leaves,
    /// the earliest remaining participant, whose KeyPackage has not even arrived, is told
    /// to create it anew and gets the waiting KeyPackages; the state goes with the call's
    /// last participant. A call that held keys stays E2EE with one member left: no
    /// unencrypted joiner, no bot, and nobody is told it is standard.
    #[test]
    fn mls_group_state_lives_while_anyone_waits_and_keyed_calls_stay_e2ee() {
        let mut h = H::new();
        for (c, u) in [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")] {
            h.hello(c, u, None, "user");
        }
        h.hello(6, "rec", None, "bot:recording");
        join_mls(&mut h, 1, "g");
        let mut a = real_mls::Member::new("a");
        a.create(b"g/1");
        join_mls(&mut h, 2, "g");
        let mut b = real_mls::Member::new("b");
        let (kp_b, kp_b64) = kp_of(&b);
        h.text(2, &ClientMessage::MlsKeyPackage { blob: kp_b64 });
        let (commit0, welcome) = a.commit(&[kp_b]);
        h.text(1, &commit_of(&commit0, welcome.as_deref()));
        a.accepted();
        b.join(&welcome_in(&h.take(2)).expect("b's Welcome"));
        h.text(2, &ClientMessage::MlsJoined { epoch: 1 });
        h.take(1);
        // Keyed and down to a: no unencrypted joiner, no bot; a hears of no downgrade.
        h.text(2, &ClientMessage::Leave);
        assert_eq!(error_code(&h.join(3, "g", false)), ErrorCode::E2eeRequired);
        h.text(
            6,
            &ClientMessage::Join {
                call: "g".into(),
                e2ee_enabled: false,
                offer_sdp: offer(6),
                e2ee_scheme: E2eeScheme::X25519,
            },
        );
        assert_eq!(error_code(&h.take(6)), ErrorCode::E2eeCallRefusesBots);
        let to_a = h.take(1);
        assert!(
            !to_a
                .iter()
                .any(|m| matches!(m, ServerMessage::CallModeChanged { .. })),
            "{to_a:?}"
        );
        // c joins (its KeyPackage not sent yet), then d, who publishes one; a leaves.
        assert!(matches!(
            joined_mode(&join_mls(&mut h, 3, "g")),
            CallMode::E2ee
        ));
        join_mls(&mut h, 4, "g");
        let d = real_mls::Member::new("d");
        let (kp_d, kp_d64) = kp_of(&d);
        h.text(
            4,
            &ClientMessage::MlsKeyPackage {
                blob: kp_d64.clone(),
            },
        );
        h.text(1, &ClientMessage::Leave);
        let to_c = h.take(3);
        let create = to_c
            .iter()
            .position(|m| matches!(m, ServerMessage::MlsCreate {}))
            .unwrap_or_else(|| panic!("no mls_create in {to_c:?}"));
        assert!(
            matches!(&to_c[create + 1], ServerMessage::MlsKeyPackage { blob, .. } if *blob == kp_d64),
            "{to_c:?}"
        );
        assert!(!h
            .take(4)
            .iter()
            .any(|m| matches!(m, ServerMessage::MlsCreate {})));
        // c's own KeyPackage, arriving late, is refused: it is the group now.
        let mut c = real_mls::Member::new("c");
        let (_, kp_c64) = kp_of(&c);
        h.text(3, &ClientMessage::MlsKeyPackage { blob: kp_c64 });
        assert_eq!(refused(&h.take(3)), "already in the group");
        // c creates the group anew (epoch 0, a new group id) and adds d.
        c.create(b"g/2");
        let (commit, welcome) = c.commit(&[kp_d]);
        h.text(3, &commit_of(&commit, welcome.as_deref()));
        assert!(matches!(
            &h.take(3)[..],
            [ServerMessage::MlsCommitResult {
                epoch: 0,
                accepted: true
            }]
        ));
        assert!(welcome_in(&h.take(4)).is_some());
        // The call keeps its state while anyone is in it, and drops it with the last.
        h.text(3, &ClientMessage::Leave);
        assert!(h.p.mls.contains_key("g"));
        let to_d = h.take(4);
        assert!(
            to_d.iter()
                .any(|m| matches!(m, ServerMessage::MlsCreate {})),
            "{to_d:?}"
        );
        h.text(4, &ClientMessage::Leave);
        assert!(!h.p.mls.contains_key("g"));
        // A new call of that id starts provisional again, and its first joiner creates.
        let e = join_mls(&mut h, 5, "g");
        assert!(
            matches!(&e[0], ServerMessage::Joined { participants, .. } if participants.is_empty())
        );
        assert!(h.p.mls["g"].members.contains(&h.peer_of(5)));
    }

    /// The relay as MLS Delivery Service, with real MLS members: KeyPackages go to the
    /// members, the first commit of an epoch wins and the others are refused, a Welcome
    /// reaches the joiner it adds, a keyed group call is never downgraded, schemes must
    /// match, and a group whose members all left is restarted by the earliest participant.
    #[test]
    fn mls_delivery_service_orders_commits_per_epoch() {
        let mut h = H::new();
        for (c, u) in [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")] {
            h.hello(c, u, None, "user");
        }
        let join = |h: &mut H, conn: ConnId, e2ee: bool, scheme: E2eeScheme| {
            h.text(
                conn,
                &ClientMessage::Join {
                    call: "g".into(),
                    e2ee_enabled: e2ee,
                    offer_sdp: offer(conn as u32),
                    e2ee_scheme: scheme,
                },
            );
            h.take(conn)
        };
        let a0 = join(&mut h, 1, true, E2eeScheme::Mls);
        assert!(
            matches!(&a0[0], ServerMessage::Joined { e2ee_scheme: Some(E2eeScheme::Mls), participants, .. } if participants.is_empty()),
            "{a0:?}"
        );
        let mut a = real_mls::Member::new("a");
        a.create(b"g1");
        // A one-to-one joiner cannot enter a group call.
        assert_eq!(
            error_code(&join(&mut h, 5, true, E2eeScheme::X25519)),
            ErrorCode::E2eeSchemeMismatch
        );
        join(&mut h, 2, true, E2eeScheme::Mls);
        h.take(1);
        // b's KeyPackage reaches a; a's commit for epoch 0 is accepted, its Welcome
        // reaches b.
        let mut b = real_mls::Member::new("b");
        let (kp_b, kp_b64) = kp_of(&b);
        h.text(
            2,
            &ClientMessage::MlsKeyPackage {
                blob: kp_b64.clone(),
            },
        );
        assert!(h
            .take(1)
            .iter()
            .any(|m| matches!(m, ServerMessage::MlsKeyPackage { blob, .. } if *blob == kp_b64)));
        // b is not a member yet: its commit is refused.
        h.text(
            2,
            &ClientMessage::MlsCommit {
                commit: commit_b64(b"g1", 0),
                welcome: None,
            },
        );
        assert_eq!(refused(&h.take(2)), "only a member of the group commits");
        let (commit0, welcome_b) = a.commit(&[kp_b]);
        h.text(1, &commit_of(&commit0, welcome_b.as_deref()));
        assert!(matches!(
            &h.take(1)[..],
            [ServerMessage::MlsCommitResult {
                epoch: 0,
                accepted: true
            }]
        ));
        a.accepted();
        // b, waiting, gets the commit (it ignores it: it has no group yet) and the Welcome.
        let to_b = h.take(2);
        assert!(
            matches!(
                &to_b[..],
                [
                    ServerMessage::MlsCommit { epoch: 0, .. },
                    ServerMessage::MlsWelcome { .. }
                ]
            ),
            "{to_b:?}"
        );
        assert_eq!(welcome_in(&to_b), welcome_b);
        assert_eq!(b.join(&welcome_in(&to_b).expect("a Welcome")), 1);
        h.text(2, &ClientMessage::MlsJoined { epoch: 1 });
        assert!(h.take(2).is_empty());
        // Keyed: a standard joiner is refused, never downgrading the call.
        assert_eq!(
            error_code(&join(&mut h, 5, false, E2eeScheme::X25519)),
            ErrorCode::E2eeRequired
        );
        // Bots and clear-media features stay out of a group E2EE call.
        h.hello(7, "rec", None, "bot:recording");
        assert_eq!(
            error_code(&join(&mut h, 7, false, E2eeScheme::X25519)),
            ErrorCode::E2eeCallRefusesBots
        );
        h.text(
            1,
            &ClientMessage::Feature {
                name: "record".into(),
                arg: None,
            },
        );
        assert_eq!(
            error_code(&h.take(1)),
            ErrorCode::FeatureUnavailableInE2eeCall
        );
        // A third member (groups are not one-to-one).
        assert!(matches!(
            join(&mut h, 3, true, E2eeScheme::Mls)[0],
            ServerMessage::Joined { .. }
        ));
        let mut c = real_mls::Member::new("c");
        let (kp_c, kp_c64) = kp_of(&c);
        h.text(
            3,
            &ClientMessage::MlsKeyPackage {
                blob: kp_c64.clone(),
            },
        );
        for conn in [1, 2] {
            assert!(h.take(conn).iter().any(
                |m| matches!(m, ServerMessage::MlsKeyPackage { blob, .. } if *blob == kp_c64)
            ));
        }
        // a and b both commit on epoch 1: the first wins, the second is refused and
        // gets the winner's commit.
        let (commit_b1, welcome_c_from_b) = b.commit(std::slice::from_ref(&kp_c));
        let (commit_a1, welcome_c_from_a) = a.commit(std::slice::from_ref(&kp_c));
        h.text(2, &commit_of(&commit_b1, welcome_c_from_b.as_deref()));
        h.text(1, &commit_of(&commit_a1, welcome_c_from_a.as_deref()));
        let to_b = h.take(2);
        assert!(
            matches!(
                to_b[0],
                ServerMessage::MlsCommitResult {
                    epoch: 1,
                    accepted: true
                }
            ),
            "{to_b:?}"
        );
        b.accepted();
        let to_a = h.take(1);
        assert!(
            matches!(
                &to_a[..],
                [
                    ServerMessage::MlsCommit { epoch: 1, .. },
                    ServerMessage::MlsCommitResult {
                        epoch: 1,
                        accepted: false
                    }
                ]
            ),
            "{to_a:?}"
        );
        a.refused();
        a.process(&commit_in(&to_a, 1));
        assert_eq!(a.authenticator(), b.authenticator());
        let to_c = h.take(3);
        assert!(
            matches!(
                &to_c[..],
                [
                    ServerMessage::MlsCommit { epoch: 1, .. },
                    ServerMessage::MlsWelcome { .. }
                ]
            ),
            "{to_c:?}"
        );
        assert_eq!(welcome_in(&to_c), welcome_c_from_b);
        // Another group id, and garbage, are refused.
        h.text(
            1,
            &ClientMessage::MlsCommit {
                commit: commit_b64(b"other", 2),
                welcome: None,
            },
        );
        assert_eq!(refused(&h.take(1)), "a commit for another MLS group");
        h.text(
            1,
            &ClientMessage::MlsCommit {
                commit: "!!".into(),
                welcome: None,
            },
        );
        assert_eq!(refused(&h.take(1)), "bad commit: not base64");
        // A commit whose Welcome does not parse is refused whole: the group stays at
        // epoch 2 rather than move on without its joiner.
        h.text(
            1,
            &ClientMessage::MlsCommit {
                commit: commit_b64(b"g1", 2),
                welcome: Some(BASE64.encode(b"\x00\x01\x00\x03")),
            },
        );
        assert!(refused(&h.take(1)).starts_with("bad Welcome"));
        assert_eq!(h.p.mls["g"].epoch, 2);
        // c has not joined yet; a and b leave: c restarts the group and gets d's
        // KeyPackage.
        join(&mut h, 4, true, E2eeScheme::Mls);
        let d = real_mls::Member::new("d");
        let (kp_d, kp_d64) = kp_of(&d);
        h.text(
            4,
            &ClientMessage::MlsKeyPackage {
                blob: kp_d64.clone(),
            },
        );
        h.text(1, &ClientMessage::Leave);
        h.text(2, &ClientMessage::Leave);
        let to_c = h.take(3);
        let create = to_c
            .iter()
            .position(|m| matches!(m, ServerMessage::MlsCreate {}))
            .unwrap_or_else(|| panic!("no mls_create in {to_c:?}"));
        assert!(
            to_c[create..]
                .iter()
                .any(|m| matches!(m, ServerMessage::MlsKeyPackage { blob, .. } if *blob == kp_d64)),
            "{to_c:?}"
        );
        c.create(b"g2");
        let (commit, welcome_d) = c.commit(&[kp_d]);
        h.text(3, &commit_of(&commit, welcome_d.as_deref()));
        assert!(matches!(
            &h.take(3)[..],
            [ServerMessage::MlsCommitResult {
                epoch: 0,
                accepted: true
            }]
        ));
        assert_eq!(welcome_in(&h.take(4)), welcome_d);
        // A standard call has no group.
        h.hello(6, "f", None, "user");
        h.text(
            6,
            &ClientMessage::Join {
                call: "std".into(),
                e2ee_enabled: false,
                offer_sdp: offer(6),
                e2ee_scheme: E2eeScheme::X25519,
            },
        );
        h.take(6);
        h.text(6, &ClientMessage::MlsKeyPackage { blob: "x".into() });
        assert_eq!(error_code(&h.take(6)), ErrorCode::BadRequest);
    }

    /// The optional video codecs follow the call's members: a participant that lacks H264
    /// takes it out of everyone's descriptions while it is in the call, and its leaving
    /// brings it back. A participant with neither mandatory codec is refused.
    #[test]
    fn call_codecs_narrow_on_join_and_widen_on_leave() {
        let mut h = H::new();
        h.hello(1, "a", None, "user");
        h.hello(2, "b", None, "user");
        h.hello(3, "c", None, "user");
        let h264 = "a=rtpmap:108 H264/90000\r\na=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";
        let with_h264 = |n: u32| {
            offer(n)
                .replace("SAVPF 96\r\n", "SAVPF 108 96\r\n")
                .replace(
                    "a=rtpmap:96 VP8/90000\r\n",
                    &format!("a=rtpmap:96 VP8/90000\r\n{h264}"),
                )
        };
        h.text(
            1,
            &ClientMessage::Join {
                call: "x".into(),
                e2ee_enabled: false,
                offer_sdp: with_h264(1),
                e2ee_scheme: Default::default(),
            },
        );
        let m = h.take(1);
        let ServerMessage::Joined { answer_sdp, .. } = &m[0] else {
            panic!("{m:?}")
        };
        // Alone in the call, it sends what it prefers.
        assert!(answer_sdp.contains("SAVPF 108 96\r\n"), "{answer_sdp}");
        h.text(
            3,
            &ClientMessage::Join {
                call: "x".into(),
                e2ee_enabled: false,
                offer_sdp: with_h264(3),
                e2ee_scheme: Default::default(),
            },
        );
        let (o, rev) = offer_of(&h.take(1));
        assert!(o.contains("SAVPF 108 96\r\n"), "both have H264: {o}");
        answer(&mut h, 1, &o, rev);
        let (o, rev) = offer_of(&h.take(3));
        answer(&mut h, 3, &o, rev);
        // b has VP8 only: a's and c's own lines and remote lines lose H264.
        h.join(2, "x", false);
        for conn in [1, 3] {
            let (o, rev) = offer_of(&h.take(conn));
            assert!(!o.contains("H264"), "{o}");
            assert!(o.contains("m=video 7402 UDP/TLS/RTP/SAVPF 96\r\n"), "{o}");
            answer(&mut h, conn, &o, rev);
        }
        h.text(2, &ClientMessage::Leave);
        let (o, _) = offer_of(&h.take(1));
        assert!(
            o.contains("m=video 7402 UDP/TLS/RTP/SAVPF 108 96\r\n"),
            "{o}"
        );
        // A remote track of c, who has H264 too, offers both.
        assert!(o.matches("SAVPF 108 96\r\n").count() >= 2, "{o}");
        // Neither Opus nor VP8: refused with a typed error.
        let h264_only = with_h264(2)
            .replace("SAVPF 108 96\r\n", "SAVPF 108\r\n")
            .replace("SAVPF 111\r\n", "SAVPF 0\r\n")
            .replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:0 PCMU/8000")
            .replace("a=rtpmap:96 VP8/90000\r\n", "");
        h.text(
            2,
            &ClientMessage::Join {
                call: "x".into(),
                e2ee_enabled: false,
                offer_sdp: h264_only,
                e2ee_scheme: Default::default(),
            },
        );
        assert_eq!(error_code(&h.take(2)), ErrorCode::NoCommonCodec);
    }

    /// Joins and leaves re-describe every session: an m-line per remote track, at most one
    /// offer outstanding, later changes folded into the next offer, departed tracks
    /// inactive, and only a settled inactive line recycled.
    #[test]
    fn renegotiation_tracks_joins_and_leaves() {
        let mut h = H::new();
        for (c, u) in [(1, "a"), (2, "b"), (3, "c")] {
            h.hello(c, u, None, "user");
        }
        let m = h.join(1, "x", false);
        assert!(
            !m.iter().any(|m| matches!(m, ServerMessage::Offer { .. })),
            "alone: no offer"
        );
        h.join(2, "x", false);
        let (o1, r1) = offer_of(&h.take(1));
        assert_eq!(r1, 1);
        assert_eq!(
            o1.matches("a=sendonly").count(),
            2,
            "b's audio and video: {o1}"
        );
        // c joins while a's first offer is unanswered: nothing new for a yet. c's own first
        // offer has a's and b's tracks.
        let (oc, _) = offer_of(&h.join(3, "x", false));
        assert_eq!(oc.matches("a=sendonly").count(), 4);
        assert!(!h
            .take(1)
            .iter()
            .any(|m| matches!(m, ServerMessage::Offer { .. })));
        // A stale or unknown revision is refused; the right answer brings the next offer.
        h.text(
            1,
            &ClientMessage::Answer {
                sdp: "v=0".into(),
                revision: 7,
            },
        );
        assert_eq!(error_code(&h.take(1)), ErrorCode::BadRequest);
        h.text(
            1,
            &ClientMessage::Answer {
                sdp: "garbage".into(),
                revision: 1,
            },
        );
        assert_eq!(error_code(&h.take(1)), ErrorCode::BadSdp);
        answer(&mut h, 1, &o1, 1);
        let (o2, r2) = offer_of(&h.take(1));
        assert_eq!(r2, 2);
        assert_eq!(
            o2.matches("a=sendonly").count(),
            4,
            "b's and c's tracks: {o2}"
        );
        answer(&mut h, 1, &o2, 2);
        // b leaves: a's next offer keeps b's lines, inactive.
        h.text(2, &ClientMessage::Leave);
        let (o3, r3) = offer_of(&h.take(1));
        assert_eq!(r3, 3);
        assert_eq!(o3.matches("a=sendonly").count(), 2);
        assert_eq!(o3.matches("a=inactive").count(), 2);
        answer(&mut h, 1, &o3, 3);
        // b joins again: its new tracks get new lines (webrtcbin cannot take a recycled
        // one); the departed ones stay inactive.
        h.join(2, "x", false);
        let (o4, _) = offer_of(&h.take(1));
        assert_eq!(o4.matches("m=").count(), 8, "{o4}");
        assert_eq!(o4.matches("a=sendonly").count(), 4);
        assert!(o4.contains("a=mid:r4") && o4.contains("a=mid:r5"), "{o4}");
    }

    /// The mids of a description's m-lines, in order.
    fn mids_of(sdp: &str) -> Vec<String> {
        sdp.split("\r\n")
            .filter_map(|l| l.strip_prefix("a=mid:"))
            .map(str::to_string)
            .collect()
    }

    /// A line is settled (free to carry another track) only once the client has answered
    /// an offer in which it is inactive: an answer to an offer that still showed it active
    /// settles nothing, even if its sender has left since.
    #[test]
    fn a_line_is_reused_only_after_an_answer_to_an_offer_showing_it_inactive() {
        let mut c = cfg();
        // Lines are recycled from 4 x max_call_participants = 8 on; the per-kind bound
        // on lines (more than 8 here) does not come first.
        c.max_call_participants = 2;
        c.track_limits = TrackLimits { audio: 4, video: 4 };
        let mut h = H::with(c, CallingE2ee::DisabledUserOverride);
        for (c, u) in [(1, "a"), (2, "b"), (3, "d")] {
            h.hello(c, u, None, "user");
        }
        h.join(1, "x", false);
        h.join(2, "x", false);
        let (o, r) = offer_of(&h.take(1));
        answer(&mut h, 1, &o, r);
        // b leaves and comes back until a's session has 8 remote lines, all answered.
        for _ in 0..3 {
            h.text(2, &ClientMessage::Leave);
            let (o, r) = offer_of(&h.take(1));
            answer(&mut h, 1, &o, r);
            h.join(2, "x", false);
            let (o, r) = offer_of(&h.take(1));
            answer(&mut h, 1, &o, r);
        }
        h.text(2, &ClientMessage::Leave);
        let (o, r) = offer_of(&h.take(1));
        assert_eq!(mids_of(&o).len(), 2 + 8, "{o}");
        answer(&mut h, 1, &o, r);
        // b's next tracks recycle the first two lines (settled: inactive in an answer).
        h.join(2, "x", false);
        let (o4, r4) = offer_of(&h.take(1));
        let slot0 = mids_of(&o4)[2].clone();
        assert_eq!(slot0, "r8", "{o4}");
        // b leaves before a answers the offer showing its tracks on those lines: a's
        // answer to it says nothing about them being inactive.
        h.text(2, &ClientMessage::Leave);
        answer(&mut h, 1, &o4, r4);
        let (o5, r5) = offer_of(&h.take(1));
        assert_eq!(mids_of(&o5)[2], slot0, "inactive, awaiting an answer: {o5}");
        // d joins while that offer is unanswered: its tracks may not take those lines.
        h.join(3, "x", false);
        answer(&mut h, 1, &o5, r5);
        let (o6, _) = offer_of(&h.take(1));
        let mids = mids_of(&o6);
        assert_eq!(
            mids[2], slot0,
            "a line the client has not yet seen inactive was reused: {o6}"
        );
        assert_eq!(o6.matches("a=sendonly").count(), 2, "d's tracks: {o6}");
    }

    /// A browser-shaped offer at the default track limits (a microphone, a camera and a
    /// screen), every codec a call can carry on each line, and transport-cc.
    fn full_offer(n: u32) -> String {
        let fp = Fingerprint { sha256: [9; 32] }.to_sdp_value();
        let mut o = format!(
            "v=0\r\no=- {n} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\n"
        );
        let common = |mid: &str| {
            format!(
                "c=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na=ice-ufrag:cufrag\r\na=ice-pwd:clientpasswordclientpassword\r\n\
                 a=fingerprint:{fp}\r\na=setup:actpass\r\na=rtcp-mux\r\na=sendrecv\r\n\
                 a=extmap:3 {}\r\n",
                sdp::TWCC_URI
            )
        };
        o += "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
        o += &common("0");
        o += "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n";
        o += &format!("a=ssrc:{} cname:c\r\n", 10 * n);
        for (mid, ssrc) in [("1", 10 * n + 1), ("2", 10 * n + 2)] {
            o += "m=video 9 UDP/TLS/RTP/SAVPF 96 98 45 102\r\n";
            o += &common(mid);
            o += "a=rtpmap:96 VP8/90000\r\na=rtpmap:98 VP9/90000\r\na=fmtp:98 profile-id=0\r\n\
                  a=rtpmap:45 AV1/90000\r\na=fmtp:45 level-idx=5;profile=0;tier=0\r\n\
                  a=rtpmap:102 H264/90000\r\n\
                  a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";
            o += &format!("a=ssrc:{ssrc} cname:c\r\n");
        }
        o
    }

    /// The largest call the relay accepts (`calls.max_participants` as high as the
    /// configuration check lets it go at the default track limits), every participant
    /// with every track, and members coming and going until sessions hold all the lines
    /// they may: every offer the relay writes fits one signalling message, within the
    /// bound the check computed, and no session exceeds its lines, answering or not.
    #[test]
    fn every_offer_of_the_largest_accepted_call_fits_a_signalling_message() {
        // The relay's configuration check (relay/src/config.rs `validate_tracks`) admits
        // a call size while this bound fits one message: the largest it admits.
        let mut cfg = cfg();
        let limits = cfg.track_limits;
        let media = cfg.media_addr;
        let mut max = 2;
        while tracks::largest_offer_message_bytes(&limits, max + 1, media) <= MAX_MESSAGE_BYTES {
            max += 1;
        }
        assert!(max >= 16, "the defaults admit the default call size");
        let bound = tracks::largest_offer_message_bytes(&limits, max, media);
        assert!(bound <= MAX_MESSAGE_BYTES);
        cfg.max_call_participants = max;
        cfg.max_total_participants = cfg.max_total_participants.max(max);
        let mut h = H::with(cfg, CallingE2ee::DisabledUserOverride);
        let join = |h: &mut H, conn: ConnId| {
            h.hello(conn, &format!("u{conn}"), None, "user");
            h.text(
                conn,
                &ClientMessage::Join {
                    call: "big".into(),
                    e2ee_enabled: false,
                    offer_sdp: full_offer(conn as u32),
                    e2ee_scheme: Default::default(),
                },
            );
        };
        // Conn 1 answers every offer; the others never answer.
        let mut largest = 0;
        let mut check = |h: &mut H| {
            for m in h.take(1) {
                if let ServerMessage::Offer { sdp, revision } = &m {
                    let bytes = serde_json::to_string(&m).expect("serializes").len();
                    assert!(bytes <= bound, "{bytes} > {bound}");
                    largest = largest.max(bytes);
                    answer(h, 1, sdp, *revision);
                } else if let ServerMessage::Joined { .. } = m {
                } else {
                    assert!(
                        matches!(
                            m,
                            ServerMessage::ParticipantJoined { .. }
                                | ServerMessage::ParticipantLeft { .. }
                        ),
                        "{m:?}"
                    );
                }
            }
        };
        for conn in 1..=max as ConnId {
            join(&mut h, conn);
            check(&mut h);
        }
        assert_eq!(h.p.counts().0, max, "a full call");
        let cap: usize = ["audio", "video"]
            .into_iter()
            .map(|k| limits.remote_lines(k, max))
            .sum();
        // Members leave and others take their place, several rounds of the whole call.
        for round in 0..3 * max as ConnId {
            let next = max as ConnId + 1 + round;
            let leaving = 2 + round % (max as ConnId - 1);
            let leaving = if h.p.conns.get(&leaving).is_some_and(|c| c.peer.is_some()) {
                leaving
            } else {
                h.p.conns
                    .iter()
                    .find(|(c, s)| **c != 1 && s.peer.is_some())
                    .map(|(c, _)| *c)
                    .expect("a member besides conn 1")
            };
            h.text(leaving, &ClientMessage::Leave);
            check(&mut h);
            join(&mut h, next);
            check(&mut h);
            for s in h.p.sessions.values() {
                assert!(s.neg.remote.len() <= cap, "{} > {cap}", s.neg.remote.len());
            }
        }
        let observer = h.peer_of(1);
        // So many came and went that its lines are recycled (from 4 x max_participants).
        assert!(h.p.sessions[&observer].neg.remote.len() >= (4 * max).min(cap));
        // Every member's tracks are still offered to it (none waits for a line).
        let active = h.p.sessions[&observer]
            .neg
            .remote
            .tracks()
            .filter(|t| t.active)
            .count();
        assert_eq!(active, 3 * (max - 1));
        eprintln!("max_participants {max}: largest offer {largest} bytes, bound {bound}");
    }
}
