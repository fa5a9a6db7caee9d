//! Fleet: Thinkific webhooks in, a durable Redis Stream, batched workers,
//! correct Postgres state.
//!
//! The `fleet` binary is a thin shell over this library, so tests build the
//! very same intake and worker in-process. The Thinkific event model and the
//! Postgres handlers live in the `fleet-jobs` crate.
//!
//! Items are `pub(crate)` unless `main.rs`, the integration tests
//! (`tests/it`) or the benchmark (`benches/throughput.rs`) use them: the
//! public surface is what those need, nothing more.

// The roles, each in its own folder.
pub mod api;
pub mod console;
pub mod intake;
pub mod operator;
pub mod scheduled;
pub mod worker;

// The command line: clap, and the one place that knows every role.
pub mod cli;

// `fleet loadtest`: drives an intake and measures the fleet from outside.
pub mod loadtest;

// Shared plumbing, below the roles.
pub mod db;
pub mod exit;
pub mod forwarded;
pub mod health;
pub mod http_client;
pub mod local_services;
pub mod misconfiguration;
pub mod read_model;
pub mod redis;
pub mod runtime;
pub mod secrets;
pub mod systemd;
pub mod telemetry;
pub mod urls;

pub use fleet_jobs as jobs;
