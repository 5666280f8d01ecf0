//! The relay's sans-IO core: the control plane (connections, sessions, calls, timers),
//! call membership and modes, ICE-lite checks, and the forwarding state of one worker
//! loop. Nothing here touches a socket or reads the clock.

pub mod calls;
pub mod forward;
pub mod ice;
pub mod lines;
pub mod plane;

/// Relay-internal participant handle (never shown to clients, never a metric label).
pub type PeerId = u64;
/// Relay-internal call handle.
pub type CallKey = u64;
pub mod policy;
pub mod ssrcs;
