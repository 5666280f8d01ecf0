//! The `blindrelay` binary as an operator runs it: real processes, real ports, real
//! signals. Exit statuses and the printed addresses are the interface under test.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_blindrelay");

/// A config file under the temp dir, unique per process and call, removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(text: &str) -> TempConfig {
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

    fn arg(&self) -> &str {
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
fn run(args: &[&str]) -> Output {
    match Command::new(BIN).args(args).env_remove("RUST_LOG").output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {BIN}: {e}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Decode the claims (middle part) of a JWT printed by `blindrelay token`.
fn claims_of(stdout: &[u8]) -> serde_json::Value {
    let out = text(stdout);
    assert!(
        out.ends_with('\n'),
        "token output must end with a newline: {out:?}"
    );
    let jwt = out.trim_end();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWT: {jwt}");
    for p in &parts {
        assert!(
            !p.is_empty() && URL_SAFE_NO_PAD.decode(p).is_ok(),
            "part {p:?} is not base64url"
        );
    }
    let payload = match URL_SAFE_NO_PAD.decode(parts[1]) {
        Ok(b) => b,
        Err(e) => panic!("claims are not base64url: {e}"),
    };
    match serde_json::from_slice(&payload) {
        Ok(v) => v,
        Err(e) => panic!("claims are not JSON: {e}: {}", text(&payload)),
    }
}

#[test]
fn token_prints_a_signed_jwt_with_the_requested_claims() {
    let before = now_secs();
    let out = run(&["token", "--user", "alice", "--call", "demo"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let claims = claims_of(&out.stdout);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["call"], "demo");
    assert_eq!(claims["role"], "user");
    assert_eq!(claims["tenant"], "default");
    let exp = claims["exp"]
        .as_u64()
        .unwrap_or_else(|| panic!("exp is not a number: {claims}"));
    let after = now_secs();
    assert!(
        exp >= before + 3600 && exp <= after + 3600,
        "exp {exp} is not now+3600 ({before}..{after})"
    );

    // Signed with the embedded config's secret: the relay accepts it.
    let jwt = text(&out.stdout);
    let checked = blindrelay::token::verify(
        blindrelay::config::DEV_API_SECRET,
        jwt.trim_end(),
        Duration::ZERO,
    );
    assert!(checked.is_ok(), "{checked:?}");
}

#[test]
fn token_options_any_call_ttl_role_and_config_secret() {
    let cfg = TempConfig::new("[auth]\napi_secret = \"a-test-secret-of-enough-length\"\n");
    let before = now_secs();
    let out = run(&[
        "token",
        "--user",
        "rec",
        "--tenant",
        "acme",
        "--role",
        "bot:recording",
        "--ttl",
        "30m",
        "--config",
        cfg.arg(),
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let claims = claims_of(&out.stdout);
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["role"], "bot:recording");
    assert!(
        claims.get("call").is_none(),
        "no --call must mean any call: {claims}"
    );
    let exp = claims["exp"].as_u64().unwrap_or(0);
    assert!(
        exp >= before + 1800 && exp <= now_secs() + 1800,
        "exp {exp}"
    );
    let jwt = text(&out.stdout);
    assert!(blindrelay::token::verify(
        "a-test-secret-of-enough-length",
        jwt.trim_end(),
        Duration::ZERO
    )
    .is_ok());
    assert!(blindrelay::token::verify(
        blindrelay::config::DEV_API_SECRET,
        jwt.trim_end(),
        Duration::ZERO
    )
    .is_err());
}

#[test]
fn token_with_a_bad_role_exits_2() {
    let out = run(&["token", "--user", "alice", "--role", "admin"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.contains("admin") && err.contains("bot:recording"),
        "{err}"
    );
}

#[test]
fn token_with_a_bad_config_exits_2() {
    let cfg = TempConfig::new("[auth]\napi_secret = \"short\"\n");
    let out = run(&["token", "--user", "alice", "--config", cfg.arg()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stdout.is_empty(),
        "no token may be printed: {}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("auth.api_secret"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_config_accepts_the_default_and_a_valid_file() {
    let out = run(&["check-config"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "config OK\n");
    let cfg = TempConfig::new("[calls]\nmax_participants = 4\n");
    let out = run(&["check-config", "--config", cfg.arg()]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "config OK\n");
}

/// Each bad config exits 2 with `blindrelay: ` and the named key on stderr, both from
/// `check-config` and from a plain `blindrelay` (which must fail before binding).
#[test]
fn config_errors_exit_2_and_name_the_key() {
    let cases = [
        ("[media]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n", "bogus"),
        ("[ice]\nconsent_timeout = \"soon\"\n", "consent_timeout"),
        ("[signal]\nlisten = \"0.0.0.0:0\"\n", "auth.api_secret"),
    ];
    for (toml, key) in cases {
        let cfg = TempConfig::new(toml);
        for args in [
            vec!["check-config", "--config", cfg.arg()],
            vec!["--config", cfg.arg()],
        ] {
            let out = run(&args);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} with {toml:?}: {err}");
            assert!(err.starts_with("blindrelay: "), "{err}");
            assert!(
                err.contains(key),
                "{toml:?}: stderr does not name {key}: {err}"
            );
            assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        }
    }
}

#[test]
fn a_missing_config_file_exits_2() {
    let path = std::env::temp_dir().join(format!(
        "blindrelay-cli-test-{}-missing.toml",
        std::process::id()
    ));
    let path = path.to_string_lossy().into_owned();
    for args in [
        vec!["check-config", "--config", path.as_str()],
        vec!["--config", path.as_str()],
    ] {
        let out = run(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.starts_with("blindrelay: ") && err.contains(&path),
            "{err}"
        );
    }
}

#[test]
fn a_port_in_use_exits_1_naming_the_address() {
    let taken = match TcpListener::bind("127.0.0.1:0").and_then(|l| Ok((l.local_addr()?, l))) {
        Ok(t) => t,
        Err(e) => panic!("cannot bind a loopback port: {e}"),
    };
    let (addr, _held) = taken;
    let cfg = TempConfig::new(&format!(
        "[signal]\nlisten = \"{addr}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[media]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n"
    ));
    let out = run(&["--config", cfg.arg()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("blindrelay: cannot bind signal on {addr}")),
        "{err}"
    );
}

/// A spawned relay, killed (SIGKILL by pid) if the test ends without stopping it.
struct RelayProcess {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl RelayProcess {
    fn spawn(config: &TempConfig) -> RelayProcess {
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
    fn addresses(&mut self) -> (String, SocketAddr, SocketAddr) {
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

    fn signal(&self, sig: libc::c_int) {
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
    fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
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
    fn stop_and_stderr(&mut self) -> String {
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
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => panic!("cannot connect to {addr}: {e}"),
    };
    let io = stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| {
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
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

/// Config with every port 0: the banner must show the ports the kernel chose.
fn ephemeral_config() -> TempConfig {
    TempConfig::new(
        "[signal]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[media]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n",
    )
}

fn serve_then_stop_with(sig: libc::c_int) {
    let cfg = ephemeral_config();
    let mut relay = RelayProcess::spawn(&cfg);
    let (signal_url, admin, media) = relay.addresses();

    assert!(
        admin.port() != 0 && media.port() != 0,
        "banner shows configured, not bound, ports"
    );
    let signal_addr: SocketAddr = signal_url
        .strip_prefix("ws://")
        .and_then(|s| s.strip_suffix("/v1/signal"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("signalling URL {signal_url:?}"));
    assert_ne!(signal_addr.port(), 0);
    assert!(
        TcpStream::connect_timeout(&signal_addr, Duration::from_secs(5)).is_ok(),
        "signalling not listening"
    );

    let (status, body) = http_get(admin, "/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(admin, "/readyz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("blindrelay_packets_received_total"), "{body}");

    relay.signal(sig);
    match relay.wait_for(Duration::from_secs(5)) {
        Some(status) => assert_eq!(
            status.code(),
            Some(0),
            "stderr: {}",
            relay.stop_and_stderr()
        ),
        None => panic!(
            "relay still running 5 s after signal {sig}; stderr: {}",
            relay.stop_and_stderr()
        ),
    }
    let stderr = relay.stop_and_stderr();
    assert!(stderr.contains("shutting down"), "{stderr}");
}

#[test]
fn serves_on_the_bound_ports_and_exits_0_on_sigterm() {
    serve_then_stop_with(libc::SIGTERM);
}

#[test]
fn exits_0_on_sigint() {
    serve_then_stop_with(libc::SIGINT);
}
