//! The client's hop to the relay: ICE (controlling, against an ICE-lite relay), DTLS
//! client, SRTP. One UDP socket carries all of it, demultiplexed as RFC 7983 says.

use blindrelay_protocol::demux::{classify, PacketKind};
use blindrelay_protocol::sdp::AnswerInfo;
use blindrelay_protocol::stun::{StunMessage, StunWriter, BINDING_REQUEST, BINDING_SUCCESS};
use blindrelay_transport::fast_srtp::FastSrtpContext;
use blindrelay_transport::hop::HopContext;
use blindrelay_transport::webrtc_dtls::conn::DTLSConn;
use blindrelay_transport::webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use blindrelay_transport::webrtc_srtp::context::Context;
use blindrelay_transport::{handshake, DtlsIdentity, DtlsRole, PacketConn, TransportError};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Why the media path could not be set up.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("UDP socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("no STUN binding response from the relay within {0:?}")]
    IceTimeout(Duration),
    #[error(transparent)]
    Dtls(#[from] TransportError),
}

/// A keyed media path to the relay.
pub struct MediaPath {
    pub socket: Arc<UdpSocket>,
    pub relay: SocketAddr,
    pub outbound: Context,
    pub inbound: Context,
    pub dtls: Arc<DTLSConn>,
    pub profile: &'static str,
    /// SRTP (false) and SRTCP (true) datagrams from the relay.
    pub media_rx: mpsc::Receiver<(Bytes, bool)>,
    /// Datagrams dropped because the receive queue was full.
    pub queue_drops: Arc<AtomicU64>,
    /// The same keys as in-place contexts (outbound, inbound), for either profile: a load
    /// generator drives the socket itself with them. Send with one outbound context only,
    /// never both: two senders on one SSRC would reuse GCM nonces (or AES-CM keystream).
    pub fast: Option<(FastSrtpContext, FastSrtpContext)>,
    tasks: Vec<JoinHandle<()>>,
}

impl MediaPath {
    /// Stop reading the socket and sending consent checks, so a caller can drive the
    /// socket itself (the sweep generator). The DTLS association stays up.
    pub fn stop_background(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for MediaPath {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn binding_request(
    answer: &AnswerInfo,
    local_ufrag: &str,
    tie_breaker: u64,
) -> ([u8; 12], Vec<u8>) {
    let txid: [u8; 12] = rand::random();
    let msg = StunWriter::new(BINDING_REQUEST, &txid)
        .username(&format!("{}:{}", answer.ice_ufrag, local_ufrag))
        // Host candidate priority for component 1 (RFC 8445 §5.1.2.1).
        .priority((126 << 24) | (65535 << 8) | 255)
        .ice_controlling(tie_breaker)
        .use_candidate()
        .integrity(answer.ice_pwd.as_bytes())
        .finish_with_fingerprint();
    (txid, msg)
}

/// A UDP socket with large kernel buffers: a high-rate video frame arrives as a burst.
fn bind_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// Run ICE and the DTLS handshake against the relay's answer.
pub async fn connect(
    answer: &AnswerInfo,
    local_ufrag: &str,
    identity: &DtlsIdentity,
    timeout: Duration,
) -> Result<MediaPath, ConnectError> {
    connect_with_profiles(
        answer,
        local_ufrag,
        identity,
        timeout,
        &blindrelay_transport::DEFAULT_PROFILES,
    )
    .await
}

/// [`connect`], offering only `profiles` in DTLS: a load generator measures the relay on
/// AES128_CM_HMAC_SHA1_80, the one profile many native stacks (and Janus) offer.
pub async fn connect_with_profiles(
    answer: &AnswerInfo,
    local_ufrag: &str,
    identity: &DtlsIdentity,
    timeout: Duration,
    profiles: &[SrtpProtectionProfile],
) -> Result<MediaPath, ConnectError> {
    let bind: SocketAddr = if answer.candidate.is_ipv4() {
        "0.0.0.0:0"
            .parse()
            .unwrap_or_else(|_| unreachable!("literal address"))
    } else {
        "[::]:0"
            .parse()
            .unwrap_or_else(|_| unreachable!("literal address"))
    };
    let socket = Arc::new(bind_socket(bind)?);
    let relay = answer.candidate;
    let (conn, dtls_tx) = PacketConn::new(socket.clone(), relay, 64);
    let (stun_tx, mut stun_rx) = mpsc::channel::<Bytes>(16);
    let (media_tx, media_rx) = mpsc::channel::<(Bytes, bool)>(4096);
    let queue_drops = Arc::new(AtomicU64::new(0));
    let drops = queue_drops.clone();
    let rsock = socket.clone();
    let demux = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, from) = match rsock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(_) => continue,
            };
            if from != relay {
                continue;
            }
            let data = Bytes::copy_from_slice(&buf[..n]);
            let ok = match classify(&data) {
                PacketKind::Stun => stun_tx.try_send(data).is_ok(),
                PacketKind::Dtls => dtls_tx.try_send(data).is_ok(),
                PacketKind::Rtp => media_tx.try_send((data, false)).is_ok(),
                PacketKind::Rtcp => media_tx.try_send((data, true)).is_ok(),
                PacketKind::Unknown => true,
            };
            if !ok {
                drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let tie_breaker: u64 = rand::random();
    // ICE: checks until a response that authenticates with the relay's password.
    let deadline = tokio::time::Instant::now() + timeout;
    let mut interval = Duration::from_millis(50);
    'ice: loop {
        let (txid, req) = binding_request(answer, local_ufrag, tie_breaker);
        socket.send_to(&req, relay).await?;
        let wait = tokio::time::sleep(interval);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                r = stun_rx.recv() => {
                    let Some(resp) = r else { break 'ice };
                    if let Ok(m) = StunMessage::parse(&resp) {
                        if m.msg_type == BINDING_SUCCESS && m.transaction_id == txid
                            && m.verify_integrity(answer.ice_pwd.as_bytes()).is_ok() {
                            break 'ice;
                        }
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            demux.abort();
            return Err(ConnectError::IceTimeout(timeout));
        }
        interval = (interval * 2).min(Duration::from_millis(500));
    }
    let session = match handshake(
        conn,
        identity,
        DtlsRole::Client,
        answer.fingerprint.clone(),
        timeout,
        profiles,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            demux.abort();
            return Err(e.into());
        }
    };
    let fast = match session.hop_contexts(true) {
        Ok((HopContext::Fast(o), HopContext::Fast(i))) => Some((*o, *i)),
        _ => None,
    };
    // Consent freshness (RFC 7675): a check every 2.5 s keeps the relay's timer fresh even
    // when no media flows.
    let ksock = socket.clone();
    let kanswer = answer.clone();
    let kufrag = local_ufrag.to_string();
    let keepalive = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(2500));
        tick.tick().await;
        loop {
            tick.tick().await;
            let (_, req) = binding_request(&kanswer, &kufrag, tie_breaker);
            let _ = ksock.send_to(&req, relay).await;
            // Responses are read and discarded by the STUN queue's end of life.
            while stun_rx.try_recv().is_ok() {}
        }
    });
    Ok(MediaPath {
        socket,
        relay,
        outbound: session.outbound,
        inbound: session.inbound,
        dtls: session.conn,
        profile: blindrelay_transport::profile_label(session.profile),
        media_rx,
        queue_drops,
        fast,
        tasks: vec![demux, keepalive],
    })
}
