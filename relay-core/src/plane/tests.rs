//! The control plane on a virtual clock: no sockets, no sleeps, microseconds a test.
use super::*;
use crate::report::MlsRefusal;
use crate::token::Claims;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use blindrelay_protocol::mls;
use blindrelay_protocol::sdp::{build_offer, OfferParams};
use blindrelay_protocol::signal::MAX_MESSAGE_BYTES;
use std::collections::BTreeSet;

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
        // Every step of every test keeps the plane's invariants (checked before the
        // queues are drained, so their bound is checked too).
        if let Err(e) = self.p.check_invariants() {
            panic!("invariant broken: {e}");
        }
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
    fn hello_in(&mut self, conn: ConnId, tenant: &str, user: &str, call: Option<&str>, role: &str) {
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

/// A participant another node serves (a cascade) joins with that node's media address and
/// fingerprint in its answer, and a merge that would move anyone another node serves is
/// refused like any other merge refusal, and nothing moves.
#[test]
fn a_participant_served_by_another_node_is_described_with_that_node_and_never_merged() {
    let mut h = H::new();
    let edge = MediaEndpoint {
        addr: "127.0.0.9:4000".parse().expect("literal"),
        fingerprint: Fingerprint { sha256: [7; 32] },
    };
    h.input(Input::ConnectedVia {
        conn: 9,
        media: edge,
    });
    for (c, u) in [(1, "a"), (5, "a")] {
        h.hello(c, u, None, "user");
    }
    // Signed in on the connection the other node carries (not a fresh local one).
    let token = h.token("z", None, "user");
    h.text(9, &ClientMessage::Hello { token });
    assert!(matches!(
        h.take(9).as_slice(),
        [ServerMessage::Capabilities { .. }]
    ));
    h.join(1, "one", false);
    h.join(5, "two", false);
    let joined = h.join(9, "two", false);
    let answer = joined
        .iter()
        .find_map(|m| match m {
            ServerMessage::Joined { answer_sdp, .. } => Some(answer_sdp.clone()),
            _ => None,
        })
        .expect("joined");
    assert!(answer.contains("127.0.0.9 4000"), "{answer}");
    assert!(answer.contains("07:07:07"), "{answer}");
    let ice = h
        .out
        .iter()
        .find_map(|o| match o {
            Output::IceAdd(p) if p.conn == 9 => Some(p.clone()),
            _ => None,
        })
        .expect("ice for the remote participant");
    assert_eq!(ice.conn, 9);
    for c in [1, 5, 9] {
        h.take(c);
    }
    h.out.clear();
    let r = merge(&mut h, 1, "two");
    assert!(
        matches!(&r[..], [ServerMessage::FeatureResult { ok: false, detail: Some(d), .. }]
            if d.starts_with("merge_refused")),
        "{r:?}"
    );
    assert!(!h.out.iter().any(|o| matches!(o, Output::Move { .. })));
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
    assert_eq!(h.p.lobby.sizes().1, 1);
    h.advance(Duration::from_secs(120));
    assert_eq!(h.p.lobby.sizes().1, 0, "expired invitation purged");
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
    assert_eq!(h.p.lobby.sizes().2, 1);
    h.advance(Duration::from_secs(120));
    assert_eq!(h.p.lobby.sizes().2, 0);
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
    assert_eq!(h.p.mls["g"].waiting_blob(h.peer_of(2)), Some(kp1.as_str()));
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

/// A commit beyond the budget still goes out, and puts its sender in debt; a member in
/// debt commits again only once it is repaid, so commits of the largest size cannot be
/// fanned out at the message rate.
#[test]
fn a_member_in_debt_for_commits_commits_again_once_it_is_repaid() {
    let mut c = cfg();
    c.broadcast = BudgetRate {
        bytes_per_second: 10_000,
        burst_bytes: 20_000,
    };
    let mut h = H::with(c, CallingE2ee::DisabledUserOverride);
    for (conn, u) in [(1, "a"), (2, "b")] {
        h.hello(conn, u, None, "user");
    }
    join_mls(&mut h, 1, "g");
    join_mls(&mut h, 2, "g");
    let (_, kp) = kp_of(&real_mls::Member::new("b"));
    h.text(2, &ClientMessage::MlsKeyPackage { blob: kp });
    h.out.clear();
    let commit = |h: &mut H, epoch: u64, extra: usize| {
        let mut raw = BASE64.decode(commit_b64(b"g/1", epoch)).expect("base64");
        raw.resize(raw.len() + extra, 0xab);
        h.text(
            1,
            &ClientMessage::MlsCommit {
                commit: BASE64.encode(&raw),
                welcome: None,
            },
        );
    };
    // 30 KB: beyond the whole burst, accepted and delivered all the same.
    commit(&mut h, 0, 30_000);
    assert!(matches!(
        h.take(1).as_slice(),
        [ServerMessage::MlsCommitResult {
            epoch: 0,
            accepted: true
        }]
    ));
    assert_eq!(h.take(2).len(), 1);
    // The next one, at once: refused like a lost race and counted, sent to nobody; the
    // DS still awaits epoch 1.
    commit(&mut h, 1, 0);
    let a = h.take(1);
    assert!(
        matches!(
            a.as_slice(),
            [
                ServerMessage::MlsCommitResult {
                    epoch: 1,
                    accepted: false
                },
                ServerMessage::Error {
                    code: ErrorCode::RateLimited,
                    ..
                }
            ]
        ),
        "{a:?}"
    );
    assert_eq!(
        h.reported(&Report::RateLimited(RateLimit::BroadcastBytes)),
        1
    );
    assert!(h.take(2).is_empty());
    // The debt stops at one burst (2 s of rate): 1.9 s is not enough, 2 s is.
    h.advance(Duration::from_millis(1_900));
    commit(&mut h, 1, 0);
    let m = h.take(1);
    assert_eq!(rate_limited(&m), 1, "{m:?}");
    h.advance(Duration::from_millis(100));
    commit(&mut h, 1, 0);
    assert!(matches!(
        h.take(1).as_slice(),
        [ServerMessage::MlsCommitResult {
            epoch: 1,
            accepted: true
        }]
    ));
    let b = h.take(2);
    assert!(
        matches!(b.as_slice(), [ServerMessage::MlsCommit { epoch: 1, .. }]),
        "{b:?}"
    );
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
    assert!(h.p.sessions[&mallory].neg.is_outstanding(), "not settled");
    assert!(!h.p.sessions[&mallory].claims_ssrc(3));
    h.text(
        2,
        &ClientMessage::Answer {
            sdp: clean,
            revision,
        },
    );
    assert!(h.take(2).is_empty());
    assert!(!h.p.sessions[&mallory].neg.is_outstanding(), "settled");
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
pub(super) fn commit_b64(group: &[u8], epoch: u64) -> String {
    let mut m = vec![0, 1, 0, 1, group.len() as u8];
    m.extend_from_slice(group);
    m.extend_from_slice(&epoch.to_be_bytes());
    m.extend_from_slice(&[1, 0, 0, 0, 0, 0, mls::CONTENT_COMMIT, 0xee, 0xff]);
    BASE64.encode(m)
}

/// Real MLS members (openmls, the clients' suite 0x0001) for the Delivery Service
/// tests: real KeyPackages, commits and Welcomes, so the relay's parsers and refs are
/// checked against what clients send.
pub(super) mod real_mls {
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
            let signer = SignatureKeyPair::new(SUITE.signature_algorithm()).expect("a signing key");
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
        ServerMessage::MlsWelcome { welcome, .. } => Some(BASE64.decode(welcome).expect("base64")),
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
    assert!(matches!(&e[0], ServerMessage::Joined { participants, .. } if participants.is_empty()));
    assert!(h.p.mls["g"].is_member(h.peer_of(5)));
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
        assert!(h
            .take(conn)
            .iter()
            .any(|m| matches!(m, ServerMessage::MlsKeyPackage { blob, .. } if *blob == kp_c64)));
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
    assert_eq!(h.p.mls["g"].epoch(), 2);
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
    let mut o =
        format!("v=0\r\no=- {n} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\n");
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
            assert!(
                s.neg.remote().len() <= cap,
                "{} > {cap}",
                s.neg.remote().len()
            );
        }
    }
    let observer = h.peer_of(1);
    // So many came and went that its lines are recycled (from 4 x max_participants).
    assert!(h.p.sessions[&observer].neg.remote().len() >= (4 * max).min(cap));
    // Every member's tracks are still offered to it (none waits for a line).
    let active = h.p.sessions[&observer]
        .neg
        .remote()
        .tracks()
        .filter(|t| t.active)
        .count();
    assert_eq!(active, 3 * (max - 1));
    eprintln!("max_participants {max}: largest offer {largest} bytes, bound {bound}");
}

/// The invariant check sees state out of step across parts (the tests above run it
/// after every step and find none).
#[test]
fn check_invariants_finds_state_out_of_step() {
    let mut h = H::new();
    h.hello(1, "a", None, "user");
    h.join(1, "c", false);
    let a = h.peer_of(1);
    h.p.check_invariants().expect("a consistent plane");
    // A timer whose state is gone.
    h.p.timers.set(h.now, Timer::Connect(a + 100));
    let e = h.p.check_invariants().expect_err("a stale timer");
    assert!(e.contains("outlived"), "{e}");
    h.p.timers.cancel(&Timer::Connect(a + 100));
    // A session without its consent timer would never time out.
    h.p.timers.cancel(&Timer::Consent(a));
    let e = h.p.check_invariants().expect_err("no consent timer");
    assert!(e.contains("consent"), "{e}");
    h.p.timers
        .set(h.now + Duration::from_secs(1), Timer::Consent(a));
    // An SSRC claimed in the index by someone with no such claim.
    h.p.ssrcs.claim("c", a + 1, [4242]);
    let e = h.p.check_invariants().expect_err("an unowned claim");
    assert!(e.contains("SSRC"), "{e}");
    h.p.ssrcs.release("c", a + 1, [4242]);
    // A joined connection back in the lobby.
    h.p.lobby.enter("a@t".into(), 1);
    let e = h.p.check_invariants().expect_err("joined yet idle");
    assert!(e.contains("lobby"), "{e}");
    h.p.lobby.leave("a@t", 1);
    h.p.check_invariants().expect("consistent again");
}

/// The driver learns at attach who a participant is to the media it sends: its public id
/// and its offer's numbering, which a capture writes as the sender's codec map.
#[test]
fn attach_carries_the_senders_id_and_codec_map() {
    use blindrelay_protocol::sdp::{parse_offer, Codec, Numbering};
    let mut h = H::new();
    h.hello(1, "alice", None, "user");
    let joined = h.join(1, "c", false);
    let Some(ServerMessage::Joined { participant, .. }) = joined.first() else {
        panic!("expected joined, got {joined:?}");
    };
    let a = h.peer_of(1);
    h.input(Input::Keyed { peer: a });
    let sender = h
        .out
        .iter()
        .find_map(|o| match o {
            Output::Attach { peer, sender, .. } if *peer == a => Some(sender.clone()),
            _ => None,
        })
        .expect("attach");
    assert_eq!(&sender.participant, participant);
    let n = Numbering::from_offer(&parse_offer(&offer(1)).expect("our offer parses"));
    let want: Vec<(u8, Codec)> = Codec::ALL
        .into_iter()
        .filter_map(|c| n.pt_of(c).map(|pt| (pt, c)))
        .collect();
    assert!(want.contains(&(111, Codec::Opus)) && want.contains(&(96, Codec::Vp8)));
    assert_eq!(sender.codecs, want);
}

/// A receiver caps the picture height of one remote video track by its m-line's mid: the
/// plane tells its forwarding loop the track's SSRC; a mid that is not one of its remote
/// video tracks is refused.
#[test]
fn max_resolution_names_a_remote_video_track_by_mid() {
    let mut h = H::new();
    h.hello(1, "alice", None, "user");
    h.hello(2, "bob", None, "user");
    h.join(1, "c", false);
    h.join(2, "c", false);
    let a = h.peer_of(1);
    let offer = h
        .take(1)
        .into_iter()
        .find_map(|m| match m {
            ServerMessage::Offer { sdp, .. } => Some(sdp),
            _ => None,
        })
        .expect("alice is offered bob's tracks");
    // The mid of each remote line, by kind.
    let mut mids: Vec<(String, String)> = Vec::new();
    let mut kind = String::new();
    for l in offer.lines() {
        if let Some(m) = l.strip_prefix("m=") {
            kind = m.split(' ').next().unwrap_or("").to_string();
        }
        if let Some(mid) = l.strip_prefix("a=mid:").filter(|m| m.starts_with('r')) {
            mids.push((kind.clone(), mid.to_string()));
        }
    }
    let mid_of = |k: &str| {
        mids.iter()
            .find(|(x, _)| x == k)
            .map(|(_, m)| m.clone())
            .expect("a remote line")
    };
    h.out.clear();
    let ask = |h: &mut H, mid: String, height: Option<u32>| {
        h.text(1, &ClientMessage::MaxResolution { mid, height });
    };
    // Asked before its DTLS is done (a page asks as a track arrives): kept, and handed to
    // its forwarding loop right after its tables.
    ask(&mut h, mid_of("video"), Some(100));
    ask(&mut h, mid_of("video"), Some(360));
    assert!(h.out.is_empty(), "{:?}", h.out);
    h.input(Input::Keyed { peer: a });
    let attach = h
        .out
        .iter()
        .position(|o| matches!(o, Output::Attach { .. }));
    let cap = h.out.iter().position(
        |o| matches!(o, Output::MaxHeight { peer, track: 6, height: 360, .. } if *peer == a),
    );
    assert!(attach.is_some() && cap > attach, "{:?}", h.out);
    assert_eq!(h.p.sessions[&a].max_heights, [(6, 360)], "one per track");
    h.out.clear();
    ask(&mut h, mid_of("video"), Some(240));
    ask(&mut h, mid_of("video"), None);
    ask(&mut h, mid_of("video"), Some(1 << 20));
    let caps: Vec<(PeerId, u32, u16)> = h
        .out
        .iter()
        .filter_map(|o| match o {
            Output::MaxHeight {
                peer,
                track,
                height,
                ..
            } => Some((*peer, *track, *height)),
            _ => None,
        })
        .collect();
    // bob's video SSRC is 2 * 2 + 2 (see `offer`).
    assert_eq!(caps, [(a, 6, 240), (a, 6, u16::MAX), (a, 6, u16::MAX - 1)]);
    for mid in [mid_of("audio"), "r999".to_string(), "0".to_string()] {
        h.out.clear();
        ask(&mut h, mid, Some(360));
        assert_eq!(error_code(&h.take(1)), ErrorCode::UnknownTrack);
        assert!(!h.out.iter().any(|o| matches!(o, Output::MaxHeight { .. })));
    }
}

/// A participant's arrival asks for key frames in standard and 1:1 E2EE calls, whose
/// receivers can open them, and not in MLS calls, whose joiner has no keys until a commit.
#[test]
fn a_join_asks_for_key_frames_except_in_mls_calls() {
    let mut h = H::new();
    for (conn, u) in [(1, "a"), (2, "b"), (3, "c")] {
        h.hello(conn, u, None, "user");
    }
    assert_eq!(joined_mode(&h.join(1, "plain", false)), CallMode::Standard);
    assert_eq!(joined_mode(&h.join(2, "pair", true)), CallMode::E2ee);
    assert_eq!(joined_mode(&join_mls(&mut h, 3, "group")), CallMode::E2ee);
    for (conn, want) in [(1, true), (2, true), (3, false)] {
        let peer = h.peer_of(conn);
        h.out.clear();
        h.input(Input::Keyed { peer });
        let on_join = h.out.iter().find_map(|o| match o {
            Output::Attach {
                peer: p, tables, ..
            } if *p == peer => Some(tables.keyframe_on_join),
            _ => None,
        });
        assert_eq!(on_join, Some(want), "conn {conn}");
    }
}
