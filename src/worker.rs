//! The worker: consume the events stream in batches and apply each batch to
//! Postgres in one transaction.
//!
//! Each batch is read with `XREADGROUP`, decoded, applied with set-based
//! statements, committed, and only then acknowledged. A crash anywhere
//! before the `XACK` leaves the entries pending; they are applied again on
//! the next read, which changes nothing because every write is versioned
//! (see `fleet_jobs::apply_batch`). On start a worker first re-reads its own
//! pending entries, then new ones.
//!
//! An entry that can never be applied (not an event, or a handled topic whose
//! payload does not parse) goes to the dead-letter stream at once.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use fleet_jobs::Event;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::WorkerSettings;
use crate::stream::{self, DeadLetter, Entry, Keys, ReadFrom};

/// How often the stream is trimmed, at most.
const TRIM_INTERVAL: Duration = Duration::from_secs(5);
/// How often progress is logged at info level.
const REPORT_INTERVAL: Duration = Duration::from_secs(30);

/// Errors that stop a batch; the batch stays pending and is read again.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("Postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

pub struct Worker {
    db: PgPool,
    /// Blocking reads only: a blocked `XREADGROUP` would stall anything
    /// else sent on the same connection.
    reader: ConnectionManager,
    redis: ConnectionManager,
    keys: Keys,
    settings: WorkerSettings,
}

impl Worker {
    /// Connects to Redis and makes sure the consumer group exists.
    pub async fn connect(
        db: PgPool,
        redis_url: &str,
        keys: Keys,
        settings: WorkerSettings,
    ) -> Result<Self, redis::RedisError> {
        let reader = stream::connect(redis_url, settings.block + Duration::from_secs(5)).await?;
        let mut redis = stream::connect(redis_url, Duration::from_secs(5)).await?;
        stream::ensure_group(&mut redis, &keys).await?;
        Ok(Self {
            db,
            reader,
            redis,
            keys,
            settings,
        })
    }

    /// Consumes until `shutdown` fires, then finishes the batch in hand and
    /// returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let consumer = self.settings.consumer_name.clone();
        tracing::info!(%consumer, group = stream::GROUP, stream = %self.keys.events(), "worker started");
        let mut from = ReadFrom::OwnPending;
        let mut backoff = infrastructure_backoff();
        let mut last_trim = Instant::now();
        let mut last_report = Instant::now();
        let mut applied_since_report = 0usize;

        while !shutdown.is_cancelled() {
            let read = stream::read_group(
                &mut self.reader,
                &self.keys,
                &consumer,
                from,
                self.settings.batch_size,
                self.settings.block,
            )
            .await;
            let outcome = match read {
                Ok(entries) if entries.is_empty() => {
                    from = ReadFrom::New;
                    Ok(0)
                }
                Ok(entries) => self.process(&entries).await,
                Err(err) if err.code() == Some("NOGROUP") => {
                    // Redis lost the stream or the group (restarted without
                    // persistence, or an operator deleted it): recreate it.
                    tracing::warn!("consumer group missing; recreating it");
                    stream::ensure_group(&mut self.redis, &self.keys)
                        .await
                        .map(|()| 0)
                        .map_err(BatchError::Redis)
                }
                Err(err) => Err(BatchError::Redis(err)),
            };
            match outcome {
                Ok(count) => {
                    backoff = infrastructure_backoff();
                    applied_since_report += count;
                }
                Err(err) => {
                    let pause = backoff.next().unwrap_or(MAX_PAUSE);
                    tracing::error!(
                        error = %err, %consumer, retry_in_ms = pause.as_millis() as u64,
                        "batch not applied; its entries stay pending and are retried. \
                         If this repeats, check that Postgres and Redis are reachable"
                    );
                    from = ReadFrom::OwnPending;
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            }
            if last_trim.elapsed() >= TRIM_INTERVAL {
                last_trim = Instant::now();
                match stream::trim(&mut self.redis, &self.keys, self.settings.stream_max_len).await
                {
                    Ok(0) => {}
                    Ok(trimmed) => tracing::debug!(trimmed, "trimmed acknowledged entries"),
                    Err(err) => {
                        tracing::warn!(error = %err, "could not trim the events stream; will retry")
                    }
                }
            }
            if last_report.elapsed() >= REPORT_INTERVAL {
                tracing::info!(%consumer, events = applied_since_report, seconds = last_report.elapsed().as_secs(), "progress");
                last_report = Instant::now();
                applied_since_report = 0;
            }
        }
        tracing::info!(%consumer, "worker stopped");
    }

    /// Applies one batch and acknowledges it; returns how many entries it
    /// settled (applied or dead-lettered).
    async fn process(&mut self, entries: &[Entry]) -> Result<usize, BatchError> {
        let mut events = Vec::with_capacity(entries.len());
        let mut rejected = Vec::new();
        for entry in entries {
            match decode(entry) {
                Ok(event) => events.push(event),
                Err(reason) => rejected.push((entry, reason)),
            }
        }

        let mut tx = self.db.begin().await?;
        let report = fleet_jobs::apply_batch(&mut tx, &events).await?;
        tx.commit().await?;

        let letters: Vec<DeadLetter<'_>> = rejected
            .iter()
            .map(|(entry, reason)| DeadLetter {
                entry,
                error_kind: "malformed",
                error: reason,
            })
            .collect();
        for (entry, reason) in &rejected {
            tracing::warn!(
                stream_entry_id = %entry.id, event_id = entry.text("event_id").unwrap_or("?"),
                topic = entry.text("topic").unwrap_or("?"), %reason,
                "event can never be applied; moved to dead letters for an operator to inspect"
            );
        }
        stream::dead_letter(&mut self.redis, &self.keys, &letters).await?;
        let ids: Vec<&str> = events
            .iter()
            .map(|event| event.stream_entry_id.as_str())
            .collect();
        stream::ack(&mut self.redis, &self.keys, &ids).await?;
        tracing::debug!(?report, dead_lettered = letters.len(), "batch applied");
        Ok(entries.len())
    }
}

/// Decodes an entry; the error says why it can never be applied.
fn decode(entry: &Entry) -> Result<Event, String> {
    let body = entry
        .field("body")
        .ok_or("stream entry has no body (deleted or not written by the intake)")?;
    let tenant = entry.text("tenant").unwrap_or("unknown");
    let received_at = entry
        .text("received_at")
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map_or_else(Utc::now, |stamp| stamp.with_timezone(&Utc));
    Event::decode(body, tenant, received_at, &entry.id).map_err(|err| err.to_string())
}

const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Pauses after a failed batch: 100 ms doubling to 30 s, with jitter so
/// that a fleet of workers does not retry in lockstep.
fn infrastructure_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_PAUSE)
        .with_jitter()
        .without_max_times()
        .build()
}
