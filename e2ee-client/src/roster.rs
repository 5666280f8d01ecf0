//! Who may be in a group E2EE call's MLS group, checked by each member itself.
//!
//! The relay announces participants (`joined`, `participant_joined`, `participant_left`)
//! and delivers KeyPackages "from" them, but the relay is the adversary: it may announce
//! no one and deliver an outsider's KeyPackage under any name, or name a member twice. So
//! every credential that would enter the group is checked against what the relay
//! announced to this member *before* it is used:
//! - its identity names the participant the relay said it came from (a KeyPackage), or a
//!   participant the relay announced at some point (a commit's adds, a Welcome's roster);
//! - the user name in it is the one announced for that participant;
//! - no participant and no signature key appears twice in the group;
//! - with an issuer key (`--issuer-key`), its token is signed by the issuer, names that
//!   user and binds the credential's signature key (`cnf`), so a relay that cannot sign
//!   tokens cannot add anyone at all.
//!
//! The member list is shown beside the verification code: the code comes from the epoch
//! authenticator, which a hidden member shares, so only the list can reveal one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most participants remembered as "announced at some point" (a commit may add someone
/// who left while it was in flight). Beyond this, older announcements are forgotten.
pub const MAX_ANNOUNCED: usize = 4096;

/// What a member's MLS credential (a BasicCredential's identity bytes) says, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberIdentity {
    /// The relay's participant id for this session (`p-...`).
    pub participant: String,
    /// The user the member's token names (its `sub`).
    pub user: String,
    /// The member's token, when it binds the signature key (`cnf`): checked by members
    /// that hold the issuer's public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Longest credential identity accepted (a token and two ids fit well within it).
pub const MAX_IDENTITY_BYTES: usize = 8 * 1024;

impl MemberIdentity {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of strings always serialises")
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, Refusal> {
        if bytes.len() > MAX_IDENTITY_BYTES {
            return Err(Refusal::BadCredential("identity too long".into()));
        }
        serde_json::from_slice(bytes).map_err(|e| Refusal::BadCredential(e.to_string()))
    }

    /// How the member list shows this member.
    pub fn label(&self) -> String {
        self.user.clone()
    }
}

/// Why a credential may not enter the group. [`Refusal::reason`] is the label counted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("the credential is not a blindrelay member identity: {0}")]
    BadCredential(String),
    #[error("the KeyPackage is invalid: {0}")]
    Invalid(String),
    #[error("`{0}` was never announced as a participant of this call")]
    Unannounced(String),
    #[error("`{0}` is not in the call any more")]
    NotInCall(String),
    #[error("the credential names `{named}`, but the relay said it came from `{from}`")]
    NotTheSender { named: String, from: String },
    #[error(
        "the credential names user `{named}`, but `{participant}` was announced as `{announced}`"
    )]
    UserMismatch {
        participant: String,
        named: String,
        announced: String,
    },
    #[error("`{0}` is already a member of the group")]
    AlreadyMember(String),
    #[error("`{0}` appears twice")]
    Duplicate(String),
    #[error("the signature key is already in the group")]
    DuplicateKey,
    #[error("the credential's token does not check out: {0}")]
    Unverified(String),
}

impl Refusal {
    /// A stable label per kind of refusal (for counts and tests).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::BadCredential(_) => "bad_credential",
            Refusal::Invalid(_) => "invalid",
            Refusal::Unannounced(_) => "unannounced",
            Refusal::NotInCall(_) => "not_in_call",
            Refusal::NotTheSender { .. } => "not_the_sender",
            Refusal::UserMismatch { .. } => "user_mismatch",
            Refusal::AlreadyMember(_) => "already_member",
            Refusal::Duplicate(_) => "duplicate",
            Refusal::DuplicateKey => "duplicate_key",
            Refusal::Unverified(_) => "unverified",
        }
    }
}

/// Checks a credential's token against the issuer (signature, `sub` = the identity's
/// user, `cnf` = the signature key). Kept abstract so the group logic does not depend on
/// the token format.
pub type CredentialCheck =
    Box<dyn Fn(&MemberIdentity, &[u8]) -> Result<(), String> + Send + Sync + 'static>;

/// A credential about to enter the group: who it names, and its signature key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub identity: Vec<u8>,
    pub signature_key: Vec<u8>,
}

/// The participants the relay announced to this member, and the rules above.
pub struct Roster {
    me: String,
    /// In the call now: participant id -> user.
    present: BTreeMap<String, String>,
    /// Announced at some point (present or departed), in announcement order for the cap.
    announced: BTreeMap<String, (u64, String)>,
    next_seq: u64,
    check: Option<CredentialCheck>,
}

impl Roster {
    /// `me` is this member's participant id and `user` its user name.
    pub fn new(me: &str, user: &str, check: Option<CredentialCheck>) -> Self {
        let mut r = Roster {
            me: me.to_string(),
            present: BTreeMap::new(),
            announced: BTreeMap::new(),
            next_seq: 0,
            check,
        };
        r.joined(me, user);
        r
    }

    /// The relay announced `participant` (as `user`) in the call.
    pub fn joined(&mut self, participant: &str, user: &str) {
        self.present
            .insert(participant.to_string(), user.to_string());
        self.next_seq += 1;
        self.announced
            .insert(participant.to_string(), (self.next_seq, user.to_string()));
        if self.announced.len() > MAX_ANNOUNCED {
            let oldest = self
                .announced
                .iter()
                .filter(|(p, _)| !self.present.contains_key(*p))
                .min_by_key(|(_, (seq, _))| *seq)
                .map(|(p, _)| p.clone());
            if let Some(p) = oldest {
                self.announced.remove(&p);
            }
        }
    }

    /// The relay said `participant` left.
    pub fn left(&mut self, participant: &str) {
        if participant != self.me {
            self.present.remove(participant);
        }
    }

    pub fn is_present(&self, participant: &str) -> bool {
        self.present.contains_key(participant)
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Check one credential; `from` is the participant the relay said sent it (a
    /// KeyPackage), `None` for a credential inside a commit or a Welcome.
    pub fn check(&self, c: &Candidate, from: Option<&str>) -> Result<MemberIdentity, Refusal> {
        let id = MemberIdentity::parse(&c.identity)?;
        if let Some(from) = from {
            if !self.announced.contains_key(from) {
                return Err(Refusal::Unannounced(from.to_string()));
            }
            if id.participant != from {
                return Err(Refusal::NotTheSender {
                    named: id.participant,
                    from: from.to_string(),
                });
            }
        }
        let Some((_, announced_user)) = self.announced.get(&id.participant) else {
            return Err(Refusal::Unannounced(id.participant));
        };
        if *announced_user != id.user {
            return Err(Refusal::UserMismatch {
                participant: id.participant.clone(),
                named: id.user,
                announced: announced_user.clone(),
            });
        }
        if let Some(check) = &self.check {
            check(&id, &c.signature_key).map_err(Refusal::Unverified)?;
        }
        Ok(id)
    }

    /// Check a whole group (a Welcome's roster, or a group with a commit's adds): every
    /// credential passes [`Self::check`], and no participant or signature key repeats.
    pub fn check_all<'a>(
        &self,
        all: impl IntoIterator<Item = &'a Candidate>,
    ) -> Result<Vec<MemberIdentity>, Refusal> {
        let mut out: Vec<MemberIdentity> = Vec::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        for c in all {
            let id = self.check(c, None)?;
            if out.iter().any(|o| o.participant == id.participant) {
                return Err(Refusal::Duplicate(id.participant));
            }
            if keys.contains(&c.signature_key.as_slice()) {
                return Err(Refusal::DuplicateKey);
            }
            keys.push(&c.signature_key);
            out.push(id);
        }
        Ok(out)
    }
}

/// The `sub` of a JWT, read without checking its signature: a member puts its own user
/// name in its credential, and the others check it against what the relay announced
/// (and, with an issuer key, against the token itself).
pub fn token_subject(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v.get("sub")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(participant: &str, user: &str, key: u8) -> Candidate {
        Candidate {
            identity: MemberIdentity {
                participant: participant.into(),
                user: user.into(),
                token: None,
            }
            .to_bytes(),
            signature_key: vec![key; 32],
        }
    }

    #[test]
    fn key_packages_must_name_an_announced_sender() {
        let mut r = Roster::new("p-a", "ann", None);
        r.joined("p-b", "ben");
        assert!(r.check(&cand("p-b", "ben", 1), Some("p-b")).is_ok());
        let e = r
            .check(&cand("p-x", "mallory", 1), Some("p-x"))
            .unwrap_err();
        assert_eq!(e.reason(), "unannounced");
        let e = r
            .check(&cand("p-ghost", "ben", 1), Some("p-b"))
            .unwrap_err();
        assert_eq!(e.reason(), "not_the_sender");
        let e = r.check(&cand("p-b", "bob", 1), Some("p-b")).unwrap_err();
        assert_eq!(e.reason(), "user_mismatch");
        let bad = Candidate {
            identity: b"p-b".to_vec(),
            signature_key: vec![1; 32],
        };
        assert_eq!(
            r.check(&bad, Some("p-b")).unwrap_err().reason(),
            "bad_credential"
        );
        // Someone who left was still announced: a commit in flight may add them.
        r.left("p-b");
        assert!(!r.is_present("p-b"));
        assert!(r.check(&cand("p-b", "ben", 1), None).is_ok());
    }

    #[test]
    fn a_group_names_nobody_twice() {
        let mut r = Roster::new("p-a", "ann", None);
        r.joined("p-b", "ben");
        let a = cand("p-a", "ann", 1);
        let b = cand("p-b", "ben", 2);
        assert_eq!(r.check_all([&a, &b]).unwrap().len(), 2);
        assert_eq!(
            r.check_all([&a, &b, &cand("p-b", "ben", 3)])
                .unwrap_err()
                .reason(),
            "duplicate"
        );
        r.joined("p-c", "cat");
        assert_eq!(
            r.check_all([&a, &b, &cand("p-c", "cat", 2)])
                .unwrap_err()
                .reason(),
            "duplicate_key"
        );
    }

    #[test]
    fn the_issuer_check_runs_on_every_credential() {
        let check: CredentialCheck = Box::new(|id, key| {
            if id.token.as_deref() == Some("good") && key == [7u8; 32] {
                Ok(())
            } else {
                Err("not signed by the issuer".into())
            }
        });
        let mut r = Roster::new("p-a", "ann", Some(check));
        r.joined("p-b", "ben");
        let mut c = cand("p-b", "ben", 7);
        assert_eq!(r.check(&c, Some("p-b")).unwrap_err().reason(), "unverified");
        c.identity = MemberIdentity {
            participant: "p-b".into(),
            user: "ben".into(),
            token: Some("good".into()),
        }
        .to_bytes();
        assert!(r.check(&c, Some("p-b")).is_ok());
    }

    #[test]
    fn announcements_are_bounded() {
        let mut r = Roster::new("p-me", "me", None);
        for i in 0..(MAX_ANNOUNCED + 100) {
            let p = format!("p-{i}");
            r.joined(&p, "u");
            r.left(&p);
        }
        assert!(r.announced.len() <= MAX_ANNOUNCED);
        assert!(r.announced.contains_key("p-me"));
    }

    #[test]
    fn subject_of_a_jwt() {
        // {"alg":"HS256"} . {"sub":"ann","x":1} . sig
        let t = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4iLCJ4IjoxfQ.c2ln";
        assert_eq!(token_subject(t).as_deref(), Some("ann"));
        assert_eq!(token_subject("opaque"), None);
    }
}
