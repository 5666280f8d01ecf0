//! How much a participant may send, and the largest description the relay then writes.
//!
//! Every m-line a participant offers is echoed in every description the relay writes to
//! it, and every track it sends becomes an m-line in every other member's descriptions;
//! each member's answer mirrors those m-lines and must fit [`MAX_MESSAGE_BYTES`]. So
//! tracks per participant are bounded ([`TrackLimits`], checked at join by
//! [`TrackLimits::check_offer`]), a session holds a bounded number of remote lines
//! ([`TrackLimits::remote_lines`]), and [`largest_offer_message_bytes`] builds the
//! largest offer those bounds allow, so a relay whose limits could produce an offer over
//! the message limit refuses to start instead of cutting its members off mid-call.

use crate::sdp::{
    write_relay_description, Codec, Fingerprint, MediaSection, Numbering, Offer, RelayMedia,
    RemoteTrack, CODEC_COUNT,
};
use crate::signal::{ServerMessage, MAX_MESSAGE_BYTES};
use std::net::SocketAddr;
use thiserror::Error;

/// Longest `a=mid` of a participant's m-line (echoed in every description). Chrome and
/// Firefox write "0", "1", ...; the RTP MID header extension carries at most 16 bytes.
pub const MAX_MID_BYTES: usize = 16;
/// Most SSRCs one offered m-line may list: simulcast's three layers with RTX, and spare.
pub const MAX_SSRCS_PER_LINE: usize = 8;
/// Longest Opus `a=fmtp` value (echoed on every audio line); browsers write ~45 bytes.
pub const MAX_AUDIO_FMTP_BYTES: usize = 128;
/// Longest sum of the video codecs' `a=fmtp` values (echoed on every video line);
/// browsers write ~120 bytes for VP9, AV1 and H264 together.
pub const MAX_VIDEO_FMTP_BYTES: usize = 256;
/// Lengths of what the relay generates per session: its ICE ufrag and password, and a
/// participant's public id (the msid stream of its tracks).
pub const RELAY_UFRAG_LEN: usize = 16;
pub const RELAY_PWD_LEN: usize = 32;
pub const PUBLIC_ID_LEN: usize = 14;

/// Tracks (m-lines) one participant may offer, per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackLimits {
    pub audio: usize,
    pub video: usize,
}

/// Why a join's offer is refused: it asks for more than one participant may have.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TrackError {
    #[error("the offer has {count} {kind} m-lines; a participant may have {max}")]
    TooManyLines {
        kind: &'static str,
        count: usize,
        max: usize,
    },
    #[error("an a=mid of {len} bytes; at most {MAX_MID_BYTES}")]
    LongMid { len: usize },
    #[error("an m-line lists {count} SSRCs; at most {MAX_SSRCS_PER_LINE}")]
    TooManySsrcs { count: usize },
    #[error("an m-line format other than a payload type number")]
    BadFormat,
    #[error("{kind} a=fmtp values of {len} bytes; at most {max}")]
    LongFmtp {
        kind: &'static str,
        len: usize,
        max: usize,
    },
}

fn kind_of(kind: &str) -> &'static str {
    if kind == "audio" {
        "audio"
    } else {
        "video"
    }
}

impl TrackLimits {
    /// The limit for `kind` ("audio", anything else is video).
    pub fn of(&self, kind: &str) -> usize {
        if kind == "audio" {
            self.audio
        } else {
            self.video
        }
    }

    /// Remote m-lines of `kind` one session may hold in a call of up to
    /// `max_participants`: every track of the others, active, and half as many again
    /// inactive (departed tracks whose lines wait until the client has seen them go
    /// inactive, then are recycled). The relay keeps a session within this, so its
    /// largest offer is bounded whatever the call's history.
    pub fn remote_lines(&self, kind: &str, max_participants: usize) -> usize {
        let k = self.active_remote(kind, max_participants);
        k + k.div_ceil(2)
    }

    /// Remote tracks of `kind` that can be active at once in a full call.
    pub fn active_remote(&self, kind: &str, max_participants: usize) -> usize {
        max_participants.saturating_sub(1) * self.of(kind)
    }

    /// Whether a join's offer stays within these limits and the sizes the relay's bound
    /// assumes (see [`largest_offer_message_bytes`]).
    pub fn check_offer(&self, offer: &Offer) -> Result<(), TrackError> {
        for kind in ["audio", "video"] {
            let count = offer
                .media
                .iter()
                .filter(|m| kind_of(&m.kind) == kind)
                .count();
            let max = self.of(kind);
            if count > max {
                return Err(TrackError::TooManyLines { kind, count, max });
            }
        }
        for m in &offer.media {
            if m.mid.len() > MAX_MID_BYTES {
                return Err(TrackError::LongMid { len: m.mid.len() });
            }
            if m.ssrcs.len() > MAX_SSRCS_PER_LINE {
                return Err(TrackError::TooManySsrcs {
                    count: m.ssrcs.len(),
                });
            }
            if m.formats.iter().any(|f| f.is_empty() || f.len() > 3) {
                return Err(TrackError::BadFormat);
            }
        }
        let n = Numbering::from_offer(offer);
        let fmtp_len = |kind: &str| -> usize {
            Codec::ALL
                .into_iter()
                .filter(|c| c.kind() == kind)
                .filter_map(|c| n.fmtp[c.index()].as_ref().map(String::len))
                .sum()
        };
        for (kind, max) in [
            ("audio", MAX_AUDIO_FMTP_BYTES),
            ("video", MAX_VIDEO_FMTP_BYTES),
        ] {
            let len = fmtp_len(kind);
            if len > max {
                return Err(TrackError::LongFmtp { kind, len, max });
            }
        }
        Ok(())
    }
}

/// The largest `offer` message the relay can write to a member of a call of
/// `max_participants` under `limits`, in bytes of JSON: built, not estimated, from the
/// longest values of everything it contains (the participant's own lines at
/// [`TrackLimits`] with every codec and the longest mids and fmtp, [`TrackLimits::
/// remote_lines`] remote lines, the longest generated ids and numbers, `media_addr`).
pub fn largest_offer_message_bytes(
    limits: &TrackLimits,
    max_participants: usize,
    media_addr: SocketAddr,
) -> usize {
    // Three-digit payload types, transport-cc, and the fmtp budget spent in full.
    let pt = [Some(100), Some(101), Some(102), Some(103), Some(104)];
    let mut fmtp: [Option<String>; CODEC_COUNT] = Default::default();
    fmtp[Codec::Opus.index()] = Some("a".repeat(MAX_AUDIO_FMTP_BYTES));
    let video: Vec<Codec> = Codec::ALL
        .into_iter()
        .filter(|c| c.kind() == "video")
        .collect();
    for (i, c) in video.iter().enumerate() {
        // Split the budget, the remainder on the first codec.
        let share = MAX_VIDEO_FMTP_BYTES / video.len()
            + if i == 0 {
                MAX_VIDEO_FMTP_BYTES % video.len()
            } else {
                0
            };
        fmtp[c.index()] = Some("v".repeat(share));
    }
    let numbering = Numbering {
        pt,
        fmtp,
        rank: [0; CODEC_COUNT],
        twcc: Some(14),
        // RTX on every video codec: its lines lengthen every video m-line.
        rtx: [None, Some(105), Some(106), Some(107), Some(108)],
    };
    let own_line = |kind: &str, i: usize| MediaSection {
        kind: kind.into(),
        mid: format!("{i:0>width$}", width = MAX_MID_BYTES),
        ssrcs: vec![u32::MAX; MAX_SSRCS_PER_LINE],
        direction: "sendrecv".into(),
        formats: Codec::ALL
            .into_iter()
            .filter(|c| c.kind() == kind)
            .filter_map(|c| pt[c.index()].map(|p: u8| p.to_string()))
            .collect(),
        codec_attributes: Vec::new(),
        rtx_ssrcs: Vec::new(),
        repairs: Vec::new(),
        simulcast: Vec::new(),
    };
    let media = (0..limits.audio)
        .map(|i| own_line("audio", i))
        .chain((0..limits.video).map(|i| own_line("video", limits.audio + i)))
        .collect();
    let own = Offer {
        ice_ufrag: "u".repeat(256),
        ice_pwd: "p".repeat(256),
        fingerprint: Fingerprint { sha256: [0xff; 32] },
        setup: "actpass".into(),
        media,
    };
    let mut remote = Vec::new();
    for kind in ["audio", "video"] {
        let active = limits.active_remote(kind, max_participants);
        for i in 0..limits.remote_lines(kind, max_participants) {
            remote.push(RemoteTrack {
                // The longest mid a session's counter can reach.
                mid: format!("r{}", u64::MAX),
                kind,
                stream: "p".repeat(PUBLIC_ID_LEN),
                ssrc: u32::MAX,
                rtx: (kind == "video").then_some(u32::MAX - 1),
                active: i < active,
            });
        }
    }
    let sdp = write_relay_description(
        &own,
        &numbering,
        &remote,
        &RelayMedia {
            ice_ufrag: &"u".repeat(RELAY_UFRAG_LEN),
            ice_pwd: &"p".repeat(RELAY_PWD_LEN),
            fingerprint: &Fingerprint { sha256: [0xff; 32] },
            media_addr,
            session_id: u64::MAX,
            // The o= line writes 2 + version: the largest that cannot overflow.
            version: u64::MAX - 2,
        },
        true,
    );
    let msg = ServerMessage::Offer {
        sdp,
        revision: u64::MAX,
    };
    serde_json::to_string(&msg)
        .map(|s| s.len())
        .unwrap_or(usize::MAX)
}

/// Whether the largest offer (see [`largest_offer_message_bytes`]) fits one signalling
/// message, so each member's answer, which mirrors it, can be sent back.
pub fn offers_fit(limits: &TrackLimits, max_participants: usize, media_addr: SocketAddr) -> bool {
    largest_offer_message_bytes(limits, max_participants, media_addr) <= MAX_MESSAGE_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp::{build_offer, parse_offer, OfferParams};

    fn addr() -> SocketAddr {
        "127.0.0.1:7402".parse().unwrap()
    }

    /// The defaults fit a call at the default size; 2 audio and 3 video tracks each would
    /// not (so the relay would refuse that configuration).
    #[test]
    fn default_limits_fit_a_full_call_and_larger_ones_are_caught() {
        let defaults = TrackLimits { audio: 1, video: 2 };
        let n = largest_offer_message_bytes(&defaults, 16, addr());
        assert!(n <= MAX_MESSAGE_BYTES, "{n}");
        assert!(offers_fit(&defaults, 16, addr()));
        let more = TrackLimits { audio: 2, video: 3 };
        assert!(!offers_fit(&more, 16, addr()));
        assert!(offers_fit(&more, 10, addr()));
        // More of anything makes the bound larger.
        assert!(largest_offer_message_bytes(&defaults, 17, addr()) > n);
        let v6 = "[2001:db8:1234:5678:9abc:def0:1234:5678]:65535"
            .parse()
            .unwrap();
        assert!(largest_offer_message_bytes(&defaults, 16, v6) > n);
    }

    #[test]
    fn a_browser_offer_passes_and_more_lines_than_allowed_do_not() {
        let o = parse_offer(&build_offer(&OfferParams {
            ice_ufrag: "abcd",
            ice_pwd: "0123456789012345678901",
            fingerprint: &Fingerprint { sha256: [1; 32] },
            audio_ssrc: 1,
            video_ssrc: 2,
            cname: "c",
            session_id: 1,
        }))
        .unwrap();
        let l = TrackLimits { audio: 1, video: 1 };
        assert_eq!(l.check_offer(&o), Ok(()));
        let none = TrackLimits { audio: 1, video: 0 };
        assert_eq!(
            none.check_offer(&o),
            Err(TrackError::TooManyLines {
                kind: "video",
                count: 1,
                max: 0
            })
        );
    }
}
