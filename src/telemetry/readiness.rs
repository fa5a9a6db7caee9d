//! `/readyz`: whether a role can do its work, with the state of each
//! dependency it uses, as JSON:
//!
//! ```text
//! {"status": "ready" | "unavailable",
//!  "dependencies": {"redis": {"state": "up"}, "postgres": {"state": "down", "error": "…"}}}
//! ```
//!
//! The answer is 503 when a required dependency is down; an optional one
//! (Redis for the read API, which then answers from Postgres) is reported
//! but keeps the role ready. Every check also sets `fleet_dependency_up`.
//! `/healthz` stays cheap and checks nothing: the process answers.

use std::time::Duration;

use axum::handler::Handler;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::metrics;

/// How long a probe may take before its dependency counts as down.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A dependency a role waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

/// One dependency's state.
#[derive(Debug, Clone)]
pub struct Check {
    pub dependency: &'static str,
    /// Whether the role is unavailable while it is down.
    pub required: bool,
    /// `Err` says why it is down.
    pub state: Result<(), String>,
}

impl Check {
    pub(crate) fn required(dependency: &'static str, state: Result<(), String>) -> Self {
        Self { dependency, required: true, state }
    }

    pub(crate) fn optional(dependency: &'static str, state: Result<(), String>) -> Self {
        Self { dependency, required: false, state }
    }
}

/// The routes every role serves alike: `/healthz` (the process answers),
/// `/readyz` (answered by the role's `readyz`) and, when `with_metrics`,
/// `/metrics` (a role whose metrics are served on their own address,
/// `FLEET_METRICS_LISTEN`, leaves it out).
pub(crate) fn routes<State, ReadyZ, Args>(readyz: ReadyZ, with_metrics: bool) -> Router<State>
where
    State: Clone + Send + Sync + 'static,
    ReadyZ: Handler<Args, State>,
    Args: 'static,
{
    let router = Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz));
    if with_metrics {
        router.route("/metrics", get(metrics::render))
    } else {
        router
    }
}

/// The `/readyz` answer for `checks` (and `fleet_dependency_up` set from them).
pub fn answer(checks: &[Check]) -> Response {
    let mut dependencies = Map::new();
    let mut ready = true;
    for check in checks {
        metrics::dependency_up(check.dependency, check.state.is_ok());
        let state = match &check.state {
            Ok(()) => json!({ "state": "up" }),
            Err(error) => {
                ready &= !check.required;
                tracing::warn!(dependency = check.dependency, %error, required = check.required, "not ready: dependency down");
                json!({ "state": "down", "error": error })
            }
        };
        dependencies.insert(check.dependency.to_owned(), state);
    }
    let status = if ready { "ready" } else { "unavailable" };
    let body = Json(json!({ "status": status, "dependencies": Value::Object(dependencies) }));
    if ready {
        body.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}
