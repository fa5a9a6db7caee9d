//! What clients without a valid signature may cost: after
//! [`Refusals::limit`] refusals (401) from one address within a minute,
//! that address gets 429 before any key is tried, until its minute is out.
//!
//! Counted in this process's memory, per client address (the forwarded
//! client behind a proxy of `FLEET_TRUSTED_PROXIES`, else the peer): an
//! intake that restarts forgets, which costs an attacker nothing it could
//! not have had from another intake anyway. Thinkific's own deliveries are
//! signed, so they are never counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window refusals are counted in.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// Addresses remembered at most; past it, those whose window is over go.
const MAX_ADDRESSES: usize = 100_000;

/// Refusals per client address in the current window.
#[derive(Debug)]
pub(crate) struct Refusals {
    /// Refusals allowed per address and window; 0: no limit.
    limit: u32,
    counts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Refusals {
    pub fn new(limit: u32) -> Self {
        Self { limit, counts: Mutex::default() }
    }

    /// Whether `client` used up its refusals for this window.
    pub(crate) fn exhausted(&self, client: IpAddr) -> bool {
        if self.limit == 0 {
            return false;
        }
        let counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.get(&client).is_some_and(|(since, count)| since.elapsed() < WINDOW && *count >= self.limit)
    }

    /// Counts a refusal of `client`.
    pub fn record(&self, client: IpAddr) {
        if self.limit == 0 {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if counts.len() >= MAX_ADDRESSES {
            counts.retain(|_, (since, _)| since.elapsed() < WINDOW);
        }
        let entry = counts.entry(client).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_held_after_its_refusals_and_others_are_not() {
        let refusals = Refusals::new(3);
        let (client, other): (IpAddr, IpAddr) = ([192, 0, 2, 1].into(), [192, 0, 2, 2].into());
        for _ in 0..3 {
            assert!(!refusals.exhausted(client));
            refusals.record(client);
        }
        assert!(refusals.exhausted(client));
        assert!(!refusals.exhausted(other));
        let unlimited = Refusals::new(0);
        (0..10).for_each(|_| unlimited.record(client));
        assert!(!unlimited.exhausted(client));
    }
}
