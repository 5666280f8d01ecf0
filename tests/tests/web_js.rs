//! The web client's JavaScript unit tests (web/test/, node's test runner, no browser): its
//! SFrame against the RFC 9605 vectors for suite 4, and its key agreement against the
//! exchanges e2ee-client computes (web/test/kex-vectors.json, checked on the Rust side by
//! e2ee-client's `kex::web_vectors` test). Node missing is a failure, never a skip.

use std::path::Path;
use std::process::Command;

#[test]
fn node_unit_tests_of_the_web_client_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("node")
        .args(["--test", "--test-reporter=tap", "web/test/"])
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): run scripts/install-test-deps.sh"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node --test web/test/ failed:\n{stdout}\n{stderr}"
    );
    let count = |key: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# {key} ")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `# {key}` line in node's output:\n{stdout}"))
    };
    // Both files ran: 7 SFrame tests, and the key-agreement tests (one per Rust case + 5).
    assert!(count("pass") >= 16, "{stdout}");
    assert_eq!(count("fail"), 0, "{stdout}");
    assert_eq!(count("skipped"), 0, "{stdout}");
    assert_eq!(count("todo"), 0, "{stdout}");
}

/// The committed MLS bundle (web/mls.bundle.js, embedded by the relay) is exactly what
/// web/build/build.sh makes from the pinned package-lock.json: nobody ships a hand-edited
/// or stale library. `npm ci` needs the npm registry (CI has it).
#[test]
fn the_mls_bundle_is_what_the_build_script_makes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .args(["web/build/build.sh", "--check"])
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash ({e})"));
    assert!(
        out.status.success(),
        "web/build/build.sh --check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is what build.sh builds"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
