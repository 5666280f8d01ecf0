//! Fan-out never punishes the receiver for a sender's traffic (issue 19), on a real relay:
//! one participant chats at the largest rate and size the relay allows for 30 s into a
//! call of three others who read at the pace of a modest link. The sender is
//! rate-limited and counted; every reader stays, and gets exactly what was accepted.

use blindrelay::RelayOptions;
use blindrelay_protocol::signal::{ClientMessage, ErrorCode, ServerMessage};
use blindrelay_tests::*;
use blindrelay_transport::DtlsIdentity;
use e2ee_client::signal::Signal;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};

/// How long the sender floods.
const FLOOD: Duration = Duration::from_secs(30);
/// The readers' link: 1 Mbit/s of signalling, twice the default broadcast rate.
const READ_BYTES_PER_SECOND: f64 = 125_000.0;

/// What one reader saw.
struct Read {
    chats: usize,
    bytes: usize,
    cut_off: Option<String>,
}

/// Read at `READ_BYTES_PER_SECOND` (each message is waited for, then the reader rests
/// as long as its link would take to carry it) until `flooder` leaves, or the relay
/// cuts this reader off.
async fn read_paced(mut sig: Signal, flooder: String) -> Read {
    let start = Instant::now();
    let mut r = Read {
        chats: 0,
        bytes: 0,
        cut_off: None,
    };
    loop {
        let m = match sig.recv().await {
            Ok(m) => m,
            Err(e) => {
                r.cut_off = Some(e.to_string());
                return r;
            }
        };
        r.bytes += serde_json::to_string(&m).expect("serializes").len();
        match m {
            ServerMessage::Chat { from, .. } => {
                assert_eq!(from, flooder);
                r.chats += 1;
            }
            ServerMessage::ParticipantLeft {
                participant,
                reason,
            } if participant == flooder => {
                assert_eq!(reason, "left");
                return r;
            }
            ServerMessage::ParticipantLeft {
                participant,
                reason,
            } => {
                r.cut_off = Some(format!("{participant} left: {reason}"));
                return r;
            }
            ServerMessage::Error { code, message } => panic!("reader got {code:?}: {message}"),
            // Renegotiations and events as the others joined.
            _ => {}
        }
        let due = start + Duration::from_secs_f64(r.bytes as f64 / READ_BYTES_PER_SECOND);
        tokio::time::sleep_until(due).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_flood_is_rate_limited_and_no_reader_is_cut_off() {
    let mut cfg = loopback_config();
    // These participants never set up media: keep them through the flood.
    cfg.ice.connect_timeout = Duration::from_secs(120);
    cfg.ice.consent_timeout = Duration::from_secs(120);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let id = DtlsIdentity::generate().expect("identity");
    let mut sigs = Vec::new();
    let mut ids = Vec::new();
    for (n, user) in ["flooder", "r1", "r2", "r3"].into_iter().enumerate() {
        let mut sig = hello(&url, &token(&cfg, user, Some("flood"), "user")).await;
        sig.send(&ClientMessage::Join {
            call: "flood".into(),
            e2ee_enabled: false,
            offer_sdp: offer(&id, "floodufrag", n as u32),
            e2ee_scheme: Default::default(),
        })
        .await
        .expect("join");
        let me = loop {
            if let ServerMessage::Joined { participant, .. } = next_reply(&mut sig).await {
                break participant;
            }
        };
        sigs.push(sig);
        ids.push(me);
    }
    let mut flooder = sigs.remove(0);
    let readers: Vec<_> = sigs
        .into_iter()
        .map(|s| tokio::spawn(read_paced(s, ids[0].clone())))
        .collect();

    // The largest chat, at the largest message rate, for 30 s; refusals are read as
    // they come (the flooder's own queue must not fill).
    let body = "x".repeat(cfg.signal.max_chat_bytes);
    let period = Duration::from_secs(1) / cfg.signal.messages_per_second;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let start = Instant::now();
    let end = start + FLOOD;
    let (mut sent, mut refused) = (0u64, 0u64);
    let mut on_reply = |m: ServerMessage| match m {
        ServerMessage::Error {
            code: ErrorCode::RateLimited,
            message,
        } => {
            assert!(message.contains("broadcast budget"), "{message}");
            refused += 1;
        }
        ServerMessage::Error { code, message } => panic!("flooder got {code:?}: {message}"),
        _ => {}
    };
    while Instant::now() < end {
        tick.tick().await;
        flooder
            .send(&ClientMessage::Chat { body: body.clone() })
            .await
            .expect("chat");
        sent += 1;
        // What has arrived, without waiting (`recv` is cancel-safe).
        while let Ok(m) = tokio::time::timeout(Duration::ZERO, flooder.recv()).await {
            on_reply(m.expect("the flooder stays connected"));
        }
    }
    let elapsed = start.elapsed();
    // A request answered after every refusal of the flood (one connection's replies
    // are in order).
    flooder
        .send(&ClientMessage::Feature {
            name: "record".into(),
            arg: None,
        })
        .await
        .expect("send");
    loop {
        match next_reply(&mut flooder).await {
            ServerMessage::FeatureResult { .. } => break,
            m => on_reply(m),
        }
    }
    let accepted = sent - refused;
    assert!(refused > 0, "the flooder was never limited ({sent} sent)");
    assert!(accepted > 0);
    // Within the budget: each chat cost its wire size times the 3 readers.
    let wire = serde_json::to_string(&ServerMessage::Chat {
        from: ids[0].clone(),
        body: body.clone(),
    })
    .expect("serializes")
    .len() as f64;
    let allowed = (cfg.signal.broadcast_burst_bytes as f64
        + cfg.signal.broadcast_bytes_per_second as f64 * elapsed.as_secs_f64())
        / (3.0 * wire);
    assert!(
        accepted as f64 <= allowed.floor() + 1.0,
        "{accepted} chats accepted, the budget allows {allowed:.1}"
    );
    // ... and close to it: the sender was held to the budget, not far below.
    assert!(
        accepted as f64 >= allowed * 0.9,
        "{accepted} chats accepted, the budget allows {allowed:.1}"
    );

    // Nobody was cut off, and every refusal was counted.
    let m = scrape(&relay).await;
    // No connection was closed at all (the family appears with the first close); the
    // participants' count and the readers' own view say the same.
    assert_eq!(
        series(
            &m,
            "blindrelay_signalling_closed_total{reason=\"slow_reader\"}"
        ),
        None
    );
    assert_eq!(metric(&m, "blindrelay_participants{role=\"user\"}"), 4.0);
    assert_eq!(
        metric(
            &m,
            "blindrelay_rate_limited_total{limit=\"broadcast_bytes\"}"
        ),
        refused as f64
    );
    assert_eq!(
        metric(&m, "blindrelay_rate_limited_total{limit=\"messages\"}"),
        0.0
    );

    // The flooder leaves: each reader gets that after all its chats, and had exactly
    // the accepted ones.
    flooder.send(&ClientMessage::Leave).await.expect("leave");
    for r in readers {
        let r = tokio::time::timeout(Duration::from_secs(20), r)
            .await
            .expect("reader done in time")
            .expect("reader task");
        assert_eq!(r.cut_off, None, "a reader was cut off");
        assert_eq!(r.chats as u64, accepted);
    }
    relay.shutdown().await;
}
