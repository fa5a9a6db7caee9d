//! Sending: the pre-signed webhooks over keep-alive HTTP/1 connections to
//! the intake, and what each answer was and how long it took.
//!
//! A fixed set of connections (hyper's HTTP/1 client, one task per
//! connection, no pool) takes the webhooks in order from one shared counter.
//! Two paces:
//! - [`Pace::Concurrency`]: closed loop, each connection sends its next
//!   webhook as soon as the previous one is answered; latency is from send to
//!   answer.
//! - [`Pace::Rate`]: open loop, webhook `i` is due at `start + i / rate`
//!   whatever the answers. A webhook that found every connection still
//!   waiting for the intake when it was due counts its latency from when it
//!   was due, not from when it went out, so a stalled intake shows as the
//!   wait it caused (no coordinated omission); one a free connection was
//!   waiting to send counts from its send, so the timer's lateness (tokio
//!   wakes sleepers on the next millisecond) is not charged to the intake.
//!   The time from send to answer (service time) and how late sends went
//!   out (send lag, the timer's lateness included) are kept too.
//!
//! Each connection task keeps its own tally, merged at the end, so sending
//! shares nothing but the counter.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::generate::Webhook;

/// Longest wait for one answer; a slower one counts as a transport error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection idle this long is replaced before use: the intake closes
/// idle keep-alive connections (`FLEET_HTTP_HEADER_TIMEOUT_MS`, 5 s by
/// default), and a webhook written as it closes would be lost to the count.
const IDLE_REPLACE: Duration = Duration::from_secs(2);
const SIGNATURE: HeaderName = HeaderName::from_static("x-thinkific-hmac-sha256");
const TOPIC: HeaderName = HeaderName::from_static("x-thinkific-topic");

/// How fast webhooks are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// This many connections, each sending as soon as it is answered.
    Concurrency(usize),
    /// This many webhooks per second, due on schedule, over at most
    /// `connections` connections at once.
    Rate { per_second: f64, connections: usize },
}

impl Pace {
    pub fn connections(self) -> usize {
        match self {
            Self::Concurrency(connections) | Self::Rate { connections, .. } => connections.max(1),
        }
    }
}

/// Where the webhooks go: an address resolved (and checked) beforehand.
#[derive(Debug, Clone)]
pub struct Destination {
    pub address: SocketAddr,
    /// The `Host` header: the URL's host and port.
    pub host: HeaderValue,
    /// The path webhooks are posted to.
    pub path: hyper::Uri,
}

/// How the intake answered, by kind.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub(crate) struct Answers {
    /// 200 `{"status":"accepted"}`: appended to the stream.
    pub accepted: u64,
    /// 200 `{"status":"duplicate"}`: already taken, nothing appended.
    pub duplicate: u64,
    /// Every answer by HTTP status (the 200s above included).
    pub by_status: BTreeMap<u16, u64>,
    /// Requests that got no answer: connection refused or reset, timeout.
    pub transport_errors: u64,
    /// The first transport error, to say what went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_transport_error: Option<String>,
}

impl Answers {
    /// Requests answered with anything but 200 accepted or duplicate, or not answered.
    pub fn failed(&self) -> u64 {
        let answered: u64 = self.by_status.values().sum();
        answered + self.transport_errors - self.accepted - self.duplicate
    }

    fn merge(&mut self, other: Self) {
        self.accepted += other.accepted;
        self.duplicate += other.duplicate;
        for (status, count) in other.by_status {
            *self.by_status.entry(status).or_default() += count;
        }
        self.transport_errors += other.transport_errors;
        self.first_transport_error = self.first_transport_error.take().or(other.first_transport_error);
    }
}

/// The whole sending phase.
#[derive(Debug)]
pub(crate) struct Sent {
    pub answers: Answers,
    /// Microseconds to the answer from the send, or at a rate from when it
    /// was due if every connection was busy then; sorted.
    pub latencies_us: Vec<u32>,
    /// Rate only: microseconds from sent to answered, sorted.
    pub service_us: Vec<u32>,
    /// Rate only: microseconds each send went out after it was due, sorted.
    pub lag_us: Vec<u32>,
    pub started: Instant,
    /// When the last answer (or error) came.
    pub finished: Instant,
}

/// Sends every webhook at `pace`; `answered` counts answers as they come
/// (for a progress bar).
pub(crate) async fn send_all(
    destination: &Destination,
    webhooks: Arc<Vec<Webhook>>,
    pace: Pace,
    answered: Arc<AtomicU64>,
) -> Sent {
    let connections = pace.connections().min(webhooks.len().max(1));
    // Connected before the clock starts: set-up is not the intake's latency.
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections {
        opened.push(Connection::open(destination).await.ok());
    }
    let started = Instant::now();
    let shared = Arc::new(Shared {
        destination: destination.clone(),
        content_type: HeaderValue::from_static("application/json"),
        webhooks,
        next: AtomicUsize::new(0),
        answered,
        pace,
        started,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for connection in opened {
        tasks.spawn(send_on_connection(shared.clone(), connection));
    }
    let mut merged = Tally::default();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(tally) => merged.merge(tally),
            Err(err) => tracing::error!(error = %err, "a load-test connection task failed"),
        }
    }
    let Tally { answers, mut latencies_us, mut service_us, mut lag_us, finished } = merged;
    latencies_us.sort_unstable();
    service_us.sort_unstable();
    lag_us.sort_unstable();
    Sent { answers, latencies_us, service_us, lag_us, started, finished: finished.unwrap_or(started) }
}

struct Shared {
    destination: Destination,
    content_type: HeaderValue,
    webhooks: Arc<Vec<Webhook>>,
    next: AtomicUsize,
    answered: Arc<AtomicU64>,
    pace: Pace,
    started: Instant,
}

impl Shared {
    /// When webhook `index` is due, at a fixed rate.
    fn due(&self, index: usize) -> Option<Instant> {
        match self.pace {
            Pace::Rate { per_second, .. } => {
                Some(self.started + Duration::from_secs_f64(index as f64 / per_second.max(f64::MIN_POSITIVE)))
            }
            Pace::Concurrency(_) => None,
        }
    }

    fn request(&self, webhook: &Webhook) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(webhook.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.destination.path.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.destination.host.clone());
        headers.insert(CONTENT_TYPE, self.content_type.clone());
        headers.insert(SIGNATURE, webhook.signature.clone());
        headers.insert(TOPIC, HeaderValue::from_static(webhook.topic));
        request
    }
}

/// One connection's share of the answers.
#[derive(Default)]
struct Tally {
    answers: Answers,
    latencies_us: Vec<u32>,
    service_us: Vec<u32>,
    lag_us: Vec<u32>,
    finished: Option<Instant>,
}

impl Tally {
    fn merge(&mut self, other: Self) {
        self.answers.merge(other.answers);
        self.latencies_us.extend(other.latencies_us);
        self.service_us.extend(other.service_us);
        self.lag_us.extend(other.lag_us);
        self.finished = self.finished.max(other.finished);
    }
}

fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

async fn send_on_connection(shared: Arc<Shared>, mut connection: Option<Connection>) -> Tally {
    let mut tally = Tally::default();
    loop {
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(webhook) = shared.webhooks.get(index) else {
            break;
        };
        let due = shared.due(index);
        // Taken after it was due: every connection was busy with the intake until now.
        let held_back = due.filter(|&due| due <= Instant::now());
        if let Some(due) = due {
            if held_back.is_none() {
                tokio::time::sleep_until(due).await;
            }
        }
        let sent_at = Instant::now();
        let outcome = exchange(&shared, &mut connection, webhook).await;
        let answered_at = Instant::now();
        match outcome {
            Ok((status, body)) => {
                let answers = &mut tally.answers;
                *answers.by_status.entry(status).or_default() += 1;
                if status == 200 {
                    if contains(&body, br#""status":"accepted""#) {
                        answers.accepted += 1;
                    } else if contains(&body, br#""status":"duplicate""#) {
                        answers.duplicate += 1;
                    }
                }
                tally.latencies_us.push(micros(answered_at - held_back.unwrap_or(sent_at)));
                if let Some(due) = due {
                    tally.service_us.push(micros(answered_at - sent_at));
                    tally.lag_us.push(micros(sent_at.saturating_duration_since(due)));
                }
            }
            Err(error) => {
                tally.answers.transport_errors += 1;
                tally.answers.first_transport_error.get_or_insert(error);
            }
        }
        tally.finished = Some(answered_at);
        shared.answered.fetch_add(1, Ordering::Relaxed);
    }
    tally
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// Posts `webhook` on the connection (opened or replaced as needed) and
/// reads the whole answer: its status and body, or why there is none.
async fn exchange(shared: &Shared, slot: &mut Option<Connection>, webhook: &Webhook) -> Result<(u16, Bytes), String> {
    // A second try only when the first never left (the connection had
    // closed): the webhook is then sent exactly once either way.
    for _ in 0..2 {
        let connection = match slot.take() {
            Some(connection) if connection.usable() => connection,
            _ => Connection::open(&shared.destination).await?,
        };
        let mut connection = connection;
        if connection.sender.ready().await.is_err() {
            continue;
        }
        let request = shared.request(webhook);
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let response =
                connection.sender.try_send_request(request).await.map_err(|mut error| match error.take_message() {
                    Some(_) => Failure::NotSent,
                    None => Failure::Lost(error.into_error().to_string()),
                })?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map_err(|error| Failure::Lost(error.to_string()))?;
            Ok((status, body.to_bytes()))
        })
        .await;
        match answer {
            Err(_) => return Err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())),
            Ok(Ok(answer)) => {
                connection.last_used = Instant::now();
                *slot = Some(connection);
                return Ok(answer);
            }
            Ok(Err(Failure::NotSent)) => continue,
            Ok(Err(Failure::Lost(error))) => return Err(error),
        }
    }
    Err("the connection closed twice before the webhook could be written".to_owned())
}

/// Why an exchange got no answer.
enum Failure {
    /// The connection had closed before the request was written: try another.
    NotSent,
    /// Written, and then the connection failed: the intake may have taken it.
    Lost(String),
}

/// One keep-alive HTTP/1 connection to the intake.
struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    last_used: Instant,
}

impl Connection {
    async fn open(destination: &Destination) -> Result<Self, String> {
        let address = destination.address;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| format!("could not connect to {address} within {} s", CONNECT_TIMEOUT.as_secs()))?
            .map_err(|err| format!("could not connect to {address}: {err}"))?;
        // Small requests: no Nagle delay on them.
        stream.set_nodelay(true).map_err(|err| format!("could not set TCP_NODELAY: {err}"))?;
        let (sender, driver) =
            http1::handshake(TokioIo::new(stream)).await.map_err(|err| format!("HTTP/1 handshake failed: {err}"))?;
        tokio::spawn(async move {
            // Its end (the intake closed it) shows on the sender.
            if let Err(err) = driver.await {
                tracing::debug!(error = %err, "load-test connection closed");
            }
        });
        Ok(Self { sender, last_used: Instant::now() })
    }

    fn usable(&self) -> bool {
        !self.sender.is_closed() && self.last_used.elapsed() < IDLE_REPLACE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_counts_every_request_not_taken() {
        let answers = Answers {
            accepted: 5,
            duplicate: 2,
            by_status: BTreeMap::from([(200, 7), (401, 3), (503, 1)]),
            transport_errors: 4,
            first_transport_error: None,
        };
        assert_eq!(answers.failed(), 8);
    }

    #[test]
    fn due_times_follow_the_rate() {
        let shared = Shared {
            destination: Destination {
                address: SocketAddr::from(([127, 0, 0, 1], 1)),
                host: HeaderValue::from_static("127.0.0.1:1"),
                path: hyper::Uri::from_static("/webhooks/thinkific"),
            },
            content_type: HeaderValue::from_static("application/json"),
            webhooks: Arc::new(Vec::new()),
            next: AtomicUsize::new(0),
            answered: Arc::default(),
            pace: Pace::Rate { per_second: 1000.0, connections: 4 },
            started: Instant::now(),
        };
        let due = |index| shared.due(index).map(|due| due - shared.started);
        assert_eq!(due(0), Some(Duration::ZERO));
        assert_eq!(due(1500), Some(Duration::from_millis(1500)));
    }
}
