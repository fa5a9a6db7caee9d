//! The dashboard's read API: cached statistics, dashboard summary and pages
//! of enrollments.
//!
//! Each route is cache-aside over `crate::cache`: a fresh value is a `HIT`;
//! a stale one is served (`STALE`) while one request recomputes it; on a
//! miss, one request takes the key's lock and computes it (`MISS`) while
//! the others wait briefly for its result, so a cold dashboard sends one
//! query per key to Postgres, not one per request. When Redis is down every
//! route answers from Postgres (`BYPASS`). Every answer says which in
//! `X-Cache`.
//!
//! Per-client rate limit (fixed window in Redis, by peer address; 429 with
//! `Retry-After`) and an optional bearer token guard the routes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use redis::aio::ConnectionManager;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::OnceCell;

use crate::cache::{self, CacheKeys, Cached, Entry, Lookup, Outcome, Ttls};
use crate::config::ApiTuning;
use crate::read_model::{PageRequest, DEFAULT_PER_PAGE};

/// How long a request that lost the single-flight race waits for the winner.
const WAIT_FOR_COMPUTATION: Duration = Duration::from_secs(2);
/// How long the single-flight lock is held at most (a crashed holder frees it).
const LOCK_HOLD: Duration = Duration::from_secs(5);
/// The largest page of enrollments served.
const MAX_PER_PAGE: i64 = 100;

/// Everything the routes share.
#[derive(Clone)]
pub struct ApiState {
    db: PgPool,
    /// Empty until Redis has been reached once; the routes bypass the cache meanwhile.
    redis: Arc<OnceCell<ConnectionManager>>,
    keys: CacheKeys,
    ttls: Ttls,
    tuning: ApiTuning,
    queries: Arc<AtomicU64>,
}

impl ApiState {
    pub fn new(
        db: PgPool,
        redis: Arc<OnceCell<ConnectionManager>>,
        keys: CacheKeys,
        ttls: Ttls,
        tuning: ApiTuning,
    ) -> Self {
        Self { db, redis, keys, ttls, tuning, queries: Arc::default() }
    }

    /// Postgres queries the routes have sent (cache misses and bypasses).
    pub fn postgres_queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    fn redis(&self) -> Option<ConnectionManager> {
        self.redis.get().cloned()
    }
}

/// The cached routes (for `fleet api` and, beside the intake, `fleet dev`).
pub fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/api/statistics/cached", get(statistics))
        .route("/api/dashboard/cached", get(dashboard))
        .route("/api/enrollments/cached", get(enrollments))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .with_state(state)
}

/// The routes plus `/healthz` and `/readyz` (Postgres reachable).
pub fn app(state: ApiState) -> Router {
    let health = Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .with_state(state.clone());
    routes(state).merge(health)
}

async fn readyz(State(state): State<ApiState>) -> Response {
    match sqlx::query("SELECT 1").execute(&state.db).await {
        Ok(_) => Json(json!({ "status": "ready", "redis": state.redis.get().is_some() })).into_response(),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("postgres: {err}")),
    }
}

/// A request the API cannot answer as asked.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("{0}")]
    BadRequest(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::BadRequest(message) => error(StatusCode::BAD_REQUEST, message),
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.tuning.api_token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
            let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

async fn rate_limit(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let window = state.tuning.rate_limit_window_ms.max(1);
    let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let slot = now / window;
    if let Some(mut redis) = state.redis() {
        let key = format!("{}ratelimit:{}:{slot}", state.keys.namespace().trim_end_matches("cache:"), peer.ip());
        let counted: Result<(u64,), _> =
            redis::pipe().incr(&key, 1).cmd("PEXPIRE").arg(&key).arg(window * 2).ignore().query_async(&mut redis).await;
        match counted {
            Ok((count,)) if count > state.tuning.rate_limit_requests => {
                let retry_after = ((slot + 1) * window - now).div_ceil(1000).max(1);
                let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded; retry later");
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                return response;
            }
            Ok(_) => {}
            // Fail open: a Redis outage must not take the dashboard down.
            Err(err) => tracing::debug!(error = %err, "rate limit unavailable"),
        }
    }
    next.run(request).await
}

#[derive(Debug, Deserialize)]
struct Params {
    tenant_id: Option<String>,
    course_id: Option<String>,
    page: Option<String>,
    per_page: Option<String>,
}

impl Params {
    fn tenant(&self, state: &ApiState) -> Result<String, ApiError> {
        self.tenant_id
            .clone()
            .filter(|tenant| !tenant.is_empty())
            .or_else(|| state.tuning.default_tenant.clone())
            .ok_or_else(|| ApiError::BadRequest("tenant_id is required".into()))
    }

    fn number(value: Option<&str>, name: &str, default: Option<i64>, max: i64) -> Result<i64, ApiError> {
        let parsed = match value {
            None | Some("") => default,
            Some(text) => text.parse::<i64>().ok().filter(|number| (1..=max).contains(number)),
        };
        parsed.ok_or_else(|| ApiError::BadRequest(format!("{name} must be an integer from 1 to {max}")))
    }
}

async fn statistics(State(state): State<ApiState>, Query(params): Query<Params>) -> Result<Response, ApiError> {
    let tenant = params.tenant(&state)?;
    let course = Params::number(params.course_id.as_deref(), "course_id", None, i64::MAX)?;
    Ok(serve(&state, Cached::Statistics { tenant, course }).await)
}

async fn dashboard(State(state): State<ApiState>, Query(params): Query<Params>) -> Result<Response, ApiError> {
    let tenant = params.tenant(&state)?;
    Ok(serve(&state, Cached::Dashboard { tenant }).await)
}

async fn enrollments(State(state): State<ApiState>, Query(params): Query<Params>) -> Result<Response, ApiError> {
    let page = PageRequest {
        tenant_id: params.tenant(&state)?,
        course_id: Params::number(params.course_id.as_deref(), "course_id", None, i64::MAX)?,
        page: Params::number(params.page.as_deref(), "page", Some(1), 1_000_000)?,
        per_page: Params::number(params.per_page.as_deref(), "per_page", Some(DEFAULT_PER_PAGE), MAX_PER_PAGE)?,
    };
    Ok(serve(&state, Cached::Enrollments(page)).await)
}

/// Computes one value from Postgres (counted in `postgres_queries`).
async fn compute(state: ApiState, item: Cached) -> Result<Entry, sqlx::Error> {
    state.queries.fetch_add(1, Ordering::Relaxed);
    let mut entries = Cached::compute(&state.db, &state.keys, &state.ttls, std::slice::from_ref(&item)).await?;
    entries.pop().ok_or(sqlx::Error::RowNotFound)
}

fn answer(value: &Value, outcome: Outcome) -> Response {
    let mut response = Json(value.clone()).into_response();
    response.headers_mut().insert("x-cache", HeaderValue::from_static(outcome.as_str()));
    response
}

fn unavailable(err: &sqlx::Error) -> Response {
    tracing::error!(error = %err, "read API cannot reach Postgres; check DATABASE_URL and the database");
    error(StatusCode::SERVICE_UNAVAILABLE, "the database is unavailable; retry later")
}

/// Cache-aside with stale-while-revalidate and single-flight; see the module.
async fn serve(state: &ApiState, item: Cached) -> Response {
    let key = item.key(&state.keys);
    let compute = {
        let state = state.clone();
        move || compute(state.clone(), item.clone())
    };
    let Some(mut redis) = state.redis() else {
        return bypass(compute().await);
    };
    let lookup = match cache::get(&mut redis, &key).await {
        Ok(lookup) => lookup,
        Err(err) => {
            tracing::warn!(error = %err, "cache unavailable; answering from Postgres");
            return bypass(compute().await);
        }
    };
    let counter = redis.clone();
    let count = |outcome| {
        let (mut redis, keys) = (counter.clone(), state.keys.clone());
        tokio::spawn(async move { cache::count(&mut redis, &keys, outcome).await });
    };
    match lookup {
        Lookup::Fresh(value) => {
            count(Outcome::Hit);
            answer(&value.body, Outcome::Hit)
        }
        Lookup::Stale(value) => {
            count(Outcome::Stale);
            if let Ok(Some(token)) = cache::try_lock(&mut redis, &state.keys, &key, LOCK_HOLD).await {
                let keys = state.keys.clone();
                tokio::spawn(async move {
                    if let Ok(entry) = compute().await {
                        let _ = cache::put(&mut redis, std::slice::from_ref(&entry)).await;
                    }
                    let _ = cache::unlock(&mut redis, &keys, &key, &token).await;
                });
            }
            answer(&value.body, Outcome::Stale)
        }
        Lookup::Missing => {
            let lock = cache::try_lock(&mut redis, &state.keys, &key, LOCK_HOLD).await;
            if let Ok(None) = lock {
                // Someone else is computing it: wait for their result.
                let deadline = tokio::time::Instant::now() + WAIT_FOR_COMPUTATION;
                while tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    match cache::get(&mut redis, &key).await {
                        Ok(Lookup::Fresh(value) | Lookup::Stale(value)) => {
                            count(Outcome::Hit);
                            return answer(&value.body, Outcome::Hit);
                        }
                        Ok(Lookup::Missing) => {}
                        Err(_) => break,
                    }
                }
            }
            count(Outcome::Miss);
            let entry = match compute().await {
                Ok(entry) => entry,
                Err(err) => return unavailable(&err),
            };
            let _ = cache::put(&mut redis, std::slice::from_ref(&entry)).await;
            if let Ok(Some(token)) = lock {
                let _ = cache::unlock(&mut redis, &state.keys, &key, &token).await;
            }
            answer(&entry.value.body, Outcome::Miss)
        }
    }
}

fn bypass(computed: Result<Entry, sqlx::Error>) -> Response {
    match computed {
        Ok(entry) => answer(&entry.value.body, Outcome::Bypass),
        Err(err) => unavailable(&err),
    }
}

/// The API's own headers, for tests and clients.
pub fn cache_status(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-cache").and_then(|value| value.to_str().ok())
}
