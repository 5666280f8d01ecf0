//! blindrelay: an SFU for end-to-end encrypted calls. It terminates hop-by-hop DTLS-SRTP,
//! routes on RTP headers and forwards the end-to-end encrypted payload byte for byte.

pub mod cli;
pub mod config;
pub mod core;
pub mod metrics;
pub mod net;
pub mod token;

pub use net::server::{Relay, RelayOptions};
