//! Fuzz properties of the two parsers every webhook body meets: the intake's
//! [`Envelope::parse`] and the worker's [`Event::decode`].
//!
//! Whatever the bytes, neither panics; an event the worker decodes has an
//! envelope the intake accepts, with ids that [`check_id`] passes; and what
//! decodes is storable, so that Postgres never refuses it for its data (a
//! refusal costs retries and ends as an `event` dead letter, where a body
//! that can never be applied belongs in a `malformed` one at once).

mod support {
    pub mod mutations;
}

use chrono::{DateTime, Datelike, Utc};
use fleet_jobs::{check_id, Change, Envelope, Event};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;

use support::mutations::{self, example_with_arbitrary_payload, json, mutated_example};

const CASES: u32 = 384;

fn config() -> ProptestConfig {
    ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() }
}

/// Postgres's `timestamptz` runs from 4713 BC (year -4712) to 294276 AD.
fn storable_time(name: &str, stamp: Option<DateTime<Utc>>) -> Result<(), TestCaseError> {
    if let Some(stamp) = stamp {
        prop_assert!((-4712..=294_276).contains(&stamp.year()), "{name} {stamp} is outside Postgres's range");
    }
    Ok(())
}

/// Postgres `text` and `jsonb` cannot hold U+0000.
fn storable_text(name: &str, text: Option<&str>) -> Result<(), TestCaseError> {
    prop_assert!(!text.unwrap_or_default().contains('\0'), "{name} {text:?} holds U+0000, which Postgres refuses");
    Ok(())
}

fn storable_json(name: &str, value: Option<&Value>) -> Result<(), TestCaseError> {
    fn holds_nul(value: &Value) -> bool {
        match value {
            Value::String(text) => text.contains('\0'),
            Value::Array(items) => items.iter().any(holds_nul),
            Value::Object(map) => map.iter().any(|(key, value)| key.contains('\0') || holds_nul(value)),
            _ => false,
        }
    }
    prop_assert!(!value.is_some_and(holds_nul), "{name} {value:?} holds U+0000, which Postgres refuses");
    Ok(())
}

/// Whatever the worker would write for `event`, Postgres can store.
fn storable(event: &Event) -> Result<(), TestCaseError> {
    storable_text("topic", Some(&event.topic))?;
    storable_time("created_at", event.created_at)?;
    match &event.change {
        Change::Enrollment(enrollment) => {
            let percent = enrollment.percentage_completed;
            prop_assert!((0.0..=100.0).contains(&percent), "percentage_completed {percent}");
            for (name, stamp) in [
                ("activated_at", enrollment.activated_at),
                ("started_at", enrollment.started_at),
                ("completed_at", enrollment.completed_at),
                ("expiry_date", enrollment.expiry_date),
                ("created_at", enrollment.created_at),
                ("updated_at", enrollment.updated_at),
            ] {
                storable_time(name, stamp)?;
            }
            if let Some(course) = &enrollment.course {
                storable_text("course.name", course.name.as_deref())?;
            }
            if let Some(user) = &enrollment.user {
                storable_text("user.email", user.email.as_deref())?;
                storable_text("user.first_name", user.first_name.as_deref())?;
                storable_text("user.last_name", user.last_name.as_deref())?;
            }
        }
        Change::User(user) => {
            for (name, text) in [
                ("email", &user.email),
                ("first_name", &user.first_name),
                ("last_name", &user.last_name),
                ("company", &user.company),
            ] {
                storable_text(name, text.as_deref())?;
            }
            storable_json("roles", user.roles.as_ref())?;
            storable_time("created_at", user.created_at)?;
            storable_time("updated_at", user.updated_at)?;
        }
        Change::Order(order) => {
            for (name, text) in [
                ("order_number", &order.order_number),
                ("status", &order.status),
                ("payment_type", &order.payment_type),
                ("billing_name", &order.billing_name),
                ("product_name", &order.product_name),
            ] {
                storable_text(name, text.as_deref())?;
            }
            storable_json("coupon", order.coupon.as_ref())?;
            storable_json("items", order.items.as_ref())?;
            if let Some(user) = &order.user {
                storable_text("user.email", user.email.as_deref())?;
                storable_text("user.first_name", user.first_name.as_deref())?;
                storable_text("user.last_name", user.last_name.as_deref())?;
            }
            storable_time("created_at", order.created_at)?;
        }
        Change::Course(course) => {
            storable_text("name", course.name.as_deref())?;
            storable_text("slug", course.slug.as_deref())?;
            storable_time("updated_at", course.updated_at)?;
        }
        Change::Unhandled => {}
    }
    Ok(())
}

/// The properties every body must keep, whatever its bytes.
fn check(body: &[u8]) -> Result<(), TestCaseError> {
    let envelope = Envelope::parse(body);
    if let Ok(envelope) = &envelope {
        prop_assert!(check_id("id", &envelope.id).is_ok(), "accepted id {:?}", envelope.id);
        if let Some(tenant) = &envelope.tenant_id {
            prop_assert!(check_id("tenant_id", tenant.as_str()).is_ok(), "accepted tenant {tenant:?}");
        }
        storable_text("resource", Some(&envelope.resource))?;
        storable_text("action", Some(&envelope.action))?;
        storable_time("created_at", envelope.created_at)?;
    }
    let received_at = Utc::now();
    let Ok(event) = Event::decode(body, "184532", received_at, "1-0") else {
        return Ok(());
    };
    let Ok(envelope) = envelope else {
        return Err(TestCaseError::fail("Event::decode accepted a body whose envelope Envelope::parse refuses"));
    };
    prop_assert_eq!(&event.event_id, &envelope.id);
    prop_assert_eq!(&event.topic, &envelope.topic());
    prop_assert_eq!(event.created_at, envelope.created_at);
    prop_assert_eq!(event.received_at, received_at);
    prop_assert!(check_id("id", &event.event_id).is_ok());
    storable(&event)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..600)) {
        check(&body)?;
    }

    #[test]
    fn arbitrary_text(body in any::<String>()) {
        check(body.as_bytes())?;
    }

    #[test]
    fn arbitrary_json(value in json()) {
        check(value.to_string().as_bytes())?;
    }

    #[test]
    fn event_shaped_json(value in mutations::event_like()) {
        check(value.to_string().as_bytes())?;
    }

    #[test]
    fn mutated_examples((example, mutations) in mutated_example()) {
        check(&mutations::mutate(example, &mutations))?;
    }

    #[test]
    fn mutated_event_shaped_json(value in mutations::event_like(), mutations in prop::collection::vec(mutations::mutation(), 1..4)) {
        check(&mutations::mutate_value(value, &mutations))?;
    }

    #[test]
    fn examples_with_every_payload_field_arbitrary(body in example_with_arbitrary_payload()) {
        check(&body)?;
    }
}

/// The examples themselves decode, and nesting past the parser's limit is a
/// rejection, not a stack overflow.
#[test]
fn examples_decode_and_deep_nesting_is_refused() {
    for (topic, body) in mutations::EXAMPLES {
        let event = Event::decode(body.as_bytes(), "184532", Utc::now(), "1-0");
        assert_eq!(event.map(|event| event.topic).ok().as_deref(), Some(*topic));
    }
    for depth in [127, 128, 129, 10_000, 200_000] {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let inner = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            let body = format!(r#"{{"id":"1","resource":"user","action":"signup","tenant_id":"t","payload":{inner}}}"#);
            assert!(check(body.as_bytes()).is_ok(), "depth {depth}");
            assert!(Event::decode(body.as_bytes(), "t", Utc::now(), "1-0").is_err(), "depth {depth}");
        }
    }
}

/// Every damage to every example, one at a time at every position would be
/// too many; every truncation of every example is not.
#[test]
fn every_truncation_of_every_example() {
    for (_, body) in mutations::EXAMPLES {
        for len in 0..body.len() {
            check(&body.as_bytes()[..len]).unwrap_or_else(|err| panic!("truncated to {len}: {err}"));
        }
    }
}
