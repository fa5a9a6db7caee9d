//! An enrollment: the `enrollment.*` topics, its payload (with the stubs of
//! its course and user), and how its rows are written (`enrollments`).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgConnection;

use crate::course::{CourseRow, EmbeddedCourse};
use crate::parse;
use crate::user::{EmbeddedUser, UserRow};
use crate::version::{Latest, Version};

/// The topics of an enrollment that the fleet applies.
pub(crate) const TOPICS: &[&str] =
    &["enrollment.created", "enrollment.progress", "enrollment.completed", "enrollment.trial"];

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Enrollment {
    #[serde(deserialize_with = "parse::id")]
    pub id: i64,
    #[serde(default, deserialize_with = "parse::optional_id")]
    pub course_id: Option<i64>,
    #[serde(default, deserialize_with = "parse::optional_id")]
    pub user_id: Option<i64>,
    pub course: Option<EmbeddedCourse>,
    pub user: Option<EmbeddedUser>,
    #[serde(default, deserialize_with = "parse::percentage")]
    pub percentage_completed: f64,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub activated_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub expiry_date: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub free_trial: Option<bool>,
}

impl Enrollment {
    /// The learner: the enrollment's `user_id`, else its embedded user's id.
    pub fn learner_id(&self) -> Option<i64> {
        self.user_id.or(self.user.as_ref().map(|user| user.id))
    }

    /// The course: the enrollment's `course_id`, else its embedded course's id.
    pub fn course_of(&self) -> Option<i64> {
        self.course_id.or(self.course.as_ref().map(|course| course.id))
    }

    /// Reads the payload of `topic`; an enrollment must name its course and its user.
    pub(crate) fn decode(_topic: &str, payload: Value) -> Result<Self, serde_json::Error> {
        let enrollment: Self = parse::payload(payload)?;
        if enrollment.course_of().is_none() || enrollment.learner_id().is_none() {
            return Err(serde::de::Error::custom("enrollment names no course or no user"));
        }
        Ok(enrollment)
    }

    /// Offers its row at `version`, and stubs of its course and user one
    /// rank below, so a full record of either always wins over them.
    pub(crate) fn offer(&self, tenant: &str, topic: &str, version: Version, rows: Offered<'_>) {
        let stub = Version { rank: Version::STUB, ..version.clone() };
        if let Some(course) = &self.course {
            course.offer_stub(tenant, &stub, rows.courses);
        }
        if let Some(user) = &self.user {
            user.offer_stub(tenant, &stub, rows.users);
        }
        let (Some(user_id), Some(course_id)) = (self.learner_id(), self.course_of()) else {
            // `decode` refuses such enrollments; nothing to write.
            return;
        };
        let row = EnrollmentRow { user_id, course_id, record: self.clone(), topic: topic.to_owned() };
        rows.enrollments.offer((tenant.to_owned(), self.id), version, row);
    }
}

/// The rows an enrollment offers to.
pub(crate) struct Offered<'a> {
    pub(crate) enrollments: &'a mut Latest<EnrollmentRow>,
    pub(crate) courses: &'a mut Latest<CourseRow>,
    pub(crate) users: &'a mut Latest<UserRow>,
}

/// An enrollment's row as a batch writes it.
pub(crate) struct EnrollmentRow {
    user_id: i64,
    course_id: i64,
    record: Enrollment,
    topic: String,
}

pub(crate) async fn upsert(conn: &mut PgConnection, rows: Latest<EnrollmentRow>) -> Result<u64, sqlx::Error> {
    if rows.0.is_empty() {
        return Ok(0);
    }
    let (mut tenants, mut ids, mut user_ids, mut course_ids, mut percents) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut started, mut activated, mut completed, mut expiry) = (vec![], vec![], vec![], vec![]);
    let (mut trials, mut created, mut updated, mut topics) = (vec![], vec![], vec![], vec![]);
    let (mut event_created, mut event_ids) = (vec![], vec![]);
    for ((tenant, id), (version, row)) in rows.0 {
        let record = row.record;
        tenants.push(tenant);
        ids.push(id);
        user_ids.push(row.user_id);
        course_ids.push(row.course_id);
        percents.push(record.percentage_completed);
        started.push(record.started_at);
        activated.push(record.activated_at);
        completed.push(record.completed_at);
        expiry.push(record.expiry_date);
        trials.push(record.free_trial.unwrap_or(row.topic == "enrollment.trial"));
        created.push(record.created_at);
        updated.push(version.updated_at);
        topics.push(row.topic);
        event_created.push(version.event_created_at);
        event_ids.push(version.event_id);
    }
    let result = sqlx::query(
        "INSERT INTO enrollments AS e (tenant_id, enrollment_id, user_id, course_id, percentage_completed,
                started_at, activated_at, completed_at, expiry_date, free_trial, enrollment_created_at,
                updated_at, last_topic, source_event_created_at, source_event_id)
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::float8[],
                $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::bool[],
                $11::timestamptz[], $12::timestamptz[], $13::text[], $14::timestamptz[], $15::text[])
         ON CONFLICT (tenant_id, enrollment_id) DO UPDATE SET
                user_id = EXCLUDED.user_id, course_id = EXCLUDED.course_id,
                percentage_completed = EXCLUDED.percentage_completed,
                started_at = EXCLUDED.started_at, activated_at = EXCLUDED.activated_at,
                completed_at = EXCLUDED.completed_at, expiry_date = EXCLUDED.expiry_date,
                free_trial = EXCLUDED.free_trial, enrollment_created_at = EXCLUDED.enrollment_created_at,
                updated_at = EXCLUDED.updated_at, last_topic = EXCLUDED.last_topic,
                source_event_created_at = EXCLUDED.source_event_created_at,
                source_event_id = EXCLUDED.source_event_id
         WHERE (e.updated_at, e.source_event_created_at, e.source_event_id)
             < (EXCLUDED.updated_at, EXCLUDED.source_event_created_at, EXCLUDED.source_event_id)",
    )
    .bind(tenants)
    .bind(ids)
    .bind(user_ids)
    .bind(course_ids)
    .bind(percents)
    .bind(started)
    .bind(activated)
    .bind(completed)
    .bind(expiry)
    .bind(trials)
    .bind(created)
    .bind(updated)
    .bind(topics)
    .bind(event_created)
    .bind(event_ids)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}
