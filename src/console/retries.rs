//! The retries page: what is scheduled, for when, after which error
//! (`operator::retries::scheduled`, as `fleet retries` lists it).

use axum::extract::State;
use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::pages::{self, Layout, Section};
use super::session::Session;
use super::{ConsoleError, ConsoleState};
use crate::operator::output::{human_duration, shorten};
use crate::operator::retries;

/// The retries listed, the soonest due first.
const LISTED: usize = 200;

/// When a retry is due, from now: `in 12 s`, or `due` once past.
fn due_in(due_at: &str) -> String {
    match DateTime::parse_from_rfc3339(due_at) {
        Ok(due) => {
            let ms = (due.with_timezone(&Utc) - Utc::now()).num_milliseconds();
            if ms > 0 {
                format!("in {}", human_duration(ms as u64))
            } else {
                "due".to_owned()
            }
        }
        Err(_) => String::new(),
    }
}

/// `GET /console/retries`.
pub(super) async fn page(State(state): State<ConsoleState>, session: Session) -> Result<Markup, ConsoleError> {
    let mut redis = state.redis()?;
    let scheduled = retries::scheduled(&mut redis, &state.keys, LISTED).await?;
    let body = html! {
        h1 { "Retries" }
        p.muted #retry-total {
            (pages::thousands(scheduled.total)) " events wait for another attempt"
            @if scheduled.total > scheduled.retries.len() as u64 { "; the " (scheduled.retries.len()) " due soonest are listed" }
            ". A worker puts each back onto the stream when it is due; after the last attempt it becomes a dead letter."
        }
        @if !scheduled.retries.is_empty() {
            table #retries {
                thead {
                    tr {
                        th { "due" } th { "topic" } th { "school" } th { "event" } th.number { "attempts so far" }
                        th { "kind" } th { "last error" } th { "last failed" }
                    }
                }
                tbody {
                    @for retry in &scheduled.retries {
                        tr {
                            td.time { (pages::time(&retry.at.due_at)) br; span.muted { (due_in(&retry.at.due_at)) } }
                            td { (retry.topic) }
                            td { (retry.tenant) }
                            td.event { (shorten(&retry.event_id, 28)) }
                            td.number { (retry.attempts) }
                            td { (retry.error_kind) }
                            td.error { (shorten(&retry.error, 160)) }
                            td.time { (pages::time(&retry.last_failed_at)) }
                        }
                    }
                }
            }
        }
    };
    Ok(pages::page(Layout::SignedIn(&session.csrf, Section::Retries), "Retries", body))
}
