//! Call control on a standard call: add a participant, transfer (blind or after a
//! consultation), merge two calls, park and retrieve with a pickup code, and bring in the
//! recording, captions or transcription bot. On an E2EE call every one of these is refused
//! before it gets here (`feature_unavailable_in_e2ee_call`): each needs either the media in
//! the clear or a third party in a one-to-one call.
//!
//! People and bots reachable for an invitation are those connected to signalling and
//! authenticated (`hello`) but not in a call: the lobby.

use super::media::{RecvCtl, WorkerMsg};
use super::server::Shared;
use crate::core::PeerId;
use blindrelay_protocol::signal::{ErrorCode, ParticipantInfo, ServerMessage};
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Features a client may ask for.
pub const FEATURES: [&str; 9] = [
    "add_participant",
    "transfer",
    "consult_transfer",
    "merge",
    "park",
    "retrieve",
    "record",
    "live_captions",
    "transcription",
];

/// How long an invitation or a parked call waits.
const INVITE_TTL: Duration = Duration::from_secs(120);

/// `user@tenant`: how the lobby and invitations name people.
pub fn user_key(user: &str, tenant: &str) -> String {
    format!("{user}@{tenant}")
}

struct LobbyEntry {
    conn: u64,
    role: String,
    tenant: String,
    tx: mpsc::UnboundedSender<ServerMessage>,
}

struct Invite {
    expires: Instant,
    /// A consultative transfer completes when the invitee joins: this peer then leaves.
    replaces: Option<PeerId>,
}

#[derive(Default)]
pub struct Control {
    next_conn: AtomicU64,
    lobby: Mutex<HashMap<String, Vec<LobbyEntry>>>,
    invites: Mutex<HashMap<(String, String), Invite>>,
    parked: Mutex<HashMap<String, (String, String, Instant)>>,
}

/// What a feature request comes to.
pub type Outcome = Result<String, (ErrorCode, String)>;

impl Control {
    /// Register an authenticated connection that is not in a call; returns its handle.
    pub fn enter_lobby(
        &self,
        user: &str,
        tenant: &str,
        role: &str,
        tx: mpsc::UnboundedSender<ServerMessage>,
    ) -> u64 {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut l = self.lobby.lock().unwrap_or_else(|p| p.into_inner());
        l.entry(user_key(user, tenant))
            .or_default()
            .push(LobbyEntry {
                conn,
                role: role.to_string(),
                tenant: tenant.to_string(),
                tx,
            });
        conn
    }

    pub fn leave_lobby(&self, conn: u64) {
        let mut l = self.lobby.lock().unwrap_or_else(|p| p.into_inner());
        l.retain(|_, v| {
            v.retain(|e| e.conn != conn);
            !v.is_empty()
        });
    }

    /// Whether `user@tenant` holds an invitation to `call` (consumed), and whom it replaces.
    pub fn take_invite(&self, key: &str, call: &str) -> Option<Option<PeerId>> {
        let mut inv = self.invites.lock().unwrap_or_else(|p| p.into_inner());
        let i = inv.remove(&(key.to_string(), call.to_string()))?;
        (i.expires > Instant::now()).then_some(i.replaces)
    }

    fn invite(
        &self,
        key: &str,
        call: &str,
        by: &str,
        reason: &str,
        replaces: Option<PeerId>,
    ) -> bool {
        let l = self.lobby.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entries) = l.get(key) else {
            return false;
        };
        let msg = ServerMessage::Invite {
            call: call.to_string(),
            by: by.to_string(),
            reason: reason.to_string(),
        };
        let sent = entries
            .iter()
            .filter(|e| e.tx.send(msg.clone()).is_ok())
            .count()
            > 0;
        if sent {
            self.invites
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    (key.to_string(), call.to_string()),
                    Invite {
                        expires: Instant::now() + INVITE_TTL,
                        replaces,
                    },
                );
        }
        sent
    }

    /// Invite the first lobby bot of `role` in `tenant`.
    fn invite_bot(&self, role: &str, tenant: &str, call: &str, by: &str) -> bool {
        let key = {
            let l = self.lobby.lock().unwrap_or_else(|p| p.into_inner());
            l.iter()
                .find(|(_, v)| v.iter().any(|e| e.role == role && e.tenant == tenant))
                .map(|(k, _)| k.clone())
        };
        match key {
            Some(k) => self.invite(&k, call, by, role, None),
            None => false,
        }
    }
}

/// The caller of a feature, as signalling knows it.
pub struct Caller<'a> {
    pub peer: Option<PeerId>,
    pub user: &'a str,
    pub tenant: &'a str,
    /// The call the caller's token admits to (`None`: any).
    pub token_call: Option<&'a str>,
    /// The caller's own lobby channel, for a retrieve.
    pub lobby_key: String,
}

/// Carry out `name` for `caller` on a standard call.
pub fn carry_out(
    shared: &Arc<Shared>,
    caller: &Caller<'_>,
    name: &str,
    arg: Option<&str>,
) -> Outcome {
    let control = &shared.control;
    if name == "retrieve" {
        let code = arg.ok_or((
            ErrorCode::BadRequest,
            "retrieve needs the pickup code".to_string(),
        ))?;
        let found = control
            .parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(code);
        let Some((call, tenant, expires)) = found else {
            return Err((
                ErrorCode::BadRequest,
                "no call is parked under that code".into(),
            ));
        };
        if tenant != caller.tenant || expires < Instant::now() {
            return Err((
                ErrorCode::BadRequest,
                "no call is parked under that code".into(),
            ));
        }
        if !control.invite(&caller.lobby_key, &call, caller.user, "retrieve", None) {
            return Err((
                ErrorCode::NotJoined,
                "retrieve from a connection that is not in a call".into(),
            ));
        }
        return Ok(format!("retrieving the call parked under {code}"));
    }
    let peer = caller
        .peer
        .ok_or((ErrorCode::NotJoined, "join a call first".to_string()))?;
    let (call, _, _) = shared
        .registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .call_of(peer)
        .ok_or((ErrorCode::NotJoined, "not in a call".to_string()))?;
    let target = || {
        let a = arg.ok_or((
            ErrorCode::BadRequest,
            format!("{name} needs a user (user or user@tenant)"),
        ))?;
        Ok::<String, (ErrorCode, String)>(if a.contains('@') {
            a.to_string()
        } else {
            user_key(a, caller.tenant)
        })
    };
    match name {
        "add_participant" => {
            let who = target()?;
            if control.invite(&who, &call, caller.user, "add_participant", None) {
                Ok(format!("invited {who}"))
            } else {
                Err((
                    ErrorCode::UnknownParticipant,
                    format!("{who} is not online"),
                ))
            }
        }
        "transfer" => {
            let who = target()?;
            if !control.invite(&who, &call, caller.user, "transfer", None) {
                return Err((
                    ErrorCode::UnknownParticipant,
                    format!("{who} is not online"),
                ));
            }
            // A blind transfer: the caller hands over at once.
            let s = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                s.remove_peer(peer, "transferred");
            });
            Ok(format!("call transferred to {who}"))
        }
        "consult_transfer" => {
            let who = target()?;
            if control.invite(&who, &call, caller.user, "consult_transfer", Some(peer)) {
                Ok(format!(
                    "consulting {who}; the call is theirs when they join"
                ))
            } else {
                Err((
                    ErrorCode::UnknownParticipant,
                    format!("{who} is not online"),
                ))
            }
        }
        "merge" => {
            let other = arg.ok_or((
                ErrorCode::BadRequest,
                "merge needs the other call's id".to_string(),
            ))?;
            if caller.token_call.is_some_and(|c| c != other) {
                return Err((
                    ErrorCode::WrongCall,
                    format!("your token does not admit to call `{other}`"),
                ));
            }
            merge(shared, peer, other)?;
            Ok(format!("merged call {other} into this call"))
        }
        "park" => {
            let code = format!("{:06}", rand::rng().random_range(0..1_000_000u32));
            control
                .parked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    code.clone(),
                    (call, caller.tenant.to_string(), Instant::now() + INVITE_TTL),
                );
            let s = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                s.remove_peer(peer, "parked");
            });
            Ok(code)
        }
        "record" | "live_captions" | "transcription" => {
            let role = match name {
                "record" => "bot:recording",
                "live_captions" => "bot:captions",
                _ => "bot:transcription",
            };
            if control.invite_bot(role, caller.tenant, &call, caller.user) {
                Ok(format!("{role} invited"))
            } else {
                Err((
                    ErrorCode::UnknownParticipant,
                    format!("no {role} is available"),
                ))
            }
        }
        _ => Err((
            ErrorCode::UnknownFeature,
            format!("unknown feature `{name}`"),
        )),
    }
}

/// Move the other call's participants into `peer`'s call: membership, forwarding loop,
/// and everyone told who is now with them.
fn merge(shared: &Arc<Shared>, peer: PeerId, other: &str) -> Result<(), (ErrorCode, String)> {
    let merged = shared
        .registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .merge(peer, other)?;
    shared.metrics.calls("standard").decrement(1.0);
    let Some(to) = shared.workers.get(merged.worker).cloned() else {
        return Err((ErrorCode::Internal, "no forwarding loop".into()));
    };
    for (p, _) in &merged.moved {
        if let Some(mut s) = shared.sessions.get_mut(p) {
            s.worker = merged.worker;
        }
        if let Some(from) = shared.workers.get(merged.from_worker).cloned() {
            let msg = WorkerMsg::MovePeer {
                peer: *p,
                call: merged.call_key,
                to: to.clone(),
            };
            tokio::spawn(async move {
                let _ = from.send(msg).await;
            });
        }
        let _ = shared.recv_ctl.send(RecvCtl::SetWorker(*p, merged.worker));
    }
    let tell = |to: &[(PeerId, ParticipantInfo)], about: &[(PeerId, ParticipantInfo)]| {
        for (p, _) in to {
            if let Some(s) = shared.sessions.get(p) {
                for (_, info) in about {
                    let _ = s.to_client.send(ServerMessage::ParticipantJoined {
                        participant: info.clone(),
                    });
                }
            }
        }
    };
    tell(&merged.existing, &merged.moved);
    tell(&merged.moved, &merged.existing);
    Ok(())
}
