//! The remote m-lines of one participant's session: which other participant's track each
//! carries, and when a line may carry another.
//!
//! m-lines are never removed from a session: a departed track's line turns inactive and
//! may carry a new track only once the client has *answered an offer in which it is
//! inactive* (it is then "settled"). Each line remembers the revision of the first offer
//! that showed it inactive, so an answer settles exactly the lines inactive in the offer
//! it answers, never by the lines' current state (a line turned inactive after that offer
//! was written is not settled by its answer).
//!
//! The table is bounded per kind ([`TrackLimits::remote_lines`]), so the offers written
//! from it are bounded whatever the call's history. A new track takes, in this order:
//! 1. a line the client has never seen in its current assignment (placed after the last
//!    offer, and inactive again already): to the client it is a new line;
//! 2. a new line, while the session is small (webrtcbin cannot take a recycled line, so
//!    recycling waits until the session has collected many);
//! 3. a settled line (recycled);
//! 4. a new line, up to the kind's bound.
//!
//! Otherwise the track waits ([`Lines::place`] returns false) until an answer settles a
//! line: a client that does not answer gets no new tracks and its table does not grow.
//! An honest client never waits long: at the bound, at least half the kind's active
//! count is inactive and offered, so the answer to the offer showing them inactive
//! settles them.

use super::PeerId;
use blindrelay_protocol::sdp::RemoteTrack;
use blindrelay_protocol::tracks::TrackLimits;

/// One remote m-line.
#[derive(Debug)]
struct Line {
    track: RemoteTrack,
    owner: PeerId,
    /// This assignment (its mid) has been written into an offer.
    offered: bool,
    /// The revision of the first offer in which this assignment was inactive.
    inactive_in: Option<u64>,
}

/// A session's remote lines, in m-line order.
#[derive(Debug, Default)]
pub struct Lines {
    lines: Vec<Line>,
    /// Bound per kind: audio, video.
    caps: [usize; 2],
    /// Below this many lines, new tracks get new lines rather than recycled ones.
    recycle_after: usize,
    /// The last revision the client answered.
    answered: u64,
}

fn slot(kind: &str) -> usize {
    usize::from(kind != "audio")
}

impl Lines {
    pub fn new(limits: &TrackLimits, max_participants: usize, recycle_after: usize) -> Lines {
        Lines {
            lines: Vec::new(),
            caps: [
                limits.remote_lines("audio", max_participants),
                limits.remote_lines("video", max_participants),
            ],
            recycle_after,
            answered: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The lines' tracks, in m-line order.
    pub fn tracks(&self) -> impl Iterator<Item = &RemoteTrack> {
        self.lines.iter().map(|l| &l.track)
    }

    /// Whether `owner`'s track `ssrc` has an active line.
    pub fn has_active(&self, owner: PeerId, ssrc: u32) -> bool {
        self.lines
            .iter()
            .any(|l| l.track.active && l.owner == owner && l.track.ssrc == ssrc)
    }

    /// Turn inactive every active line whose track is not `wanted`. Whether any changed.
    pub fn retire(&mut self, wanted: impl Fn(PeerId, u32) -> bool) -> bool {
        let mut changed = false;
        for l in &mut self.lines {
            if l.track.active && !wanted(l.owner, l.track.ssrc) {
                l.track.active = false;
                changed = true;
            }
        }
        changed
    }

    fn settled(&self, l: &Line) -> bool {
        !l.track.active && l.inactive_in.is_some_and(|r| r <= self.answered)
    }

    /// Give `track` (active, with a fresh mid) a line, by the order in the module doc.
    /// False if none may take it yet.
    pub fn place(&mut self, track: RemoteTrack, owner: PeerId) -> bool {
        let kind = slot(track.kind);
        let of_kind = |l: &Line| slot(l.track.kind) == kind;
        let count = self.lines.iter().filter(|l| of_kind(l)).count();
        let below_cap = count < self.caps[kind];
        let unseen = self
            .lines
            .iter()
            .position(|l| of_kind(l) && !l.track.active && !l.offered);
        let at = match unseen {
            Some(i) => Some(i),
            None if below_cap && self.lines.len() < self.recycle_after => None,
            None => match self
                .lines
                .iter()
                .position(|l| of_kind(l) && self.settled(l))
            {
                Some(i) => Some(i),
                None if below_cap => None,
                None => return false,
            },
        };
        let line = Line {
            track,
            owner,
            offered: false,
            inactive_in: None,
        };
        match at {
            Some(i) => self.lines[i] = line,
            None => self.lines.push(line),
        }
        true
    }

    /// Every line was written into the offer with `revision`.
    pub fn offered(&mut self, revision: u64) {
        for l in &mut self.lines {
            l.offered = true;
            if !l.track.active && l.inactive_in.is_none() {
                l.inactive_in = Some(revision);
            }
        }
    }

    /// Each kind within its bound (for the plane's invariant checks).
    pub fn check(&self) -> Result<(), String> {
        for (kind, cap) in self.caps.iter().enumerate() {
            let n = self
                .lines
                .iter()
                .filter(|l| slot(l.track.kind) == kind)
                .count();
            if n > *cap {
                return Err(format!("lines: {n} of kind {kind}, bound {cap}"));
            }
        }
        Ok(())
    }

    /// The client answered the offer with `revision`: the lines inactive in it settle.
    pub fn answered(&mut self, revision: u64) {
        self.answered = self.answered.max(revision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(mid: u64, kind: &'static str, ssrc: u32) -> RemoteTrack {
        RemoteTrack {
            mid: format!("r{mid}"),
            kind,
            stream: "p".into(),
            ssrc,
            rtx: None,
            active: true,
        }
    }

    /// A client that never answers: its table stops at the bound and later tracks wait;
    /// once it answers, departed lines settle and carry them.
    #[test]
    fn lines_stay_within_the_bound_and_only_answers_free_them() {
        // 2 participants, one audio track: 1 active line, and a bound of 2.
        let limits = TrackLimits { audio: 1, video: 1 };
        let mut l = Lines::new(&limits, 2, 0);
        let mut mid = 0;
        let mut next = |l: &mut Lines, owner: PeerId| {
            mid += 1;
            l.place(track(mid, "audio", owner as u32), owner)
        };
        assert!(next(&mut l, 1));
        l.offered(1);
        // Its owner leaves and another comes, again and again, while offer 1 waits.
        for owner in 2..50 {
            l.retire(|o, _| o == owner);
            assert!(l.len() <= 2);
            let placed = next(&mut l, owner);
            if owner == 2 {
                // A second line, within the bound.
                assert!(placed);
            }
        }
        assert_eq!(l.len(), 2, "bounded");
        // The line of owner 2 was never offered: later owners reused it; the one offered
        // active (owner 1) was never recycled.
        assert_eq!(l.lines[0].owner, 1);
        assert!(!l.lines[0].track.active);
        l.offered(2);
        l.answered(1);
        // Offer 1 showed line 0 active: its answer settles nothing.
        assert!(!l.settled(&l.lines[0]));
        l.answered(2);
        assert!(l.settled(&l.lines[0]));
    }
}
