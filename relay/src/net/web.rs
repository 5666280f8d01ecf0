//! The web client, served on the signalling listener: static files compiled into the
//! binary (`web/` at the repository root; nothing is fetched from elsewhere), and a
//! development-only token route.
//!
//! `POST /dev/token {"user":U,"call":C}` issues a user token for a name, so that the demo
//! works without a terminal. It exists only while the relay runs on the built-in
//! development secret *and* every listener is on loopback *and* no issuer keys are
//! configured; otherwise it answers 403 with a typed error (`dev_tokens_disabled`, and a
//! `reason`) saying why.

use crate::config::{Config, DEV_API_SECRET};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;
use thiserror::Error;

/// Lifetime of a development token.
pub const DEV_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Longest user name or call id a development token is issued for.
pub const MAX_DEV_ID_BYTES: usize = 64;
/// Tenant of development tokens (the CLI's default tenant).
pub const DEV_TENANT: &str = "default";

/// Why the development token route is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DevTokenRefusal {
    #[error("development tokens are off: the relay accepts only tokens signed by the issuer's keys (auth.issuer_public_keys) and holds no key that could sign one")]
    IssuerKeys,
    #[error("development tokens are off: the relay uses its own API secret (tokens come from `blindrelay token` or your token service)")]
    RealSecret,
    #[error("development tokens are off: {key} is {addr}, not loopback")]
    OffLoopback { key: &'static str, addr: SocketAddr },
}

impl DevTokenRefusal {
    /// The stable error code the route answers with.
    pub fn code(&self) -> &'static str {
        "dev_tokens_disabled"
    }

    /// Which condition refused them, for the `reason` field.
    pub fn reason(&self) -> &'static str {
        match self {
            DevTokenRefusal::IssuerKeys => "issuer_keys",
            DevTokenRefusal::RealSecret => "real_secret",
            DevTokenRefusal::OffLoopback { .. } => "off_loopback",
        }
    }
}

/// Whether `config` allows development tokens: no issuer keys, the development secret,
/// and every listener on loopback.
pub fn dev_tokens_allowed(config: &Config) -> Result<(), DevTokenRefusal> {
    if !config.auth.relay_mints() {
        return Err(DevTokenRefusal::IssuerKeys);
    }
    if config.auth.api_secret != DEV_API_SECRET {
        return Err(DevTokenRefusal::RealSecret);
    }
    for (key, addr) in [
        ("signal.listen", config.signal.listen),
        ("admin.listen", config.admin.listen),
        ("media.listen", config.media.listen),
    ] {
        if !addr.ip().is_loopback() {
            return Err(DevTokenRefusal::OffLoopback { key, addr });
        }
    }
    Ok(())
}

/// What the web routes need.
#[derive(Clone)]
pub struct WebState {
    /// `Ok(secret)` when development tokens may be issued.
    pub dev_tokens: Result<String, DevTokenRefusal>,
    /// A cluster node's view of the live nodes (none for a lone relay).
    pub nodes: Option<crate::cluster::NodeView>,
}

impl WebState {
    pub fn new(config: &Config) -> WebState {
        WebState {
            dev_tokens: dev_tokens_allowed(config).map(|()| config.auth.api_secret.clone()),
            nodes: None,
        }
    }
}

/// One compiled-in file.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Every file of the web client, by URL path.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../../web/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web/app.js"),
    },
    Asset {
        path: "/kex.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web/kex.js"),
    },
    Asset {
        path: "/sframe.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web/sframe.js"),
    },
    Asset {
        path: "/worker.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web/worker.js"),
    },
    Asset {
        path: "/mls.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web/mls.js"),
    },
    Asset {
        path: "/group.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web/group.js"),
    },
    Asset {
        path: "/roster.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web/roster.js"),
    },
    // ts-mls bundled by web/build/build.sh (the committed output; a test rebuilds and
    // compares it).
    Asset {
        path: "/mls.bundle.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web/mls.bundle.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../../web/style.css"),
    },
];

/// Only this origin's scripts, styles and sockets; no inline script, nothing from elsewhere.
const CSP: &str = "default-src 'self'; script-src 'self'; worker-src 'self'; style-src 'self'; \
     img-src 'self' data:; media-src 'self' blob: mediastream:; connect-src 'self' ws: wss:; \
     object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Serve the compiled-in file at `path`, if there is one.
pub fn asset(path: &str) -> Option<Response> {
    let a = ASSETS.iter().find(|a| a.path == path)?;
    let mut r = (StatusCode::OK, a.body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Some(r)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevTokenRequest {
    pub user: String,
    pub call: String,
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

fn error(status: StatusCode, code: &'static str, message: String) -> Response {
    let body = ErrorBody {
        code,
        message,
        reason: None,
    };
    (status, Json(body)).into_response()
}

/// Whether the request says its body is JSON (`application/json`, parameters allowed).
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// One node a page may move to.
#[derive(Debug, Serialize)]
struct NodeEntry {
    node: String,
    signal_url: String,
}

/// `GET /v1/nodes`: the cluster's live nodes that take calls, for a page to move to when
/// its own node goes away (a lone relay lists none). Nothing secret: the addresses are
/// the ones clients are told anyway.
pub async fn nodes(State(st): State<WebState>) -> Response {
    let list: Vec<NodeEntry> = st
        .nodes
        .as_ref()
        .map(|v| {
            v.read()
                .unwrap_or_else(|p| p.into_inner())
                .nodes
                .iter()
                .filter(|n| !n.draining)
                .map(|n| NodeEntry {
                    node: n.node_id.clone(),
                    signal_url: n.signal_url.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    Json(serde_json::json!({ "nodes": list })).into_response()
}

/// `POST /dev/token`.
///
/// Only a JSON body is read: a cross-site HTML form or a "simple" `fetch` can send
/// `text/plain` or form data without a preflight, never `application/json` (415 otherwise).
pub async fn dev_token(
    State(st): State<WebState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !is_json(&headers) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the request as Content-Type: application/json".into(),
        );
    }
    let secret = match &st.dev_tokens {
        Ok(s) => s,
        Err(refusal) => {
            let body = ErrorBody {
                code: refusal.code(),
                message: refusal.to_string(),
                reason: Some(refusal.reason()),
            };
            return (StatusCode::FORBIDDEN, Json(body)).into_response();
        }
    };
    let req: DevTokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected {{\"user\":...,\"call\":...}}: {e}"),
            )
        }
    };
    let (user, call) = (req.user.trim(), req.call.trim());
    for (what, v) in [("user", user), ("call", call)] {
        if v.is_empty() || v.len() > MAX_DEV_ID_BYTES {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("{what} must be 1 to {MAX_DEV_ID_BYTES} bytes"),
            );
        }
    }
    match crate::token::issue(secret, user, DEV_TENANT, "user", Some(call), DEV_TOKEN_TTL) {
        Ok(token) => Json(serde_json::json!({ "token": token })).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_tokens_need_the_dev_secret_and_loopback() {
        let Ok(mut c) = Config::embedded() else {
            panic!("embedded config")
        };
        assert_eq!(dev_tokens_allowed(&c), Ok(()));
        c.signal.listen = "0.0.0.0:7400".parse().expect("literal");
        assert_eq!(
            dev_tokens_allowed(&c),
            Err(DevTokenRefusal::OffLoopback {
                key: "signal.listen",
                addr: c.signal.listen
            })
        );
        c.signal.listen = "127.0.0.1:7400".parse().expect("literal");
        c.media.listen = "192.0.2.1:7402".parse().expect("literal");
        assert!(matches!(
            dev_tokens_allowed(&c),
            Err(DevTokenRefusal::OffLoopback {
                key: "media.listen",
                ..
            })
        ));
        c.media.listen = "127.0.0.1:7402".parse().expect("literal");
        c.auth.api_secret = "a-real-secret-of-enough-length-0123456789".into();
        assert_eq!(dev_tokens_allowed(&c), Err(DevTokenRefusal::RealSecret));
        assert_eq!(DevTokenRefusal::RealSecret.code(), "dev_tokens_disabled");
        // Issuer keys turn them off whatever the secret: the relay must not mint.
        let Ok(mut c) = Config::embedded() else {
            panic!("embedded config")
        };
        let (_, public) =
            blindrelay_protocol::token::generate_ed25519().expect("the OS has randomness");
        c.auth.issuer_public_keys =
            vec![crate::config::IssuerKey::from_pem("k1", &public).expect("a fresh key")];
        assert_eq!(dev_tokens_allowed(&c), Err(DevTokenRefusal::IssuerKeys));
        assert_eq!(DevTokenRefusal::IssuerKeys.reason(), "issuer_keys");
        assert!(WebState::new(&c).dev_tokens.is_err());
    }

    #[test]
    fn every_asset_is_served_with_its_type_and_no_remote_origin() {
        for a in ASSETS {
            assert!(asset(a.path).is_some(), "{}", a.path);
            assert!(!a.body.is_empty(), "{}", a.path);
            // Nothing is fetched from outside: no absolute http(s) URLs to other hosts.
            for bad in ["https://", "http://cdn", "//cdn", "unpkg", "jsdelivr"] {
                assert!(!a.body.contains(bad), "{} mentions {bad}", a.path);
            }
        }
        assert!(asset("/nope.js").is_none());
    }
}
