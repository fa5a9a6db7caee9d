//! The operator console over plain HTTP: off without its token, signing in,
//! sessions and their cookie, CSRF on every change, the sign-in throttle,
//! Redis unreachable, and what the pages do (filters, paging, a long replay,
//! cache clearing) against real Redis. The browser walks through it in
//! `console_browser.rs`.

use std::sync::Arc;
use std::time::Duration;

use fleet::redis::failures::FailureKind;
use redis::AsyncCommands;
use serde_json::json;
use tokio::sync::OnceCell;

use crate::helpers::{
    api_tuning, console_tuning, context, csrf_of, eventually, fleet, ConsoleClient, TestContext, CONSOLE_TOKEN,
};

async fn console(ctx: &TestContext) -> (crate::helpers::ApiServer, ConsoleClient) {
    let api = ctx.spawn_api(console_tuning()).await;
    let client = ConsoleClient::new(&api.url(""));
    (api, client)
}

fn location(response: &reqwest::Response) -> &str {
    response.headers().get("location").and_then(|value| value.to_str().ok()).unwrap_or_default()
}

#[tokio::test]
async fn the_console_is_off_without_its_token_even_behind_a_bearer_token() {
    let ctx = context().await;
    let tuning = fleet::api::Settings { api_token: Some("bearer-token".parse().expect("token")), ..api_tuning() };
    let api = ctx.spawn_api(tuning).await;
    let client = ConsoleClient::new(&api.url(""));
    for path in ["/console", "/console/sign-in", "/console/dead-letters"] {
        assert_eq!(client.get(path).await.status(), 404, "GET {path}");
    }
    assert_eq!(client.post("/console/sign-in", &[("token", "anything")]).await.status(), 404);
    // The read API itself still wants its bearer token.
    assert_eq!(client.get("/api/dashboard/cached?tenant_id=a").await.status(), 401);
}

#[tokio::test]
async fn sign_in_refuses_a_wrong_token_and_gives_a_strict_http_only_cookie_kept_in_redis_by_digest() {
    let ctx = context().await;
    let (_api, client) = console(&ctx).await;

    let anonymous = client.get("/console").await;
    assert_eq!((anonymous.status().as_u16(), location(&anonymous)), (303, "/console/sign-in"));
    let form = client.get("/console/sign-in").await;
    let csp = form.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(form.headers().get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));

    let wrong = client.sign_in("not-the-console-token").await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.expect("body").contains("That is not the console token."));
    assert_eq!(client.cookie("fleet_console"), None, "no session for a wrong token");

    // A sign-in form that the console did not hand out is refused.
    let forged = ConsoleClient::new(&_api.url(""));
    let refused = forged.post("/console/sign-in", &[("csrf", "made-up"), ("token", CONSOLE_TOKEN)]).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(forged.cookie("fleet_console"), None);

    let right = client.sign_in(CONSOLE_TOKEN).await;
    assert_eq!((right.status().as_u16(), location(&right)), (303, "/console"));
    let set_cookie: Vec<String> = right
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok().map(str::to_owned))
        .collect();
    let session = set_cookie.iter().find(|cookie| cookie.starts_with("fleet_console=")).expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age=28800"] {
        assert!(session.contains(attribute), "{attribute} missing: {session}");
    }
    let cookie = client.cookie("fleet_console").expect("kept");
    let (status, page) = client.get_text("/console").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(r#"id="verdict""#) && page.contains("no live worker"), "{page}");
    assert!(
        page.contains("Backlog: undelivered + pending, the largest of each minute"),
        "the backlog chart says what it plots"
    );

    // Redis names the session by the cookie's digest; the cookie itself is nowhere.
    let mut redis = ctx.redis.clone();
    let mut sessions: Vec<String> = Vec::new();
    let mut keys =
        redis.scan_match::<_, String>(format!("{}console:session:*", ctx.prefix.as_str())).await.expect("SCAN");
    while let Some(key) = keys.next_item().await {
        sessions.push(key.expect("a key"));
    }
    drop(keys);
    assert_eq!(sessions.len(), 1);
    assert!(!sessions[0].contains(&cookie));
    let ttl: i64 = redis.ttl(&sessions[0]).await.expect("TTL");
    assert!((28_000..=28_800).contains(&ttl), "the session lasts 8 hours: {ttl}");

    // Behind a TLS proxy the cookie is Secure.
    let tls = fleet::http_client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let form = tls.get(_api.url("/console/sign-in")).header("x-forwarded-proto", "https").send().await.expect("form");
    let nonce_cookie = form.headers().get("set-cookie").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(nonce_cookie.contains("; Secure"), "{nonce_cookie}");
}

#[tokio::test]
async fn a_change_without_the_sessions_csrf_token_is_refused_and_changes_nothing() {
    let ctx = context().await;
    let ids = ctx.add_dead_letters(&[("user.signup", "184532", FailureKind::Malformed)]).await;
    let (_api, client) = console(&ctx).await;
    let csrf = client.signed_in().await;
    let id = ids[0].as_str();

    let changes: [(&str, Vec<(&str, &str)>); 5] = [
        ("/console/dead-letters/purge", vec![("id", id), ("expected", "1"), ("confirm", "1")]),
        ("/console/dead-letters/replay", vec![("id", id)]),
        ("/console/dead-letters/purge", vec![("all", "1"), ("expected", "1"), ("confirm", "1")]),
        ("/console/cache/clear", vec![("kind", "all")]),
        ("/console/sign-out", vec![]),
    ];
    for (path, fields) in &changes {
        let without = client.post(path, fields).await;
        assert_eq!(without.status(), 403, "{path} without a CSRF token");
        let mut wrong = fields.clone();
        wrong.push(("csrf", "0000000000000000000000000000000000000000000000000000000000000000"));
        assert_eq!(client.post(path, &wrong).await.status(), 403, "{path} with another CSRF token");
    }
    assert_eq!(ctx.dead_letters().await.len(), 1, "nothing was purged or replayed");
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 0);

    // Without a session at all, a change is refused too, token or not.
    let stranger = ConsoleClient::new(&_api.url(""));
    let refused = stranger
        .post("/console/dead-letters/purge", &[("csrf", &csrf), ("id", id), ("expected", "1"), ("confirm", "1")])
        .await;
    assert_eq!(refused.status(), 403);
    assert_eq!(ctx.dead_letters().await.len(), 1);

    // With it, and the typed confirmation, the purge happens.
    let mistyped = client
        .post("/console/dead-letters/purge", &[("csrf", &csrf), ("id", id), ("expected", "1"), ("confirm", "2")])
        .await;
    assert_eq!(mistyped.status(), 400, "the typed number must match");
    assert!(mistyped.text().await.expect("page").contains("nothing was deleted"));
    assert_eq!(ctx.dead_letters().await.len(), 1);
    let purged = client
        .post("/console/dead-letters/purge", &[("csrf", &csrf), ("id", id), ("expected", "1"), ("confirm", "1")])
        .await;
    assert_eq!((purged.status().as_u16(), location(&purged)), (303, "/console/dead-letters?purged=1"));
    assert!(ctx.dead_letters().await.is_empty());
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_client_address() {
    let ctx = context().await;
    let (_api, client) = console(&ctx).await;
    for attempt in 1..=10 {
        assert_eq!(client.sign_in("wrong-token-wrong-token").await.status(), 401, "attempt {attempt}");
    }
    let throttled = client.sign_in(CONSOLE_TOKEN).await;
    assert_eq!(throttled.status(), 429, "even the right token waits out the window");
    assert!(throttled.headers().get("retry-after").is_some());
    assert_eq!(client.cookie("fleet_console"), None);
}

#[tokio::test]
async fn concurrent_wrong_sign_ins_are_counted_atomically() {
    let ctx = context().await;
    let (api, _client) = console(&ctx).await;
    // Many at once from one address, each with its own form: at most 10 tokens are ever compared.
    let clients: Vec<ConsoleClient> = (0..60).map(|_| ConsoleClient::new(&api.url(""))).collect();
    let attempts = clients.iter().map(|client| async move { client.sign_in("wrong-token-wrong-token").await.status() });
    let answers = futures_util::future::join_all(attempts).await;
    let compared = answers.iter().filter(|status| status.as_u16() == 401).count();
    let throttled = answers.iter().filter(|status| status.as_u16() == 429).count();
    assert_eq!(compared + throttled, 60, "{answers:?}");
    assert!(compared <= 10, "{compared} wrong tokens were compared: {answers:?}");
    assert_eq!(ConsoleClient::new(&api.url("")).sign_in(CONSOLE_TOKEN).await.status(), 429);
}

#[tokio::test]
async fn signing_out_ends_the_session_at_once() {
    let ctx = context().await;
    let (_api, client) = console(&ctx).await;
    let csrf = client.signed_in().await;
    let cookie = client.cookie("fleet_console").expect("a session");
    let out = client.post("/console/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!((out.status().as_u16(), location(&out)), (303, "/console/sign-in"));
    assert_eq!(client.cookie("fleet_console"), None, "the cookie is cleared");

    // The old cookie no longer opens anything.
    client.set_cookie("fleet_console", &cookie);
    let after = client.get("/console/dead-letters").await;
    assert_eq!((after.status().as_u16(), location(&after)), (303, "/console/sign-in"));
}

#[tokio::test]
async fn a_new_console_token_ends_the_sessions_of_the_old_one() {
    let ctx = context().await;
    let (_old, client) = console(&ctx).await;
    client.signed_in().await;
    let cookie = client.cookie("fleet_console").expect("a session");
    // The same fleet, its API restarted with another token.
    let rotated = fleet::api::Settings {
        console_token: Some("a-rotated-console-token-9876543210".parse().expect("a token")),
        ..api_tuning()
    };
    let new = ctx.spawn_api(rotated).await;
    let after = ConsoleClient::new(&new.url(""));
    after.set_cookie("fleet_console", &cookie);
    let refused = after.get("/console").await;
    assert_eq!((refused.status().as_u16(), location(&refused)), (303, "/console/sign-in"));
    // The old token no longer signs in either.
    assert_eq!(after.sign_in(CONSOLE_TOKEN).await.status(), 401);
}

#[tokio::test]
async fn until_redis_is_reached_the_console_says_so_with_503() {
    let ctx = context().await;
    // A read API whose Redis was never reached.
    let state = fleet::api::ApiState::new(
        ctx.db.clone(),
        Arc::new(OnceCell::new()),
        ctx.keys.clone(),
        fleet::redis::cache::Ttls::default(),
        console_tuning(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(fleet::runtime::serve(listener, fleet::api::app(state), Default::default(), shutdown.clone()));
    let client = ConsoleClient::new(&format!("http://{address}"));
    let answer = client.sign_in(CONSOLE_TOKEN).await;
    assert_eq!(answer.status(), 503);
    assert!(answer.text().await.expect("page").contains("Redis has not been reached yet"));
    shutdown.cancel();
}

#[tokio::test]
async fn the_dead_letter_table_filters_by_topic_school_kind_and_age_and_pages() {
    let ctx = context().await;
    let mut letters = vec![("enrollment.progress", "184532", FailureKind::Malformed); 55];
    letters
        .extend([("user.signup", "other-school", FailureKind::Event), ("user.signup", "184532", FailureKind::Crashed)]);
    let ids = ctx.add_dead_letters(&letters).await;
    let (_api, client) = console(&ctx).await;
    client.signed_in().await;
    let rows = |page: &str| page.matches("<tr data-id=").count();

    let (status, first) = client.get_text("/console/dead-letters").await;
    assert_eq!(status, 200);
    assert_eq!(rows(&first), 50, "a page holds 50");
    assert!(first.contains("57 dead letters in all"), "{first}");
    assert!(first.contains(&format!("after={}", ids[49])), "the next page starts after the 50th");
    let (_, second) = client.get_text(&format!("/console/dead-letters?after={}", ids[49])).await;
    assert_eq!(rows(&second), 7);
    assert!(!second.contains(r#"id="next-page""#));

    for (query, expected) in [
        ("tenant=other-school", 1),
        ("topic=user.signup", 2),
        ("kind=crashed", 1),
        ("topic=user.signup&tenant=184532&kind=crashed", 1),
        ("age=15m", 50),
        ("tenant=*", 0),
    ] {
        let (status, page) = client.get_text(&format!("/console/dead-letters?{query}")).await;
        assert_eq!(status, 200, "{query}");
        assert_eq!(rows(&page), expected, "{query}");
    }
    let (status, _) = client.get_text("/console/dead-letters?kind=everything").await;
    assert_eq!(status, 400);

    // One in detail: its fields and its body pretty-printed.
    let (status, detail) = client.get_text(&format!("/console/dead-letters/{}", ids[56])).await;
    assert_eq!(status, 200);
    assert!(detail.contains("crashed") && detail.contains("\n  &quot;payload&quot;: {\n"), "{detail}");
    let (status, _) = client.get_text("/console/dead-letters/1-1").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn replaying_every_one_matching_runs_in_the_background_and_shows_its_progress() {
    replaying_every_one_matching_runs_in_the_background_and_shows_its_progress_on(context().await).await;
}

/// On `ctx`'s Redis, a single server or a cluster (`crate::cluster`).
pub async fn replaying_every_one_matching_runs_in_the_background_and_shows_its_progress_on(ctx: TestContext) {
    let mut letters = vec![("enrollment.progress", "184532", FailureKind::Malformed); 250];
    letters.push(("user.signup", "184532", FailureKind::Malformed));
    ctx.add_dead_letters(&letters).await;
    let (_api, client) = console(&ctx).await;
    client.signed_in().await;

    let (status, preview) = client.get_text("/console/dead-letters/replay?all=1&topic=enrollment.progress").await;
    assert_eq!(status, 200);
    assert!(preview.contains(r#"data-count="250""#), "the dry run counts them all");
    assert!(preview.contains("… and 150 more."), "and lists the first 100");
    assert_eq!(ctx.dead_letters().await.len(), 251, "a preview changes nothing");
    // A dead letter of the topic that arrives after the preview is not replayed unseen.
    let late = ctx.add_dead_letters(&[("enrollment.progress", "184532", FailureKind::Malformed)]).await;

    let csrf = csrf_of(&preview).expect("the confirmation carries the CSRF token");
    let up_to = preview.split(r#"name="up_to" value=""#).nth(1).and_then(|rest| rest.split('"').next()).expect("up_to");
    let started = client
        .post(
            "/console/dead-letters/replay",
            &[("csrf", &csrf), ("all", "1"), ("topic", "enrollment.progress"), ("up_to", up_to), ("expected", "250")],
        )
        .await;
    assert_eq!(started.status(), 303);
    let job = location(&started).to_owned();
    assert!(job.starts_with("/console/jobs/"), "{job}");
    eventually("the replay is done", Duration::from_secs(30), || async {
        client.get_text(&job).await.1.contains(r#"data-state="done""#)
    })
    .await;
    let (_, done) = client.get_text(&job).await;
    assert!(done.contains("Done: 250 dead letters replayed"), "{done}");
    assert!(done.contains(r#"value="250" max="250""#), "the progress bar is full: {done}");
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 250);
    let left: Vec<String> = ctx.dead_letters().await.into_iter().map(|letter| letter.id).collect();
    assert_eq!(left.len(), 2, "the other topic and the late one stay");
    assert!(left.contains(&late[0]));
    let (status, _) = client.get_text("/console/jobs/00000000000000000000000000000000").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_cache_is_cleared_by_tag_after_a_confirmation() {
    let ctx = context().await;
    let keys = ctx.keys.clone();
    let entries: Vec<fleet::redis::cache::Entry> = ["a", "b"]
        .into_iter()
        .map(|tenant| fleet::redis::cache::Entry {
            key: keys.statistics(tenant, 1),
            tags: vec![keys.tag(tenant, &fleet::redis::keys::tags::course(1))],
            ttl: Duration::from_secs(600),
            value: fleet::redis::cache::Versioned { version: 1, body: json!({ "course_id": 1 }) },
        })
        .collect();
    let mut redis = ctx.redis.clone();
    fleet::redis::cache::put(&mut redis, &entries).await.expect("put");
    let (_api, client) = console(&ctx).await;
    let csrf = client.signed_in().await;

    let (status, page) = client.get_text("/console/cache").await;
    assert_eq!(status, 200);
    assert!(page.contains("statistics") && page.contains("Tags: 2"), "{page}");
    let (status, preview) = client.get_text("/console/cache/clear?tag=course:1&tenant=a").await;
    assert_eq!(status, 200);
    assert!(preview.contains("every cached value tagged course:1 in school a"), "{preview}");
    let exists = |key: String| {
        let mut redis = ctx.redis.clone();
        async move { redis.exists::<_, bool>(key).await.expect("EXISTS") }
    };
    assert!(exists(keys.statistics("a", 1)).await, "a preview clears nothing");
    let (status, _) = client.get_text("/console/cache/clear?tag=course:*").await;
    assert_eq!(status, 400, "a tag is a literal name");

    let cleared = client.post("/console/cache/clear", &[("csrf", &csrf), ("tag", "course:1"), ("tenant", "a")]).await;
    assert_eq!((cleared.status().as_u16(), location(&cleared)), (303, "/console/cache?removed=1"));
    assert!(!exists(keys.statistics("a", 1)).await);
    assert!(exists(keys.statistics("b", 1)).await, "school b keeps its value");
    let (_, after) = client.get_text("/console/cache?removed=1").await;
    assert!(after.contains("Removed 1 cached keys."), "{after}");

    // By kind, after its own confirmation.
    let (status, preview) = client.get_text("/console/cache/clear?kind=statistics").await;
    assert_eq!(status, 200);
    assert!(preview.contains("every cached value of kind statistics"), "{preview}");
    let cleared = client.post("/console/cache/clear", &[("csrf", &csrf), ("kind", "statistics")]).await;
    assert_eq!((cleared.status().as_u16(), location(&cleared)), (303, "/console/cache?removed=1"));
    assert!(!exists(keys.statistics("b", 1)).await);
}

#[tokio::test]
async fn the_workers_record_what_they_applied_for_the_charts() {
    the_workers_record_what_they_applied_for_the_charts_on(context().await).await;
}

/// On `ctx`'s Redis, a single server or a cluster (`crate::cluster`).
pub async fn the_workers_record_what_they_applied_for_the_charts_on(ctx: TestContext) {
    for n in 0..12 {
        ctx.enqueue(&crate::processes::progress_event(n)).await;
    }
    let worker = ctx.spawn_worker(ctx.worker_settings("charted")).await;
    ctx.wait_until_drained().await;
    let mut redis = ctx.redis.clone();
    eventually("the minute's activity is written", Duration::from_secs(20), || async {
        let report = fleet::operator::status::report(&mut redis.clone(), &ctx.keys).await.expect("a report");
        report.recent.applied == 12
    })
    .await;
    worker.stop().await;
    let minutes = fleet::operator::status::activity_by_minute(&mut redis, &ctx.keys, 60).await.expect("minutes");
    assert_eq!(minutes.len(), 60);
    let applied: u64 = minutes.iter().map(|(_, tally)| tally.applied).sum();
    let with_freshness: u64 = minutes.iter().map(|(_, tally)| tally.freshness_count).sum();
    assert_eq!((applied, with_freshness), (12, 12));
    let minute_key =
        ctx.keys.activity(minutes.iter().rev().find(|(_, t)| t.applied > 0).expect("a busy minute").0.timestamp() / 60);
    let ttl: i64 = redis.ttl(minute_key).await.expect("TTL");
    assert!(ttl > 0 && ttl <= 7200, "a minute is kept two hours: {ttl}");
}

#[tokio::test]
async fn the_retries_page_lists_what_is_scheduled_for_when_after_which_error() {
    let ctx = context().await;
    let entry = fleet::redis::entry::Entry {
        id: "5-0".into(),
        event: fleet::redis::entry::EventFields {
            body: b"{}".to_vec(),
            topic: "order.created".to_owned(),
            tenant: "184532".to_owned(),
            event_id: "20250401000000000000042".to_owned(),
            received_at: "2025-04-01T00:00:00.000Z".to_owned(),
            headers: None,
        },
        ..Default::default()
    };
    let failure = fleet::redis::failures::Failure {
        entry: &entry,
        kind: FailureKind::Event,
        error: "a value out of range (SQLSTATE 22003)".into(),
        attempts: 3,
    };
    let due = chrono::Utc::now() + chrono::Duration::minutes(10);
    let mut redis = ctx.redis.clone();
    fleet::redis::stream::ensure_group(&mut redis, &ctx.keys.shard(0)).await.expect("group");
    fleet::redis::failures::schedule_retries(&mut redis, &ctx.keys.shard(0), &[(failure, due)])
        .await
        .expect("scheduled");
    let (_api, client) = console(&ctx).await;
    client.signed_in().await;
    let (status, page) = client.get_text("/console/retries").await;
    assert_eq!(status, 200, "{page}");
    for expected in ["1 events wait", "order.created", "20250401000000000000042", "SQLSTATE 22003", "in 9 min"] {
        assert!(page.contains(expected), "no {expected:?} in:\n{page}");
    }
}

#[tokio::test]
async fn workers_add_their_tallies_to_one_minute_keeping_the_largest_figures() {
    use fleet::redis::activity::Recorder;
    let ctx = context().await;
    let now = chrono::Utc::now();
    let (first, second) = (Recorder::default(), Recorder::default());
    first.applied(now, [Duration::from_millis(100), Duration::from_millis(900)]);
    first.backlog(now, 40);
    second.applied(now, [Duration::from_millis(300)]);
    second.backlog(now, 7);
    let mut redis = ctx.redis.clone();
    first.flush(&mut redis, &ctx.keys).await.expect("flush");
    second.flush(&mut redis, &ctx.keys).await.expect("flush");
    second.flush(&mut redis, &ctx.keys).await.expect("a flush with nothing tallied writes nothing");
    let minutes = fleet::redis::activity::read(&mut redis, &ctx.keys, fleet::redis::activity::minute_of(now), 1)
        .await
        .expect("read");
    let tally = minutes[0].1;
    assert_eq!((tally.applied, tally.freshness_count, tally.freshness_sum_ms), (3, 3, 1300));
    assert_eq!((tally.freshness_max_ms, tally.backlog_max), (900, 40));
}

#[tokio::test]
async fn fleet_api_refuses_a_console_token_short_enough_to_guess() {
    let ctx = context().await;
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        fleet(&ctx, &["api"])
            .env("FLEET_API_TOKEN", "bearer-token-for-tests")
            .env("FLEET_CONSOLE_TOKEN", "short-secret")
            .output(),
    )
    .await
    .expect("it refuses at once")
    .expect("run fleet");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("FLEET_CONSOLE_TOKEN") && stderr.contains("at least 16"), "{stderr}");
    assert!(!stderr.contains("short-secret"), "the value is never shown: {stderr}");
}

#[tokio::test]
async fn a_purge_or_replay_acts_only_on_what_the_server_recounts_and_the_operator_confirmed() {
    let ctx = context().await;
    let mut letters = vec![("user.signup", "pt1", FailureKind::Malformed); 5];
    letters.extend(vec![("user.signup", "pt2", FailureKind::Malformed); 15]);
    ctx.add_dead_letters(&letters).await;
    let (_api, client) = console(&ctx).await;
    let csrf = client.signed_in().await;
    let forged: [Vec<(&str, &str)>; 4] = [
        // The form's own `expected`, no bound: it purged 5 before.
        vec![("all", "1"), ("tenant", "pt1"), ("expected", "1"), ("confirm", "1")],
        // Zero of everything: it purged all 20 before.
        vec![("all", "1"), ("expected", "0"), ("confirm", "0")],
        // A bound, but a number that is not the recount (5).
        vec![("all", "1"), ("tenant", "pt1"), ("up_to", "9999999999999-0"), ("expected", "1"), ("confirm", "1")],
        vec![("all", "1"), ("up_to", "9999999999999-0"), ("expected", "0"), ("confirm", "0")],
    ];
    for fields in &forged {
        let mut fields = fields.clone();
        fields.push(("csrf", &csrf));
        let answer = client.post("/console/dead-letters/purge", &fields).await;
        assert_eq!(answer.status(), 400, "{fields:?}");
        assert_eq!(ctx.dead_letters().await.len(), 20, "nothing purged by {fields:?}");
    }
    for fields in [
        vec![("all", "1"), ("tenant", "pt1")],
        vec![("all", "1"), ("tenant", "pt1"), ("expected", "2")],
        vec![("all", "1"), ("tenant", "pt1"), ("up_to", "9999999999999-0"), ("expected", "2")],
    ] {
        let mut fields = fields.clone();
        fields.push(("csrf", &csrf));
        let answer = client.post("/console/dead-letters/replay", &fields).await;
        assert_eq!(answer.status(), 400, "{fields:?}");
        assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 0, "nothing replayed by {fields:?}");
    }
    // What the recount finds, confirmed with its bound: done.
    let purged = client
        .post(
            "/console/dead-letters/purge",
            &[("csrf", &csrf), ("all", "1"), ("tenant", "pt1"), ("up_to", "9999999999999-0"), ("confirm", "5")],
        )
        .await;
    assert_eq!(purged.status(), 303);
    assert_eq!(ctx.dead_letters().await.len(), 15);
}

/// A wrong signing key shows on the intake page: the school's 401s, with
/// what they mean; other refusals apart, each counted.
#[tokio::test]
async fn the_intake_page_shows_refusals_by_answer_and_school() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    let body = crate::helpers::fixture("enrollment.created");
    for _ in 0..3 {
        let url = intake.url("/webhooks/thinkific/wrong-key-school");
        let refused = crate::helpers::post_signed_url(&url, &body, "not-the-schools-key").await;
        assert_eq!(refused.status(), 401);
    }
    let unsigned = fleet::http_client::client(Duration::from_secs(10))
        .post(intake.url("/webhooks/thinkific"))
        .body("{}")
        .send()
        .await
        .expect("a request");
    assert_eq!(unsigned.status(), 401);

    let (_api, client) = console(&ctx).await;
    client.signed_in().await;
    // Counted beside the answers: wait for the four.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let page = loop {
        let (status, page) = client.get_text("/console/intake").await;
        assert_eq!(status, 200, "{page}");
        if page.contains("4 webhooks refused") {
            break page;
        }
        assert!(tokio::time::Instant::now() < deadline, "the refusals are not counted: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let row = |school: &str| {
        let at = page.find(&format!("<td class=\"id\">{school}</td>")).unwrap_or_else(|| panic!("{school}: {page}"));
        page[page[..at].rfind("<tr>").expect("its row")..at + page[at..].find("</tr>").expect("its end")].to_owned()
    };
    let wrong_key = row("wrong-key-school");
    assert!(wrong_key.contains("401 unauthorized") && wrong_key.contains(">3<"), "{wrong_key}");
    assert!(wrong_key.contains("THINKIFIC_SCHOOL_KEYS"), "says what to check: {wrong_key}");
    let nameless = row(fleet::redis::refusals::NO_SCHOOL);
    assert!(nameless.contains("401 unauthorized") && nameless.contains(">1<"), "{nameless}");
    assert!(page.contains("href=\"/console/intake\""), "the navigation leads there");
}

/// The overview lists each process that reported in the last minute, with
/// its dependencies as its `/readyz` reports them; a silent one is dropped.
#[tokio::test]
async fn the_overview_shows_what_each_process_reports_of_its_dependencies() {
    use fleet::redis::roles::{self, DependencyState, RoleReport};
    let ctx = context().await;
    let mut redis = ctx.redis.clone();
    let dependency =
        |name: &str, state: &str| DependencyState { name: name.to_owned(), required: true, state: state.to_owned() };
    let now = chrono::Utc::now();
    let worker = RoleReport {
        role: "worker".into(),
        instance: "worker-7".into(),
        ready: false,
        dependencies: vec![dependency("postgres", "connection refused (waiting for 12 s)"), dependency("redis", "up")],
        at: now,
    };
    let gone = RoleReport { instance: "worker-gone".into(), at: now - chrono::Duration::minutes(5), ..worker.clone() };
    roles::record(&mut redis, &ctx.keys, &gone).await.expect("an old report");
    roles::record(&mut redis, &ctx.keys, &worker).await.expect("a report");
    let (_api, client) = console(&ctx).await;
    client.signed_in().await;
    let (status, page) = client.get_text("/console").await;
    assert_eq!(status, 200, "{page}");
    let table = &page[page.find("id=\"processes\"").expect("the processes")..];
    assert!(table.contains("worker-7") && table.contains("unavailable"), "{table}");
    assert!(table.contains("connection refused (waiting for 12 s)"), "{table}");
    assert!(!page.contains("worker-gone"), "a process silent for a minute is dropped: {page}");
}
