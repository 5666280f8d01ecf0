//! blindrelay's sans-IO core, as quinn-proto is to quinn: every decision the relay makes,
//! and none of its IO.
//!
//! - [`plane`]: the control plane, with one owner: signalling connections, sessions,
//!   calls, the lobby, invitations, parked calls, the MLS Delivery Service, renegotiation
//!   (it writes the relay's SDP) and every timer. It takes [`plane::Input`]s and the time,
//!   and yields [`plane::Output`]s for the driver to carry out and [`report::Report`]s for
//!   it to count. A thin `plane/mod.rs` composes its parts, one file each: `sessions`,
//!   `lobby` (lobby, invitations, parked calls), `negotiator` (one per session),
//!   `mls_ds` (the MLS Delivery Service), `features` (chat and call features) and
//!   `timers`; the parts return decisions and the plane carries them out (its module
//!   doc has the flows).
//! - [`lines`]: a session's remote m-lines and when one may carry another track.
//! - [`ssrcs`]: who claims each SSRC in each call.
//! - [`budget`]: each sender's broadcast budget in bytes, which the plane charges before
//!   fanning a message out.
//! - [`calls`]: call membership, modes and merges, which the plane consults and changes.
//! - [`forward`]: the forwarding state of one worker loop: SSRC ownership, routing,
//!   RTCP checks, transport-cc and keyframe requests. It is generic over the driver's
//!   SRTP cipher ([`hop::HopCipher`]) and returns a [`report::DropReason`] for each packet
//!   it refuses.
//! - [`ice`]: ICE-lite checks: which STUN binding requests to answer.
//! - [`policy`]: who may turn end-to-end encryption on (pure data).
//! - [`token`]: checking a token's signature and claims against a given time.
//! - [`report`]: what the core reports for the driver to count (drop reasons, MLS
//!   refusals, removal reasons, plane reports): bounded labels, never ids.
//!
//! Nothing here opens a socket, reads the clock, spawns a task or records a metric: the
//! driver passes the time in (tests use a virtual clock) and does the IO. The `blindrelay`
//! crate is that driver: UDP sockets and forwarding loops, DTLS handshakes, the signalling
//! WebSocket and HTTP, config loading, and the Prometheus exporter. This crate has no
//! tokio, axum, hyper, metrics or quinn dependency, and `tests/no_io_deps.rs` keeps it so.
//! The dependency runs one way: the relay's config builds [`plane::PlaneConfig`]; the core
//! never sees the config.

pub mod budget;
pub mod bwe;
pub mod calls;
pub mod cascade;
pub mod forward;
/// Random forwarder actions checked against a reference model after each (tests and
/// fuzzing only).
#[cfg(any(test, feature = "arbitrary"))]
pub mod forward_model;
pub mod hop;
pub mod ice;
pub mod lines;
pub mod plane;
/// Random plane actions and the invariants checked after each (tests and fuzzing only).
#[cfg(any(test, feature = "arbitrary"))]
pub mod plane_model;
pub mod policy;
pub mod report;
pub mod simulcast;
pub mod ssrcs;
pub mod token;

/// Relay-internal participant handle (never shown to clients, never a metric label).
pub type PeerId = u64;
/// Relay-internal call handle.
pub type CallKey = u64;
