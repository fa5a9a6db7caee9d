//! Whether a role's dependencies (Redis, Postgres) are reachable, and how a
//! role waits for one that is not.
//!
//! No role exits because Redis or Postgres is down, at start-up or later:
//! it waits with backoff ([`Waiter`], [`until_reachable`]), logs once what it
//! waits for (host and port only, never a password), reports it on
//! `/readyz` ([`Health::readyz`]: 503 naming the dependency) and carries on
//! by itself once the dependency answers. SIGTERM ends a wait at once.
//!
//! An error that waiting cannot heal (a refused certificate, a wrong
//! password: [`crate::misconfiguration`]) is waited through the same way,
//! but logged at error level with the setting to change, at most once a
//! minute, and `/readyz` says so.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::response::Response;
use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use crate::misconfiguration::{Diagnose, Misconfiguration};
use crate::telemetry::metrics;
use crate::telemetry::readiness::{self, Check, Dependency};

#[derive(Debug)]
enum State {
    /// Not reached yet since the process started.
    Connecting,
    Up,
    Down {
        error: String,
        since: Instant,
    },
}

#[derive(Debug, Default)]
struct Inner {
    states: BTreeMap<Dependency, State>,
    /// Reported on `/readyz` but not required for it (the read API bypasses
    /// its cache while Redis is down).
    optional: BTreeSet<Dependency>,
    /// When each dependency's misconfiguration was last logged.
    misconfiguration_logged: BTreeMap<Dependency, Instant>,
}

/// How often a misconfiguration that persists is logged again.
const MISCONFIGURATION_LOG_EVERY: Duration = Duration::from_secs(60);

/// Shared between a role's loops (which report) and its `/readyz`. A
/// dependency is required once named in [`Health::requiring`] or reported.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<Inner>>);

impl Health {
    /// Health of a role that cannot work without `dependencies`, none of
    /// them reached yet: not ready until each is.
    pub(crate) fn requiring(dependencies: &[Dependency]) -> Self {
        let health = Self::default();
        health.lock().states.extend(dependencies.iter().map(|dependency| (*dependency, State::Connecting)));
        health
    }

    /// Reports `dependency` on `/readyz` without requiring it.
    pub(crate) fn with_optional(self, dependency: Dependency) -> Self {
        {
            let mut inner = self.lock();
            inner.optional.insert(dependency);
            inner.states.entry(dependency).or_insert(State::Connecting);
        }
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `dependency` failed; the first report of an outage is
    /// logged at error level, later ones at debug. A misconfiguration is
    /// logged at error level with its setting, at most once a minute.
    pub fn unavailable(&self, dependency: Dependency, error: &dyn Diagnose) {
        if let Some(problem) = error.misconfiguration() {
            self.misconfigured(&problem);
            return;
        }
        let mut inner = self.lock();
        let first = !inner.states.values().any(|state| matches!(state, State::Down { .. }));
        if first {
            tracing::error!(
                dependency = dependency.as_str(), error = %error,
                "{} unavailable: consumption paused, retrying with backoff; no event loses an attempt. \
                 Check that it is up and reachable",
                dependency.as_str()
            );
        } else {
            tracing::debug!(dependency = dependency.as_str(), error = %error, "still unavailable");
        }
        Self::set_down(&mut inner, dependency, error);
    }

    /// Records a misconfiguration of its dependency: `/readyz` names it, and
    /// it is logged at error level unless it was in the last minute.
    pub fn misconfigured(&self, problem: &Misconfiguration) {
        let due = {
            let mut inner = self.lock();
            Self::set_down(&mut inner, problem.dependency, &format!("misconfigured: {problem}"));
            let due = inner
                .misconfiguration_logged
                .get(&problem.dependency)
                .is_none_or(|logged| logged.elapsed() >= MISCONFIGURATION_LOG_EVERY);
            if due {
                inner.misconfiguration_logged.insert(problem.dependency, Instant::now());
            }
            due
        };
        if due {
            tracing::error!(
                dependency = problem.dependency.as_str(),
                cause = problem.cause.as_str(),
                detail = %problem.detail,
                "{} cannot be used as configured, and waiting will not change that: {}. Retrying with backoff; \
                 this is logged again each minute until it is fixed",
                problem.dependency.as_str(),
                problem.advice
            );
        }
    }

    /// Records that a start-up wait for `dependency` failed once more,
    /// without logging (the [`Waiter`] logs).
    fn waiting(&self, dependency: Dependency, error: &dyn std::fmt::Display) {
        Self::set_down(&mut self.lock(), dependency, error);
    }

    fn set_down(inner: &mut Inner, dependency: Dependency, error: &dyn std::fmt::Display) {
        let since = match inner.states.get(&dependency) {
            Some(State::Down { since, .. }) => *since,
            _ => Instant::now(),
        };
        inner.states.insert(dependency, State::Down { error: error.to_string(), since });
        metrics::dependency_up(dependency.as_str(), false);
    }

    /// Records that `dependency` answers.
    pub fn up(&self, dependency: Dependency) {
        self.lock().states.insert(dependency, State::Up);
        metrics::dependency_up(dependency.as_str(), true);
    }

    /// Records that the role is making progress again: every dependency
    /// answers.
    pub(crate) fn available(&self) {
        let mut inner = self.lock();
        for (dependency, state) in &mut inner.states {
            if let State::Down { since, .. } = state {
                tracing::info!(
                    dependency = dependency.as_str(),
                    outage_seconds = since.elapsed().as_secs(),
                    "dependency is back; consumption resumed"
                );
            }
            *state = State::Up;
            metrics::dependency_up(dependency.as_str(), true);
        }
    }

    /// `None` when every required dependency answers, else the first that
    /// does not: (dependency, error, seconds).
    pub fn outage(&self) -> Option<(Dependency, String, u64)> {
        let inner = self.lock();
        inner.states.iter().filter(|(dependency, _)| !inner.optional.contains(dependency)).find_map(
            |(dependency, state)| match state {
                State::Up => None,
                State::Connecting => Some((*dependency, "not reached yet".to_owned(), 0)),
                State::Down { error, since } => Some((*dependency, error.clone(), since.elapsed().as_secs())),
            },
        )
    }

    /// `/readyz`, in the one shape every role answers (see
    /// [`crate::telemetry::readiness`]): 200 when every required dependency
    /// answers, else 503; each dependency listed with its state, and why it
    /// is down (`not reached yet` while the role starts).
    pub fn readyz(&self) -> Response {
        readiness::answer(&self.checks())
    }

    /// Each dependency this role tracks, required or not, and its state, as
    /// `/readyz` reports them.
    pub(crate) fn checks(&self) -> Vec<Check> {
        let inner = self.lock();
        inner
            .states
            .iter()
            .map(|(dependency, state)| {
                let state = Self::describe(state);
                if inner.optional.contains(dependency) {
                    Check::optional(dependency.as_str(), state)
                } else {
                    Check::required(dependency.as_str(), state)
                }
            })
            .collect()
    }

    /// What `/readyz` says of `dependency`: `Ok` when it answers, else why
    /// not (`not reached yet` before the first try; the error and how long
    /// the role has been waiting after one failed); `None` when this role
    /// does not track it.
    pub(crate) fn state_of(&self, dependency: Dependency) -> Option<Result<(), String>> {
        self.lock().states.get(&dependency).map(Self::describe)
    }

    fn describe(state: &State) -> Result<(), String> {
        match state {
            State::Up => Ok(()),
            State::Connecting => Err("not reached yet".to_owned()),
            State::Down { error, since } => Err(format!("{error} (waiting for {} s)", since.elapsed().as_secs())),
        }
    }
}

/// The longest pause between two tries of a dependency at start-up: short,
/// so a role starts soon after its database comes up.
const MAX_WAIT_PAUSE: Duration = Duration::from_secs(5);

/// Waits for one dependency: pauses with backoff between tries, logs the
/// first failure at warn (`waiting for redis at host:port`) and the return
/// at info, and keeps [`Health`] up to date.
pub(crate) struct Waiter<'a> {
    health: &'a Health,
    dependency: Dependency,
    address: &'a str,
    backoff: backon::ExponentialBackoff,
    since: Option<Instant>,
}

impl<'a> Waiter<'a> {
    /// `address` is shown in logs: host and port only (see
    /// [`crate::urls::shown_address`]).
    pub fn new(health: &'a Health, dependency: Dependency, address: &'a str) -> Self {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(MAX_WAIT_PAUSE)
            .with_jitter()
            .without_max_times()
            .build();
        Self { health, dependency, address, backoff, since: None }
    }

    /// Records a failed try and pauses; `None` if `stop` fires first.
    pub async fn pause(&mut self, error: &dyn Diagnose, stop: &CancellationToken) -> Option<()> {
        let (dependency, address) = (self.dependency.as_str(), self.address);
        if let Some(problem) = error.misconfiguration() {
            self.since.get_or_insert_with(Instant::now);
            self.health.misconfigured(&problem);
        } else {
            if self.since.is_none() {
                tracing::warn!(
                    dependency, address, error = %error,
                    "waiting for {dependency} at {address}; retrying with backoff until it answers"
                );
                self.since = Some(Instant::now());
            } else {
                tracing::debug!(dependency, address, error = %error, "still waiting");
            }
            self.health.waiting(self.dependency, error);
        }
        let pause = self.backoff.next().unwrap_or(MAX_WAIT_PAUSE);
        tokio::select! {
            () = stop.cancelled() => None,
            () = tokio::time::sleep(pause) => Some(()),
        }
    }

    /// Records that the dependency answered.
    pub fn reached(&mut self) {
        if let Some(since) = self.since.take() {
            let (dependency, address) = (self.dependency.as_str(), self.address);
            tracing::info!(
                dependency,
                address,
                waited_seconds = since.elapsed().as_secs(),
                "{dependency} at {address} answers; carrying on"
            );
        }
        self.health.up(self.dependency);
    }
}

/// Runs `attempt` until it succeeds, waiting with a [`Waiter`] between
/// tries; `None` if `stop` fires first.
pub(crate) async fn until_reachable<T, E, F, Fut>(
    health: &Health,
    dependency: Dependency,
    address: &str,
    stop: &CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    E: Diagnose,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut waiter = Waiter::new(health, dependency, address);
    loop {
        let result = tokio::select! {
            () = stop.cancelled() => return None,
            result = attempt() => result,
        };
        match result {
            Ok(value) => {
                waiter.reached();
                return Some(value);
            }
            Err(error) => waiter.pause(&error, stop).await?,
        }
    }
}
