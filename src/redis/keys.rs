//! The name of every Redis key, stream and cache tag the fleet owns.
//!
//! Everything lives under one prefix (`FLEET_KEY_PREFIX`, default `fleet:`):
//!
//! | name | what |
//! |---|---|
//! | `<prefix>events:{shard:<n>}` | the stream of accepted webhooks of shard `n` (`FLEET_STREAM_SHARDS` shards, from `0`; see `redis::shards`) |
//! | `<prefix>dead-letters:{shard:<n>}` | the stream of events of shard `n` given up on |
//! | `<prefix>retries:{shard:<n>}` | failed events of shard `n` waiting for their retry (sorted set, by due time) |
//! | `<prefix>seen:{shard:<n>}:<bucket>:<partition>` | fingerprints of events of shard `n` accepted in one time bucket, one partition of them (a set of 64-bit integers, expires as a whole; see `redis::dedup`) |
//! | `<prefix>stream-shards` | the most stream shards any process of the fleet was configured with: every worker consumes that many (see `redis::shards`) |
//! | `<prefix>consumer:<name>` | the lease that keeps a consumer name to one worker |
//! | `<prefix>cache:{<tenant>}:<kind>…` | a cached dashboard value |
//! | `<prefix>tag:{<tenant>}:<tag>` | the set of cached keys under one tag |
//! | `<prefix>lock:cache:{<tenant>}:…` | the single-flight lock of a cached key |
//! | `<prefix>cache-metrics` | hit and miss counters |
//! | `<prefix>ratelimit:…:<window>` | the read API's request counter for one client |
//! | `<prefix>schedule:<job>:<occurrence>` | the lock of one occurrence of a scheduled job; names its runner |
//! | `<prefix>schedule-runs` | the capped stream of scheduled runs (the run log) |
//! | `<prefix>cache-reads` | recently read cache values, for the rewarm job (sorted set, by last read) |
//! | `<prefix>activity:{activity}:<minute>` | what the workers did in one minute (unix minutes): events applied, freshness, backlog; a hash kept two hours, drawn by the console (see `redis::activity`) |
//! | `<prefix>console:session:<digest>` | a console session, by the SHA-256 of its cookie (a hash: CSRF token, start); expires with the session |
//! | `<prefix>console:sign-in-failures:<client>` | failed console sign-ins from one client address in the current five minutes |
//! | `<prefix>console:job:<id>` | a replay the console runs in the background: its progress and outcome (a hash, kept a day) |
//!
//! **Hash tags, for Redis Cluster.** A cluster keeps each key in the slot of
//! its hash tag (the text between its first `{` and the next `}`), and a
//! script or a MULTI/EXEC may only touch keys of one slot. So every key a
//! script or transaction touches together shares a tag:
//! - `{shard:<n>}`: a stream shard's events, its dead letters, its retries
//!   and its deduplication sets (the intake's script checks the sets and
//!   appends; promoting retries, replaying dead letters, dead-lettering and
//!   scheduling a retry each move an event between two of them atomically);
//! - `{<tenant>}`: a school's cache values, their tag sets and locks (one
//!   invalidation script deletes a tag's values; one write registers a value
//!   under its tags). A tenant id holds no `:`, so it never equals a shard's
//!   tag.
//!
//! - `{activity}`: the minutes of the workers' activity, read an hour at a
//!   time in one pipeline.
//!
//! Keys used alone (leases, counters, locks of scheduled jobs, the console's
//! sessions and jobs) need no tag.
//! On a single Redis the tags are only part of the names. The prefix may not
//! hold `{` or `}`, so the tag is always the one named here
//! (`docs/decisions/0017-redis-cluster.md`).
//!
//! This module depends on nothing else in the crate.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::str::FromStr;

/// The name of the consumer group every worker joins.
pub const GROUP: &str = "fleet-workers";

/// The prefix of every Redis key the fleet owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyPrefix {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() || text.len() > 64 {
            return Err("must be 1 to 64 characters".into());
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '?' || c == '[') {
            return Err("must not contain spaces, control characters or glob characters (* ? [)".into());
        }
        if text.contains(['{', '}']) {
            return Err("must not contain `{` or `}` (they mark Redis Cluster hash tags)".into());
        }
        Ok(Self(text.to_owned()))
    }
}

/// The kinds of cached values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Enrollments,
    Statistics,
    Dashboard,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Enrollments, Kind::Statistics, Kind::Dashboard];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Statistics => "statistics",
            Self::Dashboard => "dashboard",
            Self::Enrollments => "enrollments",
        }
    }

    /// The kind named `name` (as [`Kind::as_str`] spells it).
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// The names of the keys the fleet owns, all under its prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &KeyPrefix) -> Self {
        Self { prefix: prefix.as_str().to_owned() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The keys of stream shard `index`, all under its hash tag.
    pub fn shard(&self, index: u32) -> ShardKeys {
        ShardKeys { prefix: self.prefix.clone(), tag: format!("{{shard:{index}}}"), index }
    }

    /// The most stream shards any process of the fleet was configured with.
    pub fn stream_shards(&self) -> String {
        format!("{}stream-shards", self.prefix)
    }

    /// The lease that keeps a consumer name to one live worker.
    pub fn consumer_lease(&self, consumer: &str) -> String {
        format!("{}consumer:{consumer}", self.prefix)
    }

    /// The pattern matching every deduplication set.
    pub fn seen_pattern(&self) -> String {
        format!("{}seen:*", self.prefix)
    }

    /// Every cache key starts with this.
    pub(crate) fn cache_namespace(&self) -> String {
        format!("{}cache:", self.prefix)
    }

    pub fn statistics(&self, tenant: &str, course: i64) -> String {
        format!("{}cache:{{{tenant}}}:statistics:course:{course}", self.prefix)
    }

    pub fn dashboard(&self, tenant: &str) -> String {
        format!("{}cache:{{{tenant}}}:dashboard", self.prefix)
    }

    pub fn enrollments(&self, tenant: &str, course: i64, page: i64, per_page: i64) -> String {
        format!("{}cache:{{{tenant}}}:enrollments:course:{course}:page:{page}:per:{per_page}", self.prefix)
    }

    /// The pattern matching every cache key of `kind`.
    pub(crate) fn kind_pattern(&self, kind: Kind) -> String {
        format!("{}cache:*:{}*", self.prefix, kind.as_str())
    }

    /// The kind of a cache key, read back from its name.
    pub(crate) fn kind_of(&self, key: &str) -> Option<Kind> {
        let rest = key.strip_prefix(&self.cache_namespace())?;
        let (_tenant, rest) = rest.split_once(':')?;
        Kind::ALL.into_iter().find(|kind| rest.starts_with(kind.as_str()))
    }

    /// The set of cache keys registered under `tag` (see [`tags`]) in one school.
    pub fn tag(&self, tenant: &str, tag: &str) -> String {
        format!("{}tag:{{{tenant}}}:{tag}", self.prefix)
    }

    /// The (tenant, tag) a tag set's key names, read back from it.
    pub(crate) fn tag_of<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("tag:{")?;
        let (tenant, tag) = rest.split_once("}:")?;
        Some((tenant, tag))
    }

    pub(crate) fn tags_pattern(&self) -> String {
        format!("{}tag:*", self.prefix)
    }

    /// The single-flight lock of the cache key `key`.
    pub fn lock(&self, key: &str) -> String {
        format!("{}lock:{}", self.prefix, key.strip_prefix(&self.prefix).unwrap_or(key))
    }

    /// The hash of cache counters behind `fleet cache stats`.
    pub fn cache_metrics(&self) -> String {
        format!("{}cache-metrics", self.prefix)
    }

    /// The read API's request counter for one client in one rate-limit
    /// window: a token (by its fingerprint, never the token itself), a
    /// client address, or both.
    pub(crate) fn rate_limit(&self, token_fingerprint: Option<&str>, client: Option<IpAddr>, window: u64) -> String {
        let mut key = format!("{}ratelimit:", self.prefix);
        if let Some(fingerprint) = token_fingerprint {
            let _ = write!(key, "token:{fingerprint}:");
        }
        if let Some(client) = client {
            let _ = write!(key, "client:{client}:");
        }
        let _ = write!(key, "{window}");
        key
    }

    /// The lock of one occurrence (its unix second) of the scheduled job
    /// named `job`; its value names the runner that took it.
    pub fn schedule_lock(&self, job: &str, occurrence: i64) -> String {
        format!("{}schedule:{job}:{occurrence}", self.prefix)
    }

    /// The capped stream of scheduled runs: who ran which occurrence, and how it went.
    pub fn schedule_runs(&self) -> String {
        format!("{}schedule-runs", self.prefix)
    }

    /// The sorted set of recently read cache values (member: the value, as
    /// the rewarm job spells it; score: the last read, unix ms).
    pub fn cache_reads(&self) -> String {
        format!("{}cache-reads", self.prefix)
    }

    /// The hash of what the workers did in the minute `minute` (unix
    /// minutes): events applied, their freshness, the largest backlog seen.
    /// Every minute shares the hash tag `{activity}`, so an hour of them is
    /// read in one pipeline on a cluster too.
    pub fn activity(&self, minute: i64) -> String {
        format!("{}activity:{{activity}}:{minute}", self.prefix)
    }

    /// The webhooks the intake refused in one minute, by answer and school
    /// (`super::refusals`); beside the activity, in its slot.
    pub fn intake_refusals(&self, minute: i64) -> String {
        format!("{}intake-refusals:{{activity}}:{minute}", self.prefix)
    }

    /// The processes that reported their dependencies, by last report
    /// (`super::roles`).
    pub fn roles_seen(&self) -> String {
        format!("{}roles:{{activity}}:seen", self.prefix)
    }

    /// What each of those processes reported last.
    pub fn roles_reports(&self) -> String {
        format!("{}roles:{{activity}}:reports", self.prefix)
    }

    /// A console session, named by the SHA-256 (hex) of its cookie value, so
    /// that what Redis holds cannot be used as a cookie.
    pub(crate) fn console_session(&self, digest: &str) -> String {
        format!("{}console:session:{digest}", self.prefix)
    }

    /// Failed console sign-ins from one client address.
    pub(crate) fn console_sign_in_failures(&self, client: IpAddr) -> String {
        format!("{}console:sign-in-failures:{client}", self.prefix)
    }

    /// The progress and outcome of one background job of the console.
    pub(crate) fn console_job(&self, id: &str) -> String {
        format!("{}console:job:{id}", self.prefix)
    }
}

/// The keys of one stream shard, all under its hash tag `{shard:<n>}`, so
/// that the scripts and transactions moving an event between them run on
/// one Redis Cluster slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardKeys {
    prefix: String,
    tag: String,
    index: u32,
}

impl ShardKeys {
    /// Which shard: `0` to the shard count less one.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The stream of accepted webhooks of this shard.
    pub fn events(&self) -> String {
        format!("{}events:{}", self.prefix, self.tag)
    }

    /// The stream of this shard's events that could not be applied.
    pub fn dead_letters(&self) -> String {
        format!("{}dead-letters:{}", self.prefix, self.tag)
    }

    /// This shard's failed events waiting for their retry, scored by due time (ms).
    pub fn retries(&self) -> String {
        format!("{}retries:{}", self.prefix, self.tag)
    }

    /// The set of fingerprints of this shard's events of one partition
    /// accepted in one time bucket (see `redis::dedup`). One enqueue reads
    /// the sets of one partition in up to five buckets and appends to the
    /// events stream in the same script: they share the shard's tag.
    pub(crate) fn seen(&self, bucket: u64, partition: u64) -> String {
        format!("{}seen:{}:{bucket}:{partition}", self.prefix, self.tag)
    }
}

/// The part of `key` Redis Cluster hashes to choose its slot: the text
/// between the first `{` and the next `}` when it is not empty, else the
/// whole key. Keys with the same hash tag are in the same slot.
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(length) = key[open + 1..].find('}') {
            if length > 0 {
                return &key[open + 1..open + 1 + length];
            }
        }
    }
    key
}

/// The tags a cached value is registered under; `<tag>` without the tenant.
/// The revalidation hook receives them as `<tenant>:<tag>`.
pub mod tags {
    pub(crate) const DASHBOARD: &str = "dashboard";

    pub fn course(id: i64) -> String {
        format!("course:{id}")
    }

    pub fn user(id: i64) -> String {
        format!("user:{id}")
    }

    pub fn enrollment(id: i64) -> String {
        format!("enrollment:{id}")
    }

    pub fn order(id: i64) -> String {
        format!("order:{id}")
    }

    /// The longest tag accepted from outside (an operator's `--tag`).
    pub(crate) const MAX_LEN: usize = 128;

    /// Checks a tag given from outside: 1 to [`MAX_LEN`] letters, digits,
    /// `:`, `-`, `_` or `.`, so it names one tag and is never a glob pattern.
    pub fn check(tag: &str) -> Result<(), String> {
        if tag.is_empty() || tag.len() > MAX_LEN {
            return Err(format!("a tag is 1 to {MAX_LEN} characters"));
        }
        if !tag.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b':' | b'-' | b'_' | b'.')) {
            return Err("a tag may only hold letters, digits, `:`, `-`, `_` and `.`".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefix_rules() {
        assert!("fleet:".parse::<KeyPrefix>().is_ok());
        for bad in ["", "a b", "fleet*", "fleet{1}:", &"x".repeat(65)] {
            assert!(bad.parse::<KeyPrefix>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_read_back() {
        let keys = Keys::new(&"p:".parse().expect("prefix"));
        assert_eq!(keys.kind_of(&keys.statistics("t", 1)), Some(Kind::Statistics));
        assert_eq!(keys.kind_of(&keys.enrollments("t", 1, 2, 20)), Some(Kind::Enrollments));
        assert_eq!(keys.kind_of(&keys.dashboard("t")), Some(Kind::Dashboard));
        assert_eq!(keys.tag_of(&keys.tag("t", "course:1")), Some(("t", "course:1")));
        assert_eq!(keys.lock(&keys.dashboard("t")), "p:lock:cache:{t}:dashboard");
        assert_eq!(Kind::from_name("dashboard"), Some(Kind::Dashboard));
        assert_eq!(keys.schedule_lock("reconcile", 1_700_000_000), "p:schedule:reconcile:1700000000");
        assert_eq!(keys.schedule_runs(), "p:schedule-runs");
        assert_eq!(keys.cache_reads(), "p:cache-reads");
        assert_eq!(keys.shard(0).seen(26_214, 7), "p:seen:{shard:0}:26214:7");
        assert_eq!(keys.shard(2).events(), "p:events:{shard:2}");
        assert_eq!(keys.stream_shards(), "p:stream-shards");
        assert_eq!(keys.seen_pattern(), "p:seen:*");
        assert_eq!(keys.activity(29_000_000), "p:activity:{activity}:29000000");
        assert_eq!(keys.console_session("ab12"), "p:console:session:ab12");
        assert_eq!(keys.console_sign_in_failures([127, 0, 0, 1].into()), "p:console:sign-in-failures:127.0.0.1");
        assert_eq!(keys.console_job("j1"), "p:console:job:j1");
    }

    #[test]
    fn keys_moved_together_share_a_slot() {
        let keys = Keys::new(&"p:".parse().expect("prefix"));
        let shard = keys.shard(2);
        let events = shard.events();
        let tag = hash_tag(&events);
        assert_eq!(tag, "shard:2");
        for key in [shard.dead_letters(), shard.retries(), shard.seen(1, 3)] {
            assert_eq!(hash_tag(&key), tag, "{key}");
        }
        assert_ne!(hash_tag(&keys.shard(1).events()), tag);
        let tenant = hash_tag(&keys.dashboard("184532")).to_owned();
        assert_eq!(tenant, "184532");
        for key in [
            keys.statistics("184532", 1),
            keys.enrollments("184532", 1, 1, 20),
            keys.tag("184532", "course:1"),
            keys.lock(&keys.dashboard("184532")),
        ] {
            assert_eq!(hash_tag(&key), tenant, "{key}");
        }
        assert_eq!(hash_tag("plain"), "plain");
        assert_eq!(hash_tag("a{}b{c}"), "a{}b{c}");
    }
}
