//! Helpers for the end-to-end tests: a real relay on loopback with ephemeral ports, tokens,
//! and a Prometheus text parser over its real /metrics endpoint.

use blindrelay::config::Config;
use blindrelay::{Relay, RelayOptions};
use std::collections::HashMap;
use std::time::Duration;

/// A relay config on loopback with OS-chosen ports.
pub fn loopback_config() -> Config {
    let mut c = Config::embedded().expect("embedded config parses");
    c.signal.listen = "127.0.0.1:0".parse().expect("literal");
    c.admin.listen = "127.0.0.1:0".parse().expect("literal");
    c.media.listen = "127.0.0.1:0".parse().expect("literal");
    c
}

pub async fn start_relay(config: Config, options: RelayOptions) -> Relay {
    Relay::start(config, options).await.expect("relay starts")
}

pub fn token(config: &Config, user: &str, call: Option<&str>, role: &str) -> String {
    blindrelay::token::issue(
        &config.auth.api_secret,
        user,
        "tenant-a",
        role,
        call,
        Duration::from_secs(600),
    )
    .expect("token")
}

/// GET a path on the admin listener with a plain HTTP/1.1 request.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, None, "").await
}

/// One HTTP/1.1 request (optionally with a bearer token); returns status and body.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect admin");
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Chunked transfer encoding: strip chunk sizes.
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// Scrape /metrics and parse it with a real Prometheus text parser. Keys are
/// `name{label="value",...}` with labels sorted, values the sample's value (histograms:
/// `_count` and `_sum`).
pub async fn scrape(relay: &Relay) -> HashMap<String, f64> {
    scrape_at(relay.admin_addr).await
}

/// [`scrape`] of the admin listener at `addr` (a relay in another process).
pub async fn scrape_at(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "/metrics status");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text exposition");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let key = if l.is_empty() {
            s.metric.clone()
        } else {
            format!("{}{{{}}}", s.metric, l.join(","))
        };
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => {
                out.insert(
                    format!("{}_count", s.metric),
                    h.iter().map(|b| b.count).fold(0.0, f64::max),
                );
                continue;
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(key, v);
    }
    out
}

/// A metric's value. Panics when the series is not in the scrape, so an assertion on a
/// renamed (or never registered) metric fails instead of reading 0.
pub fn metric(m: &HashMap<String, f64>, key: &str) -> f64 {
    match m.get(key) {
        Some(v) => *v,
        None => panic!(
            "metric series `{key}` is not in the scrape (renamed, or never registered?); \
             series of that name present: {:?}",
            same_family(m, key)
        ),
    }
}

/// A series' value, or `None` while it does not exist. For wait predicates only: labelled
/// counters appear on their first event, so "absent" there means "not yet". A renamed
/// metric then never satisfies the wait, and the wait fails.
pub fn series(m: &HashMap<String, f64>, key: &str) -> Option<f64> {
    m.get(key).copied()
}

/// A labelled series' value, 0 when that label set has not been created yet, for asserting
/// that something never happened (`dtls_handshakes_total{result="ok"}` is created by the
/// first successful handshake). The metric *family* must be in the scrape (some other label
/// set of it), so a renamed metric still fails. Each caller says why absence means 0.
pub fn metric_or_zero(m: &HashMap<String, f64>, key: &str) -> f64 {
    assert!(
        !same_family(m, key).is_empty(),
        "no series of the metric family of `{key}` is in the scrape (renamed?)"
    );
    m.get(key).copied().unwrap_or(0.0)
}

/// The keys in `m` of the same metric name as `key` (labels ignored), sorted.
fn same_family<'a>(m: &'a HashMap<String, f64>, key: &str) -> Vec<&'a str> {
    let name = key.split('{').next().unwrap_or(key);
    let mut v: Vec<&str> = m
        .keys()
        .map(String::as_str)
        .filter(|k| k.split('{').next() == Some(name))
        .collect();
    v.sort_unstable();
    v
}

use blindrelay_protocol::sdp::{self, AnswerInfo, OfferParams};
use blindrelay_protocol::signal::{ClientMessage, ServerMessage};
use blindrelay_transport::DtlsIdentity;
use e2ee_client::signal::Signal;
use e2ee_client::transport::{self, MediaPath};

/// A participant driven by hand, for tests that craft packets and messages.
pub struct RawParticipant {
    pub sig: Signal,
    pub me: String,
    pub answer: AnswerInfo,
    pub ufrag: String,
    pub audio_ssrc: u32,
    pub video_ssrc: u32,
    pub offer_identity: DtlsIdentity,
}

/// The ICE password of raw participants' offers.
const RAW_ICE_PWD: &str = "rawpasswordrawpassword00";

/// Hello + join with a browser-shaped offer; returns before any media path exists.
pub async fn raw_join(url: &str, token: &str, call: &str) -> RawParticipant {
    raw_join_with(url, token, call, false, Default::default()).await
}

/// [`raw_join`], asking for end-to-end encryption with `scheme` when `e2ee`.
pub async fn raw_join_with(
    url: &str,
    token: &str,
    call: &str,
    e2ee: bool,
    scheme: blindrelay_protocol::signal::E2eeScheme,
) -> RawParticipant {
    let mut sig = Signal::connect(url).await.expect("signal connects");
    sig.send(&ClientMessage::Hello {
        token: token.into(),
    })
    .await
    .expect("send hello");
    match sig.recv().await.expect("capabilities") {
        ServerMessage::Capabilities { .. } => {}
        m => panic!("expected capabilities, got {m:?}"),
    }
    let offer_identity = DtlsIdentity::generate().expect("identity");
    let ufrag = format!("raw{}", rand::random::<u16>());
    let (audio_ssrc, video_ssrc) = (rand::random::<u32>() | 1, rand::random::<u32>() | 1);
    let offer = sdp::build_offer(&OfferParams {
        ice_ufrag: &ufrag,
        ice_pwd: RAW_ICE_PWD,
        fingerprint: offer_identity.fingerprint(),
        audio_ssrc,
        video_ssrc,
        cname: "raw",
        session_id: 1,
    });
    sig.send(&ClientMessage::Join {
        call: call.into(),
        e2ee_enabled: e2ee,
        offer_sdp: offer,
        e2ee_scheme: scheme,
    })
    .await
    .expect("send join");
    let (me, answer) = loop {
        match sig.recv().await.expect("joined") {
            ServerMessage::Joined {
                participant,
                answer_sdp,
                ..
            } => {
                break (
                    participant,
                    sdp::parse_answer(&answer_sdp).expect("answer parses"),
                )
            }
            ServerMessage::ParticipantJoined { .. } => continue,
            m => panic!("expected joined, got {m:?}"),
        }
    };
    RawParticipant {
        sig,
        me,
        answer,
        ufrag,
        audio_ssrc,
        video_ssrc,
        offer_identity,
    }
}

impl RawParticipant {
    /// ICE + DTLS with the identity named in the offer.
    pub async fn connect(&self) -> Result<MediaPath, transport::ConnectError> {
        self.connect_as(&self.offer_identity).await
    }

    /// ICE + DTLS presenting `identity` (which may differ from the offer's).
    pub async fn connect_as(
        &self,
        identity: &DtlsIdentity,
    ) -> Result<MediaPath, transport::ConnectError> {
        transport::connect(&self.answer, &self.ufrag, identity, Duration::from_secs(5)).await
    }

    /// Answer the relay's next offer (a track per remote sender), as a browser would: the
    /// relay sends a participant media only for tracks it has answered. Panics if no offer
    /// comes within 5 s.
    pub async fn answer_offer(&mut self) {
        let offer = self
            .wait_for(Duration::from_secs(5), |m| {
                matches!(m, ServerMessage::Offer { .. })
            })
            .await;
        let Some(ServerMessage::Offer { sdp, revision }) = offer else {
            panic!("no offer from the relay");
        };
        self.answer(&sdp, revision).await;
    }

    /// Answer the relay's offer `sdp` with `revision`.
    pub async fn answer(&mut self, sdp: &str, revision: u64) {
        let answer = sdp::answer_relay_offer(
            sdp,
            &self.ufrag,
            RAW_ICE_PWD,
            self.offer_identity.fingerprint(),
        )
        .expect("the relay's offer can be answered");
        self.sig
            .send(&ClientMessage::Answer {
                sdp: answer,
                revision,
            })
            .await
            .expect("send answer");
    }

    /// Wait for a signalling message matching `pred`, up to `timeout`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&ServerMessage) -> bool,
    ) -> Option<ServerMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.sig.recv()).await {
                Ok(Ok(m)) if pred(&m) => return Some(m),
                Ok(Ok(_)) => continue,
                _ => return None,
            }
        }
    }
}

/// An RTP packet with a minimal header and `payload`.
pub fn rtp_packet(ssrc: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    blindrelay_protocol::rtp::RtpHeader {
        marker: true,
        payload_type: 111,
        sequence: seq,
        timestamp: seq as u32 * 960,
        ssrc,
        header_len: 12,
        padding_len: 0,
    }
    .write_minimal(&mut b);
    b.extend_from_slice(payload);
    b
}

/// A browser-shaped offer for raw signalling tests.
pub fn offer(identity: &DtlsIdentity, ufrag: &str, n: u32) -> String {
    sdp::build_offer(&OfferParams {
        ice_ufrag: ufrag,
        ice_pwd: RAW_ICE_PWD,
        fingerprint: identity.fingerprint(),
        audio_ssrc: 2 * n + 1,
        video_ssrc: 2 * n + 2,
        cname: "raw",
        session_id: u64::from(n),
    })
}

/// Connect and authenticate; panics unless the relay answers with capabilities.
pub async fn hello(url: &str, token: &str) -> Signal {
    let mut sig = Signal::connect(url).await.expect("signal connects");
    sig.send(&ClientMessage::Hello {
        token: token.into(),
    })
    .await
    .expect("send hello");
    match sig.recv().await.expect("capabilities") {
        ServerMessage::Capabilities { .. } => sig,
        m => panic!("expected capabilities, got {m:?}"),
    }
}

/// The next signalling message, within 10 s.
pub async fn next_reply(sig: &mut Signal) -> ServerMessage {
    tokio::time::timeout(Duration::from_secs(10), sig.recv())
        .await
        .expect("reply in time")
        .expect("reply")
}

/// Scrape until `pred` holds for the metrics, or panic with `what` after `limit`.
pub async fn await_metrics(
    relay: &blindrelay::Relay,
    limit: Duration,
    what: &str,
    pred: impl Fn(&std::collections::HashMap<String, f64>) -> bool,
) -> std::collections::HashMap<String, f64> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let m = scrape(relay).await;
        if pred(&m) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached in {limit:?}; metrics: {:?}",
            m.iter()
                .filter(|(k, _)| k.starts_with("blindrelay_signalling")
                    || k.starts_with("blindrelay_participants")
                    || k.starts_with("blindrelay_calls"))
                .collect::<Vec<_>>()
        );
        tokio::task::yield_now().await;
    }
}

/// Poll `probe` until it returns `Some`, or panic with `what` after `limit`. For conditions
/// only a request can observe (a policy change seen through `capabilities`...): the short
/// pause between probes is a polling interval, not a guess at how long something takes.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy in front of the relay's signalling listener that counts, by `type`, the
/// messages the relay sends through it. A test that must know a client has reached a state
/// (authenticated and in the lobby: `capabilities`; in its call: `joined`) before the next
/// step points that client at [`SignalWatch::url`] and waits for the message, instead of
/// sleeping. Server-to-client WebSocket frames are neither masked nor compressed, so each
/// message's JSON (`{"type":"joined",...`) appears verbatim in the byte stream.
pub struct SignalWatch {
    /// The signalling URL to give clients instead of `relay.signal_url()`.
    pub url: String,
    seen: tokio::sync::watch::Receiver<HashMap<String, usize>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        // Proxied connections end with their client or the relay.
        self.accept.abort();
    }
}

/// Start a [`SignalWatch`] in front of `relay`.
pub async fn watch_signal(relay: &Relay) -> SignalWatch {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind signalling proxy");
    let addr = listener.local_addr().expect("proxy address");
    let upstream = relay.signal_addr;
    let (tx, seen) = tokio::sync::watch::channel(HashMap::new());
    let tx = std::sync::Arc::new(tx);
    let accept = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                proxy_connection(client, server, &tx).await;
            });
        }
    });
    SignalWatch {
        url: format!("ws://{addr}/v1/signal"),
        seen,
        accept,
    }
}

async fn proxy_connection(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    seen: &tokio::sync::watch::Sender<HashMap<String, usize>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let upstream = async {
        let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut tail = Vec::new();
        loop {
            let n = match server_rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let types = message_types(&mut tail, &buf[..n]);
            if !types.is_empty() {
                seen.send_modify(|m| {
                    for t in types {
                        *m.entry(t).or_default() += 1;
                    }
                });
            }
            if client_wr.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either side ending ends the connection (both halves are dropped).
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

/// The `type`s of the messages that complete in `chunk`, the next bytes of the stream after
/// those `tail` keeps from the previous chunks (a message's start may straddle two reads).
fn message_types(tail: &mut Vec<u8>, chunk: &[u8]) -> Vec<String> {
    const START: &[u8] = br#"{"type":""#;
    let old = tail.len();
    tail.extend_from_slice(chunk);
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = tail[from..]
        .windows(START.len())
        .position(|w| w == START)
        .map(|i| from + i)
    {
        let name_at = i + START.len();
        let Some(len) = tail[name_at..].iter().position(|b| *b == b'"') else {
            break; // the name goes on in the next chunk
        };
        // A name whose closing quote was in an earlier chunk was counted then.
        if name_at + len >= old {
            found.push(String::from_utf8_lossy(&tail[name_at..name_at + len]).into_owned());
        }
        from = name_at + len;
    }
    // Enough for a message start and a type name to straddle the next read.
    let keep = tail.len().min(64);
    tail.drain(..tail.len() - keep);
    found
}

impl SignalWatch {
    /// How many messages of `ty` the relay has sent through this proxy so far.
    pub fn count(&self, ty: &str) -> usize {
        self.seen.borrow().get(ty).copied().unwrap_or(0)
    }

    /// Wait until the relay has sent `n` messages of `ty` through this proxy (over all its
    /// connections), or panic after `limit`.
    pub async fn wait_for(&mut self, ty: &str, n: usize, limit: Duration) {
        let reached = tokio::time::timeout(
            limit,
            self.seen.wait_for(|m| m.get(ty).copied().unwrap_or(0) >= n),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        assert!(
            reached,
            "{n} `{ty}` messages not seen in {limit:?}; seen: {:?}",
            *self.seen.borrow()
        );
    }
}

/// A fresh path in the temp directory: `blindrelay-TAG-PID-NANOS.EXT`.
pub fn temp_path(tag: &str, ext: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "blindrelay-{tag}-{}-{nanos}.{ext}",
        std::process::id()
    ))
}

/// A loopback relay config that captures every forwarded RTP packet to `path`.
pub fn capture_config(path: &std::path::Path) -> Config {
    let mut cfg = loopback_config();
    cfg.capture.path = Some(path.to_path_buf());
    cfg
}

/// Drop reasons a received RTP datagram can get before the forwarding loop hands it to the
/// capture (after that, every packet is offered to it).
pub const DROPPED_BEFORE_CAPTURE: [&str; 10] = [
    "unknown_source",
    "not_connected",
    "srtp_auth_failed",
    "srtp_replay",
    "srtp_malformed",
    "rtp_malformed",
    "worker_queue_full",
    "ssrc_not_owned",
    "unknown_payload_type",
    "rtx_padding",
];

/// Wait until every RTP packet the relay accepted has reached the capture writer (written,
/// or counted as left out), then flush the file. Call it once the clients have returned,
/// so nothing new arrives.
pub async fn settle_capture(relay: &Relay) {
    await_metrics(
        relay,
        Duration::from_secs(10),
        "every accepted RTP packet reached the capture",
        |m| {
            let dropped: f64 = DROPPED_BEFORE_CAPTURE
                .iter()
                .map(|r| {
                    metric(
                        m,
                        &format!("blindrelay_packets_dropped_total{{reason=\"{r}\"}}"),
                    )
                })
                .sum();
            let accepted = metric(m, "blindrelay_packets_received_total{kind=\"rtp\"}") - dropped;
            metric(m, "blindrelay_capture_packets_total")
                + metric(m, "blindrelay_capture_dropped_total")
                >= accepted
        },
    )
    .await;
    relay.flush_capture().await;
}

/// A real `redis-server` on a unix socket in a directory of its own (no port to race
/// for), with persistence off; killed by pid on drop. The cluster's directory in tests.
pub struct RedisServer {
    child: std::process::Child,
    pub url: String,
    dir: std::path::PathBuf,
}

impl RedisServer {
    /// Start one and wait until it answers PING.
    pub fn start() -> RedisServer {
        use std::io::{Read, Write};
        let dir = temp_path("redis", "d");
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let sock = dir.join("redis.sock");
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&sock)
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server: {e}; install it with scripts/install-test-deps.sh")
            });
        let r = RedisServer {
            child,
            url: format!("unix://{}", sock.display()),
            dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let pong = std::os::unix::net::UnixStream::connect(&sock)
                .ok()
                .and_then(|mut s| {
                    s.write_all(b"PING\r\n").ok()?;
                    let mut b = [0u8; 7];
                    s.read_exact(&mut b).ok()?;
                    (&b == b"+PONG\r\n").then_some(())
                });
            if pong.is_some() {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cluster's certificates (`cluster init`, and one per node) in a fresh directory.
pub fn cluster_pki(nodes: &[&str]) -> std::path::PathBuf {
    let dir = temp_path("pki", "d");
    std::fs::create_dir_all(&dir).expect("a temp dir");
    blindrelay::cluster::pki::init(&dir).expect("cluster CA");
    for n in nodes {
        blindrelay::cluster::pki::node_cert(&dir, n).expect("node certificate");
    }
    dir
}

/// `cfg` as node `id` of the cluster whose directory is `redis` and CA is in `pki`.
pub fn as_node(mut cfg: Config, redis: &RedisServer, pki: &std::path::Path, id: &str) -> Config {
    cfg.cluster = Some(blindrelay::config::ClusterConfig {
        node_id: id.into(),
        redis_url: redis.url.clone(),
        quic_listen: "127.0.0.1:0".parse().expect("literal"),
        announce: "127.0.0.1".into(),
        ca: pki.join("ca.pem"),
        cert: pki.join(format!("{id}.pem")),
        key: pki.join(format!("{id}.key")),
        heartbeat: Duration::from_millis(300),
        node_ttl: Duration::from_secs(1),
        directory_timeout: Duration::from_secs(2),
    });
    cfg
}

/// Relay nodes in cluster mode on loopback, each with a capture, sharing a real
/// redis-server as their directory and a cluster CA.
pub struct Cluster {
    pub nodes: Vec<Relay>,
    pub captures: Vec<std::path::PathBuf>,
    /// The last node's config (tokens are the same for all).
    pub cfg: Config,
    pub redis: RedisServer,
    pki: std::path::PathBuf,
}

impl Cluster {
    /// Start one node per id, in order.
    pub async fn start(ids: &[&str]) -> Cluster {
        let redis = RedisServer::start();
        let pki = cluster_pki(ids);
        let mut nodes = Vec::new();
        let mut captures = Vec::new();
        let mut cfg = loopback_config();
        for id in ids {
            let path = temp_path(&format!("cascade-{id}"), "pcap");
            cfg = as_node(capture_config(&path), &redis, &pki, id);
            nodes.push(start_relay(cfg.clone(), RelayOptions::default()).await);
            captures.push(path);
        }
        Cluster {
            nodes,
            captures,
            cfg,
            redis,
            pki,
        }
    }

    /// Stop every node and remove the captures and certificates.
    pub async fn stop(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
        for c in &self.captures {
            let _ = std::fs::remove_file(c);
        }
        let _ = std::fs::remove_dir_all(&self.pki);
    }
}

/// A `blindrelay` process (the real binary), killed when dropped: for tests where a relay
/// must really die (`kill -9`) or stop on a signal.
pub struct RelayProcess {
    pub child: tokio::process::Child,
    pub url: String,
    pub admin: std::net::SocketAddr,
    config: std::path::PathBuf,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        // `kill_on_drop` ends the process; the config file goes with it.
        let _ = std::fs::remove_file(&self.config);
    }
}

/// The relay binary: `BLINDRELAY_BIN`, or the one cargo built next to this test.
pub fn relay_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("BLINDRELAY_BIN") {
        return p.into();
    }
    let me = std::env::current_exe().expect("this test's path");
    // target/debug/deps/failover-HASH -> target/debug/blindrelay
    let bin = me
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("blindrelay"))
        .expect("the test binary sits in target/PROFILE/deps");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p blindrelay --bin blindrelay` \
         (or set BLINDRELAY_BIN)",
        bin.display()
    );
    bin
}

impl RelayProcess {
    /// Start a relay on the default config (the embedded one) with OS-chosen loopback
    /// ports, and `secret` as its token secret instead of the default's; returns once it
    /// printed its addresses.
    pub async fn start(tag: &str, secret: Option<&str>) -> Self {
        Self::start_with(tag, secret, "").await
    }

    /// [`RelayProcess::start`] with `extra` appended to the config (a `[cluster]`
    /// section, say).
    pub async fn start_with(tag: &str, secret: Option<&str>, extra: &str) -> Self {
        let config = temp_path(&format!("failover-{tag}"), "toml");
        let mut text = blindrelay::config::EMBEDDED_DEFAULT.to_string();
        for port in ["7400", "7401", "7402"] {
            let line = format!("listen = \"127.0.0.1:{port}\"");
            assert!(text.contains(&line), "the default config has {line}");
            text = text.replace(&line, "listen = \"127.0.0.1:0\"");
        }
        if let Some(s) = secret {
            let line = format!("api_secret = \"{}\"", loopback_config().auth.api_secret);
            assert!(text.contains(&line), "the default config has {line}");
            text = text.replace(&line, &format!("api_secret = \"{s}\""));
        }
        text.push_str(extra);
        std::fs::write(&config, text).expect("write the relay's config");
        let mut child = tokio::process::Command::new(relay_bin())
            .arg("--config")
            .arg(&config)
            .args(["--log", "warn"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start blindrelay");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let (mut url, mut admin) = (None, None);
        let banner = async {
            while let Ok(Some(l)) = lines.next_line().await {
                let l = l.trim();
                if let Some(u) = l.strip_prefix("signalling") {
                    url = Some(u.trim().to_string());
                } else if let Some(a) = l.strip_prefix("admin") {
                    admin = a
                        .trim()
                        .strip_prefix("http://")
                        .and_then(|a| a.split_whitespace().next())
                        .and_then(|a| a.parse().ok());
                }
                if url.is_some() && admin.is_some() {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), banner)
            .await
            .expect("the relay prints its addresses");
        RelayProcess {
            child,
            url: url.expect("signalling URL"),
            admin: admin.expect("admin address"),
            config,
        }
    }

    /// SIGKILL (kill -9) the process, and reap it.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("kill the relay");
        let status = self.child.wait().await.expect("reap the relay");
        assert!(!status.success(), "killed: {status:?}");
    }
}

/// The nodes' logs on stderr when `RUST_LOG` asks for them (e.g. `blindrelay=debug`): three
/// nodes in one process are hard to follow otherwise.
pub fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// A client of `call` given relays `first` then `then`, watched through its progress.
pub fn client(
    user: &str,
    call: &str,
    first: &RelayProcess,
    then: &RelayProcess,
    secs: u64,
) -> (
    e2ee_client::call::CallOptions,
    tokio::sync::watch::Receiver<e2ee_client::session::Progress>,
) {
    let (tx, rx) = tokio::sync::watch::channel(e2ee_client::session::Progress::default());
    let o = e2ee_client::call::CallOptions {
        relay: first.url.clone(),
        fallback_relays: vec![then.url.clone()],
        progress: Some(std::sync::Arc::new(tx)),
        token: token(&loopback_config(), user, Some(call), "user"),
        call: call.into(),
        duration: Duration::from_secs(secs),
        video_kbps: 300,
        e2ee: true,
        name: user.into(),
        ..Default::default()
    };
    (o, rx)
}

/// Wait up to `limit` until `what` holds for every client's progress.
pub async fn all(
    rxs: &mut [tokio::sync::watch::Receiver<e2ee_client::session::Progress>],
    limit: Duration,
    what: &str,
    pred: impl Fn(&e2ee_client::session::Progress) -> bool,
) {
    for rx in rxs.iter_mut() {
        let reached = tokio::time::timeout(limit, rx.wait_for(|p| pred(p)))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(
            reached,
            "{what}: not reached in {limit:?}: {:?}",
            *rx.borrow()
        );
    }
}

/// At least `n` frames opened from each of `senders` participants in the current session.
pub fn opened_from_each(p: &e2ee_client::session::Progress, senders: usize, n: u64) -> bool {
    p.opened_from.values().filter(|c| **c >= n).count() >= senders
}

/// The simulcast layer `who` was sent, by the height of the key frames before the frames
/// it checked: more than 100 frames at `height`, and at most 1.5 s of frames (45 at
/// 30 fps) at any other. The first frames may come from another layer: a receiver starts
/// at the first key frame of any layer, and is moved at the key frame the relay then asks
/// its layer's sender for.
pub fn mostly_at_height(s: &e2ee_client::call::CallSummary, height: u16, who: &str) {
    let by = &s.frames_verified_by_height;
    eprintln!("{who}: frames by height {by:?}");
    let total: u64 = by.values().sum();
    let at = by.get(&height).copied().unwrap_or(0);
    assert!(at > 100, "{who}: {at} frames at {height} lines: {by:?}");
    assert!(
        total - at <= 45,
        "{who}: {} of {total} frames not at {height} lines: {by:?}",
        total - at
    );
}

#[cfg(test)]
mod tests {
    use super::message_types;

    #[test]
    fn message_types_are_found_across_reads() {
        let stream =
            br#"....{"type":"capabilities","user":"a"}..{"type":"joined","x":{"type":"nested"}}"#;
        // Every split point gives the same messages, each once.
        for cut in 0..stream.len() {
            let mut tail = Vec::new();
            let mut got = message_types(&mut tail, &stream[..cut]);
            got.extend(message_types(&mut tail, &stream[cut..]));
            assert_eq!(got, ["capabilities", "joined", "nested"], "cut at {cut}");
        }
    }
}
