//! One integration-test binary (one set of throwaway servers) for the whole
//! suite; each module covers one part of the fleet.

mod chaos;
mod dashboard;
mod helpers;
mod intake;
mod local_services;
mod operator;
mod processes;
mod properties;
mod recovery;
mod secrets;
mod worker;
