//! Events retention: delete `events` audit rows applied more than
//! `FLEET_EVENTS_RETENTION_DAYS` ago.
//!
//! The rows go in batches of at most `FLEET_RETENTION_BATCH_SIZE`, each one
//! statement in its own transaction, with a short pause between batches:
//! no lock is held for long, and the workers' inserts into `events` keep
//! flowing. The cut-off is fixed once per run (Postgres's clock), so a run
//! ends even while new rows keep coming. Shutdown stops the loop between
//! two batches. Only Postgres's `events` table is touched: dead letters
//! live in Redis and are never deleted here.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The pause between two batches.
pub const PAUSE: Duration = Duration::from_millis(50);

const DELETE_BATCH: &str = include_str!("retention.sql");

/// What to delete, and how gently.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Rows applied more than this many days ago go.
    pub days: u32,
    /// Most rows one statement deletes.
    pub batch_size: u32,
    /// The pause between two batches.
    pub pause: Duration,
}

/// What one retention run deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub rows: u64,
    pub batches: u64,
    /// Rows applied before this were due.
    pub cutoff: DateTime<Utc>,
    /// Shutdown stopped the run before it was done.
    pub interrupted: bool,
}

impl fmt::Display for Deleted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "deleted {} events row(s) applied before {} in {} batch(es)", self.rows, self.cutoff, self.batches)?;
        if self.interrupted {
            f.write_str(", stopped by shutdown")?;
        }
        Ok(())
    }
}

/// Deletes the rows due, batch by batch, counting them in
/// `fleet_events_retention_deleted_total`.
pub async fn run(db: &PgPool, policy: &Policy, shutdown: &CancellationToken) -> Result<Deleted, sqlx::Error> {
    // Each statement in a transaction of its own: behind a pooler in
    // transaction mode, its parse and its run reach one server (crate::db).
    let mut tx = db.begin().await?;
    let cutoff: DateTime<Utc> = sqlx::query_scalar("SELECT now() - make_interval(days => $1)")
        .bind(i32::try_from(policy.days).unwrap_or(i32::MAX))
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut deleted = Deleted { rows: 0, batches: 0, cutoff, interrupted: false };
    loop {
        if shutdown.is_cancelled() {
            deleted.interrupted = true;
            break;
        }
        let mut tx = db.begin().await?;
        let rows = sqlx::query(DELETE_BATCH)
            .bind(cutoff)
            .bind(i64::from(policy.batch_size))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        deleted.rows += rows;
        deleted.batches += 1;
        crate::telemetry::metrics::retention_deleted(rows);
        if rows < u64::from(policy.batch_size) {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                deleted.interrupted = true;
                break;
            }
            _ = tokio::time::sleep(policy.pause) => {}
        }
    }
    Ok(deleted)
}
