//! `fleet dlq list|show|replay|purge`: the dead letters, for an operator.
//!
//! Each stream shard keeps its own dead letters; these functions see the
//! dead letters of every shard as one list, oldest first, each named by a
//! [`LetterId`] (its stream id, after `<shard>/` beyond the first shard).
//!
//! The work is in [`find`], [`get`], [`select`], [`replay_selected`] and
//! [`purge_selected`]; [`list`], [`show`], [`replay`] and [`purge`] print
//! what they return. The operator console calls the same functions, so a
//! dead letter is listed, replayed and purged one way only.

use std::cmp::Ordering;
use std::fmt;
use std::io::Write;

use chrono::{DateTime, Utc};
use redis::{AsyncCommands, RedisError};
use serde::Serialize;
use serde_json::{json, Value};

use super::failed::{DeadLetterView, InDeadLetters};
use super::output::{count, summary, Output};
use crate::exit::{self, Exit};
use crate::redis::entry::Entry;
use crate::redis::failures;
use crate::redis::keys::Keys;
use crate::redis::shards::{self, ShardCount, MAX_SHARDS};
use crate::redis::stream;
use crate::redis::RedisConnection;

/// A dead letter's name across shards: the shard and its id in that
/// shard's dead-letter stream. Written `<id>` in the first shard (so a
/// one-shard fleet's ids are the stream's own) and `<shard>/<id>` in the
/// others, e.g. `1700000000000-0` and `2/1700000000000-0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LetterId {
    pub shard: u32,
    pub entry: String,
}

impl LetterId {
    /// Reads a written id; `None` when it is none (nothing then matches it).
    pub fn parse(text: &str) -> Option<Self> {
        let (shard, entry) = match text.split_once('/') {
            Some((shard, entry)) => (shard.parse().ok().filter(|shard| *shard < MAX_SHARDS)?, entry),
            None => (0, text),
        };
        let well_formed = |part: &str| !part.is_empty() && part.len() <= 20 && part.bytes().all(|b| b.is_ascii_digit());
        let (ms, seq) = entry.split_once('-').unwrap_or((entry, "0"));
        (well_formed(ms) && well_formed(seq)).then(|| Self { shard, entry: entry.to_owned() })
    }

    /// The order dead letters are listed in: by time (the stream id), then shard.
    fn order(&self, other: &Self) -> Ordering {
        stream::compare_ids(&self.entry, &other.entry).then(self.shard.cmp(&other.shard))
    }
}

impl fmt::Display for LetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shard {
            0 => f.write_str(&self.entry),
            shard => write!(f, "{shard}/{}", self.entry),
        }
    }
}

/// A dead letter read from its shard.
struct Letter {
    id: LetterId,
    entry: Entry,
}

impl Letter {
    fn new(shard: u32, entry: Entry) -> Self {
        Self { id: LetterId { shard, entry: entry.id.clone() }, entry }
    }

    /// As operators see it; `whole` adds its headers and body.
    fn view(&self, whole: bool) -> DeadLetterView {
        DeadLetterView::read(InDeadLetters { id: self.id.to_string() }, self.id.shard, &self.entry, whole)
    }
}

/// Which dead letters a command looks at. Every condition is compared
/// whole, never as a pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this topic, e.g. enrollment.progress.
    pub topic: Option<String>,
    /// Only this school.
    pub tenant: Option<String>,
    /// Only this error kind: `malformed`, `event`, `crashed` or `deleted`.
    pub error_kind: Option<String>,
    /// Only those dead-lettered since this time.
    pub since: Option<DateTime<Utc>>,
    /// Only those up to this dead letter (a [`LetterId`], inclusive): the
    /// console confirms "every one matching" up to the last one its preview
    /// showed, so a dead letter that arrives in between is not replayed
    /// unseen. Not an id: nothing matches.
    pub up_to: Option<String>,
}

impl Filter {
    fn matches(&self, letter: &Letter) -> bool {
        let entry = &letter.entry;
        let same = |wanted: &Option<String>, found: Option<&str>| wanted.as_deref().is_none_or(|w| found == Some(w));
        same(&self.topic, Some(&entry.event.topic))
            && same(&self.tenant, Some(&entry.event.tenant))
            && same(&self.error_kind, entry.failure.error_kind.as_deref())
            && self.since.is_none_or(|since| stream::compare_ids(&entry.id, &start_id(Some(since))).is_ge())
            && self
                .up_to
                .as_deref()
                .is_none_or(|last| LetterId::parse(last).is_some_and(|last| letter.id.order(&last).is_le()))
    }
}

/// The dead letters a replay or purge acts on: named ones, or all that match.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub ids: Vec<String>,
    pub all: bool,
    pub filter: Filter,
}

/// How many dead letters a replay or purge handles per atomic step.
pub(crate) const CHUNK: usize = 100;
/// How many dead letters one read of the stream takes.
const READ_BATCH: usize = 500;

fn start_id(since: Option<DateTime<Utc>>) -> String {
    since.map_or_else(|| "-".to_owned(), |since| format!("{}-0", since.timestamp_millis().max(0)))
}

/// One page of dead letters.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterPage {
    /// Oldest first.
    pub letters: Vec<DeadLetterView>,
    /// Whether more match after the last one.
    pub more: bool,
}

/// Dead letters matching `filter`, oldest first: at most `limit` of those
/// after the dead letter `after` (from the first when none).
pub async fn find(
    redis: &mut RedisConnection,
    keys: &Keys,
    filter: &Filter,
    after: Option<&str>,
    limit: usize,
) -> Result<DeadLetterPage, RedisError> {
    let entries = matching(redis, keys, filter, after, limit.saturating_add(1)).await?;
    let more = entries.len() > limit;
    let letters = entries.iter().take(limit).map(|entry| entry.view(false)).collect();
    Ok(DeadLetterPage { letters, more })
}

/// How many dead letters there are in all, in every shard.
pub async fn total(redis: &mut RedisConnection, keys: &Keys) -> Result<u64, RedisError> {
    Ok(by_shard_counts(redis, keys).await?.iter().map(|(_, count)| count).sum())
}

/// How many dead letters each shard holds: (shard, count), the first shard first.
pub(crate) async fn by_shard_counts(redis: &mut RedisConnection, keys: &Keys) -> Result<Vec<(u32, u64)>, RedisError> {
    let mut counts = Vec::new();
    for shard in fleet_shards(redis, keys).await? {
        counts.push((shard.index(), redis.xlen::<_, u64>(shard.dead_letters()).await?));
    }
    Ok(counts)
}

/// Every shard of the fleet's count.
async fn fleet_shards(
    redis: &mut RedisConnection,
    keys: &Keys,
) -> Result<Vec<crate::redis::keys::ShardKeys>, RedisError> {
    Ok(shards::fleet_count(redis, keys, ShardCount::ONE).await?.shards(keys))
}

/// Dead letters matching `filter` after `after`, oldest first (by time,
/// then shard), at most `limit`: up to `limit` read from each shard, then
/// merged.
async fn matching(
    redis: &mut RedisConnection,
    keys: &Keys,
    filter: &Filter,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Letter>, RedisError> {
    let after = after.map(LetterId::parse);
    let up_to = filter.up_to.as_deref().map(LetterId::parse);
    if matches!(after, Some(None)) || matches!(up_to, Some(None)) {
        // A malformed `after` or `up_to`: nothing matches.
        return Ok(Vec::new());
    }
    let (after, up_to) = (after.flatten(), up_to.flatten());
    let since = start_id(filter.since);
    let mut found = Vec::new();
    for shard in fleet_shards(redis, keys).await? {
        let index = shard.index();
        // Bounds in this shard's stream for the order (id, shard).
        let mut start = match &after {
            Some(after) if stream::compare_ids(&after.entry, &since).is_ge() => {
                if index > after.shard {
                    after.entry.clone()
                } else {
                    format!("({}", after.entry)
                }
            }
            _ => since.clone(),
        };
        let end = match &up_to {
            Some(up_to) if index <= up_to.shard => up_to.entry.clone(),
            Some(up_to) => format!("({}", up_to.entry),
            None => "+".to_owned(),
        };
        let mut from_shard = 0;
        'shard: loop {
            let page = match failures::read_dead_letters(redis, &shard, &start, &end, READ_BATCH).await {
                Ok(page) => page,
                // Bounds out of order (`(x` past `x`): nothing in between.
                Err(err) if err.code() == Some("ERR") => break,
                Err(err) => return Err(err),
            };
            let Some(last) = page.last() else { break };
            start = format!("({}", last.id);
            let last_page = page.len() < READ_BATCH;
            for entry in page {
                let letter = Letter::new(index, entry);
                if filter.matches(&letter) {
                    found.push(letter);
                    from_shard += 1;
                    if from_shard >= limit {
                        break 'shard;
                    }
                }
            }
            if last_page {
                break;
            }
        }
    }
    found.sort_by(|a, b| a.id.order(&b.id));
    found.truncate(limit);
    Ok(found)
}

/// One dead letter read by its written id; none when there is none.
async fn letter_by_id(redis: &mut RedisConnection, keys: &Keys, id: &str) -> Result<Option<Letter>, RedisError> {
    let Some(id) = LetterId::parse(id) else { return Ok(None) };
    match failures::dead_letter_by_id(redis, &keys.shard(id.shard), &id.entry).await {
        Ok(entry) => Ok(entry.map(|entry| Letter::new(id.shard, entry))),
        Err(err) if err.code() == Some("ERR") => Ok(None),
        Err(err) => Err(err),
    }
}

/// One dead letter, whole (its headers and body included); none when no
/// dead letter has this id, or it is not an id at all.
pub async fn get(redis: &mut RedisConnection, keys: &Keys, id: &str) -> Result<Option<DeadLetterView>, RedisError> {
    Ok(letter_by_id(redis, keys, id).await?.map(|letter| letter.view(true)))
}

/// The dead letters a selection names, as a replay or purge would find them.
#[derive(Debug, Clone, Serialize)]
pub struct Selected {
    pub letters: Vec<DeadLetterView>,
    /// Named ids that are not dead letters.
    pub missing: Vec<String>,
}

/// The dead letters a replay or purge acts on: the named ones that match the
/// filter (missing ids reported apart) or every one matching the filter.
/// Changes nothing: this is the dry run.
pub async fn select(redis: &mut RedisConnection, keys: &Keys, selection: &Selection) -> Result<Selected, RedisError> {
    let (entries, missing) = select_entries(redis, keys, selection).await?;
    Ok(Selected { letters: entries.iter().map(|entry| entry.view(false)).collect(), missing })
}

async fn select_entries(
    redis: &mut RedisConnection,
    keys: &Keys,
    selection: &Selection,
) -> Result<(Vec<Letter>, Vec<String>), RedisError> {
    if selection.all {
        return Ok((matching(redis, keys, &selection.filter, None, usize::MAX).await?, Vec::new()));
    }
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for id in &selection.ids {
        // A malformed id is a missing one, not a failure.
        match letter_by_id(redis, keys, id).await? {
            Some(letter) => found.push(letter),
            None => missing.push(id.clone()),
        }
    }
    found.retain(|entry| selection.filter.matches(entry));
    Ok((found, missing))
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ReplayReport {
    /// (dead-letter id, new events-stream id) of each one replayed, both
    /// written as [`LetterId`]s are (`<shard>/` beyond the first shard).
    pub replayed: Vec<(String, String)>,
    /// Named ids that are not dead letters, or that went before their turn.
    pub missing: Vec<String>,
}

/// Replays the selected dead letters onto the events stream, with fresh
/// attempts, [`CHUNK`] per atomic step (each entry is appended and removed
/// from the dead letters in one script, so an interrupted replay neither
/// loses nor doubles one). `progress` hears (handled, total) after each step.
pub(crate) async fn replay_selected(
    redis: &mut RedisConnection,
    keys: &Keys,
    selection: &Selection,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<ReplayReport, RedisError> {
    let (letters, mut missing) = select_entries(redis, keys, selection).await?;
    let total = letters.len();
    let mut replayed = Vec::new();
    let mut handled = 0;
    for (shard, ids) in by_shard(letters) {
        let written = |entry: String| LetterId { shard, entry }.to_string();
        for chunk in ids.chunks(CHUNK) {
            let outcome = failures::replay_dead_letters(redis, &keys.shard(shard), chunk).await?;
            replayed.extend(outcome.replayed.into_iter().map(|(from, to)| (written(from), written(to))));
            missing.extend(outcome.missing.into_iter().map(written));
            handled += chunk.len();
            progress(handled, total);
        }
    }
    Ok(ReplayReport { replayed, missing })
}

/// What a purge did.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PurgeReport {
    /// How many dead letters were deleted.
    pub purged: u64,
    /// The ids selected for deletion.
    pub ids: Vec<String>,
    /// Named ids that are not dead letters.
    pub missing: Vec<String>,
}

/// Deletes the selected dead letters for good, [`CHUNK`] per step.
pub(crate) async fn purge_selected(
    redis: &mut RedisConnection,
    keys: &Keys,
    selection: &Selection,
) -> Result<PurgeReport, RedisError> {
    let (letters, missing) = select_entries(redis, keys, selection).await?;
    let ids = letters.iter().map(|letter| letter.id.to_string()).collect();
    let mut purged = 0;
    for (shard, shard_ids) in by_shard(letters) {
        for chunk in shard_ids.chunks(CHUNK) {
            purged += failures::purge_dead_letters(redis, &keys.shard(shard), chunk).await?;
        }
    }
    Ok(PurgeReport { purged, ids, missing })
}

/// The stream ids of `letters`, by shard, each shard's in the order given.
fn by_shard(letters: Vec<Letter>) -> std::collections::BTreeMap<u32, Vec<String>> {
    let mut by_shard = std::collections::BTreeMap::<u32, Vec<String>>::new();
    for letter in letters {
        by_shard.entry(letter.id.shard).or_default().push(letter.id.entry);
    }
    by_shard
}

/// The dead letters as a table; a table cut short (e.g. by `| head`) is not an error.
fn print_table(out: &mut dyn Write, letters: &[DeadLetterView]) -> std::io::Result<()> {
    let _ = writeln!(out, "{:<20} {:<24} {}", "ID", "LAST FAILED", DeadLetterView::column_titles());
    for letter in letters {
        let _ = writeln!(out, "{:<20} {:<24} {}", letter.at.id, letter.last_failed_at, letter.columns());
    }
    Ok(())
}

fn not_found(missing: &[String]) -> anyhow::Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    Err(Exit { code: exit::NOT_FOUND, message: format!("no dead letter with id {}", missing.join(", ")) }.into())
}

/// `fleet dlq list`: dead letters matching `filter`, oldest first, at most `limit`.
pub async fn list(
    redis: &mut RedisConnection,
    keys: &Keys,
    filter: &Filter,
    limit: u32,
    output: Output,
) -> anyhow::Result<()> {
    let page = find(redis, keys, filter, None, limit as usize).await?;
    let counts = by_shard_counts(redis, keys).await?;
    let total: u64 = counts.iter().map(|(_, count)| count).sum();
    // The one shape of every listing: how many there are in all, and those shown.
    let data = json!({ "total": total, "dead_letters": page.letters, "more": page.more });
    output.data(&data, |out| print_table(out, &page.letters))?;
    if !output.is_json() {
        let per_shard = if counts.len() > 1 {
            let shards: Vec<String> = counts.iter().map(|(shard, count)| format!("shard {shard}: {count}")).collect();
            format!(" ({})", shards.join(", "))
        } else {
            String::new()
        };
        summary(&format!(
            "{} shown, {} in all{per_shard}",
            page.letters.len(),
            count(total, "dead letter", "dead letters")
        ));
    }
    Ok(())
}

/// `fleet dlq show`: one dead letter whole, its body pretty-printed.
pub async fn show(redis: &mut RedisConnection, keys: &Keys, id: String, output: Output) -> anyhow::Result<()> {
    let Some(letter) = get(redis, keys, &id).await? else {
        return not_found(&[id]);
    };
    output.data(&letter, |out| {
        for (name, value) in [
            ("id", &letter.at.id),
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
        match &letter.headers {
            Some(Value::Object(headers)) => {
                writeln!(out, "headers:")?;
                for (name, value) in headers {
                    writeln!(out, "  {name}: {}", value.as_str().unwrap_or_default())?;
                }
            }
            _ => writeln!(out, "headers:         none kept")?,
        }
        writeln!(out, "body:")?;
        writeln!(out, "{}", serde_json::to_string_pretty(letter.body.as_ref().unwrap_or(&Value::Null))?)
    })
}

/// `fleet dlq replay`: dead letters back onto the events stream, with fresh
/// attempts (only listed with `dry_run`); progress on stderr when there are
/// more than one step's worth, then a summary; each replayed id with
/// `verbose` (always in JSON).
pub async fn replay(
    redis: &mut RedisConnection,
    keys: &Keys,
    selection: &Selection,
    dry_run: bool,
    verbose: bool,
    output: Output,
) -> anyhow::Result<()> {
    if dry_run {
        let selected = select(redis, keys, selection).await?;
        let data = json!({ "dry_run": true, "would_replay": selected.letters, "missing": selected.missing });
        output.data(&data, |out| print_table(out, &selected.letters))?;
        if !output.is_json() {
            let would = count(selected.letters.len() as u64, "dead letter", "dead letters");
            summary(&format!("dry run: {would} would be replayed; nothing changed"));
        }
        return not_found(&selected.missing);
    }
    let mut progress = |handled: usize, total: usize| {
        if total > CHUNK {
            summary(&format!("replayed {handled}/{total}"));
        }
    };
    let report = replay_selected(redis, keys, selection, &mut progress).await?;
    let pairs: Vec<Value> =
        report.replayed.iter().map(|(from, to)| json!({ "dead_letter_id": from, "stream_entry_id": to })).collect();
    output.data(&json!({ "replayed": pairs, "missing": report.missing }), |out| {
        if verbose {
            for (from, to) in &report.replayed {
                writeln!(out, "replayed {from} as {to}")?;
            }
        }
        Ok(())
    })?;
    if !output.is_json() {
        let replayed = count(report.replayed.len() as u64, "dead letter", "dead letters");
        summary(&format!("{replayed} replayed onto the events stream"));
    }
    not_found(&report.missing)
}

/// `fleet dlq purge`: dead letters deleted for good, only with `yes`.
pub async fn purge(
    redis: &mut RedisConnection,
    keys: &Keys,
    selection: &Selection,
    yes: bool,
    output: Output,
) -> anyhow::Result<()> {
    if !yes {
        let selected = select(redis, keys, selection).await?;
        return Err(Exit {
            code: exit::USAGE,
            message: format!(
                "refusing to purge {} dead letters without --yes; nothing was deleted",
                selected.letters.len()
            ),
        }
        .into());
    }
    let report = purge_selected(redis, keys, selection).await?;
    output.data(&report, |out| writeln!(out, "purged {} dead letters", report.purged))?;
    not_found(&report.missing)
}
