//! The relay's Prometheus metrics. Each relay owns its recorder (not the process-global
//! one) so several relays can share a process in tests, and hot-path handles are
//! registered once up front: a packet bumps an atomic, it never looks up a key.
//! Labels are bounded enums: never an SSRC, a call id or a user id.
//!
//! The core counts nothing itself: it returns drop reasons and [`Report`]s, and this
//! module turns them into the series dashboards and alert rules read.

pub use crate::core::budget::RateLimit;
pub use crate::core::report::{DropReason, MlsRefusal, Report};
use crate::core::report::{ProbeResult, Retransmit};
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Kinds of datagram on the media port, as labels (order = index).
pub const KINDS: [&str; 5] = ["stun", "dtls", "rtp", "rtcp", "unknown"];

pub fn kind_index(k: blindrelay_protocol::demux::PacketKind) -> usize {
    use blindrelay_protocol::demux::PacketKind::*;
    match k {
        Stun => 0,
        Dtls => 1,
        Rtp => 2,
        Rtcp => 3,
        Unknown => 4,
    }
}

/// Sub-millisecond buckets: a relay's forwarding time is tens of microseconds.
/// 0.75 ms sits between 0.5 and 1 ms so "p99 under 1 ms" can be read off the histogram.
const LATENCY_BUCKETS: [f64; 15] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25,
];
const LATENCY_HELP: &str = "Time from a packet's receipt to its send to the last receiver.";
const JOIN_BUCKETS: [f64; 12] = [
    0.001, 0.002_5, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

const M_PKT_IN: &str = "blindrelay_packets_received_total";
const M_BYTES_IN: &str = "blindrelay_bytes_received_total";
const M_PKT_FWD: &str = "blindrelay_packets_forwarded_total";
const M_BYTES_FWD: &str = "blindrelay_bytes_forwarded_total";
const M_DROPPED: &str = "blindrelay_packets_dropped_total";
const M_SRTP_AUTH: &str = "blindrelay_srtp_auth_failures_total";
const M_SRTP_REPLAY: &str = "blindrelay_srtp_replay_failures_total";
const M_DTLS: &str = "blindrelay_dtls_handshakes_total";
const M_DTLS_REPEATS: &str = "blindrelay_dtls_last_flight_repeats_total";
const M_LAYER_SWITCHES: &str = "blindrelay_layer_switches_total";
const M_ESTIMATE: &str = "blindrelay_receiver_estimate_bps";
const M_PAUSES: &str = "blindrelay_video_pauses_total";
const M_PAUSED: &str = "blindrelay_paused_tracks";
/// Receivers' downlink estimates span a phone on a poor cell to a desktop on fibre.
const ESTIMATE_BUCKETS: [f64; 12] = [
    100e3, 200e3, 300e3, 500e3, 750e3, 1e6, 1.5e6, 2.5e6, 5e6, 10e6, 25e6, 100e6,
];
const M_DTLS_TIME: &str = "blindrelay_dtls_handshake_duration_seconds";
const M_JOINS: &str = "blindrelay_joins_total";
const M_JOIN_TIME: &str = "blindrelay_join_duration_seconds";
const M_SIGNAL_ERR: &str = "blindrelay_signalling_errors_total";
const M_REMOVED: &str = "blindrelay_participants_removed_total";
const M_CALLS: &str = "blindrelay_calls";
const M_PARTICIPANTS: &str = "blindrelay_participants";
const M_CONNS: &str = "blindrelay_signalling_connections";
const M_CONNS_CLOSED: &str = "blindrelay_signalling_closed_total";
const M_CONNS_REFUSED: &str = "blindrelay_signalling_refused_total";
const M_LATENCY: &str = "blindrelay_forwarding_latency_seconds";
const M_STUN: &str = "blindrelay_stun_responses_total";
const M_ICE_MOVES: &str = "blindrelay_ice_nominated_moves_total";
const M_BACKLOG_COPIES: &str = "blindrelay_receive_backlog_copies_total";
const M_BOT_REFUSED: &str = "blindrelay_bot_refusals_total";
const M_FEATURE_REFUSED: &str = "blindrelay_features_refused_total";
const M_CAPTURE_PKTS: &str = "blindrelay_capture_packets_total";
const M_CAPTURE_DROPPED: &str = "blindrelay_capture_dropped_total";
const M_CAPTURE_STOPPED: &str = "blindrelay_capture_stopped_total";
const M_CAPTURE_ACTIVE: &str = "blindrelay_capture_active";
const M_POLICY_RELOADS: &str = "blindrelay_policy_reloads_total";
const M_MLS_REFUSED: &str = "blindrelay_mls_refused_total";
const M_RATE_LIMITED: &str = "blindrelay_rate_limited_total";
const M_RETRANSMITS: &str = "blindrelay_retransmissions_total";
const M_PROBES: &str = "blindrelay_bandwidth_probes_total";
const M_PADDING: &str = "blindrelay_probe_padding_packets_total";
const M_CLUSTER_LINKS: &str = "blindrelay_cluster_links";
const M_CLUSTER_RTT: &str = "blindrelay_cluster_link_rtt_seconds";
const M_CLUSTER_REFUSED: &str = "blindrelay_cluster_link_refused_total";
const M_CLUSTER_DIR_ERR: &str = "blindrelay_cluster_directory_errors_total";
const M_CLUSTER_POLICY: &str = "blindrelay_cluster_policy_propagation_seconds";
const M_CLUSTER_POLICY_VERSION: &str = "blindrelay_cluster_policy_version";
const M_CLUSTER_DATAGRAMS: &str = "blindrelay_cluster_link_datagrams_total";
const M_CLUSTER_MEDIA_DROPPED: &str = "blindrelay_cluster_link_media_dropped_total";
/// From a policy change's write to the directory to its application on a node: the
/// goal is under a second.
const POLICY_BUCKETS: [f64; 10] = [
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Pre-registered handles for everything the relay counts.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub received_packets: [Counter; 5],
    pub received_bytes: [Counter; 5],
    pub forwarded_packets_rtp: Counter,
    pub forwarded_packets_rtcp: Counter,
    pub forwarded_bytes_rtp: Counter,
    pub forwarded_bytes_rtcp: Counter,
    dropped: [Counter; DropReason::ALL.len()],
    mls_refused: [Counter; 8],
    rate_limited: [Counter; RateLimit::ALL.len()],
    retransmits: [Counter; Retransmit::ALL.len()],
    probes: [Counter; ProbeResult::ALL.len()],
    /// Padding packets the probes sent receivers.
    pub probe_padding: Counter,
    pub srtp_auth_failures: Counter,
    pub srtp_replay_failures: Counter,
    pub stun_responses: Counter,
    /// Participants moved to the address of a candidate pair their ICE agent nominated.
    pub ice_nominated_moves: Counter,
    /// Datagrams copied out of the receive loop's scratch buffer because a backlog held
    /// every pooled receive buffer ([`crate::net::udp::RecvBuffers`]).
    pub receive_backlog_copies: Counter,
    /// Recorded once per forwarded packet, so it is a fixed-bucket histogram of atomics
    /// rather than the exporter's (whose sample buffer allocates as samples arrive).
    pub forwarding_latency: LatencyHistogram,
    pub dtls_handshake_time: Histogram,
    /// The relay's last handshake flight sent again to a client that repeated its own.
    pub dtls_last_flight_repeats: Counter,
    /// Receivers moved from one simulcast layer to another.
    pub layer_switches: Counter,
    /// Receivers' downlink estimates, each time their layers are chosen.
    pub receiver_estimate: Histogram,
    /// Tracks paused for a receiver whose downlink has no room for them, ever and now.
    pub video_pauses: Counter,
    pub paused_tracks: Gauge,
    pub join_time: Histogram,
    /// Packets written to the capture file.
    pub capture_packets: Counter,
    /// Packets the capture dropped because its writer fell behind.
    pub capture_dropped: Counter,
    /// Captures stopped before the relay did (size cap or write error).
    pub capture_stopped: Counter,
    /// 1 while a capture is writing.
    pub capture_active: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn meta() -> Metadata<'static> {
    Metadata::new("blindrelay", metrics::Level::INFO, Some(module_path!()))
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(M_DTLS_TIME.into()), &JOIN_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(M_JOIN_TIME.into()), &JOIN_BUCKETS)
            })
            // Buckets are non-empty constants: set_buckets_for_metric only fails on empty.
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(M_CLUSTER_POLICY.into()), &POLICY_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(M_ESTIMATE.into()), &ESTIMATE_BUCKETS)
            })
            .unwrap_or_else(|_| unreachable!("bucket lists are non-empty"))
            .build_recorder();
        let handle = recorder.handle();
        let c = |name: &'static str, labels: Vec<Label>| {
            recorder.register_counter(&Key::from_parts(name, labels), &meta())
        };
        let h = |name: &'static str| recorder.register_histogram(&Key::from_name(name), &meta());
        let by_kind = |name: &'static str| KINDS.map(|k| c(name, vec![Label::new("kind", k)]));
        let m = Metrics {
            received_packets: by_kind(M_PKT_IN),
            received_bytes: by_kind(M_BYTES_IN),
            forwarded_packets_rtp: c(M_PKT_FWD, vec![Label::new("kind", "rtp")]),
            forwarded_packets_rtcp: c(M_PKT_FWD, vec![Label::new("kind", "rtcp")]),
            forwarded_bytes_rtp: c(M_BYTES_FWD, vec![Label::new("kind", "rtp")]),
            forwarded_bytes_rtcp: c(M_BYTES_FWD, vec![Label::new("kind", "rtcp")]),
            dropped: DropReason::ALL.map(|r| c(M_DROPPED, vec![Label::new("reason", r.as_str())])),
            mls_refused: MlsRefusal::ALL
                .map(|r| c(M_MLS_REFUSED, vec![Label::new("reason", r.as_str())])),
            rate_limited: RateLimit::ALL
                .map(|l| c(M_RATE_LIMITED, vec![Label::new("limit", l.as_str())])),
            retransmits: Retransmit::ALL
                .map(|k| c(M_RETRANSMITS, vec![Label::new("result", k.as_str())])),
            probes: ProbeResult::ALL.map(|k| c(M_PROBES, vec![Label::new("result", k.as_str())])),
            probe_padding: c(M_PADDING, vec![]),
            srtp_auth_failures: c(M_SRTP_AUTH, vec![]),
            srtp_replay_failures: c(M_SRTP_REPLAY, vec![]),
            stun_responses: c(M_STUN, vec![]),
            ice_nominated_moves: c(M_ICE_MOVES, vec![]),
            receive_backlog_copies: c(M_BACKLOG_COPIES, vec![]),
            forwarding_latency: LatencyHistogram::default(),
            dtls_handshake_time: h(M_DTLS_TIME),
            dtls_last_flight_repeats: c(M_DTLS_REPEATS, vec![]),
            layer_switches: c(M_LAYER_SWITCHES, vec![]),
            receiver_estimate: h(M_ESTIMATE),
            video_pauses: c(M_PAUSES, vec![]),
            paused_tracks: recorder.register_gauge(&Key::from_name(M_PAUSED), &meta()),
            join_time: h(M_JOIN_TIME),
            capture_packets: c(M_CAPTURE_PKTS, vec![]),
            capture_dropped: c(M_CAPTURE_DROPPED, vec![]),
            capture_stopped: c(M_CAPTURE_STOPPED, vec![]),
            capture_active: recorder.register_gauge(&Key::from_name(M_CAPTURE_ACTIVE), &meta()),
            recorder,
            handle,
        };
        m.describe();
        // Gauges exist from the start so dashboards see 0, not absence.
        for mode in ["e2ee", "standard"] {
            m.calls(mode).set(0.0);
        }
        for role in crate::token::ROLES {
            m.participants(role).set(0.0);
        }
        m.capture_active.set(0.0);
        m.paused_tracks.set(0.0);
        // Counters too: an alert on refusals sees 0 before the first one.
        for c in m
            .mls_refused
            .iter()
            .chain(&m.dropped)
            .chain(&m.probes)
            .chain([
                &m.ice_nominated_moves,
                &m.dtls_last_flight_repeats,
                &m.layer_switches,
                &m.video_pauses,
                &m.probe_padding,
            ])
        {
            c.increment(0);
        }
        m.signalling_connections().set(0.0);
        m
    }

    fn describe(&self) {
        let d = |name: &'static str, unit: Option<Unit>, text: &'static str| {
            self.recorder
                .describe_counter(name.into(), unit, text.into());
        };
        d(
            M_PKT_IN,
            None,
            "Datagrams received on the media port, by kind (RFC 7983).",
        );
        d(
            M_BYTES_IN,
            Some(Unit::Bytes),
            "Bytes received on the media port, by kind.",
        );
        d(
            M_PKT_FWD,
            None,
            "SRTP/SRTCP packets sent to receivers (one per receiver).",
        );
        d(
            M_BYTES_FWD,
            Some(Unit::Bytes),
            "Bytes of SRTP/SRTCP sent to receivers.",
        );
        d(M_DROPPED, None, "Datagrams dropped, by reason.");
        d(
            M_SRTP_AUTH,
            None,
            "SRTP/SRTCP packets whose authentication failed.",
        );
        d(
            M_SRTP_REPLAY,
            None,
            "SRTP/SRTCP packets refused as replays.",
        );
        d(M_DTLS, None, "DTLS handshakes, by result.");
        d(
            M_LAYER_SWITCHES,
            None,
            "Receivers moved from one simulcast layer of a track to another (at a key frame).",
        );
        d(
            M_PAUSES,
            None,
            "Video tracks paused for a receiver whose downlink estimate had no room for their lowest layer.",
        );
        self.recorder.describe_gauge(
            M_PAUSED.into(),
            None,
            "Video tracks paused now for want of their receiver's bandwidth.".into(),
        );
        self.recorder.describe_histogram(
            M_ESTIMATE.into(),
            None,
            "Receivers' downlink estimates in bits per second (from their transport-cc feedback), each time their layers are chosen.".into(),
        );
        d(
            M_DTLS_REPEATS,
            None,
            "The relay's last DTLS handshake flight sent again because the client repeated its own (the first was lost).",
        );
        d(
            M_JOINS,
            None,
            "Join requests, by result (ok or the error code).",
        );
        d(
            M_SIGNAL_ERR,
            None,
            "Signalling errors sent to clients, by code.",
        );
        d(M_REMOVED, None, "Participants removed, by reason.");
        d(
            M_CONNS_CLOSED,
            None,
            "Signalling connections closed, by reason (client, hello_timeout, header_timeout, slow_reader, write_timeout, removed, shutdown, read_error).",
        );
        d(
            M_CONNS_REFUSED,
            None,
            "Signalling connections refused at accept or at the WebSocket upgrade, by reason (too_many_connections, too_many_from_source, foreign_origin, shutting_down).",
        );
        self.recorder
            .describe_gauge(M_CONNS.into(), None, "Open signalling connections.".into());
        d(M_STUN, None, "STUN binding responses sent.");
        d(
            M_ICE_MOVES,
            None,
            "Participants moved to another address because their ICE agent nominated that candidate pair (USE-CANDIDATE) after a check on another had bound them.",
        );
        d(
            M_BACKLOG_COPIES,
            None,
            "Datagrams the receive loop copied because the forwarding loops' backlog held every pooled receive buffer: a sign the media path is falling behind.",
        );
        d(
            M_BOT_REFUSED,
            None,
            "Recording, captions and transcription bots refused from E2EE calls, by role.",
        );
        d(
            M_MLS_REFUSED,
            None,
            "MLS messages the relay (as Delivery Service) refused from a participant, by reason.",
        );
        d(
            M_RATE_LIMITED,
            None,
            "Messages refused with rate_limited, by the limit they went over (messages, broadcast_bytes).",
        );
        d(
            M_PROBES,
            None,
            "Bandwidth probes of receivers' paths (padding on an RTX stream at the rate a layer raise would add, before it), by result: started, carried (the estimate and the layer were raised), congested (no raise; raises held off).",
        );
        d(
            M_PADDING,
            None,
            "Padding packets sent to receivers by bandwidth probes.",
        );
        d(
            M_RETRANSMITS,
            None,
            "Packets receivers' NACKs asked for and the relay's own asking, by result: sent (from the packet cache), unavailable (cached, but the receiver takes no RTX), limited (over the receiver's retransmission budget), asked (of the sender), recovered (came back on a sender's RTX stream and was forwarded).",
        );
        d(
            M_POLICY_RELOADS,
            None,
            "Policy file reloads (file watcher, SIGHUP, admin API), by result (ok, rejected).",
        );
        d(
            M_CAPTURE_PKTS,
            None,
            "RTP packets written to the capture file.",
        );
        d(
            M_CAPTURE_DROPPED,
            None,
            "RTP packets the capture dropped because its writer fell behind.",
        );
        d(
            M_CAPTURE_STOPPED,
            None,
            "Captures stopped early (size cap reached or write error).",
        );
        self.recorder.describe_gauge(
            M_CAPTURE_ACTIVE.into(),
            None,
            "1 while a pcap capture is being written.".into(),
        );
        self.recorder
            .describe_gauge(M_CALLS.into(), None, "Calls in progress, by mode.".into());
        self.recorder.describe_gauge(
            M_PARTICIPANTS.into(),
            None,
            "Participants in calls, by role.".into(),
        );
        self.recorder.describe_histogram(
            M_DTLS_TIME.into(),
            Some(Unit::Seconds),
            "DTLS handshake duration on the relay.".into(),
        );
        self.recorder.describe_histogram(
            M_JOIN_TIME.into(),
            Some(Unit::Seconds),
            "Time from a join request to the participant's media path being keyed.".into(),
        );
    }

    /// Count one dropped datagram.
    #[inline]
    pub fn dropped(&self, reason: DropReason) {
        self.dropped_n(reason, 1);
    }

    /// Count `n` datagrams dropped for one reason.
    pub fn dropped_n(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].increment(n);
    }

    /// Count one MLS message refused by the Delivery Service.
    pub fn mls_refused(&self, reason: MlsRefusal) {
        self.mls_refused[reason as usize].increment(1);
    }

    /// Count `n` bandwidth probes that came to `result`.
    pub fn probes(&self, result: ProbeResult, n: u64) {
        self.probes[result as usize].increment(n);
    }

    /// Count `n` retransmission outcomes of one kind.
    pub fn retransmits(&self, kind: Retransmit, n: u64) {
        self.retransmits[kind as usize].increment(n);
    }

    /// Count one message refused with `rate_limited`.
    pub fn rate_limited(&self, limit: RateLimit) {
        self.rate_limited[limit as usize].increment(1);
    }

    /// The count of `rate_limited` refusals for one limit so far, as scraped.
    #[cfg(test)]
    pub(crate) fn rate_limited_count(&self, limit: RateLimit) -> u64 {
        let name = format!("{M_RATE_LIMITED}{{limit=\"{}\"}} ", limit.as_str());
        self.render()
            .lines()
            .find_map(|l| l.strip_prefix(&name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// Count what the control plane reported.
    pub fn record(&self, r: &Report) {
        match *r {
            Report::SignallingError(code) => self.signalling_error(code.as_str()).increment(1),
            Report::Joined => self.join("ok").increment(1),
            Report::JoinRefused(code) => self.join(code.as_str()).increment(1),
            Report::JoinTime(d) => self.join_time.record(d.as_secs_f64()),
            Report::BotRefused(role) => self.bot_refused(role).increment(1),
            Report::FeatureRefused(feature) => self.feature_refused(feature).increment(1),
            Report::Removed(reason) => self.removed(reason.as_str()).increment(1),
            Report::MlsRefused(reason) => self.mls_refused(reason),
            Report::RateLimited(limit) => self.rate_limited(limit),
            Report::Calls(mode, by) => self.calls(mode.as_str()).increment(f64::from(by)),
            Report::Participants(role, by) => self.participants(role).increment(f64::from(by)),
        }
    }

    /// The count of MLS refusals for one reason so far, as scraped.
    #[cfg(test)]
    pub(crate) fn mls_refused_count(&self, reason: MlsRefusal) -> u64 {
        let name = format!("{M_MLS_REFUSED}{{reason=\"{}\"}} ", reason.as_str());
        self.render()
            .lines()
            .find_map(|l| l.strip_prefix(&name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    pub fn dtls_handshake(&self, result: &'static str) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(M_DTLS, vec![Label::new("result", result)]),
            &meta(),
        )
    }
    pub fn join(&self, result: &'static str) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(M_JOINS, vec![Label::new("result", result)]),
            &meta(),
        )
    }
    pub fn signalling_error(&self, code: &'static str) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(M_SIGNAL_ERR, vec![Label::new("code", code)]),
            &meta(),
        )
    }
    /// Call features refused on E2EE calls, by feature.
    pub fn feature_refused(&self, feature: &'static str) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(M_FEATURE_REFUSED, vec![Label::new("feature", feature)]),
            &meta(),
        )
    }
    /// Bots refused from E2EE calls, by bot role.
    pub fn bot_refused(&self, role: &'static str) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(M_BOT_REFUSED, vec![Label::new("role", role)]),
            &meta(),
        )
    }
    pub fn removed(&self, reason: &'static str) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(M_REMOVED, vec![Label::new("reason", reason)]),
            &meta(),
        )
    }
    pub fn calls(&self, mode: &'static str) -> Gauge {
        self.recorder.register_gauge(
            &Key::from_parts(M_CALLS, vec![Label::new("mode", mode)]),
            &meta(),
        )
    }
    pub fn participants(&self, role: &'static str) -> Gauge {
        self.recorder.register_gauge(
            &Key::from_parts(M_PARTICIPANTS, vec![Label::new("role", role)]),
            &meta(),
        )
    }

    /// Policy file reloads, by result (`ok`, `rejected`).
    pub fn policy_reload(&self, result: &'static str) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(M_POLICY_RELOADS, vec![Label::new("result", result)]),
            &meta(),
        )
    }

    /// Open signalling connections (TCP accepted, not yet closed).
    pub fn signalling_connections(&self) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_name(M_CONNS), &meta())
    }
    /// Signalling connections closed, by reason (see `CloseReason`).
    pub fn signalling_closed(&self, reason: &'static str) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(M_CONNS_CLOSED, vec![Label::new("reason", reason)]),
            &meta(),
        )
    }
    /// Signalling connections refused at accept or at the upgrade, by reason.
    pub fn signalling_refused(&self, reason: &'static str) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(M_CONNS_REFUSED, vec![Label::new("reason", reason)]),
            &meta(),
        )
    }

    /// Cluster metrics, registered when the relay runs as a node: a lone relay shows none.
    pub fn cluster_started(&self) {
        let g = |name: &'static str, text: &'static str| {
            self.recorder.describe_gauge(name.into(), None, text.into());
        };
        g(
            M_CLUSTER_LINKS,
            "Node links up (QUIC, to other relay nodes).",
        );
        g(
            M_CLUSTER_RTT,
            "Round-trip time of each node link, by peer node id (QUIC's estimate).",
        );
        g(
            M_CLUSTER_POLICY_VERSION,
            "Version of the shared policy store this node applies.",
        );
        self.recorder.describe_counter(
            M_CLUSTER_REFUSED.into(),
            None,
            "QUIC peers refused as node links, by reason (no_certificate, bad_certificate, wrong_node, bad_hello, handshake).".into(),
        );
        self.recorder.describe_counter(
            M_CLUSTER_DIR_ERR.into(),
            None,
            "Failed directory (Redis) operations, by operation.".into(),
        );
        self.recorder.describe_histogram(
            M_CLUSTER_POLICY.into(),
            Some(Unit::Seconds),
            "Time from a policy change's write to the directory to this node applying it.".into(),
        );
        self.recorder.describe_counter(
            M_CLUSTER_DATAGRAMS.into(),
            None,
            "Media datagrams (RTP over QUIC) on node links, by peer node and direction (sent, received).".into(),
        );
        self.recorder.describe_counter(
            M_CLUSTER_MEDIA_DROPPED.into(),
            None,
            "Media datagrams on node links dropped, by reason (malformed, no_receiver, too_large, link_down).".into(),
        );
        for d in crate::cluster::link::MediaDrop::ALL {
            self.cluster_media_dropped(d).increment(0);
        }
        self.cluster_links().set(0.0);
        for r in crate::cluster::link::Refusal::ALL {
            self.cluster_link_refused(r).increment(0);
        }
        for op in crate::cluster::directory::OPS {
            self.cluster_directory_error(op).increment(0);
        }
    }
    pub fn cluster_links(&self) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_name(M_CLUSTER_LINKS), &meta())
    }
    /// A link's RTT. Node ids are labels: the operator names them, and only nodes with a
    /// certificate from the cluster CA can link.
    pub fn cluster_link_rtt(&self, peer: &str) -> Gauge {
        self.recorder.register_gauge(
            &Key::from_parts(
                M_CLUSTER_RTT,
                vec![Label::new("peer_node", peer.to_string())],
            ),
            &meta(),
        )
    }
    pub fn cluster_link_datagrams(&self, peer: &str, direction: &'static str) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(
                M_CLUSTER_DATAGRAMS,
                vec![
                    Label::new("peer_node", peer.to_string()),
                    Label::new("direction", direction),
                ],
            ),
            &meta(),
        )
    }
    pub fn cluster_media_dropped(&self, why: crate::cluster::link::MediaDrop) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(
                M_CLUSTER_MEDIA_DROPPED,
                vec![Label::new("reason", why.as_str())],
            ),
            &meta(),
        )
    }
    pub fn cluster_link_refused(&self, r: crate::cluster::link::Refusal) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(M_CLUSTER_REFUSED, vec![Label::new("reason", r.as_str())]),
            &meta(),
        )
    }
    pub fn cluster_directory_error(&self, op: &'static str) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(M_CLUSTER_DIR_ERR, vec![Label::new("op", op)]),
            &meta(),
        )
    }
    pub fn cluster_policy_propagation(&self) -> Histogram {
        self.recorder
            .register_histogram(&Key::from_name(M_CLUSTER_POLICY), &meta())
    }
    pub fn cluster_policy_version(&self) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_name(M_CLUSTER_POLICY_VERSION), &meta())
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        self.forwarding_latency
            .render(M_LATENCY, LATENCY_HELP, &mut text);
        text
    }
}

/// A Prometheus histogram over [`LATENCY_BUCKETS`] whose recording is a few relaxed atomic
/// adds: no allocation, no lock, so the forwarding loops can record every packet.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per-bucket (not cumulative) counts; the last slot is above the largest bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of the samples, in nanoseconds (exact, unlike an f64 accumulated atomically).
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        // Same rule as the exporter's histogram: a sample counts in every bucket whose
        // bound it does not exceed; here it is stored once, in the first such bucket.
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Append `name` in the text exposition format, as the exporter writes histograms:
    /// HELP and TYPE lines, cumulative `_bucket{le=...}` lines ending with `+Inf`, `_sum`
    /// and `_count`, then a blank line. `+Inf` and `_count` come from the same snapshot,
    /// so they always agree.
    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
        out.push('\n');
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::report::RemovalReason;
    use blindrelay_protocol::signal::{CallMode, ErrorCode};

    /// Every MLS refusal reason has a series from the start, so an alert sees 0.
    #[test]
    fn every_mls_refusal_has_a_series_from_the_start() {
        let text = Metrics::new().render();
        for r in MlsRefusal::ALL {
            let series = format!("{M_MLS_REFUSED}{{reason=\"{}\"}} 0", r.as_str());
            assert!(text.contains(&series), "{series}");
        }
    }

    /// The plane's reports land in the series they always did, under the same labels.
    #[test]
    fn reports_are_counted_under_the_old_names_and_labels() {
        let m = Metrics::new();
        for r in [
            Report::JoinRefused(ErrorCode::SsrcInUse),
            Report::Joined,
            Report::Joined,
            Report::SignallingError(ErrorCode::BadRequest),
            Report::Removed(RemovalReason::ConsentTimeout),
            Report::MlsRefused(MlsRefusal::BadCommit),
            Report::MlsRefused(MlsRefusal::BadCommit),
            Report::RateLimited(RateLimit::BroadcastBytes),
            Report::Calls(CallMode::E2ee, 1),
            Report::Calls(CallMode::E2ee, 1),
            Report::Calls(CallMode::E2ee, -1),
            Report::Participants("user", 1),
            Report::BotRefused("bot:recording"),
            Report::FeatureRefused("park"),
            Report::JoinTime(Duration::from_millis(30)),
        ] {
            m.record(&r);
        }
        let text = m.render();
        for line in [
            "blindrelay_joins_total{result=\"ssrc_in_use\"} 1",
            "blindrelay_joins_total{result=\"ok\"} 2",
            "blindrelay_signalling_errors_total{code=\"bad_request\"} 1",
            "blindrelay_participants_removed_total{reason=\"consent_timeout\"} 1",
            "blindrelay_calls{mode=\"e2ee\"} 1",
            "blindrelay_calls{mode=\"standard\"} 0",
            "blindrelay_participants{role=\"user\"} 1",
            "blindrelay_bot_refusals_total{role=\"bot:recording\"} 1",
            "blindrelay_features_refused_total{feature=\"park\"} 1",
            "blindrelay_join_duration_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert_eq!(m.mls_refused_count(MlsRefusal::BadCommit), 2);
        assert_eq!(m.rate_limited_count(RateLimit::BroadcastBytes), 1);
        assert_eq!(m.rate_limited_count(RateLimit::Messages), 0);
    }

    /// The hand-written histogram reads like the exporter's: one family, cumulative
    /// buckets with the configured bounds, `+Inf` equal to the count.
    #[test]
    fn forwarding_latency_renders_as_a_prometheus_histogram() {
        let m = Metrics::new();
        m.forwarding_latency.record(Duration::from_micros(20));
        m.forwarding_latency.record(Duration::from_micros(20));
        m.forwarding_latency.record(Duration::from_millis(3));
        m.forwarding_latency.record(Duration::from_secs(1));
        let text = m.render();
        assert_eq!(
            text.matches(&format!("# TYPE {M_LATENCY} histogram"))
                .count(),
            1
        );
        assert!(text.contains(&format!("# HELP {M_LATENCY} {LATENCY_HELP}")));
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        let sample = |name: String| {
            let s = scrape.samples.iter().find(|s| s.metric == name).unwrap();
            match &s.value {
                prometheus_parse::Value::Untyped(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v) => *v,
                other => panic!("{name}: unexpected {other:?}"),
            }
        };
        let count = sample(format!("{M_LATENCY}_count"));
        assert_eq!(count, 4.0);
        let sum = sample(format!("{M_LATENCY}_sum"));
        assert!((sum - 1.00304).abs() < 1e-9, "{sum}");
        let hist = scrape
            .samples
            .iter()
            .find(|s| s.metric == M_LATENCY)
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(h) => h.clone(),
                other => panic!("not a histogram: {other:?}"),
            })
            .unwrap();
        let at = |le: f64| hist.iter().find(|c| c.less_than == le).unwrap().count;
        assert_eq!(hist.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(at(0.000_01), 0.0);
        assert_eq!(at(0.000_025), 2.0);
        assert_eq!(at(0.002_5), 2.0);
        assert_eq!(at(0.005), 3.0);
        assert_eq!(at(0.25), 3.0);
        assert_eq!(at(f64::INFINITY), 4.0);
    }
}
