//! A participant's side of a group E2EE call (scheme `mls`): a sans-IO state machine that
//! takes the relay's MLS messages and participant events and returns what to send back,
//! keeping the SFrame keys of the current epoch (and, for a grace period, the previous).
//!
//! Who commits: the member with the lowest leaf index among those still in the call adds
//! every waiting joiner and removes every member who left, in one commit. The relay
//! accepts the first commit of each epoch; a member whose commit lost drops it, applies
//! the winner's and, if work is left, commits again on the new epoch. So two joins and a
//! leave at once converge on one epoch however the messages interleave.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use blindrelay_protocol::signal::{ClientMessage, ServerMessage};

use crate::mls::{GroupFrames, GroupMember, MlsError, Processed};
use crate::sframe::SframeError;

/// Why a group message could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error(transparent)]
    Mls(#[from] MlsError),
    #[error("blob is not base64")]
    Base64,
}

/// One participant's group state.
pub struct GroupSession {
    me: String,
    call: String,
    member: GroupMember,
    frames: GroupFrames,
    /// KeyPackages of joiners waiting to be added, by participant id.
    waiting: BTreeMap<String, Vec<u8>>,
    /// Participants who left while still members of the group.
    departed: BTreeSet<String>,
    /// This member's commit is with the relay.
    in_flight: bool,
    /// Who sent with each leaf index (kept across epochs, so frames of the grace period
    /// still name their sender).
    leaf_owner: HashMap<u32, String>,
    /// Epoch changes seen (for tests and the summary).
    pub epochs_installed: u64,
    /// The epoch this participant entered the group at.
    first_epoch: Option<u64>,
    /// Frames sealed in an epoch this member has not reached yet (media overtakes the
    /// commit, which comes through the relay's signalling): opened once it has, or given
    /// up after [`EARLY_FRAME_WAIT`].
    early: VecDeque<(Instant, Vec<u8>, Vec<u8>)>,
    /// Early frames given up on.
    pub early_expired: u64,
}

/// At most this many early frames are kept, each at most [`EARLY_FRAME_WAIT`].
pub const EARLY_FRAMES: usize = 512;
pub const EARLY_FRAME_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a frame did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Sealed in an epoch before this participant joined: never meant for it.
    #[error("frame of epoch {0} (mod 256), before this member joined")]
    BeforeJoin(u64),
    /// Sealed in an epoch this member has not reached yet: kept, and opened by
    /// [`GroupSession::open_early`] once it has.
    #[error("frame of a coming epoch: kept until its commit arrives")]
    Early,
    #[error(transparent)]
    Sframe(#[from] SframeError),
}

impl GroupSession {
    /// A member-to-be with a fresh signing key for this call.
    pub fn new(me: &str, call: &str) -> Result<Self, GroupError> {
        Ok(GroupSession {
            me: me.to_string(),
            call: call.to_string(),
            member: GroupMember::new(me)?,
            frames: GroupFrames::new(),
            waiting: BTreeMap::new(),
            departed: BTreeSet::new(),
            in_flight: false,
            leaf_owner: HashMap::new(),
            epochs_installed: 0,
            first_epoch: None,
            early: VecDeque::new(),
            early_expired: 0,
        })
    }

    /// After `joined`: the first participant creates the group; a later one publishes
    /// its KeyPackage and waits for a Welcome.
    pub fn start(&mut self, now: Instant, alone: bool) -> Result<Vec<ClientMessage>, GroupError> {
        if alone {
            self.create(now)?;
            Ok(Vec::new())
        } else {
            Ok(vec![ClientMessage::MlsKeyPackage {
                blob: B64.encode(self.member.key_package()?),
            }])
        }
    }

    fn create(&mut self, now: Instant) -> Result<(), GroupError> {
        let id = format!("{}/{:016x}", self.call, rand::random::<u64>());
        self.member.create(id.as_bytes())?;
        self.frames.clear();
        self.first_epoch = None;
        self.in_flight = false;
        self.installed(now)
    }

    fn installed(&mut self, now: Instant) -> Result<(), GroupError> {
        for (leaf, id) in self.member.members() {
            self.leaf_owner.insert(leaf, id);
        }
        self.frames.install(now, &self.member.epoch_keys()?);
        self.epochs_installed += 1;
        if self.first_epoch.is_none() {
            self.first_epoch = self.member.epoch();
        }
        let present: BTreeSet<String> = self.member.members().into_iter().map(|m| m.1).collect();
        self.waiting.retain(|p, _| !present.contains(p));
        self.departed.retain(|p| present.contains(p));
        Ok(())
    }

    /// Handle one message from the relay; returns what to send.
    pub fn on_message(
        &mut self,
        now: Instant,
        msg: &ServerMessage,
    ) -> Result<Vec<ClientMessage>, GroupError> {
        let mut out = Vec::new();
        match msg {
            ServerMessage::MlsKeyPackage { from, blob } => {
                let kp = B64.decode(blob).map_err(|_| GroupError::Base64)?;
                if !self.departed.contains(from) {
                    self.waiting.insert(from.clone(), kp);
                }
            }
            ServerMessage::ParticipantLeft { participant, .. } => {
                self.waiting.remove(participant);
                if self
                    .member
                    .members()
                    .iter()
                    .any(|(_, id)| id == participant)
                {
                    self.departed.insert(participant.clone());
                }
            }
            ServerMessage::MlsCommit { commit, epoch, .. } => {
                // Commits reach those still waiting too, so none is missed between a
                // Welcome and `mls_joined`; the ones from before this member's epoch
                // (or before it joined) are not for it.
                if self.member.epoch().is_none_or(|mine| *epoch < mine) {
                    return Ok(out);
                }
                if self.in_flight {
                    // Another commit won this epoch: ours will be refused.
                    self.member.commit_refused()?;
                }
                let raw = B64.decode(commit).map_err(|_| GroupError::Base64)?;
                match self.member.process_commit(&raw)? {
                    Processed::NewEpoch(_) => self.installed(now)?,
                    Processed::Removed => {
                        self.frames.clear();
                        return Ok(out);
                    }
                }
            }
            ServerMessage::MlsCommitResult { accepted, .. } => {
                if !self.in_flight {
                    return Ok(out);
                }
                self.in_flight = false;
                if *accepted {
                    self.member.commit_accepted()?;
                    self.installed(now)?;
                } else if self.member.epoch().is_some() {
                    // Already cleared when the winner arrived; harmless if not.
                    let _ = self.member.commit_refused();
                }
            }
            ServerMessage::MlsWelcome { welcome, .. } => {
                if self.member.in_group() {
                    return Ok(out);
                }
                let raw = B64.decode(welcome).map_err(|_| GroupError::Base64)?;
                // A Welcome that does not add this participant fails here; it keeps
                // waiting for its own.
                if let Ok(epoch) = self.member.join(&raw) {
                    self.installed(now)?;
                    out.push(ClientMessage::MlsJoined { epoch });
                }
            }
            ServerMessage::MlsCreate {} => self.create(now)?,
            _ => return Ok(out),
        }
        if let Some(c) = self.maybe_commit()? {
            out.push(c);
        }
        Ok(out)
    }

    /// Commit the waiting adds and the departed members' removal, if this member is the
    /// committer (the lowest leaf among members still in the call) and has no commit out.
    fn maybe_commit(&mut self) -> Result<Option<ClientMessage>, GroupError> {
        if self.in_flight || !self.member.in_group() {
            return Ok(None);
        }
        let members = self.member.members();
        let committer = members
            .iter()
            .filter(|(_, id)| !self.departed.contains(id))
            .map(|(leaf, _)| *leaf)
            .min();
        if committer != self.member.leaf_index() {
            return Ok(None);
        }
        let remove: Vec<u32> = members
            .iter()
            .filter(|(_, id)| self.departed.contains(id))
            .map(|(leaf, _)| *leaf)
            .collect();
        let adds: Vec<Vec<u8>> = self.waiting.values().cloned().collect();
        if adds.is_empty() && remove.is_empty() {
            return Ok(None);
        }
        let c = self.member.commit(&adds, &remove)?;
        self.in_flight = true;
        Ok(Some(ClientMessage::MlsCommit {
            commit: B64.encode(&c.commit),
            welcome: c.welcome.map(|w| B64.encode(w)),
        }))
    }

    /// Open the early frames whose epoch has come: (sender, plaintext) each; those kept
    /// longer than [`EARLY_FRAME_WAIT`] are given up (`early_expired`).
    pub fn open_early(&mut self, now: Instant) -> Vec<(Option<String>, Vec<u8>)> {
        let mut opened = Vec::new();
        let mut keep = VecDeque::new();
        for (at, metadata, sealed) in std::mem::take(&mut self.early) {
            let mut out = Vec::new();
            match self.open_into(now, &metadata, &sealed, &mut out) {
                Ok(from) => opened.push((from, out)),
                Err(OpenError::Early) => {
                    // Put back by open_into; keep its original arrival time.
                    if let Some(last) = self.early.pop_back() {
                        if now.saturating_duration_since(at) < EARLY_FRAME_WAIT {
                            keep.push_back((at, last.1, last.2));
                        } else {
                            self.early_expired += 1;
                        }
                    }
                }
                Err(_) => self.early_expired += 1,
            }
        }
        self.early = keep;
        opened
    }

    /// Keys exist and someone else is in the group: media can flow encrypted.
    pub fn keyed(&self) -> bool {
        self.frames.epoch().is_some() && self.member.members().len() >= 2
    }

    pub fn epoch(&self) -> Option<u64> {
        self.member.epoch()
    }

    pub fn verification_code(&self) -> Option<String> {
        self.member.verification_code().ok().map(|c| c.to_string())
    }

    pub fn members(&self) -> Vec<String> {
        self.member.members().into_iter().map(|m| m.1).collect()
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Seal a frame for the group.
    pub fn frames_mut(&mut self) -> &mut GroupFrames {
        &mut self.frames
    }

    /// Open a frame; the sender's participant id and the plaintext range in `out`.
    pub fn open_into(
        &mut self,
        now: Instant,
        metadata: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<String>, OpenError> {
        self.frames.expire(now);
        let opened = match self.frames.receiver_mut().open_into(metadata, sealed, out) {
            Ok(o) => o,
            Err(SframeError::UnknownKid { kid }) => {
                let mask = (1u64 << crate::mls::EPOCH_BITS) - 1;
                let e = kid & mask;
                let behind = self.first_epoch.map(|first| first.wrapping_sub(e) & mask);
                let ahead = self.member.epoch().map(|cur| e.wrapping_sub(cur) & mask);
                return Err(match (behind, ahead) {
                    (Some(d), _) if (1..=128).contains(&d) => OpenError::BeforeJoin(e),
                    (_, Some(d)) if (1..=128).contains(&d) => {
                        if self.early.len() == EARLY_FRAMES {
                            self.early.pop_front();
                            self.early_expired += 1;
                        }
                        self.early
                            .push_back((now, metadata.to_vec(), sealed.to_vec()));
                        OpenError::Early
                    }
                    _ => OpenError::Sframe(SframeError::UnknownKid { kid }),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let leaf = crate::mls::leaf_of_kid(opened.kid);
        let range = opened.plaintext;
        if range.start > 0 || range.end < out.len() {
            let plain = out[range].to_vec();
            *out = plain;
        }
        Ok(self.leaf_owner.get(&leaf).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay's Delivery Service rules, for driving sessions without sockets: the
    /// first commit per epoch wins; KeyPackages go to members; Welcomes to the waiting.
    /// (The relay's own implementation is tested in the relay crate and end to end.)
    struct Ds {
        epoch: u64,
        members: Vec<String>,
        waiting: Vec<String>,
        /// Messages in flight to each participant, in order.
        inbox: HashMap<String, VecDeque<ServerMessage>>,
    }

    impl Ds {
        fn deliver(&mut self, to: &str, m: ServerMessage) {
            self.inbox.entry(to.to_string()).or_default().push_back(m);
        }
        fn handle(&mut self, from: &str, m: ClientMessage) {
            match m {
                ClientMessage::MlsKeyPackage { blob } => {
                    let others: Vec<String> = self
                        .members
                        .iter()
                        .chain(self.waiting.iter())
                        .cloned()
                        .collect();
                    self.waiting.push(from.to_string());
                    for mem in others {
                        self.deliver(
                            &mem,
                            ServerMessage::MlsKeyPackage {
                                from: from.into(),
                                blob: blob.clone(),
                            },
                        );
                    }
                }
                ClientMessage::MlsCommit { commit, welcome } => {
                    let raw = B64.decode(&commit).unwrap();
                    let f = blindrelay_protocol::mls::parse_framing(&raw).unwrap();
                    if f.epoch != self.epoch {
                        self.deliver(
                            from,
                            ServerMessage::MlsCommitResult {
                                epoch: f.epoch,
                                accepted: false,
                            },
                        );
                        return;
                    }
                    self.epoch += 1;
                    self.deliver(
                        from,
                        ServerMessage::MlsCommitResult {
                            epoch: f.epoch,
                            accepted: true,
                        },
                    );
                    let others: Vec<String> = self
                        .members
                        .iter()
                        .chain(self.waiting.iter())
                        .filter(|m| *m != from)
                        .cloned()
                        .collect();
                    for mem in &others {
                        self.deliver(
                            mem,
                            ServerMessage::MlsCommit {
                                from: from.into(),
                                epoch: f.epoch,
                                commit: commit.clone(),
                            },
                        );
                    }
                    if let Some(w) = welcome {
                        for p in self.waiting.clone() {
                            self.deliver(
                                &p,
                                ServerMessage::MlsWelcome {
                                    from: from.into(),
                                    welcome: w.clone(),
                                },
                            );
                        }
                    }
                }
                ClientMessage::MlsJoined { epoch } => {
                    assert!(epoch <= self.epoch);
                    self.waiting.retain(|p| p != from);
                    self.members.push(from.to_string());
                }
                other => panic!("{other:?}"),
            }
        }
        fn leave(&mut self, who: &str) {
            self.members.retain(|m| m != who);
            self.waiting.retain(|m| m != who);
            self.inbox.remove(who);
            for p in self
                .members
                .clone()
                .iter()
                .chain(self.waiting.clone().iter())
            {
                self.deliver(
                    p,
                    ServerMessage::ParticipantLeft {
                        participant: who.into(),
                        reason: "left".into(),
                    },
                );
            }
        }
    }

    /// Run until nothing is in flight, delivering one message at a time to a participant
    /// chosen by `pick` (a deterministic shuffle), so messages interleave differently per
    /// seed.
    fn settle(ds: &mut Ds, s: &mut HashMap<String, GroupSession>, seed: &mut u64, now: Instant) {
        for _ in 0..10_000 {
            let busy: Vec<String> = {
                let mut v: Vec<String> = ds
                    .inbox
                    .iter()
                    .filter(|(_, q)| !q.is_empty())
                    .map(|(k, _)| k.clone())
                    .collect();
                v.sort();
                v
            };
            if busy.is_empty() {
                return;
            }
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let who = &busy[(*seed >> 33) as usize % busy.len()];
            let m = ds
                .inbox
                .get_mut(who)
                .and_then(VecDeque::pop_front)
                .expect("busy");
            let Some(sess) = s.get_mut(who) else { continue };
            for reply in sess.on_message(now, &m).expect("group message") {
                ds.handle(who, reply);
            }
        }
        panic!("did not settle");
    }

    /// Two simultaneous joins plus a leave, in many interleavings: every remaining
    /// participant ends on the same epoch and code, with everyone else in its group, and
    /// opens everyone's frames.
    #[test]
    fn joins_and_a_leave_converge_on_one_epoch() {
        for seed0 in 0..40u64 {
            let mut seed = seed0;
            let now = Instant::now();
            let mut ds = Ds {
                epoch: 0,
                members: vec![],
                waiting: vec![],
                inbox: HashMap::new(),
            };
            let mut s: HashMap<String, GroupSession> = HashMap::new();
            // a creates; b and c join; then d and e join while b leaves.
            for (i, p) in ["a", "b", "c"].iter().enumerate() {
                let mut g = GroupSession::new(p, "call").unwrap();
                let out = g.start(now, i == 0).unwrap();
                if i == 0 {
                    ds.members.push(p.to_string());
                }
                s.insert(p.to_string(), g);
                for m in out {
                    ds.handle(p, m);
                }
                settle(&mut ds, &mut s, &mut seed, now);
            }
            for p in ["d", "e"] {
                let mut g = GroupSession::new(p, "call").unwrap();
                let out = g.start(now, false).unwrap();
                s.insert(p.to_string(), g);
                for m in out {
                    ds.handle(p, m);
                }
            }
            s.remove("b");
            ds.leave("b");
            settle(&mut ds, &mut s, &mut seed, now);
            let epochs: BTreeSet<Option<u64>> = s.values().map(|g| g.epoch()).collect();
            assert_eq!(epochs.len(), 1, "seed {seed0}: {epochs:?}");
            let codes: BTreeSet<Option<String>> =
                s.values().map(|g| g.verification_code()).collect();
            assert_eq!(codes.len(), 1, "seed {seed0}");
            for g in s.values() {
                let mut m = g.members();
                m.sort();
                assert_eq!(m, ["a", "c", "d", "e"], "seed {seed0}");
            }
            let names: Vec<String> = s.keys().cloned().collect();
            for from in &names {
                let sealed = s
                    .get_mut(from)
                    .unwrap()
                    .frames_mut()
                    .seal(b"", from.as_bytes())
                    .unwrap();
                for to in names.iter().filter(|n| *n != from) {
                    let mut out = Vec::new();
                    let who = s
                        .get_mut(to)
                        .unwrap()
                        .open_into(now, b"", &sealed, &mut out)
                        .unwrap();
                    assert_eq!(who.as_deref(), Some(from.as_str()));
                    assert_eq!(out, from.as_bytes());
                }
            }
        }
    }
}
