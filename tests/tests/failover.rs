//! e2ee-client fails over across relays: two standalone `blindrelay` processes on loopback
//! (each on its own ports, the same token secret), clients given both. Once all decrypt
//! each other through the first relay it is killed with SIGKILL; every client rejoins
//! through the second as a fresh member, with new keys, and decrypts the others again. A
//! refusal is never taken to the next relay.
//!
//! The relays are the real binary (`target/debug/blindrelay`, built by `cargo test
//! --workspace`; `BLINDRELAY_BIN` names another), so the kill is a real process dying.
//! The clients run in this process (watched through their `Progress`), except in the
//! command-line test, which runs `target/debug/e2ee-client` (or `E2EE_CLIENT_BIN`).

use blindrelay_protocol::signal::E2eeScheme;
use blindrelay_tests::*;
use e2ee_client::call::{run_call, CallOptions, CallSummary};
use e2ee_client::session::Progress;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

/// Wait up to `limit` until every client shows one and the same code; returns it.
async fn same_code(rxs: &mut [watch::Receiver<Progress>], limit: Duration) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let codes: Vec<Option<String>> = rxs
            .iter_mut()
            .map(|rx| rx.borrow_and_update().verification_code.clone())
            .collect();
        if let Some(Some(c)) = codes.first() {
            if codes.iter().all(|x| x.as_ref() == Some(c)) {
                return c.clone();
            }
        }
        // Until any client's progress changes again.
        let changed =
            futures_util::future::select_all(rxs.iter_mut().map(|rx| Box::pin(rx.changed())));
        assert!(
            tokio::time::timeout_at(deadline, changed).await.is_ok(),
            "no common code in {limit:?}: {codes:?}"
        );
    }
}

/// Run every client to its end (on its own task, so the test goes on meanwhile).
fn run_all(opts: Vec<CallOptions>) -> tokio::task::JoinHandle<Vec<CallSummary>> {
    tokio::spawn(async move { futures_util::future::join_all(opts.iter().map(run_call)).await })
}

fn check(s: &CallSummary, who: &str) {
    assert!(s.error.is_none(), "{who}: {:?}", s.error);
    assert!(s.e2ee_error.is_none(), "{who}: {:?}", s.e2ee_error);
    assert_eq!(s.decrypt_failures, 0, "{who}: {:?}", s.decrypt_failures_by);
    assert_eq!(s.frames_corrupt, 0, "{who}");
    assert_eq!(s.reconnects, 1, "{who}: {s:?}");
    assert_eq!(s.participant_ids.len(), 2, "{who}: {:?}", s.participant_ids);
    assert_eq!(s.participant.as_ref(), s.participant_ids.last(), "{who}");
}

/// Three members of one MLS call decrypt each other through relay A; A is killed; all
/// three rejoin through B, form the group again, and decrypt each other again with one
/// code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mls_call_moves_to_the_next_relay_when_its_relay_dies() {
    let mut a = RelayProcess::start("mls-a", None).await;
    let b = RelayProcess::start("mls-b", None).await;
    let (opts, mut rxs): (Vec<CallOptions>, Vec<_>) = ["ann", "ben", "cat"]
        .iter()
        .map(|u| {
            let (mut o, rx) = client(u, "fo-mls", &a, &b, 20);
            o.e2ee_scheme = E2eeScheme::Mls;
            (o, rx)
        })
        .unzip();
    let runs = run_all(opts);
    all(
        &mut rxs,
        Duration::from_secs(20),
        "all decrypt both others on A",
        |p| p.in_call && opened_from_each(p, 2, 20),
    )
    .await;
    let before: Vec<Progress> = rxs.iter().map(|rx| rx.borrow().clone()).collect();
    for p in &before {
        assert_eq!(p.relay, a.url);
    }
    let killed = Instant::now();
    a.kill().await;
    all(
        &mut rxs,
        Duration::from_secs(15),
        "all decrypt both others on B",
        |p| p.reconnects == 1 && p.in_call && p.relay == b.url && opened_from_each(p, 2, 1),
    )
    .await;
    let back = killed.elapsed();
    // The group on B settles with all three in it: one code on every member.
    let code = same_code(&mut rxs, Duration::from_secs(10)).await;
    all(
        &mut rxs,
        Duration::from_secs(10),
        "all open 20 frames from each on B",
        |p| opened_from_each(p, 2, 20),
    )
    .await;
    let s = runs.await.expect("client tasks");
    eprintln!("rejoined through B and decrypting both others {back:?} after the kill");
    let names = ["ann", "ben", "cat"];
    for (i, x) in s.iter().enumerate() {
        check(x, names[i]);
        assert_eq!(x.relay.as_deref(), Some(b.url.as_str()));
        assert_eq!(x.e2ee_scheme.as_deref(), Some("mls"));
        for (j, y) in s.iter().enumerate() {
            if i == j {
                continue;
            }
            let (old, new) = (&y.participant_ids[0], &y.participant_ids[1]);
            assert_ne!(old, new, "a rejoin is a new participant");
            let n = x.frames_decrypted_from.get(new).copied().unwrap_or(0);
            assert!(
                n > 20,
                "{} opened {n} frames from {}'s new id {new}: {:?}",
                names[i],
                names[j],
                x.frames_decrypted_from
            );
            assert!(
                x.frames_decrypted_from.get(old).copied().unwrap_or(0) > 0,
                "{}: nothing from {}'s first id",
                names[i],
                names[j]
            );
            for id in [old, new] {
                let gap = x.max_gap_ms_from.get(id);
                assert!(
                    gap.is_some_and(|g| g.is_finite() && *g >= 0.0),
                    "{}: no gap for {id}: {:?}",
                    names[i],
                    x.max_gap_ms_from
                );
            }
        }
        eprintln!("{}: max_gap_ms_from {:?}", names[i], x.max_gap_ms_from);
        // The lost session's group is kept apart from the new one.
        assert_eq!(x.earlier_sessions.len(), 1);
        assert_eq!(x.earlier_sessions[0].relay, a.url);
        assert!(!x.earlier_sessions[0].epoch_codes.is_empty());
    }
    // One group on B: the code all three showed once it settled is the code of the last
    // epoch all three were keyed in, with all three as members; epoch by epoch the same
    // codes, and none of them is a code of the group on A. (Members leave at slightly
    // different times at the call's end, so the very last epochs differ.)
    let shared = s[0]
        .epoch_codes
        .keys()
        .copied()
        .filter(|e| s.iter().all(|x| x.epoch_codes.contains_key(e)))
        .max()
        .expect("an epoch on B with all three");
    for x in &s {
        assert_eq!(x.epoch_codes.get(&shared), Some(&code));
        assert_eq!(
            x.epoch_members.get(&shared).map(Vec::len),
            Some(3),
            "{:?}",
            x.epoch_members
        );
        for y in &s {
            for (e, c) in &x.epoch_codes {
                if let Some(o) = y.epoch_codes.get(e) {
                    assert_eq!(c, o, "epoch {e}");
                }
            }
            let on_a: Vec<&String> = y.earlier_sessions[0].epoch_codes.values().collect();
            assert!(x.epoch_codes.values().all(|c| !on_a.contains(&c)));
        }
    }
}

/// A one-to-one call: both clients rejoin through B after A dies, agree new keys, and
/// show a new code, the same on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_to_one_call_rekeys_on_the_next_relay_with_a_new_code() {
    let mut a = RelayProcess::start("x-a", None).await;
    let b = RelayProcess::start("x-b", None).await;
    let (opts, mut rxs): (Vec<CallOptions>, Vec<_>) = ["alice", "bob"]
        .iter()
        .map(|u| client(u, "fo-1to1", &a, &b, 15))
        .unzip();
    let runs = run_all(opts);
    all(
        &mut rxs,
        Duration::from_secs(20),
        "both decrypt on A",
        |p| p.in_call && p.verification_code.is_some() && opened_from_each(p, 1, 20),
    )
    .await;
    let before: Vec<Option<String>> = rxs
        .iter()
        .map(|rx| rx.borrow().verification_code.clone())
        .collect();
    assert_eq!(before[0], before[1]);
    let killed = Instant::now();
    a.kill().await;
    all(
        &mut rxs,
        Duration::from_secs(15),
        "both decrypt on B",
        |p| p.reconnects == 1 && p.in_call && p.relay == b.url && opened_from_each(p, 1, 1),
    )
    .await;
    eprintln!(
        "rejoined through B and decrypting {:?} after the kill",
        killed.elapsed()
    );
    let s = runs.await.expect("client tasks");
    for (x, who) in s.iter().zip(["alice", "bob"]) {
        check(x, who);
        assert_eq!(x.e2ee_scheme.as_deref(), Some("x25519-commit-reveal"));
        assert_eq!(x.codes.len(), 2, "{who}: {:?}", x.codes);
        assert_eq!(Some(&x.codes[0]), before[0].as_ref(), "{who}");
        assert_ne!(x.codes[0], x.codes[1], "{who}: new keys, a new code");
        assert_eq!(x.verification_code.as_ref(), Some(&x.codes[1]));
        assert!(x.frames_decrypted > 50, "{who}: {}", x.frames_decrypted);
        eprintln!("{who}: max_gap_ms_from {:?}", x.max_gap_ms_from);
    }
    assert_eq!(s[0].codes, s[1].codes);
    // Each saw the other's frames under both of its ids.
    for (x, y) in [(&s[0], &s[1]), (&s[1], &s[0])] {
        for id in &y.participant_ids {
            assert!(
                x.max_gap_ms_from.contains_key(id),
                "{id}: {:?}",
                x.max_gap_ms_from
            );
        }
    }
}

/// Scrape a relay process's metrics.
async fn metrics_of(r: &RelayProcess) -> HashMap<String, f64> {
    scrape_at(r.admin).await
}

/// A token relay A refuses: the client ends there with the error, and never tries B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_by_the_first_relay_is_not_taken_to_the_next() {
    let a = RelayProcess::start("ref-a", Some("a-different-secret-for-relay-a")).await;
    let b = RelayProcess::start("ref-b", None).await;
    let (o, _rx) = client("alice", "fo-refused", &a, &b, 30);
    let started = Instant::now();
    let s = run_call(&o).await;
    assert_eq!(
        s.error.as_ref().map(|e| e.code.as_str()),
        Some("unauthorized"),
        "{s:?}"
    );
    assert!(!s.success(), "the CLI exits non-zero");
    assert_eq!(s.reconnects, 0);
    assert_eq!(s.relay.as_deref(), Some(a.url.as_str()));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it did not linger"
    );
    // A refused it (the metric exists); B never saw a connection.
    let ma = metrics_of(&a).await;
    assert_eq!(
        metric(
            &ma,
            "blindrelay_signalling_errors_total{code=\"unauthorized\"}"
        ),
        1.0
    );
    let mb = metrics_of(&b).await;
    assert!(
        !mb.keys()
            .any(|k| k.starts_with("blindrelay_signalling_errors_total")
                || k.starts_with("blindrelay_signalling_closed_total")),
        "B saw the client: {:?}",
        mb.iter()
            .filter(|(k, _)| k.starts_with("blindrelay_signalling"))
            .collect::<Vec<_>>()
    );
}

/// After A dies the client moves to B, which refuses its token: it stops there with the
/// error instead of going round the relays until its duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_by_the_relay_failed_over_to_ends_the_call() {
    let mut a = RelayProcess::start("ref2-a", None).await;
    let b = RelayProcess::start("ref2-b", Some("a-different-secret-for-relay-b")).await;
    let (mut o, mut rx) = client("alice", "fo-refused2", &a, &b, 30);
    // Alone in a standard call: in the call as soon as the media path is up.
    o.e2ee = false;
    let started = Instant::now();
    let run = tokio::spawn(async move { run_call(&o).await });
    all(
        std::slice::from_mut(&mut rx),
        Duration::from_secs(20),
        "in the call on A",
        |p| p.in_call,
    )
    .await;
    a.kill().await;
    let s = tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .expect("the client ends at B's refusal, not at its duration")
        .expect("client task");
    assert!(started.elapsed() < Duration::from_secs(25));
    assert_eq!(
        s.error.as_ref().map(|e| e.code.as_str()),
        Some("unauthorized"),
        "{s:?}"
    );
    assert_eq!(s.reconnects, 0);
    assert_eq!(s.relay.as_deref(), Some(b.url.as_str()));
    let mb = metrics_of(&b).await;
    assert_eq!(
        metric(
            &mb,
            "blindrelay_signalling_errors_total{code=\"unauthorized\"}"
        ),
        1.0,
        "B refused it once, and it did not come back"
    );
}

/// The e2ee-client binary: `E2EE_CLIENT_BIN`, or the one cargo built next to this test.
fn client_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("E2EE_CLIENT_BIN") {
        return p.into();
    }
    let bin = relay_bin().with_file_name("e2ee-client");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p e2ee-client --bin e2ee-client` \
         (or set E2EE_CLIENT_BIN)",
        bin.display()
    );
    bin
}

/// An `e2ee-client call` process; its stderr lines are collected as they come.
struct ClientProcess {
    child: tokio::process::Child,
    lines: watch::Receiver<Vec<String>>,
}

impl ClientProcess {
    fn start(args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(client_bin())
            .arg("call")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start e2ee-client");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = watch::channel(Vec::new());
        tokio::spawn(async move {
            let mut rd = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(l)) = rd.next_line().await {
                tx.send_modify(|v| v.push(l));
            }
        });
        ClientProcess { child, lines }
    }

    /// Wait up to `limit` until at least `n` stderr lines contain `text`.
    async fn wait_line(&mut self, text: &str, n: usize, limit: Duration) {
        let seen = tokio::time::timeout(
            limit,
            self.lines
                .wait_for(|v| v.iter().filter(|l| l.contains(text)).count() >= n),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        assert!(
            seen,
            "{n} lines with `{text}` not seen in {limit:?}: {:#?}",
            *self.lines.borrow()
        );
    }

    /// Wait for the exit; the JSON summary and the exit status.
    async fn finish(self) -> (serde_json::Value, Option<i32>) {
        let out = tokio::time::timeout(Duration::from_secs(30), self.child.wait_with_output())
            .await
            .expect("the client ends after its duration")
            .expect("client output");
        let v = serde_json::from_slice(&out.stdout).expect("a JSON summary on stdout");
        (v, out.status.code())
    }
}

/// The command line as a user runs it: `--relay A --relay B` given twice, a one-to-one
/// E2EE call; A is killed; both processes rejoin through B, print a new code, and their
/// JSON summaries carry `reconnects` and `max_gap_ms_from`. Each exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_takes_relay_twice_and_reports_the_rejoin_in_its_json() {
    let mut a = RelayProcess::start("cli-a", None).await;
    let b = RelayProcess::start("cli-b", None).await;
    let cfg = loopback_config();
    let mut clients: Vec<ClientProcess> = ["alice", "bob"]
        .iter()
        .map(|u| {
            let t = token(&cfg, u, Some("fo-cli"), "user");
            ClientProcess::start(&[
                "--relay",
                &a.url,
                "--relay",
                &b.url,
                "--token",
                &t,
                "--call",
                "fo-cli",
                "--duration",
                "12s",
                "--e2ee",
                "--video-kbps",
                "200",
                "--json",
                "--name",
                u,
            ])
        })
        .collect();
    for c in &mut clients {
        c.wait_line("Verification code:", 1, Duration::from_secs(20))
            .await;
        c.wait_line("first frame opened from", 1, Duration::from_secs(20))
            .await;
        // Two stats lines keyed: a second or more of frames opened on A.
        c.wait_line("e2ee lock on", 2, Duration::from_secs(20))
            .await;
    }
    a.kill().await;
    for c in &mut clients {
        c.wait_line(
            &format!("rejoined the call through {}", b.url),
            1,
            Duration::from_secs(15),
        )
        .await;
        c.wait_line("Verification code:", 2, Duration::from_secs(15))
            .await;
        c.wait_line("first frame opened from", 2, Duration::from_secs(15))
            .await;
    }
    let mut summaries = Vec::new();
    for c in clients {
        let (v, code) = c.finish().await;
        assert_eq!(code, Some(0), "{v}");
        assert_eq!(v["reconnects"], 1, "{v}");
        assert_eq!(v["relay"], b.url.as_str());
        assert_eq!(v["decrypt_failures"], 0);
        let codes = v["codes"].as_array().expect("codes").clone();
        assert_eq!(codes.len(), 2, "{v}");
        assert_ne!(codes[0], codes[1]);
        assert_eq!(v["verification_code"], codes[1]);
        let gaps = v["max_gap_ms_from"].as_object().expect("max_gap_ms_from");
        assert_eq!(gaps.len(), 2, "the peer under its two ids: {gaps:?}");
        assert!(gaps.values().all(|g| g.as_f64().is_some_and(|g| g >= 0.0)));
        summaries.push(v);
    }
    assert_eq!(summaries[0]["codes"], summaries[1]["codes"]);
}

/// A relay that shuts down cleanly (its participants told `shutdown`, their connections
/// closed with that reason) is a loss too, not a refusal: both clients of a standard call
/// move to the next relay and go on, with no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_shutting_down_moves_its_clients_to_the_next() {
    let cfg = loopback_config();
    let a = start_relay(cfg.clone(), blindrelay::RelayOptions::default()).await;
    let b = start_relay(cfg.clone(), blindrelay::RelayOptions::default()).await;
    let (opts, mut rxs): (Vec<CallOptions>, Vec<_>) = ["alice", "bob"]
        .iter()
        .map(|u| {
            let (tx, rx) = watch::channel(Progress::default());
            let o = CallOptions {
                relay: a.signal_url(),
                fallback_relays: vec![b.signal_url()],
                progress: Some(Arc::new(tx)),
                token: token(&cfg, u, Some("fo-drain"), "user"),
                call: "fo-drain".into(),
                duration: Duration::from_secs(8),
                video_kbps: 200,
                name: u.to_string(),
                ..Default::default()
            };
            (o, rx)
        })
        .unzip();
    let runs = run_all(opts);
    all(
        &mut rxs,
        Duration::from_secs(20),
        "both in the call on A",
        |p| p.in_call,
    )
    .await;
    await_metrics(&a, Duration::from_secs(10), "media forwarded on A", |m| {
        metric(m, "blindrelay_packets_forwarded_total{kind=\"rtp\"}") >= 200.0
    })
    .await;
    a.shutdown().await;
    all(
        &mut rxs,
        Duration::from_secs(15),
        "both back in the call on B",
        |p| p.reconnects == 1 && p.in_call && p.relay == b.signal_url(),
    )
    .await;
    await_metrics(&b, Duration::from_secs(10), "media forwarded on B", |m| {
        metric(m, "blindrelay_packets_forwarded_total{kind=\"rtp\"}") >= 200.0
    })
    .await;
    let s = runs.await.expect("client tasks");
    for x in &s {
        assert!(x.error.is_none(), "{:?}", x.error);
        assert!(x.success(), "{x:?}");
        assert_eq!(x.reconnects, 1);
        assert_eq!(x.relay.as_deref(), Some(b.signal_url().as_str()));
        assert_eq!(x.frames_corrupt, 0);
        assert!(x.frames_verified > 100, "{}", x.frames_verified);
    }
    b.shutdown().await;
}
