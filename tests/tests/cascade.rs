//! One call across several relay nodes (a cascade): real relays in cluster mode with a
//! real `redis-server` as the directory and real QUIC links between them, and e2ee-clients
//! joining through different nodes. Every member must open every other's frames, agree on
//! the group code epoch by epoch, and every node's capture must audit blind.

use blindrelay::config::Config;
use blindrelay::Relay;
use blindrelay_protocol::signal::{ClientMessage, E2eeScheme, ErrorCode, ServerMessage};
use blindrelay_tests::*;
use e2ee_client::audit::audit_file;
use e2ee_client::call::{run_call, CallOptions, CallSummary};
use std::time::Duration;

const CANARY: &str = "CANARY-cascade";

fn member(
    node: &Relay,
    cfg: &Config,
    user: &str,
    call: &str,
    scheme: Option<E2eeScheme>,
) -> CallOptions {
    CallOptions {
        relay: node.signal_url(),
        token: token(cfg, user, Some(call), "user"),
        call: call.into(),
        duration: Duration::from_secs(8),
        video_kbps: 300,
        e2ee: scheme.is_some(),
        e2ee_scheme: scheme.unwrap_or_default(),
        canary: Some(CANARY.into()),
        name: user.into(),
        ..Default::default()
    }
}

fn keyed(s: &CallSummary, who: &str) {
    assert!(s.error.is_none(), "{who}: {:?}", s.error);
    assert!(s.e2ee_error.is_none(), "{who}: {:?}", s.e2ee_error);
    assert!(s.e2ee, "{who}: not keyed: {s:?}");
    assert_eq!(s.decrypt_failures, 0, "{who}: {s:?}");
    assert_eq!(s.frames_corrupt, 0, "{who}");
}

/// Every node's capture audits blind: no clear media, no canary.
async fn captures_blind(c: &Cluster) {
    for (n, path) in c.nodes.iter().zip(&c.captures) {
        settle_capture(n).await;
        let report = audit_file(path, Some(CANARY.as_bytes())).expect("a readable capture");
        let table = report.table();
        assert!(report.blind, "{}: {table}", path.display());
        assert_eq!(report.canary_packets(), 0, "{table}");
        assert!(
            !report.streams.is_empty(),
            "{}: nothing captured",
            path.display()
        );
    }
}

/// Six e2ee-clients in one MLS call, two through each of three nodes: each opens more
/// than 100 frames from each other with no failure, all agree on the code in every
/// epoch, one epoch has all six, media crossed the links, and each node audits blind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mls_call_spans_three_nodes() {
    logs();
    let c = Cluster::start(&["a", "b", "c"]).await;
    let users = ["ann", "ben", "cat", "dan", "eve", "fay"];
    let opts: Vec<CallOptions> = users
        .iter()
        .enumerate()
        .map(|(i, u)| member(&c.nodes[i % 3], &c.cfg, u, "span3", Some(E2eeScheme::Mls)))
        .collect();
    // While the call runs, the directory lists its owner and each member's node.
    let url = c.redis.url.clone();
    let listed = eventually(
        Duration::from_secs(8),
        "cluster status lists the call",
        || {
            let url = url.clone();
            async move {
                let now = blindrelay::cluster::unix_ms();
                let text = blindrelay::cluster::status(&url, now).await.ok()?;
                let line = text
                    .lines()
                    .find(|l| l.trim_start().starts_with("span3 "))?;
                ["@a", "@b", "@c"]
                    .iter()
                    .all(|n| line.matches(n).count() == 2)
                    .then(|| text.clone())
            }
        },
    );
    let (s, listed) = tokio::join!(
        futures_util::future::join_all(opts.iter().map(run_call)),
        listed
    );
    assert!(listed.contains("calls: 1"), "{listed}");
    assert!(listed.contains("members 6"), "{listed}");
    for (i, a) in s.iter().enumerate() {
        keyed(a, users[i]);
        for (j, b) in s.iter().enumerate() {
            if i == j {
                continue;
            }
            let id = b.participant.as_deref().unwrap_or("?");
            let n = a.frames_decrypted_from.get(id).copied().unwrap_or(0);
            assert!(
                n > 100,
                "{} opened {n} frames from {}: {:?}",
                users[i],
                users[j],
                a.frames_decrypted_from
            );
        }
    }
    for a in &s {
        for b in &s {
            for (epoch, code) in &a.epoch_codes {
                if let Some(other) = b.epoch_codes.get(epoch) {
                    assert_eq!(code, other, "epoch {epoch}");
                }
            }
        }
    }
    let all_in = s[0]
        .epoch_codes
        .keys()
        .any(|e| s.iter().all(|x| x.epoch_codes.contains_key(e)));
    assert!(
        all_in,
        "no epoch with all six: {:?}",
        s.iter().map(|x| &x.epoch_codes).collect::<Vec<_>>()
    );
    for n in &c.nodes {
        let m = scrape(n).await;
        let sent: f64 = m
            .iter()
            .filter(|(k, _)| {
                k.starts_with("blindrelay_cluster_link_datagrams_total{")
                    && k.contains("direction=\"sent\"")
            })
            .map(|(_, v)| v)
            .sum();
        assert!(sent > 1000.0, "a node sent {sent} datagrams on its links");
    }
    captures_blind(&c).await;
    c.stop().await;
}

/// A 1:1 E2EE call and a standard call, each with its two people on two nodes: the 1:1
/// pair agrees on one code and opens each other's frames; the standard pair gets media.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_and_standard_calls_span_two_nodes() {
    logs();
    let c = Cluster::start(&["a", "b"]).await;
    let one = [
        member(&c.nodes[0], &c.cfg, "ann", "pair", Some(E2eeScheme::X25519)),
        member(&c.nodes[1], &c.cfg, "ben", "pair", Some(E2eeScheme::X25519)),
    ];
    let std_call = [
        member(&c.nodes[1], &c.cfg, "cat", "plain", None),
        member(&c.nodes[0], &c.cfg, "dan", "plain", None),
    ];
    let runs = one.iter().chain(std_call.iter()).map(run_call);
    let s: Vec<CallSummary> = futures_util::future::join_all(runs).await;
    for (i, who) in ["ann", "ben"].iter().enumerate() {
        keyed(&s[i], who);
        assert!(
            s[i].frames_decrypted > 100,
            "{who}: {:?}",
            s[i].frames_decrypted
        );
    }
    assert_eq!(s[0].verification_code, s[1].verification_code);
    assert!(s[0].verification_code.is_some());
    for (i, who) in ["cat", "dan"].iter().enumerate() {
        let x = &s[2 + i];
        assert!(x.error.is_none(), "{who}: {:?}", x.error);
        assert!(!x.e2ee, "{who}");
        assert!(x.frames_received > 100, "{who}: {}", x.frames_received);
    }
    c.stop().await;
}

/// Simulcast across a node link: Ann sends three layers through node a; Ben (who asked
/// for at most 120 lines) and Cat (no limit) receive through node b. Every layer crosses
/// the link as it came, and b chooses each receiver's layer as a would: Ben's frames are
/// 120 lines tall, Cat's 480, all of them open and check byte for byte, and both
/// captures audit blind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_layers_are_chosen_per_receiver_on_the_far_node() {
    logs();
    let c = Cluster::start(&["a", "b"]).await;
    let call = "layers";
    let mls = Some(E2eeScheme::Mls);
    let ann = CallOptions {
        simulcast: 3,
        video_kbps: 800,
        web_peers: true,
        ..member(&c.nodes[0], &c.cfg, "ann", call, mls)
    };
    let receiver = |user: &str, max_height: Option<u32>| CallOptions {
        video: false,
        video_kbps: 0,
        web_peers: true,
        max_height,
        duration: Duration::from_secs(7),
        ..member(&c.nodes[1], &c.cfg, user, call, mls)
    };
    let (ben, cat) = (receiver("ben", Some(120)), receiver("cat", None));
    let (a, b, x) = tokio::join!(run_call(&ann), run_call(&ben), run_call(&cat));
    keyed(&a, "ann");
    for (s, height, who) in [(&b, 120u16, "ben"), (&x, 480, "cat")] {
        keyed(s, who);
        mostly_at_height(s, height, who);
    }
    captures_blind(&c).await;
    c.stop().await;
}

/// A client that floods its edge with messages is limited there, at the rate the owner's
/// plane would hold it to: it is told `rate_limited`, what crosses the link stays within
/// its rate, and the link (every call between the two nodes) stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_its_edge_is_rate_limited_there_and_the_link_stays_up() {
    logs();
    let c = Cluster::start(&["a", "b"]).await;
    let call = "span-flood";
    let tx = token(&c.cfg, "xan", Some(call), "user");
    let ty = token(&c.cfg, "yul", Some(call), "user");
    let _x = raw_join(&c.nodes[0].signal_url(), &tx, call).await;
    let mut y = raw_join(&c.nodes[1].signal_url(), &ty, call).await;
    let (per_second, burst) = (c.cfg.signal.messages_per_second, c.cfg.signal.message_burst);
    let flood = 3 * burst as usize;
    let started = std::time::Instant::now();
    for i in 0..flood {
        y.sig
            .send(&ClientMessage::Chat {
                body: format!("flood {i}"),
            })
            .await
            .expect("send");
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Messages come back in order: wait for the edge's refusal among them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, y.sig.recv()).await {
            Ok(Ok(ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            })) => break,
            Ok(Ok(_)) => continue,
            other => panic!("no rate_limited from the edge: {other:?}"),
        }
    }
    // The edge refused (and counted) what went over the rate; the owner's plane, which
    // the rest reached, had (next to) nothing to limit: its bucket starts a moment after
    // the edge's.
    let most = f64::from(burst) + f64::from(per_second) * (elapsed + 1.0);
    assert!(
        (flood as f64) > most,
        "the flood ({flood}) outruns the rate ({most})"
    );
    let series = "blindrelay_rate_limited_total{limit=\"messages\"}";
    let edge = metric_or_zero(&scrape(&c.nodes[1]).await, series);
    assert!(edge > 0.0, "the edge refused none of {flood}");
    let owner = metric_or_zero(&scrape(&c.nodes[0]).await, series);
    assert!(
        owner <= 1.0,
        "the owner refused {owner}: the flood crossed the link"
    );
    for n in &c.nodes {
        let m = scrape(n).await;
        assert_eq!(
            metric(&m, "blindrelay_cluster_links"),
            1.0,
            "the link is up"
        );
    }
    c.stop().await;
}
