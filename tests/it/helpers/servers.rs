//! The servers every test shares (started once per test binary) and each
//! test's own world on them: a [`TestContext`], and what a test reads back
//! from its database and streams.

use std::path::PathBuf;
use std::time::Duration;

use fleet::local_services::{
    postgres_given_or_started, redis_given_or_started, LocalPostgres, LocalRedis, LocalRedisCluster,
};
use fleet::redis::dedup::DedupWindow;
use fleet::redis::shards::ShardCount;
use fleet::redis::stream;
use fleet::redis::RedisConnection;
use fleet::redis::{KeyPrefix, Keys, RedisTarget, RedisTls, GROUP};
use redis::AsyncCommands;
use sqlx::{Connection, PgPool};
use tokio::sync::OnceCell;

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
            let (redis_url, local_redis) =
                redis_given_or_started(std::env::var("REDIS_URL").ok(), &scratch_dir("redis"), true)
                    .await
                    .expect("start redis-server");
            let (admin_url, local_postgres) = postgres_given_or_started(
                std::env::var("DATABASE_URL").ok(),
                "postgres",
                &scratch_dir("postgres"),
                true,
            )
            .await
            .expect("start postgres");
            Services { redis_url, admin_url, _redis: local_redis, _postgres: local_postgres }
        })
        .await
}

/// The three-master Redis Cluster the cluster tests share, started once per
/// test binary when the first of them asks (or the cluster named by
/// `REDIS_CLUSTER_URL`, its nodes' URLs comma-separated).
struct ClusterService {
    url: String,
    _cluster: Option<tokio::sync::Mutex<LocalRedisCluster>>,
}

static CLUSTER: OnceCell<ClusterService> = OnceCell::const_new();

async fn cluster_service() -> &'static ClusterService {
    CLUSTER
        .get_or_init(|| async {
            if let Ok(url) = std::env::var("REDIS_CLUSTER_URL") {
                return ClusterService { url, _cluster: None };
            }
            let cluster =
                LocalRedisCluster::start(&scratch_dir("redis-cluster"), 3, true).await.expect("start a Redis Cluster");
            ClusterService { url: cluster.url(), _cluster: Some(tokio::sync::Mutex::new(cluster)) }
        })
        .await
}

/// Like [`context`], with Redis a three-master Redis Cluster: the roles get
/// every node's URL, comma-separated, as `REDIS_URL`.
pub async fn cluster_context() -> TestContext {
    let cluster = cluster_service().await;
    context_on(&cluster.url).await
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
    /// How the roles trust a `rediss://` Redis (unset for a plain one).
    pub redis_tls: RedisTls,
    pub prefix: KeyPrefix,
    pub keys: Keys,
    pub redis: RedisConnection,
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
    context_on_tls(redis_url, RedisTls::default(), admin_url).await
}

/// Like [`context_on_servers`], reaching Redis with `redis_tls`.
pub async fn context_on_tls(redis_url: &str, redis_tls: RedisTls, admin_url: &str) -> TestContext {
    let services =
        Services { redis_url: redis_url.to_owned(), admin_url: admin_url.to_owned(), _redis: None, _postgres: None };
    let services = &services;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let database = format!("fleet_test_{id}");
    let mut admin = sqlx::PgConnection::connect(&services.admin_url).await.expect("connect to Postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{database}\"")))
        .execute(&mut admin)
        .await
        .expect("create database");
    admin.close().await.ok();
    let database_url = with_database(&services.admin_url, &database);
    let db = fleet::db::connect(&database_url).await.expect("connect to the test database");
    fleet::db::migrate(&db).await.expect("migrate");
    let prefix: KeyPrefix = format!("test:{id}:").parse().expect("valid prefix");
    let keys = Keys::new(&prefix);
    let target = RedisTarget::from(redis_url).with_tls(redis_tls.clone());
    let redis = fleet::redis::connect(&target, Duration::from_secs(5)).await.expect("connect to Redis");
    TestContext {
        db,
        database_url,
        redis_url: redis_url.to_owned(),
        redis_tls,
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
        let target = self.redis_target();
        let pattern = format!("{}*", self.prefix.as_str());
        // Dropped inside the test's runtime: clean up on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
                let connect = fleet::redis::connect(&target, Duration::from_secs(2));
                let Ok(Ok(mut conn)) = tokio::time::timeout(Duration::from_secs(2), connect).await else {
                    return;
                };
                // Every master of a cluster is scanned, and keys of several
                // slots are deleted one by one.
                if let Ok(keys) = conn.scan_keys(&pattern).await {
                    let _ = conn.delete_keys(&keys).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

impl TestContext {
    /// The Redis this test's world is on, as the roles connect to it.
    pub fn redis_target(&self) -> RedisTarget {
        RedisTarget::from(self.redis_url.as_str()).with_tls(self.redis_tls.clone())
    }

    /// The keys of every stream shard of the fleet's count (see
    /// `fleet::redis::shards`): one shard unless a test raised the count.
    pub async fn shards(&self) -> Vec<fleet::redis::keys::ShardKeys> {
        let mut redis = self.redis.clone();
        let count = fleet::redis::shards::fleet_count(&mut redis, &self.keys, ShardCount::ONE).await.expect("count");
        count.shards(&self.keys)
    }

    /// Raises the fleet's shard count to `count`, as an intake or worker
    /// configured with it does when it connects.
    pub async fn raise_shards(&self, count: u32) {
        let count = ShardCount::new(count).expect("a shard count");
        let mut redis = self.redis.clone();
        fleet::redis::shards::prepare(&mut redis, &self.keys, count).await.expect("shards prepared");
    }

    /// (entries not yet delivered, entries delivered but not acknowledged),
    /// over every shard. An unknown lag (Redis cannot tell after some
    /// trims) counts as 1.
    pub async fn group_backlog(&self) -> (u64, u64) {
        let mut redis = self.redis.clone();
        let (mut lag, mut pending) = (0, 0);
        for shard in self.shards().await {
            let reply: redis::streams::StreamInfoGroupsReply =
                redis.xinfo_groups(shard.events()).await.expect("XINFO GROUPS");
            let group = reply.groups.into_iter().find(|group| group.name == GROUP).expect("the fleet's group exists");
            lag += group.lag.map_or(1, |lag| lag as u64);
            pending += group.pending as u64;
        }
        (lag, pending)
    }

    pub async fn stream_len(&self, key: &str) -> u64 {
        let mut redis = self.redis.clone();
        redis.xlen(key).await.expect("XLEN")
    }

    /// The dead letters of every shard, shard by shard.
    pub async fn dead_letters(&self) -> Vec<redis::streams::StreamId> {
        let mut redis = self.redis.clone();
        let mut letters = Vec::new();
        for shard in self.shards().await {
            let reply: redis::streams::StreamRangeReply = redis.xrange_all(shard.dead_letters()).await.expect("XRANGE");
            letters.extend(reply.ids);
        }
        letters
    }

    pub async fn applied_events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&self.db).await.expect("count")
    }

    /// Retries scheduled in every shard.
    pub async fn scheduled_retries(&self) -> u64 {
        let mut redis = self.redis.clone();
        let mut scheduled = 0;
        for shard in self.shards().await {
            scheduled += redis.zcard::<_, u64>(shard.retries()).await.expect("ZCARD");
        }
        scheduled
    }

    /// Makes Postgres refuse any write of enrollment 666, as a constraint would.
    pub async fn refuse_enrollment_666(&self) {
        self.refuse_enrollments_from(666, 666).await;
    }

    pub async fn accept_enrollment_666(&self) {
        self.accept_enrollments_again().await;
    }

    /// Makes Postgres refuse any write of an enrollment from `first` to
    /// `last`, as a constraint would, until [`Self::accept_enrollments_again`].
    pub async fn refuse_enrollments_from(&self, first: i64, last: i64) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE FUNCTION refuse_enrollments() RETURNS trigger AS $$
             BEGIN
               IF NEW.enrollment_id BETWEEN {first} AND {last} THEN
                 RAISE EXCEPTION 'enrollment % is refused by the test', NEW.enrollment_id USING ERRCODE = 'check_violation';
               END IF;
               RETURN NEW;
             END $$ LANGUAGE plpgsql"
        )))
        .execute(&self.db)
        .await
        .expect("function");
        sqlx::query(
            "CREATE TRIGGER refuse_enrollments BEFORE INSERT OR UPDATE ON enrollments \
             FOR EACH ROW EXECUTE FUNCTION refuse_enrollments()",
        )
        .execute(&self.db)
        .await
        .expect("trigger");
    }

    pub async fn accept_enrollments_again(&self) {
        sqlx::query("DROP TRIGGER refuse_enrollments ON enrollments").execute(&self.db).await.expect("drop trigger");
    }

    /// Appends a webhook body straight to its shard's stream (of the
    /// fleet's count), as the intake would, and answers its stream entry
    /// id. Takes only events new to this test's dedup window.
    pub async fn enqueue(&self, body: &str) -> String {
        let envelope = fleet::jobs::Envelope::parse(body.as_bytes()).expect("an event");
        let topic = envelope.topic();
        let entry = fleet::redis::entry::NewEntry {
            body: body.as_bytes(),
            topic: &topic,
            tenant: envelope
                .tenant_id
                .as_ref()
                .expect("enqueue takes bodies that name their tenant_id, as a key for any school requires")
                .as_str(),
            event_id: &envelope.id,
            received_at: chrono::Utc::now(),
            headers: None,
        };
        let mut redis = self.redis.clone();
        let count = fleet::redis::shards::fleet_count(&mut redis, &self.keys, ShardCount::ONE).await.expect("count");
        let shard = self.keys.shard(count.shard_of(entry.tenant, envelope.entity.as_deref().unwrap_or(&envelope.id)));
        stream::ensure_group(&mut redis, &shard).await.expect("group");
        match stream::enqueue(&mut redis, &shard, &entry, &DedupWindow::new(Duration::from_secs(3600), 1000))
            .await
            .expect("enqueue")
        {
            stream::Enqueued::Accepted(id) => id,
            stream::Enqueued::Duplicate => panic!("enqueue takes new events; event {} is a duplicate", envelope.id),
        }
    }

    /// Writes dead letters through the worker's own code path, one per
    /// (topic, tenant, kind), each with a body that names its topic and
    /// school; answers their ids, oldest first.
    pub async fn add_dead_letters(&self, letters: &[(&str, &str, fleet::redis::failures::FailureKind)]) -> Vec<String> {
        use fleet::redis::failures::{self, Failure};
        let entries: Vec<fleet::redis::entry::Entry> = letters
            .iter()
            .enumerate()
            .map(|(n, (topic, tenant, _))| {
                let (resource, action) = topic.split_once('.').expect("a topic");
                let event_id = format!("2025{n:019}");
                let body = serde_json::json!({"id": event_id, "resource": resource, "action": action,
                                              "tenant_id": tenant, "payload": {"id": "not-a-number"}});
                let event = fleet::redis::entry::EventFields {
                    body: body.to_string().into_bytes(),
                    topic: (*topic).to_owned(),
                    tenant: (*tenant).to_owned(),
                    event_id,
                    received_at: "2025-04-01T00:00:00.000Z".to_owned(),
                    headers: None,
                };
                fleet::redis::entry::Entry { id: format!("1-{n}"), event, ..Default::default() }
            })
            .collect();
        let failures: Vec<Failure<'_>> = entries
            .iter()
            .zip(letters)
            .map(|(entry, (_, _, kind))| Failure {
                entry,
                kind: *kind,
                error: "invalid id \"not-a-number\"".into(),
                attempts: 1,
            })
            .collect();
        let mut redis = self.redis.clone();
        stream::ensure_group(&mut redis, &self.keys.shard(0)).await.expect("group");
        let before = self.dead_letters().await.len();
        failures::dead_letter(&mut redis, &self.keys.shard(0), &failures).await.expect("dead letters");
        self.dead_letters().await.into_iter().skip(before).map(|letter| letter.id).collect()
    }

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
}
