//! The webhooks the intake refused, minute by minute, by answer and school:
//! what the operator console's intake page shows (a wrong signing key is
//! the likeliest misconfiguration, and shows there as 401s of a school).
//!
//! Each refusal adds one to the field `<answer>|<school>` of the minute's
//! hash `<prefix>intake-refusals:{activity}:<unix minute>`, kept for
//! [`KEPT`](super::activity::KEPT). The school is the one the request named
//! (its path, else its body's `tenant_id`), unverified when the signature
//! is not; a minute holds at most [`MAX_FIELDS`] fields, then counts further
//! schools as `other`. Redis being down (a 503) is recorded nowhere.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use redis::RedisError;

use super::activity::KEPT;
use super::keys::Keys;
use super::scripts;
use super::RedisConnection;

/// The most (answer, school) pairs one minute counts apart.
pub(crate) const MAX_FIELDS: usize = 200;
/// The school of a refusal that named none.
pub const NO_SCHOOL: &str = "none named";
/// Where schools past [`MAX_FIELDS`] are counted.
pub const OTHER_SCHOOLS: &str = "other";

/// Counts one refusal at `at`.
pub async fn record(
    redis: &mut RedisConnection,
    keys: &Keys,
    at: DateTime<Utc>,
    answer: &str,
    school: Option<&str>,
) -> Result<(), RedisError> {
    let field = format!("{answer}|{}", school.unwrap_or(NO_SCHOOL));
    scripts::RECORD_REFUSAL
        .key(keys.intake_refusals(at.timestamp().div_euclid(60)))
        .arg(field)
        .arg(format!("{answer}|{OTHER_SCHOOLS}"))
        .arg(MAX_FIELDS)
        .arg(KEPT.as_millis() as u64)
        .invoke_async(redis)
        .await
}

/// The refusals of the last `minutes` minutes up to `now`, added up by
/// (answer, school), the most first.
pub async fn recent(
    redis: &mut RedisConnection,
    keys: &Keys,
    now: DateTime<Utc>,
    minutes: i64,
) -> Result<Vec<(String, String, u64)>, RedisError> {
    let last = now.timestamp().div_euclid(60);
    let mut pipe = redis::pipe();
    for minute in (last - minutes + 1)..=last {
        pipe.hgetall(keys.intake_refusals(minute));
    }
    let hashes: Vec<BTreeMap<String, u64>> = pipe.query_async(redis).await?;
    let mut totals: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (field, count) in hashes.into_iter().flatten() {
        let (answer, school) = field.split_once('|').unwrap_or((field.as_str(), NO_SCHOOL));
        *totals.entry((answer.to_owned(), school.to_owned())).or_default() += count;
    }
    let mut recent: Vec<(String, String, u64)> =
        totals.into_iter().map(|((answer, school), count)| (answer, school, count)).collect();
    recent.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
    Ok(recent)
}
