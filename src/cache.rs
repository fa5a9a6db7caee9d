//! The dashboard cache in Redis: keys under tags, versioned writes, atomic
//! tag invalidation, stale-while-revalidate and a single-flight lock.
//!
//! Every key lives under `<prefix>cache:<tenant>:…`. A value is a hash of
//! `version`, `body` and `fresh_until`; it is served fresh until then and
//! stale (while one request recomputes it) for as long again, then expires.
//! A write carries the version of the data it was computed from and is
//! refused over a newer one, so a slow or reclaimed writer cannot put old
//! numbers back. A tag is a set of keys, `<prefix>tag:<tenant>:<tag>`;
//! invalidating tags deletes every key in them in one script.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use fleet_jobs::{Change, Event};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, RedisError, Script};
use serde_json::Value;

use crate::read_model::{PageRequest, Versioned, DEFAULT_PER_PAGE};
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

// KEYS[1]: the value; KEYS[2..]: its tag sets.
// ARGV[1]: version; ARGV[2]: body; ARGV[3]: fresh until (ms); ARGV[4]: expiry (ms);
// ARGV[5]: tag-set expiry (ms), the same for every write and longer than any
// value's, so a tag set never expires before a key registered in it.
// 1: written; 0: refused, a newer version is stored.
const PUT_SCRIPT: &str = r"
local stored = redis.call('HGET', KEYS[1], 'version')
if stored and tonumber(stored) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'body', ARGV[2], 'fresh_until', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[5])
end
return 1
";

/// How long a tag set lives after its last registration: twice the longest
/// value lifetime allowed (fresh + stale, 2 × the 86,400 s TTL maximum).
const TAG_SET_EXPIRY: Duration = Duration::from_secs(4 * 86_400);

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
            .arg(ttl * 2)
            .arg(TAG_SET_EXPIRY.as_millis() as u64);
    }
    let written: Vec<i64> = pipe.query_async(conn).await?;
    Ok(written.into_iter().filter(|written| *written == 1).count())
}

// KEYS: tag sets. Deletes every key registered under any of them, and the sets.
const INVALIDATE_SCRIPT: &str = r"
local removed = 0
for _, tag in ipairs(KEYS) do
  local members = redis.call('SMEMBERS', tag)
  for i = 1, #members, 500 do
    removed = removed + redis.call('DEL', unpack(members, i, math.min(i + 499, #members)))
  end
  redis.call('DEL', tag)
end
return removed
";

/// Invalidates tag sets (full key names) atomically; returns how many
/// cached keys went.
pub async fn invalidate(conn: &mut ConnectionManager, tag_keys: &[String]) -> Result<u64, RedisError> {
    if tag_keys.is_empty() {
        return Ok(0);
    }
    Script::new(INVALIDATE_SCRIPT).key(tag_keys).invoke_async(conn).await
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

const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

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
    /// to cache (key, tags, TTL and versioned value).
    pub async fn compute(
        db: &sqlx::PgPool,
        keys: &CacheKeys,
        ttls: &Ttls,
        items: &[Cached],
    ) -> Result<Vec<Entry>, sqlx::Error> {
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
        let mut entries = Vec::with_capacity(items.len());
        if !courses.is_empty() {
            for ((tenant, course), value) in crate::read_model::course_statistics(db, &courses).await? {
                let tags = vec![keys.tag(&tenant, &tags::course(course))];
                entries.push(Entry { key: keys.statistics(&tenant, course), tags, ttl: ttls.statistics, value });
            }
        }
        if !tenants.is_empty() {
            for (tenant, value) in crate::read_model::dashboards(db, &tenants).await? {
                let tags = vec![keys.tag(&tenant, tags::DASHBOARD)];
                entries.push(Entry { key: keys.dashboard(&tenant), tags, ttl: ttls.dashboard, value });
            }
        }
        if !pages.is_empty() {
            for (page, value) in pages.iter().zip(crate::read_model::enrollment_pages(db, &pages).await?) {
                entries.push(page_entry(keys, ttls, page, value));
            }
        }
        Ok(entries)
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
