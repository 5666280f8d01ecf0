#![no_main]
//! RTCP compound packets (RFC 3550 §6, RFC 4585): walk every packet checking its length,
//! route each as the forwarding loop does, and split receiver reports into blocks.

use blindrelay_protocol::rtcp::{self, RtcpRoute};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rtcp::first_sender_ssrc(data);
    let mut walked = 0;
    for p in rtcp::packets(data) {
        let Ok(p) = p else {
            break;
        };
        assert!(p.bytes.len() >= 4 && p.bytes.len() % 4 == 0);
        walked += p.bytes.len();
        match p.route() {
            RtcpRoute::ReportBlocks => {
                for (ssrc, block) in rtcp::report_blocks(&p) {
                    assert_eq!(block.len(), 24);
                    let _ = rtcp::rr_header(ssrc);
                }
            }
            RtcpRoute::MediaSender(ssrc) => assert_ne!(ssrc, 0),
            RtcpRoute::Others | RtcpRoute::Terminate => {}
        }
    }
    assert!(walked <= data.len());
});
