//! Random sequences of control-plane inputs, checked after every step (issue 19). Shared by
//! the property tests (proptest feeds it bytes) and the `plane` fuzz target (libFuzzer
//! does): [`run`] turns bytes into [`Action`]s with `arbitrary`, drives a
//! [`ControlPlane`] on a virtual clock as the driver would, and panics with the broken
//! invariant. Built for tests and with the `arbitrary` feature only.
//!
//! Actions name things from small sets (six connection slots, a few users, three calls,
//! SSRCs 1 to 6, four MLS identities) so that collisions, replacements, duplicate
//! KeyPackages and full calls happen often. Checked after each action:
//! - [`ControlPlane::check_invariants`], before and after the outputs are drained;
//! - from the outputs alone: a peer is added to the media path once and removed once, and
//!   its media outputs fall between the two; a connection is never told it joined while
//!   its previous session is still on the media path; nothing is sent to a connection
//!   after its close, nor to one the driver never opened or already dropped; the
//!   participant and call gauges (from the reports) equal the plane's counts.

use crate::plane::{ConnId, ControlPlane, Input, Output, PlaneConfig, FEATURES};
use crate::policy::CallingE2ee;
use crate::report::Report;
use crate::token::{Claims, TokenRules, TokenVerifier};
use crate::PeerId;
use arbitrary::{Arbitrary, Result, Unstructured};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use blindrelay_protocol::mls;
use blindrelay_protocol::sdp::{self, build_offer, Fingerprint, OfferParams};
use blindrelay_protocol::signal::{ClientMessage, E2eeScheme, ServerMessage};
use blindrelay_protocol::tracks::TrackLimits;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const SECRET: &str = "plane-model-secret-0123456789";
/// Connection slots: a slot holds one connection at a time.
const SLOTS: u8 = 6;
/// (user, tenant, role): two tenants, a policy of each kind, and a bot.
const USERS: [(&str, &str, &str); 6] = [
    ("u0", "t", "user"),
    ("u1", "t", "user"),
    ("u2", "t", "user"),
    ("u3", "t", "user"),
    ("u1", "t2", "user"),
    ("rec", "t", "bot:recording"),
];
const CALLS: [&str; 3] = ["c0", "c1", "c2"];
/// MLS identities whose KeyPackages the actions publish.
const IDENTITIES: u8 = 4;
/// Longer than every timeout and TTL of [`config`].
const PAST_EVERY_TIMEOUT: Duration = Duration::from_secs(200);

/// Which token a hello carries.
#[derive(Debug, Clone, Copy)]
pub enum TokenKind {
    /// Valid for an hour, for any call or for one of [`CALLS`].
    Valid {
        call: Option<u8>,
    },
    /// Valid now, expired a few seconds later (past the leeway): join re-checks it.
    ShortLived,
    Expired,
    WrongSecret,
    Garbage,
}

/// The SDP of a join.
#[derive(Debug, Clone, Copy)]
pub enum OfferKind {
    /// One audio and one video line with these SSRCs (1 to 6: collisions are common).
    Plain {
        audio: u8,
        video: u8,
    },
    /// More video lines than the track limits allow.
    TooManyTracks {
        base: u8,
    },
    Garbage,
}

/// How an answer relates to the slot's last offer.
#[derive(Debug, Clone, Copy)]
pub enum AnswerKind {
    Current,
    Stale,
    Future,
    /// The current revision, SDP that does not parse.
    Garbage,
}

#[derive(Debug, Clone, Copy)]
pub enum ChatSize {
    Empty,
    Small,
    AtCap,
    OverCap,
    OverMessageLimit,
}

#[derive(Debug, Clone, Copy)]
pub enum FeatureArg {
    None,
    User(u8),
    Call(u8),
    /// The last pickup code a park returned (or a wrong one).
    Code,
    WrongCode,
}

#[derive(Debug, Clone, Copy)]
pub enum Epoch {
    /// The epoch this slot's client would use: the next one after the last it saw.
    Tracked,
    Small(u8),
    Max,
}

#[derive(Debug, Clone, Copy)]
pub enum Blob {
    /// A well-formed KeyPackage of identity `n`.
    KeyPackage(u8),
    NotBase64,
    Garbage,
}

#[derive(Debug, Clone, Copy)]
pub enum WelcomeKind {
    None,
    /// A Welcome naming the KeyPackages of the identities in this bit mask.
    For(u8),
    Garbage,
}

/// One thing the outside world does to the plane.
#[derive(Debug, Clone)]
pub enum Action {
    /// A new connection in `slot` (the one there, if any, is dropped first).
    Connect {
        slot: u8,
    },
    Disconnect {
        slot: u8,
    },
    Hello {
        slot: u8,
        user: u8,
        token: TokenKind,
    },
    Join {
        slot: u8,
        call: u8,
        e2ee: bool,
        mls: bool,
        offer: OfferKind,
    },
    /// A call id out of bounds (empty or too long).
    JoinBadCall {
        slot: u8,
        empty: bool,
    },
    Answer {
        slot: u8,
        kind: AnswerKind,
        extra_ssrc: Option<u8>,
    },
    Leave {
        slot: u8,
    },
    Chat {
        slot: u8,
        size: ChatSize,
    },
    /// `feature` indexes [`FEATURES`]; one past it is an unknown feature.
    Feature {
        slot: u8,
        feature: u8,
        arg: FeatureArg,
    },
    E2ee {
        slot: u8,
        to: u8,
    },
    KeyPackage {
        slot: u8,
        blob: Blob,
    },
    Commit {
        slot: u8,
        group: u8,
        epoch: Epoch,
        proposal: bool,
        welcome: WelcomeKind,
    },
    MlsJoined {
        slot: u8,
        epoch: Epoch,
    },
    Binary {
        slot: u8,
    },
    Garbage {
        slot: u8,
        text: String,
    },
    /// Media-path inputs, for the `peer`-th peer the outputs named (live or not).
    Activity {
        peer: u8,
    },
    Keyed {
        peer: u8,
    },
    DtlsFailed {
        peer: u8,
    },
    DtlsClosed {
        peer: u8,
    },
    /// Time passes by this many milliseconds (timers fire at their own instants).
    Advance {
        ms: u16,
    },
    AdvancePastEveryTimeout,
    Shutdown,
}

fn slot(u: &mut Unstructured) -> Result<u8> {
    u.int_in_range(0..=SLOTS - 1)
}

fn small(u: &mut Unstructured, max: u8) -> Result<u8> {
    u.int_in_range(0..=max)
}

impl<'a> Arbitrary<'a> for Action {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        // Weighted: the common client messages most, shutdown rarely.
        let pick: u8 = u.int_in_range(0..=99)?;
        Ok(match pick {
            0..=7 => Action::Connect { slot: slot(u)? },
            8..=9 => Action::Disconnect { slot: slot(u)? },
            10..=17 => Action::Hello {
                slot: slot(u)?,
                user: small(u, USERS.len() as u8 - 1)?,
                token: match small(u, 9)? {
                    0..=4 => TokenKind::Valid { call: None },
                    5 => TokenKind::Valid {
                        call: Some(small(u, CALLS.len() as u8 - 1)?),
                    },
                    6 => TokenKind::ShortLived,
                    7 => TokenKind::Expired,
                    8 => TokenKind::WrongSecret,
                    _ => TokenKind::Garbage,
                },
            },
            18..=29 => Action::Join {
                slot: slot(u)?,
                call: small(u, CALLS.len() as u8 - 1)?,
                e2ee: u.arbitrary()?,
                mls: u.arbitrary()?,
                offer: match small(u, 9)? {
                    0..=7 => OfferKind::Plain {
                        audio: small(u, 5)? + 1,
                        video: small(u, 5)? + 1,
                    },
                    8 => OfferKind::TooManyTracks { base: small(u, 3)? },
                    _ => OfferKind::Garbage,
                },
            },
            30 => Action::JoinBadCall {
                slot: slot(u)?,
                empty: u.arbitrary()?,
            },
            31..=40 => Action::Answer {
                slot: slot(u)?,
                kind: match small(u, 7)? {
                    0..=4 => AnswerKind::Current,
                    5 => AnswerKind::Stale,
                    6 => AnswerKind::Future,
                    _ => AnswerKind::Garbage,
                },
                extra_ssrc: match small(u, 3)? {
                    0 => Some(small(u, 5)? + 1),
                    _ => None,
                },
            },
            41..=44 => Action::Leave { slot: slot(u)? },
            45..=47 => Action::Chat {
                slot: slot(u)?,
                size: match small(u, 4)? {
                    0 => ChatSize::Empty,
                    1 => ChatSize::Small,
                    2 => ChatSize::AtCap,
                    3 => ChatSize::OverCap,
                    _ => ChatSize::OverMessageLimit,
                },
            },
            48..=55 => Action::Feature {
                slot: slot(u)?,
                feature: small(u, FEATURES.len() as u8)?,
                arg: match small(u, 4)? {
                    0 => FeatureArg::None,
                    1 => FeatureArg::User(small(u, USERS.len() as u8 - 1)?),
                    2 => FeatureArg::Call(small(u, CALLS.len() as u8 - 1)?),
                    3 => FeatureArg::Code,
                    _ => FeatureArg::WrongCode,
                },
            },
            56..=57 => Action::E2ee {
                slot: slot(u)?,
                to: u.arbitrary()?,
            },
            58..=62 => Action::KeyPackage {
                slot: slot(u)?,
                blob: match small(u, 7)? {
                    0..=5 => Blob::KeyPackage(small(u, IDENTITIES - 1)?),
                    6 => Blob::NotBase64,
                    _ => Blob::Garbage,
                },
            },
            63..=68 => Action::Commit {
                slot: slot(u)?,
                group: small(u, 1)?,
                epoch: epoch(u)?,
                proposal: small(u, 9)? == 0,
                welcome: match small(u, 5)? {
                    0..=1 => WelcomeKind::None,
                    2..=4 => WelcomeKind::For(u.arbitrary()?),
                    _ => WelcomeKind::Garbage,
                },
            },
            69..=71 => Action::MlsJoined {
                slot: slot(u)?,
                epoch: epoch(u)?,
            },
            72 => Action::Binary { slot: slot(u)? },
            73..=74 => Action::Garbage {
                slot: slot(u)?,
                text: u.arbitrary()?,
            },
            75..=78 => Action::Activity {
                peer: u.arbitrary()?,
            },
            79..=82 => Action::Keyed {
                peer: u.arbitrary()?,
            },
            83 => Action::DtlsFailed {
                peer: u.arbitrary()?,
            },
            84 => Action::DtlsClosed {
                peer: u.arbitrary()?,
            },
            85..=95 => Action::Advance {
                ms: u.int_in_range(0..=20_000)?,
            },
            96..=98 => Action::AdvancePastEveryTimeout,
            _ => Action::Shutdown,
        })
    }
}

fn epoch(u: &mut Unstructured) -> Result<Epoch> {
    Ok(match small(u, 5)? {
        0..=2 => Epoch::Tracked,
        3..=4 => Epoch::Small(small(u, 3)?),
        _ => Epoch::Max,
    })
}

/// The plane's settings, with limits small enough that the actions reach them: three
/// participants a call, two calls, five participants, two invitations and parked calls,
/// a small broadcast budget and chat cap.
pub fn config() -> PlaneConfig {
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
        max_call_participants: 3,
        track_limits: TrackLimits { audio: 1, video: 2 },
        max_calls: 2,
        max_total_participants: 5,
        max_invites: 2,
        max_parked: 2,
        messages_per_second: 50,
        message_burst: 40,
        broadcast: crate::budget::BudgetRate {
            bytes_per_second: 4096,
            burst_bytes: 16_384,
        },
        max_chat_bytes: 512,
        retrieve_attempts_per_minute: 2,
        workers: 2,
        media_addr: "127.0.0.1:7402".parse().expect("a literal address"),
        fingerprint: Fingerprint { sha256: [7; 32] },
    }
}

/// One connection slot, as its client sees it.
#[derive(Debug, Default)]
struct Slot {
    conn: Option<ConnId>,
    /// The plane ordered it closed (the driver then drops it: a later `Disconnect`).
    closed: bool,
    /// Its session, from the `joined` it was sent (the peer of the `IceAdd` before it).
    peer: Option<PeerId>,
    /// The relay's last offer to it.
    offer: Option<(String, u64)>,
    /// The next MLS epoch, as its client would track it.
    epoch: u64,
}

/// A plane on a virtual clock, driven like the relay's driver drives it, with what the
/// outputs have shown so far.
pub struct Harness {
    plane: ControlPlane,
    /// The virtual clock, and the instant it started at Unix time `unix`.
    now: Instant,
    origin: Instant,
    unix: u64,
    next_conn: ConnId,
    slots: Vec<Slot>,
    /// Every peer the outputs named, in order (media inputs pick from it).
    peers: Vec<PeerId>,
    /// Peers on the media path: added by `IceAdd`, gone with `MediaRemove`.
    live: BTreeSet<PeerId>,
    /// Connections the driver holds open (connected, not yet disconnected).
    open: BTreeSet<ConnId>,
    /// Connections the plane ordered closed.
    closing: BTreeSet<ConnId>,
    /// Public ids seen in `joined` and `participant_joined`.
    public_ids: Vec<String>,
    codes: Vec<String>,
    /// Gauges summed from the reports: participants, calls.
    participants: i64,
    calls: i64,
    /// The peer of the last `IceAdd`, claimed by the `joined` that follows it.
    pending_peer: Option<PeerId>,
    key_packages: BTreeMap<u8, (String, mls::KeyPackageRef)>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Harness {
        let now = Instant::now();
        let unix = 1_800_000_000;
        // One user of each policy: u0 may not encrypt, u1 must, the others choose.
        let policy = Box::new(|user: &str, _: &str| match user {
            "u0" => CallingE2ee::Disabled,
            "u1" => CallingE2ee::Required,
            _ => CallingE2ee::DisabledUserOverride,
        });
        Harness {
            plane: ControlPlane::new(config(), policy, (now, unix), [3; 32]),
            now,
            origin: now,
            unix,
            next_conn: 1,
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            peers: Vec::new(),
            live: BTreeSet::new(),
            open: BTreeSet::new(),
            closing: BTreeSet::new(),
            public_ids: Vec::new(),
            codes: Vec::new(),
            participants: 0,
            calls: 0,
            pending_peer: None,
            key_packages: BTreeMap::new(),
        }
    }

    /// The Unix time of the virtual clock, for tokens.
    fn unix_now(&self) -> u64 {
        self.unix + self.now.saturating_duration_since(self.origin).as_secs()
    }

    fn token(&self, user: u8, kind: TokenKind) -> String {
        let (sub, tenant, role) = USERS[usize::from(user) % USERS.len()];
        let unix = self.unix_now();
        let (exp, call, secret) = match kind {
            TokenKind::Valid { call } => (
                unix + 3600,
                call.map(|c| CALLS[usize::from(c) % CALLS.len()].to_string()),
                SECRET,
            ),
            TokenKind::ShortLived => (unix + 2, None, SECRET),
            TokenKind::Expired => (unix.saturating_sub(600), None, SECRET),
            TokenKind::WrongSecret => (unix + 3600, None, "another-secret-0123456789abcdef"),
            TokenKind::Garbage => return "not.a.token".into(),
        };
        let claims = Claims {
            sub: sub.into(),
            tenant: tenant.into(),
            role: role.into(),
            call,
            exp,
            iat: unix.saturating_sub(1),
            nbf: None,
            cnf: None,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap_or_default()
    }

    /// A well-formed KeyPackage of MLS identity `n` (its fields as the relay reads them;
    /// nothing signed), base64, with its KeyPackageRef.
    fn key_package(&mut self, n: u8) -> (String, mls::KeyPackageRef) {
        let n = n % IDENTITIES;
        if let Some(kp) = self.key_packages.get(&n) {
            return kp.clone();
        }
        let mut m = vec![0, 1, 0, mls::WIRE_KEY_PACKAGE as u8, 0, 1, 0, 1];
        let vec = |m: &mut Vec<u8>, b: &[u8]| {
            m.push(b.len() as u8);
            m.extend_from_slice(b);
        };
        vec(&mut m, &[0x10 + n; 32]); // init key
        vec(&mut m, &[0x20 + n; 32]); // encryption key
        vec(&mut m, &[0x30 + n; 32]); // signature key
        m.extend_from_slice(&[0, 1]); // basic credential
        vec(&mut m, format!("id{n}").as_bytes());
        for _ in 0..5 {
            vec(&mut m, &[]); // capabilities
        }
        m.push(1); // leaf node source: key_package
        m.extend_from_slice(&[0; 16]); // lifetime
        for b in [&[][..], &[0xaa; 8], &[], &[0xbb; 8]] {
            vec(&mut m, b); // extensions, signature, extensions, signature
        }
        let reference = mls::parse_key_package(&m)
            .and_then(|kp| kp.reference())
            .expect("the model's KeyPackages are well formed");
        let kp = (BASE64.encode(&m), reference);
        self.key_packages.insert(n, kp.clone());
        kp
    }

    /// A Welcome naming the KeyPackages of the identities in `mask`.
    fn welcome(&mut self, mask: u8) -> String {
        let mut secrets = Vec::new();
        for n in (0..IDENTITIES).filter(|n| mask & (1 << n) != 0) {
            let (_, reference) = self.key_package(n);
            secrets.push(32);
            secrets.extend_from_slice(&reference);
            secrets.extend_from_slice(&[1, 0xcc, 1, 0xdd]); // kem output, ciphertext
        }
        let mut m = vec![0, 1, 0, mls::WIRE_WELCOME as u8, 0, 1];
        put_len(&mut m, secrets.len());
        m.extend_from_slice(&secrets);
        m.extend_from_slice(&[2, 0xee, 0xef]); // encrypted group info
        BASE64.encode(m)
    }

    fn epoch_of(&self, slot: u8, e: Epoch) -> u64 {
        match e {
            Epoch::Tracked => self.slots[usize::from(slot)].epoch,
            Epoch::Small(n) => u64::from(n),
            Epoch::Max => u64::MAX,
        }
    }

    fn conn_of(&self, slot: u8) -> Option<ConnId> {
        self.slots[usize::from(slot)].conn
    }

    /// Send a client message on `slot`'s connection (nothing if it has none).
    fn text(&mut self, slot: u8, msg: &ClientMessage) {
        let text = serde_json::to_string(msg).expect("client messages serialise");
        self.raw(slot, text);
    }

    fn raw(&mut self, slot: u8, text: String) {
        if let Some(conn) = self.conn_of(slot) {
            self.plane
                .handle_input(self.now, Input::Text { conn, text });
        }
    }

    fn peer(&self, i: u8) -> Option<PeerId> {
        (!self.peers.is_empty()).then(|| self.peers[usize::from(i) % self.peers.len()])
    }

    fn disconnect(&mut self, slot: u8) {
        let s = &mut self.slots[usize::from(slot)];
        if let Some(conn) = s.conn.take() {
            *s = Slot::default();
            self.open.remove(&conn);
            self.plane
                .handle_input(self.now, Input::Disconnected { conn });
        }
    }

    /// Carry out one action, then check everything. Panics on a broken invariant.
    pub fn step(&mut self, a: &Action) {
        self.act(a);
        self.check();
    }

    fn act(&mut self, a: &Action) {
        let now = self.now;
        match *a {
            Action::Connect { slot } => {
                self.disconnect(slot);
                let conn = self.next_conn;
                self.next_conn += 1;
                self.slots[usize::from(slot)].conn = Some(conn);
                self.open.insert(conn);
                self.plane.handle_input(now, Input::Connected { conn });
            }
            Action::Disconnect { slot } => self.disconnect(slot),
            Action::Hello { slot, user, token } => {
                let token = self.token(user, token);
                self.text(slot, &ClientMessage::Hello { token });
            }
            Action::Join {
                slot,
                call,
                e2ee,
                mls,
                offer,
            } => {
                let offer_sdp = match offer {
                    OfferKind::Plain { audio, video } => build_offer(&OfferParams {
                        ice_ufrag: "cufrag",
                        ice_pwd: "clientpasswordclientpassword",
                        fingerprint: &Fingerprint { sha256: [9; 32] },
                        audio_ssrc: u32::from(audio),
                        video_ssrc: u32::from(video),
                        cname: "c",
                        session_id: u64::from(slot),
                    }),
                    OfferKind::TooManyTracks { base } => too_many_tracks(u32::from(base)),
                    OfferKind::Garbage => "v=0\r\nm=nonsense\r\n".into(),
                };
                self.text(
                    slot,
                    &ClientMessage::Join {
                        call: CALLS[usize::from(call) % CALLS.len()].into(),
                        e2ee_enabled: e2ee,
                        offer_sdp,
                        e2ee_scheme: if mls {
                            E2eeScheme::Mls
                        } else {
                            E2eeScheme::X25519
                        },
                    },
                );
            }
            Action::JoinBadCall { slot, empty } => {
                let call = if empty {
                    String::new()
                } else {
                    "x".repeat(300)
                };
                self.text(
                    slot,
                    &ClientMessage::Join {
                        call,
                        e2ee_enabled: false,
                        offer_sdp: build_offer(&OfferParams {
                            ice_ufrag: "cufrag",
                            ice_pwd: "clientpasswordclientpassword",
                            fingerprint: &Fingerprint { sha256: [9; 32] },
                            audio_ssrc: 1,
                            video_ssrc: 2,
                            cname: "c",
                            session_id: 1,
                        }),
                        e2ee_scheme: E2eeScheme::X25519,
                    },
                );
            }
            Action::Answer {
                slot,
                kind,
                extra_ssrc,
            } => {
                let Some((offer, revision)) = self.slots[usize::from(slot)].offer.clone() else {
                    return;
                };
                let Ok(mut sdp) = sdp::answer_relay_offer(
                    &offer,
                    "cli",
                    "clientpasswordclientpassword",
                    &Fingerprint { sha256: [9; 32] },
                ) else {
                    panic!("the relay's offer does not answer: {offer}");
                };
                if let Some(x) = extra_ssrc {
                    // Listed on the first m-line, as a receive-only stack reports.
                    if let Some(at) = sdp
                        .find("a=mid:")
                        .and_then(|i| sdp[i..].find("\r\n").map(|j| i + j + 2))
                    {
                        sdp.insert_str(at, &format!("a=ssrc:{x} cname:x\r\n"));
                    }
                }
                let revision = match kind {
                    AnswerKind::Current => revision,
                    AnswerKind::Stale => revision.saturating_sub(1),
                    AnswerKind::Future => revision + 1,
                    AnswerKind::Garbage => {
                        sdp = "v=0\r\nnot sdp".into();
                        revision
                    }
                };
                self.text(slot, &ClientMessage::Answer { sdp, revision });
            }
            Action::Leave { slot } => self.text(slot, &ClientMessage::Leave),
            Action::Chat { slot, size } => {
                let cap = config().max_chat_bytes;
                let n = match size {
                    ChatSize::Empty => 0,
                    ChatSize::Small => 10,
                    ChatSize::AtCap => cap,
                    ChatSize::OverCap => cap + 1,
                    ChatSize::OverMessageLimit => blindrelay_protocol::signal::MAX_MESSAGE_BYTES,
                };
                self.text(
                    slot,
                    &ClientMessage::Chat {
                        body: "c".repeat(n),
                    },
                );
            }
            Action::Feature { slot, feature, arg } => {
                let name = FEATURES
                    .get(usize::from(feature))
                    .copied()
                    .unwrap_or("teleport")
                    .to_string();
                let arg = match arg {
                    FeatureArg::None => None,
                    FeatureArg::User(u) => {
                        let (user, tenant, _) = USERS[usize::from(u) % USERS.len()];
                        Some(if tenant == "t" {
                            user.to_string()
                        } else {
                            format!("{user}@{tenant}")
                        })
                    }
                    FeatureArg::Call(c) => Some(CALLS[usize::from(c) % CALLS.len()].into()),
                    FeatureArg::Code => Some(self.codes.last().cloned().unwrap_or_default()),
                    FeatureArg::WrongCode => Some("1234567".into()),
                };
                self.text(slot, &ClientMessage::Feature { name, arg });
            }
            Action::E2ee { slot, to } => {
                let to = if self.public_ids.is_empty() || to == u8::MAX {
                    "p-nobody".to_string()
                } else {
                    self.public_ids[usize::from(to) % self.public_ids.len()].clone()
                };
                self.text(
                    slot,
                    &ClientMessage::E2ee {
                        to,
                        blob: "b".repeat(64),
                    },
                );
            }
            Action::KeyPackage { slot, blob } => {
                let blob = match blob {
                    Blob::KeyPackage(n) => self.key_package(n).0,
                    Blob::NotBase64 => "%%%".into(),
                    Blob::Garbage => BASE64.encode([0, 1, 0, 5, 0, 1]),
                };
                self.text(slot, &ClientMessage::MlsKeyPackage { blob });
            }
            Action::Commit {
                slot,
                group,
                epoch,
                proposal,
                welcome,
            } => {
                let epoch = self.epoch_of(slot, epoch);
                let content = if proposal {
                    mls::CONTENT_PROPOSAL
                } else {
                    mls::CONTENT_COMMIT
                };
                // The clear header of a public message: member sender 0, no aad.
                let mut m = vec![0, 1, 0, 1, 2, b'g', b'0' + group];
                m.extend_from_slice(&epoch.to_be_bytes());
                m.extend_from_slice(&[1, 0, 0, 0, 0, 0, content, 0xee, 0xff]);
                let welcome = match welcome {
                    WelcomeKind::None => None,
                    WelcomeKind::For(mask) => Some(self.welcome(mask)),
                    WelcomeKind::Garbage => Some(BASE64.encode([0, 1, 0, 3, 9])),
                };
                self.text(
                    slot,
                    &ClientMessage::MlsCommit {
                        commit: BASE64.encode(m),
                        welcome,
                    },
                );
            }
            Action::MlsJoined { slot, epoch } => {
                let epoch = self.epoch_of(slot, epoch);
                self.text(slot, &ClientMessage::MlsJoined { epoch });
            }
            Action::Binary { slot } => {
                if let Some(conn) = self.conn_of(slot) {
                    self.plane.handle_input(now, Input::Binary { conn });
                }
            }
            Action::Garbage { slot, ref text } => self.raw(slot, text.clone()),
            Action::Activity { peer } => {
                if let Some(peer) = self.peer(peer) {
                    self.plane.handle_input(now, Input::Activity { peer });
                }
            }
            Action::Keyed { peer } => {
                if let Some(peer) = self.peer(peer) {
                    self.plane.handle_input(now, Input::Keyed { peer });
                }
            }
            Action::DtlsFailed { peer } => {
                if let Some(peer) = self.peer(peer) {
                    self.plane.handle_input(now, Input::DtlsFailed { peer });
                }
            }
            Action::DtlsClosed { peer } => {
                if let Some(peer) = self.peer(peer) {
                    self.plane.handle_input(now, Input::DtlsClosed { peer });
                }
            }
            Action::Advance { ms } => self.advance(Duration::from_millis(u64::from(ms))),
            Action::AdvancePastEveryTimeout => self.advance(PAST_EVERY_TIMEOUT),
            Action::Shutdown => self.plane.handle_input(now, Input::Shutdown),
        }
    }

    /// Fire timers at their own instants, as the driver does, checking after each.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.plane.poll_timeout().filter(|t| *t <= end) {
            self.now = self.now.max(t);
            self.plane.handle_timeout(self.now);
            self.check();
        }
        self.now = end;
    }

    /// Everything the plane promises, checked now: its own invariants, then the outputs.
    fn check(&mut self) {
        if let Err(e) = self.plane.check_invariants() {
            panic!("invariant broken before draining: {e}");
        }
        while let Some(o) = self.plane.poll_output() {
            self.output(o);
        }
        while let Some(r) = self.plane.poll_report() {
            match r {
                Report::Participants(_, d) => self.participants += i64::from(d),
                Report::Calls(_, d) => self.calls += i64::from(d),
                _ => {}
            }
        }
        if let Err(e) = self.plane.check_invariants() {
            panic!("invariant broken: {e}");
        }
        let (sessions, calls, _) = self.plane.counts();
        assert_eq!(
            self.live.len(),
            sessions,
            "peers on the media path {:?} but {sessions} sessions",
            self.live
        );
        assert_eq!(self.participants, sessions as i64, "participants gauge");
        assert_eq!(self.calls, calls as i64, "calls gauge");
    }

    fn slot_of(&mut self, conn: ConnId) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.conn == Some(conn))
    }

    fn output(&mut self, o: Output) {
        match o {
            Output::Send { conn, msg } => self.sent(conn, msg),
            Output::Close { conn, .. } => {
                assert!(self.open.contains(&conn), "close of conn {conn}, not open");
                assert!(self.closing.insert(conn), "conn {conn} closed twice");
                if let Some(s) = self.slot_of(conn) {
                    s.closed = true;
                }
            }
            Output::IceAdd(p) => {
                assert!(
                    !self.peers.contains(&p.peer),
                    "peer {} added to the media path twice",
                    p.peer
                );
                self.peers.push(p.peer);
                self.live.insert(p.peer);
                self.pending_peer = Some(p.peer);
            }
            Output::MediaRemove { peer, .. } => {
                assert!(self.live.remove(&peer), "removal of peer {peer}, not live");
                for s in &mut self.slots {
                    if s.peer == Some(peer) {
                        s.peer = None;
                        s.offer = None;
                    }
                }
            }
            Output::Attach { peer, .. }
            | Output::Receive { peer, .. }
            | Output::MaxHeight { peer, .. }
            | Output::Move { peer, .. } => {
                assert!(
                    self.live.contains(&peer),
                    "media output for peer {peer}, not live: {o:?}"
                );
            }
            Output::CallStarted { .. } | Output::CallEnded { .. } => {}
        }
    }

    fn sent(&mut self, conn: ConnId, msg: ServerMessage) {
        assert!(
            self.open.contains(&conn),
            "sent to conn {conn}, not open: {msg:?}"
        );
        assert!(
            !self.closing.contains(&conn),
            "sent to conn {conn} after its close: {msg:?}"
        );
        let pending = self.pending_peer.take();
        let mut ids = Vec::new();
        let Some(s) = self.slot_of(conn) else {
            return;
        };
        match msg {
            ServerMessage::Joined {
                participant,
                participants,
                ..
            } => {
                assert!(
                    s.peer.is_none(),
                    "conn {conn} told it joined while its session {:?} is live",
                    s.peer
                );
                assert!(pending.is_some(), "joined without a peer on the media path");
                s.peer = pending;
                s.offer = None;
                s.epoch = 0;
                ids.push(participant);
                ids.extend(participants.into_iter().map(|p| p.participant));
            }
            ServerMessage::ParticipantJoined { participant } => ids.push(participant.participant),
            ServerMessage::Offer { sdp, revision } => {
                assert!(s.peer.is_some(), "offer to conn {conn}, not in a call");
                if let Some((_, last)) = &s.offer {
                    assert!(revision > *last, "offer revisions go back");
                }
                s.offer = Some((sdp, revision));
            }
            ServerMessage::MlsCreate {} => s.epoch = 0,
            ServerMessage::MlsCommit { epoch, .. }
            | ServerMessage::MlsCommitResult {
                epoch,
                accepted: true,
            } => s.epoch = s.epoch.max(epoch.saturating_add(1)),
            ServerMessage::FeatureResult {
                name,
                ok: true,
                detail: Some(code),
            } if name == "park" => self.codes.push(code),
            _ => {}
        }
        for id in ids {
            if !self.public_ids.contains(&id) {
                self.public_ids.push(id);
            }
        }
    }
}

/// Append an MLS variable-length size (shortest form).
fn put_len(m: &mut Vec<u8>, n: usize) {
    if n < 1 << 6 {
        m.push(n as u8);
    } else {
        m.extend_from_slice(&((n as u16) | 0x4000).to_be_bytes());
    }
}

/// An offer with one audio and three video lines (the limits allow two).
fn too_many_tracks(base: u32) -> String {
    let fp = Fingerprint { sha256: [9; 32] }.to_sdp_value();
    let mut o = format!(
        "v=0\r\no=- {base} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2 3\r\n"
    );
    let common = |mid: &str| {
        format!(
            "c=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na=ice-ufrag:cufrag\r\na=ice-pwd:clientpasswordclientpassword\r\n\
             a=fingerprint:{fp}\r\na=setup:actpass\r\na=rtcp-mux\r\na=sendrecv\r\n"
        )
    };
    o += "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
    o += &common("0");
    o += &format!(
        "a=rtpmap:111 opus/48000/2\r\na=ssrc:{} cname:c\r\n",
        10 * base + 1
    );
    for i in 1..=3 {
        o += "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
        o += &common(&i.to_string());
        o += &format!(
            "a=rtpmap:96 VP8/90000\r\na=ssrc:{} cname:c\r\n",
            10 * base + 1 + i
        );
    }
    o
}

/// Most actions one input runs (the fuzz target's and the property tests' bound).
pub const MAX_ACTIONS: usize = 200;

/// Run the actions `data` describes (up to [`MAX_ACTIONS`]) on a fresh plane, checking
/// after each. Panics with the broken invariant.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut h = Harness::new();
    for _ in 0..MAX_ACTIONS {
        if u.is_empty() {
            break;
        }
        let Ok(a) = Action::arbitrary(&mut u) else {
            break;
        };
        h.step(&a);
    }
    // The end of every call: past every timeout, nothing may be left but open,
    // authenticated connections in the lobby.
    h.step(&Action::AdvancePastEveryTimeout);
}

impl Action {
    /// The bytes [`Action::arbitrary`] reads as this action: how the fuzz target's seeds
    /// are written (`fuzz/seeds`). `Garbage` has no fixed encoding (a string's length
    /// depends on what follows) and is written as `Binary`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let epoch = |e: Epoch| match e {
            Epoch::Tracked => vec![0],
            Epoch::Small(n) => vec![3, n],
            Epoch::Max => vec![5],
        };
        match *self {
            Action::Connect { slot } => vec![0, slot],
            Action::Disconnect { slot } => vec![8, slot],
            Action::Hello { slot, user, token } => {
                let mut b = vec![10, slot, user];
                match token {
                    TokenKind::Valid { call: None } => b.push(0),
                    TokenKind::Valid { call: Some(c) } => b.extend([5, c]),
                    TokenKind::ShortLived => b.push(6),
                    TokenKind::Expired => b.push(7),
                    TokenKind::WrongSecret => b.push(8),
                    TokenKind::Garbage => b.push(9),
                }
                b
            }
            Action::Join {
                slot,
                call,
                e2ee,
                mls,
                offer,
            } => {
                let mut b = vec![18, slot, call, u8::from(e2ee), u8::from(mls)];
                match offer {
                    OfferKind::Plain { audio, video } => b.extend([0, audio - 1, video - 1]),
                    OfferKind::TooManyTracks { base } => b.extend([8, base]),
                    OfferKind::Garbage => b.push(9),
                }
                b
            }
            Action::JoinBadCall { slot, empty } => vec![30, slot, u8::from(empty)],
            Action::Answer {
                slot,
                kind,
                extra_ssrc,
            } => {
                let k = match kind {
                    AnswerKind::Current => 0,
                    AnswerKind::Stale => 5,
                    AnswerKind::Future => 6,
                    AnswerKind::Garbage => 7,
                };
                let mut b = vec![31, slot, k];
                match extra_ssrc {
                    Some(x) => b.extend([0, x - 1]),
                    None => b.push(1),
                }
                b
            }
            Action::Leave { slot } => vec![41, slot],
            Action::Chat { slot, size } => vec![45, slot, size as u8],
            Action::Feature { slot, feature, arg } => {
                let mut b = vec![48, slot, feature];
                match arg {
                    FeatureArg::None => b.push(0),
                    FeatureArg::User(u) => b.extend([1, u]),
                    FeatureArg::Call(c) => b.extend([2, c]),
                    FeatureArg::Code => b.push(3),
                    FeatureArg::WrongCode => b.push(4),
                }
                b
            }
            Action::E2ee { slot, to } => vec![56, slot, to],
            Action::KeyPackage { slot, blob } => match blob {
                Blob::KeyPackage(n) => vec![58, slot, 0, n],
                Blob::NotBase64 => vec![58, slot, 6],
                Blob::Garbage => vec![58, slot, 7],
            },
            Action::Commit {
                slot,
                group,
                epoch: e,
                proposal,
                welcome,
            } => {
                let mut b = vec![63, slot, group];
                b.extend(epoch(e));
                b.push(if proposal { 0 } else { 1 });
                match welcome {
                    WelcomeKind::None => b.push(0),
                    WelcomeKind::For(mask) => b.extend([2, mask]),
                    WelcomeKind::Garbage => b.push(5),
                }
                b
            }
            Action::MlsJoined { slot, epoch: e } => {
                let mut b = vec![69, slot];
                b.extend(epoch(e));
                b
            }
            Action::Binary { slot } | Action::Garbage { slot, .. } => vec![72, slot],
            Action::Activity { peer } => vec![75, peer],
            Action::Keyed { peer } => vec![79, peer],
            Action::DtlsFailed { peer } => vec![83, peer],
            Action::DtlsClosed { peer } => vec![84, peer],
            Action::Advance { ms } => {
                let [hi, lo] = ms.to_be_bytes();
                vec![85, hi, lo]
            }
            Action::AdvancePastEveryTimeout => vec![96],
            Action::Shutdown => vec![99],
        }
    }
}

/// Named sequences that reach deep states at once: the fuzz target's seeds (written by
/// `fuzz/seeds` with [`Action::to_bytes`]) and a test of their own.
pub fn scenarios() -> Vec<(&'static str, Vec<Action>)> {
    use Action::*;
    let hello = |slot, user| Hello {
        slot,
        user,
        token: TokenKind::Valid { call: None },
    };
    let join = |slot, call, audio, video| Join {
        slot,
        call,
        e2ee: false,
        mls: false,
        offer: OfferKind::Plain { audio, video },
    };
    let mls_join = |slot, call, audio, video| Join {
        slot,
        call,
        e2ee: true,
        mls: true,
        offer: OfferKind::Plain { audio, video },
    };
    let answer = |slot| Answer {
        slot,
        kind: AnswerKind::Current,
        extra_ssrc: None,
    };
    let feature = |slot, name: &str, arg| Feature {
        slot,
        feature: FEATURES.iter().position(|f| *f == name).unwrap_or(0) as u8,
        arg,
    };
    let two_in_c0 = vec![
        Connect { slot: 0 },
        hello(0, 2),
        join(0, 0, 1, 2),
        Connect { slot: 1 },
        hello(1, 3),
        join(1, 0, 3, 4),
    ];
    let mut call = two_in_c0.clone();
    call.extend([
        answer(0),
        answer(1),
        Keyed { peer: 0 },
        Keyed { peer: 1 },
        Activity { peer: 0 },
        Chat {
            slot: 0,
            size: ChatSize::Small,
        },
        Answer {
            slot: 1,
            kind: AnswerKind::Current,
            extra_ssrc: Some(1),
        },
        Advance { ms: 12_000 },
        Leave { slot: 1 },
        answer(0),
    ]);
    let mls = vec![
        Connect { slot: 0 },
        hello(0, 2),
        mls_join(0, 1, 1, 2),
        Connect { slot: 1 },
        hello(1, 3),
        mls_join(1, 1, 3, 4),
        KeyPackage {
            slot: 1,
            blob: Blob::KeyPackage(1),
        },
        Commit {
            slot: 0,
            group: 0,
            epoch: Epoch::Tracked,
            proposal: false,
            welcome: WelcomeKind::For(0b10),
        },
        MlsJoined {
            slot: 1,
            epoch: Epoch::Tracked,
        },
        Commit {
            slot: 1,
            group: 0,
            epoch: Epoch::Tracked,
            proposal: false,
            welcome: WelcomeKind::None,
        },
        Leave { slot: 0 },
    ];
    let mut park = two_in_c0.clone();
    park.extend([
        feature(0, "park", FeatureArg::None),
        Connect { slot: 2 },
        hello(2, 2),
        feature(2, "retrieve", FeatureArg::Code),
        join(2, 0, 5, 6),
    ]);
    let mut transfer = two_in_c0.clone();
    transfer.extend([
        Connect { slot: 2 },
        hello(2, 0),
        feature(0, "consult_transfer", FeatureArg::User(0)),
        join(2, 0, 5, 6),
        feature(1, "add_participant", FeatureArg::User(4)),
        feature(1, "transfer", FeatureArg::User(0)),
    ]);
    // u2 is in both calls (slots 0 and 1), so it may merge them.
    let merge_with = |shared: bool| {
        vec![
            Connect { slot: 0 },
            hello(0, 2),
            join(0, 0, 1, 2),
            Connect { slot: 1 },
            hello(1, 2),
            join(1, 1, if shared { 1 } else { 3 }, 4),
            Connect { slot: 2 },
            hello(2, 3),
            join(2, 1, 5, 6),
            feature(0, "merge", FeatureArg::Call(1)),
            answer(0),
            answer(2),
        ]
    };
    vec![
        ("call-of-two", call),
        ("mls-group", mls),
        ("park-retrieve", park),
        ("transfer", transfer),
        ("merge", merge_with(false)),
        ("merge-shared-ssrc", merge_with(true)),
    ]
}

/// The bytes of a scenario, as the fuzz target reads them.
pub fn scenario_bytes(actions: &[Action]) -> Vec<u8> {
    actions.iter().flat_map(Action::to_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    /// Every scenario decodes to its own actions, so the fuzz seeds mean what they say.
    #[test]
    fn scenario_bytes_decode_to_their_actions() {
        for (name, actions) in scenarios() {
            let bytes = scenario_bytes(&actions);
            let mut u = Unstructured::new(&bytes);
            for a in &actions {
                let got = Action::arbitrary(&mut u).expect("decodes");
                assert_eq!(format!("{got:?}"), format!("{a:?}"), "{name}");
            }
            assert!(u.is_empty(), "{name}: bytes left over");
        }
    }

    /// The scenarios reach the states they are named for (checked on the plane's
    /// outputs and counts), with every invariant holding at each step.
    #[test]
    fn scenarios_reach_their_states() {
        for (name, actions) in scenarios() {
            let mut h = Harness::new();
            for a in &actions {
                h.step(a);
            }
            let (sessions, calls, _) = h.plane.counts();
            match name {
                "call-of-two" => {
                    // The second left; the first answered the offer that followed.
                    assert_eq!((sessions, calls), (1, 1), "{name}");
                    assert!(h.slots[0].offer.is_some(), "{name}: offers were made");
                }
                "mls-group" => {
                    assert_eq!((sessions, calls), (1, 1), "{name}");
                    // Slot 1 joined the group through the Welcome and committed epoch 1.
                    assert_eq!(h.slots[1].epoch, 2, "{name}");
                }
                "park-retrieve" => {
                    assert_eq!(h.codes.len(), 1, "{name}: a pickup code");
                    assert!(h.slots[2].peer.is_some(), "{name}: retrieved and joined");
                }
                "transfer" => {
                    // The consultative transfer completed: slot 0 handed over to slot 2.
                    assert!(
                        h.slots[0].peer.is_none() && h.slots[2].peer.is_some(),
                        "{name}"
                    );
                }
                "merge" => {
                    assert_eq!(calls, 1, "{name}: one call after the merge");
                    assert_eq!(sessions, 3, "{name}");
                }
                // Regression (found writing these checks): a merge of two calls that both
                // had SSRC 1 left two claimants of it in the merged call.
                "merge-shared-ssrc" => {
                    assert_eq!(calls, 2, "{name}: the merge is refused");
                    assert_eq!(sessions, 3, "{name}");
                }
                _ => unreachable!("a scenario without a check: {name}"),
            }
            h.step(&Action::AdvancePastEveryTimeout);
            assert_eq!(h.plane.counts().0, 0, "{name}: everyone timed out");
        }
    }

    /// 256 random sequences of up to 200 actions, from a fixed seed so CI runs the same
    /// cases: every invariant after every action (see the module docs).
    #[test]
    fn random_action_sequences_keep_the_invariants() {
        let config = Config {
            cases: 256,
            failure_persistence: None,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[19; 32]);
        let mut runner = TestRunner::new_with_rng(config, rng);
        // About five bytes an action: up to 200 actions.
        let bytes = proptest::collection::vec(any::<u8>(), 0..1200);
        let result = runner.run(&bytes, |data| {
            run(&data);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}
