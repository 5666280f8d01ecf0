//! blindrelay-bench: measure the relay with real clients (real DTLS-SRTP, real SFrame).
//!
//! `call`: one 1:1 call through a relay started in this process (its own runtime and
//! threads), reporting join time, DTLS handshake time and the relay's forwarded packets/s,
//! read from the relay's own Prometheus metrics.

use anyhow::{bail, Context, Result};
use blindrelay::config::Config;
use blindrelay::{Relay, RelayOptions};
use clap::{Parser, Subcommand};
use e2ee_client::call::{run_call, CallOptions};
use serde::Serialize;
use std::time::{Duration, Instant};

mod alloc;
mod baseline;
mod churn;
mod gen;
mod group;
mod janus;
mod link;
mod load;
mod loss;
mod netns;
mod paced;
mod procstat;
mod sidebyside;
mod sweep;

/// Counts allocations on threads that opt in (the relay's, in `alloc`); a thread-local
/// check and nothing else on all other threads.
#[global_allocator]
static ALLOCATOR: alloc::CountingAlloc = alloc::CountingAlloc;

#[derive(Parser)]
#[command(
    name = "blindrelay-bench",
    about = "Measure blindrelay with real clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Many real clients against a running relay.
    Load {
        #[arg(long, default_value = "ws://127.0.0.1:7400/v1/signal")]
        relay: String,
        /// The relay's auth.api_secret, to sign the clients' tokens.
        #[arg(long, default_value = blindrelay::config::DEV_API_SECRET)]
        api_secret: String,
        #[arg(long, default_value_t = 10)]
        calls: usize,
        #[arg(long, default_value_t = 1500)]
        video_kbps: u32,
        /// Send no audio (video only).
        #[arg(long)]
        no_audio: bool,
        #[arg(long)]
        e2ee: bool,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Participants joining per second.
        #[arg(long, default_value_t = 50.0)]
        join_rate: f64,
        /// The relay's pid, to report its CPU and RSS from /proc.
        #[arg(long)]
        relay_pid: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// A bare UDP forwarder (the relay's socket and syscalls, no crypto or routing):
    /// this machine's ceiling, for the sweep.
    Baseline {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value_t = 32 << 20)]
        socket_buffer_bytes: usize,
        /// Exit by itself after this long.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        max_duration: Duration,
        /// Open each packet with the sender's SRTP key and seal it with the receiver's, as
        /// any SRTP relay must (keys from the legs' hellos).
        #[arg(long)]
        srtp: bool,
    },
    /// Raise the load until loss or p99 passes its limit, for the relay (one core) and
    /// the baseline in the same run, and print each one's maximum and their ratio.
    Sweep {
        /// The relay binary (default: `blindrelay` next to this one).
        #[arg(long)]
        relay_bin: Option<std::path::PathBuf>,
        /// 1:1 calls (two generator legs each).
        #[arg(long, default_value_t = 16)]
        calls: usize,
        #[arg(long, default_value_t = 50_000.0)]
        start_pps: f64,
        #[arg(long, default_value_t = 50_000.0)]
        step_pps: f64,
        #[arg(long, default_value_t = 2_000_000.0)]
        max_pps: f64,
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        step_duration: Duration,
        /// Bisection steps between the last pass and the first failure.
        #[arg(long, default_value_t = 2)]
        refine: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// CPU for the relay or baseline process.
        #[arg(long, default_value_t = 0)]
        relay_cpu: usize,
        /// CPU for this process (the generator).
        #[arg(long, default_value_t = 1)]
        gen_cpu: usize,
        #[arg(long, default_value_t = 0.1)]
        loss_limit_pct: f64,
        #[arg(long, default_value_t = 5.0)]
        p99_limit_ms: f64,
        /// Sweep the relay only (to compare two relay builds with --relay-bin).
        #[arg(long)]
        no_baseline: bool,
        /// The baseline also opens and seals every packet's SRTP (`baseline --srtp`), so
        /// the ratio is the relay's cost beyond the cryptography any SRTP relay pays.
        #[arg(long)]
        baseline_srtp: bool,
        #[arg(long)]
        json: bool,
    },
    /// CPU per forwarded packet across a node link, beside the single-node path, in one
    /// run: two relay processes as cluster nodes a and b (a real redis-server as their
    /// directory), 1:1 calls with both legs on a against calls with one leg on each node,
    /// in alternating phases at the same rate; both processes' CPU time per delivered
    /// packet, and the ratio link / single.
    Link {
        /// The relay binary (default: `blindrelay` next to this one).
        #[arg(long)]
        relay_bin: Option<std::path::PathBuf>,
        /// 1:1 calls in each set (single-node and link).
        #[arg(long, default_value_t = 8)]
        calls: usize,
        /// Packets per second offered in each phase, over all its legs.
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        /// Sending time of each phase.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Alternations (a single-node and a link phase each).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        json: bool,
    },
    /// CPU per forwarded packet at the load real calls make: many 1:1 calls of real
    /// participants (DTLS joins), each sending paced Opus (50 packets/s) and VP8 (30
    /// frames/s of 1-10 packets); the relay on one core, on each SRTP profile in
    /// alternating phases; CPU µs, wake-ups and preemptions per packet, latency p50/p99.
    Paced {
        /// The relay binary (default: `blindrelay` next to this one).
        #[arg(long)]
        relay_bin: Option<std::path::PathBuf>,
        /// 1:1 calls per SRTP profile.
        #[arg(long, default_value_t = 25)]
        calls: usize,
        /// Each participant's video bit rate.
        #[arg(long, default_value_t = 800)]
        video_kbps: u32,
        /// SRTP profiles, one set of calls each (repeat or comma-separate).
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [paced::Profile::Gcm, paced::Profile::Cm])]
        profile: Vec<paced::Profile>,
        /// Sending time of each phase.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Phases per profile (alternating).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The relay's forwarding loops: with 1 it is pinned to --relay-cpu, with more
        /// it runs on any core.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long, default_value_t = 0)]
        relay_cpu: usize,
        /// The generator's core.
        #[arg(long, default_value_t = 1)]
        gen_cpu: usize,
        #[arg(long)]
        json: bool,
    },
    /// The relay beside Janus 1.1.2's VideoRoom under the same load of GStreamer webrtcbin
    /// peers (1:1 calls, each peer sending a pre-encoded VP8 clip and Opus, AES-CM SRTP):
    /// each SFU pinned to one core in a network namespace of its own (needs root, janus
    /// and GStreamer: scripts/install-test-deps.sh), alternating; CPU µs and wake-ups per
    /// forwarded packet for both, and their ratio.
    JanusPaced {
        /// The relay binary (default: `blindrelay` next to this one).
        #[arg(long)]
        relay_bin: Option<std::path::PathBuf>,
        /// 1:1 calls, two webrtcbin peers each.
        #[arg(long, default_value_t = 4)]
        calls: usize,
        /// The clip's video bit rate.
        #[arg(long, default_value_t = 8000)]
        video_kbps: u32,
        /// After every peer receives media, before the window opens.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        /// The measuring window of each phase.
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        window: Duration,
        /// Phases per SFU (alternating which goes first).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The core each SFU is pinned to.
        #[arg(long, default_value_t = 0)]
        sfu_cpu: usize,
        /// The peers' core.
        #[arg(long, default_value_t = 1)]
        peer_cpu: usize,
        #[arg(long)]
        json: bool,
    },
    /// One connection joins and leaves a call with many tracks while another member never
    /// answers; reports an unrelated hello's latency and the relay's CPU and RSS.
    Churn {
        #[arg(long, default_value = "ws://127.0.0.1:7400/v1/signal")]
        relay: String,
        /// The relay's auth.api_secret, to sign the clients' tokens.
        #[arg(long, default_value = blindrelay::config::DEV_API_SECRET)]
        api_secret: String,
        #[arg(long, default_value_t = 175)]
        cycles: usize,
        /// m-lines of each join, per kind (the relay's defaults allow 1 and 2).
        #[arg(long, default_value_t = 1)]
        audio_tracks: usize,
        #[arg(long, default_value_t = 2)]
        video_tracks: usize,
        /// Messages per second the churning connection sends.
        #[arg(long, default_value_t = 40.0)]
        message_rate: f64,
        /// The relay's pid, to report its CPU and RSS from /proc.
        #[arg(long)]
        relay_pid: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Heap allocations per forwarded packet on an in-process relay, counted by a global
    /// allocator on the relay's threads only.
    Alloc {
        #[arg(long, default_value_t = 8)]
        calls: usize,
        #[arg(long, default_value_t = 50_000.0)]
        rate_pps: f64,
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        #[arg(long)]
        json: bool,
    },
    /// How soon a mixed MLS group keys: browser pages (headless Chromium) and e2ee-clients
    /// in one group call through an in-process relay; per member, join to keyed with
    /// everyone before it, and the last join to everyone keyed with everyone.
    Group {
        #[arg(long, default_value_t = 4)]
        pages: usize,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Between one e2ee-client's start and the next one's (the pages join as fast as
        /// the driver opens them).
        #[arg(long, default_value = "400ms", value_parser = humantime::parse_duration)]
        join_every: Duration,
        /// How long each e2ee-client stays: longer than the pages take to key.
        #[arg(long, default_value = "25s", value_parser = humantime::parse_duration)]
        client_duration: Duration,
        /// The page driver (needs `npm ci` in its directory: scripts/install-test-deps.sh).
        #[arg(long, default_value = "tests/peers/chromium/web.mjs")]
        driver: std::path::PathBuf,
        /// The longest the pages may take to key.
        #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Random loss on one receiver's path: three pages (headless Chromium) in one call
    /// through an in-process relay, one of them behind a userspace path that drops
    /// datagrams at random; its video against an unimpaired receiver's, over a held window.
    Loss {
        /// Datagrams dropped on the impaired path, in each direction.
        #[arg(long, default_value_t = 3.0)]
        loss_pct: f64,
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        hold: Duration,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seed of the path's loss (each run adds its index).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The page driver (needs `npm ci` in its directory: scripts/install-test-deps.sh).
        #[arg(long, default_value = "tests/peers/chromium/web.mjs")]
        driver: std::path::PathBuf,
        /// The longest the pages may take to join.
        #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Keep each run's page driver output (stdout with every page's state, stderr)
        /// and the relay's metrics after it in this directory, to look into a run later.
        #[arg(long, value_name = "DIR")]
        logs: Option<std::path::PathBuf>,
        /// An end-to-end encrypted call (one MLS group of the three pages) instead of a
        /// standard one: every frame the impaired receiver decodes was also opened.
        #[arg(long)]
        e2ee: bool,
        /// The impaired receiver's downlink also crosses a real kernel rate limit of this
        /// many kbit/s (tbf on a veth into a network namespace the bench makes; needs
        /// root). With `--loss-pct 0`, a constrained receiver rather than a lossy one.
        #[arg(long, value_name = "KBIT")]
        shape_kbit: Option<u32>,
        /// Also make each run through Janus 1.1.2's VideoRoom (apt janus), right after the
        /// relay's, with the same impairment: Janus runs in a network namespace the bench
        /// makes (needs root), and its pages are bench/janus/page.html. Janus has no E2EE, so
        /// its call is a standard one.
        #[arg(long)]
        janus: bool,
        #[arg(long)]
        json: bool,
    },
    /// One 1:1 call through an in-process relay.
    Call {
        #[arg(long, default_value_t = 1500)]
        video_kbps: u32,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long)]
        e2ee: bool,
        /// Repeat the call this many times and report the median of each figure.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Serialize, Clone)]
struct CallRun {
    join_to_first_media_ms: f64,
    signalling_join_ms: f64,
    dtls_handshake_ms: f64,
    forwarded_pps: f64,
    forwarded_mbps: f64,
    loss_pct: f64,
    e2e_latency_p50_ms: f64,
    e2e_latency_p99_ms: f64,
}

/// The sum of a metric's samples (every label set) in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn loopback() -> Result<Config> {
    let mut c = Config::embedded()?;
    c.signal.listen = "127.0.0.1:0".parse()?;
    c.admin.listen = "127.0.0.1:0".parse()?;
    c.media.listen = "127.0.0.1:0".parse()?;
    Ok(c)
}

/// A relay on loopback in this process, on a runtime of its own so client work does not
/// queue behind it, and a runtime for the clients.
struct InProcess {
    relay_rt: tokio::runtime::Runtime,
    relay: Relay,
    cfg: Config,
    client_rt: tokio::runtime::Runtime,
}

impl InProcess {
    fn start() -> Result<Self> {
        let one_thread = || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
        };
        let relay_rt = one_thread()?;
        let cfg = loopback()?;
        let relay = relay_rt
            .block_on(Relay::start(cfg.clone(), RelayOptions::default()))
            .context("start relay")?;
        Ok(InProcess {
            relay_rt,
            relay,
            cfg,
            client_rt: one_thread()?,
        })
    }

    /// Shut the relay down, then hand back what ran against it.
    fn finish<R>(self, r: Result<R>) -> Result<R> {
        self.relay_rt.block_on(self.relay.shutdown());
        r
    }
}

/// A report as one JSON line (`--json`) or for people.
fn emit<R: Serialize>(json: bool, report: &R, human: fn(&R)) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        human(report);
    }
    Ok(())
}

/// A token for `user` in `call`, signed with the in-process relay's secret.
fn bench_token(cfg: &Config, user: &str, call: &str) -> Result<String> {
    Ok(blindrelay::token::issue(
        &cfg.auth.api_secret,
        user,
        "bench",
        "user",
        Some(call),
        Duration::from_secs(600),
    )?)
}

/// The page driver, or why it cannot run.
fn check_driver(driver: &std::path::Path) -> Result<()> {
    if !driver.exists() {
        bail!(
            "{} not found: run from the repository root after scripts/install-test-deps.sh",
            driver.display()
        );
    }
    Ok(())
}

async fn one_call(
    relay: &Relay,
    cfg: &Config,
    video_kbps: u32,
    duration: Duration,
    e2ee: bool,
    n: usize,
) -> Result<CallRun> {
    let call = format!("bench-{n}");
    let mk = |user: &str| -> Result<CallOptions> {
        Ok(CallOptions {
            relay: relay.signal_url(),
            token: bench_token(cfg, user, &call)?,
            call: call.clone(),
            duration,
            e2ee,
            video_kbps,
            name: user.into(),
            ..Default::default()
        })
    };
    let (a, b) = (mk("alice")?, mk("bob")?);
    let before = relay.metrics_text();
    let t = Instant::now();
    let (sa, sb) = tokio::join!(run_call(&a), run_call(&b));
    let elapsed = t.elapsed().as_secs_f64();
    let after = relay.metrics_text();
    for s in [&sa, &sb] {
        if let Some(e) = &s.error {
            bail!("call failed: {}: {}", e.code, e.message);
        }
    }
    let d = |name: &str| metric(&after, name) - metric(&before, name);
    let fwd = d("blindrelay_packets_forwarded_total{kind=\"rtp\"}");
    let fwd_bytes = d("blindrelay_bytes_forwarded_total{kind=\"rtp\"}");
    let hs_sum = d("blindrelay_dtls_handshake_duration_seconds_sum");
    let hs_n = d("blindrelay_dtls_handshake_duration_seconds_count").max(1.0);
    let sent = (sa.sent_packets + sb.sent_packets) as f64;
    let lost = (sa.lost_packets + sb.lost_packets) as f64;
    // Media flows for `duration` after both are connected; rates use that window.
    let media_secs = duration.as_secs_f64().min(elapsed);
    Ok(CallRun {
        join_to_first_media_ms: sa
            .first_media_ms
            .unwrap_or(0.0)
            .max(sb.first_media_ms.unwrap_or(0.0)),
        signalling_join_ms: sa.join_ms.unwrap_or(0.0).max(sb.join_ms.unwrap_or(0.0)),
        dtls_handshake_ms: hs_sum / hs_n * 1e3,
        forwarded_pps: fwd / media_secs,
        forwarded_mbps: fwd_bytes * 8.0 / 1e6 / media_secs,
        loss_pct: if sent > 0.0 { lost / sent * 100.0 } else { 0.0 },
        e2e_latency_p50_ms: sa
            .latency_ms_p50
            .unwrap_or(0.0)
            .max(sb.latency_ms_p50.unwrap_or(0.0)),
        e2e_latency_p99_ms: sa
            .latency_ms_p99
            .unwrap_or(0.0)
            .max(sb.latency_ms_p99.unwrap_or(0.0)),
    })
}

/// The middle value (the upper one of an even count); 0 for none.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> Result<()> {
    // The in-process relay's logs (`loss`, `group`), with RUST_LOG: off without it.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Churn {
            relay,
            api_secret,
            cycles,
            audio_tracks,
            video_tracks,
            message_rate,
            relay_pid,
            json,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(churn::run(churn::ChurnArgs {
                relay,
                api_secret,
                cycles,
                audio_tracks,
                video_tracks,
                message_rate,
                relay_pid,
            }))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
        }
        Cmd::Load {
            relay,
            api_secret,
            calls,
            video_kbps,
            no_audio,
            e2ee,
            duration,
            join_rate,
            relay_pid,
            json,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(load::run(load::LoadArgs {
                relay,
                api_secret,
                calls,
                video_kbps,
                audio: !no_audio,
                e2ee,
                duration,
                join_rate,
                relay_pid,
                quiet: json,
            }))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                load::print_human(&report);
            }
        }
        Cmd::Alloc {
            calls,
            rate_pps,
            duration,
            warmup,
            json,
        } => {
            let r = alloc::run(calls, rate_pps, duration, warmup)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                alloc::print_human(&r);
            }
        }
        Cmd::Baseline {
            listen,
            socket_buffer_bytes,
            max_duration,
            srtp,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(baseline::run(
                listen,
                socket_buffer_bytes,
                max_duration,
                srtp,
            ))?;
        }
        Cmd::Sweep {
            relay_bin,
            calls,
            start_pps,
            step_pps,
            max_pps,
            step_duration,
            refine,
            runs,
            relay_cpu,
            gen_cpu,
            loss_limit_pct,
            p99_limit_ms,
            no_baseline,
            baseline_srtp,
            json,
        } => {
            let me = std::env::current_exe().context("locate this binary")?;
            let relay_bin = relay_bin.unwrap_or_else(|| me.with_file_name("blindrelay"));
            // The generator runs on one thread pinned to its own core.
            sweep::pin_current_thread(gen_cpu)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(sweep::run(sweep::SweepArgs {
                relay_bin,
                bench_bin: me,
                calls,
                start_pps,
                step_pps,
                max_pps,
                step_duration,
                runs,
                relay_cpu,
                gen_cpu,
                loss_limit_pct,
                p99_limit_ms,
                refine,
                no_baseline,
                baseline_srtp,
                quiet: false,
            }))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                sweep::print_human(&report);
            }
        }
        Cmd::Link {
            relay_bin,
            calls,
            rate,
            duration,
            runs,
            json,
        } => {
            let me = std::env::current_exe().context("locate this binary")?;
            let relay_bin = relay_bin.unwrap_or_else(|| me.with_file_name("blindrelay"));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(link::run(link::LinkArgs {
                relay_bin,
                calls,
                rate_pps: rate,
                duration,
                runs,
                quiet: json,
            }))?;
            emit(json, &report, link::print_human)?;
        }
        Cmd::Paced {
            relay_bin,
            calls,
            video_kbps,
            profile,
            duration,
            runs,
            workers,
            relay_cpu,
            gen_cpu,
            json,
        } => {
            let me = std::env::current_exe().context("locate this binary")?;
            let relay_bin = relay_bin.unwrap_or_else(|| me.with_file_name("blindrelay"));
            sweep::pin_current_thread(gen_cpu)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(paced::run(paced::PacedArgs {
                relay_bin,
                calls,
                video_kbps,
                duration,
                runs,
                profiles: profile,
                workers,
                relay_cpu,
                gen_cpu,
                quiet: json,
            }))?;
            emit(json, &report, paced::print_human)?;
        }
        Cmd::JanusPaced {
            relay_bin,
            calls,
            video_kbps,
            warmup,
            window,
            runs,
            sfu_cpu,
            peer_cpu,
            json,
        } => {
            let me = std::env::current_exe().context("locate this binary")?;
            let relay_bin = relay_bin.unwrap_or_else(|| me.with_file_name("blindrelay"));
            let report = sidebyside::run(sidebyside::SideArgs {
                relay_bin,
                calls,
                video_kbps,
                warmup,
                window,
                runs,
                sfu_cpu,
                peer_cpu,
                quiet: json,
            })?;
            emit(json, &report, sidebyside::print_human)?;
        }
        Cmd::Group {
            pages,
            clients,
            runs,
            join_every,
            client_duration,
            driver,
            timeout,
            json,
        } => {
            let ip = InProcess::start()?;
            let args = group::GroupArgs {
                pages,
                clients,
                runs,
                join_every,
                client_duration,
                driver,
                timeout,
            };
            let r = ip.client_rt.block_on(group::run(&ip.relay, &ip.cfg, args));
            emit(json, &ip.finish(r)?, group::print_human)?;
        }
        Cmd::Loss {
            loss_pct,
            hold,
            runs,
            seed,
            driver,
            timeout,
            logs,
            e2ee,
            shape_kbit,
            janus,
            json,
        } => {
            let ip = InProcess::start()?;
            let args = loss::LossArgs {
                loss_pct,
                hold,
                runs,
                seed,
                driver,
                timeout,
                logs,
                e2ee,
                shape_kbit,
                janus,
            };
            let r = ip.client_rt.block_on(loss::run(&ip.relay, &ip.cfg, args));
            emit(json, &ip.finish(r)?, loss::print_human)?;
        }
        Cmd::Call {
            video_kbps,
            duration,
            e2ee,
            runs,
            json,
        } => {
            let InProcess {
                relay_rt,
                relay,
                cfg,
                client_rt,
            } = InProcess::start()?;
            let mut results = Vec::new();
            for n in 0..runs.max(1) {
                let r =
                    client_rt.block_on(one_call(&relay, &cfg, video_kbps, duration, e2ee, n))?;
                if !json {
                    eprintln!("run {}: {r:?}", n + 1);
                }
                results.push(r);
            }
            let pick = |f: fn(&CallRun) -> f64| median(results.iter().map(f).collect());
            let summary = CallRun {
                join_to_first_media_ms: pick(|r| r.join_to_first_media_ms),
                signalling_join_ms: pick(|r| r.signalling_join_ms),
                dtls_handshake_ms: pick(|r| r.dtls_handshake_ms),
                forwarded_pps: pick(|r| r.forwarded_pps),
                forwarded_mbps: pick(|r| r.forwarded_mbps),
                loss_pct: pick(|r| r.loss_pct),
                e2e_latency_p50_ms: pick(|r| r.e2e_latency_p50_ms),
                e2e_latency_p99_ms: pick(|r| r.e2e_latency_p99_ms),
            };
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!(
                    "median of {} runs, {video_kbps} kbit/s video each way, e2ee={e2ee}",
                    results.len()
                );
                println!(
                    "  join to first media     {:8.2} ms",
                    summary.join_to_first_media_ms
                );
                println!(
                    "  signalling join         {:8.2} ms",
                    summary.signalling_join_ms
                );
                println!(
                    "  DTLS handshake (relay)  {:8.2} ms",
                    summary.dtls_handshake_ms
                );
                println!(
                    "  forwarded               {:8.0} packets/s ({:.1} Mbit/s)",
                    summary.forwarded_pps, summary.forwarded_mbps
                );
                println!("  loss                    {:8.3} %", summary.loss_pct);
                println!(
                    "  end-to-end latency      p50 {:.2} ms, p99 {:.2} ms",
                    summary.e2e_latency_p50_ms, summary.e2e_latency_p99_ms
                );
            }
            relay_rt.block_on(relay.shutdown());
        }
    }
    Ok(())
}
