//! The relay's side of one participant's renegotiation: which remote tracks its session
//! carries (in bounded [`Lines`]), the offers written for it, and each answer checked
//! against the one offer it answers.
//!
//! At most one offer is outstanding per client; changes meanwhile fold into the next
//! offer, written once the answer comes. An answer is accepted only for the outstanding
//! revision, only with the mids that offer had, and settles only the lines inactive *in
//! that offer* ([`Lines::answered`]). Media follows the answers: a client is sent only the
//! remote SSRCs of the last offer it answered.
//!
//! The negotiator does not know the call: the plane passes the call's codecs and the
//! tracks the client should receive, and writes what the negotiator decides.

use super::Refusal;
use crate::lines::Lines;
use crate::PeerId;
use blindrelay_protocol::sdp::{
    self, CodecSet, Fingerprint, Numbering, Offer, RelayMedia, RemoteTrack, SentTrack,
};
use blindrelay_protocol::signal::ErrorCode;
use blindrelay_protocol::tracks;
use std::net::SocketAddr;
use tracing::debug;

/// The offer awaiting an answer.
#[derive(Debug)]
struct Outstanding {
    revision: u64,
    /// Its m-lines' mids, in order: an answer must have exactly these.
    mids: Vec<String>,
    /// The remote SSRCs it made active.
    active: Vec<u32>,
}

/// What the relay's descriptions for one client are written from, besides the lines.
pub(super) struct Description<'a> {
    /// The client's own offer (its m-lines come first) and numbering.
    pub(super) offer: &'a Offer,
    pub(super) numbering: &'a Numbering,
    pub(super) ice_ufrag: &'a str,
    pub(super) ice_pwd: &'a str,
    pub(super) fingerprint: &'a Fingerprint,
    pub(super) media_addr: SocketAddr,
    pub(super) session_id: u64,
}

/// One client's renegotiation state.
#[derive(Debug)]
pub(super) struct Negotiation {
    /// The remote tracks written into its session, in m-line order, each with its sender
    /// (bounded; see [`Lines`] for when a line may carry another track).
    remote: Lines,
    /// Descriptions written (the answer to `join` was the first).
    version: u64,
    /// The last offer's revision.
    revision: u64,
    outstanding: Option<Outstanding>,
    /// Remote SSRCs of the last answered offer: the only media this client is sent, so
    /// no packet reaches it before it has a track for it (webrtcbin loses its receive
    /// path for good on an early one; aiortc misroutes it).
    receiving: Vec<u32>,
    /// Tracks changed while an offer was outstanding: offer again after its answer.
    dirty: bool,
    next_mid: u64,
    /// The call's codecs when its last description was written.
    codecs: CodecSet,
}

impl Negotiation {
    /// A session whose answer to `join` was written with `codecs`, with `remote` lines.
    pub(super) fn new(codecs: CodecSet, remote: Lines) -> Negotiation {
        Negotiation {
            remote,
            version: 0,
            revision: 0,
            outstanding: None,
            receiving: Vec::new(),
            dirty: false,
            next_mid: 0,
            codecs,
        }
    }

    #[cfg(test)]
    pub(super) fn remote(&self) -> &Lines {
        &self.remote
    }

    /// Whether a remote line carries the track `ssrc`.
    pub(super) fn has_track(&self, ssrc: u32) -> bool {
        self.remote.tracks().any(|t| t.ssrc == ssrc)
    }

    /// The remote track on the m-line `mid`.
    pub(super) fn track_of_mid(&self, mid: &str) -> Option<&RemoteTrack> {
        self.remote.tracks().find(|t| t.mid == mid)
    }

    /// The remote SSRCs this client is sent (those of the last offer it answered).
    pub(super) fn receiving(&self) -> &[u32] {
        &self.receiving
    }

    #[cfg(test)]
    pub(super) fn is_outstanding(&self) -> bool {
        self.outstanding.is_some()
    }

    /// Bring the remote lines in line with the call: `codecs` are the call's, `receives`
    /// the client's numbering restricted to them, `desired` every other participant's
    /// tracks (owner, stream, track). Departed tracks turn inactive; a track no line may
    /// take yet waits for the client's next answer. Whether to write an offer now (false
    /// with an offer outstanding: the change is kept for after its answer).
    pub(super) fn update(
        &mut self,
        codecs: &CodecSet,
        receives: &Numbering,
        desired: Vec<(PeerId, String, SentTrack)>,
    ) -> bool {
        // A join or leave that changes the call's codecs changes every description.
        let mut changed = self.codecs != *codecs;
        changed |= self.remote.retire(|owner, ssrc| {
            desired
                .iter()
                .any(|(o, _, d)| *o == owner && d.ssrc == ssrc)
        });
        let mut waiting = 0;
        for (o, stream, d) in desired {
            if !receives.receives_kind(d.kind) || self.remote.has_active(o, d.ssrc) {
                continue;
            }
            let track = RemoteTrack {
                mid: format!("r{}", self.next_mid),
                kind: d.kind,
                stream,
                ssrc: d.ssrc,
                rtx: d.rtx,
                active: true,
            };
            if self.remote.place(track, o) {
                self.next_mid += 1;
                changed = true;
            } else {
                // No line may take it until the client answers: the answer renegotiates.
                waiting += 1;
            }
        }
        if waiting > 0 {
            debug!(waiting, "tracks wait for the client to settle lines");
        }
        if !changed && !self.dirty {
            return false;
        }
        if self.outstanding.is_some() {
            self.dirty = true;
            return false;
        }
        true
    }

    /// Write the next offer with the call's `codecs`: its SDP and revision. It is
    /// outstanding until answered.
    pub(super) fn write_offer(&mut self, codecs: CodecSet, d: &Description<'_>) -> (String, u64) {
        self.codecs = codecs;
        self.revision += 1;
        self.version += 1;
        self.dirty = false;
        let remote: Vec<RemoteTrack> = self.remote.tracks().cloned().collect();
        self.remote.offered(self.revision);
        let sdp = sdp::write_relay_description(
            d.offer,
            &d.numbering.restricted(&codecs),
            &remote,
            &RelayMedia {
                ice_ufrag: d.ice_ufrag,
                ice_pwd: d.ice_pwd,
                fingerprint: d.fingerprint,
                media_addr: d.media_addr,
                session_id: d.session_id,
                version: self.version,
            },
            true,
        );
        let mids = d
            .offer
            .media
            .iter()
            .map(|m| m.mid.clone())
            .chain(remote.iter().map(|t| t.mid.clone()))
            .collect();
        let active = remote.iter().filter(|t| t.active).map(|t| t.ssrc).collect();
        self.outstanding = Some(Outstanding {
            revision: self.revision,
            mids,
            active,
        });
        (sdp, self.revision)
    }

    /// Check an answer against the outstanding offer with `revision`: the SSRCs it
    /// lists (bounded: the relay's SSRC index grows with them). Nothing changes; a
    /// refused answer leaves the offer outstanding.
    pub(super) fn check_answer(&self, sdp: &str, revision: u64) -> Result<Vec<u32>, Refusal> {
        let o = match &self.outstanding {
            Some(o) if o.revision == revision => o,
            _ => {
                return Err((
                    ErrorCode::BadRequest,
                    format!("no offer with revision {revision} is waiting for an answer"),
                ))
            }
        };
        let ssrcs = sdp::check_answer(sdp, &o.mids).map_err(|e| {
            (
                ErrorCode::BadSdp,
                format!("answer to offer {revision}: {e}"),
            )
        })?;
        let lines = o.mids.len();
        if ssrcs.len() > 2 * lines + tracks::MAX_SSRCS_PER_LINE {
            return Err((
                ErrorCode::BadSdp,
                format!(
                    "answer to offer {revision}: {} SSRCs for {lines} m-lines",
                    ssrcs.len()
                ),
            ));
        }
        Ok(ssrcs)
    }

    /// The checked answer to offer `revision` is accepted: the lines inactive in that
    /// offer settle, and the client is sent what it made active. The new receiving set,
    /// if an offer was outstanding.
    pub(super) fn accept_answer(&mut self, revision: u64) -> Option<&[u32]> {
        self.remote.answered(revision);
        let o = self.outstanding.take()?;
        self.receiving = o.active;
        Some(&self.receiving)
    }

    /// Its own bounds: the lines within theirs (checked by [`Lines::check`]) and an
    /// outstanding offer no later than the last written.
    pub(super) fn check(&self) -> Result<(), String> {
        self.remote.check()?;
        if let Some(o) = &self.outstanding {
            if o.revision != self.revision {
                return Err(format!(
                    "negotiation: offer {} outstanding, {} written last",
                    o.revision, self.revision
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blindrelay_protocol::sdp::{build_offer, parse_offer, Layers, OfferParams};
    use blindrelay_protocol::tracks::TrackLimits;

    fn client_offer() -> Offer {
        parse_offer(&build_offer(&OfferParams {
            ice_ufrag: "cufrag",
            ice_pwd: "clientpasswordclientpassword",
            fingerprint: &Fingerprint { sha256: [9; 32] },
            audio_ssrc: 1,
            video_ssrc: 2,
            cname: "c",
            session_id: 1,
        }))
        .expect("parses")
    }

    fn answer_to(offer_sdp: &str) -> String {
        sdp::answer_relay_offer(
            offer_sdp,
            "cli",
            "clientpasswordclientpassword",
            &Fingerprint { sha256: [9; 32] },
        )
        .expect("answerable")
    }

    struct Client {
        offer: Offer,
        numbering: Numbering,
        neg: Negotiation,
    }

    impl Client {
        fn new(limits: &TrackLimits) -> Client {
            let offer = client_offer();
            let numbering = Numbering::from_offer(&offer);
            let codecs = numbering.offered();
            Client {
                neg: Negotiation::new(codecs, Lines::new(limits, 2, 0)),
                offer,
                numbering,
            }
        }

        /// Others' tracks are now `desired`: an offer if one is due.
        fn update(&mut self, desired: &[(PeerId, u32)]) -> Option<(String, u64)> {
            let codecs = self.numbering.offered();
            let receives = self.numbering.restricted(&codecs);
            let desired = desired
                .iter()
                .map(|(o, ssrc)| {
                    let t = SentTrack {
                        kind: "audio",
                        ssrc: *ssrc,
                        rtx: None,
                        layers: Layers::NONE,
                    };
                    (*o, format!("p{o}"), t)
                })
                .collect();
            if !self.neg.update(&codecs, &receives, desired) {
                return None;
            }
            let fp = Fingerprint { sha256: [7; 32] };
            let d = Description {
                offer: &self.offer,
                numbering: &self.numbering,
                ice_ufrag: "relayufrag",
                ice_pwd: "relaypasswordrelaypassword",
                fingerprint: &fp,
                media_addr: "127.0.0.1:7402".parse().expect("literal"),
                session_id: 1,
            };
            Some(self.neg.write_offer(codecs, &d))
        }
    }

    /// An answer must answer the outstanding offer: one to an older (or unknown)
    /// revision is refused and changes nothing, and changes made while an offer waits
    /// are offered after its answer.
    #[test]
    fn an_answer_to_a_stale_revision_is_refused() {
        let limits = TrackLimits { audio: 1, video: 1 };
        let mut c = Client::new(&limits);
        let (sdp1, r1) = c.update(&[(2, 100)]).expect("a track to offer");
        assert_eq!(r1, 1);
        assert!(c.neg.is_outstanding());
        // Another track while offer 1 waits: no second offer.
        assert!(c.update(&[(2, 100), (3, 200)]).is_none());
        let a1 = answer_to(&sdp1);
        assert_eq!(
            c.neg.check_answer(&a1, 2).map_err(|e| e.0),
            Err(ErrorCode::BadRequest),
            "no offer 2 was written"
        );
        c.neg.check_answer(&a1, 1).expect("answers offer 1");
        assert_eq!(c.neg.accept_answer(1), Some(&[100][..]));
        assert!(c.neg.receiving() == [100]);
        // The change that waited is offered now; the answer to offer 1 is stale for it.
        let (sdp2, r2) = c.update(&[(2, 100), (3, 200)]).expect("the folded change");
        assert_eq!(r2, 2);
        let refused = c.neg.check_answer(&a1, 1).map_err(|e| e.0);
        assert_eq!(refused, Err(ErrorCode::BadRequest), "offer 1 was answered");
        // An answer to offer 2 with offer 1's mids does not answer it.
        assert_eq!(
            c.neg.check_answer(&a1, 2).map_err(|e| e.0),
            Err(ErrorCode::BadSdp)
        );
        assert!(
            c.neg.is_outstanding(),
            "a refused answer leaves it outstanding"
        );
        c.neg.check_answer(&answer_to(&sdp2), 2).expect("answers 2");
        let mut got = c.neg.accept_answer(2).expect("outstanding").to_vec();
        got.sort_unstable();
        assert_eq!(got, [100, 200]);
        c.neg.check().expect("consistent");
    }

    /// A line turned inactive is reused for another track only after the client
    /// answered an offer in which it was inactive, not merely any later answer.
    #[test]
    fn a_line_is_reused_only_after_an_answer_showing_it_inactive() {
        // Bound: 2 audio lines for 2 participants.
        let limits = TrackLimits { audio: 1, video: 1 };
        let mut c = Client::new(&limits);
        let (sdp1, r1) = c.update(&[(2, 100)]).expect("offer 1");
        // Owner 2 leaves and 3 comes while offer 1 (showing 2 active) waits.
        assert!(c.update(&[(3, 300)]).is_none());
        assert_eq!(c.neg.remote().len(), 2, "a second line, within the bound");
        // And 4 replaces 3: 3's line was never offered, so 4 takes it at once.
        assert!(c.update(&[(4, 400)]).is_none());
        assert_eq!(c.neg.remote().len(), 2);
        c.neg.check_answer(&answer_to(&sdp1), r1).expect("ok");
        c.neg.accept_answer(r1);
        // Offer 2: line 0 (owner 2) inactive for the first time, line 1 carries 4.
        let (sdp2, r2) = c.update(&[(4, 400)]).expect("offer 2");
        let tracks: Vec<_> = c
            .neg
            .remote()
            .tracks()
            .map(|t| (t.ssrc, t.active))
            .collect();
        assert_eq!(tracks, [(100, false), (400, true)]);
        // 4 leaves, 5 comes before the answer to offer 2: line 0 is not settled (the
        // answer to offer 1 showed it active), line 1 was offered active: 5 waits.
        assert!(c.update(&[(5, 500)]).is_none());
        assert!(!c.neg.remote().has_active(5, 500), "no line for it yet");
        // The answer to offer 2 settles line 0; 5 takes it in offer 3.
        c.neg.check_answer(&answer_to(&sdp2), r2).expect("ok");
        c.neg.accept_answer(r2);
        let (_, r3) = c.update(&[(5, 500)]).expect("offer 3");
        assert_eq!(r3, 3);
        let tracks: Vec<_> = c
            .neg
            .remote()
            .tracks()
            .map(|t| (t.ssrc, t.active))
            .collect();
        assert_eq!(tracks, [(500, true), (400, false)]);
        c.neg.check().expect("consistent");
    }
}
