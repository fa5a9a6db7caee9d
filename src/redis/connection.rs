//! One Redis connection type for a single server and a Redis Cluster alike.
//!
//! [`RedisTarget`] is what `REDIS_URL` (and `FLEET_REDIS_CLUSTER`) name: one
//! server, or a cluster reached through one or more of its nodes.
//! [`RedisConnection`] is what every module below `crate::redis` and every
//! role uses: a reconnecting `ConnectionManager` for one server, the `redis`
//! crate's async `ClusterConnection` (which routes each command to the
//! master of its key's slot and follows `MOVED`/`ASK`) for a cluster. Both
//! implement `redis::aio::ConnectionLike`, so commands, pipelines and
//! scripts are sent the same way.
//!
//! What a cluster asks of the callers, and where it is met:
//! - every script and pipeline touches keys of one slot: the key names
//!   share a hash tag (see [`super::keys`]), and callers that span tenants
//!   or shards group their work by [`super::keys::hash_tag`];
//! - commands without a key (`SCAN`) reach one node only: [`RedisConnection::scan_keys`]
//!   walks every master;
//! - a blocking `XREADGROUP` stalls everything queued behind it on a
//!   multiplexed connection: the worker reads on a connection of its own,
//!   on a cluster as on a single server.
//!
//! TLS: a `rediss://` URL connects over rustls, to a single server and to
//! every node of a cluster. The server's certificate is verified against
//! the system's roots, or against [`RedisTls::ca_file`]; a client
//! certificate and key answer servers that ask for one (mutual TLS). The
//! files are read at each connection, so a renewed certificate is picked
//! up on the next reconnect. A plain `redis://` URL that meets a server
//! speaking only TLS is told apart from an outage by a TLS probe.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncCommands, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

use crate::misconfiguration::{SPEAKS_PLAIN, SPEAKS_TLS};

/// How a `rediss://` connection trusts the server and proves who it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// PEM file of the CA certificates that sign the server's certificate,
    /// instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM files of a client certificate (chain) and its private key, for
    /// servers that ask for one; both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any certificate from the server: no protection against a
    /// machine in the middle. Only through the setting whose name says so.
    pub insecure_skip_verify: bool,
}

impl RedisTls {
    /// Whether any TLS setting is given.
    pub(crate) fn is_set(&self) -> bool {
        *self != Self::default()
    }

    /// The certificates to hand the client, read from their files now;
    /// `None` when the system's roots and no client certificate are wanted.
    fn certificates(&self) -> Result<Option<redis::TlsCertificates>, RedisError> {
        let read = |path: &PathBuf, setting: &str| {
            std::fs::read(path).map_err(|err| {
                RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "a TLS file cannot be read",
                    format!("{setting} names {}: {err}", path.display()),
                ))
            })
        };
        let root_cert = self.ca_file.as_ref().map(|path| read(path, "FLEET_REDIS_TLS_CA_FILE")).transpose()?;
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert, "FLEET_REDIS_TLS_CERT_FILE")?,
                client_key: read(key, "FLEET_REDIS_TLS_KEY_FILE")?,
            }),
            (None, None) => None,
            _ => {
                return Err(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "a client certificate needs its key",
                    "set both FLEET_REDIS_TLS_CERT_FILE and FLEET_REDIS_TLS_KEY_FILE, or neither".to_owned(),
                )))
            }
        };
        if root_cert.is_none() && client_tls.is_none() {
            return Ok(None);
        }
        Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
    }
}

/// The Redis the fleet uses: one server, or a Redis Cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// One URL for a single server; for a cluster, the nodes to discover it from.
    urls: Vec<String>,
    cluster: bool,
    tls: RedisTls,
}
impl RedisTarget {
    /// The Redis `urls` name: several URLs are the nodes of a cluster; one
    /// URL is a single server unless `cluster` is set
    /// (`FLEET_REDIS_CLUSTER=1`). Each URL is checked by the caller.
    pub(crate) fn from_urls<Url: AsRef<str>>(urls: impl IntoIterator<Item = Url>, cluster: bool) -> Self {
        let urls: Vec<String> =
            urls.into_iter().map(|url| url.as_ref().trim().to_owned()).filter(|url| !url.is_empty()).collect();
        let cluster = cluster || urls.len() > 1;
        Self { urls, cluster, tls: RedisTls::default() }
    }

    /// The same Redis, reached with `tls`'s certificates (`rediss://` URLs).
    pub fn with_tls(mut self, tls: RedisTls) -> Self {
        self.tls = tls;
        self
    }

    /// How `rediss://` connections trust the server.
    pub fn tls(&self) -> &RedisTls {
        &self.tls
    }

    /// Whether the URLs ask for TLS (`rediss://`).
    pub(crate) fn uses_tls(&self) -> bool {
        self.urls.iter().any(|url| url.starts_with("rediss://"))
    }

    /// The URLs to connect with: `#insecure` appended when verification is
    /// off, which is how the client takes it.
    fn connect_urls(&self) -> Vec<String> {
        self.urls
            .iter()
            .map(|url| {
                if self.tls.insecure_skip_verify && url.starts_with("rediss://") && !url.contains('#') {
                    format!("{url}#insecure")
                } else {
                    url.clone()
                }
            })
            .collect()
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The URLs, as given.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The URLs as `REDIS_URL` spells them (comma-separated), for a child
    /// process; with a password in them, so never to be logged.
    #[cfg(test)]
    pub(crate) fn to_env_value(&self) -> String {
        self.urls.join(",")
    }

    /// Host and port of each node, never a password: for logs.
    pub(crate) fn shown_address(&self) -> String {
        let shown: Vec<String> = self.urls.iter().map(|url| crate::urls::shown_address(url)).collect();
        if self.cluster {
            format!("cluster {}", shown.join(","))
        } else {
            shown.join(",")
        }
    }
}

impl From<&str> for RedisTarget {
    /// `REDIS_URL`'s spelling: comma-separated URLs, as
    /// [`RedisTarget::from_urls`] without `FLEET_REDIS_CLUSTER`.
    fn from(text: &str) -> Self {
        Self::from_urls(text.split(','), false)
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown_address())
    }
}

/// A connection to a single Redis server or to a Redis Cluster; cheap to
/// clone (clones share the underlying connections).
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConnection {
    /// Opens a connection to `target`. Commands fail after
    /// `response_timeout` instead of hanging; a broken connection (or a
    /// cluster node that went away) is re-established on a later command.
    pub async fn open(target: &RedisTarget, response_timeout: Duration) -> Result<Self, RedisError> {
        let opened = Self::open_once(target, response_timeout).await;
        match opened {
            Err(err) if err.is_io_error() || err.is_connection_dropped() || err.is_timeout() => {
                Err(protocol_mismatch(target).await.unwrap_or(err))
            }
            opened => opened,
        }
    }

    async fn open_once(target: &RedisTarget, response_timeout: Duration) -> Result<Self, RedisError> {
        let urls = target.connect_urls();
        let certificates = if target.uses_tls() { target.tls.certificates()? } else { None };
        if target.is_cluster() {
            let mut builder = ClusterClientBuilder::new(urls.iter().map(String::as_str))
                .connection_timeout(Duration::from_secs(2))
                .response_timeout(response_timeout)
                .retries(3)
                .max_retry_wait(1000);
            if let Some(certificates) = certificates {
                builder = builder.certs(certificates);
            }
            if target.uses_tls() && target.tls.insecure_skip_verify {
                builder = builder.tls(redis::TlsMode::Insecure);
            }
            let client = builder.build()?;
            return Ok(Self::Cluster(client.get_async_connection().await?));
        }
        let url = urls.first().map(String::as_str).unwrap_or_default();
        let client = match certificates {
            Some(certificates) => redis::Client::build_with_tls(url, certificates)?,
            None => redis::Client::open(url)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        Ok(Self::Single(ConnectionManager::new_with_config(client, config).await?))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The positions of `keys` in groups that a script or pipeline may
    /// touch together: all of them on a single server; on a cluster, one
    /// group per hash tag (see [`super::keys::hash_tag`]), in the order
    /// first seen.
    pub(crate) fn same_slot_groups<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Vec<Vec<usize>> {
        let keys = keys.into_iter();
        if !self.is_cluster() {
            let all: Vec<usize> = keys.enumerate().map(|(position, _)| position).collect();
            return if all.is_empty() { Vec::new() } else { vec![all] };
        }
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (position, key) in keys.enumerate() {
            let tag = super::keys::hash_tag(key);
            match groups.iter_mut().find(|(seen, _)| *seen == tag) {
                Some((_, members)) => members.push(position),
                None => groups.push((tag, vec![position])),
            }
        }
        groups.into_iter().map(|(_, members)| members).collect()
    }

    /// Every key matching `pattern`, found with `SCAN` (never `KEYS`) on
    /// the server, or on every master of a cluster.
    pub async fn scan_keys(&mut self, pattern: &str) -> Result<Vec<String>, RedisError> {
        match self {
            Self::Single(conn) => {
                let mut found = Vec::new();
                let mut iter = conn.scan_match::<_, String>(pattern).await?;
                while let Some(key) = iter.next_item().await {
                    found.push(key?);
                }
                Ok(found)
            }
            Self::Cluster(conn) => {
                let mut found = Vec::new();
                for (host, port) in cluster_masters(conn).await? {
                    let mut cursor = 0u64;
                    loop {
                        let mut scan = redis::cmd("SCAN");
                        scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
                        let routing =
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port });
                        let reply = conn.route_command(scan, routing).await?;
                        let (next, keys): (u64, Vec<String>) = redis::from_redis_value(reply)?;
                        found.extend(keys);
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
                Ok(found)
            }
        }
    }

    /// Unlinks `keys` (any slots); returns how many existed. One `UNLINK`
    /// per 500 keys on a single server; on a cluster, one per key, since a
    /// command may not span slots.
    pub async fn delete_keys(&mut self, keys: &[String]) -> Result<u64, RedisError> {
        let mut deleted = 0;
        match self {
            Self::Single(conn) => {
                for chunk in keys.chunks(500) {
                    deleted += conn.unlink::<_, u64>(chunk).await?;
                }
            }
            Self::Cluster(conn) => {
                for key in keys {
                    deleted += conn.unlink::<_, u64>(key).await?;
                }
            }
        }
        Ok(deleted)
    }
}

/// A connection to `target` failed without an answer: the error that says
/// so when its first server speaks TLS to a `redis://` URL, or plain Redis
/// to a `rediss://` one (which never answers a TLS ClientHello: it waits
/// for the end of a command line).
async fn protocol_mismatch(target: &RedisTarget) -> Option<RedisError> {
    let url = url::Url::parse(target.urls().first()?).ok()?;
    let host = url.host_str()?.to_owned();
    let port = url.port().unwrap_or(6379);
    let within = Duration::from_secs(1);
    let (mismatch, advice, what) = if target.uses_tls() {
        let plain = tokio::time::timeout(within, speaks_plain_redis(&host, port)).await;
        (plain, "the URL is rediss:// (TLS)", SPEAKS_PLAIN)
    } else {
        let tls = tokio::time::timeout(within, speaks_tls(&host, port)).await;
        (tls, "the URL is redis:// (no TLS)", SPEAKS_TLS)
    };
    mismatch
        .unwrap_or(false)
        .then(|| RedisError::from((ErrorKind::InvalidClientConfig, advice, format!("{what} at {host}:{port}"))))
}

/// Whether the server at `host:port` answers an inline `PING` as Redis
/// does without TLS (`+PONG`, or an error such as `-NOAUTH`).
async fn speaks_plain_redis(host: &str, port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect((host, port)).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut first = [0u8; 1];
    matches!(stream.read(&mut first).await, Ok(1) if matches!(first[0], b'+' | b'-'))
}

/// Whether the server at `host:port` answers a TLS ClientHello with a
/// certificate. The probe trusts no CA, so it ends at the certificate: what
/// matters is that the server sent one.
async fn speaks_tls(host: &str, port: u16) -> bool {
    let Ok(stream) = tokio::net::TcpStream::connect((host, port)).await else {
        return false;
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(builder) = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
    else {
        return false;
    };
    let config = builder.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .unwrap_or_else(|_| rustls::pki_types::ServerName::try_from("localhost").expect("a valid name"));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match connector.connect(name, stream).await {
        Ok(_) => true,
        Err(err) => err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|tls| matches!(tls, rustls::Error::InvalidCertificate(_))),
    }
}

/// (host, port) of every master of the cluster, from `CLUSTER SLOTS`.
async fn cluster_masters(conn: &mut ClusterConnection) -> Result<Vec<(String, u16)>, RedisError> {
    let slots: Vec<Vec<Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let mut masters: Vec<(String, u16)> = Vec::new();
    for range in slots {
        // [start, end, [host, port, id, …], replicas…]
        let Some(Value::Array(master)) = range.get(2) else { continue };
        let host: Option<String> = master.first().and_then(|value| redis::from_redis_value_ref(value).ok());
        let port: Option<u16> = master.get(1).and_then(|value| redis::from_redis_value_ref(value).ok());
        if let (Some(host), Some(port)) = (host, port) {
            if !masters.contains(&(host.clone(), port)) {
                masters.push((host, port));
            }
        }
    }
    Ok(masters)
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls_name_a_cluster() {
        let single = RedisTarget::from("redis://a:6379/");
        assert!(!single.is_cluster());
        let flagged = RedisTarget::from_urls(["redis://a:6379/"], true);
        assert!(flagged.is_cluster());
        let nodes = RedisTarget::from("redis://a:7000/, redis://b:7001/");
        assert!(nodes.is_cluster());
        assert_eq!(nodes.urls(), ["redis://a:7000/", "redis://b:7001/"]);
        assert_eq!(nodes.to_env_value(), "redis://a:7000/,redis://b:7001/");
    }
}
