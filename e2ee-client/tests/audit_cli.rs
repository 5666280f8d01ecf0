//! The real `e2ee-client audit` binary on pcaps built here byte by byte (the relay's writer
//! lives in a crate this one must not depend on): exit 0 blind, 1 not blind, 2 unreadable.

use blindrelay_protocol::rtp::RtpHeader;
use e2ee_client::media::{make_frame, packetize};
use e2ee_client::sframe::{self, CipherSuite};
use std::path::PathBuf;
use std::process::{Command, Output};

const CANARY: &str = "CANARY-audit-cli";

fn temp_path(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "e2ee-audit-cli-{tag}-{}-{nanos}.pcap",
        std::process::id()
    ))
}

/// A classic little-endian LINKTYPE_RAW pcap: each RTP packet in IPv4 + UDP
/// (10.0.0.1:5000 -> 10.0.0.2:7402).
fn pcap(packets: &[Vec<u8>]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&65_535u32.to_le_bytes());
    f.extend_from_slice(&101u32.to_le_bytes());
    for (i, p) in packets.iter().enumerate() {
        let total = (20 + 8 + p.len()) as u32;
        f.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        f.extend_from_slice(&(i as u32 * 1000).to_le_bytes());
        f.extend_from_slice(&total.to_le_bytes());
        f.extend_from_slice(&total.to_le_bytes());
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&(total as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&5000u16.to_be_bytes());
        f.extend_from_slice(&7402u16.to_be_bytes());
        f.extend_from_slice(&((8 + p.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(p);
    }
    f
}

/// The RTP packets of 10 frames of a video-like stream carrying the canary, sealed with
/// SFrame when `e2ee`.
fn call_packets(e2ee: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut frame = Vec::new();
    let mut seq = 65_530u16;
    for n in 0..10u32 {
        make_frame(0xabcd, n, 0, 3000, Some(CANARY.as_bytes()), &mut frame);
        let body = if e2ee {
            sframe::encrypt(
                CipherSuite::AesGcm128Sha256,
                &[9; 16],
                3,
                u64::from(n),
                &[],
                &frame,
            )
            .expect("sealing a 3000-byte frame")
        } else {
            frame.clone()
        };
        for (chunk, last) in packetize(&body) {
            let mut p = Vec::new();
            RtpHeader {
                marker: last,
                payload_type: 96,
                sequence: seq,
                timestamp: n * 3000,
                ssrc: 0xabcd,
                header_len: 12,
                padding_len: 0,
            }
            .write_minimal(&mut p);
            p.extend_from_slice(chunk);
            out.push(p);
            seq = seq.wrapping_add(1);
        }
    }
    out
}

fn audit(file: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_e2ee-client"))
        .arg("audit")
        .arg(file)
        .args(extra)
        .output()
        .expect("run e2ee-client")
}

fn write(tag: &str, bytes: &[u8]) -> PathBuf {
    let p = temp_path(tag);
    std::fs::write(&p, bytes).expect("write temp pcap");
    p
}

#[test]
fn sealed_capture_is_blind_exit_0() {
    let p = write("blind", &pcap(&call_packets(true)));
    let out = audit(&p, &["--canary", CANARY]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verdict: blind"), "{stdout}");
    assert!(stdout.contains("0x0000abcd"), "{stdout}");

    let out = audit(&p, &["--canary", CANARY, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["verdict"], "blind");
    assert_eq!(v["blind"], true);
    assert_eq!(v["streams"][0]["ssrc"], 0xabcd);
    // 10 frames sent; the first is not counted (its start is unknown to a receiver).
    assert_eq!(v["streams"][0]["frames"], 9);
    assert_eq!(v["streams"][0]["sframe_share"], 1.0);
    assert_eq!(v["streams"][0]["canary_packets"], 0);
    let _ = std::fs::remove_file(&p);
}

#[test]
fn plaintext_capture_is_not_blind_exit_1() {
    let p = write("plain", &pcap(&call_packets(false)));
    let out = audit(&p, &["--canary", CANARY]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("verdict: NOT blind"), "{stdout}");
    assert!(stdout.contains("canary"), "{stdout}");

    let out = audit(&p, &["--canary", CANARY, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["verdict"], "NOT blind");
    assert!(v["streams"][0]["canary_packets"].as_u64().unwrap_or(0) > 0);
    assert!(!v["reasons"].as_array().map(Vec::is_empty).unwrap_or(true));
    // An empty capture proves nothing: not blind either.
    let empty = write("empty", &pcap(&[]));
    assert_eq!(audit(&empty, &[]).status.code(), Some(1));
    let _ = std::fs::remove_file(&p);
    let _ = std::fs::remove_file(&empty);
}

#[test]
fn unreadable_files_exit_2_with_a_clear_error() {
    let missing = temp_path("missing");
    let out = audit(&missing, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read"), "{err}");

    let junk = write("junk", b"this is not a pcap file at all, not even close");
    let out = audit(&junk, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a pcap"), "{err}");
    assert!(out.stdout.is_empty(), "no report for an unreadable file");

    let mut corrupt = pcap(&call_packets(true));
    // First record's captured length: absurd.
    corrupt[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
    let corrupt = write("corrupt", &corrupt);
    assert_eq!(audit(&corrupt, &[]).status.code(), Some(2));
    for p in [junk, corrupt] {
        let _ = std::fs::remove_file(p);
    }
}
