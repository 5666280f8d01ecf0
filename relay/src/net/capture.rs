//! A pcapng capture of what the relay holds: every RTP packet it forwards, after hop
//! decryption (clear RTP header, end-to-end payload), so anyone can audit with their own
//! tools that the payload is ciphertext (`e2ee-client audit`, tshark, Wireshark).
//!
//! pcapng (written with the `pcap-file` crate), little-endian, LINKTYPE_RAW: each packet is
//! an IPv4 (or IPv6) + UDP datagram built with `etherparse`, from the sender's address to
//! the relay's media address, around the RTP packet. Decode it with
//! `tshark -d udp.port==MEDIA_PORT,rtp`.
//!
//! The capture describes itself: each sender (participant) gets its own interface, whose
//! comment is its codec map, `blindrelay-codecs/1 {"participant":"p-…","pts":{"111":
//! "opus/48000/2","96":"VP8/90000"}}` (payload types as its offer numbered them, the
//! numbers its packets carry). An auditor then knows which streams are Opus and VP8
//! without asking the participants. A sender whose ICE agent nominates another pair (a new
//! address) gets an interface for that address too, with the same map. Interface 0 holds
//! senders without a map (none, unless the table of [`MAX_DESCRIBED`] senders
//! overflowed). No key material is written.
//!
//! The forwarding loops only copy the packet into a bounded queue (a full queue drops and
//! counts); a dedicated thread does the file IO, so a slow disk never stalls forwarding.
//! The file never grows past `capture.max_bytes`: the capture stops there, the relay not.

use crate::config::CaptureConfig;
use crate::core::forward::{MediaTap, TapPacket};
use crate::core::plane::SenderInfo;
use crate::core::{CallKey, PeerId};
use crate::metrics::Metrics;
use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder};
use metrics::{Counter, Gauge};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
// crossbeam's bounded channel, not std's: `flush` must wait for room with a deadline
// (`send_timeout`), which std's `SyncSender` lacks.
use crossbeam_channel::{
    self as channel, RecvTimeoutError, SendTimeoutError, Sender, TrySendError,
};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tracing::{info, warn};

/// Records queued between the forwarding loops and the writer thread. Bounds the memory a
/// stalled disk can hold (a few MiB of RTP) and absorbs bursts.
pub const CAPTURE_QUEUE: usize = 4096;
/// LINKTYPE_RAW: the packet starts with an IPv4 or IPv6 header.
pub const LINKTYPE_RAW: u32 = 101;
/// The tag and format version that start a sender interface's comment; the JSON object
/// follows after one space. A reader ignores comments with another tag.
pub const CODECS_COMMENT_TAG: &str = "blindrelay-codecs/1";
/// Senders whose codec maps a capture holds (joins add one each; the oldest, preferably
/// one that left, makes room), and sender interfaces it writes: further senders' packets
/// go on interface 0, without a map.
pub const MAX_DESCRIBED: usize = 4096;
/// Bytes of an enhanced packet block around its (4-byte padded) data: block type, length,
/// interface, timestamp (2), captured and original length, trailing length.
pub const EPB_OVERHEAD: usize = 32;
/// Largest datagram (IP header included) a record holds; larger ones are not captured.
const SNAPLEN: u32 = 65_535;
/// How long written records may sit in the buffer, so a running capture can be read.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// if_tsresol 9: nanoseconds, the unit pcap-file writes packet timestamps in.
const TSRESOL_NANOS: u8 = 9;

/// The section header: little-endian, this relay as the writing application, and a note
/// that says what the file holds.
fn section_header() -> SectionHeaderBlock<'static> {
    SectionHeaderBlock {
        endianness: Endianness::Little,
        major_version: 1,
        minor_version: 0,
        section_length: -1,
        options: vec![
            SectionHeaderOption::UserApplication(Cow::Borrowed(concat!(
                "blindrelay ",
                env!("CARGO_PKG_VERSION")
            ))),
            SectionHeaderOption::Comment(Cow::Borrowed(
                "RTP the relay forwarded, after hop decryption (clear header, end-to-end \
                 payload). One interface per sender; its comment is the sender's codec map \
                 (blindrelay-codecs/1 JSON), read by e2ee-client audit.",
            )),
        ],
    }
}

/// An interface description: raw IP, nanosecond timestamps, and `comment`.
fn interface(comment: String) -> InterfaceDescriptionBlock<'static> {
    InterfaceDescriptionBlock {
        linktype: DataLink::from(LINKTYPE_RAW),
        snaplen: SNAPLEN,
        options: vec![
            InterfaceDescriptionOption::Comment(Cow::Owned(comment)),
            InterfaceDescriptionOption::IfTsResol(TSRESOL_NANOS),
        ],
    }
}

/// The comment of interface 0.
const UNDESCRIBED: &str = "blindrelay: senders without a codec map";

/// The comment that describes one sender: [`CODECS_COMMENT_TAG`], a space, then
/// `{"participant": public id, "pts": {payload type: rtpmap encoding}}`.
pub fn codecs_comment(sender: &SenderInfo) -> String {
    let pts: BTreeMap<String, &str> = sender
        .codecs
        .iter()
        .map(|(pt, c)| (pt.to_string(), c.rtpmap()))
        .collect();
    let body = serde_json::json!({ "participant": sender.participant, "pts": pts });
    format!("{CODECS_COMMENT_TAG} {body}")
}

/// Why a capture could not start.
#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("cannot create capture file {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start the capture writer thread: {0}")]
    Thread(std::io::Error),
}

enum Msg {
    Packet(Record),
    /// Flush the file, then answer.
    Flush(Sender<()>),
}

struct Record {
    at: SystemTime,
    from: SocketAddr,
    data: Vec<u8>,
}

/// Limits the capture to the calls with one id. The signalling join path adds each call key
/// that id gets, so the packet path compares integers, never strings.
struct CallFilter {
    id: String,
    keys: RwLock<Vec<CallKey>>,
}

/// One sender's description, by its address.
struct Described {
    peer: PeerId,
    /// Tells a later sender at the same address apart (it gets an interface of its own).
    generation: u64,
    left: bool,
    comment: Arc<str>,
}

/// The senders a capture can describe, by address: filled at attach, read by the writer
/// when a sender's first packet arrives. At most [`MAX_DESCRIBED`].
#[derive(Default)]
struct Senders {
    by_addr: HashMap<SocketAddr, Described>,
    next_generation: u64,
}

impl Senders {
    /// Describe the sender at `addr` (a new generation, so a new interface), making room
    /// first when the table is full.
    fn describe(&mut self, addr: SocketAddr, peer: PeerId, comment: Arc<str>) {
        if self.by_addr.len() >= MAX_DESCRIBED && !self.by_addr.contains_key(&addr) {
            // Room from the oldest, preferring a sender that left: a described sender
            // whose interface exists already loses nothing.
            let oldest = self
                .by_addr
                .iter()
                .min_by_key(|(_, d)| (!d.left, d.generation))
                .map(|(a, _)| *a);
            if let Some(a) = oldest {
                self.by_addr.remove(&a);
            }
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.by_addr.insert(
            addr,
            Described {
                peer,
                generation,
                left: false,
                comment,
            },
        );
    }
}

type SharedSenders = Arc<Mutex<Senders>>;

fn lock(s: &SharedSenders) -> std::sync::MutexGuard<'_, Senders> {
    // A poisoned lock still guards a valid table.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running capture. Install [`Capture::tap`] in the forwarding loops.
pub struct Capture {
    tx: Sender<Msg>,
    /// Cleared by the writer when it stops, so the packet path stops copying.
    active: Arc<AtomicBool>,
    filter: Option<CallFilter>,
    senders: SharedSenders,
    dropped: Counter,
    path: PathBuf,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("path", &self.path)
            .field("active", &self.is_active())
            .finish()
    }
}

impl Capture {
    /// Create (truncate) `path`, write the pcapng section header and interface 0, and
    /// start the writer thread. `relay_addr` is the media address written as every
    /// packet's destination.
    pub fn start(
        path: &Path,
        config: &CaptureConfig,
        relay_addr: SocketAddr,
        metrics: &Metrics,
    ) -> Result<Arc<Capture>, CaptureError> {
        let create_err = |source| CaptureError::Create {
            path: path.display().to_string(),
            source,
        };
        let mut file =
            BufWriter::with_capacity(256 * 1024, File::create(path).map_err(create_err)?);
        let (enc, head) = file_start().map_err(|e| create_err(std::io::Error::other(e)))?;
        // Written and flushed now, so the file is a valid (empty) pcapng from the start.
        file.write_all(&head).map_err(create_err)?;
        file.flush().map_err(create_err)?;
        let (tx, rx) = channel::bounded(CAPTURE_QUEUE);
        let active = Arc::new(AtomicBool::new(true));
        let senders = SharedSenders::default();
        let writer = Writer {
            enc,
            file,
            written: head.len() as u64,
            max_bytes: config.max_bytes,
            relay_addr,
            active: active.clone(),
            packets: metrics.capture_packets.clone(),
            dropped: metrics.capture_dropped.clone(),
            stopped: metrics.capture_stopped.clone(),
            gauge: metrics.capture_active.clone(),
            path: path.to_path_buf(),
            ip_id: 0,
            buf: Vec::with_capacity(2048),
            senders: senders.clone(),
            interfaces: HashMap::new(),
            interface_count: 1,
        };
        std::thread::Builder::new()
            .name("blindrelay-capture".into())
            .spawn(move || writer.run(rx))
            .map_err(CaptureError::Thread)?;
        metrics.capture_active.set(1.0);
        info!(
            path = %path.display(),
            max_bytes = config.max_bytes,
            call = config.call.as_deref().unwrap_or("*"),
            "capturing forwarded RTP (after hop decryption) to pcapng"
        );
        Ok(Arc::new(Capture {
            tx,
            active,
            filter: config.call.clone().map(|id| CallFilter {
                id,
                keys: RwLock::new(Vec::new()),
            }),
            senders,
            dropped: metrics.capture_dropped.clone(),
            path: path.to_path_buf(),
        }))
    }

    /// The hook for the forwarding loops.
    pub fn tap(self: &Arc<Self>) -> MediaTap {
        let cap = self.clone();
        Arc::new(move |p: &TapPacket<'_>| cap.offer(p))
    }

    /// Whether packets are still being written (false once the size cap or an error
    /// stopped the capture).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// The signalling path tells every join; a call whose id the filter names is captured
    /// from then on.
    pub fn on_join(&self, call_id: &str, key: CallKey) {
        let Some(f) = &self.filter else {
            return;
        };
        if f.id != call_id {
            return;
        }
        // The lock guards a plain list; a poisoned one is still a valid list.
        let mut keys = f.keys.write().unwrap_or_else(|p| p.into_inner());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }

    /// A participant of `call` sends from `addr` from now on (told before its forwarding
    /// loop learns of it, so before its first packet): its packets go on an interface of
    /// their own, described by its codec map.
    pub fn on_attach(&self, peer: PeerId, call: CallKey, addr: SocketAddr, sender: &SenderInfo) {
        if !self.wanted(call) {
            return;
        }
        let comment: Arc<str> = codecs_comment(sender).into();
        lock(&self.senders).describe(addr, peer, comment);
    }

    /// The participant's ICE agent nominated another pair: its packets come from `addr`
    /// from now on (told before its forwarding loop learns of it), under the same codec
    /// map, on an interface for that address. Its old address's description stays for
    /// its packets still queued, marked as a leaver's so it makes room first.
    pub fn on_move(&self, peer: PeerId, addr: SocketAddr) {
        let mut s = lock(&self.senders);
        let Some(comment) = s
            .by_addr
            .values()
            .filter(|d| d.peer == peer && !d.left)
            .max_by_key(|d| d.generation)
            .map(|d| d.comment.clone())
        else {
            // Not described: not in the captured call, or a leaver.
            return;
        };
        for d in s.by_addr.values_mut().filter(|d| d.peer == peer) {
            d.left = true;
        }
        match s.by_addr.get_mut(&addr) {
            // Back at an address it had: that description and its interface still hold.
            Some(d) if d.peer == peer => d.left = false,
            _ => s.describe(addr, peer, comment),
        }
    }

    /// The participant left: its description may make room for others (its packets
    /// still queued keep theirs).
    pub fn on_leave(&self, peer: PeerId) {
        let mut s = lock(&self.senders);
        for d in s.by_addr.values_mut().filter(|d| d.peer == peer) {
            d.left = true;
        }
    }

    fn wanted(&self, call: CallKey) -> bool {
        match &self.filter {
            None => true,
            Some(f) => f
                .keys
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&call),
        }
    }

    /// Called by the forwarding loops: copy and queue, never wait.
    fn offer(&self, p: &TapPacket<'_>) {
        if !self.is_active() || !self.wanted(p.call) {
            return;
        }
        let rec = Record {
            at: SystemTime::now(),
            from: p.from,
            data: p.data.to_vec(),
        };
        match self.tx.try_send(Msg::Packet(rec)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped.increment(1),
            // The writer stopped (it clears `active` first); nothing to count.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Write out everything queued so far and flush the file; waits at most `timeout`.
    /// Blocking: call it from a blocking context. Returns whether the writer confirmed.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack_rx) = channel::bounded(1);
        match self.tx.send_deadline(Msg::Flush(ack_tx), deadline) {
            Ok(()) => ack_rx.recv_deadline(deadline).is_ok(),
            Err(SendTimeoutError::Timeout(_) | SendTimeoutError::Disconnected(_)) => false,
        }
    }
}

/// The block encoder and the file's first bytes: the section header and interface 0.
fn file_start() -> pcap_file::PcapResult<(PcapNgWriter<Vec<u8>>, Vec<u8>)> {
    let mut enc = PcapNgWriter::with_section_header(Vec::new(), section_header())?;
    enc.write_pcapng_block(interface(UNDESCRIBED.into()))?;
    let head = std::mem::take(enc.get_mut());
    Ok((enc, head))
}

/// Bytes a capture file starts with before any packet (section header and interface 0).
pub fn file_header_len() -> usize {
    file_start().map(|(_, h)| h.len()).unwrap_or(0)
}

/// The writer thread's state.
struct Writer {
    /// Encodes blocks into its buffer; written to `file` once their size is checked.
    enc: PcapNgWriter<Vec<u8>>,
    file: BufWriter<File>,
    written: u64,
    max_bytes: u64,
    relay_addr: SocketAddr,
    active: Arc<AtomicBool>,
    packets: Counter,
    dropped: Counter,
    stopped: Counter,
    gauge: Gauge,
    path: PathBuf,
    ip_id: u16,
    /// Reused datagram buffer.
    buf: Vec<u8>,
    senders: SharedSenders,
    /// Each described sender's interface: (its description's generation, interface id).
    /// At most [`MAX_DESCRIBED`]: one per interface written.
    interfaces: HashMap<SocketAddr, (u64, u32)>,
    /// Interfaces written so far (interface 0 included).
    interface_count: u32,
}

impl Writer {
    fn run(mut self, rx: channel::Receiver<Msg>) {
        let mut last_flush = Instant::now();
        let mut dirty = false;
        loop {
            let msg = match rx.recv_timeout(FLUSH_EVERY) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    if dirty {
                        self.flush_or_stop();
                        dirty = false;
                        last_flush = Instant::now();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            match msg {
                Msg::Flush(ack) => {
                    if self.active.load(Ordering::Relaxed) {
                        self.flush_or_stop();
                    }
                    dirty = false;
                    last_flush = Instant::now();
                    let _ = ack.send(());
                }
                Msg::Packet(rec) => {
                    // Records queued before a stop are discarded with it.
                    if !self.active.load(Ordering::Relaxed) {
                        continue;
                    }
                    self.write(&rec);
                    dirty = true;
                    if last_flush.elapsed() >= FLUSH_EVERY {
                        self.flush_or_stop();
                        dirty = false;
                        last_flush = Instant::now();
                    }
                }
            }
        }
        if self.active.load(Ordering::Relaxed) {
            self.flush_or_stop();
            self.active.store(false, Ordering::Relaxed);
            self.gauge.set(0.0);
        }
    }

    /// The interface for packets from `from`, and the description block to write first
    /// when it is new.
    fn interface_of(&mut self, from: SocketAddr) -> (u32, Option<(u64, Arc<str>)>) {
        let s = lock(&self.senders);
        let Some(d) = s.by_addr.get(&from) else {
            // Not described now: the interface it had, if any, else 0.
            return (self.interfaces.get(&from).map_or(0, |(_, i)| *i), None);
        };
        match self.interfaces.get(&from) {
            Some((g, i)) if *g == d.generation => (*i, None),
            _ if self.interface_count as usize > MAX_DESCRIBED => (0, None),
            _ => (
                self.interface_count,
                Some((d.generation, d.comment.clone())),
            ),
        }
    }

    fn write(&mut self, rec: &Record) {
        self.ip_id = self.ip_id.wrapping_add(1);
        if !encode_datagram(
            rec.from,
            self.relay_addr,
            &rec.data,
            self.ip_id,
            &mut self.buf,
        ) {
            // Larger than an IP datagram can be: cannot be a packet the relay received.
            self.dropped.increment(1);
            return;
        }
        let (mut iface, mut new) = self.interface_of(rec.from);
        self.enc.get_mut().clear();
        if let Some((_, comment)) = &new {
            // Encoding into a Vec fails only on an invalid block, which this is not; if it
            // did, the packet goes undescribed on interface 0.
            if let Err(e) = self.enc.write_pcapng_block(interface(comment.to_string())) {
                warn!(error = %e, "sender interface left out of the capture");
                self.enc.get_mut().clear();
                (iface, new) = (0, None);
            }
        }
        let since = rec.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        // `encode_datagram` keeps the datagram within the snap length, so its length fits.
        let len = self.buf.len() as u32;
        let block = EnhancedPacketBlock {
            interface_id: iface,
            timestamp: since,
            original_len: len,
            data: Cow::Borrowed(&self.buf),
            options: vec![],
        };
        if let Err(e) = self.enc.write_pcapng_block(block) {
            warn!(error = %e, "packet left out of the capture");
            self.dropped.increment(1);
            return;
        }
        let size = self.enc.get_ref().len() as u64;
        if self.written + size > self.max_bytes {
            let _ = self.file.flush();
            self.stop(&format!(
                "capture.max_bytes ({}) reached; no more packets are captured",
                self.max_bytes
            ));
            return;
        }
        if let Err(e) = self.file.write_all(self.enc.get_ref()) {
            self.stop(&format!("write failed: {e}"));
            return;
        }
        self.written += size;
        if let Some((generation, _)) = new {
            self.interfaces.insert(rec.from, (generation, iface));
            self.interface_count += 1;
        }
        self.packets.increment(1);
    }

    fn flush_or_stop(&mut self) {
        if let Err(e) = self.file.flush() {
            self.stop(&format!("write failed: {e}"));
        }
    }

    /// The one place a capture stops early: one log line, one count, the gauge to 0.
    fn stop(&mut self, why: &str) {
        self.active.store(false, Ordering::Relaxed);
        self.stopped.increment(1);
        self.gauge.set(0.0);
        warn!(
            path = %self.path.display(),
            bytes = self.written,
            "capture stopped: {why}; the relay keeps forwarding"
        );
    }
}

/// The address as IPv6, mapping IPv4 (for a sender and relay of different families).
fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Replace `out` with an IP + UDP datagram from `from` to `to` carrying `payload` (IPv4
/// when both are IPv4, else IPv6; lengths and checksums filled in). Returns false, leaving
/// `out` empty, when it would not fit one datagram within the snap length.
fn encode_datagram(
    from: SocketAddr,
    to: SocketAddr,
    payload: &[u8],
    ip_id: u16,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    let ip = match (from.ip(), to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            // Lengths and checksum are the builder's; don't fragment, TTL 64.
            let Ok(mut h) = Ipv4Header::new(0, 64, IpNumber::UDP, s.octets(), d.octets()) else {
                return false;
            };
            h.identification = ip_id;
            PacketBuilder::ip(IpHeaders::Ipv4(h, Default::default()))
        }
        (s, d) => PacketBuilder::ipv6(as_v6(s).octets(), as_v6(d).octets(), 64),
    };
    let udp = ip.udp(from.port(), to.port());
    if udp.size(payload.len()) > SNAPLEN as usize || udp.write_to_vec(out, payload).is_err() {
        out.clear();
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Internet checksum (RFC 1071) of `data`, starting from a partial sum: an
    /// independent check of the headers the library builds.
    fn checksum(mut sum: u32, data: &[u8]) -> u16 {
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// Every block of a pcapng file after its section header, as pcap-file reads them back.
    fn blocks(bytes: &[u8]) -> Vec<pcap_file::pcapng::Block<'static>> {
        let (mut rest, mut parser) = pcap_file::pcapng::PcapNgParser::new(bytes).unwrap();
        let mut out = Vec::new();
        while !rest.is_empty() {
            let (r, b) = parser.next_block(rest).unwrap();
            out.push(b.into_owned());
            rest = r;
        }
        out
    }

    fn idb_comment(b: &pcap_file::pcapng::Block<'_>) -> String {
        let pcap_file::pcapng::Block::InterfaceDescription(i) = b else {
            panic!("not an interface description: {b:?}");
        };
        assert_eq!(u32::from(i.linktype), LINKTYPE_RAW);
        assert!(i
            .options
            .contains(&InterfaceDescriptionOption::IfTsResol(TSRESOL_NANOS)));
        i.options
            .iter()
            .find_map(|o| match o {
                InterfaceDescriptionOption::Comment(c) => Some(c.to_string()),
                _ => None,
            })
            .expect("every interface has a comment")
    }

    fn alice() -> SenderInfo {
        use blindrelay_protocol::sdp::Codec;
        SenderInfo {
            participant: "p-alice".into(),
            codecs: vec![(111, Codec::Opus), (96, Codec::Vp8), (45, Codec::Av1)],
        }
    }

    #[test]
    fn file_starts_with_a_little_endian_section_and_interface_0() {
        let (_, head) = file_start().unwrap();
        assert_eq!(head.len(), file_header_len());
        // The section header's magic, then its byte-order magic in little-endian.
        assert_eq!(&head[..4], &[0x0a, 0x0d, 0x0d, 0x0a]);
        assert_eq!(&head[8..12], &0x1a2b_3c4du32.to_le_bytes());
        let b = blocks(&head);
        assert_eq!(b.len(), 1);
        assert_eq!(idb_comment(&b[0]), UNDESCRIBED);
        assert!(
            (file_header_len() as u64) <= crate::config::MIN_CAPTURE_BYTES,
            "the smallest allowed capture holds its header"
        );
    }

    #[test]
    fn the_codec_comment_is_tagged_json() {
        let c = codecs_comment(&alice());
        let (tag, json) = c.split_once(' ').unwrap();
        assert_eq!(tag, CODECS_COMMENT_TAG);
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "participant": "p-alice",
                "pts": {"111": "opus/48000/2", "96": "VP8/90000", "45": "AV1/90000"}
            })
        );
    }

    fn datagram(from: SocketAddr, to: SocketAddr, payload: &[u8], ip_id: u16) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(encode_datagram(from, to, payload, ip_id, &mut out));
        out
    }

    #[test]
    fn ipv4_datagram_has_valid_lengths_and_header_checksum() {
        let from: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let to: SocketAddr = "10.0.0.2:7402".parse().unwrap();
        let out = datagram(from, to, b"rtp!", 7);
        assert_eq!(out.len(), 20 + 8 + 4);
        let ip = &out[0..20];
        assert_eq!(ip[0], 0x45);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 32);
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 7);
        assert_eq!(ip[9], 17);
        // A correct header sums (with its checksum) to all ones: checksum() gives 0.
        assert_eq!(checksum(0, ip), 0);
        let udp = &out[20..28];
        assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 5000);
        assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 7402);
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]), 12);
        assert_eq!(&out[28..], b"rtp!");
        // The UDP checksum is filled in and verifies over the IPv4 pseudo-header.
        assert_ne!(&out[26..28], &[0, 0]);
        let mut pseudo = 17 + 12u32;
        for c in ip[12..20].chunks(2) {
            pseudo += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        assert_eq!(checksum(pseudo, &out[20..]), 0);
    }

    #[test]
    fn ipv6_datagram_has_a_valid_udp_checksum() {
        let from: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let to: SocketAddr = "[2001:db8::2]:7402".parse().unwrap();
        let out = datagram(from, to, b"odd", 1);
        let ip = &out[0..40];
        assert_eq!(ip[0] >> 4, 6);
        let udp = &out[40..];
        // Verify: pseudo-header + UDP segment (checksum included) sums to all ones.
        let mut pseudo = 0u32;
        for c in ip[8..40].chunks(2) {
            pseudo += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        pseudo += udp.len() as u32 + 17;
        assert_eq!(checksum(pseudo, udp), 0);
    }

    #[test]
    fn oversize_payload_is_refused() {
        let mut out = Vec::new();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(!encode_datagram(a, a, &[0u8; 65_510], 0, &mut out));
        assert!(out.is_empty());
    }

    fn temp_path(name: &str) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        std::env::temp_dir().join(format!(
            "blindrelay-capture-{name}-{}-{nanos}.pcapng",
            std::process::id()
        ))
    }

    /// The interface and UDP payload of each packet block.
    fn packets(b: &[pcap_file::pcapng::Block<'_>]) -> Vec<(u32, Vec<u8>)> {
        b.iter()
            .filter_map(|b| match b {
                pcap_file::pcapng::Block::EnhancedPacket(p) => Some(p),
                _ => None,
            })
            .map(|p| {
                let sliced = etherparse::SlicedPacket::from_ip(&p.data).unwrap();
                match sliced.transport {
                    Some(etherparse::TransportSlice::Udp(u)) => {
                        assert_eq!(u.destination_port(), 7402);
                        (p.interface_id, u.payload().to_vec())
                    }
                    other => panic!("not UDP: {other:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn writes_packets_filters_calls_and_stops_at_the_cap() {
        let path = temp_path("cap");
        let metrics = Metrics::new();
        let relay: SocketAddr = "127.0.0.1:7402".parse().unwrap();
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        // A packet block: its header and trailer around the 4-byte padded datagram.
        let per_packet = (EPB_OVERHEAD + (28 + 100)) as u64;
        let alice_idb = {
            let mut w = PcapNgWriter::new(Vec::new()).unwrap();
            w.get_mut().clear();
            w.write_pcapng_block(interface(codecs_comment(&alice())))
                .unwrap();
            w.get_ref().len() as u64
        };
        let cfg = CaptureConfig {
            path: Some(path.clone()),
            max_bytes: file_header_len() as u64 + alice_idb + 3 * per_packet + 10,
            call: Some("demo".into()),
        };
        let cap = Capture::start(&path, &cfg, relay, &metrics).unwrap();
        let tap = cap.tap();
        let data = [0x80u8; 100];
        // Not yet joined: filtered out.
        tap(&TapPacket {
            from,
            call: 9,
            data: &data,
        });
        cap.on_join("other", 8);
        cap.on_join("demo", 9);
        // Only the captured call's senders are described.
        cap.on_attach(1, 8, from, &alice());
        assert!(lock(&cap.senders).by_addr.is_empty());
        cap.on_attach(2, 9, from, &alice());
        for call in [8, 9, 9, 9, 9, 9] {
            tap(&TapPacket {
                from,
                call,
                data: &data,
            });
        }
        assert!(cap.flush(Duration::from_secs(5)));
        assert!(!cap.is_active(), "the fourth packet crosses the cap");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            bytes.len() as u64,
            file_header_len() as u64 + alice_idb + 3 * per_packet
        );
        // A library reader reads it back: the section, interface 0, alice's interface
        // with her codec map, then three raw-IP UDP datagrams from her to the relay.
        let b = blocks(&bytes);
        assert_eq!(b.len(), 5);
        assert_eq!(idb_comment(&b[1]), codecs_comment(&alice()));
        assert_eq!(packets(&b), vec![(1, data.to_vec()); 3]);
        let text = metrics.render();
        assert!(
            text.contains("blindrelay_capture_packets_total 3"),
            "{text}"
        );
        assert!(
            text.contains("blindrelay_capture_stopped_total 1"),
            "{text}"
        );
        assert!(text.contains("blindrelay_capture_active 0"), "{text}");
        let _ = std::fs::remove_file(&path);
    }

    /// A capture of every call at a fresh temp path, for a relay at 127.0.0.1:7402.
    fn described_capture(name: &str) -> (PathBuf, Arc<Capture>) {
        let path = temp_path(name);
        let cfg = CaptureConfig {
            path: Some(path.clone()),
            ..CaptureConfig::default()
        };
        let relay: SocketAddr = "127.0.0.1:7402".parse().unwrap();
        let cap = Capture::start(&path, &cfg, relay, &Metrics::new()).unwrap();
        (path, cap)
    }

    /// Each sender gets its interface once; an undescribed one goes on interface 0; a new
    /// participant at a departed one's address gets an interface of its own.
    #[test]
    fn one_interface_per_described_sender() {
        use blindrelay_protocol::sdp::Codec;
        let (path, cap) = described_capture("ifaces");
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let stranger: SocketAddr = "127.0.0.1:5002".parse().unwrap();
        let tap = cap.tap();
        let bob = SenderInfo {
            participant: "p-bob".into(),
            codecs: vec![(109, Codec::Opus), (120, Codec::Vp8)],
        };
        let carol = SenderInfo {
            participant: "p-carol".into(),
            codecs: vec![(111, Codec::Opus)],
        };
        cap.on_attach(1, 1, a, &alice());
        cap.on_attach(2, 1, b, &bob);
        let send = |from, byte: u8| {
            tap(&TapPacket {
                from,
                call: 1,
                data: &[byte; 20],
            })
        };
        send(a, 1);
        send(b, 2);
        send(a, 3);
        send(stranger, 4);
        // The writer reads a description when it writes the sender's first packet: wait for
        // that before the address changes hands.
        assert!(cap.flush(Duration::from_secs(5)));
        // Alice leaves; carol joins from her address.
        cap.on_leave(1);
        cap.on_attach(3, 1, a, &carol);
        send(a, 5);
        assert!(cap.flush(Duration::from_secs(5)));
        let blocks = blocks(&std::fs::read(&path).unwrap());
        let comments: Vec<String> = blocks
            .iter()
            .filter(|b| matches!(b, pcap_file::pcapng::Block::InterfaceDescription(_)))
            .map(idb_comment)
            .collect();
        assert_eq!(
            comments,
            vec![
                UNDESCRIBED.to_string(),
                codecs_comment(&alice()),
                codecs_comment(&bob),
                codecs_comment(&carol)
            ]
        );
        let got: Vec<(u32, u8)> = packets(&blocks)
            .into_iter()
            .map(|(i, d)| (i, d[0]))
            .collect();
        assert_eq!(got, vec![(1, 1), (2, 2), (1, 3), (0, 4), (3, 5)]);
        let _ = std::fs::remove_file(&path);
    }

    /// A sender whose nominated ICE pair moved keeps its codec map: its packets from the
    /// new address go on an interface described like its first, and back at the first
    /// address on that first interface again. Another participant's move changes nothing
    /// of hers, and a move of someone undescribed describes no one.
    #[test]
    fn a_moved_sender_stays_described() {
        let (path, cap) = described_capture("moved");
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let tap = cap.tap();
        let send = |from, byte: u8| {
            tap(&TapPacket {
                from,
                call: 1,
                data: &[byte; 20],
            })
        };
        cap.on_attach(1, 1, a, &alice());
        send(a, 1);
        cap.on_move(9, b);
        assert_eq!(lock(&cap.senders).by_addr.len(), 1, "no one to describe");
        // The writer reads a description when it writes a sender's first packet from an
        // address: wait for that before the next move.
        assert!(cap.flush(Duration::from_secs(5)));
        cap.on_move(1, b);
        send(b, 2);
        assert!(cap.flush(Duration::from_secs(5)));
        cap.on_move(1, a);
        send(a, 3);
        assert!(cap.flush(Duration::from_secs(5)));
        let blocks = blocks(&std::fs::read(&path).unwrap());
        let comments: Vec<String> = blocks
            .iter()
            .filter(|b| matches!(b, pcap_file::pcapng::Block::InterfaceDescription(_)))
            .map(idb_comment)
            .collect();
        assert_eq!(
            comments,
            vec![
                UNDESCRIBED.to_string(),
                codecs_comment(&alice()),
                codecs_comment(&alice())
            ]
        );
        let got: Vec<(u32, u8)> = packets(&blocks)
            .into_iter()
            .map(|(i, d)| (i, d[0]))
            .collect();
        assert_eq!(got, vec![(1, 1), (2, 2), (1, 3)]);
        let s = lock(&cap.senders);
        assert!(!s.by_addr[&a].left && s.by_addr[&b].left);
        drop(s);
        let _ = std::fs::remove_file(&path);
    }
}
