//! The deduplication window against real Redis: redeliveries are refused
//! within the window, across time buckets, and accepted again after it; and
//! what it costs in Redis memory, measured.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde_json::Value;

use fleet::redis::dedup::DedupWindow;
use fleet::redis::entry::NewEntry;
use fleet::redis::stream::{self, Enqueued};

use crate::helpers::{context, fixture, intake_settings, post_signed, IntakeServer, TestContext, SECRET};

/// The most Redis memory one event held in the window may cost (issue 8).
const MOST_BYTES_PER_EVENT: f64 = 40.0;

async fn status_of(intake: &IntakeServer, body: &str) -> String {
    let response = post_signed(intake, body, SECRET).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("a JSON answer");
    answer["status"].as_str().expect("a status").to_owned()
}

/// Sleeps until 100 ms into the next whole second of the wall clock: with
/// buckets of 1 s, the start of the next bucket.
async fn sleep_into_next_second() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970");
    let next = now.as_secs() + 1;
    tokio::time::sleep(Duration::from_secs(next) + Duration::from_millis(100) - now).await;
    next
}

async fn sleep_into_second(second: u64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970");
    let target = Duration::from_secs(second) + Duration::from_millis(100);
    assert!(now < target, "the test fell behind the clock: a request took most of a second");
    tokio::time::sleep(target - now).await;
}

/// Every deduplication set of this test: (name, remaining life in seconds).
async fn seen_sets(ctx: &TestContext) -> Vec<(String, i64)> {
    let mut redis = ctx.redis.clone();
    let mut names: Vec<String> = Vec::new();
    let mut iter = redis.scan_match::<_, String>(ctx.keys.seen_pattern()).await.expect("SCAN");
    while let Some(name) = iter.next_item().await {
        names.push(name.expect("a key name"));
    }
    drop(iter);
    let mut sets = Vec::new();
    for name in names {
        let ttl: i64 = redis.ttl(&name).await.expect("TTL");
        sets.push((name, ttl));
    }
    sets
}

#[tokio::test]
async fn a_redelivery_is_a_duplicate_across_buckets_until_the_window_and_a_bucket_have_passed() {
    let ctx = context().await;
    let mut settings = intake_settings(SECRET);
    // Buckets of 1 s; an event is looked for in the current bucket and the four before it.
    settings.dedup = DedupWindow::new(Duration::from_secs(4), 1000);
    let lifetime = settings.dedup.set_lifetime_secs() as i64;
    let intake = ctx.spawn_intake_with(settings).await;
    let body = fixture("enrollment.created");

    let accepted_in = sleep_into_next_second().await;
    assert_eq!(status_of(&intake, &body).await, "accepted");
    assert_eq!(status_of(&intake, &body).await, "duplicate", "in the same bucket");
    let sets = seen_sets(&ctx).await;
    assert_eq!(sets.len(), 1, "one set remembers the event: {sets:?}");
    assert!(sets.iter().all(|(_, ttl)| (1..=lifetime).contains(ttl)), "each set expires as a whole: {sets:?}");

    sleep_into_second(accepted_in + 1).await;
    assert_eq!(status_of(&intake, &body).await, "duplicate", "in the next bucket");
    sleep_into_second(accepted_in + 4).await;
    assert_eq!(status_of(&intake, &body).await, "duplicate", "a window (4 s) later");
    sleep_into_second(accepted_in + 5).await;
    assert_eq!(status_of(&intake, &body).await, "accepted", "a window and a bucket later");
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 2, "duplicates appended nothing");
    intake.stop().await;
}

/// Enqueues event `event_id` of school 184532 as received at `received_at`.
async fn enqueue_at(ctx: &TestContext, dedup: &DedupWindow, event_id: &str, received_at: DateTime<Utc>) -> Enqueued {
    let entry =
        NewEntry { body: b"{}", topic: "enrollment.created", tenant: "184532", event_id, received_at, headers: None };
    let mut redis = ctx.redis.clone();
    stream::enqueue(&mut redis, &ctx.keys.shard(0), &entry, dedup).await.expect("enqueue")
}

#[tokio::test]
async fn the_window_is_counted_from_the_receipt_time() {
    let ctx = context().await;
    let mut redis = ctx.redis.clone();
    stream::ensure_group(&mut redis, &ctx.keys.shard(0)).await.expect("group");
    // Buckets of 900 s.
    let dedup = DedupWindow::new(Duration::from_secs(3600), 20);
    let bucket = 900;
    let start = Utc::now().timestamp() / bucket * bucket;
    let at = |offset: i64| DateTime::from_timestamp(start + offset, 0).expect("a time");

    assert!(matches!(enqueue_at(&ctx, &dedup, "1", at(10)).await, Enqueued::Accepted(_)));
    for (offset, when) in [
        (10, "at once"),
        (899, "at the end of its bucket"),
        (900, "at the start of the next"),
        (10 + 3599, "a second within the window"),
        (4 * bucket + 899, "up to a bucket past the window"),
    ] {
        assert_eq!(enqueue_at(&ctx, &dedup, "1", at(offset)).await, Enqueued::Duplicate, "{when}");
    }
    assert!(
        matches!(enqueue_at(&ctx, &dedup, "1", at(5 * bucket)).await, Enqueued::Accepted(_)),
        "forgotten once no checked bucket reaches back to it"
    );
    assert!(matches!(enqueue_at(&ctx, &dedup, "2", at(10)).await, Enqueued::Accepted(_)), "another event");
    assert_eq!(ctx.stream_len(&ctx.keys.shard(0).events()).await, 3);
}

#[tokio::test]
async fn the_window_holds_an_event_in_at_most_40_bytes() {
    let ctx = context().await;
    let mut redis = ctx.redis.clone();
    stream::ensure_group(&mut redis, &ctx.keys.shard(0)).await.expect("group");
    // At 20 webhooks/s an hour's window has buckets of 900 s laid out in 64
    // partitions: 20,000 events fill each set to ~312, as the expected rate would.
    let dedup = DedupWindow::new(Duration::from_secs(3600), 20);
    assert_eq!(dedup.partitions(), 64);
    let events = 20_000u64;
    let senders = 16;
    let mut tasks = tokio::task::JoinSet::new();
    for sender in 0..senders {
        let mut redis = ctx.redis.clone();
        let keys = ctx.keys.clone();
        tasks.spawn(async move {
            for n in (sender..events).step_by(senders as usize) {
                let event_id = format!("2025031609154411{n:07}");
                let entry = NewEntry {
                    body: b"{}",
                    topic: "enrollment.created",
                    tenant: "184532",
                    event_id: &event_id,
                    received_at: Utc::now(),
                    headers: None,
                };
                let enqueued = stream::enqueue(&mut redis, &keys.shard(0), &entry, &dedup).await.expect("enqueue");
                assert!(matches!(enqueued, Enqueued::Accepted(_)), "event {event_id} is new");
            }
        });
    }
    while let Some(sent) = tasks.join_next().await {
        sent.expect("sender");
    }

    let sets = seen_sets(&ctx).await;
    let (mut bytes, mut members) = (0u64, 0u64);
    for (name, _) in &sets {
        let usage: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(name)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut redis)
            .await
            .expect("MEMORY USAGE");
        let encoding: String =
            redis::cmd("OBJECT").arg("ENCODING").arg(name).query_async(&mut redis).await.expect("OBJECT ENCODING");
        assert_eq!(encoding, "intset", "{name} stayed compact");
        members += redis.scard::<_, u64>(name).await.expect("SCARD");
        bytes += usage;
    }
    assert_eq!(members, events, "each event remembered once");
    let per_event = bytes as f64 / events as f64;
    println!("deduplication window: {} sets, {members} members, {bytes} B, {per_event:.1} B per event", sets.len());
    assert!(per_event <= MOST_BYTES_PER_EVENT, "{per_event:.1} B per event");
}
