//! Each receiver's downlink, estimated from its own transport-cc feedback.
//!
//! The relay numbers every RTP packet it sends a receiver in a transport-wide sequence
//! of that receiver's own (a header extension of its hop, outside the end-to-end
//! encrypted payload), remembers when it sent each and how big it was, and reads the
//! receiver's feedback saying when each arrived. Two signals lower the estimate, as in
//! libwebrtc's GCC: a queue building on the path (one-way delay rising above its recent
//! minimum) and loss. Without either, the estimate grows by 8 % a second.
//!
//! The relay cannot probe (it has no padding stream to each receiver), so the estimate
//! starts high and comes down at the first congestion; the layer allocator
//! ([`crate::forward`]) backs off from layers that congested the path before.

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
/// Below this queue the path is clear and the estimate may grow.
const CLEAR_DELAY_US: i64 = 20_000;
/// Loss over a window above this lowers the estimate; below [`LOSS_CLEAR`] it may grow.
const LOSS_CONGESTED: f64 = 0.10;
const LOSS_CLEAR: f64 = 0.02;
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
    over_since: Option<Instant>,
    /// The current window: when it began, bytes acknowledged, packets received and lost.
    /// The acknowledged rate is over the receiver's arrival times (the first and last in
    /// the window), not over when feedback came: feedback held in a queue would
    /// otherwise make a window's rate look a fraction of the path's.
    win_at: Option<Instant>,
    win_first_us: Option<i64>,
    win_last_us: i64,
    win_bytes: u64,
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
    /// Decreases so far, ever.
    pub decreases: u64,
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
            over_since: None,
            win_at: None,
            win_first_us: None,
            win_last_us: 0,
            win_bytes: 0,
            win_recv: 0,
            win_lost: 0,
            acked_bps: 0,
            acked_recent: [0; ACKED_WINDOWS],
            loss: 0.0,
            last_decrease: None,
            last_update: None,
            clear_since: None,
            decreases: 0,
        }
    }

    /// The sequence number the next packet sent carries.
    pub fn next_seq(&self) -> u16 {
        self.next as u16
    }

    /// The packet numbered [`DownlinkBwe::next_seq`] left at `at_us` (our clock), `size`
    /// bytes on the wire.
    pub fn on_sent(&mut self, at_us: i64, size: usize) {
        self.sent[self.next as usize % HISTORY] = Sent {
            seq: self.next,
            at_us,
            size: size.min(usize::from(u16::MAX)) as u16,
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
        let (sent, min_delay, win_bytes, win_recv, win_lost, first_us, last_us) = (
            &self.sent,
            &mut self.min_delay,
            &mut self.win_bytes,
            &mut self.win_recv,
            &mut self.win_lost,
            &mut self.win_first_us,
            &mut self.win_last_us,
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
                    *win_recv += 1;
                    // The first arrival only marks the window's start; bytes after it
                    // arrived over the span.
                    if first_us.is_none() {
                        *first_us = Some(at);
                    } else {
                        *win_bytes += u64::from(slot.size);
                    }
                    *last_us = (*last_us).max(at);
                    let d = at - slot.at_us;
                    delay_sum += d;
                    delays += 1;
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
        }
        let win_at = *self.win_at.get_or_insert(now);
        let span = now.saturating_duration_since(win_at);
        if span >= WINDOW {
            let total = self.win_recv + self.win_lost;
            let arrived_us = self
                .win_first_us
                .map_or(0, |f| self.win_last_us.saturating_sub(f));
            if arrived_us > 0 {
                self.acked_bps = self.win_bytes * 8 * 1_000_000 / arrived_us as u64;
                self.acked_recent.rotate_right(1);
                self.acked_recent[0] = self.acked_bps;
            }
            self.loss = if total >= 20 {
                f64::from(self.win_lost) / f64::from(total)
            } else {
                0.0
            };
            self.win_at = Some(now);
            self.win_first_us = None;
            self.win_bytes = 0;
            self.win_recv = 0;
            self.win_lost = 0;
        }
        let signal = self.control(now);
        r.map(|()| signal)
    }

    /// Apply the signals to the estimate.
    fn control(&mut self, now: Instant) -> Signal {
        let delayed = if self.queue_us > OVERUSE_DELAY_US {
            let since = *self.over_since.get_or_insert(now);
            now.saturating_duration_since(since) >= OVERUSE_HOLD
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
                self.estimate = (from * 85 / 100).max(MIN_BPS);
                self.last_decrease = Some(now);
                self.decreases += 1;
                // The loss that caused it is not counted again.
                self.loss = 0.0;
            }
            self.clear_since = None;
            return Signal::Congested;
        }
        if self.queue_us < CLEAR_DELAY_US && self.loss < LOSS_CLEAR {
            let grow = self.estimate as f64 * 0.08 * dt.as_secs_f64();
            self.estimate = (self.estimate + grow as u64).min(MAX_BPS);
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
            }
        }
    }

    /// How long the path has been clear (no queue, no loss) at `now`.
    pub fn clear_for(&self, now: Instant) -> Duration {
        self.clear_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// The allocator sends more than the estimate to find out whether the path takes it
    /// (it has no padding to probe with): the estimate stands at that until feedback
    /// says otherwise.
    pub fn raise_to(&mut self, bps: u64) {
        self.estimate = self.estimate.max(bps.min(MAX_BPS));
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
            Some(self.free_at_us + 7_000_000)
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
        };
        run(&mut clear, &mut wide, 2_000_000, 5, t0);
        assert_eq!(clear.decreases, 0);
        assert!(clear.estimate().expect("informed") >= START_BPS);
    }

    #[test]
    fn sending_within_the_estimate_lets_it_grow_again() {
        let t0 = Instant::now();
        let mut bwe = DownlinkBwe::new();
        let mut path = Path {
            rate: 600_000,
            queue: 15_000,
            free_at_us: 0,
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
