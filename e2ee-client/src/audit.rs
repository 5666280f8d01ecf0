//! `e2ee-client audit`: read a pcap of what a relay holds (its `--capture`, or any capture
//! of clear RTP) and say whether the relay is blind: every frame it forwards is an SFrame
//! ciphertext and no known plaintext (the `--canary`) appears anywhere.
//!
//! The pcap reader is our own and small on purpose (classic libpcap, both byte orders;
//! LINKTYPE_RAW, Ethernet, Linux cooked; IPv4/IPv6 + UDP): an auditor can read all of it.
//! Frames are reassembled per SSRC exactly as a receiving client does it
//! ([`StreamReceiver`]), so "frame" means the same thing here and in the call.

use crate::media::StreamReceiver;
use crate::sframe;
use blindrelay_protocol::rtp::RtpHeader;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufReader, ErrorKind, Read};
use std::path::Path;
use thiserror::Error;

/// Share of a stream's frames that must parse as SFrame for the relay to count as blind.
/// Not 100%: a capture that starts mid-frame yields one fragment that may not.
pub const MIN_SFRAME_SHARE: f64 = 0.99;
/// SFrame authentication tag length of every RFC 9605 suite we use (AES-GCM, 16 bytes).
pub const SFRAME_TAG_LEN: usize = 16;
/// The magic that starts every plaintext frame of `e2ee-client` (see [`crate::media`]).
pub const PLAINTEXT_MAGIC: &[u8; 4] = b"BRF1";
/// Largest record we accept: far above any snap length tools use, so a larger one means a
/// corrupt file rather than a big packet.
const MAX_RECORD: u32 = 1 << 20;

/// Why a capture cannot be audited. The CLI exits with status 2 on any of these.
#[derive(Debug, Error)]
pub enum AuditError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not a pcap file: the file is shorter than the 24-byte pcap header")]
    TooShort,
    #[error("pcapng is not supported; convert it with `editcap -F pcap IN OUT`")]
    Pcapng,
    #[error("not a pcap file (magic {0:08x})")]
    BadMagic(u32),
    #[error("unsupported pcap link type {0} (supported: 1 Ethernet, 101 raw IP, 113 Linux cooked, 228 IPv4, 229 IPv6)")]
    LinkType(u32),
    #[error("corrupt pcap: record {record} claims {len} bytes")]
    BadRecord { record: u64, len: u32 },
}

/// What the audit found in one RTP stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub ssrc: u32,
    pub ssrc_hex: String,
    pub packets: u64,
    /// RTP payload bytes (headers and padding excluded).
    pub payload_bytes: u64,
    /// Whole frames reassembled (a run of packets ended by a marker bit).
    pub frames: u64,
    /// Frames with a missing packet: not checked.
    pub frames_incomplete: u64,
    /// Frames that parse as SFrame: a valid header, longer than header + tag, and not
    /// starting with the plaintext magic.
    pub sframe_frames: u64,
    /// `sframe_frames / frames` (0 when there are no frames).
    pub sframe_share: f64,
    /// Frames starting with the plaintext frame magic `BRF1`.
    pub plaintext_magic_frames: u64,
    /// Packets whose payload contains the canary.
    pub canary_packets: u64,
    /// Frames that contain the canary (catches a canary split across packets).
    pub canary_frames: u64,
    /// Shannon entropy of the payload bytes, bits per byte (ciphertext: close to 8).
    pub entropy_bits_per_byte: f64,
}

/// Datagrams that were not audited, by why.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Skipped {
    /// Not IPv4/IPv6 (ARP, ...), or a header that does not parse.
    pub not_ip: u64,
    /// IP but not UDP.
    pub not_udp: u64,
    /// IP fragments: cannot be read as one datagram.
    pub fragments: u64,
    /// Cut short by the capture's snap length.
    pub truncated: u64,
    /// UDP payload that is not RTP (STUN, DTLS, junk).
    pub not_rtp: u64,
    /// RTCP (payload types 192..=223, RFC 5761).
    pub rtcp: u64,
}

/// The audit of one capture.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// pcap records read.
    pub records: u64,
    /// RTP packets audited.
    pub rtp_packets: u64,
    pub skipped: Skipped,
    /// The file ended inside a record (a capture still being written, or killed).
    pub truncated_tail: bool,
    /// The canary searched for, if any.
    pub canary: Option<String>,
    pub streams: Vec<StreamReport>,
    /// `"blind"` or `"NOT blind"`.
    pub verdict: String,
    pub blind: bool,
    /// Why the relay is not blind (empty when it is).
    pub reasons: Vec<String>,
}

impl AuditReport {
    /// Total canary hits (packets) over all streams.
    pub fn canary_packets(&self) -> u64 {
        self.streams.iter().map(|s| s.canary_packets).sum()
    }

    /// The human-readable table the CLI prints.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let s = &self.skipped;
        let _ = writeln!(
            o,
            "records {}, RTP packets {}, skipped: rtcp {}, not rtp {}, not udp {}, not ip {}, fragments {}, truncated {}{}",
            self.records,
            self.rtp_packets,
            s.rtcp,
            s.not_rtp,
            s.not_udp,
            s.not_ip,
            s.fragments,
            s.truncated,
            if self.truncated_tail { " (file ends mid-record)" } else { "" },
        );
        match &self.canary {
            Some(c) => {
                let _ = writeln!(o, "canary: {c:?}");
            }
            None => {
                let _ = writeln!(
                    o,
                    "canary: none given (--canary TEXT searches for a known plaintext)"
                );
            }
        }
        let _ = writeln!(
            o,
            "{:<12} {:>8} {:>7} {:>7} {:>8} {:>10} {:>12} {:>8}",
            "SSRC", "packets", "frames", "incompl", "sframe", "plaintext", "canary p/f", "entropy"
        );
        for st in &self.streams {
            let _ = writeln!(
                o,
                "{:<12} {:>8} {:>7} {:>7} {:>7.1}% {:>10} {:>12} {:>8.3}",
                st.ssrc_hex,
                st.packets,
                st.frames,
                st.frames_incomplete,
                st.sframe_share * 100.0,
                st.plaintext_magic_frames,
                format!("{}/{}", st.canary_packets, st.canary_frames),
                st.entropy_bits_per_byte,
            );
        }
        let _ = writeln!(o, "verdict: {}", self.verdict);
        for r in &self.reasons {
            let _ = writeln!(o, "  - {r}");
        }
        o
    }
}

/// Audit the pcap file at `path`, searching for `canary` when given.
pub fn audit_file(path: &Path, canary: Option<&[u8]>) -> Result<AuditReport, AuditError> {
    let read_err = |source| AuditError::Read {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    audit_reader(BufReader::new(file), canary).map_err(|e| match e {
        AuditError::Read { source, .. } => read_err(source),
        e => e,
    })
}

/// Audit pcap bytes from any reader.
pub fn audit_reader(mut r: impl Read, canary: Option<&[u8]>) -> Result<AuditReport, AuditError> {
    let io = |source| AuditError::Read {
        path: String::new(),
        source,
    };
    let mut hdr = [0u8; 24];
    match read_full(&mut r, &mut hdr).map_err(io)? {
        24 => {}
        _ => return Err(AuditError::TooShort),
    }
    let magic = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let big_endian = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => false,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => true,
        0x0a0d_0d0a => return Err(AuditError::Pcapng),
        m => return Err(AuditError::BadMagic(m)),
    };
    let u32_at = |b: &[u8], i: usize| {
        let w = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if big_endian {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    };
    // The link type is the low 16 bits (the upper ones carry FCS flags).
    let link = u32_at(&hdr, 20) & 0xffff;
    if !matches!(link, 1 | 101 | 113 | 228 | 229) {
        return Err(AuditError::LinkType(link));
    }
    let canary = canary.filter(|c| !c.is_empty());
    let mut audit = Audit {
        canary,
        streams: BTreeMap::new(),
        skipped: Skipped::default(),
        records: 0,
        rtp_packets: 0,
    };
    let mut truncated_tail = false;
    let mut rec = [0u8; 16];
    let mut data = Vec::with_capacity(2048);
    loop {
        match read_full(&mut r, &mut rec).map_err(io)? {
            0 => break,
            16 => {}
            _ => {
                truncated_tail = true;
                break;
            }
        }
        let incl = u32_at(&rec, 8);
        let orig = u32_at(&rec, 12);
        if incl > MAX_RECORD {
            return Err(AuditError::BadRecord {
                record: audit.records + 1,
                len: incl,
            });
        }
        data.resize(incl as usize, 0);
        if read_full(&mut r, &mut data).map_err(io)? < data.len() {
            truncated_tail = true;
            break;
        }
        audit.records += 1;
        if incl < orig {
            audit.skipped.truncated += 1;
            continue;
        }
        audit.datagram(link, &data);
    }
    Ok(audit.finish(truncated_tail))
}

/// Read until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[derive(Default)]
struct Stream {
    rx: StreamReceiver,
    packets: u64,
    payload_bytes: u64,
    frames: u64,
    sframe_frames: u64,
    plaintext_magic_frames: u64,
    canary_packets: u64,
    canary_frames: u64,
    histogram: Vec<u64>,
}

struct Audit<'a> {
    canary: Option<&'a [u8]>,
    streams: BTreeMap<u32, Stream>,
    skipped: Skipped,
    records: u64,
    rtp_packets: u64,
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether a whole frame is an SFrame ciphertext (as far as can be told without the key).
pub fn looks_like_sframe(frame: &[u8]) -> bool {
    if frame.starts_with(PLAINTEXT_MAGIC) {
        return false;
    }
    match sframe::Header::decode(frame) {
        Ok((_, header_len)) => frame.len() > header_len + SFRAME_TAG_LEN,
        Err(_) => false,
    }
}

/// Shannon entropy of a byte histogram, in bits per byte.
pub fn entropy(histogram: &[u64]) -> f64 {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let n = total as f64;
    histogram
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

impl Audit<'_> {
    /// One captured datagram, by link type: find the UDP payload and audit it as RTP.
    fn datagram(&mut self, link: u32, d: &[u8]) {
        let ip = match link {
            101 | 228 | 229 => Some(d),
            1 => ethernet_payload(d),
            113 => linux_cooked_payload(d),
            _ => None,
        };
        let Some(ip) = ip else {
            self.skipped.not_ip += 1;
            return;
        };
        match udp_payload(ip) {
            Ok(p) => self.rtp(p),
            Err(Skip::NotIp) => self.skipped.not_ip += 1,
            Err(Skip::NotUdp) => self.skipped.not_udp += 1,
            Err(Skip::Fragment) => self.skipped.fragments += 1,
        }
    }

    fn rtp(&mut self, p: &[u8]) {
        // RFC 5761: with rtcp-mux, a second byte of 192..=223 is RTCP.
        if p.len() >= 2 && p[0] >> 6 == 2 && (192..=223).contains(&p[1]) {
            self.skipped.rtcp += 1;
            return;
        }
        let Ok(h) = RtpHeader::parse(p) else {
            self.skipped.not_rtp += 1;
            return;
        };
        self.rtp_packets += 1;
        let payload = h.payload(p);
        let st = self.streams.entry(h.ssrc).or_default();
        if st.histogram.is_empty() {
            st.histogram = vec![0; 256];
        }
        st.packets += 1;
        st.payload_bytes += payload.len() as u64;
        for &b in payload {
            st.histogram[usize::from(b)] += 1;
        }
        if let Some(c) = self.canary {
            if contains(payload, c) {
                st.canary_packets += 1;
            }
        }
        let Some(frame) = st.rx.push(h.sequence, h.timestamp, h.marker, payload) else {
            return;
        };
        st.frames += 1;
        if frame.starts_with(PLAINTEXT_MAGIC) {
            st.plaintext_magic_frames += 1;
        }
        if looks_like_sframe(&frame) {
            st.sframe_frames += 1;
        }
        if let Some(c) = self.canary {
            if contains(&frame, c) {
                st.canary_frames += 1;
            }
        }
    }

    fn finish(self, truncated_tail: bool) -> AuditReport {
        let mut reasons = Vec::new();
        if self.rtp_packets == 0 {
            reasons.push("no RTP packets in the capture: nothing shows the relay is blind".into());
        }
        let streams: Vec<StreamReport> = self
            .streams
            .into_iter()
            .map(|(ssrc, st)| {
                let share = if st.frames == 0 {
                    0.0
                } else {
                    st.sframe_frames as f64 / st.frames as f64
                };
                StreamReport {
                    ssrc,
                    ssrc_hex: format!("0x{ssrc:08x}"),
                    packets: st.packets,
                    payload_bytes: st.payload_bytes,
                    frames: st.frames,
                    frames_incomplete: st.rx.frames_incomplete,
                    sframe_frames: st.sframe_frames,
                    sframe_share: share,
                    plaintext_magic_frames: st.plaintext_magic_frames,
                    canary_packets: st.canary_packets,
                    canary_frames: st.canary_frames,
                    entropy_bits_per_byte: entropy(&st.histogram),
                }
            })
            .collect();
        for st in &streams {
            if st.canary_packets > 0 || st.canary_frames > 0 {
                reasons.push(format!(
                    "SSRC {}: the canary is in the clear in {} packets ({} frames)",
                    st.ssrc_hex, st.canary_packets, st.canary_frames
                ));
            }
            if st.frames == 0 {
                reasons.push(format!(
                    "SSRC {}: no whole frame (no marker bit) to check for SFrame",
                    st.ssrc_hex
                ));
            } else if st.sframe_share < MIN_SFRAME_SHARE {
                reasons.push(format!(
                    "SSRC {}: only {} of {} frames ({:.1}%) parse as SFrame{}",
                    st.ssrc_hex,
                    st.sframe_frames,
                    st.frames,
                    st.sframe_share * 100.0,
                    if st.plaintext_magic_frames > 0 {
                        format!(
                            "; {} start with the plaintext magic BRF1",
                            st.plaintext_magic_frames
                        )
                    } else {
                        String::new()
                    }
                ));
            }
        }
        let blind = reasons.is_empty();
        AuditReport {
            records: self.records,
            rtp_packets: self.rtp_packets,
            skipped: self.skipped,
            truncated_tail,
            canary: self.canary.map(|c| String::from_utf8_lossy(c).into_owned()),
            streams,
            verdict: if blind { "blind" } else { "NOT blind" }.into(),
            blind,
            reasons,
        }
    }
}

enum Skip {
    NotIp,
    NotUdp,
    Fragment,
}

/// The IP packet inside an Ethernet frame (VLAN tags skipped).
fn ethernet_payload(d: &[u8]) -> Option<&[u8]> {
    let mut off = 12;
    loop {
        let t = u16::from_be_bytes([*d.get(off)?, *d.get(off + 1)?]);
        match t {
            0x8100 | 0x88a8 => off += 4,
            0x0800 | 0x86dd => return d.get(off + 2..),
            _ => return None,
        }
    }
}

/// The IP packet inside a Linux cooked (SLL) frame.
fn linux_cooked_payload(d: &[u8]) -> Option<&[u8]> {
    let t = u16::from_be_bytes([*d.get(14)?, *d.get(15)?]);
    matches!(t, 0x0800 | 0x86dd).then(|| d.get(16..)).flatten()
}

/// The UDP payload of an IPv4 or IPv6 packet, bounded by the IP and UDP lengths.
fn udp_payload(ip: &[u8]) -> Result<&[u8], Skip> {
    let first = *ip.first().ok_or(Skip::NotIp)?;
    let (proto, l4) = match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < 20 || ip.len() < ihl {
                return Err(Skip::NotIp);
            }
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if total < ihl || total > ip.len() {
                return Err(Skip::NotIp);
            }
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            // More-fragments set or a non-zero offset.
            if frag & 0x3fff != 0 {
                return Err(Skip::Fragment);
            }
            (ip[9], &ip[ihl..total])
        }
        6 => {
            if ip.len() < 40 {
                return Err(Skip::NotIp);
            }
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let body = ip.get(40..40 + plen).ok_or(Skip::NotIp)?;
            let (mut next, mut off) = (ip[6], 0usize);
            // Hop-by-hop, routing and destination options may precede UDP.
            while matches!(next, 0 | 43 | 60) {
                let h = body.get(off..off + 2).ok_or(Skip::NotIp)?;
                next = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            if next == 44 {
                return Err(Skip::Fragment);
            }
            (next, body.get(off..).ok_or(Skip::NotIp)?)
        }
        _ => return Err(Skip::NotIp),
    };
    if proto != 17 {
        return Err(Skip::NotUdp);
    }
    if l4.len() < 8 {
        return Err(Skip::NotIp);
    }
    let ulen = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
    if ulen < 8 || ulen > l4.len() {
        return Err(Skip::NotIp);
    }
    Ok(&l4[8..ulen])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{make_frame, packetize};

    /// A little- or big-endian LINKTYPE_RAW pcap of `packets` (RTP) over IPv4/UDP.
    fn pcap(packets: &[Vec<u8>], big_endian: bool) -> Vec<u8> {
        let w32 = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let w16 = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut f = Vec::new();
        f.extend_from_slice(&w32(0xa1b2_c3d4));
        f.extend_from_slice(&w16(2));
        f.extend_from_slice(&w16(4));
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&w32(65535));
        f.extend_from_slice(&w32(101));
        for p in packets {
            let total = 28 + p.len();
            f.extend_from_slice(&w32(1));
            f.extend_from_slice(&w32(0));
            f.extend_from_slice(&w32(total as u32));
            f.extend_from_slice(&w32(total as u32));
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&(total as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
            f.extend_from_slice(&5000u16.to_be_bytes());
            f.extend_from_slice(&7402u16.to_be_bytes());
            f.extend_from_slice(&((8 + p.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            f.extend_from_slice(p);
        }
        f
    }

    /// RTP packets of `frames` frames of stream `ssrc`; `seal` turns a frame into what is
    /// sent (identity for plaintext).
    fn stream(
        ssrc: u32,
        frames: u32,
        canary: &[u8],
        seal: impl Fn(&[u8]) -> Vec<u8>,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut seq = 100u16;
        let mut f = Vec::new();
        for n in 0..frames {
            make_frame(ssrc, n, 0, 2500, Some(canary), &mut f);
            let body = seal(&f);
            for (chunk, last) in packetize(&body) {
                let mut p = Vec::new();
                RtpHeader {
                    marker: last,
                    payload_type: 96,
                    sequence: seq,
                    timestamp: n * 3000,
                    ssrc,
                    header_len: 12,
                    padding_len: 0,
                }
                .write_minimal(&mut p);
                p.extend_from_slice(chunk);
                out.push(p);
                seq = seq.wrapping_add(1);
            }
        }
        out
    }

    fn seal(ctr: &std::cell::Cell<u64>) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
        move |f| {
            ctr.set(ctr.get() + 1);
            sframe::encrypt(
                sframe::CipherSuite::AesGcm128Sha256,
                &[7; 16],
                1,
                ctr.get(),
                &[],
                f,
            )
            .unwrap()
        }
    }

    #[test]
    fn sealed_stream_is_blind_plaintext_is_not() {
        let ctr = std::cell::Cell::new(0);
        let sealed = stream(0x1111, 20, b"CANARY", seal(&ctr));
        let r = audit_reader(&pcap(&sealed, false)[..], Some(b"CANARY")).unwrap();
        assert!(r.blind, "{}", r.table());
        assert_eq!(r.streams.len(), 1);
        let s = &r.streams[0];
        // The first frame of each stream is not counted: where it began is unknown.
        assert_eq!((s.frames, s.sframe_frames, s.canary_packets), (19, 19, 0));
        assert!(s.entropy_bits_per_byte > 7.5, "{}", s.entropy_bits_per_byte);
        assert_eq!(r.rtp_packets, 60);

        let plain = stream(0x2222, 20, b"CANARY", |f| f.to_vec());
        let r = audit_reader(&pcap(&plain, true)[..], Some(b"CANARY")).unwrap();
        assert!(!r.blind);
        let s = &r.streams[0];
        assert_eq!((s.frames, s.sframe_frames), (19, 0));
        assert_eq!(s.plaintext_magic_frames, 19);
        assert_eq!((s.canary_packets, s.canary_frames), (60, 19));
        assert!(
            r.reasons.iter().any(|x| x.contains("canary")),
            "{:?}",
            r.reasons
        );
        assert!(
            r.reasons.iter().any(|x| x.contains("SFrame")),
            "{:?}",
            r.reasons
        );
        assert!(r.table().contains("NOT blind"));
        // Without a canary the SFrame check alone still refuses it.
        let r = audit_reader(&pcap(&plain, false)[..], None).unwrap();
        assert!(!r.blind && r.canary.is_none());
    }

    #[test]
    fn empty_capture_is_not_blind_and_bad_files_are_errors() {
        let r = audit_reader(&pcap(&[], false)[..], None).unwrap();
        assert!(!r.blind && r.rtp_packets == 0);
        assert!(matches!(
            audit_reader(&b"short"[..], None),
            Err(AuditError::TooShort)
        ));
        assert!(matches!(
            audit_reader(&[0u8; 24][..], None),
            Err(AuditError::BadMagic(0))
        ));
        let mut ng = pcap(&[], false);
        ng[..4].copy_from_slice(&0x0a0d_0d0au32.to_le_bytes());
        assert!(matches!(
            audit_reader(&ng[..], None),
            Err(AuditError::Pcapng)
        ));
        let mut eth = pcap(&[], false);
        eth[20] = 147;
        assert!(matches!(
            audit_reader(&eth[..], None),
            Err(AuditError::LinkType(147))
        ));
    }

    #[test]
    fn skips_rtcp_and_non_rtp_and_tolerates_a_cut_tail() {
        let ctr = std::cell::Cell::new(0);
        let mut pkts = stream(0x1111, 3, b"C", seal(&ctr));
        pkts.push(vec![0x80, 200, 0, 6, 0, 0, 0, 1]);
        pkts.push(b"\x00\x01stun".to_vec());
        let mut f = pcap(&pkts, false);
        f.truncate(f.len() - 3);
        let r = audit_reader(&f[..], None).unwrap();
        assert!(r.truncated_tail);
        assert_eq!(r.skipped.rtcp, 1);
        assert_eq!(r.rtp_packets, 9);
    }

    #[test]
    fn ethernet_and_ipv6_are_unwrapped() {
        let mut eth = vec![0u8; 12];
        eth.extend_from_slice(&[0x81, 0x00, 0, 1, 0x86, 0xdd]);
        let mut ip6 = vec![0x60, 0, 0, 0, 0, 12, 17, 64];
        ip6.extend_from_slice(&[0; 32]);
        ip6.extend_from_slice(&[0, 1, 0, 2, 0, 12, 0, 0, b'a', b'b', b'c', b'd']);
        eth.extend_from_slice(&ip6);
        let ip = ethernet_payload(&eth).unwrap();
        assert_eq!(udp_payload(ip).ok(), Some(&b"abcd"[..]));
    }

    #[test]
    fn entropy_bounds() {
        assert_eq!(entropy(&[0; 256]), 0.0);
        let mut h = vec![0u64; 256];
        h[7] = 100;
        assert_eq!(entropy(&h), 0.0);
        assert!((entropy(&[5; 256]) - 8.0).abs() < 1e-9);
    }
}
