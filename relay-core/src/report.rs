//! What the core reports for its driver to count. The core owns no metrics: the
//! forwarder returns a [`DropReason`] for each packet it refuses, and the control plane
//! queues [`Report`]s (see `ControlPlane::poll_report`). The driver turns them into the
//! relay's Prometheus series; each enum here is a bounded label (never an SSRC, a call id
//! or a user id), and its `as_str` is the label's text.

use crate::budget::RateLimit;
use blindrelay_protocol::signal::{CallMode, ErrorCode};
use std::time::Duration;

/// Why a datagram was dropped. Every drop is counted under exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// First byte matches no protocol of RFC 7983.
    UnknownProtocol,
    /// STUN that does not parse (bad length, bad attribute, bad FINGERPRINT).
    StunMalformed,
    /// STUN that is not a binding request (or indication) we answer.
    StunUnexpected,
    /// STUN USERNAME names no pending participant.
    StunUnknownUser,
    /// STUN MESSAGE-INTEGRITY does not match the participant's password.
    StunBadIntegrity,
    /// DTLS from an address no participant has been checked from.
    DtlsUnknownSource,
    /// DTLS for a participant whose handshake queue is full or closed.
    DtlsQueueFull,
    /// SRTP/SRTCP from an address with no participant.
    UnknownSource,
    /// SRTP/SRTCP before the participant's DTLS handshake finished.
    NotConnected,
    /// SRTP/SRTCP authentication tag does not verify.
    SrtpAuthFailed,
    /// SRTP/SRTCP index already seen (replay).
    SrtpReplay,
    /// SRTP/SRTCP that cannot be unprotected for another reason (truncated...).
    SrtpMalformed,
    /// Decrypted RTP or RTCP whose header does not parse.
    RtpMalformed,
    /// The forwarding loop's queue was full.
    WorkerQueueFull,
    /// Protecting for a receiver failed.
    SrtpProtectFailed,
    /// The kernel refused the send.
    SendFailed,
    /// RTP with an SSRC its sender did not announce, or that another participant owns.
    SsrcNotOwned,
    /// RTP whose payload type maps to none of the call's codecs for its sender.
    UnknownPayloadType,
    /// Protecting for a receiver would have reused an SRTP index (a GCM nonce) on its hop;
    /// that receiver's copy was not sent.
    SrtpIndexReused,
    /// An RTCP packet speaking for an SSRC another participant of the call owns (an SR,
    /// SDES, BYE, APP or XR for its stream, or feedback sent in its name): forged.
    RtcpSsrcNotOwned,
    /// An RTCP sender report (SR, SDES, BYE, APP, XR) for an SSRC nobody in the call
    /// sends: nothing to tell the others (a receive-only stack's local SSRC).
    RtcpSsrcUnknown,
    /// RTCP feedback (a report block, NACK, PLI, FIR) about a stream its sender is not
    /// sent: it cannot have anything to report about it.
    RtcpFeedbackNotReceived,
    /// A keyframe request (PLI, FIR) coalesced: the stream's sender was asked less than
    /// `KEYFRAME_REQUEST_INTERVAL` ago.
    KeyframeRequestLimited,
    /// A padding-only RTP packet (a sender's bandwidth probe) not forwarded to a receiver
    /// that has not been sent media on its stream yet: it would be a frame without data.
    PaddingBeforeMedia,
    /// A NACK beyond its sender's budget of lost-packet entries (`NACK_ENTRIES_PER_SECOND`):
    /// a receiver asks for retransmissions at the rate real loss makes, not in storms.
    NackLimited,
    /// A video packet the relay already holds (a retransmission on a sender's RTX stream,
    /// or a late copy): it was forwarded when it first came, and each receiver's hop
    /// cannot take its index again.
    RetransmitDuplicate,
    /// Padding alone on a sender's RTX stream: a bandwidth probe of its hop, counted for
    /// transport-cc and forwarded to nobody.
    RtxPadding,
}

impl DropReason {
    pub const ALL: [DropReason; 27] = [
        DropReason::UnknownProtocol,
        DropReason::StunMalformed,
        DropReason::StunUnexpected,
        DropReason::StunUnknownUser,
        DropReason::StunBadIntegrity,
        DropReason::DtlsUnknownSource,
        DropReason::DtlsQueueFull,
        DropReason::UnknownSource,
        DropReason::NotConnected,
        DropReason::SrtpAuthFailed,
        DropReason::SrtpReplay,
        DropReason::SrtpMalformed,
        DropReason::RtpMalformed,
        DropReason::WorkerQueueFull,
        DropReason::SrtpProtectFailed,
        DropReason::SendFailed,
        DropReason::SsrcNotOwned,
        DropReason::UnknownPayloadType,
        DropReason::SrtpIndexReused,
        DropReason::RtcpSsrcNotOwned,
        DropReason::RtcpSsrcUnknown,
        DropReason::RtcpFeedbackNotReceived,
        DropReason::KeyframeRequestLimited,
        DropReason::PaddingBeforeMedia,
        DropReason::NackLimited,
        DropReason::RetransmitDuplicate,
        DropReason::RtxPadding,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownProtocol => "unknown_protocol",
            DropReason::StunMalformed => "stun_malformed",
            DropReason::StunUnexpected => "stun_unexpected",
            DropReason::StunUnknownUser => "stun_unknown_user",
            DropReason::StunBadIntegrity => "stun_bad_integrity",
            DropReason::DtlsUnknownSource => "dtls_unknown_source",
            DropReason::DtlsQueueFull => "dtls_queue_full",
            DropReason::UnknownSource => "unknown_source",
            DropReason::NotConnected => "not_connected",
            DropReason::SrtpAuthFailed => "srtp_auth_failed",
            DropReason::SrtpReplay => "srtp_replay",
            DropReason::SrtpMalformed => "srtp_malformed",
            DropReason::RtpMalformed => "rtp_malformed",
            DropReason::WorkerQueueFull => "worker_queue_full",
            DropReason::SrtpProtectFailed => "srtp_protect_failed",
            DropReason::SendFailed => "send_failed",
            DropReason::SsrcNotOwned => "ssrc_not_owned",
            DropReason::UnknownPayloadType => "unknown_payload_type",
            DropReason::SrtpIndexReused => "srtp_index_reused",
            DropReason::RtcpSsrcNotOwned => "rtcp_ssrc_not_owned",
            DropReason::RtcpSsrcUnknown => "rtcp_ssrc_unknown",
            DropReason::RtcpFeedbackNotReceived => "rtcp_feedback_not_received",
            DropReason::KeyframeRequestLimited => "keyframe_request_limited",
            DropReason::PaddingBeforeMedia => "padding_before_media",
            DropReason::NackLimited => "nack_limited",
            DropReason::RetransmitDuplicate => "retransmit_duplicate",
            DropReason::RtxPadding => "rtx_padding",
        }
    }
}

/// What became of the packets receivers' NACKs asked for, and of the relay's own asking
/// (see `forward::Forwarder`): counted per packet, never per stream or participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Retransmit {
    /// Sent from the packet cache: on the receiver's RTX stream, or again on a node link.
    Sent,
    /// In the cache, but the receiver takes no RTX, and its hop cannot take the packet's
    /// index again: nothing can be sent.
    Unavailable,
    /// Asked of the sender: lost before the relay (a gap in its sequence, or a receiver's
    /// NACK for a packet the cache never held).
    Asked,
    /// Came back from a sender's RTX stream and was forwarded as the packet it repairs.
    Recovered,
    /// In the cache, but beyond the receiver's retransmission budget
    /// (`forward::RTX_PACKETS_PER_SECOND`): not sent.
    Limited,
}

impl Retransmit {
    pub const ALL: [Retransmit; 5] = [
        Retransmit::Sent,
        Retransmit::Unavailable,
        Retransmit::Asked,
        Retransmit::Recovered,
        Retransmit::Limited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Retransmit::Sent => "sent",
            Retransmit::Unavailable => "unavailable",
            Retransmit::Asked => "asked",
            Retransmit::Recovered => "recovered",
            Retransmit::Limited => "limited",
        }
    }
}

/// What became of a bandwidth probe: padding sent to a receiver at the rate a layer
/// raise would add, before the raise. Counted in `blindrelay_bandwidth_probes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum ProbeResult {
    /// Begun: the receiver's path was clear for a while and a higher layer asked more
    /// than its estimate.
    Started,
    /// The path carried it: the estimate was raised to it, and the layer with it.
    Carried,
    /// The path congested (or did not carry it): no raise, and raises are held off.
    Congested,
}

impl ProbeResult {
    pub const ALL: [ProbeResult; 3] = [
        ProbeResult::Started,
        ProbeResult::Carried,
        ProbeResult::Congested,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeResult::Started => "started",
            ProbeResult::Carried => "carried",
            ProbeResult::Congested => "congested",
        }
    }
}

/// Why the relay, as MLS Delivery Service, refused a participant's MLS message. Each
/// refusal is counted under one of these (and the participant gets `mls_refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum MlsRefusal {
    /// `mls_joined` from a participant not delivered a Welcome for that epoch.
    JoinWithoutWelcome,
    /// A commit from a participant who is not a member of the group.
    CommitFromNonMember,
    /// A KeyPackage that is not base64, does not parse, or has an unknown cipher suite.
    BadKeyPackage,
    /// A KeyPackage whose ref or signature key another waiting joiner's already has.
    DuplicateKeyPackage,
    /// A KeyPackage from a participant already in the group.
    KeyPackageFromMember,
    /// A commit that is not base64 or whose clear header is not a commit's.
    BadCommit,
    /// A commit for another MLS group than the call's.
    WrongGroup,
    /// A commit whose Welcome is not base64 or does not parse.
    BadWelcome,
}

impl MlsRefusal {
    pub const ALL: [MlsRefusal; 8] = [
        MlsRefusal::JoinWithoutWelcome,
        MlsRefusal::CommitFromNonMember,
        MlsRefusal::BadKeyPackage,
        MlsRefusal::DuplicateKeyPackage,
        MlsRefusal::KeyPackageFromMember,
        MlsRefusal::BadCommit,
        MlsRefusal::WrongGroup,
        MlsRefusal::BadWelcome,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MlsRefusal::JoinWithoutWelcome => "join_without_welcome",
            MlsRefusal::CommitFromNonMember => "commit_from_non_member",
            MlsRefusal::BadKeyPackage => "bad_key_package",
            MlsRefusal::DuplicateKeyPackage => "duplicate_key_package",
            MlsRefusal::KeyPackageFromMember => "key_package_from_member",
            MlsRefusal::BadCommit => "bad_commit",
            MlsRefusal::WrongGroup => "wrong_group",
            MlsRefusal::BadWelcome => "bad_welcome",
        }
    }
}

/// Why a participant left its call: the wire text of `participant_left` and the label of
/// `blindrelay_participants_removed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalReason {
    /// The participant sent `leave`.
    Left,
    /// Its signalling connection closed.
    SignallingLost,
    /// Its DTLS handshake failed.
    DtlsFailed,
    /// Its DTLS association was closed (close_notify).
    DtlsClosed,
    /// The relay is shutting down.
    Shutdown,
    /// No media or STUN from it for `ice.consent_timeout`.
    ConsentTimeout,
    /// Its media path was not keyed within `ice.connect_timeout`.
    ConnectTimeout,
    /// A second session of the same identity joined the call.
    Replaced,
    /// It transferred the call to someone else, who has joined.
    Transferred,
    /// It parked the call.
    Parked,
}

impl RemovalReason {
    pub const ALL: [RemovalReason; 10] = [
        RemovalReason::Left,
        RemovalReason::SignallingLost,
        RemovalReason::DtlsFailed,
        RemovalReason::DtlsClosed,
        RemovalReason::Shutdown,
        RemovalReason::ConsentTimeout,
        RemovalReason::ConnectTimeout,
        RemovalReason::Replaced,
        RemovalReason::Transferred,
        RemovalReason::Parked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RemovalReason::Left => "left",
            RemovalReason::SignallingLost => "signalling_lost",
            RemovalReason::DtlsFailed => "dtls_failed",
            RemovalReason::DtlsClosed => "dtls_closed",
            RemovalReason::Shutdown => "shutdown",
            RemovalReason::ConsentTimeout => "consent_timeout",
            RemovalReason::ConnectTimeout => "connect_timeout",
            RemovalReason::Replaced => "replaced",
            RemovalReason::Transferred => "transferred",
            RemovalReason::Parked => "parked",
        }
    }

    /// The relay, not the participant, decided it: the participant is told, and its
    /// connection closed.
    pub fn relay_initiated(self) -> bool {
        !matches!(self, RemovalReason::Left | RemovalReason::SignallingLost)
    }

    /// The participant hears of it as a `participant_left` naming itself.
    pub fn told_to_self(self) -> bool {
        matches!(
            self,
            RemovalReason::ConsentTimeout
                | RemovalReason::DtlsFailed
                | RemovalReason::ConnectTimeout
                | RemovalReason::Transferred
                | RemovalReason::Parked
                | RemovalReason::Replaced
        )
    }
}

/// Something the control plane did that the driver counts. Labels are bounded: error
/// codes, roles from [`blindrelay_protocol::token::ROLES`], feature names from
/// `plane::FEATURES`, and the enums above.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// An error sent to a client (`blindrelay_signalling_errors_total{code}`).
    SignallingError(ErrorCode),
    /// A join admitted (`blindrelay_joins_total{result="ok"}`).
    Joined,
    /// A join refused (`blindrelay_joins_total{result=code}`).
    JoinRefused(ErrorCode),
    /// A participant's media path was keyed this long after its join.
    JoinTime(Duration),
    /// A bot refused from an E2EE call, by role.
    BotRefused(&'static str),
    /// A call feature refused in an E2EE call, by feature.
    FeatureRefused(&'static str),
    /// A participant left its call.
    Removed(RemovalReason),
    /// The MLS Delivery Service refused a message.
    MlsRefused(MlsRefusal),
    /// A message refused with `rate_limited`, by the limit it went over.
    RateLimited(RateLimit),
    /// Calls in progress of a mode changed by this much (`blindrelay_calls{mode}`).
    Calls(CallMode, i8),
    /// Participants of a role changed by this much (`blindrelay_participants{role}`).
    Participants(&'static str, i8),
}
