#![no_main]
//! RTP over QUIC (node links): split a datagram into its flow id and packet, as a node's
//! link loop does with every datagram a peer node sends.

use blindrelay_protocol::roq;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((flow, packet)) = roq::split(data) {
        // The packet is the datagram's tail after a minimal or longer varint, never empty,
        // and the flow id fits a varint.
        assert!(!packet.is_empty());
        assert!(flow <= roq::MAX_FLOW_ID);
        let prefix = data.len() - packet.len();
        assert!(matches!(prefix, 1 | 2 | 4 | 8));
        assert!(prefix >= roq::varint_len(flow));
        // Written back minimally, it reads back the same.
        let mut out = [0u8; roq::MAX_PREFIX];
        let n = roq::write_flow(flow, &mut out).expect("a parsed flow id is in range");
        assert_eq!(roq::read_varint(&out[..n]), Ok((flow, n)));
    }
});
