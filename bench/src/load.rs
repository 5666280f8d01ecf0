//! `blindrelay-bench load`: many real clients in one process (real DTLS-SRTP, real SFrame
//! with `--e2ee`) against a running relay, joined at a fixed rate, with a report of join
//! times, throughput, loss, end-to-end latency and the relay's CPU and memory.

use crate::procstat;
use anyhow::{bail, Result};
use e2ee_client::call::{run_call, CallOptions, CallSummary};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct LoadArgs {
    pub relay: String,
    pub api_secret: String,
    pub calls: usize,
    pub video_kbps: u32,
    pub audio: bool,
    pub e2ee: bool,
    pub duration: Duration,
    pub join_rate: f64,
    pub relay_pid: Option<u32>,
    pub quiet: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub calls: usize,
    pub participants: usize,
    pub joined: usize,
    pub failed: usize,
    pub joins_per_s: f64,
    pub join_ms_p50: f64,
    pub join_ms_p99: f64,
    pub offered_pps: f64,
    pub delivered_pps: f64,
    pub offered_mbps: f64,
    pub delivered_mbps: f64,
    pub loss_pct: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub frames_corrupt: u64,
    pub decrypt_failures: u64,
    pub relay_cpu_pct: Option<f64>,
    /// The relay's CPU from just after the last join to the middle of the steady state,
    /// in percent of one core (with no media: the cost of idle participants).
    pub relay_steady_cpu_pct: Option<f64>,
    pub relay_rss_mb: Option<f64>,
    pub relay_rss_per_participant_kb: Option<f64>,
    pub generator_cpu_pct: f64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub async fn run(a: LoadArgs) -> Result<LoadReport> {
    if a.calls == 0 {
        bail!("--calls must be at least 1");
    }
    let participants = a.calls * 2;
    let relay_pid = a.relay_pid.map(|p| p.to_string());
    let relay_before = relay_pid.as_deref().and_then(procstat::sample);
    let gen_before = procstat::sample("self");
    let started = Instant::now();
    let joined = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(participants);
    let gap = Duration::from_secs_f64(1.0 / a.join_rate.max(0.1));
    let run_id: u32 = rand_id();
    let progress = Progress::new(participants, a.quiet);
    progress.phase("joining");
    for i in 0..participants {
        let call = format!("load-{run_id}-{}", i / 2);
        let user = format!("u{i}");
        let token = blindrelay::token::issue(
            &a.api_secret,
            &user,
            "load",
            "user",
            Some(&call),
            Duration::from_secs(3600),
        )?;
        // Everyone stays until the last participant has had `duration` of media.
        let remaining_joins = gap * (participants - i) as u32;
        let opts = CallOptions {
            relay: a.relay.clone(),
            token,
            call,
            duration: a.duration + remaining_joins,
            e2ee: a.e2ee,
            audio: a.audio,
            video: a.video_kbps > 0,
            video_kbps: a.video_kbps,
            name: user,
            ..Default::default()
        };
        let joined = joined.clone();
        handles.push(tokio::spawn(async move {
            let s = run_call(&opts).await;
            if s.joined {
                joined.fetch_add(1, Ordering::Relaxed);
            }
            s
        }));
        // Paced against the start, so per-join overhead does not lower the rate.
        tokio::time::sleep_until(tokio::time::Instant::from_std(started) + gap * (i as u32 + 1))
            .await;
        progress.inc();
    }
    let joins_done = started.elapsed();
    // Sample the relay in the middle of the steady state, and its CPU from a moment after
    // the last join (its handshake done) to there: with no media, the idle cost.
    let mid = a.duration / 2;
    let settle = (mid / 4).min(Duration::from_secs(2));
    tokio::time::sleep(settle).await;
    let relay_steady = relay_pid.as_deref().and_then(procstat::sample);
    tokio::time::sleep(mid - settle).await;
    let relay_mid = relay_pid.as_deref().and_then(procstat::sample);
    let mut summaries: Vec<CallSummary> = Vec::with_capacity(participants);
    progress.phase("finishing");
    for h in handles {
        summaries.push(h.await?);
        progress.inc();
    }
    progress.finish(&format!(
        "load: {participants} participants joined in {:.1} s ({} joined the call), all finished after {:.1} s",
        joins_done.as_secs_f64(),
        joined.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    ));
    let relay_after = relay_pid.as_deref().and_then(procstat::sample);
    let gen_after = procstat::sample("self");
    let ok: Vec<&CallSummary> = summaries
        .iter()
        .filter(|s| s.joined && s.error.is_none())
        .collect();
    let mut joins: Vec<f64> = ok.iter().filter_map(|s| s.connect_ms).collect();
    joins.sort_by(f64::total_cmp);
    let mut lat: Vec<f64> = ok
        .iter()
        .flat_map(|s| s.latencies_us.iter().map(|u| *u as f64 / 1000.0))
        .collect();
    lat.sort_by(f64::total_cmp);
    let secs = a.duration.as_secs_f64() + joins_done.as_secs_f64();
    let sent: u64 = ok.iter().map(|s| s.sent_packets).sum();
    let recv: u64 = ok.iter().map(|s| s.received_packets).sum();
    let sent_b: u64 = ok.iter().map(|s| s.sent_bytes).sum();
    let recv_b: u64 = ok.iter().map(|s| s.received_bytes).sum();
    let lost: u64 = ok.iter().map(|s| s.lost_packets).sum();
    let relay_cpu = match (relay_before, relay_after) {
        (Some(b), Some(e)) => Some(procstat::cpu_percent(&b, &e)),
        _ => None,
    };
    let rss_mid = relay_mid.map(|s| s.rss_bytes as f64);
    let steady_cpu = match (relay_steady, relay_mid) {
        (Some(b), Some(e)) => Some(procstat::cpu_percent(&b, &e)),
        _ => None,
    };
    Ok(LoadReport {
        calls: a.calls,
        participants,
        joined: joined.load(Ordering::Relaxed),
        failed: participants - ok.len(),
        joins_per_s: participants as f64 / joins_done.as_secs_f64().max(1e-9),
        join_ms_p50: pct(&joins, 0.5),
        join_ms_p99: pct(&joins, 0.99),
        offered_pps: sent as f64 / secs,
        delivered_pps: recv as f64 / secs,
        offered_mbps: sent_b as f64 * 8.0 / 1e6 / secs,
        delivered_mbps: recv_b as f64 * 8.0 / 1e6 / secs,
        loss_pct: if recv + lost > 0 {
            lost as f64 / (recv + lost) as f64 * 100.0
        } else {
            0.0
        },
        latency_ms_p50: pct(&lat, 0.5),
        latency_ms_p99: pct(&lat, 0.99),
        latency_ms_p999: pct(&lat, 0.999),
        frames_corrupt: ok.iter().map(|s| s.frames_corrupt).sum(),
        decrypt_failures: ok.iter().map(|s| s.decrypt_failures).sum(),
        relay_cpu_pct: relay_cpu,
        relay_steady_cpu_pct: steady_cpu,
        relay_rss_mb: rss_mid.map(|r| r / 1e6),
        relay_rss_per_participant_kb: match (relay_before, rss_mid) {
            (Some(b), Some(m)) => {
                Some((m - b.rss_bytes as f64).max(0.0) / participants as f64 / 1024.0)
            }
            _ => None,
        },
        generator_cpu_pct: match (gen_before, gen_after) {
            (Some(b), Some(e)) => procstat::cpu_percent(&b, &e),
            _ => 0.0,
        },
    })
}

fn rand_id() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// Progress of the joining and finishing phases on stderr. The bar is indicatif's, which
/// draws only when stderr is a terminal (in CI or a log file it writes nothing); either way
/// the run ends with one summary line.
struct Progress {
    bar: ProgressBar,
    quiet: bool,
}

impl Progress {
    fn new(participants: usize, quiet: bool) -> Self {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(participants as u64)
        };
        // A constant template: it parses, and a bar without style would still count.
        if let Ok(style) =
            ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg} {elapsed_precise}")
        {
            bar.set_style(style.progress_chars("#>-"));
        }
        Progress { bar, quiet }
    }

    fn phase(&self, what: &'static str) {
        self.bar.set_position(0);
        self.bar.set_message(what);
    }

    fn inc(&self) {
        self.bar.inc(1);
    }

    /// Clear the bar and print the run's one summary line (unless quiet).
    fn finish(&self, summary: &str) {
        self.bar.finish_and_clear();
        if !self.quiet {
            eprintln!("{summary}");
        }
    }
}

pub fn print_human(r: &LoadReport) {
    println!(
        "calls {} ({} participants), joined {}, failed {}",
        r.calls, r.participants, r.joined, r.failed
    );
    println!(
        "  joins              {:8.1} /s   join p50 {:.2} ms  p99 {:.2} ms",
        r.joins_per_s, r.join_ms_p50, r.join_ms_p99
    );
    println!(
        "  offered            {:8.0} pkt/s  {:.1} Mbit/s",
        r.offered_pps, r.offered_mbps
    );
    println!(
        "  delivered          {:8.0} pkt/s  {:.1} Mbit/s",
        r.delivered_pps, r.delivered_mbps
    );
    println!("  loss               {:8.3} %", r.loss_pct);
    println!(
        "  e2e latency        p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms",
        r.latency_ms_p50, r.latency_ms_p99, r.latency_ms_p999
    );
    println!(
        "  corrupt frames     {:8}   decrypt failures {}",
        r.frames_corrupt, r.decrypt_failures
    );
    match (
        r.relay_cpu_pct,
        r.relay_rss_mb,
        r.relay_rss_per_participant_kb,
    ) {
        (Some(c), Some(m), Some(p)) => println!(
            "  relay              CPU {c:.1} % (steady state {:.2} %)  RSS {m:.1} MB  ({p:.1} KiB per participant)",
            r.relay_steady_cpu_pct.unwrap_or(f64::NAN)
        ),
        _ => println!("  relay              (pass --relay-pid for CPU and RSS)"),
    }
    println!("  generator          CPU {:.1} %", r.generator_cpu_pct);
}
