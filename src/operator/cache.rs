//! `fleet cache stats|clear`: what the dashboard cache holds, and clearing it.
//!
//! The work is in [`counters`], [`report`] and [`remove`]; [`stats`] and
//! [`clear`] print what they return. The operator console calls the same
//! functions.

use std::collections::BTreeMap;

use redis::{AsyncCommands, RedisError};
use serde::Serialize;
use serde_json::json;

use super::output::{human_bytes, Output};
use crate::exit::{self, Exit};
use crate::redis::keys::{tags, Keys, Kind};
use crate::redis::RedisConnection;

/// What `fleet cache clear <kind>` clears: every cached key and tag, or the
/// keys of one [`Kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClearKind {
    All,
    Only(Kind),
}

impl ClearKind {
    /// `all`, or the kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Only(kind) => kind.as_str(),
        }
    }

    /// The kind named `name` (`all` or a [`Kind`]'s name).
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        if name == "all" {
            return Some(Self::All);
        }
        Kind::from_name(name).map(Self::Only)
    }
}

/// What to remove from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClearTarget {
    /// Every key of a kind, or everything.
    Kind(ClearKind),
    /// The keys under one tag (a literal name), in one school or in every one.
    Tag { tag: String, tenant: Option<String> },
    /// Cache keys matching a glob under `<prefix>cache:`.
    Pattern(String),
}

/// Every key matching `pattern`, found with SCAN (never KEYS), on every
/// master of a cluster.
async fn scan(redis: &mut RedisConnection, pattern: &str) -> Result<Vec<String>, RedisError> {
    redis.scan_keys(pattern).await
}

/// Keys handled per command or pipeline: 500 on a single server; one on a
/// cluster, where a command or pipeline may not span slots.
fn per_round_trip(redis: &RedisConnection) -> usize {
    if redis.is_cluster() {
        1
    } else {
        500
    }
}

/// The refusal of a `fleet cache clear` name that is not a literal one.
fn literal_only(flag: &str, reason: &str) -> Exit {
    Exit {
        code: exit::USAGE,
        message: format!(
            "{flag} takes one literal name, not a pattern: {reason}; nothing was cleared \
             (to clear cache keys by glob, use --pattern)"
        ),
    }
}

/// How the cache has served reads since the counters last started.
#[derive(Debug, Clone, Serialize)]
pub struct CacheCounters {
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub bypass: u64,
    /// Hits and stale answers over every read served from the cache (0–1).
    pub hit_rate: f64,
    /// When the counters started.
    pub since: Option<String>,
    pub revalidate_failures: u64,
}

/// The read counters only: one `HGETALL`, cheap enough for a page that
/// refreshes itself.
pub async fn counters(redis: &mut RedisConnection, keys: &Keys) -> Result<CacheCounters, RedisError> {
    let metrics: std::collections::HashMap<String, String> = redis.hgetall(keys.cache_metrics()).await?;
    let number = |name: &str| metrics.get(name).and_then(|value| value.parse::<u64>().ok()).unwrap_or(0);
    let (hits, misses, stale, bypass) = (number("hits"), number("misses"), number("stale"), number("bypass"));
    let served = hits + stale + misses;
    let hit_rate = if served > 0 { (hits + stale) as f64 / served as f64 } else { 0.0 };
    Ok(CacheCounters {
        hits,
        misses,
        stale,
        bypass,
        hit_rate,
        since: metrics.get("since").cloned(),
        revalidate_failures: number("revalidate_failures"),
    })
}

/// The keys of one kind and the memory they take.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct KindUsage {
    pub keys: u64,
    pub memory_bytes: u64,
}

/// `fleet cache stats`'s figures.
#[derive(Debug, Clone, Serialize)]
pub struct CacheReport {
    pub kinds: BTreeMap<&'static str, KindUsage>,
    pub tags: usize,
    #[serde(flatten)]
    pub counters: CacheCounters,
}

/// Keys and memory by kind (every cache key walked with SCAN and measured
/// with `MEMORY USAGE`), tags, and the read counters.
pub async fn report(redis: &mut RedisConnection, keys: &Keys) -> Result<CacheReport, RedisError> {
    let cached = scan(redis, &format!("{}*", keys.cache_namespace())).await?;
    let mut kinds: BTreeMap<&'static str, KindUsage> =
        Kind::ALL.iter().map(|kind| (kind.as_str(), KindUsage::default())).collect();
    for chunk in cached.chunks(per_round_trip(redis)) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("MEMORY").arg("USAGE").arg(key);
        }
        let sizes: Vec<Option<u64>> = pipe.query_async(redis).await?;
        for (key, size) in chunk.iter().zip(sizes) {
            if let Some(kind) = keys.kind_of(key) {
                let usage = kinds.entry(kind.as_str()).or_default();
                usage.keys += 1;
                usage.memory_bytes += size.unwrap_or(0);
            }
        }
    }
    let tags = scan(redis, &keys.tags_pattern()).await?.len();
    Ok(CacheReport { kinds, tags, counters: counters(redis, keys).await? })
}

/// Starts the read counters again from zero.
pub(crate) async fn reset_counters(redis: &mut RedisConnection, keys: &Keys) -> Result<(), RedisError> {
    redis.del(keys.cache_metrics()).await
}

/// `fleet cache stats`: keys and memory by kind, hits and misses, tags.
pub async fn stats(redis: &mut RedisConnection, keys: &Keys, output: Output, reset: bool) -> anyhow::Result<()> {
    if reset {
        reset_counters(redis, keys).await?;
    }
    let report = report(redis, keys).await?;
    let counters = &report.counters;
    output.data(&report, |out| {
        writeln!(out, "{:<12} {:>8} {:>12}", "KIND", "KEYS", "MEMORY")?;
        for (kind, usage) in &report.kinds {
            writeln!(out, "{kind:<12} {:>8} {:>12}", usage.keys, human_bytes(usage.memory_bytes))?;
        }
        writeln!(out, "tags         {}", report.tags)?;
        writeln!(
            out,
            "reads        {} hits, {} stale, {} misses, {} bypassed; hit rate {:.1}% since {}",
            counters.hits,
            counters.stale,
            counters.misses,
            counters.bypass,
            counters.hit_rate * 100.0,
            counters.since.as_deref().unwrap_or("the first read")
        )?;
        writeln!(out, "revalidation failures {}", counters.revalidate_failures)?;
        Ok(())
    })
}

/// Removes cached keys under the fleet's prefix only (never the streams);
/// returns how many went.
///
/// A tag and a tenant are literal names, checked before anything is
/// removed (an [`Exit`] refusal otherwise): a tenant `*` is refused,
/// not a way to clear every school. Only a [`ClearTarget::Pattern`] is a glob.
pub async fn remove(redis: &mut RedisConnection, keys: &Keys, target: &ClearTarget) -> anyhow::Result<u64> {
    let patterns: Vec<String> = match target {
        ClearTarget::Tag { tag, tenant } => {
            tags::check(tag).map_err(|reason| literal_only("--tag", &reason))?;
            let tag_keys = match tenant {
                Some(tenant) => {
                    let tenant = fleet_jobs::TenantId::parse(tenant)
                        .map_err(|err| literal_only("--tenant-id", &err.to_string()))?;
                    vec![keys.tag(tenant.as_str(), tag)]
                }
                // Every school's set of this one tag: compared whole, never matched.
                None => scan(redis, &keys.tags_pattern())
                    .await?
                    .into_iter()
                    .filter(|key| keys.tag_of(key).is_some_and(|(_, found)| found == tag))
                    .collect(),
            };
            return Ok(crate::redis::cache::invalidate(redis, &tag_keys).await?);
        }
        ClearTarget::Pattern(pattern) => vec![format!("{}{pattern}", keys.cache_namespace())],
        ClearTarget::Kind(ClearKind::All) => vec![format!("{}*", keys.cache_namespace()), keys.tags_pattern()],
        ClearTarget::Kind(ClearKind::Only(kind)) => vec![keys.kind_pattern(*kind)],
    };
    let mut removed = 0;
    for pattern in patterns {
        for chunk in scan(redis, &pattern).await?.chunks(per_round_trip(redis)) {
            let gone: u64 = redis.unlink(chunk).await?;
            removed += gone;
        }
    }
    Ok(removed)
}

/// `fleet cache clear`: removes cached keys (see [`remove`]) and prints how
/// many went.
pub async fn clear(
    redis: &mut RedisConnection,
    keys: &Keys,
    kind: Option<ClearKind>,
    tag: Option<String>,
    tenant: Option<String>,
    pattern: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let target = match (tag, pattern, kind) {
        (Some(tag), _, _) => Some(ClearTarget::Tag { tag, tenant }),
        (None, Some(pattern), _) => Some(ClearTarget::Pattern(pattern)),
        (None, None, Some(kind)) => Some(ClearTarget::Kind(kind)),
        (None, None, None) => None,
    };
    let removed = match target {
        Some(target) => remove(redis, keys, &target).await?,
        None => 0,
    };
    output.data(&json!({ "removed": removed }), |out| writeln!(out, "removed {removed} keys"))
}
