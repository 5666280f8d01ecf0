//! A participant that stops reading while another floods the call with chat. In a test
//! binary of its own: it measures this process's memory, which other tests would disturb.

use blindrelay::RelayOptions;
use blindrelay_protocol::signal::{ClientMessage, ServerMessage};
use blindrelay_tests::*;
use blindrelay_transport::DtlsIdentity;
use std::time::Duration;

/// This process's resident set, in bytes (the relay runs in it).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("statm has resident pages");
    pages * 4096
}

/// The relay cuts the slow reader off at `signal.max_outbound_bytes`, its memory stays
/// bounded, and the flooder is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_cut_off_and_memory_stays_bounded() {
    let mut cfg = loopback_config();
    cfg.signal.messages_per_second = 100_000;
    cfg.signal.message_burst = 100_000;
    // These participants never set up media: keep them through the flood.
    cfg.ice.connect_timeout = Duration::from_secs(120);
    cfg.ice.consent_timeout = Duration::from_secs(120);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let id = DtlsIdentity::generate().expect("identity");
    let mut flooder = hello(&url, &token(&cfg, "flooder", Some("flood"), "user")).await;
    let mut sleeper = hello(&url, &token(&cfg, "sleeper", Some("flood"), "user")).await;
    for (n, sig) in [&mut sleeper, &mut flooder].into_iter().enumerate() {
        sig.send(&ClientMessage::Join {
            call: "flood".into(),
            e2ee_enabled: false,
            offer_sdp: offer(&id, "floodufrag", n as u32),
            e2ee_scheme: Default::default(),
        })
        .await
        .expect("join");
        assert!(matches!(
            next_reply(sig).await,
            ServerMessage::Joined { .. }
        ));
    }
    let rss_before = rss_bytes();
    let body = "x".repeat(60_000);
    // 4,000 messages of 60 KB (240 MB) to a participant that never reads.
    for _ in 0..4000 {
        flooder
            .send(&ClientMessage::Chat { body: body.clone() })
            .await
            .expect("chat");
    }
    let m = await_metrics(
        &relay,
        Duration::from_secs(30),
        "slow reader cut off",
        |m| {
            // The `slow_reader` series appears with the first such close.
            series(
                m,
                "blindrelay_signalling_closed_total{reason=\"slow_reader\"}",
            )
            .is_some_and(|v| v >= 1.0)
                && metric(m, "blindrelay_participants{role=\"user\"}") == 1.0
        },
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "blindrelay_participants_removed_total{reason=\"signalling_lost\"}"
        ),
        1.0
    );
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(
        grown < 64 << 20,
        "RSS grew by {} MB under the flood",
        grown >> 20
    );
    // The flooder is still served.
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
            ServerMessage::ParticipantLeft { reason, .. } => assert_eq!(reason, "signalling_lost"),
            // Renegotiations as the sleeper joined and left.
            ServerMessage::Offer { .. } => {}
            m => panic!("unexpected {m:?}"),
        }
    }
    drop(sleeper);
    relay.shutdown().await;
}
