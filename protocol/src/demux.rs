//! RFC 7983 demultiplexing: one UDP port carries STUN, DTLS, SRTP and SRTCP; the first
//! byte (and for RTP/RTCP the second) tells them apart without any state.

/// What a datagram on the shared media port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    /// Anything else (ZRTP, TURN channels, junk): dropped by the relay.
    Unknown,
}

impl PacketKind {
    /// A bounded label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PacketKind::Stun => "stun",
            PacketKind::Dtls => "dtls",
            PacketKind::Rtp => "rtp",
            PacketKind::Rtcp => "rtcp",
            PacketKind::Unknown => "unknown",
        }
    }
}

/// Classify a datagram by its first bytes (RFC 7983 §7, RFC 5761 §4 for RTP vs RTCP).
pub fn classify(buf: &[u8]) -> PacketKind {
    let Some(&b0) = buf.first() else {
        return PacketKind::Unknown;
    };
    match b0 {
        0..=3 => PacketKind::Stun,
        20..=63 => PacketKind::Dtls,
        128..=191 => match buf.get(1) {
            // RTCP packet types 192..=223 collide with RTP only for payload types 64..=95
            // with the marker bit set, which RFC 5761 forbids for RTP.
            Some(&b1) if (192..=223).contains(&b1) => PacketKind::Rtcp,
            Some(_) => PacketKind::Rtp,
            None => PacketKind::Unknown,
        },
        _ => PacketKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_first_byte() {
        assert_eq!(classify(&[]), PacketKind::Unknown);
        assert_eq!(classify(&[0x00, 0x01]), PacketKind::Stun);
        assert_eq!(classify(&[22, 0xfe, 0xfd]), PacketKind::Dtls);
        assert_eq!(classify(&[0x80, 111]), PacketKind::Rtp);
        assert_eq!(classify(&[0x80, 0x80 | 96]), PacketKind::Rtp);
        assert_eq!(classify(&[0x80, 200]), PacketKind::Rtcp);
        assert_eq!(classify(&[0x81, 206]), PacketKind::Rtcp);
        assert_eq!(classify(&[0x80]), PacketKind::Unknown);
        assert_eq!(classify(&[0xff, 0]), PacketKind::Unknown);
        assert_eq!(classify(&[64, 0]), PacketKind::Unknown);
    }
}
