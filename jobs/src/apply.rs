//! Applying a batch of events to Postgres with set-based statements.
//!
//! A batch is first reduced in memory to the greatest [`Version`] per record,
//! then written with one `INSERT … SELECT FROM UNNEST … ON CONFLICT` per
//! table whose update only lands over a smaller stored version. The caller
//! owns the transaction, so a batch commits or rolls back whole.
//!
//! Rows are written in primary-key order so that two workers writing
//! overlapping batches take their row locks in the same order.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

use crate::event::{Change, Course, EmbeddedCourse, EmbeddedUser, Enrollment, Event, Order, User, Version};

/// What a batch wrote: rows inserted or updated per table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    /// Events in the batch.
    pub events: usize,
    /// Events seen for the first time (the rest were already recorded).
    pub new_events: u64,
    pub enrollments: u64,
    pub users: u64,
    pub courses: u64,
    pub orders: u64,
}

type Key = (String, i64);

/// Keeps, per record, the row of the greatest version seen.
struct Latest<R>(BTreeMap<Key, (Version, R)>);

impl<R> Latest<R> {
    fn new() -> Self {
        Self(BTreeMap::new())
    }

    fn offer(&mut self, key: Key, version: Version, row: R) {
        match self.0.get(&key) {
            Some((held, _)) if *held >= version => {}
            _ => {
                self.0.insert(key, (version, row));
            }
        }
    }
}

struct CourseRow {
    name: Option<String>,
    slug: Option<String>,
    deleted_at: Option<DateTime<Utc>>,
}

struct UserRow {
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    company: Option<String>,
    roles: Option<Value>,
    created_at: Option<DateTime<Utc>>,
}

struct EnrollmentRow {
    user_id: i64,
    course_id: i64,
    record: Enrollment,
    topic: String,
}

/// Why a batch could not be applied, told apart by who is at fault.
///
/// Postgres names its errors with a five-character SQLSTATE whose first two
/// characters are the class; the class says who is at fault:
/// - **Event**: the data. Class 22 (data exception: a value out of range, an
///   invalid text), 23 (a constraint), 54 (a program limit, such as an index
///   row too large for a btree). The same rows fail the same way every time.
/// - **Outage**: no answer (I/O, TLS, protocol, pool timed out or closed)
///   or an answer saying the server cannot work now: class 08 (connection),
///   53 (out of resources: disk full, too many connections), 57 (shutting
///   down, statement cancelled), 58 (system error), and 25006 (a read-only
///   server, as after a failover to a standby). Nothing is wrong with the
///   events; try again later.
/// - **Unexplained**: any other answer (a trigger's `RAISE`, 40001/40P01
///   serialization failures and deadlocks, 42xxx after a bad deploy, XX000)
///   and client-side errors. Only the caller can tell, by applying the
///   events apart, whether one event or Postgres is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("Postgres refused the event's data: {0}")]
    Event(#[source] sqlx::Error),
    #[error("Postgres is unavailable: {0}")]
    Outage(#[source] sqlx::Error),
    #[error("Postgres refused the write: {0}")]
    Unexplained(#[source] sqlx::Error),
}

/// SQLSTATE classes that point at the deploy or the database's setup rather
/// than at an event's data: feature not supported, invalid transaction
/// state, invalid authorization, unknown database or schema, syntax error
/// or access rule violation (a missing table or column, a revoked grant).
const SETUP_CLASSES: [&str; 6] = ["0A", "25", "28", "3D", "3F", "42"];

impl ApplyError {
    /// Whether Postgres refused with a SQLSTATE of the deploy or the
    /// database's setup ([`SETUP_CLASSES`]), which would refuse every event
    /// alike (decision 0009).
    pub fn points_at_setup(&self) -> bool {
        self.sqlstate().is_some_and(|code| SETUP_CLASSES.iter().any(|class| code.starts_with(class)))
    }

    /// The SQLSTATE Postgres answered with, if it answered.
    pub fn sqlstate(&self) -> Option<String> {
        let (Self::Event(err) | Self::Outage(err) | Self::Unexplained(err)) = self;
        sqlstate(err)
    }
}

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error().and_then(|db| db.code()).map(|code| code.into_owned())
}

impl From<sqlx::Error> for ApplyError {
    fn from(err: sqlx::Error) -> Self {
        let no_answer = matches!(
            err,
            sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
        );
        if no_answer {
            return Self::Outage(err);
        }
        let Some(code) = sqlstate(&err) else {
            return Self::Unexplained(err);
        };
        match (code.get(..2), code.as_str()) {
            (Some("22" | "23" | "54"), _) => Self::Event(err),
            (Some("08" | "53" | "57" | "58"), _) | (_, "25006") => Self::Outage(err),
            _ => Self::Unexplained(err),
        }
    }
}

/// Applies `events` on `conn` (inside the caller's transaction).
///
/// Idempotent and order-insensitive: applying the same events again, or in
/// any order and any split into batches, leaves the same state.
pub async fn apply_batch(conn: &mut PgConnection, events: &[Event]) -> Result<BatchReport, ApplyError> {
    let mut courses = Latest::new();
    let mut users = Latest::new();
    let mut enrollments = Latest::new();
    let mut orders = Latest::new();

    for event in events {
        let tenant = &event.tenant_id;
        match &event.change {
            Change::Enrollment(enrollment) => {
                let version = event.version(Version::FULL, enrollment.updated_at);
                let stub = Version { rank: Version::STUB, ..version.clone() };
                if let Some(course) = &enrollment.course {
                    offer_course_stub(&mut courses, tenant, course, &stub);
                }
                if let Some(user) = &enrollment.user {
                    offer_user_stub(&mut users, tenant, user, &stub);
                }
                let (Some(user_id), Some(course_id)) = (enrollment.learner_id(), enrollment.course_of()) else {
                    // Event::decode rejects such enrollments; nothing to write.
                    continue;
                };
                let row = EnrollmentRow { user_id, course_id, record: enrollment.clone(), topic: event.topic.clone() };
                enrollments.offer((tenant.clone(), enrollment.id), version, row);
            }
            Change::User(user) => {
                let version = event.version(Version::FULL, user.updated_at);
                users.offer((tenant.clone(), user.id), version, full_user(user));
            }
            Change::Course(course) => {
                let version = event.version(Version::FULL, course.updated_at);
                courses.offer((tenant.clone(), course.id), version, full_course(course, event));
            }
            Change::Order(order) => {
                let version = event.version(Version::FULL, None);
                if let Some(user) = &order.user {
                    let stub = Version { rank: Version::STUB, ..version.clone() };
                    offer_user_stub(&mut users, tenant, user, &stub);
                }
                orders.offer((tenant.clone(), order.id), version, order.clone());
            }
            Change::Unhandled => {}
        }
    }

    // Rows that concurrent batches share come last: learners (a learner's
    // enrollments arrive in many batches) and courses (nearly every batch
    // rewrites the courses it touches), so their locks are held only for
    // the end of the transaction and concurrent workers overlap until then.
    // Statistics are added at commit (migration 20261124000004). Every
    // batch takes its locks in this order, each table in key order.
    let new_events = record_events(conn, events).await?;
    let orders = upsert_orders(conn, orders).await?;
    let enrollments = upsert_enrollments(conn, enrollments).await?;
    let users = upsert_users(conn, users).await?;
    let courses = upsert_courses(conn, courses).await?;
    Ok(BatchReport { events: events.len(), new_events, enrollments, users, courses, orders })
}

fn offer_course_stub(courses: &mut Latest<CourseRow>, tenant: &str, course: &EmbeddedCourse, version: &Version) {
    let row = CourseRow { name: course.name.clone(), slug: None, deleted_at: None };
    courses.offer((tenant.to_owned(), course.id), version.clone(), row);
}

fn offer_user_stub(users: &mut Latest<UserRow>, tenant: &str, user: &EmbeddedUser, version: &Version) {
    let row = UserRow {
        email: user.email.clone(),
        first_name: user.first_name.clone(),
        last_name: user.last_name.clone(),
        company: None,
        roles: None,
        created_at: None,
    };
    users.offer((tenant.to_owned(), user.id), version.clone(), row);
}

fn full_user(user: &User) -> UserRow {
    UserRow {
        email: user.email.clone(),
        first_name: user.first_name.clone(),
        last_name: user.last_name.clone(),
        company: user.company.clone(),
        roles: user.roles.clone(),
        created_at: user.created_at,
    }
}

fn full_course(course: &Course, event: &Event) -> CourseRow {
    CourseRow {
        name: course.name.clone(),
        slug: course.slug.clone(),
        deleted_at: course.deleted.then(|| event.created_at.unwrap_or(event.received_at)),
    }
}

/// Records every event of the batch in the audit table; returns how many
/// were new.
async fn record_events(conn: &mut PgConnection, events: &[Event]) -> Result<u64, sqlx::Error> {
    let mut tenant_ids = Vec::with_capacity(events.len());
    let mut event_ids = Vec::with_capacity(events.len());
    let mut topics = Vec::with_capacity(events.len());
    let mut created = Vec::with_capacity(events.len());
    let mut received = Vec::with_capacity(events.len());
    let mut entry_ids = Vec::with_capacity(events.len());
    let mut handled = Vec::with_capacity(events.len());
    for event in events {
        tenant_ids.push(event.tenant_id.as_str());
        event_ids.push(event.event_id.as_str());
        topics.push(event.topic.as_str());
        created.push(event.created_at);
        received.push(event.received_at);
        entry_ids.push(event.stream_entry_id.as_str());
        handled.push(!matches!(event.change, Change::Unhandled));
    }
    let result = sqlx::query(
        "INSERT INTO events (tenant_id, event_id, topic, event_created_at, received_at, stream_entry_id, handled)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::text[], $7::bool[])
         ON CONFLICT (tenant_id, event_id) DO NOTHING",
    )
    .bind(tenant_ids)
    .bind(event_ids)
    .bind(topics)
    .bind(created)
    .bind(received)
    .bind(entry_ids)
    .bind(handled)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// The version columns every versioned table shares, as parallel arrays.
#[derive(Default)]
struct VersionColumns {
    ranks: Vec<i16>,
    updated_at: Vec<DateTime<Utc>>,
    event_created_at: Vec<DateTime<Utc>>,
    event_ids: Vec<String>,
}

impl VersionColumns {
    fn push(&mut self, version: Version) {
        self.ranks.push(version.rank);
        self.updated_at.push(version.updated_at);
        self.event_created_at.push(version.event_created_at);
        self.event_ids.push(version.event_id);
    }
}

async fn upsert_courses(conn: &mut PgConnection, rows: Latest<CourseRow>) -> Result<u64, sqlx::Error> {
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

async fn upsert_users(conn: &mut PgConnection, rows: Latest<UserRow>) -> Result<u64, sqlx::Error> {
    if rows.0.is_empty() {
        return Ok(0);
    }
    let (mut tenants, mut ids, mut emails, mut first, mut last) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut companies, mut roles, mut created) = (vec![], vec![], vec![]);
    let mut versions = VersionColumns::default();
    for ((tenant, id), (version, row)) in rows.0 {
        tenants.push(tenant);
        ids.push(id);
        emails.push(row.email);
        first.push(row.first_name);
        last.push(row.last_name);
        companies.push(row.company);
        roles.push(row.roles);
        created.push(row.created_at);
        versions.push(version);
    }
    let result = sqlx::query(
        "INSERT INTO users AS u (tenant_id, user_id, email, first_name, last_name, company, roles, user_created_at,
                source_rank, source_updated_at, source_event_created_at, source_event_id)
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::jsonb[], $8::timestamptz[], $9::int2[], $10::timestamptz[], $11::timestamptz[], $12::text[])
         ON CONFLICT (tenant_id, user_id) DO UPDATE SET
                email = EXCLUDED.email, first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name,
                company = EXCLUDED.company, roles = EXCLUDED.roles, user_created_at = EXCLUDED.user_created_at,
                source_rank = EXCLUDED.source_rank, source_updated_at = EXCLUDED.source_updated_at,
                source_event_created_at = EXCLUDED.source_event_created_at,
                source_event_id = EXCLUDED.source_event_id
         WHERE (u.source_rank, u.source_updated_at, u.source_event_created_at, u.source_event_id)
             < (EXCLUDED.source_rank, EXCLUDED.source_updated_at, EXCLUDED.source_event_created_at, EXCLUDED.source_event_id)",
    )
    .bind(tenants)
    .bind(ids)
    .bind(emails)
    .bind(first)
    .bind(last)
    .bind(companies)
    .bind(roles)
    .bind(created)
    .bind(versions.ranks)
    .bind(versions.updated_at)
    .bind(versions.event_created_at)
    .bind(versions.event_ids)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

async fn upsert_enrollments(conn: &mut PgConnection, rows: Latest<EnrollmentRow>) -> Result<u64, sqlx::Error> {
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

async fn upsert_orders(conn: &mut PgConnection, rows: Latest<Order>) -> Result<u64, sqlx::Error> {
    if rows.0.is_empty() {
        return Ok(0);
    }
    let (mut tenants, mut ids, mut numbers, mut statuses, mut payment_types) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut amounts, mut billing, mut product_ids, mut product_names) = (vec![], vec![], vec![], vec![]);
    let (mut coupons, mut user_ids, mut items, mut created) = (vec![], vec![], vec![], vec![]);
    let (mut event_created, mut event_ids) = (vec![], vec![]);
    for ((tenant, id), (version, order)) in rows.0 {
        user_ids.push(order.learner_id());
        tenants.push(tenant);
        ids.push(id);
        numbers.push(order.order_number);
        statuses.push(order.status);
        payment_types.push(order.payment_type);
        amounts.push(order.amount_cents);
        billing.push(order.billing_name);
        product_ids.push(order.product_id);
        product_names.push(order.product_name);
        coupons.push(order.coupon.filter(|coupon| !coupon.is_null()));
        items.push(order.items.unwrap_or(Value::Array(vec![])));
        created.push(order.created_at);
        event_created.push(version.event_created_at);
        event_ids.push(version.event_id);
    }
    let result = sqlx::query(
        "INSERT INTO orders AS o (tenant_id, order_id, order_number, status, payment_type, amount_cents,
                billing_name, product_id, product_name, coupon, user_id, items, order_created_at,
                source_event_created_at, source_event_id)
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::int8[],
                $7::text[], $8::int8[], $9::text[], $10::jsonb[], $11::int8[], $12::jsonb[],
                $13::timestamptz[], $14::timestamptz[], $15::text[])
         ON CONFLICT (tenant_id, order_id) DO UPDATE SET
                order_number = EXCLUDED.order_number, status = EXCLUDED.status,
                payment_type = EXCLUDED.payment_type, amount_cents = EXCLUDED.amount_cents,
                billing_name = EXCLUDED.billing_name, product_id = EXCLUDED.product_id,
                product_name = EXCLUDED.product_name, coupon = EXCLUDED.coupon, user_id = EXCLUDED.user_id,
                items = EXCLUDED.items, order_created_at = EXCLUDED.order_created_at,
                source_event_created_at = EXCLUDED.source_event_created_at,
                source_event_id = EXCLUDED.source_event_id
         WHERE (o.source_event_created_at, o.source_event_id)
             < (EXCLUDED.source_event_created_at, EXCLUDED.source_event_id)",
    )
    .bind(tenants)
    .bind(ids)
    .bind(numbers)
    .bind(statuses)
    .bind(payment_types)
    .bind(amounts)
    .bind(billing)
    .bind(product_ids)
    .bind(product_names)
    .bind(coupons)
    .bind(user_ids)
    .bind(items)
    .bind(created)
    .bind(event_created)
    .bind(event_ids)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// Which of `events` (tenant id, event id) are recorded as applied.
pub async fn already_applied(
    db: &sqlx::PgPool,
    events: &[(String, String)],
) -> Result<std::collections::HashSet<(String, String)>, ApplyError> {
    let (tenants, ids): (Vec<&str>, Vec<&str>) =
        events.iter().map(|(tenant, id)| (tenant.as_str(), id.as_str())).unzip();
    // In a transaction, as every statement of the fleet: through a pooler in
    // transaction mode, a statement's parse and its run then reach one server.
    let mut tx = db.begin().await?;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT e.tenant_id, e.event_id FROM events e
         JOIN UNNEST($1::text[], $2::text[]) AS wanted(tenant_id, event_id)
           ON e.tenant_id = wanted.tenant_id AND e.event_id = wanted.event_id",
    )
    .bind(tenants)
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::ApplyError;

    /// An answer from Postgres with only a SQLSTATE, as the classifier sees it.
    #[derive(Debug, thiserror::Error)]
    #[error("SQLSTATE {0}")]
    struct Answer(&'static str);

    impl sqlx::error::DatabaseError for Answer {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn classify(code: &'static str) -> &'static str {
        match ApplyError::from(sqlx::Error::Database(Box::new(Answer(code)))) {
            ApplyError::Event(_) => "event",
            ApplyError::Outage(_) => "outage",
            ApplyError::Unexplained(_) => "unexplained",
        }
    }

    #[test]
    fn sqlstate_classes_tell_who_is_at_fault() {
        for code in ["22001", "22P02", "23505", "23514", "54000", "54001"] {
            assert_eq!(classify(code), "event", "{code}");
        }
        for code in ["08006", "53100", "53300", "57P01", "57014", "58030", "25006"] {
            assert_eq!(classify(code), "outage", "{code}");
        }
        for code in ["P0001", "XX000", "42P01", "42703", "0A000", "40001", "40P01", "25P02", "55P03"] {
            assert_eq!(classify(code), "unexplained", "{code}");
        }
    }

    #[test]
    fn no_answer_is_an_outage() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for err in [sqlx::Error::Io(refused), sqlx::Error::PoolTimedOut, sqlx::Error::PoolClosed] {
            assert!(matches!(ApplyError::from(err), ApplyError::Outage(_)));
        }
    }
}
