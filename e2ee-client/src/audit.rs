//! `e2ee-client audit`: read a pcap of what a relay holds (its `--capture`, or any capture
//! of clear RTP) and say whether the relay is blind: every frame it forwards is an SFrame
//! ciphertext and no known plaintext (the `--canary`) appears anywhere.
//!
//! Files are read with the `pcap-file` crate: classic libpcap (both byte orders, micro- or
//! nanosecond) and pcapng (the default of tshark and Wireshark), with link types
//! LINKTYPE_RAW, IPv4, IPv6, Ethernet and Linux cooked; `etherparse` unwraps the
//! Ethernet/IP/UDP framing. The file is read as it is parsed (a record at a time), so a
//! large capture does not have to fit in memory.
//! Frames are reassembled per SSRC exactly as a receiving client does it
//! ([`StreamReceiver`]), so "frame" means the same thing here and in the call.

use crate::media::StreamReceiver;
use crate::sframe;
use blindrelay_protocol::rtp::RtpHeader;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::{Endianness, PcapError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read};
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
/// Largest pcapng block we accept (a packet block holds a record plus options).
const MAX_BLOCK: u32 = 16 << 20;
/// Link types the audit unwraps.
const LINK_ETHERNET: u32 = 1;
const LINK_RAW: u32 = 101;
const LINK_LINUX_SLL: u32 = 113;
const LINK_IPV4: u32 = 228;
const LINK_IPV6: u32 = 229;
/// pcapng files start with a section header block, whose type reads the same both ways.
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Why a capture cannot be audited. The CLI exits with status 2 on any of these.
#[derive(Debug, Error)]
pub enum AuditError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not a pcap file: the file is shorter than a pcap header (24 bytes) or a pcapng section header")]
    TooShort,
    #[error("not a pcap or pcapng file (magic {0:08x})")]
    BadMagic(u32),
    #[error("unsupported pcap link type {0} (supported: 1 Ethernet, 101 raw IP, 113 Linux cooked, 228 IPv4, 229 IPv6)")]
    LinkType(u32),
    #[error("corrupt pcap: record {record} claims {len} bytes")]
    BadRecord { record: u64, len: u32 },
    #[error(
        "corrupt pcapng: packet on interface {0}, which no interface description block declared"
    )]
    NoInterface(u32),
    #[error("corrupt capture file: {0}")]
    Corrupt(String),
}

/// A pcap-file error other than running out of input (which the caller handles).
fn corrupt(e: PcapError) -> AuditError {
    match e {
        PcapError::IoError(source) => AuditError::Read {
            path: String::new(),
            source,
        },
        e => AuditError::Corrupt(e.to_string()),
    }
}

/// Payload types whose packets are the relay's web client's (see [`crate::webframe`]): Opus
/// (an SFrame per packet) and VP8 (RFC 7741 descriptors, a clear VP8 header, then the
/// SFrame). Streams of other payload types are read as e2ee-client frames. For web
/// streams a frame counts as SFrame only if it also continues its stream's SFrame
/// sequence: the stream's one KID and a CTR above the previous frame's. Real Opus and VP8
/// have no plaintext magic and are as dense as ciphertext, so a header that merely parses
/// would prove nothing; a plaintext stream's "headers" do not keep one KID and a rising CTR.
#[derive(Debug, Clone, Default)]
pub struct WebFraming {
    pub opus_pts: Vec<u8>,
    pub vp8_pts: Vec<u8>,
}

/// What the audit found in one RTP stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub ssrc: u32,
    /// How frames were read: `e2ee-client`, `web-opus` or `web-vp8` ([`WebFraming`]).
    pub framing: String,
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

/// Audit the pcap or pcapng file at `path`, searching for `canary` when given.
pub fn audit_file(path: &Path, canary: Option<&[u8]>) -> Result<AuditReport, AuditError> {
    audit_file_framed(path, canary, &WebFraming::default())
}

/// [`audit_file`], reading the payload types in `web` as the web client's streams.
pub fn audit_file_framed(
    path: &Path,
    canary: Option<&[u8]>,
    web: &WebFraming,
) -> Result<AuditReport, AuditError> {
    let read_err = |source| AuditError::Read {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    audit_reader_framed(file, canary, web).map_err(|e| match e {
        AuditError::Read { source, .. } => read_err(source),
        e => e,
    })
}

/// Audit pcap or pcapng bytes from any reader (read as they are parsed; no need to buffer).
pub fn audit_reader(r: impl Read, canary: Option<&[u8]>) -> Result<AuditReport, AuditError> {
    audit_reader_framed(r, canary, &WebFraming::default())
}

/// [`audit_reader`] with the web client's payload types.
pub fn audit_reader_framed(
    r: impl Read,
    canary: Option<&[u8]>,
    web: &WebFraming,
) -> Result<AuditReport, AuditError> {
    let mut input = Input::new(r);
    // Enough to tell the formats apart and hold a pcap header.
    while input.data().len() < 24 && input.more(24).map_err(io_err)? {}
    let head = input.data();
    if head.len() < 4 {
        return Err(AuditError::TooShort);
    }
    let canary = canary.filter(|c| !c.is_empty());
    let mut audit = Audit {
        canary,
        web,
        streams: BTreeMap::new(),
        skipped: Skipped::default(),
        records: 0,
        rtp_packets: 0,
    };
    let truncated_tail = if head[..4] == PCAPNG_MAGIC {
        read_pcapng(&mut input, &mut audit)?
    } else {
        read_pcap(&mut input, &mut audit)?
    };
    Ok(audit.finish(truncated_tail))
}

fn io_err(source: std::io::Error) -> AuditError {
    AuditError::Read {
        path: String::new(),
        source,
    }
}

/// The next bytes of the capture for pcap-file's slice parsers, read as they ask for more.
struct Input<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: Read> Input<R> {
    fn new(r: R) -> Self {
        Input {
            r,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// The bytes read and not yet consumed.
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Read more input, with room for at least `want` unconsumed bytes. Returns false at
    /// the end of the input.
    fn more(&mut self, want: usize) -> std::io::Result<bool> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        let want = want.max(self.end + 1);
        if self.buf.len() < want {
            self.buf.resize(want.next_power_of_two(), 0);
        }
        loop {
            match self.r.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A 32-bit field of a header in the file's byte order (`at` must be in bounds).
fn u32_at(b: &[u8], at: usize, endianness: Endianness) -> u32 {
    let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    match endianness {
        Endianness::Big => u32::from_be_bytes(w),
        Endianness::Little => u32::from_le_bytes(w),
    }
}

fn supported_link(link: u32) -> Result<u32, AuditError> {
    match link {
        LINK_ETHERNET | LINK_RAW | LINK_LINUX_SLL | LINK_IPV4 | LINK_IPV6 => Ok(link),
        other => Err(AuditError::LinkType(other)),
    }
}

/// Audit every record of a classic pcap file. Returns whether the file ends mid-record.
fn read_pcap<R: Read>(input: &mut Input<R>, audit: &mut Audit<'_>) -> Result<bool, AuditError> {
    let head = input.data();
    if head.len() < 24 {
        return Err(AuditError::TooShort);
    }
    let parser = match PcapParser::new(head) {
        Ok((rest, parser)) => {
            let used = head.len() - rest.len();
            input.consume(used);
            parser
        }
        Err(PcapError::InvalidField(_)) => {
            return Err(AuditError::BadMagic(u32::from_le_bytes([
                head[0], head[1], head[2], head[3],
            ])))
        }
        Err(e) => return Err(corrupt(e)),
    };
    let header = parser.header();
    // The link type is the low 16 bits (the upper ones carry FCS flags).
    let link = supported_link(u32::from(header.datalink) & 0xffff)?;
    loop {
        let data = input.data();
        match parser.next_raw_packet(data) {
            Ok((rest, p)) => {
                let used = data.len() - rest.len();
                audit.records += 1;
                if p.incl_len < p.orig_len {
                    audit.skipped.truncated += 1;
                } else {
                    audit.datagram(link, &p.data);
                }
                input.consume(used);
            }
            Err(PcapError::IncompleteBuffer) => {
                // Refuse an absurd length before reading that much.
                let want = if data.len() >= 16 {
                    let incl = u32_at(data, 8, header.endianness);
                    if incl > MAX_RECORD {
                        return Err(AuditError::BadRecord {
                            record: audit.records + 1,
                            len: incl,
                        });
                    }
                    16 + incl as usize
                } else {
                    16
                };
                if !input.more(want).map_err(io_err)? {
                    return Ok(!input.data().is_empty());
                }
            }
            Err(e) => return Err(corrupt(e)),
        }
    }
}

/// Audit every packet block of a pcapng file. Returns whether the file ends mid-block.
fn read_pcapng<R: Read>(input: &mut Input<R>, audit: &mut Audit<'_>) -> Result<bool, AuditError> {
    let mut parser = loop {
        let data = input.data();
        match PcapNgParser::new(data) {
            Ok((rest, parser)) => {
                let used = data.len() - rest.len();
                input.consume(used);
                break parser;
            }
            Err(PcapError::IncompleteBuffer) => {
                let want = block_len(data, None)?;
                if !input.more(want).map_err(io_err)? {
                    return Err(AuditError::TooShort);
                }
            }
            Err(e) => return Err(corrupt(e)),
        }
    };
    loop {
        let data = input.data();
        match parser.next_block(data) {
            Ok((rest, block)) => {
                let used = data.len() - rest.len();
                let packet = match &block {
                    Block::EnhancedPacket(p) => Some((
                        p.interface_id,
                        p.data.len() < p.original_len as usize,
                        &p.data,
                    )),
                    Block::SimplePacket(p) => {
                        Some((0, p.data.len() < p.original_len as usize, &p.data))
                    }
                    Block::Packet(p) => Some((
                        u32::from(p.interface_id),
                        p.captured_len < p.original_len,
                        &p.data,
                    )),
                    _ => None,
                };
                if let Some((interface, truncated, bytes)) = packet {
                    let link = parser
                        .interfaces()
                        .get(interface as usize)
                        .map(|i| u32::from(i.linktype) & 0xffff)
                        .ok_or(AuditError::NoInterface(interface))?;
                    let link = supported_link(link)?;
                    audit.records += 1;
                    if truncated {
                        audit.skipped.truncated += 1;
                    } else {
                        audit.datagram(link, bytes);
                    }
                }
                input.consume(used);
            }
            Err(PcapError::IncompleteBuffer) => {
                let want = block_len(data, Some(parser.section().endianness))?;
                if !input.more(want).map_err(io_err)? {
                    return Ok(!input.data().is_empty());
                }
            }
            Err(e) => return Err(corrupt(e)),
        }
    }
}

/// How many bytes the pcapng block starting `data` needs, when its header is there (its
/// length field is in the section's byte order; a section header's own is in either).
fn block_len(data: &[u8], endianness: Option<Endianness>) -> Result<usize, AuditError> {
    if data.len() < 12 {
        return Ok(12);
    }
    let len = match endianness {
        Some(e) if data[..4] != PCAPNG_MAGIC => u32_at(data, 4, e),
        // A section header: its byte order is its magic's (bytes 8..12).
        _ => {
            let e = if data[8..12] == [0x1a, 0x2b, 0x3c, 0x4d] {
                Endianness::Big
            } else {
                Endianness::Little
            };
            u32_at(data, 4, e)
        }
    };
    if len > MAX_BLOCK {
        return Err(AuditError::Corrupt(format!(
            "a pcapng block claims {len} bytes"
        )));
    }
    Ok((len as usize).max(12))
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
    framing: &'static str,
    /// Web streams: the stream's KID and the last frame's CTR.
    kid: Option<u64>,
    last_ctr: Option<u64>,
}

struct Audit<'a> {
    canary: Option<&'a [u8]>,
    web: &'a WebFraming,
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
        let sliced = match link {
            LINK_ETHERNET => SlicedPacket::from_ethernet(d),
            LINK_LINUX_SLL => SlicedPacket::from_linux_sll(d),
            _ => SlicedPacket::from_ip(d),
        };
        let Ok(p) = sliced else {
            // Not IP, or a header (IP or UDP) whose lengths do not hold.
            self.skipped.not_ip += 1;
            return;
        };
        let fragmented = match &p.net {
            Some(NetSlice::Ipv4(ip)) => ip.payload().fragmented,
            Some(NetSlice::Ipv6(ip)) => ip.payload().fragmented,
            _ => {
                self.skipped.not_ip += 1;
                return;
            }
        };
        if fragmented {
            self.skipped.fragments += 1;
            return;
        }
        match &p.transport {
            Some(TransportSlice::Udp(u)) => self.rtp(u.payload()),
            _ => self.skipped.not_udp += 1,
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
        let framing = if self.web.opus_pts.contains(&h.payload_type) {
            "web-opus"
        } else if self.web.vp8_pts.contains(&h.payload_type) {
            "web-vp8"
        } else {
            "e2ee-client"
        };
        let st = self.streams.entry(h.ssrc).or_default();
        if st.histogram.is_empty() {
            st.histogram = vec![0; 256];
            st.framing = framing;
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
        let frame = match st.framing {
            "web-opus" if !payload.is_empty() => payload.to_vec(),
            "web-vp8" if !payload.is_empty() => {
                let Some(n) = crate::webframe::vp8_descriptor_len(payload) else {
                    st.rx.frames_incomplete += 1;
                    return;
                };
                let Some(f) = st.rx.push(h.sequence, h.timestamp, h.marker, &payload[n..]) else {
                    return;
                };
                f
            }
            // Padding-only packets of a web stream carry no frame.
            "web-opus" | "web-vp8" => return,
            _ => {
                let Some(f) = st.rx.push(h.sequence, h.timestamp, h.marker, payload) else {
                    return;
                };
                f
            }
        };
        st.frames += 1;
        if frame.starts_with(PLAINTEXT_MAGIC) {
            st.plaintext_magic_frames += 1;
        }
        match st.framing {
            "web-opus" | "web-vp8" => {
                let clear = if st.framing == "web-vp8" {
                    crate::webframe::vp8_clear_len(&frame)
                } else {
                    0
                };
                let sf = &frame[clear..];
                if looks_like_sframe(sf) {
                    if let Ok((hd, _)) = sframe::Header::decode(sf) {
                        let kid_ok = *st.kid.get_or_insert(hd.kid) == hd.kid;
                        let ctr_ok = st.last_ctr.is_none_or(|c| hd.ctr > c);
                        st.last_ctr = Some(hd.ctr);
                        if kid_ok && ctr_ok {
                            st.sframe_frames += 1;
                        }
                    }
                }
            }
            _ => {
                if looks_like_sframe(&frame) {
                    st.sframe_frames += 1;
                }
            }
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
                    framing: if st.framing.is_empty() {
                        "e2ee-client"
                    } else {
                        st.framing
                    }
                    .into(),
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

    /// The same datagrams as [`pcap`] in a pcapng file (written by pcap-file's writer): a
    /// section, one LINKTYPE_RAW interface, an enhanced packet block per packet.
    fn pcapng(packets: &[Vec<u8>], big_endian: bool) -> Vec<u8> {
        use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
        use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
        use pcap_file::pcapng::PcapNgWriter;
        let endianness = if big_endian {
            Endianness::Big
        } else {
            Endianness::Little
        };
        let mut w = PcapNgWriter::with_endianness(Vec::new(), endianness).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: pcap_file::DataLink::RAW,
            snaplen: 65535,
            options: vec![],
        })
        .unwrap();
        // The classic file's records, re-wrapped (skip its 24-byte header).
        let classic = pcap(packets, false);
        let mut rest = &classic[24..];
        while !rest.is_empty() {
            let len = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
            let data = rest[16..16 + len].to_vec();
            rest = &rest[16 + len..];
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: std::time::Duration::from_secs(1),
                original_len: data.len() as u32,
                data: data.into(),
                options: vec![],
            })
            .unwrap();
        }
        w.into_inner()
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

    /// Packets of the web client's framing: Opus (PT 111, a frame per packet) and VP8 (PT 96,
    /// a 4-byte RFC 7741 descriptor per packet, the frame's clear VP8 header, then the body).
    fn web_stream(seal: impl Fn(&[u8], &[u8]) -> Vec<u8>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                })
                .collect()
        };
        let mut seq = 1u16;
        for n in 0..40u32 {
            // Opus: a TOC byte and "compressed" bytes.
            let mut opus = vec![0x78];
            opus.extend(noise(80));
            let mut p = Vec::new();
            RtpHeader {
                marker: false,
                payload_type: 111,
                sequence: seq,
                timestamp: n * 960,
                ssrc: 0xa0,
                header_len: 12,
                padding_len: 0,
            }
            .write_minimal(&mut p);
            p.extend(seal(&[], &opus));
            out.push(p);
            // VP8: a key frame every 10 frames, 2 packets each.
            let mut vp8 = vec![if n % 10 == 0 { 0x10 } else { 0x31 }];
            vp8.extend(noise(1500));
            let clear = crate::webframe::vp8_clear_len(&vp8);
            let mut body = vp8[..clear].to_vec();
            body.extend(seal(&vp8[..clear], &vp8[clear..]));
            let (a, b) = body.split_at(body.len() / 2);
            for (i, chunk) in [a, b].into_iter().enumerate() {
                let mut p = Vec::new();
                RtpHeader {
                    marker: i == 1,
                    payload_type: 96,
                    sequence: seq,
                    timestamp: n * 3000,
                    ssrc: 0xb0,
                    header_len: 12,
                    padding_len: 0,
                }
                .write_minimal(&mut p);
                p.extend_from_slice(&[
                    if i == 0 { 0x90 } else { 0x80 },
                    0x80,
                    0x80 | (n >> 8) as u8,
                    n as u8,
                ]);
                p.extend_from_slice(chunk);
                out.push(p);
                seq = seq.wrapping_add(1);
            }
        }
        out
    }

    #[test]
    fn web_framing_sealed_is_blind_plain_opus_and_vp8_are_not() {
        let web = WebFraming {
            opus_pts: vec![111],
            vp8_pts: vec![96],
        };
        let ctr = std::cell::Cell::new(0);
        let sealed = web_stream(|meta, f| {
            ctr.set(ctr.get() + 1);
            sframe::encrypt(
                sframe::CipherSuite::AesGcm128Sha256,
                &[7; 16],
                2,
                ctr.get(),
                meta,
                f,
            )
            .unwrap()
        });
        let r = audit_reader_framed(&pcap(&sealed, false)[..], None, &web).unwrap();
        assert!(r.blind, "{}", r.table());
        assert_eq!(r.streams.len(), 2);
        for s in &r.streams {
            assert!(s.framing.starts_with("web-"));
            assert!(s.frames >= 39, "{}", r.table());
            assert_eq!(s.sframe_frames, s.frames, "{}", r.table());
        }
        // The same media in the clear: dense bytes whose "headers" do not form one
        // SFrame sequence.
        let plain = web_stream(|_, f| f.to_vec());
        let r = audit_reader_framed(&pcap(&plain, false)[..], None, &web).unwrap();
        assert!(!r.blind, "{}", r.table());
        for s in &r.streams {
            assert!(s.sframe_share < 0.9, "{}", r.table());
        }
        // Read without the web framing, the sealed web streams are not SFrame either:
        // the framing is what makes the audit right.
        let r = audit_reader(&pcap(&sealed, false)[..], None).unwrap();
        assert!(!r.blind, "{}", r.table());
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
        // A pcapng magic with no valid section header behind it.
        let mut ng = pcap(&[], false);
        ng[..4].copy_from_slice(&PCAPNG_MAGIC);
        assert!(matches!(
            audit_reader(&ng[..], None),
            Err(AuditError::Corrupt(_))
        ));
        assert!(matches!(
            audit_reader(&PCAPNG_MAGIC[..], None),
            Err(AuditError::TooShort)
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
    fn pcapng_audits_like_pcap_in_both_byte_orders() {
        let ctr = std::cell::Cell::new(0);
        let sealed = stream(0x1111, 20, b"CANARY", seal(&ctr));
        let plain = stream(0x2222, 20, b"CANARY", |f| f.to_vec());
        for (packets, blind) in [(&sealed, true), (&plain, false)] {
            let classic = audit_reader(&pcap(packets, false)[..], Some(b"CANARY")).unwrap();
            for big_endian in [false, true] {
                let ng = audit_reader(&pcapng(packets, big_endian)[..], Some(b"CANARY")).unwrap();
                assert_eq!(ng.blind, blind, "{}", ng.table());
                assert_eq!(ng.table(), classic.table());
                assert_eq!(
                    serde_json::to_string(&ng).unwrap(),
                    serde_json::to_string(&classic).unwrap()
                );
            }
        }
        // A cut pcapng ends like a cut pcap: what was whole is audited.
        let mut f = pcapng(&sealed, false);
        f.truncate(f.len() - 3);
        let r = audit_reader(&f[..], None).unwrap();
        assert!(r.truncated_tail);
        assert_eq!(r.rtp_packets, sealed.len() as u64 - 1);
    }

    #[test]
    fn ethernet_vlan_and_ipv6_are_unwrapped() {
        let rtp = stream(0x3333, 2, b"C", |f| f.to_vec()).remove(0);
        let mut eth = Vec::new();
        etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .single_vlan(etherparse::VlanId::try_new(1).unwrap())
            .ipv6([1; 16], [2; 16], 64)
            .udp(1, 2)
            .write(&mut eth, &rtp)
            .unwrap();
        let web = WebFraming::default();
        let mut a = Audit {
            canary: None,
            web: &web,
            streams: BTreeMap::new(),
            skipped: Skipped::default(),
            records: 0,
            rtp_packets: 0,
        };
        a.datagram(LINK_ETHERNET, &eth);
        assert_eq!(a.rtp_packets, 1);
        assert!(a.streams.contains_key(&0x3333));
        // ARP is not IP; a fragment is not read as a datagram.
        a.datagram(
            LINK_ETHERNET,
            &[0u8; 12]
                .iter()
                .chain(&[0x08, 0x06])
                .chain(&[0; 28])
                .copied()
                .collect::<Vec<_>>(),
        );
        assert_eq!(a.skipped.not_ip, 1);
        let mut frag = Vec::new();
        let mut h =
            etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, [1; 4], [2; 4]).unwrap();
        h.more_fragments = true;
        h.dont_fragment = false;
        etherparse::PacketBuilder::ip(etherparse::IpHeaders::Ipv4(h, Default::default()))
            .udp(1, 2)
            .write(&mut frag, &rtp)
            .unwrap();
        a.datagram(LINK_RAW, &frag);
        assert_eq!(a.skipped.fragments, 1);
        assert_eq!(a.rtp_packets, 1);
    }

    #[test]
    fn a_record_claiming_megabytes_is_corrupt_not_a_cut_tail() {
        let mut f = pcap(&[vec![0x80; 20]], false);
        f[32..36].copy_from_slice(&(MAX_RECORD + 1).to_le_bytes());
        assert!(matches!(
            audit_reader(&f[..], None),
            Err(AuditError::BadRecord { record: 1, .. })
        ));
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
