//! `fleet loadtest`: its arguments and their conversion to
//! [`crate::loadtest::Settings`].

use std::time::Duration;

use clap::Args;

use super::connections::DatabaseArgs;
use super::intake::WebhookSecretArg;
use crate::secrets::WebhookSecrets;
use crate::urls::HttpUrl;

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
    #[command(flatten)]
    pub webhook_secret: WebhookSecretArg,
    /// The school (tenant_id) every event belongs to.
    #[arg(long, env = "FLEET_LOADTEST_TENANT", default_value = "loadtest", value_name = "TENANT")]
    pub tenant: fleet_jobs::TenantId,
    /// The /metrics of each worker (FLEET_HEALTH_LISTEN), or of `fleet dev`; comma-separated.
    /// Gives events applied, drain time and freshness.
    #[arg(long = "metrics-url", env = "FLEET_LOADTEST_METRICS_URL", value_delimiter = ',', value_name = "URL")]
    pub metrics_urls: Vec<HttpUrl>,
    /// With DATABASE_URL: count the run's rows in Postgres' `events` table (events applied and
    /// drain time, without metrics).
    #[command(flatten)]
    pub database: DatabaseArgs,
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
            secrets: self.webhook_secret.webhook_secrets.unwrap_or(default_secret),
            metrics_urls: self.metrics_urls,
            database_url: self.database.database_url,
            drain_timeout: Duration::from_secs(self.drain_timeout),
            watch_pids: self.watch_pids,
            allow_remote: self.allow_remote,
            output: crate::operator::output::Output::new(self.json),
        }
    }
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
