//! Helpers shared by the tests that run the `blindrelay` binary as a process.
#![allow(dead_code)] // Each test file uses its own subset.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_blindrelay");

/// A config file under the temp dir, unique per process and call, removed on drop.
pub struct TempConfig(pub PathBuf);

impl TempConfig {
    pub fn new(text: &str) -> TempConfig {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "blindrelay-cli-test-{}-{n}.toml",
            std::process::id()
        ));
        if let Err(e) = std::fs::write(&path, text) {
            panic!("cannot write {}: {e}", path.display());
        }
        TempConfig(path)
    }

    pub fn arg(&self) -> &str {
        self.0
            .to_str()
            .unwrap_or_else(|| panic!("temp path {} is not UTF-8", self.0.display()))
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Run the binary to completion. RUST_LOG is cleared so the caller's environment cannot
/// change the outcome.
pub fn run(args: &[&str]) -> Output {
    match Command::new(BIN).args(args).env_remove("RUST_LOG").output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {BIN}: {e}"),
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A spawned relay, killed (SIGKILL by pid) if the test ends without stopping it.
pub struct RelayProcess {
    pub child: Child,
    pub stdout: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl RelayProcess {
    pub fn spawn(config: &TempConfig) -> RelayProcess {
        let mut child = match Command::new(BIN)
            .args(["--config", config.arg(), "--log", "info"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("cannot spawn {BIN}: {e}"),
        };
        // Both pipes are drained on threads so the relay never blocks on a full pipe and
        // the test can wait for lines with a timeout.
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = child.stderr.take().map(|mut err| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                s
            })
        });
        RelayProcess {
            child,
            stdout: rx,
            stderr,
        }
    }

    /// Read the banner and return (signalling URL, admin address, media address).
    pub fn addresses(&mut self) -> (String, SocketAddr, SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut lines = Vec::new();
        while lines.len() < 4 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(l) => lines.push(l),
                Err(e) => panic!(
                    "no banner ({e}); stdout so far: {lines:?}; stderr: {}",
                    self.stop_and_stderr()
                ),
            }
        }
        assert_eq!(lines[0], "blindrelay listening");
        let field = |line: &str, label: &str| -> String {
            let rest = line.strip_prefix("  ").and_then(|l| l.strip_prefix(label));
            match rest {
                Some(r) => r.trim().to_string(),
                None => panic!("expected `  {label} ...`, got {line:?}"),
            }
        };
        let signal = field(&lines[1], "signalling");
        let admin = field(&lines[2], "admin");
        let media = field(&lines[3], "media");
        let admin = admin
            .strip_prefix("http://")
            .and_then(|a| a.strip_suffix("(/metrics /healthz /readyz)"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("admin line: {admin:?}"));
        let media = media
            .strip_prefix("udp ")
            .unwrap_or_else(|| panic!("media line: {media:?}"));
        let parse = |s: &str| -> SocketAddr {
            s.parse()
                .unwrap_or_else(|e| panic!("{s:?} is not an address: {e}"))
        };
        (signal, parse(admin), parse(media))
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id())
            .unwrap_or_else(|e| panic!("pid out of range: {e}"));
        // SAFETY: kill(2) takes no pointers; the pid is our own child, not yet reaped
        // (we hold the Child and have not waited on it), so it cannot name another process.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}) failed: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Wait for the exit status, at most `limit`.
    pub fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => return None,
                Err(e) => panic!("cannot wait for the relay: {e}"),
            }
        }
    }

    /// Kill the relay if it still runs, and return what it wrote on stderr.
    pub fn stop_and_stderr(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, None, "")
}

/// One HTTP/1.1 request, with a bearer token if given; returns (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => panic!("cannot connect to {addr}: {e}"),
    };
    let io = stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| {
            let auth = bearer
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default();
            write!(
                stream,
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        })
        .and_then(|()| {
            let mut buf = Vec::new();
            stream.read_to_end(&mut buf).map(|_| buf)
        });
    let response = match io {
        Ok(b) => text(&b),
        Err(e) => panic!("GET {path} on {addr}: {e}"),
    };
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    (status, body.to_string())
}
