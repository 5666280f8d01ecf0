//! Malformed blobs must become typed errors, never panics.

use e2ee_client::kex::{KexError, KexMessage, MAX_BLOB_LEN};

/// 43 base64url characters = 32 bytes.
const B64_32: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn parse(blob: &str) -> Result<KexMessage, KexError> {
    KexMessage::from_blob(blob)
}

#[test]
fn valid_blobs_parse() {
    let expected: [u8; 32] = std::array::from_fn(|i| i as u8);
    assert_eq!(
        parse(&format!(r#"{{"v":1,"t":"commit","h":"{B64_32}"}}"#)),
        Ok(KexMessage::Commit { hash: expected })
    );
    assert_eq!(
        parse(&format!(r#"{{"t":"public","k":"{B64_32}","v":1}}"#)),
        Ok(KexMessage::Public {
            public_key: expected
        })
    );
    // Whitespace is fine: it is still the same JSON object.
    assert_eq!(
        parse(&format!(
            " {{ \"v\" : 1 , \"t\":\"reveal\", \"k\":\"{B64_32}\" }}\n"
        )),
        Ok(KexMessage::Reveal {
            public_key: expected
        })
    );
}

#[test]
fn not_json_or_wrong_shape() {
    for blob in [
        "",
        "not json",
        "[]",
        "null",
        "42",
        r#""commit""#,
        r#"{"v":1,"t":"commit","h":"AAAA"#,
        r#"{"v":"1","t":"commit"}"#,
        r#"{"v":-1,"t":"commit"}"#,
        r#"{"v":1.5,"t":"commit"}"#,
        r#"{"v":1,"t":7}"#,
        r#"{"v":1,"t":"commit","h":123}"#,
        r#"{"v":1,"t":"commit","x":"y"}"#,
        r#"{"v":1,"v":1,"t":"commit"}"#,
        "{\"v\":1,\"t\":\"commit\",\"h\":\"\u{0}\"", // unterminated, with NUL
    ] {
        assert!(
            matches!(parse(blob), Err(KexError::InvalidJson(_))),
            "{blob:?} -> {:?}",
            parse(blob)
        );
    }
}

#[test]
fn version_checks() {
    assert_eq!(
        parse(&format!(r#"{{"t":"commit","h":"{B64_32}"}}"#)),
        Err(KexError::MissingField("v"))
    );
    assert_eq!(
        parse(&format!(r#"{{"v":2,"t":"commit","h":"{B64_32}"}}"#)),
        Err(KexError::UnsupportedVersion(2))
    );
    assert_eq!(
        parse(&format!(r#"{{"v":0,"t":"commit","h":"{B64_32}"}}"#)),
        Err(KexError::UnsupportedVersion(0))
    );
}

#[test]
fn type_checks() {
    assert_eq!(
        parse(&format!(r#"{{"v":1,"h":"{B64_32}"}}"#)),
        Err(KexError::MissingField("t"))
    );
    assert_eq!(
        parse(&format!(r#"{{"v":1,"t":"hello","h":"{B64_32}"}}"#)),
        Err(KexError::UnknownMessageType("hello".into()))
    );
    assert_eq!(
        parse(&format!(r#"{{"v":1,"t":"Commit","h":"{B64_32}"}}"#)),
        Err(KexError::UnknownMessageType("Commit".into()))
    );
}

#[test]
fn field_checks() {
    assert_eq!(
        parse(r#"{"v":1,"t":"commit"}"#),
        Err(KexError::MissingField("h"))
    );
    assert_eq!(
        parse(r#"{"v":1,"t":"commit","h":null}"#),
        Err(KexError::MissingField("h"))
    );
    assert_eq!(
        parse(r#"{"v":1,"t":"public"}"#),
        Err(KexError::MissingField("k"))
    );
    assert_eq!(
        parse(&format!(r#"{{"v":1,"t":"commit","k":"{B64_32}"}}"#)),
        Err(KexError::UnexpectedField("k"))
    );
    assert_eq!(
        parse(&format!(
            r#"{{"v":1,"t":"reveal","k":"{B64_32}","h":"{B64_32}"}}"#
        )),
        Err(KexError::UnexpectedField("h"))
    );
}

#[test]
fn bad_base64() {
    let cases = [
        "!!!!".to_owned(),
        format!("{B64_32}="),         // padding not allowed
        B64_32.replacen('A', "+", 1), // standard alphabet, not url-safe
        B64_32.replacen('A', "/", 1),
        format!("{}h", &B64_32[..42]), // non-canonical trailing bits
        format!("{} ", &B64_32[..42]),
        "A".to_owned(), // impossible length
    ];
    for value in cases {
        let blob = format!(r#"{{"v":1,"t":"public","k":"{value}"}}"#);
        assert_eq!(
            parse(&blob),
            Err(KexError::InvalidEncoding("k")),
            "{value:?}"
        );
    }
}

#[test]
fn wrong_lengths() {
    for (value, actual) in [
        ("", 0),
        ("AA", 1),
        ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg", 31),
        ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g", 33),
        ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0-Pw", 64),
    ] {
        for (t, field) in [("commit", "h"), ("public", "k"), ("reveal", "k")] {
            let blob = format!(r#"{{"v":1,"t":"{t}","{field}":"{value}"}}"#);
            assert_eq!(
                parse(&blob),
                Err(KexError::InvalidLength {
                    field,
                    expected: 32,
                    actual
                }),
                "{blob}"
            );
        }
    }
}

#[test]
fn oversized_blob() {
    let blob = format!(
        r#"{{"v":1,"t":"commit","h":"{B64_32}"}}{}"#,
        " ".repeat(MAX_BLOB_LEN)
    );
    assert_eq!(
        parse(&blob),
        Err(KexError::BlobTooLarge {
            len: blob.len(),
            max: MAX_BLOB_LEN
        })
    );
}

#[test]
fn hostile_strings_are_truncated_in_errors() {
    let blob = format!(r#"{{"v":1,"t":"{}"}}"#, "x".repeat(300));
    match parse(&blob) {
        Err(e @ KexError::UnknownMessageType(_)) => assert!(e.to_string().len() < 120),
        other => panic!("{other:?}"),
    }
    let blob = format!(r#"{{"v":1,"{}":1}}"#, "y".repeat(300));
    match parse(&blob) {
        Err(KexError::InvalidJson(msg)) => assert!(msg.chars().count() <= 65),
        other => panic!("{other:?}"),
    }
}

#[test]
fn round_trip_and_errors_display() {
    for msg in [
        KexMessage::Commit { hash: [0xab; 32] },
        KexMessage::Public {
            public_key: [0xcd; 32],
        },
        KexMessage::Reveal {
            public_key: [0xef; 32],
        },
    ] {
        let blob = msg.to_blob();
        assert!(blob.starts_with(r#"{"v":1,"t":""#));
        assert_eq!(parse(&blob), Ok(msg));
    }
    let e = parse("{").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(!e.is_empty());
}
