//! What the supervisor last saw of every actor, shared with the rest of the
//! node: `fleetsync status`, `/metrics`, and the systemd watchdog read it
//! without asking any actor (so they answer even when one is stuck).
//!
//! Freshness, not flags: the board is healthy only while the supervisor
//! itself keeps writing it (a wedged supervisor stops feeding the
//! watchdog) and every actor answered its last pings and shows progress.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use crate::health::now_ms;

/// One actor as the supervisor last judged it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ActorState {
    /// `hasher:<folder>`, `distributor`, …
    pub name: String,
    pub healthy: bool,
    /// Replacements since the node started.
    pub restarts: u64,
    /// How long ago its work last moved (ms).
    pub last_progress_ms: u64,
    /// Units of work in flight.
    pub busy: usize,
}

/// The supervisor's latest round of judgements.
#[derive(Debug)]
pub struct Board {
    /// When the supervisor last wrote the board ([`now_ms`]); 0: never.
    written_ms: AtomicU64,
    /// How fresh the board must be to count: a few supervision ticks.
    max_age: Duration,
    actors: Mutex<Vec<ActorState>>,
}

/// Ticks the supervisor may miss before its board no longer counts.
const TICKS_OF_GRACE: u32 = 3;

impl Board {
    pub fn new(tick: Duration) -> Self {
        Board {
            written_ms: AtomicU64::new(0),
            max_age: tick * TICKS_OF_GRACE,
            actors: Mutex::new(Vec::new()),
        }
    }

    /// The supervisor's tick: every actor's state, now.
    pub fn write(&self, actors: Vec<ActorState>) {
        self.write_at(actors, now_ms());
    }

    fn write_at(&self, actors: Vec<ActorState>, now: u64) {
        *self.actors.lock().expect("board lock") = actors;
        self.written_ms.store(now.max(1), Ordering::Release);
    }

    pub fn actors(&self) -> Vec<ActorState> {
        self.actors.lock().expect("board lock").clone()
    }

    /// The supervisor wrote the board recently.
    pub fn fresh(&self) -> bool {
        self.fresh_at(now_ms())
    }

    fn fresh_at(&self, now: u64) -> bool {
        let written = self.written_ms.load(Ordering::Acquire);
        written != 0 && now.saturating_sub(written) <= self.max_age.as_millis() as u64
    }

    /// Fresh, and every actor healthy: what feeds `WATCHDOG=1`.
    pub fn healthy(&self) -> bool {
        self.healthy_at(now_ms())
    }

    fn healthy_at(&self, now: u64) -> bool {
        self.fresh_at(now) && self.actors().iter().all(|a| a.healthy)
    }

    pub fn restarts(&self) -> u64 {
        self.actors().iter().map(|a| a.restarts).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, healthy: bool) -> ActorState {
        ActorState {
            name: name.into(),
            healthy,
            restarts: 1,
            last_progress_ms: 0,
            busy: 0,
        }
    }

    #[test]
    fn a_board_never_written_or_gone_stale_is_not_healthy() {
        let board = Board::new(Duration::from_secs(1));
        assert!(!board.healthy_at(5_000), "never written");
        board.write_at(vec![state("hasher:f", true)], 5_000);
        assert!(board.healthy_at(5_000));
        assert!(board.healthy_at(8_000), "three ticks of grace");
        // Past them without a write: the supervisor itself is stuck.
        assert!(!board.fresh_at(8_001));
        assert!(!board.healthy_at(8_001));
    }

    #[test]
    fn one_unhealthy_actor_makes_the_board_unhealthy() {
        let board = Board::new(Duration::from_secs(1));
        board.write(vec![state("hasher:f", true), state("watcher:f", false)]);
        assert!(board.fresh());
        assert!(!board.healthy());
        assert_eq!(board.restarts(), 2);
    }
}
