//! Fleet: Thinkific webhooks in, a durable Redis Stream, batched workers,
//! correct Postgres state.
//!
//! The `fleet` binary is a thin shell over this library, so tests build the
//! very same intake and worker in-process. The Thinkific event model and the
//! Postgres handlers live in the `fleet-jobs` crate.

pub mod api;
pub mod cache;
pub mod commands;
pub mod config;
pub mod db;
pub mod health;
pub mod intake;
pub mod local_services;
pub mod operator;
pub mod read_model;
pub mod retry;
pub mod revalidate;
pub mod scheduled;
pub mod stream;
pub mod telemetry;
pub mod urls;
pub mod worker;

pub use fleet_jobs as jobs;
