//! Chat and call features: what a participant may ask the relay to do besides joining.
//!
//! [`Feature`] is a request read and checked on its own (which feature, and its argument
//! completed: a bare user name is of the requester's tenant); the plane then carries it
//! out here, with the lobby (invitations, parked calls, bots), the registry (merge) and
//! removal (transfer, park). No feature is allowed in an E2EE call (it is refused
//! before the request is read); chat is, within `max_chat_bytes` and charged to the
//! sender's broadcast budget.

use super::sessions::Session;
use super::{user_key, ConnId, ControlPlane, Output, Refusal, FEATURES};
use crate::budget;
use crate::report::{RemovalReason, Report};
use crate::token::Claims;
use crate::PeerId;
use blindrelay_protocol::signal::{CallMode, ErrorCode, ParticipantInfo, ServerMessage};
use std::time::Instant;
use tracing::debug;

/// What to invite someone for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InviteKind {
    /// `add_participant`: the requester stays.
    Add,
    /// `transfer`: the requester hands over at once.
    Transfer,
    /// `consult_transfer`: the requester leaves when the invitee joins.
    Consult,
}

/// A feature request, read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Feature {
    /// Invite `who` (`user@tenant`) to the requester's call.
    Invite { who: String, kind: InviteKind },
    /// Merge call `other` into the requester's.
    Merge { other: String },
    /// Park the requester's call under a fresh pickup code.
    Park,
    /// Retrieve the call parked under `code`.
    Retrieve { code: String },
    /// Invite the tenant's bot of `role` (recording, captions, transcription).
    Bot { role: &'static str },
}

fn unknown(name: &str) -> Refusal {
    (
        ErrorCode::UnknownFeature,
        format!("unknown feature `{name}`"),
    )
}

impl Feature {
    /// Read feature `name` with `arg`; `tenant` is the requester's (a bare user name in
    /// `arg` is of that tenant).
    pub(super) fn parse(name: &str, arg: Option<&str>, tenant: &str) -> Result<Feature, Refusal> {
        let target = || {
            let a = arg.ok_or((
                ErrorCode::BadRequest,
                format!("{name} needs a user (user or user@tenant)"),
            ))?;
            Ok::<String, Refusal>(if a.contains('@') {
                a.to_string()
            } else {
                user_key(a, tenant)
            })
        };
        let invite = |kind| {
            Ok(Feature::Invite {
                who: target()?,
                kind,
            })
        };
        match name {
            "add_participant" => invite(InviteKind::Add),
            "transfer" => invite(InviteKind::Transfer),
            "consult_transfer" => invite(InviteKind::Consult),
            "merge" => Ok(Feature::Merge {
                other: arg
                    .ok_or((
                        ErrorCode::BadRequest,
                        "merge needs the other call's id".to_string(),
                    ))?
                    .to_string(),
            }),
            "park" => Ok(Feature::Park),
            "retrieve" => Ok(Feature::Retrieve {
                code: arg
                    .ok_or((
                        ErrorCode::BadRequest,
                        "retrieve needs the pickup code".to_string(),
                    ))?
                    .to_string(),
            }),
            "record" => Ok(Feature::Bot {
                role: "bot:recording",
            }),
            "live_captions" => Ok(Feature::Bot {
                role: "bot:captions",
            }),
            "transcription" => Ok(Feature::Bot {
                role: "bot:transcription",
            }),
            _ => Err(unknown(name)),
        }
    }
}

impl ControlPlane {
    /// A chat goes to every other participant of the call, within the sender's broadcast
    /// budget and `max_chat_bytes`.
    pub(super) fn chat(&mut self, now: Instant, conn: ConnId, body: String) {
        let Some(peer) = self.joined_peer(conn) else {
            return;
        };
        if body.len() > self.cfg.max_chat_bytes {
            return self.error(
                conn,
                ErrorCode::MessageTooLarge,
                format!(
                    "a chat body of {} bytes exceeds signal.max_chat_bytes ({})",
                    body.len(),
                    self.cfg.max_chat_bytes
                ),
            );
        }
        let Some(from) = self.sessions.get(&peer).map(|s| s.public_id.clone()) else {
            return;
        };
        let others: Vec<ConnId> = self
            .registry
            .peers_of(peer)
            .map(|(_, v)| v.into_iter().map(|(p, _)| p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| self.sessions.get(&p).map(|s| s.conn))
            .collect();
        let msg = ServerMessage::Chat { from, body };
        if !self.charge_broadcast(now, conn, peer, budget::wire_len(&msg)) {
            return;
        }
        for c in others {
            self.send(c, msg.clone());
        }
    }

    pub(super) fn feature(&mut self, now: Instant, conn: ConnId, name: &str, arg: Option<String>) {
        let Some(label) = FEATURES.into_iter().find(|f| *f == name) else {
            return self.error(
                conn,
                ErrorCode::UnknownFeature,
                format!("unknown feature `{name}`"),
            );
        };
        let Some(claims) = self.conns.get(&conn).and_then(|c| c.claims.clone()) else {
            return self.error(
                conn,
                ErrorCode::NotAuthenticated,
                "send hello with a token first".into(),
            );
        };
        let peer = self.conns.get(&conn).and_then(|c| c.peer);
        let mode = peer.and_then(|p| self.registry.call_of(p).map(|(_, _, m)| m));
        debug!(feature = label, "feature requested");
        if mode == Some(CallMode::E2ee) {
            self.report(Report::FeatureRefused(label));
            return self.error(
                conn,
                ErrorCode::FeatureUnavailableInE2eeCall,
                format!("`{name}` is unavailable in an end-to-end encrypted call: it needs the media in the clear or a third party"),
            );
        }
        let mut after: Option<(PeerId, RemovalReason)> = None;
        // The request's result goes out before the events it caused (invitations, the
        // participants a merge brought in), so a client always learns the outcome first.
        let mark = self.out.len();
        let result = self.carry_out(now, conn, peer, &claims, label, arg.as_deref(), &mut after);
        let reply = match result {
            Ok(detail) => ServerMessage::FeatureResult {
                name: name.to_string(),
                ok: true,
                detail: Some(detail),
            },
            Err((code, message)) => {
                self.report(Report::SignallingError(code));
                ServerMessage::FeatureResult {
                    name: name.to_string(),
                    ok: false,
                    detail: Some(format!("{}: {message}", code.as_str())),
                }
            }
        };
        if self.conns.get(&conn).is_some_and(|c| !c.closing) {
            self.out.insert(mark, Output::Send { conn, msg: reply });
        }
        // A transfer or park hands over after the caller has its result.
        if let Some((p, reason)) = after {
            self.remove_peer(now, p, reason);
        }
    }

    /// Carry out a feature request the plane admitted (not in an E2EE call): the
    /// result's detail, or why not. `after`: a participant to remove once the requester
    /// has its result (a transfer or park hands over).
    #[allow(clippy::too_many_arguments)]
    fn carry_out(
        &mut self,
        now: Instant,
        conn: ConnId,
        peer: Option<PeerId>,
        claims: &Claims,
        name: &'static str,
        arg: Option<&str>,
        after: &mut Option<(PeerId, RemovalReason)>,
    ) -> Result<String, Refusal> {
        if name == "retrieve" {
            let Feature::Retrieve { code } = Feature::parse(name, arg, &claims.tenant)? else {
                return Err(unknown(name));
            };
            return self.retrieve(now, conn, claims, &code);
        }
        let peer = peer.ok_or((ErrorCode::NotJoined, "join a call first".to_string()))?;
        let (call, _, _) = self
            .registry
            .call_of(peer)
            .ok_or((ErrorCode::NotJoined, "not in a call".to_string()))?;
        let offline = |who: &str| {
            (
                ErrorCode::UnknownParticipant,
                format!("{who} is not online"),
            )
        };
        match Feature::parse(name, arg, &claims.tenant)? {
            Feature::Invite { who, kind } => {
                let replaces = (kind == InviteKind::Consult).then_some(peer);
                if !self.invite(now, &who, &call, &claims.sub, name, replaces)? {
                    return Err(offline(&who));
                }
                Ok(match kind {
                    InviteKind::Add => format!("invited {who}"),
                    InviteKind::Transfer => {
                        // A blind transfer: the caller hands over at once.
                        *after = Some((peer, RemovalReason::Transferred));
                        format!("call transferred to {who}")
                    }
                    InviteKind::Consult => {
                        format!("consulting {who}; the call is theirs when they join")
                    }
                })
            }
            Feature::Merge { other } => {
                // Membership decides, whatever call the token names: the requester's
                // identity must be in the other call too (see `CallRegistry::merge`).
                self.merge(peer, &other)?;
                Ok(format!("merged call {other} into this call"))
            }
            Feature::Park => {
                let code =
                    self.lobby
                        .park(now, &mut self.timers, &mut self.rng, call, &claims.tenant)?;
                *after = Some((peer, RemovalReason::Parked));
                Ok(code)
            }
            Feature::Bot { role } => {
                let conns = &self.conns;
                let bot = self
                    .lobby
                    .find(|c| {
                        conns
                            .get(&c)
                            .and_then(|c| c.claims.as_ref())
                            .is_some_and(|cl| cl.role == role && cl.tenant == claims.tenant)
                    })
                    .map(str::to_string);
                match bot {
                    Some(k) if self.invite(now, &k, &call, &claims.sub, role, None)? => {
                        Ok(format!("{role} invited"))
                    }
                    _ => Err((
                        ErrorCode::UnknownParticipant,
                        format!("no {role} is available"),
                    )),
                }
            }
            Feature::Retrieve { .. } => Err(unknown(name)),
        }
    }

    fn retrieve(
        &mut self,
        now: Instant,
        conn: ConnId,
        claims: &Claims,
        code: &str,
    ) -> Result<String, Refusal> {
        let me = user_key(&claims.sub, &claims.tenant);
        let call = self
            .lobby
            .find_parked(now, &mut self.timers, &me, &claims.tenant, code)?;
        if self.conns.get(&conn).is_some_and(|c| c.peer.is_some()) {
            return Err((
                ErrorCode::AlreadyJoined,
                "retrieve from a connection that is not in a call".into(),
            ));
        }
        self.lobby.unpark(&mut self.timers, code);
        // The retriever is invited to the parked call; its own lobby entry gets it.
        if !self.invite(now, &me, &call, &claims.sub, "retrieve", None)? {
            return Err((
                ErrorCode::NotJoined,
                "retrieve from a connection that is not in a call".into(),
            ));
        }
        Ok(format!("retrieving the call parked under {code}"))
    }

    /// Invite `key` (everyone of it in the lobby) to `call`. Ok(false): nobody to invite.
    fn invite(
        &mut self,
        now: Instant,
        key: &str,
        call: &str,
        by: &str,
        reason: &str,
        replaces: Option<PeerId>,
    ) -> Result<bool, Refusal> {
        let Some(conns) = self
            .lobby
            .invite(now, &mut self.timers, key, call, replaces)?
        else {
            return Ok(false);
        };
        for c in conns {
            self.send(
                c,
                ServerMessage::Invite {
                    call: call.to_string(),
                    by: by.to_string(),
                    reason: reason.to_string(),
                },
            );
        }
        Ok(true)
    }

    /// Move the other call's participants into `peer`'s call: membership, forwarding
    /// loop, and everyone told who is now with them.
    fn merge(&mut self, peer: PeerId, other: &str) -> Result<(), Refusal> {
        // SSRCs stay unique in the merged call, as a join keeps them. Checked only when
        // the requester is in the other call too, so the refusal tells nothing of a call
        // it is not in (the registry refuses every other case alike).
        if let Some(ssrc) = self.merge_collision(peer, other) {
            return Err((
                ErrorCode::SsrcInUse,
                format!("SSRC {ssrc} is sent in both calls"),
            ));
        }
        // A cascade moves no participant between nodes' forwarding loops: a merge that
        // would touch a participant another node serves is refused like any other (one
        // code and message, so nothing is told about the other call).
        let mine = self
            .registry
            .call_of(peer)
            .map(|(id, _, _)| id)
            .unwrap_or_default();
        let remote = [mine.as_str(), other].iter().any(|c| {
            self.registry
                .participants(c)
                .iter()
                .any(|p| self.sessions.get(p).is_some_and(|s| s.media.is_some()))
        });
        if remote {
            return Err((
                ErrorCode::MergeRefused,
                crate::calls::MERGE_REFUSED.to_string(),
            ));
        }
        let merged = self.registry.merge(peer, other)?;
        self.report(Report::Calls(CallMode::Standard, -1));
        for (p, _) in &merged.moved {
            if let Some(s) = self.sessions.get_mut(p) {
                s.worker = merged.worker;
                let to = self
                    .registry
                    .call_of(peer)
                    .map(|(id, _, _)| id)
                    .unwrap_or_default();
                let from = std::mem::replace(&mut s.call, to);
                self.ssrcs.release(&from, *p, s.claimed_ssrcs());
                self.ssrcs.claim(&s.call, *p, s.claimed_ssrcs());
                self.out.push_back(Output::Move {
                    peer: *p,
                    ufrag: s.local_ufrag.clone(),
                    call_key: merged.call_key,
                    from_worker: merged.from_worker,
                    to_worker: merged.worker,
                });
            }
        }
        let tell = |this: &mut Self,
                    to: &[(PeerId, ParticipantInfo)],
                    about: &[(PeerId, ParticipantInfo)]| {
            for (p, _) in to {
                if let Some(c) = this.sessions.get(p).map(|s| s.conn) {
                    for (_, info) in about {
                        this.send(
                            c,
                            ServerMessage::ParticipantJoined {
                                participant: info.clone(),
                            },
                        );
                    }
                }
            }
        };
        tell(self, &merged.existing, &merged.moved);
        tell(self, &merged.moved, &merged.existing);
        self.renegotiate_call_of(peer);
        Ok(())
    }

    /// An SSRC claimed both in `peer`'s call and in call `other`, if `peer`'s identity is
    /// in both.
    fn merge_collision(&self, peer: PeerId, other: &str) -> Option<u32> {
        let me = self.sessions.get(&peer)?;
        let theirs: Vec<&Session> = self
            .registry
            .participants(other)
            .iter()
            .filter_map(|p| self.sessions.get(p))
            .collect();
        if !theirs.iter().any(|s| s.user_key == me.user_key) {
            return None;
        }
        theirs
            .iter()
            .flat_map(|s| s.claimed_ssrcs())
            .find(|x| self.ssrcs.owner(&me.call, *x).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plane::FEATURES;

    #[test]
    fn every_feature_reads_and_its_argument_is_completed() {
        for name in FEATURES {
            let arg = Some("bob");
            assert!(Feature::parse(name, arg, "t").is_ok(), "{name}");
        }
        assert_eq!(
            Feature::parse("transfer", Some("bob"), "t"),
            Ok(Feature::Invite {
                who: "bob@t".into(),
                kind: InviteKind::Transfer
            })
        );
        assert_eq!(
            Feature::parse("add_participant", Some("bob@u"), "t"),
            Ok(Feature::Invite {
                who: "bob@u".into(),
                kind: InviteKind::Add
            })
        );
        for name in [
            "add_participant",
            "transfer",
            "consult_transfer",
            "merge",
            "retrieve",
        ] {
            assert_eq!(
                Feature::parse(name, None, "t").map_err(|e| e.0),
                Err(ErrorCode::BadRequest),
                "{name} without its argument"
            );
        }
        assert_eq!(Feature::parse("park", None, "t"), Ok(Feature::Park));
        assert_eq!(
            Feature::parse("teleport", None, "t").map_err(|e| e.0),
            Err(ErrorCode::UnknownFeature)
        );
    }
}
