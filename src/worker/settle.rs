//! Settling a batch: every entry ends applied (and acknowledged after the
//! cache refresh), scheduled for a retry, or dead-lettered. Decoding, the
//! attempts an entry already cost, and applying with splitting around the
//! refused events live here.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fleet_jobs::{ApplyError, Event};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::refresh::Settled;
use super::{infrastructure_backoff, Worker};
use crate::read_model::cached::Touched;
use crate::redis::failures::{self, Failure, FailureKind};
use crate::redis::stream::{self, Entry};
use crate::telemetry::metrics;

/// Tries of an event refused alone for an unexplained reason before it is
/// judged; a deadlock or a serialization failure passes on a later try.
const LONE_TRIES: u32 = 3;
/// The pause before the second of those tries, doubled before each next.
const LONE_PAUSE: Duration = Duration::from_millis(50);
/// SQLSTATE classes that point at the deploy or the database's setup rather
/// than at an event's data: feature not supported, invalid transaction
/// state, invalid authorization, unknown database or schema, syntax error
/// or access rule violation (a missing table or column, a revoked grant).
const SETUP_CLASSES: [&str; 6] = ["0A", "25", "28", "3D", "3F", "42"];
/// Entries of one batch, decoded, with the attempts they already cost.
struct Decoded<'a> {
    entries: Vec<&'a Entry>,
    events: Vec<Event>,
    prior_attempts: Vec<u32>,
}

impl Worker {
    /// Settles a batch: applies what can be applied, schedules retries and
    /// dead-letters the rest, then acknowledges. Returns the number of
    /// entries settled, or `None` when stopped while a dependency was down
    /// (the entries stay pending).
    pub(super) async fn settle(
        &self,
        entries: &[Entry],
        count_deliveries: bool,
        stop: &CancellationToken,
        settled: &mpsc::Sender<Settled>,
    ) -> Option<usize> {
        let started = Instant::now();
        let consumer = &self.settings.consumer_name;
        let policy = &self.settings.retry;
        let deliveries = if count_deliveries {
            let ids: Vec<&str> = entries.iter().map(|entry| entry.id.as_str()).collect();
            self.redis_op(stop, |mut redis| {
                let ids = &ids;
                async move { stream::delivery_counts(&mut redis, &self.keys, consumer, ids).await }
            })
            .await?
        } else {
            HashMap::new()
        };

        let mut dead: Vec<Failure<'_>> = Vec::new();
        let mut exhausted: Vec<(&Entry, Event, u32)> = Vec::new();
        let mut batch = Decoded { entries: Vec::new(), events: Vec::new(), prior_attempts: Vec::new() };
        for entry in entries {
            let interrupted = deliveries.get(&entry.id).map_or(0, |count| count.saturating_sub(1));
            let prior = entry.attempts() + interrupted;
            match decode(entry) {
                Err(reason) => {
                    dead.push(Failure { entry, kind: FailureKind::Malformed, error: reason, attempts: prior + 1 })
                }
                Ok(event) if !policy.allows_another(prior) => exhausted.push((entry, event, prior)),
                Ok(event) => {
                    batch.entries.push(entry);
                    batch.events.push(event);
                    batch.prior_attempts.push(prior);
                }
            }
        }

        let mut acks: Vec<&str> = Vec::new();
        if !exhausted.is_empty() {
            // Out of attempts through crashes. If the event was applied and
            // only its acknowledgement was lost, there is nothing to give up.
            let keys: Vec<(String, String)> =
                exhausted.iter().map(|(_, event, _)| (event.tenant_id.clone(), event.event_id.clone())).collect();
            let applied = match self.postgres_op(stop, &[], || fleet_jobs::already_applied(&self.db, &keys)).await? {
                Ok(applied) => applied,
                Err(error) => {
                    tracing::warn!(
                        sqlstate = error.sqlstate().as_deref().unwrap_or("none"), error = %error,
                        "could not tell whether events out of attempts were applied; dead-lettering them"
                    );
                    HashSet::new()
                }
            };
            for (entry, event, prior) in exhausted {
                if applied.contains(&(event.tenant_id.clone(), event.event_id.clone())) {
                    acks.push(&entry.id);
                    continue;
                }
                let last = entry.text("error").map(|error| format!("; last error: {error}")).unwrap_or_default();
                dead.push(Failure {
                    entry,
                    kind: FailureKind::Crashed,
                    error: format!(
                        "gave up after {prior} attempts; the workers holding it stopped before finishing it{last}"
                    ),
                    attempts: prior,
                });
            }
        }

        let refused = self.apply_splitting(&batch, stop).await?;
        let refused_at: HashSet<usize> = refused.iter().map(|(index, _)| *index).collect();
        let mut retries: Vec<(Failure<'_>, DateTime<Utc>)> = Vec::new();
        for (index, error) in refused {
            let entry = batch.entries[index];
            let attempts = batch.prior_attempts[index] + 1;
            let sqlstate = error.sqlstate();
            let failure = Failure { entry, kind: FailureKind::Event, error: describe(&error), attempts };
            if policy.allows_another(attempts) {
                let delay = policy.delay(attempts);
                tracing::warn!(
                    stream_entry_id = %entry.id, event_id = entry.text("event_id").unwrap_or("?"),
                    topic = entry.text("topic").unwrap_or("?"), tenant = entry.text("tenant").unwrap_or("?"),
                    sqlstate = sqlstate.as_deref().unwrap_or("none"), attempts, max_attempts = policy.max_attempts,
                    retry_in_ms = delay.as_millis() as u64, error = %failure.error,
                    "event refused by Postgres; retry scheduled"
                );
                let due = Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                retries.push((failure, due));
            } else {
                dead.push(failure);
            }
        }
        acks.extend(
            batch
                .entries
                .iter()
                .enumerate()
                .filter(|(index, _)| !refused_at.contains(index))
                .map(|(_, entry)| entry.id.as_str()),
        );
        let applied: Vec<Event> = batch
            .events
            .iter()
            .enumerate()
            .filter(|(index, _)| !refused_at.contains(index))
            .map(|(_, event)| event.clone())
            .collect();
        let touched = Touched::of(&applied);
        let received: Vec<(String, DateTime<Utc>)> =
            applied.iter().map(|event| (event.topic.clone(), event.received_at)).collect();

        for failure in &dead {
            tracing::warn!(
                stream_entry_id = %failure.entry.id, event_id = failure.entry.text("event_id").unwrap_or("?"),
                topic = failure.entry.text("topic").unwrap_or("?"), tenant = failure.entry.text("tenant").unwrap_or("?"),
                kind = failure.kind.as_str(),
                attempts = failure.attempts, error = %failure.error,
                "event moved to dead letters; inspect with `fleet dlq show`, replay with `fleet dlq replay` once the cause is fixed"
            );
        }
        let dead = &dead;
        self.redis_op(stop, |mut redis| async move { failures::dead_letter(&mut redis, &self.keys, dead).await })
            .await?;
        for failure in dead {
            metrics::event_dead_lettered(failure.entry.text("topic").unwrap_or("unknown"), failure.kind.as_str());
        }
        let retries = &retries;
        self.redis_op(
            stop,
            |mut redis| async move { failures::schedule_retries(&mut redis, &self.keys, retries).await },
        )
        .await?;
        for (failure, _) in retries {
            metrics::event_retried(failure.entry.text("topic").unwrap_or("unknown"));
        }
        let mut applied_by_topic: HashMap<&str, u64> = HashMap::new();
        for event in &applied {
            *applied_by_topic.entry(&event.topic).or_default() += 1;
        }
        for (topic, count) in applied_by_topic {
            metrics::events_applied(topic, count);
        }
        // Acknowledged once the cache reflects the batch, so a crash before
        // that redoes the cache work.
        let acks = acks.into_iter().map(str::to_owned).collect();
        settled.send(Settled { touched, acks, received }).await.ok()?;
        metrics::batch(entries.len(), started.elapsed());
        metrics::worker_progress();
        tracing::debug!(entries = entries.len(), dead = dead.len(), retries = retries.len(), "batch settled");
        Some(entries.len())
    }

    /// Applies `batch`, splitting it to isolate the events at fault; returns
    /// (index, error) for each. Waits out outages, including rounds in which
    /// nothing commits for a reason that may be Postgres's fault.
    async fn apply_splitting(&self, batch: &Decoded<'_>, stop: &CancellationToken) -> Option<Vec<(usize, ApplyError)>> {
        let held: Vec<&str> = batch.entries.iter().map(|entry| entry.id.as_str()).collect();
        let mut backoff = infrastructure_backoff();
        let mut waited = false;
        loop {
            let mut round = self.apply_round(batch, &held, stop).await?;
            let outage = if round.unproven() {
                self.probe().await.err().or_else(|| round.take_setup_refusal(batch))
            } else {
                None
            };
            if let Some(error) = outage {
                if !waited {
                    tracing::warn!(
                        events = batch.events.len(), sqlstate = error.sqlstate().as_deref().unwrap_or("none"),
                        error = %error,
                        "no event of the batch commits and the error points at Postgres, not at the data: \
                         waiting as for an outage; check the last migration, grants and the server's log"
                    );
                }
                waited = true;
                self.wait_for_postgres(&error, &held, &mut backoff, stop).await?;
                continue;
            }
            if waited {
                self.health.available();
            }
            return Some(round.into_refused(batch));
        }
    }

    /// Applies `batch` once, split in halves around refused slices, and
    /// tries events refused alone for unexplained reasons again in place.
    async fn apply_round(&self, batch: &Decoded<'_>, held: &[&str], stop: &CancellationToken) -> Option<Round> {
        let mut round = Round { committed: false, refused: Vec::new(), unexplained: Vec::new() };
        // A stack of slices still to apply; a refused slice is split in two.
        let mut ranges: Vec<Range<usize>> = Vec::new();
        ranges.push(0..batch.events.len());
        while let Some(range) = ranges.pop() {
            if range.is_empty() {
                continue;
            }
            let events = &batch.events[range.clone()];
            match self.postgres_op(stop, held, || apply_once(&self.db, events)).await? {
                Ok(()) => round.committed = true,
                Err(error) if range.len() == 1 => round.refused_alone(range.start, error),
                Err(_) => {
                    let middle = range.start + range.len() / 2;
                    ranges.push(middle..range.end);
                    ranges.push(range.start..middle);
                }
            }
        }
        let mut pause = LONE_PAUSE;
        for _ in 1..LONE_TRIES {
            if round.unexplained.is_empty() {
                break;
            }
            // Short enough to finish even when stopping.
            tokio::time::sleep(pause).await;
            pause *= 2;
            for (index, _) in std::mem::take(&mut round.unexplained) {
                let event = &batch.events[index..=index];
                match self.postgres_op(stop, held, || apply_once(&self.db, event)).await? {
                    Ok(()) => round.committed = true,
                    Err(error) => round.refused_alone(index, error),
                }
            }
        }
        Some(round)
    }

    /// Whether Postgres answers a query that writes nothing.
    async fn probe(&self) -> Result<(), ApplyError> {
        sqlx::query("SELECT 1").execute(&self.db).await?;
        Ok(())
    }
}

/// What one round over a batch found.
struct Round {
    /// Some slice of the batch committed: Postgres takes writes.
    committed: bool,
    /// Events refused alone for their data (or judged so).
    refused: Vec<(usize, ApplyError)>,
    /// Events refused alone for another reason, not yet judged.
    unexplained: Vec<(usize, ApplyError)>,
}

impl Round {
    fn refused_alone(&mut self, index: usize, error: ApplyError) {
        match error {
            ApplyError::Event(_) => self.refused.push((index, error)),
            _ => self.unexplained.push((index, error)),
        }
    }

    /// Whether events were refused for unexplained reasons while nothing
    /// committed: then Postgres itself may be at fault.
    fn unproven(&self) -> bool {
        !self.committed && !self.unexplained.is_empty()
    }

    /// Removes and returns a refusal with a SQLSTATE of the deploy
    /// ([`SETUP_CLASSES`]), which would refuse every event alike. An event
    /// refused on an earlier attempt does not count: it was refused while
    /// others committed (that is how it got a retry), so it stays at fault.
    fn take_setup_refusal(&mut self, batch: &Decoded<'_>) -> Option<ApplyError> {
        let setup = self.unexplained.iter().position(|(index, error)| {
            batch.entries[*index].attempts() == 0
                && error.sqlstate().is_some_and(|code| SETUP_CLASSES.iter().any(|class| code.starts_with(class)))
        })?;
        Some(self.unexplained.swap_remove(setup).1)
    }

    /// Every event refused alone; the unexplained ones are the events'
    /// fault once Postgres is not to blame.
    fn into_refused(mut self, batch: &Decoded<'_>) -> Vec<(usize, ApplyError)> {
        for (index, error) in &self.unexplained {
            let entry = batch.entries[*index];
            tracing::warn!(
                stream_entry_id = %entry.id, event_id = entry.text("event_id").unwrap_or("?"),
                topic = entry.text("topic").unwrap_or("?"), tenant = entry.text("tenant").unwrap_or("?"),
                sqlstate = error.sqlstate().as_deref().unwrap_or("none"), error = %error,
                others_committed = self.committed,
                "Postgres refuses this event alone on every try, for a reason that does not point at Postgres: \
                 the event is at fault"
            );
        }
        self.refused.append(&mut self.unexplained);
        self.refused
    }
}

/// An error for a dead letter and the logs: the message and its SQLSTATE.
pub(super) fn describe(error: &ApplyError) -> String {
    match error.sqlstate() {
        Some(code) => format!("{error} (SQLSTATE {code})"),
        None => error.to_string(),
    }
}

/// One transaction for a slice of a batch.
async fn apply_once(db: &PgPool, events: &[Event]) -> Result<(), ApplyError> {
    let mut tx = db.begin().await?;
    fleet_jobs::apply_batch(&mut tx, events).await?;
    tx.commit().await?;
    Ok(())
}
/// Decodes an entry; the error says why it can never be applied.
fn decode(entry: &Entry) -> Result<Event, String> {
    let body = entry
        .field("body")
        .filter(|body| !body.is_empty())
        .ok_or("stream entry has no body (deleted, or not written by the intake)")?;
    let tenant = entry.text("tenant").unwrap_or("unknown");
    let received_at = entry
        .text("received_at")
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map_or_else(Utc::now, |stamp| stamp.with_timezone(&Utc));
    Event::decode(body, tenant, received_at, &entry.id).map_err(|err| err.to_string())
}
