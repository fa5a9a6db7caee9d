//! The operator commands' arguments: `fleet status`, `fleet cache`,
//! `fleet dlq` and `fleet retries` (what they do is `crate::operator`).

use clap::{Args, Subcommand};

use super::connections::RedisArgs;
use crate::operator::cache::ClearKind;
use crate::redis::keys::Kind;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Keys and memory by kind, hits and misses, tags.
    Stats {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Start the hit and miss counts again from zero.
        #[arg(long)]
        reset: bool,
    },
    /// Remove cached keys (with SCAN, only under the fleet's prefix).
    Clear {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// What to clear: all, enrollments, statistics or dashboard.
        #[arg(value_parser = clear_kind_parser(), required_unless_present_any = ["tag", "pattern"])]
        kind: Option<ClearKind>,
        /// Invalidate one tag, e.g. course:2871345 (in every school, or in --tenant-id).
        /// A literal name (letters, digits, `:`, `-`, `_`, `.`), never a pattern.
        #[arg(long, conflicts_with_all = ["kind", "pattern"])]
        tag: Option<String>,
        /// The school whose tag to invalidate: a literal id, never a pattern.
        #[arg(long, requires = "tag")]
        tenant_id: Option<String>,
        /// Remove cache keys matching this glob pattern (Redis MATCH: `*`, `?`, `[…]`) under
        /// `<prefix>cache:`, e.g. '{184532}:*' (a school's keys). The only argument that takes a pattern.
        #[arg(long, conflicts_with_all = ["kind", "tag"])]
        pattern: Option<String>,
    },
}

/// `all` or a kind's name; the names come from [`Kind`] itself.
fn clear_kind_parser() -> impl clap::builder::TypedValueParser<Value = ClearKind> {
    let names = std::iter::once("all").chain(Kind::ALL.map(Kind::as_str));
    clap::builder::TypedValueParser::map(clap::builder::PossibleValuesParser::new(names), |name: String| {
        Kind::from_name(&name).map_or(ClearKind::All, ClearKind::Only)
    })
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: DlqFilter,
        /// Show at most this many.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter whole, its body pretty-printed.
    Show {
        /// The dead letter's id (first column of `fleet dlq list`).
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on the events stream with fresh attempts.
    Replay {
        #[command(flatten)]
        selection: DlqSelection,
        /// Print what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also print each dead letter replayed and the stream entry it became (by default, a
        /// summary only).
        #[arg(long)]
        verbose: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete dead letters for good.
    Purge {
        #[command(flatten)]
        selection: DlqSelection,
        /// Confirm the deletion; without it nothing is deleted.
        #[arg(long)]
        yes: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct DlqFilter {
    /// Only dead letters of this topic, e.g. enrollment.progress.
    #[arg(long)]
    pub topic: Option<String>,
    /// Only dead letters of this school (compared whole, never a pattern).
    #[arg(long)]
    pub tenant_id: Option<String>,
    /// Only dead letters of this error kind.
    #[arg(long, value_parser = ["malformed", "event", "crashed", "deleted"])]
    pub kind: Option<String>,
    /// Only dead letters that failed since this time: RFC 3339, or an age such as 30m, 12h, 7d.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, Args)]
pub struct DlqSelection {
    /// Dead-letter ids.
    #[arg(required_unless_present = "all")]
    pub ids: Vec<String>,
    /// Every dead letter that matches --topic, --tenant-id, --kind and --since.
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    #[command(flatten)]
    pub filter: DlqFilter,
}

/// A point in time: RFC 3339, or an age (`90s`, `30m`, `12h`, `7d`) before now.
pub(crate) fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(stamp) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(stamp.with_timezone(&chrono::Utc));
    }
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: i64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a time (2025-04-02T18:48:07Z) or an age (30m, 12h, 7d)"))?;
    let age = match unit {
        "s" => chrono::Duration::seconds(number),
        "m" => chrono::Duration::minutes(number),
        "h" => chrono::Duration::hours(number),
        "d" => chrono::Duration::days(number),
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    Ok(chrono::Utc::now() - age)
}

#[derive(Debug, Args)]
pub struct RetriesArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Show at most this many, the soonest due first.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
