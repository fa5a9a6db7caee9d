//! `fleet dev`: everything on this machine, throwaway Redis and Postgres
//! unless given; its arguments are the other roles' (`super::intake`,
//! `super::worker`, `super::api`) in one command.

use clap::Args;

use super::api::ApiTuning;
use super::connections::{DatabaseArgs, RedisArgs, StreamShardsArg};
use super::intake::{IntakeTuning, WebhookSecretArg};
use super::serving::{HttpArgs, ListenArgs};
use super::worker::WorkerTuning;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// With REDIS_URL: this Redis instead of a throwaway one.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// With DATABASE_URL: this Postgres instead of a throwaway one.
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub webhook_secret: WebhookSecretArg,
    /// Where the throwaway servers keep their data.
    #[arg(long, env = "FLEET_DEV_DIR", default_value = ".fleet/dev", value_name = "FLEET_DEV_DIR")]
    pub data_dir: std::path::PathBuf,
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
