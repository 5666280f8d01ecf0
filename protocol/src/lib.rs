//! Shared vocabulary of blindrelay, with no IO: the relay and the clients speak it.
//!
//! - [`demux`]: classify a datagram on the shared media port (RFC 7983).
//! - [`stun`]: the STUN subset ICE-lite needs (RFC 5389 / 8445).
//! - [`rtp`] and [`rtcp`]: header views; the payload is never interpreted.
//! - [`signal`]: signalling messages (JSON over WebSocket) and stable error codes.
//! - [`mls`]: the clear header of an MLS handshake message (epoch, group id, type).
//! - [`sdp`]: the SDP subset a browser's RTCPeerConnection produces, parsed with a real parser.
//! - [`token`]: token claims, and issuer-signed (EdDSA) tokens and their Ed25519 key files.
//! - [`roq`]: RTP over QUIC datagrams: a flow id, then the packet (node links).
//! - [`tracks`]: tracks a participant may send, and the largest offer the relay then writes.

pub mod demux;
pub mod mls;
pub mod roq;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
pub mod signal;
pub mod stun;
pub mod token;
pub mod tracks;
pub mod twcc;
