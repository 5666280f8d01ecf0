//! A pcap capture of what the relay holds: every RTP packet it forwards, after hop
//! decryption (clear RTP header, end-to-end payload), so anyone can audit with their own
//! tools that the payload is ciphertext (`e2ee-client audit`, tshark, Wireshark).
//!
//! Classic libpcap format (written with the `pcap-file` crate), little-endian, LINKTYPE_RAW:
//! each record is an IPv4 (or IPv6) + UDP datagram built with `etherparse`, from the
//! sender's address to the relay's media address, around the RTP packet. Decode it with
//! `tshark -d udp.port==MEDIA_PORT,rtp`.
//!
//! The forwarding loops only copy the packet into a bounded queue (a full queue drops and
//! counts); a dedicated thread does the file IO, so a slow disk never stalls forwarding.
//! The file never grows past `capture.max_bytes`: the capture stops there, the relay not.

use crate::config::CaptureConfig;
use crate::core::forward::{MediaTap, TapPacket};
use crate::core::CallKey;
use crate::metrics::Metrics;
use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder};
use metrics::{Counter, Gauge};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};
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
/// Bytes of the pcap file header.
pub const PCAP_FILE_HEADER: usize = 24;
/// Bytes of a pcap record header.
pub const PCAP_RECORD_HEADER: usize = 16;
/// LINKTYPE_RAW: the record starts with an IPv4 or IPv6 header.
pub const LINKTYPE_RAW: u32 = 101;
/// Largest datagram (IP header included) a record holds; larger ones are not captured.
const SNAPLEN: u32 = 65_535;
/// How long written records may sit in the buffer, so a running capture can be read.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// The capture's pcap file header: little-endian, microsecond timestamps, LINKTYPE_RAW.
fn header() -> PcapHeader {
    PcapHeader {
        version_major: 2,
        version_minor: 4,
        ts_correction: 0,
        ts_accuracy: 0,
        snaplen: SNAPLEN,
        datalink: DataLink::from(LINKTYPE_RAW),
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::Little,
    }
}

/// The capture file behind its [`PcapWriter`], which owns its sink and offers no way to
/// flush it: the writer thread keeps a second handle to flush the buffer and to learn how
/// far the file got.
#[derive(Clone)]
struct SharedFile(Arc<Mutex<BufWriter<File>>>);

impl SharedFile {
    fn lock(&self) -> std::sync::MutexGuard<'_, BufWriter<File>> {
        // A poisoned lock still guards a valid BufWriter.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.lock().write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.lock().flush()
    }
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

/// A running capture. Install [`Capture::tap`] in the forwarding loops.
pub struct Capture {
    tx: Sender<Msg>,
    /// Cleared by the writer when it stops, so the packet path stops copying.
    active: Arc<AtomicBool>,
    filter: Option<CallFilter>,
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
    /// Create (truncate) `path`, write the pcap file header and start the writer thread.
    /// `relay_addr` is the media address written as every packet's destination.
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
        let mut file = SharedFile(Arc::new(Mutex::new(BufWriter::with_capacity(
            256 * 1024,
            File::create(path).map_err(create_err)?,
        ))));
        // Written and flushed now, so the file is a valid (empty) pcap from the start.
        let pcap = PcapWriter::with_header(file.clone(), header())
            .map_err(|e| create_err(std::io::Error::other(e)))?;
        file.flush().map_err(create_err)?;
        let (tx, rx) = channel::bounded(CAPTURE_QUEUE);
        let active = Arc::new(AtomicBool::new(true));
        let writer = Writer {
            pcap,
            file,
            written: PCAP_FILE_HEADER as u64,
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
            "capturing forwarded RTP (after hop decryption) to pcap"
        );
        Ok(Arc::new(Capture {
            tx,
            active,
            filter: config.call.clone().map(|id| CallFilter {
                id,
                keys: RwLock::new(Vec::new()),
            }),
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

/// The writer thread's state.
struct Writer {
    pcap: PcapWriter<SharedFile>,
    /// The same file, to flush.
    file: SharedFile,
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
        let size = (PCAP_RECORD_HEADER + self.buf.len()) as u64;
        if self.written + size > self.max_bytes {
            let _ = self.file.flush();
            self.stop(&format!(
                "capture.max_bytes ({}) reached; no more packets are captured",
                self.max_bytes
            ));
            return;
        }
        let since = rec.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        // `encode_datagram` keeps the datagram within the snap length, so its length fits.
        let len = self.buf.len() as u32;
        match self
            .pcap
            .write_packet(&PcapPacket::new(since, len, &self.buf))
        {
            Ok(n) => self.written += n as u64,
            Err(pcap_file::PcapError::IoError(e)) => {
                self.stop(&format!("write failed: {e}"));
                return;
            }
            // A field pcap cannot hold (a timestamp past 2106): this record only.
            Err(e) => {
                warn!(error = %e, "packet left out of the capture");
                self.dropped.increment(1);
                return;
            }
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

/// The capture's pcap file header: little-endian, microsecond timestamps, LINKTYPE_RAW.
pub fn pcap_file_header() -> [u8; PCAP_FILE_HEADER] {
    let mut h = [0u8; PCAP_FILE_HEADER];
    // Writing 24 bytes into a 24-byte slice cannot fail.
    let _ = header().write_to(&mut &mut h[..]);
    h
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

/// Append one pcap record (record header, IP header, UDP header, `payload`) to `out`, as
/// the capture writes it. Returns false, appending nothing, when the payload does not fit
/// one IP datagram.
pub fn encode_record(
    at: SystemTime,
    from: SocketAddr,
    to: SocketAddr,
    payload: &[u8],
    ip_id: u16,
    out: &mut Vec<u8>,
) -> bool {
    let mut datagram = Vec::new();
    if !encode_datagram(from, to, payload, ip_id, &mut datagram) {
        return false;
    }
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    // pcap-file writes records only through a writer, which starts with the file header.
    let record = PcapWriter::with_header(Vec::new(), header()).and_then(|mut w| {
        w.write_packet(&PcapPacket::new(since, datagram.len() as u32, &datagram))?;
        Ok(w.into_writer())
    });
    match record {
        Ok(bytes) => {
            out.extend_from_slice(&bytes[PCAP_FILE_HEADER..]);
            true
        }
        Err(_) => false,
    }
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

    #[test]
    fn file_header_is_classic_little_endian_raw() {
        let h = pcap_file_header();
        assert_eq!(&h[0..4], &0xa1b2_c3d4u32.to_le_bytes());
        assert_eq!(&h[4..8], &[2, 0, 4, 0]);
        assert_eq!(&h[16..20], &SNAPLEN.to_le_bytes());
        assert_eq!(&h[20..24], &LINKTYPE_RAW.to_le_bytes());
    }

    fn temp_path(name: &str) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        std::env::temp_dir().join(format!(
            "blindrelay-capture-{name}-{}-{nanos}.pcap",
            std::process::id()
        ))
    }

    #[test]
    fn ipv4_record_has_valid_lengths_and_header_checksum() {
        let mut out = Vec::new();
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let from: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let to: SocketAddr = "10.0.0.2:7402".parse().unwrap();
        assert!(encode_record(at, from, to, b"rtp!", 7, &mut out));
        assert_eq!(out.len(), 16 + 20 + 8 + 4);
        assert_eq!(&out[0..4], &1_700_000_000u32.to_le_bytes());
        assert_eq!(&out[4..8], &123_456u32.to_le_bytes());
        assert_eq!(&out[8..12], &32u32.to_le_bytes());
        let ip = &out[16..36];
        assert_eq!(ip[0], 0x45);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 32);
        assert_eq!(ip[9], 17);
        // A correct header sums (with its checksum) to all ones: checksum() gives 0.
        assert_eq!(checksum(0, ip), 0);
        let udp = &out[36..44];
        assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 5000);
        assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 7402);
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]), 12);
        assert_eq!(&out[44..], b"rtp!");
        // The UDP checksum is filled in and verifies over the IPv4 pseudo-header.
        assert_ne!(&out[42..44], &[0, 0]);
        let mut pseudo = 17 + 12u32;
        for c in ip[12..20].chunks(2) {
            pseudo += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        assert_eq!(checksum(pseudo, &out[36..]), 0);
    }

    #[test]
    fn ipv6_record_has_a_valid_udp_checksum() {
        let mut out = Vec::new();
        let from: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let to: SocketAddr = "[2001:db8::2]:7402".parse().unwrap();
        assert!(encode_record(UNIX_EPOCH, from, to, b"odd", 1, &mut out));
        let ip = &out[16..56];
        assert_eq!(ip[0] >> 4, 6);
        let udp = &out[56..];
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
        assert!(!encode_record(
            UNIX_EPOCH,
            a,
            a,
            &[0u8; 65_510],
            0,
            &mut out
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn writes_packets_filters_calls_and_stops_at_the_cap() {
        let path = temp_path("cap");
        let metrics = Metrics::new();
        let relay: SocketAddr = "127.0.0.1:7402".parse().unwrap();
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let per_record = (PCAP_RECORD_HEADER + 28 + 100) as u64;
        let cfg = CaptureConfig {
            path: Some(path.clone()),
            max_bytes: PCAP_FILE_HEADER as u64 + 3 * per_record + 10,
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
        for call in [8, 9, 9, 9, 9, 9] {
            tap(&TapPacket {
                from,
                call,
                data: &data,
            });
        }
        assert!(cap.flush(Duration::from_secs(5)));
        assert!(!cap.is_active(), "the fourth record crosses the cap");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, PCAP_FILE_HEADER as u64 + 3 * per_record);
        assert_eq!(&bytes[..24], &pcap_file_header());
        // A library reader reads it back: three raw-IP UDP datagrams from the sender to
        // the relay, carrying the packet.
        let (mut rest, parser) = pcap_file::pcap::PcapParser::new(&bytes).unwrap();
        assert_eq!(u32::from(parser.header().datalink), LINKTYPE_RAW);
        for _ in 0..3 {
            let (r, p) = parser.next_packet(rest).unwrap();
            rest = r;
            let sliced = etherparse::SlicedPacket::from_ip(&p.data).unwrap();
            match sliced.transport {
                Some(etherparse::TransportSlice::Udp(u)) => {
                    assert_eq!((u.source_port(), u.destination_port()), (5000, 7402));
                    assert_eq!(u.payload(), &data[..]);
                }
                other => panic!("not UDP: {other:?}"),
            }
        }
        assert!(rest.is_empty());
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
}
