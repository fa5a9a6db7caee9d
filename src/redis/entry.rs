//! The events stream's entry: the one place its fields are named, written
//! and read back. An entry lives in the events stream, in a shard's retry
//! set (as a JSON array of field/value pairs) and in the dead letters; the
//! same [`Entry::read`] reads it from each, and the Lua scripts get the
//! field names they need as arguments from here.
//!
//! An entry carries the event as the intake accepted it ([`EventFields`])
//! and, once it failed, its failure history ([`FailureRecord`]). `tenant`
//! is the school's tenant id, as the webhook body's `tenant_id` gives it;
//! the stream, `fleet dlq --json` and `--tenant` all call it `tenant`.

use chrono::{DateTime, SecondsFormat, Utc};

/// The name of each field, spelled here only.
pub mod field {
    pub(crate) const BODY: &str = "body";
    pub const TOPIC: &str = "topic";
    pub const TENANT: &str = "tenant";
    pub(crate) const EVENT_ID: &str = "event_id";
    pub(crate) const RECEIVED_AT: &str = "received_at";
    pub(crate) const HEADERS: &str = "headers";
    pub(crate) const SOURCE_ENTRY_ID: &str = "source_entry_id";
    pub(crate) const ATTEMPTS: &str = "attempts";
    pub(crate) const ERROR_KIND: &str = "error_kind";
    pub const ERROR: &str = "error";
    pub(crate) const FIRST_FAILED_AT: &str = "first_failed_at";
    pub(crate) const LAST_FAILED_AT: &str = "last_failed_at";
    pub(crate) const REPLAYED_FROM: &str = "replayed_from";
}

/// The fields an entry carries from one life to the next: the event itself
/// and the delivery headers kept at intake (a replay keeps only these).
pub(crate) const EVENT_FIELDS: [&str; 6] =
    [field::BODY, field::TOPIC, field::TENANT, field::EVENT_ID, field::RECEIVED_AT, field::HEADERS];

/// A time as every entry field writes it (RFC 3339, milliseconds, `Z`).
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An accepted webhook, as the intake appends it.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub body: &'a [u8],
    pub topic: &'a str,
    pub tenant: &'a str,
    pub event_id: &'a str,
    pub received_at: DateTime<Utc>,
    /// The delivery's headers the intake keeps for operators, as a JSON
    /// object (see `crate::intake::kept_headers`); none for an entry made
    /// elsewhere.
    pub headers: Option<&'a str>,
}

impl NewEntry<'_> {
    /// Hands its field/value pairs, in the order they are written, to `write`.
    pub fn with_pairs<T>(&self, write: impl FnOnce(Vec<(&'static str, &[u8])>) -> T) -> T {
        let received_at = timestamp(self.received_at);
        let headers = self.headers.map(str::as_bytes);
        write(event_pairs(self.body, self.topic, self.tenant, self.event_id, &received_at, headers))
    }
}

/// An event's field/value pairs, in the order they are written; headers
/// only where the intake kept some.
fn event_pairs<'a>(
    body: &'a [u8],
    topic: &'a str,
    tenant: &'a str,
    event_id: &'a str,
    received_at: &'a str,
    headers: Option<&'a [u8]>,
) -> Vec<(&'static str, &'a [u8])> {
    let mut pairs = vec![
        (field::BODY, body),
        (field::TOPIC, topic.as_bytes()),
        (field::TENANT, tenant.as_bytes()),
        (field::EVENT_ID, event_id.as_bytes()),
        (field::RECEIVED_AT, received_at.as_bytes()),
    ];
    if let Some(headers) = headers {
        pairs.push((field::HEADERS, headers));
    }
    pairs
}

/// The event an entry carries, as the intake accepted it. A field the entry
/// lacks reads as empty (an entry not written by the intake, or a dead
/// letter whose entry vanished).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFields {
    pub body: Vec<u8>,
    pub topic: String,
    pub tenant: String,
    pub event_id: String,
    pub received_at: String,
    /// Only where the intake kept some.
    pub headers: Option<Vec<u8>>,
}

impl EventFields {
    /// Its field/value pairs, headers only where kept.
    pub fn pairs(&self) -> Vec<(&'static str, &[u8])> {
        let headers = self.headers.as_deref();
        event_pairs(&self.body, &self.topic, &self.tenant, &self.event_id, &self.received_at, headers)
    }

    /// When the intake accepted it; none if the entry does not say.
    pub fn received_at(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.received_at).ok().map(|at| at.with_timezone(&Utc))
    }
}

/// Why and how often an event failed, as a dead letter or a scheduled
/// retry records it. An entry that never failed has the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureRecord {
    /// The events-stream entry the event was when it failed last.
    pub source_entry_id: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// `malformed`, `event`, `crashed` or `deleted` (`super::failures::FailureKind`).
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub first_failed_at: Option<String>,
    pub last_failed_at: Option<String>,
}

impl FailureRecord {
    /// Its field/value pairs, every one written.
    pub fn pairs(&self) -> Vec<(&'static str, Vec<u8>)> {
        let text = |value: &Option<String>| value.clone().unwrap_or_default().into_bytes();
        vec![
            (field::SOURCE_ENTRY_ID, text(&self.source_entry_id)),
            (field::ATTEMPTS, self.attempts.to_string().into_bytes()),
            (field::ERROR_KIND, text(&self.error_kind)),
            (field::ERROR, text(&self.error)),
            (field::FIRST_FAILED_AT, text(&self.first_failed_at)),
            (field::LAST_FAILED_AT, text(&self.last_failed_at)),
        ]
    }
}

/// One entry as read back from the events stream, a retry set or the dead
/// letters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Its stream id (none for a retry, which waits outside any stream).
    pub id: String,
    pub event: EventFields,
    pub failure: FailureRecord,
    /// The dead letter it was replayed from, if it was.
    pub replayed_from: Option<String>,
}

impl Entry {
    /// Reads an entry from its field/value pairs. Fields it does not know
    /// are ignored; text that is not UTF-8 is read lossily.
    pub fn read<N: AsRef<str>, V: AsRef<[u8]>>(id: String, pairs: impl IntoIterator<Item = (N, V)>) -> Self {
        let mut entry = Self { id, ..Self::default() };
        for (name, value) in pairs {
            let value = value.as_ref();
            let text = || String::from_utf8_lossy(value).into_owned();
            match name.as_ref() {
                field::BODY => entry.event.body = value.to_vec(),
                field::TOPIC => entry.event.topic = text(),
                field::TENANT => entry.event.tenant = text(),
                field::EVENT_ID => entry.event.event_id = text(),
                field::RECEIVED_AT => entry.event.received_at = text(),
                field::HEADERS => entry.event.headers = Some(value.to_vec()),
                field::SOURCE_ENTRY_ID => entry.failure.source_entry_id = Some(text()),
                field::ATTEMPTS => entry.failure.attempts = text().parse().unwrap_or(0),
                field::ERROR_KIND => entry.failure.error_kind = Some(text()),
                field::ERROR => entry.failure.error = Some(text()),
                field::FIRST_FAILED_AT => entry.failure.first_failed_at = Some(text()),
                field::LAST_FAILED_AT => entry.failure.last_failed_at = Some(text()),
                field::REPLAYED_FROM => entry.replayed_from = Some(text()),
                _ => {}
            }
        }
        entry
    }

    /// Reads an entry as Redis returns it.
    pub(crate) fn from_stream_id(stream_id: redis::streams::StreamId) -> Self {
        let pairs = stream_id.map.into_iter().filter_map(|(name, value)| match value {
            redis::Value::BulkString(bytes) => Some((name, bytes)),
            redis::Value::SimpleString(text) => Some((name, text.into_bytes())),
            _ => None,
        });
        Self::read(stream_id.id, pairs)
    }

    /// Reads a scheduled retry: a JSON array of field/value pairs (see
    /// `super::failures::schedule_retries`); nothing when it is not one.
    pub(crate) fn from_retry_member(member: &str) -> Self {
        let flat: Vec<String> = serde_json::from_str(member).unwrap_or_default();
        let pairs = flat.chunks(2).filter_map(|pair| Some((pair.first()?.clone(), pair.get(1)?.clone())));
        Self::read(String::new(), pairs)
    }

    /// A scheduled retry's member: its pairs as a JSON array of strings.
    pub(crate) fn retry_member(pairs: &[(&'static str, Vec<u8>)]) -> String {
        let flat: Vec<String> = pairs
            .iter()
            .flat_map(|(name, value)| [(*name).to_owned(), String::from_utf8_lossy(value).into_owned()])
            .collect();
        serde_json::Value::from(flat).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_what_was_written() {
        let at = DateTime::parse_from_rfc3339("2025-04-01T00:00:00.123Z").expect("a time").with_timezone(&Utc);
        let new = NewEntry {
            body: b"{}",
            topic: "user.signup",
            tenant: "184532",
            event_id: "42",
            received_at: at,
            headers: Some("{\"a\":\"b\"}"),
        };
        let entry = new.with_pairs(|pairs| Entry::read("1-0".to_owned(), pairs));
        new.with_pairs(|pairs| assert_eq!(entry.event.pairs(), pairs));
        assert_eq!(entry.event.received_at(), Some(at));
        assert_eq!(entry.failure, FailureRecord::default());

        let failure = FailureRecord {
            source_entry_id: Some("1-0".to_owned()),
            attempts: 3,
            error_kind: Some("event".to_owned()),
            error: Some("boom".to_owned()),
            first_failed_at: Some("a".to_owned()),
            last_failed_at: Some("b".to_owned()),
        };
        let mut pairs: Vec<(&str, Vec<u8>)> =
            entry.event.pairs().into_iter().map(|(name, value)| (name, value.to_vec())).collect();
        pairs.extend(failure.pairs());
        let member = Entry::retry_member(&pairs);
        let retry = Entry::from_retry_member(&member);
        assert_eq!((retry.event, retry.failure), (entry.event, failure));
        assert_eq!(Entry::from_retry_member("not json"), Entry::default());
    }
}
