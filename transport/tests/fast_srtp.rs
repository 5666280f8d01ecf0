//! Proves `fast_srtp::FastSrtpContext` against RFC 7714's vectors and, for both profiles
//! (AEAD_AES_128_GCM and AES128_CM_HMAC_SHA1_80), against webrtc-srtp,
//! checks replay/tamper/truncation handling, and counts heap allocations per packet.

use blindrelay_transport::fast_srtp::{
    FastSrtpContext, FastSrtpError, CM_TAG_LEN, RTCP_OVERHEAD, RTP_OVERHEAD,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

// ---- allocation counter (per thread, so parallel tests do not disturb each other) ----

struct CountingAlloc;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

// ---- helpers ----

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const MASTER_KEY: [u8; 16] = [
    0x0d, 0xcd, 0x21, 0x3e, 0x4c, 0xbc, 0xf2, 0x8f, 0x01, 0x7f, 0x69, 0x94, 0x40, 0x1e, 0x28, 0x89,
];
const MASTER_SALT: [u8; 12] = [
    0x62, 0x77, 0x60, 0x38, 0xc0, 0x6d, 0xc9, 0x41, 0x9f, 0x6d, 0xd9, 0x43,
];

fn fast() -> FastSrtpContext {
    FastSrtpContext::new(&MASTER_KEY, &MASTER_SALT).unwrap()
}

fn webrtc() -> Context {
    Context::new(
        &MASTER_KEY,
        &MASTER_SALT,
        ProtectionProfile::AeadAes128Gcm,
        Some(srtp_replay_protection(128)),
        Some(srtcp_replay_protection(128)),
    )
    .unwrap()
}

/// One SRTP profile under test: the in-place context, webrtc-srtp's with the same keys, and
/// what protecting adds.
struct Profile {
    fast: fn() -> FastSrtpContext,
    webrtc: fn() -> Context,
    rtp_overhead: usize,
    rtcp_overhead: usize,
}

const GCM: Profile = Profile {
    fast,
    webrtc,
    rtp_overhead: RTP_OVERHEAD,
    rtcp_overhead: RTCP_OVERHEAD,
};

/// AES128_CM_HMAC_SHA1_80 has a 14-byte master salt.
const CM_MASTER_SALT: [u8; 14] = [
    0x62, 0x77, 0x60, 0x38, 0xc0, 0x6d, 0xc9, 0x41, 0x9f, 0x6d, 0xd9, 0x43, 0x17, 0x2a,
];

const CM: Profile = Profile {
    fast: || FastSrtpContext::new_cm(&MASTER_KEY, &CM_MASTER_SALT).unwrap(),
    webrtc: || {
        Context::new(
            &MASTER_KEY,
            &CM_MASTER_SALT,
            ProtectionProfile::Aes128CmHmacSha1_80,
            Some(srtp_replay_protection(128)),
            Some(srtcp_replay_protection(128)),
        )
        .unwrap()
    },
    rtp_overhead: CM_TAG_LEN,
    rtcp_overhead: CM_TAG_LEN + 4,
};

/// RTP packet with 2 CSRCs, a one-byte-header extension (RFC 8285) and a payload whose
/// bytes depend on seq/ssrc.
fn rtp_packet(ssrc: u32, seq: u16, payload_len: usize) -> Vec<u8> {
    let mut p = vec![0x92, 0x60]; // V=2, X=1, CC=2; PT 96
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&0x1111_1111u32.to_be_bytes());
    p.extend_from_slice(&0x2222_2222u32.to_be_bytes());
    // 0xBEDE profile, 1 word: id 1, len 2 (0x11), two bytes, one pad byte.
    p.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01, 0x11, 0xaa, 0xbb, 0x00]);
    p.extend((0..payload_len).map(|i| (i as u32 ^ ssrc ^ u32::from(seq)) as u8));
    p
}

/// Plain RTP packet without CSRCs or extension (for the benchmark-like tests).
fn simple_rtp(ssrc: u32, seq: u16, payload_len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0x60];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(0xab, payload_len));
    p
}

/// RTCP sender report (RFC 7714 §17's packet) with the sender SSRC replaced.
fn rtcp_packet(ssrc: u32, salt: u8) -> Vec<u8> {
    let mut p = unhex(
        "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61\
         deadbeefdeadbeefdeadbeefdeadbeefdeadbeef",
    );
    p[4..8].copy_from_slice(&ssrc.to_be_bytes());
    p[12] ^= salt;
    p
}

const SSRCS: [u32; 3] = [0x0000_0001, 0xdead_beef, 0x1234_5678];

fn seqs() -> impl Iterator<Item = u16> {
    (65530u32..=65540).map(|s| s as u16)
}

// ---- RFC 7714 vectors ----
//
// RFC 7714 §16.1 (SRTP) and §17.1 (SRTCP), AEAD_AES_128_GCM. These vectors give the
// session key and salt directly (no key derivation): key 000102..0f, salt "Quid pro quo".
// Copied from the RFC text (recalled, then checked against several independent public
// implementations' test suites that embed the same RFC bytes).

const RFC_KEY: &str = "000102030405060708090a0b0c0d0e0f";
const RFC_SALT: &str = "517569642070726f2071756f";
const RFC_RTP_PLAIN: &str = "8040f17b8041f8d35501a0b2
    47616c6c696120657374206f6d6e69732064697669736120696e207061727465732074726573";
const RFC_RTP_PROTECTED: &str = "8040f17b8041f8d35501a0b2
    f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a51c7d19b36de3adf8833
    899d7f27beb16a9152cf765ee4390cce";
const RFC_RTCP_PLAIN: &str = "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61
    deadbeefdeadbeefdeadbeefdeadbeefdeadbeef";
const RFC_RTCP_PROTECTED: &str = "81c8000d4d617273
    63e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32dc676a5f1730d6fda4ce09b4686303ded0bb9275b
    c84aa45896cf4d2fc5abf87245d9eade
    800005d4";
/// §17.3: same packet, tagged but not encrypted (E flag clear).
const RFC_RTCP_TAG_ONLY: &str = "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61
    deadbeefdeadbeefdeadbeefdeadbeefdeadbeef841dd9683dd78ec92ae58790125f62b3000005d4";

fn rfc_ctx() -> FastSrtpContext {
    let (k, s) = (unhex(RFC_KEY), unhex(RFC_SALT));
    FastSrtpContext::from_session_keys(&k, &s, &k, &s).unwrap()
}

#[test]
fn rfc7714_16_1_srtp_encrypt_and_decrypt() {
    let mut buf = unhex(RFC_RTP_PLAIN);
    buf.reserve(RTP_OVERHEAD);
    let n = rfc_ctx().protect_rtp(&mut buf).unwrap();
    assert_eq!(n, buf.len());
    assert_eq!(buf, unhex(RFC_RTP_PROTECTED));

    let mut buf = unhex(RFC_RTP_PROTECTED);
    let n = rfc_ctx().unprotect_rtp(&mut buf).unwrap();
    assert_eq!(&buf[..n], &unhex(RFC_RTP_PLAIN)[..]);
}

#[test]
fn rfc7714_17_1_srtcp_encrypt_and_decrypt() {
    let mut ctx = rfc_ctx();
    ctx.set_srtcp_index(0x4d61_7273, 0x5d3); // next packet carries index 0x5d4
    let mut buf = unhex(RFC_RTCP_PLAIN);
    let n = ctx.protect_rtcp(&mut buf).unwrap();
    assert_eq!(n, buf.len());
    assert_eq!(buf, unhex(RFC_RTCP_PROTECTED));

    let mut buf = unhex(RFC_RTCP_PROTECTED);
    let n = rfc_ctx().unprotect_rtcp(&mut buf).unwrap();
    assert_eq!(&buf[..n], &unhex(RFC_RTCP_PLAIN)[..]);
}

#[test]
fn rfc7714_17_3_unencrypted_srtcp_is_rejected_with_a_typed_error() {
    let mut buf = unhex(RFC_RTCP_TAG_ONLY);
    assert_eq!(
        rfc_ctx().unprotect_rtcp(&mut buf),
        Err(FastSrtpError::UnencryptedSrtcp)
    );
}

// ---- cross-checks with webrtc-srtp ----

fn rtp_fast_to_webrtc_across_rollover_with_csrcs_and_extension_with(s: &Profile) {
    let mut tx = (s.fast)();
    let mut rx = (s.webrtc)();
    let mut reference_tx = (s.webrtc)();
    for seq in seqs() {
        for ssrc in SSRCS {
            let plain = rtp_packet(ssrc, seq, 200);
            let mut buf = plain.clone();
            buf.reserve(s.rtp_overhead);
            tx.protect_rtp(&mut buf).unwrap();
            assert_eq!(buf.len(), plain.len() + s.rtp_overhead);
            // Same keys and same state: both implementations produce identical bytes.
            assert_eq!(buf, &reference_tx.encrypt_rtp(&plain).unwrap()[..]);
            let opened = rx.decrypt_rtp(&buf).unwrap();
            assert_eq!(&opened[..], &plain[..], "ssrc {ssrc:#x} seq {seq}");
        }
    }
    for ssrc in SSRCS {
        assert_eq!(tx.roc(ssrc), Some(1));
    }
}

#[test]
fn rtp_fast_to_webrtc_across_rollover_with_csrcs_and_extension() {
    rtp_fast_to_webrtc_across_rollover_with_csrcs_and_extension_with(&GCM);
}

#[test]
fn cm_rtp_fast_to_webrtc_across_rollover_with_csrcs_and_extension() {
    rtp_fast_to_webrtc_across_rollover_with_csrcs_and_extension_with(&CM);
}

fn rtp_webrtc_to_fast_across_rollover_with_csrcs_and_extension_with(s: &Profile) {
    let mut tx = (s.webrtc)();
    let mut rx = (s.fast)();
    for seq in seqs() {
        for ssrc in SSRCS {
            let plain = rtp_packet(ssrc, seq, 1200);
            let mut buf = tx.encrypt_rtp(&plain).unwrap().to_vec();
            let n = rx.unprotect_rtp(&mut buf).unwrap();
            assert_eq!(&buf[..n], &plain[..], "ssrc {ssrc:#x} seq {seq}");
        }
    }
    for ssrc in SSRCS {
        assert_eq!(rx.roc(ssrc), Some(1));
    }
}

#[test]
fn rtp_webrtc_to_fast_across_rollover_with_csrcs_and_extension() {
    rtp_webrtc_to_fast_across_rollover_with_csrcs_and_extension_with(&GCM);
}

#[test]
fn cm_rtp_webrtc_to_fast_across_rollover_with_csrcs_and_extension() {
    rtp_webrtc_to_fast_across_rollover_with_csrcs_and_extension_with(&CM);
}

fn rtp_reordering_across_rollover_is_accepted_once_with(s: &Profile) {
    let mut tx = (s.webrtc)();
    let mut rx = (s.fast)();
    let ssrc = 0xabcd_0001;
    let order = [65533u16, 65534, 65535, 0, 1, 2];
    let wire: Vec<Vec<u8>> = order
        .iter()
        .map(|&s| tx.encrypt_rtp(&rtp_packet(ssrc, s, 50)).unwrap().to_vec())
        .collect();
    // Deliver 65533, 0, 65535, 2, 65534, 1: late packets from before the rollover use ROC 0.
    for i in [0usize, 3, 2, 5, 1, 4] {
        let mut buf = wire[i].clone();
        let n = rx.unprotect_rtp(&mut buf).unwrap();
        assert_eq!(&buf[..n], &rtp_packet(ssrc, order[i], 50)[..]);
    }
    for w in &wire {
        let mut buf = w.clone();
        assert!(matches!(
            rx.unprotect_rtp(&mut buf),
            Err(FastSrtpError::Replay { .. })
        ));
    }
}

#[test]
fn rtp_reordering_across_rollover_is_accepted_once() {
    rtp_reordering_across_rollover_is_accepted_once_with(&GCM);
}

#[test]
fn cm_rtp_reordering_across_rollover_is_accepted_once() {
    rtp_reordering_across_rollover_is_accepted_once_with(&CM);
}

fn rtcp_cross_both_ways_with(s: &Profile) {
    let mut fast_tx = (s.fast)();
    let mut webrtc_rx = (s.webrtc)();
    let mut webrtc_tx = (s.webrtc)();
    let mut fast_rx = (s.fast)();
    for round in 0..5u8 {
        for ssrc in SSRCS {
            let plain = rtcp_packet(ssrc, round);

            let mut buf = plain.clone();
            buf.reserve(s.rtcp_overhead);
            fast_tx.protect_rtcp(&mut buf).unwrap();
            let from_webrtc = webrtc_tx.encrypt_rtcp(&plain).unwrap();
            assert_eq!(buf, &from_webrtc[..], "identical SRTCP bytes");
            assert_eq!(&webrtc_rx.decrypt_rtcp(&buf).unwrap()[..], &plain[..]);

            let mut buf = from_webrtc.to_vec();
            let n = fast_rx.unprotect_rtcp(&mut buf).unwrap();
            assert_eq!(&buf[..n], &plain[..]);
        }
    }
}

#[test]
fn rtcp_cross_both_ways() {
    rtcp_cross_both_ways_with(&GCM);
}

#[test]
fn cm_rtcp_cross_both_ways() {
    rtcp_cross_both_ways_with(&CM);
}

// ---- replay, tampering, truncation ----

fn replayed_and_too_old_packets_are_rejected_with(s: &Profile) {
    let mut tx = (s.fast)();
    let mut rx = (s.fast)();
    let ssrc = 7;
    let mut wire = Vec::new();
    for seq in 1000u16..1300 {
        let mut buf = simple_rtp(ssrc, seq, 20);
        tx.protect_rtp(&mut buf).unwrap();
        wire.push(buf);
    }
    // Deliver the newest first, then one inside and one outside the 128-packet window.
    let mut newest = wire[299].clone();
    rx.unprotect_rtp(&mut newest).unwrap();
    let mut again = wire[299].clone();
    assert_eq!(
        rx.unprotect_rtp(&mut again),
        Err(FastSrtpError::Replay { ssrc, index: 1299 })
    );
    let mut inside = wire[299 - 127].clone();
    rx.unprotect_rtp(&mut inside).unwrap();
    let mut outside = wire[299 - 128].clone();
    assert!(matches!(
        rx.unprotect_rtp(&mut outside),
        Err(FastSrtpError::Replay { .. })
    ));

    // SRTCP.
    let mut rtcp = rtcp_packet(ssrc, 0);
    tx.protect_rtcp(&mut rtcp).unwrap();
    let mut first = rtcp.clone();
    rx.unprotect_rtcp(&mut first).unwrap();
    let mut second = rtcp.clone();
    assert_eq!(
        rx.unprotect_rtcp(&mut second),
        Err(FastSrtpError::Replay { ssrc, index: 1 })
    );
}

#[test]
fn replayed_and_too_old_packets_are_rejected() {
    replayed_and_too_old_packets_are_rejected_with(&GCM);
}

#[test]
fn cm_replayed_and_too_old_packets_are_rejected() {
    replayed_and_too_old_packets_are_rejected_with(&CM);
}

fn tampered_packets_fail_authentication_and_do_not_poison_state_with(s: &Profile) {
    let mut tx = (s.fast)();
    let mut rtp = rtp_packet(42, 5, 64);
    tx.protect_rtp(&mut rtp).unwrap();
    let header_len = 12 + 8 + 8;
    let mut rx = (s.fast)();
    for i in 0..rtp.len() {
        let mut bad = rtp.clone();
        bad[i] ^= 0x01;
        let r = rx.unprotect_rtp(&mut bad);
        assert!(r.is_err(), "flipped byte {i} accepted");
        if i >= header_len || (2..12).contains(&i) {
            assert_eq!(r, Err(FastSrtpError::AuthFailed), "byte {i}");
        }
    }
    assert_eq!(
        rx.rtp_ssrc_count(),
        0,
        "forgeries must not create SSRC state"
    );
    let mut good = rtp.clone();
    assert!(rx.unprotect_rtp(&mut good).is_ok());

    let mut rtcp = rtcp_packet(42, 1);
    tx.protect_rtcp(&mut rtcp).unwrap();
    for i in 0..rtcp.len() {
        let mut bad = rtcp.clone();
        bad[i] ^= 0x01;
        assert!(rx.unprotect_rtcp(&mut bad).is_err(), "flipped byte {i}");
    }
    let mut good = rtcp.clone();
    assert!(rx.unprotect_rtcp(&mut good).is_ok());
}

#[test]
fn tampered_packets_fail_authentication_and_do_not_poison_state() {
    tampered_packets_fail_authentication_and_do_not_poison_state_with(&GCM);
}

#[test]
fn cm_tampered_packets_fail_authentication_and_do_not_poison_state() {
    tampered_packets_fail_authentication_and_do_not_poison_state_with(&CM);
}

/// xorshift64*: deterministic, dependency-free randomness for the fuzz-ish loops.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn truncated_and_random_input_never_panics_with(s: &Profile) {
    let mut tx = (s.fast)();
    let mut rtp = rtp_packet(9, 1, 100);
    tx.protect_rtp(&mut rtp).unwrap();
    let mut rtcp = rtcp_packet(9, 0);
    tx.protect_rtcp(&mut rtcp).unwrap();

    let mut rx = (s.fast)();
    for cut in 0..rtp.len() {
        let mut b = rtp[..cut].to_vec();
        assert!(rx.unprotect_rtp(&mut b).is_err(), "cut {cut}");
        let mut b = rtp[..cut].to_vec();
        let _ = rx.unprotect_rtcp(&mut b);
    }
    for cut in 0..rtcp.len() {
        let mut b = rtcp[..cut].to_vec();
        assert!(rx.unprotect_rtcp(&mut b).is_err(), "cut {cut}");
    }
    // Plaintext headers cut short cannot be protected either.
    let plain = rtp_packet(9, 2, 0);
    for cut in 0..plain.len() {
        let mut b = plain[..cut].to_vec();
        assert!(tx.protect_rtp(&mut b).is_err(), "cut {cut}");
        assert_eq!(b.len(), cut, "failed protect restores the length");
    }

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = (rng.next() % 96) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if let Some(first) = b.first_mut() {
            *first = 0x80 | (*first & 0x3f); // mostly version 2, random CC/X/P
        }
        let mut c = b.clone();
        let mut d = b.clone();
        assert!(rx.unprotect_rtp(&mut b).is_err());
        assert!(rx.unprotect_rtcp(&mut c).is_err());
        let mut space = vec![0u8; d.len() + s.rtp_overhead];
        space[..d.len()].copy_from_slice(&d);
        let _ = tx.protect_rtp_in(&mut space, d.len());
        let _ = tx.protect_rtp_in(&mut d, 0);
    }
}

#[test]
fn truncated_and_random_input_never_panics() {
    truncated_and_random_input_never_panics_with(&GCM);
}

#[test]
fn cm_truncated_and_random_input_never_panics() {
    truncated_and_random_input_never_panics_with(&CM);
}

#[test]
fn protect_in_slice_needs_room_for_the_trailer() {
    let mut ctx = fast();
    let p = simple_rtp(1, 1, 10);
    let mut small = p.clone();
    let len = small.len();
    assert_eq!(
        ctx.protect_rtp_in(&mut small, len),
        Err(FastSrtpError::NoRoom(RTP_OVERHEAD))
    );
    let mut rtcp = rtcp_packet(1, 0);
    let len = rtcp.len();
    assert_eq!(
        ctx.protect_rtcp_in(&mut rtcp, len),
        Err(FastSrtpError::NoRoom(RTCP_OVERHEAD))
    );
}

#[test]
fn ssrc_cap_is_enforced() {
    let mut ctx = fast().with_max_ssrcs(2);
    for ssrc in [1, 2] {
        let mut b = simple_rtp(ssrc, 1, 10);
        ctx.protect_rtp(&mut b).unwrap();
    }
    let mut b = simple_rtp(3, 1, 10);
    assert_eq!(ctx.protect_rtp(&mut b), Err(FastSrtpError::TooManySsrcs));
}

#[test]
fn bad_key_lengths_are_typed_errors() {
    assert_eq!(
        FastSrtpContext::new(&[0; 15], &MASTER_SALT).err(),
        Some(FastSrtpError::KeyLength(15))
    );
    assert_eq!(
        FastSrtpContext::new(&MASTER_KEY, &[0; 14]).err(),
        Some(FastSrtpError::SaltLength(14))
    );
}

#[test]
fn debug_output_has_no_key_material() {
    let ctx = fast();
    let s = format!("{ctx:?}");
    assert!(s.contains("FastSrtpContext"));
    assert!(!s.contains('['), "no byte arrays in Debug: {s}");
    assert!(!s.to_lowercase().contains("salt"));
}

// ---- allocation count ----

fn no_heap_allocation_per_packet_after_warm_up_with(s: &Profile) {
    let mut tx = (s.fast)();
    let mut rx = (s.fast)();
    let ssrc: u32 = 0x5151_5151;
    let mut buf = Vec::with_capacity(1500);
    let mut rtcp = Vec::with_capacity(1500);
    let payload = vec![0x5au8; 1200];
    let mut run = |tx: &mut FastSrtpContext, rx: &mut FastSrtpContext, seq: u16| {
        buf.clear();
        buf.extend_from_slice(&[0x80, 0x60]);
        buf.extend_from_slice(&seq.to_be_bytes());
        buf.extend_from_slice(&[0, 0, 0, 0]);
        buf.extend_from_slice(&ssrc.to_be_bytes());
        buf.extend_from_slice(&payload);
        tx.protect_rtp(&mut buf).unwrap();
        let n = rx.unprotect_rtp(&mut buf).unwrap();
        assert_eq!(&buf[12..n], &payload[..]);

        rtcp.clear();
        rtcp.extend_from_slice(&[0x80, 0xc9, 0x00, 0x01]);
        rtcp.extend_from_slice(&ssrc.to_be_bytes());
        tx.protect_rtcp(&mut rtcp).unwrap();
        let n = rx.unprotect_rtcp(&mut rtcp).unwrap();
        assert_eq!(n, 8);
    };
    // Warm-up: creates the SSRC entries (the only allocations the context makes).
    run(&mut tx, &mut rx, 65000);
    let before = allocs();
    for i in 1..=5000u32 {
        run(&mut tx, &mut rx, (65000 + i) as u16); // crosses the rollover too
    }
    let after = allocs();
    assert_eq!(
        after - before,
        0,
        "heap allocations during 5000 protect+unprotect pairs (RTP and RTCP)"
    );
    assert_eq!(rx.roc(ssrc), Some(1));

    // The counter does see allocations on this thread: webrtc-srtp's Context allocates.
    let mut reference = (s.webrtc)();
    let plain = simple_rtp(ssrc, 1, 1200);
    reference.encrypt_rtp(&plain).unwrap();
    let before = allocs();
    let sealed = reference.encrypt_rtp(&simple_rtp(ssrc, 2, 1200)).unwrap();
    assert!(allocs() > before, "counting allocator is live");
    drop(sealed);
}

#[test]
fn no_heap_allocation_per_packet_after_warm_up() {
    no_heap_allocation_per_packet_after_warm_up_with(&GCM);
}

#[test]
fn cm_no_heap_allocation_per_packet_after_warm_up() {
    no_heap_allocation_per_packet_after_warm_up_with(&CM);
}
