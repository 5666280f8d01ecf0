//! Failover across relays, sans-IO: which relay to try next and when after a call is lost,
//! which losses are worth a retry at all, and how long each sender's media paused.
//!
//! The rule: a client given several relays joins through the first. Once its call is
//! established (the media path came up), a loss -- the signalling connection closing or
//! failing without the client having left, or the relay ending the client's part for a
//! reason that is not a refusal of this client -- moves it to the NEXT relay in the list
//! (wrapping round) after a short backoff: 100 ms, doubling per failed attempt, at most 1 s.
//! It keeps trying until the call's end (`--duration` after the first media path came
//! up). A refusal (the token, the call, policy: `unauthorized`, `wrong_call`,
//! `e2ee_not_allowed`...) is never retried: another relay of the same deployment would
//! refuse the same client for the same reason.
//!
//! Time only comes in as an argument, so the tests below run the rule on a virtual clock.

use blindrelay_protocol::signal::ErrorCode;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The first retry's delay.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest delay between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The delay before the attempt that follows `failures` consecutive failed ones (0: the
/// first retry after a loss).
pub fn backoff(failures: u32) -> Duration {
    BACKOFF_FIRST
        .checked_mul(1u32.checked_shl(failures).unwrap_or(u32::MAX))
        .map_or(BACKOFF_MAX, |d| d.min(BACKOFF_MAX))
}

/// Whether the relay's `error` refuses *this client* (its token, its call, policy, its
/// request), so that no other relay is tried. Only the relay's own state is not a refusal:
/// it is shutting down or full, failed internally, or our hello came too late. A code added
/// later counts as a refusal until someone decides otherwise: retrying a refusal against
/// every relay of a deployment is worse than ending a call one relay could have carried.
pub fn is_refusal(code: ErrorCode) -> bool {
    !matches!(
        code,
        ErrorCode::ShuttingDown
            | ErrorCode::RelayFull
            | ErrorCode::Internal
            | ErrorCode::HelloTimeout
    )
}

/// Whether the relay removing this participant (`participant_left` naming itself, with
/// `reason`) is a loss to recover from through another relay: the relay is going away
/// (`shutdown`) or the media path to it failed (`consent_timeout`, `dtls_failed`,
/// `dtls_closed`, `connect_timeout`). Replaced by a newer join of the same identity, a
/// hand-over (transferred, parked) or anything unknown is not.
pub fn removal_is_loss(reason: &str) -> bool {
    matches!(
        reason,
        "shutdown" | "consent_timeout" | "dtls_failed" | "dtls_closed" | "connect_timeout"
    )
}

/// Whether a WebSocket close with this reason (the relay's close frame) refuses this
/// client. The relay closes with `removed` only after telling the participant why
/// (`participant_left`), so that reason alone decides; every other close (`shutdown`,
/// `slow_reader`, `write_timeout`, `hello_timeout`, none at all) is a loss.
pub fn close_is_refusal(reason: Option<&str>) -> bool {
    reason == Some("removed")
}

/// The next attempt after a loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// The relay to connect to.
    pub relay: String,
    /// Not before this instant.
    pub at: Instant,
}

/// Which relay a client uses and when it moves to the next one.
#[derive(Debug, Clone)]
pub struct Failover {
    relays: Vec<String>,
    current: usize,
    /// Consecutive failed attempts since the call was last held (sets the backoff).
    failures: u32,
    /// The call's end; `None` until the call is first established. No attempt starts at or
    /// after it.
    until: Option<Instant>,
    /// Set from a loss to the rejoin that recovers it.
    reconnecting: bool,
    reconnects: u64,
}

impl Failover {
    /// A client that joins through `first` and has `others` to fall back on, in order.
    pub fn new(first: &str, others: &[String]) -> Self {
        let mut relays = vec![first.to_string()];
        relays.extend(others.iter().cloned());
        Failover {
            relays,
            current: 0,
            failures: 0,
            until: None,
            reconnecting: false,
            reconnects: 0,
        }
    }

    /// The relay in use (or to be used next).
    pub fn current(&self) -> &str {
        // `relays` always holds `first`; `current` only ever moves modulo its length.
        &self.relays[self.current]
    }

    /// The call is established and ends at `until`: from now on a loss moves to the next
    /// relay. With a single relay there is nowhere to move: a loss ends the call as before.
    pub fn arm(&mut self, until: Instant) {
        if self.until.is_none() {
            self.until = Some(until);
        }
    }

    /// Whether there is another relay to move to.
    pub fn has_fallback(&self) -> bool {
        self.relays.len() > 1
    }

    /// The call's end, once it was established.
    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// A rejoin is under way (from a loss to the media path up on the next relay).
    pub fn reconnecting(&self) -> bool {
        self.reconnecting
    }

    /// The call (or an attempt to rejoin it) was lost at `now`: the next relay and when to
    /// try it, or `None` when the loss ends the call (one relay only, never established,
    /// or the call's end comes first).
    pub fn on_lost(&mut self, now: Instant) -> Option<Retry> {
        let until = self.until?;
        if !self.has_fallback() {
            return None;
        }
        let at = now + backoff(self.failures);
        if at >= until {
            return None;
        }
        self.failures = self.failures.saturating_add(1);
        self.current = (self.current + 1) % self.relays.len();
        self.reconnecting = true;
        Some(Retry {
            relay: self.current().to_string(),
            at,
        })
    }

    /// The media path is up through the current relay: a rejoin (if one was under way)
    /// succeeded, and the backoff starts over.
    pub fn on_connected(&mut self) {
        if self.reconnecting {
            self.reconnects += 1;
            self.reconnecting = false;
        }
        self.failures = 0;
    }

    /// Successful rejoins so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }
}

/// Senders whose gaps are tracked; frames from further ones are not (a relay that invents
/// participant ids cannot grow the table).
pub const MAX_GAP_SENDERS: usize = 256;

/// The longest pause between two consecutive frames opened from each sender.
#[derive(Debug, Clone, Default)]
pub struct Gaps {
    last: BTreeMap<String, Instant>,
    max_ms: BTreeMap<String, f64>,
}

impl Gaps {
    /// A frame from `from` opened at `now`.
    pub fn frame(&mut self, from: &str, now: Instant) {
        let tracked = self.last.len();
        match self.last.get_mut(from) {
            Some(last) => {
                let gap = now.saturating_duration_since(*last).as_secs_f64() * 1e3;
                *last = now;
                let max = self.max_ms.entry(from.to_string()).or_insert(gap);
                if gap > *max {
                    *max = gap;
                }
            }
            None if tracked < MAX_GAP_SENDERS => {
                self.last.insert(from.to_string(), now);
            }
            None => {}
        }
    }

    /// Sender -> the longest gap in ms, for senders with at least two frames.
    pub fn max_ms(&self) -> &BTreeMap<String, f64> {
        &self.max_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn relays() -> Failover {
        Failover::new("ws://a", &["ws://b".to_string(), "ws://c".to_string()])
    }

    #[test]
    fn backoff_starts_at_100_ms_doubles_and_stops_at_1_s() {
        let got: Vec<u128> = (0..8).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn a_loss_moves_to_the_next_relay_wrapping_round_with_growing_backoff() {
        let t0 = Instant::now();
        let mut f = relays();
        assert_eq!(f.current(), "ws://a");
        f.arm(t0 + Duration::from_secs(60));
        f.on_connected();
        let mut now = t0 + ms(1000);
        let mut seen = Vec::new();
        for _ in 0..5 {
            let r = f.on_lost(now).expect("a retry before the end");
            seen.push((r.relay.clone(), (r.at - now).as_millis()));
            assert_eq!(f.current(), r.relay);
            now = r.at;
        }
        assert_eq!(
            seen,
            [
                ("ws://b".to_string(), 100),
                ("ws://c".to_string(), 200),
                ("ws://a".to_string(), 400),
                ("ws://b".to_string(), 800),
                ("ws://c".to_string(), 1000),
            ]
        );
        // Not yet back in the call: nothing counted.
        assert_eq!(f.reconnects(), 0);
        assert!(f.reconnecting());
        // Back in: counted once, and the next loss starts from 100 ms again.
        f.on_connected();
        assert_eq!(f.reconnects(), 1);
        assert!(!f.reconnecting());
        let r = f.on_lost(now).expect("retry");
        assert_eq!(
            (r.relay.as_str(), (r.at - now).as_millis()),
            ("ws://a", 100)
        );
        f.on_connected();
        assert_eq!(f.reconnects(), 2);
    }

    #[test]
    fn no_retry_before_the_call_is_established_with_one_relay_or_past_its_end() {
        let t0 = Instant::now();
        let mut f = relays();
        assert_eq!(
            f.on_lost(t0),
            None,
            "never established: the first join's failure is final"
        );
        assert_eq!(f.current(), "ws://a");
        let mut one = Failover::new("ws://a", &[]);
        one.arm(t0 + Duration::from_secs(60));
        assert_eq!(
            one.on_lost(t0),
            None,
            "one relay: a loss ends the call as before"
        );
        // The call ends at t0 + 10 s: a retry that could only start at or after it is none.
        f.arm(t0 + Duration::from_secs(10));
        // A second arm (a rejoin's media path) does not move the end.
        f.arm(t0 + Duration::from_secs(20));
        assert_eq!(f.until(), Some(t0 + Duration::from_secs(10)));
        assert!(f.on_lost(t0 + ms(9_850)).is_some());
        assert_eq!(f.on_lost(t0 + ms(9_990)), None);
    }

    #[test]
    fn refusals_are_not_retried_and_losses_are() {
        for code in [
            ErrorCode::Unauthorized,
            ErrorCode::TokenExpired,
            ErrorCode::WrongCall,
            ErrorCode::E2eeNotAllowed,
            ErrorCode::E2eeRequired,
            ErrorCode::E2eeSchemeMismatch,
            ErrorCode::E2eeCallRefusesBots,
            ErrorCode::CallFull,
            ErrorCode::MlsRefused,
            ErrorCode::RateLimited,
        ] {
            assert!(is_refusal(code), "{code:?}");
        }
        for code in [
            ErrorCode::ShuttingDown,
            ErrorCode::RelayFull,
            ErrorCode::Internal,
            ErrorCode::HelloTimeout,
        ] {
            assert!(!is_refusal(code), "{code:?}");
        }
        for r in [
            "shutdown",
            "consent_timeout",
            "dtls_failed",
            "dtls_closed",
            "connect_timeout",
        ] {
            assert!(removal_is_loss(r), "{r}");
        }
        for r in ["replaced", "transferred", "parked", "left", "something_new"] {
            assert!(!removal_is_loss(r), "{r}");
        }
        assert!(close_is_refusal(Some("removed")));
        for r in [
            None,
            Some("shutdown"),
            Some("slow_reader"),
            Some("write_timeout"),
        ] {
            assert!(!close_is_refusal(r), "{r:?}");
        }
    }

    #[test]
    fn gaps_are_the_longest_pause_per_sender_from_the_second_frame_on() {
        let t0 = Instant::now();
        let mut g = Gaps::default();
        g.frame("p-a", t0);
        assert!(g.max_ms().is_empty(), "one frame is no gap");
        for (who, at) in [
            ("p-a", 20),
            ("p-b", 25),
            ("p-a", 40),
            ("p-a", 790),
            ("p-a", 810),
        ] {
            g.frame(who, t0 + ms(at));
        }
        assert_eq!(g.max_ms().get("p-a"), Some(&750.0));
        assert_eq!(g.max_ms().get("p-b"), None, "p-b sent one frame");
        g.frame("p-b", t0 + ms(30));
        assert_eq!(g.max_ms().get("p-b"), Some(&5.0));
        // A frame whose instant is before the last (clocks only go forward, but a caller
        // could pass one) counts as no gap rather than panicking.
        g.frame("p-b", t0);
        assert_eq!(g.max_ms().get("p-b"), Some(&5.0));
    }

    #[test]
    fn gaps_track_a_bounded_number_of_senders() {
        let t0 = Instant::now();
        let mut g = Gaps::default();
        for i in 0..MAX_GAP_SENDERS + 10 {
            g.frame(&format!("p-{i}"), t0);
            g.frame(&format!("p-{i}"), t0 + ms(10));
        }
        assert_eq!(g.max_ms().len(), MAX_GAP_SENDERS);
    }
}
