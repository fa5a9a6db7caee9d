//! What every serving role shares: serving a router with graceful shutdown
//! and limits against slow clients, and the shutdown signal itself.
//!
//! Every role stops the same way: the first SIGTERM or SIGINT (Ctrl-C)
//! cancels one [`CancellationToken`]; listeners stop accepting, requests in
//! flight finish, the worker finishes its batch, and the process exits 0.
//!
//! # Slow clients
//!
//! Every HTTP server of the fleet (the intake, the read API, the worker's
//! health listener) is served by [`serve`], with the same three limits
//! ([`HttpSettings`]), so a client that connects and then says nothing, or
//! says it very slowly, costs a connection slot for a bounded time:
//!
//! - **Header timeout.** A connection has `header_timeout` to send a request
//!   line and its headers, counted from the moment the server waits for
//!   them: when it is accepted, and again after every response on a
//!   keep-alive connection. The same limit therefore closes idle keep-alive
//!   connections. This is hyper's HTTP/1 `header_read_timeout`, which needs a
//!   timer; `axum::serve` gives hyper none, so it has no such limit, which is
//!   why the accept loop is our own (modelled on `axum::serve`'s).
//! - **Request timeout.** From its headers to its response, a request has
//!   `request_timeout`, reading the body included (a body sent byte by byte
//!   counts): tower-http's `TimeoutLayer`, which answers
//!   `408 Request Timeout`. 408 rather than 503 because the usual cause is
//!   the client; a handler slowed by Redis or Postgres gets 408 too, which
//!   Thinkific retries like any other non-2xx (and the intake's
//!   de-duplication makes the retry of an event already appended harmless).
//!   When a 408 leaves part of the body unread, hyper closes the connection.
//! - **Connection cap.** At most `max_connections` connections are open at
//!   once. At the cap the server stops accepting until one closes: new
//!   clients wait in the kernel's listen backlog instead of being refused.
//!   The header timeout frees the slot of a silent client within seconds, so
//!   a real sender waits about that long at worst, where refusing it would
//!   turn a short surge into errors for every sender.
//!
//! # Request traces
//!
//! Every request gets one debug-level span (tower-http's `TraceLayer`)
//! holding its method and path, and a debug event when its answer starts,
//! with the status and the latency; a 408 of the request timeout included.
//! The query string is left out (a caller may put a token there by
//! mistake), and so are the headers (the bearer token, the webhook's
//! signature).
//!
//! These closes are logged at debug level only (a flood of slow clients
//! must not flood the log) and counted in [`http_stats`]. Why these choices:
//! `docs/decisions/0014-slow-clients.md`.
//!
//! Only HTTP/1 is served, as before (axum is built without HTTP/2).

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tracing::Level;

/// The default of [`HttpSettings::header_timeout`], in milliseconds.
pub(crate) const DEFAULT_HEADER_TIMEOUT_MS: u64 = 5_000;
/// The default of [`HttpSettings::request_timeout`], in milliseconds.
pub(crate) const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// The default of [`HttpSettings::max_connections`]: eight times the 64
/// concurrent keep-alive senders the intake is sized for, and well under the
/// common soft limit of 1024 open files, which Redis and Postgres
/// connections share.
pub(crate) const DEFAULT_MAX_CONNECTIONS: u32 = 512;

/// How a server treats slow and idle clients (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSettings {
    /// How long a connection may take to send a request's line and headers,
    /// and how long a keep-alive connection may stay idle.
    pub header_timeout: Duration,
    /// How long a request may take from its headers to its response; slower
    /// ones get 408.
    pub request_timeout: Duration,
    /// The most connections open at once; at the cap, accepting pauses.
    pub max_connections: u32,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_millis(DEFAULT_HEADER_TIMEOUT_MS),
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// What the limits of [`serve`] did, counted for the whole process (every
/// server in it), since it started.
#[derive(Debug)]
pub struct HttpStats {
    silent_connections_closed: AtomicU64,
    idle_connections_closed: AtomicU64,
    request_timeouts: AtomicU64,
    pauses_at_capacity: AtomicU64,
}

static HTTP_STATS: HttpStats = HttpStats {
    silent_connections_closed: AtomicU64::new(0),
    idle_connections_closed: AtomicU64::new(0),
    request_timeouts: AtomicU64::new(0),
    pauses_at_capacity: AtomicU64::new(0),
};

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}")]
pub struct ListenError {
    pub address: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `address` (port 0 picks a free port); returns the listener and the
/// address it got.
pub async fn bind(address: SocketAddr) -> Result<(TcpListener, SocketAddr), ListenError> {
    let fail = |source| ListenError { address, source };
    let listener = TcpListener::bind(address).await.map_err(fail)?;
    let bound = listener.local_addr().map_err(fail)?;
    Ok((listener, bound))
}

/// The process's [`HttpStats`].
pub fn http_stats() -> &'static HttpStats {
    &HTTP_STATS
}

impl HttpStats {
    /// Connections closed by the header timeout before they sent one whole
    /// request head: silent or slow clients.
    pub fn silent_connections_closed(&self) -> u64 {
        self.silent_connections_closed.load(Ordering::Relaxed)
    }

    /// Keep-alive connections closed by the header timeout after at least
    /// one request: idle clients (or slow ones on a later request).
    pub fn idle_connections_closed(&self) -> u64 {
        self.idle_connections_closed.load(Ordering::Relaxed)
    }

    /// Requests answered 408 by the request timeout.
    pub fn request_timeouts(&self) -> u64 {
        self.request_timeouts.load(Ordering::Relaxed)
    }

    /// Times a server reached its connection cap and paused accepting.
    pub fn pauses_at_capacity(&self) -> u64 {
        self.pauses_at_capacity.load(Ordering::Relaxed)
    }
}

/// Serves `app` on `listener` with the limits of `settings` until
/// `shutdown` fires, then stops accepting and finishes the requests in
/// flight; a connection still busy `request_timeout + header_timeout` after
/// shutdown began is closed, so stopping is bounded. Handlers may read the
/// peer address (`ConnectInfo<SocketAddr>`).
///
/// Never fails today: like `axum::serve`, it retries failed accepts (after a
/// pause when out of file descriptors).
pub async fn serve(
    mut listener: TcpListener,
    app: Router,
    settings: HttpSettings,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = tower::ServiceBuilder::new()
        .map_response(count_request_timeout)
        .map_response(|response: Response<_>| response.map(axum::body::Body::new))
        // Outside the timeout, so a 408 is traced like any answer.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(DefaultOnRequest::new().level(Level::DEBUG))
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                // A 5xx is logged where it is handled, with its cause.
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, settings.request_timeout))
        .service(app);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(settings.header_timeout).keep_alive(true);
    let drain = settings.request_timeout + settings.header_timeout;
    // Zero would never accept: one connection at least.
    let max_connections = settings.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max_connections as usize));

    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                HTTP_STATS.pauses_at_capacity.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(max_connections, "connection cap reached: not accepting until a connection closes");
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            () = shutdown.cancelled() => break,
        };
        let served_one = Arc::new(AtomicBool::new(false));
        let service = {
            let served_one = served_one.clone();
            app.clone().map_request(move |mut request: Request<Incoming>| {
                // What `into_make_service_with_connect_info` would insert.
                request.extensions_mut().insert(ConnectInfo(peer));
                served_one.store(true, Ordering::Relaxed);
                request
            })
        };
        let connection = http1.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut connection = pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(drain, connection.as_mut()).await {
                        Ok(result) => result,
                        Err(_) => {
                            tracing::debug!(%peer, "connection still busy at the end of the shutdown drain; closed");
                            return;
                        }
                    }
                }
            };
            if let Err(err) = result {
                connection_ended(&err, peer, served_one.load(Ordering::Relaxed));
            }
        });
    }

    drop(listener);
    // Every connection holds a slot until it ends, within `drain` of now.
    let _all = slots.acquire_many(max_connections).await.expect("the semaphore is never closed");
    Ok(())
}

/// A request's span: its method and path, never its query string or headers.
fn request_span<B>(request: &Request<B>) -> tracing::Span {
    tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
}

fn count_request_timeout(response: Response) -> Response {
    if response.status() == StatusCode::REQUEST_TIMEOUT {
        HTTP_STATS.request_timeouts.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("request timed out: answered 408");
    }
    response
}

/// Logs (at debug: a flood must not flood the log) and counts why a
/// connection ended in error.
fn connection_ended(err: &hyper::Error, peer: SocketAddr, served_one: bool) {
    if !err.is_timeout() {
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    } else if served_one {
        HTTP_STATS.idle_connections_closed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, "closed a keep-alive connection idle for the header timeout");
    } else {
        HTTP_STATS.silent_connections_closed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, "closed a connection that sent no request head within the header timeout");
    }
}

/// A token cancelled on the first SIGTERM or SIGINT (Ctrl-C).
pub(crate) fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for SIGTERM; stop with Ctrl-C");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            () = terminate => tracing::info!("SIGTERM received, shutting down"),
        }
        cancel.cancel();
        crate::systemd::notify_stopping();
    });
    token
}

/// Host name and process id: unique among live processes without any
/// set-up. The default name of a worker's consumer and of a scheduler's runner.
pub(crate) fn instance_name() -> String {
    let host = gethostname::gethostname().to_string_lossy().replace(char::is_whitespace, "-");
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The log lines written while it is the default subscriber.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Self;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[tokio::test]
    async fn each_request_is_traced_with_method_path_status_and_latency_but_no_query_or_headers() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_max_level(Level::DEBUG)
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let app = Router::new().route("/traced", get(|| async { "ok" }));
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, app, HttpSettings::default(), shutdown.clone()));

        let mut client = tokio::net::TcpStream::connect(address).await.expect("connect");
        client
            .write_all(
                b"GET /traced?tenant_id=school-7&token=query-secret HTTP/1.1\r\nHost: fleet\r\n\
                  Authorization: Bearer header-secret\r\nConnection: close\r\n\r\n",
            )
            .await
            .expect("send");
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.expect("answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        shutdown.cancel();
        server.await.expect("server task").expect("served");

        let log = String::from_utf8(captured.0.lock().expect("log buffer").clone()).expect("UTF-8 log");
        let finished = log.lines().find(|line| line.contains("finished processing request")).unwrap_or_default();
        for expected in ["DEBUG", "method=GET", "path=/traced", "status=200", "latency="] {
            assert!(finished.contains(expected), "missing {expected:?} in the trace:\n{log}");
        }
        for secret in ["query-secret", "tenant_id", "header-secret", "authorization"] {
            assert!(!log.to_lowercase().contains(secret), "{secret:?} logged:\n{log}");
        }
    }
}
