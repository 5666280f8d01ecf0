//! RFC 6347 §4.2.4 on a real DTLS handshake over loopback: the relay's side (the server)
//! finishes on sending its last flight, and if that flight is lost the client can only
//! repeat its own. The server has to send its last flight again; webrtc-dtls alone does not,
//! so the client was stuck until its timeout (one lossy-path page in ten).

use blindrelay_transport::{handshake, DtlsIdentity, DtlsRole, PacketConn, DEFAULT_PROFILES};
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

/// Whether a datagram holds a ChangeCipherSpec record (type 20): the server's last flight.
fn has_change_cipher_spec(mut d: &[u8]) -> bool {
    while d.len() >= 13 {
        if d[0] == 20 {
            return true;
        }
        let len = u16::from_be_bytes([d[11], d[12]]) as usize;
        d = d.get(13 + len..).unwrap_or(&[]);
    }
    false
}

/// One end: a socket, its PacketConn, and a task feeding the conn every datagram but the
/// first `drop_ccs` that carry a ChangeCipherSpec, which it counts in `dropped`.
fn end(
    peer: std::net::SocketAddr,
    socket: Arc<UdpSocket>,
    drop_ccs: usize,
    dropped: Arc<AtomicUsize>,
) -> Arc<PacketConn> {
    let (conn, tx) = PacketConn::new(socket.clone(), peer, 64);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, _)) = socket.recv_from(&mut buf).await {
            let d = &buf[..n];
            if has_change_cipher_spec(d) && dropped.load(Ordering::SeqCst) < drop_ccs {
                dropped.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            if tx.send(Bytes::copy_from_slice(d)).await.is_err() {
                break;
            }
        }
    });
    conn
}

#[tokio::test]
async fn a_lost_last_flight_is_sent_again_when_the_client_repeats_its_own() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let (aa, ba) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
    let (server_id, client_id) = (
        DtlsIdentity::generate().expect("identity"),
        DtlsIdentity::generate().expect("identity"),
    );
    let lost = Arc::new(AtomicUsize::new(0));
    // The server's datagrams reach the client through a path that loses its last flight
    // twice: the first repeat is lost as well.
    let server_conn = end(ba, a, 0, Arc::new(AtomicUsize::new(0)));
    let client_conn = end(aa, b, 2, lost.clone());
    let t = Duration::from_secs(8);
    let (s, c) = tokio::join!(
        handshake(
            server_conn.clone(),
            &server_id,
            DtlsRole::Server,
            client_id.fingerprint().clone(),
            t,
            &DEFAULT_PROFILES
        ),
        handshake(
            client_conn.clone(),
            &client_id,
            DtlsRole::Client,
            server_id.fingerprint().clone(),
            t,
            &DEFAULT_PROFILES
        ),
    );
    let (s, c) = (s.expect("server handshake"), c.expect("client handshake"));
    assert_eq!(
        lost.load(Ordering::SeqCst),
        2,
        "the last flight was lost twice"
    );
    assert!(
        server_conn.last_flight_repeats() >= 2,
        "the server sent its last flight again for each repeat that reached it: {}",
        server_conn.last_flight_repeats()
    );
    assert_eq!(
        client_conn.last_flight_repeats(),
        0,
        "a client keeps no flight"
    );
    // The same keys on both ends: what one seals, the other opens.
    let (mut s_out, mut c_in) = (s.outbound, c.inbound);
    let rtp = [
        0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, b'f', b'r', b'a', b'm', b'e',
    ];
    let sealed = s_out.encrypt_rtp(&rtp).expect("seal");
    assert_eq!(&c_in.decrypt_rtp(&sealed).expect("open")[..], &rtp[..]);
}
