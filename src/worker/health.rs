//! A worker's health, as its loop sees it, served on `/healthz`, `/readyz`
//! and `/metrics` when `FLEET_HEALTH_LISTEN` is set.
//!
//! `/readyz` answers 503 while the worker waits for Postgres or Redis, so a
//! supervisor or a dashboard sees an outage without reading logs. It asks
//! the loop rather than probing: the loop uses both all the time, and a
//! probe could pass while the loop's own connections are stuck.

use axum::extract::State;
use axum::response::Response;
use axum::Router;

use crate::health::Health;
use crate::telemetry::{metrics, readiness};

/// `/healthz` (the process answers), `/readyz` (no outage) and `/metrics`.
pub fn router(health: Health) -> Router {
    metrics::install();
    readiness::routes(readyz, true).with_state(health)
}

/// Both dependencies are required; the one the loop waits for is down.
async fn readyz(State(health): State<Health>) -> Response {
    health.readyz()
}
