//! Dead-letter gauges, for the alert on dead letters left unattended:
//! `fleet_dead_letter_oldest_age_seconds` (0 when there are none) and
//! `fleet_dead_letters`.
//!
//! A dead letter's stream id starts with the unix milliseconds at which it
//! was added, so the oldest one's age is now minus the first id's time: one
//! `XRANGE … - + COUNT 1` and one `XLEN` per stream shard, in one round trip
//! each, whatever the streams' length.

use std::fmt;
use std::time::Duration;

use chrono::Utc;
use redis::streams::StreamRangeReply;
use redis::RedisError;

use crate::redis::keys::Keys;
use crate::redis::shards::{self, ShardCount};
use crate::redis::RedisConnection;

/// The dead letters, measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetters {
    pub count: u64,
    /// How long ago the oldest was added; `None` when there are none.
    pub oldest_age: Option<Duration>,
}

impl fmt::Display for DeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.oldest_age {
            Some(age) => write!(f, "{} dead letter(s), the oldest {} s old", self.count, age.as_secs()),
            None => f.write_str("no dead letters"),
        }
    }
}

/// Measures the dead letters and sets the gauges.
pub async fn run(redis: &mut RedisConnection, keys: &Keys) -> Result<DeadLetters, RedisError> {
    let mut count = 0;
    let mut added_ms: Option<i64> = None;
    for shard in shards::fleet_count(redis, keys, ShardCount::ONE).await?.shards(keys) {
        let stream = shard.dead_letters();
        let (shard_count, oldest): (u64, StreamRangeReply) = redis::pipe()
            .cmd("XLEN")
            .arg(&stream)
            .cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(redis)
            .await?;
        count += shard_count;
        let added = oldest.ids.first().and_then(|entry| entry.id.split('-').next()?.parse::<i64>().ok());
        added_ms = added_ms.into_iter().chain(added).min();
    }
    let oldest_age =
        added_ms.map(|added| Duration::from_millis(Utc::now().timestamp_millis().saturating_sub(added).max(0) as u64));
    metrics::gauge!("fleet_dead_letter_oldest_age_seconds").set(oldest_age.map_or(0.0, |age| age.as_secs_f64()));
    metrics::gauge!("fleet_dead_letters").set(count as f64);
    Ok(DeadLetters { count, oldest_age })
}
