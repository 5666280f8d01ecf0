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

/// Every frame `name` verified arrived intact, and SRTP opened every packet.
fn media_intact(name: &str, s: &e2ee_client::call::CallSummary) {
    assert!(s.error.is_none(), "{name}: {:?}", s.error);
    assert!(
        s.frames_verified > 50,
        "{name} verified {} frames",
        s.frames_verified
    );
    assert_eq!(s.frames_corrupt, 0, "{name}: corrupt frames");
    assert_eq!(s.srtp_failures, 0, "{name}: SRTP failures");
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
        media_intact(name, s);
        assert!(s.joined, "{name} joined");
        assert!(
            s.received_packets > 100,
            "{name} received {}",
            s.received_packets
        );
    }
    let m = scrape(&relay).await;
    let fwd = metric(&m, "blindrelay_packets_forwarded_total{kind=\"rtp\"}");
    let received_by_clients = (sa.received_packets + sb.received_packets) as f64;
    assert!(
        fwd >= received_by_clients,
        "forwarded {fwd} < received by clients {received_by_clients}"
    );
    assert!(metric(&m, "blindrelay_dtls_handshakes_total{result=\"ok\"}") >= 2.0);
    assert!(metric(&m, "blindrelay_joins_total{result=\"ok\"}") >= 2.0);
    assert!(
        metric(&m, "blindrelay_packets_received_total{kind=\"rtp\"}")
            >= (sa.sent_packets + sb.sent_packets) as f64 * 0.99
    );
    assert!(metric(&m, "blindrelay_forwarding_latency_seconds_count") > 0.0);
    relay.shutdown().await;
}

fn tap_collector() -> (RelayOptions, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let s2 = seen.clone();
    let tap: blindrelay::core::forward::MediaTap =
        std::sync::Arc::new(move |pkt: &blindrelay::core::forward::TapPacket<'_>| {
            let mut v = s2.lock().expect("tap lock");
            if v.len() < 5000 {
                v.push(pkt.data.to_vec());
            }
        });
    (RelayOptions { tap: Some(tap) }, seen)
}

fn payloads_with(seen: &[Vec<u8>], needle: &[u8]) -> usize {
    seen.iter()
        .filter(|p| {
            let h = blindrelay_protocol::rtp::RtpHeader::parse(p).expect("tap sees valid RTP");
            h.payload(p).windows(needle.len()).any(|w| w == needle)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2ee_call_agrees_codes_and_relay_holds_only_ciphertext() {
    let cfg = loopback_config();
    let (options, seen) = tap_collector();
    let relay = start_relay(cfg.clone(), options).await;
    let url = relay.signal_url();
    let canary = "CANARY-e2ee-test-plaintext";
    let mut a = opts(&url, token(&cfg, "alice", Some("demo"), "user"), "alice");
    let mut b = opts(&url, token(&cfg, "bob", Some("demo"), "user"), "bob");
    for o in [&mut a, &mut b] {
        o.e2ee = true;
        o.canary = Some(canary.into());
        o.chat = Some(format!("hello from {}", o.name));
    }
    let (sa, sb) = tokio::join!(run_call(&a), run_call(&b));
    for (name, s) in [("alice", &sa), ("bob", &sb)] {
        assert!(s.error.is_none(), "{name}: {:?}", s.error);
        assert_eq!(
            s.call_mode,
            Some(blindrelay_protocol::signal::CallMode::E2ee),
            "{name}"
        );
        assert!(s.e2ee, "{name} keyed");
        assert!(
            s.frames_decrypted > 50,
            "{name} decrypted {}",
            s.frames_decrypted
        );
        assert_eq!(s.decrypt_failures, 0, "{name}");
        assert_eq!(s.frames_corrupt, 0, "{name}");
        assert_eq!(
            s.frames_verified, s.frames_decrypted,
            "{name}: every decrypted frame verified"
        );
    }
    let (ca, cb) = (
        sa.verification_code.clone().expect("code"),
        sb.verification_code.clone().expect("code"),
    );
    assert_eq!(ca, cb, "both sides show the same verification code");
    assert_eq!(ca.replace(' ', "").len(), 20);
    assert_eq!(ca.split(' ').count(), 4);
    assert_eq!(sa.chat_received, vec!["hello from bob".to_string()]);
    assert_eq!(sb.chat_received, vec!["hello from alice".to_string()]);
    let seen = seen.lock().expect("tap lock").clone();
    assert!(seen.len() > 100, "tap saw {} packets", seen.len());
    assert_eq!(
        payloads_with(&seen, canary.as_bytes()),
        0,
        "relay saw the plaintext canary"
    );
    assert_eq!(
        payloads_with(&seen, b"BRF1"),
        0,
        "relay saw plaintext frame headers"
    );
    relay.shutdown().await;
}

/// Negative control: the same check on a standard call must find the plaintext, or the
/// check above proves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_call_tap_sees_plaintext() {
    let cfg = loopback_config();
    let (options, seen) = tap_collector();
    let relay = start_relay(cfg.clone(), options).await;
    let url = relay.signal_url();
    let canary = "CANARY-standard-plaintext";
    let mut a = opts(&url, token(&cfg, "alice", Some("demo"), "user"), "alice");
    let mut b = opts(&url, token(&cfg, "bob", Some("demo"), "user"), "bob");
    for o in [&mut a, &mut b] {
        o.canary = Some(canary.into());
        o.duration = Duration::from_secs(2);
        o.chat = Some(format!("plain chat from {}", o.name));
    }
    let (sa, sb) = tokio::join!(run_call(&a), run_call(&b));
    assert!(sa.success() && sb.success());
    assert!(!sa.e2ee && sa.verification_code.is_none());
    // Chat on a standard call is plain text.
    assert_eq!(sa.chat_received, vec!["plain chat from bob".to_string()]);
    let seen = seen.lock().expect("tap lock").clone();
    assert!(payloads_with(&seen, canary.as_bytes()) > 50);
    relay.shutdown().await;
}

/// The reference hop SRTP implementation (webrtc-srtp on the relay) carries a call too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_srtp_implementation_carries_a_call() {
    let mut cfg = loopback_config();
    cfg.media.srtp = blindrelay::config::SrtpImpl::Reference;
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let mut a = opts(&url, token(&cfg, "alice", Some("demo"), "user"), "alice");
    let mut b = opts(&url, token(&cfg, "bob", Some("demo"), "user"), "bob");
    a.duration = Duration::from_secs(2);
    b.duration = Duration::from_secs(2);
    let (sa, sb) = tokio::join!(run_call(&a), run_call(&b));
    for s in [&sa, &sb] {
        assert!(
            s.error.is_none() && s.frames_verified > 20 && s.frames_corrupt == 0,
            "{:?}",
            s.error
        );
    }
    relay.shutdown().await;
}

/// A participant that offers only AES128_CM_HMAC_SHA1_80 (as webrtcbin and Janus do) and
/// one on AEAD_AES_128_GCM in one call: the relay opens and seals each hop in place with
/// its own profile, and every frame arrives intact both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aes_cm_participant_and_a_gcm_participant_exchange_media() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let mut a = opts(&url, token(&cfg, "alice", Some("demo"), "user"), "alice");
    a.srtp_aes_cm_only = true;
    let b = opts(&url, token(&cfg, "bob", Some("demo"), "user"), "bob");
    let (sa, sb) = tokio::join!(run_call(&a), run_call(&b));
    assert_eq!(
        sa.srtp_profile.as_deref(),
        Some("aes128_cm_hmac_sha1_80"),
        "{sa:?}"
    );
    assert_eq!(
        sb.srtp_profile.as_deref(),
        Some("aead_aes_128_gcm"),
        "{sb:?}"
    );
    for (name, s) in [("alice", &sa), ("bob", &sb)] {
        media_intact(name, s);
    }
    let m = scrape(&relay).await;
    assert_eq!(
        metric(&m, "blindrelay_srtp_auth_failures_total"),
        0.0,
        "the relay opened every packet"
    );
    relay.shutdown().await;
}
