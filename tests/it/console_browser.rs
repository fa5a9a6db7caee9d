//! The operator console in a real browser: headless Chromium, driven through
//! chromedriver, against the real `fleet api` binary with the harness's
//! Redis and Postgres, and an intake and a worker run in-process.
//!
//! One walk through what an operator does: sign in (a wrong token first),
//! see a poison webhook's dead letter appear, open it, replay it once its
//! cause is fixed and see it applied in Postgres, purge another with the
//! typed confirmation; a change sent without the CSRF token is refused.
//! With `FLEET_CONSOLE_SCREENSHOTS=docs` it also writes the README's
//! screenshots.

use std::time::Duration;

use fantoccini::Locator;
use fleet::redis::failures::FailureKind;
use serde_json::json;

use crate::helpers::{
    event, eventually, fleet, signal, wait_exit, Browser, ConsoleClient, IntakeServer, TestContext, CONSOLE_TOKEN,
    SECRET,
};

const API_TOKEN: &str = "bearer-token-of-the-browser-test";

/// POSTs a signed webhook with the headers Thinkific sends.
async fn deliver(intake: &IntakeServer, body: &str) {
    let topic = serde_json::from_str::<serde_json::Value>(body)
        .map(|body| format!("{}.{}", body["resource"].as_str().unwrap_or(""), body["action"].as_str().unwrap_or("")))
        .unwrap_or_default();
    let answer = fleet::http_client::builder()
        .build()
        .expect("an HTTP client")
        .post(intake.url("/webhooks/thinkific"))
        .header("content-type", "application/json")
        .header("user-agent", "Thinkific-Webhooks/1.0")
        .header("x-thinkific-topic", topic)
        .header("x-thinkific-hmac-sha256", fleet::intake::sign(SECRET.as_bytes(), body.as_bytes()))
        .body(body.to_owned())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the intake answers");
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap_or_default());
}

/// Enrollment `id` of course 2871345 in school 184532.
fn enrollment(event_id: &str, id: i64) -> String {
    event("enrollment.created", json!({"id": event_id}), json!({"id": id}))
}

async fn enrollment_applied(ctx: &TestContext, id: i64) -> bool {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM enrollments WHERE enrollment_id = $1")
        .bind(id)
        .fetch_one(&ctx.db)
        .await
        .expect("count")
        == 1
}

/// Starts `fleet api` with the console on a free port; waits until it
/// serves with Redis reached.
async fn start_api(ctx: &TestContext) -> (tokio::process::Child, String) {
    let port = fleet::local_services::free_port().expect("a free port");
    let api = fleet(ctx, &["api"])
        .env("FLEET_API_TOKEN", API_TOKEN)
        .env("FLEET_CONSOLE_TOKEN", CONSOLE_TOKEN)
        .env("FLEET_API_LISTEN", format!("127.0.0.1:{port}"))
        .spawn()
        .expect("start fleet api");
    let base = format!("http://127.0.0.1:{port}");
    let client = fleet::http_client::builder().build().expect("an HTTP client");
    eventually("fleet api is ready with Redis reached", Duration::from_secs(30), || async {
        let Ok(answer) = client.get(format!("{base}/readyz")).send().await else { return false };
        let ready: serde_json::Value = answer.json().await.unwrap_or_default();
        ready["status"] == "ready" && ready["dependencies"]["redis"]["state"] == "up"
    })
    .await;
    (api, base)
}

#[tokio::test]
async fn an_operator_signs_in_replays_a_fixed_poison_event_and_purges_another_in_a_browser() {
    let ctx = crate::helpers::context().await;
    ctx.refuse_enrollment_666().await;
    let (mut api, base) = start_api(&ctx).await;
    let intake = ctx.spawn_intake().await;
    let worker = ctx.spawn_worker(ctx.fast_retry_settings("console-browser", 2)).await;
    let browser = Browser::start().await;

    // Signing in: a wrong token is refused, the right one opens the overview.
    browser.client.goto(&format!("{base}/console")).await.expect("open the console");
    browser.wait_for_path("/console/sign-in").await;
    browser.wait_for("input[name=token]").await.send_keys("not-the-console-token").await.expect("type");
    browser.wait_for("section.sign-in button[type=submit]").await.click().await.expect("submit");
    assert!(browser.text_of(".problem").await.contains("That is not the console token."));
    browser.wait_for("input[name=token]").await.send_keys(CONSOLE_TOKEN).await.expect("type");
    browser.wait_for("section.sign-in button[type=submit]").await.click().await.expect("submit");
    browser.wait_for_path("/console").await;
    assert!(browser.text_of("#verdict").await.contains(':'), "the overview shows the verdict");
    let overview = format!("{base}/console");
    browser
        .reload_until(&overview, "the worker is live and nothing waits", |html| html.contains("ok: keeping up"))
        .await;

    // A poison webhook (Postgres refuses enrollment 666) among good ones, and
    // some dead letters of other kinds, as a real fleet gathers them.
    for n in 1..=8 {
        deliver(&intake, &enrollment(&format!("2025031415301234560{n:04}"), n)).await;
    }
    deliver(&intake, &enrollment("20250314153012345600666", 666)).await;
    ctx.add_dead_letters(&[
        ("user.signup", "watercolor-school", FailureKind::Malformed),
        ("order.created", "184532", FailureKind::Crashed),
    ])
    .await;
    let dead_letters = format!("{base}/console/dead-letters");
    browser
        .reload_until(&dead_letters, "the poison's dead letter appears", |html| {
            html.contains("20250314153012345600666")
        })
        .await;
    browser.screenshot("console-dead-letters.png").await;

    // Open it: the error, the attempts, the headers kept, the body pretty-printed.
    let mut poison_link = None;
    for row in browser.client.find_all(Locator::Css("tr[data-id]")).await.expect("rows") {
        if row.text().await.expect("text").contains("20250314153012345600666") {
            poison_link = Some(row.find(Locator::Css("td.id a")).await.expect("its link"));
        }
    }
    let poison_link = poison_link.expect("the poison's row");
    poison_link.click().await.expect("open the dead letter");
    let fields = browser.text_of("#dead-letter").await;
    assert!(fields.contains("enrollment 666 is refused by the test") && fields.contains("event"), "{fields}");
    assert!(browser.text_of("#headers").await.contains("x-thinkific-topic"));
    assert!(!browser.text_of("#headers").await.contains("hmac"), "the signature is not kept");
    assert!(browser.text_of("#body").await.contains("\"id\": 666"), "the body, pretty-printed");
    browser.screenshot("console-dead-letter.png").await;

    // Replay it once the cause is fixed: preview, confirm, progress, applied.
    ctx.accept_enrollment_666().await;
    browser.wait_for("#replay-one").await.click().await.expect("replay");
    assert!(browser.text_of("#preview-count").await.contains("1 dead letter would be replayed"));
    assert_eq!(ctx.dead_letters().await.len(), 3, "the preview changed nothing");
    browser.wait_for("#confirm-replay").await.click().await.expect("confirm");
    browser.wait_for("#job-progress").await;
    let job = browser.client.current_url().await.expect("the job's page").to_string();
    browser.reload_until(&job, "the replay is done", |html| html.contains(r#"data-state="done""#)).await;
    eventually("the replayed event is applied in Postgres", Duration::from_secs(30), || async {
        enrollment_applied(&ctx, 666).await
    })
    .await;
    assert_eq!(ctx.dead_letters().await.len(), 2);

    // Purge another with the typed confirmation: a wrong number deletes nothing.
    browser.client.goto(&dead_letters).await.expect("the dead letters");
    for row in browser.client.find_all(Locator::Css("tr[data-id]")).await.expect("rows") {
        if row.text().await.expect("text").contains("watercolor-school") {
            row.find(Locator::Css("input[type=checkbox]")).await.expect("its box").click().await.expect("tick");
        }
    }
    browser.wait_for(r#"button[formaction="/console/dead-letters/purge"]"#).await.click().await.expect("purge");
    assert!(browser.text_of("#preview-count").await.contains("1 dead letter would be purged for good"));
    browser.wait_for("#typed").await.send_keys("2").await.expect("type");
    browser.wait_for("#confirm-purge").await.click().await.expect("confirm");
    assert!(browser.text_of(".problem").await.contains("Type 1 to confirm; nothing was deleted."));
    assert_eq!(ctx.dead_letters().await.len(), 2);
    browser.wait_for("#typed").await.send_keys("1").await.expect("type");
    browser.wait_for("#confirm-purge").await.click().await.expect("confirm");
    browser.wait_for_path("/console/dead-letters").await;
    assert!(browser.text_of(".notice").await.contains("Purged 1 dead letter."));
    let left = ctx.dead_letters().await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].get::<String>("topic").as_deref(), Some("order.created"));

    // The browser's own session, without the CSRF token: refused, nothing deleted.
    let cookie = browser.client.get_named_cookie("fleet_console").await.expect("the session cookie");
    let forger = ConsoleClient::new(&base);
    forger.set_cookie("fleet_console", cookie.value());
    let forged = forger.post("/console/dead-letters/purge", &[("all", "1"), ("expected", "1"), ("confirm", "1")]).await;
    assert_eq!(forged.status(), 403);
    assert_eq!(ctx.dead_letters().await.len(), 1);

    // The overview, with the fleet's last minutes drawn.
    eventually("the workers' activity is recorded", Duration::from_secs(20), || async {
        let mut redis = ctx.redis.clone();
        fleet::operator::status::report(&mut redis, &ctx.keys).await.map(|r| r.recent.applied >= 9).unwrap_or(false)
    })
    .await;
    browser.client.goto(&overview).await.expect("the overview");
    assert!(browser.text_of("#verdict").await.contains("1 dead letter waits"));
    assert_eq!(browser.text_of("#dead-letter-count").await, "1");
    assert!(browser.text_of("#consumers").await.contains("console-browser"));
    browser.screenshot("console-overview.png").await;

    // A school whose webhooks are signed with a key the fleet lacks shows on the intake page.
    for _ in 0..2 {
        let url = intake.url("/webhooks/thinkific/school-with-a-wrong-key");
        let refused =
            crate::helpers::post_signed_url(&url, &enrollment("20250314153012345609999", 9999), "wrong").await;
        assert_eq!(refused.status(), 401);
    }
    browser.wait_for("nav a[href='/console/intake']").await.click().await.expect("open the intake page");
    browser.wait_for_path("/console/intake").await;
    eventually("the refusals are shown", Duration::from_secs(10), || async {
        browser.client.refresh().await.expect("reload");
        browser.text_of("#refusals").await.contains("school-with-a-wrong-key")
    })
    .await;
    assert!(browser.text_of("#refusals").await.contains("401 unauthorized"));
    browser.screenshot("console-intake.png").await;

    browser.close().await;
    worker.stop().await;
    intake.stop().await;
    signal(&api, "TERM");
    let (status, stderr) = wait_exit(&mut api).await;
    assert!(status.success(), "{stderr}");
    for logged in [
        "console sign-in refused: wrong token",
        "console sign-in",
        "console replayed dead letters",
        "console purged dead letters",
        "console request refused: missing or wrong CSRF token",
    ] {
        assert!(stderr.contains(logged), "no {logged:?} in the log:\n{stderr}");
    }
    for secret in [CONSOLE_TOKEN, API_TOKEN, "not-the-console-token"] {
        assert!(!stderr.contains(secret), "a token reached the log:\n{stderr}");
    }
}
