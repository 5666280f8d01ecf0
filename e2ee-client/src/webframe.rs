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

pub use blindrelay_protocol::rtp::vp8_descriptor_len;

/// Start a synthetic video frame as a VP8 frame starts (RFC 6386 §9.1): the 3-byte frame
/// tag, and on a key frame the start code and picture size. That is what a relay reads to
/// find key frames and each simulcast layer's height, and exactly what the web framing
/// leaves clear ([`vp8_clear_len`]), so a sealed synthetic frame looks to the relay like a
/// browser's.
pub fn vp8_frame_start(key: bool, width: u16, height: u16, out: &mut Vec<u8>) {
    // Bit 0: not a key frame; version 0; bit 4: show_frame; first partition size 0.
    out.push(if key { 0x10 } else { 0x11 });
    out.extend_from_slice(&[0, 0]);
    if key {
        out.extend_from_slice(&[0x9d, 0x01, 0x2a]);
        out.extend_from_slice(&(width & 0x3fff).to_le_bytes());
        out.extend_from_slice(&(height & 0x3fff).to_le_bytes());
    }
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
    fn a_synthetic_frame_start_is_read_as_vp8() {
        let mut key = Vec::new();
        vp8_frame_start(true, 320, 240, &mut key);
        assert_eq!(key.len(), VP8_KEY_CLEAR);
        assert_eq!(vp8_clear_len(&key), VP8_KEY_CLEAR);
        assert_eq!(
            blindrelay_protocol::rtp::vp8_key_frame_size(&key),
            Some((320, 240))
        );
        let mut delta = Vec::new();
        vp8_frame_start(false, 320, 240, &mut delta);
        assert_eq!(delta.len(), VP8_DELTA_CLEAR);
        assert_eq!(vp8_clear_len(&delta), VP8_DELTA_CLEAR);
        delta.extend_from_slice(&[0; 8]);
        assert_eq!(blindrelay_protocol::rtp::vp8_key_frame_size(&delta), None);
    }

    #[test]
    fn clear_lengths() {
        assert_eq!(vp8_clear_len(&[0x10; 40]), 10);
        assert_eq!(vp8_clear_len(&[0x31; 40]), 3);
        assert_eq!(vp8_clear_len(&[0x10; 4]), 4);
        assert_eq!(vp8_clear_len(&[]), 0);
    }
}

/// Why a VP8 clip cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not an IVF file (no DKIF signature)")]
    NotIvf,
    #[error("the IVF file holds {0}, not VP8 (VP80)")]
    NotVp8(String),
    #[error("the clip is cut short in frame {0}")]
    Truncated(usize),
    #[error("the clip holds no frame")]
    Empty,
    #[error("not an Ogg file (no OggS page)")]
    NotOgg,
    #[error("Opus packet {0} is not 20 ms long (the client sends one packet per 20 ms)")]
    OpusFrameSize(usize),
}

/// Largest frame accepted from a clip (a 4K key frame is far below this).
const MAX_CLIP_FRAME: usize = 4 << 20;

/// The VP8 frames of an IVF file (the container `ffmpeg -f ivf` and libvpx write):
/// a 32-byte header (`DKIF`, version, header length, `VP80`, ...), then per frame a
/// 4-byte little-endian size, an 8-byte timestamp and the frame.
pub fn parse_ivf(bytes: &[u8]) -> Result<Vec<Vec<u8>>, ClipError> {
    if bytes.len() < 32 || &bytes[..4] != b"DKIF" {
        return Err(ClipError::NotIvf);
    }
    if &bytes[8..12] != b"VP80" {
        return Err(ClipError::NotVp8(
            String::from_utf8_lossy(&bytes[8..12]).into_owned(),
        ));
    }
    let header_len = usize::from(u16::from_le_bytes([bytes[6], bytes[7]])).max(32);
    let mut at = header_len;
    let mut frames = Vec::new();
    while at < bytes.len() {
        let head = bytes
            .get(at..at + 12)
            .ok_or(ClipError::Truncated(frames.len()))?;
        let size = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if size > MAX_CLIP_FRAME {
            return Err(ClipError::Truncated(frames.len()));
        }
        let frame = bytes
            .get(at + 12..at + 12 + size)
            .ok_or(ClipError::Truncated(frames.len()))?;
        frames.push(frame.to_vec());
        at += 12 + size;
    }
    if frames.is_empty() {
        return Err(ClipError::Empty);
    }
    Ok(frames)
}

/// Writes VP8 frames as an IVF file (for tests and tools that make clips).
pub fn write_ivf(width: u16, height: u16, fps: u32, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"DKIF");
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&32u16.to_le_bytes());
    out.extend_from_slice(b"VP80");
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&fps.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(i as u64).to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// Reads an IVF clip from `path`.
pub fn read_ivf(path: &std::path::Path) -> Result<Vec<Vec<u8>>, ClipError> {
    let bytes = std::fs::read(path).map_err(|source| ClipError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_ivf(&bytes)
}

/// The Opus packets of an Ogg Opus file (RFC 7845: what `opusenc`, `oggmux` and
/// `ffmpeg -c:a libopus` write), without the OpusHead and OpusTags header packets. Each
/// packet is one RTP payload (RFC 7587). Only the first logical stream is read.
pub fn parse_ogg_opus(bytes: &[u8]) -> Result<Vec<Vec<u8>>, ClipError> {
    let mut packets = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    let mut at = 0;
    let mut serial = None;
    while at < bytes.len() {
        let page = bytes
            .get(at..at + 27)
            .ok_or(ClipError::Truncated(packets.len()))?;
        if &page[..4] != b"OggS" {
            return Err(ClipError::NotOgg);
        }
        let this_serial = u32::from_le_bytes([page[14], page[15], page[16], page[17]]);
        let nsegs = usize::from(page[26]);
        let table = bytes
            .get(at + 27..at + 27 + nsegs)
            .ok_or(ClipError::Truncated(packets.len()))?;
        let mut data_at = at + 27 + nsegs;
        let first_stream = *serial.get_or_insert(this_serial) == this_serial;
        for &lace in table {
            let seg = bytes
                .get(data_at..data_at + usize::from(lace))
                .ok_or(ClipError::Truncated(packets.len()))?;
            data_at += usize::from(lace);
            if !first_stream {
                continue;
            }
            partial.extend_from_slice(seg);
            if lace < 255 {
                let packet = std::mem::take(&mut partial);
                if !packet.starts_with(b"OpusHead") && !packet.starts_with(b"OpusTags") {
                    if packet.len() > MAX_CLIP_FRAME {
                        return Err(ClipError::Truncated(packets.len()));
                    }
                    packets.push(packet);
                }
            }
        }
        at = data_at;
    }
    if packets.is_empty() {
        return Err(ClipError::Empty);
    }
    if let Some(i) = packets.iter().position(|p| opus_samples(p) != Some(960)) {
        return Err(ClipError::OpusFrameSize(i));
    }
    Ok(packets)
}

/// Samples at 48 kHz in one Opus packet, from its TOC byte (RFC 6716 §3.1).
pub fn opus_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Frame duration in units of 2.5 ms.
    let units: u32 = match config {
        0..=11 => [4, 8, 16, 24][usize::from(config % 4)],
        12..=15 => [4, 8][usize::from(config % 2)],
        _ => [1, 2, 4, 8][usize::from(config % 4)],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3f),
    };
    Some(units * 120 * frames)
}

/// Reads an Ogg Opus clip from `path`.
pub fn read_ogg_opus(path: &std::path::Path) -> Result<Vec<Vec<u8>>, ClipError> {
    let bytes = std::fs::read(path).map_err(|source| ClipError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_ogg_opus(&bytes)
}

/// RTP payloads of one VP8 frame (RFC 7741): a one-byte payload descriptor (S set on the
/// first packet, partition 0) before each chunk of at most `max_chunk` bytes; the bool
/// marks the frame's last packet (the RTP marker bit).
pub fn vp8_packets(frame: &[u8], max_chunk: usize) -> Vec<(Vec<u8>, bool)> {
    let max_chunk = max_chunk.max(1);
    let n = frame.len().div_ceil(max_chunk).max(1);
    (0..n)
        .map(|i| {
            let chunk = &frame[i * max_chunk..((i + 1) * max_chunk).min(frame.len())];
            let mut p = Vec::with_capacity(chunk.len() + 1);
            p.push(if i == 0 { 0x10 } else { 0x00 });
            p.extend_from_slice(chunk);
            (p, i + 1 == n)
        })
        .collect()
}

#[cfg(test)]
mod clip_tests {
    use super::*;

    #[test]
    fn ivf_round_trips_and_rejects_junk() {
        let frames = vec![vec![0x30, 1, 2], vec![0x91; 5000]];
        let ivf = write_ivf(320, 240, 30, &frames);
        assert_eq!(parse_ivf(&ivf).ok(), Some(frames));
        assert!(matches!(parse_ivf(b"nope"), Err(ClipError::NotIvf)));
        assert!(matches!(
            parse_ivf(&ivf[..ivf.len() - 1]),
            Err(ClipError::Truncated(1))
        ));
        let mut vp9 = ivf.clone();
        vp9[8..12].copy_from_slice(b"VP90");
        assert!(matches!(parse_ivf(&vp9), Err(ClipError::NotVp8(_))));
    }

    /// One Ogg page with the given packets (each under 255 * 255 bytes).
    fn ogg_page(serial: u32, packets: &[&[u8]]) -> Vec<u8> {
        let mut table = Vec::new();
        let mut data = Vec::new();
        for p in packets {
            let mut n = p.len();
            while n >= 255 {
                table.push(255u8);
                n -= 255;
            }
            table.push(n as u8);
            data.extend_from_slice(p);
        }
        let mut page = b"OggS\0\0".to_vec();
        page.extend_from_slice(&[0; 8]);
        page.extend_from_slice(&serial.to_le_bytes());
        page.extend_from_slice(&[0; 8]);
        page.push(table.len() as u8);
        page.extend(table);
        page.extend(data);
        page
    }

    #[test]
    fn ogg_opus_packets_without_the_headers() {
        let big = vec![7u8; 600];
        assert_eq!(opus_samples(&[0x78]), Some(960));
        assert_eq!(opus_samples(&[0xfc]), Some(960)); // CELT FB 20 ms
        assert_eq!(opus_samples(&[0x79]), Some(1920)); // two 20 ms frames
        assert_eq!(opus_samples(&[0x80]), Some(120)); // CELT NB 2.5 ms
        let mut file = ogg_page(1, &[b"OpusHead\x01\x01"]);
        file.extend(ogg_page(1, &[b"OpusTags...."]));
        let mut big = big;
        big[0] = 0x78; // SILK wideband 20 ms, one frame
        file.extend(ogg_page(1, &[&[0x78, 1, 2], &big]));
        file.extend(ogg_page(2, &[&[0xff; 9]]));
        let packets = parse_ogg_opus(&file).expect("parses");
        assert_eq!(packets, vec![vec![0x78, 1, 2], big]);
        assert!(matches!(
            parse_ogg_opus(b"nope, not ogg at all, really nothing"),
            Err(ClipError::NotOgg)
        ));
        assert!(matches!(
            parse_ogg_opus(&file[..file.len() - 3]),
            Err(ClipError::Truncated(_))
        ));
    }

    #[test]
    fn vp8_packets_carry_a_descriptor_and_a_marker() {
        let frame: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let p = vp8_packets(&frame, 1000);
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].0[0], p[1].0[0], p[2].0[0]), (0x10, 0x00, 0x00));
        assert_eq!(
            p.iter().map(|x| x.1).collect::<Vec<_>>(),
            [false, false, true]
        );
        let joined: Vec<u8> = p
            .iter()
            .flat_map(|(x, _)| x[vp8_descriptor_len(x).unwrap_or(0)..].to_vec())
            .collect();
        assert_eq!(joined, frame);
    }
}
