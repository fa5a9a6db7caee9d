//! The real `fleet` binary as operators run it: signals, exit codes,
//! configuration errors, and what reaches the logs.

use std::time::Duration;

use fleet::redis::dedup::DedupWindow;
use fleet::redis::entry::NewEntry;
use fleet::redis::stream;
use redis::AsyncCommands;
use serde_json::json;

use crate::helpers::{context, fixture, fleet, signal, wait_exit, TestContext};

async fn applied(ctx: &TestContext) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&ctx.db).await.expect("count")
}

/// Enrollment `n % 50` progressing to `n`: the last event per enrollment wins.
pub fn progress_event(n: usize) -> String {
    let updated = chrono::DateTime::parse_from_rfc3339("2025-03-16T00:00:00Z").expect("time")
        + chrono::Duration::seconds(n as i64);
    let mut body: serde_json::Value = serde_json::from_str(&fixture("enrollment.progress")).expect("JSON");
    body["id"] = json!(format!("2025{n:019}"));
    body["created_at"] = json!(updated.to_rfc3339());
    body["payload"]["id"] = json!(n % 50);
    body["payload"]["updated_at"] = json!(updated.to_rfc3339());
    body["payload"]["percentage_completed"] = json!(format!("{}", n % 100));
    body.to_string()
}

async fn enqueue(ctx: &TestContext, n: usize) {
    let body = progress_event(n);
    let mut redis = ctx.redis.clone();
    let event_id = format!("2025{n:019}");
    let entry = NewEntry {
        body: body.as_bytes(),
        topic: "enrollment.progress",
        tenant: "184532",
        event_id: &event_id,
        received_at: chrono::Utc::now(),
        headers: None,
    };
    let dedup = DedupWindow::new(Duration::from_secs(3600), 1000);
    stream::enqueue(&mut redis, &ctx.keys.shard(0), &entry, &dedup).await.expect("enqueue");
}

#[tokio::test]
async fn sigterm_mid_stream_acknowledges_all_it_applied_and_exits_0() {
    let ctx = context().await;
    let mut redis = ctx.redis.clone();
    stream::ensure_group(&mut redis, &ctx.keys.shard(0)).await.expect("group");
    let total = 3000;
    for n in 0..500 {
        enqueue(&ctx, n).await;
    }
    let mut worker = fleet(&ctx, &["worker"])
        .env("FLEET_CONSUMER_NAME", "terminated")
        .env("FLEET_BATCH_SIZE", "20")
        .spawn()
        .expect("spawn fleet worker");
    // Keep events flowing while the worker is stopped.
    let mut sent = 500;
    while applied(&ctx).await < 200 {
        assert!(sent < total, "worker applied nothing");
        enqueue(&ctx, sent).await;
        sent += 1;
    }
    signal(&worker, "TERM");
    while sent < total {
        enqueue(&ctx, sent).await;
        sent += 1;
    }
    let (status, stderr) = wait_exit(&mut worker).await;
    assert!(status.success(), "exit status {status:?}; stderr:\n{stderr}");
    assert!(stderr.contains("worker stopped"), "{stderr}");

    // Everything it applied is acknowledged; it holds nothing pending.
    let applied_by_it = applied(&ctx).await;
    assert!(applied_by_it > 0 && applied_by_it < total as i64, "stopped mid-stream ({applied_by_it})");
    let pending: redis::streams::StreamPendingReply =
        redis.xpending(ctx.keys.shard(0).events(), fleet::redis::GROUP).await.expect("XPENDING");
    assert_eq!(pending.count(), 0, "the terminated worker left entries pending");

    // Another worker finishes the rest; each event is applied once and the
    // state is the in-order one.
    ctx.drain().await;
    let (count, distinct): (i64, i64) = sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM events")
        .fetch_one(&ctx.db)
        .await
        .expect("counts");
    assert_eq!((count, distinct), (total as i64, total as i64));
    let percents: Vec<(i64, f64)> =
        sqlx::query_as("SELECT enrollment_id, percentage_completed FROM enrollments ORDER BY enrollment_id")
            .fetch_all(&ctx.db)
            .await
            .expect("enrollments");
    assert_eq!(percents.len(), 50);
    for (enrollment, percent) in percents {
        let last = (0..total).rev().find(|n| n % 50 == enrollment as usize).expect("a last event");
        let expected = (last % 100) as f64;
        // A fraction scale below 1: "1" is 1.0 => 100 %, see parse::percentage.
        let expected = if expected <= 1.0 { expected * 100.0 } else { expected };
        assert_eq!(percent, expected, "enrollment {enrollment}");
    }
}

#[tokio::test]
async fn intake_process_serves_stops_on_sigterm_and_keeps_secrets_out_of_logs() {
    let ctx = context().await;
    let port = fleet::local_services::free_port().expect("port");
    let secret = "s3cret-never-logged";
    let school_key = "school=key-never-logged";
    let mut intake = fleet(&ctx, &["intake"])
        .env("THINKIFIC_WEBHOOK_SECRET", format!("{secret},second-key"))
        .env("THINKIFIC_SCHOOL_KEYS", format!("watercolor-school={school_key}"))
        .env("PORT", port.to_string())
        .spawn()
        .expect("spawn fleet intake");
    let base = format!("http://127.0.0.1:{port}");
    let client = fleet::http_client::builder().build().expect("an HTTP client");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/readyz")).send().await.map(|r| r.status()).ok() != Some(reqwest::StatusCode::OK) {
        assert!(std::time::Instant::now() < deadline, "intake never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = fixture("enrollment.created");
    let good = client
        .post(format!("{base}/webhooks/thinkific"))
        .header("x-thinkific-hmac-sha256", fleet::intake::sign(secret.as_bytes(), body.as_bytes()))
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(good.status(), 200);
    let mut without_tenant: serde_json::Value = serde_json::from_str(&fixture("user.signup")).expect("JSON");
    without_tenant.as_object_mut().expect("object").remove("tenant_id");
    let without_tenant = without_tenant.to_string();
    let of_the_school = client
        .post(format!("{base}/webhooks/thinkific"))
        .header("x-thinkific-hmac-sha256", fleet::intake::sign(school_key.as_bytes(), without_tenant.as_bytes()))
        .body(without_tenant)
        .send()
        .await
        .expect("request");
    assert_eq!(of_the_school.status(), 200, "a body signed with a school's key needs no tenant_id");
    let bad = client
        .post(format!("{base}/webhooks/thinkific"))
        .header("x-thinkific-hmac-sha256", "00")
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(bad.status(), 401);

    signal(&intake, "TERM");
    let (status, stderr) = wait_exit(&mut intake).await;
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("intake stopped"), "{stderr}");
    assert!(
        !stderr.contains(secret) && !stderr.contains("second-key") && !stderr.contains(school_key),
        "a key reached the logs:\n{stderr}"
    );
    assert!(!stderr.contains("maya.chen@example.com"), "a payload reached the logs at info level:\n{stderr}");
    let mut redis = ctx.redis.clone();
    let reply: redis::streams::StreamRangeReply = redis.xrange_all(ctx.keys.shard(0).events()).await.expect("XRANGE");
    let tenants: Vec<Option<String>> = reply.ids.iter().map(|entry| entry.get("tenant")).collect();
    assert_eq!(tenants, [Some("184532".to_owned()), Some("watercolor-school".to_owned())]);
}

/// Runs `fleet intake` with `env`, expecting it to refuse to start.
async fn refused_intake(ctx: &TestContext, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let port = fleet::local_services::free_port().expect("port");
    let mut command = fleet(ctx, &["intake"]);
    command.env("PORT", port.to_string());
    for (key, value) in env {
        command.env(key, value);
    }
    // Were the setting accepted, the intake would serve until killed.
    let output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .unwrap_or_else(|_| panic!("{env:?}: the intake started instead of refusing"))
        .expect("run fleet");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn the_development_webhook_key_is_refused_outside_fleet_dev() {
    let ctx = context().await;
    let cases = [
        ("THINKIFIC_WEBHOOK_SECRET", "fleet-dev-secret"),
        ("THINKIFIC_WEBHOOK_SECRET", "real-key-one, fleet-dev-secret "),
        ("THINKIFIC_SCHOOL_KEYS", "184532=real-key-two,watercolor-school=fleet-dev-secret"),
    ];
    for (variable, value) in cases {
        let (code, stderr) = refused_intake(&ctx, &[(variable, value)]).await;
        // Exit 2 with `fleet: <why>`, as every configuration error (clap's too).
        assert_eq!(code, Some(2), "{variable}={value}: {stderr}");
        assert!(stderr.contains("fleet: ") && stderr.contains(variable), "{variable}: {stderr}");
        assert!(stderr.contains("set the real signing key"), "{variable}: {stderr}");
        for key in ["fleet-dev-secret", "real-key-one", "real-key-two"] {
            assert!(!stderr.contains(key), "{variable}: a key was printed:\n{stderr}");
        }
    }
}

/// (environment, what the refusal must name)
type KeyCase = (&'static [(&'static str, &'static str)], &'static [&'static str]);

#[tokio::test]
async fn webhook_key_settings_are_refused_without_quoting_a_key() {
    let ctx = context().await;
    let cases: [KeyCase; 5] = [
        (&[], &["THINKIFIC_WEBHOOK_SECRET", "THINKIFIC_SCHOOL_KEYS"]),
        (&[("THINKIFIC_SCHOOL_KEYS", "184532=hidden-key,school a=hidden-key-2")], &["THINKIFIC_SCHOOL_KEYS", "item 2"]),
        (&[("THINKIFIC_SCHOOL_KEYS", "hidden-key")], &["THINKIFIC_SCHOOL_KEYS", "school=key"]),
        (&[("THINKIFIC_SCHOOL_KEYS", "184532=")], &["THINKIFIC_SCHOOL_KEYS"]),
        (
            &[("THINKIFIC_SCHOOL_KEYS", "184532=hidden-key"), ("THINKIFIC_WEBHOOK_SECRET", "hidden-key")],
            &["THINKIFIC_WEBHOOK_SECRET", "THINKIFIC_SCHOOL_KEYS"],
        ),
    ];
    for (env, named) in cases {
        let (code, stderr) = refused_intake(&ctx, env).await;
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        for name in named {
            assert!(stderr.contains(name), "{env:?}: the message does not name {name}:\n{stderr}");
        }
        assert!(!stderr.contains("hidden-key"), "{env:?}: a key was printed:\n{stderr}");
    }
}

/// (arguments, environment, the setting the refusal must name)
type ConfigCase = (Vec<&'static str>, Vec<(&'static str, &'static str)>, &'static str);

#[tokio::test]
async fn bad_configuration_is_refused_with_a_message_naming_the_setting() {
    let ctx = context().await;
    let cases: Vec<ConfigCase> = vec![
        (vec!["worker"], vec![("FLEET_BATCH_SIZE", "0")], "FLEET_BATCH_SIZE"),
        (vec!["worker"], vec![("REDIS_URL", "http://localhost")], "REDIS_URL"),
        (vec!["worker"], vec![("DATABASE_URL", "not a url")], "DATABASE_URL"),
        (vec!["worker"], vec![("FLEET_KEY_PREFIX", "has space")], "FLEET_KEY_PREFIX"),
        (vec!["intake"], vec![("THINKIFIC_WEBHOOK_SECRET", " , ")], "THINKIFIC_WEBHOOK_SECRET"),
        (
            vec!["intake"],
            vec![("THINKIFIC_WEBHOOK_SECRET", "k"), ("PORT", "8080"), ("FLEET_LISTEN", "127.0.0.1:1")],
            "FLEET_LISTEN",
        ),
        (vec!["worker"], vec![("FLEET_CONSUMER_NAME", "two words")], "FLEET_CONSUMER_NAME"),
        (vec!["api"], vec![], "FLEET_API_TOKEN"),
        (
            vec!["api"],
            vec![("FLEET_API_TOKEN", "t"), ("PORT", "8080"), ("FLEET_API_LISTEN", "127.0.0.1:1")],
            "FLEET_API_LISTEN",
        ),
    ];
    for (args, env, named) in cases {
        let mut command = fleet(&ctx, &args);
        for (key, value) in &env {
            command.env(key, value);
        }
        let output = command.output().await.expect("run fleet");
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Exit 2, as clap's own usage errors: a supervisor can tell them from a crash.
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}:\n{stderr}");
        assert!(stderr.contains(named), "{args:?} {env:?}: the message does not name {named}:\n{stderr}");
    }
}

#[tokio::test]
async fn a_worker_refuses_an_unmigrated_database_until_fleet_migrate_runs() {
    let ctx = context().await;
    sqlx::query("DROP SCHEMA public CASCADE").execute(&ctx.db).await.expect("unmigrate");
    sqlx::query("CREATE SCHEMA public").execute(&ctx.db).await.expect("empty schema");
    // Exit 4, its own code, from the worker and the read API alike.
    for args in [&["worker"][..], &["api"][..]] {
        let output = fleet(&ctx, args).env("FLEET_API_TOKEN", "t").env("PORT", "0").output().await.expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(4), "{args:?}: {stderr}");
        assert!(stderr.contains("fleet migrate"), "{args:?}: {stderr}");
    }

    let output = fleet(&ctx, &["migrate"]).output().await.expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('events', 'enrollments', 'users', 'courses', 'orders')",
    )
    .fetch_one(&ctx.db)
    .await
    .expect("tables");
    assert_eq!(tables, 5);
}

#[tokio::test]
async fn the_api_process_serves_cached_reads_and_stops_on_sigterm() {
    let ctx = context().await;
    ctx.add_course("184532", 2871345).await;
    let port = fleet::local_services::free_port().expect("port");
    let mut api = fleet(&ctx, &["api"])
        .env("FLEET_API_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLEET_API_TOKEN", "token-never-logged")
        .spawn()
        .expect("spawn fleet api");
    let client = fleet::http_client::builder().build().expect("an HTTP client");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/readyz")).send().await.map(|r| r.status()).ok() != Some(reqwest::StatusCode::OK) {
        assert!(std::time::Instant::now() < deadline, "api never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path = format!("{base}/api/dashboard/cached?tenant_id=184532");
    assert_eq!(client.get(&path).send().await.expect("request").status(), 401);
    let first = client.get(&path).bearer_auth("token-never-logged").send().await.expect("request");
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-cache"], "MISS");
    let second = client.get(&path).bearer_auth("token-never-logged").send().await.expect("request");
    assert_eq!(second.headers()["x-cache"], "HIT");
    signal(&api, "TERM");
    let (status, stderr) = wait_exit(&mut api).await;
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("read API stopped"), "{stderr}");
    assert!(!stderr.contains("token-never-logged"), "{stderr}");
}

/// A real `fleet intake` reports its dependencies to the fleet (what the
/// console's overview lists), ready once Redis answers.
#[tokio::test]
async fn a_running_intake_reports_its_dependencies_to_the_fleet() {
    let ctx = context().await;
    let port = fleet::local_services::free_port().expect("port");
    let mut intake = fleet(&ctx, &["intake"])
        .env("PORT", port.to_string())
        .env("THINKIFIC_WEBHOOK_SECRET", "a-real-key")
        .spawn()
        .expect("spawn fleet intake");
    let mut redis = ctx.redis.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let report = loop {
        let reports = fleet::redis::roles::recent(&mut redis, &ctx.keys, chrono::Utc::now()).await.expect("reports");
        if let Some(report) = reports.into_iter().find(|report| report.role == "intake") {
            break report;
        }
        assert!(tokio::time::Instant::now() < deadline, "the intake never reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = intake.kill().await;
    assert!(report.ready, "{report:?}");
    assert_eq!(report.dependencies.len(), 1, "{report:?}");
    assert_eq!((report.dependencies[0].name.as_str(), report.dependencies[0].state.as_str()), ("redis", "up"));
}
