//! The IO driver: the shared media socket and its forwarding loops, the signalling
//! WebSocket server and the admin HTTP listener.

pub mod admin;
pub mod capture;
pub mod control;
pub mod media;
pub mod policy_store;
pub mod server;
pub mod signal;
pub mod udp;
