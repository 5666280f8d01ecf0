//! The client's end of signalling: JSON messages over a WebSocket.

use blindrelay_protocol::signal::{ClientMessage, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Debug, Error)]
pub enum SignalError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("signalling connection failed: {0}")]
    Ws(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    #[error("signalling connection closed by the relay")]
    Closed,
    /// The relay closed the connection with a reason in its close frame (`shutdown`,
    /// `slow_reader`, `removed`...).
    #[error("signalling connection closed by the relay: {0}")]
    ClosedWith(String),
    #[error("relay sent a message this client does not understand: {0}")]
    Decode(String),
}

impl SignalError {
    /// The reason in the relay's close frame, if it sent one.
    pub fn close_reason(&self) -> Option<&str> {
        match self {
            SignalError::ClosedWith(r) => Some(r),
            _ => None,
        }
    }
}

/// A signalling connection.
pub struct Signal {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Signal {
    pub async fn connect(url: &str) -> Result<Self, SignalError> {
        let (ws, _) =
            tokio_tungstenite::connect_async(url)
                .await
                .map_err(|e| SignalError::Connect {
                    url: url.to_string(),
                    source: Box::new(e),
                })?;
        Ok(Signal { ws })
    }

    pub async fn send(&mut self, m: &ClientMessage) -> Result<(), SignalError> {
        // Our own enum always serializes.
        let text =
            serde_json::to_string(m).unwrap_or_else(|_| unreachable!("ClientMessage serializes"));
        self.send_raw(text).await
    }

    /// Send any text (tests use this to send malformed messages).
    pub async fn send_raw(&mut self, text: String) -> Result<(), SignalError> {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| SignalError::Ws(Box::new(e)))
    }

    /// Next message from the relay.
    pub async fn recv(&mut self) -> Result<ServerMessage, SignalError> {
        loop {
            match self.ws.next().await {
                None => return Err(SignalError::Closed),
                Some(Err(e)) => return Err(SignalError::Ws(Box::new(e))),
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str())
                        .map_err(|e| SignalError::Decode(e.to_string()))
                }
                Some(Ok(Message::Close(Some(f)))) if !f.reason.is_empty() => {
                    return Err(SignalError::ClosedWith(f.reason.as_str().to_string()))
                }
                Some(Ok(Message::Close(_))) => return Err(SignalError::Closed),
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }
}
