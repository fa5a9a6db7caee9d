//! After a batch commits: the cache refresh (invalidate its tags once,
//! prewarm what the dashboard reads, queue the revalidation hook) and only
//! then the acknowledgement. It runs beside the read loop, so batches that
//! commit while it works are covered together by its next round.

use chrono::{DateTime, Utc};
use fleet_jobs::ApplyError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::read_model::cached::{Cached, Touched};
use crate::redis::{cache, stream};
use crate::telemetry::metrics;

/// A committed batch waiting for its cache refresh and acknowledgement.
pub(super) struct Settled {
    pub(super) touched: Touched,
    pub(super) acks: Vec<String>,
    /// (topic, received at the intake) of each applied event, for the
    /// freshness histogram once the refresh covering it completes.
    pub(super) received: Vec<(String, DateTime<Utc>)>,
}

impl Worker {
    /// Refreshes the cache for committed batches, then acknowledges them.
    /// Runs beside the event loop: while it works, the next batches are
    /// applied, and it then covers all of them in one refresh, so a backlog
    /// costs one refresh per round instead of one per batch.
    pub(super) async fn refresh_and_acknowledge(
        &self,
        mut committed: mpsc::Receiver<Settled>,
        stop: &CancellationToken,
    ) {
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
    pub(super) async fn refresh_cache(&self, touched: &Touched, stop: &CancellationToken) -> Option<()> {
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
}
