//! What a Thinkific event is: the envelope every webhook shares, and the
//! decoded change that a handled topic makes to the fleet's state.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::ids::{check_id, IdError, TenantId};
use crate::parse;

/// The fields every Thinkific webhook body carries, checked at intake.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The event id: Thinkific's idempotency key.
    pub id: String,
    pub resource: String,
    pub action: String,
    /// The school, when the body names it.
    pub tenant_id: Option<TenantId>,
    pub created_at: Option<DateTime<Utc>>,
    /// What the event is about: its payload's `id` (an enrollment, a user,
    /// an order...), when the payload has one. Chooses the event's stream
    /// shard; never validated here, the worker reads the payload whole.
    pub entity: Option<String>,
}

/// Why a body is not a Thinkific event; the intake answers 400 with it.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("body is not valid JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("body lacks `{0}` (a non-empty string)")]
    MissingField(&'static str),
    #[error("`{0}` is longer than {MAX_ENVELOPE_FIELD_LEN} characters")]
    FieldTooLong(&'static str),
    /// Postgres `text` cannot hold U+0000, and the topic is stored.
    #[error("`{0}` holds U+0000")]
    NulCharacter(&'static str),
    /// The topic names a metric series and is written into log lines: a
    /// line break or a terminal escape in it would forge one.
    #[error("`{0}` holds a control character (a line break, a tab, an escape…)")]
    ControlCharacter(&'static str),
    #[error("`created_at` is not a timestamp")]
    BadCreatedAt,
    #[error(transparent)]
    BadId(#[from] IdError),
}

const MAX_ENVELOPE_FIELD_LEN: usize = 128;

impl Envelope {
    /// Parses the envelope of a raw webhook body.
    pub fn parse(body: &[u8]) -> Result<Self, EnvelopeError> {
        let EnvelopeFields(fields) = serde_json::from_slice(body)?;
        let object = fields.ok_or(EnvelopeError::NotAnObject)?;
        let field = |name: &'static str| -> Result<String, EnvelopeError> {
            let text = object.get(name).and_then(parse::string_or_number).ok_or(EnvelopeError::MissingField(name))?;
            if text.len() > MAX_ENVELOPE_FIELD_LEN {
                return Err(EnvelopeError::FieldTooLong(name));
            }
            if text.contains('\0') {
                return Err(EnvelopeError::NulCharacter(name));
            }
            Ok(text)
        };
        let id = field("id")?;
        check_id("id", &id)?;
        let topic_part = |name: &'static str| -> Result<String, EnvelopeError> {
            let text = field(name)?;
            if text.chars().any(char::is_control) {
                return Err(EnvelopeError::ControlCharacter(name));
            }
            Ok(text)
        };
        let resource = topic_part("resource")?;
        let action = topic_part("action")?;
        let tenant_id = match object.get("tenant_id") {
            None | Some(Value::Null) => None,
            Some(_) => Some(TenantId::parse(&field("tenant_id")?)?),
        };
        let created_at = match object.get("created_at") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(parse::parse_timestamp(text).ok_or(EnvelopeError::BadCreatedAt)?),
            Some(_) => return Err(EnvelopeError::BadCreatedAt),
        };
        let entity = object
            .get("payload")
            .and_then(parse::string_or_number)
            .filter(|entity| entity.len() <= MAX_ENVELOPE_FIELD_LEN);
        Ok(Self { id, resource, action, tenant_id, created_at, entity })
    }

    /// `resource.action`, e.g. `enrollment.progress`.
    pub fn topic(&self) -> String {
        format!("{}.{}", self.resource, self.action)
    }
}

/// The top-level fields of a body that the envelope reads, each as JSON
/// (the last one wins when a name repeats, as in a parsed object); `None`
/// when the body is JSON but not an object. The rest of the body, the
/// payload included, is checked to be well-formed JSON and skipped, so the
/// intake builds no value for it.
struct EnvelopeFields(Option<serde_json::Map<String, Value>>);

const ENVELOPE_FIELDS: [&str; 6] = ["id", "resource", "action", "tenant_id", "created_at", "payload"];
/// The index of `payload` in [`ENVELOPE_FIELDS`]: only its `id` is kept.
const PAYLOAD: usize = 5;

impl<'de> Deserialize<'de> for EnvelopeFields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EnvelopeVisitor).map(EnvelopeFields)
    }
}

/// A top-level key: one of [`ENVELOPE_FIELDS`] (by index), or another.
struct EnvelopeKey(Option<usize>);

impl<'de> Deserialize<'de> for EnvelopeKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = EnvelopeKey;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<EnvelopeKey, E> {
                Ok(EnvelopeKey(ENVELOPE_FIELDS.iter().position(|field| *field == name)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct EnvelopeVisitor;

/// The `id` of a payload object (null when it has none, or is no object);
/// the rest is checked to be well-formed JSON and skipped.
struct PayloadId(Value);

impl<'de> Deserialize<'de> for PayloadId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PayloadIdVisitor)
    }
}

struct PayloadIdVisitor;

impl<'de> serde::de::Visitor<'de> for PayloadIdVisitor {
    type Value = PayloadId;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut id = Value::Null;
        while let Some(IdKey(is_id)) = map.next_key()? {
            if is_id {
                id = map.next_value()?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(PayloadId(id))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(PayloadId(Value::Null))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(PayloadId(Value::Null))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(PayloadId(Value::Null))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(PayloadId(Value::Null))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(PayloadId(Value::Null))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(PayloadId(Value::Null))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(PayloadId(Value::Null))
    }
}

/// A payload key: whether it is `id`.
struct IdKey(bool);

impl<'de> Deserialize<'de> for IdKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = IdKey;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<IdKey, E> {
                Ok(IdKey(name == "id"))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> serde::de::Visitor<'de> for EnvelopeVisitor {
    type Value = Option<serde_json::Map<String, Value>>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = serde_json::Map::new();
        while let Some(EnvelopeKey(known)) = map.next_key()? {
            match known {
                Some(PAYLOAD) => {
                    let PayloadId(id) = map.next_value()?;
                    fields.insert(ENVELOPE_FIELDS[PAYLOAD].to_owned(), id);
                }
                Some(index) => {
                    fields.insert(ENVELOPE_FIELDS[index].to_owned(), map.next_value()?);
                }
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(Some(fields))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

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

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Enrollment {
    #[serde(deserialize_with = "parse::id")]
    pub id: i64,
    #[serde(default, deserialize_with = "parse::optional_id")]
    pub course_id: Option<i64>,
    #[serde(default, deserialize_with = "parse::optional_id")]
    pub user_id: Option<i64>,
    pub course: Option<EmbeddedCourse>,
    pub user: Option<EmbeddedUser>,
    #[serde(default, deserialize_with = "parse::percentage")]
    pub percentage_completed: f64,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub activated_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub expiry_date: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub free_trial: Option<bool>,
}

impl Enrollment {
    /// The learner: the enrollment's `user_id`, else its embedded user's id.
    pub fn learner_id(&self) -> Option<i64> {
        self.user_id.or(self.user.as_ref().map(|user| user.id))
    }

    /// The course: the enrollment's `course_id`, else its embedded course's id.
    pub fn course_of(&self) -> Option<i64> {
        self.course_id.or(self.course.as_ref().map(|course| course.id))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EmbeddedCourse {
    #[serde(deserialize_with = "parse::id")]
    pub id: i64,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EmbeddedUser {
    #[serde(deserialize_with = "parse::id")]
    pub id: i64,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub first_name: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub last_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct User {
    #[serde(deserialize_with = "parse::id")]
    pub id: i64,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub first_name: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub last_name: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub company: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_json")]
    pub roles: Option<Value>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Course {
    #[serde(deserialize_with = "parse::id")]
    pub id: i64,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub slug: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub updated_at: Option<DateTime<Utc>>,
    /// Set from the envelope for `course.deleted`, never read from the payload.
    #[serde(skip)]
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Order {
    #[serde(deserialize_with = "parse::id")]
    pub id: i64,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub order_number: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub payment_type: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_id")]
    pub amount_cents: Option<i64>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub billing_name: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_id")]
    pub product_id: Option<i64>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub product_name: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_json")]
    pub coupon: Option<Value>,
    #[serde(default, deserialize_with = "parse::optional_json")]
    pub items: Option<Value>,
    #[serde(default, deserialize_with = "parse::optional_id")]
    pub user_id: Option<i64>,
    pub user: Option<EmbeddedUser>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
}

impl Order {
    /// The learner: the order's `user_id`, else its embedded user's id.
    pub fn learner_id(&self) -> Option<i64> {
        self.user_id.or(self.user.as_ref().map(|user| user.id))
    }
}

#[derive(Deserialize)]
struct Body {
    payload: Option<Value>,
}

fn typed<T: serde::de::DeserializeOwned>(payload: Value, topic: &str) -> Result<T, DecodeError> {
    serde_json::from_value(payload).map_err(|source| DecodeError::Payload { topic: topic.to_owned(), source })
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
        let change = match (envelope.resource.as_str(), envelope.action.as_str()) {
            ("enrollment", "created" | "progress" | "completed" | "trial") => {
                let enrollment: Enrollment = typed(payload()?, &topic)?;
                if enrollment.course_of().is_none() || enrollment.learner_id().is_none() {
                    return Err(DecodeError::Payload {
                        topic,
                        source: serde::de::Error::custom("enrollment names no course or no user"),
                    });
                }
                Change::Enrollment(enrollment)
            }
            ("user", "signup" | "updated") => Change::User(typed(payload()?, &topic)?),
            ("order", "created") => Change::Order(typed(payload()?, &topic)?),
            ("course", "created" | "updated" | "deleted") => {
                let mut course: Course = typed(payload()?, &topic)?;
                course.deleted = envelope.action == "deleted";
                Change::Course(course)
            }
            _ => Change::Unhandled,
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
        for handled in crate::HANDLED_TOPICS {
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
