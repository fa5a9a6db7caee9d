//! The Postgres connection pool, migrations and the schema check.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::health::{self, Dependency, Health};

/// A pool whose acquires fail after a few seconds instead of hanging, so a
/// Postgres outage surfaces as an error the worker can back off from.
pub async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name("fleet");
    PgPoolOptions::new().max_connections(8).acquire_timeout(Duration::from_secs(5)).connect_with(options).await
}

/// Like [`connect`], without connecting yet: only a URL sqlx cannot use
/// fails, so a role starts while Postgres is down and waits for it.
pub fn connect_lazy(url: &str) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name("fleet");
    Ok(PgPoolOptions::new().max_connections(8).acquire_timeout(Duration::from_secs(5)).connect_lazy_with(options))
}

/// The schema is older than this binary: `fleet migrate` has not run.
#[derive(Debug, thiserror::Error)]
#[error("the database schema is behind this binary (migration {applied} applied, {needed} needed); run `fleet migrate` first")]
pub struct SchemaBehind {
    pub applied: i64,
    pub needed: i64,
}

/// Checks that every migration of this binary is applied, waiting with
/// backoff while Postgres is unreachable (`url` names it in the logs).
/// `Ok(false)` if `stop` fires first.
pub async fn check_schema(
    pool: &PgPool,
    url: &str,
    health: &Health,
    stop: &CancellationToken,
) -> Result<bool, SchemaBehind> {
    let needed = fleet_jobs::MIGRATOR.iter().map(|migration| migration.version).max().unwrap_or(0);
    let address = crate::urls::shown_address(url);
    let applied = health::until_reachable(health, Dependency::Postgres, &address, stop, || async {
        let applied = sqlx::query_scalar::<_, Option<i64>>("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await;
        match applied {
            // No migrations table: nothing was ever migrated.
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P01") => Ok(None),
            other => other,
        }
    })
    .await;
    let Some(applied) = applied else {
        return Ok(false);
    };
    let applied = applied.unwrap_or(0);
    if applied < needed {
        return Err(SchemaBehind { applied, needed });
    }
    Ok(true)
}

/// Waits with backoff until Postgres answers; `false` if `stop` fires first.
pub async fn wait_until_reachable(pool: &PgPool, url: &str, health: &Health, stop: &CancellationToken) -> bool {
    let address = crate::urls::shown_address(url);
    health::until_reachable(health, Dependency::Postgres, &address, stop, || sqlx::query("SELECT 1").execute(pool))
        .await
        .is_some()
}

/// Applies the embedded migrations; safe to run concurrently and repeatedly.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    fleet_jobs::MIGRATOR.run(pool).await
}
