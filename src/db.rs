//! The Postgres connection pool, migrations and the schema check.
//!
//! TLS has libpq's meaning (sqlx over rustls, the system's roots):
//! `sslmode=disable|allow|prefer|require|verify-ca|verify-full`,
//! `sslrootcert`, `sslcert` and `sslkey` in `DATABASE_URL`, or the
//! `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and `PGSSLKEY` variables. As in
//! libpq, `sslmode=require` with a root certificate given verifies the
//! server's certificate against it (verify-ca).
//!
//! Through a pooler in transaction mode (PgBouncer before 1.21), a
//! statement prepared on one server connection is not there on the next:
//! [`Pooling::Transaction`] keeps no statement prepared between
//! transactions (decision 0020).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::health::{self, Health};
use crate::telemetry::readiness::{self, Dependency};

/// How the connections reach Postgres.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pooling {
    /// Straight to Postgres, or through a pooler in session mode: each
    /// connection keeps its prepared statements (a cache of 100).
    #[default]
    Session,
    /// Through a pooler in transaction mode: statements are prepared
    /// unnamed, each time, and never outlive their transaction's server.
    Transaction,
}

/// The connect options `url` names, with libpq's meaning of TLS and
/// `pooling`'s statement cache.
pub fn options(url: &str, pooling: Pooling) -> Result<PgConnectOptions, sqlx::Error> {
    let mut options = PgConnectOptions::from_str(url)?.application_name("fleet");
    if matches!(options.get_ssl_mode(), PgSslMode::Require) && names_root_certificate(url) {
        options = options.ssl_mode(PgSslMode::VerifyCa);
    }
    if pooling == Pooling::Transaction {
        options = options.statement_cache_capacity(0);
    }
    Ok(options)
}

/// Whether the URL (or `PGSSLROOTCERT`) names a root certificate.
fn names_root_certificate(url: &str) -> bool {
    let in_url = url::Url::parse(url)
        .map(|url| url.query_pairs().any(|(name, _)| name == "sslrootcert" || name == "ssl-root-cert"))
        .unwrap_or(false);
    in_url || std::env::var_os("PGSSLROOTCERT").is_some_and(|value| !value.is_empty())
}

fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new().max_connections(8).acquire_timeout(Duration::from_secs(5))
}

/// A pool whose acquires fail after a few seconds instead of hanging, so a
/// Postgres outage surfaces as an error the worker can back off from. When
/// the pool gives up without saying why, the error is what one connection
/// attempt answers (a refusal, a wrong password), not "pool timed out".
pub async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    let options = options(url, Pooling::Session)?;
    match pool_options().connect_with(options.clone()).await {
        Err(sqlx::Error::PoolTimedOut) => {
            Err(first_attempt_error(&options, Duration::from_secs(5)).await.unwrap_or(sqlx::Error::PoolTimedOut))
        }
        connected => connected,
    }
}

/// Like [`connect`], without connecting yet: only a URL sqlx cannot use
/// fails, so a role starts while Postgres is down and waits for it.
pub fn connect_lazy(options: PgConnectOptions) -> PgPool {
    pool_options().connect_lazy_with(options)
}

/// The error of one connection attempt with `options`, if it failed
/// within `within` (a role's start looks at it; a slower answer is an
/// outage, which the role waits through).
pub(crate) async fn first_attempt_error(options: &PgConnectOptions, within: Duration) -> Option<sqlx::Error> {
    use sqlx::{ConnectOptions, Connection};
    match tokio::time::timeout(within, options.connect()).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            None
        }
        Ok(Err(err)) => Some(err),
        Err(_) => None,
    }
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
        // The simple protocol: one message, whole on one server behind a pooler.
        let applied = sqlx::raw_sql("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(pool).await;
        match applied {
            Ok(row) => sqlx::Row::try_get::<Option<i64>, _>(&row, 0),
            // No migrations table: nothing was ever migrated.
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P01") => Ok(None),
            Err(other) => Err(cause_of(pool, other).await),
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
pub(crate) async fn wait_until_reachable(pool: &PgPool, url: &str, health: &Health, stop: &CancellationToken) -> bool {
    let address = crate::urls::shown_address(url);
    health::until_reachable(health, Dependency::Postgres, &address, stop, || async {
        match sqlx::raw_sql("SELECT 1").execute(pool).await {
            Ok(_) => Ok(()),
            Err(err) => Err(cause_of(pool, err).await),
        }
    })
    .await
    .is_some()
}

/// `err`, or, when the pool only says it timed out, what one connection
/// attempt answers instead (the refusal, the wrong password), so that logs
/// and `/readyz` tell why.
pub(crate) async fn cause_of(pool: &PgPool, err: sqlx::Error) -> sqlx::Error {
    match err {
        sqlx::Error::PoolTimedOut => first_attempt_error(&pool.connect_options(), Duration::from_secs(3))
            .await
            .unwrap_or(sqlx::Error::PoolTimedOut),
        other => other,
    }
}

/// Applies the embedded migrations; safe to run concurrently and repeatedly.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    fleet_jobs::MIGRATOR.run(pool).await
}

/// Whether Postgres answers a query in time.
pub(crate) async fn probe(db: &PgPool) -> Result<(), String> {
    // The simple protocol: one message, whole on one server behind a pooler.
    match tokio::time::timeout(readiness::PROBE_TIMEOUT, sqlx::raw_sql("SELECT 1").execute(db)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(cause_of(db, err).await.to_string()),
        Err(_) => Err(format!("no answer within {} s", readiness::PROBE_TIMEOUT.as_secs())),
    }
}
