//! A man in the middle on the signalling path (a WebSocket proxy between each client and
//! the relay, standing in for a malicious relay operator) tries to swap the key-agreement
//! keys. It must end in different verification codes or an aborted setup, never in a
//! silently intercepted call.

use blindrelay::RelayOptions;
use blindrelay_tests::*;
use e2ee_client::call::{run_call, CallOptions, CallSummary};
use e2ee_client::kex::{KexMessage, KeyAgreement};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// What the interceptor does to key-agreement blobs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attack {
    /// Run one key agreement with each side, posing as the other.
    FullSwap,
    /// Let the exchange through but replace the key in the revealed public key (after the
    /// commitment was made).
    SwapReveal,
    /// Change nothing; record every blob, chat body and participant id (a passive observer).
    Passive,
    /// Pretend a recording bot is in the call and offers key agreement (a relay that
    /// admitted a bot): the client must never answer it.
    FakeBot,
}

#[derive(Default)]
struct Mallory {
    call: String,
    /// (participant id, channel to inject messages towards that client)
    sides: Vec<(String, mpsc::UnboundedSender<String>)>,
    /// Per side index: Mallory's key agreement with that client, posing as the other.
    sessions: Vec<Option<KeyAgreement>>,
    /// Passive: (sender id, blob) of every key-agreement message seen, and the ids.
    observed: Vec<(String, String)>,
    chats: Vec<String>,
    ids: Vec<String>,
}

impl Mallory {
    fn other(&self, i: usize) -> Option<&(String, mpsc::UnboundedSender<String>)> {
        self.sides.get(1 - i)
    }

    /// Both clients are in the call: start one agreement per side.
    fn start(&mut self) {
        if self.sides.len() != 2 || !self.sessions.is_empty() {
            return;
        }
        for i in 0..2 {
            let (me_id, tx) = &self.sides[i];
            let posing_as = &self.sides[1 - i].0;
            let mut k = KeyAgreement::new(&self.call, posing_as, me_id).expect("mallory kex");
            if let Some(first) = k.start() {
                let _ = tx.send(
                    json!({"type":"e2ee","from":posing_as,"blob":first.to_blob()}).to_string(),
                );
            }
            self.sessions.push(Some(k));
        }
    }

    /// A blob client `i` sent to the other: answer it with Mallory's own session.
    fn intercept(&mut self, i: usize, blob: &str) {
        // A client may commit before Mallory's delayed start.
        self.start();
        let Some((other_id, _)) = self.other(i).cloned() else {
            return;
        };
        let tx = self.sides[i].1.clone();
        if let Some(Some(k)) = self.sessions.get_mut(i) {
            if let Ok(Some(reply)) = k.handle_blob(blob) {
                let _ = tx.send(json!({"type":"e2ee","from":other_id,"blob":reply}).to_string());
            }
        }
    }
}

/// Start a proxy in front of `upstream`; returns its URL.
async fn proxy(upstream: String, attack: Attack, mallory: Arc<Mutex<Mallory>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let mallory = mallory.clone();
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
                let (inject_tx, mut inject_rx) = mpsc::unbounded_channel::<String>();
                let mut side: Option<usize> = None;
                loop {
                    tokio::select! {
                        m = c_rx.next() => {
                            let Some(Ok(Message::Text(t))) = m else { break };
                            let mut v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                            if v["type"] == "chat" {
                                mallory.lock().expect("lock").chats.push(v["body"].as_str().unwrap_or("").to_string());
                            }
                            if v["type"] == "e2ee" {
                                match attack {
                                    Attack::FullSwap => {
                                        if let Some(i) = side {
                                            mallory.lock().expect("lock").intercept(i, v["blob"].as_str().unwrap_or(""));
                                        }
                                        continue;
                                    }
                                    Attack::FakeBot => {
                                        mallory.lock().expect("lock").observed.push((v["to"].as_str().unwrap_or("").to_string(), String::new()));
                                    }
                                    Attack::Passive => {
                                        let mut mal = mallory.lock().expect("lock");
                                        let from = side.and_then(|i| mal.ids.get(i).cloned()).unwrap_or_default();
                                        mal.observed.push((from, v["blob"].as_str().unwrap_or("").to_string()));
                                    }
                                    Attack::SwapReveal => {
                                        if let Ok(mut msg) = KexMessage::from_blob(v["blob"].as_str().unwrap_or("")) {
                                            if msg.kind() == "reveal" {
                                                if let Some(k) = msg.public_key_mut() {
                                                    *k = x25519_public_of_random();
                                                }
                                                v["blob"] = Value::String(msg.to_blob());
                                            }
                                        }
                                    }
                                }
                            }
                            if r_tx.send(Message::Text(v.to_string().into())).await.is_err() { break }
                        }
                        m = r_rx.next() => {
                            let Some(Ok(Message::Text(t))) = m else { break };
                            let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                            if c_tx.send(Message::Text(t)).await.is_err() { break }
                            if attack == Attack::FakeBot && v["type"] == "joined" {
                                let bot = json!({"participant": "p-bot", "user": "recorder", "tenant": "tenant-a", "role": "bot:recording"});
                                let _ = inject_tx.send(json!({"type": "participant_joined", "participant": bot}).to_string());
                                let mut k = KeyAgreement::new("demo", "p-0", v["participant"].as_str().unwrap_or("")).expect("kex");
                                if let Some(first) = k.start() {
                                    let _ = inject_tx.send(json!({"type": "e2ee", "from": "p-bot", "blob": first.to_blob()}).to_string());
                                }
                            }
                            if attack == Attack::Passive && v["type"] == "joined" {
                                let mut mal = mallory.lock().expect("lock");
                                side = Some(mal.ids.len());
                                mal.ids.push(v["participant"].as_str().unwrap_or("").to_string());
                            }
                            if attack == Attack::FullSwap && v["type"] == "joined" {
                                let mut mal = mallory.lock().expect("lock");
                                side = Some(mal.sides.len());
                                mal.sides.push((v["participant"].as_str().unwrap_or("").to_string(), inject_tx.clone()));
                                if mal.sides.len() == 2 {
                                    // The second joiner's peer already knows it once this
                                    // reply has passed; inject after a beat so the first
                                    // client has seen participant_joined.
                                    drop(mal);
                                    let m2 = mallory.clone();
                                    tokio::spawn(async move {
                                        tokio::time::sleep(Duration::from_millis(100)).await;
                                        m2.lock().expect("lock").start();
                                    });
                                }
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
    format!("ws://{addr}/v1/signal")
}

fn x25519_public_of_random() -> [u8; 32] {
    let secret = x25519_dalek::EphemeralSecret::random();
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

async fn attacked_call(attack: Attack) -> (CallSummary, CallSummary) {
    let (a, b, _) = attacked_call_with(attack, RelayOptions::default()).await;
    (a, b)
}

async fn attacked_call_with(
    attack: Attack,
    options: RelayOptions,
) -> (CallSummary, CallSummary, Arc<Mutex<Mallory>>) {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), options).await;
    let mallory = Arc::new(Mutex::new(Mallory {
        call: "demo".into(),
        ..Default::default()
    }));
    let url = proxy(relay.signal_url(), attack, mallory.clone()).await;
    let mk = |user: &str| CallOptions {
        relay: url.clone(),
        token: token(&cfg, user, Some("demo"), "user"),
        call: "demo".into(),
        duration: Duration::from_secs(2),
        e2ee: true,
        video_kbps: 300,
        name: user.into(),
        chat: Some(format!("secret chat from {user}")),
        ..Default::default()
    };
    let (a, b) = (mk("alice"), mk("bob"));
    let (sa, sb) = tokio::join!(run_call(&a), run_call(&b));
    relay.shutdown().await;
    (sa, sb, mallory)
}

/// A passive observer of the signalling and of everything the relay forwards, doing its
/// best with what it saw (its own key agreements fed the honest messages), cannot open a
/// single frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_observer_cannot_open_a_single_frame() {
    let seen = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let s2 = seen.clone();
    let tap: blindrelay::core::forward::MediaTap =
        Arc::new(move |p: &blindrelay::core::forward::TapPacket<'_>| {
            s2.lock().expect("tap").push(p.data.to_vec());
        });
    let (a, b, mallory) =
        attacked_call_with(Attack::Passive, RelayOptions { tap: Some(tap) }).await;
    assert!(
        a.verification_code.is_some() && a.verification_code == b.verification_code,
        "honest call keyed alike"
    );
    assert!(a.frames_decrypted > 10 && b.frames_decrypted > 10);
    let mal = mallory.lock().expect("lock");
    assert_eq!(mal.ids.len(), 2);
    assert!(
        mal.observed.len() >= 3,
        "saw commit, public and reveal: {}",
        mal.observed.len()
    );
    // Mallory plays each role against the messages it saw, with its own ephemeral keys.
    let mut candidate_keys: Vec<Vec<u8>> = Vec::new();
    for (me, peer) in [(0, 1), (1, 0)] {
        let mut k = KeyAgreement::new("demo", &mal.ids[me], &mal.ids[peer]).expect("kex");
        let _ = k.start();
        for (from, blob) in &mal.observed {
            if *from == mal.ids[peer] {
                let _ = k.handle_blob(blob);
            }
        }
        if let Some(keys) = k.keys() {
            candidate_keys.push(keys.send_key.as_bytes().to_vec());
            candidate_keys.push(keys.recv_key.as_bytes().to_vec());
        }
    }
    assert!(
        candidate_keys.len() >= 2,
        "Mallory completed its own agreements"
    );
    let packets = seen.lock().expect("tap").clone();
    assert!(packets.len() > 100);
    let mut frames = Vec::new();
    let mut streams: std::collections::HashMap<u32, e2ee_client::media::StreamReceiver> =
        Default::default();
    for p in &packets {
        let h = blindrelay_protocol::rtp::RtpHeader::parse(p).expect("RTP");
        if let Some(f) =
            streams
                .entry(h.ssrc)
                .or_default()
                .push(h.sequence, h.timestamp, h.marker, h.payload(p))
        {
            frames.push(f);
        }
    }
    assert!(frames.len() > 50);
    let mut opened = 0;
    for key in &candidate_keys {
        for kid in 0..4u64 {
            let mut r = e2ee_client::sframe::Receiver::new();
            r.add_key(e2ee_client::sframe::CipherSuite::default(), kid, key);
            opened += frames.iter().filter(|f| r.open(&[], f).is_ok()).count();
        }
    }
    assert_eq!(opened, 0, "an observer opened frames");
    // Chat inside the E2EE call is sealed: the observer sees opaque blobs only.
    assert_eq!(mal.chats.len(), 2, "{:?}", mal.chats);
    for c in &mal.chats {
        assert!(c.starts_with("sframe:") && !c.contains("secret"), "{c}");
    }
    assert_eq!(a.chat_received, vec!["secret chat from bob".to_string()]);
}

/// Defence in depth: even if a relay admitted a bot into an E2EE call, the client never
/// runs key agreement with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_never_keys_a_bot_even_if_the_relay_admits_one() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let mallory = Arc::new(Mutex::new(Mallory {
        call: "demo".into(),
        ..Default::default()
    }));
    let url = proxy(relay.signal_url(), Attack::FakeBot, mallory.clone()).await;
    let a = CallOptions {
        relay: url,
        token: token(&cfg, "alice", Some("demo"), "user"),
        call: "demo".into(),
        duration: Duration::from_millis(1500),
        e2ee: true,
        ..Default::default()
    };
    let s = run_call(&a).await;
    assert!(s.joined && s.error.is_none(), "{:?}", s.error);
    assert!(!s.e2ee && s.verification_code.is_none(), "keyed with a bot");
    assert_eq!(s.sent_frames, 0, "no media without keys");
    let sent_to_bot = mallory
        .lock()
        .expect("lock")
        .observed
        .iter()
        .filter(|(to, _)| to == "p-bot")
        .count();
    assert_eq!(
        sent_to_bot, 0,
        "the client answered the bot's key agreement"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_key_swap_gives_different_codes_and_no_readable_media() {
    let (a, b) = attacked_call(Attack::FullSwap).await;
    let (ca, cb) = (a.verification_code.clone(), b.verification_code.clone());
    assert!(
        ca.is_some() && cb.is_some(),
        "both sides keyed (with Mallory): {a:?} {b:?}"
    );
    assert_ne!(
        ca, cb,
        "a man in the middle must show as different verification codes"
    );
    // Media goes through the relay untouched, keyed to Mallory's two different sessions:
    // neither side can open the other's frames.
    for s in [&a, &b] {
        assert!(
            s.frames_received > 10,
            "frames arrived: {}",
            s.frames_received
        );
        assert_eq!(s.frames_decrypted, 0);
        assert_eq!(s.decrypt_failures + s.frames_before_keys, s.frames_received);
        assert!(s.decrypt_failures > 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_the_revealed_key_after_the_commitment_aborts_setup() {
    let (a, b) = attacked_call(Attack::SwapReveal).await;
    // The responder sees a reveal that does not match the commitment.
    let errors: Vec<_> = [&a, &b]
        .iter()
        .filter_map(|s| s.e2ee_error.clone())
        .collect();
    assert_eq!(errors.len(), 1, "exactly the responder aborts: {errors:?}");
    assert!(
        errors[0].to_lowercase().contains("commit"),
        "clear error: {}",
        errors[0]
    );
    // No call was keyed on the responder side, so nothing was sent or opened there.
    let responder = if a.e2ee_error.is_some() { &a } else { &b };
    assert!(!responder.e2ee && responder.verification_code.is_none());
    assert_eq!(responder.frames_decrypted, 0);
    assert_eq!(responder.sent_frames, 0, "no media is sent without keys");
}

/// Without an interceptor the same setup keys both sides alike (the control for the two
/// tests above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_proxy_changes_nothing() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let mk = |user: &str| CallOptions {
        relay: url.clone(),
        token: token(&cfg, user, Some("demo"), "user"),
        call: "demo".into(),
        duration: Duration::from_secs(2),
        e2ee: true,
        video_kbps: 300,
        ..Default::default()
    };
    let (oa, ob) = (mk("alice"), mk("bob"));
    let (a, b) = tokio::join!(run_call(&oa), run_call(&ob));
    assert!(a.verification_code.is_some());
    assert_eq!(a.verification_code, b.verification_code);
    assert!(a.frames_decrypted > 10 && b.frames_decrypted > 10);
    relay.shutdown().await;
}
