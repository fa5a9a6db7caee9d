//! What the workers did, minute by minute: events applied, how fresh the
//! dashboard was when they were (from receipt at the intake to the end of
//! the cache refresh covering them), and the largest backlog seen. The
//! operator console draws its charts from these samples.
//!
//! Each worker tallies in memory ([`Recorder`]) and adds its tally to the
//! hash of the minute, `<prefix>activity:{activity}:<unix minute>`, every few seconds
//! (one script call per minute touched, beside the backlog sample): counts
//! add up across the fleet, the largest figures keep the largest. A hash is
//! kept for [`KEPT`], so the fleet holds about 120 small hashes, and a quiet
//! fleet writes nothing. Prometheus keeps the same figures at finer grain
//! (`fleet_events_applied_total`, `fleet_freshness_seconds`); these exist
//! so that the console needs nothing but Redis.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::RedisError;
use serde::Serialize;

use super::keys::Keys;
use super::scripts;
use super::RedisConnection;

/// How long the hash of a minute is kept.
pub(crate) const KEPT: Duration = Duration::from_secs(2 * 3600);

/// What happened in one minute, in one worker or (added up) in the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Events applied and covered by a cache refresh.
    pub applied: u64,
    /// The sum of their freshness, in milliseconds.
    pub freshness_sum_ms: u64,
    /// How many freshness figures the sum holds.
    pub freshness_count: u64,
    /// The largest freshness, in milliseconds.
    pub freshness_max_ms: u64,
    /// The largest backlog seen (entries undelivered and pending).
    pub backlog_max: u64,
}

impl Tally {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The mean freshness, if any event was applied.
    pub(crate) fn freshness_mean_ms(&self) -> Option<u64> {
        self.freshness_sum_ms.checked_div(self.freshness_count)
    }

    fn merge(&mut self, other: &Tally) {
        self.applied += other.applied;
        self.freshness_sum_ms += other.freshness_sum_ms;
        self.freshness_count += other.freshness_count;
        self.freshness_max_ms = self.freshness_max_ms.max(other.freshness_max_ms);
        self.backlog_max = self.backlog_max.max(other.backlog_max);
    }
}

/// The unix minute of `at`.
pub fn minute_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(60)
}

/// One worker's tallies not yet written, by minute.
#[derive(Debug, Default)]
pub struct Recorder {
    minutes: Mutex<BTreeMap<i64, Tally>>,
}

impl Recorder {
    fn with_minute(&self, at: DateTime<Utc>, change: impl FnOnce(&mut Tally)) {
        let mut minutes = self.minutes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        change(minutes.entry(minute_of(at)).or_default());
    }

    /// Events applied at `at`, with the freshness of each.
    pub fn applied(&self, at: DateTime<Utc>, freshness: impl IntoIterator<Item = Duration>) {
        self.with_minute(at, |tally| {
            for fresh in freshness {
                let ms = fresh.as_millis().min(u128::from(u64::MAX)) as u64;
                tally.applied += 1;
                tally.freshness_sum_ms += ms;
                tally.freshness_count += 1;
                tally.freshness_max_ms = tally.freshness_max_ms.max(ms);
            }
        });
    }

    /// The backlog (undelivered and pending entries) seen at `at`; nothing
    /// is kept for an empty one.
    pub fn backlog(&self, at: DateTime<Utc>, backlog: u64) {
        if backlog > 0 {
            self.with_minute(at, |tally| tally.backlog_max = tally.backlog_max.max(backlog));
        }
    }

    /// Adds what was tallied to the fleet's minutes in Redis. What could not
    /// be written is kept for the next flush.
    pub async fn flush(&self, conn: &mut RedisConnection, keys: &Keys) -> Result<(), RedisError> {
        let taken = std::mem::take(&mut *self.minutes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let mut left = taken.into_iter().filter(|(_, tally)| !tally.is_empty()).peekable();
        while let Some((minute, tally)) = left.next() {
            if let Err(err) = record(conn, keys, minute, &tally).await {
                let mut minutes = self.minutes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                for (minute, tally) in std::iter::once((minute, tally)).chain(left) {
                    minutes.entry(minute).or_default().merge(&tally);
                }
                return Err(err);
            }
        }
        Ok(())
    }
}

/// Adds `tally` to the fleet's activity in `minute`.
async fn record(conn: &mut RedisConnection, keys: &Keys, minute: i64, tally: &Tally) -> Result<(), RedisError> {
    let _: i64 = scripts::RECORD_ACTIVITY
        .key(keys.activity(minute))
        .arg(tally.applied)
        .arg(tally.freshness_sum_ms)
        .arg(tally.freshness_count)
        .arg(tally.freshness_max_ms)
        .arg(tally.backlog_max)
        .arg(KEPT.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// The fleet's activity in each of the `count` minutes up to and including
/// `last`, oldest first; a minute nothing was recorded in is empty.
pub async fn read(
    conn: &mut RedisConnection,
    keys: &Keys,
    last: i64,
    count: usize,
) -> Result<Vec<(i64, Tally)>, RedisError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let minutes: Vec<i64> = (0..count as i64).rev().map(|back| last - back).collect();
    let names: Vec<String> = minutes.iter().map(|minute| keys.activity(*minute)).collect();
    let mut hashes: Vec<std::collections::HashMap<String, u64>> = vec![Default::default(); names.len()];
    // One pipeline: the minutes share a hash tag (see `super::keys`).
    for group in conn.same_slot_groups(names.iter().map(String::as_str)) {
        let mut pipe = redis::pipe();
        for &position in &group {
            pipe.hgetall(&names[position]);
        }
        let replies: Vec<std::collections::HashMap<String, u64>> = pipe.query_async(conn).await?;
        for (position, hash) in group.into_iter().zip(replies) {
            hashes[position] = hash;
        }
    }
    Ok(minutes
        .into_iter()
        .zip(hashes)
        .map(|(minute, hash)| {
            let field = |name: &str| hash.get(name).copied().unwrap_or(0);
            let tally = Tally {
                applied: field("applied"),
                freshness_sum_ms: field("freshness_sum_ms"),
                freshness_count: field("freshness_count"),
                freshness_max_ms: field("freshness_max_ms"),
                backlog_max: field("backlog_max"),
            };
            (minute, tally)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorder_tallies_by_minute() {
        let recorder = Recorder::default();
        let at = DateTime::<Utc>::from_timestamp(600, 0).expect("time");
        recorder.applied(at, [Duration::from_millis(100), Duration::from_millis(300)]);
        recorder.backlog(at + chrono::Duration::seconds(30), 7);
        recorder.backlog(at + chrono::Duration::seconds(61), 0);
        let minutes = recorder.minutes.lock().expect("lock").clone();
        assert_eq!(minutes.len(), 1, "an empty backlog is not kept: {minutes:?}");
        let tally = minutes[&10];
        assert_eq!((tally.applied, tally.freshness_max_ms, tally.backlog_max), (2, 300, 7));
        assert_eq!(tally.freshness_mean_ms(), Some(200));
        assert_eq!(Tally::default().freshness_mean_ms(), None);
    }

    #[test]
    fn minutes_count_from_the_epoch() {
        let at = DateTime::<Utc>::from_timestamp(119, 0).expect("time");
        assert_eq!(minute_of(at), 1);
    }
}
