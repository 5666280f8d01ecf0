//! "Prove the relay is blind": a real relay captures what it holds after hop decryption to
//! a pcapng (`[capture]`) that describes each sender's codecs, and the client's auditor
//! reads it. An E2EE call with a canary must
//! audit blind; the same call as a standard call must not (or the audit proves nothing).
//! tshark, when present, must decode the capture as the same number of RTP packets; and
//! the capture rewritten by tshark (its own pcapng) must audit the same, codec maps and all.

use blindrelay::config::Config;
use blindrelay::{Relay, RelayOptions};
use blindrelay_tests::*;
use e2ee_client::audit::{audit_file, AuditReport};
use e2ee_client::call::{run_call, CallOptions, CallSummary};
use std::path::Path;
use std::time::Duration;

const CANARY: &str = "CANARY-blind-relay-audit";

fn client(relay: &Relay, cfg: &Config, user: &str, call: &str, e2ee: bool) -> CallOptions {
    CallOptions {
        relay: relay.signal_url(),
        token: token(cfg, user, Some(call), "user"),
        call: call.into(),
        duration: Duration::from_millis(2500),
        video_kbps: 800,
        e2ee,
        canary: Some(CANARY.into()),
        name: user.into(),
        ..Default::default()
    }
}

/// Two clients in one call through `relay`; both must have verified media.
async fn call_pair(relay: &Relay, cfg: &Config, call: &str, e2ee: bool) -> [CallSummary; 2] {
    let a = client(relay, cfg, &format!("alice-{call}"), call, e2ee);
    let b = client(relay, cfg, &format!("bob-{call}"), call, e2ee);
    let (sa, sb) = tokio::join!(run_call(&a), run_call(&b));
    for (name, s) in [("alice", &sa), ("bob", &sb)] {
        assert!(s.error.is_none(), "{call}/{name}: {:?}", s.error);
        assert!(s.success(), "{call}/{name}: no media");
        assert_eq!(s.e2ee, e2ee, "{call}/{name}: e2ee");
        assert!(
            s.frames_verified > 50,
            "{call}/{name}: verified {} frames",
            s.frames_verified
        );
        assert_eq!(s.frames_corrupt, 0, "{call}/{name}: corrupt frames");
    }
    [sa, sb]
}

/// What tshark makes of the capture: one line per packet it decodes as RTP (the SSRC), or
/// `None` when tshark is not installed here (a failure on CI, which must install it).
fn tshark_rtp_ssrcs(path: &Path, media_port: u16) -> Option<Vec<String>> {
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(path)
        .args(["-d", &format!("udp.port=={media_port},rtp")])
        .args(["-T", "fields", "-e", "rtp.ssrc"])
        .output();
    match out {
        Ok(o) => {
            assert!(
                o.status.success(),
                "tshark failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            Some(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect(),
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("tshark is not installed; CI must install it (.ci/run does)");
            }
            eprintln!("note: tshark not on PATH; skipping the tshark cross-check");
            None
        }
        Err(e) => panic!("cannot run tshark: {e}"),
    }
}

fn audit(path: &Path) -> AuditReport {
    audit_file(path, Some(CANARY.as_bytes())).expect("the relay's capture is a readable pcapng")
}

/// The relay's file is pcapng and describes both clients: each stream is attributed to a
/// participant by its sender's codec map.
fn assert_described(path: &Path, report: &AuditReport) {
    let bytes = std::fs::read(path).expect("the capture");
    assert_eq!(
        bytes.get(..4),
        Some(&[0x0a, 0x0d, 0x0d, 0x0a][..]),
        "the relay writes pcapng"
    );
    // Each client's codec map rides in the file: the audit knows whose each stream is.
    let table = report.table();
    assert_eq!(report.codec_maps, 2, "one codec map per client: {table}");
    for s in &report.streams {
        assert!(s.participant.is_some(), "{table}");
        // e2ee-client's audio is one frame per packet, which the web Opus framing reads
        // alike (and reports, having one more whole frame); its video is e2ee-client's.
        assert!(
            ["e2ee-client", "web-opus"].contains(&s.framing.as_str()),
            "{table}"
        );
    }
}

/// Rewrite the capture with tshark (`tshark -r IN -F pcapng -w OUT`) and audit that: the
/// report must be the one of the relay's file (tshark keeps the interfaces' comments, so
/// the codec maps too). Needs tshark: this test fails without it.
fn assert_pcapng_audits_the_same(pcap: &Path, report: &AuditReport) {
    let ng = pcap.with_extension("tshark.pcapng");
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-F", "pcapng", "-w"])
        .arg(&ng)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run tshark (needed to write the pcapng this test audits): {e}")
        });
    assert!(
        out.status.success(),
        "tshark -F pcapng failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&ng).expect("tshark wrote the pcapng");
    assert_eq!(
        bytes.get(..4),
        Some(&[0x0a, 0x0d, 0x0d, 0x0a][..]),
        "tshark wrote a pcapng section header"
    );
    let from_ng = audit_file(&ng, Some(CANARY.as_bytes())).expect("tshark's pcapng is readable");
    let _ = std::fs::remove_file(&ng);
    assert_eq!(from_ng.table(), report.table());
    assert_eq!(
        serde_json::to_value(&from_ng).expect("report as JSON"),
        serde_json::to_value(report).expect("report as JSON"),
        "the pcapng audits exactly as the pcap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2ee_call_capture_audits_blind() {
    let path = temp_path("e2ee", "pcapng");
    let cfg = capture_config(&path);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    call_pair(&relay, &cfg, "demo", true).await;
    settle_capture(&relay).await;
    let m = scrape(&relay).await;
    let report = audit(&path);
    assert_described(&path, &report);
    let table = report.table();
    assert!(report.blind, "{table}");
    assert_eq!(report.verdict, "blind");
    assert_eq!(report.canary_packets(), 0, "{table}");
    // Two clients, audio and video each.
    assert_eq!(report.streams.len(), 4, "{table}");
    for s in &report.streams {
        assert!(s.frames > 20, "{table}");
        assert_eq!(s.canary_frames, 0, "{table}");
        assert_eq!(s.plaintext_magic_frames, 0, "{table}");
        assert_eq!(s.sframe_frames, s.frames, "every frame is SFrame: {table}");
        assert!(s.entropy_bits_per_byte > 7.5, "{table}");
    }
    let captured = metric(&m, "blindrelay_capture_packets_total");
    assert_eq!(report.rtp_packets as f64, captured, "{table}");
    assert_eq!(report.records, report.rtp_packets, "only RTP is captured");
    assert_eq!(metric(&m, "blindrelay_capture_active"), 1.0);
    assert_eq!(metric(&m, "blindrelay_capture_stopped_total"), 0.0);
    if let Some(ssrcs) = tshark_rtp_ssrcs(&path, relay.media_addr.port()) {
        assert_eq!(
            ssrcs.len() as u64,
            report.rtp_packets,
            "tshark packet count"
        );
        assert!(
            ssrcs.iter().all(|s| s.starts_with("0x")),
            "tshark decodes every packet as RTP: {:?}",
            ssrcs.iter().find(|s| !s.starts_with("0x"))
        );
        let mut distinct = ssrcs.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "tshark sees the four streams");
    }
    assert_pcapng_audits_the_same(&path, &report);
    relay.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

/// Negative control: the same call without E2EE must audit NOT blind, or the audit above
/// proves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_call_capture_audits_not_blind() {
    let path = temp_path("standard", "pcapng");
    let cfg = capture_config(&path);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    call_pair(&relay, &cfg, "demo", false).await;
    settle_capture(&relay).await;
    let report = audit(&path);
    assert_described(&path, &report);
    let table = report.table();
    assert!(!report.blind, "{table}");
    assert_eq!(report.verdict, "NOT blind");
    assert!(report.canary_packets() > 50, "{table}");
    assert!(
        report.reasons.iter().any(|r| r.contains("canary")),
        "{table}"
    );
    for s in &report.streams {
        assert_eq!(
            s.sframe_frames, 0,
            "plaintext frames are not SFrame: {table}"
        );
        assert_eq!(s.plaintext_magic_frames, s.frames, "{table}");
        assert!(s.canary_frames > 0, "{table}");
    }
    if let Some(ssrcs) = tshark_rtp_ssrcs(&path, relay.media_addr.port()) {
        assert_eq!(
            ssrcs.len() as u64,
            report.rtp_packets,
            "tshark packet count"
        );
    }
    // The negative control holds for pcapng too: the audit can fail on tshark's format.
    assert_pcapng_audits_the_same(&path, &report);
    relay.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

/// `capture.call` limits the capture to one call: a standard call running alongside with
/// the canary in the clear must not reach the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_of_one_call_leaves_other_calls_out() {
    let path = temp_path("one-call", "pcapng");
    let mut cfg = capture_config(&path);
    cfg.capture.call = Some("audited".into());
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let (audited, other) = tokio::join!(
        call_pair(&relay, &cfg, "audited", true),
        call_pair(&relay, &cfg, "other", false)
    );
    // Nothing below counts packets exactly (only an upper bound), so the flush alone is
    // enough; a packet still in flight could only add to the audited call's streams.
    relay.flush_capture().await;
    let report = audit(&path);
    assert_described(&path, &report);
    let table = report.table();
    assert!(report.blind, "only the E2EE call is in the file: {table}");
    assert_eq!(report.streams.len(), 4, "{table}");
    let other_sent: u64 = other.iter().map(|s| s.sent_packets).sum();
    let audited_sent: u64 = audited.iter().map(|s| s.sent_packets).sum();
    assert!(other_sent > 0);
    assert!(
        report.rtp_packets <= audited_sent,
        "captured {} > sent in the audited call {audited_sent}",
        report.rtp_packets
    );
    relay.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

/// A tiny `capture.max_bytes`: the capture stops, says so in the metrics, and the relay goes
/// on forwarding (the clients still verify frames).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_stops_at_max_bytes_and_forwarding_goes_on() {
    let path = temp_path("cap", "pcapng");
    let mut cfg = capture_config(&path);
    cfg.capture.max_bytes = 16 * 1024;
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let summaries = call_pair(&relay, &cfg, "demo", true).await;
    // The cap is a few dozen packets: the capture stopped during the call (stop() flushes
    // what was written before the cap).
    let m = await_metrics(&relay, Duration::from_secs(10), "capture stopped", |m| {
        metric(m, "blindrelay_capture_stopped_total") >= 1.0
    })
    .await;
    relay.flush_capture().await;
    assert_eq!(metric(&m, "blindrelay_capture_stopped_total"), 1.0);
    assert_eq!(metric(&m, "blindrelay_capture_active"), 0.0);
    let captured = metric(&m, "blindrelay_capture_packets_total");
    assert!(captured > 0.0, "some packets before the cap");
    let forwarded = metric(&m, "blindrelay_packets_forwarded_total{kind=\"rtp\"}");
    let received: u64 = summaries.iter().map(|s| s.received_packets).sum();
    assert!(
        forwarded > captured * 10.0,
        "forwarded {forwarded} vs captured {captured}"
    );
    assert!(received as f64 > captured * 10.0);
    let size = std::fs::metadata(&path).map(|md| md.len()).unwrap_or(0);
    assert!(
        size > 24 && size <= cfg.capture.max_bytes,
        "file is {size} bytes"
    );
    // What was written is still a whole, auditable pcapng.
    let report = audit(&path);
    assert!(!report.truncated_tail, "{}", report.table());
    assert_eq!(report.rtp_packets as f64, captured);
    relay.shutdown().await;
    let _ = std::fs::remove_file(&path);
}
