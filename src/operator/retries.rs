//! `fleet retries`: the events waiting for another attempt, soonest first:
//! when each is due, and after which error, over every stream shard.
//!
//! [`scheduled`] reads them (the operator console's retries page shows the
//! same list); [`list`] prints it.

use chrono::{DateTime, Utc};
use redis::RedisError;
use serde::Serialize;

use super::failed::{InRetries, RetryView};
use super::output::{count, summary, Output};
use crate::redis::entry::Entry;
use crate::redis::keys::Keys;
use crate::redis::shards::{self, ShardCount};
use crate::redis::RedisConnection;

/// The retries due soonest, and how many are scheduled in all.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduledRetries {
    pub total: u64,
    pub retries: Vec<RetryView>,
}

/// A retry as the worker scheduled it: its entry's member (see
/// `crate::redis::failures::schedule_retries`), scored by its due time.
fn view(shard: u32, member: &str, due_ms: f64) -> RetryView {
    let due_at = DateTime::<Utc>::from_timestamp_millis(due_ms as i64).map(|due| due.to_rfc3339()).unwrap_or_default();
    RetryView::read(InRetries { due_at }, shard, &Entry::from_retry_member(member), false)
}

/// The `limit` retries due soonest, of every shard.
pub async fn scheduled(redis: &mut RedisConnection, keys: &Keys, limit: usize) -> Result<ScheduledRetries, RedisError> {
    let stop = limit.saturating_sub(1) as isize;
    let mut total = 0;
    let mut soonest: Vec<(f64, RetryView)> = Vec::new();
    for shard in shards::fleet_count(redis, keys, ShardCount::ONE).await?.shards(keys) {
        let (count, members): (u64, Vec<(String, f64)>) =
            redis::pipe().zcard(shard.retries()).zrange_withscores(shard.retries(), 0, stop).query_async(redis).await?;
        total += count;
        if limit > 0 {
            soonest.extend(members.iter().map(|(member, due)| (*due, view(shard.index(), member, *due))));
        }
    }
    soonest.sort_by(|a, b| a.0.total_cmp(&b.0));
    let retries = soonest.into_iter().take(limit).map(|(_, retry)| retry).collect();
    Ok(ScheduledRetries { total, retries })
}

/// `fleet retries`: the `limit` retries due soonest, as a table or JSON.
pub async fn list(redis: &mut RedisConnection, keys: &Keys, limit: u32, output: Output) -> anyhow::Result<()> {
    let scheduled = scheduled(redis, keys, limit as usize).await?;
    output.data(&scheduled, |out| {
        writeln!(out, "{:<26} {}", "DUE", RetryView::column_titles())?;
        for retry in &scheduled.retries {
            writeln!(out, "{:<26} {}", retry.at.due_at, retry.columns())?;
        }
        Ok(())
    })?;
    if !output.is_json() {
        let scheduled_in_all = count(scheduled.total, "retry", "retries");
        summary(&format!("{} shown, {scheduled_in_all} scheduled in all", scheduled.retries.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_reads_back_from_its_member() {
        let member = serde_json::json!(["topic", "user.signup", "event_id", "42", "attempts", "3", "error", "boom"]);
        let retry = view(2, &member.to_string(), 1_700_000_000_000.0);
        assert_eq!((retry.topic.as_str(), retry.event_id.as_str(), retry.attempts), ("user.signup", "42", 3));
        assert_eq!(retry.error, "boom");
        assert!(retry.at.due_at.starts_with("2023-11-14T22:13:20"), "{}", retry.at.due_at);
        assert_eq!(retry.shard, 2);
        assert_eq!(view(0, "not json", 0.0).attempts, 0);
    }
}
