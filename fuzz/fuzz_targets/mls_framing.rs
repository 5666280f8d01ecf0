#![no_main]
//! The clear header of an MLS handshake message (`protocol::mls::parse_framing`), which the
//! relay reads from every `mls_commit` a participant sends: any bytes give a typed error
//! or fields that lie inside the input.

use blindrelay_protocol::mls::parse_framing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = parse_framing(data) {
        assert!(f.group_id.len() <= data.len());
        assert!(f.wire_format == 1 || f.wire_format == 2);
    }
});
