//! Seed corpus for the fuzz targets: a few well-formed inputs per target (and some
//! near-misses), built with the project's own writers so they reach deep code at once.

use blindrelay_protocol::rtp::RtpHeader;
use blindrelay_protocol::sdp::{
    self, answer_relay_offer, build_offer, parse_offer, Fingerprint, Numbering, OfferParams,
    RelayMedia, RemoteTrack,
};
use blindrelay_protocol::signal::ClientMessage;
use blindrelay_protocol::stun::{StunWriter, BINDING_REQUEST};
use blindrelay_transport::fast_srtp::FastSrtpContext;
use e2ee_client::sframe::{self, CipherSuite, Header};
use std::path::{Path, PathBuf};

/// Must match the targets' constants.
const STUN_PASSWORD: &[u8] = b"fuzzpasswordfuzzpassword";
const SRTP_KEY: [u8; 16] = *b"fuzz-master-key!";
const SRTP_SALT: [u8; 12] = *b"fuzz-salt-12";
const SFRAME_KEY: &[u8] = b"fuzz base key 16";
const SFRAME_METADATA: &[u8] = b"fuzz metadata";

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create corpus directory");
    dir
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(corpus(target).join(name), bytes).expect("write seed");
}

fn fingerprint() -> Fingerprint {
    let hex: Vec<String> = (0u8..32).map(|b| format!("{:02X}", b * 7)).collect();
    Fingerprint::parse(&format!("sha-256 {}", hex.join(":"))).expect("a valid fingerprint")
}

fn rtp(marker: bool, pt: u8, seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    RtpHeader {
        marker,
        payload_type: pt,
        sequence: seq,
        timestamp: u32::from(seq) * 3000,
        ssrc,
        header_len: 12,
        padding_len: 0,
    }
    .write_minimal(&mut p);
    p.extend_from_slice(payload);
    p
}

/// RTP with CSRCs, a one-byte (0xBEDE) or two-byte (0x1000) header extension and padding.
fn rtp_with_extensions(two_byte: bool) -> Vec<u8> {
    let mut p = rtp(true, 96, 7, 0x1234_5678, b"");
    p[0] |= 0x10 | 0x20 | 2; // X, P, two CSRCs
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
    if two_byte {
        p.extend_from_slice(&[0x10, 0x00, 0, 2, 3, 2, 0xab, 0xcd, 5, 1, 0x01, 0]);
    } else {
        // id 3 (transport-cc, 2 bytes), id 1 (1 byte), padding.
        p.extend_from_slice(&[0xbe, 0xde, 0, 2, 0x31, 0x00, 0x2a, 0x10, 0x07, 0, 0, 0]);
    }
    p.extend_from_slice(b"payload!");
    p.extend_from_slice(&[0, 0, 3]);
    p
}

fn rtcp_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let sender = 0x1111_1111u32.to_be_bytes();
    let media = 0x2222_2222u32.to_be_bytes();
    let mut sr = vec![0x80, 200, 0, 6];
    sr.extend_from_slice(&sender);
    sr.extend_from_slice(&[0; 20]);
    let mut sdes = vec![0x81, 202, 0, 3];
    sdes.extend_from_slice(&sender);
    sdes.extend_from_slice(&[1, 4, b'c', b'n', b'a', b'm', 0, 0]);
    let mut rr2 = vec![0x82, 201, 0, 13];
    rr2.extend_from_slice(&sender);
    for m in [media, 0x3333_3333u32.to_be_bytes()] {
        rr2.extend_from_slice(&m);
        rr2.extend_from_slice(&[0; 20]);
    }
    let mut nack = vec![0x81, 205, 0, 3];
    nack.extend_from_slice(&sender);
    nack.extend_from_slice(&media);
    nack.extend_from_slice(&[0, 10, 0, 3]);
    let mut fir = vec![0x84, 206, 0, 4];
    fir.extend_from_slice(&sender);
    fir.extend_from_slice(&[0; 4]);
    fir.extend_from_slice(&media);
    fir.extend_from_slice(&[1, 0, 0, 0]);
    let mut twcc = vec![0x8f, 205, 0, 4];
    twcc.extend_from_slice(&sender);
    twcc.extend_from_slice(&media);
    twcc.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0]);
    let mut remb = vec![0x8f, 206, 0, 5];
    remb.extend_from_slice(&sender);
    remb.extend_from_slice(&[0; 4]);
    remb.extend_from_slice(b"REMB");
    remb.extend_from_slice(&[1, 0x0a, 0, 0]);
    remb.extend_from_slice(&media);
    let mut bye = vec![0x81, 203, 0, 1];
    bye.extend_from_slice(&sender);
    let pli = blindrelay_protocol::rtcp::pli(0x1111_1111, 0x2222_2222).to_vec();
    let rr =
        blindrelay_protocol::rtcp::receiver_report(0x1111_1111, 0x2222_2222, 3, 9, 70_000).to_vec();
    vec![
        ("sr-sdes", [sr.clone(), sdes.clone()].concat()),
        ("rr-two-blocks", rr2),
        ("rr-pli", [rr.clone(), pli.clone()].concat()),
        ("nack", nack),
        ("fir", fir),
        ("transport-cc", twcc),
        ("remb", remb),
        ("sr-bye", [sr, bye].concat()),
        ("rr-empty", vec![0x80, 201, 0, 1, 1, 2, 3, 4]),
        ("truncated", vec![0x81, 201, 0, 7, 1, 2, 3, 4]),
    ]
}

fn stun_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let tid = *b"fuzz-txn-id!";
    let request = StunWriter::new(BINDING_REQUEST, &tid)
        .username("relayufrag:clientufrag")
        .priority(0x6e7f_1eff)
        .ice_controlling(0x0102_0304_0506_0708)
        .use_candidate()
        .integrity(STUN_PASSWORD)
        .finish_with_fingerprint();
    let controlled = StunWriter::new(BINDING_REQUEST, &tid)
        .username("relayufrag:clientufrag")
        .ice_controlled(9)
        .integrity(STUN_PASSWORD)
        .finish_with_fingerprint();
    let v4 = StunWriter::new(0x0101, &tid)
        .xor_mapped_address("192.0.2.1:40000".parse().expect("literal"))
        .integrity(STUN_PASSWORD)
        .finish_with_fingerprint();
    let v6 = StunWriter::new(0x0101, &tid)
        .xor_mapped_address("[2001:db8::1]:40000".parse().expect("literal"))
        .finish_with_fingerprint();
    let error = StunWriter::new(0x0111, &tid)
        .error_code(401, "Unauthorized")
        .finish_with_fingerprint();
    let indication = StunWriter::new(0x0011, &tid).finish_with_fingerprint();
    vec![
        ("binding-request", request),
        ("binding-request-controlled", controlled),
        ("success-v4", v4),
        ("success-v6", v6),
        ("error-401", error),
        ("indication", indication),
    ]
}

fn offer_text(n: u32) -> String {
    build_offer(&OfferParams {
        ice_ufrag: "fuzzufrag",
        ice_pwd: "fuzzpasswordfuzzpassword",
        fingerprint: &fingerprint(),
        audio_ssrc: 2 * n + 1,
        video_ssrc: 2 * n + 2,
        cname: "fuzzcname",
        session_id: u64::from(n) + 1,
    })
}

/// A Chrome-like offer: more codecs, RTX with an ssrc-group, extensions, msid.
const CHROME_OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS stream\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Zm9v\r\n\
a=ice-pwd:YmFyYmFyYmFyYmFyYmFyYmFyYmFy\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 00:07:0E:15:1C:23:2A:31:38:3F:46:4D:54:5B:62:69:70:77:7E:85:8C:93:9A:A1:A8:AF:B6:BD:C4:CB:D2:D9\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=sendrecv\r\n\
a=msid:stream audio\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\n\
a=fmtp:63 111/111\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
a=rtpmap:126 telephone-event/8000\r\n\
a=ssrc:1001 cname:fuzz\r\n\
a=ssrc:1001 msid:stream audio\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Zm9v\r\n\
a=ice-pwd:YmFyYmFyYmFyYmFyYmFyYmFyYmFy\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 00:07:0E:15:1C:23:2A:31:38:3F:46:4D:54:5B:62:69:70:77:7E:85:8C:93:9A:A1:A8:AF:B6:BD:C4:CB:D2:D9\r\n\
a=setup:actpass\r\n\
a=mid:1\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:14 urn:ietf:params:rtp-hdrext:toffset\r\n\
a=sendrecv\r\n\
a=msid:stream video\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 goog-remb\r\n\
a=rtcp-fb:96 transport-cc\r\n\
a=rtcp-fb:96 ccm fir\r\n\
a=rtcp-fb:96 nack\r\n\
a=rtcp-fb:96 nack pli\r\n\
a=rtpmap:97 rtx/90000\r\n\
a=fmtp:97 apt=96\r\n\
a=rtpmap:98 VP9/90000\r\n\
a=fmtp:98 profile-id=0\r\n\
a=rtpmap:99 rtx/90000\r\n\
a=fmtp:99 apt=98\r\n\
a=ssrc-group:FID 2001 2002\r\n\
a=ssrc:2001 cname:fuzz\r\n\
a=ssrc:2001 msid:stream video\r\n\
a=ssrc:2002 cname:fuzz\r\n\
a=ssrc:2002 msid:stream video\r\n";

fn sdp_seeds() {
    let offer = offer_text(1);
    write("sdp_offer", "build-offer", offer.as_bytes());
    write("sdp_offer", "chrome-offer", CHROME_OFFER.as_bytes());
    write(
        "sdp_offer",
        "recvonly-no-ssrc",
        CHROME_OFFER
            .replace("a=sendrecv", "a=recvonly")
            .lines()
            .filter(|l| !l.starts_with("a=ssrc"))
            .map(|l| format!("{l}\r\n"))
            .collect::<String>()
            .as_bytes(),
    );
    // The relay's answer to a join and its re-offer with remote tracks, written by the
    // relay's own writer, and a client's answer to that re-offer.
    let own = parse_offer(CHROME_OFFER).expect("the Chrome offer parses");
    let numbering = Numbering::from_offer(&own);
    let remote = [
        RemoteTrack {
            mid: "2".into(),
            kind: "audio",
            stream: "p-2".into(),
            ssrc: 3001,
            rtx: None,
            active: true,
        },
        RemoteTrack {
            mid: "3".into(),
            kind: "video",
            stream: "p-2".into(),
            ssrc: 3002,
            rtx: None,
            active: false,
        },
    ];
    let fp = fingerprint();
    let media = RelayMedia {
        ice_ufrag: "relayufrag",
        ice_pwd: "relaypasswordrelaypassword",
        fingerprint: &fp,
        media_addr: "127.0.0.1:7402".parse().expect("literal"),
        session_id: 42,
        version: 1,
    };
    let answer = sdp::write_relay_description(&own, &numbering, &[], &media, false);
    let reoffer = sdp::write_relay_description(&own, &numbering, &remote, &media, true);
    let client_answer = answer_relay_offer(&reoffer, "Zm9v", "YmFyYmFyYmFyYmFyYmFyYmFy", &fp)
        .expect("the client answers the relay's offer");
    write("sdp_answer", "relay-answer", answer.as_bytes());
    write("sdp_answer", "relay-reoffer", reoffer.as_bytes());
    write("sdp_answer", "client-answer", client_answer.as_bytes());
    write("sdp_offer", "relay-reoffer", reoffer.as_bytes());
}

fn signal_seeds() {
    let offer = offer_text(2);
    let messages = [
        (
            "hello",
            ClientMessage::Hello {
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln".into(),
            },
        ),
        (
            "join",
            ClientMessage::Join {
                call: "demo".into(),
                e2ee_enabled: true,
                offer_sdp: offer,
                e2ee_scheme: blindrelay_protocol::signal::E2eeScheme::X25519,
            },
        ),
        (
            "e2ee",
            ClientMessage::E2ee {
                to: "p-1".into(),
                blob: "AAECAwQ=".into(),
            },
        ),
        (
            "feature",
            ClientMessage::Feature {
                name: "transfer".into(),
                arg: Some("bob@contoso".into()),
            },
        ),
        (
            "chat",
            ClientMessage::Chat {
                body: "hi \u{e9}".into(),
            },
        ),
        ("leave", ClientMessage::Leave),
        (
            "answer",
            ClientMessage::Answer {
                sdp: "v=0\r\n".into(),
                revision: 3,
            },
        ),
    ];
    for (name, m) in messages {
        let text = serde_json::to_string(&m).expect("a message serializes");
        write("signal", name, text.as_bytes());
    }
    write("signal", "unknown-type", br#"{"type":"dance","tempo":120}"#);
    write("signal", "no-type", br#"{"token":"x"}"#);
    write("signal", "wrong-field-type", br#"{"type":"join","call":7}"#);
}

/// `[op][len][bytes]` records of the srtp_unprotect target.
fn record(op: u8, bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() <= 255);
    let mut r = vec![op, bytes.len() as u8];
    r.extend_from_slice(bytes);
    r
}

fn srtp_seeds() {
    let mut tx = FastSrtpContext::new(&SRTP_KEY, &SRTP_SALT).expect("fixed key");
    let clear = rtp(true, 111, 65_534, 0xcafe, b"opaque e2ee frame");
    let mut sealed = clear.clone();
    tx.protect_rtp(&mut sealed).expect("protect");
    let rr = blindrelay_protocol::rtcp::receiver_report(0xcafe, 0xbeef, 0, 0, 7).to_vec();
    let mut sealed_rtcp = rr.clone();
    tx.protect_rtcp(&mut sealed_rtcp).expect("protect");
    // Network datagrams protected with the targets' key: they authenticate.
    write("srtp_unprotect", "srtp", &record(0, &sealed));
    write("srtp_unprotect", "srtcp", &record(1, &sealed_rtcp));
    write(
        "srtp_unprotect",
        "srtp-replayed",
        &[record(0, &sealed), record(0, &sealed)].concat(),
    );
    // Round trips across a sequence-number rollover, RTCP, and a tampered packet.
    let run: Vec<u8> = [65_533u16, 65_535, 0, 1, 3]
        .iter()
        .flat_map(|s| record(2, &rtp(false, 96, *s, 0xcafe, b"frame part")))
        .chain(record(3, &rr))
        .chain(record(0x82, &rtp(true, 96, 4, 0xcafe, b"tampered")))
        .collect();
    write("srtp_unprotect", "rollover-rtcp-tamper", &run);
    write(
        "srtp_unprotect",
        "extensions",
        &record(2, &rtp_with_extensions(false)),
    );
}

fn sframe_seeds() {
    for (i, suite) in CipherSuite::ALL.into_iter().enumerate() {
        for (kid, ctr) in [(0u64, 0u64), (3, 1000), (17, 5), (300, 1 << 40)] {
            let frame = sframe::encrypt(
                suite,
                SFRAME_KEY,
                kid,
                ctr,
                SFRAME_METADATA,
                b"BRF1 a plaintext video frame",
            )
            .expect("seal");
            let mut seed = vec![(i * 2) as u8];
            seed.extend_from_slice(&frame);
            write("sframe", &format!("suite{i}-kid{kid}-ctr{ctr}"), &seed);
        }
    }
    // Header-only inputs, and a round-trip input (odd selector).
    for (kid, ctr) in [(7u64, 7u64), (8, 8), (u64::MAX, u64::MAX)] {
        write(
            "sframe",
            &format!("header-kid{kid}-ctr{ctr}"),
            Header::new(kid, ctr).encode().as_bytes(),
        );
    }
    write("sframe", "round-trip", b"\x03\x05\x09plaintext to seal");
}

/// RTP packets of a short SFrame-sealed stream with the canary in the plaintext.
fn capture_packets() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for n in 0..4u16 {
        let sealed = sframe::encrypt(
            CipherSuite::AesGcm128Sha256,
            SFRAME_KEY,
            1,
            u64::from(n),
            &[],
            b"BRF1 CANARY frame",
        )
        .expect("seal");
        let (a, b) = sealed.split_at(sealed.len() / 2);
        out.push(rtp(false, 96, 2 * n, 0xabcd, a));
        out.push(rtp(true, 96, 2 * n + 1, 0xabcd, b));
    }
    // A plaintext packet carrying the canary, and an RTCP one.
    out.push(rtp(true, 111, 1, 0x1234, b"BRF1 CANARY"));
    out.push(blindrelay_protocol::rtcp::pli(1, 2).to_vec());
    out
}

fn datagram(payload: &[u8], link: u32) -> Vec<u8> {
    use etherparse::PacketBuilder;
    let mut out = Vec::new();
    let built = match link {
        1 => PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5000, 7402)
            .write(&mut out, payload),
        113 => PacketBuilder::linux_sll(
            etherparse::LinuxSllPacketType::OUTGOING,
            6,
            [1, 2, 3, 4, 5, 6, 0, 0],
        )
        .ipv6([1; 16], [2; 16], 64)
        .udp(5000, 7402)
        .write(&mut out, payload),
        _ => PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5000, 7402)
            .write(&mut out, payload),
    };
    built.expect("build a datagram");
    out
}

fn audit_seeds() {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
    use pcap_file::pcapng::PcapNgWriter;
    use pcap_file::{DataLink, Endianness, TsResolution};
    use std::time::Duration;
    let packets = capture_packets();
    for (name, link, endianness) in [
        ("pcap-raw-le", 101u32, Endianness::Little),
        ("pcap-ethernet-be", 1, Endianness::Big),
        ("pcap-sll-ipv6", 113, Endianness::Little),
    ] {
        let header = PcapHeader {
            version_major: 2,
            version_minor: 4,
            ts_correction: 0,
            ts_accuracy: 0,
            snaplen: 65_535,
            datalink: DataLink::from(link),
            ts_resolution: TsResolution::MicroSecond,
            endianness,
        };
        let mut w = PcapWriter::with_header(Vec::new(), header).expect("pcap header");
        for (i, p) in packets.iter().enumerate() {
            let d = datagram(p, link);
            w.write_packet(&PcapPacket::new(
                Duration::from_millis(i as u64),
                d.len() as u32,
                &d,
            ))
            .expect("pcap record");
        }
        write("audit", name, &w.into_writer());
    }
    let mut w = PcapNgWriter::new(Vec::new()).expect("pcapng section");
    w.write_pcapng_block(InterfaceDescriptionBlock {
        linktype: DataLink::RAW,
        snaplen: 65_535,
        options: vec![],
    })
    .expect("interface");
    for (i, p) in packets.iter().enumerate() {
        let d = datagram(p, 101);
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_millis(i as u64),
            original_len: d.len() as u32,
            data: d.into(),
            options: vec![],
        })
        .expect("packet block");
    }
    write("audit", "pcapng-raw", &w.into_inner());
    // As the relay writes its capture: interface 0 for senders without a map, then one
    // interface per sender whose comment is its codec map.
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
    let mut w = PcapNgWriter::new(Vec::new()).expect("pcapng section");
    let comments = [
        "blindrelay: senders without a codec map".to_string(),
        format!(
            r#"{} {{"participant":"p-seed","pts":{{"111":"opus/48000/2","96":"VP8/90000"}}}}"#,
            e2ee_client::audit::CODECS_COMMENT_TAG
        ),
    ];
    for c in comments {
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::RAW,
            snaplen: 65_535,
            options: vec![
                InterfaceDescriptionOption::Comment(c.into()),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        })
        .expect("interface");
    }
    for (i, p) in packets.iter().enumerate() {
        let d = datagram(p, 101);
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 1,
            timestamp: Duration::from_millis(i as u64),
            original_len: d.len() as u32,
            data: d.into(),
            options: vec![],
        })
        .expect("packet block");
    }
    write("audit", "pcapng-described", &w.into_inner());
}

fn main() {
    for (name, seed) in stun_seeds() {
        write("stun", name, &seed);
        write("demux", &format!("stun-{name}"), &seed);
    }
    let rtp_seeds = [
        ("minimal", rtp(true, 111, 1, 0xdead_beef, b"frame")),
        ("one-byte-extension", rtp_with_extensions(false)),
        ("two-byte-extension", rtp_with_extensions(true)),
        ("header-only", rtp(false, 96, 65_535, 1, b"")),
    ];
    for (name, seed) in &rtp_seeds {
        write("rtp", name, seed);
        write("demux", &format!("rtp-{name}"), seed);
    }
    for (name, seed) in rtcp_seeds() {
        write("rtcp", name, &seed);
        write("demux", &format!("rtcp-{name}"), &seed);
    }
    write(
        "demux",
        "dtls-client-hello",
        &[
            22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    write("demux", "junk", &[0x47, 0x50, 0x41, 0x47]);
    sdp_seeds();
    signal_seeds();
    srtp_seeds();
    sframe_seeds();
    audit_seeds();
    plane_seeds();
    forward_seeds();
}

/// The forwarder's named scenarios (RTCP of every kind, a NACK storm, forgeries, a move
/// and leaves, ICE nominations moving addresses), as the bytes its actions are read from.
fn forward_seeds() {
    use blindrelay_core::forward_model::{scenario_bytes, scenarios};
    for (name, actions) in scenarios() {
        write("forward", name, &scenario_bytes(&actions));
    }
}

/// The control plane's named scenarios (a call of two with answers, an MLS group, park
/// and retrieve, a consultative transfer, a merge), as the bytes its actions are read from.
fn plane_seeds() {
    use blindrelay_core::plane_model::{scenario_bytes, scenarios};
    for (name, actions) in scenarios() {
        write("plane", name, &scenario_bytes(&actions));
    }
}
