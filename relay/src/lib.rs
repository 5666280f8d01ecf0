//! blindrelay: an SFU for end-to-end encrypted calls. It terminates hop-by-hop DTLS-SRTP,
//! routes on RTP headers and forwards the end-to-end encrypted payload byte for byte.

pub mod cli;
pub mod cluster;
pub mod config;
/// The sans-IO core this crate drives; re-exported so `blindrelay::core::...` paths work.
pub use blindrelay_core as core;
pub mod hop;
pub mod metrics;
pub mod net;
pub mod token;

pub use net::server::{Relay, RelayOptions};
