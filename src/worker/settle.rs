//! Settling a batch: every entry ends applied (and acknowledged after the
//! cache refresh), scheduled for a retry, or dead-lettered.
//!
//! A [`Settler`] holds only what settling needs: the worker's
//! [`Dependencies`] and its retry policy. Each entry of a batch becomes one
//! [`Settling`]: the entry, its decoded event (or why it has none) and the
//! attempts it already cost. What becomes of each is decided by [`plan`], a
//! pure function of those, of which entries out of attempts Postgres
//! already holds, and of which Postgres refused ([`Fault`] says why an
//! event failed). The I/O around it lives here too: delivery counts, the
//! already-applied lookup, applying with splitting around the refused
//! events, and writing retries and dead letters.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fleet_jobs::{ApplyError, DecodeError, Event};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::dependencies::{infrastructure_backoff, Dependencies, Held};
use super::refresh::Settled;
use super::RetryPolicy;
use crate::read_model::cached::Touched;
use crate::redis::entry::Entry;
use crate::redis::failures::{self, Failure, FailureKind};
use crate::redis::keys::ShardKeys;
use crate::redis::stream;
use crate::telemetry::metrics;

/// Tries of an event refused alone for an unexplained reason before it is
/// judged; a deadlock or a serialization failure passes on a later try.
const LONE_TRIES: u32 = 3;
/// The pause before the second of those tries, doubled before each next.
const LONE_PAUSE: Duration = Duration::from_millis(50);

/// What settling a batch reaches.
pub(super) struct Settler<'a> {
    pub(super) dependencies: &'a Dependencies,
    pub(super) policy: &'a RetryPolicy,
}

/// Why an entry can never be applied.
#[derive(Debug, thiserror::Error)]
pub(super) enum Undecodable {
    #[error("stream entry has no body (deleted, or not written by the intake)")]
    NoBody,
    #[error(transparent)]
    Event(#[from] DecodeError),
}

/// One entry of a batch being settled.
#[derive(Debug)]
pub(super) struct Settling<'a> {
    pub(super) entry: &'a Entry,
    pub(super) event: Result<Event, Undecodable>,
    /// The attempts it already cost: failures and crashes.
    pub(super) prior_attempts: u32,
}

impl<'a> Settling<'a> {
    fn new(entry: &'a Entry, deliveries: &HashMap<String, u32>) -> Self {
        let crashes = deliveries.get(&entry.id).map_or(0, |count| count.saturating_sub(1));
        Self { entry, event: decode(entry), prior_attempts: entry.failure.attempts + crashes }
    }

    /// Its event, if it has one and attempts left: it is to be applied.
    fn to_apply(&self, policy: &RetryPolicy) -> Option<&Event> {
        self.event.as_ref().ok().filter(|_| policy.allows_another(self.prior_attempts))
    }

    /// Whether it has an event but no attempt left (through crashes).
    fn exhausted(&self, policy: &RetryPolicy) -> bool {
        self.event.is_ok() && !policy.allows_another(self.prior_attempts)
    }
}

/// The entries of a batch to apply, by their index in the batch.
struct ToApply<'a, 'b> {
    shard: &'a ShardKeys,
    batch: &'a [Settling<'b>],
    at: Vec<usize>,
}

impl ToApply<'_, '_> {
    fn entry(&self, index: usize) -> &Entry {
        self.batch[self.at[index]].entry
    }

    /// The events of a slice of this list, to apply together.
    fn events(&self, range: Range<usize>) -> Vec<Event> {
        self.at[range].iter().filter_map(|&index| self.batch[index].event.as_ref().ok().cloned()).collect()
    }
}

impl Settler<'_> {
    /// Settles a batch: applies what can be applied, schedules retries and
    /// dead-letters the rest, then hands it to the cache refresh, which
    /// acknowledges it. Returns the number of entries settled, or `None`
    /// when stopped while a dependency was down (the entries stay
    /// pending). Every log line of the batch carries its consumer, size and
    /// first and last entry ids.
    pub(super) async fn settle(
        &self,
        shard: &ShardKeys,
        entries: &[Entry],
        count_deliveries: bool,
        stop: &CancellationToken,
        settled: &mpsc::Sender<Settled>,
    ) -> Option<usize> {
        let span = tracing::info_span!(
            "batch",
            consumer = %self.dependencies.consumer,
            shard = shard.index(),
            entries = entries.len(),
            first = entries.first().map_or("", |entry| entry.id.as_str()),
            last = entries.last().map_or("", |entry| entry.id.as_str()),
        );
        async move {
            let started = Instant::now();
            let deliveries =
                if count_deliveries { self.delivery_counts(shard, entries, stop).await? } else { HashMap::new() };
            let batch: Vec<Settling<'_>> = entries.iter().map(|entry| Settling::new(entry, &deliveries)).collect();
            // Out of attempts through crashes. If the event was applied and only
            // its acknowledgement was lost, there is nothing to give up.
            let already_applied = self.already_applied(&batch, stop).await?;
            let at = (0..batch.len()).filter(|&index| batch[index].to_apply(self.policy).is_some()).collect();
            let to_apply = ToApply { shard, batch: &batch, at };
            let refused: Vec<(usize, Fault)> = self
                .apply_splitting(&to_apply, stop)
                .await?
                .into_iter()
                .map(|(index, error)| (to_apply.at[index], Fault::refused(&error)))
                .collect();
            let plan = plan(&batch, &already_applied, refused, self.policy, Utc::now());
            self.record_failures(shard, &plan, stop).await?;
            settled.send(plan.settled(shard)).await.ok()?;
            metrics::batch(entries.len(), started.elapsed());
            metrics::worker_progress();
            tracing::debug!(
                entries = entries.len(),
                dead = plan.dead_letters.len(),
                retries = plan.retries.len(),
                "batch settled"
            );
            Some(entries.len())
        }
        .instrument(span)
        .await
    }

    /// How many times each entry was delivered to this consumer.
    async fn delivery_counts(
        &self,
        shard: &ShardKeys,
        entries: &[Entry],
        stop: &CancellationToken,
    ) -> Option<HashMap<String, u32>> {
        let consumer = &self.dependencies.consumer;
        let ids: Vec<&str> = entries.iter().map(|entry| entry.id.as_str()).collect();
        let ids = &ids;
        self.dependencies
            .redis_op(stop, |mut redis| async move { stream::delivery_counts(&mut redis, shard, consumer, ids).await })
            .await
    }

    /// Logs, writes and counts the plan's retries and dead letters.
    async fn record_failures(&self, shard: &ShardKeys, plan: &Plan<'_>, stop: &CancellationToken) -> Option<()> {
        let policy = self.policy;
        for retry in &plan.retries {
            let event = &retry.entry.event;
            tracing::warn!(
                stream_entry_id = %retry.entry.id, event_id = %event.event_id, topic = %event.topic,
                tenant = %event.tenant, sqlstate = retry.fault.sqlstate().unwrap_or("none"), attempts = retry.attempts,
                max_attempts = policy.max_attempts, retry_in_ms = retry.delay.as_millis() as u64,
                error = %retry.fault.message(retry.entry, retry.attempts),
                "event refused by Postgres; retry scheduled"
            );
        }
        let dead = &plan.dead_letters;
        for failure in dead {
            let event = &failure.entry.event;
            tracing::warn!(
                stream_entry_id = %failure.entry.id, event_id = %event.event_id, topic = %event.topic,
                tenant = %event.tenant, kind = failure.kind.as_str(), attempts = failure.attempts, error = %failure.error,
                "event moved to dead letters; inspect with `fleet dlq show`, replay with `fleet dlq replay` once the cause is fixed"
            );
        }
        let dependencies = self.dependencies;
        dependencies
            .redis_op(stop, |mut redis| async move { failures::dead_letter(&mut redis, shard, dead).await })
            .await?;
        for failure in dead {
            metrics::event_dead_lettered(&failure.entry.event.topic, failure.kind.as_str());
        }
        let retries: Vec<(Failure<'_>, DateTime<Utc>)> =
            plan.retries.iter().map(|retry| (retry.failure(), retry.due)).collect();
        let retries = &retries;
        dependencies
            .redis_op(stop, |mut redis| async move { failures::schedule_retries(&mut redis, shard, retries).await })
            .await?;
        for (failure, _) in retries {
            metrics::event_retried(&failure.entry.event.topic);
        }
        Some(())
    }

    /// Which of the batch's exhausted entries' events Postgres already
    /// holds, by index; none if it cannot tell (they are then
    /// dead-lettered). `None` if stopped.
    async fn already_applied(&self, batch: &[Settling<'_>], stop: &CancellationToken) -> Option<HashSet<usize>> {
        let exhausted: Vec<usize> = (0..batch.len()).filter(|&index| batch[index].exhausted(self.policy)).collect();
        if exhausted.is_empty() {
            return Some(HashSet::new());
        }
        let key = |index: usize| {
            batch[index].event.as_ref().ok().map(|event| (event.tenant_id.clone(), event.event_id.clone()))
        };
        let keys: Vec<(String, String)> = exhausted.iter().filter_map(|&index| key(index)).collect();
        let db = &self.dependencies.db;
        let applied = match self
            .dependencies
            .postgres_op(stop, Held::NOTHING, || fleet_jobs::already_applied(db, &keys))
            .await?
        {
            Ok(applied) => applied,
            Err(error) => {
                tracing::warn!(
                    sqlstate = error.sqlstate().as_deref().unwrap_or("none"), error = %error,
                    "could not tell whether events out of attempts were applied; dead-lettering them"
                );
                HashSet::new()
            }
        };
        Some(exhausted.into_iter().filter(|&index| key(index).is_some_and(|key| applied.contains(&key))).collect())
    }

    /// Applies `batch`, splitting it to isolate the events at fault; returns
    /// (index, error) for each. Waits out outages, including rounds in which
    /// nothing commits for a reason that may be Postgres's fault.
    async fn apply_splitting(
        &self,
        batch: &ToApply<'_, '_>,
        stop: &CancellationToken,
    ) -> Option<Vec<(usize, ApplyError)>> {
        let ids: Vec<&str> = (0..batch.at.len()).map(|index| batch.entry(index).id.as_str()).collect();
        let held = Held { shard: Some(batch.shard), ids: &ids };
        let mut backoff = infrastructure_backoff();
        let mut waited = false;
        loop {
            let mut round = self.apply_round(batch, held, stop).await?;
            let outage = if round.unproven() {
                self.dependencies.probe_postgres().await.err().or_else(|| round.take_setup_refusal(batch))
            } else {
                None
            };
            if let Some(error) = outage {
                if !waited {
                    tracing::warn!(
                        events = batch.at.len(), sqlstate = error.sqlstate().as_deref().unwrap_or("none"),
                        error = %error,
                        "no event of the batch commits and the error points at Postgres, not at the data: \
                         waiting as for an outage; check the last migration, grants and the server's log"
                    );
                }
                waited = true;
                self.dependencies.wait_for_postgres(&error, held, &mut backoff, stop).await?;
                continue;
            }
            if waited {
                self.dependencies.health.available();
            }
            return Some(round.into_refused(batch));
        }
    }

    /// Applies `batch` once, split in halves around refused slices, and
    /// tries events refused alone for unexplained reasons again in place.
    async fn apply_round(&self, batch: &ToApply<'_, '_>, held: Held<'_>, stop: &CancellationToken) -> Option<Round> {
        let db = &self.dependencies.db;
        let mut round = Round { committed: false, refused: Vec::new(), unexplained: Vec::new() };
        // A stack of slices still to apply; a refused slice is split in two.
        let mut ranges: Vec<Range<usize>> = Vec::new();
        ranges.push(0..batch.at.len());
        while let Some(range) = ranges.pop() {
            if range.is_empty() {
                continue;
            }
            let events = batch.events(range.clone());
            match self.dependencies.postgres_op(stop, held, || apply_once(db, &events)).await? {
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
                let event = batch.events(index..index + 1);
                match self.dependencies.postgres_op(stop, held, || apply_once(db, &event)).await? {
                    Ok(()) => round.committed = true,
                    Err(error) => round.refused_alone(index, error),
                }
            }
        }
        Some(round)
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
    /// ([`ApplyError::points_at_setup`]), which would refuse every event alike. An event
    /// refused on an earlier attempt does not count: it was refused while
    /// others committed (that is how it got a retry), so it stays at fault.
    fn take_setup_refusal(&mut self, batch: &ToApply<'_, '_>) -> Option<ApplyError> {
        let setup = self
            .unexplained
            .iter()
            .position(|(index, error)| batch.entry(*index).failure.attempts == 0 && error.points_at_setup())?;
        Some(self.unexplained.swap_remove(setup).1)
    }

    /// Every event refused alone; the unexplained ones are the events'
    /// fault once Postgres is not to blame.
    fn into_refused(mut self, batch: &ToApply<'_, '_>) -> Vec<(usize, ApplyError)> {
        for (index, error) in &self.unexplained {
            let entry = batch.entry(*index);
            tracing::warn!(
                stream_entry_id = %entry.id, event_id = %entry.event.event_id,
                topic = %entry.event.topic, tenant = %entry.event.tenant,
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

/// One transaction for a slice of a batch.
async fn apply_once(db: &PgPool, events: &[Event]) -> Result<(), ApplyError> {
    let mut tx = db.begin().await?;
    fleet_jobs::apply_batch(&mut tx, events).await?;
    tx.commit().await?;
    Ok(())
}
/// Decodes an entry; the error says why it can never be applied.
fn decode(entry: &Entry) -> Result<Event, Undecodable> {
    let event = &entry.event;
    if event.body.is_empty() {
        return Err(Undecodable::NoBody);
    }
    let tenant = if event.tenant.is_empty() { "unknown" } else { &event.tenant };
    let received_at = event.received_at().unwrap_or_else(Utc::now);
    Ok(Event::decode(&event.body, tenant, received_at, &entry.id)?)
}

/// Why an event failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fault {
    /// Not an applicable event at all: it can never succeed, so no retries.
    Malformed(String),
    /// Postgres refused its rows: the error and its SQLSTATE.
    Refused { error: String, sqlstate: Option<String> },
    /// Out of attempts because the workers holding it kept stopping before
    /// finishing it.
    Crashed,
}

impl Fault {
    pub(super) fn refused(error: &ApplyError) -> Self {
        Self::Refused { error: error.to_string(), sqlstate: error.sqlstate() }
    }

    pub(super) fn kind(&self) -> FailureKind {
        match self {
            Self::Malformed(_) => FailureKind::Malformed,
            Self::Refused { .. } => FailureKind::Event,
            Self::Crashed => FailureKind::Crashed,
        }
    }

    pub(super) fn sqlstate(&self) -> Option<&str> {
        match self {
            Self::Refused { sqlstate, .. } => sqlstate.as_deref(),
            _ => None,
        }
    }

    /// The error a dead letter or a retry of `entry` records, after
    /// `attempts` attempts.
    pub(super) fn message(&self, entry: &Entry, attempts: u32) -> String {
        match self {
            Self::Malformed(reason) => reason.clone(),
            Self::Refused { error, sqlstate: Some(code) } => format!("{error} (SQLSTATE {code})"),
            Self::Refused { error, sqlstate: None } => error.clone(),
            Self::Crashed => {
                let last =
                    entry.failure.error.as_ref().map(|error| format!("; last error: {error}")).unwrap_or_default();
                format!("gave up after {attempts} attempts; the workers holding it stopped before finishing it{last}")
            }
        }
    }
}

/// An entry to append to the stream again once `due`.
#[derive(Debug)]
pub(super) struct Retry<'a> {
    pub(super) entry: &'a Entry,
    pub(super) due: DateTime<Utc>,
    /// From the plan's `now` to `due`.
    pub(super) delay: Duration,
    pub(super) fault: Fault,
    /// Attempts made, this one included.
    pub(super) attempts: u32,
}

impl<'a> Retry<'a> {
    pub(super) fn failure(&self) -> Failure<'a> {
        Failure {
            entry: self.entry,
            kind: self.fault.kind(),
            error: self.fault.message(self.entry, self.attempts),
            attempts: self.attempts,
        }
    }
}

/// What becomes of each entry of a batch.
#[derive(Debug, Default)]
pub(super) struct Plan<'a> {
    /// Entries to acknowledge once the cache refresh covers them.
    pub(super) acks: Vec<&'a Entry>,
    /// The events this batch committed.
    pub(super) applied: Vec<&'a Event>,
    pub(super) retries: Vec<Retry<'a>>,
    pub(super) dead_letters: Vec<Failure<'a>>,
}

impl Plan<'_> {
    /// What the cache refresh takes over: the batch's touched keys, the
    /// entries to acknowledge once refreshed, and when each applied event
    /// was received. Counts the applied events.
    fn settled(&self, shard: &ShardKeys) -> Settled {
        let applied: Vec<Event> = self.applied.iter().map(|&event| event.clone()).collect();
        let mut applied_by_topic: HashMap<&str, u64> = HashMap::new();
        for event in &applied {
            *applied_by_topic.entry(&event.topic).or_default() += 1;
        }
        for (topic, count) in applied_by_topic {
            metrics::events_applied(topic, count);
        }
        let received = applied.iter().map(|event| (event.topic.clone(), event.received_at)).collect();
        let acks = self.acks.iter().map(|entry| entry.id.clone()).collect();
        Settled { touched: Touched::of(&applied), acks: [(shard.index(), acks)].into(), received }
    }
}

/// Decides, without any I/O, what becomes of each entry of a batch once it
/// was applied. `already_applied` holds the entries out of attempts whose
/// event Postgres already holds, `refused` those Postgres refused in this
/// batch (in the order found), both by index in `batch`. Every other entry
/// with an event and attempts left was applied.
pub(super) fn plan<'a>(
    batch: &'a [Settling<'a>],
    already_applied: &HashSet<usize>,
    refused: Vec<(usize, Fault)>,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
) -> Plan<'a> {
    let mut plan = Plan::default();
    let dead = |entry: &'a Entry, fault: Fault, attempts: u32| Failure {
        entry,
        kind: fault.kind(),
        error: fault.message(entry, attempts),
        attempts,
    };
    for settling in batch {
        if let Err(reason) = &settling.event {
            let fault = Fault::Malformed(reason.to_string());
            plan.dead_letters.push(dead(settling.entry, fault, settling.prior_attempts + 1));
        }
    }
    for (index, settling) in batch.iter().enumerate().filter(|(_, settling)| settling.exhausted(policy)) {
        if already_applied.contains(&index) {
            plan.acks.push(settling.entry);
        } else {
            plan.dead_letters.push(dead(settling.entry, Fault::Crashed, settling.prior_attempts));
        }
    }
    let refused_at: HashSet<usize> = refused.iter().map(|(index, _)| *index).collect();
    for (index, fault) in refused {
        let (entry, attempts) = (batch[index].entry, batch[index].prior_attempts + 1);
        if policy.allows_another(attempts) {
            let delay = policy.delay(attempts);
            let due = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            plan.retries.push(Retry { entry, due, delay, fault, attempts });
        } else {
            plan.dead_letters.push(dead(entry, fault, attempts));
        }
    }
    for (_, settling) in batch.iter().enumerate().filter(|(index, _)| !refused_at.contains(index)) {
        if let Some(event) = settling.to_apply(policy) {
            plan.acks.push(settling.entry);
            plan.applied.push(event);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::entry::EventFields;

    const BODY: &str = include_str!("../../tests/fixtures/thinkific/enrollment.created.json");

    fn entry(id: &str, body: &str) -> Entry {
        let event =
            EventFields { body: body.as_bytes().to_vec(), tenant: "184532".to_owned(), ..EventFields::default() };
        Entry { id: id.to_owned(), event, ..Entry::default() }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy { base: Duration::from_secs(1), factor: 2.0, cap: Duration::from_secs(60), max_attempts: 3 }
    }

    fn refused() -> Fault {
        Fault::Refused { error: "check constraint violated".to_owned(), sqlstate: Some("23514".to_owned()) }
    }

    /// One valid entry with `prior` attempts, planned with the given
    /// refusal and already-applied answer.
    fn plan_one(prior: u32, refusal: Option<Fault>, applied: bool, check: impl FnOnce(&Plan<'_>, &Entry)) {
        let entries = [entry("1-0", BODY)];
        let batch = settling(&entries, prior);
        assert!(batch[0].event.is_ok(), "{:?}", batch[0].event);
        let already: HashSet<usize> = if applied { HashSet::from([0]) } else { HashSet::new() };
        let refusals = refusal.map(|fault| vec![(0, fault)]).unwrap_or_default();
        let plan = plan(&batch, &already, refusals, &policy(), Utc::now());
        check(&plan, &entries[0]);
    }

    /// Each entry decoded, with `prior` attempts.
    fn settling(entries: &[Entry], prior: u32) -> Vec<Settling<'_>> {
        entries.iter().map(|entry| Settling { entry, event: decode(entry), prior_attempts: prior }).collect()
    }

    #[test]
    fn a_malformed_entry_is_dead_lettered_at_once() {
        let entries = [entry("1-0", "not json")];
        let batch = settling(&entries, 0);
        let plan = plan(&batch, &HashSet::new(), Vec::new(), &policy(), Utc::now());
        assert!(plan.acks.is_empty() && plan.retries.is_empty() && plan.applied.is_empty());
        assert_eq!(plan.dead_letters.len(), 1);
        assert_eq!(plan.dead_letters[0].kind, FailureKind::Malformed);
        assert_eq!(plan.dead_letters[0].attempts, 1);
    }

    #[test]
    fn a_refused_event_with_attempts_left_is_retried_when_the_policy_says() {
        let now = Utc::now();
        let entries = [entry("1-0", BODY)];
        let batch = settling(&entries, 1);
        let plan = plan(&batch, &HashSet::new(), vec![(0, refused())], &policy(), now);
        assert!(plan.acks.is_empty() && plan.dead_letters.is_empty() && plan.applied.is_empty());
        let [retry] = plan.retries.as_slice() else { panic!("{:?}", plan.retries) };
        assert_eq!(retry.attempts, 2);
        assert_eq!(retry.fault, refused());
        // The second attempt waits base × factor, plus up to as much jitter.
        let delay = (retry.due - now).to_std().unwrap_or_default();
        assert!(delay >= Duration::from_secs(2) && delay <= Duration::from_secs(4), "{delay:?}");
        let failure = retry.failure();
        assert_eq!(failure.kind, FailureKind::Event);
        assert_eq!(failure.error, "check constraint violated (SQLSTATE 23514)");
    }

    #[test]
    fn a_refused_event_at_its_last_attempt_is_dead_lettered() {
        plan_one(2, Some(refused()), false, |plan, _| {
            assert!(plan.acks.is_empty() && plan.retries.is_empty());
            let [dead] = plan.dead_letters.as_slice() else { panic!("{:?}", plan.dead_letters) };
            assert_eq!((dead.kind, dead.attempts), (FailureKind::Event, 3));
            assert_eq!(dead.error, "check constraint violated (SQLSTATE 23514)");
        });
    }

    #[test]
    fn an_event_out_of_attempts_through_crashes_but_applied_is_acknowledged() {
        plan_one(3, None, true, |plan, entry| {
            assert_eq!(plan.acks.iter().map(|acked| &acked.id).collect::<Vec<_>>(), [&entry.id]);
            assert!(plan.dead_letters.is_empty() && plan.retries.is_empty());
            // Applied by an earlier attempt, not by this batch.
            assert!(plan.applied.is_empty());
        });
    }

    #[test]
    fn an_event_out_of_attempts_through_crashes_and_not_applied_is_dead_lettered() {
        plan_one(3, None, false, |plan, _| {
            assert!(plan.acks.is_empty() && plan.retries.is_empty());
            let [dead] = plan.dead_letters.as_slice() else { panic!("{:?}", plan.dead_letters) };
            assert_eq!((dead.kind, dead.attempts), (FailureKind::Crashed, 3));
            assert!(dead.error.starts_with("gave up after 3 attempts"), "{}", dead.error);
        });
    }

    #[test]
    fn an_applied_event_is_acknowledged() {
        plan_one(0, None, false, |plan, entry| {
            assert_eq!(plan.acks.iter().map(|acked| &acked.id).collect::<Vec<_>>(), [&entry.id]);
            assert_eq!(plan.applied.len(), 1);
            assert!(plan.dead_letters.is_empty() && plan.retries.is_empty());
        });
    }
}
