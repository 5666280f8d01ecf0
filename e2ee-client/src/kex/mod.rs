//! 1:1 end-to-end key agreement: ZRTP-style commit-then-reveal over ephemeral X25519,
//! plus a verification code for users to compare out of band.
//!
//! The relay in the middle only forwards opaque blobs ([`KexMessage::to_blob`]); it is
//! untrusted. Without comparing the [`VerificationCode`] the exchange is only as good
//! as unauthenticated Diffie-Hellman; with it, a man in the middle is detected with
//! probability 1 - 10^-20.
//!
//! # Flow
//!
//! ```text
//! initiator                                   responder
//!   Commit { SHA-256(label || ctx || pk_i) } ->
//!                                           <- Public { pk_r }
//!   Reveal { pk_i }                          ->  check commit (constant time)
//!   keys                                         keys
//! ```
//!
//! Why commit-then-reveal: the initiator is bound to `pk_i` before it sees `pk_r`, and
//! the responder discloses `pk_r` before it sees `pk_i`. A man in the middle therefore
//! has to fix its keys on both sides before learning the honest keys it would need to
//! search for a colliding code, so it cannot grind; it gets one 10^-20 guess.
//!
//! # Roles
//!
//! The participant whose id sorts lower (byte order) initiates. Both sides compute this
//! locally, so the relay does not get to pick. The relay assigns the ids and could lie
//! about them, but the ids (and the call id) are hashed into both the commitment and the
//! transcript: a lie makes the views differ, which ends in `CommitMismatch`, an
//! `UnexpectedMessage` deadlock (both think they initiate), or different codes.
//!
//! # Derivation
//!
//! * `ctx = u16be(len) || call_id || u16be(len) || initiator_id || u16be(len) || responder_id`
//! * `commit = SHA-256("blindrelay-e2ee-v1 commit" || ctx || pk_i)`
//! * `transcript = SHA-256("blindrelay-e2ee-v1 transcript" || ctx || commit || pk_r || pk_i)`
//! * `shared = X25519(own secret, peer public)`, rejected if all zero (low-order point)
//! * `PRK = HKDF-SHA256-Extract(salt = transcript, ikm = shared)`
//! * `i2r = Expand(PRK, "blindrelay-e2ee-v1 sframe i2r", 16)`, `r2i` with `"... r2i"`
//!   (32-byte keys for AES-256 suites use `"blindrelay-e2ee-v1 sframe-256 i2r"`/`"... r2i"`,
//!   see [`BaseKeyLength`])
//! * `code = Expand(PRK, "blindrelay-e2ee-v1 verification code", 16)` → 20 digits
//!
//! Secrets: each [`KeyAgreement`] draws a fresh ephemeral key pair, the secret is consumed
//! (and wiped by `x25519-dalek`) at derivation, and no `Debug` impl prints key bytes.

pub mod code;
mod crypto;
mod error;
mod message;

use std::fmt;

use subtle::ConstantTimeEq;
use x25519_dalek::EphemeralSecret;

pub use code::{VerificationCode, VERIFICATION_CODE_DIGITS};
pub use crypto::{BaseKeyLength, SessionKeys, SframeBaseKey};
pub use error::KexError;
pub use message::{KexMessage, BLOB_VERSION, MAX_BLOB_LEN};

use crypto::KEY_LEN;

/// Which half of the protocol this side runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends `Commit` and `Reveal`.
    Initiator,
    /// Sends `Public` and verifies the commitment.
    Responder,
}

impl Role {
    /// The role of `my_id` facing `peer_id`: lower id (byte order) initiates.
    ///
    /// Symmetric: `choose(a, b)` and `choose(b, a)` always give opposite roles.
    pub fn choose(my_id: &str, peer_id: &str) -> Result<Self, KexError> {
        match my_id.as_bytes().cmp(peer_id.as_bytes()) {
            std::cmp::Ordering::Less => Ok(Self::Initiator),
            std::cmp::Ordering::Greater => Ok(Self::Responder),
            std::cmp::Ordering::Equal => Err(KexError::SameParticipantIds),
        }
    }
}

/// Sans-IO state machine for one side of one call's key agreement.
///
/// Feed received messages to [`KeyAgreement::handle`] and send whatever it returns.
pub struct KeyAgreement {
    role: Role,
    call_id: String,
    my_id: String,
    peer_id: String,
    /// Encoded (call id, initiator id, responder id), hashed into commit and transcript.
    context: Vec<u8>,
    key_length: BaseKeyLength,
    state: State,
}

enum State {
    /// Initiator before `start`; holds the key pair so the commit can be computed.
    InitiatorIdle {
        secret: EphemeralSecret,
        public: [u8; KEY_LEN],
    },
    /// Initiator waiting for `Public`.
    InitiatorCommitted {
        secret: EphemeralSecret,
        public: [u8; KEY_LEN],
        commit: [u8; KEY_LEN],
    },
    /// Responder waiting for `Commit`.
    ResponderIdle {
        secret: EphemeralSecret,
        public: [u8; KEY_LEN],
    },
    /// Responder waiting for `Reveal`.
    ResponderAwaitingReveal {
        secret: EphemeralSecret,
        public: [u8; KEY_LEN],
        commit: [u8; KEY_LEN],
    },
    Done(SessionKeys),
    /// A fatal error happened; nothing more is accepted.
    Failed,
}

impl State {
    fn describe(&self) -> &'static str {
        match self {
            Self::InitiatorIdle { .. } => "initiator has not started",
            Self::InitiatorCommitted { .. } => "initiator awaits public",
            Self::ResponderIdle { .. } => "responder awaits commit",
            Self::ResponderAwaitingReveal { .. } => "responder awaits reveal",
            Self::Done(_) => "done",
            Self::Failed => "failed",
        }
    }
}

impl KeyAgreement {
    /// Creates one side of the key agreement with 16-byte (AES-128) SFrame base keys.
    ///
    /// The role follows from the ids ([`Role::choose`]). Fails if the ids are equal,
    /// an identifier exceeds 65535 bytes, or the OS RNG fails.
    pub fn new(call_id: &str, my_id: &str, peer_id: &str) -> Result<Self, KexError> {
        Self::with_key_length(call_id, my_id, peer_id, BaseKeyLength::Aes128)
    }

    /// Like [`KeyAgreement::new`] but with a chosen SFrame base key length; both sides
    /// must use the same one (it is a property of the agreed SFrame cipher suite).
    pub fn with_key_length(
        call_id: &str,
        my_id: &str,
        peer_id: &str,
        key_length: BaseKeyLength,
    ) -> Result<Self, KexError> {
        let (secret, public) = crypto::generate_keypair()?;
        Self::with_keypair(call_id, my_id, peer_id, key_length, secret, public)
    }

    fn with_keypair(
        call_id: &str,
        my_id: &str,
        peer_id: &str,
        key_length: BaseKeyLength,
        secret: EphemeralSecret,
        public: [u8; KEY_LEN],
    ) -> Result<Self, KexError> {
        let role = Role::choose(my_id, peer_id)?;
        let (initiator_id, responder_id) = match role {
            Role::Initiator => (my_id, peer_id),
            Role::Responder => (peer_id, my_id),
        };
        let context = crypto::encode_context(call_id, initiator_id, responder_id)?;
        let state = match role {
            Role::Initiator => State::InitiatorIdle { secret, public },
            Role::Responder => State::ResponderIdle { secret, public },
        };
        Ok(Self {
            role,
            call_id: call_id.to_owned(),
            my_id: my_id.to_owned(),
            peer_id: peer_id.to_owned(),
            context,
            key_length,
            state,
        })
    }

    /// Deterministic constructor for unit tests: `seed` becomes the X25519 secret.
    #[cfg(test)]
    fn with_seed(
        call_id: &str,
        my_id: &str,
        peer_id: &str,
        seed: [u8; KEY_LEN],
    ) -> Result<Self, KexError> {
        let (secret, public) = crypto::keypair_from_seed(seed);
        Self::with_keypair(
            call_id,
            my_id,
            peer_id,
            BaseKeyLength::Aes128,
            secret,
            public,
        )
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The call id this agreement is bound to.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// Begins the exchange: the initiator returns its `Commit`; the responder (which
    /// only reacts) and an initiator that already started return `None`.
    pub fn start(&mut self) -> Option<KexMessage> {
        match std::mem::replace(&mut self.state, State::Failed) {
            State::InitiatorIdle { secret, public } => {
                let commit = crypto::commit_hash(&self.context, &public);
                self.state = State::InitiatorCommitted {
                    secret,
                    public,
                    commit,
                };
                Some(KexMessage::Commit { hash: commit })
            }
            other => {
                self.state = other;
                None
            }
        }
    }

    /// Processes a message from the peer and returns the reply to send, if any.
    ///
    /// Out-of-order or duplicate messages yield [`KexError::UnexpectedMessage`] and leave
    /// the state untouched. Security failures ([`KexError::CommitMismatch`],
    /// [`KexError::LowOrderPublicKey`], [`KexError::ReflectedPublicKey`]) abort the
    /// agreement; later calls return [`KexError::Aborted`].
    pub fn handle(&mut self, msg: KexMessage) -> Result<Option<KexMessage>, KexError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        match (state, msg) {
            (State::ResponderIdle { secret, public }, KexMessage::Commit { hash }) => {
                self.state = State::ResponderAwaitingReveal {
                    secret,
                    public,
                    commit: hash,
                };
                Ok(Some(KexMessage::Public { public_key: public }))
            }
            (
                State::InitiatorCommitted {
                    secret,
                    public,
                    commit,
                },
                KexMessage::Public { public_key: pk_r },
            ) => {
                let transcript = crypto::transcript_hash(&self.context, &commit, &pk_r, &public);
                let keys = self.finish(secret, &public, &pk_r, &transcript)?;
                self.state = State::Done(keys);
                Ok(Some(KexMessage::Reveal { public_key: public }))
            }
            (
                State::ResponderAwaitingReveal {
                    secret,
                    public,
                    commit,
                },
                KexMessage::Reveal { public_key: pk_i },
            ) => {
                let expected = crypto::commit_hash(&self.context, &pk_i);
                if !bool::from(expected.ct_eq(&commit)) {
                    return Err(KexError::CommitMismatch);
                }
                let transcript = crypto::transcript_hash(&self.context, &commit, &public, &pk_i);
                let keys = self.finish(secret, &public, &pk_i, &transcript)?;
                self.state = State::Done(keys);
                Ok(None)
            }
            (State::Failed, _) => Err(KexError::Aborted),
            (state, msg) => {
                let err = KexError::UnexpectedMessage {
                    state: state.describe(),
                    got: msg.kind(),
                };
                self.state = state;
                Err(err)
            }
        }
    }

    /// [`KeyAgreement::handle`] for blobs: parses `blob` and encodes the reply.
    ///
    /// A malformed blob is rejected without touching the state.
    pub fn handle_blob(&mut self, blob: &str) -> Result<Option<String>, KexError> {
        let msg = KexMessage::from_blob(blob)?;
        Ok(self.handle(msg)?.map(|reply| reply.to_blob()))
    }

    /// Runs X25519 and HKDF. The caller has already put `self.state` into `Failed`, so
    /// an error here leaves the agreement aborted.
    fn finish(
        &self,
        secret: EphemeralSecret,
        own_public: &[u8; KEY_LEN],
        peer_public: &[u8; KEY_LEN],
        transcript: &[u8; KEY_LEN],
    ) -> Result<SessionKeys, KexError> {
        // A reflected key would make both directions share one key pair's DH output
        // with ourselves; nothing honest does that, so refuse.
        if bool::from(own_public.ct_eq(peer_public)) {
            return Err(KexError::ReflectedPublicKey);
        }
        crypto::derive_session_keys(secret, peer_public, transcript, self.role, self.key_length)
    }

    /// Whether keys have been derived.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done(_))
    }

    /// Whether a fatal error aborted this agreement.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// The derived keys and verification code, once done.
    pub fn keys(&self) -> Option<&SessionKeys> {
        match &self.state {
            State::Done(keys) => Some(keys),
            _ => None,
        }
    }
}

impl fmt::Debug for KeyAgreement {
    /// Shows identities and progress only; secrets and derived keys stay hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAgreement")
            .field("role", &self.role)
            .field("call_id", &self.call_id)
            .field("my_id", &self.my_id)
            .field("peer_id", &self.peer_id)
            .field("key_length", &self.key_length)
            .field("state", &self.state.describe())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use hkdf::Hkdf;
    use sha2::{Digest, Sha256};

    use super::*;

    const SEED_A: [u8; 32] = [0x11; 32];
    const SEED_B: [u8; 32] = [0x22; 32];

    /// Runs an honest exchange with fixed secrets; "alice" initiates.
    fn run(call_id: &str, seed_a: [u8; 32], seed_b: [u8; 32]) -> (KeyAgreement, KeyAgreement) {
        let Ok(mut a) = KeyAgreement::with_seed(call_id, "alice", "bob", seed_a) else {
            panic!("alice");
        };
        let Ok(mut b) = KeyAgreement::with_seed(call_id, "bob", "alice", seed_b) else {
            panic!("bob");
        };
        let commit = a.start();
        assert!(b.start().is_none());
        let Some(commit) = commit else {
            panic!("no commit")
        };
        let Ok(Some(public)) = b.handle(commit) else {
            panic!("no public")
        };
        let Ok(Some(reveal)) = a.handle(public) else {
            panic!("no reveal")
        };
        assert!(matches!(b.handle(reveal), Ok(None)));
        (a, b)
    }

    fn keys(k: &KeyAgreement) -> &SessionKeys {
        match k.keys() {
            Some(keys) => keys,
            None => panic!("not done: {k:?}"),
        }
    }

    /// Recomputes everything from the written spec with plain sha2/hkdf calls, pinning
    /// the byte format so another implementation can interoperate.
    #[test]
    fn matches_independent_computation_of_the_spec() {
        let (a, b) = run("call-1", SEED_A, SEED_B);
        let pk_a = x25519_dalek::x25519(SEED_A, x25519_dalek::X25519_BASEPOINT_BYTES);
        let pk_b = x25519_dalek::x25519(SEED_B, x25519_dalek::X25519_BASEPOINT_BYTES);
        let shared = x25519_dalek::x25519(SEED_A, pk_b);

        let mut ctx = Vec::new();
        for f in ["call-1", "alice", "bob"] {
            ctx.extend_from_slice(&(f.len() as u16).to_be_bytes());
            ctx.extend_from_slice(f.as_bytes());
        }
        let commit =
            Sha256::digest([b"blindrelay-e2ee-v1 commit".as_slice(), &ctx, &pk_a].concat());
        let transcript = Sha256::digest(
            [
                b"blindrelay-e2ee-v1 transcript".as_slice(),
                &ctx,
                &commit,
                &pk_b,
                &pk_a,
            ]
            .concat(),
        );
        let hk = Hkdf::<Sha256>::new(Some(&transcript), &shared);
        let mut i2r = [0u8; 16];
        let mut r2i = [0u8; 16];
        let mut code = [0u8; 16];
        assert!(hk
            .expand(b"blindrelay-e2ee-v1 sframe i2r", &mut i2r)
            .is_ok());
        assert!(hk
            .expand(b"blindrelay-e2ee-v1 sframe r2i", &mut r2i)
            .is_ok());
        assert!(hk
            .expand(b"blindrelay-e2ee-v1 verification code", &mut code)
            .is_ok());
        let digits = format!("{:020}", u128::from_be_bytes(code) % 10u128.pow(20));

        let (ka, kb) = (keys(&a), keys(&b));
        assert_eq!(ka.send_key.as_bytes(), i2r);
        assert_eq!(ka.recv_key.as_bytes(), r2i);
        assert_eq!(kb.send_key.as_bytes(), r2i);
        assert_eq!(kb.recv_key.as_bytes(), i2r);
        assert_eq!(ka.verification_code.digits(), digits);
        assert_eq!(kb.verification_code.digits(), digits);
    }

    #[test]
    fn same_keys_different_call_ids_give_different_codes() {
        let (a1, _) = run("call-1", SEED_A, SEED_B);
        let (a2, _) = run("call-2", SEED_A, SEED_B);
        assert_ne!(keys(&a1).verification_code, keys(&a2).verification_code);
        assert_ne!(keys(&a1).send_key, keys(&a2).send_key);
    }

    #[test]
    fn identical_secrets_are_rejected_as_reflection() {
        // Equal seeds mean equal public keys, which is what a reflection looks like.
        let Ok(mut a) = KeyAgreement::with_seed("c", "alice", "bob", SEED_A) else {
            panic!()
        };
        assert!(a.start().is_some());
        let pk_a = x25519_dalek::x25519(SEED_A, x25519_dalek::X25519_BASEPOINT_BYTES);
        assert_eq!(
            a.handle(KexMessage::Public { public_key: pk_a }),
            Err(KexError::ReflectedPublicKey)
        );
        assert!(a.is_failed());
        assert_eq!(
            a.handle(KexMessage::Public {
                public_key: [9; 32]
            }),
            Err(KexError::Aborted)
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let (a, _) = run("call-1", SEED_A, SEED_B);
        let keys = keys(&a);
        let dbg = format!("{a:?} {keys:?}");
        assert!(dbg.contains("redacted"));
        for key in [&keys.send_key, &keys.recv_key] {
            assert!(!dbg.contains(&hex::encode(key.as_bytes())));
            assert!(!dbg.contains(&format!("{:?}", key.as_bytes())));
        }
    }
}

/// The cross-check with the web client (web/kex.js): exchanges run here with fixed secrets
/// are written to `web/test/kex-vectors.json`, and `node --test web/test/` replays them in
/// JavaScript (blobs, transcript, keys, code, and SFrame frames sealed with the keys).
/// The committed file must be exactly what this side computes; `BLINDRELAY_BLESS=1`
/// rewrites it.
#[cfg(test)]
mod web_vectors {
    use super::*;
    use crate::sframe::{CipherSuite, Sender};

    fn hexs(b: &[u8]) -> String {
        hex::encode(b)
    }

    fn case(call: &str, a: &str, b: &str, seed_a: [u8; 32], seed_b: [u8; 32]) -> serde_json::Value {
        let (Ok(mut ka), Ok(mut kb)) = (
            KeyAgreement::with_seed(call, a, b, seed_a),
            KeyAgreement::with_seed(call, b, a, seed_b),
        ) else {
            panic!("agreements")
        };
        // Whoever initiates starts.
        let (ini, res, seed_i, seed_r, ini_id, res_id) = if ka.role() == Role::Initiator {
            (&mut ka, &mut kb, seed_a, seed_b, a, b)
        } else {
            (&mut kb, &mut ka, seed_b, seed_a, b, a)
        };
        let Some(commit) = ini.start() else {
            panic!("commit")
        };
        let commit_blob = commit.to_blob();
        let Ok(Some(public)) = res.handle_blob(&commit_blob) else {
            panic!("public")
        };
        let Ok(Some(reveal)) = ini.handle_blob(&public) else {
            panic!("reveal")
        };
        assert!(matches!(res.handle_blob(&reveal), Ok(None)));
        let (Some(ki), Some(kr)) = (ini.keys(), res.keys()) else {
            panic!("keys")
        };
        assert_eq!(ki.verification_code, kr.verification_code);
        let (_, pk_i) = crypto::keypair_from_seed(seed_i);
        let (_, pk_r) = crypto::keypair_from_seed(seed_r);
        let Ok(ctx) = crypto::encode_context(call, ini_id, res_id) else {
            panic!("ctx")
        };
        let commit_hash = crypto::commit_hash(&ctx, &pk_i);
        let transcript = crypto::transcript_hash(&ctx, &commit_hash, &pk_r, &pk_i);
        // Frames sealed the way e2ee-client seals them: one SFrame sender per direction,
        // KID 1 (initiator) / 2 (responder), CTR from 0; media without metadata, chat with
        // metadata "chat".
        let suite = CipherSuite::AesGcm128Sha256;
        let mut send_i = Sender::new(suite, 1, ki.send_key.as_bytes());
        let mut send_r = Sender::new(suite, 2, kr.send_key.as_bytes());
        let mut frames = Vec::new();
        for (who, meta, pt) in [
            ("initiator", &b""[..], &b"audio frame 0"[..]),
            ("initiator", &b"chat"[..], &b"hello from the initiator"[..]),
            ("responder", &b""[..], &b"video frame 0"[..]),
            (
                "responder",
                &b"\x10\x02\x00"[..],
                &b"vp8 delta frame body"[..],
            ),
        ] {
            let sender = if who == "initiator" {
                &mut send_i
            } else {
                &mut send_r
            };
            let Ok(sealed) = sender.seal(meta, pt) else {
                panic!("seal")
            };
            frames.push(serde_json::json!({
                "sender": who, "metadata": hexs(meta), "plaintext": hexs(pt), "sealed": hexs(&sealed),
            }));
        }
        serde_json::json!({
            "call": call,
            "initiator_id": ini_id,
            "responder_id": res_id,
            "initiator_seed": hexs(&seed_i),
            "responder_seed": hexs(&seed_r),
            "initiator_public": hexs(&pk_i),
            "responder_public": hexs(&pk_r),
            "context": hexs(&ctx),
            "commit_blob": commit_blob,
            "public_blob": public,
            "reveal_blob": reveal,
            "transcript": hexs(&transcript),
            "i2r": hexs(ki.send_key.as_bytes()),
            "r2i": hexs(kr.send_key.as_bytes()),
            "verification_code": ki.verification_code.to_string(),
            "frames": frames,
        })
    }

    #[test]
    fn web_client_vectors_are_what_rust_computes() {
        let seed = |n: u8| {
            let mut s = [0u8; 32];
            for (i, b) in s.iter_mut().enumerate() {
                *b = n.wrapping_mul(31).wrapping_add(i as u8);
            }
            s
        };
        let cases = vec![
            case("call-1", "alice", "bob", [0x11; 32], [0x22; 32]),
            case("demo", "p-9f2c", "p-1a7e", seed(3), seed(4)),
            // Non-ASCII ids and call: byte order (UTF-8), not UTF-16 order, picks the roles.
            case("réunion-zoë", "🔒a", "\u{fb01}x", seed(5), seed(6)),
            case(&"c".repeat(300), "a", "b", seed(7), seed(8)),
        ];
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "about": "Written by e2ee-client's kex::web_vectors test (BLINDRELAY_BLESS=1 rewrites); replayed by web/test/kex.test.mjs",
            "cases": cases,
        }))
        .expect("JSON")
            + "\n";
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/test/kex-vectors.json");
        if std::env::var("BLINDRELAY_BLESS").is_ok_and(|v| v == "1") {
            std::fs::write(&path, &text).expect("write kex-vectors.json");
        }
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (BLINDRELAY_BLESS=1 writes it)", path.display()));
        assert!(
            committed == text,
            "{} differs from what Rust computes now; rerun with BLINDRELAY_BLESS=1 if the change is intended",
            path.display()
        );
    }
}
