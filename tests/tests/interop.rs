//! Interop: real WebRTC stacks join a real relay (in-process, loopback) through its
//! signalling protocol and report what they decoded. The peers live in tests/peers/:
//! headless Chromium (playwright-core), aiortc and GStreamer webrtcbin. Each prints one
//! JSON line (see tests/peers/README.md); these tests assert on it.
//!
//! Missing peers are a failure, never a skip: run `scripts/install-test-deps.sh`.
//! Calls run one after another (the machine has 2 cores); each lasts ~10-15 s.

use blindrelay::RelayOptions;
use blindrelay_tests::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

const INSTALL_HINT: &str =
    "run scripts/install-test-deps.sh (as root) to install the interop peers";
/// Fewest decoded video frames from each remote (30 fps sources; a call lasts >= 10 s).
const MIN_VIDEO_FRAMES: u64 = 100;
/// How long the calls that measure quality last, and the window measured: the last 20 s,
/// after 8 s for the bandwidth estimate to settle.
const QUALITY_CALL_SECS: u64 = 28;
const QUALITY_WINDOW_SECS: usize = 20;
/// Fewest audio packets from each remote (50 packets/s).
const MIN_AUDIO_PACKETS: u64 = 100;

/// Calls use all the machine's cores; never run two at once, even if the harness would.
static CALL_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// The Python that runs the aiortc and webrtcbin peers: $BLINDRELAY_PEER_PYTHON, else the
/// venv the installer makes.
fn python() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = std::env::var_os("BLINDRELAY_PEER_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/opt/blindrelay-venv/bin/python"));
        assert!(p.exists(), "{} not found: {INSTALL_HINT}", p.display());
        p
    })
    .clone()
}

/// Panics (with the install hint) unless `code` runs in the peer Python.
fn check_python(what: &str, code: &str) {
    let out = std::process::Command::new(python())
        .args(["-c", code])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", python().display()));
    assert!(
        out.status.success(),
        "{what} is not usable from {}: {}\n{INSTALL_HINT}",
        python().display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check_stack(stack: Stack) {
    static CHECKED: std::sync::Mutex<Vec<Stack>> = std::sync::Mutex::new(Vec::new());
    let mut done = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if done.contains(&stack) {
        return;
    }
    match stack {
        Stack::Chromium => {
            let dir = peers_dir().join("chromium");
            assert!(
                dir.join("node_modules/playwright-core/package.json")
                    .exists(),
                "playwright-core is not installed in {}: {INSTALL_HINT}",
                dir.display()
            );
            assert!(
                Path::new("/usr/bin/chromium").exists(),
                "/usr/bin/chromium not found: {INSTALL_HINT}"
            );
            let ok = std::process::Command::new("node")
                .arg("--version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(ok, "node not found: {INSTALL_HINT}");
        }
        Stack::Aiortc => check_python("aiortc", "import aiortc, av"),
        Stack::Webrtcbin => check_python(
            "GStreamer webrtcbin",
            "import gi; gi.require_version('Gst','1.0'); gi.require_version('GstWebRTC','1.0'); \
             from gi.repository import Gst, GstWebRTC; Gst.init(None); \
             assert Gst.ElementFactory.find('webrtcbin') and Gst.ElementFactory.find('nicesrc') \
             and Gst.ElementFactory.find('vp8enc'), 'webrtcbin/nice/vp8 elements missing'",
        ),
        // Built with the tests.
        Stack::E2eeClient => {}
    }
    done.push(stack);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stack {
    Chromium,
    Aiortc,
    Webrtcbin,
    /// The project's own client, run in this process (`e2ee_client::call::run_call`).
    /// Its media is synthetic (not real Opus or VP8): other stacks receive it but cannot
    /// decode it, and it receives theirs without decoding them.
    E2eeClient,
}

/// One peer process: a stack and the participants it plays (Chromium may play several,
/// one page each, in one browser).
struct Peer {
    stack: Stack,
    names: Vec<String>,
    leave_after: Option<u64>,
    join_after: Option<u64>,
    /// The e2ee-client sends video (its synthetic frames).
    video: bool,
    /// Chromium: the video codec each page puts first (`setCodecPreferences`), by name.
    prefer: Vec<String>,
    /// Stay this long instead of the call's duration.
    stay: Option<u64>,
}

impl Peer {
    fn chromium(names: &[&str]) -> Peer {
        Peer::new(Stack::Chromium, names)
    }
    fn aiortc(name: &str) -> Peer {
        Peer::new(Stack::Aiortc, &[name])
    }
    fn webrtcbin(name: &str) -> Peer {
        Peer::new(Stack::Webrtcbin, &[name])
    }
    fn e2ee_client(name: &str) -> Peer {
        Peer::new(Stack::E2eeClient, &[name])
    }
    fn new(stack: Stack, names: &[&str]) -> Peer {
        Peer {
            stack,
            names: names.iter().map(|s| s.to_string()).collect(),
            leave_after: None,
            join_after: None,
            video: true,
            prefer: Vec::new(),
            stay: None,
        }
    }
    /// Stay `secs` seconds instead of the call's duration (an external peer only).
    fn stay(mut self, secs: u64) -> Peer {
        assert_ne!(self.stack, Stack::E2eeClient, "an external peer option");
        self.stay = Some(secs);
        self
    }
    /// Chromium pages prefer these video codecs, one per page ("" keeps the default).
    fn prefer(mut self, codecs: &[&str]) -> Peer {
        assert_eq!(self.stack, Stack::Chromium, "a Chromium peer option");
        assert_eq!(codecs.len(), self.names.len(), "one codec per page");
        self.prefer = codecs.iter().map(|c| c.to_string()).collect();
        self
    }
    /// The e2ee-client sends audio only: its synthetic "VP8" is not VP8, and GStreamer
    /// 1.22's webrtcbin pipeline stalls on it.
    fn no_video(mut self) -> Peer {
        self.video = false;
        self
    }
    fn leave_after(mut self, secs: u64) -> Peer {
        self.leave_after = Some(secs);
        self
    }
    /// Connect only after `secs` (aiortc peer only).
    fn join_after(mut self, secs: u64) -> Peer {
        assert_eq!(
            self.stack,
            Stack::Aiortc,
            "--join-after is an aiortc peer option"
        );
        self.join_after = Some(secs);
        self
    }
}

/// One participant's report, as its peer printed it.
#[derive(Debug, Clone)]
struct Report {
    stack: Stack,
    json: Value,
}

impl Report {
    fn name(&self) -> &str {
        self.json["name"].as_str().unwrap_or("?")
    }
    fn joined(&self) -> bool {
        self.json["joined"].as_bool().unwrap_or(false)
    }
    fn participant(&self) -> Option<&str> {
        self.json["participant"].as_str()
    }
    fn inbound(&self) -> Vec<&Value> {
        self.json["inbound"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }
    fn num(v: &Value, key: &str) -> u64 {
        v[key].as_f64().map(|f| f as u64).unwrap_or(0)
    }
    /// Inbound tracks of `kind` attributed to `participant`.
    fn from(&self, participant: &str, kind: &str) -> Vec<&Value> {
        self.inbound()
            .into_iter()
            .filter(|i| i["kind"] == kind && i["participant"] == participant)
            .collect()
    }
    fn video_frames_from(&self, participant: &str) -> u64 {
        self.from(participant, "video")
            .iter()
            .map(|i| Report::num(i, "framesDecoded"))
            .max()
            .unwrap_or(0)
    }
    fn audio_packets_from(&self, participant: &str) -> u64 {
        self.from(participant, "audio")
            .iter()
            .map(|i| Report::num(i, "packetsReceived"))
            .max()
            .unwrap_or(0)
    }
    /// Whether this stack counts decoded audio (Chromium headless reports 0 samples).
    fn counts_decoded_audio(&self) -> bool {
        self.stack != Stack::Chromium
    }
    fn audio_decoded_from(&self, participant: &str) -> u64 {
        self.from(participant, "audio")
            .iter()
            .map(|i| Report::num(i, "framesDecoded"))
            .max()
            .unwrap_or(0)
    }
    /// The best inbound track of `kind` whatever it is attributed to (2-party calls on a
    /// relay without renegotiation signal no msid, so attribution may be unknown).
    fn best(&self, kind: &str, key: &str) -> u64 {
        self.inbound()
            .iter()
            .filter(|i| i["kind"] == kind)
            .map(|i| Report::num(i, key))
            .max()
            .unwrap_or(0)
    }
    /// A short text for assertion messages.
    fn summary(&self) -> String {
        let mut s = format!(
            "{} ({:?}, participant {:?}, joined {}, offers answered {}, errors {})\n",
            self.name(),
            self.stack,
            self.participant(),
            self.joined(),
            self.json["offers_answered"],
            self.json["errors"]
        );
        for i in self.inbound() {
            s.push_str(&format!(
                "    inbound {} from {} mid {} ssrc {}: packets {} decoded {} fps {}\n",
                i["kind"],
                i["participant"],
                i["mid"],
                i["ssrc"],
                i["packetsReceived"],
                i["framesDecoded"],
                i["fps"]
            ));
        }
        s
    }
}

fn summary(reports: &[Report]) -> String {
    reports.iter().map(Report::summary).collect()
}

/// Run every peer of one call at once against `url`, wait for them all, return one report
/// per participant (in the order given). Panics if a peer's output is not a report.
async fn run_call(
    cfg: &blindrelay::config::Config,
    relay: &blindrelay::Relay,
    call: &str,
    duration: u64,
    peers: Vec<Peer>,
) -> Vec<Report> {
    let _one_call_at_a_time = CALL_LOCK.lock().await;
    let url = relay.signal_url();
    let url = url.as_str();
    for p in &peers {
        check_stack(p.stack);
    }
    let mut children = Vec::new();
    let mut pages = 0;
    let mut in_process = Vec::new();
    for p in peers.iter().filter(|p| p.stack == Stack::E2eeClient) {
        let opts = e2ee_client::call::CallOptions {
            relay: url.to_string(),
            token: token(cfg, &p.names[0], Some(call), "user"),
            call: call.to_string(),
            duration: Duration::from_secs(duration),
            video_kbps: 300,
            video: p.video,
            audio: true,
            name: p.names[0].clone(),
            ..Default::default()
        };
        let name = p.names[0].clone();
        in_process.push(tokio::spawn(async move {
            (name, e2ee_client::call::run_call(&opts).await)
        }));
    }
    for p in peers.iter().filter(|p| p.stack != Stack::E2eeClient) {
        let tokens: Vec<String> = p
            .names
            .iter()
            .map(|n| token(cfg, n, Some(call), "user"))
            .collect();
        let mut cmd = match p.stack {
            Stack::Chromium => {
                let mut c = Command::new("node");
                c.arg(peers_dir().join("chromium/peer.mjs"));
                c.args(["--peers", &p.names.len().to_string()]);
                c.args(["--page-port", &page_port(cfg, pages)]);
                pages += 1;
                c
            }
            Stack::Aiortc => {
                let mut c = Command::new(python());
                c.arg(peers_dir().join("aiortc_peer.py"));
                c
            }
            Stack::Webrtcbin => {
                let mut c = Command::new(python());
                c.arg(peers_dir().join("webrtcbin_peer.py"));
                c
            }
            Stack::E2eeClient => unreachable!("run in process, above"),
        };
        cmd.args(["--url", url, "--call", call])
            .args(["--token", &tokens.join(",")])
            .args(["--name", &p.names.join(",")])
            .args(["--duration", &p.stay.unwrap_or(duration).to_string()]);
        if let Some(l) = p.leave_after {
            cmd.args(["--leave-after", &l.to_string()]);
        }
        if let Some(j) = p.join_after {
            cmd.args(["--join-after", &j.to_string()]);
        }
        if !p.prefer.is_empty() {
            cmd.args(["--prefer-codec", &p.prefer.join(",")]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?} peer: {e}; {INSTALL_HINT}", p.stack));
        children.push((p, child));
    }
    let late = peers.iter().filter_map(|p| p.join_after).max().unwrap_or(0)
        + peers
            .iter()
            .filter_map(|p| p.stay)
            .max()
            .unwrap_or(0)
            .saturating_sub(duration);
    let limit = Duration::from_secs(late + duration + 60);
    let mut reports = Vec::new();
    let waits = children.into_iter().map(|(p, mut child)| async move {
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let (mut o, mut e) = (String::new(), String::new());
        let io = async {
            let _ = tokio::join!(out.read_to_string(&mut o), err.read_to_string(&mut e));
            child.wait().await
        };
        let status = tokio::time::timeout(limit, io).await;
        (p, status, o, e)
    });
    for (p, status, out, err) in futures_util::future::join_all(waits).await {
        // Shown only when the test fails.
        eprintln!("===== {:?} {:?} stderr =====\n{err}", p.stack, p.names);
        let status = match status {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => panic!("{:?} peer {:?}: wait: {e}", p.stack, p.names),
            Err(_) => panic!(
                "{:?} peer {:?} did not finish within {limit:?}; stderr tail:\n{}",
                p.stack,
                p.names,
                tail(&err)
            ),
        };
        let line = out
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "{:?} peer {:?} printed no report (exit {status}); stderr tail:\n{}",
                    p.stack,
                    p.names,
                    tail(&err)
                )
            });
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "{:?} peer {:?}: report is not JSON ({e}): {line}",
                p.stack, p.names
            )
        });
        let list = match v {
            Value::Array(a) => a,
            v => vec![v],
        };
        assert_eq!(
            list.len(),
            p.names.len(),
            "{:?} peer {:?}: one report per participant",
            p.stack,
            p.names
        );
        for json in list {
            reports.push(Report {
                stack: p.stack,
                json,
            });
        }
    }
    for t in in_process {
        let (name, sum) = t.await.expect("e2ee-client task");
        reports.push(Report {
            stack: Stack::E2eeClient,
            json: e2ee_client_report(&name, &sum),
        });
    }
    attribute_by_ssrc(&mut reports);
    // The relay's view, for diagnosing a failure: what it received, forwarded, dropped.
    let m = scrape(relay).await;
    let mut counters: Vec<_> = m
        .iter()
        .filter(|(k, v)| {
            **v != 0.0 && (k.contains("packets") || k.contains("dtls") || k.contains("drop"))
        })
        .collect();
    counters.sort_by(|a, b| a.0.cmp(b.0));
    eprintln!("===== relay counters =====");
    for (k, v) in counters {
        eprintln!("{k} {v}");
    }
    eprintln!("===== reports =====\n{}", summary(&reports));
    for r in &reports {
        eprintln!("{}", r.json);
    }
    reports
}

/// An e2ee-client summary in the peers' report format. Its inbound streams are per SSRC;
/// `attribute_by_ssrc` names their senders afterwards.
fn e2ee_client_report(name: &str, s: &e2ee_client::call::CallSummary) -> Value {
    let kind = |pt: u8| if pt == 111 { "audio" } else { "video" };
    let inbound: Vec<Value> = s
        .inbound
        .iter()
        .map(|i| {
            serde_json::json!({
                "kind": kind(i.payload_type),
                "ssrc": i.ssrc,
                "packetsReceived": i.packets,
                "participant": null,
            })
        })
        .collect();
    let mut outbound = Vec::new();
    if let Some(a) = s.audio_ssrc {
        outbound.push(serde_json::json!({"kind": "audio", "ssrc": a}));
    }
    if let Some(v) = s.video_ssrc {
        outbound.push(serde_json::json!({"kind": "video", "ssrc": v}));
    }
    let errors: Vec<Value> = s
        .error
        .iter()
        .map(|e| Value::String(format!("{}: {}", e.code, e.message)))
        .collect();
    serde_json::json!({
        "name": name,
        "joined": s.joined,
        "participant": s.participant,
        "offers_answered": s.offers_answered,
        "inbound": inbound,
        "outbound": outbound,
        "errors": errors,
    })
}

/// Name the sender of every inbound stream a peer could not attribute, from the other
/// reports' outbound SSRCs (the relay forwards SSRCs unchanged).
fn attribute_by_ssrc(reports: &mut [Report]) {
    let owners: HashMap<u64, String> = reports
        .iter()
        .filter_map(|r| {
            Some((
                r.participant()?.to_string(),
                r.json["outbound"].as_array()?.clone(),
            ))
        })
        .flat_map(|(p, outs)| {
            outs.into_iter()
                .filter_map(move |o| Some((o["ssrc"].as_u64()?, p.clone())))
        })
        .collect();
    for r in reports.iter_mut() {
        if let Some(list) = r.json["inbound"].as_array_mut() {
            for i in list {
                if i["participant"].is_null() {
                    if let Some(p) = i["ssrc"].as_u64().and_then(|s| owners.get(&s)) {
                        i["participant"] = Value::String(p.clone());
                    }
                }
            }
        }
    }
}

/// Media between the project's client and the WebRTC stacks in `reports`: every stack
/// receives packets of each kind in `client_sends` from the client on tracks attributed to
/// it, and the client receives packets of both kinds from every stack. (The client's media is
/// synthetic, so nobody decodes it; the stacks' media among themselves is checked by
/// `assert_full_mesh`.)
fn assert_client_exchanges_packets(reports: &[Report], min_packets: u64, client_sends: &[&str]) {
    let client = reports
        .iter()
        .find(|r| r.stack == Stack::E2eeClient)
        .expect("an e2ee-client in the call");
    let cid = client.participant().expect("joined");
    for other in reports.iter().filter(|r| r.stack != Stack::E2eeClient) {
        let oid = other.participant().expect("joined");
        for kind in ["audio", "video"] {
            let from_client = if !client_sends.contains(&kind) {
                min_packets
            } else {
                other
                    .from(cid, kind)
                    .iter()
                    .map(|i| Report::num(i, "packetsReceived"))
                    .max()
                    .unwrap_or(0)
            };
            assert!(
                from_client >= min_packets,
                "{} ({:?}) received {from_client} {kind} packets from the e2ee-client:\n{}",
                other.name(),
                other.stack,
                summary(reports)
            );
            let to_client = client
                .from(oid, kind)
                .iter()
                .map(|i| Report::num(i, "packetsReceived"))
                .max()
                .unwrap_or(0);
            assert!(
                to_client >= min_packets,
                "the e2ee-client received {to_client} {kind} packets from {} ({:?}):\n{}",
                other.name(),
                other.stack,
                summary(reports)
            );
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Chromium peers load their page from a local server of their own, another origin than
/// the relay's, so the relay must allow it (`signal.allowed_origins`), as it would a web
/// app served elsewhere. Each Chromium process of a call serves on one of these ports.
const PAGE_ORIGINS: usize = 4;

async fn relay() -> (blindrelay::config::Config, blindrelay::Relay) {
    let mut cfg = loopback_config();
    // Distinct free ports: held open together, released just before the relay starts.
    // Below the kernel's ephemeral range (32768 on): a port the kernel handed out could
    // be taken, once released, as the source port of any outgoing connection (Chromium's
    // own to the relay took one: EADDRINUSE for its page server).
    let mut held: Vec<std::net::TcpListener> = Vec::new();
    while held.len() < PAGE_ORIGINS {
        let port = rand::random_range(20_000..32_000u16);
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    cfg.signal.allowed_origins = held
        .iter()
        .map(|l| format!("http://{}", l.local_addr().expect("bound")))
        .collect();
    drop(held);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    (cfg, relay)
}

/// The port of the `i`-th page origin the relay allows.
fn page_port(cfg: &blindrelay::config::Config, i: usize) -> String {
    let origin = &cfg.signal.allowed_origins[i % cfg.signal.allowed_origins.len()];
    origin
        .rsplit(':')
        .next()
        .expect("http://127.0.0.1:PORT")
        .to_string()
}

/// Every participant joined, with a distinct id, and reported no error (a refused offer or
/// answer, a relay `error`, a dead media pipeline: media that still arrives after one of
/// those is not interop).
fn assert_all_joined(reports: &[Report]) {
    for r in reports {
        assert!(
            r.joined() && r.participant().is_some(),
            "{} did not join:\n{}",
            r.name(),
            summary(reports)
        );
    }
    for r in reports {
        let errors = r.json["errors"].as_array().map(Vec::len).unwrap_or(0);
        assert_eq!(
            errors,
            0,
            "{} ({:?}) reported errors:\n{}",
            r.name(),
            r.stack,
            summary(reports)
        );
    }
    let ids: HashSet<&str> = reports.iter().filter_map(Report::participant).collect();
    assert_eq!(
        ids.len(),
        reports.len(),
        "participant ids are distinct:\n{}",
        summary(reports)
    );
}

/// 2-party check that holds on a relay without renegotiation: each side decodes the other's
/// video (and audio when `audio`). An inbound track the peer attributed (from the relay's
/// a=msid) must name the other participant; one it could not attribute must carry one of
/// the other's outbound SSRCs (the relay forwards SSRCs as they are).
fn assert_two_party(reports: &[Report], audio: bool) {
    assert_eq!(reports.len(), 2);
    assert_all_joined(reports);
    for (me, other) in [(&reports[0], &reports[1]), (&reports[1], &reports[0])] {
        let other_id = other.participant().expect("joined");
        let other_ssrcs: HashSet<u64> = other.json["outbound"]
            .as_array()
            .map(|a| a.iter().filter_map(|o| o["ssrc"].as_u64()).collect())
            .unwrap_or_default();
        for i in me.inbound() {
            let p = &i["participant"];
            if Report::num(i, "packetsReceived") == 0 {
                continue; // a receiver nothing was sent to
            }
            let ok = if p.is_null() {
                i["ssrc"].as_u64().is_some_and(|s| other_ssrcs.contains(&s))
            } else {
                p == other_id
            };
            assert!(
                ok,
                "{}: inbound {} (participant {p}, ssrc {}) is not from {} ({other_id}, ssrcs {other_ssrcs:?}):\n{}",
                me.name(),
                i["kind"],
                i["ssrc"],
                other.name(),
                summary(reports)
            );
        }
        let frames = me.best("video", "framesDecoded");
        assert!(
            frames > MIN_VIDEO_FRAMES,
            "{} decoded {frames} video frames from {}:\n{}",
            me.name(),
            other.name(),
            summary(reports)
        );
        if audio {
            let packets = me.best("audio", "packetsReceived");
            assert!(
                packets > MIN_AUDIO_PACKETS,
                "{} received {packets} audio packets:\n{}",
                me.name(),
                summary(reports)
            );
            if me.counts_decoded_audio() {
                let decoded = me.best("audio", "framesDecoded");
                assert!(
                    decoded > MIN_AUDIO_PACKETS,
                    "{} decoded {decoded} audio frames:\n{}",
                    me.name(),
                    summary(reports)
                );
            }
        }
    }
}

/// Every participant in `present` decodes video and audio from every other participant in
/// `present`, each remote on its own inbound track (attributed to it by msid / SSRC).
fn assert_full_mesh(reports: &[Report], present: &[&Report], min_frames: u64) {
    assert_all_joined(reports);
    for me in present {
        let mut tracks_seen: HashMap<String, String> = HashMap::new();
        for other in present {
            if std::ptr::eq(*me, *other) {
                continue;
            }
            let oid = other.participant().expect("joined");
            let frames = me.video_frames_from(oid);
            assert!(
                frames >= min_frames,
                "{} ({:?}) decoded {frames} video frames attributed to {} ({:?}, {oid}); wanted >= {min_frames}:\n{}",
                me.name(),
                me.stack,
                other.name(),
                other.stack,
                summary(reports)
            );
            let packets = me.audio_packets_from(oid);
            assert!(
                packets >= MIN_AUDIO_PACKETS,
                "{} ({:?}) received {packets} audio packets attributed to {} ({:?}):\n{}",
                me.name(),
                me.stack,
                other.name(),
                other.stack,
                summary(reports)
            );
            if me.counts_decoded_audio() {
                let decoded = me.audio_decoded_from(oid);
                assert!(
                    decoded >= MIN_AUDIO_PACKETS,
                    "{} ({:?}) decoded {decoded} audio frames from {}:\n{}",
                    me.name(),
                    me.stack,
                    other.name(),
                    summary(reports)
                );
            }
            // Each remote has its own inbound tracks: no m-line (mid) carries two remotes.
            for kind in ["audio", "video"] {
                for t in me.from(oid, kind) {
                    let key = if t["mid"].is_null() {
                        format!("{kind} ssrc {}", t["ssrc"])
                    } else {
                        format!("{kind} mid {}", t["mid"])
                    };
                    if let Some(prev) = tracks_seen.insert(key.clone(), oid.to_string()) {
                        assert_eq!(
                            prev,
                            oid,
                            "{}: inbound track {key} serves two remotes:\n{}",
                            me.name(),
                            summary(reports)
                        );
                    }
                }
            }
        }
        if let Some(my) = me.participant() {
            assert!(
                me.from(my, "video").is_empty() && me.from(my, "audio").is_empty(),
                "{} receives its own media:\n{}",
                me.name(),
                summary(reports)
            );
        }
    }
}

/// Chromium's view of the hop to the relay, over the call's last `window` seconds (the
/// peers sample once a second): its send-side bandwidth estimate (which collapses
/// without the relay's transport-cc feedback) stays above 1 Mbit/s, its camera is sent
/// at 24 fps or more every second, and each remote video decodes at 24 fps or more.
/// Returns (lowest estimate in bit/s, lowest sent fps) over all pages, for the log.
fn assert_media_quality(reports: &[Report], window: usize) -> (f64, f64) {
    let (mut min_bwe, mut min_fps) = (f64::MAX, f64::MAX);
    for r in reports.iter().filter(|r| r.stack == Stack::Chromium) {
        let series = |key: &str| -> Vec<f64> {
            r.json[key]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default()
        };
        for (key, floor, what) in [
            (
                "availableOutgoingBitrateSamples",
                1_000_000.0,
                "bandwidth estimate (bit/s)",
            ),
            ("outboundFpsSamples", 24.0, "sent video fps"),
        ] {
            let s = series(key);
            assert!(
                s.len() >= window,
                "{}: {} samples of {key}, wanted the last {window}:\n{}",
                r.name(),
                s.len(),
                summary(reports)
            );
            let last = &s[s.len() - window..];
            let low = last.iter().copied().fold(f64::MAX, f64::min);
            assert!(
                low >= floor,
                "{}: {what} fell to {low} (floor {floor}) in the last {window} s: {last:?}\n{}",
                r.name(),
                summary(reports)
            );
            if key.starts_with("available") {
                min_bwe = min_bwe.min(low);
            } else {
                min_fps = min_fps.min(low);
            }
        }
        for i in r.inbound() {
            if i["kind"] == "video" && i["active"] != false {
                let fps = i["avgFps"].as_f64().unwrap_or(0.0);
                assert!(
                    fps >= 24.0,
                    "{}: video from {} decoded at {fps} fps on average:\n{}",
                    r.name(),
                    i["participant"],
                    summary(reports)
                );
            }
        }
    }
    (min_bwe, min_fps)
}

/// The video codec each Chromium page sent, by participant id.
fn sent_codecs(reports: &[Report]) -> HashMap<String, String> {
    reports
        .iter()
        .filter_map(|r| {
            Some((
                r.participant()?.to_string(),
                r.json["outboundCodec"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Every decoded remote video track was decoded in the codec its sender sent.
fn assert_decoded_in_sent_codec(reports: &[Report]) {
    let sent = sent_codecs(reports);
    // Only Chromium reports the codec of what it decoded.
    for r in reports.iter().filter(|r| r.stack == Stack::Chromium) {
        for i in r.inbound() {
            if i["kind"] != "video" || Report::num(i, "framesDecoded") == 0 {
                continue;
            }
            let Some(from) = i["participant"].as_str() else {
                continue;
            };
            if let Some(codec) = sent.get(from) {
                assert_eq!(
                    i["codec"].as_str(),
                    Some(codec.as_str()),
                    "{}: video from {from} decoded as {} but sent as {codec}:\n{}",
                    r.name(),
                    i["codec"],
                    summary(reports)
                );
            }
        }
    }
}

fn mesh(reports: &[Report], min_frames: u64) {
    let all: Vec<&Report> = reports.iter().collect();
    assert_full_mesh(reports, &all, min_frames);
}

// ---------------------------------------------------------------------------------------
// Works against a relay without renegotiation (one remote per call).

/// (a) Two Chromium pages (one browser) decode each other's video.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_two_party() {
    let (cfg, relay) = relay().await;
    let r = run_call(
        &cfg,
        &relay,
        "chrome2",
        QUALITY_CALL_SECS,
        vec![Peer::chromium(&["alice", "bob"])],
    )
    .await;
    assert_two_party(&r, true);
    let (bwe, fps) = assert_media_quality(&r, QUALITY_WINDOW_SECS);
    eprintln!("2-party: lowest bandwidth estimate {bwe} bit/s, lowest sent fps {fps}");
    relay.shutdown().await;
}

/// (b) Two aiortc peers decode each other's audio and video.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_two_party() {
    let (cfg, relay) = relay().await;
    let r = run_call(
        &cfg,
        &relay,
        "aiortc2",
        12,
        vec![Peer::aiortc("alice"), Peer::aiortc("bob")],
    )
    .await;
    assert_two_party(&r, true);
    relay.shutdown().await;
}

/// Two webrtcbin peers decode each other's audio and video (checks the webrtcbin peer itself;
/// not one of the cross-stack cases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtcbin_two_party() {
    let (cfg, relay) = relay().await;
    let r = run_call(
        &cfg,
        &relay,
        "gst2",
        12,
        vec![Peer::webrtcbin("alice"), Peer::webrtcbin("bob")],
    )
    .await;
    assert_two_party(&r, true);
    relay.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Need the relay's renegotiation (one m-line per remote track, a=msid = participant id).

/// (c) Three Chromium pages: each decodes both others on separate tracks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_three_party() {
    let (cfg, relay) = relay().await;
    let r = run_call(
        &cfg,
        &relay,
        "chrome3",
        QUALITY_CALL_SECS,
        vec![Peer::chromium(&["alice", "bob", "carol"])],
    )
    .await;
    mesh(&r, MIN_VIDEO_FRAMES);
    // The same bar as the 2-party call above, side by side.
    let (bwe, fps) = assert_media_quality(&r, QUALITY_WINDOW_SECS);
    eprintln!("3-party: lowest bandwidth estimate {bwe} bit/s, lowest sent fps {fps}");
    relay.shutdown().await;
}

/// Three Chromium pages, each sending a different optional codec (H264, VP9, AV1): the
/// relay answers each in its own order of preference, and each page decodes both others
/// in the codec they sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_three_codecs() {
    let (cfg, relay) = relay().await;
    let r = run_call(
        &cfg,
        &relay,
        "chrome-codecs",
        12,
        vec![Peer::chromium(&["alice", "bob", "carol"]).prefer(&["H264", "VP9", "AV1"])],
    )
    .await;
    mesh(&r, MIN_VIDEO_FRAMES);
    let sent = sent_codecs(&r);
    let mut codecs: Vec<&str> = sent.values().map(String::as_str).collect();
    codecs.sort_unstable();
    assert_eq!(
        codecs,
        ["video/AV1", "video/H264", "video/VP9"],
        "{}",
        summary(&r)
    );
    assert_decoded_in_sent_codec(&r);
    relay.shutdown().await;
}

/// A Chromium page that prefers H264 in a call with webrtcbin, which offers VP8 only:
/// H264 is not one of the call's codecs while webrtcbin is in it, so the page sends VP8
/// and everyone decodes everyone. (webrtcbin stays longer: once it leaves, H264 is back
/// in the call and the page would switch to it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_h264_falls_back_to_the_calls_codec() {
    let (cfg, relay) = relay().await;
    let r = run_call(
        &cfg,
        &relay,
        "chrome-h264-gst",
        12,
        vec![
            Peer::chromium(&["alice", "bob"]).prefer(&["H264", ""]),
            Peer::webrtcbin("carol").stay(16),
        ],
    )
    .await;
    mesh(&r, MIN_VIDEO_FRAMES);
    let sent = sent_codecs(&r);
    assert!(
        !sent.is_empty() && sent.values().all(|c| c == "video/VP8"),
        "{sent:?}\n{}",
        summary(&r)
    );
    assert_decoded_in_sent_codec(&r);
    relay.shutdown().await;
}

/// (d) Three aiortc peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_three_party() {
    let (cfg, relay) = relay().await;
    let r = run_call(
        &cfg,
        &relay,
        "aiortc3",
        15,
        vec![
            Peer::aiortc("alice"),
            Peer::aiortc("bob"),
            Peer::aiortc("carol"),
        ],
    )
    .await;
    mesh(&r, MIN_VIDEO_FRAMES);
    relay.shutdown().await;
}

/// (e) Chromium and aiortc (different payload types for the same codecs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_aiortc() {
    let (cfg, relay) = relay().await;
    let r = run_call(
        &cfg,
        &relay,
        "chrome-aiortc",
        12,
        vec![Peer::chromium(&["alice"]), Peer::aiortc("bob")],
    )
    .await;
    mesh(&r, MIN_VIDEO_FRAMES);
    relay.shutdown().await;
}

/// (f) Chromium and GStreamer webrtcbin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_webrtcbin() {
    let (cfg, relay) = relay().await;
    let r = run_call(
        &cfg,
        &relay,
        "chrome-gst",
        12,
        vec![Peer::chromium(&["alice"]), Peer::webrtcbin("bob")],
    )
    .await;
    mesh(&r, MIN_VIDEO_FRAMES);
    relay.shutdown().await;
}

/// (g) Four stacks in one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_way_mix() {
    let (cfg, relay) = relay().await;
    let peers = vec![
        Peer::chromium(&["alice"]),
        Peer::aiortc("bob"),
        Peer::webrtcbin("carol"),
        Peer::e2ee_client("dave").no_video(),
    ];
    let r = run_call(&cfg, &relay, "mix", 15, peers).await;
    // Four stacks (three video encoders, up to nine decoders) share 2 cores: a lower bar.
    let stacks: Vec<&Report> = r.iter().filter(|r| r.stack != Stack::E2eeClient).collect();
    assert_full_mesh(&r, &stacks, MIN_VIDEO_FRAMES / 2);
    assert_client_exchanges_packets(&r, MIN_AUDIO_PACKETS, &["audio"]);
    relay.shutdown().await;
}

/// Chromium and the project's e2ee-client: packets of both kinds arrive at both sides, on
/// tracks attributed to the sender (Chromium cannot decode the client's synthetic VP8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_e2ee_client() {
    let (cfg, relay) = relay().await;
    let r = run_call(
        &cfg,
        &relay,
        "chrome-client",
        12,
        vec![Peer::chromium(&["alice"]), Peer::e2ee_client("bob")],
    )
    .await;
    assert_all_joined(&r);
    assert_client_exchanges_packets(&r, MIN_AUDIO_PACKETS, &["audio", "video"]);
    relay.shutdown().await;
}

/// (h) Three aiortc peers; one leaves after 4 s; the other two keep decoding each other and
/// are told who left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_leave_mid_call() {
    let (cfg, relay) = relay().await;
    let r = run_call(
        &cfg,
        &relay,
        "aiortc-leave",
        15,
        vec![
            Peer::aiortc("alice"),
            Peer::aiortc("bob"),
            Peer::aiortc("carol").leave_after(4),
        ],
    )
    .await;
    assert_all_joined(&r);
    let carol = r[2].participant().expect("joined").to_string();
    assert_eq!(
        r[2].json["left"],
        true,
        "carol sent leave:\n{}",
        summary(&r)
    );
    let stayers = [&r[0], &r[1]];
    assert_full_mesh(&r, &stayers, MIN_VIDEO_FRAMES);
    // Decoding went on after carol left: each stayer decoded well over 3 s more from the
    // other than it did from carol (whose video ended when she left).
    for (me, other) in [(&r[0], &r[1]), (&r[1], &r[0])] {
        let from_carol = me.video_frames_from(&carol);
        let from_other = me.video_frames_from(other.participant().expect("joined"));
        assert!(
            from_other >= from_carol + MIN_VIDEO_FRAMES,
            "{} decoded {from_other} frames from {} but {from_carol} from carol: decoding stopped around the leave:\n{}",
            me.name(),
            other.name(),
            summary(&r)
        );
    }
    for s in stayers {
        let told = s.json["events"]
            .as_array()
            .map(|e| {
                e.iter()
                    .any(|e| e["type"] == "participant_left" && e["participant"] == carol.as_str())
            })
            .unwrap_or(false);
        assert!(
            told,
            "{} was not told that carol left:\n{}",
            s.name(),
            summary(&r)
        );
    }
    relay.shutdown().await;
}

/// (i) Leave and a later join in one call, across stacks: dave (aiortc) leaves, the relay
/// turns his m-lines inactive at everyone; erin (aiortc) joins after that and gets new
/// m-lines at alice (Chromium), bob (webrtcbin) and carol (aiortc). Everyone present at
/// the end decodes everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_leave_then_join_gets_new_lines() {
    let (cfg, relay) = relay().await;
    let r = run_call(
        &cfg,
        &relay,
        "recycle",
        16,
        vec![
            Peer::chromium(&["alice"]),
            Peer::webrtcbin("bob"),
            Peer::aiortc("carol"),
            Peer::aiortc("dave").leave_after(3),
            Peer::aiortc("erin").join_after(7),
        ],
    )
    .await;
    assert_all_joined(&r);
    assert_eq!(r[3].json["left"], true, "dave sent leave:\n{}", summary(&r));
    let stayers = [&r[0], &r[1], &r[2], &r[4]];
    // erin is in the call for ~9 s of the others' 16.
    assert_full_mesh(&r, &stayers, MIN_VIDEO_FRAMES);
    relay.shutdown().await;
}
