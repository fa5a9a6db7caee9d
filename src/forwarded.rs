//! The client address behind the fleet's own reverse proxies: what the read
//! API's rate limit and the console's sign-in throttle count by.
//!
//! `X-Forwarded-For` is only believed from a peer listed in
//! `FLEET_TRUSTED_PROXIES`; from anyone else it is the client's own claim.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

/// The client behind a trusted proxy: the right-most `X-Forwarded-For`
/// address that is not itself a trusted proxy (addresses to its left are
/// whatever the client chose to send). None when `peer` is not a trusted
/// proxy: then the header is the client's own claim and is ignored.
pub(crate) fn forwarded_client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
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

/// The address to count a request by: the forwarded client behind a
/// trusted proxy, else the peer itself.
pub(crate) fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    forwarded_client(peer, headers, trusted).unwrap_or(peer.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

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
