//! `fleet worker`: its arguments (batching, claims, leases, retries, the
//! cache TTLs it writes with, the revalidation hook) and their conversion
//! to [`crate::worker::Settings`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use super::connections::{DatabaseArgs, RedisArgs, StreamShardsArg};
use super::serving::HttpArgs;
use super::ConfigError;
use crate::redis::shards::ShardCount;
use crate::secrets::ApiToken;
use crate::urls::RevalidateUrl;

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

impl WorkerTuning {
    /// The worker's settings, consuming at least `shards`; refused when the
    /// consumer name is not usable.
    pub fn settings(&self, shards: ShardCount) -> Result<crate::worker::Settings, ConfigError> {
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
