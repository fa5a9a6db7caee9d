//! The deployment files in `deploy/`, checked by the tools that read them:
//! `systemd-analyze verify` on the systemd units (pointed at the binary this
//! build made) and `node` on the pm2 process file. A missing tool fails the
//! test with what to install; it never skips.

use crate::helpers::tools::{NODE, SYSTEMD_ANALYZE};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::helpers::scratch_dir;

/// The path the units name in `ExecStart=`; tests swap in the built binary.
const INSTALLED_BINARY: &str = "/usr/local/bin/fleet";
const UNITS: [&str; 4] =
    ["fleet-intake.service", "fleet-api.service", "fleet-migrate.service", "fleet-worker@.service"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Runs a tool the test cannot do without (its program already resolved
/// by [`Tool::path`], which fails the test naming the package when missing).
fn run_tool(command: &mut Command) -> Output {
    let program = command.get_program().to_string_lossy().into_owned();
    command.output().unwrap_or_else(|err| panic!("cannot run `{program}`: {err}"))
}

/// A copy of the units in a directory of their own, running the built
/// binary; removed on drop.
struct UnitCopy {
    dir: PathBuf,
}

impl UnitCopy {
    fn new() -> Self {
        let dir = scratch_dir("units");
        std::fs::create_dir_all(&dir).expect("create the units' directory");
        for unit in UNITS {
            let text = std::fs::read_to_string(deploy_dir().join("systemd").join(unit)).expect("read a unit");
            assert!(text.contains(&format!("ExecStart={INSTALLED_BINARY} ")), "{unit} runs {INSTALLED_BINARY}");
            let text = text.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_fleet"));
            std::fs::write(dir.join(unit), text).expect("write a unit");
        }
        Self { dir }
    }

    fn edit(&self, unit: &str, from: &str, to: &str) {
        let path = self.dir.join(unit);
        let text = std::fs::read_to_string(&path).expect("read a unit");
        assert!(text.contains(from), "{unit} contains {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).expect("write a unit");
    }

    /// `systemd-analyze verify` on every unit, the worker as an instance of
    /// its template. `Err` holds why the units are not clean: a failed
    /// verification, or any complaint about one of them.
    fn verify(&self) -> Result<(), String> {
        let units =
            ["fleet-intake.service", "fleet-api.service", "fleet-migrate.service", "fleet-worker@worker-1.service"];
        let output = run_tool(
            Command::new(SYSTEMD_ANALYZE.path())
                .arg("verify")
                .arg("--man=no")
                .args(units.iter().map(|unit| self.dir.join(unit)))
                .env("SYSTEMD_LOG_COLOR", "0"),
        );
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        let complaints: Vec<&str> = text
            .lines()
            .filter(|line| line.contains(&*self.dir.to_string_lossy()) || line.contains("fleet-"))
            .collect();
        if !output.status.success() || !complaints.is_empty() {
            return Err(format!("systemd-analyze verify: {}\n{text}", output.status));
        }
        Ok(())
    }
}

impl Drop for UnitCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let units = UnitCopy::new();
    if let Err(complaint) = units.verify() {
        panic!("the units in deploy/systemd are not clean:\n{complaint}");
    }
}

#[test]
fn systemd_analyze_verify_catches_a_broken_unit() {
    // Proof that the check above can fail: a bad value only draws a warning
    // (exit status 0), a missing binary an error.
    let typo = UnitCopy::new();
    typo.edit("fleet-worker@.service", "Type=notify", "Type=notifyy");
    let complaint = typo.verify().expect_err("a misspelt service type is reported");
    assert!(complaint.contains("notifyy"), "{complaint}");

    let misplaced = UnitCopy::new();
    misplaced.edit("fleet-intake.service", "StartLimitIntervalSec=0\n", "");
    misplaced.edit("fleet-intake.service", "[Service]\n", "[Service]\nStartLimitIntervalSec=0\n");
    let complaint = misplaced.verify().expect_err("a key in the wrong section is reported");
    assert!(complaint.contains("StartLimitIntervalSec"), "{complaint}");

    let missing = UnitCopy::new();
    missing.edit("fleet-api.service", "ExecStart=/", "ExecStart=/nonexistent/");
    let complaint = missing.verify().expect_err("a missing binary is reported");
    assert!(complaint.contains("nonexistent"), "{complaint}");
}

/// A unit's settings, `key -> values` per section; values of repeated keys
/// in order.
fn settings(unit: &str) -> HashMap<String, Vec<String>> {
    let text = std::fs::read_to_string(deploy_dir().join("systemd").join(unit)).expect("read a unit");
    let mut section = String::new();
    let mut settings: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
        if let Some(name) = line.strip_prefix('[').and_then(|line| line.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, value)) = line.split_once('=') {
            settings.entry(format!("{section}.{key}")).or_default().push(value.to_owned());
        }
    }
    settings
}

fn one<'a>(settings: &'a HashMap<String, Vec<String>>, key: &str) -> &'a str {
    match settings.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("expected one {key}, found {other:?}"),
    }
}

#[test]
fn long_running_units_notify_drain_and_run_hardened() {
    for unit in ["fleet-intake.service", "fleet-api.service", "fleet-worker@.service"] {
        let settings = settings(unit);
        for (key, expected) in [
            ("Service.Type", "notify"),
            ("Service.NotifyAccess", "main"),
            ("Service.Restart", "on-failure"),
            ("Service.KillSignal", "SIGTERM"),
            // The worker's drain: FLEET_BLOCK_MS (2 s) for the read in
            // flight, then one batch.
            ("Service.TimeoutStopSec", "30s"),
            ("Service.User", "fleet"),
            ("Service.NoNewPrivileges", "yes"),
            ("Service.ProtectSystem", "strict"),
            ("Service.ProtectHome", "yes"),
            ("Service.PrivateTmp", "yes"),
        ] {
            assert_eq!(one(&settings, key), expected, "{unit}: {key}");
        }
        let files = &settings["Service.EnvironmentFile"];
        assert_eq!(files[0], "/etc/fleet/fleet.env", "{unit}: the shared env file comes first");
        let families = one(&settings, "Service.RestrictAddressFamilies");
        assert!(families.split(' ').any(|family| family == "AF_UNIX"), "{unit}: the notify socket is AF_UNIX");
    }

    let worker = settings("fleet-worker@.service");
    assert_eq!(one(&worker, "Service.ExecStart"), "/usr/local/bin/fleet worker --consumer-name=%i");
    assert_eq!(one(&worker, "Service.WatchdogSec"), "60s");
    assert_eq!(worker["Service.EnvironmentFile"], ["/etc/fleet/fleet.env", "-/etc/fleet/worker-%i.env"]);

    let migrate = settings("fleet-migrate.service");
    assert_eq!(one(&migrate, "Service.Type"), "oneshot");
    assert_eq!(one(&migrate, "Service.ExecStart"), "/usr/local/bin/fleet migrate");
    for unit in ["fleet-api.service", "fleet-worker@.service"] {
        let settings = settings(unit);
        for key in ["Unit.Wants", "Unit.After"] {
            assert!(one(&settings, key).split(' ').any(|name| name == "fleet-migrate.service"), "{unit}: {key}");
        }
    }
    // The intake needs no schema, so it keeps taking webhooks while a
    // migration runs.
    let intake = settings("fleet-intake.service");
    assert!(!one(&intake, "Unit.After").contains("fleet-migrate"));
}

/// The pm2 apps as node loads them, with `FLEET_WORKERS` set or not.
fn pm2_apps(workers: Option<&str>) -> Result<Vec<Value>, String> {
    let mut node = Command::new(NODE.path());
    node.arg("-e")
        .arg("process.stdout.write(JSON.stringify(require(process.argv[1]).apps))")
        .arg(deploy_dir().join("pm2").join("ecosystem.config.js"))
        .env_remove("FLEET_BIN")
        .env_remove("FLEET_HEALTH_PORT")
        .env_remove("FLEET_WORKERS");
    if let Some(workers) = workers {
        node.env("FLEET_WORKERS", workers);
    }
    let output = run_tool(&mut node);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    serde_json::from_slice(&output.stdout).map_err(|err| format!("not JSON: {err}"))
}

fn text<'a>(app: &'a Value, key: &str) -> &'a str {
    app[key].as_str().unwrap_or_else(|| panic!("{key} is a string in {app}"))
}

#[test]
fn pm2_runs_intake_api_and_two_named_workers_with_a_drain_sized_kill_timeout() {
    let apps = pm2_apps(None).expect("node loads the pm2 file");
    let names: Vec<&str> = apps.iter().map(|app| text(app, "name")).collect();
    assert_eq!(names, ["fleet-intake", "fleet-api", "fleet-worker-1", "fleet-worker-2"]);
    let roles: Vec<&Value> = apps.iter().map(|app| &app["args"][0]).collect();
    assert_eq!(roles, ["intake", "api", "worker", "worker"]);
    for app in &apps {
        assert_eq!(text(app, "script"), INSTALLED_BINARY, "{app}");
        assert_eq!(text(app, "interpreter"), "none", "{app}");
        assert_eq!(app["autorestart"], true, "{app}");
        assert!(app["exp_backoff_restart_delay"].as_u64().is_some_and(|delay| delay > 0), "{app}");
        // pm2 sends SIGINT, then SIGKILL after kill_timeout: above the
        // worker's drain (FLEET_BLOCK_MS = 2 s for the read, then a batch).
        assert_eq!(app["kill_timeout"], 30_000, "{app}");
        let env = app["env"].as_object().map(|env| env.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
        assert!(env.iter().all(|key| key.starts_with("FLEET_")), "{app}: only per-app settings, no secrets: {env:?}");
    }
    let workers: Vec<(&str, &str)> = apps[2..]
        .iter()
        .map(|app| (text(&app["env"], "FLEET_CONSUMER_NAME"), text(&app["env"], "FLEET_HEALTH_LISTEN")))
        .collect();
    assert_eq!(workers, [("worker-1", "127.0.0.1:9101"), ("worker-2", "127.0.0.1:9102")]);
}

#[test]
fn pm2_worker_count_comes_from_fleet_workers_and_nonsense_is_refused() {
    let apps = pm2_apps(Some("3")).expect("node loads the pm2 file");
    let consumers: Vec<&str> = apps[2..].iter().map(|app| text(&app["env"], "FLEET_CONSUMER_NAME")).collect();
    assert_eq!(consumers, ["worker-1", "worker-2", "worker-3"]);
    for nonsense in ["0", "two", "-1"] {
        let error = pm2_apps(Some(nonsense)).expect_err("refused");
        assert!(error.contains("FLEET_WORKERS must be a positive integer"), "{error}");
    }
}

/// The build stage's `COPY <source> <destination>` lines, relative to the
/// image's work directory, before the runtime stage's `FROM`.
fn dockerfile_build_copies() -> Vec<(String, String)> {
    let dockerfile =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).expect("the Dockerfile");
    let build_stage = dockerfile.split("\nFROM ").nth(1).expect("a build stage");
    build_stage
        .lines()
        .filter_map(|line| line.strip_prefix("COPY "))
        .flat_map(|copy| {
            let parts: Vec<&str> = copy.split_whitespace().collect();
            let (destination, sources) = parts.split_last().expect("COPY has a destination");
            sources.iter().map(|source| (source.to_string(), destination.to_string())).collect::<Vec<_>>()
        })
        .collect()
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("a directory");
        for entry in std::fs::read_dir(from).expect("a directory listing") {
            let entry = entry.expect("an entry");
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("a directory");
        std::fs::copy(from, to).unwrap_or_else(|err| panic!("{}: {err}", from.display()));
    }
}

/// There is no Docker engine here: the build stage's files are copied as its
/// COPY lines say into a scratch directory, and cargo builds the release
/// binary's crate graph from exactly those (`cargo check`: the same manifests,
/// lockfile, sources, build scripts, embedded files and migrations a build
/// reads, without the code generation). A file the build needs and the
/// Dockerfile leaves out fails here as it would in `docker build`.
#[test]
fn the_docker_build_stage_copies_everything_a_release_build_reads() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("docker-context-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let copies = dockerfile_build_copies();
    assert!(copies.iter().any(|(source, _)| source == "Cargo.lock"), "{copies:?}");
    for (source, destination) in &copies {
        let target = if destination.ends_with('/') || destination == "." || destination == "./" {
            scratch.join(destination).join(PathBuf::from(source).file_name().expect("a name"))
        } else {
            scratch.join(destination)
        };
        copy_tree(&root.join(source), &target);
    }
    // A target directory kept between runs, so only the workspace's crates are checked again.
    let target_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("docker-context-target");
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["check", "--release", "--locked", "--offline", "--bin", "fleet"])
        .current_dir(&scratch)
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .expect("cargo runs");
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        output.status.success(),
        "the Dockerfile's build stage lacks a file the build reads:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_image_has_the_system_roots_that_fleets_tls_clients_trust() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("the Dockerfile");
    let runtime = dockerfile.split("\nFROM ").nth(2).expect("a runtime stage");
    assert!(runtime.contains("ca-certificates"), "the runtime stage installs Debian's roots:\n{runtime}");
    // The clients read the system's roots (rustls-native-certs: /etc/ssl/certs on Debian), not a
    // bundled copy: sqlx's native-roots feature, redis' rustls without webpki-roots.
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    assert!(manifest.contains("tls-rustls-ring-native-roots"), "sqlx trusts the system's roots");
    assert!(!manifest.contains("webpki-roots"), "no bundled roots");
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).expect("Cargo.lock");
    assert!(lock.contains("name = \"rustls-native-certs\""));
    assert!(!lock.contains("name = \"aws-lc-sys\""), "rustls on ring: no C build of aws-lc");
}

/// docker-compose.yml (no Docker engine here to run it): the signing key is
/// required, and handed to the intake only, the one role that verifies
/// webhooks; the command in its header names every variable it requires.
#[test]
fn compose_gives_the_signing_key_to_the_intake_only() {
    let compose =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml")).expect("compose");
    // Each service's block: from its `  name:` line to the next one.
    let services = compose.split("\nservices:\n").nth(1).expect("a services section");
    let mut blocks: Vec<(&str, String)> = Vec::new();
    for line in services.lines() {
        let header = line.strip_prefix("  ").and_then(|rest| rest.strip_suffix(':'));
        match header {
            Some(name) if !name.starts_with(' ') && !name.contains(' ') => blocks.push((name, String::new())),
            _ if line.starts_with("  ") => {
                if let Some((_, block)) = blocks.last_mut() {
                    block.push_str(line);
                    block.push('\n');
                }
            }
            _ => {}
        }
    }
    let holders: Vec<&str> =
        blocks.iter().filter(|(_, block)| block.contains("THINKIFIC_WEBHOOK_SECRET:")).map(|(name, _)| *name).collect();
    assert_eq!(holders, ["intake"], "the services given the signing key");
    let anchor = compose.split("\nservices:\n").next().unwrap_or_default();
    assert!(!anchor.contains("THINKIFIC_WEBHOOK_SECRET:"), "the shared environment holds no signing key");
    // Every `${NAME:?…}` of a line in force (not a comment).
    let required: Vec<&str> = compose
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split("${").nth(1)?.split_once(":?").map(|(name, _)| name))
        .collect();
    assert!(required.contains(&"THINKIFIC_WEBHOOK_SECRET") && required.contains(&"FLEET_API_TOKEN"), "{required:?}");
    let header: String = compose.lines().take_while(|line| line.starts_with('#')).collect::<Vec<_>>().join("\n");
    for variable in &required {
        assert!(header.contains(&format!("{variable}=")), "the header's command lacks {variable}:\n{header}");
    }
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README");
    assert!(
        readme.contains("FLEET_API_TOKEN=… THINKIFIC_WEBHOOK_SECRET=… docker compose up --build"),
        "the README's compose command sets what compose requires"
    );
}
