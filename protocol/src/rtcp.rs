//! RTCP compound packet walking (RFC 3550 §6, RFC 4585). The relay needs only each
//! packet's type and the SSRC it is about, to decide where the packet goes.

use thiserror::Error;

pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
pub const PT_SDES: u8 = 202;
pub const PT_BYE: u8 = 203;
pub const PT_APP: u8 = 204;
pub const PT_RTPFB: u8 = 205;
pub const PT_PSFB: u8 = 206;
pub const PT_XR: u8 = 207;

/// Why a buffer is not a well-formed RTCP compound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtcpError {
    #[error("RTCP packet shorter than its header or its length field")]
    Truncated,
    #[error("RTCP version is not 2")]
    BadVersion,
}

/// Where one RTCP packet of a compound packet must go, as an SFU that does not rewrite
/// SSRCs sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpRoute {
    /// Sender-side information (SR, SDES, BYE, APP, XR): to every other participant.
    Others,
    /// Receiver-side information about one media stream (RR blocks, NACK, PLI, FIR):
    /// to whoever sends that SSRC.
    MediaSender(u32),
    /// A receiver report: each report block goes to whoever sends the SSRC it is about
    /// (see [`report_blocks`]).
    ReportBlocks,
    /// Nothing to route on (an RR without report blocks, a feedback message without a
    /// media SSRC), or feedback that belongs to the hop it arrived on (transport-cc,
    /// REMB): terminated at the relay.
    Terminate,
}

/// Transport-wide congestion control feedback (RTPFB FMT 15).
pub const FMT_TRANSPORT_CC: u8 = 15;
/// Application-layer feedback (PSFB FMT 15): REMB.
pub const FMT_AFB: u8 = 15;

/// One packet inside a compound RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpPacket<'a> {
    pub packet_type: u8,
    /// The count / FMT field (low five bits of the first byte).
    pub fmt: u8,
    pub sender_ssrc: Option<u32>,
    pub bytes: &'a [u8],
}

impl RtcpPacket<'_> {
    /// Where this packet goes (see [`RtcpRoute`]).
    pub fn route(&self) -> RtcpRoute {
        let b = self.bytes;
        let u32_at = |o: usize| {
            b.get(o..o + 4)
                .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        };
        match self.packet_type {
            PT_SR | PT_SDES | PT_BYE | PT_APP | PT_XR => RtcpRoute::Others,
            // RR: each report block is about one sender.
            PT_RR if self.fmt > 0 => RtcpRoute::ReportBlocks,
            PT_RR => RtcpRoute::Terminate,
            // Congestion feedback describes the hop it came on; the relay answers each
            // sender's hop itself.
            PT_RTPFB if self.fmt == FMT_TRANSPORT_CC => RtcpRoute::Terminate,
            PT_PSFB if self.fmt == FMT_AFB => RtcpRoute::Terminate,
            PT_RTPFB | PT_PSFB => {
                // Media source at offset 8; FIR (PSFB fmt 4) puts it in the FCI instead.
                let media = if self.packet_type == PT_PSFB && self.fmt == 4 {
                    u32_at(12)
                } else {
                    u32_at(8)
                };
                match media {
                    Some(0) | None => RtcpRoute::Terminate,
                    Some(ssrc) => RtcpRoute::MediaSender(ssrc),
                }
            }
            _ => RtcpRoute::Terminate,
        }
    }
}

/// Iterate the packets of a compound RTCP packet, checking every length field.
pub fn packets(buf: &[u8]) -> impl Iterator<Item = Result<RtcpPacket<'_>, RtcpError>> {
    let mut rest = buf;
    let mut failed = false;
    std::iter::from_fn(move || {
        if rest.is_empty() || failed {
            return None;
        }
        let r = parse_one(rest);
        match r {
            Ok((p, tail)) => {
                rest = tail;
                Some(Ok(p))
            }
            Err(e) => {
                failed = true;
                Some(Err(e))
            }
        }
    })
}

fn parse_one(buf: &[u8]) -> Result<(RtcpPacket<'_>, &[u8]), RtcpError> {
    if buf.len() < 4 {
        return Err(RtcpError::Truncated);
    }
    if buf[0] >> 6 != 2 {
        return Err(RtcpError::BadVersion);
    }
    let len = (u16::from_be_bytes([buf[2], buf[3]]) as usize + 1) * 4;
    if buf.len() < len {
        return Err(RtcpError::Truncated);
    }
    let (bytes, tail) = buf.split_at(len);
    let sender_ssrc = bytes
        .get(4..8)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]));
    Ok((
        RtcpPacket {
            packet_type: bytes[1],
            fmt: bytes[0] & 0x1f,
            sender_ssrc,
            bytes,
        },
        tail,
    ))
}

/// The SSRCs a sender-side packet speaks for: the sender of an SR, APP or XR, each SSRC a
/// BYE lists, each SDES chunk's. A relay that forwards the packet to others must own
/// them all to the hop it came on: otherwise it is one participant speaking for
/// another's stream (a BYE that ends it at every receiver, say). A BYE or SDES whose
/// list overruns the packet yields [`RtcpError::Truncated`] and ends there.
pub fn source_ssrcs<'a>(p: &RtcpPacket<'a>) -> impl Iterator<Item = Result<u32, RtcpError>> + 'a {
    let b = p.bytes;
    let packet_type = p.packet_type;
    let count = usize::from(p.fmt);
    let u32_at = move |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
            .ok_or(RtcpError::Truncated)
    };
    // (SSRCs or chunks yielded, offset of the next, done)
    let mut state = (0usize, 4usize, false);
    std::iter::from_fn(move || {
        let (n, pos, done) = &mut state;
        if *done {
            return None;
        }
        let item = match packet_type {
            PT_BYE | PT_SDES if *n >= count => None,
            PT_BYE => Some(u32_at(*pos)),
            PT_SDES => Some(u32_at(*pos).and_then(|ssrc| {
                // Items (type, length, text) up to a zero type, then padding to 32 bits.
                let mut at = *pos + 4;
                loop {
                    match b.get(at) {
                        None => return Err(RtcpError::Truncated),
                        Some(0) => break,
                        Some(_) => {
                            let len = *b.get(at + 1).ok_or(RtcpError::Truncated)?;
                            at += 2 + usize::from(len);
                        }
                    }
                }
                // The chunk ends after the zero type, padded to the next 32-bit boundary.
                *pos = (at + 1).next_multiple_of(4) - 4;
                Ok(ssrc)
            })),
            _ if *n >= 1 => None,
            _ => Some(u32_at(4)),
        };
        *n += 1;
        *pos += 4;
        match item {
            Some(Err(e)) => {
                *done = true;
                Some(Err(e))
            }
            None => {
                *done = true;
                None
            }
            some => some,
        }
    })
}

/// Whether a feedback packet asks the media sender for a keyframe: PLI (RFC 4585
/// §6.3.1) or FIR (RFC 5104 §4.3.1).
pub fn is_keyframe_request(p: &RtcpPacket<'_>) -> bool {
    p.packet_type == PT_PSFB && (p.fmt == 1 || p.fmt == 4)
}

/// How many lost-packet entries (PID + BLP, up to 17 packets each) a generic NACK
/// (RFC 4585 §6.2.1) carries; `None` for any other packet.
pub fn nack_entries(p: &RtcpPacket<'_>) -> Option<usize> {
    (p.packet_type == PT_RTPFB && p.fmt == 1).then(|| p.bytes.len().saturating_sub(12) / 4)
}

/// The sequence numbers a generic NACK (RFC 4585 §6.2.1) reports lost, in order: each
/// entry's PID, then each packet its bitmask (BLP) adds. Empty for any other packet.
pub fn nack_lost<'a>(p: &RtcpPacket<'a>) -> impl Iterator<Item = u16> + 'a {
    let fci = if nack_entries(p).is_some() {
        p.bytes.get(12..).unwrap_or(&[])
    } else {
        &[]
    };
    fci.chunks_exact(4).flat_map(|e| {
        let pid = u16::from_be_bytes([e[0], e[1]]);
        let blp = u16::from_be_bytes([e[2], e[3]]);
        std::iter::once(pid).chain(
            (0..16u16)
                .filter(move |i| blp & (1 << i) != 0)
                .map(move |i| pid.wrapping_add(i + 1)),
        )
    })
}

/// Append a generic NACK from `sender` about `media` asking for `lost` (in increasing
/// order, modulo 2^16), packing each run of 17 into one entry. Writes nothing when
/// `lost` is empty.
pub fn write_nack(out: &mut Vec<u8>, sender: u32, media: u32, lost: impl Iterator<Item = u16>) {
    let start = out.len();
    out.extend_from_slice(&[0x81, PT_RTPFB, 0, 0]);
    out.extend_from_slice(&sender.to_be_bytes());
    out.extend_from_slice(&media.to_be_bytes());
    let mut entry: Option<(u16, u16)> = None;
    let flush = |out: &mut Vec<u8>, e: Option<(u16, u16)>| {
        if let Some((pid, blp)) = e {
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&blp.to_be_bytes());
        }
    };
    for seq in lost {
        entry = match entry {
            Some((pid, blp)) => match seq.wrapping_sub(pid) {
                d @ 1..=16 => Some((pid, blp | 1 << (d - 1))),
                _ => {
                    flush(out, Some((pid, blp)));
                    Some((seq, 0))
                }
            },
            None => Some((seq, 0)),
        };
    }
    flush(out, entry);
    if out.len() == start + 12 {
        out.truncate(start);
        return;
    }
    let words = ((out.len() - start) / 4 - 1) as u16;
    out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
}

/// The report blocks of a receiver report: (source SSRC, the 24-byte block).
pub fn report_blocks<'a>(rr: &RtcpPacket<'a>) -> impl Iterator<Item = (u32, &'a [u8])> {
    let n = if rr.packet_type == PT_RR {
        rr.fmt as usize
    } else {
        0
    };
    let body = rr.bytes.get(8..).unwrap_or(&[]);
    body.chunks_exact(24)
        .take(n)
        .map(|b| (u32::from_be_bytes([b[0], b[1], b[2], b[3]]), b))
}

/// The header of a receiver report with one block, from `sender`: prepend to a block
/// from [`report_blocks`].
pub fn rr_header(sender: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0] = 0x81;
    h[1] = PT_RR;
    h[3] = 7;
    h[4..8].copy_from_slice(&sender.to_be_bytes());
    h
}

/// Sender SSRC of the first packet: the SRTCP replay/key state is keyed on it.
pub fn first_sender_ssrc(buf: &[u8]) -> Option<u32> {
    buf.get(4..8)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Build a PLI (RFC 4585 §6.3.1) from `sender` about `media`.
pub fn pli(sender: u32, media: u32) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0] = 0x81;
    p[1] = PT_PSFB;
    p[3] = 2;
    p[4..8].copy_from_slice(&sender.to_be_bytes());
    p[8..12].copy_from_slice(&media.to_be_bytes());
    p
}

/// Build a receiver report with one report block about `media`.
pub fn receiver_report(
    sender: u32,
    media: u32,
    fraction_lost: u8,
    cumulative_lost: u32,
    highest_seq: u32,
) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = 0x81;
    p[1] = PT_RR;
    p[3] = 7;
    p[4..8].copy_from_slice(&sender.to_be_bytes());
    p[8..12].copy_from_slice(&media.to_be_bytes());
    p[12] = fraction_lost;
    let lost = cumulative_lost.min(0x00ff_ffff).to_be_bytes();
    p[13..16].copy_from_slice(&lost[1..4]);
    p[16..20].copy_from_slice(&highest_seq.to_be_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NACK written for a set of lost packets reads back as the same set, across a
    /// sequence number wrap, with runs of 17 in one entry.
    #[test]
    fn nack_round_trips() {
        let lost: Vec<u16> = [65530u16, 65531, 65535, 0, 3, 30, 31, 60]
            .into_iter()
            .collect();
        let mut buf = Vec::new();
        write_nack(&mut buf, 1, 0xabcd, lost.iter().copied());
        let p = packets(&buf).next().unwrap().unwrap();
        assert_eq!(p.route(), RtcpRoute::MediaSender(0xabcd));
        assert_eq!(
            nack_entries(&p),
            Some(3),
            "65530 (to 3, 9 after it), 30, 60"
        );
        let back: Vec<u16> = nack_lost(&p).collect();
        assert_eq!(back, lost);
        let mut empty = Vec::new();
        write_nack(&mut empty, 1, 2, std::iter::empty());
        assert!(empty.is_empty());
        // Any other packet reports nothing lost.
        let pli = pli(1, 2);
        let p = packets(&pli).next().unwrap().unwrap();
        assert_eq!(nack_lost(&p).count(), 0);
    }

    #[test]
    fn walks_compound_and_routes() {
        let mut c = Vec::new();
        c.extend_from_slice(&receiver_report(1, 2, 0, 0, 10));
        c.extend_from_slice(&pli(1, 3));
        let ps: Vec<_> = packets(&c).collect::<Result<_, _>>().unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].route(), RtcpRoute::ReportBlocks);
        let blocks: Vec<_> = report_blocks(&ps[0]).collect();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].0, 2);
        assert_eq!(ps[1].route(), RtcpRoute::MediaSender(3));
        assert_eq!(ps[1].sender_ssrc, Some(1));
    }

    #[test]
    fn hop_feedback_is_terminated_and_blocks_split() {
        let mut twcc = pli(1, 5);
        twcc[0] = 0x80 | FMT_TRANSPORT_CC;
        twcc[1] = PT_RTPFB;
        let mut remb = pli(1, 5);
        remb[0] = 0x80 | FMT_AFB;
        for p in [twcc, remb] {
            let p = packets(&p).next().unwrap().unwrap();
            assert_eq!(p.route(), RtcpRoute::Terminate);
        }
        // Two blocks, about 7 and 9.
        let mut rr = receiver_report(1, 7, 0, 0, 1).to_vec();
        rr.extend_from_slice(&receiver_report(1, 9, 0, 0, 2)[8..]);
        rr[0] = 0x82;
        rr[3] = 13;
        let p = packets(&rr).next().unwrap().unwrap();
        let ssrcs: Vec<u32> = report_blocks(&p).map(|(s, _)| s).collect();
        assert_eq!(ssrcs, vec![7, 9]);
        let mut one = rr_header(1).to_vec();
        one.extend_from_slice(report_blocks(&p).nth(1).unwrap().1);
        let q = packets(&one).next().unwrap().unwrap();
        assert_eq!(
            report_blocks(&q).map(|(s, _)| s).collect::<Vec<_>>(),
            vec![9]
        );
    }

    /// The SSRCs an SR, BYE and SDES speak for; a chunk list that overruns is an error.
    #[test]
    fn source_ssrcs_of_sender_reports() {
        let ssrcs = |b: &[u8]| {
            let p = packets(b).next().unwrap().unwrap();
            source_ssrcs(&p).collect::<Vec<_>>()
        };
        let mut sr = vec![0x80, PT_SR, 0, 6, 0, 0, 0, 5];
        sr.extend_from_slice(&[0; 20]);
        assert_eq!(ssrcs(&sr), [Ok(5)]);
        let bye = [0x82, PT_BYE, 0, 2, 0, 0, 0, 7, 0, 0, 0, 9];
        assert_eq!(ssrcs(&bye), [Ok(7), Ok(9)]);
        // Two chunks: 7 with a CNAME of 3 bytes (one chunk word of padding), 9 with none.
        let sdes = [
            0x82, PT_SDES, 0, 5, 0, 0, 0, 7, 1, 3, b'a', b'b', b'c', 0, 0, 0, 0, 0, 0, 9, 0, 0, 0,
            0,
        ];
        assert_eq!(ssrcs(&sdes), [Ok(7), Ok(9)]);
        let mut overrun = sdes;
        overrun[9] = 200;
        assert_eq!(ssrcs(&overrun), [Err(RtcpError::Truncated)]);
        // A BYE counting more SSRCs than it holds.
        let bye = [0x83, PT_BYE, 0, 2, 0, 0, 0, 7, 0, 0, 0, 9];
        assert_eq!(ssrcs(&bye), [Ok(7), Ok(9), Err(RtcpError::Truncated)]);
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut p = pli(1, 2).to_vec();
        p[3] = 9;
        assert_eq!(packets(&p).next(), Some(Err(RtcpError::Truncated)));
        assert_eq!(
            packets(&[0x80, 200]).next(),
            Some(Err(RtcpError::Truncated))
        );
        assert_eq!(
            packets(&[0x00, 200, 0, 0]).next(),
            Some(Err(RtcpError::BadVersion))
        );
    }
}
