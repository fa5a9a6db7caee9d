//! The managed Redis and Postgres that teams run on: TLS to both (a single
//! Redis and a Redis Cluster), PgBouncer in session and transaction mode,
//! and the configurations no wait can heal, each refused or reported with
//! its cause and the setting to change. Real `fleet` processes, real
//! servers: a Redis on a TLS port only, a Postgres that takes TCP over TLS
//! only, a `pgbouncer`.

use std::time::{Duration, Instant};

use fleet::read_model::cached::Cached;
use fleet::redis::cache::Ttls;
use serde_json::Value;

use crate::helpers::{
    context, fleet, scratch_dir, signal, tls_cluster_context, tls_servers, wait_exit, TestContext, SECRET,
};

const TENANT: &str = "184532";
const COURSE: i64 = 2871345;
const TOKEN: &str = "managed-services-token";

/// Intake, worker and read API as processes on `ctx`'s servers, with `env`
/// on top (e.g. another DATABASE_URL).
struct Roles {
    intake: tokio::process::Child,
    worker: tokio::process::Child,
    api: tokio::process::Child,
    intake_port: u16,
    api_port: u16,
}

async fn until_ready(url: &str, what: &str, children: &mut [&mut tokio::process::Child]) {
    let client = fleet::http_client::builder().build().expect("an HTTP client");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client.get(url).timeout(Duration::from_secs(2)).send().await.map(|r| r.status().as_u16());
        if status.as_ref().ok() == Some(&200) {
            return;
        }
        for child in children.iter_mut() {
            if let Ok(Some(exit)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr).await;
                }
                panic!("a role exited ({exit}) before {what} was ready: {stderr}");
            }
        }
        assert!(Instant::now() < deadline, "{what} never became ready ({status:?})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Roles {
    async fn start(ctx: &TestContext, env: &[(&str, &str)]) -> Self {
        let port = || fleet::local_services::free_port().expect("a free port");
        let (intake_port, worker_port, api_port) = (port(), port(), port());
        let spawn = |args: &[&str], extra: &[(&str, String)]| {
            let mut command = fleet(ctx, args);
            command.env("FLEET_LOG_FORMAT", "text");
            for (name, value) in extra {
                command.env(name, value);
            }
            for (name, value) in env {
                command.env(name, value);
            }
            command.spawn().expect("spawn fleet")
        };
        let mut intake = spawn(
            &["intake"],
            &[("FLEET_LISTEN", format!("127.0.0.1:{intake_port}")), ("THINKIFIC_WEBHOOK_SECRET", SECRET.to_owned())],
        );
        let mut worker = spawn(
            &["worker"],
            &[
                ("FLEET_HEALTH_LISTEN", format!("127.0.0.1:{worker_port}")),
                ("FLEET_CONSUMER_NAME", "managed-1".to_owned()),
                ("FLEET_BLOCK_MS", "100".to_owned()),
            ],
        );
        let mut api = spawn(
            &["api"],
            &[
                ("FLEET_API_LISTEN", format!("127.0.0.1:{api_port}")),
                ("FLEET_API_TOKEN", TOKEN.to_owned()),
                ("RATE_LIMIT_API_REQUESTS", "100000".to_owned()),
            ],
        );
        let base = |port: u16| format!("http://127.0.0.1:{port}/readyz");
        until_ready(&base(intake_port), "the intake", &mut [&mut intake, &mut worker, &mut api]).await;
        until_ready(&base(worker_port), "the worker", &mut [&mut intake, &mut worker, &mut api]).await;
        until_ready(&base(api_port), "the read API", &mut [&mut intake, &mut worker, &mut api]).await;
        Self { intake, worker, api, intake_port, api_port }
    }

    async fn post(&self, body: &str) -> u16 {
        let url = format!("http://127.0.0.1:{}/webhooks/thinkific", self.intake_port);
        crate::helpers::post_signed_url(&url, body, SECRET).await.status().as_u16()
    }

    /// The course's cached statistics once they are a `HIT` with
    /// `enrollments` in them.
    async fn statistics_hit(&self, enrollments: i64) -> Value {
        let client = fleet::http_client::builder().build().expect("an HTTP client");
        let url =
            format!("http://127.0.0.1:{}/api/statistics/cached?tenant_id={TENANT}&course_id={COURSE}", self.api_port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let response = client.get(&url).bearer_auth(TOKEN).send().await.expect("the read API answers");
            let hit = fleet::api::cache_status(response.headers()) == Some("HIT");
            let body: Value = response.json().await.unwrap_or_default();
            if hit && body["enrollments"] == enrollments {
                return body;
            }
            assert!(Instant::now() < deadline, "no HIT with {enrollments} enrollments: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every role with SIGTERM; each exits 0.
    async fn stop(mut self) {
        for child in [&mut self.intake, &mut self.worker, &mut self.api] {
            signal(child, "TERM");
            let (status, stderr) = wait_exit(child).await;
            assert!(status.success(), "{stderr}");
        }
    }
}

/// Enrollments of the example course, each a new learner.
fn enrollments(count: usize) -> Vec<String> {
    (0..count)
        .map(|n| {
            crate::helpers::event(
                "enrollment.created",
                serde_json::json!({"id": format!("2025031600000000{n:07}")}),
                serde_json::json!({"id": 300_000_000 + n, "user": {"id": 60_000_000 + n, "email": format!("l{n}@example.com")}}),
            )
        })
        .collect()
}

/// A webhook accepted by the intake is applied by the worker and read back
/// by the API as a `HIT` with the new numbers.
async fn webhooks_reach_a_hit(ctx: &TestContext, env: &[(&str, &str)], count: usize) {
    let roles = Roles::start(ctx, env).await;
    let bodies = enrollments(count);
    for body in &bodies {
        assert_eq!(roles.post(body).await, 200, "accepted");
    }
    let statistics = roles.statistics_hit(count as i64).await;
    assert_eq!(statistics["active"], count as i64, "{statistics}");
    assert_eq!(ctx.applied_events().await, count as i64);
    roles.stop().await;
}

#[tokio::test]
async fn a_webhook_reaches_a_hit_over_tls_to_redis_and_to_postgres_with_verify_full() {
    let servers = tls_servers().await;
    let ctx = servers.context().await;
    assert!(ctx.redis_url.starts_with("rediss://") && ctx.database_url.contains("sslmode=verify-full"));
    webhooks_reach_a_hit(&ctx, &[], 3).await;
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&ctx.db)
        .await
        .expect("pg_stat_ssl");
    assert!(ssl, "the test's own connection is over TLS too");
}

#[tokio::test]
async fn a_webhook_reaches_a_hit_over_tls_to_every_node_of_a_redis_cluster() {
    let ctx = tls_cluster_context().await;
    assert!(ctx.redis_url.split(',').all(|url| url.starts_with("rediss://")));
    // Spelled as operators write it: the boolean setting takes on/off, yes/no, 1/0.
    webhooks_reach_a_hit(&ctx, &[("FLEET_REDIS_CLUSTER", "On"), ("FLEET_STREAM_SHARDS", "3")], 6).await;
}

#[tokio::test]
async fn mutual_tls_to_redis_needs_the_client_certificate() {
    let servers = tls_servers().await;
    let base = vec![
        ("REDIS_URL", servers.redis_mutual.url()),
        ("FLEET_REDIS_TLS_CA_FILE", servers.ca.cert_file.display().to_string()),
    ];
    let cert = ("FLEET_REDIS_TLS_CERT_FILE", servers.client.cert_file.display().to_string());
    let key = ("FLEET_REDIS_TLS_KEY_FILE", servers.client.key_file.display().to_string());
    let (code, said) = run_to_exit(&["status", "--json"], &base).await;
    assert_ne!(code, Some(0), "a server that asks for a client certificate refuses us without one: {said}");
    let (code, said) = run_to_exit(&["status", "--json"], &[base.clone(), vec![cert.clone(), key]].concat()).await;
    assert_eq!(code, Some(0), "{said}");
    let (code, said) = run_to_exit(&["status", "--json"], &[base, vec![cert]].concat()).await;
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("FLEET_REDIS_TLS_KEY_FILE"), "{said}");
}

/// Runs `fleet args…` with `env` (and nothing else) until it exits; its
/// exit code and what it logged.
async fn run_to_exit(args: &[&str], env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet"));
    command.args(args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command.env("FLEET_KEY_PREFIX", format!("test:{}:", uuid::Uuid::new_v4().simple()));
    command.env("FLEET_LOG_FORMAT", "text").env("RUST_LOG", "info");
    for (name, value) in env {
        command.env(name, value);
    }
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.kill_on_drop(true).spawn().expect("fleet runs");
    let exited = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    if exited.is_err() {
        let _ = child.start_kill();
    }
    let output = child.wait_with_output().await.expect("fleet's output");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(exited.is_ok(), "fleet {args:?} did not exit within 20 s: {said}");
    (output.status.code(), said)
}

/// A worker's arguments against `redis_url` and `database_url`.
fn worker_env(redis_url: &str, database_url: &str) -> Vec<(&'static str, String)> {
    vec![("REDIS_URL", redis_url.to_owned()), ("DATABASE_URL", database_url.to_owned())]
}

#[tokio::test]
async fn tls_that_cannot_work_ends_the_start_with_its_cause_and_setting() {
    let servers = tls_servers().await;
    let plain = context().await;
    let tls_postgres = servers.postgres.url("postgres");
    let ca = servers.ca.cert_file.display().to_string();
    let other_ca = servers.other_ca.cert_file.display().to_string();
    let redis_tls = servers.redis.url();
    let with_query = |url: &str, query: &str| format!("{}?{query}", url.split('?').next().unwrap_or(url));

    // Redis: a certificate of a CA we do not trust.
    let mut env = worker_env(&redis_tls, &plain.database_url);
    env.push(("FLEET_REDIS_TLS_CA_FILE", other_ca.clone()));
    let (code, said) = run_to_exit(&["worker"], &env).await;
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("not trusted") && said.contains("FLEET_REDIS_TLS_CA_FILE"), "{said}");
    // The system's roots do not know the test CA either.
    let (code, said) = run_to_exit(&["status"], &worker_env(&redis_tls, &plain.database_url)).await;
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("FLEET_REDIS_TLS_CA_FILE"), "{said}");

    // Redis: a certificate for another host name (it names 127.0.0.1 only).
    let mut env = worker_env(&redis_tls.replace("127.0.0.1", "localhost"), &plain.database_url);
    env.push(("FLEET_REDIS_TLS_CA_FILE", ca.clone()));
    let (code, said) = run_to_exit(&["intake"], &[env, vec![("THINKIFIC_WEBHOOK_SECRET", "k".into())]].concat()).await;
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("another host name") && said.contains("REDIS_URL"), "{said}");

    // Redis: a CA file that is not there.
    let mut env = worker_env(&redis_tls, &plain.database_url);
    env.push(("FLEET_REDIS_TLS_CA_FILE", "/nonexistent/ca.pem".to_owned()));
    let (code, said) = run_to_exit(&["worker"], &env).await;
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("cannot be read") && said.contains("FLEET_REDIS_TLS_CA_FILE"), "{said}");

    // An operator command stops at any misconfiguration, a wrong password too (exit 2, not 1).
    let wrong_password = {
        let mut url = url::Url::parse(&redis_tls).expect("a URL");
        url.set_password(Some("not-the-password")).expect("a password");
        url.to_string()
    };
    let (code, said) =
        run_to_exit(&["status"], &[("REDIS_URL", wrong_password), ("FLEET_REDIS_TLS_CA_FILE", ca.clone())]).await;
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("REDIS_URL"), "{said}");

    // Redis: a plain URL against the TLS-only port.
    let plain_url = redis_tls.replacen("rediss://", "redis://", 1);
    let (code, said) = run_to_exit(&["worker"], &worker_env(&plain_url, &plain.database_url)).await;
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("only TLS") && said.contains("rediss://"), "{said}");

    // Redis: TLS to a server that speaks none.
    let mut env = worker_env(&plain.redis_url.replacen("redis://", "rediss://", 1), &plain.database_url);
    env.push(("FLEET_REDIS_TLS_CA_FILE", ca.clone()));
    let (code, said) = run_to_exit(&["status"], &env).await;
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("does not speak TLS") && said.contains("redis://"), "{said}");

    // Postgres: sslmode=require against a server without TLS.
    let env = vec![("DATABASE_URL", with_query(&plain.database_url, "sslmode=require"))];
    let (code, said) = run_to_exit(&["migrate"], &env).await;
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("does not offer TLS") && said.contains("sslmode"), "{said}");

    // Postgres: a server's certificate signed by a CA we were not given.
    let env = vec![("DATABASE_URL", with_query(&tls_postgres, &format!("sslmode=verify-full&sslrootcert={other_ca}")))];
    let (code, said) = run_to_exit(&["migrate"], &env).await;
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("not trusted") && said.contains("sslrootcert"), "{said}");
    // libpq's meaning: require with a root certificate verifies against it.
    let env = vec![("DATABASE_URL", with_query(&tls_postgres, &format!("sslmode=require&sslrootcert={other_ca}")))];
    let (code, said) = run_to_exit(&["migrate"], &env).await;
    assert_eq!(code, Some(2), "{said}");
    // …and without one, require encrypts without verifying, as in libpq.
    let env = vec![("DATABASE_URL", with_query(&tls_postgres, "sslmode=require"))];
    let (code, said) = run_to_exit(&["migrate"], &env).await;
    assert_eq!(code, Some(0), "{said}");

    // Postgres: verify-full by a name the certificate does not list.
    let by_name =
        with_query(&tls_postgres, &format!("sslmode=verify-full&sslrootcert={ca}")).replace("127.0.0.1", "localhost");
    let (code, said) = run_to_exit(&["migrate"], &[("DATABASE_URL", by_name)]).await;
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("another host name") && said.contains("DATABASE_URL"), "{said}");

    // Postgres: no TLS to a server that takes TCP over TLS only.
    let env = vec![("DATABASE_URL", with_query(&tls_postgres, "sslmode=disable"))];
    let (code, said) = run_to_exit(&["migrate"], &env).await;
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("only over TLS") && said.contains("sslmode=require"), "{said}");
}

/// Reads `/readyz` until it says `expected`; the body.
async fn readyz_says(url: &str, expected: &str, child: &mut tokio::process::Child) -> String {
    let client = fleet::http_client::builder().build().expect("an HTTP client");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut last = String::from("no answer");
        if let Ok(response) = client.get(url).timeout(Duration::from_secs(2)).send().await {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            if status == 503 && body.contains(expected) {
                return body;
            }
            last = format!("{status} {body}");
        }
        if let Ok(Some(exit)) = child.try_wait() {
            let (_, stderr) = wait_exit(child).await;
            panic!("exited ({exit}) instead of waiting for {expected}: {stderr}");
        }
        if Instant::now() >= deadline {
            let _ = child.start_kill();
            let (_, stderr) = wait_exit(child).await;
            panic!("/readyz never said {expected}: {last}; the process said: {stderr}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_wrong_password_or_a_missing_database_waits_and_names_the_cause_within_a_second() {
    let plain = context().await;
    let servers = tls_servers().await;
    let wrong_redis = {
        let mut url = url::Url::parse(&servers.redis.url()).expect("a URL");
        url.set_password(Some("not-the-password")).expect("a password");
        url.to_string()
    };
    let missing_database = {
        let mut url = url::Url::parse(&plain.database_url).expect("a URL");
        url.set_path("/fleet_no_such_database");
        url.to_string()
    };
    let wrong_postgres = {
        let mut url = url::Url::parse(&plain.database_url).expect("a URL");
        url.set_password(Some("not-the-password")).expect("a password");
        url.to_string()
    };
    let no_password = {
        let mut url = url::Url::parse(&plain.redis_url).expect("a URL");
        url.set_password(None).expect("no password");
        url.set_username("").expect("no user");
        url.to_string()
    };
    let cases = [
        (worker_env(&wrong_redis, &plain.database_url), "Redis refused the credentials", "REDIS_URL"),
        (worker_env(&no_password, &plain.database_url), "NOAUTH", "REDIS_URL"),
        (worker_env(&plain.redis_url, &missing_database), "3D000", "DATABASE_URL"),
        (worker_env(&plain.redis_url, &wrong_postgres), "28P01", "DATABASE_URL"),
    ];
    for (mut env, cause, setting) in cases {
        let port = fleet::local_services::free_port().expect("a port");
        env.push(("FLEET_HEALTH_LISTEN", format!("127.0.0.1:{port}")));
        env.push(("FLEET_REDIS_TLS_CA_FILE", servers.ca.cert_file.display().to_string()));
        if !env.iter().any(|(name, value)| *name == "REDIS_URL" && value.starts_with("rediss://")) {
            env.retain(|(name, _)| *name != "FLEET_REDIS_TLS_CA_FILE");
        }
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet"));
        command.arg("worker").env_clear().env("FLEET_LOG_FORMAT", "text").env("RUST_LOG", "info");
        command.env("FLEET_KEY_PREFIX", plain.prefix.as_str());
        command.envs(env.iter().map(|(name, value)| (*name, value.as_str())));
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
        let started = Instant::now();
        let mut worker = command.spawn().expect("spawn fleet worker");
        let body = readyz_says(&format!("http://127.0.0.1:{port}/readyz"), cause, &mut worker).await;
        assert!(body.contains(setting) && body.contains("misconfigured"), "{body}");
        assert!(started.elapsed() < Duration::from_secs(5), "{cause} named after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(worker.try_wait().expect("wait").is_none(), "{cause}: the worker waits, it does not exit");
        signal(&worker, "TERM");
        let (status, stderr) = wait_exit(&mut worker).await;
        assert!(status.success(), "{stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|line| line.contains("ERROR") && line.contains(cause)).collect();
        assert_eq!(errors.len(), 1, "{cause}: logged at error level once (at most once a minute): {stderr}");
        assert!(errors[0].contains(setting), "{}", errors[0]);
        assert!(!stderr.contains("not-the-password"), "{stderr}");
    }
}

/// A `pgbouncer` in front of `postgres_port`, in `mode`, as the Postgres
/// user (PgBouncer refuses to run as root). Stopped when dropped.
struct PgBouncer {
    child: std::process::Child,
    port: u16,
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pgbouncer_program() -> std::path::PathBuf {
    crate::helpers::tools::PGBOUNCER.path()
}

impl PgBouncer {
    async fn start(database_url: &str, mode: &str) -> Self {
        use std::os::unix::process::CommandExt;
        let url = url::Url::parse(database_url).expect("a URL");
        let (user, password) = (url.username().to_owned(), url.password().unwrap_or_default().to_owned());
        let postgres_port = url.port().unwrap_or(5432);
        let dir = scratch_dir(&format!("pgbouncer-{mode}"));
        std::fs::create_dir_all(&dir).expect("pgbouncer's directory");
        let port = fleet::local_services::free_port().expect("a port");
        let config = format!(
            "[databases]\n* = host=127.0.0.1 port={postgres_port}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {auth}\npool_mode = {mode}\n\
             default_pool_size = 4\nmin_pool_size = 4\nserver_round_robin = 1\nmax_client_conn = 200\nlogfile = {log}\n\
             ignore_startup_parameters = extra_float_digits\n",
            auth = dir.join("userlist.txt").display(),
            log = dir.join("pgbouncer.log").display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), config).expect("pgbouncer.ini");
        std::fs::write(dir.join("userlist.txt"), format!("\"{user}\" \"{password}\"\n")).expect("userlist");
        let running_as_root = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
        let mut command = std::process::Command::new(pgbouncer_program());
        command.arg(dir.join("pgbouncer.ini"));
        if running_as_root.unwrap_or(false) {
            // `nobody`: PgBouncer will not run as root.
            const NOBODY: u32 = 65534;
            for file in ["", "pgbouncer.ini", "userlist.txt"] {
                std::os::unix::fs::chown(dir.join(file), Some(NOBODY), Some(NOBODY)).expect("chown");
            }
            command.uid(NOBODY).gid(NOBODY);
        }
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let bouncer = Self { child, port };
        let through = bouncer.url(database_url);
        let deadline = Instant::now() + Duration::from_secs(20);
        while sqlx::PgPool::connect(&through).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer never answered: {:?}",
                std::fs::read_to_string(dir.join("pgbouncer.log"))
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bouncer
    }

    /// `database_url` through this pgbouncer.
    fn url(&self, database_url: &str) -> String {
        let mut url = url::Url::parse(database_url).expect("a URL");
        url.set_port(Some(self.port)).expect("a port");
        url.to_string()
    }
}

#[tokio::test]
async fn the_fleet_runs_through_pgbouncer_in_session_mode() {
    let ctx = context().await;
    let bouncer = PgBouncer::start(&ctx.database_url, "session").await;
    let through = bouncer.url(&ctx.database_url);
    webhooks_reach_a_hit(&ctx, &[("DATABASE_URL", &through)], 40).await;
}

#[tokio::test]
async fn the_fleet_runs_through_pgbouncer_in_transaction_mode_without_kept_statements() {
    let ctx = context().await;
    let bouncer = PgBouncer::start(&ctx.database_url, "transaction").await;
    let through = bouncer.url(&ctx.database_url);
    let env = [("DATABASE_URL", through.as_str()), ("FLEET_PG_TRANSACTION_POOLING", "yes")];
    webhooks_reach_a_hit(&ctx, &env, 40).await;
    // Reads outside a transaction, many at once, each server taken in turn
    // (server_round_robin): every statement finds what it was prepared as.
    let options = fleet::db::options(&through, fleet::db::Pooling::Transaction).expect("options");
    let pool = fleet::db::connect_lazy(options);
    let items = [
        Cached::Statistics { tenant: TENANT.to_owned(), course: COURSE },
        Cached::Dashboard { tenant: TENANT.to_owned() },
    ];
    let reads = (0..200).map(|_| {
        let (pool, keys, items) = (pool.clone(), ctx.keys.clone(), &items);
        async move {
            let found = Cached::compute(&pool, &keys, &Ttls::default(), items).await?;
            let event = [(TENANT.to_owned(), "20250316000000000000001".to_owned())];
            let applied = fleet::jobs::already_applied(&pool, &event).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((found.len(), applied.len()))
        }
    });
    for read in futures_util::future::join_all(reads).await {
        assert_eq!(read.expect("a read through the transaction pooler"), (2, 1));
    }
    let schema_checked = fleet::db::check_schema(&pool, &through, &Default::default(), &Default::default()).await;
    assert!(schema_checked.expect("the schema is current"), "checked through the pooler");
    // `fleet migrate` takes a session lock, which transaction pooling cannot keep: refused, saying so.
    let (code, said) =
        run_to_exit(&["migrate"], &[("DATABASE_URL", through.clone()), ("FLEET_PG_TRANSACTION_POOLING", "1".into())])
            .await;
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("session-mode pooler"), "{said}");
}

#[tokio::test]
async fn the_system_roots_are_trusted_and_skipping_verification_is_loud() {
    let servers = tls_servers().await;
    let redis = ("REDIS_URL", servers.redis.url());
    let ca = servers.ca.cert_file.display().to_string();
    // The system's roots (rustls-native-certs reads SSL_CERT_FILE as OpenSSL does, and
    // /etc/ssl/certs in the image): no Fleet setting needed for a CA the system trusts.
    let (code, said) = run_to_exit(&["status"], &[redis.clone(), ("SSL_CERT_FILE", ca.clone())]).await;
    assert_eq!(code, Some(0), "{said}");
    let postgres = servers.postgres.url("postgres").split('?').next().unwrap_or_default().to_owned();
    let verify_full = ("DATABASE_URL", format!("{postgres}?sslmode=verify-full"));
    let (code, said) = run_to_exit(&["migrate"], &[verify_full.clone(), ("SSL_CERT_FILE", ca.clone())]).await;
    assert_eq!(code, Some(0), "{said}");
    let (code, said) = run_to_exit(&["migrate"], &[verify_full]).await;
    assert_eq!(code, Some(2), "the test CA is not among the machine's roots: {said}");
    // libpq's variables, where sqlx reads them.
    let bare = ("DATABASE_URL", postgres.clone());
    let variables = [("PGSSLMODE", "verify-full".to_owned()), ("PGSSLROOTCERT", ca.clone())];
    let (code, said) = run_to_exit(&["migrate"], &[vec![bare.clone()], variables.to_vec()].concat()).await;
    assert_eq!(code, Some(0), "{said}");
    let other = servers.other_ca.cert_file.display().to_string();
    let variables = [("PGSSLMODE", "require".to_owned()), ("PGSSLROOTCERT", other)];
    let (code, said) = run_to_exit(&["migrate"], &[vec![bare], variables.to_vec()].concat()).await;
    assert_eq!(code, Some(2), "require with a root certificate verifies, as in libpq: {said}");

    // Verification off: only through the setting that says it is insecure, warned on every start.
    let insecure = ("FLEET_REDIS_TLS_INSECURE_SKIP_VERIFY", "ON".to_owned());
    let other_ca = ("FLEET_REDIS_TLS_CA_FILE", servers.other_ca.cert_file.display().to_string());
    let (code, said) = run_to_exit(&["status"], &[redis.clone(), insecure.clone(), other_ca]).await;
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("WARN") && said.contains("FLEET_REDIS_TLS_INSECURE_SKIP_VERIFY is on"), "{said}");
    let (code, said) = run_to_exit(&["status"], &[redis.clone(), insecure.clone()]).await;
    assert_eq!(code, Some(0), "{said}");
    // A URL's own #insecure is not how: the client's default rules it out (verified, refused).
    let (code, said) = run_to_exit(&["status"], &[("REDIS_URL", format!("{}#insecure", servers.redis.url()))]).await;
    assert_eq!(code, Some(2), "{said}");

    // TLS settings on a plain URL would be ignored: refused instead.
    let plain = context().await;
    let (code, said) = run_to_exit(&["status"], &[("REDIS_URL", plain.redis_url.clone()), insecure]).await;
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("rediss://"), "{said}");
}
