//! The shared media socket with batched receive (recvmmsg / GRO through quinn-udp).

use bytes::{Bytes, BytesMut};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams received per syscall at most.
pub const BATCH: usize = 32;
/// Receive slot per datagram; larger than any MTU-sized SRTP packet.
const SLOT: usize = 2048;
/// Slots per receive buffer.
const CHUNK_SLOTS: usize = 256;
/// Bytes per receive buffer.
const CHUNK_BYTES: usize = CHUNK_SLOTS * SLOT;
/// Used-up receive buffers kept for reuse. Downstream holds a buffer only until the
/// forwarding loop has handled its datagrams, so two or three are normally in rotation;
/// more than this are in flight only under a backlog, and are then let go (freed when
/// their last datagram is) rather than kept forever.
const RECV_POOL: usize = 8;

/// The receive loop's buffers for [`MediaSocket::recv_batch`].
///
/// Datagrams are handed on as zero-copy `Bytes` slices of a large buffer. Each batch takes
/// the slots it filled off the front of `current`; when too little is left, `current` joins
/// `spent` and the oldest spent buffer none of whose datagrams is still alive is reclaimed
/// in place (`BytesMut::try_reclaim`), so in steady state no buffer is ever allocated.
/// A reclaimed buffer stays a shared (`KIND_ARC`) `BytesMut`: its one small shared header
/// is allocated on the first split of its lifetime and reused afterwards.
#[derive(Debug)]
pub struct RecvBuffers {
    /// The buffer being filled; `None` until the first batch.
    current: Option<BytesMut>,
    /// Oldest first: the oldest is the likeliest to be free.
    spent: Vec<BytesMut>,
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
        }
    }

    /// A buffer with room for a full batch, reusing a drained one if there is one.
    fn ready(&mut self) -> &mut BytesMut {
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.len() < BATCH * SLOT)
        {
            if self.spent.len() == RECV_POOL {
                // Still held downstream (a backlog): let it go rather than grow the pool.
                self.spent.remove(0);
            }
            if let Some(used) = self.current.take() {
                self.spent.push(used);
            }
        }
        self.current.get_or_insert_with(|| {
            let free = self.spent.iter_mut().position(|b| {
                // Only the capacity is wanted back: the old datagrams are not kept.
                b.clear();
                b.try_reclaim(CHUNK_BYTES)
            });
            match free {
                Some(i) => {
                    let mut b = self.spent.remove(i);
                    // Within the reclaimed capacity: no allocation, only a memset.
                    b.resize(CHUNK_BYTES, 0);
                    b
                }
                None => BytesMut::zeroed(CHUNK_BYTES),
            }
        })
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
        // At 300k packets/s the default net.core.rmem_max (~208 KiB) is under a millisecond
        // of buffering, so a scheduling hiccup drops packets. SO_{RCV,SND}BUFFORCE ignore
        // that cap but need CAP_NET_ADMIN (we usually run as root); without it (EPERM),
        // fall back to the ordinary options, which the kernel caps at {r,w}mem_max.
        if !force_buffer_size(&s, BufferDir::Recv, buffer_bytes) {
            let _ = s.set_recv_buffer_size(buffer_bytes);
        }
        if !force_buffer_size(&s, BufferDir::Send, buffer_bytes) {
            let _ = s.set_send_buffer_size(buffer_bytes);
        }
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        let std_sock: std::net::UdpSocket = s.into();
        let state = UdpSocketState::new(UdpSockRef::from(&std_sock))?;
        // quinn-udp turns UDP GRO on; our receive slots hold one datagram each, so a
        // coalesced burst would be truncated. Turn it off again (best effort).
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let off: libc::c_int = 0;
            // SAFETY: a valid fd and a c_int option value of the right size.
            let _ = unsafe {
                libc::setsockopt(
                    std_sock.as_raw_fd(),
                    libc::SOL_UDP,
                    libc::UDP_GRO,
                    (&off as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        let socket = Arc::new(UdpSocket::from_std(std_sock)?);
        Ok(MediaSocket { socket, state })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Wait for datagrams and receive a batch; each datagram comes back as a zero-copy
    /// slice of one of `bufs`' buffers (see [`RecvBuffers`]).
    pub async fn recv_batch(
        &self,
        bufs: &mut RecvBuffers,
        out: &mut Vec<(SocketAddr, Bytes)>,
    ) -> io::Result<()> {
        let chunk = bufs.ready();
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
        let chunk = chunk.split_to(n * SLOT).freeze();
        for (i, m) in meta.iter().enumerate().take(n) {
            let base = i * SLOT;
            let stride = if m.stride == 0 { m.len } else { m.stride };
            let mut off = 0;
            while off < m.len {
                let len = stride.min(m.len - off);
                out.push((m.addr, chunk.slice(base + off..base + off + len)));
                off += len;
            }
            if m.len == 0 {
                out.push((m.addr, Bytes::new()));
            }
        }
        Ok(())
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
