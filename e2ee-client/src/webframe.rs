//! The web client's media framing (web/sframe.js), so e2ee-client and the audit can read
//! what a browser running it sends.
//!
//! * Audio (Opus, RFC 7587): one encoded frame per RTP packet; the whole frame is one
//!   SFrame (no metadata).
//! * Video (VP8, RFC 7741): Chromium packetises each encoded frame behind a VP8 payload
//!   descriptor per packet; the frame ends at the marker bit. The first bytes of the VP8
//!   payload header stay clear, as Jitsi and LiveKit do, because Chromium's depacketiser
//!   reads them before the receiver's transform runs: 10 bytes on a key frame (bit 0 of the
//!   first byte is 0), 3 on a delta frame. Those clear bytes are the SFrame metadata
//!   (authenticated); the SFrame follows them.

/// Clear VP8 bytes before the SFrame on a key frame.
pub const VP8_KEY_CLEAR: usize = 10;
/// Clear VP8 bytes before the SFrame on a delta frame.
pub const VP8_DELTA_CLEAR: usize = 3;

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

/// How many clear bytes lead a VP8 frame of the web client: 10 on a key frame, 3 on a delta
/// frame, never more than the frame.
pub fn vp8_clear_len(frame: &[u8]) -> usize {
    match frame.first() {
        None => 0,
        Some(b) if b & 0x01 == 0 => VP8_KEY_CLEAR.min(frame.len()),
        Some(_) => VP8_DELTA_CLEAR.min(frame.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_lengths() {
        assert_eq!(vp8_descriptor_len(&[0x10, 0xaa]), Some(1));
        // X, I with a 15-bit picture id: 4 bytes (what Chromium writes).
        assert_eq!(vp8_descriptor_len(&[0x90, 0x80, 0x81, 0x23, 0xaa]), Some(4));
        // X, I (7-bit), L, T: 5 bytes.
        assert_eq!(vp8_descriptor_len(&[0x90, 0xe0, 0x05, 0x01, 0x20]), Some(5));
        assert_eq!(vp8_descriptor_len(&[0x90, 0x80]), None);
        assert_eq!(vp8_descriptor_len(&[]), None);
    }

    #[test]
    fn clear_lengths() {
        assert_eq!(vp8_clear_len(&[0x10; 40]), 10);
        assert_eq!(vp8_clear_len(&[0x31; 40]), 3);
        assert_eq!(vp8_clear_len(&[0x10; 4]), 4);
        assert_eq!(vp8_clear_len(&[]), 0);
    }
}
