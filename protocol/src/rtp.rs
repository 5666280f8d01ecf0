//! RTP header view (RFC 3550). The relay reads the fixed header, CSRCs and the extension
//! header only to know where the payload starts; the payload itself stays opaque.

use thiserror::Error;

/// Why a buffer is not a well-formed RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtpError {
    #[error("RTP packet shorter than its header")]
    Truncated,
    #[error("RTP version is not 2")]
    BadVersion,
    #[error("RTP padding length is larger than the payload")]
    BadPadding,
}

/// The fields of an RTP header that routing and statistics need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Byte offset where the payload starts (after CSRCs and extension).
    pub header_len: usize,
    /// Bytes of padding at the end (0 when the P bit is clear).
    pub padding_len: usize,
}

impl RtpHeader {
    /// Parse the header of `buf`, checking every length against the buffer.
    pub fn parse(buf: &[u8]) -> Result<Self, RtpError> {
        if buf.len() < 12 {
            return Err(RtpError::Truncated);
        }
        if buf[0] >> 6 != 2 {
            return Err(RtpError::BadVersion);
        }
        let padding = buf[0] & 0x20 != 0;
        let extension = buf[0] & 0x10 != 0;
        let cc = (buf[0] & 0x0f) as usize;
        let mut header_len = 12 + 4 * cc;
        if buf.len() < header_len {
            return Err(RtpError::Truncated);
        }
        if extension {
            if buf.len() < header_len + 4 {
                return Err(RtpError::Truncated);
            }
            let words = u16::from_be_bytes([buf[header_len + 2], buf[header_len + 3]]) as usize;
            header_len += 4 + 4 * words;
            if buf.len() < header_len {
                return Err(RtpError::Truncated);
            }
        }
        let padding_len = if padding {
            let p = buf[buf.len() - 1] as usize;
            if p == 0 || header_len + p > buf.len() {
                return Err(RtpError::BadPadding);
            }
            p
        } else {
            0
        };
        Ok(RtpHeader {
            marker: buf[1] & 0x80 != 0,
            payload_type: buf[1] & 0x7f,
            sequence: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
            header_len,
            padding_len,
        })
    }

    /// The payload span of `buf` described by this header.
    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.header_len..buf.len().saturating_sub(self.padding_len))
            .unwrap_or(&[])
    }

    /// Append a minimal 12-byte header (no CSRC, no extension) to `out`.
    pub fn write_minimal(&self, out: &mut Vec<u8>) {
        out.push(0x80);
        out.push(((self.marker as u8) << 7) | (self.payload_type & 0x7f));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
    }
}

/// The value of header extension `id` in `buf` (RFC 8285, one-byte `0xBEDE` or two-byte
/// `0x100x` form), if the packet carries it.
pub fn find_extension(buf: &[u8], id: u8) -> Option<&[u8]> {
    if buf.len() < 12 || buf[0] & 0x10 == 0 || id == 0 {
        return None;
    }
    let start = 12 + 4 * (buf[0] & 0x0f) as usize;
    let profile = u16::from_be_bytes([*buf.get(start)?, *buf.get(start + 1)?]);
    let words = u16::from_be_bytes([*buf.get(start + 2)?, *buf.get(start + 3)?]) as usize;
    let ext = buf.get(start + 4..start + 4 + 4 * words)?;
    let mut i = 0;
    if profile == 0xBEDE {
        while i < ext.len() {
            let b = ext[i];
            if b == 0 {
                i += 1;
                continue;
            }
            let (eid, len) = (b >> 4, (b & 0x0f) as usize + 1);
            if eid == 15 {
                return None;
            }
            let v = ext.get(i + 1..i + 1 + len)?;
            if eid == id {
                return Some(v);
            }
            i += 1 + len;
        }
    } else if profile & 0xFFF0 == 0x1000 {
        while i < ext.len() {
            let eid = ext[i];
            if eid == 0 {
                i += 1;
                continue;
            }
            let len = *ext.get(i + 1)? as usize;
            let v = ext.get(i + 2..i + 2 + len)?;
            if eid == id {
                return Some(v);
            }
            i += 2 + len;
        }
    }
    None
}

/// Length of the VP8 payload descriptor (RFC 7741 §4.2) at the start of an RTP payload, or
/// `None` if the payload is too short to hold the descriptor it announces.
pub fn vp8_descriptor_len(payload: &[u8]) -> Option<usize> {
    let first = *payload.first()?;
    let mut n = 1;
    if first & 0x80 != 0 {
        let ext = *payload.get(1)?;
        n = 2;
        if ext & 0x80 != 0 {
            // PictureID: 7 or 15 bits (M bit).
            let pid = *payload.get(n)?;
            n += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            n += 1; // TL0PICIDX
        }
        if ext & 0x30 != 0 {
            n += 1; // TID / Y / KEYIDX
        }
    }
    (payload.len() >= n).then_some(n)
}

/// The picture size a VP8 key frame announces at its start (RFC 6386 §9.1: the 3-byte
/// frame tag with bit 0 clear, the start code, then 14-bit width and height, little
/// endian); `None` for a delta frame or fewer than 10 bytes. The web client's E2EE framing
/// leaves exactly these bytes clear, so a relay and a receiver read them without a key.
pub fn vp8_key_frame_size(frame: &[u8]) -> Option<(u16, u16)> {
    let h = frame.get(..10)?;
    if h[0] & 0x01 != 0 || h[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    Some((
        u16::from_le_bytes([h[6], h[7]]) & 0x3fff,
        u16::from_le_bytes([h[8], h[9]]) & 0x3fff,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_minimal() {
        let h = RtpHeader {
            marker: true,
            payload_type: 96,
            sequence: 65535,
            timestamp: 0xdead_beef,
            ssrc: 0x1234_5678,
            header_len: 12,
            padding_len: 0,
        };
        let mut buf = Vec::new();
        h.write_minimal(&mut buf);
        buf.extend_from_slice(b"payload");
        let p = RtpHeader::parse(&buf).unwrap();
        assert_eq!(p, h);
        assert_eq!(p.payload(&buf), b"payload");
    }

    #[test]
    fn rejects_truncation_and_bad_fields() {
        assert_eq!(RtpHeader::parse(&[0x80; 11]), Err(RtpError::Truncated));
        assert_eq!(RtpHeader::parse(&[0x40; 12]), Err(RtpError::BadVersion));
        // CSRC count 15 but no CSRCs.
        let mut b = vec![0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(RtpHeader::parse(&b), Err(RtpError::Truncated));
        // Extension header claims 100 words.
        b = vec![0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xde, 0, 100];
        assert_eq!(RtpHeader::parse(&b), Err(RtpError::Truncated));
        // Padding longer than the packet.
        b = vec![0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 200];
        assert_eq!(RtpHeader::parse(&b), Err(RtpError::BadPadding));
    }

    #[test]
    fn finds_one_and_two_byte_extensions() {
        // One-byte form: id 3 (2 bytes: 0x01 0x02), padding, id 5 (1 byte).
        let mut b = vec![0x90, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend_from_slice(&[0xbe, 0xde, 0, 2, 0x31, 1, 2, 0, 0x50, 9, 0, 0]);
        b.extend_from_slice(b"p");
        assert_eq!(find_extension(&b, 3), Some(&[1u8, 2][..]));
        assert_eq!(find_extension(&b, 5), Some(&[9u8][..]));
        assert_eq!(find_extension(&b, 4), None);
        // Two-byte form.
        let mut b = vec![0x90, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend_from_slice(&[0x10, 0x00, 0, 1, 7, 2, 0xaa, 0xbb]);
        assert_eq!(find_extension(&b, 7), Some(&[0xaau8, 0xbb][..]));
        // A length past the block, and no extension at all.
        let mut b = vec![0x90, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x3f, 1, 2, 3]);
        assert_eq!(find_extension(&b, 3), None);
        assert_eq!(find_extension(&[0x80; 12], 3), None);
    }

    #[test]
    fn extension_and_csrc_offsets() {
        let mut b = vec![0x91, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend_from_slice(&[0, 0, 0, 9]); // CSRC
        b.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // one-word extension
        b.extend_from_slice(b"xy");
        let h = RtpHeader::parse(&b).unwrap();
        assert_eq!(h.header_len, 24);
        assert_eq!(h.payload(&b), b"xy");
    }
}
