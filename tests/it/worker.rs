//! The worker against real Redis and Postgres: every handled topic applied,
//! order and duplicates ignored, unhandled topics recorded, undecodable
//! entries dead-lettered, pending entries re-read on start, safe trims.

use redis::AsyncCommands;
use serde_json::json;
use sqlx::Row;

use crate::helpers::{context, event, fixture, post_signed, TestContext, SECRET};

/// Sends bodies through a real intake, then drains the stream with a worker.
async fn deliver(ctx: &TestContext, bodies: &[String]) {
    let intake = ctx.spawn_intake().await;
    for body in bodies {
        let response = post_signed(&intake, body, SECRET).await;
        assert_eq!(response.status(), 200, "{body}");
    }
    intake.stop().await;
    ctx.drain().await;
}

#[tokio::test]
async fn a_webhook_becomes_an_enrollment_in_postgres() {
    a_webhook_becomes_an_enrollment_in_postgres_on(context().await).await;
}

/// The body of [`a_webhook_becomes_an_enrollment_in_postgres`], on any Redis (see `crate::cluster`).
pub(crate) async fn a_webhook_becomes_an_enrollment_in_postgres_on(ctx: TestContext) {
    deliver(&ctx, &[fixture("enrollment.created")]).await;
    let row = sqlx::query(
        "SELECT tenant_id, user_id, course_id, percentage_completed, free_trial, completed_at, last_topic,
                started_at = '2025-03-14T15:30:11.902Z'::timestamptz AS started_ok
         FROM enrollments WHERE enrollment_id = 104928371",
    )
    .fetch_one(&ctx.db)
    .await
    .expect("the enrollment row");
    assert_eq!(row.get::<String, _>("tenant_id"), "184532");
    assert_eq!(row.get::<i64, _>("user_id"), 55012873);
    assert_eq!(row.get::<i64, _>("course_id"), 2871345);
    assert_eq!(row.get::<f64, _>("percentage_completed"), 0.0);
    assert!(!row.get::<bool, _>("free_trial"));
    assert!(row.get::<Option<chrono::DateTime<chrono::Utc>>, _>("completed_at").is_none());
    assert_eq!(row.get::<String, _>("last_topic"), "enrollment.created");
    assert!(row.get::<bool, _>("started_ok"));
    let name: Option<String> = sqlx::query_scalar("SELECT name FROM courses WHERE course_id = 2871345")
        .fetch_one(&ctx.db)
        .await
        .expect("course stub from the enrollment");
    assert_eq!(name.as_deref(), Some("Intro to Watercolor"));
}

#[tokio::test]
async fn every_handled_topic_is_applied() {
    let ctx = context().await;
    let bodies = vec![
        fixture("user.signup"),
        event(
            "user.signup",
            json!({"id": "20250320000000000000001", "action": "updated", "created_at": "2025-03-20T00:00:00.000Z"}),
            json!({"first_name": "Maya R.", "company": "Brushworks"}),
        ),
        fixture("order.created"),
        fixture("enrollment.created"),
        fixture("enrollment.progress"),
        fixture("enrollment.completed"),
        event(
            "enrollment.created",
            json!({"id": "20250315000000000000001", "action": "trial"}),
            json!({"id": 200, "free_trial": true, "percentage_completed": "0.1", "updated_at": "2025-03-15T00:00:00Z"}),
        ),
        event(
            "enrollment.created",
            json!({"id": "20250301000000000000001", "resource": "course", "action": "created", "created_at": "2025-03-01T00:00:00.000Z"}),
            json!({"id": 900, "name": "Oil Painting", "slug": "oil-painting"}),
        ),
        event(
            "enrollment.created",
            json!({"id": "20250302000000000000001", "resource": "course", "action": "updated", "created_at": "2025-03-02T00:00:00.000Z"}),
            json!({"id": 900, "name": "Oil Painting II", "slug": "oil-painting"}),
        ),
        event(
            "enrollment.created",
            json!({"id": "20250303000000000000001", "resource": "course", "action": "created", "created_at": "2025-03-03T00:00:00.000Z"}),
            json!({"id": 901, "name": "Charcoal"}),
        ),
        event(
            "enrollment.created",
            json!({"id": "20250304000000000000001", "resource": "course", "action": "deleted", "created_at": "2025-03-04T00:00:00.000Z"}),
            json!({"id": 901, "name": "Charcoal"}),
        ),
    ];
    deliver(&ctx, &bodies).await;

    let (first_name, company, email): (Option<String>, Option<String>, Option<String>) =
        sqlx::query_as("SELECT first_name, company, email FROM users WHERE user_id = 55012873")
            .fetch_one(&ctx.db)
            .await
            .expect("user");
    assert_eq!(first_name.as_deref(), Some("Maya R."), "user.updated is newer than signup");
    assert_eq!(company.as_deref(), Some("Brushworks"));
    assert_eq!(email.as_deref(), Some("maya.chen@example.com"));

    let (amount, items, status): (Option<i64>, serde_json::Value, Option<String>) =
        sqlx::query_as("SELECT amount_cents, items, status FROM orders WHERE order_id = 7781203")
            .fetch_one(&ctx.db)
            .await
            .expect("order");
    assert_eq!(amount, Some(4900));
    assert_eq!(items[0]["product_id"], 3390211);
    assert_eq!(status.as_deref(), Some("Complete"));

    let (percent, completed, topic): (f64, bool, String) = sqlx::query_as(
        "SELECT percentage_completed, completed_at IS NOT NULL, last_topic FROM enrollments WHERE enrollment_id = 104928371",
    )
    .fetch_one(&ctx.db)
    .await
    .expect("enrollment");
    assert_eq!((percent, completed, topic.as_str()), (100.0, true, "enrollment.completed"));

    let (trial, trial_percent): (bool, f64) =
        sqlx::query_as("SELECT free_trial, percentage_completed FROM enrollments WHERE enrollment_id = 200")
            .fetch_one(&ctx.db)
            .await
            .expect("trial enrollment");
    assert_eq!((trial, trial_percent), (true, 10.0));

    let courses: Vec<(i64, Option<String>, bool)> = sqlx::query_as(
        "SELECT course_id, name, deleted_at IS NOT NULL FROM courses WHERE course_id IN (900, 901) ORDER BY course_id",
    )
    .fetch_all(&ctx.db)
    .await
    .expect("courses");
    assert_eq!(courses, vec![(900, Some("Oil Painting II".into()), false), (901, Some("Charcoal".into()), true)]);

    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE handled").fetch_one(&ctx.db).await.expect("count");
    assert_eq!(recorded, bodies.len() as i64);
}

#[tokio::test]
async fn a_late_older_event_does_not_undo_a_newer_one() {
    let ctx = context().await;
    // completed arrives first, then the older progress and created.
    deliver(&ctx, &[fixture("enrollment.completed"), fixture("enrollment.progress"), fixture("enrollment.created")])
        .await;
    let (percent, topic): (f64, String) =
        sqlx::query_as("SELECT percentage_completed, last_topic FROM enrollments WHERE enrollment_id = 104928371")
            .fetch_one(&ctx.db)
            .await
            .expect("enrollment");
    assert_eq!((percent, topic.as_str()), (100.0, "enrollment.completed"));
}

#[tokio::test]
async fn ties_on_updated_at_are_broken_by_created_at_then_event_id() {
    let ctx = context().await;
    let same_update = "2025-03-16T09:15:44.090Z";
    let variant = |id: &str, created: &str, percent: &str| {
        event(
            "enrollment.progress",
            json!({"id": id, "created_at": created}),
            json!({"updated_at": same_update, "percentage_completed": percent}),
        )
    };
    deliver(
        &ctx,
        &[
            variant("20250316000000000000009", "2025-03-16T09:15:45.000Z", "0.9"),
            variant("20250316000000000000001", "2025-03-16T09:15:46.000Z", "0.5"),
            variant("20250316000000000000002", "2025-03-16T09:15:46.000Z", "0.6"),
        ],
    )
    .await;
    let percent: f64 = sqlx::query_scalar("SELECT percentage_completed FROM enrollments")
        .fetch_one(&ctx.db)
        .await
        .expect("enrollment");
    assert_eq!(percent, 60.0, "latest created_at wins, then the greatest event id");
}

#[tokio::test]
async fn unhandled_topics_are_recorded_and_acknowledged() {
    let ctx = context().await;
    let body = json!({"id": "20250401000000000000001", "resource": "lesson", "action": "completed",
                      "tenant_id": "184532", "created_at": "2025-04-01T00:00:00.000Z", "payload": {"lesson": {"id": 1}}});
    deliver(&ctx, &[body.to_string()]).await;
    let (topic, handled): (String, bool) =
        sqlx::query_as("SELECT topic, handled FROM events").fetch_one(&ctx.db).await.expect("recorded");
    assert_eq!((topic.as_str(), handled), ("lesson.completed", false));
    assert_eq!(ctx.group_backlog().await, (0, 0));
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).dead_letters()).await, 0);
}

#[tokio::test]
async fn an_undecodable_event_is_dead_lettered_without_blocking_its_batch() {
    let ctx = context().await;
    let broken =
        event("enrollment.progress", json!({"id": "20250316000000000000077"}), json!({"percentage_completed": "lots"}));
    deliver(&ctx, &[fixture("enrollment.created"), broken, fixture("user.signup")]).await;

    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&ctx.db).await.expect("count");
    assert_eq!(applied, 2, "the good events of the batch are applied");
    let mut redis = ctx.redis.clone();
    let letters: redis::streams::StreamRangeReply =
        redis.xrange_all(ctx.keys.shard(0).dead_letters()).await.expect("XRANGE");
    assert_eq!(letters.ids.len(), 1);
    let letter = &letters.ids[0];
    assert_eq!(letter.get::<String>("event_id").as_deref(), Some("20250316000000000000077"));
    assert_eq!(letter.get::<String>("error_kind").as_deref(), Some("malformed"));
    assert!(letter.get::<String>("error").is_some_and(|error| error.contains("percentage_completed")));
    assert!(letter.get::<String>("body").is_some_and(|body| body.contains("lots")), "the raw body is kept");
    assert_eq!(ctx.group_backlog().await, (0, 0), "nothing left pending");
}

#[tokio::test]
async fn a_worker_first_finishes_its_own_pending_entries() {
    let ctx = context().await;
    deliver(&ctx, &[]).await;
    let intake = ctx.spawn_intake().await;
    post_signed(&intake, &fixture("enrollment.created"), SECRET).await;
    post_signed(&intake, &fixture("user.signup"), SECRET).await;
    // A worker named "w1" reads both entries and dies before applying them.
    let mut redis = ctx.redis.clone();
    let opts = redis::streams::StreamReadOptions::default().group(fleet::redis::GROUP, "w1").count(10);
    let read: redis::streams::StreamReadReply =
        redis.xread_options(&[ctx.keys.shard(0).events()], &[">"], &opts).await.expect("XREADGROUP");
    assert_eq!(read.keys[0].ids.len(), 2);
    assert_eq!(ctx.group_backlog().await, (0, 2));

    // Restarted under the same name, it applies and acknowledges them.
    let worker = ctx.spawn_worker(ctx.worker_settings("w1")).await;
    ctx.wait_until_drained().await;
    worker.stop().await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&ctx.db).await.expect("count");
    assert_eq!(applied, 2);
}

#[tokio::test]
async fn trimming_never_drops_an_unacknowledged_entry() {
    let ctx = context().await;
    let intake = ctx.spawn_intake().await;
    for n in 0..10 {
        let body = event("user.signup", json!({"id": format!("2025031415295800231{n:04}")}), json!({}));
        assert_eq!(post_signed(&intake, &body, SECRET).await.status(), 200);
    }
    // Six entries delivered to a consumer that never acknowledges them.
    let mut redis = ctx.redis.clone();
    let opts = redis::streams::StreamReadOptions::default().group(fleet::redis::GROUP, "stuck").count(6);
    let _: redis::streams::StreamReadReply =
        redis.xread_options(&[ctx.keys.shard(0).events()], &[">"], &opts).await.expect("XREADGROUP");

    let trimmed = fleet::redis::stream::trim(&mut redis, &ctx.keys.shard(0), 2).await.expect("trim");
    assert_eq!(trimmed, 0, "the oldest entries are pending: nothing may go");
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 10);

    // Acknowledge the first three: exactly those may go.
    let pending: redis::streams::StreamPendingCountReply =
        redis.xpending_count(ctx.keys.shard(0).events(), fleet::redis::GROUP, "-", "+", 3).await.expect("XPENDING");
    let first_three: Vec<String> = pending.ids.iter().map(|p| p.id.clone()).collect();
    let _: i64 = redis.xack(ctx.keys.shard(0).events(), fleet::redis::GROUP, &first_three).await.expect("XACK");
    let trimmed = fleet::redis::stream::trim(&mut redis, &ctx.keys.shard(0), 2).await.expect("trim");
    assert_eq!(trimmed, 3);
    assert_eq!(ctx.group_backlog().await, (4, 3), "undelivered and pending entries all remain");

    // A worker applies the undelivered four; the stuck consumer then
    // acknowledges its three. Now the stream shrinks to the bound.
    let worker = ctx.spawn_worker(ctx.worker_settings("live")).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while ctx.group_backlog().await != (0, 3) {
        assert!(std::time::Instant::now() < deadline, "worker did not take the undelivered entries");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    worker.stop().await;
    let _: i64 =
        redis.xack(ctx.keys.shard(0).events(), fleet::redis::GROUP, &pending_ids(&ctx).await).await.expect("XACK");
    fleet::redis::stream::trim(&mut redis, &ctx.keys.shard(0), 2).await.expect("trim");
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 2);
}

async fn pending_ids(ctx: &TestContext) -> Vec<String> {
    let mut redis = ctx.redis.clone();
    let pending: redis::streams::StreamPendingCountReply =
        redis.xpending_count(ctx.keys.shard(0).events(), fleet::redis::GROUP, "-", "+", 100).await.expect("XPENDING");
    pending.ids.into_iter().map(|p| p.id).collect()
}

#[tokio::test]
async fn a_worker_recreates_a_lost_consumer_group_and_carries_on() {
    let ctx = context().await;
    let worker = ctx.spawn_worker(ctx.worker_settings("survivor")).await;
    let mut redis = ctx.redis.clone();
    // As if Redis restarted without its data.
    let _: i64 = redis.del(ctx.keys.shard(0).events()).await.expect("DEL");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // An event appended to the new stream, which has no group yet.
    let body = fixture("enrollment.created");
    let entry = fleet::redis::entry::NewEntry {
        body: body.as_bytes(),
        topic: "enrollment.created",
        tenant: "184532",
        event_id: "20250314153012345678901",
        received_at: chrono::Utc::now(),
        headers: None,
    };
    let dedup = fleet::redis::dedup::DedupWindow::new(std::time::Duration::from_secs(60), 1000);
    fleet::redis::stream::enqueue(&mut redis, &ctx.keys.shard(0), &entry, &dedup).await.expect("enqueue");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !redis.exists::<_, bool>(ctx.keys.shard(0).events()).await.expect("EXISTS")
        || redis
            .xinfo_groups::<_, redis::streams::StreamInfoGroupsReply>(ctx.keys.shard(0).events())
            .await
            .map_or(true, |reply| reply.groups.is_empty())
    {
        assert!(std::time::Instant::now() < deadline, "the worker did not recreate the group");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    ctx.wait_until_drained().await;
    worker.stop().await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&ctx.db).await.expect("count");
    assert_eq!(applied, 1);
}
