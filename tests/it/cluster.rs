//! The core scenarios again, on a real three-master Redis Cluster (started
//! once per test binary, see `helpers::cluster_context`): a webhook through
//! intake and worker into Postgres, workers killed with SIGKILL while events
//! flow (nothing lost, state equal to the in-order reference), retries and
//! dead letters, a replay by the real `fleet dlq` and by the operator
//! console, the status report and the console's activity charts, and the
//! cache of several schools written and invalidated in one call; and events
//! spread over three stream shards (see `crate::shards`): applied once,
//! through SIGKILLed workers, dead letters, and a change of shard count.

use std::time::Duration;

use fleet::redis::cache::{self, Entry, Versioned};
use fleet::redis::keys::{hash_tag, tags};
use serde_json::json;

use crate::helpers::cluster_context;

#[tokio::test]
async fn a_webhook_becomes_an_enrollment_in_postgres_on_a_cluster() {
    crate::worker::a_webhook_becomes_an_enrollment_in_postgres_on(cluster_context().await).await;
}

#[tokio::test]
async fn workers_killed_with_sigkill_lose_nothing_on_a_cluster() {
    crate::chaos::workers_killed_with_sigkill_over_and_over_lose_nothing_on(cluster_context().await).await;
}

#[tokio::test]
async fn a_refused_event_is_retried_then_dead_lettered_on_a_cluster() {
    crate::recovery::a_refused_event_is_retried_on_schedule_then_dead_lettered_and_its_batch_commits_on(
        cluster_context().await,
    )
    .await;
}

#[tokio::test]
async fn dlq_replay_applies_a_fixed_event_on_a_cluster() {
    crate::operator::dlq_replay_applies_a_fixed_event_and_reports_refusals_on(cluster_context().await).await;
}

#[tokio::test]
async fn the_console_replays_every_dead_letter_matching_on_a_cluster() {
    crate::console::replaying_every_one_matching_runs_in_the_background_and_shows_its_progress_on(
        cluster_context().await,
    )
    .await;
}

#[tokio::test]
async fn the_status_report_and_its_charts_read_a_cluster() {
    crate::console::the_workers_record_what_they_applied_for_the_charts_on(cluster_context().await).await;
}

#[tokio::test]
async fn the_cache_of_several_schools_is_written_and_invalidated_in_one_call_on_a_cluster() {
    let ctx = cluster_context().await;
    let keys = &ctx.keys;
    let schools = ["184532", "200001", "300002", "400003"];
    let tag_keys: Vec<String> = schools.iter().map(|school| keys.tag(school, &tags::course(1))).collect();
    // Different schools are different hash tags: with four, at least two slots.
    let distinct: std::collections::HashSet<&str> = tag_keys.iter().map(|key| hash_tag(key)).collect();
    assert_eq!(distinct.len(), schools.len());
    let entries: Vec<Entry> = schools
        .iter()
        .zip(&tag_keys)
        .map(|(school, tag)| Entry {
            key: keys.statistics(school, 1),
            tags: vec![tag.clone()],
            ttl: Duration::from_secs(60),
            value: Versioned { version: 1, body: json!({ "enrollments": 1 }) },
        })
        .collect();
    let mut redis = ctx.redis.clone();
    assert!(redis.is_cluster());
    assert_eq!(cache::put(&mut redis, &entries).await.expect("put across slots"), schools.len());
    assert_eq!(cache::invalidate(&mut redis, &tag_keys).await.expect("invalidate across slots"), schools.len() as u64);
    for school in schools {
        let lookup = cache::get(&mut redis, &keys.statistics(school, 1)).await.expect("get");
        assert_eq!(lookup, cache::Lookup::Missing, "{school}");
    }
    let left = redis.scan_keys(&format!("{}*", ctx.prefix.as_str())).await.expect("scan every master");
    assert!(left.iter().all(|key| !key.contains(":cache:")), "{left:?}");
}

#[tokio::test]
async fn events_spread_over_three_shards_are_all_applied_once_on_a_cluster() {
    crate::shards::events_spread_over_three_shards_are_all_applied_once_on(cluster_context().await).await;
}

#[tokio::test]
async fn dead_letters_of_every_shard_are_listed_replayed_and_counted_on_a_cluster() {
    crate::shards::dead_letters_of_every_shard_are_listed_replayed_and_counted_on(cluster_context().await).await;
}

#[tokio::test]
async fn the_shard_count_changes_on_a_running_fleet_and_nothing_is_lost_on_a_cluster() {
    crate::shards::the_shard_count_changes_on_a_running_fleet_and_nothing_is_lost_on(cluster_context().await).await;
}

#[tokio::test]
async fn workers_killed_with_sigkill_lose_nothing_over_three_shards_on_a_cluster() {
    let ctx = cluster_context().await;
    // Events spread over three shards, on different masters.
    ctx.raise_shards(3).await;
    let slots: std::collections::HashSet<String> =
        ctx.shards().await.iter().map(|shard| hash_tag(&shard.events()).to_owned()).collect();
    assert_eq!(slots.len(), 3);
    crate::chaos::workers_killed_with_sigkill_over_and_over_lose_nothing_on(ctx).await;
}
