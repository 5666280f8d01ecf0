//! `blindrelay policy ...` against a running relay binary, and the example policy file.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Relay(Child);
impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_blindrelay"))
}

#[test]
fn example_policy_file_parses() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/policies.toml"
    ))
    .expect("example exists");
    let set = blindrelay::core::policy::PolicySet::parse(&text).expect("example parses");
    use blindrelay::core::policy::CallingE2ee::*;
    assert_eq!(set.effective("ceo", "contoso").calling_e2ee, Required);
    assert_eq!(
        set.effective("staff", "contoso").calling_e2ee,
        DisabledUserOverride
    );
    assert_eq!(set.effective("x", "elsewhere").calling_e2ee, Disabled);
}

#[test]
fn policy_commands_mirror_the_cmdlets() {
    let dir = std::env::temp_dir().join(format!("policy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let policies = dir.join("policies.toml");
    std::fs::write(&policies, "").expect("write");
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[signal]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[media]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[policy]\nfile = \"{}\"\n",
            policies.display()
        ),
    )
    .expect("write");
    let mut child = bin()
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let _guard = Relay(child);
    let mut admin = String::new();
    for line in BufReader::new(stdout).lines().take(4) {
        let line = line.expect("banner");
        if let Some(rest) = line.trim().strip_prefix("admin") {
            admin = rest.split_whitespace().next().unwrap_or("").to_string();
        }
    }
    assert!(
        admin.starts_with("http://127.0.0.1:"),
        "banner gave {admin}"
    );
    let policy = |args: &[&str]| {
        let out = bin()
            .arg("--config")
            .arg(&cfg)
            .arg("policy")
            .args(["--admin", &admin])
            .args(args)
            .output()
            .expect("runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = policy(&["set", "--identity", "Strict", "--calling-e2ee", "Required"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = policy(&["grant", "--user", "alice@contoso", "--policy", "Strict"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, _) = policy(&["show", "--user", "alice", "--tenant", "contoso"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(v["calling_e2ee"], "Required");
    assert_eq!(v["source"], "user");
    let (_, out, _) = policy(&["show"]);
    assert!(out.contains("Strict"), "{out}");
    // Persisted to the file.
    assert!(std::fs::read_to_string(&policies)
        .expect("file")
        .contains("alice@contoso"));
    // Wrong token: refused, exit 1 with the API's error.
    let (code, _, err) = policy(&["--admin-token", "not-the-admin-token-x", "show"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("401"), "{err}");
    // Unknown policy: refused.
    let (code, _, err) = policy(&["grant", "--user", "bob", "--policy", "Missing"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("Missing"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
