//! A worker's health, as its loop sees it, served on `/healthz` and
//! `/readyz` when `FLEET_HEALTH_LISTEN` is set.
//!
//! `/readyz` answers 503 while the worker waits for Postgres or Redis, so a
//! supervisor or a dashboard sees an outage without reading logs.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

/// A dependency the worker cannot do without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Postgres,
    Redis,
}

impl Dependency {
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
        let since = outage.as_ref().map_or_else(Instant::now, |outage| outage.since);
        *outage = Some(Outage { dependency, error: error.to_string(), since });
    }

    /// Records that the worker is making progress again.
    pub fn available(&self) {
        let mut outage = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(ended) = outage.take() {
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

/// `/healthz` (the process answers) and `/readyz` (no outage).
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn readyz(State(health): State<Health>) -> Response {
    match health.outage() {
        None => Json(json!({ "status": "ready" })).into_response(),
        Some((dependency, error, seconds)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "waiting", "dependency": dependency.as_str(), "error": error, "seconds": seconds })),
        )
            .into_response(),
    }
}
