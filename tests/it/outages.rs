//! No process dies of a dependency outage: real `fleet` processes started
//! while the test's own Redis or Postgres is down, or seeing it restarted
//! during the consumer-name lease wait or the event loop, wait (503 on
//! `/readyz` naming the dependency, one log line naming its host and port)
//! and carry on by themselves, losing nothing.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet::local_services::{free_port, LocalPostgres, LocalRedis};
use tokio::io::AsyncBufReadExt;
use tokio::process::Child;

use crate::helpers::{context_on_servers, eventually, fleet, scratch_dir, signal, wait_exit, TestContext, SECRET};
use crate::processes::progress_event;

/// A Redis and a Postgres of the test's own, kept on disk so a restart
/// loses nothing (Redis with its append-only file); deleted when dropped.
struct OwnServers {
    dir: PathBuf,
    redis: LocalRedis,
    postgres: LocalPostgres,
}

impl OwnServers {
    async fn start() -> Self {
        let dir = scratch_dir("outage");
        let redis = LocalRedis::start(&dir.join("redis"), false).await.expect("start redis");
        let postgres = LocalPostgres::start(&dir.join("postgres"), false).await.expect("start postgres");
        Self { dir, redis, postgres }
    }

    async fn context(&self) -> TestContext {
        context_on_servers(&self.redis.url(), &self.postgres.url("postgres")).await
    }

    fn redis_password(&self) -> String {
        url::Url::parse(&self.redis.url()).expect("URL").password().expect("password").to_owned()
    }

    fn postgres_password(&self) -> String {
        url::Url::parse(&self.postgres.url("postgres")).expect("URL").password().expect("password").to_owned()
    }
}

impl Drop for OwnServers {
    fn drop(&mut self) {
        self.redis.stop();
        self.postgres.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `fleet` process whose stderr is collected as it comes.
struct Process {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Process {
    fn spawn(mut command: tokio::process::Command) -> Self {
        let mut child = command.stderr(Stdio::piped()).spawn().expect("spawn fleet");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = sink.lock().expect("lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    /// Fails if the process has exited: it must wait, not die.
    fn assert_running(&mut self, what: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{what}: the process exited ({status}); its log:\n{}", self.log());
        }
    }

    /// SIGTERM, then exit 0 within 20 s.
    async fn stop(mut self) -> String {
        signal(&self.child, "TERM");
        let (status, _) = wait_exit(&mut self.child).await;
        // Let the reader take the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = self.log();
        assert!(status.success(), "exit status {status:?}; log:\n{log}");
        log
    }
}

fn worker(ctx: &TestContext, health_port: u16) -> Process {
    let mut command = fleet(ctx, &["worker"]);
    command
        .env("FLEET_BATCH_SIZE", "25")
        .env("FLEET_BLOCK_MS", "100")
        .env("FLEET_HEALTH_LISTEN", format!("127.0.0.1:{health_port}"));
    Process::spawn(command)
}

fn intake(ctx: &TestContext, port: u16) -> Process {
    let mut command = fleet(ctx, &["intake"]);
    command.env("THINKIFIC_WEBHOOK_SECRET", SECRET).env("PORT", port.to_string());
    Process::spawn(command)
}

/// (status, body) of `GET http://127.0.0.1:<port>/readyz`, if it answers.
async fn readiness(port: u16) -> Option<(u16, serde_json::Value)> {
    let response = fleet::http_client::builder()
        .build()
        .expect("an HTTP client")
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

/// Waits until `/readyz` answers 503 naming `dependency`, which has failed
/// to answer at least once.
async fn until_waiting_for(port: u16, dependency: &str) {
    eventually(&format!("/readyz answers 503 naming {dependency}"), Duration::from_secs(30), || async {
        matches!(readiness(port).await, Some((503, body))
            if body["dependencies"][dependency]["state"] == "down"
                && body["dependencies"][dependency]["error"].as_str().is_some_and(|error| error.contains("waiting for")))
    })
    .await;
}

/// Restarts the test's Redis and waits until the test's own connection is
/// back (its first command after a restart fails).
async fn restart_redis(servers: &mut OwnServers, ctx: &TestContext) {
    servers.redis.restart().await.expect("restart redis");
    eventually("the test's connection to Redis is back", Duration::from_secs(20), || async {
        let mut redis = ctx.redis.clone();
        redis::cmd("PING").query_async::<String>(&mut redis).await.is_ok()
    })
    .await;
}

async fn until_ready(port: u16) {
    eventually("/readyz answers 200", Duration::from_secs(40), || async {
        matches!(readiness(port).await, Some((200, _)))
    })
    .await;
}

/// POSTs a signed webhook to an intake process.
async fn post(port: u16, body: &str) -> Option<reqwest::Response> {
    fleet::http_client::builder()
        .build()
        .expect("an HTTP client")
        .post(format!("http://127.0.0.1:{port}/webhooks/thinkific"))
        .header("x-thinkific-hmac-sha256", fleet::intake::sign(SECRET.as_bytes(), body.as_bytes()))
        .body(body.to_owned())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()
}

/// Asserts the log says once what it waits for, by host and port, and
/// never shows a password.
fn assert_logged_wait(log: &str, dependency: &str, port: u16, passwords: &[String]) {
    let line = format!("waiting for {dependency} at 127.0.0.1:{port}");
    assert_eq!(log.matches(&line).count(), 1, "`{line}` logged once:\n{log}");
    for password in passwords {
        assert!(!log.contains(password.as_str()), "a password reached the log:\n{log}");
    }
}

#[tokio::test]
async fn a_worker_started_while_redis_is_down_waits_and_then_consumes() {
    let mut servers = OwnServers::start().await;
    let ctx = servers.context().await;
    servers.redis.stop();

    let health = free_port().expect("port");
    let mut worker = worker(&ctx, health);
    until_waiting_for(health, "redis").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.assert_running("Redis down at start-up");

    restart_redis(&mut servers, &ctx).await;
    until_ready(health).await;
    ctx.enqueue(&progress_event(1)).await;
    ctx.enqueue(&progress_event(2)).await;
    eventually("both events applied", Duration::from_secs(30), || async { ctx.applied_events().await == 2 }).await;
    ctx.wait_until_drained().await;
    let log = worker.stop().await;
    assert_logged_wait(&log, "redis", servers.redis.port(), &[servers.redis_password(), servers.postgres_password()]);
}

#[tokio::test]
async fn a_worker_started_while_postgres_is_down_waits_and_then_consumes() {
    let mut servers = OwnServers::start().await;
    let ctx = servers.context().await;
    ctx.enqueue(&progress_event(1)).await;
    servers.postgres.stop();

    let health = free_port().expect("port");
    let mut worker = worker(&ctx, health);
    until_waiting_for(health, "postgres").await;
    // It says why: the refusal, not that a pool timed out.
    let (_, body) = readiness(health).await.expect("/readyz answers");
    let error = body["dependencies"]["postgres"]["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(error.contains("refused") && !error.contains("pool timed out"), "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.assert_running("Postgres down at start-up");

    servers.postgres.restart().await.expect("restart postgres");
    until_ready(health).await;
    eventually("the event is applied", Duration::from_secs(30), || async { ctx.applied_events().await == 1 }).await;
    ctx.wait_until_drained().await;
    let log = worker.stop().await;
    assert_logged_wait(
        &log,
        "postgres",
        servers.postgres.port(),
        &[servers.redis_password(), servers.postgres_password()],
    );
}

#[tokio::test]
async fn a_worker_waiting_for_a_dependency_stops_on_sigterm_with_exit_0() {
    let mut servers = OwnServers::start().await;
    let ctx = servers.context().await;
    servers.redis.stop();
    servers.postgres.stop();
    let health = free_port().expect("port");
    let worker = worker(&ctx, health);
    until_waiting_for(health, "postgres").await;
    let started = std::time::Instant::now();
    worker.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5), "stopped promptly");
}

#[tokio::test]
async fn an_intake_started_while_redis_is_down_answers_503_then_accepts() {
    let mut servers = OwnServers::start().await;
    let ctx = servers.context().await;
    servers.redis.stop();

    let port = free_port().expect("port");
    let mut intake = intake(&ctx, port);
    until_waiting_for(port, "redis").await;
    let body = progress_event(1);
    let refused = post(port, &body).await.expect("the intake answers while Redis is down");
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    intake.assert_running("Redis down at start-up");

    restart_redis(&mut servers, &ctx).await;
    until_ready(port).await;
    let accepted = post(port, &body).await.expect("answer");
    assert_eq!(accepted.status(), 200);
    assert_eq!(
        accepted.json::<serde_json::Value>().await.expect("JSON")["status"],
        "accepted",
        "the 503 queued nothing"
    );
    // The consumer group was created once Redis came back.
    assert_eq!(ctx.group_backlog().await, (1, 0));
    let log = intake.stop().await;
    assert_logged_wait(&log, "redis", servers.redis.port(), &[servers.redis_password()]);
}

#[tokio::test]
async fn an_api_started_while_postgres_and_redis_are_down_answers_503_then_serves() {
    let mut servers = OwnServers::start().await;
    let ctx = servers.context().await;
    ctx.add_course("184532", 2871345).await;
    servers.postgres.stop();
    servers.redis.stop();

    let port = free_port().expect("port");
    let mut command = fleet(&ctx, &["api"]);
    command.env("FLEET_API_LISTEN", format!("127.0.0.1:{port}")).env("FLEET_API_TOKEN", "t");
    let mut api = Process::spawn(command);
    until_waiting_for(port, "postgres").await;
    api.assert_running("Postgres down at start-up");

    servers.postgres.restart().await.expect("restart postgres");
    until_ready(port).await;
    let path = format!("http://127.0.0.1:{port}/api/dashboard/cached?tenant_id=184532");
    let client = fleet::http_client::builder().build().expect("an HTTP client");
    let answer = client.get(&path).bearer_auth("t").send().await.expect("request");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-cache"], "BYPASS", "Redis is still down");

    restart_redis(&mut servers, &ctx).await;
    eventually("the cache is used once Redis is back", Duration::from_secs(30), || async {
        let answer = client.get(&path).bearer_auth("t").send().await.expect("request");
        answer.headers()["x-cache"] != "BYPASS"
    })
    .await;
    let log = api.stop().await;
    let passwords = [servers.redis_password(), servers.postgres_password()];
    assert_logged_wait(&log, "postgres", servers.postgres.port(), &passwords);
    assert_logged_wait(&log, "redis", servers.redis.port(), &passwords);
}

#[tokio::test]
async fn redis_restarted_during_the_consumer_name_lease_wait_does_not_end_the_worker() {
    let mut servers = OwnServers::start().await;
    let ctx = servers.context().await;
    let named = |ctx: &TestContext, health: u16| {
        let mut command = fleet(ctx, &["worker"]);
        command
            .env("FLEET_CONSUMER_NAME", "restarted")
            // Long enough that the second worker, however slow its start on a
            // loaded machine, still finds the first one's lease.
            .env("FLEET_CONSUMER_LEASE_MS", "12000")
            .env("FLEET_BLOCK_MS", "100")
            .env("FLEET_HEALTH_LISTEN", format!("127.0.0.1:{health}"));
        Process::spawn(command)
    };
    // A worker killed outright leaves its lease behind.
    let first_health = free_port().expect("port");
    let mut first = named(&ctx, first_health);
    until_ready(first_health).await;
    signal(&first.child, "KILL");
    let _ = first.child.wait().await;

    let health = free_port().expect("port");
    let mut second = named(&ctx, health);
    eventually("the restarted worker waits for the name", Duration::from_secs(20), || async {
        second.log().contains("consumer name is held")
    })
    .await;
    servers.redis.stop();
    until_waiting_for(health, "redis").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    second.assert_running("Redis down during the lease wait");
    restart_redis(&mut servers, &ctx).await;

    until_ready(health).await;
    ctx.enqueue(&progress_event(1)).await;
    eventually("the worker consumes", Duration::from_secs(30), || async { ctx.applied_events().await == 1 }).await;
    let log = second.stop().await;
    assert!(log.contains("worker started"), "{log}");
    assert_logged_wait(&log, "redis", servers.redis.port(), &[servers.redis_password()]);
}

#[tokio::test]
async fn redis_and_postgres_restarted_while_events_flow_lose_nothing() {
    let mut servers = OwnServers::start().await;
    let ctx = servers.context().await;
    let (intake_port, health) = (free_port().expect("port"), free_port().expect("port"));
    let intake = intake(&ctx, intake_port);
    let worker = worker(&ctx, health);
    until_ready(intake_port).await;
    until_ready(health).await;

    // A sender that retries what is not accepted, as Thinkific does.
    let total = 300;
    let sender = tokio::spawn(async move {
        for n in 0..total {
            let body = progress_event(n);
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(response) = post(intake_port, &body).await {
                    if response.status() == 200 {
                        break;
                    }
                    assert_eq!(response.status(), 503, "event {n}");
                }
                assert!(std::time::Instant::now() < deadline, "event {n} never accepted");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    eventually("events flow", Duration::from_secs(30), || async { ctx.applied_events().await >= 50 }).await;
    servers.redis.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    restart_redis(&mut servers, &ctx).await;
    eventually("events flow again", Duration::from_secs(30), || async { ctx.applied_events().await >= 120 }).await;
    servers.postgres.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    servers.postgres.restart().await.expect("restart postgres");

    tokio::time::timeout(Duration::from_secs(120), sender).await.expect("every event sent").expect("sender");
    eventually("every accepted event applied", Duration::from_secs(60), || async {
        ctx.applied_events().await == total as i64
    })
    .await;
    ctx.wait_until_drained().await;
    assert_eq!(ctx.group_backlog().await, (0, 0), "nothing pending");
    assert!(ctx.dead_letters().await.is_empty(), "nothing dead-lettered");
    assert_eq!(ctx.scheduled_retries().await, 0, "no attempt charged for the outages");
    intake.stop().await;
    worker.stop().await;
}
