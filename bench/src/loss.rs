//! `loss`: how video holds up for a receiver whose path loses packets at random.
//!
//! Three pages (the relay's web client in headless Chromium, each sending its fake camera
//! and microphone) join one call through an in-process relay. One of them, the impaired
//! receiver, reaches the relay through [`LossyPath`]: a userspace UDP forwarder that drops
//! each datagram, in each direction, with the given probability (this kernel has no
//! netem). The driver rewrites the host candidates in that page's SDP to the forwarder's
//! address, so its ICE, DTLS and media all cross it. Once all three are in the call and a
//! warm-up has passed, the call is held for a window; over it the impaired receiver's and
//! an unimpaired receiver's reception of the same sender are compared: frames decoded,
//! freezes, NACKs and keyframe requests. The impaired page is not required to decode
//! before the window: on a lossy path it may never start.

use crate::netns::{ip, VethNamespace};
use anyhow::{bail, Context, Result};
use blindrelay::config::Config;
use blindrelay::Relay;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

/// Between everyone joining and the measured window: media starts, the first keyframes.
const WARM_UP: Duration = Duration::from_secs(5);
/// The shaped hop's queue (tbf `latency`): a home router's buffer, not a bufferbloated one.
const SHAPED_LATENCY: Duration = Duration::from_millis(200);

/// Most clients one path serves (each gets its own socket toward the relay).
const MAX_CLIENTS: usize = 16;

/// What a [`LossyPath`] did.
#[derive(Debug, Default)]
pub struct PathCounters {
    pub up_forwarded: AtomicU64,
    pub up_dropped: AtomicU64,
    pub down_forwarded: AtomicU64,
    pub down_dropped: AtomicU64,
}

impl PathCounters {
    /// Datagrams (dropped, forwarded), both ways.
    pub fn totals(&self) -> (u64, u64) {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (
            r(&self.up_dropped) + r(&self.down_dropped),
            r(&self.up_forwarded) + r(&self.down_forwarded),
        )
    }
}

/// A UDP path to `upstream` that loses datagrams at random: like a NAT, each client
/// address gets a socket of its own toward the relay, so the relay sees one 5-tuple per
/// client, as without it.
pub struct LossyPath {
    pub addr: SocketAddr,
    pub counters: Arc<PathCounters>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LossyPath {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LossyPath {
    /// Listen on loopback; forward to `upstream`, dropping each datagram with
    /// probability `loss` (0..1) in each direction, from a generator seeded with `seed`.
    pub async fn start(
        upstream: SocketAddr,
        loss: f64,
        seed: u64,
        shaped: Option<Arc<ShapedHop>>,
    ) -> Result<LossyPath> {
        let listen = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = listen.local_addr()?;
        let counters = Arc::new(PathCounters::default());
        let c = counters.clone();
        let task = tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            let mut downs = Vec::new();
            loop {
                let Ok((n, from)) = listen.recv_from(&mut buf).await else {
                    break;
                };
                let up = match clients.get(&from) {
                    Some(s) => s.clone(),
                    None if clients.len() < MAX_CLIENTS => {
                        // Toward the relay on loopback, from loopback; toward an SFU in a
                        // namespace (Janus), from the address the route there gives (a
                        // loopback source would be dropped on the veth as martian).
                        let Ok(s) = UdpSocket::bind(if upstream.ip().is_loopback() {
                            "127.0.0.1:0"
                        } else {
                            "0.0.0.0:0"
                        })
                        .await
                        else {
                            continue;
                        };
                        if s.connect(upstream).await.is_err() {
                            continue;
                        }
                        let s = Arc::new(s);
                        clients.insert(from, s.clone());
                        let hop = match &shaped {
                            Some(h) => match h.pair() {
                                Ok(p) => Some(p),
                                Err(e) => {
                                    eprintln!("no shaped hop for a client: {e:#}");
                                    continue;
                                }
                            },
                            None => None,
                        };
                        downs.push(tokio::spawn(down(
                            s.clone(),
                            listen.clone(),
                            from,
                            loss,
                            rng.random(),
                            c.clone(),
                            hop,
                        )));
                        s
                    }
                    None => continue,
                };
                if rng.random::<f64>() < loss {
                    c.up_dropped.fetch_add(1, Ordering::Relaxed);
                } else if up.send(&buf[..n]).await.is_ok() {
                    c.up_forwarded.fetch_add(1, Ordering::Relaxed);
                }
            }
            for d in downs {
                d.abort();
            }
        });
        Ok(LossyPath {
            addr,
            counters,
            task,
        })
    }
}

/// The relay-to-client direction for one client: straight to it, or through the
/// shaped hop (out of this namespace's end of the veth, in at the other, then to it).
async fn down(
    up: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    loss: f64,
    seed: u64,
    c: Arc<PathCounters>,
    hop: Option<(UdpSocket, UdpSocket)>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 65_536];
    let through = match hop {
        Some((tx, rx)) => {
            let listen = listen.clone();
            let c = c.clone();
            let task = tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = rx.recv(&mut buf).await {
                    if listen.send_to(&buf[..n], client).await.is_ok() {
                        c.down_forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            Some((tx, AbortOnDrop(task)))
        }
        None => None,
    };
    while let Ok(n) = up.recv(&mut buf).await {
        if rng.random::<f64>() < loss {
            c.down_dropped.fetch_add(1, Ordering::Relaxed);
        } else if let Some((tx, _)) = &through {
            // The kernel's tbf queue drops what it has no room for; what crosses is
            // counted on the far side.
            let _ = tx.send(&buf[..n]).await;
        } else if listen.send_to(&buf[..n], client).await.is_ok() {
            c.down_forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A network namespace the bench creates, joined to this one by a veth pair whose end
/// here has a `tbf` qdisc (this kernel has no netem): datagrams sent from here to the
/// far end cross a real kernel rate limit and queue. Needs root (CAP_NET_ADMIN);
/// removed on drop.
pub struct ShapedHop {
    ns: VethNamespace,
}

impl ShapedHop {
    /// A hop limited to `kbit` kbit/s with a queue of `latency` (tbf's own terms).
    pub fn create(kbit: u32, latency: Duration) -> Result<ShapedHop> {
        let ns = VethNamespace::create("s", 213)?;
        ip(&[
            "tc",
            "qdisc",
            "add",
            "dev",
            &ns.dev,
            "root",
            "tbf",
            "rate",
            &format!("{kbit}kbit"),
            "burst",
            "12kb",
            "latency",
            &format!("{}ms", latency.as_millis()),
        ])?;
        Ok(ShapedHop { ns })
    }

    /// A socket here and one in the namespace, connected to each other across the veth.
    fn pair(&self) -> Result<(UdpSocket, UdpSocket)> {
        let there = self.ns.there;
        let path = format!("/var/run/netns/{}", self.ns.name);
        // A thread of its own enters the namespace to make the far socket (a socket stays
        // in the namespace it was made in), then ends.
        let rx = std::thread::spawn(move || -> Result<std::net::UdpSocket> {
            let f = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd; it changes only this thread.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            Ok(std::net::UdpSocket::bind((there, 0))?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))??;
        let tx = std::net::UdpSocket::bind((self.ns.here, 0))?;
        tx.connect(rx.local_addr()?)?;
        rx.connect(tx.local_addr()?)?;
        for s in [&tx, &rx] {
            s.set_nonblocking(true)?;
        }
        Ok((UdpSocket::from_std(tx)?, UdpSocket::from_std(rx)?))
    }
}

pub struct LossArgs {
    pub loss_pct: f64,
    pub hold: Duration,
    pub runs: usize,
    pub seed: u64,
    pub driver: PathBuf,
    pub timeout: Duration,
    /// Where to keep each run's driver output and relay metrics.
    pub logs: Option<PathBuf>,
    /// An MLS call of the three pages instead of a standard one.
    pub e2ee: bool,
    /// The impaired receiver's downlink also crosses a kernel rate limit (tbf) of this
    /// many kbit/s (see [`ShapedHop`]).
    pub shape_kbit: Option<u32>,
    /// Each run is also made through Janus 1.1.2 (VideoRoom), right after the relay's, with
    /// the same pages, paths and impairment (a standard call there: Janus has no E2EE).
    pub janus: bool,
}

/// One receiver's reception of the sender's video over the held window.
#[derive(Debug, Clone, Serialize)]
pub struct Reception {
    pub frames_decoded: u64,
    pub freezes: u64,
    pub freeze_s: f64,
    pub packets_lost: i64,
    pub nacks_sent: u64,
    pub plis_sent: u64,
    pub retransmitted_received: u64,
    pub key_frames_decoded: u64,
    /// E2EE: frames the page opened, and failed to open, over the window (from everyone).
    pub frames_decrypted: u64,
    pub decrypt_failures: u64,
    /// E2EE: frames refused as already opened (a retransmission that came after its
    /// frame was assembled: the browser assembles it again).
    pub frames_replayed: u64,
    /// Retransmissions the page received from every sender (a replayed frame needs one).
    pub all_retransmitted_received: u64,
    /// The sender's picture height at the end of the window (which layer it is sent).
    pub frame_height: u64,
    /// The sender's audio packets received over the window, and the share of samples
    /// concealed (0 where the page played none).
    pub audio_packets: u64,
    pub audio_concealed: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LossRun {
    /// The relay's drops over the run, by reason (`blindrelay_packets_dropped_total`).
    pub relay_drops: std::collections::BTreeMap<String, f64>,
    pub clean: Reception,
    pub lossy: Reception,
    /// lossy / clean frames decoded.
    pub frames_ratio: f64,
    /// The sender's retransmissions over the window (answers to NACKs reaching it).
    pub sender_retransmitted: u64,
    pub path_dropped: u64,
    pub path_forwarded: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LossReport {
    pub loss_pct: f64,
    pub hold_s: f64,
    pub runs: Vec<LossRun>,
    pub median_frames_ratio: f64,
    /// With `--janus`: the same runs through Janus, each right after the relay's.
    pub janus_runs: Vec<LossRun>,
    pub median_janus_frames_ratio: Option<f64>,
}

/// The SFU a run goes through.
enum Sfu<'a> {
    Relay(&'a Relay, &'a Config),
    Janus(&'a crate::janus::Janus),
}

pub async fn run(relay: &Relay, cfg: &Config, a: LossArgs) -> Result<LossReport> {
    crate::check_driver(&a.driver)?;
    let janus = match a.janus {
        true => Some(crate::janus::Janus::start(None)?),
        false => None,
    };
    let mut runs = Vec::new();
    let mut janus_runs = Vec::new();
    for n in 0..a.runs {
        let r = one_run(&Sfu::Relay(relay, cfg), &a, n)
            .await
            .with_context(|| format!("run {}", n + 1))?;
        report_run("relay", n, &r);
        runs.push(r);
        if let Some(j) = &janus {
            let r = one_run(&Sfu::Janus(j), &a, n).await.with_context(|| {
                format!("janus run {}; Janus's log ends:\n{}", n + 1, j.log_tail(20))
            })?;
            report_run("janus", n, &r);
            janus_runs.push(r);
        }
    }
    Ok(LossReport {
        loss_pct: a.loss_pct,
        hold_s: a.hold.as_secs_f64(),
        median_frames_ratio: crate::median(runs.iter().map(|r| r.frames_ratio).collect()),
        runs,
        median_janus_frames_ratio: (!janus_runs.is_empty())
            .then(|| crate::median(janus_runs.iter().map(|r| r.frames_ratio).collect())),
        janus_runs,
    })
}

fn report_run(sfu: &str, n: usize, r: &LossRun) {
    eprintln!(
            "{sfu} run {}: frames decoded, lossy/clean {} / {} = {:.2}; freezes {} vs {}; NACKs {} vs {}; path dropped {} of {}",
            n + 1,
            r.lossy.frames_decoded,
            r.clean.frames_decoded,
            r.frames_ratio,
            r.lossy.freezes,
            r.clean.freezes,
            r.lossy.nacks_sent,
            r.clean.nacks_sent,
            r.path_dropped,
            r.path_dropped + r.path_forwarded
        );
}

/// The impaired page's way to the SFU: one lossy path to the relay's one media port, or
/// one made per address Janus names.
enum Impaired {
    Path(LossyPath),
    Via(crate::janus::ViaServer),
}

async fn one_run(sfu: &Sfu<'_>, a: &LossArgs, n: usize) -> Result<LossRun> {
    let hop = match a.shape_kbit {
        Some(kbit) => Some(Arc::new(ShapedHop::create(kbit, SHAPED_LATENCY)?)),
        None => None,
    };
    let (loss, seed) = (a.loss_pct / 100.0, a.seed.wrapping_add(n as u64));
    let call = format!("loss-bench-{n}");
    let (impaired, via, urls) = match sfu {
        Sfu::Relay(relay, cfg) => {
            let path = LossyPath::start(relay.media_addr, loss, seed, hop).await?;
            let via = path.addr.to_string();
            let url = |user: &str| -> Result<String> {
                let t = crate::bench_token(cfg, user, &call)?;
                Ok(format!(
                    "http://{}/?call={call}&token={t}&autojoin=1{}",
                    relay.signal_addr,
                    if a.e2ee { "&e2ee=1&scheme=mls" } else { "" }
                ))
            };
            let urls = [
                url(&format!("sender{n}"))?,
                url(&format!("clean{n}"))?,
                url(&format!("lossy{n}"))?,
            ];
            (Impaired::Path(path), via, urls)
        }
        Sfu::Janus(j) => {
            let v = crate::janus::ViaServer::start(loss, seed, hop).await?;
            let via = v.url.clone();
            let room = 1000 + n as u64;
            let urls = [
                j.page_url(room, &format!("sender{n}")),
                j.page_url(room, &format!("clean{n}")),
                j.page_url(room, &format!("lossy{n}")),
            ];
            (Impaired::Via(v), via, urls)
        }
    };
    // Everyone in the call (E2EE: in one group, opening each other's frames) before the
    // warm-up. The impaired page must not have to decode first: on a lossy path it may
    // never.
    let until: &[&str] = match sfu {
        Sfu::Relay(..) if a.e2ee => &["--until", "group:3", "--min-decrypted", "1"],
        _ => &["--until", "participants", "--min-participants", "2"],
    };
    let metrics = || match sfu {
        Sfu::Relay(relay, _) => relay.metrics_text(),
        Sfu::Janus(_) => String::new(),
    };
    let before = metrics();
    let out = tokio::process::Command::new("node")
        .arg(&a.driver)
        .args(["--page", &urls[0]])
        .args(["--page", &urls[1]])
        .args(["--page", &urls[2]])
        .args(["--media-via", &format!("2={via}")])
        // Everyone in, a warm-up for media to start, then the measured window.
        .args(until)
        .args(["--hold", &WARM_UP.as_secs().to_string()])
        .args(["--hold", &a.hold.as_secs().to_string()])
        .args(["--timeout", &a.timeout.as_secs().to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .context("run node (the page driver)")?;
    if let Some(dir) = &a.logs {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        for (ext, bytes) in [
            ("driver.out", &out.stdout[..]),
            ("driver.err", &out.stderr[..]),
            ("metrics", metrics().as_bytes()),
        ] {
            let sfu = match sfu {
                Sfu::Relay(..) => "relay",
                Sfu::Janus(_) => "janus",
            };
            let f = dir.join(format!("{sfu}-run-{n}.{ext}"));
            std::fs::write(&f, bytes).with_context(|| format!("write {}", f.display()))?;
        }
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let pages: Vec<Value> = serde_json::from_str(line)
        .with_context(|| format!("the page driver's report: {line:.200}"))?;
    if !out.status.success() || pages.len() != 3 {
        bail!(
            "the pages did not all join in {:?}: {}",
            a.timeout,
            pages
                .iter()
                .map(|p| format!(
                    "joined {} participants {} error {} message {}",
                    p["state"]["joined"],
                    p["state"]["participants"],
                    p["state"]["error"],
                    p["message"]
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    // steps[1]: after the warm-up; steps[2]: after the window.
    let state = |p: usize, step: usize| &pages[p]["steps"][step + 1]["state"];
    let sender = state(0, 0)["participant"]
        .as_str()
        .context("the sender joined")?
        .to_string();
    let page_delta = |p: usize, k: &str| {
        let at = |step: usize| state(p, step)[k].as_u64().unwrap_or(0);
        at(1).saturating_sub(at(0))
    };
    let reception = |p: usize| -> Reception {
        // No stats for the sender's stream yet: nothing received or decoded (zeros).
        let inbound = |step: usize, kind: &str| -> Value {
            state(p, step)["inbound"]
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .find(|i| i["kind"] == kind && i["participant"] == sender.as_str())
                        .cloned()
                })
                .unwrap_or(Value::Null)
        };
        let video = |step: usize| inbound(step, "video");
        let audio = |step: usize| inbound(step, "audio");
        let (ab, ae) = (audio(0), audio(1));
        let ad = |k: &str| {
            ae[k]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(ab[k].as_u64().unwrap_or(0))
        };
        let (b, e) = (video(0), video(1));
        let d = |k: &str| {
            e[k].as_u64()
                .unwrap_or(0)
                .saturating_sub(b[k].as_u64().unwrap_or(0))
        };
        Reception {
            frames_decoded: d("framesDecoded"),
            freezes: d("freezeCount"),
            freeze_s: e["totalFreezesDuration"].as_f64().unwrap_or(0.0)
                - b["totalFreezesDuration"].as_f64().unwrap_or(0.0),
            packets_lost: e["packetsLost"].as_i64().unwrap_or(0)
                - b["packetsLost"].as_i64().unwrap_or(0),
            nacks_sent: d("nackCount"),
            plis_sent: d("pliCount"),
            retransmitted_received: d("retransmittedPacketsReceived"),
            key_frames_decoded: d("keyFramesDecoded"),
            frame_height: e["frameHeight"].as_u64().unwrap_or(0),
            audio_packets: ad("packetsReceived"),
            audio_concealed: ad("concealedSamples") as f64
                / ad("totalSamplesReceived").max(1) as f64,
            frames_decrypted: page_delta(p, "frames_decrypted"),
            decrypt_failures: page_delta(p, "decrypt_failures"),
            frames_replayed: page_delta(p, "frames_replayed"),
            all_retransmitted_received: {
                let sum = |step: usize| -> u64 {
                    state(p, step)["inbound"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|i| i["retransmittedPacketsReceived"].as_u64().unwrap_or(0))
                                .sum()
                        })
                        .unwrap_or(0)
                };
                sum(1).saturating_sub(sum(0))
            },
        }
    };
    let (clean, lossy) = (reception(1), reception(2));
    let sent = |step: usize| -> u64 {
        state(0, step)["outbound"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|o| o["kind"] == "video")
                    .map(|o| o["retransmittedPacketsSent"].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    };
    let after = metrics();
    let (path_dropped, path_forwarded) = match &impaired {
        Impaired::Path(p) => p.counters.totals(),
        Impaired::Via(v) => v.totals(),
    };
    Ok(LossRun {
        relay_drops: drops(&after)
            .into_iter()
            .map(|(k, v)| {
                let was = drops(&before).get(&k).copied().unwrap_or(0.0);
                (k, v - was)
            })
            .filter(|(_, v)| *v > 0.0)
            .collect(),
        frames_ratio: lossy.frames_decoded as f64 / clean.frames_decoded.max(1) as f64,
        clean,
        lossy,
        sender_retransmitted: sent(1).saturating_sub(sent(0)),
        path_dropped,
        path_forwarded,
    })
}

/// `blindrelay_packets_dropped_total` by reason, from Prometheus text.
fn drops(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("blindrelay_packets_dropped_total{reason=\"")?;
            let (reason, rest) = rest.split_once('"')?;
            let v = rest.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((reason.to_string(), v))
        })
        .collect()
}

pub fn print_human(r: &LossReport) {
    println!(
        "{}% random loss each way on one receiver's path, {} s held",
        r.loss_pct, r.hold_s
    );
    for (sfu, runs) in [("relay", &r.runs), ("janus", &r.janus_runs)] {
        if runs.is_empty() {
            continue;
        }
        println!("{sfu}:");
        println!("run  receiver  frames  freezes  freeze s  height  lost  NACKs  PLIs  rtx recv  keyframes  audio pkts  concealed  opened  failed");
        for (i, run) in runs.iter().enumerate() {
            for (name, x) in [("clean", &run.clean), ("lossy", &run.lossy)] {
                println!(
                    "{:<4} {name:<9} {:>6}  {:>7}  {:>8.1}  {:>6}  {:>4}  {:>5}  {:>4}  {:>8}  {:>9}  {:>10}  {:>8.1}%  {:>6}  {:>6}",
                    i + 1,
                    x.frames_decoded,
                    x.freezes,
                    x.freeze_s,
                    x.frame_height,
                    x.packets_lost,
                    x.nacks_sent,
                    x.plis_sent,
                    x.retransmitted_received,
                    x.key_frames_decoded,
                    x.audio_packets,
                    x.audio_concealed * 100.0,
                    x.frames_decrypted,
                    x.decrypt_failures,
                );
            }
            println!(
                "     lossy/clean frames {:.2}; the sender retransmitted {}; the path dropped {} of {}",
                run.frames_ratio,
                run.sender_retransmitted,
                run.path_dropped,
                run.path_dropped + run.path_forwarded
            );
            if sfu == "relay" {
                println!("     relay drops: {:?}", run.relay_drops);
            }
        }
    }
    println!(
        "median lossy/clean frames: relay {:.2}",
        r.median_frames_ratio
    );
    if let Some(j) = r.median_janus_frames_ratio {
        println!("median lossy/clean frames: janus {j:.2}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One run of the three pages in an MLS call (20 s held), the impaired receiver's path
    /// losing `loss_pct` % each way and shaped to `shape_kbit`; the run and the relay's
    /// metrics after it. Needs headless Chromium and the page driver
    /// (scripts/install-test-deps.sh); missing, it fails and says so.
    fn chromium_run(loss_pct: f64, shape_kbit: Option<u32>) -> (LossRun, String) {
        // One run at a time: six pages on two cores starve every decoder, the unimpaired
        // receiver's too (both tests failed together that way).
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let driver = root.join("tests/peers/chromium/web.mjs");
        let hint = "run scripts/install-test-deps.sh";
        assert!(
            root.join("tests/peers/chromium/node_modules/playwright-core")
                .exists(),
            "the page driver's playwright-core is not installed: {hint}"
        );
        assert!(
            std::path::Path::new("/usr/bin/chromium").exists(),
            "/usr/bin/chromium not found: {hint}"
        );
        let ip = crate::InProcess::start().expect("an in-process relay");
        let args = LossArgs {
            loss_pct,
            hold: Duration::from_secs(20),
            runs: 1,
            seed: 1,
            driver,
            timeout: Duration::from_secs(60),
            logs: None,
            e2ee: true,
            shape_kbit,
            janus: false,
        };
        let r = ip
            .client_rt
            .block_on(one_run(&Sfu::Relay(&ip.relay, &ip.cfg), &args, 0))
            .expect("the three pages ran (a shaped path's namespace needs root)");
        let metrics = ip.relay.metrics_text();
        ip.finish(Ok(())).expect("the relay shuts down");
        (r, metrics)
    }

    /// Issue 22's loss bar, on real parts: three Chromium pages in one end-to-end
    /// encrypted call (an MLS group) through an in-process relay, one receiver behind a
    /// path that drops 3 % of datagrams each way. Over 20 s it decodes at least 90 % of
    /// the frames an unimpaired receiver of the same sender decodes, because its NACKs
    /// are answered from the relay's cache on its RTX stream: it sends NACKs, receives
    /// retransmissions, the relay counts them sent, and not one frame fails to open
    /// (before NACK/RTX it decoded about a fifth, bench/RESULTS.md). Needs headless
    /// Chromium and the page driver (scripts/install-test-deps.sh); missing, the test
    /// fails and says so.
    #[test]
    fn a_receiver_on_a_lossy_path_decodes_as_a_clean_one_does() {
        let (r, metrics) = chromium_run(3.0, None);
        let sent = metrics
            .lines()
            .find_map(|l| l.strip_prefix("blindrelay_retransmissions_total{result=\"sent\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        let report = format!("{r:?}; retransmissions sent {sent}");
        assert!(r.path_dropped > 0, "the path dropped nothing: {report}");
        assert!(r.clean.frames_decoded > 200, "{report}");
        assert!(
            r.lossy.nacks_sent > 0,
            "no NACK from the lossy receiver: {report}"
        );
        assert!(
            r.lossy.retransmitted_received > 0,
            "no retransmission reached it: {report}"
        );
        assert!(sent > 0.0, "the relay sent no retransmission: {report}");
        assert!(r.lossy.frames_decrypted > 0, "{report}");
        assert_eq!(r.lossy.decrypt_failures, 0, "{report}");
        assert_eq!(r.clean.decrypt_failures, 0, "{report}");
        // A frame opened twice needs a retransmission that came after its frame: never
        // more of them than retransmissions the page received.
        for x in [&r.lossy, &r.clean] {
            assert!(
                x.frames_replayed <= x.all_retransmitted_received,
                "{report}"
            );
        }
        assert!(r.frames_ratio >= 0.9, "lossy/clean frames: {report}");
    }

    /// A receiver whose downlink crosses a real kernel rate limit of 600 kbit/s (tbf on a
    /// veth into a network namespace this test makes: it needs root, as CI has) receives
    /// an MLS call of two senders that simulcast (240 and 480 lines). From its own
    /// transport-cc feedback the relay sends it the lower layer of each while an
    /// unshaped receiver keeps the top one; its video keeps decoding and its audio keeps
    /// coming, and every frame opens. A raise toward the top layer is probed with padding
    /// first, and the shaped path congests the probe, not the picture. Needs headless
    /// Chromium and the page driver (scripts/install-test-deps.sh); missing, the test
    /// fails and says so.
    #[test]
    fn a_receiver_on_a_600_kbit_link_is_sent_the_lower_layer_and_keeps_decoding() {
        let (r, metrics) = chromium_run(0.0, Some(600));
        let value = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let estimates = value("blindrelay_receiver_estimate_bps_count");
        let congested = value("blindrelay_bandwidth_probes_total{result=\"congested\"}");
        let padding = value("blindrelay_probe_padding_packets_total");
        let report = format!(
            "{r:?}; estimates {estimates}; probes congested {congested}, padding {padding}"
        );
        assert!(estimates > 0.0, "no receiver was estimated: {report}");
        // Once its path had been clear a while the relay tried for the top layer with
        // padding first, and the shaped path could not carry it.
        assert!(
            congested >= 1.0 && padding > 0.0,
            "no probe congested: {report}"
        );
        assert_eq!(
            r.clean.frame_height, 480,
            "unshaped: the top layer: {report}"
        );
        assert_eq!(
            r.lossy.frame_height, 240,
            "shaped: the lower layer: {report}"
        );
        assert!(r.clean.frames_decoded > 200, "{report}");
        assert!(
            r.frames_ratio >= 0.6,
            "shaped/unshaped frames decoded: {report}"
        );
        assert!(r.lossy.freeze_s <= 8.0, "frozen too long: {report}");
        assert!(
            r.lossy.audio_packets * 10 >= r.clean.audio_packets * 9,
            "audio lost: {report}"
        );
        assert!(r.lossy.frames_decrypted > 0, "{report}");
        assert_eq!(r.lossy.decrypt_failures, 0, "{report}");
        assert_eq!(r.clean.decrypt_failures, 0, "{report}");
    }

    /// The path forwards both ways and drops about the fraction asked, counted.
    #[tokio::test]
    async fn the_path_forwards_both_ways_and_drops_at_random() {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let path = LossyPath::start(server.local_addr().expect("addr"), 0.25, 7, None)
            .await
            .expect("path");
        // The server echoes whatever reaches it; the client counts what comes back.
        let echoed = Arc::new(AtomicU64::new(0));
        let e = echoed.clone();
        let echo = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = server.recv_from(&mut buf).await {
                e.fetch_add(1, Ordering::Relaxed);
                let _ = server.send_to(&buf[..n], from).await;
            }
        });
        let client = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let back = Arc::new(AtomicU64::new(0));
        let (b, rx) = (back.clone(), client.clone());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while rx.recv_from(&mut buf).await.is_ok() {
                b.fetch_add(1, Ordering::Relaxed);
            }
        });
        for i in 0..2000u32 {
            client
                .send_to(&i.to_be_bytes(), path.addr)
                .await
                .expect("send");
            tokio::task::yield_now().await;
        }
        let c = path.counters.clone();
        let load = |x: &AtomicU64| x.load(Ordering::Relaxed);
        let settled = || {
            load(&c.up_forwarded) + load(&c.up_dropped) == 2000
                && load(&echoed) == load(&c.up_forwarded)
                && load(&c.down_forwarded) + load(&c.down_dropped) == load(&echoed)
                && load(&back) == load(&c.down_forwarded)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !settled() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            settled(),
            "up {} + {}, echoed {}, down {} + {}, back {}",
            load(&c.up_forwarded),
            load(&c.up_dropped),
            load(&echoed),
            load(&c.down_forwarded),
            load(&c.down_dropped),
            load(&back)
        );
        // 25 % each way: 1,500 expected through (binomial sd ~19), 1,125 back (sd ~17).
        let (got, back) = (load(&echoed), load(&back));
        assert!((1400..1600).contains(&got), "{got}");
        assert!((1040..1210).contains(&back), "{back}");
        echo.abort();
        reader.abort();
    }
}
