//! The `blindrelay` binary as an operator runs it: real processes, real ports, real
//! signals. Exit statuses and the printed addresses are the interface under test.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod common;
use common::*;

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
