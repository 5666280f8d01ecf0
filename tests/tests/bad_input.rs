//! Every kind of bad input is dropped, counted under its own reason, and the call running
//! beside it keeps flowing.

use blindrelay::RelayOptions;
use blindrelay_protocol::signal::{ClientMessage, ServerMessage};
use blindrelay_protocol::stun::{StunWriter, BINDING_REQUEST};
use blindrelay_tests::*;
use e2ee_client::call::{run_call, CallOptions};
use std::time::Duration;
use tokio::net::UdpSocket;

/// Wait until the drop counter for `reason` reaches `want` (the media path is
/// asynchronous); panics, with every drop and receive counter, if it does not in 5 s.
async fn wait_drops(relay: &blindrelay::Relay, reason: &str, want: f64) -> f64 {
    let key = format!("blindrelay_packets_dropped_total{{reason=\"{reason}\"}}");
    let m = await_metrics(relay, Duration::from_secs(5), &key, |m| {
        metric(m, &key) >= want
    })
    .await;
    metric(&m, &key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_datagrams_are_dropped_by_reason_and_the_call_keeps_flowing() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    // A real call runs through all of this.
    let call = |user: &str| CallOptions {
        relay: url.clone(),
        token: token(&cfg, user, Some("demo"), "user"),
        call: "demo".into(),
        duration: Duration::from_secs(4),
        video_kbps: 500,
        name: user.into(),
        ..Default::default()
    };
    let (ca, cb) = (call("alice"), call("bob"));
    let calls = tokio::spawn(async move { tokio::join!(run_call(&ca), run_call(&cb)) });

    // A hand-driven participant in another call, to send bad SRTP from a known address.
    let mut raw = raw_join(&url, &token(&cfg, "mallory", None, "user"), "other").await;
    let mut path = raw.connect().await.expect("raw participant connects");
    // A second participant in that call so valid packets have somewhere to go.
    let mut peer = raw_join(&url, &token(&cfg, "peer", None, "user"), "other").await;
    // The relay sends the peer mallory's media once it has answered the offer of it.
    peer.answer_offer().await;
    let mut peer_path = peer.connect().await.expect("peer connects");
    let media = relay.media_addr;
    // Both hops are keyed on the client side; wait until the relay forwards between them
    // (its forwarding loop has both peers): a probe from mallory reaches the peer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for seq in 1u16.. {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never forwarded mallory's probe to the peer"
        );
        let probe = path
            .outbound
            .encrypt_rtp(&rtp_packet(raw.audio_ssrc, seq, b"probe"))
            .expect("protect");
        path.socket.send_to(&probe, media).await.expect("send");
        let arrived = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                let (d, rtcp) = peer_path.media_rx.recv().await.expect("media");
                if !rtcp
                    && peer_path
                        .inbound
                        .decrypt_rtp(&d)
                        .is_ok_and(|p| p.ends_with(b"probe"))
                {
                    return;
                }
            }
        })
        .await;
        if arrived.is_ok() {
            break;
        }
    }

    // 1. Junk datagrams from a stranger: first bytes no RFC 7983 protocol uses.
    let stranger = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for i in 0..20u8 {
        let junk: Vec<u8> = (0..100)
            .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
            .collect();
        let mut j = junk.clone();
        j[0] = 64 + i; // 64..=127 and 192+ are unassigned
        stranger.send_to(&j, media).await.expect("send");
    }
    stranger.send_to(&[], media).await.expect("send empty");
    assert!(wait_drops(&relay, "unknown_protocol", 21.0).await >= 21.0);

    // 2. A DTLS ClientHello from an address no participant was checked from.
    let hello = [
        22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    stranger.send_to(&hello, media).await.expect("send");
    assert!(wait_drops(&relay, "dtls_unknown_source", 1.0).await >= 1.0);

    // 3. SRTP from a stranger.
    stranger
        .send_to(&rtp_packet(5, 1, b"x"), media)
        .await
        .expect("send");
    assert!(wait_drops(&relay, "unknown_source", 1.0).await >= 1.0);

    // 4. STUN with the right USERNAME but a wrong MESSAGE-INTEGRITY.
    let bad_stun = StunWriter::new(BINDING_REQUEST, &[9; 12])
        .username(&format!("{}:{}", raw.answer.ice_ufrag, raw.ufrag))
        .use_candidate()
        .integrity(b"not-the-relay-password")
        .finish_with_fingerprint();
    stranger.send_to(&bad_stun, media).await.expect("send");
    assert!(wait_drops(&relay, "stun_bad_integrity", 1.0).await >= 1.0);

    // 5. SRTP with a bad tag, from the participant's own address.
    let good = path
        .outbound
        .encrypt_rtp(&rtp_packet(raw.audio_ssrc, 100, b"opaque"))
        .expect("protect");
    let mut bad_tag = good.to_vec();
    let last = bad_tag.len() - 1;
    bad_tag[last] ^= 0x55;
    path.socket.send_to(&bad_tag, media).await.expect("send");
    assert!(wait_drops(&relay, "srtp_auth_failed", 1.0).await >= 1.0);
    let m = scrape(&relay).await;
    assert!(metric(&m, "blindrelay_srtp_auth_failures_total") >= 1.0);

    // 6. A valid packet, then the same packet replayed.
    path.socket.send_to(&good, media).await.expect("send");
    path.socket.send_to(&good, media).await.expect("send");
    assert!(wait_drops(&relay, "srtp_replay", 1.0).await >= 1.0);
    assert!(
        metric(
            &scrape(&relay).await,
            "blindrelay_srtp_replay_failures_total"
        ) >= 1.0
    );

    // 7. A truncated SRTP packet (shorter than an RTP header).
    path.socket.send_to(&good[..8], media).await.expect("send");
    assert!(wait_drops(&relay, "srtp_malformed", 1.0).await >= 1.0);

    // The hand-driven call still works after all that: a fresh packet reaches the peer.
    let fresh = path
        .outbound
        .encrypt_rtp(&rtp_packet(raw.audio_ssrc, 101, b"still here"))
        .expect("protect");
    path.socket.send_to(&fresh, media).await.expect("send");
    let got = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let (d, rtcp) = peer_path.media_rx.recv().await.expect("media");
            if rtcp {
                continue;
            }
            // Earlier valid packets ("opaque") arrive first.
            if let Ok(p) = peer_path.inbound.decrypt_rtp(&d) {
                if p.ends_with(b"still here") {
                    return p;
                }
            }
        }
    })
    .await
    .expect("peer received the fresh packet");
    assert!(got.ends_with(b"still here"));

    let (sa, sb) = calls.await.expect("call task");
    for s in [&sa, &sb] {
        assert!(s.error.is_none(), "{:?}", s.error);
        assert!(
            s.frames_verified > 50,
            "call kept flowing: {} frames",
            s.frames_verified
        );
        assert_eq!(s.frames_corrupt, 0);
    }
    // Mallory's bad packets did not cost her the call: she is still a participant, and
    // her chat reaches the peer.
    raw.sig
        .send(&ClientMessage::Chat {
            body: "still in the call".into(),
        })
        .await
        .expect("send chat");
    let mut peer = peer;
    let chat = peer
        .wait_for(
            Duration::from_secs(5),
            |m| matches!(m, ServerMessage::Chat { body, .. } if body == "still in the call"),
        )
        .await;
    assert!(
        matches!(chat, Some(ServerMessage::Chat { ref from, .. }) if *from == raw.me),
        "mallory's chat after the bad input: {chat:?}"
    );
    drop(path);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtls_certificate_not_matching_the_offer_is_refused() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let mut raw = raw_join(
        &relay.signal_url(),
        &token(&cfg, "mallory", None, "user"),
        "c",
    )
    .await;
    let other = blindrelay_transport::DtlsIdentity::generate().expect("identity");
    assert!(
        raw.connect_as(&other).await.is_err(),
        "handshake with the wrong certificate must fail"
    );
    // The client can give up before the relay's handshake task has counted the failure.
    let key = "blindrelay_dtls_handshakes_total{result=\"fingerprint_mismatch\"}";
    let m = await_metrics(&relay, Duration::from_secs(5), key, |m| {
        series(m, key).is_some_and(|v| v >= 1.0)
    })
    .await;
    assert_eq!(
        metric(&m, key),
        1.0,
        "{:?}",
        m.iter()
            .filter(|(k, _)| k.contains("dtls"))
            .collect::<Vec<_>>()
    );
    // The `ok` series is created by the first successful handshake; this relay has had
    // none, so its absence is the 0 asserted (the family exists: fingerprint_mismatch).
    assert_eq!(
        metric_or_zero(&m, "blindrelay_dtls_handshakes_total{result=\"ok\"}"),
        0.0
    );
    // The relay removes the participant and says why.
    let left = raw
        .wait_for(Duration::from_secs(2), |m| {
            matches!(m, ServerMessage::ParticipantLeft { .. })
        })
        .await;
    assert!(
        matches!(left, Some(ServerMessage::ParticipantLeft { reason, .. }) if reason == "dtls_failed")
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_client_is_removed_after_consent_timeout() {
    let mut cfg = loopback_config();
    // Clients refresh consent every 2.5 s.
    cfg.ice.consent_timeout = Duration::from_secs(4);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let mut watcher = raw_join(&url, &token(&cfg, "alice", None, "user"), "c").await;
    let _watcher_path = watcher.connect().await.expect("connect");
    let ghost = raw_join(&url, &token(&cfg, "ghost", None, "user"), "c").await;
    let ghost_path = ghost.connect().await.expect("connect");
    // The ghost's network goes away: no more STUN, no more media; its signalling stays
    // open (a half-dead client), so only consent can catch it.
    drop(ghost_path);
    let ghost_id = ghost.me.clone();
    let started = std::time::Instant::now();
    let left = watcher
        .wait_for(Duration::from_secs(8), |m| matches!(m, ServerMessage::ParticipantLeft { participant, .. } if *participant == ghost_id))
        .await;
    match left {
        Some(ServerMessage::ParticipantLeft { reason, .. }) => {
            assert_eq!(reason, "consent_timeout")
        }
        other => panic!(
            "ghost not removed: {other:?} {:?}",
            scrape(&relay)
                .await
                .into_iter()
                .filter(|(k, _)| k.contains("removed") || k.contains("participants"))
                .collect::<Vec<_>>()
        ),
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(3500),
        "removed too early: {took:?}"
    );
    let m = scrape(&relay).await;
    assert_eq!(
        metric(
            &m,
            "blindrelay_participants_removed_total{reason=\"consent_timeout\"}"
        ),
        1.0
    );
    // The watcher, who kept its consent fresh, is still there.
    assert_eq!(
        metric(&m, "blindrelay_participants{role=\"user\"}"),
        1.0,
        "{:?}",
        m.iter()
            .filter(|(k, _)| k.contains("partic") || k.contains("joins"))
            .collect::<Vec<_>>()
    );
    drop(ghost);
    relay.shutdown().await;
}
