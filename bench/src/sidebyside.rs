//! `blindrelay-bench janus-paced`: the relay and Janus 1.1.2's VideoRoom under the same
//! load of GStreamer webrtcbin peers, each SFU alone on one core, for CPU per forwarded
//! packet side by side (issue 23).
//!
//! The load is the one issue 23 measured by hand: 1:1 calls whose two webrtcbin peers
//! each send a pre-encoded VP8 clip (about 8 Mbit/s, so a frame is many packets) and
//! Opus, with AES128_CM_HMAC_SHA1_80 (the only SRTP profile webrtcbin 1.22 offers). Each
//! SFU runs in a network namespace of its own behind a veth pair (libnice skips loopback,
//! and the same path for both keeps the kernel's share equal), pinned to one core; the
//! peers run on another. A forwarded packet is counted where it lands: RTP packets the
//! peers' webrtcbins received, read on both sides the same way.

use crate::janus::Janus;
use crate::median;
use crate::netns::VethNamespace;
use crate::procstat;
use crate::sweep::{self, tempfile_path::TempPath, Target};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct SideArgs {
    pub relay_bin: PathBuf,
    pub calls: usize,
    pub video_kbps: u32,
    pub warmup: Duration,
    pub window: Duration,
    pub runs: usize,
    pub sfu_cpu: usize,
    pub peer_cpu: usize,
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sfu {
    Relay,
    Janus,
}

/// One SFU's measuring window.
#[derive(Debug, Clone, Serialize)]
pub struct SidePhase {
    pub sfu: Sfu,
    pub run: usize,
    /// RTP packets the peers received per second over the window.
    pub delivered_pps: f64,
    pub cpu_us_per_packet: f64,
    /// The part of it spent in the kernel (the SFU's syscalls: receiving, sending,
    /// sleeping), which no user-space change removes while the syscalls stay.
    pub sys_us_per_packet: f64,
    /// Everything the SFU's core did per packet (the window less its measured idle time):
    /// irq and softirq work included whatever the kernel charges to the process
    /// (`CONFIG_IRQ_TIME_ACCOUNTING`), and the wake-up interrupts that reach the core.
    pub sfu_core_us_per_packet: f64,
    /// The SFU's CPU over the window, in percent of one core.
    pub sfu_cpu_pct: f64,
    pub wakeups_per_packet: f64,
    pub preemptions_per_packet: f64,
    /// How busy the peers' core was: near 100 % means the load, not the SFU, was the
    /// limit, and the phase is not a fair reading.
    pub peer_core_busy_pct: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SideMedians {
    pub sfu: Sfu,
    pub delivered_pps: f64,
    pub cpu_us_per_packet: f64,
    pub sys_us_per_packet: f64,
    pub sfu_core_us_per_packet: f64,
    pub wakeups_per_packet: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SideReport {
    pub machine: String,
    pub calls: usize,
    pub video_kbps: u32,
    pub srtp_profile: &'static str,
    pub window_secs: f64,
    pub phases: Vec<SidePhase>,
    pub medians: Vec<SideMedians>,
    /// The relay's CPU per packet over Janus's (medians): the issue's goal is at most 0.2.
    pub relay_over_janus: f64,
    /// The same ratio run by run (each run has one phase of each, back to back), and
    /// their median: the pairing cancels a drift of the machine between runs.
    pub paired_ratios: Vec<f64>,
    pub paired_ratio_median: f64,
}

/// The repository's root (the bench's peers are scripts in it).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The Python with GStreamer's bindings (scripts/install-test-deps.sh makes the venv).
fn python() -> PathBuf {
    let venv = PathBuf::from("/opt/blindrelay-venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("/usr/bin/python3")
    }
}

/// The clip every peer sends: made once per bit rate and length with GStreamer
/// (videotestsrc's noise, so VP8 spends the whole rate at 640x480 and 30 frames/s; Opus
/// 32 kbit/s in 20 ms frames), then reused from the temp directory.
fn clip(video_kbps: u32, secs: u64) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("blindrelay-clip-{video_kbps}k-{secs}s.webm"));
    if path.exists() {
        return Ok(path);
    }
    let part = path.with_extension(format!("part{}", std::process::id()));
    let pipeline = format!(
        "videotestsrc num-buffers={frames} pattern=snow \
         ! video/x-raw,width=640,height=480,framerate=30/1 \
         ! vp8enc deadline=1 cpu-used=16 threads=2 end-usage=cbr target-bitrate={bps} \
           keyframe-max-dist=90 \
         ! queue ! webmmux name=m ! filesink location={out} \
         audiotestsrc num-buffers={audio} samplesperbuffer=960 \
         ! audio/x-raw,rate=48000,channels=1 ! opusenc bitrate=32000 frame-size=20 \
         ! queue ! m.",
        frames = secs * 30,
        bps = u64::from(video_kbps) * 1000,
        out = part.display(),
        audio = secs * 50,
    );
    let out = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_whitespace())
        .output()
        .context("run gst-launch-1.0 (apt gstreamer1.0-tools; scripts/install-test-deps.sh)")?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&part);
        bail!(
            "encoding the clip failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::rename(&part, &path).context("keep the clip")?;
    Ok(path)
}

/// What a peer has said: (when read, packets received so far), and whether its output
/// has ended; the reader thread notifies `changed` after each.
#[derive(Default)]
struct Reports {
    seen: Vec<(Instant, u64)>,
    closed: bool,
}

/// One peer process and its reports.
struct Peer {
    child: Child,
    name: String,
    log: PathBuf,
    reports: Arc<(Mutex<Reports>, Condvar)>,
}

impl Peer {
    fn spawn(cpu: usize, script: &Path, args: &[String], name: &str, dir: &Path) -> Result<Peer> {
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &cpu.to_string()])
            .arg(python())
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).context("peer log")?);
        // SAFETY: prctl is async-signal-safe and touches only the child's own state.
        // A bench killed outright must not leave its peers sending for minutes.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| {
            format!("start taskset {} {}", python().display(), script.display())
        })?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("peer stdout not captured"))?;
        let reports = Arc::new((Mutex::new(Reports::default()), Condvar::new()));
        let shared = reports.clone();
        std::thread::spawn(move || {
            let (lock, changed) = &*shared;
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(n) = v.get("rx").and_then(|n| n.as_u64()) {
                    let mut r = lock.lock().unwrap_or_else(|p| p.into_inner());
                    r.seen.push((Instant::now(), n));
                    changed.notify_all();
                }
            }
            lock.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
            changed.notify_all();
        });
        Ok(Peer {
            child,
            name: name.to_string(),
            log,
            reports,
        })
    }

    /// Wait until `ready` holds for this peer's reports (its value then), or its output
    /// ends, or `deadline` passes (None for either).
    fn wait_for<T>(&self, deadline: Instant, ready: impl Fn(&Reports) -> Option<T>) -> Option<T> {
        let (lock, changed) = &*self.reports;
        let mut r = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(v) = ready(&r) {
                return Some(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if r.closed || left.is_zero() {
                return None;
            }
            r = changed
                .wait_timeout(r, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Packets received by `at`, interpolated between the reports either side of it; None
/// until a report after `at` has come.
fn received_by(r: &Reports, at: Instant) -> Option<f64> {
    let after = r.seen.iter().position(|(t, _)| *t >= at)?;
    let (t1, n1) = r.seen[after];
    let Some(&(t0, n0)) = after.checked_sub(1).and_then(|i| r.seen.get(i)) else {
        return Some(n1 as f64);
    };
    let span = t1.duration_since(t0).as_secs_f64();
    let f = if span > 0.0 {
        at.duration_since(t0).as_secs_f64() / span
    } else {
        1.0
    };
    Some(n0 as f64 + (n1 as f64 - n0 as f64) * f)
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How often a peer reports what it received.
const PROGRESS_SECS: f64 = 0.1;
/// How long every peer has to be receiving media after it starts.
const FLOWING_TIMEOUT: Duration = Duration::from_secs(40);
/// Packets a peer has received once video flows: more than a second of Opus alone.
const FLOWING_PACKETS: u64 = 100;

/// A running SFU: the relay in a namespace of its own, or Janus in its.
enum Running {
    /// The Target is stopped before the namespace it stands in goes (fields drop in
    /// order).
    Relay {
        relay: Target,
        _ns: VethNamespace,
    },
    Janus(Janus),
}

impl Running {
    fn pid(&self) -> String {
        match self {
            Running::Relay { relay, .. } => relay.child.id().to_string(),
            Running::Janus(j) => j.pid().to_string(),
        }
    }
}

/// A started SFU and what its peers are told.
struct Started {
    running: Running,
    /// The relay's signalling URL or Janus's WebSocket.
    target: String,
    /// What the relay's tokens are signed with (the development secret and admin token
    /// are refused off loopback).
    secret: String,
    /// The address the relay's peers gather ICE candidates on (this end of its veth).
    local_ip: String,
}

fn start_relay(a: &SideArgs) -> Result<Started> {
    let ns = VethNamespace::create("r", 215)?;
    let path = std::env::temp_dir().join(format!(
        "blindrelay-janus-paced-{}-{:08x}.toml",
        std::process::id(),
        rand::random::<u32>()
    ));
    let ip = ns.there;
    let secret = format!("{:032x}", rand::random::<u128>());
    std::fs::write(
        &path,
        format!(
            "[signal]\nlisten = \"{ip}:0\"\n[admin]\nlisten = \"{ip}:0\"\ntoken = \"{secret}\"\n\
             [media]\nlisten = \"{ip}:0\"\nworkers = 1\nsrtp = \"fast\"\n\
             [auth]\napi_secret = \"{secret}\"\n"
        ),
    )?;
    let t = sweep::spawn_relay_in(
        Some(a.sfu_cpu),
        Some(&ns.name),
        &a.relay_bin,
        &path,
        Some(TempPath(path.clone())),
    )?;
    let url = t
        .signal_url
        .clone()
        .ok_or_else(|| anyhow!("no signalling URL in the relay's banner"))?;
    let local_ip = ns.here.to_string();
    Ok(Started {
        running: Running::Relay { relay: t, _ns: ns },
        target: url,
        secret,
        local_ip,
    })
}

/// The peers of `calls` 1:1 calls on the `sfu` started as `s`, in run `run`.
fn start_peers(
    a: &SideArgs,
    sfu: Sfu,
    s: &Started,
    run: usize,
    clip: &Path,
    dir: &Path,
) -> Result<Vec<Peer>> {
    let root = repo_root();
    let progress = PROGRESS_SECS.to_string();
    // Longer than any phase: the peers are stopped when it ends.
    let duration = "600".to_string();
    let mut peers = Vec::new();
    for call in 0..a.calls {
        for side in ["a", "b"] {
            let name = format!("{sfu:?}-{run}-{call}{side}").to_lowercase();
            let (script, args) = match sfu {
                Sfu::Relay => {
                    let call_id = format!("janus-paced-{run}-{call}");
                    let token = blindrelay::token::issue(
                        &s.secret,
                        &name,
                        "bench",
                        "user",
                        Some(&call_id),
                        Duration::from_secs(3600),
                    )?;
                    (
                        root.join("tests/peers/webrtcbin_peer.py"),
                        vec![
                            "--url".into(),
                            s.target.clone(),
                            "--local-ip".into(),
                            s.local_ip.clone(),
                            "--token".into(),
                            token,
                            "--call".into(),
                            call_id,
                            "--name".into(),
                            name.clone(),
                            "--count-only".into(),
                        ],
                    )
                }
                Sfu::Janus => (
                    root.join("bench/peers/janus_webrtcbin.py"),
                    vec![
                        "--ws".into(),
                        s.target.clone(),
                        "--room".into(),
                        (run * 1000 + call + 1).to_string(),
                        "--name".into(),
                        name.clone(),
                    ],
                ),
            };
            let mut args = args;
            args.extend([
                "--clip".into(),
                clip.display().to_string(),
                "--duration".into(),
                duration.clone(),
                "--progress".into(),
                progress.clone(),
            ]);
            peers.push(Peer::spawn(a.peer_cpu, &script, &args, &name, dir)?);
        }
    }
    Ok(peers)
}

/// Until every peer has received media: video, not only audio (more packets than
/// audio alone brings in its first reports).
fn wait_flowing(peers: &[Peer]) -> Result<()> {
    let deadline = Instant::now() + FLOWING_TIMEOUT;
    for p in peers {
        let flowing = p.wait_for(deadline, |r| {
            r.seen
                .last()
                .filter(|(_, n)| *n >= FLOWING_PACKETS)
                .map(|_| ())
        });
        if flowing.is_none() {
            bail!(
                "peer {} received no media within {FLOWING_TIMEOUT:?} (or exited); see {}",
                p.name,
                p.log.display()
            );
        }
    }
    Ok(())
}

/// Packets all peers had received at `at` (waits for each one's next report).
fn received_at(peers: &[Peer], at: Instant) -> Result<f64> {
    let deadline = at + Duration::from_secs(5);
    let mut total = 0.0;
    for p in peers {
        total += p
            .wait_for(deadline, |r| received_by(r, at))
            .ok_or_else(|| anyhow!("peer {} stopped reporting; see {}", p.name, p.log.display()))?;
    }
    Ok(total)
}

fn phase(a: &SideArgs, sfu: Sfu, run: usize, clip: &Path, dir: &Path) -> Result<SidePhase> {
    let started = match sfu {
        Sfu::Relay => start_relay(a)?,
        Sfu::Janus => {
            let j = Janus::start(Some(a.sfu_cpu))?;
            Started {
                target: j.ws_url(),
                running: Running::Janus(j),
                secret: String::new(),
                local_ip: String::new(),
            }
        }
    };
    measure(a, sfu, run, &started, clip, dir).map_err(|e| match &started.running {
        // Janus's log goes with it: quote its end.
        Running::Janus(j) => e.context(format!("Janus's log ends:\n{}", j.log_tail(20))),
        Running::Relay { .. } => e,
    })
}

/// Run the peers on the started SFU and read its costs over the window.
fn measure(
    a: &SideArgs,
    sfu: Sfu,
    run: usize,
    started: &Started,
    clip: &Path,
    dir: &Path,
) -> Result<SidePhase> {
    let pid = started.running.pid();
    let peers = start_peers(a, sfu, started, run, clip, dir)?;
    wait_flowing(&peers)?;
    std::thread::sleep(a.warmup);
    // One reading of the SFU's and the cores' counters at each edge of the window.
    let read = || -> Result<_> {
        Ok((
            Instant::now(),
            procstat::sample(&pid).ok_or_else(|| anyhow!("{sfu:?}'s /proc is gone"))?,
            procstat::context_switches(&pid),
            procstat::cpu_jiffies(a.peer_cpu),
            procstat::cpu_idle_jiffies(a.sfu_cpu),
        ))
    };
    let (t0, cpu0, sw0, peer0, idle0) = read()?;
    std::thread::sleep(a.window);
    let (t1, cpu1, sw1, peer1, idle1) = read()?;
    let packets = received_at(&peers, t1)? - received_at(&peers, t0)?;
    drop(peers);
    if packets <= 0.0 {
        bail!("{sfu:?}: no packets delivered in the window");
    }
    let secs = t1.duration_since(t0).as_secs_f64();
    let tick = procstat::ticks_per_second();
    let cpu_secs = cpu1.cpu_ticks.saturating_sub(cpu0.cpu_ticks) as f64 / tick;
    let sys_secs = cpu1.sys_ticks.saturating_sub(cpu0.sys_ticks) as f64 / tick;
    // The core's busy time: the window less the time the kernel measured it idle.
    let core_secs = match (idle0, idle1) {
        (Some(i0), Some(i1)) => (secs - i1.saturating_sub(i0) as f64 / tick).max(0.0),
        _ => f64::NAN,
    };
    Ok(SidePhase {
        sfu,
        run,
        delivered_pps: packets / secs,
        cpu_us_per_packet: cpu_secs * 1e6 / packets,
        sys_us_per_packet: sys_secs * 1e6 / packets,
        sfu_core_us_per_packet: core_secs * 1e6 / packets,
        sfu_cpu_pct: procstat::cpu_percent(&cpu0, &cpu1),
        wakeups_per_packet: sw1.0.saturating_sub(sw0.0) as f64 / packets,
        preemptions_per_packet: sw1.1.saturating_sub(sw0.1) as f64 / packets,
        peer_core_busy_pct: procstat::core_busy_percent(peer0, peer1),
    })
}

fn describe(p: &SidePhase) -> String {
    format!(
        "{:?} run {}: {:.0} packets/s delivered, {:.2} µs/packet ({:.2} in the kernel; {:.1} % of a core; its core {:.2} µs/packet in all), {:.3} wake-ups and {:.3} preemptions per packet, peers' core {:.0} % busy",
        p.sfu,
        p.run,
        p.delivered_pps,
        p.cpu_us_per_packet,
        p.sys_us_per_packet,
        p.sfu_cpu_pct,
        p.sfu_core_us_per_packet,
        p.wakeups_per_packet,
        p.preemptions_per_packet,
        p.peer_core_busy_pct
    )
}

pub fn run(a: SideArgs) -> Result<SideReport> {
    if a.calls == 0 || a.runs == 0 {
        bail!("--calls and --runs must each be at least one");
    }
    // The clip outlasts a phase: joins, FLOWING_TIMEOUT at worst, warm-up and window.
    let secs = (a.warmup + a.window + FLOWING_TIMEOUT).as_secs() + 10;
    let clip = clip(a.video_kbps, secs)?;
    let dir = std::env::temp_dir().join(format!("blindrelay-janus-paced-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut phases = Vec::new();
    for run in 0..a.runs {
        // Alternating which goes first, so a drift of the machine falls on both.
        let order = if run % 2 == 0 {
            [Sfu::Relay, Sfu::Janus]
        } else {
            [Sfu::Janus, Sfu::Relay]
        };
        for sfu in order {
            let p = phase(&a, sfu, run, &clip, &dir)
                .with_context(|| format!("{sfu:?}, run {run} (peer logs in {})", dir.display()))?;
            if !a.quiet {
                eprintln!("{}", describe(&p));
            }
            phases.push(p);
        }
    }
    let medians: Vec<SideMedians> = [Sfu::Relay, Sfu::Janus]
        .into_iter()
        .map(|sfu| {
            let of = |f: fn(&SidePhase) -> f64| {
                median(phases.iter().filter(|p| p.sfu == sfu).map(f).collect())
            };
            SideMedians {
                sfu,
                delivered_pps: of(|p| p.delivered_pps),
                cpu_us_per_packet: of(|p| p.cpu_us_per_packet),
                sys_us_per_packet: of(|p| p.sys_us_per_packet),
                sfu_core_us_per_packet: of(|p| p.sfu_core_us_per_packet),
                wakeups_per_packet: of(|p| p.wakeups_per_packet),
            }
        })
        .collect();
    let relay_over_janus = medians[0].cpu_us_per_packet / medians[1].cpu_us_per_packet;
    let paired_ratios: Vec<f64> = (0..a.runs)
        .filter_map(|run| {
            let of = |sfu| phases.iter().find(|p| p.run == run && p.sfu == sfu);
            Some(of(Sfu::Relay)?.cpu_us_per_packet / of(Sfu::Janus)?.cpu_us_per_packet)
        })
        .collect();
    let paired_ratio_median = median(paired_ratios.clone());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(SideReport {
        machine: sweep::cpu_model(),
        calls: a.calls,
        video_kbps: a.video_kbps,
        srtp_profile: "AES128_CM_HMAC_SHA1_80",
        window_secs: a.window.as_secs_f64(),
        phases,
        medians,
        relay_over_janus,
        paired_ratios,
        paired_ratio_median,
    })
}

pub fn print_human(r: &SideReport) {
    println!(
        "{} 1:1 calls of webrtcbin peers ({} kbit/s VP8 clip + Opus each), {}, {} s windows, {}",
        r.calls, r.video_kbps, r.srtp_profile, r.window_secs, r.machine
    );
    for p in &r.phases {
        println!("  {}", describe(p));
    }
    for m in &r.medians {
        println!(
            "  median {:?}: {:.2} µs/packet ({:.2} in the kernel; its core {:.2} in all) at {:.0} packets/s, {:.3} wake-ups/packet",
            m.sfu,
            m.cpu_us_per_packet,
            m.sys_us_per_packet,
            m.sfu_core_us_per_packet,
            m.delivered_pps,
            m.wakeups_per_packet
        );
    }
    println!(
        "  relay / Janus CPU per packet: {:.3} from the medians (Janus uses {:.2}x the relay's); run by run {:?}, median {:.3}",
        r.relay_over_janus,
        1.0 / r.relay_over_janus,
        r.paired_ratios
            .iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>(),
        r.paired_ratio_median
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The side-by-side runs end to end on a small load: one 1:1 call of webrtcbin peers
    /// through the relay (the workspace's debug build, next to this test's directory) and
    /// through Janus, each in its namespace; both deliver what the peers send, and each
    /// phase's CPU per packet is read. Needs root, janus, GStreamer's webrtcbin and
    /// Python bindings (scripts/install-test-deps.sh); missing, it fails and says so.
    #[test]
    fn the_relay_and_janus_each_forward_the_same_webrtcbin_load() {
        let exe = std::env::current_exe().expect("this test's path");
        // target/<profile>/deps/<test> -> target/<profile>/blindrelay
        let relay_bin = exe
            .parent()
            .and_then(Path::parent)
            .expect("the target directory")
            .join("blindrelay");
        assert!(
            relay_bin.exists(),
            "{} not built: cargo test --workspace builds it",
            relay_bin.display()
        );
        let r = run(SideArgs {
            relay_bin,
            calls: 1,
            video_kbps: 2000,
            warmup: Duration::from_secs(1),
            window: Duration::from_secs(3),
            runs: 1,
            sfu_cpu: 0,
            peer_cpu: 1,
            quiet: false,
        })
        .expect("both phases ran");
        assert_eq!(r.phases.len(), 2, "{r:?}");
        // Each of the two peers receives Opus (50 packets/s) and about 2 Mbit/s of VP8
        // in packets of at most 1,200 bytes (over 200 packets/s).
        for p in &r.phases {
            assert!(p.delivered_pps > 400.0, "{p:?}");
            assert!(
                p.cpu_us_per_packet > 0.0 && p.cpu_us_per_packet.is_finite(),
                "{p:?}"
            );
        }
        assert!(
            r.relay_over_janus > 0.0 && r.relay_over_janus.is_finite(),
            "{r:?}"
        );
        assert_eq!(r.paired_ratios.len(), 1, "{r:?}");
    }
}
