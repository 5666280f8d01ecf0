#![no_main]
//! Signalling messages (JSON over WebSocket): the relay's parser of client messages, with
//! its size cap, unknown types and typed errors.

use blindrelay_protocol::signal::parse_client_message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 (tungstenite refuses others before the relay sees them).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_client_message(text) {
        Ok(m) => {
            let _ = format!("{m:?}");
        }
        Err((code, message)) => {
            let _ = (code.as_str(), message.len());
        }
    }
});
