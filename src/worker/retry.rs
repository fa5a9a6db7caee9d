//! When a failed event is tried again, and when the fleet gives up on it.
//!
//! An event's own fault (Postgres refuses its rows) costs one attempt and
//! schedules a retry after an exponential, jittered delay; so does a crash
//! of the worker that held it (the entry's delivery count). After
//! `max_attempts` the event goes to the dead-letter stream. Infrastructure
//! faults cost nothing: the worker waits for the dependency instead.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The delay before the first retry.
    pub base: Duration,
    /// How much longer each retry waits than the one before.
    pub factor: f32,
    /// The longest delay.
    pub cap: Duration,
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    /// 1 s, 2 s, 4 s … up to 10 min; 10 attempts.
    fn default() -> Self {
        Self { base: Duration::from_secs(1), factor: 2.0, cap: Duration::from_secs(600), max_attempts: 10 }
    }
}

impl RetryPolicy {
    /// Whether an event that has failed `attempts` times gets another try.
    pub(crate) fn allows_another(&self, attempts: u32) -> bool {
        attempts < self.max_attempts
    }

    /// The delay before retrying an event that has failed `attempts` times
    /// (1 for the first failure): `base × factor^(attempts-1)`, capped, plus
    /// up to as much again of random jitter, never above the cap.
    pub fn delay(&self, attempts: u32) -> Duration {
        let attempts = attempts.max(1) as usize;
        ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_factor(self.factor)
            .with_max_delay(self.cap)
            .with_jitter()
            .with_max_times(attempts)
            .build()
            .nth(attempts - 1)
            .unwrap_or(self.cap)
            .min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_doubles_from_one_second_up_to_ten_minutes() {
        let policy = RetryPolicy::default();
        for (attempt, floor) in [(1, 1), (2, 2), (3, 4), (4, 8), (10, 512)] {
            for _ in 0..20 {
                let delay = policy.delay(attempt);
                let floor = Duration::from_secs(floor);
                assert!(delay >= floor && delay <= (floor * 2).min(policy.cap), "attempt {attempt}: {delay:?}");
            }
        }
        assert_eq!(policy.delay(30), policy.cap);
        assert!(policy.allows_another(9) && !policy.allows_another(10));
    }

    #[test]
    fn jitter_spreads_retries() {
        let policy = RetryPolicy::default();
        let delays: std::collections::HashSet<Duration> = (0..20).map(|_| policy.delay(3)).collect();
        assert!(delays.len() > 1, "no jitter: {delays:?}");
    }
}
