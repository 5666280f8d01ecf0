//! `group`: how soon a mixed MLS group keys. Browser pages (the relay's own web client in
//! headless Chromium, driven by `tests/peers/chromium/web.mjs`) and e2ee-clients join one
//! group call through an in-process relay; each member reports when it joined (wall clock)
//! and when it first opened a frame from each other member. From those timelines:
//!
//! - **join to keyed**, per member: from its join until it has opened a frame from every
//!   member who joined before it and each of them has opened one of its own (the wait a
//!   newcomer sees before everyone hears everyone);
//! - **last join to all keyed**: from the last member's join until every member has opened
//!   every other member's frames (the bar: within 2 s for 8 members).
//!
//! Frames count only when SFrame opened them with the epoch's key, so a member is keyed
//! when the group's commits and Welcomes have reached it, not when media first arrives.

use anyhow::{bail, Context, Result};
use blindrelay::config::Config;
use blindrelay::Relay;
use blindrelay_protocol::signal::E2eeScheme;
use e2ee_client::call::{run_call, CallOptions, CallSummary};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// What `group` is asked to measure.
pub struct GroupArgs {
    pub pages: usize,
    pub clients: usize,
    pub runs: usize,
    pub join_every: Duration,
    pub client_duration: Duration,
    pub driver: PathBuf,
    pub timeout: Duration,
}

/// One member's timeline, in wall-clock ms.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub kind: &'static str,
    pub name: String,
    pub participant: String,
    pub joined_unix_ms: f64,
    /// Sender -> wall-clock ms of the first frame this member opened from it.
    #[serde(skip)]
    pub first_opened: BTreeMap<String, f64>,
    /// Join to keyed with every earlier member, both ways (none for the first joiner).
    pub join_to_keyed_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupRun {
    pub members: Vec<Member>,
    /// First join to last join.
    pub join_spread_ms: f64,
    /// Last join until every member opened every other member's frames.
    pub last_join_to_all_keyed_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    pub pages: usize,
    pub clients: usize,
    pub runs: Vec<GroupRun>,
    pub median_last_join_to_all_keyed_ms: f64,
    pub median_join_to_keyed_page_ms: Option<f64>,
    pub median_join_to_keyed_client_ms: Option<f64>,
    pub max_join_to_keyed_ms: f64,
}

pub async fn run(relay: &Relay, cfg: &Config, a: GroupArgs) -> Result<GroupReport> {
    if a.pages + a.clients < 2 {
        bail!("a group needs at least two members");
    }
    if a.pages > 0 {
        crate::check_driver(&a.driver)?;
    }
    let mut runs = Vec::new();
    for n in 0..a.runs {
        let r = one_run(relay, cfg, &a, n)
            .await
            .with_context(|| format!("run {}", n + 1))?;
        eprintln!(
            "run {}: {} members, joins spread over {:.0} ms, all keyed {:.0} ms after the last join",
            n + 1,
            r.members.len(),
            r.join_spread_ms,
            r.last_join_to_all_keyed_ms
        );
        runs.push(r);
    }
    let per_kind = |kind: &str| {
        let v: Vec<f64> = runs
            .iter()
            .flat_map(|r| &r.members)
            .filter(|m| m.kind == kind)
            .filter_map(|m| m.join_to_keyed_ms)
            .collect();
        (!v.is_empty()).then(|| crate::median(v))
    };
    Ok(GroupReport {
        pages: a.pages,
        clients: a.clients,
        median_last_join_to_all_keyed_ms: crate::median(
            runs.iter().map(|r| r.last_join_to_all_keyed_ms).collect(),
        ),
        median_join_to_keyed_page_ms: per_kind("page"),
        median_join_to_keyed_client_ms: per_kind("client"),
        max_join_to_keyed_ms: runs
            .iter()
            .flat_map(|r| &r.members)
            .filter_map(|m| m.join_to_keyed_ms)
            .fold(0.0, f64::max),
        runs,
    })
}

async fn one_run(relay: &Relay, cfg: &Config, a: &GroupArgs, n: usize) -> Result<GroupRun> {
    let call = format!("group-bench-{n}");
    let members = a.pages + a.clients;
    // The pages, opened one after another by the driver (each page load spaces them).
    let driver = if a.pages > 0 {
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(&a.driver);
        for i in 0..a.pages {
            let t = crate::bench_token(cfg, &format!("page{i}"), &call)?;
            cmd.arg("--page").arg(format!(
                "http://{}/?call={call}&token={t}&autojoin=1&e2ee=1&scheme=mls",
                relay.signal_addr
            ));
        }
        cmd.args(["--until", "group", "--min-members"])
            .arg(members.to_string())
            .args(["--min-decrypted", "1", "--timeout"])
            .arg(a.timeout.as_secs().to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        Some(cmd.spawn().context("run node (the page driver)")?)
    } else {
        None
    };
    // The e2ee-clients, started `join_every` apart.
    let mut clients = Vec::new();
    for i in 0..a.clients {
        let opts = CallOptions {
            relay: relay.signal_url(),
            token: crate::bench_token(cfg, &format!("client{i}"), &call)?,
            call: call.clone(),
            duration: a.client_duration,
            e2ee: true,
            e2ee_scheme: E2eeScheme::Mls,
            web_peers: a.pages > 0,
            name: format!("client{i}"),
            ..Default::default()
        };
        let delay = a.join_every * i as u32;
        clients.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            run_call(&opts).await
        }));
    }
    let pages: Vec<Value> = match driver {
        Some(d) => {
            let out = d.wait_with_output().await.context("the page driver")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text.lines().last().unwrap_or_default();
            let v: Vec<Value> = serde_json::from_str(line)
                .with_context(|| format!("the page driver's report: {line:.200}"))?;
            if !out.status.success() {
                bail!(
                    "the pages did not all key with {members} members in {:?}: {}",
                    a.timeout,
                    v.iter()
                        .map(|p| format!("{:.300}", p["state"].to_string()))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            v
        }
        None => Vec::new(),
    };
    let mut ms: Vec<Member> = Vec::new();
    for (i, p) in pages.iter().enumerate() {
        let s = &p["state"];
        let joined = s["joined_unix_ms"]
            .as_f64()
            .with_context(|| format!("page {i} reported no join time"))?;
        let first = s["first_decrypted_ms"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), joined + v.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        ms.push(Member {
            kind: "page",
            name: format!("page{i}"),
            participant: s["participant"].as_str().unwrap_or_default().to_string(),
            joined_unix_ms: joined,
            first_opened: first,
            join_to_keyed_ms: None,
        });
    }
    for (i, c) in clients.into_iter().enumerate() {
        let s: CallSummary = c.await.context("an e2ee-client task")?;
        if let Some(e) = &s.error {
            bail!("client{i}: {}: {}", e.code, e.message);
        }
        let joined = s
            .joined_unix_ms
            .with_context(|| format!("client{i} never joined"))?;
        ms.push(Member {
            kind: "client",
            name: format!("client{i}"),
            participant: s.participant.clone().unwrap_or_default(),
            joined_unix_ms: joined,
            first_opened: s
                .first_decrypted_ms
                .iter()
                .map(|(k, v)| (k.clone(), joined + v))
                .collect(),
            join_to_keyed_ms: None,
        });
    }
    timelines(ms)
}

/// The figures from the members' timelines (see the module doc).
fn timelines(mut ms: Vec<Member>) -> Result<GroupRun> {
    ms.sort_by(|a, b| a.joined_unix_ms.total_cmp(&b.joined_unix_ms));
    let opened = |m: &Member, from: &Member| m.first_opened.get(&from.participant).copied();
    let mut all_keyed = f64::MIN;
    for m in &ms {
        for o in ms.iter().filter(|o| o.participant != m.participant) {
            let t = opened(m, o)
                .with_context(|| format!("{} never opened a frame from {}", m.name, o.name))?;
            all_keyed = all_keyed.max(t);
        }
    }
    for i in 1..ms.len() {
        let m = &ms[i];
        let mut keyed = m.joined_unix_ms;
        for o in &ms[..i] {
            keyed = keyed.max(opened(m, o).unwrap_or(f64::MAX));
            keyed = keyed.max(opened(o, m).unwrap_or(f64::MAX));
        }
        ms[i].join_to_keyed_ms = Some(keyed - ms[i].joined_unix_ms);
    }
    let first = ms.first().map_or(0.0, |m| m.joined_unix_ms);
    let last = ms.last().map_or(0.0, |m| m.joined_unix_ms);
    Ok(GroupRun {
        join_spread_ms: last - first,
        last_join_to_all_keyed_ms: (all_keyed - last).max(0.0),
        members: ms,
    })
}

pub fn print_human(r: &GroupReport) {
    for (i, run) in r.runs.iter().enumerate() {
        println!(
            "run {}: joins over {:.0} ms; last join -> all keyed {:.0} ms",
            i + 1,
            run.join_spread_ms,
            run.last_join_to_all_keyed_ms
        );
        for m in &run.members {
            println!(
                "  {:<8} {:<6} join -> keyed {}",
                m.name,
                m.kind,
                m.join_to_keyed_ms
                    .map_or("(first)".into(), |v| format!("{v:.0} ms"))
            );
        }
    }
    println!(
        "median last join -> all keyed: {:.0} ms; join -> keyed median: pages {}, clients {}; max {:.0} ms",
        r.median_last_join_to_all_keyed_ms,
        r.median_join_to_keyed_page_ms
            .map_or("-".into(), |v| format!("{v:.0} ms")),
        r.median_join_to_keyed_client_ms
            .map_or("-".into(), |v| format!("{v:.0} ms")),
        r.max_join_to_keyed_ms
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(p: &str, joined: f64, first: &[(&str, f64)]) -> Member {
        Member {
            kind: "client",
            name: p.into(),
            participant: p.into(),
            joined_unix_ms: joined,
            first_opened: first.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            join_to_keyed_ms: None,
        }
    }

    #[test]
    fn join_to_keyed_waits_for_both_directions_with_earlier_members() {
        let r = timelines(vec![
            member("c", 2000.0, &[("a", 2300.0), ("b", 2100.0)]),
            member("a", 0.0, &[("b", 1200.0), ("c", 2600.0)]),
            member("b", 1000.0, &[("a", 1100.0), ("c", 2200.0)]),
        ])
        .expect("every pair opened");
        let by: BTreeMap<&str, Option<f64>> = r
            .members
            .iter()
            .map(|m| (m.participant.as_str(), m.join_to_keyed_ms))
            .collect();
        assert_eq!(by["a"], None);
        assert_eq!(by["b"], Some(200.0));
        // c opened a at 2300 and b at 2100, a opened c at 2600.
        assert_eq!(by["c"], Some(600.0));
        assert_eq!(r.join_spread_ms, 2000.0);
        assert_eq!(r.last_join_to_all_keyed_ms, 600.0);
    }

    #[test]
    fn a_pair_that_never_opened_is_an_error() {
        let r = timelines(vec![
            member("a", 0.0, &[("b", 100.0)]),
            member("b", 50.0, &[]),
        ]);
        assert!(r.is_err());
    }
}
