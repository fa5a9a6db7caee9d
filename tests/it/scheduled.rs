//! The scheduled jobs: each repairs what it is for (drift injected by hand),
//! each occurrence runs once across two runners sharing a prefix (in-process
//! and as two `fleet worker` processes), and what the read API serves is
//! kept warm.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use fleet::api::cache_status;
use fleet::read_model::cached::Cached;
use fleet::read_model::reads;
use fleet::redis::cache::{self, Lookup, Ttls};
use fleet::scheduled::{self, dead_letter_age, reconcile, retention, rewarm, Job, JobSchedule, ScheduleSettings};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::helpers::{api_tuning, context, eventually, fleet, signal, wait_exit, TestContext};

/// One enrollment, straight in Postgres (the statistics triggers count it).
async fn enroll(
    ctx: &TestContext,
    tenant: &str,
    id: i64,
    course: i64,
    percentage: f64,
    started: bool,
    completed: bool,
) {
    sqlx::query(
        "INSERT INTO enrollments (tenant_id, enrollment_id, user_id, course_id, percentage_completed,
                                  started_at, completed_at, free_trial, updated_at, last_topic,
                                  source_event_created_at, source_event_id)
         VALUES ($1, $2, $2, $3, $4, CASE WHEN $5 THEN now() END, CASE WHEN $6 THEN now() END,
                 false, now(), 'enrollment.created', now(), 'test')",
    )
    .bind(tenant)
    .bind(id)
    .bind(course)
    .bind(percentage)
    .bind(started)
    .bind(completed)
    .execute(&ctx.db)
    .await
    .expect("insert an enrollment");
}

/// Two schools, three courses, enrollments of every kind.
async fn seed(ctx: &TestContext) {
    enroll(ctx, "school-a", 1, 10, 0.0, false, false).await;
    enroll(ctx, "school-a", 2, 10, 40.5, true, false).await;
    enroll(ctx, "school-a", 3, 10, 100.0, true, false).await;
    enroll(ctx, "school-a", 4, 11, 12.25, true, false).await;
    enroll(ctx, "school-a", 5, 11, 60.0, true, true).await;
    enroll(ctx, "school-b", 6, 20, 33.333333, true, false).await;
    enroll(ctx, "school-b", 7, 20, 0.0, false, false).await;
}

type CourseRow = (String, i64, i64, i64, i64, String, f64, f64);
type TenantRow = (String, i64, i64, i64, String, f64, f64);

async fn course_rows(ctx: &TestContext) -> Vec<CourseRow> {
    sqlx::query_as(
        "SELECT tenant_id, course_id, enrollments, active, completed, percentage_sum::text,
                completion_rate, average_percentage
         FROM course_statistics ORDER BY tenant_id, course_id",
    )
    .fetch_all(&ctx.db)
    .await
    .expect("course statistics")
}

async fn tenant_rows(ctx: &TestContext) -> Vec<TenantRow> {
    sqlx::query_as(
        "SELECT tenant_id, enrollments, active, completed, percentage_sum::text, completion_rate, average_percentage
         FROM tenant_statistics ORDER BY tenant_id",
    )
    .fetch_all(&ctx.db)
    .await
    .expect("tenant statistics")
}

async fn course_version(ctx: &TestContext, tenant: &str, course: i64) -> i64 {
    sqlx::query_scalar("SELECT version FROM course_statistics WHERE tenant_id = $1 AND course_id = $2")
        .bind(tenant)
        .bind(course)
        .fetch_one(&ctx.db)
        .await
        .expect("course version")
}

async fn tenant_version(ctx: &TestContext, tenant: &str) -> i64 {
    sqlx::query_scalar("SELECT version FROM tenant_statistics WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&ctx.db)
        .await
        .expect("tenant version")
}

/// Corrupts the statistics the way drift looks: numbers off, a row gone, a bogus row.
async fn inject_drift(ctx: &TestContext) {
    for statement in [
        "UPDATE course_statistics SET enrollments = enrollments + 5, percentage_sum = 1
         WHERE tenant_id = 'school-a' AND course_id = 10",
        "DELETE FROM course_statistics WHERE tenant_id = 'school-a' AND course_id = 11",
        "INSERT INTO course_statistics (tenant_id, course_id, enrollments, active, completed, percentage_sum, version)
         VALUES ('school-b', 99, 7, 7, 0, 350, 3)",
        "UPDATE tenant_statistics SET completed = 99, active = 0 WHERE tenant_id = 'school-b'",
    ] {
        sqlx::query(statement).execute(&ctx.db).await.expect("inject drift");
    }
}

#[tokio::test]
async fn reconcile_restores_exactly_the_recount() {
    let ctx = context().await;
    seed(&ctx).await;
    // What the triggers counted, before anything drifted.
    let courses = course_rows(&ctx).await;
    let tenants = tenant_rows(&ctx).await;
    assert_eq!(courses.len(), 3);
    assert_eq!(tenants.len(), 2);

    // A cached value of a course about to be repaired must not survive it.
    let keys = ctx.keys.clone();
    let mut redis = ctx.redis.clone();
    let stale = Cached::Statistics { tenant: "school-a".into(), course: 10 };
    let entries =
        Cached::compute(&ctx.db, &keys, &Ttls::default(), std::slice::from_ref(&stale)).await.expect("compute");
    cache::put(&mut redis, &entries).await.expect("put");

    inject_drift(&ctx).await;
    let a_version = tenant_version(&ctx, "school-a").await;
    let b_version = tenant_version(&ctx, "school-b").await;
    let course_10_version = course_version(&ctx, "school-a", 10).await;

    let repaired = reconcile::run(&ctx.db, &mut redis, &keys).await.expect("reconcile");
    assert_eq!(repaired.schools, 2);
    assert_eq!(
        repaired.courses,
        vec![("school-a".to_owned(), 10), ("school-a".to_owned(), 11), ("school-b".to_owned(), 99)]
    );
    assert_eq!(repaired.tenants, vec!["school-b".to_owned()]);
    assert_eq!(repaired.versions_bumped, vec!["school-a".to_owned()]);

    // Every row is back to what the triggers counted; the bogus one reads as
    // a course without enrollments.
    let mut expected = courses.clone();
    expected.push(("school-b".into(), 99, 0, 0, 0, "0.000000".into(), 0.0, 0.0));
    assert_eq!(course_rows(&ctx).await, expected);
    assert_eq!(tenant_rows(&ctx).await, tenants);

    // Repaired rows carry new versions, so no older cached value can win.
    assert!(course_version(&ctx, "school-a", 10).await > course_10_version);
    assert!(course_version(&ctx, "school-a", 11).await >= 1);
    assert!(course_version(&ctx, "school-b", 99).await > 3);
    assert!(tenant_version(&ctx, "school-a").await > a_version);
    assert!(tenant_version(&ctx, "school-b").await > b_version);
    assert_eq!(cache::get(&mut redis, &stale.key(&keys)).await.expect("get"), Lookup::Missing);

    // Nothing left to repair: a second run changes nothing.
    let versions = (tenant_version(&ctx, "school-a").await, course_version(&ctx, "school-a", 10).await);
    let again = reconcile::run(&ctx.db, &mut redis, &keys).await.expect("reconcile again");
    assert!(again.is_clean(), "{again}");
    assert!(again.versions_bumped.is_empty());
    assert_eq!(versions, (tenant_version(&ctx, "school-a").await, course_version(&ctx, "school-a", 10).await));
}

async fn insert_event(ctx: &TestContext, id: &str, age_days: i32) {
    sqlx::query(
        "INSERT INTO events (tenant_id, event_id, topic, received_at, applied_at, stream_entry_id, handled)
         VALUES ('school-a', $1, 'enrollment.created', now(), now() - make_interval(days => $2), '0-1', true)",
    )
    .bind(id)
    .bind(age_days)
    .execute(&ctx.db)
    .await
    .expect("insert an event");
}

#[tokio::test]
async fn retention_deletes_old_events_in_batches_and_keeps_dead_letters() {
    let ctx = context().await;
    for n in 0..7 {
        insert_event(&ctx, &format!("old-{n}"), 31 + n).await;
    }
    for n in 0..3 {
        insert_event(&ctx, &format!("new-{n}"), 29 - n).await;
    }
    let mut redis = ctx.redis.clone();
    for n in 0..2 {
        let _: String = redis.xadd(ctx.keys.shard(0).dead_letters(), "*", &[("n", n)]).await.expect("XADD");
    }

    let policy = retention::Policy { days: 30, batch_size: 2, pause: Duration::from_millis(1) };
    let deleted = retention::run(&ctx.db, &policy, &CancellationToken::new()).await.expect("retention");
    assert_eq!(deleted.rows, 7);
    assert_eq!(deleted.batches, 4, "7 rows in batches of 2");
    assert!(!deleted.interrupted);

    let left: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM events ORDER BY event_id").fetch_all(&ctx.db).await.expect("left");
    assert_eq!(left, ["new-0", "new-1", "new-2"]);
    assert_eq!(ctx.dead_letters().await.len(), 2, "dead letters are never touched");

    // Shutdown stops a run between batches.
    let stopped = CancellationToken::new();
    stopped.cancel();
    insert_event(&ctx, "old-again", 40).await;
    let interrupted = retention::run(&ctx.db, &policy, &stopped).await.expect("retention");
    assert!(interrupted.interrupted);
    assert_eq!(interrupted.rows, 0);
}

async fn fresh_until(ctx: &TestContext, key: &str) -> Option<i64> {
    let mut redis = ctx.redis.clone();
    redis.hget(key, "fresh_until").await.expect("HGET")
}

#[tokio::test]
async fn rewarm_refreshes_what_was_read_recently_and_nothing_else() {
    let ctx = context().await;
    seed(&ctx).await;
    let keys = ctx.keys.clone();
    let mut redis = ctx.redis.clone();
    let read = Cached::Dashboard { tenant: "school-a".into() };
    let unread = Cached::Statistics { tenant: "school-a".into(), course: 10 };
    let read_long_ago = Cached::Dashboard { tenant: "school-b".into() };
    let about_nothing = Cached::Statistics { tenant: "no-such-school".into(), course: 1 };

    // All about to go stale: fresh for 20 s, less than the next run's horizon.
    let short = Ttls {
        enrollments: Duration::from_secs(20),
        statistics: Duration::from_secs(20),
        dashboard: Duration::from_secs(20),
    };
    let items = [read.clone(), unread.clone(), read_long_ago.clone()];
    let entries = Cached::compute(&ctx.db, &keys, &short, &items).await.expect("compute");
    assert_eq!(cache::put(&mut redis, &entries).await.expect("put"), 3);

    reads::record_read(&mut redis, &keys, &read).await.expect("record");
    reads::record_read(&mut redis, &keys, &about_nothing).await.expect("record");
    let two_hours_ago = Utc::now().timestamp_millis() - 2 * 3600 * 1000;
    let _: i64 =
        redis.zadd(keys.cache_reads(), reads::member(&read_long_ago), two_hours_ago).await.expect("an old read");
    let before: BTreeMap<String, Option<i64>> = {
        let mut map = BTreeMap::new();
        for item in &items {
            let key = item.key(&keys);
            map.insert(key.clone(), fresh_until(&ctx, &key).await);
        }
        map
    };

    let policy = rewarm::Policy {
        window: Duration::from_secs(3600),
        max_items: 1000,
        horizon: Duration::from_secs(60),
        ttls: Ttls::default(),
    };
    let report = rewarm::run(&ctx.db, &mut redis, &keys, &policy).await.expect("rewarm");
    assert_eq!(report.forgotten, 1, "{report}");
    assert_eq!(report.considered, 2, "{report}");
    assert_eq!(report.recomputed, 2, "{report}");
    assert_eq!(report.written, 1, "{report}");
    assert_eq!(report.gone, 1, "{report}");

    // The value read recently is fresh for its full TTL again (a HIT).
    let now = Utc::now().timestamp_millis();
    let rewarmed = fresh_until(&ctx, &read.key(&keys)).await.expect("still cached");
    assert!(rewarmed > now + 250_000, "rewarmed with the dashboard TTL of 300 s");
    assert!(matches!(cache::get(&mut redis, &read.key(&keys)).await.expect("get"), Lookup::Fresh(_)));
    // The unread one and the one read outside the window are left to expire.
    for item in [&unread, &read_long_ago] {
        let key = item.key(&keys);
        assert_eq!(fresh_until(&ctx, &key).await, before[&key], "{key} was not read recently");
    }
    // What was forgotten is no longer a member; the recent read still is.
    let members: Vec<String> = redis.zrange(keys.cache_reads(), 0, -1).await.expect("ZRANGE");
    assert_eq!(members, vec![reads::member(&read)]);

    // A value fresh beyond the horizon is left alone.
    let again = rewarm::run(&ctx.db, &mut redis, &keys, &policy).await.expect("rewarm");
    assert_eq!((again.considered, again.recomputed), (1, 0), "{again}");
}

#[test]
fn read_members_round_trip() {
    let page = fleet::read_model::PageRequest { tenant_id: "a|b".into(), course_id: 7, page: 2, per_page: 20 };
    for item in [
        Cached::Statistics { tenant: "a|b".into(), course: -3 },
        Cached::Dashboard { tenant: "a|b".into() },
        Cached::Enrollments(page),
    ] {
        assert_eq!(reads::parse_member(&reads::member(&item)), Some(item));
    }
    for junk in ["", "d|", "s|x", "s|x|y", "e|x|1|2", "x|y", "s||3"] {
        assert_eq!(reads::parse_member(junk), None, "{junk:?}");
    }
}

#[tokio::test]
async fn dead_letter_age_measures_the_oldest() {
    let ctx = context().await;
    let mut redis = ctx.redis.clone();
    let none = dead_letter_age::run(&mut redis, &ctx.keys).await.expect("measure");
    assert_eq!((none.count, none.oldest_age), (0, None));

    let two_minutes_ago = Utc::now().timestamp_millis() - 120_000;
    let _: String =
        redis.xadd(ctx.keys.shard(0).dead_letters(), format!("{two_minutes_ago}-0"), &[("n", 1)]).await.expect("XADD");
    let _: String = redis.xadd(ctx.keys.shard(0).dead_letters(), "*", &[("n", 2)]).await.expect("XADD");
    let measured = dead_letter_age::run(&mut redis, &ctx.keys).await.expect("measure");
    assert_eq!(measured.count, 2);
    let age = measured.oldest_age.expect("an oldest").as_secs();
    assert!((120..130).contains(&age), "the oldest is {age} s old");
}

/// `jobs` every second, the others off, run under `runner`'s name.
fn every_second(runner: &str, jobs: &[Job]) -> ScheduleSettings {
    let every: JobSchedule = "* * * * * *".parse().expect("schedule");
    let when = |job| if jobs.contains(&job) { every.clone() } else { JobSchedule::Off };
    ScheduleSettings {
        schedule_reconcile: when(Job::Reconcile),
        schedule_retention: when(Job::Retention),
        schedule_rewarm: when(Job::Rewarm),
        schedule_dead_letter_age: when(Job::DeadLetterAge),
        events_retention_days: 30,
        retention_batch_size: 1000,
        rewarm_window_secs: 3600,
        rewarm_max_items: 1000,
        runner_name: Some(runner.to_owned()),
        cache_ttls: Ttls::default(),
    }
}

/// One attempt at an occurrence, as the run log records it.
#[derive(Debug)]
struct Attempt {
    outcome: String,
    runner: String,
    summary: String,
}

/// (job, occurrence) → the attempts the run log recorded for it, in order.
async fn runs(ctx: &TestContext) -> BTreeMap<(String, i64), Vec<Attempt>> {
    let mut redis = ctx.redis.clone();
    let reply: redis::streams::StreamRangeReply = redis.xrange_all(ctx.keys.schedule_runs()).await.expect("XRANGE");
    let mut runs: BTreeMap<(String, i64), Vec<Attempt>> = BTreeMap::new();
    for entry in reply.ids {
        let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
        let occurrence = field("occurrence").parse().expect("an occurrence");
        let attempt = Attempt { outcome: field("outcome"), runner: field("runner"), summary: field("summary") };
        runs.entry((field("job"), occurrence)).or_default().push(attempt);
    }
    runs
}

/// Whether the run log holds `at_least` occurrences of each of `jobs` that
/// both runners tried.
fn tried_by_both(runs: &BTreeMap<(String, i64), Vec<Attempt>>, jobs: &[Job], at_least: usize) -> bool {
    jobs.iter().all(|job| {
        runs.iter().filter(|((name, _), attempts)| name == job.name() && attempts.len() == 2).count() >= at_least
    })
}

/// Checks the run log of `runners` sharing the schedules with the drift of
/// [`inject_drift`]: every occurrence ran exactly once (the others skipped
/// it, and its lock names the one that ran it); each occurrence of `jobs`
/// that both tried was tried by both, and the drift was repaired by one run
/// only, the later runs finding none; the statistics are the recount.
async fn assert_ran_once_each(ctx: &TestContext, runners: [&str; 2], jobs: &[Job]) {
    let runs = runs(ctx).await;
    assert!(tried_by_both(&runs, jobs, 3), "{runs:#?}");
    let mut repairs = Vec::new();
    for ((job, occurrence), attempts) in &runs {
        let ran: Vec<_> = attempts.iter().filter(|attempt| attempt.outcome == "ok").collect();
        assert_eq!(ran.len(), 1, "{job} at {occurrence} ran once: {attempts:?}");
        let skipped = attempts.iter().filter(|attempt| attempt.outcome == "skipped").count();
        assert_eq!(skipped, attempts.len() - 1, "{job} at {occurrence}: {attempts:?}");
        let mut tried_by: Vec<_> = attempts.iter().map(|attempt| attempt.runner.as_str()).collect();
        tried_by.sort_unstable();
        tried_by.dedup();
        assert_eq!(tried_by.len(), attempts.len(), "one attempt per runner: {attempts:?}");
        assert!(tried_by.iter().all(|runner| runners.contains(runner)), "{attempts:?}");
        // The lock names the runner that ran it (a skip records the holder too).
        let mut redis = ctx.redis.clone();
        let lock = ctx.keys.schedule_lock(job, *occurrence);
        let holder: Option<String> = redis.get(&lock).await.expect("GET");
        assert_eq!(holder.as_deref(), Some(ran[0].runner.as_str()), "{lock}");
        if job == "reconcile" && !ran[0].summary.contains("no drift") {
            repairs.push((occurrence, ran[0]));
        }
    }
    assert_eq!(repairs.len(), 1, "the drift is repaired by one run: {repairs:?}");
    assert!(repairs[0].1.summary.contains("repaired 3 course_statistics row(s)"), "{repairs:?}");

    let counted: Vec<(String, i64, i64)> =
        course_rows(ctx).await.into_iter().filter(|row| row.1 != 99).map(|row| (row.0, row.1, row.2)).collect();
    let recount: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT tenant_id, course_id, count(*) FROM enrollments GROUP BY tenant_id, course_id ORDER BY 1, 2",
    )
    .fetch_all(&ctx.db)
    .await
    .expect("recount");
    assert_eq!(counted, recount);
}

#[tokio::test]
async fn each_occurrence_runs_once_across_two_runners() {
    let ctx = context().await;
    seed(&ctx).await;
    inject_drift(&ctx).await;
    let jobs = [Job::Reconcile, Job::DeadLetterAge];
    let shutdown = CancellationToken::new();
    let runners: Vec<_> = ["runner-a", "runner-b"]
        .into_iter()
        .map(|runner| {
            let (db, redis, keys) = (ctx.db.clone(), ctx.redis.clone(), ctx.keys.clone());
            tokio::spawn(scheduled::run(every_second(runner, &jobs), db, redis, keys, shutdown.clone()))
        })
        .collect();

    let ctx_ref = &ctx;
    eventually("three occurrences of each job, tried by both runners", Duration::from_secs(20), move || async move {
        tried_by_both(&runs(ctx_ref).await, &jobs, 3)
    })
    .await;
    shutdown.cancel();
    for runner in runners {
        let stopped = tokio::time::timeout(Duration::from_secs(10), runner).await;
        stopped.expect("stops on shutdown").expect("no panic");
    }
    assert_ran_once_each(&ctx, ["runner-a", "runner-b"], &jobs).await;
}

/// The same across two real `fleet worker` processes, configured only by
/// their environment: the schedules are part of the worker.
#[tokio::test]
async fn two_worker_processes_share_the_occurrences() {
    let ctx = context().await;
    seed(&ctx).await;
    inject_drift(&ctx).await;
    let runners = ["scheduled-a", "scheduled-b"];
    let mut workers = runners.map(|name| {
        fleet(&ctx, &["worker"])
            .env("FLEET_CONSUMER_NAME", name)
            .env("FLEET_SCHEDULE_RECONCILE", "* * * * * *")
            .env("FLEET_SCHEDULE_DEAD_LETTER_AGE", "* * * * * *")
            .env("FLEET_SCHEDULE_RETENTION", "off")
            .env("FLEET_SCHEDULE_REWARM", "off")
            .spawn()
            .expect("spawn fleet worker")
    });

    let jobs = [Job::Reconcile, Job::DeadLetterAge];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !tried_by_both(&runs(&ctx).await, &jobs, 3) {
        for worker in &mut workers {
            if worker.try_wait().expect("try_wait").is_some() {
                let (status, stderr) = wait_exit(worker).await;
                panic!("a worker exited early ({status:?}):\n{stderr}");
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for shared occurrences");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for worker in &workers {
        signal(worker, "TERM");
    }
    for worker in &mut workers {
        let (status, stderr) = wait_exit(worker).await;
        assert!(status.success(), "exit status {status:?}; stderr:\n{stderr}");
        assert!(stderr.contains("scheduled jobs stopped"), "{stderr}");
    }
    assert_ran_once_each(&ctx, runners, &jobs).await;
}

/// A dashboard read through the API is recorded, and the rewarm job keeps
/// the value a HIT long after the API's own TTL would have let it expire.
#[tokio::test]
async fn rewarm_keeps_what_the_api_served_a_hit() {
    let ctx = context().await;
    seed(&ctx).await;
    let one_second = Ttls {
        enrollments: Duration::from_secs(1),
        statistics: Duration::from_secs(1),
        dashboard: Duration::from_secs(1),
    };
    let api = ctx.spawn_api_with(api_tuning(), one_second).await;
    let path = "/api/dashboard/cached?tenant_id=school-a";
    let first = api.get(path).await;
    assert_eq!(first.status(), 200);
    assert_eq!(cache_status(first.headers()), Some("MISS"));

    let read = Cached::Dashboard { tenant: "school-a".into() };
    let key = read.key(&ctx.keys);
    let (ctx_ref, member) = (&ctx, reads::member(&read));
    eventually("the API records the read", Duration::from_secs(5), || {
        let member = member.clone();
        async move {
            let mut redis = ctx_ref.redis.clone();
            let score: Option<f64> = redis.zscore(ctx_ref.keys.cache_reads(), member).await.expect("ZSCORE");
            score.is_some()
        }
    })
    .await;

    // The rewarm job every second, writing with the worker's TTLs (300 s for a dashboard).
    let shutdown = CancellationToken::new();
    let settings = every_second("rewarmer", &[Job::Rewarm]);
    let jobs =
        tokio::spawn(scheduled::run(settings, ctx.db.clone(), ctx.redis.clone(), ctx.keys.clone(), shutdown.clone()));
    let key_ref = &key;
    eventually("the read value is rewarmed", Duration::from_secs(10), || async move {
        fresh_until(ctx_ref, key_ref).await.is_some_and(|until| until > Utc::now().timestamp_millis() + 200_000)
    })
    .await;
    // Past the API's TTL and as long again: left alone, the value would be gone.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = api.get(path).await;
    assert_eq!(later.status(), 200);
    assert_eq!(cache_status(later.headers()), Some("HIT"));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), jobs).await.expect("stops on shutdown").expect("no panic");
    let rewarms: Vec<_> = runs(&ctx)
        .await
        .into_iter()
        .filter(|((job, _), _)| job == "rewarm")
        .flat_map(|(_, attempts)| attempts)
        .collect();
    assert!(rewarms.iter().any(|attempt| attempt.summary.contains("1 recomputed, 1 written")), "{rewarms:?}");
}

#[test]
fn schedules_parse_from_configuration() {
    for text in ["0 0 * * * *", "*/30 * * * * *", "@hourly", "*/5 * * * *", "OFF", " off "] {
        assert!(text.parse::<JobSchedule>().is_ok(), "{text:?}");
    }
    for text in ["", "every minute", "61 * * * * *"] {
        assert!(text.parse::<JobSchedule>().is_err(), "{text:?}");
    }
    let five_fields: JobSchedule = "*/5 * * * *".parse().expect("schedule");
    let at = chrono::DateTime::parse_from_rfc3339("2026-01-01T10:02:30Z").expect("time").to_utc();
    let next = five_fields.next_after(at).expect("next");
    assert_eq!(next.to_rfc3339(), "2026-01-01T10:05:00+00:00");
    assert!(matches!("off".parse::<JobSchedule>(), Ok(JobSchedule::Off)));
}

/// The settings are part of `fleet worker`'s and `fleet dev`'s arguments,
/// with their defaults and overrides.
#[test]
fn settings_are_worker_and_dev_arguments() {
    use clap::Parser;
    use fleet::cli::{Cli, Command};

    let urls = ["--redis-url", "redis://127.0.0.1:1", "--database-url", "postgres://fleet@127.0.0.1:1/fleet"];
    let worker = |extra: &[&str]| {
        let args = ["fleet", "worker"].iter().chain(&urls).chain(extra).copied().collect::<Vec<_>>();
        Cli::try_parse_from(args).map(|cli| match cli.command {
            Command::Worker(args) => args.schedule,
            other => panic!("not the worker: {other:?}"),
        })
    };
    let parsed = worker(&["--schedule-rewarm", "off", "--events-retention-days", "7"]).expect("parse");
    assert!(matches!(parsed.schedule_rewarm, JobSchedule::Off));
    assert!(matches!(parsed.schedule_reconcile, JobSchedule::Cron(_)));
    assert_eq!(parsed.events_retention_days, 7);
    assert_eq!(parsed.rewarm_max_items, 1000, "a default");
    assert!(worker(&["--schedule-reconcile", "hourly"]).is_err());

    let dev = Cli::try_parse_from(["fleet", "dev", "--schedule-dead-letter-age", "off"]).expect("parse");
    let Command::Dev(dev) = dev.command else { panic!("not dev") };
    assert!(matches!(dev.schedule.schedule_dead_letter_age, JobSchedule::Off));
}
