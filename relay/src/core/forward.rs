//! One forwarding loop's state: the participants pinned to it, their hop SRTP contexts,
//! and who receives what. SRTP is unprotected with the sender's context, the RTP header is
//! read to route, and the same bytes are protected for each receiver: the payload (the
//! end-to-end encrypted frame) is never parsed or changed.

use super::{CallKey, PeerId};
use crate::metrics::DropReason;
use blindrelay_protocol::rtcp::{self, RtcpRoute};
use blindrelay_protocol::rtp::RtpHeader;
use blindrelay_transport::hop::{HopContext, HopError};
// foldhash, seeded per process: SipHash was ~2 % of the relay's CPU at 300k packets/s.
use foldhash::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

/// A hook that sees every RTP packet as the relay holds it after hop decryption (clear
/// header, end-to-end payload). Tests and the pcap capture use it to prove the relay holds
/// only ciphertext.
pub type MediaTap = Arc<dyn Fn(&TapPacket<'_>) + Send + Sync>;

/// One RTP packet handed to a [`MediaTap`]: who sent it and in which call, so a tap can
/// filter by call and write the sender's address without another lookup.
#[derive(Debug, Clone, Copy)]
pub struct TapPacket<'a> {
    /// The sender's transport address (its fixed ICE 5-tuple).
    pub from: SocketAddr,
    /// The call the packet belongs to.
    pub call: CallKey,
    /// The RTP packet after hop decryption: clear header, end-to-end payload.
    pub data: &'a [u8],
}

/// One datagram to send: its receiver, and where its bytes lie in the [`Outbox`] arena.
/// Small and `Copy`, so queuing one allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    /// Offset of the datagram in [`Outbox::arena`].
    pub start: usize,
    /// Length of the datagram.
    pub len: usize,
    pub rtcp: bool,
}

impl Transmit {
    /// Where the datagram lies in [`Outbox::arena`].
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }
}

/// The datagrams a forwarding loop queued, in order. Their bytes lie back to back in one
/// arena that is cleared, not freed, between batches: once it has grown to the working
/// size, forwarding allocates nothing per packet, and consecutive datagrams to one
/// receiver are already contiguous for a GSO send.
#[derive(Debug, Default)]
pub struct Outbox {
    arena: Vec<u8>,
    transmits: Vec<Transmit>,
}

impl Outbox {
    /// Room for `packets` datagrams totalling `bytes` before the first growth.
    pub fn with_capacity(packets: usize, bytes: usize) -> Self {
        Outbox {
            arena: Vec::with_capacity(bytes),
            transmits: Vec::with_capacity(packets),
        }
    }

    /// Forget every datagram, keeping the memory for the next batch.
    pub fn clear(&mut self) {
        self.arena.clear();
        self.transmits.clear();
    }

    pub fn len(&self) -> usize {
        self.transmits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.transmits.is_empty()
    }

    /// The queued datagrams, in order.
    pub fn transmits(&self) -> &[Transmit] {
        &self.transmits
    }

    /// Every queued datagram's bytes, back to back.
    pub fn arena(&self) -> &[u8] {
        &self.arena
    }

    /// The bytes of `t`, one of this outbox's transmits.
    pub fn data(&self, t: &Transmit) -> &[u8] {
        &self.arena[t.range()]
    }

    /// The bytes of the `i`th datagram, if there is one.
    pub fn get(&self, i: usize) -> Option<(Transmit, &[u8])> {
        let t = *self.transmits.get(i)?;
        Some((t, self.arena.get(t.range())?))
    }

    /// Protect `clear` with `ctx` straight into the arena and queue it for `to`.
    fn push(
        &mut self,
        to: SocketAddr,
        rtcp: bool,
        ctx: &mut HopContext,
        clear: &[u8],
    ) -> Result<(), DropReason> {
        let r = if rtcp {
            ctx.protect_rtcp_into(clear, &mut self.arena)
        } else {
            ctx.protect_rtp_into(clear, &mut self.arena)
        }
        .map_err(|_| DropReason::SrtpProtectFailed)?;
        self.transmits.push(Transmit {
            to,
            start: r.start,
            len: r.len(),
            rtcp,
        });
        Ok(())
    }
}

/// A participant's hop state on its way from one call (or loop) to another.
pub struct PeerTransfer {
    pub addr: SocketAddr,
    pub inbound: HopContext,
    pub outbound: HopContext,
    pub ssrcs: Vec<u32>,
}

struct PeerMedia {
    call: CallKey,
    addr: SocketAddr,
    inbound: HopContext,
    outbound: HopContext,
}

/// Forwarding state of one worker loop.
#[derive(Default)]
pub struct Forwarder {
    peers: HashMap<PeerId, PeerMedia>,
    calls: HashMap<CallKey, Vec<PeerId>>,
    ssrc_owner: HashMap<(CallKey, u32), PeerId>,
    tap: Option<MediaTap>,
    /// Reused list of receivers, so routing does not allocate.
    scratch: Vec<PeerId>,
    /// Reused buffer for the clear packet (the in-place SRTP path unprotects into it).
    clear: Vec<u8>,
    /// Reused list of an RTCP compound's receivers, in order of first appearance.
    rtcp_dests: Vec<PeerId>,
    /// Reused buffer where one receiver's share of an RTCP compound is assembled.
    rtcp_part: Vec<u8>,
}

fn hop_drop(e: HopError) -> DropReason {
    match e {
        HopError::AuthFailed => DropReason::SrtpAuthFailed,
        HopError::Replay => DropReason::SrtpReplay,
        HopError::Malformed => DropReason::SrtpMalformed,
        HopError::Protect => DropReason::SrtpProtectFailed,
    }
}

impl Forwarder {
    pub fn new(tap: Option<MediaTap>) -> Self {
        Forwarder {
            tap,
            ..Default::default()
        }
    }

    /// Start forwarding for a participant whose DTLS handshake finished.
    pub fn add_peer(
        &mut self,
        peer: PeerId,
        call: CallKey,
        addr: SocketAddr,
        inbound: HopContext,
        outbound: HopContext,
        ssrcs: &[u32],
    ) {
        for s in ssrcs {
            self.ssrc_owner.insert((call, *s), peer);
        }
        self.peers.insert(
            peer,
            PeerMedia {
                call,
                addr,
                inbound,
                outbound,
            },
        );
        let members = self.calls.entry(call).or_default();
        if !members.contains(&peer) {
            members.push(peer);
        }
    }

    pub fn remove_peer(&mut self, peer: PeerId) {
        let _ = self.take_peer(peer);
    }

    /// Remove a participant and hand back its hop state, to re-home it in another call
    /// (merge), possibly on another forwarding loop.
    pub fn take_peer(&mut self, peer: PeerId) -> Option<PeerTransfer> {
        let p = self.peers.remove(&peer)?;
        if let Some(m) = self.calls.get_mut(&p.call) {
            m.retain(|x| *x != peer);
            if m.is_empty() {
                self.calls.remove(&p.call);
            }
        }
        let mut ssrcs = Vec::new();
        self.ssrc_owner.retain(|(_, ssrc), owner| {
            let mine = *owner == peer;
            if mine {
                ssrcs.push(*ssrc);
            }
            !mine
        });
        Some(PeerTransfer {
            addr: p.addr,
            inbound: p.inbound,
            outbound: p.outbound,
            ssrcs,
        })
    }

    pub fn has_peer(&self, peer: PeerId) -> bool {
        self.peers.contains_key(&peer)
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Unprotect an SRTP packet from `from` and protect it for every other participant of
    /// its call, appending to `out`. Returns how many transmits were queued.
    pub fn on_rtp(
        &mut self,
        from: PeerId,
        data: &[u8],
        out: &mut Outbox,
    ) -> Result<usize, DropReason> {
        let sender = self.peers.get_mut(&from).ok_or(DropReason::NotConnected)?;
        let plain = sender
            .inbound
            .unprotect_rtp(data, &mut self.clear)
            .map_err(hop_drop)?;
        let hdr = RtpHeader::parse(plain).map_err(|_| DropReason::RtpMalformed)?;
        let call = sender.call;
        let from_addr = sender.addr;
        self.ssrc_owner.entry((call, hdr.ssrc)).or_insert(from);
        if let Some(tap) = &self.tap {
            tap(&TapPacket {
                from: from_addr,
                call,
                data: plain,
            });
        }
        self.scratch.clear();
        if let Some(members) = self.calls.get(&call) {
            self.scratch
                .extend(members.iter().copied().filter(|p| *p != from));
        }
        let mut n = 0;
        for to in &self.scratch {
            let Some(r) = self.peers.get_mut(to) else {
                continue;
            };
            out.push(r.addr, false, &mut r.outbound, plain)?;
            n += 1;
        }
        Ok(n)
    }

    /// Unprotect an SRTCP compound packet and route each packet in it: sender-side reports
    /// (SR, SDES, BYE) to every other participant, receiver-side ones (RR, NACK, PLI, FIR)
    /// to whoever sends the SSRC they are about. Each receiver gets one compound of the
    /// packets meant for it, in their original order; receivers are served in the order
    /// they first appear. Returns how many transmits were queued.
    pub fn on_rtcp(
        &mut self,
        from: PeerId,
        data: &[u8],
        out: &mut Outbox,
    ) -> Result<usize, DropReason> {
        // Split borrows: the clear compound lives in `clear` while the other scratch
        // buffers and the receivers' contexts are used.
        let Forwarder {
            peers,
            calls,
            ssrc_owner,
            scratch: members,
            clear,
            rtcp_dests: dests,
            rtcp_part: part,
            ..
        } = self;
        let sender = peers.get_mut(&from).ok_or(DropReason::NotConnected)?;
        let plain = sender
            .inbound
            .unprotect_rtcp(data, clear)
            .map_err(hop_drop)?;
        let call = sender.call;
        members.clear();
        if let Some(m) = calls.get(&call) {
            members.extend(m.iter().copied().filter(|p| *p != from));
        }
        // Who gets something, in order of first appearance. The whole compound is parsed
        // before anything is queued, so a malformed one queues nothing.
        dests.clear();
        for p in rtcp::packets(plain) {
            let p = p.map_err(|_| DropReason::RtpMalformed)?;
            for d in route(p.route(), call, from, members, ssrc_owner) {
                if !dests.contains(d) {
                    dests.push(*d);
                }
            }
        }
        let mut n = 0;
        for to in dests.iter() {
            // This receiver's share, in the compound's order.
            part.clear();
            for p in rtcp::packets(plain).flatten() {
                if route(p.route(), call, from, members, ssrc_owner).contains(to) {
                    part.extend_from_slice(p.bytes);
                }
            }
            let Some(r) = peers.get_mut(to) else {
                continue;
            };
            out.push(r.addr, true, &mut r.outbound, part)?;
            n += 1;
        }
        Ok(n)
    }
}

/// The receivers of one RTCP packet from `from`: `members` (the call minus `from`) for
/// sender-side reports, the media sender of the SSRC concerned (unless that is `from`)
/// for feedback, nobody for what ends at the relay.
fn route<'a>(
    route: RtcpRoute,
    call: CallKey,
    from: PeerId,
    members: &'a [PeerId],
    ssrc_owner: &'a HashMap<(CallKey, u32), PeerId>,
) -> &'a [PeerId] {
    match route {
        RtcpRoute::Others => members,
        RtcpRoute::MediaSender(ssrc) => match ssrc_owner.get(&(call, ssrc)) {
            Some(owner) if *owner != from => std::slice::from_ref(owner),
            _ => &[],
        },
        RtcpRoute::Terminate => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc_srtp::protection_profile::ProtectionProfile;

    use webrtc_srtp::context::Context;

    fn hop(c: Context) -> HopContext {
        HopContext::Reference(Box::new(c))
    }

    fn fast(key: u8) -> HopContext {
        HopContext::Fast(Box::new(
            blindrelay_transport::fast_srtp::FastGcmContext::new(&[key; 16], &[key; 12]).unwrap(),
        ))
    }

    fn ctx(key: u8) -> Context {
        Context::new(
            &[key; 16],
            &[key; 12],
            ProtectionProfile::AeadAes128Gcm,
            None,
            None,
        )
        .unwrap()
    }
    fn ctx_replay(key: u8) -> Context {
        Context::new(
            &[key; 16],
            &[key; 12],
            ProtectionProfile::AeadAes128Gcm,
            Some(webrtc_srtp::option::srtp_replay_protection(64)),
            Some(webrtc_srtp::option::srtcp_replay_protection(64)),
        )
        .unwrap()
    }

    fn rtp(ssrc: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        RtpHeader {
            marker: false,
            payload_type: 96,
            sequence: seq,
            timestamp: 1,
            ssrc,
            header_len: 12,
            padding_len: 0,
        }
        .write_minimal(&mut b);
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn forwards_payload_unchanged_and_refuses_replay() {
        let mut f = Forwarder::new(None);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        // a sends with key 1 (relay inbound 1); relay sends to b with key 2.
        // The relay side runs the in-place GCM path; the clients run webrtc-srtp.
        f.add_peer(1, 7, a, fast(1), fast(3), &[100]);
        f.add_peer(2, 7, b, fast(4), fast(2), &[200]);
        let mut client_a_out = ctx(1);
        let mut client_b_in = ctx_replay(2);
        let pkt = rtp(100, 1, b"opaque e2ee frame");
        let wire = client_a_out.encrypt_rtp(&pkt).unwrap();
        let mut out = Outbox::default();
        assert_eq!(f.on_rtp(1, &wire, &mut out), Ok(1));
        assert_eq!(out.len(), 1);
        assert_eq!(out.transmits()[0].to, b);
        let got = client_b_in
            .decrypt_rtp(out.data(&out.transmits()[0]))
            .unwrap();
        assert_eq!(&got[..], &pkt[..]);
        assert_eq!(f.on_rtp(1, &wire, &mut out), Err(DropReason::SrtpReplay));
        // A fresh index with a damaged tag: authentication, not replay, refuses it.
        let mut bad = client_a_out
            .encrypt_rtp(&rtp(100, 2, b"opaque"))
            .unwrap()
            .to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(f.on_rtp(1, &bad, &mut out), Err(DropReason::SrtpAuthFailed));
        assert_eq!(f.on_rtp(3, &wire, &mut out), Err(DropReason::NotConnected));
    }

    #[test]
    fn tap_sees_sender_call_and_clear_packet() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let tap: MediaTap = Arc::new(move |p: &TapPacket<'_>| {
            s2.lock().unwrap().push((p.from, p.call, p.data.to_vec()));
        });
        let mut f = Forwarder::new(Some(tap));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        f.add_peer(1, 7, a, hop(ctx_replay(1)), hop(ctx(3)), &[100]);
        f.add_peer(
            2,
            7,
            "127.0.0.1:2".parse().unwrap(),
            hop(ctx_replay(4)),
            hop(ctx(2)),
            &[200],
        );
        let pkt = rtp(100, 1, b"opaque e2ee frame");
        let wire = ctx(1).encrypt_rtp(&pkt).unwrap();
        assert_eq!(f.on_rtp(1, &wire, &mut Outbox::default()), Ok(1));
        assert_eq!(*seen.lock().unwrap(), vec![(a, 7, pkt)]);
    }

    #[test]
    fn pli_goes_to_the_media_sender_only() {
        let mut f = Forwarder::new(None);
        f.add_peer(
            1,
            7,
            "127.0.0.1:1".parse().unwrap(),
            hop(ctx_replay(1)),
            hop(ctx(11)),
            &[100],
        );
        f.add_peer(
            2,
            7,
            "127.0.0.1:2".parse().unwrap(),
            hop(ctx_replay(2)),
            hop(ctx(12)),
            &[200],
        );
        f.add_peer(
            3,
            7,
            "127.0.0.1:3".parse().unwrap(),
            hop(ctx_replay(3)),
            hop(ctx(13)),
            &[300],
        );
        let mut c2 = ctx(2);
        let wire = c2.encrypt_rtcp(&rtcp::pli(200, 100)).unwrap();
        let mut out = Outbox::default();
        assert_eq!(f.on_rtcp(2, &wire, &mut out), Ok(1));
        assert_eq!(out.len(), 1);
        let (t, data) = out.get(0).unwrap();
        assert!(t.rtcp);
        assert_eq!(t.to, "127.0.0.1:1".parse::<SocketAddr>().unwrap());
        let plain = ctx_replay(11).decrypt_rtcp(data).unwrap();
        assert_eq!(&plain[..], &rtcp::pli(200, 100)[..]);
    }

    /// A compound from participant 2 (SR, an RR about 3's stream, a PLI about 1's) in a
    /// three-party call: each receiver gets one compound of what concerns it, in order.
    #[test]
    fn rtcp_compound_is_split_per_receiver() {
        let mut f = Forwarder::new(None);
        let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        f.add_peer(1, 7, addr(1), fast(1), fast(11), &[100]);
        f.add_peer(2, 7, addr(2), fast(2), fast(12), &[200]);
        f.add_peer(3, 7, addr(3), fast(3), fast(13), &[300]);
        let mut sr = vec![0x80, rtcp::PT_SR, 0, 6];
        sr.extend_from_slice(&200u32.to_be_bytes());
        sr.extend_from_slice(&[0; 20]);
        let rr = rtcp::receiver_report(200, 300, 0, 0, 10);
        let pli = rtcp::pli(200, 100);
        // An RR without report blocks ends at the relay.
        let empty_rr = [0x80, rtcp::PT_RR, 0, 1, 0, 0, 0, 200];
        let mut compound = sr.clone();
        compound.extend_from_slice(&rr);
        compound.extend_from_slice(&empty_rr);
        compound.extend_from_slice(&pli);
        let mut c2 = ctx(2);
        let wire = c2.encrypt_rtcp(&compound).unwrap();
        let mut out = Outbox::default();
        assert_eq!(f.on_rtcp(2, &wire, &mut out), Ok(2));
        let (t1, d1) = out.get(0).unwrap();
        let (t3, d3) = out.get(1).unwrap();
        assert!(t1.rtcp && t3.rtcp);
        assert_eq!((t1.to, t3.to), (addr(1), addr(3)));
        let to1 = [&sr[..], &pli[..]].concat();
        let to3 = [&sr[..], &rr[..]].concat();
        assert_eq!(&ctx_replay(11).decrypt_rtcp(d1).unwrap()[..], &to1[..]);
        assert_eq!(&ctx_replay(13).decrypt_rtcp(d3).unwrap()[..], &to3[..]);
        assert_eq!(out.arena().len(), d1.len() + d3.len());

        // A malformed packet anywhere in the compound queues nothing.
        let mut bad = compound.clone();
        bad.extend_from_slice(&[0x80, rtcp::PT_SR, 0, 9]);
        let wire = c2.encrypt_rtcp(&bad).unwrap();
        let mut out = Outbox::default();
        assert_eq!(f.on_rtcp(2, &wire, &mut out), Err(DropReason::RtpMalformed));
        assert!(out.is_empty() && out.arena().is_empty());
    }
}
