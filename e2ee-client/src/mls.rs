//! Group E2EE keys from MLS (RFC 9420, through `openmls`): one MLS group per call, SFrame
//! keys per epoch and sender as RFC 9605 §5.2 derives them, and a group verification code.
//!
//! The MLS part is the library's; this module only chooses the ciphersuite, serialises
//! messages for the relay (which carries them as opaque blobs), and turns each epoch into
//! SFrame keys:
//! - `base_key = MLS-Exporter("SFrame 1.0 Base Key", "", AEAD.Nk)` for the epoch;
//! - a sender's KID is `(leaf index << EPOCH_BITS) | (epoch mod 2^EPOCH_BITS)` (context id
//!   0), and its SFrame key and salt come from `base_key` and that KID (RFC 9605 §4.4.2), so
//!   every member has its own key in every epoch;
//! - keys of the previous epoch stay for [`PREVIOUS_EPOCH_GRACE`], so frames in flight
//!   across a commit still open, and are then dropped: a member removed by a commit never
//!   gets the new epoch's secrets, and one added by a Welcome never had the old ones.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::kex::code::VerificationCode;
use crate::roster::{Candidate, Refusal};
use crate::sframe::{CipherSuite, Receiver, Sender};

/// X25519 key exchange, AES-128-GCM, SHA-256 and Ed25519 signatures.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// The SFrame suite the exported keys feed (AEAD.Nk = 16).
pub const FRAME_SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;
/// Low-order epoch bits in a KID (RFC 9605 §5.2's `E`): a window of 256 epochs.
pub const EPOCH_BITS: u32 = 8;
/// How long the previous epoch's keys still open frames after a commit.
pub const PREVIOUS_EPOCH_GRACE: Duration = Duration::from_secs(2);
const EXPORTER_LABEL: &str = "SFrame 1.0 Base Key";
const CODE_LABEL: &[u8] = b"blindrelay group verification code v1";

/// Why an MLS operation failed. openmls's own errors are generic over the storage
/// provider, so they are kept as text.
#[derive(Debug, Error)]
pub enum MlsError {
    #[error("MLS: {0}")]
    Library(String),
    #[error("not in an MLS group yet")]
    NoGroup,
    #[error("the message is not a {0}")]
    Unexpected(&'static str),
    #[error("a commit of epoch {0} is still waiting for the relay's verdict")]
    CommitPending(u64),
    /// A commit or Welcome would put someone in the group whom this member's roster
    /// checks refuse: it is not applied.
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
}

fn lib<E: std::fmt::Display>(e: E) -> MlsError {
    MlsError::Library(e.to_string())
}

/// The KID a member sends with in an epoch.
pub fn kid(epoch: u64, leaf: u32) -> u64 {
    (u64::from(leaf) << EPOCH_BITS) | (epoch & ((1 << EPOCH_BITS) - 1))
}

/// The sender's leaf index in a KID.
pub fn leaf_of_kid(kid: u64) -> u32 {
    (kid >> EPOCH_BITS) as u32
}

/// A commit this member made: the commit for the group, and a Welcome for the members it
/// adds (if any). It takes effect only when the relay accepts it for its epoch.
#[derive(Debug, Clone)]
pub struct OwnCommit {
    /// The epoch the commit was made in (the one it ends).
    pub epoch: u64,
    pub commit: Vec<u8>,
    pub welcome: Option<Vec<u8>>,
}

/// What a handshake message from another member did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// The group moved to this epoch.
    NewEpoch(u64),
    /// This member was removed: it has no group any more.
    Removed,
}

/// One member of the group as its leaf shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCred {
    pub leaf: u32,
    /// The BasicCredential's identity bytes.
    pub identity: Vec<u8>,
    pub signature_key: Vec<u8>,
}

impl MemberCred {
    pub fn candidate(&self) -> Candidate {
        Candidate {
            identity: self.identity.clone(),
            signature_key: self.signature_key.clone(),
        }
    }
}

fn candidate_of(leaf: &LeafNode) -> Candidate {
    Candidate {
        identity: basic_identity(leaf.credential()),
        signature_key: leaf.signature_key().as_slice().to_vec(),
    }
}

/// A BasicCredential's identity; empty for any other credential type (which no member
/// check accepts).
fn basic_identity(c: &Credential) -> Vec<u8> {
    BasicCredential::try_from(c.clone())
        .map(|c| c.identity().to_vec())
        .unwrap_or_default()
}

/// Parse and validate a KeyPackage (an MLSMessage) on its own: signature, lifetime,
/// ciphersuite, and the credential it carries.
pub fn inspect_key_package(raw: &[u8]) -> Result<Candidate, MlsError> {
    let crypto = openmls_rust_crypto::RustCrypto::default();
    Ok(candidate_of(
        validate_key_package(&crypto, raw)?.leaf_node(),
    ))
}

fn validate_key_package(
    crypto: &impl openmls_traits::crypto::OpenMlsCrypto,
    raw: &[u8],
) -> Result<KeyPackage, MlsError> {
    let msg = MlsMessageIn::tls_deserialize_exact(raw).map_err(lib)?;
    let MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else {
        return Err(MlsError::Unexpected("KeyPackage"));
    };
    let kp = kp.validate(crypto, ProtocolVersion::Mls10).map_err(lib)?;
    if kp.ciphersuite() != CIPHERSUITE {
        return Err(MlsError::Unexpected(
            "KeyPackage of this call's ciphersuite",
        ));
    }
    Ok(kp)
}

/// One member's MLS state: its signing identity and, once it created or joined one, the
/// call's group.
pub struct GroupMember {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    group: Option<MlsGroup>,
}

impl GroupMember {
    /// A fresh signing key for `identity` (the credential's identity bytes): ephemeral,
    /// one per call.
    pub fn new(identity: impl AsRef<[u8]>) -> Result<Self, MlsError> {
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).map_err(lib)?;
        Self::with_signer(identity, signer)
    }

    /// A member signing with a given Ed25519 key (the identity key its token's `cnf`
    /// binds): `seed` and `public` are the raw 32-byte halves.
    pub fn with_key(
        identity: impl AsRef<[u8]>,
        seed: &[u8; 32],
        public: &[u8; 32],
    ) -> Result<Self, MlsError> {
        let signer = SignatureKeyPair::from_raw(
            CIPHERSUITE.signature_algorithm(),
            seed.to_vec(),
            public.to_vec(),
        );
        Self::with_signer(identity, signer)
    }

    fn with_signer(identity: impl AsRef<[u8]>, signer: SignatureKeyPair) -> Result<Self, MlsError> {
        let provider = OpenMlsRustCrypto::default();
        signer.store(provider.storage()).map_err(lib)?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity.as_ref().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Ok(GroupMember {
            provider,
            signer,
            credential,
            group: None,
        })
    }

    /// A KeyPackage for whoever adds this member (serialised MLSMessage).
    pub fn key_package(&self) -> Result<Vec<u8>, MlsError> {
        let bundle = KeyPackage::builder()
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .map_err(lib)?;
        MlsMessageOut::from(bundle.key_package().clone())
            .tls_serialize_detached()
            .map_err(lib)
    }

    /// Start the call's group alone, at epoch 0.
    pub fn create(&mut self, group_id: &[u8]) -> Result<(), MlsError> {
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .use_ratchet_tree_extension(true)
            .build();
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &config,
            GroupId::from_slice(group_id),
            self.credential.clone(),
        )
        .map_err(lib)?;
        self.group = Some(group);
        Ok(())
    }

    fn group(&self) -> Result<&MlsGroup, MlsError> {
        self.group.as_ref().ok_or(MlsError::NoGroup)
    }

    fn no_pending(&self) -> Result<(), MlsError> {
        let g = self.group()?;
        if g.pending_commit().is_some() {
            return Err(MlsError::CommitPending(g.epoch().as_u64()));
        }
        Ok(())
    }

    /// Commit adding the owners of `key_packages` and removing the members at `remove`
    /// (leaf indexes), in one commit. It stays pending until [`Self::commit_accepted`]
    /// or [`Self::commit_refused`].
    pub fn commit(
        &mut self,
        key_packages: &[Vec<u8>],
        remove: &[u32],
    ) -> Result<OwnCommit, MlsError> {
        self.no_pending()?;
        let mut kps = Vec::with_capacity(key_packages.len());
        for kp in key_packages {
            kps.push(validate_key_package(self.provider.crypto(), kp)?);
        }
        let remove: Vec<LeafNodeIndex> = remove.iter().map(|l| LeafNodeIndex::new(*l)).collect();
        let (provider, signer) = (&self.provider, &self.signer);
        let group = self.group.as_mut().ok_or(MlsError::NoGroup)?;
        let epoch = group.epoch().as_u64();
        let bundle = group
            .commit_builder()
            .propose_adds(kps)
            .propose_removals(remove)
            .load_psks(provider.storage())
            .map_err(lib)?
            .build(provider.rand(), provider.crypto(), signer, |_| true)
            .map_err(lib)?
            .stage_commit(provider)
            .map_err(lib)?;
        let (commit, welcome, _) = bundle.into_contents();
        let commit = commit.tls_serialize_detached().map_err(lib)?;
        let welcome = match welcome {
            Some(w) => Some(
                MlsMessageOut::from_welcome(w, ProtocolVersion::Mls10)
                    .tls_serialize_detached()
                    .map_err(lib)?,
            ),
            None => None,
        };
        Ok(OwnCommit {
            epoch,
            commit,
            welcome,
        })
    }

    /// The relay accepted this member's commit for its epoch: the group moves on.
    pub fn commit_accepted(&mut self) -> Result<u64, MlsError> {
        let provider = &self.provider;
        let group = self.group.as_mut().ok_or(MlsError::NoGroup)?;
        group.merge_pending_commit(provider).map_err(lib)?;
        Ok(group.epoch().as_u64())
    }

    /// Another commit won the epoch: drop this member's own.
    pub fn commit_refused(&mut self) -> Result<(), MlsError> {
        let provider = &self.provider;
        let group = self.group.as_mut().ok_or(MlsError::NoGroup)?;
        group.clear_pending_commit(provider.storage()).map_err(lib)
    }

    /// Join from a Welcome (the ratchet tree travels in it), if `check` accepts every
    /// member it names.
    pub fn join(
        &mut self,
        welcome: &[u8],
        check: impl FnOnce(&[Candidate]) -> Result<(), Refusal>,
    ) -> Result<u64, MlsError> {
        let msg = MlsMessageIn::tls_deserialize_exact(welcome).map_err(lib)?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(MlsError::Unexpected("Welcome"));
        };
        let config = MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(true)
            .build();
        let staged =
            StagedWelcome::new_from_welcome(&self.provider, &config, welcome, None).map_err(lib)?;
        let roster: Vec<Candidate> = staged
            .members()
            .map(|m| Candidate {
                identity: basic_identity(&m.credential),
                signature_key: m.signature_key,
            })
            .collect();
        check(&roster)?;
        let group = staged.into_group(&self.provider).map_err(lib)?;
        let epoch = group.epoch().as_u64();
        self.group = Some(group);
        Ok(epoch)
    }

    /// Apply another member's commit (which the relay accepted for the current epoch), if
    /// `check` accepts the group it leads to (every member after its removals and adds).
    /// A refused commit is not merged.
    pub fn process_commit(
        &mut self,
        commit: &[u8],
        check: impl FnOnce(&[Candidate]) -> Result<(), Refusal>,
    ) -> Result<Processed, MlsError> {
        let msg = MlsMessageIn::tls_deserialize_exact(commit).map_err(lib)?;
        let msg = msg
            .try_into_protocol_message()
            .map_err(|_| MlsError::Unexpected("handshake message"))?;
        let provider = &self.provider;
        let group = self.group.as_mut().ok_or(MlsError::NoGroup)?;
        let processed = group.process_message(provider, msg).map_err(lib)?;
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(MlsError::Unexpected("commit"));
        };
        let removed = staged.self_removed();
        if !removed {
            let gone: Vec<LeafNodeIndex> = staged
                .remove_proposals()
                .map(|r| r.remove_proposal().removed())
                .collect();
            let after: Vec<Candidate> = group
                .members()
                .filter(|m| !gone.contains(&m.index))
                .map(|m| Candidate {
                    identity: basic_identity(&m.credential),
                    signature_key: m.signature_key,
                })
                .chain(
                    staged
                        .add_proposals()
                        .map(|a| candidate_of(a.add_proposal().key_package().leaf_node())),
                )
                .collect();
            check(&after)?;
        }
        group.merge_staged_commit(provider, *staged).map_err(lib)?;
        if removed {
            self.group = None;
            return Ok(Processed::Removed);
        }
        Ok(Processed::NewEpoch(group.epoch().as_u64()))
    }

    /// Drop the group (this member refused a change to it).
    pub fn leave(&mut self) {
        self.group = None;
    }

    pub fn in_group(&self) -> bool {
        self.group.is_some()
    }

    pub fn epoch(&self) -> Option<u64> {
        self.group.as_ref().map(|g| g.epoch().as_u64())
    }

    pub fn leaf_index(&self) -> Option<u32> {
        self.group.as_ref().map(|g| g.own_leaf_index().u32())
    }

    /// Every member: leaf index, credential identity and signature key.
    pub fn members(&self) -> Vec<MemberCred> {
        let Some(g) = &self.group else {
            return Vec::new();
        };
        g.members()
            .map(|m| MemberCred {
                leaf: m.index.u32(),
                identity: basic_identity(&m.credential),
                signature_key: m.signature_key,
            })
            .collect()
    }

    /// This member's signature public key.
    pub fn signature_key(&self) -> &[u8] {
        self.signer.public()
    }

    /// The group's verification code for the current epoch: 20 digits from the epoch
    /// authenticator (RFC 9420 §8.7), the same on every member, new at every epoch.
    pub fn verification_code(&self) -> Result<VerificationCode, MlsError> {
        let g = self.group()?;
        let digest = Sha256::new()
            .chain_update(CODE_LABEL)
            .chain_update(g.epoch_authenticator().as_slice())
            .finalize();
        let mut okm = [0u8; 16];
        okm.copy_from_slice(&digest[..16]);
        Ok(VerificationCode::from_okm(okm))
    }

    /// The epoch's SFrame base key (RFC 9605 §5.2).
    pub fn sframe_base_key(&self) -> Result<Zeroizing<Vec<u8>>, MlsError> {
        let g = self.group()?;
        g.export_secret(
            self.provider.crypto(),
            EXPORTER_LABEL,
            &[],
            FRAME_SUITE.nk(),
        )
        .map(Zeroizing::new)
        .map_err(lib)
    }

    /// The current epoch's frame keys: this member's sender and every other member's KID.
    pub fn epoch_keys(&self) -> Result<EpochKeys, MlsError> {
        let g = self.group()?;
        let epoch = g.epoch().as_u64();
        let own = g.own_leaf_index().u32();
        Ok(EpochKeys {
            epoch,
            own_leaf: own,
            others: g
                .members()
                .map(|m| m.index.u32())
                .filter(|l| *l != own)
                .collect(),
            base_key: self.sframe_base_key()?,
        })
    }
}

/// One epoch's SFrame key material.
pub struct EpochKeys {
    pub epoch: u64,
    pub own_leaf: u32,
    pub others: Vec<u32>,
    base_key: Zeroizing<Vec<u8>>,
}

/// SFrame sealing and opening across epochs: the sender of the newest epoch, and receive
/// keys of the newest epoch plus, for a grace period, the one before.
pub struct GroupFrames {
    sender: Option<Sender>,
    receiver: Receiver,
    epoch: Option<u64>,
    /// KIDs of superseded epochs and when they stop opening frames.
    retiring: VecDeque<(Instant, Vec<u64>)>,
    current: Vec<u64>,
}

impl Default for GroupFrames {
    fn default() -> Self {
        Self::new()
    }
}

impl GroupFrames {
    pub fn new() -> Self {
        GroupFrames {
            sender: None,
            receiver: Receiver::new(),
            epoch: None,
            retiring: VecDeque::new(),
            current: Vec::new(),
        }
    }

    /// Install a new epoch at `now`: seal with it from now on, and keep the previous
    /// epoch's receive keys until `now + PREVIOUS_EPOCH_GRACE`.
    pub fn install(&mut self, now: Instant, keys: &EpochKeys) {
        self.expire(now);
        if self.epoch == Some(keys.epoch) {
            return;
        }
        let old = std::mem::take(&mut self.current);
        if !old.is_empty() {
            self.retiring.push_back((now + PREVIOUS_EPOCH_GRACE, old));
        }
        // An epoch 2^EPOCH_BITS later reuses these KIDs: its keys replace them.
        for k in keys.others.iter().map(|l| kid(keys.epoch, *l)) {
            for (_, kids) in self.retiring.iter_mut() {
                kids.retain(|x| *x != k);
            }
            self.receiver.add_key(FRAME_SUITE, k, &keys.base_key);
            self.current.push(k);
        }
        self.sender = Some(Sender::new(
            FRAME_SUITE,
            kid(keys.epoch, keys.own_leaf),
            &keys.base_key,
        ));
        self.epoch = Some(keys.epoch);
    }

    /// Drop superseded epochs' keys whose grace period ended.
    pub fn expire(&mut self, now: Instant) {
        while let Some((deadline, _)) = self.retiring.front() {
            if *deadline > now {
                break;
            }
            if let Some((_, kids)) = self.retiring.pop_front() {
                for k in kids {
                    self.receiver.remove_key(k);
                }
            }
        }
    }

    /// Forget everything (this member left or was removed).
    pub fn clear(&mut self) {
        for k in self
            .current
            .drain(..)
            .chain(self.retiring.drain(..).flat_map(|(_, k)| k))
        {
            self.receiver.remove_key(k);
        }
        self.sender = None;
        self.epoch = None;
    }

    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    pub fn sender_mut(&mut self) -> Option<&mut Sender> {
        self.sender.as_mut()
    }

    pub fn receiver_mut(&mut self) -> &mut Receiver {
        &mut self.receiver
    }

    /// Seal a frame with the current epoch's key.
    pub fn seal(&mut self, metadata: &[u8], frame: &[u8]) -> Option<Vec<u8>> {
        self.sender.as_mut()?.seal(metadata, frame).ok()
    }

    /// Open a frame: the sender's leaf index and the plaintext.
    pub fn open(
        &mut self,
        now: Instant,
        metadata: &[u8],
        sealed: &[u8],
    ) -> Result<(u32, Vec<u8>), crate::sframe::SframeError> {
        self.expire(now);
        let (k, _, plain) = self.receiver.open(metadata, sealed)?;
        Ok((leaf_of_kid(k), plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(m: &GroupMember) -> EpochKeys {
        m.epoch_keys().expect("in a group")
    }

    /// Four members through adds and a remove, on a virtual clock: every member opens
    /// every other's frames in each epoch and shows the same code; a removed member's
    /// retained keys do not open frames sealed after its removal; a member added later
    /// cannot open frames sealed before its Welcome.
    #[test]
    #[allow(clippy::needless_range_loop)] // members and their frame keys side by side
    fn members_key_per_epoch_and_rekey_on_join_and_leave() {
        let t0 = Instant::now();
        let names = ["p-a", "p-b", "p-c", "p-d"];
        let mut m: Vec<GroupMember> = names.iter().map(|n| GroupMember::new(n).unwrap()).collect();
        let mut f: Vec<GroupFrames> = names.iter().map(|_| GroupFrames::new()).collect();
        m[0].create(b"call-x").unwrap();
        // a adds b and c in one commit.
        let kps = vec![m[1].key_package().unwrap(), m[2].key_package().unwrap()];
        let c = m[0].commit(&kps, &[]).unwrap();
        assert_eq!(c.epoch, 0);
        assert_eq!(m[0].commit_accepted().unwrap(), 1);
        let welcome = c.welcome.clone().expect("adds make a Welcome");
        assert_eq!(m[1].join(&welcome, |_| Ok(())).unwrap(), 1);
        assert_eq!(m[2].join(&welcome, |_| Ok(())).unwrap(), 1);
        for i in 0..3 {
            f[i].install(t0, &keys(&m[i]));
        }
        let code1 = m[0].verification_code().unwrap().to_string();
        for i in 1..3 {
            assert_eq!(m[i].verification_code().unwrap().to_string(), code1);
        }
        assert_eq!(code1.len(), 23, "{code1}");
        // Every member opens every other's frames, attributed to the sender's leaf.
        for s in 0..3 {
            let sealed = f[s].seal(b"hdr", format!("from {s}").as_bytes()).unwrap();
            for r in (0..3).filter(|r| *r != s) {
                let (leaf, plain) = f[r].open(t0, b"hdr", &sealed).unwrap();
                assert_eq!(leaf, m[s].leaf_index().unwrap());
                assert_eq!(plain, format!("from {s}").as_bytes());
            }
        }
        let before_d = f[0].seal(b"hdr", b"before d joined").unwrap();
        // b adds d.
        let kp_d = m[3].key_package().unwrap();
        let c = m[1].commit(&[kp_d], &[]).unwrap();
        m[1].commit_accepted().unwrap();
        for i in [0, 2] {
            assert_eq!(
                m[i].process_commit(&c.commit, |_| Ok(())).unwrap(),
                Processed::NewEpoch(2)
            );
        }
        m[3].join(&c.welcome.unwrap(), |_| Ok(())).unwrap();
        let t1 = t0 + Duration::from_millis(10);
        for i in 0..4 {
            f[i].install(t1, &keys(&m[i]));
        }
        let code2 = m[3].verification_code().unwrap().to_string();
        assert_ne!(code2, code1, "a new epoch has a new code");
        for i in 0..3 {
            assert_eq!(m[i].verification_code().unwrap().to_string(), code2);
        }
        // d cannot open what a sealed before d's Welcome.
        assert!(f[3].open(t1, b"hdr", &before_d).is_err());
        // Frames in flight from epoch 1 still open within the grace period, not after.
        assert!(f[2].open(t1, b"hdr", &before_d).is_ok());
        // c leaves: a removes c's leaf.
        let c_leaf = m[2].leaf_index().unwrap();
        let mut c_retained = GroupFrames::new();
        c_retained.install(t1, &keys(&m[2]));
        let rm = m[0].commit(&[], &[c_leaf]).unwrap();
        assert!(rm.welcome.is_none());
        m[0].commit_accepted().unwrap();
        assert_eq!(
            m[1].process_commit(&rm.commit, |_| Ok(())).unwrap(),
            Processed::NewEpoch(3)
        );
        assert_eq!(
            m[3].process_commit(&rm.commit, |_| Ok(())).unwrap(),
            Processed::NewEpoch(3)
        );
        assert_eq!(
            m[2].process_commit(&rm.commit, |_| Ok(())).unwrap(),
            Processed::Removed
        );
        assert!(!m[2].in_group());
        let t2 = t1 + Duration::from_millis(10);
        for i in [0, 1, 3] {
            f[i].install(t2, &keys(&m[i]));
        }
        let code3 = m[0].verification_code().unwrap().to_string();
        assert_ne!(code3, code2);
        assert_eq!(m[3].verification_code().unwrap().to_string(), code3);
        for s in [0, 1, 3] {
            let sealed = f[s].seal(b"hdr", b"after c left").unwrap();
            for r in [0, 1, 3].into_iter().filter(|r| *r != s) {
                assert!(f[r].open(t2, b"hdr", &sealed).is_ok());
            }
            // The leaver's retained keys (epoch 2) do not open epoch 3.
            assert!(c_retained.open(t2, b"hdr", &sealed).is_err());
        }
        // After the grace period, epoch 1's frame no longer opens anywhere.
        let late = t2 + PREVIOUS_EPOCH_GRACE + Duration::from_millis(1);
        assert!(f[1].open(late, b"hdr", &before_d).is_err());
    }

    /// Two members commit in the same epoch; the relay accepts the first. The loser
    /// drops its own commit, applies the winner's and commits again on the new epoch.
    #[test]
    fn a_refused_commit_is_retried_on_the_next_epoch() {
        let mut a = GroupMember::new("p-a").unwrap();
        let mut b = GroupMember::new("p-b").unwrap();
        let c = GroupMember::new("p-c").unwrap();
        let d = GroupMember::new("p-d").unwrap();
        a.create(b"call-y").unwrap();
        let add_b = a.commit(&[b.key_package().unwrap()], &[]).unwrap();
        a.commit_accepted().unwrap();
        b.join(&add_b.welcome.unwrap(), |_| Ok(())).unwrap();
        let kp_c = c.key_package().unwrap();
        let kp_d = d.key_package().unwrap();
        let from_a = a.commit(&[kp_c], &[]).unwrap();
        let from_b = b.commit(std::slice::from_ref(&kp_d), &[]).unwrap();
        assert_eq!(from_a.epoch, from_b.epoch);
        assert!(matches!(
            b.commit(std::slice::from_ref(&kp_d), &[]),
            Err(MlsError::CommitPending(1))
        ));
        // The relay takes a's (first) commit for epoch 1.
        a.commit_accepted().unwrap();
        b.commit_refused().unwrap();
        assert_eq!(
            b.process_commit(&from_a.commit, |_| Ok(())).unwrap(),
            Processed::NewEpoch(2)
        );
        let retry = b.commit(&[kp_d], &[]).unwrap();
        assert_eq!(retry.epoch, 2);
        b.commit_accepted().unwrap();
        assert_eq!(
            a.process_commit(&retry.commit, |_| Ok(())).unwrap(),
            Processed::NewEpoch(3)
        );
        assert_eq!(
            a.verification_code().unwrap().digits(),
            b.verification_code().unwrap().digits()
        );
        assert_eq!(a.members().len(), 4);
        // A stale commit (epoch 1) is refused by the library, not merged.
        assert!(a.process_commit(&from_b.commit, |_| Ok(())).is_err());
    }
}

/// The cross-check with the page's MLS (ts-mls, web/mls.bundle.js): a group made here by
/// openmls is written to `web/test/mls-vectors.json`, and web/test/mls.test.mjs joins it
/// from the Welcome with ts-mls (the joiner's private keys are in the file: they exist
/// for this test only), processes the later commits and must show, at every epoch, the
/// same exporter-derived SFrame base key, the same 20-digit code, and open the frames
/// each member sealed with its own KID.
///
/// openmls draws fresh randomness, so a new run makes a different group: the file is
/// rewritten only with `BLINDRELAY_BLESS=1`. Every run checks the committed file against
/// this side all the same: its KeyPackages validate, its messages parse as what they say,
/// and its codes and frames are what e2ee-client derives from its recorded secrets.
#[cfg(test)]
mod web_vectors {
    use super::*;
    use crate::roster::MemberIdentity;

    fn hexs(b: &[u8]) -> String {
        hex::encode(b)
    }

    fn unhex(v: &serde_json::Value) -> Vec<u8> {
        hex::decode(v.as_str().expect("a hex string")).expect("hex")
    }

    fn identity(participant: &str, user: &str) -> Vec<u8> {
        MemberIdentity {
            participant: participant.into(),
            user: user.into(),
            token: None,
        }
        .to_bytes()
    }

    fn code_of(authenticator: &[u8]) -> String {
        let digest = Sha256::new()
            .chain_update(CODE_LABEL)
            .chain_update(authenticator)
            .finalize();
        let mut okm = [0u8; 16];
        okm.copy_from_slice(&digest[..16]);
        VerificationCode::from_okm(okm).digits().to_string()
    }

    /// One epoch as member `m` sees it, with a frame sealed by every member in `sealers`.
    fn epoch_record(m: &GroupMember, sealers: &[&GroupMember]) -> serde_json::Value {
        let g = m.group().expect("in the group");
        let base = m.sframe_base_key().expect("exporter");
        let authenticator = g.epoch_authenticator().as_slice().to_vec();
        let code = m.verification_code().expect("code").digits().to_string();
        assert_eq!(code, code_of(&authenticator));
        let epoch = g.epoch().as_u64();
        let frames: Vec<serde_json::Value> = sealers
            .iter()
            .map(|s| {
                let leaf = s.leaf_index().expect("a member");
                let k = kid(epoch, leaf);
                // Each member seals with the base key it derived itself.
                let own_base = s.sframe_base_key().expect("exporter");
                assert_eq!(*own_base, *base, "members agree on the base key");
                let plain = format!("frame from leaf {leaf} in epoch {epoch}");
                let sealed = Sender::new(FRAME_SUITE, k, &own_base)
                    .seal(b"hdr", plain.as_bytes())
                    .expect("seal");
                serde_json::json!({
                    "leaf": leaf, "kid": k, "metadata": hexs(b"hdr"),
                    "plaintext": hexs(plain.as_bytes()), "sealed": hexs(&sealed),
                })
            })
            .collect();
        let members: Vec<serde_json::Value> = m
            .members()
            .iter()
            .map(|c| {
                serde_json::json!({
                    "leaf": c.leaf,
                    "identity": String::from_utf8(c.identity.clone()).expect("JSON identity"),
                    "signature_key": hexs(&c.signature_key),
                })
            })
            .collect();
        serde_json::json!({
            "epoch": epoch,
            "sframe_base_key": hexs(&base),
            "epoch_authenticator": hexs(&authenticator),
            "code": code,
            "members": members,
            "frames": frames,
        })
    }

    /// a creates the call's group; one commit adds b and the joiner j (the Welcome j
    /// joins from); a adds c; b removes c. Every epoch from j's Welcome on is recorded.
    fn make() -> serde_json::Value {
        let group_id = b"call-vectors";
        let mut a = GroupMember::new(identity("p-a", "alice")).expect("a");
        let mut b = GroupMember::new(identity("p-b", "bob")).expect("b");
        let mut c = GroupMember::new(identity("p-c", "carol")).expect("c");
        let j = GroupMember::new(identity("p-j", "joiner")).expect("j");
        // j's KeyPackage built here, so its private keys can be written for the JS side.
        let j_bundle = KeyPackage::builder()
            .build(CIPHERSUITE, &j.provider, &j.signer, j.credential.clone())
            .expect("KeyPackage");
        let kp_j = MlsMessageOut::from(j_bundle.key_package().clone())
            .tls_serialize_detached()
            .expect("serialise");
        let kp_b = b.key_package().expect("b's KeyPackage");
        let kp_c = c.key_package().expect("c's KeyPackage");

        a.create(group_id).expect("create");
        let add = a.commit(&[kp_b.clone(), kp_j.clone()], &[]).expect("add");
        a.commit_accepted().expect("merge");
        let welcome = add.welcome.expect("adds make a Welcome");
        b.join(&welcome, |_| Ok(())).expect("b joins");
        let mut epochs = vec![epoch_record(&a, &[&a, &b])];

        let add_c = a.commit(std::slice::from_ref(&kp_c), &[]).expect("add c");
        a.commit_accepted().expect("merge");
        b.process_commit(&add_c.commit, |_| Ok(()))
            .expect("b: add c");
        c.join(&add_c.welcome.expect("Welcome"), |_| Ok(()))
            .expect("c joins");
        epochs.push(epoch_record(&b, &[&a, &b, &c]));

        let c_leaf = c.leaf_index().expect("c's leaf");
        let rm_c = b.commit(&[], &[c_leaf]).expect("remove c");
        b.commit_accepted().expect("merge");
        a.process_commit(&rm_c.commit, |_| Ok(()))
            .expect("a: remove c");
        epochs.push(epoch_record(&a, &[&a, &b]));

        serde_json::json!({
            "about": "Written by e2ee-client's mls::web_vectors test (BLINDRELAY_BLESS=1 rewrites); replayed by web/test/mls.test.mjs",
            "ciphersuite": "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
            "exporter_label": EXPORTER_LABEL,
            "epoch_bits": EPOCH_BITS,
            "group_id": hexs(group_id),
            "key_packages": {
                "b": hexs(&kp_b), "c": hexs(&kp_c), "j": hexs(&kp_j),
            },
            "joiner": {
                "identity": String::from_utf8(identity("p-j", "joiner")).expect("JSON"),
                "key_package": hexs(&kp_j),
                "init_private_key": hexs(j_bundle.init_private_key()),
                "encryption_private_key": hexs(&stored_secret(&j, "private_encryption_key", None)),
                "signature_private_key": hexs(&stored_secret(&j, "private", Some(j.signer.public()))),
                "signature_public_key": hexs(j.signer.public()),
            },
            "welcome": hexs(&welcome),
            "commits": [hexs(&add_c.commit), hexs(&rm_c.commit)],
            "epochs": epochs,
        })
    }

    /// Bytes of a JSON value as openmls serialises secrets (a byte array, possibly wrapped in
    /// objects).
    fn json_bytes(v: &serde_json::Value) -> Option<Vec<u8>> {
        match v {
            serde_json::Value::Array(a) if !a.is_empty() => a
                .iter()
                .map(|x| x.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect(),
            serde_json::Value::Object(o) => o.values().find_map(json_bytes),
            _ => None,
        }
    }

    /// A private key openmls keeps only in its storage (the KeyPackage bundle's encryption
    /// key, the signature key pair's private half) and has no public accessor for outside its
    /// own test builds: read from the joiner's in-memory storage, where it is serialised as
    /// JSON. `public` picks the stored object whose `public` field matches.
    fn stored_secret(m: &GroupMember, field: &str, public: Option<&[u8]>) -> Vec<u8> {
        let values = m.provider.storage().values.read().expect("storage lock");
        let found: Vec<Vec<u8>> = values
            .values()
            .filter_map(|raw| serde_json::from_slice::<serde_json::Value>(raw).ok())
            .filter(|v| {
                public.is_none_or(|p| v.get("public").and_then(json_bytes).as_deref() == Some(p))
            })
            .filter_map(|v| v.get(field).and_then(json_bytes))
            .collect();
        assert_eq!(found.len(), 1, "one stored `{field}`");
        found.into_iter().next().expect("checked above")
    }

    /// What can be checked of a committed file without its members' state.
    fn check_committed(v: &serde_json::Value) {
        for who in ["b", "c", "j"] {
            let kp = unhex(&v["key_packages"][who]);
            let cand = inspect_key_package(&kp).expect("a valid KeyPackage");
            let id = MemberIdentity::parse(&cand.identity).expect("a member identity");
            assert_eq!(id.participant, format!("p-{who}"));
        }
        let parse = |raw: Vec<u8>| {
            MlsMessageIn::tls_deserialize_exact(raw.as_slice())
                .expect("an MLSMessage")
                .extract()
        };
        assert!(matches!(
            parse(unhex(&v["welcome"])),
            MlsMessageBodyIn::Welcome(_)
        ));
        for c in v["commits"].as_array().expect("commits") {
            assert!(matches!(
                parse(unhex(c)),
                MlsMessageBodyIn::PublicMessage(_) | MlsMessageBodyIn::PrivateMessage(_)
            ));
        }
        let epochs = v["epochs"].as_array().expect("epochs");
        assert_eq!(epochs.len(), 3);
        for (i, e) in epochs.iter().enumerate() {
            assert_eq!(e["epoch"].as_u64(), Some(i as u64 + 1));
            let code = code_of(&unhex(&e["epoch_authenticator"]));
            assert_eq!(e["code"].as_str(), Some(code.as_str()));
            let base = unhex(&e["sframe_base_key"]);
            let mut rx = crate::sframe::Receiver::new();
            for f in e["frames"].as_array().expect("frames") {
                let leaf = f["leaf"].as_u64().expect("leaf") as u32;
                let k = f["kid"].as_u64().expect("kid");
                assert_eq!(k, kid(i as u64 + 1, leaf));
                rx.add_key(FRAME_SUITE, k, &base);
                let (got_kid, _, plain) = rx
                    .open(&unhex(&f["metadata"]), &unhex(&f["sealed"]))
                    .expect("the frame opens with the recorded base key");
                assert_eq!(got_kid, k);
                assert_eq!(plain, unhex(&f["plaintext"]));
            }
        }
    }

    #[test]
    fn web_mls_vectors_are_openmls_groups() {
        let fresh = make();
        check_committed(&fresh);
        let text = serde_json::to_string_pretty(&fresh).expect("JSON") + "\n";
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/test/mls-vectors.json");
        if std::env::var("BLINDRELAY_BLESS").is_ok_and(|v| v == "1") {
            std::fs::write(&path, &text).expect("write mls-vectors.json");
        }
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (BLINDRELAY_BLESS=1 writes it)", path.display()));
        check_committed(&serde_json::from_str(&committed).expect("JSON"));
    }
}
