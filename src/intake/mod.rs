//! The webhook endpoint: verify, deduplicate, append to the stream, answer.
//!
//! Nothing is parsed before the signature is checked, and nothing is
//! acknowledged (2xx) before the event is in the stream: when Redis cannot
//! take it, Thinkific gets a 503 and retries later.
//!
//! An event goes to the stream shard of its tenant and entity (see
//! [`crate::redis::shards`]); before it accepts a webhook, the intake has
//! raised the fleet's shard count to its own, so workers consume every
//! shard it writes to.
//!
//! The intake listens before Redis is reachable: until it is, `/readyz` and
//! every webhook answer 503 (with `Retry-After`), and Redis is waited for in
//! the background (see [`crate::health`]).
//!
//! The school an event belongs to comes only from what is signed: the key
//! that signed it when that key is bound to a school, else the body's
//! `tenant_id`. Headers are not signed, so none of them decides tenancy.
//!
//! A bad request costs a bounded amount whatever the number of schools:
//! only the keys of the school it names are tried (see [`signature`]; a
//! school's own path `/webhooks/thinkific/<tenant>` names it), and an
//! address past its refusals gets 429 before any key is tried
//! ([`refusals`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use chrono::Utc;
use fleet_jobs::{Envelope, EnvelopeError, TenantId};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use self::refusals::Refusals;
use self::signature::signer;
use crate::health::{self, Health};
use crate::redis::dedup::DedupWindow;
use crate::redis::entry::NewEntry;
use crate::redis::keys::Keys;
use crate::redis::shards::{self, ShardCount};
use crate::redis::stream::{self, Enqueued};
use crate::redis::{RedisConnection, RedisTarget};
use crate::runtime::HttpSettings;
use crate::secrets::{KeyScope, WebhookKeys};
use crate::telemetry::metrics::{self, Answer};
use crate::telemetry::readiness::{self, Check, Dependency};

pub use signature::sign;

mod refusals;
mod signature;

/// The header carrying the hex HMAC-SHA256 of the raw body.
pub const SIGNATURE_HEADER: &str = "x-thinkific-hmac-sha256";
/// The optional header naming the school's subdomain. It is not signed, so
/// it never decides tenancy; a disagreement with the signed tenant is only
/// logged at debug level.
pub(crate) const SUBDOMAIN_HEADER: &str = "x-thinkific-subdomain";

/// The intake's settings in their validated form.
#[derive(Debug, Clone)]
pub struct Settings {
    pub keys: WebhookKeys,
    pub max_body_bytes: usize,
    /// How accepted events are remembered to answer redeliveries.
    pub dedup: DedupWindow,
    /// How many stream shards new events are spread over (`FLEET_STREAM_SHARDS`).
    pub shards: ShardCount,
    /// Limits on slow and idle clients.
    pub http: HttpSettings,
    /// Refusals (401) one client address may cause in a minute before it
    /// gets 429 without any key being tried; 0: no limit.
    pub refusals_per_minute: u32,
    /// Reverse proxies whose `X-Forwarded-For` names the client counted.
    pub trusted_proxies: Vec<IpAddr>,
    /// Serve `/metrics` on this address only, not on the public one.
    pub metrics_listen: Option<SocketAddr>,
}

/// An intake bound to its address, ready to serve.
pub struct Application {
    listener: TcpListener,
    /// `/metrics` on an address of its own, when one is set.
    metrics_listener: Option<TcpListener>,
    state: IntakeState,
    /// The Redis URL, while Redis is still to be reached.
    pending: Option<RedisTarget>,
    http: HttpSettings,
}

impl Application {
    /// The intake's health, as `/readyz` reports it.
    pub fn health(&self) -> Health {
        self.state.health.clone()
    }

    /// Binds `address`, then connects to Redis, raises the fleet's shard
    /// count to its own and makes sure every shard's consumer group exists
    /// (so entries appended before any worker ran are consumed). When Redis
    /// does not answer at once, it is waited for in the background once
    /// serving.
    pub async fn build(
        address: SocketAddr,
        redis: &RedisTarget,
        keys: Keys,
        settings: Settings,
    ) -> Result<Self, crate::runtime::ListenError> {
        let (listener, address) = crate::runtime::bind(address).await?;
        tracing::info!(%address, shards = settings.shards.get(), "intake listening");
        let metrics_listener = match settings.metrics_listen {
            Some(metrics) => {
                let (listener, metrics) = crate::runtime::bind(metrics).await?;
                tracing::info!(address = %metrics, "intake metrics on /metrics (FLEET_METRICS_LISTEN)");
                Some(listener)
            }
            None => None,
        };
        log_dedup_layout(&settings.dedup);
        let http = settings.http;
        let state = IntakeState {
            redis: Arc::new(OnceCell::new()),
            keys,
            refusals: Arc::new(Refusals::new(settings.refusals_per_minute)),
            settings,
            health: Health::requiring(&[Dependency::Redis]),
        };
        let mut pending = Some(redis.clone());
        if let Ok(mut redis) = crate::redis::connect(redis, Duration::from_secs(2)).await {
            if shards::prepare(&mut redis, &state.keys, state.settings.shards).await.is_ok() {
                state.connected(redis);
                pending = None;
            }
        }
        Ok(Self { listener, metrics_listener, state, pending, http })
    }

    /// The address it listens on (the port chosen when asked for port 0).
    pub fn address(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` fires, then finishes the requests in flight.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        if let Some(url) = self.pending {
            tokio::spawn(self.state.clone().connect(url, shutdown.clone()));
        }
        tokio::spawn(self.state.clone().keep_shard_count(shutdown.clone()));
        if let Some(metrics) = self.metrics_listener {
            tokio::spawn(metrics::serve_alone(metrics, self.http, shutdown.clone()));
        }
        crate::runtime::serve(self.listener, routes_with_health(self.state), self.http, shutdown).await
    }
}

#[derive(Clone)]
struct IntakeState {
    /// Empty until Redis has been reached and the group exists.
    redis: Arc<OnceCell<RedisConnection>>,
    keys: Keys,
    settings: Settings,
    health: Health,
    refusals: Arc<Refusals>,
}

impl IntakeState {
    fn connected(&self, redis: RedisConnection) {
        // Set once: only one task connects.
        let _ = self.redis.set(redis);
        self.health.up(Dependency::Redis);
    }

    /// Waits for Redis, the fleet's shard count raised to ours and every
    /// shard's consumer group, then serves webhooks.
    async fn connect(self, target: RedisTarget, stop: CancellationToken) {
        let Some(redis) = crate::redis::connect_waiting(&target, Duration::from_secs(2), &self.health, &stop).await
        else {
            return;
        };
        let address = target.shown_address();
        let group = health::until_reachable(&self.health, Dependency::Redis, &address, &stop, || {
            let mut redis = redis.clone();
            let keys = self.keys.clone();
            let shards = self.settings.shards;
            async move { shards::prepare(&mut redis, &keys, shards).await }
        });
        if group.await.is_some() {
            self.connected(redis);
            tracing::info!("intake accepting webhooks");
        }
    }
}

impl IntakeState {
    /// Raises the fleet's shard count to ours again every
    /// [`shards::DISCOVER_EVERY`] until `stop`, and makes sure each shard's
    /// group exists: a Redis that lost its data (restarted without
    /// persistence, flushed by hand) forgets the count, and workers started
    /// since would not read the shards this intake writes to.
    async fn keep_shard_count(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(shards::DISCOVER_EVERY) => {}
            }
            let Some(mut redis) = self.redis.get().cloned() else { continue };
            if let Err(err) = shards::prepare(&mut redis, &self.keys, self.settings.shards).await {
                tracing::debug!(error = %err, "could not check the fleet's shard count; will try again");
            }
        }
    }
}

/// The intake's routes, ready to serve, with `/healthz`, `/readyz` (Redis)
/// and `/metrics`.
pub fn router(redis: RedisConnection, keys: Keys, settings: Settings) -> Router {
    routes_with_health(connected_state(redis, keys, settings))
}

/// The webhook routes alone, for a process that answers `/readyz` for more
/// than the intake (`fleet dev` runs a worker and the read API beside it).
pub fn webhook_router(redis: RedisConnection, keys: Keys, settings: Settings) -> Router {
    routes(connected_state(redis, keys, settings))
}

fn connected_state(redis: RedisConnection, keys: Keys, settings: Settings) -> IntakeState {
    log_dedup_layout(&settings.dedup);
    let refusals = Arc::new(Refusals::new(settings.refusals_per_minute));
    let state = IntakeState { redis: Arc::new(OnceCell::new()), keys, settings, health: Health::default(), refusals };
    state.connected(redis);
    state
}

/// Says once how the deduplication window is laid out, for sizing Redis
/// (`docs/operations.md`, "Deduplication memory").
fn log_dedup_layout(dedup: &DedupWindow) {
    tracing::info!(
        window_secs = dedup.window().as_secs(),
        bucket_secs = dedup.bucket_length().as_secs(),
        partitions_per_bucket = dedup.partitions(),
        set_lifetime_secs = dedup.set_lifetime_secs(),
        "deduplication window laid out"
    );
}

/// The webhook routes, and `/healthz`, `/readyz` (Redis) and, unless
/// served apart, `/metrics`.
fn routes_with_health(state: IntakeState) -> Router {
    let public_metrics = state.settings.metrics_listen.is_none();
    routes(state.clone()).merge(readiness::routes(readyz, public_metrics).with_state(state))
}

/// The webhook routes; the serving process adds its health routes.
fn routes(state: IntakeState) -> Router {
    metrics::install();
    let body_limit = state.settings.max_body_bytes;
    Router::new()
        .route("/webhooks/thinkific", post(receive))
        .route("/webhooks/thinkific/{tenant}", post(receive_for_school))
        .route("/api/webhooks/enrollment", post(receive))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// The school a signed event belongs to: the one its key is bound to, else
/// the one its body names. A body may not name another school than its
/// key's, and a key valid for any school needs the body to name one.
fn tenant_of(scope: &KeyScope, named: Option<&TenantId>) -> Result<TenantId, IntakeError> {
    match (scope, named) {
        (KeyScope::School(school), Some(named)) if named != school => Err(IntakeError::TenantNotTheKeys),
        (KeyScope::School(school), _) => Ok(school.clone()),
        (KeyScope::AnySchool, Some(named)) => Ok(named.clone()),
        (KeyScope::AnySchool, None) => Err(IntakeError::NoTenant),
    }
}

/// Why a webhook was not accepted; each maps to one status code.
#[derive(Debug, thiserror::Error)]
enum IntakeError {
    #[error("body exceeds the limit of {0} bytes")]
    TooLarge(usize),
    #[error("could not read the body: {0}")]
    BadBody(String),
    #[error("missing X-Thinkific-Hmac-Sha256 header")]
    MissingSignature,
    #[error("signature does not match")]
    BadSignature,
    #[error(transparent)]
    BadEnvelope(#[from] EnvelopeError),
    #[error("body lacks tenant_id and the key that signed it is not bound to a school; see THINKIFIC_SCHOOL_KEYS")]
    NoTenant,
    #[error("the body's tenant_id is not the school the signing key is bound to")]
    TenantNotTheKeys,
    #[error("the queue is unavailable; retry later")]
    QueueUnavailable(#[source] redis::RedisError),
    #[error("the queue is not reachable yet; retry later")]
    NotConnected,
    #[error("too many requests with a bad signature from this address; retry later")]
    TooManyRefusals,
    #[error("the path names no valid school")]
    BadSchoolPath,
}

impl IntakeError {
    fn answer(&self) -> Answer {
        match self {
            Self::TooLarge(_) => Answer::TooLarge,
            Self::BadBody(_) | Self::BadEnvelope(_) | Self::NoTenant | Self::BadSchoolPath => Answer::Invalid,
            Self::MissingSignature | Self::BadSignature => Answer::Unauthorized,
            Self::TooManyRefusals => Answer::Throttled,
            Self::TenantNotTheKeys => Answer::Forbidden,
            Self::QueueUnavailable(_) | Self::NotConnected => Answer::Unavailable,
        }
    }
}

impl IntoResponse for IntakeError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadBody(_) | Self::BadEnvelope(_) | Self::NoTenant | Self::BadSchoolPath => StatusCode::BAD_REQUEST,
            Self::MissingSignature | Self::BadSignature => StatusCode::UNAUTHORIZED,
            Self::TooManyRefusals => StatusCode::TOO_MANY_REQUESTS,
            Self::TenantNotTheKeys => StatusCode::FORBIDDEN,
            Self::QueueUnavailable(_) | Self::NotConnected => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut response = (status, Json(json!({ "status": "rejected", "error": self.to_string() }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(refusals::WINDOW.as_secs()));
        }
        response
    }
}

/// Answers a webhook and counts the answer (by topic, once the body is
/// parsed) and its latency.
async fn receive(
    State(state): State<IntakeState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, IntakeError> {
    answer_webhook(&state, peer, &headers, None, body).await
}

/// `POST /webhooks/thinkific/<tenant>`: like [`receive`], the school's
/// keys found by its path (still only a hint: tenancy is what is signed).
async fn receive_for_school(
    State(state): State<IntakeState>,
    Path(tenant): Path<String>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, IntakeError> {
    answer_webhook(&state, peer, &headers, Some(tenant), body).await
}

async fn answer_webhook(
    state: &IntakeState,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
    path_school: Option<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, IntakeError> {
    let started = Instant::now();
    let mut topic = None;
    let mut school = None;
    let client = peer.map(|Extension(ConnectInfo(peer))| {
        crate::forwarded::client_address(peer.ip(), headers, &state.settings.trusted_proxies)
    });
    let result = if client.is_some_and(|client| state.refusals.exhausted(client)) {
        Err(IntakeError::TooManyRefusals)
    } else {
        let path_school = path_school.map(|tenant| TenantId::parse(&tenant).map_err(|_| IntakeError::BadSchoolPath));
        match path_school.transpose() {
            Ok(path_school) => accept(state, headers, path_school, body, &mut topic, &mut school).await,
            Err(err) => Err(err),
        }
    };
    if let (Err(IntakeError::MissingSignature | IntakeError::BadSignature), Some(client)) = (&result, client) {
        state.refusals.record(client);
    }
    let answer = match &result {
        Ok((answer, _)) => *answer,
        Err(err) => err.answer(),
    };
    metrics::webhook(topic.as_deref(), answer, started.elapsed());
    if matches!(answer, Answer::Unauthorized | Answer::Invalid | Answer::Forbidden | Answer::TooLarge) {
        record_refusal(state, answer, school);
    }
    result.map(|(_, json)| json)
}

/// Counts a refusal for the console's intake page, beside the answer (never
/// delaying it); a refusal Redis does not take is only logged at debug.
fn record_refusal(state: &IntakeState, answer: Answer, school: Option<TenantId>) {
    let Some(redis) = state.redis.get().cloned() else { return };
    let keys = state.keys.clone();
    tokio::spawn(async move {
        let mut redis = redis;
        let school = school.as_ref().map(TenantId::as_str);
        if let Err(err) = crate::redis::refusals::record(&mut redis, &keys, Utc::now(), answer.as_str(), school).await {
            tracing::debug!(error = %err, "could not count a refusal for the console");
        }
    });
}

/// Checks, parses and queues a webhook; sets `topic` once it is known.
async fn accept(
    state: &IntakeState,
    headers: &HeaderMap,
    path_school: Option<TenantId>,
    body: Result<Bytes, BytesRejection>,
    topic_seen: &mut Option<String>,
    school_seen: &mut Option<TenantId>,
) -> Result<(Answer, Json<serde_json::Value>), IntakeError> {
    school_seen.clone_from(&path_school);
    let received_at = Utc::now();
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            tracing::warn!(limit = state.settings.max_body_bytes, "webhook rejected: body too large");
            IntakeError::TooLarge(state.settings.max_body_bytes)
        } else {
            IntakeError::BadBody(rejection.body_text())
        }
    })?;
    let signature = headers.get(SIGNATURE_HEADER).and_then(|value| value.to_str().ok()).ok_or_else(|| {
        tracing::warn!("webhook rejected: no signature header; is the sender Thinkific?");
        IntakeError::MissingSignature
    })?;
    let named = path_school.or_else(|| signature::named_school(&body));
    school_seen.clone_from(&named);
    let Some(scope) = signer(&state.settings.keys, &body, signature, named.as_ref()) else {
        tracing::warn!(
            body_bytes = body.len(),
            "webhook rejected: bad signature; if deliveries keep failing, check that THINKIFIC_WEBHOOK_SECRET \
             or THINKIFIC_SCHOOL_KEYS holds the key the webhook was created with"
        );
        return Err(IntakeError::BadSignature);
    };
    let envelope = Envelope::parse(&body).inspect_err(|err| {
        tracing::warn!(error = %err, "signed webhook rejected: not a Thinkific event");
    })?;
    let topic = envelope.topic();
    *topic_seen = Some(topic.clone());
    let tenant = tenant_of(scope, envelope.tenant_id.as_ref()).inspect_err(|err| match (err, scope) {
        (IntakeError::TenantNotTheKeys, KeyScope::School(key_school)) => tracing::warn!(
            event_id = %envelope.id, %topic, tenant = envelope.tenant_id.as_ref().map(TenantId::as_str), %key_school,
            "signed webhook rejected: its tenant_id is not the school its key is bound to; if one key \
             signs for several schools, move it from THINKIFIC_SCHOOL_KEYS to THINKIFIC_WEBHOOK_SECRET"
        ),
        _ => tracing::warn!(
            event_id = %envelope.id, %topic, tenant = "unknown",
            "signed webhook rejected: no tenant_id, and its key is valid for any school; bind the key of \
             the school whose webhooks lack tenant_id to it in THINKIFIC_SCHOOL_KEYS"
        ),
    })?;
    let tenant_id = tenant.as_str();
    let subdomain = headers.get(SUBDOMAIN_HEADER).and_then(|value| value.to_str().ok());
    if subdomain.is_some_and(|subdomain| subdomain != tenant_id) {
        tracing::debug!(event_id = %envelope.id, %topic, tenant = tenant_id, "X-Thinkific-Subdomain differs from the signed tenant; ignored, it is not signed");
    }
    let kept = kept_headers(headers);
    let entry = NewEntry {
        body: &body,
        topic: &topic,
        tenant: tenant_id,
        event_id: &envelope.id,
        received_at,
        headers: kept.as_deref(),
    };
    let Some(mut redis) = state.redis.get().cloned() else {
        tracing::warn!(event_id = %envelope.id, %topic, "Redis not reached yet; webhook answered 503 (Thinkific will retry)");
        return Err(IntakeError::NotConnected);
    };
    // Redeliveries carry the same body: they meet the same shard's
    // deduplication sets.
    let shard = state.settings.shards.shard_of(tenant_id, envelope.entity.as_deref().unwrap_or(&envelope.id));
    let enqueued = stream::enqueue(&mut redis, &state.keys.shard(shard), &entry, &state.settings.dedup)
        .await
        .map_err(|err| {
            metrics::dependency_up("redis", false);
            tracing::error!(
                error = %err, event_id = %envelope.id, %topic, tenant = tenant_id,
                "could not queue webhook, answered 503 (Thinkific will retry); check that Redis is up and REDIS_URL is right"
            );
            IntakeError::QueueUnavailable(err)
        })?;
    metrics::dependency_up("redis", true);
    Ok(match enqueued {
        Enqueued::Accepted(entry_id) => {
            let status = Answer::Accepted.as_str();
            tracing::info!(event_id = %envelope.id, %topic, tenant = tenant_id, status, shard, stream_entry_id = %entry_id, "webhook received");
            (Answer::Accepted, Json(json!({ "status": status, "event_id": envelope.id, "stream_entry_id": entry_id })))
        }
        Enqueued::Duplicate => {
            let status = Answer::Duplicate.as_str();
            tracing::info!(event_id = %envelope.id, %topic, tenant = tenant_id, status, "webhook received");
            (Answer::Duplicate, Json(json!({ "status": status, "event_id": envelope.id })))
        }
    })
}

/// The most headers kept with an event, and the longest value kept.
const KEPT_HEADERS: usize = 16;
const KEPT_HEADER_BYTES: usize = 256;

/// The delivery headers kept with an accepted event, for an operator who
/// inspects it later (`fleet dlq show`, the console): `Content-Type`,
/// `User-Agent` and every `X-Thinkific-*` header but the signature, as a
/// JSON object; at most [`KEPT_HEADERS`] of them, each value cut to
/// [`KEPT_HEADER_BYTES`]. None when the delivery had none of them. They are
/// not signed: shown as sent, they decide nothing.
pub(crate) fn kept_headers(headers: &HeaderMap) -> Option<String> {
    let kept: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            name == "content-type"
                || name == "user-agent"
                || (name.starts_with("x-thinkific-") && name != SIGNATURE_HEADER)
        })
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes());
            let mut end = value.len().min(KEPT_HEADER_BYTES);
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            (name.as_str().to_owned(), serde_json::Value::from(&value[..end]))
        })
        .take(KEPT_HEADERS)
        .collect();
    (!kept.is_empty()).then(|| serde_json::Value::Object(kept).to_string())
}

/// Ready when Redis answers: the intake needs nothing else.
async fn readyz(State(state): State<IntakeState>) -> Response {
    let state_of_redis = match state.redis.get() {
        Some(redis) => crate::redis::probe(redis).await,
        None => match state.health.state_of(Dependency::Redis) {
            Some(Err(waiting)) => Err(waiting),
            _ => Err("the consumer group is being created".to_owned()),
        },
    };
    readiness::answer(&[Check::required("redis", state_of_redis)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn school(id: &str) -> TenantId {
        TenantId::parse(id).expect("a valid id")
    }

    #[test]
    fn kept_headers_are_the_deliverys_own_without_the_signature() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("x-thinkific-topic", HeaderValue::from_static("enrollment.created"));
        headers.insert(SIGNATURE_HEADER, HeaderValue::from_static("abc123"));
        headers.insert("authorization", HeaderValue::from_static("Bearer nope"));
        headers.insert("x-thinkific-subdomain", HeaderValue::from_str(&"é".repeat(200)).expect("header"));
        let kept: serde_json::Value = serde_json::from_str(&kept_headers(&headers).expect("some")).expect("JSON");
        assert_eq!(kept["content-type"], "application/json");
        assert_eq!(kept["x-thinkific-topic"], "enrollment.created");
        assert!(kept.get(SIGNATURE_HEADER).is_none() && kept.get("authorization").is_none(), "{kept}");
        let subdomain = kept["x-thinkific-subdomain"].as_str().expect("kept");
        assert!(subdomain.len() <= KEPT_HEADER_BYTES && subdomain.starts_with('é'), "{subdomain}");
        assert_eq!(kept_headers(&HeaderMap::new()), None);
    }

    #[test]
    fn the_tenant_comes_from_the_key_or_the_signed_body() {
        let bound = KeyScope::School(school("a"));
        assert_eq!(tenant_of(&bound, None).ok(), Some(school("a")));
        assert_eq!(tenant_of(&bound, Some(&school("a"))).ok(), Some(school("a")));
        assert!(matches!(tenant_of(&bound, Some(&school("b"))), Err(IntakeError::TenantNotTheKeys)));
        assert_eq!(tenant_of(&KeyScope::AnySchool, Some(&school("b"))).ok(), Some(school("b")));
        assert!(matches!(tenant_of(&KeyScope::AnySchool, None), Err(IntakeError::NoTenant)));
    }
}
