//! The worker: consume the events stream in batches, apply each batch to
//! Postgres in one transaction, and settle every entry: applied, scheduled
//! for a retry, or dead-lettered.
//!
//! This module owns the [`Worker`] itself: its [`Settings`], connecting
//! (the consumer group, the lease on its consumer name and the heartbeat
//! that renews it), [`Worker::run`], and the waits on Redis and Postgres
//! shared by the parts below. The parts, one file each:
//! - `consume`: the read loop, `XREADGROUP` first over the worker's own
//!   pending entries, then new ones;
//! - `settle`: what becomes of each entry of a batch (a pure plan), and
//!   the I/O around it: applying with splitting around the refused events,
//!   retries, dead letters;
//! - `refresh`: the cache refresh after a commit, then the `XACK`;
//! - `maintenance`: timed chores between reads (due retries, claims of
//!   idle entries, trimming, stale consumers, the progress report);
//! - [`retry`], [`revalidate`] (drained before [`Worker::run`] returns),
//!   [`backlog`], [`health`].
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::RedisError;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::dependencies::Dependencies;
use self::refresh::{PagesToPrewarm, Settled};
use self::revalidate::Revalidator;
use self::settle::Settler;
use crate::health::Health;
use crate::health::Waiter;
use crate::redis::activity::Recorder;
use crate::redis::keys::{Keys, GROUP};
use crate::redis::leases;
use crate::redis::shards::{self, ShardCount};
use crate::redis::{RedisConnection, RedisTarget};
use crate::systemd::Progress;
use crate::telemetry::metrics;
use crate::telemetry::readiness::Dependency;

mod consume;
mod dependencies;
mod maintenance;
mod refresh;
mod settle;

pub mod backlog;
pub mod health;
pub mod retry;
pub mod revalidate;

pub use retry::RetryPolicy;

/// The worker's settings in their validated form.
#[derive(Debug, Clone)]
pub struct Settings {
    pub consumer_name: String,
    /// The stream shards this worker's intakes write to (`FLEET_STREAM_SHARDS`);
    /// it consumes at least these, and every shard the fleet's count names.
    pub shards: ShardCount,
    pub batch_size: usize,
    pub block: Duration,
    pub stream_max_len: u64,
    pub claim_idle: Duration,
    pub lease: Duration,
    pub retry: RetryPolicy,
    pub cache_ttls: crate::redis::cache::Ttls,
}

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
    /// Postgres, Redis, and how the loops wait for them.
    dependencies: Dependencies,
    /// Where each shard's reader connects: a blocked `XREADGROUP` would
    /// stall anything else sent on the same connection, so every shard
    /// reads on a connection of its own.
    target: RedisTarget,
    keys: Keys,
    settings: Settings,
    lease_token: String,
    revalidator: Option<Revalidator>,
    /// What this worker applied and saw, until the backlog sampler writes it
    /// to the fleet's minute (`crate::redis::activity`).
    activity: Arc<Recorder>,
}

impl Worker {
    /// Connects to Redis, makes sure the consumer group exists, and takes
    /// the lease on the consumer name. A name whose holder died is free
    /// again once its lease runs out, so this waits up to one lease period
    /// before refusing. Waits for Redis while it is unreachable.
    pub async fn connect(db: PgPool, redis: &RedisTarget, keys: Keys, settings: Settings) -> Result<Self, WorkerError> {
        // The caller's pool is connected: only Redis is still to be reached.
        let health = Health::requiring(&[Dependency::Postgres, Dependency::Redis]);
        health.up(Dependency::Postgres);
        Self::connect_waiting(db, redis, keys, settings, health, &CancellationToken::new()).await
    }

    /// [`Worker::connect`] reporting to `health` while it waits for Redis
    /// (a wait at any step, the lease included, is logged once and retried
    /// with backoff); [`WorkerError::Stopped`] if `stop` fires first.
    pub(crate) async fn connect_waiting(
        db: PgPool,
        target: &RedisTarget,
        keys: Keys,
        settings: Settings,
        health: Health,
        stop: &CancellationToken,
    ) -> Result<Self, WorkerError> {
        let connect = |timeout| crate::redis::connect_waiting(target, timeout, &health, stop);
        let redis = connect(Duration::from_secs(5)).await.ok_or(WorkerError::Stopped)?;
        let address = target.shown_address();
        let mut waiter = Waiter::new(&health, Dependency::Redis, &address);
        loop {
            match shards::prepare(&mut redis.clone(), &keys, settings.shards).await {
                Ok(_) => break,
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
        let consumer = settings.consumer_name.clone();
        Ok(Self {
            dependencies: Dependencies { db, redis, health, progress: Progress::new(), consumer },
            target: target.clone(),
            keys,
            settings,
            lease_token,
            revalidator: None,
            activity: Arc::default(),
        })
    }

    /// Also POST each batch's invalidated tags to the revalidation hook.
    pub fn with_revalidator(mut self, revalidator: Revalidator) -> Self {
        self.revalidator = Some(revalidator);
        self
    }

    /// What settling a batch reaches: Postgres, Redis and the retry policy.
    fn settler(&self) -> Settler<'_> {
        Settler { dependencies: &self.dependencies, policy: &self.settings.retry }
    }

    /// The name it consumes under.
    pub fn consumer_name(&self) -> &str {
        &self.settings.consumer_name
    }

    /// The worker's health, for `/readyz`.
    pub fn health(&self) -> Health {
        self.dependencies.health.clone()
    }

    /// The loop's progress, for systemd's watchdog.
    pub fn progress(&self) -> Progress {
        self.dependencies.progress.clone()
    }

    /// Consumes until `shutdown` fires, then finishes the batch in hand
    /// (unless a dependency is down: then it stays pending), makes the
    /// revalidation hook calls still queued, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let consumer = self.settings.consumer_name.clone();
        let stop = shutdown.child_token();
        let heartbeat = tokio::spawn(heartbeat(
            self.dependencies.redis.clone(),
            self.keys.clone(),
            consumer.clone(),
            self.lease_token.clone(),
            self.settings.lease,
            stop.clone(),
        ));
        let sampler = tokio::spawn(backlog::run(
            self.dependencies.redis.clone(),
            self.keys.clone(),
            self.settings.shards,
            self.activity.clone(),
            stop.clone(),
        ));
        tracing::info!(
            %consumer, group = GROUP, shards = self.settings.shards.get(),
            max_attempts = self.settings.retry.max_attempts, claim_idle_ms = self.settings.claim_idle.as_millis() as u64,
            "worker started"
        );
        let (settled, to_refresh) = mpsc::channel::<Settled>(2);
        let pages = PagesToPrewarm::default();
        let refresh = async {
            self.refresh_and_acknowledge(to_refresh, &pages, &stop).await;
            pages.close();
        };
        tokio::join!(self.consume(&stop, settled), refresh, self.prewarm_pages(&pages, &stop));
        if let Some(revalidator) = &self.revalidator {
            // The last batches' hook calls, so their pages do not stay stale.
            revalidator.drain().await;
        }
        stop.cancel();
        let lost = heartbeat.await.unwrap_or(false);
        let _ = sampler.await;
        let mut redis = self.dependencies.redis.clone();
        if let Err(err) = leases::release_consumer_lease(&mut redis, &self.keys, &consumer, &self.lease_token).await {
            tracing::warn!(error = %err, %consumer, "could not release the consumer name; it frees itself when the lease runs out");
        }
        tracing::info!(%consumer, "worker stopped");
        if lost {
            return Err(WorkerError::ConsumerNameLost(consumer));
        }
        Ok(())
    }
}

/// Renews the consumer-name lease until `stop`; returns true if another
/// worker took the name (and then stops the worker).
async fn heartbeat(
    mut redis: RedisConnection,
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
