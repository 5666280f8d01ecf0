//! SRTP protect/unprotect of 1,200-byte RTP payloads: webrtc-srtp's `Context` (allocates a
//! `Bytes` per packet) against `fast_srtp::FastSrtpContext` (in place), with the same keys,
//! side by side in one run, for AEAD_AES_128_GCM and for AES128_CM_HMAC_SHA1_80 (names
//! ending `_cm`).
//!
//! Both unprotect paths have a 128-packet replay window, as the relay configures
//! webrtc-srtp. The in-place variants pay a 1.2 kB `memcpy` per packet to restore their
//! input (a real receive path decrypts the datagram where it landed, without that copy),
//! so the comparison slightly favours webrtc-srtp.

use blindrelay_transport::fast_srtp::{FastSrtpContext, MAX_RTP_OVERHEAD};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::{Duration, Instant};
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

const KEY: [u8; 16] = [7; 16];
const SALT: [u8; 12] = [9; 12];
const CM_SALT: [u8; 14] = [9; 14];
const PAYLOAD: usize = 1200;
const SSRC: u32 = 0x1234_5678;
/// Packets protected up front for the unprotect benchmarks; a fresh receive context is
/// built (untimed) for every batch so the replay window never rejects.
const BATCH: usize = 4096;

fn packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x60];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&u32::from(seq).wrapping_mul(960).to_be_bytes());
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend((0..PAYLOAD).map(|i| i as u8));
    p
}

fn webrtc_ctx(cm: bool) -> Context {
    let (salt, profile): (&[u8], _) = if cm {
        (&CM_SALT, ProtectionProfile::Aes128CmHmacSha1_80)
    } else {
        (&SALT, ProtectionProfile::AeadAes128Gcm)
    };
    Context::new(
        &KEY,
        salt,
        profile,
        Some(srtp_replay_protection(128)),
        Some(srtcp_replay_protection(128)),
    )
    .expect("valid key")
}

fn fast_ctx(cm: bool) -> FastSrtpContext {
    if cm {
        FastSrtpContext::new_cm(&KEY, &CM_SALT).expect("valid key")
    } else {
        FastSrtpContext::new(&KEY, &SALT).expect("valid key")
    }
}

/// The two profiles: (suffix of the benchmark names, AES-CM or not).
const PROFILES: [(&str, bool); 2] = [("", false), ("_cm", true)];

fn set_seq(p: &mut [u8], seq: u16) {
    p[2..4].copy_from_slice(&seq.to_be_bytes());
}

fn protect(c: &mut Criterion) {
    let mut g = c.benchmark_group("srtp_protect_1200B");
    g.throughput(Throughput::Elements(1));

    for (sfx, cm) in PROFILES {
        g.bench_function(format!("webrtc_srtp_context{sfx}"), |b| {
            let mut ctx = webrtc_ctx(cm);
            let mut plain = packet(0);
            let mut seq = 0u16;
            b.iter(|| {
                seq = seq.wrapping_add(1);
                set_seq(&mut plain, seq);
                black_box(ctx.encrypt_rtp(black_box(&plain)).expect("protect"))
            })
        });

        g.bench_function(
            format!("fast_{}_in_place", if cm { "cm" } else { "gcm" }),
            |b| {
                let mut ctx = fast_ctx(cm);
                let plain = packet(0);
                let mut buf = Vec::with_capacity(plain.len() + MAX_RTP_OVERHEAD);
                let mut seq = 0u16;
                b.iter(|| {
                    seq = seq.wrapping_add(1);
                    buf.clear();
                    buf.extend_from_slice(&plain);
                    set_seq(&mut buf, seq);
                    black_box(ctx.protect_rtp(black_box(&mut buf)).expect("protect"))
                })
            },
        );
    }
    g.finish();
}

fn protected_batch(cm: bool) -> Vec<Vec<u8>> {
    let mut tx = webrtc_ctx(cm);
    (0..BATCH)
        .map(|i| tx.encrypt_rtp(&packet(i as u16)).expect("protect").to_vec())
        .collect()
}

fn unprotect(c: &mut Criterion) {
    let mut g = c.benchmark_group("srtp_unprotect_1200B");
    g.throughput(Throughput::Elements(1));
    for (sfx, cm) in PROFILES {
        let wire = protected_batch(cm);

        g.bench_function(format!("webrtc_srtp_context{sfx}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let n = left.min(BATCH);
                    let mut ctx = webrtc_ctx(cm);
                    let start = Instant::now();
                    for p in &wire[..n] {
                        black_box(ctx.decrypt_rtp(black_box(p)).expect("unprotect"));
                    }
                    total += start.elapsed();
                    left -= n;
                }
                total
            })
        });

        g.bench_function(
            format!("fast_{}_in_place", if cm { "cm" } else { "gcm" }),
            |b| {
                let mut buf = vec![0u8; 1500];
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut left = iters as usize;
                    while left > 0 {
                        let n = left.min(BATCH);
                        let mut ctx = fast_ctx(cm);
                        let start = Instant::now();
                        for p in &wire[..n] {
                            let work = &mut buf[..p.len()];
                            work.copy_from_slice(p);
                            black_box(ctx.unprotect_rtp(black_box(work)).expect("unprotect"));
                        }
                        total += start.elapsed();
                        left -= n;
                    }
                    total
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, protect, unprotect);
criterion_main!(benches);
