#![no_main]
//! RTP header view (RFC 3550, RFC 8285 extensions): parse, take the payload, look up every
//! extension id; a parsed header's lengths stay inside the packet and its fields survive a
//! rewrite as a minimal header.

use blindrelay_protocol::rtp::{find_extension, RtpHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for id in 0..=15 {
        if let Some(v) = find_extension(data, id) {
            assert!(v.len() <= data.len());
        }
    }
    let Ok(h) = RtpHeader::parse(data) else {
        return;
    };
    assert!(h.header_len >= 12 && h.header_len + h.padding_len <= data.len());
    let payload = h.payload(data);
    assert_eq!(payload.len(), data.len() - h.header_len - h.padding_len);
    let mut out = Vec::new();
    h.write_minimal(&mut out);
    out.extend_from_slice(payload);
    let again = RtpHeader::parse(&out).expect("a minimal header parses");
    assert_eq!(
        (
            again.marker,
            again.payload_type,
            again.sequence,
            again.timestamp,
            again.ssrc
        ),
        (h.marker, h.payload_type, h.sequence, h.timestamp, h.ssrc)
    );
    assert_eq!(again.payload(&out), payload);
});
