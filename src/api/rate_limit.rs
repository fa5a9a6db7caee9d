//! The read API's rate limit and the client address it counts by.
//!
//! A fixed window in Redis per token (429 with `Retry-After`), after
//! the bearer token is checked (`super::auth`), so callers without a valid token
//! never spend a client's budget. Behind a proxy listed in
//! `FLEET_TRUSTED_PROXIES` the budget is per token and client address (from
//! `X-Forwarded-For`, see `crate::forwarded`); without tokens it is per
//! peer address. While Redis is unreachable the limit fails open: an outage
//! must not take the dashboard down.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Extension;

use super::auth::Caller;
use super::{error, ApiState};
use crate::forwarded::forwarded_client;

pub(super) async fn rate_limit(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(caller): Extension<Caller>,
    request: Request,
    next: Next,
) -> Response {
    let window = state.tuning.rate_limit_window_ms.max(1);
    let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let slot = now / window;
    if let Some(mut redis) = state.redis() {
        let forwarded = forwarded_client(peer.ip(), request.headers(), &state.tuning.trusted_proxies);
        let token = caller.token_fingerprint();
        let client = if token.is_some() { forwarded } else { Some(forwarded.unwrap_or(peer.ip().to_canonical())) };
        let key = state.keys.rate_limit(token, client, slot);
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
