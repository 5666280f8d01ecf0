//! DTLS-SRTP glue shared by the relay and the client.
//!
//! Both ends multiplex STUN, DTLS and SRTP on one UDP socket (RFC 7983), so the DTLS
//! library cannot own the socket: [`PacketConn`] hands it only the DTLS datagrams the
//! demultiplexer routes to it, and sends through the shared socket. Once the handshake is
//! done, [`DtlsSession`] turns its keying material into SRTP contexts (RFC 5764).

use blindrelay_protocol::sdp::Fingerprint;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Mutex};
use webrtc_dtls::config::{ClientAuthType, Config, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

pub use webrtc_dtls;
pub use webrtc_srtp;

pub mod fast_srtp;
pub mod hop;

/// Replay window for SRTP and SRTCP (packets), as RFC 3711 suggests at least 64.
pub const REPLAY_WINDOW: usize = 128;

/// Why a DTLS-SRTP transport could not be set up.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("could not generate a DTLS certificate: {0}")]
    Certificate(String),
    #[error("DTLS handshake failed: {0}")]
    Handshake(String),
    #[error("DTLS handshake timed out")]
    Timeout,
    #[error("peer certificate does not match the fingerprint in its SDP")]
    FingerprintMismatch,
    #[error("no SRTP protection profile was negotiated")]
    NoSrtpProfile,
    #[error("SRTP setup failed: {0}")]
    Srtp(String),
}

impl TransportError {
    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TransportError::Certificate(_) => "certificate",
            TransportError::Handshake(_) => "handshake",
            TransportError::Timeout => "timeout",
            TransportError::FingerprintMismatch => "fingerprint_mismatch",
            TransportError::NoSrtpProfile => "no_srtp_profile",
            TransportError::Srtp(_) => "srtp",
        }
    }
}

/// A self-signed DTLS certificate and its SHA-256 fingerprint. Generated fresh per relay
/// process and per client call, so nothing long-lived can be stolen.
#[derive(Clone)]
pub struct DtlsIdentity {
    certificate: Certificate,
    fingerprint: Fingerprint,
}

impl std::fmt::Debug for DtlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsIdentity")
            .field("fingerprint", &self.fingerprint.to_sdp_value())
            .finish_non_exhaustive()
    }
}

impl DtlsIdentity {
    /// Generate an ECDSA P-256 self-signed certificate.
    pub fn generate() -> Result<Self, TransportError> {
        let certificate = Certificate::generate_self_signed(vec!["blindrelay".to_string()])
            .map_err(|e| TransportError::Certificate(e.to_string()))?;
        let der = certificate
            .certificate
            .first()
            .ok_or_else(|| TransportError::Certificate("empty chain".into()))?;
        let fingerprint = Fingerprint {
            sha256: Sha256::digest(der.as_ref()).into(),
        };
        Ok(DtlsIdentity {
            certificate,
            fingerprint,
        })
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }
}

/// One DTLS peer's view of a shared UDP socket: receives what the demultiplexer feeds it,
/// sends to the peer's current address.
pub struct PacketConn {
    socket: Arc<UdpSocket>,
    /// Where its records go. An ICE-lite end moves it when the controlling agent nominates
    /// another candidate pair (RFC 8445 §7.3.1.5), so it is not fixed. A lock, not an
    /// atomic (a `SocketAddr` does not fit one): only DTLS records read it, never media.
    remote: std::sync::Mutex<SocketAddr>,
    rx: Mutex<mpsc::Receiver<Bytes>>,
    /// A datagram taken early (the first ClientHello, read for its SRTP profiles) and
    /// handed to the DTLS stack as its first read.
    peeked: std::sync::Mutex<Option<Bytes>>,
    /// What this end last sent, kept to answer a peer that repeats its last flight.
    flight: std::sync::Mutex<LastFlight>,
    /// Called each time the last flight goes again (the relay counts it).
    on_repeat: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// The datagrams this end wrote since it last read one. When a server's handshake ends,
/// that is its last flight (ChangeCipherSpec + Finished). RFC 6347 §4.2.4: the server must
/// send it again whenever the client repeats its own last flight, since the client cannot
/// finish without it. webrtc-dtls stops its handshake state machine on completion and never
/// does, so a lost last flight left the client's handshake stuck until its timeout (one
/// lossy-path page in ten, bench/RESULTS.md). The conn does it instead.
#[derive(Default)]
struct LastFlight {
    datagrams: Vec<Bytes>,
    bytes: usize,
    /// A datagram was read since the last write: the next write starts a new flight.
    read_since: bool,
    /// The handshake is over: `datagrams` is the last flight and no longer changes.
    kept: bool,
    /// Times the last flight went again; bounded, though the reply is never larger than
    /// the client's own flight that asks for it.
    repeats: u8,
}

/// A flight is a few records; more than this is not a last flight worth keeping.
const LAST_FLIGHT_MAX_BYTES: usize = 8 * 1024;
const LAST_FLIGHT_MAX_DATAGRAMS: usize = 8;
/// The client gives up after its handshake timeout; at webrtc-dtls's doubling interval a
/// dozen repeats outlast any timeout this project uses.
const LAST_FLIGHT_MAX_REPEATS: u8 = 12;

/// A DTLS record of the clear epoch carrying a handshake message (type 22, epoch 0):
/// after the handshake, only a peer repeating its flight sends one.
fn is_clear_handshake(d: &[u8]) -> bool {
    d.first() == Some(&22) && d.get(3..5) == Some(&[0, 0])
}

impl PacketConn {
    /// Returns the conn and the sender the demultiplexer uses to feed it DTLS datagrams.
    pub fn new(
        socket: Arc<UdpSocket>,
        remote: SocketAddr,
        depth: usize,
    ) -> (Arc<Self>, mpsc::Sender<Bytes>) {
        let (tx, rx) = mpsc::channel(depth);
        (
            Arc::new(PacketConn {
                socket,
                remote: std::sync::Mutex::new(remote),
                rx: Mutex::new(rx),
                peeked: std::sync::Mutex::new(None),
                flight: std::sync::Mutex::new(LastFlight::default()),
                on_repeat: std::sync::OnceLock::new(),
            }),
            tx,
        )
    }
}

impl PacketConn {
    /// The address records are sent to now.
    pub fn remote(&self) -> SocketAddr {
        // A poisoned lock still holds a valid address.
        *self.remote.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send to `addr` from now on: the peer's nominated pair moved (a handshake flight
    /// retransmitted, or a later alert, goes there).
    pub fn set_remote(&self, addr: SocketAddr) {
        *self.remote.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// The handshake is over: keep what was last sent as the last flight if this end is
    /// the server (the end that sends the last flight), and stop recording writes.
    fn handshake_done(&self, keep_last_flight: bool) {
        let mut f = self.flight.lock().unwrap_or_else(|p| p.into_inner());
        // A server's handshake ends on writing its last flight, so what it wrote last is
        // that flight even if a datagram was read since. A client's last write is not one.
        if !keep_last_flight {
            f.datagrams.clear();
        }
        f.kept = true;
    }

    /// The last flight to send again, when `d` repeats the peer's flight after the
    /// handshake; empty otherwise.
    fn repeat_for(&self, d: &[u8]) -> Vec<Bytes> {
        let mut f = self.flight.lock().unwrap_or_else(|p| p.into_inner());
        if !f.kept {
            f.read_since = true;
            return Vec::new();
        }
        if !is_clear_handshake(d) || f.repeats >= LAST_FLIGHT_MAX_REPEATS {
            return Vec::new();
        }
        f.repeats += 1;
        f.datagrams.clone()
    }

    /// Call `f` each time the last flight is sent again. Set once; later calls are ignored.
    pub fn on_last_flight_repeat(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_repeat.set(Box::new(f));
    }

    /// Times the last flight was sent again.
    pub fn last_flight_repeats(&self) -> u8 {
        self.flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .repeats
    }

    fn record_sent(&self, d: &[u8]) {
        let mut f = self.flight.lock().unwrap_or_else(|p| p.into_inner());
        if f.kept {
            return;
        }
        if f.read_since {
            f.read_since = false;
            f.datagrams.clear();
            f.bytes = 0;
        }
        if f.datagrams.len() < LAST_FLIGHT_MAX_DATAGRAMS
            && f.bytes + d.len() <= LAST_FLIGHT_MAX_BYTES
        {
            f.bytes += d.len();
            f.datagrams.push(Bytes::copy_from_slice(d));
        }
    }

    /// Wait for the first datagram and keep it for the DTLS stack's first read.
    async fn peek_first(&self) -> Option<Bytes> {
        let mut slot = self
            .peeked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if slot.is_none() {
            slot = self.rx.lock().await.recv().await;
            *self.peeked.lock().unwrap_or_else(|p| p.into_inner()) = slot.clone();
        }
        slot
    }
}

/// SRTP protection profile ids (RFC 5764 §4.1.2, RFC 7714 §14.2).
const USE_SRTP_EXTENSION: u16 = 14;
const PROFILE_AEAD_AES_128_GCM: u16 = 0x0007;

/// Whether a datagram holding a DTLS ClientHello offers SRTP_AEAD_AES_128_GCM in its
/// use_srtp extension. Anything that does not parse as such is `false`.
pub fn client_hello_offers_gcm(d: &[u8]) -> bool {
    fn offers(d: &[u8]) -> Option<bool> {
        // DTLS record: type 22 (handshake), version, epoch + sequence (8), length.
        if *d.first()? != 22 {
            return None;
        }
        let body = d.get(13..)?;
        // Handshake: type 1 (ClientHello), length (3), message_seq (2), fragment offset
        // (3), fragment length (3); then the ClientHello itself.
        if *body.first()? != 1 || body.get(6..9)? != [0, 0, 0] {
            return None;
        }
        let frag_len = u32::from_be_bytes([0, *body.get(9)?, *body.get(10)?, *body.get(11)?]);
        let h = body.get(12..12 + frag_len as usize)?;
        let mut i = 2 + 32; // client_version, random
        let skip8 = |i: usize| -> Option<usize> { Some(i + 1 + *h.get(i)? as usize) };
        let skip16 = |i: usize| -> Option<usize> {
            Some(i + 2 + u16::from_be_bytes([*h.get(i)?, *h.get(i + 1)?]) as usize)
        };
        i = skip8(i)?; // session_id
        i = skip8(i)?; // cookie
        i = skip16(i)?; // cipher_suites
        i = skip8(i)?; // compression_methods
        let ext_len = u16::from_be_bytes([*h.get(i)?, *h.get(i + 1)?]) as usize;
        let exts = h.get(i + 2..i + 2 + ext_len)?;
        let mut j = 0;
        while j + 4 <= exts.len() {
            let ty = u16::from_be_bytes([exts[j], exts[j + 1]]);
            let len = u16::from_be_bytes([exts[j + 2], exts[j + 3]]) as usize;
            let data = exts.get(j + 4..j + 4 + len)?;
            if ty == USE_SRTP_EXTENSION {
                let n = u16::from_be_bytes([*data.first()?, *data.get(1)?]) as usize;
                let profiles = data.get(2..2 + n)?;
                return Some(
                    profiles
                        .chunks_exact(2)
                        .any(|p| u16::from_be_bytes([p[0], p[1]]) == PROFILE_AEAD_AES_128_GCM),
                );
            }
            j += 4 + len;
        }
        Some(false)
    }
    offers(d).unwrap_or(false)
}

#[async_trait::async_trait]
impl webrtc_util::Conn for PacketConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let peeked = self.peeked.lock().unwrap_or_else(|p| p.into_inner()).take();
        // The guard is a temporary of this statement: released before any wait below.
        let next = match peeked {
            Some(p) => Some(p),
            None => self.rx.lock().await.recv().await,
        };
        let Some(pkt) = next else {
            // The demultiplexer is gone and no datagram will come again. webrtc-dtls's
            // reader retries every error but a fatal alert at once, so an error here would
            // spin a core until the conn is closed; wait for the close instead.
            return std::future::pending().await;
        };
        let repeat = self.repeat_for(&pkt);
        if !repeat.is_empty() {
            if let Some(f) = self.on_repeat.get() {
                f();
            }
        }
        for d in repeat {
            // Best effort, as any flight: the client repeats again if this is lost too.
            let _ = self.socket.send_to(&d, self.remote()).await;
        }
        let n = pkt.len().min(buf.len());
        buf[..n].copy_from_slice(&pkt[..n]);
        Ok(n)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        Ok((self.recv(buf).await?, self.remote()))
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.record_sent(buf);
        Ok(self.socket.send_to(buf, self.remote()).await?)
    }
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.record_sent(buf);
        Ok(self.socket.send_to(buf, target).await?)
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.remote())
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        self.rx.lock().await.close();
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// The SRTP profiles this project's clients offer, fastest for the relay first.
pub const DEFAULT_PROFILES: [SrtpProtectionProfile; 2] = [
    SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
];

/// Which end of the DTLS handshake this is. The relay is always the server (a=setup:passive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtlsRole {
    Client,
    Server,
}

/// Builds an in-place context from a master key and salt.
type Maker = fn(&[u8], &[u8]) -> Result<fast_srtp::FastSrtpContext, fast_srtp::FastSrtpError>;

/// A finished DTLS handshake and the SRTP contexts it keyed.
pub struct DtlsSession {
    pub conn: Arc<DTLSConn>,
    pub profile: ProtectionProfile,
    /// Protects what this end sends.
    pub outbound: Context,
    /// Unprotects what this end receives, replay protection on.
    pub inbound: Context,
    keys: webrtc_srtp::config::SessionKeys,
}

impl DtlsSession {
    /// The same keys as (outbound, inbound) relay hop contexts: the in-place path for
    /// AEAD_AES_128_GCM and AES128_CM_HMAC_SHA1_80 when `fast`, webrtc-srtp otherwise.
    pub fn hop_contexts(
        &self,
        fast: bool,
    ) -> Result<(hop::HopContext, hop::HopContext), TransportError> {
        let keys = &self.keys;
        let srtp = |e: String| TransportError::Srtp(e);
        let make = match self.profile {
            ProtectionProfile::AeadAes128Gcm => Some(fast_srtp::FastSrtpContext::new as Maker),
            ProtectionProfile::Aes128CmHmacSha1_80 => {
                Some(fast_srtp::FastSrtpContext::new_cm as Maker)
            }
            _ => None,
        };
        if let (true, Some(make)) = (fast, make) {
            let out = make(&keys.local_master_key, &keys.local_master_salt)
                .map_err(|e| srtp(e.to_string()))?;
            let inb = make(&keys.remote_master_key, &keys.remote_master_salt)
                .map_err(|e| srtp(e.to_string()))?;
            return Ok((
                hop::HopContext::Fast(Box::new(out)),
                hop::HopContext::Fast(Box::new(inb)),
            ));
        }
        let out = Context::new(
            &keys.local_master_key,
            &keys.local_master_salt,
            self.profile,
            None,
            None,
        )
        .map_err(|e| srtp(e.to_string()))?;
        let inb = Context::new(
            &keys.remote_master_key,
            &keys.remote_master_salt,
            self.profile,
            Some(srtp_replay_protection(REPLAY_WINDOW)),
            Some(srtcp_replay_protection(REPLAY_WINDOW)),
        )
        .map_err(|e| srtp(e.to_string()))?;
        Ok((
            hop::HopContext::reference(out),
            hop::HopContext::reference(inb),
        ))
    }
}

/// Run the DTLS handshake over `conn`, refusing a peer whose certificate does not hash to
/// `expected_peer` (the a=fingerprint of its SDP), and key SRTP from the result.
///
/// `profiles` are the SRTP profiles a client offers, in its order of preference. A server
/// chooses AEAD_AES_128_GCM whenever the client offers it, whatever the client's order
/// (webrtc-dtls would take the client's first: Chrome and webrtcbin list
/// AES128_CM_HMAC_SHA1_80 first), since the relay's in-place GCM path is its fast one.
pub async fn handshake(
    conn: Arc<PacketConn>,
    identity: &DtlsIdentity,
    role: DtlsRole,
    expected_peer: Fingerprint,
    timeout: Duration,
    profiles: &[SrtpProtectionProfile],
) -> Result<DtlsSession, TransportError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let expected = expected_peer.sha256;
    let verify = Arc::new(
        move |certs: &[Vec<u8>], _chains: &[rustls::pki_types::CertificateDer<'static>]| {
            let Some(leaf) = certs.first() else {
                return Err(webrtc_dtls::Error::Other("no peer certificate".into()));
            };
            let got: [u8; 32] = Sha256::digest(leaf).into();
            if bool::from(got.ct_eq(&expected)) {
                Ok(())
            } else {
                Err(webrtc_dtls::Error::Other("fingerprint mismatch".into()))
            }
        },
    );
    let config = Config {
        certificates: vec![identity.certificate.clone()],
        srtp_protection_profiles: match role {
            DtlsRole::Client => profiles.to_vec(),
            DtlsRole::Server => {
                let first = tokio::time::timeout_at(deadline, conn.peek_first())
                    .await
                    .map_err(|_| TransportError::Timeout)?;
                if first.is_some_and(|d| client_hello_offers_gcm(&d)) {
                    vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm]
                } else {
                    vec![SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80]
                }
            }
        },
        client_auth: ClientAuthType::RequireAnyClientCert,
        extended_master_secret: ExtendedMasterSecretType::Require,
        // Self-signed certificates are authenticated by the SDP fingerprint, below.
        insecure_skip_verify: true,
        verify_peer_certificate: Some(verify),
        flight_interval: Duration::from_millis(250),
        ..Default::default()
    };
    let is_client = role == DtlsRole::Client;
    let dtls = match tokio::time::timeout_at(
        deadline,
        DTLSConn::new(conn.clone(), config, is_client, None),
    )
    .await
    {
        Err(_) => return Err(TransportError::Timeout),
        Ok(Err(e)) => {
            let s = e.to_string();
            if s.contains("fingerprint mismatch") {
                return Err(TransportError::FingerprintMismatch);
            }
            return Err(TransportError::Handshake(s));
        }
        Ok(Ok(c)) => c,
    };
    conn.handshake_done(!is_client);
    let profile = match dtls.selected_srtpprotection_profile() {
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => {
            ProtectionProfile::Aes128CmHmacSha1_80
        }
        _ => return Err(TransportError::NoSrtpProfile),
    };
    let mut cfg = webrtc_srtp::config::Config {
        profile,
        ..Default::default()
    };
    cfg.extract_session_keys_from_dtls(dtls.connection_state().await, is_client)
        .await
        .map_err(|e| TransportError::Srtp(e.to_string()))?;
    let keys = &cfg.keys;
    let outbound = Context::new(
        &keys.local_master_key,
        &keys.local_master_salt,
        profile,
        None,
        None,
    )
    .map_err(|e| TransportError::Srtp(e.to_string()))?;
    let inbound = Context::new(
        &keys.remote_master_key,
        &keys.remote_master_salt,
        profile,
        Some(srtp_replay_protection(REPLAY_WINDOW)),
        Some(srtcp_replay_protection(REPLAY_WINDOW)),
    )
    .map_err(|e| TransportError::Srtp(e.to_string()))?;
    Ok(DtlsSession {
        conn: Arc::new(dtls),
        profile,
        outbound,
        inbound,
        keys: cfg.keys.clone(),
    })
}

/// A bounded label for an SRTP profile.
pub fn profile_label(p: ProtectionProfile) -> &'static str {
    match p {
        ProtectionProfile::AeadAes128Gcm => "aead_aes_128_gcm",
        ProtectionProfile::Aes128CmHmacSha1_80 => "aes128_cm_hmac_sha1_80",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc_util::Conn;

    /// After `set_remote`, what the DTLS stack sends goes to the new address, and the conn
    /// says so: an ICE-lite end follows the peer's nominated pair.
    #[tokio::test]
    async fn set_remote_redirects_sends() {
        let bind = || async { UdpSocket::bind("127.0.0.1:0").await.expect("bind") };
        let (local, old, new) = (Arc::new(bind().await), bind().await, bind().await);
        let (old_addr, new_addr) = (
            old.local_addr().expect("addr"),
            new.local_addr().expect("addr"),
        );
        let (conn, _tx) = PacketConn::new(local, old_addr, 4);
        conn.set_remote(new_addr);
        assert_eq!(conn.remote_addr(), Some(new_addr));
        conn.send(b"record").await.expect("send");
        let mut buf = [0u8; 16];
        let (n, _) = new
            .recv_from(&mut buf)
            .await
            .expect("received at the new address");
        assert_eq!(&buf[..n], b"record");
        assert!(
            old.try_recv_from(&mut buf).is_err(),
            "nothing at the old address"
        );
    }
}
