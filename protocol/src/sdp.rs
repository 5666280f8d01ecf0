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

/// The relay's side of the answer.
#[derive(Debug, Clone)]
pub struct AnswerParams<'a> {
    pub ice_ufrag: &'a str,
    pub ice_pwd: &'a str,
    pub fingerprint: &'a Fingerprint,
    /// The relay's shared media address: its only (host) candidate.
    pub media_addr: SocketAddr,
    pub session_id: u64,
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

/// Write the relay's answer: ICE-lite, one host candidate on the shared media port,
/// DTLS server (a=setup:passive), the offered m-lines and codecs accepted as they are.
pub fn build_answer(offer: &Offer, p: &AnswerParams<'_>) -> String {
    let mut s = session(p.session_id, p.media_addr);
    let mids: Vec<&str> = offer.media.iter().map(|m| m.mid.as_str()).collect();
    s.attributes.push(Attribute {
        key: "group".into(),
        value: Some(format!("BUNDLE {}", mids.join(" "))),
    });
    s.attributes.push(Attribute {
        key: "ice-lite".into(),
        value: None,
    });
    s.attributes.push(Attribute {
        key: "msid-semantic".into(),
        value: Some(" WMS *".into()),
    });
    for (i, m) in offer.media.iter().enumerate() {
        let mut md = media_description(
            &m.kind,
            p.media_addr.port(),
            m.formats.clone(),
            Some(p.media_addr),
        );
        push(&mut md, "mid", Some(m.mid.clone()));
        push(&mut md, "ice-ufrag", Some(p.ice_ufrag.to_string()));
        push(&mut md, "ice-pwd", Some(p.ice_pwd.to_string()));
        push(&mut md, "fingerprint", Some(p.fingerprint.to_sdp_value()));
        push(&mut md, "setup", Some("passive".into()));
        push(&mut md, "rtcp-mux", None);
        let dir = match m.direction.as_str() {
            "sendonly" => "recvonly",
            "recvonly" => "sendonly",
            "inactive" => "inactive",
            _ => "sendrecv",
        };
        push(&mut md, dir, None);
        for (k, v) in &m.codec_attributes {
            push(&mut md, k, Some(v.clone()));
        }
        if i == 0 {
            let ip = p.media_addr.ip();
            let port = p.media_addr.port();
            push(
                &mut md,
                "candidate",
                Some(format!("1 1 udp 2130706431 {ip} {port} typ host")),
            );
            push(&mut md, "end-of-candidates", None);
        }
        s.media_descriptions.push(md);
    }
    s.marshal()
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
        push(&mut md, "ssrc", Some(format!("{ssrc} cname:{}", p.cname)));
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

    #[test]
    fn answer_is_ice_lite_with_host_candidate() {
        let o = parse_offer(CHROME_OFFER).unwrap();
        let fp = Fingerprint { sha256: [0xab; 32] };
        let a = build_answer(
            &o,
            &AnswerParams {
                ice_ufrag: "relayufrag",
                ice_pwd: "relaypasswordrelaypassword",
                fingerprint: &fp,
                media_addr: "127.0.0.1:7402".parse().unwrap(),
                session_id: 1,
            },
        );
        let info = parse_answer(&a).unwrap();
        assert!(info.ice_lite);
        assert_eq!(info.candidate, "127.0.0.1:7402".parse().unwrap());
        assert_eq!(info.fingerprint, fp);
        assert!(a.contains("a=setup:passive"));
        assert!(a.contains("a=group:BUNDLE 0 1"));
    }

    #[test]
    fn client_offer_round_trips() {
        let fp = Fingerprint { sha256: [1; 32] };
        let text = build_offer(&OfferParams {
            ice_ufrag: "abcd",
            ice_pwd: "0123456789012345678901",
            fingerprint: &fp,
            audio_ssrc: 5,
            video_ssrc: 6,
            cname: "c",
            session_id: 3,
        });
        let o = parse_offer(&text).unwrap();
        assert_eq!(o.media[0].ssrcs, vec![5]);
        assert_eq!(o.media[1].ssrcs, vec![6]);
        assert_eq!(o.fingerprint, fp);
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
}
