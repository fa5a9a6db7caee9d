//! The read loop: batches read with `XREADGROUP`, first over this
//! consumer's own pending entries (left by an earlier life or a lost
//! reply), then new ones, the next batch read while one commits; each
//! batch handed to [`settle`](super::settle), with
//! [`maintenance`](super::maintenance) between reads and a backoff while
//! Redis is unreachable.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::health::Dependency;
use super::maintenance::Maintenance;
use super::refresh::Settled;
use super::{infrastructure_backoff, Worker, MAX_PAUSE};
use crate::redis::stream::{self, ReadFrom};
use crate::telemetry::metrics;

impl Worker {
    pub(super) async fn consume(&self, stop: &CancellationToken, settled: mpsc::Sender<Settled>) {
        // Entries this name holds from an earlier life were interrupted:
        // their deliveries count as attempts. Later re-reads of our own
        // pending entries (after a failed read) do not.
        let mut read_from = ReadFrom::own_pending();
        let mut count_deliveries = true;
        let mut read_backoff = infrastructure_backoff();
        let mut maintenance = Maintenance::new(&self.settings);

        // The next batch of new entries, read while the current one was
        // applied and committed.
        let mut read_ahead = None;
        while !stop.is_cancelled() {
            maintenance.run(self, stop, &settled).await;
            let read = match read_ahead.take() {
                Some(read) => read,
                None => self.read(&read_from).await,
            };
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
                    let settling = self.settle(&entries, count_deliveries, stop, &settled);
                    let outcome = if read_from == ReadFrom::New {
                        // Read the next batch while this one commits: the
                        // entries it takes are pending on this consumer, as
                        // any read's are, until they are settled in turn.
                        let (outcome, next) = tokio::join!(settling, self.read(&ReadFrom::New));
                        read_ahead = Some(next);
                        outcome
                    } else {
                        settling.await
                    };
                    if let Some(settled) = outcome {
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
        // Stopping: the batch read ahead is in hand too; settled now, it
        // is not left pending until another worker claims it.
        if let Some(Ok(entries)) = read_ahead {
            if !entries.is_empty() {
                self.settle(&entries, false, stop, &settled).await;
            }
        }
    }

    /// One group read of up to a batch, waiting up to `FLEET_BLOCK_MS` for
    /// new entries.
    async fn read(&self, from: &ReadFrom) -> Result<Vec<stream::Entry>, redis::RedisError> {
        let mut reader = self.reader.clone();
        let consumer = &self.settings.consumer_name;
        stream::read_group(&mut reader, &self.keys, consumer, from, self.settings.batch_size, self.settings.block).await
    }
}
