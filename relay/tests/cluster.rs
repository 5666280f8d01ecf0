//! Relay nodes as an operator runs them: real `blindrelay` processes, a real
//! `redis-server` as the directory, and real QUIC with the cluster's certificates.
//! What this covers so far: certificates, registration and expiry in the directory,
//! `cluster status`, the shared policy store, and who may open a node link.

mod common;
use blindrelay::cluster::link::{self, client_config, Control};
use blindrelay::cluster::pki::NodeTls;
use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "blindrelay-dev-admin-token-loopback-only";
const INSTALL_HINT: &str = "install it with scripts/install-test-deps.sh (apt redis-server)";

/// A throwaway directory under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "blindrelay-cluster-{tag}-{}-{}",
            std::process::id(),
            next_id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        TempDir(p)
    }
}

fn next_id() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real redis-server on a unix socket in its own directory (no port to race for),
/// with persistence off; killed by pid on drop.
struct Redis {
    child: Child,
    url: String,
    _dir: TempDir,
}

impl Redis {
    fn start() -> Redis {
        let dir = TempDir::new("redis");
        let sock = dir.0.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&sock)
            .arg("--dir")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server: {e}; {INSTALL_HINT}"));
        let url = format!("unix://{}", sock.display());
        let r = Redis {
            child,
            url,
            _dir: dir,
        };
        // Up once `cluster status` can read it.
        poll(Duration::from_secs(10), "redis-server answers", || {
            let out = run(&["cluster", "status", "--redis", &r.url]);
            out.status.success().then_some(())
        });
        r
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `probe` every 5 ms until it gives `Some`, or panic after `limit`. The conditions
/// here (a directory entry, another process's metrics) can only be observed by asking.
fn poll<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `cluster init` and a certificate per node, through the binary.
fn cluster_pki(dir: &Path, nodes: &[&str]) {
    let d = dir.to_str().expect("temp paths are UTF-8");
    let out = run(&["cluster", "init", "--dir", d]);
    assert!(out.status.success(), "init: {}", text(&out.stderr));
    assert!(dir.join("ca.pem").exists() && dir.join("ca.key").exists());
    let again = run(&["cluster", "init", "--dir", d]);
    assert_eq!(again.status.code(), Some(2), "init never overwrites a CA");
    for n in nodes {
        let out = run(&["cluster", "cert", "--dir", d, "--node", n]);
        assert!(out.status.success(), "cert {n}: {}", text(&out.stderr));
    }
    let bad = run(&["cluster", "cert", "--dir", d, "--node", "Not_A_Label"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("DNS label"),
        "{}",
        text(&bad.stderr)
    );
}

struct Node {
    process: RelayProcess,
    admin: SocketAddr,
    quic: SocketAddr,
    _config: TempConfig,
}

fn start_node(redis: &Redis, pki: &Path, id: &str, heartbeat: &str, ttl: &str) -> Node {
    let p = |f: String| pki.join(f).display().to_string();
    let config = TempConfig::new(&format!(
        "[signal]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[media]\nlisten = \"127.0.0.1:0\"\n\
         [cluster]\nnode_id = \"{id}\"\nredis_url = \"{}\"\nquic_listen = \"127.0.0.1:0\"\nannounce = \"127.0.0.1\"\n\
         ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nheartbeat = \"{heartbeat}\"\nnode_ttl = \"{ttl}\"\n",
        redis.url,
        p("ca.pem".into()),
        p(format!("{id}.pem")),
        p(format!("{id}.key")),
    ));
    let mut process = RelayProcess::spawn(&config);
    let (_, admin, _) = process.addresses();
    let line = process
        .stdout
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("no node line in the banner: {e}"));
    let quic = line
        .strip_prefix(&format!("  node        {id}, links on udp "))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("node line: {line:?}"));
    Node {
        process,
        admin,
        quic,
        _config: config,
    }
}

fn status(redis: &Redis) -> String {
    let out = run(&["cluster", "status", "--redis", &redis.url]);
    assert!(out.status.success(), "status: {}", text(&out.stderr));
    text(&out.stdout)
}

/// One series' value from a node's /metrics, if present.
fn metric(node: &Node, series: &str) -> Option<f64> {
    let (code, body) = http_get(node.admin, "/metrics");
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

fn effective(node: &Node, user: &str) -> String {
    let (code, body) = http(
        node.admin,
        "GET",
        &format!("/v1/policy/effective?user={user}&tenant=contoso"),
        Some(ADMIN_TOKEN),
        "",
    );
    assert_eq!(code, 200, "{body}");
    body
}

/// Two nodes register, share every policy change within a second (measured from the
/// admin API's answer on one node to the other node serving the change), and leave the
/// directory: at once on SIGTERM, within the TTL after kill -9.
#[test]
fn nodes_register_share_policy_and_leave_the_directory() {
    let redis = Redis::start();
    let pki = TempDir::new("pki");
    cluster_pki(&pki.0, &["a", "b"]);
    // a's record outlives a kill by 30 s: only a clean stop removes it sooner.
    let mut a = start_node(&redis, &pki.0, "a", "1s", "30s");
    let b = start_node(&redis, &pki.0, "b", "200ms", "1s");
    let s = status(&redis);
    assert!(s.starts_with("nodes: 2\n"), "{s}");
    for (id, n) in [("a", &a), ("b", &b)] {
        assert!(
            s.contains(&format!("  {id}  quic {}", n.quic)),
            "{id} listed with its link address: {s}"
        );
    }

    // Policy changes on alternating nodes, each read back on the other node.
    let mut lags = Vec::new();
    let values = ["Required", "DisabledUserOverride"];
    for round in 0..8 {
        let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let value = values[round % 2];
        let (code, body) = http(
            writer.admin,
            "PUT",
            "/v1/policy/policies/Global",
            Some(ADMIN_TOKEN),
            &format!("{{\"calling_e2ee\": \"{value}\"}}"),
        );
        assert_eq!(code, 200, "{body}");
        let t0 = Instant::now();
        let want = format!("\"calling_e2ee\":\"{value}\"");
        poll(
            Duration::from_secs(1),
            "the other node applies the change",
            || effective(reader, "someone").contains(&want).then_some(()),
        );
        lags.push(t0.elapsed());
    }
    // A grant made on b is in force on a.
    let (code, body) = http(
        b.admin,
        "PUT",
        "/v1/policy/users/ceo@contoso",
        Some(ADMIN_TOKEN),
        "{\"policy\": \"Global\"}",
    );
    assert_eq!(code, 200, "{body}");
    poll(Duration::from_secs(1), "a applies b's grant", || {
        effective(&a, "ceo")
            .contains("\"source\":\"user\"")
            .then_some(())
    });
    lags.sort();
    eprintln!(
        "policy propagation, admin answer on one node -> served by the other: median {:?}, max {:?} over {} changes",
        lags[lags.len() / 2],
        lags[lags.len() - 1],
        lags.len()
    );
    // Both apply the same version (9 changes on top of the seed) and counted each.
    let va = poll(Duration::from_secs(1), "a's version", || {
        metric(&a, "blindrelay_cluster_policy_version").filter(|v| *v >= 10.0)
    });
    let vb = poll(Duration::from_secs(1), "b's version", || {
        metric(&b, "blindrelay_cluster_policy_version").filter(|v| *v >= 10.0)
    });
    assert_eq!(va, vb);
    let applied = metric(&b, "blindrelay_cluster_policy_propagation_seconds_count")
        .expect("propagation histogram");
    assert!(applied >= 4.0, "b applied a's changes: {applied}");
    assert!(status(&redis).contains(&format!("policy: v{va}")));

    // kill -9: b's record expires with its TTL (1 s).
    b.process.signal(libc::SIGKILL);
    let t0 = Instant::now();
    poll(Duration::from_secs(5), "b leaves the directory", || {
        let s = status(&redis);
        (s.starts_with("nodes: 1\n") && !s.contains("  b  ")).then_some(())
    });
    eprintln!("a killed node left the directory after {:?}", t0.elapsed());
    // SIGTERM: a removes its record itself, long before its 30 s TTL.
    a.process.signal(libc::SIGTERM);
    let t0 = Instant::now();
    poll(
        Duration::from_secs(5),
        "a leaves the directory on SIGTERM",
        || status(&redis).starts_with("nodes: 0\n").then_some(()),
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    let exit = a.process.wait_for(Duration::from_secs(10));
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
}

fn quic_client() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal")).expect("client endpoint")
}

async fn refused_count(node: &Node, reason: &str, want: f64) {
    let series = format!("blindrelay_cluster_link_refused_total{{reason=\"{reason}\"}}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if metric(node, &series) == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{series} never reached {want}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Only a peer with a certificate from the cluster CA, naming the node it claims to be,
/// gets a node link; each refusal is counted by reason. The accepted link shows in the
/// node's metrics and in `cluster status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_peer_needs_a_node_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let redis = Redis::start();
    let pki = TempDir::new("pki");
    cluster_pki(&pki.0, &["a", "c"]);
    let rogue = TempDir::new("rogue");
    cluster_pki(&rogue.0, &["c"]);
    let a = start_node(&redis, &pki.0, "a", "200ms", "1s");
    let load = |dir: &Path, id: &str| {
        NodeTls::load(
            &dir.join("ca.pem"),
            &dir.join(format!("{id}.pem")),
            &dir.join(format!("{id}.key")),
        )
        .expect("node TLS files")
    };
    let c = load(&pki.0, "c");
    let endpoint = quic_client();

    // 1. No client certificate at all.
    {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(c.ca.clone()).expect("CA");
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![link::ALPN.to_vec()];
        let cfg = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS"),
        ));
        let attempt = async {
            let conn = endpoint.connect_with(cfg, a.quic, "a")?.await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            link::write_control(
                &mut send,
                &Control::Hello {
                    node: "c".into(),
                    version: link::VERSION,
                    incarnation: 1,
                    link: 1,
                },
            )
            .await?;
            link::read_control(&mut recv).await
        };
        let r: Result<_, link::LinkError> = attempt.await;
        assert!(r.is_err(), "a peer without a certificate got {r:?}");
        refused_count(&a, "no_certificate", 1.0).await;
    }
    // 2. A certificate from another CA (for a node id this cluster has).
    {
        let forged = NodeTls {
            ca: c.ca.clone(),
            ..load(&rogue.0, "c")
        };
        let r = link::dial(
            &endpoint,
            &client_config(&forged).expect("cfg"),
            "c",
            "a",
            a.quic,
        )
        .await;
        assert!(r.is_err(), "a certificate from another CA got a link");
        refused_count(&a, "bad_certificate", 1.0).await;
    }
    // 3. A good certificate for c, claiming to be b.
    let good = client_config(&c).expect("cfg");
    {
        let r = link::dial(&endpoint, &good, "b", "a", a.quic).await;
        assert!(r.is_err(), "c's certificate spoke for b");
        refused_count(&a, "wrong_node", 1.0).await;
    }
    assert_eq!(metric(&a, "blindrelay_cluster_links"), Some(0.0));
    // 4. c as itself: a link.
    let conn = link::dial(&endpoint, &good, "c", "a", a.quic)
        .await
        .expect("c links to a");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let up = metric(&a, "blindrelay_cluster_links") == Some(1.0)
            && metric(&a, "blindrelay_cluster_link_rtt_seconds{peer_node=\"c\"}")
                .is_some_and(|rtt| rtt > 0.0)
            && status(&redis).contains("  a <-> c\n");
        if up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the link shows in metrics and status"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every cluster metric the dashboard and the alert rules query is exported by a node
    // (tests/tests/ops.rs checks the rest on a lone relay), with a link up.
    {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let (_, exposition) = http_get(a.admin, "/metrics");
        let mut queried = 0;
        for f in ["grafana-dashboard.json", "prometheus-rules.yml"] {
            let text = std::fs::read_to_string(root.join(f)).expect("ops file");
            for (i, _) in text.match_indices("blindrelay_cluster_") {
                let name: String = text[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let family = name.strip_suffix("_bucket").unwrap_or(&name);
                assert!(
                    exposition.contains(&format!("# TYPE {family} ")),
                    "{f} queries {name}, which a node does not export"
                );
                queried += 1;
            }
        }
        assert!(queried >= 8, "cluster metrics queried: {queried}");
    }
    // Every refusal counted exactly once; none for the good link.
    for r in ["no_certificate", "bad_certificate", "wrong_node"] {
        refused_count(&a, r, 1.0).await;
    }
    refused_count(&a, "bad_hello", 0.0).await;
    conn.close(0u32.into(), b"done");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&a, "blindrelay_cluster_links") != Some(0.0) {
        assert!(Instant::now() < deadline, "the closed link goes down");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Media crosses a real node link as RTP over QUIC datagrams: the far node's sink gets each
/// packet byte for byte on its flow (one- to four-byte flow ids), every datagram is
/// counted by peer and direction, and a datagram that is not RTP over QUIC is dropped and
/// counted. Two `Links` endpoints in this process, with certificates from `cluster cert`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_crosses_a_node_link_byte_for_byte() {
    use blindrelay::cluster::link::{Links, MediaFramer, MediaSink};
    use blindrelay::metrics::Metrics;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = TempDir::new("pki");
    cluster_pki(&pki.0, &["a", "b"]);
    let tls = |id: &str| {
        NodeTls::load(
            &pki.0.join("ca.pem"),
            &pki.0.join(format!("{id}.pem")),
            &pki.0.join(format!("{id}.key")),
        )
        .expect("node TLS files")
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, u64, Vec<u8>)>();
    let sink: MediaSink = Arc::new(move |peer: &str, flow: u64, packet: &[u8]| {
        tx.send((peer.to_string(), flow, packet.to_vec())).is_ok()
    });
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("literal");
    let (ma, mb) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
    ma.cluster_started();
    mb.cluster_started();
    let a = Links::start("a", loopback, &tls("a"), ma.clone(), None).expect("a");
    let b = Links::start("b", loopback, &tls("b"), mb.clone(), Some(sink)).expect("b");
    let link = a
        .connect("b", b.local_addr().expect("b's address"))
        .await
        .expect("a links to b");
    let max = link.max_packet().expect("datagrams are on");
    assert!(max >= 1100, "room for a full RTP packet: {max}");

    const N: usize = 2000;
    let flows = [1u64, 63, 64, 70_000];
    let packet = |i: usize| -> Vec<u8> {
        let mut p = vec![0x80, 96, (i >> 8) as u8, i as u8, 0, 0, 0, 0, 0, 0, 0, 7];
        p.extend((0..(i % 1000) + 20).map(|k| (k * 7 + i) as u8));
        p
    };
    let mut framer = MediaFramer::default();
    let mut got = Vec::new();
    for i in 0..N {
        link.send_media(&mut framer, flows[i % flows.len()], &packet(i))
            .expect("sent");
        // Paced in bursts of 20, as a call's packets come, draining what arrived.
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            while let Ok(m) = rx.try_recv() {
                got.push(m);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < N && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(m)) => got.push(m),
            _ => break,
        }
    }
    // Unreliable by design, but loopback paced like this loses (almost) nothing; every
    // packet that arrives is exactly what was sent, on its flow.
    assert!(got.len() * 100 >= N * 99, "{} of {N} arrived", got.len());
    for (peer, flow, p) in &got {
        assert_eq!(peer, "a");
        let i = usize::from(p[2]) << 8 | usize::from(p[3]);
        assert_eq!(*flow, flows[i % flows.len()], "packet {i}'s flow");
        assert_eq!(p, &packet(i), "packet {i} arrived changed");
    }
    let counted = |m: &Metrics, series: &str| {
        m.render().lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
    };
    assert_eq!(
        counted(
            &ma,
            "blindrelay_cluster_link_datagrams_total{peer_node=\"b\",direction=\"sent\"}"
        ),
        Some(N as f64)
    );
    assert_eq!(
        counted(
            &mb,
            "blindrelay_cluster_link_datagrams_total{peer_node=\"a\",direction=\"received\"}"
        ),
        Some(got.len() as f64)
    );
    // Not RTP over QUIC: a flow id cut short.
    link.conn
        .send_datagram(bytes::Bytes::from_static(&[0x7b]))
        .expect("sent");
    let deadline = Instant::now() + Duration::from_secs(5);
    while counted(
        &mb,
        "blindrelay_cluster_link_media_dropped_total{reason=\"malformed\"}",
    ) != Some(1.0)
    {
        assert!(
            Instant::now() < deadline,
            "the malformed datagram is counted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // a has no sink: what b sends it has no receiver.
    let back = b
        .connect("a", a.local_addr().expect("a"))
        .await
        .expect("b -> a");
    back.send_media(&mut framer, 9, &packet(1)).expect("sent");
    let deadline = Instant::now() + Duration::from_secs(5);
    while counted(
        &ma,
        "blindrelay_cluster_link_media_dropped_total{reason=\"no_receiver\"}",
    ) != Some(1.0)
    {
        assert!(
            Instant::now() < deadline,
            "media without a receiver is counted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.close();
    b.close();
}
