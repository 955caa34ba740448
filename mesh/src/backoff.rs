//! Backoff waits with jitter, for the loops of this crate and of the
//! actors (peer redials, index resubscribes, failed-path and receiver
//! retries), built on `backon`.
//!
//! Every wait is random within `[d/2, d]`, where `d` doubles from the
//! first wait to the cap: the nodes of a fleet that lost the same peer
//! (a hub restarting) or hit the same failure do not retry in step, and a
//! wait is never longer than its cap. (backon's jitter adds up to `d` on
//! top of `d`, so it is given half the bounds.)
//!
//! [`Backoff`] is for state machines that keep their backoff between
//! events (a dial fails, later another one does) and start over after a
//! success; [`Backoff::nth_wait`] is for callers that count failures
//! themselves (one count per pending row, no state per row).

use std::time::Duration;

use backon::{BackoffBuilder, ConstantBuilder, ExponentialBackoff, ExponentialBuilder};

/// Doubling waits with jitter, from `first` up to `max`.
#[derive(Debug)]
pub struct Backoff {
    policy: ExponentialBuilder,
    waits: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        let policy = policy(first, max);
        Backoff {
            policy,
            waits: policy.build(),
            max,
        }
    }

    /// The wait before the next attempt, after one more failure: the
    /// n-th call (since a reset) lies in `[d/2, d]` with
    /// `d = min(first × 2^(n-1), max)`.
    pub fn next_wait(&mut self) -> Duration {
        // Built without a limit on attempts: the iterator never ends.
        self.waits.next().unwrap_or(self.max)
    }

    /// It worked: the next failure waits the first wait again.
    pub fn reset(&mut self) {
        self.waits = self.policy.build();
    }

    /// The wait after `failures` failures in a row (≥ 1; 0 counts as 1),
    /// as the `failures`-th [`Backoff::next_wait`] would be. Doublings
    /// past the cap change nothing, so few steps are walked whatever the
    /// count.
    pub fn nth_wait(first: Duration, max: Duration, failures: u32) -> Duration {
        let steps = failures.saturating_sub(1).min(doublings_to(first, max));
        Backoff::new(first, max)
            .waits
            .nth(steps as usize)
            .unwrap_or(max)
    }
}

/// A random wait in `[d/2, d]` (not a backoff: one spread-out moment).
pub fn spread(d: Duration) -> Duration {
    ConstantBuilder::new()
        .with_delay(d / 2)
        .with_jitter()
        .build()
        .next()
        .unwrap_or(d)
}

fn policy(first: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(first / 2)
        .with_max_delay((max / 2).max(first / 2))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// Doublings from `first` until `max` is reached.
fn doublings_to(first: Duration, max: Duration) -> u32 {
    let mut d = first.max(Duration::from_nanos(1));
    let mut n = 0;
    while d < max && n < 64 {
        d = d.saturating_mul(2);
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(10);

    fn within(w: Duration, d: Duration) -> bool {
        w >= d / 2 && w <= d
    }

    #[test]
    fn the_nth_wait_lies_in_the_upper_half_of_a_doubling_bound() {
        let mut b = Backoff::new(FIRST, MAX);
        for n in 0..8u32 {
            let d = (FIRST * 2u32.pow(n)).min(MAX);
            let w = b.next_wait();
            assert!(
                within(w, d),
                "wait {} is {w:?}, not in [{:?}, {d:?}]",
                n + 1,
                d / 2
            );
        }
    }

    #[test]
    fn waits_never_exceed_the_cap() {
        let mut b = Backoff::new(FIRST, MAX);
        let waits: Vec<_> = (0..200).map(|_| b.next_wait()).collect();
        assert!(waits.iter().all(|w| *w <= MAX));
        assert!(waits[100..].iter().all(|w| within(*w, MAX)));
    }

    #[test]
    fn a_reset_starts_over_from_the_first_wait() {
        let mut b = Backoff::new(FIRST, MAX);
        for _ in 0..10 {
            b.next_wait();
        }
        b.reset();
        assert!(within(b.next_wait(), FIRST));
    }

    #[test]
    fn waits_are_spread_not_in_step() {
        let waits: std::collections::HashSet<Duration> = (0..50)
            .map(|_| Backoff::new(FIRST, MAX).next_wait())
            .collect();
        assert!(
            waits.len() > 10,
            "{} distinct first waits of 50",
            waits.len()
        );
        let spreads: std::collections::HashSet<Duration> = (0..50).map(|_| spread(MAX)).collect();
        assert!(spreads.iter().all(|w| within(*w, MAX)));
        assert!(
            spreads.len() > 10,
            "{} distinct spreads of 50",
            spreads.len()
        );
    }

    #[test]
    fn nth_wait_matches_the_stateful_backoff_and_any_count_is_cheap() {
        for n in 1..=8u32 {
            let d = (FIRST * 2u32.pow(n - 1)).min(MAX);
            assert!(within(Backoff::nth_wait(FIRST, MAX, n), d), "wait {n}");
        }
        assert!(within(Backoff::nth_wait(FIRST, MAX, 0), FIRST));
        assert!(within(Backoff::nth_wait(FIRST, MAX, u32::MAX), MAX));
    }
}
