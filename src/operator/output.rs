//! How every operator command answers: data on stdout (a table or text, or
//! JSON with `--json`), summaries, progress and refusals on stderr, so a
//! script can pipe the data and still show a person what happened.
//!
//! Commands write only through this module: [`Output::data`] for what they
//! found or did, [`summary`] for the line a person reads. A refusal is an
//! [`Exit`](super::Exit) error, printed on stderr by `main`
//! with its exit code.

use std::io::Write;

use serde::Serialize;

/// How one command answers: text for people, or JSON (`--json`) for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    json: bool,
}

impl Output {
    /// JSON when `json` (the command's `--json` flag), text otherwise.
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// Whether the data is JSON.
    pub(crate) fn is_json(self) -> bool {
        self.json
    }

    /// The command's data on stdout: `value` as pretty JSON, or what `text`
    /// writes.
    pub fn data(
        self,
        value: &impl Serialize,
        text: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> anyhow::Result<()> {
        if self.json {
            return print_json(value);
        }
        let mut out = std::io::stdout().lock();
        text(&mut out)?;
        out.flush()?;
        Ok(())
    }
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A summary or progress line on stderr (never part of the data).
pub fn summary(text: &str) {
    eprintln!("{text}");
}

/// A count with its noun in the right number: `1 dead letter`, `3 dead letters`.
pub(crate) fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `text` on one line, cut to `width` characters.
pub(crate) fn shorten(text: &str, width: usize) -> String {
    let one_line = text.replace(['\n', '\r', '\t'], " ");
    if one_line.chars().count() <= width {
        one_line
    } else {
        format!("{}…", one_line.chars().take(width - 1).collect::<String>())
    }
}

/// A size for people: bytes, KiB or MiB.
pub(crate) fn human_bytes(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

/// A duration for people: `850 ms`, `12 s`, `6 min`, `2 h 5 min`.
pub(crate) fn human_duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{} s", ms / 1_000),
        60_000..3_600_000 => format!("{} min", ms / 60_000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_the_noun_in_their_number() {
        assert_eq!(count(1u64, "dead letter", "dead letters"), "1 dead letter");
        assert_eq!(count(0u64, "dead letter", "dead letters"), "0 dead letters");
        assert_eq!(count(601u64, "entry", "entries"), "601 entries");
    }

    #[test]
    fn durations_read_in_their_unit() {
        assert_eq!(human_duration(850), "850 ms");
        assert_eq!(human_duration(12_400), "12 s");
        assert_eq!(human_duration(6 * 60_000 + 5), "6 min");
        assert_eq!(human_duration(2 * 3_600_000 + 5 * 60_000), "2 h 5 min");
    }
}
