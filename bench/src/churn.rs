//! `churn`: one connection joins and leaves a call over and over, each time with many
//! tracks, while another member of the call reads its signalling but never answers an
//! offer (issue 19). Meanwhile fresh connections say hello, unrelated to the call; their
//! latency shows how busy the relay's control task is. The relay's CPU and RSS come from
//! /proc when its pid is given.

use crate::procstat;
use anyhow::{bail, Context, Result};
use blindrelay_protocol::sdp::{self, Fingerprint, OfferParams};
use blindrelay_protocol::signal::{ClientMessage, ServerMessage};
use e2ee_client::signal::Signal;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct ChurnArgs {
    pub relay: String,
    pub api_secret: String,
    pub cycles: usize,
    pub audio_tracks: usize,
    pub video_tracks: usize,
    /// Messages per second the churning connection sends (the relay's default limit is
    /// 50/s with a burst of 200).
    pub message_rate: f64,
    pub relay_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct ChurnReport {
    pub cycles: usize,
    pub m_lines_per_join: usize,
    pub joins_accepted: usize,
    pub joins_refused: usize,
    pub join_bytes: usize,
    pub seconds: f64,
    pub hellos: usize,
    pub hello_p50_ms: f64,
    pub hello_p90_ms: f64,
    pub hello_max_ms: f64,
    /// Median of the last tenth of the hellos: rising if the plane's work grows.
    pub hello_last_tenth_p50_ms: f64,
    pub relay_cpu_pct: Option<f64>,
    pub relay_rss_before_mb: Option<f64>,
    pub relay_rss_after_mb: Option<f64>,
    /// Offers the silent member received (it answers none).
    pub silent_offers: usize,
}

fn token(secret: &str, user: &str) -> Result<String> {
    Ok(blindrelay::token::issue(
        secret,
        user,
        "churn",
        "user",
        None,
        Duration::from_secs(3600),
    )?)
}

async fn hello(url: &str, token: &str) -> Result<Signal> {
    let mut sig = Signal::connect(url).await?;
    sig.send(&ClientMessage::Hello {
        token: token.into(),
    })
    .await?;
    match sig.recv().await? {
        ServerMessage::Capabilities { .. } => Ok(sig),
        m => bail!("expected capabilities, got {m:?}"),
    }
}

/// An offer with `audio` + `video` m-lines, ICE and DTLS parameters at session level
/// and one SSRC per line: the smallest join per m-line (880 lines are ~57 KB).
fn offer(audio: usize, video: usize, cycle: usize) -> String {
    let fp = Fingerprint { sha256: [9; 32] };
    if audio == 1 && video <= 1 {
        return sdp::build_offer(&OfferParams {
            ice_ufrag: "churn",
            ice_pwd: "churnpasswordchurnpassword",
            fingerprint: &fp,
            audio_ssrc: 1_000_000 + cycle as u32,
            video_ssrc: 2_000_000 + cycle as u32,
            cname: "churn",
            session_id: cycle as u64,
        });
    }
    let mut o = format!(
        "v=0\r\no=- {cycle} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-ufrag:churn\r\n\
         a=ice-pwd:churnpasswordchurnpassword\r\na=fingerprint:{}\r\na=rtcp-mux\r\n",
        fp.to_sdp_value()
    );
    for i in 0..audio + video {
        let (m, rtpmap) = if i < audio {
            (
                "audio 9 UDP/TLS/RTP/SAVPF 111",
                "a=rtpmap:111 opus/48000/2\r\n",
            )
        } else {
            ("video 9 UDP/TLS/RTP/SAVPF 96", "a=rtpmap:96 VP8/90000\r\n")
        };
        // The codec once per kind is enough for the relay's numbering.
        let rtpmap = if i == 0 || i == audio { rtpmap } else { "" };
        o += &format!("m={m}\r\na=mid:{i}\r\n{rtpmap}a=ssrc:{}\r\n", 1000 + i);
    }
    o
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn run(a: ChurnArgs) -> Result<ChurnReport> {
    let url = a.relay.clone();
    let before = a.relay_pid.and_then(|p| procstat::sample(&p.to_string()));

    // The silent member: joins, reads everything, answers nothing.
    let mut silent = hello(&url, &token(&a.api_secret, "silent")?).await?;
    silent
        .send(&ClientMessage::Join {
            call: "churn".into(),
            e2ee_enabled: false,
            offer_sdp: offer(1, 1, 0),
            e2ee_scheme: Default::default(),
        })
        .await?;
    match silent.recv().await? {
        ServerMessage::Joined { .. } => {}
        m => bail!("silent member: expected joined, got {m:?}"),
    }
    let offers = Arc::new(AtomicUsize::new(0));
    let counted = offers.clone();
    let silent_task = tokio::spawn(async move {
        while let Ok(m) = silent.recv().await {
            if matches!(m, ServerMessage::Offer { .. }) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    // Unrelated hellos, one at a time, until the churn ends.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let hello_url = url.clone();
    let hello_token = token(&a.api_secret, "bystander")?;
    let hellos = tokio::spawn(async move {
        let mut lat = Vec::new();
        while !*stop_rx.borrow() {
            let t = Instant::now();
            match hello(&hello_url, &hello_token).await {
                Ok(mut s) => {
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    s.close().await;
                }
                Err(e) => eprintln!("hello failed: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop_rx.changed() => {}
            }
        }
        lat
    });

    let mut churner = hello(&url, &token(&a.api_secret, "churner")?).await?;
    let gap = Duration::from_secs_f64(1.0 / a.message_rate);
    let started = Instant::now();
    let (mut accepted, mut refused, mut join_bytes) = (0, 0, 0);
    for cycle in 0..a.cycles {
        let join = ClientMessage::Join {
            call: "churn".into(),
            e2ee_enabled: false,
            offer_sdp: offer(a.audio_tracks, a.video_tracks, cycle + 1),
            e2ee_scheme: Default::default(),
        };
        join_bytes = serde_json::to_string(&join)?.len();
        churner.send(&join).await?;
        let joined = loop {
            match churner.recv().await.context("churner: relay closed")? {
                ServerMessage::Joined { .. } => break true,
                ServerMessage::Error { code, message } => {
                    if cycle == 0 {
                        eprintln!("join refused: {} {message}", code.as_str());
                    }
                    break false;
                }
                _ => continue,
            }
        };
        tokio::time::sleep(gap).await;
        if joined {
            accepted += 1;
            churner.send(&ClientMessage::Leave).await?;
            tokio::time::sleep(gap).await;
        } else {
            refused += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = a.relay_pid.and_then(|p| procstat::sample(&p.to_string()));
    let _ = stop_tx.send(true);
    let mut lat = hellos.await?;
    let tail = lat.len() - lat.len() / 10;
    let mut last: Vec<f64> = lat[tail.min(lat.len().saturating_sub(1))..].to_vec();
    last.sort_by(f64::total_cmp);
    lat.sort_by(f64::total_cmp);
    churner.close().await;
    silent_task.abort();
    let silent_offers = offers.load(Ordering::Relaxed);
    let mb = |s: &Option<procstat::Sample>| s.map(|s| s.rss_bytes as f64 / 1e6);
    Ok(ChurnReport {
        cycles: a.cycles,
        m_lines_per_join: a.audio_tracks + a.video_tracks,
        joins_accepted: accepted,
        joins_refused: refused,
        join_bytes,
        seconds,
        hellos: lat.len(),
        hello_p50_ms: percentile(&lat, 0.5),
        hello_p90_ms: percentile(&lat, 0.9),
        hello_max_ms: lat.last().copied().unwrap_or(0.0),
        hello_last_tenth_p50_ms: percentile(&last, 0.5),
        relay_cpu_pct: before
            .zip(after)
            .map(|(b, a)| procstat::cpu_percent(&b, &a)),
        relay_rss_before_mb: mb(&before),
        relay_rss_after_mb: mb(&after),
        silent_offers,
    })
}
