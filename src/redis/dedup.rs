//! The deduplication window, kept compact: which Redis sets remember that an
//! event was accepted, and how large they grow.
//!
//! The window only saves work: a redelivery past it is applied again and
//! changes nothing (versioned writes, the `events` table). But a false
//! "duplicate" would lose a new event. So the layout may forget early, never
//! confuse two events:
//!
//! - An event's [`Fingerprint`] is 128 bits of SHA-256 over its (tenant,
//!   event id): 64 bits choose its partition, the other 64 are what is
//!   stored, as a signed decimal, so that Redis keeps a set of them as an
//!   *intset* (8 bytes a member) rather than one key per event (~136 B).
//! - Time is cut into buckets of a quarter of the window (at least 1 s). An
//!   accepted event is added to the set of its partition in the bucket of its
//!   receipt, `<prefix>seen:{shard:<n>}:<bucket>:<partition>`; each set expires as a whole
//!   once no check can reach it any more.
//! - A bucket has as many partitions as keep each set at no more than
//!   [`MEMBERS_PER_SET`] members at the expected rate
//!   (`FLEET_DEDUP_EXPECTED_RATE`), a power of two, well under Redis's
//!   `set-max-intset-entries` (512). Past it a set becomes a hashtable: it
//!   then costs more memory (~60+ B a member) and answers just as right.
//! - An event is a duplicate when its fingerprint is in its partition's set
//!   of the current bucket or of one of the earlier buckets a window reaches
//!   (five sets): every event accepted within the window is found, and some
//!   accepted up to one bucket earlier still are.
//!
//! A new event is wrongly called a duplicate only if one of the at most
//! ~2,000 members it is compared with (five sets of ~400) has the same 64
//! bits: about 1 in 10^16 per event, once in ~300,000 years at a steady
//! 1,000 events/s.
//!
//! Changing the window or the expected rate on a running fleet (or running
//! intakes that disagree on them, or whose clocks disagree) only makes some
//! checks look in other sets than the ones an event went into: those
//! redeliveries are accepted and applied again, harmlessly. Sizing:
//! `docs/operations.md`, "Deduplication memory"; the choice:
//! `docs/decisions/0015-compact-dedup-window.md`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Buckets a window is cut into: a remembered event is kept up to one
/// bucket (a quarter of the window) longer than the window.
pub(crate) const BUCKETS_PER_WINDOW: u64 = 4;

/// The members a set is laid out for at the expected rate: under Redis's
/// `set-max-intset-entries` (512 by default) with room for bursts.
pub(crate) const MEMBERS_PER_SET: u64 = 400;

/// How long a set outlives the last check that can read it: room for intake
/// clocks that disagree by up to this much.
pub(crate) const CLOCK_SKEW_MARGIN: Duration = Duration::from_secs(60);

/// Input of every fingerprint before the ids: a fingerprint is stored and
/// compared across processes and versions, so a change of its input must
/// change this too (and then only costs a window of misses).
const FINGERPRINT_DOMAIN: &[u8] = b"fleet dedup fingerprint v1\0";

/// What the deduplication window remembers of one event: 128 bits of
/// SHA-256 over (tenant, event id), the same in every process and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    member: i64,
    partition_bits: u64,
}

impl Fingerprint {
    /// The fingerprint of event `event_id` of school `tenant_id`. The
    /// tenant's length is hashed before it, so no two (tenant, id) pairs
    /// share an input, whatever characters the ids hold.
    pub fn of(tenant_id: &str, event_id: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(FINGERPRINT_DOMAIN);
        hasher.update((tenant_id.len() as u64).to_be_bytes());
        hasher.update(tenant_id.as_bytes());
        hasher.update(event_id.as_bytes());
        let digest = hasher.finalize();
        let mut member = [0u8; 8];
        member.copy_from_slice(&digest[..8]);
        let mut partition_bits = [0u8; 8];
        partition_bits.copy_from_slice(&digest[8..16]);
        Self { member: i64::from_be_bytes(member), partition_bits: u64::from_be_bytes(partition_bits) }
    }

    /// The set member: 64 bits, as a signed integer so that Redis stores it
    /// in an intset.
    pub fn member(&self) -> i64 {
        self.member
    }
}

/// How the deduplication window is laid out in Redis: bucket length,
/// partitions per bucket, and how long each set lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupWindow {
    window_secs: u64,
    bucket_secs: u64,
    partitions: u64,
}

impl DedupWindow {
    /// The layout that remembers events for at least `window` (at least
    /// 1 s) in sets of at most [`MEMBERS_PER_SET`] members while about
    /// `expected_rate` events arrive per second (at least 1).
    pub fn new(window: Duration, expected_rate: u32) -> Self {
        let window_secs = window.as_secs().max(1);
        let bucket_secs = window_secs.div_ceil(BUCKETS_PER_WINDOW);
        let events_per_bucket = u64::from(expected_rate.max(1)).saturating_mul(bucket_secs);
        let partitions =
            events_per_bucket.div_ceil(MEMBERS_PER_SET).max(1).checked_next_power_of_two().unwrap_or(1 << 63);
        Self { window_secs, bucket_secs, partitions }
    }

    /// The shortest time an accepted event is remembered.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }

    /// The longest time an accepted event is remembered: whole buckets
    /// reaching past the window by one bucket (by up to 3 s more when four
    /// buckets do not make up the window exactly).
    pub(crate) fn longest_remembered(&self) -> Duration {
        Duration::from_secs((self.reach() + 1) * self.bucket_secs)
    }

    /// The length of one time bucket.
    pub(crate) fn bucket_length(&self) -> Duration {
        Duration::from_secs(self.bucket_secs)
    }

    /// The sets each bucket is split into (a power of two).
    pub fn partitions(&self) -> u64 {
        self.partitions
    }

    /// The bucket of an event received at `received_at`.
    pub(crate) fn bucket_of(&self, received_at: DateTime<Utc>) -> u64 {
        received_at.timestamp().max(0).unsigned_abs() / self.bucket_secs
    }

    /// The buckets before `current` that may hold an event accepted less
    /// than a window ago, the latest first.
    pub(crate) fn earlier_buckets(&self, current: u64) -> impl Iterator<Item = u64> {
        (current.saturating_sub(self.reach())..current).rev()
    }

    /// The buckets a check at `current` reads: `current` and the earlier
    /// ones.
    #[cfg(test)]
    pub(crate) fn checked_buckets(&self, current: u64) -> std::ops::RangeInclusive<u64> {
        current.saturating_sub(self.reach())..=current
    }

    /// How many buckets back a window reaches (4 with buckets of a quarter
    /// of it, fewer for windows of a few seconds).
    fn reach(&self) -> u64 {
        self.window_secs.div_ceil(self.bucket_secs)
    }

    /// The partition whose sets hold `fingerprint`.
    pub(crate) fn partition_of(&self, fingerprint: &Fingerprint) -> u64 {
        fingerprint.partition_bits & (self.partitions - 1)
    }

    /// Seconds a bucket's set lives from its first member: as long as a
    /// check can still read it even if that member came at the bucket's
    /// very start, plus [`CLOCK_SKEW_MARGIN`].
    pub fn set_lifetime_secs(&self) -> u64 {
        self.longest_remembered().as_secs() + CLOCK_SKEW_MARGIN.as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix_secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(unix_secs, 0).expect("a valid time")
    }

    #[test]
    fn a_bucket_is_a_quarter_of_the_window_rounded_up_and_at_least_a_second() {
        let bucket = |window_secs| DedupWindow::new(Duration::from_secs(window_secs), 1000).bucket_length().as_secs();
        assert_eq!(bucket(72 * 3600), 18 * 3600);
        assert_eq!(bucket(3600), 900);
        assert_eq!(bucket(4), 1);
        assert_eq!(bucket(7), 2);
        assert_eq!(bucket(1), 1);
        assert_eq!(bucket(0), 1, "a window of 0 s is taken as 1 s");
    }

    #[test]
    fn a_check_reads_at_most_five_sets() {
        for window_secs in 1..=5_000 {
            let dedup = DedupWindow::new(Duration::from_secs(window_secs), 1);
            let checked = dedup.checked_buckets(1_000_000).count();
            assert!((2..=5).contains(&checked), "window {window_secs} s reads {checked} sets");
            let earlier: Vec<u64> = dedup.earlier_buckets(1_000_000).collect();
            assert_eq!(earlier.len(), checked - 1);
            assert!(earlier.windows(2).all(|pair| pair[0] == pair[1] + 1), "latest first, no gaps: {earlier:?}");
        }
        assert_eq!(DedupWindow::new(Duration::from_secs(72 * 3600), 1000).checked_buckets(100), 96..=100);
    }

    #[test]
    fn every_event_accepted_within_the_window_is_checked() {
        for window_secs in 1..=40 {
            let dedup = DedupWindow::new(Duration::from_secs(window_secs), 1);
            let window = window_secs as i64;
            for accepted in 1_700_000_000..1_700_000_000 + 2 * window {
                let bucket = dedup.bucket_of(at(accepted));
                for age in 0..=window {
                    let checked = dedup.checked_buckets(dedup.bucket_of(at(accepted + age)));
                    assert!(checked.contains(&bucket), "window {window} s: accepted at {accepted}, {age} s later");
                }
                let beyond = dedup.longest_remembered().as_secs() as i64;
                let checked = dedup.checked_buckets(dedup.bucket_of(at(accepted + beyond)));
                assert!(!checked.contains(&bucket), "window {window} s: still checked {beyond} s later");
            }
        }
    }

    #[test]
    fn an_event_is_forgotten_one_bucket_after_the_window_at_the_latest() {
        let longest =
            |window_secs| DedupWindow::new(Duration::from_secs(window_secs), 1).longest_remembered().as_secs();
        assert_eq!(longest(72 * 3600), 90 * 3600);
        assert_eq!(longest(4), 5);
        assert_eq!(longest(1), 2);
        assert_eq!(longest(7), 10, "buckets of 2 s: four of them reach back past 7 s");
        for window_secs in 1..=5_000 {
            let dedup = DedupWindow::new(Duration::from_secs(window_secs), 1);
            let longest = dedup.longest_remembered().as_secs();
            assert!(longest > window_secs && longest <= window_secs + dedup.bucket_length().as_secs() + 3);
        }
    }

    #[test]
    fn a_set_lives_as_long_as_a_check_can_read_it() {
        for window_secs in [1, 4, 7, 61, 3600, 72 * 3600] {
            let dedup = DedupWindow::new(Duration::from_secs(window_secs), 1000);
            let bucket_secs = dedup.bucket_length().as_secs() as i64;
            // Created at the start of bucket 100; the last check reading it
            // is in the last second of the last bucket reaching back to 100.
            let created = 100 * bucket_secs;
            let last_reader = (100..).take_while(|bucket| dedup.checked_buckets(*bucket).contains(&100)).last();
            let last_read = (last_reader.expect("read by its own bucket") as i64 + 1) * bucket_secs;
            let lifetime = dedup.set_lifetime_secs() as i64;
            assert!(created + lifetime >= last_read + CLOCK_SKEW_MARGIN.as_secs() as i64, "window {window_secs} s");
            assert!(lifetime <= window_secs as i64 + 2 * bucket_secs + 60, "window {window_secs} s: {lifetime} s");
        }
        assert_eq!(DedupWindow::new(Duration::from_secs(4), 1).set_lifetime_secs(), 5 + 60);
    }

    #[test]
    fn partitions_keep_a_set_at_the_expected_rate_under_400_members() {
        let partitions = |window_secs, rate| DedupWindow::new(Duration::from_secs(window_secs), rate).partitions();
        // 1,000/s for 72 h: 64.8 M events a bucket, 162,000 sets of 400 at least.
        assert_eq!(partitions(72 * 3600, 1000), 262_144);
        assert_eq!(partitions(3600, 20), 64);
        assert_eq!(partitions(3600, 1), 4);
        assert_eq!(partitions(60, 1), 1);
        assert_eq!(partitions(4, 0), 1, "a rate of 0 is taken as 1");
        for window_secs in [1, 60, 3600, 72 * 3600, 90 * 24 * 3600] {
            for rate in [1, 7, 100, 1000, 5000, 1_000_000] {
                let dedup = DedupWindow::new(Duration::from_secs(window_secs), rate);
                let per_bucket = u64::from(rate) * dedup.bucket_length().as_secs();
                let partitions = dedup.partitions();
                assert!(partitions.is_power_of_two());
                assert!(per_bucket.div_ceil(partitions) <= MEMBERS_PER_SET, "{window_secs} s at {rate}/s");
                assert!(
                    partitions == 1 || per_bucket.div_ceil(partitions / 2) > MEMBERS_PER_SET,
                    "no more than needed"
                );
            }
        }
    }

    #[test]
    fn the_partition_is_the_fingerprints_own_bits_within_range() {
        let dedup = DedupWindow::new(Duration::from_secs(3600), 20);
        let mut used = std::collections::HashSet::new();
        for n in 0..10_000 {
            let partition = dedup.partition_of(&Fingerprint::of("184532", &n.to_string()));
            assert!(partition < dedup.partitions());
            used.insert(partition);
        }
        assert_eq!(used.len() as u64, dedup.partitions(), "events spread over every partition");
        let single = DedupWindow::new(Duration::from_secs(60), 1);
        assert_eq!(single.partition_of(&Fingerprint::of("184532", "1")), 0);
    }

    #[test]
    fn a_fingerprint_is_stable_and_keeps_tenant_and_event_id_apart() {
        // Stored in Redis and compared across processes and versions: a
        // change here forgets a whole window. Change FINGERPRINT_DOMAIN with
        // it. (Values computed apart from this code, with Python's hashlib.)
        let fingerprint = Fingerprint::of("184532", "20250316091544118200417");
        assert_eq!(fingerprint.member(), 9183463821511933155);
        assert_eq!(fingerprint.partition_bits, 5238683419186341389);
        assert_ne!(Fingerprint::of("a", "b.c"), Fingerprint::of("a.b", "c"));
        assert_ne!(Fingerprint::of("ab", "c"), Fingerprint::of("a", "bc"));
        assert_ne!(Fingerprint::of("a", "1"), Fingerprint::of("b", "1"));
        assert_eq!(Fingerprint::of("a", "1"), Fingerprint::of("a", "1"));
    }
}
