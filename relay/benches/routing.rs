//! Routing on the relay's packet path, side by side in one run:
//! - `addr_lookup`: the receive loop's first step, source address to participant, in a
//!   table of 10,000 participants, with the hasher the relay uses (foldhash) and with
//!   std's SipHash for comparison;
//! - `forward_rtp`: `Forwarder::on_rtp` for one 1,200-byte SRTP packet in calls of 2, 4
//!   and 8 (hop decrypt once, route on the RTP header, hop encrypt per receiver into the
//!   outbox), so the cost per extra receiver shows.
//!
//! Input packets are protected in criterion's untimed setup, each with a fresh sequence
//! number, so the replay window never rejects one.

use blindrelay::core::forward::{Forwarder, Outbox, PeerTables};
use blindrelay::hop::SrtpHop;
use blindrelay_transport::fast_srtp::FastSrtpContext;
use blindrelay_transport::hop::HopContext;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::collections::HashMap as StdHashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

const PAYLOAD: usize = 1172;
const SSRC: u32 = 0x1234_5678;

fn addr(i: u32) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | (i >> 16))),
        (i & 0xffff) as u16,
    )
}

fn addr_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("addr_lookup_10k");
    g.throughput(Throughput::Elements(1));
    let n = 10_000u32;
    let keys: Vec<SocketAddr> = (0..n).map(|i| addr(i * 7 + 1)).collect();
    let fold: foldhash::HashMap<SocketAddr, u64> = keys
        .iter()
        .enumerate()
        .map(|(i, a)| (*a, i as u64))
        .collect();
    let sip: StdHashMap<SocketAddr, u64> = keys
        .iter()
        .enumerate()
        .map(|(i, a)| (*a, i as u64))
        .collect();
    g.bench_function("foldhash", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(fold.get(black_box(&keys[i])))
        })
    });
    g.bench_function("siphash_std", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(sip.get(black_box(&keys[i])))
        })
    });
    g.finish();
}

fn fast(key: u8) -> SrtpHop {
    // A constant key is fine here: the bench measures work, not secrecy.
    SrtpHop(HopContext::Fast(Box::new(
        FastSrtpContext::new(&[key; 16], &[key; 12]).expect("16-byte key, 12-byte salt"),
    )))
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend((0..PAYLOAD).map(|i| i as u8));
    p
}

fn forward_rtp(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward_rtp_1200B");
    g.throughput(Throughput::Elements(1));
    for members in [2u64, 4, 8] {
        g.bench_with_input(
            BenchmarkId::from_parameter(members),
            &members,
            |b, &members| {
                let mut f = Forwarder::new(None);
                for p in 0..members {
                    let key = p as u8 + 1;
                    f.add_peer(
                        p,
                        1,
                        addr(p as u32 + 1),
                        fast(key),
                        fast(key + 100),
                        PeerTables::standard(&[SSRC + p as u32]),
                    );
                }
                // Participant 0 sends with its client key (the relay's inbound key for it).
                let mut client = FastSrtpContext::new(&[1; 16], &[1; 12]).expect("valid key");
                let mut out = Outbox::with_capacity(64, 64 * 1500);
                let mut seq = 0u16;
                b.iter_batched(
                    || {
                        seq = seq.wrapping_add(1);
                        let mut p = rtp(seq);
                        client.protect_rtp(&mut p).expect("protect");
                        p
                    },
                    |pkt| {
                        out.clear();
                        black_box(f.on_rtp(0, &pkt, &mut out).expect("forwarded"))
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }
    g.finish();
}

criterion_group!(benches, addr_lookup, forward_rtp);
criterion_main!(benches);
