//! The overview: does the fleet keep up? The `fleet status` report (its
//! verdict first), the consumers, the cache's hit rate, and charts of the
//! last hour from the activity the workers record. It reloads itself every
//! [`REFRESH_SECS`].

use axum::extract::State;
use chrono::Utc;
use maud::{html, Markup};

use super::chart::{chart, Mark, Series};
use super::pages::{self, Layout, Section};
use super::session::Session;
use super::{ConsoleError, ConsoleState, BASE};
use crate::operator::output::human_duration;
use crate::operator::status::{self, StatusReport};
use crate::operator::{self};
use crate::redis::activity::Tally;
use crate::redis::roles::RoleReport;

/// How often the overview reloads itself.
pub(crate) const REFRESH_SECS: u32 = 10;
/// The minutes the charts cover.
const CHART_MINUTES: usize = 60;

/// `GET /console`.
pub(super) async fn page(State(state): State<ConsoleState>, session: Session) -> Result<Markup, ConsoleError> {
    let mut redis = state.redis()?;
    let report = status::report(&mut redis, &state.keys).await?;
    let minutes = status::activity_by_minute(&mut redis, &state.keys, CHART_MINUTES).await?;
    let cache = operator::cache::counters(&mut redis, &state.keys).await?;
    let processes = crate::redis::roles::recent(&mut redis, &state.keys, Utc::now()).await?;
    let body = html! {
        h1 { "Overview" }
        p.verdict.(report.verdict.level.as_str()) #verdict role="status" { (report.verdict.to_string()) }
        (tiles(&report, cache.hit_rate, cache.hits + cache.stale + cache.misses))
        h2 { "The last hour" }
        (charts(&minutes))
        @if report.shards.len() > 1 {
            h2 { "Stream shards" }
            (shards(&report))
        }
        h2 { "Processes" }
        (processes_table(&processes))
        h2 { "Consumers" }
        (consumers(&report))
        p.muted {
            "Read at " (Utc::now().format("%H:%M:%S UTC")) " from "
            code { (report.stream) } "; this page reloads every " (REFRESH_SECS) " s. "
            "The same report: " code { "fleet status" } "."
        }
    };
    Ok(pages::page(Layout::Refreshing(&session.csrf, Section::Overview, REFRESH_SECS), "Overview", body))
}

/// A rate with the digits that matter: `0.03`, `4.2`, `1250`.
fn rate(per_second: f64) -> String {
    match per_second {
        0.0 => "0".to_owned(),
        value if value < 1.0 => format!("{value:.2}"),
        value if value < 100.0 => format!("{value:.1}"),
        value => format!("{value:.0}"),
    }
}

fn tile(label: &str, figure: String, detail: Option<String>) -> Markup {
    html! {
        div.tile {
            span.figure { (figure) }
            span.label { (label) }
            @if let Some(detail) = detail {
                br; span.label { (detail) }
            }
        }
    }
}

fn tiles(report: &StatusReport, hit_rate: f64, reads: u64) -> Markup {
    let recent = &report.recent;
    html! {
        div.tiles {
            (tile("entries in the stream", pages::thousands(report.length), None))
            (tile("not yet delivered (lag)", report.undelivered.map_or("unknown".to_owned(), pages::thousands), None))
            (tile("pending (not yet acked)", pages::thousands(report.pending),
                (report.pending > 0).then(|| format!("oldest {}", human_duration(report.oldest_pending_age_ms)))))
            (tile("live workers", report.live_workers.to_string(), Some(match report.consumers.len() {
                1 => "1 consumer in the group".to_owned(),
                count => format!("{count} consumers in the group"),
            })))
            (tile("retries scheduled", pages::thousands(report.retries_scheduled),
                report.next_retry_at.as_deref().map(|at| format!("next {}", pages::time(at)))))
            div.tile {
                a href={ (BASE) "/dead-letters" } { span.figure #dead-letter-count { (pages::thousands(report.dead_letters)) } }
                span.label { "dead letters" }
            }
            (tile("applied per second", rate(recent.applied_per_second),
                Some(format!("over the last {} min", recent.minutes))))
            (tile("freshness, mean",
                recent.freshness_mean_ms.map_or("–".to_owned(), human_duration),
                Some(match recent.freshness_max_ms {
                    Some(max) => format!("max {} over the last {} min", human_duration(max), recent.minutes),
                    None => format!("nothing applied in the last {} min", recent.minutes),
                })))
            (tile("cache hit rate", if reads > 0 { format!("{:.1} %", hit_rate * 100.0) } else { "–".to_owned() },
                Some(format!("{} reads counted", pages::thousands(reads)))))
        }
    }
}

/// Per-minute figures: applied per second (the current minute over the
/// seconds it has had), freshness in seconds, backlog.
fn charts(minutes: &[(chrono::DateTime<Utc>, Tally)]) -> Markup {
    let now = Utc::now();
    let per_second = |(start, tally): &(chrono::DateTime<Utc>, Tally)| {
        let seconds = (now - *start).num_seconds().clamp(1, 60) as f64;
        Some(tally.applied as f64 / seconds)
    };
    let applied = vec![Series {
        label: "applied per second",
        class: "bar",
        mark: Mark::Bars,
        values: minutes.iter().map(per_second).collect(),
    }];
    let freshness = vec![
        Series {
            label: "mean",
            class: "line-mean",
            mark: Mark::Line,
            values: minutes.iter().map(|(_, tally)| tally.freshness_mean_ms().map(|ms| ms as f64 / 1000.0)).collect(),
        },
        Series {
            label: "max",
            class: "line-max",
            mark: Mark::Line,
            values: minutes
                .iter()
                .map(|(_, tally)| (tally.freshness_count > 0).then(|| tally.freshness_max_ms as f64 / 1000.0))
                .collect(),
        },
    ];
    let backlog = vec![Series {
        label: "backlog",
        class: "line-backlog",
        mark: Mark::Line,
        values: minutes.iter().map(|(_, tally)| Some(tally.backlog_max as f64)).collect(),
    }];
    html! {
        div.charts {
            (chart("Events applied per second", CHART_MINUTES, &applied, rate))
            (chart("Freshness: receipt to dashboard (s)", CHART_MINUTES, &freshness, |value| format!("{value:.1} s")))
            (chart("Backlog: undelivered + pending, the largest of each minute", CHART_MINUTES, &backlog, |value| {
                pages::thousands(value.max(0.0) as u64)
            }))
        }
    }
}

/// Each stream shard's figures (shown when there are several).
fn shards(report: &StatusReport) -> Markup {
    html! {
        table #shards {
            thead {
                tr {
                    th { "shard" } th.number { "length" } th.number { "undelivered" } th.number { "pending" }
                    th.number { "oldest pending" } th.number { "retries" } th.number { "dead letters" }
                }
            }
            tbody {
                @for shard in &report.shards {
                    tr {
                        td { (shard.shard) }
                        td.number { (pages::thousands(shard.length)) }
                        td.number { @match shard.undelivered { Some(lag) => (pages::thousands(lag)), None => "unknown" } }
                        td.number { (pages::thousands(shard.pending)) }
                        td.number { @if shard.pending > 0 { (human_duration(shard.oldest_pending_age_ms)) } @else { "–" } }
                        td.number { (pages::thousands(shard.retries_scheduled)) }
                        td.number { (pages::thousands(shard.dead_letters)) }
                    }
                }
            }
        }
    }
}

/// Each process heard from in the last minute, and its dependencies as its
/// `/readyz` reports them.
fn processes_table(processes: &[RoleReport]) -> Markup {
    html! {
        @if processes.is_empty() {
            p.muted #processes { "No process has reported in the last minute." }
        } @else {
            table #processes {
                thead { tr { th { "role" } th { "process" } th { "ready" } th { "dependencies" } th { "reported" } } }
                tbody {
                    @for process in processes {
                        tr {
                            td { (process.role) }
                            td.id { (process.instance) }
                            td { @if process.ready { "ready" } @else { span.problem { "unavailable" } } }
                            td {
                                @for dependency in &process.dependencies {
                                    span.dependency {
                                        (dependency.name) @if !dependency.required { " (optional)" } ": "
                                        @if dependency.state == "up" { "up" } @else { span.problem { (dependency.state) } }
                                    }
                                    " "
                                }
                            }
                            td.time { (human_duration((Utc::now() - process.at).num_milliseconds().max(0) as u64)) " ago" }
                        }
                    }
                }
            }
        }
    }
}

fn consumers(report: &StatusReport) -> Markup {
    html! {
        @if report.consumers.is_empty() {
            p.muted { "No consumer has joined the group yet: start " code { "fleet worker" } "." }
        } @else {
            table #consumers {
                thead { tr { th { "consumer" } th { "worker" } th.number { "pending" } th.number { "idle" } } }
                tbody {
                    @for consumer in &report.consumers {
                        tr {
                            td { (consumer.name) }
                            td { @if consumer.live { "live" } @else { span.muted { "none holds this name" } } }
                            td.number { (pages::thousands(consumer.pending)) }
                            td.number { (human_duration(consumer.idle_ms)) }
                        }
                    }
                }
            }
        }
    }
}
