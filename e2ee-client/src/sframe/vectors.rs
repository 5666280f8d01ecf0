//! Runner for the RFC 9605 test-vector JSON format, and hex helpers for the CLI.
//!
//! The file is an object of sections, each an array of vectors:
//! * `header`: `{kid, ctr, encoded}`: encoding must match, decoding must round-trip.
//! * `aes_ctr_hmac`: `{cipher_suite, key, [enc_key, auth_key,] nonce, aad, pt, ct}`: the bare
//!   AEAD (RFC 9605 §4.5.1) must produce `ct` and open it back to `pt`.
//! * `sframe`: `{cipher_suite, kid, ctr, base_key, metadata, pt, ct}` plus optional
//!   intermediates (`sframe_key_label`, `sframe_salt_label`, `sframe_secret`, `sframe_key`,
//!   `sframe_salt`, `nonce`, `aad`, `header`) that are checked when present.
//!
//! Unknown sections (and vectors for cipher suites this crate does not implement) are
//! reported as skipped rather than failed, so newer vector files still run. `kid`/`ctr` are
//! read as exact `u64` JSON integers (never through `f64`); a value that does not fit fails
//! that vector.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::{
    aead::{aead_decrypt, aead_encrypt},
    decrypt, encrypt,
    error::SframeError,
    header::Header,
    kdf::{derive_key_salt, frame_nonce, key_label, salt_label, sframe_secret},
    suite::CipherSuite,
};

/// Result counts of one section of a vector file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionSummary {
    /// Section name as in the file.
    pub name: String,
    /// Whether this runner knows the section (unknown sections are skipped whole).
    pub known: bool,
    /// Vectors that passed every check.
    pub passed: usize,
    /// Vectors with at least one failed check (or a malformed entry).
    pub failed: usize,
    /// Vectors skipped (unknown section or unsupported cipher suite).
    pub skipped: usize,
}

/// Outcome of [`run_file`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VectorSummary {
    /// Per-section counts, in file-key order.
    pub sections: Vec<SectionSummary>,
}

impl VectorSummary {
    /// Total passed vectors.
    pub fn passed(&self) -> usize {
        self.sections.iter().map(|s| s.passed).sum()
    }

    /// Total failed vectors.
    pub fn failed(&self) -> usize {
        self.sections.iter().map(|s| s.failed).sum()
    }

    /// Total skipped vectors.
    pub fn skipped(&self) -> usize {
        self.sections.iter().map(|s| s.skipped).sum()
    }

    /// True if nothing failed and at least one vector was checked (an empty or misnamed
    /// file must not look like success).
    pub fn all_passed(&self) -> bool {
        self.failed() == 0 && self.passed() > 0
    }
}

/// Why a vector file could not be run at all (individual vector failures are counted in
/// [`VectorSummary`] instead).
#[derive(Debug, thiserror::Error)]
pub enum VectorsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// I/O error.
        source: io::Error,
    },
    /// The file is not JSON.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// File path.
        path: PathBuf,
        /// Parser error.
        source: serde_json::Error,
    },
    /// The top level is not an object of sections.
    #[error("{path}: the top level must be a JSON object of sections")]
    NotAnObject {
        /// File path.
        path: PathBuf,
    },
    /// Writing the report failed.
    #[error("cannot write the report: {0}")]
    Write(#[from] io::Error),
}

/// Outcome of one vector that did not fail.
enum Check {
    Pass,
    Skip(String),
}

type Checker = fn(&Value) -> Result<Check, String>;

fn checker_for(section: &str) -> Option<Checker> {
    match section {
        "header" => Some(check_header),
        "aes_ctr_hmac" => Some(check_aead),
        "sframe" => Some(check_sframe),
        _ => None,
    }
}

/// Runs every vector in `path` and writes per-section counts and failures to `out`.
///
/// Returns `Err` only if the file cannot be read or parsed or the report cannot be written;
/// check [`VectorSummary::all_passed`] for the verdict.
pub fn run_file(path: &Path, out: &mut dyn Write) -> Result<VectorSummary, VectorsError> {
    let text = fs::read_to_string(path).map_err(|source| VectorsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let root: Value = serde_json::from_str(&text).map_err(|source| VectorsError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let Value::Object(sections) = root else {
        return Err(VectorsError::NotAnObject {
            path: path.to_path_buf(),
        });
    };

    writeln!(out, "SFrame test vectors: {}", path.display())?;
    let mut summary = VectorSummary::default();
    for (name, value) in &sections {
        let mut s = SectionSummary {
            name: name.clone(),
            known: true,
            passed: 0,
            failed: 0,
            skipped: 0,
        };
        let entries = value.as_array();
        match (checker_for(name), entries) {
            (None, _) => {
                s.known = false;
                s.skipped = entries.map_or(1, Vec::len);
                writeln!(
                    out,
                    "{name}: skipped (unknown section, {} entries)",
                    s.skipped
                )?;
            }
            (Some(_), None) => {
                s.failed = 1;
                writeln!(out, "  FAIL {name}: section is not an array")?;
                writeln!(out, "{name}: pass=0 fail=1 skip=0")?;
            }
            (Some(check), Some(entries)) => {
                for (i, entry) in entries.iter().enumerate() {
                    match check(entry) {
                        Ok(Check::Pass) => s.passed += 1,
                        Ok(Check::Skip(why)) => {
                            s.skipped += 1;
                            writeln!(out, "  skip {name}[{i}]: {why}")?;
                        }
                        Err(why) => {
                            s.failed += 1;
                            writeln!(out, "  FAIL {name}[{i}]: {why}")?;
                        }
                    }
                }
                writeln!(
                    out,
                    "{name}: pass={} fail={} skip={}",
                    s.passed, s.failed, s.skipped
                )?;
            }
        }
        summary.sections.push(s);
    }
    writeln!(
        out,
        "overall: {} (pass={} fail={} skip={})",
        if summary.all_passed() { "PASS" } else { "FAIL" },
        summary.passed(),
        summary.failed(),
        summary.skipped()
    )?;
    Ok(summary)
}

fn parse_entry<'a, T: Deserialize<'a>>(v: &'a Value) -> Result<T, String> {
    T::deserialize(v).map_err(|e| format!("malformed entry: {e}"))
}

fn unhex(field: &str, s: &str) -> Result<Vec<u8>, String> {
    hex::decode(s).map_err(|e| format!("{field}: bad hex: {e}"))
}

/// Records a mismatch between the hex `expected` and `got` in `problems`.
fn compare(problems: &mut Vec<String>, field: &str, expected_hex: &str, got: &[u8]) {
    match hex::decode(expected_hex) {
        Ok(expected) if expected == got => {}
        Ok(_) => problems.push(format!(
            "{field} mismatch: expected {expected_hex}, got {}",
            hex::encode(got)
        )),
        Err(e) => problems.push(format!("{field}: bad hex: {e}")),
    }
}

fn verdict(problems: Vec<String>) -> Result<Check, String> {
    if problems.is_empty() {
        Ok(Check::Pass)
    } else {
        Err(problems.join("; "))
    }
}

#[derive(Deserialize)]
struct HeaderVector {
    kid: u64,
    ctr: u64,
    encoded: String,
}

fn check_header(v: &Value) -> Result<Check, String> {
    let hv: HeaderVector = parse_entry(v)?;
    let mut problems = Vec::new();
    let header = Header::new(hv.kid, hv.ctr);
    compare(
        &mut problems,
        "encoded",
        &hv.encoded,
        header.encode().as_bytes(),
    );
    let encoded = unhex("encoded", &hv.encoded)?;
    match Header::decode(&encoded) {
        Ok((h, n)) if h == header && n == encoded.len() => {}
        Ok((h, n)) => problems.push(format!(
            "decode gave kid={} ctr={} ({n} of {} bytes)",
            h.kid,
            h.ctr,
            encoded.len()
        )),
        Err(e) => problems.push(format!("decode failed: {e}")),
    }
    verdict(problems)
}

#[derive(Deserialize)]
struct AeadVector {
    cipher_suite: u16,
    key: String,
    enc_key: Option<String>,
    auth_key: Option<String>,
    nonce: String,
    aad: String,
    pt: String,
    ct: String,
}

fn check_aead(v: &Value) -> Result<Check, String> {
    let av: AeadVector = parse_entry(v)?;
    let Ok(suite) = CipherSuite::try_from(av.cipher_suite) else {
        return Ok(Check::Skip(format!(
            "unsupported cipher suite 0x{:04x}",
            av.cipher_suite
        )));
    };
    let key = Zeroizing::new(unhex("key", &av.key)?);
    let nonce = unhex("nonce", &av.nonce)?;
    let aad = unhex("aad", &av.aad)?;
    let pt = unhex("pt", &av.pt)?;
    let ct = unhex("ct", &av.ct)?;
    let mut problems = Vec::new();
    if suite.is_ctr_hmac() && key.len() == suite.nk() {
        if let Some(enc_key) = &av.enc_key {
            compare(&mut problems, "enc_key", enc_key, &key[..16]);
        }
        if let Some(auth_key) = &av.auth_key {
            compare(&mut problems, "auth_key", auth_key, &key[16..]);
        }
    }
    match aead_encrypt(suite, &key, &nonce, &aad, &pt) {
        Ok(got) => compare(&mut problems, "ct", &av.ct, &got),
        Err(e) => problems.push(format!("encrypt failed: {e}")),
    }
    match aead_decrypt(suite, &key, &nonce, &aad, &ct) {
        Ok(got) => compare(&mut problems, "decrypted pt", &av.pt, &got),
        Err(e) => problems.push(format!("decrypt of ct failed: {e}")),
    }
    verdict(problems)
}

#[derive(Deserialize)]
struct SframeVector {
    cipher_suite: u16,
    kid: u64,
    ctr: u64,
    base_key: String,
    metadata: String,
    pt: String,
    ct: String,
    sframe_key_label: Option<String>,
    sframe_salt_label: Option<String>,
    sframe_secret: Option<String>,
    sframe_key: Option<String>,
    sframe_salt: Option<String>,
    nonce: Option<String>,
    aad: Option<String>,
    header: Option<String>,
}

fn check_sframe(v: &Value) -> Result<Check, String> {
    let sv: SframeVector = parse_entry(v)?;
    let Ok(suite) = CipherSuite::try_from(sv.cipher_suite) else {
        return Ok(Check::Skip(format!(
            "unsupported cipher suite 0x{:04x}",
            sv.cipher_suite
        )));
    };
    let base_key = Zeroizing::new(unhex("base_key", &sv.base_key)?);
    let metadata = unhex("metadata", &sv.metadata)?;
    let pt = unhex("pt", &sv.pt)?;
    let ct = unhex("ct", &sv.ct)?;
    let mut problems = Vec::new();

    if let Some(l) = &sv.sframe_key_label {
        compare(
            &mut problems,
            "sframe_key_label",
            l,
            &key_label(suite, sv.kid),
        );
    }
    if let Some(l) = &sv.sframe_salt_label {
        compare(
            &mut problems,
            "sframe_salt_label",
            l,
            &salt_label(suite, sv.kid),
        );
    }
    if let Some(s) = &sv.sframe_secret {
        let secret = sframe_secret(suite, &base_key);
        compare(&mut problems, "sframe_secret", s, secret.expose_secret());
    }
    let derived = derive_key_salt(suite, sv.kid, &base_key);
    if let Some(k) = &sv.sframe_key {
        compare(&mut problems, "sframe_key", k, derived.key());
    }
    if let Some(s) = &sv.sframe_salt {
        compare(&mut problems, "sframe_salt", s, derived.salt());
    }
    if let Some(n) = &sv.nonce {
        compare(
            &mut problems,
            "nonce",
            n,
            &frame_nonce(derived.salt(), sv.ctr),
        );
    }
    let header = Header::new(sv.kid, sv.ctr).encode();
    if let Some(h) = &sv.header {
        compare(&mut problems, "header", h, header.as_bytes());
    }
    if let Some(a) = &sv.aad {
        let mut aad = header.as_bytes().to_vec();
        aad.extend_from_slice(&metadata);
        compare(&mut problems, "aad", a, &aad);
    }

    match encrypt(suite, &base_key, sv.kid, sv.ctr, &metadata, &pt) {
        Ok(got) => compare(&mut problems, "ct", &sv.ct, &got),
        Err(e) => problems.push(format!("encrypt failed: {e}")),
    }
    match decrypt(suite, &base_key, &metadata, &ct) {
        Ok((kid, ctr, got)) => {
            if (kid, ctr) != (sv.kid, sv.ctr) {
                problems.push(format!(
                    "decrypt header mismatch: expected kid={} ctr={}, got kid={kid} ctr={ctr}",
                    sv.kid, sv.ctr
                ));
            }
            compare(&mut problems, "decrypted pt", &sv.pt, &got);
        }
        Err(e) => problems.push(format!("decrypt of ct failed: {e}")),
    }
    verdict(problems)
}

fn hex_arg(field: &'static str, s: &str) -> Result<Vec<u8>, SframeError> {
    let t = s.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    hex::decode(t).map_err(|e| SframeError::InvalidHex {
        field,
        reason: e.to_string(),
    })
}

/// CLI helper for `sframe seal`: hex in, ciphertext hex out.
///
/// Stateless like [`encrypt`]: the caller chooses (KID, CTR) and must not reuse a pair with
/// the same key outside of testing.
pub fn seal_hex(
    suite: u16,
    base_key_hex: &str,
    kid: u64,
    ctr: u64,
    metadata_hex: Option<&str>,
    plaintext_hex: &str,
) -> Result<String, SframeError> {
    let suite = CipherSuite::try_from(suite)?;
    let base_key = Zeroizing::new(hex_arg("base key", base_key_hex)?);
    let metadata = hex_arg("metadata", metadata_hex.unwrap_or(""))?;
    let plaintext = Zeroizing::new(hex_arg("plaintext", plaintext_hex)?);
    let ct = encrypt(suite, &base_key, kid, ctr, &metadata, &plaintext)?;
    Ok(hex::encode(ct))
}

/// CLI helper for `sframe open`: returns the plaintext hex, or the typed reason it failed
/// (bad header, authentication failure, ...).
pub fn open_hex(
    suite: u16,
    base_key_hex: &str,
    metadata_hex: Option<&str>,
    ciphertext_hex: &str,
) -> Result<String, SframeError> {
    let suite = CipherSuite::try_from(suite)?;
    let base_key = Zeroizing::new(hex_arg("base key", base_key_hex)?);
    let metadata = hex_arg("metadata", metadata_hex.unwrap_or(""))?;
    let ct = hex_arg("ciphertext", ciphertext_hex)?;
    let (_, _, pt) = decrypt(suite, &base_key, &metadata, &ct)?;
    let pt = Zeroizing::new(pt);
    Ok(hex::encode(&*pt))
}
