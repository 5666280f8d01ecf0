//! Which tracks cross which node links for one call (a cascade), computed by the call's
//! owner node from where each participant is served and what it receives.
//!
//! Each node of the call holds one link end per other node of the call. The end on node
//! N toward node M stands for M's participants: it sends their SSRCs, and it is sent only
//! the tracks of N's own participants that someone on M receives. So a track crosses a
//! link only while the far node has a receiver for it, once however many receivers it
//! has there, and never onward from the node it reached (each node sends only its own).

use crate::PeerId;
use std::collections::{BTreeMap, HashMap};

/// One participant, as far as routing goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Member {
    node: String,
    ssrcs: Vec<u32>,
    video: Vec<u32>,
    repairs: Vec<(u32, u32)>,
    receiving: Vec<u32>,
    /// Its simulcast tracks' layer SSRCs, lowest first (the first is the track's SSRC).
    simulcast: Vec<Vec<u32>>,
}

/// A link end one node holds in the call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkEnd {
    /// The SSRCs the far node's participants send (the end sends them here).
    pub ssrcs: Vec<u32>,
    pub video: Vec<u32>,
    /// The far participants' (media SSRC, RTX SSRC) pairs: the near node retransmits
    /// their tracks to its receivers on those RTX streams.
    pub repairs: Vec<(u32, u32)>,
    /// The tracks of this node's participants the far node has receivers for; of a
    /// simulcast track, every layer, so the far node chooses each receiver's layer there.
    pub receiving: Vec<u32>,
    /// The far participants' simulcast tracks (layer SSRCs, lowest first): the near node
    /// chooses a layer for each of its receivers, as it does for its own senders'.
    pub simulcast: Vec<Vec<u32>>,
    /// Whether the end's arrival asks the near node's video senders for a key frame (see
    /// `PeerTables::keyframe_on_join`): not in an MLS call, where the far receivers ask once
    /// keyed.
    pub keyframe_on_join: bool,
}

/// The call's participants and where they are.
#[derive(Debug, Default)]
pub struct CallRoutes {
    members: HashMap<PeerId, Member>,
    /// Set from the call's mode by the owner's plane; unset (no participant keyed yet):
    /// yes, as for a standard call.
    keyframe_on_join: Option<bool>,
}

impl CallRoutes {
    /// `peer` is served by `node` and sends `ssrcs` (`video` of them video, repaired on
    /// the RTX SSRCs of `repairs`).
    pub fn set_member(
        &mut self,
        peer: PeerId,
        node: &str,
        ssrcs: &[u32],
        video: &[u32],
        repairs: &[(u32, u32)],
    ) {
        let m = self.members.entry(peer).or_default();
        m.node = node.to_string();
        m.ssrcs = ssrcs.to_vec();
        m.video = video.to_vec();
        m.repairs = repairs.to_vec();
    }

    /// `peer`'s simulcast tracks, each as its layers' SSRCs, lowest first.
    pub fn set_layers(&mut self, peer: PeerId, simulcast: &[Vec<u32>]) {
        if let Some(m) = self.members.get_mut(&peer) {
            m.simulcast = simulcast.to_vec();
        }
    }

    /// The remote SSRCs `peer` has tracks for.
    pub fn set_receiving(&mut self, peer: PeerId, ssrcs: &[u32]) {
        if let Some(m) = self.members.get_mut(&peer) {
            m.receiving = ssrcs.to_vec();
        }
    }

    /// Whether link ends in the call ask for a key frame when they appear (false in an
    /// MLS call).
    pub fn set_keyframe_on_join(&mut self, yes: bool) {
        self.keyframe_on_join = Some(yes);
    }

    pub fn remove(&mut self, peer: PeerId) {
        self.members.remove(&peer);
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every link end the call needs now, by (node holding it, far node).
    pub fn ends(&self) -> BTreeMap<(String, String), LinkEnd> {
        let mut by_node: BTreeMap<&str, Vec<&Member>> = BTreeMap::new();
        for m in self.members.values() {
            by_node.entry(m.node.as_str()).or_default().push(m);
        }
        let mut out = BTreeMap::new();
        for (n, here) in &by_node {
            for (far_node, far) in &by_node {
                if n == far_node {
                    continue;
                }
                let mut e = LinkEnd {
                    keyframe_on_join: self.keyframe_on_join.unwrap_or(true),
                    ..LinkEnd::default()
                };
                for m in far {
                    e.ssrcs.extend(&m.ssrcs);
                    e.video.extend(&m.video);
                    e.repairs.extend(&m.repairs);
                    e.simulcast.extend(m.simulcast.iter().cloned());
                }
                e.repairs.sort_unstable();
                e.repairs.dedup();
                for m in here {
                    for s in &m.ssrcs {
                        if far.iter().any(|f| f.receiving.contains(s)) {
                            e.receiving.push(*s);
                        }
                    }
                    // Receivers know a simulcast track by its lowest layer's SSRC.
                    for layers in &m.simulcast {
                        if layers.first().is_some_and(|t| e.receiving.contains(t)) {
                            e.receiving.extend(layers.iter().skip(1));
                        }
                    }
                }
                for v in [&mut e.ssrcs, &mut e.video, &mut e.receiving] {
                    v.sort_unstable();
                    v.dedup();
                }
                out.insert((n.to_string(), far_node.to_string()), e);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(a: &str, b: &str) -> (String, String) {
        (a.to_string(), b.to_string())
    }

    /// One node: no ends. Three nodes: every ordered pair has one, carrying only what
    /// the far side receives, and only the near side's own tracks.
    #[test]
    fn ends_carry_only_received_tracks_of_the_near_node() {
        let mut r = CallRoutes::default();
        r.set_member(1, "a", &[10, 11], &[11], &[]);
        r.set_member(2, "a", &[20], &[], &[]);
        assert!(r.ends().is_empty(), "one node needs no link");
        r.set_member(3, "b", &[30, 31], &[31], &[]);
        r.set_member(4, "c", &[40], &[], &[]);
        // b receives a's 10 and 11 and c's 40; c receives only a's 20.
        r.set_receiving(3, &[10, 11, 40, 20]);
        r.set_receiving(4, &[20]);
        let e = r.ends();
        assert_eq!(e.len(), 6);
        let ab = &e[&key("a", "b")];
        assert_eq!(ab.ssrcs, vec![30, 31]);
        assert_eq!(ab.video, vec![31]);
        assert_eq!(ab.receiving, vec![10, 11, 20]);
        let ac = &e[&key("a", "c")];
        assert_eq!(ac.receiving, vec![20]);
        assert_eq!(ac.ssrcs, vec![40]);
        // c's 40 goes to b from c itself, never through a.
        assert_eq!(e[&key("c", "b")].receiving, vec![40]);
        assert!(
            e[&key("b", "a")].receiving.is_empty(),
            "nobody on a receives b"
        );
        assert!(!e[&key("a", "b")].receiving.contains(&40));
        r.remove(4);
        assert_eq!(r.ends().len(), 2);
        r.remove(3);
        assert!(r.ends().is_empty());
    }

    /// A simulcast track crosses with all its layers while the far node receives it, and
    /// the far node's end learns its layers; its other tracks cross as before.
    #[test]
    fn a_simulcast_track_crosses_with_its_layers() {
        let mut r = CallRoutes::default();
        r.set_member(1, "a", &[10, 11, 12, 13], &[11, 12, 13], &[]);
        r.set_layers(1, &[vec![11, 12, 13]]);
        r.set_member(2, "b", &[20], &[], &[]);
        r.set_receiving(2, &[10]);
        let e = r.ends();
        assert_eq!(e[&key("a", "b")].receiving, vec![10]);
        assert_eq!(e[&key("b", "a")].simulcast, vec![vec![11, 12, 13]]);
        assert!(e[&key("a", "b")].simulcast.is_empty());
        r.set_receiving(2, &[10, 11]);
        assert_eq!(e_receiving(&r, "a", "b"), vec![10, 11, 12, 13]);
    }

    fn e_receiving(r: &CallRoutes, near: &str, far: &str) -> Vec<u32> {
        r.ends()[&key(near, far)].receiving.clone()
    }

    /// Two receivers on one node ask for a track once.
    #[test]
    fn a_track_crosses_once_for_many_receivers() {
        let mut r = CallRoutes::default();
        r.set_member(1, "a", &[10], &[10], &[]);
        r.set_member(2, "b", &[], &[], &[]);
        r.set_member(3, "b", &[], &[], &[]);
        r.set_receiving(2, &[10]);
        r.set_receiving(3, &[10]);
        assert_eq!(r.ends()[&key("a", "b")].receiving, vec![10]);
    }

    /// Link ends ask for key frames on arrival unless the call is an MLS call (the owner
    /// sets the flag from its plane before any end exists; it only matters when a node
    /// creates an end).
    #[test]
    fn link_ends_carry_the_calls_keyframe_on_join() {
        let mut r = CallRoutes::default();
        r.set_member(1, "a", &[10], &[10], &[]);
        r.set_member(2, "b", &[20], &[20], &[]);
        r.set_receiving(2, &[10]);
        let before = r.ends();
        assert!(before.values().all(|e| e.keyframe_on_join));
        r.set_keyframe_on_join(false);
        let after = r.ends();
        assert!(after.values().all(|e| !e.keyframe_on_join));
        assert_ne!(before[&key("a", "b")], after[&key("a", "b")]);
    }
}
