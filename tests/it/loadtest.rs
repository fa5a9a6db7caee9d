//! `fleet loadtest` run as operators run it, against a real `fleet intake`
//! and `fleet worker` on the test's Redis prefix and database: its counts
//! are right, a wrong key shows as 401s, and it refuses any target but this
//! machine. Its speed is never asserted.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Child;

use crate::helpers::{context, eventually, fleet, TestContext};

const KEY: &str = "loadtest-signing-key";

/// Starts `fleet <role>` quietly (its log would fill an unread pipe) and
/// waits until `health` answers `/readyz`; the process stops when dropped.
async fn start(ctx: &TestContext, role: &str, env: &[(&str, String)], health: &str) -> Child {
    let mut command = fleet(ctx, &[role]);
    command.env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let process = command.spawn().expect("spawn fleet");
    eventually("ready", Duration::from_secs(30), || async {
        matches!(crate::helpers::get(format!("{health}/readyz")).await, Ok(response) if response.status() == 200)
    })
    .await;
    process
}

/// An intake on a free port signing with [`KEY`]; its base URL.
async fn intake(ctx: &TestContext) -> (Child, String) {
    let port = fleet::local_services::free_port().expect("port");
    let base = format!("http://127.0.0.1:{port}");
    let env = [("THINKIFIC_WEBHOOK_SECRET", KEY.to_owned()), ("FLEET_LISTEN", format!("127.0.0.1:{port}"))];
    (start(ctx, "intake", &env, &base).await, base)
}

/// A worker with its health listener on a free port; the URL of its metrics.
async fn worker(ctx: &TestContext) -> (Child, String) {
    let port = fleet::local_services::free_port().expect("port");
    let base = format!("http://127.0.0.1:{port}");
    let env = [
        ("FLEET_HEALTH_LISTEN", format!("127.0.0.1:{port}")),
        ("FLEET_CONSUMER_NAME", "loadtest-worker".to_owned()),
        ("FLEET_BLOCK_MS", "100".to_owned()),
    ];
    (start(ctx, "worker", &env, &base).await, format!("{base}/metrics"))
}

/// Runs `fleet loadtest --json` with `args`; (exit code, report, stderr).
async fn loadtest(ctx: &TestContext, args: &[&str], key: &str) -> (Option<i32>, Option<Value>, String) {
    let mut command = fleet(ctx, &[&["loadtest", "--json"][..], args].concat());
    command.env("THINKIFIC_WEBHOOK_SECRET", key);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("fleet loadtest ends")
        .expect("run fleet loadtest");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = serde_json::from_slice(&output.stdout).ok();
    (output.status.code(), report, stderr)
}

#[tokio::test]
async fn a_small_run_sends_every_webhook_once_and_sees_each_event_applied() {
    let ctx = context().await;
    let (_intake, url) = intake(&ctx).await;
    let (_worker, metrics) = worker(&ctx).await;
    let args = [
        "--url",
        &url,
        "--metrics-url",
        &metrics,
        "--events",
        "300",
        "--duplicate-rate",
        "0.2",
        "--courses",
        "12",
        "--users",
        "60",
        "--concurrency",
        "8",
        "--tenant",
        "loadtest-school",
        "--seed",
        "7",
    ];
    // DATABASE_URL (the test's database) is set: it counts rows there too.
    let (code, report, stderr) = loadtest(&ctx, &args, KEY).await;
    let report = report.unwrap_or_else(|| panic!("no JSON report; stderr:\n{stderr}"));
    assert_eq!(code, Some(0), "{report:#}\n{stderr}");

    let generated = &report["generated"];
    assert_eq!(
        (&generated["events"], &generated["duplicates"], &generated["requests"]),
        (&300.into(), &60.into(), &360.into())
    );
    let answers = &report["intake"]["answers"];
    assert_eq!(answers["accepted"], 300, "{report:#}");
    assert_eq!(answers["duplicate"], 60, "{report:#}");
    assert_eq!(answers["by_status"], serde_json::json!({"200": 360}), "{report:#}");
    assert_eq!(answers["transport_errors"], 0, "{report:#}");
    assert_eq!(report["intake"]["requests"], 360);
    assert!(report["intake"]["latency_ms"]["p99"].as_f64().is_some(), "{report:#}");

    let drain = &report["drain"];
    assert_eq!(drain["observed_by"], serde_json::json!(["metrics", "postgres"]), "{report:#}");
    assert_eq!((&drain["expected"], &drain["complete"]), (&300.into(), &true.into()), "{report:#}");
    assert_eq!(drain["applied_by_metrics"], 300, "{report:#}");
    assert_eq!(drain["applied_in_postgres"], 300, "{report:#}");
    assert!(drain["drain_seconds"].as_f64().is_some() && drain["applied_per_second"].as_f64().is_some());
    assert_eq!(report["freshness"]["samples"], 300, "{report:#}");
    assert!(report["freshness"]["p99_ms"].as_f64().is_some(), "{report:#}");
    assert_eq!(report["passed"], true);

    // What the fleet holds agrees: each distinct event once, the school's own.
    let (events, tenants): (i64, i64) = sqlx::query_as("SELECT count(*), count(DISTINCT tenant_id) FROM events")
        .fetch_one(&ctx.db)
        .await
        .expect("count");
    assert_eq!((events, tenants), (300, 1));
    let enrollments: i64 = sqlx::query_scalar("SELECT count(*) FROM enrollments WHERE tenant_id = 'loadtest-school'")
        .fetch_one(&ctx.db)
        .await
        .expect("count");
    assert_eq!(enrollments, generated["enrollments"].as_i64().expect("a count"));
    assert!(!stderr.contains(KEY), "the signing key reached the output:\n{stderr}");
}

#[tokio::test]
async fn a_wrong_key_shows_as_401_answers_and_fails_the_run() {
    let ctx = context().await;
    let (_intake, url) = intake(&ctx).await;
    let (code, report, stderr) =
        loadtest(&ctx, &["--url", &url, "--events", "40", "--duplicate-rate", "0"], "not-the-intake-key").await;
    let report = report.unwrap_or_else(|| panic!("no JSON report; stderr:\n{stderr}"));
    assert_eq!(code, Some(1), "{report:#}\n{stderr}");
    let answers = &report["intake"]["answers"];
    assert_eq!(answers["by_status"], serde_json::json!({"401": 40}), "{report:#}");
    assert_eq!((&answers["accepted"], &answers["duplicate"]), (&0.into(), &0.into()));
    assert_eq!(report["passed"], false);
    assert!(stderr.contains("40 of 40 webhooks were not accepted"), "{stderr}");
    assert!(!stderr.contains("not-the-intake-key"), "the signing key reached the output:\n{stderr}");
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 0, "a refused webhook reached the stream");
}

#[tokio::test]
async fn a_target_other_than_this_machine_is_refused_before_anything_is_sent() {
    let ctx = context().await;
    // It would read these metrics first, were it not refused: nothing may connect.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics = format!("http://{}/metrics", listener.local_addr().expect("address"));
    for target in ["http://10.1.2.3:8080", "http://[2001:db8::7]:8080/webhooks/thinkific"] {
        let (code, report, stderr) = loadtest(&ctx, &["--url", target, "--metrics-url", &metrics], KEY).await;
        assert_eq!(code, Some(2), "{target}: {stderr}");
        assert!(report.is_none(), "{target}: a report was printed");
        assert!(stderr.contains("refusing to load-test") && stderr.contains("--allow-remote"), "{stderr}");
    }
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "the refused run connected to its metrics URL");
}

#[tokio::test]
async fn metrics_urls_are_held_to_the_loopback_rule_and_never_followed_elsewhere() {
    let ctx = context().await;
    let intake = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = format!("http://{}", intake.local_addr().expect("address"));
    // Another machine's metrics: refused before anything is sent.
    let (code, report, stderr) =
        loadtest(&ctx, &["--url", &target, "--metrics-url", "http://192.0.2.1:9100/metrics"], KEY).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(report.is_none());
    assert!(stderr.contains("--metrics-url") && stderr.contains("--allow-remote"), "{stderr}");
    let accepted = tokio::time::timeout(Duration::from_millis(200), intake.accept()).await;
    assert!(accepted.is_err(), "the refused run connected to its target");

    // A loopback metrics URL that redirects: the redirect is not followed.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let location = format!("http://{}/metrics", elsewhere.local_addr().expect("address"));
    let redirecting = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics = format!("http://{}/metrics", redirecting.local_addr().expect("address"));
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = redirecting.accept().await {
            let mut request = [0u8; 2048];
            let _ = socket.read(&mut request).await;
            let answer =
                format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n");
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    let (code, _, stderr) = loadtest(&ctx, &["--url", &target, "--metrics-url", &metrics], KEY).await;
    assert_ne!(code, Some(0), "{stderr}");
    let followed = tokio::time::timeout(Duration::from_millis(300), elsewhere.accept()).await;
    assert!(followed.is_err(), "the redirect was followed");
}
