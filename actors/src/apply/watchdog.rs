//! The no-progress deadline every transfer runs under: [`watched`].
//!
//! ```text
//!  transfer ──► bytes counter (the content trait updates it)
//!                   ▲ looked at every tick
//!  watched ─────────┘ moved: progress (health), deadline pushed back
//!                     still for the stall timeout: the transfer is dropped
//!                     (cancelled) and the caller tries another peer
//! ```
//!
//! One helper for every fetch path (into the store, straight into a file,
//! a batch `GetMany`), so they all give up on a peer the same way.
//! Dropping the transfer's future cancels it; what the store verified
//! stays there, so the next attempt resumes it.

use std::{
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

use crate::health::Health;

/// The byte counter is looked at this many times per stall timeout...
const TICKS_PER_TIMEOUT: u32 = 4;
/// ...and at least this often, so the receiver's progress reaches the
/// supervisor well within its own `stall_timeout`.
const TICK_MAX: Duration = Duration::from_secs(1);
/// Floor for the tick (a zero stall timeout would spin).
const TICK_MIN: Duration = Duration::from_millis(1);

/// How often the counter of a transfer with this stall timeout is read:
/// the transfer is cancelled between `stall` and `stall + tick` after its
/// last byte.
fn tick_for(stall: Duration) -> Duration {
    (stall / TICKS_PER_TIMEOUT).clamp(TICK_MIN, TICK_MAX)
}

/// A transfer received no verified bytes for the stall timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no data for {idle:?}; given up on this peer")]
pub struct Stalled {
    pub idle: Duration,
}

/// Run `transfer` as work of `health`, cancelling it when `bytes` does not
/// move for `stall`.
///
/// Bytes arriving are progress. Waiting within the deadline is reported as
/// progress too: this deadline already guarantees the transfer ends within
/// `stall`, so the supervisor (whose `stall_timeout` is usually the shorter
/// one) must not replace the receiver for a peer that hangs; a watchdog
/// that stops ticking (a wedged runtime) shows as no progress at all.
pub async fn watched<T>(
    transfer: impl Future<Output = T>,
    bytes: &AtomicU64,
    stall: Duration,
    health: &std::sync::Arc<Health>,
) -> Result<T, Stalled> {
    let _work = health.begin();
    let tick = tick_for(stall);
    let mut seen = bytes.load(Ordering::Relaxed);
    let mut moved = Instant::now();
    let mut ticks = tokio::time::interval_at(moved + tick, tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(transfer);
    loop {
        tokio::select! {
            biased;
            out = &mut transfer => return Ok(out),
            _ = ticks.tick() => {
                let now = bytes.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    moved = Instant::now();
                }
                let idle = moved.elapsed();
                if idle >= stall {
                    return Err(Stalled { idle });
                }
                health.progress();
            }
        }
    }
}

/// How often [`capped`] looks at the byte counter.
const CAP_TICK: Duration = Duration::from_millis(20);
/// Bytes a transfer may report beyond the announced size before it is cut
/// (counters may round up to a chunk group).
pub const CAP_SLACK: u64 = 64 << 10;

/// A transfer brought more bytes than its entry announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{received} bytes received, more than the {announced} announced; given up")]
pub struct Oversized {
    pub announced: u64,
    pub received: u64,
}

/// Run `transfer`, cancelling it once `bytes` passes `announced` (plus
/// [`CAP_SLACK`]): content that an entry under-announces (its hash names
/// a bigger blob) never fills the disk past what the free-space check
/// allowed. Dropping the transfer cancels it, as for [`watched`].
pub async fn capped<T>(
    transfer: impl Future<Output = T>,
    bytes: &AtomicU64,
    announced: u64,
) -> Result<T, Oversized> {
    let limit = announced.saturating_add(CAP_SLACK);
    let mut ticks = tokio::time::interval(CAP_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(transfer);
    loop {
        tokio::select! {
            biased;
            out = &mut transfer => return Ok(out),
            _ = ticks.tick() => {
                let received = bytes.load(Ordering::Relaxed);
                if received > limit {
                    return Err(Oversized { announced, received });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const STALL: Duration = Duration::from_secs(30);

    /// A transfer that adds `chunk` bytes every `every`, `times` times, then
    /// either finishes or hangs for good.
    async fn transfer(bytes: &AtomicU64, every: Duration, times: u32, hang: bool) -> u64 {
        for _ in 0..times {
            tokio::time::sleep(every).await;
            bytes.fetch_add(1024, Ordering::Relaxed);
        }
        if hang {
            std::future::pending::<()>().await;
        }
        bytes.load(Ordering::Relaxed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_transfer_that_keeps_moving_is_never_cancelled() {
        let health = Health::new(1);
        let bytes = AtomicU64::new(0);
        let start = Instant::now();
        // A chunk every 20 s for ten minutes: slow, but never stalled.
        let every = Duration::from_secs(20);
        let out = watched(transfer(&bytes, every, 30, false), &bytes, STALL, &health).await;
        assert_eq!(out, Ok(30 * 1024));
        assert!(start.elapsed() >= every * 30);
        assert_eq!(health.vitals().busy, 0, "the transfer's work ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_transfer_that_stops_sending_is_cancelled_one_stall_after_its_last_byte() {
        let health = Health::new(1);
        let bytes = AtomicU64::new(0);
        let start = Instant::now();
        let every = Duration::from_secs(5);
        let out = watched(transfer(&bytes, every, 3, true), &bytes, STALL, &health).await;
        let Err(Stalled { idle }) = out else {
            panic!("a hung transfer completed: {out:?}")
        };
        let last_byte = every * 3;
        assert!(idle >= STALL, "{idle:?}");
        let waited = start.elapsed();
        assert!(
            waited >= last_byte + STALL && waited <= last_byte + STALL + tick_for(STALL),
            "cancelled after {waited:?}"
        );
        assert_eq!(bytes.load(Ordering::Relaxed), 3 * 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_sends_is_given_up_after_the_stall_timeout() {
        let health = Health::new(1);
        let bytes = AtomicU64::new(0);
        let start = Instant::now();
        let stall = Duration::from_millis(400);
        let out = watched(std::future::pending::<()>(), &bytes, stall, &health).await;
        assert!(out.is_err());
        let waited = start.elapsed();
        assert!(
            waited >= stall && waited <= stall + tick_for(stall),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_transfer_is_work_and_waiting_within_its_deadline_is_progress() {
        let health = Health::new(1);
        let bytes = Arc::new(AtomicU64::new(0));
        let h = health.clone();
        let b = bytes.clone();
        let task =
            tokio::spawn(async move { watched(std::future::pending::<()>(), &b, STALL, &h).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(health.vitals().busy, 1, "an in-flight transfer is work");
        let before = health.vitals().last_progress_ms;
        // Real milliseconds pass for `now_ms` (the supervisor's clock).
        std::thread::sleep(Duration::from_millis(5));
        tokio::time::sleep(TICK_MAX * 2).await;
        assert!(
            health.vitals().last_progress_ms > before,
            "ticks report progress"
        );
        assert!(task.await.unwrap().is_err());
        assert_eq!(health.vitals().busy, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transfer_past_its_announced_size_is_cut() {
        let bytes = AtomicU64::new(0);
        // 1 KiB every 10 ms for ever: far past 4 KiB + slack.
        let endless = transfer(&bytes, Duration::from_millis(10), u32::MAX, false);
        let e = capped(endless, &bytes, 4096).await.unwrap_err();
        assert_eq!(e.announced, 4096);
        assert!(e.received > 4096 + CAP_SLACK, "{e}");
        assert!(
            e.received < 4096 + CAP_SLACK + 8 * 1024,
            "cut within a tick: {e}"
        );
        let bytes = AtomicU64::new(0);
        let honest = transfer(&bytes, Duration::from_millis(10), 4, false);
        assert_eq!(capped(honest, &bytes, 4096).await, Ok(4096));
    }
}
