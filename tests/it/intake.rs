//! The intake's answers, one per kind of input, against real Redis.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{json, Value};

use fleet::intake::Settings as IntakeSettings;
use fleet::redis::dedup::DedupWindow;
use fleet::secrets::WebhookKeys;

use crate::helpers::{
    context, context_on, event, fixture, intake_settings, post_signed, scratch_dir, IntakeServer, TestContext, SECRET,
};

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON answer")
}

#[tokio::test]
async fn a_signed_event_is_appended_with_its_raw_body_and_metadata() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    let body = fixture("enrollment.progress");

    let response = post_signed(&intake, &body, SECRET).await;
    assert_eq!(response.status(), 200);
    let answer = json_of(response).await;
    assert_eq!(answer["status"], "accepted");
    let entry_id = answer["stream_entry_id"].as_str().expect("an entry id").to_owned();

    let mut redis = ctx.redis.clone();
    let reply: redis::streams::StreamRangeReply = redis.xrange_all(ctx.keys.shard(0).events()).await.expect("XRANGE");
    assert_eq!(reply.ids.len(), 1);
    let entry = &reply.ids[0];
    assert_eq!(entry.id, entry_id);
    let field = |name: &str| -> String { entry.get(name).unwrap_or_else(|| panic!("field {name}")) };
    assert_eq!(field("body"), body, "the raw body, byte for byte");
    assert_eq!(field("topic"), "enrollment.progress");
    assert_eq!(field("tenant"), "184532");
    assert_eq!(field("event_id"), "20250316091544118200417");
    let received = chrono::DateTime::parse_from_rfc3339(&field("received_at")).expect("an RFC 3339 time");
    assert!((chrono::Utc::now() - received.to_utc()).num_seconds().abs() < 60);
    intake.stop().await;
}

#[tokio::test]
async fn the_delivery_headers_are_kept_for_operators_without_the_signature() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    let body = fixture("enrollment.created");
    let response = fleet::http_client::builder()
        .build()
        .expect("an HTTP client")
        .post(intake.url("/webhooks/thinkific"))
        .header("content-type", "application/json")
        .header("user-agent", "Thinkific-Webhooks/1.0")
        .header("x-thinkific-topic", "enrollment.created")
        .header("authorization", "Bearer not-for-the-stream")
        .header("x-thinkific-hmac-sha256", fleet::intake::sign(SECRET.as_bytes(), body.as_bytes()))
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let mut redis = ctx.redis.clone();
    let reply: redis::streams::StreamRangeReply = redis.xrange_all(ctx.keys.shard(0).events()).await.expect("XRANGE");
    let headers: String = reply.ids[0].get("headers").expect("the kept headers");
    let headers: Value = serde_json::from_str(&headers).expect("a JSON object");
    assert_eq!(
        headers,
        json!({"content-type": "application/json", "user-agent": "Thinkific-Webhooks/1.0",
               "x-thinkific-topic": "enrollment.created"}),
        "the signature and other headers are not kept"
    );
    intake.stop().await;
}

#[tokio::test]
async fn the_seed_dashboard_path_is_answered_too() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    let body = fixture("user.signup");
    let response = fleet::http_client::builder()
        .build()
        .expect("an HTTP client")
        .post(intake.url("/api/webhooks/enrollment"))
        .header("x-thinkific-hmac-sha256", fleet::intake::sign(SECRET.as_bytes(), body.as_bytes()))
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["status"], "accepted");
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 1);
}

#[tokio::test]
async fn a_redelivered_event_is_a_duplicate_and_not_appended_again() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    let body = fixture("enrollment.created");
    let first = json_of(post_signed(&intake, &body, SECRET).await).await;
    let response = post_signed(&intake, &body, SECRET).await;
    assert_eq!(response.status(), 200);
    let second = json_of(response).await;
    assert_eq!(first["status"], "accepted");
    assert_eq!(second, json!({"status": "duplicate", "event_id": first["event_id"]}), "no entry id: none was appended");
    let entries = stream_entries(&ctx).await;
    assert_eq!(entries.len(), 1, "the duplicate added no stream entry");
    assert_eq!(json!(entries[0].id), first["stream_entry_id"]);
}

#[tokio::test]
async fn concurrent_redeliveries_append_exactly_once() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    let body = fixture("enrollment.completed");
    let signature = fleet::intake::sign(SECRET.as_bytes(), body.as_bytes());
    let client = fleet::http_client::builder().build().expect("an HTTP client");
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..25 {
        let request = client
            .post(intake.url("/webhooks/thinkific"))
            .header("x-thinkific-hmac-sha256", signature.clone())
            .body(body.clone());
        requests.spawn(async move { request.send().await.expect("request") });
    }
    let mut accepted = 0;
    while let Some(response) = requests.join_next().await {
        let response = response.expect("task");
        assert_eq!(response.status(), 200);
        if json_of(response).await["status"] == "accepted" {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 1);
}

#[tokio::test]
async fn the_dedup_window_is_configurable() {
    let ctx = context().await;
    let mut settings = intake_settings(SECRET);
    settings.dedup = DedupWindow::new(Duration::from_secs(1), 1000);
    let intake = ctx.spawn_intake_with(settings).await;
    let body = fixture("order.created");
    assert_eq!(json_of(post_signed(&intake, &body, SECRET).await).await["status"], "accepted");
    assert_eq!(json_of(post_signed(&intake, &body, SECRET).await).await["status"], "duplicate");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(json_of(post_signed(&intake, &body, SECRET).await).await["status"], "accepted");
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 2);
}

#[tokio::test]
async fn the_same_event_id_in_two_schools_is_two_events() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    let school_a = event("enrollment.created", json!({"tenant_id": "A"}), json!({}));
    let school_b = event("enrollment.created", json!({"tenant_id": "B"}), json!({}));
    assert_eq!(json_of(post_signed(&intake, &school_a, SECRET).await).await["status"], "accepted");
    assert_eq!(json_of(post_signed(&intake, &school_b, SECRET).await).await["status"], "accepted");
}

#[tokio::test]
async fn missing_or_wrong_signatures_get_401_and_queue_nothing() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    let body = fixture("enrollment.created");
    let client = fleet::http_client::builder().build().expect("an HTTP client");
    let cases: Vec<(&str, Option<String>, String)> = vec![
        ("no header", None, body.clone()),
        ("empty header", Some(String::new()), body.clone()),
        ("not hex", Some("zz-not-hex".into()), body.clone()),
        ("another key", Some(fleet::intake::sign(b"someone-else", body.as_bytes())), body.clone()),
        ("tampered body", Some(fleet::intake::sign(SECRET.as_bytes(), body.as_bytes())), body.replace("0.0", "1.0")),
        (
            "truncated signature",
            Some(fleet::intake::sign(SECRET.as_bytes(), body.as_bytes())[..32].to_owned()),
            body.clone(),
        ),
    ];
    for (case, signature, sent) in cases {
        let mut request = client.post(intake.url("/webhooks/thinkific")).body(sent);
        if let Some(signature) = signature {
            request = request.header("x-thinkific-hmac-sha256", signature);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 401, "{case}");
        assert_eq!(json_of(response).await["status"], "rejected", "{case}");
    }
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 0);
}

#[tokio::test]
async fn signature_is_checked_before_the_body_is_parsed() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    let response = fleet::http_client::builder()
        .build()
        .expect("an HTTP client")
        .post(intake.url("/webhooks/thinkific"))
        .header("x-thinkific-hmac-sha256", fleet::intake::sign(b"wrong", b"not json"))
        .body("not json")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401, "an unsigned bad body is a 401, not a 400");
}

#[tokio::test]
async fn rotated_keys_are_all_accepted() {
    let ctx = context().await;
    let intake = ctx.spawn_intake_with(intake_settings("old-key,new-key")).await;
    let old = event("enrollment.created", json!({"id": "1"}), json!({}));
    let new = event("enrollment.created", json!({"id": "2"}), json!({}));
    let other = event("enrollment.created", json!({"id": "3"}), json!({}));
    assert_eq!(post_signed(&intake, &old, "old-key").await.status(), 200);
    assert_eq!(post_signed(&intake, &new, "new-key").await.status(), 200);
    assert_eq!(post_signed(&intake, &other, "retired-key").await.status(), 401);
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 2);
}

#[tokio::test]
async fn bodies_that_are_not_events_get_400() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    let cases = [
        ("not JSON", "{\"id\": ".to_owned()),
        ("not an object", "[1, 2]".to_owned()),
        ("empty", String::new()),
        ("no id", json!({"resource": "enrollment", "action": "created", "payload": {}}).to_string()),
        ("no resource", json!({"id": "1", "action": "created", "payload": {}}).to_string()),
        ("no action", json!({"id": "1", "resource": "enrollment", "payload": {}}).to_string()),
        ("empty id", json!({"id": "", "resource": "enrollment", "action": "created"}).to_string()),
        ("id is an object", json!({"id": {}, "resource": "enrollment", "action": "created"}).to_string()),
        (
            "bad created_at",
            json!({"id": "1", "resource": "user", "action": "signup", "created_at": "soon"}).to_string(),
        ),
        (
            "a line break in resource (it would forge a log line)",
            json!({"id": "1", "resource": "enrollment\nFORGED-LOG-LINE level=ERROR", "action": "created",
                   "tenant_id": "184532"})
            .to_string(),
        ),
        (
            "a terminal escape in action",
            json!({"id": "1", "resource": "enrollment", "action": "\u{1b}[2Jcreated", "tenant_id": "184532"})
                .to_string(),
        ),
    ];
    for (case, body) in cases {
        let response = post_signed(&intake, &body, SECRET).await;
        assert_eq!(response.status(), 400, "{case}");
        let answer = json_of(response).await;
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{case}: {answer}");
    }
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 0);
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    let padding = "x".repeat(1024 * 1024);
    let body = event("user.signup", json!({"padding": padding}), json!({}));
    let response = post_signed(&intake, &body, SECRET).await;
    assert_eq!(response.status(), 413);
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 0);

    let just_under = event("user.signup", json!({"padding": "x".repeat(1000 * 1000)}), json!({}));
    assert_eq!(post_signed(&intake, &just_under, SECRET).await.status(), 200);
}

#[tokio::test]
async fn a_signed_event_of_an_unknown_topic_is_accepted() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    let body = json!({"id": "20250401000000000000001", "resource": "quiz", "action": "attempted",
                      "tenant_id": "184532", "created_at": "2025-04-01T00:00:00.000Z", "payload": {"score": 3}})
    .to_string();
    let response = post_signed(&intake, &body, SECRET).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["status"], "accepted");
}

/// A school whose key is bound to it in the test's `THINKIFIC_SCHOOL_KEYS`.
const SCHOOL: &str = "watercolor-school";
const SCHOOL_KEY: &str = "watercolor=school-key";

/// `SECRET` for any school, and `SCHOOL_KEY` bound to `SCHOOL`.
fn settings_with_a_school_key() -> IntakeSettings {
    let school_keys = format!("{SCHOOL}={SCHOOL_KEY}").parse().expect("school keys");
    IntakeSettings {
        keys: WebhookKeys::new(Some(SECRET.parse().expect("key")), Some(school_keys)).expect("keys"),
        ..intake_settings(SECRET)
    }
}

/// The example enrollment with its `tenant_id` removed.
fn enrollment_without_tenant() -> String {
    let mut body: Value = serde_json::from_str(&fixture("enrollment.created")).expect("JSON");
    body.as_object_mut().expect("object").remove("tenant_id");
    body.to_string()
}

async fn post_with_subdomain(intake: &IntakeServer, body: &str, key: &str, subdomain: &str) -> reqwest::Response {
    fleet::http_client::builder()
        .build()
        .expect("an HTTP client")
        .post(intake.url("/webhooks/thinkific"))
        .header("x-thinkific-hmac-sha256", fleet::intake::sign(key.as_bytes(), body.as_bytes()))
        .header("x-thinkific-subdomain", subdomain)
        .body(body.to_owned())
        .send()
        .await
        .expect("request")
}

async fn stream_entries(ctx: &TestContext) -> Vec<redis::streams::StreamId> {
    let mut redis = ctx.redis.clone();
    let reply: redis::streams::StreamRangeReply = redis.xrange_all(ctx.keys.shard(0).events()).await.expect("XRANGE");
    reply.ids
}

async fn enrollment_tenants(ctx: &TestContext) -> Vec<String> {
    sqlx::query_scalar("SELECT tenant_id FROM enrollments ORDER BY tenant_id").fetch_all(&ctx.db).await.expect("rows")
}

#[tokio::test]
async fn the_subdomain_header_never_names_the_school() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    let body = enrollment_without_tenant();
    let long_text = "victim-c ".repeat(114);
    for subdomain in ["victim-a", "victim-b", "*", long_text.as_str()] {
        let response = post_with_subdomain(&intake, &body, SECRET, subdomain).await;
        assert_eq!(response.status(), 400, "a replay with X-Thinkific-Subdomain {subdomain:?}");
        let answer = json_of(response).await;
        let error = answer["error"].as_str().expect("an error");
        assert!(error.contains("tenant_id") && error.contains("THINKIFIC_SCHOOL_KEYS"), "{error}");
        assert!(!error.contains("victim"), "the header is echoed: {error}");
    }
    let without_header = post_signed(&intake, &body, SECRET).await;
    assert_eq!(without_header.status(), 400, "nor without the header");
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 0, "nothing appended");

    ctx.drain().await;
    assert_eq!(ctx.applied_events().await, 0);
    assert!(enrollment_tenants(&ctx).await.is_empty(), "an enrollment reached Postgres");
}

#[tokio::test]
async fn a_school_key_decides_the_tenant() {
    let ctx = context().await;
    let intake = ctx.spawn_intake_with(settings_with_a_school_key()).await;
    let response = post_with_subdomain(&intake, &enrollment_without_tenant(), SCHOOL_KEY, "victim-a").await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["status"], "accepted");
    let naming_its_own_school = event("enrollment.created", json!({"id": "2", "tenant_id": SCHOOL}), json!({"id": 2}));
    assert_eq!(post_signed(&intake, &naming_its_own_school, SCHOOL_KEY).await.status(), 200);

    let tenants: Vec<Option<String>> = stream_entries(&ctx).await.iter().map(|entry| entry.get("tenant")).collect();
    assert_eq!(tenants, [Some(SCHOOL.to_owned()), Some(SCHOOL.to_owned())]);
    intake.stop().await;
    ctx.drain().await;
    assert_eq!(enrollment_tenants(&ctx).await, [SCHOOL, SCHOOL]);
}

#[tokio::test]
async fn a_school_key_signing_a_body_that_names_another_school_gets_403() {
    let ctx = context().await;
    let intake = ctx.spawn_intake_with(settings_with_a_school_key()).await;
    let long_tenant = "v".repeat(64);
    for other in ["victim-a", "184532", long_tenant.as_str()] {
        let body = event("enrollment.created", json!({"tenant_id": other}), json!({}));
        let response = post_signed(&intake, &body, SCHOOL_KEY).await;
        assert_eq!(response.status(), 403, "{other}");
        let answer = json_of(response).await;
        assert_eq!(answer["status"], "rejected");
        let error = answer["error"].as_str().expect("an error");
        assert!(error.contains("tenant_id") && !error.contains(other), "{error}");
    }
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 0);
}

#[tokio::test]
async fn unsafe_tenant_ids_get_400() {
    let ctx = context().await;
    let intake = ctx.spawn_intake_with(settings_with_a_school_key()).await;
    let too_long = "t".repeat(65);
    for tenant in ["a:b", "*", too_long.as_str(), "a\u{0}b", ""] {
        let body = event("enrollment.created", json!({"tenant_id": tenant}), json!({}));
        for key in [SECRET, SCHOOL_KEY] {
            let response = post_signed(&intake, &body, key).await;
            assert_eq!(response.status(), 400, "tenant_id {tenant:?} signed with {key}");
            let error = json_of(response).await["error"].as_str().expect("an error").to_owned();
            assert!(error.contains("tenant_id"), "{error}");
        }
    }
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 0);
}

#[tokio::test]
async fn numeric_event_ids_are_exact_64_bit_integers_or_refused() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    let with_id =
        |id: &str| fixture("enrollment.created").replace(r#""id":"20250314153012345678901""#, &format!(r#""id":{id}"#));

    let thirty_digits = with_id("123456789012345678901234567890");
    assert_eq!(post_signed(&intake, &thirty_digits, SECRET).await.status(), 400);
    // 2^53 + 1: a float would round it to 2^53.
    let beyond_floats = with_id("9007199254740993");
    let response = post_signed(&intake, &beyond_floats, SECRET).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["event_id"], "9007199254740993");

    let entries = stream_entries(&ctx).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].get::<String>("event_id").as_deref(), Some("9007199254740993"));
}

#[tokio::test]
async fn tenant_and_event_id_cannot_run_into_each_other_in_the_dedup_key() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    let cases = [("a", "b:c"), ("a:b", "c"), ("a", "b.c"), ("a.b", "c")];
    let mut answers = Vec::new();
    for (tenant, id) in cases {
        let body = event("enrollment.created", json!({"tenant_id": tenant, "id": id}), json!({}));
        let response = post_signed(&intake, &body, SECRET).await;
        answers.push((tenant, id, response.status().as_u16(), json_of(response).await));
    }
    let statuses: Vec<(u16, &str)> =
        answers.iter().map(|(_, _, status, answer)| (*status, answer["status"].as_str().unwrap_or(""))).collect();
    assert_eq!(
        statuses,
        [(400, "rejected"), (400, "rejected"), (200, "accepted"), (200, "accepted")],
        "a `:` inside an id is refused, and look-alikes are distinct events: {answers:?}"
    );
    let entries = stream_entries(&ctx).await;
    let recorded: Vec<(Option<String>, Option<String>)> =
        entries.iter().map(|entry| (entry.get("tenant"), entry.get("event_id"))).collect();
    let expected = [("a", "b.c"), ("a.b", "c")].map(|(tenant, id)| (Some(tenant.to_owned()), Some(id.to_owned())));
    assert_eq!(recorded, expected);
}

#[tokio::test]
async fn health_and_readiness() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    assert_eq!(crate::helpers::get(intake.url("/healthz")).await.expect("healthz").status(), 200);
    let ready = crate::helpers::get(intake.url("/readyz")).await.expect("readyz");
    assert_eq!(ready.status(), 200);
    assert_eq!(json_of(ready).await["dependencies"]["redis"]["state"], "up");
}

#[tokio::test]
async fn redis_down_gives_503_and_the_intake_recovers_when_it_returns() {
    let dir = scratch_dir("redis-outage");
    let mut redis = fleet::local_services::LocalRedis::start(&dir, true).await.expect("own redis");
    let port = redis.port();
    let ctx = context_on(&redis.url()).await;
    let intake = ctx.spawn_intake().await;
    let body = fixture("enrollment.created");

    redis.stop();
    let started = std::time::Instant::now();
    let response = post_signed(&intake, &body, SECRET).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(8), "answered without hanging");
    assert_eq!(crate::helpers::get(intake.url("/readyz")).await.expect("readyz").status(), 503);
    assert_eq!(crate::helpers::get(intake.url("/healthz")).await.expect("healthz").status(), 200);

    redis.restart().await.expect("redis again");
    assert_eq!(redis.port(), port);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = post_signed(&intake, &body, SECRET).await;
        if response.status() == 200 {
            assert_eq!(json_of(response).await["status"], "accepted", "the 503 queued nothing");
            break;
        }
        assert_eq!(response.status(), 503);
        assert!(std::time::Instant::now() < deadline, "intake did not reconnect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    intake.stop().await;
}

/// With 2,000 schools, a request tries only the keys for any school and
/// those of the school it names (its path, else its body's tenant_id):
/// what a bad request costs does not grow with the schools.
#[tokio::test]
async fn with_many_school_keys_only_the_named_schools_keys_are_tried() {
    let ctx = context().await;
    let pairs: Vec<String> = (0..2000).map(|n| format!("school-{n}=key-of-school-{n}")).collect();
    let settings = IntakeSettings {
        keys: WebhookKeys::new(Some(SECRET.parse().expect("key")), Some(pairs.join(",").parse().expect("pairs")))
            .expect("keys"),
        ..intake_settings(SECRET)
    };
    let intake = ctx.spawn_intake_with(settings).await;
    let naming = event("enrollment.created", json!({"id": "31", "tenant_id": "school-1999"}), json!({"id": 31}));
    let response =
        crate::helpers::post_signed_url(&intake.url("/webhooks/thinkific"), &naming, "key-of-school-1999").await;
    assert_eq!(response.status(), 200, "found by the body's tenant_id");
    let unnamed = enrollment_without_tenant();
    let response =
        crate::helpers::post_signed_url(&intake.url("/webhooks/thinkific"), &unnamed, "key-of-school-1999").await;
    assert_eq!(response.status(), 401, "a body naming no school: only the keys for any school are tried");
    let response =
        crate::helpers::post_signed_url(&intake.url("/webhooks/thinkific/school-1999"), &unnamed, "key-of-school-1999")
            .await;
    assert_eq!(response.status(), 200, "the school's own path names it");
    let tenants: Vec<Option<String>> = stream_entries(&ctx).await.iter().map(|entry| entry.get("tenant")).collect();
    assert_eq!(tenants, [Some("school-1999".to_owned()), Some("school-1999".to_owned())]);
    // The path is a hint only: a body signed for any school still names its own tenant.
    let other = event("enrollment.created", json!({"id": "32", "tenant_id": "school-5"}), json!({"id": 32}));
    assert_eq!(
        crate::helpers::post_signed_url(&intake.url("/webhooks/thinkific/school-1999"), &other, SECRET).await.status(),
        200
    );
    let tenants: Vec<Option<String>> = stream_entries(&ctx).await.iter().map(|entry| entry.get("tenant")).collect();
    assert_eq!(tenants.last(), Some(&Some("school-5".to_owned())));
    assert_eq!(
        crate::helpers::post_signed_url(&intake.url("/webhooks/thinkific/a:b"), &naming, "key-of-school-1999")
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn an_address_past_its_refusals_gets_429_before_any_key_is_tried() {
    let ctx = context().await;
    let intake = ctx.spawn_intake_with(IntakeSettings { refusals_per_minute: 5, ..intake_settings(SECRET) }).await;
    let body = fixture("enrollment.created");
    for attempt in 1..=5 {
        assert_eq!(post_signed(&intake, &body, "not-the-key").await.status(), 401, "attempt {attempt}");
    }
    let held = post_signed(&intake, &body, "not-the-key").await;
    assert_eq!(held.status(), 429);
    assert_eq!(held.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("60"));
    // Nothing is verified for it meanwhile, a good signature included: its minute must run out.
    assert_eq!(post_signed(&intake, &body, SECRET).await.status(), 429);
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 0);
}
