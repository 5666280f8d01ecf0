//! RFC 9605 test vectors through `sframe::vectors::run_file`.

use std::path::{Path, PathBuf};

use e2ee_client::sframe::{vectors::run_file, CipherSuite, RatchetParams, Receiver, VectorSummary};
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn run(path: &Path) -> (VectorSummary, String) {
    let mut report = Vec::new();
    let summary = run_file(path, &mut report).expect("vector file readable");
    (summary, String::from_utf8(report).expect("report is UTF-8"))
}

fn section<'a>(
    s: &'a VectorSummary,
    name: &str,
) -> &'a e2ee_client::sframe::vectors::SectionSummary {
    s.sections
        .iter()
        .find(|x| x.name == name)
        .unwrap_or_else(|| panic!("section {name} missing"))
}

fn temp_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "sframe-vectors-{tag}-{}-{:?}.json",
        std::process::id(),
        std::thread::current().id()
    ))
}

#[test]
fn official_subset_passes() {
    let (s, report) = run(&data("sframe-rfc9605-subset.json"));
    assert!(s.all_passed(), "{report}");
    assert_eq!(section(&s, "sframe").passed, 5, "{report}");
    assert_eq!(section(&s, "aes_ctr_hmac").passed, 3, "{report}");
    assert!(section(&s, "header").passed >= 60, "{report}");
    // The 256-bit CTR/HMAC suites are not part of RFC 9605: reported, not failed.
    let extra = section(&s, "aes_256_ctr_hmac");
    assert!(
        !extra.known && extra.skipped == 1 && extra.failed == 0,
        "{report}"
    );
    assert!(report.contains("aes_256_ctr_hmac: skipped"), "{report}");
    assert!(report.contains("sframe: pass=5 fail=0"), "{report}");
}

/// The checker must be able to fail: corrupt one `ct` byte of one vector per section.
#[test]
fn corrupted_vectors_fail() {
    let text = std::fs::read_to_string(data("sframe-rfc9605-subset.json")).unwrap();
    for (section_name, field) in [
        ("sframe", "ct"),
        ("aes_ctr_hmac", "ct"),
        ("header", "encoded"),
    ] {
        let mut doc: Value = serde_json::from_str(&text).unwrap();
        let entry = &mut doc[section_name][0][field];
        let hex_str = entry.as_str().unwrap().to_owned();
        let mut bytes = hex::decode(&hex_str).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        *entry = Value::String(hex::encode(&bytes));
        let path = temp_path(section_name);
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        let (s, report) = run(&path);
        std::fs::remove_file(&path).ok();
        assert!(!s.all_passed(), "{section_name}: {report}");
        assert_eq!(section(&s, section_name).failed, 1, "{report}");
        assert!(
            report.contains(&format!("FAIL {section_name}[0]")),
            "{report}"
        );
    }
}

/// Large KID/CTR values must survive JSON parsing exactly (no f64 round trip), and a value
/// beyond u64 must fail the vector rather than be rounded.
#[test]
fn kid_ctr_parsed_exactly() {
    let text = std::fs::read_to_string(data("sframe-extra-vectors.json")).unwrap();
    assert!(text.contains("\"kid\": 18446744073709551615"));
    let too_big = r#"{"header": [{"kid": 18446744073709551616, "ctr": 0, "encoded": "00"}]}"#;
    let path = temp_path("toobig");
    std::fs::write(&path, too_big).unwrap();
    let (s, report) = run(&path);
    std::fs::remove_file(&path).ok();
    assert_eq!(s.failed(), 1, "{report}");
    assert!(!s.all_passed());
}

#[test]
fn empty_or_unknown_only_file_is_not_a_pass() {
    let path = temp_path("empty");
    std::fs::write(&path, r#"{"something_else": [1, 2]}"#).unwrap();
    let (s, report) = run(&path);
    std::fs::remove_file(&path).ok();
    assert!(!s.all_passed(), "{report}");
    assert_eq!(s.skipped(), 2);
}

/// Vectors from an independent Python implementation (tests/data/gen_sframe_extra_vectors.py,
/// which also reproduces the official vectors): every suite with edge KID/CTR values
/// (0, 7, 8, 255, 256, 2^32, 2^64-1), empty to 1200-byte plaintexts, metadata, and base keys
/// of 5 to 64 bytes.
#[test]
fn independent_extra_vectors_pass() {
    let (s, report) = run(&data("sframe-extra-vectors.json"));
    assert!(s.all_passed(), "{report}");
    assert_eq!(section(&s, "sframe").passed, 60, "{report}");
}

/// Runs the full official file when the shared checkout is next to the workspace.
#[test]
fn full_official_file_when_present() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vectors/sframe-rfc9605-test-vectors.json");
    if !path.exists() {
        println!(
            "note: {} not found; skipping the full official vector run",
            path.display()
        );
        return;
    }
    let (s, report) = run(&path);
    println!("{report}");
    assert!(s.all_passed(), "{report}");
    assert_eq!(section(&s, "header").failed, 0);
    assert!(section(&s, "header").passed >= 289, "{report}");
    assert_eq!(section(&s, "sframe").passed, 5, "{report}");
    assert_eq!(section(&s, "aes_ctr_hmac").passed, 3, "{report}");
}

/// Ratchet chains from the independent generator: our ratchet matches, and a receiver that
/// only knows step 0 opens a frame from step 3 by ratcheting forward.
#[test]
fn independent_ratchet_vectors() {
    let text = std::fs::read_to_string(data("sframe-ratchet-vectors.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let chains = doc["ratchet"].as_array().unwrap();
    assert_eq!(chains.len(), 5);
    for chain in chains {
        let suite = CipherSuite::try_from(chain["cipher_suite"].as_u64().unwrap() as u16).unwrap();
        let keys: Vec<Vec<u8>> = chain["base_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| hex::decode(k.as_str().unwrap()).unwrap())
            .collect();
        for w in keys.windows(2) {
            let next = e2ee_client::sframe::ratchet_base_key(suite, &w[0]);
            assert_eq!(next.expose_secret(), &w[1][..], "{suite}");
        }
        let params = RatchetParams::new(chain["r_bits"].as_u64().unwrap() as u8).unwrap();
        let generation = chain["generation"].as_u64().unwrap();
        let frame = &chain["frame_at_step_3"];
        let ct = hex::decode(frame["ct"].as_str().unwrap()).unwrap();
        let mut rx = Receiver::new();
        rx.add_ratcheting_key(suite, params, params.kid(generation, 0).unwrap(), &keys[0]);
        let (kid, ctr, pt) = rx.open(&[], &ct).unwrap();
        assert_eq!(kid, frame["kid"].as_u64().unwrap());
        assert_eq!(ctr, 9);
        assert_eq!(hex::encode(pt), frame["pt"].as_str().unwrap());
    }
}
