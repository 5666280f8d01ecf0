//! The shared media socket with batched receive (recvmmsg / GRO through quinn-udp).

use bytes::{Buf, BytesMut};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The most one GSO send may carry: under the 65,507-byte UDP payload limit of IPv4.
pub const MAX_GSO_BYTES: usize = 65_000;
/// Datagrams received per syscall at most.
pub const BATCH: usize = 32;
/// Datagrams one [`MediaSocket::recv_batch`] may push at most: the kernel coalesces at
/// most 64 segments into one GRO receive (`UDP_GRO_CNT_MAX`). Callers size their list by
/// it, so a batch of coalesced bursts does not grow it.
pub const MAX_BATCH_DATAGRAMS: usize = BATCH * 64;
/// Receive slot per datagram: with UDP GRO one receive may carry a whole coalesced burst,
/// up to the 64 KiB limit of one IP packet, and a shorter slot would truncate it.
const SLOT: usize = 65_536;
/// Slots per receive buffer: two full batches. Only the pages the kernel writes become
/// resident (the buffer is zero-allocated, so untouched pages stay unmapped), so a
/// 1,200-byte datagram in a 64 KiB slot costs one page, not the slot.
const CHUNK_SLOTS: usize = 2 * BATCH;
/// Bytes per receive buffer.
const CHUNK_BYTES: usize = CHUNK_SLOTS * SLOT;
/// Used-up receive buffers kept for reuse. Downstream holds a buffer only until the
/// forwarding loop has handled its datagrams, so two or three are normally in rotation;
/// more are in flight only under a backlog (a full forwarding ring of 8,192 datagrams
/// that GRO did not coalesce pins up to 128). A buffer in rotation ends up resident (the
/// batches of a light load write it from end to end), so the pool is capped by memory:
/// 10 buffers, 40 MiB, as much as the pool of 40 x 512 KiB buffers of one-datagram slots
/// took before. A backlog deeper than that holds every buffer: see [`RecvBuffers`].
const RECV_POOL: usize = 10;
/// Bytes of each block a backlog's datagrams are copied into, back to back.
const COMPACT_BYTES: usize = 256 * 1024;

/// One received datagram: a zero-copy slice of a receive buffer, and when the kernel
/// received it.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub from: SocketAddr,
    pub data: BytesMut,
    pub at: Instant,
}

/// Turns the kernel's wall-clock receive timestamps into `Instant`s: sampled once per
/// batch, so each datagram keeps its own arrival time at the cost of two clock reads.
#[derive(Debug, Clone, Copy)]
pub struct ArrivalClock {
    now: Instant,
    wall: Duration,
}

impl ArrivalClock {
    /// A timestamp older than this is not believed (the wall clock stepped): the batch's
    /// read time stands in for it.
    const MAX_AGE: Duration = Duration::from_secs(1);

    pub fn now() -> Self {
        ArrivalClock {
            now: Instant::now(),
            wall: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    /// The arrival `Instant` of a datagram the kernel stamped `stamp` (Unix time), or the
    /// read time without a believable stamp.
    pub fn arrival(&self, stamp: Option<Duration>) -> Instant {
        stamp
            .and_then(|t| self.wall.checked_sub(t))
            .filter(|age| *age <= Self::MAX_AGE)
            .and_then(|age| self.now.checked_sub(age))
            .unwrap_or(self.now)
    }
}

/// The receive loop's buffers for [`MediaSocket::recv_batch`].
///
/// Datagrams are handed on as zero-copy `Bytes` slices of a large buffer. Each batch takes
/// the slots it filled off the front of `current`; when too little is left, `current` joins
/// `spent` and the oldest spent buffer none of whose datagrams is still alive is reclaimed
/// in place (`BytesMut::try_reclaim`), so in steady state no buffer is ever allocated.
/// A reclaimed buffer stays a shared (`KIND_ARC`) `BytesMut`: its one small shared header
/// is allocated on the first split of its lifetime and reused afterwards.
///
/// Under a backlog deeper than the pool (each buffer holds only about 64 datagrams, one
/// per 64 KiB slot), every buffer is still held downstream. Batches are then received into
/// `scratch` and each datagram is copied out, back to back, into 256 KiB blocks, until a
/// pooled buffer is free again. The alternative, a fresh zeroed 4 MiB buffer per 64
/// datagrams, cost a 4 MiB memset each (15 % of the relay's CPU at 250k packets/s in
/// `perf record`) and so deepened the very backlog that caused it; a copy of a datagram
/// just received costs about its length.
#[derive(Debug)]
pub struct RecvBuffers {
    /// The buffer being filled, with its allocation's start address; `None` until the
    /// first batch, and while a backlog holds every buffer.
    current: Option<(BytesMut, usize)>,
    /// Oldest first: the oldest is the likeliest to be free.
    spent: Vec<(BytesMut, usize)>,
    /// Received into while a backlog holds every pooled buffer; never handed on.
    scratch: Option<BytesMut>,
    /// The block a backlog's datagrams are copied into.
    compact: BytesMut,
    /// Datagrams copied out of `scratch`.
    copied: u64,
}

impl Default for RecvBuffers {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBuffers {
    pub fn new() -> Self {
        RecvBuffers {
            current: None,
            spent: Vec::with_capacity(RECV_POOL),
            scratch: None,
            compact: BytesMut::new(),
            copied: 0,
        }
    }

    /// Datagrams received under a backlog that held every pooled buffer, and so copied.
    pub fn copied(&self) -> u64 {
        self.copied
    }

    /// Make `current` a buffer with room for a full batch, reusing a drained one if there
    /// is one, growing the pool up to [`RECV_POOL`]; false when a backlog holds every
    /// buffer of a full pool (receive into `scratch` then).
    fn ready(&mut self) -> bool {
        if self
            .current
            .as_ref()
            .is_some_and(|(c, _)| c.len() < BATCH * SLOT)
        {
            if let Some(used) = self.current.take() {
                self.spent.push(used);
            }
        }
        if self.current.is_none() {
            let free = self.spent.iter_mut().position(|(b, _)| {
                // Only the capacity is wanted back: the old datagrams are not kept.
                b.clear();
                b.try_reclaim(CHUNK_BYTES)
            });
            let next = match free {
                None if self.spent.len() >= RECV_POOL => return false,
                Some(i) => {
                    let (mut b, base) = self.spent.remove(i);
                    if b.as_ptr() as usize == base && b.capacity() >= CHUNK_BYTES {
                        // SAFETY: `b` starts where the `BytesMut::zeroed(CHUNK_BYTES)`
                        // that made it started, so its first CHUNK_BYTES bytes are that
                        // allocation's, all initialised then and only overwritten with
                        // bytes since. Re-zeroing them cost a 512 KiB memset per 256
                        // packets (3 % of the relay's CPU at 300k packets/s).
                        unsafe { b.set_len(CHUNK_BYTES) };
                    } else {
                        // Reclaimed at another offset: zero it rather than assume.
                        b.resize(CHUNK_BYTES, 0);
                    }
                    (b, base)
                }
                None => {
                    let b = BytesMut::zeroed(CHUNK_BYTES);
                    let base = b.as_ptr() as usize;
                    (b, base)
                }
            };
            self.current = Some(next);
        }
        true
    }
}

#[derive(Clone, Copy)]
enum BufferDir {
    Recv,
    Send,
}

/// Set a kernel socket buffer size past `net.core.{r,w}mem_max` (privileged); false when
/// refused or unsupported, so the caller falls back to the capped option.
#[cfg(target_os = "linux")]
fn force_buffer_size(s: &socket2::Socket, dir: BufferDir, bytes: usize) -> bool {
    use std::os::fd::AsRawFd;
    let opt = match dir {
        BufferDir::Recv => libc::SO_RCVBUFFORCE,
        BufferDir::Send => libc::SO_SNDBUFFORCE,
    };
    let Ok(value) = libc::c_int::try_from(bytes) else {
        return false;
    };
    // SAFETY: a valid fd and a c_int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

#[cfg(not(target_os = "linux"))]
fn force_buffer_size(_: &socket2::Socket, _: BufferDir, _: usize) -> bool {
    false
}

/// Give a UDP socket `bytes` of kernel buffer each way. At 300k packets/s the default
/// net.core.rmem_max (~208 KiB) is under a millisecond of buffering, so a scheduling
/// hiccup drops packets. SO_{RCV,SND}BUFFORCE ignore that cap but need CAP_NET_ADMIN (we
/// usually run as root); without it (EPERM), fall back to the ordinary options, which
/// the kernel caps at {r,w}mem_max. Best effort either way.
pub fn set_socket_buffers(s: socket2::SockRef<'_>, bytes: usize) {
    if !force_buffer_size(&s, BufferDir::Recv, bytes) {
        let _ = s.set_recv_buffer_size(bytes);
    }
    if !force_buffer_size(&s, BufferDir::Send, bytes) {
        let _ = s.set_send_buffer_size(bytes);
    }
}

/// Where the GSO run starting at `i` ends (exclusive), for `n` datagrams whose
/// destination and size `at(k)` gives: consecutive datagrams to one destination, all the
/// size of the first but the last, which may be shorter, at most `max_segments`.
pub fn gso_run_end(
    i: usize,
    n: usize,
    max_segments: usize,
    at: impl Fn(usize) -> (SocketAddr, usize),
) -> usize {
    let (to, size) = at(i);
    let mut j = i + 1;
    while j < n && j - i < max_segments {
        let (t, len) = at(j);
        if t != to || len > size {
            break;
        }
        j += 1;
        if len < size {
            break;
        }
    }
    j
}

/// The one UDP socket carrying STUN, DTLS, SRTP and SRTCP.
pub struct MediaSocket {
    pub socket: Arc<UdpSocket>,
    state: UdpSocketState,
}

impl MediaSocket {
    /// Bind with large kernel buffers (bursts of video must not overflow them).
    pub fn bind(addr: SocketAddr, buffer_bytes: usize) -> io::Result<Self> {
        let domain = if addr.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        set_socket_buffers(socket2::SockRef::from(&s), buffer_bytes);
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        let std_sock: std::net::UdpSocket = s.into();
        let state = UdpSocketState::new(UdpSockRef::from(&std_sock))?;
        // quinn-udp turns UDP GRO on, and it stays on: a burst of equal-sized datagrams
        // from one sender (a video frame's packets, a GSO send) then arrives as one
        // receive, one socket buffer and one copy instead of one each, and `recv_batch`
        // splits it again by its segment size. quinn-udp also asks for the destination
        // address and ECN bits of every datagram, which the relay never reads and the
        // kernel formats per packet (about 4 % of the relay's CPU at 300k packets/s).
        // Turn those off again (best effort). The kernel's receive timestamp (SO_TIMESTAMPNS, 2-4 %)
        // stays on: it is the arrival time the relay's transport-cc feedback reports, and
        // a batch read after a delay would otherwise give a burst one time, which makes
        // the sender's bandwidth probes invalid (zero receive interval).
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let off: libc::c_int = 0;
            for (level, name) in [
                (libc::IPPROTO_IP, libc::IP_PKTINFO),
                (libc::IPPROTO_IP, libc::IP_RECVTOS),
                (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
                (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS),
            ] {
                // SAFETY: a valid fd and a c_int option value of the right size.
                let _ = unsafe {
                    libc::setsockopt(
                        std_sock.as_raw_fd(),
                        level,
                        name,
                        (&off as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
            }
        }
        let socket = Arc::new(UdpSocket::from_std(std_sock)?);
        Ok(MediaSocket { socket, state })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Wait for datagrams and receive a batch; each datagram comes back as a zero-copy
    /// slice of one of `bufs`' buffers (see [`RecvBuffers`]). Returns how many receives
    /// the kernel filled: fewer than the datagrams pushed when GRO coalesced some.
    pub async fn recv_batch(
        &self,
        bufs: &mut RecvBuffers,
        out: &mut Vec<Datagram>,
    ) -> io::Result<usize> {
        let pooled = bufs.ready();
        let RecvBuffers {
            current,
            scratch,
            compact,
            copied,
            ..
        } = bufs;
        let chunk = match current {
            Some((c, _)) if pooled => c,
            _ => scratch.get_or_insert_with(|| BytesMut::zeroed(BATCH * SLOT)),
        };
        let mut meta = [RecvMeta::default(); BATCH];
        let n = loop {
            self.socket.readable().await?;
            let r = self.socket.try_io(Interest::READABLE, || {
                // On the stack: one IoSliceMut per slot, no Vec per syscall.
                let mut slots = chunk[..BATCH * SLOT].chunks_exact_mut(SLOT);
                let mut slices: [IoSliceMut<'_>; BATCH] = std::array::from_fn(|_| {
                    // chunks_exact_mut over BATCH * SLOT bytes yields exactly BATCH slots.
                    IoSliceMut::new(slots.next().unwrap_or_default())
                });
                self.state
                    .recv(UdpSockRef::from(&*self.socket), &mut slices, &mut meta)
            });
            match r {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        let clock = ArrivalClock::now();
        // Pooled: each datagram is split off the buffer as its own `BytesMut` (sharing
        // it, as a `Bytes` slice would), so its holder may transform it in place; only up
        // to the end of the last datagram is used up (rounded to a cache line), so a batch
        // of one short datagram does not use up 2 MiB of the buffer. Otherwise (a backlog
        // holds every buffer) each datagram is copied out of the scratch buffer.
        let mut split = pooled.then(|| {
            let used = n.checked_sub(1).map_or(0, |last| {
                last * SLOT + meta[last].len.min(SLOT).next_multiple_of(64)
            });
            chunk.split_to(used)
        });
        let mut taken = 0;
        for (i, m) in meta.iter().enumerate().take(n) {
            let at = clock.arrival(m.timestamp);
            let base = i * SLOT;
            let stride = if m.stride == 0 { m.len } else { m.stride };
            let mut off = 0;
            while off < m.len {
                let len = stride.min(m.len - off);
                let data = match split.as_mut() {
                    Some(c) => {
                        // Datagrams come in buffer order, each past the last: skip the gap.
                        c.advance(base + off - taken);
                        taken = base + off + len;
                        c.split_to(len)
                    }
                    None => {
                        if compact.capacity() < len {
                            *compact = BytesMut::with_capacity(COMPACT_BYTES.max(len));
                        }
                        compact.extend_from_slice(&chunk[base + off..base + off + len]);
                        *copied += 1;
                        compact.split_to(len)
                    }
                };
                out.push(Datagram {
                    from: m.addr,
                    data,
                    at,
                });
                off += len;
            }
            if m.len == 0 {
                out.push(Datagram {
                    from: m.addr,
                    data: BytesMut::new(),
                    at,
                });
            }
        }
        Ok(n)
    }

    /// Send one datagram; waits for socket space rather than dropping while the kernel
    /// buffer drains.
    pub async fn send(&self, to: SocketAddr, data: &[u8]) -> io::Result<()> {
        self.send_segments(to, data, None).await
    }

    /// How many datagrams one GSO send may carry here (1 without GSO).
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// How many `segment_size`-byte datagrams one GSO send may carry: the segment limit,
    /// and the whole send must fit in one IP packet (64 KiB), or the kernel refuses it
    /// with EMSGSIZE (64 segments of 1,200 bytes would not).
    pub fn gso_segments_for(&self, segment_size: usize) -> usize {
        self.max_gso_segments()
            .min(MAX_GSO_BYTES / segment_size.max(1))
            .max(1)
    }

    /// Send `data` as datagrams of `segment_size` bytes (the last may be shorter) in one
    /// syscall (UDP GSO), or as one datagram when `segment_size` is `None`.
    pub async fn send_segments(
        &self,
        to: SocketAddr,
        data: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let t = Transmit {
            destination: to,
            ecn: None,
            contents: data,
            segment_size,
            src_ip: None,
        };
        loop {
            match self.socket.try_io(Interest::WRITABLE, || {
                self.state.try_send(UdpSockRef::from(&*self.socket), &t)
            }) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.socket.writable().await?,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams read in one batch keep their own arrival times (the kernel's stamps):
    /// two sent 20 ms apart and read together are 20 ms apart, not one batch time.
    #[tokio::test]
    async fn a_batch_keeps_each_arrival_time() {
        let relay = MediaSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let to = relay.local_addr().unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let gap = Duration::from_millis(20);
        let mut bufs = RecvBuffers::new();
        // Linux turns receive timestamping on for the whole stack a moment after the
        // first socket asks (a deferred static key); until then datagrams are stamped
        // when read. So a few pairs may go by before the stamps are arrival times.
        let mut seen = Vec::new();
        for _ in 0..20 {
            let before = Instant::now();
            peer.send_to(b"first", to).unwrap();
            std::thread::sleep(gap); // the spacing under test, not a wait for a condition
            peer.send_to(b"second", to).unwrap();
            let sent_within = before.elapsed();
            let mut out = Vec::new();
            while out.len() < 2 {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    relay.recv_batch(&mut bufs, &mut out),
                )
                .await
                .expect("loopback datagrams arrive")
                .unwrap();
            }
            let spacing = out[1].at.saturating_duration_since(out[0].at);
            seen.push(spacing);
            let slack = Duration::from_millis(1);
            if spacing + slack >= gap {
                assert!(
                    spacing <= sent_within + slack,
                    "arrivals {spacing:?} apart, sent {gap:?} to {sent_within:?} apart"
                );
                break;
            }
        }
        assert!(
            seen.last()
                .is_some_and(|s| *s + Duration::from_millis(1) >= gap),
            "pairs sent {gap:?} apart arrived {seen:?} apart"
        );
        // Without a believable stamp, the read time stands in.
        let c = ArrivalClock::now();
        assert_eq!(c.arrival(None), c.now);
        assert_eq!(c.arrival(Some(c.wall + Duration::from_secs(1))), c.now);
        assert_eq!(c.arrival(Some(c.wall - Duration::from_secs(5))), c.now);
        assert_eq!(
            c.arrival(Some(c.wall - Duration::from_millis(3))),
            c.now - Duration::from_millis(3)
        );
    }

    /// A burst sent with GSO arrives coalesced by GRO and is split into its datagrams
    /// again, byte for byte, including a shorter last one and a run of 64 KiB that a
    /// one-datagram slot would have truncated.
    #[tokio::test]
    async fn a_coalesced_burst_is_split_into_its_datagrams() {
        let relay = MediaSocket::bind("127.0.0.1:0".parse().unwrap(), 4 << 20).unwrap();
        let to = relay.local_addr().unwrap();
        let peer = MediaSocket::bind("127.0.0.1:0".parse().unwrap(), 4 << 20).unwrap();
        let mut bufs = RecvBuffers::new();
        let long = relay.gso_segments_for(1200);
        for (segments, last) in [(9usize, 700usize), (long, 1200)] {
            let mut sent = Vec::new();
            for i in 0..segments {
                let len = if i + 1 == segments { last } else { 1200 };
                sent.push((0..len).map(|k| (i * 7 + k) as u8).collect::<Vec<u8>>());
            }
            peer.send_segments(to, &sent.concat(), Some(1200))
                .await
                .unwrap();
            let mut got = Vec::new();
            let mut receives = 0;
            while got.len() < segments {
                receives += tokio::time::timeout(
                    Duration::from_secs(5),
                    relay.recv_batch(&mut bufs, &mut got),
                )
                .await
                .expect("the burst arrives")
                .unwrap();
            }
            assert_eq!(got.len(), segments);
            for (d, s) in got.iter().zip(&sent) {
                assert_eq!(&d.data[..], &s[..]);
                assert_eq!(d.from, peer.local_addr().unwrap());
            }
            if relay.max_gso_segments() > 1 {
                assert!(
                    receives < segments,
                    "{segments} datagrams took {receives} receives: GRO is off"
                );
            }
        }
    }

    /// A backlog that holds every pooled buffer (nothing received is dropped downstream)
    /// does not grow the pool: batches are received into the scratch buffer and copied
    /// out, byte for byte, coalesced bursts split as before. Once the backlog drains, the
    /// pool serves again and nothing more is copied.
    #[tokio::test]
    async fn a_backlog_holding_every_buffer_is_copied_and_then_the_pool_serves_again() {
        let relay = MediaSocket::bind("127.0.0.1:0".parse().unwrap(), 4 << 20).unwrap();
        let peer = MediaSocket::bind("127.0.0.1:0".parse().unwrap(), 4 << 20).unwrap();
        let mut bufs = RecvBuffers::new();
        let mut held: Vec<Datagram> = Vec::new();
        // One round: 24 single datagrams and a coalesced burst of 9, all checked.
        async fn round(
            relay: &MediaSocket,
            peer: &MediaSocket,
            bufs: &mut RecvBuffers,
            r: usize,
        ) -> Vec<Datagram> {
            let to = relay.local_addr().unwrap();
            let body = |i: usize, len: usize| -> Vec<u8> {
                (0..len).map(|k| (r * 31 + i * 7 + k) as u8).collect()
            };
            let mut sent = Vec::new();
            for i in 0..24 {
                sent.push(body(i, 1200));
                peer.send(to, sent.last().unwrap()).await.unwrap();
            }
            let burst: Vec<Vec<u8>> = (24..33).map(|i| body(i, 1200)).collect();
            peer.send_segments(to, &burst.concat(), Some(1200))
                .await
                .unwrap();
            sent.extend(burst);
            let mut got = Vec::new();
            while got.len() < sent.len() {
                tokio::time::timeout(Duration::from_secs(5), relay.recv_batch(bufs, &mut got))
                    .await
                    .expect("loopback datagrams arrive")
                    .unwrap();
            }
            assert_eq!(got.len(), sent.len());
            for (d, s) in got.iter().zip(&sent) {
                assert_eq!(&d.data[..], &s[..], "round {r}");
            }
            got
        }
        let mut r = 0;
        while bufs.copied() == 0 {
            assert!(r < 200, "the pool never ran out in {r} rounds");
            held.extend(round(&relay, &peer, &mut bufs, r).await);
            r += 1;
        }
        for _ in 0..3 {
            held.extend(round(&relay, &peer, &mut bufs, r).await);
            r += 1;
        }
        let copied = bufs.copied();
        assert!(
            copied >= 3 * 33,
            "{copied} copied while every buffer was held"
        );
        assert!(bufs.spent.len() <= RECV_POOL + 1, "the pool did not grow");
        // Every datagram held is still what was sent: copies and pooled slices alike.
        assert!(held.iter().all(|d| d.data.len() == 1200));
        drop(held);
        for _ in 0..3 {
            drop(round(&relay, &peer, &mut bufs, r).await);
            r += 1;
        }
        assert_eq!(bufs.copied(), copied, "the drained pool serves again");
    }

    /// A GSO run as long as `gso_segments_for` allows really leaves in one send and
    /// arrives whole; one segment more than the 64 KiB limit would have been refused
    /// (EMSGSIZE), which is what 64 segments of 1,200 bytes did.
    #[tokio::test]
    async fn gso_runs_stay_under_the_ip_packet_limit() {
        let relay = MediaSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = peer.local_addr().unwrap();
        let n = relay.gso_segments_for(1200);
        assert!(n >= 1 && n * 1200 <= MAX_GSO_BYTES, "{n}");
        if relay.max_gso_segments() > 1 {
            assert!(
                n < relay.max_gso_segments(),
                "the byte limit binds for 1,200 B"
            );
            let too_many = vec![7u8; (MAX_GSO_BYTES / 1200 + 1) * 1200 + 1200 * 8];
            assert!(relay
                .send_segments(to, &too_many, Some(1200))
                .await
                .is_err());
        }
        let data: Vec<u8> = (0..n * 1200).map(|i| (i / 1200) as u8).collect();
        relay.send_segments(to, &data, Some(1200)).await.unwrap();
        let mut buf = [0u8; 2048];
        for i in 0..n {
            let (len, _) =
                tokio::time::timeout(std::time::Duration::from_secs(5), peer.recv_from(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
            assert_eq!(len, 1200);
            assert!(buf[..len].iter().all(|b| *b == i as u8), "segment {i}");
        }
    }
}
