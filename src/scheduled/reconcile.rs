//! Statistics reconciliation: recount every course and school from
//! `enrollments`, repair any drift in `course_statistics` and
//! `tenant_statistics`, and report what was repaired.
//!
//! The triggers keep the statistics by deltas, so a row that ever went
//! wrong (a hand edit, a restore, a trigger disabled during a bulk load)
//! stays wrong. This recounts with the triggers' own definitions
//! (`enrollment_is_active`, `enrollment_is_completed`, the percentage
//! summed as `numeric(24, 6)`), writes only the rows that differ, and bumps
//! their versions; then it invalidates the repaired values' cache tags, so
//! no reader keeps being served the drifted numbers (the next read, or the
//! rewarm job, recomputes them).
//!
//! **Against the workers applying batches.** A recount read in one
//! snapshot and written in another would overwrite a batch that committed
//! in between with stale numbers. So each transaction here first takes
//! `LOCK TABLE courses, enrollments IN SHARE MODE`: it waits for the
//! batches in flight to commit, and batches that want to write courses or
//! enrollments wait for it; those two tables' triggers are the only writers
//! of the statistics, so nothing changes the counted rows or the statistics
//! until it commits. The locks are taken in the order a batch writes the
//! tables (courses, then enrollments) and before any statistics row, so a
//! batch and the reconciliation can never wait for each other in a circle.
//! To keep those waits short, the schools are recounted in groups of
//! [`SCHOOLS_PER_TRANSACTION`], each in a transaction of its own, and a
//! lock that is not granted within [`LOCK_TIMEOUT`] fails the run (the next
//! one tries again) rather than queueing the fleet's batches behind it.

use std::fmt;

use sqlx::PgPool;

use super::JobError;
use crate::redis::cache;
use crate::redis::keys::{tags, Keys};
use crate::redis::RedisConnection;
use crate::telemetry::metrics;

/// Schools recounted in one transaction, under one pair of table locks.
pub(crate) const SCHOOLS_PER_TRANSACTION: usize = 100;
/// How long a transaction waits for its table locks.
pub(crate) const LOCK_TIMEOUT: &str = "5s";
/// Repaired rows named in logs and summaries.
const NAMED: usize = 5;

const SCHOOLS: &str = "SELECT tenant_id FROM tenant_statistics UNION SELECT tenant_id FROM course_statistics \
                       UNION SELECT tenant_id FROM enrollments ORDER BY 1";
const RECONCILE: &str = include_str!("reconcile.sql");

/// What one reconciliation repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Schools recounted.
    pub schools: usize,
    /// (tenant, course) of each `course_statistics` row set to its recount.
    pub courses: Vec<(String, i64)>,
    /// Each school whose `tenant_statistics` numbers were set to the recount.
    pub tenants: Vec<String>,
    /// Schools whose version alone was bumped, because one of their courses was repaired.
    pub versions_bumped: Vec<String>,
}

impl Repaired {
    pub fn is_clean(&self) -> bool {
        self.courses.is_empty() && self.tenants.is_empty()
    }
}

impl fmt::Display for Repaired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return write!(f, "{} school(s) recounted, no drift", self.schools);
        }
        write!(
            f,
            "{} school(s) recounted; repaired {} course_statistics row(s) {:?} and {} tenant_statistics row(s) {:?}",
            self.schools,
            self.courses.len(),
            named(&self.courses),
            self.tenants.len(),
            named(&self.tenants),
        )
    }
}

fn named<T>(items: &[T]) -> &[T] {
    &items[..items.len().min(NAMED)]
}

/// Recounts and repairs the statistics in Postgres (see the module for
/// how it stays correct next to running workers). Touches no cache.
pub async fn repair(db: &PgPool) -> Result<Repaired, sqlx::Error> {
    let mut tx = db.begin().await?;
    let schools: Vec<String> = sqlx::query_scalar(SCHOOLS).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let mut repaired = Repaired { schools: schools.len(), ..Repaired::default() };
    for group in schools.chunks(SCHOOLS_PER_TRANSACTION) {
        let mut tx = db.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")))
            .execute(&mut *tx)
            .await?;
        sqlx::query("LOCK TABLE courses, enrollments IN SHARE MODE").execute(&mut *tx).await?;
        let rows: Vec<(String, String, Option<i64>, bool)> =
            sqlx::query_as(RECONCILE).bind(group).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        for (table, tenant, course, drifted) in rows {
            match (table.as_str(), course) {
                ("course_statistics", Some(course)) => repaired.courses.push((tenant, course)),
                ("tenant_statistics", _) if drifted => repaired.tenants.push(tenant),
                ("tenant_statistics", _) => repaired.versions_bumped.push(tenant),
                _ => {}
            }
        }
    }
    Ok(repaired)
}

/// The job: repairs, counts the repairs in `fleet_statistics_repaired_total{table}`,
/// logs them (warn when anything drifted) and invalidates the repaired values'
/// cache tags.
pub async fn run(db: &PgPool, redis: &mut RedisConnection, keys: &Keys) -> Result<Repaired, JobError> {
    let repaired = repair(db).await?;
    metrics::statistics_repaired("course_statistics", repaired.courses.len() as u64);
    metrics::statistics_repaired("tenant_statistics", repaired.tenants.len() as u64);
    if repaired.is_clean() {
        tracing::info!(schools = repaired.schools, "statistics reconciled: no drift");
        return Ok(repaired);
    }
    tracing::warn!(
        schools = repaired.schools,
        course_rows = repaired.courses.len(),
        tenant_rows = repaired.tenants.len(),
        courses = ?named(&repaired.courses),
        tenants = ?named(&repaired.tenants),
        "statistics drifted from the enrollments; repaired to the recount"
    );
    let mut stale_tags: Vec<String> = repaired
        .courses
        .iter()
        .flat_map(|(tenant, course)| [keys.tag(tenant, &tags::course(*course)), keys.tag(tenant, tags::DASHBOARD)])
        .chain(repaired.tenants.iter().map(|tenant| keys.tag(tenant, tags::DASHBOARD)))
        .collect();
    stale_tags.sort();
    stale_tags.dedup();
    cache::invalidate(redis, &stale_tags).await?;
    Ok(repaired)
}
