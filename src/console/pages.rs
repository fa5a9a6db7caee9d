//! The frame every console page shares (head, inline CSS, navigation,
//! sign-out) and the small pieces pages repeat: the CSRF field, times,
//! notices, error pages.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::BASE;

/// The console's stylesheet, inlined in every page (no request leaves for it).
const STYLE: &str = include_str!("style.css");

/// The console's sections, for the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Overview,
    Intake,
    DeadLetters,
    Retries,
    Cache,
}

impl Section {
    const ALL: [Section; 5] =
        [Section::Overview, Section::Intake, Section::DeadLetters, Section::Retries, Section::Cache];

    fn title(self) -> &'static str {
        match self {
            Self::Overview => "Overview",
            Self::Intake => "Intake",
            Self::DeadLetters => "Dead letters",
            Self::Retries => "Retries",
            Self::Cache => "Cache",
        }
    }

    fn path(self) -> String {
        match self {
            Self::Overview => BASE.to_owned(),
            Self::Intake => format!("{BASE}/intake"),
            Self::DeadLetters => format!("{BASE}/dead-letters"),
            Self::Retries => format!("{BASE}/retries"),
            Self::Cache => format!("{BASE}/cache"),
        }
    }
}

/// Who sees the page, and how.
pub(super) enum Layout<'a> {
    /// The sign-in form and error pages: no navigation.
    SignedOut,
    /// A page of `Section`, for the session whose CSRF token is given.
    SignedIn(&'a str, Section),
    /// A page of `Section` that reloads itself every so many seconds.
    Refreshing(&'a str, Section, u32),
}

/// A whole HTML document around `body`.
pub(super) fn page(layout: Layout<'_>, title: &str, body: Markup) -> Markup {
    let (csrf, current, refresh) = match layout {
        Layout::SignedOut => (None, None, None),
        Layout::SignedIn(csrf, section) => (Some(csrf), Some(section), None),
        Layout::Refreshing(csrf, section, seconds) => (Some(csrf), Some(section), Some(seconds)),
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(seconds) = refresh {
                    meta http-equiv="refresh" content=(seconds);
                }
                title { (title) " · Fleet console" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header.top {
                    a.brand href=(BASE) { "Fleet console" }
                    @if let (Some(csrf), Some(current)) = (csrf, current) {
                        nav {
                            @for section in Section::ALL {
                                a href=(section.path()) aria-current=[(section == current).then_some("page")] {
                                    (section.title())
                                }
                            }
                        }
                        form.sign-out method="post" action={ (BASE) "/sign-out" } {
                            (csrf_field(csrf))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The hidden field that carries the session's CSRF token in a form.
pub(super) fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// A page saying why a request was not served.
pub(super) fn error_page(status: StatusCode, message: &str) -> Markup {
    let title = status.canonical_reason().unwrap_or("Error");
    page(
        Layout::SignedOut,
        title,
        html! {
            h1 { (status.as_u16()) " " (title) }
            p.problem role="alert" { (message) }
            p { a href=(BASE) { "Back to the console" } }
        },
    )
}

/// A line saying what was just done.
pub(super) fn notice(text: &str) -> Markup {
    html! { p.notice role="status" { (text) } }
}

/// An RFC 3339 time as `2025-04-02 18:48:07 UTC`; anything else as it is.
/// A count with thousands separators: `12,345`.
pub(super) fn thousands(n: impl Into<u64>) -> String {
    let digits = n.into().to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

pub(super) fn time(text: &str) -> String {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc).format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_in_utc() {
        assert_eq!(time("2025-04-02T20:48:07.123+02:00"), "2025-04-02 18:48:07 UTC");
        assert_eq!(time("soon"), "soon");
    }

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(thousands(0u64), "0");
        assert_eq!(thousands(999u64), "999");
        assert_eq!(thousands(1_000u64), "1,000");
        assert_eq!(thousands(1_234_567u64), "1,234,567");
    }

    #[test]
    fn text_is_escaped() {
        let markup = notice("<script>alert(1)</script>").into_string();
        assert!(markup.contains("&lt;script&gt;") && !markup.contains("<script>"), "{markup}");
    }
}
