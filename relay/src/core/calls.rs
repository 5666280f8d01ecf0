//! Call membership and the call mode decision. Pure state: the signalling layer calls it
//! under one lock and delivers the resulting messages.

use super::{CallKey, PeerId};
use blindrelay_protocol::signal::{CallMode, ErrorCode, ParticipantInfo};
use std::collections::{BTreeMap, HashMap};

/// Who wants to join, as the token and the join message say.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub peer: PeerId,
    pub public_id: String,
    pub user: String,
    pub tenant: String,
    pub role: String,
    pub call: String,
    pub e2ee_enabled: bool,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub info: ParticipantInfo,
    pub e2ee_enabled: bool,
}

#[derive(Debug)]
pub struct Call {
    pub key: CallKey,
    pub id: String,
    pub mode: CallMode,
    /// Why the call has its mode, in words for the users.
    pub mode_reason: Option<String>,
    pub worker: usize,
    pub members: BTreeMap<PeerId, Member>,
}

/// A successful join.
#[derive(Debug, Clone)]
pub struct Joined {
    pub call_key: CallKey,
    pub mode: CallMode,
    pub mode_reason: Option<String>,
    pub worker: usize,
    /// Everyone already in the call.
    pub others: Vec<(PeerId, ParticipantInfo)>,
}

/// A removal: who is still in the call to be told.
#[derive(Debug, Clone)]
pub struct Left {
    pub call_key: CallKey,
    pub public_id: String,
    pub role: String,
    pub remaining: Vec<PeerId>,
    /// The call ended with this participant; its mode, for the gauges.
    pub ended: Option<CallMode>,
}

/// All calls on this relay.
#[derive(Debug)]
pub struct CallRegistry {
    calls: HashMap<String, Call>,
    by_peer: HashMap<PeerId, String>,
    next_call: CallKey,
    workers: usize,
    max_participants: usize,
}

impl CallRegistry {
    pub fn new(workers: usize, max_participants: usize) -> Self {
        CallRegistry {
            calls: HashMap::new(),
            by_peer: HashMap::new(),
            next_call: 1,
            workers: workers.max(1),
            max_participants,
        }
    }

    /// Admit `req` to its call, creating the call if it is the first participant.
    ///
    /// Until per-user policy lands, every user may turn E2EE on, and the first participant's
    /// switch sets the call's mode: an E2EE call admits one more participant who also
    /// encrypts and no bots; a standard call admits anyone, telling an encrypting joiner why
    /// the call is not encrypted.
    pub fn join(&mut self, req: JoinRequest) -> Result<Joined, (ErrorCode, String)> {
        if self.by_peer.contains_key(&req.peer) {
            return Err((ErrorCode::AlreadyJoined, "already in a call".into()));
        }
        let is_bot = req.role.starts_with("bot:");
        if is_bot && req.e2ee_enabled {
            return Err((
                ErrorCode::E2eeNotAllowed,
                "bots cannot take part in end-to-end encryption".into(),
            ));
        }
        let info = ParticipantInfo {
            participant: req.public_id.clone(),
            user: req.user.clone(),
            tenant: req.tenant.clone(),
            role: req.role.clone(),
        };
        let member = Member {
            info,
            e2ee_enabled: req.e2ee_enabled,
        };
        match self.calls.get_mut(&req.call) {
            None => {
                let key = self.next_call;
                self.next_call += 1;
                let worker = (key as usize) % self.workers;
                let mode = if req.e2ee_enabled {
                    CallMode::E2ee
                } else {
                    CallMode::Standard
                };
                let mut members = BTreeMap::new();
                members.insert(req.peer, member);
                self.calls.insert(
                    req.call.clone(),
                    Call {
                        key,
                        id: req.call.clone(),
                        mode,
                        mode_reason: None,
                        worker,
                        members,
                    },
                );
                self.by_peer.insert(req.peer, req.call);
                Ok(Joined {
                    call_key: key,
                    mode,
                    mode_reason: None,
                    worker,
                    others: vec![],
                })
            }
            Some(call) => {
                match call.mode {
                    CallMode::E2ee => {
                        if is_bot {
                            return Err((
                                ErrorCode::E2eeCallRefusesBots,
                                "this call is end-to-end encrypted: recording, captions and transcription bots cannot join".into(),
                            ));
                        }
                        if call.members.len() >= 2 {
                            return Err((
                                ErrorCode::E2eeCallIsOneToOne,
                                "an end-to-end encrypted call is one-to-one".into(),
                            ));
                        }
                        if !req.e2ee_enabled {
                            return Err((
                                ErrorCode::E2eeRequired,
                                "this call is end-to-end encrypted: turn on end-to-end encryption to join".into(),
                            ));
                        }
                    }
                    CallMode::Standard => {
                        if call.members.len() >= self.max_participants {
                            return Err((
                                ErrorCode::CallFull,
                                format!("the call has {} participants already", call.members.len()),
                            ));
                        }
                        if req.e2ee_enabled && call.mode_reason.is_none() {
                            let first = call
                                .members
                                .values()
                                .next()
                                .map(|m| m.info.user.clone())
                                .unwrap_or_default();
                            call.mode_reason =
                                Some(format!("standard call: {first} had not turned on end-to-end encryption when the call started"));
                        }
                    }
                }
                let others = call
                    .members
                    .iter()
                    .map(|(p, m)| (*p, m.info.clone()))
                    .collect();
                call.members.insert(req.peer, member);
                let out = Joined {
                    call_key: call.key,
                    mode: call.mode,
                    mode_reason: call.mode_reason.clone(),
                    worker: call.worker,
                    others,
                };
                self.by_peer.insert(req.peer, req.call);
                Ok(out)
            }
        }
    }

    /// Remove a participant; `None` if it was in no call.
    pub fn leave(&mut self, peer: PeerId) -> Option<Left> {
        let call_id = self.by_peer.remove(&peer)?;
        let call = self.calls.get_mut(&call_id)?;
        let m = call.members.remove(&peer)?;
        let remaining: Vec<PeerId> = call.members.keys().copied().collect();
        let call_key = call.key;
        let mode = call.mode;
        let ended = if remaining.is_empty() {
            self.calls.remove(&call_id);
            Some(mode)
        } else {
            None
        };
        Some(Left {
            call_key,
            public_id: m.info.participant,
            role: m.info.role,
            remaining,
            ended,
        })
    }

    /// The peers in `peer`'s call other than itself, with the call's mode.
    pub fn peers_of(&self, peer: PeerId) -> Option<(CallMode, Vec<(PeerId, &Member)>)> {
        let call = self.calls.get(self.by_peer.get(&peer)?)?;
        Some((
            call.mode,
            call.members
                .iter()
                .filter(|(p, _)| **p != peer)
                .map(|(p, m)| (*p, m))
                .collect(),
        ))
    }

    /// Find a participant of `peer`'s call by its public id.
    pub fn find_in_call(&self, peer: PeerId, public_id: &str) -> Option<PeerId> {
        let call = self.calls.get(self.by_peer.get(&peer)?)?;
        call.members
            .iter()
            .find(|(_, m)| m.info.participant == public_id)
            .map(|(p, _)| *p)
    }

    pub fn call_count(&self) -> usize {
        self.calls.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: PeerId, role: &str, e2ee: bool) -> JoinRequest {
        JoinRequest {
            peer,
            public_id: format!("p{peer}"),
            user: format!("u{peer}"),
            tenant: "t".into(),
            role: role.into(),
            call: "c".into(),
            e2ee_enabled: e2ee,
        }
    }

    #[test]
    fn e2ee_call_is_one_to_one_and_refuses_bots() {
        let mut r = CallRegistry::new(2, 16);
        assert_eq!(r.join(req(1, "user", true)).unwrap().mode, CallMode::E2ee);
        assert_eq!(
            r.join(req(2, "bot:recording", false)).unwrap_err().0,
            ErrorCode::E2eeCallRefusesBots
        );
        assert_eq!(
            r.join(req(3, "user", false)).unwrap_err().0,
            ErrorCode::E2eeRequired
        );
        let j = r.join(req(4, "user", true)).unwrap();
        assert_eq!(j.others.len(), 1);
        assert_eq!(
            r.join(req(5, "user", true)).unwrap_err().0,
            ErrorCode::E2eeCallIsOneToOne
        );
        let l = r.leave(1).unwrap();
        assert_eq!(l.remaining, vec![4]);
        assert!(r.leave(4).unwrap().ended.is_some());
        assert_eq!(r.call_count(), 0);
    }

    #[test]
    fn standard_call_explains_itself() {
        let mut r = CallRegistry::new(2, 3);
        r.join(req(1, "user", false)).unwrap();
        let j = r.join(req(2, "user", true)).unwrap();
        assert_eq!(j.mode, CallMode::Standard);
        assert!(j.mode_reason.unwrap().contains("u1"));
        r.join(req(3, "bot:captions", false)).unwrap();
        assert_eq!(
            r.join(req(4, "user", false)).unwrap_err().0,
            ErrorCode::CallFull
        );
        assert_eq!(
            r.join(req(1, "user", false)).unwrap_err().0,
            ErrorCode::AlreadyJoined
        );
    }
}
