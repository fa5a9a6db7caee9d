//! Retries, dead letters and crash recovery, with in-process workers
//! against real Redis and Postgres.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::json;

use crate::helpers::{context, event, eventually, fixture, TestContext};

fn poison() -> String {
    event("enrollment.created", json!({"id": "20250314153012345600666"}), json!({"id": 666}))
}

fn field(entry: &redis::streams::StreamId, name: &str) -> String {
    entry.get::<String>(name).unwrap_or_default()
}

#[tokio::test]
async fn a_refused_event_is_retried_on_schedule_then_dead_lettered_and_its_batch_commits() {
    a_refused_event_is_retried_on_schedule_then_dead_lettered_and_its_batch_commits_on(context().await).await;
}

/// The body of [`a_refused_event_is_retried_on_schedule_then_dead_lettered_and_its_batch_commits`], on any Redis (see `crate::cluster`).
pub(crate) async fn a_refused_event_is_retried_on_schedule_then_dead_lettered_and_its_batch_commits_on(
    ctx: TestContext,
) {
    ctx.refuse_enrollment_666().await;
    // One batch: good, poison, good.
    ctx.enqueue(&fixture("user.signup")).await;
    ctx.enqueue(&poison()).await;
    ctx.enqueue(&fixture("enrollment.created")).await;

    let worker = ctx.spawn_worker(ctx.fast_retry_settings("retrier", 3)).await;
    eventually("the good events commit", Duration::from_secs(10), || async { ctx.applied_events().await == 2 }).await;
    eventually("a retry is scheduled", Duration::from_secs(10), || async { ctx.scheduled_retries().await == 1 }).await;
    eventually("the poison is dead-lettered", Duration::from_secs(20), || async {
        ctx.dead_letters().await.len() == 1
    })
    .await;
    worker.stop().await;

    let letter = &ctx.dead_letters().await[0];
    assert_eq!(field(letter, "event_id"), "20250314153012345600666");
    assert_eq!(field(letter, "error_kind"), "event");
    assert_eq!(field(letter, "attempts"), "3");
    assert!(field(letter, "error").contains("enrollment 666 is refused"), "{}", field(letter, "error"));
    assert!(field(letter, "body").contains("\"id\":666"));
    let first: chrono::DateTime<chrono::Utc> = field(letter, "first_failed_at").parse().expect("time");
    let last: chrono::DateTime<chrono::Utc> = field(letter, "last_failed_at").parse().expect("time");
    // Retries after at least 100 ms and 200 ms (each up to double with jitter, capped at 400 ms).
    let spent = (last - first).num_milliseconds();
    assert!((300..5_000).contains(&spent), "retries took {spent} ms");
    assert_eq!(ctx.scheduled_retries().await, 0);
    assert_eq!(ctx.group_backlog().await, (0, 0));
    assert_eq!(ctx.applied_events().await, 2, "the poison was never applied");
}

#[tokio::test]
async fn a_scheduled_retry_survives_a_worker_restart() {
    let ctx = context().await;
    ctx.refuse_enrollment_666().await;
    ctx.enqueue(&poison()).await;
    let mut settings = ctx.fast_retry_settings("first", 5);
    settings.retry.base = Duration::from_millis(1500);
    settings.retry.cap = Duration::from_millis(3000);
    let worker = ctx.spawn_worker(settings.clone()).await;
    eventually("a retry is scheduled", Duration::from_secs(10), || async { ctx.scheduled_retries().await == 1 }).await;
    worker.stop().await;

    // The cause is fixed while no worker runs; a new worker applies it when due.
    ctx.accept_enrollment_666().await;
    settings.consumer_name = "second".into();
    let worker = ctx.spawn_worker(settings).await;
    eventually("the retried event is applied", Duration::from_secs(15), || async { ctx.applied_events().await == 1 })
        .await;
    worker.stop().await;
    assert!(ctx.dead_letters().await.is_empty());
    assert_eq!(ctx.scheduled_retries().await, 0);
    let percent: f64 = sqlx::query_scalar("SELECT percentage_completed FROM enrollments WHERE enrollment_id = 666")
        .fetch_one(&ctx.db)
        .await
        .expect("applied");
    assert_eq!(percent, 0.0);
}

/// Delivers `entry_id` to a throwaway consumer `times` times, as workers
/// that each crashed while holding it would have.
async fn deliver_to_crashing_workers(ctx: &crate::helpers::TestContext, times: usize) {
    let mut redis = ctx.redis.clone();
    let options = redis::streams::StreamReadOptions::default().group(fleet::redis::GROUP, "crashed-0").count(10);
    let read: redis::streams::StreamReadReply =
        redis.xread_options(&[ctx.keys.shard(0).events()], &[">"], &options).await.expect("XREADGROUP");
    let ids: Vec<String> = read.keys.iter().flat_map(|key| key.ids.iter().map(|id| id.id.clone())).collect();
    for crash in 1..times {
        let _: redis::Value = redis
            .xclaim(ctx.keys.shard(0).events(), fleet::redis::GROUP, format!("crashed-{crash}"), 0, &ids)
            .await
            .expect("XCLAIM");
    }
}

#[tokio::test]
async fn an_entry_that_keeps_killing_workers_is_dead_lettered_after_max_attempts() {
    let ctx = context().await;
    ctx.enqueue(&fixture("enrollment.progress")).await;
    deliver_to_crashing_workers(&ctx, 3).await;

    let mut settings = ctx.fast_retry_settings("survivor", 3);
    settings.claim_idle = Duration::from_millis(200);
    let worker = ctx.spawn_worker(settings).await;
    eventually("the entry is dead-lettered", Duration::from_secs(10), || async { ctx.dead_letters().await.len() == 1 })
        .await;
    worker.stop().await;
    let letter = &ctx.dead_letters().await[0];
    assert_eq!(field(letter, "error_kind"), "crashed");
    assert_eq!(field(letter, "attempts"), "3");
    assert_eq!(ctx.applied_events().await, 0, "a poison that kills workers is not run a fourth time");
    assert_eq!(ctx.group_backlog().await, (0, 0));
}

#[tokio::test]
async fn an_entry_whose_worker_died_is_taken_over_and_applied() {
    let ctx = context().await;
    ctx.enqueue(&fixture("enrollment.progress")).await;
    deliver_to_crashing_workers(&ctx, 1).await;
    let mut settings = ctx.fast_retry_settings("heir", 10);
    settings.claim_idle = Duration::from_millis(200);
    let worker = ctx.spawn_worker(settings).await;
    eventually("the orphan is applied", Duration::from_secs(10), || async { ctx.applied_events().await == 1 }).await;
    ctx.wait_until_drained().await;
    worker.stop().await;
    assert!(ctx.dead_letters().await.is_empty());
}

#[tokio::test]
async fn an_exhausted_entry_that_was_already_applied_is_just_acknowledged() {
    let ctx = context().await;
    ctx.enqueue(&fixture("enrollment.progress")).await;
    // Applied once (by a worker that died before its XACK)…
    let body = fixture("enrollment.progress");
    let applied = fleet::jobs::Event::decode(body.as_bytes(), "184532", chrono::Utc::now(), "0-1").expect("event");
    let mut tx = ctx.db.begin().await.expect("begin");
    fleet::jobs::apply_batch(&mut tx, &[applied]).await.expect("apply");
    tx.commit().await.expect("commit");
    // …and its entry then bounced between dying workers.
    deliver_to_crashing_workers(&ctx, 3).await;
    let mut settings = ctx.fast_retry_settings("survivor", 3);
    settings.claim_idle = Duration::from_millis(200);
    let worker = ctx.spawn_worker(settings).await;
    eventually("the entry is acknowledged", Duration::from_secs(10), || async { ctx.group_backlog().await == (0, 0) })
        .await;
    worker.stop().await;
    assert!(ctx.dead_letters().await.is_empty());
}

#[tokio::test]
async fn entries_deleted_while_pending_are_accounted_for() {
    let ctx = context().await;
    let entry_id = ctx.enqueue(&fixture("enrollment.progress")).await;
    deliver_to_crashing_workers(&ctx, 1).await;
    let mut redis = ctx.redis.clone();
    let _: i64 = redis.xdel(ctx.keys.shard(0).events(), &[&entry_id]).await.expect("XDEL");

    let mut settings = ctx.fast_retry_settings("auditor", 10);
    settings.claim_idle = Duration::from_millis(200);
    let worker = ctx.spawn_worker(settings).await;
    eventually("the loss is recorded", Duration::from_secs(10), || async { ctx.dead_letters().await.len() == 1 }).await;
    worker.stop().await;
    let letter = &ctx.dead_letters().await[0];
    assert_eq!(field(letter, "error_kind"), "deleted");
    assert_eq!(field(letter, "source_entry_id"), entry_id);
    assert_eq!(ctx.group_backlog().await, (0, 0));
}

#[tokio::test]
async fn a_second_live_worker_with_the_same_name_is_refused() {
    let ctx = context().await;
    let first = ctx.spawn_worker(ctx.worker_settings("twin")).await;
    let second = fleet::worker::Worker::connect(
        ctx.db.clone(),
        &ctx.redis_target(),
        ctx.keys.clone(),
        ctx.worker_settings("twin"),
    )
    .await;
    match second {
        Err(err @ fleet::worker::WorkerError::ConsumerNameInUse(_)) => {
            assert!(err.to_string().contains("FLEET_CONSUMER_NAME"), "{err}");
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a second worker named `twin` was accepted"),
    }
    // Once the first stops, the name is free at once.
    first.stop().await;
    let started = std::time::Instant::now();
    let again = ctx.spawn_worker(ctx.worker_settings("twin")).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    again.stop().await;
}

#[tokio::test]
async fn consumers_of_long_gone_workers_are_removed_from_the_group() {
    let ctx = context().await;
    ctx.enqueue(&fixture("user.signup")).await;
    let mut redis = ctx.redis.clone();
    // A worker that read once (and acknowledged) and then vanished.
    let options = redis::streams::StreamReadOptions::default().group(fleet::redis::GROUP, "ghost").count(10);
    let read: redis::streams::StreamReadReply =
        redis.xread_options(&[ctx.keys.shard(0).events()], &[">"], &options).await.expect("XREADGROUP");
    let ids: Vec<String> = read.keys.iter().flat_map(|key| key.ids.iter().map(|id| id.id.clone())).collect();
    let _: i64 = redis.xack(ctx.keys.shard(0).events(), fleet::redis::GROUP, &ids).await.expect("XACK");
    let consumers = || async {
        let mut redis = ctx.redis.clone();
        let reply: redis::streams::StreamInfoConsumersReply =
            redis.xinfo_consumers(ctx.keys.shard(0).events(), fleet::redis::GROUP).await.expect("XINFO CONSUMERS");
        reply.consumers.into_iter().map(|consumer| consumer.name).collect::<Vec<String>>()
    };
    assert_eq!(consumers().await, vec!["ghost"]);

    let mut settings = ctx.fast_retry_settings("live", 10);
    settings.claim_idle = Duration::from_millis(100);
    let worker = ctx.spawn_worker(settings).await;
    eventually("the ghost is removed", Duration::from_secs(15), || async {
        !consumers().await.contains(&"ghost".to_owned())
    })
    .await;
    worker.stop().await;
    assert!(consumers().await.contains(&"live".to_owned()));
}
