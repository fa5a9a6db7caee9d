//! Postgres and Redis as the worker's loops use them: an operation is
//! retried with backoff while its dependency is down, the outage reported
//! on `/readyz` ([`Health`]) and the watchdog's [`Progress`] kept moving,
//! and the entries in hand are kept from looking abandoned meanwhile.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use fleet_jobs::ApplyError;
use redis::RedisError;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::redis::keys::ShardKeys;
use crate::redis::{stream, RedisConnection};
use crate::systemd::Progress;
use crate::telemetry::readiness::Dependency;

/// The longest pause between two tries of an unavailable dependency.
pub(super) const MAX_PAUSE: Duration = Duration::from_secs(30);

/// What every loop of a worker reaches, and how it waits for it.
pub(super) struct Dependencies {
    pub(super) db: PgPool,
    pub(super) redis: RedisConnection,
    pub(super) health: Health,
    /// Advanced each time the loop gets an answer; systemd's watchdog
    /// (`crate::systemd`) is fed only while it moves.
    pub(super) progress: Progress,
    /// The consumer name the worker holds entries under.
    pub(super) consumer: String,
}

/// Entries a worker holds while it waits for Postgres: their idle time is
/// reset so that no other worker takes them over meanwhile.
#[derive(Debug, Clone, Copy)]
pub(super) struct Held<'a> {
    pub(super) shard: Option<&'a ShardKeys>,
    pub(super) ids: &'a [&'a str],
}

impl Held<'_> {
    /// Nothing held (a wait that is not about stream entries).
    pub(super) const NOTHING: Held<'static> = Held { shard: None, ids: &[] };
}

impl Dependencies {
    /// Runs a Redis operation until it succeeds; `None` if stopped first.
    pub(super) async fn redis_op<T, F, Fut>(&self, stop: &CancellationToken, mut op: F) -> Option<T>
    where
        F: FnMut(RedisConnection) -> Fut,
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
    pub(super) async fn postgres_op<T, F, Fut>(
        &self,
        stop: &CancellationToken,
        held: Held<'_>,
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

    /// Reports a Postgres outage, keeps the `held` entries from looking
    /// abandoned, and pauses; `None` if stopped first.
    pub(super) async fn wait_for_postgres(
        &self,
        error: &ApplyError,
        held: Held<'_>,
        backoff: &mut impl Iterator<Item = Duration>,
        stop: &CancellationToken,
    ) -> Option<()> {
        let explained;
        let error = match error {
            // The pool only says it timed out: say what a connection attempt answers.
            ApplyError::Outage(sqlx::Error::PoolTimedOut) => {
                explained = ApplyError::Outage(crate::db::cause_of(&self.db, sqlx::Error::PoolTimedOut).await);
                &explained
            }
            other => other,
        };
        self.health.unavailable(Dependency::Postgres, &describe(error));
        if let Some(shard) = held.shard {
            let mut redis = self.redis.clone();
            if let Err(err) = stream::touch(&mut redis, shard, &self.consumer, held.ids).await {
                tracing::debug!(error = %err, "could not refresh held entries");
            }
        }
        let pause = backoff.next().unwrap_or(MAX_PAUSE);
        tokio::select! {
            () = stop.cancelled() => None,
            () = self.progress.pause(pause) => Some(()),
        }
    }

    /// Whether Postgres answers a query that writes nothing.
    pub(super) async fn probe_postgres(&self) -> Result<(), ApplyError> {
        // The simple protocol: one message, whole on one server behind a pooler.
        sqlx::raw_sql("SELECT 1").execute(&self.db).await?;
        Ok(())
    }
}

/// An error for a dead letter and the logs: the message and its SQLSTATE.
pub(super) fn describe(error: &ApplyError) -> String {
    match error.sqlstate() {
        Some(code) => format!("{error} (SQLSTATE {code})"),
        None => error.to_string(),
    }
}

/// Pauses while a dependency is down: 100 ms doubling to 30 s, with jitter
/// so that a fleet of workers does not retry in lockstep.
pub(super) fn infrastructure_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_PAUSE)
        .with_jitter()
        .without_max_times()
        .build()
}
