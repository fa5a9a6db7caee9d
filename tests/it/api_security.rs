//! The read API is closed and scoped: tokens and their schools, a rate limit
//! that only authenticated callers spend, strict input, 404s that cache
//! nothing, and a cache whose tags neither outlive their values nor block
//! Redis when they go.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fleet::api::Settings as ApiTuning;
use fleet::redis::cache::{self, Entry, Versioned};
use redis::AsyncCommands;
use serde_json::{json, Value};
use sha2::Digest;

use crate::helpers::{api_tuning, context, fixture, fleet, ApiServer, TestContext};

const TENANT: &str = "184532";
const COURSE: i64 = 2871345;
const EVERY_SCHOOL: &str = "token-for-every-school";

fn tuning_with_tokens(scoped: &str) -> ApiTuning {
    let mut tuning = api_tuning();
    tuning.api_token = Some(EVERY_SCHOOL.parse().expect("token"));
    tuning.api_tokens = Some(scoped.parse().expect("school=token pairs"));
    tuning
}

/// GET `path` with `token` (none: no Authorization header) and extra headers.
async fn get_as(api: &ApiServer, path: &str, token: Option<&str>, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = fleet::http_client::builder()
        .build()
        .expect("an HTTP client")
        .get(api.url(path))
        .timeout(Duration::from_secs(10));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("request completes")
}

async fn status_and_error(response: reqwest::Response) -> (u16, Option<String>) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["error"].as_str().map(str::to_owned))
}

/// Every key under the test's prefix.
async fn keys_under_prefix(ctx: &TestContext) -> BTreeSet<String> {
    let mut redis = ctx.redis.clone();
    let mut keys = BTreeSet::new();
    let mut iter = redis.scan_match::<_, String>(format!("{}*", ctx.prefix.as_str())).await.expect("SCAN");
    while let Some(key) = iter.next_item().await {
        keys.insert(key.expect("a key name"));
    }
    keys
}

#[tokio::test]
async fn fleet_api_refuses_to_start_without_a_token_and_never_shows_one() {
    let ctx = context().await;
    let port = fleet::local_services::free_port().expect("port");
    let mut open = fleet(&ctx, &["api"]).env("FLEET_API_LISTEN", format!("127.0.0.1:{port}")).spawn().expect("spawn");
    let exited = tokio::time::timeout(Duration::from_secs(20), open.wait()).await;
    let _ = open.start_kill();
    let status = exited.expect("`fleet api` without a token stopped instead of serving").expect("wait");
    let output = open.wait_with_output().await.expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success());
    assert!(stderr.contains("FLEET_API_TOKEN") && stderr.contains("FLEET_API_TOKENS"), "{stderr}");

    // A bad FLEET_API_TOKENS is refused without quoting it.
    let bad = fleet(&ctx, &["api"]).env("FLEET_API_TOKENS", "184532=s3cret-one,a:b=s3cret-two").output().await;
    let bad = bad.expect("run fleet");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(stderr.contains("FLEET_API_TOKENS") && stderr.contains("item 2"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "a token reached the message:\n{stderr}");

    // --help lists the settings and hides their values.
    let help = fleet(&ctx, &["api", "--help"])
        .env("FLEET_API_TOKEN", "s3cret-every")
        .env("FLEET_API_TOKENS", "184532=s3cret-one")
        .output()
        .await
        .expect("run fleet");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("FLEET_API_TOKENS") && text.contains("FLEET_TRUSTED_PROXIES"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[tokio::test]
async fn a_scoped_token_reads_only_its_schools() {
    let ctx = context().await;
    for school in [TENANT, "second", "third"] {
        ctx.add_course(school, COURSE).await;
    }
    // The same token for two schools; a token whose value holds `=`.
    let api = ctx.spawn_api(tuning_with_tokens("184532=shared, second=shared, third=key=with=equals")).await;
    let dashboard = |school: &str| format!("/api/dashboard/cached?tenant_id={school}");

    for (school, token, expected) in [
        (TENANT, "shared", 200),
        ("second", "shared", 200),
        ("third", "shared", 403),
        ("third", "key=with=equals", 200),
        (TENANT, "key=with=equals", 403),
        ("third", EVERY_SCHOOL, 200),
        ("unknown", EVERY_SCHOOL, 404),
        ("unknown", "shared", 403),
        (TENANT, "wrong", 401),
    ] {
        let (status, error) = status_and_error(get_as(&api, &dashboard(school), Some(token), &[]).await).await;
        assert_eq!(status, expected, "{school} with {token}");
        if expected == 403 {
            assert_eq!(error.as_deref(), Some(format!("this token may not read school `{school}`").as_str()));
        }
    }
    let statistics = format!("/api/statistics/cached?tenant_id=second&course_id={COURSE}");
    assert_eq!(get_as(&api, &statistics, Some("key=with=equals"), &[]).await.status(), 403);
    let page = format!("/api/enrollments/cached?tenant_id=second&course_id={COURSE}");
    assert_eq!(get_as(&api, &page, Some("key=with=equals"), &[]).await.status(), 403);
    assert_eq!(get_as(&api, &page, None, &[]).await.status(), 401);
}

#[tokio::test]
async fn unauthenticated_floods_get_401_and_do_not_spend_a_clients_budget() {
    let ctx = context().await;
    ctx.add_course(TENANT, COURSE).await;
    let mut tuning = tuning_with_tokens("");
    tuning.rate_limit_requests = 3;
    let api = ctx.spawn_api(tuning).await;
    let path = format!("/api/dashboard/cached?tenant_id={TENANT}");
    for attempt in 0..20 {
        let token = if attempt % 2 == 0 { None } else { Some("guessed") };
        assert_eq!(get_as(&api, &path, token, &[]).await.status(), 401);
    }
    for _ in 0..3 {
        assert_eq!(get_as(&api, &path, Some(EVERY_SCHOOL), &[]).await.status(), 200);
    }
    assert_eq!(get_as(&api, &path, Some(EVERY_SCHOOL), &[]).await.status(), 429);
    assert_eq!(get_as(&api, &path, None, &[]).await.status(), 401, "authentication still comes first");
}

#[tokio::test]
async fn each_token_has_its_own_budget_keyed_by_a_fingerprint() {
    let ctx = context().await;
    ctx.add_course(TENANT, COURSE).await;
    let mut tuning = tuning_with_tokens("184532=school-token");
    tuning.rate_limit_requests = 3;
    let api = ctx.spawn_api(tuning).await;
    let path = format!("/api/dashboard/cached?tenant_id={TENANT}");
    for token in [EVERY_SCHOOL, "school-token"] {
        for _ in 0..3 {
            assert_eq!(get_as(&api, &path, Some(token), &[]).await.status(), 200, "{token}");
        }
        assert_eq!(get_as(&api, &path, Some(token), &[]).await.status(), 429, "{token}");
    }

    let counters: Vec<String> =
        keys_under_prefix(&ctx).await.into_iter().filter(|key| key.contains("ratelimit")).collect();
    assert_eq!(counters.len(), 2, "one counter per token: {counters:?}");
    for token in [EVERY_SCHOOL, "school-token"] {
        let fingerprint = hex::encode(&sha2::Sha256::digest(token.as_bytes())[..8]);
        assert!(counters.iter().any(|key| key.contains(&fingerprint)), "{fingerprint} in {counters:?}");
        assert!(!counters.iter().any(|key| key.contains(token)), "a token in a key: {counters:?}");
    }
}

#[tokio::test]
async fn x_forwarded_for_is_ignored_from_an_untrusted_peer() {
    let ctx = context().await;
    ctx.add_course(TENANT, COURSE).await;
    let mut tuning = tuning_with_tokens("");
    tuning.rate_limit_requests = 2;
    tuning.trusted_proxies = vec!["10.0.0.1".parse().expect("IP")];
    let api = ctx.spawn_api(tuning).await;
    let path = format!("/api/dashboard/cached?tenant_id={TENANT}");
    let statuses = [
        get_as(&api, &path, Some(EVERY_SCHOOL), &[("x-forwarded-for", "192.0.2.1")]).await.status(),
        get_as(&api, &path, Some(EVERY_SCHOOL), &[("x-forwarded-for", "192.0.2.2")]).await.status(),
        get_as(&api, &path, Some(EVERY_SCHOOL), &[("x-forwarded-for", "192.0.2.3")]).await.status(),
    ];
    assert_eq!(statuses.map(|status| status.as_u16()), [200, 200, 429], "a claimed address buys no budget");
}

#[tokio::test]
async fn x_forwarded_for_names_the_client_behind_a_trusted_proxy() {
    let ctx = context().await;
    ctx.add_course(TENANT, COURSE).await;
    let mut tuning = tuning_with_tokens("");
    tuning.rate_limit_requests = 2;
    // The test connects from 127.0.0.1: it plays the proxy.
    tuning.trusted_proxies = vec!["127.0.0.1".parse().expect("IP"), "10.0.0.1".parse().expect("IP")];
    let api = ctx.spawn_api(tuning).await;
    let path = format!("/api/dashboard/cached?tenant_id={TENANT}");
    let status = |forwarded: &'static str| {
        let api = &api;
        let path = &path;
        async move { get_as(api, path, Some(EVERY_SCHOOL), &[("x-forwarded-for", forwarded)]).await.status().as_u16() }
    };
    assert_eq!(status("192.0.2.1").await, 200);
    assert_eq!(status("192.0.2.1").await, 200);
    assert_eq!(status("192.0.2.1").await, 429);
    assert_eq!(status("192.0.2.2").await, 200, "another client behind the proxy has its own budget");
    // Addresses left of the right-most untrusted one are the client's own claims.
    assert_eq!(status("203.0.113.7, 192.0.2.2").await, 200);
    assert_eq!(status("203.0.113.8, 192.0.2.2, 10.0.0.1").await, 429, "a listed proxy hop is skipped");
}

#[tokio::test]
async fn invalid_tenant_ids_are_400_on_every_route() {
    let ctx = context().await;
    let api = ctx.spawn_api(api_tuning()).await;
    let too_long = "x".repeat(65);
    for tenant in ["a%00b", "*", "a:b", "a%3Ab", too_long.as_str(), "%FF"] {
        for route in [
            format!("/api/dashboard/cached?tenant_id={tenant}"),
            format!("/api/statistics/cached?tenant_id={tenant}&course_id={COURSE}"),
            format!("/api/enrollments/cached?tenant_id={tenant}&course_id={COURSE}"),
        ] {
            let (status, error) = status_and_error(api.get(&route).await).await;
            assert_eq!(status, 400, "{route}");
            assert!(error.is_some(), "{route}: a JSON error");
        }
    }
    assert_eq!(api.state.postgres_queries(), 0, "nothing invalid reaches Postgres");
}

#[tokio::test]
async fn unknown_schools_courses_and_pages_are_404_and_cache_nothing() {
    let ctx = context().await;
    ctx.enqueue(&fixture("enrollment.created")).await;
    ctx.drain().await;
    ctx.add_course(TENANT, 7).await;
    let api = ctx.spawn_api(api_tuning()).await;
    let exists = [
        format!("/api/dashboard/cached?tenant_id={TENANT}"),
        format!("/api/statistics/cached?tenant_id={TENANT}&course_id={COURSE}"),
        format!("/api/enrollments/cached?tenant_id={TENANT}&course_id={COURSE}&per_page=1"),
        // A course without enrollments: zeros and an empty first page.
        format!("/api/statistics/cached?tenant_id={TENANT}&course_id=7"),
        format!("/api/enrollments/cached?tenant_id={TENANT}&course_id=7"),
    ];
    for path in &exists {
        assert_eq!(api.get(path).await.status(), 200, "{path}");
    }
    // The served reads are recorded for rewarm (after the answer: wait for them).
    let reads_recorded = || async {
        let mut redis = ctx.redis.clone();
        redis.zrange::<_, Vec<String>>(ctx.keys.cache_reads(), 0, -1).await.expect("ZRANGE")
    };
    crate::helpers::eventually("the served reads recorded", Duration::from_secs(5), || async {
        reads_recorded().await.len() == exists.len()
    })
    .await;
    let before = keys_under_prefix(&ctx).await;

    let big_school = "s".repeat(64);
    for (path, message) in [
        ("/api/dashboard/cached?tenant_id=nobody".to_owned(), "school `nobody` has no data"),
        (format!("/api/dashboard/cached?tenant_id={big_school}"), "has no data"),
        (format!("/api/statistics/cached?tenant_id=nobody&course_id={COURSE}"), "school `nobody` has no data"),
        (format!("/api/enrollments/cached?tenant_id=nobody&course_id={COURSE}"), "school `nobody` has no data"),
        (format!("/api/statistics/cached?tenant_id={TENANT}&course_id=999"), "school `184532` has no course 999"),
        (format!("/api/enrollments/cached?tenant_id={TENANT}&course_id=999"), "school `184532` has no course 999"),
        (
            format!("/api/enrollments/cached?tenant_id={TENANT}&course_id={COURSE}&page=2&per_page=1"),
            "page 2 is after the last page of course 2871345",
        ),
        (format!("/api/enrollments/cached?tenant_id={TENANT}&course_id=7&page=2"), "page 2 is after the last page"),
    ] {
        for _ in 0..2 {
            let (status, error) = status_and_error(api.get(&path).await).await;
            assert_eq!(status, 404, "{path}");
            let error = error.unwrap_or_default();
            assert!(error.contains(message), "{path}: {error}");
        }
    }

    // Counters of the rate limit come and go with their window; nothing else may appear.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let added: Vec<String> =
        keys_under_prefix(&ctx).await.difference(&before).filter(|key| !key.contains(":ratelimit:")).cloned().collect();
    assert!(added.is_empty(), "a 404 left keys behind: {added:?}");
    assert_eq!(reads_recorded().await.len(), exists.len(), "a read answered 404 is not kept warm");
}

#[tokio::test]
async fn answers_with_learners_data_are_private_and_the_bearer_scheme_is_case_insensitive() {
    let ctx = context().await;
    ctx.enqueue(&fixture("enrollment.created")).await;
    ctx.drain().await;
    let api = ctx.spawn_api(tuning_with_tokens("")).await;
    let path = format!("/api/enrollments/cached?tenant_id={TENANT}&course_id={COURSE}");
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let authorization = format!("{scheme} {EVERY_SCHOOL}");
        let response = get_as(&api, &path, None, &[("authorization", &authorization)]).await;
        assert_eq!(response.status(), 200, "{scheme}");
        let cache_control = response.headers().get("cache-control").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(cache_control, "private, no-store", "{scheme}");
    }
    let wrong = get_as(&api, &path, None, &[("authorization", &format!("Basic {EVERY_SCHOOL}"))]).await;
    assert_eq!(wrong.status(), 401, "another scheme is not a bearer token");
}

fn entry(key: &str, tag: &str, ttl: Duration) -> Entry {
    Entry { key: key.to_owned(), tags: vec![tag.to_owned()], ttl, value: Versioned { version: 1, body: json!(1) } }
}

#[tokio::test]
async fn a_tag_set_expires_with_the_longest_lived_value_in_it() {
    let ctx = context().await;
    let keys = ctx.keys.clone();
    let tag = keys.tag(TENANT, "course:1");
    let mut redis = ctx.redis.clone();
    let tag_ttl = |redis: &mut fleet::redis::RedisConnection| {
        let mut redis = redis.clone();
        let tag = tag.clone();
        async move { redis.pttl::<_, i64>(&tag).await.expect("PTTL") }
    };
    // A value lives twice its freshness: 60 s fresh, 120 s in all.
    cache::put(&mut redis, &[entry(&keys.statistics(TENANT, 1), &tag, Duration::from_secs(60))]).await.expect("put");
    let ttl = tag_ttl(&mut redis).await;
    assert!((115_000..=120_000).contains(&ttl), "the tag set lives as long as its value: {ttl} ms");

    // A shorter-lived value never shortens it.
    cache::put(&mut redis, &[entry(&keys.dashboard(TENANT), &tag, Duration::from_secs(5))]).await.expect("put");
    let ttl = tag_ttl(&mut redis).await;
    assert!((115_000..=120_000).contains(&ttl), "not lowered: {ttl} ms");

    // A longer-lived one extends it.
    cache::put(&mut redis, &[entry(&keys.statistics(TENANT, 2), &tag, Duration::from_secs(300))]).await.expect("put");
    let ttl = tag_ttl(&mut redis).await;
    assert!((595_000..=600_000).contains(&ttl), "raised to the longest: {ttl} ms");
}

/// Fills `tag` with `count` cached keys named `<stem><n>`, in slices so the
/// setup itself never blocks the shared Redis for long.
async fn fill_tag(redis: &mut fleet::redis::RedisConnection, tag: &str, stem: &str, count: u64) {
    let fill = redis::Script::new(
        "for i = tonumber(ARGV[2]), tonumber(ARGV[3]) do
           local key = ARGV[1] .. i
           redis.call('SET', key, '1')
           redis.call('SADD', KEYS[1], key)
         end
         return 0",
    );
    for start in (0..count).step_by(10_000) {
        let end = (start + 10_000).min(count) - 1;
        let _: i64 = fill.key(tag).arg(stem).arg(start).arg(end).invoke_async(redis).await.expect("fill");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_tag_is_invalidated_without_blocking_redis() {
    const MEMBERS: u64 = 200_000;
    // A loaded 2-core machine answers a PING well within this; one script
    // over the whole tag keeps Redis busy far longer.
    const LONGEST_PING: Duration = Duration::from_millis(250);
    let ctx = context().await;
    let keys = ctx.keys.clone();
    let tag = keys.tag(TENANT, "course:huge");
    let stem = format!("{}cache:{{{TENANT}}}:huge:", ctx.prefix.as_str());
    let mut redis = ctx.redis.clone();
    fill_tag(&mut redis, &tag, &stem, MEMBERS).await;
    assert_eq!(redis.scard::<_, u64>(&tag).await.expect("SCARD"), MEMBERS);

    let stop = tokio_util::sync::CancellationToken::new();
    let pinger = {
        let stop = stop.clone();
        let mut other = fleet::redis::connect(&ctx.redis_target(), Duration::from_secs(2)).await.expect("connect");
        tokio::spawn(async move {
            let (mut longest, mut pings) = (Duration::ZERO, 0u32);
            while !stop.is_cancelled() {
                let sent = Instant::now();
                let _: String = redis::cmd("PING").query_async(&mut other).await.expect("PING");
                longest = longest.max(sent.elapsed());
                pings += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (longest, pings)
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    let removed = cache::invalidate(&mut redis, std::slice::from_ref(&tag)).await.expect("invalidate");
    let took = started.elapsed();
    stop.cancel();
    let (longest, pings) = pinger.await.expect("pinger");

    assert_eq!(removed, MEMBERS);
    assert!(pings > 1, "Redis answered other clients during the invalidation ({pings} pings in {took:?})");
    assert!(longest < LONGEST_PING, "a PING waited {longest:?} during an invalidation of {took:?}");
    assert!(!redis.exists::<_, bool>(&tag).await.expect("EXISTS"), "the tag set is gone");
    let left: Vec<String> = keys_under_prefix(&ctx).await.into_iter().filter(|key| key.starts_with(&stem)).collect();
    assert!(left.is_empty(), "{} keys of the tag are left", left.len());
}

/// `fleet dev` off loopback, with `env`: its exit code and what it said.
async fn dev_off_loopback(env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet"));
    command.arg("dev").env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command.env("FLEET_DEV_DIR", crate::helpers::scratch_dir("dev-off-loopback"));
    command.envs(env.iter().map(|(name, value)| (*name, value.as_str())));
    let output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .expect("fleet dev answers at once")
        .expect("fleet dev runs");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn fleet_dev_off_loopback_needs_a_token_and_its_own_webhook_key() {
    let port = fleet::local_services::free_port().expect("a port").to_string();
    let token = ("FLEET_API_TOKEN", "a-token-of-this-test".to_owned());
    let own_key = ("THINKIFIC_WEBHOOK_SECRET", "the-schools-own-key".to_owned());
    let dev_key = ("THINKIFIC_WEBHOOK_SECRET", "fleet-dev-secret".to_owned());
    for env in [
        vec![("PORT", port.clone())],
        vec![("PORT", port.clone()), token.clone()],
        vec![("PORT", port.clone()), own_key.clone()],
        vec![("PORT", port.clone()), token.clone(), dev_key],
        vec![("FLEET_LISTEN", format!("0.0.0.0:{port}")), own_key.clone()],
    ] {
        let (code, stderr) = dev_off_loopback(&env).await;
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains("FLEET_API_TOKEN") && stderr.contains("THINKIFIC_WEBHOOK_SECRET"), "{stderr}");
        assert!(!stderr.contains("a-token-of-this-test") && !stderr.contains("the-schools-own-key"), "{stderr}");
    }
}
