//! The test harness: real Redis and Postgres, a database and key prefix per
//! test, and the fleet's own intake and worker run in-process.
//!
//! Servers: when `REDIS_URL` / `DATABASE_URL` are set they are used;
//! otherwise the harness starts a throwaway `redis-server` and PostgreSQL
//! once per test binary (see `fleet::local_services`), which stop when the
//! test process exits. Every test gets its own database and key prefix, so
//! tests run in parallel and in any order; both are removed when the test's
//! [`TestContext`] is dropped.
//!
//! One file per concern, all re-exported here (`crate::helpers::…`):
//! - [`servers`]: the servers, [`TestContext`] and what a test reads back;
//! - [`roles`]: intake, worker and read API run in-process;
//! - [`http`]: signed requests and the Thinkific example bodies;
//! - [`processes`]: the real `fleet` binary, its signals and exit;
//! - [`console`]: the operator console over plain HTTP, cookies kept;
//! - [`browser`]: headless Chromium driven through chromedriver (WebDriver);
//! - [`proxy`]: a TCP proxy a test cuts to stage an outage;
//! - [`tls`]: a test CA, and Redis, a Redis Cluster and Postgres over TLS only;
//! - [`tools`]: the other programs some tests run, and the package of each.

#![allow(dead_code)]

pub mod browser;
pub mod console;
pub mod http;
pub mod processes;
pub mod proxy;
pub mod roles;
pub mod servers;
pub mod tls;
pub mod tools;

use std::time::Duration;

pub use self::browser::*;
pub use self::console::*;
pub use self::http::*;
pub use self::processes::*;
pub use self::proxy::*;
pub use self::roles::*;
pub use self::servers::*;
pub use self::tls::*;

/// Polls `check` until it holds; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
