//! The IO driver. Dependencies run one way, with no cycle:
//! `server` starts everything; `driver` runs the control plane and talks to `media` and
//! to connections' `outq`; `signal` (the listener and connection tasks) and `media` (the
//! receive and forwarding loops, DTLS) report to the driver through `events`; `admin`
//! serves metrics and policy.

pub mod admin;
pub mod capture;
pub mod cascade;
pub mod driver;
pub mod events;
pub mod media;
pub mod outq;
pub mod policy_store;
pub mod server;
pub mod signal;
pub mod udp;
pub mod web;
