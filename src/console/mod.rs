//! The operator console: the fleet and its dead letters in a web page,
//! under `/console` on `fleet api` (and so on `fleet dev`).
//!
//! Off (404) unless `FLEET_CONSOLE_TOKEN` is set. An operator signs in with
//! that token and gets a session (`session.rs`); every page but the sign-in
//! form needs one, and every form that changes something carries the
//! session's CSRF token. The pages, one file each:
//! - `overview.rs`: the `fleet status` report with its verdict, and charts of
//!   the last hour (`chart.rs`) drawn from the activity the workers record in
//!   Redis; it refreshes itself.
//! - `dead_letters.rs`: the dead letters filtered and paged, one in detail,
//!   replay (in the background, `jobs.rs`, with its progress on a page) and
//!   purge, each after a preview of how many and which.
//! - `retries.rs`: the scheduled retries.
//! - `cache.rs`: `fleet cache stats`, and clearing by kind or tag.
//!
//! Everything the console reads or changes goes through the operator
//! commands' own functions (`crate::operator`): one implementation of
//! listing, replay, purge, status and cache clearing for the CLI and the
//! console. The console only adds its own state: sessions, the sign-in
//! throttle and the progress of background replays, under
//! `<prefix>console:`.
//!
//! The pages are rendered on the server (maud) with inline CSS
//! (`style.css`) and no script at all: a page that refreshes itself uses
//! `<meta http-equiv="refresh">`. Nothing is loaded from anywhere but the
//! fleet, and every answer forbids framing, caching and any script.
//! Why these choices: `docs/decisions/0018-operator-console.md`.

mod cache;
mod chart;
mod dead_letters;
mod intake;
mod jobs;
mod overview;
mod pages;
mod retries;
mod session;

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use redis::RedisError;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::redis::keys::Keys;
use crate::redis::RedisConnection;
use crate::secrets::ConsoleToken;

/// Where the console is served.
pub(crate) const BASE: &str = "/console";

/// Everything the console's pages share.
#[derive(Clone)]
pub(crate) struct ConsoleState {
    /// Empty until the read API has reached Redis; the pages answer 503 meanwhile.
    redis: Arc<OnceCell<RedisConnection>>,
    keys: Keys,
    /// The SHA-256 of `FLEET_CONSOLE_TOKEN`: the token itself is not kept.
    token_digest: [u8; 32],
    /// Which token a session was opened with (see `session.rs`): a new
    /// token ends the sessions of the old one.
    token_generation: String,
    /// Proxies whose `X-Forwarded-For` names the client (the sign-in throttle).
    trusted_proxies: Arc<Vec<IpAddr>>,
}

impl ConsoleState {
    pub fn new(
        redis: Arc<OnceCell<RedisConnection>>,
        keys: Keys,
        token: &ConsoleToken,
        trusted_proxies: Vec<IpAddr>,
    ) -> Self {
        let token_digest: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
        let generation =
            Sha256::new().chain_update(b"fleet console sessions of ").chain_update(token_digest).finalize();
        Self {
            redis,
            keys,
            token_digest,
            token_generation: hex::encode(&generation[..8]),
            trusted_proxies: Arc::new(trusted_proxies),
        }
    }

    /// Redis, or the 503 every page answers while it has not been reached.
    fn redis(&self) -> Result<RedisConnection, ConsoleError> {
        self.redis.get().cloned().ok_or(ConsoleError::RedisNotReached)
    }
}

/// The console's routes, each behind the security headers of [`harden`].
pub(crate) fn routes(state: ConsoleState) -> Router {
    Router::new()
        .route(BASE, get(overview::page))
        .route(&format!("{BASE}/sign-in"), get(session::sign_in_form).post(session::sign_in))
        .route(&format!("{BASE}/sign-out"), post(session::sign_out))
        .route(&format!("{BASE}/intake"), get(intake::page))
        .route(&format!("{BASE}/dead-letters"), get(dead_letters::list))
        .route(&format!("{BASE}/dead-letters/replay"), get(dead_letters::replay_preview).post(dead_letters::replay))
        .route(&format!("{BASE}/dead-letters/purge"), get(dead_letters::purge_preview).post(dead_letters::purge))
        .route(&format!("{BASE}/dead-letters/{{id}}"), get(dead_letters::detail))
        .route(&format!("{BASE}/jobs/{{id}}"), get(jobs::page))
        .route(&format!("{BASE}/retries"), get(retries::page))
        .route(&format!("{BASE}/cache"), get(cache::page))
        .route(&format!("{BASE}/cache/clear"), get(cache::clear_preview).post(cache::clear))
        .route(&format!("{BASE}/{{*rest}}"), get(not_found).post(not_found))
        .layer(middleware::from_fn(harden))
        .with_state(state)
}

/// What `/console` answers while the console is off: 404, as for any path
/// the fleet does not serve.
pub fn off() -> Router {
    let off = || async { StatusCode::NOT_FOUND };
    Router::new().route(BASE, axum::routing::any(off)).route(&format!("{BASE}/{{*rest}}"), axum::routing::any(off))
}

async fn not_found() -> ConsoleError {
    ConsoleError::NotFound("there is no such page in the console".into())
}

/// Headers on every console answer: no framing, no caching, no script, no
/// resource from anywhere else, no referrer.
async fn harden(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// Why a console request is not answered with its page.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConsoleError {
    #[error("Redis has not been reached yet; the console needs it")]
    RedisNotReached,
    #[error("Redis did not answer: {0}")]
    Redis(#[from] RedisError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// Sign in first: where a browser is sent for a page without a session.
    #[error("sign in first")]
    SignIn,
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::SignIn => return Redirect::to(&format!("{BASE}/sign-in")).into_response(),
            Self::RedisNotReached | Self::Redis(_) => {
                tracing::warn!(error = %self, "console page not served: Redis unavailable");
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
        };
        (status, pages::error_page(status, &self.to_string())).into_response()
    }
}

/// The fields of a form (an `application/x-www-form-urlencoded` body) or of
/// a query string, in order; a name may repeat (the ticked dead letters).
#[derive(Debug, Default)]
struct Fields(Vec<(String, String)>);

impl Fields {
    fn parse(encoded: &[u8]) -> Self {
        Self(url::form_urlencoded::parse(encoded).into_owned().collect())
    }

    fn of_body(body: &Bytes) -> Self {
        Self::parse(body)
    }

    fn of_query(query: Option<&str>) -> Self {
        Self::parse(query.unwrap_or_default().as_bytes())
    }

    /// The first non-empty value of `name`, trimmed.
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().filter(|(field, _)| field == name).map(|(_, value)| value.trim()).find(|value| !value.is_empty())
    }

    /// Every non-empty value of `name`.
    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(field, value)| field == name && !value.trim().is_empty())
            .map(|(_, value)| value.trim().to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_repeated_names_and_skip_empty_values() {
        let fields = Fields::parse(b"id=1-0&id=2-0&topic=&tenant=+a+&id=");
        assert_eq!(fields.all("id"), ["1-0", "2-0"]);
        assert_eq!(fields.get("topic"), None);
        assert_eq!(fields.get("tenant"), Some("a"));
        assert_eq!(Fields::of_query(None).get("id"), None);
    }
}
