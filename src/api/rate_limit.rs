//! The read API's rate limit and the client address it counts by.
//!
//! A fixed window in Redis per token (429 with `Retry-After`), after
//! the bearer token is checked (`super::auth`), so callers without a valid token
//! never spend a client's budget. Behind a proxy listed in
//! `FLEET_TRUSTED_PROXIES` the budget is per token and client address (from
//! `X-Forwarded-For`, see [`forwarded_client`]); without tokens it is per
//! peer address. While Redis is unreachable the limit fails open: an outage
//! must not take the dashboard down.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Extension;

use super::auth::Caller;
use super::{error, ApiState};

/// The client behind a trusted proxy: the right-most `X-Forwarded-For`
/// address that is not itself a trusted proxy (addresses to its left are
/// whatever the client chose to send). None when `peer` is not a trusted
/// proxy: then the header is the client's own claim and is ignored.
fn forwarded_client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
    let is_trusted = |address: IpAddr| trusted.iter().any(|proxy| proxy.to_canonical() == address.to_canonical());
    if !is_trusted(peer) {
        return None;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        let address = hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<SocketAddr>().ok().map(|addr| addr.ip()));
        match address {
            Some(address) if is_trusted(address) => continue,
            Some(address) => return Some(address.to_canonical()),
            // A hop our own proxies wrote but we cannot read: count the proxy.
            None => break,
        }
    }
    Some(peer.to_canonical())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(peer: &str, header: Option<&str>, trusted: &[&str]) -> Option<IpAddr> {
        let mut headers = HeaderMap::new();
        if let Some(header) = header {
            headers.insert("x-forwarded-for", HeaderValue::from_str(header).expect("header"));
        }
        let trusted: Vec<IpAddr> = trusted.iter().map(|ip| ip.parse().expect("IP")).collect();
        forwarded_client(peer.parse().expect("IP"), &headers, &trusted)
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_forwarded_address() {
        let ip = |text: &str| text.parse::<IpAddr>().ok();
        assert_eq!(forwarded("10.0.0.1", Some("192.0.2.1"), &[]), None, "untrusted peer: ignored");
        assert_eq!(forwarded("10.0.0.1", Some("6.6.6.6, 192.0.2.1"), &["10.0.0.1"]), ip("192.0.2.1"));
        assert_eq!(forwarded("10.0.0.1", Some("192.0.2.1, 10.0.0.2"), &["10.0.0.1", "10.0.0.2"]), ip("192.0.2.1"));
        assert_eq!(forwarded("10.0.0.1", Some("192.0.2.1:4711"), &["10.0.0.1"]), ip("192.0.2.1"));
        assert_eq!(forwarded("10.0.0.1", Some("[2001:db8::1]:4711"), &["10.0.0.1"]), ip("2001:db8::1"));
        assert_eq!(forwarded("::ffff:10.0.0.1", Some("192.0.2.1"), &["10.0.0.1"]), ip("192.0.2.1"), "mapped IPv4");
        // Nothing usable from the proxy: the proxy itself is the client.
        assert_eq!(forwarded("10.0.0.1", None, &["10.0.0.1"]), ip("10.0.0.1"));
        assert_eq!(forwarded("10.0.0.1", Some("garbage"), &["10.0.0.1"]), ip("10.0.0.1"));
    }
}
