//! The throwaway servers of `fleet dev` and of this suite: other users of
//! the machine can neither connect without the generated password nor read
//! the servers' files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fleet::local_services::{LocalPostgres, LocalRedis};
use sqlx::Connection;

use crate::helpers::{scratch_dir, signal, wait_exit};

/// The permission bits of `path` (not following a symlink).
fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap_or_else(|err| panic!("{}: {err}", path.display())).permissions().mode()
        & 0o777
}

/// Every file and directory under `dir` (itself included) is closed to group and others.
fn assert_private_tree(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            assert_private_tree(&path);
        } else {
            assert_eq!(mode(&path) & 0o077, 0, "{} is open to other users", path.display());
        }
    }
}

fn without_password(url: &str) -> String {
    let mut url = url::Url::parse(url).expect("a URL");
    url.set_password(None).expect("no password");
    url.to_string()
}

async fn redis_ping(url: &str) -> Result<String, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("PING").query_async(&mut conn).await
}

#[tokio::test]
async fn local_redis_wants_its_password_and_keeps_its_files_private() {
    let dir = scratch_dir("private-redis");
    let mut redis = LocalRedis::start(&dir, false).await.expect("start redis");
    let url = redis.url();
    assert!(url::Url::parse(&url).expect("a URL").password().is_some_and(|password| password.len() >= 32));

    let refused = redis_ping(&without_password(&url)).await.expect_err("no password, no PING");
    assert_eq!(refused.code(), Some("NOAUTH"), "{refused}");
    assert_eq!(redis_ping(&url).await.expect("PING with the password"), "PONG");
    assert_eq!(mode(&dir.join("password")), 0o600);
    assert!(dir.join("appendonlydir").is_dir() && dir.join("redis.log").is_file());
    assert_private_tree(&dir);
    let shown = std::process::Command::new("ps").args(["-eo", "args"]).output().expect("ps").stdout;
    let password = std::fs::read_to_string(dir.join("password")).expect("password");
    assert!(!String::from_utf8_lossy(&shown).contains(&password), "the password is on a command line");

    // Restarted, or started again on its kept directory: the same password.
    redis.restart().await.expect("restart");
    assert_eq!(redis_ping(&url).await.expect("PING after restart"), "PONG");
    redis.stop();
    let again = LocalRedis::start(&dir, false).await.expect("start again");
    assert_eq!(url::Url::parse(&again.url()).expect("URL").password(), url::Url::parse(&url).expect("URL").password());
    drop(again);
    std::fs::remove_dir_all(&dir).expect("remove the kept directory");
}

#[tokio::test]
async fn an_ephemeral_local_redis_restarts_with_its_password() {
    let dir = scratch_dir("ephemeral-redis");
    let mut redis = LocalRedis::start(&dir, true).await.expect("start redis");
    let url = redis.url();
    redis.stop();
    assert!(!dir.exists(), "an ephemeral directory goes when the server stops");
    redis.restart().await.expect("restart");
    assert_eq!(redis.url(), url);
    assert_eq!(redis_ping(&url).await.expect("PING after restart"), "PONG");
    assert_private_tree(&dir);
}

#[tokio::test]
async fn local_postgres_wants_its_password_and_keeps_its_files_private() {
    let dir = scratch_dir("private-postgres");
    let mut postgres = LocalPostgres::start(&dir, false).await.expect("start postgres");
    let url = postgres.url("postgres");
    let parsed = url::Url::parse(&url).expect("a URL");
    assert!(parsed.password().is_some_and(|password| password.len() >= 32));

    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect with the password");
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await.expect("query");
    assert_eq!(one, 1);
    conn.close().await.ok();

    let mut wrong = parsed.clone();
    wrong.set_password(Some("not-the-password")).expect("password");
    let port = parsed.port().expect("port");
    // Over TCP and over the server's own socket, as any local user would try.
    let socket = format!("postgres://postgres@localhost/postgres?host={}&port={port}", dir.display());
    for attempt in [without_password(&url), wrong.to_string(), socket] {
        let refused = sqlx::PgConnection::connect(&attempt).await.expect_err("connected without the password");
        let text = refused.to_string();
        assert!(text.contains("password authentication failed"), "{attempt}: {text}");
    }

    assert_eq!(mode(&dir.join("password")), 0o600);
    assert!(!dir.join("initdb-password").exists(), "initdb's copy of the password is removed");
    let socket_file = dir.join(format!(".s.PGSQL.{port}"));
    assert_eq!(mode(&socket_file) & 0o077, 0, "the socket is open to other users");
    assert_private_tree(&dir);

    // A kept cluster starts again with the same password.
    postgres.stop();
    let again = LocalPostgres::start(&dir, false).await.expect("start again");
    let again_url = url::Url::parse(&again.url("postgres")).expect("URL");
    assert_eq!(again_url.password(), parsed.password());
    drop(again);
    std::fs::remove_dir_all(&dir).expect("remove the kept cluster");
}

/// As root, `fleet dev` run from a checkout inside a directory only root may
/// enter (a 0700 home, as in most containers) starts: PostgreSQL, which runs
/// as an unprivileged user, keeps its data where that user can reach it.
#[tokio::test]
async fn fleet_dev_runs_from_a_checkout_in_a_private_home_directory() {
    use tokio::io::AsyncBufReadExt;
    let home = scratch_dir("home");
    let checkout = home.join("checkout");
    std::fs::create_dir_all(&checkout).expect("checkout");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod 700");
    let dev_dir = checkout.join(".fleet/dev");
    let postgres_dir = fleet::local_services::reachable_postgres_dir(&dev_dir.join("postgres")).expect("a directory");
    let port = fleet::local_services::free_port().expect("port");
    let mut dev = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet"))
        .arg("dev")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLEET_DEV_DIR", &dev_dir)
        .env("FLEET_LISTEN", format!("127.0.0.1:{port}"))
        .current_dir(&checkout)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn fleet dev");
    let mut stdout = tokio::io::BufReader::new(dev.stdout.take().expect("stdout")).lines();
    let welcome = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Ok(Some(line)) = stdout.next_line().await {
            if line.contains("fleet dev is running") {
                return true;
            }
        }
        false
    })
    .await
    .expect("fleet dev starts within 120 s");
    // The rest of the welcome text names the operator commands.
    let mut rest = String::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(std::time::Duration::from_millis(500), stdout.next_line()).await
    {
        rest.push_str(&line);
        rest.push('\n');
    }
    assert!(rest.contains("fleet status") && rest.contains("fleet dlq list"), "{rest}");
    if !welcome {
        let (status, stderr) = wait_exit(&mut dev).await;
        panic!("fleet dev exited ({status}) without its welcome text:\n{stderr}");
    }
    let body = crate::helpers::fixture("enrollment.created");
    let body = body.as_str();
    let response = fleet::http_client::builder()
        .build()
        .expect("an HTTP client")
        .post(format!("http://127.0.0.1:{port}/webhooks/thinkific"))
        .header("x-thinkific-hmac-sha256", fleet::intake::sign(b"fleet-dev-secret", body.as_bytes()))
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    // One readiness for the intake, the worker and the read API it runs.
    let ready = crate::helpers::get(format!("http://127.0.0.1:{port}/readyz")).await.expect("GET /readyz");
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.expect("JSON");
    assert_eq!(ready["dependencies"]["postgres"]["state"], "up", "{ready}");
    assert_eq!(ready["dependencies"]["redis"]["state"], "up", "{ready}");
    signal(&dev, "TERM");
    let (status, stderr) = wait_exit(&mut dev).await;
    assert!(status.success(), "{stderr}");
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::remove_dir_all(&postgres_dir);
}
