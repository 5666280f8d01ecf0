//! The relay's own web client (web/, served at `/`), in headless Chromium (playwright-core,
//! tests/peers/chromium/web.mjs), through a real relay on loopback: real DTLS-SRTP, real
//! VP8 and Opus, SFrame in an RTCRtpScriptTransform worker. The driver polls
//! `window.blindrelay.state()` until a condition holds or a deadline passes; these tests
//! assert on what it reports.
//!
//! Missing Chromium, node or playwright-core is a failure, never a skip: run
//! `scripts/install-test-deps.sh`. Calls run one after another (2 cores).

use blindrelay::config::Config;
use blindrelay::RelayOptions;
use blindrelay_tests::*;
use e2ee_client::audit::{audit_file, AuditReport};
use e2ee_client::call::{run_call, CallOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

const INSTALL_HINT: &str =
    "run scripts/install-test-deps.sh (as root) to install Chromium and playwright-core";
/// Fewest decoded video frames from the other page (30 fps camera, a few seconds of call).
const MIN_VIDEO_FRAMES: u64 = 100;

/// Calls use all the machine's cores; never run two at once.
static CALL_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn chromium_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/chromium")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn check_chromium() {
    let dir = chromium_dir();
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

/// One page's report from web.mjs.
#[derive(Debug, Clone)]
struct PageReport(Value);

impl PageReport {
    fn ok(&self) -> bool {
        self.0["ok"].as_bool().unwrap_or(false)
    }
    fn s(&self, key: &str) -> &Value {
        &self.0["state"][key]
    }
    fn num(&self, key: &str) -> u64 {
        self.s(key).as_u64().unwrap_or(0)
    }
    fn code(&self) -> Option<&str> {
        self.s("verification_code").as_str()
    }
    fn me(&self) -> &str {
        self.s("participant").as_str().unwrap_or("?")
    }
    /// Video frames decoded from `participant`.
    fn video_frames_from(&self, participant: &str) -> u64 {
        self.s("inbound")
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| i["kind"] == "video" && i["participant"] == participant)
                    .map(|i| i["framesDecoded"].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    }
    /// One line of measured figures, for the test log.
    fn figures(&self, other: &PageReport) -> String {
        format!(
            "{}: {} video frames decoded from {}, frames encrypted {} decrypted {} failures {}, canvas stddev {:.1}, code {:?}, first key frame {} ms and first video {} ms after its join",
            self.me(),
            self.video_frames_from(other.me()),
            other.me(),
            self.num("frames_encrypted"),
            self.num("frames_decrypted"),
            self.num("decrypt_failures"),
            self.0["samples"][other.me()]["stddev"].as_f64().unwrap_or(0.0),
            self.code(),
            self.s("first_keyframe_ms")[other.me()],
            self.s("first_video_ms")[other.me()]
        )
    }
    fn brief(&self) -> String {
        let mut s = self.0.clone();
        if let Some(o) = s.as_object_mut() {
            o.remove("features");
        }
        s.to_string()
    }
}

/// Run web.mjs with `args`; returns one report per page (the run's exit status is in `ok`
/// of each page, so the caller asserts with the reports in the message).
async fn drive(args: &[String]) -> Vec<PageReport> {
    drive_released(args, None::<std::future::Ready<()>>).await
}

/// [`drive`]; with `release` (and `--wait-stdin` in `args`), the pages stay in the call
/// after their condition until `release` completes.
async fn drive_released<F: std::future::Future<Output = ()>>(
    args: &[String],
    release: Option<F>,
) -> Vec<PageReport> {
    drive_ready(args, std::sync::Arc::default(), release).await
}

/// [`drive_released`]; `ready` is notified when every page has met its condition (web.mjs
/// says "ready" with `--wait-stdin`), so `release` can wait for that.
async fn drive_ready<F: std::future::Future<Output = ()>>(
    args: &[String],
    ready: std::sync::Arc<tokio::sync::Notify>,
    release: Option<F>,
) -> Vec<PageReport> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    check_chromium();
    let mut cmd = Command::new("node");
    cmd.arg(chromium_dir().join("web.mjs"))
        .args(args)
        .stdin(if release.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node: {e}; {INSTALL_HINT}"));
    let stdin = child.stdin.take();
    let err = child.stderr.take().expect("piped stderr");
    let stderr_lines = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(err).lines();
        let mut all = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if line == "ready" {
                ready.notify_one();
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let output = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output());
    let released = async move {
        if let (Some(release), Some(mut stdin)) = (release, stdin) {
            release.await;
            let _ = stdin.write_all(b"go\n").await;
            let _ = stdin.flush().await;
            Some(stdin)
        } else {
            None
        }
    };
    let (out, _stdin) = tokio::join!(output, released);
    let out = out
        .expect("web.mjs finishes within 180 s")
        .expect("web.mjs output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = stderr_lines.await.unwrap_or_default();
    let line = stdout.lines().last().unwrap_or("");
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!("web.mjs printed no JSON ({e}): {stdout}\n--- stderr:\n{stderr}")
    });
    let pages: Vec<PageReport> = v
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(PageReport)
        .collect();
    if pages.iter().any(|p| !p.ok()) {
        eprintln!("--- web.mjs stderr (a page missed its condition):\n{stderr}");
    }
    pages
}

/// e2ee-client as "rusty" in `call` for `secs`, end-to-end encrypted in the web client's
/// framing, so it and the page open each other's frames.
fn rusty(relay: &blindrelay::Relay, cfg: &Config, call: &str, secs: u64) -> CallOptions {
    CallOptions {
        relay: relay.signal_url(),
        token: token(cfg, "rusty", Some(call), "user"),
        call: call.into(),
        duration: Duration::from_secs(secs),
        e2ee: true,
        web_peers: true,
        name: "rusty".into(),
        ..Default::default()
    }
}

/// The page's URL for "webby" in `call`, joining end-to-end encrypted when `e2ee`.
fn webby_url(relay: &blindrelay::Relay, cfg: &Config, call: &str, e2ee: bool) -> String {
    page_url(relay, &token(cfg, "webby", Some(call), "user"), call, e2ee)
}

/// Arguments for `web/test/peer.mjs`.
fn peer_args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn page_url(relay: &blindrelay::Relay, token: &str, call: &str, e2ee: bool) -> String {
    format!(
        "http://{}/?call={call}&token={token}&autojoin=1{}",
        relay.signal_addr,
        if e2ee { "&e2ee=1" } else { "" }
    )
}

/// The screenshot is checked to be a PNG; with `BLINDRELAY_UPDATE_SCREENSHOTS=1` it is
/// also written to docs/screenshots (the ones README shows), so a plain test run leaves
/// the working tree as it was.
fn screenshot_to_docs(dir: &Path, name: &str) {
    shot_to_docs(dir, "page-0.png", name);
}

/// [`screenshot_to_docs`] for the driver's file `file` (e.g. `question-0.png`).
fn shot_to_docs(dir: &Path, file: &str, name: &str) {
    let from = dir.join(file);
    let bytes = std::fs::read(&from).expect("the driver wrote a screenshot");
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG screenshot");
    if std::env::var_os("BLINDRELAY_UPDATE_SCREENSHOTS").is_none() {
        return;
    }
    let docs = repo_root().join("docs/screenshots");
    std::fs::create_dir_all(&docs).expect("docs/screenshots");
    std::fs::write(docs.join(name), bytes).expect("write the screenshot");
}

/// Two pages in one call, driven until each renders the other's video; then the relay's
/// capture is audited. Returns the pages and the audit.
async fn two_pages(call: &str, e2ee: bool, shot: &str) -> (Vec<PageReport>, AuditReport) {
    let pcap = temp_path(call, "pcap");
    let shots = temp_path(call, "shots");
    let cfg = capture_config(&pcap);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let ta = token(&cfg, &format!("alice-{call}"), Some(call), "user");
    let tb = token(&cfg, &format!("bob-{call}"), Some(call), "user");
    let args = peer_args(&[
        "--page",
        &page_url(&relay, &ta, call, e2ee),
        "--page",
        &page_url(&relay, &tb, call, e2ee),
        "--until",
        "media",
        "--min-video-frames",
        &MIN_VIDEO_FRAMES.to_string(),
        "--timeout",
        "90",
        "--click-lock",
        "--chat",
        "hello over the relay",
        "--screenshot",
        shots.to_str().expect("utf-8 path"),
    ]);
    let pages = drive(&args).await;
    assert_eq!(pages.len(), 2, "two pages reported");
    screenshot_to_docs(&shots, shot);
    settle_capture(&relay).await;
    // No payload-type flags: the capture's codec maps (one per sender) say which streams
    // are Opus and VP8, as an auditor who knows nothing of the pages would read it.
    let report = audit_file(&pcap, None).expect("the relay's capture is a readable pcapng");
    let table = report.table();
    assert_eq!(report.codec_maps, 2, "one codec map per page: {table}");
    for s in &report.streams {
        let who = s.participant.as_deref();
        assert!(
            pages.iter().any(|p| Some(p.me()) == who),
            "each stream is described as one of the pages': {table}"
        );
    }
    relay.shutdown().await;
    let _ = std::fs::remove_file(&pcap);
    let _ = std::fs::remove_dir_all(&shots);
    (pages, report)
}

fn grouped_code(code: &str) -> bool {
    let groups: Vec<&str> = code.split(' ').collect();
    groups.len() == 4
        && groups
            .iter()
            .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit()))
}

/// The page's files come from the relay itself, with their types and a CSP that allows
/// nothing from elsewhere; unknown paths are 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_serves_the_web_client() {
    let relay = start_relay(loopback_config(), RelayOptions::default()).await;
    let (status, body) = http_get(relay.signal_addr, "/").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("<script type=\"module\" src=\"/app.js\">"),
        "{body}"
    );
    for (path, needle) in [
        ("/app.js", "window.blindrelay"),
        ("/kex.js", "blindrelay-e2ee-v1 commit"),
        ("/sframe.js", "SFrame 1.0 Secret key "),
        ("/worker.js", "onrtctransform"),
        ("/style.css", ".tile"),
    ] {
        let (status, body) = http_get(relay.signal_addr, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(body.contains(needle), "{path}");
    }
    let raw = raw_get(relay.signal_addr, "/app.js").await;
    let head = raw
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert_eq!(http_get(relay.signal_addr, "/secret.txt").await.0, 404);
    assert_eq!(http(relay.signal_addr, "POST", "/", None, "").await.0, 405);
    // Signalling still works on the same listener.
    let t = token(&loopback_config(), "carol", Some("demo"), "user");
    let _ = hello(&relay.signal_url(), &t).await;
    relay.shutdown().await;
}

/// Headers and all of one GET.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    String::from_utf8_lossy(&buf).into_owned()
}

/// `POST /dev/token` issues a working token on the development secret on loopback, and is
/// refused with a typed error when the relay has a real secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tokens_only_with_the_dev_secret_on_loopback() {
    let relay = start_relay(loopback_config(), RelayOptions::default()).await;
    let (status, body) = http(
        relay.signal_addr,
        "POST",
        "/dev/token",
        None,
        r#"{"user":"dora","call":"demo"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let t = v["token"].as_str().expect("a token");
    // The token works: the relay answers its hello with capabilities.
    let _sig = hello(&relay.signal_url(), t).await;
    let (status, body) = http(
        relay.signal_addr,
        "POST",
        "/dev/token",
        None,
        r#"{"user":"  ","call":"demo"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("user must be"), "{body}");
    let (status, body) = http(
        relay.signal_addr,
        "POST",
        "/dev/token",
        None,
        "{\"user\":1}",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"code\":\"bad_request\""), "{body}");
    relay.shutdown().await;

    let mut cfg = loopback_config();
    cfg.auth.api_secret = "a-real-secret-that-is-long-enough-0123456789".into();
    let relay = start_relay(cfg, RelayOptions::default()).await;
    let (status, body) = http(
        relay.signal_addr,
        "POST",
        "/dev/token",
        None,
        r#"{"user":"dora","call":"demo"}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["code"], "dev_tokens_disabled");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("own API secret"),
        "{body}"
    );
    relay.shutdown().await;
}

/// Chromium <-> Chromium, end-to-end encrypted: both pages show the lock and the same
/// 20-digit code (also in the panel the lock opens), each decrypts and renders the other's
/// video, chat is sealed, the features that need the clear are disabled with a reason, and
/// the relay's capture of the call audits blind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_e2ee_call_shows_the_code_renders_video_and_the_relay_is_blind() {
    let _lock = CALL_LOCK.lock().await;
    let (pages, report) = two_pages("web-e2ee", true, "web-e2ee-call.png").await;
    let table = report.table();
    eprintln!(
        "{}\n{}\n{table}",
        pages[0].figures(&pages[1]),
        pages[1].figures(&pages[0])
    );
    for (p, other) in [(&pages[0], &pages[1]), (&pages[1], &pages[0])] {
        assert!(p.ok(), "page missed its condition: {}", p.brief());
        assert_eq!(p.s("call_mode"), "e2ee", "{}", p.brief());
        assert_eq!(p.s("e2ee"), true, "{}", p.brief());
        assert_eq!(p.0["lock"]["visible"], true, "lock icon shown");
        let code = p.code().expect("a verification code");
        assert!(grouped_code(code), "20 digits in groups of five: {code}");
        assert_eq!(p.code(), other.code(), "both pages show the same code");
        assert_eq!(
            p.0["shownCode"].as_str(),
            Some(code),
            "the lock reveals the code"
        );
        let frames = p.video_frames_from(other.me());
        assert!(
            frames > MIN_VIDEO_FRAMES,
            "decoded {frames} frames: {}",
            p.brief()
        );
        let sample = &p.0["samples"][other.me()];
        assert!(
            sample["stddev"].as_f64().unwrap_or(0.0) > 5.0
                && sample["distinctColours"].as_u64().unwrap_or(0) > 20,
            "the remote video on a canvas is not uniform: {sample}"
        );
        assert!(p.num("frames_encrypted") > 200, "{}", p.brief());
        assert!(p.num("frames_decrypted") > 200, "{}", p.brief());
        assert_eq!(p.num("decrypt_failures"), 0, "{}", p.brief());
        // Features that need the clear or a third party: disabled, each with its reason.
        let features = p.0["features"].as_array().expect("feature buttons");
        assert_eq!(features.len(), 8);
        for f in features {
            assert_eq!(f["disabled"], true, "{f}");
            assert!(f["reason"].as_str().unwrap_or("").len() > 10, "{f}");
        }
        let chat = p.s("chat").as_array().expect("chat");
        let got: Vec<&Value> = chat.iter().filter(|c| c["mine"] != true).collect();
        assert_eq!(got.len(), 1, "{chat:?}");
        assert_eq!(got[0]["sealed"], true);
        assert!(got[0]["text"]
            .as_str()
            .unwrap_or("")
            .starts_with("hello over the relay"));
    }
    assert!(report.blind, "{table}");
    assert_eq!(
        report.streams.len(),
        4,
        "two pages, audio and video each: {table}"
    );
    for s in &report.streams {
        assert!(s.framing.starts_with("web-"), "{table}");
        assert!(s.frames > 100, "{table}");
        assert_eq!(
            s.sframe_frames, s.frames,
            "every frame continues its SFrame sequence: {table}"
        );
    }
}

/// Negative control: the same call in standard mode. Video still renders, no lock, the
/// features are offered, chat is plain, and the capture does NOT audit blind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_standard_call_is_not_blind() {
    let _lock = CALL_LOCK.lock().await;
    let (pages, report) = two_pages("web-standard", false, "web-standard-call.png").await;
    let table = report.table();
    eprintln!(
        "{}\n{}\n{table}",
        pages[0].figures(&pages[1]),
        pages[1].figures(&pages[0])
    );
    for (p, other) in [(&pages[0], &pages[1]), (&pages[1], &pages[0])] {
        assert!(p.ok(), "page missed its condition: {}", p.brief());
        assert_eq!(p.s("call_mode"), "standard");
        assert_eq!(p.s("e2ee"), false);
        assert!(p.s("verification_code").is_null());
        assert_eq!(p.0["lock"]["visible"], false);
        assert!(
            p.video_frames_from(other.me()) > MIN_VIDEO_FRAMES,
            "{}",
            p.brief()
        );
        assert_eq!(p.num("frames_encrypted"), 0);
        for f in p.0["features"].as_array().expect("feature buttons") {
            assert_eq!(f["disabled"], false, "{f}");
        }
        let chat = p.s("chat").as_array().expect("chat");
        assert!(
            chat.iter()
                .any(|c| c["mine"] != true && c["sealed"] == false),
            "{chat:?}"
        );
    }
    assert!(!report.blind, "{table}");
    assert_eq!(report.verdict, "NOT blind");
    assert_eq!(report.streams.len(), 4, "{table}");
    for s in &report.streams {
        assert!(s.frames > 100, "{table}");
        assert!(
            s.sframe_share < 0.9,
            "plain Opus/VP8 does not pass as an SFrame sequence: {table}"
        );
    }
}

/// Two Chromium pages in one call, each through another node of a two-node cluster: each
/// decodes the other's video; on an E2EE call they show one code and each node's capture
/// audits blind, on a standard call each node's does not.
async fn pages_on_two_nodes(call: &str, e2ee: bool) {
    let c = Cluster::start(&["a", "b"]).await;
    let ta = token(&c.cfg, &format!("alice-{call}"), Some(call), "user");
    let tb = token(&c.cfg, &format!("bob-{call}"), Some(call), "user");
    let args = peer_args(&[
        "--page",
        &page_url(&c.nodes[0], &ta, call, e2ee),
        "--page",
        &page_url(&c.nodes[1], &tb, call, e2ee),
        "--until",
        "media",
        "--min-video-frames",
        &MIN_VIDEO_FRAMES.to_string(),
        "--timeout",
        "90",
    ]);
    let pages = drive(&args).await;
    assert_eq!(pages.len(), 2, "two pages reported");
    eprintln!(
        "{}\n{}",
        pages[0].figures(&pages[1]),
        pages[1].figures(&pages[0])
    );
    for (p, other) in [(&pages[0], &pages[1]), (&pages[1], &pages[0])] {
        assert!(p.ok(), "page missed its condition: {}", p.brief());
        assert_eq!(p.s("e2ee"), e2ee, "{}", p.brief());
        let frames = p.video_frames_from(other.me());
        assert!(frames > MIN_VIDEO_FRAMES, "decoded {frames}: {}", p.brief());
        if e2ee {
            assert!(p.code().is_some(), "{}", p.brief());
            assert_eq!(p.code(), other.code(), "both pages show the same code");
            assert_eq!(p.num("decrypt_failures"), 0, "{}", p.brief());
        }
    }
    for (n, pcap) in c.nodes.iter().zip(&c.captures) {
        settle_capture(n).await;
        let report = audit_file(pcap, None).expect("a readable capture");
        let table = report.table();
        assert_eq!(report.blind, e2ee, "{table}");
        assert!(!report.streams.is_empty(), "{table}");
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_pages_on_two_nodes_e2ee() {
    let _lock = CALL_LOCK.lock().await;
    pages_on_two_nodes("web-span-e2ee", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_pages_on_two_nodes_standard() {
    let _lock = CALL_LOCK.lock().await;
    pages_on_two_nodes("web-span-standard", false).await;
}

/// A node drains (SIGTERM's path) under a 1:1 E2EE call whose two pages are on two nodes,
/// a and b, and b goes. The page on b moves to a by itself (the node list it read from
/// `/v1/nodes`), joins again with new keys, and both pages decode each other again with
/// one new code. The call's owner is set in the directory first, so both cases run every
/// time: b owns the call (the page on a, whose session b held, must join again too), or
/// a does.
async fn page_moves_when_its_node_drains(call: &str, owner: &str) {
    logs();
    let mut c = Cluster::start(&["a", "b"]).await;
    let dir =
        blindrelay::cluster::directory::Directory::connect(&c.redis.url, Duration::from_secs(2))
            .await
            .expect("directory");
    let claimed = dir
        .claim_call(call, owner, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(claimed, owner);
    let ta = token(&c.cfg, &format!("alice-{call}"), Some(call), "user");
    let tb = token(&c.cfg, &format!("bob-{call}"), Some(call), "user");
    let a_url = c.nodes[0].signal_url();
    let args = peer_args(&[
        "--page",
        &page_url(&c.nodes[0], &ta, call, true),
        "--page",
        &page_url(&c.nodes[1], &tb, call, true),
        "--until",
        "media",
        "--min-video-frames",
        "30",
        "--timeout",
        "60",
        "--wait-stdin",
        "--then",
        "moved",
    ]);
    let b = c.nodes.pop().expect("two nodes");
    let ready = std::sync::Arc::new(tokio::sync::Notify::new());
    let notified = ready.clone();
    let (expected, call_id) = (owner.to_string(), call.to_string());
    let pages = drive_ready(
        &args,
        ready,
        Some(async move {
            notified.notified().await;
            // The claim held while both joined (a node whose record lapsed would lose it).
            let calls = dir.calls().await.expect("calls");
            let held = calls
                .iter()
                .find(|c| c.call == call_id)
                .map(|c| c.owner.clone());
            b.shutdown().await;
            assert_eq!(held, Some(expected), "the call's owner before the drain");
        }),
    )
    .await;
    assert_eq!(pages.len(), 2);
    let before = |p: &PageReport| p.0["steps"][0]["state"].clone();
    for (p, other) in [(&pages[0], &pages[1]), (&pages[1], &pages[0])] {
        assert!(
            p.ok(),
            "page missed its condition: {}\n--- the other page: {}",
            p.brief(),
            other.brief()
        );
        assert_eq!(p.s("e2ee"), true, "{}", p.brief());
        assert_eq!(p.code(), other.code(), "one code after the move");
        assert_ne!(
            p.code(),
            before(p)["verification_code"].as_str(),
            "new keys after the move: {}",
            p.brief()
        );
        assert!(p.video_frames_from(other.me()) > 30, "{}", p.brief());
        assert_eq!(p.num("decrypt_failures"), 0, "{}", p.brief());
        assert_eq!(
            p.s("node_url").as_str(),
            Some(a_url.as_str()),
            "{}",
            p.brief()
        );
    }
    // Joins again since the media step (a first join may have been retried already, if
    // the owner's record was a moment late).
    let moves = |p: &PageReport| {
        p.num("reconnects") - before(p)["reconnects"].as_u64().expect("reconnects")
    };
    assert_eq!(moves(&pages[1]), 1, "{}", pages[1].brief());
    // The page on a joins again only when its call's owner was b.
    let a_moves = if owner == "b" { 1 } else { 0 };
    assert_eq!(moves(&pages[0]), a_moves, "{}", pages[0].brief());
    let listed = before(&pages[1])["nodes"].as_array().map_or(0, Vec::len);
    assert_eq!(listed, 2, "the page read both nodes from /v1/nodes");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_page_moves_when_its_node_drains() {
    let _lock = CALL_LOCK.lock().await;
    page_moves_when_its_node_drains("web-move-a-owns", "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_pages_join_again_when_the_calls_owner_drains() {
    let _lock = CALL_LOCK.lock().await;
    page_moves_when_its_node_drains("web-move-b-owns", "b").await;
}

fn policy_config(dir: &Path) -> Config {
    std::fs::create_dir_all(dir).expect("dir");
    let file = dir.join("policies.toml");
    std::fs::write(
        &file,
        "[policies.Global]\ncalling_e2ee = \"DisabledUserOverride\"\n[policies.Strict]\ncalling_e2ee = \"Required\"\n[policies.Off]\ncalling_e2ee = \"Disabled\"\n[tenants]\ncontoso = \"Strict\"\n[users]\n\"dave@fabrikam\" = \"Off\"\n",
    )
    .expect("write");
    let mut cfg = loopback_config();
    cfg.policy.file = Some(file);
    cfg
}

fn tok(cfg: &Config, user: &str, tenant: &str, call: &str) -> String {
    blindrelay::token::issue(
        &cfg.auth.api_secret,
        user,
        tenant,
        "user",
        Some(call),
        Duration::from_secs(600),
    )
    .expect("token")
}

/// Policy on the page: with `Disabled` the toggle is absent; with `Required` it is on and
/// cannot be turned off; a peer who does not encrypt is refused from a Required user's
/// call, and the page says why (whose policy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_hides_or_forces_the_toggle_and_the_page_says_why_a_join_is_refused() {
    let _lock = CALL_LOCK.lock().await;
    let dir = temp_path("policy", "d");
    let cfg = policy_config(&dir);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    // Settings only (no autojoin): dave (Disabled), frank (contoso: Required), erin (override).
    let settings = |user: &str, tenant: &str| {
        format!(
            "http://{}/?call=x&token={}",
            relay.signal_addr,
            tok(&cfg, user, tenant, "x")
        )
    };
    // The page connects when asked: web.mjs' `capabilities` condition clicks nothing, so
    // these URLs autojoin=0 and the driver presses "Check settings" itself.
    let args = peer_args(&[
        "--page",
        &settings("dave", "fabrikam"),
        "--page",
        &settings("frank", "contoso"),
        "--page",
        &settings("erin", "fabrikam"),
        "--until",
        "capabilities",
        "--connect",
        "--timeout",
        "30",
    ]);
    let pages = drive(&args).await;
    assert_eq!(pages.len(), 3);
    for p in &pages {
        assert!(p.ok(), "{}", p.brief());
    }
    let (dave, frank, erin) = (&pages[0], &pages[1], &pages[2]);
    assert_eq!(dave.s("e2ee_option"), "hidden");
    assert_eq!(dave.0["toggle"]["present"], false, "Disabled: no toggle");
    assert_eq!(frank.s("e2ee_option"), "required");
    assert_eq!(frank.0["toggle"]["checked"], true, "Required: on");
    assert_eq!(
        frank.0["toggle"]["disabled"], true,
        "Required: cannot be turned off"
    );
    assert_eq!(erin.s("e2ee_option"), "available");
    assert_eq!(erin.0["toggle"]["present"], true);
    assert_eq!(erin.0["toggle"]["disabled"], false);

    // carol (contoso, Required) is in call "strict" first; dave's page joins without E2EE
    // (his policy hides it) and is refused, with the reason on the page.
    let mut first = watch_signal(&relay).await;
    let carol = CallOptions {
        relay: first.url.clone(),
        token: tok(&cfg, "carol", "contoso", "strict"),
        call: "strict".into(),
        duration: Duration::from_secs(30),
        e2ee: true,
        name: "carol".into(),
        ..Default::default()
    };
    let carol = tokio::spawn(async move { run_call(&carol).await });
    first.wait_for("joined", 1, Duration::from_secs(10)).await;
    let url = page_url(
        &relay,
        &tok(&cfg, "dave", "fabrikam", "strict"),
        "strict",
        false,
    );
    let args = peer_args(&["--page", &url, "--until", "error", "--timeout", "30"]);
    let pages = drive(&args).await;
    let dave = &pages[0];
    assert!(dave.ok(), "{}", dave.brief());
    assert_eq!(dave.s("joined"), false);
    assert_eq!(dave.s("error")["code"], "e2ee_required", "{}", dave.brief());
    let shown = dave.0["message"].as_str().unwrap_or("");
    assert!(
        shown.contains("must be end-to-end encrypted")
            && shown.contains("carol")
            && shown.contains("policy"),
        "the page says why: {shown}"
    );
    carol.abort();
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Chromium <-> e2ee-client, end-to-end encrypted: both derive the same code; e2ee-client
/// opens the browser's Opus and VP8 frames (web framing) and the page opens e2ee-client's
/// (audio only: its synthetic frames are not VP8), with no failures on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_and_e2ee_client_agree_keys_and_decrypt_each_other() {
    let _lock = CALL_LOCK.lock().await;
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let call = "web-mixed";
    let client = CallOptions {
        video: false,
        ..rusty(&relay, &cfg, call, 25)
    };
    let client = tokio::spawn(async move { run_call(&client).await });
    let url = webby_url(&relay, &cfg, call, true);
    let args = peer_args(&[
        "--page",
        &url,
        "--until",
        "keyed",
        "--min-encrypted",
        "400",
        "--min-decrypted",
        "150",
        "--timeout",
        "24",
    ]);
    let pages = drive(&args).await;
    let s = client.await.expect("e2ee-client task");
    let page = &pages[0];
    eprintln!(
        "page: code {:?}, encrypted {}, decrypted {} (failures {}); e2ee-client: code {:?}, decrypted {} (failures {})",
        page.code(),
        page.num("frames_encrypted"),
        page.num("frames_decrypted"),
        page.num("decrypt_failures"),
        s.verification_code,
        s.frames_decrypted,
        s.decrypt_failures
    );
    assert!(page.ok(), "{}", page.brief());
    assert!(s.error.is_none(), "{:?}", s.error);
    assert!(s.e2ee, "e2ee-client keyed: {:?}", s.e2ee_error);
    assert_eq!(page.s("call_mode"), "e2ee");
    assert_eq!(
        page.code(),
        s.verification_code.as_deref(),
        "same code on both sides"
    );
    assert!(
        s.frames_decrypted > 100,
        "e2ee-client decrypted {} frames",
        s.frames_decrypted
    );
    assert_eq!(s.decrypt_failures, 0, "e2ee-client failures: {s:?}");
    assert!(page.num("frames_decrypted") > 100, "{}", page.brief());
    assert_eq!(page.num("decrypt_failures"), 0, "{}", page.brief());
    relay.shutdown().await;
}

/// Bots and the page: a recording bot is refused from the page's E2EE call
/// (`e2ee_call_refuses_bots`); on a standard call the page's Record button goes to the
/// relay's call control, which invites the tenant's recording bot from the lobby, and the
/// bot records the page's media.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_bot_refused_on_the_pages_e2ee_call_and_invited_by_record_on_a_standard_one() {
    use e2ee_client::bot::BotKind;
    let _lock = CALL_LOCK.lock().await;
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;

    // E2EE: the page and e2ee-client are keyed; then a recording bot asks to join.
    let call = "web-bots-e2ee";
    let client = CallOptions {
        video: false,
        ..rusty(&relay, &cfg, call, 20)
    };
    let client = tokio::spawn(async move { run_call(&client).await });
    let url = webby_url(&relay, &cfg, call, true);
    let args = peer_args(&[
        "--page",
        &url,
        "--until",
        "keyed",
        "--min-encrypted",
        "100",
        "--timeout",
        "20",
        "--wait-stdin",
    ]);
    let bot_opts = |call: &str, wait_invite: bool, relay_url: &str| CallOptions {
        relay: relay_url.into(),
        token: token(&cfg, "recorder", Some(call), BotKind::Recording.role()),
        call: call.into(),
        duration: Duration::from_secs(20),
        audio: false,
        video: false,
        name: "recorder".into(),
        bot: Some((BotKind::Recording, None)),
        wait_invite,
        ..Default::default()
    };
    let refused_bot = bot_opts(call, false, &relay.signal_url());
    let refused = std::sync::Arc::new(tokio::sync::Mutex::new(None));
    let slot = refused.clone();
    let relay_ref = &relay;
    let pages = drive_released(
        &args,
        Some(async move {
            // Both people are in the call (the page has keyed: it is past its condition).
            await_metrics(
                relay_ref,
                Duration::from_secs(20),
                "two people in the call",
                |m| metric(m, "blindrelay_participants{role=\"user\"}") == 2.0,
            )
            .await;
            *slot.lock().await = Some(run_call(&refused_bot).await);
        }),
    )
    .await;
    let page = &pages[0];
    assert!(page.ok(), "{}", page.brief());
    assert_eq!(page.s("call_mode"), "e2ee");
    let bot = refused.lock().await.take().expect("the bot tried");
    assert!(!bot.joined);
    assert_eq!(
        bot.error.as_ref().map(|e| e.code.as_str()),
        Some("e2ee_call_refuses_bots"),
        "{:?}",
        bot.error
    );
    assert_eq!(
        page.s("participants").as_array().map(Vec::len),
        Some(1),
        "only rusty: {}",
        page.brief()
    );
    client.abort();

    // Standard: the recording bot waits in the lobby; the page presses Record.
    let call = "web-bots-standard";
    let mut lobby = watch_signal(&relay).await;
    let waiting = bot_opts("any-call", true, &lobby.url);
    let waiting = tokio::spawn(async move { run_call(&waiting).await });
    lobby
        .wait_for("capabilities", 1, Duration::from_secs(10))
        .await;
    let url = webby_url(&relay, &cfg, call, false);
    let args = peer_args(&[
        "--page",
        &url,
        "--until",
        "participants",
        "--min-participants",
        "1",
        "--click-feature",
        "record",
        "--timeout",
        "30",
        "--wait-stdin",
    ]);
    let before = metric(
        &scrape(&relay).await,
        "blindrelay_packets_forwarded_total{kind=\"rtp\"}",
    );
    let relay_ref = &relay;
    let pages = drive_released(
        &args,
        Some(async move {
            // The page stays until the relay has forwarded it to the bot for a while.
            await_metrics(
                relay_ref,
                Duration::from_secs(30),
                "the bot receives the page's media",
                |m| metric(m, "blindrelay_packets_forwarded_total{kind=\"rtp\"}") >= before + 200.0,
            )
            .await;
        }),
    )
    .await;
    let page = &pages[0];
    assert!(page.ok(), "{}", page.brief());
    assert_eq!(page.s("call_mode"), "standard");
    let features = page.s("features").as_array().cloned().unwrap_or_default();
    assert!(
        features
            .iter()
            .any(|f| f["name"] == "record" && f["ok"] == true),
        "Record carried out: {features:?}"
    );
    let bot = waiting.await.expect("bot task");
    assert!(bot.joined && bot.error.is_none(), "{:?}", bot.error);
    assert_eq!(bot.invited.as_ref().map(|i| i.0.as_str()), Some(call));
    assert!(
        bot.received_packets > 100,
        "the bot recorded {} packets",
        bot.received_packets
    );
    eprintln!(
        "recording bot: refused on the E2EE call; on the standard call invited by Record, received {} packets",
        bot.received_packets
    );
    relay.shutdown().await;
}

/// A real clip for e2ee-client to send, made now with GStreamer: VP8 video (IVF) and Opus
/// audio (Ogg). Removed when dropped.
struct Clip {
    dir: PathBuf,
    ivf: PathBuf,
    opus: PathBuf,
}

impl Clip {
    fn make(tag: &str) -> Clip {
        // The clip: 300 frames of a moving ball, a key frame every 30 frames.
        let dir = temp_path(tag, "d");
        std::fs::create_dir_all(&dir).expect("clip dir");
        let out = std::process::Command::new("gst-launch-1.0")
            .args([
                "-q",
                "videotestsrc",
                "num-buffers=300",
                "pattern=ball",
                "!",
                "video/x-raw,width=320,height=240,framerate=30/1",
                "!",
                "vp8enc",
                "deadline=1",
                "keyframe-max-dist=30",
                "target-bitrate=600000",
                "!",
                "multifilesink",
            ])
            .arg(format!("location={}/%05d.vp8", dir.display()))
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run gst-launch-1.0 ({e}): run scripts/install-test-deps.sh")
            });
        assert!(
            out.status.success(),
            "vp8enc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("frames")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        let frames: Vec<Vec<u8>> = names
            .iter()
            .map(|p| std::fs::read(p).expect("frame"))
            .collect();
        assert_eq!(frames.len(), 300);
        let clip = dir.join("clip.ivf");
        std::fs::write(
            &clip,
            e2ee_client::webframe::write_ivf(320, 240, 30, &frames),
        )
        .expect("ivf");
        // And 10 s of a 440 Hz tone as Ogg Opus (20 ms packets).
        let opus = dir.join("clip.opus");
        let out = std::process::Command::new("gst-launch-1.0")
            .args([
                "-q",
                "audiotestsrc",
                "num-buffers=500",
                "wave=sine",
                "freq=440",
                "!",
                "audio/x-raw,rate=48000,channels=1",
                "!",
                "opusenc",
                "!",
                "oggmux",
                "!",
                "filesink",
            ])
            .arg(format!("location={}", opus.display()))
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run gst-launch-1.0 ({e}): run scripts/install-test-deps.sh")
            });
        assert!(
            out.status.success(),
            "opusenc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Clip {
            dir,
            ivf: clip,
            opus,
        }
    }
}

impl Drop for Clip {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Chromium <-> e2ee-client sending a real VP8 clip (made now with GStreamer's vp8enc,
/// RFC 7741 packets, each frame SFrame-sealed in the web client's framing): the page
/// decrypts and renders the client's picture, and the client opens the page's frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_e2ee_clients_real_vp8_clip() {
    let _lock = CALL_LOCK.lock().await;
    let clip = Clip::make("clip");
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let call = "web-clip";
    let client = CallOptions {
        video_clip: Some(clip.ivf.clone()),
        audio_clip: Some(clip.opus.clone()),
        ..rusty(&relay, &cfg, call, 25)
    };
    let client = tokio::spawn(async move { run_call(&client).await });
    let url = webby_url(&relay, &cfg, call, true);
    let args = peer_args(&[
        "--page",
        &url,
        "--until",
        "media",
        "--min-video-frames",
        "100",
        "--timeout",
        "24",
    ]);
    let pages = drive(&args).await;
    let s = client.await.expect("e2ee-client task");
    let page = &pages[0];
    let rusty = s.participant.clone().unwrap_or_default();
    eprintln!(
        "page: {} VP8 frames decoded from e2ee-client's clip, canvas {}, decrypted {} (failures {}); e2ee-client decrypted {} (failures {})",
        page.video_frames_from(&rusty),
        page.0["samples"][&rusty],
        page.num("frames_decrypted"),
        page.num("decrypt_failures"),
        s.frames_decrypted,
        s.decrypt_failures
    );
    assert!(page.ok(), "{}", page.brief());
    assert_eq!(page.code(), s.verification_code.as_deref());
    assert!(page.video_frames_from(&rusty) > 100, "{}", page.brief());
    let sample = &page.0["samples"][&rusty];
    assert!(
        sample["stddev"].as_f64().unwrap_or(0.0) > 5.0
            && sample["distinctColours"].as_u64().unwrap_or(0) > 2,
        "the clip on a canvas is not uniform: {sample}"
    );
    assert_eq!(page.num("decrypt_failures"), 0, "{}", page.brief());
    assert!(s.frames_decrypted > 100 && s.decrypt_failures == 0, "{s:?}");
    // The Opus clip decodes: Chromium plays seconds of it and conceals little (a payload
    // its decoder cannot read would be concealed throughout).
    let audio: Vec<&Value> = page
        .s("inbound")
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["kind"] == "audio" && i["participant"] == rusty.as_str())
                .collect()
        })
        .unwrap_or_default();
    let total: u64 = audio
        .iter()
        .map(|i| i["totalSamplesReceived"].as_u64().unwrap_or(0))
        .sum();
    let concealed: u64 = audio
        .iter()
        .map(|i| i["concealedSamples"].as_u64().unwrap_or(0))
        .sum();
    eprintln!(
        "page: Opus from e2ee-client: {total} samples received, {concealed} concealed: {audio:?}"
    );
    assert!(
        total > 48_000,
        "at least a second of audio played: {audio:?}"
    );
    // Measured: the clip 0 concealed; e2ee-client's synthetic frames about 27%.
    assert!(
        (concealed as f64) < 0.1 * total as f64,
        "{concealed} of {total} samples concealed: {audio:?}"
    );
    // The clip is a sine at 0.8 of full scale: decoded, its level is about 0.8. (Opus
    // decodes any bytes into something: e2ee-client's synthetic frames measured 0.23.)
    let level = audio
        .iter()
        .map(|i| i["audioLevel"].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max);
    assert!(
        level > 0.6,
        "audio level {level}: the tone is heard: {audio:?}"
    );
    relay.shutdown().await;
}

/// Every error code the relay can send has words on the page: the codes are read from the
/// protocol's own `ErrorCode::as_str`, so a new code without a message fails here.
#[test]
fn the_page_has_words_for_every_error_code() {
    let src =
        std::fs::read_to_string(repo_root().join("protocol/src/signal.rs")).expect("signal.rs");
    let start = src
        .find(
            "pub fn as_str(self) -> &'static str {\n        match self {\n            ErrorCode::",
        )
        .expect("ErrorCode::as_str");
    let body = &src[start..];
    let body = &body[..body.find("\n        }\n").expect("end of match")];
    let codes: Vec<&str> = body
        .lines()
        .filter_map(|l| {
            l.split_once("=> \"")
                .map(|(_, r)| r.trim_end_matches("\","))
        })
        .collect();
    assert!(codes.len() >= 20, "{codes:?}");
    let app = std::fs::read_to_string(repo_root().join("web/app.js")).expect("app.js");
    let table = &app[app.find("const ERROR_TEXT = {").expect("ERROR_TEXT")..];
    let table = &table[..table.find("};").expect("end of ERROR_TEXT")];
    for code in codes {
        assert!(
            table.contains(&format!("\n  {code}: ")),
            "no words for `{code}` in web/app.js"
        );
    }
}

/// The demo as a person runs it: pages that only know a name fetch a development token
/// (`?name=`), join end to end encrypted and key; on a relay with a real secret the page
/// says why it cannot get one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_pages_get_development_tokens_and_key_or_say_why_not() {
    let _lock = CALL_LOCK.lock().await;
    let relay = start_relay(loopback_config(), RelayOptions::default()).await;
    let demo = |name: &str| {
        format!(
            "http://{}/?call=demo&name={name}&e2ee=1&autojoin=1",
            relay.signal_addr
        )
    };
    let args = peer_args(&[
        "--page",
        &demo("ann"),
        "--page",
        &demo("ben"),
        "--until",
        "keyed",
        "--timeout",
        "40",
    ]);
    let pages = drive(&args).await;
    for p in &pages {
        assert!(p.ok(), "{}", p.brief());
    }
    assert_eq!(pages[0].code(), pages[1].code());
    relay.shutdown().await;

    let mut cfg = loopback_config();
    cfg.auth.api_secret = "a-real-secret-that-is-long-enough-0123456789".into();
    let relay = start_relay(cfg, RelayOptions::default()).await;
    let url = format!(
        "http://{}/?call=demo&name=ann&autojoin=1",
        relay.signal_addr
    );
    let args = peer_args(&["--page", &url, "--until", "error", "--timeout", "20"]);
    let pages = drive(&args).await;
    let p = &pages[0];
    assert!(p.ok(), "{}", p.brief());
    assert_eq!(p.s("error")["code"], "dev_tokens_disabled");
    let shown = p.0["message"].as_str().unwrap_or("");
    assert!(
        shown.contains("Development tokens are off") && shown.contains("own API secret"),
        "{shown}"
    );
    relay.shutdown().await;
}

/// What the relay forwarded, packet by packet: when it saw it, its SSRC, and whether its
/// RTP payload (padding excluded) held any bytes.
type TapLog = std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, u32, bool)>>>;

/// Relay options whose media tap logs every packet into the returned [`TapLog`].
fn tap_log() -> (RelayOptions, TapLog) {
    let log = TapLog::default();
    let l = log.clone();
    let tap: blindrelay::core::forward::MediaTap =
        std::sync::Arc::new(move |pkt: &blindrelay::core::forward::TapPacket<'_>| {
            if let Ok(h) = blindrelay_protocol::rtp::RtpHeader::parse(pkt.data) {
                let payload = !h.payload(pkt.data).is_empty();
                l.lock()
                    .expect("tap log lock")
                    .push((std::time::Instant::now(), h.ssrc, payload));
            }
        });
    (RelayOptions { tap: Some(tap) }, log)
}

/// Packets with a payload that the relay forwarded on SSRCs other than `not`, before and
/// from `at`.
fn payload_packets(log: &TapLog, not: &[u32], at: std::time::Instant) -> (u64, u64) {
    let log = log.lock().expect("tap log lock");
    let mut counts = (0, 0);
    for (t, ssrc, payload) in log.iter() {
        if *payload && !not.contains(ssrc) {
            if *t < at {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
        }
    }
    counts
}

/// e2ee-client "rusty", standard (no E2EE, audio only), for the downgrade tests.
fn standard_rusty(relay: &blindrelay::Relay, cfg: &Config, call: &str, secs: u64) -> CallOptions {
    CallOptions {
        e2ee: false,
        video: false,
        ..rusty(relay, cfg, call, secs)
    }
}

/// A page that asked for E2EE is alone in a provisional E2EE call; a standard e2ee-client
/// joins for `secs`, and the relay makes the call standard (`call_mode_changed`). The page
/// is driven with `args(url)` (until its downgrade question, then held with --wait-stdin and
/// answered as the arguments say). Returns the page, the client's summary, the tap's log,
/// and the instant the page was released to answer: before it, the page had not answered.
async fn downgrade_call(
    call: &str,
    secs: u64,
    args: impl FnOnce(&str) -> Vec<String>,
) -> (
    PageReport,
    e2ee_client::call::CallSummary,
    TapLog,
    std::time::Instant,
) {
    let cfg = loopback_config();
    let (options, log) = tap_log();
    let relay = start_relay(cfg.clone(), options).await;
    let args = args(&webby_url(&relay, &cfg, call, true));
    let client = standard_rusty(&relay, &cfg, call, secs);
    let task = std::sync::Arc::new(tokio::sync::Mutex::new(None));
    let released = std::sync::Arc::new(std::sync::Mutex::new(None));
    let (slot, at) = (task.clone(), released.clone());
    let relay_ref = &relay;
    let pages = drive_released(
        &args,
        Some(async move {
            await_metrics(
                relay_ref,
                Duration::from_secs(40),
                "the page is in its call",
                |m| metric(m, "blindrelay_participants{role=\"user\"}") == 1.0,
            )
            .await;
            let before = metric(
                &scrape(relay_ref).await,
                "blindrelay_packets_forwarded_total{kind=\"rtp\"}",
            );
            *slot.lock().await = Some(tokio::spawn(async move { run_call(&client).await }));
            // The client's audio reaches the page for five seconds (250 packets at 50 a
            // second): the page's media path is up, and a page that sent in the clear
            // would have done so all that time.
            await_metrics(
                relay_ref,
                Duration::from_secs(40),
                "the client's media reaches the page",
                |m| metric(m, "blindrelay_packets_forwarded_total{kind=\"rtp\"}") >= before + 250.0,
            )
            .await;
            *at.lock().expect("release lock") = Some(std::time::Instant::now());
        }),
    )
    .await;
    let client = task.lock().await.take().expect("the client was started");
    let s = client.await.expect("e2ee-client task");
    relay.shutdown().await;
    let released = released
        .lock()
        .expect("release lock")
        .expect("the page was released");
    (pages[0].clone(), s, log, released)
}

/// The question as the page words it, for the relay's `reason`.
fn question_words(reason: &str) -> String {
    let why = reason.strip_prefix("standard call: ").unwrap_or(reason);
    format!("This call can't be end-to-end encrypted: {why}. Continue unencrypted, or leave?")
}

/// What the page showed while the question was pending: the question in words with its two
/// buttons, chat closed, the worker dropping its frames (none sealed: no keys), and
/// `pending_downgrade` holding the relay's reason (the one the client was given).
fn assert_question_shown(page: &PageReport, s: &e2ee_client::call::CallSummary) {
    let q = &page.0["question"];
    let reason = s
        .mode_reason
        .as_deref()
        .expect("the relay gave the client a reason");
    assert!(reason.contains("rusty has not turned on"), "{reason}");
    assert_eq!(q["state"]["pending_downgrade"]["reason"], reason, "{q}");
    assert_eq!(q["visible"], true, "the question is on the page: {q}");
    assert_eq!(
        q["text"].as_str(),
        Some(question_words(reason).as_str()),
        "{q}"
    );
    assert_eq!(
        q["buttons"],
        serde_json::json!(["Leave", "Continue unencrypted"]),
        "{q}"
    );
    assert_eq!(q["chat_disabled"], true, "{q}");
    assert_eq!(q["state"]["joined"], true, "{q}");
    assert_eq!(q["state"]["e2ee"], false, "{q}");
    assert_eq!(q["state"]["frames_encrypted"], 0, "{q}");
    assert!(
        q["state"]["dropped_before_keys"].as_u64().unwrap_or(0) > 50,
        "the page's worker dropped its frames: {q}"
    );
}

/// The client's own SSRCs: every other SSRC is the page's.
fn client_ssrcs(s: &e2ee_client::call::CallSummary) -> Vec<u32> {
    assert!(s.audio_ssrc.is_some(), "the client sent audio: {s:?}");
    s.audio_ssrc.into_iter().chain(s.video_ssrc).collect()
}

/// No downgrade without consent, the page: on a provisional E2EE call a standard
/// e2ee-client joins and the relay makes the call standard. The page asks, in words, and
/// until the person answers the relay forwards not one byte of media from it; answered
/// "continue unencrypted" (`answerDowngrade(true)`), its media flows and reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_before_going_unencrypted_and_sends_nothing_until_answered_yes() {
    let _lock = CALL_LOCK.lock().await;
    let shots = temp_path("web-downgrade", "shots");
    let shots_arg = shots.to_str().expect("utf-8 path").to_string();
    let (page, s, log, released) = downgrade_call("web-downgrade-yes", 30, |url| {
        peer_args(&[
            "--page",
            url,
            "--until",
            "downgrade_question",
            "--timeout",
            "40",
            "--wait-stdin",
            "--answer-downgrade",
            "yes",
            "--then",
            "sending",
            "--min-sent",
            "400",
            "--screenshot",
            &shots_arg,
        ])
    })
    .await;
    eprintln!("page: {}", page.brief());
    assert!(page.ok(), "{}", page.brief());
    assert!(s.joined && s.error.is_none(), "{:?}", s.error);
    // Answered yes: a standard call, the page's media flowing.
    assert!(page.s("pending_downgrade").is_null(), "{}", page.brief());
    assert!(page.s("left_reason").is_null(), "{}", page.brief());
    assert_eq!(page.s("joined"), true);
    assert_eq!(page.s("call_mode"), "standard");
    assert_eq!(page.s("clear_consent"), true);
    let mine = client_ssrcs(&s);
    let (all, _) = payload_packets(&log, &[], released);
    let (before, after) = payload_packets(&log, &mine, released);
    let window = all - before;
    eprintln!(
        "the relay forwarded, with a payload: before the answer {window} packets from the client and {before} from the page; after it {after} from the page"
    );
    assert_eq!(before, 0, "no media from the page before the answer");
    assert!(
        window >= 250,
        "the window held the client's media: {window}"
    );
    assert!(after > 200, "the page's media flows once answered: {after}");
    assert_question_shown(&page, &s);
    shot_to_docs(&shots, "question-0.png", "web-downgrade-question.png");
    let _ = std::fs::remove_dir_all(&shots);
    // And reaches the other side.
    let from_page: u64 = s
        .inbound
        .iter()
        .filter(|i| !mine.contains(&i.ssrc))
        .map(|i| i.packets)
        .sum();
    assert!(
        from_page > 200,
        "the client received {from_page} packets from the page: {:?}",
        s.inbound
    );
}

/// The same question answered "leave" (the page's Leave button): the page leaves the call
/// (`left_reason: downgrade_refused`), the client sees it go (`participant_left`), and the
/// relay never forwarded a byte of media from the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_before_going_unencrypted_and_leaves_when_answered_no() {
    let _lock = CALL_LOCK.lock().await;
    let (page, s, log, released) = downgrade_call("web-downgrade-no", 20, |url| {
        peer_args(&[
            "--page",
            url,
            "--until",
            "downgrade_question",
            "--timeout",
            "40",
            "--wait-stdin",
            "--answer-downgrade",
            "click-no",
            "--then",
            "left",
        ])
    })
    .await;
    eprintln!("page: {}", page.brief());
    assert!(page.ok(), "{}", page.brief());
    assert!(s.joined && s.error.is_none(), "{:?}", s.error);
    assert_eq!(page.s("left_reason"), "downgrade_refused");
    assert_eq!(page.s("joined"), false);
    assert!(page.s("pending_downgrade").is_null());
    let me = page.0["question"]["state"]["participant"]
        .as_str()
        .expect("the page's participant id");
    assert!(
        s.peers_left.iter().any(|p| p == me),
        "the client saw {me} leave: {:?}",
        s.peers_left
    );
    let mine = client_ssrcs(&s);
    let (all, _) = payload_packets(&log, &[], released);
    let (before, after) = payload_packets(&log, &mine, released);
    let window = all - before;
    eprintln!(
        "the relay forwarded, with a payload: {window} packets from the client before the answer; from the page {before} before it and {after} after"
    );
    assert_eq!((before, after), (0, 0), "no media from the page, ever");
    assert!(
        window >= 250,
        "the window held the client's media: {window}"
    );
    assert_question_shown(&page, &s);
}

/// The third way a relay says a call will be standard: `capabilities.e2ee_option` is
/// `hidden` (dave's policy is Disabled) while the URL asked for `e2ee=1`. The page asks
/// before joining, and joins (a standard call) only once told to continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_before_joining_when_the_relay_hides_the_e2ee_it_asked_for() {
    let _lock = CALL_LOCK.lock().await;
    let dir = temp_path("hidden", "d");
    let cfg = policy_config(&dir);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let call = "web-hidden";
    let url = page_url(&relay, &tok(&cfg, "dave", "fabrikam", call), call, true);
    let args = peer_args(&[
        "--page",
        &url,
        "--until",
        "downgrade_question",
        "--timeout",
        "30",
        "--answer-downgrade",
        "click-yes",
        "--then",
        "joined",
    ]);
    let pages = drive(&args).await;
    let page = &pages[0];
    eprintln!("page: {}", page.brief());
    assert!(page.ok(), "{}", page.brief());
    let q = &page.0["question"];
    assert_eq!(q["state"]["e2ee_option"], "hidden", "{q}");
    assert_eq!(q["state"]["joined"], false, "asked before joining: {q}");
    assert!(q["state"]["participant"].is_null(), "{q}");
    let reason = q["state"]["pending_downgrade"]["reason"]
        .as_str()
        .expect("a reason");
    assert!(
        reason.contains("does not offer end-to-end encryption"),
        "{reason}"
    );
    assert_eq!(q["visible"], true, "{q}");
    assert_eq!(
        q["text"].as_str(),
        Some(question_words(reason).as_str()),
        "{q}"
    );
    // Continued: a standard call.
    assert_eq!(page.s("joined"), true);
    assert_eq!(page.s("call_mode"), "standard");
    assert!(page.s("pending_downgrade").is_null());
    assert_eq!(page.s("clear_consent"), true);
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A signalling proxy in front of `relay` that lies as a malicious relay can: once `lie` is
/// set, it slips `call_mode_changed {call_mode: standard}` into every WebSocket it carries,
/// between two of the relay's frames. Everything else passes unchanged (the page's files
/// too: it is loaded through the proxy, so its WebSocket goes through it). Server frames
/// are unmasked and uncompressed, so frame boundaries are read from their headers.
async fn lying_proxy(
    relay: &blindrelay::Relay,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the lying proxy");
    let addr = listener.local_addr().expect("proxy address");
    let upstream = relay.signal_addr;
    let (lie, told) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let told = told.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                lie_on(client, server, told).await;
            });
        }
    });
    (addr, lie)
}

async fn lie_on(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    mut told: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let upstream = async {
        let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
    };
    let downstream = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        // The response head: only a 101 (WebSocket) is read frame by frame.
        let websocket = loop {
            let n = match server_rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = buf.drain(..end + 4).collect();
                if client_wr.write_all(&head).await.is_err() {
                    return;
                }
                break head.starts_with(b"HTTP/1.1 101");
            }
        };
        if !websocket {
            if client_wr.write_all(&buf).await.is_ok() {
                let _ = tokio::io::copy(&mut server_rd, &mut client_wr).await;
            }
            return;
        }
        let mut lied = false;
        loop {
            // Whole frames only: between two writes is a frame boundary.
            while let Some(len) = ws_frame_len(&buf) {
                let frame: Vec<u8> = buf.drain(..len).collect();
                if client_wr.write_all(&frame).await.is_err() {
                    return;
                }
            }
            if !lied && *told.borrow_and_update() {
                lied = true;
                let lie = br#"{"type":"call_mode_changed","call_mode":"standard","reason":"standard call: mallory has not turned on end-to-end encryption"}"#;
                // A text frame, its length in the fewest bytes (browsers insist).
                let mut frame = vec![0x81];
                match u8::try_from(lie.len()) {
                    Ok(n) if n < 126 => frame.push(n),
                    _ => {
                        frame.push(126);
                        frame.extend_from_slice(&(lie.len() as u16).to_be_bytes());
                    }
                }
                frame.extend_from_slice(lie);
                if client_wr.write_all(&frame).await.is_err() {
                    return;
                }
                continue;
            }
            tokio::select! {
                r = server_rd.read(&mut chunk) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
                // The test dropping its sender ends the lying, not the connection.
                r = told.changed(), if !lied => if r.is_err() { lied = true },
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

/// The length of the unmasked WebSocket frame at the start of `b`, once all of it is there.
fn ws_frame_len(b: &[u8]) -> Option<usize> {
    let len7 = usize::from(*b.get(1)? & 0x7f);
    let (head, len) = match len7 {
        126 => (
            4usize,
            usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])),
        ),
        127 => {
            let ext: [u8; 8] = b.get(2..10)?.try_into().ok()?;
            (10, usize::try_from(u64::from_be_bytes(ext)).ok()?)
        }
        n => (2, n),
    };
    let total = head.checked_add(len)?;
    (b.len() >= total).then_some(total)
}

/// After keys exist, a relay's claim that the call is standard is refused without a
/// question: the page stays in the call, encrypted, and says the relay tried. The lie comes
/// from a proxy (an honest relay never sends it to a keyed call); e2ee-client opens every
/// frame the page sends after it, so none went out in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_page_refuses_a_downgrade_and_stays_encrypted() {
    let _lock = CALL_LOCK.lock().await;
    let cfg = loopback_config();
    let (options, log) = tap_log();
    let relay = start_relay(cfg.clone(), options).await;
    let (proxy, lie) = lying_proxy(&relay).await;
    let call = "web-lie-after-keys";
    let client = CallOptions {
        video: false,
        ..rusty(&relay, &cfg, call, 30)
    };
    let client = tokio::spawn(async move { run_call(&client).await });
    let url = format!(
        "http://{proxy}/?call={call}&token={}&autojoin=1&e2ee=1",
        token(&cfg, "webby", Some(call), "user")
    );
    let args = peer_args(&[
        "--page",
        &url,
        "--until",
        "keyed",
        "--min-encrypted",
        "100",
        "--min-decrypted",
        "50",
        "--timeout",
        "30",
        "--wait-stdin",
        "--then",
        "keyed",
    ]);
    let ready = std::sync::Arc::new(tokio::sync::Notify::new());
    let lied_at = std::sync::Arc::new(std::sync::Mutex::new(None));
    let at = lied_at.clone();
    let relay_ref = &relay;
    let pages = drive_ready(
        &args,
        ready.clone(),
        Some(async move {
            ready.notified().await;
            *at.lock().expect("lie lock") = Some(std::time::Instant::now());
            lie.send_replace(true);
            // The page goes on for a while after the lie (about 80 packets a second).
            let before = metric(
                &scrape(relay_ref).await,
                "blindrelay_packets_forwarded_total{kind=\"rtp\"}",
            );
            await_metrics(
                relay_ref,
                Duration::from_secs(30),
                "media after the lie",
                |m| metric(m, "blindrelay_packets_forwarded_total{kind=\"rtp\"}") >= before + 500.0,
            )
            .await;
        }),
    )
    .await;
    let s = client.await.expect("e2ee-client task");
    relay.shutdown().await;
    let page = &pages[0];
    eprintln!("page: {}", page.brief());
    assert!(page.ok(), "{}", page.brief());
    assert_eq!(page.s("downgrades_refused"), 1, "{}", page.brief());
    assert_eq!(page.s("call_mode"), "e2ee");
    assert_eq!(page.s("e2ee"), true);
    assert!(
        page.s("pending_downgrade").is_null(),
        "no question once keyed"
    );
    assert!(page.s("left_reason").is_null(), "the page stayed");
    assert!(
        page.s("messages")
            .as_array()
            .is_some_and(|m| m.iter().any(|t| t
                .as_str()
                .is_some_and(|t| t.contains("stays end-to-end encrypted")))),
        "the page says the relay tried: {}",
        page.brief()
    );
    let lied_at = lied_at.lock().expect("lie lock").expect("the lie was told");
    let mine = client_ssrcs(&s);
    let (_, after) = payload_packets(&log, &mine, lied_at);
    eprintln!(
        "after the lie the page sent {after} packets; e2ee-client decrypted {} frames in all, {} failures",
        s.frames_decrypted, s.decrypt_failures
    );
    assert!(after > 200, "the page went on sending: {after}");
    assert!(s.e2ee, "{:?}", s.e2ee_error);
    assert_eq!(
        s.decrypt_failures, 0,
        "every frame from the page opened: {s:?}"
    );
    assert!(s.frames_decrypted > after / 2, "{s:?}");
}

/// e2ee-client as `name` in the group (MLS) call `call` for `secs`, in the web framing.
fn mls_client(
    relay: &blindrelay::Relay,
    cfg: &Config,
    call: &str,
    name: &str,
    secs: u64,
) -> CallOptions {
    CallOptions {
        token: token(cfg, name, Some(call), "user"),
        name: name.into(),
        e2ee_scheme: blindrelay_protocol::signal::E2eeScheme::Mls,
        ..rusty(relay, cfg, call, secs)
    }
}

/// The page's URL for `user` joining the group (MLS) call `call`.
fn mls_page_url(relay: &blindrelay::Relay, cfg: &Config, call: &str, user: &str) -> String {
    format!(
        "{}&scheme=mls",
        page_url(relay, &token(cfg, user, Some(call), "user"), call, true)
    )
}

/// Group E2EE (scheme `mls`) with pages and e2ee-clients in ONE MLS group: two pages (ts-mls
/// in the worker) and two e2ee-clients (openmls) join one call. Every member opens every
/// other member's frames (the clients send a real VP8 and Opus clip, which the pages open
/// and decode; the clients, with `--web-peers`, open the pages' frames and each other's),
/// all four show one code and one member list for the epoch the pages reached, and not one
/// frame fails to open anywhere (frames sealed before a member joined are not for it, and
/// not failures). The relay's capture of the call, read with no payload-type flags,
/// audits blind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_e2ee_clients_key_one_mls_group() {
    let _lock = CALL_LOCK.lock().await;
    let clip = Clip::make("mls-clip");
    let pcap = temp_path("web-mls", "pcap");
    let cfg = capture_config(&pcap);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let call = "web-mls";
    let client = |name: &str| CallOptions {
        video_clip: Some(clip.ivf.clone()),
        audio_clip: Some(clip.opus.clone()),
        ..mls_client(&relay, &cfg, call, name, 30)
    };
    let (c1, c2) = (client("rusty"), client("crabby"));
    let c1 = tokio::spawn(async move { run_call(&c1).await });
    let c2 = tokio::spawn(async move { run_call(&c2).await });
    let url = |user: &str| mls_page_url(&relay, &cfg, call, user);
    let args = peer_args(&[
        "--page",
        &url("webby"),
        "--page",
        &url("pagey"),
        "--until",
        "group",
        "--min-members",
        "4",
        "--min-encrypted",
        "200",
        "--min-decrypted",
        "50",
        // Then every remote video decodes on each page: the other page's camera and
        // both clients' clip.
        "--then",
        "media",
        "--min-video-frames",
        "60",
        "--timeout",
        "40",
    ]);
    let pages = drive(&args).await;
    let s1 = c1.await.expect("e2ee-client task");
    let s2 = c2.await.expect("e2ee-client task");
    settle_capture(&relay).await;
    let report = audit_file(&pcap, None).expect("the relay's capture is a readable pcapng");
    let table = report.table();
    eprintln!("{table}");
    for p in &pages {
        eprintln!(
            "{}: epoch {}, code {:?}, members {}, decrypted from {}, failures {} (last: {}), video frames decoded from the clients {} and {}",
            p.me(),
            p.s("epoch"),
            p.code(),
            p.s("group_members"),
            p.s("frames_decrypted_from"),
            p.num("decrypt_failures"),
            p.s("last_decrypt_error"),
            p.video_frames_from(s1.participant.as_deref().unwrap_or_default()),
            p.video_frames_from(s2.participant.as_deref().unwrap_or_default()),
        );
    }
    for s in [&s1, &s2] {
        eprintln!(
            "{:?}: epochs {:?}, decrypted from {:?}, failures {} {:?}",
            s.participant,
            s.epoch_codes,
            s.frames_decrypted_from,
            s.decrypt_failures,
            s.decrypt_failures_by
        );
    }
    let names = ["crabby", "pagey", "rusty", "webby"];
    for p in &pages {
        assert!(p.ok(), "{}", p.brief());
        assert_eq!(p.s("e2ee_scheme"), "mls");
        assert_eq!(p.num("key_packages_refused"), 0, "{}", p.brief());
        assert_eq!(p.s("group_members"), &serde_json::json!(names));
        assert!(grouped_code(p.code().unwrap_or("")), "{}", p.brief());
        // Every feature disabled, each with a reason in a group call's terms.
        let features = p.0["features"].as_array().expect("feature buttons");
        assert_eq!(features.len(), 8);
        for f in features {
            let why = f["reason"].as_str().unwrap_or("");
            assert_eq!(f["disabled"], true, "{f}");
            assert!(why.len() > 10 && !why.contains("one-to-one"), "{f}");
        }
        let add = features.iter().find(|f| f["name"] == "add_participant");
        assert!(
            add.is_some_and(|f| f["reason"].as_str().unwrap_or("").contains("group")),
            "{add:?}"
        );
        // Frames opened from each other member: both clients and the other page; and
        // the clients' clip decoded, not just opened.
        let from = p.s("frames_decrypted_from");
        for s in [&s1, &s2] {
            let who = s.participant.as_deref().expect("joined");
            assert!(from[who].as_u64().unwrap_or(0) >= 50, "{}", p.brief());
            assert!(p.video_frames_from(who) > 60, "{}", p.brief());
            let sample = &p.0["samples"][who];
            assert!(
                sample["stddev"].as_f64().unwrap_or(0.0) > 5.0
                    && sample["distinctColours"].as_u64().unwrap_or(0) > 2,
                "the clip on a canvas is not uniform: {sample}"
            );
        }
        // One code and one member list per epoch on all four.
        let epoch = p.num("epoch");
        for s in [&s1, &s2] {
            assert_eq!(
                s.epoch_codes.get(&epoch).map(String::as_str),
                p.code(),
                "epoch {epoch}: {:?} vs {}",
                s.participant,
                p.me()
            );
            assert_eq!(
                s.epoch_members.get(&epoch),
                Some(&names.map(String::from).to_vec()),
                "epoch {epoch}: {:?}",
                s.participant
            );
        }
    }
    assert_eq!(pages[0].code(), pages[1].code());
    assert_eq!(pages[0].s("epoch"), pages[1].s("epoch"));
    for p in &pages {
        assert_eq!(p.num("decrypt_failures"), 0, "{}", p.brief());
    }
    for s in [&s1, &s2] {
        assert_eq!(
            s.decrypt_failures, 0,
            "{:?}: {:?}",
            s.participant, s.decrypt_failures_by
        );
        assert!(s.error.is_none(), "{:?}", s.error);
        assert!(s.e2ee, "e2ee-client keyed: {:?}", s.e2ee_error);
        assert_eq!(s.e2ee_scheme.as_deref(), Some("mls"));
        for p in &pages {
            assert!(
                s.frames_decrypted_from.get(p.me()).copied().unwrap_or(0) > 50,
                "{:?} opened too few of {}'s frames: {:?}",
                s.participant,
                p.me(),
                s.frames_decrypted_from
            );
        }
    }
    // The relay saw only ciphertext: every stream of all four members continues SFrame
    // sequences, judged by the codec maps the capture carries.
    assert!(report.blind, "{table}");
    assert_eq!(report.codec_maps, 4, "one codec map per member: {table}");
    // Four members, so the pages simulcast: two video layers each.
    assert_eq!(
        report.streams.len(),
        10,
        "four members, audio and video each, the pages' video in two layers: {table}"
    );
    // Every frame of every stream continues an SFrame sequence: a group changes KIDs with
    // each epoch, and a KID that lived only a few frames (two leaves as the pages close)
    // counts beside the sequences around it.
    for st in &report.streams {
        assert!(st.frames > 50, "{table}");
        assert_eq!(st.sframe_frames, st.frames, "{table}");
    }
    relay.shutdown().await;
    let _ = std::fs::remove_file(&pcap);
}

/// A page leaves an MLS call, then a page joins late, in one browser and one relay (the
/// suite's time): two e2ee-clients and pages "webby" and "pagey" key one group; pagey
/// clicks Leave. The others move to a new epoch with a new code (webby says the code
/// changed; the e2ee-clients show the same code for that epoch), the member list loses
/// pagey, and no frame of pagey's opens at webby after that. Then "latey" joins: it is
/// added (everyone's member list and code agree) and opens every other member's frames
/// within 2 s of its join (`keyed_ms`, measured on the page). No member fails to open a
/// frame in all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_leaves_and_a_page_joins_late_an_mls_call() {
    let _lock = CALL_LOCK.lock().await;
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let call = "web-mls-churn";
    let (c1, c2) = (
        mls_client(&relay, &cfg, call, "rusty", 40),
        mls_client(&relay, &cfg, call, "crabby", 40),
    );
    let c1 = tokio::spawn(async move { run_call(&c1).await });
    let c2 = tokio::spawn(async move { run_call(&c2).await });
    let url = |user: &str| mls_page_url(&relay, &cfg, call, user);
    let args = peer_args(&[
        "--page",
        &url("webby"),
        "--page",
        &url("pagey"),
        "--until",
        "group",
        "--min-members",
        "4",
        "--min-decrypted",
        "50",
        "--leave-page",
        "1",
        "--then",
        "group:3",
        "--then",
        "settled",
        "--late-page",
        &url("latey"),
        "--then",
        "group:4",
        "--then",
        "decoding:1",
        "--timeout",
        "30",
    ]);
    let pages = drive(&args).await;
    let s1 = c1.await.expect("e2ee-client task");
    let s2 = c2.await.expect("e2ee-client task");
    assert_eq!(pages.len(), 3, "three pages reported");
    for p in &pages {
        assert!(p.ok(), "{}", p.brief());
    }
    let (webby, pagey, latey) = (&pages[0], &pages[1], &pages[2]);
    // webby's state when all four were keyed [0], after the leave [2], once the previous
    // epoch's keys are gone [3], and at the end.
    let step = |p: &PageReport, i: usize| p.0["steps"][i]["state"].clone();
    let (before, after) = (step(webby, 0), step(webby, 2));
    let leaver = step(pagey, 0)["participant"]
        .as_str()
        .expect("pagey joined")
        .to_string();
    eprintln!(
        "webby: epoch {} code {} -> epoch {} code {} (code changes {}), pagey's frames {} -> {}",
        before["epoch"],
        before["verification_code"],
        after["epoch"],
        after["verification_code"],
        after["code_changes"],
        after["frames_decrypted_from"][&leaver],
        webby.s("frames_decrypted_from")[&leaver]
    );
    eprintln!(
        "latey: keyed {} ms after its join ({}), first key frame {}, first video {}",
        latey.s("keyed_ms"),
        latey.s("first_decrypted_ms"),
        latey.s("first_keyframe_ms"),
        latey.s("first_video_ms")
    );
    for s in [&s1, &s2] {
        eprintln!(
            "{:?}: epochs {:?}, decrypted from {:?}, failures {} {:?}",
            s.participant,
            s.epoch_codes,
            s.frames_decrypted_from,
            s.decrypt_failures,
            s.decrypt_failures_by
        );
    }
    // The leave: a new epoch, a new code the page points out, the leaver off the list.
    assert_eq!(
        before["group_members"],
        serde_json::json!(["crabby", "pagey", "rusty", "webby"])
    );
    assert_eq!(
        after["group_members"],
        serde_json::json!(["crabby", "rusty", "webby"])
    );
    assert!(after["epoch"].as_u64() > before["epoch"].as_u64());
    assert_ne!(after["verification_code"], before["verification_code"]);
    assert!(after["code_changes"].as_u64() > before["code_changes"].as_u64());
    let epoch_left = after["epoch"].as_u64().expect("an epoch");
    for s in [&s1, &s2] {
        assert_eq!(
            s.epoch_codes.get(&epoch_left).map(String::as_str),
            after["verification_code"].as_str(),
            "{:?} shows webby's code for epoch {epoch_left}",
            s.participant
        );
    }
    // The leaver's frames stop opening, while the others' go on. Frames it sealed before
    // leaving may still open while the previous epoch's keys are kept (their 2 s grace, for
    // frames that overtook the commit or queued behind it); once webby holds only the
    // current epoch's keys (`settled`, step 3), none of its frames opens any more.
    let settled = step(webby, 3);
    assert_eq!(settled["previous_epoch_keys"], 0, "{settled}");
    assert_eq!(
        webby.s("frames_decrypted_from")[&leaver],
        settled["frames_decrypted_from"][&leaver]
    );
    let rusty_id = s1.participant.as_deref().expect("rusty joined");
    assert!(
        webby.s("frames_decrypted_from")[rusty_id].as_u64()
            > settled["frames_decrypted_from"][rusty_id].as_u64(),
        "webby went on opening rusty's frames"
    );
    // The late join: added, one code, every other member's frames within 2 s.
    let names = serde_json::json!(["crabby", "latey", "rusty", "webby"]);
    let epoch = latey.num("epoch");
    for p in [webby, latey] {
        assert_eq!(p.s("group_members"), &names, "{}", p.brief());
        assert_eq!(p.num("epoch"), epoch);
        assert_eq!(p.code(), latey.code());
        assert_eq!(p.num("key_packages_refused"), 0);
    }
    assert!(grouped_code(latey.code().unwrap_or("")));
    let keyed = latey
        .s("keyed_ms")
        .as_f64()
        .expect("latey opened everyone's frames");
    assert!(keyed <= 2000.0, "latey keyed {keyed} ms after its join");
    // And a picture from webby soon after: a key frame of the new epoch that latey could
    // open (keys alone show nothing), then a decoded frame, seen at the page's 500 ms
    // stats tick.
    let webby_ms = |what: &str| latey.s(what)[webby.me()].as_f64();
    let key = webby_ms("first_keyframe_ms").expect("latey opened a key frame of webby's");
    assert!(
        key <= 2000.0,
        "latey's first key frame from webby {key} ms after its join"
    );
    let video = webby_ms("first_video_ms").expect("latey decoded webby's video");
    assert!(
        video <= 3000.0,
        "latey's first picture from webby {video} ms after its join"
    );
    for s in [&s1, &s2] {
        assert!(s.error.is_none(), "{:?}", s.error);
        assert_eq!(
            s.epoch_codes.get(&epoch).map(String::as_str),
            latey.code(),
            "{:?}: one code for epoch {epoch}",
            s.participant
        );
        let from = |p: &PageReport| s.frames_decrypted_from.get(p.me()).copied().unwrap_or(0);
        assert!(
            from(latey) > 0 && from(webby) > 0,
            "{:?}",
            s.frames_decrypted_from
        );
    }
    // Not one frame failed to open, anywhere.
    for p in [webby, latey] {
        assert_eq!(p.num("decrypt_failures"), 0, "{}", p.brief());
    }
    // The worker's last counts before pagey left stay in its state.
    assert_eq!(pagey.num("decrypt_failures"), 0, "pagey until it left");
    for s in [&s1, &s2] {
        assert_eq!(
            s.decrypt_failures, 0,
            "{:?}: {:?}",
            s.participant, s.decrypt_failures_by
        );
    }
    relay.shutdown().await;
}

/// The video heights `state` (one page's state at some step) decodes from each other
/// participant, and the frames decoded from them.
fn video_in(state: &Value) -> Vec<(String, u64, u64)> {
    state["inbound"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["kind"] == "video")
                .map(|i| {
                    (
                        i["participant"].as_str().unwrap_or("?").to_string(),
                        i["frameHeight"].as_u64().unwrap_or(0),
                        i["framesDecoded"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Simulcast from the web client, end-to-end encrypted: three pages in one MLS call each
/// send their camera in two SSRC layers (320x240 and 640x480; a call of two gets one). The
/// page opened with `maxres=300` is sent the 240-line layer of both others, which the relay
/// picks by the heights their VP8 key frames announce in the bytes the E2EE framing leaves
/// clear; the others are sent the 360-line layer. When that page lifts its cap
/// (`max_resolution` with no height) it moves up to 480 lines at the next key frame, which
/// the relay asks for, and the relay counts the switches. Every frame opens, nothing freezes
/// for long, and each relay's capture of the call (both layers of each sender) audits blind.
///
/// `nodes` serve the pages: Alice and Carol join the first, Bob the last. With two nodes
/// Bob's layers are chosen on his node from every layer the link carries, while Alice and
/// Carol are chosen for on theirs.
async fn pages_simulcast(
    call: &str,
    nodes: &[&blindrelay::Relay],
    captures: &[PathBuf],
    cfg: &Config,
) {
    logs();
    let first = nodes.first().expect("a node");
    let last = nodes.last().expect("a node");
    let url = |relay, user: &str| mls_page_url(relay, cfg, call, user);
    let capped = format!("{}&maxres=300", url(last, "bob"));
    let args = peer_args(&[
        "--page",
        &url(first, "alice"),
        "--page",
        &capped,
        "--page",
        &url(first, "carol"),
        "--until",
        "group",
        "--min-members",
        "3",
        "--then",
        "media",
        "--min-video-frames",
        "60",
        "--hold",
        "4",
        "--max-resolution",
        "1=none",
        "--hold",
        "5",
        "--timeout",
        "60",
    ]);
    let pages = drive(&args).await;
    // Bob's node chose his layers.
    let m = scrape(last).await;
    // Steps: 0 group, 1 media, 2 after 4 s, 3 the cap lifted, 4 after 5 s more.
    let step = |p: &PageReport, i: usize| p.0["steps"][i]["state"].clone();
    for (n, p) in pages.iter().enumerate() {
        let video = |v: &Value| -> Vec<Value> {
            v.as_array()
                .map(|a| a.iter().filter(|i| i["kind"] == "video").cloned().collect())
                .unwrap_or_default()
        };
        eprintln!(
            "page {n} {}: replayed {} dropped {} failures {} last {}; capped {:?}, then {:?}; receives {:?}; sends {:?}",
            p.me(),
            p.num("frames_replayed"),
            p.num("dropped_before_keys"),
            p.num("decrypt_failures"),
            p.s("last_decrypt_error"),
            video_in(&step(p, 2)),
            video_in(&step(p, 4)),
            video(p.s("inbound")),
            video(p.s("outbound")),
        );
    }
    for (n, p) in pages.iter().enumerate() {
        assert!(p.ok(), "page {n} missed a condition: {}", p.brief());
        assert_eq!(p.s("simulcast"), true, "{}", p.brief());
        assert_eq!(p.s("layers_on"), true, "three in the call: {}", p.brief());
        assert_eq!(p.num("capture_height"), 480, "{}", p.brief());
        let mut sent: Vec<(u64, u64)> = p
            .s("outbound")
            .as_array()
            .expect("outbound")
            .iter()
            .filter(|o| o["kind"] == "video")
            .map(|o| {
                (
                    o["frameHeight"].as_u64().unwrap_or(0),
                    o["packetsSent"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        sent.sort_unstable();
        assert!(
            sent.len() == 2
                && sent[0].0 == 240
                && sent[1].0 == 480
                && sent.iter().all(|s| s.1 > 100),
            "two layers sent, 240 and 480 lines: {sent:?}"
        );
        assert_eq!(p.num("decrypt_failures"), 0, "{}", p.brief());
        assert!(p.num("frames_decrypted") > 300, "{}", p.brief());
        let (capped, lifted) = (video_in(&step(p, 2)), video_in(&step(p, 4)));
        assert_eq!(capped.len(), 2, "video from both others: {capped:?}");
        for (who, h, frames) in &capped {
            let want = if n == 1 { 240 } else { 480 };
            assert_eq!(
                *h, want,
                "page {n} decodes {who} at {want} lines: {capped:?}"
            );
            let later = lifted.iter().find(|l| &l.0 == who).expect("still decoding");
            assert_eq!(later.1, 480, "page {n}, no cap: {lifted:?}");
            assert!(
                later.2 >= frames + 60,
                "page {n} kept decoding {who} across the switch: {frames} then {}",
                later.2
            );
        }
        for i in p.s("inbound").as_array().expect("inbound") {
            if i["kind"] == "video" {
                assert!(
                    i["totalFreezesDuration"].as_f64().unwrap_or(0.0) < 1.0,
                    "no long freeze: {i}"
                );
            }
        }
    }
    let switches = metric(&m, "blindrelay_layer_switches_total");
    assert!(
        switches >= 2.0,
        "the capped page moved up on two tracks: {switches}"
    );
    for (node, pcap) in nodes.iter().zip(captures) {
        settle_capture(node).await;
        let report = audit_file(pcap, None).expect("the relay's capture is a readable pcapng");
        let table = report.table();
        eprintln!("{table}");
        assert!(report.blind, "{table}");
        let video: Vec<_> = report
            .streams
            .iter()
            .filter(|s| s.framing.starts_with("web-vp8"))
            .collect();
        assert!(
            video.len() >= 6,
            "two layers from each of three pages: {table}"
        );
        for s in &report.streams {
            assert_eq!(s.sframe_frames, s.frames, "{table}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_send_simulcast_and_each_receiver_gets_the_layer_it_asks_for() {
    let _lock = CALL_LOCK.lock().await;
    let pcap = temp_path("web-simulcast", "pcap");
    let cfg = capture_config(&pcap);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    pages_simulcast(
        "web-simulcast",
        &[&relay],
        std::slice::from_ref(&pcap),
        &cfg,
    )
    .await;
    relay.shutdown().await;
    let _ = std::fs::remove_file(&pcap);
}

/// The same across a node link: Bob on node b, capped, is sent the lower layer of both
/// others, who are on node a together, and moves up when he lifts the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_on_two_nodes_send_simulcast_and_bob_gets_his_layer_on_his_node() {
    let _lock = CALL_LOCK.lock().await;
    let c = Cluster::start(&["a", "b"]).await;
    let nodes: Vec<_> = c.nodes.iter().collect();
    pages_simulcast("web-simulcast-span", &nodes, &c.captures, &c.cfg).await;
    c.stop().await;
}
