//! What each running process of the fleet reports of its dependencies, as
//! its `/readyz` answers: the intake, every worker and every read API write
//! it every [`REPORT_EVERY`], and the operator console's overview lists the
//! processes heard from within [`KEPT`].
//!
//! The reports live in the hash `<prefix>roles:{activity}:reports`, indexed
//! by the sorted set `<prefix>roles:{activity}:seen` (scored by the last
//! report); a process silent for [`KEPT`] is dropped by the next report of
//! any. A process that cannot reach Redis cannot report: its last report
//! stays, with its time, until it is dropped.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::RedisError;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::keys::Keys;
use super::scripts;
use super::{RedisConnection, RedisTarget};
use crate::health::Health;

/// How often a process reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);
/// How long a silent process is still listed.
pub const KEPT: Duration = Duration::from_secs(60);

/// One process's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleReport {
    /// `intake`, `worker` or `api`.
    pub role: String,
    /// The process: its consumer name for a worker, else host and pid.
    pub instance: String,
    /// Whether its `/readyz` answers 200.
    pub ready: bool,
    /// Each dependency: its name, whether the role needs it, and `up` or why not.
    pub dependencies: Vec<DependencyState>,
    pub at: DateTime<Utc>,
}

/// One dependency in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependencyState {
    pub name: String,
    pub required: bool,
    /// `up`, or why it is not.
    pub state: String,
}

/// Records `report` (and forgets processes silent for [`KEPT`]).
pub async fn record(redis: &mut RedisConnection, keys: &Keys, report: &RoleReport) -> Result<(), RedisError> {
    let json = serde_json::to_string(report).unwrap_or_default();
    let _: u64 = scripts::REPORT_ROLE
        .key(keys.roles_seen())
        .key(keys.roles_reports())
        .arg(report.at.timestamp_millis())
        .arg(format!("{}|{}", report.role, report.instance))
        .arg(json)
        .arg(KEPT.as_millis() as u64)
        .invoke_async(redis)
        .await?;
    Ok(())
}

/// The reports of the processes heard from within [`KEPT`] of `now`, by role
/// then instance.
pub async fn recent(
    redis: &mut RedisConnection,
    keys: &Keys,
    now: DateTime<Utc>,
) -> Result<Vec<RoleReport>, RedisError> {
    let since = now.timestamp_millis() - KEPT.as_millis() as i64;
    let processes: Vec<String> =
        redis::cmd("ZRANGEBYSCORE").arg(keys.roles_seen()).arg(since).arg("+inf").query_async(redis).await?;
    if processes.is_empty() {
        return Ok(Vec::new());
    }
    let reports: Vec<Option<String>> =
        redis::cmd("HMGET").arg(keys.roles_reports()).arg(&processes).query_async(redis).await?;
    let mut reports: Vec<RoleReport> =
        reports.into_iter().flatten().filter_map(|json| serde_json::from_str(&json).ok()).collect();
    reports.sort_by(|a, b| (&a.role, &a.instance).cmp(&(&b.role, &b.instance)));
    Ok(reports)
}

impl RoleReport {
    /// What `health` says now, as `/readyz` would.
    pub fn of(role: &str, instance: &str, health: &Health) -> Self {
        let checks = health.checks();
        let ready = checks.iter().all(|check| check.state.is_ok() || !check.required);
        let dependencies = checks
            .into_iter()
            .map(|check| DependencyState {
                name: check.dependency.to_owned(),
                required: check.required,
                state: check.state.err().unwrap_or_else(|| "up".to_owned()),
            })
            .collect();
        Self { role: role.to_owned(), instance: instance.to_owned(), ready, dependencies, at: Utc::now() }
    }
}

/// Reports `health` every [`REPORT_EVERY`] until `stop`, on a connection of
/// its own; a report Redis does not take is skipped (the role's own waits
/// report the outage) and the next one tried.
pub async fn report_until(
    role: &'static str,
    instance: String,
    health: Health,
    target: RedisTarget,
    keys: Keys,
    stop: CancellationToken,
) {
    let mut redis = None;
    let mut every = tokio::time::interval(REPORT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if redis.is_none() {
            redis = super::connect(&target, Duration::from_secs(2)).await.ok();
        }
        let Some(connection) = redis.as_mut() else { continue };
        if let Err(err) = record(connection, &keys, &RoleReport::of(role, &instance, &health)).await {
            tracing::debug!(error = %err, role, "could not report this process's dependencies");
        }
    }
}
