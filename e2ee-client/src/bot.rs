//! The recording, captions and transcription bots: the services an E2EE call refuses. On a
//! standard call they work for real: the recording bot writes every RTP packet it receives
//! to an rtpdump file (rtptools' format, which Wireshark opens); the captions and
//! transcription bots emit one line per received frame, the hook where speech-to-text
//! would go.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

/// Which bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BotKind {
    Recording,
    Captions,
    Transcription,
}

impl BotKind {
    /// The token role this bot needs.
    pub fn role(self) -> &'static str {
        match self {
            BotKind::Recording => "bot:recording",
            BotKind::Captions => "bot:captions",
            BotKind::Transcription => "bot:transcription",
        }
    }
}

/// Writes RTP packets in rtpdump format (`#!rtpplay1.0`, RD_hdr_t, then RD_packet_t
/// records with a millisecond offset), as `rtpdump -F dump` does.
pub struct RtpDumpWriter {
    out: BufWriter<File>,
    started: Instant,
    pub packets: u64,
}

impl RtpDumpWriter {
    pub fn create(path: &Path, source: SocketAddr) -> std::io::Result<Self> {
        let mut out = BufWriter::new(File::create(path)?);
        writeln!(out, "#!rtpplay1.0 {}/{}", source.ip(), source.port())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        out.write_all(&(now.as_secs() as u32).to_be_bytes())?;
        out.write_all(&now.subsec_micros().to_be_bytes())?;
        let ip = match source.ip() {
            std::net::IpAddr::V4(v4) => u32::from(v4),
            std::net::IpAddr::V6(_) => 0,
        };
        out.write_all(&ip.to_be_bytes())?;
        out.write_all(&source.port().to_be_bytes())?;
        out.write_all(&[0, 0])?;
        Ok(RtpDumpWriter {
            out,
            started: Instant::now(),
            packets: 0,
        })
    }

    /// Append one RTP packet (clear header and payload as received).
    pub fn write(&mut self, rtp: &[u8]) -> std::io::Result<()> {
        let Ok(plen) = u16::try_from(rtp.len()) else {
            return Ok(());
        };
        let offset_ms = self.started.elapsed().as_millis() as u32;
        self.out.write_all(&(plen + 8).to_be_bytes())?;
        self.out.write_all(&plen.to_be_bytes())?;
        self.out.write_all(&offset_ms.to_be_bytes())?;
        self.out.write_all(rtp)?;
        self.packets += 1;
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<u64> {
        self.out.flush()?;
        Ok(self.packets)
    }
}

/// Read an rtpdump file back: the RTP packets it holds.
pub fn read_rtpdump(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let nl = bytes.iter().position(|b| *b == b'\n')?;
    if !bytes.starts_with(b"#!rtpplay1.0 ") {
        return None;
    }
    let mut rest = bytes.get(nl + 1 + 16..)?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
        let plen = u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?]) as usize;
        if len < 8 || plen + 8 != len {
            return None;
        }
        out.push(rest.get(8..len)?);
        rest = &rest[len..];
    }
    Some(out)
}
