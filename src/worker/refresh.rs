//! After a batch commits: the cache refresh (invalidate its tags once,
//! prewarm the statistics and dashboards, queue the revalidation hook) and
//! only then the acknowledgement. It runs beside the read loop, so batches
//! that commit while it works are covered together by its next round.
//!
//! First pages of enrollments are prewarmed apart, at most once per
//! [`PAGE_PREWARM_EVERY`]: they cost Postgres far more than the summaries
//! (a page is twenty rows joined to their users, a summary one row), and
//! they are invalidated with the round, so a reader in between computes a
//! fresh page on its miss rather than reading a stale one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_jobs::ApplyError;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::dependencies::Held;
use super::Worker;
use crate::read_model::cached::{Cached, Touched};
use crate::read_model::PageRequest;
use crate::redis::{cache, stream};
use crate::telemetry::metrics;

/// The shortest time between two page prewarms of one worker. A prewarm of
/// a couple hundred pages takes a core for 40–60 ms; at a 1 s pause that
/// burst was the freshness tail of the rounds beside it (decision 0016).
pub(super) const PAGE_PREWARM_EVERY: Duration = Duration::from_secs(10);

/// First pages whose course a refresh round touched, waiting for the next
/// page prewarm; each page once, however many rounds touched it.
#[derive(Default)]
pub(super) struct PagesToPrewarm {
    pages: Mutex<PendingPages>,
    wake: Notify,
}

#[derive(Default)]
struct PendingPages {
    pages: BTreeSet<PageRequest>,
    /// No round will add pages any more: prewarm what is left and stop.
    closed: bool,
}

impl PagesToPrewarm {
    fn add(&self, pages: impl Iterator<Item = PageRequest>) {
        let mut pending = self.pages.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pending.pages.extend(pages);
        drop(pending);
        self.wake.notify_one();
    }

    pub(super) fn close(&self) {
        self.pages.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).closed = true;
        self.wake.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.pages.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).closed
    }

    /// Takes the pending pages, and whether the lane is closed.
    fn take(&self) -> (Vec<PageRequest>, bool) {
        let mut pending = self.pages.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        (std::mem::take(&mut pending.pages).into_iter().collect(), pending.closed)
    }
}

/// A committed batch waiting for its cache refresh and acknowledgement.
pub(super) struct Settled {
    pub(super) touched: Touched,
    /// The entries to acknowledge, by stream shard.
    pub(super) acks: BTreeMap<u32, Vec<String>>,
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
        pages: &PagesToPrewarm,
        stop: &CancellationToken,
    ) {
        while let Some(first) = committed.recv().await {
            let Settled { mut touched, mut acks, mut received } = first;
            while let Ok(more) = committed.try_recv() {
                touched.merge(more.touched);
                for (shard, ids) in more.acks {
                    acks.entry(shard).or_default().extend(ids);
                }
                received.extend(more.received);
            }
            if self.refresh_cache(&touched, pages, stop).await.is_none() {
                // Stopped while a dependency was down: the entries stay
                // pending and are applied and refreshed again later.
                continue;
            }
            let now = Utc::now();
            for (topic, received_at) in &received {
                metrics::freshness(topic, *received_at, now);
            }
            self.activity.applied(
                now,
                received.iter().map(|(_, received_at)| (now - *received_at).to_std().unwrap_or_default()),
            );
            for (shard, ids) in &acks {
                let shard = &self.keys.shard(*shard);
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                let ids = &ids;
                self.dependencies
                    .redis_op(stop, |mut redis| async move { stream::ack(&mut redis, shard, ids).await })
                    .await;
            }
        }
    }

    /// After a batch commits: invalidates the union of its tags once, writes
    /// the statistics and dashboards the dashboard will read, hands the
    /// first pages to the page prewarm, and queues the revalidation hook.
    pub(super) async fn refresh_cache(
        &self,
        touched: &Touched,
        pages: &PagesToPrewarm,
        stop: &CancellationToken,
    ) -> Option<()> {
        if touched.is_empty() {
            return Some(());
        }
        let tag_keys: Vec<String> = touched.tags.iter().map(|(tenant, tag)| self.keys.tag(tenant, tag)).collect();
        let tag_keys = &tag_keys;
        self.dependencies
            .redis_op(stop, |mut redis| async move { cache::invalidate(&mut redis, tag_keys).await })
            .await?;
        metrics::cache_invalidations(tag_keys.len() as u64);
        self.prewarm(&Cached::summaries_touched_by(touched), stop).await?;
        pages.add(Cached::first_pages_touched_by(touched));
        if let Some(revalidator) = &self.revalidator {
            revalidator.notify(touched.tag_names());
        }
        Some(())
    }

    /// Prewarms first pages as rounds hand them over, at most once per
    /// [`PAGE_PREWARM_EVERY`], until the lane is closed and empty.
    pub(super) async fn prewarm_pages(&self, pages: &PagesToPrewarm, stop: &CancellationToken) {
        let mut next = Instant::now();
        loop {
            pages.wake.notified().await;
            // The pause, cut short when the worker stops; pages handed over
            // meanwhile wait for its end.
            while !pages.is_closed() && Instant::now() < next {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    () = pages.wake.notified() => {}
                }
            }
            let (requests, closed) = pages.take();
            next = Instant::now() + PAGE_PREWARM_EVERY;
            if !requests.is_empty() {
                let items: Vec<Cached> = requests.into_iter().map(Cached::Enrollments).collect();
                if self.prewarm(&items, stop).await.is_none() {
                    return;
                }
            }
            if closed {
                return;
            }
        }
    }

    /// Computes `items` and writes them to the cache; `None` when stopped
    /// while a dependency was down.
    async fn prewarm(&self, items: &[Cached], stop: &CancellationToken) -> Option<()> {
        let ttls = &self.settings.cache_ttls;
        let computed = self
            .dependencies
            .postgres_op(stop, Held::NOTHING, || async {
                Cached::compute(&self.dependencies.db, &self.keys, ttls, items).await.map_err(ApplyError::from)
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
        let written =
            self.dependencies.redis_op(stop, |mut redis| async move { cache::put(&mut redis, entries).await }).await?;
        metrics::cache_prewarms(written as u64);
        Some(())
    }
}
