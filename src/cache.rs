//! The dashboard cache in Redis: keys under tags, versioned writes, atomic
//! tag invalidation, stale-while-revalidate and a single-flight lock.
//!
//! Every key lives under `<prefix>cache:<tenant>:…`. A value is a hash of
//! `version`, `body` and `fresh_until`; it is served fresh until then and
//! stale (while one request recomputes it) for as long again, then expires.
//! A write carries the version of the data it was computed from and is
//! refused over a newer one, so a slow or reclaimed writer cannot put old
//! numbers back. A tag is a set of keys, `<prefix>tag:<tenant>:<tag>`,
//! that expires with the longest-lived of them; invalidating tags deletes
//! every key in them, in one script for small tags and in bounded chunks
//! for large ones (see [`invalidate`]).
//!
//! The Lua scripts live beside this file in `cache/`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use chrono::Utc;
use fleet_jobs::{Change, Event};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, RedisError, Script};
use serde_json::Value;

use crate::read_model::{Missing, PageRequest, Versioned, DEFAULT_PER_PAGE};
use crate::stream::Keys;

/// How long each kind of value stays fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    pub enrollments: Duration,
    pub statistics: Duration,
    pub dashboard: Duration,
}

impl Default for Ttls {
    /// The seed's `CACHE_TTL_*` defaults: 300 s, 600 s, 300 s.
    fn default() -> Self {
        Self {
            enrollments: Duration::from_secs(300),
            statistics: Duration::from_secs(600),
            dashboard: Duration::from_secs(300),
        }
    }
}

/// The kinds of cached values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Statistics,
    Dashboard,
    Enrollments,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Statistics, Kind::Dashboard, Kind::Enrollments];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Statistics => "statistics",
            Self::Dashboard => "dashboard",
            Self::Enrollments => "enrollments",
        }
    }
}

/// Key and tag names under the fleet's prefix.
#[derive(Debug, Clone)]
pub struct CacheKeys {
    prefix: String,
}

impl CacheKeys {
    pub fn new(keys: &Keys) -> Self {
        Self { prefix: keys.prefix().to_owned() }
    }

    /// Every cache key starts with this.
    pub fn namespace(&self) -> String {
        format!("{}cache:", self.prefix)
    }

    pub fn statistics(&self, tenant: &str, course: i64) -> String {
        format!("{}cache:{tenant}:statistics:course:{course}", self.prefix)
    }

    pub fn dashboard(&self, tenant: &str) -> String {
        format!("{}cache:{tenant}:dashboard", self.prefix)
    }

    pub fn enrollments(&self, page: &PageRequest) -> String {
        format!(
            "{}cache:{}:enrollments:course:{}:page:{}:per:{}",
            self.prefix, page.tenant_id, page.course_id, page.page, page.per_page
        )
    }

    /// The pattern matching every key of `kind`.
    pub fn pattern(&self, kind: Kind) -> String {
        format!("{}cache:*:{}*", self.prefix, kind.as_str())
    }

    /// The kind of a cache key, read back from its name.
    pub fn kind_of(&self, key: &str) -> Option<Kind> {
        let rest = key.strip_prefix(&self.namespace())?;
        let (_tenant, rest) = rest.split_once(':')?;
        Kind::ALL.into_iter().find(|kind| rest.starts_with(kind.as_str()))
    }

    pub fn tag(&self, tenant: &str, tag: &str) -> String {
        format!("{}tag:{tenant}:{tag}", self.prefix)
    }

    /// The (tenant, tag) a tag set's key names, read back from it.
    pub fn tag_of<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str)> {
        key.strip_prefix(&self.prefix)?.strip_prefix("tag:")?.split_once(':')
    }

    pub fn tags_pattern(&self) -> String {
        format!("{}tag:*", self.prefix)
    }

    fn lock(&self, key: &str) -> String {
        format!("{}lock:{}", self.prefix, key.strip_prefix(&self.prefix).unwrap_or(key))
    }

    pub fn metrics(&self) -> String {
        format!("{}cache-metrics", self.prefix)
    }

    /// The read API's request counter for one client in one rate-limit
    /// window: a token (by its fingerprint, never the token itself), a
    /// client address, or both.
    pub fn rate_limit(&self, token_fingerprint: Option<&str>, client: Option<IpAddr>, window: u64) -> String {
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
}

/// The tags a value is registered under; `<tag>` without the tenant.
pub mod tags {
    pub const DASHBOARD: &str = "dashboard";

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
    pub const MAX_LEN: usize = 128;

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

/// What a batch touched: the tags to invalidate and the keys to prewarm.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    /// (tenant, tag)
    pub tags: BTreeSet<(String, String)>,
    /// (tenant, course)
    pub courses: BTreeSet<(String, i64)>,
    pub tenants: BTreeSet<String>,
}

impl Touched {
    pub fn of(events: &[Event]) -> Self {
        let mut touched = Self::default();
        for event in events {
            let tenant = &event.tenant_id;
            let mut tag = |tag: String| touched.tags.insert((tenant.clone(), tag));
            match &event.change {
                Change::Enrollment(enrollment) => {
                    tag(tags::enrollment(enrollment.id));
                    tag(tags::DASHBOARD.to_owned());
                    if let Some(user) = enrollment.user_id.or(enrollment.user.as_ref().map(|user| user.id)) {
                        tag(tags::user(user));
                    }
                    if let Some(course) = enrollment.course_id.or(enrollment.course.as_ref().map(|course| course.id)) {
                        tag(tags::course(course));
                        touched.courses.insert((tenant.clone(), course));
                    }
                    touched.tenants.insert(tenant.clone());
                }
                Change::Course(course) => {
                    tag(tags::course(course.id));
                    tag(tags::DASHBOARD.to_owned());
                    touched.courses.insert((tenant.clone(), course.id));
                    touched.tenants.insert(tenant.clone());
                }
                Change::User(user) => {
                    tag(tags::user(user.id));
                }
                Change::Order(order) => {
                    tag(tags::order(order.id));
                    if let Some(user) = order.user_id.or(order.user.as_ref().map(|user| user.id)) {
                        tag(tags::user(user));
                    }
                }
                Change::Unhandled => {}
            }
        }
        touched
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    pub fn merge(&mut self, other: Touched) {
        self.tags.extend(other.tags);
        self.courses.extend(other.courses);
        self.tenants.extend(other.tenants);
    }

    /// `<tenant>:<tag>`, as the revalidation hook receives them.
    pub fn tag_names(&self) -> Vec<String> {
        self.tags.iter().map(|(tenant, tag)| format!("{tenant}:{tag}")).collect()
    }
}

/// A value to cache under `key`, registered under `tags`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub tags: Vec<String>,
    pub ttl: Duration,
    pub value: Versioned,
}

const PUT_SCRIPT: &str = include_str!("cache/put.lua");

/// Writes each entry unless a newer version is stored; returns how many
/// were written. One round trip for all of them.
pub async fn put(conn: &mut ConnectionManager, entries: &[Entry]) -> Result<usize, RedisError> {
    if entries.is_empty() {
        return Ok(0);
    }
    let script = Script::new(PUT_SCRIPT);
    // Load once, then EVALSHA in a pipeline.
    let _: String = script.prepare_invoke().load_async(conn).await?;
    let now = Utc::now().timestamp_millis();
    let mut pipe = redis::pipe();
    for entry in entries {
        let ttl = entry.ttl.as_millis() as i64;
        pipe.cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(1 + entry.tags.len())
            .arg(&entry.key)
            .arg(&entry.tags)
            .arg(entry.value.version)
            .arg(entry.value.body.to_string())
            .arg(now + ttl)
            .arg(ttl * 2);
    }
    let written: Vec<i64> = pipe.query_async(conn).await?;
    Ok(written.into_iter().filter(|written| *written == 1).count())
}

const INVALIDATE_SCRIPT: &str = include_str!("cache/invalidate.lua");

/// The most cached keys one invalidation script deletes: about a
/// millisecond of Redis time.
pub const INVALIDATION_CHUNK: u64 = 1000;

/// Invalidates tag sets (full key names): deletes every key registered
/// under them and the sets; returns how many cached keys went.
///
/// Redis runs one script at a time and nothing else meanwhile, so one
/// script over a tag of a million keys would stall every client for
/// seconds. Each call therefore deletes at most [`INVALIDATION_CHUNK`]
/// keys, and this loops until the sets are empty. Tags with fewer members
/// in all (the common case: a course, a user) still go in one atomic call.
/// The price, for larger tags only: between two calls a reader can still
/// get a value of the tag that is not deleted yet, exactly what it would
/// have got just before the invalidation, and a value cached again
/// meanwhile may be deleted by a later call and recomputed on its next miss.
pub async fn invalidate(conn: &mut ConnectionManager, tag_keys: &[String]) -> Result<u64, RedisError> {
    if tag_keys.is_empty() {
        return Ok(0);
    }
    let script = Script::new(INVALIDATE_SCRIPT);
    let mut removed = 0;
    loop {
        let (deleted, left): (u64, u64) = script.key(tag_keys).arg(INVALIDATION_CHUNK).invoke_async(conn).await?;
        removed += deleted;
        if left == 0 {
            return Ok(removed);
        }
    }
}

/// What the cache holds for a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Fresh(Versioned),
    Stale(Versioned),
    Missing,
}

pub async fn get(conn: &mut ConnectionManager, key: &str) -> Result<Lookup, RedisError> {
    let (version, body, fresh_until): (Option<i64>, Option<String>, Option<i64>) =
        redis::cmd("HMGET").arg(key).arg("version").arg("body").arg("fresh_until").query_async(conn).await?;
    let (Some(version), Some(body), Some(fresh_until)) = (version, body, fresh_until) else {
        return Ok(Lookup::Missing);
    };
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return Ok(Lookup::Missing);
    };
    let value = Versioned { version, body };
    Ok(if Utc::now().timestamp_millis() < fresh_until { Lookup::Fresh(value) } else { Lookup::Stale(value) })
}

/// Takes the single-flight lock of `key` for `hold`; the token releases it.
pub async fn try_lock(
    conn: &mut ConnectionManager,
    keys: &CacheKeys,
    key: &str,
    hold: Duration,
) -> Result<Option<String>, RedisError> {
    let token = uuid::Uuid::new_v4().to_string();
    let taken: Option<String> = redis::cmd("SET")
        .arg(keys.lock(key))
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(hold.as_millis() as u64)
        .query_async(conn)
        .await?;
    Ok(taken.map(|_| token))
}

const UNLOCK_SCRIPT: &str = include_str!("cache/unlock.lua");

pub async fn unlock(conn: &mut ConnectionManager, keys: &CacheKeys, key: &str, token: &str) -> Result<(), RedisError> {
    let _: i64 = Script::new(UNLOCK_SCRIPT).key(keys.lock(key)).arg(token).invoke_async(conn).await?;
    Ok(())
}

/// Counters behind `fleet cache stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Stale,
    Bypass,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Stale => "STALE",
            Self::Bypass => "BYPASS",
        }
    }

    fn counter(self) -> &'static str {
        match self {
            Self::Hit => "hits",
            Self::Miss => "misses",
            Self::Stale => "stale",
            Self::Bypass => "bypass",
        }
    }
}

/// Counts one read; the first count sets `since`.
pub async fn count(conn: &mut ConnectionManager, keys: &CacheKeys, outcome: Outcome) -> Result<(), RedisError> {
    let mut pipe = redis::pipe();
    pipe.hset_nx(keys.metrics(), "since", Utc::now().to_rfc3339())
        .ignore()
        .hincr(keys.metrics(), outcome.counter(), 1)
        .ignore();
    pipe.query_async::<()>(conn).await
}

/// Counts a failed revalidation call.
pub async fn count_revalidation_failure(conn: &mut ConnectionManager, keys: &CacheKeys) -> Result<(), RedisError> {
    conn.hincr(keys.metrics(), "revalidate_failures", 1).await
}

/// One value the dashboard reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Cached {
    Statistics { tenant: String, course: i64 },
    Dashboard { tenant: String },
    Enrollments(PageRequest),
}

impl Cached {
    pub fn key(&self, keys: &CacheKeys) -> String {
        match self {
            Self::Statistics { tenant, course } => keys.statistics(tenant, *course),
            Self::Dashboard { tenant } => keys.dashboard(tenant),
            Self::Enrollments(page) => keys.enrollments(page),
        }
    }

    /// The values the dashboard reads after a batch: each touched course's
    /// statistics and first page of enrollments, each touched school's dashboard.
    pub fn touched_by(touched: &Touched) -> Vec<Self> {
        let courses = touched.courses.iter().flat_map(|(tenant, course)| {
            [
                Self::Statistics { tenant: tenant.clone(), course: *course },
                Self::Enrollments(PageRequest {
                    tenant_id: tenant.clone(),
                    course_id: *course,
                    page: 1,
                    per_page: DEFAULT_PER_PAGE,
                }),
            ]
        });
        let schools = touched.tenants.iter().map(|tenant| Self::Dashboard { tenant: tenant.clone() });
        courses.chain(schools).collect()
    }

    /// Computes `items` from Postgres, one query per kind, as entries ready
    /// to cache (key, tags, TTL and versioned value). Items about a school,
    /// course or page that does not exist are left out: nothing is cached
    /// for them.
    pub async fn compute(
        db: &sqlx::PgPool,
        keys: &CacheKeys,
        ttls: &Ttls,
        items: &[Cached],
    ) -> Result<Vec<Entry>, sqlx::Error> {
        Ok(Self::compute_each(db, keys, ttls, items).await?.into_iter().flatten().collect())
    }

    /// Like [`Cached::compute`], with one outcome per item in the order
    /// asked: its entry, or what it is about that does not exist.
    pub async fn compute_each(
        db: &sqlx::PgPool,
        keys: &CacheKeys,
        ttls: &Ttls,
        items: &[Cached],
    ) -> Result<Vec<Result<Entry, Missing>>, sqlx::Error> {
        let mut courses = Vec::new();
        let mut tenants = Vec::new();
        let mut pages = Vec::new();
        for item in items {
            match item {
                Self::Statistics { tenant, course } => courses.push((tenant.clone(), *course)),
                Self::Dashboard { tenant } => tenants.push(tenant.clone()),
                Self::Enrollments(page) => pages.push(page.clone()),
            }
        }
        let mut courses_found =
            if courses.is_empty() { Vec::new() } else { crate::read_model::course_statistics(db, &courses).await? }
                .into_iter();
        let mut tenants_found =
            if tenants.is_empty() { Vec::new() } else { crate::read_model::dashboards(db, &tenants).await? }
                .into_iter();
        let mut pages_found =
            if pages.is_empty() { Vec::new() } else { crate::read_model::enrollment_pages(db, &pages).await? }
                .into_iter();
        let short = || sqlx::Error::Protocol("a read returned fewer rows than asked".into());
        items
            .iter()
            .map(|item| {
                Ok(match item {
                    Self::Statistics { tenant, course } => courses_found.next().ok_or_else(short)?.map(|value| {
                        let tags = vec![keys.tag(tenant, &tags::course(*course))];
                        Entry { key: keys.statistics(tenant, *course), tags, ttl: ttls.statistics, value }
                    }),
                    Self::Dashboard { tenant } => tenants_found.next().ok_or_else(short)?.map(|value| {
                        let tags = vec![keys.tag(tenant, tags::DASHBOARD)];
                        Entry { key: keys.dashboard(tenant), tags, ttl: ttls.dashboard, value }
                    }),
                    Self::Enrollments(page) => {
                        pages_found.next().ok_or_else(short)?.map(|value| page_entry(keys, ttls, page, value))
                    }
                })
            })
            .collect()
    }
}

/// A page of enrollments is registered under its course (every enrollment
/// change tags its course) and under every user it lists (a user's name or
/// email can change without an enrollment event).
fn page_entry(keys: &CacheKeys, ttls: &Ttls, page: &PageRequest, value: Versioned) -> Entry {
    let tenant = &page.tenant_id;
    let mut entry_tags = vec![keys.tag(tenant, &tags::course(page.course_id))];
    if let Some(rows) = value.body["enrollments"].as_array() {
        let users: BTreeSet<i64> = rows.iter().filter_map(|row| row["user_id"].as_i64()).collect();
        entry_tags.extend(users.into_iter().map(|id| keys.tag(tenant, &tags::user(id))));
    }
    Entry { key: keys.enrollments(page), tags: entry_tags, ttl: ttls.enrollments, value }
}
