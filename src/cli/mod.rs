//! The command line: every command's flags and environment variables (clap
//! only), and [`run`], the one place that knows every role.
//!
//! Every setting is an environment variable and also a flag (`--redis-url` or
//! `REDIS_URL`). A bad value stops the process with a message naming the
//! variable. Secrets (the webhook keys and the passwords inside URLs) are
//! wrapped in types whose `Debug` and `Display` never print them, and clap is
//! told never to echo their values in `--help`; URLs are parsed and shown by
//! [`crate::urls`], whose errors never quote the value.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use run::run;

mod run;

use crate::operator::cache::ClearKind;
use crate::redis::dedup::DedupWindow;
use crate::redis::keys::Kind;
use crate::redis::KeyPrefix;
use crate::runtime::HttpSettings;
use crate::secrets::{
    ApiToken, ConsoleToken, KeysError, SchoolKeys, SchoolTokens, SecretValueParser, WebhookKeys, WebhookSecrets,
};
use crate::urls::{DatabaseUrl, HttpUrl, RedisUrl, RedisUrls, RevalidateUrl};

#[derive(Debug, Parser)]
#[command(
    name = "fleet",
    version,
    about = "Thinkific webhooks into a Redis Stream, applied to Postgres by a fleet of workers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the embedded database migrations and exit.
    Migrate(MigrateArgs),
    /// Serve the webhook endpoint: verify, deduplicate, append to the stream.
    Intake(IntakeArgs),
    /// Consume the events stream and apply batches to Postgres.
    Worker(WorkerArgs),
    /// Run everything on this machine: throwaway Redis and Postgres, intake and a worker.
    Dev(DevArgs),
    /// Serve the dashboard's cached read API.
    Api(ApiArgs),
    /// Inspect or clear the dashboard cache.
    Cache(CacheArgs),
    /// Show the fleet: stream backlog, consumers, scheduled retries, dead letters.
    Status(StatusArgs),
    /// Inspect, replay and purge dead letters.
    Dlq(DlqArgs),
    /// List the events waiting for another attempt: when each is due, after which error.
    Retries(RetriesArgs),
    /// Send realistic signed webhooks to an intake and measure the fleet: requests/s, answers,
    /// latency, drain time, events applied/s, freshness. Loopback only unless --allow-remote.
    Loadtest(LoadtestArgs),
}

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

/// Where a public role serves its metrics instead of its public port.
#[derive(Debug, Clone, Args)]
pub struct MetricsListenArg {
    /// Serve /metrics on this address (e.g. a private one, 10.0.0.5:9100) instead of on the public
    /// port, which then answers 404 for it. Unset: /metrics is on the public port.
    #[arg(long = "metrics-listen", env = "FLEET_METRICS_LISTEN", value_name = "FLEET_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl ApiArgs {
    pub fn address(&self) -> Result<SocketAddr, ConfigError> {
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
pub struct CacheTuning {
    /// Seconds a cached page of enrollments stays fresh.
    #[arg(long, env = "CACHE_TTL_ENROLLMENTS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400), value_name = "CACHE_TTL_ENROLLMENTS")]
    pub ttl_enrollments: u64,
    /// Seconds cached course statistics stay fresh.
    #[arg(long, env = "CACHE_TTL_STATISTICS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400), value_name = "CACHE_TTL_STATISTICS")]
    pub ttl_statistics: u64,
    /// Seconds a cached school dashboard stays fresh.
    #[arg(long, env = "CACHE_TTL_DASHBOARD", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400), value_name = "CACHE_TTL_DASHBOARD")]
    pub ttl_dashboard: u64,
}

impl CacheTuning {
    pub fn ttls(&self) -> crate::redis::cache::Ttls {
        crate::redis::cache::Ttls {
            enrollments: Duration::from_secs(self.ttl_enrollments),
            statistics: Duration::from_secs(self.ttl_statistics),
            dashboard: Duration::from_secs(self.ttl_dashboard),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RevalidateArgs {
    /// POST the invalidated cache tags here after each batch (e.g. a Next.js revalidation route).
    #[arg(long, env = "REVALIDATE_URL", hide_env_values = true, value_name = "REVALIDATE_URL")]
    pub revalidate_url: Option<RevalidateUrl>,
    /// Sent as `X-Revalidate-Secret` with each revalidation call.
    #[arg(long, env = "REVALIDATE_SECRET", hide_env_values = true, value_name = "REVALIDATE_SECRET")]
    pub revalidate_secret: Option<ApiToken>,
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Keys and memory by kind, hits and misses, tags.
    Stats {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Start the hit and miss counts again from zero.
        #[arg(long)]
        reset: bool,
    },
    /// Remove cached keys (with SCAN, only under the fleet's prefix).
    Clear {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// What to clear: all, enrollments, statistics or dashboard.
        #[arg(value_parser = clear_kind_parser(), required_unless_present_any = ["tag", "pattern"])]
        kind: Option<ClearKind>,
        /// Invalidate one tag, e.g. course:2871345 (in every school, or in --tenant-id).
        /// A literal name (letters, digits, `:`, `-`, `_`, `.`), never a pattern.
        #[arg(long, conflicts_with_all = ["kind", "pattern"])]
        tag: Option<String>,
        /// The school whose tag to invalidate: a literal id, never a pattern.
        #[arg(long, requires = "tag")]
        tenant_id: Option<String>,
        /// Remove cache keys matching this glob pattern (Redis MATCH: `*`, `?`, `[…]`) under
        /// `<prefix>cache:`, e.g. '{184532}:*' (a school's keys). The only argument that takes a pattern.
        #[arg(long, conflicts_with_all = ["kind", "tag"])]
        pattern: Option<String>,
    },
}

/// `all` or a kind's name; the names come from [`Kind`] itself.
fn clear_kind_parser() -> impl clap::builder::TypedValueParser<Value = ClearKind> {
    let names = std::iter::once("all").chain(Kind::ALL.map(Kind::as_str));
    clap::builder::TypedValueParser::map(clap::builder::PossibleValuesParser::new(names), |name: String| {
        Kind::from_name(&name).map_or(ClearKind::All, ClearKind::Only)
    })
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// The intake to load: its base URL (webhooks go to /webhooks/thinkific) or its whole
    /// webhook URL. Plain http only. Refused unless it is this machine (loopback), see
    /// --allow-remote.
    #[arg(long, env = "FLEET_LOADTEST_URL", default_value = "http://127.0.0.1:8080", value_name = "URL")]
    pub url: HttpUrl,
    /// Distinct events to send (each with its own id); duplicates come on top.
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=crate::loadtest::generate::MAX_EVENTS))]
    pub events: u64,
    /// Courses the enrollments spread over (the first fifth get half of them).
    #[arg(long, default_value_t = 200, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub courses: u32,
    /// Learners the enrollments are drawn from.
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub users: u32,
    /// Share of the events (0 to 1) delivered a second time, a little later, as Thinkific's
    /// at-least-once delivery does; the intake answers them `duplicate`.
    #[arg(long, default_value_t = 0.01, value_parser = parse_share, value_name = "SHARE")]
    pub duplicate_rate: f64,
    /// How many places a webhook may move from time order (0 sends in time order).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub shuffle_window: u32,
    /// Connections sending at once (closed loop); with --rate, the most connections used.
    #[arg(long, default_value_t = 64, value_name = "C",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Send this many webhooks per second on schedule (open loop), whatever the answers;
    /// latency then counts from when each was due.
    #[arg(long, value_parser = parse_rate, value_name = "R")]
    pub rate: Option<f64>,
    /// The key that signs the webhooks (the first, if several); default: `fleet dev`'s
    /// development key. Never printed.
    #[arg(
        long = "secret",
        env = "THINKIFIC_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "THINKIFIC_WEBHOOK_SECRET",
        value_parser = SecretValueParser::<WebhookSecrets>::new()
    )]
    pub secret: Option<WebhookSecrets>,
    /// The school (tenant_id) every event belongs to.
    #[arg(long, env = "FLEET_LOADTEST_TENANT", default_value = "loadtest", value_name = "TENANT")]
    pub tenant: fleet_jobs::TenantId,
    /// The /metrics of each worker (FLEET_HEALTH_LISTEN), or of `fleet dev`; comma-separated.
    /// Gives events applied, drain time and freshness.
    #[arg(long = "metrics-url", env = "FLEET_LOADTEST_METRICS_URL", value_delimiter = ',', value_name = "URL")]
    pub metrics_urls: Vec<HttpUrl>,
    /// Count the run's rows in Postgres' `events` table: events applied and drain time,
    /// without metrics.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "DATABASE_URL")]
    pub database_url: Option<DatabaseUrl>,
    /// Seconds to wait after the last answer for every accepted event to be applied.
    #[arg(long, default_value_t = 120, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub drain_timeout: u64,
    /// Also report the CPU time of these processes (the intake, workers, Redis, Postgres);
    /// comma-separated process ids. Linux only.
    #[arg(long = "watch-pid", value_delimiter = ',', value_name = "PID")]
    pub watch_pids: Vec<u32>,
    /// Seeds the generator (default: the time), to send the same workload again.
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,
    /// Load a server that is not this machine. A load test is indistinguishable from an
    /// attack: only against a deployment you run and may load.
    #[arg(long)]
    pub allow_remote: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_share(text: &str) -> Result<f64, String> {
    let share: f64 = text.parse().map_err(|_| format!("`{text}` is not a number"))?;
    if !(0.0..=1.0).contains(&share) {
        return Err("must be between 0 and 1".into());
    }
    Ok(share)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text.parse().map_err(|_| format!("`{text}` is not a number"))?;
    if !(rate > 0.0 && rate <= 10_000_000.0) {
        return Err("must be above 0 (webhooks per second)".into());
    }
    Ok(rate)
}

impl LoadtestArgs {
    /// The run's settings; `default_secret` signs when no key is given.
    pub fn settings(self, default_secret: WebhookSecrets) -> crate::loadtest::Settings {
        use crate::loadtest::{generate::Shape, send::Pace, Settings};
        let connections = self.concurrency as usize;
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
        });
        Settings {
            url: self.url,
            shape: Shape {
                events: self.events,
                courses: self.courses,
                users: self.users,
                duplicate_rate: self.duplicate_rate,
                shuffle_window: self.shuffle_window,
                tenant: self.tenant,
                seed,
            },
            pace: match self.rate {
                Some(per_second) => Pace::Rate { per_second, connections },
                None => Pace::Concurrency(connections),
            },
            secrets: self.secret.unwrap_or(default_secret),
            metrics_urls: self.metrics_urls,
            database_url: self.database_url,
            drain_timeout: Duration::from_secs(self.drain_timeout),
            watch_pids: self.watch_pids,
            allow_remote: self.allow_remote,
            output: crate::operator::output::Output::new(self.json),
        }
    }
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: DlqFilter,
        /// Show at most this many.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter whole, its body pretty-printed.
    Show {
        /// The dead letter's id (first column of `fleet dlq list`).
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on the events stream with fresh attempts.
    Replay {
        #[command(flatten)]
        selection: DlqSelection,
        /// Print what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete dead letters for good.
    Purge {
        #[command(flatten)]
        selection: DlqSelection,
        /// Confirm the deletion; without it nothing is deleted.
        #[arg(long)]
        yes: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct DlqFilter {
    /// Only dead letters of this topic, e.g. enrollment.progress.
    #[arg(long)]
    pub topic: Option<String>,
    /// Only dead letters of this school (compared whole, never a pattern).
    #[arg(long)]
    pub tenant_id: Option<String>,
    /// Only dead letters of this error kind.
    #[arg(long, value_parser = ["malformed", "event", "crashed", "deleted"])]
    pub kind: Option<String>,
    /// Only dead letters that failed since this time: RFC 3339, or an age such as 30m, 12h, 7d.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Args)]
pub struct RetriesArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Show at most this many, the soonest due first.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DlqSelection {
    /// Dead-letter ids.
    #[arg(required_unless_present = "all")]
    pub ids: Vec<String>,
    /// Every dead letter that matches --topic, --tenant-id, --kind and --since.
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    #[command(flatten)]
    pub filter: DlqFilter,
}

/// A point in time: RFC 3339, or an age (`90s`, `30m`, `12h`, `7d`) before now.
pub fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(stamp) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(stamp.with_timezone(&chrono::Utc));
    }
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: i64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a time (2025-04-02T18:48:07Z) or an age (30m, 12h, 7d)"))?;
    let age = match unit {
        "s" => chrono::Duration::seconds(number),
        "m" => chrono::Duration::minutes(number),
        "h" => chrono::Duration::hours(number),
        "d" => chrono::Duration::days(number),
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    Ok(chrono::Utc::now() - age)
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Postgres connection URL. TLS as in libpq: sslmode=disable|prefer|require|verify-ca|verify-full
    /// and sslrootcert, sslcert, sslkey in the URL (or PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "DATABASE_URL")]
    pub database_url: DatabaseUrl,
    /// DATABASE_URL reaches Postgres through a pooler in transaction mode (PgBouncer
    /// pool_mode=transaction, Supabase's port 6543, Neon's -pooler hosts): no statement stays
    /// prepared between transactions. `fleet migrate` needs a direct or session-mode URL.
    #[arg(long = "pg-transaction-pooling", env = "FLEET_PG_TRANSACTION_POOLING", value_parser = boolean(),
          value_name = "FLEET_PG_TRANSACTION_POOLING")]
    pub transaction_pooling: bool,
}

impl DatabaseArgs {
    /// How the connections reach Postgres.
    pub fn pooling(&self) -> crate::db::Pooling {
        if self.transaction_pooling {
            crate::db::Pooling::Transaction
        } else {
            crate::db::Pooling::Session
        }
    }

    /// The connect options of DATABASE_URL (already checked when parsed).
    pub fn options(&self) -> Result<sqlx::postgres::PgConnectOptions, ConfigError> {
        crate::db::options(self.database_url.as_str(), self.pooling()).map_err(|_| ConfigError::DatabaseUrl)
    }
}

/// What every boolean setting accepts, in any case: `1/0`, `true/false`,
/// `yes/no`, `on/off` (also `y/n`, `t/f`).
fn boolean() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

#[derive(Debug, Args)]
pub struct RedisArgs {
    /// Redis connection URL (rediss:// for TLS); several comma-separated URLs name the nodes of a
    /// Redis Cluster.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, value_name = "REDIS_URL")]
    pub redis_url: RedisUrls,
    /// Redis is a Redis Cluster (implied by several URLs in REDIS_URL).
    #[arg(long = "redis-cluster", env = "FLEET_REDIS_CLUSTER", value_parser = boolean(), value_name = "FLEET_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    #[command(flatten)]
    pub tls: RedisTlsArgs,
    #[command(flatten)]
    pub key_prefix: KeyPrefixArg,
}

impl RedisArgs {
    /// The Redis to connect to: one server or a cluster, with its TLS
    /// settings; refused when they cannot go together.
    pub fn target(&self) -> Result<crate::redis::RedisTarget, ConfigError> {
        self.tls.apply(crate::redis::RedisTarget::from_urls(self.redis_url.iter(), self.redis_cluster))
    }
}

/// How a `rediss://` connection trusts the Redis server (see
/// `docs/operations.md#managed-services`).
#[derive(Debug, Clone, Args)]
pub struct RedisTlsArgs {
    /// PEM file of the CA certificate(s) that sign the Redis server's certificate, instead of the
    /// system's roots (a managed service's private CA).
    #[arg(long = "redis-tls-ca-file", env = "FLEET_REDIS_TLS_CA_FILE", value_name = "FLEET_REDIS_TLS_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM file of the client certificate for mutual TLS (with FLEET_REDIS_TLS_KEY_FILE).
    #[arg(long = "redis-tls-cert-file", env = "FLEET_REDIS_TLS_CERT_FILE", value_name = "FLEET_REDIS_TLS_CERT_FILE")]
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM file of the client certificate's private key (with FLEET_REDIS_TLS_CERT_FILE).
    #[arg(long = "redis-tls-key-file", env = "FLEET_REDIS_TLS_KEY_FILE", value_name = "FLEET_REDIS_TLS_KEY_FILE")]
    pub key_file: Option<std::path::PathBuf>,
    /// INSECURE: accept any certificate from the Redis server, so anyone on the path can read and
    /// change what Fleet sends. Logged at warn level on every start. For a test set-up only.
    #[arg(long = "redis-tls-insecure-skip-verify", env = "FLEET_REDIS_TLS_INSECURE_SKIP_VERIFY",
          value_parser = boolean(), value_name = "FLEET_REDIS_TLS_INSECURE_SKIP_VERIFY")]
    pub insecure_skip_verify: bool,
}

impl RedisTlsArgs {
    /// `target` with these settings; refused when they are given for a
    /// `redis://` URL (they would be ignored) or a certificate lacks its key.
    pub fn apply(&self, target: crate::redis::RedisTarget) -> Result<crate::redis::RedisTarget, ConfigError> {
        let tls = crate::redis::RedisTls {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            insecure_skip_verify: self.insecure_skip_verify,
        };
        if tls.is_set() && !target.uses_tls() {
            return Err(ConfigError::RedisTlsWithoutRediss);
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(ConfigError::RedisClientCertificateHalf);
        }
        if tls.insecure_skip_verify {
            tracing::warn!(
                "FLEET_REDIS_TLS_INSECURE_SKIP_VERIFY is on: the Redis server's certificate is not checked, so \
                 anyone on the network path can read and change what Fleet sends. Turn it off and give the \
                 server's CA in FLEET_REDIS_TLS_CA_FILE"
            );
        }
        Ok(target.with_tls(tls))
    }
}

#[derive(Debug, Clone, Copy, Args)]
pub struct StreamShardsArg {
    /// How many streams the events are spread over (1 to 256). Give every intake and worker of a
    /// fleet the same count; a change is safe on a running fleet (docs/scaling.md).
    #[arg(
        long = "stream-shards",
        env = "FLEET_STREAM_SHARDS",
        default_value = "1",
        value_name = "FLEET_STREAM_SHARDS"
    )]
    pub stream_shards: crate::redis::shards::ShardCount,
}

#[derive(Debug, Args)]
pub struct KeyPrefixArg {
    /// Prefix of every Redis key and stream the fleet owns.
    #[arg(long = "key-prefix", env = "FLEET_KEY_PREFIX", default_value = "fleet:", value_name = "FLEET_KEY_PREFIX")]
    pub key_prefix: KeyPrefix,
}

#[derive(Debug, Args)]
pub struct IntakeArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub shards: StreamShardsArg,
    #[command(flatten)]
    pub secrets: SecretsArg,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub tuning: IntakeTuning,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub metrics: MetricsListenArg,
}

/// The intake's signing keys; at least one of the two settings must be given.
#[derive(Debug, Args)]
pub struct SecretsArg {
    /// Thinkific webhook signing key(s) valid for any school: a body signed with one must name its
    /// `tenant_id`. Several comma-separated keys are all accepted (rotation).
    #[arg(
        long = "webhook-secret",
        env = "THINKIFIC_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "THINKIFIC_WEBHOOK_SECRET",
        value_parser = SecretValueParser::<WebhookSecrets>::new()
    )]
    pub webhook_secrets: Option<WebhookSecrets>,
    /// Signing keys bound to one school each, as comma-separated `school=key` pairs: a body signed
    /// with one belongs to that school. A school may have several keys (rotation).
    #[arg(
        long = "school-keys",
        env = "THINKIFIC_SCHOOL_KEYS",
        hide_env_values = true,
        value_name = "THINKIFIC_SCHOOL_KEYS",
        value_parser = SecretValueParser::<SchoolKeys>::new()
    )]
    pub school_keys: Option<SchoolKeys>,
}

impl SecretsArg {
    /// Every configured key with its scope; refused when none is set.
    pub fn webhook_keys(&self) -> Result<WebhookKeys, ConfigError> {
        Ok(WebhookKeys::new(self.webhook_secrets.clone(), self.school_keys.clone())?)
    }
}

#[derive(Debug, Clone, Args)]
pub struct IntakeTuning {
    /// Largest accepted webhook body, in bytes; larger bodies get 413.
    #[arg(long, env = "FLEET_MAX_BODY_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=64 * 1024 * 1024), value_name = "FLEET_MAX_BODY_BYTES")]
    pub max_body_bytes: u32,
    /// How long an accepted event id is remembered, at least, to answer its redeliveries as duplicates, in seconds
    /// (up to a quarter longer).
    #[arg(long, env = "FLEET_DEDUP_WINDOW_SECS", default_value_t = 72 * 3600,
          value_parser = clap::value_parser!(u64).range(60..=90 * 24 * 3600), value_name = "FLEET_DEDUP_WINDOW_SECS")]
    pub dedup_window_secs: u64,
    /// Webhooks per second the deduplication window is laid out for: up to about this rate each of its
    /// sets stays a compact intset; above it they take more memory, never give a wrong answer.
    #[arg(long, env = "FLEET_DEDUP_EXPECTED_RATE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "FLEET_DEDUP_EXPECTED_RATE")]
    pub dedup_expected_rate: u32,
    /// Requests with a missing or wrong signature (401) one client address may make in a minute;
    /// past it, its requests get 429 before any key is tried. 0: no limit. Behind a reverse proxy,
    /// name it in FLEET_TRUSTED_PROXIES, or its own address is what is counted.
    #[arg(
        long,
        env = "FLEET_INTAKE_REFUSALS_PER_MINUTE",
        default_value_t = 120,
        value_name = "FLEET_INTAKE_REFUSALS_PER_MINUTE"
    )]
    pub refusals_per_minute: u32,
    /// Reverse proxies (IP addresses, comma-separated) whose X-Forwarded-For names the client the
    /// refusal limit counts; from any other peer the header is ignored.
    #[arg(
        long = "intake-trusted-proxies",
        env = "FLEET_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "FLEET_TRUSTED_PROXIES"
    )]
    pub intake_trusted_proxies: Vec<IpAddr>,
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

impl IntakeTuning {
    /// The intake's settings, signing with `keys`, spreading events over
    /// `shards` and served with `http`'s limits.
    pub fn settings(
        &self,
        keys: WebhookKeys,
        shards: crate::redis::shards::ShardCount,
        http: HttpSettings,
    ) -> crate::intake::Settings {
        crate::intake::Settings {
            keys,
            shards,
            max_body_bytes: self.max_body_bytes as usize,
            dedup: DedupWindow::new(Duration::from_secs(self.dedup_window_secs), self.dedup_expected_rate),
            http,
            refusals_per_minute: self.refusals_per_minute,
            trusted_proxies: self.intake_trusted_proxies.clone(),
            metrics_listen: None,
        }
    }
}

impl ListenArgs {
    /// The address to bind: `FLEET_LISTEN`, else `0.0.0.0:$PORT`, else
    /// `127.0.0.1:8080`. Setting both is refused as ambiguous.
    pub fn address(&self) -> Result<SocketAddr, ConfigError> {
        match (self.listen, self.port) {
            (Some(_), Some(_)) => Err(ConfigError::ListenAndPort),
            (Some(listen), None) => Ok(listen),
            (None, Some(port)) => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)),
            (None, None) => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080)),
        }
    }
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub shards: StreamShardsArg,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub tuning: WorkerTuning,
    /// Limits of the health listener (FLEET_HEALTH_LISTEN).
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub schedule: crate::scheduled::ScheduleSettings,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerTuning {
    /// This worker's consumer name in the group. Default: host name and process id.
    #[arg(long, env = "FLEET_CONSUMER_NAME", value_name = "FLEET_CONSUMER_NAME")]
    pub consumer_name: Option<String>,
    /// Most stream entries read and applied in one batch (one transaction).
    #[arg(long, env = "FLEET_BATCH_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000), value_name = "FLEET_BATCH_SIZE")]
    pub batch_size: u32,
    /// How long one read waits for new entries, in milliseconds; also the
    /// longest a shutdown waits for the read in flight.
    #[arg(long, env = "FLEET_BLOCK_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(10..=60_000), value_name = "FLEET_BLOCK_MS")]
    pub block_ms: u64,
    /// Entries the events stream keeps once acknowledged; unacknowledged entries are never trimmed.
    #[arg(long, env = "FLEET_STREAM_MAXLEN", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..), value_name = "FLEET_STREAM_MAXLEN")]
    pub stream_max_len: u64,
    /// How long an entry may sit unacknowledged with a consumer before another worker takes it
    /// over (XAUTOCLAIM), in milliseconds. Keep it above the longest batch time.
    #[arg(long, env = "FLEET_CLAIM_IDLE_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(100..=86_400_000), value_name = "FLEET_CLAIM_IDLE_MS")]
    pub claim_idle_ms: u64,
    /// How long a worker's claim on its consumer name outlives its last heartbeat, in
    /// milliseconds; a second live worker with the same name is refused.
    #[arg(long, env = "FLEET_CONSUMER_LEASE_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(300..=600_000), value_name = "FLEET_CONSUMER_LEASE_MS")]
    pub lease_ms: u64,
    /// Serve the worker's /healthz, /readyz and /metrics on this address (off when unset).
    #[arg(long, env = "FLEET_HEALTH_LISTEN", value_name = "FLEET_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub retry: RetryTuning,
    #[command(flatten)]
    pub cache: CacheTuning,
    #[command(flatten)]
    pub revalidate: RevalidateArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RetryTuning {
    /// Delay before the first retry of an event that failed, in milliseconds.
    #[arg(long, env = "FLEET_RETRY_BASE_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000), value_name = "FLEET_RETRY_BASE_MS")]
    pub retry_base_ms: u64,
    /// Each retry waits this many times longer than the one before.
    #[arg(long, env = "FLEET_RETRY_FACTOR", default_value_t = 2.0, value_parser = parse_factor,
          value_name = "FLEET_RETRY_FACTOR")]
    pub retry_factor: f32,
    /// Longest delay between two retries, in milliseconds.
    #[arg(long, env = "FLEET_RETRY_CAP_MS", default_value_t = 600_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000), value_name = "FLEET_RETRY_CAP_MS")]
    pub retry_cap_ms: u64,
    /// Attempts (including crashes of the worker holding the event) before an event is dead-lettered.
    #[arg(long, env = "FLEET_MAX_ATTEMPTS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000), value_name = "FLEET_MAX_ATTEMPTS")]
    pub max_attempts: u32,
}

fn parse_factor(text: &str) -> Result<f32, String> {
    let factor: f32 = text.parse().map_err(|_| format!("`{text}` is not a number"))?;
    if !(1.0..=10.0).contains(&factor) {
        return Err("must be between 1 and 10".into());
    }
    Ok(factor)
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Use this Redis instead of starting a throwaway one.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, value_name = "REDIS_URL")]
    pub redis_url: Option<RedisUrl>,
    #[command(flatten)]
    pub redis_tls: RedisTlsArgs,
    /// Use this Postgres instead of starting a throwaway one.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "DATABASE_URL")]
    pub database_url: Option<DatabaseUrl>,
    /// Webhook signing key(s); default: a fixed development key, printed at start.
    #[arg(
        long = "webhook-secret",
        env = "THINKIFIC_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "THINKIFIC_WEBHOOK_SECRET",
        value_parser = SecretValueParser::<WebhookSecrets>::new()
    )]
    pub secrets: Option<WebhookSecrets>,
    /// Where the throwaway servers keep their data.
    #[arg(long, env = "FLEET_DEV_DIR", default_value = ".fleet/dev", value_name = "FLEET_DEV_DIR")]
    pub data_dir: std::path::PathBuf,
    #[command(flatten)]
    pub key_prefix: KeyPrefixArg,
    #[command(flatten)]
    pub shards: StreamShardsArg,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub intake: IntakeTuning,
    #[command(flatten)]
    pub worker: WorkerTuning,
    #[command(flatten)]
    pub schedule: crate::scheduled::ScheduleSettings,
    #[command(flatten)]
    pub api: ApiTuning,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Configuration errors found after parsing.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("set either FLEET_LISTEN (--listen) or PORT (--port), not both")]
    ListenAndPort,
    #[error("FLEET_CONSUMER_NAME must be 1 to 200 characters without spaces")]
    ConsumerName,
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(
        "THINKIFIC_WEBHOOK_SECRET or THINKIFIC_SCHOOL_KEYS holds the well-known development key of `fleet dev`, \
         with which anyone can sign; set the real signing key of your Thinkific webhooks (the school's API key \
         or the app's client secret)"
    )]
    DevelopmentWebhookKey,
    #[error(
        "the read API serves learners' names and emails and will not run open: set FLEET_API_TOKEN \
         (a bearer token that reads every school) or FLEET_API_TOKENS (school=token pairs, comma-separated)"
    )]
    ApiWithoutToken,
    #[error(
        "FLEET_REDIS_TLS_* is set but REDIS_URL is not rediss://: use rediss:// for TLS, or unset the \
         FLEET_REDIS_TLS_* settings"
    )]
    RedisTlsWithoutRediss,
    #[error("FLEET_REDIS_TLS_CERT_FILE and FLEET_REDIS_TLS_KEY_FILE go together: set both, or neither")]
    RedisClientCertificateHalf,
    #[error(
        "`fleet dev` would listen on {0}, which other machines can reach, with its open defaults: set \
         FLEET_API_TOKEN (or FLEET_API_TOKENS) and THINKIFIC_WEBHOOK_SECRET to your own key, or listen on \
         loopback (FLEET_LISTEN=127.0.0.1:8080, and no PORT)"
    )]
    DevOffLoopback(SocketAddr),
    #[error("DATABASE_URL cannot be used: check its port and query options (sslmode, sslrootcert, options…)")]
    DatabaseUrl,
    #[error(
        "`fleet migrate` takes a session-level lock, which a pooler in transaction mode cannot keep: run it \
         with a DATABASE_URL that reaches Postgres directly or through a session-mode pooler, without \
         FLEET_PG_TRANSACTION_POOLING"
    )]
    MigrateThroughTransactionPooler,
    /// A dependency refused the configuration at start-up (decision 0020).
    #[error(transparent)]
    Misconfigured(#[from] crate::misconfiguration::Misconfiguration),
}

/// The exit code of a command that failed with `err` (see [`crate::exit`]).
pub fn exit_code(err: &anyhow::Error) -> u8 {
    use crate::worker::WorkerError;
    if let Some(exit) = err.downcast_ref::<crate::exit::Exit>() {
        return exit.code;
    }
    if err.downcast_ref::<ConfigError>().is_some() {
        return crate::exit::USAGE;
    }
    if err.downcast_ref::<crate::db::SchemaBehind>().is_some() {
        return crate::exit::SCHEMA_BEHIND;
    }
    match err.downcast_ref::<WorkerError>() {
        Some(WorkerError::ConsumerNameInUse(_) | WorkerError::ConsumerNameLost(_)) => crate::exit::CONSUMER_NAME_HELD,
        _ => crate::exit::FAILURE,
    }
}

impl WorkerTuning {
    /// The worker's settings, consuming at least `shards`; refused when the
    /// consumer name is not usable.
    pub fn settings(&self, shards: crate::redis::shards::ShardCount) -> Result<crate::worker::Settings, ConfigError> {
        let tuning = self;
        let consumer_name = match &tuning.consumer_name {
            Some(name) => {
                if name.is_empty() || name.len() > 200 || name.chars().any(char::is_whitespace) {
                    return Err(ConfigError::ConsumerName);
                }
                name.clone()
            }
            None => crate::runtime::instance_name(),
        };
        Ok(crate::worker::Settings {
            consumer_name,
            shards,
            batch_size: tuning.batch_size as usize,
            block: Duration::from_millis(tuning.block_ms),
            stream_max_len: tuning.stream_max_len,
            claim_idle: Duration::from_millis(tuning.claim_idle_ms),
            lease: Duration::from_millis(tuning.lease_ms),
            retry: crate::worker::RetryPolicy {
                base: Duration::from_millis(tuning.retry.retry_base_ms),
                factor: tuning.retry.retry_factor,
                cap: Duration::from_millis(tuning.retry.retry_cap_ms),
                max_attempts: tuning.retry.max_attempts,
            },
            cache_ttls: tuning.cache.ttls(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// Every setting read from the environment whose value is a boolean,
    /// in every command: each takes 1/0, true/false, yes/no, on/off in any
    /// case, and refuses anything else.
    #[test]
    fn every_boolean_setting_takes_every_spelling() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let mut commands = vec![&cli];
        let mut checked = std::collections::BTreeSet::new();
        while let Some(command) = commands.pop() {
            commands.extend(command.get_subcommands());
            for arg in command.get_arguments() {
                let (Some(env), false) = (arg.get_env(), arg.get_action().takes_values()) else { continue };
                if !matches!(arg.get_action(), clap::ArgAction::SetTrue | clap::ArgAction::SetFalse) {
                    continue;
                }
                let env = env.to_string_lossy().into_owned();
                // The same argument, read from a variable of this test's own
                // (the real one would be seen by tests running beside it).
                let probe_env: &'static str = format!("FLEET_BOOLEAN_PROBE_{env}").leak();
                let parse = |text: &str| {
                    // clap reads the variable when the argument is built.
                    std::env::set_var(probe_env, text);
                    let probe = clap::Command::new("probe").arg(arg.clone().env(probe_env));
                    let matches = probe.try_get_matches_from(["probe"]).ok()?;
                    matches.get_one::<bool>(arg.get_id().as_str()).copied()
                };
                for (spelling, expected) in [
                    ("1", true),
                    ("0", false),
                    ("true", true),
                    ("false", false),
                    ("yes", true),
                    ("no", false),
                    ("on", true),
                    ("off", false),
                ] {
                    for text in [spelling.to_owned(), spelling.to_uppercase(), capitalized(spelling)] {
                        assert_eq!(parse(&text), Some(expected), "{} {env}={text}", command.get_name());
                    }
                }
                for refused in ["2", "maybe", "", "enabled"] {
                    assert_eq!(parse(refused), None, "{} {env}={refused} is refused", command.get_name());
                }
                checked.insert(env);
            }
        }
        let expected = ["FLEET_PG_TRANSACTION_POOLING", "FLEET_REDIS_CLUSTER", "FLEET_REDIS_TLS_INSECURE_SKIP_VERIFY"];
        assert_eq!(checked.into_iter().collect::<Vec<_>>(), expected, "the boolean settings, all walked");
    }

    fn capitalized(text: &str) -> String {
        let mut chars = text.chars();
        chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
    }

    #[test]
    fn listen_address_resolution() {
        let listen =
            |listen: Option<&str>, port| ListenArgs { listen: listen.map(|l| l.parse().expect("address")), port };
        assert_eq!(listen(None, None).address().ok(), "127.0.0.1:8080".parse().ok());
        assert_eq!(listen(None, Some(5000)).address().ok(), "0.0.0.0:5000".parse().ok());
        assert_eq!(listen(Some("10.0.0.1:1"), None).address().ok(), "10.0.0.1:1".parse().ok());
        assert!(listen(Some("10.0.0.1:1"), Some(2)).address().is_err());
    }

    #[test]
    fn every_server_takes_the_http_limits_with_defaults_and_ranges() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        let http = |command: Command| match command {
            Command::Intake(args) => args.http.settings(),
            Command::Api(args) => args.http.settings(),
            Command::Worker(args) => args.http.settings(),
            Command::Dev(args) => args.http.settings(),
            _ => unreachable!("a serving command"),
        };
        let redis = ["--redis-url", "redis://localhost"];
        let database = ["--database-url", "postgres://localhost/fleet"];
        let commands: [Vec<&str>; 4] = [
            [&["fleet", "intake", "--webhook-secret", "k"][..], &redis].concat(),
            [&["fleet", "api"][..], &redis, &database].concat(),
            [&["fleet", "worker"][..], &redis, &database].concat(),
            vec!["fleet", "dev"],
        ];
        for command in commands {
            let defaults = parse(&command).unwrap_or_else(|err| panic!("{command:?}: {err}")).command;
            assert_eq!(http(defaults), HttpSettings::default(), "{command:?}");
            let custom = [
                &command[..],
                &[
                    "--http-header-timeout-ms",
                    "300",
                    "--http-request-timeout-ms",
                    "1000",
                    "--http-max-connections",
                    "10",
                ],
            ]
            .concat();
            let custom = parse(&custom).unwrap_or_else(|err| panic!("{command:?}: {err}")).command;
            let expected = HttpSettings {
                header_timeout: Duration::from_millis(300),
                request_timeout: Duration::from_millis(1000),
                max_connections: 10,
            };
            assert_eq!(http(custom), expected, "{command:?}");
            for refused in [
                ["--http-header-timeout-ms", "99"],
                ["--http-request-timeout-ms", "600001"],
                ["--http-max-connections", "0"],
            ] {
                assert!(parse(&[&command[..], &refused].concat()).is_err(), "{command:?} {refused:?}");
            }
        }
    }
}
