//! Property: any permutation of an event history, with duplicates and any
//! split into batches, ends in the same Postgres state as the history
//! applied once, in order, one event at a time; and the statistics kept by
//! deltas equal a from-scratch recount.

use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Duration, Utc};
use fleet_jobs::{apply_batch, Event};
use proptest::prelude::*;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::context;

#[derive(Debug, Clone)]
enum Step {
    Enrollment { id: i64, action: &'static str, percent: u8, same_updated_at: bool, user: i64, course: i64 },
    User { id: i64, action: &'static str, name: u8 },
    Course { id: i64, action: &'static str, name: u8 },
    Order { id: i64, amount: u16, user: i64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1..4i64, prop::sample::select(vec!["created", "progress", "completed", "trial"]), 0..=100u8, any::<bool>(), 1..3i64, 1..3i64)
            .prop_map(|(id, action, percent, same_updated_at, user, course)| Step::Enrollment { id, action, percent, same_updated_at, user, course }),
        2 => (1..3i64, prop::sample::select(vec!["signup", "updated"]), any::<u8>())
            .prop_map(|(id, action, name)| Step::User { id, action, name }),
        2 => (1..3i64, prop::sample::select(vec!["created", "updated", "deleted"]), any::<u8>())
            .prop_map(|(id, action, name)| Step::Course { id, action, name }),
        1 => (1..3i64, any::<u16>(), 1..3i64).prop_map(|(id, amount, user)| Step::Order { id, amount, user }),
    ]
}

/// A history, the order in which it is delivered (every event at least
/// once, some twice or more) and the batch sizes of the delivery.
fn scenario() -> impl Strategy<Value = (Vec<Step>, Vec<usize>, Vec<usize>)> {
    prop::collection::vec(step(), 1..40)
        .prop_flat_map(|history| {
            let len = history.len();
            (Just(history), prop::collection::vec(0..len, 0..len), prop::collection::vec(1..10usize, 1..12))
        })
        .prop_flat_map(|(history, duplicates, batches)| {
            let delivery: Vec<usize> = (0..history.len()).chain(duplicates).collect();
            (Just(history), Just(delivery).prop_shuffle(), Just(batches))
        })
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The webhook body of step `index` of a history.
fn body(index: usize, step: &Step) -> Value {
    let base: DateTime<Utc> = "2025-03-01T00:00:00Z".parse().expect("base time");
    let created = base + Duration::seconds(index as i64 * 60);
    let updated = created - Duration::milliseconds(40);
    let (resource, action, payload) = match step {
        Step::Enrollment { id, action, percent, same_updated_at, user, course } => (
            "enrollment",
            *action,
            json!({
                "id": id, "course_id": course, "course": {"id": course, "name": format!("Course {course}")},
                "user": {"id": user, "email": format!("u{user}@example.com"), "first_name": "U", "last_name": "Ser"},
                "percentage_completed": format!("{:.2}", f64::from(*percent) / 100.0),
                "started_at": timestamp(base), "activated_at": timestamp(base),
                "completed_at": (*action == "completed").then(|| timestamp(updated)),
                "expiry_date": null, "created_at": timestamp(base), "free_trial": *action == "trial",
                "updated_at": timestamp(if *same_updated_at { base } else { updated }),
            }),
        ),
        Step::User { id, action, name } => (
            "user",
            *action,
            json!({"id": id, "email": format!("u{id}@example.com"), "first_name": format!("Name{name}"),
                   "last_name": "Ser", "roles": [], "created_at": timestamp(base)}),
        ),
        Step::Course { id, action, name } => {
            ("course", *action, json!({"id": id, "name": format!("Course {name}"), "slug": format!("course-{name}")}))
        }
        Step::Order { id, amount, user } => (
            "order",
            "created",
            json!({"id": id, "order_number": format!("{id}"), "status": "Complete", "amount_cents": amount,
                   "items": [{"product_id": 1, "amount_cents": amount}], "user": {"id": user, "email": format!("u{user}@example.com")},
                   "created_at": timestamp(created)}),
        ),
    };
    json!({"id": format!("2025{index:019}"), "resource": resource, "action": action, "tenant_id": "ignored",
           "created_at": timestamp(created), "payload": payload})
}

fn decode(tenant: &str, index: usize, step: &Step) -> Event {
    let body = body(index, step).to_string();
    Event::decode(body.as_bytes(), tenant, Utc::now(), &format!("{index}-0")).expect("generated events decode")
}

async fn apply(db: &PgPool, events: &[Event]) {
    let mut tx = db.begin().await.expect("begin");
    apply_batch(&mut tx, events).await.expect("apply");
    tx.commit().await.expect("commit");
}

/// A tenant's state, tenant-free, in key order.
async fn state(db: &PgPool, tenant: &str) -> Vec<Value> {
    let mut state = Vec::new();
    for (table, key) in
        [("enrollments", "enrollment_id"), ("users", "user_id"), ("courses", "course_id"), ("orders", "order_id")]
    {
        let rows: Vec<Value> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT to_jsonb(t) - 'tenant_id' FROM {table} t WHERE tenant_id = $1 ORDER BY {key}"
        )))
        .bind(tenant)
        .fetch_all(db)
        .await
        .expect("state");
        state.push(json!({ table: rows }));
    }
    let events: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events WHERE tenant_id = $1 ORDER BY event_id")
        .bind(tenant)
        .fetch_all(db)
        .await
        .expect("events");
    state.push(json!({ "events": events }));
    state
}

/// (statistics as stored, statistics recounted from the enrollments), per
/// course and for the school, tenant-free.
async fn statistics(db: &PgPool, tenant: &str) -> (Value, Value) {
    let stored: Value = sqlx::query_scalar(
        "SELECT jsonb_build_object(
            'courses', (SELECT coalesce(jsonb_agg(jsonb_build_array(course_id, enrollments, active, completed,
                               percentage_sum, round(completion_rate::numeric, 9), round(average_percentage::numeric, 9))
                               ORDER BY course_id), '[]')
                        FROM course_statistics WHERE tenant_id = $1 AND enrollments > 0),
            'idle_courses', (SELECT count(*) FROM course_statistics
                             WHERE tenant_id = $1 AND enrollments = 0 AND (active, completed, percentage_sum) <> (0, 0, 0)),
            'school', coalesce((SELECT jsonb_build_array(enrollments, active, completed, percentage_sum)
                                FROM tenant_statistics WHERE tenant_id = $1),
                               jsonb_build_array(0, 0, 0, 0::numeric(24, 6))))",
    )
    .bind(tenant)
    .fetch_one(db)
    .await
    .expect("stored statistics");
    let recounted: Value = sqlx::query_scalar(
        "WITH per_course AS (
            SELECT course_id, count(*) AS enrollments,
                   count(*) FILTER (WHERE enrollment_is_active(started_at, completed_at, percentage_completed)) AS active,
                   count(*) FILTER (WHERE enrollment_is_completed(completed_at, percentage_completed)) AS completed,
                   sum(percentage_completed::numeric(24, 6)) AS percentage_sum
            FROM enrollments WHERE tenant_id = $1 GROUP BY course_id)
         SELECT jsonb_build_object(
            'courses', (SELECT coalesce(jsonb_agg(jsonb_build_array(course_id, enrollments, active, completed, percentage_sum,
                               round(completed::numeric / enrollments, 9), round(percentage_sum / enrollments, 9))
                               ORDER BY course_id), '[]') FROM per_course),
            'idle_courses', 0,
            'school', (SELECT jsonb_build_array(coalesce(sum(enrollments), 0), coalesce(sum(active), 0),
                               coalesce(sum(completed), 0), coalesce(sum(percentage_sum), 0)::numeric(24, 6))
                       FROM per_course))",
    )
    .bind(tenant)
    .fetch_one(db)
    .await
    .expect("recount");
    (stored, recounted)
}

#[test]
fn any_delivery_order_with_duplicates_ends_in_the_in_order_state() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ctx = runtime.block_on(context());
    let case = AtomicUsize::new(0);
    let config = ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |((history, delivery, batches) in scenario())| {
        let case = case.fetch_add(1, Ordering::Relaxed);
        let (in_order, shuffled) = (format!("in-order-{case}"), format!("shuffled-{case}"));
        let (expected, actual) = runtime.block_on(async {
            for (index, step) in history.iter().enumerate() {
                apply(&ctx.db, &[decode(&in_order, index, step)]).await;
            }
            let mut events = delivery.iter().map(|&index| decode(&shuffled, index, &history[index])).peekable();
            let mut sizes = batches.iter().cycle();
            while events.peek().is_some() {
                let size = *sizes.next().unwrap_or(&1);
                let batch: Vec<Event> = events.by_ref().take(size).collect();
                apply(&ctx.db, &batch).await;
            }
            (state(&ctx.db, &in_order).await, state(&ctx.db, &shuffled).await)
        });
        prop_assert_eq!(expected, actual);
        let (stored, recounted) = runtime.block_on(statistics(&ctx.db, &shuffled));
        prop_assert_eq!(stored, recounted);
    });
    runtime.block_on(async move { drop(ctx) });
}
