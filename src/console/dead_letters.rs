//! The dead letters: a table filtered by topic, school, error kind and age,
//! paged; one in detail; replay and purge of the ticked ones or of every
//! one matching the filter.
//!
//! A replay or purge is two steps. A GET shows the dry run, `dlq::select`:
//! how many and which, changing nothing. Its form (POST, with the CSRF
//! token) then does it: a replay runs in the background with its progress
//! on a page of its own (`super::jobs`); a purge asks for the number of
//! dead letters to be typed first. "Every one matching" is confirmed up to
//! the last dead letter the preview showed (`up_to`, required), and at the
//! time the preview computed from the age, so what is confirmed is what was
//! seen. The server recounts what the confirmation names and acts only when
//! that is the number the operator confirmed (typed, for a purge; shown on
//! the button, for a replay): never on the form's word for it.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::pages::{self, csrf_field, Layout, Section};
use super::session::Session;
use super::{jobs, ConsoleError, ConsoleState, Fields, BASE};
use crate::operator::dlq::{self, Filter, Selection};
use crate::operator::failed::DeadLetterView;
use crate::operator::output::{count, shorten};

/// Dead letters per page of the table.
const PAGE_SIZE: usize = 50;
/// Dead letters listed in a preview (all of them are counted).
const PREVIEW_ROWS: usize = 100;
/// The most dead letters one form may name.
const MAX_NAMED: usize = 1000;
/// The longest filter value taken.
const MAX_FILTER_LEN: usize = 128;

/// The ages the table filters by: (label, seconds).
const AGES: [(&str, i64); 5] = [("15m", 900), ("1h", 3600), ("6h", 6 * 3600), ("24h", 24 * 3600), ("7d", 7 * 86400)];
/// The error kinds a dead letter may have.
const KINDS: [&str; 4] = ["malformed", "event", "crashed", "deleted"];

/// The filter as the form gave it, to show it again and to link with it.
#[derive(Debug, Clone, Default)]
struct FilterForm {
    topic: Option<String>,
    tenant: Option<String>,
    kind: Option<String>,
    age: Option<String>,
    /// The start a preview computed from the age (a confirmation uses it).
    since: Option<DateTime<Utc>>,
    /// The last dead letter a preview of "every one matching" showed.
    up_to: Option<String>,
}

impl FilterForm {
    fn read(fields: &Fields) -> Result<Self, ConsoleError> {
        let text = |name: &str| -> Result<Option<String>, ConsoleError> {
            match fields.get(name) {
                Some(value) if value.chars().count() > MAX_FILTER_LEN => {
                    Err(ConsoleError::BadRequest(format!("{name} is longer than {MAX_FILTER_LEN} characters")))
                }
                value => Ok(value.map(str::to_owned)),
            }
        };
        let kind = text("kind")?;
        if let Some(kind) = &kind {
            if !KINDS.contains(&kind.as_str()) {
                return Err(ConsoleError::BadRequest(format!("the error kind is one of {}", KINDS.join(", "))));
            }
        }
        let age = text("age")?;
        let since = match (fields.get("since"), &age) {
            (Some(since), _) => Some(
                DateTime::parse_from_rfc3339(since)
                    .map_err(|_| ConsoleError::BadRequest("since is not an RFC 3339 time".into()))?
                    .with_timezone(&Utc),
            ),
            (None, Some(age)) => {
                let (_, seconds) = AGES
                    .iter()
                    .find(|(label, _)| label == age)
                    .ok_or_else(|| ConsoleError::BadRequest("the age is one of 15m, 1h, 6h, 24h, 7d".into()))?;
                Some(Utc::now() - chrono::Duration::seconds(*seconds))
            }
            (None, None) => None,
        };
        Ok(Self { topic: text("topic")?, tenant: text("tenant")?, kind, age, since, up_to: text("up_to")? })
    }

    fn filter(&self) -> Filter {
        Filter {
            topic: self.topic.clone(),
            tenant: self.tenant.clone(),
            error_kind: self.kind.clone(),
            since: self.since,
            up_to: self.up_to.clone(),
        }
    }

    /// The form's own fields as a query string (the age, not the time).
    fn query(&self) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in
            [("topic", &self.topic), ("tenant", &self.tenant), ("kind", &self.kind), ("age", &self.age)]
        {
            if let Some(value) = value {
                query.append_pair(name, value);
            }
        }
        query.finish()
    }

    fn is_empty(&self) -> bool {
        self.topic.is_none() && self.tenant.is_none() && self.kind.is_none() && self.age.is_none()
    }

    /// In words, for the preview and the logs.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(topic) = &self.topic {
            parts.push(format!("topic {topic}"));
        }
        if let Some(tenant) = &self.tenant {
            parts.push(format!("school {tenant}"));
        }
        if let Some(kind) = &self.kind {
            parts.push(format!("error kind {kind}"));
        }
        if let Some(since) = self.since {
            parts.push(format!("dead-lettered since {}", since.format("%Y-%m-%d %H:%M:%S UTC")));
        }
        if parts.is_empty() {
            "every dead letter".to_owned()
        } else {
            format!("every dead letter with {}", parts.join(", "))
        }
    }

    /// Hidden fields that carry the filter, as the preview fixed it, to its confirmation.
    fn hidden(&self) -> Markup {
        html! {
            @if let Some(topic) = &self.topic { input type="hidden" name="topic" value=(topic); }
            @if let Some(tenant) = &self.tenant { input type="hidden" name="tenant" value=(tenant); }
            @if let Some(kind) = &self.kind { input type="hidden" name="kind" value=(kind); }
            @if let Some(since) = self.since { input type="hidden" name="since" value=(since.to_rfc3339()); }
            @if let Some(up_to) = &self.up_to { input type="hidden" name="up_to" value=(up_to); }
        }
    }
}

/// The dead letters a replay or purge form names: ticked ids, or every
/// one matching its filter (`all`).
struct Chosen {
    ids: Vec<String>,
    all: bool,
    filter: FilterForm,
}

impl Chosen {
    fn read(fields: &Fields) -> Result<Self, ConsoleError> {
        let ids = fields.all("id");
        let all = fields.get("all").is_some();
        if ids.len() > MAX_NAMED {
            return Err(ConsoleError::BadRequest(format!("at most {MAX_NAMED} dead letters at once")));
        }
        if ids.is_empty() && !all {
            return Err(ConsoleError::BadRequest(
                "no dead letter chosen: tick some in the table, or choose every one matching the filter".into(),
            ));
        }
        let filter = if all { FilterForm::read(fields)? } else { FilterForm::default() };
        Ok(Self { ids: if all { Vec::new() } else { ids }, all, filter })
    }

    fn selection(&self) -> Selection {
        Selection { ids: self.ids.clone(), all: self.all, filter: self.filter.filter() }
    }

    fn describe(&self) -> String {
        if self.all {
            self.filter.describe()
        } else {
            format!("{} named", count(self.ids.len() as u64, "dead letter", "dead letters"))
        }
    }

    fn hidden(&self) -> Markup {
        html! {
            @if self.all {
                input type="hidden" name="all" value="1";
                (self.filter.hidden())
            } @else {
                @for id in &self.ids { input type="hidden" name="id" value=(id); }
            }
        }
    }
}

/// `GET /console/dead-letters`: the table.
pub(super) async fn list(
    State(state): State<ConsoleState>,
    session: Session,
    RawQuery(query): RawQuery,
) -> Result<Markup, ConsoleError> {
    let fields = Fields::of_query(query.as_deref());
    let form = FilterForm::read(&fields)?;
    let after = fields.get("after");
    let mut redis = state.redis()?;
    let page = dlq::find(&mut redis, &state.keys, &form.filter(), after, PAGE_SIZE).await?;
    let total = dlq::total(&mut redis, &state.keys).await?;
    let number = |name: &str| fields.get(name).and_then(|value| value.parse::<u64>().ok());
    let filter_query = form.query();
    let with_filter = |extra: &str| {
        let joined = [filter_query.as_str(), extra].into_iter().filter(|part| !part.is_empty()).collect::<Vec<_>>();
        if joined.is_empty() {
            String::new()
        } else {
            format!("?{}", joined.join("&"))
        }
    };
    let body = html! {
        h1 { "Dead letters" }
        @if let Some(purged) = number("purged") {
            (pages::notice(&format!("Purged {}.", count(purged, "dead letter", "dead letters"))))
        }
        (filters(&form))
        p.muted #dead-letter-total {
            (pages::thousands(total)) @if total == 1 { " dead letter" } @else { " dead letters" } " in all; " (page.letters.len()) " shown"
            @if after.is_some() { " (a later page)" }
            @if !form.is_empty() { ", matching the filter" } "."
        }
        @if page.letters.is_empty() {
            p #no-dead-letters { "No dead letter matches." }
        } @else {
            form #dead-letters method="get" action={ (BASE) "/dead-letters/replay" } {
                (table(&page.letters, true))
                div.actions {
                    button type="submit" formaction={ (BASE) "/dead-letters/replay" } { "Replay the ticked…" }
                    button type="submit" formaction={ (BASE) "/dead-letters/purge" } { "Purge the ticked…" }
                    span.muted { "or" }
                    a.button #replay-all href={ (BASE) "/dead-letters/replay" (with_filter("all=1")) } { "Replay every one matching…" }
                    a.button #purge-all href={ (BASE) "/dead-letters/purge" (with_filter("all=1")) } { "Purge every one matching…" }
                }
            }
            div.pager {
                @if after.is_some() {
                    a href={ (BASE) "/dead-letters" (with_filter("")) } { "← First page" }
                }
                @if let (true, Some(last)) = (page.more, page.letters.last()) {
                    a #next-page href={ (BASE) "/dead-letters" (with_filter(&format!("after={}", last.at.id))) } { "Next page →" }
                }
            }
        }
    };
    Ok(pages::page(Layout::SignedIn(&session.csrf, Section::DeadLetters), "Dead letters", body))
}

fn filters(form: &FilterForm) -> Markup {
    html! {
        form.filters method="get" action={ (BASE) "/dead-letters" } {
            label { "Topic" input type="text" name="topic" value=[form.topic.as_deref()] placeholder="enrollment.created"; }
            label { "School (tenant)" input type="text" name="tenant" value=[form.tenant.as_deref()]; }
            label { "Error kind"
                select name="kind" {
                    option value="" { "any" }
                    @for kind in KINDS {
                        option value=(kind) selected[form.kind.as_deref() == Some(kind)] { (kind) }
                    }
                }
            }
            label { "Dead-lettered within"
                select name="age" {
                    option value="" { "any time" }
                    @for (label, _) in AGES {
                        option value=(label) selected[form.age.as_deref() == Some(label)] { (label) }
                    }
                }
            }
            button type="submit" { "Filter" }
            a href={ (BASE) "/dead-letters" } { "Clear" }
        }
    }
}

fn table(letters: &[DeadLetterView], with_ticks: bool) -> Markup {
    html! {
        table.dead-letters {
            thead {
                tr {
                    @if with_ticks { th { span.muted { "✓" } } }
                    th { "id" } th { "dead-lettered" } th { "topic" } th { "school" } th { "event" }
                    th.number { "attempts" } th { "kind" } th { "error" }
                }
            }
            tbody {
                @for letter in letters {
                    tr data-id=(letter.at.id) {
                        @if with_ticks {
                            td { input type="checkbox" name="id" value=(letter.at.id) aria-label={ "choose " (letter.at.id) }; }
                        }
                        // A shard's `/` is one path segment's text, not a separator.
                        td.id { a href={ (BASE) "/dead-letters/" (letter.at.id.replace('/', "%2F")) } { (letter.at.id) } }
                        td.time { (pages::time(&letter.last_failed_at)) }
                        td { (letter.topic) }
                        td { (letter.tenant) }
                        td.event { (shorten(&letter.event_id, 28)) }
                        td.number { (letter.attempts) }
                        td { (letter.error_kind) }
                        td.error { (shorten(&letter.error, 140)) }
                    }
                }
            }
        }
    }
}

/// `GET /console/dead-letters/{id}`: one dead letter whole.
pub(super) async fn detail(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Markup, ConsoleError> {
    let mut redis = state.redis()?;
    let letter = dlq::get(&mut redis, &state.keys, &id)
        .await?
        .ok_or_else(|| ConsoleError::NotFound(format!("no dead letter with id {id} (replayed or purged?)")))?;
    let body_text =
        serde_json::to_string_pretty(letter.body.as_ref().unwrap_or(&serde_json::Value::Null)).unwrap_or_default();
    let fields: [(&str, String); 11] = [
        ("dead letter id", letter.at.id.clone()),
        ("event id", letter.event_id.clone()),
        ("topic", letter.topic.clone()),
        ("school (tenant)", letter.tenant.clone()),
        ("error kind", letter.error_kind.clone()),
        ("error", letter.error.clone()),
        ("attempts", letter.attempts.to_string()),
        ("received at the intake", pages::time(&letter.received_at)),
        ("first failed", pages::time(&letter.first_failed_at)),
        ("last failed", pages::time(&letter.last_failed_at)),
        ("stream entry it was", letter.source_entry_id.clone()),
    ];
    let body = html! {
        p { a href={ (BASE) "/dead-letters" } { "← Dead letters" } }
        h1 { "Dead letter " (letter.at.id) }
        dl.fields #dead-letter {
            @for (name, value) in &fields {
                dt { (name) } dd { (value) }
            }
        }
        div.actions {
            a.button #replay-one href={ (BASE) "/dead-letters/replay?id=" (letter.at.id) } { "Replay…" }
            a.button #purge-one href={ (BASE) "/dead-letters/purge?id=" (letter.at.id) } { "Purge…" }
        }
        h2 { "Headers kept at intake" }
        @match &letter.headers {
            Some(serde_json::Value::Object(headers)) if !headers.is_empty() => {
                table #headers {
                    @for (name, value) in headers {
                        tr { th { (name) } td { (value.as_str().unwrap_or_default()) } }
                    }
                }
            }
            _ => { p.muted { "None kept (the intake keeps Content-Type, User-Agent and X-Thinkific-* but the signature)." } }
        }
        h2 { "Body, as Thinkific sent it" }
        pre #body { (body_text) }
    };
    Ok(pages::page(
        Layout::SignedIn(&session.csrf, Section::DeadLetters),
        &format!("Dead letter {}", letter.at.id),
        body,
    ))
}

/// Which action a preview is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Replay,
    Purge,
}

/// The dry run of a replay or purge, with the form that confirms it.
async fn preview(
    state: &ConsoleState,
    session: &Session,
    action: Action,
    mut chosen: Chosen,
    status: StatusCode,
    problem: Option<&str>,
) -> Result<Response, ConsoleError> {
    let mut redis = state.redis()?;
    let selected = dlq::select(&mut redis, &state.keys, &chosen.selection()).await?;
    if chosen.all {
        // Confirmed up to what is seen now, from the time computed now.
        chosen.filter.up_to = selected.letters.last().map(|letter| letter.at.id.clone());
    }
    let count = selected.letters.len();
    let (verb, title) = match action {
        Action::Replay => ("replayed", "Replay dead letters"),
        Action::Purge => ("purged for good", "Purge dead letters"),
    };
    let body = html! {
        p { a href={ (BASE) "/dead-letters" } { "← Dead letters" } }
        h1 { (title) }
        @if let Some(problem) = problem { p.problem role="alert" { (problem) } }
        p #preview-count data-count=(count) {
            "Dry run: " strong { (letters(count)) } " would be " (verb)
            @if action == Action::Replay { " onto the events stream with fresh attempts" }
            "; nothing has changed yet. Chosen: " (chosen.describe()) "."
        }
        @if !selected.missing.is_empty() {
            p.problem { "Not dead letters (replayed or purged meanwhile?): " (selected.missing.join(", ")) }
        }
        @if count > 0 {
            (table(&selected.letters[..count.min(PREVIEW_ROWS)], false))
            @if count > PREVIEW_ROWS { p.muted { "… and " (count - PREVIEW_ROWS) " more." } }
            @match action {
                Action::Replay => {
                    form #confirm method="post" action={ (BASE) "/dead-letters/replay" } {
                        (csrf_field(&session.csrf))
                        (chosen.hidden())
                        input type="hidden" name="expected" value=(count);
                        div.actions {
                            button.primary #confirm-replay type="submit" { "Replay " (letters(count)) }
                            a href={ (BASE) "/dead-letters" } { "Cancel" }
                        }
                    }
                }
                Action::Purge => {
                    form #confirm method="post" action={ (BASE) "/dead-letters/purge" } {
                        (csrf_field(&session.csrf))
                        (chosen.hidden())
                        input type="hidden" name="expected" value=(count);
                        div.actions {
                            label for="typed" { "Type " strong { (count) } " to delete them for good:" }
                            input #typed type="text" name="confirm" inputmode="numeric" autocomplete="off" required;
                            button.danger #confirm-purge type="submit" { "Purge " (letters(count)) }
                            a href={ (BASE) "/dead-letters" } { "Cancel" }
                        }
                    }
                }
            }
        } @else {
            p { "Nothing to do." }
        }
    };
    Ok((status, pages::page(Layout::SignedIn(&session.csrf, Section::DeadLetters), title, body)).into_response())
}

/// Whether the operator confirmed what `chosen` names now: `Err` says why
/// not (`problem` of the number there is). "Every one matching" needs the
/// bound its preview fixed (`up_to`), and the server recounts: the number
/// confirmed must be the number there is, whatever the form says it saw.
async fn confirmed(
    state: &ConsoleState,
    chosen: &Chosen,
    confirmed_count: Option<usize>,
    problem: impl Fn(usize) -> String,
) -> Result<Result<(), String>, ConsoleError> {
    let mut redis = state.redis()?;
    let count = dlq::select(&mut redis, &state.keys, &chosen.selection()).await?.letters.len();
    let bounded = !chosen.all || chosen.filter.up_to.is_some();
    Ok(match confirmed_count {
        Some(confirmed) if bounded && confirmed == count && count > 0 => Ok(()),
        _ => Err(problem(count)),
    })
}

/// `GET /console/dead-letters/replay`: the dry run of a replay.
pub(super) async fn replay_preview(
    State(state): State<ConsoleState>,
    session: Session,
    RawQuery(query): RawQuery,
) -> Result<Response, ConsoleError> {
    let chosen = Chosen::read(&Fields::of_query(query.as_deref()))?;
    preview(&state, &session, Action::Replay, chosen, StatusCode::OK, None).await
}

/// `POST /console/dead-letters/replay`: starts the replay in the background
/// and shows its progress.
pub(super) async fn replay(
    State(state): State<ConsoleState>,
    session: Session,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let fields = session.form(&body)?;
    let chosen = Chosen::read(&fields)?;
    let shown = fields.get("expected").and_then(|count| count.trim().parse::<usize>().ok());
    let problem =
        |matching: usize| format!("{} match this now; confirm that number; nothing was replayed.", letters(matching));
    if let Err(problem) = confirmed(&state, &chosen, shown, problem).await? {
        tracing::info!(session = session.fingerprint(), chosen = %chosen.describe(), "console replay not confirmed; nothing replayed");
        return preview(&state, &session, Action::Replay, chosen, StatusCode::BAD_REQUEST, Some(&problem)).await;
    }
    let job = jobs::start_replay(&state, &session, chosen.selection(), chosen.describe()).await?;
    Ok(Redirect::to(&format!("{BASE}/jobs/{job}")).into_response())
}

/// `GET /console/dead-letters/purge`: the dry run of a purge, and the typed confirmation.
pub(super) async fn purge_preview(
    State(state): State<ConsoleState>,
    session: Session,
    RawQuery(query): RawQuery,
) -> Result<Response, ConsoleError> {
    let chosen = Chosen::read(&Fields::of_query(query.as_deref()))?;
    preview(&state, &session, Action::Purge, chosen, StatusCode::OK, None).await
}

/// `POST /console/dead-letters/purge`: deletes them, once the number shown
/// was typed.
pub(super) async fn purge(
    State(state): State<ConsoleState>,
    session: Session,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let fields = session.form(&body)?;
    let chosen = Chosen::read(&fields)?;
    let typed = fields.get("confirm").and_then(|count| count.trim().parse::<usize>().ok());
    let problem = |count| format!("Type {count} to confirm; nothing was deleted.");
    if let Err(problem) = confirmed(&state, &chosen, typed, problem).await? {
        tracing::info!(session = session.fingerprint(), chosen = %chosen.describe(), "console purge not confirmed; nothing deleted");
        return preview(&state, &session, Action::Purge, chosen, StatusCode::BAD_REQUEST, Some(&problem)).await;
    }
    let mut redis = state.redis()?;
    let report = dlq::purge_selected(&mut redis, &state.keys, &chosen.selection()).await?;
    tracing::info!(
        session = session.fingerprint(), chosen = %chosen.describe(), purged = report.purged,
        missing = report.missing.len(), "console purged dead letters"
    );
    Ok(Redirect::to(&format!("{BASE}/dead-letters?purged={}", report.purged)).into_response())
}

/// `1 dead letter`, `3 dead letters`.
fn letters(n: usize) -> String {
    count(n as u64, "dead letter", "dead letters")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_reads_its_form_and_refuses_what_it_cannot_use() {
        let form = FilterForm::read(&Fields::parse(b"topic=user.signup&kind=event&age=1h")).expect("a filter");
        let filter = form.filter();
        assert_eq!((filter.topic.as_deref(), filter.error_kind.as_deref()), (Some("user.signup"), Some("event")));
        let since = filter.since.expect("an age sets since");
        assert!((Utc::now() - since - chrono::Duration::hours(1)).num_seconds().abs() < 5);
        assert_eq!(form.query(), "topic=user.signup&kind=event&age=1h");
        assert!(form.describe().contains("topic user.signup"), "{}", form.describe());
        for bad in [&b"kind=*"[..], b"age=2y", b"since=yesterday"] {
            assert!(FilterForm::read(&Fields::parse(bad)).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let long = format!("topic={}", "a".repeat(MAX_FILTER_LEN + 1));
        assert!(FilterForm::read(&Fields::parse(long.as_bytes())).is_err());
    }

    #[test]
    fn a_choice_is_ticked_ids_or_every_one_matching() {
        let ticked = Chosen::read(&Fields::parse(b"id=1-0&id=2-0&topic=ignored")).expect("ids");
        assert_eq!(ticked.selection().ids, ["1-0", "2-0"]);
        assert_eq!(ticked.selection().filter, Filter::default(), "ticked ones are taken as they are");
        let all = Chosen::read(&Fields::parse(b"all=1&tenant=a&up_to=5-0")).expect("all");
        let selection = all.selection();
        assert!(selection.all && selection.ids.is_empty());
        assert_eq!((selection.filter.tenant.as_deref(), selection.filter.up_to.as_deref()), (Some("a"), Some("5-0")));
        assert!(Chosen::read(&Fields::parse(b"topic=a")).is_err(), "nothing chosen");
    }
}
