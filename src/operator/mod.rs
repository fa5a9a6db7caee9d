//! Operator commands: `fleet status` ([`status`]), `fleet dlq …` ([`dlq`]),
//! `fleet retries` ([`retries`]) and `fleet cache …` ([`cache`]), answering
//! alike ([`output`]).
//!
//! Each module holds the one implementation of what its command does
//! (functions that read or change Redis and return what they found or did)
//! and the printing of it. The operator console (`crate::console`) calls the
//! same functions: there is no second code path to Redis.
//!
//! Output is a readable table or text by default and JSON with `--json`, on
//! stdout; summaries, progress and refusals go to stderr. Exit codes
//! scripts can rely on: 0 done, 1 failure (e.g. Redis unreachable), 2
//! refused or bad usage, 3 some named dead letter does not exist.

pub mod cache;
pub mod dlq;
pub mod failed;
pub mod output;
pub mod retries;
pub mod status;

/// A refusal or a partial failure with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct OperatorExit {
    pub code: u8,
    pub message: String,
}

impl OperatorExit {
    pub const REFUSED: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
}
