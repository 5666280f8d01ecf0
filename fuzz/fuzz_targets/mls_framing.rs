#![no_main]
//! What the relay reads in the clear from MLS messages (`protocol::mls`): the header of
//! every `mls_commit` (`parse_framing`), every `mls_key_package` (`parse_key_package`, and
//! its KeyPackageRef) and every commit's Welcome (`parse_welcome`). Any bytes give a typed
//! error or fields that lie inside the input; a parsed Welcome lists exactly as many new
//! members as it counted.

use blindrelay_protocol::mls::{
    parse_framing, parse_key_package, parse_welcome, MAX_WELCOME_SECRETS,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = parse_framing(data) {
        assert!(f.group_id.len() <= data.len());
        assert!(f.wire_format == 1 || f.wire_format == 2);
    }
    if let Ok(kp) = parse_key_package(data) {
        assert_eq!(kp.encoded.len() + 4, data.len());
        assert!(kp.credential.len() + kp.signature_key.len() < data.len());
        let _ = kp.reference();
    }
    if let Ok(w) = parse_welcome(data) {
        assert!(w.count <= MAX_WELCOME_SECRETS);
        assert_eq!(w.new_members().count(), w.count);
        assert!(w.new_members().all(|r| r.len() < data.len()));
    }
});
