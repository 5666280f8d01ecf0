//! Shutdown sends every connected peer a DTLS close_notify and tells readiness probes.

use blindrelay::RelayOptions;
use blindrelay_tests::*;
use std::time::Duration;

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
