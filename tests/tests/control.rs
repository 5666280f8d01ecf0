//! The control plane under attack, on a real relay on loopback: ghosts left by refused
//! joins, a slow reader flooded with chat, silent and slowloris connections, connection
//! caps, and 200 pairs joining at once. Each test also checks that legitimate clients
//! are still served.

use blindrelay::config::Config;
use blindrelay::RelayOptions;
use blindrelay_protocol::signal::{ClientMessage, ErrorCode, ServerMessage};
use blindrelay_tests::*;
use blindrelay_transport::DtlsIdentity;
use e2ee_client::call::{run_call, CallOptions};
use e2ee_client::signal::Signal;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn call_opts(url: &str, cfg: &Config, user: &str, call: &str) -> CallOptions {
    CallOptions {
        relay: url.to_string(),
        token: token(cfg, user, Some(call), "user"),
        call: call.into(),
        duration: Duration::from_secs(3),
        video_kbps: 300,
        name: user.into(),
        e2ee: true,
        ..Default::default()
    }
}

/// A join that is refused, or a connection that joins, leaves and joins again, leaves no
/// participant behind: the next two-party E2EE call on that call id keys and decrypts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_repeated_joins_leave_no_ghost() {
    let mut cfg = loopback_config();
    cfg.signal.messages_per_second = 100_000;
    cfg.signal.message_burst = 100_000;
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let id = DtlsIdentity::generate().expect("identity");
    let mut sig = hello(&url, &token(&cfg, "mallory", Some("ghost"), "user")).await;
    for round in 0..3 {
        sig.send(&ClientMessage::Join {
            call: "ghost".into(),
            e2ee_enabled: round % 2 == 0,
            offer_sdp: offer(&id, "ghostufrag", round),
            e2ee_scheme: Default::default(),
        })
        .await
        .expect("join");
        match next_reply(&mut sig).await {
            ServerMessage::Joined { .. } => {}
            m => panic!("round {round}: expected joined, got {m:?}"),
        }
        sig.send(&ClientMessage::Leave).await.expect("leave");
    }
    // Thousands of refused joins on the same connection.
    for _ in 0..2000 {
        sig.send(&ClientMessage::Join {
            call: "not-my-call".into(),
            e2ee_enabled: false,
            offer_sdp: offer(&id, "ghostufrag", 9),
            e2ee_scheme: Default::default(),
        })
        .await
        .expect("join");
    }
    let mut refused = 0;
    while refused < 2000 {
        match next_reply(&mut sig).await {
            ServerMessage::Error {
                code: ErrorCode::WrongCall,
                ..
            } => refused += 1,
            m => panic!("expected wrong_call, got {m:?}"),
        }
    }
    let m = scrape(&relay).await;
    assert_eq!(metric(&m, "blindrelay_participants{role=\"user\"}"), 0.0);
    assert_eq!(metric(&m, "blindrelay_calls{mode=\"e2ee\"}"), 0.0);
    assert_eq!(metric(&m, "blindrelay_calls{mode=\"standard\"}"), 0.0);
    assert_eq!(metric(&m, "blindrelay_joins_total{result=\"ok\"}"), 3.0);
    assert_eq!(
        metric(&m, "blindrelay_joins_total{result=\"wrong_call\"}"),
        2000.0
    );
    // mallory is still connected, in the lobby: the E2EE call between alice and bob is
    // one-to-one and encrypted.
    let a = call_opts(&url, &cfg, "alice", "ghost");
    let b = call_opts(&url, &cfg, "bob", "ghost");
    let (sa, sb) = tokio::join!(run_call(&a), run_call(&b));
    for (name, s) in [("alice", &sa), ("bob", &sb)] {
        assert!(s.error.is_none(), "{name}: {:?}", s.error);
        assert_eq!(
            s.call_mode.map(|m| m.as_str()),
            Some("e2ee"),
            "{name}'s call mode"
        );
        assert!(s.frames_decrypted > 10, "{name}: {}", s.frames_decrypted);
        assert_eq!(s.decrypt_failures, 0, "{name}");
    }
    assert!(sa.verification_code.is_some());
    assert_eq!(sa.verification_code, sb.verification_code);
    drop(sig);
    relay.shutdown().await;
}

/// Connections that never say hello, slowloris upgrades and silent TCP connections are all
/// closed by the timeouts, while a real call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slowloris_connections_are_closed() {
    let mut cfg = loopback_config();
    cfg.signal.hello_timeout = Duration::from_secs(1);
    cfg.signal.header_read_timeout = Duration::from_secs(1);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let addr = relay.signal_addr;
    let mut silent_ws = Vec::new();
    for _ in 0..200 {
        silent_ws.push(Signal::connect(&url).await.expect("connects"));
    }
    let mut slowloris = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(addr).await.expect("tcp");
        s.write_all(b"GET /v1/signal HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            .await
            .expect("partial headers");
        slowloris.push(s);
    }
    let mut raw = Vec::new();
    for _ in 0..300 {
        raw.push(TcpStream::connect(addr).await.expect("tcp"));
    }
    // A legitimate call meanwhile (its hello comes at once).
    let a = call_opts(&url, &cfg, "alice", "legit");
    let b = call_opts(&url, &cfg, "bob", "legit");
    let (sa, sb) = tokio::join!(run_call(&a), run_call(&b));
    for (name, s) in [("alice", &sa), ("bob", &sb)] {
        assert!(s.error.is_none(), "{name}: {:?}", s.error);
        assert!(s.frames_decrypted > 10, "{name}: {}", s.frames_decrypted);
    }
    let m = await_metrics(&relay, Duration::from_secs(20), "idle closed", |m| {
        metric(m, "blindrelay_signalling_connections") == 0.0
    })
    .await;
    assert_eq!(
        metric(
            &m,
            "blindrelay_signalling_closed_total{reason=\"hello_timeout\"}"
        ),
        200.0
    );
    assert_eq!(
        metric(
            &m,
            "blindrelay_signalling_closed_total{reason=\"header_timeout\"}"
        ),
        400.0
    );
    // Every one of them sees its connection closed by the relay.
    for mut s in silent_ws {
        match next_reply(&mut s).await {
            ServerMessage::Error {
                code: ErrorCode::HelloTimeout,
                ..
            } => {}
            m => panic!("expected hello_timeout, got {m:?}"),
        }
        assert!(s.recv().await.is_err(), "closed after the error");
    }
    for mut s in slowloris.into_iter().chain(raw) {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        // hyper may answer 408 before it closes; then EOF follows.
        if n > 0 {
            let rest = s.read(&mut buf).await.unwrap_or(0);
            assert_eq!(rest, 0, "closed after its answer");
        }
    }
    relay.shutdown().await;
}

/// Connections over the caps are refused at accept, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_refuse_and_count() {
    let mut cfg = loopback_config();
    cfg.signal.max_connections_per_source = 5;
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(hello(&url, &token(&cfg, "a", None, "user")).await);
    }
    assert!(
        Signal::connect(&url).await.is_err(),
        "a sixth connection from one source is refused"
    );
    let m = scrape(&relay).await;
    assert_eq!(
        metric(
            &m,
            "blindrelay_signalling_refused_total{reason=\"too_many_from_source\"}"
        ),
        1.0
    );
    // A closed connection frees its place.
    held.pop().expect("five").close().await;
    await_metrics(&relay, Duration::from_secs(10), "slot freed", |m| {
        metric(m, "blindrelay_signalling_connections") == 4.0
    })
    .await;
    hello(&url, &token(&cfg, "a", None, "user")).await;
    relay.shutdown().await;
}

/// 200 pairs join at once: every first joiner hears of its partner, and all 400 finish
/// ICE and DTLS with the relay (their hop keys); no event is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_pairs_join_at_once() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let mut pairs = Vec::new();
    for i in 0..200 {
        let call = format!("pair-{i}");
        let (url, ta, tb) = (
            url.clone(),
            token(&cfg, &format!("a{i}"), Some(&call), "user"),
            token(&cfg, &format!("b{i}"), Some(&call), "user"),
        );
        let c2 = call.clone();
        let u2 = url.clone();
        pairs.push(tokio::spawn(async move {
            let (a, b) = tokio::join!(raw_join(&url, &ta, &call), raw_join(&u2, &tb, &c2));
            (a, b)
        }));
    }
    let mut joined = Vec::new();
    for p in pairs {
        joined.push(p.await.expect("pair task"));
    }
    // Whoever joined second was told of the first in `joined`; the first must hear of
    // the second.
    for (i, (a, b)) in joined.iter_mut().enumerate() {
        let is_joined = |m: &ServerMessage| matches!(m, ServerMessage::ParticipantJoined { .. });
        let heard = tokio::select! {
            m = a.wait_for(Duration::from_secs(10), is_joined) => m,
            m = b.wait_for(Duration::from_secs(10), is_joined) => m,
        };
        assert!(heard.is_some(), "pair {i}: participant_joined lost");
    }
    let mut paths = Vec::new();
    for (a, b) in &joined {
        let (pa, pb) = tokio::join!(a.connect(), b.connect());
        paths.push(pa.expect("a connects"));
        paths.push(pb.expect("b connects"));
    }
    let m = await_metrics(&relay, Duration::from_secs(30), "400 keyed", |m| {
        metric(m, "blindrelay_join_duration_seconds_count") >= 400.0
    })
    .await;
    assert_eq!(
        metric(&m, "blindrelay_dtls_handshakes_total{result=\"ok\"}"),
        400.0
    );
    assert_eq!(metric(&m, "blindrelay_participants{role=\"user\"}"), 400.0);
    assert_eq!(metric(&m, "blindrelay_calls{mode=\"standard\"}"), 200.0);
    relay.shutdown().await;
}
