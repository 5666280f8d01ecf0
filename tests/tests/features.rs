//! Call features: refused on an E2EE call (counted per feature), carried out for real on a
//! standard call by the relay's call control.

use blindrelay::RelayOptions;
use blindrelay_protocol::signal::{ClientMessage, ServerMessage};
use blindrelay_tests::*;
use e2ee_client::bot::BotKind;
use e2ee_client::call::{run_call, CallOptions, CallSummary};
use e2ee_client::signal::Signal;
use std::time::Duration;
use tokio::task::JoinHandle;

const ALL: [&str; 8] = [
    "add_participant",
    "transfer",
    "consult_transfer",
    "merge",
    "park",
    "record",
    "live_captions",
    "transcription",
];

fn person(url: &str, cfg: &blindrelay::config::Config, user: &str, call: &str) -> CallOptions {
    CallOptions {
        relay: url.into(),
        token: token(cfg, user, Some(call), "user"),
        call: call.into(),
        duration: Duration::from_millis(2500),
        video_kbps: 200,
        name: user.into(),
        ..Default::default()
    }
}

fn spawn(o: CallOptions) -> JoinHandle<CallSummary> {
    tokio::spawn(async move { run_call(&o).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_feature_is_refused_on_an_e2ee_call() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let mut a = person(&url, &cfg, "alice", "e");
    a.e2ee = true;
    a.features = ALL.iter().map(|f| format!("{f}=someone")).collect();
    let mut b = person(&url, &cfg, "bob", "e");
    b.e2ee = true;
    let (sa, sb) = tokio::join!(run_call(&a), run_call(&b));
    assert!(sa.e2ee && sb.e2ee);
    assert_eq!(sa.features.len(), ALL.len(), "{:?}", sa.features);
    for f in &sa.features {
        assert!(!f.ok);
        assert_eq!(
            f.code.as_deref(),
            Some("feature_unavailable_in_e2ee_call"),
            "{f:?}"
        );
    }
    let m = scrape(&relay).await;
    for f in ALL {
        assert_eq!(
            metric(
                &m,
                &format!("blindrelay_features_refused_total{{feature=\"{f}\"}}")
            ),
            1.0,
            "{f}"
        );
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_participant_transfer_and_consult_transfer() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    // Invitees wait in the lobby; their tokens name another call, the invitation admits them.
    // The relay puts a connection in the lobby before it answers its hello: once the three
    // have their `capabilities`, they can be invited.
    let mut lobby = watch_signal(&relay).await;
    let mut waiters = Vec::new();
    for who in ["carol", "dave", "erin"] {
        let mut o = person(&lobby.url, &cfg, who, "somewhere-else");
        o.wait_invite = true;
        o.duration = Duration::from_secs(3);
        waiters.push(spawn(o));
    }
    lobby
        .wait_for("capabilities", 3, Duration::from_secs(10))
        .await;
    let mut a1 = person(&url, &cfg, "alice", "c1");
    a1.features = vec!["add_participant=carol".into()];
    let mut a2 = person(&url, &cfg, "alice2", "c2");
    a2.features = vec!["transfer=dave".into()];
    let mut a3 = person(&url, &cfg, "alice3", "c3");
    a3.features = vec!["consult_transfer=erin".into()];
    let bobs: Vec<_> = ["c1", "c2", "c3"]
        .iter()
        .map(|c| spawn(person(&url, &cfg, &format!("bob-{c}"), c)))
        .collect();
    let alices: Vec<_> = [a1, a2, a3].into_iter().map(spawn).collect();
    let mut sa = Vec::new();
    for h in alices {
        sa.push(h.await.expect("alice"));
    }
    let mut sw = Vec::new();
    for h in waiters {
        sw.push(h.await.expect("waiter"));
    }
    let mut sb = Vec::new();
    for h in bobs {
        sb.push(h.await.expect("bob"));
    }
    // add_participant: carol joined c1 and exchanged media; alice stayed.
    assert!(sa[0].features[0].ok, "{:?}", sa[0].features);
    assert_eq!(
        sw[0].invited.as_ref().map(|i| (i.0.as_str(), i.2.as_str())),
        Some(("c1", "add_participant"))
    );
    assert!(
        sw[0].frames_verified > 10 && sw[0].streams_received >= 4,
        "carol hears alice and bob: {:?}",
        sw[0].streams_received
    );
    assert_eq!(sa[0].ended, None);
    // transfer: alice2 handed over at once; dave talks with bob.
    assert!(sa[1].features[0].ok);
    assert_eq!(sa[1].ended.as_deref(), Some("transferred"));
    assert_eq!(sw[1].invited.as_ref().map(|i| i.0.as_str()), Some("c2"));
    assert!(sw[1].frames_verified > 10);
    assert!(sb[1]
        .peers_left
        .iter()
        .any(|p| Some(p) == sa[1].participant.as_ref()));
    // consult_transfer: alice3 left once erin joined.
    assert!(sa[2].features[0].ok);
    assert_eq!(sa[2].ended.as_deref(), Some("transferred"));
    assert!(sw[2].frames_verified > 10);
    // Nobody online under that name: a clear answer.
    let mut lonely = person(&url, &cfg, "zed", "c9");
    lonely.features = vec!["add_participant=nobody".into()];
    lonely.duration = Duration::from_millis(500);
    let s = run_call(&lonely).await;
    assert!(
        !s.features[0].ok
            && s.features[0]
                .detail
                .as_deref()
                .unwrap_or("")
                .contains("not online")
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_park_retrieve_and_bots_brought_in() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    // Bots wait to be brought in (in the lobby once they have their `capabilities`).
    let mut lobby = watch_signal(&relay).await;
    let mut bots = Vec::new();
    for kind in [
        BotKind::Recording,
        BotKind::Captions,
        BotKind::Transcription,
    ] {
        let out = std::env::temp_dir().join(format!(
            "feature-rec-{}-{:?}.rtpdump",
            std::process::id(),
            kind
        ));
        bots.push(spawn(CallOptions {
            relay: lobby.url.clone(),
            token: token(&cfg, kind.role(), Some("nowhere"), kind.role()),
            duration: Duration::from_secs(3),
            audio: false,
            video: false,
            bot: Some((kind, Some(out))),
            wait_invite: true,
            ..Default::default()
        }));
    }
    lobby
        .wait_for("capabilities", 3, Duration::from_secs(10))
        .await;
    // Call m2 (carol, dave) merges into m1 (alice, bob); alice also brings in the bots.
    let mut joiners = watch_signal(&relay).await;
    let joiners_url = joiners.url.clone();
    let any = |user: &str, call: &str| CallOptions {
        token: token(&cfg, user, None, "user"),
        ..person(&joiners_url, &cfg, user, call)
    };
    let carol = spawn(any("carol", "m2"));
    let dave = spawn(any("dave", "m2"));
    let bob = spawn(any("bob", "m1"));
    // Only a participant of both calls may merge them: alice is in m2 too, on a second
    // session (see `merge_is_refused_alike_and_moves_no_one` for everyone else).
    let alice_in_m2 = spawn(any("alice", "m2"));
    // Both calls exist before alice asks to merge them.
    joiners.wait_for("joined", 4, Duration::from_secs(10)).await;
    let mut a = any("alice", "m1");
    a.features = vec![
        "merge=m2".into(),
        "record".into(),
        "live_captions".into(),
        "transcription".into(),
    ];
    let sa = run_call(&a).await;
    let (sc, _sd, _sb, _sa2) = (
        carol.await.expect("carol"),
        dave.await.expect("dave"),
        bob.await.expect("bob"),
        alice_in_m2.await.expect("alice in m2"),
    );
    assert!(sa.features.iter().all(|f| f.ok), "{:?}", sa.features);
    assert!(
        sa.streams_received >= 6,
        "alice hears bob, carol and dave: {}",
        sa.streams_received
    );
    assert!(
        sc.streams_received >= 6,
        "carol hears alice, bob and dave: {}",
        sc.streams_received
    );
    for b in bots {
        let s = b.await.expect("bot");
        assert!(
            s.joined && s.invited.is_some() && s.frames_received > 5,
            "{:?} {:?}",
            s.invited,
            s.error
        );
    }

    // Park: alice parks, frank retrieves with the code and is in the call with bob.
    let mut bob_sig = watch_signal(&relay).await;
    let bob = spawn(person(&bob_sig.url, &cfg, "bob", "p1"));
    // bob is in p1 before alice joins and parks it (parking an empty call leaves nothing).
    bob_sig.wait_for("joined", 1, Duration::from_secs(10)).await;
    let mut a = person(&url, &cfg, "alice", "p1");
    a.features = vec!["park".into()];
    let sa = run_call(&a).await;
    assert_eq!(sa.ended.as_deref(), Some("parked"));
    let code = sa.features[0].detail.clone().expect("pickup code");
    assert_eq!(code.len(), 6);
    let mut frank = Signal::connect(&url).await.expect("connect");
    frank
        .send(&ClientMessage::Hello {
            token: token(&cfg, "frank", Some("elsewhere"), "user"),
        })
        .await
        .expect("send");
    let _ = frank.recv().await;
    frank
        .send(&ClientMessage::Feature {
            name: "retrieve".into(),
            arg: Some("000000x".into()),
        })
        .await
        .expect("send");
    assert!(matches!(
        frank.recv().await.expect("reply"),
        ServerMessage::FeatureResult { ok: false, .. }
    ));
    frank
        .send(&ClientMessage::Feature {
            name: "retrieve".into(),
            arg: Some(code.clone()),
        })
        .await
        .expect("send");
    let mut got_invite = None;
    for _ in 0..3 {
        match frank.recv().await.expect("reply") {
            ServerMessage::Invite { call, reason, .. } => got_invite = Some((call, reason)),
            ServerMessage::FeatureResult { ok, .. } => assert!(ok),
            m => panic!("{m:?}"),
        }
        if got_invite.is_some() {
            break;
        }
    }
    assert_eq!(got_invite, Some(("p1".into(), "retrieve".into())));
    let offer = blindrelay_protocol::sdp::build_offer(&blindrelay_protocol::sdp::OfferParams {
        ice_ufrag: "frnk",
        ice_pwd: "0123456789012345678901",
        fingerprint: blindrelay_transport::DtlsIdentity::generate()
            .expect("id")
            .fingerprint(),
        audio_ssrc: 7,
        video_ssrc: 8,
        cname: "f",
        session_id: 1,
    });
    frank
        .send(&ClientMessage::Join {
            call: "p1".into(),
            e2ee_enabled: false,
            offer_sdp: offer,
            e2ee_scheme: Default::default(),
        })
        .await
        .expect("send");
    match frank.recv().await.expect("joined") {
        ServerMessage::Joined { participants, .. } => {
            assert!(participants.iter().any(|p| p.user == "bob"))
        }
        m => panic!("{m:?}"),
    }
    let _ = bob.await;
    relay.shutdown().await;
}

/// A merge by someone not in the other call is refused with one answer whether that call
/// exists or not, and moves no one: a token without a `call` claim (it may merge only calls
/// its identity is in), and the same user name in another tenant (not the same identity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_is_refused_alike_and_moves_no_one() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    // The victims: carol and dave in call v, sending and receiving media throughout.
    let mut victims = watch_signal(&relay).await;
    let victim = |user: &str| CallOptions {
        duration: Duration::from_secs(5),
        ..person(&victims.url, &cfg, user, "v")
    };
    let carol = spawn(victim("carol"));
    let dave = spawn(victim("dave"));
    victims.wait_for("joined", 2, Duration::from_secs(10)).await;
    // Mallory: no call claim, tenant-a, in her own call m. Carol of tenant-b (the
    // victim's user name, another identity) in call w.
    let mallory = token(&cfg, "mallory", None, "user");
    let other_tenant = blindrelay::token::issue(
        &cfg.auth.api_secret,
        "carol",
        "tenant-b",
        "user",
        None,
        Duration::from_secs(600),
    )
    .expect("token");
    let mut attempts = Vec::new();
    // Kept open: the attackers stay in their calls while the victims run.
    let mut attackers = Vec::new();
    for (tok, call) in [(&mallory, "m"), (&other_tenant, "w")] {
        let mut sig = raw_join(&url, tok, call).await.sig;
        for other in ["v", "no-such-call"] {
            sig.send(&ClientMessage::Feature {
                name: "merge".into(),
                arg: Some(other.into()),
            })
            .await
            .expect("send");
            let reply = loop {
                match next_reply(&mut sig).await {
                    ServerMessage::FeatureResult { ok, detail, .. } => break (ok, detail),
                    ServerMessage::Offer { .. } => continue,
                    m => panic!("expected the merge's result, got {m:?}"),
                }
            };
            attempts.push((call, other, reply));
        }
        attackers.push(sig);
    }
    for (call, other, reply) in &attempts {
        assert_eq!(
            reply,
            &(
                false,
                Some("merge_refused: you can only merge calls you are in".to_string())
            ),
            "merge of {other} into {call}"
        );
    }
    // Three standard calls (v, m, w) with four people: nobody moved.
    let m = scrape(&relay).await;
    assert_eq!(metric(&m, "blindrelay_calls{mode=\"standard\"}"), 3.0);
    assert_eq!(metric(&m, "blindrelay_participants{role=\"user\"}"), 4.0);
    let (sc, sd) = (carol.await.expect("carol"), dave.await.expect("dave"));
    for s in [&sc, &sd] {
        assert!(s.error.is_none() && s.left_reason.is_none(), "{s:?}");
        assert!(
            s.streams_received >= 2 && s.frames_received > 10,
            "the victims kept each other's media: {} streams, {} frames",
            s.streams_received,
            s.frames_received
        );
    }
    // Carol heard of dave only (and dave of nobody): no attacker was ever with them.
    assert_eq!(victims.count("participant_joined"), 1);
    drop(attackers);
    relay.shutdown().await;
}
