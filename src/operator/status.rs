//! `fleet status`: the stream backlog, consumers, retries, dead letters (the
//! fleet's totals and each stream shard's), the last minutes' activity, and
//! a one-line verdict on whether the fleet keeps up.
//!
//! [`report`] reads it all from Redis and [`show`] prints it; the operator
//! console's overview shows the very same [`StatusReport`], verdict
//! included, and draws its charts from [`activity_by_minute`].

use std::fmt;

use chrono::{DateTime, Utc};
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply, StreamPendingReply};
use redis::{AsyncCommands, RedisError};
use serde::Serialize;

use super::output::{count, human_duration, Output};
use crate::redis::activity::{self, Tally};
use crate::redis::keys::{Keys, ShardKeys, GROUP};
use crate::redis::shards::{self, ShardCount};
use crate::redis::RedisConnection;

/// An entry pending this long means a worker is stuck (the
/// `FleetOldestPendingTooOld` alert's threshold).
pub(crate) const STUCK_AFTER_MS: u64 = 5 * 60 * 1000;
/// This many entries not yet delivered means the fleet is behind (the
/// `FleetConsumerLagGrowing` alert's threshold).
pub(crate) const BEHIND_AT: u64 = 1000;
/// The minutes [`Recent`] covers.
const RECENT_MINUTES: usize = 5;

/// One consumer of the group.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerView {
    pub name: String,
    /// Entries delivered to it and not yet acknowledged.
    pub pending: u64,
    /// Since its last read, in milliseconds.
    pub idle_ms: u64,
    /// Whether a running worker holds this name (its lease is alive).
    pub live: bool,
}

/// The last few minutes' activity of the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct Recent {
    /// The minutes covered (the current one included, partly).
    pub minutes: usize,
    pub applied: u64,
    pub applied_per_second: f64,
    /// Mean and largest time from receipt at the intake to the dashboard
    /// refreshed, over the events applied; none when nothing was.
    pub freshness_mean_ms: Option<u64>,
    pub freshness_max_ms: Option<u64>,
}

/// How the fleet is doing, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// The one-line answer to "does the fleet keep up?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub level: Level,
    pub text: String,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.level.as_str(), self.text)
    }
}

/// One stream shard's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShardView {
    pub shard: u32,
    pub stream: String,
    pub length: u64,
    /// Entries not yet delivered to its group; unknown after some trims.
    pub undelivered: Option<u64>,
    pub pending: u64,
    /// Age of its oldest pending entry, in milliseconds (0 when none is).
    pub oldest_pending_age_ms: u64,
    pub retries_scheduled: u64,
    pub dead_letters: u64,
}

/// The fleet as Redis sees it: the totals over every stream shard, then
/// each shard's own figures.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The streams' names: the one stream, or the pattern of the shards'.
    pub stream: String,
    pub length: u64,
    pub group: &'static str,
    /// Entries not yet delivered to the group; unknown after some trims.
    pub undelivered: Option<u64>,
    pub pending: u64,
    /// Age of the oldest pending entry, in milliseconds (0 when none is).
    pub oldest_pending_age_ms: u64,
    pub consumers: Vec<ConsumerView>,
    pub live_workers: usize,
    pub retries_scheduled: u64,
    pub next_retry_at: Option<String>,
    pub dead_letters: u64,
    /// Each shard's figures, the first shard first.
    pub shards: Vec<ShardView>,
    pub recent: Recent,
    pub verdict: Verdict,
}

/// Reads the fleet's state: a few O(1) commands per shard, plus one
/// `EXISTS` per consumer and one `HGETALL` per recent minute.
pub async fn report(redis: &mut RedisConnection, keys: &Keys) -> Result<StatusReport, RedisError> {
    let now = Utc::now();
    let count = shards::fleet_count(redis, keys, ShardCount::ONE).await?;
    let mut views = Vec::new();
    let mut next_retry_ms: Option<f64> = None;
    // Every consumer name of any shard's group: (pending, idle) summed and
    // least over the shards.
    let mut by_name: Vec<(String, u64, u64)> = Vec::new();
    for shard in count.shards(keys) {
        let (view, next_retry, consumers) = shard_report(redis, &shard, now).await?;
        views.push(view);
        if let Some(due) = next_retry {
            next_retry_ms = Some(next_retry_ms.map_or(due, |earliest| earliest.min(due)));
        }
        for (name, pending, idle) in consumers {
            match by_name.iter_mut().find(|(known, _, _)| *known == name) {
                Some(known) => {
                    known.1 += pending;
                    known.2 = known.2.min(idle);
                }
                None => by_name.push((name, pending, idle)),
            }
        }
    }
    let next_retry_at =
        next_retry_ms.and_then(|due| DateTime::<Utc>::from_timestamp_millis(due as i64)).map(|due| due.to_rfc3339());
    let leases: Vec<String> = by_name.iter().map(|(name, _, _)| keys.consumer_lease(name)).collect();
    let mut live = vec![false; leases.len()];
    // Each lease in its own slot on a cluster: one pipeline per slot.
    for group in redis.same_slot_groups(leases.iter().map(String::as_str)) {
        let mut pipe = redis::pipe();
        for &position in &group {
            pipe.exists(&leases[position]);
        }
        let held: Vec<bool> = pipe.query_async(redis).await?;
        for (position, held) in group.into_iter().zip(held) {
            live[position] = held;
        }
    }
    let consumers: Vec<ConsumerView> = by_name
        .into_iter()
        .zip(live)
        .map(|((name, pending, idle_ms), live)| ConsumerView { name, pending, idle_ms, live })
        .collect();
    let minutes = activity::read(redis, keys, activity::minute_of(now), RECENT_MINUTES).await?;
    let live_workers = consumers.iter().filter(|consumer| consumer.live).count();
    let stream =
        if views.len() == 1 { views[0].stream.clone() } else { format!("{}events:{{shard:*}}", keys.prefix()) };
    let mut report = StatusReport {
        stream,
        length: views.iter().map(|view| view.length).sum(),
        group: GROUP,
        undelivered: views.iter().map(|view| view.undelivered).sum(),
        pending: views.iter().map(|view| view.pending).sum(),
        oldest_pending_age_ms: views.iter().map(|view| view.oldest_pending_age_ms).max().unwrap_or(0),
        consumers,
        live_workers,
        retries_scheduled: views.iter().map(|view| view.retries_scheduled).sum(),
        next_retry_at,
        dead_letters: views.iter().map(|view| view.dead_letters).sum(),
        shards: views,
        recent: recent(&minutes, now),
        verdict: Verdict { level: Level::Ok, text: String::new() },
    };
    report.verdict = verdict(&report);
    Ok(report)
}

/// One shard's figures, when its next retry is due (unix ms), and its
/// group's consumers as (name, pending, idle ms).
async fn shard_report(
    redis: &mut RedisConnection,
    shard: &ShardKeys,
    now: DateTime<Utc>,
) -> Result<(ShardView, Option<f64>, Vec<(String, u64, u64)>), RedisError> {
    let (length, dead_letters, retries, next_retry): (u64, u64, u64, Vec<(String, f64)>) = redis::pipe()
        .xlen(shard.events())
        .xlen(shard.dead_letters())
        .zcard(shard.retries())
        .zrange_withscores(shard.retries(), 0, 0)
        .query_async(redis)
        .await?;
    let groups: StreamInfoGroupsReply = match redis.xinfo_groups(shard.events()).await {
        Ok(groups) => groups,
        // No stream yet: nothing was ever received.
        Err(err) if err.code() == Some("ERR") => StreamInfoGroupsReply::default(),
        Err(err) => return Err(err),
    };
    let group = groups.groups.into_iter().find(|group| group.name == GROUP);
    let mut consumers = Vec::new();
    let mut oldest_pending_age_ms = 0;
    if let Some(group) = &group {
        let (reply, pending): (StreamInfoConsumersReply, StreamPendingReply) = redis::pipe()
            .xinfo_consumers(shard.events(), GROUP)
            .xpending(shard.events(), GROUP)
            .query_async(redis)
            .await?;
        if let (StreamPendingReply::Data(data), true) = (&pending, group.pending > 0) {
            oldest_pending_age_ms = age_ms(&data.start_id, now);
        }
        consumers = reply
            .consumers
            .into_iter()
            .map(|consumer| (consumer.name, consumer.pending as u64, consumer.idle as u64))
            .collect();
    }
    let (pending, undelivered) =
        group.as_ref().map_or((0, Some(0)), |group| (group.pending as u64, group.lag.map(|lag| lag as u64)));
    let view = ShardView {
        shard: shard.index(),
        stream: shard.events(),
        length,
        undelivered,
        pending,
        oldest_pending_age_ms,
        retries_scheduled: retries,
        dead_letters,
    };
    Ok((view, next_retry.first().map(|(_, due)| *due), consumers))
}

/// The fleet's activity in each of the last `count` minutes (the current
/// one included), oldest first: what the console's charts draw.
pub async fn activity_by_minute(
    redis: &mut RedisConnection,
    keys: &Keys,
    count: usize,
) -> Result<Vec<(DateTime<Utc>, Tally)>, RedisError> {
    let minutes = activity::read(redis, keys, activity::minute_of(Utc::now()), count).await?;
    Ok(minutes
        .into_iter()
        .filter_map(|(minute, tally)| Some((DateTime::<Utc>::from_timestamp(minute * 60, 0)?, tally)))
        .collect())
}

/// How long ago the entry with stream id `id` (`<ms>-<seq>`) was added, in ms.
fn age_ms(id: &str, now: DateTime<Utc>) -> u64 {
    let added = id.split('-').next().and_then(|ms| ms.parse::<i64>().ok()).unwrap_or(i64::MAX);
    now.timestamp_millis().saturating_sub(added).max(0) as u64
}

fn recent(minutes: &[(i64, Tally)], now: DateTime<Utc>) -> Recent {
    let mut total = Tally::default();
    for (_, tally) in minutes {
        total.applied += tally.applied;
        total.freshness_sum_ms += tally.freshness_sum_ms;
        total.freshness_count += tally.freshness_count;
        total.freshness_max_ms = total.freshness_max_ms.max(tally.freshness_max_ms);
    }
    // The full minutes before this one, and this one so far.
    let seconds = (minutes.len().saturating_sub(1) * 60) as f64 + (now.timestamp().rem_euclid(60) + 1) as f64;
    Recent {
        minutes: minutes.len(),
        applied: total.applied,
        applied_per_second: total.applied as f64 / seconds,
        freshness_mean_ms: total.freshness_mean_ms(),
        freshness_max_ms: (total.freshness_count > 0).then_some(total.freshness_max_ms),
    }
}

/// The verdict on a report, worst finding first (see the module).
pub fn verdict(report: &StatusReport) -> Verdict {
    let undelivered = report.undelivered.unwrap_or(0);
    let waiting = undelivered + report.pending;
    let (level, text) = if report.live_workers == 0 && waiting + report.retries_scheduled > 0 {
        (
            Level::Critical,
            format!(
                "no live worker: {} and {} wait",
                count(waiting, "entry", "entries"),
                count(report.retries_scheduled, "retry", "retries")
            ),
        )
    } else if report.oldest_pending_age_ms >= STUCK_AFTER_MS {
        (
            Level::Critical,
            format!(
                "an entry has been pending for {}: a worker may be stuck",
                human_duration(report.oldest_pending_age_ms)
            ),
        )
    } else if undelivered >= BEHIND_AT {
        (Level::Warning, format!("behind: {} not yet delivered", count(undelivered, "entry", "entries")))
    } else if report.dead_letters > 0 {
        (
            Level::Warning,
            format!("{} {} for an operator", count(report.dead_letters, "dead letter", "dead letters"), {
                if report.dead_letters == 1 {
                    "waits"
                } else {
                    "wait"
                }
            }),
        )
    } else if report.live_workers == 0 {
        (Level::Warning, "no live worker (nothing waits yet)".to_owned())
    } else {
        (
            Level::Ok,
            format!(
                "keeping up: {}, {} in flight, {} scheduled",
                count(report.live_workers as u64, "live worker", "live workers"),
                count(waiting, "entry", "entries"),
                count(report.retries_scheduled, "retry", "retries")
            ),
        )
    };
    Verdict { level, text }
}

/// `fleet status`: the report as text (the verdict first) or JSON.
pub async fn show(redis: &mut RedisConnection, keys: &Keys, output: Output) -> anyhow::Result<()> {
    let report = report(redis, keys).await?;
    output.data(&report, |out| {
        writeln!(out, "verdict      {}", report.verdict)?;
        writeln!(out, "stream       {} ({} entries)", report.stream, report.length)?;
        match report.undelivered {
            Some(lag) => writeln!(out, "undelivered  {lag}")?,
            None => writeln!(out, "undelivered  unknown")?,
        }
        write!(out, "pending      {} (delivered, not yet acknowledged)", report.pending)?;
        if report.pending > 0 {
            write!(out, "; oldest {}", human_duration(report.oldest_pending_age_ms))?;
        }
        writeln!(out)?;
        writeln!(
            out,
            "retries      {} scheduled{}",
            report.retries_scheduled,
            report.next_retry_at.as_ref().map(|at| format!(", next at {at}")).unwrap_or_default()
        )?;
        writeln!(
            out,
            "dead letters {}{}",
            report.dead_letters,
            if report.dead_letters > 0 { " (see `fleet dlq list`)" } else { "" }
        )?;
        let recent = &report.recent;
        write!(out, "applied      {:.1}/s over the last {} min", recent.applied_per_second, recent.minutes)?;
        if let (Some(mean), Some(max)) = (recent.freshness_mean_ms, recent.freshness_max_ms) {
            write!(out, "; freshness {} mean, {} max", human_duration(mean), human_duration(max))?;
        }
        writeln!(out)?;
        if report.shards.len() > 1 {
            writeln!(out, "shards       {}", report.shards.len())?;
            writeln!(
                out,
                "  {:<6} {:>10} {:>12} {:>10} {:>14} {:>8} {:>12}",
                "SHARD", "LENGTH", "UNDELIVERED", "PENDING", "OLDEST PENDING", "RETRIES", "DEAD LETTERS"
            )?;
            for shard in &report.shards {
                let undelivered = shard.undelivered.map_or_else(|| "unknown".to_owned(), |lag| lag.to_string());
                let oldest =
                    if shard.pending > 0 { human_duration(shard.oldest_pending_age_ms) } else { "-".to_owned() };
                writeln!(
                    out,
                    "  {:<6} {:>10} {:>12} {:>10} {:>14} {:>8} {:>12}",
                    shard.shard,
                    shard.length,
                    undelivered,
                    shard.pending,
                    oldest,
                    shard.retries_scheduled,
                    shard.dead_letters
                )?;
            }
        }
        writeln!(out, "consumers    {} ({} live)", report.consumers.len(), report.live_workers)?;
        for consumer in &report.consumers {
            writeln!(
                out,
                "  {:<40} pending {:>6}  idle {:>8} ms{}",
                consumer.name,
                consumer.pending,
                consumer.idle_ms,
                if consumer.live { "" } else { "  (no live worker)" }
            )?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> StatusReport {
        StatusReport {
            stream: "fleet:events".into(),
            length: 10,
            group: GROUP,
            undelivered: Some(0),
            pending: 2,
            oldest_pending_age_ms: 40,
            consumers: Vec::new(),
            live_workers: 2,
            retries_scheduled: 1,
            next_retry_at: None,
            dead_letters: 0,
            shards: Vec::new(),
            recent: recent(&[], Utc::now()),
            verdict: Verdict { level: Level::Ok, text: String::new() },
        }
    }

    #[test]
    fn the_verdict_names_the_worst_finding() {
        let ok = verdict(&healthy());
        assert_eq!(ok.to_string(), "ok: keeping up: 2 live workers, 2 entries in flight, 1 retry scheduled");

        let dead = StatusReport { dead_letters: 3, ..healthy() };
        assert_eq!(verdict(&dead).to_string(), "warning: 3 dead letters wait for an operator");
        let behind = StatusReport { undelivered: Some(5000), dead_letters: 3, ..healthy() };
        assert_eq!(verdict(&behind).to_string(), "warning: behind: 5000 entries not yet delivered");
        let stuck = StatusReport { oldest_pending_age_ms: 6 * 60 * 1000, undelivered: Some(5000), ..healthy() };
        assert_eq!(verdict(&stuck).level, Level::Critical);
        assert!(verdict(&stuck).text.contains("pending for 6 min"), "{}", verdict(&stuck));
        let orphaned = StatusReport { live_workers: 0, ..stuck };
        assert_eq!(verdict(&orphaned).to_string(), "critical: no live worker: 5002 entries and 1 retry wait");
        let idle = StatusReport { live_workers: 0, pending: 0, retries_scheduled: 0, ..healthy() };
        assert_eq!(verdict(&idle).to_string(), "warning: no live worker (nothing waits yet)");
    }

    #[test]
    fn recent_activity_is_per_second_over_the_minutes_covered() {
        let now = DateTime::<Utc>::from_timestamp(60 * 100 + 29, 0).expect("time");
        let busy = Tally {
            applied: 300,
            freshness_sum_ms: 600,
            freshness_count: 300,
            freshness_max_ms: 9,
            ..Tally::default()
        };
        let recent = recent(&[(99, busy), (100, Tally::default())], now);
        // 60 s of the previous minute and 30 s of this one.
        assert!((recent.applied_per_second - 300.0 / 90.0).abs() < 1e-9, "{recent:?}");
        assert_eq!((recent.freshness_mean_ms, recent.freshness_max_ms), (Some(2), Some(9)));
        let quiet = super::recent(&[(100, Tally::default())], now);
        assert_eq!((quiet.applied_per_second, quiet.freshness_max_ms), (0.0, None));
    }
}
