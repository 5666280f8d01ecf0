//! Command line of `e2ee-client`: the logic lives here so `main.rs` stays thin.

use crate::audit;
use crate::bot::BotKind;
use crate::call::{run_call, CallOptions};
use crate::identity;
use crate::sframe;
use blindrelay_protocol::signal::E2eeScheme;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "e2ee-client",
    version,
    about = "Reference client for blindrelay: end-to-end encrypted calls, SFrame tools"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join a call, send synthetic audio and video, check what arrives.
    Call(CallArgs),
    /// Join as a recording, captions or transcription bot (receive only).
    Bot(BotArgs),
    /// SFrame (RFC 9605) tools.
    Sframe {
        #[command(subcommand)]
        command: SframeCommand,
    },
    /// Write a new Ed25519 identity key: PREFIX.key (PKCS#8 PEM, mode 0600) and PREFIX.pub
    /// (SPKI PEM). Give PREFIX.pub to the token issuer (`blindrelay token --cnf-key`) and
    /// PREFIX.key to `call --identity-key`.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Audit a capture of what a relay holds (`blindrelay --capture`, pcapng with each
    /// sender's codec map; or any pcap of clear RTP): exit 0 if it is blind
    /// (every frame is SFrame, no canary in the clear), 1 if not, 2 if unreadable.
    Audit(AuditArgs),
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The capture file: pcap or pcapng (raw IP, IPv4, IPv6, Ethernet or Linux cooked).
    pub file: PathBuf,
    /// Known plaintext to search for: the `--canary` the clients sent.
    #[arg(long)]
    pub canary: Option<String>,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Payload type of the web client's Opus streams (a sealed frame per packet); repeatable.
    /// Not needed for a blindrelay capture (its codec maps say it); given, it overrides them.
    #[arg(long = "opus-pt")]
    pub opus_pt: Vec<u8>,
    /// Payload type of the web client's VP8 streams (RFC 7741, clear VP8 header); repeatable.
    /// Not needed for a blindrelay capture (its codec maps say it); given, it overrides them.
    #[arg(long = "vp8-pt")]
    pub vp8_pt: Vec<u8>,
}

#[derive(Debug, Args)]
pub struct CallArgs {
    /// Signalling URL of the relay; repeatable. The client joins through the first; when
    /// the call is lost once established (not refused), it rejoins through the next one
    /// (wrapping round) with a short backoff, until `--duration` is over.
    #[arg(long, default_value = "ws://127.0.0.1:7400/v1/signal", num_args = 1)]
    pub relay: Vec<String>,
    /// Token from `blindrelay token`.
    #[arg(long, env = "BLINDRELAY_TOKEN")]
    pub token: String,
    /// Call id.
    #[arg(long, default_value = "demo")]
    pub call: String,
    /// How long to stay in the call.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Require end-to-end encryption: told the call will be standard, leave (exit 1,
    /// `left_reason: downgrade_refused`) without sending anything in the clear.
    #[arg(long)]
    pub e2ee: bool,
    /// Ask for end-to-end encryption, but go on as a standard call if the relay says it
    /// is not possible (before keys exist), with a warning and `downgrade_accepted` in the
    /// summary.
    #[arg(long)]
    pub e2ee_preferred: bool,
    /// Group calls: sign MLS messages with this Ed25519 identity key (`e2ee-client
    /// keygen`) and carry the token in the credential. The token's `cnf` must bind it.
    #[arg(long)]
    pub identity_key: Option<PathBuf>,
    /// Group calls: the token issuer's public key (SPKI PEM), from a source other than the
    /// relay; repeatable. Every member's credential must carry a token it signed that
    /// binds the member's signature key, or the member is refused.
    #[arg(long = "issuer-key")]
    pub issuer_key: Vec<PathBuf>,
    /// How a new E2EE call keys: `x25519` (one-to-one) or `mls` (a group); a joiner must
    /// match the call.
    #[arg(long, default_value = "x25519", value_parser = parse_scheme)]
    pub e2ee_scheme: E2eeScheme,
    /// Video bitrate in kbit/s (0 sends no video).
    #[arg(long, default_value_t = 1500)]
    pub video_kbps: u32,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Send no audio.
    #[arg(long)]
    pub no_audio: bool,
    /// Repeat TEXT through every plaintext frame (for audits of what the relay sees).
    #[arg(long)]
    pub canary: Option<String>,
    /// Offer only AES128_CM_HMAC_SHA1_80 in DTLS, as webrtcbin and Janus do.
    #[arg(long)]
    pub srtp_aes_cm_only: bool,
    /// Send one chat message once a peer is there.
    #[arg(long)]
    pub chat: Option<String>,
    /// Ask the relay for a call feature mid-call: FEATURE or FEATURE=ARG, e.g.
    /// `add_participant=bob`, `transfer=carol@contoso`, `merge=other-call`, `park`,
    /// `record` (repeatable). Answers appear under `features` in the JSON summary.
    #[arg(long = "request")]
    pub request: Vec<String>,
    /// Wait for an invitation (add_participant, transfer, retrieve) and join that call.
    #[arg(long)]
    pub wait_invite: bool,
    /// The other participants are browsers running the relay's web client: read their media
    /// in its framing (Opus one frame per packet; VP8 per RFC 7741 with a clear VP8 header)
    /// and count decrypted frames instead of checking the synthetic pattern.
    #[arg(long)]
    pub web_peers: bool,
    /// Send the VP8 frames of this IVF file (looped) as the video, packetised per RFC 7741
    /// (sealed in the web client's framing on an E2EE call), so browsers show the picture.
    /// Make one with `gst-launch-1.0 videotestsrc num-buffers=300 ! vp8enc ! ...` or
    /// `ffmpeg -i IN -c:v libvpx -f ivf clip.ivf`.
    #[arg(long)]
    pub video_clip: Option<PathBuf>,
    /// Send the Opus packets of this Ogg Opus file (looped, 20 ms each) as the audio, one
    /// per RTP packet (RFC 7587), sealed whole on an E2EE call. Make one with
    /// `gst-launch-1.0 audiotestsrc ! opusenc ! oggmux ! filesink location=clip.opus`.
    #[arg(long)]
    pub audio_clip: Option<PathBuf>,
    /// Send the synthetic video as N simulcast layers (2 or 3), as Chromium does: one SSRC
    /// per layer in an `a=ssrc-group:SIM`, each half the next one's size and a quarter of
    /// its rate, the top one `--video-kbps` at 640x480, each layer's frames sealed on their
    /// own. The frames go in the web client's VP8 framing (implies `--web-peers`): the relay
    /// finds key frames and heights as it does a browser's, and answers PLI/FIR with one.
    #[arg(long, value_parser = clap::value_parser!(u8).range(2..=3), conflicts_with = "video_clip")]
    pub simulcast: Option<u8>,
    /// Ask the relay to send every remote video track at most this many lines tall
    /// (`max_resolution`): of a simulcast track, the tallest layer within it.
    #[arg(long)]
    pub max_height: Option<u32>,
    /// Print a JSON summary on stdout at exit.
    #[arg(long)]
    pub json: bool,
    /// Label for printed lines.
    #[arg(long, default_value = "client")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct BotArgs {
    /// Which bot (the token's role must match: bot:recording, bot:captions, bot:transcription).
    #[arg(long)]
    pub kind: BotKind,
    /// Recording: write received RTP here (rtpdump format).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "ws://127.0.0.1:7400/v1/signal")]
    pub relay: String,
    #[arg(long, env = "BLINDRELAY_TOKEN")]
    pub token: String,
    #[arg(long, default_value = "demo")]
    pub call: String,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Print a JSON summary on stdout at exit.
    #[arg(long)]
    pub json: bool,
    /// Wait in the lobby until a call brings this bot in (record, live_captions,
    /// transcription), then join that call.
    #[arg(long)]
    pub wait_invite: bool,
}

#[derive(Debug, Subcommand)]
pub enum SframeCommand {
    /// Check a file of RFC 9605 test vectors (JSON).
    Vectors { file: PathBuf },
    /// Seal a plaintext (hex) and print the SFrame ciphertext (hex).
    Seal {
        #[arg(long, default_value_t = 4)]
        suite: u16,
        #[arg(long)]
        base_key: String,
        #[arg(long)]
        kid: u64,
        #[arg(long)]
        ctr: u64,
        #[arg(long)]
        metadata: Option<String>,
        plaintext_hex: String,
    },
    /// Open an SFrame ciphertext (hex) and print the plaintext (hex).
    Open {
        #[arg(long, default_value_t = 4)]
        suite: u16,
        #[arg(long)]
        base_key: String,
        #[arg(long)]
        metadata: Option<String>,
        ciphertext_hex: String,
    },
}

/// Run a parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Call(a) => {
            let identity_key = match a.identity_key.as_deref().map(identity::load_identity_key) {
                Some(Err(e)) => {
                    eprintln!("e2ee-client: --identity-key: {e}");
                    return 2;
                }
                Some(Ok(k)) => Some(k),
                None => None,
            };
            let mut issuer_keys = Vec::new();
            for p in &a.issuer_key {
                match identity::load_issuer_key(p) {
                    Ok(k) => issuer_keys.push(k),
                    Err(e) => {
                        eprintln!("e2ee-client: --issuer-key: {e}");
                        return 2;
                    }
                }
            }
            // clap gives at least one: the default when no --relay is given.
            let mut relays = a.relay.into_iter();
            let relay = relays
                .next()
                .unwrap_or_else(|| CallOptions::default().relay);
            let opts = CallOptions {
                relay,
                fallback_relays: relays.collect(),
                progress: None,
                token: a.token,
                call: a.call,
                duration: a.duration,
                e2ee: a.e2ee || a.e2ee_preferred,
                e2ee_preferred: a.e2ee_preferred,
                identity_key,
                issuer_keys,
                e2ee_scheme: a.e2ee_scheme,
                audio: !a.no_audio,
                video: a.video_kbps > 0,
                video_kbps: a.video_kbps,
                fps: a.fps,
                canary: a.canary,
                connect_timeout: Duration::from_secs(10),
                srtp_aes_cm_only: a.srtp_aes_cm_only,
                stats_every: Some(Duration::from_secs(1)),
                name: a.name,
                chat: a.chat,
                features: a.request,
                bot: None,
                wait_invite: a.wait_invite,
                web_peers: a.web_peers || a.simulcast.is_some(),
                video_clip: a.video_clip,
                audio_clip: a.audio_clip,
                simulcast: a.simulcast.unwrap_or(0),
                max_height: a.max_height,
            };
            let summary = run_call(&opts).await;
            if a.json {
                // CallSummary holds only plain data; serialization cannot fail.
                println!(
                    "{}",
                    serde_json::to_string(&summary)
                        .unwrap_or_else(|_| unreachable!("summary serializes"))
                );
            } else {
                println!(
                    "joined={} mode={} sent={} received={} lost={} frames_verified={} e2ee={}{}",
                    summary.joined,
                    summary.call_mode.map(|m| m.as_str()).unwrap_or("-"),
                    summary.sent_packets,
                    summary.received_packets,
                    summary.lost_packets,
                    summary.frames_verified,
                    summary.e2ee,
                    summary
                        .verification_code
                        .as_deref()
                        .map(|c| format!(" code={c}"))
                        .unwrap_or_default(),
                );
            }
            if let Some(e) = &summary.error {
                eprintln!("e2ee-client: {}: {}", e.code, e.message);
            }
            if summary.success() {
                0
            } else {
                1
            }
        }
        Command::Bot(b) => {
            if b.kind == BotKind::Recording && b.out.is_none() {
                eprintln!("e2ee-client: --kind recording needs --out FILE");
                return 2;
            }
            let opts = CallOptions {
                relay: b.relay,
                token: b.token,
                call: b.call,
                duration: b.duration,
                audio: false,
                video: false,
                stats_every: Some(Duration::from_secs(1)),
                name: b.kind.role().to_string(),
                bot: Some((b.kind, b.out)),
                wait_invite: b.wait_invite,
                ..Default::default()
            };
            let summary = run_call(&opts).await;
            let out = serde_json::json!({
                "joined": summary.joined,
                "kind": b.kind.role(),
                "call_mode": summary.call_mode,
                "frames_received": summary.frames_received,
                "packets_received": summary.received_packets,
                "recorded_packets": summary.recorded_packets,
                "error": summary.error,
            });
            if b.json {
                println!("{out}");
            }
            if let Some(e) = &summary.error {
                eprintln!("e2ee-client: {}: {}", e.code, e.message);
            }
            if summary.joined && summary.error.is_none() && summary.frames_received > 0 {
                0
            } else {
                1
            }
        }
        Command::Sframe { command } => sframe_command(command),
        Command::Audit(a) => audit_command(&a),
        Command::Keygen { out } => keygen_command(&out),
    }
}

/// Write PREFIX.key (0600) and PREFIX.pub; print the public key's thumbprint.
fn keygen_command(out: &std::path::Path) -> i32 {
    use std::io::Write as _;
    let (private, public) = match blindrelay_protocol::token::generate_ed25519() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("e2ee-client: keygen: {e}");
            return 1;
        }
    };
    let key_path = out.with_extension("key");
    let pub_path = out.with_extension("pub");
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let written = o
        .open(&key_path)
        .and_then(|mut f| f.write_all(private.as_bytes()))
        .and_then(|_| std::fs::write(&pub_path, public.as_bytes()));
    if let Err(e) = written {
        eprintln!("e2ee-client: keygen: {}: {e}", key_path.display());
        return 1;
    }
    match identity::load_issuer_key(&pub_path) {
        Ok(k) => {
            println!("{}", blindrelay_protocol::token::kid_of(&k));
            0
        }
        Err(e) => {
            eprintln!("e2ee-client: keygen: {e}");
            1
        }
    }
}

fn audit_command(a: &AuditArgs) -> i32 {
    let web = audit::WebFraming {
        opus_pts: a.opus_pt.clone(),
        vp8_pts: a.vp8_pt.clone(),
    };
    let report =
        match audit::audit_file_framed(&a.file, a.canary.as_deref().map(str::as_bytes), &web) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("e2ee-client: audit: {e}");
                return 2;
            }
        };
    if a.json {
        // AuditReport holds only plain data; serialization cannot fail.
        println!(
            "{}",
            serde_json::to_string_pretty(&report)
                .unwrap_or_else(|_| unreachable!("report serializes"))
        );
    } else {
        print!("{}", report.table());
    }
    if report.blind {
        0
    } else {
        1
    }
}

fn sframe_command(c: SframeCommand) -> i32 {
    let result = match c {
        SframeCommand::Vectors { file } => {
            let mut out = std::io::stdout();
            return match sframe::run_file(&file, &mut out) {
                Ok(summary) if summary.all_passed() => 0,
                Ok(_) => 1,
                Err(e) => {
                    eprintln!("e2ee-client: {e}");
                    2
                }
            };
        }
        SframeCommand::Seal {
            suite,
            base_key,
            kid,
            ctr,
            metadata,
            plaintext_hex,
        } => sframe::seal_hex(
            suite,
            &base_key,
            kid,
            ctr,
            metadata.as_deref(),
            &plaintext_hex,
        ),
        SframeCommand::Open {
            suite,
            base_key,
            metadata,
            ciphertext_hex,
        } => sframe::open_hex(suite, &base_key, metadata.as_deref(), &ciphertext_hex),
    };
    match result {
        Ok(hex) => {
            println!("{hex}");
            0
        }
        Err(e) => {
            eprintln!("e2ee-client: {e}");
            1
        }
    }
}

fn parse_scheme(s: &str) -> Result<E2eeScheme, String> {
    match s {
        "x25519" | "x25519-commit-reveal" => Ok(E2eeScheme::X25519),
        "mls" => Ok(E2eeScheme::Mls),
        other => Err(format!("unknown scheme `{other}`: x25519 or mls")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relays(args: &[&str]) -> Vec<String> {
        let mut argv = vec!["e2ee-client", "call", "--token", "t"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Call(a) => a.relay,
            c => panic!("not a call: {c:?}"),
        }
    }

    #[test]
    fn relay_is_repeatable_in_order_with_the_default_when_none_is_given() {
        assert_eq!(relays(&[]), ["ws://127.0.0.1:7400/v1/signal"]);
        assert_eq!(
            relays(&["--relay", "ws://a/v1/signal", "--relay", "ws://b/v1/signal"]),
            ["ws://a/v1/signal", "ws://b/v1/signal"]
        );
    }
}
