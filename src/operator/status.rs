//! `fleet status`: the stream backlog, consumers, retries and dead letters.

use crate::redis::RedisConnection;
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::Serialize;
use serde_json::json;

use super::output::Output;
use crate::redis::keys::{Keys, GROUP};

#[derive(Debug, Serialize)]
struct ConsumerView {
    name: String,
    pending: u64,
    idle_ms: u64,
}

/// The fleet as Redis sees it.
pub async fn show(redis: &mut RedisConnection, keys: &Keys, output: Output) -> anyhow::Result<()> {
    let length: u64 = redis.xlen(keys.events()).await?;
    let dead_letters: u64 = redis.xlen(keys.dead_letters()).await?;
    let retries: u64 = redis.zcard(keys.retries()).await?;
    let next_retry: Vec<(String, f64)> = redis.zrange_withscores(keys.retries(), 0, 0).await?;
    let next_retry = next_retry
        .first()
        .and_then(|(_, score)| DateTime::<Utc>::from_timestamp_millis(*score as i64))
        .map(|due| due.to_rfc3339());
    let groups: redis::streams::StreamInfoGroupsReply = match redis.xinfo_groups(keys.events()).await {
        Ok(groups) => groups,
        // No stream yet: nothing was ever received.
        Err(err) if err.code() == Some("ERR") => redis::streams::StreamInfoGroupsReply::default(),
        Err(err) => return Err(err.into()),
    };
    let group = groups.groups.into_iter().find(|group| group.name == GROUP);
    let mut consumers = Vec::new();
    if group.is_some() {
        let reply: redis::streams::StreamInfoConsumersReply = redis.xinfo_consumers(keys.events(), GROUP).await?;
        consumers = reply
            .consumers
            .into_iter()
            .map(|consumer| ConsumerView {
                name: consumer.name,
                pending: consumer.pending as u64,
                idle_ms: consumer.idle as u64,
            })
            .collect();
    }
    let (pending, lag) =
        group.as_ref().map_or((0, None), |group| (group.pending as u64, group.lag.map(|lag| lag as u64)));
    let data = json!({
        "stream": keys.events(), "length": length, "group": GROUP,
        "undelivered": lag, "pending": pending, "consumers": consumers,
        "retries_scheduled": retries, "next_retry_at": next_retry, "dead_letters": dead_letters,
    });
    output.data(&data, |out| {
        writeln!(out, "stream       {} ({length} entries)", keys.events())?;
        match lag {
            Some(lag) => writeln!(out, "undelivered  {lag}")?,
            None => writeln!(out, "undelivered  unknown")?,
        }
        writeln!(out, "pending      {pending} (delivered, not yet acknowledged)")?;
        writeln!(
            out,
            "retries      {retries} scheduled{}",
            next_retry.map(|at| format!(", next at {at}")).unwrap_or_default()
        )?;
        writeln!(out, "dead letters {dead_letters}{}", if dead_letters > 0 { " (see `fleet dlq list`)" } else { "" })?;
        writeln!(out, "consumers    {}", consumers.len())?;
        for consumer in &consumers {
            writeln!(out, "  {:<40} pending {:>6}  idle {:>8} ms", consumer.name, consumer.pending, consumer.idle_ms)?;
        }
        Ok(())
    })
}
