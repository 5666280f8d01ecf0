//! What the IO tasks tell the control plane's driver: a leaf module, so the signalling
//! listener, the media path and the driver depend on it and not on each other.

use crate::core::plane::ConnId;
use crate::core::PeerId;
use crate::net::outq::OutQueue;
use blindrelay_transport::hop::HopContext;
use blindrelay_transport::webrtc_dtls::conn::DTLSConn;
use blindrelay_transport::PacketConn;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Depth of the control plane's inbox. Connections and DTLS tasks wait when it is full
/// (backpressure); the receive loop never waits on it.
pub const EVENT_QUEUE: usize = 4096;

pub type EventTx = mpsc::Sender<Event>;

/// A participant's finished DTLS handshake: its association and hop SRTP contexts, held
/// by the driver until the plane says which forwarding loop gets them.
pub struct KeyedMedia {
    pub dtls: Arc<DTLSConn>,
    /// The association's datagram path. Its remote is the participant's current address,
    /// read when the participant is attached: an ICE nomination may have moved it since
    /// the handshake began.
    pub conn: Arc<PacketConn>,
    pub inbound: HopContext,
    pub outbound: HopContext,
}

/// What the IO tasks tell the driver.
pub enum Event {
    Connected {
        conn: ConnId,
        queue: Arc<OutQueue>,
    },
    /// A text frame, with its share of the inbound byte budget (freed once handled).
    Text {
        conn: ConnId,
        text: String,
        permit: tokio::sync::OwnedSemaphorePermit,
    },
    Binary {
        conn: ConnId,
    },
    Disconnected {
        conn: ConnId,
    },
    Activity {
        peer: PeerId,
    },
    Keyed {
        peer: PeerId,
        media: Box<KeyedMedia>,
    },
    DtlsFailed {
        peer: PeerId,
    },
    DtlsClosed {
        peer: PeerId,
    },
    /// The participant's ICE agent nominated the pair at `addr` (RFC 8445 §7.3.1.5), and
    /// the receive loop moved it there: its forwarding loop must send there too.
    Nominated {
        peer: PeerId,
        addr: SocketAddr,
    },
    /// A node link's news (cluster nodes only).
    Link(crate::cluster::link::LinkEvent),
    /// Where a connection's call lives, once the directory said (cluster nodes only):
    /// `Ok(None)` here, `Ok(Some(node))` on that node, linked.
    Routed {
        conn: ConnId,
        owner: Result<Option<String>, String>,
    },
    /// Remove everyone, close every DTLS association, then answer.
    Shutdown {
        done: oneshot::Sender<()>,
    },
}
