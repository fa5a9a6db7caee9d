//! The optional revalidation hook: after each batch, POST the cache tags it
//! invalidated to `REVALIDATE_URL` (a Next.js route calling `revalidateTag`,
//! say), with `X-Revalidate-Secret`.
//!
//! Calls are coalesced per batch (one POST with the union of its tags),
//! retried with backoff, and made by a background task behind a bounded
//! queue: the event path never waits for the hook and never fails because
//! of it. Failures are counted (`fleet cache stats`) and logged.
//!
//! A stopping worker [drains](Revalidator::drain) the queue before it
//! returns: the calls already queued are made (each bounded by its retries),
//! so the last batches' pages do not stay stale until their TTL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::redis::cache;
use crate::redis::keys::Keys;
use crate::redis::RedisConnection;
use crate::secrets::ApiToken;
use crate::telemetry::metrics;
use crate::urls::RevalidateUrl;

/// The header carrying the shared secret.
pub const SECRET_HEADER: &str = "x-revalidate-secret";
/// Batches of tags waiting for the hook, at most; more are dropped (and counted).
const QUEUE: usize = 256;

#[derive(Debug, Clone)]
pub struct Revalidator {
    queue: mpsc::Sender<Vec<String>>,
    failures: Arc<AtomicU64>,
    /// The background task, closed to new tasks once spawned.
    tracker: TaskTracker,
    /// Fired by [`Revalidator::drain`]: finish what is queued, then stop.
    closing: CancellationToken,
}

impl Revalidator {
    /// Starts the background task that calls `url`.
    pub fn spawn(url: RevalidateUrl, secret: Option<ApiToken>, redis: RedisConnection, keys: Keys) -> Self {
        let (queue, mut batches) = mpsc::channel::<Vec<String>>(QUEUE);
        let failures = Arc::new(AtomicU64::new(0));
        let counted = failures.clone();
        let client = crate::http_client::client(Duration::from_secs(5));
        let tracker = TaskTracker::new();
        let closing = CancellationToken::new();
        let closed = closing.clone();
        tracker.spawn(async move {
            loop {
                let tags = tokio::select! {
                    // What is queued goes first, also once closing.
                    biased;
                    tags = batches.recv() => tags,
                    () = closed.cancelled() => batches.try_recv().ok(),
                };
                let Some(tags) = tags else { break };
                let call = || async {
                    let mut request = client.post(url.url().clone()).json(&json!({ "tags": tags }));
                    if let Some(secret) = &secret {
                        request = request.header(SECRET_HEADER, secret.expose());
                    }
                    request.send().await?.error_for_status()
                };
                let schedule = ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(2))
                    .with_jitter()
                    .with_max_times(3);
                let result = call.retry(schedule).sleep(tokio::time::sleep).await;
                metrics::revalidation(result.is_ok());
                if let Err(err) = result {
                    counted.fetch_add(1, Ordering::Relaxed);
                    let mut redis = redis.clone();
                    let _ = cache::count_revalidation_failure(&mut redis, &keys).await;
                    // reqwest's errors quote the whole URL, secrets in its query included.
                    tracing::warn!(
                        error = %err.without_url(), hook = %url, tags = tags.len(),
                        "revalidation hook failed after retries; the dashboard may show cached pages until their TTL. \
                         Check REVALIDATE_URL and that the dashboard is up"
                    );
                }
            }
        });
        tracker.close();
        Self { queue, failures, tracker, closing }
    }

    /// Queues one call with `tags`; never waits.
    pub fn notify(&self, tags: Vec<String>) {
        if tags.is_empty() {
            return;
        }
        if self.queue.try_send(tags).is_err() {
            metrics::revalidation(false);
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("revalidation queue full; a batch's tags were not sent");
        }
    }

    /// Makes the calls already queued (each bounded by its retries), then
    /// stops the background task; tags queued later are not sent.
    pub async fn drain(&self) {
        self.closing.cancel();
        self.tracker.wait().await;
    }

    /// Calls that failed (after retries) or were dropped, since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}
