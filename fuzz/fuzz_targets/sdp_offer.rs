#![no_main]
//! SDP offers (the browser subset, through webrtc-rs's `sdp` parser): parse, read the
//! offerer's codec numbering and the tracks it sends, as the relay does at join.

use blindrelay_protocol::sdp::{parse_offer, Codec, Numbering};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Offers arrive in a JSON string: always UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(offer) = parse_offer(text) else {
        return;
    };
    let n = Numbering::from_offer(&offer);
    for c in Codec::ALL {
        if let Some(pt) = n.pt_of(c) {
            assert!(pt <= 127);
            assert!(n.codec_of(pt).is_some());
        }
    }
    for pt in 0..=127u8 {
        let _ = n.codec_of(pt);
    }
    for kind in ["audio", "video"] {
        for (c, pt) in n.codecs_for_kind(kind) {
            assert_eq!(c.kind(), kind);
            assert_eq!(n.pt_of(c), Some(pt));
        }
    }
    // What the relay writes while a call lacks some optional codec keeps only that set.
    let set = blindrelay_protocol::sdp::call_codecs([&n]);
    let r = n.restricted(&set);
    for c in Codec::ALL {
        assert!(r.pt_of(c).is_none() || set[c.index()]);
    }
    if let Some(id) = n.twcc {
        assert!((1..=14).contains(&id));
    }
    let _ = offer.sent_tracks();
});
