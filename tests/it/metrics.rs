//! `/metrics`, `/readyz` and JSON logs: scrape, act, scrape again.
//!
//! The recorder is global to a process and the suite runs tests in
//! parallel, so in-process tests only read series labelled with a topic of
//! their own; counts that carry no such label (cache outcomes, the backlog
//! gauges, answers without a parsed topic) are read from a real `fleet`
//! process, which only this test talks to.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet::redis::GROUP;
use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::helpers::{
    api_tuning, context, context_on, event, eventually, fixture, fleet, post_signed, scratch_dir, signal, wait_exit,
    TestContext, SECRET,
};

/// One scrape: each series (name and labels as written) and its value.
#[derive(Debug, Default)]
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut series = BTreeMap::new();
        for line in text.lines().filter(|line| !line.starts_with('#') && !line.trim().is_empty()) {
            let (name, value) = line.rsplit_once(' ').expect("a sample line is `series value`");
            series.insert(name.to_owned(), value.parse::<f64>().expect("a numeric value"));
        }
        Self(series)
    }

    /// The sum of the series of `name` carrying every label of `labels`
    /// (0 when none does).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
                series_name == name
                    && labels.iter().all(|(key, value)| series_labels.contains(&format!("{key}=\"{value}\"")))
            })
            .map(|(_, value)| value)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.0.keys().any(|series| series == name || series.starts_with(&format!("{name}{{")))
    }
}

async fn scrape(base: &str) -> Scrape {
    let response = crate::helpers::get(format!("{base}/metrics")).await.expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    Scrape::parse(&response.text().await.expect("body"))
}

async fn readiness(base: &str) -> (u16, Value) {
    let response = crate::helpers::get(format!("{base}/readyz")).await.expect("GET /readyz");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

/// Waits until `base` answers `/readyz` with 200.
async fn wait_ready(base: &str) {
    eventually("ready", Duration::from_secs(20), || async {
        matches!(crate::helpers::get(format!("{base}/readyz")).await, Ok(response) if response.status() == 200)
    })
    .await;
}

/// A signed body of a topic no other test uses (`<resource>.created`).
fn body_of_topic(resource: &str, id: u64) -> String {
    event("enrollment.created", json!({ "resource": resource, "id": format!("9{id:020}") }), json!({}))
}

fn unique_resource() -> String {
    format!("metrics{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

#[tokio::test]
async fn webhooks_applied_events_and_freshness_of_unhandled_topics_are_counted_as_other_in_process() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    let base = format!("http://{}", intake.address);
    let resource = unique_resource();
    let topic = format!("{resource}.created");
    let before = scrape(&base).await;

    for id in 0..3 {
        assert_eq!(post_signed(&intake, &body_of_topic(&resource, id), SECRET).await.status(), 200);
    }
    assert_eq!(post_signed(&intake, &body_of_topic(&resource, 0), SECRET).await.status(), 200, "a duplicate");
    let no_tenant = event("enrollment.created", json!({ "resource": resource, "tenant_id": null }), json!({}));
    assert_eq!(post_signed(&intake, &no_tenant, SECRET).await.status(), 400);
    ctx.drain().await;
    // The refresh that follows a batch records freshness just before it acknowledges.
    let after = scrape(&base).await;

    // A topic Fleet does not handle is counted as `other`: senders cannot add series.
    // (Other tests may count `other` at the same time: at least ours.)
    let delta = |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert!(!after.0.keys().any(|series| series.contains(&topic)), "no series names {topic}");
    let webhooks = "fleet_webhooks_total";
    let other = ("topic", fleet::telemetry::metrics::OTHER_TOPIC);
    assert!(delta(webhooks, &[other, ("answer", "accepted")]) >= 3.0);
    assert!(delta(webhooks, &[other, ("answer", "duplicate")]) >= 1.0);
    assert!(delta(webhooks, &[other, ("answer", "invalid")]) >= 1.0);
    assert!(delta("fleet_events_applied_total", &[other]) >= 3.0);
    assert!(delta("fleet_freshness_seconds_count", &[other]) >= 3.0);
    assert!(delta("fleet_freshness_seconds_sum", &[other]) > 0.0);
    assert!(delta("fleet_freshness_seconds_bucket", &[other, ("le", "60")]) >= 3.0, "explicit buckets up to a minute");
    assert!(after.has("fleet_intake_request_duration_seconds_bucket"));
    intake.stop().await;
}

/// A real `fleet intake` on a free port; its base URL.
async fn intake_process(ctx: &TestContext, envs: &[(&str, &str)]) -> (tokio::process::Child, String) {
    let port = fleet::local_services::free_port().expect("port");
    let mut command = fleet(ctx, &["intake"]);
    command.env("THINKIFIC_WEBHOOK_SECRET", SECRET).env("PORT", port.to_string());
    for (key, value) in envs {
        command.env(key, value);
    }
    let child = command.spawn().expect("spawn fleet intake");
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await;
    (child, base)
}

async fn post(base: &str, body: &str, signature: &str) -> u16 {
    fleet::http_client::builder()
        .build()
        .expect("an HTTP client")
        .post(format!("{base}/webhooks/thinkific"))
        .header("x-thinkific-hmac-sha256", signature)
        .body(body.to_owned())
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_intake_process_counts_every_answer_and_its_latency() {
    let ctx = context().await;
    let (mut intake, base) = intake_process(&ctx, &[]).await;
    let before = scrape(&base).await;
    assert_eq!(before.get("fleet_dependency_up", &[("dependency", "redis")]), 1.0);

    let sign = |body: &str| fleet::intake::sign(SECRET.as_bytes(), body.as_bytes());
    let body = fixture("enrollment.created");
    assert_eq!(post(&base, &body, &sign(&body)).await, 200);
    assert_eq!(post(&base, &body, &sign(&body)).await, 200);
    assert_eq!(post(&base, &body, "00").await, 401);
    assert_eq!(post(&base, "not json", &sign("not json")).await, 400);
    let after = scrape(&base).await;

    let count = |topic: &str, answer: &str| {
        after.get("fleet_webhooks_total", &[("topic", topic), ("answer", answer)])
            - before.get("fleet_webhooks_total", &[("topic", topic), ("answer", answer)])
    };
    assert_eq!(count("enrollment.created", "accepted"), 1.0);
    assert_eq!(count("enrollment.created", "duplicate"), 1.0);
    assert_eq!(count("unknown", "unauthorized"), 1.0);
    assert_eq!(count("unknown", "invalid"), 1.0);
    let latency = "fleet_intake_request_duration_seconds_count";
    assert_eq!(after.get(latency, &[]) - before.get(latency, &[]), 4.0);
    assert_eq!(after.get("fleet_intake_request_duration_seconds_bucket", &[("le", "2.5")]), after.get(latency, &[]));
    signal(&intake, "TERM");
    let (status, _) = wait_exit(&mut intake).await;
    assert!(status.success());
}

#[tokio::test]
async fn the_worker_process_exports_its_progress_failures_and_the_backlog() {
    let ctx = context().await;
    ctx.refuse_enrollment_666().await;
    let good = |n: u64| {
        event("enrollment.created", json!({ "id": format!("8{n:020}") }), json!({ "id": 1000 + n, "course_id": 77 }))
    };
    // One entry a consumer of the test holds (pending, never acknowledged),
    // one retry due in an hour, one old dead letter.
    let held = ctx.enqueue(&good(99)).await;
    let mut redis = ctx.redis.clone();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("ghost")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(ctx.keys.shard(0).events())
        .arg(">")
        .query_async(&mut redis)
        .await
        .expect("XREADGROUP");
    let _: () = redis
        .zadd(ctx.keys.shard(0).retries(), "[]", chrono::Utc::now().timestamp_millis() + 3_600_000)
        .await
        .expect("ZADD");
    let _: String = redis.xadd(ctx.keys.shard(0).dead_letters(), "1000-1", &[("error", "old")]).await.expect("XADD");
    for n in 0..3 {
        ctx.enqueue(&good(n)).await;
    }
    ctx.enqueue(&event("enrollment.created", json!({ "id": format!("7{:020}", 666) }), json!({ "id": 666 }))).await;

    let port = fleet::local_services::free_port().expect("port");
    let base = format!("http://127.0.0.1:{port}");
    let mut worker = fleet(&ctx, &["worker"])
        .env("FLEET_HEALTH_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLEET_BLOCK_MS", "100")
        .env("FLEET_MAX_ATTEMPTS", "2")
        .env("FLEET_RETRY_BASE_MS", "100")
        .env("FLEET_RETRY_CAP_MS", "200")
        .env("FLEET_CLAIM_IDLE_MS", "600000")
        .spawn()
        .expect("spawn fleet worker");
    wait_ready(&base).await;
    eventually("the poison is dead-lettered", Duration::from_secs(30), || async {
        ctx.stream_len(&ctx.keys.shard(0).dead_letters()).await == 2
    })
    .await;

    // Counters settle with the batch; gauges within a sampling interval. The
    // stream length is waited for too: the dead-letter-age job sets
    // `fleet_dead_letters` on its own schedule, possibly before the backlog
    // sample that sees the poison's retry appended.
    let topic = [("topic", "enrollment.created")];
    let stream_length = ctx.stream_len(&ctx.keys.shard(0).events()).await as f64;
    let mut last = Scrape::default();
    let settled = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            last = scrape(&base).await;
            if last.get("fleet_events_applied_total", &topic) == 3.0
                && last.get("fleet_dead_letters", &[]) == 2.0
                && last.get("fleet_stream_length", &[]) == stream_length
                && last.get("fleet_freshness_seconds_count", &topic) == 3.0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "the numbers never settled: {last:#?}");
    let m = scrape(&base).await;
    assert_eq!(m.get("fleet_events_retried_total", &topic), 1.0, "the poison's first refusal");
    assert_eq!(m.get("fleet_events_dead_lettered_total", &[("topic", "enrollment.created"), ("kind", "event")]), 1.0);
    assert!(m.get("fleet_batch_size_count", &[]) >= 2.0, "the first batch and the retry");
    assert!(m.get("fleet_batch_size_sum", &[]) >= 5.0, "every entry settled (the held one is not ours)");
    assert!(m.get("fleet_batch_duration_seconds_count", &[]) >= 2.0);
    assert!(m.get("fleet_cache_prewarms_total", &[]) > 0.0, "course 77's values were prewarmed");
    assert!(m.get("fleet_cache_invalidations_total", &[]) > 0.0);
    assert!(m.get("fleet_worker_progress_total", &[]) >= 3.0);
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - m.get("fleet_worker_last_progress_timestamp_seconds", &[])).abs() < 10.0);
    assert_eq!(m.get("fleet_dependency_up", &[("dependency", "redis")]), 1.0);
    assert_eq!(m.get("fleet_dependency_up", &[("dependency", "postgres")]), 1.0);

    // The backlog, as Redis has it.
    assert_eq!(m.get("fleet_stream_length", &[]), ctx.stream_len(&ctx.keys.shard(0).events()).await as f64);
    assert_eq!(m.get("fleet_consumer_group_lag", &[]), 0.0);
    assert_eq!(m.get("fleet_pending_entries", &[]), 1.0, "the ghost's entry");
    let held_ms: f64 = held.split('-').next().and_then(|ms| ms.parse().ok()).expect("an id");
    let age = m.get("fleet_oldest_pending_age_seconds", &[]);
    let expected = chrono::Utc::now().timestamp_millis() as f64 / 1000.0 - held_ms / 1000.0;
    assert!(age > 0.0 && age <= expected + 0.01, "{age} vs {expected}");
    assert_eq!(m.get("fleet_retry_backlog", &[]), 1.0);
    assert!(m.get("fleet_dead_letter_oldest_age_seconds", &[]) > 1.0e9, "the dead letter of 1970");

    let (status, body) = readiness(&base).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dependencies"]["postgres"]["state"], "up");
    signal(&worker, "TERM");
    let (status, stderr) = wait_exit(&mut worker).await;
    assert!(status.success(), "{stderr}");

    // stdout is a pipe, so the worker logged JSON; its lines about the poison name it.
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}")))
        .collect();
    assert!(lines.iter().all(Value::is_object));
    let retry = lines
        .iter()
        .find(|line| line["message"] == "event refused by Postgres; retry scheduled")
        .unwrap_or_else(|| panic!("no retry line in {stderr}"));
    assert_eq!(retry["event_id"], format!("7{:020}", 666));
    assert_eq!(retry["topic"], "enrollment.created");
    assert_eq!(retry["tenant"], "184532");
}

/// A real `fleet api` reading with the token `metrics-token`, once ready,
/// and its base URL.
async fn api_process(ctx: &TestContext) -> (tokio::process::Child, String) {
    let port = fleet::local_services::free_port().expect("port");
    let base = format!("http://127.0.0.1:{port}");
    let api = fleet(ctx, &["api"])
        .env("PORT", port.to_string())
        .env("FLEET_API_TOKEN", "metrics-token")
        .spawn()
        .expect("spawn fleet api");
    wait_ready(&base).await;
    (api, base)
}

#[tokio::test]
async fn the_api_process_counts_cache_hits_and_misses() {
    let ctx = context().await;
    ctx.add_course("metrics-school", 5).await;
    let (mut api, base) = api_process(&ctx).await;
    let before = scrape(&base).await;
    let client = fleet::http_client::builder().build().expect("an HTTP client");
    let read = |path: &str| client.get(format!("{base}{path}")).bearer_auth("metrics-token").send();
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let response = read("/api/statistics/cached?tenant_id=metrics-school&course_id=5").await.expect("read");
        outcomes.push(fleet::api::cache_status(response.headers()).unwrap_or_default().to_owned());
    }
    // The dashboard was never read: a miss, computed and cached.
    let response = read("/api/dashboard/cached?tenant_id=metrics-school").await.expect("read");
    outcomes.push(fleet::api::cache_status(response.headers()).unwrap_or_default().to_owned());
    assert_eq!(outcomes, ["MISS", "HIT", "HIT", "MISS"]);
    let after = scrape(&base).await;
    let delta = |outcome: &str| {
        after.get("fleet_cache_requests_total", &[("outcome", outcome)])
            - before.get("fleet_cache_requests_total", &[("outcome", outcome)])
    };
    assert_eq!((delta("hit"), delta("miss"), delta("stale"), delta("bypass")), (2.0, 2.0, 0.0, 0.0));

    let (status, body) = readiness(&base).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({ "status": "ready", "dependencies": { "postgres": { "state": "up" }, "redis": { "state": "up" } } })
    );
    assert_eq!(after.get("fleet_dependency_up", &[("dependency", "postgres")]), 1.0);
    signal(&api, "TERM");
    let (status, _) = wait_exit(&mut api).await;
    assert!(status.success());
}

#[tokio::test]
async fn readiness_names_the_dependency_that_is_down_and_recovers() {
    let dir = scratch_dir("redis-readiness");
    let mut redis = fleet::local_services::LocalRedis::start(&dir, true).await.expect("own redis");
    let ctx = context_on(&redis.url()).await;
    let intake = ctx.spawn_intake().await;
    let intake_base = format!("http://{}", intake.address);
    let api = ctx.spawn_api(api_tuning()).await;
    let api_base = format!("http://{}", api.address);
    let worker = fleet::worker::Worker::connect(
        ctx.db.clone(),
        &ctx.redis_target(),
        ctx.keys.clone(),
        ctx.worker_settings("readiness"),
    )
    .await
    .expect("worker connects");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let worker_base = format!("http://{}", listener.local_addr().expect("address"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(fleet::runtime::serve(
        listener,
        fleet::worker::health::router(worker.health()),
        fleet::runtime::HttpSettings::default(),
        shutdown.clone(),
    ));
    let worker = crate::helpers::WorkerHandle::run(worker);

    for base in [&intake_base, &api_base, &worker_base] {
        let (status, body) = readiness(base).await;
        assert_eq!((status, &body["status"]), (200, &json!("ready")), "{base}: {body}");
        assert_eq!(body["dependencies"]["redis"]["state"], "up", "{base}: {body}");
    }
    assert_eq!(readiness(&worker_base).await.1["dependencies"]["postgres"]["state"], "up");

    redis.stop();
    let (status, body) = readiness(&intake_base).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["dependencies"]["redis"]["state"], "down");
    assert!(body["dependencies"]["redis"]["error"].as_str().is_some_and(|error| !error.is_empty()), "{body}");
    let (status, body) = readiness(&api_base).await;
    assert_eq!(status, 200, "the API answers from Postgres without Redis: {body}");
    assert_eq!(body["dependencies"]["redis"]["state"], "down");
    assert_eq!(body["dependencies"]["postgres"]["state"], "up");
    eventually("the worker reports Redis down", Duration::from_secs(20), || async {
        let (status, body) = readiness(&worker_base).await;
        status == 503
            && body["dependencies"]["redis"]["state"] == "down"
            && body["dependencies"]["postgres"]["state"] == "up"
    })
    .await;
    assert_eq!(crate::helpers::get(format!("{intake_base}/healthz")).await.expect("healthz").status(), 200);

    redis.restart().await.expect("redis again");
    for base in [&intake_base, &api_base, &worker_base] {
        eventually("ready again", Duration::from_secs(30), || async {
            let (status, body) = readiness(base).await;
            status == 200 && body["dependencies"]["redis"]["state"] == "up"
        })
        .await;
    }
    shutdown.cancel();
    worker.stop().await;
    intake.stop().await;
}

#[tokio::test]
async fn logs_are_one_json_object_per_line_with_the_event_named() {
    let ctx = context().await;
    let (mut intake, base) = intake_process(&ctx, &[("LOG_FORMAT", "json")]).await;
    let body = fixture("enrollment.created");
    assert_eq!(post(&base, &body, &fleet::intake::sign(SECRET.as_bytes(), body.as_bytes())).await, 200);
    signal(&intake, "TERM");
    let (status, stderr) = wait_exit(&mut intake).await;
    assert!(status.success(), "{stderr}");
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}")))
        .collect();
    assert!(lines.iter().all(Value::is_object), "{stderr}");
    let received = lines.iter().find(|line| line["message"] == "webhook received").expect("a line about the event");
    assert_eq!(received["event_id"], "20250314153012345678901");
    assert_eq!(received["topic"], "enrollment.created");
    assert_eq!(received["tenant"], "184532");
    assert_eq!(received["level"], "INFO");

    // LOG_FORMAT=text forces text, even into a pipe.
    let (mut intake, _) = intake_process(&ctx, &[("LOG_FORMAT", "text")]).await;
    signal(&intake, "TERM");
    let (_, stderr) = wait_exit(&mut intake).await;
    let first = stderr.lines().next().expect("a line");
    assert!(serde_json::from_str::<Value>(first).is_err(), "{first}");
    assert!(first.contains("intake listening"), "{first}");
}

#[tokio::test]
async fn with_a_metrics_listener_the_public_ports_serve_no_metrics() {
    let ctx = context().await;
    let port = || fleet::local_services::free_port().expect("a port");
    let (intake_metrics, api_metrics) = (port(), port());
    let settings = fleet::intake::Settings {
        metrics_listen: Some(([127, 0, 0, 1], intake_metrics).into()),
        ..crate::helpers::intake_settings(SECRET)
    };
    let intake = ctx.spawn_intake_with(settings).await;
    let api_settings =
        fleet::api::Settings { metrics_listen: Some(([127, 0, 0, 1], api_metrics).into()), ..api_tuning() };
    let api = fleet::api::Application::build(
        ([127, 0, 0, 1], 0).into(),
        ctx.db.clone(),
        &ctx.redis_target(),
        ctx.keys.clone(),
        fleet::redis::cache::Ttls::default(),
        api_settings,
    )
    .await
    .expect("the read API starts");
    let api_url = format!("http://{}/metrics", api.address());
    let stop_api = tokio_util::sync::CancellationToken::new();
    tokio::spawn(api.run_until_stopped(stop_api.clone()));
    assert_eq!(crate::helpers::get(intake.url("/metrics")).await.expect("GET").status(), 404);
    assert_eq!(crate::helpers::get(&api_url).await.expect("GET").status(), 404);
    assert_eq!(post_signed(&intake, &fixture("enrollment.created"), SECRET).await.status(), 200);
    for port in [intake_metrics, api_metrics] {
        let scrape = scrape(&format!("http://127.0.0.1:{port}")).await;
        assert!(scrape.has("fleet_webhooks_total"), "the metrics listener on {port} serves the metrics");
    }
    assert_eq!(crate::helpers::get(intake.url("/readyz")).await.expect("GET").status(), 200);
    intake.stop().await;
    stop_api.cancel();
}

/// The series `docs/operations.md` explains, by name, from its table.
fn documented_series() -> std::collections::BTreeSet<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md");
    let doc = std::fs::read_to_string(&path).expect("docs/operations.md");
    let table = doc.split("## Metrics").nth(1).expect("a Metrics section").split("\n## ").next().unwrap_or_default();
    table
        .lines()
        .filter(|line| line.starts_with("| `fleet_"))
        .flat_map(|line| line.split('|').nth(1).unwrap_or_default().split(',').map(str::to_owned).collect::<Vec<_>>())
        .map(|name| name.trim().trim_matches('`').to_owned())
        .collect()
}

/// Every series the fleet defines is explained in docs/operations.md, and
/// nothing else is; every series a real process serves is one of them; and
/// labelled counters are there at 0 before their first count.
#[tokio::test]
async fn every_series_served_is_documented_and_labelled_counters_start_at_zero() {
    let documented = documented_series();
    let defined: std::collections::BTreeSet<String> =
        fleet::telemetry::metrics::SERIES.iter().map(|name| (*name).to_owned()).collect();
    assert_eq!(documented, defined, "docs/operations.md's table against telemetry::metrics::SERIES");

    let ctx = context().await;
    let (mut api, base) = api_process(&ctx).await;
    let served = scrape(&base).await;
    let _ = api.kill().await;
    for series in served.0.keys().filter(|series| series.starts_with("fleet_")) {
        let name = series.split('{').next().unwrap_or_default();
        let base_name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|base| defined.contains(*base)))
            .unwrap_or(name);
        assert!(documented.contains(base_name), "{series} is served but not documented");
    }
    // Before any read: every outcome, and every answer of every topic, at 0.
    for outcome in ["hit", "miss", "stale", "bypass"] {
        let series = format!("fleet_cache_requests_total{{outcome=\"{outcome}\"}}");
        assert_eq!(served.0.get(&series), Some(&0.0), "{series}");
    }
    assert!(served.has("fleet_revalidations_total") && served.has("fleet_events_retried_total"));
    assert_eq!(served.get("fleet_events_dead_lettered_total", &[("topic", "other"), ("kind", "crashed")]), 0.0);
    assert!(served.0.contains_key("fleet_webhooks_total{topic=\"user.signup\",answer=\"unavailable\"}"));
}
