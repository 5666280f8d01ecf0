//! `blindrelay-bench link`: CPU per forwarded packet across a node link, beside the
//! single-node path, in one run (issue 20).
//!
//! Two relay processes run as cluster nodes `a` and `b` (one forwarding loop each) with a
//! real `redis-server` as their directory and certificates from a fresh cluster CA. The
//! generator joins two sets of 1:1 calls up front: *single* calls, both legs on node a,
//! and *link* calls, one leg on a and one on b, so that every packet of a link call
//! crosses the a->b or b->a link once. Then it alternates constant-rate phases at the same
//! offered rate, each sending only on its own set's legs, and reads the CPU time
//! (utime + stime from /proc) of both relay processes over each phase's sending time.
//! The figure compared is CPU time per delivered packet, not wall time: the generator and
//! both relays share the machine's cores.

use crate::gen::{Generator, PhaseResult};
use crate::median;
use crate::procstat;
use crate::sweep::{self, Target};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The goal: the link path at most this many times the single-node CPU per packet.
pub const GOAL_RATIO: f64 = 1.5;
/// Warm-up phases tried per call set until its loss is under [`WARM_LOSS_PCT`]: a link
/// call's route and flows are set up asynchronously after the joins.
const WARM_TRIES: usize = 10;
const WARM_PHASE: Duration = Duration::from_secs(1);
const WARM_LOSS_PCT: f64 = 1.0;

#[derive(Debug, Clone)]
pub struct LinkArgs {
    pub relay_bin: PathBuf,
    pub calls: usize,
    pub rate_pps: f64,
    pub duration: Duration,
    pub runs: usize,
    pub quiet: bool,
}

/// One measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct LinkPhase {
    #[serde(flatten)]
    pub phase: PhaseResult,
    /// CPU time of node a's and node b's processes over the sending time, in ms.
    pub cpu_ms_a: f64,
    pub cpu_ms_b: f64,
    /// (cpu_ms_a + cpu_ms_b) per delivered packet, in µs.
    pub cpu_us_per_packet: f64,
}

/// One alternation: a single-node phase and a link phase.
#[derive(Debug, Clone, Serialize)]
pub struct Alternation {
    pub single: LinkPhase,
    pub link: LinkPhase,
    /// link.cpu_us_per_packet / single.cpu_us_per_packet.
    pub ratio: f64,
}

/// Medians over the alternations of one kind of phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseMedians {
    pub cpu_us_per_packet: f64,
    pub cpu_ms_a: f64,
    pub cpu_ms_b: f64,
    pub delivered_pps: f64,
    pub loss_pct: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LinkReport {
    pub machine: String,
    pub calls: usize,
    pub rate_pps: f64,
    pub phase_secs: f64,
    pub packet_bytes: usize,
    pub runs: Vec<Alternation>,
    pub single: PhaseMedians,
    pub link: PhaseMedians,
    /// Median of the alternations' ratios.
    pub ratio_median: f64,
    pub goal_ratio: f64,
    pub goal_met: bool,
}

/// A directory removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let p = std::env::temp_dir().join(format!(
            "blindrelay-link-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` on a unix socket with persistence off, killed (by its pid) and
/// reaped when dropped.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    /// Start one in `dir` and wait until it answers PING.
    fn start(dir: &Path) -> Result<Redis> {
        let sock = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&sock)
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("run redis-server (scripts/install-test-deps.sh installs it)")?;
        let r = Redis {
            child,
            url: format!("unix://{}", sock.display()),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong = std::os::unix::net::UnixStream::connect(&sock)
                .ok()
                .and_then(|mut s| {
                    s.write_all(b"PING\r\n").ok()?;
                    let mut b = [0u8; 7];
                    s.read_exact(&mut b).ok()?;
                    (&b == b"+PONG\r\n").then_some(())
                });
            if pong.is_some() {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer PING within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's pid only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two nodes, their directory and their files; dropped in field order: the nodes
/// stop before Redis, and the directory goes last.
struct Cluster {
    a: Target,
    b: Target,
    _redis: Redis,
    _dir: TempDir,
}

/// Node `id`'s config: loopback listeners on port 0, one forwarding loop, the fast SRTP
/// path, a short heartbeat. Consent is 5 minutes: the generator's legs send no STUN once
/// they drive their sockets, and one set's legs stay silent while the other set's phase
/// runs.
fn node_config(dir: &Path, redis_url: &str, id: &str) -> String {
    let p = |f: &str| dir.join(f).display().to_string();
    format!(
        "[signal]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [media]\nlisten = \"127.0.0.1:0\"\nworkers = 1\nsrtp = \"fast\"\n\
         socket_buffer_bytes = 33554432\n[ice]\nconsent_timeout = \"300s\"\n\
         [cluster]\nnode_id = \"{id}\"\nredis_url = \"{redis_url}\"\n\
         quic_listen = \"127.0.0.1:0\"\nannounce = \"127.0.0.1\"\n\
         ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nheartbeat = \"500ms\"\nnode_ttl = \"2s\"\n",
        p("ca.pem"),
        p(&format!("{id}.pem")),
        p(&format!("{id}.key")),
    )
}

fn start_cluster(relay_bin: &Path) -> Result<Cluster> {
    let dir = TempDir::new()?;
    let redis = Redis::start(&dir.0)?;
    let pki = dir.0.join("pki");
    blindrelay::cluster::pki::init(&pki).context("cluster CA")?;
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        blindrelay::cluster::pki::node_cert(&pki, id)
            .with_context(|| format!("node {id}'s certificate"))?;
        let config = dir.0.join(format!("{id}.toml"));
        std::fs::write(&config, node_config(&pki, &redis.url, id))?;
        // Not pinned: the two nodes and the generator share the machine's cores.
        let t = sweep::spawn_relay(None, relay_bin, &config, None)
            .with_context(|| format!("start node {id}"))?;
        if t.signal_url.is_none() {
            bail!("no signalling URL in node {id}'s banner");
        }
        nodes.push(t);
    }
    let b = nodes.pop().ok_or_else(|| anyhow!("node b not started"))?;
    let a = nodes.pop().ok_or_else(|| anyhow!("node a not started"))?;
    Ok(Cluster {
        a,
        b,
        _redis: redis,
        _dir: dir,
    })
}

fn ticks_ms(a: &procstat::Sample, b: &procstat::Sample) -> f64 {
    b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / procstat::ticks_per_second() * 1e3
}

/// One constant-rate phase on `g`'s legs, with both nodes' CPU time over its sending time.
async fn measured(g: &mut Generator, c: &Cluster, a: &LinkArgs) -> Result<LinkPhase> {
    let (pa, pb) = (sweep::pid(&c.a), sweep::pid(&c.b));
    let read = |pid: &str| procstat::sample(pid).ok_or_else(|| anyhow!("/proc/{pid} unreadable"));
    let (a0, b0) = (read(&pa)?, read(&pb)?);
    let mut after = None;
    let phase = g
        .phase(a.rate_pps, a.duration, || {
            after = Some((procstat::sample(&pa), procstat::sample(&pb)));
        })
        .await?;
    let Some((Some(a1), Some(b1))) = after else {
        bail!("a relay node exited during the phase");
    };
    let (cpu_ms_a, cpu_ms_b) = (ticks_ms(&a0, &a1), ticks_ms(&b0, &b1));
    Ok(LinkPhase {
        cpu_us_per_packet: per_packet_us(cpu_ms_a + cpu_ms_b, phase.received),
        cpu_ms_a,
        cpu_ms_b,
        phase,
    })
}

/// CPU milliseconds spread over `packets`, in µs each (NaN for none delivered).
fn per_packet_us(cpu_ms: f64, packets: u64) -> f64 {
    if packets == 0 {
        f64::NAN
    } else {
        cpu_ms * 1e3 / packets as f64
    }
}

fn medians(v: &[&LinkPhase]) -> PhaseMedians {
    let m = |f: fn(&LinkPhase) -> f64| median(v.iter().map(|p| f(p)).collect());
    PhaseMedians {
        cpu_us_per_packet: m(|p| p.cpu_us_per_packet),
        cpu_ms_a: m(|p| p.cpu_ms_a),
        cpu_ms_b: m(|p| p.cpu_ms_b),
        delivered_pps: m(|p| p.phase.delivered_pps),
        loss_pct: m(|p| p.phase.loss_pct),
        latency_ms_p50: m(|p| p.phase.latency_ms_p50),
        latency_ms_p99: m(|p| p.phase.latency_ms_p99),
    }
}

fn say(a: &LinkArgs, line: &str) {
    if !a.quiet {
        eprintln!("{line}");
    }
}

fn describe(name: &str, p: &LinkPhase) -> String {
    format!(
        "{name:>6}: offered {:>7.0}  delivered {:>7.0} pkt/s  loss {:>6.3} %  p50 {:>6.3} ms  \
         p99 {:>6.3} ms  CPU a {:>6.0} ms  b {:>6.0} ms  -> {:>5.2} µs/packet{}",
        p.phase.offered_pps,
        p.phase.delivered_pps,
        p.phase.loss_pct,
        p.phase.latency_ms_p50,
        p.phase.latency_ms_p99,
        p.cpu_ms_a,
        p.cpu_ms_b,
        p.cpu_us_per_packet,
        if p.phase.decrypt_failures > 0 {
            format!("  {} DECRYPT FAILURES", p.phase.decrypt_failures)
        } else {
            String::new()
        }
    )
}

/// Send warm-up phases until a set of calls delivers (a link call's flows are agreed
/// over the link after the joins), and refuse to measure one that never does.
async fn warm(name: &str, g: &mut Generator, a: &LinkArgs) -> Result<()> {
    let (mut last, mut failures) = (f64::NAN, 0);
    for _ in 0..WARM_TRIES {
        let p = g.phase(a.rate_pps, WARM_PHASE, || {}).await?;
        (last, failures) = (p.loss_pct, p.decrypt_failures);
        if p.loss_pct < WARM_LOSS_PCT && p.decrypt_failures == 0 {
            say(
                a,
                &format!("{name} calls deliver (warm-up loss {last:.3} %)"),
            );
            return Ok(());
        }
    }
    bail!(
        "the {name} calls lose {last:.1} % with {failures} packets failing to decrypt, after \
         {WARM_TRIES} warm-up phases of {} s",
        WARM_PHASE.as_secs_f64()
    )
}

pub async fn run(a: LinkArgs) -> Result<LinkReport> {
    if a.calls == 0 {
        bail!("--calls must be at least 1");
    }
    if !(a.rate_pps.is_finite() && a.rate_pps > 0.0) {
        bail!("--rate must be a positive number");
    }
    if a.duration.is_zero() {
        bail!("--duration must be positive");
    }
    let c = start_cluster(&a.relay_bin)?;
    let url = |t: &Target| t.signal_url.clone().unwrap_or_default();
    let (url_a, url_b) = (url(&c.a), url(&c.b));
    say(
        &a,
        &format!(
            "node a: pid {}, {} (link {}); node b: pid {}, {} (link {})",
            c.a.child.id(),
            url_a,
            c.a.quic.map_or("-".into(), |q| q.to_string()),
            c.b.child.id(),
            url_b,
            c.b.quic.map_or("-".into(), |q| q.to_string()),
        ),
    );
    let secret = blindrelay::config::DEV_API_SECRET;
    let mut single = Generator::join_relay_on(std::slice::from_ref(&url_a), secret, a.calls)
        .await
        .context("join the single-node calls on node a")?;
    let mut link = Generator::join_relay_on(&[url_a.clone(), url_b.clone()], secret, a.calls)
        .await
        .context("join the link calls on nodes a and b")?;
    say(
        &a,
        &format!(
            "{} single-node calls (both legs on a) and {} link calls (a <-> b) joined",
            a.calls, a.calls
        ),
    );
    warm("single-node", &mut single, &a).await?;
    warm("link", &mut link, &a).await?;
    let mut runs = Vec::new();
    for r in 0..a.runs.max(1) {
        // Alternate which goes first, so drift on a shared machine hits both alike.
        let (s, l) = if r % 2 == 0 {
            let s = measured(&mut single, &c, &a).await?;
            (s, measured(&mut link, &c, &a).await?)
        } else {
            let l = measured(&mut link, &c, &a).await?;
            (measured(&mut single, &c, &a).await?, l)
        };
        let ratio = l.cpu_us_per_packet / s.cpu_us_per_packet;
        say(&a, &format!("== run {} of {}", r + 1, a.runs.max(1)));
        say(&a, &describe("single", &s));
        say(&a, &describe("link", &l));
        say(&a, &format!("  link / single: {ratio:.2}"));
        runs.push(Alternation {
            single: s,
            link: l,
            ratio,
        });
    }
    drop(single);
    drop(link);
    drop(c);
    let ratio_median = median(runs.iter().map(|r| r.ratio).collect());
    Ok(LinkReport {
        machine: format!(
            "{} cores, {}",
            // SAFETY: sysconf has no preconditions.
            unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) },
            sweep::cpu_model()
        ),
        calls: a.calls,
        rate_pps: a.rate_pps,
        phase_secs: a.duration.as_secs_f64(),
        packet_bytes: crate::gen::PACKET,
        single: medians(&runs.iter().map(|r| &r.single).collect::<Vec<_>>()),
        link: medians(&runs.iter().map(|r| &r.link).collect::<Vec<_>>()),
        goal_met: ratio_median <= GOAL_RATIO,
        ratio_median,
        goal_ratio: GOAL_RATIO,
        runs,
    })
}

pub fn print_human(r: &LinkReport) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(
        o,
        "link: {} single-node and {} link 1:1 calls, {:.0} packets/s of {} bytes offered per phase, \
         {} s phases, {} alternations; {}",
        r.calls,
        r.calls,
        r.rate_pps,
        r.packet_bytes,
        r.phase_secs,
        r.runs.len(),
        r.machine
    );
    let _ = writeln!(
        o,
        "CPU time (utime + stime) of both relay processes over each phase's sending time, per delivered packet:"
    );
    for (i, run) in r.runs.iter().enumerate() {
        let _ = writeln!(
            o,
            "  run {}: single {:>6.2} µs/packet (loss {:.3} %)   link {:>6.2} µs/packet (loss {:.3} %)   ratio {:.2}",
            i + 1,
            run.single.cpu_us_per_packet,
            run.single.phase.loss_pct,
            run.link.cpu_us_per_packet,
            run.link.phase.loss_pct,
            run.ratio
        );
    }
    for (name, m) in [("single", &r.single), ("link", &r.link)] {
        let _ = writeln!(
            o,
            "median {name:>6}: {:>6.2} µs/packet (a {:.0} ms, b {:.0} ms of CPU), delivered {:.0} pkt/s, \
             loss {:.3} %, p50 {:.3} ms, p99 {:.3} ms",
            m.cpu_us_per_packet,
            m.cpu_ms_a,
            m.cpu_ms_b,
            m.delivered_pps,
            m.loss_pct,
            m.latency_ms_p50,
            m.latency_ms_p99
        );
    }
    let _ = writeln!(
        o,
        "link / single (median of the alternations): {:.2}; goal <= {}: {}",
        r.ratio_median,
        r.goal_ratio,
        if r.goal_met { "met" } else { "NOT met" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_packet_cost_is_cpu_over_delivered_packets() {
        assert_eq!(per_packet_us(500.0, 100_000), 5.0);
        assert!(per_packet_us(500.0, 0).is_nan());
    }

    #[test]
    fn node_config_is_a_cluster_node_the_relay_accepts() {
        let dir = Path::new("/tmp/pki");
        let text = node_config(dir, "unix:///tmp/r.sock", "b");
        let cfg = blindrelay::config::Config::parse(&text).expect("the relay parses it");
        let cluster = cfg.cluster.expect("a [cluster] section");
        assert_eq!(cluster.node_id, "b");
        assert_eq!(cluster.cert, dir.join("b.pem"));
        assert_eq!(cluster.key, dir.join("b.key"));
        assert_eq!(cfg.media.workers, 1);
    }
}
