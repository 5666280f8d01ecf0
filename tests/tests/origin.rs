//! The signalling WebSocket checks `Origin`: a browser page of another site cannot open
//! signalling, the relay's own pages and configured origins can, and native clients (no
//! `Origin`) are unaffected. `POST /dev/token` reads only JSON bodies.

use blindrelay::RelayOptions;
use blindrelay_tests::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Send one raw request and return the status code and the response head.
async fn raw(addr: SocketAddr, request: String) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Read the head only: an accepted upgrade leaves the connection open.
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n == 1, "connection closed mid-head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    (status, head)
}

async fn upgrade(addr: SocketAddr, host: &str, origin: Option<&str>) -> u16 {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    raw(
        addr,
        format!(
            "GET /v1/signal HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{origin}\r\n"
        ),
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signalling_upgrade_checks_origin() {
    let mut cfg = loopback_config();
    cfg.signal.allowed_origins = vec!["https://app.example.com".into()];
    let relay = start_relay(cfg, RelayOptions::default()).await;
    let addr = relay.signal_addr;
    let host = addr.to_string();
    let own = format!("http://{host}");
    // Another site's page, the relay's own address on another port, the allowed origin
    // as another host claims it.
    let other_port = format!("http://127.0.0.1:{}", addr.port().wrapping_add(1));
    let foreign = ["https://evil.example", other_port.as_str(), "null"];
    for o in foreign {
        assert_eq!(upgrade(addr, &host, Some(o)).await, 403, "Origin: {o}");
    }
    assert_eq!(upgrade(addr, &host, Some(&own)).await, 101, "own origin");
    assert_eq!(
        upgrade(addr, &host, Some("https://app.example.com")).await,
        101,
        "configured origin"
    );
    assert_eq!(upgrade(addr, &host, None).await, 101, "no Origin");
    let m = scrape(&relay).await;
    assert_eq!(
        metric(
            &m,
            "blindrelay_signalling_refused_total{reason=\"foreign_origin\"}"
        ),
        foreign.len() as f64
    );
    // A native client (no Origin) still signals end to end.
    let cfg = loopback_config();
    let _sig = hello(&relay.signal_url(), &token(&cfg, "nat", Some("c"), "user")).await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_token_reads_only_json() {
    let relay = start_relay(loopback_config(), RelayOptions::default()).await;
    let addr = relay.signal_addr;
    let body = r#"{"user":"dora","call":"demo"}"#;
    let post = |content_type: Option<&str>| {
        let ct = content_type
            .map(|c| format!("Content-Type: {c}\r\n"))
            .unwrap_or_default();
        format!(
            "POST /dev/token HTTP/1.1\r\nHost: {addr}\r\n{ct}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let (status, head) = raw(addr, post(ct)).await;
        assert_eq!(status, 415, "{ct:?}: {head}");
    }
    let (status, head) = raw(addr, post(Some("application/json; charset=utf-8"))).await;
    assert_eq!(status, 200, "{head}");
    relay.shutdown().await;
}
