//! `blindrelay-bench baseline`: this machine's ceiling for a UDP forwarder. It uses the
//! relay's own media socket, so the syscalls are the same (recvmmsg batches with GRO on,
//! one GSO send per run of packets to one receiver), and it does nothing else: no SRTP,
//! no RTP parsing, one hash lookup from source to destination. The sweep drives it with
//! the same generator as the relay; the relay's share of this ceiling is what its crypto,
//! routing and bookkeeping cost.
//!
//! With `--srtp` it also does the one thing every SRTP relay must: open each packet with
//! the sender's hop key and seal it with the receiver's (the in-place AEAD_AES_128_GCM
//! context the relay uses, opening each packet where it lies as the relay does), into one
//! arena as the relay's outbox. The keys come in the
//! legs' hellos (a benchmark on loopback, nothing secret). The relay's share of that
//! ceiling is what its routing, header rewrite and bookkeeping cost beyond the
//! cryptography.

use anyhow::{anyhow, Result};
use blindrelay::net::udp::{gso_run_end, Datagram, MediaSocket, RecvBuffers, MAX_BATCH_DATAGRAMS};
use blindrelay_transport::fast_srtp::{FastSrtpContext, KEY_LEN, RTP_OVERHEAD, SALT_LEN};
use bytes::Bytes;
use futures_util::FutureExt;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 7] = b"BRBASE\0";
/// Packets gathered before sending, as the relay's forwarding loop does.
const SEND_BATCH: usize = 256;

/// A leg's SRTP keys for the `--srtp` baseline: what it sends with (`up`) and what it
/// wants to receive with (`down`), each a key and a salt.
pub type LegKeys = ([u8; KEY_LEN], [u8; SALT_LEN], [u8; KEY_LEN], [u8; SALT_LEN]);
const HELLO_LEN: usize = 16;
const HELLO_KEYS_LEN: usize = HELLO_LEN + 2 * (KEY_LEN + SALT_LEN);

/// A leg's hello: "I am one side of pair `pair` of generator run `run`", with its keys
/// for the `--srtp` baseline.
pub fn hello(run: u32, pair: u32, keys: Option<&LegKeys>) -> Vec<u8> {
    let mut v = Vec::with_capacity(HELLO_KEYS_LEN);
    v.extend_from_slice(MAGIC);
    v.push(b'H');
    v.extend_from_slice(&run.to_be_bytes());
    v.extend_from_slice(&pair.to_be_bytes());
    if let Some((uk, us, dk, ds)) = keys {
        for part in [&uk[..], &us[..], &dk[..], &ds[..]] {
            v.extend_from_slice(part);
        }
    }
    v
}

fn ack() -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.push(b'A');
    v
}

pub fn is_ack(b: &[u8]) -> bool {
    b.len() == 8 && &b[..7] == MAGIC && b[7] == b'A'
}

/// A hello's pair, and its keys (up, down) when it carries them.
type Hello = ((u32, u32), Option<(FastSrtpContext, FastSrtpContext)>);

fn parse_hello(b: &[u8]) -> Option<Hello> {
    if (b.len() != HELLO_LEN && b.len() != HELLO_KEYS_LEN) || &b[..7] != MAGIC || b[7] != b'H' {
        return None;
    }
    let run = u32::from_be_bytes(b[8..12].try_into().ok()?);
    let pair = u32::from_be_bytes(b[12..16].try_into().ok()?);
    let keys = if b.len() == HELLO_KEYS_LEN {
        let k = &b[HELLO_LEN..];
        let (uk, rest) = k.split_at(KEY_LEN);
        let (us, rest) = rest.split_at(SALT_LEN);
        let (dk, ds) = rest.split_at(KEY_LEN);
        Some((
            FastSrtpContext::new(uk, us).ok()?,
            FastSrtpContext::new(dk, ds).ok()?,
        ))
    } else {
        None
    };
    Some(((run, pair), keys))
}

/// The `--srtp` baseline's hop state: each leg's context to open what it sends and to
/// seal what it receives, and the sealed packets of one round, back to back.
#[derive(Default)]
struct Srtp {
    inbound: HashMap<SocketAddr, FastSrtpContext>,
    outbound: HashMap<SocketAddr, FastSrtpContext>,
    arena: Vec<u8>,
    sealed: Vec<(SocketAddr, std::ops::Range<usize>)>,
}

impl Srtp {
    /// Open `data` from `from` and seal it for `to`; a packet that does not open is
    /// dropped, as the relay would.
    fn forward(&mut self, from: SocketAddr, to: SocketAddr, data: &mut [u8]) {
        let (Some(inb), Some(outb)) = (self.inbound.get_mut(&from), self.outbound.get_mut(&to))
        else {
            return;
        };
        // Opened where it lies, as the relay does (`Forwarder::on_rtp_in_place`).
        let Ok(n) = inb.unprotect_rtp(data) else {
            return;
        };
        let start = self.arena.len();
        self.arena.extend_from_slice(&data[..n]);
        self.arena.resize(start + n + RTP_OVERHEAD, 0);
        match outb.protect_rtp_in(&mut self.arena[start..], n) {
            Ok(len) => {
                self.arena.truncate(start + len);
                self.sealed.push((to, start..start + len));
            }
            Err(_) => self.arena.truncate(start),
        }
    }
}

/// Forward until `max_duration` passes (or the process is stopped). Prints
/// `baseline listening udp ADDR` once bound, for whoever started it.
pub async fn run(
    listen: SocketAddr,
    buffer_bytes: usize,
    max_duration: Duration,
    srtp: bool,
) -> Result<()> {
    let sock = MediaSocket::bind(listen, buffer_bytes)?;
    let addr = sock.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "baseline listening udp {addr}")?;
        out.flush()?;
    }
    let deadline = Instant::now() + max_duration;
    let mut first_of_pair: HashMap<(u32, u32), SocketAddr> = HashMap::new();
    let mut route: HashMap<SocketAddr, SocketAddr> = HashMap::new();
    let mut batch: Vec<Datagram> = Vec::with_capacity(MAX_BATCH_DATAGRAMS);
    let mut chunk = RecvBuffers::new();
    let mut out: Vec<(SocketAddr, Bytes)> = Vec::with_capacity(SEND_BATCH + MAX_BATCH_DATAGRAMS);
    let mut gso: Vec<u8> = Vec::with_capacity(64 * 1500);
    let mut hops = srtp.then(|| Srtp {
        arena: Vec::with_capacity((SEND_BATCH + MAX_BATCH_DATAGRAMS) * 1500),
        sealed: Vec::with_capacity(SEND_BATCH + MAX_BATCH_DATAGRAMS),
        ..Default::default()
    });
    let ack = ack();
    loop {
        let r =
            tokio::time::timeout_at(deadline.into(), sock.recv_batch(&mut chunk, &mut batch)).await;
        match r {
            Err(_) => return Ok(()),
            Ok(Err(_)) => continue,
            Ok(Ok(_)) => {}
        }
        // Take what else is already queued, up to a forwarding loop's batch (the relay's
        // worker takes up to 256 packets per round), so runs to one receiver are as long
        // as the relay's and leave in as few GSO sends.
        while batch.len() < SEND_BATCH {
            match sock.recv_batch(&mut chunk, &mut batch).now_or_never() {
                Some(Ok(_)) => continue,
                _ => break,
            }
        }
        for Datagram { from, mut data, .. } in batch.drain(..) {
            if let Some(to) = route.get(&from) {
                match &mut hops {
                    Some(h) => h.forward(from, *to, &mut data),
                    None => out.push((*to, data.freeze())),
                }
            } else if let Some((key, keys)) = parse_hello(&data) {
                match (&mut hops, keys) {
                    (Some(h), Some((up, down))) => {
                        h.inbound.insert(from, up);
                        h.outbound.insert(from, down);
                    }
                    (None, None) => {}
                    _ => return Err(anyhow!("a hello with keys needs --srtp, and --srtp keys")),
                }
                match first_of_pair.get(&key) {
                    Some(a) if *a != from => {
                        route.insert(*a, from);
                        route.insert(from, *a);
                    }
                    Some(_) => {}
                    None => {
                        first_of_pair.insert(key, from);
                    }
                }
                let _ = sock.send(from, &ack).await;
            }
        }
        // Runs to one receiver leave in one GSO send, as in the relay's send_all.
        match &mut hops {
            Some(h) => {
                let Srtp { arena, sealed, .. } = h;
                send_runs(
                    &sock,
                    sealed.len(),
                    |k| (sealed[k].0, &arena[sealed[k].1.clone()]),
                    &mut gso,
                )
                .await;
                sealed.clear();
                arena.clear();
            }
            None => {
                send_runs(&sock, out.len(), |k| (out[k].0, &out[k].1[..]), &mut gso).await;
                out.clear();
            }
        }
    }
}

/// Send `n` datagrams, `at(k)` giving each one's receiver and bytes, one GSO send per run
/// to one receiver.
async fn send_runs<'a>(
    sock: &MediaSocket,
    n: usize,
    at: impl Fn(usize) -> (SocketAddr, &'a [u8]),
    gso: &mut Vec<u8>,
) {
    let mut i = 0;
    while i < n {
        let (to, first) = at(i);
        let size = first.len();
        let j = gso_run_end(i, n, sock.gso_segments_for(size), |k| {
            let (t, d) = at(k);
            (t, d.len())
        });
        if j - i == 1 {
            let _ = sock.send(to, first).await;
        } else {
            gso.clear();
            for k in i..j {
                gso.extend_from_slice(at(k).1);
            }
            let _ = sock.send_segments(to, gso, Some(size)).await;
        }
        i = j;
    }
}
