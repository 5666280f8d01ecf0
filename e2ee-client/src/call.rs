//! One participant of a call: join over signalling, connect the hop (ICE, DTLS-SRTP), agree
//! end-to-end keys with the peer when the call is E2EE, then send synthetic media and check
//! every frame that arrives.
//!
//! What the client decides (downgrade policy, keying, renegotiation, leaving) is the
//! sans-IO [`ClientSession`] in [`crate::session`]; this module is its driver: the
//! WebSocket, the media path, the timers, and the media counters of the summary.

use crate::media::{self, make_frame, packetize, verify_frame, StreamReceiver};
use crate::session::{
    ClientSession, FrameOpen, LocalDescription, MediaMode, Output, Progress, SessionError,
};
use crate::sframe::Sender as SframeSender;
use crate::signal::{Signal, SignalError};
use crate::transport::{self, ConnectError, MediaPath};
use blindrelay_protocol::rtcp;
use blindrelay_protocol::rtp::RtpHeader;
use blindrelay_protocol::sdp::{AnswerInfo, AUDIO_PT, VIDEO_PT};
use blindrelay_protocol::signal::{CallMode, E2eeOption, E2eeScheme, ServerMessage};
use blindrelay_transport::webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
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
    /// The relay to join through.
    pub relay: String,
    /// More relays, tried in order (wrapping round) when the call is lost once
    /// established ([`crate::failover`]). Empty: a loss ends the call.
    pub fallback_relays: Vec<String>,
    /// Published whenever the client's [`Progress`] changes (where it is, whose frames it
    /// opens), for tests and applications that wait on the call's state.
    pub progress: Option<std::sync::Arc<tokio::sync::watch::Sender<Progress>>>,
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
    /// Offer only AES128_CM_HMAC_SHA1_80 in DTLS, as webrtcbin, Janus and many native
    /// stacks do (by default AEAD_AES_128_GCM is offered first, and relays pick it).
    pub srtp_aes_cm_only: bool,
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
    /// Send the synthetic video as this many simulcast layers (2 or 3; 0 or 1: one
    /// stream), as Chromium does: an SSRC per layer in one `a=ssrc-group:SIM`, each layer
    /// half the previous one's size and a quarter of its rate, the top one `video_kbps` at
    /// 640x480. Frames go in the web client's VP8 framing (needs `web_peers`), so the relay
    /// finds key frames and layer heights as it does a browser's.
    pub simulcast: u8,
    /// Ask the relay to send every remote video track at most this many lines tall
    /// (`max_resolution`): of a simulcast track, the tallest layer within it.
    pub max_height: Option<u32>,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            relay: "ws://127.0.0.1:7400/v1/signal".into(),
            fallback_relays: Vec::new(),
            progress: None,
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
            srtp_aes_cm_only: false,
            stats_every: None,
            name: "client".into(),
            chat: None,
            features: vec![],
            bot: None,
            wait_invite: false,
            web_peers: false,
            video_clip: None,
            audio_clip: None,
            simulcast: 0,
            max_height: None,
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

/// Packets received on one SSRC, with the payload type they came with.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InboundStream {
    pub ssrc: u32,
    pub payload_type: u8,
    pub packets: u64,
}

/// A session of the call that was lost and rejoined through another relay: what it showed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EarlierSession {
    /// The relay it went through.
    pub relay: String,
    /// This client's participant id in it.
    pub participant: Option<String>,
    /// The code in force when it was lost.
    pub verification_code: Option<String>,
    /// Its group's epochs and codes, and members, as `epoch_codes` and `epoch_members`
    /// (group calls).
    pub epoch_codes: BTreeMap<u64, String>,
    pub epoch_members: BTreeMap<u64, Vec<String>>,
    pub group_members: Vec<String>,
}

/// What happened in the call; printed as JSON by `--json`. Counters add up over every
/// session of a call that failed over to another relay; what describes one session
/// (participant, codes, epochs) is the last one's, with earlier ones in `earlier_sessions`.
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
    /// When the first frame from each sending participant opened, in ms since this
    /// client's join (group calls; as the page's `first_decrypted_ms`).
    pub first_decrypted_ms: BTreeMap<String, f64>,
    /// Wall-clock time of the relay's `joined`, in ms since the Unix epoch: members'
    /// timelines line up on it (the group benchmark's join-to-keyed times).
    pub joined_unix_ms: Option<f64>,
    /// Every epoch this member was keyed in and the group code it showed then (group
    /// calls; the last 256). Members compare codes epoch by epoch: the group changes as
    /// people come and go, so "the same code" means the same code in the same epoch.
    /// After a rejoin this is the group it rejoined (its epochs may start again at 0 on a
    /// relay that formed the group anew); the lost sessions' are in `earlier_sessions`.
    pub epoch_codes: BTreeMap<u64, String>,
    /// The group's members in each of those epochs, as their MLS credentials name them
    /// (sorted): the code and the list together, epoch by epoch.
    pub epoch_members: BTreeMap<u64, Vec<String>>,
    pub verification_code: Option<String>,
    /// Every verification code shown, in order (the last 256): one per one-to-one key
    /// agreement (a rejoin agrees new keys: a new code), one per group epoch.
    pub codes: Vec<String>,
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
    /// `decrypt_failures` by reason (`SframeError::code`, or `early_expired`: a frame of a
    /// coming epoch whose commit never came in time).
    pub decrypt_failures_by: BTreeMap<String, u64>,
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
    /// The SSRCs this client sent audio and video on (with simulcast, the lowest layer's;
    /// every layer's in `video_layers`).
    pub audio_ssrc: Option<u32>,
    pub video_ssrc: Option<u32>,
    pub video_layers: Vec<u32>,
    /// Synthetic VP8-framed video: key frames sent (every layer's), and the key frame
    /// requests (PLI or FIR from the relay) that named one of this client's video SSRCs.
    pub keyframes_sent: u64,
    pub keyframe_requests: u64,
    /// Synthetic frames in the VP8 framing that were checked byte for byte, by the picture
    /// height of the last key frame on their stream: which simulcast layer arrived.
    pub frames_verified_by_height: BTreeMap<u16, u64>,
    /// Every verified frame's end-to-end latency in µs (sorted), for load reports.
    #[serde(skip)]
    pub latencies_us: Vec<u32>,
    /// The invitation this client followed, if any: (call, by, reason).
    pub invited: Option<(String, String, String)>,
    /// Why the relay ended this participant's part, when it was a normal hand-over
    /// (transferred, parked).
    pub ended: Option<String>,
    pub error: Option<SummaryError>,
    /// The relay the call ended on.
    pub relay: Option<String>,
    /// Successful rejoins through another relay after the call was lost (0: the first
    /// relay held the whole call).
    pub reconnects: u64,
    /// Sender's participant id -> the longest gap, in ms, between two consecutive frames
    /// opened from it (E2EE calls; senders with at least two frames). Ids are as the relay
    /// announced them: a participant that rejoins has a new id, so its frames before and
    /// after appear under two ids.
    pub max_gap_ms_from: BTreeMap<String, f64>,
    /// This client's participant id in each session, in order (more than one after a
    /// rejoin).
    pub participant_ids: Vec<String>,
    /// The sessions lost before the last one (the latest 64).
    pub earlier_sessions: Vec<EarlierSession>,
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
    /// Signalling ended before the call was set up.
    #[error("{0}")]
    Signalling(String),
}

impl From<SessionError> for CallError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Refused { code, message } => CallError::Refused { code, message },
            SessionError::Protocol(m) => CallError::Protocol(m),
            SessionError::Answer(m) => CallError::Answer(m),
            SessionError::Signalling(m) => CallError::Signalling(m),
        }
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

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

/// One video stream this client sends: the only one, or a simulcast layer.
struct VideoLayer {
    out: Outgoing,
    width: u16,
    height: u16,
    /// Bytes of each synthetic frame, for the layer's rate.
    frame_bytes: usize,
    /// A key frame goes next: the first frame, or a receiver asked (PLI or FIR).
    key_due: bool,
    frames_since_key: u32,
}

/// The longest a synthetic VP8-framed stream goes without a key frame when nobody asks
/// for one (encoders have such a limit too): a receiver that missed a request still
/// starts within it.
const KEY_FRAME_EVERY: Duration = Duration::from_secs(10);

/// The top layer's picture size (the web client's camera).
const TOP_SIZE: (u16, u16) = (640, 480);

impl VideoLayer {
    /// The video streams to send, lowest first: one at `kbps` (`layers` < 2), or
    /// `layers` simulcast layers, each half the next one's width and height and a quarter
    /// of its rate (as browsers scale them), the top one at `kbps`.
    fn all(layers: u8, kbps: u32, fps: u32) -> Vec<VideoLayer> {
        let n = u32::from(layers.clamp(1, blindrelay_protocol::sdp::MAX_LAYERS as u8));
        (0..n)
            .map(|i| {
                let shift = n - 1 - i;
                let kbps = (kbps >> (2 * shift)).max(1);
                VideoLayer {
                    out: Outgoing::new(VIDEO_PT, 90_000),
                    width: TOP_SIZE.0 >> shift,
                    height: TOP_SIZE.1 >> shift,
                    frame_bytes: ((kbps as u64 * 1000 / 8) / fps.max(1) as u64)
                        .max(media::FRAME_HEADER as u64) as usize,
                    key_due: true,
                    frames_since_key: 0,
                }
            })
            .collect()
    }

    /// Whether the frame about to go is a key frame (and count it so).
    fn take_key(&mut self, fps: u32) -> bool {
        let every = fps.max(1) * KEY_FRAME_EVERY.as_secs() as u32;
        let key = self.key_due || self.frames_since_key + 1 >= every;
        self.key_due = false;
        self.frames_since_key = if key { 0 } else { self.frames_since_key + 1 };
        key
    }
}

/// Join a call and run it for `opts.duration`. Refusals come back as a summary with
/// `error` set, not as `Err`, so the caller can still print the JSON.
pub async fn run_call(opts: &CallOptions) -> CallSummary {
    let mut session = None;
    // Taken with run's start instant (microseconds apart): the wall clock the summary's
    // relative times hang on.
    let wall0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0);
    let r = run(opts, &mut session).await;
    let mut s = session.map(ClientSession::into_summary).unwrap_or_default();
    s.joined_unix_ms = s.join_ms.map(|j| wall0 + j);
    if let Err(e) = r {
        let (code, message) = match &e {
            CallError::Refused { code, message } => (code.clone(), message.clone()),
            CallError::Connect(_) => ("connect_failed".into(), e.to_string()),
            CallError::Signal(_) | CallError::Signalling(_) => {
                ("signalling_failed".into(), e.to_string())
            }
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

/// What the driver does after carrying out a batch of the session's outputs.
enum Next {
    /// Wait for the next input.
    Wait,
    /// Set up the media path to this answer.
    Connect(AnswerInfo),
    /// The call is over.
    Close,
    /// The call was lost: drop this relay's connections, reach `relay` at `at`.
    Reconnect { relay: String, at: Instant },
}

/// Carry out the session's outputs in order.
async fn execute(
    sig: &mut Signal,
    opts: &CallOptions,
    outputs: Vec<Output>,
    media: &mut MediaMode,
) -> Result<Next, CallError> {
    let mut next = Next::Wait;
    for o in outputs {
        match o {
            Output::Send(m) => sig.send(&m).await?,
            Output::ConnectMedia(answer) => next = Next::Connect(answer),
            Output::Media(m) => *media = m,
            Output::Say(line) => say(opts, &line),
            Output::Warn(line) => eprintln!("[{}] {line}", opts.name),
            Output::Fail(e) => return Err(e.into()),
            Output::Close => return Ok(Next::Close),
            Output::Reconnect { relay, at } => return Ok(Next::Reconnect { relay, at }),
        }
    }
    Ok(next)
}

/// Carry out outputs while no relay is connected (between a loss and the next relay):
/// only lines, the end, or the next attempt can come.
fn execute_offline(opts: &CallOptions, outputs: Vec<Output>) -> Next {
    for o in outputs {
        match o {
            Output::Say(line) => say(opts, &line),
            Output::Warn(line) => eprintln!("[{}] {line}", opts.name),
            Output::Close | Output::Fail(_) => return Next::Close,
            Output::Reconnect { relay, at } => return Next::Reconnect { relay, at },
            // Nothing to send them on: the relay is gone.
            Output::Send(_) | Output::ConnectMedia(_) | Output::Media(_) => {}
        }
    }
    Next::Wait
}

/// Sleep until the session's next deadline (forever without one).
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// The session's input for what signalling delivered.
fn signalled(session: &mut ClientSession, m: Result<ServerMessage, SignalError>) -> Vec<Output> {
    let now = Instant::now();
    match m {
        Ok(m) => session.on_message(now, m),
        Err(e) => session.on_signalling_closed(now, &e.to_string(), e.close_reason()),
    }
}

/// Tell progress watchers what changed.
fn publish(opts: &CallOptions, session: &mut ClientSession) {
    if session.take_progress_changed() {
        if let Some(tx) = &opts.progress {
            tx.send_replace(session.progress());
        }
    }
}

/// One session's own media identity: a fresh DTLS certificate, ICE credentials and SSRCs
/// (a rejoin never reuses the lost session's).
struct Identity {
    dtls: DtlsIdentity,
    local: LocalDescription,
    audio: Outgoing,
    /// Never empty: the lowest layer first.
    video: Vec<VideoLayer>,
}

impl Identity {
    /// `audio_step`: the RTP timestamp step of an audio clip's packets.
    fn fresh(opts: &CallOptions, audio_step: Option<u32>) -> Result<Self, CallError> {
        let dtls = DtlsIdentity::generate().map_err(|e| CallError::Identity(e.to_string()))?;
        let mut audio = Outgoing::new(AUDIO_PT, 48_000);
        audio.step = audio_step;
        let video = VideoLayer::all(opts.simulcast, opts.video_kbps, opts.fps);
        let ssrcs: Vec<u32> = video.iter().map(|l| l.out.ssrc).collect();
        let local = LocalDescription {
            ice_ufrag: Alphanumeric.sample_string(&mut rand::rng(), 8),
            ice_pwd: Alphanumeric.sample_string(&mut rand::rng(), 24),
            fingerprint: dtls.fingerprint().clone(),
            audio_ssrc: audio.ssrc,
            // `VideoLayer::all` makes at least one layer.
            video_ssrc: ssrcs[0],
            video_layers: if ssrcs.len() >= 2 { ssrcs } else { Vec::new() },
            cname: Alphanumeric.sample_string(&mut rand::rng(), 12),
            session_id: rand::random::<u32>() as u64,
        };
        Ok(Identity {
            dtls,
            local,
            audio,
            video,
        })
    }
}

/// What one session sends: the clips, read once for the whole call.
struct Sources {
    clip: Option<Vec<Vec<u8>>>,
    audio_clip: Option<Vec<Vec<u8>>>,
}

/// The thin driver: owns the WebSocket, the media path and the clock, feeds the
/// [`ClientSession`] and carries out what it says. The session ends up in `slot` (with
/// the summary) as soon as it exists. A call that fails over runs one attempt per relay
/// reached, each with a fresh media identity; the receive counters go on across them.
async fn run(opts: &CallOptions, slot: &mut Option<ClientSession>) -> Result<(), CallError> {
    let t0 = Instant::now();
    let sources = Sources {
        clip: match &opts.video_clip {
            Some(p) => Some(crate::webframe::read_ivf(p)?),
            None => None,
        },
        audio_clip: match &opts.audio_clip {
            Some(p) => Some(crate::webframe::read_ogg_opus(p)?),
            None => None,
        },
    };
    // An Opus clip's packets are 20 ms each (opusenc's default frame size).
    let audio_step = sources.audio_clip.as_ref().map(|_| 960);
    let mut id = Identity::fresh(opts, audio_step)?;
    let session = slot.insert(ClientSession::new(opts, id.local.clone(), t0));
    let mut rx = Receiving {
        streams: HashMap::new(),
        heights: HashMap::new(),
        latencies: Vec::new(),
        opened: Vec::new(),
        recorder: None,
        t0,
    };
    let mut rejoin = None;
    let r = loop {
        let r = attempt(opts, session, &mut id, rejoin.take(), &sources, &mut rx).await;
        let next = match r {
            Ok(next) => next,
            Err(e) if session.fails_over() => {
                let outputs = session.on_connection_failed(Instant::now(), &e.to_string());
                execute_offline(opts, outputs)
            }
            Err(e) => break Err(e),
        };
        publish(opts, session);
        let Next::Reconnect { relay, at } = next else {
            break Ok(());
        };
        // The call's end may come while waiting.
        let outputs = tokio::select! {
            _ = until(Some(at)) => Vec::new(),
            _ = until(session.next_deadline()) => session.on_tick(Instant::now()),
        };
        if matches!(execute_offline(opts, outputs), Next::Close) || session.is_done() {
            break Ok(());
        }
        say(opts, &format!("reaching {relay}"));
        id = Identity::fresh(opts, audio_step)?;
        rejoin = Some(id.local.clone());
    };
    publish(opts, session);
    rx.finish(session.summary_mut());
    r
}

/// One session on one relay: connect signalling, hello and join (or rejoin with
/// `rejoin`'s fresh description), set up the media path, run the call until it ends
/// ([`Next::Close`]) or is lost ([`Next::Reconnect`]). Failing to reach the relay or
/// losing a connection comes back as `Err`.
async fn attempt(
    opts: &CallOptions,
    session: &mut ClientSession,
    id: &mut Identity,
    rejoin: Option<LocalDescription>,
    sources: &Sources,
    rx: &mut Receiving,
) -> Result<Next, CallError> {
    let mut media = MediaMode::Hold;
    let url = session.relay().to_string();
    let mut sig = match tokio::time::timeout(opts.connect_timeout, Signal::connect(&url)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(CallError::Signalling(format!(
                "cannot reach {url} within {:?}",
                opts.connect_timeout
            )))
        }
    };
    // Until the relay's answer: hello, (an invitation), join.
    let mut outputs = match rejoin {
        Some(local) => session.rejoin(Instant::now(), local),
        None => session.start(),
    };
    let answer = loop {
        let next = execute(&mut sig, opts, outputs, &mut media).await?;
        publish(opts, session);
        match next {
            Next::Connect(answer) => break answer,
            Next::Close => {
                sig.close().await;
                return Ok(Next::Close);
            }
            reconnect @ Next::Reconnect { .. } => return Ok(reconnect),
            Next::Wait => {}
        }
        outputs = tokio::select! {
            m = sig.recv() => signalled(session, m),
            _ = until(session.next_deadline()) => session.on_tick(Instant::now()),
        };
    };

    let ufrag = id.local.ice_ufrag.clone();
    let profiles: &[_] = if opts.srtp_aes_cm_only {
        &[SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80]
    } else {
        &blindrelay_transport::DEFAULT_PROFILES
    };
    let mut path =
        transport::connect_with_profiles(&answer, &ufrag, &id.dtls, opts.connect_timeout, profiles)
            .await?;
    let outputs = session.on_media_connected(Instant::now(), path.profile);
    let mut next = execute(&mut sig, opts, outputs, &mut media).await?;
    publish(opts, session);
    let canary = opts.canary.as_deref().map(str::as_bytes);
    let mut audio_tick = tokio::time::interval(Duration::from_millis(20));
    let fps = opts.fps.max(1);
    let mut video_tick = tokio::time::interval(Duration::from_micros(1_000_000 / fps as u64));
    let mut rtcp_tick = tokio::time::interval(Duration::from_secs(1));
    let mut stats_tick =
        tokio::time::interval(opts.stats_every.unwrap_or(Duration::from_secs(3600)));
    stats_tick.tick().await;
    let video_frame_bytes = id.video.iter().map(|l| l.frame_bytes).max().unwrap_or(0);
    rx.opened.reserve(video_frame_bytes + 64);
    if rx.recorder.is_none() {
        if let Some((crate::bot::BotKind::Recording, Some(out))) = &opts.bot {
            rx.recorder = Some(crate::bot::RtpDumpWriter::create(out, path.relay).map_err(
                |e| CallError::Protocol(format!("cannot create {}: {e}", out.display())),
            )?);
        }
    }
    let (clip, audio_clip) = (&sources.clip, &sources.audio_clip);
    let (audio, video) = (&mut id.audio, &mut id.video);
    let mut frame = Vec::with_capacity(video_frame_bytes + 64);
    let mut dressed = Vec::with_capacity(video_frame_bytes + 64);
    let mut sealed = Vec::with_capacity(video_frame_bytes + 64);
    let mut pkt = Vec::with_capacity(1500);
    let mut last_bytes = session.summary().received_bytes;
    // Streams of lost sessions stay counted but get no more receiver reports.
    let earlier_streams: std::collections::HashSet<u32> = rx.streams.keys().copied().collect();
    while matches!(next, Next::Wait | Next::Connect(_)) {
        let sending = media != MediaMode::Hold;
        let outputs = tokio::select! {
            _ = until(session.next_deadline()) => session.on_tick(Instant::now()),
            _ = audio_tick.tick(), if opts.audio && sending => {
                let sent = if let Some(packets) = audio_clip.as_ref().filter(|p| !p.is_empty()) {
                    let p = &packets[audio.frame_no as usize % packets.len()];
                    send_frame(&mut path, audio, p, session.sealer(), &mut sealed, &mut pkt).await
                } else {
                    make_frame(audio.ssrc, audio.frame_no, now_us(), 160, canary, &mut frame);
                    send_frame(&mut path, audio, &frame, session.sealer(), &mut sealed, &mut pkt).await
                };
                sent.add_to(session.summary_mut());
                Vec::new()
            }
            _ = video_tick.tick(), if opts.video && sending => {
                let sent = if let Some(frames) = clip.as_ref().filter(|f| !f.is_empty()) {
                    let v = &mut video[0].out;
                    let f = &frames[v.frame_no as usize % frames.len()];
                    send_vp8_frame(&mut path, v, f, session.sealer(), &mut sealed, &mut pkt).await
                } else if opts.web_peers {
                    // Web peers (and e2ee-clients with --web-peers) read every video frame
                    // in the web client's VP8 framing, synthetic ones too: each starts as
                    // a VP8 frame does, once per layer.
                    let mut sent = Sent::default();
                    for l in video.iter_mut() {
                        let key = l.take_key(fps);
                        make_frame(l.out.ssrc, l.out.frame_no, now_us(), l.frame_bytes, canary, &mut frame);
                        dressed.clear();
                        crate::webframe::vp8_frame_start(key, l.width, l.height, &mut dressed);
                        dressed.extend_from_slice(&frame);
                        let s = send_vp8_frame(&mut path, &mut l.out, &dressed, session.sealer(), &mut sealed, &mut pkt).await;
                        if key && s.frames > 0 {
                            session.summary_mut().keyframes_sent += 1;
                        }
                        sent.add(s);
                    }
                    sent
                } else {
                    let v = &mut video[0];
                    make_frame(v.out.ssrc, v.out.frame_no, now_us(), v.frame_bytes, canary, &mut frame);
                    send_frame(&mut path, &mut v.out, &frame, session.sealer(), &mut sealed, &mut pkt).await
                };
                sent.add_to(session.summary_mut());
                Vec::new()
            }
            _ = rtcp_tick.tick() => {
                // A receiver report per incoming stream, so the senders see our loss.
                let mut compound = Vec::new();
                for (ssrc, st) in rx.streams.iter().filter(|(s, _)| !earlier_streams.contains(s)) {
                    compound.extend_from_slice(&rtcp::receiver_report(video[0].out.ssrc, *ssrc, 0, st.lost() as u32, st.highest_seq()));
                }
                if !compound.is_empty() {
                    if let Ok(p) = path.outbound.encrypt_rtcp(&compound) {
                        let _ = path.socket.send_to(&p, path.relay).await;
                    }
                }
                Vec::new()
            }
            _ = stats_tick.tick() => {
                let lost: u64 = rx.streams.values().map(|x| x.lost()).sum();
                let lock = session.lock();
                let s = session.summary();
                let kbps = s.received_bytes.saturating_sub(last_bytes) as f64 * 8.0 / 1000.0 / opts.stats_every.unwrap_or(Duration::from_secs(1)).as_secs_f64();
                last_bytes = s.received_bytes;
                say(opts, &format!(
                    "sent {} pkts, received {} pkts ({kbps:.0} kbit/s), lost {lost}, frames ok {} bad {}, e2ee lock {lock}",
                    s.sent_packets, s.received_packets, s.frames_verified, s.frames_corrupt + s.decrypt_failures));
                Vec::new()
            }
            r = path.media_rx.recv() => match r {
                Some((data, is_rtcp)) => {
                    rx.packet(opts, session, &mut path, &data, is_rtcp, video);
                    session.take_pending()
                }
                None => session.on_media_closed(Instant::now()),
            },
            m = sig.recv() => signalled(session, m),
        };
        next = execute(&mut sig, opts, outputs, &mut media).await?;
        publish(opts, session);
    }
    if matches!(next, Next::Reconnect { .. }) {
        // The relay is gone or has dropped this client: no leave. The DTLS association is
        // closed on the side (a dead relay answers nothing), so the rejoin does not wait.
        let dtls = path.dtls.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), dtls.close()).await;
        });
        return Ok(next);
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), path.dtls.close()).await;
    sig.close().await;
    Ok(next)
}

/// Most streams whose key frame heights are remembered (a relay cannot grow the table).
const MAX_STREAMS: usize = 1024;

/// The receive side of the media path: per-stream reassembly, latencies, the recorder.
struct Receiving {
    streams: HashMap<u32, StreamReceiver>,
    /// The picture height of the last VP8 key frame on each stream.
    heights: HashMap<u32, u16>,
    latencies: Vec<u32>,
    opened: Vec<u8>,
    recorder: Option<crate::bot::RtpDumpWriter>,
    t0: Instant,
}

impl Receiving {
    /// The receive side's figures, into the summary at the call's end.
    fn finish(&mut self, s: &mut CallSummary) {
        s.lost_packets = self.streams.values().map(|x| x.lost()).sum();
        s.streams_received = self.streams.len();
        s.frames_incomplete = self.streams.values().map(|x| x.frames_incomplete).sum();
        let latencies = &mut self.latencies;
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
                .map(|us| *us as f64 / 1000.0)
        };
        s.latency_ms_p50 = pct(0.5);
        s.latency_ms_p99 = pct(0.99);
        s.latencies_us = latencies.clone();
        if let Some(r) = self.recorder.take() {
            s.recorded_packets = r.finish().ok();
        }
    }

    /// One SRTP or SRTCP datagram from the relay: decrypt, reassemble, open (through the
    /// session's keys) and check the frame it completes. A key frame request (PLI, FIR)
    /// for one of `video`'s streams makes its next frame a key frame.
    fn packet(
        &mut self,
        opts: &CallOptions,
        session: &mut ClientSession,
        path: &mut MediaPath,
        data: &[u8],
        is_rtcp: bool,
        video: &mut [VideoLayer],
    ) {
        let s = session.summary_mut();
        if is_rtcp {
            match path.inbound.decrypt_rtcp(data) {
                Ok(plain) => {
                    s.received_rtcp += 1;
                    for p in rtcp::packets(&plain).map_while(Result::ok) {
                        let rtcp::RtcpRoute::MediaSender(ssrc) = p.route() else {
                            continue;
                        };
                        if !rtcp::is_keyframe_request(&p) {
                            continue;
                        }
                        if let Some(l) = video.iter_mut().find(|l| l.out.ssrc == ssrc) {
                            l.key_due = true;
                            s.keyframe_requests += 1;
                        }
                    }
                }
                Err(_) => s.srtp_failures += 1,
            }
            return;
        }
        let plain = match path.inbound.decrypt_rtp(data) {
            Ok(p) => p,
            Err(_) => {
                s.srtp_failures += 1;
                return;
            }
        };
        let Ok(h) = RtpHeader::parse(&plain) else {
            s.srtp_failures += 1;
            return;
        };
        if s.received_packets == 0 {
            s.first_media_ms = Some(self.t0.elapsed().as_secs_f64() * 1e3);
        }
        s.received_packets += 1;
        if let Some(r) = self.recorder.as_mut() {
            let _ = r.write(&plain);
        }
        s.received_bytes += data.len() as u64;
        if let Some(i) = s.inbound.iter_mut().find(|i| i.ssrc == h.ssrc) {
            i.packets += 1;
        } else if s.inbound.len() < 64 {
            s.inbound.push(InboundStream {
                ssrc: h.ssrc,
                payload_type: h.payload_type,
                packets: 1,
            });
        }
        let st = self.streams.entry(h.ssrc).or_default();
        let payload = h.payload(&plain);
        let vp8 = opts.web_peers && h.payload_type == VIDEO_PT;
        if vp8 && payload.first().is_some_and(|b| b & 0x10 != 0) {
            // A frame's first packet (S set) says its size if it starts a key frame: read
            // here, the height stands even if a later packet of the frame is lost.
            let size = crate::webframe::vp8_descriptor_len(payload)
                .and_then(|n| blindrelay_protocol::rtp::vp8_key_frame_size(&payload[n..]));
            if let Some((_, height)) = size {
                if self.heights.len() < MAX_STREAMS || self.heights.contains_key(&h.ssrc) {
                    self.heights.insert(h.ssrc, height);
                }
            }
        }
        let f = if opts.web_peers {
            match web_frame(st, &h, payload) {
                Some(f) => f,
                None => return,
            }
        } else {
            let Some(f) = st.push(h.sequence, h.timestamp, h.marker, payload) else {
                return;
            };
            f
        };
        s.frames_received += 1;
        if let Some((
            kind @ (crate::bot::BotKind::Captions | crate::bot::BotKind::Transcription),
            _,
        )) = &opts.bot
        {
            // Where speech-to-text would run on the frame.
            println!(
                "{kind:?}: ssrc={:08x} ts={} frame of {} bytes",
                h.ssrc,
                h.timestamp,
                f.len()
            );
        }
        // The web client keeps a VP8 frame's first bytes clear, as SFrame metadata.
        let clear = if vp8 {
            crate::webframe::vp8_clear_len(&f)
        } else {
            0
        };
        // What follows the clear bytes: the synthetic frame, in the VP8 framing.
        let plain_frame: &[u8] =
            match session.open_frame(Instant::now(), &f[..clear], &f[clear..], &mut self.opened) {
                FrameOpen::Clear => &f[clear..],
                FrameOpen::Opened => &self.opened,
                FrameOpen::Dropped => return,
            };
        if opts.web_peers && !media::is_synthetic(plain_frame) {
            // Real Opus and VP8 from a browser: nothing to compare with.
            return;
        }
        let s = session.summary_mut();
        match verify_frame(plain_frame, opts.canary.as_deref().map(str::as_bytes)) {
            Some(info) => {
                s.frames_verified += 1;
                if vp8 {
                    let height = self.heights.get(&h.ssrc).copied().unwrap_or(0);
                    *s.frames_verified_by_height.entry(height).or_default() += 1;
                }
                self.latencies.push(
                    now_us()
                        .saturating_sub(info.send_time_us)
                        .min(u32::MAX as u64) as u32,
                );
            }
            None => s.frames_corrupt += 1,
        }
    }
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

async fn send_frame(
    path: &mut MediaPath,
    out: &mut Outgoing,
    frame: &[u8],
    sealer: Option<&mut SframeSender>,
    sealed: &mut Vec<u8>,
    pkt: &mut Vec<u8>,
) -> Sent {
    let body: &[u8] = match sealer {
        Some(k) => match k.seal_into(&[], frame, sealed) {
            Ok(_) => sealed,
            Err(_) => return Sent::default(),
        },
        None => frame,
    };
    let ts = match out.step {
        Some(step) => out.frame_no.wrapping_mul(step),
        None => {
            (out.started.elapsed().as_micros() as u64 * out.clock_rate as u64 / 1_000_000) as u32
        }
    };
    send_packets(path, out, ts, packetize(body), pkt).await
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
) -> Sent {
    let Some(packets) = vp8_payloads(frame, sealer, sealed) else {
        return Sent::default();
    };
    let ts = (out.started.elapsed().as_micros() as u64 * out.clock_rate as u64 / 1_000_000) as u32;
    send_packets(path, out, ts, packets, pkt).await
}

/// The RTP payloads of one VP8 frame in the web client's framing: sealed (when `sealer`)
/// with its first VP8 bytes clear as SFrame metadata, behind a VP8 payload descriptor;
/// `None` if sealing failed.
fn vp8_payloads(
    frame: &[u8],
    sealer: Option<&mut SframeSender>,
    sealed: &mut Vec<u8>,
) -> Option<Vec<(Vec<u8>, bool)>> {
    let body: &[u8] = match sealer {
        Some(k) => {
            let clear = crate::webframe::vp8_clear_len(frame);
            let ct = k.seal(&frame[..clear], &frame[clear..]).ok()?;
            sealed.clear();
            sealed.extend_from_slice(&frame[..clear]);
            sealed.extend_from_slice(&ct);
            sealed
        }
        None => frame,
    };
    Some(crate::webframe::vp8_packets(
        body,
        media::MAX_RTP_PAYLOAD - 1,
    ))
}

/// One frame's payloads as consecutive RTP packets of `out`'s stream, all with timestamp
/// `ts` and the marker on the last; the frame is counted once they are sent.
async fn send_packets<P: AsRef<[u8]>>(
    path: &mut MediaPath,
    out: &mut Outgoing,
    ts: u32,
    payloads: impl IntoIterator<Item = (P, bool)>,
    pkt: &mut Vec<u8>,
) -> Sent {
    let mut s = Sent::default();
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
            s.packets += 1;
            s.bytes += p.len() as u64;
        }
    }
    out.frame_no = out.frame_no.wrapping_add(1);
    s.frames = 1;
    s
}

/// What sending one frame put on the wire.
#[derive(Debug, Default)]
struct Sent {
    packets: u64,
    bytes: u64,
    frames: u64,
}

impl Sent {
    fn add(&mut self, o: Sent) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.frames += o.frames;
    }

    fn add_to(&self, s: &mut CallSummary) {
        s.sent_packets += self.packets;
        s.sent_bytes += self.bytes;
        s.sent_frames += self.frames;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mls::FRAME_SUITE;
    use crate::sframe::Receiver;

    fn header(seq: u16, marker: bool) -> RtpHeader {
        RtpHeader {
            marker,
            payload_type: VIDEO_PT,
            sequence: seq,
            timestamp: 9000,
            ssrc: 7,
            header_len: 12,
            padding_len: 0,
        }
    }

    /// What a `--web-peers` receiver makes of one sent video frame: reassembled from
    /// `payloads` as web peers' VP8 is, then opened with its first VP8 bytes as metadata.
    fn receive(payloads: &[(Vec<u8>, bool)], rx: &mut Receiver) -> Option<Vec<u8>> {
        let mut st = StreamReceiver::default();
        // The end of a frame before (dropped: where it began is unknown), so the receiver
        // knows where the next one starts.
        assert_eq!(web_frame(&mut st, &header(99, true), &[0x10, 0xff]), None);
        let mut frame = None;
        for (i, (p, m)) in payloads.iter().enumerate() {
            frame = web_frame(&mut st, &header(100 + i as u16, *m), p);
        }
        let f = frame?;
        let clear = crate::webframe::vp8_clear_len(&f);
        let (_, _, plain) = rx.open(&f[..clear], &f[clear..]).ok()?;
        Some([&f[..clear], &plain[..]].concat())
    }

    /// The cause of the MLS web test's video decrypt failures: with `--web-peers` and no
    /// clip, e2ee-client sent its synthetic video frames without the VP8 payload descriptor
    /// and clear bytes that every web-peer receiver (pages, and e2ee-clients with
    /// `--web-peers`) strips, so none of them opened. Synthetic frames now go in the web
    /// framing too, and open byte for byte.
    #[test]
    fn synthetic_video_frames_open_at_web_peer_receivers() {
        let base = [5u8; 16];
        let kid = 0x101;
        let mut tx = SframeSender::new(FRAME_SUITE, kid, &base);
        let mut rx = Receiver::new();
        rx.add_key(FRAME_SUITE, kid, &base);
        let mut frame = Vec::new();
        make_frame(7, 3, 99, 6250, None, &mut frame);
        let mut sealed = Vec::new();
        let payloads = vp8_payloads(&frame, Some(&mut tx), &mut sealed).expect("sealed");
        assert!(payloads.len() > 1, "several packets");
        let opened = receive(&payloads, &mut rx).expect("opens");
        assert_eq!(verify_frame(&opened, None).map(|i| i.number), Some(3));
        // The old way (no descriptor, no clear bytes) does not open at a web peer.
        let mut old = Vec::new();
        tx.seal_into(&[], &frame, &mut old).expect("sealed");
        let old: Vec<(Vec<u8>, bool)> = packetize(&old).map(|(p, m)| (p.to_vec(), m)).collect();
        assert_eq!(receive(&old, &mut rx), None);
    }
}
