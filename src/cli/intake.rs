//! `fleet intake`: its arguments and their conversion to
//! [`crate::intake::Settings`]; the webhook signing key every command that
//! signs or verifies shares ([`WebhookSecretArg`]).

use std::net::IpAddr;
use std::time::Duration;

use clap::Args;

use super::connections::{RedisArgs, StreamShardsArg};
use super::serving::{HttpArgs, ListenArgs, MetricsListenArg};
use super::ConfigError;
use crate::redis::dedup::DedupWindow;
use crate::redis::shards::ShardCount;
use crate::runtime::HttpSettings;
use crate::secrets::{SchoolKeys, SecretValueParser, WebhookKeys, WebhookSecrets};

#[derive(Debug, Args)]
pub struct IntakeArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub shards: StreamShardsArg,
    #[command(flatten)]
    pub secrets: WebhookKeysArgs,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub tuning: IntakeTuning,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub metrics: MetricsListenArg,
}

/// THINKIFIC_WEBHOOK_SECRET, for the intake, `fleet dev` and `fleet loadtest`.
#[derive(Debug, Clone, Args)]
pub struct WebhookSecretArg {
    /// Thinkific webhook signing key(s) valid for any school: a body signed with one must name its
    /// `tenant_id`. Several comma-separated keys are all accepted (rotation); `fleet loadtest`
    /// signs with the first. `fleet dev` and `fleet loadtest` default to the development key
    /// `fleet dev` prints.
    #[arg(
        long = "webhook-secret",
        env = "THINKIFIC_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "THINKIFIC_WEBHOOK_SECRET",
        value_parser = SecretValueParser::<WebhookSecrets>::new()
    )]
    pub webhook_secrets: Option<WebhookSecrets>,
}

/// The intake's signing keys; at least one of the two settings must be given.
#[derive(Debug, Args)]
pub struct WebhookKeysArgs {
    #[command(flatten)]
    pub webhook_secret: WebhookSecretArg,
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

impl WebhookKeysArgs {
    /// Every configured key with its scope; refused when none is set.
    pub(crate) fn webhook_keys(&self) -> Result<WebhookKeys, ConfigError> {
        Ok(WebhookKeys::new(self.webhook_secret.webhook_secrets.clone(), self.school_keys.clone())?)
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

impl IntakeTuning {
    /// The intake's settings, signing with `keys`, spreading events over
    /// `shards` and served with `http`'s limits.
    pub fn settings(&self, keys: WebhookKeys, shards: ShardCount, http: HttpSettings) -> crate::intake::Settings {
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
