//! A worker's health, as its loop sees it, served on `/healthz` and
//! `/readyz` when `FLEET_HEALTH_LISTEN` is set.
//!
//! `/readyz` answers 503 while the worker waits for Postgres or Redis, so a
//! supervisor or a dashboard sees an outage without reading logs.

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub use crate::health::{Dependency, Health};

/// `/healthz` (the process answers) and `/readyz` (no outage).
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn readyz(State(health): State<Health>) -> Response {
    health.readyz()
}
