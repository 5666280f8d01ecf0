//! The SDP subset a browser's RTCPeerConnection produces and an ICE-lite SFU answers
//! (RFC 8829 JSEP, RFC 8843 BUNDLE, RFC 5761 rtcp-mux), parsed and written with the
//! webrtc-rs `sdp` crate rather than by string slicing.

use ::sdp::description::common::{Address, Attribute, ConnectionInformation};
use ::sdp::description::media::{MediaDescription, MediaName, RangedPort};
use ::sdp::description::session::{Origin, SessionDescription, TimeDescription, Timing};
use std::io::Cursor;
use std::net::SocketAddr;
use thiserror::Error;

/// Why an offer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SdpError {
    #[error("SDP does not parse: {0}")]
    Syntax(String),
    #[error("SDP lacks {0}")]
    Missing(&'static str),
    #[error("SDP has an unusable {0}")]
    Invalid(&'static str),
}

/// A DTLS certificate fingerprint (RFC 8122); only sha-256 is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub sha256: [u8; 32],
}

impl Fingerprint {
    /// Parse `sha-256 AB:CD:...`.
    pub fn parse(value: &str) -> Result<Self, SdpError> {
        let (alg, hex) = value
            .split_once(' ')
            .ok_or(SdpError::Invalid("a=fingerprint"))?;
        if !alg.eq_ignore_ascii_case("sha-256") {
            return Err(SdpError::Invalid(
                "a=fingerprint (only sha-256 is accepted)",
            ));
        }
        let mut out = [0u8; 32];
        let mut n = 0;
        for part in hex.trim().split(':') {
            if n == 32 || part.len() != 2 {
                return Err(SdpError::Invalid("a=fingerprint"));
            }
            out[n] =
                u8::from_str_radix(part, 16).map_err(|_| SdpError::Invalid("a=fingerprint"))?;
            n += 1;
        }
        if n != 32 {
            return Err(SdpError::Invalid("a=fingerprint"));
        }
        Ok(Fingerprint { sha256: out })
    }

    /// Render as the SDP attribute value.
    pub fn to_sdp_value(&self) -> String {
        let hex: Vec<String> = self.sha256.iter().map(|b| format!("{b:02X}")).collect();
        format!("sha-256 {}", hex.join(":"))
    }
}

/// One m-line of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    /// `audio` or `video`.
    pub kind: String,
    pub mid: String,
    /// SSRCs the offerer will send on this m-line (a=ssrc).
    pub ssrcs: Vec<u32>,
    pub direction: String,
    /// The offered formats, kept so the answer can accept the same codecs.
    pub formats: Vec<String>,
    /// Codec attributes (rtpmap, fmtp, rtcp-fb) for those formats, echoed in the answer.
    pub codec_attributes: Vec<(String, String)>,
    /// SSRCs that repair another (the second of each `a=ssrc-group:FID`): RTX.
    pub rtx_ssrcs: Vec<u32>,
    /// Each `a=ssrc-group:FID` as (media SSRC, its RTX SSRC).
    pub repairs: Vec<(u32, u32)>,
    /// The line's `a=ssrc-group:SIM`: its simulcast layers' SSRCs, lowest resolution
    /// first (2 or 3; empty without simulcast).
    pub simulcast: Vec<u32>,
}

/// What the relay needs from an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    pub fingerprint: Fingerprint,
    /// The offerer's a=setup (actpass, active or passive).
    pub setup: String,
    pub media: Vec<MediaSection>,
}

fn attr<'a>(
    session: &'a SessionDescription,
    md: Option<&'a MediaDescription>,
    key: &str,
) -> Option<&'a str> {
    if let Some(md) = md {
        if let Some(Some(v)) = md.attribute(key) {
            return Some(v);
        }
    }
    session.attribute(key).map(|s| s.as_str())
}

/// Parse a browser-style offer.
pub fn parse_offer(text: &str) -> Result<Offer, SdpError> {
    let mut cur = Cursor::new(text.as_bytes());
    let s = SessionDescription::unmarshal(&mut cur).map_err(|e| SdpError::Syntax(e.to_string()))?;
    let first = s.media_descriptions.first();
    if first.is_none() {
        return Err(SdpError::Missing("an m-line"));
    }
    let ice_ufrag = attr(&s, first, "ice-ufrag").ok_or(SdpError::Missing("a=ice-ufrag"))?;
    let ice_pwd = attr(&s, first, "ice-pwd").ok_or(SdpError::Missing("a=ice-pwd"))?;
    if ice_ufrag.is_empty() || ice_ufrag.len() > 256 || ice_ufrag.contains(':') {
        return Err(SdpError::Invalid("a=ice-ufrag"));
    }
    if ice_pwd.len() < 22 || ice_pwd.len() > 256 {
        return Err(SdpError::Invalid("a=ice-pwd (22 to 256 characters)"));
    }
    let fingerprint = Fingerprint::parse(
        attr(&s, first, "fingerprint").ok_or(SdpError::Missing("a=fingerprint"))?,
    )?;
    let setup = attr(&s, first, "setup").unwrap_or("actpass").to_string();
    if setup == "passive" {
        // The relay is always the DTLS server; a passive offerer would leave no client.
        return Err(SdpError::Invalid(
            "a=setup (the relay is DTLS server: offer actpass or active)",
        ));
    }
    let mut media = Vec::new();
    for md in &s.media_descriptions {
        let kind = md.media_name.media.clone();
        if kind != "audio" && kind != "video" {
            continue;
        }
        if md.has_attribute("rtcp-mux") || s.has_attribute("rtcp-mux") {
        } else {
            return Err(SdpError::Missing("a=rtcp-mux"));
        }
        let mid = md
            .attribute("mid")
            .flatten()
            .ok_or(SdpError::Missing("a=mid"))?
            .to_string();
        let mut ssrcs = Vec::new();
        push_ssrcs(md, &mut ssrcs)?;
        let mut rtx_ssrcs = Vec::new();
        let mut repairs = Vec::new();
        let mut simulcast = Vec::new();
        for a in &md.attributes {
            if a.key == "ssrc-group" && simulcast.is_empty() {
                let v = a.value.as_deref().unwrap_or("");
                let mut f = v.split_whitespace();
                if f.next() == Some("SIM") {
                    let layers: Vec<u32> = f.filter_map(|x| x.parse().ok()).collect();
                    simulcast = layers;
                }
            }
        }
        for a in &md.attributes {
            if a.key == "ssrc-group" {
                let v = a.value.as_deref().unwrap_or("");
                let mut f = v.split_whitespace();
                if f.next() == Some("FID") {
                    let media = f.next().and_then(|x| x.parse::<u32>().ok());
                    if let Some(rtx) = f.next().and_then(|x| x.parse::<u32>().ok()) {
                        rtx_ssrcs.push(rtx);
                        // Only a pair of this line's own SSRCs (each one the relay checks
                        // nobody else in the call has): an RTX SSRC named here but not
                        // announced could be another participant's, and the relay would
                        // retransmit on it.
                        if let Some(media) = media.filter(|m| {
                            *m != rtx
                                && ssrcs.contains(m)
                                && ssrcs.contains(&rtx)
                                && !repairs.iter().any(|(a, b)| *a == *m || *b == rtx)
                        }) {
                            repairs.push((media, rtx));
                        }
                    }
                }
            }
        }
        // Only the line's own SSRCs (each checked against the rest of the call), none an
        // RTX stream, each once: a layer is a stream the relay switches receivers onto.
        let layers_ok = (2..=MAX_LAYERS).contains(&simulcast.len())
            && simulcast.iter().enumerate().all(|(i, l)| {
                ssrcs.contains(l) && !rtx_ssrcs.contains(l) && !simulcast[..i].contains(l)
            });
        if !layers_ok {
            simulcast.clear();
        }
        let direction = ["sendrecv", "sendonly", "recvonly", "inactive"]
            .into_iter()
            .find(|d| md.has_attribute(d))
            .unwrap_or("sendrecv")
            .to_string();
        let formats = md.media_name.formats.clone();
        let codec_attributes = md
            .attributes
            .iter()
            .filter(|a| matches!(a.key.as_str(), "rtpmap" | "fmtp" | "rtcp-fb" | "extmap"))
            .map(|a| (a.key.clone(), a.value.clone().unwrap_or_default()))
            .collect();
        media.push(MediaSection {
            kind,
            mid,
            ssrcs,
            direction,
            formats,
            codec_attributes,
            rtx_ssrcs,
            repairs,
            simulcast,
        });
    }
    if media.is_empty() {
        return Err(SdpError::Missing("an audio or video m-line"));
    }
    Ok(Offer {
        ice_ufrag: ice_ufrag.to_string(),
        ice_pwd: ice_pwd.to_string(),
        fingerprint,
        setup,
        media,
    })
}

fn session(session_id: u64, addr: SocketAddr) -> SessionDescription {
    let (ntype, atype) = (
        "IN".to_string(),
        if addr.is_ipv4() { "IP4" } else { "IP6" }.to_string(),
    );
    SessionDescription {
        origin: Origin {
            username: "-".into(),
            session_id,
            session_version: 2,
            network_type: ntype,
            address_type: atype,
            unicast_address: addr.ip().to_string(),
        },
        session_name: "-".to_string(),
        time_descriptions: vec![TimeDescription {
            timing: Timing {
                start_time: 0,
                stop_time: 0,
            },
            repeat_times: vec![],
        }],
        ..Default::default()
    }
}

fn media_description(
    kind: &str,
    port: u16,
    formats: Vec<String>,
    addr: Option<SocketAddr>,
) -> MediaDescription {
    MediaDescription {
        media_name: MediaName {
            media: kind.to_string(),
            port: RangedPort {
                value: port as isize,
                range: None,
            },
            protos: vec!["UDP".into(), "TLS".into(), "RTP".into(), "SAVPF".into()],
            formats,
        },
        media_title: None,
        connection_information: Some(ConnectionInformation {
            network_type: "IN".into(),
            address_type: if addr.is_none_or(|a| a.is_ipv4()) {
                "IP4"
            } else {
                "IP6"
            }
            .into(),
            address: Some(Address {
                address: addr
                    .map(|a| a.ip().to_string())
                    .unwrap_or_else(|| "0.0.0.0".into()),
                ttl: None,
                range: None,
            }),
        }),
        bandwidth: vec![],
        encryption_key: None,
        attributes: vec![],
    }
}

fn push(md: &mut MediaDescription, key: &str, value: Option<String>) {
    md.attributes.push(Attribute {
        key: key.to_string(),
        value,
    });
}

/// What a client puts in its offer.
#[derive(Debug, Clone)]
pub struct OfferParams<'a> {
    pub ice_ufrag: &'a str,
    pub ice_pwd: &'a str,
    pub fingerprint: &'a Fingerprint,
    pub audio_ssrc: u32,
    pub video_ssrc: u32,
    pub cname: &'a str,
    pub session_id: u64,
}

/// Payload type of the synthetic audio (Opus's usual dynamic number).
pub const AUDIO_PT: u8 = 111;
/// Payload type of the synthetic video (VP8's usual dynamic number).
pub const VIDEO_PT: u8 = 96;

/// Write a browser-shaped offer with one audio and one video m-line.
pub fn build_offer(p: &OfferParams<'_>) -> String {
    build_offer_with_layers(p, &[])
}

/// [`build_offer`], with the video sent as simulcast layers: `video_layers` are their
/// SSRCs, lowest resolution first, announced as Chromium does (an `a=ssrc` each and one
/// `a=ssrc-group:SIM`). Fewer than two: one plain video stream on `p.video_ssrc`.
pub fn build_offer_with_layers(p: &OfferParams<'_>, video_layers: &[u32]) -> String {
    let mut s = session(
        p.session_id,
        "127.0.0.1:9".parse().unwrap_or_else(|_| unreachable!()),
    );
    s.attributes.push(Attribute {
        key: "group".into(),
        value: Some("BUNDLE 0 1".into()),
    });
    s.attributes.push(Attribute {
        key: "msid-semantic".into(),
        value: Some(" WMS *".into()),
    });
    let lines = [
        ("audio", "0", AUDIO_PT, "opus/48000/2", p.audio_ssrc),
        ("video", "1", VIDEO_PT, "VP8/90000", p.video_ssrc),
    ];
    for (kind, mid, pt, rtpmap, ssrc) in lines {
        let mut md = media_description(kind, 9, vec![pt.to_string()], None);
        push(&mut md, "mid", Some(mid.into()));
        push(&mut md, "ice-ufrag", Some(p.ice_ufrag.into()));
        push(&mut md, "ice-pwd", Some(p.ice_pwd.into()));
        push(&mut md, "fingerprint", Some(p.fingerprint.to_sdp_value()));
        push(&mut md, "setup", Some("actpass".into()));
        push(&mut md, "rtcp-mux", None);
        push(&mut md, "sendrecv", None);
        push(&mut md, "rtpmap", Some(format!("{pt} {rtpmap}")));
        if kind == "video" {
            push(&mut md, "rtcp-fb", Some(format!("{pt} nack")));
            push(&mut md, "rtcp-fb", Some(format!("{pt} nack pli")));
            push(&mut md, "rtcp-fb", Some(format!("{pt} ccm fir")));
        }
        if kind == "video" && video_layers.len() >= 2 {
            for l in video_layers {
                push(&mut md, "ssrc", Some(format!("{l} cname:{}", p.cname)));
            }
            let ids: Vec<String> = video_layers.iter().map(u32::to_string).collect();
            push(
                &mut md,
                "ssrc-group",
                Some(format!("SIM {}", ids.join(" "))),
            );
        } else {
            push(&mut md, "ssrc", Some(format!("{ssrc} cname:{}", p.cname)));
        }
        s.media_descriptions.push(md);
    }
    s.marshal()
}

/// ICE credentials and the first host candidate of an answer, for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerInfo {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    pub fingerprint: Fingerprint,
    pub ice_lite: bool,
    pub candidate: SocketAddr,
}

/// Read what a client needs from the relay's answer.
pub fn parse_answer(text: &str) -> Result<AnswerInfo, SdpError> {
    let mut cur = Cursor::new(text.as_bytes());
    let s = SessionDescription::unmarshal(&mut cur).map_err(|e| SdpError::Syntax(e.to_string()))?;
    let first = s.media_descriptions.first();
    let ice_ufrag = attr(&s, first, "ice-ufrag")
        .ok_or(SdpError::Missing("a=ice-ufrag"))?
        .to_string();
    let ice_pwd = attr(&s, first, "ice-pwd")
        .ok_or(SdpError::Missing("a=ice-pwd"))?
        .to_string();
    let fingerprint = Fingerprint::parse(
        attr(&s, first, "fingerprint").ok_or(SdpError::Missing("a=fingerprint"))?,
    )?;
    let cand = attr(&s, first, "candidate").ok_or(SdpError::Missing("a=candidate"))?;
    // foundation component transport priority address port typ host
    let f: Vec<&str> = cand.split_whitespace().collect();
    let (ip, port) = match (f.get(4), f.get(5)) {
        (Some(ip), Some(port)) => (*ip, *port),
        _ => return Err(SdpError::Invalid("a=candidate")),
    };
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| SdpError::Invalid("a=candidate address"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| SdpError::Invalid("a=candidate port"))?;
    Ok(AnswerInfo {
        ice_ufrag,
        ice_pwd,
        fingerprint,
        ice_lite: s.has_attribute("ice-lite"),
        candidate: SocketAddr::new(ip, port),
    })
}

/// The header extension the relay negotiates: transport-wide congestion control, whose
/// feedback the relay itself sends to each sender. Every other extension is left out of
/// what the relay writes, and stripped from what it forwards.
pub const TWCC_URI: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// The codecs a call can carry. Each participant numbers them its own way; the relay
/// rewrites the payload type per receiver. RED, ULPFEC and RTX are left out of every
/// description the relay writes, so no sender uses them. Opus and VP8 (the codecs every
/// WebRTC endpoint must implement, RFC 7874 and RFC 7742) are always in a call; VP9,
/// AV1 and H264 only while every participant of the call offered them (see
/// [`CodecSet`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Opus = 0,
    Vp8 = 1,
    Vp9 = 2,
    Av1 = 3,
    H264 = 4,
}

/// How many [`Codec`]s there are (array sizes).
pub const CODEC_COUNT: usize = 5;

/// A set of [`Codec`]s, by index.
pub type CodecSet = [bool; CODEC_COUNT];

impl Codec {
    pub const ALL: [Codec; CODEC_COUNT] =
        [Codec::Opus, Codec::Vp8, Codec::Vp9, Codec::Av1, Codec::H264];

    /// The set every call starts from: the mandatory codecs, plus the optional video
    /// codecs until a participant lacks them.
    pub const EVERY: CodecSet = [true; CODEC_COUNT];

    pub fn kind(self) -> &'static str {
        match self {
            Codec::Opus => "audio",
            Codec::Vp8 | Codec::Vp9 | Codec::Av1 | Codec::H264 => "video",
        }
    }

    /// Whether every call carries it (a participant need not share the others).
    pub fn mandatory(self) -> bool {
        matches!(self, Codec::Opus | Codec::Vp8)
    }

    /// The rtpmap encoding, after the payload type.
    pub fn rtpmap(self) -> &'static str {
        match self {
            Codec::Opus => "opus/48000/2",
            Codec::Vp8 => "VP8/90000",
            Codec::Vp9 => "VP9/90000",
            Codec::Av1 => "AV1/90000",
            Codec::H264 => "H264/90000",
        }
    }

    fn default_fmtp(self) -> Option<&'static str> {
        match self {
            Codec::Opus => Some("minptime=10;useinbandfec=1"),
            Codec::Vp8 => None,
            Codec::Vp9 => Some("profile-id=0"),
            Codec::Av1 => Some("profile=0"),
            Codec::H264 => {
                Some("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f")
            }
        }
    }

    /// Whether an rtpmap encoding (`opus/48000/2`) with its fmtp parameters names this
    /// codec in the one profile a call carries, so that every receiver can decode every
    /// sender: VP9 profile 0, AV1 main profile, and H264 constrained baseline in
    /// non-interleaved mode (`profile-level-id=42e0xx;packetization-mode=1`; the level may
    /// differ per direction). Other profiles are left out.
    fn matches(self, encoding: &str, fmtp: &str) -> bool {
        let mut f = encoding.split('/');
        let (name, clock) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        let param = |key: &str| {
            fmtp.split(';').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                k.trim().eq_ignore_ascii_case(key).then(|| v.trim())
            })
        };
        let video = clock == "90000";
        match self {
            Codec::Opus => name.eq_ignore_ascii_case("opus") && clock == "48000",
            Codec::Vp8 => name.eq_ignore_ascii_case("vp8") && video,
            Codec::Vp9 => {
                name.eq_ignore_ascii_case("vp9")
                    && video
                    && param("profile-id").is_none_or(|p| p == "0")
            }
            Codec::Av1 => {
                name.eq_ignore_ascii_case("av1")
                    && video
                    && param("profile").is_none_or(|p| p == "0")
            }
            Codec::H264 => {
                name.eq_ignore_ascii_case("h264")
                    && video
                    && param("packetization-mode") == Some("1")
                    && param("profile-level-id").is_some_and(|p| {
                        p.len() == 6 && p.get(..4).is_some_and(|x| x.eq_ignore_ascii_case("42e0"))
                    })
            }
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// How one participant numbers the call's codecs and the transport-cc extension, read
/// from its offer: the relay answers it in its own numbers, writes every later offer to
/// it in them, and rewrites forwarded packets into them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Numbering {
    /// The participant's payload type for each [`Codec`] (by index), if it offered it.
    pub pt: [Option<u8>; CODEC_COUNT],
    /// Its own fmtp for each codec, echoed back to it.
    pub fmtp: [Option<String>; CODEC_COUNT],
    /// Its preference: each codec's position in its offer's format list. Every list the
    /// relay writes to it keeps this order, so a sender that put H264 first (for example
    /// with `setCodecPreferences`) sends H264.
    pub rank: [usize; CODEC_COUNT],
    /// Its id for the transport-cc header extension.
    pub twcc: Option<u8>,
    /// Its RTX payload type (RFC 4588, `apt=` the codec's) for each video codec, if it
    /// offered one: retransmissions to it and from it use it.
    pub rtx: [Option<u8>; CODEC_COUNT],
}

impl Numbering {
    /// Read an offer. A codec offered on several m-lines keeps its first number; within
    /// an m-line, the first payload type in the format list that matches.
    pub fn from_offer(offer: &Offer) -> Numbering {
        let mut n = Numbering::default();
        for m in &offer.media {
            let attr_of = |key: &str, pt: &str| {
                m.codec_attributes.iter().find_map(|(k, v)| {
                    let (p, rest) = v.split_once(' ')?;
                    (k == key && p.trim() == pt).then(|| rest.trim())
                })
            };
            for (position, format) in m.formats.iter().enumerate() {
                let Ok(pt) = format.parse::<u8>() else {
                    continue;
                };
                if pt > 127 {
                    continue;
                }
                let Some(encoding) = attr_of("rtpmap", format) else {
                    continue;
                };
                let fmtp = attr_of("fmtp", format);
                for c in Codec::ALL {
                    if c.kind() == m.kind
                        && n.pt[c.index()].is_none()
                        && c.matches(encoding, fmtp.unwrap_or(""))
                    {
                        n.pt[c.index()] = Some(pt);
                        n.fmtp[c.index()] = fmtp.map(str::to_string);
                        n.rank[c.index()] = position;
                    }
                }
            }
            // RTX for a codec this line's numbering chose: `rtx/90000` with `apt=` its PT.
            for format in &m.formats {
                let Ok(pt) = format.parse::<u8>() else {
                    continue;
                };
                let is_rtx =
                    attr_of("rtpmap", format).is_some_and(|e| e.eq_ignore_ascii_case("rtx/90000"));
                let apt = attr_of("fmtp", format).and_then(|f| {
                    f.split(';').find_map(|kv| {
                        let (k, v) = kv.split_once('=')?;
                        (k.trim() == "apt").then(|| v.trim().parse::<u8>().ok())?
                    })
                });
                let (true, Some(apt), true) = (is_rtx, apt, pt < 128) else {
                    continue;
                };
                for c in Codec::ALL {
                    if c.kind() == "video"
                        && c.kind() == m.kind
                        && n.pt[c.index()] == Some(apt)
                        && n.rtx[c.index()].is_none()
                    {
                        n.rtx[c.index()] = Some(pt);
                    }
                }
            }
            for (k, v) in &m.codec_attributes {
                if k != "extmap" {
                    continue;
                }
                let mut f = v.split_whitespace();
                let id = f
                    .next()
                    .and_then(|i| i.split('/').next()?.parse::<u8>().ok());
                if let (Some(id), Some(TWCC_URI)) = (id, f.next()) {
                    if (1..=14).contains(&id) && n.twcc.is_none() {
                        n.twcc = Some(id);
                    }
                }
            }
        }
        n
    }

    /// The codecs this participant offered.
    pub fn offered(&self) -> CodecSet {
        self.pt.map(|p| p.is_some())
    }

    /// The same numbering with only the codecs in `set`: what the relay writes to the
    /// participant while `set` is its call's codecs.
    pub fn restricted(&self, set: &CodecSet) -> Numbering {
        let mut n = self.clone();
        for c in Codec::ALL {
            if !set[c.index()] {
                n.pt[c.index()] = None;
                n.fmtp[c.index()] = None;
                n.rtx[c.index()] = None;
            }
        }
        n
    }

    /// The codec a payload type of this participant stands for.
    pub fn codec_of(&self, pt: u8) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| self.pt[c.index()] == Some(pt))
    }

    /// The payload type this participant uses for `c`.
    pub fn pt_of(&self, c: Codec) -> Option<u8> {
        self.pt[c.index()]
    }

    /// The call codecs of a kind this participant can receive, in its order of preference.
    pub fn codecs_for_kind(&self, kind: &str) -> Vec<(Codec, u8)> {
        let mut v: Vec<(Codec, u8)> = Codec::ALL
            .into_iter()
            .filter(|c| c.kind() == kind)
            .filter_map(|c| Some((c, self.pt_of(c)?)))
            .collect();
        v.sort_by_key(|(c, _)| self.rank[c.index()]);
        v
    }

    /// Whether this participant can receive any call codec of a kind.
    pub fn receives_kind(&self, kind: &str) -> bool {
        !self.codecs_for_kind(kind).is_empty()
    }
}

/// The codecs a call carries: the mandatory ones, plus each optional video codec that
/// every participant offered.
pub fn call_codecs<'a>(members: impl IntoIterator<Item = &'a Numbering>) -> CodecSet {
    let mut set = Codec::EVERY;
    for n in members {
        for c in Codec::ALL {
            if !c.mandatory() && n.pt_of(c).is_none() {
                set[c.index()] = false;
            }
        }
    }
    set
}

/// Simulcast layers one track may have: browsers send up to three.
pub const MAX_LAYERS: usize = 3;

/// A simulcast track's layers, lowest resolution first, each with its RTX SSRC.
/// `count` 0: the track is not simulcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Layers {
    pub ssrcs: [u32; MAX_LAYERS],
    pub rtx: [Option<u32>; MAX_LAYERS],
    pub count: u8,
}

impl Layers {
    pub const NONE: Layers = Layers {
        ssrcs: [0; MAX_LAYERS],
        rtx: [None; MAX_LAYERS],
        count: 0,
    };

    /// The layers' SSRCs, lowest first.
    pub fn ssrcs(&self) -> &[u32] {
        &self.ssrcs[..self.count as usize]
    }
}

/// A track a participant sends: the primary SSRC of one of its sending m-lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentTrack {
    pub kind: &'static str,
    /// What receivers know the track by: with simulcast, its lowest layer's SSRC (the
    /// relay sends each receiver one layer under it).
    pub ssrc: u32,
    /// The SSRC it retransmits on (its `a=ssrc-group:FID` partner), if any. The relay
    /// retransmits the track to each receiver on it too, numbered per receiver.
    pub rtx: Option<u32>,
    /// Its simulcast layers (`a=ssrc-group:SIM`), video only.
    pub layers: Layers,
}

impl Offer {
    /// The tracks the offerer sends: one per sending m-line with an SSRC (RTX left out).
    pub fn sent_tracks(&self) -> Vec<SentTrack> {
        self.media
            .iter()
            .filter(|m| m.direction == "sendrecv" || m.direction == "sendonly")
            .filter_map(|m| {
                let kind = if m.kind == "audio" { "audio" } else { "video" };
                let rtx_of = |ssrc: u32| {
                    m.repairs
                        .iter()
                        .find(|(media, _)| *media == ssrc)
                        .map(|(_, r)| *r)
                        .filter(|_| kind == "video")
                };
                let mut layers = Layers::NONE;
                if kind == "video" {
                    for (i, l) in m.simulcast.iter().take(MAX_LAYERS).enumerate() {
                        layers.ssrcs[i] = *l;
                        layers.rtx[i] = rtx_of(*l);
                        layers.count = i as u8 + 1;
                    }
                }
                let ssrc = match layers.ssrcs().first() {
                    Some(low) => *low,
                    None => *m.ssrcs.iter().find(|s| !m.rtx_ssrcs.contains(s))?,
                };
                Some(SentTrack {
                    kind,
                    ssrc,
                    rtx: rtx_of(ssrc),
                    layers,
                })
            })
            .collect()
    }
}

/// One m-line the relay writes for a receiver: another participant's track. Once
/// written, a track keeps its place and mid; when its sender leaves it turns inactive
/// (port 0), as m-lines can never be removed from a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteTrack {
    pub mid: String,
    pub kind: &'static str,
    /// The sender's public participant id: the msid stream id, so `ontrack`'s stream
    /// names the participant.
    pub stream: String,
    pub ssrc: u32,
    /// The SSRC the relay retransmits the track on to this receiver (the sender's own
    /// RTX SSRC), announced in an `a=ssrc-group:FID` when the receiver takes RTX.
    pub rtx: Option<u32>,
    pub active: bool,
}

/// The relay's transport parameters for one participant's session.
#[derive(Debug, Clone)]
pub struct RelayMedia<'a> {
    pub ice_ufrag: &'a str,
    pub ice_pwd: &'a str,
    pub fingerprint: &'a Fingerprint,
    pub media_addr: SocketAddr,
    pub session_id: u64,
    /// Incremented with every description written for this session (the o= version).
    pub version: u64,
}

/// The relay's description of one participant's session: first the participant's own
/// m-lines (the relay receives on them), then one m-line per remote track (the relay
/// sends on it), all in the participant's own numbering. `as_offer` writes a re-offer
/// (`a=setup:actpass`); otherwise the answer to the participant's offer
/// (`a=setup:passive`: the relay is always the DTLS server).
pub fn write_relay_description(
    own: &Offer,
    numbering: &Numbering,
    remote: &[RemoteTrack],
    p: &RelayMedia<'_>,
    as_offer: bool,
) -> String {
    let mut s = session(p.session_id, p.media_addr);
    s.origin.session_version = 2 + p.version;
    let mut bundle: Vec<&str> = Vec::new();
    let mut lines: Vec<MediaDescription> = Vec::new();
    let common = |md: &mut MediaDescription, mid: &str| {
        push(md, "mid", Some(mid.to_string()));
        push(md, "ice-ufrag", Some(p.ice_ufrag.to_string()));
        push(md, "ice-pwd", Some(p.ice_pwd.to_string()));
        push(md, "fingerprint", Some(p.fingerprint.to_sdp_value()));
        push(
            md,
            "setup",
            Some(if as_offer { "actpass" } else { "passive" }.into()),
        );
        push(md, "rtcp-mux", None);
    };
    // Video takes generic NACK (RFC 4585) and, where the participant offered it, RTX
    // (RFC 4588): the relay answers NACKs from its packet cache and asks senders for
    // what it lost itself.
    let codec_lines = |md: &mut MediaDescription,
                       c: Codec,
                       pt: u8,
                       fmtp: Option<&str>,
                       twcc: bool,
                       rtx: Option<u8>| {
        push(md, "rtpmap", Some(format!("{pt} {}", c.rtpmap())));
        if let Some(f) = fmtp {
            push(md, "fmtp", Some(format!("{pt} {f}")));
        }
        if c.kind() == "video" {
            push(md, "rtcp-fb", Some(format!("{pt} nack")));
            push(md, "rtcp-fb", Some(format!("{pt} nack pli")));
            push(md, "rtcp-fb", Some(format!("{pt} ccm fir")));
        }
        if twcc {
            push(md, "rtcp-fb", Some(format!("{pt} transport-cc")));
        }
        if let Some(r) = rtx {
            push(md, "rtpmap", Some(format!("{r} rtx/90000")));
            push(md, "fmtp", Some(format!("{r} apt={pt}")));
        }
    };
    // A codec's payload type followed by its RTX type, if it has one here.
    let with_rtx = |codecs: &[(Codec, u8)], rtx: &dyn Fn(Codec) -> Option<u8>| -> Vec<String> {
        codecs
            .iter()
            .flat_map(|(c, pt)| std::iter::once(*pt).chain(rtx(*c)))
            .map(|pt| pt.to_string())
            .collect()
    };
    for m in &own.media {
        let codecs: Vec<(Codec, u8)> = numbering
            .codecs_for_kind(&m.kind)
            .into_iter()
            .filter(|(_, pt)| m.formats.iter().any(|f| *f == pt.to_string()))
            .collect();
        let sends = m.direction == "sendrecv" || m.direction == "sendonly";
        if codecs.is_empty() {
            // Nothing the call carries: rejected (port 0), out of the bundle.
            let mut md = media_description(
                &m.kind,
                0,
                m.formats.iter().take(1).cloned().collect(),
                Some(p.media_addr),
            );
            push(&mut md, "mid", Some(m.mid.clone()));
            push(&mut md, "inactive", None);
            lines.push(md);
            continue;
        }
        // RTX the participant offered on this line.
        let own_rtx = |c: Codec| {
            numbering.rtx[c.index()].filter(|r| m.formats.iter().any(|f| *f == r.to_string()))
        };
        let formats = with_rtx(&codecs, &own_rtx);
        let mut md = media_description(&m.kind, p.media_addr.port(), formats, Some(p.media_addr));
        common(&mut md, &m.mid);
        push(&mut md, if sends { "recvonly" } else { "inactive" }, None);
        if let Some(id) = numbering.twcc {
            push(&mut md, "extmap", Some(format!("{id} {TWCC_URI}")));
        }
        for (c, pt) in &codecs {
            let fmtp = numbering.fmtp[c.index()].as_deref().or(c.default_fmtp());
            codec_lines(
                &mut md,
                *c,
                *pt,
                fmtp,
                numbering.twcc.is_some(),
                own_rtx(*c),
            );
        }
        bundle.push(&m.mid);
        lines.push(md);
    }
    for t in remote {
        let codecs = numbering.codecs_for_kind(t.kind);
        let Some(&(first, first_pt)) = codecs.first() else {
            continue;
        };
        let port = if t.active { p.media_addr.port() } else { 0 };
        // RTX to this receiver: when the track has an RTX SSRC and it takes RTX.
        let remote_rtx = |c: Codec| t.rtx.and(numbering.rtx[c.index()]);
        let formats = if t.active {
            with_rtx(&codecs, &remote_rtx)
        } else {
            vec![first_pt.to_string()]
        };
        let mut md = media_description(t.kind, port, formats, Some(p.media_addr));
        common(&mut md, &t.mid);
        if !t.active {
            push(&mut md, "inactive", None);
            codec_lines(&mut md, first, first_pt, None, false, None);
            lines.push(md);
            continue;
        }
        push(&mut md, "sendonly", None);
        for (c, pt) in &codecs {
            let fmtp = numbering.fmtp[c.index()].as_deref().or(c.default_fmtp());
            codec_lines(&mut md, *c, *pt, fmtp, false, remote_rtx(*c));
        }
        let track = format!("{}-{}", t.stream, t.kind);
        push(&mut md, "msid", Some(format!("{} {track}", t.stream)));
        let rtx_ssrc = t
            .rtx
            .filter(|_| codecs.iter().any(|(c, _)| remote_rtx(*c).is_some()));
        if let Some(r) = rtx_ssrc {
            push(&mut md, "ssrc-group", Some(format!("FID {} {r}", t.ssrc)));
        }
        for ssrc in std::iter::once(t.ssrc).chain(rtx_ssrc) {
            push(&mut md, "ssrc", Some(format!("{ssrc} cname:{}", t.stream)));
            push(
                &mut md,
                "ssrc",
                Some(format!("{ssrc} msid:{} {track}", t.stream)),
            );
        }
        bundle.push(&t.mid);
        lines.push(md);
    }
    s.attributes.push(Attribute {
        key: "group".into(),
        value: Some(format!("BUNDLE {}", bundle.join(" "))),
    });
    s.attributes.push(Attribute {
        key: "ice-lite".into(),
        value: None,
    });
    s.attributes.push(Attribute {
        key: "msid-semantic".into(),
        value: Some(" WMS *".into()),
    });
    // The one host candidate, on the first bundled m-line.
    if let Some(first) = bundle.first().copied() {
        let first = first.to_string();
        if let Some(md) = lines
            .iter_mut()
            .find(|md| md.attribute("mid").flatten() == Some(first.as_str()))
        {
            let ip = p.media_addr.ip();
            let port = p.media_addr.port();
            push(
                md,
                "candidate",
                Some(format!("1 1 udp 2130706431 {ip} {port} typ host")),
            );
            push(md, "end-of-candidates", None);
        }
    }
    s.media_descriptions = lines;
    s.marshal()
}

/// A client's answer to a relay offer: every m-line mirrored (sendonly answered recvonly
/// and the other way round), the offered codecs accepted, the client's own ICE
/// credentials and fingerprint, `a=setup:active`. e2ee-client and tests use it.
pub fn answer_relay_offer(
    offer_text: &str,
    ice_ufrag: &str,
    ice_pwd: &str,
    fingerprint: &Fingerprint,
) -> Result<String, SdpError> {
    let mut cur = Cursor::new(offer_text.as_bytes());
    let o = SessionDescription::unmarshal(&mut cur).map_err(|e| SdpError::Syntax(e.to_string()))?;
    let mut s = session(
        o.origin.session_id,
        "127.0.0.1:9"
            .parse()
            .unwrap_or_else(|_| unreachable!("literal")),
    );
    let mut bundle = Vec::new();
    for m in &o.media_descriptions {
        let mid = m
            .attribute("mid")
            .flatten()
            .ok_or(SdpError::Missing("a=mid"))?
            .to_string();
        let active = m.media_name.port.value != 0;
        let mut md = media_description(
            &m.media_name.media,
            if active { 9 } else { 0 },
            m.media_name.formats.clone(),
            None,
        );
        push(&mut md, "mid", Some(mid.clone()));
        if active {
            push(&mut md, "ice-ufrag", Some(ice_ufrag.into()));
            push(&mut md, "ice-pwd", Some(ice_pwd.into()));
            push(&mut md, "fingerprint", Some(fingerprint.to_sdp_value()));
            push(&mut md, "setup", Some("active".into()));
            push(&mut md, "rtcp-mux", None);
            bundle.push(mid);
        }
        let dir = if !active || m.has_attribute("inactive") {
            "inactive"
        } else if m.has_attribute("sendonly") {
            "recvonly"
        } else if m.has_attribute("recvonly") {
            "sendonly"
        } else {
            "sendrecv"
        };
        push(&mut md, dir, None);
        for a in &m.attributes {
            if matches!(a.key.as_str(), "rtpmap" | "fmtp" | "rtcp-fb" | "extmap") {
                push(&mut md, &a.key, a.value.clone());
            }
        }
        s.media_descriptions.push(md);
    }
    s.attributes.push(Attribute {
        key: "group".into(),
        value: Some(format!("BUNDLE {}", bundle.join(" "))),
    });
    Ok(s.marshal())
}

/// Append the SSRCs an m-line lists (a=ssrc) to `ssrcs`, each once.
fn push_ssrcs(md: &MediaDescription, ssrcs: &mut Vec<u32>) -> Result<(), SdpError> {
    for a in &md.attributes {
        if a.key == "ssrc" {
            let v = a.value.as_deref().unwrap_or("");
            let id = v.split(' ').next().unwrap_or("");
            let ssrc: u32 = id.parse().map_err(|_| SdpError::Invalid("a=ssrc"))?;
            if !ssrcs.contains(&ssrc) {
                ssrcs.push(ssrc);
            }
        }
    }
    Ok(())
}

/// What the relay checks in a client's answer to its offer: it parses, and answers every
/// m-line the offer had, with the same mids in the same order. Returns the SSRCs the
/// answer lists (a=ssrc, each once), so the relay can refuse one another participant
/// already sends.
pub fn check_answer(answer: &str, offered_mids: &[String]) -> Result<Vec<u32>, SdpError> {
    let mut cur = Cursor::new(answer.as_bytes());
    let s = SessionDescription::unmarshal(&mut cur).map_err(|e| SdpError::Syntax(e.to_string()))?;
    let mids: Vec<&str> = s
        .media_descriptions
        .iter()
        .map(|m| m.attribute("mid").flatten().unwrap_or(""))
        .collect();
    if mids.len() != offered_mids.len() || mids.iter().zip(offered_mids).any(|(a, b)| *a != b) {
        return Err(SdpError::Invalid(
            "m-lines of the answer (they must match the offer's mids)",
        ));
    }
    let mut ssrcs = Vec::new();
    for md in &s.media_descriptions {
        push_ssrcs(md, &mut ssrcs)?;
    }
    Ok(ssrcs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS stream\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Xy7Q\r\na=ice-pwd:gV2rQwOoJ1+2b0ZbxtN4zUZz\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 3C:4A:AE:9C:5F:93:2A:67:8B:A3:34:34:07:0E:4D:94:6A:6F:57:D6:34:3A:A1:30:EE:05:C6:90:F5:C9:5D:0E\r\n\
a=setup:actpass\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=sendrecv\r\n\
a=msid:stream track1\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\na=ssrc:1001 cname:abc\r\na=ssrc:1001 msid:stream track1\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:Xy7Q\r\na=ice-pwd:gV2rQwOoJ1+2b0ZbxtN4zUZz\r\n\
a=fingerprint:sha-256 3C:4A:AE:9C:5F:93:2A:67:8B:A3:34:34:07:0E:4D:94:6A:6F:57:D6:34:3A:A1:30:EE:05:C6:90:F5:C9:5D:0E\r\n\
a=setup:actpass\r\na=mid:1\r\na=sendrecv\r\na=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:96 VP8/90000\r\n\
a=ssrc-group:FID 2001 2002\r\na=ssrc:2001 cname:abc\r\na=ssrc:2002 cname:abc\r\n";

    #[test]
    fn parses_browser_offer() {
        let o = parse_offer(CHROME_OFFER).unwrap();
        assert_eq!(o.ice_ufrag, "Xy7Q");
        assert_eq!(o.media.len(), 2);
        assert_eq!(o.media[0].ssrcs, vec![1001]);
        assert_eq!(o.media[1].ssrcs, vec![2001, 2002]);
        assert_eq!(o.fingerprint.sha256[0], 0x3c);
    }

    fn relay(version: u64) -> RelayMedia<'static> {
        static FP: Fingerprint = Fingerprint { sha256: [0xab; 32] };
        RelayMedia {
            ice_ufrag: "relayufrag",
            ice_pwd: "relaypasswordrelaypassword",
            fingerprint: &FP,
            media_addr: "127.0.0.1:7402".parse().unwrap(),
            session_id: 1,
            version,
        }
    }

    #[test]
    fn answer_is_ice_lite_in_the_offerers_numbering_without_red_rtx_or_extensions() {
        let o = parse_offer(CHROME_OFFER).unwrap();
        let n = Numbering::from_offer(&o);
        assert_eq!(n.pt_of(Codec::Opus), Some(111));
        assert_eq!(n.pt_of(Codec::Vp8), Some(96));
        assert_eq!(
            n.fmtp[Codec::Opus.index()].as_deref(),
            Some("minptime=10;useinbandfec=1")
        );
        let a = write_relay_description(&o, &n, &[], &relay(0), false);
        let info = parse_answer(&a).unwrap();
        assert!(info.ice_lite);
        assert_eq!(info.candidate, "127.0.0.1:7402".parse().unwrap());
        assert_eq!(info.fingerprint, Fingerprint { sha256: [0xab; 32] });
        assert!(a.contains("a=setup:passive"));
        assert!(a.contains("a=group:BUNDLE 0 1"));
        assert!(a.contains("m=audio 7402 UDP/TLS/RTP/SAVPF 111\r\n"), "{a}");
        assert!(a.contains("m=video 7402 UDP/TLS/RTP/SAVPF 96\r\n"), "{a}");
        assert!(a.contains("a=recvonly"));
        for absent in ["red", "rtx", "extmap", "ssrc-audio-level", "a=sendrecv"] {
            assert!(!a.contains(absent), "{absent} in {a}");
        }
    }

    #[test]
    fn re_offer_has_a_line_per_remote_track_and_twcc() {
        let twcc = CHROME_OFFER.replace(
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n",
            &format!("a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=extmap:3 {TWCC_URI}\r\n"),
        );
        let o = parse_offer(&twcc).unwrap();
        let n = Numbering::from_offer(&o);
        assert_eq!(n.twcc, Some(3));
        assert_eq!(
            o.sent_tracks(),
            vec![
                SentTrack {
                    kind: "audio",
                    ssrc: 1001,
                    rtx: None,
                    layers: Layers::NONE,
                },
                SentTrack {
                    kind: "video",
                    ssrc: 2001,
                    rtx: Some(2002),
                    layers: Layers::NONE,
                }
            ],
            "RTX (FID second) is not a track, but the repair of one"
        );
        let remote = [
            RemoteTrack {
                mid: "r0".into(),
                kind: "audio",
                stream: "p-bob".into(),
                ssrc: 77,
                rtx: None,
                active: true,
            },
            RemoteTrack {
                mid: "r1".into(),
                kind: "video",
                stream: "p-bob".into(),
                ssrc: 78,
                rtx: Some(79),
                active: false,
            },
        ];
        let s = write_relay_description(&o, &n, &remote, &relay(3), true);
        assert!(s.contains("a=setup:actpass"));
        assert!(s.contains("o=- 1 5 IN IP4"), "version 2 + 3: {s}");
        assert!(
            s.contains("a=group:BUNDLE 0 1 r0\r\n"),
            "the inactive line is out of the bundle: {s}"
        );
        assert!(s.contains(&format!("a=extmap:3 {TWCC_URI}")));
        assert!(s.contains("a=rtcp-fb:96 transport-cc"));
        assert!(s.contains("a=msid:p-bob p-bob-audio"));
        assert!(s.contains("a=ssrc:77 cname:p-bob"));
        assert!(s.contains("m=video 0 "), "{s}");
        // A client answers it, and the relay's check accepts that answer.
        let fp = Fingerprint { sha256: [1; 32] };
        let answer = answer_relay_offer(&s, "cli", "clientpasswordclientpassword", &fp).unwrap();
        let mids: Vec<String> = ["0", "1", "r0", "r1"].map(String::from).to_vec();
        check_answer(&answer, &mids).unwrap();
        assert!(answer.contains("a=mid:r0\r\na=ice-ufrag:cli"), "{answer}");
        assert!(check_answer(&answer, &mids[..3]).is_err());
        assert!(check_answer("garbage", &mids).is_err());
    }

    #[test]
    fn client_offer_round_trips() {
        let fp = Fingerprint { sha256: [1; 32] };
        let p = OfferParams {
            ice_ufrag: "abcd",
            ice_pwd: "0123456789012345678901",
            fingerprint: &fp,
            audio_ssrc: 5,
            video_ssrc: 6,
            cname: "c",
            session_id: 3,
        };
        let o = parse_offer(&build_offer(&p)).unwrap();
        assert_eq!(o.media[0].ssrcs, vec![5]);
        assert_eq!(o.media[1].ssrcs, vec![6]);
        assert_eq!(o.fingerprint, fp);
        assert!(o.media[1].simulcast.is_empty());
        // Layers, lowest first, read back as the relay reads Chromium's.
        let o = parse_offer(&build_offer_with_layers(&p, &[6, 7, 8])).unwrap();
        assert_eq!(o.media[1].ssrcs, vec![6, 7, 8]);
        assert_eq!(o.media[1].simulcast, vec![6, 7, 8]);
        assert_eq!(o.media[0].simulcast, Vec::<u32>::new());
        let o = parse_offer(&build_offer_with_layers(&p, &[6])).unwrap();
        assert_eq!(o.media[1].ssrcs, vec![6]);
    }

    #[test]
    fn rejects_bad_offers() {
        assert!(parse_offer("garbage").is_err());
        let no_fp: String = CHROME_OFFER
            .lines()
            .filter(|l| !l.starts_with("a=fingerprint"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        assert_eq!(parse_offer(&no_fp), Err(SdpError::Missing("a=fingerprint")));
        let passive = CHROME_OFFER.replace("a=setup:actpass", "a=setup:passive");
        assert!(matches!(parse_offer(&passive), Err(SdpError::Invalid(_))));
    }

    /// Chromium 156's video m-line as it offers it here (payload types and fmtp verbatim).
    fn chromium_video_offer(formats: &str) -> String {
        let mut attrs = String::new();
        for (pt, enc, fmtp) in [
            ("96", "VP8/90000", ""),
            ("97", "rtx/90000", "apt=96"),
            (
                "102",
                "H264/90000",
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
            ),
            (
                "104",
                "H264/90000",
                "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f",
            ),
            (
                "114",
                "H264/90000",
                "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f",
            ),
            (
                "108",
                "H264/90000",
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            ),
            (
                "116",
                "H264/90000",
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f",
            ),
            ("45", "AV1/90000", "level-idx=5;profile=0;tier=0"),
            ("100", "VP9/90000", "profile-id=2"),
            ("98", "VP9/90000", "profile-id=0"),
            ("118", "red/90000", ""),
            ("120", "ulpfec/90000", ""),
        ] {
            attrs.push_str(&format!("a=rtpmap:{pt} {enc}\r\n"));
            if !fmtp.is_empty() {
                attrs.push_str(&format!("a=fmtp:{pt} {fmtp}\r\n"));
            }
        }
        let video = CHROME_OFFER.find("m=video").unwrap();
        let rtpmap = CHROME_OFFER.find("a=rtpmap:96").unwrap();
        let ssrcs = CHROME_OFFER.find("a=ssrc-group").unwrap();
        format!(
            "{}m=video 9 UDP/TLS/RTP/SAVPF {formats}\r\n{}{attrs}{}",
            &CHROME_OFFER[..video],
            &CHROME_OFFER[CHROME_OFFER[video..].find("\r\n").unwrap() + video + 2..rtpmap],
            &CHROME_OFFER[ssrcs..]
        )
    }

    #[test]
    fn numbering_takes_the_one_profile_of_each_codec() {
        let text = chromium_video_offer("96 97 102 104 114 108 116 45 100 98 118 120");
        let o = parse_offer(&text).unwrap();
        let n = Numbering::from_offer(&o);
        assert_eq!(n.pt_of(Codec::Vp8), Some(96));
        // Constrained baseline, packetization-mode 1: not 102 (baseline), 114 (mode 0)
        // or 116 (main).
        assert_eq!(n.pt_of(Codec::H264), Some(108));
        assert_eq!(n.pt_of(Codec::Av1), Some(45));
        // VP9 profile 0, not profile 2 (10-bit) listed first.
        assert_eq!(n.pt_of(Codec::Vp9), Some(98));
        assert_eq!(
            n.fmtp[Codec::H264.index()].as_deref(),
            Some("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f")
        );
        let order: Vec<Codec> = n.codecs_for_kind("video").iter().map(|(c, _)| *c).collect();
        assert_eq!(order, [Codec::Vp8, Codec::H264, Codec::Av1, Codec::Vp9]);
        // An offer that prefers H264 (setCodecPreferences) is answered H264 first, so
        // the client sends H264; RTX, RED and ULPFEC are left out.
        let text = chromium_video_offer("108 109 96 97 98 45 118 120");
        let o = parse_offer(&text).unwrap();
        let n = Numbering::from_offer(&o);
        let answer = write_relay_description(&o, &n, &[], &relay(0), false);
        assert!(
            answer.contains("m=video 7402 UDP/TLS/RTP/SAVPF 108 96 97 98 45\r\n"),
            "VP8's RTX follows VP8: {answer}"
        );
        assert!(answer.contains(
            "a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
        ));
        for present in ["a=rtpmap:97 rtx/90000\r\n", "a=fmtp:97 apt=96\r\n"] {
            assert!(answer.contains(present), "{present} missing in {answer}");
        }
        for absent in ["red/", "ulpfec", "a=rtpmap:100 ", "apt=108"] {
            assert!(!answer.contains(absent), "{absent} in {answer}");
        }
    }

    /// An FID group counts only when both SSRCs are the line's own (`a=ssrc`): a named RTX
    /// SSRC the line does not announce could be another participant's.
    #[test]
    fn an_fid_group_names_only_the_lines_own_ssrcs() {
        let o = parse_offer(CHROME_OFFER).unwrap();
        assert_eq!(o.media[1].repairs, vec![(2001, 2002)]);
        let foreign = CHROME_OFFER.replace("a=ssrc:2002 cname:abc\r\n", "");
        let o = parse_offer(&foreign).unwrap();
        assert!(o.media[1].repairs.is_empty());
        assert_eq!(o.sent_tracks()[1].rtx, None);
        let twice = CHROME_OFFER.replace(
            "a=ssrc-group:FID 2001 2002\r\n",
            "a=ssrc-group:FID 2001 2002\r\na=ssrc-group:FID 2001 2001\r\n",
        );
        assert_eq!(
            parse_offer(&twice).unwrap().media[1].repairs,
            vec![(2001, 2002)]
        );
    }

    /// An `a=ssrc-group:SIM` of two or three of the line's own SSRCs makes its track
    /// simulcast, lowest layer first, each layer with its FID partner; the track is known
    /// by its lowest layer. A group naming a foreign SSRC, an RTX SSRC, one SSRC twice, or
    /// more than three layers is ignored.
    #[test]
    fn a_sim_group_of_the_lines_own_ssrcs_makes_simulcast_layers() {
        let layers = "a=ssrc-group:SIM 2003 2001 2005\r\na=ssrc-group:FID 2003 2004\r\n\
            a=ssrc-group:FID 2005 2006\r\na=ssrc:2003 cname:abc\r\na=ssrc:2004 cname:abc\r\n\
            a=ssrc:2005 cname:abc\r\na=ssrc:2006 cname:abc\r\n";
        let sim = CHROME_OFFER.replace(
            "a=ssrc-group:FID 2001 2002\r\n",
            &format!("a=ssrc-group:FID 2001 2002\r\n{layers}"),
        );
        let o = parse_offer(&sim).unwrap();
        assert_eq!(o.media[1].simulcast, [2003, 2001, 2005]);
        let t = o.sent_tracks()[1];
        assert_eq!(
            (t.ssrc, t.rtx),
            (2003, Some(2004)),
            "known by its lowest layer"
        );
        assert_eq!(t.layers.ssrcs(), [2003, 2001, 2005]);
        assert_eq!(t.layers.rtx, [Some(2004), Some(2002), Some(2006)]);
        assert_eq!(o.sent_tracks()[0].layers, Layers::NONE, "audio");
        for bad in [
            "SIM 2003 2001 7777",
            "SIM 2003 2004",
            "SIM 2003 2003 2001",
            "SIM 2003",
            "SIM 2003 2001 2005 2006",
        ] {
            let o = parse_offer(&sim.replace("SIM 2003 2001 2005", bad)).unwrap();
            assert!(o.media[1].simulcast.is_empty(), "{bad}");
            assert_eq!(o.sent_tracks()[1].layers.count, 0, "{bad}");
            assert_eq!(
                o.sent_tracks()[1].ssrc,
                2003,
                "{bad}: the line's first SSRC"
            );
        }
    }

    /// A participant that offers RTX gets NACK and RTX on its own line (so it answers
    /// the relay's NACKs on its RTX stream) and, on each remote video track with an RTX
    /// SSRC, the RTX type and an FID group announcing that SSRC; one that offers no RTX
    /// gets NACK alone.
    #[test]
    fn rtx_and_nack_are_negotiated_where_offered() {
        let o = parse_offer(&chromium_video_offer("96 97 98")).unwrap();
        let n = Numbering::from_offer(&o);
        assert_eq!(n.rtx[Codec::Vp8.index()], Some(97));
        assert_eq!(n.rtx[Codec::Vp9.index()], None, "98 has no RTX here");
        let remote = |rtx| {
            [RemoteTrack {
                mid: "r0".into(),
                kind: "video",
                stream: "p-b".into(),
                ssrc: 9,
                rtx,
                active: true,
            }]
        };
        let text = write_relay_description(&o, &n, &remote(Some(10)), &relay(1), true);
        assert_eq!(
            text.matches("m=video 7402 UDP/TLS/RTP/SAVPF 96 97 98\r\n")
                .count(),
            2,
            "{text}"
        );
        for line in [
            "a=rtcp-fb:96 nack\r\n",
            "a=rtcp-fb:98 nack\r\n",
            "a=rtpmap:97 rtx/90000\r\n",
            "a=fmtp:97 apt=96\r\n",
            "a=ssrc-group:FID 9 10\r\n",
            "a=ssrc:10 cname:p-b\r\n",
            "a=ssrc:10 msid:p-b p-b-video\r\n",
        ] {
            assert!(text.contains(line), "{line} missing in {text}");
        }
        // A track whose sender has no RTX stream: no RTX type or group on its line.
        let text = write_relay_description(&o, &n, &remote(None), &relay(1), true);
        assert_eq!(
            text.matches("rtx/90000").count(),
            1,
            "own line only: {text}"
        );
        assert!(!text.contains("ssrc-group"), "{text}");
        // A receiver that offered no RTX: NACK only.
        let plain = parse_offer(&chromium_video_offer("96 98")).unwrap();
        let pn = Numbering::from_offer(&plain);
        let text = write_relay_description(&plain, &pn, &remote(Some(10)), &relay(1), true);
        assert!(text.contains("a=rtcp-fb:96 nack\r\n"), "{text}");
        for absent in ["rtx", "ssrc-group", "a=ssrc:10 "] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
    }

    #[test]
    fn a_call_carries_the_optional_codecs_only_while_everyone_has_them() {
        let chrome =
            Numbering::from_offer(&parse_offer(&chromium_video_offer("96 108 45 98")).unwrap());
        let vp8_only = Numbering::from_offer(&parse_offer(CHROME_OFFER).unwrap());
        let all = call_codecs([&chrome, &chrome]);
        assert_eq!(all, Codec::EVERY);
        let narrowed = call_codecs([&chrome, &vp8_only]);
        assert_eq!(narrowed, [true, true, false, false, false]);
        // Written to the Chromium participant while a VP8-only one is in the call: its
        // own line and a remote track list VP8 alone.
        let o = parse_offer(&chromium_video_offer("108 96 45 98")).unwrap();
        let n = Numbering::from_offer(&o).restricted(&narrowed);
        let remote = [RemoteTrack {
            mid: "r0".into(),
            kind: "video",
            stream: "p-b".into(),
            ssrc: 9,
            rtx: None,
            active: true,
        }];
        let text = write_relay_description(&o, &n, &remote, &relay(1), true);
        assert_eq!(
            text.matches("m=video 7402 UDP/TLS/RTP/SAVPF 96\r\n")
                .count(),
            2,
            "{text}"
        );
        assert!(!text.contains("H264") && !text.contains("VP9") && !text.contains("AV1"));
        // Everyone has them: the remote track offers every shared codec, in the
        // receiver's order.
        let n = Numbering::from_offer(&o).restricted(&all);
        let text = write_relay_description(&o, &n, &remote, &relay(1), true);
        assert_eq!(
            text.matches("m=video 7402 UDP/TLS/RTP/SAVPF 108 96 45 98\r\n")
                .count(),
            2,
            "{text}"
        );
    }
}
