//! Everything the fleet keeps in Redis, below every role.
//!
//! - [`keys`]: the name of every key, stream and tag, built in one place, so
//!   a change of naming (a prefix, a cluster hash tag) is one edit.
//! - [`entry`]: the events stream's entry, its fields named, written and
//!   read in one place.
//! - [`stream`]: a shard of the events stream and its consumer group (the
//!   Redis Streams recipe is documented there).
//! - [`shards`]: how many stream shards there are and which one an event
//!   goes to.
//! - [`dedup`]: the deduplication window's layout (fingerprints, time
//!   buckets, partitions) and its size.
//! - [`failures`]: scheduled retries and the dead-letter stream.
//! - [`leases`]: one live worker per consumer name.
//! - [`cache`]: the dashboard cache (versioned values, tags, locks, counters).
//! - [`activity`]: what the workers did, minute by minute (the console's charts).
//! - [`refusals`]: what the intake refused, minute by minute (the console's intake page).
//! - [`roles`]: what each running process reports of its dependencies (the console's overview).
//! - [`connection`]: one connection type for a single server and a Redis
//!   Cluster ([`RedisTarget`], [`RedisConnection`]).
//!
//! The Lua scripts live in `scripts/`, one file each, and are loaded once
//! ([`scripts`]).

pub mod activity;
pub mod cache;
pub mod connection;
pub mod dedup;
pub mod entry;
pub mod failures;
pub mod keys;
pub(crate) mod leases;
pub mod refusals;
pub mod roles;
mod scripts;
pub mod shards;
pub mod stream;

use std::time::Duration;

use redis::RedisError;
use tokio_util::sync::CancellationToken;

use crate::health::{self, Health};
use crate::telemetry::readiness::{self, Dependency};

pub use connection::{RedisConnection, RedisTarget, RedisTls};
pub use keys::{KeyPrefix, Keys, GROUP};

/// Opens a reconnecting connection to `target` (see [`RedisConnection::open`]).
///
/// Commands fail after `response_timeout` instead of hanging, and a broken
/// connection is re-established on the next command.
pub async fn connect(target: &RedisTarget, response_timeout: Duration) -> Result<RedisConnection, RedisError> {
    RedisConnection::open(target, response_timeout).await
}

/// Like [`connect`], waiting with backoff while Redis is unreachable (see
/// [`crate::health`]); `None` if `stop` fires first.
pub(crate) async fn connect_waiting(
    target: &RedisTarget,
    response_timeout: Duration,
    health: &Health,
    stop: &CancellationToken,
) -> Option<RedisConnection> {
    let address = target.shown_address();
    health::until_reachable(health, Dependency::Redis, &address, stop, || connect(target, response_timeout)).await
}

/// Whether Redis answers a PING in time.
pub(crate) async fn probe(redis: &RedisConnection) -> Result<(), String> {
    let mut redis = redis.clone();
    match tokio::time::timeout(readiness::PROBE_TIMEOUT, redis::cmd("PING").query_async::<String>(&mut redis)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {} s", readiness::PROBE_TIMEOUT.as_secs())),
    }
}
