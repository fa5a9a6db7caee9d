//! The webhook endpoint: verify, deduplicate, append to the stream, answer.
//!
//! Nothing is parsed before the signature is checked, and nothing is
//! acknowledged (2xx) before the event is in the stream: when Redis cannot
//! take it, Thinkific gets a 503 and retries later.
//!
//! The school an event belongs to comes only from what is signed: the key
//! that signed it when that key is bound to a school, else the body's
//! `tenant_id`. Headers are not signed, so none of them decides tenancy.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use fleet_jobs::{Envelope, EnvelopeError, TenantId};
use redis::aio::ConnectionManager;
use serde_json::json;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::redis::keys::Keys;
use crate::redis::stream::{self, Enqueued, NewEntry};
use crate::runtime::HttpSettings;
use crate::secrets::{KeyScope, WebhookKeys};

pub use signature::sign;
use signature::signer;

mod signature;

/// The header carrying the hex HMAC-SHA256 of the raw body.
pub const SIGNATURE_HEADER: &str = "x-thinkific-hmac-sha256";
/// The optional header naming the school's subdomain. It is not signed, so
/// it never decides tenancy; a disagreement with the signed tenant is only
/// logged at debug level.
pub const SUBDOMAIN_HEADER: &str = "x-thinkific-subdomain";

/// The intake's settings in their validated form.
#[derive(Debug, Clone)]
pub struct Settings {
    pub keys: WebhookKeys,
    pub max_body_bytes: usize,
    pub dedup_window: Duration,
    /// Limits on slow and idle clients.
    pub http: HttpSettings,
}

/// Why the intake cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot connect to Redis; check REDIS_URL and that the server is up")]
    Redis(#[source] redis::RedisError),
    #[error("cannot create the consumer group")]
    Group(#[source] redis::RedisError),
    #[error("cannot listen on {0}")]
    Listen(SocketAddr, #[source] std::io::Error),
}

/// An intake connected to Redis and bound to its address, ready to serve.
pub struct Application {
    listener: TcpListener,
    router: Router,
    http: HttpSettings,
}

impl Application {
    /// Connects to Redis, makes sure the consumer group exists (so entries
    /// appended before any worker ran are consumed) and binds `address`.
    pub async fn build(
        address: SocketAddr,
        redis_url: &str,
        keys: Keys,
        settings: Settings,
    ) -> Result<Self, BuildError> {
        let mut redis = crate::redis::connect(redis_url, Duration::from_secs(2)).await.map_err(BuildError::Redis)?;
        stream::ensure_group(&mut redis, &keys).await.map_err(BuildError::Group)?;
        let listener = TcpListener::bind(address).await.map_err(|err| BuildError::Listen(address, err))?;
        let address = listener.local_addr().map_err(|err| BuildError::Listen(address, err))?;
        tracing::info!(%address, stream = %keys.events(), "intake listening");
        let http = settings.http;
        Ok(Self { listener, router: router(redis, keys, settings), http })
    }

    /// The address it listens on (the port chosen when asked for port 0).
    pub fn address(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` fires, then finishes the requests in flight.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        crate::runtime::serve(self.listener, self.router, self.http, shutdown).await
    }
}

#[derive(Clone)]
struct IntakeState {
    redis: ConnectionManager,
    keys: Keys,
    settings: Settings,
}

/// The intake's routes, ready to serve (`fleet dev` merges them with the read API's).
pub fn router(redis: ConnectionManager, keys: Keys, settings: Settings) -> Router {
    let body_limit = settings.max_body_bytes;
    let state = IntakeState { redis, keys, settings };
    Router::new()
        .route("/webhooks/thinkific", post(receive))
        .route("/api/webhooks/enrollment", post(receive))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
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
}

impl IntoResponse for IntakeError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadBody(_) | Self::BadEnvelope(_) | Self::NoTenant => StatusCode::BAD_REQUEST,
            Self::MissingSignature | Self::BadSignature => StatusCode::UNAUTHORIZED,
            Self::TenantNotTheKeys => StatusCode::FORBIDDEN,
            Self::QueueUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut response = (status, Json(json!({ "status": "rejected", "error": self.to_string() }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

async fn receive(
    State(state): State<IntakeState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, IntakeError> {
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
    let Some(scope) = signer(&state.settings.keys, &body, signature) else {
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
    let tenant = tenant_of(scope, envelope.tenant_id.as_ref()).inspect_err(|err| match (err, scope) {
        (IntakeError::TenantNotTheKeys, KeyScope::School(key_school)) => tracing::warn!(
            event_id = %envelope.id, %topic, %key_school,
            body_tenant_id = envelope.tenant_id.as_ref().map(TenantId::as_str),
            "signed webhook rejected: its tenant_id is not the school its key is bound to; if one key \
             signs for several schools, move it from THINKIFIC_SCHOOL_KEYS to THINKIFIC_WEBHOOK_SECRET"
        ),
        _ => tracing::warn!(
            event_id = %envelope.id, %topic,
            "signed webhook rejected: no tenant_id, and its key is valid for any school; bind the key of \
             the school whose webhooks lack tenant_id to it in THINKIFIC_SCHOOL_KEYS"
        ),
    })?;
    let tenant_id = tenant.as_str();
    let subdomain = headers.get(SUBDOMAIN_HEADER).and_then(|value| value.to_str().ok());
    if subdomain.is_some_and(|subdomain| subdomain != tenant_id) {
        tracing::debug!(tenant_id, "X-Thinkific-Subdomain differs from the signed tenant; ignored, it is not signed");
    }
    let entry = NewEntry { body: &body, topic: &topic, tenant_id, event_id: &envelope.id, received_at };
    let mut redis = state.redis.clone();
    let enqueued = stream::enqueue(&mut redis, &state.keys, &entry, state.settings.dedup_window)
        .await
        .map_err(|err| {
            tracing::error!(
                error = %err, event_id = %envelope.id, %topic,
                "could not queue webhook, answered 503 (Thinkific will retry); check that Redis is up and REDIS_URL is right"
            );
            IntakeError::QueueUnavailable(err)
        })?;
    let (status, entry_id) = match enqueued {
        Enqueued::Accepted(id) => ("accepted", id),
        Enqueued::Duplicate(id) => ("duplicate", id),
    };
    tracing::info!(event_id = %envelope.id, %topic, tenant_id, status, stream_entry_id = %entry_id, "webhook received");
    Ok(Json(json!({ "status": status, "event_id": envelope.id, "stream_entry_id": entry_id })))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<IntakeState>) -> Response {
    let mut redis = state.redis.clone();
    let ping = tokio::time::timeout(Duration::from_secs(2), redis::cmd("PING").query_async::<String>(&mut redis)).await;
    match ping {
        Ok(Ok(_)) => Json(json!({ "status": "ready", "redis": "ok" })).into_response(),
        Ok(Err(err)) => not_ready(err.to_string()),
        Err(_) => not_ready("timed out".into()),
    }
}

fn not_ready(reason: String) -> Response {
    tracing::warn!(%reason, "not ready: Redis unreachable");
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "redis": reason }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn school(id: &str) -> TenantId {
        TenantId::parse(id).expect("a valid id")
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
