//! The Postgres connection pool and migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// A pool whose acquires fail after a few seconds instead of hanging, so a
/// Postgres outage surfaces as an error the worker can back off from.
pub async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name("fleet");
    PgPoolOptions::new().max_connections(8).acquire_timeout(Duration::from_secs(5)).connect_with(options).await
}

/// Applies the embedded migrations; safe to run concurrently and repeatedly.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    fleet_jobs::MIGRATOR.run(pool).await
}
