//! The core stays sans-IO because the compiler cannot reach an IO crate from it: none is
//! in its dependency tree. This reads the tree as cargo resolves it and fails if an async
//! runtime, an HTTP stack, a metrics recorder or a QUIC stack got in, directly or through
//! another crate (as webrtc-srtp would bring tokio).

use std::process::Command;

/// Crates the core must never depend on, by name (any version).
const FORBIDDEN: [&str; 7] = [
    "tokio",
    "axum",
    "hyper",
    "metrics",
    "quinn",
    "quinn-udp",
    "quinn-proto",
];

/// Also refused: any crate whose name starts with one of these (`metrics-exporter-*`,
/// `tokio-*`, `hyper-*`).
const FORBIDDEN_PREFIXES: [&str; 4] = ["metrics-", "tokio-", "hyper-", "quinn-"];

#[test]
fn the_core_depends_on_no_io_crate() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--manifest-path",
            manifest,
            "-p",
            "blindrelay-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo tree failed: {stderr}");
    let tree = String::from_utf8(out.stdout).expect("cargo tree prints UTF-8");
    // `{p}` prints `name vX.Y.Z [(path)] [(*)]`: the name is the first word.
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // The tree was read: the core itself, and a dependency it surely has, are in it.
    assert!(names.contains(&"blindrelay-core"), "{tree}");
    assert!(names.contains(&"blindrelay-protocol"), "{tree}");
    let bad: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| FORBIDDEN.contains(n) || FORBIDDEN_PREFIXES.iter().any(|p| n.starts_with(p)))
        .collect();
    assert!(
        bad.is_empty(),
        "the sans-IO core depends on IO crates {bad:?}:\n{tree}"
    );
}
