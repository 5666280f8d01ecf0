//! SRTP protect/unprotect of 1,200-byte RTP payloads: webrtc-srtp's `Context` (allocates a
//! `Bytes` per packet) against `fast_srtp::FastGcmContext` (in place), both
//! AEAD_AES_128_GCM with the same keys, side by side in one run.
//!
//! Both unprotect paths have a 128-packet replay window, as the relay configures
//! webrtc-srtp. The in-place variants pay a 1.2 kB `memcpy` per packet to restore their
//! input (a real receive path decrypts the datagram where it landed, without that copy),
//! so the comparison slightly favours webrtc-srtp.

use blindrelay_transport::fast_srtp::{FastGcmContext, RTP_OVERHEAD};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::{Duration, Instant};
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

const KEY: [u8; 16] = [7; 16];
const SALT: [u8; 12] = [9; 12];
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

fn webrtc_ctx() -> Context {
    Context::new(
        &KEY,
        &SALT,
        ProtectionProfile::AeadAes128Gcm,
        Some(srtp_replay_protection(128)),
        Some(srtcp_replay_protection(128)),
    )
    .expect("valid key")
}

fn fast_ctx() -> FastGcmContext {
    FastGcmContext::new(&KEY, &SALT).expect("valid key")
}

fn set_seq(p: &mut [u8], seq: u16) {
    p[2..4].copy_from_slice(&seq.to_be_bytes());
}

fn protect(c: &mut Criterion) {
    let mut g = c.benchmark_group("srtp_protect_1200B");
    g.throughput(Throughput::Elements(1));

    g.bench_function("webrtc_srtp_context", |b| {
        let mut ctx = webrtc_ctx();
        let mut plain = packet(0);
        let mut seq = 0u16;
        b.iter(|| {
            seq = seq.wrapping_add(1);
            set_seq(&mut plain, seq);
            black_box(ctx.encrypt_rtp(black_box(&plain)).expect("protect"))
        })
    });

    g.bench_function("fast_gcm_in_place", |b| {
        let mut ctx = fast_ctx();
        let plain = packet(0);
        let mut buf = Vec::with_capacity(plain.len() + RTP_OVERHEAD);
        let mut seq = 0u16;
        b.iter(|| {
            seq = seq.wrapping_add(1);
            buf.clear();
            buf.extend_from_slice(&plain);
            set_seq(&mut buf, seq);
            black_box(ctx.protect_rtp(black_box(&mut buf)).expect("protect"))
        })
    });
    g.finish();
}

fn protected_batch() -> Vec<Vec<u8>> {
    let mut tx = webrtc_ctx();
    (0..BATCH)
        .map(|i| tx.encrypt_rtp(&packet(i as u16)).expect("protect").to_vec())
        .collect()
}

fn unprotect(c: &mut Criterion) {
    let wire = protected_batch();
    let mut g = c.benchmark_group("srtp_unprotect_1200B");
    g.throughput(Throughput::Elements(1));

    g.bench_function("webrtc_srtp_context", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(BATCH);
                let mut ctx = webrtc_ctx();
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

    g.bench_function("fast_gcm_in_place", |b| {
        let mut buf = vec![0u8; 1500];
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(BATCH);
                let mut ctx = fast_ctx();
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
    });
    g.finish();
}

criterion_group!(benches, protect, unprotect);
criterion_main!(benches);
