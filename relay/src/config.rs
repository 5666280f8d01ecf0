//! Typed configuration. The embedded default (`config/relay.toml`) is what `blindrelay`
//! runs with no flags; a user file is parsed with the same types, so an unknown key or a
//! bad value is an error that names the key, not a silent default.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// The configuration compiled into the binary.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/relay.toml");

/// The development secret shipped in the default config; only usable on loopback.
pub const DEV_API_SECRET: &str = "blindrelay-dev-secret-loopback-only";

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    pub listen: SocketAddr,
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
        }
    }
}
impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7402)),
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
        Config::parse("[signal]\nlisten = \"0.0.0.0:7400\"\n[auth]\napi_secret = \"a-real-production-secret\"\n").unwrap();
    }
}
