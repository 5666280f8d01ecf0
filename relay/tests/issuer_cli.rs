//! `blindrelay keygen` and `blindrelay token --signing-key` as an issuer runs them: real
//! processes writing real files, and tokens checked by the relay's own verifier loaded
//! from a real config file that names the public key file.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use blindrelay::config::Config;
use blindrelay::token::TokenError;
use blindrelay_protocol::token::{kid_of, now_secs, read_ed25519_private, read_ed25519_public};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_blindrelay");

/// A fresh directory under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("blindrelay-{tag}-{}-{nanos}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn arg(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("temp path {} is not UTF-8", p.display()))
}

/// Run the binary to completion, with RUST_LOG cleared.
fn run(args: &[&str]) -> Output {
    match Command::new(BIN).args(args).env_remove("RUST_LOG").output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {BIN}: {e}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// `blindrelay keygen --out PREFIX`, which must succeed; returns the printed kid.
fn keygen(prefix: &Path) -> String {
    let out = run(&["keygen", "--out", arg(prefix)]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    stdout.trim_end().to_string()
}

/// One JSON part (0 header, 1 claims) of a printed JWT.
fn part(jwt: &str, i: usize) -> serde_json::Value {
    let p = jwt
        .split('.')
        .nth(i)
        .unwrap_or_else(|| panic!("not a JWT: {jwt}"));
    let bytes = URL_SAFE_NO_PAD
        .decode(p)
        .unwrap_or_else(|e| panic!("part {i} is not base64url: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("part {i} is not JSON: {e}"))
}

#[test]
fn keygen_writes_a_pem_pair_and_prints_its_thumbprint() {
    let dir = TempDir::new("keygen");
    let prefix = dir.path("issuer");
    let kid = keygen(&prefix);
    let (key, public) = (dir.path("issuer.key"), dir.path("issuer.pub"));
    let mode = std::fs::metadata(&key)
        .unwrap_or_else(|e| panic!("no {}: {e}", key.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "private key mode {mode:o}");
    let key_pem = read(&key);
    let pub_pem = read(&public);
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
        "{}",
        key_pem.lines().next().unwrap_or("")
    );
    assert!(
        pub_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"),
        "{pub_pem}"
    );
    let secret = read_ed25519_private(&key_pem).expect("PKCS#8 Ed25519");
    let public_key = read_ed25519_public(&pub_pem).expect("SPKI Ed25519");
    assert_eq!(secret.public(), &public_key, "the two files are one pair");
    assert_eq!(kid, kid_of(&public_key));

    // Never overwritten: a second run fails with status 2 and leaves both files alone.
    let out = run(&["keygen", "--out", arg(&prefix)]);
    assert_eq!(out.status.code(), Some(2), "stdout: {}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("already exists") && err.contains("issuer.key"),
        "{err}"
    );
    assert_eq!(read(&key), key_pem);
    assert_eq!(read(&public), pub_pem);
    // A different prefix gives a different key.
    assert_ne!(keygen(&dir.path("other")), kid);
}

#[test]
fn token_signing_key_makes_tokens_a_relay_with_the_public_key_accepts() {
    let dir = TempDir::new("issuer-token");
    let kid = keygen(&dir.path("issuer"));
    keygen(&dir.path("client"));
    let cfg = dir.path("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\nissuer_public_keys = [ {{ kid = {kid:?}, public_key_file = {:?} }} ]\n",
            arg(&dir.path("issuer.pub"))
        ),
    )
    .expect("temp dir is writable");
    let out = run(&["check-config", "--config", arg(&cfg)]);
    assert_eq!(
        text(&out.stdout),
        "config OK\n",
        "stderr: {}",
        text(&out.stderr)
    );

    let issuer_key = dir.path("issuer.key");
    let issue = |extra: &[&str]| {
        let mut args = vec![
            "token",
            "--config",
            arg(&cfg),
            "--signing-key",
            arg(&issuer_key),
            "--user",
            "alice",
            "--call",
            "demo",
            "--tenant",
            "acme",
            "--role",
            "bot:captions",
            "--ttl",
            "10m",
        ];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
        text(&out.stdout).trim_end().to_string()
    };

    // Checked the way the relay checks a hello: its verifier, from the loaded config.
    let relay = Config::load(&cfg).expect("the config loads");
    let verify = |jwt: &str| {
        relay
            .auth
            .verifier()
            .verify_at(jwt, &relay.auth.rules(), now_secs())
    };

    let jwt = issue(&["--cnf-key", arg(&dir.path("client.pub"))]);
    let header = part(&jwt, 0);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(
        header["kid"],
        kid.as_str(),
        "the kid defaults to the thumbprint"
    );
    let claims = verify(&jwt).expect("the relay accepts the issuer's token");
    assert_eq!(
        (
            claims.sub.as_str(),
            claims.tenant.as_str(),
            claims.role.as_str(),
            claims.call.as_deref()
        ),
        ("alice", "acme", "bot:captions", Some("demo"))
    );
    assert_eq!(claims.exp - claims.iat, 600);
    let client = read_ed25519_public(&read(&dir.path("client.pub"))).expect("client key");
    assert_eq!(
        claims.cnf.as_ref().and_then(|c| c.ed25519_key()),
        Some(client),
        "cnf carries the client's key"
    );
    assert_eq!(
        part(&jwt, 1)["cnf"]["jwk"]["x"],
        URL_SAFE_NO_PAD.encode(client),
        "{jwt}"
    );

    // Without --cnf-key there is no cnf; with --kid the header names that kid, which this
    // relay does not know.
    let plain = issue(&[]);
    assert!(part(&plain, 1).get("cnf").is_none(), "{plain}");
    assert!(verify(&plain).is_ok());
    let other_kid = issue(&["--kid", "2026"]);
    assert_eq!(part(&other_kid, 0)["kid"], "2026");
    assert_eq!(
        verify(&other_kid),
        Err(TokenError::UnknownKid("2026".into()))
    );

    // The other key pair is not the issuer: its tokens are refused.
    let out = run(&[
        "token",
        "--signing-key",
        arg(&dir.path("client.key")),
        "--kid",
        &kid,
        "--user",
        "mallory",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let forged = text(&out.stdout);
    assert!(matches!(
        verify(forged.trim_end()),
        Err(TokenError::Invalid(_))
    ));

    // An HS256 token from this config is refused up front: the relay would refuse it.
    let out = run(&["token", "--config", arg(&cfg), "--user", "alice"]);
    assert_eq!(out.status.code(), Some(2), "stdout: {}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("--signing-key"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_key_files_exit_2_naming_the_file() {
    let dir = TempDir::new("bad-keys");
    keygen(&dir.path("k"));
    let missing = dir.path("missing.key");
    for (args, name) in [
        (vec!["--signing-key", arg(&dir.path("k.pub"))], "k.pub"),
        (vec!["--signing-key", arg(&missing)], "missing.key"),
        (
            vec![
                "--signing-key",
                arg(&dir.path("k.key")),
                "--cnf-key",
                arg(&dir.path("k.key")),
            ],
            "k.key",
        ),
    ] {
        let mut all = vec!["token", "--user", "a"];
        all.extend(args.iter().copied());
        let out = run(&all);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(err.contains(name), "{all:?}: {err}");
        assert!(out.stdout.is_empty(), "{all:?}");
        // A private key's text never reaches the terminal.
        let body = read(&dir.path("k.key"));
        let body = body.lines().nth(1).unwrap_or("-");
        assert!(!err.contains(body), "{err}");
    }
    // A public key file given as the issuer's key in the config: refused at load, naming
    // the kid.
    let cfg = dir.path("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\nissuer_public_keys = [ {{ kid = \"main\", public_key_file = {:?} }} ]\n",
            arg(&dir.path("k.key"))
        ),
    )
    .expect("temp dir is writable");
    let out = run(&["check-config", "--config", arg(&cfg)]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("auth.issuer_public_keys") && err.contains("`main`"),
        "{err}"
    );
}
