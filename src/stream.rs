//! The Redis side of the fleet: key names, the events stream, its consumer
//! group and the dead-letter stream.
//!
//! The recipe:
//! - Intake appends with one Lua script that checks the event id against a
//!   `seen` key and appends only when it is new, so the duplicate check and
//!   the append are one atomic step.
//! - Workers read through one consumer group (`XREADGROUP`), apply a batch,
//!   then `XACK` it; an entry is acknowledged only after its effect is
//!   committed in Postgres, so a crash at any point leaves it pending.
//! - The stream is trimmed with `XTRIM MINID` at an id below which every
//!   entry is acknowledged by every group: a trim never drops unfinished work.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, RedisError, Script, Value};

use crate::config::KeyPrefix;

/// The name of the consumer group every worker joins.
pub const GROUP: &str = "fleet-workers";

/// The names of the keys the fleet owns, all under its prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &KeyPrefix) -> Self {
        Self { prefix: prefix.as_str().to_owned() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The stream of accepted webhooks.
    pub fn events(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// The stream of events that could not be applied.
    pub fn dead_letters(&self) -> String {
        format!("{}dead-letters", self.prefix)
    }

    /// Failed events waiting for their retry, scored by due time (ms).
    pub fn retries(&self) -> String {
        format!("{}retries", self.prefix)
    }

    /// The lease that keeps a consumer name to one live worker.
    pub fn consumer_lease(&self, consumer: &str) -> String {
        format!("{}consumer:{consumer}", self.prefix)
    }

    /// Remembers that an event id was accepted, and as which stream entry.
    pub fn seen(&self, tenant_id: &str, event_id: &str) -> String {
        format!("{}seen:{tenant_id}:{event_id}", self.prefix)
    }
}

/// Opens a reconnecting Redis connection.
///
/// Commands fail after `response_timeout` instead of hanging, and a broken
/// connection is re-established on the next command.
pub async fn connect(url: &str, response_timeout: Duration) -> Result<ConnectionManager, RedisError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_with_config(client, config).await
}

/// Creates the consumer group if it is missing, reading from the start of
/// the stream so that entries appended before any worker ran are consumed.
pub async fn ensure_group(conn: &mut ConnectionManager, keys: &Keys) -> Result<(), RedisError> {
    let created: Result<(), RedisError> = conn.xgroup_create_mkstream(keys.events(), GROUP, "0").await;
    match created {
        Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// An accepted webhook, as the intake appends it.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub body: &'a [u8],
    pub topic: &'a str,
    pub tenant_id: &'a str,
    pub event_id: &'a str,
    pub received_at: DateTime<Utc>,
}

/// What the intake's append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Appended as this new stream entry.
    Accepted(String),
    /// Already accepted within the window, as this entry; nothing appended.
    Duplicate(String),
}

// KEYS[1]: the seen key; KEYS[2]: the events stream.
// ARGV[1]: dedup window in seconds; ARGV[2..]: the entry's field/value pairs.
const ENQUEUE_SCRIPT: &str = r"
local existing = redis.call('GET', KEYS[1])
if existing then
  return {0, existing}
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
return {1, id}
";

/// Appends `entry` unless its event id was accepted within `window`.
pub async fn enqueue(
    conn: &mut ConnectionManager,
    keys: &Keys,
    entry: &NewEntry<'_>,
    window: Duration,
) -> Result<Enqueued, RedisError> {
    let (appended, id): (i64, String) = Script::new(ENQUEUE_SCRIPT)
        .key(keys.seen(entry.tenant_id, entry.event_id))
        .key(keys.events())
        .arg(window.as_secs().max(1))
        .arg("body")
        .arg(entry.body)
        .arg("topic")
        .arg(entry.topic)
        .arg("tenant")
        .arg(entry.tenant_id)
        .arg("event_id")
        .arg(entry.event_id)
        .arg("received_at")
        .arg(entry.received_at.to_rfc3339_opts(SecondsFormat::Millis, true))
        .invoke_async(conn)
        .await?;
    Ok(if appended == 1 { Enqueued::Accepted(id) } else { Enqueued::Duplicate(id) })
}

/// One stream entry as a worker reads it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub fields: HashMap<String, Vec<u8>>,
}

impl Entry {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields.get(name).map(Vec::as_slice)
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.field(name).and_then(|bytes| std::str::from_utf8(bytes).ok())
    }

    /// Failed attempts recorded before this entry was (re)appended.
    pub fn attempts(&self) -> u32 {
        self.text("attempts").and_then(|text| text.parse().ok()).unwrap_or(0)
    }

    fn from_stream_id(stream_id: redis::streams::StreamId) -> Self {
        Self {
            id: stream_id.id,
            fields: stream_id
                .map
                .into_iter()
                .filter_map(|(name, value)| match value {
                    Value::BulkString(bytes) => Some((name, bytes)),
                    Value::SimpleString(text) => Some((name, text.into_bytes())),
                    _ => None,
                })
                .collect(),
        }
    }
}

/// The fields an entry carries from one life to the next: the event itself.
const EVENT_FIELDS: [&str; 5] = ["body", "topic", "tenant", "event_id", "received_at"];

/// Where a group read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    /// Entries already delivered to this consumer and not yet acknowledged,
    /// with ids after this one (`0-0` for all of them).
    OwnPendingAfter(String),
    /// Entries never delivered to any consumer of the group.
    New,
}

impl ReadFrom {
    /// A pass over all of this consumer's pending entries.
    pub fn own_pending() -> Self {
        Self::OwnPendingAfter("0-0".to_owned())
    }
}

/// Reads up to `count` entries for `consumer`, waiting up to `block` for new
/// ones. Use a connection of its own whose response timeout exceeds `block`.
pub async fn read_group(
    conn: &mut ConnectionManager,
    keys: &Keys,
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
    let reply: Option<StreamReadReply> = conn.xread_options(&[keys.events()], &[id], &options).await?;
    let Some(reply) = reply else {
        return Ok(Vec::new());
    };
    Ok(reply.keys.into_iter().flat_map(|key| key.ids).map(Entry::from_stream_id).collect())
}

/// What one `XAUTOCLAIM` took over.
#[derive(Debug, Default)]
pub struct Claimed {
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
pub async fn autoclaim(
    conn: &mut ConnectionManager,
    keys: &Keys,
    consumer: &str,
    min_idle: Duration,
    cursor: &str,
    count: usize,
) -> Result<Claimed, RedisError> {
    let options = redis::streams::StreamAutoClaimOptions::default().count(count);
    let reply: redis::streams::StreamAutoClaimReply =
        conn.xautoclaim_options(keys.events(), GROUP, consumer, min_idle.as_millis() as u64, cursor, options).await?;
    Ok(Claimed {
        entries: reply.claimed.into_iter().map(Entry::from_stream_id).collect(),
        deleted: reply.deleted_ids,
        cursor: reply.next_stream_id,
    })
}

/// How many times each of `ids` (pending on `consumer`) was delivered.
pub async fn delivery_counts(
    conn: &mut ConnectionManager,
    keys: &Keys,
    consumer: &str,
    ids: &[&str],
) -> Result<HashMap<String, u32>, RedisError> {
    let first = ids.iter().min_by(|a, b| compare_ids(a, b));
    let last = ids.iter().max_by(|a, b| compare_ids(a, b));
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(HashMap::new());
    };
    let reply: redis::streams::StreamPendingCountReply =
        conn.xpending_consumer_count(keys.events(), GROUP, *first, *last, ids.len() * 4, consumer).await?;
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
pub async fn touch(conn: &mut ConnectionManager, keys: &Keys, consumer: &str, ids: &[&str]) -> Result<(), RedisError> {
    if ids.is_empty() {
        return Ok(());
    }
    let options = redis::streams::StreamClaimOptions::default().with_justid();
    let _: Value = conn.xclaim_options(keys.events(), GROUP, consumer, 0, ids, options).await?;
    Ok(())
}

/// Removes consumers other than `me` that hold no pending entry, have not
/// read for `idle`, and whose name no worker holds; returns their names. A
/// live worker reads at least every `FLEET_BLOCK_MS`, so it is never idle
/// that long.
pub async fn remove_idle_consumers(
    conn: &mut ConnectionManager,
    keys: &Keys,
    me: &str,
    idle: Duration,
) -> Result<Vec<String>, RedisError> {
    let reply: redis::streams::StreamInfoConsumersReply = conn.xinfo_consumers(keys.events(), GROUP).await?;
    let mut removed = Vec::new();
    for consumer in reply.consumers {
        let stale = consumer.name != me && consumer.pending == 0 && consumer.idle as u128 > idle.as_millis();
        if stale && !conn.exists::<_, bool>(keys.consumer_lease(&consumer.name)).await? {
            let _: i64 = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(keys.events())
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
pub async fn ack(conn: &mut ConnectionManager, keys: &Keys, ids: &[&str]) -> Result<(), RedisError> {
    if ids.is_empty() {
        return Ok(());
    }
    let _: i64 = conn.xack(keys.events(), GROUP, ids).await?;
    Ok(())
}

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
        let mut fields: Vec<(&'static str, Vec<u8>)> =
            EVENT_FIELDS.iter().map(|name| (*name, entry.field(name).unwrap_or_default().to_vec())).collect();
        let first_failed_at = entry.text("first_failed_at").unwrap_or(now);
        fields.push(("source_entry_id", entry.id.clone().into_bytes()));
        fields.push(("attempts", self.attempts.to_string().into_bytes()));
        fields.push(("error_kind", self.kind.as_str().as_bytes().to_vec()));
        fields.push(("error", self.error.clone().into_bytes()));
        fields.push(("first_failed_at", first_failed_at.as_bytes().to_vec()));
        fields.push(("last_failed_at", now.as_bytes().to_vec()));
        fields
    }
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Moves entries to the dead-letter stream and acknowledges them, in one
/// MULTI/EXEC so an entry is never both lost and unacknowledged.
pub async fn dead_letter(
    conn: &mut ConnectionManager,
    keys: &Keys,
    failures: &[Failure<'_>],
) -> Result<(), RedisError> {
    if failures.is_empty() {
        return Ok(());
    }
    let now = now_text();
    let mut pipe = redis::pipe();
    pipe.atomic();
    for failure in failures {
        pipe.xadd(keys.dead_letters(), "*", &failure.fields(&now)).ignore();
        pipe.xack(keys.events(), GROUP, &[&failure.entry.id]).ignore();
    }
    pipe.query_async::<()>(conn).await
}

/// Schedules each failure for another attempt at its due time and
/// acknowledges its entry, in one MULTI/EXEC: the event is always either
/// pending in the stream or waiting in the retry set.
pub async fn schedule_retries(
    conn: &mut ConnectionManager,
    keys: &Keys,
    retries: &[(Failure<'_>, DateTime<Utc>)],
) -> Result<(), RedisError> {
    if retries.is_empty() {
        return Ok(());
    }
    let now = now_text();
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (failure, due) in retries {
        let flat: Vec<String> = failure
            .fields(&now)
            .into_iter()
            .flat_map(|(name, value)| [name.to_owned(), String::from_utf8_lossy(&value).into_owned()])
            .collect();
        let member = serde_json::Value::from(flat).to_string();
        pipe.zadd(keys.retries(), member, due.timestamp_millis()).ignore();
        pipe.xack(keys.events(), GROUP, &[&failure.entry.id]).ignore();
    }
    pipe.query_async::<()>(conn).await
}

// KEYS[1]: the retry set; KEYS[2]: the events stream.
// ARGV[1]: now (ms); ARGV[2]: most to move.
const PROMOTE_SCRIPT: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', unpack(cjson.decode(member)))
  redis.call('ZREM', KEYS[1], member)
end
return #due
";

/// Moves retries that are due back onto the events stream, atomically;
/// returns how many moved.
pub async fn promote_due_retries(conn: &mut ConnectionManager, keys: &Keys, limit: usize) -> Result<u64, RedisError> {
    Script::new(PROMOTE_SCRIPT)
        .key(keys.retries())
        .key(keys.events())
        .arg(Utc::now().timestamp_millis())
        .arg(limit)
        .invoke_async(conn)
        .await
}

/// Records entries that vanished from the stream while pending (XAUTOCLAIM
/// reports them and drops them from the pending list).
pub async fn dead_letter_deleted(conn: &mut ConnectionManager, keys: &Keys, ids: &[String]) -> Result<(), RedisError> {
    if ids.is_empty() {
        return Ok(());
    }
    let now = now_text();
    let mut pipe = redis::pipe();
    pipe.atomic();
    for id in ids {
        let fields: [(&str, &str); 6] = [
            ("source_entry_id", id),
            ("attempts", "0"),
            ("error_kind", FailureKind::Deleted.as_str()),
            ("error", "the stream entry was deleted while pending; its event is unknown"),
            ("first_failed_at", &now),
            ("last_failed_at", &now),
        ];
        pipe.xadd(keys.dead_letters(), "*", &fields).ignore();
    }
    pipe.query_async::<()>(conn).await
}

// KEYS[1]: the dead-letter stream; KEYS[2]: the events stream.
// ARGV: dead-letter ids. Each found entry is appended to the events stream
// with fresh attempts and deleted from the dead letters in the same atomic
// script, so a crash neither loses nor doubles it.
const REPLAY_SCRIPT: &str = r"
local replayed, missing = {}, {}
for _, id in ipairs(ARGV) do
  local found = redis.call('XRANGE', KEYS[1], id, id)
  local keep = {}
  if #found == 1 then
    local fields = found[1][2]
    for i = 1, #fields, 2 do
      local name = fields[i]
      if name == 'body' or name == 'topic' or name == 'tenant' or name == 'event_id' or name == 'received_at' then
        table.insert(keep, name)
        table.insert(keep, fields[i + 1])
      end
    end
  end
  if #keep == 0 then
    table.insert(missing, id)
  else
    table.insert(keep, 'replayed_from')
    table.insert(keep, id)
    local new_id = redis.call('XADD', KEYS[2], '*', unpack(keep))
    redis.call('XDEL', KEYS[1], id)
    table.insert(replayed, id)
    table.insert(replayed, new_id)
  end
end
return {replayed, missing}
";

/// The outcome of replaying dead letters.
#[derive(Debug, Default)]
pub struct Replayed {
    /// (dead-letter id, new events-stream id)
    pub replayed: Vec<(String, String)>,
    /// Ids that are not dead letters (or carry no event to replay).
    pub missing: Vec<String>,
}

/// Puts dead letters back on the events stream with fresh attempts.
pub async fn replay_dead_letters(
    conn: &mut ConnectionManager,
    keys: &Keys,
    ids: &[String],
) -> Result<Replayed, RedisError> {
    if ids.is_empty() {
        return Ok(Replayed::default());
    }
    let (replayed, missing): (Vec<String>, Vec<String>) =
        Script::new(REPLAY_SCRIPT).key(keys.dead_letters()).key(keys.events()).arg(ids).invoke_async(conn).await?;
    Ok(Replayed {
        replayed: replayed.chunks(2).filter_map(|pair| Some((pair.first()?.clone(), pair.get(1)?.clone()))).collect(),
        missing,
    })
}

/// Reads dead letters in stream order from `start` (inclusive).
pub async fn read_dead_letters(
    conn: &mut ConnectionManager,
    keys: &Keys,
    start: &str,
    count: usize,
) -> Result<Vec<Entry>, RedisError> {
    let reply: redis::streams::StreamRangeReply = conn.xrange_count(keys.dead_letters(), start, "+", count).await?;
    Ok(reply.ids.into_iter().map(Entry::from_stream_id).collect())
}

/// One dead letter, if it exists.
pub async fn dead_letter_by_id(
    conn: &mut ConnectionManager,
    keys: &Keys,
    id: &str,
) -> Result<Option<Entry>, RedisError> {
    let reply: redis::streams::StreamRangeReply = conn.xrange(keys.dead_letters(), id, id).await?;
    Ok(reply.ids.into_iter().map(Entry::from_stream_id).next())
}

/// Deletes dead letters; returns how many existed.
pub async fn purge_dead_letters(conn: &mut ConnectionManager, keys: &Keys, ids: &[String]) -> Result<u64, RedisError> {
    if ids.is_empty() {
        return Ok(0);
    }
    conn.xdel(keys.dead_letters(), ids).await
}

// KEYS[1]: the lease. ARGV[1]: this worker's token; ARGV[2]: lease in ms.
// 1: held (renewed, or taken again after Redis lost it); 0: another holds it.
const HOLD_LEASE_SCRIPT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Takes or renews the lease on a consumer name; false if another live
/// worker holds it.
pub async fn hold_consumer_lease(
    conn: &mut ConnectionManager,
    keys: &Keys,
    consumer: &str,
    token: &str,
    lease: Duration,
) -> Result<bool, RedisError> {
    let held: i64 = Script::new(HOLD_LEASE_SCRIPT)
        .key(keys.consumer_lease(consumer))
        .arg(token)
        .arg(lease.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(held == 1)
}

const RELEASE_LEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Gives the consumer name back, if this worker still holds it.
pub async fn release_consumer_lease(
    conn: &mut ConnectionManager,
    keys: &Keys,
    consumer: &str,
    token: &str,
) -> Result<(), RedisError> {
    let _: i64 =
        Script::new(RELEASE_LEASE_SCRIPT).key(keys.consumer_lease(consumer)).arg(token).invoke_async(conn).await?;
    Ok(())
}

// KEYS[1]: the events stream. ARGV[1]: entries to keep once acknowledged.
// Trims at the smallest of: the oldest entry past the length bound, and the
// oldest entry some group has not acknowledged (its oldest pending entry, or
// the first entry after its last-delivered id). Without a group nothing is
// trimmed: nothing has been acknowledged.
const TRIM_SCRIPT: &str = r"
local key = KEYS[1]
local keep = tonumber(ARGV[1])
local excess = redis.call('XLEN', key) - keep
if excess <= 0 then return 0 end
if excess > 10000 then excess = 10000 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  return ams < bms or (ams == bms and aseq < bseq)
end
local function successor(id)
  local ms, seq = parse(id)
  return string.format('%d-%d', ms, seq + 1)
end
local oldest = redis.call('XRANGE', key, '-', '+', 'COUNT', excess)
local cut = successor(oldest[#oldest][1])
local groups = redis.call('XINFO', 'GROUPS', key)
if #groups == 0 then return 0 end
for _, group in ipairs(groups) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local unfinished = successor(info['last-delivered-id'])
  if info['pending'] > 0 then
    local summary = redis.call('XPENDING', key, info['name'])
    unfinished = summary[2]
  end
  if less(unfinished, cut) then cut = unfinished end
end
return redis.call('XTRIM', key, 'MINID', cut)
";

/// Trims acknowledged entries beyond `keep`; returns how many went.
pub async fn trim(conn: &mut ConnectionManager, keys: &Keys, keep: u64) -> Result<u64, RedisError> {
    Script::new(TRIM_SCRIPT).key(keys.events()).arg(keep).invoke_async(conn).await
}
