//! Group E2EE calls (scheme `mls`) of e2ee-client through a real relay on loopback: every
//! member opens every other's frames and shows the same code, the relay's capture audits
//! blind, a leave and a join each move the group to a new epoch with a new code, and a
//! leave racing two joins converges on one epoch.

use blindrelay::config::Config;
use blindrelay::{Relay, RelayOptions};
use blindrelay_protocol::signal::E2eeScheme;
use blindrelay_tests::*;
use e2ee_client::audit::audit_file;
use e2ee_client::call::{run_call, CallOptions, CallSummary};
use std::time::Duration;

const CANARY: &str = "CANARY-group-e2ee";

fn member(relay: &Relay, cfg: &Config, user: &str, call: &str, secs: f64) -> CallOptions {
    CallOptions {
        relay: relay.signal_url(),
        token: token(cfg, user, Some(call), "user"),
        call: call.into(),
        duration: Duration::from_secs_f64(secs),
        video_kbps: 300,
        e2ee: true,
        e2ee_scheme: E2eeScheme::Mls,
        canary: Some(CANARY.into()),
        name: user.into(),
        ..Default::default()
    }
}

fn ok(s: &CallSummary, who: &str) {
    assert!(s.error.is_none(), "{who}: {:?}", s.error);
    assert!(s.e2ee_error.is_none(), "{who}: {:?}", s.e2ee_error);
    assert!(s.e2ee, "{who}: not keyed: {s:?}");
    assert_eq!(s.e2ee_scheme.as_deref(), Some("mls"), "{who}");
    assert_eq!(s.decrypt_failures, 0, "{who}: {s:?}");
    assert_eq!(s.frames_corrupt, 0, "{who}");
    let code = s.verification_code.as_deref().unwrap_or("");
    assert_eq!(code.len(), 23, "{who}: 20 digits in groups of five: {code}");
}

/// Members agree epoch by epoch: wherever two showed a code for the same epoch, it is the
/// same code.
fn codes_agree(all: &[&CallSummary]) {
    for a in all {
        for b in all {
            for (epoch, code) in &a.epoch_codes {
                if let Some(other) = b.epoch_codes.get(epoch) {
                    assert_eq!(
                        code, other,
                        "epoch {epoch}: {:?} vs {:?}",
                        a.participant, b.participant
                    );
                }
            }
        }
    }
}

/// The epochs in which every one of `all` was keyed.
fn shared_epochs(all: &[&CallSummary]) -> Vec<u64> {
    let Some(first) = all.first() else {
        return vec![];
    };
    first
        .epoch_codes
        .keys()
        .copied()
        .filter(|e| all.iter().all(|s| s.epoch_codes.contains_key(e)))
        .collect()
}

/// Frames `s` opened from `from` (a participant id).
fn opened_from(s: &CallSummary, from: &CallSummary) -> u64 {
    let id = from.participant.as_deref().unwrap_or("?");
    s.frames_decrypted_from.get(id).copied().unwrap_or(0)
}

/// The relay's capture of the call, once it is written, audits blind: no canary in the
/// clear, and `streams` streams (what `what` says). The relay stops and the file goes.
async fn audits_blind(relay: Relay, path: &std::path::Path, streams: usize, what: &str) {
    settle_capture(&relay).await;
    let report = audit_file(path, Some(CANARY.as_bytes())).expect("a readable capture");
    let table = report.table();
    assert!(report.blind, "{table}");
    assert_eq!(report.canary_packets(), 0, "{table}");
    assert_eq!(report.streams.len(), streams, "{what}: {table}");
    relay.shutdown().await;
    let _ = std::fs::remove_file(path);
}

/// Four members: each opens more than 100 frames from each other one with no failure,
/// all end on one epoch and code, and the relay's capture audits blind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_members_key_each_other_and_the_relay_is_blind() {
    let path = temp_path("group-four", "pcap");
    let cfg = capture_config(&path);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let opts: Vec<CallOptions> = ["ann", "ben", "cat", "dan"]
        .iter()
        .map(|u| member(&relay, &cfg, u, "group4", 6.0))
        .collect();
    let runs = opts.iter().map(run_call);
    let s: Vec<CallSummary> = futures_util::future::join_all(runs).await;
    for (i, a) in s.iter().enumerate() {
        ok(a, &opts[i].name);
        for (j, b) in s.iter().enumerate() {
            if i != j {
                let n = opened_from(a, b);
                assert!(
                    n > 100,
                    "{} opened {n} frames from {}: {:?}",
                    opts[i].name,
                    opts[j].name,
                    a.frames_decrypted_from
                );
            }
        }
    }
    // One epoch in which all four were keyed, with one code; none differs anywhere.
    let all: Vec<&CallSummary> = s.iter().collect();
    codes_agree(&all);
    let full = shared_epochs(&all);
    assert!(
        !full.is_empty(),
        "no epoch with all four: {:?}",
        s.iter().map(|x| &x.epoch_codes).collect::<Vec<_>>()
    );
    audits_blind(relay, &path, 8, "four members, audio and video").await;
}

/// A member leaves and another joins mid-call: the group moves to new epochs, those who
/// stay end on one code that differs from the one the leaver last saw, and the joiner
/// opens frames from everyone from its Welcome on, with no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_and_a_join_rekey_the_group() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let stay: Vec<CallOptions> = ["ann", "ben", "cat"]
        .iter()
        .map(|u| member(&relay, &cfg, u, "rekey", 9.0))
        .collect();
    let leaver = member(&relay, &cfg, "dan", "rekey", 3.0);
    let joiner_opts = member(&relay, &cfg, "eve", "rekey", 4.0);
    let staying = futures_util::future::join_all(stay.iter().map(run_call));
    let changes = async {
        let dan = run_call(&leaver).await;
        // Dan is gone from the relay's books before Eve joins.
        await_metrics(&relay, Duration::from_secs(10), "dan left", |m| {
            metric(m, "blindrelay_participants{role=\"user\"}") == 3.0
        })
        .await;
        let eve = run_call(&joiner_opts).await;
        (dan, eve)
    };
    let (s, (dan, eve)) = tokio::join!(staying, changes);
    ok(&dan, "dan");
    ok(&eve, "eve");
    for (i, a) in s.iter().enumerate() {
        ok(a, &stay[i].name);
        assert!(
            opened_from(a, &eve) > 50,
            "{}: {:?}",
            stay[i].name,
            a.frames_decrypted_from
        );
        assert!(
            opened_from(&eve, a) > 50,
            "eve: {:?}",
            eve.frames_decrypted_from
        );
    }
    let all: Vec<&CallSummary> = s.iter().chain([&dan, &eve]).collect();
    codes_agree(&all);
    // An epoch with Dan (before his leave) and a later one with Eve, each shared by the
    // three who stayed; Eve's epochs are all after Dan's last, and none of her codes is one
    // Dan saw.
    let with_dan = shared_epochs(&[&s[0], &s[1], &s[2], &dan]);
    let with_eve = shared_epochs(&[&s[0], &s[1], &s[2], &eve]);
    assert!(
        !with_dan.is_empty() && !with_eve.is_empty(),
        "{with_dan:?} {with_eve:?}"
    );
    let dan_last = *dan.epoch_codes.keys().last().expect("dan was keyed");
    assert!(
        eve.epoch_codes.keys().all(|e| *e > dan_last),
        "{:?} vs {dan_last}",
        eve.epoch_codes
    );
    assert!(eve
        .epoch_codes
        .values()
        .all(|c| !dan.epoch_codes.values().any(|d| d == c)));
    relay.shutdown().await;
}

/// A leave racing two joins, several times: every time, all end on one epoch and code
/// and open each other's frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_racing_two_joins_converges() {
    let cfg = loopback_config();
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    for round in 0..3 {
        let call = format!("race{round}");
        let base: Vec<CallOptions> = ["ann", "ben"]
            .iter()
            .map(|u| member(&relay, &cfg, &format!("{u}{round}"), &call, 6.0))
            .collect();
        let cat = member(&relay, &cfg, &format!("cat{round}"), &call, 2.5);
        let late: Vec<CallOptions> = ["dan", "eve"]
            .iter()
            .map(|u| member(&relay, &cfg, &format!("{u}{round}"), &call, 3.0))
            .collect();
        let staying = futures_util::future::join_all(base.iter().map(run_call));
        let race = async {
            // Dan and Eve join the moment Cat leaves (its run ends with `leave`): Cat's
            // removal and their adds race for the same epoch.
            let c = run_call(&cat).await;
            let joins = futures_util::future::join_all(late.iter().map(run_call)).await;
            (c, joins)
        };
        let (s, (c, joins)) = tokio::join!(staying, race);
        ok(&c, "cat");
        let all: Vec<&CallSummary> = s.iter().chain(joins.iter()).collect();
        for a in &all {
            ok(a, a.participant.as_deref().unwrap_or("?"));
        }
        for d in &joins {
            for a in &s {
                assert!(opened_from(d, a) > 30, "{:?}", d.frames_decrypted_from);
                assert!(opened_from(a, d) > 30, "{:?}", a.frames_decrypted_from);
            }
        }
        codes_agree(&all);
        // They converge: an epoch in which Ann, Ben, Dan and Eve were all keyed.
        let four = shared_epochs(&[&s[0], &s[1], &joins[0], &joins[1]]);
        assert!(!four.is_empty(), "round {round}: no common epoch");
    }
    relay.shutdown().await;
}

/// Simulcast from e2ee-client (`--simulcast 3`) in an MLS call: the sender's three layers
/// (each frame sealed on its own) reach each receiver as the one layer it asked for, by
/// the height of the key frames that arrive: 120 lines to a receiver that asked for at
/// most 120 (`--max-height`), 480 to one that asked nothing. Every frame opens and is
/// checked byte for byte, the relay's key frame requests reach the sender (it answers each
/// with a key frame on that layer), and the relay's capture audits blind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_layers_reach_each_receiver_at_its_height_and_stay_sealed() {
    let path = temp_path("group-simulcast", "pcap");
    let cfg = capture_config(&path);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let call = "simulcast";
    let ann = CallOptions {
        simulcast: 3,
        video_kbps: 800,
        web_peers: true,
        ..member(&relay, &cfg, "ann", call, 8.0)
    };
    // The receivers send audio only, so what they verify by height is Ann's video.
    let receiver = |user: &str, max_height: Option<u32>| CallOptions {
        video_kbps: 0,
        video: false,
        web_peers: true,
        max_height,
        ..member(&relay, &cfg, user, call, 7.0)
    };
    let (ben, cat) = (receiver("ben", Some(120)), receiver("cat", None));
    let (a, b, c) = tokio::join!(run_call(&ann), run_call(&ben), run_call(&cat));
    for (s, who) in [(&a, "ann"), (&b, "ben"), (&c, "cat")] {
        ok(s, who);
        eprintln!(
            "{who}: verified {} by height {:?}, key frames sent {}, requests {}",
            s.frames_verified, s.frames_verified_by_height, s.keyframes_sent, s.keyframe_requests
        );
    }
    assert_eq!(a.video_layers.len(), 3, "{:?}", a.video_layers);
    assert_eq!(a.video_ssrc, a.video_layers.first().copied());
    // Each receiver's video came at its height, from the layer's key frames on.
    for (s, height, who) in [(&b, 120u16, "ben"), (&c, 480, "cat")] {
        mostly_at_height(s, height, who);
        assert!(
            opened_from(s, &a) > 100,
            "{who}: {:?}",
            s.frames_decrypted_from
        );
    }
    // Layers are switched at key frames the relay asked the sender for.
    assert!(a.keyframe_requests > 0, "{a:?}");
    assert!(
        a.keyframes_sent >= 3,
        "a first key frame on each layer: {a:?}"
    );
    audits_blind(
        relay,
        &path,
        6,
        "Ann's audio and three layers, the receivers' audio",
    )
    .await;
}
