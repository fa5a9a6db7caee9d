//! Throughput and latency of the real intake and worker, on this machine.
//!
//! `cargo bench --bench throughput` starts throwaway Redis and PostgreSQL (or
//! uses `REDIS_URL` / `DATABASE_URL`, where it creates a scratch database),
//! then measures:
//! - intake: signed POSTs answered per second and the latency distribution,
//!   over HTTP on loopback;
//! - worker: events applied per second by `BENCH_WORKERS` workers (default 2)
//!   draining a backlog of
//!   enrollment events spread over many enrollments and courses.
//!
//! Sizes: `BENCH_EVENTS` (default 50,000), `BENCH_REQUESTS` (default 5,000),
//! `FLEET_BATCH_SIZE` (default 500).

use std::time::{Duration, Instant};

use fleet::local_services::{postgres_given_or_started, redis_given_or_started};
use fleet::redis::{stream, KeyPrefix, Keys};
use fleet::worker::Settings as WorkerSettings;
use serde_json::json;
use sqlx::Connection;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn enrollment_event(n: usize, courses: usize) -> String {
    let updated = chrono::DateTime::parse_from_rfc3339("2025-03-16T00:00:00Z").expect("time")
        + chrono::Duration::milliseconds(n as i64);
    let enrollment = n % 20_000;
    let course = enrollment % courses;
    json!({
        "id": format!("2025{n:019}"), "resource": "enrollment", "action": "progress", "tenant_id": "bench",
        "created_at": updated.to_rfc3339(),
        "payload": {
            "id": enrollment, "course_id": course, "course": {"id": course, "name": format!("Course {course}")},
            "user": {"id": enrollment, "email": format!("learner{enrollment}@example.com"), "first_name": "A", "last_name": "B"},
            "percentage_completed": format!("{:.2}", (n % 100) as f64 / 100.0),
            "started_at": "2025-03-01T00:00:00Z", "activated_at": "2025-03-01T00:00:00Z",
            "completed_at": null, "expiry_date": null, "created_at": "2025-03-01T00:00:00Z",
            "updated_at": updated.to_rfc3339(), "free_trial": false
        }
    })
    .to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events = env_number("BENCH_EVENTS", 50_000);
    let requests = env_number("BENCH_REQUESTS", 5_000);
    let batch_size = env_number("FLEET_BATCH_SIZE", 500);
    let courses = env_number("BENCH_COURSES", 500).max(1);
    let scratch = std::env::temp_dir().join(format!("fleet-bench-{}", uuid::Uuid::new_v4().simple()));

    let (redis_url, _redis) =
        redis_given_or_started(std::env::var("REDIS_URL").ok(), &scratch.join("redis"), true).await?;
    let redis_target = fleet::redis::RedisTarget::from(redis_url.as_str());
    let postgres_dir = std::env::temp_dir().join(format!("fleet-bench-pg-{}", uuid::Uuid::new_v4().simple()));
    let (admin_url, _postgres) =
        postgres_given_or_started(std::env::var("DATABASE_URL").ok(), "postgres", &postgres_dir, true).await?;
    let database = format!("fleet_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{database}\""))).execute(&mut admin).await?;
    let mut database_url = url::Url::parse(&admin_url)?;
    database_url.set_path(&format!("/{database}"));
    let db = fleet::db::connect(database_url.as_str()).await?;
    fleet::db::migrate(&db).await?;
    let prefix: KeyPrefix = format!("bench:{}:", uuid::Uuid::new_v4().simple()).parse().map_err(anyhow::Error::msg)?;
    let keys = Keys::new(&prefix);
    let mut redis = fleet::redis::connect(&redis_target, Duration::from_secs(10)).await?;
    stream::ensure_group(&mut redis, &keys.shard(0)).await?;

    // --- intake: sequential latency, then concurrent throughput
    let secret = "bench-secret";
    let settings = fleet::intake::Settings {
        keys: fleet::secrets::WebhookKeys::new(Some(secret.parse().map_err(anyhow::Error::msg)?), None)?,
        max_body_bytes: 1024 * 1024,
        dedup: fleet::redis::dedup::DedupWindow::new(Duration::from_secs(3600), 1000),
        shards: fleet::redis::shards::ShardCount::ONE,
        http: fleet::runtime::HttpSettings::default(),
        refusals_per_minute: 120,
        trusted_proxies: Vec::new(),
        metrics_listen: None,
    };
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let intake = fleet::intake::Application::build(local, &redis_target, keys.clone(), settings).await?;
    let address = intake.address();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(intake.run_until_stopped(shutdown.clone()));
    let client = fleet::http_client::builder().build().expect("an HTTP client");
    let url = format!("http://{address}/webhooks/thinkific");
    let bodies: Vec<(String, String)> = (0..requests)
        .map(|n| {
            let body = enrollment_event(1_000_000_000 + n, courses);
            let signature = fleet::intake::sign(secret.as_bytes(), body.as_bytes());
            (body, signature)
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests / 2);
    for (body, signature) in &bodies[..requests / 2] {
        let started = Instant::now();
        let response = client.post(&url).header("x-thinkific-hmac-sha256", signature).body(body.clone()).send().await?;
        anyhow::ensure!(response.status() == 200, "intake answered {}", response.status());
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let concurrent = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in bodies[requests / 2..].chunks((requests / 2).div_ceil(32).max(1)) {
        let (client, url, chunk) = (client.clone(), url.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for (body, signature) in chunk {
                let response = client.post(&url).header("x-thinkific-hmac-sha256", signature).body(body).send().await?;
                anyhow::ensure!(response.status() == 200, "intake answered {}", response.status());
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let concurrent_elapsed = concurrent.elapsed();
    shutdown.cancel();
    server.await??;
    println!(
        "intake: {} sequential requests: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    println!(
        "intake: {} requests from 32 concurrent clients: {:.0} requests/s",
        requests - requests / 2,
        (requests - requests / 2) as f64 / concurrent_elapsed.as_secs_f64()
    );

    // --- worker: drain a backlog of `events` enrollment events
    for chunk in (0..events).collect::<Vec<_>>().chunks(5_000) {
        let mut pipe = redis::pipe();
        for &n in chunk {
            let fields = [
                ("body", enrollment_event(n, courses)),
                ("topic", "enrollment.progress".into()),
                ("tenant", "bench".into()),
                ("event_id", format!("2025{n:019}")),
                ("received_at", chrono::Utc::now().to_rfc3339()),
            ];
            pipe.xadd(keys.shard(0).events(), "*", &fields).ignore();
        }
        pipe.query_async::<()>(&mut redis).await?;
    }
    let workers = env_number("BENCH_WORKERS", 2).max(1);
    let settings = WorkerSettings {
        consumer_name: "bench".into(),
        shards: fleet::redis::shards::ShardCount::ONE,
        batch_size,
        block: Duration::from_millis(100),
        stream_max_len: 10_000_000,
        claim_idle: Duration::from_secs(60),
        lease: Duration::from_secs(15),
        retry: fleet::worker::RetryPolicy::default(),
        cache_ttls: fleet::redis::cache::Ttls::default(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let mut running = Vec::new();
    for n in 0..workers {
        let settings = WorkerSettings { consumer_name: format!("bench-{n}"), ..settings.clone() };
        running.push(fleet::worker::Worker::connect(db.clone(), &redis_target, keys.clone(), settings).await?);
    }
    let started = Instant::now();
    let tasks: Vec<_> = running.into_iter().map(|worker| tokio::spawn(worker.run(stop.clone()))).collect();
    let expected = (events + requests) as i64;
    // Done when every entry is applied, its cache refreshed and acknowledged.
    loop {
        let reply: redis::streams::StreamInfoGroupsReply =
            redis::AsyncCommands::xinfo_groups(&mut redis, keys.shard(0).events()).await?;
        let settled = reply.groups.iter().all(|group| group.lag == Some(0) && group.pending == 0);
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&db).await?;
    anyhow::ensure!(applied == expected, "{applied} of {expected} events applied");
    let elapsed = started.elapsed();
    stop.cancel();
    for task in tasks {
        task.await??;
    }
    println!(
        "worker: {} events (20,000 enrollments, {courses} courses) applied, cached and acknowledged in {:.2} s by {workers} workers, batch {}: {:.0} events/s",
        expected,
        elapsed.as_secs_f64(),
        batch_size,
        expected as f64 / elapsed.as_secs_f64()
    );

    let mut keys_to_delete: Vec<String> = Vec::new();
    {
        let mut iter =
            redis::AsyncCommands::scan_match::<_, String>(&mut redis, format!("{}*", prefix.as_str())).await?;
        while let Some(key) = iter.next_item().await {
            keys_to_delete.push(key?);
        }
    }
    for chunk in keys_to_delete.chunks(1_000) {
        redis::AsyncCommands::del::<_, ()>(&mut redis, chunk).await?;
    }
    db.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{database}\" WITH (FORCE)"))).execute(&mut admin).await?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
