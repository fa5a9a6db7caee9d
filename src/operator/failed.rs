//! An event that failed, as operators see it: a dead letter or a scheduled
//! retry. Both are one [`FailedEvent`], read from the stream entry they
//! carry (`crate::redis::entry::Entry`); only where it waits differs.

use serde::Serialize;
use serde_json::Value;

use super::output::shorten;
use crate::redis::entry::Entry;

/// A failed event, where it waits (`At`): [`InDeadLetters`] or [`InRetries`].
#[derive(Debug, Clone, Serialize)]
pub struct FailedEvent<At> {
    #[serde(flatten)]
    pub at: At,
    /// The stream shard it came from, or goes back to.
    pub shard: u32,
    pub event_id: String,
    pub topic: String,
    pub tenant: String,
    /// Attempts made so far.
    pub attempts: u32,
    pub error_kind: String,
    pub error: String,
    pub first_failed_at: String,
    pub last_failed_at: String,
    pub received_at: String,
    pub source_entry_id: String,
    /// The delivery headers the intake kept (a whole dead letter only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Value>,
    /// The body as Thinkific sent it (a whole dead letter only): JSON when
    /// it parses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// Where a dead letter waits: its `crate::operator::dlq::LetterId`, written out.
#[derive(Debug, Clone, Serialize)]
pub struct InDeadLetters {
    pub id: String,
}

/// When a retry goes back onto the events stream (RFC 3339).
#[derive(Debug, Clone, Serialize)]
pub struct InRetries {
    pub due_at: String,
}

/// A dead letter as operators see it.
pub(crate) type DeadLetterView = FailedEvent<InDeadLetters>;
/// A scheduled retry as operators see it.
pub(crate) type RetryView = FailedEvent<InRetries>;

impl<At> FailedEvent<At> {
    /// `entry` waiting `at` in `shard`; `whole` adds its headers and body.
    pub fn read(at: At, shard: u32, entry: &Entry, whole: bool) -> Self {
        let json_or_text = |raw: &[u8]| {
            serde_json::from_slice(raw).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(raw).into_owned()))
        };
        let (event, failure) = (&entry.event, &entry.failure);
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        Self {
            at,
            shard,
            event_id: event.event_id.clone(),
            topic: event.topic.clone(),
            tenant: event.tenant.clone(),
            attempts: failure.attempts,
            error_kind: text(&failure.error_kind),
            error: text(&failure.error),
            first_failed_at: text(&failure.first_failed_at),
            last_failed_at: text(&failure.last_failed_at),
            received_at: event.received_at.clone(),
            source_entry_id: text(&failure.source_entry_id),
            headers: whole.then(|| event.headers.as_deref().filter(|raw| !raw.is_empty()).map(json_or_text)).flatten(),
            body: whole.then(|| json_or_text(&event.body)),
        }
    }

    /// The header of the columns every table of failed events prints after
    /// where each waits (see [`FailedEvent::columns`]).
    pub fn column_titles() -> String {
        format!("{:<22} {:<10} {:<24} {:>8} {:<9} ERROR", "TOPIC", "TENANT", "EVENT", "ATTEMPTS", "KIND")
    }

    /// Its topic, school, event id, attempts, error kind and error, as a table row.
    pub fn columns(&self) -> String {
        format!(
            "{:<22} {:<10} {:<24} {:>8} {:<9} {}",
            shorten(&self.topic, 22),
            shorten(&self.tenant, 10),
            shorten(&self.event_id, 24),
            self.attempts,
            self.error_kind,
            shorten(&self.error, 80)
        )
    }
}
