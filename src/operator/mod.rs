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
//! stdout; summaries, progress and refusals go to stderr; exit codes as
//! `crate::exit` lists them.

pub mod cache;
pub mod dlq;
pub mod failed;
pub mod output;
pub mod retries;
pub mod status;
