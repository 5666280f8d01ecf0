#![no_main]
//! STUN (the ICE-lite subset, RFC 5389/8445): parse a datagram, then check its
//! MESSAGE-INTEGRITY under a fixed password, as the relay does for a binding request.

use blindrelay_protocol::stun::StunMessage;
use libfuzzer_sys::fuzz_target;

/// The password the seeds are signed with (see seeds/), so valid integrity is reachable.
const PASSWORD: &[u8] = b"fuzzpasswordfuzzpassword";

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = StunMessage::parse(data) {
        let _ = m.username.map(str::len);
        let _ = m.verify_integrity(PASSWORD);
    }
});
