//! What the fleet tells its operators without being asked: logs, metrics
//! and readiness.
//!
//! - Logs go to stderr, one JSON object per line with `LOG_FORMAT=json`
//!   (or the older `FLEET_LOG_FORMAT=json`), and by default when stderr,
//!   where they go, is not a terminal (a service manager, a container, a
//!   pipe); human-readable text on a terminal or with `LOG_FORMAT=text`. Any
//!   other `LOG_FORMAT` stops the process, naming the variable (exit 2). The level comes from
//!   `RUST_LOG` (default `info`). Every line about an event carries its
//!   `event_id`, `topic` and `tenant` fields. In text, every field has its
//!   control characters escaped ([`escape_controls`]): a value a sender
//!   chose (a topic, an error quoting a body) cannot start a line of its
//!   own or drive the terminal. JSON escapes them by itself.
//! - [`metrics`]: every series the fleet exports on `GET /metrics`.
//! - [`readiness`]: the `/readyz` answer, one state per dependency.

use std::io::IsTerminal;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::EnvFilter;

pub mod metrics;
pub mod readiness;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    /// `LOG_FORMAT` (else `FLEET_LOG_FORMAT`), else JSON unless stderr (where
    /// logs go) is a terminal; a variable that names no format is refused.
    pub fn from_env() -> Result<Self, String> {
        for name in ["LOG_FORMAT", "FLEET_LOG_FORMAT"] {
            if let Ok(value) = std::env::var(name) {
                return Self::parse(&value).ok_or_else(|| format!("{name} must be `json` or `text`"));
            }
        }
        Ok(Self::default_for(std::io::stderr().is_terminal()))
    }

    fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "json" => Some(Self::Json),
            "text" | "pretty" | "plain" => Some(Self::Text),
            _ => None,
        }
    }

    /// Text for a person at a terminal; JSON for a machine reading a pipe.
    fn default_for(terminal: bool) -> Self {
        if terminal {
            Self::Text
        } else {
            Self::Json
        }
    }
}

/// Starts logging; refused when `LOG_FORMAT` names no format.
pub fn init() -> Result<(), String> {
    let format = LogFormat::from_env()?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        // One flat object per line: the event's fields beside `message`.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.fmt_fields(text_fields()).try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
    Ok(())
}

/// How text lines write fields: the message, then `name=value` pairs, each
/// value with its control characters escaped.
pub(crate) fn text_fields() -> impl for<'writer> tracing_subscriber::fmt::FormatFields<'writer> + 'static {
    tracing_subscriber::fmt::format::debug_fn(|writer: &mut Writer<'_>, field, value| {
        let text = escape_controls(&format!("{value:?}"));
        if field.name() == "message" {
            writer.write_str(&text)
        } else {
            write!(writer, "{}={text}", field.name())
        }
    })
    .delimited(" ")
}

/// `text` with every control character (line breaks, tabs, escapes, C1
/// codes) written as a Rust escape, `\n`, `\u{1b}`.
pub(crate) fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars().fold(String::with_capacity(text.len() + 8), |mut escaped, ch| {
        if ch.is_control() {
            escaped.extend(ch.escape_default());
        } else {
            escaped.push(ch);
        }
        escaped
    })
}

#[cfg(test)]
mod tests {
    use super::LogFormat;

    /// A text line with a sender's line break and escape in a field stays one line, shown escaped.
    #[test]
    fn text_logs_escape_control_characters_in_every_field() {
        use std::sync::{Arc, Mutex};
        let written = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = written.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(super::text_fields())
            .with_writer(move || WriterTo(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let topic = "enrollment\nFORGED-LOG-LINE level=ERROR\u{1b}[31m.created";
            tracing::warn!(topic = %topic, detail = ?topic, "rejected {topic}");
        });
        let text = String::from_utf8(written.lock().map(|bytes| bytes.clone()).unwrap_or_default()).unwrap_or_default();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains(r"topic=enrollment\nFORGED-LOG-LINE level=ERROR\u{1b}[31m.created"), "{text}");
    }

    struct WriterTo(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for WriterTo {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut written) = self.0.lock() {
                written.extend_from_slice(bytes);
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_log_format_is_named_or_follows_the_terminal() {
        assert_eq!(LogFormat::parse("JSON"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("text"), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse("yaml"), None);
        assert_eq!(LogFormat::default_for(true), LogFormat::Text);
        assert_eq!(LogFormat::default_for(false), LogFormat::Json);
    }
}
