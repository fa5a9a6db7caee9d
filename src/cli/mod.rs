//! The command line: every command's flags and environment variables (clap
//! only), and [`run`], the one place that knows every role.
//!
//! Every setting is an environment variable and also a flag (`--redis-url` or
//! `REDIS_URL`). A bad value stops the process with a message naming the
//! variable. Secrets (the webhook keys and the passwords inside URLs) are
//! wrapped in types whose `Debug` and `Display` never print them, and clap is
//! told never to echo their values in `--help`; URLs are parsed and shown by
//! [`crate::urls`], whose errors never quote the value.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

pub use api::{ApiArgs, ApiTuning};
pub use connections::{DatabaseArgs, KeyPrefixArg, RedisArgs, RedisTlsArgs, StreamShardsArg};
pub use dev::DevArgs;
pub use intake::{IntakeArgs, IntakeTuning, WebhookKeysArgs, WebhookSecretArg};
pub use loadtest::LoadtestArgs;
pub use operator::{CacheArgs, CacheCommand, DlqArgs, DlqCommand, DlqFilter, DlqSelection, RetriesArgs, StatusArgs};
pub use run::run;
pub use serving::{HttpArgs, ListenArgs, MetricsListenArg};
pub use worker::{CacheTuning, RetryTuning, RevalidateArgs, WorkerArgs, WorkerTuning};

mod api;
mod connections;
mod dev;
mod intake;
mod loadtest;
mod operator;
mod run;
mod serving;
mod worker;

use crate::secrets::KeysError;

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
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// What every boolean setting accepts, in any case: `1/0`, `true/false`,
/// `yes/no`, `on/off` (also `y/n`, `t/f`).
fn boolean() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

/// Configuration errors found after parsing.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{0} is not set; this command needs it (see `fleet help <command>`). Against a running `fleet \
         dev`, `. .fleet/dev/env` sets REDIS_URL and DATABASE_URL"
    )]
    Missing(&'static str),
    /// Both the named listen address and `PORT` are set.
    #[error("set either {0} (--listen) or PORT (--port), not both")]
    ListenAndPort(&'static str),
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
    #[error(
        "`fleet dev` uses one Redis server: give REDIS_URL one URL and no FLEET_REDIS_CLUSTER (run `fleet \
         intake` and `fleet worker` against a Redis Cluster)"
    )]
    DevOneRedis,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::runtime::HttpSettings;

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

    /// Connection settings are taken after the subcommand too, as before it.
    #[test]
    fn connection_settings_follow_any_subcommand() {
        for args in [
            &["fleet", "dlq", "list", "--redis-url", "redis://h:1/"][..],
            &["fleet", "dlq", "--redis-url", "redis://h:1/", "list"],
            &["fleet", "cache", "stats", "--redis-url", "redis://h:1/", "--key-prefix", "p:"],
            &["fleet", "status", "--redis-url", "redis://h:1/"],
            &["fleet", "retries", "--redis-url", "redis://h:1/"],
        ] {
            let parsed = Cli::try_parse_from(args).unwrap_or_else(|err| panic!("{args:?}: {err}"));
            let redis = match parsed.command {
                Command::Dlq(dlq) => dlq.redis,
                Command::Cache(cache) => cache.redis,
                Command::Status(status) => status.redis,
                Command::Retries(retries) => retries.redis,
                _ => unreachable!("an operator command"),
            };
            assert!(redis.target().is_ok_and(|target| target.urls() == ["redis://h:1/"]), "{args:?}");
        }
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
