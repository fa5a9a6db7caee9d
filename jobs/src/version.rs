//! The version of a record's state, and how a batch keeps only the
//! greatest one per record before writing: what makes applying idempotent
//! and order-insensitive, whatever the source of the state.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// The order of the states of one record. A write lands only over a smaller
/// version, so the greatest version wins whatever the arrival order.
///
/// Fields compare in declaration order: a full record outranks a stub copied
/// from another resource's payload, then the payload's `updated_at`, then the
/// envelope's `created_at`, then the event id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub rank: i16,
    pub updated_at: DateTime<Utc>,
    pub event_created_at: DateTime<Utc>,
    pub event_id: String,
}

impl Version {
    pub const STUB: i16 = 0;
    pub const FULL: i16 = 1;
}

pub(crate) type Key = (String, i64);

/// Keeps, per record, the row of the greatest version seen.
pub(crate) struct Latest<R>(pub(crate) BTreeMap<Key, (Version, R)>);
impl<R> Latest<R> {
    pub(crate) fn new() -> Self {
        Self(BTreeMap::new())
    }

    pub(crate) fn offer(&mut self, key: Key, version: Version, row: R) {
        match self.0.get(&key) {
            Some((held, _)) if *held >= version => {}
            _ => {
                self.0.insert(key, (version, row));
            }
        }
    }
}

/// The version columns every versioned table shares, as parallel arrays.
#[derive(Default)]
pub(crate) struct VersionColumns {
    pub(crate) ranks: Vec<i16>,
    pub(crate) updated_at: Vec<DateTime<Utc>>,
    pub(crate) event_created_at: Vec<DateTime<Utc>>,
    pub(crate) event_ids: Vec<String>,
}

impl VersionColumns {
    pub(crate) fn push(&mut self, version: Version) {
        self.ranks.push(version.rank);
        self.updated_at.push(version.updated_at);
        self.event_created_at.push(version.event_created_at);
        self.event_ids.push(version.event_id);
    }
}
