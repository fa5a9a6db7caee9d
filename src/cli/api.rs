//! `fleet api`: its arguments (rate limit, tokens, the console) and their
//! conversion to [`crate::api::Settings`].

use std::net::{IpAddr, SocketAddr};

use clap::Args;

use super::connections::{DatabaseArgs, RedisArgs};
use super::serving::{HttpArgs, ListenArgs, MetricsListenArg};
use super::worker::CacheTuning;
use super::ConfigError;
use crate::runtime::HttpSettings;
use crate::secrets::{ApiToken, ConsoleToken, SchoolTokens, SecretValueParser};

#[derive(Debug, Args)]
pub struct ApiArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Address the read API listens on. Default 127.0.0.1:8081 (or 0.0.0.0:$PORT).
    #[arg(long, env = "FLEET_API_LISTEN", value_name = "FLEET_API_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Port to listen on, on all interfaces.
    #[arg(long, env = "PORT", value_name = "PORT")]
    pub port: Option<u16>,
    #[command(flatten)]
    pub api: ApiTuning,
    #[command(flatten)]
    pub cache: CacheTuning,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub metrics: MetricsListenArg,
}

impl ApiArgs {
    /// `FLEET_API_LISTEN`, else `0.0.0.0:$PORT`, else `127.0.0.1:8081`;
    /// both set is refused, naming them.
    pub fn address(&self) -> Result<SocketAddr, ConfigError> {
        if self.listen.is_some() && self.port.is_some() {
            return Err(ConfigError::ListenAndPort("FLEET_API_LISTEN"));
        }
        ListenArgs { listen: self.listen, port: self.port }.address().map(|address| {
            if self.listen.is_none() && self.port.is_none() {
                SocketAddr::new(address.ip(), 8081)
            } else {
                address
            }
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct ApiTuning {
    /// Requests one client may make per window; more get 429.
    #[arg(long, env = "RATE_LIMIT_API_REQUESTS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..), value_name = "RATE_LIMIT_API_REQUESTS")]
    pub rate_limit_requests: u64,
    /// The rate-limit window, in milliseconds.
    #[arg(long, env = "RATE_LIMIT_WINDOW_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(100..=86_400_000), value_name = "RATE_LIMIT_WINDOW_MS")]
    pub rate_limit_window_ms: u64,
    /// Bearer token that reads every school. `fleet api` needs it or FLEET_API_TOKENS;
    /// `fleet dev` serves the read API openly when neither is set.
    #[arg(long, env = "FLEET_API_TOKEN", hide_env_values = true, value_name = "FLEET_API_TOKEN")]
    pub api_token: Option<ApiToken>,
    /// Bearer tokens that read only some schools: `school=token` pairs separated by commas.
    #[arg(long, env = "FLEET_API_TOKENS", hide_env_values = true, value_name = "FLEET_API_TOKENS",
          value_parser = SecretValueParser::<SchoolTokens>::new())]
    pub api_tokens: Option<SchoolTokens>,
    /// Reverse proxies (IP addresses, comma-separated) whose X-Forwarded-For names the client
    /// the rate limit counts; from any other peer the header is ignored.
    #[arg(long, env = "FLEET_TRUSTED_PROXIES", value_delimiter = ',', value_name = "FLEET_TRUSTED_PROXIES")]
    pub trusted_proxies: Vec<IpAddr>,
    /// The school a request without `tenant_id` is about (required when unset).
    #[arg(long, env = "FLEET_DEFAULT_TENANT", value_name = "FLEET_DEFAULT_TENANT")]
    pub default_tenant: Option<fleet_jobs::TenantId>,
    /// Serve the operator console under /console, signed in to with this token (at least 16
    /// characters). Off (404) when unset.
    #[arg(long, env = "FLEET_CONSOLE_TOKEN", hide_env_values = true, value_name = "FLEET_CONSOLE_TOKEN",
          value_parser = SecretValueParser::<ConsoleToken>::new())]
    pub console_token: Option<ConsoleToken>,
}

impl ApiTuning {
    /// The read API's settings, served with `http`'s limits.
    pub fn settings(&self, http: HttpSettings) -> crate::api::Settings {
        crate::api::Settings {
            rate_limit_requests: self.rate_limit_requests,
            rate_limit_window_ms: self.rate_limit_window_ms,
            api_token: self.api_token.clone(),
            api_tokens: self.api_tokens.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            default_tenant: self.default_tenant.clone(),
            console_token: self.console_token.clone(),
            http,
            metrics_listen: None,
        }
    }
}
