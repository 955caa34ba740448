//! When the blob store's garbage collector may run: [`GcGate`].
//!
//! iroh-blobs runs its collector in a loop of its own (sleep, protect
//! callback, mark, sweep) and has no manual trigger. The loop's sleep is
//! made short ([`GC_POLL`]) and the protect callback waits here for its
//! turn instead: a forced run ([`GcGate::run_now`], the operator's
//! `fleetsync sweep`), or, every `every`, a run only if some folder's
//! index moved since the last one ([`GcGate::mark_dirty`]): an idle node
//! never walks its store. The callback is entered again only once a run
//! is over, which is how a forced run learns it finished.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{watch, Notify};

/// The collector loop's own sleep between runs: short, since the real
/// wait happens in the protect callback.
pub const GC_POLL: Duration = Duration::from_millis(100);

/// What the collector has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcRuns {
    /// Runs that completed.
    pub finished: u64,
    /// Runs given up because the live set could not be read.
    pub skipped: u64,
    /// The highest forced request a run (or a skip) has answered.
    pub served: u64,
    /// Unix ms when the last run completed (0: none yet).
    pub last_ms: u64,
}

/// A forced run did not happen.
#[derive(Debug, thiserror::Error)]
pub enum GcRunError {
    #[error("the blob garbage collector did not run within {0:?} (after a failed run it stops for the life of the process: see the log)")]
    Timeout(Duration),
    #[error("blob garbage collection skipped: the index could not be read (see the log)")]
    Skipped,
}

/// Shared by the protect callback (the collector's side), retention and
/// the admin API (the side that asks).
#[derive(Debug)]
pub struct GcGate {
    every: Duration,
    requested: AtomicU64,
    wake: Notify,
    dirty: AtomicBool,
    /// The request a run in progress answers, if one is in progress.
    running: Mutex<Option<u64>>,
    runs: watch::Sender<GcRuns>,
}

/// Why the callback lets a run go: forced up to this request, or timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn(pub u64);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl GcGate {
    /// A gate that lets timed runs through at most every `every`.
    pub fn new(every: Duration) -> Self {
        GcGate {
            every,
            requested: AtomicU64::new(0),
            wake: Notify::new(),
            // The store may hold garbage from the last run of the process.
            dirty: AtomicBool::new(true),
            running: Mutex::new(None),
            runs: watch::channel(GcRuns::default()).0,
        }
    }

    /// Some index changed: the next timed turn runs.
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    pub fn runs(&self) -> GcRuns {
        *self.runs.borrow()
    }

    /// The collector's side, first thing in every protect callback: the
    /// run before (if any) is over; wait until the next may start.
    pub async fn next_turn(&self) -> Turn {
        self.finish_running();
        loop {
            let asked = self.requested.load(Ordering::SeqCst);
            if asked > self.runs.borrow().served {
                return self.start(asked);
            }
            let woken = tokio::time::timeout(self.every, self.wake.notified()).await;
            if woken.is_err() && self.dirty.load(Ordering::Relaxed) {
                return self.start(self.requested.load(Ordering::SeqCst));
            }
        }
    }

    fn start(&self, asked: u64) -> Turn {
        self.dirty.store(false, Ordering::Relaxed);
        *self.running.lock().expect("gc gate lock") = Some(asked);
        Turn(asked)
    }

    fn finish_running(&self) {
        if let Some(asked) = self.running.lock().expect("gc gate lock").take() {
            self.runs.send_modify(|r| {
                r.finished += 1;
                r.served = r.served.max(asked);
                r.last_ms = now_ms();
            });
        }
    }

    /// The turn's live set could not be read: no run (forced requests up
    /// to the turn's are answered with [`GcRunError::Skipped`]).
    pub fn skip(&self, turn: Turn) {
        self.running.lock().expect("gc gate lock").take();
        self.dirty.store(true, Ordering::Relaxed);
        self.runs.send_modify(|r| {
            r.skipped += 1;
            r.served = r.served.max(turn.0);
        });
    }

    /// Ask for a run now and wait (at most `wait`) until one that started
    /// after this call is over.
    pub async fn run_now(&self, wait: Duration) -> Result<GcRuns, GcRunError> {
        let mut rx = self.runs.subscribe();
        let before = *rx.borrow_and_update();
        let asked = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        let done = tokio::time::timeout(wait, rx.wait_for(|r| r.served >= asked))
            .await
            .map_err(|_| GcRunError::Timeout(wait))?
            .map(|r| *r)
            .map_err(|_| GcRunError::Timeout(wait))?;
        if done.skipped > before.skipped && done.finished == before.finished {
            return Err(GcRunError::Skipped);
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The collector loop as iroh-blobs runs it: callback, run, poll sleep.
    fn collector(gate: Arc<GcGate>, runs: Arc<AtomicU64>) {
        tokio::spawn(async move {
            loop {
                let _turn = gate.next_turn().await;
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(GC_POLL).await;
            }
        });
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_gate_never_runs_a_dirty_one_runs_once_per_period() {
        let gate = Arc::new(GcGate::new(Duration::from_secs(600)));
        let runs = Arc::new(AtomicU64::new(0));
        collector(gate.clone(), runs.clone());
        // Dirty at start: one run after the first period, then nothing.
        tokio::time::sleep(Duration::from_secs(601)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(6000)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "idle: no run");
        gate.mark_dirty();
        tokio::time::sleep(Duration::from_secs(601)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "dirty: one more run");
    }

    #[tokio::test(start_paused = true)]
    async fn a_forced_run_starts_at_once_and_is_reported_when_over() {
        let gate = Arc::new(GcGate::new(Duration::from_secs(600)));
        let runs = Arc::new(AtomicU64::new(0));
        collector(gate.clone(), runs.clone());
        let r = gate.run_now(Duration::from_secs(5)).await.unwrap();
        assert_eq!(r.finished, 1);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let r = gate.run_now(Duration::from_secs(5)).await.unwrap();
        assert_eq!(r.finished, 2, "each request gets a run of its own");
    }

    #[tokio::test(start_paused = true)]
    async fn a_skipped_run_is_an_error_and_a_dead_collector_a_timeout() {
        let gate = Arc::new(GcGate::new(Duration::from_secs(600)));
        let g = gate.clone();
        tokio::spawn(async move {
            let turn = g.next_turn().await;
            g.skip(turn);
            // The collector stops here (as after a failed run).
        });
        assert!(matches!(
            gate.run_now(Duration::from_secs(5)).await,
            Err(GcRunError::Skipped)
        ));
        assert!(matches!(
            gate.run_now(Duration::from_secs(5)).await,
            Err(GcRunError::Timeout(_))
        ));
    }
}
