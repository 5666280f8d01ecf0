#![no_main]
//! RFC 7983 demultiplexing, and what the receive loop does next with each kind: classify
//! the datagram, then parse it as that protocol.

use blindrelay_protocol::demux::{classify, PacketKind};
use blindrelay_protocol::rtcp;
use blindrelay_protocol::rtp::RtpHeader;
use blindrelay_protocol::stun::StunMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let kind = classify(data);
    let _ = kind.as_str();
    match kind {
        PacketKind::Stun => {
            assert!(data[0] <= 3);
            let _ = StunMessage::parse(data);
        }
        PacketKind::Dtls => assert!((20..=63).contains(&data[0])),
        PacketKind::Rtp => {
            assert!(data.len() >= 2 && data[0] >> 6 == 2);
            let _ = RtpHeader::parse(data);
        }
        PacketKind::Rtcp => {
            assert!(data.len() >= 2 && (192..=223).contains(&data[1]));
            let _ = rtcp::first_sender_ssrc(data);
            for p in rtcp::packets(data) {
                if p.is_err() {
                    break;
                }
            }
        }
        PacketKind::Unknown => {}
    }
});
