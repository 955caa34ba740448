//! How an actor shows that its work moves, and how the supervisor judges
//! it: [`Health`], one per actor *incarnation*.
//!
//! ```text
//!  actor ── begin() ─► Work guard (busy + 1) ── progress() ── drop (busy − 1)
//!    │                                   │
//!    └── spawn(task) (abortable)         ▼
//!  supervisor ── vitals() ─► judge(): Healthy | Stalled (busy, no progress
//!                                     for stall_timeout) | NoAnswer (ping)
//!             ── retire() on replacement: tasks aborted, fence closed
//! ```
//!
//! A pong proves only that the actor's thread is free; [`Vitals`] say
//! whether the work it has taken on moves. Replacing an actor *retires*
//! its `Health`: every task it registered is aborted, and anything the old
//! incarnation still tries afterwards (a late index commit, a late reply)
//! checks [`Health::is_current`] — the generation fence — and does not
//! take effect.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use tokio::task::{AbortHandle, JoinHandle};

use crate::rt;

/// Milliseconds since the first call in this process: monotonic, cheap,
/// and small enough for an atomic.
pub fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One incarnation of one actor: what it reports, what the supervisor reads.
#[derive(Debug)]
pub struct Health {
    generation: u64,
    /// Units of work in flight (a hash batch, a round, a transfer, …).
    busy: AtomicUsize,
    /// When work last moved ([`now_ms`]).
    last_progress: AtomicU64,
    /// When the actor last answered a ping ([`now_ms`]).
    last_pong: AtomicU64,
    /// Set when this incarnation was replaced: the fence.
    retired: AtomicBool,
    /// Tasks this incarnation started; aborted when it is retired.
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A snapshot of an incarnation's vital signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vitals {
    pub generation: u64,
    pub busy: usize,
    pub last_progress_ms: u64,
    pub last_pong_ms: u64,
}

/// The supervisor's judgement of one incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// Work is in flight and has not moved for this long.
    Stalled {
        idle: Duration,
    },
    /// The actor's thread has not answered a ping for this long.
    NoAnswer {
        silent: Duration,
    },
}

/// Judge `v` at `now_ms`: an actor that has work in flight must show
/// progress within `stall_timeout`, and every actor must answer pings
/// within it. Idle actors with nothing to do are healthy however long ago
/// they last made progress.
pub fn judge(v: Vitals, now_ms: u64, stall_timeout: Duration) -> Verdict {
    let limit = stall_timeout.as_millis() as u64;
    let silent = now_ms.saturating_sub(v.last_pong_ms);
    if silent > limit {
        return Verdict::NoAnswer {
            silent: Duration::from_millis(silent),
        };
    }
    let idle = now_ms.saturating_sub(v.last_progress_ms);
    if v.busy > 0 && idle > limit {
        return Verdict::Stalled {
            idle: Duration::from_millis(idle),
        };
    }
    Verdict::Healthy
}

impl Health {
    /// A fresh incarnation: no work, progress and pong "just now".
    pub fn new(generation: u64) -> Arc<Self> {
        let now = now_ms();
        Arc::new(Health {
            generation,
            busy: AtomicUsize::new(0),
            last_progress: AtomicU64::new(now),
            last_pong: AtomicU64::new(now),
            retired: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A unit of work starts; it counts as in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> Work {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.progress();
        Work {
            health: self.clone(),
        }
    }

    /// Work moved (a file hashed, bytes received, a batch committed).
    pub fn progress(&self) {
        self.last_progress.store(now_ms(), Ordering::Relaxed);
    }

    /// The actor answered a ping.
    pub fn pong(&self) {
        self.last_pong.store(now_ms(), Ordering::Relaxed);
    }

    pub fn vitals(&self) -> Vitals {
        Vitals {
            generation: self.generation,
            busy: self.busy.load(Ordering::Relaxed),
            last_progress_ms: self.last_progress.load(Ordering::Relaxed),
            last_pong_ms: self.last_pong.load(Ordering::Relaxed),
        }
    }

    /// Run `fut` on the node runtime as work of this incarnation: it is
    /// aborted when the incarnation is retired (and not started at all if
    /// it already is).
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = rt::spawn(fut);
        let mut tasks = self.tasks.lock().expect("tasks lock");
        tasks.retain(|t| !t.is_finished());
        if self.retired.load(Ordering::Acquire) {
            handle.abort();
        } else {
            tasks.push(handle.abort_handle());
        }
        handle
    }

    /// Still the current incarnation? Effects of a replaced one (a commit,
    /// a reply) must not take place: check this right before them.
    pub fn is_current(&self) -> bool {
        !self.retired.load(Ordering::Acquire)
    }

    /// This incarnation is being replaced: close the fence and abort every
    /// task it started.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for t in tasks {
            t.abort();
        }
    }
}

/// Work in flight; progress is recorded when it ends too.
#[derive(Debug)]
pub struct Work {
    health: Arc<Health>,
}

impl Work {
    pub fn progress(&self) {
        self.health.progress();
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        self.health.busy.fetch_sub(1, Ordering::Relaxed);
        self.health.progress();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(10);

    fn vitals(busy: usize, progress: u64, pong: u64) -> Vitals {
        Vitals {
            generation: 1,
            busy,
            last_progress_ms: progress,
            last_pong_ms: pong,
        }
    }

    #[test]
    fn busy_work_without_progress_past_the_timeout_is_a_stall() {
        let t = 100_000;
        assert_eq!(judge(vitals(1, t - 9_000, t), t, STALL), Verdict::Healthy);
        assert_eq!(
            judge(vitals(1, t - 10_001, t), t, STALL),
            Verdict::Stalled {
                idle: Duration::from_millis(10_001)
            }
        );
    }

    #[test]
    fn an_idle_actor_is_healthy_however_old_its_last_progress() {
        let t = 1_000_000;
        assert_eq!(judge(vitals(0, 0, t), t, STALL), Verdict::Healthy);
    }

    #[test]
    fn an_unanswered_ping_past_the_timeout_is_no_answer_even_when_idle() {
        let t = 100_000;
        let v = judge(vitals(0, t, t - 10_500), t, STALL);
        assert_eq!(
            v,
            Verdict::NoAnswer {
                silent: Duration::from_millis(10_500)
            }
        );
    }

    #[test]
    fn work_guards_count_in_flight_work_and_record_progress() {
        let h = Health::new(3);
        assert_eq!(h.vitals().busy, 0);
        let a = h.begin();
        let b = h.begin();
        assert_eq!(h.vitals().busy, 2);
        drop(a);
        assert_eq!(h.vitals().busy, 1);
        b.progress();
        drop(b);
        let v = h.vitals();
        assert_eq!((v.busy, v.generation), (0, 3));
        assert!(v.last_progress_ms >= v.last_pong_ms);
    }

    #[tokio::test]
    async fn retiring_aborts_the_incarnations_tasks_and_closes_the_fence() {
        let h = Health::new(1);
        let task = h.spawn(std::future::pending::<()>());
        assert!(h.is_current());
        h.retire();
        assert!(!h.is_current(), "late effects see the fence");
        let err = task.await.expect_err("aborted");
        assert!(err.is_cancelled());
        // A task started after retirement never runs.
        let late = h.spawn(async { 42 });
        assert!(late.await.expect_err("aborted at once").is_cancelled());
    }
}
