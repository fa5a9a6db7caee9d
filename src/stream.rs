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
        Self {
            prefix: prefix.as_str().to_owned(),
        }
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

    /// Remembers that an event id was accepted, and as which stream entry.
    pub fn seen(&self, tenant_id: &str, event_id: &str) -> String {
        format!("{}seen:{tenant_id}:{event_id}", self.prefix)
    }
}

/// Opens a reconnecting Redis connection.
///
/// Commands fail after `response_timeout` instead of hanging, and a broken
/// connection is re-established on the next command.
pub async fn connect(
    url: &str,
    response_timeout: Duration,
) -> Result<ConnectionManager, RedisError> {
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
    let created: Result<(), RedisError> =
        conn.xgroup_create_mkstream(keys.events(), GROUP, "0").await;
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
        .arg(
            entry
                .received_at
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        )
        .invoke_async(conn)
        .await?;
    Ok(if appended == 1 {
        Enqueued::Accepted(id)
    } else {
        Enqueued::Duplicate(id)
    })
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
        self.field(name)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
    }
}

/// Where a group read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// Entries already delivered to this consumer and not yet acknowledged.
    OwnPending,
    /// Entries never delivered to any consumer of the group.
    New,
}

/// Reads up to `count` entries for `consumer`, waiting up to `block` for new
/// ones. Use a connection of its own whose response timeout exceeds `block`.
pub async fn read_group(
    conn: &mut ConnectionManager,
    keys: &Keys,
    consumer: &str,
    from: ReadFrom,
    count: usize,
    block: Duration,
) -> Result<Vec<Entry>, RedisError> {
    let mut options = StreamReadOptions::default()
        .group(GROUP, consumer)
        .count(count);
    let id = match from {
        ReadFrom::OwnPending => "0",
        ReadFrom::New => {
            options = options.block(block.as_millis() as usize);
            ">"
        }
    };
    let reply: Option<StreamReadReply> = conn
        .xread_options(&[keys.events()], &[id], &options)
        .await?;
    let Some(reply) = reply else {
        return Ok(Vec::new());
    };
    Ok(reply
        .keys
        .into_iter()
        .flat_map(|key| key.ids)
        .map(|stream_id| Entry {
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
        })
        .collect())
}

/// Acknowledges entries whose effect is committed.
pub async fn ack(
    conn: &mut ConnectionManager,
    keys: &Keys,
    ids: &[&str],
) -> Result<(), RedisError> {
    if ids.is_empty() {
        return Ok(());
    }
    let _: i64 = conn.xack(keys.events(), GROUP, ids).await?;
    Ok(())
}

/// A dead letter: an entry that cannot be applied, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub entry: &'a Entry,
    pub error_kind: &'a str,
    pub error: &'a str,
}

/// Moves entries to the dead-letter stream and acknowledges them, in one
/// MULTI/EXEC so an entry is never both lost and unacknowledged.
pub async fn dead_letter(
    conn: &mut ConnectionManager,
    keys: &Keys,
    letters: &[DeadLetter<'_>],
) -> Result<(), RedisError> {
    if letters.is_empty() {
        return Ok(());
    }
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut pipe = redis::pipe();
    pipe.atomic();
    for letter in letters {
        let entry = letter.entry;
        let mut fields: Vec<(&str, &[u8])> = Vec::new();
        for name in ["body", "topic", "tenant", "event_id", "received_at"] {
            fields.push((name, entry.field(name).unwrap_or_default()));
        }
        fields.push(("source_entry_id", entry.id.as_bytes()));
        fields.push(("error_kind", letter.error_kind.as_bytes()));
        fields.push(("error", letter.error.as_bytes()));
        fields.push(("failed_at", now.as_bytes()));
        pipe.xadd(keys.dead_letters(), "*", &fields).ignore();
        pipe.xack(keys.events(), GROUP, &[&entry.id]).ignore();
    }
    pipe.query_async::<()>(conn).await
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
    Script::new(TRIM_SCRIPT)
        .key(keys.events())
        .arg(keep)
        .invoke_async(conn)
        .await
}
