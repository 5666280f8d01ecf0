//! A participant that stops reading while another floods the call with chat. Another's
//! flood is held to the sender's broadcast budget, so the reader keeps its place; a
//! reader is cut off only for its own slowness: when it does not read what the budget
//! lets through while another reader of the same flood does. In a test binary of its
//! own: it measures this process's memory, which other tests would disturb (and its two
//! tests take turns for the same reason).

use blindrelay::config::Config;
use blindrelay::{Relay, RelayOptions};
use blindrelay_protocol::signal::{ClientMessage, ErrorCode, ServerMessage};
use blindrelay_tests::*;
use blindrelay_transport::DtlsIdentity;
use e2ee_client::signal::Signal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The tests measure this process's memory: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// This process's resident set, in bytes (the relay runs in it).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("statm has resident pages");
    pages * 4096
}

fn flood_config() -> Config {
    let mut cfg = loopback_config();
    // Only the broadcast budget limits the flood, not the message rate.
    cfg.signal.messages_per_second = 100_000;
    cfg.signal.message_burst = 100_000;
    // These participants never set up media: keep them through the flood.
    cfg.ice.connect_timeout = Duration::from_secs(120);
    cfg.ice.consent_timeout = Duration::from_secs(120);
    cfg
}

/// `users` join call "flood" in order; their connections and public ids.
async fn join_all(relay: &Relay, cfg: &Config, users: &[&str]) -> (Vec<Signal>, Vec<String>) {
    let url = relay.signal_url();
    let id = DtlsIdentity::generate().expect("identity");
    let (mut sigs, mut ids) = (Vec::new(), Vec::new());
    for (n, user) in users.iter().enumerate() {
        let mut sig = hello(&url, &token(cfg, user, Some("flood"), "user")).await;
        sig.send(&ClientMessage::Join {
            call: "flood".into(),
            e2ee_enabled: false,
            offer_sdp: offer(&id, "floodufrag", n as u32),
            e2ee_scheme: Default::default(),
        })
        .await
        .expect("join");
        let me = loop {
            if let ServerMessage::Joined { participant, .. } = next_reply(&mut sig).await {
                break participant;
            }
        };
        sigs.push(sig);
        ids.push(me);
    }
    (sigs, ids)
}

/// Count a reply to the flooder: a `rate_limited` refusal for the broadcast budget, or
/// anything else but an error.
fn refusal(m: ServerMessage) -> u64 {
    match m {
        ServerMessage::Error {
            code: ErrorCode::RateLimited,
            message,
        } => {
            assert!(message.contains("broadcast budget"), "{message}");
            1
        }
        ServerMessage::Error { code, message } => panic!("flooder got {code:?}: {message}"),
        _ => 0,
    }
}

/// Largest chats as fast as the flooder can send them, `count` of them or until `stop`;
/// it reads its refusals meanwhile. Then one request, whose answer comes after every
/// refusal. Returns the flooder, (sent, refused).
async fn flood(
    mut flooder: Signal,
    body: String,
    count: u64,
    stop: Arc<AtomicBool>,
) -> (Signal, u64, u64) {
    let (mut sent, mut refused) = (0u64, 0u64);
    while sent < count && !stop.load(Ordering::Relaxed) {
        flooder
            .send(&ClientMessage::Chat { body: body.clone() })
            .await
            .expect("chat");
        sent += 1;
        // What has arrived, without waiting (`recv` is cancel-safe).
        while let Ok(m) = tokio::time::timeout(Duration::ZERO, flooder.recv()).await {
            refused += refusal(m.expect("the flooder stays connected"));
        }
    }
    flooder
        .send(&ClientMessage::Feature {
            name: "record".into(),
            arg: None,
        })
        .await
        .expect("send");
    loop {
        match next_reply(&mut flooder).await {
            ServerMessage::FeatureResult { .. } => break,
            m => refused += refusal(m),
        }
    }
    (flooder, sent, refused)
}

/// Chats `sig` receives until `flooder` leaves (panics if it is cut off).
async fn chats_until_left(sig: &mut Signal, flooder: &str) -> u64 {
    let mut n = 0;
    loop {
        match next_reply(sig).await {
            ServerMessage::Chat { .. } => n += 1,
            ServerMessage::ParticipantLeft { participant, .. } if participant == flooder => {
                return n
            }
            _ => {}
        }
    }
}

/// With the default budget, a flood into a call whose other member never reads is
/// refused past the budget and counted; the reader keeps its place, the relay's memory
/// stays bounded, and what it holds for the reader is only what the budget let through:
/// when it reads at last, it gets exactly the accepted chats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_rate_limited_and_a_reader_that_stops_keeps_its_place() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cfg = flood_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let (mut sigs, ids) = join_all(&relay, &cfg, &["sleeper", "flooder"]).await;
    let flooder = sigs.pop().expect("two joined");
    let mut sleeper = sigs.pop().expect("two joined");
    let rss_before = rss_bytes();
    let body = "x".repeat(cfg.signal.max_chat_bytes);
    // 4,000 of the largest chats (33 MB) to a participant that does not read.
    let started = tokio::time::Instant::now();
    let (mut flooder, sent, refused) = flood(
        flooder,
        body.clone(),
        4000,
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(sent, 4000);
    let accepted = sent - refused;
    let wire = serde_json::to_string(&ServerMessage::Chat {
        from: ids[1].clone(),
        body,
    })
    .expect("serializes")
    .len() as f64;
    // One other participant: each chat cost its wire size once.
    let allowed = (cfg.signal.broadcast_burst_bytes as f64
        + cfg.signal.broadcast_bytes_per_second as f64 * elapsed.as_secs_f64())
        / wire;
    assert!(
        accepted >= 1 && accepted as f64 <= allowed.floor() + 1.0,
        "{accepted} accepted, the budget allows {allowed:.1}"
    );
    let m = scrape(&relay).await;
    assert_eq!(
        metric(
            &m,
            "blindrelay_rate_limited_total{limit=\"broadcast_bytes\"}"
        ),
        refused as f64
    );
    // No connection was closed at all (the family appears with the first close); the
    // participants' count and the readers' own view say the same.
    assert_eq!(
        series(
            &m,
            "blindrelay_signalling_closed_total{reason=\"slow_reader\"}"
        ),
        None
    );
    assert_eq!(metric(&m, "blindrelay_participants{role=\"user\"}"), 2.0);
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(
        grown < 64 << 20,
        "RSS grew by {} MB under the flood",
        grown >> 20
    );
    // The sleeper reads at last: exactly the accepted chats, then the flooder's leave.
    flooder.send(&ClientMessage::Leave).await.expect("leave");
    assert_eq!(chats_until_left(&mut sleeper, &ids[1]).await, accepted);
    relay.shutdown().await;
}

/// With a budget that lets 1 MiB a second reach each of two readers, one that reads
/// keeps up and stays; one that stops reading is cut off at `signal.max_outbound_bytes`
/// (its own slowness), the relay's memory stays bounded, and the flooder is still
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_is_cut_off_for_its_own_slowness() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut cfg = flood_config();
    cfg.signal.broadcast_bytes_per_second = 2 << 20;
    cfg.signal.broadcast_burst_bytes = cfg.signal.max_outbound_bytes as u64 / 2;
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let (mut sigs, ids) = join_all(&relay, &cfg, &["sleeper", "reader", "flooder"]).await;
    let flooder = sigs.pop().expect("three joined");
    let mut reader = sigs.pop().expect("three joined");
    let sleeper = sigs.pop().expect("three joined");
    let flooder_id = ids[2].clone();
    let reading = tokio::spawn(async move {
        let n = chats_until_left(&mut reader, &flooder_id).await;
        (reader, n)
    });
    let rss_before = rss_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = tokio::spawn(flood(
        flooder,
        "x".repeat(cfg.signal.max_chat_bytes),
        u64::MAX,
        stop.clone(),
    ));
    let m = await_metrics(
        &relay,
        Duration::from_secs(40),
        "slow reader cut off",
        |m| {
            // The `slow_reader` series appears with the first such close.
            series(
                m,
                "blindrelay_signalling_closed_total{reason=\"slow_reader\"}",
            )
            .is_some_and(|v| v >= 1.0)
                && metric(m, "blindrelay_participants{role=\"user\"}") == 2.0
                // The removal is counted by the driver after the close it follows; its
                // series appears with that count (asserted exactly below).
                && series(
                    m,
                    "blindrelay_participants_removed_total{reason=\"signalling_lost\"}",
                )
                .is_some()
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (mut flooder, sent, refused) = flooding.await.expect("flood task");
    assert_eq!(
        metric(
            &m,
            "blindrelay_participants_removed_total{reason=\"signalling_lost\"}"
        ),
        1.0
    );
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(
        grown < 64 << 20,
        "RSS grew by {} MB under the flood",
        grown >> 20
    );
    // The flooder is still served (its request above was answered) and the reader is
    // still there: it got every accepted chat.
    flooder.send(&ClientMessage::Leave).await.expect("leave");
    let (_reader, got) = tokio::time::timeout(Duration::from_secs(20), reading)
        .await
        .expect("reader done in time")
        .expect("reader task");
    assert_eq!(got, sent - refused);
    let m = scrape(&relay).await;
    assert_eq!(
        metric(
            &m,
            "blindrelay_signalling_closed_total{reason=\"slow_reader\"}"
        ),
        1.0
    );
    drop(sleeper);
    relay.shutdown().await;
}
