//! Attacks on the media path of a real relay on loopback, with real DTLS-SRTP:
//!
//! - a participant sending another's SSRC with its sequence numbers (the GCM nonce reuse
//!   of issue 12) is dropped as `ssrc_not_owned`, and the victim's receiver never gets one
//!   SRTP index sealed twice;
//! - forged packets from a vanished participant's own address do not keep it alive past
//!   the consent timeout (only authenticated SRTP/SRTCP and STUN requests with a valid
//!   MESSAGE-INTEGRITY refresh consent);
//! - a join claiming another participant's SSRCs is refused `ssrc_in_use` and the owner's
//!   media keeps flowing; forged BYE, SR and RR are dropped and counted; a PLI flood
//!   reaches the media sender at most once per 250 ms;
//! - a flood of 200,000 bad datagrams during a live call costs the call nothing, and every
//!   one of them is counted under its drop reason in the relay's Prometheus metrics.

use blindrelay::RelayOptions;
use blindrelay_protocol::rtcp;
use blindrelay_protocol::sdp;
use blindrelay_protocol::signal::{ClientMessage, ErrorCode, ServerMessage};
use blindrelay_protocol::stun::{StunWriter, BINDING_INDICATION, BINDING_REQUEST};
use blindrelay_tests::*;
use e2ee_client::call::{run_call, CallOptions, CallSummary};
use e2ee_client::transport::MediaPath;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

fn dropped(reason: &str) -> String {
    format!("blindrelay_packets_dropped_total{{reason=\"{reason}\"}}")
}

/// Send RTP from `from` (SSRC `ssrc`) until `to` receives one: both hops are keyed and the
/// relay's forwarding loop has both participants, and `to` has a track for the SSRC.
async fn probe_until_forwarded(
    from: &mut MediaPath,
    ssrc: u32,
    to: &mut MediaPath,
    relay: SocketAddr,
) -> u16 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for seq in 1u16.. {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never forwarded the probe"
        );
        let probe = from
            .outbound
            .encrypt_rtp(&rtp_packet(ssrc, seq, b"probe"))
            .expect("protect");
        from.socket.send_to(&probe, relay).await.expect("send");
        let arrived = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                let (d, rtcp) = to.media_rx.recv().await.expect("media");
                if !rtcp
                    && to
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
            return seq;
        }
    }
    unreachable!("the loop returns or panics")
}

/// The RTP sequence number and SSRC in an SRTP packet's clear header.
fn seq_ssrc(srtp: &[u8]) -> Option<(u16, u32)> {
    let h = srtp.get(..12)?;
    Some((
        u16::from_be_bytes([h[2], h[3]]),
        u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
    ))
}

/// The owner's next 20 packets on `ssrc` after `seq` (sent by `from`) reach `to`, each once,
/// with the owner's payload: an SSRC claim that was refused took nothing away.
async fn owners_media_keeps_flowing(
    from: &mut MediaPath,
    ssrc: u32,
    to: &mut MediaPath,
    media: SocketAddr,
    seq: u16,
) {
    for s in seq + 1..=seq + 20 {
        let p = from
            .outbound
            .encrypt_rtp(&rtp_packet(ssrc, s, format!("alice {s}").as_bytes()))
            .expect("protect");
        from.socket.send_to(&p, media).await.expect("send");
    }
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while got.len() < 20 {
            let (d, is_rtcp) = to.media_rx.recv().await.expect("media");
            if is_rtcp || seq_ssrc(&d).is_none_or(|(s, x)| x != ssrc || s <= seq) {
                continue;
            }
            got.push(to.inbound.decrypt_rtp(&d).expect("authentic")[12..].to_vec());
        }
    })
    .await
    .expect("the owner's media keeps flowing");
    let want: Vec<Vec<u8>> = (seq + 1..=seq + 20)
        .map(|s| format!("alice {s}").into_bytes())
        .collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_participants_ssrc_is_dropped_and_no_index_is_sealed_twice() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let media = relay.media_addr;
    let alice = raw_join(&url, &token(&cfg, "alice", None, "user"), "c").await;
    let mut a = alice.connect().await.expect("alice connects");
    let bob = raw_join(&url, &token(&cfg, "bob", None, "user"), "c").await;
    let mut b = bob.connect().await.expect("bob connects");
    // Carol receives alice's stream (she answers the relay's offer of the tracks).
    let mut carol = raw_join(&url, &token(&cfg, "carol", None, "user"), "c").await;
    carol.answer_offer().await;
    let mut c = carol.connect().await.expect("carol connects");
    let first = probe_until_forwarded(&mut a, alice.audio_ssrc, &mut c, media).await;

    // Bob sends alice's SSRC with alice's next sequence numbers, each one interleaved
    // with alice's own packet of that number (bob first for even numbers, alice first
    // for odd ones). Bob's packets authenticate on his hop: only ownership stops them.
    const N: u16 = 200;
    let seqs = first + 1..=first + N;
    for seq in seqs.clone() {
        let real = a
            .outbound
            .encrypt_rtp(&rtp_packet(
                alice.audio_ssrc,
                seq,
                format!("alice {seq}").as_bytes(),
            ))
            .expect("protect");
        let forged = b
            .outbound
            .encrypt_rtp(&rtp_packet(
                alice.audio_ssrc,
                seq,
                format!("bob!! {seq}").as_bytes(),
            ))
            .expect("protect");
        if seq % 2 == 0 {
            b.socket.send_to(&forged, media).await.expect("send");
            a.socket.send_to(&real, media).await.expect("send");
        } else {
            a.socket.send_to(&real, media).await.expect("send");
            b.socket.send_to(&forged, media).await.expect("send");
        }
    }

    // Carol gets alice's N packets; anything else with that SSRC would show up as a
    // second packet of one sequence number (ROC 0 here, so index = sequence number).
    let mut per_index: HashMap<u16, usize> = HashMap::new();
    let mut payloads = Vec::new();
    let got_all = tokio::time::timeout(Duration::from_secs(10), async {
        while payloads.len() < usize::from(N) {
            let (d, rtcp) = c.media_rx.recv().await.expect("media");
            if rtcp {
                continue;
            }
            let Some((seq, ssrc)) = seq_ssrc(&d) else {
                continue;
            };
            if ssrc != alice.audio_ssrc || !seqs.contains(&seq) {
                continue;
            }
            *per_index.entry(seq).or_default() += 1;
            // Carol's context has no replay protection on the raw count above; this
            // decrypt also proves the packet is authentic on her hop.
            let clear = c.inbound.decrypt_rtp(&d).expect("authentic on carol's hop");
            payloads.push(clear[12..].to_vec());
        }
    })
    .await;
    assert!(
        got_all.is_ok(),
        "carol got {} of alice's {N} packets",
        payloads.len()
    );
    let m = await_metrics(
        &relay,
        Duration::from_secs(5),
        "bob's forgeries counted",
        |m| series(m, &dropped("ssrc_not_owned")).is_some_and(|v| v >= f64::from(N)),
    )
    .await;
    assert_eq!(metric(&m, &dropped("ssrc_not_owned")), f64::from(N));
    // Ownership stopped them before any receiver's context was asked to reuse an index.
    assert_eq!(metric(&m, &dropped("srtp_index_reused")), 0.0);
    // Every index once, and it is alice's packet.
    let twice: Vec<_> = per_index.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "indices sealed more than once: {twice:?}");
    assert_eq!(per_index.len(), usize::from(N));
    for p in &payloads {
        assert!(p.starts_with(b"alice "), "{:?}", String::from_utf8_lossy(p));
    }
    // Nothing more of alice's SSRC arrives (a late forgery would).
    let late = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            let (d, rtcp) = c.media_rx.recv().await.expect("media");
            if !rtcp && seq_ssrc(&d).is_some_and(|(_, s)| s == alice.audio_ssrc) {
                return d;
            }
        }
    })
    .await;
    assert!(late.is_err(), "an extra packet of alice's SSRC: {late:?}");
    drop((a, b, c));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_packets_from_a_vanished_participants_address_do_not_keep_it_alive() {
    let mut cfg = loopback_config();
    // Clients refresh consent every 2.5 s: the watcher must outlive the ghost.
    let timeout = Duration::from_secs(4);
    cfg.ice.consent_timeout = timeout;
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let media = relay.media_addr;
    let mut watcher = raw_join(&url, &token(&cfg, "alice", None, "user"), "c").await;
    let _watcher_path = watcher.connect().await.expect("connect");
    let ghost = raw_join(&url, &token(&cfg, "ghost", None, "user"), "c").await;
    let mut path = ghost.connect().await.expect("connect");
    // The ghost's client goes away (no consent checks, no media), but someone keeps
    // sending from its address and port: SRTP and SRTCP with its SSRC and a bad tag, a
    // truncated SRTP packet, binding indications (no integrity), and binding requests
    // with its USERNAME and a wrong MESSAGE-INTEGRITY.
    path.stop_background();
    let username = format!("{}:{}", ghost.answer.ice_ufrag, ghost.ufrag);
    let ssrc = ghost.audio_ssrc;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let flood = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut rounds = 0u32;
        // Bounded: 25 s of rounds at most.
        while rounds < 5000 {
            tokio::select! {
                _ = &mut stop_rx => break,
                _ = tick.tick() => {}
            }
            rounds += 1;
            let seq = rounds as u16;
            let mut srtp = path
                .outbound
                .encrypt_rtp(&rtp_packet(ssrc, seq, b"forged"))
                .expect("protect")
                .to_vec();
            *srtp.last_mut().expect("tag") ^= 0x5a;
            let mut srtcp = path
                .outbound
                .encrypt_rtcp(&[0x80, 201, 0, 1, 0, 0, 0, 1])
                .expect("protect")
                .to_vec();
            srtcp[9] ^= 0x5a;
            let indication =
                StunWriter::new(BINDING_INDICATION, &[rounds as u8; 12]).finish_with_fingerprint();
            let bad_request = StunWriter::new(BINDING_REQUEST, &[7; 12])
                .username(&username)
                .use_candidate()
                .integrity(b"not-the-relay-password")
                .finish_with_fingerprint();
            let truncated = &srtp[..10];
            for d in [&srtp[..], &srtcp, truncated, &indication, &bad_request] {
                path.socket.send_to(d, media).await.expect("send");
            }
        }
        rounds
    });
    let started = std::time::Instant::now();
    let ghost_id = ghost.me.clone();
    let left = watcher
        .wait_for(timeout * 4, |m| {
            matches!(m, ServerMessage::ParticipantLeft { participant, .. } if *participant == ghost_id)
        })
        .await;
    let took = started.elapsed();
    let m = scrape(&relay).await;
    let _ = stop_tx.send(());
    let rounds = flood.await.expect("flood task");
    match left {
        Some(ServerMessage::ParticipantLeft { reason, .. }) => {
            assert_eq!(reason, "consent_timeout")
        }
        other => panic!(
            "the forged packets kept the ghost alive: {other:?} after {took:?}, {rounds} rounds; {:?}",
            m.iter()
                .filter(|(k, _)| k.contains("dropped") || k.contains("participants"))
                .collect::<Vec<_>>()
        ),
    }
    // Consent was last refreshed by a real check at most a moment before `started`.
    assert!(
        took >= timeout - Duration::from_millis(500),
        "removed too early: {took:?}"
    );
    // The flood reached the relay while the ghost was still there, as every kind.
    for reason in ["srtp_auth_failed", "srtp_malformed", "stun_bad_integrity"] {
        assert!(
            metric(&m, &dropped(reason)) >= 50.0,
            "{reason}: {}",
            metric(&m, &dropped(reason))
        );
    }
    assert!(metric(&m, "blindrelay_srtp_auth_failures_total") >= 100.0);
    assert_eq!(
        metric(
            &m,
            "blindrelay_participants_removed_total{reason=\"consent_timeout\"}"
        ),
        1.0
    );
    relay.shutdown().await;
}

/// The kinds of bad datagram in the flood, with the drop reason each must be counted under.
const FLOOD: [(&str, &str); 7] = [
    ("junk", "unknown_protocol"),
    ("truncated STUN", "stun_malformed"),
    ("STUN with a bad MESSAGE-INTEGRITY", "stun_bad_integrity"),
    ("DTLS ClientHello from a stranger", "dtls_unknown_source"),
    ("SRTP from a stranger", "unknown_source"),
    (
        "SRTP with a bad tag and the sender's SSRC",
        "srtp_auth_failed",
    ),
    ("truncated SRTP", "srtp_malformed"),
];
const FLOOD_TOTAL: usize = 200_000;
/// Datagrams sent before waiting for the relay to have counted them all: the socket's
/// receive buffer holds a chunk whole, so the kernel drops none of it.
const CHUNK: usize = 2_000;
/// Drops under a flood reason that are not the flood's: the last keying probe may still be
/// in flight when the flood's baseline is read, and a live-call client may send a packet
/// after it left.
const SLACK: usize = 8;

fn call_options(
    relay: &blindrelay::Relay,
    cfg: &blindrelay::config::Config,
    user: &str,
    call: &str,
) -> CallOptions {
    CallOptions {
        relay: relay.signal_url(),
        token: token(cfg, user, Some(call), "user"),
        call: call.into(),
        // Long enough that the flood (about 2.5 s here) ends well inside the live call
        // on a loaded machine.
        duration: Duration::from_secs(7),
        video_kbps: 500,
        name: user.into(),
        ..Default::default()
    }
}

fn assert_call_ok(s: &CallSummary, what: &str) {
    assert!(
        s.error.is_none()
            && s.frames_corrupt == 0
            && s.srtp_failures == 0
            && s.frames_verified > 50,
        "{what}: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_datagrams_costs_a_live_call_nothing_and_each_is_counted() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let media = relay.media_addr;

    // Baseline: the call with no flood.
    let (oa, ob) = (
        call_options(&relay, &cfg, "alice", "baseline"),
        call_options(&relay, &cfg, "bob", "baseline"),
    );
    let (ba, bb) = tokio::join!(run_call(&oa), run_call(&ob));
    assert_call_ok(&ba, "baseline alice");
    assert_call_ok(&bb, "baseline bob");

    // A hand-driven participant of another call, keyed, so SRTP from its address reaches
    // its forwarding loop (and fails there).
    let mallory = raw_join(
        &relay.signal_url(),
        &token(&cfg, "mallory", None, "user"),
        "other",
    )
    .await;
    let mut path = mallory.connect().await.expect("mallory connects");
    let mut bad_tag = Vec::new();
    for seq in 0..64u16 {
        let mut p = path
            .outbound
            .encrypt_rtp(&rtp_packet(mallory.audio_ssrc, 1000 + seq, &[0xab; 160]))
            .expect("protect")
            .to_vec();
        *p.last_mut().expect("tag") ^= 0x01;
        bad_tag.push(p);
    }
    let truncated = bad_tag[0][..10].to_vec();
    // Its hop must be in the forwarding loop, or bad tags count as `not_connected`: send
    // one until one is counted as a bad tag.
    let key = dropped("srtp_auth_failed");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        path.socket.send_to(&bad_tag[0], media).await.expect("send");
        if series(&scrape(&relay).await, &key).is_some_and(|v| v >= 1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mallory's hop never reached the forwarding loop"
        );
        // A polling interval: the state is only visible through the metrics.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Strangers: sockets no participant was checked from.
    let mut strangers = Vec::new();
    for _ in 0..4 {
        strangers.push(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    }
    let username = format!("{}:{}", mallory.answer.ice_ufrag, mallory.ufrag);
    let bad_stun = StunWriter::new(BINDING_REQUEST, &[9; 12])
        .username(&username)
        .use_candidate()
        .integrity(b"not-the-relay-password")
        .finish_with_fingerprint();
    let client_hello = [
        22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let junk: Vec<u8> = (0..120u8).map(|i| 64 + i % 64).collect();
    let truncated_stun = [0u8, 1, 0, 8, 0x21, 0x12];
    let stranger_rtp = rtp_packet(mallory.audio_ssrc, 7, &[0xcd; 100]);

    // The live call, then the flood once media flows.
    let fwd_key = "blindrelay_packets_forwarded_total{kind=\"rtp\"}";
    let forwarded_before = metric(&scrape(&relay).await, fwd_key);
    let (ca, cb) = (
        call_options(&relay, &cfg, "alice", "live"),
        call_options(&relay, &cfg, "bob", "live"),
    );
    let calls = tokio::spawn(async move { tokio::join!(run_call(&ca), run_call(&cb)) });
    let before = await_metrics(&relay, Duration::from_secs(5), "live call flows", |m| {
        metric(m, fwd_key) >= forwarded_before + 200.0
    })
    .await;
    let all_drops = |m: &HashMap<String, f64>| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with("blindrelay_packets_dropped_total{"))
            .map(|(_, v)| *v)
            .sum()
    };
    let flood_drops = |m: &HashMap<String, f64>| -> f64 {
        FLOOD.iter().map(|(_, r)| metric(m, &dropped(r))).sum()
    };
    let base_flood = flood_drops(&before);
    let base_all = all_drops(&before);
    let started = std::time::Instant::now();
    let mut sent = [0usize; FLOOD.len()];
    let mut total = 0usize;
    while total < FLOOD_TOTAL {
        let n = CHUNK.min(FLOOD_TOTAL - total);
        for i in 0..n {
            let k = (total + i) % FLOOD.len();
            let s = &strangers[(total + i) % strangers.len()];
            match k {
                0 => s.send_to(&junk, media).await,
                1 => s.send_to(&truncated_stun, media).await,
                2 => s.send_to(&bad_stun, media).await,
                3 => s.send_to(&client_hello, media).await,
                4 => s.send_to(&stranger_rtp, media).await,
                5 => {
                    path.socket
                        .send_to(&bad_tag[(total + i) % bad_tag.len()], media)
                        .await
                }
                _ => path.socket.send_to(&truncated, media).await,
            }
            .expect("send on loopback");
            sent[k] += 1;
        }
        total += n;
        let want = base_flood + total as f64;
        await_metrics(
            &relay,
            Duration::from_secs(10),
            "the relay counted the chunk",
            |m| flood_drops(m) >= want,
        )
        .await;
    }
    let flood_time = started.elapsed();
    assert!(
        !calls.is_finished(),
        "the flood ({flood_time:?}) outlasted the live call: nothing was measured"
    );
    let after = scrape(&relay).await;
    let (sa, sb) = calls.await.expect("call task");
    assert_call_ok(&sa, "alice under the flood");
    assert_call_ok(&sb, "bob under the flood");

    // Every datagram counted, each under its own reason, and the drops that cost a call
    // packets (a full queue, a refused send) did not happen.
    assert!(all_drops(&after) - base_all >= FLOOD_TOTAL as f64);
    for (i, (what, reason)) in FLOOD.iter().enumerate() {
        let delta = metric(&after, &dropped(reason)) - metric(&before, &dropped(reason));
        assert!(
            delta >= sent[i] as f64 && delta <= (sent[i] + SLACK) as f64,
            "{what}: {} sent, {delta} counted as {reason}",
            sent[i]
        );
        assert!(sent[i] > 20_000, "{what}: {}", sent[i]);
    }
    for reason in ["worker_queue_full", "send_failed", "srtp_protect_failed"] {
        assert_eq!(
            metric(&after, &dropped(reason)),
            metric(&before, &dropped(reason)),
            "{reason}"
        );
    }
    // The call lost no more than the same call without the flood.
    for (flooded, base, who) in [(&sa, &ba, "alice"), (&sb, &bb, "bob")] {
        assert!(
            flooded.lost_packets <= base.lost_packets,
            "{who}: lost {} under the flood, {} without",
            flooded.lost_packets,
            base.lost_packets
        );
        assert!(
            flooded.received_packets * 100 >= base.received_packets * 95,
            "{who}: received {} under the flood, {} without",
            flooded.received_packets,
            base.received_packets
        );
    }
    eprintln!(
        "flood: {FLOOD_TOTAL} datagrams in {flood_time:?}; per kind {sent:?}; \
         lost packets (alice, bob) {}/{} vs baseline {}/{}",
        sa.lost_packets, sb.lost_packets, ba.lost_packets, bb.lost_packets
    );
    drop(path);
    relay.shutdown().await;
}

/// An SR (with 20 bytes of sender info) from `ssrc`.
fn sender_report(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, rtcp::PT_SR, 0, 6];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[7; 20]);
    p
}

/// A BYE for `ssrc`.
fn bye(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x81, rtcp::PT_BYE, 0, 1];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}

/// The packets of every SRTCP compound `path` receives until one holds `until` (then
/// returned with the rest), decrypted on its hop; panics after 10 s.
async fn rtcp_until(path: &mut MediaPath, until: &[u8]) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (d, is_rtcp) = path.media_rx.recv().await.expect("media");
            if !is_rtcp {
                continue;
            }
            let clear = path.inbound.decrypt_rtcp(&d).expect("authentic on its hop");
            let mut done = false;
            for p in rtcp::packets(&clear).flatten() {
                done |= p.bytes == until;
                got.push(p.bytes.to_vec());
            }
            if done {
                return;
            }
        }
    })
    .await
    .expect("the marker arrives");
    got
}

/// SSRCs are unique in a call: a join whose offer lists SSRCs another participant sends is
/// refused `ssrc_in_use` (and counted), and the owner's media keeps reaching the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_claiming_an_owned_ssrc_is_refused_and_the_owners_media_keeps_flowing() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let media = relay.media_addr;
    let alice = raw_join(&url, &token(&cfg, "alice", None, "user"), "c").await;
    let mut a = alice.connect().await.expect("alice connects");
    let mut carol = raw_join(&url, &token(&cfg, "carol", None, "user"), "c").await;
    carol.answer_offer().await;
    let mut c = carol.connect().await.expect("carol connects");
    let seq = probe_until_forwarded(&mut a, alice.audio_ssrc, &mut c, media).await;

    // Mallory joins announcing alice's audio and video SSRCs.
    let mut mallory = hello(&url, &token(&cfg, "mallory", None, "user")).await;
    let identity = blindrelay_transport::DtlsIdentity::generate().expect("identity");
    let forged = sdp::build_offer(&sdp::OfferParams {
        ice_ufrag: "mallory",
        ice_pwd: "mallorypasswordmallory00",
        fingerprint: identity.fingerprint(),
        audio_ssrc: alice.audio_ssrc,
        video_ssrc: alice.video_ssrc,
        cname: "m",
        session_id: 9,
    });
    mallory
        .send(&ClientMessage::Join {
            call: "c".into(),
            e2ee_enabled: false,
            offer_sdp: forged,
            e2ee_scheme: Default::default(),
        })
        .await
        .expect("send join");
    match next_reply(&mut mallory).await {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::SsrcInUse),
        m => panic!("expected ssrc_in_use, got {m:?}"),
    }
    let m = scrape(&relay).await;
    assert_eq!(
        metric(&m, "blindrelay_joins_total{result=\"ssrc_in_use\"}"),
        1.0
    );

    // Alice's next packets still reach carol, each once, with alice's payload.
    owners_media_keeps_flowing(&mut a, alice.audio_ssrc, &mut c, media, seq).await;
    assert_eq!(
        metric(&scrape(&relay).await, &dropped("ssrc_not_owned")),
        0.0
    );
}

/// A participant's RTCP speaks only for itself: a BYE and an SR forged for another
/// participant's SSRC, and a 100 %-loss receiver report about a stream it is not sent,
/// reach nobody and are counted by reason; its own SR, sent after them, reaches both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_bye_sr_and_rr_for_another_participant_are_dropped_and_counted() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let alice = raw_join(&url, &token(&cfg, "alice", None, "user"), "c").await;
    let mut a = alice.connect().await.expect("alice connects");
    // Mallory has not answered the relay's offer: she is sent none of alice's media.
    let mallory = raw_join(&url, &token(&cfg, "mallory", None, "user"), "c").await;
    let mut m = mallory.connect().await.expect("mallory connects");
    let mut carol = raw_join(&url, &token(&cfg, "carol", None, "user"), "c").await;
    carol.answer_offer().await;
    let mut c = carol.connect().await.expect("carol connects");
    let before = scrape(&relay).await;

    let own = sender_report(mallory.audio_ssrc);
    for clear in [
        bye(alice.audio_ssrc),
        bye(alice.video_ssrc),
        sender_report(alice.audio_ssrc),
        rtcp::receiver_report(mallory.audio_ssrc, alice.audio_ssrc, 255, 100_000, 9).to_vec(),
        // Her own SR: forwarded, and a marker that everything before it was handled.
        own.clone(),
    ] {
        let wire = m.outbound.encrypt_rtcp(&clear).expect("protect");
        m.socket
            .send_to(&wire, relay.media_addr)
            .await
            .expect("send");
    }
    for (who, path) in [("carol", &mut c), ("alice", &mut a)] {
        let got = rtcp_until(path, &own).await;
        assert_eq!(
            got,
            std::slice::from_ref(&own),
            "{who} got only mallory's own SR"
        );
    }
    let after = await_metrics(&relay, Duration::from_secs(5), "drops counted", |m| {
        metric(m, &dropped("rtcp_ssrc_not_owned")) >= 3.0
    })
    .await;
    let delta = |r: &str| metric(&after, &dropped(r)) - metric(&before, &dropped(r));
    assert_eq!(delta("rtcp_ssrc_not_owned"), 3.0);
    assert_eq!(delta("rtcp_feedback_not_received"), 1.0);
}

/// On webrtc-srtp hops (`media.srtp = reference`), whose contexts keep state for every
/// SSRC they are shown: thousands of authentic packets with SSRCs their sender does not
/// own, and SRTCP in another participant's name, are each dropped and counted (the relay
/// checks the clear header before unprotecting), nothing of them reaches the others, and
/// the owner's media keeps flowing. (The forwarder's unit tests show the hop's state stays
/// at one SSRC.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unowned_ssrcs_on_a_webrtc_srtp_hop_is_dropped_and_counted() {
    let mut cfg = loopback_config();
    cfg.media.srtp = blindrelay::config::SrtpImpl::Reference;
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let media = relay.media_addr;
    let alice = raw_join(&url, &token(&cfg, "alice", None, "user"), "c").await;
    let mut a = alice.connect().await.expect("alice connects");
    let mallory = raw_join(&url, &token(&cfg, "mallory", None, "user"), "c").await;
    let mut m = mallory.connect().await.expect("mallory connects");
    let mut carol = raw_join(&url, &token(&cfg, "carol", None, "user"), "c").await;
    carol.answer_offer().await;
    let mut c = carol.connect().await.expect("carol connects");
    let first = probe_until_forwarded(&mut a, alice.audio_ssrc, &mut c, media).await;
    let before = scrape(&relay).await;

    let owned = [
        alice.audio_ssrc,
        alice.video_ssrc,
        mallory.audio_ssrc,
        mallory.video_ssrc,
        carol.audio_ssrc,
        carol.video_ssrc,
    ];
    const N: usize = 3000;
    let mut flood = Vec::with_capacity(N);
    while flood.len() < N {
        let s: u32 = rand::random();
        if !owned.contains(&s) && !flood.contains(&s) {
            flood.push(s);
        }
    }
    let grew = |m: &HashMap<String, f64>, r: &str| {
        metric_or_zero(m, &dropped(r)) - metric_or_zero(&before, &dropped(r))
    };
    // In chunks, each counted before the next is sent: the flood is about state, not
    // rate, and the kernel's receive buffer must not drop any of it.
    const CHUNK: usize = 500;
    for (k, chunk) in flood.chunks(CHUNK).enumerate() {
        for (i, ssrc) in chunk.iter().enumerate() {
            let wire = m
                .outbound
                .encrypt_rtp(&rtp_packet(*ssrc, (k * CHUNK + i) as u16, b"flood"))
                .expect("protect");
            m.socket.send_to(&wire, media).await.expect("send");
        }
        let sent = (k * CHUNK + chunk.len()) as f64;
        await_metrics(&relay, Duration::from_secs(10), "the flood counted", |m| {
            grew(m, "ssrc_not_owned") >= sent
        })
        .await;
    }
    const FORGED_SR: usize = 50;
    for _ in 0..FORGED_SR {
        let wire = m
            .outbound
            .encrypt_rtcp(&sender_report(alice.audio_ssrc))
            .expect("protect");
        m.socket.send_to(&wire, media).await.expect("send");
    }
    let after = await_metrics(&relay, Duration::from_secs(10), "forged SRs counted", |m| {
        grew(m, "rtcp_ssrc_not_owned") >= FORGED_SR as f64
    })
    .await;
    let delta = |r: &str| grew(&after, r);
    assert_eq!(delta("ssrc_not_owned"), N as f64);
    assert_eq!(delta("rtcp_ssrc_not_owned"), FORGED_SR as f64);
    for r in ["srtp_auth_failed", "srtp_malformed", "srtp_replay"] {
        assert_eq!(delta(r), 0.0, "{r}");
    }
    // Alice's media still reaches carol, and nothing of the flood did.
    let next = a
        .outbound
        .encrypt_rtp(&rtp_packet(alice.audio_ssrc, first + 1, b"after"))
        .expect("protect");
    a.socket.send_to(&next, media).await.expect("send");
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let (d, rtcp) = c.media_rx.recv().await.expect("media");
            if rtcp {
                continue;
            }
            let ssrc = seq_ssrc(&d).map(|(_, s)| s);
            assert!(
                !ssrc.is_some_and(|s| flood.contains(&s)),
                "a flood packet reached carol"
            );
            if c.inbound
                .decrypt_rtp(&d)
                .is_ok_and(|p| p.ends_with(b"after"))
            {
                return;
            }
        }
    })
    .await
    .expect("alice's media still reaches carol");
    drop((a, m, c));
    relay.shutdown().await;
}

/// A PLI flood (200 in about a second) toward a media sender reaches it at most once per
/// 250 ms; the rest are counted as coalesced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pli_flood_reaches_the_sender_at_the_limited_rate() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let media = relay.media_addr;
    let alice = raw_join(&url, &token(&cfg, "alice", None, "user"), "c").await;
    let mut a = alice.connect().await.expect("alice connects");
    let mut carol = raw_join(&url, &token(&cfg, "carol", None, "user"), "c").await;
    carol.answer_offer().await;
    let mut c = carol.connect().await.expect("carol connects");
    // Carol is sent alice's media, so she may ask for alice's keyframes.
    probe_until_forwarded(&mut a, alice.audio_ssrc, &mut c, media).await;

    const N: usize = 200;
    let pli = rtcp::pli(carol.video_ssrc, alice.video_ssrc);
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for _ in 0..N {
        tick.tick().await;
        let wire = c.outbound.encrypt_rtcp(&pli).expect("protect");
        c.socket.send_to(&wire, media).await.expect("send");
    }
    let elapsed = start.elapsed();
    // Every PLI is either delivered to alice or counted as coalesced.
    let mut delivered = 0usize;
    let limited = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let limited = metric(&scrape(&relay).await, &dropped("keyframe_request_limited"));
            if limited as usize + delivered >= N {
                return limited as usize;
            }
            if let Ok(Some((d, true))) =
                tokio::time::timeout(Duration::from_millis(50), a.media_rx.recv()).await
            {
                let clear = a.inbound.decrypt_rtcp(&d).expect("authentic");
                delivered += rtcp::packets(&clear)
                    .flatten()
                    .filter(|p| p.bytes == pli)
                    .count();
            }
        }
    })
    .await
    .expect("every PLI delivered or counted");
    assert_eq!(limited + delivered, N);
    // The relay stamps arrivals; allow one more interval for the spread of the queueing.
    let bound = 2 + elapsed.as_millis() as usize / 250;
    assert!(
        (1..=bound).contains(&delivered),
        "{delivered} PLIs in {elapsed:?} reached alice (at most {bound})"
    );
}

/// A FIR (RFC 5104 §4.3.1) from `sender` asking `media` for a keyframe.
fn fir(sender: u32, media: u32, seq: u8) -> Vec<u8> {
    let mut p = vec![0x84, rtcp::PT_PSFB, 0, 4];
    p.extend_from_slice(&sender.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(&media.to_be_bytes());
    p.extend_from_slice(&[seq, 0, 0, 0]);
    p
}

/// A generic NACK from `sender` about `media` with `entries` lost-packet entries (each
/// asking for 17 packets).
fn nack_storm(sender: u32, media: u32, entries: u16) -> Vec<u8> {
    let mut p = vec![0x81, rtcp::PT_RTPFB, 0, 0];
    p.extend_from_slice(&sender.to_be_bytes());
    p.extend_from_slice(&media.to_be_bytes());
    for i in 0..entries {
        p.extend_from_slice(&(i * 17).to_be_bytes());
        p.extend_from_slice(&[0xff, 0xff]);
    }
    let words = (p.len() / 4 - 1) as u16;
    p[2..4].copy_from_slice(&words.to_be_bytes());
    p
}

/// A FIR flood and a NACK storm from one receiver toward a media sender: the FIRs reach
/// it at the keyframe-request rate, the NACKs within the receiver's NACK budget, and
/// every one held back is counted by its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fir_and_nack_floods_are_limited_and_counted() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let media = relay.media_addr;
    let alice = raw_join(&url, &token(&cfg, "alice", None, "user"), "c").await;
    let mut a = alice.connect().await.expect("alice connects");
    let mut carol = raw_join(&url, &token(&cfg, "carol", None, "user"), "c").await;
    carol.answer_offer().await;
    let mut c = carol.connect().await.expect("carol connects");
    probe_until_forwarded(&mut a, alice.audio_ssrc, &mut c, media).await;

    // Sends `n` packets from carol, one every 2 ms, then counts what reaches alice (equal
    // to one of them) until every packet is delivered or counted under `reason`.
    async fn flood(
        relay: &blindrelay::Relay,
        a: &mut MediaPath,
        c: &mut MediaPath,
        media: std::net::SocketAddr,
        packets: &[Vec<u8>],
        reason: &str,
    ) -> (usize, usize, Duration) {
        let before = metric_or_zero(&scrape(relay).await, &dropped(reason)) as usize;
        let start = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        for p in packets {
            tick.tick().await;
            let wire = c.outbound.encrypt_rtcp(p).expect("protect");
            c.socket.send_to(&wire, media).await.expect("send");
        }
        let elapsed = start.elapsed();
        let mut delivered = 0usize;
        let limited = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let limited =
                    metric_or_zero(&scrape(relay).await, &dropped(reason)) as usize - before;
                if limited + delivered >= packets.len() {
                    return limited;
                }
                if let Ok(Some((d, true))) =
                    tokio::time::timeout(Duration::from_millis(50), a.media_rx.recv()).await
                {
                    let clear = a.inbound.decrypt_rtcp(&d).expect("authentic");
                    delivered += rtcp::packets(&clear)
                        .flatten()
                        .filter(|p| packets.iter().any(|q| p.bytes == &q[..]))
                        .count();
                }
            }
        })
        .await
        .expect("every packet delivered or counted");
        assert_eq!(limited + delivered, packets.len());
        (delivered, limited, elapsed)
    }

    // 250 FIRs (distinct sequence numbers, as a real FIR sender numbers them).
    let firs: Vec<Vec<u8>> = (0..250u32)
        .map(|i| fir(carol.video_ssrc, alice.video_ssrc, i as u8))
        .collect();
    let (delivered, _, elapsed) = flood(
        &relay,
        &mut a,
        &mut c,
        media,
        &firs,
        "keyframe_request_limited",
    )
    .await;
    let bound = 2 + elapsed.as_millis() as usize / 250;
    assert!(
        (1..=bound).contains(&delivered),
        "{delivered} FIRs in {elapsed:?} reached alice (at most {bound})"
    );

    // 300 NACKs of 100 entries (a 123 KB storm): the burst of 500 entries, then 500 a
    // second.
    let storm: Vec<Vec<u8>> = (0..300)
        .map(|_| nack_storm(carol.audio_ssrc, alice.audio_ssrc, 100))
        .collect();
    let (delivered, limited, elapsed) =
        flood(&relay, &mut a, &mut c, media, &storm, "nack_limited").await;
    let bound = (500 + 500 * (elapsed.as_millis() as usize + 250) / 1000) / 100;
    assert!(
        (5..=bound).contains(&delivered),
        "{delivered} NACKs of 100 entries in {elapsed:?} reached alice (at most {bound})"
    );
    assert!(limited >= 300 - bound);
    relay.shutdown().await;
}

/// SSRCs stay unique after the join too: an answer to a renegotiation offer that lists
/// another participant's SSRC is refused `ssrc_in_use` (counted), the offer stays
/// outstanding so a clean answer settles it, and the owner's media keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_claiming_an_owned_ssrc_is_refused_and_the_owners_media_keeps_flowing() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let media = relay.media_addr;
    let alice = raw_join(&url, &token(&cfg, "alice", None, "user"), "c").await;
    let mut a = alice.connect().await.expect("alice connects");
    let mut carol = raw_join(&url, &token(&cfg, "carol", None, "user"), "c").await;
    carol.answer_offer().await;
    let mut c = carol.connect().await.expect("carol connects");
    let seq = probe_until_forwarded(&mut a, alice.audio_ssrc, &mut c, media).await;

    // Mallory joins with SSRCs of her own, then answers the relay's offer (alice's and
    // carol's tracks) listing alice's audio SSRC as one she sends from.
    let mut mallory = raw_join(&url, &token(&cfg, "mallory", None, "user"), "c").await;
    let _m = mallory.connect().await.expect("mallory connects");
    let Some(ServerMessage::Offer {
        sdp: offer,
        revision,
    }) = mallory
        .wait_for(Duration::from_secs(5), |m| {
            matches!(m, ServerMessage::Offer { .. })
        })
        .await
    else {
        panic!("no offer for mallory");
    };
    let clean = sdp::answer_relay_offer(
        &offer,
        &mallory.ufrag,
        "rawpasswordrawpassword00",
        mallory.offer_identity.fingerprint(),
    )
    .expect("answerable");
    let at = clean.find("a=mid:r0\r\n").expect("a remote line") + "a=mid:r0\r\n".len();
    let forged = format!(
        "{}a=ssrc:{} cname:m\r\n{}",
        &clean[..at],
        alice.audio_ssrc,
        &clean[at..]
    );
    mallory
        .sig
        .send(&ClientMessage::Answer {
            sdp: forged,
            revision,
        })
        .await
        .expect("send answer");
    match mallory
        .wait_for(Duration::from_secs(5), |m| {
            matches!(m, ServerMessage::Error { .. })
        })
        .await
    {
        Some(ServerMessage::Error { code, .. }) => assert_eq!(code, ErrorCode::SsrcInUse),
        m => panic!("expected ssrc_in_use, got {m:?}"),
    }
    await_metrics(&relay, Duration::from_secs(5), "the refusal counted", |m| {
        metric_or_zero(
            m,
            "blindrelay_signalling_errors_total{code=\"ssrc_in_use\"}",
        ) == 1.0
    })
    .await;
    // The offer is still outstanding: the clean answer to it is taken without a word.
    mallory
        .sig
        .send(&ClientMessage::Answer {
            sdp: clean,
            revision,
        })
        .await
        .expect("send answer");

    // Alice's packets keep reaching carol, each once, with alice's payload.
    owners_media_keeps_flowing(&mut a, alice.audio_ssrc, &mut c, media, seq).await;
    let m = scrape(&relay).await;
    assert_eq!(metric(&m, &dropped("ssrc_not_owned")), 0.0);
    assert_eq!(
        metric_or_zero(
            &m,
            "blindrelay_signalling_errors_total{code=\"ssrc_in_use\"}"
        ),
        1.0,
        "the clean answer was taken"
    );
    relay.shutdown().await;
}
