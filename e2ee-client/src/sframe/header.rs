//! SFrame header codec (RFC 9605 §4.3).
//!
//! ```text
//!  0 1 2 3 4 5 6 7
//! +-+-+-+-+-+-+-+-+------------+------------+
//! |X|  K  |Y|  C  |   KID...   |   CTR...   |
//! +-+-+-+-+-+-+-+-+------------+------------+
//! ```
//!
//! Values 0..=7 live in the config byte; larger values are written big-endian with the minimum
//! number of bytes (1..=8) and the config byte carries `length - 1`.

use core::fmt;

use super::error::{HeaderError, SframeError};

/// Longest possible header: config byte + 8 KID bytes + 8 CTR bytes.
pub const MAX_HEADER_LEN: usize = 17;

/// A decoded SFrame header: key identifier and frame counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// Key identifier (selects the base key).
    pub kid: u64,
    /// Frame counter (forms the nonce together with the salt).
    pub ctr: u64,
}

/// An encoded header held on the stack, so that encoding never allocates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EncodedHeader {
    buf: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl EncodedHeader {
    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// Number of encoded bytes (1..=17).
    #[allow(clippy::len_without_is_empty)] // an encoded header is never empty
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }
}

impl AsRef<[u8]> for EncodedHeader {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for EncodedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncodedHeader({})", hex::encode(self.as_bytes()))
    }
}

/// Bytes needed to write `v` big-endian without leading zero bytes (1..=8; 1 for zero).
fn min_be_len(v: u64) -> usize {
    let bits = 64 - v.leading_zeros() as usize;
    bits.div_ceil(8).max(1)
}

/// Bytes a field occupies after the config byte: 0 if inline, else its minimal length.
fn ext_len(v: u64) -> usize {
    if v < 8 {
        0
    } else {
        min_be_len(v)
    }
}

impl Header {
    /// Creates a header value.
    pub const fn new(kid: u64, ctr: u64) -> Self {
        Self { kid, ctr }
    }

    /// Length of the minimal encoding of this header.
    pub fn encoded_len(&self) -> usize {
        1 + ext_len(self.kid) + ext_len(self.ctr)
    }

    /// Encodes with the minimal encoding required by RFC 9605 §4.3.
    pub fn encode(&self) -> EncodedHeader {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let mut pos = 1;
        let mut config = 0u8;
        // Each branch writes at most 8 bytes after the config byte, so `pos` stays <= 17.
        if self.kid < 8 {
            // kid < 8, so the cast cannot truncate.
            config |= (self.kid as u8) << 4;
        } else {
            let n = min_be_len(self.kid);
            // n is in 1..=8, so `n - 1` fits in the 3-bit K field.
            config |= 0x80 | (((n - 1) as u8) << 4);
            buf[pos..pos + n].copy_from_slice(&self.kid.to_be_bytes()[8 - n..]);
            pos += n;
        }
        if self.ctr < 8 {
            config |= self.ctr as u8;
        } else {
            let n = min_be_len(self.ctr);
            config |= 0x08 | ((n - 1) as u8);
            buf[pos..pos + n].copy_from_slice(&self.ctr.to_be_bytes()[8 - n..]);
            pos += n;
        }
        buf[0] = config;
        EncodedHeader {
            buf,
            // pos <= MAX_HEADER_LEN (17), fits in u8.
            len: pos as u8,
        }
    }

    /// Encodes into the front of `out`, returning the number of bytes written.
    pub fn encode_into(&self, out: &mut [u8]) -> Result<usize, SframeError> {
        let enc = self.encode();
        let n = enc.len();
        let available = out.len();
        let dst = out.get_mut(..n).ok_or(SframeError::BufferTooSmall {
            needed: n,
            available,
        })?;
        dst.copy_from_slice(enc.as_bytes());
        Ok(n)
    }

    /// Decodes a header from the front of `buf`.
    ///
    /// Returns the header and the number of bytes it occupies. Rejects truncated input and
    /// non-minimal encodings; never panics.
    pub fn decode(buf: &[u8]) -> Result<(Header, usize), HeaderError> {
        let Some(&config) = buf.first() else {
            return Err(HeaderError::Truncated {
                needed: 1,
                available: 0,
            });
        };
        let kid_len = if config & 0x80 != 0 {
            usize::from((config >> 4) & 0x07) + 1
        } else {
            0
        };
        let ctr_len = if config & 0x08 != 0 {
            usize::from(config & 0x07) + 1
        } else {
            0
        };
        let total = 1 + kid_len + ctr_len;
        if buf.len() < total {
            return Err(HeaderError::Truncated {
                needed: total,
                available: buf.len(),
            });
        }
        let read = |bytes: &[u8]| bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        let kid = if kid_len == 0 {
            u64::from((config >> 4) & 0x07)
        } else {
            let v = read(&buf[1..1 + kid_len]);
            if ext_len(v) != kid_len {
                return Err(HeaderError::NonMinimal { field: "KID" });
            }
            v
        };
        let ctr = if ctr_len == 0 {
            u64::from(config & 0x07)
        } else {
            let v = read(&buf[1 + kid_len..total]);
            if ext_len(v) != ctr_len {
                return Err(HeaderError::NonMinimal { field: "CTR" });
            }
            v
        };
        Ok((Header { kid, ctr }, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(min_be_len(0), 1);
        assert_eq!(min_be_len(8), 1);
        assert_eq!(min_be_len(255), 1);
        assert_eq!(min_be_len(256), 2);
        assert_eq!(min_be_len(u64::MAX), 8);
        assert_eq!(
            Header::new(u64::MAX, u64::MAX).encoded_len(),
            MAX_HEADER_LEN
        );
    }

    #[test]
    fn known_encodings() {
        let cases: &[(u64, u64, &str)] = &[
            (0, 0, "00"),
            (7, 7, "77"),
            (0, 255, "08ff"),
            (255, 0, "80ff"),
            (0x123, 0x4567, "990123 4567"),
            (u64::MAX, u64::MAX, "ff ffffffffffffffff ffffffffffffffff"),
        ];
        for &(kid, ctr, hex_str) in cases {
            let expected = hex::decode(hex_str.replace(' ', "")).unwrap();
            let h = Header::new(kid, ctr);
            assert_eq!(h.encode().as_bytes(), &expected[..]);
            assert_eq!(Header::decode(&expected).unwrap(), (h, expected.len()));
        }
    }

    #[test]
    fn rejects_truncated_and_non_minimal() {
        assert_eq!(
            Header::decode(&[]),
            Err(HeaderError::Truncated {
                needed: 1,
                available: 0
            })
        );
        assert_eq!(
            Header::decode(&[0x99, 0x01]),
            Err(HeaderError::Truncated {
                needed: 5,
                available: 2
            })
        );
        // KID 5 written in an extension byte.
        assert_eq!(
            Header::decode(&[0x80, 0x05]),
            Err(HeaderError::NonMinimal { field: "KID" })
        );
        // CTR 0x00ff written in two bytes.
        assert_eq!(
            Header::decode(&[0x09, 0x00, 0xff]),
            Err(HeaderError::NonMinimal { field: "CTR" })
        );
    }
}
