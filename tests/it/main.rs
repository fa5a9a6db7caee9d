//! One integration-test binary (one set of throwaway servers) for the whole
//! suite; each module covers one part of the fleet.

mod api_security;
mod chaos;
mod dashboard;
mod helpers;
mod intake;
mod local_services;
mod operator;
mod poison;
mod processes;
mod properties;
mod recovery;
mod secrets;
mod slow_clients;
mod worker;
