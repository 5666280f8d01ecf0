//! SFrame seal/open throughput on 1,200-byte frames, per cipher suite, using the in-place
//! APIs (`Sender::seal_into` into a reused buffer, `Receiver::open_in_place`).
//!
//! cargo bench -p e2ee-client --bench sframe -- --warm-up-time 1 --measurement-time 3

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use e2ee_client::sframe::{CipherSuite, Receiver, Sender};

const FRAME: usize = 1200;
const KID: u64 = 3;
const BASE_KEY: &[u8] = b"sframe benchmark base key";

fn suite_label(suite: CipherSuite) -> String {
    format!("{:#06x} {}", suite.id(), suite.name())
}

fn bench_seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("sframe_seal_1200B");
    group.throughput(Throughput::Elements(1));
    for suite in CipherSuite::ALL {
        let pt = vec![0xa5u8; FRAME];
        let mut tx = Sender::new(suite, KID, BASE_KEY);
        let mut out = Vec::with_capacity(FRAME + 64);
        group.bench_function(BenchmarkId::from_parameter(suite_label(suite)), |b| {
            b.iter(|| {
                tx.seal_into(black_box(&[]), black_box(&pt), &mut out)
                    .expect("counter space is far from exhausted in a benchmark");
                black_box(out.as_slice());
            })
        });
    }
    // Non-empty metadata exercises the AAD scratch buffer of the GCM suites.
    let suite = CipherSuite::AesGcm128Sha256;
    let pt = vec![0xa5u8; FRAME];
    let meta = [0x42u8; 16];
    let mut tx = Sender::new(suite, KID, BASE_KEY);
    let mut out = Vec::with_capacity(FRAME + 64);
    group.bench_function(
        BenchmarkId::from_parameter(format!("{} +16B metadata", suite_label(suite))),
        |b| {
            b.iter(|| {
                tx.seal_into(black_box(&meta), black_box(&pt), &mut out)
                    .expect("counter space is far from exhausted in a benchmark");
                black_box(out.as_slice());
            })
        },
    );
    group.finish();
}

fn bench_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("sframe_open_1200B");
    group.throughput(Throughput::Elements(1));
    for suite in CipherSuite::ALL {
        let pt = vec![0xa5u8; FRAME];
        let mut tx = Sender::new(suite, KID, BASE_KEY);
        let mut rx = Receiver::new();
        rx.add_key(suite, KID, BASE_KEY);
        // Every open needs a fresh frame (the replay window rejects repeats), so frames are
        // sealed in untimed setup batches of 1024 and opened in order in the timed routine.
        group.bench_function(BenchmarkId::from_parameter(suite_label(suite)), |b| {
            b.iter_batched_ref(
                || {
                    tx.seal(&[], &pt)
                        .expect("counter space is far from exhausted in a benchmark")
                },
                |frame| {
                    let opened = rx
                        .open_in_place(black_box(&[]), frame)
                        .expect("freshly sealed frame opens");
                    black_box(&frame[opened.plaintext]);
                },
                BatchSize::NumIterations(1024),
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_seal, bench_open);
criterion_main!(benches);
