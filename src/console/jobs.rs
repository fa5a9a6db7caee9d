//! Replays the console runs in the background, and the page that follows
//! one.
//!
//! A replay of thousands of dead letters takes longer than a browser waits
//! for an answer, so the confirmation starts a task in the `fleet api`
//! process and sends the browser to `/console/jobs/<id>`, which reloads
//! itself every second until the replay is done. The task calls the one
//! replay of the fleet (`operator::dlq::replay_selected`, [`dlq::CHUNK`]
//! dead letters per atomic step) and mirrors its progress into
//! `<prefix>console:job:<id>` (a hash kept [`KEPT`]), so any API process
//! behind a load balancer can show the page. Should the process stop
//! mid-replay, what was replayed stays replayed (each step is atomic) and
//! the page says the job stopped advancing.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use redis::AsyncCommands;
use serde_json::json;
use tokio::sync::watch;

use super::pages::{self, Layout, Section};
use super::session::Session;
use super::{ConsoleError, ConsoleState, BASE};
use crate::operator::dlq::{self, Selection};
use crate::operator::output::count;

/// How long a job's record is kept.
pub(crate) const KEPT: Duration = Duration::from_secs(24 * 3600);
/// A running job whose record has not moved for this long has stopped.
const STALLED_AFTER_SECS: i64 = 60;
/// The (dead letter, new entry) pairs a finished job lists.
const LISTED_PAIRS: usize = 50;

/// Starts replaying `selection` in the background; returns the job's id.
pub(super) async fn start_replay(
    state: &ConsoleState,
    session: &Session,
    selection: Selection,
    chosen: String,
) -> Result<String, ConsoleError> {
    let mut redis = state.redis()?;
    let job = uuid::Uuid::new_v4().simple().to_string();
    let key = state.keys.console_job(&job);
    let now = Utc::now().to_rfc3339();
    let _: () = redis::pipe()
        .hset_multiple(
            &key,
            &[
                ("kind", "replay"),
                ("state", "running"),
                ("chosen", chosen.as_str()),
                ("handled", "0"),
                ("total", "0"),
                ("started_at", now.as_str()),
                ("updated_at", now.as_str()),
            ],
        )
        .ignore()
        .pexpire(&key, KEPT.as_millis() as i64)
        .ignore()
        .query_async(&mut redis)
        .await?;
    tracing::info!(session = session.fingerprint(), %job, %chosen, "console replay started");
    let (keys, fingerprint) = (state.keys.clone(), session.fingerprint().to_owned());
    let mut mirror_redis = redis.clone();
    tokio::spawn({
        let job = job.clone();
        async move {
            let (sender, mut receiver) = watch::channel((0usize, 0usize));
            let replay = async {
                let mut progress = move |handled: usize, total: usize| {
                    sender.send_replace((handled, total));
                };
                // The closure (and the sender) go with this block, which ends the mirror.
                dlq::replay_selected(&mut redis, &keys, &selection, &mut progress).await
            };
            let mirror = async {
                while receiver.changed().await.is_ok() {
                    let (handled, total) = *receiver.borrow_and_update();
                    let written: Result<(), _> = mirror_redis
                        .hset_multiple(
                            &key,
                            &[
                                ("handled", handled.to_string()),
                                ("total", total.to_string()),
                                ("updated_at", Utc::now().to_rfc3339()),
                            ],
                        )
                        .await;
                    if let Err(err) = written {
                        tracing::debug!(error = %err, "could not record a replay's progress");
                    }
                }
            };
            let (result, ()) = tokio::join!(replay, mirror);
            let mut fields: Vec<(&str, String)> = vec![("finished_at", Utc::now().to_rfc3339())];
            match &result {
                Ok(report) => {
                    tracing::info!(
                        session = %fingerprint, %job, replayed = report.replayed.len(), missing = report.missing.len(),
                        "console replayed dead letters"
                    );
                    let pairs: Vec<_> = report.replayed.iter().take(LISTED_PAIRS).collect();
                    fields.extend([
                        ("state", "done".to_owned()),
                        ("replayed", report.replayed.len().to_string()),
                        ("missing", report.missing.len().to_string()),
                        ("pairs", json!(pairs).to_string()),
                        (
                            "missing_ids",
                            json!(report.missing.iter().take(LISTED_PAIRS).collect::<Vec<_>>()).to_string(),
                        ),
                    ]);
                }
                Err(err) => {
                    tracing::error!(session = %fingerprint, %job, error = %err, "console replay failed; what was replayed stays replayed");
                    fields.extend([("state", "failed".to_owned()), ("error", err.to_string())]);
                }
            }
            let recorded: Result<(), _> = mirror_redis.hset_multiple(&key, &fields).await;
            if let Err(err) = recorded {
                tracing::warn!(error = %err, %job, "could not record how a console replay ended");
            }
        }
    });
    Ok(job)
}

/// `GET /console/jobs/{id}`: a replay's progress, then its outcome.
pub(super) async fn page(
    State(state): State<ConsoleState>,
    session: Session,
    Path(job): Path<String>,
) -> Result<Markup, ConsoleError> {
    let unknown = || ConsoleError::NotFound("no such replay (their records are kept a day)".into());
    if job.len() != 32 || !job.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(unknown());
    }
    let mut redis = state.redis()?;
    let record: HashMap<String, String> = redis.hgetall(state.keys.console_job(&job)).await?;
    if record.is_empty() {
        return Err(unknown());
    }
    let text = |name: &str| record.get(name).map(String::as_str).unwrap_or_default();
    let number = |name: &str| text(name).parse::<u64>().unwrap_or(0);
    let running = text("state") == "running";
    let stalled_for = DateTime::parse_from_rfc3339(text("updated_at"))
        .map(|at| (Utc::now() - at.with_timezone(&Utc)).num_seconds())
        .unwrap_or(0);
    let pairs: Vec<(String, String)> = serde_json::from_str(text("pairs")).unwrap_or_default();
    let missing_ids: Vec<String> = serde_json::from_str(text("missing_ids")).unwrap_or_default();
    let (handled, total) = (number("handled"), number("total"));
    let body = html! {
        p { a href={ (BASE) "/dead-letters" } { "← Dead letters" } }
        h1 { "Replay" }
        p.muted { "Chosen: " (text("chosen")) ". Started " (pages::time(text("started_at"))) "." }
        progress #job-progress value=(handled) max=(total.max(1)) {}
        @match text("state") {
            "running" => {
                p #job-state data-state="running" {
                    @if total == 0 { "Finding the dead letters…" }
                    @else { "Replaying: " (handled) " of " (total) " handled." }
                }
                @if stalled_for > STALLED_AFTER_SECS {
                    p.problem { "No progress for " (stalled_for) " s: the API process running it may have stopped. \
                                 What was replayed stays replayed; replay the rest again." }
                }
            }
            "done" => {
                p.notice #job-state data-state="done" {
                    "Done: " (count(number("replayed"), "dead letter", "dead letters")) " replayed onto the events stream with fresh attempts"
                    @if number("missing") > 0 { "; " (number("missing")) " were no longer dead letters" }
                    "."
                }
                @if !pairs.is_empty() {
                    table #replayed {
                        thead { tr { th { "dead letter" } th { "new stream entry" } } }
                        tbody { @for (from, to) in &pairs { tr { td { (from) } td { (to) } } } }
                    }
                    @if number("replayed") > pairs.len() as u64 { p.muted { "… and " (number("replayed") - pairs.len() as u64) " more." } }
                }
                @if !missing_ids.is_empty() { p.muted { "Not found: " (missing_ids.join(", ")) } }
            }
            _ => {
                p.problem #job-state data-state="failed" {
                    "The replay stopped: " (text("error")) ". What was replayed stays replayed; replay the rest again."
                }
            }
        }
    };
    let layout = if running {
        Layout::Refreshing(&session.csrf, Section::DeadLetters, 1)
    } else {
        Layout::SignedIn(&session.csrf, Section::DeadLetters)
    };
    Ok(pages::page(layout, "Replay", body))
}
