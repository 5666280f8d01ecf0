//! Key-agreement messages and their opaque blob encoding.
//!
//! Blob format (compact JSON, binary fields as unpadded base64url, 43 characters for
//! 32 bytes):
//!
//! ```text
//! {"v":1,"t":"commit","h":"<SHA-256 commitment>"}
//! {"v":1,"t":"public","k":"<responder X25519 public key>"}
//! {"v":1,"t":"reveal","k":"<initiator X25519 public key>"}
//! ```
//!
//! Parsing is strict: unknown or duplicate keys, fields that do not belong to the
//! message type, non-canonical base64 and wrong lengths are all typed errors. The
//! encoding need not be canonical for security (the decoded bytes, not the blob, are
//! hashed into the transcript), but strictness keeps surprises out.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;

use super::crypto::KEY_LEN;
use super::KexError;

/// Version written into and required from every blob (`"v"`).
pub const BLOB_VERSION: u64 = 1;

/// Upper bound on accepted blob size; the largest valid blob is about 70 bytes, so this
/// only exists to bound parsing work on hostile input.
pub const MAX_BLOB_LEN: usize = 512;

/// One key-agreement message. Fields are public so tests (and tools) can build or
/// tamper with messages directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KexMessage {
    /// Initiator → responder: commitment to the initiator's public key.
    Commit {
        /// `SHA-256("blindrelay-e2ee-v1 commit" || context || pk_i)`.
        hash: [u8; KEY_LEN],
    },
    /// Responder → initiator: the responder's ephemeral X25519 public key.
    Public {
        /// `pk_r`.
        public_key: [u8; KEY_LEN],
    },
    /// Initiator → responder: the committed ephemeral X25519 public key.
    Reveal {
        /// `pk_i`.
        public_key: [u8; KEY_LEN],
    },
}

impl KexMessage {
    /// Short name of the message type (the blob's `t` value).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Commit { .. } => "commit",
            Self::Public { .. } => "public",
            Self::Reveal { .. } => "reveal",
        }
    }

    /// The public key carried by `Public`/`Reveal`, mutable (for man-in-the-middle tests).
    pub fn public_key_mut(&mut self) -> Option<&mut [u8; KEY_LEN]> {
        match self {
            Self::Commit { .. } => None,
            Self::Public { public_key } | Self::Reveal { public_key } => Some(public_key),
        }
    }

    /// The raw 32-byte payload of any message (hash or public key), mutable.
    pub fn payload_mut(&mut self) -> &mut [u8; KEY_LEN] {
        match self {
            Self::Commit { hash } => hash,
            Self::Public { public_key } | Self::Reveal { public_key } => public_key,
        }
    }

    /// Encodes the message as an opaque blob for the relay to forward.
    pub fn to_blob(&self) -> String {
        let (field, bytes) = match self {
            Self::Commit { hash } => ("h", hash),
            Self::Public { public_key } | Self::Reveal { public_key } => ("k", public_key),
        };
        // Built by hand: every piece is a fixed ASCII token or base64url, none of which
        // needs JSON escaping, and it avoids an infallible-in-practice `Result`.
        format!(
            r#"{{"v":{BLOB_VERSION},"t":"{}","{field}":"{}"}}"#,
            self.kind(),
            URL_SAFE_NO_PAD.encode(bytes)
        )
    }

    /// Parses a blob produced by [`KexMessage::to_blob`]; every malformation is a typed error.
    pub fn from_blob(blob: &str) -> Result<Self, KexError> {
        if blob.len() > MAX_BLOB_LEN {
            return Err(KexError::BlobTooLarge {
                len: blob.len(),
                max: MAX_BLOB_LEN,
            });
        }
        let wire: WireMessage = serde_json::from_str(blob)
            .map_err(|e| KexError::InvalidJson(truncate(&e.to_string())))?;
        let version = wire.v.ok_or(KexError::MissingField("v"))?;
        if version != BLOB_VERSION {
            return Err(KexError::UnsupportedVersion(version));
        }
        let kind = wire.t.ok_or(KexError::MissingField("t"))?;
        match kind.as_str() {
            "commit" => {
                if wire.k.is_some() {
                    return Err(KexError::UnexpectedField("k"));
                }
                let hash = decode_field("h", wire.h.as_deref())?;
                Ok(Self::Commit { hash })
            }
            "public" | "reveal" => {
                if wire.h.is_some() {
                    return Err(KexError::UnexpectedField("h"));
                }
                let public_key = decode_field("k", wire.k.as_deref())?;
                Ok(if kind == "public" {
                    Self::Public { public_key }
                } else {
                    Self::Reveal { public_key }
                })
            }
            other => Err(KexError::UnknownMessageType(truncate(other))),
        }
    }
}

/// Shape of a blob before validation; `Option`s so absence maps to `MissingField`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireMessage {
    v: Option<u64>,
    t: Option<String>,
    h: Option<String>,
    k: Option<String>,
}

fn decode_field(field: &'static str, value: Option<&str>) -> Result<[u8; KEY_LEN], KexError> {
    let text = value.ok_or(KexError::MissingField(field))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| KexError::InvalidEncoding(field))?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KexError::InvalidLength {
        field,
        expected: KEY_LEN,
        actual: bytes.len(),
    })
}

/// Bounds attacker-controlled text copied into error values (and thus logs).
fn truncate(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut out: String = text.chars().take(MAX_CHARS).collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_type() {
        for msg in [
            KexMessage::Commit { hash: [1; 32] },
            KexMessage::Public {
                public_key: [2; 32],
            },
            KexMessage::Reveal {
                public_key: [3; 32],
            },
        ] {
            let blob = msg.to_blob();
            assert!(serde_json::from_str::<serde_json::Value>(&blob).is_ok());
            assert_eq!(KexMessage::from_blob(&blob), Ok(msg));
        }
    }

    #[test]
    fn exact_format() {
        let blob = KexMessage::Commit { hash: [0; 32] }.to_blob();
        assert_eq!(
            blob,
            r#"{"v":1,"t":"commit","h":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#
        );
    }

    #[test]
    fn truncates_long_types() {
        let blob = format!(r#"{{"v":1,"t":"{}"}}"#, "z".repeat(200));
        match KexMessage::from_blob(&blob) {
            Err(KexError::UnknownMessageType(t)) => assert!(t.chars().count() <= 65),
            other => panic!("unexpected {other:?}"),
        }
    }
}
