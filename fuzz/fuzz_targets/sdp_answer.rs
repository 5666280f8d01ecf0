#![no_main]
//! SDP answers: the relay checks a client's answer to its renegotiation offer (same mids,
//! same order); the client parses the relay's answer to its join.

use blindrelay_protocol::sdp::{check_answer, parse_answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mids = ["0".to_string(), "1".to_string(), "2".to_string()];
    for n in 0..=mids.len() {
        let _ = check_answer(text, &mids[..n]);
    }
    let _ = parse_answer(text);
});
