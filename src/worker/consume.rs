//! The read loops, one per stream shard, side by side: batches read with
//! `XREADGROUP`, first over this consumer's own pending entries of the
//! shard (left by an earlier life or a lost reply), then new ones, the next
//! batch read while one commits; each batch handed to
//! [`settle`](super::settle), with [`maintenance`](super::maintenance)
//! between reads and a backoff while Redis is unreachable.
//!
//! Every shard reads on a connection of its own, so a quiet shard's blocked
//! read never delays a busy one, and each gets its turn at Postgres: the
//! shards are consumed fairly. Shards added to the fleet's count while the
//! worker runs are found within [`shards::DISCOVER_EVERY`] and consumed too.

use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::dependencies::{infrastructure_backoff, MAX_PAUSE};
use super::maintenance::Maintenance;
use super::refresh::Settled;
use super::Worker;
use crate::redis::entry::Entry;
use crate::redis::keys::ShardKeys;
use crate::redis::shards::{self, ShardCount};
use crate::redis::stream::{self, ReadFrom};
use crate::redis::RedisConnection;
use crate::telemetry::metrics;
use crate::telemetry::readiness::Dependency;

impl Worker {
    /// Consumes every shard of the fleet's count until `stop`, then lets
    /// each shard's loop settle the batch it holds.
    pub(super) async fn consume(&self, stop: &CancellationToken, settled: mpsc::Sender<Settled>) {
        let mut loops = FuturesUnordered::new();
        let mut consumed = 0;
        let mut discover = tokio::time::interval(shards::DISCOVER_EVERY);
        discover.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = discover.tick() => {
                    let count = self.shard_count().await;
                    for index in consumed..count.get() {
                        if index > 0 {
                            tracing::info!(shard = index, shards = count.get(), "consuming a stream shard");
                        }
                        loops.push(self.consume_shard(self.keys.shard(index), stop, settled.clone()));
                    }
                    consumed = consumed.max(count.get());
                }
                Some(()) = loops.next() => {}
            }
        }
        while loops.next().await.is_some() {}
    }

    /// The fleet's shard count (at least this worker's own), with the
    /// groups of new shards made; the last known while Redis does not answer.
    async fn shard_count(&self) -> ShardCount {
        let mut redis = self.dependencies.redis.clone();
        match shards::prepare(&mut redis, &self.keys, self.settings.shards).await {
            Ok(count) => count,
            Err(err) => {
                tracing::debug!(error = %err, "could not read the fleet's shard count; will look again");
                self.settings.shards
            }
        }
    }

    /// The read loop of one shard, until `stop`.
    async fn consume_shard(&self, shard: ShardKeys, stop: &CancellationToken, settled: mpsc::Sender<Settled>) {
        let timeout = self.settings.block + Duration::from_secs(5);
        let Some(reader) = crate::redis::connect_waiting(&self.target, timeout, &self.dependencies.health, stop).await
        else {
            return;
        };
        let shard = &shard;
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
            maintenance.run(self, shard, stop, &settled).await;
            let read = match read_ahead.take() {
                Some(read) => read,
                None => self.read(&reader, shard, &read_from).await,
            };
            self.dependencies.progress.advance();
            match read {
                Ok(entries) => {
                    read_backoff = infrastructure_backoff();
                    self.dependencies.health.available();
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
                    let settler = self.settler();
                    let settling = settler.settle(shard, &entries, count_deliveries, stop, &settled);
                    let outcome = if read_from == ReadFrom::New {
                        // Read the next batch while this one commits: the
                        // entries it takes are pending on this consumer, as
                        // any read's are, until they are settled in turn.
                        let (outcome, next) = tokio::join!(settling, self.read(&reader, shard, &ReadFrom::New));
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
                    tracing::warn!(shard = shard.index(), "consumer group missing; recreating it");
                    let mut redis = self.dependencies.redis.clone();
                    if let Err(err) = stream::ensure_group(&mut redis, shard).await {
                        self.dependencies.health.unavailable(Dependency::Redis, &err);
                    }
                }
                Err(err) => {
                    self.dependencies.health.unavailable(Dependency::Redis, &err);
                    // The lost reply may have delivered entries to us.
                    read_from = ReadFrom::own_pending();
                    let pause = read_backoff.next().unwrap_or(MAX_PAUSE);
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = self.dependencies.progress.pause(pause) => {}
                    }
                }
            }
        }
        // Stopping: the batch read ahead is in hand too; settled now, it
        // is not left pending until another worker claims it.
        if let Some(Ok(entries)) = read_ahead {
            if !entries.is_empty() {
                self.settler().settle(shard, &entries, false, stop, &settled).await;
            }
        }
    }

    /// One group read of up to a batch from `shard`, waiting up to
    /// `FLEET_BLOCK_MS` for new entries.
    async fn read(
        &self,
        reader: &RedisConnection,
        shard: &ShardKeys,
        from: &ReadFrom,
    ) -> Result<Vec<Entry>, redis::RedisError> {
        let mut reader = reader.clone();
        let consumer = &self.settings.consumer_name;
        stream::read_group(&mut reader, shard, consumer, from, self.settings.batch_size, self.settings.block).await
    }
}
