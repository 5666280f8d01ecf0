#![no_main]
//! The capture audit (`e2ee-client audit`) on any bytes: pcap or pcapng through pcap-file,
//! Ethernet/IP/UDP through etherparse, RTP reassembly per SSRC. A report's counts must be
//! consistent whatever the file held.

use e2ee_client::audit::audit_reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = audit_reader(data, Some(b"CANARY")) else {
        return;
    };
    assert!(r.rtp_packets <= r.records);
    assert_eq!(
        r.streams.iter().map(|s| s.packets).sum::<u64>(),
        r.rtp_packets
    );
    for s in &r.streams {
        assert!(s.sframe_frames <= s.frames && s.plaintext_magic_frames <= s.frames);
        assert!(s.canary_packets <= s.packets);
        assert!((0.0..=8.0 + 1e-9).contains(&s.entropy_bits_per_byte));
    }
    assert_eq!(r.blind, r.reasons.is_empty());
    let _ = r.table();
});
