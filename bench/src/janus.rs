//! Janus 1.1.2 (VideoRoom) beside the relay, for side-by-side runs of the same pages.
//!
//! Janus runs in a network namespace of its own, joined to this one by a veth pair:
//! libnice (which Janus gathers ICE candidates with) skips loopback interfaces, so a
//! namespace whose only interface is the veth gives Janus an address the pages here can
//! reach. The page (`bench/janus/page.html`) sends and receives what the relay's web client
//! does and reports the same stats, so one driver and one reading serve both SFUs.

use crate::loss::{LossyPath, ShapedHop};
use crate::netns::VethNamespace;
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const JANUS_CFG: &str = include_str!("../janus/janus.jcfg");
const VIDEOROOM_CFG: &str = include_str!("../janus/janus.plugin.videoroom.jcfg");
const WEBSOCKETS_CFG: &str = include_str!("../janus/janus.transport.websockets.jcfg");
const PAGE: &str = include_str!("../janus/page.html");
const WS_PORT: u16 = 8188;
/// How long Janus has to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running Janus in its namespace; stopped (by its pid), and its namespace and
/// configuration directory removed, on drop.
pub struct Janus {
    child: std::process::Child,
    /// Removed after Janus stops (fields drop after `drop`).
    ns: VethNamespace,
    dir: PathBuf,
}

impl Janus {
    /// Janus in its namespace, pinned to core `cpu` if given.
    pub fn start(cpu: Option<usize>) -> Result<Janus> {
        if !std::path::Path::new("/usr/bin/janus").exists() {
            bail!("/usr/bin/janus not found: run scripts/install-test-deps.sh (apt janus)");
        }
        let ns = VethNamespace::create("j", 214)?;
        // Named after the namespace: unique among this process's Janus instances.
        let dir = std::env::temp_dir().join(format!("blindrelay-janus-{}", ns.name));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        // Holds the admin secret: removed on every early return below.
        let made = RemoveDir(Some(dir.clone()));
        let secret: u64 = rand::random();
        let cfg = JANUS_CFG
            .replace("@CONFIGS@", &dir.display().to_string())
            .replace("@SECRET@", &format!("{secret:016x}"));
        for (name, text) in [
            ("janus.jcfg", cfg.as_str()),
            ("janus.plugin.videoroom.jcfg", VIDEOROOM_CFG),
            ("janus.transport.websockets.jcfg", WEBSOCKETS_CFG),
            ("page.html", PAGE),
        ] {
            std::fs::write(dir.join(name), text).with_context(|| format!("write {name}"))?;
        }
        let log = std::fs::File::create(dir.join("janus.log"))?;
        // `taskset` and `ip netns exec` each exec the next: the child's pid is Janus's.
        let mut cmd = match cpu {
            Some(c) => {
                let mut t = std::process::Command::new("taskset");
                t.args(["-c", &c.to_string(), "ip"]);
                t
            }
            None => std::process::Command::new("ip"),
        };
        let child = cmd
            .args(["netns", "exec", &ns.name, "/usr/bin/janus", "-o", "-i"])
            .arg(ns.there.to_string())
            .arg("-F")
            .arg(&dir)
            .arg("-C")
            .arg(dir.join("janus.jcfg"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start janus")?;
        made.keep();
        let j = Janus { ns, child, dir };
        j.wait_listening()?;
        Ok(j)
    }

    /// The last `n` lines of Janus's log, for an error that ends a run (the log goes with
    /// the Janus value).
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("janus.log")).unwrap_or_default();
        let mut tail: Vec<&str> = log.lines().rev().take(n).collect();
        tail.reverse();
        tail.join("\n")
    }

    /// Until Janus accepts on its WebSocket port (or it exits, or the time is up).
    fn wait_listening(&self) -> Result<()> {
        let to = SocketAddr::from((self.ns.there, WS_PORT));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "janus did not listen on {to} within {START_TIMEOUT:?}; its log ends:\n{}",
                    self.log_tail(20)
                );
            }
            // Connection refused returns at once: pace the retries.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Janus's process id (for its CPU time in /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Janus's WebSocket transport.
    pub fn ws_url(&self) -> String {
        format!("ws://{}:{WS_PORT}", self.ns.there)
    }

    /// The page's URL for one participant of `room`.
    pub fn page_url(&self, room: u64, name: &str) -> String {
        format!(
            "file://{}?ws=ws://{}:{WS_PORT}&room={room}&name={name}",
            self.dir.join("page.html").display(),
            self.ns.there
        )
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        // `ip netns exec` execs janus, so this pid is Janus's own. The namespace goes
        // after it, when the fields drop.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A directory removed on drop, unless kept.
struct RemoveDir(Option<PathBuf>);

impl RemoveDir {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveDir {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Lossy paths made on demand, one per SFU address a page is told of (Janus has a port
/// per peer connection): `GET /via?to=IP:PORT` starts one and answers its address.
pub struct ViaServer {
    pub url: String,
    paths: Arc<Mutex<Vec<LossyPath>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ViaServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Most paths one run may ask for (a page's peer connections).
const MAX_PATHS: usize = 16;

impl ViaServer {
    pub async fn start(loss: f64, seed: u64, hop: Option<Arc<ShapedHop>>) -> Result<ViaServer> {
        use axum::extract::{Query, State};
        #[derive(serde::Deserialize)]
        struct To {
            to: SocketAddr,
        }
        type St = (Arc<Mutex<Vec<LossyPath>>>, f64, u64, Option<Arc<ShapedHop>>);
        async fn via(State(s): State<St>, Query(q): Query<To>) -> Result<String, String> {
            let (paths, loss, seed, hop) = s;
            let n = paths.lock().unwrap_or_else(|p| p.into_inner()).len();
            if n >= MAX_PATHS {
                return Err("too many paths".into());
            }
            let p = LossyPath::start(q.to, loss, seed.wrapping_add(n as u64), hop)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let addr = p.addr.to_string();
            paths.lock().unwrap_or_else(|p| p.into_inner()).push(p);
            Ok(addr)
        }
        let paths = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/via", axum::routing::get(via))
            .with_state((paths.clone(), loss, seed, hop));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/via", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(ViaServer { url, paths, task })
    }

    /// Datagrams (dropped, forwarded) over every path so far.
    pub fn totals(&self) -> (u64, u64) {
        let paths = self.paths.lock().unwrap_or_else(|p| p.into_inner());
        paths
            .iter()
            .map(|p| p.counters.totals())
            .fold((0, 0), |(d, f), (pd, pf)| (d + pd, f + pf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Janus starts in its namespace, the pages here reach its WebSocket transport, and it
    /// opens a session and has the VideoRoom plugin: what the side-by-side runs stand on.
    /// Needs root and janus (scripts/install-test-deps.sh); missing, it fails and says so.
    #[tokio::test]
    async fn janus_starts_in_its_namespace_and_opens_a_videoroom_session() {
        let j = Janus::start(None).expect("start janus");
        let url = j.ws_url();
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )
            .expect("request");
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "janus-protocol".parse().expect("header"),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("connect");
        let mut ask = async |body: serde_json::Value| -> serde_json::Value {
            ws.send(body.to_string().into()).await.expect("send");
            loop {
                let m = ws.next().await.expect("open").expect("frame");
                let v: serde_json::Value =
                    serde_json::from_str(m.to_text().expect("text")).expect("json");
                if v["janus"] != "ack" {
                    return v;
                }
            }
        };
        let created = ask(serde_json::json!({"janus": "create", "transaction": "a"})).await;
        assert_eq!(created["janus"], "success", "{created}");
        let session = created["data"]["id"].as_u64().expect("session id");
        let attached = ask(serde_json::json!({
            "janus": "attach", "plugin": "janus.plugin.videoroom",
            "session_id": session, "transaction": "b"
        }))
        .await;
        assert_eq!(attached["janus"], "success", "{attached}");
        assert!(j.page_url(1, "x").starts_with("file:///"));
        assert!(j.dir.join("page.html").exists());
    }

    /// `GET /via?to=ADDR` makes a path to ADDR and answers where to send instead; what is
    /// sent there arrives at ADDR, and the answer comes back the same way.
    #[tokio::test]
    async fn the_via_server_makes_a_path_per_address() {
        let far = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let v = ViaServer::start(0.0, 1, None).await.expect("via");
        let host = v.url.trim_start_matches("http://").trim_end_matches("/via");
        let mut c = tokio::net::TcpStream::connect(host).await.expect("connect");
        let req = format!(
            "GET /via?to={} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            far.local_addr().expect("addr")
        );
        c.write_all(req.as_bytes()).await.expect("write");
        let mut resp = String::new();
        c.read_to_string(&mut resp).await.expect("read");
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        let path: SocketAddr = resp
            .split("\r\n\r\n")
            .nth(1)
            .expect("body")
            .trim()
            .parse()
            .expect("an address");
        let me = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        me.send_to(b"up", path).await.expect("send");
        let mut buf = [0u8; 16];
        let (n, from) = far.recv_from(&mut buf).await.expect("recv");
        assert_eq!(&buf[..n], b"up");
        far.send_to(b"down", from).await.expect("send back");
        let (n, back) = me.recv_from(&mut buf).await.expect("recv back");
        assert_eq!((&buf[..n], back), (&b"down"[..], path));
        assert_eq!(v.totals(), (0, 2));
    }
}
