//! The numbers the dashboard reads, straight from Postgres.
//!
//! Each read returns the JSON body the read API serves together with its
//! version, both from one statement (one snapshot), so a cached copy can
//! always be ordered against another: a body never travels with a version
//! newer than itself. The same statement decides whether what was asked
//! for exists at all ([`Missing`]), so a request for an unknown school,
//! course or page costs one round trip and is never cached. The SQL lives
//! beside this file, one statement per file.
//!
//! Shared by the read API (cache-aside) and the worker (prewarming after a
//! batch), so it sits beside the roles, not inside one of them. [`cached`]
//! says which values the dashboard reads and what makes them stale,
//! [`reads`] which of them were read lately.

pub mod cached;
pub mod reads;

use serde_json::Value;
use sqlx::PgConnection;

use crate::redis::cache::Versioned;

/// What a read was about that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No statistics and no course of this school: nothing was ever applied for it.
    School,
    /// The school has neither a course row nor statistics for this course.
    Course,
    /// A page after the last one (page 1 of an existing course always exists).
    Page,
}

/// The outcome of one read: the body, or what it was about that does not exist.
pub(crate) type Found = Result<Versioned, Missing>;

/// The number of courses the dashboard summary lists.
pub(crate) const DASHBOARD_COURSES: i64 = 100;
/// The page size the worker prewarms; the read API's default.
pub const DEFAULT_PER_PAGE: i64 = 20;

/// One row of a read: its position in the request, what is missing, the version and the body.
type Row = (i64, Option<String>, i64, Value);

fn found(rows: Vec<Row>) -> Result<Vec<Found>, sqlx::Error> {
    rows.into_iter()
        .map(|(_, missing, version, body)| match missing.as_deref() {
            None => Ok(Ok(Versioned { version, body })),
            Some("school") => Ok(Err(Missing::School)),
            Some("course") => Ok(Err(Missing::Course)),
            Some("page") => Ok(Err(Missing::Page)),
            Some(other) => Err(sqlx::Error::Decode(format!("unknown `missing` value {other:?}").into())),
        })
        .collect()
}

const COURSE_STATISTICS: &str = include_str!("course_statistics.sql");

/// Statistics of each (tenant, course), in the order asked; zeros for a
/// course without enrollments.
pub async fn course_statistics(db: &mut PgConnection, courses: &[(String, i64)]) -> Result<Vec<Found>, sqlx::Error> {
    let (tenants, ids): (Vec<&str>, Vec<i64>) = courses.iter().map(|(tenant, id)| (tenant.as_str(), *id)).unzip();
    found(sqlx::query_as(COURSE_STATISTICS).bind(tenants).bind(ids).fetch_all(&mut *db).await?)
}

const DASHBOARDS: &str = include_str!("dashboards.sql");

/// Each school's dashboard summary, in the order asked: totals and its largest courses.
pub async fn dashboards(db: &mut PgConnection, tenants: &[String]) -> Result<Vec<Found>, sqlx::Error> {
    found(sqlx::query_as(DASHBOARDS).bind(tenants).bind(DASHBOARD_COURSES).fetch_all(&mut *db).await?)
}

/// Which page of a course's enrollments (newest update first).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageRequest {
    pub tenant_id: String,
    pub course_id: i64,
    pub page: i64,
    pub per_page: i64,
}

const ENROLLMENT_PAGES: &str = include_str!("enrollment_pages.sql");

/// Pages of enrollments, in the order asked.
pub(crate) async fn enrollment_pages(db: &mut PgConnection, pages: &[PageRequest]) -> Result<Vec<Found>, sqlx::Error> {
    let tenants: Vec<&str> = pages.iter().map(|page| page.tenant_id.as_str()).collect();
    let courses: Vec<i64> = pages.iter().map(|page| page.course_id).collect();
    let numbers: Vec<i64> = pages.iter().map(|page| page.page).collect();
    let sizes: Vec<i64> = pages.iter().map(|page| page.per_page).collect();
    found(
        sqlx::query_as(ENROLLMENT_PAGES)
            .bind(tenants)
            .bind(courses)
            .bind(numbers)
            .bind(sizes)
            .fetch_all(&mut *db)
            .await?,
    )
}
