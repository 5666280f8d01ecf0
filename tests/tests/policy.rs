//! E2EE policy: who may encrypt, call modes with reasons, hot reload, the admin API.

use blindrelay::config::DEV_ADMIN_TOKEN;
use blindrelay::RelayOptions;
use blindrelay_protocol::signal::{CallMode, ClientMessage, E2eeOption, ErrorCode, ServerMessage};
use blindrelay_tests::*;
use e2ee_client::call::{run_call, CallOptions};
use e2ee_client::signal::Signal;
use std::time::Duration;

async fn admin(
    relay: &blindrelay::Relay,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    http(relay.admin_addr, method, path, token, body).await
}

async fn capabilities(url: &str, token: &str) -> E2eeOption {
    let mut sig = Signal::connect(url).await.expect("connect");
    sig.send(&ClientMessage::Hello {
        token: token.into(),
    })
    .await
    .expect("send");
    match sig.recv().await.expect("reply") {
        ServerMessage::Capabilities { e2ee_option, .. } => e2ee_option,
        m => panic!("{m:?}"),
    }
}

fn tok(cfg: &blindrelay::config::Config, user: &str, tenant: &str) -> String {
    blindrelay::token::issue(
        &cfg.auth.api_secret,
        user,
        tenant,
        "user",
        None,
        Duration::from_secs(600),
    )
    .expect("token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token_and_changes_apply_to_the_next_join() {
    let dir = std::env::temp_dir().join(format!("policy-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("policies.toml");
    std::fs::write(
        &file,
        "[policies.Global]\ncalling_e2ee = \"DisabledUserOverride\"\n",
    )
    .expect("write");
    let mut cfg = loopback_config();
    cfg.policy.file = Some(file.clone());
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();

    assert_eq!(admin(&relay, "GET", "/v1/policy", None, "").await.0, 401);
    assert_eq!(
        admin(
            &relay,
            "GET",
            "/v1/policy",
            Some("wrong-token-of-some-length"),
            ""
        )
        .await
        .0,
        401
    );
    assert_eq!(
        admin(
            &relay,
            "PUT",
            "/v1/policy/policies/NoE2ee",
            None,
            r#"{"calling_e2ee":"Disabled"}"#
        )
        .await
        .0,
        401
    );
    let (status, body) = admin(&relay, "GET", "/v1/policy", Some(DEV_ADMIN_TOKEN), "").await;
    assert_eq!(status, 200, "{body}");

    assert_eq!(
        capabilities(&url, &tok(&cfg, "alice", "t")).await,
        E2eeOption::Available
    );
    let (s, b) = admin(
        &relay,
        "PUT",
        "/v1/policy/policies/NoE2ee",
        Some(DEV_ADMIN_TOKEN),
        r#"{"calling_e2ee":"Disabled"}"#,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = admin(
        &relay,
        "PUT",
        "/v1/policy/users/alice",
        Some(DEV_ADMIN_TOKEN),
        r#"{"policy":"NoE2ee"}"#,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    // At once, not hours later.
    assert_eq!(
        capabilities(&url, &tok(&cfg, "alice", "t")).await,
        E2eeOption::Hidden
    );
    assert_eq!(
        capabilities(&url, &tok(&cfg, "bob", "t")).await,
        E2eeOption::Available
    );
    // The relay enforces the hidden option: alice cannot turn E2EE on.
    let mut a = CallOptions {
        relay: url.clone(),
        token: tok(&cfg, "alice", "t"),
        call: "x".into(),
        duration: Duration::from_millis(300),
        ..Default::default()
    };
    let mut sig = Signal::connect(&url).await.expect("connect");
    sig.send(&ClientMessage::Hello {
        token: a.token.clone(),
    })
    .await
    .expect("send");
    let _ = sig.recv().await;
    let offer = e2ee_offer();
    sig.send(&ClientMessage::Join {
        call: "x".into(),
        e2ee_enabled: true,
        offer_sdp: offer,
        e2ee_scheme: Default::default(),
    })
    .await
    .expect("send");
    match sig.recv().await.expect("reply") {
        ServerMessage::Error { code, message } => {
            assert_eq!(code, ErrorCode::E2eeNotAllowed);
            assert!(message.contains("policy"), "{message}");
        }
        m => panic!("{m:?}"),
    }
    // A client that requires E2EE and is told the option is hidden does not join at all.
    a.e2ee = true;
    let s = run_call(&a).await;
    assert!(!s.joined && s.sent_packets == 0, "{s:?}");
    assert_eq!(s.left_reason.as_deref(), Some("downgrade_refused"));
    // One that only prefers it does not offer E2EE when hidden: it joins a standard call.
    a.e2ee_preferred = true;
    let s = run_call(&a).await;
    assert!(
        s.joined && s.call_mode == Some(CallMode::Standard),
        "{:?}",
        s.error
    );
    assert!(s.downgrade_accepted.is_some());

    // Persisted atomically: the file now holds both changes and parses.
    let text = std::fs::read_to_string(&file).expect("policy file");
    let set = blindrelay::core::policy::PolicySet::parse(&text).expect("valid file");
    assert_eq!(set.users.get("alice").map(String::as_str), Some("NoE2ee"));
    // A grant naming a missing policy is refused and changes nothing.
    let (s, b) = admin(
        &relay,
        "PUT",
        "/v1/policy/users/bob",
        Some(DEV_ADMIN_TOKEN),
        r#"{"policy":"Nope"}"#,
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("Nope"));
    let (s, _) = admin(
        &relay,
        "PUT",
        "/v1/policy/policies/X",
        Some(DEV_ADMIN_TOKEN),
        r#"{"calling_e2ee":"Maybe"}"#,
    )
    .await;
    assert_eq!(s, 400);
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn e2ee_offer() -> String {
    let id = blindrelay_transport::DtlsIdentity::generate().expect("identity");
    blindrelay_protocol::sdp::build_offer(&blindrelay_protocol::sdp::OfferParams {
        ice_ufrag: "abcd",
        ice_pwd: "0123456789012345678901",
        fingerprint: id.fingerprint(),
        audio_ssrc: 1,
        video_ssrc: 2,
        cname: "c",
        session_id: 1,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_file_hot_reload_and_a_broken_file_keeps_the_policy_in_force() {
    let dir = std::env::temp_dir().join(format!("policy-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("policies.toml");
    std::fs::write(&file, "[policies.Global]\ncalling_e2ee = \"Disabled\"\n[policies.Strict]\ncalling_e2ee = \"Required\"\n[tenants]\ncontoso = \"Strict\"\n").expect("write");
    let mut cfg = loopback_config();
    cfg.policy.file = Some(file.clone());
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();
    assert_eq!(
        capabilities(&url, &tok(&cfg, "u", "fabrikam")).await,
        E2eeOption::Hidden
    );
    assert_eq!(
        capabilities(&url, &tok(&cfg, "u", "contoso")).await,
        E2eeOption::Required
    );

    // Edit the file: the relay notices within a couple of seconds. (The watcher compares
    // mtime and length; the lengths differ, so no gap for a coarse mtime is needed.)
    std::fs::write(
        &file,
        "[policies.Global]\ncalling_e2ee = \"DisabledUserOverride\"\n",
    )
    .expect("write");
    eventually(Duration::from_secs(5), "file change applied", || async {
        (capabilities(&url, &tok(&cfg, "u", "fabrikam")).await == E2eeOption::Available)
            .then_some(())
    })
    .await;
    assert_eq!(
        metric(
            &scrape(&relay).await,
            "blindrelay_policy_reloads_total{result=\"ok\"}"
        ),
        1.0
    );

    // A broken file: the watcher rejects it (and counts it), the policy in force stays.
    std::fs::write(&file, "[policies.Global]\ncalling_e2ee = \"Sometimes\"\n").expect("write");
    await_metrics(
        &relay,
        Duration::from_secs(5),
        "broken file rejected",
        |m| metric(m, "blindrelay_policy_reloads_total{result=\"rejected\"}") >= 1.0,
    )
    .await;
    assert_eq!(
        capabilities(&url, &tok(&cfg, "u", "fabrikam")).await,
        E2eeOption::Available,
        "the watcher kept the policy in force"
    );
    // Reloaded by hand: rejected with the line named.
    let err = relay
        .reload_policies()
        .await
        .expect_err("broken file is rejected");
    assert!(err.to_string().contains("line 2"), "{err}");
    let (s, b) = admin(
        &relay,
        "POST",
        "/v1/policy/reload",
        Some(DEV_ADMIN_TOKEN),
        "",
    )
    .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(
        capabilities(&url, &tok(&cfg, "u", "fabrikam")).await,
        E2eeOption::Available
    );
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn call(url: &str, token: String, user: &str, e2ee: bool) -> CallOptions {
    CallOptions {
        relay: url.into(),
        token,
        call: "demo".into(),
        duration: Duration::from_millis(1500),
        e2ee,
        video_kbps: 300,
        name: user.into(),
        ..Default::default()
    }
}

/// Across tenants: one side's switch off turns the call standard and both are told why;
/// a Required policy refuses a peer who does not encrypt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_modes_across_tenants_with_reasons() {
    let dir = std::env::temp_dir().join(format!("policy-modes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("policies.toml");
    std::fs::write(
        &file,
        "[policies.Global]\ncalling_e2ee = \"DisabledUserOverride\"\n[policies.Strict]\ncalling_e2ee = \"Required\"\n[policies.Off]\ncalling_e2ee = \"Disabled\"\n[tenants]\ncontoso = \"Strict\"\n[users]\n\"dave@fabrikam\" = \"Off\"\n",
    )
    .expect("write");
    let mut cfg = loopback_config();
    cfg.policy.file = Some(file);
    let relay = start_relay(cfg.clone(), RelayOptions::default()).await;
    let url = relay.signal_url();

    // alice (fabrikam, override, on) then bob (fabrikam, override, off): standard, because of bob.
    // alice is in the call (her `joined`, seen through a proxy) before bob asks to join.
    let mut first = watch_signal(&relay).await;
    // alice preferred E2EE: she consents to going on unencrypted (a client that requires
    // it leaves instead: tests/tests/malicious_relay.rs).
    let mut a = call(&first.url, tok(&cfg, "alice", "fabrikam"), "alice", true);
    a.e2ee_preferred = true;
    let b = call(&url, tok(&cfg, "bob", "fabrikam"), "bob", false);
    let alice = tokio::spawn(async move { run_call(&a).await });
    first.wait_for("joined", 1, Duration::from_secs(10)).await;
    let sb = run_call(&b).await;
    let sa = alice.await.expect("alice");
    assert!(
        sa.success() && sb.success(),
        "{:?} {:?}",
        sa.error,
        sb.error
    );
    assert_eq!(sa.call_mode, Some(CallMode::Standard));
    assert!(
        sa.mode_reason
            .as_deref()
            .unwrap_or("")
            .contains("bob has not turned on"),
        "{:?}",
        sa.mode_reason
    );
    assert!(
        !sa.e2ee && sa.frames_verified > 10,
        "media flows in the clear once standard"
    );
    assert_eq!(
        sa.downgrade_accepted, sa.mode_reason,
        "the consent is recorded"
    );

    // carol (contoso, Required) and erin (fabrikam, on): E2EE across tenants.
    let mut c = call(&url, tok(&cfg, "carol", "contoso"), "carol", false);
    c.call = "x-tenant".into();
    let mut e = call(&url, tok(&cfg, "erin", "fabrikam"), "erin", true);
    e.call = "x-tenant".into();
    let (sc, se) = tokio::join!(run_call(&c), run_call(&e));
    assert_eq!(
        sc.call_mode,
        Some(CallMode::E2ee),
        "Required encrypts even with the switch off: {:?}",
        sc.error
    );
    assert_eq!(se.call_mode, Some(CallMode::E2ee));
    assert_eq!(sc.verification_code, se.verification_code);
    assert!(sc.frames_decrypted > 10);

    // carol (Required) first, then dave whose policy disables E2EE: dave is refused, with carol named.
    let mut first = watch_signal(&relay).await;
    let mut c = call(&first.url, tok(&cfg, "carol", "contoso"), "carol", true);
    c.call = "strict".into();
    let carol = tokio::spawn(async move { run_call(&c).await });
    first.wait_for("joined", 1, Duration::from_secs(10)).await;
    let mut d = call(&url, tok(&cfg, "dave", "fabrikam"), "dave", false);
    d.call = "strict".into();
    let sd = run_call(&d).await;
    let err = sd.error.expect("dave refused");
    assert_eq!(err.code, "e2ee_required");
    assert!(
        err.message.contains("carol") && err.message.contains("policy"),
        "{}",
        err.message
    );
    let _ = carol.await;
    let m = scrape(&relay).await;
    assert_eq!(
        metric(&m, "blindrelay_joins_total{result=\"e2ee_required\"}"),
        1.0
    );
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
