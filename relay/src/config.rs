//! Typed configuration. The embedded default (`config/relay.toml`) is what `blindrelay`
//! runs with no flags; a user file is parsed with the same types, so an unknown key or a
//! bad value is an error that names the key, not a silent default.

use crate::core::budget::BudgetRate;
use crate::core::plane::PlaneConfig;
use crate::token::{TokenRules, TokenVerifier, DEFAULT_MAX_TTL};
use blindrelay_protocol::sdp::Fingerprint;
use blindrelay_protocol::signal::MAX_MESSAGE_BYTES;
use blindrelay_protocol::token::{kid_of, read_ed25519_public, MAX_KID_BYTES};
use blindrelay_protocol::tracks::{self, TrackLimits};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// The configuration compiled into the binary.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/relay.toml");

/// Bytes of a `chat` message's JSON around its body, with the longest sender id the
/// relay gives (`p-` and 12 characters): added to `signal.max_chat_bytes` for the
/// largest chat's wire size.
pub const CHAT_ENVELOPE_BYTES: u64 = 64;

/// The development secret shipped in the default config; only usable on loopback.
pub const DEV_API_SECRET: &str = "blindrelay-dev-secret-loopback-only";

/// The development admin token shipped in the default config; only usable on loopback.
pub const DEV_ADMIN_TOKEN: &str = "blindrelay-dev-admin-token-loopback-only";

/// Why a configuration cannot be used. The CLI exits with status 2 on any of these.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub signal: SignalConfig,
    pub admin: AdminConfig,
    pub media: MediaConfig,
    pub ice: IceConfig,
    pub auth: AuthConfig,
    pub calls: CallsConfig,
    pub capture: CaptureConfig,
    pub policy: PolicyConfig,
    /// Present when the relay is a node of a cluster; absent, it runs alone.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: this relay as a node of a cascade (README, "The cascade").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id: one DNS label, named by its certificate.
    pub node_id: String,
    /// The directory, e.g. `redis://10.0.0.5:6379/`.
    pub redis_url: String,
    /// Where this node accepts node links (QUIC, UDP).
    pub quic_listen: SocketAddr,
    /// The host or IP address other nodes and clients are told to reach this node at.
    pub announce: String,
    /// The cluster CA's certificate, and this node's certificate and key (PEM), from
    /// `blindrelay cluster init` and `blindrelay cluster cert`.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often the node refreshes its directory record.
    #[serde(default = "default_heartbeat", with = "humantime_serde_compat")]
    pub heartbeat: Duration,
    /// The record's lifetime: a node that stops heartbeating vanishes after this.
    #[serde(default = "default_node_ttl", with = "humantime_serde_compat")]
    pub node_ttl: Duration,
    /// Longest wait for one directory operation.
    #[serde(default = "default_directory_timeout", with = "humantime_serde_compat")]
    pub directory_timeout: Duration,
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}
fn default_node_ttl() -> Duration {
    Duration::from_secs(3)
}
fn default_directory_timeout() -> Duration {
    Duration::from_secs(2)
}

impl ClusterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, message: String| Err(ConfigError::Invalid { key, message });
        if let Err(e) = crate::cluster::pki::check_node_id(&self.node_id) {
            return bad("cluster.node_id", e.to_string());
        }
        if !(self.redis_url.starts_with("redis://") || self.redis_url.starts_with("unix://")) {
            return bad(
                "cluster.redis_url",
                "must be a redis:// or unix:// URL".into(),
            );
        }
        if self.announce.is_empty() || self.announce.contains('/') {
            return bad(
                "cluster.announce",
                "must be a host name or IP address".into(),
            );
        }
        if self.heartbeat.is_zero() || self.node_ttl < self.heartbeat * 2 {
            return bad(
                "cluster.node_ttl",
                "must be at least twice cluster.heartbeat (non-zero), or a live node would flicker out of the directory".into(),
            );
        }
        if self.directory_timeout.is_zero() {
            return bad("cluster.directory_timeout", "must be more than 0".into());
        }
        Ok(())
    }
}

/// Which hop SRTP implementation the forwarding loops use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SrtpImpl {
    Fast,
    Reference,
}

/// Where E2EE policies come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// TOML policy file (see config/policies.toml); reloaded on SIGHUP and when it changes,
    /// rewritten atomically by the admin API. Without it, policies live in memory only.
    pub file: Option<std::path::PathBuf>,
    /// `calling_e2ee` of the `Global` policy when the policy file does not define it.
    pub global: crate::core::policy::CallingE2ee,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            file: None,
            global: crate::core::policy::CallingE2ee::Disabled,
        }
    }
}

/// The signalling listener and the limits that keep one client from holding the relay's
/// memory or connections: every one is bounded, and every refusal is counted by reason.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalConfig {
    pub listen: SocketAddr,
    /// A connection that has not authenticated (`hello`) by then is closed.
    #[serde(with = "humantime_serde_compat")]
    pub hello_timeout: Duration,
    /// Longest time from TCP accept to a finished WebSocket upgrade (slowloris).
    #[serde(with = "humantime_serde_compat")]
    pub header_read_timeout: Duration,
    /// Longest time one outbound WebSocket write may take before the connection is closed.
    #[serde(with = "humantime_serde_compat")]
    pub write_timeout: Duration,
    /// Bytes queued for one connection that it has not read yet; past this the client is
    /// a slow reader and is disconnected.
    pub max_outbound_bytes: usize,
    /// Open signalling connections, in total and from one source address.
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// Messages one connection may send per second (sustained) and in one burst.
    pub messages_per_second: u32,
    pub message_burst: u32,
    /// Bytes per second (sustained) and in one burst that one participant may make the
    /// relay write to the others: chat, `e2ee` blobs, MLS KeyPackages, each charged its
    /// wire size times the call's other participants (MLS commits and Welcomes are
    /// charged but never refused). Over it, `rate_limited`. See `core::budget` for the
    /// reasoning behind the defaults; validation keeps the burst within half of
    /// `max_outbound_bytes` (a reader faster than the rate never overflows because of
    /// others) and large enough for the largest chat to a full call.
    pub broadcast_bytes_per_second: u64,
    pub broadcast_burst_bytes: u64,
    /// Largest chat body, in bytes; a larger one is refused with `message_too_large`.
    /// Sealed (E2EE) chat is base64 of the ciphertext: allow a third more than the text.
    pub max_chat_bytes: usize,
    /// Web origins (`https://app.example.com`) besides the relay's own whose pages may
    /// open the signalling WebSocket. A browser sends `Origin`; a request with a foreign
    /// one is refused (403), so another site's page cannot act with a visitor's
    /// credentials. Requests without `Origin` (native clients) are not affected.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token for the admin API (policy changes). Compared in constant time.
    pub token: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    pub listen: SocketAddr,
    /// Hop SRTP implementation: `fast` (in place, for AEAD_AES_128_GCM and
    /// AES128_CM_HMAC_SHA1_80) or `reference` (webrtc-srtp always).
    pub srtp: SrtpImpl,
    pub workers: usize,
    pub socket_buffer_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IceConfig {
    #[serde(with = "humantime_serde_compat")]
    pub consent_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub api_secret: String,
    #[serde(with = "humantime_serde_compat")]
    pub leeway: Duration,
    /// Longest token lifetime accepted (`exp - iat`, and `exp - now`); longer-lived
    /// tokens are refused.
    #[serde(with = "humantime_serde_compat")]
    pub max_ttl: Duration,
    /// The token issuer's Ed25519 public keys, chosen by a token's `kid` (several, for
    /// rotation). When set, the relay accepts EdDSA tokens under these keys only and
    /// refuses HS256: it holds no key that could mint an identity.
    pub issuer_public_keys: Vec<IssuerKey>,
}

impl AuthConfig {
    /// The rules tokens are checked by.
    pub fn rules(&self) -> TokenRules {
        TokenRules {
            leeway: self.leeway,
            max_ttl: self.max_ttl,
        }
    }

    /// How `hello` checks tokens: issuer keys when any are configured, else HS256 under
    /// `api_secret`.
    pub fn verifier(&self) -> TokenVerifier {
        if self.issuer_public_keys.is_empty() {
            TokenVerifier::Hs256(self.api_secret.clone())
        } else {
            TokenVerifier::Issuer(
                self.issuer_public_keys
                    .iter()
                    .map(|k| (k.kid.clone(), k.public_key))
                    .collect(),
            )
        }
    }

    /// Whether the relay can mint tokens itself (HS256 mode).
    pub fn relay_mints(&self) -> bool {
        self.issuer_public_keys.is_empty()
    }
}

/// One issuer public key: `{ kid = "...", public_key = "-----BEGIN PUBLIC KEY-----..." }`
/// or `{ kid = "...", public_key_file = "issuer.pub" }` (a path relative to the working
/// directory). The PEM is read and checked when the config loads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "IssuerKeyToml")]
pub struct IssuerKey {
    pub kid: String,
    pub public_key: [u8; 32],
}

impl IssuerKey {
    /// A key from SPKI PEM text; the error names the kid.
    pub fn from_pem(kid: &str, pem: &str) -> Result<IssuerKey, ConfigError> {
        Self::parse_pem(kid, pem).map_err(|message| ConfigError::Invalid {
            key: "auth.issuer_public_keys",
            message,
        })
    }

    fn parse_pem(kid: &str, pem: &str) -> Result<IssuerKey, String> {
        if kid.is_empty() || kid.len() > MAX_KID_BYTES {
            return Err(format!("a kid is 1 to {MAX_KID_BYTES} bytes"));
        }
        let public_key = read_ed25519_public(pem).map_err(|e| format!("key `{kid}`: {e}"))?;
        Ok(IssuerKey {
            kid: kid.to_string(),
            public_key,
        })
    }

    /// The key's RFC 7638 thumbprint, the kid `blindrelay keygen` prints.
    pub fn thumbprint(&self) -> String {
        kid_of(&self.public_key)
    }
}

/// `auth.issuer_public_keys` entries as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerKeyToml {
    kid: String,
    public_key: Option<String>,
    public_key_file: Option<PathBuf>,
}

impl TryFrom<IssuerKeyToml> for IssuerKey {
    /// Shown by the TOML error, under its pointer to the entry.
    type Error = String;

    fn try_from(t: IssuerKeyToml) -> Result<IssuerKey, String> {
        let pem = match (t.public_key, t.public_key_file) {
            (Some(pem), None) => pem,
            (None, Some(path)) => std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "auth.issuer_public_keys: key `{}`: cannot read public_key_file {}: {e}",
                    t.kid,
                    path.display()
                )
            })?,
            _ => {
                return Err(format!(
                    "auth.issuer_public_keys: key `{}`: give exactly one of public_key (PEM text) and public_key_file",
                    t.kid
                ))
            }
        };
        IssuerKey::parse_pem(&t.kid, &pem).map_err(|m| format!("auth.issuer_public_keys: {m}"))
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("api_secret", &"<redacted>")
            .field("leeway", &self.leeway)
            .field("max_ttl", &self.max_ttl)
            .field("issuer_public_keys", &self.issuer_public_keys)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// Largest number of participants in one call.
    pub max_participants: usize,
    /// Tracks (m-lines) one participant may offer, per kind. With `max_participants`
    /// they bound every offer the relay writes, which must fit one signalling message
    /// (checked in [`Config::validate`]).
    pub max_audio_tracks: usize,
    pub max_video_tracks: usize,
    /// Calls and participants on the whole relay.
    pub max_calls: usize,
    pub max_total_participants: usize,
    /// How long an invitation (add participant, transfer, bot) and a parked call wait.
    #[serde(with = "humantime_serde_compat")]
    pub invite_ttl: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub park_ttl: Duration,
    /// Pending invitations and parked calls on the whole relay.
    pub max_invites: usize,
    pub max_parked: usize,
    /// Wrong pickup codes one user may try per minute before retrieve is refused.
    pub retrieve_attempts_per_minute: u32,
}

impl CallsConfig {
    /// Tracks one participant may offer.
    pub fn track_limits(&self) -> TrackLimits {
        TrackLimits {
            audio: self.max_audio_tracks,
            video: self.max_video_tracks,
        }
    }
}

/// Smallest `capture.max_bytes`: room for the pcapng section header and interface 0 (a
/// few hundred bytes), so a capture is always a valid file.
pub const MIN_CAPTURE_BYTES: u64 = 1024;

/// A pcap of the RTP the relay holds after hop decryption, for audits that the relay is
/// blind. Off unless `path` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// The pcap file to write (truncated at start). Absent: no capture, no cost.
    pub path: Option<PathBuf>,
    /// Size cap of the file; the capture stops (the relay does not) when it is reached.
    pub max_bytes: u64,
    /// Capture only the call with this id.
    pub call: Option<String>,
}

impl Default for SignalConfig {
    fn default() -> Self {
        SignalConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            hello_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_outbound_bytes: 1024 * 1024,
            max_connections: 20_000,
            max_connections_per_source: 1_000,
            messages_per_second: 50,
            message_burst: 200,
            broadcast_bytes_per_second: 64 * 1024,
            broadcast_burst_bytes: 256 * 1024,
            max_chat_bytes: 8 * 1024,
            allowed_origins: Vec::new(),
        }
    }
}
impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            token: DEV_ADMIN_TOKEN.to_string(),
        }
    }
}
impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7402)),
            srtp: SrtpImpl::Fast,
            workers: 0,
            socket_buffer_bytes: 8 * 1024 * 1024,
        }
    }
}
impl Default for IceConfig {
    fn default() -> Self {
        IceConfig {
            consent_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(10),
        }
    }
}
impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            api_secret: DEV_API_SECRET.to_string(),
            leeway: Duration::from_secs(5),
            max_ttl: DEFAULT_MAX_TTL,
            issuer_public_keys: Vec::new(),
        }
    }
}
impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            path: None,
            max_bytes: 100 * 1024 * 1024,
            call: None,
        }
    }
}
impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            max_participants: 16,
            max_audio_tracks: 1,
            max_video_tracks: 2,
            max_calls: 10_000,
            max_total_participants: 20_000,
            invite_ttl: Duration::from_secs(120),
            park_ttl: Duration::from_secs(120),
            max_invites: 10_000,
            max_parked: 10_000,
            retrieve_attempts_per_minute: 10,
        }
    }
}

/// Durations as humantime strings ("15s", "500ms").
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration ({e}); write e.g. \"15s\" or \"500ms\""
            ))
        })
    }
}

impl Config {
    /// The embedded default.
    pub fn embedded() -> Result<Self, ConfigError> {
        Self::parse(EMBEDDED_DEFAULT)
    }

    /// Parse and validate TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The broadcast budget against the queue it protects and the chat it must carry
    /// (reasoning in `core::budget`).
    fn validate_broadcast(&self) -> Result<(), ConfigError> {
        let s = &self.signal;
        if s.max_chat_bytes > MAX_MESSAGE_BYTES {
            return Err(ConfigError::Invalid {
                key: "signal.max_chat_bytes",
                message: format!(
                    "must be at most {MAX_MESSAGE_BYTES}, the largest signalling message"
                ),
            });
        }
        let half_queue = (s.max_outbound_bytes / 2) as u64;
        if s.broadcast_burst_bytes > half_queue {
            return Err(ConfigError::Invalid {
                key: "signal.broadcast_burst_bytes",
                message: format!(
                    "must be at most half of signal.max_outbound_bytes ({half_queue}): others' bursts must never fill a reader's queue"
                ),
            });
        }
        let largest_chat = (s.max_chat_bytes as u64 + CHAT_ENVELOPE_BYTES)
            .saturating_mul(self.calls.max_participants.saturating_sub(1) as u64);
        if s.broadcast_burst_bytes < largest_chat {
            return Err(ConfigError::Invalid {
                key: "signal.broadcast_burst_bytes",
                message: format!(
                    "must be at least {largest_chat}: the largest chat (signal.max_chat_bytes + {CHAT_ENVELOPE_BYTES} bytes of JSON) to the other {} participants of a full call",
                    self.calls.max_participants.saturating_sub(1)
                ),
            });
        }
        Ok(())
    }

    /// Checks a deserializer cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.auth.api_secret.len() < 16 {
            return Err(ConfigError::Invalid {
                key: "auth.api_secret",
                message: "must be at least 16 bytes".into(),
            });
        }
        // Tokens carry whole seconds: a sub-second max_ttl would refuse every token.
        if self.auth.max_ttl < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                key: "auth.max_ttl",
                message: "must be at least 1s".into(),
            });
        }
        let exposed = [
            ("signal.listen", self.signal.listen),
            ("admin.listen", self.admin.listen),
            ("media.listen", self.media.listen),
        ]
        .into_iter()
        .find(|(_, a)| !a.ip().is_loopback());
        if self.admin.token.len() < 16 {
            return Err(ConfigError::Invalid {
                key: "admin.token",
                message: "must be at least 16 bytes".into(),
            });
        }
        let mut kids = std::collections::HashSet::new();
        for k in &self.auth.issuer_public_keys {
            if !kids.insert(k.kid.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "auth.issuer_public_keys",
                    message: format!("kid `{}` is given twice; each key needs its own", k.kid),
                });
            }
        }
        // With issuer keys the secret signs and checks nothing, so the development one is
        // harmless off loopback.
        if let Some((key, addr)) = exposed.filter(|_| self.auth.relay_mints()) {
            if self.auth.api_secret == DEV_API_SECRET {
                return Err(ConfigError::Invalid {
                    key: "auth.api_secret",
                    message: format!(
                        "the development secret only works on loopback, but {key} is {addr}; set your own secret"
                    ),
                });
            }
        }
        if let Some((key, addr)) = exposed {
            if self.admin.token == DEV_ADMIN_TOKEN {
                return Err(ConfigError::Invalid {
                    key: "admin.token",
                    message: format!(
                        "the development admin token only works on loopback, but {key} is {addr}; set your own token"
                    ),
                });
            }
        }
        if self.media.listen.ip().is_unspecified() {
            return Err(ConfigError::Invalid {
                key: "media.listen",
                message: "must be a concrete address: it is the relay's only ICE candidate".into(),
            });
        }
        if self.ice.consent_timeout < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                key: "ice.consent_timeout",
                message: "must be at least 1s".into(),
            });
        }
        if self.calls.max_participants < 2 {
            return Err(ConfigError::Invalid {
                key: "calls.max_participants",
                message: "must be at least 2".into(),
            });
        }
        self.validate_tracks()?;
        for o in &self.signal.allowed_origins {
            if !is_origin(o) {
                return Err(ConfigError::Invalid {
                    key: "signal.allowed_origins",
                    message: format!(
                        "`{o}` is not an origin: expected http:// or https:// and a host[:port], no path"
                    ),
                });
            }
        }
        for (key, zero) in [
            ("signal.hello_timeout", self.signal.hello_timeout.is_zero()),
            (
                "signal.header_read_timeout",
                self.signal.header_read_timeout.is_zero(),
            ),
            ("signal.write_timeout", self.signal.write_timeout.is_zero()),
            (
                "signal.max_outbound_bytes",
                self.signal.max_outbound_bytes < 64 * 1024,
            ),
            ("signal.max_connections", self.signal.max_connections == 0),
            (
                "signal.max_connections_per_source",
                self.signal.max_connections_per_source == 0,
            ),
            (
                "signal.messages_per_second",
                self.signal.messages_per_second == 0,
            ),
            ("signal.message_burst", self.signal.message_burst == 0),
            (
                "signal.broadcast_bytes_per_second",
                self.signal.broadcast_bytes_per_second == 0,
            ),
            ("signal.max_chat_bytes", self.signal.max_chat_bytes == 0),
            ("calls.max_calls", self.calls.max_calls == 0),
            (
                "calls.max_total_participants",
                self.calls.max_total_participants < 2,
            ),
            ("calls.invite_ttl", self.calls.invite_ttl.is_zero()),
            ("calls.park_ttl", self.calls.park_ttl.is_zero()),
        ] {
            if zero {
                return Err(ConfigError::Invalid {
                    key,
                    message: if key == "signal.max_outbound_bytes" {
                        "must be at least 65536 (one signalling message)".into()
                    } else {
                        "must be greater than zero".into()
                    },
                });
            }
        }
        self.validate_broadcast()?;
        if self
            .capture
            .path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError::Invalid {
                key: "capture.path",
                message: "must not be empty; leave the key out to capture nothing".into(),
            });
        }
        if self.capture.max_bytes < MIN_CAPTURE_BYTES {
            return Err(ConfigError::Invalid {
                key: "capture.max_bytes",
                message: format!("must be at least {MIN_CAPTURE_BYTES} (the pcapng headers)"),
            });
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        if self
            .capture
            .call
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > 256)
        {
            return Err(ConfigError::Invalid {
                key: "capture.call",
                message: "a call id is 1 to 256 bytes".into(),
            });
        }
        Ok(())
    }

    /// The control plane's settings from this config, plus what only the running relay
    /// knows: its media address and DTLS fingerprint. The core takes plain values, so it
    /// never depends on this file format.
    pub fn plane_config(&self, media_addr: SocketAddr, fingerprint: Fingerprint) -> PlaneConfig {
        PlaneConfig {
            tokens: self.auth.verifier(),
            token_rules: self.auth.rules(),
            hello_timeout: self.signal.hello_timeout,
            consent_timeout: self.ice.consent_timeout,
            connect_timeout: self.ice.connect_timeout,
            invite_ttl: self.calls.invite_ttl,
            park_ttl: self.calls.park_ttl,
            max_call_participants: self.calls.max_participants,
            track_limits: self.calls.track_limits(),
            max_calls: self.calls.max_calls,
            max_total_participants: self.calls.max_total_participants,
            max_invites: self.calls.max_invites,
            max_parked: self.calls.max_parked,
            messages_per_second: self.signal.messages_per_second,
            message_burst: self.signal.message_burst,
            broadcast: BudgetRate {
                bytes_per_second: self.signal.broadcast_bytes_per_second,
                burst_bytes: self.signal.broadcast_burst_bytes,
            },
            max_chat_bytes: self.signal.max_chat_bytes,
            retrieve_attempts_per_minute: self.calls.retrieve_attempts_per_minute,
            workers: self.worker_count(),
            media_addr,
            fingerprint,
        }
    }

    /// Tracks per participant: at least one of each kind, and few enough that the largest
    /// offer the relay can write to a member of a full call (built by
    /// [`tracks::largest_offer_message_bytes`]) fits one signalling message. A member's
    /// answer mirrors that offer, and an answer over the limit would leave the call's
    /// renegotiation stuck, so such a configuration is refused at start.
    fn validate_tracks(&self) -> Result<(), ConfigError> {
        for (key, n) in [
            ("calls.max_audio_tracks", self.calls.max_audio_tracks),
            ("calls.max_video_tracks", self.calls.max_video_tracks),
        ] {
            if n == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must be at least 1".into(),
                });
            }
        }
        let limits = self.calls.track_limits();
        let bytes = tracks::largest_offer_message_bytes(
            &limits,
            self.calls.max_participants,
            self.media.listen,
        );
        if bytes > MAX_MESSAGE_BYTES {
            return Err(ConfigError::Invalid {
                key: "calls.max_participants",
                message: format!(
                    "{} participants with {} audio and {} video tracks each make offers of up to {bytes} bytes, over the {MAX_MESSAGE_BYTES}-byte signalling message limit; lower calls.max_participants, calls.max_audio_tracks or calls.max_video_tracks",
                    self.calls.max_participants, limits.audio, limits.video
                ),
            });
        }
        Ok(())
    }

    /// Forwarding loops to run.
    pub fn worker_count(&self) -> usize {
        if self.media.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.media.workers
        }
    }
}

/// A web origin as browsers send it: `http://` or `https://`, then a host with an
/// optional port, nothing else.
fn is_origin(o: &str) -> bool {
    let Some(authority) = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
    else {
        return false;
    };
    !authority.is_empty()
        && !authority
            .bytes()
            .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@') || b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_loads_and_matches_code_defaults() {
        let c = Config::embedded().unwrap();
        let d = Config::default();
        assert_eq!(c.signal.listen, d.signal.listen);
        assert_eq!(c.admin.listen, d.admin.listen);
        assert_eq!(c.media.listen, d.media.listen);
        assert_eq!(c.ice.consent_timeout, d.ice.consent_timeout);
        assert_eq!(c.auth.api_secret, d.auth.api_secret);
        assert_eq!(c.auth.leeway, d.auth.leeway);
        assert_eq!(c.auth.max_ttl, d.auth.max_ttl);
        assert_eq!(c.calls.max_participants, d.calls.max_participants);
        assert_eq!(c.capture.max_bytes, d.capture.max_bytes);
        assert!(
            c.capture.path.is_none(),
            "the embedded default captures nothing"
        );
        assert!(c.capture.call.is_none());
        assert_eq!(
            c.signal.broadcast_bytes_per_second,
            d.signal.broadcast_bytes_per_second
        );
        assert_eq!(
            c.signal.broadcast_burst_bytes,
            d.signal.broadcast_burst_bytes
        );
        assert_eq!(c.signal.max_chat_bytes, d.signal.max_chat_bytes);
    }

    #[test]
    fn the_broadcast_budget_fits_the_queue_and_the_largest_chat() {
        let c = Config::embedded().unwrap();
        // The defaults: half the queue at most, one largest chat to a full call at least.
        assert!(c.signal.broadcast_burst_bytes <= c.signal.max_outbound_bytes as u64 / 2);
        for (text, key) in [
            (
                "[signal]
broadcast_bytes_per_second = 0
",
                "signal.broadcast_bytes_per_second",
            ),
            (
                "[signal]
max_chat_bytes = 0
",
                "signal.max_chat_bytes",
            ),
            (
                "[signal]
max_chat_bytes = 65537
",
                "signal.max_chat_bytes",
            ),
            // More than half of the 1 MiB queue.
            (
                "[signal]
broadcast_burst_bytes = 524289
",
                "signal.broadcast_burst_bytes",
            ),
            // Less than (8192 + 64) * 15.
            (
                "[signal]
broadcast_burst_bytes = 123839
",
                "signal.broadcast_burst_bytes",
            ),
            // A larger call needs a larger burst: 18 (the most the track limits admit)
            // need (8192 + 64) * 17.
            (
                "[calls]
max_participants = 18
[signal]
broadcast_burst_bytes = 140351
",
                "signal.broadcast_burst_bytes",
            ),
        ] {
            let e = Config::parse(text).expect_err(text);
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
        let ok = Config::parse(
            "[signal]
broadcast_burst_bytes = 123840
broadcast_bytes_per_second = 1
",
        )
        .unwrap();
        assert_eq!(ok.signal.broadcast_burst_bytes, 123_840);
    }

    #[test]
    fn the_chat_envelope_covers_the_longest_sender_id() {
        use blindrelay_protocol::signal::ServerMessage;
        let body = "x".repeat(8192);
        let m = ServerMessage::Chat {
            from: format!("p-{}", "A".repeat(12)),
            body: body.clone(),
        };
        let wire = serde_json::to_string(&m).unwrap().len() as u64;
        assert!(wire <= body.len() as u64 + CHAT_ENVELOPE_BYTES, "{wire}");
    }

    #[test]
    fn allowed_origins_parse_and_validate() {
        let c = Config::parse(
            "[signal]\nallowed_origins = [\"https://app.example.com\", \"http://127.0.0.1:8080\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.signal.allowed_origins,
            ["https://app.example.com", "http://127.0.0.1:8080"]
        );
        assert!(Config::default().signal.allowed_origins.is_empty());
        for bad in [
            "app.example.com",
            "https://",
            "https://a.example/x",
            "ftp://a",
            "null",
        ] {
            let e = Config::parse(&format!("[signal]\nallowed_origins = [\"{bad}\"]\n"))
                .expect_err(bad);
            assert!(
                e.to_string().contains("signal.allowed_origins"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn capture_section_parses_and_validates() {
        let c =
            Config::parse("[capture]\npath = \"/tmp/x.pcap\"\nmax_bytes = 4096\ncall = \"demo\"\n")
                .unwrap();
        assert_eq!(c.capture.path.as_deref(), Some(Path::new("/tmp/x.pcap")));
        assert_eq!(c.capture.max_bytes, 4096);
        assert_eq!(c.capture.call.as_deref(), Some("demo"));
        for (text, key) in [
            ("[capture]\nmax_bytes = 10\n", "capture.max_bytes"),
            ("[capture]\npath = \"\"\n", "capture.path"),
            ("[capture]\ncall = \"\"\n", "capture.call"),
            ("[capture]\nfile = \"x\"\n", "file"),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn auth_max_ttl_parses_and_validates() {
        let c = Config::parse("[auth]\nmax_ttl = \"7days\"\n").unwrap();
        assert_eq!(c.auth.max_ttl, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.auth.rules().max_ttl, c.auth.max_ttl);
        assert_eq!(c.auth.rules().leeway, c.auth.leeway);
        assert!(format!("{:?}", c.auth).contains("max_ttl"));
        for text in [
            "[auth]\nmax_ttl = \"0s\"\n",
            "[auth]\nmax_ttl = \"500ms\"\n",
            "[auth]\nmax_ttl = \"forever\"\n",
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains("max_ttl"), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_key_and_bad_value_name_the_key() {
        let e = Config::parse("[media]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::parse("[ice]\nconsent_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("consent_timeout"), "{e}");
        let e = Config::parse("[signal]\nlisten = \"0.0.0.0:7400\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.api_secret"), "{e}");
        let e = Config::parse("[signal]\nlisten = \"0.0.0.0:7400\"\n[auth]\napi_secret = \"a-real-production-secret\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin.token"), "{e}");
        Config::parse("[signal]\nlisten = \"0.0.0.0:7400\"\n[auth]\napi_secret = \"a-real-production-secret\"\n[admin]\ntoken = \"a-real-admin-token-123\"\n").unwrap();
    }

    fn pem_key() -> String {
        blindrelay_protocol::token::generate_ed25519()
            .expect("the OS has randomness")
            .1
    }

    /// `[auth]` with these issuer keys, written as inline tables.
    fn with_keys(entries: &[String]) -> Result<Config, ConfigError> {
        Config::parse(&format!(
            "[auth]\nissuer_public_keys = [\n{}\n]\n",
            entries.join(",\n")
        ))
    }

    #[test]
    fn issuer_keys_inline_and_from_files() {
        let (a, b) = (pem_key(), pem_key());
        let file =
            std::env::temp_dir().join(format!("blindrelay-config-test-{}.pub", std::process::id()));
        std::fs::write(&file, &b).expect("temp dir is writable");
        let c = with_keys(&[
            format!("{{ kid = \"old\", public_key = \"\"\"{a}\"\"\" }}"),
            format!(
                "{{ kid = \"new\", public_key_file = {:?} }}",
                file.display().to_string()
            ),
        ]);
        let _ = std::fs::remove_file(&file);
        let c = c.expect("two good keys");
        let read = |pem: &str| blindrelay_protocol::token::read_ed25519_public(pem).expect("pem");
        assert_eq!(
            c.auth.issuer_public_keys,
            vec![
                IssuerKey {
                    kid: "old".into(),
                    public_key: read(&a)
                },
                IssuerKey {
                    kid: "new".into(),
                    public_key: read(&b)
                },
            ]
        );
        assert!(!c.auth.relay_mints());
        match c.auth.verifier() {
            TokenVerifier::Issuer(keys) => assert_eq!(
                keys,
                vec![("old".to_string(), read(&a)), ("new".to_string(), read(&b))]
            ),
            v => panic!("expected issuer keys, got {v:?}"),
        }
        assert!(format!("{:?}", c.auth).contains("\"old\""));
        // Without keys: HS256 under the secret, as before.
        let d = Config::embedded().expect("embedded");
        assert!(d.auth.relay_mints());
        assert!(matches!(d.auth.verifier(), TokenVerifier::Hs256(s) if s == DEV_API_SECRET));
    }

    #[test]
    fn bad_issuer_keys_name_the_key() {
        let good = pem_key();
        let missing = std::env::temp_dir().join("blindrelay-no-such-key-file.pub");
        for (entries, want) in [
            (
                vec!["{ kid = \"k1\", public_key = \"not a pem\" }".to_string()],
                vec!["auth.issuer_public_keys", "`k1`", "PUBLIC KEY"],
            ),
            (
                vec![format!(
                    "{{ kid = \"k2\", public_key_file = {:?} }}",
                    missing.display().to_string()
                )],
                vec!["`k2`", "public_key_file", "blindrelay-no-such-key-file.pub"],
            ),
            (
                vec!["{ kid = \"k3\" }".to_string()],
                vec!["`k3`", "exactly one"],
            ),
            (
                vec![format!(
                    "{{ kid = \"k4\", public_key = \"\"\"{good}\"\"\", public_key_file = \"x\" }}"
                )],
                vec!["`k4`", "exactly one"],
            ),
            (
                vec![format!("{{ kid = \"\", public_key = \"\"\"{good}\"\"\" }}")],
                vec!["auth.issuer_public_keys", "kid is 1 to"],
            ),
            (
                vec![
                    format!("{{ kid = \"k5\", public_key = \"\"\"{good}\"\"\" }}"),
                    format!("{{ kid = \"k5\", public_key = \"\"\"{}\"\"\" }}", pem_key()),
                ],
                vec!["auth.issuer_public_keys", "`k5`", "twice"],
            ),
            (
                vec![format!(
                    "{{ kid = \"k6\", public_key = \"\"\"{good}\"\"\", algorithm = \"EdDSA\" }}"
                )],
                vec!["algorithm"],
            ),
        ] {
            let e = with_keys(&entries).unwrap_err().to_string();
            for w in want {
                assert!(e.contains(w), "{entries:?}: `{w}` not in: {e}");
            }
        }
        // A private key where the public one belongs is refused, and not echoed.
        let (private, _) = blindrelay_protocol::token::generate_ed25519().expect("randomness");
        let e = with_keys(&[format!(
            "{{ kid = \"k7\", public_key = \"\"\"{}\"\"\" }}",
            private.as_str()
        )])
        .unwrap_err()
        .to_string();
        assert!(e.contains("`k7`"), "{e}");
        let body = private.lines().nth(1).expect("a PEM body line");
        assert!(!e.contains(body), "the error echoes the private key: {e}");
    }

    #[test]
    fn issuer_keys_make_the_unused_dev_secret_harmless_off_loopback() {
        let key = format!("{{ kid = \"k\", public_key = \"\"\"{}\"\"\" }}", pem_key());
        let exposed =
            "[signal]\nlisten = \"0.0.0.0:7400\"\n[admin]\ntoken = \"a-real-admin-token-123\"\n";
        let e = Config::parse(exposed).unwrap_err().to_string();
        assert!(e.contains("auth.api_secret"), "{e}");
        Config::parse(&format!("{exposed}[auth]\nissuer_public_keys = [{key}]\n"))
            .expect("no secret signs anything here");
    }
}
