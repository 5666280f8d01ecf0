//! What an MLS handshake message (RFC 9420 §6) shows in the clear: its wire format, group
//! id, epoch and content type. The relay, as MLS Delivery Service, orders commits per
//! epoch from these fields alone; it has no MLS library and no keys.

use thiserror::Error;

/// Why a blob is not an MLS message the relay can order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MlsFramingError {
    #[error("MLS message truncated")]
    Truncated,
    #[error("not MLS 1.0")]
    Version,
    #[error("MLS wire format {0} carries no epoch")]
    WireFormat(u16),
    #[error("bad MLS variable-length integer")]
    VarInt,
}

/// `PublicMessage` (1) and `PrivateMessage` (2): the wire formats with an epoch.
pub const WIRE_PUBLIC: u16 = 1;
pub const WIRE_PRIVATE: u16 = 2;
/// ContentType `commit`.
pub const CONTENT_COMMIT: u8 = 3;
/// ContentType `proposal`.
pub const CONTENT_PROPOSAL: u8 = 2;

/// The clear fields of a handshake message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlsFraming<'a> {
    pub wire_format: u16,
    pub group_id: &'a [u8],
    pub epoch: u64,
    pub content_type: u8,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MlsFramingError> {
        if self.0.len() < n {
            return Err(MlsFramingError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, MlsFramingError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, MlsFramingError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Result<u64, MlsFramingError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    /// `opaque x<V>`: a QUIC-style variable-length length (RFC 9420 §2.1.2), then bytes.
    fn vec(&mut self) -> Result<&'a [u8], MlsFramingError> {
        let first = self.u8()?;
        let len = match first >> 6 {
            0 => usize::from(first & 0x3f),
            1 => (usize::from(first & 0x3f) << 8) | usize::from(self.u8()?),
            2 => {
                let b = self.take(3)?;
                (usize::from(first & 0x3f) << 24)
                    | (usize::from(b[0]) << 16)
                    | (usize::from(b[1]) << 8)
                    | usize::from(b[2])
            }
            _ => return Err(MlsFramingError::VarInt),
        };
        self.take(len)
    }
}

/// Read the clear header of a serialised `MLSMessage` holding a handshake message.
pub fn parse_framing(msg: &[u8]) -> Result<MlsFraming<'_>, MlsFramingError> {
    let mut r = Reader(msg);
    if r.u16()? != 1 {
        return Err(MlsFramingError::Version);
    }
    let wire_format = r.u16()?;
    match wire_format {
        WIRE_PUBLIC => {
            let group_id = r.vec()?;
            let epoch = r.u64()?;
            // Sender: member (1) and external (2) carry a u32; new_member_* nothing.
            match r.u8()? {
                1 | 2 => {
                    r.take(4)?;
                }
                _ => {}
            }
            r.vec()?; // authenticated_data
            let content_type = r.u8()?;
            Ok(MlsFraming {
                wire_format,
                group_id,
                epoch,
                content_type,
            })
        }
        WIRE_PRIVATE => {
            let group_id = r.vec()?;
            let epoch = r.u64()?;
            let content_type = r.u8()?;
            Ok(MlsFraming {
                wire_format,
                group_id,
                epoch,
                content_type,
            })
        }
        other => Err(MlsFramingError::WireFormat(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_public_and_private_headers_and_refuses_the_rest() {
        // version 1, public, group id "g1", epoch 7, member sender 3, no aad, commit.
        let mut m = vec![0, 1, 0, 1, 2, b'g', b'1'];
        m.extend_from_slice(&7u64.to_be_bytes());
        m.extend_from_slice(&[1, 0, 0, 0, 3, 0, CONTENT_COMMIT, 0xaa]);
        let f = parse_framing(&m).unwrap();
        assert_eq!(
            f,
            MlsFraming {
                wire_format: WIRE_PUBLIC,
                group_id: b"g1",
                epoch: 7,
                content_type: CONTENT_COMMIT
            }
        );
        // Private: group id with a 2-byte length.
        let gid = vec![9u8; 70];
        let mut p = vec![0, 1, 0, 2, 0x40, 70];
        p.extend_from_slice(&gid);
        p.extend_from_slice(&u64::MAX.to_be_bytes());
        p.push(CONTENT_PROPOSAL);
        let f = parse_framing(&p).unwrap();
        assert_eq!((f.group_id.len(), f.epoch), (70, u64::MAX));
        for n in 0..m.len() - 1 {
            assert!(parse_framing(&m[..n]).is_err(), "prefix {n}");
        }
        assert_eq!(
            parse_framing(&[0, 1, 0, 3, 0]),
            Err(MlsFramingError::WireFormat(3))
        );
        assert_eq!(parse_framing(&[0, 2, 0, 1]), Err(MlsFramingError::Version));
        assert_eq!(
            parse_framing(&[0, 1, 0, 1, 0xc0]),
            Err(MlsFramingError::VarInt)
        );
    }
}
