//! A call across relay nodes outlives a node: real `blindrelay` processes in cluster mode
//! (a real redis-server as the directory, real QUIC links), e2ee-clients in one MLS call,
//! one through each node and each given another node to move to. A node is killed with
//! SIGKILL (the owner of the call, or not) or stopped with SIGTERM; its clients must be back
//! in the call and decrypting, and the others' media must go on.

use blindrelay_protocol::signal::E2eeScheme;
use blindrelay_tests::*;
use e2ee_client::call::{run_call, CallOptions, CallSummary};
use e2ee_client::session::Progress;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Three node processes a, b, c sharing one directory and CA.
struct Nodes {
    procs: Vec<RelayProcess>,
    redis: RedisServer,
    pki: std::path::PathBuf,
}

impl Nodes {
    async fn start() -> Nodes {
        let redis = RedisServer::start();
        let ids = ["a", "b", "c"];
        let pki = cluster_pki(&ids);
        let mut procs = Vec::new();
        for id in ids {
            let p = |f: String| pki.join(f).display().to_string();
            let section = format!(
                "\n[cluster]\nnode_id = \"{id}\"\nredis_url = \"{}\"\nquic_listen = \"127.0.0.1:0\"\n\
                 announce = \"127.0.0.1\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
                 heartbeat = \"300ms\"\nnode_ttl = \"1s\"\n",
                redis.url,
                p("ca.pem".into()),
                p(format!("{id}.pem")),
                p(format!("{id}.key")),
            );
            procs.push(RelayProcess::start_with(&format!("span-{id}"), None, &section).await);
        }
        Nodes { procs, redis, pki }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pki);
    }
}

/// A member of `call` through node `first`, moving to `then` if it goes away, in an MLS
/// call.
fn member(
    user: &str,
    call: &str,
    first: &RelayProcess,
    then: &RelayProcess,
    secs: u64,
) -> (CallOptions, watch::Receiver<Progress>) {
    let (mut o, rx) = client(user, call, first, then, secs);
    o.e2ee_scheme = E2eeScheme::Mls;
    (o, rx)
}

/// Wait until `pred` holds for `rx`; panics after `limit`.
async fn until(
    rx: &mut watch::Receiver<Progress>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&Progress) -> bool,
) {
    all(std::slice::from_mut(rx), limit, what, pred).await;
}

/// Opened at least `n` frames from each of `senders` others in its current session.
fn keyed_with(p: &Progress, senders: usize, n: u64) -> bool {
    p.in_call && opened_from_each(p, senders, n)
}

/// ann (through a, which therefore owns the call), then ben (b) and cat (c): all three
/// decrypt each other. Returns the clients' progress and their running calls.
async fn three_members(
    n: &Nodes,
    call: &str,
) -> (
    Vec<watch::Receiver<Progress>>,
    tokio::task::JoinHandle<Vec<CallSummary>>,
) {
    let [a, b, c] = [&n.procs[0], &n.procs[1], &n.procs[2]];
    let (ann, mut ann_rx) = member("ann", call, a, b, 14);
    let first = tokio::spawn(async move { run_call(&ann).await });
    until(
        &mut ann_rx,
        Duration::from_secs(10),
        "ann in the call",
        |p| p.in_call,
    )
    .await;
    let (ben, ben_rx) = member("ben", call, b, c, 13);
    let (cat, cat_rx) = member("cat", call, c, a, 13);
    let others = tokio::spawn(async move {
        futures_util::future::join_all([ben, cat].iter().map(run_call)).await
    });
    let run = tokio::spawn(async move {
        let mut all = vec![first.await.expect("ann's call")];
        all.extend(others.await.expect("the others' calls"));
        all
    });
    let mut rxs = vec![ann_rx, ben_rx, cat_rx];
    for rx in rxs.iter_mut() {
        until(rx, Duration::from_secs(10), "all keyed", |p| {
            keyed_with(p, 2, 20)
        })
        .await;
    }
    (rxs, run)
}

fn clean(s: &CallSummary, who: &str) {
    assert!(s.error.is_none(), "{who}: {:?}", s.error);
    assert!(s.e2ee_error.is_none(), "{who}: {:?}", s.e2ee_error);
    assert_eq!(s.decrypt_failures, 0, "{who}: {:?}", s.decrypt_failures_by);
}

/// The longest gap `s` saw between two frames from `from` (its id then).
fn gap(s: &CallSummary, from: &CallSummary) -> f64 {
    let id = from.participant_ids.first().expect("an id");
    s.max_gap_ms_from.get(id).copied().unwrap_or(f64::INFINITY)
}

/// kill -9 of c, which does not own the call: cat is back in the call through a and
/// decrypting ann and ben within 5 s, while ann and ben never go a second without each
/// other's frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_owner_node_dies_and_its_member_moves_within_5_s() {
    let mut n = Nodes::start().await;
    let (mut rxs, run) = three_members(&n, "span-kill-c").await;
    let killed = Instant::now();
    n.procs[2].kill().await;
    until(
        &mut rxs[2],
        Duration::from_secs(5),
        "cat back and decrypting",
        |p| p.reconnects == 1 && keyed_with(p, 2, 1),
    )
    .await;
    let back = killed.elapsed();
    eprintln!("cat back in the call and decrypting both others {back:?} after kill -9 of c");
    let s = run.await.expect("the calls");
    for (x, who) in s.iter().zip(["ann", "ben", "cat"]) {
        clean(x, who);
    }
    assert_eq!(s[0].reconnects, 0);
    assert_eq!(s[1].reconnects, 0);
    assert_eq!(s[2].reconnects, 1);
    let (ab, ba) = (gap(&s[0], &s[1]), gap(&s[1], &s[0]));
    eprintln!("longest gap ann<-ben {ab:.0} ms, ben<-ann {ba:.0} ms");
    assert!(
        ab < 1000.0 && ba < 1000.0,
        "ann<-ben {ab} ms, ben<-ann {ba} ms"
    );
}

/// kill -9 of a, the call's owner: the others' edges lose it, another node takes the call
/// over once a's record expires, and all three decrypt each other again within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_dies_and_the_call_goes_on_within_10_s() {
    let mut n = Nodes::start().await;
    let (mut rxs, run) = three_members(&n, "span-kill-a").await;
    let killed = Instant::now();
    n.procs[0].kill().await;
    for rx in rxs.iter_mut() {
        until(rx, Duration::from_secs(10), "back in the call", |p| {
            p.reconnects == 1 && keyed_with(p, 2, 1)
        })
        .await;
    }
    let back = killed.elapsed();
    eprintln!("all three decrypting each other again {back:?} after kill -9 of the owner");
    assert!(back < Duration::from_secs(10));
    let s = run.await.expect("the calls");
    for (x, who) in s.iter().zip(["ann", "ben", "cat"]) {
        clean(x, who);
        assert_eq!(x.reconnects, 1, "{who}");
    }
}

/// SIGTERM of b drains it: it leaves the directory at once, tells ben to move (ben goes on
/// through c), and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_node() {
    let mut n = Nodes::start().await;
    let (mut rxs, run) = three_members(&n, "span-drain-b").await;
    let pid = n.procs[1].child.id().expect("b runs") as libc::pid_t;
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(10), n.procs[1].child.wait())
        .await
        .expect("b exits within 10 s of SIGTERM")
        .expect("reap b");
    assert!(status.success(), "{status:?}");
    let listed = blindrelay::cluster::status(&n.redis.url, blindrelay::cluster::unix_ms())
        .await
        .expect("status");
    assert!(listed.contains("nodes: 2"), "{listed}");
    until(&mut rxs[1], Duration::from_secs(5), "ben moved", |p| {
        p.reconnects == 1 && keyed_with(p, 2, 1)
    })
    .await;
    let s = run.await.expect("the calls");
    for (x, who) in s.iter().zip(["ann", "ben", "cat"]) {
        clean(x, who);
    }
    assert_eq!(s[1].reconnects, 1);
    assert_eq!(s[0].reconnects, 0);
    assert_eq!(s[2].reconnects, 0);
}
