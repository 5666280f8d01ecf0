//! Active attacks by the relay: man in the middle, key substitution, low-order keys and
//! tampering with every byte of every message.

use e2ee_client::kex::{KexError, KexMessage, KeyAgreement, SessionKeys};
use sha2::{Digest, Sha256};

const CALL: &str = "call-mitm";

fn new(me: &str, peer: &str) -> KeyAgreement {
    match KeyAgreement::new(CALL, me, peer) {
        Ok(k) => k,
        Err(e) => panic!("constructing {me}: {e}"),
    }
}

fn keys(k: &KeyAgreement) -> &SessionKeys {
    match k.keys() {
        Some(keys) => keys,
        None => panic!("not done: {k:?}"),
    }
}

fn expect_reply(r: Result<Option<KexMessage>, KexError>) -> KexMessage {
    match r {
        Ok(Some(m)) => m,
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn full_man_in_the_middle_yields_different_codes() {
    for _ in 0..20 {
        let mut alice = new("alice", "bob");
        let mut bob = new("bob", "alice");
        // Mallory impersonates Bob toward Alice and Alice toward Bob, with her own keys.
        let mut mallory_as_bob = new("bob", "alice");
        let mut mallory_as_alice = new("alice", "bob");

        let Some(commit_a) = alice.start() else {
            panic!()
        };
        let public_m1 = expect_reply(mallory_as_bob.handle(commit_a));

        let Some(commit_m) = mallory_as_alice.start() else {
            panic!()
        };
        let public_b = expect_reply(bob.handle(commit_m));
        let reveal_m = expect_reply(mallory_as_alice.handle(public_b));
        assert_eq!(bob.handle(reveal_m), Ok(None));

        let reveal_a = expect_reply(alice.handle(public_m1));
        assert_eq!(mallory_as_bob.handle(reveal_a), Ok(None));

        // Each half-session is internally consistent...
        assert_eq!(
            keys(&alice).verification_code,
            keys(&mallory_as_bob).verification_code
        );
        assert_eq!(
            keys(&bob).verification_code,
            keys(&mallory_as_alice).verification_code
        );
        assert_eq!(keys(&alice).send_key, keys(&mallory_as_bob).recv_key);
        // ...but the users see different codes, so comparing them exposes Mallory.
        assert_ne!(keys(&alice).verification_code, keys(&bob).verification_code);
        assert_ne!(keys(&alice).send_key, keys(&bob).recv_key);
        assert_ne!(keys(&bob).send_key, keys(&alice).recv_key);
    }
}

#[test]
fn substituting_the_responder_key_changes_the_codes() {
    let mut alice = new("alice", "bob");
    let mut bob = new("bob", "alice");
    // Mallory's public key: the one her own responder instance sends.
    let mut mallory_as_bob = new("bob", "alice");
    let Some(commit) = alice.start() else {
        panic!()
    };
    let KexMessage::Public {
        public_key: mallory_pk,
    } = expect_reply(mallory_as_bob.handle(commit.clone()))
    else {
        panic!()
    };

    let mut public = expect_reply(bob.handle(commit));
    if let Some(pk) = public.public_key_mut() {
        *pk = mallory_pk;
    }
    let reveal = expect_reply(alice.handle(public));
    assert_eq!(bob.handle(reveal), Ok(None));
    assert_ne!(keys(&alice).verification_code, keys(&bob).verification_code);
    assert_ne!(keys(&alice).send_key, keys(&bob).recv_key);
}

#[test]
fn substituting_the_revealed_key_is_a_commit_mismatch() {
    let mut alice = new("alice", "bob");
    let mut bob = new("bob", "alice");
    let mut mallory_as_alice = new("alice", "bob");
    let Some(_) = mallory_as_alice.start() else {
        panic!()
    };
    let Some(commit) = alice.start() else {
        panic!()
    };
    let public = expect_reply(bob.handle(commit));
    // Mallory learns Bob's key only now; her own committed key was for another session.
    let KexMessage::Reveal {
        public_key: mallory_pk,
    } = expect_reply(mallory_as_alice.handle(public.clone()))
    else {
        panic!()
    };
    let mut reveal = expect_reply(alice.handle(public));
    if let Some(pk) = reveal.public_key_mut() {
        *pk = mallory_pk;
    }
    assert_eq!(bob.handle(reveal.clone()), Err(KexError::CommitMismatch));
    assert!(bob.is_failed());
    assert!(bob.keys().is_none());
    // Aborted for good: even the genuine reveal is no longer accepted.
    assert_eq!(bob.handle(reveal), Err(KexError::Aborted));
}

/// Points whose X25519 product with any clamped scalar is all zeros.
const LOW_ORDER_POINTS: [[u8; 32]; 3] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
];

#[test]
fn low_order_responder_key_is_rejected() {
    for point in LOW_ORDER_POINTS {
        let mut alice = new("alice", "bob");
        let Some(_) = alice.start() else { panic!() };
        assert_eq!(
            alice.handle(KexMessage::Public { public_key: point }),
            Err(KexError::LowOrderPublicKey)
        );
        assert!(alice.is_failed());
        assert!(alice.keys().is_none());
    }
}

#[test]
fn low_order_initiator_key_is_rejected_even_with_a_valid_commit() {
    for point in LOW_ORDER_POINTS {
        let mut bob = new("bob", "alice");
        // Mallory commits honestly to a low-order point, following the documented format.
        let mut ctx = Vec::new();
        for field in [CALL, "alice", "bob"] {
            ctx.extend_from_slice(&(field.len() as u16).to_be_bytes());
            ctx.extend_from_slice(field.as_bytes());
        }
        let hash: [u8; 32] = Sha256::new()
            .chain_update(b"blindrelay-e2ee-v1 commit")
            .chain_update(&ctx)
            .chain_update(point)
            .finalize()
            .into();
        let _ = expect_reply(bob.handle(KexMessage::Commit { hash }));
        assert_eq!(
            bob.handle(KexMessage::Reveal { public_key: point }),
            Err(KexError::LowOrderPublicKey)
        );
        assert!(bob.is_failed());
    }
}

/// What happened when one message was tampered with in transit.
#[derive(Debug)]
enum Outcome {
    Rejected(KexError),
    BothDone { codes_equal: bool, keys_match: bool },
    Stalled,
}

/// Runs an honest exchange in which the relay applies `tamper` to the message with
/// index `target` (0 = Commit, 1 = Public, 2 = Reveal) on its way as a blob.
fn run_with_tamper(target: usize, tamper: &dyn Fn(&str) -> String) -> Outcome {
    let mut alice = new("alice", "bob");
    let mut bob = new("bob", "alice");
    let mut index = 0;
    let mut relay = |blob: String| -> String {
        let out = if index == target { tamper(&blob) } else { blob };
        index += 1;
        out
    };
    let Some(commit) = alice.start() else {
        panic!()
    };
    let public = match bob.handle_blob(&relay(commit.to_blob())) {
        Ok(Some(p)) => p,
        Ok(None) => return Outcome::Stalled,
        Err(e) => return Outcome::Rejected(e),
    };
    let reveal = match alice.handle_blob(&relay(public)) {
        Ok(Some(r)) => r,
        Ok(None) => return Outcome::Stalled,
        Err(e) => return Outcome::Rejected(e),
    };
    match bob.handle_blob(&relay(reveal)) {
        Ok(_) => {}
        Err(e) => return Outcome::Rejected(e),
    }
    match (alice.keys(), bob.keys()) {
        (Some(a), Some(b)) => Outcome::BothDone {
            codes_equal: a.verification_code == b.verification_code,
            keys_match: a.send_key == b.recv_key || a.recv_key == b.send_key,
        },
        _ => Outcome::Stalled,
    }
}

/// Fails the test if tampering produced a "successful" session with equal codes;
/// returns the outcome for further checks.
fn assert_tamper_detected(target: usize, what: &str, tamper: &dyn Fn(&str) -> String) -> Outcome {
    let outcome = run_with_tamper(target, tamper);
    match outcome {
        Outcome::Rejected(_) | Outcome::Stalled => {}
        Outcome::BothDone {
            codes_equal,
            keys_match,
        } => {
            assert!(
                !codes_equal,
                "message {target}, {what}: tampering went unnoticed"
            );
            assert!(!keys_match, "message {target}, {what}: keys still match");
        }
    }
    outcome
}

#[test]
fn every_bit_of_every_decoded_field_matters() {
    for target in 0..3 {
        for byte in 0..32 {
            for bit in 0..8 {
                let tamper = move |blob: &str| -> String {
                    let Ok(mut msg) = KexMessage::from_blob(blob) else {
                        panic!("honest blob must parse")
                    };
                    msg.payload_mut()[byte] ^= 1 << bit;
                    msg.to_blob()
                };
                let what = format!("field byte {byte} bit {bit}");
                let outcome = assert_tamper_detected(target, &what, &tamper);
                // Commit/Reveal changes break the commitment; a changed pk_r (even its
                // ignored top bit) changes the transcript and hence the codes.
                match (target, &outcome) {
                    (0 | 2, Outcome::Rejected(KexError::CommitMismatch)) => {}
                    (1, Outcome::BothDone { .. }) => {}
                    _ => panic!("message {target}, {what}: unexpected {outcome:?}"),
                }
            }
        }
    }
}

#[test]
fn every_byte_of_every_blob_matters() {
    type Mutation = (&'static str, fn(u8) -> u8);
    let mutations: [Mutation; 3] = [
        ("xor 0x01", |b| b ^ 0x01),
        ("xor 0x20", |b| b ^ 0x20),
        ("set 'A'", |b| if b == b'A' { b'B' } else { b'A' }),
    ];
    for target in 0..3 {
        // All honest blobs of one type have the same length.
        let len = {
            let mut a = new("alice", "bob");
            let mut b = new("bob", "alice");
            let Some(c) = a.start() else { panic!() };
            let p = expect_reply(b.handle(c.clone()));
            let r = expect_reply(a.handle(p.clone()));
            [c, p, r][target].to_blob().len()
        };
        for pos in 0..len {
            for (name, mutate) in mutations {
                let tamper = move |blob: &str| -> String {
                    let mut bytes = blob.as_bytes().to_vec();
                    bytes[pos] = mutate(bytes[pos]);
                    String::from_utf8_lossy(&bytes).into_owned()
                };
                let _ = assert_tamper_detected(target, &format!("blob byte {pos} {name}"), &tamper);
            }
            // Deleting the byte must be caught too.
            let delete = move |blob: &str| -> String {
                let mut bytes = blob.as_bytes().to_vec();
                bytes.remove(pos);
                String::from_utf8_lossy(&bytes).into_owned()
            };
            let _ = assert_tamper_detected(target, &format!("blob byte {pos} deleted"), &delete);
        }
    }
}

#[test]
fn altered_commit_hash_is_a_commit_mismatch() {
    let mut alice = new("alice", "bob");
    let mut bob = new("bob", "alice");
    let Some(mut commit) = alice.start() else {
        panic!()
    };
    commit.payload_mut()[31] ^= 0x80;
    let public = expect_reply(bob.handle(commit));
    let reveal = expect_reply(alice.handle(public));
    assert_eq!(bob.handle(reveal), Err(KexError::CommitMismatch));
}
