//! Recording, captions and transcription bots: refused from E2EE calls (counted by role),
//! working for real on standard calls.

use blindrelay::RelayOptions;
use blindrelay_tests::*;
use e2ee_client::bot::{read_rtpdump, BotKind};
use e2ee_client::call::{run_call, CallOptions, CallSummary};
use std::time::Duration;

fn user(url: &str, cfg: &blindrelay::config::Config, name: &str, e2ee: bool) -> CallOptions {
    CallOptions {
        relay: url.into(),
        token: token(cfg, name, Some("demo"), "user"),
        call: "demo".into(),
        duration: Duration::from_secs(3),
        e2ee,
        video_kbps: 300,
        name: name.into(),
        ..Default::default()
    }
}

fn bot(
    url: &str,
    cfg: &blindrelay::config::Config,
    kind: BotKind,
    out: Option<std::path::PathBuf>,
) -> CallOptions {
    CallOptions {
        relay: url.into(),
        token: token(cfg, kind.role(), Some("demo"), kind.role()),
        call: "demo".into(),
        duration: Duration::from_millis(1500),
        audio: false,
        video: false,
        name: kind.role().into(),
        bot: Some((kind, out)),
        ..Default::default()
    }
}

async fn call_with_bots(
    e2ee: bool,
    bots: Vec<CallOptions>,
) -> (Vec<CallSummary>, std::collections::HashMap<String, f64>) {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    // The people join first (through a proxy that sees their `joined`): the call's mode is
    // theirs when the bots ask to join.
    let mut people_sig = watch_signal(&relay).await;
    let (a, b) = (
        user(&people_sig.url, &cfg, "alice", e2ee),
        user(&people_sig.url, &cfg, "bob", e2ee),
    );
    let people = tokio::spawn(async move { tokio::join!(run_call(&a), run_call(&b)) });
    people_sig
        .wait_for("joined", 2, Duration::from_secs(10))
        .await;
    let mut handles = Vec::new();
    for mut o in bots {
        o.relay = url.clone();
        handles.push(tokio::spawn(async move { run_call(&o).await }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("bot task"));
    }
    let (sa, sb) = people.await.expect("people");
    assert!(
        sa.success() && sb.success(),
        "{:?} {:?}",
        sa.error,
        sb.error
    );
    // Leaves are processed asynchronously after each client returns: let them land.
    let m = await_metrics(&relay, Duration::from_secs(10), "everyone left", |m| {
        ["user", "bot:recording", "bot:captions", "bot:transcription"]
            .iter()
            .all(|r| metric(m, &format!("blindrelay_participants{{role=\"{r}\"}}")) == 0.0)
    })
    .await;
    relay.shutdown().await;
    (out, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2ee_call_refuses_every_bot_and_counts_it_by_role() {
    let cfg = loopback_config();
    let kinds = [
        BotKind::Recording,
        BotKind::Captions,
        BotKind::Transcription,
    ];
    let tmp = std::env::temp_dir().join(format!("refused-{}.rtpdump", std::process::id()));
    let bots = kinds
        .iter()
        .map(|k| bot("", &cfg, *k, Some(tmp.clone())))
        .collect();
    let (summaries, m) = call_with_bots(true, bots).await;
    for s in &summaries {
        assert!(!s.joined);
        assert_eq!(
            s.error.as_ref().map(|e| e.code.as_str()),
            Some("e2ee_call_refuses_bots")
        );
        assert_eq!(s.frames_received, 0);
    }
    assert!(!tmp.exists(), "a refused recording bot records nothing");
    for k in kinds {
        assert_eq!(
            metric(
                &m,
                &format!("blindrelay_bot_refusals_total{{role=\"{}\"}}", k.role())
            ),
            1.0
        );
    }
    assert_eq!(
        metric(
            &m,
            "blindrelay_joins_total{result=\"e2ee_call_refuses_bots\"}"
        ),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_work_on_a_standard_call() {
    let cfg = loopback_config();
    let out = std::env::temp_dir().join(format!("recording-{}.rtpdump", std::process::id()));
    let bots = vec![
        bot("", &cfg, BotKind::Recording, Some(out.clone())),
        bot("", &cfg, BotKind::Captions, None),
        bot("", &cfg, BotKind::Transcription, None),
    ];
    let (summaries, m) = call_with_bots(false, bots).await;
    for s in &summaries {
        assert!(s.joined && s.error.is_none(), "{:?}", s.error);
        assert!(
            s.frames_received > 20,
            "bot received {} frames",
            s.frames_received
        );
        assert_eq!(s.sent_packets, 0, "bots only listen");
    }
    let recorded = summaries[0]
        .recorded_packets
        .expect("recording bot wrote a file");
    assert!(recorded > 50);
    let bytes = std::fs::read(&out).expect("recording exists");
    let _ = std::fs::remove_file(&out);
    let packets = read_rtpdump(&bytes).expect("valid rtpdump");
    assert_eq!(packets.len() as u64, recorded);
    // Standard call: the recording holds the media in the clear (frame magic visible).
    let clear = packets
        .iter()
        .filter(|p| {
            let h = blindrelay_protocol::rtp::RtpHeader::parse(p).expect("RTP");
            h.payload(p).starts_with(b"BRF1")
        })
        .count();
    assert!(clear > 10, "{clear} frames start in the clear");
    assert_eq!(
        metric(&m, "blindrelay_participants{role=\"bot:recording\"}"),
        0.0,
        "bots left"
    );
    assert_eq!(metric(&m, "blindrelay_joins_total{result=\"ok\"}"), 5.0);
}
