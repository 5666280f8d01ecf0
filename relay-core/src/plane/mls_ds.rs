//! The relay as MLS Delivery Service for one group-E2EE call: it orders commits (the
//! first of each epoch wins) and hands each Welcome to the waiting participants it adds.
//! It reads only what MLS messages show in the clear, and holds no keys.
//!
//! An honest relay so defends the members against a malicious participant: only a member
//! commits; only a participant a Welcome was delivered to becomes a member, for the epoch
//! that Welcome starts; a KeyPackage that does not parse never reaches a member; and the
//! state lives while anyone is in the call, so someone is always told to (re)create the
//! group.
//!
//! [`MlsDs`] decides and the plane delivers: each method returns who gets what, or an
//! [`MlsRefused`] for the sender. It knows participants only by [`PeerId`]; the plane
//! charges the sender's broadcast budget and turns peers into connections.

use crate::report::MlsRefusal;
use crate::PeerId;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use blindrelay_protocol::mls;
use std::collections::{BTreeMap, BTreeSet};

/// Welcomes remembered per waiting participant: an honest group sends one.
pub(super) const WELCOMES_KEPT: usize = 8;

/// One group-E2EE call's Delivery Service state.
#[derive(Debug, Default)]
pub(super) struct MlsDs {
    /// The epoch whose commit is awaited.
    epoch: u64,
    group_id: Option<Vec<u8>>,
    /// In the group: its creator, and every joiner that reported `mls_joined`.
    members: BTreeSet<PeerId>,
    /// Waiting for a Welcome (until `mls_joined`), with their KeyPackage (at most one per
    /// participant).
    waiting: BTreeMap<PeerId, WaitingKeyPackage>,
    /// Delivered a Welcome: the epochs those Welcomes start (the last few). Only these
    /// participants may say `mls_joined`, and only for one of these epochs.
    welcomed: BTreeMap<PeerId, BTreeSet<u64>>,
}

/// A waiting joiner's KeyPackage, as sent, and what a Welcome adding it will name.
#[derive(Debug)]
pub(super) struct WaitingKeyPackage {
    blob: String,
    reference: mls::KeyPackageRef,
    signature_key: Vec<u8>,
}

/// What is wrong with an MLS blob.
#[derive(Debug, thiserror::Error)]
pub(super) enum BlobError {
    #[error("not base64")]
    Base64,
    #[error(transparent)]
    Mls(#[from] mls::MlsFramingError),
    #[error("not an MLS commit")]
    NotCommit,
}

/// Why the Delivery Service refused a participant's MLS message: sent to it as
/// `mls_refused` with this text, and counted by [`MlsRefusal`].
#[derive(Debug, thiserror::Error)]
pub(super) enum MlsRefused {
    #[error("no Welcome starting epoch {0} was delivered to this participant: it is not a member")]
    JoinWithoutWelcome(u64),
    #[error("only a member of the group commits")]
    CommitFromNonMember,
    #[error("bad KeyPackage: {0}")]
    BadKeyPackage(BlobError),
    #[error("another waiting participant published this KeyPackage or signature key")]
    DuplicateKeyPackage,
    #[error("already in the group")]
    KeyPackageFromMember,
    #[error("bad commit: {0}")]
    BadCommit(BlobError),
    #[error("a commit for another MLS group")]
    WrongGroup,
    #[error("bad Welcome: {0}")]
    BadWelcome(BlobError),
}

impl MlsRefused {
    pub(super) fn reason(&self) -> MlsRefusal {
        match self {
            MlsRefused::JoinWithoutWelcome(_) => MlsRefusal::JoinWithoutWelcome,
            MlsRefused::CommitFromNonMember => MlsRefusal::CommitFromNonMember,
            MlsRefused::BadKeyPackage(_) => MlsRefusal::BadKeyPackage,
            MlsRefused::DuplicateKeyPackage => MlsRefusal::DuplicateKeyPackage,
            MlsRefused::KeyPackageFromMember => MlsRefusal::KeyPackageFromMember,
            MlsRefused::BadCommit(_) => MlsRefusal::BadCommit,
            MlsRefused::WrongGroup => MlsRefusal::WrongGroup,
            MlsRefused::BadWelcome(_) => MlsRefusal::BadWelcome,
        }
    }
}

fn base64_blob(b: &str) -> Result<Vec<u8>, BlobError> {
    BASE64.decode(b.as_bytes()).map_err(|_| BlobError::Base64)
}

/// A member's commit, decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum CommitOutcome {
    /// The first commit of `epoch`: the group is at the next epoch. The commit goes to
    /// `to` (every other member and waiting joiner), its Welcome to `welcomed`.
    Accepted {
        epoch: u64,
        to: Vec<PeerId>,
        welcomed: Vec<PeerId>,
    },
    /// Not the awaited epoch (another commit won it): the committer is told, nobody
    /// else hears of it.
    Stale { epoch: u64 },
}

/// What a participant's leaving means for the group.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LeftOutcome {
    /// Members remain: nothing to tell.
    Continues,
    /// Nobody is left in the call: the state goes.
    Ended,
    /// No member is left: `creator` (re)creates the group and is handed the waiting
    /// KeyPackages, by their owners.
    Recreate {
        creator: PeerId,
        key_packages: Vec<(PeerId, String)>,
    },
}

impl MlsDs {
    /// The epoch whose commit is awaited.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A group whose creator is `first`, the call's first joiner (epoch 0).
    pub(super) fn created_by(first: PeerId) -> MlsDs {
        let mut ds = MlsDs::default();
        ds.members.insert(first);
        ds
    }

    #[cfg(test)]
    pub(super) fn is_member(&self, peer: PeerId) -> bool {
        self.members.contains(&peer)
    }

    /// The KeyPackage `peer` waits with, as sent.
    #[cfg(test)]
    pub(super) fn waiting_blob(&self, peer: PeerId) -> Option<&str> {
        self.waiting.get(&peer).map(|w| w.blob.as_str())
    }

    /// Everyone the DS knows: members and waiting joiners.
    pub(super) fn participants(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.members.iter().chain(self.waiting.keys()).copied()
    }

    fn others(&self, peer: PeerId) -> Vec<PeerId> {
        self.participants().filter(|p| *p != peer).collect()
    }

    /// Check `peer`'s KeyPackage: it parses, its KeyPackageRef is computed now (so one
    /// that does not parse never reaches a member), `peer` is not a member, and no other
    /// waiting participant published it or its signing key (the same one under two
    /// participants could only fail a commit adding both, or be welcomed for the wrong
    /// one). Nothing is kept yet: see [`MlsDs::add_key_package`].
    pub(super) fn check_key_package(
        &self,
        peer: PeerId,
        blob: &str,
    ) -> Result<WaitingKeyPackage, MlsRefused> {
        let (reference, signature_key) = base64_blob(blob)
            .and_then(|raw| {
                let kp = mls::parse_key_package(&raw)?;
                Ok((kp.reference()?, kp.signature_key.to_vec()))
            })
            .map_err(MlsRefused::BadKeyPackage)?;
        if self.members.contains(&peer) {
            return Err(MlsRefused::KeyPackageFromMember);
        }
        if self.waiting.iter().any(|(p, w)| {
            *p != peer && (w.reference == reference || w.signature_key == signature_key)
        }) {
            return Err(MlsRefused::DuplicateKeyPackage);
        }
        Ok(WaitingKeyPackage {
            blob: blob.to_string(),
            reference,
            signature_key,
        })
    }

    /// `peer` waits with `kp` (replacing its earlier one). Who gets it: the members, and
    /// those waiting too, since whoever is in the group by the time it commits may be the
    /// committer.
    pub(super) fn add_key_package(&mut self, peer: PeerId, kp: WaitingKeyPackage) -> Vec<PeerId> {
        self.waiting.insert(peer, kp);
        self.others(peer)
    }

    /// `peer`'s commit (base64), with the Welcome it adds joiners with. Only clear parts
    /// are read: the commit's group id, epoch and content type, the Welcome's refs. The
    /// Welcome is checked before anything is accepted: a commit whose Welcome does not
    /// parse would move the group on without its joiners.
    pub(super) fn commit(
        &mut self,
        peer: PeerId,
        commit: &str,
        welcome: Option<&str>,
    ) -> Result<CommitOutcome, MlsRefused> {
        let raw = base64_blob(commit).map_err(MlsRefused::BadCommit)?;
        let framing = match mls::parse_framing(&raw) {
            Ok(f) if f.content_type == mls::CONTENT_COMMIT => f,
            Ok(_) => return Err(MlsRefused::BadCommit(BlobError::NotCommit)),
            Err(e) => return Err(MlsRefused::BadCommit(e.into())),
        };
        if !self.members.contains(&peer) {
            return Err(MlsRefused::CommitFromNonMember);
        }
        if self
            .group_id
            .as_deref()
            .is_some_and(|g| g != framing.group_id)
        {
            return Err(MlsRefused::WrongGroup);
        }
        let epoch = framing.epoch;
        if epoch != self.epoch {
            return Ok(CommitOutcome::Stale { epoch });
        }
        let welcomed: Vec<PeerId> = match welcome.map(|w| {
            let raw = base64_blob(w)?;
            let parsed = mls::parse_welcome(&raw)?;
            let named: BTreeSet<&[u8]> = parsed.new_members().collect();
            Ok::<_, BlobError>(
                self.waiting
                    .iter()
                    .filter(|(_, w)| named.contains(&w.reference[..]))
                    .map(|(p, _)| *p)
                    .collect(),
            )
        }) {
            None => Vec::new(),
            Some(Ok(w)) => w,
            Some(Err(e)) => return Err(MlsRefused::BadWelcome(e)),
        };
        self.group_id
            .get_or_insert_with(|| framing.group_id.to_vec());
        self.epoch += 1;
        for p in &welcomed {
            let epochs = self.welcomed.entry(*p).or_default();
            epochs.insert(self.epoch);
            while epochs.len() > WELCOMES_KEPT {
                epochs.pop_first();
            }
        }
        // Commits go to those waiting as well: one accepted between a joiner's Welcome
        // and its `mls_joined` must reach it (it ignores those from before its epoch).
        Ok(CommitOutcome::Accepted {
            epoch,
            to: self.others(peer),
            welcomed,
        })
    }

    /// A waiting joiner is in the group now: only if a Welcome starting that epoch was
    /// delivered to it. (A participant that merely claims membership could otherwise get
    /// a garbage commit accepted as the epoch's, and freeze the real members there.)
    pub(super) fn joined(&mut self, peer: PeerId, epoch: u64) -> Result<(), MlsRefused> {
        let welcomed = self.welcomed.get(&peer).is_some_and(|e| e.contains(&epoch));
        if !welcomed || self.members.contains(&peer) {
            return Err(MlsRefused::JoinWithoutWelcome(epoch));
        }
        self.welcomed.remove(&peer);
        self.waiting.remove(&peer);
        self.members.insert(peer);
        Ok(())
    }

    /// `peer` left the call; `first` is the earliest participant still in it, if any. If
    /// no member of the group is left, `first` (whether or not its KeyPackage arrived)
    /// starts the group anew and gets the waiting KeyPackages. The state goes with the
    /// call's last participant, so a later joiner is never left without a group to be
    /// added to.
    pub(super) fn left(&mut self, peer: PeerId, first: Option<PeerId>) -> LeftOutcome {
        self.members.remove(&peer);
        self.waiting.remove(&peer);
        self.welcomed.remove(&peer);
        if !self.members.is_empty() {
            return LeftOutcome::Continues;
        }
        let Some(first) = first else {
            return LeftOutcome::Ended;
        };
        self.waiting.remove(&first);
        // Welcomes into the old group are void: a joiner welcomed but not yet joined is
        // added again (its KeyPackage stays waiting).
        self.welcomed.clear();
        self.members.insert(first);
        self.epoch = 0;
        self.group_id = None;
        LeftOutcome::Recreate {
            creator: first,
            key_packages: self
                .waiting
                .iter()
                .map(|(p, w)| (*p, w.blob.clone()))
                .collect(),
        }
    }

    /// Its own bounds: members and waiting joiners are apart, only waiting joiners are
    /// welcomed, each with at most [`WELCOMES_KEPT`] epochs, and `participants` (the
    /// call's size) bounds the waiting.
    pub(super) fn check(&self, participants: usize) -> Result<(), String> {
        if let Some(p) = self.waiting.keys().find(|p| self.members.contains(p)) {
            return Err(format!("mls: peer {p} both member and waiting"));
        }
        if self.waiting.len() > participants {
            return Err(format!(
                "mls: {} waiting in a call of {participants}",
                self.waiting.len()
            ));
        }
        for (p, epochs) in &self.welcomed {
            if epochs.len() > WELCOMES_KEPT {
                return Err(format!("mls: peer {p} has {} welcomes", epochs.len()));
            }
            if !self.waiting.contains_key(p) {
                return Err(format!("mls: peer {p} welcomed but not waiting"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The Delivery Service alone: real KeyPackages, commits and Welcomes (openmls).
    use super::*;
    use crate::plane::tests::{commit_b64, real_mls::Member};

    fn b64(b: &[u8]) -> String {
        BASE64.encode(b)
    }

    #[test]
    fn key_packages_are_checked_before_they_are_kept() {
        let mut ds = MlsDs::created_by(1);
        let (a, b) = (Member::new("a"), Member::new("b"));
        assert!(matches!(
            ds.check_key_package(2, "not base64!"),
            Err(MlsRefused::BadKeyPackage(BlobError::Base64))
        ));
        assert!(matches!(
            ds.check_key_package(2, &b64(b"\x00\x01garbage")),
            Err(MlsRefused::BadKeyPackage(BlobError::Mls(_)))
        ));
        let kp_a = b64(&a.key_package());
        assert!(matches!(
            ds.check_key_package(1, &kp_a),
            Err(MlsRefused::KeyPackageFromMember)
        ));
        let kp = ds.check_key_package(2, &kp_a).expect("a good KeyPackage");
        // Nothing kept until added; then the member gets it.
        assert_eq!(ds.waiting_blob(2), None);
        assert_eq!(ds.add_key_package(2, kp), [1]);
        // The same KeyPackage under another participant is refused; its owner may
        // send it again; another's goes to the member and the other waiting joiner.
        assert!(matches!(
            ds.check_key_package(3, &kp_a),
            Err(MlsRefused::DuplicateKeyPackage)
        ));
        ds.check_key_package(2, &kp_a).expect("its owner again");
        let kp = ds
            .check_key_package(3, &b64(&b.key_package()))
            .expect("another");
        assert_eq!(ds.add_key_package(3, kp), [1, 2]);
        ds.check(3).expect("within bounds");
        assert!(ds.check(1).is_err(), "two waiting in a call of one");
    }

    #[test]
    fn the_first_commit_of_an_epoch_wins_and_only_the_welcomed_join() {
        let mut ds = MlsDs::created_by(1);
        let mut alice = Member::new("a");
        alice.create(b"group-1");
        let (bob, carol) = (Member::new("b"), Member::new("c"));
        let kp_b = bob.key_package();
        for (p, kp) in [(2, &kp_b), (3, &carol.key_package())] {
            let kp = ds.check_key_package(p, &b64(kp)).expect("good");
            ds.add_key_package(p, kp);
        }
        // Only a member commits.
        let (commit, welcome) = alice.commit(&[kp_b]);
        let welcome = welcome.expect("a Welcome for bob");
        assert!(matches!(
            ds.commit(2, &b64(&commit), None),
            Err(MlsRefused::CommitFromNonMember)
        ));
        assert!(matches!(
            ds.commit(1, &b64(&commit), Some("%%")),
            Err(MlsRefused::BadWelcome(BlobError::Base64))
        ));
        assert_eq!(ds.epoch(), 0, "a refused commit changes nothing");
        // Bob is welcomed, carol (not named) is not; both get the commit.
        assert_eq!(
            ds.commit(1, &b64(&commit), Some(&b64(&welcome)))
                .expect("accepted"),
            CommitOutcome::Accepted {
                epoch: 0,
                to: vec![2, 3],
                welcomed: vec![2],
            }
        );
        assert_eq!(ds.epoch(), 1);
        // A second commit for epoch 0 lost the race; one for another group is refused.
        assert_eq!(
            ds.commit(1, &commit_b64(b"group-1", 0), None)
                .expect("read"),
            CommitOutcome::Stale { epoch: 0 }
        );
        assert!(matches!(
            ds.commit(1, &commit_b64(b"group-2", 1), None),
            Err(MlsRefused::WrongGroup)
        ));
        // Only the welcomed joiner, for the epoch its Welcome starts, becomes a member.
        assert!(matches!(
            ds.joined(3, 1),
            Err(MlsRefused::JoinWithoutWelcome(1))
        ));
        assert!(ds.joined(2, 0).is_err(), "not the epoch its Welcome starts");
        ds.joined(2, 1).expect("welcomed into epoch 1");
        assert!(ds.is_member(2));
        assert!(ds.joined(2, 1).is_err(), "once");
        ds.check(3).expect("within bounds");
    }

    #[test]
    fn when_the_last_member_leaves_the_earliest_left_recreates_the_group() {
        let mut ds = MlsDs::created_by(1);
        let (b, c) = (Member::new("b"), Member::new("c"));
        let kp_c = b64(&c.key_package());
        for (p, kp) in [(2, b64(&b.key_package())), (3, kp_c.clone())] {
            let kp = ds.check_key_package(p, &kp).expect("good");
            ds.add_key_package(p, kp);
        }
        ds.commit(1, &commit_b64(b"g", 0), None).expect("accepted");
        assert_eq!(ds.epoch(), 1);
        // A waiting joiner leaving changes nothing for the members.
        assert_eq!(ds.left(3, Some(1)), LeftOutcome::Continues);
        let kp = ds.check_key_package(3, &kp_c).expect("back");
        ds.add_key_package(3, kp);
        // The creator leaves: participant 2 (first left) recreates the group at epoch 0
        // and gets the KeyPackages still waiting (not its own).
        assert_eq!(
            ds.left(1, Some(2)),
            LeftOutcome::Recreate {
                creator: 2,
                key_packages: vec![(3, kp_c)],
            }
        );
        assert!(ds.is_member(2));
        assert_eq!(ds.epoch(), 0);
        // A commit of the new group (another group id) is its own now.
        ds.commit(2, &commit_b64(b"h", 0), None)
            .expect("a new group");
        ds.check(2).expect("within bounds");
        // The last one out ends it.
        assert_eq!(ds.left(3, Some(2)), LeftOutcome::Continues);
        assert_eq!(ds.left(2, None), LeftOutcome::Ended);
    }
}
