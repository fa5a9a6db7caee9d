//! A shard of the events stream and its consumer group (every function
//! here works on one shard; `super::shards` says which there are).
//!
//! The recipe:
//! - Intake appends with one Lua script that looks for the event's
//!   fingerprint in the deduplication window's sets (`super::dedup`) and
//!   appends and records it only when it is not there, so the duplicate
//!   check and the append are one atomic step.
//! - Workers read through one consumer group (`XREADGROUP`), apply a batch,
//!   then `XACK` it; an entry is acknowledged only after its effect is
//!   committed in Postgres, so a crash at any point leaves it pending.
//! - The stream is trimmed with `XTRIM MINID` at an id below which every
//!   entry is acknowledged by every group: a trim never drops unfinished work.

use std::collections::HashMap;
use std::time::Duration;

use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, RedisError, Value};

use super::dedup::{DedupWindow, Fingerprint};
use super::entry::{Entry, NewEntry};
use super::keys::{Keys, ShardKeys, GROUP};
use super::scripts;
use super::RedisConnection;

/// Creates the shard's consumer group if it is missing, reading from the
/// start of its stream so that entries appended before any worker ran are
/// consumed.
pub async fn ensure_group(conn: &mut RedisConnection, shard: &ShardKeys) -> Result<(), RedisError> {
    let created: Result<(), RedisError> = conn.xgroup_create_mkstream(shard.events(), GROUP, "0").await;
    match created {
        Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// What the intake's append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Appended as this new stream entry.
    Accepted(String),
    /// Already accepted within the window; nothing appended. Which entry it
    /// became is not kept (the window holds 64-bit fingerprints only).
    Duplicate,
}

/// Appends `entry` unless its event (tenant and event id) was accepted
/// within `dedup`'s window, counted from `entry.received_at`.
pub async fn enqueue(
    conn: &mut RedisConnection,
    shard: &ShardKeys,
    entry: &NewEntry<'_>,
    dedup: &DedupWindow,
) -> Result<Enqueued, RedisError> {
    let fingerprint = Fingerprint::of(entry.tenant, entry.event_id);
    let partition = dedup.partition_of(&fingerprint);
    let current = dedup.bucket_of(entry.received_at);
    let mut invocation = scripts::ENQUEUE.prepare_invoke();
    invocation.key(shard.events()).key(shard.seen(current, partition));
    for bucket in dedup.earlier_buckets(current) {
        invocation.key(shard.seen(bucket, partition));
    }
    invocation.arg(fingerprint.member()).arg(dedup.set_lifetime_secs());
    entry.with_pairs(|pairs| {
        for (name, value) in pairs {
            invocation.arg(name).arg(value);
        }
    });
    let appended: Option<String> = invocation.invoke_async(conn).await?;
    Ok(appended.map_or(Enqueued::Duplicate, Enqueued::Accepted))
}

/// Where a group read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadFrom {
    /// Entries already delivered to this consumer and not yet acknowledged,
    /// with ids after this one (`0-0` for all of them).
    OwnPendingAfter(String),
    /// Entries never delivered to any consumer of the group.
    New,
}

impl ReadFrom {
    /// A pass over all of this consumer's pending entries.
    pub(crate) fn own_pending() -> Self {
        Self::OwnPendingAfter("0-0".to_owned())
    }
}

/// Reads up to `count` entries for `consumer`, waiting up to `block` for new
/// ones. Use a connection of its own whose response timeout exceeds `block`.
pub(crate) async fn read_group(
    conn: &mut RedisConnection,
    shard: &ShardKeys,
    consumer: &str,
    from: &ReadFrom,
    count: usize,
    block: Duration,
) -> Result<Vec<Entry>, RedisError> {
    let mut options = StreamReadOptions::default().group(GROUP, consumer).count(count);
    let id = match from {
        ReadFrom::OwnPendingAfter(id) => id.as_str(),
        ReadFrom::New => {
            options = options.block(block.as_millis() as usize);
            ">"
        }
    };
    let reply: Option<StreamReadReply> = conn.xread_options(&[shard.events()], &[id], &options).await?;
    let Some(reply) = reply else {
        return Ok(Vec::new());
    };
    Ok(reply.keys.into_iter().flat_map(|key| key.ids).map(Entry::from_stream_id).collect())
}

/// What one `XAUTOCLAIM` took over.
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    pub entries: Vec<Entry>,
    /// Pending entries that no longer exist in the stream; Redis dropped
    /// them from the pending list.
    pub deleted: Vec<String>,
    /// Where the next scan continues; `0-0` when it went round.
    pub cursor: String,
}

/// Takes over up to `count` entries idle for at least `min_idle` on any
/// consumer, scanning from `cursor`. Each claim adds one to the entry's
/// delivery count.
pub(crate) async fn autoclaim(
    conn: &mut RedisConnection,
    shard: &ShardKeys,
    consumer: &str,
    min_idle: Duration,
    cursor: &str,
    count: usize,
) -> Result<Claimed, RedisError> {
    let options = redis::streams::StreamAutoClaimOptions::default().count(count);
    let reply: redis::streams::StreamAutoClaimReply =
        conn.xautoclaim_options(shard.events(), GROUP, consumer, min_idle.as_millis() as u64, cursor, options).await?;
    Ok(Claimed {
        entries: reply.claimed.into_iter().map(Entry::from_stream_id).collect(),
        deleted: reply.deleted_ids,
        cursor: reply.next_stream_id,
    })
}

/// How many times each of `ids` (pending on `consumer`) was delivered.
pub(crate) async fn delivery_counts(
    conn: &mut RedisConnection,
    shard: &ShardKeys,
    consumer: &str,
    ids: &[&str],
) -> Result<HashMap<String, u32>, RedisError> {
    let first = ids.iter().min_by(|a, b| compare_ids(a, b));
    let last = ids.iter().max_by(|a, b| compare_ids(a, b));
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(HashMap::new());
    };
    let reply: redis::streams::StreamPendingCountReply =
        conn.xpending_consumer_count(shard.events(), GROUP, *first, *last, ids.len() * 4, consumer).await?;
    Ok(reply.ids.into_iter().map(|pending| (pending.id, pending.times_delivered as u32)).collect())
}

/// Orders stream ids numerically (`ms-seq`).
pub fn compare_ids(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    parse(a).cmp(&parse(b))
}

/// Resets the idle time of entries this consumer holds, without counting a
/// delivery, so a long wait for Postgres is not mistaken for a crash.
pub(crate) async fn touch(
    conn: &mut RedisConnection,
    shard: &ShardKeys,
    consumer: &str,
    ids: &[&str],
) -> Result<(), RedisError> {
    if ids.is_empty() {
        return Ok(());
    }
    let options = redis::streams::StreamClaimOptions::default().with_justid();
    let _: Value = conn.xclaim_options(shard.events(), GROUP, consumer, 0, ids, options).await?;
    Ok(())
}

/// Removes consumers other than `me` that hold no pending entry, have not
/// read for `idle`, and whose name no worker holds; returns their names. A
/// live worker reads at least every `FLEET_BLOCK_MS`, so it is never idle
/// that long.
pub(crate) async fn remove_idle_consumers(
    conn: &mut RedisConnection,
    keys: &Keys,
    shard: &ShardKeys,
    me: &str,
    idle: Duration,
) -> Result<Vec<String>, RedisError> {
    let reply: redis::streams::StreamInfoConsumersReply = conn.xinfo_consumers(shard.events(), GROUP).await?;
    let mut removed = Vec::new();
    for consumer in reply.consumers {
        let stale = consumer.name != me && consumer.pending == 0 && consumer.idle as u128 > idle.as_millis();
        if stale && !conn.exists::<_, bool>(keys.consumer_lease(&consumer.name)).await? {
            let _: i64 = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(shard.events())
                .arg(GROUP)
                .arg(&consumer.name)
                .query_async(conn)
                .await?;
            removed.push(consumer.name);
        }
    }
    Ok(removed)
}

/// Acknowledges entries whose effect is committed.
pub(crate) async fn ack(conn: &mut RedisConnection, shard: &ShardKeys, ids: &[&str]) -> Result<(), RedisError> {
    if ids.is_empty() {
        return Ok(());
    }
    let _: i64 = conn.xack(shard.events(), GROUP, ids).await?;
    Ok(())
}

/// Trims acknowledged entries beyond `keep`; returns how many went.
pub async fn trim(conn: &mut RedisConnection, shard: &ShardKeys, keep: u64) -> Result<u64, RedisError> {
    scripts::TRIM.key(shard.events()).arg(keep).invoke_async(conn).await
}
