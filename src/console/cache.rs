//! The cache page: `fleet cache stats`'s figures, and clearing by kind or by
//! tag after a confirmation (`operator::cache::remove`, as `fleet cache
//! clear` does it).

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::pages::{self, csrf_field, Layout, Section};
use super::session::Session;
use super::{ConsoleError, ConsoleState, Fields, BASE};
use crate::exit::Exit;
use crate::operator::cache::{self, ClearKind, ClearTarget};
use crate::operator::output::human_bytes;
use crate::redis::keys::{tags, Kind};

/// `GET /console/cache`.
pub(super) async fn page(
    State(state): State<ConsoleState>,
    session: Session,
    RawQuery(query): RawQuery,
) -> Result<Markup, ConsoleError> {
    let fields = Fields::of_query(query.as_deref());
    let mut redis = state.redis()?;
    let report = cache::report(&mut redis, &state.keys).await?;
    let counters = &report.counters;
    let body = html! {
        h1 { "Cache" }
        @if let Some(removed) = fields.get("removed").and_then(|value| value.parse::<u64>().ok()) {
            (pages::notice(&format!("Removed {removed} cached keys.")))
        }
        table #cache-kinds {
            thead { tr { th { "kind" } th.number { "keys" } th.number { "memory" } } }
            tbody {
                @for (kind, usage) in &report.kinds {
                    tr { td { (kind) } td.number { (usage.keys) } td.number { (human_bytes(usage.memory_bytes)) } }
                }
            }
        }
        p #cache-reads {
            "Tags: " (report.tags) ". Reads: " (counters.hits) " hits, " (counters.stale) " stale, "
            (counters.misses) " misses, " (counters.bypass) " bypassed; hit rate "
            strong { (format!("{:.1} %", counters.hit_rate * 100.0)) }
            " since " (counters.since.as_deref().map(pages::time).unwrap_or_else(|| "the first read".to_owned())) ". "
            "Revalidation failures: " (counters.revalidate_failures) "."
        }
        p.muted { "The same figures: " code { "fleet cache stats" } "." }
        h2 { "Clear" }
        form.filters method="get" action={ (BASE) "/cache/clear" } {
            label { "Every cached value of"
                select name="kind" {
                    option value="all" { "every kind (and every tag)" }
                    @for kind in Kind::ALL { option value=(kind.as_str()) { (kind.as_str()) } }
                }
            }
            button type="submit" { "Clear…" }
        }
        form.filters method="get" action={ (BASE) "/cache/clear" } {
            label { "Tag" input type="text" name="tag" placeholder="course:2871345" required; }
            label { "School (empty: every school)" input type="text" name="tenant"; }
            button type="submit" { "Clear the tag…" }
        }
    };
    Ok(pages::page(Layout::SignedIn(&session.csrf, Section::Cache), "Cache", body))
}

/// The target a clear form names, checked as `fleet cache clear` checks it
/// (a kind's name; a tag and a school as literal names).
fn target_of(fields: &Fields) -> Result<ClearTarget, ConsoleError> {
    if let Some(tag) = fields.get("tag") {
        tags::check(tag).map_err(|reason| ConsoleError::BadRequest(format!("not a tag: {reason}")))?;
        let tenant = fields.get("tenant").map(str::to_owned);
        if let Some(tenant) = &tenant {
            fleet_jobs::TenantId::parse(tenant)
                .map_err(|err| ConsoleError::BadRequest(format!("not a school: {err}")))?;
        }
        return Ok(ClearTarget::Tag { tag: tag.to_owned(), tenant });
    }
    let kind = fields.get("kind").unwrap_or_default();
    ClearKind::from_name(kind).map(ClearTarget::Kind).ok_or_else(|| {
        ConsoleError::BadRequest("choose a kind (all, enrollments, statistics, dashboard) or a tag".into())
    })
}

fn describe(target: &ClearTarget) -> String {
    match target {
        ClearTarget::Kind(ClearKind::All) => "every cached value and every tag".to_owned(),
        ClearTarget::Kind(ClearKind::Only(kind)) => format!("every cached value of kind {}", kind.as_str()),
        ClearTarget::Tag { tag, tenant: Some(tenant) } => format!("every cached value tagged {tag} in school {tenant}"),
        ClearTarget::Tag { tag, tenant: None } => format!("every cached value tagged {tag}, in every school"),
        ClearTarget::Pattern(pattern) => format!("every cache key matching {pattern}"),
    }
}

/// `GET /console/cache/clear`: what would be cleared, and the confirmation.
pub(super) async fn clear_preview(session: Session, RawQuery(query): RawQuery) -> Result<Markup, ConsoleError> {
    let target = target_of(&Fields::of_query(query.as_deref()))?;
    let body = html! {
        p { a href={ (BASE) "/cache" } { "← Cache" } }
        h1 { "Clear the cache" }
        p #clear-what { "Remove " strong { (describe(&target)) } "? The dashboard's next reads compute them again from Postgres." }
        form #confirm method="post" action={ (BASE) "/cache/clear" } {
            (csrf_field(&session.csrf))
            @match &target {
                ClearTarget::Tag { tag, tenant } => {
                    input type="hidden" name="tag" value=(tag);
                    @if let Some(tenant) = tenant { input type="hidden" name="tenant" value=(tenant); }
                }
                ClearTarget::Kind(kind) => { input type="hidden" name="kind" value=(kind.as_str()); }
                ClearTarget::Pattern(_) => {}
            }
            div.actions {
                button.danger #confirm-clear type="submit" { "Clear" }
                a href={ (BASE) "/cache" } { "Cancel" }
            }
        }
    };
    Ok(pages::page(Layout::SignedIn(&session.csrf, Section::Cache), "Clear the cache", body))
}

/// `POST /console/cache/clear`.
pub(super) async fn clear(
    State(state): State<ConsoleState>,
    session: Session,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let fields = session.form(&body)?;
    let target = target_of(&fields)?;
    let mut redis = state.redis()?;
    let removed = match cache::remove(&mut redis, &state.keys, &target).await {
        Ok(removed) => removed,
        Err(err) => {
            return Err(match err.downcast::<Exit>() {
                Ok(refused) => ConsoleError::BadRequest(refused.message),
                Err(err) => match err.downcast::<redis::RedisError>() {
                    Ok(err) => ConsoleError::Redis(err),
                    Err(err) => ConsoleError::BadRequest(err.to_string()),
                },
            })
        }
    };
    tracing::info!(session = session.fingerprint(), target = %describe(&target), removed, "console cleared the cache");
    Ok(Redirect::to(&format!("{BASE}/cache?removed={removed}")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clear_names_a_kind_or_a_literal_tag() {
        let target = |query: &str| target_of(&Fields::parse(query.as_bytes()));
        assert_eq!(target("kind=statistics").ok(), Some(ClearTarget::Kind(ClearKind::Only(Kind::Statistics))));
        assert_eq!(target("kind=all").ok(), Some(ClearTarget::Kind(ClearKind::All)));
        assert_eq!(
            target("tag=course:1&tenant=a").ok(),
            Some(ClearTarget::Tag { tag: "course:1".into(), tenant: Some("a".into()) })
        );
        for refused in ["kind=everything", "tag=course:*", "tag=course:1&tenant=*", ""] {
            assert!(target(refused).is_err(), "{refused:?}");
        }
    }
}
