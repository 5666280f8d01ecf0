//! Shutdown sends every connected peer a DTLS close_notify and tells readiness probes; a
//! client cut off by it says so.

use blindrelay::RelayOptions;
use blindrelay_tests::*;
use e2ee_client::call::{run_call, CallOptions};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_close_notify_to_peers() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let raw = raw_join(
        &relay.signal_url(),
        &token(&cfg, "alice", None, "user"),
        "c",
    )
    .await;
    let path = raw.connect().await.expect("connect");
    let dtls = path.dtls.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 1500];
        // Returns once the association ends; Err after a close_notify alert.
        dtls.read(&mut buf, None).await
    });
    // The client's side is up; wait until the relay's is too (it records the join's
    // duration when the participant's media path is keyed), so shutdown has a peer to
    // send close_notify to.
    await_metrics(&relay, Duration::from_secs(5), "relay keyed the hop", |m| {
        metric(m, "blindrelay_join_duration_seconds_count") >= 1.0
    })
    .await;
    assert!(!reader.is_finished(), "association is up before shutdown");
    relay.shutdown().await;
    let ended = tokio::time::timeout(Duration::from_secs(3), reader).await;
    let result = ended
        .expect("peer saw the association end within 3 s")
        .expect("reader task");
    let err = result.expect_err("read ends with the close alert");
    let text = err.to_string().to_lowercase();
    eprintln!("peer read ended with: {text}");
    assert!(text.contains("close notify"), "{text}");
    drop(path);
}

/// An e2ee-client whose signalling ends before its `--duration` does not pass it off as a
/// normal end: `left_reason` and `error` are `signalling_lost`, so the CLI exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_before_its_duration_says_signalling_lost() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let mut watch = watch_signal(&relay).await;
    let opts = |user: &str| CallOptions {
        relay: watch.url.clone(),
        token: token(&cfg, user, Some("cut"), "user"),
        call: "cut".into(),
        duration: Duration::from_secs(60),
        video_kbps: 200,
        name: user.into(),
        ..Default::default()
    };
    let (a, b) = (opts("alice"), opts("bob"));
    let started = Instant::now();
    let clients = tokio::spawn(async move { tokio::join!(run_call(&a), run_call(&b)) });
    watch.wait_for("joined", 2, Duration::from_secs(10)).await;
    // Both media paths up and forwarding before the cut.
    await_metrics(&relay, Duration::from_secs(10), "media forwarded", |m| {
        metric(m, "blindrelay_join_duration_seconds_count") >= 2.0
            && metric(m, "blindrelay_packets_forwarded_total{kind=\"rtp\"}") >= 200.0
    })
    .await;
    relay.shutdown().await;
    let (sa, sb) = tokio::time::timeout(Duration::from_secs(15), clients)
        .await
        .expect("clients end soon after the relay, not at their duration")
        .expect("client tasks");
    assert!(started.elapsed() < Duration::from_secs(40));
    for s in [&sa, &sb] {
        assert!(s.joined && s.received_packets > 0, "{s:?}");
        assert_eq!(s.left_reason.as_deref(), Some("signalling_lost"), "{s:?}");
        assert_eq!(
            s.error.as_ref().map(|e| e.code.as_str()),
            Some("signalling_lost"),
            "{s:?}"
        );
        assert!(!s.success(), "the CLI exits non-zero");
    }
}
