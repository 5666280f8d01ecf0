//! Identities the relay cannot mint (issue 18): a real relay configured with the issuer's
//! public keys only admits tokens the issuer signed, refuses every other signature
//! (including HS256 under its own secret), and will not hand out development tokens.

use blindrelay::config::{Config, IssuerKey};
use blindrelay::RelayOptions;
use blindrelay_protocol::signal::{ClientMessage, ErrorCode, ServerMessage};
use blindrelay_protocol::token::{
    generate_ed25519, issue_eddsa, now_secs, public_pem, read_ed25519_private, Claims, Cnf,
    Ed25519Secret,
};
use blindrelay_tests::*;
use e2ee_client::signal::Signal;
use std::time::Duration;

fn new_key() -> Ed25519Secret {
    let (private, _) = generate_ed25519().expect("the OS has randomness");
    read_ed25519_private(&private).expect("a generated key reads back")
}

/// A loopback relay config whose `[auth] issuer_public_keys` are written to a TOML file
/// (one inline, one as `public_key_file`) and loaded the way `--config` loads them.
fn issuer_config(keys: &[(&str, &Ed25519Secret)]) -> Config {
    let mut entries = Vec::new();
    let mut files = Vec::new();
    for (i, (kid, key)) in keys.iter().enumerate() {
        let pem = public_pem(key.public()).expect("encodes");
        if i % 2 == 0 {
            entries.push(format!(
                "{{ kid = {kid:?}, public_key = \"\"\"{pem}\"\"\" }}"
            ));
        } else {
            let path = temp_path(&format!("issuer-{i}"), "pub");
            std::fs::write(&path, pem).expect("temp dir is writable");
            entries.push(format!(
                "{{ kid = {kid:?}, public_key_file = {:?} }}",
                path.display().to_string()
            ));
            files.push(path);
        }
    }
    let toml = format!(
        "[signal]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [media]\nlisten = \"127.0.0.1:0\"\n[auth]\nissuer_public_keys = [\n{}\n]\n",
        entries.join(",\n")
    );
    let path = temp_path("issuer-config", "toml");
    std::fs::write(&path, toml).expect("temp dir is writable");
    let config = Config::load(&path);
    for p in files.iter().chain([&path]) {
        let _ = std::fs::remove_file(p);
    }
    config.expect("the issuer config loads")
}

fn claims(user: &str) -> Claims {
    Claims::new(
        user,
        "tenant-a",
        "user",
        Some("demo"),
        now_secs(),
        Duration::from_secs(600),
    )
}

/// Send `hello` with `token` and return the relay's answer.
async fn answer(sig: &mut Signal, token: String) -> ServerMessage {
    sig.send(&ClientMessage::Hello { token })
        .await
        .expect("send hello");
    next_reply(sig).await
}

async fn expect_unauthorized(sig: &mut Signal, token: String, what: &str) {
    match answer(sig, token).await {
        ServerMessage::Error { code, message } => {
            assert_eq!(code, ErrorCode::Unauthorized, "{what}: {message}");
        }
        m => panic!("{what}: expected unauthorized, got {m:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_with_issuer_keys_admits_only_the_issuers_tokens() {
    let issuer = new_key();
    let mallory = new_key();
    let cfg = issuer_config(&[("main", &issuer)]);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let mut sig = Signal::connect(&relay.signal_url())
        .await
        .expect("signal connects");

    // Another key under the issuer's kid; another key under its own kid.
    let forged = issue_eddsa(&mallory, "main", &claims("alice")).expect("signs");
    expect_unauthorized(&mut sig, forged, "signed by another key").await;
    let unknown = issue_eddsa(&mallory, &mallory.kid(), &claims("alice")).expect("signs");
    expect_unauthorized(&mut sig, unknown, "unknown kid").await;
    // HS256 under the relay's own (development) secret: what the relay could mint.
    let minted = blindrelay::token::issue(
        &cfg.auth.api_secret,
        "alice",
        "tenant-a",
        "user",
        Some("demo"),
        Duration::from_secs(600),
    )
    .expect("HS256 still signs");
    expect_unauthorized(&mut sig, minted, "HS256 under the dev secret").await;

    // The issuer's token, with a cnf the relay lets through: admitted on the same connection.
    let mut c = claims("alice");
    c.cnf = Some(Cnf::ed25519(new_key().public()));
    let good = issue_eddsa(&issuer, "main", &c).expect("signs");
    match answer(&mut sig, good).await {
        ServerMessage::Capabilities {
            user, tenant, role, ..
        } => assert_eq!(
            (user.as_str(), tenant.as_str(), role.as_str()),
            ("alice", "tenant-a", "user")
        ),
        m => panic!("expected capabilities, got {m:?}"),
    }

    // No development tokens: the relay must not sign anything.
    let (status, body) = http(
        relay.signal_addr,
        "POST",
        "/dev/token",
        None,
        r#"{"user":"mallory","call":"demo"}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["code"], "dev_tokens_disabled", "{body}");
    assert_eq!(v["reason"], "issuer_keys", "{body}");
    assert!(!body.contains("token\":\"ey"), "a token was issued: {body}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_two_kids_are_both_accepted_and_a_dropped_one_is_not() {
    let old = new_key();
    let new = new_key();
    let cfg = issuer_config(&[("2025", &old), ("2026", &new)]);
    assert_eq!(
        cfg.auth.issuer_public_keys,
        vec![
            IssuerKey {
                kid: "2025".into(),
                public_key: *old.public()
            },
            IssuerKey {
                kid: "2026".into(),
                public_key: *new.public()
            },
        ]
    );
    let relay = start_relay(cfg, RelayOptions::default()).await;
    for (kid, key, user) in [("2025", &old, "ann"), ("2026", &new, "ben")] {
        let t = issue_eddsa(key, kid, &claims(user)).expect("signs");
        let _sig = hello(&relay.signal_url(), &t).await;
    }
    // Each key only under its own kid.
    let mut sig = Signal::connect(&relay.signal_url())
        .await
        .expect("signal connects");
    let swapped = issue_eddsa(&new, "2025", &claims("cat")).expect("signs");
    expect_unauthorized(&mut sig, swapped, "new key under the old kid").await;
    relay.shutdown().await;

    // The old key retired: its tokens stop working.
    let relay = start_relay(issuer_config(&[("2026", &new)]), RelayOptions::default()).await;
    let mut sig = Signal::connect(&relay.signal_url())
        .await
        .expect("signal connects");
    let retired = issue_eddsa(&old, "2025", &claims("ann")).expect("signs");
    expect_unauthorized(&mut sig, retired, "retired kid").await;
    let current = issue_eddsa(&new, "2026", &claims("ben")).expect("signs");
    assert!(matches!(
        answer(&mut sig, current).await,
        ServerMessage::Capabilities { .. }
    ));
    relay.shutdown().await;
}

/// Without issuer keys nothing changes: HS256 under the secret, and EdDSA tokens are not
/// taken on an HS256 relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_relay_stays_hs256() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let _sig = hello(
        &relay.signal_url(),
        &token(&cfg, "alice", Some("demo"), "user"),
    )
    .await;
    let issuer = new_key();
    let mut sig = Signal::connect(&relay.signal_url())
        .await
        .expect("signal connects");
    let eddsa = issue_eddsa(&issuer, &issuer.kid(), &claims("bob")).expect("signs");
    expect_unauthorized(&mut sig, eddsa, "EdDSA on an HS256 relay").await;
    relay.shutdown().await;
}
