//! Signalling messages: JSON objects over WebSocket with a `type` tag. Every refusal is an
//! [`ServerMessage::Error`] with a stable snake_case [`ErrorCode`] that clients and tests
//! can match on.

use serde::{Deserialize, Serialize};

/// Largest signalling message the relay accepts, in bytes. An SDP offer from a browser is
/// a few KiB; the relay's own offer to a member of a full call (16 participants, two
/// video tracks each, every codec with RTX and an FID group) is about 70 KiB.
pub const MAX_MESSAGE_BYTES: usize = 96 * 1024;

/// Messages a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First message: authenticate with a relay-signed token.
    Hello { token: String },
    /// Join a call with a standard SDP offer.
    Join {
        call: String,
        #[serde(default)]
        e2ee_enabled: bool,
        offer_sdp: String,
        /// How an E2EE call keys: the first joiner of a call chooses, later joiners must
        /// match. Absent means `x25519` (one-to-one).
        #[serde(default, skip_serializing_if = "E2eeScheme::is_default")]
        e2ee_scheme: E2eeScheme,
    },
    /// An opaque end-to-end key-agreement blob for another participant.
    E2ee { to: String, blob: String },
    /// MLS group E2EE: this joiner's KeyPackage (base64 MLSMessage), for the members.
    MlsKeyPackage { blob: String },
    /// MLS: a commit (base64 MLSMessage) and, if it adds members, their Welcome. The relay
    /// accepts the first commit of each epoch and refuses the others.
    MlsCommit {
        commit: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        welcome: Option<String>,
    },
    /// MLS: this participant joined the group from a Welcome, at `epoch`.
    MlsJoined { epoch: u64 },
    /// Ask for a call feature (record, transfer, ...).
    Feature {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        arg: Option<String>,
    },
    /// A chat message; sealed by the client on an E2EE call.
    Chat { body: String },
    /// Leave the call; the relay closes the media path.
    Leave,
    /// The answer to the relay's `offer` of the same revision.
    Answer { sdp: String, revision: u64 },
    /// Send me pictures at most `height` lines tall of the remote video track on my
    /// m-line `mid` (absent: no limit). For a simulcast track the relay sends the tallest
    /// layer within it, from the layer's next key frame; other tracks are unaffected.
    MaxResolution {
        mid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        height: Option<u32>,
    },
}

/// How an end-to-end encrypted call agrees its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum E2eeScheme {
    /// One-to-one: ephemeral X25519 with commit-then-reveal and a 20-digit code.
    #[default]
    #[serde(rename = "x25519-commit-reveal", alias = "x25519")]
    X25519,
    /// A group of 2 to `calls.max_participants`: MLS (RFC 9420), SFrame keys per epoch
    /// and sender (RFC 9605 §5.2), rekeyed on every join and leave.
    Mls,
}

impl E2eeScheme {
    pub fn is_default(&self) -> bool {
        *self == E2eeScheme::X25519
    }
    pub fn as_str(self) -> &'static str {
        match self {
            E2eeScheme::X25519 => "x25519-commit-reveal",
            E2eeScheme::Mls => "mls",
        }
    }
}

/// The user's E2EE option as the policy makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum E2eeOption {
    /// Not offered: the client shows no E2EE setting.
    Hidden,
    /// Off unless the user turns it on.
    Available,
    /// Every call of this user is end-to-end encrypted.
    Required,
}

/// Whether a call's media is end-to-end encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallMode {
    E2ee,
    Standard,
}

impl CallMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CallMode::E2ee => "e2ee",
            CallMode::Standard => "standard",
        }
    }
}

/// A participant as other participants see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub participant: String,
    pub user: String,
    pub tenant: String,
    pub role: String,
}

/// Messages the relay sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Capabilities {
        user: String,
        tenant: String,
        role: String,
        e2ee_option: E2eeOption,
    },
    Joined {
        participant: String,
        call_mode: CallMode,
        /// Why the call is in this mode, in words for the user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode_reason: Option<String>,
        answer_sdp: String,
        participants: Vec<ParticipantInfo>,
        /// An E2EE call's key scheme.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        e2ee_scheme: Option<E2eeScheme>,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    /// The remote tracks changed: a new description of the client's session in which
    /// every remote participant's track has an m-line of its own. The client answers
    /// with `answer` of the same revision; at most one offer is outstanding per client.
    Offer {
        sdp: String,
        revision: u64,
    },
    /// The call's mode changed before any keys were agreed (a joiner who does not encrypt
    /// turned a provisional E2EE call into a standard one).
    CallModeChanged {
        call_mode: CallMode,
        reason: String,
    },
    ParticipantLeft {
        participant: String,
        reason: String,
    },
    E2ee {
        from: String,
        blob: String,
    },
    /// MLS: a joiner's KeyPackage, for the group's members to add.
    MlsKeyPackage {
        from: String,
        blob: String,
    },
    /// MLS: the commit the relay accepted for `epoch`; every member applies it.
    MlsCommit {
        from: String,
        epoch: u64,
        commit: String,
    },
    /// MLS: the verdict on this participant's own commit made in `epoch`. Refused, it
    /// waits for the winning commit (`mls_commit`) and commits again on the new epoch.
    MlsCommitResult {
        epoch: u64,
        accepted: bool,
    },
    /// MLS: a Welcome, sent only to the waiting participants whose KeyPackage it adds (the
    /// relay matches KeyPackageRefs); they join from it.
    MlsWelcome {
        from: String,
        welcome: String,
    },
    /// MLS: the group has no member left in the call: start it anew (epoch 0) and add
    /// the waiting joiners, whose KeyPackages follow.
    MlsCreate {},
    Chat {
        from: String,
        body: String,
    },
    FeatureResult {
        name: String,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// An invitation to join `call` (add_participant, transfer, retrieve of a parked call,
    /// or a bot brought in). Joining that call is then allowed even if the token names
    /// another call.
    Invite {
        call: String,
        by: String,
        reason: String,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Stable, machine-readable refusal codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    TokenExpired,
    WrongCall,
    BadRequest,
    UnknownMessage,
    MessageTooLarge,
    BadSdp,
    NotAuthenticated,
    AlreadyJoined,
    NotJoined,
    UnknownParticipant,
    CallFull,
    E2eeNotAllowed,
    E2eeRequired,
    E2eeCallIsOneToOne,
    E2eeCallRefusesBots,
    FeatureUnavailableInE2eeCall,
    UnknownFeature,
    ShuttingDown,
    /// The offer shares no codec with the call (Opus for audio, VP8 for video).
    NoCommonCodec,
    /// The relay is at its limit of calls or participants.
    RelayFull,
    /// The connection sent messages faster than `signal.messages_per_second`.
    RateLimited,
    /// No valid `hello` within `signal.hello_timeout`; the connection closes.
    HelloTimeout,
    /// The join's E2EE scheme is not the call's (`e2ee_scheme`).
    E2eeSchemeMismatch,
    /// An MLS message the relay, as Delivery Service, refuses: a KeyPackage that does not
    /// parse, a commit from a non-member, `mls_joined` without a Welcome for that epoch...
    MlsRefused,
    /// A `merge` the requester may not make: it is not in the other call (same identity,
    /// user@tenant), or one of the calls is not standard. One code and one message for
    /// every case, so a refusal never tells whether another call exists or in which mode.
    MergeRefused,
    /// A join's offer, or an answer, lists an SSRC another participant of the call
    /// already sends: the relay would have to drop one of the two streams.
    SsrcInUse,
    /// A join's offer has more m-lines (tracks) of a kind than the relay allows one
    /// participant (`calls.max_audio_tracks`, `calls.max_video_tracks`), or lines beyond
    /// the sizes the relay's offers are bounded for (mid, SSRCs, fmtp).
    TooManyTracks,
    /// A message names a remote track (by mid) the participant was not offered.
    UnknownTrack,
    Internal,
}

impl ErrorCode {
    /// The snake_case code, also used as a bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::WrongCall => "wrong_call",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownMessage => "unknown_message",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::BadSdp => "bad_sdp",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::UnknownParticipant => "unknown_participant",
            ErrorCode::CallFull => "call_full",
            ErrorCode::E2eeNotAllowed => "e2ee_not_allowed",
            ErrorCode::E2eeRequired => "e2ee_required",
            ErrorCode::E2eeCallIsOneToOne => "e2ee_call_is_one_to_one",
            ErrorCode::E2eeSchemeMismatch => "e2ee_scheme_mismatch",
            ErrorCode::MlsRefused => "mls_refused",
            ErrorCode::MergeRefused => "merge_refused",
            ErrorCode::E2eeCallRefusesBots => "e2ee_call_refuses_bots",
            ErrorCode::FeatureUnavailableInE2eeCall => "feature_unavailable_in_e2ee_call",
            ErrorCode::UnknownFeature => "unknown_feature",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::NoCommonCodec => "no_common_codec",
            ErrorCode::RelayFull => "relay_full",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::HelloTimeout => "hello_timeout",
            ErrorCode::SsrcInUse => "ssrc_in_use",
            ErrorCode::TooManyTracks => "too_many_tracks",
            ErrorCode::UnknownTrack => "unknown_track",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Parse a client message, telling malformed JSON apart from an unknown `type`.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, (ErrorCode, String)> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err((
            ErrorCode::MessageTooLarge,
            format!(
                "message of {} bytes exceeds {MAX_MESSAGE_BYTES}",
                text.len()
            ),
        ));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| (ErrorCode::BadRequest, format!("malformed JSON: {e}")))?;
    let known = [
        "hello",
        "join",
        "e2ee",
        "feature",
        "chat",
        "leave",
        "answer",
        "max_resolution",
        "mls_key_package",
        "mls_commit",
        "mls_joined",
    ];
    match value.get("type").and_then(|t| t.as_str()) {
        None => return Err((ErrorCode::BadRequest, "message has no string `type`".into())),
        Some(t) if !known.contains(&t) => {
            return Err((
                ErrorCode::UnknownMessage,
                format!("unknown message type `{t}`"),
            ))
        }
        Some(_) => {}
    }
    serde_json::from_value(value)
        .map_err(|e| (ErrorCode::BadRequest, format!("invalid message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_classifies() {
        assert_eq!(
            parse_client_message(r#"{"type":"hello","token":"x"}"#),
            Ok(ClientMessage::Hello { token: "x".into() })
        );
        assert_eq!(
            parse_client_message("{").unwrap_err().0,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse_client_message(r#"{"type":"dance"}"#).unwrap_err().0,
            ErrorCode::UnknownMessage
        );
        assert_eq!(
            parse_client_message(r#"{"type":"join"}"#).unwrap_err().0,
            ErrorCode::BadRequest
        );
        let big = format!(
            r#"{{"type":"chat","body":"{}"}}"#,
            "a".repeat(MAX_MESSAGE_BYTES)
        );
        assert_eq!(
            parse_client_message(&big).unwrap_err().0,
            ErrorCode::MessageTooLarge
        );
    }

    #[test]
    fn codes_serialize_as_their_label() {
        let e = ServerMessage::Error {
            code: ErrorCode::E2eeCallIsOneToOne,
            message: String::new(),
        };
        let s = serde_json::to_string(&e).unwrap();
        assert!(s.contains(r#""code":"e2ee_call_is_one_to_one""#), "{s}");
        assert!(s.contains(r#""type":"error""#));
    }
}
