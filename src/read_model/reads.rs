//! The record of what the dashboard read: the read API records every
//! cached read ([`record_read`]) in the sorted set `<prefix>cache-reads`,
//! scored with the time of its last read, and the scheduled rewarm job
//! (`crate::scheduled::rewarm`) keeps what was read recently fresh.
//!
//! A member is compact and self-describing: `s|<tenant>|<course>`,
//! `d|<tenant>`, `e|<tenant>|<course>|<page>|<per_page>`; numbers are read
//! from the right, so a `|` in a tenant id cannot shift them.

use chrono::Utc;
use redis::RedisError;

use super::cached::Cached;
use super::PageRequest;
use crate::redis::keys::Keys;
use crate::redis::RedisConnection;

/// The member of `<prefix>cache-reads` that stands for `item`.
pub fn member(item: &Cached) -> String {
    match item {
        Cached::Statistics { tenant, course } => format!("s|{tenant}|{course}"),
        Cached::Dashboard { tenant } => format!("d|{tenant}"),
        Cached::Enrollments(page) => {
            format!("e|{}|{}|{}|{}", page.tenant_id, page.course_id, page.page, page.per_page)
        }
    }
}

/// The value a member stands for; `None` for anything else.
pub fn parse_member(member: &str) -> Option<Cached> {
    let (kind, rest) = member.split_once('|')?;
    match kind {
        "d" if !rest.is_empty() => Some(Cached::Dashboard { tenant: rest.to_owned() }),
        "s" => {
            let (tenant, course) = rest.rsplit_once('|')?;
            Some(Cached::Statistics { tenant: non_empty(tenant)?, course: course.parse().ok()? })
        }
        "e" => {
            let mut fields = rest.rsplitn(4, '|');
            let per_page = fields.next()?.parse().ok()?;
            let page = fields.next()?.parse().ok()?;
            let course_id = fields.next()?.parse().ok()?;
            let tenant_id = non_empty(fields.next()?)?;
            Some(Cached::Enrollments(PageRequest { tenant_id, course_id, page, per_page }))
        }
        _ => None,
    }
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// Records that `item` was just read (a HIT, STALE or MISS alike): one
/// `ZADD` to `<prefix>cache-reads`. Call it for every cached read.
pub async fn record_read(redis: &mut RedisConnection, keys: &Keys, item: &Cached) -> Result<(), RedisError> {
    redis::cmd("ZADD")
        .arg(keys.cache_reads())
        .arg(Utc::now().timestamp_millis())
        .arg(member(item))
        .query_async(redis)
        .await
}
