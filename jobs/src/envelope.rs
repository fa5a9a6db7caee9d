//! The envelope every Thinkific webhook shares (id, resource, action,
//! tenant, time, the payload's id), checked at intake before anything is
//! queued.

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
