//! A sender's broadcast budget: the bytes per second it may make the relay write to
//! other participants (chat, relayed E2EE blobs, MLS KeyPackages, commits, Welcomes).
//!
//! Why bytes, and why times the call: a victim's outbound queue
//! (`signal.max_outbound_bytes`) fills with bytes, whoever caused them. A message is
//! charged its wire size (the JSON the driver writes) times the number of *other
//! participants in the call* — for a chat that is exactly its fan-out; a message
//! addressed to fewer (an `e2ee` blob to one participant, a KeyPackage to the group's
//! members) is charged as if it went to all of them. So each of the call's `n - 1` other
//! participants can send any one victim at most `rate / (n - 1)` bytes per second, and
//! together at most `rate` (plus one `burst`), however large the call and however the
//! senders aim: a victim that reads faster than `rate` never falls behind because of
//! what others send, and is disconnected only for its own slowness.
//!
//! The defaults (`signal.broadcast_bytes_per_second` = 64 KiB/s, `broadcast_burst_bytes`
//! = 256 KiB, `max_chat_bytes` = 8 KiB), worked against `signal.max_outbound_bytes`
//! (1 MiB) and `calls.max_participants` (16):
//! - A victim reading at 1 Mbit/s (128 KB/s, twice the rate) keeps at most one burst,
//!   256 KiB, of others' messages queued: a quarter of its queue, which leaves the rest
//!   for the relay's own offers and events. Config validation keeps
//!   `burst <= max_outbound_bytes / 2`.
//! - A real call never reaches it: the largest chat (8 KiB body, ~8.3 KB on the wire) to
//!   a full call of 16 costs ~125 KB, so two go at once and one every two seconds after;
//!   a typical 100-byte chat to 15 others costs ~2.5 KB, 26 a second sustained. Config
//!   validation keeps `burst >= (max_chat_bytes + envelope) * (max_participants - 1)`,
//!   so the largest chat to a full call always fits once the budget is full.
//! - A KeyPackage (a few hundred bytes to a few KB) to 15 others costs at most ~60 KB.
//!
//! Messages the call cannot lose are never refused for budget: offers and participant
//! events are the relay's own and are not charged; MLS commits and Welcomes are
//! *charged but always allowed* (see [`ByteBudget::force`]), so a member that commits a
//! lot has less left for chat, but a commit is never held back. Chat, `e2ee` blobs and
//! KeyPackages over the budget are refused with `rate_limited` and counted
//! ([`RateLimit::BroadcastBytes`]); the sender learns at once and may retry, nothing is
//! dropped silently.

use blindrelay_protocol::signal::ServerMessage;
use std::time::Instant;

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// The rate and burst of a [`ByteBudget`] (`signal.broadcast_bytes_per_second`,
/// `signal.broadcast_burst_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetRate {
    pub bytes_per_second: u64,
    pub burst_bytes: u64,
}

/// A token bucket counted in bytes. Integer arithmetic (bytes scaled by 10^9, refilled
/// per elapsed nanosecond) so no fraction of a byte is lost between frequent refills and
/// tests on a virtual clock are exact. The balance may go negative, down to `-burst`,
/// for messages that are charged but always allowed: the debt delays the sender's later
/// refusable messages by at most `2 * burst / rate`.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    /// Bytes available, times 10^9.
    scaled: i128,
    at: Instant,
}

impl ByteBudget {
    /// A full budget: a newcomer may send one burst at once.
    pub fn full(rate: BudgetRate, now: Instant) -> Self {
        ByteBudget {
            scaled: i128::from(rate.burst_bytes) * NANOS_PER_SEC,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: BudgetRate) {
        let dt =
            i128::try_from(now.saturating_duration_since(self.at).as_nanos()).unwrap_or(i128::MAX);
        let cap = i128::from(rate.burst_bytes) * NANOS_PER_SEC;
        let added = dt.saturating_mul(i128::from(rate.bytes_per_second));
        self.scaled = self.scaled.saturating_add(added).min(cap);
        // A time before the last refill (never from a monotonic clock) adds nothing and
        // does not move the reference back.
        self.at = self.at.max(now);
    }

    /// Spend `cost` bytes if the budget has them: false (nothing spent) otherwise.
    pub fn try_spend(&mut self, now: Instant, cost: u64, rate: BudgetRate) -> bool {
        self.refill(now, rate);
        let c = i128::from(cost) * NANOS_PER_SEC;
        if self.scaled >= c {
            self.scaled -= c;
            true
        } else {
            false
        }
    }

    /// Spend `cost` bytes whether or not the budget has them (a message the call cannot
    /// lose). The balance stops at `-burst`.
    pub fn force(&mut self, now: Instant, cost: u64, rate: BudgetRate) {
        self.refill(now, rate);
        let floor = -i128::from(rate.burst_bytes) * NANOS_PER_SEC;
        self.scaled = (self.scaled - i128::from(cost) * NANOS_PER_SEC).max(floor);
    }

    /// Whole bytes available now (negative: in debt).
    pub fn available(&mut self, now: Instant, rate: BudgetRate) -> i64 {
        self.refill(now, rate);
        i64::try_from(self.scaled.div_euclid(NANOS_PER_SEC)).unwrap_or(i64::MIN)
    }
}

/// Which limit refused a participant's message with `rate_limited` (a bounded metric
/// label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum RateLimit {
    /// `signal.messages_per_second` / `signal.message_burst`: messages on one connection.
    Messages,
    /// `signal.broadcast_bytes_per_second` / `signal.broadcast_burst_bytes`: bytes a
    /// sender makes the relay write to others.
    BroadcastBytes,
}

impl RateLimit {
    pub const ALL: [RateLimit; 2] = [RateLimit::Messages, RateLimit::BroadcastBytes];

    pub fn as_str(self) -> &'static str {
        match self {
            RateLimit::Messages => "messages",
            RateLimit::BroadcastBytes => "broadcast_bytes",
        }
    }
}

/// The bytes the driver writes for `msg` (its JSON text), counted without building it.
pub fn wire_len(msg: &ServerMessage) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Our own enum always serializes, and the counter never fails a write; if either
    // ever did, the count so far undercharges rather than refusing.
    let _ = serde_json::to_writer(&mut c, msg);
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const RATE: BudgetRate = BudgetRate {
        bytes_per_second: 1000,
        burst_bytes: 4000,
    };

    #[test]
    fn a_full_budget_spends_its_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = ByteBudget::full(RATE, t0);
        assert!(b.try_spend(t0, 3000, RATE));
        assert!(b.try_spend(t0, 1000, RATE));
        // Empty: not even one byte, and a refusal spends nothing.
        assert!(!b.try_spend(t0, 1, RATE));
        assert_eq!(b.available(t0, RATE), 0);
        // 1000 bytes a second: 499 ms gives 499 bytes, not 500.
        let t = t0 + Duration::from_millis(499);
        assert!(!b.try_spend(t, 500, RATE));
        assert!(b.try_spend(t, 499, RATE));
        // Fractions are kept across many small refills: 1000 steps of 1 ms give 1000
        // bytes exactly.
        let mut t = t;
        for _ in 0..1000 {
            t += Duration::from_millis(1);
            assert!(b.available(t, RATE) >= 0);
        }
        assert_eq!(b.available(t, RATE), 1000);
        // Never more than the burst, however long it rests.
        let later = t + Duration::from_secs(3600);
        assert_eq!(b.available(later, RATE), 4000);
        assert!(!b.try_spend(later, 4001, RATE));
        assert!(b.try_spend(later, 4000, RATE));
    }

    #[test]
    fn a_cost_larger_than_the_burst_never_passes() {
        let t0 = Instant::now();
        let mut b = ByteBudget::full(RATE, t0);
        for s in 0..10 {
            assert!(!b.try_spend(t0 + Duration::from_secs(s * 100), 4001, RATE));
        }
        // ... and the refusals left the budget whole.
        assert!(b.try_spend(t0 + Duration::from_secs(1000), 4000, RATE));
    }

    #[test]
    fn sustained_spending_is_bounded_by_rate_times_time_plus_burst() {
        // A sender trying 300 bytes every 10 ms (30 KB/s) for 10 s gets at most
        // burst + rate * 10 s = 14,000 bytes through.
        let t0 = Instant::now();
        let mut b = ByteBudget::full(RATE, t0);
        let mut passed = 0u64;
        for i in 0..1000u64 {
            if b.try_spend(t0 + Duration::from_millis(i * 10), 300, RATE) {
                passed += 300;
            }
        }
        assert!(passed <= 4000 + 1000 * 10, "{passed}");
        assert!(passed >= 4000 + 1000 * 10 - 300, "{passed}");
    }

    #[test]
    fn forced_spending_always_passes_and_its_debt_is_bounded() {
        let t0 = Instant::now();
        let mut b = ByteBudget::full(RATE, t0);
        b.force(t0, 3000, RATE);
        assert_eq!(b.available(t0, RATE), 1000);
        // Far beyond the budget: still spent, the balance stops at -burst.
        for _ in 0..100 {
            b.force(t0, 10_000, RATE);
        }
        assert_eq!(b.available(t0, RATE), -4000);
        // The debt holds refusable messages back until it is repaid (4 s), then 1 s of
        // rate buys 1000 bytes.
        let t = t0 + Duration::from_secs(4);
        assert!(!b.try_spend(t, 1, RATE));
        let t = t0 + Duration::from_secs(5);
        assert!(!b.try_spend(t, 1001, RATE));
        assert!(b.try_spend(t, 1000, RATE));
    }

    #[test]
    fn a_clock_going_back_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = ByteBudget::full(RATE, t0);
        assert!(b.try_spend(t0, 4000, RATE));
        let earlier = t0 - Duration::from_secs(5);
        assert_eq!(b.available(earlier, RATE), 0);
        // The reference did not move back: one second after t0 gives one second's bytes.
        assert_eq!(b.available(t0 + Duration::from_secs(1), RATE), 1000);
    }

    #[test]
    fn wire_len_is_the_json_the_driver_writes() {
        let msgs = [
            ServerMessage::Chat {
                from: "p-abcdefghijkl".into(),
                body: "hello \"world\"\n\u{1}é".into(),
            },
            ServerMessage::MlsKeyPackage {
                from: "p-x".into(),
                blob: "AAAA".repeat(100),
            },
        ];
        for m in &msgs {
            let text = serde_json::to_string(m).expect("ServerMessage serializes");
            assert_eq!(wire_len(m), text.len() as u64);
        }
    }
}
