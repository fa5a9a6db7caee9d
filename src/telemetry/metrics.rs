//! Every series the fleet exports, named in one place, and `GET /metrics`
//! in the Prometheus text format.
//!
//! The `metrics` crate's facade records into one process-global recorder
//! (`metrics-exporter-prometheus`), installed by [`install`] the first time
//! a role is built; installing again is a no-op, so tests that run many
//! roles in one process share it. Each role serves `/metrics` from its own
//! router ([`render`]): the intake and the read API on their port, the
//! worker on `FLEET_HEALTH_LISTEN`.
//!
//! The alert rules are written against these names: rename one only with
//! them.
//!
//! | series | type | labels | recorded by |
//! |---|---|---|---|
//! | `fleet_webhooks_total` | counter | topic, answer | intake |
//! | `fleet_intake_request_duration_seconds` | histogram | | intake |
//! | `fleet_events_applied_total` | counter | topic | worker |
//! | `fleet_events_retried_total` | counter | topic | worker |
//! | `fleet_events_dead_lettered_total` | counter | topic, kind | worker |
//! | `fleet_batch_size`, `fleet_batch_duration_seconds` | histogram | | worker |
//! | `fleet_stream_length`, `fleet_consumer_group_lag`, `fleet_pending_entries`, `fleet_oldest_pending_age_seconds`, `fleet_retry_backlog`, `fleet_dead_letters`, `fleet_dead_letter_oldest_age_seconds` | gauge | | worker, sampled from Redis |
//! | `fleet_cache_requests_total` | counter | outcome (hit, miss, stale, bypass) | read API |
//! | `fleet_cache_invalidations_total`, `fleet_cache_prewarms_total` | counter | | worker |
//! | `fleet_revalidations_total` | counter | outcome (ok, failed) | worker |
//! | `fleet_freshness_seconds` | histogram | topic | worker |
//! | `fleet_dependency_up` | gauge | dependency (redis, postgres) | every role |
//! | `fleet_worker_progress_total`, `fleet_worker_last_progress_timestamp_seconds` | counter, gauge | | worker |
//! | `fleet_scheduled_job_runs_total`, `fleet_scheduled_job_duration_seconds` | counter, summary | job (, outcome) | worker's scheduled jobs |
//! | `fleet_statistics_repaired_total` | counter | table | reconcile job |
//! | `fleet_events_retention_deleted_total` | counter | | retention job |
//!
//! Labelled counters are created at 0 for every label value known at start
//! ([`install`]), so `rate()` and `increase()` see their first count. Every
//! name is in [`SERIES`], which a test holds to `docs/operations.md`.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub(crate) const WEBHOOKS: &str = "fleet_webhooks_total";
pub(crate) const INTAKE_DURATION: &str = "fleet_intake_request_duration_seconds";
pub(crate) const EVENTS_APPLIED: &str = "fleet_events_applied_total";
pub(crate) const EVENTS_RETRIED: &str = "fleet_events_retried_total";
pub(crate) const EVENTS_DEAD_LETTERED: &str = "fleet_events_dead_lettered_total";
pub(crate) const BATCH_SIZE: &str = "fleet_batch_size";
pub(crate) const BATCH_DURATION: &str = "fleet_batch_duration_seconds";
pub(crate) const STREAM_LENGTH: &str = "fleet_stream_length";
pub(crate) const GROUP_LAG: &str = "fleet_consumer_group_lag";
pub(crate) const PENDING_ENTRIES: &str = "fleet_pending_entries";
pub(crate) const OLDEST_PENDING_AGE: &str = "fleet_oldest_pending_age_seconds";
pub(crate) const RETRY_BACKLOG: &str = "fleet_retry_backlog";
pub(crate) const DEAD_LETTERS: &str = "fleet_dead_letters";
pub(crate) const DEAD_LETTER_OLDEST_AGE: &str = "fleet_dead_letter_oldest_age_seconds";
// The same figures for each stream shard (label `shard`); the names above
// are the fleet's totals (ages: the oldest of any shard).
pub(crate) const SHARD_STREAM_LENGTH: &str = "fleet_shard_stream_length";
pub(crate) const SHARD_GROUP_LAG: &str = "fleet_shard_consumer_group_lag";
pub(crate) const SHARD_PENDING_ENTRIES: &str = "fleet_shard_pending_entries";
pub(crate) const SHARD_OLDEST_PENDING_AGE: &str = "fleet_shard_oldest_pending_age_seconds";
pub(crate) const SHARD_RETRY_BACKLOG: &str = "fleet_shard_retry_backlog";
pub(crate) const SHARD_DEAD_LETTERS: &str = "fleet_shard_dead_letters";
pub(crate) const CACHE_REQUESTS: &str = "fleet_cache_requests_total";
pub(crate) const CACHE_INVALIDATIONS: &str = "fleet_cache_invalidations_total";
pub(crate) const CACHE_PREWARMS: &str = "fleet_cache_prewarms_total";
pub(crate) const REVALIDATIONS: &str = "fleet_revalidations_total";
pub(crate) const FRESHNESS: &str = "fleet_freshness_seconds";
pub(crate) const DEPENDENCY_UP: &str = "fleet_dependency_up";
pub(crate) const WORKER_PROGRESS: &str = "fleet_worker_progress_total";
pub(crate) const WORKER_LAST_PROGRESS: &str = "fleet_worker_last_progress_timestamp_seconds";
pub(crate) const SCHEDULED_JOB_RUNS: &str = "fleet_scheduled_job_runs_total";
pub(crate) const SCHEDULED_JOB_DURATION: &str = "fleet_scheduled_job_duration_seconds";
pub(crate) const STATISTICS_REPAIRED: &str = "fleet_statistics_repaired_total";
pub(crate) const RETENTION_DELETED: &str = "fleet_events_retention_deleted_total";

/// Every series the fleet exports, by name.
pub const SERIES: [&str; 32] = [
    WEBHOOKS,
    INTAKE_DURATION,
    EVENTS_APPLIED,
    EVENTS_RETRIED,
    EVENTS_DEAD_LETTERED,
    BATCH_SIZE,
    BATCH_DURATION,
    STREAM_LENGTH,
    GROUP_LAG,
    PENDING_ENTRIES,
    OLDEST_PENDING_AGE,
    RETRY_BACKLOG,
    DEAD_LETTERS,
    DEAD_LETTER_OLDEST_AGE,
    SHARD_STREAM_LENGTH,
    SHARD_GROUP_LAG,
    SHARD_PENDING_ENTRIES,
    SHARD_OLDEST_PENDING_AGE,
    SHARD_RETRY_BACKLOG,
    SHARD_DEAD_LETTERS,
    CACHE_REQUESTS,
    CACHE_INVALIDATIONS,
    CACHE_PREWARMS,
    REVALIDATIONS,
    FRESHNESS,
    DEPENDENCY_UP,
    WORKER_PROGRESS,
    WORKER_LAST_PROGRESS,
    SCHEDULED_JOB_RUNS,
    SCHEDULED_JOB_DURATION,
    STATISTICS_REPAIRED,
    RETENTION_DELETED,
];

/// Request latencies: half a millisecond to 2.5 s.
const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Webhook receipt to fresh dashboard: 2.5 ms to a minute, fine below 250 ms
/// so that targets there (p99 of 50 ms, of 150 ms) read off the buckets
/// (`fleet loadtest` interpolates within one) without a wide error.
const FRESHNESS_BUCKETS: [f64; 23] = [
    0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Batch durations: a millisecond to a minute (a batch may wait out an outage).
const BATCH_DURATION_BUCKETS: [f64; 13] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0];
/// Entries per batch: 1 to 10,000.
const BATCH_SIZE_BUCKETS: [f64; 9] = [1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 500.0, 1000.0, 10000.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder once; later calls return the same
/// handle. If another recorder was installed first (an embedding program's),
/// the fleet's series go there and `/metrics` renders an empty page.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = buckets(PrometheusBuilder::new());
        let handle = match builder.install_recorder() {
            Ok(handle) => handle,
            Err(err) => {
                tracing::warn!(error = %err, "metrics recorder not installed; /metrics stays empty");
                buckets(PrometheusBuilder::new()).build_recorder().handle()
            }
        };
        describe();
        create_at_zero();
        let upkeep = handle.clone();
        // Histograms are drained into their buckets by upkeep; without it
        // their samples pile up between scrapes.
        let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            upkeep.run_upkeep();
        });
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "no metrics upkeep thread; histograms are drained on scrape only");
        }
        handle
    })
}

fn buckets(builder: PrometheusBuilder) -> PrometheusBuilder {
    let sets: [(&str, &[f64]); 4] = [
        (INTAKE_DURATION, &LATENCY_BUCKETS),
        (FRESHNESS, &FRESHNESS_BUCKETS),
        (BATCH_DURATION, &BATCH_DURATION_BUCKETS),
        (BATCH_SIZE, &BATCH_SIZE_BUCKETS),
    ];
    sets.into_iter().fold(builder, |builder, (name, buckets)| {
        // Only an empty list is refused, and none is.
        builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets).expect("bucket lists are not empty")
    })
}

/// Every labelled counter the fleet defines, at 0 for each label value known
/// at start: `rate()` and `increase()` then see the first count of each.
fn create_at_zero() {
    let topics = || fleet_jobs::HANDLED_TOPICS.iter().copied().chain([OTHER_TOPIC]);
    for topic in topics() {
        counter!(EVENTS_APPLIED, "topic" => topic).absolute(0);
        counter!(EVENTS_RETRIED, "topic" => topic).absolute(0);
        for kind in DEAD_LETTER_KINDS {
            counter!(EVENTS_DEAD_LETTERED, "topic" => topic, "kind" => kind).absolute(0);
        }
    }
    // A webhook whose body was not parsed counts under `unknown`.
    for topic in topics().chain([UNKNOWN_TOPIC]) {
        for answer in Answer::ALL {
            counter!(WEBHOOKS, "topic" => topic, "answer" => answer.as_str()).absolute(0);
        }
    }
    for outcome in CACHE_OUTCOMES {
        counter!(CACHE_REQUESTS, "outcome" => outcome).absolute(0);
    }
    for outcome in ["ok", "failed"] {
        counter!(REVALIDATIONS, "outcome" => outcome).absolute(0);
    }
    for table in ["course_statistics", "tenant_statistics"] {
        counter!(STATISTICS_REPAIRED, "table" => table).absolute(0);
    }
}

/// A dead letter's kinds (`crate::redis::failures::FailureKind`).
const DEAD_LETTER_KINDS: [&str; 4] = ["malformed", "event", "crashed", "deleted"];
/// A cached read's outcomes (`X-Cache`, lower case).
pub(crate) const CACHE_OUTCOMES: [&str; 4] = ["hit", "miss", "stale", "bypass"];

fn describe() {
    describe_counter!(WEBHOOKS, "Webhooks answered, by topic (unknown when not parsed) and answer");
    describe_histogram!(INTAKE_DURATION, Unit::Seconds, "Time to answer a webhook");
    describe_counter!(EVENTS_APPLIED, "Events committed to Postgres");
    describe_counter!(EVENTS_RETRIED, "Events refused by Postgres and scheduled for a retry");
    describe_counter!(EVENTS_DEAD_LETTERED, "Events moved to dead letters, by topic and kind");
    describe_histogram!(BATCH_SIZE, Unit::Count, "Entries per batch the worker settles");
    describe_histogram!(BATCH_DURATION, Unit::Seconds, "Time to settle a batch");
    describe_gauge!(STREAM_LENGTH, "Entries in the events stream (XLEN)");
    describe_gauge!(GROUP_LAG, "Entries not yet delivered to the consumer group");
    describe_gauge!(PENDING_ENTRIES, "Entries delivered but not acknowledged");
    describe_gauge!(OLDEST_PENDING_AGE, Unit::Seconds, "Age of the oldest pending entry (from its stream id)");
    describe_gauge!(RETRY_BACKLOG, "Events waiting for a scheduled retry");
    describe_gauge!(DEAD_LETTERS, "Entries in the dead-letter stream");
    describe_gauge!(DEAD_LETTER_OLDEST_AGE, Unit::Seconds, "Age of the oldest dead letter");
    describe_gauge!(SHARD_STREAM_LENGTH, "Entries in one shard's events stream (XLEN)");
    describe_gauge!(SHARD_GROUP_LAG, "Entries of one shard not yet delivered to its consumer group");
    describe_gauge!(SHARD_PENDING_ENTRIES, "Entries of one shard delivered but not acknowledged");
    describe_gauge!(SHARD_OLDEST_PENDING_AGE, Unit::Seconds, "Age of one shard's oldest pending entry");
    describe_gauge!(SHARD_RETRY_BACKLOG, "Events of one shard waiting for a scheduled retry");
    describe_gauge!(SHARD_DEAD_LETTERS, "Entries in one shard's dead-letter stream");
    describe_counter!(CACHE_REQUESTS, "Cached reads, by outcome: hit, miss, stale, bypass");
    describe_counter!(CACHE_INVALIDATIONS, "Cache tags invalidated after a batch");
    describe_counter!(CACHE_PREWARMS, "Cached values written ahead of readers after a batch");
    describe_counter!(REVALIDATIONS, "Revalidation hook calls, by outcome: ok, failed");
    describe_histogram!(FRESHNESS, Unit::Seconds, "From a webhook's receipt to the cache refresh covering it");
    describe_gauge!(DEPENDENCY_UP, "Whether a dependency answered last time it was used or probed (1) or not (0)");
    describe_counter!(WORKER_PROGRESS, "Steps of the worker loop: reads returned and batches settled");
    describe_gauge!(WORKER_LAST_PROGRESS, Unit::Seconds, "Unix time of the worker loop's last step");
    describe_counter!(SCHEDULED_JOB_RUNS, "Runs of the scheduled jobs, by job and outcome: ok, failed, skipped");
    describe_histogram!(SCHEDULED_JOB_DURATION, Unit::Seconds, "Time a scheduled job's run took, by job");
    describe_counter!(STATISTICS_REPAIRED, "Statistics rows the reconcile job found drifted and rewrote, by table");
    describe_counter!(RETENTION_DELETED, "Rows of the events table the retention job deleted");
}

/// A scheduled job's run: counted by outcome, and timed when it ran.
pub(crate) fn scheduled_job_run(job: &'static str, outcome: &'static str, took: Option<Duration>) {
    counter!(SCHEDULED_JOB_RUNS, "job" => job, "outcome" => outcome).increment(1);
    if let Some(took) = took {
        histogram!(SCHEDULED_JOB_DURATION, "job" => job).record(took.as_secs_f64());
    }
}

/// The scheduled jobs' labels at 0 (they are known only to `crate::scheduled`).
pub(crate) fn scheduled_jobs_at_zero(jobs: &[&'static str], outcomes: &[&'static str]) {
    for job in jobs {
        for outcome in outcomes {
            counter!(SCHEDULED_JOB_RUNS, "job" => *job, "outcome" => *outcome).absolute(0);
        }
    }
}

/// Statistics rows the reconcile job rewrote in `table`.
pub(crate) fn statistics_repaired(table: &'static str, rows: u64) {
    counter!(STATISTICS_REPAIRED, "table" => table).increment(rows);
}

/// `events` rows the retention job deleted.
pub(crate) fn retention_deleted(rows: u64) {
    counter!(RETENTION_DELETED).increment(rows);
}

/// `GET /metrics`: every series, in the Prometheus text format.
/// Serves `/metrics` alone on `listener` until `shutdown` (a role's
/// `FLEET_METRICS_LISTEN`: its public port then serves no metrics).
pub(crate) async fn serve_alone(
    listener: tokio::net::TcpListener,
    http: crate::runtime::HttpSettings,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let router = axum::Router::new().route("/metrics", axum::routing::get(render));
    crate::runtime::serve(listener, router, http, shutdown).await
}

pub(crate) async fn render() -> Response {
    let mut response = install().render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

/// How the intake answered a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    Duplicate,
    Unauthorized,
    /// 429: the address used up its refusals (`crate::intake`).
    Throttled,
    Forbidden,
    Invalid,
    TooLarge,
    Unavailable,
}

impl Answer {
    pub const ALL: [Self; 8] = [
        Self::Accepted,
        Self::Duplicate,
        Self::Unauthorized,
        Self::Throttled,
        Self::Forbidden,
        Self::Invalid,
        Self::TooLarge,
        Self::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::Unavailable => "unavailable",
            Self::Throttled => "throttled",
        }
    }
}

/// The `topic` label of `topic`: itself when Fleet handles it
/// ([`fleet_jobs::HANDLED_TOPICS`]), else `other`. Senders choose topics;
/// the number of series is bounded by the code, not by them.
pub(crate) fn topic_label(topic: &str) -> &'static str {
    fleet_jobs::HANDLED_TOPICS.iter().find(|handled| **handled == topic).copied().unwrap_or(OTHER_TOPIC)
}

/// The label of every topic Fleet does not handle.
pub const OTHER_TOPIC: &str = "other";
/// The topic label of a webhook whose body was not parsed.
const UNKNOWN_TOPIC: &str = "unknown";

/// One webhook answered; `topic` is `None` when its body was not parsed.
pub fn webhook(topic: Option<&str>, answer: Answer, took: Duration) {
    let topic = topic.map_or(UNKNOWN_TOPIC, topic_label);
    counter!(WEBHOOKS, "topic" => topic, "answer" => answer.as_str()).increment(1);
    histogram!(INTAKE_DURATION).record(took.as_secs_f64());
}

pub(crate) fn events_applied(topic: &str, count: u64) {
    counter!(EVENTS_APPLIED, "topic" => topic_label(topic)).increment(count);
}

pub(crate) fn event_retried(topic: &str) {
    counter!(EVENTS_RETRIED, "topic" => topic_label(topic)).increment(1);
}

pub(crate) fn event_dead_lettered(topic: &str, kind: &'static str) {
    counter!(EVENTS_DEAD_LETTERED, "topic" => topic_label(topic), "kind" => kind).increment(1);
}

pub fn batch(size: usize, took: Duration) {
    histogram!(BATCH_SIZE).record(size as f64);
    histogram!(BATCH_DURATION).record(took.as_secs_f64());
}

/// What the worker samples from Redis every few seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    pub stream_length: u64,
    /// `None` when Redis cannot tell (after some deletions).
    pub lag: Option<u64>,
    pub pending: u64,
    pub oldest_pending_age: Duration,
    pub retries: u64,
    pub dead_letters: u64,
    pub oldest_dead_letter_age: Duration,
}

impl Backlog {
    /// The figures of two parts of the fleet together: counts added, the
    /// older of the ages, the lag unknown when either is.
    pub fn add(&mut self, other: &Backlog) {
        self.stream_length += other.stream_length;
        self.lag = self.lag.zip(other.lag).map(|(a, b)| a + b);
        self.pending += other.pending;
        self.oldest_pending_age = self.oldest_pending_age.max(other.oldest_pending_age);
        self.retries += other.retries;
        self.dead_letters += other.dead_letters;
        self.oldest_dead_letter_age = self.oldest_dead_letter_age.max(other.oldest_dead_letter_age);
    }
}

/// The backlog of each shard (`shard`, its figures), and their total.
pub fn backlog(total: &Backlog, shards: &[(u32, Backlog)]) {
    for (shard, sample) in shards {
        let shard = shard.to_string();
        gauge!(SHARD_STREAM_LENGTH, "shard" => shard.clone()).set(sample.stream_length as f64);
        if let Some(lag) = sample.lag {
            gauge!(SHARD_GROUP_LAG, "shard" => shard.clone()).set(lag as f64);
        }
        gauge!(SHARD_PENDING_ENTRIES, "shard" => shard.clone()).set(sample.pending as f64);
        gauge!(SHARD_OLDEST_PENDING_AGE, "shard" => shard.clone()).set(sample.oldest_pending_age.as_secs_f64());
        gauge!(SHARD_RETRY_BACKLOG, "shard" => shard.clone()).set(sample.retries as f64);
        gauge!(SHARD_DEAD_LETTERS, "shard" => shard).set(sample.dead_letters as f64);
    }
    let sample = total;
    gauge!(STREAM_LENGTH).set(sample.stream_length as f64);
    if let Some(lag) = sample.lag {
        gauge!(GROUP_LAG).set(lag as f64);
    }
    gauge!(PENDING_ENTRIES).set(sample.pending as f64);
    gauge!(OLDEST_PENDING_AGE).set(sample.oldest_pending_age.as_secs_f64());
    gauge!(RETRY_BACKLOG).set(sample.retries as f64);
    gauge!(DEAD_LETTERS).set(sample.dead_letters as f64);
    gauge!(DEAD_LETTER_OLDEST_AGE).set(sample.oldest_dead_letter_age.as_secs_f64());
}

/// One cached read answered (`outcome` as in `X-Cache`, lower case).
pub(crate) fn cache_request(outcome: &'static str) {
    counter!(CACHE_REQUESTS, "outcome" => outcome).increment(1);
}

pub(crate) fn cache_invalidations(tags: u64) {
    counter!(CACHE_INVALIDATIONS).increment(tags);
}

pub(crate) fn cache_prewarms(values: u64) {
    counter!(CACHE_PREWARMS).increment(values);
}

pub fn revalidation(ok: bool) {
    counter!(REVALIDATIONS, "outcome" => if ok { "ok" } else { "failed" }).increment(1);
}

/// An event's dashboard is fresh: `received_at` is when the intake took it.
pub fn freshness(topic: &str, received_at: DateTime<Utc>, now: DateTime<Utc>) {
    let seconds = (now - received_at).to_std().unwrap_or_default().as_secs_f64();
    histogram!(FRESHNESS, "topic" => topic_label(topic)).record(seconds);
}

/// `dependency` answered (`true`) or failed.
pub(crate) fn dependency_up(dependency: &'static str, up: bool) {
    gauge!(DEPENDENCY_UP, "dependency" => dependency).set(if up { 1.0 } else { 0.0 });
}

/// The worker loop moved on.
pub(crate) fn worker_progress() {
    counter!(WORKER_PROGRESS).increment(1);
    gauge!(WORKER_LAST_PROGRESS).set(Utc::now().timestamp_millis() as f64 / 1000.0);
}
