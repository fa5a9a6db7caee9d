//! URLs that may carry credentials (`REDIS_URL`, `DATABASE_URL`,
//! `REVALIDATE_URL`, `fleet loadtest`'s URLs): parsed without ever echoing the value, and shown
//! everywhere through one redaction, [`redact`].
//!
//! A shown URL keeps its scheme, user name, host, port and path, so an
//! operator can tell which server it names. It hides the password, every
//! query value (the names stay, so one sees which options are set) and the
//! fragment. Every query value, not only those whose names look secret: a
//! list of names (`password`, `token`, `sig`…) misses the next service's
//! spelling (`pass`, `apikey`, `X-Amz-Signature`), and a value such as
//! `sslmode=require` is rarely what an operator needs from a log. See
//! `docs/decisions/0008-urls-are-shown-redacted.md`.
//!
//! Parsing goes through [`crate::secrets::SecretValueParser`], which clap picks for these
//! types on its own: clap's default message ("invalid value '<value>'…")
//! would print the whole URL, password included.

use std::fmt;
use std::str::FromStr;

use clap::builder::ValueParserFactory;

use crate::secrets::SecretValueParser;

/// What a hidden part of a shown URL reads as.
pub const REDACTED: &str = "REDACTED";

/// `url` as it may be shown in logs, errors and terminal output (see the module).
pub(crate) fn redact(url: &url::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Replacing a password that is there cannot fail.
        let _ = shown.set_password(Some(REDACTED));
    }
    if let Some(query) = url.query() {
        let items: Vec<String> = query
            .split('&')
            .map(|item| match item.split_once('=') {
                Some((name, _)) => format!("{name}={REDACTED}"),
                // A bare item may itself be the secret (`?s3cr3t`).
                None => REDACTED.to_owned(),
            })
            .collect();
        shown.set_query(Some(&items.join("&")));
    }
    if url.fragment().is_some() {
        shown.set_fragment(Some(REDACTED));
    }
    shown.to_string()
}

/// The host and port `url` names, for saying what a role waits for: never
/// a user name, password or option. A socket path when there is no host.
pub(crate) fn shown_address(url: &str) -> String {
    let Ok(parsed) = url::Url::parse(url) else {
        return "an unparsable URL".to_owned();
    };
    let default_port = match parsed.scheme() {
        "redis" | "rediss" => Some(6379),
        "postgres" | "postgresql" => Some(5432),
        _ => None,
    };
    match (parsed.host_str(), parsed.port().or(default_port)) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => parsed.path().to_owned(),
    }
}

/// Parses `text` as a URL with one of `schemes`; errors never quote the text.
fn parse_with_scheme(text: &str, schemes: &[&str], expected: &str) -> Result<url::Url, String> {
    // url's errors are fixed sentences ("invalid port number"), never the input.
    let parsed = url::Url::parse(text).map_err(|err| format!("not a URL ({err}); expected {expected}"))?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(format!("the scheme must be {}; expected {expected}", schemes.join(":// or ") + "://"));
    }
    Ok(parsed)
}

macro_rules! secret_url {
    ($($type:ident),*) => {$(
        impl $type {
            /// The whole URL, password included: for connecting, never for showing.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }
        impl fmt::Debug for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&redact(&self.0))
            }
        }
        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&redact(&self.0))
            }
        }
        impl ValueParserFactory for $type {
            type Parser = SecretValueParser<$type>;
            fn value_parser() -> Self::Parser {
                SecretValueParser::new()
            }
        }
    )*};
}
secret_url!(RedisUrl, DatabaseUrl, RevalidateUrl, HttpUrl);

/// A Redis URL; shown redacted.
#[derive(Clone)]
pub(crate) struct RedisUrl(url::Url);

impl FromStr for RedisUrl {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected = "redis://[:password@]host:port/db";
        let parsed = parse_with_scheme(text, &["redis", "rediss", "redis+unix", "unix"], expected)?;
        // The client reads `#insecure` as "verify no certificate": that is
        // only ever said by a setting whose name says it is insecure.
        if parsed.fragment().is_some() {
            return Err("REDIS_URL takes no #fragment; to skip verifying the server's certificate (insecure), \
                        set FLEET_REDIS_TLS_INSECURE_SKIP_VERIFY"
                .into());
        }
        // redis' own errors are fixed sentences too ("Missing hostname").
        redis::Client::open(text).map_err(|err| format!("not a Redis URL: {err}"))?;
        Ok(Self(parsed))
    }
}

/// `REDIS_URL` as given: one Redis URL, or several comma-separated ones
/// (the nodes of a Redis Cluster); shown redacted.
#[derive(Clone)]
pub struct RedisUrls(Vec<RedisUrl>);

impl RedisUrls {
    /// The whole URLs, for connecting; never to be logged.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(RedisUrl::as_str)
    }
}

impl FromStr for RedisUrls {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let urls = text
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(RedisUrl::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Err("expected redis://[:password@]host:port/db, or several comma-separated".into());
        }
        Ok(Self(urls))
    }
}

impl fmt::Debug for RedisUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.0.iter().map(|url| redact(&url.0)).collect();
        f.write_str(&shown.join(","))
    }
}

impl ValueParserFactory for RedisUrls {
    type Parser = SecretValueParser<RedisUrls>;
    fn value_parser() -> Self::Parser {
        SecretValueParser::new()
    }
}

/// A Postgres URL; shown redacted.
#[derive(Clone)]
pub struct DatabaseUrl(url::Url);

impl FromStr for DatabaseUrl {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected = "postgres://user[:password]@host:port/db";
        let parsed = parse_with_scheme(text, &["postgres", "postgresql"], expected)?;
        // sqlx's errors may quote a query value (`unknown value "…" for sslmode`): not shown.
        sqlx::postgres::PgConnectOptions::from_str(text)
            .map_err(|_| "not a Postgres URL: check its port and query options (sslmode, options…)".to_owned())?;
        Ok(Self(parsed))
    }
}

/// The revalidation hook's URL (http or https); shown redacted.
#[derive(Clone)]
pub struct RevalidateUrl(url::Url);

impl RevalidateUrl {
    /// The URL to call.
    pub fn url(&self) -> &url::Url {
        &self.0
    }
}

impl FromStr for RevalidateUrl {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_with_scheme(text, &["http", "https"], "https://host/path").map(Self)
    }
}

/// A URL `fleet loadtest` calls (the intake, a worker's `/metrics`), http
/// or https; it may carry a password, so it is shown redacted.
#[derive(Clone)]
pub struct HttpUrl(url::Url);

impl HttpUrl {
    /// The URL to call.
    pub fn url(&self) -> &url::Url {
        &self.0
    }
}

impl FromStr for HttpUrl {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_with_scheme(text, &["http", "https"], "http://host:port/path").map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> String {
        redact(&url::Url::parse(text).expect("a URL"))
    }

    #[test]
    fn passwords_query_values_and_fragments_are_hidden() {
        assert_eq!(shown("postgres://fleet:hunter2@db:5432/fleet"), "postgres://fleet:REDACTED@db:5432/fleet");
        assert_eq!(
            shown("https://dash.example/api/revalidate?secret=s1&Token=t2&bare#frag"),
            "https://dash.example/api/revalidate?secret=REDACTED&Token=REDACTED&REDACTED#REDACTED"
        );
        assert_eq!(shown("redis://cache:6379/0"), "redis://cache:6379/0");
        assert_eq!(
            shown("postgres://u@db/fleet?password=pw&sslmode=require"),
            "postgres://u@db/fleet?password=REDACTED&sslmode=REDACTED"
        );
    }

    #[test]
    fn shown_addresses_are_host_and_port_only() {
        assert_eq!(shown_address("redis://default:hunter2@127.0.0.1:6390/0"), "127.0.0.1:6390");
        assert_eq!(shown_address("postgres://fleet:hunter2@db/fleet?password=x"), "db:5432");
        assert_eq!(shown_address("redis+unix:///run/redis.sock"), "/run/redis.sock");
    }

    #[test]
    fn typed_urls_show_redacted_and_keep_the_whole_url_for_connecting() {
        let url: DatabaseUrl = "postgres://fleet:hunter2@db:5432/fleet?password=x9".parse().expect("valid");
        assert!(!format!("{url:?} {url}").contains("hunter2") && !format!("{url}").contains("x9"));
        assert!(url.as_str().contains("hunter2"));
        let url: RedisUrl = "redis://:hunter2@cache:6379/0".parse().expect("valid");
        assert!(!url.to_string().contains("hunter2"));
        let url: RevalidateUrl = "https://dash/api?secret=hunter2".parse().expect("valid");
        assert!(!format!("{url:?}").contains("hunter2"));
    }

    #[test]
    fn parse_errors_never_quote_the_value() {
        type ParseError = fn(&str) -> Option<String>;
        let cases: [(&str, ParseError); 4] = [
            ("postgres", |text| text.parse::<DatabaseUrl>().err()),
            ("redis", |text| text.parse::<RedisUrl>().err()),
            ("https", |text| text.parse::<RevalidateUrl>().err()),
            ("http", |text| text.parse::<HttpUrl>().err()),
        ];
        for (scheme, parse) in cases {
            for bad in [
                format!("{scheme}://u:PLANTED@host:notaport/db"),
                "PLANTED://u:PLANTED@host/db".to_owned(),
                "u:PLANTED@host".to_owned(),
                "not a url PLANTED".to_owned(),
                format!("{scheme}://u:PLANTED@db/fleet?sslmode=PLANTED"),
            ] {
                if let Some(err) = parse(&bad) {
                    assert!(!err.contains("PLANTED"), "{bad}: {err}");
                }
            }
        }
        assert!("http://db".parse::<DatabaseUrl>().is_err());
        assert!("mysql://db".parse::<RedisUrl>().is_err());
        assert!("ftp://db".parse::<RevalidateUrl>().is_err());
        assert!("redis://db".parse::<HttpUrl>().is_err());
        assert!("postgres://u@db/fleet?sslmode=bogus".parse::<DatabaseUrl>().is_err());
    }
}
