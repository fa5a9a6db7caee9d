//! The backlog gauges, sampled from Redis every few seconds by each
//! worker: how long each stream shard is, what its group has yet to deliver
//! or acknowledge and since when, and what waits in its retries and dead
//! letters; and the fleet's totals. Every worker samples the same keys, so
//! any one of them answers for the fleet; the cost is a handful of O(1)
//! commands per shard and interval.
//!
//! The same loop writes the worker's activity tally (events applied, their
//! freshness, the backlog it sampled) to the fleet's minute in Redis
//! (`crate::redis::activity`), for the operator console's charts.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use redis::streams::{StreamInfoGroupsReply, StreamPendingReply, StreamRangeReply};
use redis::RedisError;
use tokio_util::sync::CancellationToken;

use crate::redis::activity::Recorder;
use crate::redis::keys::{Keys, ShardKeys, GROUP};
use crate::redis::shards::{self, ShardCount};
use crate::redis::RedisConnection;
use crate::telemetry::metrics::{self, Backlog};

/// How often the gauges are sampled.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(3);

/// Samples until `stop`, writing `activity` out after each sample and once
/// more when stopped; a failed sample keeps the last values, a failed write
/// keeps the tally for the next.
pub async fn run(
    mut redis: RedisConnection,
    keys: Keys,
    configured: ShardCount,
    activity: Arc<Recorder>,
    stop: CancellationToken,
) {
    loop {
        match sample_fleet(&mut redis, &keys, configured).await {
            Ok((total, per_shard)) => {
                metrics::backlog(&total, &per_shard);
                activity.backlog(Utc::now(), total.lag.unwrap_or(0) + total.pending);
            }
            Err(err) => tracing::debug!(error = %err, "could not sample the backlog; will try again"),
        }
        if let Err(err) = activity.flush(&mut redis, &keys).await {
            tracing::debug!(error = %err, "could not record the activity; will try again");
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(SAMPLE_INTERVAL) => {}
        }
    }
    if let Err(err) = activity.flush(&mut redis, &keys).await {
        tracing::debug!(error = %err, "could not record the last activity at stop");
    }
}

/// The backlog of every shard of the fleet's count (at least
/// `configured`), and their total.
pub(crate) async fn sample_fleet(
    redis: &mut RedisConnection,
    keys: &Keys,
    configured: ShardCount,
) -> Result<(Backlog, Vec<(u32, Backlog)>), RedisError> {
    let count = shards::fleet_count(redis, keys, configured).await?;
    let mut total = Backlog { lag: Some(0), ..Backlog::default() };
    let mut per_shard = Vec::new();
    for shard in count.shards(keys) {
        let backlog = sample(redis, &shard).await?;
        total.add(&backlog);
        per_shard.push((shard.index(), backlog));
    }
    Ok((total, per_shard))
}

/// One shard's sample, in one round trip: XLEN, XINFO GROUPS (lag and
/// pending), XPENDING's summary (the oldest pending id), ZCARD of the
/// retries, XLEN and the first entry of the dead letters.
pub async fn sample(redis: &mut RedisConnection, shard: &ShardKeys) -> Result<Backlog, RedisError> {
    let mut pipe = redis::pipe();
    pipe.xlen(shard.events())
        .xinfo_groups(shard.events())
        .xpending(shard.events(), GROUP)
        .zcard(shard.retries())
        .xlen(shard.dead_letters())
        .xrange_count(shard.dead_letters(), "-", "+", 1);
    let (stream_length, groups, pending, retries, dead_letters, first_dead): (
        u64,
        StreamInfoGroupsReply,
        StreamPendingReply,
        u64,
        u64,
        StreamRangeReply,
    ) = pipe.query_async(redis).await?;
    let group = groups.groups.into_iter().find(|group| group.name == GROUP);
    let (lag, pending_count) =
        group.map_or((Some(0), 0), |group| (group.lag.map(|lag| lag as u64), group.pending as u64));
    let oldest_pending = match &pending {
        StreamPendingReply::Data(data) => Some(data.start_id.as_str()),
        _ => None,
    };
    Ok(Backlog {
        stream_length,
        lag,
        pending: pending_count,
        oldest_pending_age: oldest_pending.map(age_of).unwrap_or_default(),
        retries,
        dead_letters,
        oldest_dead_letter_age: first_dead.ids.first().map(|entry| age_of(&entry.id)).unwrap_or_default(),
    })
}

/// How long ago the entry with stream id `id` (`<ms>-<seq>`) was added.
fn age_of(id: &str) -> Duration {
    let added = id.split('-').next().and_then(|ms| ms.parse::<i64>().ok()).unwrap_or(i64::MAX);
    Duration::from_millis(Utc::now().timestamp_millis().saturating_sub(added).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_age_comes_from_its_id() {
        let ten_seconds_ago = Utc::now().timestamp_millis() - 10_000;
        let age = age_of(&format!("{ten_seconds_ago}-3"));
        assert!(age >= Duration::from_secs(10) && age < Duration::from_secs(12), "{age:?}");
        assert_eq!(age_of("garbage"), Duration::ZERO);
    }
}
