//! A worker's health, as its loop sees it, served on `/healthz`, `/readyz`
//! and `/metrics` when `FLEET_HEALTH_LISTEN` is set.
//!
//! `/readyz` answers 503 while the worker waits for Postgres or Redis, so a
//! supervisor or a dashboard sees an outage without reading logs. It asks
//! the loop rather than probing: the loop uses both all the time, and a
//! probe could pass while the loop's own connections are stuck.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::telemetry::metrics;
use crate::telemetry::readiness::{self, Check};

/// A dependency the worker cannot do without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Postgres,
    Redis,
}

impl Dependency {
    pub const ALL: [Dependency; 2] = [Dependency::Redis, Dependency::Postgres];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Redis => "redis",
        }
    }
}

#[derive(Debug)]
struct Outage {
    dependency: Dependency,
    error: String,
    since: Instant,
}

/// Shared between the worker loop (which reports) and the health routes.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<Option<Outage>>>);

impl Health {
    /// Records that `dependency` failed; the first report of an outage is
    /// logged at error level, later ones at debug.
    pub fn unavailable(&self, dependency: Dependency, error: &dyn std::fmt::Display) {
        let mut outage = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if outage.is_none() {
            tracing::error!(
                dependency = dependency.as_str(), error = %error,
                "{} unavailable: consumption paused, retrying with backoff; no event loses an attempt. \
                 Check that it is up and reachable",
                dependency.as_str()
            );
        } else {
            tracing::debug!(dependency = dependency.as_str(), error = %error, "still unavailable");
        }
        metrics::dependency_up(dependency.as_str(), false);
        let since = outage.as_ref().map_or_else(Instant::now, |outage| outage.since);
        *outage = Some(Outage { dependency, error: error.to_string(), since });
    }

    /// Records that the worker is making progress again.
    pub fn available(&self) {
        let mut outage = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(ended) = outage.take() {
            metrics::dependency_up(ended.dependency.as_str(), true);
            tracing::info!(
                dependency = ended.dependency.as_str(),
                outage_seconds = ended.since.elapsed().as_secs(),
                "dependency is back; consumption resumed"
            );
        }
    }

    /// `None` when healthy, else (dependency, error, seconds).
    pub fn outage(&self) -> Option<(Dependency, String, u64)> {
        let outage = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        outage.as_ref().map(|outage| (outage.dependency, outage.error.clone(), outage.since.elapsed().as_secs()))
    }
}

/// `/healthz` (the process answers), `/readyz` (no outage) and `/metrics`.
pub fn router(health: Health) -> Router {
    metrics::install();
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::render))
        .with_state(health)
}

/// Both dependencies are required; the one the loop waits for is down.
async fn readyz(State(health): State<Health>) -> Response {
    let outage = health.outage();
    let checks: Vec<Check> = Dependency::ALL
        .into_iter()
        .map(|dependency| {
            let state = match &outage {
                Some((down, error, seconds)) if *down == dependency => {
                    Err(format!("{error} (waiting for {seconds} s)"))
                }
                _ => Ok(()),
            };
            Check::required(dependency.as_str(), state)
        })
        .collect();
    readiness::answer(&checks)
}
