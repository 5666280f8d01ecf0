//! A raw SRTP traffic generator light enough to load one relay core: the full client
//! (`e2ee-client`, webrtc-srtp, one task per stream) costs about 15 µs per packet, which
//! would make the generator, not the relay, the thing a sweep measures.
//!
//! Each leg is one participant with its own UDP socket (its own 5-tuple, as on a real
//! network). Against the relay a leg joins for real (signalling, ICE, DTLS) and then
//! drives its socket itself with the in-place AEAD_AES_128_GCM context keyed by that
//! handshake. Against the baseline forwarder legs pair up with a hello datagram and use
//! keys of their own. Either way every packet is a real 1,200-byte SRTP packet with a
//! fresh index; sends go out in UDP GSO bursts, receives come in with GRO, the loss count
//! reads the clear RTP header of every packet, and one packet in [`SAMPLE_EVERY`] is
//! authenticated and decrypted to read the send time carried in its encrypted payload.

use anyhow::{anyhow, bail, Context, Result};
use blindrelay_protocol::sdp::{self, OfferParams};
use blindrelay_protocol::signal::{ClientMessage, ServerMessage};
use blindrelay_transport::fast_srtp::{FastSrtpContext, RTP_OVERHEAD};
use blindrelay_transport::DtlsIdentity;
use e2ee_client::signal::Signal;
use e2ee_client::transport::{self, MediaPath};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// SRTP packet size on the wire, as the issue specifies.
pub const PACKET: usize = 1200;
/// Clear RTP size: the SRTP tag is added on top.
const CLEAR: usize = PACKET - RTP_OVERHEAD;
const RTP_HEADER: usize = 12;
/// One received packet in this many is decrypted for its send time; the rest are
/// counted from their clear header only.
pub const SAMPLE_EVERY: u16 = 16;
/// Payload type of the generated stream (any dynamic number).
const PT: u8 = 96;
/// Receive slot: GRO may coalesce a burst into one 64 KiB buffer.
const RECV_SLOT: usize = 65_536;
const RECV_SLOTS: usize = 4;
/// Kernel buffer asked for each generator socket.
const SOCKET_BUFFER: usize = 4 << 20;
/// Send schedule granularity.
const TICK: Duration = Duration::from_millis(1);
/// How long a phase waits after its last send for packets still in flight.
pub const DRAIN: Duration = Duration::from_millis(250);
/// The most a tick may catch up after a stall, so one late tick is not one huge burst.
const MAX_CATCH_UP: Duration = Duration::from_millis(5);

/// What every leg counts, shared with its receive task.
#[derive(Default)]
pub struct LegStats {
    pub received: AtomicU64,
    pub decrypt_failures: AtomicU64,
    /// Sampled one-way latencies in µs.
    pub latencies_us: Mutex<Vec<u32>>,
}

impl LegStats {
    /// Forget what was counted, for the next phase.
    pub fn reset(&self) {
        self.received.store(0, Ordering::Relaxed);
        self.decrypt_failures.store(0, Ordering::Relaxed);
        if let Ok(mut v) = self.latencies_us.lock() {
            v.clear();
        }
    }
}

/// Wait until `n` offers from the relay have been answered (the relay forwards to a
/// participant only once it has answered the offer of its partner's tracks); polled,
/// since the answering tasks only count.
pub(crate) async fn wait_answered(
    answered: &std::sync::atomic::AtomicUsize,
    n: usize,
    limit: Duration,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    while answered.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            bail!("the relay's offers were not all answered in {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// One participant.
pub struct Leg {
    socket: Arc<UdpSocket>,
    state: Arc<UdpSocketState>,
    dest: SocketAddr,
    tx: FastSrtpContext,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    pub stats: Arc<LegStats>,
    /// Signalling and DTLS of a relay leg: dropping them would end the participant.
    _keep: Option<(AbortOnDrop, MediaPath)>,
    recv_task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Leg {
    fn drop(&mut self) {
        if let Some(t) = self.recv_task.take() {
            t.abort();
        }
    }
}

fn random_ssrc() -> u32 {
    rand::random::<u32>() | 1
}

impl Leg {
    fn new(
        socket: Arc<UdpSocket>,
        dest: SocketAddr,
        tx: FastSrtpContext,
        ssrc: u32,
        keep: Option<(AbortOnDrop, MediaPath)>,
    ) -> Result<Self> {
        blindrelay::net::udp::set_socket_buffers(socket2::SockRef::from(&*socket), SOCKET_BUFFER);
        let state = Arc::new(UdpSocketState::new(UdpSockRef::from(&*socket))?);
        Ok(Leg {
            socket,
            state,
            dest,
            tx,
            ssrc,
            seq: rand::random(),
            timestamp: rand::random(),
            stats: Arc::new(LegStats::default()),
            _keep: keep,
            recv_task: None,
        })
    }

    /// Start counting what arrives, decrypting samples with `rx`.
    fn start_receiving(&mut self, rx: FastSrtpContext, epoch: Instant) {
        let task = tokio::spawn(recv_task(
            self.socket.clone(),
            self.state.clone(),
            self.dest,
            rx,
            self.stats.clone(),
            epoch,
        ));
        self.recv_task = Some(task);
    }

    /// Append `n` protected packets to `buf`, each exactly [`PACKET`] bytes.
    fn fill(&mut self, n: usize, epoch: Instant, buf: &mut Vec<u8>) -> Result<()> {
        for _ in 0..n {
            let start = buf.len();
            buf.resize(start + PACKET, 0);
            let p = &mut buf[start..];
            self.seq = self.seq.wrapping_add(1);
            self.timestamp = self.timestamp.wrapping_add(90);
            p[0] = 0x80;
            p[1] = PT;
            p[2..4].copy_from_slice(&self.seq.to_be_bytes());
            p[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
            p[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
            let sent_ns = epoch.elapsed().as_nanos() as u64;
            p[RTP_HEADER..RTP_HEADER + 8].copy_from_slice(&sent_ns.to_be_bytes());
            let n = self
                .tx
                .protect_rtp_in(p, CLEAR)
                .map_err(|e| anyhow!("SRTP protect: {e}"))?;
            debug_assert_eq!(n, PACKET);
        }
        Ok(())
    }

    /// Send `buf` (whole packets) to the relay in GSO bursts; waits for socket space.
    async fn send(&self, buf: &[u8], max_segments: usize) -> std::io::Result<()> {
        for burst in buf.chunks(PACKET * max_segments.max(1)) {
            let t = Transmit {
                destination: self.dest,
                ecn: None,
                contents: burst,
                segment_size: (burst.len() > PACKET).then_some(PACKET),
                src_ip: None,
            };
            loop {
                match self.socket.try_io(Interest::WRITABLE, || {
                    self.state.try_send(UdpSockRef::from(&*self.socket), &t)
                }) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        self.socket.writable().await?
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// Count the RTP that arrives from `from` and read the send time sealed in one packet in
/// [`SAMPLE_EVERY`] per stream (`rx` opens them, in place, either profile).
pub(crate) async fn recv_task(
    socket: Arc<UdpSocket>,
    state: Arc<UdpSocketState>,
    from: SocketAddr,
    mut rx: FastSrtpContext,
    stats: Arc<LegStats>,
    epoch: Instant,
) {
    let mut buf = vec![0u8; RECV_SLOT * RECV_SLOTS];
    let mut meta = [RecvMeta::default(); RECV_SLOTS];
    let mut scratch = vec![0u8; 2048];
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        let r = socket.try_io(Interest::READABLE, || {
            let mut it = buf.chunks_mut(RECV_SLOT);
            let mut slices: [IoSliceMut<'_>; RECV_SLOTS] =
                std::array::from_fn(|_| IoSliceMut::new(it.next().unwrap_or_default()));
            state.recv(UdpSockRef::from(&*socket), &mut slices, &mut meta)
        });
        let n = match r {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            // ICMP errors surface here; keep reading.
            Err(_) => continue,
        };
        for (i, m) in meta.iter().enumerate().take(n) {
            if m.addr != from {
                continue;
            }
            let slot = &buf[i * RECV_SLOT..i * RECV_SLOT + m.len];
            let stride = if m.stride == 0 { m.len } else { m.stride };
            for pkt in slot.chunks(stride.max(1)) {
                if pkt.len() < RTP_HEADER + 8 + rx.rtp_overhead() || pkt[0] >> 6 != 2 {
                    continue;
                }
                // RTCP (payload types 64-95 in RTP's place, RFC 5761) is not forwarded
                // media.
                if (64..96).contains(&(pkt[1] & 0x7f)) {
                    continue;
                }
                stats.received.fetch_add(1, Ordering::Relaxed);
                let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
                if seq % SAMPLE_EVERY != 0 {
                    continue;
                }
                let s = &mut scratch[..pkt.len()];
                s.copy_from_slice(pkt);
                match rx.unprotect_rtp(s) {
                    Ok(_) => {
                        let mut ts = [0u8; 8];
                        ts.copy_from_slice(&s[RTP_HEADER..RTP_HEADER + 8]);
                        let sent = u64::from_be_bytes(ts);
                        let now = epoch.elapsed().as_nanos() as u64;
                        let us = (now.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32;
                        if let Ok(mut l) = stats.latencies_us.lock() {
                            l.push(us);
                        }
                    }
                    Err(_) => {
                        stats.decrypt_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// A set of legs in 1:1 calls: leg `2k` and `2k+1` talk to each other.
pub struct Generator {
    legs: Vec<Leg>,
    epoch: Instant,
    max_segments: usize,
    buf: Vec<u8>,
}

/// The outcome of one constant-rate phase.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PhaseResult {
    pub target_pps: f64,
    /// Packets the generator sent per second (offered to the relay).
    pub offered_pps: f64,
    /// Packets that came back per second (forwarded by the relay).
    pub delivered_pps: f64,
    pub sent: u64,
    pub received: u64,
    pub loss_pct: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub decrypt_failures: u64,
    pub latency_samples: usize,
}

pub fn percentile_us(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64
}

impl Generator {
    /// Join `calls` 1:1 calls on a running relay, as real participants.
    pub async fn join_relay(signal_url: &str, api_secret: &str, calls: usize) -> Result<Self> {
        Self::join_relay_on(&[signal_url.to_string()], api_secret, calls).await
    }

    /// Join `calls` 1:1 calls with leg `i` signalling on `urls[i % urls.len()]`: with
    /// two cluster nodes' URLs, each call's two legs are served by different nodes (the
    /// first leg's node owns the call) and every packet crosses the node link once.
    pub async fn join_relay_on(urls: &[String], api_secret: &str, calls: usize) -> Result<Self> {
        if urls.is_empty() {
            bail!("no signalling URL to join on");
        }
        let epoch = Instant::now();
        let run: u32 = rand::random();
        let mut legs = Vec::with_capacity(calls * 2);
        let mut rxs = Vec::with_capacity(calls * 2);
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for i in 0..calls * 2 {
            let call = format!("sweep-{run}-{}", i / 2);
            let (leg, rx) = join_one(
                &urls[i % urls.len()],
                api_secret,
                &call,
                &format!("g{i}"),
                answered.clone(),
            )
            .await
            .with_context(|| format!("participant {i} of call {call}"))?;
            legs.push(leg);
            rxs.push(rx);
        }
        for (leg, rx) in legs.iter_mut().zip(rxs) {
            leg.start_receiving(rx, epoch);
        }
        // Every participant answers one offer (its partner's tracks); the relay forwards
        // to it only after that.
        wait_answered(&answered, calls * 2, Duration::from_secs(10)).await?;
        // The relay hands each keyed participant, and each answer, to its forwarding
        // loop asynchronously; give the last one a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(Self::from_legs(legs, epoch))
    }

    /// Pair legs through the baseline forwarder at `dest`: each sends a hello naming its
    /// pair, and the forwarder sends each datagram on to the other member of the pair.
    /// Keys are the generator's own: without `srtp` the baseline does no crypto and a
    /// receiver decrypts with its peer's sending key; with it, each hello also carries the
    /// leg's sending key and the key it receives with, and the baseline re-seals.
    pub async fn pair_baseline(dest: SocketAddr, calls: usize, srtp: bool) -> Result<Self> {
        let epoch = Instant::now();
        let mut legs = Vec::with_capacity(calls * 2);
        let mut keys: Vec<crate::baseline::LegKeys> = Vec::with_capacity(calls * 2);
        for _ in 0..calls * 2 {
            let k: crate::baseline::LegKeys = rand::random();
            let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
            let tx = FastSrtpContext::new(&k.0, &k.1).map_err(|e| anyhow!("{e}"))?;
            keys.push(k);
            legs.push(Leg::new(socket, dest, tx, random_ssrc(), None)?);
        }
        let run: u32 = rand::random();
        // Hello until the forwarder acknowledges, a few times in case of a drop (before
        // the receive tasks start, which would take the acknowledgement).
        for (i, leg) in legs.iter().enumerate() {
            let hello = crate::baseline::hello(run, (i / 2) as u32, srtp.then_some(&keys[i]));
            let mut ok = false;
            for _ in 0..20 {
                leg.socket.send_to(&hello, dest).await?;
                let mut b = [0u8; 64];
                match tokio::time::timeout(Duration::from_millis(100), leg.socket.recv_from(&mut b))
                    .await
                {
                    Ok(Ok((n, from))) if from == dest && crate::baseline::is_ack(&b[..n]) => {
                        ok = true;
                        break;
                    }
                    _ => continue,
                }
            }
            if !ok {
                bail!("the baseline forwarder at {dest} did not acknowledge leg {i}");
            }
        }
        for (i, leg) in legs.iter_mut().enumerate() {
            let rx = if srtp {
                FastSrtpContext::new(&keys[i].2, &keys[i].3)
            } else {
                FastSrtpContext::new(&keys[i ^ 1].0, &keys[i ^ 1].1)
            }
            .map_err(|e| anyhow!("{e}"))?;
            leg.start_receiving(rx, epoch);
        }
        Ok(Self::from_legs(legs, epoch))
    }

    fn from_legs(legs: Vec<Leg>, epoch: Instant) -> Self {
        let max_segments = legs
            .first()
            .map(|l| l.state.max_gso_segments())
            .unwrap_or(1)
            .clamp(1, blindrelay::net::udp::MAX_GSO_BYTES / PACKET);
        Generator {
            legs,
            epoch,
            max_segments,
            buf: Vec::with_capacity(PACKET * 64),
        }
    }

    pub fn participants(&self) -> usize {
        self.legs.len()
    }

    fn reset(&self) {
        for l in &self.legs {
            l.stats.reset();
        }
    }

    /// Send `rate` packets/s in total for `duration`, spread evenly over the legs, then
    /// wait for stragglers and report.
    ///
    /// `on_sent` runs when the last packet has been sent, before the wait for stragglers:
    /// CPU readings taken there cover the sending time only.
    pub async fn phase(
        &mut self,
        rate: f64,
        duration: Duration,
        on_sent: impl FnOnce(),
    ) -> Result<PhaseResult> {
        self.reset();
        let legs = self.legs.len().max(1);
        let start = Instant::now();
        let mut sent: u64 = 0;
        let mut per_leg_carry = vec![0.0f64; legs];
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last = start;
        loop {
            tick.tick().await;
            let now = Instant::now();
            if now.duration_since(start) >= duration {
                break;
            }
            let dt = now.duration_since(last).min(MAX_CATCH_UP).as_secs_f64();
            last = now;
            let share = rate * dt / legs as f64;
            for (i, carry) in per_leg_carry.iter_mut().enumerate() {
                *carry += share;
                let n = *carry as usize;
                if n == 0 {
                    continue;
                }
                *carry -= n as f64;
                self.buf.clear();
                let epoch = self.epoch;
                let leg = &mut self.legs[i];
                leg.fill(n, epoch, &mut self.buf)?;
                leg.send(&self.buf, self.max_segments).await?;
                sent += n as u64;
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        on_sent();
        // Everything in flight arrives well within this.
        tokio::time::sleep(DRAIN).await;
        let received: u64 = self
            .legs
            .iter()
            .map(|l| l.stats.received.load(Ordering::Relaxed))
            .sum();
        let decrypt_failures: u64 = self
            .legs
            .iter()
            .map(|l| l.stats.decrypt_failures.load(Ordering::Relaxed))
            .sum();
        let mut lat: Vec<u32> = Vec::new();
        for l in &self.legs {
            if let Ok(v) = l.stats.latencies_us.lock() {
                lat.extend_from_slice(&v);
            }
        }
        lat.sort_unstable();
        let loss = if sent > 0 {
            (sent.saturating_sub(received)) as f64 / sent as f64 * 100.0
        } else {
            0.0
        };
        Ok(PhaseResult {
            target_pps: rate,
            offered_pps: sent as f64 / elapsed,
            delivered_pps: received as f64 / elapsed,
            sent,
            received,
            loss_pct: loss,
            latency_ms_p50: percentile_us(&lat, 0.50) / 1e3,
            latency_ms_p99: percentile_us(&lat, 0.99) / 1e3,
            latency_ms_p999: percentile_us(&lat, 0.999) / 1e3,
            decrypt_failures,
            latency_samples: lat.len(),
        })
    }
}

/// Join one call as a real participant and hand back a leg driving its socket.
async fn join_one(
    url: &str,
    api_secret: &str,
    call: &str,
    user: &str,
    answered: Arc<std::sync::atomic::AtomicUsize>,
) -> Result<(Leg, FastSrtpContext)> {
    let Joined {
        mut path,
        ssrc,
        answering,
    } = join(
        url,
        api_secret,
        call,
        user,
        answered,
        &blindrelay_transport::DEFAULT_PROFILES,
    )
    .await?;
    // Packets are sized for GCM's 16-byte tag.
    let (tx, rx) = in_place(&mut path, "aead_aes_128_gcm")?;
    let socket = path.socket.clone();
    let dest = path.relay;
    let leg = Leg::new(socket, dest, tx, ssrc, Some((answering, path)))?;
    Ok((leg, rx))
}

/// A participant joined for real (signalling, ICE, DTLS) whose socket the caller drives.
pub(crate) struct Joined {
    /// Its ICE/DTLS path, with the background reader and consent checks stopped.
    pub path: MediaPath,
    /// Its video SSRC; its audio SSRC is `ssrc ^ 2`.
    pub ssrc: u32,
    /// Answers the relay's offers while it lives.
    pub answering: AbortOnDrop,
}

/// The in-place SRTP contexts (sending, receiving) of a joined `path`, which must have
/// negotiated the profile named `want` (webrtc-srtp's name, e.g. "aead_aes_128_gcm").
pub(crate) fn in_place(
    path: &mut MediaPath,
    want: &str,
) -> Result<(FastSrtpContext, FastSrtpContext)> {
    if path.profile != want {
        bail!("the relay negotiated {}, not {want}", path.profile);
    }
    path.fast
        .take()
        .ok_or_else(|| anyhow!("no in-place contexts for {want}"))
}

/// Join `call` as `user`, offering the SRTP `profiles` in DTLS; offers from the relay are
/// answered (and counted in `answered`) until the returned [`Joined`] is dropped.
pub(crate) async fn join(
    url: &str,
    api_secret: &str,
    call: &str,
    user: &str,
    answered: Arc<std::sync::atomic::AtomicUsize>,
    profiles: &[blindrelay_transport::webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile],
) -> Result<Joined> {
    let token = blindrelay::token::issue(
        api_secret,
        user,
        "sweep",
        "user",
        Some(call),
        Duration::from_secs(3600),
    )?;
    let mut sig = Signal::connect(url).await?;
    sig.send(&ClientMessage::Hello { token }).await?;
    let identity = DtlsIdentity::generate()?;
    let ufrag = format!("{:08x}", rand::random::<u32>());
    let pwd = format!("{:032x}", rand::random::<u128>());
    let ssrc = random_ssrc();
    let offer = sdp::build_offer(&OfferParams {
        ice_ufrag: &ufrag,
        ice_pwd: &pwd,
        fingerprint: identity.fingerprint(),
        audio_ssrc: ssrc ^ 2,
        video_ssrc: ssrc,
        cname: user,
        session_id: rand::random::<u32>() as u64,
    });
    let mut offer = Some(offer);
    let answer_sdp = loop {
        match sig.recv().await? {
            ServerMessage::Capabilities { .. } => {
                if let Some(offer_sdp) = offer.take() {
                    sig.send(&ClientMessage::Join {
                        call: call.to_string(),
                        e2ee_enabled: false,
                        offer_sdp,
                        e2ee_scheme: Default::default(),
                    })
                    .await?;
                }
            }
            ServerMessage::Joined { answer_sdp, .. } => break answer_sdp,
            ServerMessage::Error { code, message } => {
                bail!("refused: {}: {message}", code.as_str())
            }
            _ => continue,
        }
    };
    let answer = sdp::parse_answer(&answer_sdp).map_err(|e| anyhow!("answer: {e}"))?;
    let mut path = transport::connect_with_profiles(
        &answer,
        &ufrag,
        &identity,
        Duration::from_secs(10),
        profiles,
    )
    .await?;
    path.stop_background();
    let answering = AbortOnDrop(tokio::spawn(answer_offers(
        sig,
        ufrag,
        pwd,
        identity.fingerprint().clone(),
        answered,
    )));
    Ok(Joined {
        path,
        ssrc,
        answering,
    })
}

/// A task that ends with its owner.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Answer the relay's offers (each adds an m-line per remote track): the relay sends a
/// participant only media it has answered for. Counts answers in `answered`.
async fn answer_offers(
    mut sig: Signal,
    ufrag: String,
    pwd: String,
    fingerprint: blindrelay_protocol::sdp::Fingerprint,
    answered: Arc<std::sync::atomic::AtomicUsize>,
) {
    while let Ok(m) = sig.recv().await {
        let ServerMessage::Offer {
            sdp: offer,
            revision,
        } = m
        else {
            continue;
        };
        let Ok(answer) = sdp::answer_relay_offer(&offer, &ufrag, &pwd, &fingerprint) else {
            continue;
        };
        if sig
            .send(&ClientMessage::Answer {
                sdp: answer,
                revision,
            })
            .await
            .is_err()
        {
            break;
        }
        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
