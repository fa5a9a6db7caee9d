//! The numbers the dashboard reads, straight from Postgres.
//!
//! Each read returns the JSON body the read API serves together with its
//! version, both from one statement (one snapshot), so a cached copy can
//! always be ordered against another: a body never travels with a version
//! newer than itself.

use serde_json::Value;
use sqlx::PgPool;

/// A body and the version of the data it was computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub version: i64,
    pub body: Value,
}

/// The number of courses the dashboard summary lists.
pub const DASHBOARD_COURSES: i64 = 100;
/// The page size the worker prewarms; the read API's default.
pub const DEFAULT_PER_PAGE: i64 = 20;

const COURSE_STATISTICS: &str = "
    SELECT w.tenant_id, w.course_id, coalesce(s.version, 0) AS version,
           jsonb_build_object(
               'tenant_id', w.tenant_id, 'course_id', w.course_id,
               'enrollments', coalesce(s.enrollments, 0), 'active', coalesce(s.active, 0),
               'completed', coalesce(s.completed, 0), 'completion_rate', coalesce(s.completion_rate, 0),
               'average_percentage', coalesce(s.average_percentage, 0),
               'version', coalesce(s.version, 0), 'updated_at', s.updated_at) AS body
    FROM UNNEST($1::text[], $2::int8[]) AS w(tenant_id, course_id)
    LEFT JOIN course_statistics s ON s.tenant_id = w.tenant_id AND s.course_id = w.course_id";

/// Statistics of each (tenant, course); zeros for a course without enrollments.
pub async fn course_statistics(
    db: &PgPool,
    courses: &[(String, i64)],
) -> Result<Vec<((String, i64), Versioned)>, sqlx::Error> {
    let (tenants, ids): (Vec<&str>, Vec<i64>) = courses.iter().map(|(tenant, id)| (tenant.as_str(), *id)).unzip();
    let rows: Vec<(String, i64, i64, Value)> =
        sqlx::query_as(COURSE_STATISTICS).bind(tenants).bind(ids).fetch_all(db).await?;
    Ok(rows
        .into_iter()
        .map(|(tenant, course, version, body)| ((tenant, course), Versioned { version, body }))
        .collect())
}

const DASHBOARDS: &str = "
    SELECT w.tenant_id, coalesce(t.version, 0) AS version,
           jsonb_build_object(
               'tenant_id', w.tenant_id,
               'totals', jsonb_build_object(
                   'enrollments', coalesce(t.enrollments, 0), 'active', coalesce(t.active, 0),
                   'completed', coalesce(t.completed, 0), 'completion_rate', coalesce(t.completion_rate, 0),
                   'average_percentage', coalesce(t.average_percentage, 0),
                   'courses', (SELECT count(*) FROM course_statistics c WHERE c.tenant_id = w.tenant_id AND c.enrollments > 0)),
               'courses', coalesce((
                   SELECT jsonb_agg(jsonb_build_object(
                              'course_id', c.course_id, 'name', k.name, 'enrollments', c.enrollments,
                              'active', c.active, 'completed', c.completed, 'completion_rate', c.completion_rate,
                              'average_percentage', c.average_percentage)
                          ORDER BY c.enrollments DESC, c.course_id)
                   FROM (SELECT * FROM course_statistics c
                         WHERE c.tenant_id = w.tenant_id AND c.enrollments > 0
                         ORDER BY c.enrollments DESC, c.course_id LIMIT $2) c
                   LEFT JOIN courses k ON k.tenant_id = c.tenant_id AND k.course_id = c.course_id
                   WHERE k.deleted_at IS NULL), '[]'::jsonb),
               'version', coalesce(t.version, 0), 'updated_at', t.updated_at) AS body
    FROM UNNEST($1::text[]) AS w(tenant_id)
    LEFT JOIN tenant_statistics t ON t.tenant_id = w.tenant_id";

/// Each school's dashboard summary: totals and its largest courses.
pub async fn dashboards(db: &PgPool, tenants: &[String]) -> Result<Vec<(String, Versioned)>, sqlx::Error> {
    let rows: Vec<(String, i64, Value)> =
        sqlx::query_as(DASHBOARDS).bind(tenants).bind(DASHBOARD_COURSES).fetch_all(db).await?;
    Ok(rows.into_iter().map(|(tenant, version, body)| (tenant, Versioned { version, body })).collect())
}

/// Which page of a course's enrollments (newest update first).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageRequest {
    pub tenant_id: String,
    pub course_id: i64,
    pub page: i64,
    pub per_page: i64,
}

const ENROLLMENT_PAGES: &str = "
    SELECT w.ordinal, coalesce(s.version, 0) AS version,
           jsonb_build_object(
               'tenant_id', w.tenant_id, 'course_id', w.course_id, 'page', w.page, 'per_page', w.per_page,
               'total', coalesce(s.enrollments, 0),
               'enrollments', coalesce((
                   SELECT jsonb_agg(jsonb_build_object(
                              'enrollment_id', e.enrollment_id, 'user_id', e.user_id, 'email', u.email,
                              'first_name', u.first_name, 'last_name', u.last_name,
                              'percentage_completed', e.percentage_completed, 'started_at', e.started_at,
                              'completed_at', e.completed_at, 'expiry_date', e.expiry_date,
                              'free_trial', e.free_trial, 'updated_at', e.updated_at)
                          ORDER BY e.updated_at DESC, e.enrollment_id)
                   FROM (SELECT * FROM enrollments e
                         WHERE e.tenant_id = w.tenant_id AND e.course_id = w.course_id
                         ORDER BY e.updated_at DESC, e.enrollment_id
                         LIMIT w.per_page OFFSET (w.page - 1) * w.per_page) e
                   LEFT JOIN users u ON u.tenant_id = e.tenant_id AND u.user_id = e.user_id), '[]'::jsonb),
               'version', coalesce(s.version, 0)) AS body
    FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[]) WITH ORDINALITY AS w(tenant_id, course_id, page, per_page, ordinal)
    LEFT JOIN course_statistics s ON s.tenant_id = w.tenant_id AND s.course_id = w.course_id";

/// Pages of enrollments, in the order asked.
pub async fn enrollment_pages(db: &PgPool, pages: &[PageRequest]) -> Result<Vec<Versioned>, sqlx::Error> {
    let tenants: Vec<&str> = pages.iter().map(|page| page.tenant_id.as_str()).collect();
    let courses: Vec<i64> = pages.iter().map(|page| page.course_id).collect();
    let numbers: Vec<i64> = pages.iter().map(|page| page.page).collect();
    let sizes: Vec<i64> = pages.iter().map(|page| page.per_page).collect();
    let mut rows: Vec<(i64, i64, Value)> =
        sqlx::query_as(ENROLLMENT_PAGES).bind(tenants).bind(courses).bind(numbers).bind(sizes).fetch_all(db).await?;
    rows.sort_by_key(|(ordinal, _, _)| *ordinal);
    Ok(rows.into_iter().map(|(_, version, body)| Versioned { version, body }).collect())
}
