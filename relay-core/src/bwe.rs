//! Each receiver's downlink, estimated from its own transport-cc feedback.
//!
//! The relay numbers every RTP packet it sends a receiver in a transport-wide sequence
//! of that receiver's own (a header extension of its hop, outside the end-to-end
//! encrypted payload), remembers when it sent each and how big it was, and reads the
//! receiver's feedback saying when each arrived. Two signals lower the estimate, as in
//! libwebrtc's GCC: a queue building on the path (one-way delay high above its recent
//! minimum and still rising, or high with loss) and loss. A delay that stands still
//! with nothing lost is a busy receiver or a longer route, not a path that cannot
//! keep up: the path is carrying all that is sent. Without either, the estimate grows by 8 % a second, up to half
//! again what the path was seen to carry.
//!
//! The estimate starts high and comes down at the first congestion. Beyond what is sent,
//! the path is measured by probes ([`DownlinkBwe::start_probe`]): the layer allocator
//! ([`crate::forward`]) pads a receiver's path before it raises a layer, and backs off
//! from raises whose probe congested the path.

use blindrelay_protocol::twcc::{self, FeedbackError};
use std::time::{Duration, Instant};

/// Packets remembered until the receiver reports them: about 2 s of a receiver taking
/// 3 Mbit/s. A report about an older one is ignored.
pub const HISTORY: usize = 2048;
/// Where the estimate starts, before any feedback lowers it: two top layers and audio.
pub const START_BPS: u64 = 5_000_000;
/// The lowest estimate: audio for a few participants always fits.
pub const MIN_BPS: u64 = 100_000;
/// The highest: beyond what any call here sends one receiver.
pub const MAX_BPS: u64 = 100_000_000;
/// A queue this long (smoothed one-way delay above its recent minimum), held for
/// [`OVERUSE_HOLD`], is congestion. A jitter spike of a busy machine is shorter.
/// A key frame's burst on a narrow path queues for a few hundred milliseconds and then
/// drains; a sender above the path's rate keeps the queue (and then loss) growing.
const OVERUSE_DELAY_US: i64 = 60_000;
const OVERUSE_HOLD: Duration = Duration::from_millis(300);
/// Over that hold the delay must also be growing at least this fast (µs of delay per µs
/// sent: the path carrying under 95 % of what is sent), or come with loss. A standing
/// delay was the cause of false decreases here: Chromium receivers on a busy 2-core
/// machine stamp arrivals 60-100 ms late for seconds at a time, which took estimates
/// from 5 Mbit/s to under 250 kbit/s at call start (session 19's traced web test).
const OVERUSE_SLOPE: f64 = 0.05;
/// Fewest delays, and shortest span of send times, a slope is read from.
const TREND_MIN_POINTS: f64 = 10.0;
const TREND_MIN_SPAN_US: f64 = 100_000.0;
/// Below this queue the path is clear and the estimate may grow.
const CLEAR_DELAY_US: i64 = 20_000;
/// Loss over a window above this lowers the estimate; below [`LOSS_CLEAR`] it may grow.
const LOSS_CONGESTED: f64 = 0.10;
const LOSS_CLEAR: f64 = 0.02;
/// Beyond half again the acknowledged rate, this much more lets a clear path's estimate
/// grow (see [`DownlinkBwe::on_feedback`]).
const GROWTH_HEADROOM_BPS: u64 = 10_000;
/// The window the acknowledged rate and the loss are measured over.
const WINDOW: Duration = Duration::from_millis(500);
/// The one-way delay's minimum is taken over about this long (two buckets), so a route
/// change or clock drift is forgotten.
const MIN_DELAY_SPAN: Duration = Duration::from_secs(10);
/// Feedback absent this long means nothing is being sent (see [`DownlinkBwe::on_idle`]).
const IDLE_AFTER: Duration = Duration::from_secs(1);
/// Windows whose acknowledged rate a decrease starts from (the most of them): 2 s.
const ACKED_WINDOWS: usize = 4;
/// Between two decreases at least this long: one congestion episode lowers it once.
const DECREASE_INTERVAL: Duration = Duration::from_millis(500);

/// One packet sent and not yet reported.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    /// Its transport-wide sequence number, unwrapped (0: the slot is empty).
    seq: u64,
    at_us: i64,
    size: u16,
}

/// What the path is doing, from the last feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Congested,
    Hold,
    Clear,
}

/// One receiver's downlink estimate.
pub struct DownlinkBwe {
    /// The next transport-wide sequence number (unwrapped; starts at 1).
    next: u64,
    sent: Box<[Sent]>,
    estimate: u64,
    /// Whether any feedback came: until then the estimate limits nothing (a receiver that
    /// never reports is not held to a guess).
    informed: bool,
    /// The minimum one-way delay (µs, receiver clock minus ours) in the current and the
    /// previous bucket, and when the current one began.
    min_delay: [Option<i64>; 2],
    min_since: Option<Instant>,
    /// Smoothed queueing delay (µs).
    queue_us: i64,
    /// The delays since the queue last rose past [`OVERUSE_DELAY_US`].
    trend: Trend,
    over_since: Option<Instant>,
    /// The current window: when it began, bytes acknowledged, packets received and lost.
    /// The acknowledged rate is over the receiver's arrival times (the first and last in
    /// the window), not over when feedback came: feedback held in a queue would
    /// otherwise make a window's rate look a fraction of the path's.
    win_at: Option<Instant>,
    win_arrived: Span,
    win_recv: u32,
    win_lost: u32,
    /// The last full window's acknowledged rate and loss fraction, and the last
    /// [`ACKED_WINDOWS`] windows' rates.
    acked_bps: u64,
    acked_recent: [u64; ACKED_WINDOWS],
    loss: f64,
    last_decrease: Option<Instant>,
    last_update: Option<Instant>,
    /// Since when the path has shown neither a queue nor loss.
    clear_since: Option<Instant>,
    /// Since when it has not been congested (a queue that stands, with nothing lost, is
    /// not clear but not congested either).
    calm_since: Option<Instant>,
    /// Decreases so far, ever.
    pub decreases: u64,
    /// A probe under way (see [`DownlinkBwe::start_probe`]).
    probe: Option<ProbeWindow>,
}

/// What was sent from a probe's start on, and what of it arrived: both as rates over
/// their own spans, as libwebrtc's probe estimator measures a cluster.
#[derive(Debug, Clone, Copy, Default)]
struct ProbeWindow {
    from: u64,
    sent: Span,
    arrived: Span,
}

/// Bytes over a span of microseconds. The first packet only marks the span's start: the
/// bytes after it took the span.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    first_us: Option<i64>,
    last_us: i64,
    bytes: u64,
}

impl Span {
    fn add(&mut self, at_us: i64, size: u16) {
        if self.first_us.is_none() {
            self.first_us = Some(at_us);
        } else {
            self.bytes += u64::from(size);
        }
        self.last_us = self.last_us.max(at_us);
    }

    /// Bits per second over the span (0 for no span).
    fn bps(&self) -> u64 {
        match self.first_us.map(|f| self.last_us.saturating_sub(f)) {
            Some(us) if us > 0 => self.bytes * 8 * 1_000_000 / us as u64,
            _ => 0,
        }
    }
}

/// A least-squares line through (send time, one-way delay) points, as libwebrtc's
/// trendline estimator fits: its slope tells a queue that grows (the path carries less
/// than is sent) from one that stands. Offsets from the first point keep the sums
/// precise (the receiver's clock is anywhere).
#[derive(Debug, Clone, Copy, Default)]
struct Trend {
    origin: Option<(i64, i64)>,
    n: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
    max_x: f64,
}

impl Trend {
    fn add(&mut self, sent_us: i64, delay_us: i64) {
        let (x0, y0) = *self.origin.get_or_insert((sent_us, delay_us));
        let (x, y) = ((sent_us - x0) as f64, (delay_us - y0) as f64);
        self.n += 1.0;
        self.sx += x;
        self.sy += y;
        self.sxx += x * x;
        self.sxy += x * y;
        self.max_x = self.max_x.max(x);
    }

    /// Delay gained per unit of send time, once there are enough points over enough
    /// time to say.
    fn slope(&self) -> Option<f64> {
        let den = self.n * self.sxx - self.sx * self.sx;
        (self.n >= TREND_MIN_POINTS && self.max_x >= TREND_MIN_SPAN_US && den > 0.0)
            .then(|| (self.n * self.sxy - self.sx * self.sy) / den)
    }
}

/// A probe's outcome so far: the rates it was sent at and arrived at (bits per second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeRates {
    pub sent_bps: u64,
    pub received_bps: u64,
}

impl Default for DownlinkBwe {
    fn default() -> Self {
        Self::new()
    }
}

impl DownlinkBwe {
    pub fn new() -> Self {
        DownlinkBwe {
            next: 1,
            sent: vec![Sent::default(); HISTORY].into_boxed_slice(),
            estimate: START_BPS,
            informed: false,
            min_delay: [None; 2],
            min_since: None,
            queue_us: 0,
            trend: Trend::default(),
            over_since: None,
            win_at: None,
            win_arrived: Span::default(),
            win_recv: 0,
            win_lost: 0,
            acked_bps: 0,
            acked_recent: [0; ACKED_WINDOWS],
            loss: 0.0,
            last_decrease: None,
            last_update: None,
            clear_since: None,
            calm_since: None,
            decreases: 0,
            probe: None,
        }
    }

    /// Measure what is sent from now on, and what of it arrives, apart from the
    /// estimate's windows (which do not line up with a probe).
    pub fn start_probe(&mut self) {
        self.probe = Some(ProbeWindow {
            from: self.next,
            ..ProbeWindow::default()
        });
    }

    /// The rates since [`DownlinkBwe::start_probe`]; `None` with no probe, or before its
    /// first two packets are reported.
    pub fn probe_rates(&self) -> Option<ProbeRates> {
        let p = self.probe?;
        let received_bps = p.arrived.bps();
        (received_bps > 0).then(|| ProbeRates {
            sent_bps: p.sent.bps(),
            received_bps,
        })
    }

    pub fn end_probe(&mut self) {
        self.probe = None;
    }

    /// The sequence number the next packet sent carries.
    pub fn next_seq(&self) -> u16 {
        self.next as u16
    }

    /// The packet numbered [`DownlinkBwe::next_seq`] left at `at_us` (our clock), `size`
    /// bytes on the wire.
    pub fn on_sent(&mut self, at_us: i64, size: usize) {
        let size = size.min(usize::from(u16::MAX)) as u16;
        if let Some(p) = self.probe.as_mut() {
            p.sent.add(at_us, size);
        }
        self.sent[self.next as usize % HISTORY] = Sent {
            seq: self.next,
            at_us,
            size,
        };
        self.next += 1;
    }

    /// The estimate in bits per second, or `None` before any feedback.
    pub fn estimate(&self) -> Option<u64> {
        self.informed.then_some(self.estimate)
    }

    /// The acknowledged rate over the last window (bits per second).
    pub fn acked_bps(&self) -> u64 {
        self.acked_bps
    }

    /// Read one transport-cc feedback packet from the receiver, at `now`.
    pub fn on_feedback(&mut self, p: &[u8], now: Instant) -> Result<Signal, FeedbackError> {
        let newest = self.next - 1;
        let mut delay_sum = 0i64;
        let mut delays = 0i64;
        let (sent, min_delay, win_arrived, win_recv, win_lost, probe, trend) = (
            &self.sent,
            &mut self.min_delay,
            &mut self.win_arrived,
            &mut self.win_recv,
            &mut self.win_lost,
            &mut self.probe,
            &mut self.trend,
        );
        let r = twcc::read_feedback(p, |seq, arrival| {
            // The unwrapped number: the newest sent at or before it, by 16-bit distance.
            let back = u64::from((newest as u16).wrapping_sub(seq));
            let Some(s) = newest.checked_sub(back).filter(|s| *s > 0) else {
                return;
            };
            let slot = sent[s as usize % HISTORY];
            if slot.seq != s {
                return;
            }
            match arrival {
                Some(at) => {
                    if let Some(p) = probe.as_mut().filter(|p| s >= p.from) {
                        p.arrived.add(at, slot.size);
                    }
                    *win_recv += 1;
                    win_arrived.add(at, slot.size);
                    let d = at - slot.at_us;
                    delay_sum += d;
                    delays += 1;
                    trend.add(slot.at_us, d);
                    for m in min_delay.iter_mut() {
                        *m = Some(m.map_or(d, |m| m.min(d)));
                    }
                }
                None => *win_lost += 1,
            }
        });
        self.informed = true;
        // Age the minimum: a new bucket every half span; the older one is forgotten.
        if self
            .min_since
            .is_none_or(|t| now.saturating_duration_since(t) >= MIN_DELAY_SPAN / 2)
        {
            self.min_delay = [self.min_delay[1], None];
            self.min_since = Some(now);
        }
        if delays > 0 {
            let base = self.min_delay[0]
                .into_iter()
                .chain(self.min_delay[1])
                .min()
                .unwrap_or(0);
            let q = (delay_sum / delays - base).max(0);
            self.queue_us = (self.queue_us * 7 + q * 3) / 10;
            if self.queue_us <= OVERUSE_DELAY_US {
                // The trend is of a high queue only: it starts with the feedback that
                // took the queue past the mark.
                self.trend = Trend::default();
            }
        }
        let win_at = *self.win_at.get_or_insert(now);
        let span = now.saturating_duration_since(win_at);
        if span >= WINDOW {
            let arrived = self.win_arrived.bps();
            if arrived > 0 {
                self.acked_bps = arrived;
                self.acked_recent.rotate_right(1);
                self.acked_recent[0] = arrived;
            }
            self.loss = self.window_loss();
            self.win_at = Some(now);
            self.win_arrived = Span::default();
            self.win_recv = 0;
            self.win_lost = 0;
        }
        let signal = self.control(now);
        r.map(|()| signal)
    }

    /// The window under way's loss fraction; 0 until 20 packets are accounted for, as
    /// one loss in a handful is noise, not a full buffer.
    fn window_loss(&self) -> f64 {
        let seen = self.win_lost + self.win_recv;
        if seen >= 20 {
            f64::from(self.win_lost) / f64::from(seen)
        } else {
            0.0
        }
    }

    /// Apply the signals to the estimate.
    fn control(&mut self, now: Instant) -> Signal {
        let delayed = if self.queue_us > OVERUSE_DELAY_US {
            let since = *self.over_since.get_or_insert(now);
            let rising = self.trend.slope().is_some_and(|s| s >= OVERUSE_SLOPE);
            // Loss in the window under way, or the last one: a queue standing at a full
            // buffer drops what it has no room for.
            let lost = self.window_loss() > LOSS_CLEAR;
            now.saturating_duration_since(since) >= OVERUSE_HOLD
                && (rising || lost || self.loss > LOSS_CLEAR)
        } else {
            self.over_since = None;
            false
        };
        let dt = self
            .last_update
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
            .min(WINDOW);
        self.last_update = Some(now);
        if delayed || self.loss > LOSS_CONGESTED {
            let due = self
                .last_decrease
                .is_none_or(|t| now.saturating_duration_since(t) >= DECREASE_INTERVAL);
            if due {
                // What got through, not the estimate: congestion that lasts while the
                // allocator moves settles it near the path's rate, not below. The most
                // of the last few windows: one window right after a burst, or half idle,
                // says little of what the path carries.
                let most = self.acked_recent.iter().copied().max().unwrap_or(0);
                let from = if most > 0 { most } else { self.estimate };
                tracing::debug!(
                    queue_us = self.queue_us,
                    slope = ?self.trend.slope(),
                    loss = self.loss,
                    window_lost = self.win_lost,
                    window_received = self.win_recv,
                    from,
                    to = (from * 85 / 100).max(MIN_BPS),
                    "estimate decreased"
                );
                self.estimate = (from * 85 / 100).max(MIN_BPS);
                self.last_decrease = Some(now);
                self.decreases += 1;
                // The loss that caused it is not counted again.
                self.loss = 0.0;
            }
            self.clear_since = None;
            self.calm_since = None;
            return Signal::Congested;
        }
        self.calm_since.get_or_insert(now);
        if self.queue_us < CLEAR_DELAY_US && self.loss < LOSS_CLEAR {
            // Not past half again what the path was seen to carry (libwebrtc's AIMD
            // does the same): a receiver sent little proves little, and more than that
            // is found by a probe.
            let seen = self.acked_recent.iter().copied().max().unwrap_or(0);
            let ceiling = seen * 3 / 2 + GROWTH_HEADROOM_BPS;
            let grow = self.estimate as f64 * 0.08 * dt.as_secs_f64();
            if self.estimate < ceiling {
                self.estimate = (self.estimate + grow as u64).min(ceiling).min(MAX_BPS);
            }
            self.clear_since.get_or_insert(now);
            return Signal::Clear;
        }
        self.clear_since = None;
        Signal::Hold
    }

    /// No feedback for [`IDLE_AFTER`]: nothing is being sent that could show congestion
    /// (every track paused, no audio), so the estimate grows as on a clear path, or
    /// paused video would never be tried again.
    pub fn on_idle(&mut self, now: Instant) {
        if let Some(t) = self.last_update {
            let dt = now.saturating_duration_since(t);
            if dt >= IDLE_AFTER {
                let grow = self.estimate as f64 * 0.08 * dt.as_secs_f64();
                self.estimate = (self.estimate + grow as u64).min(MAX_BPS);
                self.last_update = Some(now);
                self.clear_since.get_or_insert(t);
                self.calm_since.get_or_insert(t);
            }
        }
    }

    /// How long the path has been clear (no queue, no loss) at `now`.
    pub fn clear_for(&self, now: Instant) -> Duration {
        self.clear_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// How long the path has not been congested at `now`: a standing queue with nothing
    /// lost counts, as it does not for [`DownlinkBwe::clear_for`].
    pub fn calm_for(&self, now: Instant) -> Duration {
        self.calm_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// What a probe proved, or a raise made with no probe (a receiver with no RTX stream
    /// to pad): the estimate stands at that until feedback says otherwise.
    pub fn raise_to(&mut self, bps: u64) {
        self.estimate = self.estimate.max(bps.min(MAX_BPS));
    }

    /// Bring the estimate down to `bps` at `now`, as a decrease does: for tests of what
    /// the allocator does after one (below [`MIN_BPS`], it stands for what audio leaves).
    #[cfg(test)]
    pub(crate) fn fall_to(&mut self, bps: u64, now: Instant) {
        self.estimate = bps;
        self.last_decrease = Some(now);
        self.decreases += 1;
        self.clear_since = None;
        self.calm_since = None;
    }

    /// When the estimate last came down.
    pub fn last_decrease(&self) -> Option<Instant> {
        self.last_decrease
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blindrelay_protocol::twcc::{write_feedback, Arrival};

    /// A path of `rate` bits per second with a queue of `queue` bytes (a tbf): when each
    /// packet arrives, or `None` if the queue was full.
    struct Path {
        rate: u64,
        queue: u64,
        free_at_us: i64,
        /// Added to every arrival after the path: a receiver late to stamp them.
        late_us: i64,
    }

    impl Path {
        fn arrive(&mut self, at_us: i64, size: usize) -> Option<i64> {
            let start = self.free_at_us.max(at_us);
            let backlog = (start - at_us) as u64 * self.rate / 8 / 1_000_000;
            if backlog + size as u64 > self.queue {
                return None;
            }
            self.free_at_us = start + (size as u64 * 8 * 1_000_000 / self.rate) as i64;
            // The receiver's clock is 7 s ahead of ours: only differences matter.
            Some(self.free_at_us + self.late_us + 7_000_000)
        }
    }

    /// Send at `send_bps` (1,000-byte packets) through `path` for `secs`, with feedback
    /// every 50 ms; returns the estimate after.
    fn run(bwe: &mut DownlinkBwe, path: &mut Path, send_bps: u64, secs: u64, t0: Instant) {
        let gap_us = 1_000 * 8 * 1_000_000 / send_bps as i64;
        let mut arrivals: Vec<Arrival> = Vec::new();
        let mut us = 0i64;
        let mut fb_at = 50_000;
        let start = path.free_at_us.max(0);
        while us < secs as i64 * 1_000_000 {
            let at = start + us;
            let seq = u64::from(bwe.next_seq());
            bwe.on_sent(at, 1_000);
            if let Some(a) = path.arrive(at, 1_000) {
                arrivals.push(Arrival {
                    seq: seq + (1 << 16) * 4,
                    at_us: a,
                });
            }
            us += gap_us;
            if us >= fb_at {
                fb_at += 50_000;
                if !arrivals.is_empty() {
                    let mut out = Vec::new();
                    assert!(write_feedback(&mut out, 9, 1, 0, &arrivals));
                    arrivals.clear();
                    let now = t0 + Duration::from_micros((start + us) as u64);
                    bwe.on_feedback(&out, now).expect("our own feedback parses");
                }
            }
        }
    }

    #[test]
    fn a_600_kbit_path_brings_the_estimate_down_to_it_and_a_clear_one_does_not() {
        let t0 = Instant::now();
        let mut shaped = DownlinkBwe::new();
        let mut path = Path {
            rate: 600_000,
            queue: 15_000,
            free_at_us: 0,
            late_us: 0,
        };
        assert_eq!(shaped.estimate(), None, "no feedback yet");
        run(&mut shaped, &mut path, 2_000_000, 5, t0);
        let e = shaped.estimate().expect("informed");
        assert!((300_000..=700_000).contains(&e), "estimate {e}");
        assert!(shaped.decreases >= 1);

        let mut clear = DownlinkBwe::new();
        let mut wide = Path {
            rate: 50_000_000,
            queue: 1_000_000,
            free_at_us: 0,
            late_us: 0,
        };
        run(&mut clear, &mut wide, 2_000_000, 5, t0);
        assert_eq!(clear.decreases, 0);
        assert!(clear.estimate().expect("informed") >= START_BPS);
    }

    #[test]
    fn a_delay_that_stands_still_is_not_congestion_and_one_that_grows_is() {
        let t0 = Instant::now();
        // A wide path whose receiver starts stamping arrivals 100 ms late and stays so
        // (a busy machine): all that is sent still arrives, at the rate it is sent.
        let mut bwe = DownlinkBwe::new();
        let mut wide = Path {
            rate: 50_000_000,
            queue: 1_000_000,
            free_at_us: 0,
            late_us: 0,
        };
        run(&mut bwe, &mut wide, 2_000_000, 2, t0);
        wide.late_us = 100_000;
        run(&mut bwe, &mut wide, 2_000_000, 3, t0);
        assert!(bwe.queue_us > OVERUSE_DELAY_US, "queue {}", bwe.queue_us);
        assert_eq!(bwe.decreases, 0, "a standing delay lowered the estimate");
        assert!(bwe.estimate().expect("informed") >= START_BPS);

        // A bufferbloated 600 kbit/s path (13 s of queue): nothing is ever lost, and
        // only the delay's growth says the path carries less than is sent.
        let mut bloated = DownlinkBwe::new();
        let mut deep = Path {
            rate: 600_000,
            queue: 1_000_000,
            free_at_us: 0,
            late_us: 0,
        };
        run(&mut bloated, &mut deep, 2_000_000, 3, t0);
        assert!(bloated.decreases >= 1, "a growing queue went unseen");
        let e = bloated.estimate().expect("informed");
        assert!(e <= 700_000, "estimate {e}");
    }

    #[test]
    fn sending_within_the_estimate_lets_it_grow_again() {
        let t0 = Instant::now();
        let mut bwe = DownlinkBwe::new();
        let mut path = Path {
            rate: 600_000,
            queue: 15_000,
            free_at_us: 0,
            late_us: 0,
        };
        run(&mut bwe, &mut path, 2_000_000, 3, t0);
        // Then 400 kbit/s: once the queue has drained, no queue and no loss.
        run(&mut bwe, &mut path, 400_000, 1, t0);
        let low = bwe.estimate().expect("informed");
        let decreases = bwe.decreases;
        run(&mut bwe, &mut path, 400_000, 5, t0);
        assert_eq!(
            bwe.decreases, decreases,
            "no congestion within the path's rate"
        );
        assert!(bwe.estimate().expect("informed") > low);
    }

    #[test]
    fn feedback_about_packets_never_sent_or_forgotten_changes_nothing() {
        let t0 = Instant::now();
        let mut bwe = DownlinkBwe::new();
        for i in 0..10 {
            bwe.on_sent(i * 1_000, 1_200);
        }
        let mut out = Vec::new();
        // Sequence numbers far from anything sent.
        let arrivals: Vec<Arrival> = (30_000..30_100)
            .map(|seq| Arrival {
                seq,
                at_us: seq as i64 * 10,
            })
            .collect();
        assert!(write_feedback(&mut out, 9, 1, 0, &arrivals));
        bwe.on_feedback(&out, t0).expect("parses");
        assert_eq!(bwe.win_recv + bwe.win_lost, 0);
        assert!(bwe.on_feedback(&out[..18], t0).is_err());
    }
}
