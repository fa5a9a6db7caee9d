//! The events stream split into shards (`FLEET_STREAM_SHARDS`): events of
//! many entities spread over every shard and all applied, redeliveries
//! meeting their deduplication record, a worker configured with fewer shards
//! consuming every shard the fleet's count names, dead letters and the
//! status report of every shard (per shard and in total), and the
//! documented change of count on a running fleet: raised, then lowered,
//! with the old shards draining. Each also runs on a Redis Cluster
//! (`crate::cluster`).

use std::process::Stdio;
use std::time::Duration;

use fleet::redis::shards::ShardCount;
use redis::AsyncCommands;
use serde_json::{json, Value};
use tokio::process::Child;

use crate::chaos::assert_in_order_state;
use crate::helpers::{
    console_tuning, context, eventually, fixture, fleet, intake_settings, post_signed, ConsoleClient, TestContext,
    SECRET,
};
use crate::processes::progress_event;

const THREE: u32 = 3;

/// The (tenant, entity) an event of `progress_event(n)` is about.
fn shard_of(count: u32, n: usize) -> u32 {
    ShardCount::new(count).expect("count").shard_of("184532", &(n % 50).to_string())
}

/// Entries in each shard's events stream.
async fn stream_lengths(ctx: &TestContext) -> Vec<u64> {
    let mut lengths = Vec::new();
    for shard in ctx.shards().await {
        lengths.push(ctx.stream_len(&shard.events()).await);
    }
    lengths
}

#[tokio::test]
async fn events_spread_over_three_shards_are_all_applied_once() {
    events_spread_over_three_shards_are_all_applied_once_on(context().await).await;
}

/// The body of [`events_spread_over_three_shards_are_all_applied_once`], on any Redis.
pub(crate) async fn events_spread_over_three_shards_are_all_applied_once_on(ctx: TestContext) {
    let total = 300;
    let mut settings = intake_settings(SECRET);
    settings.shards = ShardCount::new(THREE).expect("count");
    let intake = ctx.spawn_intake_with(settings).await;
    // A worker configured with one shard: it consumes all three, because
    // the intake raised the fleet's count before taking a webhook.
    let worker = ctx.spawn_worker(ctx.worker_settings("one-shard-worker")).await;
    for n in 0..total {
        let response = post_signed(&intake, &progress_event(n), SECRET).await;
        assert_eq!(response.status(), 200, "event {n}");
    }
    // Redeliveries meet their event's deduplication record in its shard.
    for n in (0..total).step_by(10) {
        let response = post_signed(&intake, &progress_event(n), SECRET).await;
        let answer: Value = response.json().await.expect("JSON");
        assert_eq!(answer["status"], "duplicate", "redelivery of {n}");
    }
    let lengths = stream_lengths(&ctx).await;
    let mut expected = vec![0u64; THREE as usize];
    for n in 0..total {
        expected[shard_of(THREE, n) as usize] += 1;
    }
    assert_eq!(lengths, expected, "each event in the shard of its tenant and entity");
    assert!(lengths.iter().all(|&length| length > 0), "{lengths:?}");
    eventually("every shard drained", Duration::from_secs(60), || async {
        ctx.applied_events().await == total as i64 && ctx.group_backlog().await == (0, 0)
    })
    .await;
    worker.stop().await;
    intake.stop().await;
    assert_in_order_state(&ctx, total).await;
}

#[tokio::test]
async fn a_redis_that_lost_its_data_learns_the_shard_count_again_from_the_intake() {
    let ctx = context().await;
    let mut settings = intake_settings(SECRET);
    settings.shards = ShardCount::new(THREE).expect("count");
    let intake = ctx.spawn_intake_with(settings).await;
    // Redis loses everything the fleet had (restarted without persistence):
    // the recorded count and every group are gone.
    let mut redis = ctx.redis.clone();
    for key in redis.scan_keys(&format!("{}*", ctx.prefix.as_str())).await.expect("scan") {
        let _: i64 = redis.del(&key).await.expect("DEL");
    }
    for n in 0..60 {
        let response = post_signed(&intake, &progress_event(n), SECRET).await;
        assert_eq!(response.status(), 200, "event {n}");
    }
    // A worker started now, configured with one shard, still reads all
    // three: the intake records its count again within a few seconds.
    let worker = ctx.spawn_worker(ctx.worker_settings("started-after-the-loss")).await;
    eventually("the events of every shard applied", Duration::from_secs(30), || async {
        ctx.applied_events().await == 60
    })
    .await;
    worker.stop().await;
    intake.stop().await;
    assert_eq!(ctx.shards().await.len(), THREE as usize);
    assert_in_order_state(&ctx, 60).await;
}

#[tokio::test]
async fn dead_letters_of_every_shard_are_listed_replayed_and_counted() {
    dead_letters_of_every_shard_are_listed_replayed_and_counted_on(context().await).await;
}

/// An enrollment.created event of enrollment `id`.
fn created(id: u32) -> String {
    let mut body: Value = serde_json::from_str(&fixture("enrollment.created")).expect("JSON");
    body["id"] = json!(format!("shard-test-{id}"));
    body["tenant_id"] = json!("184532");
    body["payload"]["id"] = json!(id);
    body.to_string()
}

async fn run_json(ctx: &TestContext, args: &[&str]) -> Value {
    let output = fleet(ctx, args).output().await.expect("run fleet");
    assert!(output.status.success(), "fleet {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("fleet {args:?} is not JSON: {err}"))
}

/// The body of [`dead_letters_of_every_shard_are_listed_replayed_and_counted`], on any Redis.
pub(crate) async fn dead_letters_of_every_shard_are_listed_replayed_and_counted_on(ctx: TestContext) {
    ctx.raise_shards(THREE).await;
    ctx.refuse_enrollments_from(900, i64::MAX).await;
    let count = ShardCount::new(THREE).expect("count");
    // Enrollments from 900 up until every shard has two of them.
    let mut refused: Vec<u32> = Vec::new();
    let mut per_shard = [0u64; THREE as usize];
    for id in 900.. {
        let shard = count.shard_of("184532", &id.to_string()) as usize;
        if per_shard[shard] < 2 {
            per_shard[shard] += 1;
            refused.push(id);
        }
        if per_shard.iter().all(|&n| n == 2) {
            break;
        }
    }
    for &id in &refused {
        ctx.enqueue(&created(id)).await;
    }
    let worker = ctx.spawn_worker(ctx.fast_retry_settings("dlq-worker", 2)).await;
    eventually("every refused event dead-lettered", Duration::from_secs(30), || async {
        ctx.dead_letters().await.len() == refused.len()
    })
    .await;

    let listed = run_json(&ctx, &["dlq", "list", "--json"]).await;
    let letters = listed["dead_letters"].as_array().expect("a list");
    assert_eq!(letters.len(), refused.len(), "{listed:#}");
    for letter in letters {
        let (id, shard) = (letter["id"].as_str().expect("id"), letter["shard"].as_u64().expect("shard"));
        match shard {
            0 => assert!(!id.contains('/'), "{id}"),
            shard => assert!(id.starts_with(&format!("{shard}/")), "{id} of shard {shard}"),
        }
        let shown = run_json(&ctx, &["dlq", "show", id, "--json"]).await;
        assert_eq!(shown["event_id"], letter["event_id"]);
    }
    let times: Vec<&str> = letters.iter().map(|letter| letter["id"].as_str().expect("id")).collect();
    let stream_ids: Vec<&str> = times.iter().map(|id| id.rsplit('/').next().expect("id")).collect();
    let mut sorted = stream_ids.clone();
    sorted.sort_by(|a, b| fleet::redis::stream::compare_ids(a, b));
    assert_eq!(stream_ids, sorted, "oldest first over every shard");
    // Paging: the next page starts after the last one shown, whatever its shard.
    let first_two = run_json(&ctx, &["dlq", "list", "--json", "--limit", "2"]).await;
    assert_eq!(first_two["dead_letters"].as_array().map(Vec::len), Some(2));
    for missing in ["7/1-0", "999/1-0", "x/1-0", "1/"] {
        let output = fleet(&ctx, &["dlq", "show", missing]).output().await.expect("run fleet");
        assert_eq!(output.status.code(), Some(3), "{missing}: not found");
    }

    // The summary counts each shard's; the console shows a dead letter of any shard.
    let table = fleet(&ctx, &["dlq", "list"]).output().await.expect("run fleet");
    let summary = String::from_utf8_lossy(&table.stderr);
    assert!(summary.contains("6 dead letters in all (shard 0: 2, shard 1: 2, shard 2: 2)"), "{summary}");
    let api = ctx.spawn_api(console_tuning()).await;
    let console = ConsoleClient::new(&api.url(""));
    console.signed_in().await;
    let (status, page) = console.get_text("/console/dead-letters").await;
    assert_eq!(status, 200);
    let beyond_first = letters.iter().find(|letter| letter["shard"] != 0).expect("a dead letter beyond shard 0");
    let id = beyond_first["id"].as_str().expect("id");
    let href = format!("/console/dead-letters/{}", id.replace('/', "%2F"));
    assert!(page.contains(&format!("href=\"{href}\"")), "{page}");
    let (status, detail) = console.get_text(&href).await;
    assert_eq!(status, 200, "{detail}");
    assert!(detail.contains(beyond_first["event_id"].as_str().expect("event id")), "{detail}");
    let (status, overview) = console.get_text("/console").await;
    assert_eq!(status, 200);
    let table = overview.split(r#"<table id="shards">"#).nth(1).expect("a table of shards");
    assert_eq!(table.split("</table>").next().map(|rows| rows.matches("<tr>").count()), Some(4), "{table}");
    let (status, preview) =
        console.get_text(&format!("/console/dead-letters/replay?id={}", id.replace('/', "%2F"))).await;
    assert_eq!(status, 200, "{preview}");
    assert!(preview.contains(r#"data-count="1""#), "the dry run finds it: {preview}");

    let status = run_json(&ctx, &["status", "--json"]).await;
    assert_eq!(status["dead_letters"], refused.len(), "{status:#}");
    let shards = status["shards"].as_array().expect("shards");
    let by_shard: Vec<u64> = shards.iter().map(|shard| shard["dead_letters"].as_u64().expect("count")).collect();
    assert_eq!(by_shard, per_shard, "{status:#}");
    assert_eq!(shards.iter().map(|shard| shard["shard"].as_u64().expect("index")).collect::<Vec<_>>(), [0, 1, 2]);

    ctx.accept_enrollments_again().await;
    let replayed = run_json(&ctx, &["dlq", "replay", "--all", "--json"]).await;
    let pairs = replayed["replayed"].as_array().expect("pairs");
    assert_eq!(pairs.len(), refused.len(), "{replayed:#}");
    for pair in pairs {
        // Back onto the stream of its own shard.
        let shard_of = |id: &str| id.split_once('/').map_or("0".to_owned(), |(shard, _)| shard.to_owned());
        let (from, to) =
            (pair["dead_letter_id"].as_str().expect("from"), pair["stream_entry_id"].as_str().expect("to"));
        assert_eq!(shard_of(from), shard_of(to), "{pair}");
    }
    eventually("the replayed events applied", Duration::from_secs(30), || async {
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM enrollments WHERE enrollment_id >= 900")
            .fetch_one(&ctx.db)
            .await
            .expect("count");
        applied == refused.len() as i64 && ctx.group_backlog().await == (0, 0)
    })
    .await;
    worker.stop().await;
    assert!(ctx.dead_letters().await.is_empty());
    let status = run_json(&ctx, &["status", "--json"]).await;
    assert_eq!(status["dead_letters"], 0, "{status:#}");
}

/// A process of `role` with `env`, started and waited for until `/readyz` answers 200.
async fn start(ctx: &TestContext, role: &str, env: &[(&str, String)], port: u16) -> Child {
    let mut command = fleet(ctx, &[role]);
    command.env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let process = command.spawn().expect("spawn fleet");
    eventually(&format!("{role} ready"), Duration::from_secs(30), || async {
        matches!(crate::helpers::get(format!("http://127.0.0.1:{port}/readyz")).await, Ok(response) if response.status() == 200)
    })
    .await;
    process
}

/// An intake process spreading events over `shards`; its port.
async fn intake_process(ctx: &TestContext, shards: u32) -> (Child, u16) {
    let port = fleet::local_services::free_port().expect("port");
    let env = [
        ("THINKIFIC_WEBHOOK_SECRET", SECRET.to_owned()),
        ("FLEET_LISTEN", format!("127.0.0.1:{port}")),
        ("FLEET_STREAM_SHARDS", shards.to_string()),
    ];
    (start(ctx, "intake", &env, port).await, port)
}

/// A worker process configured with one shard; its health port.
async fn worker_process(ctx: &TestContext, name: &str) -> (Child, u16) {
    let port = fleet::local_services::free_port().expect("port");
    let env = [
        ("FLEET_HEALTH_LISTEN", format!("127.0.0.1:{port}")),
        ("FLEET_CONSUMER_NAME", name.to_owned()),
        ("FLEET_BLOCK_MS", "100".to_owned()),
    ];
    (start(ctx, "worker", &env, port).await, port)
}

async fn send(port: u16, range: std::ops::Range<usize>) {
    let client = fleet::http_client::builder().build().expect("an HTTP client");
    for n in range {
        let body = progress_event(n);
        let response = client
            .post(format!("http://127.0.0.1:{port}/webhooks/thinkific"))
            .header("content-type", "application/json")
            .header("x-thinkific-hmac-sha256", fleet::intake::sign(SECRET.as_bytes(), body.as_bytes()))
            .body(body)
            .send()
            .await
            .expect("the intake answers");
        assert_eq!(response.status(), 200, "event {n}");
    }
}

async fn stop(mut process: Child) {
    crate::helpers::signal(&process, "TERM");
    let (status, _) = crate::helpers::wait_exit(&mut process).await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn the_shard_count_changes_on_a_running_fleet_and_nothing_is_lost() {
    the_shard_count_changes_on_a_running_fleet_and_nothing_is_lost_on(context().await).await;
}

/// The procedure of docs/scaling.md, step by step, with real processes.
pub(crate) async fn the_shard_count_changes_on_a_running_fleet_and_nothing_is_lost_on(ctx: TestContext) {
    // One shard: the default.
    let (intake_one, port) = intake_process(&ctx, 1).await;
    let (worker, _) = worker_process(&ctx, "worker-a").await;
    send(port, 0..200).await;
    assert_eq!(ctx.shards().await.len(), 1);

    // Raised to three: the new intake raises the fleet's count before it
    // takes a webhook, and the running worker (configured with one) starts
    // consuming the new shards within a few seconds.
    let (intake_three, port) = intake_process(&ctx, THREE).await;
    stop(intake_one).await;
    send(port, 200..400).await;
    // Redeliveries of events accepted before the change: a changed shard
    // misses their deduplication record, and applying them again changes nothing.
    send(port, 150..200).await;
    assert_eq!(ctx.shards().await.len(), THREE as usize);
    eventually("the one-shard worker drains all three", Duration::from_secs(60), || async {
        ctx.applied_events().await == 400 && ctx.group_backlog().await == (0, 0)
    })
    .await;
    let lengths = stream_lengths(&ctx).await;
    assert!(lengths.iter().all(|&length| length > 0), "every shard took events: {lengths:?}");

    // Lowered to one, with a backlog left in the shards beyond it: no worker
    // runs while events arrive.
    stop(worker).await;
    send(port, 400..500).await;
    let (intake_one_again, port) = intake_process(&ctx, 1).await;
    stop(intake_three).await;
    send(port, 500..600).await;
    let (lag, _) = ctx.group_backlog().await;
    assert!(lag >= 200, "a backlog waits: {lag}");
    let beyond: u64 = {
        let mut redis = ctx.redis.clone();
        let mut beyond = 0;
        for shard in &ctx.shards().await[1..] {
            let reply: redis::streams::StreamInfoGroupsReply =
                redis.xinfo_groups(shard.events()).await.expect("groups");
            beyond += reply.groups.iter().map(|group| group.lag.unwrap_or(1) as u64).sum::<u64>();
        }
        beyond
    };
    assert!(beyond > 0, "the shards beyond the new count hold events to drain");
    // The fleet's count never goes down: a worker configured with one shard
    // drains the old shards too, and reports every shard's figures.
    let (worker, health) = worker_process(&ctx, "worker-b").await;
    eventually("the old shards drained", Duration::from_secs(60), || async {
        ctx.applied_events().await == 600 && ctx.group_backlog().await == (0, 0)
    })
    .await;
    let metrics = crate::helpers::get(format!("http://127.0.0.1:{health}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for shard in 0..THREE {
        assert!(
            metrics.contains(&format!("fleet_shard_pending_entries{{shard=\"{shard}\"}}")),
            "shard {shard}:\n{metrics}"
        );
    }
    assert!(metrics.contains("fleet_pending_entries "), "the total too:\n{metrics}");
    let status = run_json(&ctx, &["status", "--json"]).await;
    let shards = status["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), THREE as usize, "{status:#}");
    let length: u64 = shards.iter().map(|shard| shard["length"].as_u64().expect("length")).sum();
    assert_eq!(status["length"].as_u64(), Some(length), "the total is the shards' sum");
    stop(worker).await;
    stop(intake_one_again).await;
    assert_in_order_state(&ctx, 600).await;
    let mut redis = ctx.redis.clone();
    let recorded: u32 = redis.get(ctx.keys.stream_shards()).await.expect("count");
    assert_eq!(recorded, THREE);
}
