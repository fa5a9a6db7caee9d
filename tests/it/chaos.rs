//! Real `fleet worker` processes killed with SIGKILL, and their Postgres and
//! Redis connections cut, while events flow. Nothing may be lost, applied
//! wrongly, or charged an attempt for an outage.

use std::process::Stdio;
use std::time::Duration;

use crate::helpers::{context, eventually, fleet, signal, wait_exit, Proxy, TestContext};
use crate::processes::progress_event;

pub(crate) fn worker_process(ctx: &TestContext, envs: &[(&str, String)]) -> tokio::process::Child {
    let mut command = fleet(ctx, &["worker"]);
    command.env("FLEET_BATCH_SIZE", "25").env("FLEET_BLOCK_MS", "100").env("RUST_LOG", "error").stderr(Stdio::null());
    for (key, value) in envs {
        command.env(key, value);
    }
    command.spawn().expect("spawn fleet worker")
}

/// Every enrollment ends at the percentage of its last event (see `progress_event`).
pub(crate) async fn assert_in_order_state(ctx: &TestContext, total: usize) {
    let (count, distinct): (i64, i64) = sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM events")
        .fetch_one(&ctx.db)
        .await
        .expect("counts");
    assert_eq!((count, distinct), (total as i64, total as i64), "every event applied exactly once");
    let percents: Vec<(i64, f64)> =
        sqlx::query_as("SELECT enrollment_id, percentage_completed FROM enrollments ORDER BY enrollment_id")
            .fetch_all(&ctx.db)
            .await
            .expect("enrollments");
    assert_eq!(percents.len(), 50.min(total));
    for (enrollment, percent) in percents {
        let last = (0..total).rev().find(|n| n % 50 == enrollment as usize).expect("a last event");
        let raw = (last % 100) as f64;
        let expected = if raw <= 1.0 { raw * 100.0 } else { raw };
        assert_eq!(percent, expected, "enrollment {enrollment}");
    }
    assert!(ctx.dead_letters().await.is_empty(), "nothing is dead");
    assert_eq!(ctx.scheduled_retries().await, 0, "nothing waits for a retry");
    assert_eq!(ctx.group_backlog().await, (0, 0), "nothing is pending");
}

#[tokio::test]
async fn workers_killed_with_sigkill_over_and_over_lose_nothing() {
    workers_killed_with_sigkill_over_and_over_lose_nothing_on(context().await).await;
}

/// The body of [`workers_killed_with_sigkill_over_and_over_lose_nothing`], on any Redis (see `crate::cluster`).
pub(crate) async fn workers_killed_with_sigkill_over_and_over_lose_nothing_on(ctx: TestContext) {
    let total = 3000;
    let settings = [("FLEET_CLAIM_IDLE_MS", "1000".to_owned()), ("FLEET_CONSUMER_LEASE_MS", "1000".to_owned())];
    let mut workers: Vec<tokio::process::Child> = (0..3).map(|_| worker_process(&ctx, &settings)).collect();
    let mut sent = 0;
    let mut kills = 0;
    let mut orphaned = 0;
    while sent < total {
        for _ in 0..150 {
            ctx.enqueue(&progress_event(sent)).await;
            sent += 1;
        }
        // Kill while the backlog is being worked on.
        let victim = kills % workers.len();
        let pid = workers[victim].id().expect("running");
        signal(&workers[victim], "KILL");
        let _ = workers[victim].wait().await;
        orphaned += pending_of(&ctx, &format!("{}-{pid}", gethostname::gethostname().to_string_lossy())).await;
        workers[victim] = worker_process(&ctx, &settings);
        kills += 1;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(kills >= 20, "{kills} kills");
    assert!(orphaned > 0, "no kill left entries behind: the test did not exercise crash recovery");
    ctx.wait_until_drained().await;
    for mut worker in workers {
        signal(&worker, "TERM");
        let (status, _) = wait_exit(&mut worker).await;
        assert!(status.success());
    }
    assert_in_order_state(&ctx, total).await;
}

/// Entries pending on `consumer`.
async fn pending_of(ctx: &TestContext, consumer: &str) -> u64 {
    let mut redis = ctx.redis.clone();
    let reply: redis::streams::StreamPendingReply =
        redis::AsyncCommands::xpending(&mut redis, ctx.keys.shard(0).events(), fleet::redis::GROUP)
            .await
            .expect("XPENDING");
    match reply {
        redis::streams::StreamPendingReply::Data(data) => {
            data.consumers.iter().filter(|c| c.name == consumer).map(|c| c.pending as u64).sum()
        }
        _ => 0,
    }
}

pub(crate) async fn readiness(port: u16) -> Option<(u16, serde_json::Value)> {
    let response = crate::helpers::get(format!("http://127.0.0.1:{port}/readyz")).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

/// Runs a real worker whose connection to `dependency` (`postgres` or
/// `redis`) goes through a proxy, cuts it mid-run for a few seconds, and
/// checks that nothing is lost or charged an attempt, and that the worker
/// reports the outage and resumes by itself.
async fn survive_an_outage_of(dependency: &str) {
    let ctx = context().await;
    let (variable, url) = match dependency {
        "postgres" => ("DATABASE_URL", ctx.database_url.clone()),
        _ => ("REDIS_URL", ctx.redis_url.clone()),
    };
    let proxy = Proxy::start(&url).await;
    let health_port = fleet::local_services::free_port().expect("port");
    let mut worker = worker_process(
        &ctx,
        &[
            (variable, proxy.url(&url)),
            // A single attempt: an attempt charged for the outage would dead-letter an event.
            ("FLEET_MAX_ATTEMPTS", "1".to_owned()),
            ("FLEET_HEALTH_LISTEN", format!("127.0.0.1:{health_port}")),
        ],
    );
    for n in 0..200 {
        ctx.enqueue(&progress_event(n)).await;
    }
    eventually("the worker applies events", Duration::from_secs(20), || async { ctx.applied_events().await > 0 }).await;

    proxy.cut();
    for n in 200..400 {
        ctx.enqueue(&progress_event(n)).await;
    }
    eventually("readiness reports the outage", Duration::from_secs(20), || async {
        matches!(readiness(health_port).await, Some((503, body)) if body["dependencies"][dependency]["state"] == "down")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore().await;

    ctx.wait_until_drained().await;
    eventually("readiness recovers", Duration::from_secs(20), || async {
        matches!(readiness(health_port).await, Some((200, _)))
    })
    .await;
    signal(&worker, "TERM");
    let (status, _) = wait_exit(&mut worker).await;
    assert!(status.success());
    assert_in_order_state(&ctx, 400).await;
}

#[tokio::test]
async fn a_postgres_outage_costs_no_attempt_and_the_worker_resumes_by_itself() {
    survive_an_outage_of("postgres").await;
}

#[tokio::test]
async fn a_redis_outage_costs_no_attempt_and_the_worker_resumes_by_itself() {
    survive_an_outage_of("redis").await;
}

#[tokio::test]
async fn a_taken_consumer_name_is_refused_and_a_killed_workers_name_comes_back() {
    let ctx = context().await;
    let named = [("FLEET_CONSUMER_NAME", "fleet-worker@1".to_owned()), ("FLEET_CONSUMER_LEASE_MS", "1000".to_owned())];
    let mut first = worker_process(&ctx, &named);
    eventually("the first worker holds the name", Duration::from_secs(20), || async {
        let mut redis = ctx.redis.clone();
        redis::AsyncCommands::exists::<_, bool>(&mut redis, ctx.keys.consumer_lease("fleet-worker@1"))
            .await
            .unwrap_or(false)
    })
    .await;

    let output = fleet(&ctx, &["worker"])
        .env("FLEET_CONSUMER_NAME", "fleet-worker@1")
        .env("FLEET_CONSUMER_LEASE_MS", "1000")
        .output()
        .await
        .expect("run a second worker");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Its own exit code: a supervisor must not restart it in a loop.
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("is held by another live worker"), "{stderr}");

    // Killed, the first worker's lease runs out and a restart takes the name.
    signal(&first, "KILL");
    let _ = first.wait().await;
    let mut restarted = worker_process(&ctx, &named);
    ctx.enqueue(&progress_event(7)).await;
    eventually("the restarted worker applies events", Duration::from_secs(20), || async {
        ctx.applied_events().await == 1
    })
    .await;
    signal(&restarted, "TERM");
    let (status, _) = wait_exit(&mut restarted).await;
    assert!(status.success());
}
