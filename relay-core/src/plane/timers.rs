//! The plane's timers, keyed: each [`Timer`] has at most one deadline, setting it again
//! replaces that deadline, and the part that removes a piece of state cancels its timer.
//! So the set never holds a stale entry and stays as large as the live state it serves
//! (a lazy heap of stale entries grew with every re-armed timer).
//!
//! Timers fire in `(deadline, key)` order: two due at the same instant fire in the
//! order of their keys, the same on every run.

use super::ConnId;
use crate::PeerId;
use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

/// What a timer is for; the plane checks it against the state when it fires.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Timer {
    /// A connection must say a valid hello by then.
    Hello(ConnId),
    /// A session's media path must have shown activity within the consent timeout.
    Consent(PeerId),
    /// A session must finish DTLS by then.
    Connect(PeerId),
    /// An invitation of `user@tenant` to a call expires.
    Invite(String, String),
    /// A parked call (by pickup code) expires.
    Parked(String),
    /// A user's wrong-pickup-code bucket refills, and goes once full.
    RetrieveBucket(String),
}

/// Deadlines by key, and keys in firing order.
#[derive(Debug, Default)]
pub(super) struct Timers {
    queue: BTreeSet<(Instant, Timer)>,
    deadline: HashMap<Timer, Instant>,
}

impl Timers {
    /// `t` fires at `at`, and not at any deadline it had before.
    pub(super) fn set(&mut self, at: Instant, t: Timer) {
        if let Some(old) = self.deadline.insert(t.clone(), at) {
            self.queue.remove(&(old, t.clone()));
        }
        self.queue.insert((at, t));
    }

    /// `t` will not fire. Whether it was set.
    pub(super) fn cancel(&mut self, t: &Timer) -> bool {
        match self.deadline.remove(t) {
            Some(at) => self.queue.remove(&(at, t.clone())),
            None => false,
        }
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// The next timer due at `now`, removed (it is not set any more).
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        if self.next()? > now {
            return None;
        }
        let (_, t) = self.queue.pop_first()?;
        self.deadline.remove(&t);
        Some(t)
    }

    /// When `t` fires, if it is set.
    pub(super) fn deadline(&self, t: &Timer) -> Option<Instant> {
        self.deadline.get(t).copied()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Every set timer, in firing order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &(Instant, Timer)> {
        self.queue.iter()
    }

    /// The two indexes agree (one deadline per key, nothing else queued).
    pub(super) fn check(&self) -> Result<(), String> {
        if self.queue.len() != self.deadline.len() {
            return Err(format!(
                "timers: {} queued but {} keyed",
                self.queue.len(),
                self.deadline.len()
            ));
        }
        for (at, t) in &self.queue {
            if self.deadline.get(t) != Some(at) {
                return Err(format!(
                    "timers: {t:?} queued at a deadline it does not have"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn drain(t: &mut Timers, now: Instant) -> Vec<Timer> {
        std::iter::from_fn(|| t.pop_due(now)).collect()
    }

    #[test]
    fn set_replaces_cancel_removes_and_due_timers_pop_in_order() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Timers::default();
        assert_eq!(t.next(), None);
        t.set(t0 + 3 * s, Timer::Consent(1));
        t.set(t0 + 2 * s, Timer::Hello(7));
        t.set(t0 + 2 * s, Timer::Connect(1));
        t.set(t0 + 5 * s, Timer::Parked("123456".into()));
        // Replacing moves the one deadline; nothing stale stays behind.
        t.set(t0 + s, Timer::Consent(1));
        assert_eq!(t.len(), 4);
        assert_eq!(t.deadline(&Timer::Consent(1)), Some(t0 + s));
        assert_eq!(t.next(), Some(t0 + s));
        assert!(t.cancel(&Timer::Parked("123456".into())));
        assert!(!t.cancel(&Timer::Parked("123456".into())), "already gone");
        t.check().expect("consistent");
        // Nothing is due before its deadline.
        assert!(drain(&mut t, t0).is_empty());
        // Due together: by deadline, then by key (Hello sorts before Connect).
        assert_eq!(
            drain(&mut t, t0 + 2 * s),
            [Timer::Consent(1), Timer::Hello(7), Timer::Connect(1)]
        );
        assert!(t.is_empty());
        assert_eq!(t.deadline(&Timer::Hello(7)), None, "a fired timer is unset");
        t.check().expect("consistent");
    }

    #[test]
    fn a_timer_set_again_and_again_is_held_once() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        for i in 0..1000 {
            t.set(t0 + Duration::from_millis(i), Timer::Hello(1));
        }
        assert_eq!(t.len(), 1);
        assert!(t.pop_due(t0 + Duration::from_millis(998)).is_none());
        assert_eq!(
            t.pop_due(t0 + Duration::from_millis(999)),
            Some(Timer::Hello(1))
        );
        assert_eq!(t.pop_due(t0 + Duration::from_secs(9)), None);
    }
}
