//! `fleet dlq list|show|replay|purge`: the dead letters, for an operator.

use crate::redis::RedisConnection;
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::Serialize;
use serde_json::{json, Value};
use std::io::Write;

use super::output::{shorten, summary, Output};
use super::OperatorExit;
use crate::redis::failures;
use crate::redis::keys::Keys;
use crate::redis::stream::{self, Entry};

/// Which dead letters a command looks at.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this topic, e.g. enrollment.progress.
    pub topic: Option<String>,
    /// Only those that failed since this time.
    pub since: Option<DateTime<Utc>>,
}

/// The dead letters a replay or purge acts on: named ones, or all that match.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub ids: Vec<String>,
    pub all: bool,
    pub filter: Filter,
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
    redis: &mut RedisConnection,
    keys: &Keys,
    filter: &Filter,
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

/// The dead letters as a table; a table cut short (e.g. by `| head`) is not an error.
fn print_table(out: &mut dyn Write, letters: &[DeadLetterView]) -> std::io::Result<()> {
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
    Ok(())
}

/// The dead letters a replay or purge acts on: the named ones (missing ids
/// reported separately) or every one matching the filter.
async fn select(
    redis: &mut RedisConnection,
    keys: &Keys,
    selection: &Selection,
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

/// `fleet dlq list`: dead letters matching `filter`, oldest first, at most `limit`.
pub async fn list(
    redis: &mut RedisConnection,
    keys: &Keys,
    filter: &Filter,
    limit: u32,
    output: Output,
) -> anyhow::Result<()> {
    let entries = matching(redis, keys, filter, limit as usize).await?;
    let letters: Vec<DeadLetterView> = entries.iter().map(|entry| DeadLetterView::from_entry(entry, false)).collect();
    output.data(&letters, |out| print_table(out, &letters))?;
    if !output.is_json() {
        let total: u64 = redis.xlen(keys.dead_letters()).await?;
        summary(&format!("{} shown, {total} dead letters in all", letters.len()));
    }
    Ok(())
}

/// `fleet dlq show`: one dead letter whole, its body pretty-printed.
pub async fn show(redis: &mut RedisConnection, keys: &Keys, id: String, output: Output) -> anyhow::Result<()> {
    let entry = match failures::dead_letter_by_id(redis, keys, &id).await {
        Ok(entry) => entry,
        Err(err) if err.code() == Some("ERR") => None,
        Err(err) => return Err(err.into()),
    };
    let Some(entry) = entry else {
        return not_found(&[id]);
    };
    let letter = DeadLetterView::from_entry(&entry, true);
    output.data(&letter, |out| {
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
        writeln!(out, "{}", serde_json::to_string_pretty(letter.body.as_ref().unwrap_or(&Value::Null))?)
    })
}

/// `fleet dlq replay`: dead letters back onto the events stream, with fresh attempts.
pub async fn replay(
    redis: &mut RedisConnection,
    keys: &Keys,
    selection: &Selection,
    dry_run: bool,
    output: Output,
) -> anyhow::Result<()> {
    let (entries, missing) = select(redis, keys, selection).await?;
    if dry_run {
        let letters: Vec<DeadLetterView> =
            entries.iter().map(|entry| DeadLetterView::from_entry(entry, false)).collect();
        let data = json!({ "dry_run": true, "would_replay": letters, "missing": missing });
        output.data(&data, |out| print_table(out, &letters))?;
        if !output.is_json() {
            summary(&format!("dry run: {} dead letters would be replayed; nothing changed", letters.len()));
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
            summary(&format!("replayed {}/{}", replayed.len() + vanished.len(), ids.len()));
        }
    }
    let missing: Vec<String> = missing.into_iter().chain(vanished).collect();
    let pairs: Vec<Value> =
        replayed.iter().map(|(from, to)| json!({ "dead_letter_id": from, "stream_entry_id": to })).collect();
    output.data(&json!({ "replayed": pairs, "missing": missing }), |out| {
        for (from, to) in &replayed {
            writeln!(out, "replayed {from} as {to}")?;
        }
        Ok(())
    })?;
    if !output.is_json() {
        summary(&format!("{} dead letters replayed onto {}", replayed.len(), keys.events()));
    }
    not_found(&missing)
}

/// `fleet dlq purge`: dead letters deleted for good, only with `yes`.
pub async fn purge(
    redis: &mut RedisConnection,
    keys: &Keys,
    selection: &Selection,
    yes: bool,
    output: Output,
) -> anyhow::Result<()> {
    let (entries, missing) = select(redis, keys, selection).await?;
    if !yes {
        return Err(OperatorExit {
            code: OperatorExit::REFUSED,
            message: format!("refusing to purge {} dead letters without --yes; nothing was deleted", entries.len()),
        }
        .into());
    }
    let ids: Vec<String> = entries.into_iter().map(|entry| entry.id).collect();
    let mut purged = 0;
    for chunk in ids.chunks(CHUNK) {
        purged += failures::purge_dead_letters(redis, keys, chunk).await?;
    }
    output.data(&json!({ "purged": purged, "ids": ids, "missing": missing }), |out| {
        writeln!(out, "purged {purged} dead letters")
    })?;
    not_found(&missing)
}
