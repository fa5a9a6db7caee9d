//! Errors that waiting cannot heal, told apart from outages.
//!
//! A refused connection or a timeout is an outage: the role waits and
//! carries on by itself (see [`crate::health`]). A TLS handshake that can
//! never succeed, a certificate the client refuses, a wrong password or a
//! database that does not exist is a [`Misconfiguration`]: the same error
//! comes back until someone changes a setting, so it is logged at error
//! level with the setting to change (at most once a minute) and `/readyz`
//! names it. Which of them end a role at start-up (exit 2) and which wait
//! is decision 0020: [`Misconfiguration::ends_start_up`].
//!
//! The cause is read from the error's chain: SQLSTATEs, Redis error codes,
//! and the `rustls` error behind a failed handshake.

use std::error::Error as StdError;
use std::fmt;

use crate::telemetry::readiness::Dependency;

/// What a Redis connection error says when a `redis://` URL meets a server
/// that speaks only TLS (`crate::redis::connection` probes the port).
pub(crate) const SPEAKS_TLS: &str = "the server speaks TLS";

/// What it says when a `rediss://` URL meets a server that speaks no TLS
/// on that port.
pub(crate) const SPEAKS_PLAIN: &str = "the server speaks plain Redis, without TLS";

/// What is wrong, in the words an operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The client asks for TLS; the server does not offer it.
    TlsNotOffered,
    /// The server accepts only TLS; the client connects without it.
    TlsRequired,
    /// The server's certificate is signed by a CA the client does not trust
    /// (or is expired, or revoked).
    CertificateRefused,
    /// The server's certificate is valid but for another host name.
    HostnameMismatch,
    /// A TLS setting cannot be used: a file is missing or not PEM, a client
    /// certificate without its key.
    TlsSettings,
    /// The user name or password was refused.
    AuthenticationFailed,
    /// The server refused this user or client address (not a password).
    AccessRefused,
    /// The database named in the URL does not exist.
    DatabaseMissing,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TlsNotOffered => "tls_not_offered",
            Self::TlsRequired => "tls_required",
            Self::CertificateRefused => "certificate_refused",
            Self::HostnameMismatch => "hostname_mismatch",
            Self::TlsSettings => "tls_settings",
            Self::AuthenticationFailed => "authentication_failed",
            Self::AccessRefused => "access_refused",
            Self::DatabaseMissing => "database_missing",
        }
    }
}

/// An error a dependency answered that only a change of settings heals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misconfiguration {
    pub dependency: Dependency,
    pub cause: Cause,
    /// What is wrong and which setting to change, one sentence.
    pub advice: String,
    /// The underlying error, as the client library said it (never a password).
    pub detail: String,
}

impl Misconfiguration {
    /// Whether a role refuses to start over it (exit 2) instead of waiting.
    ///
    /// TLS that cannot work ends the start: the certificate, the host name
    /// and whether the server speaks TLS are properties of the settings and
    /// of the server's identity, which no wait changes. A refused password,
    /// a refused user and a missing database wait: a password rotation or a
    /// database being created are under way often enough (decision 0020).
    pub(crate) fn ends_start_up(&self) -> bool {
        matches!(
            self.cause,
            Cause::TlsNotOffered
                | Cause::TlsRequired
                | Cause::CertificateRefused
                | Cause::HostnameMismatch
                | Cause::TlsSettings
        )
    }

    fn new(dependency: Dependency, cause: Cause, advice: impl Into<String>, detail: &dyn fmt::Display) -> Self {
        Self { dependency, cause, advice: advice.into(), detail: detail.to_string() }
    }

    /// The misconfiguration behind a Postgres error, if it is one.
    pub(crate) fn of_postgres(error: &sqlx::Error) -> Option<Self> {
        let postgres = |cause, advice: &str| Some(Self::new(Dependency::Postgres, cause, advice, error));
        if let Some(database) = error.as_database_error() {
            let code = database.code().unwrap_or_default();
            return match code.as_ref() {
                "28P01" => postgres(
                    Cause::AuthenticationFailed,
                    "Postgres refused the password (28P01): correct the user or password in DATABASE_URL",
                ),
                "28000" if database.message().contains("no encryption") => postgres(
                    Cause::TlsRequired,
                    "Postgres accepts this connection only over TLS (pg_hba.conf hostssl): set sslmode=require \
                     or sslmode=verify-full in DATABASE_URL",
                ),
                "28000" => postgres(
                    Cause::AccessRefused,
                    "Postgres refused this user or client address (28000): check the user in DATABASE_URL and \
                     the server's pg_hba.conf",
                ),
                "3D000" => postgres(
                    Cause::DatabaseMissing,
                    "the database named in DATABASE_URL does not exist (3D000): create it or correct its name",
                ),
                _ => None,
            };
        }
        if let sqlx::Error::Tls(tls) = error {
            if tls.to_string().contains("does not support TLS") {
                return postgres(
                    Cause::TlsNotOffered,
                    "the Postgres server does not offer TLS, but DATABASE_URL asks for it (sslmode=require, \
                     verify-ca or verify-full): enable ssl on the server, or lower sslmode",
                );
            }
        }
        if let Some(cause) = tls_cause(error) {
            let advice = match cause {
                Cause::HostnameMismatch => {
                    "the Postgres server's certificate is for another host name: connect by a name the certificate \
                     lists in DATABASE_URL (sslmode=verify-full checks it)"
                }
                Cause::CertificateRefused => {
                    "the Postgres server's certificate is not trusted: give the CA that signs it with \
                     sslrootcert=<file> in DATABASE_URL (or PGSSLROOTCERT); the system's roots are used otherwise"
                }
                Cause::TlsNotOffered => "the Postgres server does not speak TLS: lower sslmode in DATABASE_URL",
                _ => "a TLS setting of DATABASE_URL cannot be used (sslrootcert, sslcert, sslkey)",
            };
            return postgres(cause, advice);
        }
        if matches!(error, sqlx::Error::Tls(_) | sqlx::Error::Configuration(_)) {
            return postgres(
                Cause::TlsSettings,
                "a TLS setting of DATABASE_URL cannot be used: check the files named by sslrootcert, sslcert and \
                 sslkey (or PGSSLROOTCERT, PGSSLCERT, PGSSLKEY)",
            );
        }
        None
    }

    /// The misconfiguration behind a Redis error, if it is one.
    pub(crate) fn of_redis(error: &redis::RedisError) -> Option<Self> {
        let redis = |cause, advice: &str| Some(Self::new(Dependency::Redis, cause, advice, error));
        match error.code() {
            Some("WRONGPASS") => {
                return redis(
                    Cause::AuthenticationFailed,
                    "Redis refused the user name or password (WRONGPASS): correct them in REDIS_URL",
                )
            }
            Some("NOAUTH") => {
                return redis(
                    Cause::AuthenticationFailed,
                    "Redis asks for a password (NOAUTH): put it in REDIS_URL (rediss://user:password@host:port)",
                )
            }
            _ => {}
        }
        if error.kind() == redis::ErrorKind::AuthenticationFailed {
            return redis(Cause::AuthenticationFailed, "Redis refused the credentials: correct them in REDIS_URL");
        }
        if let Some(cause) = tls_cause(error) {
            let advice = match cause {
                Cause::HostnameMismatch => {
                    "the Redis server's certificate is for another host name: connect by a name the certificate \
                     lists in REDIS_URL"
                }
                Cause::CertificateRefused => {
                    "the Redis server's certificate is not trusted: give the CA that signs it in \
                     FLEET_REDIS_TLS_CA_FILE; the system's roots are used otherwise"
                }
                Cause::TlsNotOffered => {
                    "the Redis server does not speak TLS on this port: use redis:// in REDIS_URL, or the server's \
                     TLS port"
                }
                _ => {
                    "a Redis TLS setting cannot be used: check FLEET_REDIS_TLS_CA_FILE, FLEET_REDIS_TLS_CERT_FILE \
                      and FLEET_REDIS_TLS_KEY_FILE"
                }
            };
            return redis(cause, advice);
        }
        if error.kind() == redis::ErrorKind::InvalidClientConfig {
            let text = error.to_string();
            if text.contains(SPEAKS_TLS) {
                return redis(
                    Cause::TlsRequired,
                    "the Redis server accepts only TLS on this port, but REDIS_URL says redis://: use rediss://",
                );
            }
            if text.contains(SPEAKS_PLAIN) {
                return redis(
                    Cause::TlsNotOffered,
                    "the Redis server does not speak TLS on this port: use redis:// in REDIS_URL, or the server's \
                     TLS port",
                );
            }
            return redis(
                Cause::TlsSettings,
                "a Redis TLS setting cannot be used: check REDIS_URL (rediss://), FLEET_REDIS_TLS_CA_FILE, \
                 FLEET_REDIS_TLS_CERT_FILE and FLEET_REDIS_TLS_KEY_FILE",
            );
        }
        None
    }
}

impl fmt::Display for Misconfiguration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.advice, self.detail)
    }
}

impl StdError for Misconfiguration {}

/// The TLS cause behind `error`: the first `rustls::Error` in its chain
/// (also inside an `io::Error`, whose `source()` skips what it wraps).
/// Where a library hides it (redis keeps its `io::Error` behind an `Arc`),
/// rustls' own words for it are read instead.
fn tls_cause(error: &(dyn StdError + 'static)) -> Option<Cause> {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(tls) = rustls_error(current) {
            return Some(classify_rustls(tls));
        }
        next = current.source();
    }
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(cause) = classify_rustls_text(&current.to_string()) {
            return Some(cause);
        }
        next = current.source();
    }
    None
}

/// The cause a `rustls::Error`'s message names (its `Display`, rustls 0.23).
fn classify_rustls_text(text: &str) -> Option<Cause> {
    if text.contains("certificate not valid for name") || text.contains("NotValidForName") {
        Some(Cause::HostnameMismatch)
    } else if text.contains("invalid peer certificate") {
        Some(Cause::CertificateRefused)
    } else if text.contains("received corrupt message") {
        Some(Cause::TlsNotOffered)
    } else {
        None
    }
}

fn rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let io = error.downcast_ref::<std::io::Error>()?;
    let inner = io.get_ref()?;
    inner.downcast_ref::<rustls::Error>().or_else(|| inner.source().and_then(rustls_error))
}

fn classify_rustls(error: &rustls::Error) -> Cause {
    use rustls::CertificateError;
    match error {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => Cause::HostnameMismatch,
        rustls::Error::InvalidCertificate(_) | rustls::Error::InvalidCertRevocationList(_) => Cause::CertificateRefused,
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => Cause::TlsNotOffered,
        _ => Cause::TlsSettings,
    }
}

/// An error a role waits through, and what it tells of its cause.
pub trait Diagnose: fmt::Display + Sync {
    /// `Some` when waiting cannot heal it.
    fn misconfiguration(&self) -> Option<Misconfiguration>;
}

impl Diagnose for sqlx::Error {
    fn misconfiguration(&self) -> Option<Misconfiguration> {
        Misconfiguration::of_postgres(self)
    }
}

impl Diagnose for redis::RedisError {
    fn misconfiguration(&self) -> Option<Misconfiguration> {
        Misconfiguration::of_redis(self)
    }
}

impl Diagnose for fleet_jobs::ApplyError {
    fn misconfiguration(&self) -> Option<Misconfiguration> {
        let (Self::Event(error) | Self::Outage(error) | Self::Unexplained(error)) = self;
        Misconfiguration::of_postgres(error)
    }
}

impl Diagnose for String {
    fn misconfiguration(&self) -> Option<Misconfiguration> {
        None
    }
}
