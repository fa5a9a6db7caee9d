//! Applying a batch of events to Postgres with set-based statements.
//!
//! A batch is first reduced in memory to the greatest [`Version`] per record,
//! then written with one `INSERT … SELECT FROM UNNEST … ON CONFLICT` per
//! table whose update only lands over a smaller stored version. The caller
//! owns the transaction, so a batch commits or rolls back whole.
//!
//! Rows are written in primary-key order, and the tables in the one order
//! [`apply_batch`] gives, so that two workers writing overlapping batches
//! take their row locks in the same order.

use sqlx::PgConnection;

use crate::enrollment::{self, Offered};
use crate::event::{Change, Event};
use crate::version::{Latest, Version};
use crate::{course, order, user};

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
                let rows = Offered { enrollments: &mut enrollments, courses: &mut courses, users: &mut users };
                enrollment.offer(tenant, &event.topic, version, rows);
            }
            Change::User(user) => user.offer(tenant, event.version(Version::FULL, user.updated_at), &mut users),
            Change::Course(course) => {
                let version = event.version(Version::FULL, course.updated_at);
                course.offer(tenant, version, event.created_at.unwrap_or(event.received_at), &mut courses);
            }
            Change::Order(order) => order.offer(tenant, event.version(Version::FULL, None), &mut orders, &mut users),
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
    let orders = order::upsert(conn, orders).await?;
    let enrollments = enrollment::upsert(conn, enrollments).await?;
    let users = user::upsert(conn, users).await?;
    let courses = course::upsert(conn, courses).await?;
    Ok(BatchReport { events: events.len(), new_events, enrollments, users, courses, orders })
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
