//! Who claims each SSRC in each call: the index behind "SSRCs are unique in a call".
//!
//! A join or answer is checked against it in time independent of how many sessions the
//! relay holds (it replaced a scan of every session). A participant's claims are what
//! its offer announced and what its last accepted answer listed; both are bounded per
//! participant, so the index is bounded by the participant limits.

use super::PeerId;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct SsrcIndex {
    pub(crate) by_call: HashMap<String, HashMap<u32, PeerId>>,
}

impl SsrcIndex {
    /// The participant of `call` that claims `ssrc`.
    pub fn owner(&self, call: &str, ssrc: u32) -> Option<PeerId> {
        self.by_call.get(call)?.get(&ssrc).copied()
    }

    /// Whether a participant of `call` other than `except` claims `ssrc`.
    pub fn claimed_by_other(&self, call: &str, ssrc: u32, except: Option<PeerId>) -> bool {
        self.owner(call, ssrc).is_some_and(|o| Some(o) != except)
    }

    /// `peer` claims `ssrcs` in `call`. An SSRC another participant claims keeps its
    /// owner (callers check first; a merge of two calls that share one keeps the target
    /// call's owner).
    pub fn claim(&mut self, call: &str, peer: PeerId, ssrcs: impl IntoIterator<Item = u32>) {
        let map = match self.by_call.get_mut(call) {
            Some(m) => m,
            None => self.by_call.entry(call.to_string()).or_default(),
        };
        for x in ssrcs {
            map.entry(x).or_insert(peer);
        }
    }

    /// `peer` gives up its claims on `ssrcs` in `call` (others' claims stay).
    pub fn release(&mut self, call: &str, peer: PeerId, ssrcs: impl IntoIterator<Item = u32>) {
        let Some(map) = self.by_call.get_mut(call) else {
            return;
        };
        for x in ssrcs {
            if map.get(&x) == Some(&peer) {
                map.remove(&x);
            }
        }
        if map.is_empty() {
            self.by_call.remove(call);
        }
    }

    /// Every claim: (call, SSRC, owner), for the plane's invariant checks.
    pub fn claims(&self) -> impl Iterator<Item = (&str, u32, PeerId)> {
        self.by_call
            .iter()
            .flat_map(|(c, m)| m.iter().map(move |(x, p)| (c.as_str(), *x, *p)))
    }

    /// Calls with a claim: for tests (the index empties with the relay).
    #[cfg(test)]
    pub fn calls(&self) -> usize {
        self.by_call.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_per_call_and_released_only_by_their_owner() {
        let mut i = SsrcIndex::default();
        i.claim("a", 1, [10, 11]);
        i.claim("b", 2, [10]);
        assert_eq!(i.owner("a", 10), Some(1));
        assert_eq!(i.owner("b", 10), Some(2));
        assert!(i.claimed_by_other("a", 11, Some(2)));
        assert!(!i.claimed_by_other("a", 11, Some(1)));
        // Someone else's release leaves the claim; the first claim stays.
        i.claim("a", 3, [10]);
        i.release("a", 3, [10, 11]);
        assert_eq!(i.owner("a", 10), Some(1));
        i.release("a", 1, [10, 11]);
        i.release("b", 2, [10]);
        assert_eq!(i.calls(), 0);
    }
}
