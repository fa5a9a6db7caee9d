//! `fleet dlq`, `fleet status` and `fleet cache` as an operator or a
//! script uses them: output, JSON, exit codes and refusals.

use std::time::Duration;

use fleet::redis::entry::{Entry, EventFields};
use fleet::redis::failures::{self, Failure, FailureKind};
use fleet::redis::stream;
use serde_json::{json, Value};

use crate::helpers::{context, event, eventually, fixture, fleet, TestContext};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run(ctx: &TestContext, args: &[&str]) -> Run {
    let output = fleet(ctx, args).output().await.expect("run fleet");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn json_of(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|err| panic!("not JSON ({err}):\n{}", run.stdout))
}

/// Writes dead letters straight through the worker's own code path.
async fn dead_letters(ctx: &TestContext, topics: &[&str]) -> Vec<String> {
    let entries: Vec<Entry> = topics
        .iter()
        .enumerate()
        .map(|(n, topic)| {
            let (resource, action) = topic.split_once('.').expect("a topic");
            let body = json!({"id": format!("2025{n:019}"), "resource": resource, "action": action,
                              "tenant_id": "184532", "payload": {"id": "not-a-number"}});
            let event = EventFields {
                body: body.to_string().into_bytes(),
                topic: (*topic).to_owned(),
                tenant: "184532".to_owned(),
                event_id: format!("2025{n:019}"),
                received_at: "2025-04-01T00:00:00.000Z".to_owned(),
                headers: None,
            };
            Entry { id: format!("1-{n}"), event, ..Default::default() }
        })
        .collect();
    let failures: Vec<Failure<'_>> = entries
        .iter()
        .map(|entry| Failure {
            entry,
            kind: FailureKind::Malformed,
            error: "invalid id \"not-a-number\"".into(),
            attempts: 1,
        })
        .collect();
    let mut redis = ctx.redis.clone();
    stream::ensure_group(&mut redis, &ctx.keys.shard(0)).await.expect("group");
    failures::dead_letter(&mut redis, &ctx.keys.shard(0), &failures).await.expect("dead letters");
    ctx.dead_letters().await.into_iter().map(|letter| letter.id).collect()
}

#[tokio::test]
async fn dlq_list_shows_a_table_or_json_and_filters() {
    let ctx = context().await;
    let ids = dead_letters(&ctx, &["enrollment.progress", "enrollment.progress", "user.signup"]).await;

    let table = run(&ctx, &["dlq", "list"]).await;
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("TOPIC") && lines[0].contains("ERROR"));
    assert_eq!(lines.len(), 4);
    assert!(
        lines[1].starts_with(&ids[0]) && lines[1].contains("enrollment.progress") && lines[1].contains("malformed")
    );
    assert!(table.stderr.contains("3 shown, 3 dead letters in all"));

    let listed = json_of(&run(&ctx, &["dlq", "list", "--json"]).await);
    assert_eq!(listed["dead_letters"].as_array().map(Vec::len), Some(3));
    assert_eq!((listed["total"].as_u64(), listed["more"].as_bool()), (Some(3), Some(false)), "{listed}");
    assert_eq!(listed["dead_letters"][2]["topic"], "user.signup");
    assert_eq!(listed["dead_letters"][2]["attempts"], 1);
    assert_eq!(listed["dead_letters"][2]["error_kind"], "malformed");
    assert!(listed["dead_letters"][2].get("body").is_none(), "listings leave bodies out");

    let by_topic = json_of(&run(&ctx, &["dlq", "list", "--json", "--topic", "user.signup"]).await);
    assert_eq!(by_topic["dead_letters"].as_array().map(Vec::len), Some(1));
    let limited = json_of(&run(&ctx, &["dlq", "list", "--json", "--limit", "2"]).await);
    assert_eq!(limited["dead_letters"].as_array().map(Vec::len), Some(2));
    let recent = json_of(&run(&ctx, &["dlq", "list", "--json", "--since", "1h"]).await);
    assert_eq!(recent["dead_letters"].as_array().map(Vec::len), Some(3));
    let future = json_of(&run(&ctx, &["dlq", "list", "--json", "--since", "2999-01-01T00:00:00Z"]).await);
    assert_eq!(future["dead_letters"].as_array().map(Vec::len), Some(0));
    let bad = run(&ctx, &["dlq", "list", "--since", "last tuesday"]).await;
    assert_eq!(bad.code, Some(2));
    assert!(bad.stderr.contains("--since"), "{}", bad.stderr);

    for (args, expected) in [
        (&["--tenant-id", "184532"][..], 3),
        (&["--tenant-id", "18453"][..], 0),
        (&["--tenant-id", "*"][..], 0),
        (&["--kind", "malformed"][..], 3),
        (&["--kind", "event", "--topic", "user.signup"][..], 0),
    ] {
        let listed = json_of(&run(&ctx, &[&["dlq", "list", "--json"][..], args].concat()).await);
        assert_eq!(listed["dead_letters"].as_array().map(Vec::len), Some(expected), "{args:?}");
    }
    assert_eq!(run(&ctx, &["dlq", "list", "--kind", "bogus"]).await.code, Some(2));
}

#[tokio::test]
async fn dlq_show_prints_the_whole_entry_with_its_body_pretty_printed() {
    let ctx = context().await;
    let ids = dead_letters(&ctx, &["enrollment.progress"]).await;
    let shown = run(&ctx, &["dlq", "show", &ids[0]]).await;
    assert_eq!(shown.code, Some(0), "{}", shown.stderr);
    for expected in
        ["event id", "2025", "enrollment.progress", "malformed", "invalid id", "first failed at", "headers:", "body:"]
    {
        assert!(shown.stdout.contains(expected), "missing {expected:?}:\n{}", shown.stdout);
    }
    assert!(shown.stdout.contains("\n  \"payload\": {\n"), "the body is pretty-printed:\n{}", shown.stdout);

    let as_json = json_of(&run(&ctx, &["dlq", "show", &ids[0], "--json"]).await);
    assert_eq!(as_json["body"]["payload"]["id"], "not-a-number");

    for unknown in ["1-1", "not-an-id"] {
        let missing = run(&ctx, &["dlq", "show", unknown]).await;
        assert_eq!(missing.code, Some(3), "{unknown}: {}", missing.stderr);
        assert!(missing.stderr.contains("no dead letter with id"), "{}", missing.stderr);
    }
}

#[tokio::test]
async fn dlq_replay_applies_a_fixed_event_and_reports_refusals() {
    dlq_replay_applies_a_fixed_event_and_reports_refusals_on(context().await).await;
}

/// The body of [`dlq_replay_applies_a_fixed_event_and_reports_refusals`], on any Redis (see `crate::cluster`).
pub(crate) async fn dlq_replay_applies_a_fixed_event_and_reports_refusals_on(ctx: TestContext) {
    ctx.refuse_enrollment_666().await;
    ctx.enqueue(&event("enrollment.created", json!({"id": "20250314153012345600666"}), json!({"id": 666}))).await;
    let worker = ctx.spawn_worker(ctx.fast_retry_settings("replayer", 2)).await;
    eventually("the event is dead-lettered", Duration::from_secs(20), || async { ctx.dead_letters().await.len() == 1 })
        .await;
    let id = ctx.dead_letters().await[0].id.clone();

    let usage = run(&ctx, &["dlq", "replay"]).await;
    assert_eq!(usage.code, Some(2), "replay needs ids or --all");

    let dry = run(&ctx, &["dlq", "replay", &id, "--dry-run"]).await;
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    assert!(dry.stdout.contains(&id) && dry.stderr.contains("dry run: 1 dead letter would be replayed"));
    assert_eq!(ctx.dead_letters().await.len(), 1, "a dry run changes nothing");

    // The cause is fixed; the replay applies it.
    ctx.accept_enrollment_666().await;
    let replayed = run(&ctx, &["dlq", "replay", &id, "1-1", "--verbose"]).await;
    assert_eq!(replayed.code, Some(3), "an unknown id is reported: {}", replayed.stderr);
    assert!(replayed.stdout.contains(&format!("replayed {id} as ")), "{}", replayed.stdout);
    assert!(replayed.stderr.contains("no dead letter with id 1-1"));
    assert!(replayed.stderr.contains("1 dead letter replayed onto the events stream"), "{}", replayed.stderr);
    eventually("the replayed event is applied", Duration::from_secs(20), || async { ctx.applied_events().await == 1 })
        .await;
    worker.stop().await;
    assert!(ctx.dead_letters().await.is_empty());
    assert_eq!(ctx.group_backlog().await, (0, 0));
}

#[tokio::test]
async fn dlq_replay_all_shows_progress_and_honours_filters() {
    let ctx = context().await;
    let mut topics = vec!["enrollment.progress"; 150];
    topics.extend(["user.signup"; 5]);
    dead_letters(&ctx, &topics).await;
    let before = ctx.stream_len(&ctx.keys.shard(0).events()).await;

    let users = json_of(&run(&ctx, &["dlq", "replay", "--all", "--topic", "user.signup", "--json"]).await);
    assert_eq!(users["replayed"].as_array().map(Vec::len), Some(5));
    let all = run(&ctx, &["dlq", "replay", "--all"]).await;
    assert_eq!(all.code, Some(0), "{}", all.stderr);
    assert!(all.stderr.contains("replayed 100/150") && all.stderr.contains("replayed 150/150"), "{}", all.stderr);
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, before + 155);
    assert!(ctx.dead_letters().await.is_empty());
    let mut redis = ctx.redis.clone();
    let replayed: redis::streams::StreamRangeReply =
        redis::AsyncCommands::xrange_count(&mut redis, ctx.keys.shard(0).events(), "-", "+", 1).await.expect("XRANGE");
    assert!(replayed.ids[0].get::<String>("replayed_from").is_some(), "replays say where they came from");
    assert_eq!(replayed.ids[0].get::<String>("attempts"), None, "replays start with fresh attempts");
}

#[tokio::test]
async fn dlq_purge_refuses_without_yes_and_deletes_with_it() {
    let ctx = context().await;
    let ids = dead_letters(&ctx, &["enrollment.progress", "user.signup", "user.signup"]).await;

    let refused = run(&ctx, &["dlq", "purge", &ids[0]]).await;
    assert_eq!(refused.code, Some(2));
    assert!(refused.stderr.contains("refusing to purge 1 dead letters without --yes"), "{}", refused.stderr);
    assert_eq!(ctx.dead_letters().await.len(), 3);

    let one = run(&ctx, &["dlq", "purge", &ids[0], "--yes"]).await;
    assert_eq!(one.code, Some(0), "{}", one.stderr);
    assert_eq!(one.stdout.trim(), "purged 1 dead letters");
    assert_eq!(ctx.dead_letters().await.len(), 2);

    let refused_all = run(&ctx, &["dlq", "purge", "--all"]).await;
    assert_eq!(refused_all.code, Some(2));
    let all = json_of(&run(&ctx, &["dlq", "purge", "--all", "--yes", "--json"]).await);
    assert_eq!(all["purged"], 2);
    assert!(ctx.dead_letters().await.is_empty());

    let gone = run(&ctx, &["dlq", "purge", &ids[0], "--yes"]).await;
    assert_eq!(gone.code, Some(3));
}

#[tokio::test]
async fn status_shows_backlog_retries_and_dead_letters() {
    let ctx = context().await;
    let empty = json_of(&run(&ctx, &["status", "--json"]).await);
    assert_eq!((empty["length"].as_u64(), empty["dead_letters"].as_u64()), (Some(0), Some(0)));

    ctx.refuse_enrollment_666().await;
    ctx.enqueue(&fixture("user.signup")).await;
    ctx.enqueue(&event("enrollment.created", json!({"id": "20250314153012345600666"}), json!({"id": 666}))).await;
    let mut settings = ctx.fast_retry_settings("status", 5);
    settings.retry.base = Duration::from_secs(600);
    settings.retry.cap = Duration::from_secs(600);
    let worker = ctx.spawn_worker(settings).await;
    eventually("a retry is scheduled", Duration::from_secs(10), || async { ctx.scheduled_retries().await == 1 }).await;
    ctx.enqueue(&fixture("order.created")).await;
    dead_letters(&ctx, &["user.signup"]).await;
    ctx.wait_until_drained().await;

    let status = json_of(&run(&ctx, &["status", "--json"]).await);
    assert_eq!(status["length"], 3);
    assert_eq!(status["pending"], 0);
    assert_eq!(status["undelivered"], 0);
    assert_eq!(status["retries_scheduled"], 1);
    assert!(status["next_retry_at"].is_string());
    assert_eq!(status["dead_letters"], 1);
    assert!(status["consumers"].as_array().is_some_and(|c| c.iter().any(|c| c["name"] == "status")));
    assert_eq!(status["live_workers"], 1);
    assert_eq!(status["verdict"]["level"], "warning");
    assert_eq!(status["recent"]["minutes"], 5);
    let text = run(&ctx, &["status"]).await;
    assert_eq!(text.code, Some(0));
    assert!(
        text.stdout.contains("retries      1 scheduled") && text.stdout.contains("dead letters 1"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.starts_with("verdict      warning: 1 dead letter waits for an operator\n"),
        "the verdict comes first:\n{}",
        text.stdout
    );

    // The scheduled retry: when, and after which error.
    let retries = json_of(&run(&ctx, &["retries", "--json"]).await);
    assert_eq!(retries["total"], 1);
    let retry = &retries["retries"][0];
    assert_eq!((retry["event_id"].as_str(), retry["attempts"].as_u64()), (Some("20250314153012345600666"), Some(1)));
    assert!(retry["error"].as_str().is_some_and(|error| error.contains("enrollment 666 is refused")), "{retry}");
    let due = chrono::DateTime::parse_from_rfc3339(retry["due_at"].as_str().expect("a due time")).expect("RFC 3339");
    assert!(due.to_utc() > chrono::Utc::now() + chrono::Duration::minutes(5), "due in about ten minutes: {due}");
    let table = run(&ctx, &["retries"]).await;
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    assert!(table.stdout.starts_with("DUE") && table.stdout.contains("enrollment.created"), "{}", table.stdout);
    assert!(table.stderr.contains("1 shown, 1 retry scheduled in all"), "{}", table.stderr);
    worker.stop().await;
}

/// Caches course 1's statistics for schools `a` and `b`, under the tag `course:1` of each.
#[tokio::test]
async fn every_command_answers_json_on_stdout_and_summaries_on_stderr() {
    let ctx = context().await;
    let ids = dead_letters(&ctx, &["enrollment.progress", "user.signup", "user.signup"]).await;
    let commands: Vec<Vec<&str>> = vec![
        vec!["status", "--json"],
        vec!["dlq", "list", "--json"],
        vec!["dlq", "show", &ids[0], "--json"],
        vec!["dlq", "replay", &ids[0], "--dry-run", "--json"],
        vec!["dlq", "replay", &ids[0], "--json"],
        vec!["dlq", "purge", &ids[1], "--yes", "--json"],
        vec!["retries", "--json"],
        vec!["cache", "stats", "--json"],
        vec!["cache", "clear", "all", "--json"],
    ];
    for args in &commands {
        let answer = run(&ctx, args).await;
        assert_eq!(answer.code, Some(0), "{args:?}: {}", answer.stderr);
        let parsed: Result<Value, _> = serde_json::from_str(&answer.stdout);
        assert!(parsed.is_ok(), "{args:?} printed no JSON on stdout:\n{}", answer.stdout);
    }

    // As text, the data is on stdout and the summary only on stderr.
    let summaries = [
        (vec!["dlq", "list"], "1 shown, 1 dead letter in all"),
        (vec!["dlq", "replay", &ids[2], "--dry-run"], "dry run: 1 dead letter would be replayed"),
        (vec!["dlq", "replay", &ids[2], "--verbose"], "1 dead letter replayed onto"),
    ];
    for (args, summary) in &summaries {
        let answer = run(&ctx, args).await;
        assert_eq!(answer.code, Some(0), "{args:?}: {}", answer.stderr);
        assert!(answer.stderr.contains(summary), "{args:?}: no {summary:?} on stderr:\n{}", answer.stderr);
        assert!(!answer.stdout.contains(summary), "{args:?}: the summary is in the data:\n{}", answer.stdout);
        assert!(answer.stdout.contains(&ids[2]), "{args:?}: the data is not on stdout:\n{}", answer.stdout);
    }
}

async fn cache_two_schools(ctx: &TestContext) -> [String; 2] {
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
    assert_eq!(fleet::redis::cache::put(&mut redis, &entries).await.expect("put"), 2);
    [keys.statistics("a", 1), keys.statistics("b", 1)]
}

async fn cached(ctx: &TestContext, keys: &[String]) -> Vec<bool> {
    let mut redis = ctx.redis.clone();
    let mut found = Vec::new();
    for key in keys {
        found.push(redis::AsyncCommands::exists(&mut redis, key).await.expect("EXISTS"));
    }
    found
}

#[tokio::test]
async fn cache_clear_takes_tenant_and_tag_literally_and_refuses_patterns() {
    let ctx = context().await;
    let keys = cache_two_schools(&ctx).await;

    let refused: [(&[&str], &str); 4] = [
        (&["--tag", "course:1", "--tenant-id", "*"], "--tenant-id"),
        (&["--tag", "course:1", "--tenant-id", "a*"], "--tenant-id"),
        (&["--tag", "course:*"], "--tag"),
        (&["--tag", "*", "--tenant-id", "a"], "--tag"),
    ];
    for (args, flag) in refused {
        let run = run(&ctx, &[&["cache", "clear"], args].concat()).await;
        assert_eq!(run.code, Some(2), "{args:?} was not refused: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains(flag) && run.stderr.contains("--pattern"), "{args:?}: {}", run.stderr);
        assert_eq!(cached(&ctx, &keys).await, [true, true], "{args:?} cleared something");
    }

    // A tag is compared whole: `1` is not the end of `course:1`.
    let none = run(&ctx, &["cache", "clear", "--tag", "1"]).await;
    assert_eq!((none.code, none.stdout.trim()), (Some(0), "removed 0 keys"), "{}", none.stderr);
    assert_eq!(cached(&ctx, &keys).await, [true, true]);

    let one = run(&ctx, &["cache", "clear", "--tag", "course:1", "--tenant-id", "a"]).await;
    assert_eq!((one.code, one.stdout.trim()), (Some(0), "removed 1 keys"), "{}", one.stderr);
    assert_eq!(cached(&ctx, &keys).await, [false, true], "only school a's key goes");

    let every = run(&ctx, &["cache", "clear", "--tag", "course:1"]).await;
    assert_eq!((every.code, every.stdout.trim()), (Some(0), "removed 1 keys"), "{}", every.stderr);
    assert_eq!(cached(&ctx, &keys).await, [false, false]);
}

/// The errors a newcomer meets first name the setting and say what to do:
/// each once, with the address tried, never a value that may be a secret.
#[tokio::test]
async fn first_errors_name_the_setting_and_what_to_do() {
    let ctx = context().await;
    let refused = |run: &Run, code: i32| assert_eq!(run.code, Some(code), "{}", run.stderr);

    let bad_format = fleet(&ctx, &["status"]).env("LOG_FORMAT", "xml").output().await.expect("run");
    let stderr = String::from_utf8_lossy(&bad_format.stderr);
    assert_eq!(bad_format.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("LOG_FORMAT must be `json` or `text`"), "{stderr}");

    let both = fleet(&ctx, &["api"])
        .env("FLEET_API_LISTEN", "127.0.0.1:1")
        .env("PORT", "2")
        .env("FLEET_API_TOKEN", "a-token-of-sixteen-chars")
        .output()
        .await
        .expect("run");
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert_eq!(both.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("set either FLEET_API_LISTEN (--listen) or PORT (--port), not both"), "{stderr}");

    let unset = fleet(&ctx, &["dlq", "list"]).env_remove("REDIS_URL").output().await.expect("run");
    let stderr = String::from_utf8_lossy(&unset.stderr);
    assert_eq!(unset.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("REDIS_URL is not set") && stderr.contains(". .fleet/dev/env"), "{stderr}");

    // A port nothing listens on, given after the subcommand.
    let port = fleet::local_services::free_port().expect("a free port");
    let url = format!("redis://:hunter2@127.0.0.1:{port}/");
    let unreachable = run(&ctx, &["dlq", "list", "--redis-url", &url]).await;
    refused(&unreachable, 1);
    let said = unreachable.stderr.lines().filter(|line| line.starts_with("fleet: ")).collect::<Vec<_>>();
    let [said] = said.as_slice() else { panic!("one error line: {}", unreachable.stderr) };
    assert!(said.contains(&format!("cannot connect to Redis at 127.0.0.1:{port}")), "{said}");
    assert_eq!(said.matches("Connection refused").count(), 1, "the cause once: {said}");
    assert!(!unreachable.stderr.contains("hunter2"), "{}", unreachable.stderr);
}
