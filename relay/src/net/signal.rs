//! The signalling listener: TCP accept with connection caps, HTTP with a header-read
//! timeout, the WebSocket upgrade at `/v1/signal`, and one task per connection that
//! carries frames to the control plane and writes what it queues for the client.
//!
//! Nothing here decides anything about calls: frames go to the control plane's driver as
//! events, and messages come back through the connection's [`OutQueue`], which is bounded
//! in bytes so that a client that stops reading cannot hold the relay's memory.

use super::events::{Event, EventTx};
use super::outq::{Ended, Next, OutQueue};
use crate::core::plane::ConnId;
use crate::metrics::Metrics;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use blindrelay_protocol::signal::MAX_MESSAGE_BYTES;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tower_service::Service;
use tracing::debug;

/// Per-connection WebSocket read and write buffer.
const WS_BUFFER: usize = 4096;

/// The limits the listener enforces itself.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub header_read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_outbound_bytes: usize,
    /// Origins besides the relay's own allowed to open the WebSocket (`signal.allowed_origins`).
    pub allowed_origins: Arc<[String]>,
    /// A cluster node's live nodes: their pages may open signalling here too (a page moves
    /// to another node when its own goes away).
    pub nodes: Option<crate::cluster::NodeView>,
    /// Set when the relay stops: a draining node refuses new signalling at once (HTTP 503)
    /// rather than accept a client whose join it can no longer serve.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// Open connections, in total and by source address. The map holds only sources with an
/// open connection, so it is bounded by `max_connections`.
#[derive(Default)]
struct ConnCounts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One accepted connection's place under the caps, released when the last holder (the
/// HTTP connection, then the WebSocket task) drops it.
pub struct ConnSlot {
    id: ConnId,
    source: IpAddr,
    counts: Arc<Mutex<ConnCounts>>,
    metrics: Arc<Metrics>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
        self.metrics.signalling_connections().decrement(1.0);
    }
}

/// Bytes of signalling frames read but not yet handled by the control plane, over all
/// connections. A client that sends faster than the plane handles waits (its TCP window
/// closes) instead of queueing memory: 4 MiB is 64 maximum-size messages.
pub const INBOUND_BYTES: usize = 4 << 20;

#[derive(Clone)]
struct SignalState {
    events: EventTx,
    inbound: Arc<Semaphore>,
    limits: ListenerLimits,
    metrics: Arc<Metrics>,
}

/// Accept signalling connections until the listener fails. The same listener serves the
/// web client (`/` and its files) and, in development, `POST /dev/token` (see [`super::web`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    events: EventTx,
    limits: ListenerLimits,
    metrics: Arc<Metrics>,
    web: super::web::WebState,
) {
    let state = SignalState {
        events,
        inbound: Arc::new(Semaphore::new(INBOUND_BYTES)),
        limits: limits.clone(),
        metrics: metrics.clone(),
    };
    let app = Router::new()
        .route("/v1/signal", get(upgrade))
        .with_state(state)
        .merge(
            Router::new()
                .route("/dev/token", post(super::web::dev_token))
                .route("/v1/nodes", get(super::web::nodes))
                .with_state(web),
        )
        .fallback(static_file);
    let counts = Arc::new(Mutex::new(ConnCounts::default()));
    let next_id = AtomicU64::new(1);
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Per-connection errors (reset before accept, fd limits) leave the
                // listener usable; fatal ones would repeat, and are logged each time.
                debug!(error = %e, "signalling accept failed");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let Some(slot) = admit(&counts, &limits, &metrics, from, &next_id) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = Arc::new(slot);
        let app = app.clone();
        let header_timeout = limits.header_read_timeout;
        let m = metrics.clone();
        tokio::spawn(async move {
            let held = slot.clone();
            let svc = hyper::service::service_fn(move |mut req| {
                req.extensions_mut().insert(slot.clone());
                app.clone().call(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            // The HTTP part of a signalling connection is one upgrade request: whatever
            // has not become a WebSocket by then (slowloris, a silent TCP connection, a
            // client idling on keep-alive) is closed.
            if tokio::time::timeout(header_timeout, conn).await.is_err() {
                m.signalling_closed("header_timeout").increment(1);
            }
            drop(held);
        });
    }
}

/// The web client's files (GET and HEAD); 404 for anything else.
async fn static_file(method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response();
    }
    let path = match uri.path() {
        "/index.html" => "/",
        p => p,
    };
    super::web::asset(path).unwrap_or_else(|| (StatusCode::NOT_FOUND, "not found").into_response())
}

fn admit(
    counts: &Arc<Mutex<ConnCounts>>,
    limits: &ListenerLimits,
    metrics: &Arc<Metrics>,
    from: SocketAddr,
    next_id: &AtomicU64,
) -> Option<ConnSlot> {
    let source = from.ip();
    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
    if c.total >= limits.max_connections {
        metrics
            .signalling_refused("too_many_connections")
            .increment(1);
        return None;
    }
    let n = c.by_source.get(&source).copied().unwrap_or(0);
    if n >= limits.max_connections_per_source {
        metrics
            .signalling_refused("too_many_from_source")
            .increment(1);
        return None;
    }
    c.total += 1;
    c.by_source.insert(source, n + 1);
    metrics.signalling_connections().increment(1.0);
    Some(ConnSlot {
        id: next_id.fetch_add(1, Ordering::Relaxed),
        source,
        counts: counts.clone(),
        metrics: metrics.clone(),
    })
}

/// Whether a WebSocket upgrade with these headers may proceed. Without `Origin` (native
/// clients send none) it may; with one, only from the relay's own origin (the `Host` the
/// request was sent to, over http or https) or a configured one. A browser always sends
/// `Origin` and a page cannot forge it, so another site's page cannot open signalling in
/// its visitor's name.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let (authority, default_port) = if let Some(a) = origin.strip_prefix("https://") {
        (a, ":443")
    } else if let Some(a) = origin.strip_prefix("http://") {
        (a, ":80")
    } else {
        return false;
    };
    // `Host` and `Origin` may differ only by the scheme's default port being spelled out.
    let bare = |s: &str| -> String {
        let s = s.to_ascii_lowercase();
        s.strip_suffix(default_port)
            .map(str::to_string)
            .unwrap_or(s)
    };
    !authority.is_empty() && bare(authority) == bare(host)
}

async fn upgrade(
    ws: WebSocketUpgrade,
    State(st): State<SignalState>,
    headers: HeaderMap,
    slot: Option<Extension<Arc<ConnSlot>>>,
) -> Response {
    let Some(Extension(slot)) = slot else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no connection slot").into_response();
    };
    if st
        .limits
        .draining
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        st.metrics.signalling_refused("shutting_down").increment(1);
        return (StatusCode::SERVICE_UNAVAILABLE, "relay is shutting down").into_response();
    }
    let allowed: std::borrow::Cow<'_, [String]> = match &st.limits.nodes {
        Some(v) => {
            let mut all = st.limits.allowed_origins.to_vec();
            all.extend(
                v.read()
                    .unwrap_or_else(|p| p.into_inner())
                    .origins
                    .iter()
                    .cloned(),
            );
            all.into()
        }
        None => (&*st.limits.allowed_origins).into(),
    };
    if !origin_allowed(&headers, &allowed) {
        st.metrics.signalling_refused("foreign_origin").increment(1);
        debug!("signalling upgrade from a foreign origin refused");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    // Accept frames somewhat over the limit so an over-size message gets a typed error
    // instead of a dropped connection.
    //
    // tungstenite zero-fills its whole read buffer (128 KiB by default) on the first read,
    // which made it most of an idle participant's memory; signalling messages are a few
    // KiB, and a larger one still arrives, over several reads.
    ws.max_message_size(MAX_MESSAGE_BYTES * 4)
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER)
        .on_upgrade(move |socket| connection(socket, st, slot))
}

/// Write one message, within the write timeout. A write blocks while the client does not
/// read; if the queue behind it overflows meanwhile, the client is cut off at once.
async fn write(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    queue: &OutQueue,
    text: String,
    timeout: Duration,
) -> Result<(), Ended> {
    let send = sink.send(Message::Text(text.into()));
    tokio::pin!(send);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = &mut send => return r.map_err(|_| Ended::Client),
            _ = &mut deadline => return Err(Ended::WriteTimeout),
            _ = queue.ready.notified() => {
                if queue.overflowed() {
                    return Err(Ended::SlowReader);
                }
            }
        }
    }
}

async fn connection(socket: WebSocket, st: SignalState, slot: Arc<ConnSlot>) {
    let conn = slot.id;
    let queue = Arc::new(OutQueue::new(st.limits.max_outbound_bytes));
    if st
        .events
        .send(Event::Connected {
            conn,
            queue: queue.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    let (mut sink, mut stream) = socket.split();
    let write_timeout = st.limits.write_timeout;
    let ended = 'conn: loop {
        tokio::select! {
            biased;
            _ = queue.ready.notified() => loop {
                match queue.next() {
                    Next::Msg(text) => {
                        if let Err(e) = write(&mut sink, &queue, text, write_timeout).await {
                            break 'conn e;
                        }
                    }
                    Next::Close(r) => break 'conn r,
                    Next::Empty => break,
                }
            },
            frame = stream.next() => {
                let ev = match frame {
                    None | Some(Ok(Message::Close(_))) => break Ended::Client,
                    Some(Err(e)) => {
                        debug!(error = %e, "signalling read failed");
                        break Ended::ReadError;
                    }
                    Some(Ok(Message::Text(t))) => {
                        // Frames waiting for the control plane are bounded in bytes,
                        // whoever sends them: this waits while the budget is spent.
                        let n = u32::try_from(t.len()).unwrap_or(u32::MAX).min(INBOUND_BYTES as u32).max(1);
                        let Ok(permit) = st.inbound.clone().acquire_many_owned(n).await else {
                            break Ended::Relay("shutdown");
                        };
                        Event::Text { conn, text: t.as_str().to_owned(), permit }
                    }
                    Some(Ok(Message::Binary(_))) => Event::Binary { conn },
                    Some(Ok(_)) => continue,
                };
                if st.events.send(ev).await.is_err() {
                    break Ended::Relay("shutdown");
                }
            }
        }
    };
    st.metrics.signalling_closed(ended.as_str()).increment(1);
    if ended != Ended::Client && ended != Ended::ReadError {
        let frame = CloseFrame {
            code: match ended {
                Ended::SlowReader | Ended::WriteTimeout => 1008,
                _ => 1000,
            },
            reason: ended.as_str().into(),
        };
        let _ = tokio::time::timeout(write_timeout, sink.send(Message::Close(Some(frame)))).await;
    }
    let _ = st.events.send(Event::Disconnected { conn }).await;
    drop(slot);
    if tokio::time::timeout(write_timeout, sink.close())
        .await
        .is_err()
    {
        debug!("signalling close timed out");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = host {
            h.insert(header::HOST, v.parse().expect("header value"));
        }
        if let Some(v) = origin {
            h.insert(header::ORIGIN, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn origin_is_the_relays_own_or_listed_or_absent() {
        let listed = ["https://app.example.com".to_string()];
        let ok = |host, origin| origin_allowed(&headers(host, origin), &listed);
        // Native clients send no Origin.
        assert!(ok(Some("relay.example.com"), None));
        assert!(ok(None, None));
        // The relay's own origin, over either scheme, default port spelled out or not.
        assert!(ok(Some("127.0.0.1:7400"), Some("http://127.0.0.1:7400")));
        assert!(ok(
            Some("Relay.Example.com"),
            Some("https://relay.example.com")
        ));
        assert!(ok(
            Some("relay.example.com:443"),
            Some("https://relay.example.com")
        ));
        assert!(ok(
            Some("relay.example.com"),
            Some("http://relay.example.com:80")
        ));
        // Listed.
        assert!(ok(
            Some("relay.example.com"),
            Some("https://app.example.com")
        ));
        // Foreign: another host, another port, another scheme's default port, opaque
        // origins, no Host to compare with.
        assert!(!ok(Some("127.0.0.1:7400"), Some("http://evil.example")));
        assert!(!ok(Some("127.0.0.1:7400"), Some("http://127.0.0.1:7401")));
        assert!(!ok(
            Some("relay.example.com:443"),
            Some("http://relay.example.com")
        ));
        assert!(!ok(Some("relay.example.com"), Some("null")));
        assert!(!ok(
            Some("relay.example.com"),
            Some("ws://relay.example.com")
        ));
        assert!(!ok(None, Some("http://relay.example.com")));
        assert!(!ok(
            Some("app.example.com"),
            Some("http://app.example.com.evil")
        ));
    }
}
