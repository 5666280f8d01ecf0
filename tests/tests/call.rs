//! Two real clients through a real relay on loopback: DTLS handshakes, SRTP both ways,
//! every frame checked byte for byte, metrics read back from /metrics.

use blindrelay::RelayOptions;
use blindrelay_tests::*;
use e2ee_client::call::{run_call, CallOptions};
use std::time::Duration;

fn opts(relay: &str, token: String, name: &str) -> CallOptions {
    CallOptions {
        relay: relay.to_string(),
        token,
        call: "demo".into(),
        duration: Duration::from_secs(3),
        video_kbps: 800,
        name: name.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_exchange_media_byte_for_byte() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let a = opts(&url, token(&cfg, "alice", Some("demo"), "user"), "alice");
    let b = opts(&url, token(&cfg, "bob", Some("demo"), "user"), "bob");
    let (sa, sb) = tokio::join!(run_call(&a), run_call(&b));
    for (name, s) in [("alice", &sa), ("bob", &sb)] {
        assert!(s.error.is_none(), "{name}: {:?}", s.error);
        assert!(s.joined, "{name} joined");
        assert!(s.received_packets > 100, "{name} received {}", s.received_packets);
        assert!(s.frames_verified > 50, "{name} verified {} frames", s.frames_verified);
        assert_eq!(s.frames_corrupt, 0, "{name}: corrupt frames");
        assert_eq!(s.srtp_failures, 0, "{name}: SRTP failures");
    }
    let m = scrape(&relay).await;
    let fwd = metric(&m, "blindrelay_packets_forwarded_total{kind=\"rtp\"}");
    let received_by_clients = (sa.received_packets + sb.received_packets) as f64;
    assert!(fwd >= received_by_clients, "forwarded {fwd} < received by clients {received_by_clients}");
    assert!(metric(&m, "blindrelay_dtls_handshakes_total{result=\"ok\"}") >= 2.0);
    assert!(metric(&m, "blindrelay_joins_total{result=\"ok\"}") >= 2.0);
    assert!(metric(&m, "blindrelay_packets_received_total{kind=\"rtp\"}") >= (sa.sent_packets + sb.sent_packets) as f64 * 0.99);
    assert!(metric(&m, "blindrelay_forwarding_latency_seconds_count") > 0.0);
    relay.shutdown().await;
}
