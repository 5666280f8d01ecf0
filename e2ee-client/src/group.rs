//! A participant's side of a group E2EE call (scheme `mls`): a sans-IO state machine that
//! takes the relay's MLS messages and participant events and returns what to send back,
//! keeping the SFrame keys of the current epoch (and, for a grace period, the previous).
//!
//! Who commits: the member with the lowest leaf index among those still in the call adds
//! every waiting joiner and removes every member whose participant is not in the call
//! (left, or never announced), in one commit. The relay accepts the first commit of each
//! epoch; a member whose commit lost drops it, applies the winner's and, if work is left,
//! commits again on the new epoch. So two joins and a leave at once converge on one epoch
//! however the messages interleave.
//!
//! Nothing the relay says about members is taken on its word ([`crate::roster`]): a
//! KeyPackage is checked when it arrives and a bad one is dropped and counted, so it
//! never reaches (and never blocks) a commit; a commit or Welcome that would add someone
//! the checks refuse is not applied, and this member leaves the group instead of keying
//! media to an unseen member.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use blindrelay_protocol::signal::{ClientMessage, ParticipantInfo, ServerMessage};
use zeroize::Zeroizing;

use crate::mls::{inspect_key_package, GroupFrames, GroupMember, MlsError, Processed};
use crate::roster::{CredentialCheck, MemberIdentity, Refusal, Roster};
use crate::sframe::SframeError;

/// Why a group message could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error(transparent)]
    Mls(#[from] MlsError),
    #[error("blob is not base64")]
    Base64,
}

/// Who this member is in the group, and how it checks the others.
pub struct GroupIdentity {
    /// The user name its token names (shown in everyone's member list).
    pub user: String,
    /// Put in the credential when `key` is the key its `cnf` binds, for members that check
    /// tokens against the issuer.
    pub token: Option<String>,
    /// The Ed25519 identity key (seed, public) to sign with; a fresh one per call if none.
    pub key: Option<(Zeroizing<[u8; 32]>, [u8; 32])>,
    /// The issuer check run on every other member's credential (`--issuer-key`).
    pub check: Option<CredentialCheck>,
}

impl GroupIdentity {
    /// A fresh key, no token in the credential, no issuer check.
    pub fn plain(user: &str) -> Self {
        GroupIdentity {
            user: user.to_string(),
            token: None,
            key: None,
            check: None,
        }
    }
}

/// One participant's group state.
pub struct GroupSession {
    me: String,
    call: String,
    member: GroupMember,
    frames: GroupFrames,
    roster: Roster,
    /// Checked KeyPackages of joiners waiting to be added, by participant id, with their
    /// signature keys.
    waiting: BTreeMap<String, (Vec<u8>, Vec<u8>)>,
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
    /// KeyPackages refused on arrival, by reason.
    pub key_packages_refused: BTreeMap<&'static str, u64>,
    /// The commit or Welcome this member refused to apply: it left the group then.
    pub refused: Option<Refusal>,
}

/// At most this many early frames are kept, each at most [`EARLY_FRAME_WAIT`].
pub const EARLY_FRAMES: usize = 512;
pub const EARLY_FRAME_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// At most this many KeyPackages wait to be committed (the call's participant cap is far
/// lower; one per participant).
pub const MAX_WAITING: usize = 1024;

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
    /// A member-to-be for participant `me` of `call`.
    pub fn new(me: &str, call: &str, id: GroupIdentity) -> Result<Self, GroupError> {
        let credential = MemberIdentity {
            participant: me.to_string(),
            user: id.user.clone(),
            token: id.token.clone(),
        }
        .to_bytes();
        let member = match &id.key {
            Some((seed, public)) => GroupMember::with_key(&credential, seed, public)?,
            None => GroupMember::new(&credential)?,
        };
        Ok(GroupSession {
            me: me.to_string(),
            call: call.to_string(),
            member,
            frames: GroupFrames::new(),
            roster: Roster::new(me, &id.user, id.check),
            waiting: BTreeMap::new(),
            in_flight: false,
            leaf_owner: HashMap::new(),
            epochs_installed: 0,
            first_epoch: None,
            early: VecDeque::new(),
            early_expired: 0,
            key_packages_refused: BTreeMap::new(),
            refused: None,
        })
    }

    /// After `joined` (with the participants it listed): the first participant creates
    /// the group; a later one publishes its KeyPackage and waits for a Welcome.
    pub fn start(
        &mut self,
        now: Instant,
        participants: &[ParticipantInfo],
    ) -> Result<Vec<ClientMessage>, GroupError> {
        for p in participants {
            self.roster.joined(&p.participant, &p.user);
        }
        if participants.is_empty() {
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
        let mut present = Vec::new();
        for m in self.member.members() {
            let who = MemberIdentity::parse(&m.identity)
                .map(|i| i.participant)
                .unwrap_or_default();
            self.leaf_owner.insert(m.leaf, who.clone());
            present.push(who);
        }
        self.frames.install(now, &self.member.epoch_keys()?);
        self.epochs_installed += 1;
        if self.first_epoch.is_none() {
            self.first_epoch = self.member.epoch();
        }
        self.waiting.retain(|p, _| !present.contains(p));
        Ok(())
    }

    /// Count a KeyPackage refused on arrival.
    fn refuse_key_package(&mut self, r: &Refusal) {
        tracing::warn!(reason = r.reason(), "KeyPackage refused: {r}");
        *self.key_packages_refused.entry(r.reason()).or_default() += 1;
    }

    /// Check a KeyPackage that the relay says comes from `from`; the checked signature
    /// key on success.
    fn check_key_package(&self, from: &str, kp: &[u8]) -> Result<Vec<u8>, Refusal> {
        let c = inspect_key_package(kp).map_err(|e| Refusal::Invalid(e.to_string()))?;
        self.roster.check(&c, Some(from))?;
        if !self.roster.is_present(from) {
            return Err(Refusal::NotInCall(from.to_string()));
        }
        let members = self.member.members();
        for m in &members {
            let named = MemberIdentity::parse(&m.identity).map(|i| i.participant);
            if named.as_deref() == Ok(from) {
                return Err(Refusal::AlreadyMember(from.to_string()));
            }
        }
        let key_taken = members.iter().any(|m| m.signature_key == c.signature_key)
            || c.signature_key == self.member.signature_key()
            || self
                .waiting
                .iter()
                .any(|(p, (_, k))| p != from && *k == c.signature_key);
        if key_taken {
            return Err(Refusal::DuplicateKey);
        }
        Ok(c.signature_key)
    }

    /// Leave the group rather than apply a commit or Welcome the roster checks refuse.
    fn refuse_group(&mut self, r: Refusal) {
        tracing::warn!(reason = r.reason(), "group change refused: {r}");
        self.member.leave();
        self.frames.clear();
        self.waiting.clear();
        self.in_flight = false;
        self.refused = Some(r);
    }

    /// Handle one message from the relay; returns what to send.
    pub fn on_message(
        &mut self,
        now: Instant,
        msg: &ServerMessage,
    ) -> Result<Vec<ClientMessage>, GroupError> {
        let mut out = Vec::new();
        if self.refused.is_some() {
            return Ok(out);
        }
        match msg {
            ServerMessage::ParticipantJoined { participant } => {
                self.roster
                    .joined(&participant.participant, &participant.user);
            }
            ServerMessage::MlsKeyPackage { from, blob } => {
                let Ok(kp) = B64.decode(blob) else {
                    self.refuse_key_package(&Refusal::Invalid("not base64".into()));
                    return Ok(out);
                };
                match self.check_key_package(from, &kp) {
                    Ok(key)
                        if self.waiting.len() < MAX_WAITING || self.waiting.contains_key(from) =>
                    {
                        self.waiting.insert(from.clone(), (kp, key));
                    }
                    Ok(_) => self.refuse_key_package(&Refusal::Invalid("too many waiting".into())),
                    Err(r) => self.refuse_key_package(&r),
                }
            }
            ServerMessage::ParticipantLeft { participant, .. } => {
                self.waiting.remove(participant);
                self.roster.left(participant);
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
                let roster = &self.roster;
                let checked = self
                    .member
                    .process_commit(&raw, |after| roster.check_all(after).map(|_| ()));
                match checked {
                    Ok(Processed::NewEpoch(_)) => self.installed(now)?,
                    Ok(Processed::Removed) => {
                        self.frames.clear();
                        return Ok(out);
                    }
                    Err(MlsError::Refused(r)) => {
                        self.refuse_group(r);
                        return Ok(out);
                    }
                    Err(e) => return Err(e.into()),
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
                let roster = &self.roster;
                match self
                    .member
                    .join(&raw, |all| roster.check_all(all).map(|_| ()))
                {
                    Ok(epoch) => {
                        self.installed(now)?;
                        out.push(ClientMessage::MlsJoined { epoch });
                    }
                    Err(MlsError::Refused(r)) => {
                        self.refuse_group(r);
                        return Ok(out);
                    }
                    // A Welcome that does not add this participant fails here; it keeps
                    // waiting for its own.
                    Err(_) => {}
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

    /// Commit the waiting adds and the removal of every member whose participant is not
    /// in the call, if this member is the committer (the lowest leaf among members still
    /// in the call) and has no commit out. KeyPackages were checked on arrival; if the
    /// library still refuses the commit, they are dropped (counted) and the removals go
    /// ahead alone, so one bad KeyPackage never blocks the group.
    fn maybe_commit(&mut self) -> Result<Option<ClientMessage>, GroupError> {
        if self.in_flight || !self.member.in_group() {
            return Ok(None);
        }
        let members = self.member.members();
        let in_call = |m: &crate::mls::MemberCred| {
            MemberIdentity::parse(&m.identity).is_ok_and(|i| self.roster.is_present(&i.participant))
        };
        let committer = members.iter().filter(|m| in_call(m)).map(|m| m.leaf).min();
        if committer != self.member.leaf_index() {
            return Ok(None);
        }
        let remove: Vec<u32> = members
            .iter()
            .filter(|m| !in_call(m))
            .map(|m| m.leaf)
            .collect();
        let adds: Vec<Vec<u8>> = self.waiting.values().map(|(kp, _)| kp.clone()).collect();
        if adds.is_empty() && remove.is_empty() {
            return Ok(None);
        }
        let c = match self.member.commit(&adds, &remove) {
            Ok(c) => c,
            Err(e) if !adds.is_empty() => {
                let r = Refusal::Invalid(e.to_string());
                for _ in std::mem::take(&mut self.waiting) {
                    self.refuse_key_package(&r);
                }
                if remove.is_empty() {
                    return Ok(None);
                }
                self.member.commit(&[], &remove)?
            }
            Err(e) => return Err(e.into()),
        };
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

    /// The participant ids the group's credentials name.
    pub fn members(&self) -> Vec<String> {
        self.identities()
            .into_iter()
            .map(|i| i.participant)
            .collect()
    }

    /// The member list people compare beside the code: the user names the credentials
    /// carry, sorted (checked against the relay's announcements as they entered).
    pub fn member_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .identities()
            .iter()
            .map(MemberIdentity::label)
            .collect();
        v.sort();
        v
    }

    fn identities(&self) -> Vec<MemberIdentity> {
        self.member
            .members()
            .iter()
            .map(|m| {
                MemberIdentity::parse(&m.identity).unwrap_or_else(|_| MemberIdentity {
                    participant: String::from_utf8_lossy(&m.identity).into_owned(),
                    user: "?".into(),
                    token: None,
                })
            })
            .collect()
    }

    /// KeyPackages refused on arrival, all reasons together.
    pub fn key_packages_refused_total(&self) -> u64 {
        self.key_packages_refused.values().sum()
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
    use std::collections::BTreeSet;

    fn info(p: &str) -> ParticipantInfo {
        ParticipantInfo {
            participant: p.into(),
            user: format!("user-{p}"),
            tenant: "t".into(),
            role: "user".into(),
        }
    }

    /// The relay's Delivery Service rules, for driving sessions without sockets: the
    /// first commit per epoch wins; KeyPackages go to members; Welcomes to the waiting;
    /// joins and leaves are announced. (The relay's own implementation is tested in the
    /// relay crate and end to end.)
    struct Ds {
        epoch: u64,
        /// Everyone in the call, in join order.
        present: Vec<String>,
        members: Vec<String>,
        waiting: Vec<String>,
        /// Messages in flight to each participant, in order.
        inbox: HashMap<String, VecDeque<ServerMessage>>,
    }

    impl Ds {
        fn new() -> Ds {
            Ds {
                epoch: 0,
                present: vec![],
                members: vec![],
                waiting: vec![],
                inbox: HashMap::new(),
            }
        }
        fn deliver(&mut self, to: &str, m: ServerMessage) {
            self.inbox.entry(to.to_string()).or_default().push_back(m);
        }
        /// `who` joins the call: the others are told, and `who` gets their list.
        fn join(&mut self, who: &str) -> Vec<ParticipantInfo> {
            let others: Vec<ParticipantInfo> = self.present.iter().map(|p| info(p)).collect();
            for p in self.present.clone() {
                self.deliver(
                    &p,
                    ServerMessage::ParticipantJoined {
                        participant: info(who),
                    },
                );
            }
            self.present.push(who.to_string());
            if others.is_empty() {
                self.members.push(who.to_string());
            }
            others
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
            self.present.retain(|m| m != who);
            self.members.retain(|m| m != who);
            self.waiting.retain(|m| m != who);
            self.inbox.remove(who);
            for p in self.present.clone() {
                self.deliver(
                    &p,
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

    fn session(p: &str) -> GroupSession {
        GroupSession::new(p, "call", GroupIdentity::plain(&format!("user-{p}"))).unwrap()
    }

    /// `p` joins: announced, starts its session, publishes its KeyPackage (not settled).
    fn arrive(ds: &mut Ds, s: &mut HashMap<String, GroupSession>, p: &str, now: Instant) {
        let mut g = session(p);
        let others = ds.join(p);
        let out = g.start(now, &others).unwrap();
        s.insert(p.to_string(), g);
        for m in out {
            ds.handle(p, m);
        }
    }

    /// Everyone left in `s` is on one epoch and code, lists exactly `names` (as users),
    /// and opens everyone's frames.
    fn assert_one_group(s: &mut HashMap<String, GroupSession>, names: &[&str], now: Instant) {
        let epochs: BTreeSet<Option<u64>> = s.values().map(|g| g.epoch()).collect();
        assert_eq!(epochs.len(), 1, "{epochs:?}");
        let codes: BTreeSet<Option<String>> = s.values().map(|g| g.verification_code()).collect();
        assert_eq!(codes.len(), 1);
        let want: Vec<String> = names.iter().map(|n| format!("user-{n}")).collect();
        for g in s.values() {
            let mut m = g.members();
            m.sort();
            assert_eq!(m, names);
            assert_eq!(g.member_names(), want);
        }
        let ids: Vec<String> = s.keys().cloned().collect();
        for from in &ids {
            let sealed = s
                .get_mut(from)
                .unwrap()
                .frames_mut()
                .seal(b"", from.as_bytes())
                .unwrap();
            for to in ids.iter().filter(|n| *n != from) {
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

    /// Two simultaneous joins plus a leave, in many interleavings: every remaining
    /// participant ends on the same epoch and code, with everyone else in its group, and
    /// opens everyone's frames.
    #[test]
    fn joins_and_a_leave_converge_on_one_epoch() {
        for seed0 in 0..40u64 {
            let mut seed = seed0;
            let now = Instant::now();
            let mut ds = Ds::new();
            let mut s: HashMap<String, GroupSession> = HashMap::new();
            // a creates; b and c join; then d and e join while b leaves.
            for p in ["a", "b", "c"] {
                arrive(&mut ds, &mut s, p, now);
                settle(&mut ds, &mut s, &mut seed, now);
            }
            for p in ["d", "e"] {
                arrive(&mut ds, &mut s, p, now);
            }
            s.remove("b");
            ds.leave("b");
            settle(&mut ds, &mut s, &mut seed, now);
            assert_one_group(&mut s, &["a", "c", "d", "e"], now);
        }
    }

    /// A KeyPackage made by someone outside the call (a real one, from another call).
    fn outsider_key_package(participant: &str, user: &str) -> String {
        let m = GroupSession::new(participant, "other-call", GroupIdentity::plain(user)).unwrap();
        B64.encode(m.member.key_package().unwrap())
    }

    /// What a lying relay can hand the committer, each refused on arrival and counted by
    /// reason; none reaches a commit, and a real joiner after them is still added.
    #[test]
    fn injected_key_packages_are_refused_and_never_freeze_the_group() {
        let now = Instant::now();
        let mut seed = 7;
        let mut ds = Ds::new();
        let mut s: HashMap<String, GroupSession> = HashMap::new();
        for p in ["a", "b"] {
            arrive(&mut ds, &mut s, p, now);
            settle(&mut ds, &mut s, &mut seed, now);
        }
        let b_kp = s["b"].member.key_package().unwrap();
        let attacks: Vec<(&str, String, &str)> = vec![
            // An outsider's real KeyPackage under a name never announced.
            (
                "mallory",
                outsider_key_package("mallory", "user-mallory"),
                "unannounced",
            ),
            // The same under a member's name.
            (
                "b",
                outsider_key_package("mallory", "user-mallory"),
                "not_the_sender",
            ),
            // A KeyPackage naming a ghost, sent as an announced participant.
            (
                "a",
                outsider_key_package("p-ghost", "user-a"),
                "not_the_sender",
            ),
            // A member's own KeyPackage again: already in the group.
            ("b", B64.encode(&b_kp), "already_member"),
            // Bytes that are no KeyPackage at all.
            ("b", B64.encode(b"\x00\x01garbage"), "invalid"),
        ];
        for (from, blob, reason) in &attacks {
            let before = s["a"]
                .key_packages_refused
                .get(reason)
                .copied()
                .unwrap_or(0);
            let out = s
                .get_mut("a")
                .unwrap()
                .on_message(
                    now,
                    &ServerMessage::MlsKeyPackage {
                        from: (*from).into(),
                        blob: blob.clone(),
                    },
                )
                .unwrap();
            assert!(out.is_empty(), "{reason}: nothing to commit: {out:?}");
            assert_eq!(s["a"].key_packages_refused[reason], before + 1, "{reason}");
        }
        assert_eq!(s["a"].key_packages_refused_total(), attacks.len() as u64);
        // A later real joiner is added.
        arrive(&mut ds, &mut s, "c", now);
        settle(&mut ds, &mut s, &mut seed, now);
        assert_one_group(&mut s, &["a", "b", "c"], now);
        // A KeyPackage whose user is not the one announced for its participant.
        ds.join("d");
        let fake_d = outsider_key_package("d", "user-ann");
        settle(&mut ds, &mut s, &mut seed, now);
        s.get_mut("a")
            .unwrap()
            .on_message(
                now,
                &ServerMessage::MlsKeyPackage {
                    from: "d".into(),
                    blob: fake_d,
                },
            )
            .unwrap();
        assert_eq!(s["a"].key_packages_refused["user_mismatch"], 1);
    }

    /// A member whose participant left is removed at the next commit and cannot open
    /// what is sealed after it.
    #[test]
    fn a_member_who_left_is_removed_and_opens_nothing_after() {
        let now = Instant::now();
        let mut seed = 3;
        let mut ds = Ds::new();
        let mut s: HashMap<String, GroupSession> = HashMap::new();
        for p in ["a", "b", "c"] {
            arrive(&mut ds, &mut s, p, now);
            settle(&mut ds, &mut s, &mut seed, now);
        }
        let mut c = s.remove("c").unwrap();
        ds.leave("c");
        settle(&mut ds, &mut s, &mut seed, now);
        assert_one_group(&mut s, &["a", "b"], now);
        let sealed = s
            .get_mut("a")
            .unwrap()
            .frames_mut()
            .seal(b"", b"x")
            .unwrap();
        let later = now + crate::mls::PREVIOUS_EPOCH_GRACE * 2;
        assert!(c.open_into(later, b"", &sealed, &mut Vec::new()).is_err());
    }

    /// A member that receives a commit adding someone never announced to it does not
    /// apply it: it counts nothing as keyed and leaves the group.
    #[test]
    fn a_commit_adding_an_unannounced_member_is_refused() {
        let now = Instant::now();
        let mut seed = 11;
        let mut ds = Ds::new();
        let mut s: HashMap<String, GroupSession> = HashMap::new();
        for p in ["a", "b"] {
            arrive(&mut ds, &mut s, p, now);
            settle(&mut ds, &mut s, &mut seed, now);
        }
        // a (the committer) adds an outsider b never heard of: a lying relay told only a.
        let kp = B64
            .decode(outsider_key_package("mallory", "user-mallory"))
            .unwrap();
        let a = s.get_mut("a").unwrap();
        let c = a.member.commit(&[kp], &[]).unwrap();
        a.member.commit_accepted().unwrap();
        let b = s.get_mut("b").unwrap();
        let epoch = b.epoch().unwrap();
        let out = b
            .on_message(
                now,
                &ServerMessage::MlsCommit {
                    from: "a".into(),
                    epoch,
                    commit: B64.encode(&c.commit),
                },
            )
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(b.refused.as_ref().map(Refusal::reason), Some("unannounced"));
        assert!(!b.keyed(), "no keys shared with an unseen member");
        assert_eq!(b.epoch(), None);
        // A Welcome into that group is refused by a joiner too.
        ds.join("d");
        let mut d = session("d");
        let others = vec![info("a"), info("b")];
        let kp_d = match &d.start(now, &others).unwrap()[0] {
            ClientMessage::MlsKeyPackage { blob } => B64.decode(blob).unwrap(),
            m => panic!("{m:?}"),
        };
        let a = s.get_mut("a").unwrap();
        let w = a.member.commit(&[kp_d], &[]).unwrap();
        a.member.commit_accepted().unwrap();
        let out = d
            .on_message(
                now,
                &ServerMessage::MlsWelcome {
                    from: "a".into(),
                    welcome: B64.encode(w.welcome.unwrap()),
                },
            )
            .unwrap();
        assert!(out.is_empty(), "no mls_joined: {out:?}");
        assert_eq!(d.refused.as_ref().map(Refusal::reason), Some("unannounced"));
        assert_eq!(d.epoch(), None);
    }
}
