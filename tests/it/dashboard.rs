//! Fresh dashboards: what the worker invalidates and prewarms after each
//! batch, and how the cached read API answers, against real Redis and
//! Postgres.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet::redis::cache::{self, Entry, Ttls, Versioned};
use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::helpers::{api_tuning, context, context_on, event, eventually, fixture, fleet, scratch_dir, TestContext};

const TENANT: &str = "184532";
const COURSE: i64 = 2871345;

fn x_cache(response: &reqwest::Response) -> String {
    fleet::api::cache_status(response.headers()).unwrap_or("none").to_owned()
}

/// Maya's enrollment, created, progressed and completed, plus a second
/// learner who only started.
fn course_history() -> Vec<String> {
    vec![
        fixture("enrollment.created"),
        fixture("enrollment.progress"),
        fixture("enrollment.completed"),
        event(
            "enrollment.created",
            json!({"id": "20250315000000000000002"}),
            json!({"id": 104928372, "user": {"id": 55012874, "email": "ana@example.com"}, "percentage_completed": "0.5",
                   "updated_at": "2025-03-15T00:00:00Z"}),
        ),
    ]
}

async fn apply_through_worker(ctx: &TestContext, bodies: &[String]) {
    for body in bodies {
        ctx.enqueue(body).await;
    }
    ctx.drain().await;
}

#[tokio::test]
async fn after_a_webhook_the_dashboard_reads_hits_with_the_new_numbers() {
    let ctx = context().await;
    let api = ctx.spawn_api(api_tuning()).await;
    apply_through_worker(&ctx, &course_history()).await;

    let response = api.get(&format!("/api/statistics/cached?course_id={COURSE}&tenant_id={TENANT}")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(x_cache(&response), "HIT", "prewarmed by the worker, not by a request");
    let stats: Value = response.json().await.expect("JSON");
    assert_eq!(
        (stats["enrollments"].as_i64(), stats["completed"].as_i64(), stats["active"].as_i64()),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(stats["completion_rate"], 0.5);
    assert_eq!(stats["average_percentage"], 75.0);

    let dashboard = api.get(&format!("/api/dashboard/cached?tenant_id={TENANT}")).await;
    assert_eq!(x_cache(&dashboard), "HIT");
    let dashboard: Value = dashboard.json().await.expect("JSON");
    assert_eq!(dashboard["totals"]["enrollments"], 2);
    assert_eq!(dashboard["courses"][0]["name"], "Intro to Watercolor");

    let page =
        api.get(&format!("/api/enrollments/cached?course_id={COURSE}&tenant_id={TENANT}&page=1&per_page=20")).await;
    assert_eq!(x_cache(&page), "HIT");
    let page: Value = page.json().await.expect("JSON");
    assert_eq!(page["total"], 2);
    assert_eq!(page["enrollments"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["enrollments"][0]["email"], "maya.chen@example.com", "newest update first");
    assert_eq!(api.state.postgres_queries(), 0, "every read was served from the cache");

    // The next batch replaces the numbers: still a hit, never stale.
    apply_through_worker(
        &ctx,
        &[event(
            "enrollment.created",
            json!({"id": "20250316000000000000003"}),
            json!({"id": 104928373, "user": {"id": 55012875}, "updated_at": "2025-03-16T00:00:00Z"}),
        )],
    )
    .await;
    let response = api.get(&format!("/api/statistics/cached?course_id={COURSE}&tenant_id={TENANT}")).await;
    assert_eq!(x_cache(&response), "HIT");
    let stats: Value = response.json().await.expect("JSON");
    assert_eq!(stats["enrollments"], 3);
    assert_eq!(api.state.postgres_queries(), 0);
}

#[tokio::test]
async fn prewarmed_keys_use_the_configured_ttls() {
    let ctx = context().await;
    let mut settings = ctx.worker_settings("ttl");
    settings.cache_ttls = Ttls {
        enrollments: Duration::from_secs(31),
        statistics: Duration::from_secs(42),
        dashboard: Duration::from_secs(53),
    };
    ctx.enqueue(&fixture("enrollment.created")).await;
    let worker = ctx.spawn_worker(settings).await;
    ctx.wait_until_drained().await;
    worker.stop().await;
    let keys = ctx.keys.clone();
    let page = fleet::read_model::PageRequest { tenant_id: TENANT.into(), course_id: COURSE, page: 1, per_page: 20 };
    let mut redis = ctx.redis.clone();
    let now = chrono::Utc::now().timestamp_millis();
    for (key, ttl) in [
        (keys.statistics(TENANT, COURSE), 42),
        (keys.dashboard(TENANT), 53),
        (keys.enrollments(&page.tenant_id, page.course_id, page.page, page.per_page), 31),
    ] {
        let fresh_until: i64 = redis.hget(&key, "fresh_until").await.expect("prewarmed");
        let fresh_for = (fresh_until - now) / 1000;
        assert!((ttl - 3..=ttl).contains(&fresh_for), "{key}: fresh for {fresh_for} s, expected {ttl}");
        let expires_in: i64 = redis.pttl(&key).await.expect("PTTL");
        assert!(expires_in > (ttl - 3) * 1000 && expires_in <= ttl * 2000, "{key}: expires in {expires_in} ms");
    }
}

fn entry(key: &str, tags: &[String], version: i64, body: Value) -> Entry {
    Entry { key: key.to_owned(), tags: tags.to_vec(), ttl: Duration::from_secs(60), value: Versioned { version, body } }
}

#[tokio::test]
async fn a_tag_invalidation_removes_exactly_its_keys() {
    let ctx = context().await;
    let keys = ctx.keys.clone();
    let (course_a, course_b) = (keys.tag(TENANT, "course:1"), keys.tag(TENANT, "course:2"));
    let other_school = keys.tag("other", "course:1");
    let mut redis = ctx.redis.clone();
    let entries = [
        entry(&keys.statistics(TENANT, 1), std::slice::from_ref(&course_a), 1, json!(1)),
        entry(&keys.dashboard(TENANT), &[course_a.clone(), course_b.clone()], 1, json!(2)),
        entry(&keys.statistics(TENANT, 2), std::slice::from_ref(&course_b), 1, json!(3)),
        entry(&keys.statistics("other", 1), std::slice::from_ref(&other_school), 1, json!(4)),
    ];
    assert_eq!(cache::put(&mut redis, &entries).await.expect("put"), 4);
    let unrelated = format!("{}unrelated", ctx.prefix.as_str());
    let _: () = redis.set(&unrelated, "keep").await.expect("SET");

    let removed = cache::invalidate(&mut redis, std::slice::from_ref(&course_a)).await.expect("invalidate");
    assert_eq!(removed, 2);
    for (key, expected) in [
        (keys.statistics(TENANT, 1), false),
        (keys.dashboard(TENANT), false),
        (keys.statistics(TENANT, 2), true),
        (keys.statistics("other", 1), true),
        (unrelated.clone(), true),
    ] {
        assert_eq!(redis.exists::<_, bool>(&key).await.expect("EXISTS"), expected, "{key}");
    }
    assert!(!redis.exists::<_, bool>(&course_a).await.expect("EXISTS"), "the tag set itself goes");
}

#[tokio::test]
async fn the_version_guard_rejects_an_older_write() {
    let ctx = context().await;
    let keys = ctx.keys.clone();
    let key = keys.statistics(TENANT, COURSE);
    let mut redis = ctx.redis.clone();
    assert_eq!(cache::put(&mut redis, &[entry(&key, &[], 5, json!({"enrollments": 5}))]).await.expect("put"), 1);
    assert_eq!(cache::put(&mut redis, &[entry(&key, &[], 3, json!({"enrollments": 3}))]).await.expect("put"), 0);
    let cache::Lookup::Fresh(stored) = cache::get(&mut redis, &key).await.expect("get") else { panic!("missing") };
    assert_eq!((stored.version, stored.body["enrollments"].as_i64()), (5, Some(5)));
    assert_eq!(cache::put(&mut redis, &[entry(&key, &[], 6, json!({"enrollments": 6}))]).await.expect("put"), 1);
}

#[tokio::test]
async fn concurrent_misses_on_one_key_cause_one_computation() {
    let ctx = context().await;
    apply_through_worker(&ctx, &course_history()).await;
    let mut redis = ctx.redis.clone();
    let keys = ctx.keys.clone();
    let _: () = redis.del(keys.statistics(TENANT, COURSE)).await.expect("cold");

    let api = ctx.spawn_api(api_tuning()).await;
    let client = fleet::http_client::builder().build().expect("an HTTP client");
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..25 {
        let request = client.get(api.url(&format!("/api/statistics/cached?course_id={COURSE}&tenant_id={TENANT}")));
        requests.spawn(async move { request.send().await.expect("request") });
    }
    let mut statuses = Vec::new();
    while let Some(response) = requests.join_next().await {
        let response = response.expect("task");
        assert_eq!(response.status(), 200);
        statuses.push(x_cache(&response));
        let stats: Value = response.json().await.expect("JSON");
        assert_eq!(stats["enrollments"], 2);
    }
    assert_eq!(api.state.postgres_queries(), 1, "one computation for 25 concurrent misses");
    assert_eq!(statuses.iter().filter(|status| *status == "MISS").count(), 1, "{statuses:?}");
}

#[tokio::test]
async fn a_stale_value_is_served_while_one_request_recomputes_it() {
    let ctx = context().await;
    apply_through_worker(&ctx, &course_history()).await;
    let keys = ctx.keys.clone();
    let key = keys.statistics(TENANT, COURSE);
    let mut redis = ctx.redis.clone();
    let _: () = redis.del(&key).await.expect("DEL");
    let mut old = entry(&key, &[], 0, json!({"enrollments": "old"}));
    old.ttl = Duration::from_millis(300);
    cache::put(&mut redis, &[old]).await.expect("put");
    tokio::time::sleep(Duration::from_millis(400)).await;

    let api = ctx.spawn_api(api_tuning()).await;
    let path = format!("/api/statistics/cached?course_id={COURSE}&tenant_id={TENANT}");
    let stale = api.get(&path).await;
    assert_eq!(x_cache(&stale), "STALE");
    assert_eq!(stale.json::<Value>().await.expect("JSON")["enrollments"], "old");
    eventually("the value is recomputed", Duration::from_secs(5), || async {
        let response = api.get(&path).await;
        x_cache(&response) == "HIT" && response.json::<Value>().await.map(|v| v["enrollments"] == 2).unwrap_or(false)
    })
    .await;
    assert_eq!(api.state.postgres_queries(), 1);
}

/// (X-Revalidate-Secret, body) of each call a receiver got.
type Calls = Arc<Mutex<Vec<(Option<String>, Value)>>>;

/// An HTTP receiver standing in for a Next.js revalidation route.
struct Receiver {
    url: String,
    calls: Calls,
}

async fn receiver(status: u16) -> Receiver {
    let calls: Calls = Arc::default();
    let recorded = calls.clone();
    let app = axum::Router::new().route(
        "/api/revalidate",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
            let recorded = recorded.clone();
            async move {
                let secret = headers
                    .get(fleet::worker::revalidate::SECRET_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                recorded.lock().expect("lock").push((secret, body.0));
                axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::OK)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/api/revalidate", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, calls }
}

async fn worker_with_hook(
    ctx: &TestContext,
    url: &str,
) -> (crate::helpers::WorkerHandle, fleet::worker::revalidate::Revalidator) {
    let worker = fleet::worker::Worker::connect(
        ctx.db.clone(),
        &ctx.redis_target(),
        ctx.keys.clone(),
        ctx.worker_settings("hooked"),
    )
    .await
    .expect("worker");
    let revalidator = fleet::worker::revalidate::Revalidator::spawn(
        url.parse().expect("URL"),
        Some("hook-secret".parse().expect("secret")),
        ctx.redis.clone(),
        ctx.keys.clone(),
    );
    let worker = worker.with_revalidator(revalidator.clone());
    (crate::helpers::WorkerHandle::run(worker), revalidator)
}

#[tokio::test]
async fn the_revalidation_hook_gets_one_call_per_batch_with_the_union_of_tags() {
    let ctx = context().await;
    let hook = receiver(200).await;
    // One batch: three events, two enrollments, one user event.
    for body in [fixture("enrollment.created"), course_history()[3].clone(), fixture("user.signup")] {
        ctx.enqueue(&body).await;
    }
    let (worker, revalidator) = worker_with_hook(&ctx, &hook.url).await;
    ctx.wait_until_drained().await;
    eventually("the hook is called", Duration::from_secs(10), || async {
        !hook.calls.lock().expect("lock").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.stop().await;

    let calls = hook.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 1, "one call for the batch: {calls:?}");
    let (secret, body) = &calls[0];
    assert_eq!(secret.as_deref(), Some("hook-secret"));
    let mut tags: Vec<&str> = body["tags"].as_array().expect("tags").iter().filter_map(Value::as_str).collect();
    tags.sort_unstable();
    assert_eq!(
        tags,
        vec![
            "184532:course:2871345",
            "184532:dashboard",
            "184532:enrollment:104928371",
            "184532:enrollment:104928372",
            "184532:user:55012873",
            "184532:user:55012874",
        ]
    );
    assert_eq!(revalidator.failures(), 0);
}

#[tokio::test]
async fn a_failing_revalidation_hook_does_not_fail_the_batch() {
    let ctx = context().await;
    let hook = receiver(500).await;
    ctx.enqueue(&fixture("enrollment.created")).await;
    let (worker, revalidator) = worker_with_hook(&ctx, &hook.url).await;
    ctx.wait_until_drained().await;
    assert_eq!(ctx.applied_events().await, 1, "the batch committed and was acknowledged");
    eventually("the failure is counted", Duration::from_secs(20), || async { revalidator.failures() == 1 }).await;
    worker.stop().await;
    assert!(hook.calls.lock().expect("lock").len() >= 2, "retried before giving up");
    let mut redis = ctx.redis.clone();
    let counted: Option<u64> = redis.hget(ctx.keys.clone().cache_metrics(), "revalidate_failures").await.expect("HGET");
    assert_eq!(counted, Some(1));
    assert!(ctx.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_stopping_worker_finishes_the_queued_revalidation_calls() {
    let ctx = context().await;
    // A slow hook: a call is only recorded once it is answered, a second
    // after it arrives, so at the stop the batch's call is still under way.
    let calls: Calls = Arc::default();
    let recorded = calls.clone();
    let app = axum::Router::new().route(
        "/api/revalidate",
        axum::routing::post(move |body: axum::Json<Value>| {
            let recorded = recorded.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                recorded.lock().expect("lock").push((None, body.0));
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/api/revalidate", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    ctx.enqueue(&fixture("enrollment.created")).await;
    let (worker, revalidator) = worker_with_hook(&ctx, &url).await;
    ctx.wait_until_drained().await;
    worker.stop().await;
    assert_eq!(calls.lock().expect("lock").len(), 1, "the queued call was made before the worker returned");
    assert_eq!(revalidator.failures(), 0);
}

#[tokio::test]
async fn a_client_over_the_rate_limit_gets_429_with_retry_after() {
    let ctx = context().await;
    let mut tuning = api_tuning();
    tuning.rate_limit_requests = 3;
    tuning.rate_limit_window_ms = 60_000;
    ctx.add_course(TENANT, COURSE).await;
    let api = ctx.spawn_api(tuning).await;
    let path = format!("/api/dashboard/cached?tenant_id={TENANT}");
    for _ in 0..3 {
        assert_eq!(api.get(&path).await.status(), 200);
    }
    let limited = api.get(&path).await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"].to_str().expect("text").parse().expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
}

#[tokio::test]
async fn a_bearer_token_guards_the_api_when_set() {
    let ctx = context().await;
    let mut tuning = api_tuning();
    tuning.api_token = Some("dashboard-token".parse().expect("token"));
    ctx.add_course(TENANT, COURSE).await;
    let api = ctx.spawn_api(tuning).await;
    let path = api.url(&format!("/api/dashboard/cached?tenant_id={TENANT}"));
    let client = fleet::http_client::builder().build().expect("an HTTP client");
    assert_eq!(client.get(&path).send().await.expect("request").status(), 401);
    assert_eq!(client.get(&path).bearer_auth("wrong").send().await.expect("request").status(), 401);
    assert_eq!(client.get(&path).bearer_auth("dashboard-token").send().await.expect("request").status(), 200);
}

#[tokio::test]
async fn bad_parameters_get_400() {
    let ctx = context().await;
    let api = ctx.spawn_api(api_tuning()).await;
    for path in [
        "/api/statistics/cached?tenant_id=184532".to_owned(),
        "/api/statistics/cached?tenant_id=184532&course_id=abc".to_owned(),
        format!("/api/statistics/cached?course_id={COURSE}"),
        "/api/dashboard/cached".to_owned(),
        format!("/api/enrollments/cached?tenant_id=184532&course_id={COURSE}&per_page=1000"),
        format!("/api/enrollments/cached?tenant_id=184532&course_id={COURSE}&page=0"),
    ] {
        let response = api.get(&path).await;
        assert_eq!(response.status(), 400, "{path}");
        assert!(response.json::<Value>().await.expect("JSON")["error"].is_string());
    }
    let mut tuning = api_tuning();
    tuning.default_tenant = Some(TENANT.parse().expect("tenant id"));
    ctx.add_course(TENANT, COURSE).await;
    let api = ctx.spawn_api(tuning).await;
    assert_eq!(api.get("/api/dashboard/cached").await.status(), 200, "the default school is used");
}

#[tokio::test]
async fn with_redis_stopped_the_api_answers_from_postgres() {
    let dir = scratch_dir("redis-bypass");
    let mut redis = fleet::local_services::LocalRedis::start(&dir, true).await.expect("own redis");
    let ctx = context_on(&redis.url()).await;
    apply_through_worker(&ctx, &course_history()).await;
    let api = ctx.spawn_api(api_tuning()).await;
    redis.stop();

    let response = api.get(&format!("/api/statistics/cached?course_id={COURSE}&tenant_id={TENANT}")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(x_cache(&response), "BYPASS");
    assert_eq!(response.json::<Value>().await.expect("JSON")["enrollments"], 2);
    let page = api.get(&format!("/api/enrollments/cached?course_id={COURSE}&tenant_id={TENANT}")).await;
    assert_eq!(x_cache(&page), "BYPASS");
    assert_eq!(page.json::<Value>().await.expect("JSON")["total"], 2);
}

#[tokio::test]
async fn cache_stats_and_clear_from_the_command_line() {
    let ctx = context().await;
    apply_through_worker(&ctx, &course_history()).await;
    ctx.add_course(TENANT, 999).await;
    let api = ctx.spawn_api(api_tuning()).await;
    api.get(&format!("/api/statistics/cached?course_id={COURSE}&tenant_id={TENANT}")).await;
    let empty_course = api.get(&format!("/api/statistics/cached?course_id=999&tenant_id={TENANT}")).await;
    assert_eq!(empty_course.status(), 200, "a course without enrollments has statistics (zeros)");

    let run = |args: &'static [&'static str]| {
        let mut command = fleet(&ctx, args);
        async move { command.output().await.expect("run fleet") }
    };
    let stats = run(&["cache", "stats", "--json"]).await;
    assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
    let stats: Value = serde_json::from_slice(&stats.stdout).expect("JSON");
    assert_eq!(stats["kinds"]["statistics"]["keys"], 2);
    assert_eq!(stats["kinds"]["dashboard"]["keys"], 1);
    assert_eq!(stats["kinds"]["enrollments"]["keys"], 1);
    assert!(stats["kinds"]["statistics"]["memory_bytes"].as_u64() > Some(0));
    assert!(stats["tags"].as_u64() > Some(0));
    eventually("reads are counted", Duration::from_secs(5), || async {
        let mut redis = ctx.redis.clone();
        let metrics: std::collections::HashMap<String, String> =
            redis.hgetall(ctx.keys.clone().cache_metrics()).await.unwrap_or_default();
        metrics.get("hits").map(String::as_str) == Some("1") && metrics.get("misses").map(String::as_str) == Some("1")
    })
    .await;
    let text = run(&["cache", "stats"]).await;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("1 hits") && text.contains("1 misses") && text.contains("hit rate 50.0%"), "{text}");

    let cleared = run(&["cache", "clear", "statistics"]).await;
    assert_eq!(String::from_utf8_lossy(&cleared.stdout).trim(), "removed 2 keys");
    let cleared = run(&["cache", "clear", "--tag", "course:2871345"]).await;
    assert_eq!(String::from_utf8_lossy(&cleared.stdout).trim(), "removed 1 keys", "the first page of enrollments");
    let cleared = run(&["cache", "clear", "--pattern", "{184532}:dash*"]).await;
    assert_eq!(String::from_utf8_lossy(&cleared.stdout).trim(), "removed 1 keys");
    let cleared = run(&["cache", "clear", "all"]).await;
    assert!(cleared.status.success());
    let after: Value = serde_json::from_slice(&run(&["cache", "stats", "--json"]).await.stdout).expect("JSON");
    assert_eq!((after["kinds"]["statistics"]["keys"].as_u64(), after["tags"].as_u64()), (Some(0), Some(0)));
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 4, "only the cache goes, never the streams");

    let usage = run(&["cache", "clear"]).await;
    assert_eq!(usage.status.code(), Some(2));
}

#[tokio::test]
async fn first_pages_are_prewarmed_while_the_worker_runs() {
    let ctx = context().await;
    let worker = ctx.spawn_worker(ctx.worker_settings("pages")).await;
    let page_key = ctx.keys.enrollments(TENANT, COURSE, 1, fleet::read_model::DEFAULT_PER_PAGE);
    let total_cached = |redis: fleet::redis::RedisConnection, key: String| async move {
        let mut redis = redis;
        let body: Option<String> = redis.hget(&key, "body").await.expect("HGET");
        body.and_then(|body| serde_json::from_str::<Value>(&body).ok()).and_then(|body| body["total"].as_i64())
    };
    // Two batches in quick succession: the second lands inside the page
    // prewarm's pause, and is still covered once the pause is over.
    for (n, body) in course_history().iter().enumerate() {
        ctx.enqueue(body).await;
        if n == 0 {
            eventually("the first page prewarmed", Duration::from_secs(10), || {
                let cached = total_cached(ctx.redis.clone(), page_key.clone());
                async move { cached.await == Some(1) }
            })
            .await;
        }
    }
    // Within the prewarm's pause (10 s) and a margin.
    eventually("the first page prewarmed with every enrollment", Duration::from_secs(30), || {
        let cached = total_cached(ctx.redis.clone(), page_key.clone());
        async move { cached.await == Some(2) }
    })
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn only_a_real_course_change_bumps_the_schools_version() {
    let ctx = context().await;
    apply_through_worker(&ctx, &[fixture("enrollment.created")]).await;
    let version = || async {
        sqlx::query_scalar::<_, i64>("SELECT version FROM tenant_statistics WHERE tenant_id = $1")
            .bind(TENANT)
            .fetch_one(&ctx.db)
            .await
            .expect("the school's statistics")
    };
    let before = version().await;
    // What every enrollment's embedded course does: the same name, a newer version.
    sqlx::query("UPDATE courses SET source_event_id = source_event_id || 'x' WHERE tenant_id = $1")
        .bind(TENANT)
        .execute(&ctx.db)
        .await
        .expect("rewrite");
    assert_eq!(version().await, before, "an unchanged course leaves the dashboard's version");
    sqlx::query("UPDATE courses SET name = 'Watercolor II' WHERE tenant_id = $1")
        .bind(TENANT)
        .execute(&ctx.db)
        .await
        .expect("rename");
    assert_eq!(version().await, before + 1, "a renamed course changes the dashboard");
    sqlx::query("UPDATE courses SET deleted_at = now() WHERE tenant_id = $1")
        .bind(TENANT)
        .execute(&ctx.db)
        .await
        .expect("delete");
    assert_eq!(version().await, before + 2, "so does a deleted one");
}

#[tokio::test]
async fn a_worker_stopping_in_the_page_prewarms_pause_prewarms_and_stops_at_once() {
    let ctx = context().await;
    let worker = ctx.spawn_worker(ctx.worker_settings("pause")).await;
    let page_key = ctx.keys.enrollments(TENANT, COURSE, 1, fleet::read_model::DEFAULT_PER_PAGE);
    let history = course_history();
    ctx.enqueue(&history[0]).await;
    eventually("the first page prewarmed", Duration::from_secs(10), || {
        let mut redis = ctx.redis.clone();
        let key = page_key.clone();
        async move { redis.exists::<_, bool>(&key).await.expect("EXISTS") }
    })
    .await;
    // The next batch is applied and acknowledged; its page waits for the
    // end of the prewarm's 10 s pause.
    ctx.enqueue(&history[3]).await;
    ctx.wait_until_drained().await;
    let stopping = std::time::Instant::now();
    worker.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(5), "stopped after {:?}", stopping.elapsed());
    let mut redis = ctx.redis.clone();
    let body: String = redis.hget(&page_key, "body").await.expect("the page prewarmed on stop");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["total"], 2);
}
