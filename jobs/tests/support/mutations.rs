//! Hostile webhook bodies for the fuzz properties: arbitrary JSON, values
//! shaped like events, and mutations of the Thinkific example bodies.
//!
//! Shared by the parser properties of `fleet-jobs` (`jobs/tests/fuzz.rs`)
//! and the end-to-end property of the fleet (`tests/it/fuzz.rs`, which
//! includes this file by path), so both feed the same kinds of damage.
//!
//! A mutated body is built in three stages, so that every mutation can be
//! expressed: changes to the JSON tree (deletions, type swaps, arbitrary
//! values), then raw JSON text spliced in where a tree cannot hold it (huge
//! numbers, nesting deeper than any parser allows), then byte damage (flips,
//! truncations, insertions) that may leave no JSON at all.

#![allow(dead_code)]

use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// The example bodies, as Thinkific sends them (`tests/fixtures/thinkific`,
/// the same files as the examples in the shared Thinkific notes).
pub const EXAMPLES: &[(&str, &str)] = &[
    ("enrollment.created", include_str!("../../../tests/fixtures/thinkific/enrollment.created.json")),
    ("enrollment.progress", include_str!("../../../tests/fixtures/thinkific/enrollment.progress.json")),
    ("enrollment.completed", include_str!("../../../tests/fixtures/thinkific/enrollment.completed.json")),
    ("order.created", include_str!("../../../tests/fixtures/thinkific/order.created.json")),
    ("user.signup", include_str!("../../../tests/fixtures/thinkific/user.signup.json")),
];

/// Field names the parsers look for, so that generated objects hit them.
const KNOWN_FIELDS: &[&str] = &[
    "id",
    "resource",
    "action",
    "tenant_id",
    "created_at",
    "payload",
    "course_id",
    "user_id",
    "course",
    "user",
    "percentage_completed",
    "activated_at",
    "started_at",
    "completed_at",
    "expiry_date",
    "updated_at",
    "free_trial",
    "email",
    "first_name",
    "last_name",
    "company",
    "roles",
    "name",
    "slug",
    "order_number",
    "status",
    "payment_type",
    "amount_cents",
    "billing_name",
    "product_id",
    "product_name",
    "coupon",
    "items",
];

/// Every (resource, action) the worker applies, and a few it does not.
const TOPICS: &[(&str, &str)] = &[
    ("enrollment", "created"),
    ("enrollment", "progress"),
    ("enrollment", "completed"),
    ("enrollment", "trial"),
    ("user", "signup"),
    ("user", "updated"),
    ("order", "created"),
    ("course", "created"),
    ("course", "updated"),
    ("course", "deleted"),
    ("lesson", "completed"),
    ("quiz", "attempted"),
];

/// Text the lenient field parsers try to read: digit strings, decimals,
/// dates in and out of range, and the odd values that trip parsers.
pub fn tricky_text() -> BoxedStrategy<String> {
    prop_oneof![
        "[0-9]{1,25}",
        " ?[+-]?[0-9]{1,4}(\\.[0-9]{0,6})?([eE][+-]?[0-9]{1,3})? ?",
        "[+-]?[0-9]{1,7}-[0-9]{1,2}-[0-9]{1,2}([T ][0-9]{1,2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:?[0-9]{2})?)?",
        prop::sample::select(vec![
            "", " ", "\u{0}", "a\u{0}b", "NaN", "inf", "-inf", "-0", "1e309", "null", "true", "0x10", "١٢٣",
            "9223372036854775808", "-9223372036854775809", "2025-02-30", "2025-03-14T25:61:61Z",
            "+262143-12-31T23:59:59Z", "-262144-01-01", "0000-01-01", "\u{feff}2025-03-14",
            "\u{202e}abc", "ﬀ", "𝟘𝟙", "\u{fffd}", "a:b", "*", "?", "[x]",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
    .boxed()
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![3 => prop::sample::select(KNOWN_FIELDS).prop_map(str::to_owned), 1 => any::<String>()]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON numbers are finite", |float| Number::from_f64(float).map(Value::Number)),
        (-1.0e3..1.0e3f64).prop_filter_map("finite", |float| Number::from_f64(float).map(Value::Number)),
        tricky_text().prop_map(Value::from),
    ]
}

/// Any JSON value, a few levels deep.
pub fn json() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..6)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
            ]
        })
        .boxed()
}

/// An id as Thinkific might send one, or something that is not one.
fn id_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => "[A-Za-z0-9_.-]{1,64}".prop_map(Value::from),
        1 => "[A-Za-z0-9_.-]{65,80}".prop_map(Value::from),
        2 => any::<u64>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        2 => json(),
    ]
}

/// Objects shaped like webhook bodies (an envelope, a topic the worker
/// knows, a payload of known fields) whose every value may be anything.
pub fn event_like() -> BoxedStrategy<Value> {
    let topic = prop_oneof![
        4 => prop::sample::select(TOPICS).prop_map(|(resource, action)| (Value::from(resource), Value::from(action))),
        1 => (json(), json()),
    ];
    let payload_field = (prop::sample::select(KNOWN_FIELDS), prop_oneof![2 => leaf(), 1 => json()]);
    let payload = prop_oneof![
        6 => prop::collection::vec(payload_field, 0..14)
            .prop_map(|fields| Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        1 => json(),
    ];
    (
        prop::option::weighted(0.95, id_value()),
        topic,
        prop::option::of(id_value()),
        prop::option::of(prop_oneof![tricky_text().prop_map(Value::from), json()]),
        prop::option::weighted(0.9, payload),
    )
        .prop_map(|(id, (resource, action), tenant_id, created_at, payload)| {
            let mut body = Map::new();
            let fields = [
                ("id", id),
                ("resource", Some(resource)),
                ("action", Some(action)),
                ("tenant_id", tenant_id),
                ("created_at", created_at),
                ("payload", payload),
            ];
            for (name, value) in fields {
                if let Some(value) = value {
                    body.insert(name.to_owned(), value);
                }
            }
            Value::Object(body)
        })
        .boxed()
}

/// Raw JSON text that a `serde_json::Value` cannot carry intact.
pub fn raw_json() -> BoxedStrategy<String> {
    prop_oneof![
        // Numbers past every float and integer type.
        prop::sample::select(vec![
            "1e400",
            "-1e400",
            "1e-400",
            "123456789012345678901234567890",
            "18446744073709551616",
            "-9223372036854775809",
            "9223372036854775807",
            "1.7976931348623157e308",
            "4.9e-324",
            "-0",
            "-0.0",
            "1E+2",
            "9007199254740993",
            "0.1e1",
        ])
        .prop_map(str::to_owned),
        "-?[1-9][0-9]{15,400}(\\.[0-9]{1,30})?([eE][+-]?[0-9]{1,5})?",
        // Nesting around and past the parser's recursion limit (128).
        (1..3000usize, any::<bool>(), any::<bool>()).prop_map(|(depth, arrays, closed)| nested(depth, arrays, closed)),
    ]
    .boxed()
}

fn nested(depth: usize, arrays: bool, closed: bool) -> String {
    let (open, close) = if arrays { ("[", "]") } else { ("{\"a\":", "}") };
    let mut text = open.repeat(depth);
    text.push('1');
    if closed {
        text.push_str(&close.repeat(depth));
    }
    text
}

/// What to put in place of a value.
#[derive(Debug, Clone)]
pub enum Replacement {
    /// The same content as another JSON type: string, number, null,
    /// object, array, bool.
    Swap(u8),
    /// Any JSON value.
    Json(Value),
    /// Any text, as a string.
    Text(String),
    /// Raw JSON text (see [`raw_json`]).
    Raw(String),
}

/// One change to a body. `path` picks a value of the tree (modulo their
/// number, in document order); positions are taken modulo the body length.
#[derive(Debug, Clone)]
pub enum Mutation {
    Delete { path: usize },
    Replace { path: usize, with: Replacement },
    FlipByte { at: usize, mask: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
}

pub fn replacement() -> impl Strategy<Value = Replacement> {
    prop_oneof![
        4 => (0..6u8).prop_map(Replacement::Swap),
        3 => json().prop_map(Replacement::Json),
        2 => tricky_text().prop_map(Replacement::Text),
        2 => raw_json().prop_map(Replacement::Raw),
    ]
}

/// One mutation; byte damage is rarer, as it mostly ends in "not JSON".
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => any::<usize>().prop_map(|path| Mutation::Delete { path }),
        8 => (any::<usize>(), replacement()).prop_map(|(path, with)| Mutation::Replace { path, with }),
        1 => (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Mutation::FlipByte { at, mask }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

/// An example body (by index into [`EXAMPLES`]) and the mutations to apply.
pub fn mutated_example() -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    (0..EXAMPLES.len(), prop::collection::vec(mutation(), 1..6))
}

/// An example body with every payload field replaced by arbitrary JSON.
pub fn example_with_arbitrary_payload() -> impl Strategy<Value = Vec<u8>> {
    (0..EXAMPLES.len(), prop::collection::vec(json(), 32)).prop_map(|(example, values)| {
        let mut body = example_value(example);
        if let Some(payload) = body.get_mut("payload").and_then(Value::as_object_mut) {
            for (value, replacement) in payload.values_mut().zip(values) {
                *value = replacement;
            }
        }
        body.to_string().into_bytes()
    })
}

pub fn example_value(example: usize) -> Value {
    serde_json::from_str(EXAMPLES[example % EXAMPLES.len()].1).expect("the examples are JSON")
}

#[derive(Debug, Clone)]
enum Step {
    Field(String),
    Index(usize),
}

/// The paths of every value below the root, in document order.
fn paths(value: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                prefix.push(Step::Field(key.clone()));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                prefix.push(Step::Index(index));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at_mut<'v>(value: &'v mut Value, path: &[Step]) -> Option<&'v mut Value> {
    path.iter().try_fold(value, |value, step| match step {
        Step::Field(key) => value.get_mut(key.as_str()),
        Step::Index(index) => value.get_mut(*index),
    })
}

fn pick(value: &Value, path: usize) -> Option<Vec<Step>> {
    let mut all = Vec::new();
    paths(value, &mut Vec::new(), &mut all);
    if all.is_empty() {
        return None;
    }
    let len = all.len();
    Some(all.swap_remove(path % len))
}

/// `value` as JSON type number `kind`, keeping what content it can.
fn swap_type(value: &Value, kind: u8) -> Value {
    let text = match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    match kind % 6 {
        0 => Value::String(text),
        1 => match value {
            Value::String(text) => text
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map_or(Value::from(text.len()), Value::Number),
            Value::Bool(flag) => Value::from(u8::from(*flag)),
            Value::Number(number) => Value::Number(number.clone()),
            _ => Value::from(0),
        },
        2 => Value::Null,
        3 => Value::Object(Map::from_iter([("value".to_owned(), value.clone())])),
        4 => Value::Array(vec![value.clone()]),
        _ => Value::Bool(!text.is_empty()),
    }
}

fn sentinel(index: usize) -> String {
    format!("⟦fuzz-raw-{index}⟧")
}

/// Applies `mutations` to example number `example`: tree changes, then raw
/// splices, then byte damage (see the module).
pub fn mutate(example: usize, mutations: &[Mutation]) -> Vec<u8> {
    mutate_value(example_value(example), mutations)
}

/// Like [`mutate`], from any starting body.
pub fn mutate_value(mut body: Value, mutations: &[Mutation]) -> Vec<u8> {
    let mut raws = Vec::new();
    for mutation in mutations {
        match mutation {
            Mutation::Delete { path } => {
                let Some(mut path) = pick(&body, *path) else { continue };
                let Some(last) = path.pop() else { continue };
                match (at_mut(&mut body, &path), last) {
                    (Some(Value::Object(map)), Step::Field(key)) => {
                        map.remove(&key);
                    }
                    (Some(Value::Array(items)), Step::Index(index)) if index < items.len() => {
                        items.remove(index);
                    }
                    _ => {}
                }
            }
            Mutation::Replace { path, with } => {
                let Some(path) = pick(&body, *path) else { continue };
                let Some(target) = at_mut(&mut body, &path) else { continue };
                *target = match with {
                    Replacement::Swap(kind) => swap_type(target, *kind),
                    Replacement::Json(value) => value.clone(),
                    Replacement::Text(text) => Value::String(text.clone()),
                    Replacement::Raw(raw) => {
                        raws.push(raw.clone());
                        Value::String(sentinel(raws.len() - 1))
                    }
                };
            }
            _ => {}
        }
    }
    let mut text = body.to_string();
    for (index, raw) in raws.iter().enumerate() {
        // A later mutation may have removed the sentinel: then nothing to do.
        text = text.replacen(&format!("\"{}\"", sentinel(index)), raw, 1);
    }
    let mut bytes = text.into_bytes();
    for mutation in mutations {
        match mutation {
            Mutation::FlipByte { at, mask } if !bytes.is_empty() => {
                let len = bytes.len();
                bytes[at % len] ^= mask;
            }
            Mutation::Truncate { at } => bytes.truncate(at % (bytes.len() + 1)),
            Mutation::Insert { at, bytes: inserted } => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, inserted.iter().copied());
            }
            _ => {}
        }
    }
    bytes
}
