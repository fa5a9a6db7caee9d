//! No secret reaches any output of the real binary: secrets are planted in
//! every URL and secret setting, `fleet` is run the ways that print
//! (`--help`, refused values, unreachable or refusing servers, a failing
//! revalidation hook, `fleet dev`), and all of stdout and stderr is searched.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use clap::CommandFactory;
use tokio::io::AsyncReadExt;

use crate::helpers::{context, fixture, fleet, scratch_dir, signal, TestContext};

/// Every planted secret holds this, and nothing else printed does.
const PLANTED: &str = "PLANTED";
const URL_PASSWORD: &str = "PLANTEDpw1";
const QUERY_PASSWORD: &str = "PLANTEDqs2";
const REVALIDATE_QUERY: &str = "PLANTEDrv3";

/// The secret settings, each set on every run.
const SECRET_SETTINGS: [(&str, &str); 5] = [
    ("REVALIDATE_SECRET", "PLANTEDrs4-revalidate-secret-0123456789abcdef"),
    ("FLEET_API_TOKEN", "PLANTEDat5-api-token-0123456789abcdef0123456789"),
    ("FLEET_CONSOLE_TOKEN", "PLANTEDct8-console-token-0123456789abcdef"),
    ("THINKIFIC_WEBHOOK_SECRET", "PLANTEDws6-webhook-key-0123456789abcdef,PLANTEDws7-next-key-0123456789abcdef"),
    ("REVALIDATE_URL", "https://dashboard.invalid/api/revalidate?secret=PLANTEDrv3"),
];

/// What one run printed.
struct Printed {
    what: String,
    stdout: String,
    stderr: String,
}

impl Printed {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A free port nothing listens on.
fn closed_port() -> u16 {
    fleet::local_services::free_port().expect("port")
}

/// `fleet args…` for this test, with every secret setting planted.
fn planted(ctx: &TestContext, args: &[&str]) -> tokio::process::Command {
    let mut command = fleet(ctx, args);
    command.envs(SECRET_SETTINGS);
    command
}

/// Runs `command` until it exits or `limit` passes (then kills it), and
/// keeps everything it printed.
async fn run(what: impl Into<String>, mut command: tokio::process::Command, limit: Duration) -> Printed {
    let mut child = command.spawn().expect("spawn fleet");
    let output = collect(&mut child);
    if tokio::time::timeout(limit, child.wait()).await.is_err() {
        child.kill().await.expect("kill");
    }
    let (stdout, stderr) = output.await;
    Printed { what: what.into(), stdout, stderr }
}

/// Reads the child's stdout and stderr to their end, in the background.
fn collect(child: &mut tokio::process::Child) -> impl std::future::Future<Output = (String, String)> {
    let read = |pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
        tokio::spawn(async move {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text).await;
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = read(child.stdout.take().map(|pipe| Box::new(pipe) as _));
    let stderr = read(child.stderr.take().map(|pipe| Box::new(pipe) as _));
    async move { (stdout.await.unwrap_or_default(), stderr.await.unwrap_or_default()) }
}

fn assert_nothing_planted(runs: &[Printed], also: &[String]) {
    for run in runs {
        let printed = run.all();
        for secret in std::iter::once(PLANTED).chain(also.iter().map(String::as_str)) {
            assert!(!printed.contains(secret), "{}: a planted secret was printed:\n{printed}", run.what);
        }
    }
}

/// `fleet --help`, and `--help` of every subcommand at every depth.
fn help_invocations() -> Vec<Vec<String>> {
    fn walk(command: &clap::Command, path: &[String], found: &mut Vec<Vec<String>>) {
        found.push([path, &["--help".to_owned()]].concat());
        for sub in command.get_subcommands() {
            walk(sub, &[path, &[sub.get_name().to_owned()]].concat(), found);
        }
    }
    let mut found = Vec::new();
    walk(&fleet::cli::Cli::command(), &[], &mut found);
    found
}

#[tokio::test]
async fn no_planted_secret_reaches_help_errors_or_logs() {
    let ctx = context().await;
    let mut runs = Vec::new();

    // --help of every command, with the URLs in the environment planted.
    let database_with_password = format!("postgres://fleet:{URL_PASSWORD}@db.invalid:5432/fleet");
    let redis_with_password = format!("redis://:{URL_PASSWORD}@cache.invalid:6379/0");
    for args in help_invocations() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut command = planted(&ctx, &args);
        command.env("DATABASE_URL", &database_with_password).env("REDIS_URL", &redis_with_password);
        let printed = run(format!("fleet {}", args.join(" ")), command, Duration::from_secs(10)).await;
        assert!(printed.stdout.contains("Usage:"), "{}: {}", printed.what, printed.all());
        runs.push(printed);
    }

    // Refused values, each holding a planted password, from the environment and as flags.
    let refused: Vec<(&str, String)> = vec![
        ("DATABASE_URL", format!("postgres://fleet:{URL_PASSWORD}@db:notaport/fleet")),
        ("DATABASE_URL", format!("mysql://fleet:{URL_PASSWORD}@db/fleet")),
        ("DATABASE_URL", format!("fleet:{URL_PASSWORD}@db")),
        ("DATABASE_URL", format!("postgres://fleet@db/fleet?password={QUERY_PASSWORD}&sslmode={QUERY_PASSWORD}")),
        ("REDIS_URL", format!("redis://:{URL_PASSWORD}@cache:notaport/0")),
        ("REDIS_URL", format!("http://:{URL_PASSWORD}@cache/0")),
        ("REDIS_URL", format!("not a url {URL_PASSWORD}")),
        ("REVALIDATE_URL", format!("ftp://dashboard/api?secret={REVALIDATE_QUERY}")),
        ("REVALIDATE_URL", format!("dashboard/api?secret={REVALIDATE_QUERY}")),
    ];
    for (setting, value) in &refused {
        let mut from_env = planted(&ctx, &["worker"]);
        from_env.env(setting, value);
        let flag = format!("--{}", setting.to_lowercase().replace('_', "-"));
        let from_flag = planted(&ctx, &["worker", &flag, value]);
        for (how, command) in [("env", from_env), ("flag", from_flag)] {
            let printed = run(format!("worker with a bad {setting} ({how})"), command, Duration::from_secs(10)).await;
            assert!(
                printed.stderr.contains(setting),
                "{}: the refusal must name {setting}:\n{}",
                printed.what,
                printed.stderr
            );
            runs.push(printed);
        }
    }

    // Servers that are down, or that refuse the planted password.
    let database_down =
        format!("postgres://fleet:{URL_PASSWORD}@127.0.0.1:{}/fleet?password={QUERY_PASSWORD}", closed_port());
    let redis_down = format!("redis://:{URL_PASSWORD}@127.0.0.1:{}/0", closed_port());
    let mut wrong_database = url::Url::parse(&ctx.database_url).expect("URL");
    wrong_database.set_password(Some(URL_PASSWORD)).expect("password");
    let mut wrong_redis = url::Url::parse(&ctx.redis_url).expect("URL");
    wrong_redis.set_password(Some(URL_PASSWORD)).expect("password");
    let unreachable: Vec<(&str, &str, String)> = vec![
        ("worker", "DATABASE_URL", database_down.clone()),
        ("worker", "REDIS_URL", redis_down.clone()),
        ("worker", "DATABASE_URL", wrong_database.to_string()),
        ("worker", "REDIS_URL", wrong_redis.to_string()),
        ("intake", "REDIS_URL", redis_down.clone()),
        ("intake", "REDIS_URL", wrong_redis.to_string()),
        ("api", "DATABASE_URL", database_down.clone()),
        ("migrate", "DATABASE_URL", database_down),
        ("status", "REDIS_URL", redis_down),
    ];
    let mut waiting = tokio::task::JoinSet::new();
    for (subcommand, setting, value) in unreachable {
        let mut command = planted(&ctx, &[subcommand]);
        command.env(setting, value).env("FLEET_LISTEN", "127.0.0.1:0").env("FLEET_API_LISTEN", "127.0.0.1:0");
        let what = format!("{subcommand} with {setting} down or refusing");
        waiting.spawn(run(what, command, Duration::from_secs(8)));
    }
    while let Some(printed) = waiting.join_next().await {
        let printed = printed.expect("run");
        assert!(!printed.stderr.is_empty(), "{}: nothing was logged", printed.what);
        runs.push(printed);
    }

    runs.push(worker_with_a_failing_hook(&ctx).await);
    assert_nothing_planted(&runs, &[]);
}

/// A worker whose REVALIDATE_URL (a secret in its query) points at a closed
/// port: an event's batch triggers the hook, which fails and is logged.
async fn worker_with_a_failing_hook(ctx: &TestContext) -> Printed {
    let mut command = planted(ctx, &["worker"]);
    let hook = format!("http://127.0.0.1:{}/api/revalidate?secret={REVALIDATE_QUERY}&token=x", closed_port());
    command.env("REVALIDATE_URL", &hook).env("FLEET_CONSUMER_NAME", "hooked").env("FLEET_BLOCK_MS", "100");
    ctx.enqueue(&fixture("enrollment.created")).await;
    let mut worker = command.spawn().expect("spawn worker");
    let output = collect(&mut worker);
    let metrics = ctx.keys.clone().cache_metrics();
    crate::helpers::eventually("the hook's failure is counted", Duration::from_secs(30), || {
        let mut redis = ctx.redis.clone();
        let metrics = metrics.clone();
        async move {
            let failures: Option<u64> =
                redis::AsyncCommands::hget(&mut redis, &metrics, "revalidate_failures").await.unwrap_or(None);
            failures.unwrap_or(0) > 0
        }
    })
    .await;
    signal(&worker, "TERM");
    let _ = tokio::time::timeout(Duration::from_secs(20), worker.wait()).await;
    let (stdout, stderr) = output.await;
    let printed = Printed { what: "worker with a failing revalidation hook".into(), stdout, stderr };
    assert!(printed.stderr.contains("revalidation hook failed"), "the failure was not logged:\n{}", printed.stderr);
    assert!(printed.stderr.contains("secret=REDACTED"), "the hook is named, redacted:\n{}", printed.stderr);
    printed
}

#[tokio::test]
async fn fleet_dev_prints_its_urls_redacted_and_keeps_them_in_a_private_file() {
    let ctx = context().await;
    let dir = scratch_dir("dev");
    let mut command = planted(&ctx, &["dev"]);
    command
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env("FLEET_DEV_DIR", &dir)
        .env("FLEET_LISTEN", "127.0.0.1:0")
        .env("FLEET_CONSUMER_NAME", "dev");
    let mut dev = command.spawn().expect("spawn fleet dev");
    let output = collect(&mut dev);
    let env_file = dir.join("env");
    crate::helpers::eventually("fleet dev writes its env file", Duration::from_secs(90), || {
        let ready = env_file.exists() && dir.join("enrollment.created.json").exists();
        async move { ready }
    })
    .await;
    // The welcome text follows the example body; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&dev, "TERM");
    let status =
        tokio::time::timeout(Duration::from_secs(30), dev.wait()).await.expect("fleet dev stops").expect("wait");
    let (stdout, stderr) = output.await;
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("fleet dev is running") && stdout.contains(&env_file.display().to_string()), "{stdout}");
    assert!(stdout.contains(":REDACTED@"), "the URLs are shown redacted:\n{stdout}");

    let env = std::fs::read_to_string(&env_file).expect("env file");
    let passwords = url_passwords(&env);
    assert_eq!(passwords.len(), 2, "both URLs carry a password:\n{env}");
    for private in [&env_file, &dir.join("enrollment.created.json")] {
        assert_eq!(mode(private), 0o600, "{}", private.display());
    }
    let printed = Printed { what: "fleet dev".into(), stdout, stderr };
    assert_nothing_planted(&[printed], &passwords);
    std::fs::remove_dir_all(&dir).expect("remove the dev directory");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// The passwords of the URLs in `export NAME='url'` lines.
fn url_passwords(env: &str) -> Vec<String> {
    env.lines()
        .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
        .filter_map(|(_, value)| url::Url::parse(value.trim_matches('\'')).ok())
        .filter_map(|url| url.password().map(str::to_owned))
        .collect()
}
