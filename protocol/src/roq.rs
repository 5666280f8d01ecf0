//! RTP over QUIC datagrams (draft-ietf-avtcore-rtp-over-quic, §5): each datagram is a flow
//! identifier, a QUIC variable-length integer (RFC 9000 §16), followed by one RTP or RTCP
//! packet. RTP and RTCP of one flow share its id and are told apart as on a muxed port
//! (RFC 5761). The node links of a blindrelay cluster frame media this way: one flow id per
//! forwarded track, agreed on the link's control stream.
//!
//! Zero-copy both ways: [`split`] borrows the packet from the datagram, and [`write_flow`]
//! writes the prefix into the caller's buffer.

use thiserror::Error;

/// Largest value a QUIC varint holds (2^62 - 1).
pub const MAX_FLOW_ID: u64 = (1 << 62) - 1;
/// Longest varint, in bytes.
pub const MAX_PREFIX: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RoqError {
    #[error("empty datagram")]
    Empty,
    #[error("the flow identifier's varint is cut short")]
    Truncated,
    #[error("no packet after the flow identifier")]
    NoPacket,
    #[error("flow id {0} is above 2^62 - 1")]
    FlowTooLarge(u64),
}

/// Bytes the varint of `v` takes.
pub fn varint_len(v: u64) -> usize {
    match v {
        0..=0x3f => 1,
        0x40..=0x3fff => 2,
        0x4000..=0x3fff_ffff => 4,
        _ => 8,
    }
}

/// Write `flow` as a varint at the start of `out`; returns the bytes written.
pub fn write_flow(flow: u64, out: &mut [u8; MAX_PREFIX]) -> Result<usize, RoqError> {
    if flow > MAX_FLOW_ID {
        return Err(RoqError::FlowTooLarge(flow));
    }
    let n = varint_len(flow);
    let tag: u64 = match n {
        1 => 0,
        2 => 0b01,
        4 => 0b10,
        _ => 0b11,
    };
    let v = flow | (tag << (8 * n - 2));
    out[..n].copy_from_slice(&v.to_be_bytes()[8 - n..]);
    Ok(n)
}

/// Read a varint at the start of `buf`: (value, bytes read).
pub fn read_varint(buf: &[u8]) -> Result<(u64, usize), RoqError> {
    let first = *buf.first().ok_or(RoqError::Empty)?;
    let n = 1usize << (first >> 6);
    let bytes = buf.get(..n).ok_or(RoqError::Truncated)?;
    let mut v = u64::from(first & 0x3f);
    for b in &bytes[1..] {
        v = (v << 8) | u64::from(*b);
    }
    Ok((v, n))
}

/// Split a datagram into its flow id and the RTP or RTCP packet it carries.
pub fn split(datagram: &[u8]) -> Result<(u64, &[u8]), RoqError> {
    let (flow, n) = read_varint(datagram)?;
    match &datagram[n..] {
        [] => Err(RoqError::NoPacket),
        packet => Ok((flow, packet)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9000 Appendix A.1's examples.
    #[test]
    fn rfc9000_varint_examples() {
        let cases: [(&[u8], u64); 4] = [
            (
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c],
                151_288_809_941_952_652,
            ),
            (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
            (&[0x7b, 0xbd], 15_293),
            (&[0x25], 37),
        ];
        for (bytes, value) in cases {
            assert_eq!(read_varint(bytes), Ok((value, bytes.len())));
            let mut out = [0u8; MAX_PREFIX];
            let n = write_flow(value, &mut out).expect("in range");
            assert_eq!(&out[..n], bytes, "{value}");
        }
        // A two-byte encoding of 37 (RFC 9000: not minimal, still valid to read).
        assert_eq!(read_varint(&[0x40, 0x25]), Ok((37, 2)));
    }

    #[test]
    fn round_trip_at_every_length_boundary() {
        for flow in [
            0,
            63,
            64,
            16_383,
            16_384,
            1 << 30,
            (1 << 30) - 1,
            MAX_FLOW_ID,
        ] {
            let mut out = [0u8; MAX_PREFIX];
            let n = write_flow(flow, &mut out).expect("in range");
            assert_eq!(n, varint_len(flow));
            let mut dgram = out[..n].to_vec();
            dgram.extend_from_slice(&[0x80, 0x60, 0, 1]);
            assert_eq!(split(&dgram), Ok((flow, &[0x80, 0x60, 0, 1][..])));
        }
        let mut out = [0u8; MAX_PREFIX];
        assert_eq!(
            write_flow(MAX_FLOW_ID + 1, &mut out),
            Err(RoqError::FlowTooLarge(MAX_FLOW_ID + 1))
        );
    }

    #[test]
    fn bad_datagrams_are_typed_errors() {
        assert_eq!(split(&[]), Err(RoqError::Empty));
        assert_eq!(split(&[0x25]), Err(RoqError::NoPacket));
        assert_eq!(split(&[0x7b]), Err(RoqError::Truncated));
        assert_eq!(split(&[0xc2, 0x19, 0x7c]), Err(RoqError::Truncated));
        // Any bytes: a typed answer, never a panic.
        for len in 0..12 {
            for seed in 0..=255u8 {
                let d: Vec<u8> = (0..len)
                    .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
                    .collect();
                let _ = split(&d);
            }
        }
    }
}
