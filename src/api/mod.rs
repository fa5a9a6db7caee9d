//! The dashboard's read API: cached statistics, dashboard summary and pages
//! of enrollments.
//!
//! Each route is cache-aside over `crate::redis::cache`: a fresh value is a `HIT`;
//! a stale one is served (`STALE`) while one request recomputes it; on a
//! miss, one request takes the key's lock and computes it (`MISS`) while
//! the others wait briefly for its result, so a cold dashboard sends one
//! query per key to Postgres, not one per request. When Redis is down every
//! route answers from Postgres (`BYPASS`). Every answer says which in
//! `X-Cache`. A school, course or page that does not exist is a 404 and
//! leaves nothing in the cache. While Postgres is down (at start-up too: the
//! API listens before it is reachable), `/readyz` and the routes answer 503.
//! Every HIT, STALE and MISS is also recorded, after the answer, as a recent
//! read (`crate::read_model::reads::record_read`), so the rewarm job keeps
//! what the dashboard reads fresh.
//!
//! The answers hold learners' names and emails, so every request passes,
//! in this order:
//! 1. the bearer token (401; 403 for a school the token may not read):
//!    `auth.rs`.
//! 2. the rate limit (429 with `Retry-After`), per token and, behind a
//!    trusted proxy, per client address: `rate_limit.rs`.
//! 3. the parameters (400 with a JSON error, like every refusal here).
//!
//! This file holds the application, its settings and state, and the routes.
//! The same server also serves the operator console under `/console` when
//! `FLEET_CONSOLE_TOKEN` is set (`crate::console`, with its own sign-in and
//! sessions instead of the bearer token); without it `/console` is a 404.

mod auth;
mod rate_limit;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use fleet_jobs::TenantId;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use self::auth::{Access, Caller};
use crate::console::{self, ConsoleState};
use crate::health::Health;
use crate::read_model::cached::Cached;
use crate::read_model::reads;
use crate::read_model::{Missing, PageRequest, DEFAULT_PER_PAGE};
use crate::redis::cache::{self, Entry, Lookup, Outcome, Ttls};
use crate::redis::keys::Keys;
use crate::redis::{RedisConnection, RedisTarget};
use crate::runtime::HttpSettings;
use crate::secrets::{ApiToken, ConsoleToken, SchoolTokens};
use crate::telemetry::metrics;
use crate::telemetry::readiness::{self, Check, Dependency};

/// How long a request that lost the single-flight race waits for the winner.
const WAIT_FOR_COMPUTATION: Duration = Duration::from_secs(2);
/// How long the single-flight lock is held at most (a crashed holder frees it).
const LOCK_HOLD: Duration = Duration::from_secs(5);
/// The largest page of enrollments served.
const MAX_PER_PAGE: i64 = 100;

/// The read API's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Requests one client may make per window; more get 429.
    pub rate_limit_requests: u64,
    /// The rate-limit window, in milliseconds.
    pub rate_limit_window_ms: u64,
    /// Reads every school.
    pub api_token: Option<ApiToken>,
    /// Each reads only its schools.
    pub api_tokens: Option<SchoolTokens>,
    /// Proxies whose X-Forwarded-For names the client.
    pub trusted_proxies: Vec<IpAddr>,
    /// The school a request without `tenant_id` is about.
    pub default_tenant: Option<TenantId>,
    /// Serves the operator console, signed in to with this token (off when none).
    pub console_token: Option<ConsoleToken>,
    /// Limits on slow and idle clients.
    pub http: HttpSettings,
    /// Serve `/metrics` on this address only, not on the public one.
    pub metrics_listen: Option<SocketAddr>,
}

impl Settings {
    /// Whether any bearer token is configured; without one the read API is open.
    pub(crate) fn has_tokens(&self) -> bool {
        self.api_token.is_some() || self.api_tokens.as_ref().is_some_and(|tokens| !tokens.pairs().is_empty())
    }
}

/// The read API bound to its address, ready to serve.
pub struct Application {
    listener: TcpListener,
    /// `/metrics` on an address of its own, when one is set.
    metrics_listener: Option<TcpListener>,
    state: ApiState,
}

impl Application {
    /// Binds `address`; Redis is reached in the background (see [`ApiState::connect`]).
    pub async fn build(
        address: SocketAddr,
        db: PgPool,
        redis: &RedisTarget,
        keys: Keys,
        ttls: Ttls,
        settings: Settings,
    ) -> Result<Self, crate::runtime::ListenError> {
        let metrics_listen = settings.metrics_listen;
        let state = ApiState::connect(db, redis, keys, ttls, settings);
        let (listener, bound) = crate::runtime::bind(address).await?;
        tracing::info!(address = %bound, "read API listening");
        let metrics_listener = match metrics_listen {
            Some(metrics) => {
                let (listener, metrics) = crate::runtime::bind(metrics).await?;
                tracing::info!(address = %metrics, "read API metrics on /metrics (FLEET_METRICS_LISTEN)");
                Some(listener)
            }
            None => None,
        };
        Ok(Self { listener, metrics_listener, state })
    }

    pub fn address(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn state(&self) -> ApiState {
        self.state.clone()
    }

    /// Serves until `shutdown` fires, then finishes the requests in flight.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let http = self.state.tuning.http;
        if let Some(metrics) = self.metrics_listener {
            tokio::spawn(metrics::serve_alone(metrics, http, shutdown.clone()));
        }
        crate::runtime::serve(self.listener, app(self.state), http, shutdown).await
    }
}

/// Everything the routes share.
#[derive(Clone)]
pub struct ApiState {
    db: PgPool,
    /// Empty until Redis has been reached once; the routes bypass the cache meanwhile.
    redis: Arc<OnceCell<RedisConnection>>,
    keys: Keys,
    ttls: Ttls,
    tuning: Settings,
    access: Arc<Access>,
    queries: Arc<AtomicU64>,
    health: Health,
}

impl ApiState {
    pub fn new(db: PgPool, redis: Arc<OnceCell<RedisConnection>>, keys: Keys, ttls: Ttls, tuning: Settings) -> Self {
        metrics::install();
        let access = Arc::new(Access::new(&tuning));
        let health = Health::default().with_optional(Dependency::Redis);
        if redis.get().is_some() {
            health.up(Dependency::Redis);
        }
        Self { db, redis, keys, ttls, tuning, access, queries: Arc::default(), health }
    }

    /// The state of a read API whose Redis is reached in the background:
    /// the routes bypass the cache until it is. Postgres is required: not
    /// ready until it is reported up on [`ApiState::health`].
    pub fn connect(db: PgPool, target: &RedisTarget, keys: Keys, ttls: Ttls, settings: Settings) -> Self {
        let redis = Arc::new(OnceCell::new());
        let mut state = Self::new(db, redis.clone(), keys, ttls, settings);
        state.health = Health::requiring(&[Dependency::Postgres]).with_optional(Dependency::Redis);
        let health = state.health.clone();
        let target = target.clone();
        tokio::spawn(async move {
            // For the life of the process: nothing to stop.
            let forever = CancellationToken::new();
            if let Some(conn) = crate::redis::connect_waiting(&target, Duration::from_secs(1), &health, &forever).await
            {
                let _ = redis.set(conn);
            }
        });
        state
    }

    /// Which dependencies answer, as `/readyz` reports them.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Postgres queries the routes have sent (cache misses and bypasses).
    pub fn postgres_queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    fn redis(&self) -> Option<RedisConnection> {
        self.redis.get().cloned()
    }
}

/// The cached routes and the operator console (for `fleet api` and, beside
/// the intake, `fleet dev`).
pub(crate) fn routes(state: ApiState) -> Router {
    let console = match &state.tuning.console_token {
        Some(token) => console::routes(ConsoleState::new(
            state.redis.clone(),
            state.keys.clone(),
            token,
            state.tuning.trusted_proxies.clone(),
        )),
        None => console::off(),
    };
    Router::new()
        .route("/api/statistics/cached", get(statistics))
        .route("/api/dashboard/cached", get(dashboard))
        .route("/api/enrollments/cached", get(enrollments))
        // The last layer added runs first: authorize, then rate_limit.
        .layer(middleware::from_fn_with_state(state.clone(), rate_limit::rate_limit))
        .layer(middleware::from_fn_with_state(state.clone(), auth::authorize))
        .with_state(state)
        // The console signs its operators in itself: no bearer token, no rate limit.
        .merge(console)
}

/// The routes plus `/healthz`, `/readyz` (Postgres reachable; Redis
/// reported) and `/metrics`.
pub fn app(state: ApiState) -> Router {
    let health = readiness::routes(readyz, state.tuning.metrics_listen.is_none()).with_state(state.clone());
    routes(state).merge(health)
}

/// Postgres is required (while the start-up still waits for it, or its
/// schema check, that wait is the answer); without Redis the routes answer
/// from Postgres (`BYPASS`), so it is reported but keeps the API ready.
async fn readyz(State(state): State<ApiState>) -> Response {
    let postgres = match state.health.state_of(Dependency::Postgres) {
        Some(Err(waiting)) => Err(waiting),
        _ => crate::db::probe(&state.db).await,
    };
    let redis = match state.redis() {
        Some(redis) => crate::redis::probe(&redis).await,
        None => Err("not connected yet".to_owned()),
    };
    readiness::answer(&[Check::required("postgres", postgres), Check::optional("redis", redis)])
}

/// A request the API cannot answer as asked.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::BadRequest(message) => error(StatusCode::BAD_REQUEST, message),
            Self::Forbidden(message) => error(StatusCode::FORBIDDEN, message),
            Self::NotFound(message) => error(StatusCode::NOT_FOUND, message),
            Self::Unavailable(err) => {
                tracing::error!(error = %err, "read API cannot reach Postgres; check DATABASE_URL and the database");
                error(StatusCode::SERVICE_UNAVAILABLE, "the database is unavailable; retry later")
            }
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

#[derive(Debug, Deserialize)]
struct Params {
    tenant_id: Option<String>,
    course_id: Option<String>,
    page: Option<String>,
    per_page: Option<String>,
}

impl Params {
    /// The query string, or a 400 (with a JSON error like every other refusal).
    fn read(query: Result<Query<Params>, QueryRejection>) -> Result<Self, ApiError> {
        query.map(|Query(params)| params).map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }

    /// The school asked about (or the default one), if the caller may read it.
    fn school(&self, state: &ApiState, caller: &Caller) -> Result<String, ApiError> {
        let school = match self.tenant_id.as_deref().filter(|tenant| !tenant.is_empty()) {
            Some(text) => TenantId::parse(text).map_err(|err| ApiError::BadRequest(err.to_string()))?,
            None => state
                .tuning
                .default_tenant
                .clone()
                .ok_or_else(|| ApiError::BadRequest("tenant_id is required".into()))?,
        };
        if !caller.may_read(&school) {
            return Err(ApiError::Forbidden(format!("this token may not read school `{school}`")));
        }
        Ok(school.into_string())
    }

    fn number(value: Option<&str>, name: &str, default: Option<i64>, max: i64) -> Result<i64, ApiError> {
        let parsed = match value {
            None | Some("") => default,
            Some(text) => text.parse::<i64>().ok().filter(|number| (1..=max).contains(number)),
        };
        parsed.ok_or_else(|| ApiError::BadRequest(format!("{name} must be an integer from 1 to {max}")))
    }
}

async fn statistics(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::read(query)?;
    let tenant = params.school(&state, &caller)?;
    let course = Params::number(params.course_id.as_deref(), "course_id", None, i64::MAX)?;
    serve(&state, Cached::Statistics { tenant, course }).await
}

async fn dashboard(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::read(query)?;
    let tenant = params.school(&state, &caller)?;
    serve(&state, Cached::Dashboard { tenant }).await
}

async fn enrollments(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::read(query)?;
    let page = PageRequest {
        tenant_id: params.school(&state, &caller)?,
        course_id: Params::number(params.course_id.as_deref(), "course_id", None, i64::MAX)?,
        page: Params::number(params.page.as_deref(), "page", Some(1), 1_000_000)?,
        per_page: Params::number(params.per_page.as_deref(), "per_page", Some(DEFAULT_PER_PAGE), MAX_PER_PAGE)?,
    };
    serve(&state, Cached::Enrollments(page)).await
}

/// Computes one value from Postgres (counted in `postgres_queries`): its
/// entry, or a 404 when it is about something that does not exist.
async fn compute(state: ApiState, item: Cached) -> Result<Entry, ApiError> {
    state.queries.fetch_add(1, Ordering::Relaxed);
    let computed = Cached::compute_each(&state.db, &state.keys, &state.ttls, std::slice::from_ref(&item))
        .await
        .map_err(ApiError::Unavailable)?;
    match computed.into_iter().next() {
        Some(Ok(entry)) => Ok(entry),
        Some(Err(missing)) => Err(not_found(&item, missing)),
        None => Err(ApiError::Unavailable(sqlx::Error::RowNotFound)),
    }
}

fn not_found(item: &Cached, missing: Missing) -> ApiError {
    let (tenant, course, page) = match item {
        Cached::Statistics { tenant, course } => (tenant, Some(*course), None),
        Cached::Dashboard { tenant } => (tenant, None, None),
        Cached::Enrollments(page) => (&page.tenant_id, Some(page.course_id), Some(page.page)),
    };
    ApiError::NotFound(match (missing, course, page) {
        (Missing::Course, Some(course), _) => format!("school `{tenant}` has no course {course}"),
        (Missing::Page, Some(course), Some(page)) => format!("page {page} is after the last page of course {course}"),
        _ => format!("school `{tenant}` has no data"),
    })
}

fn answer(value: &Value, outcome: Outcome) -> Response {
    metrics::cache_request(match outcome {
        Outcome::Hit => "hit",
        Outcome::Miss => "miss",
        Outcome::Stale => "stale",
        Outcome::Bypass => "bypass",
    });
    let mut response = Json(value.clone()).into_response();
    let headers = response.headers_mut();
    headers.insert("x-cache", HeaderValue::from_static(outcome.as_str()));
    // Learners' names and emails: no shared cache (a CDN, a proxy) may keep them.
    headers.insert(axum::http::header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    response
}

/// Cache-aside with stale-while-revalidate and single-flight; see the module.
/// Only values that exist are cached: a 404 leaves no key and no tag.
async fn serve(state: &ApiState, item: Cached) -> Result<Response, ApiError> {
    let key = item.key(&state.keys);
    let read = item.clone();
    let compute = {
        let state = state.clone();
        move || compute(state.clone(), item.clone())
    };
    let Some(mut redis) = state.redis() else {
        return Ok(answer(&compute().await?.value.body, Outcome::Bypass));
    };
    let lookup = match cache::get(&mut redis, &key).await {
        Ok(lookup) => lookup,
        Err(err) => {
            tracing::warn!(error = %err, "cache unavailable; answering from Postgres");
            return Ok(answer(&compute().await?.value.body, Outcome::Bypass));
        }
    };
    let counter = redis.clone();
    // Counts the outcome and records a served read for the rewarm job, after
    // the answer: neither may delay it, and a failure of either is harmless.
    // A read answered 404 is not recorded: rewarm would recompute nothing.
    let count_served = |outcome, served: bool| {
        let (mut redis, keys, read) = (counter.clone(), state.keys.clone(), read.clone());
        tokio::spawn(async move {
            let _ = cache::count(&mut redis, &keys, outcome).await;
            if served {
                let _ = reads::record_read(&mut redis, &keys, &read).await;
            }
        });
    };
    let count = |outcome| count_served(outcome, true);
    match lookup {
        Lookup::Fresh(value) => {
            count(Outcome::Hit);
            Ok(answer(&value.body, Outcome::Hit))
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
            Ok(answer(&value.body, Outcome::Stale))
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
                            return Ok(answer(&value.body, Outcome::Hit));
                        }
                        Ok(Lookup::Missing) => {}
                        Err(_) => break,
                    }
                }
            }
            let computed = compute().await;
            count_served(Outcome::Miss, computed.is_ok());
            if let Ok(entry) = &computed {
                let _ = cache::put(&mut redis, std::slice::from_ref(entry)).await;
            }
            if let Ok(Some(token)) = lock {
                let _ = cache::unlock(&mut redis, &state.keys, &key, &token).await;
            }
            Ok(answer(&computed?.value.body, Outcome::Miss))
        }
    }
}

/// The API's own headers, for tests and clients.
pub fn cache_status(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-cache").and_then(|value| value.to_str().ok())
}
