//! The operations files query what the relay exports: every `blindrelay_*` metric that
//! config/grafana-dashboard.json and config/prometheus-rules.yml name exists on a live
//! relay's /metrics after a short call (so labelled counters and histograms have samples).

use blindrelay::RelayOptions;
use blindrelay_protocol::signal::{ClientMessage, ErrorCode, ServerMessage};
use blindrelay_tests::*;
use e2ee_client::call::{run_call, CallOptions};
use e2ee_client::signal::Signal;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

fn config_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(name)
}

/// Every `blindrelay_*` metric name in `text` (recorded series are `blindrelay:...` and are
/// not names the relay exports).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("blindrelay_") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let whole = !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if whole && len > "blindrelay_".len() {
            names.insert(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    names
}

/// The PromQL of a Grafana dashboard: every `expr`, and the variables' queries.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition" | "query", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// The names of the samples in a Prometheus text exposition (`x_bucket`, `x_sum` and
/// `x_count` for a histogram `x`).
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn metric_names_are_found_in_queries() {
    let names = metric_names(
        "sum by (le) (rate(blindrelay_a_bucket{x=\"y\"}[5m])) / blindrelay:b:rate5m + \
         blindrelay_c_total not_blindrelay_d blindrelay_*",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["blindrelay_a_bucket", "blindrelay_c_total"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_query_only_metrics_the_relay_exports() {
    let dashboard_text =
        std::fs::read_to_string(config_file("grafana-dashboard.json")).expect("dashboard");
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard_text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() > 10, "a dashboard with panels");
    // The rules' expressions and annotations (which name metrics too), not the comments.
    let rules: String = std::fs::read_to_string(config_file("prometheus-rules.yml"))
        .expect("rules")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut wanted = BTreeSet::new();
    for q in &queries {
        wanted.extend(metric_names(q));
    }
    let from_dashboard = wanted.len();
    wanted.extend(metric_names(&rules));
    // A lone relay exports no cluster metrics: relay/tests/cluster.rs checks those on a
    // live node.
    let cluster = wanted
        .iter()
        .filter(|n| n.starts_with("blindrelay_cluster_"))
        .count();
    assert!(
        cluster >= 5,
        "the dashboard's cluster row: {cluster} metrics"
    );
    wanted.retain(|n| !n.starts_with("blindrelay_cluster_"));
    assert!(from_dashboard >= 15, "dashboard names {from_dashboard}");

    // A relay with a small per-source cap, so a refusal at accept can be counted too.
    let mut cfg = loopback_config();
    cfg.signal.max_connections_per_source = 3;
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    // A short two-party call: joins, DTLS, forwarding (histograms get samples), leaves.
    let call = |user: &str| CallOptions {
        relay: url.clone(),
        token: token(&cfg, user, Some("ops"), "user"),
        call: "ops".into(),
        duration: Duration::from_millis(1500),
        video_kbps: 300,
        name: user.into(),
        ..Default::default()
    };
    let (a, b) = (call("alice"), call("bob"));
    let (sa, sb) = tokio::join!(run_call(&a), run_call(&b));
    assert!(
        sa.success() && sb.success(),
        "{:?} {:?}",
        sa.error,
        sb.error
    );
    // A refused hello (a signalling error), then one connection too many from this address.
    let mut bad = Signal::connect(&url).await.expect("connect");
    bad.send(&ClientMessage::Hello {
        token: "not-a-token".into(),
    })
    .await
    .expect("send hello");
    assert!(matches!(
        next_reply(&mut bad).await,
        ServerMessage::Error {
            code: ErrorCode::Unauthorized,
            ..
        }
    ));
    let mut held = vec![bad];
    while held.len() < 3 {
        held.push(Signal::connect(&url).await.expect("under the cap"));
    }
    assert!(Signal::connect(&url).await.is_err(), "over the cap");
    // Leaves and closes are processed after the clients return.
    await_metrics(&relay, Duration::from_secs(10), "call over", |m| {
        metric(m, "blindrelay_participants{role=\"user\"}") == 0.0
            && series(m, "blindrelay_signalling_closed_total{reason=\"client\"}").is_some()
    })
    .await;

    let (status, exposition) = http_get(relay.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    let exported = exported_names(&exposition);
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|n| {
            // A histogram's family name stands for its _bucket/_sum/_count samples.
            !exported.contains(*n) && !exported.contains(&format!("{n}_bucket"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "queried by config/grafana-dashboard.json or config/prometheus-rules.yml but not \
         exported: {missing:?}\nexported: {exported:?}"
    );
    // The histograms the dashboard takes percentiles of have samples after the call.
    for h in [
        "blindrelay_forwarding_latency_seconds",
        "blindrelay_join_duration_seconds",
        "blindrelay_dtls_handshake_duration_seconds",
    ] {
        assert!(
            wanted.contains(&format!("{h}_bucket")),
            "{h} is on the dashboard"
        );
        let m = scrape(&relay).await;
        assert!(metric(&m, &format!("{h}_count")) > 0.0, "{h} has samples");
    }
    drop(held);
    relay.shutdown().await;
}
