//! The intake page: the webhooks the intake refused in the last hour, by
//! answer and school (`crate::redis::refusals`), and what each answer asks
//! of the operator. A wrong signing key, the likeliest misconfiguration,
//! shows as a school's 401s.

use axum::extract::State;
use chrono::Utc;
use maud::{html, Markup};

use super::pages::{self, Layout, Section};
use super::session::Session;
use super::{ConsoleError, ConsoleState};
use crate::redis::refusals;

/// The minutes the page adds up.
const MINUTES: i64 = 60;

/// An answer's status code, and what it asks of the operator.
fn meaning(answer: &str) -> (&'static str, &'static str) {
    match answer {
        "unauthorized" => (
            "401",
            "no configured key matches the signature: the school's webhooks are signed with a key \
             missing from THINKIFIC_WEBHOOK_SECRET or THINKIFIC_SCHOOL_KEYS (or the sender is not Thinkific)",
        ),
        "invalid" => (
            "400",
            "not a Thinkific event, or no tenant_id with a key valid for any school: bind that school's \
             key in THINKIFIC_SCHOOL_KEYS",
        ),
        "forbidden" => ("403", "signed with one school's key but naming another school"),
        "too_large" => ("413", "a body over FLEET_MAX_BODY_BYTES"),
        _ => ("", ""),
    }
}

/// `GET /console/intake`.
pub(super) async fn page(State(state): State<ConsoleState>, session: Session) -> Result<Markup, ConsoleError> {
    let mut redis = state.redis()?;
    let recent = refusals::recent(&mut redis, &state.keys, Utc::now(), MINUTES).await?;
    let total: u64 = recent.iter().map(|(_, _, count)| count).sum();
    let body = html! {
        h1 { "Intake" }
        p.muted #refusal-total {
            (pages::thousands(total)) " webhooks refused in the last " (MINUTES) " minutes, by answer and the school \
             each named (unverified when the signature is not). Accepted webhooks and 503s (Redis down) are \
             not listed: see " code { "fleet_webhooks_total" } "."
        }
        @if !recent.is_empty() {
            table #refusals {
                thead { tr { th { "answer" } th { "school" } th.number { "refused" } th { "what it means" } } }
                tbody {
                    @for (answer, school, count) in &recent {
                        @let (code, meaning) = meaning(answer);
                        tr {
                            td.time { (code) " " (answer) }
                            td.id { (school) }
                            td.number { (pages::thousands(*count)) }
                            td { (meaning) }
                        }
                    }
                }
            }
        }
    };
    Ok(pages::page(Layout::SignedIn(&session.csrf, Section::Intake), "Intake", body))
}
