//! Admin HTTP: Prometheus metrics, health probes, and the policy API (bearer token).
//!
//! The policy API mirrors Teams' cmdlets: `PUT /v1/policy/policies/{name}` is
//! Set-/New-CsTeamsEnhancedEncryptionPolicy, `PUT /v1/policy/users/{user}` is
//! Grant-CsTeamsEnhancedEncryptionPolicy, `GET /v1/policy[/effective?user=&tenant=]` is
//! Get-. Changes are persisted atomically and apply to the very next join.

use super::policy_store::PolicyStore;
use crate::core::policy::CallingE2ee;
use crate::metrics::Metrics;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tracing::{error, info};

/// What the admin listener serves from.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub policies: Arc<PolicyStore>,
    /// `admin.token`, compared in constant time.
    pub token: String,
    pub shutting_down: Arc<AtomicBool>,
    /// A cluster node's shared store: changes go through the directory to every node.
    pub shared: Option<crate::cluster::SharedPolicy>,
}

impl AdminState {
    /// Change policy: on a cluster node through the directory, else in this relay's store.
    async fn change(
        &self,
        change: impl Fn(
            &mut crate::core::policy::PolicySet,
        ) -> Result<(), crate::core::policy::PolicyError>,
    ) -> Result<(), super::policy_store::StoreError> {
        match &self.shared {
            Some(sh) => sh.update(change).await,
            None => self.policies.update(change),
        }
    }
}

pub async fn serve(listener: tokio::net::TcpListener, shared: AdminState) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/v1/policy", get(show))
        .route("/v1/policy/effective", get(effective))
        .route("/v1/policy/policies/{name}", put(set_policy))
        .route("/v1/policy/users/{user}", put(grant))
        .route("/v1/policy/reload", post(reload))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        error!(error = %e, "admin listener stopped");
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    if s.shutting_down.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

fn fail(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({"code": code, "message": message})),
    )
        .into_response()
}

/// Check `Authorization: Bearer <admin.token>` in constant time.
fn authorize(s: &AdminState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let want = s.token.as_bytes();
    if given.len() == want.len() && bool::from(given.as_bytes().ct_eq(want)) {
        Ok(())
    } else {
        s.metrics
            .signalling_error("admin_unauthorized")
            .increment(1);
        Err(Box::new(fail(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong admin bearer token".into(),
        )))
    }
}

async fn show(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    Json(serde_json::to_value(&*s.policies.snapshot()).unwrap_or_default()).into_response()
}

#[derive(Deserialize)]
struct WhoQuery {
    user: String,
    #[serde(default = "default_tenant")]
    tenant: String,
}

fn default_tenant() -> String {
    "default".into()
}

async fn effective(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<WhoQuery>,
) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    Json(s.policies.effective(&q.user, &q.tenant)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    calling_e2ee: String,
}

async fn set_policy(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: String,
) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    let value: Result<CallingE2ee, String> = serde_json::from_str::<SetBody>(&body)
        .map_err(|e| format!("body must be {{\"calling_e2ee\": ...}}: {e}"))
        .and_then(|b| {
            b.calling_e2ee
                .parse()
                .map_err(|e: crate::core::policy::PolicyError| e.to_string())
        });
    let value = match value {
        Ok(v) => v,
        Err(m) => return fail(StatusCode::BAD_REQUEST, "bad_request", m),
    };
    match s.change(|set| set.set_policy(&name, value)).await {
        Ok(()) => {
            info!(policy = %name, calling_e2ee = value.as_str(), "policy set");
            Json(serde_json::json!({"identity": name, "calling_e2ee": value})).into_response()
        }
        Err(e) => change_failed(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    policy: Option<String>,
}

async fn grant(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(user): Path<String>,
    body: String,
) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    let policy = match serde_json::from_str::<GrantBody>(&body) {
        Ok(b) => b.policy,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("body must be {{\"policy\": NAME or null}}: {e}"),
            )
        }
    };
    match s.change(|set| set.grant(&user, policy.as_deref())).await {
        Ok(()) => Json(serde_json::json!({"user": user, "policy": policy})).into_response(),
        Err(e) => change_failed(e),
    }
}

/// A refused change is the caller's to fix (400); a directory that cannot be reached is
/// not (503, try again).
fn change_failed(e: super::policy_store::StoreError) -> Response {
    match e {
        super::policy_store::StoreError::Shared(m) => {
            fail(StatusCode::SERVICE_UNAVAILABLE, "directory_unavailable", m)
        }
        e => fail(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    }
}

async fn reload(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    let reloaded = match s.policies.reload(true) {
        Ok(changed) => match &s.shared {
            Some(sh) => sh.push_local().await.map(|()| changed),
            None => Ok(changed),
        },
        Err(e) => Err(e),
    };
    match reloaded {
        Ok(changed) => Json(serde_json::json!({"reloaded": changed})).into_response(),
        Err(e) => fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_policy_file",
            e.to_string(),
        ),
    }
}
