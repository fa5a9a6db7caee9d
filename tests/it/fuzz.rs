//! End-to-end fuzz: signed, mutated Thinkific bodies through a real intake
//! and a real worker.
//!
//! The promise under test: a body is either refused at the door with a 400,
//! or it is queued (200) and then either applied or dead-lettered at once as
//! `malformed`. Never a 5xx or a hang at intake, and never an accepted body
//! that Postgres refuses later: that would cost retries and end as an
//! `event` dead letter, the kind kept for faults that might pass.
//!
//! One test world (database, key prefix, intake) serves every case; each
//! case checks only the entries it queued, so cases stay independent.

#[path = "../../jobs/tests/support/mutations.rs"]
mod mutations;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use redis::AsyncCommands;
use serde_json::Value;

use crate::helpers::{context, IntakeServer, TestContext, SECRET};

/// A signed body as the fuzz sends it.
#[derive(Clone)]
struct Body(Vec<u8>);

/// As text, so that a failing case reads as the body it sent.
impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Body({:?})", String::from_utf8_lossy(&self.0))
    }
}

/// Bodies that mostly keep a valid envelope (a fresh event id, the
/// example's tenant), so that most reach the worker, with damage anywhere.
fn body() -> impl Strategy<Value = Body> {
    let example = (0..mutations::EXAMPLES.len(), any::<u64>(), prop::collection::vec(mutations::mutation(), 0..4))
        .prop_map(|(example, seed, damage)| {
            let mut value = mutations::example_value(example);
            value["id"] = Value::from(format!("fuzz-{seed:016x}"));
            Body(mutations::mutate_value(value, &damage))
        });
    let shaped = (mutations::event_like(), any::<u64>()).prop_map(|(mut value, seed)| {
        if let Some(body) = value.as_object_mut() {
            body.entry("tenant_id").or_insert_with(|| Value::from("184532"));
            if seed % 2 == 0 {
                body.insert("id".to_owned(), Value::from(format!("fuzz-{seed:016x}")));
            }
        }
        Body(value.to_string().into_bytes())
    });
    let payload = mutations::example_with_arbitrary_payload().prop_map(Body);
    prop_oneof![6 => example, 2 => shaped, 2 => payload]
}

async fn post(intake: &IntakeServer, body: &[u8]) -> Result<(u16, Value), TestCaseError> {
    let request = fleet::http_client::builder()
        .build()
        .expect("an HTTP client")
        .post(intake.url("/webhooks/thinkific"))
        .header("content-type", "application/json")
        .header(fleet::intake::SIGNATURE_HEADER, fleet::intake::sign(SECRET.as_bytes(), body))
        .body(body.to_vec())
        .timeout(Duration::from_secs(10))
        .send();
    let response = tokio::time::timeout(Duration::from_secs(15), request)
        .await
        .map_err(|_| TestCaseError::fail("the intake did not answer within 15 s"))?
        .map_err(|err| TestCaseError::fail(format!("request failed: {err}")))?;
    let status = response.status().as_u16();
    let answer = response.json().await.unwrap_or(Value::Null);
    Ok((status, answer))
}

/// A stream entry's fields, as text.
fn fields(map: &HashMap<String, redis::Value>) -> HashMap<String, String> {
    map.iter()
        .filter_map(|(name, value)| {
            redis::from_redis_value::<String>(value.clone()).ok().map(|text| (name.clone(), text))
        })
        .collect()
}

/// The stream entry ids of scheduled retries.
async fn retried_entries(ctx: &TestContext) -> HashSet<String> {
    let mut redis = ctx.redis.clone();
    let members: Vec<String> = redis.zrange(ctx.keys.shard(0).retries(), 0, -1).await.expect("ZRANGE");
    members
        .iter()
        .filter_map(|member| serde_json::from_str::<Vec<String>>(member).ok())
        .filter_map(|flat| flat.chunks(2).find(|pair| pair[0] == "source_entry_id").map(|pair| pair[1].clone()))
        .collect()
}

/// (source entry id → error kind) of every dead letter.
async fn dead_letter_kinds(ctx: &TestContext) -> HashMap<String, String> {
    ctx.dead_letters()
        .await
        .iter()
        .map(|letter| {
            let letter = fields(&letter.map);
            (
                letter.get("source_entry_id").cloned().unwrap_or_default(),
                letter.get("error_kind").cloned().unwrap_or_default(),
            )
        })
        .collect()
}

async fn applied(ctx: &TestContext, tenant: &str, event_id: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE tenant_id = $1 AND event_id = $2)")
        .bind(tenant)
        .bind(event_id)
        .fetch_one(&ctx.db)
        .await
        .expect("query events")
}

fn text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(600).collect()
}

/// What became of the bodies of every case, to show the fuzz reached each
/// outcome.
#[derive(Debug, Default)]
struct Outcomes {
    refused: usize,
    applied: usize,
    malformed: usize,
}

/// Sends `bodies`, drains, and checks what became of each. `queued` holds
/// the (tenant, event id) of every body accepted so far, in any case.
async fn run_case(
    ctx: &TestContext,
    intake: &IntakeServer,
    bodies: &[Body],
    queued: &RefCell<HashSet<(String, String)>>,
    outcomes: &RefCell<Outcomes>,
) -> Result<(), TestCaseError> {
    // entry id → (tenant, event id, body) of the bodies this case queued.
    let mut accepted: HashMap<String, (String, String, &[u8])> = HashMap::new();
    for Body(body) in bodies {
        let stream_length = ctx.stream_len(&ctx.keys.shard(0).events()).await;
        let (status, answer) = post(intake, body).await?;
        let envelope = fleet::jobs::Envelope::parse(body);
        let tenant = envelope.as_ref().ok().and_then(|envelope| envelope.tenant_id.clone());
        match status {
            400 => {
                prop_assert!(
                    tenant.is_none(),
                    "the intake refused a body with a valid envelope and tenant: {answer}\n{}",
                    text(body)
                );
                outcomes.borrow_mut().refused += 1;
            }
            200 => {
                let (Ok(envelope), Some(tenant)) = (envelope, tenant) else {
                    return Err(TestCaseError::fail(format!(
                        "the intake accepted a body that is no event:\n{}",
                        text(body)
                    )));
                };
                let event = (tenant.into_string(), envelope.id);
                match answer["status"].as_str() {
                    Some("accepted") => {
                        let entry = answer["stream_entry_id"].as_str().unwrap_or_default().to_owned();
                        let mut redis = ctx.redis.clone();
                        let found: redis::streams::StreamRangeReply =
                            redis.xrange(ctx.keys.shard(0).events(), &entry, &entry).await.expect("XRANGE");
                        prop_assert_eq!(
                            found.ids.len(),
                            1,
                            "accepted ({}), but entry {} is not in the stream",
                            answer,
                            entry
                        );
                        prop_assert!(queued.borrow_mut().insert(event.clone()), "{:?} accepted twice", event);
                        accepted.insert(entry, (event.0, event.1, body));
                    }
                    Some("duplicate") => {
                        prop_assert!(
                            queued.borrow().contains(&event),
                            "a duplicate of {:?}, which was never accepted",
                            event
                        );
                        prop_assert_eq!(
                            ctx.stream_len(&ctx.keys.shard(0).events()).await,
                            stream_length,
                            "a duplicate ({}) appended to the stream",
                            answer
                        );
                    }
                    _ => return Err(TestCaseError::fail(format!("a 200 with an unknown status: {answer}"))),
                }
            }
            other => {
                return Err(TestCaseError::fail(format!("the intake answered {other} {answer} to:\n{}", text(body))))
            }
        }
    }

    ctx.drain().await;
    let retried = retried_entries(ctx).await;
    let dead = dead_letter_kinds(ctx).await;
    for (entry, (tenant, event_id, body)) in &accepted {
        prop_assert!(!retried.contains(entry), "a retry was scheduled for an accepted body:\n{}", text(body));
        match dead.get(entry) {
            Some(kind) => {
                prop_assert_eq!(
                    kind.as_str(),
                    "malformed",
                    "an accepted body was dead-lettered as {}, not malformed:\n{}",
                    kind,
                    text(body)
                );
                outcomes.borrow_mut().malformed += 1;
            }
            None => {
                prop_assert!(
                    applied(ctx, tenant, event_id).await,
                    "an accepted body was neither applied nor dead-lettered:\n{}",
                    text(body)
                );
                outcomes.borrow_mut().applied += 1;
            }
        }
    }
    prop_assert_eq!(ctx.group_backlog().await, (0, 0), "entries left pending after the drain");
    Ok(())
}

#[test]
fn signed_mutated_bodies_are_refused_at_intake_or_applied_or_dead_lettered_as_malformed() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ctx = runtime.block_on(context());
    let intake = runtime.block_on(ctx.spawn_intake());
    let queued = RefCell::new(HashSet::new());
    let outcomes = RefCell::new(Outcomes::default());

    let config =
        ProptestConfig { cases: 48, max_shrink_iters: 64, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(bodies in prop::collection::vec(body(), 1..8))| {
        runtime.block_on(run_case(&ctx, &intake, &bodies, &queued, &outcomes))?;
    });

    let outcomes = outcomes.into_inner();
    assert!(
        outcomes.refused > 0 && outcomes.applied > 0 && outcomes.malformed > 0,
        "the fuzz missed an outcome: {outcomes:?}"
    );
    runtime.block_on(async move {
        let kinds: HashSet<String> = dead_letter_kinds(&ctx).await.into_values().collect();
        assert!(kinds.iter().all(|kind| kind == "malformed"), "dead-letter kinds: {kinds:?}");
        assert_eq!(ctx.scheduled_retries().await, 0, "retries scheduled");
        intake.stop().await;
        drop(ctx);
    });
}
