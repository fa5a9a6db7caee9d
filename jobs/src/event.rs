//! What a Thinkific event is once decoded: the change a handled topic
//! makes to the fleet's state. Which topics are handled, and how each
//! payload reads, is each resource's own (`crate::enrollment`,
//! `crate::user`, `crate::order`, `crate::course`); [`RESOURCES`] lists them.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::course::Course;
use crate::enrollment::Enrollment;
use crate::envelope::{Envelope, EnvelopeError};
use crate::order::Order;
use crate::user::User;
use crate::version::Version;
use crate::{course, enrollment, order, user};

/// An event decoded from a stream entry, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub tenant_id: String,
    pub event_id: String,
    pub topic: String,
    pub created_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    pub stream_entry_id: String,
    pub change: Change,
}

/// What an event changes.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Enrollment(Enrollment),
    User(User),
    Order(Order),
    Course(Course),
    /// A topic the fleet records but does not apply.
    Unhandled,
}

/// Why a stream entry can never be applied: the event's own fault.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("invalid {topic} payload: {source}")]
    Payload { topic: String, source: serde_json::Error },
    #[error("{topic} event has no payload object")]
    MissingPayload { topic: String },
}

/// How a resource's payload reads into a change.
type Decode = fn(&str, Value) -> Result<Change, serde_json::Error>;

/// Each handled resource: its topics, and how their payload reads. A topic
/// in none of them is recorded and acknowledged, never applied.
pub(crate) const RESOURCES: [(&[&str], Decode); 4] = [
    (enrollment::TOPICS, |topic, payload| Enrollment::decode(topic, payload).map(Change::Enrollment)),
    (user::TOPICS, |topic, payload| User::decode(topic, payload).map(Change::User)),
    (order::TOPICS, |topic, payload| Order::decode(topic, payload).map(Change::Order)),
    (course::TOPICS, |topic, payload| Course::decode(topic, payload).map(Change::Course)),
];

#[derive(Deserialize)]
struct Body {
    payload: Option<Value>,
}

impl Event {
    /// Decodes a raw webhook body as the intake queued it.
    ///
    /// `tenant_id` is the tenant the intake recorded (the school the signing
    /// key is bound to, or the envelope's); the worker trusts it over the body.
    pub fn decode(
        body: &[u8],
        tenant_id: &str,
        received_at: DateTime<Utc>,
        stream_entry_id: &str,
    ) -> Result<Self, DecodeError> {
        let envelope = Envelope::parse(body)?;
        let topic = envelope.topic();
        let payload = || -> Result<Value, DecodeError> {
            let body: Body =
                serde_json::from_slice(body).map_err(|source| DecodeError::Payload { topic: topic.clone(), source })?;
            match body.payload {
                Some(payload @ Value::Object(_)) => Ok(payload),
                _ => Err(DecodeError::MissingPayload { topic: topic.clone() }),
            }
        };
        let change = match RESOURCES.iter().find(|(topics, _)| topics.contains(&topic.as_str())) {
            Some((_, decode)) => {
                decode(&topic, payload()?).map_err(|source| DecodeError::Payload { topic: topic.clone(), source })?
            }
            None => Change::Unhandled,
        };
        Ok(Self {
            tenant_id: tenant_id.to_owned(),
            event_id: envelope.id,
            topic,
            created_at: envelope.created_at,
            received_at,
            stream_entry_id: stream_entry_id.to_owned(),
            change,
        })
    }

    /// The version of the record this event writes (see [`Version`]).
    pub fn version(&self, rank: i16, payload_updated_at: Option<DateTime<Utc>>) -> Version {
        let event_created_at = self.created_at.unwrap_or(DateTime::UNIX_EPOCH);
        Version {
            rank,
            updated_at: payload_updated_at.unwrap_or(event_created_at),
            event_created_at,
            event_id: self.event_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TenantId;
    use crate::parse;

    fn decode(body: &str) -> Result<Event, DecodeError> {
        Event::decode(body.as_bytes(), "t", Utc::now(), "1-0")
    }

    /// `HANDLED_TOPICS` is what `Event::decode` handles: every topic of
    /// Thinkific's official list decodes an empty payload to `Unhandled`
    /// exactly when the list leaves it out (a handled topic needs its
    /// payload's fields, so an empty one is refused).
    #[test]
    fn the_handled_topics_are_the_topics_decode_handles() {
        let official = [
            "enrollment.trial",
            "enrollment.created",
            "enrollment.progress",
            "enrollment.completed",
            "user.signup",
            "user.signin",
            "user.updated",
            "order.created",
            "order_transaction.succeeded",
            "order_transaction.failed",
            "order_transaction.refunded",
            "subscription.cancelled",
            "subscription.past_due",
            "subscription.unpaid",
            "course.created",
            "course.updated",
            "course.deleted",
            "product.created",
            "product.updated",
            "product.deleted",
            "lesson.completed",
            "quiz.attempted",
            "lead.created",
            "plan.updated",
            "app.uninstalled",
        ];
        for topic in official {
            let (resource, action) = topic.split_once('.').expect("a topic");
            let body = format!(r#"{{"id":"1","resource":"{resource}","action":"{action}","payload":{{}}}}"#);
            let unhandled = matches!(decode(&body), Ok(Event { change: Change::Unhandled, .. }));
            assert_eq!(!unhandled, crate::HANDLED_TOPICS.contains(&topic), "{topic}");
        }
        for handled in crate::HANDLED_TOPICS.iter() {
            assert!(official.contains(handled), "{handled} is not one of Thinkific's topics");
        }
    }

    #[test]
    fn envelope_requires_id_resource_action() {
        assert!(matches!(Envelope::parse(b"[]"), Err(EnvelopeError::NotAnObject)));
        assert!(matches!(Envelope::parse(b"{"), Err(EnvelopeError::NotJson(_))));
        assert!(matches!(
            Envelope::parse(br#"{"resource":"user","action":"signup"}"#),
            Err(EnvelopeError::MissingField("id"))
        ));
        assert!(matches!(
            Envelope::parse(br#"{"id":"1","resource":"","action":"signup"}"#),
            Err(EnvelopeError::MissingField("resource"))
        ));
        let envelope = Envelope::parse(br#"{"id":12,"resource":"lesson","action":"completed","tenant_id":7}"#);
        let envelope = envelope.expect("a numeric id and tenant are accepted");
        assert_eq!((envelope.id.as_str(), envelope.topic().as_str()), ("12", "lesson.completed"));
        assert_eq!(envelope.tenant_id.as_ref().map(TenantId::as_str), Some("7"));
    }

    #[test]
    fn the_envelope_reads_like_a_parsed_object() {
        for not_an_object in [&b"[1,{\"a\":2}]"[..], b"3", b"-1.5", b"\"x\"", b"null", b"true"] {
            assert!(matches!(Envelope::parse(not_an_object), Err(EnvelopeError::NotAnObject)));
        }
        // The skipped payload must still be well-formed, and nothing may trail the object.
        for broken in [&br#"{"id":"1","resource":"a","action":"b","payload":{"x":}}"#[..], br#"{"id":"1"} x"#] {
            assert!(matches!(Envelope::parse(broken), Err(EnvelopeError::NotJson(_))));
        }
        let repeated = Envelope::parse(br#"{"id":"1","resource":"a","action":"b","id":"2","payload":[{"id":"3"}]}"#);
        assert_eq!(repeated.map(|envelope| envelope.id).ok().as_deref(), Some("2"), "the last `id` wins");
    }

    #[test]
    fn the_entity_is_the_payloads_id() {
        let entity = |body: &str| Envelope::parse(body.as_bytes()).expect("an envelope").entity;
        let example = include_str!("../../tests/fixtures/thinkific/enrollment.progress.json");
        let payload_id = serde_json::from_str::<Value>(example).expect("json")["payload"]["id"].clone();
        assert_eq!(entity(example), parse::string_or_number(&payload_id));
        assert!(entity(example).is_some());
        assert_eq!(
            entity(r#"{"id":"1","resource":"a","action":"b","payload":{"x":{"id":5},"id":7}}"#).as_deref(),
            Some("7")
        );
        for none in [
            r#"{"id":"1","resource":"a","action":"b"}"#,
            r#"{"id":"1","resource":"a","action":"b","payload":[{"id":3}]}"#,
            r#"{"id":"1","resource":"a","action":"b","payload":{"id":{"a":1}}}"#,
            r#"{"id":"1","resource":"a","action":"b","payload":{"name":"x"}}"#,
        ] {
            assert_eq!(entity(none), None, "{none}");
        }
    }

    #[test]
    fn ids_keep_their_exact_text_or_are_refused() {
        let envelope = Envelope::parse(br#"{"id":18446744073709551615,"resource":"a","action":"b","tenant_id":-3}"#);
        let envelope = envelope.expect("64-bit integers are exact");
        assert_eq!(envelope.id, "18446744073709551615");
        assert_eq!(envelope.tenant_id.as_ref().map(TenantId::as_str), Some("-3"));
        for bad in [
            r#"{"id":123456789012345678901234567890,"resource":"a","action":"b"}"#,
            r#"{"id":1.5,"resource":"a","action":"b"}"#,
            r#"{"id":"1","resource":"a","action":"b","tenant_id":1e3}"#,
            r#"{"id":"1","resource":"a","action":"b","tenant_id":"a:b"}"#,
            r#"{"id":"b:c","resource":"a","action":"b","tenant_id":"a"}"#,
            r#"{"id":"1","resource":"a","action":"b","tenant_id":"*"}"#,
        ] {
            assert!(Envelope::parse(bad.as_bytes()).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn unknown_topics_decode_as_unhandled() {
        let event = decode(r#"{"id":"1","resource":"quiz","action":"attempted","payload":{}}"#);
        assert_eq!(event.map(|e| e.change).ok(), Some(Change::Unhandled));
    }

    #[test]
    fn handled_topic_with_bad_payload_is_the_events_fault() {
        let missing = decode(r#"{"id":"1","resource":"enrollment","action":"created"}"#);
        assert!(matches!(missing, Err(DecodeError::MissingPayload { .. })));
        let bad = decode(r#"{"id":"1","resource":"enrollment","action":"progress","payload":{"id":"x"}}"#);
        assert!(matches!(bad, Err(DecodeError::Payload { .. })));
        // The error names the field.
        let user_id = decode(
            r#"{"id":"1","resource":"enrollment","action":"progress","payload":{"id":5,"course_id":2,"user_id":"x"}}"#,
        );
        let said = user_id.expect_err("a bad user_id").to_string();
        assert!(said.contains("user_id: invalid id"), "{said}");
        let courseless =
            decode(r#"{"id":"1","resource":"enrollment","action":"progress","payload":{"id":5,"user":{"id":1}}}"#);
        assert!(matches!(courseless, Err(DecodeError::Payload { .. })));
    }

    #[test]
    fn what_postgres_cannot_store_is_refused() {
        // Each was accepted, then refused by Postgres on every retry (SQLSTATE 22021 for U+0000 in
        // text, 22P05 in jsonb, 22008 before 4713 BC) and dead-lettered as `event`, not `malformed`.
        // tests/it/fuzz.rs found the NUL in a topic, jobs/tests/fuzz.rs the year -5000.
        let nul_topic = Envelope::parse(br#"{"id":"1","resource":"user\u0000","action":"signup","tenant_id":"t"}"#);
        assert!(matches!(nul_topic, Err(EnvelopeError::NulCharacter("resource"))));
        // JSON escapes in the body: a line break, a carriage return, ESC, a tab, a C1 control.
        for forged in
            [r"enrollment\nFORGED-LOG-LINE level=ERROR", r"enrollment\r", r"\u001b[31mred", r"a\tb", r"\u0085x"]
        {
            let body = format!(r#"{{"id":"1","resource":"{forged}","action":"created"}}"#);
            assert!(
                matches!(Envelope::parse(body.as_bytes()), Err(EnvelopeError::ControlCharacter("resource"))),
                "{forged}"
            );
            let body = format!(r#"{{"id":"1","resource":"user","action":"{forged}"}}"#);
            assert!(
                matches!(Envelope::parse(body.as_bytes()), Err(EnvelopeError::ControlCharacter("action"))),
                "{forged}"
            );
        }
        for body in [
            r#"{"id":"1","resource":"user","action":"signup","payload":{"id":1,"email":"a\u0000b"}}"#,
            r#"{"id":"1","resource":"user","action":"signup","payload":{"id":1,"roles":["\u0000"]}}"#,
            r#"{"id":"1","resource":"order","action":"created","payload":{"id":1,"items":[{"\u0000":1}]}}"#,
            r#"{"id":"1","resource":"course","action":"created","payload":{"id":1,"updated_at":"-5000-01-01"}}"#,
        ] {
            assert!(matches!(decode(body), Err(DecodeError::Payload { .. })), "{body}");
        }
        let old = decode(r#"{"id":"1","resource":"quiz","action":"attempted","created_at":"-5000-01-01"}"#);
        assert!(matches!(old, Err(DecodeError::Envelope(EnvelopeError::BadCreatedAt))));
    }
}
