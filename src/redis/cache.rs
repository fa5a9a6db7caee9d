//! The dashboard cache in Redis: keys under tags, versioned writes, atomic
//! tag invalidation, stale-while-revalidate and a single-flight lock.
//!
//! Every key lives under `<prefix>cache:{<tenant>}:…`. A value is a hash of
//! `version`, `body` and `fresh_until`; it is served fresh until then and
//! stale (while one request recomputes it) for as long again, then expires.
//! A write carries the version of the data it was computed from and is
//! refused over a newer one, so a slow or reclaimed writer cannot put old
//! numbers back. A tag is a set of keys, `<prefix>tag:{<tenant>}:<tag>`,
//! that expires with the longest-lived of them; invalidating tags deletes
//! every key in them, in one script for small tags and in bounded chunks
//! for large ones (see [`invalidate`]).
//!
//! What is cached (which values, computed how) is the read model's
//! (`crate::read_model::cached`); this module only stores, finds, locks
//! and counts. Key and tag names come from [`super::keys`].

use std::time::Duration;

use chrono::Utc;
use redis::{AsyncCommands, RedisError};
use serde_json::Value;

use super::keys::Keys;
use super::scripts;
use super::RedisConnection;

/// A body and the version of the data it was computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub version: i64,
    pub body: Value,
}

/// How long each kind of value stays fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    pub enrollments: Duration,
    pub statistics: Duration,
    pub dashboard: Duration,
}

impl Default for Ttls {
    /// The seed's `CACHE_TTL_*` defaults: 300 s, 600 s, 300 s.
    fn default() -> Self {
        Self {
            enrollments: Duration::from_secs(300),
            statistics: Duration::from_secs(600),
            dashboard: Duration::from_secs(300),
        }
    }
}

/// A value to cache under `key`, registered under `tags`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub tags: Vec<String>,
    pub ttl: Duration,
    pub value: Versioned,
}

/// Writes each entry unless a newer version is stored; returns how many
/// were written. One round trip for all of them.
pub async fn put(conn: &mut RedisConnection, entries: &[Entry]) -> Result<usize, RedisError> {
    if entries.is_empty() {
        return Ok(0);
    }
    let script = &*scripts::CACHE_PUT;
    // Load once, then EVALSHA in a pipeline.
    let _: String = script.prepare_invoke().load_async(conn).await?;
    let now = Utc::now().timestamp_millis();
    let mut written = 0;
    // One pipeline for all on a single server; one per school on a cluster
    // (a value and its tags share the school's hash tag).
    for group in conn.same_slot_groups(entries.iter().map(|entry| entry.key.as_str())) {
        let mut pipe = redis::pipe();
        for entry in group.into_iter().map(|position| &entries[position]) {
            let ttl = entry.ttl.as_millis() as i64;
            pipe.cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(1 + entry.tags.len())
                .arg(&entry.key)
                .arg(&entry.tags)
                .arg(entry.value.version)
                .arg(entry.value.body.to_string())
                .arg(now + ttl)
                .arg(ttl * 2);
        }
        let outcomes: Vec<i64> = pipe.query_async(conn).await?;
        written += outcomes.into_iter().filter(|written| *written == 1).count();
    }
    Ok(written)
}

/// The most cached keys one invalidation script deletes: about a
/// millisecond of Redis time.
pub(crate) const INVALIDATION_CHUNK: u64 = 1000;

/// Invalidates tag sets (full key names): deletes every key registered
/// under them and the sets; returns how many cached keys went.
///
/// Redis runs one script at a time and nothing else meanwhile, so one
/// script over a tag of a million keys would stall every client for
/// seconds. Each call therefore deletes at most [`INVALIDATION_CHUNK`]
/// keys, and this loops until the sets are empty. Tags with fewer members
/// in all (the common case: a course, a user) still go in one atomic call.
/// The price, for larger tags only: between two calls a reader can still
/// get a value of the tag that is not deleted yet, exactly what it would
/// have got just before the invalidation, and a value cached again
/// meanwhile may be deleted by a later call and recomputed on its next miss.
pub async fn invalidate(conn: &mut RedisConnection, tag_keys: &[String]) -> Result<u64, RedisError> {
    if tag_keys.is_empty() {
        return Ok(0);
    }
    let script = &*scripts::CACHE_INVALIDATE;
    let mut removed = 0;
    // All tags at once on a single server; on a cluster, one school's tags
    // at a time (they share its hash tag, as do the values in them).
    for group in conn.same_slot_groups(tag_keys.iter().map(String::as_str)) {
        let group: Vec<&String> = group.into_iter().map(|position| &tag_keys[position]).collect();
        loop {
            let (deleted, left): (u64, u64) = script.key(&group).arg(INVALIDATION_CHUNK).invoke_async(conn).await?;
            removed += deleted;
            if left == 0 {
                break;
            }
        }
    }
    Ok(removed)
}

/// What the cache holds for a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Fresh(Versioned),
    Stale(Versioned),
    Missing,
}

/// What the cache holds for `key`; a value it cannot read is missing.
pub async fn get(conn: &mut RedisConnection, key: &str) -> Result<Lookup, RedisError> {
    let (version, body, fresh_until): (Option<i64>, Option<String>, Option<i64>) =
        redis::cmd("HMGET").arg(key).arg("version").arg("body").arg("fresh_until").query_async(conn).await?;
    let (Some(version), Some(body), Some(fresh_until)) = (version, body, fresh_until) else {
        return Ok(Lookup::Missing);
    };
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return Ok(Lookup::Missing);
    };
    let value = Versioned { version, body };
    Ok(if Utc::now().timestamp_millis() < fresh_until { Lookup::Fresh(value) } else { Lookup::Stale(value) })
}

/// Takes the single-flight lock of `key` for `hold`; the token releases it.
pub(crate) async fn try_lock(
    conn: &mut RedisConnection,
    keys: &Keys,
    key: &str,
    hold: Duration,
) -> Result<Option<String>, RedisError> {
    let token = uuid::Uuid::new_v4().to_string();
    let taken: Option<String> = redis::cmd("SET")
        .arg(keys.lock(key))
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(hold.as_millis() as u64)
        .query_async(conn)
        .await?;
    Ok(taken.map(|_| token))
}

/// Releases the lock of `key` if `token` still holds it.
pub(crate) async fn unlock(conn: &mut RedisConnection, keys: &Keys, key: &str, token: &str) -> Result<(), RedisError> {
    let _: i64 = scripts::RELEASE.key(keys.lock(key)).arg(token).invoke_async(conn).await?;
    Ok(())
}

/// Counters behind `fleet cache stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Stale,
    Bypass,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Stale => "STALE",
            Self::Bypass => "BYPASS",
        }
    }

    fn counter(self) -> &'static str {
        match self {
            Self::Hit => "hits",
            Self::Miss => "misses",
            Self::Stale => "stale",
            Self::Bypass => "bypass",
        }
    }
}

/// Counts one read; the first count sets `since`.
pub async fn count(conn: &mut RedisConnection, keys: &Keys, outcome: Outcome) -> Result<(), RedisError> {
    let mut pipe = redis::pipe();
    pipe.hset_nx(keys.cache_metrics(), "since", Utc::now().to_rfc3339())
        .ignore()
        .hincr(keys.cache_metrics(), outcome.counter(), 1)
        .ignore();
    pipe.query_async::<()>(conn).await
}

/// Counts a failed revalidation call.
pub(crate) async fn count_revalidation_failure(conn: &mut RedisConnection, keys: &Keys) -> Result<(), RedisError> {
    conn.hincr(keys.cache_metrics(), "revalidate_failures", 1).await
}
