//! `blindrelay-bench alloc`: heap allocations per forwarded packet, counted by a global
//! allocator, on a real relay (real sockets, DTLS-keyed SRTP, the real receive and
//! forwarding loops) in this process.
//!
//! Only the relay's runtime threads are counted: they set a thread-local flag when they
//! start, and the allocator counts calls made while it is set. The relay runs an idle
//! phase and a loaded phase of equal length; what the loaded phase allocates beyond the
//! idle one (timers, consent checks) is what forwarding allocates.

use crate::gen::Generator;
use crate::metric;
use anyhow::{Context, Result};
use blindrelay::{Relay, RelayOptions};
use serde::Serialize;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

thread_local! {
    static TRACKED: Cell<bool> = const { Cell::new(false) };
}

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);
/// Tracked allocations by size class (log2 of the size), to tell what they are.
static BY_SIZE: [AtomicU64; 40] = [const { AtomicU64::new(0) }; 40];

/// The system allocator, counting allocations and reallocations on tracked threads.
pub struct CountingAlloc;

fn count(size: usize) {
    // try_with: during thread teardown the flag may already be gone; count nothing then.
    if TRACKED.try_with(|t| t.get()).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(size as u64, Ordering::Relaxed);
        let class = (usize::BITS - size.leading_zeros()) as usize;
        BY_SIZE[class.min(BY_SIZE.len() - 1)].fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting touches
// only atomics and a const-initialised thread-local, neither of which allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn by_size() -> Vec<u64> {
    BY_SIZE.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

fn snapshot() -> (u64, u64) {
    (
        ALLOCS.load(Ordering::Relaxed),
        ALLOC_BYTES.load(Ordering::Relaxed),
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct AllocReport {
    pub rate_pps: f64,
    pub phase_secs: f64,
    pub forwarded_packets: f64,
    pub idle_allocations: u64,
    pub loaded_allocations: u64,
    pub loaded_allocated_bytes: u64,
    /// (loaded − idle) / forwarded packets.
    pub allocations_per_forwarded_packet: f64,
    pub loss_pct: f64,
    /// Loaded-phase allocations by size range ("513-1024" bytes, say).
    pub loaded_by_size: Vec<(String, u64)>,
}

pub fn run(calls: usize, rate: f64, phase: Duration, warmup: Duration) -> Result<AllocReport> {
    // The generator's legs stop consent checks once they drive their sockets, so the
    // idle window must end before the relay's consent timeout (15 s by default).
    if phase + crate::gen::DRAIN > Duration::from_secs(10) {
        anyhow::bail!("--duration must be under 10 s (the idle window must not outlast consent)");
    }
    if !(rate.is_finite() && rate > 0.0) {
        anyhow::bail!("--rate-pps must be a positive number");
    }
    let relay_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(|| TRACKED.with(|t| t.set(true)))
        .enable_all()
        .build()?;
    let mut cfg = blindrelay::config::Config::embedded()?;
    cfg.signal.listen = "127.0.0.1:0".parse()?;
    cfg.admin.listen = "127.0.0.1:0".parse()?;
    cfg.media.listen = "127.0.0.1:0".parse()?;
    cfg.media.workers = 1;
    let relay = relay_rt
        .block_on(Relay::start(cfg.clone(), RelayOptions::default()))
        .context("start relay")?;
    let gen_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = gen_rt.block_on(async {
        let mut g = Generator::join_relay(&relay.signal_url(), &cfg.auth.api_secret, calls).await?;
        // Warm-up: queues, arenas and maps reach their working size.
        g.phase(rate, warmup, || {}).await?;
        let (a0, _) = snapshot();
        // As long as a loaded phase lasts, including its drain wait.
        tokio::time::sleep(phase + crate::gen::DRAIN).await;
        let (a1, _) = snapshot();
        let before = relay.metrics_text();
        let s0 = by_size();
        let (b0, bytes0) = snapshot();
        let p = g.phase(rate, phase, || {}).await?;
        let (b1, bytes1) = snapshot();
        let s1 = by_size();
        let loaded_by_size = s0
            .iter()
            .zip(&s1)
            .enumerate()
            .filter(|(_, (a, b))| *b > *a)
            .map(|(class, (a, b))| {
                let hi = 1u64 << class.min(63);
                (format!("{}-{}", hi / 2 + 1, hi), b - a)
            })
            .collect();
        let after = relay.metrics_text();
        let fwd = metric(&after, "blindrelay_packets_forwarded_total{kind=\"rtp\"}")
            - metric(&before, "blindrelay_packets_forwarded_total{kind=\"rtp\"}");
        if fwd <= 0.0 {
            anyhow::bail!("nothing was forwarded in the loaded window (participants gone?)");
        }
        let idle = a1 - a0;
        let loaded = b1 - b0;
        anyhow::Ok(AllocReport {
            rate_pps: rate,
            phase_secs: phase.as_secs_f64(),
            forwarded_packets: fwd,
            idle_allocations: idle,
            loaded_allocations: loaded,
            loaded_allocated_bytes: bytes1 - bytes0,
            allocations_per_forwarded_packet: if fwd > 0.0 {
                loaded.saturating_sub(idle) as f64 / fwd
            } else {
                f64::NAN
            },
            loss_pct: p.loss_pct,
            loaded_by_size,
        })
    })?;
    relay_rt.block_on(relay.shutdown());
    Ok(report)
}

pub fn print_human(r: &AllocReport) {
    println!(
        "{} packets forwarded at {:.0} pkt/s target ({:.3} % loss) in {:.1} s",
        r.forwarded_packets, r.rate_pps, r.loss_pct, r.phase_secs
    );
    println!(
        "relay-thread allocations: {} loaded ({} bytes), {} idle over the same time",
        r.loaded_allocations, r.loaded_allocated_bytes, r.idle_allocations
    );
    println!(
        "allocations per forwarded packet: {:.6}",
        r.allocations_per_forwarded_packet
    );
    for (range, n) in &r.loaded_by_size {
        println!("  {n:>6} allocations of {range} bytes");
    }
}
