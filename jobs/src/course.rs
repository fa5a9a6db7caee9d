//! A course: the `course.*` topics, its payload, and how its rows are
//! written (`courses`). An enrollment's payload embeds a stub of its course.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgConnection;

use crate::parse;
use crate::version::{Latest, Version, VersionColumns};

/// The topics of a course that the fleet applies.
pub(crate) const TOPICS: &[&str] = &["course.created", "course.updated", "course.deleted"];

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Course {
    #[serde(deserialize_with = "parse::id")]
    pub id: i64,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub slug: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub updated_at: Option<DateTime<Utc>>,
    /// Set from the envelope for `course.deleted`, never read from the payload.
    #[serde(skip)]
    pub deleted: bool,
}

impl Course {
    /// Reads the payload of `topic`, one of [`TOPICS`].
    pub(crate) fn decode(topic: &str, payload: Value) -> Result<Self, serde_json::Error> {
        let mut course: Self = parse::payload(payload)?;
        course.deleted = topic == "course.deleted";
        Ok(course)
    }

    /// Offers its row at `version`; a deleted course is marked deleted as of `at`.
    pub(crate) fn offer(&self, tenant: &str, version: Version, at: DateTime<Utc>, courses: &mut Latest<CourseRow>) {
        let row =
            CourseRow { name: self.name.clone(), slug: self.slug.clone(), deleted_at: self.deleted.then_some(at) };
        courses.offer((tenant.to_owned(), self.id), version, row);
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EmbeddedCourse {
    #[serde(deserialize_with = "parse::id")]
    pub id: i64,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub name: Option<String>,
}

impl EmbeddedCourse {
    /// Offers the stub of a course another resource's payload embeds.
    pub(crate) fn offer_stub(&self, tenant: &str, version: &Version, courses: &mut Latest<CourseRow>) {
        let row = CourseRow { name: self.name.clone(), slug: None, deleted_at: None };
        courses.offer((tenant.to_owned(), self.id), version.clone(), row);
    }
}

/// A course's row as a batch writes it.
pub(crate) struct CourseRow {
    name: Option<String>,
    slug: Option<String>,
    deleted_at: Option<DateTime<Utc>>,
}

pub(crate) async fn upsert(conn: &mut PgConnection, rows: Latest<CourseRow>) -> Result<u64, sqlx::Error> {
    if rows.0.is_empty() {
        return Ok(0);
    }
    let (mut tenants, mut ids, mut names, mut slugs, mut deleted) = (vec![], vec![], vec![], vec![], vec![]);
    let mut versions = VersionColumns::default();
    for ((tenant, id), (version, row)) in rows.0 {
        tenants.push(tenant);
        ids.push(id);
        names.push(row.name);
        slugs.push(row.slug);
        deleted.push(row.deleted_at);
        versions.push(version);
    }
    let result = sqlx::query(
        "INSERT INTO courses AS c (tenant_id, course_id, name, slug, deleted_at,
                source_rank, source_updated_at, source_event_created_at, source_event_id)
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::timestamptz[],
                $6::int2[], $7::timestamptz[], $8::timestamptz[], $9::text[])
         ON CONFLICT (tenant_id, course_id) DO UPDATE SET
                name = EXCLUDED.name, slug = EXCLUDED.slug, deleted_at = EXCLUDED.deleted_at,
                source_rank = EXCLUDED.source_rank, source_updated_at = EXCLUDED.source_updated_at,
                source_event_created_at = EXCLUDED.source_event_created_at,
                source_event_id = EXCLUDED.source_event_id
         WHERE (c.source_rank, c.source_updated_at, c.source_event_created_at, c.source_event_id)
             < (EXCLUDED.source_rank, EXCLUDED.source_updated_at, EXCLUDED.source_event_created_at, EXCLUDED.source_event_id)",
    )
    .bind(tenants)
    .bind(ids)
    .bind(names)
    .bind(slugs)
    .bind(deleted)
    .bind(versions.ranks)
    .bind(versions.updated_at)
    .bind(versions.event_created_at)
    .bind(versions.event_ids)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}
