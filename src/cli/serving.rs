//! How a serving command listens: its address (`FLEET_LISTEN` or `PORT`),
//! a separate metrics address, and the limits every HTTP server applies to
//! slow and idle clients.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Args;

use super::ConfigError;
use crate::runtime::HttpSettings;

/// How every HTTP server (intake, read API, worker health) treats slow and
/// idle clients; see [`crate::runtime`].
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// How long a connection may take to send a request's line and headers, in milliseconds;
    /// also how long an idle keep-alive connection stays open. Slower connections are closed.
    #[arg(long = "http-header-timeout-ms", env = "FLEET_HTTP_HEADER_TIMEOUT_MS",
          default_value_t = crate::runtime::DEFAULT_HEADER_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(100..=300_000), value_name = "FLEET_HTTP_HEADER_TIMEOUT_MS")]
    pub header_timeout_ms: u64,
    /// How long a request may take from its headers to its response, body included, in
    /// milliseconds; slower requests get 408.
    #[arg(long = "http-request-timeout-ms", env = "FLEET_HTTP_REQUEST_TIMEOUT_MS",
          default_value_t = crate::runtime::DEFAULT_REQUEST_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(100..=600_000), value_name = "FLEET_HTTP_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: u64,
    /// The most connections served at once; at the cap, new ones wait to be accepted until one closes.
    #[arg(long = "http-max-connections", env = "FLEET_HTTP_MAX_CONNECTIONS",
          default_value_t = crate::runtime::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..=65_536), value_name = "FLEET_HTTP_MAX_CONNECTIONS")]
    pub max_connections: u32,
}

impl HttpArgs {
    pub fn settings(&self) -> HttpSettings {
        HttpSettings {
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_connections: self.max_connections,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Address to listen on, e.g. 0.0.0.0:8080. Default 127.0.0.1:8080.
    #[arg(long, env = "FLEET_LISTEN", value_name = "FLEET_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Port to listen on, on all interfaces (the platform convention of Heroku-like hosts).
    #[arg(long, env = "PORT", value_name = "PORT")]
    pub port: Option<u16>,
}

impl ListenArgs {
    /// The address to bind: `FLEET_LISTEN`, else `0.0.0.0:$PORT`, else
    /// `127.0.0.1:8080`. Setting both is refused as ambiguous.
    pub fn address(&self) -> Result<SocketAddr, ConfigError> {
        match (self.listen, self.port) {
            (Some(_), Some(_)) => Err(ConfigError::ListenAndPort("FLEET_LISTEN")),
            (Some(listen), None) => Ok(listen),
            (None, Some(port)) => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)),
            (None, None) => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080)),
        }
    }
}

/// Where a public role serves its metrics instead of its public port.
#[derive(Debug, Clone, Args)]
pub struct MetricsListenArg {
    /// Serve /metrics on this address (e.g. a private one, 10.0.0.5:9100) instead of on the public
    /// port, which then answers 404 for it. Unset: /metrics is on the public port.
    #[arg(long = "metrics-listen", env = "FLEET_METRICS_LISTEN", value_name = "FLEET_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}
