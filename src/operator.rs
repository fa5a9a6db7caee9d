//! Operator commands: `fleet status`, `fleet dlq …` and `fleet cache …`.
//!
//! Output is a readable table or text by default and JSON with `--json`, on
//! stdout; progress and refusals go to stderr. Exit codes scripts can rely
//! on: 0 done, 1 failure (e.g. Redis unreachable), 2 refused or bad usage,
//! 3 some named dead letter does not exist.

use std::io::Write;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::{DlqCommand, DlqFilter, DlqSelection};
use crate::redis::failures;
use crate::redis::keys::{tags, Keys, Kind, GROUP};
use crate::redis::stream::{self, Entry};

/// A refusal or a partial failure with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct OperatorExit {
    pub code: u8,
    pub message: String,
}

impl OperatorExit {
    pub const REFUSED: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
}

/// How many dead letters a replay or purge handles per atomic step.
const CHUNK: usize = 100;

/// A dead letter as operators see it.
#[derive(Debug, Serialize)]
pub struct DeadLetterView {
    pub id: String,
    pub event_id: String,
    pub topic: String,
    pub tenant: String,
    pub attempts: u32,
    pub error_kind: String,
    pub error: String,
    pub first_failed_at: String,
    pub last_failed_at: String,
    pub received_at: String,
    pub source_entry_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

impl DeadLetterView {
    fn from_entry(entry: &Entry, with_body: bool) -> Self {
        let text = |name: &str| entry.text(name).unwrap_or_default().to_owned();
        let body = with_body.then(|| {
            let raw = entry.field("body").unwrap_or_default();
            serde_json::from_slice(raw).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(raw).into_owned()))
        });
        Self {
            id: entry.id.clone(),
            event_id: text("event_id"),
            topic: text("topic"),
            tenant: text("tenant"),
            attempts: entry.attempts(),
            error_kind: text("error_kind"),
            error: text("error"),
            first_failed_at: text("first_failed_at"),
            last_failed_at: text("last_failed_at"),
            received_at: text("received_at"),
            source_entry_id: text("source_entry_id"),
            body,
        }
    }
}

fn start_id(since: Option<DateTime<Utc>>) -> String {
    since.map_or_else(|| "-".to_owned(), |since| format!("{}-0", since.timestamp_millis().max(0)))
}

/// Dead letters matching `filter`, oldest first, at most `limit`.
async fn matching(
    redis: &mut ConnectionManager,
    keys: &Keys,
    filter: &DlqFilter,
    limit: usize,
) -> anyhow::Result<Vec<Entry>> {
    let mut found = Vec::new();
    let mut start = start_id(filter.since);
    loop {
        let page = failures::read_dead_letters(redis, keys, &start, 500).await?;
        let Some(last) = page.last() else { break };
        start = format!("({}", last.id);
        let full = page.len() < 500;
        for entry in page {
            if filter.topic.as_deref().is_none_or(|topic| entry.text("topic") == Some(topic)) {
                found.push(entry);
                if found.len() >= limit {
                    return Ok(found);
                }
            }
        }
        if full {
            break;
        }
    }
    Ok(found)
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn shorten(text: &str, width: usize) -> String {
    let one_line = text.replace(['\n', '\r', '\t'], " ");
    if one_line.chars().count() <= width {
        one_line
    } else {
        format!("{}…", one_line.chars().take(width - 1).collect::<String>())
    }
}

fn print_table(letters: &[DeadLetterView]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<17} {:<24} {:<22} {:<10} {:<24} {:>8} {:<9} ERROR",
        "ID", "LAST FAILED", "TOPIC", "TENANT", "EVENT", "ATTEMPTS", "KIND"
    );
    for letter in letters {
        let _ = writeln!(
            out,
            "{:<17} {:<24} {:<22} {:<10} {:<24} {:>8} {:<9} {}",
            letter.id,
            letter.last_failed_at,
            shorten(&letter.topic, 22),
            shorten(&letter.tenant, 10),
            shorten(&letter.event_id, 24),
            letter.attempts,
            letter.error_kind,
            shorten(&letter.error, 80)
        );
    }
}

/// The dead letters a replay or purge acts on: the named ones (missing ids
/// reported separately) or every one matching the filter.
async fn select(
    redis: &mut ConnectionManager,
    keys: &Keys,
    selection: &DlqSelection,
) -> anyhow::Result<(Vec<Entry>, Vec<String>)> {
    if selection.all {
        return Ok((matching(redis, keys, &selection.filter, usize::MAX).await?, Vec::new()));
    }
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for id in &selection.ids {
        match failures::dead_letter_by_id(redis, keys, id).await {
            Ok(Some(entry)) => found.push(entry),
            Ok(None) => missing.push(id.clone()),
            // A malformed id is a missing one, not a failure.
            Err(err) if err.code() == Some("ERR") => missing.push(id.clone()),
            Err(err) => return Err(err.into()),
        }
    }
    let filter = &selection.filter;
    found.retain(|entry| {
        filter.topic.as_deref().is_none_or(|topic| entry.text("topic") == Some(topic))
            && filter.since.is_none_or(|since| stream::compare_ids(&entry.id, &start_id(Some(since))).is_ge())
    });
    Ok((found, missing))
}

fn not_found(missing: &[String]) -> anyhow::Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    Err(OperatorExit {
        code: OperatorExit::NOT_FOUND,
        message: format!("no dead letter with id {}", missing.join(", ")),
    }
    .into())
}

pub async fn dlq(redis: &mut ConnectionManager, keys: &Keys, command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { filter, limit, json } => {
            let entries = matching(redis, keys, &filter, limit as usize).await?;
            let letters: Vec<DeadLetterView> =
                entries.iter().map(|entry| DeadLetterView::from_entry(entry, false)).collect();
            if json {
                print_json(&letters)?;
            } else {
                print_table(&letters);
                let total: u64 = redis.xlen(keys.dead_letters()).await?;
                eprintln!("{} shown, {total} dead letters in all", letters.len());
            }
            Ok(())
        }
        DlqCommand::Show { id, json } => {
            let entry = match failures::dead_letter_by_id(redis, keys, &id).await {
                Ok(entry) => entry,
                Err(err) if err.code() == Some("ERR") => None,
                Err(err) => return Err(err.into()),
            };
            let Some(entry) = entry else {
                return not_found(&[id]);
            };
            let letter = DeadLetterView::from_entry(&entry, true);
            if json {
                return print_json(&letter);
            }
            let mut out = std::io::stdout().lock();
            for (name, value) in [
                ("id", &letter.id),
                ("event id", &letter.event_id),
                ("topic", &letter.topic),
                ("tenant", &letter.tenant),
                ("error kind", &letter.error_kind),
                ("error", &letter.error),
                ("received at", &letter.received_at),
                ("first failed at", &letter.first_failed_at),
                ("last failed at", &letter.last_failed_at),
                ("source entry", &letter.source_entry_id),
            ] {
                writeln!(out, "{name:<16} {value}")?;
            }
            writeln!(out, "{:<16} {}", "attempts", letter.attempts)?;
            writeln!(out, "body:")?;
            writeln!(out, "{}", serde_json::to_string_pretty(&letter.body.unwrap_or(Value::Null))?)?;
            Ok(())
        }
        DlqCommand::Replay { selection, dry_run, json } => {
            let (entries, missing) = select(redis, keys, &selection).await?;
            if dry_run {
                let letters: Vec<DeadLetterView> =
                    entries.iter().map(|entry| DeadLetterView::from_entry(entry, false)).collect();
                if json {
                    print_json(&json!({ "dry_run": true, "would_replay": letters, "missing": missing }))?;
                } else {
                    print_table(&letters);
                    eprintln!("dry run: {} dead letters would be replayed; nothing changed", letters.len());
                }
                return not_found(&missing);
            }
            let ids: Vec<String> = entries.into_iter().map(|entry| entry.id).collect();
            let mut replayed = Vec::new();
            let mut vanished = Vec::new();
            for chunk in ids.chunks(CHUNK) {
                let outcome = failures::replay_dead_letters(redis, keys, chunk).await?;
                replayed.extend(outcome.replayed);
                vanished.extend(outcome.missing);
                if ids.len() > CHUNK {
                    eprintln!("replayed {}/{}", replayed.len() + vanished.len(), ids.len());
                }
            }
            let missing: Vec<String> = missing.into_iter().chain(vanished).collect();
            if json {
                let replayed: Vec<Value> = replayed
                    .iter()
                    .map(|(from, to)| json!({ "dead_letter_id": from, "stream_entry_id": to }))
                    .collect();
                print_json(&json!({ "replayed": replayed, "missing": missing }))?;
            } else {
                for (from, to) in &replayed {
                    println!("replayed {from} as {to}");
                }
                eprintln!("{} dead letters replayed onto {}", replayed.len(), keys.events());
            }
            not_found(&missing)
        }
        DlqCommand::Purge { selection, yes, json } => {
            let (entries, missing) = select(redis, keys, &selection).await?;
            if !yes {
                return Err(OperatorExit {
                    code: OperatorExit::REFUSED,
                    message: format!(
                        "refusing to purge {} dead letters without --yes; nothing was deleted",
                        entries.len()
                    ),
                }
                .into());
            }
            let ids: Vec<String> = entries.into_iter().map(|entry| entry.id).collect();
            let mut purged = 0;
            for chunk in ids.chunks(CHUNK) {
                purged += failures::purge_dead_letters(redis, keys, chunk).await?;
            }
            if json {
                print_json(&json!({ "purged": purged, "ids": ids, "missing": missing }))?;
            } else {
                println!("purged {purged} dead letters");
            }
            not_found(&missing)
        }
    }
}

#[derive(Debug, Serialize)]
struct ConsumerView {
    name: String,
    pending: u64,
    idle_ms: u64,
}

/// The fleet as Redis sees it.
pub async fn status(redis: &mut ConnectionManager, keys: &Keys, json: bool) -> anyhow::Result<()> {
    let length: u64 = redis.xlen(keys.events()).await?;
    let dead_letters: u64 = redis.xlen(keys.dead_letters()).await?;
    let retries: u64 = redis.zcard(keys.retries()).await?;
    let next_retry: Vec<(String, f64)> = redis.zrange_withscores(keys.retries(), 0, 0).await?;
    let next_retry = next_retry
        .first()
        .and_then(|(_, score)| DateTime::<Utc>::from_timestamp_millis(*score as i64))
        .map(|due| due.to_rfc3339());
    let groups: redis::streams::StreamInfoGroupsReply = match redis.xinfo_groups(keys.events()).await {
        Ok(groups) => groups,
        // No stream yet: nothing was ever received.
        Err(err) if err.code() == Some("ERR") => redis::streams::StreamInfoGroupsReply::default(),
        Err(err) => return Err(err.into()),
    };
    let group = groups.groups.into_iter().find(|group| group.name == GROUP);
    let mut consumers = Vec::new();
    if group.is_some() {
        let reply: redis::streams::StreamInfoConsumersReply = redis.xinfo_consumers(keys.events(), GROUP).await?;
        consumers = reply
            .consumers
            .into_iter()
            .map(|consumer| ConsumerView {
                name: consumer.name,
                pending: consumer.pending as u64,
                idle_ms: consumer.idle as u64,
            })
            .collect();
    }
    let (pending, lag) =
        group.as_ref().map_or((0, None), |group| (group.pending as u64, group.lag.map(|lag| lag as u64)));
    if json {
        return print_json(&json!({
            "stream": keys.events(), "length": length, "group": GROUP,
            "undelivered": lag, "pending": pending, "consumers": consumers,
            "retries_scheduled": retries, "next_retry_at": next_retry, "dead_letters": dead_letters,
        }));
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "stream       {} ({length} entries)", keys.events())?;
    match lag {
        Some(lag) => writeln!(out, "undelivered  {lag}")?,
        None => writeln!(out, "undelivered  unknown")?,
    }
    writeln!(out, "pending      {pending} (delivered, not yet acknowledged)")?;
    writeln!(
        out,
        "retries      {retries} scheduled{}",
        next_retry.map(|at| format!(", next at {at}")).unwrap_or_default()
    )?;
    writeln!(out, "dead letters {dead_letters}{}", if dead_letters > 0 { " (see `fleet dlq list`)" } else { "" })?;
    writeln!(out, "consumers    {}", consumers.len())?;
    for consumer in &consumers {
        writeln!(out, "  {:<40} pending {:>6}  idle {:>8} ms", consumer.name, consumer.pending, consumer.idle_ms)?;
    }
    Ok(())
}

/// Every key matching `pattern`, found with SCAN (never KEYS).
async fn scan(redis: &mut ConnectionManager, pattern: &str) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut iter = redis.scan_match::<_, String>(pattern).await?;
    while let Some(key) = iter.next_item().await {
        found.push(key?);
    }
    Ok(found)
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

fn human_bytes(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

/// `fleet cache stats`: keys and memory by kind, hits and misses, tags.
pub async fn cache_stats(redis: &mut ConnectionManager, keys: &Keys, json: bool, reset: bool) -> anyhow::Result<()> {
    if reset {
        let _: () = redis.del(keys.cache_metrics()).await?;
    }
    let cached = scan(redis, &format!("{}*", keys.cache_namespace())).await?;
    let mut per_kind: std::collections::BTreeMap<&'static str, (u64, u64)> =
        Kind::ALL.iter().map(|kind| (kind.as_str(), (0, 0))).collect();
    for chunk in cached.chunks(500) {
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
    if json {
        let kinds: serde_json::Map<String, Value> = per_kind
            .iter()
            .map(|(kind, (count, bytes))| ((*kind).to_owned(), json!({ "keys": count, "memory_bytes": bytes })))
            .collect();
        return print_json(&json!({
            "kinds": kinds, "tags": tags, "hits": hits, "misses": misses, "stale": stale, "bypass": bypass,
            "hit_rate": hit_rate, "since": since, "revalidate_failures": number("revalidate_failures"),
        }));
    }
    let mut out = std::io::stdout().lock();
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
}

/// `fleet cache clear`: removes cached keys under the fleet's prefix only.
///
/// `tag` and `tenant` are literal names, checked before anything is
/// removed: `--tenant-id '*'` is refused, not a way to clear every school.
/// Only `pattern` is a glob.
pub async fn cache_clear(
    redis: &mut ConnectionManager,
    keys: &Keys,
    kind: Option<crate::config::ClearKind>,
    tag: Option<String>,
    tenant: Option<String>,
    pattern: Option<String>,
) -> anyhow::Result<()> {
    use crate::config::ClearKind;
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
            for chunk in scan(redis, &pattern).await?.chunks(500) {
                let gone: u64 = redis.unlink(chunk).await?;
                removed += gone;
            }
        }
        removed
    };
    println!("removed {removed} keys");
    Ok(())
}
