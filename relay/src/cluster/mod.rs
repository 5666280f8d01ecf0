//! The relay as a node of a cluster (`[cluster]` in the config): its record in the
//! directory (Redis), its QUIC node links, and the shared policy store. Without
//! `[cluster]` none of this runs and the relay stands alone.
//!
//! What is here so far: nodes register and expire, links authenticate under the cluster
//! CA, and a policy change on any node reaches every node through the directory. Calls
//! spanning nodes build on these (README, "The cascade").

pub mod directory;
pub mod link;
pub mod pki;

use crate::config::ClusterConfig;
use crate::core::policy::{PolicyError, PolicySet};
use crate::metrics::Metrics;
use crate::net::policy_store::{PolicyStore, StoreError};
use directory::{Directory, DirectoryError, NodeRecord, PolicyNotice, StoredPolicy};
use futures_util::StreamExt;
use link::{LinkError, Links};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How often a node re-reads the shared policy's version, to heal a notice missed while
/// its subscription was down.
const POLICY_RESYNC: Duration = Duration::from_secs(2);
/// Attempts of a compare-and-set policy change before giving up (each conflict means
/// another node changed policy in between).
const POLICY_CAS_ATTEMPTS: usize = 16;

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("cluster directory at {url}: {source}")]
    Directory { url: String, source: DirectoryError },
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Policy(#[from] StoreError),
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The policy store shared through the directory.
#[derive(Clone)]
pub struct SharedPolicy {
    node: String,
    dir: Directory,
    store: Arc<PolicyStore>,
    metrics: Arc<Metrics>,
}

impl SharedPolicy {
    /// Apply `change` to the shared set (retrying on a concurrent change), then put the
    /// result in force here at once; the other nodes apply it from the notice.
    pub async fn update(
        &self,
        change: impl Fn(&mut PolicySet) -> Result<(), PolicyError>,
    ) -> Result<(), StoreError> {
        for _ in 0..POLICY_CAS_ATTEMPTS {
            let stored = self.read().await?;
            let (version, mut set) = match &stored {
                Some(s) => (s.version, PolicySet::parse(&s.toml)?),
                None => (0, (*self.store.current()).clone()),
            };
            change(&mut set)?;
            set.validate()?;
            if self.put(version, set.clone()).await? {
                return Ok(());
            }
        }
        Err(StoreError::Shared(
            "the shared policy kept changing under this update; try again".into(),
        ))
    }

    /// Replace the shared set with this node's own (its policy file was edited or
    /// reloaded).
    pub async fn push_local(&self) -> Result<(), StoreError> {
        let set = (*self.store.current()).clone();
        for _ in 0..POLICY_CAS_ATTEMPTS {
            let version = self.read().await?.map(|s| s.version).unwrap_or(0);
            if self.put(version, set.clone()).await? {
                return Ok(());
            }
        }
        Err(StoreError::Shared(
            "the shared policy kept changing; the file's policy was not shared".into(),
        ))
    }

    async fn read(&self) -> Result<Option<StoredPolicy>, StoreError> {
        self.dir.policy().await.map_err(|e| {
            self.metrics.cluster_directory_error("read").increment(1);
            StoreError::Shared(e.to_string())
        })
    }

    /// Compare-and-set; true when stored (and put in force here).
    async fn put(&self, expected: u64, set: PolicySet) -> Result<bool, StoreError> {
        let at = unix_ms();
        match self
            .dir
            .put_policy(expected, &set.to_toml(), &self.node, at)
            .await
        {
            Ok(Some(v)) => {
                self.apply(set, v, at);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => {
                self.metrics
                    .cluster_directory_error("policy_write")
                    .increment(1);
                Err(StoreError::Shared(e.to_string()))
            }
        }
    }

    fn apply(&self, set: PolicySet, version: u64, at_ms: u64) {
        if self.store.apply_shared(set, version) {
            self.metrics.cluster_policy_version().set(version as f64);
            let lag = unix_ms().saturating_sub(at_ms);
            self.metrics
                .cluster_policy_propagation()
                .record(lag as f64 / 1000.0);
            info!(version, lag_ms = lag, "shared policy applied");
        }
    }

    /// Fetch the stored set and apply it if it is newer than what is in force.
    async fn sync(&self) {
        match self.read().await {
            Ok(Some(s)) if s.version > self.store.shared_version() => {
                match PolicySet::parse(&s.toml) {
                    Ok(set) => self.apply(set, s.version, s.at_ms),
                    Err(e) => warn!(error = %e, version = s.version, "shared policy rejected"),
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read the shared policy"),
        }
    }

    /// Apply notices as they come; re-read now and then in case one was missed.
    async fn follow(self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut ps = match self.dir.subscribe_policy().await {
                Ok(ps) => {
                    backoff = Duration::from_millis(100);
                    ps
                }
                Err(e) => {
                    self.metrics
                        .cluster_directory_error("subscribe")
                        .increment(1);
                    warn!(error = %e, "policy subscription failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            // Anything stored while unsubscribed.
            self.sync().await;
            let mut stream = ps.on_message();
            let mut resync = tokio::time::interval(POLICY_RESYNC);
            loop {
                tokio::select! {
                    m = stream.next() => {
                        let Some(m) = m else { break };
                        let notice = m
                            .get_payload::<String>()
                            .ok()
                            .and_then(|p| serde_json::from_str::<PolicyNotice>(&p).ok());
                        match notice {
                            Some(n) if n.version > self.store.shared_version() => self.sync().await,
                            Some(_) => {}
                            None => warn!("malformed policy notice ignored"),
                        }
                    }
                    _ = resync.tick() => self.sync().await,
                }
            }
            self.metrics
                .cluster_directory_error("subscribe")
                .increment(1);
            warn!("policy subscription lost; resubscribing");
        }
    }
}

/// What the node announces besides its config.
pub struct NodeAddrs {
    pub signal: SocketAddr,
}

/// The live nodes as the directory listed them at the last heartbeat: for clients (the
/// page's list of nodes to move to) and the signalling listener (their pages' origins).
pub type NodeView = Arc<std::sync::RwLock<ClusterView>>;

/// Origins of nodes' pages remembered: a page served by a node that has since gone must
/// still be let in by the node it moves to.
const MAX_ORIGINS: usize = 256;

#[derive(Debug, Default)]
pub struct ClusterView {
    pub nodes: Vec<NodeRecord>,
    /// The page origins of every node listed since this node started (at most
    /// [`MAX_ORIGINS`]; beyond that, the live nodes' only).
    pub origins: std::collections::BTreeSet<String>,
}

impl ClusterView {
    fn update(&mut self, nodes: Vec<NodeRecord>) {
        if self.origins.len() + nodes.len() > MAX_ORIGINS {
            self.origins.clear();
        }
        self.origins.extend(nodes.iter().filter_map(page_origin));
        self.nodes = nodes;
    }
}

/// The web origin of a node's pages (`http://host:port`), from its signalling URL.
pub fn page_origin(rec: &NodeRecord) -> Option<String> {
    let hp = rec
        .signal_url
        .strip_prefix("ws://")?
        .strip_suffix("/v1/signal")?;
    Some(format!("http://{hp}"))
}

/// A running node: directory heartbeat, links and the shared policy.
pub struct Node {
    pub id: String,
    pub links: Links,
    pub policy: SharedPolicy,
    pub dir: Directory,
    /// Where other nodes reach this one's links.
    pub quic: SocketAddr,
    /// How long a node's record outlives its last heartbeat.
    pub node_ttl: Duration,
    pub heartbeat: Duration,
    pub view: NodeView,
    draining: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    pub async fn start(
        cfg: &ClusterConfig,
        addrs: NodeAddrs,
        store: Arc<PolicyStore>,
        metrics: Arc<Metrics>,
    ) -> Result<Node, ClusterError> {
        metrics.cluster_started();
        let dir = Directory::connect(&cfg.redis_url, cfg.directory_timeout)
            .await
            .map_err(|source| {
                metrics.cluster_directory_error("connect").increment(1);
                ClusterError::Directory {
                    url: cfg.redis_url.clone(),
                    source,
                }
            })?;
        let tls = pki::NodeTls::load(&cfg.ca, &cfg.cert, &cfg.key)?;
        // No calls cross nodes yet, so no flows are agreed: media arriving on a link has no
        // receiver and is dropped and counted (`no_receiver`).
        let links = Links::start(&cfg.node_id, cfg.quic_listen, &tls, metrics.clone(), None)?;
        let quic_port = links
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(cfg.quic_listen.port());
        let policy = SharedPolicy {
            node: cfg.node_id.clone(),
            dir: dir.clone(),
            store,
            metrics: metrics.clone(),
        };
        // The directory's set wins; an empty directory is seeded with this node's.
        match policy.read().await? {
            Some(_) => policy.sync().await,
            None => policy.push_local().await?,
        }
        let mut tasks = vec![tokio::spawn(policy.clone().follow())];
        let draining = Arc::new(AtomicBool::new(false));
        let record = {
            let announce = cfg.announce.clone();
            let id = cfg.node_id.clone();
            let links = links.clone();
            let draining = draining.clone();
            let store = policy.store.clone();
            let started = unix_ms();
            move || NodeRecord {
                node_id: id.clone(),
                quic: host_port(&announce, quic_port),
                signal_url: format!(
                    "ws://{}/v1/signal",
                    host_port(&announce, addrs.signal.port())
                ),
                announce: announce.clone(),
                started_unix_ms: started,
                draining: draining.load(Ordering::Relaxed),
                links: links.peers(),
                policy_version: store.shared_version(),
            }
        };
        // The first heartbeat before start returns: a node is listed once it is up.
        dir.heartbeat(&record(), cfg.node_ttl)
            .await
            .map_err(|source| ClusterError::Directory {
                url: cfg.redis_url.clone(),
                source,
            })?;
        let view: NodeView = Arc::default();
        if let Ok(nodes) = dir.nodes().await {
            view.write()
                .unwrap_or_else(|p| p.into_inner())
                .update(nodes);
        }
        {
            let dir = dir.clone();
            let (every, ttl) = (cfg.heartbeat, cfg.node_ttl);
            let metrics = metrics.clone();
            let view = view.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    match dir.nodes().await {
                        Ok(nodes) => view
                            .write()
                            .unwrap_or_else(|p| p.into_inner())
                            .update(nodes),
                        Err(e) => {
                            metrics.cluster_directory_error("nodes").increment(1);
                            debug!(error = %e, "directory node list not read");
                        }
                    }
                    if let Err(e) = dir.heartbeat(&record(), ttl).await {
                        metrics.cluster_directory_error("heartbeat").increment(1);
                        warn!(error = %e, "directory heartbeat failed");
                    }
                }
            }));
        }
        info!(node = %cfg.node_id, quic = %cfg.quic_listen, "cluster node started");
        let quic = cfg
            .announce
            .parse::<std::net::IpAddr>()
            .map(|ip| SocketAddr::new(ip, quic_port))
            .unwrap_or_else(|_| {
                links
                    .local_addr()
                    .unwrap_or(SocketAddr::new(cfg.quic_listen.ip(), quic_port))
            });
        Ok(Node {
            id: cfg.node_id.clone(),
            links,
            policy,
            dir,
            quic,
            node_ttl: cfg.node_ttl,
            heartbeat: cfg.heartbeat,
            view,
            draining,
            tasks,
        })
    }

    /// Leave the cluster: the record goes at once (no waiting for its TTL), links close.
    pub async fn stop(self) {
        self.leave().await;
        self.links.close();
    }

    /// Leave the directory but keep the links: a draining node takes no new calls (its
    /// record is gone, so the calls it owned are claimed elsewhere) while it still tells
    /// the nodes it serves calls for that their sessions must move.
    pub async fn leave(&self) {
        self.draining.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.dir.remove_node(&self.id)).await;
    }
}

/// `host:port`, bracketing an IPv6 host.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `blindrelay cluster status`: the nodes and links the directory lists, as text.
pub async fn status(redis_url: &str, now_ms: u64) -> Result<String, ClusterError> {
    use std::fmt::Write;
    let err = |source| ClusterError::Directory {
        url: redis_url.to_string(),
        source,
    };
    let dir = Directory::connect(redis_url, Duration::from_secs(2))
        .await
        .map_err(err)?;
    let nodes = dir.nodes().await.map_err(err)?;
    let policy = dir.policy().await.map_err(err)?;
    let mut out = String::new();
    let _ = writeln!(out, "nodes: {}", nodes.len());
    for n in &nodes {
        let up = now_ms.saturating_sub(n.started_unix_ms) / 1000;
        let _ = writeln!(
            out,
            "  {}  quic {}  signal {}  up {}s  policy v{}{}",
            n.node_id,
            n.quic,
            n.signal_url,
            up,
            n.policy_version,
            if n.draining { "  draining" } else { "" }
        );
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for n in &nodes {
        for p in &n.links {
            let pair = if n.node_id < *p {
                (n.node_id.clone(), p.clone())
            } else {
                (p.clone(), n.node_id.clone())
            };
            if !pairs.contains(&pair) {
                pairs.push(pair);
            }
        }
    }
    pairs.sort();
    let _ = writeln!(out, "links: {}", pairs.len());
    for (a, b) in &pairs {
        let _ = writeln!(out, "  {a} <-> {b}");
    }
    let calls = dir.calls().await.map_err(err)?;
    let _ = writeln!(out, "calls: {}", calls.len());
    for c in &calls {
        let members: Vec<String> = c.members.iter().map(|(p, n)| format!("{p}@{n}")).collect();
        let _ = writeln!(
            out,
            "  {}  owner {}  members {}: {}",
            c.call,
            c.owner,
            c.members.len(),
            members.join(" ")
        );
    }
    match policy {
        Some(p) => {
            let _ = writeln!(out, "policy: v{}", p.version);
        }
        None => {
            let _ = writeln!(out, "policy: none shared yet");
        }
    }
    Ok(out)
}
