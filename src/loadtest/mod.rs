//! `fleet loadtest`: drives an intake with realistic signed Thinkific
//! webhooks and measures the fleet behind it from outside, the way an
//! operator validates a deployment and the way we measure our speed.
//!
//! One run, in order:
//! 1. [`destination`]: the target is resolved and must be this machine
//!    (loopback) unless `--allow-remote`: a load test is an attack on
//!    anything else. Nothing is generated or sent before this check.
//! 2. [`generate`]: every body built and signed up front (enrollment
//!    histories over many courses and learners, moved out of time order,
//!    some delivered twice), so the generator's own CPU is small.
//! 3. [`send`]: keep-alive HTTP/1 connections at a concurrency (closed
//!    loop) or a fixed rate (open loop, latency from when each webhook was
//!    due); answers by status, latency percentiles.
//! 4. [`observe`]: the workers' `/metrics` and the run's rows in Postgres,
//!    read before and after, until every accepted event is applied (or
//!    `--drain-timeout`): drain time, events applied per second, freshness
//!    (intake to dashboard prewarmed) from the workers' histogram; CPU time
//!    of this process and of watched ones from `/proc`.
//! 5. [`report`]: a table, or JSON with `--json`, on stdout; a progress bar
//!    on stderr when it is a terminal.
//!
//! Exit codes (`crate::exit`): 0 the run passed (every webhook accepted or
//! a duplicate, every accepted event applied as far as observed),
//! [`FAILURE`](exit::FAILURE) it did not or the fleet could not be
//! observed, [`USAGE`](exit::USAGE) refused (a non-loopback target without
//! `--allow-remote`, a bad URL, a `--metrics-url` that is not a worker's).
//! Speed itself is never a failure: the report says what it was.

pub mod generate;
pub(crate) mod observe;
pub mod report;
pub mod send;

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderValue;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

use self::generate::Shape;
use self::observe::{ObserveError, RunEvents, Scrape, WorkerMetrics};
use self::report::{DrainReport, FreshnessReport, GeneratorReport, IntakeReport, PaceReport, Percentiles, Report};
use self::send::{Destination, Pace};
use crate::exit::{self, Exit};
use crate::operator::output::Output;
use crate::secrets::WebhookSecrets;
use crate::urls::{self, DatabaseUrl, HttpUrl};

/// The intake's webhook path, used when `--url` names only the server.
pub(crate) const WEBHOOK_PATH: &str = "/webhooks/thinkific";

/// One run's settings, validated by the command line.
#[derive(Debug)]
pub struct Settings {
    /// The intake: its base URL or its whole webhook URL.
    pub url: HttpUrl,
    pub shape: Shape,
    pub pace: Pace,
    /// Signs every body with its first key.
    pub secrets: WebhookSecrets,
    /// Each worker's `/metrics` (or `fleet dev`'s).
    pub metrics_urls: Vec<HttpUrl>,
    pub database_url: Option<DatabaseUrl>,
    /// How long after the last answer to wait for every accepted event to be applied.
    pub drain_timeout: Duration,
    /// Processes (the intake, workers, Redis, Postgres) whose CPU time to report.
    pub watch_pids: Vec<u32>,
    pub allow_remote: bool,
    pub output: Output,
}

/// Runs the load test and prints its report; an error says why it did not
/// pass or could not run, with its exit code (see the module).
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let destination = destination(settings.url.url(), settings.allow_remote).await?;
    // The metrics are read from where the load goes: the same rule.
    for url in &settings.metrics_urls {
        resolve_address("--metrics-url", url.url(), settings.allow_remote).await?;
    }
    let target = shown_target(settings.url.url(), &destination);
    let metrics_urls: Vec<url::Url> = settings.metrics_urls.iter().map(|url| url.url().clone()).collect();
    let metrics = (!metrics_urls.is_empty()).then(|| WorkerMetrics::new(metrics_urls));
    // Read before anything is generated: a wrong URL is refused at once.
    let metrics_before = match &metrics {
        Some(metrics) => Some(metrics.scrape().await.map_err(observe_failure)?),
        None => None,
    };

    let workload = generate::generate(&settings.shape, settings.secrets.signing_key());
    let summary = workload.summary.clone();
    let tenant = settings.shape.tenant.as_str().to_owned();
    let postgres = match &settings.database_url {
        Some(url) => {
            let (first, last) = &workload.event_ids;
            Some(RunEvents::connect(url.as_str(), &tenant, first, last).await.map_err(observe_failure)?)
        }
        None => None,
    };
    let connections = settings.pace.connections();
    let rate = match settings.pace {
        Pace::Rate { per_second, .. } => Some(per_second),
        Pace::Concurrency(_) => None,
    };
    tracing::info!(
        target_url = %target, tenant, requests = summary.requests, events = summary.events, connections,
        rate = rate.unwrap_or_default(), "load test: sending"
    );

    // A bar only for a person watching: never in JSON runs or logs.
    let progress = !settings.output.is_json() && std::io::stderr().is_terminal();
    let answered = Arc::new(AtomicU64::new(0));
    let sending_bar = progress.then(|| bar(summary.requests, "sending "));
    let ticker = sending_bar.clone().map(|bar| {
        let answered = answered.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(answered.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let watched_before: Vec<Option<Duration>> =
        settings.watch_pids.iter().map(|pid| observe::cpu_time(Some(*pid))).collect();
    let cpu_before = observe::cpu_time(None);
    let webhooks = Arc::new(workload.webhooks);
    let sent = send::send_all(&destination, webhooks, settings.pace, answered.clone()).await;
    let cpu_sending = observe::cpu_time(None).zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
    let watched_sending: Vec<Option<Duration>> =
        settings.watch_pids.iter().map(|pid| observe::cpu_time(Some(*pid))).collect();
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    if let Some(bar) = &sending_bar {
        bar.set_position(answered.load(Ordering::Relaxed));
        bar.finish();
    }
    let sending_seconds = (sent.finished - sent.started).as_secs_f64().max(1e-9);
    let answers = sent.answers.clone();
    tracing::info!(
        accepted = answers.accepted,
        duplicate = answers.duplicate,
        failed = answers.failed(),
        seconds = sending_seconds,
        "load test: sent; waiting for the workers"
    );

    // The drain: every accepted event applied, as the observers tell.
    let expected = answers.accepted;
    let deadline = sent.finished + settings.drain_timeout;
    let drain_bar = (progress && (metrics.is_some() || postgres.is_some())).then(|| bar(expected, "applying"));
    let on_progress = |applied: u64| {
        if let Some(bar) = &drain_bar {
            bar.set_position(applied);
        }
    };
    let metrics_pair = metrics.as_ref().zip(metrics_before.as_ref());
    let drained = observe::wait_until_applied(metrics_pair, postgres.as_ref(), expected, deadline, &on_progress)
        .await
        .map_err(observe_failure)?;
    if let Some(bar) = &drain_bar {
        bar.finish();
    }
    let freshness = match metrics_pair {
        Some((metrics, before)) => {
            // Freshness is recorded just after "applied": wait a little for it.
            let wait = if drained.complete { Duration::from_secs(10) } else { Duration::ZERO };
            let delta = observe::wait_for_freshness(metrics, before, expected, Instant::now() + wait)
                .await
                .map_err(observe_failure)?;
            Some(freshness_report(&delta))
        }
        None => None,
    };
    let watched_total: Vec<Option<Duration>> =
        settings.watch_pids.iter().map(|pid| observe::cpu_time(Some(*pid))).collect();

    let mut observed_by = Vec::new();
    if metrics.is_some() {
        observed_by.push("metrics");
    }
    if postgres.is_some() {
        observed_by.push("postgres");
    }
    let drain_done_at = drained.at.filter(|_| drained.complete);
    let drain = DrainReport {
        complete: drained.complete,
        observed_by,
        expected,
        applied_by_metrics: drained.applied_by_metrics,
        applied_in_postgres: drained.applied_in_postgres,
        drain_seconds: drain_done_at.map(|at| at.saturating_duration_since(sent.finished).as_secs_f64()),
        applied_per_second: drain_done_at
            .filter(|_| expected > 0)
            .map(|at| expected as f64 / (at - sent.started).as_secs_f64().max(1e-9)),
    };
    let requests = summary.requests;
    let per_request = |cpu: Duration| cpu.as_secs_f64() * 1e6 / requests.max(1) as f64;
    let generator = GeneratorReport {
        cpu_seconds_sending: cpu_sending.map(|cpu| cpu.as_secs_f64()),
        cpu_microseconds_per_request: cpu_sending.map(per_request),
        cores_busy: cpu_sending.map(|cpu| cpu.as_secs_f64() / sending_seconds),
    };
    let watched = settings
        .watch_pids
        .iter()
        .enumerate()
        .map(|(index, &pid)| {
            let used = |until: &[Option<Duration>]| {
                until[index].zip(watched_before[index]).map(|(after, before)| after.saturating_sub(before))
            };
            let (sending, total) = (used(&watched_sending), used(&watched_total));
            report::WatchedReport {
                pid,
                name: observe::process_name(pid),
                cpu_seconds_sending: sending.map(|cpu| cpu.as_secs_f64()),
                cpu_seconds_total: total.map(|cpu| cpu.as_secs_f64()),
                cpu_microseconds_per_request: sending.map(per_request),
                cpu_microseconds_per_event: total
                    .filter(|_| expected > 0)
                    .map(|cpu| cpu.as_secs_f64() * 1e6 / expected as f64),
            }
        })
        .collect();
    let failed = answers.failed();
    let passed = failed == 0 && (drain.observed_by.is_empty() || drain.complete);
    let report = Report {
        target,
        tenant,
        pace: PaceReport { connections, rate },
        generated: summary,
        intake: IntakeReport {
            requests,
            seconds: sending_seconds,
            requests_per_second: requests as f64 / sending_seconds,
            answers,
            latency_ms: Percentiles::of_micros(&sent.latencies_us),
            service_time_ms: Percentiles::of_micros(&sent.service_us),
            send_lag_ms: Percentiles::of_micros(&sent.lag_us),
        },
        drain,
        freshness,
        generator,
        watched,
        passed,
    };
    tracing::info!(passed, "load test: done");
    settings.output.data(&report, |out| report::write_text(&report, out))?;
    if passed {
        return Ok(());
    }
    let mut reasons = Vec::new();
    if failed > 0 {
        reasons.push(format!("{failed} of {requests} webhooks were not accepted (see the answers)"));
    }
    if !report.drain.complete && !report.drain.observed_by.is_empty() {
        let applied = report.drain.applied_in_postgres.or(report.drain.applied_by_metrics).unwrap_or(0);
        reasons.push(format!(
            "only {applied} of {expected} accepted events were applied within --drain-timeout ({} s)",
            settings.drain_timeout.as_secs()
        ));
    }
    Err(Exit { code: exit::FAILURE, message: format!("load test failed: {}", reasons.join("; ")) }.into())
}

fn freshness_report(delta: &Scrape) -> FreshnessReport {
    let ms = |q: f64| delta.freshness_quantile(q).map(|seconds| seconds * 1000.0);
    FreshnessReport {
        samples: delta.freshness_count.max(0.0) as u64,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
    }
}

/// A metrics page that is not a worker's is a usage error (exit 2); an
/// unreachable server or database is a failure (exit 1).
fn observe_failure(error: ObserveError) -> anyhow::Error {
    let code = match error {
        ObserveError::NotAWorker { .. } => exit::USAGE,
        ObserveError::Metrics { .. } | ObserveError::Postgres(_) => exit::FAILURE,
    };
    Exit { code, message: error.to_string() }.into()
}

fn bar(length: u64, phase: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(&format!(
        "{phase} [{{bar:40}}] {{human_pos}}/{{human_len}}, {{elapsed}} elapsed, {{eta}} left"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    ProgressBar::new(length).with_style(style)
}

/// The URL webhooks are posted to, as it may be shown.
fn shown_target(url: &url::Url, destination: &Destination) -> String {
    let mut shown = url.clone();
    shown.set_path(destination.path.path());
    urls::redact(&shown)
}

/// Resolves `url` to where webhooks are posted; refused (exit 2) unless it
/// is plain HTTP to this machine, or `allow_remote`.
pub async fn destination(url: &url::Url, allow_remote: bool) -> Result<Destination, Exit> {
    let refuse = |message: String| Exit { code: exit::USAGE, message };
    let shown = urls::redact(url);
    if url.scheme() != "http" {
        return Err(refuse(format!(
            "--url {shown}: only http:// is supported; point it at the intake itself, not at a TLS proxy"
        )));
    }
    let address = resolve_address("--url", url, allow_remote).await?;
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let host =
        HeaderValue::from_str(&host).map_err(|_| refuse(format!("--url {shown}: its host is not a header value")))?;
    let path = match url.path() {
        "" | "/" => WEBHOOK_PATH.to_owned(),
        path => path.to_owned(),
    };
    let path = path.parse().map_err(|_| refuse(format!("--url {shown}: its path is not a request path")))?;
    Ok(Destination { address, host, path })
}

/// The address `url` (given as `flag`) resolves to; refused (exit 2) when
/// it is not this machine, unless `allow_remote`.
async fn resolve_address(flag: &str, url: &url::Url, allow_remote: bool) -> Result<SocketAddr, Exit> {
    let refuse = |message: String| Exit { code: exit::USAGE, message };
    let shown = urls::redact(url);
    let port = url.port_or_known_default().unwrap_or(80);
    let addresses: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        Some(url::Host::Domain(name)) => match tokio::net::lookup_host((name, port)).await {
            Ok(found) => found.collect(),
            Err(err) => return Err(refuse(format!("{flag} {shown}: cannot resolve {name}: {err}"))),
        },
        None => return Err(refuse(format!("{flag} {shown} names no host"))),
    };
    let Some(&address) = addresses.first() else {
        return Err(refuse(format!("{flag} {shown}: its host resolves to no address")));
    };
    let remote: Vec<String> = addresses
        .iter()
        .filter(|address| !address.ip().to_canonical().is_loopback())
        .map(|a| a.ip().to_string())
        .collect();
    if !remote.is_empty() && !allow_remote {
        return Err(refuse(format!(
            "refusing to load-test with {flag} {shown}: it is not this machine (it resolves to {}); a load test against a \
             server others use needs --allow-remote",
            remote.join(", ")
        )));
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn resolved(url: &str, allow_remote: bool) -> Result<Destination, Exit> {
        destination(&url::Url::parse(url).expect("a URL"), allow_remote).await
    }

    #[tokio::test]
    async fn only_loopback_targets_are_allowed_without_allow_remote() {
        for url in ["http://127.0.0.1:8080", "http://127.3.4.5:1/x", "http://[::1]:8080", "http://localhost:8080"] {
            let destination = resolved(url, false).await.unwrap_or_else(|refused| panic!("{url}: {refused}"));
            assert!(destination.address.ip().is_loopback(), "{url}");
        }
        for url in ["http://10.1.2.3:8080", "http://[2001:db8::1]:80", "http://0.0.0.0:8080"] {
            let refused = resolved(url, false).await.err().unwrap_or_else(|| panic!("{url} was allowed"));
            assert_eq!(refused.code, 2, "{url}");
            assert!(refused.message.contains("--allow-remote"), "{url}: {refused}");
            assert!(resolved(url, true).await.is_ok(), "{url} with --allow-remote");
        }
        let refused = resolved("https://127.0.0.1:8443", false).await.expect_err("https is refused");
        assert!(refused.message.contains("only http://"), "{refused}");
    }

    #[tokio::test]
    async fn the_webhook_path_is_added_to_a_bare_url_and_the_host_header_keeps_the_port() {
        let bare = resolved("http://127.0.0.1:8080", false).await.expect("allowed");
        assert_eq!((bare.path.path(), bare.host.to_str().ok()), (WEBHOOK_PATH, Some("127.0.0.1:8080")));
        let whole = resolved("http://localhost/api/webhooks/enrollment", false).await.expect("allowed");
        assert_eq!((whole.path.path(), whole.host.to_str().ok()), ("/api/webhooks/enrollment", Some("localhost")));
        assert_eq!(whole.address.port(), 80);
    }
}
