//! Node links: QUIC (quinn) between relay nodes, mutually authenticated under the cluster
//! CA, one connection per pair of nodes.
//!
//! A link opens with a handshake on its first bidirectional stream, the control stream:
//! the connecting node sends `hello` with its node id and the accepting node answers
//! `welcome` with its own. TLS has already checked both certificates against the cluster
//! CA and the server's against the id the client dialled; the accepting side checks here
//! that the client's certificate names the node its `hello` claims, so one node's key
//! cannot speak for another. Every refused peer is counted by reason.
//!
//! Control messages are JSON, each framed by a 4-byte big-endian length (at most
//! [`MAX_CONTROL_FRAME`]). Media travels in QUIC datagrams framed as RTP over QUIC (a
//! varint flow id, then the packet: `blindrelay_protocol::roq`).

use super::pki::{check_node_id, NodeTls, PkiError};
use crate::metrics::Metrics;
use blindrelay_protocol::roq::{self, RoqError, MAX_PREFIX};
use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::{debug, info, warn};

/// The link protocol's ALPN; a peer speaking anything else is refused by TLS.
pub const ALPN: &[u8] = b"blindrelay-node/1";
/// Largest control frame either side accepts: a client's largest message, escaped
/// inside a control message's JSON (as the WebSocket limit allows for).
pub const MAX_CONTROL_FRAME: usize = 4 * blindrelay_protocol::signal::MAX_MESSAGE_BYTES;
/// A peer that passed TLS must say hello within this time.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC keep-alive: a silent link is declared dead after [`IDLE_TIMEOUT`].
const KEEP_ALIVE: Duration = Duration::from_millis(500);
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Handshakes in progress at once; more wait in quinn's queue or are refused by it.
const MAX_INCOMING: usize = 256;
/// Application close codes.
const CLOSE_REFUSED: u32 = 1;
const CLOSE_REPLACED: u32 = 2;
const CLOSE_SHUTDOWN: u32 = 3;
const CLOSE_OVERLOADED: u32 = 4;

#[derive(Debug, Error)]
pub enum LinkError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("QUIC: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("QUIC: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("control stream: {0}")]
    Stream(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("cannot bind the QUIC listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A control message on a link's control stream. A field this build does not know is
/// ignored, not refused: fields are only ever added with a default, so a node of the next
/// build can talk to this one during a rolling upgrade (an unknown message type is still
/// refused).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    Hello {
        node: String,
        version: u32,
        /// Random per process: a new one from a node means it restarted.
        #[serde(default)]
        incarnation: u64,
        /// Random per dial: of two links between the same two processes, both keep the
        /// one the lower node id dialled, and of those the one with the larger `link`.
        #[serde(default)]
        link: u64,
    },
    Welcome {
        node: String,
        #[serde(default)]
        incarnation: u64,
    },
    // A participant whose signalling reached one node (its edge) while another node (the
    // owner) holds its call. Edge to owner:
    /// A client connection the edge carries from now on; its media goes to the edge.
    Open {
        session: u64,
        media: SocketAddr,
        /// The edge's DTLS fingerprint, `sha-256 AB:CD:...`.
        fingerprint: String,
    },
    /// A signalling frame from the client.
    Text {
        session: u64,
        text: String,
    },
    /// The client's connection is gone.
    Gone {
        session: u64,
    },
    /// Media-path news about a participant (the owner's id for it).
    Keyed {
        peer: u64,
    },
    Activity {
        peer: u64,
    },
    DtlsFailed {
        peer: u64,
    },
    DtlsClosed {
        peer: u64,
    },
    // Owner to edge:
    /// A message for the client.
    Deliver {
        session: u64,
        text: String,
    },
    /// Close the client's connection.
    Close {
        session: u64,
        reason: String,
    },
    /// Accept the participant's ICE checks (the plane's `IceAdd`).
    Ice {
        session: u64,
        peer: u64,
        call: String,
        local_ufrag: String,
        local_pwd: String,
        remote_ufrag: String,
        /// The client's DTLS fingerprint, `sha-256 AB:CD:...`.
        fingerprint: String,
        ssrcs: Vec<u32>,
    },
    /// Start forwarding for it (the plane's `Attach`).
    Attach {
        peer: u64,
        tables: Box<crate::core::forward::PeerTablesWire>,
        participant: String,
    },
    /// The remote SSRCs it has tracks for.
    Receive {
        peer: u64,
        ssrcs: Vec<u32>,
    },
    /// The tallest pictures it asks for of one remote track (the plane's `MaxHeight`).
    MaxHeight {
        peer: u64,
        track: u32,
        height: u16,
    },
    /// Forget it on the media path.
    Remove {
        peer: u64,
    },
    // Between the nodes that share a call:
    /// Owner to a node of the call: hold a link end toward `peer_node` in the call, which
    /// sends `ssrcs` (of them `video`) and is sent `receiving`.
    Route {
        call: String,
        peer_node: String,
        peer_quic: SocketAddr,
        ssrcs: Vec<u32>,
        video: Vec<u32>,
        /// The far participants' (media SSRC, RTX SSRC) pairs.
        #[serde(default)]
        repairs: Vec<(u32, u32)>,
        receiving: Vec<u32>,
        /// The far participants' simulcast tracks, each its layers' SSRCs, lowest first.
        #[serde(default)]
        simulcast: Vec<Vec<u32>>,
        /// Whether the end asks the node's video senders for a key frame when it appears
        /// (not in an MLS call); absent (an older owner): yes.
        #[serde(default = "yes")]
        keyframe_on_join: bool,
    },
    /// Owner to a node: drop its link end toward `peer_node` in the call.
    Unroute {
        call: String,
        peer_node: String,
    },
    /// A node to the node it receives from: send the call's track `ssrc` on flow `flow`
    /// (each pair chosen by the receiving node, so flows never collide on a link), and its
    /// RTCP on `rtcp`.
    Flows {
        call: String,
        flows: Vec<(u32, u64)>,
        rtcp: u64,
    },
}

fn yes() -> bool {
    true
}

/// What a node's links tell it, besides media.
#[derive(Debug)]
pub enum LinkEvent {
    Up(String),
    Down(String),
    Message(String, Box<Control>),
}

/// Where link events go. It says whether it took the event (a full queue does not).
pub type ControlSink = Arc<dyn Fn(LinkEvent) -> bool + Send + Sync>;

/// Control messages queued for one link's stream; a peer that lets more pile up is not
/// reading and its link is closed.
const CONTROL_QUEUE: usize = 8192;

/// The link protocol version this build speaks.
pub const VERSION: u32 = 1;

/// Why a QUIC peer was refused, as metric labels (`blindrelay_cluster_link_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// TLS: the peer presented no certificate.
    NoCertificate,
    /// TLS: a certificate the cluster CA did not sign, or not valid for its use.
    BadCertificate,
    /// The certificate does not name the node the peer's hello claims.
    WrongNode,
    /// No hello in time, a malformed one, or another protocol version.
    BadHello,
    /// Any other handshake failure.
    Handshake,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::NoCertificate,
        Refusal::BadCertificate,
        Refusal::WrongNode,
        Refusal::BadHello,
        Refusal::Handshake,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no_certificate",
            Refusal::BadCertificate => "bad_certificate",
            Refusal::WrongNode => "wrong_node",
            Refusal::BadHello => "bad_hello",
            Refusal::Handshake => "handshake",
        }
    }

    /// Read a failed handshake's error: TLS alerts travel as QUIC CRYPTO_ERROR codes
    /// (0x100 + the alert, RFC 9001 §4.8).
    fn of(e: &quinn::ConnectionError) -> Refusal {
        const CERTIFICATE_REQUIRED: u8 = 116;
        let code = match e {
            quinn::ConnectionError::TransportError(t) => Some(t.code),
            quinn::ConnectionError::ConnectionClosed(c) => Some(c.error_code),
            _ => None,
        };
        match code {
            Some(c) if c == quinn::TransportErrorCode::crypto(CERTIFICATE_REQUIRED) => {
                Refusal::NoCertificate
            }
            Some(c) if (0x100..0x200).contains(&u64::from(c)) => Refusal::BadCertificate,
            _ => Refusal::Handshake,
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(tls: &NodeTls) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(tls.ca.clone())
        .map_err(|e| PkiError::Tls(format!("cluster CA: {e}")))?;
    Ok(Arc::new(roots))
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // 3 s fits in a VarInt; the conversion cannot fail.
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

/// The accepting side: TLS 1.3 only, a client certificate required and checked against
/// the cluster CA alone.
pub fn server_config(tls: &NodeTls) -> Result<quinn::ServerConfig, PkiError> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(tls)?, provider())
            .build()
            .map_err(|e| PkiError::Tls(e.to_string()))?;
    let mut rustls_cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.chain.clone(), tls.key.clone_key())
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    rustls_cfg.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        QuicServerConfig::try_from(rustls_cfg).map_err(|e| PkiError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport());
    cfg.max_incoming(MAX_INCOMING);
    Ok(cfg)
}

/// The connecting side: it trusts only the cluster CA and shows its node certificate.
pub fn client_config(tls: &NodeTls) -> Result<quinn::ClientConfig, PkiError> {
    let mut rustls_cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_root_certificates(roots(tls)?)
        .with_client_auth_cert(tls.chain.clone(), tls.key.clone_key())
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    rustls_cfg.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        QuicClientConfig::try_from(rustls_cfg).map_err(|e| PkiError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// Write one control frame.
pub async fn write_control(send: &mut SendStream, msg: &Control) -> Result<(), LinkError> {
    // Our own enum always serializes.
    let body = serde_json::to_vec(msg).unwrap_or_else(|_| unreachable!("Control serializes"));
    let len = u32::try_from(body.len()).map_err(|_| LinkError::Stream("frame too long".into()))?;
    send.write_all(&len.to_be_bytes())
        .await
        .map_err(|e| LinkError::Stream(e.to_string()))?;
    send.write_all(&body)
        .await
        .map_err(|e| LinkError::Stream(e.to_string()))
}

/// Read one control frame; `Ok(None)` at the end of the stream.
pub async fn read_control(recv: &mut RecvStream) -> Result<Option<Control>, LinkError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(LinkError::Stream(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_CONTROL_FRAME {
        return Err(LinkError::Stream(format!(
            "control frame of {len} bytes (at most {MAX_CONTROL_FRAME})"
        )));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| LinkError::Stream(e.to_string()))?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| LinkError::Stream(format!("bad control message: {e}")))
}

/// One live link.
#[derive(Clone)]
pub struct Link {
    pub peer: String,
    pub conn: Connection,
    pub since: Instant,
    control: tokio::sync::mpsc::Sender<Control>,
    /// The peer process's incarnation.
    incarnation: u64,
    /// Whether the lower node id dialled it, and its dial's random id: the larger wins
    /// among links between the same two processes.
    rank: (bool, u64),
    sent: metrics::Counter,
    metrics: Arc<Metrics>,
}

/// Why a media datagram was not sent or not delivered, as metric labels
/// (`blindrelay_cluster_link_media_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaDrop {
    /// Not RTP over QUIC: no flow id, or nothing after it.
    Malformed,
    /// A flow this node has no receiver for.
    NoReceiver,
    /// Larger than the link's datagram size.
    TooLarge,
    /// The link is gone.
    LinkDown,
    /// A track or call the far node has given no flow for (yet).
    NoFlow,
    /// The forwarding loop of the flow's call is full.
    QueueFull,
}

impl MediaDrop {
    pub const ALL: [MediaDrop; 6] = [
        MediaDrop::Malformed,
        MediaDrop::NoReceiver,
        MediaDrop::TooLarge,
        MediaDrop::LinkDown,
        MediaDrop::NoFlow,
        MediaDrop::QueueFull,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            MediaDrop::Malformed => "malformed",
            MediaDrop::NoReceiver => "no_receiver",
            MediaDrop::TooLarge => "too_large",
            MediaDrop::LinkDown => "link_down",
            MediaDrop::NoFlow => "no_flow",
            MediaDrop::QueueFull => "queue_full",
        }
    }
}

/// Where media arriving on links goes: called with the peer node, the flow id and the
/// packet (borrowed from the datagram). It says whether a receiver took it.
pub type MediaSink = Arc<dyn Fn(&str, u64, &[u8]) -> bool + Send + Sync>;

/// Frames packets for a link's datagrams out of one shared chunk of memory: each datagram
/// is a `Bytes` split off it and released once quinn has sent it, so a packet costs no
/// allocation of its own (a new chunk only when the old one is still held).
#[derive(Default)]
pub struct MediaFramer {
    buf: BytesMut,
}

/// Bytes allocated at a time for framed datagrams: about 50 full-size packets.
const FRAMER_CHUNK: usize = 64 * 1024;

impl MediaFramer {
    pub fn frame(&mut self, flow: u64, packet: &[u8]) -> Result<Bytes, RoqError> {
        let mut prefix = [0u8; MAX_PREFIX];
        let n = roq::write_flow(flow, &mut prefix)?;
        let need = n + packet.len();
        if self.buf.capacity() - self.buf.len() < need {
            self.buf.reserve(FRAMER_CHUNK.max(need));
        }
        self.buf.extend_from_slice(&prefix[..n]);
        self.buf.extend_from_slice(packet);
        Ok(self.buf.split().freeze())
    }
}

impl Link {
    /// Send one RTP or RTCP packet on `flow`. Unreliable, as media should be: a datagram
    /// QUIC cannot send now is dropped and counted, never queued behind later media.
    pub fn send_media(
        &self,
        framer: &mut MediaFramer,
        flow: u64,
        packet: &[u8],
    ) -> Result<(), MediaDrop> {
        let d = framer.frame(flow, packet).map_err(|_| MediaDrop::Malformed);
        let r = d.and_then(|d| {
            self.conn.send_datagram(d).map_err(|e| match e {
                quinn::SendDatagramError::TooLarge => MediaDrop::TooLarge,
                _ => MediaDrop::LinkDown,
            })
        });
        match r {
            Ok(()) => self.sent.increment(1),
            Err(why) => self.metrics.cluster_media_dropped(why).increment(1),
        }
        r
    }

    /// Queue a control message, in order. A link whose peer lets the queue fill is closed:
    /// control is never dropped silently, since each message changes state over there.
    pub fn send_control(&self, msg: Control) -> Result<(), LinkError> {
        self.control.try_send(msg).map_err(|_| {
            self.conn
                .close(CLOSE_OVERLOADED.into(), b"control queue full");
            LinkError::Stream("control queue full: link closed".into())
        })
    }

    /// Largest packet that fits one datagram on this link now (after a flow id of up to 8
    /// bytes), if datagrams are on.
    pub fn max_packet(&self) -> Option<usize> {
        self.conn
            .max_datagram_size()
            .map(|n| n.saturating_sub(MAX_PREFIX))
    }
}

/// This node's QUIC endpoint and its links, by peer node id.
#[derive(Clone)]
pub struct Links {
    node: String,
    endpoint: Endpoint,
    client: quinn::ClientConfig,
    links: Arc<Mutex<HashMap<String, Link>>>,
    metrics: Arc<Metrics>,
    sink: Arc<std::sync::OnceLock<MediaSink>>,
    control: Arc<std::sync::OnceLock<ControlSink>>,
    incarnation: u64,
    /// Per peer: held while dialling it.
    dialling: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// How long a link that lost to another one to the same node stays open: messages already
/// on their way on it are still read, and then it closes.
const REPLACED_GRACE: Duration = Duration::from_secs(2);

impl Links {
    /// Bind the QUIC listener and start accepting links.
    pub fn start(
        node: &str,
        listen: SocketAddr,
        tls: &NodeTls,
        metrics: Arc<Metrics>,
        sink: Option<MediaSink>,
    ) -> Result<Links, LinkError> {
        check_node_id(node)?;
        let endpoint =
            Endpoint::server(server_config(tls)?, listen).map_err(|source| LinkError::Bind {
                addr: listen,
                source,
            })?;
        let links = Links {
            node: node.to_string(),
            endpoint,
            client: client_config(tls)?,
            links: Arc::new(Mutex::new(HashMap::new())),
            metrics,
            sink: Arc::new(std::sync::OnceLock::new()),
            control: Arc::new(std::sync::OnceLock::new()),
            incarnation: rand::random::<u64>() | 1,
            dialling: Arc::default(),
        };
        if let Some(sink) = sink {
            let _ = links.sink.set(sink);
        }
        tokio::spawn(links.clone().accept_loop());
        Ok(links)
    }

    /// Where media and control arriving on links go from now on (set once: the node's
    /// media path starts after it joined the cluster).
    pub fn serve(&self, media: MediaSink, control: ControlSink) {
        let _ = self.sink.set(media);
        let _ = self.control.set(control);
    }

    /// The live link to `peer`, if there is one.
    pub fn get(&self, peer: &str) -> Option<Link> {
        self.table()
            .get(peer)
            .filter(|l| l.conn.close_reason().is_none())
            .cloned()
    }

    fn tell(&self, e: LinkEvent) {
        if let Some(c) = self.control.get() {
            if !c(e) {
                warn!("link event dropped: the node's event queue is full");
            }
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Peer node ids of the links up now, sorted.
    pub fn peers(&self) -> Vec<String> {
        let mut v: Vec<String> = self.table().keys().cloned().collect();
        v.sort();
        v
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn drop_media(&self, why: MediaDrop) {
        self.metrics.cluster_media_dropped(why).increment(1);
    }

    fn refused(&self, r: Refusal, from: SocketAddr, why: &dyn std::fmt::Display) {
        warn!(%from, reason = r.as_str(), error = %why, "node link refused");
        self.metrics.cluster_link_refused(r).increment(1);
    }

    async fn accept_loop(self) {
        while let Some(incoming) = self.endpoint.accept().await {
            let me = self.clone();
            tokio::spawn(async move {
                let from = incoming.remote_address();
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => return me.refused(Refusal::of(&e), from, &e),
                };
                match tokio::time::timeout(HELLO_TIMEOUT, me.greet(&conn)).await {
                    Ok(Ok((peer, inc, link, send, recv))) => {
                        me.up(peer, conn, send, recv, (inc, link), false)
                    }
                    Ok(Err((r, e))) => {
                        conn.close(CLOSE_REFUSED.into(), r.as_str().as_bytes());
                        me.refused(r, from, &e);
                    }
                    Err(_) => {
                        conn.close(CLOSE_REFUSED.into(), b"no hello");
                        me.refused(Refusal::BadHello, from, &"no hello in time");
                    }
                }
            });
        }
    }

    /// The accepting side's half of the handshake: read `hello`, check the certificate
    /// names that node, answer `welcome`.
    async fn greet(
        &self,
        conn: &Connection,
    ) -> Result<(String, u64, u64, SendStream, RecvStream), (Refusal, LinkError)> {
        let bad = |e: LinkError| (Refusal::BadHello, e);
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| bad(e.into()))?;
        let (node, inc, link) = match read_control(&mut recv).await.map_err(bad)? {
            Some(Control::Hello {
                node,
                version,
                incarnation,
                link,
            }) if version == VERSION => (node, incarnation, link),
            other => {
                return Err(bad(LinkError::Refused(format!(
                    "expected hello version {VERSION}, got {other:?}"
                ))))
            }
        };
        if let Err(e) = cert_names(conn, &node) {
            return Err((Refusal::WrongNode, e));
        }
        write_control(
            &mut send,
            &Control::Welcome {
                node: self.node.clone(),
                incarnation: self.incarnation,
            },
        )
        .await
        .map_err(bad)?;
        Ok((node, inc, link, send, recv))
    }

    /// Record a link that finished its handshake. With a live link to the same node
    /// already: a restarted peer's new link wins; if both dialled at once, both nodes keep
    /// the link the lower node id dialled, so they agree. The loser closes after a grace.
    fn up(
        &self,
        peer: String,
        conn: Connection,
        mut send: SendStream,
        mut recv: RecvStream,
        (incarnation, link_id): (u64, u64),
        dialled: bool,
    ) {
        info!(peer = %peer, addr = %conn.remote_address(), "node link up");
        let (control, mut queued) = tokio::sync::mpsc::channel(CONTROL_QUEUE);
        // The control stream's writer: in order, until the link or the queue closes.
        {
            let conn = conn.clone();
            tokio::spawn(async move {
                while let Some(m) = queued.recv().await {
                    if let Err(e) = write_control(&mut send, &m).await {
                        debug!(error = %e, "control stream write failed");
                        conn.close(CLOSE_OVERLOADED.into(), b"control stream failed");
                        break;
                    }
                }
            });
        }
        // Its reader: every message to the node, in order; a bad frame closes the link.
        {
            let me = self.clone();
            let conn = conn.clone();
            let peer = peer.clone();
            tokio::spawn(async move {
                loop {
                    match read_control(&mut recv).await {
                        Ok(Some(m)) => me.tell(LinkEvent::Message(peer.clone(), Box::new(m))),
                        Ok(None) => break,
                        Err(e) => {
                            warn!(peer = %peer, error = %e, "bad control stream: link closed");
                            conn.close(CLOSE_REFUSED.into(), b"bad control message");
                            break;
                        }
                    }
                }
            });
        }
        let link = Link {
            peer: peer.clone(),
            conn: conn.clone(),
            since: Instant::now(),
            control,
            incarnation,
            rank: (dialled == (self.node.as_str() < peer.as_str()), link_id),
            sent: self.metrics.cluster_link_datagrams(&peer, "sent"),
            metrics: self.metrics.clone(),
        };
        let loser = {
            let mut t = self.table();
            let keep_new = match t.get(&peer) {
                None => true,
                Some(old) if old.conn.close_reason().is_some() => true,
                Some(old) if old.incarnation != incarnation => true,
                Some(old) => link.rank > old.rank,
            };
            if keep_new {
                t.insert(peer.clone(), link).map(|old| old.conn)
            } else {
                Some(conn.clone())
            }
        };
        if let Some(l) = loser {
            tokio::spawn(async move {
                tokio::time::sleep(REPLACED_GRACE).await;
                l.close(CLOSE_REPLACED.into(), b"replaced");
            });
        }
        self.metrics.cluster_links().set(self.table().len() as f64);
        self.tell(LinkEvent::Up(peer.clone()));
        let me = self.clone();
        tokio::spawn(async move {
            let rtt = me.metrics.cluster_link_rtt(&peer);
            let received = me.metrics.cluster_link_datagrams(&peer, "received");
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => rtt.set(conn.rtt().as_secs_f64()),
                    d = conn.read_datagram() => {
                        // An error is the link closing.
                        let Ok(d) = d else { break };
                        received.increment(1);
                        match roq::split(&d) {
                            Ok((flow, packet)) => {
                                if !me.sink.get().is_some_and(|s| s(&peer, flow, packet)) {
                                    me.drop_media(MediaDrop::NoReceiver);
                                }
                            }
                            Err(_) => me.drop_media(MediaDrop::Malformed),
                        }
                    }
                    e = conn.closed() => {
                        debug!(peer = %peer, error = %e, "node link closed");
                        break;
                    }
                }
            }
            let current = {
                let mut t = me.table();
                let current = t
                    .get(&peer)
                    .is_some_and(|l| l.conn.stable_id() == conn.stable_id());
                if current {
                    t.remove(&peer);
                }
                me.metrics.cluster_links().set(t.len() as f64);
                current
            };
            info!(peer = %peer, "node link down");
            // A replaced link is not the peer going away.
            if current {
                me.tell(LinkEvent::Down(peer));
            }
        });
    }

    /// The link to `peer` at `addr`: the live one, or a new one.
    pub async fn connect(&self, peer: &str, addr: SocketAddr) -> Result<Link, LinkError> {
        if let Some(l) = self.get(peer) {
            return Ok(l);
        }
        // One dial per peer at a time: concurrent joins to one owner share its link.
        let gate = self
            .dialling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(peer.to_string())
            .or_default()
            .clone();
        let _dialling = gate.lock().await;
        if let Some(l) = self.get(peer) {
            return Ok(l);
        }
        let (conn, inc, link, send, recv) = dial_stream(
            &self.endpoint,
            &self.client,
            &self.node,
            self.incarnation,
            peer,
            addr,
        )
        .await?;
        self.up(peer.to_string(), conn, send, recv, (inc, link), true);
        self.table()
            .get(peer)
            .cloned()
            .ok_or_else(|| LinkError::Refused("link closed at once".into()))
    }

    /// Close every link and the endpoint.
    pub fn close(&self) {
        self.endpoint.close(CLOSE_SHUTDOWN.into(), b"shutdown");
    }
}

/// Dial `peer` at `addr` and run the connecting side's handshake.
pub async fn dial(
    endpoint: &Endpoint,
    client: &quinn::ClientConfig,
    me: &str,
    peer: &str,
    addr: SocketAddr,
) -> Result<Connection, LinkError> {
    dial_stream(endpoint, client, me, 0, peer, addr)
        .await
        .map(|(c, _, _, _, _)| c)
}

/// [`dial`], keeping the control stream.
pub async fn dial_stream(
    endpoint: &Endpoint,
    client: &quinn::ClientConfig,
    me: &str,
    incarnation: u64,
    peer: &str,
    addr: SocketAddr,
) -> Result<(Connection, u64, u64, SendStream, RecvStream), LinkError> {
    check_node_id(peer)?;
    let link = rand::random::<u64>();
    let conn = endpoint.connect_with(client.clone(), addr, peer)?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    write_control(
        &mut send,
        &Control::Hello {
            node: me.to_string(),
            version: VERSION,
            incarnation,
            link,
        },
    )
    .await?;
    match tokio::time::timeout(HELLO_TIMEOUT, read_control(&mut recv)).await {
        Ok(Ok(Some(Control::Welcome { node, incarnation }))) if node == peer => {
            Ok((conn, incarnation, link, send, recv))
        }
        Ok(Ok(other)) => Err(LinkError::Refused(format!(
            "expected welcome from {peer}, got {other:?}"
        ))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(LinkError::Refused("no welcome in time".into())),
    }
}

/// Check that the peer's TLS certificate (already verified against the cluster CA) names
/// `node`.
fn cert_names(conn: &Connection, node: &str) -> Result<(), LinkError> {
    check_node_id(node)?;
    let certs = conn
        .peer_identity()
        .and_then(|i| {
            i.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| LinkError::Refused("no peer certificate".into()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| LinkError::Refused("no peer certificate".into()))?;
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| LinkError::Refused(format!("peer certificate: {e}")))?;
    let name = rustls_pki_types::ServerName::try_from(node)
        .map_err(|e| LinkError::Refused(format!("node id: {e}")))?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|_| LinkError::Refused(format!("the certificate does not name node {node}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field a later build adds is ignored (rolling upgrades), a field this build added
    /// defaults when an older owner leaves it out, and an unknown message type is refused.
    #[test]
    fn control_messages_ignore_unknown_fields_and_default_new_ones() {
        let later = r#"{"type":"route","call":"c","peer_node":"b","peer_quic":"127.0.0.1:9",
            "ssrcs":[1],"video":[1],"receiving":[],"keyframe_on_join":false,"next_field":7}"#;
        match serde_json::from_str::<Control>(later) {
            Ok(Control::Route {
                keyframe_on_join, ..
            }) => assert!(!keyframe_on_join),
            other => panic!("{other:?}"),
        }
        let older = r#"{"type":"route","call":"c","peer_node":"b","peer_quic":"127.0.0.1:9",
            "ssrcs":[1],"video":[1],"receiving":[]}"#;
        match serde_json::from_str::<Control>(older) {
            Ok(Control::Route {
                keyframe_on_join,
                repairs,
                ..
            }) => assert!(keyframe_on_join && repairs.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(serde_json::from_str::<Control>(r#"{"type":"no_such_message"}"#).is_err());
    }
}
