#![no_main]
//! SFrame (RFC 9605): the header (minimal encodings only, so decoding and re-encoding give
//! the same bytes), opening a frame with fixed keys (stateless and through a `Receiver`
//! with a ratcheting key), and a seal/open round trip of the input as plaintext.

use e2ee_client::sframe::{self, CipherSuite, Header, RatchetParams, Receiver};
use libfuzzer_sys::fuzz_target;

const BASE_KEY: &[u8] = b"fuzz base key 16";
const METADATA: &[u8] = b"fuzz metadata";

fuzz_target!(|data: &[u8]| {
    if let Ok((h, n)) = Header::decode(data) {
        assert_eq!(h.encode().as_bytes(), &data[..n]);
    }
    let [sel, frame @ ..] = data else {
        return;
    };
    let suite = CipherSuite::ALL[usize::from(*sel) % CipherSuite::ALL.len()];
    // A frame from the network: stateless open, then a receiver with plain and ratcheting
    // keys (KIDs 0..4; ratchet with 4 step bits from KID 16).
    if let Ok((kid, ctr, plain)) = sframe::decrypt(suite, BASE_KEY, METADATA, frame) {
        let _ = (kid, ctr, plain.len());
    }
    let mut rx = Receiver::new();
    for kid in 0..4 {
        rx.add_key(suite, kid, BASE_KEY);
    }
    if let Ok(params) = RatchetParams::new(4) {
        rx.add_ratcheting_key(suite, params, 16, BASE_KEY);
    }
    let mut buf = frame.to_vec();
    let _ = rx.open_in_place(METADATA, &mut buf);
    let _ = rx.open(METADATA, frame);
    // Round trip: the input sealed under a KID and CTR it chooses opens to itself.
    if sel & 1 == 1 && frame.len() >= 2 {
        let (kid, ctr) = (u64::from(frame[0]), u64::from(frame[1]) << (sel % 48));
        let sealed = sframe::encrypt(suite, BASE_KEY, kid, ctr, METADATA, frame)
            .expect("sealing a frame of a fuzz input's size");
        let (k, c, opened) =
            sframe::decrypt(suite, BASE_KEY, METADATA, &sealed).expect("own frame opens");
        assert_eq!((k, c, opened.as_slice()), (kid, ctr, frame));
    }
});
