//! Malformed and unauthorised signalling gets a typed error, never a crash, and the
//! connection stays usable.

use blindrelay::token::Claims;
use blindrelay::RelayOptions;
use blindrelay_protocol::signal::{ClientMessage, ErrorCode, ServerMessage, MAX_MESSAGE_BYTES};
use blindrelay_tests::*;
use e2ee_client::signal::Signal;

async fn expect_error(sig: &mut Signal, want: ErrorCode) {
    match sig.recv().await.expect("reply") {
        ServerMessage::Error { code, message } => {
            assert_eq!(code, want, "message: {message}");
            assert!(!message.is_empty());
        }
        m => panic!("expected error {want:?}, got {m:?}"),
    }
}

fn expired_token(secret: &str) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let c = Claims {
        sub: "alice".into(),
        tenant: "t".into(),
        role: "user".into(),
        call: None,
        exp: now - 3600,
        iat: now - 7200,
        nbf: None,
        cnf: None,
    };
    encode(
        &Header::default(),
        &c,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_typed_errors_and_the_connection_survives() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let mut sig = Signal::connect(&relay.signal_url()).await.expect("connect");

    sig.send_raw("{not json".into()).await.expect("send");
    expect_error(&mut sig, ErrorCode::BadRequest).await;
    sig.send_raw(r#"{"type":"teleport"}"#.into())
        .await
        .expect("send");
    expect_error(&mut sig, ErrorCode::UnknownMessage).await;
    sig.send_raw(r#"{"type":"join"}"#.into())
        .await
        .expect("send");
    expect_error(&mut sig, ErrorCode::BadRequest).await;
    sig.send_raw(format!(
        r#"{{"type":"chat","body":"{}"}}"#,
        "x".repeat(MAX_MESSAGE_BYTES + 10)
    ))
    .await
    .expect("send");
    expect_error(&mut sig, ErrorCode::MessageTooLarge).await;
    sig.send(&ClientMessage::Join {
        call: "demo".into(),
        e2ee_enabled: false,
        offer_sdp: "v=0".into(),
        e2ee_scheme: Default::default(),
    })
    .await
    .expect("send");
    expect_error(&mut sig, ErrorCode::NotAuthenticated).await;
    sig.send(&ClientMessage::Hello {
        token: "garbage.token.here".into(),
    })
    .await
    .expect("send");
    expect_error(&mut sig, ErrorCode::Unauthorized).await;
    let forged = blindrelay::token::issue(
        "some-other-secret-0123",
        "alice",
        "t",
        "user",
        None,
        std::time::Duration::from_secs(60),
    )
    .expect("issue");
    sig.send(&ClientMessage::Hello { token: forged })
        .await
        .expect("send");
    expect_error(&mut sig, ErrorCode::Unauthorized).await;
    sig.send(&ClientMessage::Hello {
        token: expired_token(&cfg.auth.api_secret),
    })
    .await
    .expect("send");
    expect_error(&mut sig, ErrorCode::TokenExpired).await;

    // Now a good token: the same connection works.
    sig.send(&ClientMessage::Hello {
        token: token(&cfg, "alice", Some("demo"), "user"),
    })
    .await
    .expect("send");
    assert!(matches!(
        sig.recv().await.expect("caps"),
        ServerMessage::Capabilities { .. }
    ));
    sig.send(&ClientMessage::Join {
        call: "other".into(),
        e2ee_enabled: false,
        offer_sdp: "v=0".into(),
        e2ee_scheme: Default::default(),
    })
    .await
    .expect("send");
    expect_error(&mut sig, ErrorCode::WrongCall).await;
    sig.send(&ClientMessage::Join {
        call: "demo".into(),
        e2ee_enabled: false,
        offer_sdp: "v=0\r\nnonsense".into(),
        e2ee_scheme: Default::default(),
    })
    .await
    .expect("send");
    expect_error(&mut sig, ErrorCode::BadSdp).await;
    sig.send(&ClientMessage::E2ee {
        to: "p-x".into(),
        blob: "b".into(),
    })
    .await
    .expect("send");
    expect_error(&mut sig, ErrorCode::NotJoined).await;
    sig.send(&ClientMessage::Leave).await.expect("send");
    expect_error(&mut sig, ErrorCode::NotJoined).await;

    let m = scrape(&relay).await;
    assert_eq!(
        metric(
            &m,
            "blindrelay_signalling_errors_total{code=\"bad_request\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "blindrelay_signalling_errors_total{code=\"unauthorized\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(&m, "blindrelay_joins_total{result=\"wrong_call\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "blindrelay_joins_total{result=\"bad_sdp\"}"),
        1.0
    );
    let (status, body) = http_get(relay.admin_addr, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, _) = http_get(relay.admin_addr, "/readyz").await;
    assert_eq!(status, 200);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2ee_blobs_relay_opaquely_and_leave_notifies_the_peer() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let mut a = raw_join(&url, &token(&cfg, "alice", None, "user"), "c").await;
    let mut b = raw_join(&url, &token(&cfg, "bob", None, "user"), "c").await;
    assert!(a
        .wait_for(std::time::Duration::from_secs(2), |m| matches!(
            m,
            ServerMessage::ParticipantJoined { .. }
        ))
        .await
        .is_some());
    let blob = "opaque \u{1F512} blob with any bytes: {\"not\":\"parsed\"}";
    a.sig
        .send(&ClientMessage::E2ee {
            to: b.me.clone(),
            blob: blob.into(),
        })
        .await
        .expect("send");
    let got = b
        .wait_for(std::time::Duration::from_secs(2), |m| {
            matches!(m, ServerMessage::E2ee { .. })
        })
        .await;
    assert_eq!(
        got,
        Some(ServerMessage::E2ee {
            from: a.me.clone(),
            blob: blob.into()
        })
    );
    a.sig
        .send(&ClientMessage::E2ee {
            to: "p-nobody".into(),
            blob: "x".into(),
        })
        .await
        .expect("send");
    assert!(matches!(
        a.wait_for(std::time::Duration::from_secs(2), |m| matches!(
            m,
            ServerMessage::Error { .. }
        ))
        .await,
        Some(ServerMessage::Error {
            code: ErrorCode::UnknownParticipant,
            ..
        })
    ));
    a.sig.send(&ClientMessage::Leave).await.expect("send");
    let left = b
        .wait_for(std::time::Duration::from_secs(2), |m| {
            matches!(m, ServerMessage::ParticipantLeft { .. })
        })
        .await;
    assert_eq!(
        left,
        Some(ServerMessage::ParticipantLeft {
            participant: a.me.clone(),
            reason: "left".into()
        })
    );
    // Closing the socket without a word removes the participant too.
    let bob_id = b.me.clone();
    let mut c = raw_join(&url, &token(&cfg, "carol", None, "user"), "c").await;
    drop(b);
    let left = c
        .wait_for(std::time::Duration::from_secs(3), |m| {
            matches!(m, ServerMessage::ParticipantLeft { .. })
        })
        .await;
    assert_eq!(
        left,
        Some(ServerMessage::ParticipantLeft {
            participant: bob_id,
            reason: "signalling_lost".into()
        })
    );
    relay.shutdown().await;
}

/// A join whose offer has 880 m-lines (57 KB, within the message limit) is refused
/// `too_many_tracks` before the relay sets anything up for it, and nobody is disconnected:
/// the members keep their sessions, the refused connection joins with a normal offer,
/// and the members' next offers (its tracks) arrive and are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_with_880_m_lines_is_refused_and_nobody_is_disconnected() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    let mut alice = raw_join(&url, &token(&cfg, "alice", None, "user"), "c").await;
    let mut bob = raw_join(&url, &token(&cfg, "bob", None, "user"), "c").await;
    alice.answer_offer().await;
    bob.answer_offer().await;

    let mut mallory = hello(&url, &token(&cfg, "mallory", None, "user")).await;
    let identity = blindrelay_transport::DtlsIdentity::generate().expect("identity");
    let mut huge = format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-ufrag:mal\r\n\
         a=ice-pwd:malpasswordmalpassword00\r\na=fingerprint:{}\r\na=rtcp-mux\r\n",
        identity.fingerprint().to_sdp_value()
    );
    for i in 0..880u32 {
        let kind = if i % 2 == 0 {
            "audio 9 UDP/TLS/RTP/SAVPF 111"
        } else {
            "video 9 UDP/TLS/RTP/SAVPF 96"
        };
        huge += &format!("m={kind}\r\na=mid:{i}\r\na=ssrc:{} cname:m\r\n", 90_000 + i);
    }
    let join = ClientMessage::Join {
        call: "c".into(),
        e2ee_enabled: false,
        offer_sdp: huge,
        e2ee_scheme: Default::default(),
    };
    let bytes = serde_json::to_string(&join).expect("serializes").len();
    assert!(
        (50_000..MAX_MESSAGE_BYTES).contains(&bytes),
        "a join of {bytes} bytes: within the message limit"
    );
    mallory.send(&join).await.expect("send");
    expect_error(&mut mallory, ErrorCode::TooManyTracks).await;

    // The refused connection is still signed in and may join with a normal offer.
    mallory
        .send(&ClientMessage::Join {
            call: "c".into(),
            e2ee_enabled: false,
            offer_sdp: offer(&identity, "mal", 77),
            e2ee_scheme: Default::default(),
        })
        .await
        .expect("send");
    match next_reply(&mut mallory).await {
        ServerMessage::Joined { participants, .. } => assert_eq!(participants.len(), 2),
        m => panic!("expected joined, got {m:?}"),
    }
    // The members renegotiate with the newcomer; none of their lines went inactive.
    for m in [&mut alice, &mut bob] {
        let offer = m
            .wait_for(std::time::Duration::from_secs(5), |msg| {
                matches!(msg, ServerMessage::Offer { .. })
            })
            .await;
        let Some(ServerMessage::Offer { sdp, revision }) = offer else {
            panic!("a member's next offer did not arrive");
        };
        assert_eq!(sdp.matches("a=sendonly").count(), 4, "{sdp}");
        assert!(!sdp.contains("a=inactive"), "{sdp}");
        m.answer(&sdp, revision).await;
    }
    let m = scrape(&relay).await;
    assert_eq!(
        metric(&m, "blindrelay_joins_total{result=\"too_many_tracks\"}"),
        1.0
    );
    assert_eq!(metric(&m, "blindrelay_joins_total{result=\"ok\"}"), 3.0);
    // Nobody removed, no connection closed.
    for prefix in [
        "blindrelay_participants_removed_total",
        "blindrelay_signalling_closed_total",
    ] {
        let n: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(n, 0.0, "{prefix}");
    }
}
