//! Lenient field parsers for Thinkific payloads.
//!
//! Thinkific's payloads are not strict about types: ids arrive as numbers or
//! strings, `percentage_completed` is a string on either a 0–1 or a 0–100
//! scale, and dates come with or without a time. These helpers accept every
//! form seen in the wild and reject anything else with a message that names
//! the value.
//!
//! What they accept must also be storable: Postgres `text` and `jsonb` hold
//! no U+0000 and `timestamptz` starts in 4713 BC, so such values are
//! rejected here, where the worker dead-letters the event as malformed at
//! once, instead of being refused by Postgres on every retry.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Reads a payload into `T`; an error names the field it is about
/// (`user_id: invalid id "x"`), so a dead letter says which field to fix.
pub(crate) fn payload<T: serde::de::DeserializeOwned>(payload: Value) -> Result<T, serde_json::Error> {
    serde_path_to_error::deserialize(payload).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." {
            inner
        } else {
            serde::de::Error::custom(format!("{path}: {inner}"))
        }
    })
}

fn describe(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

/// A string or an integer, as a string (envelope ids, tenant ids).
///
/// A number is taken only when it is an integer that fits 64 bits, so its
/// text is exact; a float or a larger integer (which JSON parsing would
/// round) is refused rather than turned into another id.
pub fn string_or_number(value: &Value) -> Option<String> {
    match value {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) if number.is_i64() || number.is_u64() => Some(number.to_string()),
        _ => None,
    }
}

/// An integer id given as a number or a string of digits.
pub fn id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let value = Value::deserialize(deserializer)?;
    parse_id(&value).ok_or_else(|| serde::de::Error::custom(format!("invalid id {}", describe(&value))))
}

/// Like [`id`], for optional fields; `null` and absence are `None`.
pub fn optional_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    if value.is_null() {
        return Ok(None);
    }
    parse_id(&value).map(Some).ok_or_else(|| serde::de::Error::custom(format!("invalid id {}", describe(&value))))
}

fn parse_id(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number.as_i64().or_else(|| {
            number.as_f64().filter(|float| float.fract() == 0.0 && float.abs() < 9.0e15).map(|float| float as i64)
        }),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// A string, number or null as an optional string (order numbers, slugs).
/// A string holding U+0000 is rejected (see the module).
pub fn optional_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    if holds_nul(&value) {
        return Err(serde::de::Error::custom(format!("text holds U+0000: {}", describe(&value))));
    }
    Ok(match value {
        Value::Null => None,
        Value::String(text) => Some(text),
        other => Some(other.to_string()),
    })
}

/// Any JSON value stored as `jsonb` (roles, coupons, order items); `null`
/// and absence are `None`. A string or key holding U+0000 is rejected.
pub fn optional_json<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    if holds_nul(&value) {
        return Err(serde::de::Error::custom(format!("JSON holds U+0000: {}", describe(&value))));
    }
    Ok(Some(value).filter(|value| !value.is_null()))
}

/// Whether a string or key anywhere in `value` holds U+0000.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(key, value)| key.contains('\0') || holds_nul(value)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// `percentage_completed` on the fleet's single scale, 0–100.
///
/// Thinkific documents a 0.0–1.0 fraction but has been seen sending `"24.0"`:
/// a value above 1 is taken as a percentage already, anything else as a
/// fraction. Negative, non-finite or above-100 values are rejected.
pub fn percentage<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let value = Value::deserialize(deserializer)?;
    let raw = match &value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        Value::Null => Some(0.0),
        _ => None,
    };
    let invalid = || serde::de::Error::custom(format!("invalid percentage_completed {}", describe(&value)));
    let raw = raw.filter(|raw| raw.is_finite() && *raw >= 0.0).ok_or_else(invalid)?;
    let percent = if raw > 1.0 { raw } else { raw * 100.0 };
    if percent > 100.0 {
        return Err(invalid());
    }
    // Rounded to a millionth so 0.07 * 100 and "7.0" store the same number.
    Ok((percent * 1e6).round() / 1e6)
}

/// A timestamp: RFC 3339, a naive date-time taken as UTC, or a bare date.
pub fn optional_timestamp<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    match &value {
        Value::Null => Ok(None),
        Value::String(text) if text.trim().is_empty() => Ok(None),
        Value::String(text) => parse_timestamp(text.trim())
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp {}", describe(&value)))),
        _ => Err(serde::de::Error::custom(format!("invalid timestamp {}", describe(&value)))),
    }
}

/// The earliest year Postgres's `timestamptz` holds: 4713 BC. chrono reads
/// signed years back to -262144 (`"-5000-01-01"`); its latest, 262143, is
/// within Postgres's range (294276 AD).
const EARLIEST_YEAR: i32 = -4712;

/// A timestamp in any form [`optional_timestamp`] accepts, within
/// Postgres's range.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    parse_any_timestamp(text).filter(|stamp| stamp.year() >= EARLIEST_YEAR)
}

fn parse_any_timestamp(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(stamp) = DateTime::parse_from_rfc3339(text) {
        return Some(stamp.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return Some(naive.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|naive| naive.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize)]
    struct Percent(#[serde(deserialize_with = "percentage")] f64);

    fn percent(value: Value) -> Result<f64, serde_json::Error> {
        serde_json::from_value::<Percent>(value).map(|p| p.0)
    }

    #[test]
    fn percentage_accepts_both_scales() {
        assert_eq!(percent(json!("0.4")).unwrap_or_default(), 40.0);
        assert_eq!(percent(json!("1.0")).unwrap_or_default(), 100.0);
        assert_eq!(percent(json!("24.0")).unwrap_or_default(), 24.0);
        assert_eq!(percent(json!(0.07)).unwrap_or_default(), 7.0);
        assert_eq!(percent(json!(null)).unwrap_or(-1.0), 0.0);
    }

    #[test]
    fn percentage_rejects_nonsense() {
        for bad in [json!("abc"), json!("-0.5"), json!("100.5"), json!("NaN"), json!(true)] {
            assert!(percent(bad.clone()).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn timestamps_in_every_seen_form() {
        let expect = |text: &str, rfc: &str| {
            assert_eq!(
                parse_timestamp(text),
                DateTime::parse_from_rfc3339(rfc).ok().map(|t| t.with_timezone(&Utc)),
                "{text}"
            )
        };
        expect("2025-03-14T15:30:11.902Z", "2025-03-14T15:30:11.902Z");
        expect("2025-03-14T08:30:11-07:00", "2025-03-14T15:30:11Z");
        expect("2025-03-14 15:30:11", "2025-03-14T15:30:11Z");
        expect("2025-12-31", "2025-12-31T00:00:00Z");
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn timestamps_outside_postgres_range_are_refused() {
        // Found by jobs/tests/fuzz.rs; Postgres refuses them (SQLSTATE 22008) on every retry.
        assert_eq!(parse_timestamp("-5000-1-1"), None);
        assert_eq!(parse_timestamp("-4713-12-31T23:59:59Z"), None);
        assert!(parse_timestamp("-4712-01-01").is_some());
        assert!(parse_timestamp("0000-01-01").is_some());
        assert!(parse_timestamp("9999-12-31T23:59:59Z").is_some());
    }

    #[derive(Deserialize)]
    struct Stored {
        #[serde(default, deserialize_with = "optional_text")]
        text: Option<String>,
        #[serde(default, deserialize_with = "optional_json")]
        json: Option<Value>,
    }

    #[test]
    fn values_postgres_cannot_store_are_refused() {
        // Postgres refuses U+0000 in text (SQLSTATE 22021) and in jsonb (22P05).
        let stored = |value: Value| serde_json::from_value::<Stored>(value);
        assert!(stored(json!({"text": "a\u{0}b"})).is_err());
        assert!(stored(json!({"json": ["a", {"b": "\u{0}"}]})).is_err());
        assert!(stored(json!({"json": {"\u{0}": 1}})).is_err());
        let fine = stored(json!({"text": 12, "json": {"a": ["\\0"]}})).expect("storable");
        assert_eq!((fine.text.as_deref(), fine.json), (Some("12"), Some(json!({"a": ["\\0"]}))));
        let null = stored(json!({"json": null})).expect("null is absence");
        assert_eq!((null.text, null.json), (None, None));
    }
}
