//! The worker: consume the events stream in batches, apply each batch to
//! Postgres in one transaction, and settle every entry: applied, scheduled
//! for a retry, or dead-lettered.
//!
//! The loop, in order of what can go wrong:
//! - Each batch is read with `XREADGROUP`, applied, committed, and only then
//!   acknowledged. A crash before the `XACK` leaves the entries pending; they
//!   are applied again later, which changes nothing because every write is
//!   versioned (see `fleet_jobs::apply_batch`).
//! - **The event's fault** (Postgres refuses its rows): the batch is split in
//!   halves until the refused events are isolated, so the others commit. A
//!   refused event costs one attempt and is scheduled for a retry with
//!   exponential backoff and jitter ([`retry`]); after the last attempt
//!   it is dead-lettered. An entry that is not an applicable event at all is
//!   dead-lettered at once. `/readyz` stays ready meanwhile.
//! - **The infrastructure's fault** (Postgres or Redis unreachable, timeouts,
//!   shutting down, out of resources): no attempt is spent. The worker keeps
//!   the batch in hand and retries it with backoff (`backon`) until the
//!   dependency is back, resets the entries' idle time so no other worker
//!   mistakes the wait for a crash, and reports the outage in its logs and
//!   on `/readyz`.
//! - **Unexplained refusals** (any other SQLSTATE: a trigger's `RAISE`, a
//!   deadlock, an internal error, a missing column): the batch is split as
//!   for the event's fault. An event still refused alone is tried twice more
//!   in place (a deadlock or serialization failure passes), then judged:
//!   the event's fault if another slice of its batch committed, if it was
//!   already refused on an earlier attempt, or if Postgres answers a probe
//!   and the SQLSTATE does not point at the deploy (classes 0A, 25, 28, 3D,
//!   3F, 42: a missing table or column, a revoked grant, a read-only
//!   transaction). Otherwise nothing commits for a reason that would fail
//!   every event alike, and the batch waits as for an outage. So one event's
//!   data never stalls the fleet, and a broken deploy is not mistaken for
//!   thousands of bad events.
//! - **Crashes**: entries idle on a consumer for `claim_idle` are taken over
//!   with `XAUTOCLAIM`. An entry's delivery count is its number of attempts
//!   across crashes, so a poison entry that kills workers is dead-lettered
//!   after `max_attempts` instead of looping forever.
//! - **One name, one worker**: a worker holds a lease on its consumer name,
//!   renewed by a heartbeat; a second live worker with the same name is
//!   refused.
//! - **Fresh dashboards**: after a batch commits, a task beside the event
//!   loop invalidates the union of its cache tags once, prewarms the keys the
//!   dashboard reads (see `crate::read_model::cached`) and calls the revalidation hook;
//!   only then are the entries acknowledged. Batches that commit while it
//!   works are covered together by its next round.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::ops::Range;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use fleet_jobs::{ApplyError, Event};
use redis::aio::ConnectionManager;
use redis::RedisError;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::health::{Dependency, Health};
use self::revalidate::Revalidator;
use crate::health::Waiter;
use crate::read_model::cached::{Cached, Touched};
use crate::redis::failures::{self, Failure, FailureKind};
use crate::redis::keys::{Keys, GROUP};
use crate::redis::stream::{self, Entry, ReadFrom};
use crate::redis::{cache, leases};
use crate::systemd::Progress;
use crate::telemetry::metrics;

pub mod backlog;
pub mod health;
pub mod retry;
pub mod revalidate;

pub use retry::RetryPolicy;

/// The worker's settings in their validated form.
#[derive(Debug, Clone)]
pub struct Settings {
    pub consumer_name: String,
    pub batch_size: usize,
    pub block: Duration,
    pub stream_max_len: u64,
    pub claim_idle: Duration,
    pub lease: Duration,
    pub retry: RetryPolicy,
    pub cache_ttls: crate::redis::cache::Ttls,
}

/// Host name and process id: unique among live workers without any set-up.
pub fn default_consumer_name() -> String {
    let host = gethostname::gethostname().to_string_lossy().replace(char::is_whitespace, "-");
    format!("{host}-{}", std::process::id())
}

/// How often the stream is trimmed, at most.
const TRIM_INTERVAL: Duration = Duration::from_secs(5);
/// How often progress is logged at info level.
const REPORT_INTERVAL: Duration = Duration::from_secs(30);
/// The longest pause between two tries of an unavailable dependency.
const MAX_PAUSE: Duration = Duration::from_secs(30);
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

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(
        "consumer name `{0}` is held by another live worker; give this one a different \
         FLEET_CONSUMER_NAME, or stop the other one first"
    )]
    ConsumerNameInUse(String),
    #[error("another worker took consumer name `{0}` while this one could not renew it; stopped so the two do not share entries")]
    ConsumerNameLost(String),
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// Shutdown was asked for while the worker waited for a dependency.
    #[error("stopped while waiting for Redis")]
    Stopped,
}

pub struct Worker {
    db: PgPool,
    /// Blocking reads only: a blocked `XREADGROUP` would stall anything
    /// else sent on the same connection.
    reader: ConnectionManager,
    redis: ConnectionManager,
    keys: Keys,
    settings: Settings,
    health: Health,
    lease_token: String,
    revalidator: Option<Revalidator>,
    /// Advanced each time the loop gets an answer; systemd's watchdog
    /// (`crate::systemd`) is fed only while it moves.
    progress: Progress,
}

/// A committed batch waiting for its cache refresh and acknowledgement.
struct Settled {
    touched: Touched,
    acks: Vec<String>,
    /// (topic, received at the intake) of each applied event, for the
    /// freshness histogram once the refresh covering it completes.
    received: Vec<(String, DateTime<Utc>)>,
}

/// Entries of one batch, decoded, with the attempts they already cost.
struct Decoded<'a> {
    entries: Vec<&'a Entry>,
    events: Vec<Event>,
    prior_attempts: Vec<u32>,
}

impl Worker {
    /// Connects to Redis, makes sure the consumer group exists, and takes
    /// the lease on the consumer name. A name whose holder died is free
    /// again once its lease runs out, so this waits up to one lease period
    /// before refusing. Waits for Redis while it is unreachable.
    pub async fn connect(db: PgPool, redis_url: &str, keys: Keys, settings: Settings) -> Result<Self, WorkerError> {
        // The caller's pool is connected: only Redis is still to be reached.
        let health = Health::requiring(&[Dependency::Postgres, Dependency::Redis]);
        health.up(Dependency::Postgres);
        Self::connect_waiting(db, redis_url, keys, settings, health, &CancellationToken::new()).await
    }

    /// [`Worker::connect`] reporting to `health` while it waits for Redis
    /// (a wait at any step, the lease included, is logged once and retried
    /// with backoff); [`WorkerError::Stopped`] if `stop` fires first.
    pub async fn connect_waiting(
        db: PgPool,
        redis_url: &str,
        keys: Keys,
        settings: Settings,
        health: Health,
        stop: &CancellationToken,
    ) -> Result<Self, WorkerError> {
        let connect = |timeout| crate::redis::connect_waiting(redis_url, timeout, &health, stop);
        let reader = connect(settings.block + Duration::from_secs(5)).await.ok_or(WorkerError::Stopped)?;
        let redis = connect(Duration::from_secs(5)).await.ok_or(WorkerError::Stopped)?;
        let address = crate::urls::shown_address(redis_url);
        let mut waiter = Waiter::new(&health, Dependency::Redis, &address);
        loop {
            match stream::ensure_group(&mut redis.clone(), &keys).await {
                Ok(()) => break,
                Err(err) => waiter.pause(&err, stop).await.ok_or(WorkerError::Stopped)?,
            }
        }
        let lease_token = uuid::Uuid::new_v4().to_string();
        let consumer = &settings.consumer_name;
        // Refused only once the name was seen held for a whole lease period
        // with Redis answering: while Redis is down, the holder cannot renew
        // either, so its lease gets a full period again once Redis is back.
        let mut deadline = None;
        let mut warned = false;
        loop {
            match leases::hold_consumer_lease(&mut redis.clone(), &keys, consumer, &lease_token, settings.lease).await {
                Ok(true) => break,
                Ok(false) => {
                    waiter.reached();
                    let deadline =
                        *deadline.get_or_insert_with(|| Instant::now() + settings.lease + Duration::from_millis(500));
                    if Instant::now() >= deadline {
                        return Err(WorkerError::ConsumerNameInUse(consumer.clone()));
                    }
                    if !warned {
                        tracing::warn!(%consumer, "consumer name is held; waiting for its lease to run out");
                        warned = true;
                    }
                    tokio::select! {
                        () = stop.cancelled() => return Err(WorkerError::Stopped),
                        () = tokio::time::sleep((settings.lease / 5).min(Duration::from_millis(500))) => {}
                    }
                }
                Err(err) => {
                    deadline = None;
                    waiter.pause(&err, stop).await.ok_or(WorkerError::Stopped)?;
                }
            }
        }
        metrics::install();
        waiter.reached();
        Ok(Self {
            db,
            reader,
            redis,
            keys,
            settings,
            health,
            lease_token,
            revalidator: None,
            progress: Progress::new(),
        })
    }

    /// Also POST each batch's invalidated tags to the revalidation hook.
    pub fn with_revalidator(mut self, revalidator: Revalidator) -> Self {
        self.revalidator = Some(revalidator);
        self
    }

    /// The worker's health, for `/readyz`.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The loop's progress, for systemd's watchdog.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Consumes until `shutdown` fires, then finishes the batch in hand
    /// (unless a dependency is down: then it stays pending) and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let consumer = self.settings.consumer_name.clone();
        let stop = shutdown.child_token();
        let heartbeat = tokio::spawn(heartbeat(
            self.redis.clone(),
            self.keys.clone(),
            consumer.clone(),
            self.lease_token.clone(),
            self.settings.lease,
            stop.clone(),
        ));
        let sampler = tokio::spawn(backlog::run(self.redis.clone(), self.keys.clone(), stop.clone()));
        tracing::info!(
            %consumer, group = GROUP, stream = %self.keys.events(),
            max_attempts = self.settings.retry.max_attempts, claim_idle_ms = self.settings.claim_idle.as_millis() as u64,
            "worker started"
        );
        let (settled, to_refresh) = mpsc::channel::<Settled>(2);
        tokio::join!(self.consume(&stop, settled), self.refresh_and_acknowledge(to_refresh, &stop));
        stop.cancel();
        let lost = heartbeat.await.unwrap_or(false);
        let _ = sampler.await;
        let mut redis = self.redis.clone();
        if let Err(err) = leases::release_consumer_lease(&mut redis, &self.keys, &consumer, &self.lease_token).await {
            tracing::warn!(error = %err, %consumer, "could not release the consumer name; it frees itself when the lease runs out");
        }
        tracing::info!(%consumer, "worker stopped");
        if lost {
            return Err(WorkerError::ConsumerNameLost(consumer));
        }
        Ok(())
    }

    async fn consume(&self, stop: &CancellationToken, settled: mpsc::Sender<Settled>) {
        let consumer = &self.settings.consumer_name;
        // Entries this name holds from an earlier life were interrupted:
        // their deliveries count as attempts. Later re-reads of our own
        // pending entries (after a failed read) do not.
        let mut read_from = ReadFrom::own_pending();
        let mut count_deliveries = true;
        let mut read_backoff = infrastructure_backoff();
        let mut maintenance = Maintenance::new(&self.settings);

        while !stop.is_cancelled() {
            maintenance.run(self, stop, &settled).await;
            let mut reader = self.reader.clone();
            let read = stream::read_group(
                &mut reader,
                &self.keys,
                consumer,
                &read_from,
                self.settings.batch_size,
                self.settings.block,
            )
            .await;
            self.progress.advance();
            match read {
                Ok(entries) => {
                    read_backoff = infrastructure_backoff();
                    self.health.available();
                    metrics::worker_progress();
                    let Some(last) = entries.last() else {
                        // A pass over our own pending entries is over.
                        read_from = ReadFrom::New;
                        count_deliveries = false;
                        continue;
                    };
                    if let ReadFrom::OwnPendingAfter(after) = &mut read_from {
                        // Move on: entries just settled may stay pending
                        // until their cache refresh acknowledges them.
                        after.clone_from(&last.id);
                    }
                    if let Some(settled) = self.settle(&entries, count_deliveries, stop, &settled).await {
                        maintenance.settled += settled;
                    }
                }
                Err(err) if err.code() == Some("NOGROUP") => {
                    // Redis lost the stream or the group (restarted without
                    // persistence, or deleted by hand): recreate it.
                    tracing::warn!("consumer group missing; recreating it");
                    let mut redis = self.redis.clone();
                    if let Err(err) = stream::ensure_group(&mut redis, &self.keys).await {
                        self.health.unavailable(Dependency::Redis, &err);
                    }
                }
                Err(err) => {
                    self.health.unavailable(Dependency::Redis, &err);
                    // The lost reply may have delivered entries to us.
                    read_from = ReadFrom::own_pending();
                    let pause = read_backoff.next().unwrap_or(MAX_PAUSE);
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = self.progress.pause(pause) => {}
                    }
                }
            }
        }
    }

    /// Settles a batch: applies what can be applied, schedules retries and
    /// dead-letters the rest, then acknowledges. Returns the number of
    /// entries settled, or `None` when stopped while a dependency was down
    /// (the entries stay pending).
    async fn settle(
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

    /// Refreshes the cache for committed batches, then acknowledges them.
    /// Runs beside the event loop: while it works, the next batches are
    /// applied, and it then covers all of them in one refresh, so a backlog
    /// costs one refresh per round instead of one per batch.
    async fn refresh_and_acknowledge(&self, mut committed: mpsc::Receiver<Settled>, stop: &CancellationToken) {
        while let Some(first) = committed.recv().await {
            let Settled { mut touched, mut acks, mut received } = first;
            while let Ok(more) = committed.try_recv() {
                touched.merge(more.touched);
                acks.extend(more.acks);
                received.extend(more.received);
            }
            if self.refresh_cache(&touched, stop).await.is_none() {
                // Stopped while a dependency was down: the entries stay
                // pending and are applied and refreshed again later.
                continue;
            }
            let now = Utc::now();
            for (topic, received_at) in &received {
                metrics::freshness(topic, *received_at, now);
            }
            let ids: Vec<&str> = acks.iter().map(String::as_str).collect();
            let ids = &ids;
            self.redis_op(stop, |mut redis| async move { stream::ack(&mut redis, &self.keys, ids).await }).await;
        }
    }

    /// After a batch commits: invalidates the union of its tags once, writes
    /// the values the dashboard will read (statistics, first pages,
    /// dashboards), and queues the revalidation hook.
    async fn refresh_cache(&self, touched: &Touched, stop: &CancellationToken) -> Option<()> {
        if touched.is_empty() {
            return Some(());
        }
        let tag_keys: Vec<String> = touched.tags.iter().map(|(tenant, tag)| self.keys.tag(tenant, tag)).collect();
        let tag_keys = &tag_keys;
        self.redis_op(stop, |mut redis| async move { cache::invalidate(&mut redis, tag_keys).await }).await?;
        metrics::cache_invalidations(tag_keys.len() as u64);
        let ttls = &self.settings.cache_ttls;
        let items = &Cached::touched_by(touched);
        let computed = self
            .postgres_op(stop, &[], || async {
                Cached::compute(&self.db, &self.keys, ttls, items).await.map_err(ApplyError::from)
            })
            .await?;
        let entries = computed.unwrap_or_else(|error| {
            tracing::warn!(
                sqlstate = error.sqlstate().as_deref().unwrap_or("none"), error = %error,
                "could not compute the dashboard's values; nothing prewarmed, readers compute them on a miss"
            );
            Vec::new()
        });
        let entries = &entries;
        let written = self.redis_op(stop, |mut redis| async move { cache::put(&mut redis, entries).await }).await?;
        metrics::cache_prewarms(written as u64);
        if let Some(revalidator) = &self.revalidator {
            revalidator.notify(touched.tag_names());
        }
        Some(())
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

    /// Reports a Postgres outage, keeps the `held` entries from looking
    /// abandoned, and pauses; `None` if stopped first.
    async fn wait_for_postgres(
        &self,
        error: &ApplyError,
        held: &[&str],
        backoff: &mut impl Iterator<Item = Duration>,
        stop: &CancellationToken,
    ) -> Option<()> {
        self.health.unavailable(Dependency::Postgres, &describe(error));
        let mut redis = self.redis.clone();
        if let Err(err) = stream::touch(&mut redis, &self.keys, &self.settings.consumer_name, held).await {
            tracing::debug!(error = %err, "could not refresh held entries");
        }
        let pause = backoff.next().unwrap_or(MAX_PAUSE);
        tokio::select! {
            () = stop.cancelled() => None,
            () = self.progress.pause(pause) => Some(()),
        }
    }

    /// Runs a Redis operation until it succeeds; `None` if stopped first.
    async fn redis_op<T, F, Fut>(&self, stop: &CancellationToken, mut op: F) -> Option<T>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let mut backoff = infrastructure_backoff();
        loop {
            let result = op(self.redis.clone()).await;
            self.progress.advance();
            match result {
                Ok(value) => return Some(value),
                Err(err) => {
                    self.health.unavailable(Dependency::Redis, &err);
                    let pause = backoff.next().unwrap_or(MAX_PAUSE);
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = self.progress.pause(pause) => {}
                    }
                }
            }
        }
    }

    /// Runs a Postgres operation until it does not fail with an outage,
    /// keeping `held` entries from looking abandoned meanwhile; `None` if
    /// stopped first. Other errors are the caller's to judge: the `Err` is
    /// never [`ApplyError::Outage`].
    async fn postgres_op<T, F, Fut>(
        &self,
        stop: &CancellationToken,
        held: &[&str],
        mut op: F,
    ) -> Option<Result<T, ApplyError>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApplyError>>,
    {
        let mut backoff = infrastructure_backoff();
        let mut waited = false;
        loop {
            let result = op().await;
            self.progress.advance();
            match result {
                Err(error @ ApplyError::Outage(_)) => {
                    waited = true;
                    self.wait_for_postgres(&error, held, &mut backoff, stop).await?;
                }
                result => {
                    if waited {
                        self.health.available();
                    }
                    return Some(result);
                }
            }
        }
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
fn describe(error: &ApplyError) -> String {
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

/// Timed chores between reads: due retries back onto the stream, entries of
/// dead consumers taken over, the stream trimmed, progress logged.
struct Maintenance {
    next_promote: Instant,
    promote_every: Duration,
    next_claim: Instant,
    claim_every: Duration,
    claim_cursor: String,
    next_trim: Instant,
    next_report: Instant,
    settled: usize,
}

impl Maintenance {
    fn new(settings: &Settings) -> Self {
        let now = Instant::now();
        Self {
            next_promote: now,
            promote_every: (settings.retry.base / 2).clamp(Duration::from_millis(20), Duration::from_secs(1)),
            next_claim: now,
            claim_every: (settings.claim_idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(15)),
            claim_cursor: "0-0".to_owned(),
            next_trim: now + TRIM_INTERVAL,
            next_report: now + REPORT_INTERVAL,
            settled: 0,
        }
    }

    async fn run(&mut self, worker: &Worker, stop: &CancellationToken, settled: &mpsc::Sender<Settled>) {
        let now = Instant::now();
        let consumer = &worker.settings.consumer_name;
        let mut redis = worker.redis.clone();
        if now >= self.next_promote {
            self.next_promote = now + self.promote_every;
            match failures::promote_due_retries(&mut redis, &worker.keys, worker.settings.batch_size).await {
                Ok(0) => {}
                Ok(moved) => tracing::debug!(moved, "due retries moved back onto the stream"),
                Err(err) => {
                    tracing::warn!(error = %err, "could not move due retries; will try again")
                }
            }
        }
        if now >= self.next_claim {
            self.next_claim = now + self.claim_every;
            let claimed = stream::autoclaim(
                &mut redis,
                &worker.keys,
                consumer,
                worker.settings.claim_idle,
                &self.claim_cursor,
                worker.settings.batch_size,
            )
            .await;
            match claimed {
                Ok(claimed) => {
                    self.claim_cursor = claimed.cursor;
                    if !claimed.deleted.is_empty() {
                        tracing::error!(
                            ids = ?claimed.deleted,
                            "pending entries were deleted from the stream before being applied; recorded in dead letters"
                        );
                        let deleted = &claimed.deleted;
                        let recorded = worker
                            .redis_op(stop, |mut redis| async move {
                                failures::dead_letter_deleted(&mut redis, &worker.keys, deleted).await
                            })
                            .await;
                        if recorded.is_some() {
                            for _ in deleted {
                                metrics::event_dead_lettered("unknown", FailureKind::Deleted.as_str());
                            }
                        }
                    }
                    if !claimed.entries.is_empty() {
                        tracing::info!(
                            entries = claimed.entries.len(), %consumer,
                            "took over entries idle on a consumer that stopped responding"
                        );
                        if let Some(count) = worker.settle(&claimed.entries, true, stop, settled).await {
                            self.settled += count;
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "could not claim idle entries; will try again")
                }
            }
        }
        if now >= self.next_trim {
            self.next_trim = now + TRIM_INTERVAL;
            // Consumers of workers long gone, holding nothing, are removed so
            // the group (and `fleet status`) lists the live fleet.
            let gone_after = worker.settings.claim_idle * 10;
            match stream::remove_idle_consumers(&mut redis, &worker.keys, consumer, gone_after).await {
                Ok(removed) if !removed.is_empty() => tracing::info!(?removed, "removed consumers of stopped workers"),
                Ok(_) => {}
                Err(err) => tracing::debug!(error = %err, "could not list consumers; will try again"),
            }
            match stream::trim(&mut redis, &worker.keys, worker.settings.stream_max_len).await {
                Ok(0) => {}
                Ok(trimmed) => tracing::debug!(trimmed, "trimmed acknowledged entries"),
                Err(err) => {
                    tracing::warn!(error = %err, "could not trim the events stream; will try again")
                }
            }
        }
        if now >= self.next_report {
            tracing::info!(%consumer, events = self.settled, seconds = REPORT_INTERVAL.as_secs(), "progress");
            self.next_report = now + REPORT_INTERVAL;
            self.settled = 0;
        }
    }
}

/// Renews the consumer-name lease until `stop`; returns true if another
/// worker took the name (and then stops the worker).
async fn heartbeat(
    mut redis: ConnectionManager,
    keys: Keys,
    consumer: String,
    token: String,
    lease: Duration,
    stop: CancellationToken,
) -> bool {
    loop {
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(lease / 3) => {}
        }
        match leases::hold_consumer_lease(&mut redis, &keys, &consumer, &token, lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(%consumer, "another worker holds this consumer name; stopping");
                stop.cancel();
                return true;
            }
            Err(err) => {
                tracing::warn!(error = %err, %consumer, "could not renew the consumer-name lease; will retry")
            }
        }
    }
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

/// Pauses while a dependency is down: 100 ms doubling to 30 s, with jitter
/// so that a fleet of workers does not retry in lockstep.
fn infrastructure_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_PAUSE)
        .with_jitter()
        .without_max_times()
        .build()
}
