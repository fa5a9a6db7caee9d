//! The fleet's roles run in-process against a [`TestContext`]: an intake,
//! workers and the read API, each on its own free port, stopped by its handle.

use std::net::SocketAddr;
use std::time::Duration;

use fleet::intake::Settings as IntakeSettings;
use fleet::redis::dedup::DedupWindow;
use fleet::secrets::WebhookKeys;
use fleet::worker::Settings as WorkerSettings;
use fleet::worker::Worker;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::http::SECRET;
use super::servers::TestContext;

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
        dedup: DedupWindow::new(Duration::from_secs(72 * 3600), 1000),
        shards: fleet::redis::shards::ShardCount::ONE,
        http: fleet::runtime::HttpSettings::default(),
        // Tests send many bad signatures from one address; the limit has a test of its own.
        refusals_per_minute: 0,
        trusted_proxies: Vec::new(),
        metrics_listen: None,
    }
}

impl TestContext {
    pub async fn spawn_intake(&self) -> IntakeServer {
        self.spawn_intake_with(intake_settings(SECRET)).await
    }

    pub async fn spawn_intake_with(&self, settings: IntakeSettings) -> IntakeServer {
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let intake = fleet::intake::Application::build(local, &self.redis_target(), self.keys.clone(), settings)
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
            shards: fleet::redis::shards::ShardCount::ONE,
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
        let worker = Worker::connect(self.db.clone(), &self.redis_target(), self.keys.clone(), settings)
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

    pub async fn spawn_api(&self, tuning: fleet::api::Settings) -> ApiServer {
        self.spawn_api_with(tuning, fleet::redis::cache::Ttls::default()).await
    }

    pub async fn spawn_api_with(&self, tuning: fleet::api::Settings, ttls: fleet::redis::cache::Ttls) -> ApiServer {
        let redis =
            fleet::redis::connect(&self.redis_target(), Duration::from_secs(1)).await.expect("connect to Redis");
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
        fleet::http_client::builder()
            .build()
            .expect("an HTTP client")
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
        console_token: None,
        http: fleet::runtime::HttpSettings::default(),
        metrics_listen: None,
    }
}
