//! One integration-test binary (one set of throwaway servers) for the whole
//! suite; each module covers one part of the fleet.

mod alerts;
mod api_security;
mod chaos;
mod cluster;
mod console;
mod console_browser;
mod dashboard;
mod dedup;
mod deploy;
mod fuzz;
mod helpers;
mod intake;
mod layering;
mod loadtest;
mod local_services;
mod managed_services;
mod metrics;
mod operator;
mod outages;
mod poison;
mod processes;
mod properties;
mod recovery;
mod scheduled;
mod secrets;
mod shards;
mod slow_clients;
mod systemd;
mod worker;
