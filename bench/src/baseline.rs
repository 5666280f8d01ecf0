//! `blindrelay-bench baseline`: this machine's ceiling for a UDP forwarder. It uses the
//! relay's own media socket, so the syscalls are the same (recvmmsg batches with GRO off,
//! one GSO send per run of packets to one receiver), and it does nothing else: no SRTP,
//! no RTP parsing, one hash lookup from source to destination. The sweep drives it with
//! the same generator as the relay; the relay's share of this ceiling is what its crypto,
//! routing and bookkeeping cost.

use anyhow::Result;
use blindrelay::net::udp::{gso_run_end, Datagram, MediaSocket, RecvBuffers, MAX_BATCH_DATAGRAMS};
use bytes::Bytes;
use futures_util::FutureExt;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 7] = b"BRBASE\0";
/// Packets gathered before sending, as the relay's forwarding loop does.
const SEND_BATCH: usize = 256;

/// A leg's hello: "I am one side of pair `pair` of generator run `run`".
pub fn hello(run: u32, pair: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(MAGIC);
    v.push(b'H');
    v.extend_from_slice(&run.to_be_bytes());
    v.extend_from_slice(&pair.to_be_bytes());
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

fn parse_hello(b: &[u8]) -> Option<(u32, u32)> {
    if b.len() != 16 || &b[..7] != MAGIC || b[7] != b'H' {
        return None;
    }
    let run = u32::from_be_bytes(b[8..12].try_into().ok()?);
    let pair = u32::from_be_bytes(b[12..16].try_into().ok()?);
    Some((run, pair))
}

/// Forward until `max_duration` passes (or the process is stopped). Prints
/// `baseline listening udp ADDR` once bound, for whoever started it.
pub async fn run(listen: SocketAddr, buffer_bytes: usize, max_duration: Duration) -> Result<()> {
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
        for Datagram { from, data, .. } in batch.drain(..) {
            if let Some(to) = route.get(&from) {
                out.push((*to, data));
            } else if let Some(key) = parse_hello(&data) {
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
        let mut i = 0;
        while i < out.len() {
            let to = out[i].0;
            let size = out[i].1.len();
            let j = gso_run_end(i, out.len(), sock.gso_segments_for(size), |k| {
                (out[k].0, out[k].1.len())
            });
            if j - i == 1 {
                let _ = sock.send(to, &out[i].1).await;
            } else {
                gso.clear();
                for (_, d) in &out[i..j] {
                    gso.extend_from_slice(d);
                }
                let _ = sock.send_segments(to, &gso, Some(size)).await;
            }
            i = j;
        }
        out.clear();
    }
}
