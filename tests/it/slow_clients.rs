//! Slow clients: every HTTP server (the intake, the read API, the worker's
//! health listener) closes connections that do not send their request head
//! in time, answers 408 to a body that dribbles in, caps its connections,
//! and meanwhile still answers a normal request; shutdown stays graceful
//! and bounded.
//!
//! The limits are short here (header 300 ms, request 1 s); every wait is
//! bounded by them plus a margin for a loaded machine.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use fleet::intake::Settings as IntakeSettings;
use fleet::runtime::{http_stats, serve, HttpSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::helpers::{api_tuning, context, intake_settings, TestContext, SECRET};

const HEADER_TIMEOUT: Duration = Duration::from_millis(300);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Slack on top of a timeout before a test calls it missed.
const MARGIN: Duration = Duration::from_secs(3);
/// What a slow client sends: a request line and one header, never the blank line that ends the head.
const HALF_A_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: fleet\r\n";

fn limits(max_connections: u32) -> HttpSettings {
    HttpSettings { header_timeout: HEADER_TIMEOUT, request_timeout: REQUEST_TIMEOUT, max_connections }
}

#[derive(Debug, Clone, Copy)]
enum Role {
    Intake,
    Api,
    WorkerHealth,
}

/// A server of `role` run in-process with `http`'s limits, and what it
/// needs kept alive: its handle, then its test context (dropped in order).
struct Server {
    address: SocketAddr,
    _handle: Box<dyn std::any::Any>,
    _ctx: Option<TestContext>,
}

async fn start(role: Role, http: HttpSettings) -> Server {
    match role {
        Role::Intake => {
            let ctx = context().await;
            let intake = ctx.spawn_intake_with(IntakeSettings { http, ..intake_settings(SECRET) }).await;
            Server { address: intake.address, _handle: Box::new(intake), _ctx: Some(ctx) }
        }
        Role::Api => {
            let ctx = context().await;
            let api = ctx.spawn_api(fleet::api::Settings { http, ..api_tuning() }).await;
            Server { address: api.address, _handle: Box::new(api), _ctx: Some(ctx) }
        }
        Role::WorkerHealth => {
            let router = fleet::worker::health::router(fleet::health::Health::default());
            let (address, shutdown) = spawn_router(router, http).await;
            Server { address, _handle: Box::new(shutdown.drop_guard()), _ctx: None }
        }
    }
}

async fn spawn_router(router: Router, http: HttpSettings) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, router, http, shutdown.clone()));
    (address, shutdown)
}

/// GET /healthz on a fresh connection; its status.
async fn healthz(address: SocketAddr, within: Duration) -> u16 {
    let response = fleet::http_client::builder()
        .build()
        .expect("an HTTP client")
        .get(format!("http://{address}/healthz"))
        .timeout(within)
        .send()
        .await
        .expect("a normal request is answered");
    response.status().as_u16()
}

/// `n` connections that each sent half a request head, then nothing.
async fn open_silent(address: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(HALF_A_HEAD).await.expect("write half a head");
        streams.push(stream);
    }
    streams
}

/// Reads until the server closes `stream` (end of stream or a reset), or
/// `deadline`; what the server sent, or `None` when it was still open.
async fn read_until_closed(mut stream: TcpStream, deadline: Instant) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return Some(received),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_elapsed) => return None,
        }
    }
}

/// How many of `streams` the server had not closed by `deadline`.
async fn still_open(streams: Vec<TcpStream>, deadline: Instant) -> usize {
    let mut reads = JoinSet::new();
    for stream in streams {
        reads.spawn(read_until_closed(stream, deadline));
    }
    let mut open = 0;
    while let Some(read) = reads.join_next().await {
        if read.expect("read task").is_none() {
            open += 1;
        }
    }
    open
}

async fn silent_connections_are_closed_while_a_normal_request_is_served(role: Role) {
    const SLOW: usize = 200;
    let server = start(role, limits(1024)).await;
    let closed_before = http_stats().silent_connections_closed();
    let started = Instant::now();

    let slow = open_silent(server.address, SLOW).await;
    assert_eq!(healthz(server.address, MARGIN).await, 200, "{role:?}: a normal request meanwhile");

    let open = still_open(slow, started + HEADER_TIMEOUT + MARGIN).await;
    assert_eq!(open, 0, "{role:?}: {open} of {SLOW} silent connections still open after {:?}", started.elapsed());
    // Process-wide and only ever increasing: other tests can only add to it.
    assert!(http_stats().silent_connections_closed() >= closed_before + SLOW as u64, "{role:?}: counted");
}

#[tokio::test]
async fn intake_closes_silent_connections() {
    silent_connections_are_closed_while_a_normal_request_is_served(Role::Intake).await;
}

#[tokio::test]
async fn api_closes_silent_connections() {
    silent_connections_are_closed_while_a_normal_request_is_served(Role::Api).await;
}

#[tokio::test]
async fn worker_health_closes_silent_connections() {
    silent_connections_are_closed_while_a_normal_request_is_served(Role::WorkerHealth).await;
}

/// A keep-alive connection left idle after its response holds its slot only
/// for the header timeout (the same code path serves every role).
#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let server = start(Role::WorkerHealth, limits(1024)).await;
    let idle_before = http_stats().idle_connections_closed();
    let mut stream = TcpStream::connect(server.address).await.expect("connect");
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: fleet\r\n\r\n").await.expect("write a request");
    let mut buffer = [0u8; 1024];
    let n = tokio::time::timeout(MARGIN, stream.read(&mut buffer)).await.expect("answered").expect("read");
    let answer = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "answered {answer:?}");
    assert!(!answer.to_ascii_lowercase().contains("connection: close"), "kept alive: {answer:?}");

    let idle_from = Instant::now();
    let closed = read_until_closed(stream, idle_from + HEADER_TIMEOUT + MARGIN).await;
    assert!(closed.is_some(), "an idle keep-alive connection still open after {:?}", idle_from.elapsed());
    assert!(http_stats().idle_connections_closed() > idle_before, "counted as idle");
}

/// Sends a whole head announcing a 64-byte body to `path`, then the body
/// one byte every 200 ms (13 s in all); what the server answered before it
/// closed the connection, and when that was.
async fn dribble_a_body(address: SocketAddr, method_and_path: &str) -> (String, Duration) {
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "{method_and_path} HTTP/1.1\r\nHost: fleet\r\nContent-Type: application/json\r\n\
         X-Thinkific-Hmac-Sha256: 00\r\nContent-Length: 64\r\n\r\n"
    );
    write.write_all(head.as_bytes()).await.expect("write the head");
    let started = Instant::now();
    let dribble = tokio::spawn(async move {
        for _ in 0..64 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b" ").await.is_err() {
                return;
            }
        }
        // Keep the write half open: only the server may end this.
        std::future::pending::<()>().await;
    });
    let deadline = started + REQUEST_TIMEOUT + MARGIN;
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, read.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_elapsed) => panic!(
                "still open {:?} after the head, having answered {:?}",
                started.elapsed(),
                String::from_utf8_lossy(&received)
            ),
        }
    }
    let closed_after = started.elapsed();
    dribble.abort();
    (String::from_utf8_lossy(&received).into_owned(), closed_after)
}

#[tokio::test]
async fn intake_answers_408_to_a_body_slower_than_the_request_timeout() {
    let server = start(Role::Intake, limits(1024)).await;
    let timeouts_before = http_stats().request_timeouts();

    let (answer, closed_after) = dribble_a_body(server.address, "POST /webhooks/thinkific").await;

    assert!(answer.starts_with("HTTP/1.1 408"), "answered {answer:?}");
    assert!(closed_after >= REQUEST_TIMEOUT, "closed after {closed_after:?}, before the request timeout");
    assert!(http_stats().request_timeouts() > timeouts_before, "counted");
}

/// The read API and the worker health read no body: they answer at once and
/// close the connection instead of waiting for the rest. (hyper did this
/// before our limits too; kept here so a change of server cannot lose it.)
#[tokio::test]
async fn servers_that_read_no_body_do_not_wait_for_a_slow_one() {
    for role in [Role::Api, Role::WorkerHealth] {
        let server = start(role, limits(1024)).await;
        let (answer, closed_after) = dribble_a_body(server.address, "GET /healthz").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{role:?}: answered {answer:?}");
        assert!(closed_after < REQUEST_TIMEOUT, "{role:?}: closed after {closed_after:?}");
    }
}

async fn at_the_connection_cap_a_client_waits_for_a_slot(role: Role) {
    const CAP: u32 = 10;
    let server = start(role, limits(CAP)).await;
    let pauses_before = http_stats().pauses_at_capacity();
    let started = Instant::now();

    let slow = open_silent(server.address, CAP as usize).await;
    let status = healthz(server.address, HEADER_TIMEOUT + MARGIN).await;
    let answered_after = started.elapsed();

    assert_eq!(status, 200, "{role:?}: the client beyond the cap is served once a slot frees");
    // A slot frees when the header timeout cuts a silent connection, which
    // it started timing after `started`: answering earlier means no cap.
    assert!(
        answered_after >= HEADER_TIMEOUT,
        "{role:?}: the client beyond the cap of {CAP} was answered after {answered_after:?}, \
         before any silent connection was cut"
    );
    assert_eq!(still_open(slow, started + HEADER_TIMEOUT + MARGIN).await, 0, "{role:?}: silent ones cut");
    assert!(http_stats().pauses_at_capacity() > pauses_before, "{role:?}: counted");
}

#[tokio::test]
async fn intake_caps_its_connections() {
    at_the_connection_cap_a_client_waits_for_a_slot(Role::Intake).await;
}

#[tokio::test]
async fn api_caps_its_connections() {
    at_the_connection_cap_a_client_waits_for_a_slot(Role::Api).await;
}

#[tokio::test]
async fn worker_health_caps_its_connections() {
    at_the_connection_cap_a_client_waits_for_a_slot(Role::WorkerHealth).await;
}

/// Shutdown lets a request in flight finish, answers a hung one 408 at the
/// request timeout, and returns within the drain bound even though a silent
/// connection is open meanwhile.
#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_is_bounded() {
    let router = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "done"
            }),
        )
        .route("/hang", get(std::future::pending::<&'static str>));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, router, limits(1024), shutdown.clone()));

    let request = |path: &'static str| {
        tokio::spawn(async move {
            let response = fleet::http_client::builder()
                .build()
                .expect("an HTTP client")
                .get(format!("http://{address}{path}"))
                .timeout(REQUEST_TIMEOUT + MARGIN)
                .send()
                .await
                .expect("answered");
            (response.status().as_u16(), response.text().await.unwrap_or_default())
        })
    };
    let slow = request("/slow");
    let hung = request("/hang");
    let _silent = open_silent(address, 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = Instant::now();
    shutdown.cancel();

    assert_eq!(slow.await.expect("task"), (200, "done".to_owned()), "the request in flight finished");
    assert_eq!(hung.await.expect("task").0, 408, "the hung request timed out");
    tokio::time::timeout(REQUEST_TIMEOUT + HEADER_TIMEOUT + MARGIN, server)
        .await
        .expect("serve returns within the drain bound")
        .expect("serve task")
        .expect("serve");
    assert!(stopping.elapsed() >= Duration::from_millis(300), "it waited for the request in flight");
    assert!(TcpStream::connect(address).await.is_err(), "no longer accepting");
}
