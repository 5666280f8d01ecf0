//! `blindrelay-bench paced`: CPU per forwarded packet at the load real calls make (issue
//! 23), not the sweep's bursts.
//!
//! Many 1:1 calls, each participant joined for real (signalling, ICE, DTLS) and sending
//! what a browser sends: Opus audio, one packet every 20 ms, and VP8 video at 30 frames/s,
//! each frame split into 1-10 packets as libwebrtc splits it (equal parts of at most
//! [`MAX_PAYLOAD`] bytes, the last with the marker bit), a key frame every
//! [`KEY_FRAME_EVERY`] frames. So most of the relay's wake-ups carry one packet or one
//! frame, which GRO and GSO batch far less than the sweep's bursts.
//!
//! The relay runs pinned to one core with one forwarding loop (or unpinned with `workers`
//! loops); per measured phase the bench reads from /proc its CPU time (utime + stime), its
//! threads' context switches (voluntary: the thread slept and was woken, so one wake-up
//! each; involuntary: preempted), and divides each by the packets delivered. Its core's
//! busy time is not used: on loopback the kernel delivers each datagram in the sender's
//! context (the generator's core for what the relay receives), and other work on the
//! machine lands on the relay's core too (readings of 4-37 µs/packet in one run). Latency is one way, from the send time sealed in a sample of the packets.

use crate::gen::{join, percentile_us, recv_task, wait_answered, AbortOnDrop, Joined, LegStats};
use crate::median;
use crate::procstat;
use crate::sweep::{self, Target};
use anyhow::{anyhow, bail, Context, Result};
use blindrelay_protocol::sdp::{AUDIO_PT, VIDEO_PT};
use blindrelay_transport::fast_srtp::FastSrtpContext;
use blindrelay_transport::webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use e2ee_client::transport::MediaPath;
use quinn_udp::{UdpSockRef, UdpSocketState};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// Audio: one Opus packet per 20 ms, of this many bytes of RTP payload (about 32 kbit/s).
const AUDIO_PAYLOAD: usize = 80;
const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
const AUDIO_TS_STEP: u32 = 960;
/// Video: 30 frames/s.
const FRAME_INTERVAL: Duration = Duration::from_nanos(1_000_000_000 / 30);
const VIDEO_TS_STEP: u32 = 3000;
/// libwebrtc's VP8 packetizer keeps a packet's payload under about this much.
const MAX_PAYLOAD: usize = 1_100;
/// At most this many packets per frame (a key frame's share is capped here).
const MAX_FRAME_PACKETS: usize = 10;
/// One key frame per 3 s, five times a delta frame's size (capped by the packet count).
const KEY_FRAME_EVERY: u64 = 90;
const KEY_FRAME_FACTOR: f64 = 5.0;
const RTP_HEADER: usize = 12;
const SOCKET_BUFFER: usize = 1 << 20;
/// A phase's wait for the packets still in flight after its last send.
const DRAIN: Duration = Duration::from_millis(250);

/// The SRTP profile every participant of a run offers (and so the relay uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Profile {
    /// AEAD_AES_128_GCM: the relay's in-place path.
    Gcm,
    /// AES128_CM_HMAC_SHA1_80: what webrtcbin, Janus and many native stacks offer.
    Cm,
}

impl Profile {
    fn dtls(self) -> SrtpProtectionProfile {
        match self {
            Profile::Gcm => SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            Profile::Cm => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PacedArgs {
    pub relay_bin: PathBuf,
    pub calls: usize,
    pub video_kbps: u32,
    pub duration: Duration,
    pub runs: usize,
    pub profiles: Vec<Profile>,
    /// The relay's forwarding loops; with 1 it is pinned to `relay_cpu`.
    pub workers: usize,
    pub relay_cpu: usize,
    /// The generator's core (its sending thread and its runtime).
    pub gen_cpu: usize,
    pub quiet: bool,
}

/// A leg's sending context, in place for either profile (as the relay's own).
struct Sealer(Box<FastSrtpContext>);

impl Sealer {
    /// Seal the clear RTP packet `buf[..len]` where it lies; returns the sealed packet.
    fn seal<'a>(&mut self, buf: &'a mut [u8], len: usize) -> Result<&'a [u8]> {
        let n = self
            .0
            .protect_rtp_in(buf, len)
            .map_err(|e| anyhow!("SRTP protect: {e}"))?;
        Ok(&buf[..n])
    }
}

/// One RTP stream's numbering.
struct Stream {
    ssrc: u32,
    pt: u8,
    seq: u16,
    ts: u32,
}

impl Stream {
    fn new(ssrc: u32, pt: u8) -> Stream {
        Stream {
            ssrc,
            pt,
            seq: rand::random(),
            ts: rand::random(),
        }
    }

    /// Write the next packet's clear header and send time into `buf`; returns its length
    /// (header + `payload` bytes).
    fn write(&mut self, buf: &mut [u8], payload: usize, marker: bool, sent_ns: u64) -> usize {
        self.seq = self.seq.wrapping_add(1);
        buf[0] = 0x80;
        buf[1] = self.pt | if marker { 0x80 } else { 0 };
        buf[2..4].copy_from_slice(&self.seq.to_be_bytes());
        buf[4..8].copy_from_slice(&self.ts.to_be_bytes());
        buf[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        buf[RTP_HEADER..RTP_HEADER + 8].copy_from_slice(&sent_ns.to_be_bytes());
        RTP_HEADER + payload.max(8)
    }
}

/// The video encoder's model: each frame's size, in packets and bytes per packet.
#[derive(Debug, Clone, Copy)]
struct Encoder {
    /// A delta frame's mean size in bytes.
    mean_frame: f64,
}

impl Encoder {
    fn new(kbps: u32) -> Encoder {
        Encoder {
            mean_frame: f64::from(kbps) * 1000.0 / 8.0 / 30.0,
        }
    }

    /// Frame `n`'s packets: (count, payload bytes of each). Delta frames vary by ±50 %
    /// around the mean, as a real encoder's do at a steady rate.
    fn frame(&self, n: u64) -> (usize, usize) {
        let bytes = if n.is_multiple_of(KEY_FRAME_EVERY) {
            self.mean_frame * KEY_FRAME_FACTOR
        } else {
            self.mean_frame * (0.5 + rand::random::<f64>())
        };
        let bytes = (bytes as usize).clamp(100, MAX_PAYLOAD * MAX_FRAME_PACKETS);
        let count = bytes.div_ceil(MAX_PAYLOAD).clamp(1, MAX_FRAME_PACKETS);
        (count, bytes.div_ceil(count))
    }
}

/// What a participant sends, driven by the sending thread.
struct Sending {
    /// The leg's socket (non-blocking; the thread writes it directly).
    socket: Arc<UdpSocket>,
    dest: SocketAddr,
    sealer: Sealer,
    audio: Stream,
    video: Stream,
    next_audio: Instant,
    next_frame: Instant,
    frames: u64,
}

/// One participant.
struct Leg {
    /// Taken by the sending thread for a phase, and handed back.
    sending: Option<Sending>,
    stats: Arc<LegStats>,
    recv_task: Option<tokio::task::JoinHandle<()>>,
    /// Its signalling and DTLS: dropping them would end the participant.
    _keep: (AbortOnDrop, MediaPath),
}

impl Drop for Leg {
    fn drop(&mut self) {
        if let Some(t) = self.recv_task.take() {
            t.abort();
        }
    }
}

impl Sending {
    /// The next time this participant has something to send.
    fn due(&self) -> Instant {
        self.next_audio.min(self.next_frame)
    }

    /// Send what is due at `now`: an audio packet, a frame's packets back to back (as
    /// libwebrtc's pacer sends a small frame), or both. A late call skips ahead rather
    /// than bursting, as a real sender's capture would. Returns the packets sent.
    fn send_due(
        &mut self,
        now: Instant,
        epoch: Instant,
        enc: &Encoder,
        clear: &mut [u8],
    ) -> Result<u64> {
        let mut sent = 0;
        if now >= self.next_audio {
            self.next_audio = (self.next_audio + AUDIO_INTERVAL).max(now);
            self.audio.ts = self.audio.ts.wrapping_add(AUDIO_TS_STEP);
            let ns = epoch.elapsed().as_nanos() as u64;
            let len = self.audio.write(clear, AUDIO_PAYLOAD, true, ns);
            let pkt = self.sealer.seal(clear, len)?;
            send(&self.socket, self.dest, pkt)?;
            sent += 1;
        }
        if now >= self.next_frame {
            self.next_frame = (self.next_frame + FRAME_INTERVAL).max(now);
            self.video.ts = self.video.ts.wrapping_add(VIDEO_TS_STEP);
            let (count, payload) = enc.frame(self.frames);
            self.frames += 1;
            for i in 0..count {
                let ns = epoch.elapsed().as_nanos() as u64;
                let len = self.video.write(clear, payload, i + 1 == count, ns);
                let pkt = self.sealer.seal(clear, len)?;
                send(&self.socket, self.dest, pkt)?;
                sent += 1;
            }
        }
        Ok(sent)
    }
}

/// One datagram, one sendto, as a browser's sender makes; a full socket buffer is waited
/// out (it does not happen at these rates).
fn send(socket: &UdpSocket, dest: SocketAddr, pkt: &[u8]) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(socket);
    let to = socket2::SockAddr::from(dest);
    loop {
        match sock.send_to(pkt, &to) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => return Err(e),
        }
    }
}

/// Send for `duration`, each packet at its own due time: every participant keeps its own
/// clock (a random phase in the frame interval), so packets reach the relay spread out as
/// independent senders' do, not in the lockstep of a shared tick. Runs on its own thread
/// (pinned to `cpu`) with a 1 µs timer slack, so sleeps end on time.
fn send_thread(
    mut senders: Vec<Sending>,
    enc: Encoder,
    duration: Duration,
    epoch: Instant,
    cpu: usize,
) -> Result<(Vec<Sending>, u64)> {
    sweep::pin_current_thread(cpu)?;
    // SAFETY: prctl(PR_SET_TIMERSLACK) only sets this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1u64);
    }
    let start = Instant::now();
    for s in senders.iter_mut() {
        let offset = FRAME_INTERVAL.mul_f64(rand::random::<f64>());
        s.next_audio = start + offset;
        s.next_frame = start + offset;
    }
    let end = start + duration;
    let mut clear = vec![0u8; 1500];
    let mut sent = 0u64;
    while let Some((i, due)) = senders
        .iter()
        .enumerate()
        .map(|(i, s)| (i, s.due()))
        .min_by_key(|x| x.1)
    {
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        sent += senders[i].send_due(Instant::now(), epoch, &enc, &mut clear)?;
    }
    Ok((senders, sent))
}

/// Join `calls` 1:1 calls of two legs each, every leg offering only `profile`.
async fn join_calls(
    url: &str,
    secret: &str,
    calls: usize,
    profile: Profile,
    epoch: Instant,
) -> Result<Vec<Leg>> {
    let run: u32 = rand::random();
    let answered = Arc::new(AtomicUsize::new(0));
    let mut legs = Vec::with_capacity(calls * 2);
    for i in 0..calls * 2 {
        let call = format!("paced-{run}-{}", i / 2);
        let Joined {
            mut path,
            ssrc,
            answering,
        } = join(
            url,
            secret,
            &call,
            &format!("p{i}"),
            answered.clone(),
            &[profile.dtls()],
        )
        .await
        .with_context(|| format!("participant {i} of call {call}"))?;
        let want = match profile {
            Profile::Gcm => "aead_aes_128_gcm",
            Profile::Cm => "aes128_cm_hmac_sha1_80",
        };
        let (tx, rx) = crate::gen::in_place(&mut path, want)?;
        let sealer = Sealer(Box::new(tx));
        let socket = path.socket.clone();
        let dest = path.relay;
        blindrelay::net::udp::set_socket_buffers(socket2::SockRef::from(&*socket), SOCKET_BUFFER);
        let state = Arc::new(UdpSocketState::new(UdpSockRef::from(&*socket))?);
        let stats = Arc::new(LegStats::default());
        let recv_task = tokio::spawn(recv_task(
            socket.clone(),
            state,
            dest,
            rx,
            stats.clone(),
            epoch,
        ));
        legs.push(Leg {
            sending: Some(Sending {
                socket,
                dest,
                sealer,
                audio: Stream::new(ssrc ^ 2, AUDIO_PT),
                video: Stream::new(ssrc, VIDEO_PT),
                next_audio: Instant::now(),
                next_frame: Instant::now(),
                frames: 0,
            }),
            stats,
            recv_task: Some(recv_task),
            _keep: (answering, path),
        });
    }
    wait_answered(&answered, calls * 2, Duration::from_secs(20)).await?;
    Ok(legs)
}

/// One measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct PacedPhase {
    pub profile: Profile,
    pub sent: u64,
    pub received: u64,
    pub delivered_pps: f64,
    pub loss_pct: f64,
    pub decrypt_failures: u64,
    /// The relay process's CPU time (utime + stime) over the sending time, in ms.
    pub relay_cpu_ms: f64,
    /// That per delivered packet, in µs.
    pub cpu_us_per_packet: f64,
    /// The relay's threads' voluntary context switches (each a sleep and a wake-up) per
    /// delivered packet.
    pub wakeups_per_packet: f64,
    /// Involuntary ones (preemptions) per delivered packet.
    pub preemptions_per_packet: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_samples: usize,
}

/// Send every leg's paced media for `duration` (from a thread of its own on `gen_cpu`,
/// while this runtime's receive tasks count what comes back), then wait for stragglers,
/// and read the relay's costs over the sending time.
#[allow(clippy::too_many_arguments)]
async fn phase(
    legs: &mut [Leg],
    profile: Profile,
    enc: &Encoder,
    relay: &Target,
    gen_cpu: usize,
    duration: Duration,
    epoch: Instant,
) -> Result<PacedPhase> {
    for l in legs.iter() {
        l.stats.reset();
    }
    let pid = sweep::pid(relay);
    let senders: Vec<Sending> = legs.iter_mut().filter_map(|l| l.sending.take()).collect();
    let cpu0 = procstat::sample(&pid).ok_or_else(|| anyhow!("the relay's /proc is gone"))?;
    let sw0 = procstat::context_switches(&pid);
    let start = Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let enc = *enc;
    std::thread::spawn(move || {
        let _ = tx.send(send_thread(senders, enc, duration, epoch, gen_cpu));
    });
    let (senders, sent) = rx.await.map_err(|_| anyhow!("the sending thread died"))??;
    for (l, s) in legs.iter_mut().zip(senders) {
        l.sending = Some(s);
    }
    let cpu1 = procstat::sample(&pid).ok_or_else(|| anyhow!("the relay's /proc is gone"))?;
    let sw1 = procstat::context_switches(&pid);
    let secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(DRAIN).await;
    let received: u64 = legs
        .iter()
        .map(|l| l.stats.received.load(Ordering::Relaxed))
        .sum();
    let decrypt_failures = legs
        .iter()
        .map(|l| l.stats.decrypt_failures.load(Ordering::Relaxed))
        .sum();
    let mut lat: Vec<u32> = Vec::new();
    for l in legs.iter() {
        if let Ok(v) = l.stats.latencies_us.lock() {
            lat.extend_from_slice(&v);
        }
    }
    lat.sort_unstable();
    let per = |x: f64| {
        if received > 0 {
            x / received as f64
        } else {
            0.0
        }
    };
    let tick_ms = 1000.0 / procstat::ticks_per_second();
    let relay_cpu_ms = cpu1.cpu_ticks.saturating_sub(cpu0.cpu_ticks) as f64 * tick_ms;
    Ok(PacedPhase {
        profile,
        sent,
        received,
        delivered_pps: received as f64 / secs,
        loss_pct: if sent > 0 {
            sent.saturating_sub(received) as f64 / sent as f64 * 100.0
        } else {
            0.0
        },
        decrypt_failures,
        relay_cpu_ms,
        cpu_us_per_packet: per(relay_cpu_ms * 1e3),
        wakeups_per_packet: per(sw1.0.saturating_sub(sw0.0) as f64),
        preemptions_per_packet: per(sw1.1.saturating_sub(sw0.1) as f64),
        latency_ms_p50: percentile_us(&lat, 0.50) / 1e3,
        latency_ms_p99: percentile_us(&lat, 0.99) / 1e3,
        latency_samples: lat.len(),
    })
}

/// Medians of one profile's phases.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileMedians {
    pub profile: Profile,
    pub delivered_pps: f64,
    pub loss_pct: f64,
    pub cpu_us_per_packet: f64,
    pub wakeups_per_packet: f64,
    pub preemptions_per_packet: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PacedReport {
    pub machine: String,
    pub calls_per_profile: usize,
    pub participants_per_profile: usize,
    pub video_kbps: u32,
    pub workers: usize,
    pub phase_secs: f64,
    pub phases: Vec<PacedPhase>,
    pub medians: Vec<ProfileMedians>,
}

fn say(a: &PacedArgs, line: &str) {
    if !a.quiet {
        eprintln!("{line}");
    }
}

fn describe(p: &PacedPhase) -> String {
    format!(
        "{:?}: {:.0} packets/s delivered, loss {:.3} %, relay {:.2} µs/packet, {:.3} wake-ups and {:.3} preemptions per packet, p50 {:.3} ms, p99 {:.3} ms, {} decrypt failures",
        p.profile,
        p.delivered_pps,
        p.loss_pct,
        p.cpu_us_per_packet,
        p.wakeups_per_packet,
        p.preemptions_per_packet,
        p.latency_ms_p50,
        p.latency_ms_p99,
        p.decrypt_failures
    )
}

pub async fn run(a: PacedArgs) -> Result<PacedReport> {
    if a.calls == 0 || a.runs == 0 || a.profiles.is_empty() {
        bail!("--calls, --runs and --profile must each be at least one");
    }
    let config = std::env::temp_dir().join(format!(
        "blindrelay-paced-{}-{:08x}.toml",
        std::process::id(),
        rand::random::<u32>()
    ));
    // Silent sets (one profile's legs while the other's phase runs) must not time out:
    // the generator drives the sockets itself and sends no consent checks.
    std::fs::write(
        &config,
        format!(
            "[signal]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [media]\nlisten = \"127.0.0.1:0\"\nworkers = {}\nsrtp = \"fast\"\n\
             [ice]\nconsent_timeout = \"600s\"\n",
            a.workers.max(1)
        ),
    )?;
    let temp = sweep::tempfile_path::TempPath(config.clone());
    let core = (a.workers <= 1).then_some(a.relay_cpu);
    let relay = sweep::spawn_relay(core, &a.relay_bin, &config, Some(temp))?;
    let url = relay
        .signal_url
        .clone()
        .ok_or_else(|| anyhow!("no signalling address in the relay's banner"))?;
    let secret = blindrelay::config::DEV_API_SECRET;
    let epoch = Instant::now();
    let enc = Encoder::new(a.video_kbps);
    let mut sets = Vec::new();
    for &p in &a.profiles {
        say(&a, &format!("joining {} calls on {p:?}", a.calls));
        let legs = join_calls(&url, secret, a.calls, p, epoch).await?;
        sets.push((p, legs));
    }
    // Warm up each set (routes and answers settle asynchronously after the joins).
    for (p, legs) in sets.iter_mut() {
        let w = phase(
            legs,
            *p,
            &enc,
            &relay,
            a.gen_cpu,
            Duration::from_secs(1),
            epoch,
        )
        .await?;
        say(&a, &format!("warm-up {}", describe(&w)));
    }
    let mut phases = Vec::new();
    for r in 0..a.runs {
        // Alternate the order, so no profile always runs first.
        let n = sets.len();
        for k in 0..n {
            let (p, legs) = &mut sets[(k + r) % n];
            let ph = phase(legs, *p, &enc, &relay, a.gen_cpu, a.duration, epoch).await?;
            say(&a, &format!("run {}: {}", r + 1, describe(&ph)));
            phases.push(ph);
        }
    }
    let medians = a
        .profiles
        .iter()
        .map(|&p| {
            let v: Vec<&PacedPhase> = phases.iter().filter(|x| x.profile == p).collect();
            let m = |f: &dyn Fn(&PacedPhase) -> f64| median(v.iter().map(|x| f(x)).collect());
            ProfileMedians {
                profile: p,
                delivered_pps: m(&|x| x.delivered_pps),
                loss_pct: m(&|x| x.loss_pct),
                cpu_us_per_packet: m(&|x| x.cpu_us_per_packet),
                wakeups_per_packet: m(&|x| x.wakeups_per_packet),
                preemptions_per_packet: m(&|x| x.preemptions_per_packet),
                latency_ms_p50: m(&|x| x.latency_ms_p50),
                latency_ms_p99: m(&|x| x.latency_ms_p99),
            }
        })
        .collect();
    drop(sets);
    drop(relay);
    Ok(PacedReport {
        machine: sweep::cpu_model(),
        calls_per_profile: a.calls,
        participants_per_profile: a.calls * 2,
        video_kbps: a.video_kbps,
        workers: a.workers,
        phase_secs: a.duration.as_secs_f64(),
        phases,
        medians,
    })
}

pub fn print_human(r: &PacedReport) {
    println!(
        "paced load: {} 1:1 calls ({} participants) per profile, audio 50 packets/s + VP8 at {} kbit/s, 30 frames/s, each; {} forwarding loop(s); {:.0} s phases; {}",
        r.calls_per_profile,
        r.participants_per_profile,
        r.video_kbps,
        r.workers,
        r.phase_secs,
        r.machine
    );
    for m in &r.medians {
        println!(
            "  {:?} (median of {}): {:.0} packets/s delivered, loss {:.3} %, relay {:.2} µs CPU/packet, {:.3} wake-ups/packet, {:.3} preemptions/packet, latency p50 {:.3} ms p99 {:.3} ms",
            m.profile,
            r.phases.iter().filter(|p| p.profile == m.profile).count(),
            m.delivered_pps,
            m.loss_pct,
            m.cpu_us_per_packet,
            m.wakeups_per_packet,
            m.preemptions_per_packet,
            m.latency_ms_p50,
            m.latency_ms_p99
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoder model stays within the 1-10 packets per frame and averages
    /// its bit rate over a second of delta frames.
    #[test]
    fn frames_are_one_to_ten_packets_at_the_asked_rate() {
        let e = Encoder::new(800);
        let mut bytes = 0usize;
        for n in 1..=KEY_FRAME_EVERY * 10 {
            let (count, each) = e.frame(n);
            assert!((1..=MAX_FRAME_PACKETS).contains(&count));
            assert!(each <= MAX_PAYLOAD);
            if !n.is_multiple_of(KEY_FRAME_EVERY) {
                bytes += count * each;
            }
        }
        let frames = (KEY_FRAME_EVERY * 10 - 10) as f64;
        let kbps = bytes as f64 * 8.0 / (frames / 30.0) / 1000.0;
        assert!((720.0..900.0).contains(&kbps), "{kbps} kbit/s");
        let (k, _) = e.frame(0);
        assert!(k > 3, "a key frame is several packets: {k}");
    }
}
