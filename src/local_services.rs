//! Throwaway `redis-server` and PostgreSQL processes on this machine, for
//! `fleet dev` and for the test suite.
//!
//! Each server runs under a small `sh` guard that holds the read end of a
//! pipe from this process. When this process exits, however it exits (even
//! SIGKILL), the pipe closes, and the guard stops its server and, if asked,
//! deletes its data. So no run leaves servers behind.
//!
//! PostgreSQL refuses to run as root; when this process is root, initdb and
//! the server run as the `postgres` user (or `nobody`). That user must be
//! able to enter every directory above the cluster's: when it cannot (a
//! checkout in a 0700 home directory, as in most containers),
//! [`reachable_postgres_dir`] keeps the cluster under `/var/tmp` instead.
//!
//! Other users of the machine must not reach the data: each server asks for
//! a generated password (Postgres with scram-sha-256 for every connection,
//! socket included; Redis with `requirepass`), its directory is 0700, and
//! its files (data, logs, the password) are 0600. The password is kept in
//! `<dir>/password`, so a kept server restarts with the same URL. It never
//! appears on a command line, where `ps` would show it.
//!
//! [`redis_given_or_started`] and [`postgres_given_or_started`] are the one
//! rule every user follows (`fleet dev`, the test suite, the bench): a URL
//! given by the caller (`REDIS_URL` / `DATABASE_URL`) is used as it is;
//! only a missing one starts a server.

use std::io::{self, Write};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a local server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalServiceError {
    #[error("`{0}` was not found; install it (Debian: apt-get install redis-server postgresql) or set REDIS_URL / DATABASE_URL")]
    NotInstalled(&'static str),
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error("{what} did not become ready within {seconds} s; its log:\n{log}")]
    NotReady { what: &'static str, seconds: u64, log: String },
    #[error("creating the database {database} failed")]
    CreateDatabase {
        database: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The files a throwaway server serves TLS with (PEM): its certificate and
/// key, and the CA that signs the certificates it accepts from clients.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
    /// Refuse clients without a certificate signed by `ca_file` (mutual TLS).
    pub require_client_certificate: bool,
}

/// A Redis URL: `given` when there is one, else that of a [`LocalRedis`]
/// started in `dir` (deleted when it stops if `ephemeral`), returned too:
/// the server runs as long as the caller keeps it.
pub async fn redis_given_or_started(
    given: Option<String>,
    dir: &Path,
    ephemeral: bool,
) -> Result<(String, Option<LocalRedis>), LocalServiceError> {
    if let Some(url) = given {
        return Ok((url, None));
    }
    let redis = LocalRedis::start(dir, ephemeral).await?;
    Ok((redis.url(), Some(redis)))
}

/// A PostgreSQL URL: `given` when there is one, else that of `database`
/// (created if missing) on a [`LocalPostgres`] started in `dir`, or where
/// [`reachable_postgres_dir`] keeps it, returned too: the server runs as
/// long as the caller keeps it.
pub async fn postgres_given_or_started(
    given: Option<String>,
    database: &str,
    dir: &Path,
    ephemeral: bool,
) -> Result<(String, Option<LocalPostgres>), LocalServiceError> {
    if let Some(url) = given {
        return Ok((url, None));
    }
    let postgres = LocalPostgres::start(&reachable_postgres_dir(dir)?, ephemeral).await?;
    postgres.create_database_if_missing(database).await?;
    Ok((postgres.url(database), Some(postgres)))
}

/// A server process under a guard; stopping is closing the guard's pipe.
struct Guarded {
    guard: Child,
    lifeline: Option<ChildStdin>,
}

impl Guarded {
    /// Runs `program args…` under the guard; on release it is sent `signal`
    /// and waited for, and `cleanup` (a directory) is deleted if given.
    fn spawn(
        program: &Path,
        args: &[String],
        signal: &str,
        cleanup: Option<&Path>,
        log: &Path,
        run_as: Option<(u32, u32)>,
    ) -> io::Result<Self> {
        // umask 077: the log and every file the server creates are private.
        let script = r#"
            umask 077
            signal="$1"; cleanup="$2"; log="$3"; shift 3
            "$@" >>"$log" 2>&1 &
            server=$!
            read -r _ || true
            kill -s "$signal" "$server" 2>/dev/null
            wait "$server" 2>/dev/null
            if [ -n "$cleanup" ]; then rm -rf "$cleanup"; fi
        "#;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .arg("fleet-guard")
            .arg(signal)
            .arg(cleanup.map(Path::as_os_str).unwrap_or_default())
            .arg(log)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = run_as {
            // Our working directory may be closed to that user (a checkout
            // in a 0700 home), and PostgreSQL changes back to it at start.
            command.uid(uid).gid(gid).current_dir("/");
        }
        // The guard must not take the terminal's Ctrl-C: this process
        // decides when the server stops.
        command.process_group(0);
        let mut guard = command.spawn()?;
        let lifeline = guard.stdin.take();
        Ok(Self { guard, lifeline })
    }

    /// Stops the server and waits until it has exited.
    fn stop(&mut self) {
        self.lifeline.take();
        let _ = self.guard.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it next).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Creates `dir` readable by its owner only (0700), and makes an existing
/// `dir` so. Missing parents get the usual mode: when we are root, the
/// PostgreSQL user must be able to pass through them to its own directory.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => return Err(err),
        _ => {}
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Writes `contents` to `path`, readable by its owner only (0600), also
/// when the file was there before.
pub fn write_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(contents)
}

/// The password kept in `<dir>/password`, or a new one stored there.
fn stored_or_new_password(dir: &Path) -> io::Result<String> {
    let path = dir.join(PASSWORD_FILE);
    if let Ok(stored) = std::fs::read_to_string(&path) {
        if !stored.trim().is_empty() {
            return Ok(stored.trim().to_owned());
        }
    }
    let password = new_password();
    write_private_file(&path, password.as_bytes())?;
    Ok(password)
}

/// Where a server's password is kept, in its directory.
const PASSWORD_FILE: &str = "password";

/// 122 random bits from the operating system's generator (uuid v4), as hex:
/// safe in a URL and in a config file without quoting.
fn new_password() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn find_program(name: &'static str, extra_dirs: &[PathBuf]) -> Result<PathBuf, LocalServiceError> {
    let path_dirs =
        std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>()).unwrap_or_default();
    path_dirs
        .iter()
        .chain(extra_dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or(LocalServiceError::NotInstalled(name))
}

/// A throwaway Redis that asks for a generated password.
pub struct LocalRedis {
    server: Guarded,
    port: u16,
    dir: PathBuf,
    ephemeral: bool,
    password: String,
    /// A node of a [`LocalRedisCluster`] (cluster mode on, data kept across
    /// a restart: the cluster deletes its directory when it stops): the
    /// port of its cluster bus.
    cluster_bus_port: Option<u16>,
    /// Serving TLS only, on `port`.
    tls: Option<ServerTls>,
}

impl LocalRedis {
    /// Starts Redis on a free port with its files in `dir`; `dir` is deleted
    /// when the server stops if `ephemeral`.
    pub async fn start(dir: &Path, ephemeral: bool) -> Result<Self, LocalServiceError> {
        create_private_dir(dir)?;
        let password = stored_or_new_password(dir)?;
        Self::launch(dir, free_port()?, ephemeral, password, None, None).await
    }

    /// Like [`LocalRedis::start`], serving TLS only (`rediss://`) with `tls`.
    pub async fn start_tls(dir: &Path, ephemeral: bool, tls: ServerTls) -> Result<Self, LocalServiceError> {
        create_private_dir(dir)?;
        let password = stored_or_new_password(dir)?;
        Self::launch(dir, free_port()?, ephemeral, password, None, Some(tls)).await
    }

    /// Starts the server again (e.g. after [`LocalRedis::stop`]) on the
    /// same port with the same password, so clients reconnect with their URL.
    pub async fn restart(&mut self) -> Result<(), LocalServiceError> {
        self.stop();
        create_private_dir(&self.dir)?;
        write_private_file(&self.dir.join(PASSWORD_FILE), self.password.as_bytes())?;
        *self = Self::launch(
            &self.dir,
            self.port,
            self.ephemeral,
            self.password.clone(),
            self.cluster_bus_port,
            self.tls.clone(),
        )
        .await?;
        Ok(())
    }

    async fn launch(
        dir: &Path,
        port: u16,
        ephemeral: bool,
        password: String,
        cluster_bus_port: Option<u16>,
        tls: Option<ServerTls>,
    ) -> Result<Self, LocalServiceError> {
        let program = find_program("redis-server", &[])?;
        let cluster_node = cluster_bus_port.is_some();
        // The password goes in a private config file, not on the command line.
        let config = dir.join("redis.conf");
        let mut settings = format!("requirepass {password}\n");
        if let Some(bus_port) = cluster_bus_port {
            // Nodes authenticate to each other with the same password; each
            // write is on disk before it is answered, so a master restarted
            // mid-run comes back with everything it acknowledged. The bus
            // port is chosen free, not port + 10000 (which may not exist).
            settings.push_str(&format!(
                "masterauth {password}\ncluster-enabled yes\ncluster-config-file nodes.conf\n\
                 cluster-node-timeout 2000\nappendfsync always\ncluster-port {bus_port}\n"
            ));
        }
        if let Some(tls) = &tls {
            // TLS only: the plain port is closed. Cluster nodes speak TLS to
            // each other too, with the same certificate as their client one.
            settings.push_str(&format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                 tls-auth-clients {}\n",
                tls.cert_file.display(),
                tls.key_file.display(),
                tls.ca_file.display(),
                if tls.require_client_certificate { "yes" } else { "no" },
            ));
            if cluster_node {
                settings.push_str("tls-cluster yes\ntls-replication yes\n");
            }
        }
        write_private_file(&config, settings.as_bytes())?;
        let mut args: Vec<String> = vec![config.display().to_string(), "--bind".into(), "127.0.0.1".into()];
        if tls.is_none() {
            args.extend(["--port".into(), port.to_string()]);
        }
        args.extend([
            "--dir".into(),
            dir.display().to_string(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            if ephemeral && !cluster_node { "no" } else { "yes" }.into(),
        ]);
        let log = dir.join("redis.log");
        // A cluster node's directory holds its slots (nodes.conf): kept
        // across a restart, deleted with the whole cluster.
        let cleanup = (ephemeral && !cluster_node).then_some(dir);
        let server = Guarded::spawn(&program, &args, "KILL", cleanup, &log, None)?;
        let redis = Self { server, port, dir: dir.to_owned(), ephemeral, password, cluster_bus_port, tls };
        redis.wait_ready(&log).await?;
        Ok(redis)
    }

    /// A node answering commands, on its own (cluster mode or not).
    async fn node_connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let client = match &self.tls {
            None => redis::Client::open(self.url()).ok()?,
            Some(tls) => {
                let certificates = redis::TlsCertificates {
                    client_tls: Some(redis::ClientTlsConfig {
                        client_cert: std::fs::read(&tls.cert_file).ok()?,
                        client_key: std::fs::read(&tls.key_file).ok()?,
                    }),
                    root_cert: Some(std::fs::read(&tls.ca_file).ok()?),
                };
                redis::Client::build_with_tls(self.url(), certificates).ok()?
            }
        };
        client.get_multiplexed_async_connection().await.ok()
    }

    async fn wait_ready(&self, log: &Path) -> Result<(), LocalServiceError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(mut conn) = self.node_connection().await {
                if redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(LocalServiceError::NotReady { what: "redis-server", seconds: 20, log: tail(log) })
    }

    /// The URL to connect with, password included: show it redacted.
    /// `rediss://` when the server speaks TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://default:{}@127.0.0.1:{}/", self.password, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

/// A throwaway Redis Cluster of `masters` masters (no replicas) on free
/// loopback ports, each node a [`LocalRedis`] in cluster mode with the same
/// generated password, created with `redis-cli --cluster create`.
pub struct LocalRedisCluster {
    nodes: Vec<LocalRedis>,
    dir: PathBuf,
    ephemeral: bool,
    /// Deletes `dir` once this process is gone, however it exits (a cluster
    /// kept in a static is never dropped); only when `ephemeral`.
    _cleanup: Option<Guarded>,
}

impl LocalRedisCluster {
    /// Starts the nodes with their files under `dir`, joins them into one
    /// cluster covering every slot, and waits until each node reports
    /// `cluster_state:ok`. `dir` is deleted when the cluster is dropped if
    /// `ephemeral`.
    pub async fn start(dir: &Path, masters: usize, ephemeral: bool) -> Result<Self, LocalServiceError> {
        Self::start_with(dir, masters, ephemeral, None).await
    }

    /// Like [`LocalRedisCluster::start`], every node serving TLS only with
    /// `tls` (its clients and the other nodes alike).
    pub async fn start_with(
        dir: &Path,
        masters: usize,
        ephemeral: bool,
        tls: Option<ServerTls>,
    ) -> Result<Self, LocalServiceError> {
        create_private_dir(dir)?;
        let password = stored_or_new_password(dir)?;
        let cleanup = if ephemeral {
            let sleep = find_program("sleep", &[PathBuf::from("/bin"), PathBuf::from("/usr/bin")])?;
            let log = dir.join("cleanup.log");
            Some(Guarded::spawn(&sleep, &["infinity".to_owned()], "KILL", Some(dir), &log, None)?)
        } else {
            None
        };
        let mut cluster =
            Self { nodes: Vec::with_capacity(masters), dir: dir.to_owned(), ephemeral, _cleanup: cleanup };
        for index in 0..masters {
            let node_dir = dir.join(format!("node-{index}"));
            create_private_dir(&node_dir)?;
            let (port, bus_port) = (free_port()?, free_port()?);
            let node = LocalRedis::launch(&node_dir, port, ephemeral, password.clone(), Some(bus_port), tls.clone());
            cluster.nodes.push(node.await?);
        }
        let cli = find_program("redis-cli", &[])?;
        let addresses: Vec<String> = cluster.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        let mut command = tokio::process::Command::new(cli);
        if let Some(tls) = &tls {
            command.arg("--tls").arg("--cacert").arg(&tls.ca_file).arg("--cert").arg(&tls.cert_file);
            command.arg("--key").arg(&tls.key_file);
        }
        // REDISCLI_AUTH: the password never shows on a command line.
        let created = command
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .env("REDISCLI_AUTH", &password)
            .stdin(Stdio::null())
            .output()
            .await?;
        if !created.status.success() {
            return Err(LocalServiceError::Failed {
                what: "redis-cli --cluster create".into(),
                detail: String::from_utf8_lossy(&created.stdout).into_owned(),
            });
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Waits until every node answers `cluster_state:ok`.
    pub async fn wait_ready(&self) -> Result<(), LocalServiceError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        'nodes: for node in &self.nodes {
            while Instant::now() < deadline {
                if let Some(mut conn) = node.node_connection().await {
                    let info: Result<String, _> = redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await;
                    if info.is_ok_and(|info| info.contains("cluster_state:ok")) {
                        continue 'nodes;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return Err(LocalServiceError::NotReady {
                what: "redis cluster",
                seconds: 30,
                log: tail(&node.dir.join("redis.log")),
            });
        }
        Ok(())
    }

    /// The URLs of every node (passwords included: show them redacted).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(LocalRedis::url).collect()
    }

    /// `REDIS_URL` for the fleet: every node, comma-separated.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// The nodes, to stop or restart one.
    pub fn nodes_mut(&mut self) -> &mut [LocalRedis] {
        &mut self.nodes
    }
}

impl Drop for LocalRedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        if self.ephemeral {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A throwaway PostgreSQL cluster whose superuser `postgres` has a
/// generated password.
pub struct LocalPostgres {
    server: Guarded,
    port: u16,
    password: String,
    dir: PathBuf,
    ephemeral: bool,
    /// Serving TLS, and only TLS over TCP (pg_hba.conf: hostssl).
    tls: Option<ServerTls>,
}

impl LocalPostgres {
    /// Initialises (if needed) and starts a cluster in `dir` on a free port.
    ///
    /// An `ephemeral` cluster trades durability for speed (no fsync) and is
    /// deleted when it stops; otherwise the data stays for the next start.
    pub async fn start(dir: &Path, ephemeral: bool) -> Result<Self, LocalServiceError> {
        Self::start_with(dir, ephemeral, None).await
    }

    /// Like [`LocalPostgres::start`], accepting TCP connections over TLS
    /// only (`hostssl` in its pg_hba.conf), served with `tls`.
    pub async fn start_tls(dir: &Path, ephemeral: bool, tls: ServerTls) -> Result<Self, LocalServiceError> {
        Self::start_with(dir, ephemeral, Some(tls)).await
    }

    async fn start_with(dir: &Path, ephemeral: bool, tls: Option<ServerTls>) -> Result<Self, LocalServiceError> {
        // Absolute: the server does not run in our working directory.
        let dir = &std::path::absolute(dir)?;
        let bin_dir = postgres_bin_dir()?;
        let run_as = unprivileged_user_if_root()?;
        create_private_dir(dir)?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        }
        let data = dir.join("data");
        let initialised = data.join("PG_VERSION").exists();
        if initialised && !dir.join(PASSWORD_FILE).exists() {
            return Err(LocalServiceError::Failed {
                what: format!("starting the PostgreSQL kept in {}", dir.display()),
                detail: "it was created by an older fleet that trusted every local user; \
                         delete that directory to recreate it with a password"
                    .into(),
            });
        }
        let password = stored_or_new_password(dir)?;
        if !initialised {
            initdb(&bin_dir, dir, &password, ephemeral, run_as)?;
        }
        let tls = tls.map(|tls| Self::install_tls(dir, &tls, run_as)).transpose()?;
        Self::launch(dir, free_port()?, ephemeral, password, tls).await
    }

    /// Copies the server's certificate and key into `dir`, owned by the
    /// user the server runs as (Postgres refuses a key others can read),
    /// and writes a pg_hba.conf that takes TCP connections over TLS only.
    fn install_tls(dir: &Path, tls: &ServerTls, run_as: Option<(u32, u32)>) -> Result<ServerTls, LocalServiceError> {
        let installed = ServerTls {
            cert_file: dir.join("server.crt"),
            key_file: dir.join("server.key"),
            ca_file: dir.join("root.crt"),
            require_client_certificate: tls.require_client_certificate,
        };
        let client_auth = if tls.require_client_certificate { " clientcert=verify-ca" } else { "" };
        let hba = format!(
            "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256{client_auth}\n\
             hostssl all all ::1/128 scram-sha-256{client_auth}\n"
        );
        for (from, to) in [
            (Some(&tls.cert_file), &installed.cert_file),
            (Some(&tls.key_file), &installed.key_file),
            (Some(&tls.ca_file), &installed.ca_file),
            (None, &dir.join("pg_hba.conf")),
        ] {
            let contents = match from {
                Some(from) => std::fs::read(from)?,
                None => hba.clone().into_bytes(),
            };
            write_private_file(to, &contents)?;
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(to, Some(uid), Some(gid))?;
            }
        }
        Ok(installed)
    }

    /// Starts a kept (not ephemeral) cluster again after [`LocalPostgres::stop`],
    /// on the same port, so clients reconnect with their URL.
    pub async fn restart(&mut self) -> Result<(), LocalServiceError> {
        self.stop();
        if self.ephemeral {
            return Err(LocalServiceError::Failed {
                what: "restarting PostgreSQL".into(),
                detail: "an ephemeral cluster is deleted when it stops; start it with ephemeral = false".into(),
            });
        }
        *self = Self::launch(&self.dir, self.port, false, self.password.clone(), self.tls.clone()).await?;
        Ok(())
    }

    async fn launch(
        dir: &Path,
        port: u16,
        ephemeral: bool,
        password: String,
        tls: Option<ServerTls>,
    ) -> Result<Self, LocalServiceError> {
        let bin_dir = postgres_bin_dir()?;
        let run_as = unprivileged_user_if_root()?;
        let data = dir.join("data");
        let mut args: Vec<String> = vec!["-D".into(), data.display().to_string(), "-p".into(), port.to_string()];
        let mut settings = vec![
            "listen_addresses=127.0.0.1".to_owned(),
            format!("unix_socket_directories={}", dir.display()),
            "unix_socket_permissions=0700".to_owned(),
            "max_connections=400".to_owned(),
        ];
        if ephemeral {
            settings.extend(["fsync=off", "synchronous_commit=off", "full_page_writes=off"].map(String::from));
        }
        if let Some(tls) = &tls {
            settings.extend([
                "ssl=on".to_owned(),
                format!("ssl_cert_file={}", tls.cert_file.display()),
                format!("ssl_key_file={}", tls.key_file.display()),
                format!("ssl_ca_file={}", tls.ca_file.display()),
                format!("hba_file={}", dir.join("pg_hba.conf").display()),
            ]);
        }
        for setting in settings {
            args.push("-c".into());
            args.push(setting);
        }
        let log = dir.join("postgres.log");
        // Fast shutdown keeps a kept cluster clean; a throwaway one is just killed.
        let (signal, cleanup) = if ephemeral { ("QUIT", Some(dir)) } else { ("INT", None) };
        let server = Guarded::spawn(&bin_dir.join("postgres"), &args, signal, cleanup, &log, run_as)?;
        let postgres = Self { server, port, password, dir: dir.to_owned(), ephemeral, tls };
        postgres.wait_ready(&log).await?;
        Ok(postgres)
    }

    async fn wait_ready(&self, log: &Path) -> Result<(), LocalServiceError> {
        use sqlx::Connection;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(conn) = sqlx::PgConnection::connect(&self.url("postgres")).await {
                let _ = conn.close().await;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(LocalServiceError::NotReady { what: "postgres", seconds: 60, log: tail(log) })
    }

    /// A URL for `database` as the superuser `postgres`, password included:
    /// show it redacted. Over TLS, with the server's CA and its certificate's
    /// host name checked (`sslmode=verify-full`), when it serves TLS.
    pub fn url(&self, database: &str) -> String {
        let url = format!("postgres://postgres:{}@127.0.0.1:{}/{database}", self.password, self.port);
        match &self.tls {
            Some(tls) => format!("{url}?sslmode=verify-full&sslrootcert={}", tls.ca_file.display()),
            None => url,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates `database` unless the cluster has it already.
    pub(crate) async fn create_database_if_missing(&self, database: &str) -> Result<(), LocalServiceError> {
        use sqlx::Connection;
        let failed = |source| LocalServiceError::CreateDatabase { database: database.to_owned(), source };
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres")).await.map_err(failed)?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut conn)
            .await
            .map_err(failed)?;
        if !exists {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{database}\"")))
                .execute(&mut conn)
                .await
                .map_err(failed)?;
        }
        let _ = conn.close().await;
        Ok(())
    }

    /// Stops the server and waits for it to exit.
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

/// Creates the cluster in `<dir>/data`: every connection, local socket
/// included, must give `password` (scram-sha-256).
fn initdb(
    bin_dir: &Path,
    dir: &Path,
    password: &str,
    ephemeral: bool,
    run_as: Option<(u32, u32)>,
) -> Result<(), LocalServiceError> {
    // initdb reads the password from a file, which the user it runs as must
    // be able to read; the file is removed once initdb is done.
    let pwfile = dir.join("initdb-password");
    write_private_file(&pwfile, password.as_bytes())?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
    }
    let mut initdb = Command::new(bin_dir.join("initdb"));
    initdb
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-U", "postgres", "--auth=scram-sha-256", "-E", "UTF8", "--no-locale"])
        .arg(format!("--pwfile={}", pwfile.display()));
    if ephemeral {
        initdb.arg("--no-sync");
    }
    if let Some((uid, gid)) = run_as {
        initdb.uid(uid).gid(gid).current_dir("/");
    }
    let output = initdb.output();
    std::fs::remove_file(&pwfile)?;
    let output = output?;
    if !output.status.success() {
        return Err(LocalServiceError::Failed {
            what: "initdb".into(),
            detail: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Where PostgreSQL's server binaries are: next to a `postgres` on PATH, or
/// the newest `/usr/lib/postgresql/*/bin`, or other usual install places.
fn postgres_bin_dir() -> Result<PathBuf, LocalServiceError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    for root in ["/usr/lib/postgresql", "/opt/homebrew/opt", "/usr/local/opt"] {
        if let Ok(entries) = std::fs::read_dir(root) {
            let mut versions: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|entry| entry.path().join("bin"))
                .filter(|bin| bin.join("postgres").is_file())
                .collect();
            // Newest first: "16" sorts after "15" and "9.6" is long gone.
            versions.sort_by_key(|bin| {
                let version = bin.parent().and_then(Path::file_name).and_then(|name| name.to_str()).unwrap_or("");
                let digits: String = version.chars().filter(char::is_ascii_digit).collect();
                std::cmp::Reverse(digits.parse::<u64>().unwrap_or(0))
            });
            candidates.extend(versions);
        }
    }
    candidates.push(PathBuf::from("/usr/local/pgsql/bin"));
    let postgres = find_program("postgres", &candidates)?;
    // Resolve a symlink on PATH to the real directory, where initdb also is.
    let real = std::fs::canonicalize(&postgres).unwrap_or(postgres);
    let dir = real.parent().map(Path::to_path_buf).ok_or(LocalServiceError::NotInstalled("postgres"))?;
    if !dir.join("initdb").is_file() {
        return Err(LocalServiceError::NotInstalled("initdb"));
    }
    Ok(dir)
}

/// Where to keep a PostgreSQL cluster wanted in `wanted`: there, unless we
/// are root and the user PostgreSQL then runs as cannot enter a directory
/// above it; then in `fleet-dev-postgres-<digest of wanted>` under
/// `/var/tmp` (or the temp dir), so the next run finds the same cluster.
pub fn reachable_postgres_dir(wanted: &Path) -> Result<PathBuf, LocalServiceError> {
    let Some((uid, gid)) = unprivileged_user_if_root()? else {
        return Ok(wanted.to_owned());
    };
    let parent = wanted.parent().unwrap_or(Path::new("/"));
    if can_enter(parent, uid, gid) {
        return Ok(wanted.to_owned());
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(wanted.as_os_str().as_encoded_bytes());
    let name = format!("fleet-dev-postgres-{}", hex::encode(&digest[..8]));
    for base in [PathBuf::from("/var/tmp"), std::env::temp_dir()] {
        if can_enter(&base, uid, gid) {
            let dir = base.join(name);
            tracing::info!(
                wanted = %wanted.display(), dir = %dir.display(),
                "PostgreSQL runs as an unprivileged user, which cannot enter the directory above {}; \
                 keeping its data in {} instead",
                wanted.display(), dir.display()
            );
            return Ok(dir);
        }
    }
    Err(LocalServiceError::Failed {
        what: "finding a directory for PostgreSQL".into(),
        detail: format!(
            "running as root, PostgreSQL runs as uid {uid}, which cannot enter {}; set FLEET_DEV_DIR to a \
             directory every user may enter (e.g. /var/tmp/fleet-dev), or DATABASE_URL",
            parent.display()
        ),
    })
}

/// Whether `uid`/`gid` may enter `dir` and every directory above it (by the
/// permission bits; supplementary groups are not counted). A missing
/// directory is created enterable, so it counts as enterable.
fn can_enter(dir: &Path, uid: u32, gid: u32) -> bool {
    dir.ancestors().all(|ancestor| match std::fs::metadata(ancestor) {
        Err(_) => true,
        Ok(meta) => {
            let mode = meta.mode();
            if meta.uid() == uid {
                mode & 0o100 != 0
            } else if meta.gid() == gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            }
        }
    })
}

/// PostgreSQL will not run as root: when we are root, the uid and gid of
/// `postgres` (or `nobody`) to run it as.
fn unprivileged_user_if_root() -> Result<Option<(u32, u32)>, LocalServiceError> {
    let running_as_root = std::fs::metadata("/proc/self").map(|meta| meta.uid() == 0).unwrap_or(false);
    if !running_as_root {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    for name in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() > 3 && fields[0] == name {
                if let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse()) {
                    return Ok(Some((uid, gid)));
                }
            }
        }
    }
    Err(LocalServiceError::Failed {
        what: "finding an unprivileged user for PostgreSQL".into(),
        detail: "running as root and neither `postgres` nor `nobody` exists".into(),
    })
}
