//! The relay is ICE-lite: the first valid check binds a participant's address, and after
//! that the controlling agent's nomination (USE-CANDIDATE, RFC 8445 §7.3.1.5) moves it. A
//! real relay on loopback, participants with real DTLS-SRTP, raw STUN checks from sockets
//! of their own:
//!
//! - a participant whose agent checks one pair and then nominates another (what Chromium
//!   does under loss) completes DTLS and sends and receives SRTP on the nominated one;
//! - a participant already keyed follows a later nomination: its media from the new
//!   address is forwarded and the others' media is sent there;
//! - a check from another address without USE-CANDIDATE is answered and moves nothing;
//! - a nomination from an address another participant holds takes nothing from it.

use blindrelay::RelayOptions;
use blindrelay_protocol::demux::{classify, PacketKind};
use blindrelay_protocol::stun::{StunMessage, StunWriter, BINDING_REQUEST, BINDING_SUCCESS};
use blindrelay_tests::*;
use blindrelay_transport::webrtc_srtp::context::Context;
use bytes::Bytes;
use e2ee_client::transport::MediaPath;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const MOVES: &str = "blindrelay_ice_nominated_moves_total";

fn dropped(reason: &str) -> String {
    format!("blindrelay_packets_dropped_total{{reason=\"{reason}\"}}")
}

/// A binding request with `p`'s credentials, as its controlling agent sends them; with
/// USE-CANDIDATE when `nominate`.
fn binding_request(p: &RawParticipant, nominate: bool) -> ([u8; 12], Vec<u8>) {
    let txid: [u8; 12] = rand::random();
    let mut w = StunWriter::new(BINDING_REQUEST, &txid);
    w.username(&format!("{}:{}", p.answer.ice_ufrag, p.ufrag))
        .priority((110 << 24) | (65535 << 8) | 255)
        .ice_controlling(7);
    if nominate {
        w.use_candidate();
    }
    let msg = w
        .integrity(p.answer.ice_pwd.as_bytes())
        .finish_with_fingerprint();
    (txid, msg)
}

/// A check from `sock` with `p`'s credentials, sent until the relay answers it (a success
/// response that authenticates with the relay's password): the relay has handled it.
async fn check(sock: &UdpSocket, p: &RawParticipant, relay: SocketAddr, nominate: bool) {
    let (txid, req) = binding_request(p, nominate);
    let mut buf = [0u8; 1500];
    for _ in 0..25 {
        sock.send_to(&req, relay).await.expect("send check");
        let answered = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                let (n, _) = sock.recv_from(&mut buf).await.expect("recv");
                let Ok(m) = StunMessage::parse(&buf[..n]) else {
                    continue;
                };
                if m.msg_type == BINDING_SUCCESS
                    && m.transaction_id == txid
                    && m.verify_integrity(p.answer.ice_pwd.as_bytes()).is_ok()
                {
                    return;
                }
            }
        })
        .await;
        if answered.is_ok() {
            return;
        }
    }
    panic!("the relay never answered the check");
}

/// Where a participant's media arrives: its client's queue, or a socket the test reads.
enum Rx<'a> {
    Path(&'a mut mpsc::Receiver<(Bytes, bool)>),
    Socket(&'a UdpSocket),
}

impl Rx<'_> {
    /// The next SRTP datagram.
    async fn next_rtp(&mut self) -> Bytes {
        loop {
            match self {
                Rx::Path(rx) => match rx.recv().await.expect("media") {
                    (d, false) => return d,
                    (_, true) => continue,
                },
                Rx::Socket(s) => {
                    let mut buf = vec![0u8; 2048];
                    let (n, _) = s.recv_from(&mut buf).await.expect("recv");
                    buf.truncate(n);
                    if classify(&buf) == PacketKind::Rtp {
                        return buf.into();
                    }
                }
            }
        }
    }
}

/// One direction of a call: RTP sealed with `tx` goes from `sock` to the relay, and the
/// receiver opens what reaches it with `rx`.
struct Leg<'a> {
    sock: &'a UdpSocket,
    tx: &'a mut Context,
    ssrc: u32,
    to: Rx<'a>,
    rx: &'a mut Context,
}

/// Send RTP on `leg` (sequence numbers from `seq` on) until one reaches its receiver and
/// opens there with the payload sent: the relay forwards on that leg. Resent, since the
/// relay drops packets until the receiver's forwarding loop holds both ends.
async fn flows(leg: Leg<'_>, relay: SocketAddr, seq: &mut u16, what: &str) {
    let Leg {
        sock,
        tx,
        ssrc,
        mut to,
        rx,
    } = leg;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: nothing forwarded"
        );
        *seq += 1;
        let payload = format!("{what} {seq}");
        let wire = tx
            .encrypt_rtp(&rtp_packet(ssrc, *seq, payload.as_bytes()))
            .expect("protect");
        sock.send_to(&wire, relay).await.expect("send");
        let arrived = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                let d = to.next_rtp().await;
                if rx
                    .decrypt_rtp(&d)
                    .is_ok_and(|p| p.ends_with(payload.as_bytes()))
                {
                    return;
                }
            }
        })
        .await;
        if arrived.is_ok() {
            return;
        }
    }
}

/// RTP flows from `from`'s media path to `to`'s, both on the pairs they were keyed on
/// (see [`flows`]).
async fn between(
    from: &mut MediaPath,
    to: &mut MediaPath,
    ssrc: u32,
    relay: SocketAddr,
    seq: &mut u16,
    what: &str,
) {
    let leg = Leg {
        sock: &from.socket,
        tx: &mut from.outbound,
        ssrc,
        to: Rx::Path(&mut to.media_rx),
        rx: &mut to.inbound,
    };
    flows(leg, relay, seq, what).await;
}

/// Alice and bob in one call, each answering the relay's offer of the other's tracks.
async fn two(
    relay: &blindrelay::Relay,
    cfg: &blindrelay::config::Config,
) -> (RawParticipant, RawParticipant) {
    let url = relay.signal_url();
    let mut alice = raw_join(&url, &token(cfg, "alice", None, "user"), "c").await;
    let mut bob = raw_join(&url, &token(cfg, "bob", None, "user"), "c").await;
    alice.answer_offer().await;
    bob.answer_offer().await;
    (alice, bob)
}

async fn loopback_socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.expect("bind")
}

/// Chromium under loss: its agent's check on one pair gets through first (no
/// USE-CANDIDATE, so the relay binds it as the first valid check), then it nominates
/// another pair and runs DTLS and SRTP there. The relay moves alice to the nominated
/// pair: her handshake completes there, her media is forwarded and bob's reaches her,
/// and nothing is dropped as from an unknown source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nominated_pair_carries_dtls_and_srtp() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let media = relay.media_addr;
    let (alice, bob) = two(&relay, &cfg).await;
    let mut b = bob.connect().await.expect("bob connects");

    let first = loopback_socket().await;
    check(&first, &alice, media, false).await;
    // e2ee-client's agent nominates (USE-CANDIDATE) from a socket of its own.
    let mut a = alice
        .connect()
        .await
        .expect("alice's handshake completes on the nominated pair");

    let (mut sa, mut sb) = (0, 0);
    between(
        &mut a,
        &mut b,
        alice.audio_ssrc,
        media,
        &mut sa,
        "alice to bob",
    )
    .await;
    between(
        &mut b,
        &mut a,
        bob.audio_ssrc,
        media,
        &mut sb,
        "bob to alice",
    )
    .await;

    let m = scrape(&relay).await;
    assert_eq!(metric(&m, MOVES), 1.0);
    assert_eq!(metric(&m, &dropped("unknown_source")), 0.0);
    assert_eq!(metric(&m, &dropped("dtls_unknown_source")), 0.0);
    // The first pair got its check's answer and nothing since.
    let mut buf = [0u8; 2048];
    assert!(
        first.try_recv_from(&mut buf).is_err(),
        "sent to the old pair"
    );
    relay.shutdown().await;
}

/// A participant keyed on one pair whose agent later nominates another: its SRTP from
/// the new address (same keys) is forwarded, and the others' media goes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_participant_follows_a_later_nomination() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let media = relay.media_addr;
    let (alice, bob) = two(&relay, &cfg).await;
    let mut a = alice.connect().await.expect("alice connects");
    let mut b = bob.connect().await.expect("bob connects");
    let (mut sa, mut sb) = (0, 0);
    between(
        &mut a,
        &mut b,
        alice.audio_ssrc,
        media,
        &mut sa,
        "alice to bob",
    )
    .await;
    between(
        &mut b,
        &mut a,
        bob.audio_ssrc,
        media,
        &mut sb,
        "bob to alice",
    )
    .await;
    // Her client's consent checks (which nominate) would move her back: stop them.
    a.stop_background();

    let second = loopback_socket().await;
    check(&second, &alice, media, true).await;
    let leg = Leg {
        sock: &second,
        tx: &mut a.outbound,
        ssrc: alice.audio_ssrc,
        to: Rx::Path(&mut b.media_rx),
        rx: &mut b.inbound,
    };
    flows(leg, media, &mut sa, "alice to bob, moved").await;
    let leg = Leg {
        sock: &b.socket,
        tx: &mut b.outbound,
        ssrc: bob.audio_ssrc,
        to: Rx::Socket(&second),
        rx: &mut a.inbound,
    };
    flows(leg, media, &mut sb, "bob to alice, moved").await;

    let m = scrape(&relay).await;
    assert_eq!(metric(&m, MOVES), 1.0);
    assert_eq!(metric(&m, &dropped("unknown_source")), 0.0);
    relay.shutdown().await;
}

/// The negative control: a valid check from another address without USE-CANDIDATE is
/// answered, and moves nothing. Alice's SRTP from there is dropped as from an unknown
/// source; from her bound address it is forwarded, and bob's media still reaches her
/// there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_without_use_candidate_moves_nothing() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let media = relay.media_addr;
    let (alice, bob) = two(&relay, &cfg).await;
    let mut a = alice.connect().await.expect("alice connects");
    let mut b = bob.connect().await.expect("bob connects");
    let (mut sa, mut sb) = (0, 0);
    between(
        &mut a,
        &mut b,
        alice.audio_ssrc,
        media,
        &mut sa,
        "alice to bob",
    )
    .await;

    let other = loopback_socket().await;
    check(&other, &alice, media, false).await;
    sa += 1;
    let stray = a
        .outbound
        .encrypt_rtp(&rtp_packet(alice.audio_ssrc, sa, b"from the other pair"))
        .expect("protect");
    other.send_to(&stray, media).await.expect("send");
    await_metrics(
        &relay,
        Duration::from_secs(5),
        "SRTP from the unnominated pair dropped",
        |m| series(m, &dropped("unknown_source")).is_some_and(|v| v >= 1.0),
    )
    .await;

    between(
        &mut a,
        &mut b,
        alice.audio_ssrc,
        media,
        &mut sa,
        "alice to bob, still",
    )
    .await;
    between(
        &mut b,
        &mut a,
        bob.audio_ssrc,
        media,
        &mut sb,
        "bob to alice, still",
    )
    .await;

    let m = scrape(&relay).await;
    assert_eq!(metric(&m, MOVES), 0.0);
    assert_eq!(metric(&m, &dropped("unknown_source")), 1.0);
    let mut buf = [0u8; 2048];
    assert!(
        other.try_recv_from(&mut buf).is_err(),
        "sent to the unnominated pair"
    );
    relay.shutdown().await;
}

/// A nomination with bob's credentials from the address alice is bound to (as bob could
/// send with a forged source address) moves no one: alice's media from there is still
/// hers, and each still receives at its own address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nomination_from_anothers_address_takes_nothing() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let media = relay.media_addr;
    let (alice, bob) = two(&relay, &cfg).await;
    let mut a = alice.connect().await.expect("alice connects");
    let mut b = bob.connect().await.expect("bob connects");
    let (mut sa, mut sb) = (0, 0);
    between(
        &mut a,
        &mut b,
        alice.audio_ssrc,
        media,
        &mut sa,
        "alice to bob",
    )
    .await;

    // The relay answers it (to alice's socket, whose client reads and drops it); the
    // media sent after it from the same socket is handled after it.
    let (_, forged) = binding_request(&bob, true);
    a.socket.send_to(&forged, media).await.expect("send");
    between(
        &mut a,
        &mut b,
        alice.audio_ssrc,
        media,
        &mut sa,
        "alice to bob, after",
    )
    .await;
    between(
        &mut b,
        &mut a,
        bob.audio_ssrc,
        media,
        &mut sb,
        "bob to alice",
    )
    .await;
    between(
        &mut a,
        &mut b,
        alice.audio_ssrc,
        media,
        &mut sa,
        "alice to bob, again",
    )
    .await;

    let m = scrape(&relay).await;
    assert_eq!(metric(&m, MOVES), 0.0);
    assert_eq!(metric(&m, &dropped("unknown_source")), 0.0);
    relay.shutdown().await;
}
