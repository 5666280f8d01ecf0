//! Starting and stopping a relay: bind the listeners, start the forwarding loops, the
//! receive loop, the control plane's driver, the signalling and admin listeners, and wire
//! them together with bounded channels.

use super::capture::{Capture, CaptureError};
use super::driver::{self, MediaControl};
use super::events::{self, Event, EventTx};
use super::media;
use super::policy_store::PolicyStore;
use super::signal::ListenerLimits;
use super::udp::MediaSocket;
use super::{admin, signal};
use crate::config::Config;
use crate::core::forward::{MediaTap, TapPacket};
use crate::core::plane::ControlPlane;
use crate::metrics::Metrics;
use blindrelay_transport::DtlsIdentity;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::info;

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
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Options that are code, not configuration.
#[derive(Default, Clone)]
pub struct RelayOptions {
    /// See [`MediaTap`].
    pub tap: Option<MediaTap>,
}

/// A running relay.
pub struct Relay {
    pub signal_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub media_addr: SocketAddr,
    /// The node link listener's address, when the relay is a cluster node.
    pub quic_addr: Option<SocketAddr>,
    node: Option<crate::cluster::Node>,
    metrics: Arc<Metrics>,
    policies: Arc<PolicyStore>,
    capture: Option<Arc<Capture>>,
    events: EventTx,
    shutting_down: Arc<AtomicBool>,
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
        let metrics = Arc::new(Metrics::new());
        let policies = Arc::new(PolicyStore::load(&config.policy)?.with_metrics(&metrics));
        // Without a capture path no tap is installed: capture costs nothing when off.
        let capture = match &config.capture.path {
            Some(path) => Some(Capture::start(path, &config.capture, media_addr, &metrics)?),
            None => None,
        };
        // A node joins the cluster before it serves anyone: the shared policy is in force
        // from the first join.
        let node = match &config.cluster {
            Some(c) => Some(
                crate::cluster::Node::start(
                    c,
                    crate::cluster::NodeAddrs {
                        signal: signal_addr,
                    },
                    policies.clone(),
                    metrics.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let shared = node.as_ref().map(|n| n.policy.clone());
        let tap = both_taps(options.tap.clone(), capture.as_ref().map(Capture::tap));
        let media = Arc::new(media);
        let n_workers = config.worker_count();
        let mut workers = Vec::new();
        let mut packet_queues = Vec::new();
        let mut tasks = Vec::new();
        let (events, events_rx) = mpsc::channel(events::EVENT_QUEUE);
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
                events.clone(),
            )));
        }
        let (recv_ctl, recv_ctl_rx) = mpsc::channel(media::CONTROL_QUEUE);
        let identity = Arc::new(identity);
        let plane = {
            let p = policies.clone();
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            ControlPlane::new(
                config.plane_config(media_addr, identity.fingerprint().clone()),
                Box::new(move |user: &str, tenant: &str| p.effective(user, tenant).calling_e2ee),
                (Instant::now(), unix),
                rand::random(),
            )
        };
        // A node serves calls held elsewhere and carries its own calls' remote members.
        let cascade = node.as_ref().map(|n| {
            super::cascade::Cascade::start(super::cascade::CascadeSetup {
                node: n.id.clone(),
                quic: n.quic,
                links: n.links.clone(),
                dir: n.dir.clone(),
                // A claim outlives a missed refresh or two; a dead owner's is taken over
                // as soon as its node record is gone, whatever this says.
                call_ttl: n.node_ttl * 3,
                refresh: n.heartbeat,
                media: crate::core::plane::MediaEndpoint {
                    addr: media_addr,
                    fingerprint: identity.fingerprint().clone(),
                },
                workers: n_workers,
                queues: packet_queues.clone(),
                events: events.clone(),
                metrics: metrics.clone(),
                message_rate: (
                    config.signal.messages_per_second,
                    config.signal.message_burst,
                ),
            })
        });
        tasks.push(tokio::spawn(driver::run(
            plane,
            events_rx,
            MediaControl {
                workers,
                recv: recv_ctl,
            },
            capture.clone(),
            metrics.clone(),
            cascade,
        )));
        tasks.push(tokio::spawn(media::recv_loop(
            media::RecvSetup {
                media: media.clone(),
                queues: packet_queues,
                metrics: metrics.clone(),
                events: events.clone(),
                dtls: media::DtlsSetup {
                    identity,
                    connect_timeout: config.ice.connect_timeout,
                    fast: config.media.srtp == crate::config::SrtpImpl::Fast,
                },
            },
            recv_ctl_rx,
        )));
        let shutting_down = Arc::new(AtomicBool::new(false));
        let limits = ListenerLimits {
            max_connections: config.signal.max_connections,
            max_connections_per_source: config.signal.max_connections_per_source,
            header_read_timeout: config.signal.header_read_timeout,
            write_timeout: config.signal.write_timeout,
            max_outbound_bytes: config.signal.max_outbound_bytes,
            allowed_origins: config.signal.allowed_origins.clone().into(),
            nodes: node.as_ref().map(|n| n.view.clone()),
            draining: shutting_down.clone(),
        };
        let mut web = super::web::WebState::new(&config);
        web.nodes = node.as_ref().map(|n| n.view.clone());
        tasks.push(tokio::spawn(signal::serve(
            signal_listener,
            events.clone(),
            limits,
            metrics.clone(),
            web,
        )));
        tasks.push(tokio::spawn(admin::serve(
            admin_listener,
            admin::AdminState {
                metrics: metrics.clone(),
                policies: policies.clone(),
                token: config.admin.token.clone(),
                shutting_down: shutting_down.clone(),
                shared: shared.clone(),
            },
        )));
        // Notice edits of the policy file within a second (SIGHUP forces a reload too). A
        // node shares the edited file's policy with the cluster.
        let watcher = policies.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let (Ok(true), Some(sh)) = (watcher.reload(false), &shared) {
                    if let Err(e) = sh.push_local().await {
                        tracing::warn!(error = %e, "the policy file's change was not shared");
                    }
                }
            }
        }));
        info!(
            signal = %format!("ws://{signal_addr}/v1/signal"),
            admin = %format!("http://{admin_addr}"),
            media = %media_addr,
            workers = n_workers,
            "blindrelay started"
        );
        let quic_addr = node.as_ref().and_then(|n| n.links.local_addr().ok());
        Ok(Relay {
            signal_addr,
            admin_addr,
            media_addr,
            quic_addr,
            node,
            metrics,
            policies,
            capture,
            events,
            shutting_down,
            tasks,
        })
    }

    /// Re-read the policy file now (what SIGHUP does). The policy in force stays on error.
    /// A node shares the file's policy with the cluster.
    pub async fn reload_policies(&self) -> Result<bool, super::policy_store::StoreError> {
        let changed = self.policies.reload(true)?;
        if let Some(n) = &self.node {
            n.policy.push_local().await?;
        }
        Ok(changed)
    }

    /// The signalling URL clients connect to.
    pub fn signal_url(&self) -> String {
        format!("ws://{}/v1/signal", self.signal_addr)
    }

    /// The current metrics as Prometheus text.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// Stop: refuse new work, send DTLS close_notify to every connected peer, stop tasks,
    /// and leave the cluster.
    pub async fn shutdown(mut self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        // A node drains: out of the directory first (no new calls come, and its calls are
        // claimed elsewhere), then everyone is told to move (its own participants by the
        // close of their connections, those it carried for other nodes through them),
        // and only then do its links close.
        let node = self.node.take();
        if let Some(n) = &node {
            n.leave().await;
        }
        let (done, wait) = oneshot::channel();
        if self.events.send(Event::Shutdown { done }).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(3), wait).await;
        }
        if let Some(n) = node {
            n.stop().await;
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
        if let Some(c) = self.capture.clone() {
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
