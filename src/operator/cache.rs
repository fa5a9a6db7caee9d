//! `fleet cache stats|clear`: what the dashboard cache holds, and clearing it.

use crate::redis::RedisConnection;
use redis::AsyncCommands;
use serde_json::{json, Value};

use super::output::{human_bytes, Output};
use super::OperatorExit;
use crate::redis::keys::{tags, Keys, Kind};

/// What `fleet cache clear <kind>` clears: every cached key and tag, or the
/// keys of one [`Kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClearKind {
    All,
    Only(Kind),
}

/// Every key matching `pattern`, found with SCAN (never KEYS), on every
/// master of a cluster.
async fn scan(redis: &mut RedisConnection, pattern: &str) -> anyhow::Result<Vec<String>> {
    Ok(redis.scan_keys(pattern).await?)
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
fn literal_only(flag: &str, reason: &str) -> OperatorExit {
    OperatorExit {
        code: OperatorExit::REFUSED,
        message: format!(
            "{flag} takes one literal name, not a pattern: {reason}; nothing was cleared \
             (to clear cache keys by glob, use --pattern)"
        ),
    }
}

/// `fleet cache stats`: keys and memory by kind, hits and misses, tags.
pub async fn stats(redis: &mut RedisConnection, keys: &Keys, output: Output, reset: bool) -> anyhow::Result<()> {
    if reset {
        let _: () = redis.del(keys.cache_metrics()).await?;
    }
    let cached = scan(redis, &format!("{}*", keys.cache_namespace())).await?;
    let mut per_kind: std::collections::BTreeMap<&'static str, (u64, u64)> =
        Kind::ALL.iter().map(|kind| (kind.as_str(), (0, 0))).collect();
    for chunk in cached.chunks(per_round_trip(redis)) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("MEMORY").arg("USAGE").arg(key);
        }
        let sizes: Vec<Option<u64>> = pipe.query_async(redis).await?;
        for (key, size) in chunk.iter().zip(sizes) {
            if let Some(kind) = keys.kind_of(key) {
                let slot = per_kind.entry(kind.as_str()).or_default();
                slot.0 += 1;
                slot.1 += size.unwrap_or(0);
            }
        }
    }
    let tags = scan(redis, &keys.tags_pattern()).await?.len();
    let metrics: std::collections::HashMap<String, String> = redis.hgetall(keys.cache_metrics()).await?;
    let number = |name: &str| metrics.get(name).and_then(|value| value.parse::<u64>().ok()).unwrap_or(0);
    let (hits, misses, stale, bypass) = (number("hits"), number("misses"), number("stale"), number("bypass"));
    let served = hits + stale + misses;
    let hit_rate = if served > 0 { (hits + stale) as f64 / served as f64 } else { 0.0 };
    let since = metrics.get("since").cloned();
    let kinds: serde_json::Map<String, Value> = per_kind
        .iter()
        .map(|(kind, (count, bytes))| ((*kind).to_owned(), json!({ "keys": count, "memory_bytes": bytes })))
        .collect();
    let data = json!({
        "kinds": kinds, "tags": tags, "hits": hits, "misses": misses, "stale": stale, "bypass": bypass,
        "hit_rate": hit_rate, "since": since, "revalidate_failures": number("revalidate_failures"),
    });
    output.data(&data, |out| {
        writeln!(out, "{:<12} {:>8} {:>12}", "KIND", "KEYS", "MEMORY")?;
        for (kind, (count, bytes)) in &per_kind {
            writeln!(out, "{kind:<12} {count:>8} {:>12}", human_bytes(*bytes))?;
        }
        writeln!(out, "tags         {tags}")?;
        writeln!(
            out,
            "reads        {hits} hits, {stale} stale, {misses} misses, {bypass} bypassed; hit rate {:.1}% since {}",
            hit_rate * 100.0,
            since.as_deref().unwrap_or("the first read")
        )?;
        writeln!(out, "revalidation failures {}", number("revalidate_failures"))?;
        Ok(())
    })
}

/// `fleet cache clear`: removes cached keys under the fleet's prefix only.
///
/// `tag` and `tenant` are literal names, checked before anything is
/// removed: `--tenant-id '*'` is refused, not a way to clear every school.
/// Only `pattern` is a glob.
pub async fn clear(
    redis: &mut RedisConnection,
    keys: &Keys,
    kind: Option<ClearKind>,
    tag: Option<String>,
    tenant: Option<String>,
    pattern: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let removed = if let Some(tag) = tag {
        tags::check(&tag).map_err(|reason| literal_only("--tag", &reason))?;
        let tag_keys = match tenant {
            Some(tenant) => {
                let tenant = fleet_jobs::TenantId::parse(&tenant)
                    .map_err(|err| literal_only("--tenant-id", &err.to_string()))?;
                vec![keys.tag(tenant.as_str(), &tag)]
            }
            // Every school's set of this one tag: compared whole, never matched.
            None => scan(redis, &keys.tags_pattern())
                .await?
                .into_iter()
                .filter(|key| keys.tag_of(key).is_some_and(|(_, found)| found == tag))
                .collect(),
        };
        crate::redis::cache::invalidate(redis, &tag_keys).await?
    } else {
        let patterns: Vec<String> = match (kind, pattern) {
            (_, Some(pattern)) => vec![format!("{}{pattern}", keys.cache_namespace())],
            (Some(ClearKind::All), None) => {
                vec![format!("{}*", keys.cache_namespace()), keys.tags_pattern()]
            }
            (Some(ClearKind::Only(kind)), None) => vec![keys.kind_pattern(kind)],
            (None, None) => Vec::new(),
        };
        let mut removed = 0;
        for pattern in patterns {
            for chunk in scan(redis, &pattern).await?.chunks(per_round_trip(redis)) {
                let gone: u64 = redis.unlink(chunk).await?;
                removed += gone;
            }
        }
        removed
    };
    output.data(&json!({ "removed": removed }), |out| writeln!(out, "removed {removed} keys"))
}
