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
/// Slots per receive buffer allocation.
const CHUNK_SLOTS: usize = 256;

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
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = s.set_recv_buffer_size(buffer_bytes);
        let _ = s.set_send_buffer_size(buffer_bytes);
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

    /// Wait for datagrams and receive a batch into one fresh buffer; each datagram comes
    /// back as a zero-copy slice of it.
    ///
    /// `chunk` is the receive loop's buffer: each batch takes only the slots it filled off
    /// its front, so a fresh (zeroed) buffer is needed once every [`CHUNK_SLOTS`] packets,
    /// not once per batch.
    pub async fn recv_batch(
        &self,
        chunk: &mut BytesMut,
        out: &mut Vec<(SocketAddr, Bytes)>,
    ) -> io::Result<()> {
        if chunk.len() < BATCH * SLOT {
            *chunk = BytesMut::zeroed(CHUNK_SLOTS * SLOT);
        }
        let mut meta = [RecvMeta::default(); BATCH];
        let n = loop {
            self.socket.readable().await?;
            let r = self.socket.try_io(Interest::READABLE, || {
                let mut slices: Vec<IoSliceMut<'_>> = chunk[..BATCH * SLOT]
                    .chunks_mut(SLOT)
                    .map(IoSliceMut::new)
                    .collect();
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
