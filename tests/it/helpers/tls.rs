//! A certificate authority made by the test binary, and the throwaway
//! servers that speak TLS with its certificates: a Redis on a TLS port only,
//! a three-master Redis Cluster over TLS, and a PostgreSQL that takes TCP
//! connections over TLS only (`hostssl`). Each is started once per test
//! binary, when the first test asks.

use std::path::{Path, PathBuf};

use fleet::local_services::{write_private_file, LocalPostgres, LocalRedis, LocalRedisCluster, ServerTls};
use fleet::redis::RedisTls;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::sync::OnceCell;

use super::servers::{context_on_tls, scratch_dir, TestContext};

/// A CA whose certificate and key are PEM files in its own directory.
pub struct TestCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    pub cert_file: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Clone)]
pub struct CertifiedFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCa {
    /// A new CA named `name`, its files under `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        fleet::local_services::create_private_dir(dir).expect("the CA's directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("a CA key");
        let cert = params.self_signed(&key).expect("the CA's certificate");
        let cert_file = dir.join("ca.crt");
        write_private_file(&cert_file, cert.pem().as_bytes()).expect("write the CA");
        Self { dir: dir.to_owned(), issuer: Issuer::new(params, key), cert_file }
    }

    /// A certificate for `names` (host names or IP addresses), signed by this CA.
    pub fn issue(&self, file_name: &str, names: &[&str]) -> CertifiedFiles {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, file_name);
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a signed certificate");
        let files = CertifiedFiles {
            cert_file: self.dir.join(format!("{file_name}.crt")),
            key_file: self.dir.join(format!("{file_name}.key")),
        };
        write_private_file(&files.cert_file, cert.pem().as_bytes()).expect("write the certificate");
        write_private_file(&files.key_file, key.serialize_pem().as_bytes()).expect("write the key");
        files
    }

    /// What a server presents, for 127.0.0.1 only: `localhost` is another
    /// name, which the hostname tests connect by.
    pub fn server_tls(&self, file_name: &str) -> ServerTls {
        let server = self.issue(file_name, &["127.0.0.1"]);
        ServerTls {
            cert_file: server.cert_file,
            key_file: server.key_file,
            ca_file: self.cert_file.clone(),
            require_client_certificate: false,
        }
    }
}

/// The TLS servers the managed-service tests share.
pub struct TlsServers {
    pub ca: TestCa,
    /// Another CA, which signed none of the servers' certificates.
    pub other_ca: TestCa,
    pub redis: LocalRedis,
    /// The same, asking every client for a certificate of `ca` (mutual TLS).
    pub redis_mutual: LocalRedis,
    pub postgres: LocalPostgres,
    /// A client certificate of `ca`, for mutual TLS.
    pub client: CertifiedFiles,
}

static TLS_SERVERS: OnceCell<TlsServers> = OnceCell::const_new();

pub async fn tls_servers() -> &'static TlsServers {
    TLS_SERVERS
        .get_or_init(|| async {
            let dir = scratch_dir("tls");
            let ca = TestCa::new(&dir.join("ca"), "Fleet test CA");
            let other_ca = TestCa::new(&dir.join("other-ca"), "Another CA");
            let redis = LocalRedis::start_tls(&dir.join("redis"), true, ca.server_tls("redis"))
                .await
                .expect("start redis-server on a TLS port");
            let mutual = ServerTls { require_client_certificate: true, ..ca.server_tls("redis-mutual") };
            let redis_mutual =
                LocalRedis::start_tls(&dir.join("redis-mutual"), true, mutual).await.expect("start a mutual-TLS Redis");
            let postgres = LocalPostgres::start_tls(&dir.join("postgres"), true, ca.server_tls("postgres"))
                .await
                .expect("start PostgreSQL with ssl=on and hostssl only");
            let client = ca.issue("client", &["fleet-worker"]);
            TlsServers { ca, other_ca, redis, redis_mutual, postgres, client }
        })
        .await
}

impl TlsServers {
    /// The Redis TLS settings that trust the test CA.
    pub fn redis_tls(&self) -> RedisTls {
        RedisTls { ca_file: Some(self.ca.cert_file.clone()), ..RedisTls::default() }
    }

    /// A test's world on the TLS Redis and the TLS Postgres.
    pub async fn context(&self) -> TestContext {
        context_on_tls(&self.redis.url(), self.redis_tls(), &self.postgres.url("postgres")).await
    }
}

/// A three-master Redis Cluster over TLS (clients and cluster bus), signed
/// by the shared [`TestCa`].
struct TlsCluster {
    cluster: LocalRedisCluster,
}

static TLS_CLUSTER: OnceCell<TlsCluster> = OnceCell::const_new();

/// A test's world on the TLS cluster and the TLS Postgres.
pub async fn tls_cluster_context() -> TestContext {
    let servers = tls_servers().await;
    let cluster = TLS_CLUSTER
        .get_or_init(|| async {
            let tls = servers.ca.server_tls("redis-cluster");
            let cluster = LocalRedisCluster::start_with(&scratch_dir("tls-cluster"), 3, true, Some(tls))
                .await
                .expect("start a TLS Redis Cluster");
            TlsCluster { cluster }
        })
        .await;
    context_on_tls(&cluster.cluster.url(), servers.redis_tls(), &servers.postgres.url("postgres")).await
}
