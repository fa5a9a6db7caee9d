//! The core scenarios again, on a real three-master Redis Cluster (started
//! once per test binary, see `helpers::cluster_context`): a webhook through
//! intake and worker into Postgres, workers killed with SIGKILL while events
//! flow (nothing lost, state equal to the in-order reference), retries and
//! dead letters, a replay by the real `fleet dlq` and by the operator
//! console, the status report and the console's activity charts, and the
//! cache of several schools written and invalidated in one call; events
//! spread over three stream shards (see `crate::shards`): applied once,
//! through SIGKILLed workers, dead letters, and a change of shard count.
//! And, on a cluster of its own, a master killed mid-run and restarted.

use std::time::Duration;

use fleet::local_services::{free_port, LocalRedisCluster};
use fleet::redis::cache::{self, Entry, Versioned};
use fleet::redis::dedup::DedupWindow;
use fleet::redis::keys::{hash_tag, tags};
use fleet::redis::stream::{self, Enqueued};
use fleet::redis::{Keys, RedisConnection};
use serde_json::json;

use crate::chaos::{assert_in_order_state, readiness, worker_process};
use crate::helpers::{cluster_context, context_on, eventually, scratch_dir, signal, wait_exit};
use crate::processes::progress_event;

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

/// A master of a cluster of this test's own (restarting one of the shared
/// cluster would disturb the tests running beside it) is killed with
/// SIGKILL while real workers work through a backlog held on it, stays down
/// while webhooks keep arriving, and is restarted on its `nodes.conf` and
/// append-only file. The workers wait out the outage and carry on by
/// themselves: every event applied once, in order, none charged an attempt.
#[tokio::test]
async fn a_master_restarted_mid_run_loses_nothing_on_a_cluster() {
    let mut cluster = LocalRedisCluster::start(&scratch_dir("redis-cluster-restarted"), 3, true)
        .await
        .expect("start a Redis Cluster");
    let ctx = context_on(&cluster.url()).await;
    let (before, during) = (1000, 300);
    let total = before + during;

    // Three stream shards, one per master; the backlog is there before the
    // workers start, so the kill finds most of it unread.
    ctx.raise_shards(SHARDS).await;
    let mut redis = ctx.redis.clone();
    for n in 0..before {
        assert_eq!(enqueue_retrying(&mut redis, &ctx.keys, n).await, 0, "the cluster is up");
    }
    let victim = master_of(&cluster, &ctx.keys.shard(0).events()).await;
    let health_ports: Vec<u16> = (0..3).map(|_| free_port().expect("port")).collect();
    let mut workers: Vec<tokio::process::Child> = health_ports
        .iter()
        .map(|port| {
            worker_process(
                &ctx,
                &[
                    // A single attempt: an attempt charged for the outage would dead-letter an event.
                    ("FLEET_MAX_ATTEMPTS", "1".to_owned()),
                    ("FLEET_HEALTH_LISTEN", format!("127.0.0.1:{port}")),
                ],
            )
        })
        .collect();
    eventually("the workers apply events", Duration::from_secs(30), || async { ctx.applied_events().await > 0 }).await;

    // Mid-run: the master of the first shard's slot dies. Webhooks keep
    // coming, each retried until the cluster takes it, as Thinkific retries.
    cluster.nodes_mut()[victim].stop();
    let producer = tokio::spawn({
        let (mut redis, keys) = (ctx.redis.clone(), ctx.keys.clone());
        async move {
            let mut failed = 0;
            for n in before..total {
                failed += enqueue_retrying(&mut redis, &keys, n).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failed
        }
    });
    eventually("every worker reports the outage", Duration::from_secs(30), || async {
        for port in &health_ports {
            if !matches!(readiness(*port).await, Some((503, body)) if body["dependencies"]["redis"]["state"] == "down")
            {
                return false;
            }
        }
        true
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Postgres is up: what is not applied by now is only in the dead
    // master's append-only file (its nodes run with `appendfsync always`).
    let stranded = before as i64 - ctx.applied_events().await;
    assert!(stranded > 0, "the workers had applied the whole backlog: nothing depended on the dead master's data");
    for worker in &mut workers {
        assert!(worker.try_wait().expect("try_wait").is_none(), "a worker exited during the outage");
    }
    cluster.nodes_mut()[victim].restart().await.expect("restart the master");

    let failed = tokio::time::timeout(Duration::from_secs(120), producer)
        .await
        .expect("every webhook is taken within 120 s of the restart")
        .expect("the producer");
    assert!(failed > 0, "no webhook met the outage");
    ctx.wait_until_drained().await;
    eventually("every worker is ready again", Duration::from_secs(30), || async {
        for port in &health_ports {
            if !matches!(readiness(*port).await, Some((200, _))) {
                return false;
            }
        }
        true
    })
    .await;
    for worker in &mut workers {
        assert!(worker.try_wait().expect("try_wait").is_none(), "a worker exited after the outage");
    }
    for mut worker in workers {
        signal(&worker, "TERM");
        let (status, _) = wait_exit(&mut worker).await;
        assert!(status.success(), "{status}");
    }
    assert_in_order_state(&ctx, total).await;
}

/// The stream shards of [`a_master_restarted_mid_run_loses_nothing_on_a_cluster`].
const SHARDS: u32 = 3;

/// Enqueues [`progress_event`] `n` in its shard as the intake would, trying again every
/// 100 ms (for up to 90 s) while the cluster refuses it; answers how many
/// tries failed. A try that failed after its script ran leaves the event in
/// the dedup window: a later try finds it a duplicate, which means it is in.
async fn enqueue_retrying(redis: &mut RedisConnection, keys: &Keys, n: usize) -> u32 {
    let body = progress_event(n);
    let envelope = fleet::jobs::Envelope::parse(body.as_bytes()).expect("an event");
    let topic = envelope.topic();
    let entry = fleet::redis::entry::NewEntry {
        body: body.as_bytes(),
        topic: &topic,
        tenant: envelope.tenant_id.as_ref().expect("a tenant").as_str(),
        event_id: &envelope.id,
        received_at: chrono::Utc::now(),
        headers: None,
    };
    let dedup = DedupWindow::new(Duration::from_secs(3600), 1000);
    let count = fleet::redis::shards::ShardCount::new(SHARDS).expect("a count");
    let shard = keys.shard(count.shard_of(entry.tenant, envelope.entity.as_deref().unwrap_or(&envelope.id)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut failed = 0;
    loop {
        match stream::enqueue(redis, &shard, &entry, &dedup).await {
            Ok(Enqueued::Accepted(_)) => return failed,
            Ok(Enqueued::Duplicate) => {
                assert!(failed > 0, "event {n} is a duplicate");
                return failed;
            }
            Err(err) => {
                assert!(tokio::time::Instant::now() < deadline, "event {n} still refused after 90 s: {err}");
                failed += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The index of the master serving `key`'s slot: the one node that answers
/// for the key instead of redirecting with `MOVED`.
async fn master_of(cluster: &LocalRedisCluster, key: &str) -> usize {
    let mut masters = Vec::new();
    for (index, url) in cluster.urls().iter().enumerate() {
        let client = redis::Client::open(url.as_str()).expect("a node's URL");
        let mut node = client.get_multiplexed_async_connection().await.expect("connect to a node");
        let answer: Result<String, redis::RedisError> = redis::cmd("TYPE").arg(key).query_async(&mut node).await;
        match answer {
            Ok(_) => masters.push(index),
            Err(err) => assert_eq!(err.code(), Some("MOVED"), "{err}"),
        }
    }
    assert_eq!(masters.len(), 1, "one master serves {key}");
    masters[0]
}
