//! The `e2ee-client` binary: SFrame tools and call exit status.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_e2ee-client"))
}

#[test]
fn sframe_vectors_pass_on_the_in_repo_subset_and_fail_on_a_damaged_copy() {
    let subset = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/sframe-rfc9605-subset.json"
    );
    let out = bin()
        .args(["sframe", "vectors", subset])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("sframe"), "{stdout}");

    // Flip one hex digit of the first `"ct"` value: the tool must fail.
    let text = std::fs::read_to_string(subset).expect("read subset");
    let at = text.find("\"ct\"").expect("a ct field") + 4;
    let quote = at + text[at..].find('"').expect("ct value") + 1;
    let mut damaged = text.into_bytes();
    damaged[quote] = if damaged[quote] == b'0' { b'1' } else { b'0' };
    let path = std::env::temp_dir().join(format!("sframe-damaged-{}.json", std::process::id()));
    std::fs::write(&path, damaged).expect("write");
    let out = bin()
        .args(["sframe", "vectors"])
        .arg(&path)
        .output()
        .expect("runs");
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = bin()
        .args(["sframe", "vectors", "/nonexistent/vectors.json"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn official_vectors_pass_when_present() {
    let official = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/vectors/sframe-rfc9605-test-vectors.json"
    );
    if !std::path::Path::new(official).exists() {
        eprintln!(
            "official RFC 9605 vector file not beside the checkout; the in-repo subset covers this"
        );
        return;
    }
    let out = bin()
        .args(["sframe", "vectors", official])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn seal_then_open_round_trips_and_tampering_fails() {
    let key = "000102030405060708090a0b0c0d0e0f";
    for suite in ["1", "2", "3", "4"] {
        let out = bin()
            .args([
                "sframe",
                "seal",
                "--suite",
                suite,
                "--base-key",
                key,
                "--kid",
                "300",
                "--ctr",
                "18446744073709551615",
                "--metadata",
                "cafe",
                "48656c6c6f",
            ])
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ct = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let out = bin()
            .args([
                "sframe",
                "open",
                "--suite",
                suite,
                "--base-key",
                key,
                "--metadata",
                "cafe",
                &ct,
            ])
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "48656c6c6f");
        // Wrong metadata: authentication fails with a clear error and a non-zero exit.
        let out = bin()
            .args([
                "sframe",
                "open",
                "--suite",
                suite,
                "--base-key",
                key,
                "--metadata",
                "beef",
                &ct,
            ])
            .output()
            .expect("runs");
        assert!(!out.status.success());
        assert!(!out.stderr.is_empty());
    }
    let out = bin()
        .args(["sframe", "open", "--suite", "4", "--base-key", key, "zz"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
}

#[test]
fn call_without_a_relay_exits_non_zero_with_a_json_error() {
    let out = bin()
        .args([
            "call",
            "--relay",
            "ws://127.0.0.1:9/v1/signal",
            "--token",
            "x",
            "--duration",
            "1s",
            "--json",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("JSON summary even on failure");
    assert_eq!(v["joined"], false);
    assert_eq!(v["error"]["code"], "signalling_failed");
}

/// A call never established does not fail over: two unreachable relays end it at the
/// first, with the same error as one, and the summary says no rejoin happened.
#[test]
fn a_call_never_established_does_not_move_to_the_next_relay() {
    let out = bin()
        .args([
            "call",
            "--relay",
            "ws://127.0.0.1:9/v1/signal",
            "--relay",
            "ws://127.0.0.1:7/v1/signal",
            "--token",
            "x",
            "--duration",
            "30s",
            "--json",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("JSON summary even on failure");
    assert_eq!(v["error"]["code"], "signalling_failed");
    assert_eq!(v["reconnects"], 0);
    assert_eq!(v["relay"], "ws://127.0.0.1:9/v1/signal");
    assert_eq!(v["max_gap_ms_from"], serde_json::json!({}));
}

/// `keygen` writes an identity key (0600) and its public half, prints the thumbprint the
/// issuer's tooling uses, never overwrites a key, and `call` refuses an unreadable key
/// before it connects anywhere.
#[test]
fn keygen_writes_a_key_pair_that_call_loads() {
    let prefix = std::env::temp_dir().join(format!("e2ee-id-{}", std::process::id()));
    let (key, public) = (prefix.with_extension("key"), prefix.with_extension("pub"));
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(&public);
    let out = bin()
        .args(["keygen", "--out"])
        .arg(&prefix)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let loaded = e2ee_client::identity::load_identity_key(&key).expect("the key loads");
    assert_eq!(
        e2ee_client::identity::load_issuer_key(&public).expect("the public key loads"),
        loaded.public
    );
    assert_eq!(kid, blindrelay_protocol::token::kid_of(&loaded.public));
    assert!(!format!("{loaded:?}").contains(&hex::encode(*loaded.seed)));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = bin()
        .args(["keygen", "--out"])
        .arg(&prefix)
        .output()
        .expect("runs");
    assert!(
        !again.status.success(),
        "an existing key is never overwritten"
    );
    let bad = bin()
        .args(["call", "--token", "t", "--e2ee", "--identity-key"])
        .arg(&public)
        .output()
        .expect("runs");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--identity-key"));
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(&public);
}
