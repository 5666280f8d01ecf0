//! Typed configuration. The embedded default (`config/relay.toml`) is what `blindrelay`
//! runs with no flags; a user file is parsed with the same types, so an unknown key or a
//! bad value is an error that names the key, not a silent default.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// The configuration compiled into the binary.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/relay.toml");

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalConfig {
    pub listen: SocketAddr,
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
    /// Hop SRTP implementation: `fast` (in-place AEAD_AES_128_GCM when negotiated,
    /// webrtc-srtp for other profiles) or `reference` (webrtc-srtp always).
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
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("api_secret", &"<redacted>")
            .field("leeway", &self.leeway)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    pub max_participants: usize,
}

/// Smallest `capture.max_bytes`: the pcap file header, so a capture is always a valid file.
pub const MIN_CAPTURE_BYTES: u64 = 24;

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

    /// Checks a deserializer cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.auth.api_secret.len() < 16 {
            return Err(ConfigError::Invalid {
                key: "auth.api_secret",
                message: "must be at least 16 bytes".into(),
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
        if let Some((key, addr)) = exposed {
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
                message: format!("must be at least {MIN_CAPTURE_BYTES} (the pcap file header)"),
            });
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
        assert_eq!(c.calls.max_participants, d.calls.max_participants);
        assert_eq!(c.capture.max_bytes, d.capture.max_bytes);
        assert!(
            c.capture.path.is_none(),
            "the embedded default captures nothing"
        );
        assert!(c.capture.call.is_none());
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
}
