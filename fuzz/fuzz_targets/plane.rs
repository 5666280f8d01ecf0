#![no_main]
//! The control plane (`blindrelay_core::plane`) driven by random sequences of inputs:
//! connections, hellos, joins, answers, leaves, chats, features, MLS messages, garbage,
//! media-path events and time (issue 19). The actions and the checks are the property
//! tests' (`blindrelay_core::plane_model`): after every action the plane's invariants hold
//! (no participant in two calls, one owner per SSRC, every timer on live state, bounded
//! tables) and its outputs are consistent (a peer added and removed once, no message
//! after a close, no second `joined` while a session lives, gauges equal to the counts).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blindrelay_core::plane_model::run(data);
});
