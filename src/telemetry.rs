//! What the fleet tells its operators without being asked: logs, metrics
//! and readiness.
//!
//! - Logs go to stderr, one JSON object per line with `LOG_FORMAT=json`
//!   (or the older `FLEET_LOG_FORMAT=json`), and by default when stdout is
//!   not a terminal (a service manager, a container, a pipe); human-readable
//!   text on a terminal or with `LOG_FORMAT=text`. The level comes from
//!   `RUST_LOG` (default `info`). Every line about an event carries its
//!   `event_id`, `topic` and `tenant` fields.
//! - [`metrics`]: every series the fleet exports on `GET /metrics`.
//! - [`readiness`]: the `/readyz` answer, one state per dependency.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub mod metrics;
pub mod readiness;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    /// `LOG_FORMAT` (else `FLEET_LOG_FORMAT`) when it names a format, else
    /// JSON unless stdout is a terminal.
    pub fn from_env() -> Self {
        let named = ["LOG_FORMAT", "FLEET_LOG_FORMAT"]
            .iter()
            .filter_map(|name| std::env::var(name).ok())
            .find_map(|value| Self::parse(&value));
        named.unwrap_or_else(|| Self::default_for(std::io::stdout().is_terminal()))
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

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match LogFormat::from_env() {
        // One flat object per line: the event's fields beside `message`.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
}

#[cfg(test)]
mod tests {
    use super::LogFormat;

    #[test]
    fn the_log_format_is_named_or_follows_the_terminal() {
        assert_eq!(LogFormat::parse("JSON"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("text"), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse("yaml"), None);
        assert_eq!(LogFormat::default_for(true), LogFormat::Text);
        assert_eq!(LogFormat::default_for(false), LogFormat::Json);
    }
}
