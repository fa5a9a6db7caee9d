//! Events the worker could not apply: retries scheduled for later, and the
//! dead-letter stream an operator inspects, replays and purges.
//!
//! A failed event leaves the events stream (acknowledged) in the same
//! MULTI/EXEC that records it in the retry set or the dead letters, so it is
//! always in exactly one place. A retry carries the event's fields and its
//! failure history; when due it is appended to the events stream again.
//! Each stream shard has its own retries and dead letters, under its hash
//! tag, so every move is one atomic step on one Redis Cluster slot; every
//! function here works on one shard.

use chrono::{DateTime, Utc};
use redis::{AsyncCommands, RedisError};

use super::entry::{self, field, Entry, FailureRecord, EVENT_FIELDS};
use super::keys::{ShardKeys, GROUP};
use super::scripts;
use super::RedisConnection;

/// Why an event was given up on; recorded with each dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Not an applicable event at all: it can never succeed, so no retries.
    Malformed,
    /// Postgres refused it on every attempt.
    Event,
    /// The workers holding it kept dying before finishing it.
    Crashed,
    /// Its stream entry vanished before it was applied.
    Deleted,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Event => "event",
            Self::Crashed => "crashed",
            Self::Deleted => "deleted",
        }
    }
}

/// An entry given up on (for now or for good), and why.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    pub entry: &'a Entry,
    pub kind: FailureKind,
    pub error: String,
    /// Attempts made, this one included.
    pub attempts: u32,
}

impl Failure<'_> {
    /// The fields a dead letter or a scheduled retry carries: the event,
    /// where it came from, and its failure history.
    fn fields(&self, now: &str) -> Vec<(&'static str, Vec<u8>)> {
        let entry = self.entry;
        let record = FailureRecord {
            source_entry_id: Some(entry.id.clone()),
            attempts: self.attempts,
            error_kind: Some(self.kind.as_str().to_owned()),
            error: Some(self.error.clone()),
            first_failed_at: Some(entry.failure.first_failed_at.clone().unwrap_or_else(|| now.to_owned())),
            last_failed_at: Some(now.to_owned()),
        };
        let mut fields: Vec<(&'static str, Vec<u8>)> =
            entry.event.pairs().into_iter().map(|(name, value)| (name, value.to_vec())).collect();
        fields.extend(record.pairs());
        fields
    }
}

fn now_text() -> String {
    entry::timestamp(Utc::now())
}

/// Moves entries to the dead-letter stream and acknowledges them, in one
/// MULTI/EXEC so an entry is never both lost and unacknowledged.
pub async fn dead_letter(
    conn: &mut RedisConnection,
    shard: &ShardKeys,
    failures: &[Failure<'_>],
) -> Result<(), RedisError> {
    if failures.is_empty() {
        return Ok(());
    }
    let now = now_text();
    let mut pipe = redis::pipe();
    pipe.atomic();
    for failure in failures {
        pipe.xadd(shard.dead_letters(), "*", &failure.fields(&now)).ignore();
        pipe.xack(shard.events(), GROUP, &[&failure.entry.id]).ignore();
    }
    pipe.query_async::<()>(conn).await
}

/// Schedules each failure for another attempt at its due time and
/// acknowledges its entry, in one MULTI/EXEC: the event is always either
/// pending in the stream or waiting in the retry set.
pub async fn schedule_retries(
    conn: &mut RedisConnection,
    shard: &ShardKeys,
    retries: &[(Failure<'_>, DateTime<Utc>)],
) -> Result<(), RedisError> {
    if retries.is_empty() {
        return Ok(());
    }
    let now = now_text();
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (failure, due) in retries {
        let member = Entry::retry_member(&failure.fields(&now));
        pipe.zadd(shard.retries(), member, due.timestamp_millis()).ignore();
        pipe.xack(shard.events(), GROUP, &[&failure.entry.id]).ignore();
    }
    pipe.query_async::<()>(conn).await
}

/// Moves retries that are due back onto the events stream, atomically;
/// returns how many moved.
pub(crate) async fn promote_due_retries(
    conn: &mut RedisConnection,
    shard: &ShardKeys,
    limit: usize,
) -> Result<u64, RedisError> {
    scripts::PROMOTE_RETRIES
        .key(shard.retries())
        .key(shard.events())
        .arg(Utc::now().timestamp_millis())
        .arg(limit)
        .invoke_async(conn)
        .await
}

/// Records entries that vanished from the stream while pending (XAUTOCLAIM
/// reports them and drops them from the pending list).
pub(crate) async fn dead_letter_deleted(
    conn: &mut RedisConnection,
    shard: &ShardKeys,
    ids: &[String],
) -> Result<(), RedisError> {
    if ids.is_empty() {
        return Ok(());
    }
    let now = now_text();
    let mut pipe = redis::pipe();
    pipe.atomic();
    for id in ids {
        let record = FailureRecord {
            source_entry_id: Some(id.clone()),
            attempts: 0,
            error_kind: Some(FailureKind::Deleted.as_str().to_owned()),
            error: Some("the stream entry was deleted while pending; its event is unknown".to_owned()),
            first_failed_at: Some(now.clone()),
            last_failed_at: Some(now.clone()),
        };
        pipe.xadd(shard.dead_letters(), "*", &record.pairs()).ignore();
    }
    pipe.query_async::<()>(conn).await
}

/// The outcome of replaying dead letters.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    /// (dead-letter id, new events-stream id)
    pub replayed: Vec<(String, String)>,
    /// Ids that are not dead letters (or carry no event to replay).
    pub missing: Vec<String>,
}

/// Puts dead letters back on the events stream with fresh attempts.
pub(crate) async fn replay_dead_letters(
    conn: &mut RedisConnection,
    shard: &ShardKeys,
    ids: &[String],
) -> Result<Replayed, RedisError> {
    if ids.is_empty() {
        return Ok(Replayed::default());
    }
    let (replayed, missing): (Vec<String>, Vec<String>) = scripts::REPLAY
        .key(shard.dead_letters())
        .key(shard.events())
        .arg(field::REPLAYED_FROM)
        .arg(EVENT_FIELDS.len())
        .arg(&EVENT_FIELDS[..])
        .arg(ids)
        .invoke_async(conn)
        .await?;
    Ok(Replayed {
        replayed: replayed.chunks(2).filter_map(|pair| Some((pair.first()?.clone(), pair.get(1)?.clone()))).collect(),
        missing,
    })
}

/// Reads up to `count` dead letters in stream order from `start` to `end`
/// (XRANGE bounds: an id, `(id` to exclude it, `-` or `+`).
pub(crate) async fn read_dead_letters(
    conn: &mut RedisConnection,
    shard: &ShardKeys,
    start: &str,
    end: &str,
    count: usize,
) -> Result<Vec<Entry>, RedisError> {
    let reply: redis::streams::StreamRangeReply = conn.xrange_count(shard.dead_letters(), start, end, count).await?;
    Ok(reply.ids.into_iter().map(Entry::from_stream_id).collect())
}

/// One dead letter, if it exists.
pub(crate) async fn dead_letter_by_id(
    conn: &mut RedisConnection,
    shard: &ShardKeys,
    id: &str,
) -> Result<Option<Entry>, RedisError> {
    let reply: redis::streams::StreamRangeReply = conn.xrange(shard.dead_letters(), id, id).await?;
    Ok(reply.ids.into_iter().map(Entry::from_stream_id).next())
}

/// Deletes dead letters; returns how many existed.
pub(crate) async fn purge_dead_letters(
    conn: &mut RedisConnection,
    shard: &ShardKeys,
    ids: &[String],
) -> Result<u64, RedisError> {
    if ids.is_empty() {
        return Ok(0);
    }
    conn.xdel(shard.dead_letters(), ids).await
}
