//! Starting and stopping a relay, and the state its tasks share.

use super::capture::{Capture, CaptureError};
use super::media::{self, RecvCtl, WorkerMsg};
use super::udp::MediaSocket;
use super::{admin, signal};
use crate::config::Config;
use crate::core::calls::CallRegistry;
use crate::core::forward::{MediaTap, TapPacket};
use crate::core::ice::IceCredentials;
use crate::core::{CallKey, PeerId};
use crate::metrics::Metrics;
use blindrelay_protocol::sdp::Fingerprint;
use blindrelay_protocol::signal::ServerMessage;
use blindrelay_transport::webrtc_dtls::conn::DTLSConn;
use blindrelay_transport::DtlsIdentity;
use dashmap::DashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info};

/// Why a relay could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the relay's DTLS certificate: {0}")]
    Identity(#[from] blindrelay_transport::TransportError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Policy(#[from] super::policy_store::StoreError),
}

/// Options that are code, not configuration.
#[derive(Default, Clone)]
pub struct RelayOptions {
    /// See [`MediaTap`].
    pub tap: Option<MediaTap>,
}

/// What the media path needs to know about a joined participant, found by relay ufrag.
#[derive(Debug)]
pub struct IceEntry {
    pub peer: PeerId,
    pub call_key: CallKey,
    pub worker: usize,
    pub local_pwd: String,
    pub remote_ufrag: String,
    pub fingerprint: Fingerprint,
    pub ssrcs: Vec<u32>,
    pub activity: Arc<AtomicU64>,
    pub joined_at: Instant,
}

impl IceCredentials for Arc<IceEntry> {
    fn local_pwd(&self) -> &str {
        &self.local_pwd
    }
    fn remote_ufrag(&self) -> &str {
        &self.remote_ufrag
    }
}

/// Control-plane state of one joined participant.
pub struct Session {
    pub to_client: mpsc::UnboundedSender<ServerMessage>,
    pub role: &'static str,
    pub worker: usize,
    pub local_ufrag: String,
    pub activity: Arc<AtomicU64>,
    pub joined_at: Instant,
    pub connected: Arc<AtomicBool>,
    pub dtls: Mutex<Option<Arc<DTLSConn>>>,
}

/// State shared by the relay's tasks.
pub struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub identity: DtlsIdentity,
    pub media: Arc<MediaSocket>,
    pub media_addr: SocketAddr,
    pub registry: Mutex<CallRegistry>,
    pub sessions: DashMap<PeerId, Session>,
    pub ice: DashMap<String, Arc<IceEntry>>,
    pub workers: Vec<mpsc::Sender<WorkerMsg>>,
    /// Each forwarding loop's packet ring, by the same index as `workers`.
    pub packet_queues: Vec<Arc<media::PacketQueue>>,
    pub recv_ctl: mpsc::UnboundedSender<RecvCtl>,
    pub next_peer: AtomicU64,
    pub epoch: Instant,
    pub shutting_down: AtomicBool,
    /// The pcap capture, when `capture.path` is set; joins tell it their call.
    pub capture: Option<Arc<Capture>>,
    /// E2EE policies in force.
    pub policies: super::policy_store::PolicyStore,
    /// Lobby, invitations and parked calls (call control).
    pub control: super::control::Control,
}

impl Shared {
    /// Milliseconds since start: the unit of activity timestamps.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Remove a participant everywhere, tell its call, and close its DTLS association
    /// (close_notify). Idempotent: the first caller does the work.
    pub fn remove_peer(self: &Arc<Self>, peer: PeerId, reason: &'static str) {
        let Some((_, session)) = self.sessions.remove(&peer) else {
            return;
        };
        // The registry lock guards only membership; a poisoned lock means a panic elsewhere
        // already, and membership is still consistent (each call is one atomic update).
        let left = self
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .leave(peer);
        self.ice.remove(&session.local_ufrag);
        let _ = self.recv_ctl.send(RecvCtl::RemovePeer(peer));
        // Every loop, not only the session's: after a merge the participant's MovePeer may
        // still be queued at its old loop, and a RemovePeer sent only to the new one could
        // overtake the AddPeer the move sends there, leaving a participant nobody removes.
        // Told first, the old loop drops the participant and the move finds nothing.
        for w in &self.workers {
            let w = w.clone();
            tokio::spawn(async move {
                let _ = w.send(WorkerMsg::RemovePeer(peer)).await;
            });
        }
        let dtls = session
            .dtls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(conn) = dtls {
            tokio::spawn(async move {
                let _ = conn.close().await;
            });
        }
        self.metrics.removed(reason).increment(1);
        self.metrics.participants(session.role).decrement(1.0);
        if let Some(left) = left {
            if let Some(mode) = left.ended {
                self.metrics.calls(mode.as_str()).decrement(1.0);
            }
            // Tell the participant itself when the relay, not the participant, ended it.
            if matches!(
                reason,
                "consent_timeout" | "dtls_failed" | "connect_timeout" | "transferred" | "parked"
            ) {
                let _ = session.to_client.send(ServerMessage::ParticipantLeft {
                    participant: left.public_id.clone(),
                    reason: reason.to_string(),
                });
            }
            for other in left.remaining {
                if let Some(s) = self.sessions.get(&other) {
                    let _ = s.to_client.send(ServerMessage::ParticipantLeft {
                        participant: left.public_id.clone(),
                        reason: reason.to_string(),
                    });
                }
            }
        }
        debug!(reason, "participant removed");
    }

    /// Remove participants that went silent (consent, RFC 7675 spirit) or never connected.
    fn sweep(self: &Arc<Self>) {
        let now = self.now_ms();
        let consent = self.config.ice.consent_timeout.as_millis() as u64;
        let connect = self.config.ice.connect_timeout;
        let mut stale = Vec::new();
        for s in self.sessions.iter() {
            let last = s.activity.load(Ordering::Relaxed);
            if now.saturating_sub(last) > consent {
                stale.push((*s.key(), "consent_timeout"));
            } else if !s.connected.load(Ordering::Relaxed) && s.joined_at.elapsed() > connect {
                stale.push((*s.key(), "connect_timeout"));
            }
        }
        for (p, why) in stale {
            self.remove_peer(p, why);
        }
    }
}

/// A running relay.
pub struct Relay {
    pub signal_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub media_addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind_tcp(
    what: &'static str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

impl Relay {
    /// Bind every listener and start the relay's tasks on the current tokio runtime.
    pub async fn start(config: Config, options: RelayOptions) -> Result<Relay, StartError> {
        // Only ring is compiled in; installing it explicitly keeps rustls from guessing.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let identity = DtlsIdentity::generate()?;
        let media = MediaSocket::bind(config.media.listen, config.media.socket_buffer_bytes)
            .map_err(|source| StartError::Bind {
                what: "media",
                addr: config.media.listen,
                source,
            })?;
        let media_addr = media.local_addr().map_err(|source| StartError::Bind {
            what: "media",
            addr: config.media.listen,
            source,
        })?;
        let signal_listener = bind_tcp("signal", config.signal.listen).await?;
        let admin_listener = bind_tcp("admin", config.admin.listen).await?;
        let signal_addr = signal_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                what: "signal",
                addr: config.signal.listen,
                source,
            })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                what: "admin",
                addr: config.admin.listen,
                source,
            })?;
        let policies = super::policy_store::PolicyStore::load(&config.policy)?;
        let metrics = Arc::new(Metrics::new());
        // Without a capture path no tap is installed: capture costs nothing when off.
        let capture = match &config.capture.path {
            Some(path) => Some(Capture::start(path, &config.capture, media_addr, &metrics)?),
            None => None,
        };
        let tap = both_taps(options.tap.clone(), capture.as_ref().map(Capture::tap));
        let media = Arc::new(media);
        let n_workers = config.worker_count();
        let mut workers = Vec::new();
        let mut packet_queues = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..n_workers {
            let (tx, rx) = mpsc::channel(media::CONTROL_QUEUE);
            let packets = Arc::new(media::PacketQueue::new(media::WORKER_QUEUE));
            workers.push(tx);
            packet_queues.push(packets.clone());
            tasks.push(tokio::spawn(media::worker_loop(
                rx,
                packets,
                media.clone(),
                metrics.clone(),
                tap.clone(),
            )));
        }
        let (recv_ctl, recv_ctl_rx) = mpsc::unbounded_channel();
        let registry = Mutex::new(CallRegistry::new(n_workers, config.calls.max_participants));
        let shared = Arc::new(Shared {
            config,
            metrics,
            identity,
            media,
            media_addr,
            registry,
            sessions: DashMap::new(),
            ice: DashMap::new(),
            workers,
            packet_queues,
            recv_ctl,
            next_peer: AtomicU64::new(1),
            epoch: Instant::now(),
            shutting_down: AtomicBool::new(false),
            policies,
            control: Default::default(),
            capture,
        });
        tasks.push(tokio::spawn(media::recv_loop(shared.clone(), recv_ctl_rx)));
        tasks.push(tokio::spawn(signal::serve(signal_listener, shared.clone())));
        tasks.push(tokio::spawn(admin::serve(admin_listener, shared.clone())));
        // Notice edits of the policy file within a second (SIGHUP forces a reload too).
        let watcher = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let _ = watcher.policies.reload(false);
            }
        }));
        let sweeper = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                sweeper.sweep();
            }
        }));
        info!(
            signal = %format!("ws://{signal_addr}/v1/signal"),
            admin = %format!("http://{admin_addr}"),
            media = %media_addr,
            workers = n_workers,
            "blindrelay started"
        );
        Ok(Relay {
            signal_addr,
            admin_addr,
            media_addr,
            shared,
            tasks,
        })
    }

    /// Re-read the policy file now (what SIGHUP does). The policy in force stays on error.
    pub fn reload_policies(&self) -> Result<bool, super::policy_store::StoreError> {
        self.shared.policies.reload(true)
    }

    /// The signalling URL clients connect to.
    pub fn signal_url(&self) -> String {
        format!("ws://{}/v1/signal", self.signal_addr)
    }

    /// The current metrics as Prometheus text.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render()
    }

    /// Stop: refuse new work, send DTLS close_notify to every connected peer, stop tasks.
    pub async fn shutdown(self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let peers: Vec<PeerId> = self.shared.sessions.iter().map(|s| *s.key()).collect();
        let mut closes = Vec::new();
        for p in peers {
            if let Some(s) = self.shared.sessions.get(&p) {
                let conn = s.dtls.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(c) = conn {
                    closes.push(tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(1), c.close()).await;
                    }));
                }
            }
            self.shared.remove_peer(p, "shutdown");
        }
        for c in closes {
            let _ = c.await;
        }
        for t in &self.tasks {
            t.abort();
        }
        self.flush_capture().await;
        info!("blindrelay stopped");
    }

    /// Write out every captured packet queued so far (no-op without a capture), so the
    /// pcap file is complete up to now. Waits at most 2 s for the disk.
    pub async fn flush_capture(&self) {
        if let Some(c) = self.shared.capture.clone() {
            let _ = tokio::task::spawn_blocking(move || c.flush(Duration::from_secs(2))).await;
        }
    }
}

/// One tap from the caller's and the capture's, whichever are present.
fn both_taps(a: Option<MediaTap>, b: Option<MediaTap>) -> Option<MediaTap> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Arc::new(move |p: &TapPacket<'_>| {
            a(p);
            b(p);
        })),
        (a, b) => a.or(b),
    }
}
