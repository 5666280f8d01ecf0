//! Reference client for blindrelay: end-to-end encryption (SFrame, RFC 9605), key agreement
//! with a verification code, and a DTLS-SRTP transport to the relay.

pub mod audit;
pub mod bot;
pub mod call;
pub mod cli;
pub mod failover;
pub mod group;
pub mod identity;
pub mod kex;
pub mod media;
pub mod mls;
pub mod roster;
pub mod session;
pub mod sframe;
pub mod signal;
pub mod transport;
pub mod webframe;
