//! Dashboard rewarm: keep the values that were read recently fresh, so a
//! quiet school (no events, so no prewarm after a batch) keeps getting HITs.
//!
//! The read API records every read (`crate::read_model::reads`): one
//! member per value in the sorted set `<prefix>cache-reads`, scored with
//! the time of its last read. Each run forgets the reads older than the window, takes the
//! most recently read values (at most `max_items`), and recomputes those
//! whose cached copy is missing or stops being fresh within the horizon
//! (the next run, with room to spare), writing them with the usual
//! versioned [`cache::put`]. A value about a school, course or page that no
//! longer exists is forgotten until it is read again.

use std::fmt;
use std::time::Duration;

use chrono::Utc;
use redis::RedisError;
use sqlx::PgPool;

use super::JobError;
use crate::read_model::cached::Cached;
use crate::read_model::reads::parse_member;
use crate::redis::cache::{self, Ttls};
use crate::redis::keys::Keys;
use crate::redis::RedisConnection;

/// Which values to rewarm.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Values read within this window are kept warm.
    pub window: Duration,
    /// Most values looked at per run, the most recently read first.
    pub max_items: usize,
    /// A value whose freshness ends within this is recomputed.
    pub horizon: Duration,
    /// The TTLs values are written with.
    pub ttls: Ttls,
}

/// What one rewarm run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewarmed {
    /// Reads older than the window, forgotten.
    pub forgotten: u64,
    /// Recently read values looked at.
    pub considered: usize,
    /// Values missing or about to go stale, recomputed.
    pub recomputed: usize,
    /// Values written (a newer version already cached is left alone).
    pub written: usize,
    /// Values about things that no longer exist, forgotten.
    pub gone: usize,
}

impl fmt::Display for Rewarmed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} recently read value(s) looked at, {} recomputed, {} written, {} gone, {} old read(s) forgotten",
            self.considered, self.recomputed, self.written, self.gone, self.forgotten
        )
    }
}

/// Rewarms the recently read values that need it; see the module.
pub async fn run(db: &PgPool, redis: &mut RedisConnection, keys: &Keys, policy: &Policy) -> Result<Rewarmed, JobError> {
    let reads = keys.cache_reads();
    let now = Utc::now().timestamp_millis();
    let since = now - policy.window.as_millis() as i64;
    let forgotten: u64 =
        redis::cmd("ZREMRANGEBYSCORE").arg(&reads).arg("-inf").arg(format!("({since}")).query_async(redis).await?;
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&reads)
        .arg("+inf")
        .arg(since)
        .arg("BYSCORE")
        .arg("REV")
        .arg("LIMIT")
        .arg(0)
        .arg(policy.max_items)
        .query_async(redis)
        .await?;
    let mut report = Rewarmed { forgotten, considered: members.len(), ..Rewarmed::default() };
    let mut unknown = Vec::new();
    let mut items = Vec::new();
    for member in members {
        match parse_member(&member) {
            Some(item) => items.push((member, item)),
            None => unknown.push(member),
        }
    }
    if items.is_empty() {
        forget(redis, &reads, &unknown).await?;
        return Ok(report);
    }

    let item_keys: Vec<String> = items.iter().map(|(_, item)| item.key(keys)).collect();
    let mut fresh_until: Vec<Option<i64>> = vec![None; item_keys.len()];
    // One round trip on a single server; one per school on a cluster.
    for group in redis.same_slot_groups(item_keys.iter().map(String::as_str)) {
        let mut freshness = redis::pipe();
        for &position in &group {
            freshness.cmd("HGET").arg(&item_keys[position]).arg("fresh_until");
        }
        let answers: Vec<Option<i64>> = freshness.query_async(redis).await?;
        for (position, answer) in group.into_iter().zip(answers) {
            fresh_until[position] = answer;
        }
    }
    let due_before = now + policy.horizon.as_millis() as i64;
    let (due_members, due): (Vec<String>, Vec<Cached>) = items
        .into_iter()
        .zip(fresh_until)
        .filter(|(_, fresh_until)| fresh_until.is_none_or(|until| until < due_before))
        .map(|(item, _)| item)
        .unzip();
    report.recomputed = due.len();

    let computed = Cached::compute_each(db, keys, &policy.ttls, &due).await?;
    let mut entries = Vec::with_capacity(computed.len());
    for (member, outcome) in due_members.into_iter().zip(computed) {
        match outcome {
            Ok(entry) => entries.push(entry),
            Err(_missing) => {
                report.gone += 1;
                unknown.push(member);
            }
        }
    }
    report.written = cache::put(redis, &entries).await?;
    forget(redis, &reads, &unknown).await?;
    Ok(report)
}

async fn forget(redis: &mut RedisConnection, reads: &str, members: &[String]) -> Result<(), RedisError> {
    if members.is_empty() {
        return Ok(());
    }
    redis::cmd("ZREM").arg(reads).arg(members).query_async(redis).await
}
