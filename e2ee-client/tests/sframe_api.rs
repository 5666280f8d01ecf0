//! Behaviour of the SFrame sender/receiver API: round trips, replay, tampering, ratchet,
//! counter exhaustion and malformed input.

use e2ee_client::sframe::{
    self, decrypt, encrypt, open_hex, seal_hex, CipherSuite, FrameKey, Header, HeaderError,
    RatchetParams, Receiver, Sender, SframeError,
};

const EDGES: [u64; 6] = [0, 7, 8, 255, 256, u64::MAX];
const BASE_KEY: &[u8] = b"0123456789abcdef";

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

#[test]
fn round_trip_all_suites_edge_kid_ctr() {
    let metadatas: [&[u8]; 2] = [b"", b"rtp-metadata"];
    for suite in CipherSuite::ALL {
        for kid in EDGES {
            for ctr in EDGES {
                for (i, metadata) in metadatas.iter().enumerate() {
                    let pt = payload(((kid ^ ctr) % 97) as usize + i * 40);
                    let mut tx = Sender::with_counter(suite, kid, BASE_KEY, ctr);
                    let frame = tx.seal(metadata, &pt).unwrap();
                    let (h, hlen) = Header::decode(&frame).unwrap();
                    assert_eq!((h.kid, h.ctr), (kid, ctr));
                    assert_eq!(frame.len(), hlen + pt.len() + suite.nt());
                    // The stateful sender and the stateless helper agree byte for byte.
                    assert_eq!(
                        frame,
                        encrypt(suite, BASE_KEY, kid, ctr, metadata, &pt).unwrap()
                    );

                    let mut rx = Receiver::new();
                    rx.add_key(suite, kid, BASE_KEY);
                    let mut buf = frame.clone();
                    let opened = rx.open_in_place(metadata, &mut buf).unwrap();
                    assert_eq!((opened.kid, opened.ctr), (kid, ctr));
                    assert_eq!(&buf[opened.plaintext], &pt[..]);
                    assert_eq!(
                        decrypt(suite, BASE_KEY, metadata, &frame).unwrap(),
                        (kid, ctr, pt)
                    );
                }
            }
        }
    }
}

#[test]
fn seal_variants_agree() {
    for suite in CipherSuite::ALL {
        let pt = payload(1200);
        let meta = b"m";
        let mut a = Sender::new(suite, 3, BASE_KEY);
        let mut b = Sender::new(suite, 3, BASE_KEY);
        let mut c = Sender::new(suite, 3, BASE_KEY);
        for ctr in 0..20u64 {
            let expected = encrypt(suite, BASE_KEY, 3, ctr, meta, &pt).unwrap();
            let mut out = Vec::new();
            a.seal_into(meta, &pt, &mut out).unwrap();
            assert_eq!(out, expected);
            let mut inplace = pt.clone();
            b.seal_in_place(meta, &mut inplace).unwrap();
            assert_eq!(inplace, expected);
            let mut fixed = [0u8; 1300];
            let n = c.seal_to_slice(meta, &pt, &mut fixed).unwrap();
            assert_eq!(&fixed[..n], &expected[..]);
        }
    }
}

#[test]
fn seal_to_slice_too_small_consumes_no_counter() {
    let mut tx = Sender::new(CipherSuite::AesGcm128Sha256, 1, BASE_KEY);
    let mut small = [0u8; 20];
    assert_eq!(
        tx.seal_to_slice(b"", &payload(10), &mut small),
        Err(SframeError::BufferTooSmall {
            needed: 27,
            available: 20
        })
    );
    assert_eq!(tx.next_counter(), Some(0));
}

#[test]
fn replay_rejected() {
    for suite in CipherSuite::ALL {
        let mut tx = Sender::new(suite, 9, BASE_KEY);
        let mut rx = Receiver::new();
        rx.add_key(suite, 9, BASE_KEY);
        let frames: Vec<Vec<u8>> = (0..3).map(|_| tx.seal(b"", b"frame").unwrap()).collect();
        for f in &frames {
            rx.open(b"", f).unwrap();
        }
        for (ctr, f) in frames.iter().enumerate() {
            assert_eq!(
                rx.open(b"", f),
                Err(SframeError::Replay {
                    kid: 9,
                    ctr: ctr as u64
                })
            );
        }
    }
}

#[test]
fn reordering_inside_window_ok_too_old_rejected() {
    let suite = CipherSuite::AesGcm128Sha256;
    let mut tx = Sender::new(suite, 1, BASE_KEY);
    let mut rx = Receiver::with_replay_window(16).unwrap();
    rx.add_key(suite, 1, BASE_KEY);
    let frames: Vec<Vec<u8>> = (0..40).map(|_| tx.seal(b"", b"x").unwrap()).collect();
    rx.open(b"", &frames[39]).unwrap();
    rx.open(b"", &frames[30]).unwrap(); // 9 behind: inside the 16-frame window
    rx.open(b"", &frames[24]).unwrap(); // 15 behind: last slot of the window
    assert_eq!(
        rx.open(b"", &frames[23]),
        Err(SframeError::TooOld {
            kid: 1,
            ctr: 23,
            oldest: 24
        })
    );
    assert_eq!(
        rx.open(b"", &frames[0]),
        Err(SframeError::TooOld {
            kid: 1,
            ctr: 0,
            oldest: 24
        })
    );
    assert_eq!(
        rx.open(b"", &frames[30]),
        Err(SframeError::Replay { kid: 1, ctr: 30 })
    );
    assert!(Receiver::with_replay_window(0).is_err());
    assert!(Receiver::with_replay_window(1025).is_err());
}

#[test]
fn tampering_detected_with_typed_errors() {
    for suite in CipherSuite::ALL {
        let kid = 300; // two-byte KID field
        let mut tx = Sender::with_counter(suite, kid, BASE_KEY, 1000);
        let meta = b"metadata";
        let frame = tx.seal(meta, &payload(64)).unwrap();
        let hlen = Header::decode(&frame).unwrap().1;
        assert_eq!(hlen, 5);
        let mut rx = Receiver::new();
        rx.add_key(suite, kid, BASE_KEY);

        let tampered = |i: usize| {
            let mut f = frame.clone();
            f[i] ^= 0x01;
            f
        };
        // Header CTR byte: a different, unseen counter -> the tag no longer verifies.
        assert_eq!(
            rx.open(meta, &tampered(hlen - 1)),
            Err(SframeError::AuthenticationFailed),
            "{suite}"
        );
        // Header KID byte: names a key we do not have.
        assert_eq!(
            rx.open(meta, &tampered(2)),
            Err(SframeError::UnknownKid { kid: 301 }),
            "{suite}"
        );
        // Config byte changed to an 8-byte CTR: a different counter (read partly from the
        // ciphertext), so authentication fails.
        let mut f = frame.clone();
        f[0] = 0x9f;
        assert_eq!(
            rx.open(meta, &f),
            Err(SframeError::AuthenticationFailed),
            "{suite}"
        );
        // The same (KID, CTR) re-encoded non-minimally (CTR as 00 03 e8) is a bad header.
        let mut f = vec![0x9a, 0x01, 0x2c, 0x00, 0x03, 0xe8];
        f.extend_from_slice(&frame[hlen..]);
        assert_eq!(
            rx.open(meta, &f),
            Err(SframeError::BadHeader(HeaderError::NonMinimal {
                field: "CTR"
            })),
            "{suite}"
        );
        // Config byte announcing more header bytes than the frame has.
        assert_eq!(
            rx.open(meta, &frame[..3]),
            Err(SframeError::BadHeader(HeaderError::Truncated {
                needed: 5,
                available: 3
            })),
            "{suite}"
        );
        // Ciphertext byte.
        assert_eq!(
            rx.open(meta, &tampered(hlen + 10)),
            Err(SframeError::AuthenticationFailed),
            "{suite}"
        );
        // Tag bytes (first and last).
        let tag_start = frame.len() - suite.nt();
        assert_eq!(
            rx.open(meta, &tampered(tag_start)),
            Err(SframeError::AuthenticationFailed),
            "{suite}"
        );
        assert_eq!(
            rx.open(meta, &tampered(frame.len() - 1)),
            Err(SframeError::AuthenticationFailed),
            "{suite}"
        );
        // Metadata is authenticated too.
        assert_eq!(
            rx.open(b"metadatA", &frame),
            Err(SframeError::AuthenticationFailed),
            "{suite}"
        );
        // A failed in-place open never leaves plaintext behind: the buffer is unchanged
        // (CTR suites verify first) or its ciphertext part is zeroed (AES-GCM).
        let mut buf = tampered(hlen + 10);
        let before = buf.clone();
        assert!(rx.open_in_place(meta, &mut buf).is_err());
        assert_eq!(buf[..hlen], before[..hlen]);
        let body = &buf[hlen..frame.len() - suite.nt()];
        if suite.is_ctr_hmac() {
            assert_eq!(buf, before);
        } else {
            assert!(
                body == &before[hlen..frame.len() - suite.nt()] || body.iter().all(|&b| b == 0)
            );
        }
        assert!(
            !buf.windows(16).any(|w| w == &payload(64)[..16]),
            "no plaintext leaked"
        );
        // None of the forgeries consumed the genuine frame's counter.
        let (_, ctr, pt) = rx.open(meta, &frame).unwrap();
        assert_eq!((ctr, pt), (1000, payload(64)));
    }
}

#[test]
fn truncated_header_and_short_ciphertext() {
    let suite = CipherSuite::AesCtr128HmacSha256_80;
    let mut rx = Receiver::new();
    rx.add_key(suite, 1, BASE_KEY);
    assert_eq!(
        rx.open(b"", &[]),
        Err(SframeError::BadHeader(HeaderError::Truncated {
            needed: 1,
            available: 0
        }))
    );
    assert_eq!(
        rx.open(b"", &[0x1a, 0x01]),
        Err(SframeError::BadHeader(HeaderError::Truncated {
            needed: 4,
            available: 2
        }))
    );
    // Header (KID 1, CTR 0) then fewer bytes than the 10-byte tag.
    assert_eq!(
        rx.open(b"", &[0x10, 1, 2, 3]),
        Err(SframeError::CiphertextTooShort {
            len: 3,
            tag_len: 10
        })
    );
    let mut buf = [0x10u8, 1, 2];
    assert_eq!(
        rx.open_in_place(b"", &mut buf),
        Err(SframeError::CiphertextTooShort {
            len: 2,
            tag_len: 10
        })
    );
    // Exactly a tag and no ciphertext is well-formed but forged.
    assert_eq!(
        rx.open(b"", &[0x10; 11]),
        Err(SframeError::AuthenticationFailed)
    );
    // An empty plaintext is a valid frame.
    let mut tx = Sender::new(suite, 1, BASE_KEY);
    let f = tx.seal(b"", b"").unwrap();
    assert_eq!(f.len(), 1 + 10);
    assert_eq!(rx.open(b"", &f).unwrap(), (1, 0, vec![]));
}

#[test]
fn malformed_input_never_panics() {
    // Deterministic xorshift so failures are reproducible.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for suite in CipherSuite::ALL {
        let mut rx = Receiver::new();
        for kid in 0..8 {
            rx.add_key(suite, kid, BASE_KEY);
        }
        let mut tx = Sender::new(suite, 2, BASE_KEY);
        let good = tx.seal(b"", &payload(40)).unwrap();
        // Every truncation of a genuine frame.
        for n in 0..good.len() {
            assert!(rx.open(b"", &good[..n]).is_err());
            assert!(decrypt(suite, BASE_KEY, b"", &good[..n]).is_err());
        }
        // Random garbage.
        for _ in 0..2000 {
            let len = (next() % 48) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(b) = buf.first_mut() {
                *b &= 0x77; // mostly small KIDs so lookups succeed and the AEAD path runs
            }
            let _ = Header::decode(&buf);
            let _ = rx.open(b"", &buf);
            let _ = rx.open_in_place(b"", &mut buf.clone());
            let _ = decrypt(suite, BASE_KEY, b"", &buf);
        }
        assert_eq!(rx.open(b"", &good).unwrap().2, payload(40));
    }
}

#[test]
fn unknown_kid() {
    let mut tx = Sender::new(CipherSuite::AesGcm256Sha512, 42, BASE_KEY);
    let frame = tx.seal(b"", b"hello").unwrap();
    let mut rx = Receiver::new();
    assert_eq!(
        rx.open(b"", &frame),
        Err(SframeError::UnknownKid { kid: 42 })
    );
    rx.add_key(CipherSuite::AesGcm256Sha512, 42, BASE_KEY);
    assert!(rx.has_key(42));
    assert_eq!(rx.open(b"", &frame).unwrap().2, b"hello");
    assert!(rx.remove_key(42));
    assert_eq!(
        rx.open(b"", &frame),
        Err(SframeError::UnknownKid { kid: 42 })
    );
    // A FrameKey refuses frames for other KIDs instead of failing authentication.
    let fk = FrameKey::new(CipherSuite::AesGcm256Sha512, 41, BASE_KEY);
    assert_eq!(
        fk.open_in_place(b"", &mut frame.clone()),
        Err(SframeError::UnknownKid { kid: 42 })
    );
}

#[test]
fn wrong_key_or_suite_fails_authentication() {
    let mut tx = Sender::new(CipherSuite::AesGcm128Sha256, 5, BASE_KEY);
    let frame = tx.seal(b"", &payload(30)).unwrap();
    let mut rx = Receiver::new();
    rx.add_key(CipherSuite::AesGcm128Sha256, 5, b"another key");
    assert_eq!(rx.open(b"", &frame), Err(SframeError::AuthenticationFailed));
    rx.add_key(CipherSuite::AesGcm256Sha512, 5, BASE_KEY);
    assert_eq!(rx.open(b"", &frame), Err(SframeError::AuthenticationFailed));
    rx.add_key(CipherSuite::AesGcm128Sha256, 5, BASE_KEY);
    assert_eq!(rx.open(b"", &frame).unwrap().2, payload(30));
}

#[test]
fn counter_exhaustion_never_wraps() {
    for suite in CipherSuite::ALL {
        let kid = 77;
        let mut tx = Sender::with_counter(suite, kid, BASE_KEY, u64::MAX - 1);
        let mut rx = Receiver::new();
        rx.add_key(suite, kid, BASE_KEY);
        let a = tx.seal(b"", b"a").unwrap();
        assert_eq!(tx.next_counter(), Some(u64::MAX));
        let b = tx.seal(b"", b"b").unwrap();
        assert_eq!(tx.next_counter(), None);
        let exhausted = Err(SframeError::CounterExhausted { kid });
        assert_eq!(tx.seal(b"", b"c"), exhausted.clone());
        let mut out = Vec::new();
        assert_eq!(
            tx.seal_into(b"", b"c", &mut out),
            exhausted.clone().map(|_: Vec<u8>| 0)
        );
        let mut buf = b"c".to_vec();
        assert_eq!(
            tx.seal_in_place(b"", &mut buf),
            exhausted.clone().map(|_: Vec<u8>| 0)
        );
        assert_eq!(buf, b"c", "plaintext untouched on refusal");
        assert_eq!(
            tx.seal_to_slice(b"", b"c", &mut [0u8; 64]),
            exhausted.map(|_: Vec<u8>| 0)
        );
        assert_eq!(rx.open(b"", &a).unwrap().1, u64::MAX - 1);
        assert_eq!(rx.open(b"", &b).unwrap().1, u64::MAX);
        assert_eq!(
            rx.open(b"", &b),
            Err(SframeError::Replay { kid, ctr: u64::MAX })
        );
    }
}

#[test]
fn ratchet_forward() {
    for suite in CipherSuite::ALL {
        let params = RatchetParams::new(2).unwrap();
        let kid0 = params.kid(3, 0).unwrap();
        assert_eq!(kid0, 12);
        let mut tx = Sender::new_ratcheting(suite, params, kid0, BASE_KEY);
        let mut rx = Receiver::new();
        rx.add_ratcheting_key(suite, params, kid0, BASE_KEY);

        let f0 = tx.seal(b"", b"step0").unwrap();
        assert_eq!(rx.open(b"", &f0).unwrap(), (12, 0, b"step0".to_vec()));

        // One step: KID 13, counter restarts at 0, receiver derives the key on demand.
        assert_eq!(tx.ratchet().unwrap(), 13);
        assert_eq!(tx.next_counter(), Some(0));
        let f1 = tx.seal(b"", b"step1").unwrap();
        assert_eq!(rx.open(b"", &f1).unwrap(), (13, 0, b"step1".to_vec()));
        // A late frame from step 0 still opens (retention keeps the previous step).
        let f0b = {
            let mut old = Sender::with_counter(suite, kid0, BASE_KEY, 1);
            old.seal(b"", b"late").unwrap()
        };
        assert_eq!(rx.open(b"", &f0b).unwrap().2, b"late");

        // A forged frame for the next step must not make the receiver ratchet.
        let mut forged = tx.seal(b"", b"x").unwrap();
        assert_eq!(forged[1], 13); // one extended KID byte after the config byte
        forged[1] = 14;
        let forged_kid = 14;
        assert_eq!(Header::decode(&forged).unwrap().0.kid, forged_kid);
        assert_eq!(
            rx.open(b"", &forged),
            Err(SframeError::AuthenticationFailed)
        );
        assert!(!rx.has_key(forged_kid));

        // Skip a step: 13 -> 15, the receiver ratchets twice; step 0 (KID 12) is dropped.
        tx.ratchet().unwrap();
        assert_eq!(tx.ratchet().unwrap(), 15);
        let f3 = tx.seal(b"", b"step3").unwrap();
        assert_eq!(rx.open(b"", &f3).unwrap(), (15, 0, b"step3".to_vec()));
        assert!(rx.has_key(13) && rx.has_key(15) && !rx.has_key(12));
        assert!(
            rx.open(b"", &f0b).is_err(),
            "forward secrecy: old step forgotten"
        );

        // Wrap around the 2-bit step field: 15 -> 12 (step 4 = 0 mod 4).
        assert_eq!(tx.ratchet().unwrap(), 12);
        let f4 = tx.seal(b"", b"step4").unwrap();
        assert_eq!(rx.open(b"", &f4).unwrap(), (12, 0, b"step4".to_vec()));
        // The wrapped KID 12 carries a different key than step 0 did.
        assert_ne!(f4, {
            let mut s0 = Sender::new(suite, 12, BASE_KEY);
            s0.seal(b"", b"step4").unwrap()
        });
    }
}

#[test]
fn ratchet_jump_limit_and_misuse() {
    let suite = CipherSuite::AesGcm128Sha256;
    let params = RatchetParams::new(8).unwrap();
    let kid0 = params.kid(1, 0).unwrap();
    let mut tx = Sender::new_ratcheting(suite, params, kid0, BASE_KEY);
    let mut rx = Receiver::new();
    rx.set_max_ratchet_jump(2);
    rx.add_ratcheting_key(suite, params, kid0, BASE_KEY);
    for _ in 0..3 {
        tx.ratchet().unwrap();
    }
    let f = tx.seal(b"", b"far").unwrap();
    assert_eq!(
        rx.open(b"", &f),
        Err(SframeError::RatchetJumpTooLarge {
            kid: kid0 + 3,
            steps: 3,
            max: 2
        })
    );
    rx.set_max_ratchet_jump(3);
    assert_eq!(rx.open(b"", &f).unwrap().2, b"far");

    assert!(RatchetParams::new(0).is_err());
    assert!(RatchetParams::new(64).is_err());
    assert!(params.kid(1 << 56, 0).is_err());
    assert_eq!(params.kid((1 << 56) - 1, 0x1ff).unwrap(), u64::MAX);
    let mut plain = Sender::new(suite, 1, BASE_KEY);
    assert!(matches!(
        plain.ratchet(),
        Err(SframeError::InvalidRatchet(_))
    ));
}

#[test]
fn secrets_not_in_debug_output() {
    let key = b"super secret key material!!";
    let suite = CipherSuite::AesCtr128HmacSha256_80;
    let tx = Sender::new(suite, 1, key);
    let mut rx = Receiver::new();
    rx.add_key(suite, 1, key);
    let fk = FrameKey::new(suite, 1, key);
    let derived = sframe::kdf::derive_key_salt(suite, 1, key);
    let debug = format!(
        "{tx:?} {rx:?} {fk:?} {derived:?} {:?}",
        sframe::ratchet_base_key(suite, key)
    );
    for secret in [&key[..], derived.key(), &derived.salt()[..]] {
        assert!(!debug.contains(&hex::encode(secret)), "{debug}");
        assert!(!debug.contains(&format!("{secret:?}")), "{debug}");
    }
    assert!(debug.contains("REDACTED"));
}

#[test]
fn hex_helpers() {
    // RFC 9605 Appendix C, AES_128_CTR_HMAC_SHA256_80.
    let base_key = "000102030405060708090a0b0c0d0e0f";
    let metadata = "4945544620534672616d65205747";
    let pt = "64726166742d696574662d736672616d652d656e63";
    let ct = "9901234567449408b6f490086165b9d6f62b24ae1a59a56486b4ae8ed036b88912e24f11";
    assert_eq!(
        seal_hex(1, base_key, 0x123, 0x4567, Some(metadata), pt).unwrap(),
        ct
    );
    assert_eq!(open_hex(1, base_key, Some(metadata), ct).unwrap(), pt);
    assert_eq!(
        open_hex(
            1,
            &format!("0x{base_key}"),
            Some(metadata),
            &format!(" {ct}\n")
        )
        .unwrap(),
        pt
    );
    assert_eq!(
        open_hex(1, base_key, None, ct),
        Err(SframeError::AuthenticationFailed)
    );
    assert_eq!(
        open_hex(9, base_key, None, ct),
        Err(SframeError::UnknownCipherSuite(9))
    );
    assert!(matches!(
        open_hex(1, "xyz", None, ct),
        Err(SframeError::InvalidHex {
            field: "base key",
            ..
        })
    ));
    assert!(matches!(
        seal_hex(4, base_key, 0, 0, None, "abc"),
        Err(SframeError::InvalidHex {
            field: "plaintext",
            ..
        })
    ));
    assert!(matches!(
        open_hex(4, base_key, None, ""),
        Err(SframeError::BadHeader(_))
    ));
    let sealed = seal_hex(5, base_key, u64::MAX, u64::MAX, None, "").unwrap();
    assert_eq!(open_hex(5, base_key, None, &sealed).unwrap(), "");
    // Error messages are meant for humans on the CLI.
    assert_eq!(
        open_hex(1, base_key, None, ct).unwrap_err().to_string(),
        "authentication failed: frame was tampered with or protected with another key"
    );
}

/// The AES-GCM suites (backed by `ring`) agree with the RustCrypto `aes-gcm` crate on random
/// keys, nonces, AAD and plaintext lengths, including non-block-multiple lengths.
#[test]
fn gcm_matches_rustcrypto_oracle() {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut bytes = move |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    for i in 0..300usize {
        let (pt_len, aad_len) = (i % 131 + i / 100 * 1000, i % 23);
        let (nonce, aad, pt) = (bytes(12), bytes(aad_len), bytes(pt_len));
        for suite in [CipherSuite::AesGcm128Sha256, CipherSuite::AesGcm256Sha512] {
            let key = bytes(suite.nk());
            let ours = sframe::aead_encrypt(suite, &key, &nonce, &aad, &pt).unwrap();
            let payload = Payload {
                msg: &pt[..],
                aad: &aad[..],
            };
            let oracle = match suite {
                CipherSuite::AesGcm128Sha256 => aes_gcm::Aes128Gcm::new_from_slice(&key)
                    .unwrap()
                    .encrypt(nonce.as_slice().try_into().unwrap(), payload),
                _ => aes_gcm::Aes256Gcm::new_from_slice(&key)
                    .unwrap()
                    .encrypt(nonce.as_slice().try_into().unwrap(), payload),
            }
            .unwrap();
            assert_eq!(ours, oracle, "{suite} pt_len={pt_len} aad_len={aad_len}");
            assert_eq!(
                sframe::aead_decrypt(suite, &key, &nonce, &aad, &ours).unwrap(),
                pt
            );
        }
    }
}
