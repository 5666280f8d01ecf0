//! What the IO tasks tell the control plane's driver: a leaf module, so the signalling
//! listener, the media path and the driver depend on it and not on each other.

use crate::core::plane::ConnId;
use crate::core::PeerId;
use crate::net::outq::OutQueue;
use blindrelay_transport::hop::HopContext;
use blindrelay_transport::webrtc_dtls::conn::DTLSConn;
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
    pub addr: SocketAddr,
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
    /// Remove everyone, close every DTLS association, then answer.
    Shutdown {
        done: oneshot::Sender<()>,
    },
}
