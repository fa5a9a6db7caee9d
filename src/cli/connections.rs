//! How a command reaches Postgres and Redis: `DATABASE_URL`, `REDIS_URL`
//! and what goes with each (transaction pooling, a cluster, TLS, the key
//! prefix, the stream shards), each declared once and flattened into every
//! command that connects.

use clap::Args;

use super::{boolean, ConfigError};
use crate::redis::shards::ShardCount;
use crate::redis::{KeyPrefix, RedisTarget, RedisTls};
use crate::urls::{DatabaseUrl, RedisUrls};

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Postgres connection URL. TLS as in libpq: sslmode=disable|prefer|require|verify-ca|verify-full
    /// and sslrootcert, sslcert, sslkey in the URL (or PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY).
    /// Required by migrate, worker and api; `fleet dev` starts a throwaway Postgres without it, and
    /// `fleet loadtest` then counts no rows.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "DATABASE_URL")]
    pub database_url: Option<DatabaseUrl>,
    /// DATABASE_URL reaches Postgres through a pooler in transaction mode (PgBouncer
    /// pool_mode=transaction, Supabase's port 6543, Neon's -pooler hosts): no statement stays
    /// prepared between transactions. `fleet migrate` needs a direct or session-mode URL.
    #[arg(long = "pg-transaction-pooling", env = "FLEET_PG_TRANSACTION_POOLING", value_parser = boolean(),
          value_name = "FLEET_PG_TRANSACTION_POOLING")]
    pub transaction_pooling: bool,
}

impl DatabaseArgs {
    /// DATABASE_URL, which this command needs.
    pub fn url(&self) -> Result<&DatabaseUrl, ConfigError> {
        self.database_url.as_ref().ok_or(ConfigError::Missing("DATABASE_URL"))
    }

    /// How the connections reach Postgres.
    pub fn pooling(&self) -> crate::db::Pooling {
        if self.transaction_pooling {
            crate::db::Pooling::Transaction
        } else {
            crate::db::Pooling::Session
        }
    }

    /// The connect options of DATABASE_URL (already checked when parsed).
    pub fn options(&self) -> Result<sqlx::postgres::PgConnectOptions, ConfigError> {
        crate::db::options(self.url()?.as_str(), self.pooling()).map_err(|_| ConfigError::DatabaseUrl)
    }
}

#[derive(Debug, Args)]
pub struct RedisArgs {
    /// Redis connection URL (rediss:// for TLS); several comma-separated URLs name the nodes of a
    /// Redis Cluster. Required by every command but `fleet dev`, which starts a throwaway Redis
    /// without it.
    #[arg(global = true, long, env = "REDIS_URL", hide_env_values = true, value_name = "REDIS_URL")]
    pub redis_url: Option<RedisUrls>,
    /// Redis is a Redis Cluster (implied by several URLs in REDIS_URL).
    #[arg(global = true, long = "redis-cluster", env = "FLEET_REDIS_CLUSTER", value_parser = boolean(), value_name = "FLEET_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    #[command(flatten)]
    pub tls: RedisTlsArgs,
    #[command(flatten)]
    pub key_prefix: KeyPrefixArg,
}

impl RedisArgs {
    /// The Redis to connect to: one server or a cluster, with its TLS
    /// settings; refused when they cannot go together.
    pub fn target(&self) -> Result<RedisTarget, ConfigError> {
        let urls = self.redis_url.as_ref().ok_or(ConfigError::Missing("REDIS_URL"))?;
        self.tls.apply(RedisTarget::from_urls(urls.iter(), self.redis_cluster))
    }
}

/// How a `rediss://` connection trusts the Redis server (see
/// `docs/operations.md#managed-services`).
#[derive(Debug, Clone, Args)]
pub struct RedisTlsArgs {
    /// PEM file of the CA certificate(s) that sign the Redis server's certificate, instead of the
    /// system's roots (a managed service's private CA).
    #[arg(
        global = true,
        long = "redis-tls-ca-file",
        env = "FLEET_REDIS_TLS_CA_FILE",
        value_name = "FLEET_REDIS_TLS_CA_FILE"
    )]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM file of the client certificate for mutual TLS (with FLEET_REDIS_TLS_KEY_FILE).
    #[arg(
        global = true,
        long = "redis-tls-cert-file",
        env = "FLEET_REDIS_TLS_CERT_FILE",
        value_name = "FLEET_REDIS_TLS_CERT_FILE"
    )]
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM file of the client certificate's private key (with FLEET_REDIS_TLS_CERT_FILE).
    #[arg(
        global = true,
        long = "redis-tls-key-file",
        env = "FLEET_REDIS_TLS_KEY_FILE",
        value_name = "FLEET_REDIS_TLS_KEY_FILE"
    )]
    pub key_file: Option<std::path::PathBuf>,
    /// INSECURE: accept any certificate from the Redis server, so anyone on the path can read and
    /// change what Fleet sends. Logged at warn level on every start. For a test set-up only.
    #[arg(global = true, long = "redis-tls-insecure-skip-verify", env = "FLEET_REDIS_TLS_INSECURE_SKIP_VERIFY",
          value_parser = boolean(), value_name = "FLEET_REDIS_TLS_INSECURE_SKIP_VERIFY")]
    pub insecure_skip_verify: bool,
}

impl RedisTlsArgs {
    /// `target` with these settings; refused when they are given for a
    /// `redis://` URL (they would be ignored) or a certificate lacks its key.
    pub fn apply(&self, target: RedisTarget) -> Result<RedisTarget, ConfigError> {
        let tls = RedisTls {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            insecure_skip_verify: self.insecure_skip_verify,
        };
        if tls.is_set() && !target.uses_tls() {
            return Err(ConfigError::RedisTlsWithoutRediss);
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(ConfigError::RedisClientCertificateHalf);
        }
        if tls.insecure_skip_verify {
            tracing::warn!(
                "FLEET_REDIS_TLS_INSECURE_SKIP_VERIFY is on: the Redis server's certificate is not checked, so \
                 anyone on the network path can read and change what Fleet sends. Turn it off and give the \
                 server's CA in FLEET_REDIS_TLS_CA_FILE"
            );
        }
        Ok(target.with_tls(tls))
    }
}

#[derive(Debug, Clone, Copy, Args)]
pub struct StreamShardsArg {
    /// How many streams the events are spread over (1 to 256). Give every intake and worker of a
    /// fleet the same count; a change is safe on a running fleet (docs/scaling.md).
    #[arg(
        long = "stream-shards",
        env = "FLEET_STREAM_SHARDS",
        default_value = "1",
        value_name = "FLEET_STREAM_SHARDS"
    )]
    pub stream_shards: ShardCount,
}

#[derive(Debug, Args)]
pub struct KeyPrefixArg {
    /// Prefix of every Redis key and stream the fleet owns.
    #[arg(
        global = true,
        long = "key-prefix",
        env = "FLEET_KEY_PREFIX",
        default_value = "fleet:",
        value_name = "FLEET_KEY_PREFIX"
    )]
    pub key_prefix: KeyPrefix,
}
