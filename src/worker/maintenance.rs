//! Timed chores between two reads of a shard's loop: the shard's due
//! retries moved back onto its stream, entries idle on a dead consumer
//! taken over (and settled), the stream trimmed, consumers of stopped
//! workers removed, and progress logged.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::refresh::Settled;
use super::{Settings, Worker};
use crate::redis::failures::{self, FailureKind};
use crate::redis::keys::ShardKeys;
use crate::redis::stream;
use crate::telemetry::metrics;

/// How often the stream is trimmed, at most.
const TRIM_INTERVAL: Duration = Duration::from_secs(5);
/// How often progress is logged at info level.
const REPORT_INTERVAL: Duration = Duration::from_secs(30);

/// Timed chores between reads: due retries back onto the stream, entries of
/// dead consumers taken over, the stream trimmed, progress logged.
pub(super) struct Maintenance {
    next_promote: Instant,
    promote_every: Duration,
    next_claim: Instant,
    claim_every: Duration,
    claim_cursor: String,
    next_trim: Instant,
    next_report: Instant,
    pub(super) settled: usize,
}

impl Maintenance {
    pub(super) fn new(settings: &Settings) -> Self {
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

    pub(super) async fn run(
        &mut self,
        worker: &Worker,
        shard: &ShardKeys,
        stop: &CancellationToken,
        settled: &mpsc::Sender<Settled>,
    ) {
        let now = Instant::now();
        let consumer = &worker.settings.consumer_name;
        let mut redis = worker.dependencies.redis.clone();
        if now >= self.next_promote {
            self.next_promote = now + self.promote_every;
            match failures::promote_due_retries(&mut redis, shard, worker.settings.batch_size).await {
                Ok(0) => {}
                Ok(moved) => tracing::debug!(moved, shard = shard.index(), "due retries moved back onto the stream"),
                Err(err) => {
                    tracing::warn!(error = %err, "could not move due retries; will try again")
                }
            }
        }
        if now >= self.next_claim {
            self.next_claim = now + self.claim_every;
            let claimed = stream::autoclaim(
                &mut redis,
                shard,
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
                            ids = ?claimed.deleted, shard = shard.index(),
                            "pending entries were deleted from the stream before being applied; recorded in dead letters"
                        );
                        let deleted = &claimed.deleted;
                        let recorded = worker
                            .dependencies
                            .redis_op(stop, |mut redis| async move {
                                failures::dead_letter_deleted(&mut redis, shard, deleted).await
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
                            entries = claimed.entries.len(), %consumer, shard = shard.index(),
                            "took over entries idle on a consumer that stopped responding"
                        );
                        if let Some(count) = worker.settler().settle(shard, &claimed.entries, true, stop, settled).await
                        {
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
            match stream::remove_idle_consumers(&mut redis, &worker.keys, shard, consumer, gone_after).await {
                Ok(removed) if !removed.is_empty() => tracing::info!(?removed, "removed consumers of stopped workers"),
                Ok(_) => {}
                Err(err) => tracing::debug!(error = %err, "could not list consumers; will try again"),
            }
            match stream::trim(&mut redis, shard, worker.settings.stream_max_len).await {
                Ok(0) => {}
                Ok(trimmed) => tracing::debug!(trimmed, "trimmed acknowledged entries"),
                Err(err) => {
                    tracing::warn!(error = %err, "could not trim the events stream; will try again")
                }
            }
        }
        if now >= self.next_report {
            tracing::info!(%consumer, shard = shard.index(), events = self.settled, seconds = REPORT_INTERVAL.as_secs(), "progress");
            self.next_report = now + REPORT_INTERVAL;
            self.settled = 0;
        }
    }
}
