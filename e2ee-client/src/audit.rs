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
//!
//! A relay's capture describes itself: each sender's pcapng interface carries its codec map
//! as a comment (`blindrelay-codecs/1 {"participant":..,"pts":{"111":"opus/48000/2",..}}`,
//! see [`parse_codecs_comment`]). A stream whose payload type that map names Opus or VP8
//! may be in e2ee-client's framing or in the web client's ([`WebFraming`]): the signalling
//! cannot tell which, since e2ee-client sends on the same payload types. So such a stream
//! is read both ways at once, each reading counting a frame as SFrame only when it
//! continues an SFrame sequence ([`MIN_RUN`] frames of one KID with rising CTRs), and the
//! reading with the larger SFrame share is reported. Real Opus and VP8 are as dense as
//! ciphertext, so a header that merely parses proves nothing; a rising CTR under one KID,
//! frame after frame, is what plaintext does not produce. A group changes KIDs with each
//! MLS epoch, and an epoch can end within a few frames (two members leaving at once): a
//! short run of one KID counts when a sequence of another KID is right before or after it.
//! `--opus-pt`/`--vp8-pt`
//! ([`WebFraming`]) override the maps: with either given, those payload types are read in
//! the web framing only and the maps are not used. Streams without a map (captures of
//! other tools, other codecs) are read as e2ee-client frames, as before.

use crate::media::StreamReceiver;
use crate::sframe;
use blindrelay_protocol::rtp::RtpHeader;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::{Endianness, PcapError};
use serde::Deserialize;
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
/// The tag and version that start a relay capture's codec-map comment (the relay's
/// `CODECS_COMMENT_TAG`); the JSON object follows after one space.
pub const CODECS_COMMENT_TAG: &str = "blindrelay-codecs/1";
/// Frames of one KID with rising CTRs a sequence must reach before its frames count as
/// SFrame (where a stream is checked for sequences; see the module docs). A new KID (a new
/// MLS epoch, say) starts a new sequence; a KID that lived for fewer frames counts only
/// when it sits between a sequence and the next KID, or between a KID and a sequence.
pub const MIN_RUN: u64 = 4;

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

/// One sender's codec map, from its interface's comment in a relay's capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecMap {
    /// The sender's public participant id, if the comment names it.
    pub participant: Option<String>,
    /// Payload type (below 128) -> rtpmap encoding (`opus/48000/2`, `VP8/90000`).
    pub pts: BTreeMap<u8, String>,
}

impl CodecMap {
    /// The codec name (before the first `/`) of payload type `pt`, lowercased.
    fn codec(&self, pt: u8) -> Option<String> {
        let e = self.pts.get(&pt)?;
        Some(e.split('/').next().unwrap_or("").to_ascii_lowercase())
    }
}

#[derive(Deserialize)]
struct CommentBody {
    #[serde(default)]
    participant: Option<String>,
    pts: BTreeMap<String, String>,
}

/// Read a `blindrelay-codecs/1 {json}` comment. `None` for any other comment, or one whose
/// JSON does not hold; payload types that are not numbers below 128 are left out.
pub fn parse_codecs_comment(comment: &str) -> Option<CodecMap> {
    let json = comment
        .strip_prefix(CODECS_COMMENT_TAG)?
        .strip_prefix(' ')?;
    let body: CommentBody = serde_json::from_str(json).ok()?;
    Some(CodecMap {
        participant: body.participant,
        pts: body
            .pts
            .into_iter()
            .filter_map(|(pt, enc)| pt.parse::<u8>().ok().filter(|p| *p < 128).map(|p| (p, enc)))
            .collect(),
    })
}

/// What the audit found in one RTP stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub ssrc: u32,
    /// How frames were read: `e2ee-client`, `web-opus` or `web-vp8` ([`WebFraming`]); for
    /// a stream read both ways (see the module docs), the reading reported.
    pub framing: String,
    /// The sender's participant id, from the capture's codec map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
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
    /// Frames that contain the canary (catches a canary split across packets), in
    /// whichever reading found the most.
    pub canary_frames: u64,
    /// Shannon entropy of the payload bytes, bits per byte (ciphertext: close to 8).
    pub entropy_bits_per_byte: f64,
    /// In some reading, more than 1% of the frames start with the plaintext magic: not
    /// blind whichever reading is reported (structured plaintext can pass a sequence check
    /// in a framing that is not its own).
    pub magic_in_any_reading: bool,
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
    /// Senders whose codec map the capture carries (`blindrelay-codecs/1` comments).
    pub codec_maps: u64,
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
        if self.codec_maps > 0 {
            let _ = writeln!(
                o,
                "codec maps: {} senders described by the capture",
                self.codec_maps
            );
        }
        let _ = writeln!(
            o,
            "{:<12} {:>8} {:>7} {:>7} {:>8} {:>10} {:>12} {:>8}  framing",
            "SSRC", "packets", "frames", "incompl", "sframe", "plaintext", "canary p/f", "entropy"
        );
        for st in &self.streams {
            let _ = writeln!(
                o,
                "{:<12} {:>8} {:>7} {:>7} {:>7.1}% {:>10} {:>12} {:>8.3}  {}{}",
                st.ssrc_hex,
                st.packets,
                st.frames,
                st.frames_incomplete,
                st.sframe_share * 100.0,
                st.plaintext_magic_frames,
                format!("{}/{}", st.canary_packets, st.canary_frames),
                st.entropy_bits_per_byte,
                st.framing,
                st.participant
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default(),
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

/// [`audit_file`], reading the payload types in `web` as the web client's streams (an
/// override: with any given, the capture's codec maps are not used).
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
        codec_maps: 0,
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
                    audit.datagram(link, &p.data, None);
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
    // Each interface's codec map, as the parser's interface list: a section header
    // starts a new list.
    let mut maps: Vec<Option<CodecMap>> = Vec::new();
    loop {
        let data = input.data();
        match parser.next_block(data) {
            Ok((rest, block)) => {
                let used = data.len() - rest.len();
                match &block {
                    Block::SectionHeader(_) => maps.clear(),
                    Block::InterfaceDescription(i) => {
                        let map = i.options.iter().find_map(|o| match o {
                            InterfaceDescriptionOption::Comment(c) => parse_codecs_comment(c),
                            _ => None,
                        });
                        audit.codec_maps += u64::from(map.is_some());
                        maps.push(map);
                    }
                    _ => {}
                }
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
                        let map = maps.get(interface as usize).and_then(Option::as_ref);
                        audit.datagram(link, bytes, map);
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

/// How a stream's packets make frames (see [`WebFraming`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    E2eeClient,
    WebOpus,
    WebVp8,
}

impl Framing {
    fn name(self) -> &'static str {
        match self {
            Framing::E2eeClient => "e2ee-client",
            Framing::WebOpus => "web-opus",
            Framing::WebVp8 => "web-vp8",
        }
    }
}

/// The SFrame sequence a reading is in: its KID, last CTR and length.
#[derive(Default, Clone, Copy)]
struct Run {
    kid: Option<u64>,
    last_ctr: u64,
    len: u64,
    /// It began with a new KID right after a sequence of [`MIN_RUN`] or more.
    after_sequence: bool,
}

/// One way of reading a stream's packets as frames, and what it found.
struct Reading {
    framing: Framing,
    /// A frame counts as SFrame only within a sequence of [`MIN_RUN`] (see module docs).
    sequenced: bool,
    rx: StreamReceiver,
    frames: u64,
    sframe_frames: u64,
    plaintext_magic_frames: u64,
    canary_frames: u64,
    run: Run,
    /// Frames of a short run that ended with a new KID: they count if the run the new KID
    /// starts becomes a sequence (see [`Reading::end_run`]).
    pending: u64,
}

impl Reading {
    fn new(framing: Framing, sequenced: bool) -> Self {
        Reading {
            framing,
            sequenced,
            rx: StreamReceiver::default(),
            frames: 0,
            sframe_frames: 0,
            plaintext_magic_frames: 0,
            canary_frames: 0,
            run: Run::default(),
            pending: 0,
        }
    }

    fn share(&self) -> f64 {
        if self.frames == 0 {
            0.0
        } else {
            self.sframe_frames as f64 / self.frames as f64
        }
    }

    /// One packet: the frame it completes, if any, judged.
    fn packet(&mut self, h: &RtpHeader, payload: &[u8], canary: Option<&[u8]>) {
        let frame = match self.framing {
            // Padding-only packets of a web stream carry no frame.
            Framing::WebOpus | Framing::WebVp8 if payload.is_empty() => return,
            Framing::WebOpus => payload.to_vec(),
            Framing::WebVp8 => {
                let Some(n) = crate::webframe::vp8_descriptor_len(payload) else {
                    self.rx.frames_incomplete += 1;
                    return;
                };
                let Some(f) = self
                    .rx
                    .push(h.sequence, h.timestamp, h.marker, &payload[n..])
                else {
                    return;
                };
                f
            }
            Framing::E2eeClient => {
                let Some(f) = self.rx.push(h.sequence, h.timestamp, h.marker, payload) else {
                    return;
                };
                f
            }
        };
        self.frames += 1;
        if frame.starts_with(PLAINTEXT_MAGIC) {
            self.plaintext_magic_frames += 1;
        }
        if canary.is_some_and(|c| contains(&frame, c)) {
            self.canary_frames += 1;
        }
        let clear = if self.framing == Framing::WebVp8 {
            crate::webframe::vp8_clear_len(&frame)
        } else {
            0
        };
        let sf = &frame[clear..];
        let header = sframe::Header::decode(sf)
            .ok()
            .filter(|_| looks_like_sframe(sf))
            .map(|(h, _)| h);
        if !self.sequenced {
            self.sframe_frames += u64::from(header.is_some());
            return;
        }
        let Some(hd) = header else {
            self.end_run(false);
            self.run = Run::default();
            return;
        };
        if self.run.kid == Some(hd.kid) && hd.ctr > self.run.last_ctr {
            self.run.len += 1;
        } else {
            let new_kid = self.run.kid.is_some_and(|k| k != hd.kid);
            let after_sequence = self.end_run(new_kid);
            self.run = Run {
                kid: Some(hd.kid),
                last_ctr: 0,
                len: 1,
                after_sequence,
            };
        }
        self.run.last_ctr = hd.ctr;
        // A sequence's first frames count once it is long enough, then each one; and
        // with them a short run of the KID just before, if this KID replaced it.
        match self.run.len.cmp(&MIN_RUN) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                self.sframe_frames += MIN_RUN + std::mem::take(&mut self.pending)
            }
            std::cmp::Ordering::Greater => self.sframe_frames += 1,
        }
    }

    /// The current run ends: by a new KID (`new_kid`), or by anything else (a CTR that
    /// does not rise, a frame that is no SFrame, the end of the stream). A run shorter
    /// than [`MIN_RUN`] between a sequence and a new KID, or between a KID change and a
    /// sequence, is a KID that lived briefly (an MLS epoch that ended within a few frames,
    /// as when two members leave at once): its frames count. Anywhere else they do not.
    /// Returns whether the next run begins right after a sequence with a new KID.
    fn end_run(&mut self, new_kid: bool) -> bool {
        let r = self.run;
        if r.len >= MIN_RUN {
            return new_kid;
        }
        self.pending = 0;
        if r.len > 0 && r.after_sequence {
            self.sframe_frames += r.len;
        } else if new_kid {
            self.pending = r.len;
        }
        false
    }

    /// The stream ended: a last short run right after a sequence counts.
    fn finish(&mut self) {
        if self.sequenced {
            self.end_run(false);
            self.run = Run::default();
        }
    }
}

struct Stream {
    packets: u64,
    payload_bytes: u64,
    canary_packets: u64,
    histogram: Vec<u64>,
    participant: Option<String>,
    /// One reading, or two for a stream whose framing the capture cannot tell.
    readings: Vec<Reading>,
}

struct Audit<'a> {
    canary: Option<&'a [u8]>,
    web: &'a WebFraming,
    streams: BTreeMap<u32, Stream>,
    skipped: Skipped,
    records: u64,
    rtp_packets: u64,
    codec_maps: u64,
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
    fn datagram(&mut self, link: u32, d: &[u8], map: Option<&CodecMap>) {
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
            Some(TransportSlice::Udp(u)) => self.rtp(u.payload(), map),
            _ => self.skipped.not_udp += 1,
        }
    }

    /// How a new stream of payload type `pt` is read: the flags if given, else the
    /// sender's codec map, else as e2ee-client frames.
    fn readings(&self, pt: u8, map: Option<&CodecMap>) -> Vec<Reading> {
        let web = self.web;
        if !web.opus_pts.is_empty() || !web.vp8_pts.is_empty() {
            let f = if web.opus_pts.contains(&pt) {
                Framing::WebOpus
            } else if web.vp8_pts.contains(&pt) {
                Framing::WebVp8
            } else {
                return vec![Reading::new(Framing::E2eeClient, false)];
            };
            return vec![Reading::new(f, true)];
        }
        match map.and_then(|m| m.codec(pt)).as_deref() {
            Some("opus") => vec![
                Reading::new(Framing::E2eeClient, true),
                Reading::new(Framing::WebOpus, true),
            ],
            Some("vp8") => vec![
                Reading::new(Framing::E2eeClient, true),
                Reading::new(Framing::WebVp8, true),
            ],
            _ => vec![Reading::new(Framing::E2eeClient, false)],
        }
    }

    fn rtp(&mut self, p: &[u8], map: Option<&CodecMap>) {
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
        if !self.streams.contains_key(&h.ssrc) {
            let st = Stream {
                packets: 0,
                payload_bytes: 0,
                canary_packets: 0,
                histogram: vec![0; 256],
                participant: map.and_then(|m| m.participant.clone()),
                readings: self.readings(h.payload_type, map),
            };
            self.streams.insert(h.ssrc, st);
        }
        let Some(st) = self.streams.get_mut(&h.ssrc) else {
            return;
        };
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
        for r in &mut st.readings {
            r.packet(&h, payload, self.canary);
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
            .map(|(ssrc, mut st)| {
                for r in &mut st.readings {
                    r.finish();
                }
                // A reading whose frames start with the plaintext magic is the stream's own
                // framing (e2ee-client plaintext): reported, though a misreading may find
                // more "SFrame". Else the reading with the larger SFrame share (then more
                // frames; then the first, e2ee-client's). Every stream has a reading.
                let magic = |r: &Reading| {
                    r.frames > 0
                        && r.plaintext_magic_frames as f64
                            > r.frames as f64 * (1.0 - MIN_SFRAME_SHARE)
                };
                let mut best = &st.readings[0];
                for r in &st.readings[1..] {
                    let key = |r: &Reading| (magic(r), r.share(), r.frames);
                    if key(r) > key(best) {
                        best = r;
                    }
                }
                StreamReport {
                    ssrc,
                    framing: best.framing.name().into(),
                    participant: st.participant.clone(),
                    ssrc_hex: format!("0x{ssrc:08x}"),
                    packets: st.packets,
                    payload_bytes: st.payload_bytes,
                    frames: best.frames,
                    frames_incomplete: best.rx.frames_incomplete,
                    sframe_frames: best.sframe_frames,
                    sframe_share: best.share(),
                    plaintext_magic_frames: best.plaintext_magic_frames,
                    canary_packets: st.canary_packets,
                    canary_frames: st
                        .readings
                        .iter()
                        .map(|r| r.canary_frames)
                        .max()
                        .unwrap_or(0),
                    entropy_bits_per_byte: entropy(&st.histogram),
                    magic_in_any_reading: st.readings.iter().any(magic),
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
            if st.magic_in_any_reading {
                reasons.push(format!(
                    "SSRC {}: more than {:.0}% of its frames start with the plaintext magic BRF1, read in one of its framings",
                    st.ssrc_hex,
                    (1.0 - MIN_SFRAME_SHARE) * 100.0
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
            codec_maps: self.codec_maps,
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

    /// A pcapng like a relay's capture: per group of packets, an interface with `comment`
    /// (none: a plain interface) and the packets on it.
    fn pcapng_described(groups: &[(Option<String>, Vec<Vec<u8>>)]) -> Vec<u8> {
        use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
        use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
        use pcap_file::pcapng::PcapNgWriter;
        let mut w = PcapNgWriter::with_endianness(Vec::new(), Endianness::Little).unwrap();
        for (i, (comment, packets)) in groups.iter().enumerate() {
            w.write_pcapng_block(InterfaceDescriptionBlock {
                linktype: pcap_file::DataLink::RAW,
                snaplen: 65535,
                options: comment
                    .iter()
                    .map(|c| InterfaceDescriptionOption::Comment(c.clone().into()))
                    .collect(),
            })
            .unwrap();
            let classic = pcap(packets, false);
            let mut rest = &classic[24..];
            while !rest.is_empty() {
                let len = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
                let data = rest[16..16 + len].to_vec();
                rest = &rest[16 + len..];
                w.write_pcapng_block(EnhancedPacketBlock {
                    interface_id: i as u32,
                    timestamp: std::time::Duration::from_secs(1),
                    original_len: data.len() as u32,
                    data: data.into(),
                    options: vec![],
                })
                .unwrap();
            }
        }
        w.into_inner()
    }

    fn map_comment(participant: &str) -> Option<String> {
        Some(format!(
            r#"{CODECS_COMMENT_TAG} {{"participant":"{participant}","pts":{{"111":"opus/48000/2","96":"VP8/90000","45":"AV1/90000"}}}}"#
        ))
    }

    #[test]
    fn codec_comments_parse_and_others_are_ignored() {
        let m = parse_codecs_comment(&map_comment("p-a").unwrap()).unwrap();
        assert_eq!(m.participant.as_deref(), Some("p-a"));
        assert_eq!(m.codec(111).as_deref(), Some("opus"));
        assert_eq!(m.codec(96).as_deref(), Some("vp8"));
        assert_eq!(m.codec(45).as_deref(), Some("av1"));
        assert_eq!(m.codec(100), None);
        // Out-of-range payload types are left out; another tag, version or bad JSON is no map.
        let m = parse_codecs_comment(r#"blindrelay-codecs/1 {"pts":{"300":"opus/48000/2","x":"VP8/90000","127":"VP8/90000"}}"#).unwrap();
        assert_eq!(m.pts.len(), 1);
        assert_eq!(m.participant, None);
        for other in [
            "blindrelay-codecs/2 {\"pts\":{}}",
            "blindrelay-codecs/1{\"pts\":{}}",
            "blindrelay-codecs/1 {\"pts\":",
            "blindrelay-codecs/1 {}",
            "captured on eth0",
        ] {
            assert_eq!(parse_codecs_comment(other), None, "{other}");
        }
    }

    /// The capture's codec maps let the audit judge web-framed and e2ee-client streams on
    /// the same payload types with no flags: sealed is blind, plaintext is not.
    #[test]
    fn codec_maps_judge_web_and_e2ee_client_streams_without_flags() {
        // A web sender whose KID changes midway (a new MLS epoch, its CTR restarting).
        let ctr = std::cell::Cell::new(0u64);
        let web_sealed = web_stream(|meta, f| {
            ctr.set(ctr.get() + 1);
            let (kid, c) = if ctr.get() <= 40 {
                (2, ctr.get())
            } else {
                (9, ctr.get() - 40)
            };
            sframe::encrypt(
                sframe::CipherSuite::AesGcm128Sha256,
                &[7; 16],
                kid,
                c,
                meta,
                f,
            )
            .unwrap()
        });
        let c2 = std::cell::Cell::new(0);
        let cli_sealed = stream(0x1111, 20, b"CANARY", seal(&c2));
        let r = audit_reader(
            &pcapng_described(&[
                (None, vec![]),
                (map_comment("p-web"), web_sealed.clone()),
                (map_comment("p-cli"), cli_sealed.clone()),
            ])[..],
            Some(b"CANARY"),
        )
        .unwrap();
        assert!(r.blind, "{}", r.table());
        assert_eq!(r.codec_maps, 2);
        let by_ssrc = |ssrc| r.streams.iter().find(|s| s.ssrc == ssrc).unwrap();
        for (ssrc, framing, who) in [
            (0xa0, "web-opus", "p-web"),
            (0xb0, "web-vp8", "p-web"),
            (0x1111, "e2ee-client", "p-cli"),
        ] {
            let s = by_ssrc(ssrc);
            assert_eq!(s.framing, framing, "{}", r.table());
            assert_eq!(s.participant.as_deref(), Some(who));
            assert!(s.frames >= 19, "{}", r.table());
            assert_eq!(s.sframe_frames, s.frames, "{}", r.table());
        }
        assert!(r.table().contains("(p-web)"), "{}", r.table());

        // The same media in the clear, from both kinds of sender: NOT blind, every stream.
        let web_plain = web_stream(|_, f| f.to_vec());
        let cli_plain = stream(0x2222, 20, b"CANARY", |f| f.to_vec());
        let r = audit_reader(
            &pcapng_described(&[
                (map_comment("p-web"), web_plain.clone()),
                (map_comment("p-cli"), cli_plain),
            ])[..],
            Some(b"CANARY"),
        )
        .unwrap();
        assert!(!r.blind, "{}", r.table());
        for s in &r.streams {
            assert!(s.sframe_share < 0.9, "{}", r.table());
            let reason = r.reasons.iter().any(|x| x.contains(&s.ssrc_hex));
            assert!(reason, "{}", r.table());
        }
        // e2ee-client's plaintext is reported in its own framing, found by its magic.
        let cli = r.streams.iter().find(|s| s.ssrc == 0x2222).unwrap();
        assert!(cli.magic_in_any_reading, "{}", r.table());
        assert_eq!(cli.framing, "e2ee-client", "{}", r.table());
        assert_eq!(
            (cli.sframe_frames, cli.plaintext_magic_frames),
            (0, cli.frames),
            "{}",
            r.table()
        );
        // Without the maps the sealed web streams do not audit blind: the maps are what
        // make the audit right.
        let r = audit_reader(&pcapng_described(&[(None, web_sealed.clone())])[..], None).unwrap();
        assert!(!r.blind, "{}", r.table());
        assert_eq!(r.codec_maps, 0);
        // Flags override the maps: named as e2ee-client's (other) payload types, the web
        // streams are read that way only.
        let flags = WebFraming {
            opus_pts: vec![1],
            vp8_pts: vec![2],
        };
        let bytes = pcapng_described(&[(map_comment("p-web"), web_sealed)]);
        let r = audit_reader_framed(&bytes[..], None, &flags).unwrap();
        assert!(!r.blind, "{}", r.table());
        assert!(r.streams.iter().all(|s| s.framing == "e2ee-client"));
    }

    /// Frames under the KIDs `kids` (one entry per frame), CTRs rising from 1 per KID, in
    /// the web Opus framing: how many count as SFrame.
    fn counted(kids: &[u64]) -> (u64, u64) {
        let mut reading = Reading::new(Framing::WebOpus, true);
        let mut ctr: BTreeMap<u64, u64> = BTreeMap::new();
        for (n, kid) in kids.iter().enumerate() {
            let c = ctr.entry(*kid).or_default();
            *c += 1;
            let mut f = vec![0x5a; 64];
            crate::sframe::Header::new(*kid, *c)
                .encode_into(&mut f)
                .expect("a header fits in 64 bytes");
            let h = RtpHeader {
                marker: true,
                payload_type: 111,
                sequence: n as u16,
                timestamp: n as u32 * 960,
                ssrc: 1,
                header_len: 12,
                padding_len: 0,
            };
            reading.packet(&h, &f, None);
        }
        reading.finish();
        (reading.frames, reading.sframe_frames)
    }

    /// An MLS epoch that lived for fewer than `MIN_RUN` frames between two others (or at
    /// the end, after one) counts; a short KID with no sequence beside it does not.
    #[test]
    fn a_brief_epoch_between_sequences_counts() {
        let run = |kid: u64, n: usize| std::iter::repeat_n(kid, n);
        let kids: Vec<u64> = run(0x201, 10)
            .chain(run(0x202, 2))
            .chain(run(0x203, 10))
            .collect();
        assert_eq!(counted(&kids), (22, 22));
        // At the start, before a sequence; at the end, after one.
        let kids: Vec<u64> = run(0x201, 3)
            .chain(run(0x202, 10))
            .chain(run(0x203, 1))
            .collect();
        assert_eq!(counted(&kids), (14, 14));
        // Two brief KIDs in a row: the one beside no sequence is not counted.
        let kids: Vec<u64> = run(0x201, 10)
            .chain(run(0x202, 2))
            .chain(run(0x203, 2))
            .chain(run(0x204, 2))
            .chain(run(0x205, 10))
            .collect();
        assert_eq!(counted(&kids), (26, 24));
        // Short KIDs alone never count.
        let kids: Vec<u64> = (0..30).map(|i| 0x300 + i / 3).collect();
        assert_eq!(counted(&kids), (30, 0));
    }

    /// Dense plaintext whose first bytes happen to parse as an SFrame header with one KID
    /// and sometimes-rising CTRs does not pass as a sequence.
    #[test]
    fn random_headers_rarely_make_a_sequence() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut reading = Reading::new(Framing::WebOpus, true);
        for n in 0..2000u16 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // KID 7 inline, a 1-byte CTR: like an Opus TOC byte 0x78 and random data.
            let mut p = vec![0x78, x as u8];
            p.extend((0..60).map(|i| (x >> (i % 56)) as u8));
            let h = RtpHeader {
                marker: false,
                payload_type: 111,
                sequence: n,
                timestamp: u32::from(n) * 960,
                ssrc: 1,
                header_len: 12,
                padding_len: 0,
            };
            reading.packet(&h, &p, None);
        }
        assert_eq!(reading.frames, 2000);
        assert!(reading.share() < 0.3, "{}", reading.share());
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
            codec_maps: 0,
        };
        a.datagram(LINK_ETHERNET, &eth, None);
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
            None,
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
        a.datagram(LINK_RAW, &frag, None);
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
