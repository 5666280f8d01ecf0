//! One participant's call as a sans-IO state machine: what the client decides, apart from
//! how it talks. [`crate::call`]'s driver owns the WebSocket, the media path and the
//! clock; it feeds this session what happened (a decoded [`ServerMessage`], "media is
//! connected", a tick at `now`, "signalling closed") and carries out the [`Output`]s it
//! returns. Time only ever comes in as an argument, so the tests below run the keying,
//! renegotiation, downgrade and leave paths on a virtual clock, with no socket.
//!
//! The session owns:
//! - the downgrade policy: `--e2ee` alone is *required* (told the call is standard, leave
//!   with `downgrade_refused` before anything is sent in the clear); `--e2ee-preferred`
//!   goes on loudly (`downgrade_accepted`), but only while no keys exist;
//! - keying: the one-to-one X25519 agreement ([`KeyAgreement`]) or the MLS group
//!   ([`GroupSession`]), and the SFrame keys that result (the driver borrows them to seal
//!   and open frames: [`ClientSession::sealer`], [`ClientSession::open_frame`]);
//! - renegotiation: every relay offer is answered with its own revision;
//! - participant events, chat and feature results;
//! - the leave paths (duration end, the relay's `participant_left`, signalling lost,
//!   downgrade refused, a refused group change) and the summary fields they fill.
//!
//! - failover ([`crate::failover`]): with more than one relay, a call lost once
//!   established (signalling gone, or removed for a reason that is no refusal) is rejoined
//!   through the next relay after a backoff, as a fresh session (new ICE and DTLS, new keys:
//!   a new MLS member or a new one-to-one agreement), while the summary's counters go on;
//! - how long each sender's media paused (`max_gap_ms_from`).
//!
//! Phases: `Hello` -> (`Invite`) -> `Joining` -> `Connecting` (the driver sets up ICE and
//! DTLS-SRTP) -> `InCall` -> `Done`; a loss that fails over goes to `Lost` until the driver
//! reaches the next relay ([`ClientSession::rejoin`]), and then `Hello` again.

use crate::call::{CallOptions, CallSummary, EarlierSession, FeatureOutcome, SummaryError};
use crate::failover::{self, Failover, Gaps};
use crate::group::{GroupIdentity, GroupSession, OpenError};
use crate::kex::{KeyAgreement, Role};
use crate::media::verify_frame;
use crate::sframe::{CipherSuite, Receiver as SframeReceiver, Sender as SframeSender};
use base64::Engine;
use blindrelay_protocol::sdp::{self, AnswerInfo, Fingerprint, OfferParams};
use blindrelay_protocol::signal::{
    CallMode, ClientMessage, E2eeOption, E2eeScheme, ErrorCode, ParticipantInfo, ServerMessage,
};
use std::collections::BTreeMap;
use std::time::Instant;
use thiserror::Error;

/// This client's half of the media session, made by the driver (random ICE credentials,
/// the DTLS certificate's fingerprint, the SSRCs it will send on).
#[derive(Debug, Clone)]
pub struct LocalDescription {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    pub fingerprint: Fingerprint,
    pub audio_ssrc: u32,
    /// The video SSRC; with simulcast, the lowest layer's.
    pub video_ssrc: u32,
    /// Simulcast: every layer's SSRC, lowest resolution first (empty: one video stream).
    pub video_layers: Vec<u32>,
    pub cname: String,
    pub session_id: u64,
}

/// Whether and how the driver sends media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaMode {
    /// An E2EE call without keys yet: nothing is sent (never in the clear).
    Hold,
    /// A standard call: frames go as they are.
    Clear,
    /// Keys exist: every frame is sealed with [`ClientSession::sealer`].
    Sealed,
}

/// What ended the call early, as the summary reports it (`error`).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("relay refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("unexpected signalling message: {0}")]
    Protocol(String),
    #[error("relay answer unusable: {0}")]
    Answer(String),
    /// Signalling ended before the call was set up.
    #[error("{0}")]
    Signalling(String),
}

/// What the driver must do, in order.
#[derive(Debug)]
pub enum Output {
    /// Send this to the relay.
    Send(ClientMessage),
    /// Set up the media path (ICE, DTLS-SRTP) to the relay's answer, then call
    /// [`ClientSession::on_media_connected`].
    ConnectMedia(AnswerInfo),
    /// Send media this way from now on.
    Media(MediaMode),
    /// A status line (printed with `--stats-every`).
    Say(String),
    /// A line always printed to stderr (codes, warnings, why the client leaves).
    Warn(String),
    /// Stop: the call could not go on (the summary's `error` comes from it).
    Fail(SessionError),
    /// The call is over: close the media path and the signalling connection.
    Close,
    /// The call was lost: drop this relay's media path and signalling connection (no
    /// `leave`: the call goes on), and at `at` connect to `relay` and hand the session a
    /// fresh local description ([`ClientSession::rejoin`]); if that connection fails, say
    /// so ([`ClientSession::on_connection_failed`]).
    Reconnect { relay: String, at: Instant },
}

/// What a test or an embedding application can watch while the call runs (the driver
/// publishes it whenever it changes): where the client is and whose frames it opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The relay in use (or being reached).
    pub relay: String,
    /// This client's participant id in the current session.
    pub participant: Option<String>,
    /// In the call with the media path up.
    pub in_call: bool,
    /// Successful rejoins so far.
    pub reconnects: u64,
    /// Frames opened in the current session, by sending participant.
    pub opened_from: BTreeMap<String, u64>,
    /// The verification code in force (one-to-one agreement, or the group's epoch code).
    pub verification_code: Option<String>,
}

/// What became of one received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameOpen {
    /// A standard call: the frame is its own plaintext.
    Clear,
    /// Opened into the caller's buffer.
    Opened,
    /// Not usable (before keys, not yet openable, or failed): counted, skip it.
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Hello,
    /// Waiting up to this instant for an invitation.
    Invite(Instant),
    Joining,
    Connecting,
    /// In the call until this instant (`--duration` after the first media path came up).
    InCall(Instant),
    /// Lost; the driver is to reach the next relay ([`Output::Reconnect`]).
    Lost,
    Done,
}

/// End-to-end state once keys are agreed (one-to-one calls).
struct E2ee {
    sender: SframeSender,
    receiver: SframeReceiver,
    /// The peer the keys were agreed with: the sender of every frame they open.
    peer: String,
}

const KID_INITIATOR: u64 = 1;
const KID_RESPONDER: u64 = 2;
/// Key-agreement blobs kept while their sender is not announced yet.
const EARLY_BLOBS: usize = 16;
/// Epoch codes kept in the summary (and codes in `codes`).
const EPOCH_CODES: usize = 256;
/// Earlier sessions kept in the summary (a call that fails over again and again keeps the
/// latest ones).
const EARLIER_SESSIONS: usize = 64;

/// One participant's call.
pub struct ClientSession {
    opts: CallOptions,
    local: LocalDescription,
    started: Instant,
    phase: Phase,
    summary: CallSummary,
    call_id: String,
    want_e2ee: bool,
    me: String,
    mode: CallMode,
    peers: Vec<ParticipantInfo>,
    e2ee_call: bool,
    kex: Option<KeyAgreement>,
    /// The participant `kex` agrees keys with.
    kex_peer: String,
    e2ee: Option<E2ee>,
    /// A group call keys with MLS instead of the one-to-one agreement.
    group: Option<GroupSession>,
    /// Key agreement can overtake the participant_joined event on the way here; kept
    /// until the agreement exists.
    early_blobs: Vec<(String, String)>,
    sent_chat: bool,
    media: Option<MediaMode>,
    failover: Failover,
    gaps: Gaps,
    /// When the current session's `joined` arrived (first frames are timed from it).
    joined_at: Instant,
    /// The current session got `joined` (it has something to remember when lost).
    session_joined: bool,
    /// Frames opened in the current session, by sender (bounded like gaps).
    opened_from: BTreeMap<String, u64>,
    /// KeyPackages refused by earlier sessions' groups, by reason.
    key_packages_refused_before: BTreeMap<String, u64>,
    /// Lines for the driver that came up while opening a frame.
    pending: Vec<Output>,
    /// [`Progress`] changed since the driver last took it.
    progress_changed: bool,
    /// Remote video m-lines already asked for `--max-height` in this session.
    capped_mids: std::collections::BTreeSet<String>,
}

impl ClientSession {
    /// A call to be made with `opts`, started (signalling about to connect) at `now`.
    pub fn new(opts: &CallOptions, local: LocalDescription, now: Instant) -> Self {
        ClientSession {
            call_id: opts.call.clone(),
            opts: opts.clone(),
            local,
            started: now,
            phase: Phase::Hello,
            summary: CallSummary::default(),
            want_e2ee: false,
            me: String::new(),
            mode: CallMode::Standard,
            peers: Vec::new(),
            e2ee_call: false,
            kex: None,
            kex_peer: String::new(),
            e2ee: None,
            group: None,
            early_blobs: Vec::new(),
            sent_chat: false,
            media: None,
            failover: Failover::new(&opts.relay, &opts.fallback_relays),
            gaps: Gaps::default(),
            joined_at: now,
            session_joined: false,
            opened_from: BTreeMap::new(),
            key_packages_refused_before: BTreeMap::new(),
            pending: Vec::new(),
            progress_changed: true,
            capped_mids: Default::default(),
        }
    }

    /// The relay to connect to (the first, or the one a loss moved to).
    pub fn relay(&self) -> &str {
        self.failover.current()
    }

    /// A loss the driver sees (it cannot reach the relay, or its connection failed) is
    /// for [`ClientSession::on_connection_failed`] to judge: the call was established once
    /// and there is another relay. Otherwise the driver fails as it always did.
    pub fn fails_over(&self) -> bool {
        self.failover.until().is_some() && self.failover.has_fallback() && !self.is_done()
    }

    /// Where the client is, for [`Progress`] watchers.
    pub fn progress(&self) -> Progress {
        Progress {
            relay: self.failover.current().to_string(),
            participant: self.summary.participant.clone(),
            in_call: matches!(self.phase, Phase::InCall(_)),
            reconnects: self.failover.reconnects(),
            opened_from: self.opened_from.clone(),
            verification_code: self.summary.verification_code.clone(),
        }
    }

    /// Whether [`ClientSession::progress`] changed since the last call.
    pub fn take_progress_changed(&mut self) -> bool {
        std::mem::take(&mut self.progress_changed)
    }

    /// Lines that came up while opening frames (a first frame from someone).
    pub fn take_pending(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.pending)
    }

    /// The driver reached the relay a [`Output::Reconnect`] named, at `now`: start a fresh
    /// session there with `local` (new ICE credentials, DTLS certificate and SSRCs). Keys
    /// never carry over: the one-to-one agreement, or the MLS membership, starts anew.
    pub fn rejoin(&mut self, now: Instant, local: LocalDescription) -> Vec<Output> {
        if self.phase != Phase::Lost {
            return Vec::new();
        }
        self.local = local;
        self.phase = Phase::Hello;
        self.joined_at = now;
        self.capped_mids.clear();
        self.progress_changed = true;
        self.start()
    }

    /// The driver could not reach the relay, or its connection to it failed (`why`), at
    /// `now`, while [`ClientSession::fails_over`]: the next relay, or the end of a call
    /// that could not be rejoined in time.
    pub fn on_connection_failed(&mut self, now: Instant, why: &str) -> Vec<Output> {
        let mut out = Vec::new();
        if !self.is_done() && !self.lose(now, why, &mut out) {
            self.lost_for_good(why, &mut out);
        }
        out
    }

    /// The call was lost at `now` (`why`): if there is a relay to move to before the
    /// call's end, remember this session, tell the driver to reconnect, and return true.
    fn lose(&mut self, now: Instant, why: &str, out: &mut Vec<Output>) -> bool {
        let was = self.failover.current().to_string();
        let Some(retry) = self.failover.on_lost(now) else {
            return false;
        };
        if self.session_joined {
            self.remember_session(was);
        }
        // The lost session's keys go now: nothing is sealed or opened with them again.
        self.me.clear();
        self.mode = CallMode::Standard;
        self.peers.clear();
        self.e2ee_call = false;
        self.kex = None;
        self.e2ee = None;
        self.group = None;
        self.early_blobs.clear();
        self.media = None;
        self.session_joined = false;
        self.opened_from.clear();
        out.push(Output::Warn(format!(
            "call lost ({why}); rejoining through {} in {} ms",
            retry.relay,
            retry.at.saturating_duration_since(now).as_millis()
        )));
        self.phase = Phase::Lost;
        self.progress_changed = true;
        out.push(Output::Reconnect {
            relay: retry.relay,
            at: retry.at,
        });
        true
    }

    /// A call that was established is over before its end: no relay could take it back
    /// in time. Reported as `signalling_lost`, as a single relay's loss is.
    fn lost_for_good(&mut self, why: &str, out: &mut Vec<Output>) {
        out.push(Output::Warn(format!(
            "signalling lost before the call's end: {why}"
        )));
        self.summary.left_reason = Some("signalling_lost".into());
        self.summary.error = Some(SummaryError {
            code: "signalling_lost".into(),
            message: why.to_string(),
        });
        self.end(out, false);
    }

    /// Keep what the lost session showed (its id, relay, codes) in `earlier_sessions`;
    /// the keys and the group it belonged to are dropped.
    fn remember_session(&mut self, relay: String) {
        if let Some(g) = &self.group {
            for (reason, n) in &g.key_packages_refused {
                *self
                    .key_packages_refused_before
                    .entry(reason.to_string())
                    .or_default() += n;
            }
            self.summary.group_members = g.member_names();
        }
        let s = &mut self.summary;
        s.earlier_sessions.push(EarlierSession {
            relay,
            participant: s.participant.clone(),
            verification_code: s.verification_code.take(),
            epoch_codes: std::mem::take(&mut s.epoch_codes),
            epoch_members: std::mem::take(&mut s.epoch_members),
            group_members: std::mem::take(&mut s.group_members),
        });
        if s.earlier_sessions.len() > EARLIER_SESSIONS {
            s.earlier_sessions.remove(0);
        }
        s.epoch = None;
    }

    /// A frame from `from` opened at `now`: its gap, its count, and a line for the first
    /// one of this session.
    fn opened(&mut self, now: Instant, from: &str) {
        self.gaps.frame(from, now);
        if let Some(n) = self.opened_from.get_mut(from) {
            *n += 1;
        } else if self.opened_from.len() < failover::MAX_GAP_SENDERS {
            self.opened_from.insert(from.to_string(), 1);
            self.pending
                .push(Output::Say(format!("first frame opened from {from}")));
        }
        self.progress_changed = true;
    }

    /// The first message, once signalling is connected.
    pub fn start(&mut self) -> Vec<Output> {
        vec![Output::Send(ClientMessage::Hello {
            token: self.opts.token.clone(),
        })]
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn summary(&self) -> &CallSummary {
        &self.summary
    }

    /// The driver counts media here.
    pub fn summary_mut(&mut self) -> &mut CallSummary {
        &mut self.summary
    }

    pub fn into_summary(mut self) -> CallSummary {
        self.summary.reconnects = self.failover.reconnects();
        self.summary.max_gap_ms_from = self.gaps.max_ms().clone();
        self.summary.relay = Some(self.failover.current().to_string());
        self.summary
    }

    /// The call is over (or failed): no input does anything any more.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// When [`ClientSession::on_tick`] has something to do: the invitation's deadline or
    /// the call's end (also while a rejoin is under way).
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Invite(t) | Phase::InCall(t) => Some(t),
            Phase::Hello | Phase::Joining | Phase::Connecting | Phase::Lost
                if self.failover.reconnecting() =>
            {
                self.failover.until()
            }
            _ => None,
        }
    }

    /// The lock as a stats line shows it.
    pub fn lock(&self) -> &'static str {
        if self.e2ee.is_some() {
            "on"
        } else if self.e2ee_call {
            "pending"
        } else {
            "off"
        }
    }

    /// The key to seal outgoing frames with, once keyed.
    pub fn sealer(&mut self) -> Option<&mut SframeSender> {
        self.e2ee.as_mut().map(|k| &mut k.sender).or_else(|| {
            self.group
                .as_mut()
                .and_then(|g| g.frames_mut().sender_mut())
        })
    }

    /// Time passed: past the invitation's deadline the client gives up; past the call's
    /// end it leaves.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        match self.phase {
            Phase::Invite(deadline) if now >= deadline => self.fail(
                &mut out,
                SessionError::Refused {
                    code: "no_invite".into(),
                    message: "no invitation arrived".into(),
                },
            ),
            Phase::InCall(end) if now >= end => self.end(&mut out, true),
            // The call's end came while rejoining it.
            Phase::Hello | Phase::Joining | Phase::Connecting | Phase::Lost
                if self.failover.reconnecting()
                    && self.failover.until().is_some_and(|t| now >= t) =>
            {
                self.lost_for_good("no relay took the call back before its end", &mut out)
            }
            _ => {}
        }
        out
    }

    /// The signalling connection ended (`why`; `close_reason` from the relay's close frame,
    /// if any). Once the call was established, and with another relay to go to, that is a
    /// loss to recover from (unless the close refuses this client). Otherwise: before the
    /// call is set up it fails the call (`signalling_failed`); in it, the client was cut
    /// off (`signalling_lost`).
    pub fn on_signalling_closed(
        &mut self,
        now: Instant,
        why: &str,
        close_reason: Option<&str>,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        if matches!(self.phase, Phase::Done | Phase::Lost)
            || (!failover::close_is_refusal(close_reason) && self.lose(now, why, &mut out))
        {
            return out;
        }
        match self.phase {
            // Cut off before `--duration` ended (removed as a slow reader, the relay shut
            // down, the network failed): not a normal end.
            Phase::InCall(_) | Phase::Connecting => self.lost_for_good(why, &mut out),
            _ if self.failover.reconnecting() => self.lost_for_good(why, &mut out),
            _ => self.fail(&mut out, SessionError::Signalling(why.to_string())),
        }
        out
    }

    /// The media path went away (the driver's receive side closed): the call ends.
    pub fn on_media_closed(&mut self, _now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        if matches!(self.phase, Phase::InCall(_)) {
            self.end(&mut out, true);
        }
        out
    }

    /// A message from the relay.
    pub fn on_message(&mut self, now: Instant, m: ServerMessage) -> Vec<Output> {
        let mut out = Vec::new();
        // A relay that cannot take the call now (shutting down, full) is not a refusal of
        // this client: the next relay may.
        if let (Phase::Hello | Phase::Joining, ServerMessage::Error { code, message }) =
            (self.phase, &m)
        {
            if !failover::is_refusal(*code) {
                let why = format!("{}: {message}", code.as_str());
                if self.lose(now, &why, &mut out) {
                    return out;
                }
            }
        }
        let r = match self.phase {
            Phase::Hello => self.on_hello_reply(now, m, &mut out),
            Phase::Invite(_) => self.on_invite_wait(now, m, &mut out),
            Phase::Joining => self.on_join_reply(now, m, &mut out),
            // Not read while the media path comes up; nothing to do with one if it is.
            Phase::Connecting | Phase::Lost | Phase::Done => Ok(()),
            Phase::InCall(_) => self.on_call_message(now, m, &mut out),
        };
        if let Err(e) = r {
            self.fail(&mut out, e);
        }
        self.after_input(&mut out);
        out
    }

    /// The media path is up (`profile` is the negotiated SRTP profile): start keying, ask
    /// for features, and run for `--duration` from `now`.
    pub fn on_media_connected(&mut self, now: Instant, profile: &str) -> Vec<Output> {
        let mut out = Vec::new();
        if self.phase != Phase::Connecting {
            return out;
        }
        let since = ms(now, self.started);
        self.summary.connect_ms.get_or_insert(since);
        self.summary.srtp_profile = Some(profile.to_string());
        out.push(Output::Say(format!(
            "media path up ({profile}), {since:.1} ms after start"
        )));
        let rejoined = self.failover.reconnecting();
        self.failover.on_connected();
        self.summary.reconnects = self.failover.reconnects();
        self.progress_changed = true;
        if rejoined {
            out.push(Output::Warn(format!(
                "rejoined the call through {} as {} ({} rejoins)",
                self.failover.current(),
                self.me,
                self.failover.reconnects()
            )));
        }
        if let Err(e) = self.start_keying(now, &mut out) {
            self.fail(&mut out, e);
            return out;
        }
        self.failover.arm(now + self.opts.duration);
        let end = self.failover.until().unwrap_or(now + self.opts.duration);
        if rejoined {
            // Requests were made once; asking again could act twice (a transfer...).
            self.phase = Phase::InCall(end);
            self.after_input(&mut out);
            return out;
        }
        for f in &self.opts.features {
            // FEATURE or FEATURE=ARG
            let (name, arg) = match f.split_once('=') {
                Some((n, a)) => (n.to_string(), Some(a.to_string())),
                None => (f.clone(), None),
            };
            out.push(Output::Send(ClientMessage::Feature { name, arg }));
        }
        self.phase = Phase::InCall(end);
        self.after_input(&mut out);
        out
    }

    /// Open one received frame (`metadata` stays clear, `sealed` is the rest) into `out`,
    /// counting what became of it.
    pub fn open_frame(
        &mut self,
        now: Instant,
        metadata: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> FrameOpen {
        let s = &mut self.summary;
        if let Some(g) = self.group.as_mut() {
            if !g.keyed() {
                s.frames_before_keys += 1;
                return FrameOpen::Dropped;
            }
            match g.open_into(now, metadata, sealed, out) {
                Ok(from) => {
                    let from = from.unwrap_or_default();
                    count_opened(s, &from, ms(now, self.joined_at));
                    self.opened(now, &from);
                    FrameOpen::Opened
                }
                // Sealed before this member's Welcome: not for it.
                Err(OpenError::BeforeJoin(_)) => {
                    s.frames_before_keys += 1;
                    FrameOpen::Dropped
                }
                // Sealed in an epoch whose commit has not arrived yet: opened then.
                Err(OpenError::Early) => FrameOpen::Dropped,
                Err(OpenError::Sframe(e)) => {
                    s.decrypt_failures += 1;
                    *s.decrypt_failures_by.entry(e.code().into()).or_default() += 1;
                    FrameOpen::Dropped
                }
            }
        } else if self.e2ee_call {
            let Some(k) = self.e2ee.as_mut() else {
                s.frames_before_keys += 1;
                return FrameOpen::Dropped;
            };
            match k.receiver.open_into(metadata, sealed, out) {
                Ok(_) => {
                    s.frames_decrypted += 1;
                    let peer = k.peer.clone();
                    self.opened(now, &peer);
                    FrameOpen::Opened
                }
                Err(e) => {
                    s.decrypt_failures += 1;
                    *s.decrypt_failures_by.entry(e.code().into()).or_default() += 1;
                    FrameOpen::Dropped
                }
            }
        } else {
            FrameOpen::Clear
        }
    }

    fn fail(&mut self, out: &mut Vec<Output>, e: SessionError) {
        self.phase = Phase::Done;
        out.push(Output::Fail(e));
    }

    /// End the call; `leave` says whether the client still has to tell the relay (not
    /// when the relay ended its part, or signalling is gone).
    fn end(&mut self, out: &mut Vec<Output>, leave: bool) {
        if matches!(self.phase, Phase::InCall(_)) {
            if let Some(g) = &self.group {
                self.summary.group_members = g.member_names();
                self.summary.key_packages_refused = g.key_packages_refused_total();
            }
        }
        self.phase = Phase::Done;
        if leave {
            out.push(Output::Send(ClientMessage::Leave));
        }
        out.push(Output::Close);
    }

    /// After every input in the call: the one chat message once someone is there (and,
    /// on an E2EE call, keys exist), and the media mode if it changed.
    fn after_input(&mut self, out: &mut Vec<Output>) {
        if !matches!(self.phase, Phase::InCall(_)) {
            return;
        }
        if !self.sent_chat && !self.peers.is_empty() && (!self.e2ee_call || self.e2ee.is_some()) {
            if let Some(text) = &self.opts.chat {
                let body = seal_chat(text, self.e2ee.as_mut());
                out.push(Output::Send(ClientMessage::Chat { body }));
            }
            self.sent_chat = true;
        }
        let mode = if !self.e2ee_call {
            MediaMode::Clear
        } else if self.e2ee.is_some() || self.group.as_ref().is_some_and(|g| g.keyed()) {
            MediaMode::Sealed
        } else {
            MediaMode::Hold
        };
        if self.media != Some(mode) {
            self.media = Some(mode);
            out.push(Output::Media(mode));
        }
    }

    /// Replies to `hello` and `join`: the relay's refusal fails the call; events about
    /// others can precede the reply and are replayed by `joined`.
    fn expect_reply(m: ServerMessage) -> Result<Option<ServerMessage>, SessionError> {
        match m {
            ServerMessage::Error { code, message } => Err(SessionError::Refused {
                code: code.as_str().to_string(),
                message,
            }),
            ServerMessage::ParticipantJoined { .. } | ServerMessage::ParticipantLeft { .. } => {
                Ok(None)
            }
            m => Ok(Some(m)),
        }
    }

    fn on_hello_reply(
        &mut self,
        now: Instant,
        m: ServerMessage,
        out: &mut Vec<Output>,
    ) -> Result<(), SessionError> {
        match Self::expect_reply(m)? {
            None => Ok(()),
            Some(ServerMessage::Capabilities { e2ee_option, .. }) => {
                self.summary.e2ee_option = Some(e2ee_option);
                // A rejoin goes straight back to the call it was in.
                if self.opts.wait_invite && !self.failover.reconnecting() {
                    self.phase = Phase::Invite(now + self.opts.duration);
                    Ok(())
                } else {
                    self.join(out);
                    Ok(())
                }
            }
            Some(m) => Err(SessionError::Protocol(format!("{m:?}"))),
        }
    }

    fn on_invite_wait(
        &mut self,
        _now: Instant,
        m: ServerMessage,
        out: &mut Vec<Output>,
    ) -> Result<(), SessionError> {
        if let ServerMessage::Invite { call, by, reason } = m {
            out.push(Output::Say(format!(
                "invited to `{call}` by {by} ({reason})"
            )));
            self.call_id = call.clone();
            self.summary.invited = Some((call, by, reason));
            self.join(out);
        }
        Ok(())
    }

    /// Decide whether to ask for E2EE, and join.
    fn join(&mut self, out: &mut Vec<Output>) {
        let option = self.summary.e2ee_option;
        if self.opts.e2ee && option == Some(E2eeOption::Hidden) {
            let reason = "the relay says end-to-end encryption is not available to this user";
            if !self.accept_downgrade(out, reason) {
                self.phase = Phase::Done;
                out.push(Output::Close);
                return;
            }
        }
        self.want_e2ee = self.opts.e2ee && option != Some(E2eeOption::Hidden)
            || option == Some(E2eeOption::Required);
        let l = &self.local;
        self.summary.audio_ssrc = Some(l.audio_ssrc);
        self.summary.video_ssrc = Some(l.video_ssrc);
        self.summary.video_layers = l.video_layers.clone();
        let offer = sdp::build_offer_with_layers(
            &OfferParams {
                ice_ufrag: &l.ice_ufrag,
                ice_pwd: &l.ice_pwd,
                fingerprint: &l.fingerprint,
                audio_ssrc: l.audio_ssrc,
                video_ssrc: l.video_ssrc,
                cname: &l.cname,
                session_id: l.session_id,
            },
            &l.video_layers,
        );
        out.push(Output::Send(ClientMessage::Join {
            call: self.call_id.clone(),
            e2ee_enabled: self.want_e2ee,
            offer_sdp: offer,
            e2ee_scheme: self.opts.e2ee_scheme,
        }));
        self.phase = Phase::Joining;
    }

    fn on_join_reply(
        &mut self,
        now: Instant,
        m: ServerMessage,
        out: &mut Vec<Output>,
    ) -> Result<(), SessionError> {
        let Some(m) = Self::expect_reply(m)? else {
            return Ok(());
        };
        let ServerMessage::Joined {
            participant,
            call_mode,
            mode_reason,
            answer_sdp,
            participants,
            e2ee_scheme,
        } = m
        else {
            return Err(SessionError::Protocol(format!("{m:?}")));
        };
        let s = &mut self.summary;
        s.mode_reason = mode_reason;
        s.e2ee_scheme = e2ee_scheme.map(|x| x.as_str().to_string());
        s.joined = true;
        s.participant = Some(participant.clone());
        s.call_mode = Some(call_mode);
        s.join_ms.get_or_insert(ms(now, self.started));
        if s.participant_ids.len() < EARLIER_SESSIONS + 1 {
            s.participant_ids.push(participant.clone());
        }
        self.joined_at = now;
        self.session_joined = true;
        self.progress_changed = true;
        out.push(Output::Say(format!(
            "joined call `{}` as {participant}, mode {}",
            self.call_id,
            call_mode.as_str()
        )));
        if let Some(r) = &s.mode_reason {
            out.push(Output::Say(r.clone()));
        }
        self.me = participant;
        self.mode = call_mode;
        self.peers = participants;
        if self.want_e2ee && call_mode != CallMode::E2ee {
            let reason = self
                .summary
                .mode_reason
                .clone()
                .unwrap_or_else(|| "the relay made it a standard call".into());
            if !self.accept_downgrade(out, &reason) {
                // Before any media path exists: not one frame was sent.
                self.phase = Phase::Done;
                out.push(Output::Send(ClientMessage::Leave));
                out.push(Output::Close);
                return Ok(());
            }
        }
        let answer =
            sdp::parse_answer(&answer_sdp).map_err(|e| SessionError::Answer(e.to_string()))?;
        self.phase = Phase::Connecting;
        out.push(Output::ConnectMedia(answer));
        Ok(())
    }

    fn start_keying(&mut self, now: Instant, out: &mut Vec<Output>) -> Result<(), SessionError> {
        self.e2ee_call = self.mode == CallMode::E2ee;
        if !self.e2ee_call {
            return Ok(());
        }
        out.push(Output::Say("lock: waiting for end-to-end keys".into()));
        if self.summary.e2ee_scheme.as_deref() == Some(E2eeScheme::Mls.as_str()) {
            let mut g = GroupSession::new(&self.me, &self.call_id, self.group_identity())
                .map_err(|e| SessionError::Protocol(e.to_string()))?;
            for m in g
                .start(now, &self.peers)
                .map_err(|e| SessionError::Protocol(e.to_string()))?
            {
                out.push(Output::Send(m));
            }
            self.group = Some(g);
        } else if let Some(peer) = self.peers.first().cloned() {
            self.start_kex(&peer, out)?;
        }
        Ok(())
    }

    /// How this client appears in an MLS group: its user name (from its token), its
    /// identity key and token when it has one, and the issuer check when it was given
    /// issuer keys.
    fn group_identity(&self) -> GroupIdentity {
        let opts = &self.opts;
        let user = crate::roster::token_subject(&opts.token).unwrap_or_else(|| opts.name.clone());
        let mut id = GroupIdentity::plain(&user);
        if let Some(k) = &opts.identity_key {
            id.key = Some((k.seed.clone(), k.public));
            id.token = Some(opts.token.clone());
        }
        if !opts.issuer_keys.is_empty() {
            id.check = Some(crate::identity::issuer_check(
                opts.issuer_keys.clone(),
                self.call_id.clone(),
            ));
        }
        id
    }

    fn start_kex(
        &mut self,
        peer: &ParticipantInfo,
        out: &mut Vec<Output>,
    ) -> Result<(), SessionError> {
        // Defence in depth: never key a bot, even if a relay admitted one to an E2EE call.
        if peer.role.starts_with("bot:") {
            out.push(Output::Say(format!(
                "refusing to share end-to-end keys with {} (role {})",
                peer.participant, peer.role
            )));
            return Ok(());
        }
        let mut k = KeyAgreement::new(&self.call_id, &self.me, &peer.participant)
            .map_err(|e| SessionError::Protocol(e.to_string()))?;
        if let Some(first) = k.start() {
            out.push(Output::Send(ClientMessage::E2ee {
                to: peer.participant.clone(),
                blob: first.to_blob(),
            }));
        }
        self.kex = Some(k);
        self.kex_peer = peer.participant.clone();
        Ok(())
    }

    /// Feed one key-agreement blob; installs the SFrame keys once the agreement completes.
    fn on_kex_blob(&mut self, from: String, blob: String, out: &mut Vec<Output>) {
        let Some(k) = self.kex.as_mut() else { return };
        match k.handle_blob(&blob) {
            Ok(Some(reply)) => out.push(Output::Send(ClientMessage::E2ee {
                to: from,
                blob: reply,
            })),
            Ok(None) => {}
            Err(e) => {
                out.push(Output::Warn(format!(
                    "end-to-end key agreement failed: {e}"
                )));
                if self.summary.e2ee_error.is_none() {
                    self.summary.e2ee_error = Some(e.to_string());
                }
            }
        }
        if self.e2ee.is_some() {
            return;
        }
        if let Some(keys) = k.keys() {
            let (send_kid, recv_kid) = match k.role() {
                Role::Initiator => (KID_INITIATOR, KID_RESPONDER),
                Role::Responder => (KID_RESPONDER, KID_INITIATOR),
            };
            let suite = CipherSuite::default();
            let mut receiver = SframeReceiver::new();
            receiver.add_key(suite, recv_kid, keys.recv_key.as_bytes());
            self.e2ee = Some(E2ee {
                sender: SframeSender::new(suite, send_kid, keys.send_key.as_bytes()),
                receiver,
                peer: self.kex_peer.clone(),
            });
            self.summary.e2ee = true;
            self.summary.verification_code = Some(keys.verification_code.to_string());
            push_code(&mut self.summary.codes, keys.verification_code.to_string());
            self.progress_changed = true;
            out.push(Output::Warn(format!(
                "Verification code: {}",
                keys.verification_code
            )));
            out.push(Output::Say("lock: on (end-to-end encrypted)".into()));
        }
    }

    /// The relay says the call cannot be end-to-end encrypted (`reason`). With
    /// `--e2ee-preferred` that is accepted loudly (true: go on); otherwise the client
    /// records `downgrade_refused` and must leave without sending anything in the clear
    /// (false).
    fn accept_downgrade(&mut self, out: &mut Vec<Output>, reason: &str) -> bool {
        let s = &mut self.summary;
        if self.opts.e2ee_preferred {
            out.push(Output::Warn(format!(
                "WARNING: this call is NOT end-to-end encrypted: {reason} (going on because of --e2ee-preferred)"
            )));
            s.downgrade_accepted = Some(reason.to_string());
            return true;
        }
        out.push(Output::Warn(format!(
            "leaving: this call can't be end-to-end encrypted: {reason} (--e2ee-preferred would go on unencrypted)"
        )));
        s.left_reason = Some("downgrade_refused".into());
        s.mode_reason = Some(reason.to_string());
        s.error = Some(SummaryError {
            code: "downgrade_refused".into(),
            message: reason.to_string(),
        });
        false
    }

    /// The group's view of a message first (MLS messages, joins and leaves); true when
    /// the group refused a change and the client must leave.
    fn group_message(&mut self, now: Instant, m: &ServerMessage, out: &mut Vec<Output>) -> bool {
        let mut early_from = Vec::new();
        let leave = self.group_message_inner(now, m, out, &mut early_from);
        for from in early_from {
            self.opened(now, &from);
        }
        leave
    }

    /// [`ClientSession::group_message`], with the senders of frames that opened late put
    /// in `early_from`.
    fn group_message_inner(
        &mut self,
        now: Instant,
        m: &ServerMessage,
        out: &mut Vec<Output>,
        early_from: &mut Vec<String>,
    ) -> bool {
        let Some(g) = self.group.as_mut() else {
            return false;
        };
        let s = &mut self.summary;
        match g.on_message(now, m) {
            Ok(msgs) => out.extend(msgs.into_iter().map(Output::Send)),
            Err(e) => {
                out.push(Output::Warn(format!("group key exchange failed: {e}")));
                s.e2ee_error.get_or_insert(e.to_string());
            }
        }
        // Frames that overtook their epoch's commit open now.
        let canary = self.opts.canary.as_deref().map(str::as_bytes);
        for (from, plain) in g.open_early(now) {
            let from = from.unwrap_or_default();
            count_opened(s, &from, ms(now, self.joined_at));
            if !self.opts.web_peers {
                match verify_frame(&plain, canary) {
                    Some(_) => s.frames_verified += 1,
                    None => s.frames_corrupt += 1,
                }
            }
            early_from.push(from);
        }
        let expired = std::mem::take(&mut g.early_expired);
        if expired > 0 {
            s.decrypt_failures += expired;
            *s.decrypt_failures_by
                .entry("early_expired".into())
                .or_default() += expired;
        }
        // Earlier sessions' groups' refusals count too.
        let mut by = self.key_packages_refused_before.clone();
        for (k, v) in &g.key_packages_refused {
            *by.entry(k.to_string()).or_default() += v;
        }
        s.key_packages_refused = by.values().sum();
        s.key_packages_refused_by = by;
        if let Some(r) = &g.refused {
            // Never key media to someone the relay did not announce.
            out.push(Output::Warn(format!(
                "leaving: the group would include someone not announced in this call: {r}"
            )));
            s.left_reason = Some("group_refused".into());
            s.error = Some(SummaryError {
                code: "group_refused".into(),
                message: r.to_string(),
            });
            return true;
        }
        if g.keyed() {
            if let (Some(code), Some(epoch)) = (g.verification_code(), g.epoch()) {
                if s.epoch != Some(epoch) {
                    let names = g.member_names();
                    out.push(Output::Warn(format!(
                        "Verification code (epoch {epoch}): {code}  members: {}",
                        names.join(", ")
                    )));
                    s.epoch_codes.insert(epoch, code.clone());
                    s.epoch_members.insert(epoch, names);
                    push_code(&mut s.codes, code.clone());
                    self.progress_changed = true;
                    while s.epoch_codes.len() > EPOCH_CODES {
                        s.epoch_codes.pop_first();
                    }
                    while s.epoch_members.len() > EPOCH_CODES {
                        s.epoch_members.pop_first();
                    }
                }
                // The lock stays on once keyed; the code is the latest epoch's.
                s.e2ee = true;
                s.epoch = Some(epoch);
                s.verification_code = Some(code);
            }
        }
        false
    }

    fn on_call_message(
        &mut self,
        now: Instant,
        m: ServerMessage,
        out: &mut Vec<Output>,
    ) -> Result<(), SessionError> {
        if self.group_message(now, &m, out) {
            self.end(out, true);
            return Ok(());
        }
        match m {
            ServerMessage::ParticipantJoined { participant } => {
                out.push(Output::Say(format!(
                    "{} ({}) joined",
                    participant.participant, participant.user
                )));
                if self.e2ee_call && self.kex.is_none() && self.group.is_none() {
                    self.start_kex(&participant, out)?;
                    for (from, blob) in std::mem::take(&mut self.early_blobs) {
                        self.on_kex_blob(from, blob, out);
                    }
                }
                self.peers.push(participant);
            }
            ServerMessage::ParticipantLeft {
                participant,
                reason,
            } => {
                out.push(Output::Say(format!("{participant} left ({reason})")));
                if participant == self.me {
                    let why = format!("removed by the relay: {reason}");
                    if failover::removal_is_loss(&reason) && self.lose(now, &why, out) {
                        return Ok(());
                    }
                    if reason == "transferred" || reason == "parked" {
                        self.summary.ended = Some(reason);
                    } else {
                        self.summary.left_reason = Some(reason.clone());
                        self.summary.error = Some(SummaryError {
                            code: reason,
                            message: "removed from the call by the relay".into(),
                        });
                    }
                    self.end(out, false);
                    return Ok(());
                }
                self.summary.peers_left.push(participant);
            }
            ServerMessage::E2ee { from, blob } => {
                if self.kex.is_none() {
                    if self.early_blobs.len() < EARLY_BLOBS {
                        self.early_blobs.push((from, blob));
                    }
                } else {
                    self.on_kex_blob(from, blob, out);
                }
            }
            ServerMessage::Offer {
                sdp: offer,
                revision,
            } => {
                // The relay re-describes the session (a track per remote sender): accept
                // every m-line as offered. Media is told apart by SSRC.
                let l = &self.local;
                match sdp::answer_relay_offer(&offer, &l.ice_ufrag, &l.ice_pwd, &l.fingerprint) {
                    Ok(answer) => {
                        out.push(Output::Send(ClientMessage::Answer {
                            sdp: answer,
                            revision,
                        }));
                        self.summary.offers_answered += 1;
                        self.cap_remote_video(&offer, out);
                    }
                    Err(e) => out.push(Output::Say(format!(
                        "cannot answer the relay's offer {revision}: {e}"
                    ))),
                }
            }
            ServerMessage::CallModeChanged { call_mode, reason } => {
                self.on_mode_changed(call_mode, reason, out)
            }
            ServerMessage::Chat { from, body } => {
                let text = open_chat(&body, self.e2ee.as_mut());
                out.push(Output::Say(format!("chat from {from}: {text}")));
                self.summary.chat_received.push(text);
            }
            ServerMessage::FeatureResult { name, ok, detail } => {
                self.summary.features.push(FeatureOutcome {
                    name,
                    ok,
                    code: None,
                    detail,
                });
            }
            ServerMessage::Error { code, message } => {
                if matches!(
                    code,
                    ErrorCode::FeatureUnavailableInE2eeCall | ErrorCode::UnknownFeature
                ) {
                    let name = self
                        .opts
                        .features
                        .get(self.summary.features.len())
                        .cloned()
                        .unwrap_or_default();
                    out.push(Output::Say(format!("feature {name} refused: {message}")));
                    self.summary.features.push(FeatureOutcome {
                        name,
                        ok: false,
                        code: Some(code.as_str().into()),
                        detail: Some(message),
                    });
                } else {
                    out.push(Output::Say(format!(
                        "relay error {}: {message}",
                        code.as_str()
                    )));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// With `--max-height`: ask the relay to send each remote video track (an m-line of
    /// its offer that is not this client's own) at most that tall, once per m-line.
    fn cap_remote_video(&mut self, offer: &str, out: &mut Vec<Output>) {
        let Some(height) = self.opts.max_height else {
            return;
        };
        let Ok(o) = sdp::parse_offer(offer) else {
            return;
        };
        for m in o.media.iter().filter(|m| m.kind == "video") {
            if OWN_MIDS.contains(&m.mid.as_str()) || self.capped_mids.len() >= MAX_CAPPED_MIDS {
                continue;
            }
            if self.capped_mids.insert(m.mid.clone()) {
                out.push(Output::Send(ClientMessage::MaxResolution {
                    mid: m.mid.clone(),
                    height: Some(height),
                }));
            }
        }
    }

    fn on_mode_changed(&mut self, call_mode: CallMode, reason: String, out: &mut Vec<Output>) {
        out.push(Output::Say(format!(
            "the relay says the call is now {}: {reason}",
            call_mode.as_str()
        )));
        let keyed = self.e2ee.is_some() || self.group.as_ref().is_some_and(|g| g.keyed());
        if keyed {
            // Once keys exist nothing turns encryption off: every frame stays sealed
            // whatever the relay says.
            out.push(Output::Warn(
                "keys exist: staying end-to-end encrypted".into(),
            ));
        } else if self.want_e2ee && call_mode != CallMode::E2ee {
            // A relay's word never turns encryption off: without consent
            // (`--e2ee-preferred`) the client leaves.
            if !self.accept_downgrade(out, &reason) {
                self.end(out, true);
                return;
            }
            self.e2ee_call = false;
            self.kex = None;
            self.group = None;
            self.summary.call_mode = Some(call_mode);
            self.summary.mode_reason = Some(reason);
        } else {
            self.e2ee_call = call_mode == CallMode::E2ee;
            self.summary.call_mode = Some(call_mode);
            self.summary.mode_reason = Some(reason);
        }
    }
}

/// Milliseconds from `since` to `now`.
/// The m-lines of this client's own offer (audio, video): the relay's offers repeat them
/// before the remote tracks' lines.
const OWN_MIDS: [&str; 2] = ["0", "1"];

/// Most remote m-lines remembered as capped: a relay cannot grow the set without bound.
const MAX_CAPPED_MIDS: usize = 256;

fn ms(now: Instant, since: Instant) -> f64 {
    now.saturating_duration_since(since).as_secs_f64() * 1e3
}

/// One group frame opened from `from`, `since_join` ms after the current session's
/// `joined`: counted per sender, and the first one from each sender timed from this
/// member's (re)join (how soon a member is keyed with each other member, as the page
/// reports it).
fn count_opened(s: &mut CallSummary, from: &str, since_join: f64) {
    s.frames_decrypted += 1;
    if !s.first_decrypted_ms.contains_key(from) {
        s.first_decrypted_ms
            .insert(from.to_string(), since_join.max(0.0));
    }
    *s.frames_decrypted_from.entry(from.to_string()).or_default() += 1;
}

/// A verification code shown: kept in `codes` (the latest [`EPOCH_CODES`]).
fn push_code(codes: &mut Vec<String>, code: String) {
    codes.push(code);
    if codes.len() > EPOCH_CODES {
        codes.remove(0);
    }
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

#[cfg(test)]
mod tests {
    //! The session on a virtual clock: `Instant`s are made up, nothing sleeps, no socket
    //! exists. The relay's side is played with the protocol crate's real SDP writer (the
    //! same code the relay answers and re-offers with) and by routing each session's
    //! messages to the other as the relay would.

    use super::*;
    use crate::call::CallOptions;
    use blindrelay_protocol::sdp::{
        check_answer, parse_offer, write_relay_description, Numbering, RelayMedia, RemoteTrack,
    };
    use std::time::Duration;

    const RELAY_FP: Fingerprint = Fingerprint { sha256: [0xab; 32] };

    fn opts(name: &str) -> CallOptions {
        CallOptions {
            name: name.into(),
            call: "c".into(),
            duration: Duration::from_secs(10),
            ..Default::default()
        }
    }

    fn e2ee_opts(name: &str, scheme: E2eeScheme) -> CallOptions {
        CallOptions {
            e2ee: true,
            e2ee_scheme: scheme,
            ..opts(name)
        }
    }

    fn info(participant: &str, user: &str) -> ParticipantInfo {
        ParticipantInfo {
            participant: participant.into(),
            user: user.into(),
            tenant: "t".into(),
            role: "user".into(),
        }
    }

    fn local(n: u32) -> LocalDescription {
        LocalDescription {
            ice_ufrag: format!("ufrag{n}"),
            ice_pwd: format!("password-of-client-{n:04}"),
            fingerprint: Fingerprint {
                sha256: [n as u8; 32],
            },
            audio_ssrc: 1000 + n,
            video_ssrc: 2000 + n,
            video_layers: Vec::new(),
            cname: format!("cname{n}"),
            session_id: n as u64,
        }
    }

    fn sends(out: &[Output]) -> Vec<&ClientMessage> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn media_modes(out: &[Output]) -> Vec<MediaMode> {
        out.iter()
            .filter_map(|o| match o {
                Output::Media(m) => Some(*m),
                _ => None,
            })
            .collect()
    }

    fn closes(out: &[Output]) -> bool {
        matches!(out.last(), Some(Output::Close))
    }

    /// The relay's description of this client's session, as the relay writes it: its
    /// answer to the join (`version` 0, no remote tracks) or a re-offer.
    fn relay_description(join_offer: &str, remote: &[RemoteTrack], version: u64) -> String {
        let o = parse_offer(join_offer).expect("the client's join offer parses");
        let n = Numbering::from_offer(&o);
        let p = RelayMedia {
            ice_ufrag: "relayufrag",
            ice_pwd: "relaypasswordrelaypassword",
            fingerprint: &RELAY_FP,
            media_addr: "127.0.0.1:7402".parse().expect("literal address"),
            session_id: 7,
            version,
        };
        write_relay_description(&o, &n, remote, &p, version > 0)
    }

    fn track(mid: &str, kind: &'static str, ssrc: u32) -> RemoteTrack {
        RemoteTrack {
            mid: mid.into(),
            kind,
            stream: "p-other".into(),
            ssrc,
            rtx: None,
            active: true,
        }
    }

    /// A session through hello and join, up to the relay's `joined`; returns its outputs
    /// for `joined` and the offer it joined with.
    struct Joining {
        s: ClientSession,
        offer: String,
    }

    fn hello(
        o: &CallOptions,
        n: u32,
        t0: Instant,
        option: E2eeOption,
    ) -> (ClientSession, Vec<Output>) {
        hello_as(o, local(n), t0, option)
    }

    fn hello_as(
        o: &CallOptions,
        l: LocalDescription,
        t0: Instant,
        option: E2eeOption,
    ) -> (ClientSession, Vec<Output>) {
        let mut s = ClientSession::new(o, l, t0);
        let out = s.start();
        assert!(matches!(sends(&out)[..], [ClientMessage::Hello { .. }]));
        let out = s.on_message(
            t0 + Duration::from_millis(5),
            ServerMessage::Capabilities {
                user: o.name.clone(),
                tenant: "t".into(),
                role: "user".into(),
                e2ee_option: option,
            },
        );
        (s, out)
    }

    fn to_join(o: &CallOptions, n: u32, t0: Instant) -> Joining {
        to_join_with(o, local(n), t0)
    }

    fn to_join_with(o: &CallOptions, l: LocalDescription, t0: Instant) -> Joining {
        let (s, out) = hello_as(o, l, t0, E2eeOption::Available);
        let sent = sends(&out);
        let [ClientMessage::Join {
            call,
            e2ee_enabled,
            offer_sdp,
            e2ee_scheme,
        }] = &sent[..]
        else {
            panic!("expected one join: {out:?}");
        };
        assert_eq!(call, "c");
        assert_eq!(*e2ee_enabled, o.e2ee);
        assert_eq!(*e2ee_scheme, o.e2ee_scheme);
        let offer = offer_sdp.clone();
        Joining { s, offer }
    }

    fn joined(
        j: &mut Joining,
        now: Instant,
        me: &str,
        mode: CallMode,
        scheme: Option<E2eeScheme>,
        reason: Option<&str>,
        participants: Vec<ParticipantInfo>,
    ) -> Vec<Output> {
        j.s.on_message(
            now,
            ServerMessage::Joined {
                participant: me.into(),
                call_mode: mode,
                mode_reason: reason.map(str::to_string),
                answer_sdp: relay_description(&j.offer, &[], 0),
                participants,
                e2ee_scheme: scheme,
            },
        )
    }

    /// A session in the call: joined as `me` and its media path up at `now`.
    fn in_call(
        o: &CallOptions,
        n: u32,
        now: Instant,
        me: &str,
        mode: CallMode,
        scheme: Option<E2eeScheme>,
        participants: Vec<ParticipantInfo>,
    ) -> (ClientSession, Vec<Output>) {
        let mut j = to_join(o, n, now);
        let out = joined(&mut j, now, me, mode, scheme, None, participants);
        let Some(Output::ConnectMedia(answer)) = out.last() else {
            panic!("joined leads to the media path: {out:?}");
        };
        assert_eq!(answer.ice_ufrag, "relayufrag");
        assert_eq!(answer.fingerprint, RELAY_FP);
        let out = j.s.on_media_connected(now, "SRTP_AEAD_AES_128_GCM");
        (j.s, out)
    }

    /// Deliver what `from` (participant `from_id`) sent that the relay forwards to `to`
    /// as key agreement; returns `to`'s outputs.
    fn route_kex(
        from_id: &str,
        out: &[Output],
        to: &mut ClientSession,
        now: Instant,
    ) -> Vec<Output> {
        let mut back = Vec::new();
        for m in sends(out) {
            if let ClientMessage::E2ee { to: _, blob } = m {
                back.extend(to.on_message(
                    now,
                    ServerMessage::E2ee {
                        from: from_id.into(),
                        blob: blob.clone(),
                    },
                ));
            }
        }
        back
    }

    /// Two clients keyed one to one: alice first, bob joining her.
    fn keyed_pair(t0: Instant) -> (ClientSession, ClientSession, Vec<Output>, Vec<Output>) {
        let x = Some(E2eeScheme::X25519);
        let (mut a, a0) = in_call(
            &e2ee_opts("alice", E2eeScheme::X25519),
            1,
            t0,
            "p-a",
            CallMode::E2ee,
            x,
            vec![],
        );
        // Alone: nobody to key with, and nothing is sent until keys exist.
        assert_eq!(media_modes(&a0), vec![MediaMode::Hold]);
        assert!(sends(&a0).is_empty(), "{a0:?}");
        let (mut b, b0) = in_call(
            &e2ee_opts("bob", E2eeScheme::X25519),
            2,
            t0,
            "p-b",
            CallMode::E2ee,
            x,
            vec![info("p-a", "alice")],
        );
        assert_eq!(media_modes(&b0), vec![MediaMode::Hold]);
        let mut a_all = a0;
        a_all.extend(a.on_message(
            t0,
            ServerMessage::ParticipantJoined {
                participant: info("p-b", "bob"),
            },
        ));
        let mut b_all = b0;
        // The relay passes blobs both ways until neither has anything more to say; the
        // blob bob sent before alice knew of him is kept until she does.
        let mut to_a = route_kex("p-b", &b_all, &mut a, t0);
        let mut to_b = route_kex("p-a", &a_all, &mut b, t0);
        for _ in 0..8 {
            if sends(&to_a).is_empty() && sends(&to_b).is_empty() {
                break;
            }
            a_all.extend(to_a.iter().map(clone_output));
            b_all.extend(to_b.iter().map(clone_output));
            let next_b = route_kex("p-a", &to_a, &mut b, t0);
            let next_a = route_kex("p-b", &to_b, &mut a, t0);
            to_a = next_a;
            to_b = next_b;
        }
        a_all.extend(to_a);
        b_all.extend(to_b);
        (a, b, a_all, b_all)
    }

    fn clone_output(o: &Output) -> Output {
        match o {
            Output::Send(m) => Output::Send(m.clone()),
            Output::ConnectMedia(a) => Output::ConnectMedia(a.clone()),
            Output::Media(m) => Output::Media(*m),
            Output::Say(l) => Output::Say(l.clone()),
            Output::Warn(l) => Output::Warn(l.clone()),
            Output::Fail(e) => Output::Fail(e.clone()),
            Output::Close => Output::Close,
            Output::Reconnect { relay, at } => Output::Reconnect {
                relay: relay.clone(),
                at: *at,
            },
        }
    }

    /// Seal a frame with `from`'s key and open it at `to`.
    fn frame_crosses(from: &mut ClientSession, to: &mut ClientSession, now: Instant) -> Vec<u8> {
        let plain = b"a frame of media".to_vec();
        let mut sealed = Vec::new();
        from.sealer()
            .expect("keyed: a sealer exists")
            .seal_into(&[], &plain, &mut sealed)
            .expect("seal");
        assert_ne!(sealed, plain);
        let mut opened = Vec::new();
        assert_eq!(
            to.open_frame(now, &[], &sealed, &mut opened),
            FrameOpen::Opened
        );
        opened
    }

    // (a) 1:1 keying.
    #[test]
    fn one_to_one_keying_exchanges_blobs_keys_media_and_shows_one_code() {
        let t0 = Instant::now();
        let (mut a, mut b, a_out, b_out) = keyed_pair(t0);
        for (s, out) in [(&a, &a_out), (&b, &b_out)] {
            assert!(s.summary().e2ee, "{out:?}");
            assert_eq!(s.lock(), "on");
            // Media went from held to sealed; never clear.
            assert_eq!(media_modes(out), vec![MediaMode::Hold, MediaMode::Sealed]);
            assert!(out
                .iter()
                .any(|o| matches!(o, Output::Warn(l) if l.starts_with("Verification code: "))));
        }
        let code = a
            .summary()
            .verification_code
            .clone()
            .expect("alice has a code");
        assert_eq!(Some(code), b.summary().verification_code.clone());
        assert!(a.summary().e2ee_error.is_none() && b.summary().e2ee_error.is_none());
        // The keys are the pair's: each opens the other's frames.
        assert_eq!(frame_crosses(&mut a, &mut b, t0), b"a frame of media");
        assert_eq!(frame_crosses(&mut b, &mut a, t0), b"a frame of media");
        assert_eq!(b.summary().frames_decrypted, 1);
        // A frame sealed with another key fails and is counted.
        let mut opened = Vec::new();
        let mut other =
            crate::sframe::Sender::new(CipherSuite::default(), KID_INITIATOR, &[9u8; 16]);
        let forged = other.seal(&[], b"forged").expect("seal");
        assert_eq!(
            b.open_frame(t0, &[], &forged, &mut opened),
            FrameOpen::Dropped
        );
        assert_eq!(b.summary().decrypt_failures, 1);
    }

    #[test]
    fn a_blob_before_its_sender_is_announced_is_kept_until_then() {
        let t0 = Instant::now();
        let x = Some(E2eeScheme::X25519);
        let (mut a, _) = in_call(
            &e2ee_opts("alice", E2eeScheme::X25519),
            1,
            t0,
            "p-a",
            CallMode::E2ee,
            x,
            vec![],
        );
        let (mut b, b0) = in_call(
            &e2ee_opts("bob", E2eeScheme::X25519),
            2,
            t0,
            "p-b",
            CallMode::E2ee,
            x,
            vec![info("p-a", "alice")],
        );
        // Whichever of the two starts, the agreement needs both: if bob's first blob
        // arrives before participant_joined, alice keeps it and answers once she can.
        let early = route_kex("p-b", &b0, &mut a, t0);
        assert!(
            sends(&early).is_empty(),
            "no agreement before the join event: {early:?}"
        );
        let a1 = a.on_message(
            t0,
            ServerMessage::ParticipantJoined {
                participant: info("p-b", "bob"),
            },
        );
        assert!(!sends(&a1).is_empty(), "alice speaks once bob is announced");
        let mut to_b = route_kex("p-a", &a1, &mut b, t0);
        for _ in 0..8 {
            let to_a = route_kex("p-b", &to_b, &mut a, t0);
            to_b = route_kex("p-a", &to_a, &mut b, t0);
        }
        assert!(a.summary().e2ee && b.summary().e2ee);
        assert_eq!(a.summary().verification_code, b.summary().verification_code);
    }

    #[test]
    fn a_bot_is_never_keyed() {
        let t0 = Instant::now();
        let mut bot = info("p-bot", "rec");
        bot.role = "bot:recording".into();
        let (s, out) = in_call(
            &e2ee_opts("alice", E2eeScheme::X25519),
            1,
            t0,
            "p-a",
            CallMode::E2ee,
            Some(E2eeScheme::X25519),
            vec![bot],
        );
        assert!(
            sends(&out)
                .iter()
                .all(|m| !matches!(m, ClientMessage::E2ee { .. })),
            "{out:?}"
        );
        assert_eq!(media_modes(&out), vec![MediaMode::Hold]);
        assert!(!s.summary().e2ee);
    }

    // (b) downgrades.
    #[test]
    fn a_required_e2ee_join_made_standard_leaves_before_any_media() {
        let t0 = Instant::now();
        let mut j = to_join(&e2ee_opts("alice", E2eeScheme::X25519), 1, t0);
        let out = joined(
            &mut j,
            t0,
            "p-a",
            CallMode::Standard,
            None,
            Some("bob does not encrypt"),
            vec![],
        );
        assert!(matches!(sends(&out)[..], [ClientMessage::Leave]), "{out:?}");
        assert!(closes(&out));
        assert!(
            !out.iter()
                .any(|o| matches!(o, Output::ConnectMedia(_) | Output::Media(_))),
            "no media path, nothing sent: {out:?}"
        );
        let s = j.s.summary();
        assert_eq!(s.left_reason.as_deref(), Some("downgrade_refused"));
        assert_eq!(
            s.error.as_ref().map(|e| e.code.as_str()),
            Some("downgrade_refused")
        );
        assert_eq!(s.mode_reason.as_deref(), Some("bob does not encrypt"));
        assert!(j.s.is_done());
    }

    #[test]
    fn a_required_e2ee_client_hidden_from_e2ee_does_not_join() {
        let t0 = Instant::now();
        let (s, out) = hello(
            &e2ee_opts("alice", E2eeScheme::X25519),
            1,
            t0,
            E2eeOption::Hidden,
        );
        assert!(sends(&out).is_empty(), "no join: {out:?}");
        assert!(closes(&out));
        assert_eq!(
            s.summary().left_reason.as_deref(),
            Some("downgrade_refused")
        );
        assert!(!s.summary().joined);
    }

    #[test]
    fn e2ee_preferred_accepts_a_standard_call_loudly() {
        let t0 = Instant::now();
        let o = CallOptions {
            e2ee_preferred: true,
            ..e2ee_opts("alice", E2eeScheme::X25519)
        };
        let mut j = to_join(&o, 1, t0);
        let out = joined(
            &mut j,
            t0,
            "p-a",
            CallMode::Standard,
            None,
            Some("bob does not encrypt"),
            vec![],
        );
        assert!(
            matches!(out.last(), Some(Output::ConnectMedia(_))),
            "{out:?}"
        );
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::Warn(l) if l.contains("NOT end-to-end encrypted"))));
        assert_eq!(
            j.s.summary().downgrade_accepted.as_deref(),
            Some("bob does not encrypt")
        );
        assert!(j.s.summary().error.is_none());
        let out = j.s.on_media_connected(t0, "SRTP_AEAD_AES_128_GCM");
        assert_eq!(media_modes(&out), vec![MediaMode::Clear]);
        assert!(j.s.sealer().is_none());
    }

    #[test]
    fn a_mode_change_before_keys_is_refused_or_accepted_by_policy() {
        let t0 = Instant::now();
        let x = Some(E2eeScheme::X25519);
        let change = || ServerMessage::CallModeChanged {
            call_mode: CallMode::Standard,
            reason: "a joiner does not encrypt".into(),
        };
        // Required: leave, telling the relay; media never left the hold.
        let (mut a, a0) = in_call(
            &e2ee_opts("alice", E2eeScheme::X25519),
            1,
            t0,
            "p-a",
            CallMode::E2ee,
            x,
            vec![],
        );
        assert_eq!(media_modes(&a0), vec![MediaMode::Hold]);
        let out = a.on_message(t0, change());
        assert!(matches!(sends(&out)[..], [ClientMessage::Leave]), "{out:?}");
        assert!(closes(&out) && media_modes(&out).is_empty());
        assert_eq!(
            a.summary().left_reason.as_deref(),
            Some("downgrade_refused")
        );
        assert!(!a.summary().success());
        // Preferred: go on in the clear, saying so.
        let o = CallOptions {
            e2ee_preferred: true,
            ..e2ee_opts("alice", E2eeScheme::X25519)
        };
        let (mut a, _) = in_call(&o, 1, t0, "p-a", CallMode::E2ee, x, vec![]);
        let out = a.on_message(t0, change());
        assert_eq!(media_modes(&out), vec![MediaMode::Clear]);
        assert!(!closes(&out));
        assert_eq!(
            a.summary().downgrade_accepted.as_deref(),
            Some("a joiner does not encrypt")
        );
        assert_eq!(a.summary().call_mode, Some(CallMode::Standard));
    }

    #[test]
    fn after_keys_a_mode_change_is_ignored() {
        let t0 = Instant::now();
        let (mut a, mut b, _, _) = keyed_pair(t0);
        let out = a.on_message(
            t0,
            ServerMessage::CallModeChanged {
                call_mode: CallMode::Standard,
                reason: "the relay lies".into(),
            },
        );
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::Warn(l) if l.contains("staying end-to-end encrypted"))));
        assert!(media_modes(&out).is_empty() && !closes(&out), "{out:?}");
        assert_eq!(a.summary().call_mode, Some(CallMode::E2ee));
        assert!(a.summary().downgrade_accepted.is_none() && a.summary().error.is_none());
        assert_eq!(frame_crosses(&mut a, &mut b, t0), b"a frame of media");
    }

    /// `--max-height` asks once for each remote video m-line the relay offers (never for
    /// the client's own lines or audio), after answering. With simulcast layers the join's
    /// offer lists them in one SIM group.
    #[test]
    fn max_height_caps_each_remote_video_line_once() {
        let t0 = Instant::now();
        let o = CallOptions {
            max_height: Some(120),
            ..opts("alice")
        };
        let mut l = local(1);
        l.video_layers = vec![2001, 2002, 2003];
        let mut j = to_join_with(&o, l, t0);
        let offered = parse_offer(&j.offer).expect("the join offer parses");
        assert_eq!(offered.media[1].simulcast, vec![2001, 2002, 2003]);
        let out = joined(&mut j, t0, "p-a", CallMode::Standard, None, None, vec![]);
        assert!(matches!(out.last(), Some(Output::ConnectMedia(_))));
        let mut a = j.s;
        a.on_media_connected(t0, "SRTP_AEAD_AES_128_GCM");
        let caps = |a: &mut ClientSession, remote: &[RemoteTrack], revision: u64| {
            let sdp = relay_description(&j.offer, remote, revision);
            let out = a.on_message(t0, ServerMessage::Offer { sdp, revision });
            let sent = sends(&out);
            assert!(
                matches!(sent.first(), Some(ClientMessage::Answer { .. })),
                "{sent:?}"
            );
            sent.iter()
                .filter_map(|m| match m {
                    ClientMessage::MaxResolution { mid, height } => {
                        assert_eq!(*height, Some(120));
                        Some(mid.clone())
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let one = vec![track("r0", "audio", 77), track("r1", "video", 78)];
        assert_eq!(caps(&mut a, &one, 1), vec!["r1"]);
        assert!(caps(&mut a, &one, 2).is_empty(), "asked once per line");
        let two = [one.clone(), vec![track("r2", "video", 79)]].concat();
        assert_eq!(caps(&mut a, &two, 3), vec!["r2"]);
    }

    // (c) renegotiation.
    #[test]
    fn each_offer_is_answered_with_its_own_revision() {
        let t0 = Instant::now();
        let mut j = to_join(&opts("alice"), 1, t0);
        let out = joined(&mut j, t0, "p-a", CallMode::Standard, None, None, vec![]);
        assert!(matches!(out.last(), Some(Output::ConnectMedia(_))));
        let mut a = j.s;
        let out = a.on_media_connected(t0, "SRTP_AEAD_AES_128_GCM");
        assert_eq!(media_modes(&out), vec![MediaMode::Clear]);
        let one = vec![track("r0", "audio", 77)];
        let two = vec![track("r0", "audio", 77), track("r1", "video", 78)];
        let answer = |a: &mut ClientSession, remote: &[RemoteTrack], revision: u64| {
            let offer = relay_description(&j.offer, remote, revision);
            let out = a.on_message(
                t0,
                ServerMessage::Offer {
                    sdp: offer.clone(),
                    revision,
                },
            );
            let sent = sends(&out);
            let [ClientMessage::Answer { sdp, revision: r }] = &sent[..] else {
                panic!("one answer: {out:?}");
            };
            // The relay's own check: every offered m-line answered, in order, and the
            // client's SSRCs are the ones it sends.
            let mids: Vec<String> = parse_offer(&offer)
                .expect("offer parses")
                .media
                .iter()
                .map(|m| m.mid.clone())
                .collect();
            assert_eq!(mids.len(), 2 + remote.len());
            let ssrcs = check_answer(sdp, &mids).expect("the relay accepts the answer");
            // It claims no SSRC but the client's own (never a remote sender's).
            assert!(ssrcs.iter().all(|x| [1001, 2001].contains(x)), "{ssrcs:?}");
            *r
        };
        assert_eq!(answer(&mut a, &one, 1), 1);
        assert_eq!(answer(&mut a, &two, 2), 2);
        // A stale offer is answered as it came (revision 1): the relay, which knows its
        // latest revision, drops the answer; the client never relabels it.
        assert_eq!(answer(&mut a, &one, 1), 1);
        assert_eq!(a.summary().offers_answered, 3);
        // An offer that does not parse gets no answer, and the call goes on.
        let out = a.on_message(
            t0,
            ServerMessage::Offer {
                sdp: "v=0 garbage".into(),
                revision: 4,
            },
        );
        assert!(sends(&out).is_empty() && !closes(&out), "{out:?}");
        assert!(out.iter().any(
            |o| matches!(o, Output::Say(l) if l.starts_with("cannot answer the relay's offer 4"))
        ));
        assert_eq!(a.summary().offers_answered, 3);
    }

    // (d) leave paths.
    #[test]
    fn the_duration_ends_the_call_with_a_leave_and_no_error() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(2);
        let (mut a, _) = in_call(
            &opts("alice"),
            1,
            later,
            "p-a",
            CallMode::Standard,
            None,
            vec![info("p-b", "bob")],
        );
        let end = later + Duration::from_secs(10);
        assert_eq!(a.next_deadline(), Some(end));
        assert!(a.on_tick(end - Duration::from_millis(1)).is_empty());
        let out = a.on_tick(end);
        assert!(matches!(sends(&out)[..], [ClientMessage::Leave]), "{out:?}");
        assert!(closes(&out) && a.is_done());
        assert_eq!(a.next_deadline(), None);
        // Once over, nothing more happens.
        assert!(a
            .on_message(
                end,
                ServerMessage::ParticipantLeft {
                    participant: "p-b".into(),
                    reason: "left".into()
                }
            )
            .is_empty());
        assert!(a.on_signalling_closed(end, "closed", None).is_empty());
        let s = a.summary_mut();
        assert!(
            s.joined && s.error.is_none() && s.left_reason.is_none(),
            "{s:?}"
        );
        s.received_packets = 1; // as the driver counts media that arrived
        assert!(s.success(), "exit 0");
        assert_eq!(s.join_ms, Some(0.0));
        assert_eq!(s.connect_ms, Some(0.0));
    }

    #[test]
    fn removed_by_the_relay_the_client_says_why_and_fails() {
        let t0 = Instant::now();
        let (mut a, _) = in_call(
            &opts("alice"),
            1,
            t0,
            "p-a",
            CallMode::Standard,
            None,
            vec![],
        );
        // Others leaving is news, not an end.
        let out = a.on_message(
            t0,
            ServerMessage::ParticipantLeft {
                participant: "p-b".into(),
                reason: "left".into(),
            },
        );
        assert!(!closes(&out));
        let out = a.on_message(
            t0 + Duration::from_secs(1),
            ServerMessage::ParticipantLeft {
                participant: "p-a".into(),
                reason: "slow_reader".into(),
            },
        );
        // The relay ended our part: no leave to send.
        assert!(sends(&out).is_empty() && closes(&out), "{out:?}");
        let s = a.summary_mut();
        assert_eq!(s.peers_left, vec!["p-b".to_string()]);
        assert_eq!(s.left_reason.as_deref(), Some("slow_reader"));
        assert_eq!(
            s.error.as_ref().map(|e| e.code.as_str()),
            Some("slow_reader")
        );
        s.received_packets = 1;
        assert!(!s.success(), "exits non-zero");
    }

    #[test]
    fn a_hand_over_ends_the_call_without_an_error() {
        let t0 = Instant::now();
        let (mut a, _) = in_call(
            &opts("alice"),
            1,
            t0,
            "p-a",
            CallMode::Standard,
            None,
            vec![],
        );
        let out = a.on_message(
            t0,
            ServerMessage::ParticipantLeft {
                participant: "p-a".into(),
                reason: "transferred".into(),
            },
        );
        assert!(sends(&out).is_empty() && closes(&out));
        assert_eq!(a.summary().ended.as_deref(), Some("transferred"));
        assert!(a.summary().error.is_none() && a.summary().left_reason.is_none());
    }

    #[test]
    fn signalling_lost_in_the_call_is_reported_and_not_a_normal_end() {
        let t0 = Instant::now();
        let (mut a, _) = in_call(
            &opts("alice"),
            1,
            t0,
            "p-a",
            CallMode::Standard,
            None,
            vec![],
        );
        let out = a.on_signalling_closed(
            t0 + Duration::from_secs(3),
            "signalling connection closed by the relay",
            None,
        );
        assert!(sends(&out).is_empty() && closes(&out), "{out:?}");
        assert!(out.iter().any(|o| matches!(o, Output::Warn(l) if l.starts_with("signalling lost before the call's end"))));
        let s = a.summary();
        assert_eq!(s.left_reason.as_deref(), Some("signalling_lost"));
        assert_eq!(
            s.error
                .as_ref()
                .map(|e| (e.code.as_str(), e.message.as_str())),
            Some((
                "signalling_lost",
                "signalling connection closed by the relay"
            ))
        );
        assert!(!s.success());
    }

    #[test]
    fn before_the_call_a_refusal_or_lost_signalling_fails_it() {
        let t0 = Instant::now();
        let mut j = to_join(&opts("alice"), 1, t0);
        // Events about others may come before the reply; an error is the reply.
        assert!(j
            .s
            .on_message(
                t0,
                ServerMessage::ParticipantJoined {
                    participant: info("p-b", "bob")
                }
            )
            .is_empty());
        let out = j.s.on_message(
            t0,
            ServerMessage::Error {
                code: ErrorCode::CallFull,
                message: "full".into(),
            },
        );
        assert!(
            matches!(&out[..], [Output::Fail(SessionError::Refused { code, .. })] if code == "call_full"),
            "{out:?}"
        );
        assert!(j.s.is_done());
        let mut j = to_join(&opts("alice"), 1, t0);
        let out = j.s.on_signalling_closed(t0, "gone", None);
        assert!(
            matches!(&out[..], [Output::Fail(SessionError::Signalling(m))] if m == "gone"),
            "{out:?}"
        );
        // A reply of the wrong kind is a protocol error.
        let (mut s, _) = hello(&opts("alice"), 1, t0, E2eeOption::Available);
        let out = s.on_message(t0, ServerMessage::MlsCreate {});
        assert!(
            matches!(&out[..], [Output::Fail(SessionError::Protocol(_))]),
            "{out:?}"
        );
    }

    #[test]
    fn waiting_for_an_invitation_joins_the_call_it_names_or_gives_up_at_the_duration() {
        let t0 = Instant::now();
        let o = CallOptions {
            wait_invite: true,
            ..opts("bot")
        };
        let (mut s, out) = hello(&o, 1, t0, E2eeOption::Available);
        assert!(out.is_empty(), "no join before an invitation: {out:?}");
        let deadline = t0 + Duration::from_millis(5) + o.duration;
        assert_eq!(s.next_deadline(), Some(deadline));
        assert!(s
            .on_message(
                t0,
                ServerMessage::Chat {
                    from: "x".into(),
                    body: "hi".into()
                }
            )
            .is_empty());
        let out = s.on_message(
            t0,
            ServerMessage::Invite {
                call: "other".into(),
                by: "p-z".into(),
                reason: "add".into(),
            },
        );
        assert!(
            matches!(sends(&out)[..], [ClientMessage::Join { call, .. }] if call == "other"),
            "{out:?}"
        );
        assert_eq!(
            s.summary().invited,
            Some(("other".into(), "p-z".into(), "add".into()))
        );
        let (mut s, _) = hello(&o, 1, t0, E2eeOption::Available);
        assert!(s.on_tick(deadline - Duration::from_millis(1)).is_empty());
        let out = s.on_tick(deadline);
        assert!(
            matches!(&out[..], [Output::Fail(SessionError::Refused { code, .. })] if code == "no_invite"),
            "{out:?}"
        );
    }

    #[test]
    fn chat_goes_once_someone_is_there_and_sealed_on_an_e2ee_call() {
        let t0 = Instant::now();
        let o = CallOptions {
            chat: Some("hello there".into()),
            ..opts("alice")
        };
        let (mut a, out) = in_call(&o, 1, t0, "p-a", CallMode::Standard, None, vec![]);
        assert!(sends(&out).is_empty(), "alone: no chat yet");
        let out = a.on_message(
            t0,
            ServerMessage::ParticipantJoined {
                participant: info("p-b", "bob"),
            },
        );
        assert!(
            matches!(sends(&out)[..], [ClientMessage::Chat { body }] if body == "hello there"),
            "{out:?}"
        );
        let out = a.on_message(
            t0,
            ServerMessage::ParticipantJoined {
                participant: info("p-c", "carol"),
            },
        );
        assert!(sends(&out).is_empty(), "once");
        // Sealed between a keyed pair: the relay sees no text, the peer reads it.
        let (mut a, mut b, _, _) = keyed_pair(t0);
        let body = seal_chat("secret words", a.e2ee.as_mut());
        assert!(body.starts_with(CHAT_SEALED_PREFIX) && !body.contains("secret"));
        b.on_message(
            t0,
            ServerMessage::Chat {
                from: "p-a".into(),
                body,
            },
        );
        assert_eq!(b.summary().chat_received, vec!["secret words".to_string()]);
    }

    // (e) MLS group keying.
    #[test]
    fn mls_a_joiner_publishes_a_key_package_and_a_welcome_makes_it_a_member() {
        let t0 = Instant::now();
        let mls = Some(E2eeScheme::Mls);
        let (mut a, a0) = in_call(
            &e2ee_opts("alice", E2eeScheme::Mls),
            1,
            t0,
            "p-a",
            CallMode::E2ee,
            mls,
            vec![],
        );
        // The first member creates the group; alone it holds its media.
        assert!(sends(&a0).is_empty(), "{a0:?}");
        assert_eq!(media_modes(&a0), vec![MediaMode::Hold]);
        let (mut b, b0) = in_call(
            &e2ee_opts("bob", E2eeScheme::Mls),
            2,
            t0,
            "p-b",
            CallMode::E2ee,
            mls,
            vec![info("p-a", "alice")],
        );
        let sent = sends(&b0);
        let [ClientMessage::MlsKeyPackage { blob }] = &sent[..] else {
            panic!("bob publishes a KeyPackage on join: {b0:?}");
        };
        let blob = blob.clone();
        assert_eq!(media_modes(&b0), vec![MediaMode::Hold]);
        // The relay announces bob and hands alice his KeyPackage: she commits the add.
        let t1 = t0 + Duration::from_millis(50);
        assert!(sends(&a.on_message(
            t1,
            ServerMessage::ParticipantJoined {
                participant: info("p-b", "bob")
            }
        ))
        .is_empty());
        let out = a.on_message(
            t1,
            ServerMessage::MlsKeyPackage {
                from: "p-b".into(),
                blob,
            },
        );
        let sent = sends(&out);
        let [ClientMessage::MlsCommit {
            commit: _,
            welcome: Some(welcome),
        }] = &sent[..]
        else {
            panic!("alice commits bob's add with a Welcome: {out:?}");
        };
        let welcome = welcome.clone();
        let out = a.on_message(
            t1,
            ServerMessage::MlsCommitResult {
                epoch: 0,
                accepted: true,
            },
        );
        assert_eq!(media_modes(&out), vec![MediaMode::Sealed]);
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::Warn(l) if l.starts_with("Verification code (epoch 1)"))));
        // bob joins from the Welcome and tells the relay.
        let out = b.on_message(
            t1,
            ServerMessage::MlsWelcome {
                from: "p-a".into(),
                welcome,
            },
        );
        assert!(
            matches!(sends(&out)[..], [ClientMessage::MlsJoined { epoch: 1 }]),
            "{out:?}"
        );
        assert_eq!(media_modes(&out), vec![MediaMode::Sealed]);
        for s in [&a, &b] {
            let s = s.summary();
            assert!(s.e2ee);
            assert_eq!(s.epoch, Some(1));
            assert_eq!(s.epoch_codes.len(), 1);
            assert_eq!(
                s.epoch_members.get(&1),
                Some(&vec!["alice".to_string(), "bob".to_string()])
            );
        }
        assert_eq!(a.summary().verification_code, b.summary().verification_code);
        assert!(a.summary().verification_code.is_some());
        assert_eq!(frame_crosses(&mut a, &mut b, t1), b"a frame of media");
        assert_eq!(b.summary().frames_decrypted_from.get("p-a"), Some(&1));
        // Timed from bob's join (t0 plus the hello's few ms) to the first frame, at t1; a
        // later frame leaves it as it was.
        let first = b.summary().first_decrypted_ms.get("p-a").copied();
        assert!(
            first.is_some_and(|ms| (44.0..=50.0).contains(&ms)),
            "{first:?}"
        );
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(frame_crosses(&mut a, &mut b, t2), b"a frame of media");
        assert_eq!(b.summary().first_decrypted_ms.get("p-a").copied(), first);
        assert_eq!(b.summary().frames_decrypted_from.get("p-a"), Some(&2));
        // The call's end fills the group's members in the summary.
        let out = b.on_tick(t1 + Duration::from_secs(10));
        assert!(closes(&out));
        assert_eq!(
            b.summary().group_members,
            vec!["alice".to_string(), "bob".to_string()]
        );
    }

    #[test]
    fn mls_a_key_package_from_someone_unannounced_is_refused_and_counted() {
        let t0 = Instant::now();
        let mls = Some(E2eeScheme::Mls);
        let (mut a, _) = in_call(
            &e2ee_opts("alice", E2eeScheme::Mls),
            1,
            t0,
            "p-a",
            CallMode::E2ee,
            mls,
            vec![],
        );
        let (_, b0) = in_call(
            &e2ee_opts("bob", E2eeScheme::Mls),
            2,
            t0,
            "p-b",
            CallMode::E2ee,
            mls,
            vec![info("p-a", "alice")],
        );
        let Some(ClientMessage::MlsKeyPackage { blob }) = sends(&b0).first().map(|m| (*m).clone())
        else {
            panic!("a KeyPackage: {b0:?}");
        };
        // No participant_joined for p-b: the relay's word is missing, so no commit.
        let out = a.on_message(
            t0,
            ServerMessage::MlsKeyPackage {
                from: "p-b".into(),
                blob,
            },
        );
        assert!(sends(&out).is_empty(), "{out:?}");
        assert_eq!(a.summary().key_packages_refused, 1);
        assert_eq!(media_modes(&out), Vec::<MediaMode>::new());
    }

    // Failover across relays.

    /// Options for a client given relays `ws://a` then `ws://b`, E2EE with `scheme`.
    fn two_relays(name: &str, scheme: E2eeScheme) -> CallOptions {
        CallOptions {
            relay: "ws://a".into(),
            fallback_relays: vec!["ws://b".into()],
            ..e2ee_opts(name, scheme)
        }
    }

    /// Two in-call sessions agree keys, the relay passing blobs both ways until neither has
    /// more to say.
    fn key_two(
        a: &mut ClientSession,
        a_id: &str,
        a_out: Vec<Output>,
        b: &mut ClientSession,
        b_id: &str,
        b_out: Vec<Output>,
        now: Instant,
    ) {
        let mut to_a = route_kex(b_id, &b_out, a, now);
        let mut to_b = route_kex(a_id, &a_out, b, now);
        for _ in 0..8 {
            if sends(&to_a).is_empty() && sends(&to_b).is_empty() {
                break;
            }
            let next_b = route_kex(a_id, &to_a, b, now);
            let next_a = route_kex(b_id, &to_b, a, now);
            to_a = next_a;
            to_b = next_b;
        }
    }

    /// The reconnect a loss asked for, and that nothing was said to the lost relay.
    fn reconnect_of(out: &[Output]) -> (String, Instant) {
        assert!(sends(out).is_empty(), "no leave to a lost relay: {out:?}");
        match out.last() {
            Some(Output::Reconnect { relay, at }) => (relay.clone(), *at),
            _ => panic!("expected a reconnect: {out:?}"),
        }
    }

    /// A lost session reaches the next relay at `now` with a fresh description (`n`):
    /// hello, capabilities, a join with the new offer, `joined` as `me` among
    /// `participants`, and its media path up. Returns the outputs of that last step.
    fn rejoin_as(
        s: &mut ClientSession,
        n: u32,
        now: Instant,
        me: &str,
        scheme: E2eeScheme,
        participants: Vec<ParticipantInfo>,
    ) -> Vec<Output> {
        let out = s.rejoin(now, local(n));
        assert!(
            matches!(sends(&out)[..], [ClientMessage::Hello { .. }]),
            "{out:?}"
        );
        let out = s.on_message(
            now,
            ServerMessage::Capabilities {
                user: "u".into(),
                tenant: "t".into(),
                role: "user".into(),
                e2ee_option: E2eeOption::Available,
            },
        );
        let sent = sends(&out);
        let [ClientMessage::Join {
            call, offer_sdp, ..
        }] = &sent[..]
        else {
            panic!("a rejoin joins the same call: {out:?}");
        };
        assert_eq!(call, "c");
        // Fresh ICE credentials and DTLS certificate.
        let offer = parse_offer(offer_sdp).expect("offer parses");
        assert_eq!(offer.ice_ufrag, format!("ufrag{n}"));
        let offer_sdp = offer_sdp.clone();
        let out = s.on_message(
            now,
            ServerMessage::Joined {
                participant: me.into(),
                call_mode: CallMode::E2ee,
                mode_reason: None,
                answer_sdp: relay_description(&offer_sdp, &[], 0),
                participants,
                e2ee_scheme: Some(scheme),
            },
        );
        assert!(
            matches!(out.last(), Some(Output::ConnectMedia(_))),
            "{out:?}"
        );
        s.on_media_connected(now, "SRTP_AEAD_AES_128_GCM")
    }

    #[test]
    fn a_lost_one_to_one_call_rejoins_through_the_next_relay_with_new_keys() {
        let t0 = Instant::now();
        let x = Some(E2eeScheme::X25519);
        let (mut a, a0) = in_call(
            &two_relays("alice", E2eeScheme::X25519),
            1,
            t0,
            "p-a",
            CallMode::E2ee,
            x,
            vec![],
        );
        let (mut b, b0) = in_call(
            &two_relays("bob", E2eeScheme::X25519),
            2,
            t0,
            "p-b",
            CallMode::E2ee,
            x,
            vec![info("p-a", "alice")],
        );
        let mut a_out = a0;
        a_out.extend(a.on_message(
            t0,
            ServerMessage::ParticipantJoined {
                participant: info("p-b", "bob"),
            },
        ));
        key_two(&mut a, "p-a", a_out, &mut b, "p-b", b0, t0);
        let old = a.summary().verification_code.clone().expect("keyed");
        assert_eq!(b.summary().verification_code.as_ref(), Some(&old));
        for ms in [10, 30, 90] {
            frame_crosses(&mut a, &mut b, t0 + Duration::from_millis(ms));
        }
        assert!(a.take_pending().is_empty());
        let firsts: Vec<String> = b
            .take_pending()
            .into_iter()
            .filter_map(|o| match o {
                Output::Say(l) => Some(l),
                _ => None,
            })
            .collect();
        assert_eq!(firsts, ["first frame opened from p-a"]);
        assert_eq!(b.progress().opened_from.get("p-a"), Some(&3));

        // Relay a dies: both lose signalling; neither says anything to it, and both move
        // to relay b after the first backoff.
        let t1 = t0 + Duration::from_secs(1);
        for s in [&mut a, &mut b] {
            let out = s.on_signalling_closed(t1, "connection reset", None);
            assert!(!closes(&out), "{out:?}");
            assert_eq!(
                reconnect_of(&out),
                ("ws://b".to_string(), t1 + Duration::from_millis(100))
            );
            assert_eq!(s.relay(), "ws://b");
            assert!(s.summary().error.is_none());
            assert!(!s.is_done());
            assert!(s.fails_over());
            // No keys until the new agreement: nothing is sealed with the old ones.
            assert!(s.sealer().is_none());
        }
        // A second loss report of the same session changes nothing.
        assert!(a.on_signalling_closed(t1, "again", None).is_empty());

        // On b: bob first, then alice; new ids, a new agreement, one new code.
        let t2 = t1 + Duration::from_millis(100);
        let b1 = rejoin_as(&mut b, 12, t2, "p-b2", E2eeScheme::X25519, vec![]);
        assert_eq!(media_modes(&b1), vec![MediaMode::Hold]);
        assert!(b1.iter().any(|o| matches!(o, Output::Warn(l) if l.starts_with("rejoined the call through ws://b as p-b2"))));
        let a1 = rejoin_as(
            &mut a,
            11,
            t2,
            "p-a2",
            E2eeScheme::X25519,
            vec![info("p-b2", "bob")],
        );
        let mut b_out = b1;
        b_out.extend(b.on_message(
            t2,
            ServerMessage::ParticipantJoined {
                participant: info("p-a2", "alice"),
            },
        ));
        key_two(&mut a, "p-a2", a1, &mut b, "p-b2", b_out, t2);
        let new = a.summary().verification_code.clone().expect("keyed again");
        assert_eq!(b.summary().verification_code.as_ref(), Some(&new));
        assert_ne!(new, old, "new keys, a new code");
        let t3 = t2 + Duration::from_millis(50);
        assert_eq!(frame_crosses(&mut a, &mut b, t3), b"a frame of media");
        frame_crosses(&mut a, &mut b, t3 + Duration::from_millis(20));
        assert_eq!(
            b.progress().opened_from.into_iter().collect::<Vec<_>>(),
            [("p-a2".to_string(), 2)]
        );
        assert_eq!(b.progress().reconnects, 1);

        // The new session ends at the call's end: `--duration` after the first media path.
        assert!(a.on_tick(t0 + Duration::from_millis(9_999)).is_empty());
        let out = a.on_tick(t0 + Duration::from_secs(10));
        assert!(closes(&out) && matches!(sends(&out)[..], [ClientMessage::Leave]));
        let sa = a.into_summary();
        let sb = b.into_summary();
        for s in [&sa, &sb] {
            assert_eq!(s.reconnects, 1);
            assert_eq!(s.codes, vec![old.clone(), new.clone()]);
            assert!(s.error.is_none(), "{:?}", s.error);
            assert_eq!(s.relay.as_deref(), Some("ws://b"));
            assert_eq!(s.earlier_sessions.len(), 1);
            assert_eq!(s.earlier_sessions[0].relay, "ws://a");
            assert_eq!(s.earlier_sessions[0].verification_code.as_ref(), Some(&old));
        }
        assert_eq!(sa.participant_ids, ["p-a", "p-a2"]);
        assert_eq!(sb.participant_ids, ["p-b", "p-b2"]);
        // Counters went on: three frames before, two after.
        assert_eq!(sb.frames_decrypted, 5);
        // Gaps per participant id: 20 and 60 ms under alice's first id; 20 under her second.
        assert_eq!(sb.max_gap_ms_from.get("p-a").copied(), Some(60.0));
        assert_eq!(sb.max_gap_ms_from.get("p-a2").copied(), Some(20.0));
        assert_eq!(sb.max_gap_ms_from.len(), 2);
    }

    #[test]
    fn a_refusal_while_rejoining_is_not_retried() {
        let t0 = Instant::now();
        let (mut a, _) = in_call(
            &two_relays("alice", E2eeScheme::X25519),
            1,
            t0,
            "p-a",
            CallMode::E2ee,
            Some(E2eeScheme::X25519),
            vec![],
        );
        let t1 = t0 + Duration::from_secs(1);
        reconnect_of(&a.on_signalling_closed(t1, "reset", None));
        let t2 = t1 + Duration::from_millis(100);
        a.rejoin(t2, local(3));
        let out = a.on_message(
            t2,
            ServerMessage::Error {
                code: ErrorCode::Unauthorized,
                message: "bad token".into(),
            },
        );
        assert!(
            matches!(out.last(), Some(Output::Fail(SessionError::Refused { code, .. })) if code == "unauthorized"),
            "{out:?}"
        );
        assert!(a.is_done() && !a.fails_over());
        assert_eq!(a.into_summary().reconnects, 0);
    }

    #[test]
    fn a_relay_that_cannot_take_the_call_or_cannot_be_reached_is_passed_over() {
        let t0 = Instant::now();
        let o = CallOptions {
            fallback_relays: vec!["ws://b".into(), "ws://c".into()],
            ..two_relays("alice", E2eeScheme::X25519)
        };
        let (mut a, _) = in_call(
            &o,
            1,
            t0,
            "p-a",
            CallMode::E2ee,
            Some(E2eeScheme::X25519),
            vec![],
        );
        let t1 = t0 + Duration::from_secs(1);
        // The relay closes with a reason that is no refusal of this client.
        let (relay, at) =
            reconnect_of(&a.on_signalling_closed(t1, "closed: shutdown", Some("shutdown")));
        assert_eq!(
            (relay.as_str(), at),
            ("ws://b", t1 + Duration::from_millis(100))
        );
        a.rejoin(at, local(2));
        // b is shutting down: c, after 200 ms.
        let out = a.on_message(
            at,
            ServerMessage::Error {
                code: ErrorCode::ShuttingDown,
                message: "relay is shutting down".into(),
            },
        );
        let (relay, at2) = reconnect_of(&out);
        assert_eq!(
            (relay.as_str(), at2),
            ("ws://c", at + Duration::from_millis(200))
        );
        // c cannot be reached: round to a, after 400 ms.
        let out = a.on_connection_failed(at2, "connection refused");
        let (relay, at3) = reconnect_of(&out);
        assert_eq!(
            (relay.as_str(), at3),
            ("ws://a", at2 + Duration::from_millis(400))
        );
        assert!(a.summary().error.is_none());
        assert_eq!(
            a.summary().earlier_sessions.len(),
            1,
            "only joined sessions are kept"
        );
    }

    #[test]
    fn a_removal_for_shutdown_fails_over_but_replaced_or_removed_does_not() {
        let t0 = Instant::now();
        let mk = || {
            in_call(
                &two_relays("alice", E2eeScheme::X25519),
                1,
                t0,
                "p-a",
                CallMode::E2ee,
                Some(E2eeScheme::X25519),
                vec![],
            )
            .0
        };
        let left = |reason: &str| ServerMessage::ParticipantLeft {
            participant: "p-a".into(),
            reason: reason.into(),
        };
        let t1 = t0 + Duration::from_secs(1);
        let mut a = mk();
        reconnect_of(&a.on_message(t1, left("shutdown")));
        let mut a = mk();
        let out = a.on_message(t1, left("replaced"));
        assert!(closes(&out), "{out:?}");
        assert_eq!(
            a.summary().error.as_ref().map(|e| e.code.as_str()),
            Some("replaced")
        );
        // The relay's close after a removal refuses this client.
        let mut a = mk();
        let out = a.on_signalling_closed(t1, "closed: removed", Some("removed"));
        assert!(closes(&out), "{out:?}");
        assert_eq!(
            a.summary().error.as_ref().map(|e| e.code.as_str()),
            Some("signalling_lost")
        );
    }

    #[test]
    fn the_call_end_while_rejoining_is_a_lost_call() {
        let t0 = Instant::now();
        let (mut a, _) = in_call(
            &two_relays("alice", E2eeScheme::X25519),
            1,
            t0,
            "p-a",
            CallMode::E2ee,
            Some(E2eeScheme::X25519),
            vec![],
        );
        let t1 = t0 + Duration::from_millis(9_500);
        let (_, at) = reconnect_of(&a.on_signalling_closed(t1, "reset", None));
        a.rejoin(at, local(2));
        // The relay never answers the hello; the call's end still comes.
        let end = t0 + Duration::from_secs(10);
        assert_eq!(a.next_deadline(), Some(end));
        let out = a.on_tick(end);
        assert!(closes(&out) && sends(&out).is_empty(), "{out:?}");
        let s = a.into_summary();
        assert_eq!(
            s.error.as_ref().map(|e| e.code.as_str()),
            Some("signalling_lost")
        );
        assert_eq!(s.reconnects, 0);
        // A loss too close to the end is not retried at all.
        let (mut b, _) = in_call(
            &two_relays("bob", E2eeScheme::X25519),
            2,
            t0,
            "p-b",
            CallMode::E2ee,
            Some(E2eeScheme::X25519),
            vec![],
        );
        let out = b.on_signalling_closed(t0 + Duration::from_millis(9_950), "reset", None);
        assert!(closes(&out), "{out:?}");
    }

    #[test]
    fn before_the_call_is_established_nothing_fails_over() {
        let t0 = Instant::now();
        let mut j = to_join(&two_relays("alice", E2eeScheme::X25519), 1, t0);
        assert!(!j.s.fails_over());
        let out = j.s.on_signalling_closed(t0, "gone", None);
        assert!(
            matches!(out.last(), Some(Output::Fail(SessionError::Signalling(_)))),
            "{out:?}"
        );
        assert_eq!(j.s.relay(), "ws://a");
        // With one relay there is nowhere to go, in the call or not: the driver fails as
        // it always did.
        let x = Some(E2eeScheme::X25519);
        let o = e2ee_opts("bob", E2eeScheme::X25519);
        let (one, _) = in_call(&o, 2, t0, "p-b", CallMode::E2ee, x, vec![]);
        assert!(!one.fails_over());
    }

    #[test]
    fn mls_a_rejoin_drops_the_group_and_joins_again_as_a_new_member() {
        let t0 = Instant::now();
        let mls = Some(E2eeScheme::Mls);
        let (mut a, _) = in_call(
            &two_relays("alice", E2eeScheme::Mls),
            1,
            t0,
            "p-a",
            CallMode::E2ee,
            mls,
            vec![],
        );
        // Alone, alice made the group and holds its keys.
        assert!(a.sealer().is_some());
        let t1 = t0 + Duration::from_secs(1);
        let (_, at) = reconnect_of(&a.on_signalling_closed(t1, "reset", None));
        assert!(a.sealer().is_none(), "the old group's keys are gone");
        // Bob is already on relay b: alice publishes a new KeyPackage and waits.
        let out = rejoin_as(
            &mut a,
            5,
            at,
            "p-a2",
            E2eeScheme::Mls,
            vec![info("p-b2", "bob")],
        );
        assert!(
            matches!(sends(&out)[..], [ClientMessage::MlsKeyPackage { .. }]),
            "{out:?}"
        );
        assert_eq!(media_modes(&out), vec![MediaMode::Hold]);
        assert!(a.sealer().is_none());
        assert_eq!(a.summary().epoch, None);
        assert_eq!(a.summary().reconnects, 1);
    }
}
