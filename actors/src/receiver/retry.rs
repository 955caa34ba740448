//! When a pending entry that could not be applied is tried again.
//!
//! Each failure has a [`Wait`] (from its [`Disposition`]): a local edit
//! racing the apply waits until the watcher has indexed it; a directory
//! whose contents' deletions have not landed yet is retried soon; anything
//! else backs off, doubling up to a minute (jittered: [`Backoff`]). A peer
//! that connects resets every wait (it may have the content). The map is
//! bounded.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use fleetsync_mesh::backoff::Backoff;

use crate::apply::Disposition;

/// A pending row: (path, peer that announced it).
pub type Key = (String, [u8; 32]);

/// First retry of a directory waiting for its contents' deletions.
const SOON_FIRST: Duration = Duration::from_millis(50);
/// First retry of anything else (content on its way, a disk error).
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// No wait grows beyond this.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Beyond a settle window twice over, the watcher has indexed the edit.
const RACE_MARGIN: Duration = Duration::from_millis(100);
/// Attempts after which a failure is worth a warning: the first time it
/// looks persistent, then every so often (not on every retry).
const WARN_SOON_FIRST: u32 = 8;
const WARN_SOON_EVERY: u32 = 20;
const WARN_BACKOFF_FIRST: u32 = 3;
const WARN_BACKOFF_EVERY: u32 = 10;
/// Entries remembered at most; past it every wait is forgotten (bounded
/// memory; the rows stay pending and are simply tried again).
pub const MAX_RETRY_ENTRIES: usize = 100_000;

/// How long a failed entry waits before its next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A local edit is settling: after it is indexed.
    Race,
    /// Other entries must land first: soon, doubling.
    Soon,
    /// Anything else: doubling up to a minute.
    Backoff,
    /// The disk is full: doubling up to a minute like [`Wait::Backoff`]
    /// (space comes back on its own time), warned about at once.
    NoSpace,
}

impl Wait {
    /// The wait for a failure that is to be retried (`None`: rejected).
    pub fn of(d: Disposition) -> Option<Wait> {
        match d {
            Disposition::Reject => None,
            Disposition::LocalRace => Some(Wait::Race),
            Disposition::Soon => Some(Wait::Soon),
            Disposition::Backoff => Some(Wait::Backoff),
            Disposition::NoSpace => Some(Wait::NoSpace),
        }
    }

    /// Delay before attempt `attempts + 1` (`attempts` ≥ 1): a race waits
    /// a fixed time (the watcher's, not a backoff); the others back off
    /// with jitter, so rows failing together are not retried in step.
    pub fn delay(self, settle: Duration, attempts: u32) -> Duration {
        match self {
            Wait::Race => settle * 2 + RACE_MARGIN,
            Wait::Soon => Backoff::nth_wait(SOON_FIRST, MAX_WAIT, attempts),
            Wait::Backoff | Wait::NoSpace => Backoff::nth_wait(BACKOFF_FIRST, MAX_WAIT, attempts),
        }
    }

    /// Worth a warning: persistent, not just content on its way.
    pub fn warn(self, attempts: u32) -> bool {
        match self {
            Wait::Race => false,
            Wait::Soon => attempts == WARN_SOON_FIRST || attempts.is_multiple_of(WARN_SOON_EVERY),
            Wait::Backoff => {
                attempts == WARN_BACKOFF_FIRST || attempts.is_multiple_of(WARN_BACKOFF_EVERY)
            }
            Wait::NoSpace => attempts == 1 || attempts.is_multiple_of(WARN_BACKOFF_EVERY),
        }
    }
}

#[derive(Debug)]
struct State {
    next: Instant,
    attempts: u32,
}

/// Failed entries and when each is due again.
#[derive(Debug, Default)]
pub struct Retries {
    map: HashMap<Key, State>,
}

impl Retries {
    /// Record a failure; returns the attempt count and when it is due.
    pub fn failed(
        &mut self,
        key: Key,
        wait: Wait,
        settle: Duration,
        now: Instant,
    ) -> (u32, Instant) {
        if self.map.len() >= MAX_RETRY_ENTRIES && !self.map.contains_key(&key) {
            self.map.clear();
        }
        let s = self.map.entry(key).or_insert(State {
            next: now,
            attempts: 0,
        });
        s.attempts += 1;
        s.next = now + wait.delay(settle, s.attempts);
        (s.attempts, s.next)
    }

    /// Done with (applied, rejected, or nothing to do).
    pub fn done(&mut self, key: &Key) {
        self.map.remove(key);
    }

    /// Keys not due yet: the next round leaves them alone.
    pub fn waiting(&self, now: Instant) -> HashSet<Key> {
        self.map
            .iter()
            .filter(|(_, s)| s.next > now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Every row with a retry mark.
    pub fn keys(&self) -> HashSet<Key> {
        self.map.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn any_due(&self, now: Instant) -> bool {
        self.map.values().any(|s| s.next <= now)
    }

    /// A new peer may have what everyone waits for: all due now.
    pub fn wake_all(&mut self, now: Instant) {
        for s in self.map.values_mut() {
            s.next = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_millis(200);

    fn key(p: &str) -> Key {
        (p.to_string(), [1; 32])
    }

    /// Is `w` the jittered wait for step `d` (within `[d/2, d]`)?
    fn within(w: Duration, d: Duration) -> bool {
        w >= d / 2 && w <= d
    }

    #[test]
    fn backoff_doubles_from_half_a_second_to_a_minute() {
        for (a, ms) in [(1, 500), (2, 1000), (3, 2000), (4, 4000)] {
            let w = Wait::Backoff.delay(SETTLE, a);
            assert!(within(w, Duration::from_millis(ms)), "attempt {a}: {w:?}");
        }
        assert!(within(Wait::Backoff.delay(SETTLE, 40), MAX_WAIT));
        assert!(within(
            Wait::Soon.delay(SETTLE, 1),
            Duration::from_millis(50)
        ));
        assert!(within(Wait::Soon.delay(SETTLE, u32::MAX), MAX_WAIT));
        assert!((1..200).all(|a| Wait::Soon.delay(SETTLE, a) <= MAX_WAIT));
    }

    #[test]
    fn a_race_waits_for_two_settle_windows_whatever_the_attempt() {
        let want = SETTLE * 2 + RACE_MARGIN;
        assert_eq!(Wait::Race.delay(SETTLE, 1), want);
        assert_eq!(Wait::Race.delay(SETTLE, 30), want);
        assert!(!Wait::Race.warn(100), "races are never worth a warning");
    }

    #[test]
    fn only_persistent_failures_warn() {
        let warned: Vec<u32> = (1..=30).filter(|a| Wait::Backoff.warn(*a)).collect();
        assert_eq!(warned, vec![3, 10, 20, 30]);
        let soon: Vec<u32> = (1..=40).filter(|a| Wait::Soon.warn(*a)).collect();
        assert_eq!(soon, vec![8, 20, 40]);
    }

    #[test]
    fn dispositions_map_to_waits_and_rejects_are_not_retried() {
        assert_eq!(Wait::of(Disposition::Reject), None);
        assert_eq!(Wait::of(Disposition::LocalRace), Some(Wait::Race));
        assert_eq!(Wait::of(Disposition::Soon), Some(Wait::Soon));
        assert_eq!(Wait::of(Disposition::Backoff), Some(Wait::Backoff));
        assert_eq!(Wait::of(Disposition::NoSpace), Some(Wait::NoSpace));
    }

    #[test]
    fn no_space_backs_off_like_a_disk_error_and_warns_at_once() {
        for a in 1..=20 {
            let d = (BACKOFF_FIRST * 2u32.pow(a - 1)).min(MAX_WAIT);
            assert!(within(Wait::NoSpace.delay(SETTLE, a), d), "attempt {a}");
        }
        let warned: Vec<u32> = (1..=30).filter(|a| Wait::NoSpace.warn(*a)).collect();
        assert_eq!(warned, vec![1, 10, 20, 30]);
    }

    #[test]
    fn a_failed_entry_waits_then_is_due_and_a_new_peer_wakes_everything() {
        let mut r = Retries::default();
        let t0 = Instant::now();
        let (n, due) = r.failed(key("a"), Wait::Backoff, SETTLE, t0);
        assert_eq!(n, 1);
        assert!(within(due - t0, BACKOFF_FIRST), "{:?}", due - t0);
        let (n, _) = r.failed(key("a"), Wait::Backoff, SETTLE, t0);
        assert_eq!(n, 2, "attempts accumulate");
        assert!(r.waiting(t0).contains(&key("a")));
        assert!(!r.any_due(t0));
        r.wake_all(t0);
        assert!(r.any_due(t0));
        assert!(r.waiting(t0).is_empty());
        r.done(&key("a"));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn the_retry_map_is_bounded() {
        let mut r = Retries::default();
        let t0 = Instant::now();
        for i in 0..MAX_RETRY_ENTRIES {
            r.failed((i.to_string(), [0; 32]), Wait::Soon, SETTLE, t0);
        }
        assert_eq!(r.len(), MAX_RETRY_ENTRIES);
        r.failed(key("one more"), Wait::Soon, SETTLE, t0);
        assert_eq!(r.len(), 1, "over the bound, the old waits are forgotten");
    }
}
