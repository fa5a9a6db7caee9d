//! Dispatch: the one place that knows every role. Each command turns its
//! arguments into the role's validated settings, builds the role and runs
//! it until SIGTERM or Ctrl-C.
//!
//! No role exits because Redis or Postgres is down: each listens first, then
//! waits for its dependencies (see [`crate::health`]); SIGTERM during a wait
//! exits 0. Only a configuration error, an outdated schema and a consumer
//! name held by a live worker end a role (see [`super::exit_code`]). A
//! dependency that refuses the configuration in a way no wait heals (TLS
//! that cannot work) is a configuration error at start-up: each role tries
//! its dependencies once before it waits (decision 0020).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    ApiArgs, CacheCommand, Command, ConfigError, DevArgs, DlqCommand, DlqFilter, DlqSelection, IntakeArgs,
    RevalidateArgs, WorkerArgs,
};
use crate::health::Health;
use crate::local_services::{postgres_given_or_started, redis_given_or_started, write_private_file};
use crate::misconfiguration::Diagnose;
use crate::operator::dlq::{Filter, Selection};
use crate::operator::output::Output;
use crate::redis::keys::Keys;
use crate::redis::RedisTarget;
use crate::runtime::{serve, shutdown_on_signals};
use crate::scheduled::{self, ScheduleSettings};
use crate::secrets::{WebhookKeys, WebhookSecrets};
use crate::telemetry::readiness::Dependency;
use crate::urls::{DatabaseUrl, RedisUrl};
use crate::worker::health;
use crate::worker::revalidate::Revalidator;
use crate::worker::{Worker, WorkerError};
use crate::{api, db, intake, loadtest, operator, systemd};

/// The body `fleet dev` offers to send: Thinkific's documented example.
pub(crate) const EXAMPLE_WEBHOOK: &str = include_str!("../../tests/fixtures/thinkific/enrollment.created.json");
/// `fleet dev`'s default signing key. It is published, so anyone can sign
/// with it: `fleet intake` refuses it.
const DEV_SECRET: &str = "fleet-dev-secret";

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Migrate(args) => {
            if args.database.transaction_pooling {
                return Err(ConfigError::MigrateThroughTransactionPooler.into());
            }
            let url = args.database.url()?.as_str();
            let options = args.database.options()?;
            refuse_misconfigured_postgres(&options).await?;
            let pool = db::connect_lazy(options);
            if !db::wait_until_reachable(&pool, url, &Health::default(), &shutdown_on_signals()).await {
                return Ok(());
            }
            db::migrate(&pool).await.context("migration failed")?;
            tracing::info!("database is up to date");
            Ok(())
        }
        Command::Intake(args) => run_intake(args).await,
        Command::Worker(args) => run_worker(args).await,
        Command::Dev(args) => run_dev(args).await,
        Command::Api(args) => run_api(args).await,
        Command::Cache(args) => {
            let keys = Keys::new(&args.redis.key_prefix.key_prefix);
            let mut redis = connect_redis(&args.redis.target()?).await?;
            match args.command {
                CacheCommand::Stats { json, reset } => {
                    operator::cache::stats(&mut redis, &keys, Output::new(json), reset).await
                }
                CacheCommand::Clear { kind, tag, tenant_id, pattern, json } => {
                    operator::cache::clear(&mut redis, &keys, kind, tag, tenant_id, pattern, Output::new(json)).await
                }
            }
        }
        Command::Status(args) => {
            let keys = Keys::new(&args.redis.key_prefix.key_prefix);
            let mut redis = connect_redis(&args.redis.target()?).await?;
            operator::status::show(&mut redis, &keys, Output::new(args.json)).await
        }
        Command::Retries(args) => {
            let keys = Keys::new(&args.redis.key_prefix.key_prefix);
            let mut redis = connect_redis(&args.redis.target()?).await?;
            operator::retries::list(&mut redis, &keys, args.limit, Output::new(args.json)).await
        }
        Command::Loadtest(args) => {
            let development_key = DEV_SECRET.parse::<WebhookSecrets>().map_err(anyhow::Error::msg)?;
            loadtest::run(args.settings(development_key)).await
        }
        Command::Dlq(args) => {
            let keys = Keys::new(&args.redis.key_prefix.key_prefix);
            let mut redis = connect_redis(&args.redis.target()?).await?;
            let redis = &mut redis;
            let keys = &keys;
            match args.command {
                DlqCommand::List { filter, limit, json } => {
                    operator::dlq::list(redis, keys, &filter.into(), limit, Output::new(json)).await
                }
                DlqCommand::Show { id, json } => operator::dlq::show(redis, keys, id, Output::new(json)).await,
                DlqCommand::Replay { selection, dry_run, verbose, json } => {
                    let output = Output::new(json);
                    operator::dlq::replay(redis, keys, &selection.into(), dry_run, verbose, output).await
                }
                DlqCommand::Purge { selection, yes, json } => {
                    operator::dlq::purge(redis, keys, &selection.into(), yes, Output::new(json)).await
                }
            }
        }
    }
}

async fn connect_postgres(url: &str) -> anyhow::Result<PgPool> {
    match db::connect(url).await {
        Ok(pool) => Ok(pool),
        Err(err) => match err.misconfiguration() {
            Some(problem) => Err(ConfigError::Misconfigured(problem).into()),
            // The cause once (its text already holds its sources), and where.
            None => Err(anyhow::anyhow!(
                "cannot connect to Postgres at {}: {err}; check DATABASE_URL and that the server is up",
                crate::urls::shown_address(url)
            )),
        },
    }
}

/// Ends the start (exit 2) when Postgres refuses `options` in a way no wait
/// heals ([`Misconfiguration::ends_start_up`]); anything else, an outage
/// included, is left to the role's wait, which logs and reports it.
async fn refuse_misconfigured_postgres(options: &PgConnectOptions) -> Result<(), ConfigError> {
    let problem = db::first_attempt_error(options, START_ATTEMPT).await.and_then(|err| err.misconfiguration());
    match problem {
        Some(problem) if problem.ends_start_up() => Err(problem.into()),
        _ => Ok(()),
    }
}

/// Like [`refuse_misconfigured_postgres`], for Redis.
async fn refuse_misconfigured_redis(target: &RedisTarget) -> Result<(), ConfigError> {
    let attempt = tokio::time::timeout(START_ATTEMPT, crate::redis::connect(target, Duration::from_secs(2))).await;
    match attempt {
        Ok(Err(err)) => match err.misconfiguration() {
            Some(problem) if problem.ends_start_up() => Err(problem.into()),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// How long a role's first look at a dependency may take before the role
/// goes on to wait for it.
const START_ATTEMPT: Duration = Duration::from_secs(3);

/// Refuses to run against a schema older than this binary (exit 4), waiting
/// for Postgres first; false if stopped meanwhile.
async fn check_schema(pool: &PgPool, url: &str, health: &Health, stop: &CancellationToken) -> anyhow::Result<bool> {
    Ok(db::check_schema(pool, url, health, stop).await?)
}

/// An operator command's connection: a misconfiguration is a configuration
/// error (exit 2), anything else a failure (exit 1).
async fn connect_redis(target: &RedisTarget) -> anyhow::Result<crate::redis::RedisConnection> {
    match crate::redis::connect(target, Duration::from_secs(2)).await {
        Ok(redis) => Ok(redis),
        Err(err) => {
            match err.misconfiguration() {
                Some(problem) => Err(ConfigError::Misconfigured(problem).into()),
                // The cause once (its text already holds its sources), and where.
                None => Err(anyhow::anyhow!(
                    "cannot connect to Redis at {}: {err}; check REDIS_URL and that the server is up",
                    target.shown_address()
                )),
            }
        }
    }
}

async fn run_intake(args: IntakeArgs) -> anyhow::Result<()> {
    let address = args.listen.address()?;
    let webhook_keys = args.secrets.webhook_keys()?;
    if webhook_keys.contains(DEV_SECRET.as_bytes()) {
        return Err(ConfigError::DevelopmentWebhookKey.into());
    }
    let settings = crate::intake::Settings {
        metrics_listen: args.metrics.metrics_listen,
        ..args.tuning.settings(webhook_keys, args.shards.stream_shards, args.http.settings())
    };
    let keys = Keys::new(&args.redis.key_prefix.key_prefix);
    let redis = args.redis.target()?;
    refuse_misconfigured_redis(&redis).await?;
    let intake = intake::Application::build(address, &redis, keys.clone(), settings).await?;
    let shutdown = shutdown_on_signals();
    report_dependencies("intake", crate::runtime::instance_name(), intake.health(), &redis, &keys, &shutdown);
    // Serving from here on (webhooks get 503 until Redis answers).
    systemd::notify_ready();
    intake.run_until_stopped(shutdown).await?;
    tracing::info!("intake stopped");
    Ok(())
}

async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let settings = args.tuning.settings(args.shards.stream_shards)?;
    let schedule = args.schedule.clone().with_worker(&settings);
    let database_url = args.database.url()?.as_str();
    let redis = args.redis.target()?;
    let options = args.database.options()?;
    refuse_misconfigured_postgres(&options).await?;
    refuse_misconfigured_redis(&redis).await?;
    let pool = db::connect_lazy(options);
    let shutdown = shutdown_on_signals();
    // Listening first, so /readyz tells what the worker waits for.
    let health = Health::requiring(&[Dependency::Postgres, Dependency::Redis]);
    if let Some(address) = args.tuning.health_listen {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (FLEET_HEALTH_LISTEN)"))?;
        tracing::info!(%address, "worker health on /healthz and /readyz");
        tokio::spawn(serve(listener, health::router(health.clone()), args.http.settings(), shutdown.clone()));
    }
    if !check_schema(&pool, database_url, &health, &shutdown).await? {
        return Ok(());
    }
    let keys = Keys::new(&args.redis.key_prefix.key_prefix);
    let worker = match Worker::connect_waiting(pool.clone(), &redis, keys.clone(), settings, health, &shutdown).await {
        Err(WorkerError::Stopped) => return Ok(()),
        connected => connected?,
    };
    let worker = with_revalidation(worker, &args.tuning.revalidate, &redis, &keys, &shutdown).await?;
    let Some(jobs) = spawn_scheduled(schedule, pool, &redis, &keys, &worker.health(), &shutdown).await else {
        return Ok(());
    };
    let consumer = worker.consumer_name().to_owned();
    report_dependencies("worker", consumer, worker.health(), &redis, &keys, &shutdown);
    // Holding its consumer name and about to consume: ready, and from now
    // on systemd's watchdog is fed only while the loop advances.
    tokio::spawn(systemd::run_watchdog(worker.progress(), shutdown.clone()));
    systemd::notify_ready();
    let worker_result = worker.run(shutdown.clone()).await;
    // A worker that stopped with an error takes the jobs down with it.
    shutdown.cancel();
    stop_scheduled(jobs).await;
    worker_result?;
    Ok(())
}

/// Reports this process's dependencies to the fleet (`crate::redis::roles`,
/// the console's overview) until `shutdown`.
fn report_dependencies(
    role: &'static str,
    instance: String,
    health: Health,
    redis: &RedisTarget,
    keys: &Keys,
    shutdown: &CancellationToken,
) {
    let reporter =
        crate::redis::roles::report_until(role, instance, health, redis.clone(), keys.clone(), shutdown.clone());
    tokio::spawn(reporter);
}

/// Runs the scheduled jobs beside the worker loop, on a Redis connection of
/// their own (waited for like the worker's), until `shutdown` fires; `None`
/// when stopped before Redis answered.
async fn spawn_scheduled(
    schedule: ScheduleSettings,
    pool: PgPool,
    redis: &RedisTarget,
    keys: &Keys,
    health: &Health,
    shutdown: &CancellationToken,
) -> Option<JoinHandle<()>> {
    let redis = crate::redis::connect_waiting(redis, Duration::from_secs(2), health, shutdown).await?;
    Some(tokio::spawn(scheduled::run(schedule, pool, redis, keys.clone(), shutdown.clone())))
}

async fn stop_scheduled(jobs: JoinHandle<()>) {
    if let Err(err) = jobs.await {
        tracing::error!(error = %err, "the scheduled jobs ended abnormally");
    }
}

/// Attaches the revalidation hook when `REVALIDATE_URL` is set.
async fn with_revalidation(
    worker: Worker,
    args: &RevalidateArgs,
    redis: &RedisTarget,
    keys: &Keys,
    stop: &CancellationToken,
) -> anyhow::Result<Worker> {
    let Some(url) = args.revalidate_url.clone() else {
        return Ok(worker);
    };
    let Some(redis) = crate::redis::connect_waiting(redis, Duration::from_secs(2), &worker.health(), stop).await else {
        // Stopping: the worker stops at once too.
        return Ok(worker);
    };
    tracing::info!(hook = %url, "revalidation hook on");
    Ok(worker.with_revalidator(Revalidator::spawn(url, args.revalidate_secret.clone(), redis, keys.clone())))
}

async fn run_api(args: ApiArgs) -> anyhow::Result<()> {
    let settings =
        crate::api::Settings { metrics_listen: args.metrics.metrics_listen, ..args.api.settings(args.http.settings()) };
    if !settings.has_tokens() {
        return Err(ConfigError::ApiWithoutToken.into());
    }
    let address = args.address()?;
    let database_url = args.database.url()?.as_str();
    let redis = args.redis.target()?;
    let options = args.database.options()?;
    refuse_misconfigured_postgres(&options).await?;
    refuse_misconfigured_redis(&redis).await?;
    let pool = db::connect_lazy(options);
    let keys = Keys::new(&args.redis.key_prefix.key_prefix);
    let api = api::Application::build(address, pool.clone(), &redis, keys.clone(), args.cache.ttls(), settings).await?;
    let health = api.state().health();
    let shutdown = shutdown_on_signals();
    report_dependencies("api", crate::runtime::instance_name(), health.clone(), &redis, &keys, &shutdown);
    // Serving first, so /readyz tells what the API waits for.
    let server = tokio::spawn(api.run_until_stopped(shutdown.clone()));
    systemd::notify_ready();
    if let Err(outdated) = check_schema(&pool, database_url, &health, &shutdown).await {
        shutdown.cancel();
        let _ = server.await;
        return Err(outdated);
    }
    server.await.context("read API task failed")??;
    tracing::info!("read API stopped");
    Ok(())
}

async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    // Off loopback, others reach it: it serves learners' data and takes
    // webhooks, so the open development defaults are refused there.
    let address = args.listen.address()?;
    if !address.ip().is_loopback() {
        let own_key = args
            .webhook_secret
            .webhook_secrets
            .as_ref()
            .is_some_and(|secrets| secrets.keys().all(|key| key != DEV_SECRET.as_bytes()));
        if !args.api.settings(args.http.settings()).has_tokens() || !own_key {
            return Err(ConfigError::DevOffLoopback(address).into());
        }
    }
    let data_dir = std::env::current_dir()?.join(&args.data_dir);
    // Not private itself (when we are root, the PostgreSQL user passes
    // through it); everything in it is.
    std::fs::create_dir_all(&data_dir)?;
    let given_redis = match args.redis.redis_url.as_ref().map(|urls| urls.iter().collect::<Vec<_>>()) {
        Some(urls) if urls.len() > 1 || args.redis.redis_cluster => return Err(ConfigError::DevOneRedis.into()),
        urls => urls.and_then(|urls| urls.first().map(|url| (*url).to_owned())),
    };
    let (redis_url, local_redis) = redis_given_or_started(given_redis, &data_dir.join("redis"), false).await?;
    let redis_url: RedisUrl = redis_url.parse().map_err(anyhow::Error::msg)?;
    let redis = args.redis.tls.apply(RedisTarget::from_urls([redis_url.as_str()], false))?;
    let given_postgres = args.database.database_url.as_ref().map(|url| url.as_str().to_owned());
    let (database_url, local_postgres) =
        postgres_given_or_started(given_postgres, "fleet", &data_dir.join("postgres"), false).await?;
    let database_url: DatabaseUrl = database_url.parse().map_err(anyhow::Error::msg)?;
    let env_file = data_dir.join("env");
    write_private_file(&env_file, dev_env(&redis_url, &database_url).as_bytes())?;
    let pool = connect_postgres(database_url.as_str()).await?;
    db::migrate(&pool).await.context("migration failed")?;

    let secrets = match args.webhook_secret.webhook_secrets.clone() {
        Some(secrets) => secrets,
        None => DEV_SECRET.parse::<WebhookSecrets>().map_err(anyhow::Error::msg)?,
    };
    let keys = Keys::new(&args.redis.key_prefix.key_prefix);
    let shutdown = shutdown_on_signals();

    let worker_settings = args.worker.settings(args.shards.stream_shards)?;
    let schedule = args.schedule.clone().with_worker(&worker_settings);
    let worker = Worker::connect(pool.clone(), &redis, keys.clone(), worker_settings).await?;
    let worker = with_revalidation(worker, &args.worker.revalidate, &redis, &keys, &shutdown).await?;
    let jobs = spawn_scheduled(schedule, pool.clone(), &redis, &keys, &worker.health(), &shutdown)
        .await
        .context("stopped before Redis answered")?;
    let worker_health = worker.health();
    let instance = crate::runtime::instance_name();
    report_dependencies("dev", instance, worker_health.clone(), &redis, &keys, &shutdown);
    let worker_task = tokio::spawn(worker.run(shutdown.clone()));

    let listener = TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
    let address = listener.local_addr()?;
    let redis_connection = connect_redis(&redis).await?;
    // One server for both: the read API's routes on the intake's address.
    let http = args.http.settings();
    let api_settings = args.api.settings(http);
    let console_token = api_settings.console_token.clone();
    let api = api::ApiState::connect(pool, &redis, keys.clone(), args.worker.cache.ttls(), api_settings);
    let intake_settings =
        args.intake.settings(WebhookKeys::new(Some(secrets.clone()), None)?, args.shards.stream_shards, http);
    // One `/readyz` for all three: the worker's, which waits on Postgres and Redis alike.
    let app = intake::webhook_router(redis_connection, keys, intake_settings)
        .merge(api::routes(api))
        .merge(health::router(worker_health));
    let intake_task = tokio::spawn(serve(listener, app, http, shutdown.clone()));

    let example = data_dir.join("enrollment.created.json");
    write_private_file(&example, EXAMPLE_WEBHOOK.trim_end().as_bytes())?;
    let urls =
        DevUrls { redis: &redis_url, database: &database_url, env_file: &env_file, console: console_token.is_some() };
    print_welcome(&address.to_string(), &urls, &secrets, args.webhook_secret.webhook_secrets.is_none(), &example);

    let intake_result = intake_task.await;
    shutdown.cancel();
    if let Ok(Err(err)) = worker_task.await {
        tracing::error!(error = %err, "worker stopped with an error");
    }
    stop_scheduled(jobs).await;
    drop(local_redis);
    drop(local_postgres);
    intake_result.context("intake task failed")??;
    Ok(())
}

/// The URLs `fleet dev` uses, and the private file that holds them whole.
struct DevUrls<'a> {
    redis: &'a RedisUrl,
    database: &'a DatabaseUrl,
    env_file: &'a Path,
    /// Whether the operator console is served.
    console: bool,
}

/// `export NAME='value'` lines a shell can source (`. .fleet/dev/env`).
fn dev_env(redis_url: &RedisUrl, database_url: &DatabaseUrl) -> String {
    let quoted = |value: &str| format!("'{}'", value.replace('\'', r"'\''"));
    format!(
        "# The URLs of `fleet dev`, passwords included. Keep this file private (0600).\n\
         export REDIS_URL={}\nexport DATABASE_URL={}\n",
        quoted(redis_url.as_str()),
        quoted(database_url.as_str())
    )
}

/// Prints how to use the running fleet; URLs only redacted (their passwords
/// are in the env file).
fn print_welcome(address: &str, urls: &DevUrls<'_>, secrets: &WebhookSecrets, dev_secret: bool, example: &Path) {
    let (redis_url, database_url, env_file) = (urls.redis, urls.database, urls.env_file.display());
    let console = if urls.console {
        format!("http://{address}/console (sign in with FLEET_CONSOLE_TOKEN)")
    } else {
        "off (set FLEET_CONSOLE_TOKEN to a secret of 16 characters or more to open it)".to_owned()
    };
    let body = EXAMPLE_WEBHOOK.trim_end();
    let signature = intake::sign(secrets.signing_key(), body.as_bytes());
    let secret_note = if dev_secret {
        format!("{DEV_SECRET} (the development default; set THINKIFIC_WEBHOOK_SECRET to change it)")
    } else {
        "from THINKIFIC_WEBHOOK_SECRET".to_owned()
    };
    println!(
        "\nfleet dev is running (Ctrl-C stops it)\n\
         \x20 webhooks:  http://{address}/webhooks/thinkific\n\
         \x20 redis:     {redis_url}\n\
         \x20 postgres:  {database_url}\n\
         \x20 env:       {env_file} (the URLs with their passwords; `. '{env_file}'` sets them in a shell)\n\
         \x20 secret:    {secret_note}\n\
         \x20 console:   {console}\n\n\
         Send a signed example webhook:\n\
         \x20 curl -sS http://{address}/webhooks/thinkific -H 'Content-Type: application/json' \
         -H 'X-Thinkific-Hmac-Sha256: {signature}' --data-binary @{example}\n\n\
         The dashboard's cached reads (X-Cache: HIT once the worker has prewarmed them):\n\
         \x20 curl -si 'http://{address}/api/statistics/cached?tenant_id=184532&course_id=2871345'\n\
         \x20 curl -si 'http://{address}/api/dashboard/cached?tenant_id=184532'\n\
         \x20 curl -si 'http://{address}/api/enrollments/cached?tenant_id=184532&course_id=2871345&page=1&per_page=20'\n\n\
         Then see the enrollment in Postgres:\n\
         \x20 . '{env_file}' && psql \"$DATABASE_URL\" -c 'SELECT tenant_id, enrollment_id, user_id, course_id, percentage_completed, last_topic FROM enrollments'\n\n\
         Inspect the fleet from another shell (`cargo install --path .` puts `fleet` on the PATH):\n\
         \x20 . '{env_file}' && fleet status\n\
         \x20 fleet dlq list    fleet retries    fleet cache stats    (--json for scripts)\n\
         \x20 readiness: curl -s http://{address}/readyz (Postgres and Redis, as the worker sees them)\n",
        example = example.display(),
    );
}

impl From<DlqFilter> for Filter {
    fn from(filter: DlqFilter) -> Self {
        Self {
            topic: filter.topic,
            tenant: filter.tenant_id,
            error_kind: filter.kind,
            since: filter.since,
            up_to: None,
        }
    }
}

impl From<DlqSelection> for Selection {
    fn from(selection: DlqSelection) -> Self {
        Self { ids: selection.ids, all: selection.all, filter: selection.filter.into() }
    }
}
