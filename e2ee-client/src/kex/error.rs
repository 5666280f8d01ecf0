//! Typed errors for the key agreement.

use thiserror::Error;

/// Everything that can go wrong while parsing blobs or running the key agreement.
///
/// Errors are typed (never panics) because every input comes from the network via an
/// untrusted relay. Variants marked *fatal* move the [`super::KeyAgreement`] into a
/// failed state: E2EE setup for this call is aborted and must be restarted with a fresh
/// instance (fresh ephemeral keys).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KexError {
    /// Both participant ids are equal, so no initiator can be chosen.
    #[error("participant ids must differ to choose an initiator")]
    SameParticipantIds,
    /// An identifier is too long for its 16-bit length prefix.
    #[error("{field} is {len} bytes long; at most 65535 bytes are allowed")]
    FieldTooLong {
        /// Which identifier (`call_id`, `initiator_id`, `responder_id`).
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The operating system random number generator failed.
    #[error("operating system random number generator failed")]
    Rng,

    /// The blob exceeds the size any valid message can have.
    #[error("blob is {len} bytes; at most {max} bytes are allowed")]
    BlobTooLarge {
        /// Actual size.
        len: usize,
        /// Maximum accepted size.
        max: usize,
    },
    /// The blob is not a JSON object of the expected shape (includes unknown or duplicate keys).
    #[error("blob is not a valid key-agreement JSON object: {0}")]
    InvalidJson(String),
    /// The blob's `v` field names a protocol version this client does not speak.
    #[error("unsupported key-agreement blob version {0}")]
    UnsupportedVersion(u64),
    /// The blob's `t` field names no known message type (value truncated).
    #[error("unknown key-agreement message type {0:?}")]
    UnknownMessageType(String),
    /// A field required for this message type is absent.
    #[error("blob lacks required field `{0}`")]
    MissingField(&'static str),
    /// A field that does not belong to this message type is present.
    #[error("blob has field `{0}`, which this message type does not allow")]
    UnexpectedField(&'static str),
    /// A binary field is not canonical unpadded base64url.
    #[error("field `{0}` is not valid unpadded base64url")]
    InvalidEncoding(&'static str),
    /// A binary field decodes to the wrong number of bytes.
    #[error("field `{field}` is {actual} bytes; expected {expected}")]
    InvalidLength {
        /// Field name in the blob.
        field: &'static str,
        /// Required length.
        expected: usize,
        /// Decoded length.
        actual: usize,
    },

    /// A well-formed message arrived in a state that does not accept it (out of order,
    /// duplicate, or the peer believes it has the same role). Not fatal: the state is
    /// unchanged, so a stray duplicate cannot abort an honest session.
    #[error("unexpected {got} message while {state}")]
    UnexpectedMessage {
        /// What the state machine was doing.
        state: &'static str,
        /// The message type received.
        got: &'static str,
    },
    /// *Fatal.* The revealed initiator key does not match the earlier commitment
    /// (a key substitution after the commit, or disagreeing call/participant ids).
    #[error("revealed public key does not match the commitment; E2EE setup aborted")]
    CommitMismatch,
    /// *Fatal.* The peer's public key is a low-order point (the X25519 result is all zero).
    #[error("peer public key is a low-order point; E2EE setup aborted")]
    LowOrderPublicKey,
    /// *Fatal.* The peer sent back our own public key (reflection).
    #[error("peer public key equals our own (reflected); E2EE setup aborted")]
    ReflectedPublicKey,
    /// A previous fatal error aborted this key agreement.
    #[error("key agreement was aborted by an earlier error")]
    Aborted,
    /// HKDF refused the requested output length (cannot happen with the fixed lengths used).
    #[error("key derivation failed")]
    KeyDerivation,
}
