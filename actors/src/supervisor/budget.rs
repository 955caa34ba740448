//! The restart budget: how many restarts each actor may have within a
//! sliding window before the node gives up (a crash loop is for the
//! service manager, which restarts the whole process).

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use super::ActorId;

/// How many restarts each actor may have within a sliding window; past
/// it, the node gives up (a crash loop is for the service manager).
#[derive(Debug)]
pub struct RestartBudget {
    max: usize,
    window: Duration,
    seen: HashMap<ActorId, VecDeque<Instant>>,
}

impl RestartBudget {
    pub fn new(max: usize, window: Duration) -> Self {
        RestartBudget {
            max,
            window,
            seen: HashMap::new(),
        }
    }

    /// Count a restart of `id` at `now`. `Err(n)`: the budget is spent
    /// (`n` earlier restarts within the window).
    pub fn spend(&mut self, id: &ActorId, now: Instant) -> Result<(), usize> {
        let q = self.seen.entry(id.clone()).or_default();
        q.push_back(now);
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            q.pop_front();
        }
        if q.len() > self.max {
            Err(q.len() - 1)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_budget_allows_max_per_window_per_actor() {
        let mut b = RestartBudget::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let hasher = ActorId::Hasher("f".into());
        assert_eq!(b.spend(&hasher, t0), Ok(()));
        assert_eq!(b.spend(&hasher, t0 + Duration::from_secs(1)), Ok(()));
        assert_eq!(b.spend(&ActorId::Retention, t0), Ok(()), "per actor");
        assert_eq!(b.spend(&hasher, t0 + Duration::from_secs(2)), Err(2));
        // Once the window has passed, the old restarts no longer count.
        assert_eq!(b.spend(&hasher, t0 + Duration::from_secs(120)), Ok(()));
    }
}
