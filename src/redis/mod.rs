//! Everything the fleet keeps in Redis, below every role.
//!
//! - [`keys`]: the name of every key, stream and tag, built in one place, so
//!   a change of naming (a prefix, a cluster hash tag) is one edit.
//! - [`stream`]: the events stream and its consumer group (the Redis
//!   Streams recipe is documented there).
//! - [`dedup`]: the deduplication window's layout (fingerprints, time
//!   buckets, partitions) and its size.
//! - [`failures`]: scheduled retries and the dead-letter stream.
//! - [`leases`]: one live worker per consumer name.
//! - [`cache`]: the dashboard cache (versioned values, tags, locks, counters).
//! - [`activity`]: what the workers did, minute by minute (the console's charts).
//!
//! The Lua scripts live in `scripts/`, one file each, and are loaded once
//! ([`scripts`]).

pub mod activity;
pub mod cache;
pub mod dedup;
pub mod failures;
pub mod keys;
pub mod leases;
mod scripts;
pub mod stream;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisError;
use tokio_util::sync::CancellationToken;

use crate::health::{self, Dependency, Health};

pub use keys::{KeyPrefix, Keys, GROUP};

/// Opens a reconnecting Redis connection.
///
/// Commands fail after `response_timeout` instead of hanging, and a broken
/// connection is re-established on the next command.
pub async fn connect(url: &str, response_timeout: Duration) -> Result<ConnectionManager, RedisError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_with_config(client, config).await
}

/// Like [`connect`], waiting with backoff while Redis is unreachable (see
/// [`crate::health`]); `None` if `stop` fires first.
pub async fn connect_waiting(
    url: &str,
    response_timeout: Duration,
    health: &Health,
    stop: &CancellationToken,
) -> Option<ConnectionManager> {
    let address = crate::urls::shown_address(url);
    health::until_reachable(health, Dependency::Redis, &address, stop, || connect(url, response_timeout)).await
}
