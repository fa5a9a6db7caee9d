//! How every operator command answers: data on stdout (a table or text, or
//! JSON with `--json`), summaries and progress on stderr, so a script can
//! pipe the data and still show a person what happened.

use std::io::Write;

use serde::Serialize;

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A one-line summary on stderr (never part of the data).
pub fn summary(text: &str) {
    eprintln!("{text}");
}

/// `text` on one line, cut to `width` characters.
pub fn shorten(text: &str, width: usize) -> String {
    let one_line = text.replace(['\n', '\r', '\t'], " ");
    if one_line.chars().count() <= width {
        one_line
    } else {
        format!("{}…", one_line.chars().take(width - 1).collect::<String>())
    }
}

/// A size for people: bytes, KiB or MiB.
pub fn human_bytes(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}
