//! A real DTLS handshake on loopback between the relay's server side and a client that
//! lists AES128_CM_HMAC_SHA1_80 first (as Chrome and webrtcbin do): the server still
//! chooses AEAD_AES_128_GCM whenever it is offered.

use blindrelay_transport::webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use blindrelay_transport::webrtc_srtp::protection_profile::ProtectionProfile;
use blindrelay_transport::{handshake, DtlsIdentity, DtlsRole, PacketConn, DEFAULT_PROFILES};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

/// One end: a socket, its PacketConn, and a task feeding the conn every datagram.
async fn end(peer: std::net::SocketAddr, socket: Arc<UdpSocket>) -> Arc<PacketConn> {
    let (conn, tx) = PacketConn::new(socket.clone(), peer, 64);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, _)) = socket.recv_from(&mut buf).await {
            if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                break;
            }
        }
    });
    conn
}

async fn negotiate(client_offers: &[SrtpProtectionProfile]) -> (&'static str, &'static str) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let (aa, ba) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
    let (server_id, client_id) = (
        DtlsIdentity::generate().expect("identity"),
        DtlsIdentity::generate().expect("identity"),
    );
    let server_conn = end(ba, a).await;
    let client_conn = end(aa, b).await;
    let t = Duration::from_secs(5);
    let (s, c) = tokio::join!(
        handshake(
            server_conn,
            &server_id,
            DtlsRole::Server,
            client_id.fingerprint().clone(),
            t,
            &DEFAULT_PROFILES
        ),
        handshake(
            client_conn,
            &client_id,
            DtlsRole::Client,
            server_id.fingerprint().clone(),
            t,
            client_offers
        ),
    );
    let (s, c) = (s.expect("server handshake"), c.expect("client handshake"));
    (
        blindrelay_transport::profile_label(s.profile),
        blindrelay_transport::profile_label(c.profile),
    )
}

#[tokio::test]
async fn server_prefers_gcm_whatever_the_clients_order() {
    let gcm = blindrelay_transport::profile_label(ProtectionProfile::AeadAes128Gcm);
    let cm = blindrelay_transport::profile_label(ProtectionProfile::Aes128CmHmacSha1_80);
    let chrome_order = [
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
    ];
    assert_eq!(negotiate(&chrome_order).await, (gcm, gcm));
    // A client without GCM still gets the profile it offers.
    assert_eq!(
        negotiate(&[SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80]).await,
        (cm, cm)
    );
}

#[test]
fn client_hello_parser_refuses_what_is_not_one() {
    assert!(!blindrelay_transport::client_hello_offers_gcm(&[]));
    assert!(!blindrelay_transport::client_hello_offers_gcm(&[22; 40]));
    assert!(!blindrelay_transport::client_hello_offers_gcm(&[
        23, 254, 253
    ]));
}
