//! Honest runs, role choice, message ordering and identity binding of the key agreement.

use e2ee_client::kex::{BaseKeyLength, KexError, KexMessage, KeyAgreement, Role, SessionKeys};

fn new(call_id: &str, me: &str, peer: &str) -> KeyAgreement {
    match KeyAgreement::new(call_id, me, peer) {
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

/// Exchanges blobs (as the relay would) until neither side has anything to send.
fn exchange(a: &mut KeyAgreement, b: &mut KeyAgreement) -> Result<(), KexError> {
    let mut to_b = a.start().map(|m| m.to_blob());
    let mut to_a = b.start().map(|m| m.to_blob());
    while to_a.is_some() || to_b.is_some() {
        if let Some(blob) = to_b.take() {
            to_a = b.handle_blob(&blob)?;
        }
        if let Some(blob) = to_a.take() {
            to_b = a.handle_blob(&blob)?;
        }
    }
    Ok(())
}

fn assert_matching(a: &KeyAgreement, b: &KeyAgreement) {
    let (ka, kb) = (keys(a), keys(b));
    assert_eq!(ka.verification_code, kb.verification_code);
    assert_eq!(ka.send_key, kb.recv_key);
    assert_eq!(ka.recv_key, kb.send_key);
    assert_ne!(ka.send_key, ka.recv_key);
}

#[test]
fn honest_parties_agree() {
    let mut alice = new("call-42", "alice", "bob");
    let mut bob = new("call-42", "bob", "alice");
    assert_eq!(exchange(&mut alice, &mut bob), Ok(()));
    assert!(alice.is_done() && bob.is_done());
    assert_matching(&alice, &bob);

    let code = keys(&alice).verification_code.to_string();
    assert_eq!(code.len(), 23);
    let groups: Vec<&str> = code.split(' ').collect();
    assert_eq!(groups.len(), 4);
    assert!(groups
        .iter()
        .all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit())));
    assert_eq!(
        keys(&alice).verification_code.digits(),
        code.replace(' ', "")
    );
    assert_eq!(keys(&alice).send_key.as_bytes().len(), 16);
}

#[test]
fn honest_parties_agree_in_memory_without_blobs() {
    let mut alice = new("c", "alice", "bob");
    let mut bob = new("c", "bob", "alice");
    let commit = alice.start();
    let Some(commit) = commit else {
        panic!("initiator must commit")
    };
    let Ok(Some(public)) = bob.handle(commit) else {
        panic!("responder must answer with its public key")
    };
    assert!(!alice.is_done() && !bob.is_done());
    let Ok(Some(reveal)) = alice.handle(public) else {
        panic!("initiator must reveal")
    };
    assert!(alice.is_done() && !bob.is_done());
    assert!(matches!(bob.handle(reveal), Ok(None)));
    assert_matching(&alice, &bob);
}

#[test]
fn aes256_key_length() {
    let (Ok(mut alice), Ok(mut bob)) = (
        KeyAgreement::with_key_length("c", "alice", "bob", BaseKeyLength::Aes256),
        KeyAgreement::with_key_length("c", "bob", "alice", BaseKeyLength::Aes256),
    ) else {
        panic!("construction failed")
    };
    assert_eq!(exchange(&mut alice, &mut bob), Ok(()));
    assert_matching(&alice, &bob);
    assert_eq!(keys(&alice).send_key.as_bytes().len(), 32);
}

#[test]
fn each_instance_uses_fresh_ephemeral_keys() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut alice = new("same-call", "alice", "bob");
        let mut bob = new("same-call", "bob", "alice");
        let Some(commit) = alice.start() else {
            panic!("initiator must commit")
        };
        let Ok(Some(public)) = bob.handle(commit.clone()) else {
            panic!()
        };
        let Ok(Some(reveal)) = alice.handle(public) else {
            panic!()
        };
        assert_eq!(bob.handle(reveal), Ok(None));
        runs.push((commit, keys(&alice).clone()));
    }
    assert_ne!(runs[0].0, runs[1].0);
    assert_ne!(runs[0].1.send_key, runs[1].1.send_key);
    assert_ne!(runs[0].1.verification_code, runs[1].1.verification_code);
}

#[test]
fn role_choice_is_deterministic_and_symmetric() {
    let pairs = [
        ("alice", "bob"),
        ("Bob", "alice"), // byte order: uppercase sorts first
        ("a", "ab"),      // prefix sorts first
        ("peer-10", "peer-9"),
        ("zoe", "zoë"), // ASCII sorts before multi-byte UTF-8
        ("", "x"),
    ];
    for (lo, hi) in pairs {
        assert_eq!(Role::choose(lo, hi), Ok(Role::Initiator), "{lo} vs {hi}");
        assert_eq!(Role::choose(hi, lo), Ok(Role::Responder), "{hi} vs {lo}");
        assert_eq!(new("c", lo, hi).role(), Role::Initiator);
        assert_eq!(new("c", hi, lo).role(), Role::Responder);
    }
    assert_eq!(
        Role::choose("same", "same"),
        Err(KexError::SameParticipantIds)
    );
    assert!(matches!(
        KeyAgreement::new("c", "same", "same"),
        Err(KexError::SameParticipantIds)
    ));
}

#[test]
fn whoever_starts_first_the_lower_id_commits() {
    // Bob is created and started first; only Alice (lower id) produces a commit.
    let mut bob = new("c", "bob", "alice");
    assert_eq!(bob.start(), None);
    let mut alice = new("c", "alice", "bob");
    let commit = alice.start();
    assert!(matches!(commit, Some(KexMessage::Commit { .. })));
    assert_eq!(alice.start(), None, "second start must not re-commit");
    let Some(commit) = commit else { unreachable!() };
    let Ok(Some(public)) = bob.handle(commit) else {
        panic!()
    };
    let Ok(Some(reveal)) = alice.handle(public) else {
        panic!()
    };
    assert_eq!(bob.handle(reveal), Ok(None));
    assert_matching(&alice, &bob);
}

fn unexpected(r: Result<Option<KexMessage>, KexError>) -> bool {
    matches!(r, Err(KexError::UnexpectedMessage { .. }))
}

#[test]
fn out_of_order_messages_are_typed_errors_and_harmless() {
    let mut alice = new("c", "alice", "bob");
    let mut bob = new("c", "bob", "alice");
    let fake_key = [7u8; 32];

    // Responder: Reveal or Public before any Commit.
    assert!(unexpected(bob.handle(KexMessage::Reveal {
        public_key: fake_key
    })));
    assert!(unexpected(bob.handle(KexMessage::Public {
        public_key: fake_key
    })));
    // Initiator: Public before it committed; Commit/Reveal never go to an initiator.
    assert!(unexpected(alice.handle(KexMessage::Public {
        public_key: fake_key
    })));
    assert!(unexpected(
        alice.handle(KexMessage::Commit { hash: [1; 32] })
    ));

    let Some(commit) = alice.start() else {
        panic!()
    };
    assert!(unexpected(
        alice.handle(KexMessage::Commit { hash: [1; 32] })
    ));
    assert!(unexpected(alice.handle(KexMessage::Reveal {
        public_key: fake_key
    })));

    let Ok(Some(public)) = bob.handle(commit.clone()) else {
        panic!()
    };
    // Duplicate (and different) Commits are refused; the first one stays binding.
    assert!(unexpected(bob.handle(commit.clone())));
    assert!(unexpected(bob.handle(KexMessage::Commit { hash: [2; 32] })));
    assert!(unexpected(bob.handle(public.clone())));

    let Ok(Some(reveal)) = alice.handle(public.clone()) else {
        panic!()
    };
    assert!(unexpected(alice.handle(public.clone())), "duplicate Public");
    assert_eq!(bob.handle(reveal.clone()), Ok(None));
    assert!(unexpected(bob.handle(reveal)), "duplicate Reveal");
    assert!(unexpected(bob.handle(commit)), "Commit after done");

    // None of the noise disturbed the honest result.
    assert!(!alice.is_failed() && !bob.is_failed());
    assert_matching(&alice, &bob);
}

#[test]
fn malformed_blob_leaves_state_untouched() {
    let mut alice = new("c", "alice", "bob");
    let mut bob = new("c", "bob", "alice");
    let Some(commit) = alice.start() else {
        panic!()
    };
    assert!(matches!(
        bob.handle_blob("garbage"),
        Err(KexError::InvalidJson(_))
    ));
    let Ok(Some(public)) = bob.handle_blob(&commit.to_blob()) else {
        panic!()
    };
    let Ok(Some(reveal)) = alice.handle_blob(&public) else {
        panic!()
    };
    assert_eq!(bob.handle_blob(&reveal), Ok(None));
    assert_matching(&alice, &bob);
}

#[test]
fn different_call_ids_never_agree() {
    // The call id is inside the commitment, so the responder notices at once.
    let mut alice = new("call-1", "alice", "bob");
    let mut bob = new("call-2", "bob", "alice");
    assert_eq!(
        exchange(&mut alice, &mut bob),
        Err(KexError::CommitMismatch)
    );
    assert!(bob.is_failed());
    assert!(bob.keys().is_none());
}

#[test]
fn relay_lying_about_ids_is_detected() {
    // Bob is told a different name for himself than Alice was told.
    let mut alice = new("c", "alice", "bob");
    let mut bob = new("c", "bobby", "alice");
    assert_eq!(
        exchange(&mut alice, &mut bob),
        Err(KexError::CommitMismatch)
    );

    // Ids chosen so both sides think they initiate: both commit, neither accepts a Commit.
    let mut alice = new("c", "a", "z");
    let mut bob = new("c", "b", "z");
    assert!(matches!(
        exchange(&mut alice, &mut bob),
        Err(KexError::UnexpectedMessage { .. })
    ));
    assert!(alice.keys().is_none() && bob.keys().is_none());
}

#[test]
fn debug_output_hides_key_bytes() {
    let mut alice = new("c", "alice", "bob");
    let mut bob = new("c", "bob", "alice");
    assert_eq!(exchange(&mut alice, &mut bob), Ok(()));
    let k = keys(&alice);
    let dbg = format!("{alice:?} {bob:?} {k:?} {:?}", k.send_key);
    for key in [&k.send_key, &k.recv_key] {
        assert!(!dbg.contains(&hex::encode(key.as_bytes())));
        assert!(!dbg.contains(&format!("{:?}", key.as_bytes())));
    }
    assert!(dbg.contains("redacted"));
}
