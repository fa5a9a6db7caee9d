//! The fleet's scheduled maintenance jobs, run inside `fleet worker`:
//! statistics reconciliation, events retention, dashboard rewarm and the
//! dead-letter age gauge.
//!
//! Every worker runs the same schedules (cron expressions from
//! configuration, [`ScheduleSettings`]); an occurrence is run by one worker
//! of the fleet only. When an occurrence comes, each worker tries
//! `SET <prefix>schedule:<job>:<occurrence> <runner> NX PX <ttl>`: the one
//! that sets it runs the job, the others skip it. The key names the
//! occurrence (its unix second), not the job, so a late or slow worker can
//! never take an occurrence that already ran, and it is never released: it
//! expires after twice the job's period (at least a minute), well after
//! every worker has tried that occurrence. Each attempt is logged, counted
//! (`fleet_scheduled_job_runs_total{job, outcome}`, and the run's time in
//! `fleet_scheduled_job_duration_seconds{job}`), and recorded in the capped
//! stream `<prefix>schedule-runs` (job, occurrence, runner, outcome, time,
//! summary), so an operator can see which worker ran what. Every key name
//! comes from [`crate::redis::keys`].
//!
//! Within one worker a job's occurrences run one after another: an
//! occurrence that comes while the previous run is still going is not
//! queued, the next one after it finishes is taken. Why tokio timers and
//! not apalis-cron: `docs/decisions/0013-scheduled-jobs-on-tokio-timers-not-apalis-cron.md`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Args;
use redis::RedisError;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::redis::cache::Ttls;
use crate::redis::keys::Keys;
use crate::redis::RedisConnection;

pub mod dead_letter_age;
pub mod reconcile;
pub mod retention;
pub mod rewarm;

/// The shortest time an occurrence's lock is kept.
const MIN_LOCK_TTL: Duration = Duration::from_secs(60);
/// Runs kept in `<prefix>schedule-runs` (approximately).
const RUNS_KEPT: usize = 10_000;

/// When the jobs run and how much they do. Flatten it into a command's
/// arguments; [`ScheduleSettings::with_worker`] adds what the worker knows.
///
/// A schedule is a cron expression in UTC with seconds first
/// (`sec min hour day month weekday [year]`, e.g. `0 */5 * * * *`), a
/// classic five-field one (minutes first, run at second 0), `@hourly`-style
/// shorthands, or `off`.
#[derive(Debug, Clone, Args)]
pub struct ScheduleSettings {
    /// When statistics are recounted from enrollments and drift is repaired (cron, UTC, or `off`).
    #[arg(
        long,
        env = "FLEET_SCHEDULE_RECONCILE",
        default_value = "0 0 * * * *",
        value_name = "FLEET_SCHEDULE_RECONCILE"
    )]
    pub schedule_reconcile: JobSchedule,
    /// When events audit rows older than FLEET_EVENTS_RETENTION_DAYS are deleted (cron, UTC, or `off`).
    #[arg(
        long,
        env = "FLEET_SCHEDULE_RETENTION",
        default_value = "0 30 3 * * *",
        value_name = "FLEET_SCHEDULE_RETENTION"
    )]
    pub schedule_retention: JobSchedule,
    /// When recently read dashboard values are recomputed before they go stale (cron, UTC, or `off`).
    #[arg(long, env = "FLEET_SCHEDULE_REWARM", default_value = "0 * * * * *", value_name = "FLEET_SCHEDULE_REWARM")]
    pub schedule_rewarm: JobSchedule,
    /// When the dead-letter gauges are measured (cron, UTC, or `off`).
    #[arg(
        long,
        env = "FLEET_SCHEDULE_DEAD_LETTER_AGE",
        default_value = "*/30 * * * * *",
        value_name = "FLEET_SCHEDULE_DEAD_LETTER_AGE"
    )]
    pub schedule_dead_letter_age: JobSchedule,
    /// Days an `events` audit row is kept after it was applied.
    #[arg(long, env = "FLEET_EVENTS_RETENTION_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=36_500), value_name = "FLEET_EVENTS_RETENTION_DAYS")]
    pub events_retention_days: u32,
    /// Most `events` rows one retention statement deletes (each batch is its own short transaction).
    #[arg(long, env = "FLEET_RETENTION_BATCH_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000), value_name = "FLEET_RETENTION_BATCH_SIZE")]
    pub retention_batch_size: u32,
    /// A dashboard value read within this many seconds is kept warm by the rewarm job.
    #[arg(long, env = "FLEET_REWARM_WINDOW_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=604_800), value_name = "FLEET_REWARM_WINDOW_SECS")]
    pub rewarm_window_secs: u64,
    /// Most recently read values one rewarm run looks at (the most recently read first).
    #[arg(long, env = "FLEET_REWARM_MAX_ITEMS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000), value_name = "FLEET_REWARM_MAX_ITEMS")]
    pub rewarm_max_items: u32,
    /// The name this process runs jobs under, in logs and in the lock;
    /// host name and process id when unset.
    #[arg(skip)]
    pub runner_name: Option<String>,
    /// The TTLs rewarmed values are written with: the worker's.
    #[arg(skip)]
    pub cache_ttls: Ttls,
}

impl ScheduleSettings {
    /// Runs jobs under the worker's consumer name and rewarms with its cache TTLs.
    pub(crate) fn with_worker(mut self, worker: &crate::worker::Settings) -> Self {
        self.runner_name = Some(worker.consumer_name.clone());
        self.cache_ttls = worker.cache_ttls;
        self
    }

    pub fn schedule(&self, job: Job) -> &JobSchedule {
        match job {
            Job::Reconcile => &self.schedule_reconcile,
            Job::Retention => &self.schedule_retention,
            Job::Rewarm => &self.schedule_rewarm,
            Job::DeadLetterAge => &self.schedule_dead_letter_age,
        }
    }
}

/// When one job runs: a cron schedule, or never.
#[derive(Debug, Clone)]
pub enum JobSchedule {
    Off,
    Cron(Box<cron::Schedule>),
}

impl JobSchedule {
    /// The first occurrence strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Off => None,
            Self::Cron(schedule) => schedule.after(&after).next(),
        }
    }
}

impl FromStr for JobSchedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        // A classic crontab line has no seconds field.
        let expression = if text.split_whitespace().count() == 5 { format!("0 {text}") } else { text.to_owned() };
        let schedule = cron::Schedule::from_str(&expression).map_err(|err| {
            format!("not a cron expression ({err}); e.g. '0 */5 * * * *' (seconds first, UTC), '@hourly' or 'off'")
        })?;
        if schedule.upcoming(Utc).next().is_none() {
            return Err("the schedule never fires again; use 'off' to turn a job off".into());
        }
        Ok(Self::Cron(Box::new(schedule)))
    }
}

/// The scheduled jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Job {
    Reconcile,
    Retention,
    Rewarm,
    DeadLetterAge,
}

impl Job {
    pub const ALL: [Job; 4] = [Job::Reconcile, Job::Retention, Job::Rewarm, Job::DeadLetterAge];

    /// The job's name in keys, logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reconcile => "reconcile",
            Self::Retention => "retention",
            Self::Rewarm => "rewarm",
            Self::DeadLetterAge => "dead-letter-age",
        }
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a job's run failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("Postgres: {0}")]
    Database(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
}

/// How one attempt at an occurrence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    /// Another worker took the occurrence.
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// Runs every job that is not `off` on its schedule until `shutdown`
/// fires, then lets the runs in flight finish (retention stops between two
/// batches) and returns. A job's failure is logged and counted; it never
/// stops the other jobs or later occurrences. `redis` is best a connection
/// of its own: the jobs' commands then never queue behind the worker's.
pub async fn run(
    settings: ScheduleSettings,
    db: PgPool,
    redis: RedisConnection,
    keys: Keys,
    shutdown: CancellationToken,
) {
    let runner = settings.runner_name.clone().unwrap_or_else(crate::runtime::instance_name);
    let scheduler = Arc::new(Scheduler { db, redis, keys, runner: runner.clone(), settings });
    let outcomes = [Outcome::Ok, Outcome::Failed, Outcome::Skipped].map(Outcome::as_str);
    crate::telemetry::metrics::scheduled_jobs_at_zero(&Job::ALL.map(Job::name), &outcomes);
    let mut loops = JoinSet::new();
    for job in Job::ALL {
        match scheduler.settings.schedule(job) {
            JobSchedule::Off => tracing::info!(%job, "scheduled job off"),
            JobSchedule::Cron(schedule) => {
                tracing::info!(%job, schedule = %schedule, %runner, "scheduled job on");
                loops.spawn(scheduler.clone().every(job, shutdown.clone()));
            }
        }
    }
    while let Some(ended) = loops.join_next().await {
        if let Err(err) = ended {
            tracing::error!(error = %err, "a scheduled job's loop ended abnormally");
        }
    }
    tracing::info!(%runner, "scheduled jobs stopped");
}

struct Scheduler {
    db: PgPool,
    redis: RedisConnection,
    keys: Keys,
    runner: String,
    settings: ScheduleSettings,
}

impl Scheduler {
    async fn every(self: Arc<Self>, job: Job, shutdown: CancellationToken) {
        let schedule = self.settings.schedule(job);
        let mut last = Utc::now();
        loop {
            // Strictly after the last occurrence, even if the timer woke a
            // hair early by the wall clock; occurrences missed while a run
            // overran are not made up.
            let Some(occurrence) = schedule.next_after(last.max(Utc::now())) else {
                tracing::info!(%job, "schedule has no further occurrences");
                return;
            };
            let wait = (occurrence - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let period = schedule
                .next_after(occurrence)
                .and_then(|next| (next - occurrence).to_std().ok())
                .unwrap_or(MIN_LOCK_TTL);
            self.occur(job, occurrence, period, &shutdown).await;
            last = occurrence;
        }
    }

    /// Takes the occurrence if no other worker did, runs it, and records how it went.
    async fn occur(&self, job: Job, occurrence: DateTime<Utc>, period: Duration, shutdown: &CancellationToken) {
        let lock = self.keys.schedule_lock(job.name(), occurrence.timestamp());
        let hold = (period * 2).max(MIN_LOCK_TTL);
        let mut redis = self.redis.clone();
        let taken: Result<Option<String>, RedisError> = redis::cmd("SET")
            .arg(&lock)
            .arg(&self.runner)
            .arg("NX")
            .arg("PX")
            .arg(hold.as_millis() as u64)
            .query_async(&mut redis)
            .await;
        match taken {
            Ok(Some(_)) => {}
            Ok(None) => {
                let holder: Option<String> = redis::cmd("GET").arg(&lock).query_async(&mut redis).await.ok().flatten();
                tracing::debug!(%job, %occurrence, runner = %self.runner, holder = holder.as_deref().unwrap_or("?"),
                    "occurrence taken by another worker");
                self.record(job, occurrence, Outcome::Skipped, None, holder.as_deref().unwrap_or("")).await;
                return;
            }
            Err(err) => {
                tracing::warn!(%job, %occurrence, runner = %self.runner, error = %err,
                    "could not take the occurrence's lock; not run");
                self.record(job, occurrence, Outcome::Failed, None, "lock unavailable").await;
                return;
            }
        }
        let started = Instant::now();
        let result = self.run_job(job, period, shutdown).await;
        let took = started.elapsed();
        match result {
            Ok(summary) => {
                tracing::info!(%job, %occurrence, runner = %self.runner, duration_ms = took.as_millis() as u64,
                    %summary, "scheduled job ran");
                self.record(job, occurrence, Outcome::Ok, Some(took), &summary).await;
            }
            Err(err) => {
                tracing::warn!(%job, %occurrence, runner = %self.runner, duration_ms = took.as_millis() as u64,
                    error = %err, "scheduled job failed");
                self.record(job, occurrence, Outcome::Failed, Some(took), &err.to_string()).await;
            }
        }
    }

    async fn run_job(&self, job: Job, period: Duration, shutdown: &CancellationToken) -> Result<String, JobError> {
        let mut redis = self.redis.clone();
        let settings = &self.settings;
        Ok(match job {
            Job::Reconcile => reconcile::run(&self.db, &mut redis, &self.keys).await?.to_string(),
            Job::Retention => {
                let policy = retention::Policy {
                    days: settings.events_retention_days,
                    batch_size: settings.retention_batch_size,
                    pause: retention::PAUSE,
                };
                retention::run(&self.db, &policy, shutdown).await?.to_string()
            }
            Job::Rewarm => {
                let policy = rewarm::Policy {
                    window: Duration::from_secs(settings.rewarm_window_secs),
                    max_items: settings.rewarm_max_items as usize,
                    // Whatever would go stale before the next run, with room for this one.
                    horizon: period + period / 2,
                    ttls: settings.cache_ttls,
                };
                rewarm::run(&self.db, &mut redis, &self.keys, &policy).await?.to_string()
            }
            Job::DeadLetterAge => dead_letter_age::run(&mut redis, &self.keys).await?.to_string(),
        })
    }

    /// Counts the attempt and appends it to the runs stream; a failure to
    /// record is logged, never fatal.
    async fn record(
        &self,
        job: Job,
        occurrence: DateTime<Utc>,
        outcome: Outcome,
        took: Option<Duration>,
        summary: &str,
    ) {
        crate::telemetry::metrics::scheduled_job_run(job.name(), outcome.as_str(), took);
        let mut redis = self.redis.clone();
        let recorded: Result<String, RedisError> = redis::cmd("XADD")
            .arg(self.keys.schedule_runs())
            .arg("MAXLEN")
            .arg("~")
            .arg(RUNS_KEPT)
            .arg("*")
            .arg("job")
            .arg(job.name())
            .arg("occurrence")
            .arg(occurrence.timestamp())
            .arg("runner")
            .arg(&self.runner)
            .arg("outcome")
            .arg(outcome.as_str())
            .arg("duration_ms")
            .arg(took.map_or(0, |took| took.as_millis() as u64))
            .arg("summary")
            .arg(summary)
            .query_async(&mut redis)
            .await;
        if let Err(err) = recorded {
            tracing::debug!(%job, error = %err, "could not record the scheduled run");
        }
    }
}
