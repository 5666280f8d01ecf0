//! Sliding replay window over frame counters, one per KID.
//!
//! A receiver accepts a CTR if it is newer than every CTR seen so far, or if it is one of the
//! last `size` counters and has not been seen yet. Anything else is a replay (seen) or too old
//! to tell (behind the window), which RFC 9605 §7.5 leaves to the application; rejecting both
//! is the safe default for media, where a late frame is useless anyway.
//!
//! The bitmap is a 1024-bit ring indexed by `ctr mod 1024`, so checking and marking are O(1)
//! for in-order traffic and the structure never allocates.

use super::error::SframeError;

/// Largest supported window, in frames.
pub const MAX_REPLAY_WINDOW: u64 = 1024;
/// Default window: generous for per-frame protection (about 4 s of 30 fps video) while
/// keeping per-KID state small.
pub const DEFAULT_REPLAY_WINDOW: u64 = 128;

const WORDS: usize = (MAX_REPLAY_WINDOW / 64) as usize;

/// Replay state for one key.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    size: u64,
    /// Highest counter accepted so far; `None` before the first frame.
    top: Option<u64>,
    bits: [u64; WORDS],
}

impl ReplayWindow {
    /// A window remembering the last `size` counters (`1..=MAX_REPLAY_WINDOW`).
    pub fn new(size: u64) -> Result<Self, SframeError> {
        if size == 0 || size > MAX_REPLAY_WINDOW {
            return Err(SframeError::InvalidReplayWindow(size));
        }
        Ok(Self {
            size,
            top: None,
            bits: [0; WORDS],
        })
    }

    /// Window size in frames.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Highest counter accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.top
    }

    fn slot(ctr: u64) -> (usize, u64) {
        // ctr % 1024 < 1024, so the word index is < 16 and the cast cannot truncate.
        let idx = (ctr % MAX_REPLAY_WINDOW) as usize;
        (idx / 64, 1u64 << (idx % 64))
    }

    fn is_set(&self, ctr: u64) -> bool {
        let (w, m) = Self::slot(ctr);
        self.bits[w] & m != 0
    }

    fn clear(&mut self, ctr: u64) {
        let (w, m) = Self::slot(ctr);
        self.bits[w] &= !m;
    }

    fn set(&mut self, ctr: u64) {
        let (w, m) = Self::slot(ctr);
        self.bits[w] |= m;
    }

    /// Checks `ctr` without recording it. Call [`Self::mark`] only after the frame
    /// authenticated, so that forged frames cannot poison the window.
    pub fn check(&self, kid: u64, ctr: u64) -> Result<(), SframeError> {
        let Some(top) = self.top else {
            return Ok(());
        };
        if ctr > top {
            return Ok(());
        }
        let age = top - ctr;
        if age >= self.size {
            return Err(SframeError::TooOld {
                kid,
                ctr,
                oldest: top - (self.size - 1),
            });
        }
        if self.is_set(ctr) {
            return Err(SframeError::Replay { kid, ctr });
        }
        Ok(())
    }

    /// Records `ctr` as received. Assumes [`Self::check`] accepted it.
    pub fn mark(&mut self, ctr: u64) {
        match self.top {
            None => {
                self.bits = [0; WORDS];
                self.top = Some(ctr);
            }
            Some(top) if ctr > top => {
                let jump = ctr - top;
                if jump >= MAX_REPLAY_WINDOW {
                    self.bits = [0; WORDS];
                } else {
                    // Forget the counters the window slides past; they reuse these slots.
                    // top + i <= ctr, so this cannot overflow.
                    for i in 1..=jump {
                        self.clear(top + i);
                    }
                }
                self.top = Some(ctr);
            }
            Some(_) => {}
        }
        self.set(ctr);
    }

    /// [`Self::check`] then [`Self::mark`].
    pub fn accept(&mut self, kid: u64, ctr: u64) -> Result<(), SframeError> {
        self.check(kid, ctr)?;
        self.mark(ctr);
        Ok(())
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            size: DEFAULT_REPLAY_WINDOW,
            top: None,
            bits: [0; WORDS],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_out_of_order_replay_and_too_old() {
        let mut w = ReplayWindow::new(4).unwrap();
        w.accept(1, 10).unwrap();
        assert_eq!(
            w.accept(1, 10),
            Err(SframeError::Replay { kid: 1, ctr: 10 })
        );
        w.accept(1, 12).unwrap();
        w.accept(1, 11).unwrap(); // reordered, inside the window
        w.accept(1, 9).unwrap(); // age 3 < 4
        assert_eq!(
            w.accept(1, 8),
            Err(SframeError::TooOld {
                kid: 1,
                ctr: 8,
                oldest: 9
            })
        );
        assert_eq!(
            w.accept(1, 11),
            Err(SframeError::Replay { kid: 1, ctr: 11 })
        );
    }

    #[test]
    fn large_jumps_and_extremes() {
        let mut w = ReplayWindow::new(MAX_REPLAY_WINDOW).unwrap();
        w.accept(0, 0).unwrap();
        w.accept(0, 5000).unwrap();
        // 5000 - 1024 = 3976 is the first too-old counter.
        assert!(matches!(w.accept(0, 3976), Err(SframeError::TooOld { .. })));
        w.accept(0, 3977).unwrap();
        w.accept(0, u64::MAX).unwrap();
        assert_eq!(
            w.accept(0, u64::MAX),
            Err(SframeError::Replay {
                kid: 0,
                ctr: u64::MAX
            })
        );
        w.accept(0, u64::MAX - 1023).unwrap();
        assert!(matches!(
            w.accept(0, u64::MAX - 1024),
            Err(SframeError::TooOld { .. })
        ));
    }

    #[test]
    fn slot_reuse_does_not_cause_false_replays() {
        let mut w = ReplayWindow::new(MAX_REPLAY_WINDOW).unwrap();
        for ctr in 0..5000u64 {
            w.accept(0, ctr).unwrap();
        }
        // Skip ahead by less than the ring size: slots of skipped counters must be cleared.
        w.accept(0, 5500).unwrap();
        for ctr in 5000..5500u64 {
            w.accept(0, ctr).unwrap();
        }
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(ReplayWindow::new(0).is_err());
        assert!(ReplayWindow::new(MAX_REPLAY_WINDOW + 1).is_err());
    }
}
