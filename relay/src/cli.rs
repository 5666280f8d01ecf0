//! The `blindrelay` command line. The definitions and the logic live here, in the library,
//! so `main.rs` stays a few lines and the parser can be unit tested without a process.
//!
//! Exit statuses are part of the interface: 0 success, 1 a runtime failure (a port in
//! use, no runtime), 2 a usage or configuration error the operator must fix.

use crate::config::{Config, ConfigError};
use crate::net::server::StartError;
use crate::token::TokenError;
use crate::{Relay, RelayOptions};
use blindrelay_protocol::token;
use clap::builder::{NonEmptyStringValueParser, PossibleValuesParser};
use clap::{Parser, Subcommand};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;
use zeroize::Zeroizing;

/// Longest token lifetime accepted. Far beyond any sensible use, but it keeps
/// `now + ttl` from overflowing when the expiry is computed.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How long the runtime may take to wind down after the relay stopped, so a stuck task
/// cannot keep the process alive after a SIGTERM.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);

/// An SFU for end-to-end encrypted calls. Without a subcommand it runs the relay until
/// SIGINT or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "blindrelay", version, about)]
pub struct Cli {
    /// Configuration file. Without it the embedded default (loopback only) is used.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `blindrelay=debug`.
    /// Logs go to stderr.
    #[arg(
        long,
        global = true,
        value_name = "LEVEL",
        env = "RUST_LOG",
        default_value = "info"
    )]
    pub log: String,

    /// Write every RTP packet the relay forwards, as it holds it after hop decryption, to
    /// this pcap file (sets `capture.path`), to audit that the relay is blind.
    #[arg(long, value_name = "FILE.pcap")]
    pub capture: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a token: EdDSA signed with --signing-key (an issuer's key, for a relay with
    /// auth.issuer_public_keys), or else HS256 signed with the config's auth.api_secret.
    Token {
        /// User id (the token's `sub`).
        #[arg(long, value_parser = NonEmptyStringValueParser::new())]
        user: String,
        /// The call the token admits to. Omit it for a token valid for any call.
        #[arg(long, value_parser = NonEmptyStringValueParser::new())]
        call: Option<String>,
        /// Tenant the user belongs to.
        #[arg(long, default_value = "default", value_parser = NonEmptyStringValueParser::new())]
        tenant: String,
        /// Role; bots are refused by end-to-end encrypted calls.
        #[arg(long, default_value = "user", value_parser = PossibleValuesParser::new(token::ROLES))]
        role: String,
        /// Lifetime, e.g. `1h`, `30m`; at most the config's auth.max_ttl (default 24h).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// Issuer's Ed25519 private key (PKCS#8 PEM, from `blindrelay keygen`): sign an
        /// EdDSA token the relay can verify but not mint.
        #[arg(long, value_name = "FILE")]
        signing_key: Option<PathBuf>,
        /// The token header's kid; default: the signing key's RFC 7638 thumbprint.
        #[arg(long, requires = "signing_key", value_parser = NonEmptyStringValueParser::new())]
        kid: Option<String>,
        /// A client's Ed25519 public key (SPKI PEM) to put in the `cnf` claim, binding the
        /// token to the key the client signs its MLS credential with.
        #[arg(long, value_name = "PUBFILE", requires = "signing_key")]
        cnf_key: Option<PathBuf>,
    },
    /// Write a new Ed25519 issuer key pair: PREFIX.key (PKCS#8 PEM, mode 0600; keep it
    /// off the relay) and PREFIX.pub (SPKI PEM, for auth.issuer_public_keys). Prints the
    /// key's kid (its RFC 7638 thumbprint).
    Keygen {
        /// Path prefix of the two files; neither may exist yet.
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Validate the configuration and exit: "config OK" (status 0) or the error (status 2).
    CheckConfig,
    /// E2EE policies on a running relay, through its admin API (like Teams' cmdlets).
    Policy {
        /// Admin API base URL; default: the config's admin.listen.
        #[arg(long, global = true)]
        admin: Option<String>,
        /// Admin bearer token; default: the config's admin.token.
        #[arg(long, global = true, env = "BLINDRELAY_ADMIN_TOKEN")]
        admin_token: Option<String>,
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// A cluster of relay nodes: its certificates, and what its directory lists.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Write a new cluster CA: DIR/ca.pem and DIR/ca.key (mode 0600; keep it off the
    /// nodes once their certificates are made). Never overwrites.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Write a node certificate signed by the CA in DIR: DIR/ID.pem and DIR/ID.key, for
    /// the node's cluster.cert and cluster.key. Never overwrites.
    Cert {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The node id (cluster.node_id): one DNS label, a-z, 0-9 and '-'.
        #[arg(long, value_name = "ID")]
        node: String,
    },
    /// Print the nodes, their links and the shared policy version from the directory.
    Status {
        /// The directory's URL; default: the config's cluster.redis_url.
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create or change a named policy (Set-CsTeamsEnhancedEncryptionPolicy).
    Set {
        #[arg(long)]
        identity: String,
        #[arg(long, value_parser = PossibleValuesParser::new(["Disabled", "DisabledUserOverride", "Required"]))]
        calling_e2ee: String,
    },
    /// Grant a policy to a user, `user` or `user@tenant` (Grant-CsTeamsEnhancedEncryptionPolicy).
    Grant {
        #[arg(long)]
        user: String,
        /// Policy name; omit to remove the user's grant.
        #[arg(long)]
        policy: Option<String>,
    },
    /// Show all policies, or one user's effective policy.
    Show {
        #[arg(long)]
        user: Option<String>,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Re-read the policy file now (as SIGHUP does).
    Reload,
}

/// Why the command failed. [`CliError::exit_code`] maps each to the process status.
#[derive(Debug, Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid log filter `{filter}` (from --log or RUST_LOG): {message}")]
    LogFilter { filter: String, message: String },
    #[error("cannot set up logging: {0}")]
    Logging(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{0}{hint}", hint = start_hint(.0))]
    Start(#[from] StartError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Pki(#[from] crate::cluster::pki::PkiError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("no directory to ask: pass --redis URL or a config with [cluster] redis_url")]
    NoDirectory,
    #[error("cannot install the {name} handler: {source}")]
    Signal {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
    #[error("admin API at {url}: {message}")]
    Admin { url: String, message: String },
    #[error("{path}: {source}")]
    Key {
        path: String,
        source: blindrelay_protocol::token::KeyError,
    },
    #[error("{path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} already exists; keygen never overwrites a key (choose another --out)")]
    KeyExists(String),
    #[error(
        "the config sets auth.issuer_public_keys, so the relay refuses HS256 tokens; \
         sign with the issuer's key: --signing-key FILE"
    )]
    IssuerOnly,
    #[error(
        "--ttl {} is longer than auth.max_ttl ({}): the relay would refuse the token; \
         use a shorter --ttl or raise auth.max_ttl in the config",
        humantime::format_duration(*.ttl),
        humantime::format_duration(*.max_ttl)
    )]
    TtlOverMax { ttl: Duration, max_ttl: Duration },
}

impl CliError {
    /// 2 for what the operator must fix in the command or the config, 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_)
            | CliError::LogFilter { .. }
            | CliError::TtlOverMax { .. }
            | CliError::Key { .. }
            | CliError::KeyFile { .. }
            | CliError::IssuerOnly
            | CliError::KeyExists(_)
            | CliError::Pki(_)
            | CliError::NoDirectory
            | CliError::Token(TokenError::BadRole(_)) => 2,
            _ => 1,
        }
    }
}

/// A hint for the two bind failures an operator hits most.
fn start_hint(e: &StartError) -> &'static str {
    match e {
        StartError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse => {
            " (another process is using that address; stop it or choose another port in the config)"
        }
        StartError::Bind { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            " (ports below 1024 need privileges; choose another port in the config)"
        }
        _ => "",
    }
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. \"1h\" or \"30m\""))?;
    if ttl < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    if ttl > MAX_TTL {
        return Err("must be at most 100 years".into());
    }
    Ok(ttl)
}

/// A token the relay would refuse for its lifetime is not issued.
fn check_ttl(ttl: Duration, max_ttl: Duration) -> Result<(), CliError> {
    if ttl > max_ttl {
        return Err(CliError::TtlOverMax { ttl, max_ttl });
    }
    Ok(())
}

fn cluster_command(command: ClusterCommand, config: &Config) -> Result<(), CliError> {
    use crate::cluster::{pki, status, unix_ms};
    match command {
        ClusterCommand::Init { dir } => {
            let (cert, key) = pki::init(&dir)?;
            print_stdout(&format!("{}\n{}\n", cert.display(), key.display()))
        }
        ClusterCommand::Cert { dir, node } => {
            let (cert, key) = pki::node_cert(&dir, &node)?;
            print_stdout(&format!("{}\n{}\n", cert.display(), key.display()))
        }
        ClusterCommand::Status { redis } => {
            let url = redis
                .or_else(|| config.cluster.as_ref().map(|c| c.redis_url.clone()))
                .ok_or(CliError::NoDirectory)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            let text = runtime.block_on(status(&url, unix_ms()))?;
            print_stdout(&text)
        }
    }
}

/// Install the stderr log subscriber. Separate from [`run`] so a caller embedding the
/// CLI (or a test) can keep its own subscriber.
pub fn init_tracing(filter: &str) -> Result<(), CliError> {
    let env_filter = EnvFilter::try_new(filter).map_err(|e| CliError::LogFilter {
        filter: filter.to_string(),
        message: e.to_string(),
    })?;
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| CliError::Logging(e.to_string()))
}

/// Run the parsed command to completion.
pub fn run(cli: Cli) -> Result<(), CliError> {
    // Loaded before anything else, so a bad config exits 2 without touching a port.
    let mut config = load_config(cli.config.as_deref())?;
    if let Some(path) = cli.capture {
        config.capture.path = Some(path);
        config.validate()?;
    }
    match cli.command {
        None => serve(config),
        Some(Command::CheckConfig) => print_stdout("config OK\n"),
        Some(Command::Cluster { command }) => cluster_command(command, &config),
        Some(Command::Policy {
            admin,
            admin_token,
            command,
        }) => {
            let base = admin.unwrap_or_else(|| format!("http://{}", config.admin.listen));
            let token = admin_token.unwrap_or_else(|| config.admin.token.clone());
            let (method, path, body) = match command {
                PolicyCommand::Set {
                    identity,
                    calling_e2ee,
                } => (
                    "PUT",
                    format!("/v1/policy/policies/{}", url_path(&identity)),
                    serde_json::json!({ "calling_e2ee": calling_e2ee }).to_string(),
                ),
                PolicyCommand::Grant { user, policy } => (
                    "PUT",
                    format!("/v1/policy/users/{}", url_path(&user)),
                    serde_json::json!({ "policy": policy }).to_string(),
                ),
                PolicyCommand::Show { user: None, .. } => {
                    ("GET", "/v1/policy".into(), String::new())
                }
                PolicyCommand::Show {
                    user: Some(u),
                    tenant,
                } => (
                    "GET",
                    format!(
                        "/v1/policy/effective?user={}&tenant={}",
                        url_path(&u),
                        url_path(&tenant)
                    ),
                    String::new(),
                ),
                PolicyCommand::Reload => ("POST", "/v1/policy/reload".into(), String::new()),
            };
            let reply = admin_request(&base, &token, method, &path, &body)?;
            print_stdout(&format!("{reply}\n"))
        }
        Some(Command::Keygen { out }) => {
            let kid = keygen(&out)?;
            print_stdout(&format!("{kid}\n"))
        }
        Some(Command::Token {
            user,
            call,
            tenant,
            role,
            ttl,
            signing_key,
            kid,
            cnf_key,
        }) => {
            check_ttl(ttl, config.auth.max_ttl)?;
            let jwt = match signing_key {
                Some(path) => {
                    let issuer = read_key_file(&path, token::read_ed25519_private)?;
                    let mut claims = token::Claims::new(
                        &user,
                        &tenant,
                        &role,
                        call.as_deref(),
                        token::now_secs(),
                        ttl,
                    );
                    if let Some(path) = cnf_key {
                        let public = read_key_file(&path, token::read_ed25519_public)?;
                        claims.cnf = Some(token::Cnf::ed25519(&public));
                    }
                    let kid = kid.unwrap_or_else(|| issuer.kid());
                    token::issue_eddsa(&issuer, &kid, &claims)?
                }
                None if !config.auth.relay_mints() => return Err(CliError::IssuerOnly),
                None => crate::token::issue(
                    &config.auth.api_secret,
                    &user,
                    &tenant,
                    &role,
                    call.as_deref(),
                    ttl,
                )?,
            };
            print_stdout(&format!("{jwt}\n"))
        }
    }
}

/// Read a PEM key file and parse it with `read`; errors name the file.
fn read_key_file<T>(
    path: &Path,
    read: impl FnOnce(&str) -> Result<T, token::KeyError>,
) -> Result<T, CliError> {
    // Zeroized: the file may hold a private key.
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| CliError::KeyFile {
                path: path.display().to_string(),
                source,
            })?,
        );
    read(&text).map_err(|source| CliError::Key {
        path: path.display().to_string(),
        source,
    })
}

/// `PREFIX` with `ext` appended (`issuer` -> `issuer.key`), keeping any dots in PREFIX.
fn with_suffix(prefix: &Path, ext: &str) -> PathBuf {
    let mut p = prefix.as_os_str().to_owned();
    p.push(ext);
    PathBuf::from(p)
}

/// `blindrelay keygen`: write PREFIX.key (0600, created, never overwritten) and
/// PREFIX.pub; return the kid.
fn keygen(prefix: &Path) -> Result<String, CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let (private, public) = token::generate_ed25519().map_err(|source| CliError::Key {
        path: prefix.display().to_string(),
        source,
    })?;
    let kid = token::read_ed25519_public(&public)
        .map(|k| token::kid_of(&k))
        .map_err(|source| CliError::Key {
            path: prefix.display().to_string(),
            source,
        })?;
    let write = |path: PathBuf, mode: u32, text: &str| {
        let fail = |source| CliError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(fail)?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(fail)
    };
    let key_path = with_suffix(prefix, ".key");
    let pub_path = with_suffix(prefix, ".pub");
    // Both names are checked first, so a clash leaves no half-written pair.
    for p in [&key_path, &pub_path] {
        if p.exists() {
            return Err(CliError::KeyExists(p.display().to_string()));
        }
    }
    write(key_path.clone(), 0o600, &private)?;
    write(pub_path.clone(), 0o644, &public)?;
    info!(
        private = %key_path.display(),
        public = %pub_path.display(),
        kid = %kid,
        "wrote an issuer key pair; keep the private key off the relay"
    );
    Ok(kid)
}

/// Percent-encode a path segment or query value.
fn url_path(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One HTTP/1.1 request to the admin API; returns the body, or the API's error.
fn admin_request(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<String, CliError> {
    use std::io::Read;
    let fail = |message: String| CliError::Admin {
        url: base.to_string(),
        message,
    };
    let host = base
        .strip_prefix("http://")
        .ok_or_else(|| fail("only http:// admin URLs are supported".into()))?
        .trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(host).map_err(|e| fail(e.to_string()))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(req.as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(fail(format!("HTTP {status}: {body}")))
    }
}

/// The given file, or the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Config::embedded(),
    }
}

fn print_stdout(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CliError::Stdout)
}

/// What `blindrelay` prints once every listener is bound: the real addresses, which
/// differ from the configured ones when a port is 0.
pub fn listening_banner(signal_url: &str, admin: SocketAddr, media: SocketAddr) -> String {
    format!(
        "blindrelay listening\n  signalling  {signal_url}\n  admin       http://{admin}  (/metrics /healthz /readyz)\n  media       udp {media}\n"
    )
}

/// Run the relay on a multi-thread runtime (one worker per core) until SIGINT or SIGTERM,
/// then shut it down cleanly so peers get a DTLS close_notify.
fn serve(config: Config) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let result = runtime.block_on(async {
        // Installed before binding, so a signal that arrives while starting is not lost.
        let mut sigterm = signal(SignalKind::terminate()).map_err(|source| CliError::Signal {
            name: "SIGTERM",
            source,
        })?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(|source| CliError::Signal {
            name: "SIGINT",
            source,
        })?;
        let node_id = config.cluster.as_ref().map(|c| c.node_id.clone());
        let relay = Relay::start(config, RelayOptions::default()).await?;
        let mut banner = listening_banner(&relay.signal_url(), relay.admin_addr, relay.media_addr);
        if let (Some(id), Some(q)) = (node_id, relay.quic_addr) {
            banner.push_str(&format!("  node        {id}, links on udp {q}\n"));
        }
        // The relay is already serving; a closed stdout must not take it down.
        if let Err(e) = print_stdout(&banner) {
            warn!(error = %e, "cannot print the listening addresses");
        }
        let mut sighup = signal(SignalKind::hangup()).map_err(|source| CliError::Signal {
            name: "SIGHUP",
            source,
        })?;
        let name = loop {
            tokio::select! {
                _ = sigterm.recv() => break "SIGTERM",
                _ = sigint.recv() => break "SIGINT",
                _ = sighup.recv() => {
                    // The policy in force stays on error; the error is logged.
                    let _ = relay.reload_policies().await;
                }
            }
        };
        info!(signal = name, "shutting down");
        relay.shutdown().await;
        Ok(())
    });
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_subcommand_runs_the_relay_on_the_embedded_config() {
        // Parsing literal arguments cannot fail; the test asserts exactly that.
        let cli = Cli::try_parse_from(["blindrelay"]).unwrap();
        assert!(cli.command.is_none());
        assert!(cli.config.is_none());
        assert!(cli.capture.is_none());
    }

    #[test]
    fn capture_flag_sets_the_capture_path() {
        // Literal, valid arguments: a parse failure is the bug under test.
        let cli = Cli::try_parse_from(["blindrelay", "--capture", "relay.pcap"]).unwrap();
        assert_eq!(cli.capture.as_deref(), Some(Path::new("relay.pcap")));
        assert!(cli.command.is_none());
        // An empty path is a usage error (status 2), caught before any port opens.
        let e = Cli::try_parse_from(["blindrelay", "--capture", ""]).err();
        assert!(e.as_ref().is_some_and(|e| e.exit_code() == 2), "{e:?}");
    }

    #[test]
    fn token_defaults_and_global_config() {
        // Literal, valid arguments: a parse failure is the bug under test.
        let cli = Cli::try_parse_from([
            "blindrelay",
            "token",
            "--user",
            "alice",
            "--config",
            "x.toml",
        ])
        .unwrap();
        assert_eq!(cli.config.as_deref(), Some(Path::new("x.toml")));
        match cli.command {
            Some(Command::Token {
                user,
                call,
                tenant,
                role,
                ttl,
                signing_key,
                kid,
                cnf_key,
            }) => {
                assert_eq!((signing_key, kid, cnf_key), (None, None, None));
                assert_eq!(user, "alice");
                assert_eq!(call, None);
                assert_eq!(tenant, "default");
                assert_eq!(role, "user");
                assert_eq!(ttl, Duration::from_secs(3600));
            }
            other => panic!("expected token, got {other:?}"),
        }
    }

    #[test]
    fn issuer_token_and_keygen_flags() {
        // Literal, valid arguments: a parse failure is the bug under test.
        let cli = Cli::try_parse_from([
            "blindrelay",
            "token",
            "--user",
            "a",
            "--signing-key",
            "i.key",
            "--kid",
            "2026",
            "--cnf-key",
            "c.pub",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Token {
                signing_key,
                kid,
                cnf_key,
                ..
            }) => {
                assert_eq!(signing_key.as_deref(), Some(Path::new("i.key")));
                assert_eq!(kid.as_deref(), Some("2026"));
                assert_eq!(cnf_key.as_deref(), Some(Path::new("c.pub")));
            }
            other => panic!("expected token, got {other:?}"),
        }
        let cli = Cli::try_parse_from(["blindrelay", "keygen", "--out", "issuer"]).unwrap();
        assert!(
            matches!(&cli.command, Some(Command::Keygen { out }) if out == Path::new("issuer")),
            "{:?}",
            cli.command
        );
        // --kid and --cnf-key only mean something with a signing key; keygen needs --out.
        for args in [
            &["blindrelay", "token", "--user", "a", "--kid", "k"][..],
            &["blindrelay", "token", "--user", "a", "--cnf-key", "c.pub"][..],
            &[
                "blindrelay",
                "token",
                "--user",
                "a",
                "--signing-key",
                "k",
                "--kid",
                "",
            ][..],
            &["blindrelay", "keygen"][..],
        ] {
            let e = Cli::try_parse_from(args).err();
            assert!(
                e.as_ref().is_some_and(|e| e.exit_code() == 2),
                "{args:?}: {e:?}"
            );
        }
    }

    #[test]
    fn key_file_suffixes_keep_the_prefix() {
        assert_eq!(
            with_suffix(Path::new("/tmp/issuer.2026"), ".key"),
            PathBuf::from("/tmp/issuer.2026.key")
        );
        assert_eq!(CliError::IssuerOnly.exit_code(), 2);
        assert!(CliError::IssuerOnly.to_string().contains("--signing-key"));
    }

    #[test]
    fn bad_role_and_ttl_are_usage_errors() {
        for args in [
            ["blindrelay", "token", "--user", "a", "--role", "admin"],
            ["blindrelay", "token", "--user", "a", "--ttl", "soon"],
            ["blindrelay", "token", "--user", "a", "--ttl", "0s"],
            ["blindrelay", "token", "--user", "", "--ttl", "1h"],
        ] {
            let e = Cli::try_parse_from(args).err();
            assert!(
                e.as_ref().is_some_and(|e| e.exit_code() == 2),
                "{args:?}: {e:?}"
            );
        }
    }

    #[test]
    fn ttl_over_max_ttl_is_refused_with_status_2() {
        let max = Config::embedded().unwrap().auth.max_ttl;
        assert!(check_ttl(max, max).is_ok());
        assert!(check_ttl(Duration::from_secs(3600), max).is_ok());
        let e = check_ttl(max + Duration::from_secs(1), max).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let msg = e.to_string();
        assert!(
            msg.contains("--ttl") && msg.contains("auth.max_ttl"),
            "{msg}"
        );
        assert!(msg.contains("1day"), "{msg}");
    }

    #[test]
    fn exit_codes() {
        let bad_config = CliError::Config(ConfigError::Parse("x".into()));
        assert_eq!(bad_config.exit_code(), 2);
        assert_eq!(
            CliError::Token(TokenError::BadRole("admin".into())).exit_code(),
            2
        );
        let in_use = CliError::Start(StartError::Bind {
            what: "signal",
            addr: SocketAddr::from(([127, 0, 0, 1], 7400)),
            source: std::io::ErrorKind::AddrInUse.into(),
        });
        assert_eq!(in_use.exit_code(), 1);
        let msg = in_use.to_string();
        assert!(
            msg.contains("127.0.0.1:7400") && msg.contains("another process"),
            "{msg}"
        );
    }

    #[test]
    fn banner_shows_the_given_addresses() {
        let b = listening_banner(
            "ws://127.0.0.1:40000/v1/signal",
            SocketAddr::from(([127, 0, 0, 1], 40001)),
            SocketAddr::from(([127, 0, 0, 1], 40002)),
        );
        assert_eq!(
            b,
            "blindrelay listening\n  signalling  ws://127.0.0.1:40000/v1/signal\n  admin       http://127.0.0.1:40001  (/metrics /healthz /readyz)\n  media       udp 127.0.0.1:40002\n"
        );
    }
}
