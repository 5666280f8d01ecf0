//! Signalling over WebSocket (`/v1/signal`): hello -> capabilities, join -> joined, opaque
//! E2EE blobs between participants, chat, leave. Every bad message gets a typed `error`
//! and the connection stays up.

use super::server::{IceEntry, Session, Shared};
use crate::core::calls::JoinRequest;
use crate::core::PeerId;
use crate::token::{self, Claims};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use blindrelay_protocol::sdp::{self, AnswerParams};
use blindrelay_protocol::signal::{
    parse_client_message, CallMode, ClientMessage, E2eeOption, ErrorCode, ServerMessage,
    MAX_MESSAGE_BYTES,
};
use futures_util::{SinkExt, StreamExt};
use rand::distr::{Alphanumeric, SampleString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use tracing::{debug, error, info};

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/v1/signal", get(upgrade))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        error!(error = %e, "signalling listener stopped");
    }
}

/// Per-connection WebSocket read buffer.
const WS_READ_BUFFER: usize = 4096;

async fn upgrade(ws: WebSocketUpgrade, State(shared): State<Arc<Shared>>) -> Response {
    // Accept frames somewhat over the limit so an over-size message gets a typed error
    // instead of a dropped connection.
    //
    // tungstenite zero-fills its whole read buffer (128 KiB by default) on the first read,
    // which made it most of an idle participant's memory; signalling messages are a few
    // KiB, and a larger one still arrives, over several reads.
    ws.max_message_size(MAX_MESSAGE_BYTES * 4)
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| connection(socket, shared))
}

struct Conn {
    shared: Arc<Shared>,
    claims: Option<Claims>,
    peer: Option<PeerId>,
    public_id: String,
    out_tx: Option<mpsc::UnboundedSender<ServerMessage>>,
    /// Invitations while authenticated and not in a call.
    lobby_tx: mpsc::UnboundedSender<ServerMessage>,
    lobby_conn: Option<u64>,
}

impl Conn {
    fn leave_lobby(&mut self) {
        if let Some(c) = self.lobby_conn.take() {
            self.shared.control.leave_lobby(c);
        }
    }
}

fn role_label(role: &str) -> &'static str {
    token::ROLES
        .into_iter()
        .find(|r| *r == role)
        .unwrap_or("user")
}

async fn connection(socket: WebSocket, shared: Arc<Shared>) {
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ServerMessage>();
    let (lobby_tx, mut lobby_rx) = mpsc::unbounded_channel::<ServerMessage>();
    let mut c = Conn {
        shared: shared.clone(),
        claims: None,
        peer: None,
        public_id: String::new(),
        out_tx: Some(out_tx),
        lobby_tx,
        lobby_conn: None,
    };
    loop {
        tokio::select! {
            msg = stream.next() => {
                let text = match msg {
                    None | Some(Err(_)) => break,
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Binary(_))) => {
                        let e = c.error(ErrorCode::BadRequest, "signalling messages are JSON text frames".into());
                        if send(&mut sink, &e).await.is_err() { break; }
                        continue;
                    }
                    Some(Ok(_)) => continue,
                };
                let replies = c.handle(text.as_str());
                for r in replies {
                    if send(&mut sink, &r).await.is_err() { break; }
                }
            }
            Some(m) = lobby_rx.recv() => {
                if send(&mut sink, &m).await.is_err() { break; }
            }
            m = out_rx.recv(), if c.peer.is_some() => {
                match m {
                    Some(m) => if send(&mut sink, &m).await.is_err() { break; },
                    // The session was removed (consent timeout, DTLS closed, shutdown).
                    None => break,
                }
            }
        }
    }
    c.leave_lobby();
    if let Some(p) = c.peer {
        shared.remove_peer(p, "signalling_lost");
    }
    let _ = sink.close().await;
}

async fn send(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    m: &ServerMessage,
) -> Result<(), axum::Error> {
    // Our own enums always serialize.
    let text =
        serde_json::to_string(m).unwrap_or_else(|_| unreachable!("ServerMessage serializes"));
    sink.send(Message::Text(text.into())).await
}

impl Conn {
    fn error(&self, code: ErrorCode, message: String) -> ServerMessage {
        self.shared
            .metrics
            .signalling_error(code.as_str())
            .increment(1);
        ServerMessage::Error { code, message }
    }

    fn handle(&mut self, text: &str) -> Vec<ServerMessage> {
        let msg = match parse_client_message(text) {
            Ok(m) => m,
            Err((code, message)) => return vec![self.error(code, message)],
        };
        match msg {
            ClientMessage::Hello { token } => self.hello(&token),
            ClientMessage::Join {
                call,
                e2ee_enabled,
                offer_sdp,
            } => self.join(call, e2ee_enabled, &offer_sdp),
            ClientMessage::E2ee { to, blob } => {
                self.relay_to(&to, |from| ServerMessage::E2ee { from, blob })
            }
            ClientMessage::Chat { body } => self.chat(body),
            ClientMessage::Feature { name, arg } => self.feature(&name, arg.as_deref()),
            ClientMessage::Leave => match self.peer.take() {
                Some(p) => {
                    self.shared.remove_peer(p, "left");
                    vec![]
                }
                None => vec![self.error(ErrorCode::NotJoined, "not in a call".into())],
            },
        }
    }

    fn hello(&mut self, token: &str) -> Vec<ServerMessage> {
        if self.peer.is_some() {
            return vec![self.error(ErrorCode::AlreadyJoined, "hello after join".into())];
        }
        let cfg = &self.shared.config.auth;
        match token::verify(&cfg.api_secret, token, cfg.leeway) {
            Ok(claims) => {
                // The relay enforces the same option at join.
                let e2ee_option = if claims.is_bot() {
                    E2eeOption::Hidden
                } else {
                    self.shared
                        .policies
                        .effective(&claims.sub, &claims.tenant)
                        .calling_e2ee
                        .option()
                };
                let reply = ServerMessage::Capabilities {
                    user: claims.sub.clone(),
                    tenant: claims.tenant.clone(),
                    role: claims.role.clone(),
                    e2ee_option,
                };
                self.leave_lobby();
                self.lobby_conn = Some(self.shared.control.enter_lobby(
                    &claims.sub,
                    &claims.tenant,
                    &claims.role,
                    self.lobby_tx.clone(),
                ));
                self.claims = Some(claims);
                vec![reply]
            }
            Err(e) => {
                self.claims = None;
                let code = e.code();
                vec![self.error(code, e.to_string())]
            }
        }
    }

    fn join(&mut self, call: String, e2ee_enabled: bool, offer_sdp: &str) -> Vec<ServerMessage> {
        let started = Instant::now();
        let m = self.shared.metrics.clone();
        let refuse = |this: &Self, code: ErrorCode, msg: String| {
            m.join(code.as_str()).increment(1);
            vec![this.error(code, msg)]
        };
        if self.shared.shutting_down.load(Ordering::Relaxed) {
            return refuse(
                self,
                ErrorCode::ShuttingDown,
                "relay is shutting down".into(),
            );
        }
        let Some(claims) = self.claims.clone() else {
            return refuse(
                self,
                ErrorCode::NotAuthenticated,
                "send hello with a token first".into(),
            );
        };
        if self.peer.is_some() {
            return refuse(self, ErrorCode::AlreadyJoined, "already in a call".into());
        }
        // Expiry is re-checked at join: a token may have expired since hello.
        let cfg = &self.shared.config.auth;
        if let Err(e) = self.hello_still_valid(&cfg.api_secret, cfg.leeway) {
            return refuse(self, e.code(), e.to_string());
        }
        // An invitation (add_participant, transfer, retrieve, a bot brought in) admits to
        // its call whatever call the token names.
        let invite = self.shared.control.take_invite(
            &super::control::user_key(&claims.sub, &claims.tenant),
            &call,
        );
        if let Some(allowed) = claims.call.as_ref().filter(|_| invite.is_none()) {
            if *allowed != call {
                return refuse(
                    self,
                    ErrorCode::WrongCall,
                    format!("token admits to call `{allowed}` only"),
                );
            }
        }
        if call.is_empty() || call.len() > 256 {
            return refuse(
                self,
                ErrorCode::BadRequest,
                "call id must be 1 to 256 bytes".into(),
            );
        }
        let offer = match sdp::parse_offer(offer_sdp) {
            Ok(o) => o,
            Err(e) => return refuse(self, ErrorCode::BadSdp, e.to_string()),
        };
        // Read at every join: a policy change applies to the very next join.
        let policy = if claims.is_bot() {
            crate::core::policy::CallingE2ee::Disabled
        } else {
            self.shared
                .policies
                .effective(&claims.sub, &claims.tenant)
                .calling_e2ee
        };
        let peer = self.shared.next_peer.fetch_add(1, Ordering::Relaxed);
        let mut rng = rand::rng();
        let public_id = format!("p-{}", Alphanumeric.sample_string(&mut rng, 12));
        let joined = {
            let mut reg = self
                .shared
                .registry
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            reg.join(JoinRequest {
                peer,
                public_id: public_id.clone(),
                user: claims.sub.clone(),
                tenant: claims.tenant.clone(),
                role: claims.role.clone(),
                call: call.clone(),
                e2ee_enabled,
                policy,
            })
        };
        let joined = match joined {
            Ok(j) => j,
            Err((code, msg)) => {
                if code == ErrorCode::E2eeCallRefusesBots {
                    m.bot_refused(role_label(&claims.role)).increment(1);
                }
                return refuse(self, code, msg);
            }
        };
        if let Some(c) = &self.shared.capture {
            c.on_join(&call, joined.call_key);
        }
        let local_ufrag = Alphanumeric.sample_string(&mut rng, 16);
        let local_pwd = Alphanumeric.sample_string(&mut rng, 32);
        let activity = Arc::new(AtomicU64::new(self.shared.now_ms()));
        let ssrcs: Vec<u32> = offer
            .media
            .iter()
            .flat_map(|s| s.ssrcs.iter().copied())
            .collect();
        let answer_sdp = sdp::build_answer(
            &offer,
            &AnswerParams {
                ice_ufrag: &local_ufrag,
                ice_pwd: &local_pwd,
                fingerprint: self.shared.identity.fingerprint(),
                media_addr: self.shared.media_addr,
                session_id: peer,
            },
        );
        let role = role_label(&claims.role);
        let Some(out_tx) = self.out_tx.take() else {
            return refuse(
                self,
                ErrorCode::Internal,
                "connection already used for a call".into(),
            );
        };
        self.shared.ice.insert(
            local_ufrag.clone(),
            Arc::new(IceEntry {
                peer,
                call_key: joined.call_key,
                worker: joined.worker,
                local_pwd,
                remote_ufrag: offer.ice_ufrag.clone(),
                fingerprint: offer.fingerprint.clone(),
                ssrcs,
                activity: activity.clone(),
                joined_at: started,
            }),
        );
        self.shared.sessions.insert(
            peer,
            Session {
                to_client: out_tx,
                role,
                worker: joined.worker,
                local_ufrag,
                activity,
                joined_at: started,
                connected: Arc::new(AtomicBool::new(false)),
                dtls: Mutex::new(None),
            },
        );
        self.peer = Some(peer);
        self.leave_lobby();
        if let Some(Some(replaced)) = invite {
            // A consultative transfer completes: the one who handed over leaves.
            let shared = self.shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                shared.remove_peer(replaced, "transferred");
            });
        }
        self.public_id = public_id.clone();
        m.join("ok").increment(1);
        m.participants(role).increment(1.0);
        if joined.others.is_empty() {
            m.calls(joined.mode.as_str()).increment(1.0);
        }
        let me = blindrelay_protocol::signal::ParticipantInfo {
            participant: public_id.clone(),
            user: claims.sub.clone(),
            tenant: claims.tenant.clone(),
            role: claims.role.clone(),
        };
        if !joined.downgraded.is_empty() {
            m.calls("e2ee").decrement(1.0);
            m.calls("standard").increment(1.0);
        }
        for p in &joined.downgraded {
            if let Some(s) = self.shared.sessions.get(p) {
                let _ = s.to_client.send(ServerMessage::CallModeChanged {
                    call_mode: joined.mode,
                    reason: joined.mode_reason.clone().unwrap_or_default(),
                });
            }
        }
        for (other, _) in &joined.others {
            if let Some(s) = self.shared.sessions.get(other) {
                let _ = s.to_client.send(ServerMessage::ParticipantJoined {
                    participant: me.clone(),
                });
            }
        }
        info!(mode = joined.mode.as_str(), role, "participant joined");
        vec![ServerMessage::Joined {
            participant: public_id,
            call_mode: joined.mode,
            mode_reason: joined.mode_reason,
            answer_sdp,
            participants: joined.others.into_iter().map(|(_, i)| i).collect(),
        }]
    }

    fn hello_still_valid(
        &self,
        secret: &str,
        leeway: std::time::Duration,
    ) -> Result<(), token::TokenError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let _ = secret;
        match &self.claims {
            Some(c) if c.exp + leeway.as_secs() < now => Err(token::TokenError::Expired),
            _ => Ok(()),
        }
    }

    /// Relay a message to one participant of the caller's call.
    fn relay_to(
        &mut self,
        to: &str,
        make: impl FnOnce(String) -> ServerMessage,
    ) -> Vec<ServerMessage> {
        let Some(peer) = self.peer else {
            return vec![self.error(ErrorCode::NotJoined, "join a call first".into())];
        };
        let target = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .find_in_call(peer, to);
        match target.and_then(|t| self.shared.sessions.get(&t)) {
            Some(s) => {
                let _ = s.to_client.send(make(self.public_id.clone()));
                vec![]
            }
            None => vec![self.error(
                ErrorCode::UnknownParticipant,
                format!("no participant `{to}` in this call"),
            )],
        }
    }

    fn chat(&mut self, body: String) -> Vec<ServerMessage> {
        let Some(peer) = self.peer else {
            return vec![self.error(ErrorCode::NotJoined, "join a call first".into())];
        };
        let others: Vec<PeerId> = {
            let reg = self
                .shared
                .registry
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            reg.peers_of(peer)
                .map(|(_, v)| v.into_iter().map(|(p, _)| p).collect())
                .unwrap_or_default()
        };
        for o in others {
            if let Some(s) = self.shared.sessions.get(&o) {
                let _ = s.to_client.send(ServerMessage::Chat {
                    from: self.public_id.clone(),
                    body: body.clone(),
                });
            }
        }
        vec![]
    }

    fn feature(&mut self, name: &str, arg: Option<&str>) -> Vec<ServerMessage> {
        if !super::control::FEATURES.contains(&name) {
            return vec![self.error(
                ErrorCode::UnknownFeature,
                format!("unknown feature `{name}`"),
            )];
        }
        let Some(claims) = self.claims.clone() else {
            return vec![self.error(
                ErrorCode::NotAuthenticated,
                "send hello with a token first".into(),
            )];
        };
        let mode = self.peer.and_then(|p| {
            let reg = self
                .shared
                .registry
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            reg.call_of(p).map(|(_, _, m)| m)
        });
        debug!(feature = name, "feature requested");
        if mode == Some(CallMode::E2ee) {
            // `name` is one of FEATURES: a bounded label.
            let label = super::control::FEATURES
                .into_iter()
                .find(|f| *f == name)
                .unwrap_or("unknown");
            self.shared.metrics.feature_refused(label).increment(1);
            return vec![self.error(
                ErrorCode::FeatureUnavailableInE2eeCall,
                format!("`{name}` is unavailable in an end-to-end encrypted call: it needs the media in the clear or a third party"),
            )];
        }
        let caller = super::control::Caller {
            peer: self.peer,
            user: &claims.sub,
            tenant: &claims.tenant,
            token_call: claims.call.as_deref(),
            lobby_key: super::control::user_key(&claims.sub, &claims.tenant),
        };
        match super::control::carry_out(&self.shared, &caller, name, arg) {
            Ok(detail) => vec![ServerMessage::FeatureResult {
                name: name.to_string(),
                ok: true,
                detail: Some(detail),
            }],
            Err((code, message)) => {
                self.shared
                    .metrics
                    .signalling_error(code.as_str())
                    .increment(1);
                vec![ServerMessage::FeatureResult {
                    name: name.to_string(),
                    ok: false,
                    detail: Some(format!("{}: {message}", code.as_str())),
                }]
            }
        }
    }
}
