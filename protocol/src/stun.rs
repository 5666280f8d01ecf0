//! The STUN subset an ICE-lite agent needs (RFC 5389, RFC 8445 §7): binding requests and
//! responses with short-term credentials (MESSAGE-INTEGRITY), FINGERPRINT and
//! XOR-MAPPED-ADDRESS. Parsing never allocates and checks every length.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use std::net::{IpAddr, SocketAddr};
use subtle::ConstantTimeEq;
use thiserror::Error;

pub const MAGIC_COOKIE: u32 = 0x2112_a442;
pub const BINDING_REQUEST: u16 = 0x0001;
pub const BINDING_SUCCESS: u16 = 0x0101;
pub const BINDING_ERROR: u16 = 0x0111;
pub const BINDING_INDICATION: u16 = 0x0011;

const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_PRIORITY: u16 = 0x0024;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
const ATTR_FINGERPRINT: u16 = 0x8028;
const ATTR_ICE_CONTROLLED: u16 = 0x8029;
const ATTR_ICE_CONTROLLING: u16 = 0x802a;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Why a datagram is not an acceptable STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum StunError {
    #[error("STUN message truncated")]
    Truncated,
    #[error("not a STUN message (bad cookie or leading bits)")]
    NotStun,
    #[error("STUN attribute overruns the message")]
    BadAttribute,
    #[error("STUN FINGERPRINT does not match")]
    BadFingerprint,
    #[error("STUN MESSAGE-INTEGRITY missing")]
    NoIntegrity,
    #[error("STUN MESSAGE-INTEGRITY does not match")]
    BadIntegrity,
    #[error("STUN USERNAME missing or not UTF-8")]
    BadUsername,
}

/// A parsed STUN message: offsets into the datagram it came from.
#[derive(Debug, Clone, Copy)]
pub struct StunMessage<'a> {
    pub msg_type: u16,
    pub transaction_id: [u8; 12],
    pub username: Option<&'a str>,
    pub priority: Option<u32>,
    pub use_candidate: bool,
    pub ice_controlling: Option<u64>,
    pub ice_controlled: Option<u64>,
    pub xor_mapped_address: Option<SocketAddr>,
    pub error_code: Option<u16>,
    /// Offset of the MESSAGE-INTEGRITY attribute header, if present.
    integrity_at: Option<usize>,
    raw: &'a [u8],
}

impl<'a> StunMessage<'a> {
    /// Parse `buf`, checking the header, every attribute length and, when present, the
    /// FINGERPRINT. MESSAGE-INTEGRITY is checked separately with [`Self::verify_integrity`]
    /// because its key depends on the USERNAME.
    pub fn parse(buf: &'a [u8]) -> Result<Self, StunError> {
        if buf.len() < 20 {
            return Err(StunError::Truncated);
        }
        if buf[0] & 0xc0 != 0
            || u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE
        {
            return Err(StunError::NotStun);
        }
        let msg_len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        if !msg_len.is_multiple_of(4) || buf.len() != 20 + msg_len {
            return Err(StunError::Truncated);
        }
        let mut m = StunMessage {
            msg_type: u16::from_be_bytes([buf[0], buf[1]]),
            transaction_id: [0; 12],
            username: None,
            priority: None,
            use_candidate: false,
            ice_controlling: None,
            ice_controlled: None,
            xor_mapped_address: None,
            error_code: None,
            integrity_at: None,
            raw: buf,
        };
        m.transaction_id.copy_from_slice(&buf[8..20]);
        let mut off = 20;
        while off < buf.len() {
            let hdr = buf.get(off..off + 4).ok_or(StunError::BadAttribute)?;
            let typ = u16::from_be_bytes([hdr[0], hdr[1]]);
            let len = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
            let val = buf
                .get(off + 4..off + 4 + len)
                .ok_or(StunError::BadAttribute)?;
            // After MESSAGE-INTEGRITY only FINGERPRINT may follow (RFC 5389 §15.4).
            if m.integrity_at.is_some() && typ != ATTR_FINGERPRINT {
                return Err(StunError::BadAttribute);
            }
            match typ {
                ATTR_USERNAME => {
                    m.username = Some(std::str::from_utf8(val).map_err(|_| StunError::BadUsername)?)
                }
                ATTR_PRIORITY => m.priority = Some(be_u32(val)?),
                ATTR_USE_CANDIDATE => m.use_candidate = true,
                ATTR_ICE_CONTROLLING => m.ice_controlling = Some(be_u64(val)?),
                ATTR_ICE_CONTROLLED => m.ice_controlled = Some(be_u64(val)?),
                ATTR_ERROR_CODE => {
                    let v = val.get(2..4).ok_or(StunError::BadAttribute)?;
                    m.error_code = Some((v[0] & 0x7) as u16 * 100 + v[1] as u16);
                }
                ATTR_XOR_MAPPED_ADDRESS => {
                    m.xor_mapped_address = Some(decode_xor_address(val, &m.transaction_id)?)
                }
                ATTR_MESSAGE_INTEGRITY => {
                    if len != 20 {
                        return Err(StunError::BadAttribute);
                    }
                    m.integrity_at = Some(off);
                }
                ATTR_FINGERPRINT => {
                    if len != 4 || off + 8 != buf.len() {
                        return Err(StunError::BadAttribute);
                    }
                    let want = crc_with_length(buf, off) ^ FINGERPRINT_XOR;
                    if be_u32(val)? != want {
                        return Err(StunError::BadFingerprint);
                    }
                }
                _ => {}
            }
            off += 4 + len.div_ceil(4) * 4;
        }
        if off != buf.len() {
            return Err(StunError::BadAttribute);
        }
        Ok(m)
    }

    /// Check MESSAGE-INTEGRITY with the short-term credential `password`, in constant time.
    pub fn verify_integrity(&self, password: &[u8]) -> Result<(), StunError> {
        let at = self.integrity_at.ok_or(StunError::NoIntegrity)?;
        let mac = hmac_with_length(self.raw, at, password);
        let got = &self.raw[at + 4..at + 24];
        if bool::from(mac.ct_eq(got)) {
            Ok(())
        } else {
            Err(StunError::BadIntegrity)
        }
    }
}

fn be_u32(v: &[u8]) -> Result<u32, StunError> {
    let b: [u8; 4] = v.try_into().map_err(|_| StunError::BadAttribute)?;
    Ok(u32::from_be_bytes(b))
}

fn be_u64(v: &[u8]) -> Result<u64, StunError> {
    let b: [u8; 8] = v.try_into().map_err(|_| StunError::BadAttribute)?;
    Ok(u64::from_be_bytes(b))
}

fn decode_xor_address(v: &[u8], txid: &[u8; 12]) -> Result<SocketAddr, StunError> {
    if v.len() < 4 {
        return Err(StunError::BadAttribute);
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match (v[1], v.len()) {
        (0x01, 8) => {
            let mut a = [0u8; 4];
            for i in 0..4 {
                a[i] = v[4 + i] ^ cookie[i];
            }
            Ok(SocketAddr::new(IpAddr::from(a), port))
        }
        (0x02, 20) => {
            let mut a = [0u8; 16];
            for i in 0..16 {
                let k = if i < 4 { cookie[i] } else { txid[i - 4] };
                a[i] = v[4 + i] ^ k;
            }
            Ok(SocketAddr::new(IpAddr::from(a), port))
        }
        _ => Err(StunError::BadAttribute),
    }
}

/// The message up to `upto` with its length field set as if it ended right after an
/// attribute of `attr_total` bytes placed at `upto` (RFC 5389 §15.4 and §15.5).
fn with_length(raw: &[u8], upto: usize, attr_total: usize) -> ([u8; 2], &[u8], &[u8]) {
    let len = ((upto - 20 + attr_total) as u16).to_be_bytes();
    (len, &raw[0..2], &raw[4..upto])
}

fn hmac_with_length(raw: &[u8], at: usize, key: &[u8]) -> [u8; 20] {
    let (len, head, rest) = with_length(raw, at, 24);
    // HMAC accepts keys of any length: new_from_slice cannot fail for it.
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(head);
    mac.update(&len);
    mac.update(rest);
    mac.finalize().into_bytes().into()
}

fn crc_with_length(raw: &[u8], at: usize) -> u32 {
    let (len, head, rest) = with_length(raw, at, 8);
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(&len);
    h.update(rest);
    h.finalize()
}

/// Builds STUN messages attribute by attribute.
pub struct StunWriter {
    buf: Vec<u8>,
}

impl StunWriter {
    pub fn new(msg_type: u16, transaction_id: &[u8; 12]) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&msg_type.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(transaction_id);
        StunWriter { buf }
    }

    fn attr(&mut self, typ: u16, val: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf
            .extend_from_slice(&(val.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(val);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        let len = (self.buf.len() - 20) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        self
    }

    pub fn username(&mut self, u: &str) -> &mut Self {
        self.attr(ATTR_USERNAME, u.as_bytes())
    }
    pub fn priority(&mut self, p: u32) -> &mut Self {
        self.attr(ATTR_PRIORITY, &p.to_be_bytes())
    }
    pub fn use_candidate(&mut self) -> &mut Self {
        self.attr(ATTR_USE_CANDIDATE, &[])
    }
    pub fn ice_controlling(&mut self, tie_breaker: u64) -> &mut Self {
        self.attr(ATTR_ICE_CONTROLLING, &tie_breaker.to_be_bytes())
    }
    pub fn ice_controlled(&mut self, tie_breaker: u64) -> &mut Self {
        self.attr(ATTR_ICE_CONTROLLED, &tie_breaker.to_be_bytes())
    }
    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.attr(ATTR_ERROR_CODE, &v)
    }
    pub fn xor_mapped_address(&mut self, addr: SocketAddr) -> &mut Self {
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let mut v = vec![0];
        match addr.ip() {
            IpAddr::V4(ip) => {
                v.push(1);
                v.extend_from_slice(&port.to_be_bytes());
                v.extend(ip.octets().iter().zip(cookie).map(|(a, k)| a ^ k));
            }
            IpAddr::V6(ip) => {
                v.push(2);
                v.extend_from_slice(&port.to_be_bytes());
                let mut key = [0u8; 16];
                key[..4].copy_from_slice(&cookie);
                key[4..].copy_from_slice(&self.buf[8..20]);
                v.extend(ip.octets().iter().zip(key).map(|(a, k)| a ^ k));
            }
        }
        self.attr(ATTR_XOR_MAPPED_ADDRESS, &v)
    }
    /// Append MESSAGE-INTEGRITY keyed with `password`.
    pub fn integrity(&mut self, password: &[u8]) -> &mut Self {
        let at = self.buf.len();
        let mac = hmac_with_length(&self.buf, at, password);
        self.attr(ATTR_MESSAGE_INTEGRITY, &mac)
    }
    /// Append FINGERPRINT and return the finished message.
    pub fn finish_with_fingerprint(&mut self) -> Vec<u8> {
        let at = self.buf.len();
        let crc = crc_with_length(&self.buf, at) ^ FINGERPRINT_XOR;
        self.attr(ATTR_FINGERPRINT, &crc.to_be_bytes());
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pwd: &[u8]) -> Vec<u8> {
        StunWriter::new(BINDING_REQUEST, &[7; 12])
            .username("relay:client")
            .priority(1234)
            .ice_controlling(99)
            .use_candidate()
            .integrity(pwd)
            .finish_with_fingerprint()
    }

    #[test]
    fn request_round_trip_and_integrity() {
        let b = request(b"secret");
        let m = StunMessage::parse(&b).unwrap();
        assert_eq!(m.msg_type, BINDING_REQUEST);
        assert_eq!(m.username, Some("relay:client"));
        assert_eq!(m.priority, Some(1234));
        assert!(m.use_candidate);
        assert_eq!(m.ice_controlling, Some(99));
        m.verify_integrity(b"secret").unwrap();
        assert_eq!(m.verify_integrity(b"wrong"), Err(StunError::BadIntegrity));
    }

    /// RFC 5769 §2.1 sample request: our parser and integrity check agree with it.
    #[test]
    fn rfc5769_sample_request() {
        let hex = "00010058 2112a442 b7e7a701 bc34d686 fa87dfae 80220010 5354554e 20746573 \
                   7420636c 69656e74 00240004 6e0001ff 80290008 932ff9b1 51263b36 \
                   00060009 6576746a 3a683676 59202020 00080014 9aeaa70c bfd8cb56 781ef2b5 \
                   b2d3f249 c1b571a2 80280004 e57a3bcf";
        let hex: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
        let b: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let m = StunMessage::parse(&b).unwrap();
        assert_eq!(m.username, Some("evtj:h6vY"));
        assert_eq!(m.priority, Some(0x6e0001ff));
        m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt").unwrap();
    }

    #[test]
    fn success_with_xor_mapped_address() {
        for addr in ["127.0.0.1:5000", "[::1]:6000"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let b = StunWriter::new(BINDING_SUCCESS, &[3; 12])
                .xor_mapped_address(addr)
                .integrity(b"pw")
                .finish_with_fingerprint();
            let m = StunMessage::parse(&b).unwrap();
            assert_eq!(m.xor_mapped_address, Some(addr));
            m.verify_integrity(b"pw").unwrap();
        }
    }

    #[test]
    fn rejects_damage() {
        let mut b = request(b"pw");
        let last = b.len() - 1;
        b[last] ^= 1;
        assert_eq!(
            StunMessage::parse(&b).unwrap_err(),
            StunError::BadFingerprint
        );
        let b = request(b"pw");
        for cut in 0..b.len() {
            assert!(StunMessage::parse(&b[..cut]).is_err());
        }
        let mut b = request(b"pw");
        b[4] = 0;
        assert_eq!(StunMessage::parse(&b).unwrap_err(), StunError::NotStun);
    }
}
