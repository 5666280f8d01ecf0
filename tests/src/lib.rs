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
    let (status, body) = http_get(relay.admin_addr, "/metrics").await;
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

/// A metric's value, 0 when absent.
pub fn metric(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
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
        e2ee_enabled: false,
        offer_sdp: offer,
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
        let answer = sdp::answer_relay_offer(
            &sdp,
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
