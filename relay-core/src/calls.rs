//! Call membership and the call mode decision. Pure state: the signalling layer calls it
//! under one lock and delivers the resulting messages.

use super::policy::CallingE2ee;
use super::{CallKey, PeerId};
use blindrelay_protocol::signal::{CallMode, E2eeScheme, ErrorCode, ParticipantInfo};
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
    /// The user's effective `calling_e2ee` policy.
    pub policy: CallingE2ee,
    /// How the joiner keys an E2EE call.
    pub e2ee_scheme: E2eeScheme,
}

impl JoinRequest {
    fn is_bot(&self) -> bool {
        self.role.starts_with("bot:")
    }
    /// Encrypts: allowed by policy and turned on (Required counts as on).
    fn wants_e2ee(&self) -> bool {
        !self.is_bot()
            && (self.policy == CallingE2ee::Required
                || (self.policy == CallingE2ee::DisabledUserOverride && self.e2ee_enabled))
    }
    /// Why this participant does not encrypt, in words.
    fn why_not(&self) -> String {
        if self.is_bot() {
            format!(
                "{} is a {} bot",
                self.user,
                self.role.trim_start_matches("bot:")
            )
        } else if self.policy == CallingE2ee::Disabled {
            format!(
                "{}'s policy does not allow end-to-end encryption",
                self.user
            )
        } else {
            format!("{} has not turned on end-to-end encryption", self.user)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub info: ParticipantInfo,
    pub e2ee_enabled: bool,
    pub policy: CallingE2ee,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub key: CallKey,
    pub id: String,
    pub mode: CallMode,
    /// Why the call has its mode, in words for the users.
    pub mode_reason: Option<String>,
    pub worker: usize,
    pub members: BTreeMap<PeerId, Member>,
    /// An E2EE call's key scheme, chosen by its first joiner.
    pub scheme: Option<E2eeScheme>,
    /// This E2EE call has had two participants at once, so keys may exist: it stays E2EE
    /// however many leave (no unencrypted joiner, no bot, nobody told it is standard).
    pub keyed: bool,
}

/// A successful join.
#[derive(Debug, Clone)]
pub struct Joined {
    pub call_key: CallKey,
    pub mode: CallMode,
    pub mode_reason: Option<String>,
    /// An E2EE call's key scheme.
    pub scheme: Option<E2eeScheme>,
    pub worker: usize,
    /// Everyone already in the call.
    pub others: Vec<(PeerId, ParticipantInfo)>,
    /// Participants whose provisional E2EE call this join turned into a standard call.
    pub downgraded: Vec<PeerId>,
    /// The earlier session of the same identity that this join replaced, and its removal.
    pub replaced: Option<(PeerId, Left)>,
}

/// The one answer to a merge the requester may not make (see [`CallRegistry::merge`]).
pub const MERGE_REFUSED: &str = "you can only merge calls you are in";

/// A merge: who moved from the other call, who was already there.
#[derive(Debug, Clone)]
pub struct Merged {
    pub call_key: CallKey,
    pub worker: usize,
    pub from_worker: usize,
    pub moved: Vec<(PeerId, ParticipantInfo)>,
    pub existing: Vec<(PeerId, ParticipantInfo)>,
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
    /// The decision table (Teams' rule, made safe against downgrade): a call is E2EE only
    /// if every participant's policy allows it and every participant turned it on. The
    /// first participant's choice makes the call provisionally E2EE or standard. While an
    /// E2EE call has one participant (no keys agreed yet), a joiner who does not encrypt
    /// turns it into a standard call, and the first participant is told why
    /// ([`Joined::downgraded`]), unless someone's policy is `Required`: then the joiner is
    /// refused. Once two participants have been in an E2EE call at once it is final, even
    /// after all but one leave: no participant who does not encrypt, no bots (one-to-one
    /// for the x25519 scheme).
    pub fn join(&mut self, req: JoinRequest) -> Result<Joined, (ErrorCode, String)> {
        if self.by_peer.contains_key(&req.peer) {
            return Err((ErrorCode::AlreadyJoined, "already in a call".into()));
        }
        if req.e2ee_enabled && (req.is_bot() || req.policy == CallingE2ee::Disabled) {
            return Err((
                ErrorCode::E2eeNotAllowed,
                format!("{}: end-to-end encryption is not available", req.why_not()),
            ));
        }
        let wants = req.wants_e2ee();
        let member = Member {
            info: ParticipantInfo {
                participant: req.public_id.clone(),
                user: req.user.clone(),
                tenant: req.tenant.clone(),
                role: req.role.clone(),
            },
            e2ee_enabled: wants,
            policy: req.policy,
        };
        let Some(call) = self.calls.get_mut(&req.call) else {
            let key = self.next_call;
            self.next_call += 1;
            let worker = (key as usize) % self.workers;
            let mode = if wants {
                CallMode::E2ee
            } else {
                CallMode::Standard
            };
            let mode_reason = (!wants).then(|| format!("standard call: {}", req.why_not()));
            let scheme = wants.then_some(req.e2ee_scheme);
            let mut members = BTreeMap::new();
            members.insert(req.peer, member);
            self.calls.insert(
                req.call.clone(),
                Call {
                    key,
                    id: req.call.clone(),
                    mode,
                    mode_reason: mode_reason.clone(),
                    worker,
                    members,
                    scheme: wants.then_some(req.e2ee_scheme),
                    keyed: false,
                },
            );
            self.by_peer.insert(req.peer, req.call);
            return Ok(Joined {
                call_key: key,
                mode,
                mode_reason,
                scheme,
                worker,
                others: vec![],
                downgraded: vec![],
                replaced: None,
            });
        };
        let mut downgraded = Vec::new();
        match call.mode {
            CallMode::E2ee => {
                if req.is_bot() {
                    return Err((
                        ErrorCode::E2eeCallRefusesBots,
                        "this call is end-to-end encrypted: recording, captions and transcription bots cannot join".into(),
                    ));
                }
                let scheme = call.scheme.unwrap_or_default();
                if wants && req.e2ee_scheme != scheme {
                    return Err((
                        ErrorCode::E2eeSchemeMismatch,
                        format!(
                            "this call is keyed with {}, not {}",
                            scheme.as_str(),
                            req.e2ee_scheme.as_str()
                        ),
                    ));
                }
                match scheme {
                    E2eeScheme::X25519 if call.members.len() >= 2 => {
                        return Err((
                            ErrorCode::E2eeCallIsOneToOne,
                            "an end-to-end encrypted call keyed with x25519-commit-reveal is one-to-one (join with e2ee_scheme mls for a group)".into(),
                        ));
                    }
                    E2eeScheme::Mls if call.members.len() >= self.max_participants => {
                        return Err((
                            ErrorCode::CallFull,
                            format!("the call has {} participants already", call.members.len()),
                        ));
                    }
                    _ => {}
                }
                if !wants && (call.members.len() >= 2 || call.keyed) {
                    // Two members may have agreed keys already, now or earlier in the call
                    // (its keys are still in use by whoever is left): never downgrade then.
                    return Err((
                        ErrorCode::E2eeRequired,
                        format!(
                            "this call is end-to-end encrypted and is never downgraded, and {}",
                            req.why_not()
                        ),
                    ));
                }
                if !wants {
                    if let Some(m) = call
                        .members
                        .values()
                        .find(|m| m.policy == CallingE2ee::Required)
                    {
                        return Err((
                            ErrorCode::E2eeRequired,
                            format!(
                                "{}'s policy requires end-to-end encryption, and {}",
                                m.info.user,
                                req.why_not()
                            ),
                        ));
                    }
                    // Nobody has keys yet: the call becomes standard, and everyone is told.
                    call.mode = CallMode::Standard;
                    call.scheme = None;
                    call.mode_reason = Some(format!("standard call: {}", req.why_not()));
                    downgraded = call.members.keys().copied().collect();
                }
            }
            CallMode::Standard => {
                if req.policy == CallingE2ee::Required {
                    return Err((
                        ErrorCode::E2eeRequired,
                        format!(
                            "your policy requires end-to-end encryption, but this is a {}",
                            call.mode_reason
                                .clone()
                                .unwrap_or_else(|| "standard call".into())
                        ),
                    ));
                }
                if call.members.len() >= self.max_participants {
                    return Err((
                        ErrorCode::CallFull,
                        format!("the call has {} participants already", call.members.len()),
                    ));
                }
            }
        }
        let others = call
            .members
            .iter()
            .map(|(p, m)| (*p, m.info.clone()))
            .collect();
        call.members.insert(req.peer, member);
        if call.mode == CallMode::E2ee && call.members.len() >= 2 {
            call.keyed = true;
        }
        let out = Joined {
            call_key: call.key,
            mode: call.mode,
            mode_reason: call.mode_reason.clone(),
            scheme: call.scheme,
            worker: call.worker,
            others,
            downgraded,
            replaced: None,
        };
        self.by_peer.insert(req.peer, req.call);
        Ok(out)
    }

    /// [`CallRegistry::join`] as if `replacing` (an earlier session of the same identity in
    /// that call) had left first. A refused join changes nothing, not even the earlier
    /// session's membership.
    pub fn join_replacing(
        &mut self,
        req: JoinRequest,
        replacing: Option<PeerId>,
    ) -> Result<Joined, (ErrorCode, String)> {
        let Some(old) = replacing else {
            return self.join(req);
        };
        let snapshot = self.calls.get(&req.call).cloned();
        let old_call = self.by_peer.get(&old).cloned();
        let new_peer = req.peer;
        let next_call = self.next_call;
        let Some(left) = self.leave(old) else {
            return self.join(req);
        };
        // A second session of someone already in an E2EE call must not downgrade it.
        let result = self.join(req).and_then(|j| {
            if j.downgraded.is_empty() {
                Ok(j)
            } else {
                Err((
                    ErrorCode::E2eeRequired,
                    "this call is end-to-end encrypted: rejoin with end-to-end encryption on"
                        .into(),
                ))
            }
        });
        match result {
            Ok(mut j) => {
                j.replaced = Some((old, left));
                Ok(j)
            }
            Err(e) => {
                self.by_peer.remove(&new_peer);
                if let Some(c) = snapshot {
                    self.calls.insert(c.id.clone(), c);
                }
                if let Some(id) = old_call {
                    self.by_peer.insert(old, id);
                }
                self.next_call = next_call;
                Err(e)
            }
        }
    }

    /// The participants of call `call`, earliest joiner first (peer ids only grow).
    pub fn participants(&self, call: &str) -> Vec<PeerId> {
        self.calls
            .get(call)
            .map(|c| c.members.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Every call's id and participants: for the plane's invariant checks.
    pub fn member_lists(&self) -> impl Iterator<Item = (&str, Vec<PeerId>)> {
        self.calls
            .iter()
            .map(|(id, c)| (id.as_str(), c.members.keys().copied().collect()))
    }

    /// How many peers the registry maps to a call: for the plane's invariant checks.
    pub fn peers_in_calls(&self) -> usize {
        self.by_peer.len()
    }

    /// Whether a call with this id is in progress.
    pub fn has_call(&self, call: &str) -> bool {
        self.calls.contains_key(call)
    }

    /// Move every participant of call `from_call` into `peer`'s call (merge).
    ///
    /// Only a participant of both calls may merge them: `peer`'s identity (user@tenant)
    /// must also be in `from_call` (through another session), and both calls must be
    /// standard (media of an E2EE call cannot be mixed with anyone else's). Every other
    /// case gets the one [`MERGE_REFUSED`] refusal, so that the answer never tells whether
    /// a call exists, or in which mode. A refused merge changes nothing.
    pub fn merge(&mut self, peer: PeerId, from_call: &str) -> Result<Merged, (ErrorCode, String)> {
        let refused = || (ErrorCode::MergeRefused, MERGE_REFUSED.to_string());
        let into_id = self
            .by_peer
            .get(&peer)
            .cloned()
            .ok_or((ErrorCode::NotJoined, "not in a call".to_string()))?;
        if into_id == from_call {
            return Err((
                ErrorCode::BadRequest,
                "cannot merge a call into itself".into(),
            ));
        }
        let into = self
            .calls
            .get(&into_id)
            .ok_or((ErrorCode::NotJoined, "not in a call".to_string()))?;
        let me = into
            .members
            .get(&peer)
            .map(|m| (m.info.user.as_str(), m.info.tenant.as_str()))
            .ok_or((ErrorCode::NotJoined, "not in a call".to_string()))?;
        let from = self.calls.get(from_call).filter(|from| {
            from.mode == CallMode::Standard
                && into.mode == CallMode::Standard
                && from
                    .members
                    .values()
                    .any(|m| (m.info.user.as_str(), m.info.tenant.as_str()) == me)
        });
        let Some(from) = from else {
            return Err(refused());
        };
        if into.members.len() + from.members.len() > self.max_participants {
            return Err((
                ErrorCode::CallFull,
                "the merged call would be too large".into(),
            ));
        }
        let existing: Vec<(PeerId, ParticipantInfo)> = into
            .members
            .iter()
            .map(|(p, m)| (*p, m.info.clone()))
            .collect();
        let (call_key, worker) = (into.key, into.worker);
        let from = self
            .calls
            .remove(from_call)
            .ok_or((ErrorCode::Internal, "call vanished".to_string()))?;
        let from_worker = from.worker;
        let moved: Vec<(PeerId, ParticipantInfo)> = from
            .members
            .iter()
            .map(|(p, m)| (*p, m.info.clone()))
            .collect();
        let into = self
            .calls
            .get_mut(&into_id)
            .ok_or((ErrorCode::Internal, "call vanished".to_string()))?;
        for (p, m) in from.members {
            into.members.insert(p, m);
            self.by_peer.insert(p, into_id.clone());
        }
        Ok(Merged {
            call_key,
            worker,
            from_worker,
            moved,
            existing,
        })
    }

    /// `peer`'s call: id, key and mode.
    pub fn call_of(&self, peer: PeerId) -> Option<(String, CallKey, CallMode)> {
        let id = self.by_peer.get(&peer)?;
        let c = self.calls.get(id)?;
        Some((id.clone(), c.key, c.mode))
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
    use CallingE2ee::*;

    fn req(peer: PeerId, role: &str, e2ee: bool, policy: CallingE2ee) -> JoinRequest {
        JoinRequest {
            peer,
            public_id: format!("p{peer}"),
            user: format!("u{peer}"),
            tenant: "t".into(),
            role: role.into(),
            call: "c".into(),
            e2ee_enabled: e2ee,
            policy,
            e2ee_scheme: E2eeScheme::X25519,
        }
    }

    /// Two users' policies x their switches -> the call's mode, or the second's refusal.
    #[test]
    fn decision_table() {
        let policies = [Disabled, DisabledUserOverride, Required];
        for p1 in policies {
            for p2 in policies {
                for on1 in [false, true] {
                    for on2 in [false, true] {
                        let mut r = CallRegistry::new(2, 16);
                        let first = r.join(req(1, "user", on1, p1));
                        if on1 && p1 == Disabled {
                            assert_eq!(first.unwrap_err().0, ErrorCode::E2eeNotAllowed);
                            continue;
                        }
                        let first = first.unwrap();
                        let wants1 = p1 == Required || (p1 == DisabledUserOverride && on1);
                        let wants2 = p2 == Required || (p2 == DisabledUserOverride && on2);
                        assert_eq!(first.mode == CallMode::E2ee, wants1);
                        let second = r.join(req(2, "user", on2, p2));
                        if on2 && p2 == Disabled {
                            assert_eq!(second.unwrap_err().0, ErrorCode::E2eeNotAllowed);
                            continue;
                        }
                        let case = format!("{p1:?}/{on1} + {p2:?}/{on2}");
                        if (p1 == Required && !wants2) || (p2 == Required && !wants1) {
                            let e = second.unwrap_err();
                            assert_eq!(e.0, ErrorCode::E2eeRequired, "{case}");
                            assert!(
                                e.1.contains("u1") || e.1.contains("your policy"),
                                "{case}: {}",
                                e.1
                            );
                            continue;
                        }
                        let j = second.unwrap();
                        assert_eq!(j.mode == CallMode::E2ee, wants1 && wants2, "{case}");
                        if j.mode == CallMode::Standard {
                            let reason = j.mode_reason.unwrap();
                            let who = if !wants1 { "u1" } else { "u2" };
                            assert!(reason.contains(who), "{case}: {reason}");
                            let policy_words =
                                if (!wants1 && p1 == Disabled) || (wants1 && p2 == Disabled) {
                                    "policy"
                                } else {
                                    "turned on"
                                };
                            assert!(reason.contains(policy_words), "{case}: {reason}");
                        }
                        assert_eq!(!j.downgraded.is_empty(), wants1 && !wants2, "{case}");
                    }
                }
            }
        }
    }

    #[test]
    fn e2ee_call_is_one_to_one_and_refuses_bots() {
        let mut r = CallRegistry::new(2, 16);
        assert_eq!(
            r.join(req(1, "user", true, DisabledUserOverride))
                .unwrap()
                .mode,
            CallMode::E2ee
        );
        assert_eq!(
            r.join(req(2, "bot:recording", false, DisabledUserOverride))
                .unwrap_err()
                .0,
            ErrorCode::E2eeCallRefusesBots
        );
        assert_eq!(
            r.join(req(2, "bot:captions", true, DisabledUserOverride))
                .unwrap_err()
                .0,
            ErrorCode::E2eeNotAllowed
        );
        let j = r.join(req(4, "user", true, Required)).unwrap();
        assert_eq!(j.others.len(), 1);
        assert_eq!(
            r.join(req(5, "user", true, DisabledUserOverride))
                .unwrap_err()
                .0,
            ErrorCode::E2eeCallIsOneToOne
        );
        assert_eq!(
            r.join(req(6, "bot:transcription", false, Disabled))
                .unwrap_err()
                .0,
            ErrorCode::E2eeCallRefusesBots
        );
        let l = r.leave(1).unwrap();
        assert_eq!(l.remaining, vec![4]);
        assert!(r.leave(4).unwrap().ended.is_some());
        assert_eq!(r.call_count(), 0);
    }

    #[test]
    fn standard_call_admits_bots_and_fills_up() {
        let mut r = CallRegistry::new(2, 3);
        r.join(req(1, "user", false, DisabledUserOverride)).unwrap();
        let j = r.join(req(2, "user", true, DisabledUserOverride)).unwrap();
        assert_eq!(j.mode, CallMode::Standard);
        assert!(j.mode_reason.unwrap().contains("u1 has not turned on"));
        r.join(req(3, "bot:captions", false, Disabled)).unwrap();
        assert_eq!(
            r.join(req(4, "user", false, Disabled)).unwrap_err().0,
            ErrorCode::CallFull
        );
        assert_eq!(
            r.join(req(1, "user", false, Disabled)).unwrap_err().0,
            ErrorCode::AlreadyJoined
        );
    }

    /// A keyed call down to one participant is still final: an unencrypted joiner and a
    /// bot are refused, and nobody is told the call is standard. Before it was keyed, the
    /// same joiner downgrades it (provisional case).
    #[test]
    fn a_call_that_held_keys_stays_e2ee_whoever_leaves() {
        for scheme in [E2eeScheme::X25519, E2eeScheme::Mls] {
            let with = |peer, role: &str, e2ee| JoinRequest {
                e2ee_scheme: scheme,
                ..req(peer, role, e2ee, DisabledUserOverride)
            };
            let mut r = CallRegistry::new(1, 16);
            r.join(with(1, "user", true)).unwrap();
            r.join(with(2, "user", true)).unwrap();
            assert_eq!(r.leave(1).unwrap().remaining, vec![2]);
            let e = r.join(with(3, "user", false)).unwrap_err();
            assert_eq!(e.0, ErrorCode::E2eeRequired, "{scheme:?}");
            assert!(e.1.contains("never downgraded"), "{}", e.1);
            assert_eq!(
                r.join(with(4, "bot:recording", false)).unwrap_err().0,
                ErrorCode::E2eeCallRefusesBots
            );
            assert_eq!(r.call_of(2).unwrap().2, CallMode::E2ee);
            // An encrypting joiner is still welcome.
            let j = r.join(with(5, "user", true)).unwrap();
            assert_eq!((j.mode, j.downgraded.len()), (CallMode::E2ee, 0));
            assert_eq!(r.participants("c"), vec![2, 5]);
            // A call of the same id after everyone left starts provisional again.
            r.leave(2);
            r.leave(5);
            r.join(with(6, "user", true)).unwrap();
            let j = r.join(with(7, "user", false)).unwrap();
            assert_eq!((j.mode, j.downgraded), (CallMode::Standard, vec![6]));
        }
    }

    #[test]
    fn bot_does_not_downgrade_a_provisional_e2ee_call() {
        let mut r = CallRegistry::new(1, 16);
        r.join(req(1, "user", true, DisabledUserOverride)).unwrap();
        assert_eq!(
            r.join(req(2, "bot:recording", false, Disabled))
                .unwrap_err()
                .0,
            ErrorCode::E2eeCallRefusesBots
        );
        assert_eq!(
            r.join(req(3, "user", true, DisabledUserOverride))
                .unwrap()
                .mode,
            CallMode::E2ee
        );
    }
}
