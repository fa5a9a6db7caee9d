//! One event's data never stalls the fleet: events that Postgres refuses for
//! their data, or for reasons it does not explain, are retried on schedule
//! and dead-lettered while the events around them are applied and the
//! worker stays ready. A broken deploy still waits as an outage.

use std::time::Duration;

use fleet::health::Health;
use fleet::worker::Worker;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::helpers::{context, event, eventually, TestContext, WorkerHandle};

const GOOD_EVENTS: i64 = 20;

/// Enrollment `n`, a good one unless a test makes Postgres refuse it.
fn enrollment(n: i64) -> String {
    event("enrollment.created", json!({"id": format!("2025031415301234561{n:04}")}), json!({"id": n}))
}

async fn enqueue_good_events(ctx: &TestContext) {
    for n in 1..=GOOD_EVENTS {
        ctx.enqueue(&enrollment(n)).await;
    }
}

/// A worker run in-process, and its health as `/readyz` would serve it.
async fn spawn_worker(ctx: &TestContext, consumer: &str) -> (WorkerHandle, Health) {
    let worker =
        Worker::connect(ctx.db.clone(), &ctx.redis_target(), ctx.keys.clone(), ctx.fast_retry_settings(consumer, 3))
            .await
            .expect("worker connects");
    let health = worker.health();
    (WorkerHandle::run(worker), health)
}

/// Samples `health` every 10 ms; finishes with the first outage it sees.
fn watch_for_outages(health: Health) -> JoinHandle<String> {
    tokio::spawn(async move {
        loop {
            if let Some((dependency, error, _)) = health.outage() {
                return format!("{}: {error}", dependency.as_str());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

async fn assert_no_outage_was_seen(watch: JoinHandle<String>) {
    if watch.is_finished() {
        let outage = watch.await.expect("the watch did not panic");
        panic!("the worker reported an outage for one event's fault: {outage}");
    }
    watch.abort();
}

/// Makes Postgres refuse any write of enrollment `id` with `sqlstate`.
async fn refuse_enrollment(ctx: &TestContext, id: i64, sqlstate: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION refuse_enrollment() RETURNS trigger AS $$
         BEGIN
           IF NEW.enrollment_id = {id} THEN
             RAISE EXCEPTION 'enrollment {id} is refused by the test' USING ERRCODE = '{sqlstate}';
           END IF;
           RETURN NEW;
         END $$ LANGUAGE plpgsql"
    )))
    .execute(&ctx.db)
    .await
    .expect("function");
    sqlx::query(
        "CREATE TRIGGER refuse_enrollment BEFORE INSERT OR UPDATE ON enrollments
         FOR EACH ROW EXECUTE FUNCTION refuse_enrollment()",
    )
    .execute(&ctx.db)
    .await
    .expect("trigger");
}

/// Waits until the good events are applied and the poison is dead-lettered
/// after its three attempts, with nothing left pending or scheduled.
async fn assert_poison_dead_lettered(ctx: &TestContext, event_id: &str, sqlstate: &str) {
    eventually("the good events are applied", Duration::from_secs(20), || async {
        ctx.applied_events().await == GOOD_EVENTS
    })
    .await;
    eventually("the poison is dead-lettered", Duration::from_secs(20), || async {
        ctx.dead_letters().await.len() == 1
    })
    .await;
    ctx.wait_until_drained().await;
    let letter = &ctx.dead_letters().await[0];
    let field = |name: &str| letter.get::<String>(name).unwrap_or_default();
    assert_eq!(field("event_id"), event_id);
    assert_eq!(field("error_kind"), "event");
    assert_eq!(field("attempts"), "3");
    assert!(field("error").contains(&format!("SQLSTATE {sqlstate}")), "{}", field("error"));
    assert_eq!(ctx.applied_events().await, GOOD_EVENTS, "the poison was never applied");
    assert_eq!(ctx.scheduled_retries().await, 0);
    assert_eq!(ctx.group_backlog().await, (0, 0));
}

/// Text that no compression shrinks much: hex of random UUIDs.
fn random_text(bytes: usize) -> String {
    std::iter::repeat_with(|| uuid::Uuid::new_v4().simple().to_string())
        .flat_map(|hex| hex.into_bytes())
        .take(bytes)
        .map(char::from)
        .collect()
}

#[tokio::test]
async fn an_index_row_too_large_is_the_events_fault_and_the_others_flow() {
    let ctx = context().await;
    sqlx::query("CREATE INDEX courses_by_name ON courses (name)").execute(&ctx.db).await.expect("index");
    // 20 good events and, among them, one whose course name no btree can hold (SQLSTATE 54000).
    for n in 1..=GOOD_EVENTS {
        ctx.enqueue(&enrollment(n)).await;
        if n == GOOD_EVENTS / 2 {
            let huge = json!({"id": 999, "course_id": 999, "course": {"id": 999, "name": random_text(10_000)}});
            ctx.enqueue(&event("enrollment.created", json!({"id": "20250314153012345610999"}), huge)).await;
        }
    }
    let (worker, health) = spawn_worker(&ctx, "index-limit").await;
    let watch = watch_for_outages(health);
    assert_poison_dead_lettered(&ctx, "20250314153012345610999", "54000").await;
    assert_no_outage_was_seen(watch).await;
    worker.stop().await;
}

#[tokio::test]
async fn an_unexplained_error_of_one_event_among_good_ones_is_the_events_fault() {
    let ctx = context().await;
    // XX000 (internal error) says nothing of who is at fault; the others commit, so the event is.
    refuse_enrollment(&ctx, 777, "XX000").await;
    ctx.enqueue(&enrollment(777)).await;
    enqueue_good_events(&ctx).await;
    let (worker, health) = spawn_worker(&ctx, "unexplained").await;
    let watch = watch_for_outages(health);
    assert_poison_dead_lettered(&ctx, "20250314153012345610777", "XX000").await;
    assert_no_outage_was_seen(watch).await;
    worker.stop().await;
}

#[tokio::test]
async fn an_event_refused_while_others_commit_stays_at_fault_when_retried_alone() {
    let ctx = context().await;
    // 42P01 usually means a broken deploy, but here only this event's write raises it: the others
    // commit, so it is the event's fault, and its retries (read alone) do not turn into an outage.
    refuse_enrollment(&ctx, 777, "42P01").await;
    ctx.enqueue(&enrollment(777)).await;
    enqueue_good_events(&ctx).await;
    let (worker, health) = spawn_worker(&ctx, "deploy-like").await;
    let watch = watch_for_outages(health);
    assert_poison_dead_lettered(&ctx, "20250314153012345610777", "42P01").await;
    assert_no_outage_was_seen(watch).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_batch_of_one_unexplained_refusal_does_not_stall_the_events_after_it() {
    let ctx = context().await;
    // P0001 is what a trigger's plain RAISE EXCEPTION answers.
    refuse_enrollment(&ctx, 777, "P0001").await;
    ctx.enqueue(&enrollment(777)).await;
    let (worker, health) = spawn_worker(&ctx, "lone").await;
    let watch = watch_for_outages(health);
    // Judged alone: nothing else in its batch commits, but Postgres answers.
    eventually("the lone event costs an attempt", Duration::from_secs(20), || async {
        ctx.scheduled_retries().await + ctx.dead_letters().await.len() as u64 >= 1
    })
    .await;
    enqueue_good_events(&ctx).await;
    assert_poison_dead_lettered(&ctx, "20250314153012345610777", "P0001").await;
    assert_no_outage_was_seen(watch).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_broken_deploy_refusing_every_event_waits_as_an_outage_and_costs_no_attempt() {
    let ctx = context().await;
    // As if a migration renamed a column the worker writes: SQLSTATE 42703 for every enrollment.
    sqlx::query("ALTER TABLE enrollments RENAME COLUMN last_topic TO renamed_topic")
        .execute(&ctx.db)
        .await
        .expect("rename");
    ctx.enqueue(&enrollment(1)).await;
    let (worker, health) = spawn_worker(&ctx, "deploy").await;
    eventually("readiness reports Postgres", Duration::from_secs(20), || async {
        health
            .outage()
            .is_some_and(|(dependency, error, _)| dependency.as_str() == "postgres" && error.contains("42703"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ctx.scheduled_retries().await, 0, "an outage costs no attempt");
    assert!(ctx.dead_letters().await.is_empty());

    sqlx::query("ALTER TABLE enrollments RENAME COLUMN renamed_topic TO last_topic")
        .execute(&ctx.db)
        .await
        .expect("rename back");
    eventually("the event is applied once the deploy is fixed", Duration::from_secs(40), || async {
        ctx.applied_events().await == 1
    })
    .await;
    ctx.wait_until_drained().await;
    eventually("readiness recovers", Duration::from_secs(5), || async { health.outage().is_none() }).await;
    worker.stop().await;
    assert!(ctx.dead_letters().await.is_empty());
}
