//! A relay that lies on its signalling: a WebSocket proxy between real e2ee-clients and a
//! real relay (the media path untouched) rewrites, drops and injects signalling messages,
//! as whoever runs a relay could. The clients must never send a clear frame on its word,
//! never key media to a member it slipped in, and the group must never freeze.

use base64::Engine as _;
use blindrelay::config::Config;
use blindrelay::{Relay, RelayOptions};
use blindrelay_protocol::signal::{ClientMessage, E2eeScheme, ServerMessage};
use blindrelay_tests::*;
use e2ee_client::call::{run_call, CallOptions};
use e2ee_client::mls::GroupMember;
use e2ee_client::roster::MemberIdentity;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

const B64: base64::engine::general_purpose::GeneralPurpose =
    base64::engine::general_purpose::STANDARD;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// Client to relay.
    Up,
    /// Relay to client.
    Down,
}

/// What the liar may do to each message: rewrite it in place, and forward it (true) or
/// drop it (false). Connections are numbered in accept order.
type Rule = Box<dyn FnMut(usize, Dir, &mut Value) -> bool + Send>;

#[derive(Default)]
struct Seen {
    /// Per connection: the participant id the relay gave it.
    ids: Vec<Option<String>>,
    /// Per connection: (direction, type) of every message that passed, in order.
    log: Vec<Vec<(Dir, String)>>,
    /// Per connection: a channel that injects messages towards the client.
    inject: Vec<mpsc::UnboundedSender<String>>,
}

/// The lying signalling proxy.
struct Liar {
    url: String,
    seen: Arc<Mutex<Seen>>,
    changed: watch::Receiver<u64>,
}

impl Liar {
    async fn start(relay: &Relay, rule: Rule) -> Liar {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind liar");
        let addr = listener.local_addr().expect("addr");
        let upstream = relay.signal_url();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let rule = Arc::new(Mutex::new(rule));
        let (tick, changed) = watch::channel(0u64);
        let tick = Arc::new(tick);
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (upstream, seen, rule, tick) =
                    (upstream.clone(), seen2.clone(), rule.clone(), tick.clone());
                let (inject_tx, mut inject_rx) = mpsc::unbounded_channel::<String>();
                let me = {
                    let mut s = seen.lock().expect("lock");
                    s.ids.push(None);
                    s.log.push(Vec::new());
                    s.inject.push(inject_tx);
                    s.ids.len() - 1
                };
                tokio::spawn(async move {
                    let Ok(client) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let Ok((relay, _)) = tokio_tungstenite::connect_async(upstream.as_str()).await
                    else {
                        return;
                    };
                    let (mut c_tx, mut c_rx) = client.split();
                    let (mut r_tx, mut r_rx) = relay.split();
                    let pass = |dir: Dir, t: &str| -> Option<String> {
                        let mut v: Value = serde_json::from_str(t).unwrap_or(Value::Null);
                        let forward = (rule.lock().expect("lock"))(me, dir, &mut v);
                        let ty = v["type"].as_str().unwrap_or("").to_string();
                        {
                            let mut s = seen.lock().expect("lock");
                            if dir == Dir::Down && ty == "joined" {
                                s.ids[me] = v["participant"].as_str().map(str::to_string);
                            }
                            if forward {
                                s.log[me].push((dir, ty));
                            }
                        }
                        tick.send_modify(|n| *n += 1);
                        forward.then(|| v.to_string())
                    };
                    loop {
                        tokio::select! {
                            m = c_rx.next() => {
                                let Some(Ok(Message::Text(t))) = m else { break };
                                if let Some(out) = pass(Dir::Up, t.as_str()) {
                                    if r_tx.send(Message::Text(out.into())).await.is_err() { break }
                                }
                            }
                            m = r_rx.next() => {
                                let Some(Ok(Message::Text(t))) = m else { break };
                                if let Some(out) = pass(Dir::Down, t.as_str()) {
                                    if c_tx.send(Message::Text(out.into())).await.is_err() { break }
                                }
                            }
                            Some(inj) = inject_rx.recv() => {
                                if c_tx.send(Message::Text(inj.into())).await.is_err() { break }
                            }
                        }
                    }
                });
            }
        });
        Liar {
            url: format!("ws://{addr}/v1/signal"),
            seen,
            changed,
        }
    }

    /// Wait until `cond` holds on what the liar has seen, or panic after `limit`.
    async fn wait(&mut self, limit: Duration, what: &str, cond: impl Fn(&Seen) -> bool) {
        let seen = self.seen.clone();
        let ok = tokio::time::timeout(
            limit,
            self.changed.wait_for(|_| cond(&seen.lock().expect("lock"))),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        assert!(ok, "{what}: not seen in {limit:?}");
    }

    fn count(s: &Seen, conn: usize, dir: Dir, ty: &str) -> usize {
        s.log
            .get(conn)
            .map(|l| l.iter().filter(|(d, t)| *d == dir && t == ty).count())
            .unwrap_or(0)
    }

    fn id(&self, conn: usize) -> String {
        self.seen.lock().expect("lock").ids[conn]
            .clone()
            .expect("joined")
    }

    /// Send `msg` to the client of connection `conn` as if the relay had.
    fn inject(&self, conn: usize, msg: Value) {
        let tx = self.seen.lock().expect("lock").inject[conn].clone();
        tx.send(msg.to_string()).expect("connection alive");
    }
}

fn client(url: &str, cfg: &Config, user: &str, call: &str, secs: f64) -> CallOptions {
    CallOptions {
        relay: url.into(),
        token: token(cfg, user, Some(call), "user"),
        call: call.into(),
        duration: Duration::from_secs_f64(secs),
        video_kbps: 200,
        e2ee: true,
        canary: Some(CANARY.into()),
        name: user.into(),
        ..Default::default()
    }
}

const CANARY: &str = "CANARY-lying-relay";

fn capture_has_canary(path: &std::path::Path) -> usize {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes
        .windows(CANARY.len())
        .filter(|w| *w == CANARY.as_bytes())
        .count()
}

/// The relay drops the key agreement and tells both clients of an E2EE call that it is
/// now standard, before any keys exist; or rewrites the `joined` reply to say standard.
/// Both clients leave with `downgrade_refused`, and no canary reaches the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_on_the_relays_word_is_refused() {
    for rewrite_joined in [false, true] {
        let cap = temp_path("liar-downgrade", "pcap");
        let cfg = capture_config(&cap);
        let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
        let rule: Rule = Box::new(move |_, dir, v| {
            if dir == Dir::Up && v["type"] == "e2ee" {
                return false; // no key agreement gets through
            }
            if rewrite_joined && dir == Dir::Down && v["type"] == "joined" {
                v["call_mode"] = json!("standard");
                v["mode_reason"] = json!("standard call: the other side cannot encrypt");
            }
            true
        });
        let mut liar = Liar::start(&relay, rule).await;
        let a = client(&liar.url, &cfg, "ann", "down", 8.0);
        let b = client(&liar.url, &cfg, "ben", "down", 8.0);
        let ta = tokio::spawn(async move { run_call(&a).await });
        liar.wait(Duration::from_secs(10), "ann joined", |s| {
            Liar::count(s, 0, Dir::Down, "joined") == 1
        })
        .await;
        let tb = tokio::spawn(async move { run_call(&b).await });
        if !rewrite_joined {
            liar.wait(Duration::from_secs(10), "ben joined, ann told", |s| {
                Liar::count(s, 1, Dir::Down, "joined") == 1
                    && Liar::count(s, 0, Dir::Down, "participant_joined") == 1
            })
            .await;
            for conn in [0, 1] {
                liar.inject(
                    conn,
                    json!({"type": "call_mode_changed", "call_mode": "standard",
                           "reason": "standard call: ben has not turned on end-to-end encryption"}),
                );
            }
        }
        let (sa, sb) = (ta.await.expect("ann"), tb.await.expect("ben"));
        for (who, s) in [("ann", &sa), ("ben", &sb)] {
            assert_eq!(
                s.left_reason.as_deref(),
                Some("downgrade_refused"),
                "{who}: {s:?}"
            );
            assert_eq!(
                s.error.as_ref().map(|e| e.code.as_str()),
                Some("downgrade_refused")
            );
            assert!(!s.success(), "{who}: the CLI exits non-zero");
            assert!(
                s.mode_reason
                    .as_deref()
                    .unwrap_or("")
                    .contains("standard call"),
                "{who}: the relay's reason is reported: {:?}",
                s.mode_reason
            );
            assert_eq!(s.sent_frames, 0, "{who}: not one frame was sent");
        }
        settle_capture(&relay).await;
        assert_eq!(capture_has_canary(&cap), 0, "no canary reached the relay");
        relay.shutdown().await;
        let _ = std::fs::remove_file(&cap);
    }
}

/// The control for the test above: the same attack on a client that *preferred* E2EE goes
/// on unencrypted with its consent, and then the canary does reach the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_preferred_e2ee_consents_and_then_is_not_blind() {
    let cap = temp_path("liar-preferred", "pcap");
    let cfg = capture_config(&cap);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let rule: Rule = Box::new(|_, dir, v| !(dir == Dir::Up && v["type"] == "e2ee"));
    let mut liar = Liar::start(&relay, rule).await;
    let mut a = client(&liar.url, &cfg, "ann", "pref", 4.0);
    let mut b = client(&liar.url, &cfg, "ben", "pref", 4.0);
    a.e2ee_preferred = true;
    b.e2ee_preferred = true;
    let (ta, tb) = (
        tokio::spawn(async move { run_call(&a).await }),
        tokio::spawn(async move { run_call(&b).await }),
    );
    liar.wait(Duration::from_secs(10), "both joined", |s| {
        s.log.len() == 2 && (0..2).all(|c| Liar::count(s, c, Dir::Down, "joined") == 1)
    })
    .await;
    for conn in [0, 1] {
        liar.inject(
            conn,
            json!({"type": "call_mode_changed", "call_mode": "standard", "reason": "standard call: a lie"}),
        );
    }
    let (sa, sb) = (ta.await.expect("ann"), tb.await.expect("ben"));
    for s in [&sa, &sb] {
        assert!(s.success(), "{s:?}");
        assert_eq!(
            s.downgrade_accepted.as_deref(),
            Some("standard call: a lie")
        );
        assert!(s.frames_verified > 0);
    }
    settle_capture(&relay).await;
    assert!(
        capture_has_canary(&cap) > 0,
        "clear media is visible to the relay"
    );
    relay.shutdown().await;
    let _ = std::fs::remove_file(&cap);
}

/// A real KeyPackage made outside the call, whose credential names `participant` as `user`.
fn outsider_key_package(participant: &str, user: &str) -> String {
    let id = MemberIdentity {
        participant: participant.into(),
        user: user.into(),
        token: None,
    };
    let m = GroupMember::new(id.to_bytes()).expect("member");
    B64.encode(m.key_package().expect("key package"))
}

fn group_member(url: &str, cfg: &Config, user: &str, call: &str, secs: f64) -> CallOptions {
    CallOptions {
        e2ee_scheme: E2eeScheme::Mls,
        ..client(url, cfg, user, call, secs)
    }
}

/// In an MLS call the relay hands the committer KeyPackages under false names: an
/// outsider's under a name never announced, the same under a member's name, one whose
/// credential names a ghost, and bytes that are no KeyPackage. Each is refused and counted;
/// a real joiner after them is added; a member who leaves is removed; every member's list
/// holds only announced participants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_key_packages_are_refused_and_the_group_goes_on() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let mut liar = Liar::start(&relay, Box::new(|_, _, _| true)).await;
    let call = "injected";
    let a = group_member(&liar.url, &cfg, "ann", call, 14.0);
    let ta = tokio::spawn(async move { run_call(&a).await });
    liar.wait(Duration::from_secs(10), "ann joined", |s| {
        Liar::count(s, 0, Dir::Down, "joined") == 1
    })
    .await;
    let b = group_member(&liar.url, &cfg, "ben", call, 12.0);
    let tb = tokio::spawn(async move { run_call(&b).await });
    liar.wait(Duration::from_secs(10), "ben in the group", |s| {
        Liar::count(s, 1, Dir::Up, "mls_joined") == 1
    })
    .await;
    let c = group_member(&liar.url, &cfg, "cat", call, 4.0);
    let tc = tokio::spawn(async move { run_call(&c).await });
    liar.wait(Duration::from_secs(10), "cat in the group", |s| {
        Liar::count(s, 2, Dir::Up, "mls_joined") == 1
    })
    .await;
    let (ben, cat) = (liar.id(1), liar.id(2));
    let injected = [
        ("p-mallory", outsider_key_package("p-mallory", "mallory")),
        (ben.as_str(), outsider_key_package("p-mallory", "mallory")),
        (cat.as_str(), outsider_key_package("p-ghost", "user-cat")),
        (ben.as_str(), B64.encode(b"\x00\x01 not a key package")),
    ];
    for (from, blob) in &injected {
        liar.inject(
            0,
            json!({"type": "mls_key_package", "from": from, "blob": blob}),
        );
    }
    // A real joiner after the injections is added: the group never freezes.
    let d = group_member(&liar.url, &cfg, "dan", call, 8.0);
    let td = tokio::spawn(async move { run_call(&d).await });
    liar.wait(Duration::from_secs(10), "dan in the group", |s| {
        Liar::count(s, 3, Dir::Up, "mls_joined") == 1
    })
    .await;
    let (sa, sb, sc, sd) = (
        ta.await.expect("ann"),
        tb.await.expect("ben"),
        tc.await.expect("cat"),
        td.await.expect("dan"),
    );
    for (who, s) in [("ann", &sa), ("ben", &sb), ("cat", &sc), ("dan", &sd)] {
        assert!(s.error.is_none(), "{who}: {:?}", s.error);
        assert!(s.e2ee, "{who}: keyed");
        assert_eq!(s.decrypt_failures, 0, "{who}");
    }
    let by: BTreeMap<&str, u64> = sa
        .key_packages_refused_by
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(by.get("unannounced"), Some(&1), "{by:?}");
    assert_eq!(by.get("not_the_sender"), Some(&2), "{by:?}");
    assert_eq!(by.get("invalid"), Some(&1), "{by:?}");
    assert_eq!(sa.key_packages_refused, 4);
    // Everyone ends with only announced participants; cat left and was removed.
    let announced = ["ann", "ben", "cat", "dan"];
    for (who, s) in [("ann", &sa), ("ben", &sb), ("dan", &sd)] {
        assert!(
            s.group_members
                .iter()
                .all(|m| announced.contains(&m.as_str())),
            "{who}: {:?}",
            s.group_members
        );
    }
    assert_eq!(
        sd.group_members,
        ["ann", "ben", "dan"],
        "cat removed after leaving"
    );
    assert!(
        sd.frames_decrypted_from.len() >= 2,
        "dan opened both others' frames: {:?}",
        sd.frames_decrypted_from
    );
    relay.shutdown().await;
}

/// A participant (not the relay) lies to an honest relay: eve waits in the MLS call with
/// a KeyPackage the committer refuses (it names someone else), so she is never added. She
/// reads the group id from a commit that reaches her as a waiting joiner, claims
/// `mls_joined`, and sends a bogus commit for the current epoch. The relay refuses both
/// (counted), and the group goes on: a real joiner after her is keyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_mls_joined_and_a_garbage_commit_are_refused() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let mut watch = watch_signal(&relay).await;
    let call = "fake-joined";
    let a = group_member(&watch.url, &cfg, "ann", call, 12.0);
    let ta = tokio::spawn(async move { run_call(&a).await });
    watch.wait_for("joined", 1, Duration::from_secs(10)).await;
    let eve_token = token(&cfg, "eve", Some(call), "user");
    let mut eve = raw_join_with(&relay.signal_url(), &eve_token, call, true, E2eeScheme::Mls).await;
    eve.sig
        .send(&ClientMessage::MlsKeyPackage {
            blob: outsider_key_package("p-someone-else", "eve"),
        })
        .await
        .expect("send");
    let b = group_member(&relay.signal_url(), &cfg, "ben", call, 10.0);
    let tb = tokio::spawn(async move { run_call(&b).await });
    // ann adds ben (not eve): the commit reaches eve too, group id and epoch in clear.
    let Some(ServerMessage::MlsCommit { commit, epoch, .. }) = eve
        .wait_for(Duration::from_secs(10), |m| {
            matches!(m, ServerMessage::MlsCommit { .. })
        })
        .await
    else {
        panic!("no commit reached the waiting eve");
    };
    let raw = B64.decode(commit).expect("base64");
    let group_id = blindrelay_protocol::mls::parse_framing(&raw)
        .expect("framing")
        .group_id
        .to_vec();
    let next = epoch + 1;
    eve.sig
        .send(&ClientMessage::MlsJoined { epoch: next })
        .await
        .expect("send");
    let refused = eve
        .wait_for(Duration::from_secs(5), |m| {
            matches!(m, ServerMessage::Error { .. })
        })
        .await;
    assert!(refused.is_some(), "a fake mls_joined is refused");
    // A commit whose clear header is the group's and the current epoch's, garbage after.
    let mut bogus = vec![0, 1, 0, 1, group_id.len() as u8];
    bogus.extend_from_slice(&group_id);
    bogus.extend_from_slice(&next.to_be_bytes());
    bogus.extend_from_slice(&[
        1,
        0,
        0,
        0,
        0,
        0,
        blindrelay_protocol::mls::CONTENT_COMMIT,
        0xee,
        0xff,
    ]);
    eve.sig
        .send(&ClientMessage::MlsCommit {
            commit: B64.encode(&bogus),
            welcome: None,
        })
        .await
        .expect("send");
    let verdict = eve
        .wait_for(Duration::from_secs(5), |m| {
            matches!(
                m,
                ServerMessage::Error { .. } | ServerMessage::MlsCommitResult { .. }
            )
        })
        .await;
    assert!(
        matches!(verdict, Some(ServerMessage::Error { .. })),
        "the bogus commit is refused: {verdict:?}"
    );
    // The group goes on: a real joiner is keyed with both members.
    let c = group_member(&relay.signal_url(), &cfg, "cat", call, 5.0);
    let sc = run_call(&c).await;
    drop(eve);
    let (sa, sb) = (ta.await.expect("ann"), tb.await.expect("ben"));
    assert!(sc.e2ee && sc.error.is_none(), "cat keyed: {sc:?}");
    assert!(
        sc.frames_decrypted_from.len() >= 2,
        "{:?}",
        sc.frames_decrypted_from
    );
    assert_eq!(sc.group_members, ["ann", "ben", "cat"]);
    for s in [&sa, &sb] {
        assert!(s.error.is_none() && s.e2ee, "{s:?}");
    }
    assert!(sa.key_packages_refused_by.contains_key("not_the_sender"));
    let m = scrape(&relay).await;
    assert!(
        metric_or_zero(
            &m,
            "blindrelay_mls_refused_total{reason=\"join_without_welcome\"}"
        ) >= 1.0,
        "counted"
    );
    relay.shutdown().await;
}

/// Once an MLS call has held keys it stays E2EE whoever leaves: down to one member, it
/// still refuses an unencrypted joiner and a recording bot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_call_down_to_one_member_stays_encrypted() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let mut watch = watch_signal(&relay).await;
    let call = "after-keys";
    let a = group_member(&watch.url, &cfg, "ann", call, 8.0);
    let ta = tokio::spawn(async move { run_call(&a).await });
    watch.wait_for("joined", 1, Duration::from_secs(10)).await;
    let b = group_member(&relay.signal_url(), &cfg, "ben", call, 2.0);
    let sb = run_call(&b).await;
    assert!(sb.e2ee, "ben keyed with ann: {sb:?}");
    // ben has left: ann is alone in a call that held keys.
    watch
        .wait_for("participant_left", 1, Duration::from_secs(10))
        .await;
    let plain = CallOptions {
        e2ee: false,
        ..client(&relay.signal_url(), &cfg, "cal", call, 1.0)
    };
    let sp = run_call(&plain).await;
    assert_eq!(
        sp.error.as_ref().map(|e| e.code.as_str()),
        Some("e2ee_required"),
        "{sp:?}"
    );
    let bot = CallOptions {
        e2ee: false,
        token: token(&cfg, "rec", Some(call), "bot:recording"),
        bot: Some((e2ee_client::bot::BotKind::Recording, None)),
        ..client(&relay.signal_url(), &cfg, "rec", call, 1.0)
    };
    let sbot = run_call(&bot).await;
    assert_eq!(
        sbot.error.as_ref().map(|e| e.code.as_str()),
        Some("e2ee_call_refuses_bots"),
        "{sbot:?}"
    );
    let sa = ta.await.expect("ann");
    assert!(sa.error.is_none(), "{sa:?}");
    assert_eq!(
        sa.call_mode,
        Some(blindrelay_protocol::signal::CallMode::E2ee),
        "ann was never told the call is standard"
    );
    assert!(sa.downgrade_accepted.is_none() && sa.left_reason.is_none());
    relay.shutdown().await;
}

/// Identities the relay cannot mint. The relay holds the issuer's public key only: a token
/// signed by any other key, or HS256 under its own secret, is refused. Members hold the
/// issuer key too (`--issuer-key`) and identity keys their tokens bind (`cnf`): a
/// KeyPackage the relay makes itself, for a participant it announces itself, is refused
/// whether its credential carries no token or one the relay signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_issuer_keys_the_relay_cannot_mint_a_member() {
    use blindrelay_protocol::token::{issue_eddsa, now_secs, Claims, Cnf, Ed25519Secret};
    use e2ee_client::identity::IdentityKey;
    let fresh = || Ed25519Secret::from_seed(&rand::random::<[u8; 32]>());
    let issuer = fresh();
    let relays_own = fresh();
    let kid = "issuer-2026";
    let mut cfg = loopback_config();
    cfg.auth.issuer_public_keys = vec![blindrelay::config::IssuerKey::from_pem(
        kid,
        &blindrelay_protocol::token::public_pem(issuer.public()).expect("pem"),
    )
    .expect("issuer key")];
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let call = "issued";
    let mint = |signer: &Ed25519Secret, user: &str, bound: &[u8; 32]| {
        let mut c = Claims::new(
            user,
            "tenant-a",
            "user",
            Some(call),
            now_secs(),
            Duration::from_secs(600),
        );
        c.cnf = Some(Cnf::ed25519(bound));
        issue_eddsa(signer, kid, &c).expect("token")
    };
    // The relay checks tokens but cannot mint them.
    let someone = fresh();
    for (what, tok) in [
        (
            "signed by another key",
            mint(&relays_own, "mallory", someone.public()),
        ),
        (
            "HS256 under the relay's secret",
            token(&cfg, "mallory", Some(call), "user"),
        ),
    ] {
        let mut sig = e2ee_client::signal::Signal::connect(&relay.signal_url())
            .await
            .expect("connect");
        sig.send(&ClientMessage::Hello { token: tok })
            .await
            .expect("hello");
        match sig.recv().await {
            Ok(ServerMessage::Error { code, .. }) => {
                assert_eq!(code.as_str(), "unauthorized", "{what}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    let member = |user: &str, key: &Ed25519Secret, url: &str, secs: f64| CallOptions {
        token: mint(&issuer, user, key.public()),
        identity_key: Some(IdentityKey {
            seed: zeroize_seed(key),
            public: *key.public(),
        }),
        issuer_keys: vec![*issuer.public()],
        ..group_member(url, &cfg, user, call, secs)
    };
    let mut liar = Liar::start(&relay, Box::new(|_, _, _| true)).await;
    let (ka, kb) = (fresh(), fresh());
    let a = member("ann", &ka, &liar.url, 8.0);
    let ta = tokio::spawn(async move { run_call(&a).await });
    liar.wait(Duration::from_secs(10), "ann joined", |s| {
        Liar::count(s, 0, Dir::Down, "joined") == 1
    })
    .await;
    let b = member("ben", &kb, &liar.url, 6.0);
    let tb = tokio::spawn(async move { run_call(&b).await });
    liar.wait(Duration::from_secs(10), "ben in the group", |s| {
        Liar::count(s, 1, Dir::Up, "mls_joined") == 1
    })
    .await;
    // The relay announces a participant of its own and brings its KeyPackages.
    let evil = fresh();
    liar.inject(
        0,
        json!({"type": "participant_joined", "participant":
            {"participant": "p-evil", "user": "eve", "tenant": "tenant-a", "role": "user"}}),
    );
    for token in [None, Some(mint(&relays_own, "eve", evil.public()))] {
        let id = MemberIdentity {
            participant: "p-evil".into(),
            user: "eve".into(),
            token,
        };
        let m = GroupMember::with_key(id.to_bytes(), evil.seed(), evil.public()).expect("member");
        let blob = B64.encode(m.key_package().expect("key package"));
        liar.inject(
            0,
            json!({"type": "mls_key_package", "from": "p-evil", "blob": blob}),
        );
    }
    let (sa, sb) = (ta.await.expect("ann"), tb.await.expect("ben"));
    for s in [&sa, &sb] {
        assert!(s.error.is_none() && s.e2ee, "{s:?}");
        assert!(s.frames_decrypted > 0);
    }
    // ben leaves first, with both in the group; ann ends alone after removing him.
    assert_eq!(sb.group_members, ["ann", "ben"]);
    assert_eq!(sa.group_members, ["ann"]);
    assert_eq!(
        sa.key_packages_refused_by.get("unverified"),
        Some(&2),
        "{:?}",
        sa.key_packages_refused_by
    );
    relay.shutdown().await;
}

fn zeroize_seed(k: &blindrelay_protocol::token::Ed25519Secret) -> zeroize::Zeroizing<[u8; 32]> {
    zeroize::Zeroizing::new(*k.seed())
}
