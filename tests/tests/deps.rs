//! The relay must not be able to hold an end-to-end key: its crate graph does not contain
//! the client's key schedule (e2ee-client: SFrame keys, X25519 agreement, verification code).

use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// The host's target triple, as rustc names it.
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = std::process::Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .trim()
        .to_string()
}

/// The workspace's resolved graph for this host. Filtered by platform, cargo needs only
/// the crates a build here has downloaded: unfiltered, it wants every platform's crates
/// (android_system_properties...), which a fresh machine that only built the workspace
/// does not have.
fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--filter-platform"])
        .arg(host_triple())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("metadata is JSON")
}

/// Names of every package `root` depends on for building (normal and build deps, not dev).
fn build_closure(meta: &Value, root: &str) -> HashSet<String> {
    let packages: HashMap<String, String> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap_or("").to_string(),
                p["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let nodes: HashMap<String, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve")
        .iter()
        .map(|n| (n["id"].as_str().unwrap_or("").to_string(), n))
        .collect();
    let root_id = packages
        .iter()
        .find(|(_, n)| n.as_str() == root)
        .map(|(id, _)| id.clone())
        .expect("root package");
    let mut seen = HashSet::new();
    let mut stack = vec![root_id];
    while let Some(id) = stack.pop() {
        let Some(node) = nodes.get(&id) else { continue };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let non_dev = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].as_str() != Some("dev"));
            let dep_id = dep["pkg"].as_str().unwrap_or("").to_string();
            if non_dev && seen.insert(dep_id.clone()) {
                stack.push(dep_id);
            }
        }
    }
    seen.iter()
        .filter_map(|id| packages.get(id).cloned())
        .collect()
}

#[test]
fn relay_does_not_depend_on_the_client_key_code() {
    let meta = metadata();
    let relay = build_closure(&meta, "blindrelay");
    assert!(
        relay.contains("blindrelay-protocol"),
        "sanity: the walk finds direct deps"
    );
    assert!(
        relay.contains("webrtc-srtp"),
        "sanity: the walk finds hop crypto"
    );
    assert!(
        !relay.contains("e2ee-client"),
        "relay depends on e2ee-client"
    );
    // The client, by contrast, does contain it (the check can fail).
    let bench = build_closure(&meta, "blindrelay-bench");
    assert!(bench.contains("e2ee-client"));
}
