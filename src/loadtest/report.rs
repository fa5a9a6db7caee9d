//! The report of a run: one value ([`Report`]), printed as a table for a
//! person or as JSON (`--json`) for a script, on stdout.
//!
//! Durations are in milliseconds (`_ms`) or seconds (`_seconds`), rates per
//! second; a figure nobody could observe (no `--metrics-url`, no
//! `--database-url`) is `null`, never a guess.

use std::io::Write;

use serde::Serialize;

use super::generate::Generated;
use super::send::Answers;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// Where the webhooks went (shown redacted).
    pub target: String,
    pub tenant: String,
    pub pace: PaceReport,
    pub generated: Generated,
    pub intake: IntakeReport,
    pub drain: DrainReport,
    /// Intake answer to dashboard keys prewarmed, from the workers'
    /// `fleet_freshness_seconds`; `null` without `--metrics-url`.
    pub freshness: Option<FreshnessReport>,
    pub generator: GeneratorReport,
    /// Processes given with `--watch-pid`: their CPU time during the run.
    pub watched: Vec<WatchedReport>,
    /// Whether every request was accepted or a duplicate and every accepted
    /// event applied (as far as observed).
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PaceReport {
    /// Connections used.
    pub connections: usize,
    /// Webhooks per second asked for (open loop); `null` at a concurrency.
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct IntakeReport {
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub answers: Answers,
    /// From send to answer; at a rate, from when due for a webhook that found
    /// every connection busy (no coordinated omission).
    pub latency_ms: Option<Percentiles>,
    /// At a rate: from send to answer.
    pub service_time_ms: Option<Percentiles>,
    /// At a rate: how late sends went out; large when the connections were all
    /// busy, about a millisecond otherwise (the timer's granularity).
    pub send_lag_ms: Option<Percentiles>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `sorted` microseconds, in milliseconds.
    pub(crate) fn of_micros(sorted: &[u32]) -> Option<Self> {
        let at = |q: f64| {
            let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
            f64::from(sorted[rank - 1]) / 1000.0
        };
        let max = f64::from(*sorted.last()?) / 1000.0;
        Some(Self { p50: at(0.50), p90: at(0.90), p99: at(0.99), max })
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct DrainReport {
    /// What watched the workers: `metrics`, `postgres`, both or neither.
    pub observed_by: Vec<&'static str>,
    /// Events the intake accepted: each must be applied once.
    pub expected: u64,
    pub applied_by_metrics: Option<u64>,
    pub applied_in_postgres: Option<u64>,
    /// Every accepted event applied within `--drain-timeout`.
    pub complete: bool,
    /// From the last answer to every accepted event applied.
    pub drain_seconds: Option<f64>,
    /// Accepted events over the time from the first send to all applied.
    pub applied_per_second: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct FreshnessReport {
    pub samples: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct GeneratorReport {
    /// This process's CPU time while sending (`null` where `/proc` is missing).
    pub cpu_seconds_sending: Option<f64>,
    pub cpu_microseconds_per_request: Option<f64>,
    /// CPU while sending over the sending time: 1.0 is one core busy.
    pub cores_busy: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct WatchedReport {
    pub pid: u32,
    pub name: Option<String>,
    /// CPU time from the first send to the last answer.
    pub cpu_seconds_sending: Option<f64>,
    /// CPU time from the first send to the end of the drain.
    pub cpu_seconds_total: Option<f64>,
    /// Sending CPU per request.
    pub cpu_microseconds_per_request: Option<f64>,
    /// Whole-run CPU per accepted event.
    pub cpu_microseconds_per_event: Option<f64>,
}

/// Writes `report` as a table.
pub(crate) fn write_text(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let generated = &report.generated;
    let pace = match report.pace.rate {
        Some(rate) => {
            format!("{} webhooks/s over up to {} connections", thousands(rate as u64), report.pace.connections)
        }
        None => format!("{} concurrent connections", report.pace.connections),
    };
    writeln!(out, "fleet loadtest: {} (tenant {}), {pace}", report.target, report.tenant)?;
    writeln!(
        out,
        "  generated   {} events ({} created, {} progress, {} completed; {} enrollments, {} learners, {} courses) \
         + {} duplicates = {} webhooks, {}, in {:.2} s",
        thousands(generated.events),
        thousands(generated.created),
        thousands(generated.progress),
        thousands(generated.completed),
        thousands(generated.enrollments),
        thousands(generated.users),
        thousands(u64::from(generated.courses)),
        thousands(generated.duplicates),
        thousands(generated.requests),
        crate::operator::output::human_bytes(generated.body_bytes),
        generated.seconds,
    )?;
    let intake = &report.intake;
    writeln!(
        out,
        "  intake      {} requests in {:.2} s: {} requests/s",
        thousands(intake.requests),
        intake.seconds,
        thousands(intake.requests_per_second.round() as u64)
    )?;
    let answers = &intake.answers;
    let mut answered = vec![
        format!("accepted {}", thousands(answers.accepted)),
        format!("duplicate {}", thousands(answers.duplicate)),
    ];
    for (status, count) in &answers.by_status {
        if *status != 200 {
            answered.push(format!("{status}: {}", thousands(*count)));
        }
    }
    answered.push(format!("no answer {}", thousands(answers.transport_errors)));
    writeln!(out, "    {:<18} {}", "answers", answered.join(" · "))?;
    if let Some(error) = &answers.first_transport_error {
        writeln!(out, "    first error: {error}")?;
    }
    write_percentiles(out, "latency", intake.latency_ms)?;
    write_percentiles(out, "service time", intake.service_time_ms)?;
    write_percentiles(out, "send lag", intake.send_lag_ms)?;

    let drain = &report.drain;
    if drain.observed_by.is_empty() {
        writeln!(out, "  drain       not observed (give --metrics-url or --database-url)")?;
    } else {
        let counts: Vec<String> = [("metrics", drain.applied_by_metrics), ("postgres", drain.applied_in_postgres)]
            .into_iter()
            .filter_map(|(by, count)| count.map(|count| format!("{} by {by}", thousands(count))))
            .collect();
        match (drain.complete, drain.drain_seconds, drain.applied_per_second) {
            (true, Some(seconds), Some(rate)) => writeln!(
                out,
                "  drain       all {} accepted events applied {seconds:.2} s after the last answer ({}); \
                 {} events/s over the whole run",
                thousands(drain.expected),
                counts.join(", "),
                thousands(rate.round() as u64),
            )?,
            _ => writeln!(
                out,
                "  drain       NOT COMPLETE: {} accepted, applied {} when --drain-timeout ran out",
                thousands(drain.expected),
                counts.join(", ")
            )?,
        }
    }
    match &report.freshness {
        None => writeln!(out, "  freshness   not observed (give --metrics-url)")?,
        Some(freshness) => {
            let ms = |value: Option<f64>| value.map_or("–".to_owned(), |ms| format!("{ms:.1} ms"));
            writeln!(
                out,
                "  freshness   p50 {} · p90 {} · p99 {} ({} samples; intake to dashboard prewarmed, from \
                 fleet_freshness_seconds buckets)",
                ms(freshness.p50_ms),
                ms(freshness.p90_ms),
                ms(freshness.p99_ms),
                thousands(freshness.samples),
            )?;
        }
    }
    let generator = &report.generator;
    match (generator.cpu_seconds_sending, generator.cpu_microseconds_per_request, generator.cores_busy) {
        (Some(seconds), Some(per_request), Some(cores)) => writeln!(
            out,
            "  generator   {seconds:.2} s CPU while sending: {per_request:.1} µs per request, {:.0} % of one core",
            cores * 100.0
        )?,
        _ => writeln!(out, "  generator   CPU time not available on this system")?,
    }
    for watched in &report.watched {
        let name = watched.name.as_deref().unwrap_or("gone");
        let figure = |value: Option<f64>, unit: &str| value.map_or("–".to_owned(), |v| format!("{v:.2}{unit}"));
        writeln!(
            out,
            "  pid {} ({name})  CPU {} while sending ({} per request), {} in all ({} per accepted event)",
            watched.pid,
            figure(watched.cpu_seconds_sending, " s"),
            figure(watched.cpu_microseconds_per_request, " µs"),
            figure(watched.cpu_seconds_total, " s"),
            figure(watched.cpu_microseconds_per_event, " µs"),
        )?;
    }
    writeln!(out, "  result      {}", if report.passed { "passed" } else { "FAILED" })?;
    Ok(())
}

fn write_percentiles(out: &mut dyn Write, name: &str, percentiles: Option<Percentiles>) -> std::io::Result<()> {
    let Some(p) = percentiles else {
        return Ok(());
    };
    writeln!(
        out,
        "    {name:<18} p50 {:.2} ms · p90 {:.2} ms · p99 {:.2} ms · max {:.2} ms",
        p.p50, p.p90, p.p99, p.max
    )
}

/// `12345` as `12,345`.
fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_in_milliseconds() {
        let sorted: Vec<u32> = (1..=100).map(|n| n * 1000).collect();
        let p = Percentiles::of_micros(&sorted).expect("samples");
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Percentiles::of_micros(&[250]).map(|p| p.p99), Some(0.25));
        assert_eq!(Percentiles::of_micros(&[]), None);
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(50_500), "50,500");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
