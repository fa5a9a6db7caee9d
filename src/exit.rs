//! Exit codes scripts and supervisors can rely on, for every command: the
//! roles, the operator commands and the load test (also in the README).
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done, or stopped by SIGTERM / Ctrl-C (also while waiting for Redis or Postgres) |
//! | 1 | unexpected failure (e.g. an operator command cannot reach Redis, a port is taken); a load test that did not pass |
//! | 2 | usage or configuration error (clap's, and `crate::cli::ConfigError`); a command refused (a purge without `--yes`, a load test's remote target) |
//! | 3 | an operator command: some named dead letter does not exist |
//! | 4 | the database schema is behind this binary: run `fleet migrate` |
//! | 5 | the consumer name is held by another live worker |
//!
//! A role never exits because Redis or Postgres is unreachable: it waits.
//! `crate::cli::exit_code` maps an error to its code.

pub(crate) const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;
pub(crate) const NOT_FOUND: u8 = 3;
pub(crate) const SCHEMA_BEHIND: u8 = 4;
pub(crate) const CONSUMER_NAME_HELD: u8 = 5;

/// A refusal or a partial failure of a command, with its exit code; `main`
/// prints its message alone on stderr.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}
