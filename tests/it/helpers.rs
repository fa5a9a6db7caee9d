//! The test harness: real Redis and Postgres, a database and key prefix per
//! test, and the fleet's own intake and worker run in-process.
//!
//! Servers: when `REDIS_URL` / `DATABASE_URL` are set they are used;
//! otherwise the harness starts a throwaway `redis-server` and PostgreSQL
//! once per test binary (see `fleet::local_services`), which stop when the
//! test process exits. Every test gets its own database and key prefix, so
//! tests run in parallel and in any order; both are removed when the test's
//! [`TestContext`] is dropped.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fleet::intake::Settings as IntakeSettings;
use fleet::local_services::{LocalPostgres, LocalRedis};
use fleet::redis::stream;
use fleet::redis::{KeyPrefix, Keys, GROUP};
use fleet::secrets::WebhookKeys;
use fleet::worker::Settings as WorkerSettings;
use fleet::worker::Worker;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use sqlx::{Connection, PgPool};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-webhook-secret";

struct Services {
    redis_url: String,
    /// A database the harness may connect to to create and drop others.
    admin_url: String,
    _redis: Option<LocalRedis>,
    _postgres: Option<LocalPostgres>,
}

static SERVICES: OnceCell<Services> = OnceCell::const_new();

/// A fresh directory under the system temp dir.
pub fn scratch_dir(purpose: &str) -> PathBuf {
    std::env::temp_dir().join(format!("fleet-{purpose}-{}", uuid::Uuid::new_v4().simple()))
}

async fn services() -> &'static Services {
    SERVICES
        .get_or_init(|| async {
            let mut local_redis = None;
            let redis_url = match std::env::var("REDIS_URL") {
                Ok(url) => url,
                Err(_) => {
                    let redis = LocalRedis::start(&scratch_dir("redis"), true).await.expect("start redis-server");
                    let url = redis.url();
                    local_redis = Some(redis);
                    url
                }
            };
            let mut local_postgres = None;
            let admin_url = match std::env::var("DATABASE_URL") {
                Ok(url) => url,
                Err(_) => {
                    let postgres = LocalPostgres::start(&scratch_dir("postgres"), true).await.expect("start postgres");
                    let url = postgres.url("postgres");
                    local_postgres = Some(postgres);
                    url
                }
            };
            Services { redis_url, admin_url, _redis: local_redis, _postgres: local_postgres }
        })
        .await
}

/// Replaces the database name in a Postgres URL.
fn with_database(url: &str, database: &str) -> String {
    let mut url = url::Url::parse(url).expect("DATABASE_URL is a URL");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

/// One test's world: its own database (migrated) and its own key prefix.
pub struct TestContext {
    pub db: PgPool,
    pub database_url: String,
    pub redis_url: String,
    pub prefix: KeyPrefix,
    pub keys: Keys,
    pub redis: ConnectionManager,
    database: String,
    admin_url: String,
}

pub async fn context() -> TestContext {
    let services = services().await;
    context_on(&services.redis_url).await
}

/// Like [`context`], with Redis at `redis_url` (e.g. a test's own server).
pub async fn context_on(redis_url: &str) -> TestContext {
    let services = services().await;
    context_on_servers(redis_url, &services.admin_url).await
}

/// Like [`context`], on a test's own Redis and Postgres (`admin_url` names
/// a database of that Postgres the harness may create others from).
pub async fn context_on_servers(redis_url: &str, admin_url: &str) -> TestContext {
    let services =
        Services { redis_url: redis_url.to_owned(), admin_url: admin_url.to_owned(), _redis: None, _postgres: None };
    let services = &services;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let database = format!("fleet_test_{id}");
    let mut admin = sqlx::PgConnection::connect(&services.admin_url).await.expect("connect to Postgres");
    sqlx::query(&format!("CREATE DATABASE \"{database}\"")).execute(&mut admin).await.expect("create database");
    admin.close().await.ok();
    let database_url = with_database(&services.admin_url, &database);
    let db = fleet::db::connect(&database_url).await.expect("connect to the test database");
    fleet::db::migrate(&db).await.expect("migrate");
    let prefix: KeyPrefix = format!("test:{id}:").parse().expect("valid prefix");
    let keys = Keys::new(&prefix);
    let redis = fleet::redis::connect(redis_url, Duration::from_secs(5)).await.expect("connect to Redis");
    TestContext {
        db,
        database_url,
        redis_url: redis_url.to_owned(),
        prefix,
        keys,
        redis,
        database,
        admin_url: services.admin_url.clone(),
    }
}

impl Drop for TestContext {
    fn drop(&mut self) {
        let database = self.database.clone();
        let admin_url = self.admin_url.clone();
        let redis_url = self.redis_url.clone();
        let pattern = format!("{}*", self.prefix.as_str());
        // Dropped inside the test's runtime: clean up on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
                let Ok(client) = redis::Client::open(redis_url) else {
                    return;
                };
                let connect = client.get_multiplexed_async_connection();
                let Ok(Ok(mut conn)) = tokio::time::timeout(Duration::from_secs(2), connect).await else {
                    return;
                };
                let mut keys: Vec<String> = Vec::new();
                if let Ok(mut iter) = conn.scan_match::<_, String>(&pattern).await {
                    while let Some(Ok(key)) = iter.next_item().await {
                        keys.push(key);
                    }
                }
                if !keys.is_empty() {
                    let _: Result<(), _> = conn.del(keys).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// An intake served in-process on a free port.
pub struct IntakeServer {
    pub address: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl IntakeServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Intake settings with `secrets` (comma-separated) valid for any school.
pub fn intake_settings(secrets: &str) -> IntakeSettings {
    IntakeSettings {
        keys: WebhookKeys::new(Some(secrets.parse().expect("secrets")), None).expect("keys"),
        max_body_bytes: 1024 * 1024,
        dedup_window: Duration::from_secs(72 * 3600),
        http: fleet::runtime::HttpSettings::default(),
    }
}

impl TestContext {
    pub async fn spawn_intake(&self) -> IntakeServer {
        self.spawn_intake_with(intake_settings(SECRET)).await
    }

    pub async fn spawn_intake_with(&self, settings: IntakeSettings) -> IntakeServer {
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let intake = fleet::intake::Application::build(local, &self.redis_url, self.keys.clone(), settings)
            .await
            .expect("intake starts");
        let address = intake.address();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(intake.run_until_stopped(shutdown.clone()));
        IntakeServer { address, shutdown, task }
    }

    pub fn worker_settings(&self, consumer: &str) -> WorkerSettings {
        WorkerSettings {
            consumer_name: consumer.to_owned(),
            batch_size: 100,
            block: Duration::from_millis(100),
            stream_max_len: 1_000_000,
            claim_idle: Duration::from_secs(60),
            lease: Duration::from_secs(2),
            retry: fleet::worker::RetryPolicy::default(),
            cache_ttls: fleet::redis::cache::Ttls::default(),
        }
    }

    /// Runs a worker in-process until the returned handle is stopped.
    pub async fn spawn_worker(&self, settings: WorkerSettings) -> WorkerHandle {
        let worker = Worker::connect(self.db.clone(), &self.redis_url, self.keys.clone(), settings)
            .await
            .expect("worker connects");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        WorkerHandle { shutdown, task }
    }

    /// Runs one worker until the group has nothing left to deliver or
    /// acknowledge, then stops it.
    pub async fn drain(&self) {
        let worker = self.spawn_worker(self.worker_settings("drain")).await;
        self.wait_until_drained().await;
        worker.stop().await;
    }

    /// Waits until every entry has been delivered and acknowledged.
    pub async fn wait_until_drained(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (lag, pending) = self.group_backlog().await;
            if lag == 0 && pending == 0 {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "stream not drained: lag {lag}, pending {pending}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// (entries not yet delivered, entries delivered but not acknowledged).
    /// An unknown lag (Redis cannot tell after some trims) counts as 1.
    pub async fn group_backlog(&self) -> (u64, u64) {
        let mut redis = self.redis.clone();
        let reply: redis::streams::StreamInfoGroupsReply =
            redis.xinfo_groups(self.keys.events()).await.expect("XINFO GROUPS");
        let group = reply.groups.into_iter().find(|group| group.name == GROUP).expect("the fleet's group exists");
        (group.lag.map_or(1, |lag| lag as u64), group.pending as u64)
    }

    pub async fn stream_len(&self, key: &str) -> u64 {
        let mut redis = self.redis.clone();
        redis.xlen(key).await.expect("XLEN")
    }
}

pub struct WorkerHandle {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), fleet::worker::WorkerError>>,
}

impl WorkerHandle {
    /// Runs a connected worker until stopped.
    pub fn run(worker: Worker) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        Self { shutdown, task }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("worker stops within 30 s")
            .expect("worker task did not panic")
            .expect("worker stopped cleanly");
    }
}

/// A Thinkific example body from `tests/fixtures/thinkific`.
pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/thinkific").join(format!("{name}.json"));
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display())).trim_end().to_owned()
}

/// An example body with fields of its envelope or payload replaced.
pub fn event(name: &str, envelope: serde_json::Value, payload: serde_json::Value) -> String {
    let mut body: serde_json::Value = serde_json::from_str(&fixture(name)).expect("fixture is JSON");
    merge(&mut body, envelope);
    merge(&mut body["payload"], payload);
    body.to_string()
}

fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    if let (Some(target), serde_json::Value::Object(patch)) = (target.as_object_mut(), patch) {
        for (key, value) in patch {
            target.insert(key, value);
        }
    }
}

/// POSTs `body` signed with `key` to the intake.
pub async fn post_signed(intake: &IntakeServer, body: &str, key: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(intake.url("/webhooks/thinkific"))
        .header("content-type", "application/json")
        .header("x-thinkific-hmac-sha256", fleet::intake::sign(key.as_bytes(), body.as_bytes()))
        .body(body.to_owned())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("request completes")
}

/// Polls `check` until it holds; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl TestContext {
    pub async fn dead_letters(&self) -> Vec<redis::streams::StreamId> {
        let mut redis = self.redis.clone();
        let reply: redis::streams::StreamRangeReply = redis.xrange_all(self.keys.dead_letters()).await.expect("XRANGE");
        reply.ids
    }

    pub async fn applied_events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&self.db).await.expect("count")
    }

    pub async fn scheduled_retries(&self) -> u64 {
        let mut redis = self.redis.clone();
        redis.zcard(self.keys.retries()).await.expect("ZCARD")
    }

    /// A worker configuration with a fast retry schedule for tests.
    pub fn fast_retry_settings(&self, consumer: &str, max_attempts: u32) -> WorkerSettings {
        WorkerSettings {
            retry: fleet::worker::RetryPolicy {
                base: Duration::from_millis(100),
                factor: 2.0,
                cap: Duration::from_millis(400),
                max_attempts,
            },
            ..self.worker_settings(consumer)
        }
    }

    /// Makes Postgres refuse any write of enrollment 666, as a constraint would.
    pub async fn refuse_enrollment_666(&self) {
        sqlx::query(
            "CREATE FUNCTION refuse_666() RETURNS trigger AS $$
             BEGIN
               IF NEW.enrollment_id = 666 THEN
                 RAISE EXCEPTION 'enrollment 666 is refused by the test' USING ERRCODE = 'check_violation';
               END IF;
               RETURN NEW;
             END $$ LANGUAGE plpgsql",
        )
        .execute(&self.db)
        .await
        .expect("function");
        sqlx::query("CREATE TRIGGER refuse_666 BEFORE INSERT OR UPDATE ON enrollments FOR EACH ROW EXECUTE FUNCTION refuse_666()")
            .execute(&self.db)
            .await
            .expect("trigger");
    }

    pub async fn accept_enrollment_666(&self) {
        sqlx::query("DROP TRIGGER refuse_666 ON enrollments").execute(&self.db).await.expect("drop trigger");
    }

    /// Appends a webhook body straight to the stream, as the intake would.
    pub async fn enqueue(&self, body: &str) -> String {
        let envelope = fleet::jobs::Envelope::parse(body.as_bytes()).expect("an event");
        let topic = envelope.topic();
        let entry = stream::NewEntry {
            body: body.as_bytes(),
            topic: &topic,
            tenant_id: envelope
                .tenant_id
                .as_ref()
                .expect("enqueue takes bodies that name their tenant_id, as a key for any school requires")
                .as_str(),
            event_id: &envelope.id,
            received_at: chrono::Utc::now(),
        };
        let mut redis = self.redis.clone();
        stream::ensure_group(&mut redis, &self.keys).await.expect("group");
        match stream::enqueue(&mut redis, &self.keys, &entry, Duration::from_secs(3600)).await.expect("enqueue") {
            stream::Enqueued::Accepted(id) | stream::Enqueued::Duplicate(id) => id,
        }
    }
}

/// A TCP proxy that a test can cut (drop every connection and refuse new
/// ones) and restore, to stage a network or server outage.
pub struct Proxy {
    pub port: u16,
    target: String,
    accept: std::sync::Mutex<Option<JoinHandle<()>>>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    /// Proxies 127.0.0.1:<new port> to the host and port of `url`.
    pub async fn start(url: &str) -> Self {
        let url = url::Url::parse(url).expect("a URL");
        let target = format!("{}:{}", url.host_str().expect("host"), url.port().expect("port"));
        let port = fleet::local_services::free_port().expect("port");
        let proxy = Self { port, target, accept: std::sync::Mutex::new(None), connections: std::sync::Arc::default() };
        proxy.restore().await;
        proxy
    }

    /// `url` with its port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).expect("a URL");
        url.set_port(Some(self.port)).expect("port");
        url.to_string()
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        if let Some(accept) = self.accept.lock().expect("lock").take() {
            accept.abort();
        }
        for connection in self.connections.lock().expect("lock").drain(..) {
            connection.abort();
        }
    }

    /// Accepts connections again.
    pub async fn restore(&self) {
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let target = self.target.clone();
        let connections = self.connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().expect("lock").push(task.abort_handle());
            }
        });
        *self.accept.lock().expect("lock") = Some(accept);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// The real `fleet` binary, configured for this test's servers and prefix.
pub fn fleet(ctx: &TestContext, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("REDIS_URL", &ctx.redis_url)
        .env("DATABASE_URL", &ctx.database_url)
        .env("FLEET_KEY_PREFIX", ctx.prefix.as_str())
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

pub fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("the process is running");
    let status = std::process::Command::new("kill").args(["-s", name, &pid.to_string()]).status().expect("kill");
    assert!(status.success());
}

pub async fn wait_exit(child: &mut tokio::process::Child) -> (std::process::ExitStatus, String) {
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the process exits within 20 s")
        .expect("wait");
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr).await.expect("stderr");
    }
    (status, stderr)
}

/// The read API served in-process.
pub struct ApiServer {
    pub address: SocketAddr,
    pub state: fleet::api::ApiState,
    shutdown: CancellationToken,
}

impl ApiServer {
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.address)
    }

    pub async fn get(&self, path_and_query: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(self.url(path_and_query))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("request completes")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn api_tuning() -> fleet::api::Settings {
    fleet::api::Settings {
        rate_limit_requests: 10_000,
        rate_limit_window_ms: 60_000,
        api_token: None,
        api_tokens: None,
        trusted_proxies: Vec::new(),
        default_tenant: None,
        http: fleet::runtime::HttpSettings::default(),
    }
}

impl TestContext {
    /// Gives `tenant` a course without enrollments, straight in Postgres: the
    /// school and the course then exist for the read API.
    pub async fn add_course(&self, tenant: &str, course: i64) {
        sqlx::query(
            "INSERT INTO courses (tenant_id, course_id, name, source_rank, source_updated_at,
                                  source_event_created_at, source_event_id)
             VALUES ($1, $2, 'A course without enrollments', 0, now(), now(), 'test')",
        )
        .bind(tenant)
        .bind(course)
        .execute(&self.db)
        .await
        .expect("insert a course");
    }

    pub async fn spawn_api(&self, tuning: fleet::api::Settings) -> ApiServer {
        self.spawn_api_with(tuning, fleet::redis::cache::Ttls::default()).await
    }

    pub async fn spawn_api_with(&self, tuning: fleet::api::Settings, ttls: fleet::redis::cache::Ttls) -> ApiServer {
        let redis = fleet::redis::connect(&self.redis_url, Duration::from_secs(1)).await.expect("connect to Redis");
        let redis = std::sync::Arc::new(OnceCell::new_with(Some(redis)));
        let http = tuning.http;
        let state = fleet::api::ApiState::new(self.db.clone(), redis, self.keys.clone(), ttls, tuning);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        tokio::spawn(fleet::runtime::serve(listener, fleet::api::app(state.clone()), http, shutdown.clone()));
        ApiServer { address, state, shutdown }
    }
}
