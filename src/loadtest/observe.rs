//! Observing the fleet under load from outside: the workers' `/metrics`
//! (events applied, the freshness histogram), Postgres (the run's rows in
//! `events`) and processes' CPU time (`/proc`).
//!
//! Metrics are counters since each process started, so a run reads them
//! before and after and keeps the difference; give the `/metrics` of every
//! worker, or the counts cover only some. The freshness percentiles are
//! interpolated within the histogram's buckets as Prometheus'
//! `histogram_quantile` does. Postgres needs no metrics at all: the run's
//! event ids are one range, counted with the `events` primary key.

use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;

use crate::telemetry::metrics::{EVENTS_APPLIED, FRESHNESS, WORKER_PROGRESS};
use crate::urls;

/// Why the fleet could not be observed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ObserveError {
    #[error("cannot read metrics at {url}: {reason}")]
    Metrics { url: String, reason: String },
    #[error(
        "{url} serves no worker metrics ({WORKER_PROGRESS} is missing): give the /metrics of each worker \
         (FLEET_HEALTH_LISTEN), or of `fleet dev`"
    )]
    NotAWorker { url: String },
    #[error("cannot count the run's events in Postgres: {0}")]
    Postgres(#[from] sqlx::Error),
}

/// The workers' `/metrics`, read together.
pub(crate) struct WorkerMetrics {
    client: reqwest::Client,
    urls: Vec<url::Url>,
}

/// The series a run needs, summed over every worker read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub applied: f64,
    /// Cumulative counts of `fleet_freshness_seconds` by upper bound (`le`), ascending.
    pub freshness: Vec<(f64, f64)>,
    pub freshness_count: f64,
}

impl WorkerMetrics {
    pub fn new(urls: Vec<url::Url>) -> Self {
        let client = crate::http_client::client(Duration::from_secs(5));
        Self { client, urls }
    }

    /// Reads every worker's metrics; refused when one is not a worker's.
    pub async fn scrape(&self) -> Result<Scrape, ObserveError> {
        let mut total = Scrape::default();
        for url in &self.urls {
            let shown = || urls::redact(url);
            let failed = |reason: String| ObserveError::Metrics { url: shown(), reason };
            let response = self.client.get(url.clone()).send().await.map_err(|err| failed(err.to_string()))?;
            if !response.status().is_success() {
                return Err(failed(format!("answered {}", response.status())));
            }
            let text = response.text().await.map_err(|err| failed(err.to_string()))?;
            if !parse(&text, &mut total) {
                return Err(ObserveError::NotAWorker { url: shown() });
            }
        }
        Ok(total)
    }
}

/// Adds the series of one `/metrics` page to `into`; false when the page
/// has no worker loop counter (not a worker's metrics).
fn parse(text: &str, into: &mut Scrape) -> bool {
    let mut worker = false;
    let bucket = format!("{FRESHNESS}_bucket");
    let count = format!("{FRESHNESS}_count");
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let Some(value) = line.rsplit(' ').next().and_then(|value| value.parse::<f64>().ok()) else {
            continue;
        };
        if name == EVENTS_APPLIED {
            into.applied += value;
        } else if name == WORKER_PROGRESS {
            worker = true;
        } else if name == count {
            into.freshness_count += value;
        } else if name == bucket {
            let Some(le) = label(line, "le").and_then(|le| le.parse::<f64>().ok()) else {
                continue;
            };
            // One series per topic, all with the same bounds: add them up.
            match into.freshness.iter_mut().find(|(bound, _)| *bound == le) {
                Some((_, cumulative)) => *cumulative += value,
                None => into.freshness.push((le, value)),
            }
        }
    }
    into.freshness.sort_by(|a, b| a.0.total_cmp(&b.0));
    worker
}

/// The value of `name="…"` in a series' labels.
fn label<'l>(line: &'l str, name: &str) -> Option<&'l str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let length = line[start..].find('"')?;
    Some(&line[start..start + length])
}

impl Scrape {
    /// What happened between `before` and `self`.
    pub fn since(&self, before: &Scrape) -> Scrape {
        let earlier = |le: f64| before.freshness.iter().find(|(bound, _)| *bound == le).map_or(0.0, |(_, n)| *n);
        Scrape {
            applied: self.applied - before.applied,
            freshness: self.freshness.iter().map(|&(le, n)| (le, n - earlier(le))).collect(),
            freshness_count: self.freshness_count - before.freshness_count,
        }
    }

    /// The `q` quantile (0 to 1) of the freshness histogram in seconds,
    /// interpolated linearly within its bucket; `None` without samples. A
    /// quantile in the last (`+Inf`) bucket reads as the largest finite bound.
    pub(crate) fn freshness_quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.freshness, q)
    }
}

fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(upper, cumulative) in buckets {
        if cumulative >= rank && cumulative > below {
            if upper.is_infinite() {
                return Some(lower);
            }
            return Some(lower + (upper - lower) * (rank - below) / (cumulative - below));
        }
        (lower, below) = (upper, cumulative);
    }
    Some(lower)
}

/// The run's rows in Postgres' `events` table.
pub(crate) struct RunEvents {
    pool: PgPool,
    tenant: String,
    first: String,
    last: String,
}

impl RunEvents {
    /// `first..=last` are the run's event ids (see [`super::generate::Workload::event_ids`]).
    pub async fn connect(url: &str, tenant: &str, first: &str, last: &str) -> Result<Self, ObserveError> {
        use std::str::FromStr;
        let options = sqlx::postgres::PgConnectOptions::from_str(url)?.application_name("fleet-loadtest");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let run = Self { pool, tenant: tenant.to_owned(), first: first.to_owned(), last: last.to_owned() };
        // Fails now, not mid-run, on a database without the fleet's schema.
        run.count().await?;
        Ok(run)
    }

    /// How many of the run's events are applied.
    pub async fn count(&self) -> Result<u64, ObserveError> {
        // `event_id` is COLLATE "C" and the run's ids have one width: a
        // range of the primary key.
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = $1 AND event_id BETWEEN $2 AND $3")
                .bind(&self.tenant)
                .bind(&self.first)
                .bind(&self.last)
                .fetch_one(&self.pool)
                .await?;
        Ok(count.max(0) as u64)
    }
}

/// What the drain came to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Drained {
    /// Events applied by the workers read, since the run began.
    pub applied_by_metrics: Option<u64>,
    /// The run's rows in `events`.
    pub applied_in_postgres: Option<u64>,
    /// Every accepted event applied, by every observer, before the deadline.
    pub complete: bool,
    /// When completion was seen.
    pub at: Option<Instant>,
}

/// Waits until every one of `expected` accepted events is applied, as far
/// as the observers given can tell, or until `deadline`. `progress` gets
/// the applied count as it rises.
pub(crate) async fn wait_until_applied(
    metrics: Option<(&WorkerMetrics, &Scrape)>,
    postgres: Option<&RunEvents>,
    expected: u64,
    deadline: Instant,
    progress: &dyn Fn(u64),
) -> Result<Drained, ObserveError> {
    let mut drained = Drained::default();
    // Metrics are cheap to read; a count in Postgres costs it a scan of the
    // run's index range, so it is read less often while metrics say "not yet".
    let interval = if metrics.is_some() { Duration::from_millis(50) } else { Duration::from_millis(200) };
    let mut rounds: u64 = 0;
    loop {
        let mut done = true;
        if let Some((metrics, before)) = metrics {
            let applied = metrics.scrape().await?.since(before).applied.max(0.0) as u64;
            drained.applied_by_metrics = Some(applied);
            progress(applied);
            done &= applied >= expected;
        }
        if let Some(postgres) = postgres {
            if done || metrics.is_none() || rounds.is_multiple_of(10) {
                let applied = postgres.count().await?;
                drained.applied_in_postgres = Some(applied);
                if metrics.is_none() {
                    progress(applied);
                }
                done &= applied >= expected;
            } else {
                done = false;
            }
        }
        let now = Instant::now();
        if done {
            drained.complete = true;
            drained.at = Some(now);
            return Ok(drained);
        }
        if now >= deadline {
            return Ok(drained);
        }
        rounds += 1;
        tokio::time::sleep(interval.min(deadline - now)).await;
    }
}

/// Waits (until `deadline`) for a freshness sample of each of `expected`
/// events: the workers record one when the cache refresh covering an event
/// is done, just after they count it applied.
pub(crate) async fn wait_for_freshness(
    metrics: &WorkerMetrics,
    before: &Scrape,
    expected: u64,
    deadline: Instant,
) -> Result<Scrape, ObserveError> {
    loop {
        let delta = metrics.scrape().await?.since(before);
        if delta.freshness_count >= expected as f64 || Instant::now() >= deadline {
            return Ok(delta);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU time (user and system) a process has used: this one (`None`) or
/// `pid`. Linux only (`/proc/<pid>/stat`); `None` elsewhere or when the
/// process is gone.
pub(crate) fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let path = pid.map_or_else(|| "/proc/self/stat".to_owned(), |pid| format!("/proc/{pid}/stat"));
    let stat = std::fs::read_to_string(path).ok()?;
    // After the command name (which may hold spaces, in parentheses):
    // state is field 3, utime field 14, stime field 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // In USER_HZ, which Linux fixes at 100 for /proc on every architecture.
    Some(Duration::from_millis(ticks * 10))
}

/// A process's command name (`/proc/<pid>/comm`).
pub(crate) fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|name| name.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# TYPE fleet_events_applied_total counter
fleet_events_applied_total{topic="enrollment.created"} 10
fleet_events_applied_total{topic="enrollment.progress"} 30
fleet_worker_progress_total 7
# TYPE fleet_freshness_seconds histogram
fleet_freshness_seconds_bucket{topic="enrollment.created",le="0.01"} 2
fleet_freshness_seconds_bucket{topic="enrollment.created",le="0.05"} 10
fleet_freshness_seconds_bucket{topic="enrollment.created",le="+Inf"} 10
fleet_freshness_seconds_sum{topic="enrollment.created"} 0.2
fleet_freshness_seconds_count{topic="enrollment.created"} 10
fleet_freshness_seconds_bucket{topic="enrollment.progress",le="0.01"} 8
fleet_freshness_seconds_bucket{topic="enrollment.progress",le="0.05"} 20
fleet_freshness_seconds_bucket{topic="enrollment.progress",le="+Inf"} 30
fleet_freshness_seconds_count{topic="enrollment.progress"} 30
"#;

    #[test]
    fn a_worker_page_is_summed_over_topics() {
        let mut scrape = Scrape::default();
        assert!(parse(PAGE, &mut scrape));
        assert_eq!(scrape.applied, 40.0);
        assert_eq!(scrape.freshness_count, 40.0);
        assert_eq!(scrape.freshness, vec![(0.01, 10.0), (0.05, 30.0), (f64::INFINITY, 40.0)]);
        assert!(!parse("fleet_webhooks_total{topic=\"x\",answer=\"accepted\"} 3\n", &mut Scrape::default()));
    }

    #[test]
    fn quantiles_interpolate_within_buckets_like_histogram_quantile() {
        let buckets = [(0.01, 10.0), (0.05, 30.0), (f64::INFINITY, 40.0)];
        // Rank 5 of 40: half-way through the first bucket (0 to 10 ms).
        assert!((quantile(&buckets, 0.125).expect("samples") - 0.005).abs() < 1e-12);
        // Rank 20: half-way through the second (10 to 50 ms).
        assert!((quantile(&buckets, 0.5).expect("samples") - 0.03).abs() < 1e-12);
        // In +Inf: the largest finite bound.
        assert_eq!(quantile(&buckets, 0.99), Some(0.05));
        assert_eq!(quantile(&[(0.01, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
    }

    #[test]
    fn a_difference_keeps_only_what_happened_since() {
        let before = Scrape { applied: 5.0, freshness: vec![(0.01, 4.0), (f64::INFINITY, 5.0)], freshness_count: 5.0 };
        let after = Scrape {
            applied: 15.0,
            freshness: vec![(0.01, 10.0), (0.05, 3.0), (f64::INFINITY, 15.0)],
            freshness_count: 15.0,
        };
        let delta = after.since(&before);
        assert_eq!(delta.applied, 10.0);
        assert_eq!(delta.freshness, vec![(0.01, 6.0), (0.05, 3.0), (f64::INFINITY, 10.0)]);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        if cfg!(target_os = "linux") {
            assert!(cpu_time(None).is_some());
        }
    }
}
