//! Stream shards: how many there are, which one an event goes to, and the
//! count every worker consumes.
//!
//! The events stream is split into `FLEET_STREAM_SHARDS` streams (default
//! 1), each with its own consumer group, retries and dead letters under its
//! own hash tag (see `super::keys`), so on a Redis Cluster the shards spread
//! over the masters. An event's shard is a stable hash of its tenant and
//! entity (the payload's `id`, else the event id): every redelivery of one
//! event meets the same deduplication sets, and one entity's events keep to
//! one stream.
//!
//! `<prefix>stream-shards` holds the most shards any process of the fleet
//! was configured with; intakes and workers raise it when they connect (and
//! every [`DISCOVER_EVERY`] after, so a Redis that lost its data learns it
//! again), and workers consume that many, looking again as often. So a
//! change of count is safe in either direction without stopping anything:
//! raised, the running workers start consuming the new shards before any
//! intake with the new count accepts a webhook; lowered, the shards beyond
//! the new count take no new events and drain (decision 0019,
//! `docs/scaling.md`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use redis::{AsyncCommands, RedisError};
use sha2::{Digest, Sha256};

use super::keys::{Keys, ShardKeys};
use super::{scripts, stream, RedisConnection};

/// The most stream shards a fleet may have.
pub(crate) const MAX_SHARDS: u32 = 256;

/// How often a worker looks for shards added to the fleet's count.
pub(crate) const DISCOVER_EVERY: Duration = Duration::from_secs(5);

/// Domain separation for the shard hash, so it never equals another digest.
const SHARD_DOMAIN: &[u8] = b"fleet-shard-v1\0";

/// A number of stream shards: 1 to [`MAX_SHARDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShardCount(u32);

impl ShardCount {
    pub const ONE: Self = Self(1);

    pub fn new(count: u32) -> Result<Self, String> {
        if (1..=MAX_SHARDS).contains(&count) {
            Ok(Self(count))
        } else {
            Err(format!("must be 1 to {MAX_SHARDS}"))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The shard of an event of `tenant` about `entity`: SHA-256 of both
    /// (the tenant's length first, so no two pairs run together), its first
    /// eight bytes as a big-endian integer, modulo the count. Stable across
    /// processes, versions and machines.
    pub fn shard_of(self, tenant: &str, entity: &str) -> u32 {
        if self.0 == 1 {
            return 0;
        }
        let mut hasher = Sha256::new();
        hasher.update(SHARD_DOMAIN);
        hasher.update((tenant.len() as u64).to_be_bytes());
        hasher.update(tenant.as_bytes());
        hasher.update(entity.as_bytes());
        let digest = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(first) % u64::from(self.0)) as u32
    }

    /// The keys of every shard, `0` first.
    pub fn shards(self, keys: &Keys) -> Vec<ShardKeys> {
        (0..self.0).map(|index| keys.shard(index)).collect()
    }
}

impl Default for ShardCount {
    fn default() -> Self {
        Self::ONE
    }
}

impl fmt::Display for ShardCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ShardCount {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let count: u32 = text.trim().parse().map_err(|_| format!("must be a whole number, 1 to {MAX_SHARDS}"))?;
        Self::new(count)
    }
}

/// Raises the fleet's count to `configured` when it is lower, and makes
/// sure every shard of the fleet's count has its stream and consumer group;
/// returns the fleet's count. Intakes call it before accepting webhooks, so
/// no event lands in a shard the workers do not know of.
pub async fn prepare(
    conn: &mut RedisConnection,
    keys: &Keys,
    configured: ShardCount,
) -> Result<ShardCount, RedisError> {
    let count: u32 =
        scripts::RAISE_SHARD_COUNT.key(keys.stream_shards()).arg(configured.get()).invoke_async(conn).await?;
    let count = ShardCount::new(count.min(MAX_SHARDS)).unwrap_or(configured);
    for shard in count.shards(keys) {
        stream::ensure_group(conn, &shard).await?;
    }
    Ok(count)
}

/// The fleet's count as recorded (at least `configured`), without changing
/// it: what the operator commands read.
pub async fn fleet_count(
    conn: &mut RedisConnection,
    keys: &Keys,
    configured: ShardCount,
) -> Result<ShardCount, RedisError> {
    let recorded: Option<u32> = conn.get(keys.stream_shards()).await?;
    let recorded = recorded.and_then(|count| ShardCount::new(count.min(MAX_SHARDS)).ok());
    Ok(recorded.map_or(configured, |recorded| recorded.max(configured)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_is_one_to_the_most() {
        assert_eq!("3".parse::<ShardCount>(), Ok(ShardCount(3)));
        for bad in ["0", "257", "-1", "two", ""] {
            assert!(bad.parse::<ShardCount>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_events_shard_is_stable_and_spread() {
        let three = ShardCount(3);
        // Values fixed once: a change of the hash would move every entity's
        // shard, and redeliveries would miss their deduplication record.
        let fixed: Vec<u32> = ["1", "2", "3", "4", "5", "6"].iter().map(|id| three.shard_of("184532", id)).collect();
        assert_eq!(fixed, FIXED_SHARDS);
        assert_eq!(ShardCount::ONE.shard_of("184532", "1"), 0);
        let mut per_shard = [0u32; 3];
        for entity in 0..3000 {
            per_shard[three.shard_of("184532", &entity.to_string()) as usize] += 1;
        }
        for count in per_shard {
            assert!((900..=1100).contains(&count), "{per_shard:?}");
        }
    }

    // Computed apart from this code, with Python's hashlib.
    const FIXED_SHARDS: [u32; 6] = [2, 1, 0, 2, 2, 2];
}
