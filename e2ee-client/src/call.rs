//! One participant of a call: join over signalling, connect the hop (ICE, DTLS-SRTP), agree
//! end-to-end keys with the peer when the call is E2EE, then send synthetic media and check
//! every frame that arrives.

use crate::group::GroupSession;
use crate::kex::{KeyAgreement, Role};
use crate::media::{self, make_frame, packetize, verify_frame, StreamReceiver};
use crate::sframe::{CipherSuite, Receiver as SframeReceiver, Sender as SframeSender};
use crate::signal::{Signal, SignalError};
use crate::transport::{self, ConnectError, MediaPath};
use base64::Engine;
use blindrelay_protocol::rtcp;
use blindrelay_protocol::rtp::RtpHeader;
use blindrelay_protocol::sdp::{self, OfferParams, AUDIO_PT, VIDEO_PT};
use blindrelay_protocol::signal::{
    CallMode, ClientMessage, E2eeOption, E2eeScheme, ErrorCode, ParticipantInfo, ServerMessage,
};
use blindrelay_transport::DtlsIdentity;
use rand::distr::{Alphanumeric, SampleString};
use serde::Serialize;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// What to do in a call.
#[derive(Debug, Clone)]
pub struct CallOptions {
    pub relay: String,
    pub token: String,
    pub call: String,
    pub duration: Duration,
    /// Ask for end-to-end encryption. On its own it is *required*: told the call will be
    /// standard, the client leaves (`left_reason: downgrade_refused`) and never sends a
    /// clear frame.
    pub e2ee: bool,
    /// With `e2ee`: go on as a standard call when the relay says E2EE is not possible
    /// (before keys exist), saying so loudly. Never after keys exist.
    pub e2ee_preferred: bool,
    /// The Ed25519 identity key the token's `cnf` binds: the MLS signature key, with the
    /// token carried in the credential (group calls).
    pub identity_key: Option<crate::identity::IdentityKey>,
    /// Issuer public keys (raw Ed25519): every other member's credential must carry a
    /// token one of them signed, naming that member's user and binding its signature key.
    pub issuer_keys: Vec<[u8; 32]>,
    /// How a new E2EE call keys (a joiner must match the call).
    pub e2ee_scheme: E2eeScheme,
    pub audio: bool,
    pub video: bool,
    pub video_kbps: u32,
    pub fps: u32,
    /// Text repeated through every plaintext frame (for audits of what the relay sees).
    pub canary: Option<String>,
    pub connect_timeout: Duration,
    /// Print a stats line this often (to stderr); `None` stays quiet.
    pub stats_every: Option<Duration>,
    /// A label for printed lines.
    pub name: String,
    pub chat: Option<String>,
    pub features: Vec<String>,
    /// Run as a bot: receive only; record or emit a line per frame.
    pub bot: Option<(crate::bot::BotKind, Option<std::path::PathBuf>)>,
    /// Wait (up to `duration`) for an invitation and join the call it names instead of
    /// `call` (add_participant, transfer, retrieve, a bot brought in).
    pub wait_invite: bool,
    /// The remote participants are browsers running the relay's web client: read their
    /// media in its framing ([`crate::webframe`]: Opus one frame per packet, VP8 behind
    /// RFC 7741 descriptors with a clear VP8 header). Their frames are decrypted and
    /// counted, not checked against the synthetic pattern.
    pub web_peers: bool,
    /// Send this IVF file's VP8 frames (looped, 30 fps by `fps`) instead of synthetic video:
    /// packetised per RFC 7741 and, on an E2EE call, sealed in the web client's framing
    /// (clear VP8 header as SFrame metadata), so a browser decodes the picture.
    pub video_clip: Option<std::path::PathBuf>,
    /// Send this Ogg Opus file's packets (looped, one per 20 ms) instead of synthetic audio:
    /// one packet per RTP payload (RFC 7587), each sealed whole on an E2EE call.
    pub audio_clip: Option<std::path::PathBuf>,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            relay: "ws://127.0.0.1:7400/v1/signal".into(),
            token: String::new(),
            call: "demo".into(),
            duration: Duration::from_secs(10),
            e2ee: false,
            e2ee_preferred: false,
            identity_key: None,
            issuer_keys: Vec::new(),
            e2ee_scheme: E2eeScheme::X25519,
            audio: true,
            video: true,
            video_kbps: 1500,
            fps: 30,
            canary: None,
            connect_timeout: Duration::from_secs(10),
            stats_every: None,
            name: "client".into(),
            chat: None,
            features: vec![],
            bot: None,
            wait_invite: false,
            web_peers: false,
            video_clip: None,
            audio_clip: None,
        }
    }
}

/// The relay's refusal, as the summary reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SummaryError {
    pub code: String,
    pub message: String,
}

/// The answer to one feature request.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureOutcome {
    pub name: String,
    pub ok: bool,
    pub code: Option<String>,
    pub detail: Option<String>,
}

/// What happened in the call; printed as JSON by `--json`.
/// Packets received on one SSRC, with the payload type they came with.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InboundStream {
    pub ssrc: u32,
    pub payload_type: u8,
    pub packets: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CallSummary {
    pub joined: bool,
    pub call_mode: Option<CallMode>,
    pub mode_reason: Option<String>,
    pub participant: Option<String>,
    pub e2ee_option: Option<E2eeOption>,
    pub e2ee: bool,
    /// `mls` or `x25519-commit-reveal` on an E2EE call.
    pub e2ee_scheme: Option<String>,
    /// The MLS epoch the call ended in (group calls).
    pub epoch: Option<u64>,
    /// Frames opened, by sending participant (group calls).
    pub frames_decrypted_from: BTreeMap<String, u64>,
    /// Every epoch this member was keyed in and the group code it showed then (group
    /// calls; the last 256). Members compare codes epoch by epoch: the group changes as
    /// people come and go, so "the same code" means the same code in the same epoch.
    pub epoch_codes: BTreeMap<u64, String>,
    pub verification_code: Option<String>,
    /// The group's members in the final epoch, as their MLS credentials name them
    /// (user names, sorted): compare them as well as the code.
    pub group_members: Vec<String>,
    /// KeyPackages refused on arrival (named someone else, never announced, already a
    /// member, invalid, unverified), all reasons together; by reason in
    /// `key_packages_refused_by`.
    pub key_packages_refused: u64,
    pub key_packages_refused_by: BTreeMap<String, u64>,
    /// Why this client left before its duration ended: `downgrade_refused` (told the
    /// call would not be end-to-end encrypted), `group_refused` (a commit or Welcome would
    /// have keyed an unannounced member), the relay's removal reason, or `signalling_lost`
    /// (the signalling connection ended before `--duration`: also set as `error`, so the
    /// CLI exits non-zero).
    pub left_reason: Option<String>,
    /// Set when `--e2ee-preferred` accepted a standard call: the relay's reason.
    pub downgrade_accepted: Option<String>,
    /// Why end-to-end key agreement failed (e.g. a reveal that does not match its commitment).
    pub e2ee_error: Option<String>,
    pub srtp_profile: Option<String>,
    pub join_ms: Option<f64>,
    pub connect_ms: Option<f64>,
    /// From the start (before signalling connects) to the first media packet received.
    pub first_media_ms: Option<f64>,
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub sent_frames: u64,
    pub received_packets: u64,
    pub received_bytes: u64,
    pub received_rtcp: u64,
    pub lost_packets: u64,
    pub frames_received: u64,
    pub frames_verified: u64,
    pub frames_corrupt: u64,
    pub frames_incomplete: u64,
    pub frames_decrypted: u64,
    pub decrypt_failures: u64,
    pub frames_before_keys: u64,
    pub srtp_failures: u64,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    pub chat_received: Vec<String>,
    pub features: Vec<FeatureOutcome>,
    pub peers_left: Vec<String>,
    /// Packets a recording bot wrote to its file.
    pub recorded_packets: Option<u64>,
    /// Distinct media streams (SSRCs) received.
    pub streams_received: usize,
    /// Relay offers (renegotiations) answered.
    pub offers_answered: u64,
    /// What arrived, per SSRC (interop tests attribute it to senders by SSRC).
    pub inbound: Vec<InboundStream>,
    /// The SSRCs this client sent audio and video on.
    pub audio_ssrc: Option<u32>,
    pub video_ssrc: Option<u32>,
    /// Every verified frame's end-to-end latency in µs (sorted), for load reports.
    #[serde(skip)]
    pub latencies_us: Vec<u32>,
    /// The invitation this client followed, if any: (call, by, reason).
    pub invited: Option<(String, String, String)>,
    /// Why the relay ended this participant's part, when it was a normal hand-over
    /// (transferred, parked).
    pub ended: Option<String>,
    pub error: Option<SummaryError>,
}

impl CallSummary {
    /// A call succeeded for exit-status purposes: joined and media arrived.
    pub fn success(&self) -> bool {
        self.joined && self.received_packets > 0 && self.error.is_none()
    }
}

/// Failures that end a call before it starts.
#[derive(Debug, Error)]
pub enum CallError {
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("relay refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("unexpected signalling message: {0}")]
    Protocol(String),
    #[error("cannot make a DTLS certificate: {0}")]
    Identity(String),
    #[error("relay answer unusable: {0}")]
    Answer(String),
    #[error("video clip: {0}")]
    Clip(#[from] crate::webframe::ClipError),
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// End-to-end state once keys are agreed.
struct E2ee {
    sender: SframeSender,
    receiver: SframeReceiver,
}

const KID_INITIATOR: u64 = 1;
const KID_RESPONDER: u64 = 2;

struct Outgoing {
    ssrc: u32,
    pt: u8,
    seq: u16,
    frame_no: u32,
    clock_rate: u32,
    started: Instant,
    /// RTP timestamp step per frame when the media has a fixed frame duration (an Opus
    /// clip: 960 = 20 ms at 48 kHz); otherwise the timestamp follows the clock.
    step: Option<u32>,
}

impl Outgoing {
    fn new(pt: u8, clock_rate: u32) -> Self {
        Outgoing {
            ssrc: rand::random::<u32>() | 1,
            pt,
            seq: rand::random(),
            frame_no: 0,
            clock_rate,
            started: Instant::now(),
            step: None,
        }
    }
}

/// Join a call and run it for `opts.duration`. Refusals come back as a summary with
/// `error` set, not as `Err`, so the caller can still print the JSON.
pub async fn run_call(opts: &CallOptions) -> CallSummary {
    let mut s = CallSummary::default();
    if let Err(e) = run(opts, &mut s).await {
        let (code, message) = match &e {
            CallError::Refused { code, message } => (code.clone(), message.clone()),
            CallError::Connect(_) => ("connect_failed".into(), e.to_string()),
            CallError::Signal(_) => ("signalling_failed".into(), e.to_string()),
            _ => ("client_error".into(), e.to_string()),
        };
        s.error = Some(SummaryError { code, message });
    }
    s
}

fn say(opts: &CallOptions, line: &str) {
    if opts.stats_every.is_some() {
        eprintln!("[{}] {line}", opts.name);
    }
}

async fn expect_reply(sig: &mut Signal) -> Result<ServerMessage, CallError> {
    loop {
        match sig.recv().await? {
            ServerMessage::Error { code, message } => {
                return Err(CallError::Refused {
                    code: code.as_str().to_string(),
                    message,
                })
            }
            // Events about others can precede our reply; they are replayed by `joined`.
            ServerMessage::ParticipantJoined { .. } | ServerMessage::ParticipantLeft { .. } => {
                continue
            }
            m => return Ok(m),
        }
    }
}

async fn run(opts: &CallOptions, s: &mut CallSummary) -> Result<(), CallError> {
    let t0 = Instant::now();
    let clip = match &opts.video_clip {
        Some(p) => Some(crate::webframe::read_ivf(p)?),
        None => None,
    };
    let audio_clip = match &opts.audio_clip {
        Some(p) => Some(crate::webframe::read_ogg_opus(p)?),
        None => None,
    };
    // An Opus clip's packets are 20 ms each (opusenc's default frame size).
    let audio_step = audio_clip.as_ref().map(|_| 960);
    let mut sig = Signal::connect(&opts.relay).await?;
    sig.send(&ClientMessage::Hello {
        token: opts.token.clone(),
    })
    .await?;
    match expect_reply(&mut sig).await? {
        ServerMessage::Capabilities { e2ee_option, .. } => s.e2ee_option = Some(e2ee_option),
        m => return Err(CallError::Protocol(format!("{m:?}"))),
    }
    let mut call_id = opts.call.clone();
    if opts.wait_invite {
        let deadline = tokio::time::Instant::now() + opts.duration;
        loop {
            match tokio::time::timeout_at(deadline, sig.recv()).await {
                Err(_) => {
                    return Err(CallError::Refused {
                        code: "no_invite".into(),
                        message: "no invitation arrived".into(),
                    })
                }
                Ok(m) => {
                    if let ServerMessage::Invite { call, by, reason } = m? {
                        say(opts, &format!("invited to `{call}` by {by} ({reason})"));
                        call_id = call.clone();
                        s.invited = Some((call, by, reason));
                        break;
                    }
                }
            }
        }
    }
    let call_id = call_id;
    if opts.e2ee && s.e2ee_option == Some(E2eeOption::Hidden) {
        let reason = "the relay says end-to-end encryption is not available to this user";
        if !accept_downgrade(opts, s, reason) {
            return Ok(());
        }
    }
    let want_e2ee = opts.e2ee && s.e2ee_option != Some(E2eeOption::Hidden)
        || s.e2ee_option == Some(E2eeOption::Required);
    let identity = DtlsIdentity::generate().map_err(|e| CallError::Identity(e.to_string()))?;
    let ufrag = Alphanumeric.sample_string(&mut rand::rng(), 8);
    let pwd = Alphanumeric.sample_string(&mut rand::rng(), 24);
    let mut audio = Outgoing::new(AUDIO_PT, 48_000);
    audio.step = audio_step;
    let mut video = Outgoing::new(VIDEO_PT, 90_000);
    let cname = Alphanumeric.sample_string(&mut rand::rng(), 12);
    s.audio_ssrc = Some(audio.ssrc);
    s.video_ssrc = Some(video.ssrc);
    let offer = sdp::build_offer(&OfferParams {
        ice_ufrag: &ufrag,
        ice_pwd: &pwd,
        fingerprint: identity.fingerprint(),
        audio_ssrc: audio.ssrc,
        video_ssrc: video.ssrc,
        cname: &cname,
        session_id: rand::random::<u32>() as u64,
    });
    sig.send(&ClientMessage::Join {
        call: call_id.clone(),
        e2ee_enabled: want_e2ee,
        offer_sdp: offer,
        e2ee_scheme: opts.e2ee_scheme,
    })
    .await?;
    let (me, mode, answer_sdp, mut peers) = match expect_reply(&mut sig).await? {
        ServerMessage::Joined {
            participant,
            call_mode,
            mode_reason,
            answer_sdp,
            participants,
            e2ee_scheme,
        } => {
            s.mode_reason = mode_reason;
            s.e2ee_scheme = e2ee_scheme.map(|x| x.as_str().to_string());
            (participant, call_mode, answer_sdp, participants)
        }
        m => return Err(CallError::Protocol(format!("{m:?}"))),
    };
    s.joined = true;
    s.participant = Some(me.clone());
    s.call_mode = Some(mode);
    s.join_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
    say(
        opts,
        &format!("joined call `{}` as {me}, mode {}", call_id, mode.as_str()),
    );
    if let Some(r) = &s.mode_reason {
        say(opts, r);
    }
    if want_e2ee && mode != CallMode::E2ee {
        let reason = s
            .mode_reason
            .clone()
            .unwrap_or_else(|| "the relay made it a standard call".into());
        if !accept_downgrade(opts, s, &reason) {
            // Before any media path exists: not one frame was sent.
            let _ = sig.send(&ClientMessage::Leave).await;
            sig.close().await;
            return Ok(());
        }
    }
    let answer = sdp::parse_answer(&answer_sdp).map_err(|e| CallError::Answer(e.to_string()))?;
    let mut path = transport::connect(&answer, &ufrag, &identity, opts.connect_timeout).await?;
    s.connect_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
    s.srtp_profile = Some(path.profile.to_string());
    say(
        opts,
        &format!(
            "media path up ({}), {:.1} ms after start",
            path.profile,
            t0.elapsed().as_secs_f64() * 1e3
        ),
    );

    let mut e2ee_call = mode == CallMode::E2ee;
    let mut kex: Option<KeyAgreement> = None;
    let mut e2ee: Option<E2ee> = None;
    // A group call keys with MLS instead of the one-to-one agreement.
    let mut group: Option<GroupSession> = None;
    if e2ee_call {
        say(opts, "lock: waiting for end-to-end keys");
    }
    if e2ee_call && s.e2ee_scheme.as_deref() == Some(E2eeScheme::Mls.as_str()) {
        let mut g = GroupSession::new(&me, &call_id, group_identity(opts, &call_id))
            .map_err(|e| CallError::Protocol(e.to_string()))?;
        for m in g
            .start(Instant::now(), &peers)
            .map_err(|e| CallError::Protocol(e.to_string()))?
        {
            sig.send(&m).await?;
        }
        group = Some(g);
    } else if let Some(peer) = peers.first().cloned() {
        if e2ee_call {
            start_kex(opts, &call_id, &mut sig, &mut kex, &me, &peer).await?;
        }
    }
    let mut sent_chat = false;
    for f in &opts.features {
        // FEATURE or FEATURE=ARG
        let (name, arg) = match f.split_once('=') {
            Some((n, a)) => (n.to_string(), Some(a.to_string())),
            None => (f.clone(), None),
        };
        sig.send(&ClientMessage::Feature { name, arg }).await?;
    }
    let canary = opts.canary.as_deref().map(str::as_bytes);
    let end = tokio::time::Instant::now() + opts.duration;
    let mut audio_tick = tokio::time::interval(Duration::from_millis(20));
    let fps = opts.fps.max(1);
    let mut video_tick = tokio::time::interval(Duration::from_micros(1_000_000 / fps as u64));
    let mut rtcp_tick = tokio::time::interval(Duration::from_secs(1));
    let mut stats_tick =
        tokio::time::interval(opts.stats_every.unwrap_or(Duration::from_secs(3600)));
    stats_tick.tick().await;
    let video_frame_bytes =
        ((opts.video_kbps as u64 * 1000 / 8) / fps as u64).max(media::FRAME_HEADER as u64) as usize;
    let mut streams: HashMap<u32, StreamReceiver> = HashMap::new();
    let mut latencies: Vec<u32> = Vec::new();
    let mut frame = Vec::with_capacity(video_frame_bytes + 64);
    let mut sealed = Vec::with_capacity(video_frame_bytes + 64);
    let mut pkt = Vec::with_capacity(1500);
    let mut opened = Vec::with_capacity(video_frame_bytes + 64);
    let mut last_bytes = 0u64;
    let mut ended_by_relay = false;
    let mut early_blobs: Vec<(String, String)> = Vec::new();
    let mut recorder = match &opts.bot {
        Some((crate::bot::BotKind::Recording, Some(out))) => Some(
            crate::bot::RtpDumpWriter::create(out, path.relay).map_err(|e| {
                CallError::Protocol(format!("cannot create {}: {e}", out.display()))
            })?,
        ),
        _ => None,
    };
    loop {
        let sending = !e2ee_call || e2ee.is_some() || group.as_ref().is_some_and(|g| g.keyed());
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            _ = audio_tick.tick(), if opts.audio && sending => {
                let sealer = e2ee.as_mut().map(|k| &mut k.sender).or_else(|| group.as_mut().and_then(|g| g.frames_mut().sender_mut()));
                if let Some(packets) = audio_clip.as_ref().filter(|p| !p.is_empty()) {
                    let p = &packets[audio.frame_no as usize % packets.len()];
                    send_frame(&mut path, &mut audio, p, sealer, &mut sealed, &mut pkt, s).await;
                } else {
                    make_frame(audio.ssrc, audio.frame_no, now_us(), 160, canary, &mut frame);
                    send_frame(&mut path, &mut audio, &frame, sealer, &mut sealed, &mut pkt, s).await;
                }
            }
            _ = video_tick.tick(), if opts.video && sending => {
                let sealer = e2ee.as_mut().map(|k| &mut k.sender).or_else(|| group.as_mut().and_then(|g| g.frames_mut().sender_mut()));
                if let Some(frames) = clip.as_ref().filter(|f| !f.is_empty()) {
                    let f = &frames[video.frame_no as usize % frames.len()];
                    send_vp8_frame(&mut path, &mut video, f, sealer, &mut sealed, &mut pkt, s).await;
                } else {
                    make_frame(video.ssrc, video.frame_no, now_us(), video_frame_bytes, canary, &mut frame);
                    send_frame(&mut path, &mut video, &frame, sealer, &mut sealed, &mut pkt, s).await;
                }
            }
            _ = rtcp_tick.tick() => {
                // A receiver report per incoming stream, so the senders see our loss.
                let mut compound = Vec::new();
                for (ssrc, st) in &streams {
                    compound.extend_from_slice(&rtcp::receiver_report(video.ssrc, *ssrc, 0, st.lost() as u32, st.highest_seq()));
                }
                if !compound.is_empty() {
                    if let Ok(p) = path.outbound.encrypt_rtcp(&compound) {
                        let _ = path.socket.send_to(&p, path.relay).await;
                    }
                }
            }
            _ = stats_tick.tick() => {
                let lost: u64 = streams.values().map(|x| x.lost()).sum();
                let kbps = (s.received_bytes - last_bytes) as f64 * 8.0 / 1000.0 / opts.stats_every.unwrap_or(Duration::from_secs(1)).as_secs_f64();
                last_bytes = s.received_bytes;
                let lock = if e2ee.is_some() { "on" } else if e2ee_call { "pending" } else { "off" };
                say(opts, &format!(
                    "sent {} pkts, received {} pkts ({kbps:.0} kbit/s), lost {lost}, frames ok {} bad {}, e2ee lock {lock}",
                    s.sent_packets, s.received_packets, s.frames_verified, s.frames_corrupt + s.decrypt_failures));
            }
            r = path.media_rx.recv() => {
                let Some((data, is_rtcp)) = r else { break };
                if is_rtcp {
                    match path.inbound.decrypt_rtcp(&data) {
                        Ok(_) => s.received_rtcp += 1,
                        Err(_) => s.srtp_failures += 1,
                    }
                    continue;
                }
                let plain = match path.inbound.decrypt_rtp(&data) {
                    Ok(p) => p,
                    Err(_) => { s.srtp_failures += 1; continue; }
                };
                let Ok(h) = RtpHeader::parse(&plain) else { s.srtp_failures += 1; continue };
                if s.received_packets == 0 {
                    s.first_media_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                }
                s.received_packets += 1;
                if let Some(r) = recorder.as_mut() {
                    let _ = r.write(&plain);
                }
                s.received_bytes += data.len() as u64;
                if let Some(i) = s.inbound.iter_mut().find(|i| i.ssrc == h.ssrc) {
                    i.packets += 1;
                } else if s.inbound.len() < 64 {
                    s.inbound.push(InboundStream { ssrc: h.ssrc, payload_type: h.payload_type, packets: 1 });
                }
                let st = streams.entry(h.ssrc).or_default();
                let payload = h.payload(&plain);
                let f = if opts.web_peers {
                    match web_frame(st, &h, payload) {
                        Some(f) => f,
                        None => continue,
                    }
                } else {
                    let Some(f) = st.push(h.sequence, h.timestamp, h.marker, payload) else { continue };
                    f
                };
                s.frames_received += 1;
                if let Some((kind @ (crate::bot::BotKind::Captions | crate::bot::BotKind::Transcription), _)) = &opts.bot {
                    // Where speech-to-text would run on the frame.
                    println!("{kind:?}: ssrc={:08x} ts={} frame of {} bytes", h.ssrc, h.timestamp, f.len());
                }
                // The web client keeps a VP8 frame's first bytes clear, as SFrame metadata.
                let clear = if opts.web_peers && h.payload_type == VIDEO_PT { crate::webframe::vp8_clear_len(&f) } else { 0 };
                let plain_frame: &[u8] = if let Some(g) = group.as_mut() {
                    if !g.keyed() { s.frames_before_keys += 1; continue }
                    match g.open_into(Instant::now(), &f[..clear], &f[clear..], &mut opened) {
                        Ok(from) => {
                            s.frames_decrypted += 1;
                            *s.frames_decrypted_from.entry(from.unwrap_or_default()).or_default() += 1;
                            &opened
                        }
                        // Sealed before this member's Welcome: not for it.
                        Err(crate::group::OpenError::BeforeJoin(_)) => { s.frames_before_keys += 1; continue; }
                        // Sealed in an epoch whose commit has not arrived yet: opened then.
                        Err(crate::group::OpenError::Early) => continue,
                        Err(_) => { s.decrypt_failures += 1; continue; }
                    }
                } else if e2ee_call {
                    let Some(k) = e2ee.as_mut() else { s.frames_before_keys += 1; continue };
                    match k.receiver.open_into(&f[..clear], &f[clear..], &mut opened) {
                        Ok(_) => { s.frames_decrypted += 1; &opened }
                        Err(_) => { s.decrypt_failures += 1; continue; }
                    }
                } else {
                    &f
                };
                if opts.web_peers {
                    // Real Opus and VP8 from a browser: nothing to compare with.
                    continue;
                }
                match verify_frame(plain_frame, canary) {
                    Some(info) => {
                        s.frames_verified += 1;
                        latencies.push(now_us().saturating_sub(info.send_time_us).min(u32::MAX as u64) as u32);
                    }
                    None => s.frames_corrupt += 1,
                }
            }
            m = sig.recv() => {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        // Cut off before `--duration` ended (removed as a slow reader, the
                        // relay shut down, the network failed): not a normal end.
                        eprintln!("[{}] signalling lost before the call's end: {e}", opts.name);
                        s.left_reason = Some("signalling_lost".into());
                        s.error = Some(SummaryError { code: "signalling_lost".into(), message: e.to_string() });
                        ended_by_relay = true;
                        break;
                    }
                };
                if let Some(g) = group.as_mut() {
                    match g.on_message(Instant::now(), &m) {
                        Ok(out) => {
                            for o in out {
                                sig.send(&o).await?;
                            }
                        }
                        Err(e) => {
                            eprintln!("[{}] group key exchange failed: {e}", opts.name);
                            s.e2ee_error.get_or_insert(e.to_string());
                        }
                    }
                    // Frames that overtook their epoch's commit open now.
                    for (from, plain) in g.open_early(Instant::now()) {
                        s.frames_decrypted += 1;
                        *s.frames_decrypted_from.entry(from.unwrap_or_default()).or_default() += 1;
                        if !opts.web_peers {
                            match verify_frame(&plain, canary) {
                                Some(_) => s.frames_verified += 1,
                                None => s.frames_corrupt += 1,
                            }
                        }
                    }
                    s.decrypt_failures += std::mem::take(&mut g.early_expired);
                    s.key_packages_refused = g.key_packages_refused_total();
                    s.key_packages_refused_by = g.key_packages_refused.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                    if let Some(r) = &g.refused {
                        // Never key media to someone the relay did not announce.
                        eprintln!("[{}] leaving: the group would include someone not announced in this call: {r}", opts.name);
                        s.left_reason = Some("group_refused".into());
                        s.error = Some(SummaryError { code: "group_refused".into(), message: r.to_string() });
                        break;
                    }
                    if g.keyed() {
                        if let (Some(code), Some(epoch)) = (g.verification_code(), g.epoch()) {
                            if s.epoch != Some(epoch) {
                                let members = g.member_names().join(", ");
                                eprintln!("[{}] Verification code (epoch {epoch}): {code}  members: {members}", opts.name);
                                s.epoch_codes.insert(epoch, code.clone());
                                while s.epoch_codes.len() > 256 {
                                    s.epoch_codes.pop_first();
                                }
                            }
                            // The lock stays on once keyed; the code is the latest epoch's.
                            s.e2ee = true;
                            s.epoch = Some(epoch);
                            s.verification_code = Some(code);
                        }
                    }
                }
                match m {
                    ServerMessage::ParticipantJoined { participant } => {
                        say(opts, &format!("{} ({}) joined", participant.participant, participant.user));
                        if e2ee_call && kex.is_none() && group.is_none() {
                            start_kex(opts, &call_id, &mut sig, &mut kex, &me, &participant).await?;
                            for (from, blob) in std::mem::take(&mut early_blobs) {
                                on_kex_blob(opts, &mut sig, &mut kex, &mut e2ee, s, from, blob).await?;
                            }
                        }
                        peers.push(participant);
                    }
                    ServerMessage::ParticipantLeft { participant, reason } => {
                        say(opts, &format!("{participant} left ({reason})"));
                        if participant == me && (reason == "transferred" || reason == "parked") {
                            s.ended = Some(reason);
                            ended_by_relay = true;
                            break;
                        }
                        if participant == me {
                            s.left_reason = Some(reason.clone());
                            s.error = Some(SummaryError { code: reason, message: "removed from the call by the relay".into() });
                            ended_by_relay = true;
                            break;
                        }
                        s.peers_left.push(participant);
                    }
                    ServerMessage::E2ee { from, blob } => {
                        if kex.is_none() {
                            // Key agreement can overtake the participant_joined event on
                            // the way here; keep it until the agreement exists.
                            if early_blobs.len() < 16 {
                                early_blobs.push((from, blob));
                            }
                        } else {
                            on_kex_blob(opts, &mut sig, &mut kex, &mut e2ee, s, from, blob).await?;
                        }
                    }
                    ServerMessage::Offer { sdp: offer_sdp, revision } => {
                        // The relay re-describes the session (a track per remote sender):
                        // accept every m-line as offered. Media is told apart by SSRC.
                        match sdp::answer_relay_offer(&offer_sdp, &ufrag, &pwd, identity.fingerprint()) {
                            Ok(answer) => {
                                sig.send(&ClientMessage::Answer { sdp: answer, revision }).await?;
                                s.offers_answered += 1;
                            }
                            Err(e) => say(opts, &format!("cannot answer the relay's offer {revision}: {e}")),
                        }
                    }
                    ServerMessage::CallModeChanged { call_mode, reason } => {
                        say(opts, &format!("the relay says the call is now {}: {reason}", call_mode.as_str()));
                        let keyed = e2ee.is_some() || group.as_ref().is_some_and(|g| g.keyed());
                        if keyed {
                            // Once keys exist nothing turns encryption off: every frame
                            // stays sealed whatever the relay says.
                            eprintln!("[{}] keys exist: staying end-to-end encrypted", opts.name);
                        } else if want_e2ee && call_mode != CallMode::E2ee {
                            // A relay's word never turns encryption off: without consent
                            // (`--e2ee-preferred`) the client leaves.
                            if !accept_downgrade(opts, s, &reason) {
                                break;
                            }
                            e2ee_call = false;
                            kex = None;
                            group = None;
                            s.call_mode = Some(call_mode);
                            s.mode_reason = Some(reason);
                        } else {
                            e2ee_call = call_mode == CallMode::E2ee;
                            s.call_mode = Some(call_mode);
                            s.mode_reason = Some(reason);
                        }
                    }
                    ServerMessage::Chat { from, body } => {
                        let text = open_chat(&body, e2ee.as_mut());
                        say(opts, &format!("chat from {from}: {text}"));
                        s.chat_received.push(text);
                    }
                    ServerMessage::FeatureResult { name, ok, detail } => {
                        s.features.push(FeatureOutcome { name, ok, code: None, detail });
                    }
                    ServerMessage::Error { code, message } => {
                        if matches!(code, ErrorCode::FeatureUnavailableInE2eeCall | ErrorCode::UnknownFeature) {
                            let name = opts.features.get(s.features.len()).cloned().unwrap_or_default();
                            say(opts, &format!("feature {name} refused: {message}"));
                            s.features.push(FeatureOutcome { name, ok: false, code: Some(code.as_str().into()), detail: Some(message) });
                        } else {
                            say(opts, &format!("relay error {}: {message}", code.as_str()));
                        }
                    }
                    _ => {}
                }
            }
        }
        if !sent_chat && !peers.is_empty() && (!e2ee_call || e2ee.is_some()) {
            if let Some(text) = &opts.chat {
                let body = seal_chat(text, e2ee.as_mut());
                sig.send(&ClientMessage::Chat { body }).await?;
            }
            sent_chat = true;
        }
    }
    if let Some(g) = &group {
        s.group_members = g.member_names();
        s.key_packages_refused = g.key_packages_refused_total();
    }
    s.lost_packets = streams.values().map(|x| x.lost()).sum();
    s.streams_received = streams.len();
    s.frames_incomplete = streams.values().map(|x| x.frames_incomplete).sum();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .map(|us| *us as f64 / 1000.0)
    };
    s.latency_ms_p50 = pct(0.5);
    s.latencies_us = latencies.clone();
    s.latency_ms_p99 = pct(0.99);
    if let Some(r) = recorder.take() {
        s.recorded_packets = r.finish().ok();
    }
    if !ended_by_relay {
        let _ = sig.send(&ClientMessage::Leave).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), path.dtls.close()).await;
    sig.close().await;
    Ok(())
}

/// The relay says the call cannot be end-to-end encrypted (`reason`). With
/// `--e2ee-preferred` that is accepted loudly (true: go on); otherwise the client records
/// `downgrade_refused` and must leave without sending anything in the clear (false).
fn accept_downgrade(opts: &CallOptions, s: &mut CallSummary, reason: &str) -> bool {
    if opts.e2ee_preferred {
        eprintln!(
            "[{}] WARNING: this call is NOT end-to-end encrypted: {reason} (going on because of --e2ee-preferred)",
            opts.name
        );
        s.downgrade_accepted = Some(reason.to_string());
        return true;
    }
    eprintln!(
        "[{}] leaving: this call can't be end-to-end encrypted: {reason} (--e2ee-preferred would go on unencrypted)",
        opts.name
    );
    s.left_reason = Some("downgrade_refused".into());
    s.mode_reason = Some(reason.to_string());
    s.error = Some(SummaryError {
        code: "downgrade_refused".into(),
        message: reason.to_string(),
    });
    false
}

/// How this client appears in an MLS group: its user name (from its token), its identity
/// key and token when it has one, and the issuer check when it was given issuer keys.
fn group_identity(opts: &CallOptions, call: &str) -> crate::group::GroupIdentity {
    let user = crate::roster::token_subject(&opts.token).unwrap_or_else(|| opts.name.clone());
    let mut id = crate::group::GroupIdentity::plain(&user);
    if let Some(k) = &opts.identity_key {
        id.key = Some((k.seed.clone(), k.public));
        id.token = Some(opts.token.clone());
    }
    if !opts.issuer_keys.is_empty() {
        id.check = Some(crate::identity::issuer_check(
            opts.issuer_keys.clone(),
            call.to_string(),
        ));
    }
    id
}

/// One received packet of a web client, as a frame to open: an Opus packet is a frame; VP8
/// packets lose their payload descriptor and are joined up to the marker bit. Packets of
/// other payload types, and empty (padding) packets, yield nothing.
fn web_frame(st: &mut StreamReceiver, h: &RtpHeader, payload: &[u8]) -> Option<Vec<u8>> {
    if payload.is_empty() {
        return None;
    }
    match h.payload_type {
        AUDIO_PT => Some(payload.to_vec()),
        VIDEO_PT => {
            let n = crate::webframe::vp8_descriptor_len(payload)?;
            st.push(h.sequence, h.timestamp, h.marker, &payload[n..])
        }
        _ => None,
    }
}

/// Feed one key-agreement blob; installs the SFrame keys once the agreement completes.
async fn on_kex_blob(
    opts: &CallOptions,
    sig: &mut Signal,
    kex: &mut Option<KeyAgreement>,
    e2ee: &mut Option<E2ee>,
    s: &mut CallSummary,
    from: String,
    blob: String,
) -> Result<(), CallError> {
    let Some(k) = kex.as_mut() else { return Ok(()) };
    match k.handle_blob(&blob) {
        Ok(Some(reply)) => {
            sig.send(&ClientMessage::E2ee {
                to: from,
                blob: reply,
            })
            .await?
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("[{}] end-to-end key agreement failed: {e}", opts.name);
            if s.e2ee_error.is_none() {
                s.e2ee_error = Some(e.to_string());
            }
        }
    }
    if e2ee.is_none() {
        if let Some(keys) = k.keys() {
            let (send_kid, recv_kid) = match k.role() {
                Role::Initiator => (KID_INITIATOR, KID_RESPONDER),
                Role::Responder => (KID_RESPONDER, KID_INITIATOR),
            };
            let suite = CipherSuite::default();
            let mut receiver = SframeReceiver::new();
            receiver.add_key(suite, recv_kid, keys.recv_key.as_bytes());
            *e2ee = Some(E2ee {
                sender: SframeSender::new(suite, send_kid, keys.send_key.as_bytes()),
                receiver,
            });
            s.e2ee = true;
            s.verification_code = Some(keys.verification_code.to_string());
            eprintln!(
                "[{}] Verification code: {}",
                opts.name, keys.verification_code
            );
            say(opts, "lock: on (end-to-end encrypted)");
        }
    }
    Ok(())
}

async fn start_kex(
    opts: &CallOptions,
    call_id: &str,
    sig: &mut Signal,
    kex: &mut Option<KeyAgreement>,
    me: &str,
    peer: &ParticipantInfo,
) -> Result<(), CallError> {
    // Defence in depth: never key a bot, even if a relay admitted one to an E2EE call.
    if peer.role.starts_with("bot:") {
        say(
            opts,
            &format!(
                "refusing to share end-to-end keys with {} (role {})",
                peer.participant, peer.role
            ),
        );
        return Ok(());
    }
    let mut k = KeyAgreement::new(call_id, me, &peer.participant)
        .map_err(|e| CallError::Protocol(e.to_string()))?;
    if let Some(first) = k.start() {
        sig.send(&ClientMessage::E2ee {
            to: peer.participant.clone(),
            blob: first.to_blob(),
        })
        .await?;
    }
    *kex = Some(k);
    Ok(())
}

async fn send_frame(
    path: &mut MediaPath,
    out: &mut Outgoing,
    frame: &[u8],
    sealer: Option<&mut SframeSender>,
    sealed: &mut Vec<u8>,
    pkt: &mut Vec<u8>,
    s: &mut CallSummary,
) {
    let body: &[u8] = match sealer {
        Some(k) => match k.seal_into(&[], frame, sealed) {
            Ok(_) => sealed,
            Err(_) => return,
        },
        None => frame,
    };
    let ts = match out.step {
        Some(step) => out.frame_no.wrapping_mul(step),
        None => {
            (out.started.elapsed().as_micros() as u64 * out.clock_rate as u64 / 1_000_000) as u32
        }
    };
    send_packets(path, out, ts, packetize(body), pkt, s).await;
}

/// One frame of a VP8 clip: sealed in the web client's framing on an E2EE call, then one
/// RTP packet per chunk behind a VP8 payload descriptor (RFC 7741).
async fn send_vp8_frame(
    path: &mut MediaPath,
    out: &mut Outgoing,
    frame: &[u8],
    sealer: Option<&mut SframeSender>,
    sealed: &mut Vec<u8>,
    pkt: &mut Vec<u8>,
    s: &mut CallSummary,
) {
    let body: &[u8] = match sealer {
        Some(k) => {
            let clear = crate::webframe::vp8_clear_len(frame);
            let Ok(ct) = k.seal(&frame[..clear], &frame[clear..]) else {
                return;
            };
            sealed.clear();
            sealed.extend_from_slice(&frame[..clear]);
            sealed.extend_from_slice(&ct);
            sealed
        }
        None => frame,
    };
    let ts = (out.started.elapsed().as_micros() as u64 * out.clock_rate as u64 / 1_000_000) as u32;
    let packets = crate::webframe::vp8_packets(body, media::MAX_RTP_PAYLOAD - 1);
    send_packets(path, out, ts, packets, pkt, s).await;
}

/// One frame's payloads as consecutive RTP packets of `out`'s stream, all with timestamp
/// `ts` and the marker on the last; the frame is counted once they are sent.
async fn send_packets<P: AsRef<[u8]>>(
    path: &mut MediaPath,
    out: &mut Outgoing,
    ts: u32,
    payloads: impl IntoIterator<Item = (P, bool)>,
    pkt: &mut Vec<u8>,
    s: &mut CallSummary,
) {
    for (payload, last) in payloads {
        pkt.clear();
        RtpHeader {
            marker: last,
            payload_type: out.pt,
            sequence: out.seq,
            timestamp: ts,
            ssrc: out.ssrc,
            header_len: 12,
            padding_len: 0,
        }
        .write_minimal(pkt);
        pkt.extend_from_slice(payload.as_ref());
        out.seq = out.seq.wrapping_add(1);
        let Ok(p) = path.outbound.encrypt_rtp(pkt) else {
            continue;
        };
        if path.socket.send_to(&p, path.relay).await.is_ok() {
            s.sent_packets += 1;
            s.sent_bytes += p.len() as u64;
        }
    }
    out.frame_no = out.frame_no.wrapping_add(1);
    s.sent_frames += 1;
}

const CHAT_SEALED_PREFIX: &str = "sframe:";

/// On an E2EE call chat is sealed with the call's SFrame key; the relay sees base64.
fn seal_chat(text: &str, e2ee: Option<&mut E2ee>) -> String {
    match e2ee {
        Some(k) => match k.sender.seal(b"chat", text.as_bytes()) {
            Ok(ct) => format!(
                "{CHAT_SEALED_PREFIX}{}",
                base64::engine::general_purpose::STANDARD.encode(ct)
            ),
            Err(_) => String::new(),
        },
        None => text.to_string(),
    }
}

fn open_chat(body: &str, e2ee: Option<&mut E2ee>) -> String {
    match (body.strip_prefix(CHAT_SEALED_PREFIX), e2ee) {
        (Some(b64), Some(k)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|ct| k.receiver.open(b"chat", &ct).ok())
            .map(|(_, _, pt)| String::from_utf8_lossy(&pt).into_owned())
            .unwrap_or_else(|| "<chat that does not open>".into()),
        (Some(_), None) => "<sealed chat, no keys>".into(),
        (None, _) => body.to_string(),
    }
}
