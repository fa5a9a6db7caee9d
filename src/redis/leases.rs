//! One live worker per consumer name: a lease in Redis, taken at start,
//! renewed by a heartbeat and given back at stop. A worker that dies frees
//! its name when the lease runs out.

use std::time::Duration;

use redis::RedisError;

use super::keys::Keys;
use super::scripts;
use super::RedisConnection;

/// Takes or renews the lease on a consumer name; false if another live
/// worker holds it.
pub(crate) async fn hold_consumer_lease(
    conn: &mut RedisConnection,
    keys: &Keys,
    consumer: &str,
    token: &str,
    lease: Duration,
) -> Result<bool, RedisError> {
    let held: i64 = scripts::HOLD_LEASE
        .key(keys.consumer_lease(consumer))
        .arg(token)
        .arg(lease.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(held == 1)
}

/// Gives the consumer name back, if this worker still holds it.
pub(crate) async fn release_consumer_lease(
    conn: &mut RedisConnection,
    keys: &Keys,
    consumer: &str,
    token: &str,
) -> Result<(), RedisError> {
    let _: i64 = scripts::RELEASE.key(keys.consumer_lease(consumer)).arg(token).invoke_async(conn).await?;
    Ok(())
}
