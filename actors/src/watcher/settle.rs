//! The settle rule as plain state, with no I/O and no actix: every method
//! takes the current `Instant`, so it is tested with explicit times. The
//! watcher actor feeds it events, `lstat` results and hasher outcomes, and
//! does the I/O it asks for.
//!
//! - Dirty paths: when each last changed, what its last `lstat` showed,
//!   and what the last event said of the writer ([`Signal`]). A marked
//!   path gets a first look at once (to learn what it is); it is ready
//!   only once a look a *window* or more after its last change shows the
//!   same `DiskState` as the look before. The window is `settle` after a
//!   plain change, [`CLOSE_WAIT`] after the writer closed the file, and
//!   none after it was moved into place (the first look is enough). Any
//!   later event sets the window anew, and a look that shows something no
//!   event told of restarts it at `settle`. At most [`MAX_DIRTY`] paths
//!   are tracked: past that, [`Settle::mark`] drops them all and asks for
//!   a rescan.
//! - Ready paths: sorted, handed to the hasher in batches
//!   ([`Settle::next_batch`]), each with the state a look saw if a writer
//!   signalled it was done (the hasher hashes such a file at once only
//!   while it still shows that state).
//! - Failed paths (the hasher could not import or commit them): marked
//!   again after a backoff that doubles from [`RETRY_FIRST`] to
//!   [`RETRY_MAX`] while failures continue (each wait random in its upper
//!   half: [`Backoff`]), and resets on a batch without failures.
//! - [`Settle::next_wake`]: the exact time the next of these is due.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use fleetsync_mesh::backoff::Backoff;

use crate::record::DiskState;

/// Most paths tracked one by one before falling back to a rescan: the map
/// costs ~100 bytes a path, so this bounds it to ~10 MB, and a change that
/// touches more paths than this is cheaper to find by one walk anyway.
pub const MAX_DIRTY: usize = 100_000;

/// First wait before failed paths are looked at again: long enough not to
/// spin on a broken index or store, short enough that a passing failure
/// (a full disk that was cleaned up) costs about a second.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);

/// Longest wait between retries of failed paths (the receiver's backoff
/// cap too): a lasting failure costs one attempt a minute.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// How long a file closed after writing must stay quiet before it is
/// ready: another write in that time (the writer reopened it, a second
/// process of a shell pipeline appends, `cp -p` sets times after the
/// close) restarts the wait, so a file written in several opens is not
/// sent after the first. 10 ms covers a follow-up by another process
/// (fork and exec take 1–5 ms here) and late event delivery on a loaded
/// machine, and is a fifth of the 50 ms latency goal.
pub const CLOSE_WAIT: Duration = Duration::from_millis(10);

/// What the event that marked a path says about its writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A plain change (data, metadata, created, removed): the writer may
    /// still be at it, so the path waits `settle`.
    Changed,
    /// Closed after writing (`IN_CLOSE_WRITE`): done, unless another
    /// write follows within [`CLOSE_WAIT`].
    Closed,
    /// Moved into place (`IN_MOVED_TO`, the atomic-write pattern): its
    /// content was complete before the rename.
    MovedIn,
}

/// How long a path stays unchanged before it is ready.
fn window_of(settle: Duration, signal: Signal) -> Duration {
    match signal {
        Signal::Changed => settle,
        Signal::Closed => CLOSE_WAIT.min(settle),
        Signal::MovedIn => Duration::ZERO,
    }
}

/// What [`Settle::mark`] did with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// It is tracked; it is due for its first look at once.
    Tracked,
    /// Too many paths were tracked: all of them were dropped, and only a
    /// rescan finds what changed now.
    Overflow,
}

#[derive(Debug, Clone, Copy)]
struct Dirty {
    /// The last event, or the last look that saw something new.
    changed: Instant,
    /// What the last look showed (`None`: not looked at yet).
    seen: Option<DiskState>,
    /// What the last event said (a look that saw something new makes it
    /// [`Signal::Changed`]).
    signal: Signal,
}

/// Failed paths waiting for their retry, and the current backoff.
#[derive(Debug)]
struct Retry {
    paths: BTreeSet<String>,
    at: Option<Instant>,
    backoff: Backoff,
}

#[derive(Debug)]
pub struct Settle {
    settle: Duration,
    max_dirty: usize,
    dirty: HashMap<String, Dirty>,
    /// Ready paths; `Some`: a writer signalled it was done, and a look
    /// then saw this.
    ready: BTreeMap<String, Option<DiskState>>,
    retry: Retry,
}

impl Settle {
    pub fn new(settle: Duration) -> Self {
        Self::with_max_dirty(settle, MAX_DIRTY)
    }

    /// [`Settle::new`] with another bound on tracked paths (tests).
    pub fn with_max_dirty(settle: Duration, max_dirty: usize) -> Self {
        Settle {
            settle,
            max_dirty,
            dirty: HashMap::new(),
            ready: BTreeMap::new(),
            retry: Retry {
                paths: BTreeSet::new(),
                at: None,
                backoff: Backoff::new(RETRY_FIRST, RETRY_MAX),
            },
        }
    }

    /// Something happened at `rel` at `now`: (re)start its window.
    pub fn mark(&mut self, rel: String, now: Instant) -> Marked {
        self.signalled(rel, Signal::Changed, now)
    }

    /// An event at `rel` at `now` that says `signal`: (re)start its
    /// window, as long as that signal asks for.
    pub fn signalled(&mut self, rel: String, signal: Signal, now: Instant) -> Marked {
        // A path already tracked takes no more room (a write and its close
        // are two events for one path).
        if self.dirty.len() >= self.max_dirty && !self.dirty.contains_key(&rel) {
            self.dirty.clear();
            return Marked::Overflow;
        }
        self.dirty.insert(
            rel,
            Dirty {
                changed: now,
                seen: None,
                signal,
            },
        );
        Marked::Tracked
    }

    /// Paths due for an `lstat` at `now`: never looked at, or settled.
    pub fn due(&self, now: Instant) -> Vec<String> {
        self.dirty
            .iter()
            .filter(|(_, d)| {
                d.seen.is_none()
                    || now.duration_since(d.changed) >= window_of(self.settle, d.signal)
            })
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// The `lstat` results for paths [`Settle::due`] returned at `asked`,
    /// arriving at `now`. A path is ready once it showed the same thing
    /// twice, the second time its window after its last change (moved in:
    /// at its first look); anything no event told of restarts the window
    /// at `settle`.
    pub fn looked(&mut self, results: Vec<(String, DiskState)>, asked: Instant, now: Instant) {
        for (rel, disk) in results {
            let Some(d) = self.dirty.get_mut(&rel) else {
                continue;
            };
            if d.changed > asked {
                continue; // an event arrived while we looked: look again
            }
            let window = window_of(self.settle, d.signal);
            let ready = match d.seen {
                None => {
                    d.seen = Some(disk);
                    window.is_zero()
                }
                Some(prev) if prev == disk => now.duration_since(d.changed) >= window,
                Some(_) => {
                    d.seen = Some(disk);
                    d.changed = now;
                    d.signal = Signal::Changed;
                    false
                }
            };
            if ready {
                self.make_ready(rel, disk);
            }
        }
    }

    /// `rel` showed `disk` for its whole window: hand it on, with that
    /// state if its writer signalled it was done.
    fn make_ready(&mut self, rel: String, disk: DiskState) {
        let Some(d) = self.dirty.remove(&rel) else {
            return;
        };
        let done = (d.signal != Signal::Changed).then_some(disk);
        self.ready.insert(rel, done);
    }

    /// When the next dirty path or retry is due (`now` if one is due
    /// already); `None` if nothing is waiting.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        let dirty = self.dirty.values().map(|d| match d.seen {
            None => now,
            Some(_) => d.changed + window_of(self.settle, d.signal),
        });
        dirty.chain(self.retry.at).min()
    }

    /// Paths that need no settling (a scan found them changed). A path
    /// already ready keeps what its writer signalled.
    pub fn add_ready(&mut self, paths: impl IntoIterator<Item = String>) {
        for p in paths {
            self.ready.entry(p).or_insert(None);
        }
    }

    /// A batch that came back undelivered: ready again, as it was.
    pub fn add_ready_again(
        &mut self,
        batch: impl IntoIterator<Item = (String, Option<DiskState>)>,
    ) {
        for (p, done) in batch {
            let slot = self.ready.entry(p).or_insert(None);
            *slot = slot.or(done);
        }
    }

    /// Take up to `max` ready paths, in path order, each with the state a
    /// look saw after its writer signalled it was done (if it did).
    pub fn next_batch(&mut self, max: usize) -> Vec<(String, Option<DiskState>)> {
        let mut batch = Vec::with_capacity(max.min(self.ready.len()));
        while batch.len() < max {
            match self.ready.pop_first() {
                Some(p) => batch.push(p),
                None => break,
            }
        }
        batch
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// A hasher batch came back at `now` with these paths failed: they are
    /// looked at again after the backoff, which doubles while failures
    /// continue. A batch without failures resets the backoff.
    pub fn batch_done(&mut self, failed: Vec<String>, now: Instant) {
        if failed.is_empty() {
            self.retry.backoff.reset();
            return;
        }
        self.retry.paths.extend(failed);
        // Every failing batch counts, even while a retry is already due:
        // the backoff grows with the failures, not with the retries.
        let wait = self.retry.backoff.next_wait();
        if self.retry.at.is_none() {
            self.retry.at = Some(now + wait);
        }
    }

    /// Mark the failed paths whose backoff is over at `now`.
    pub fn retry_due(&mut self, now: Instant) -> Marked {
        if self.retry.at.is_none_or(|at| at > now) {
            return Marked::Tracked;
        }
        self.retry.at = None;
        for rel in std::mem::take(&mut self.retry.paths) {
            if self.mark(rel, now) == Marked::Overflow {
                return Marked::Overflow;
            }
        }
        Marked::Tracked
    }

    /// Nothing tracked: no path settling, ready, or waiting for a retry.
    /// Until then the index does not have every local change yet.
    pub fn is_idle(&self) -> bool {
        self.dirty.is_empty() && self.ready.is_empty() && self.retry.paths.is_empty()
    }

    #[cfg(test)]
    fn is_dirty(&self, rel: &str) -> bool {
        self.dirty.contains_key(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{LocalStat, Meta};
    use fleetsync_mesh::model::EntryKind;

    const SETTLE: Duration = Duration::from_millis(200);

    fn file(size: u64) -> DiskState {
        DiskState::Present(Meta {
            kind: EntryKind::File,
            stat: LocalStat {
                size,
                mtime_ns: 1,
                ino: 1,
                mode: 0o644,
            },
        })
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn names(batch: Vec<(String, Option<DiskState>)>) -> Vec<String> {
        batch.into_iter().map(|(p, _)| p).collect()
    }

    /// Mark `a` at `t0` and take its first look there: it is then settling.
    fn settling(t0: Instant, disk: DiskState) -> Settle {
        let mut s = Settle::new(SETTLE);
        assert_eq!(s.mark("a".into(), t0), Marked::Tracked);
        s.looked(vec![("a".into(), disk)], t0, t0);
        s
    }

    #[test]
    fn a_marked_path_gets_its_first_look_at_once() {
        let t0 = Instant::now();
        let mut s = Settle::new(SETTLE);
        s.mark("a".into(), t0);
        assert_eq!(s.due(t0), vec!["a".to_string()]);
        assert_eq!(s.next_wake(t0), Some(t0));
        s.looked(vec![("a".into(), file(1))], t0, t0);
        assert!(!s.has_ready(), "one look is not settled");
        assert!(s.due(t0 + ms(1)).is_empty());
    }

    #[test]
    fn settle_is_idle_only_once_every_path_was_handed_on_and_none_waits_for_a_retry() {
        let t0 = Instant::now();
        let mut s = Settle::new(SETTLE);
        assert!(s.is_idle());
        s.mark("a".into(), t0);
        assert!(!s.is_idle(), "dirty");
        s.looked(vec![("a".into(), file(1))], t0, t0);
        s.looked(vec![("a".into(), file(1))], t0 + SETTLE, t0 + SETTLE);
        assert!(s.has_ready());
        assert!(!s.is_idle(), "ready, not handed on");
        assert_eq!(names(s.next_batch(10)), ["a"]);
        assert!(s.is_idle());
        s.batch_done(vec!["a".into()], t0 + SETTLE);
        assert!(!s.is_idle(), "waiting for its retry");
        assert_eq!(s.retry_due(t0 + SETTLE + RETRY_FIRST), Marked::Tracked);
        assert!(!s.is_idle(), "marked again");
    }

    #[test]
    fn a_path_is_not_ready_before_settle_and_is_after() {
        let t0 = Instant::now();
        let mut s = settling(t0, file(1));
        assert!(s.due(t0 + SETTLE - ms(1)).is_empty());
        // A look that arrives early (the timer fired late for another path)
        // does not hand it on either.
        s.looked(vec![("a".into(), file(1))], t0 + ms(10), t0 + ms(10));
        assert!(!s.has_ready());
        assert_eq!(s.due(t0 + SETTLE), vec!["a".to_string()]);
        s.looked(vec![("a".into(), file(1))], t0 + SETTLE, t0 + SETTLE);
        assert_eq!(s.next_batch(10), vec![("a".to_string(), None)]);
        assert_eq!(s.next_wake(t0 + SETTLE), None);
    }

    #[test]
    fn a_change_seen_at_the_second_look_restarts_the_window() {
        let t0 = Instant::now();
        let mut s = settling(t0, file(1));
        let t1 = t0 + SETTLE;
        s.looked(vec![("a".into(), file(2))], t1, t1);
        assert!(!s.has_ready(), "still being written");
        assert_eq!(s.next_wake(t1), Some(t1 + SETTLE));
        s.looked(vec![("a".into(), file(2))], t1 + SETTLE, t1 + SETTLE);
        assert!(s.has_ready());
    }

    #[test]
    fn a_new_event_restarts_the_window_and_a_look_asked_before_it_is_ignored() {
        let t0 = Instant::now();
        let mut s = settling(t0, file(1));
        let asked = t0 + SETTLE;
        let event = asked + ms(1);
        s.mark("a".into(), event);
        // The look asked before the event reports the old state: ignored.
        s.looked(vec![("a".into(), file(1))], asked, event + ms(1));
        assert!(!s.has_ready());
        assert_eq!(
            s.next_wake(event + ms(1)),
            Some(event + ms(1)),
            "first look again"
        );
        s.looked(vec![("a".into(), file(1))], event + ms(1), event + ms(1));
        assert_eq!(s.next_wake(event + ms(1)), Some(event + SETTLE));
    }

    #[test]
    fn the_next_wake_up_is_the_earliest_due_time() {
        let t0 = Instant::now();
        let mut s = Settle::new(SETTLE);
        assert_eq!(s.next_wake(t0), None);
        s.mark("late".into(), t0 + ms(50));
        s.mark("early".into(), t0);
        let t1 = t0 + ms(50);
        s.looked(
            vec![("early".into(), file(1)), ("late".into(), file(1))],
            t1,
            t1,
        );
        assert_eq!(s.next_wake(t1), Some(t0 + SETTLE));
        s.batch_done(vec!["x".into()], t1);
        assert_eq!(s.next_wake(t1), Some(t0 + SETTLE), "retry is later");
        s.mark("new".into(), t1 + ms(5));
        assert_eq!(s.next_wake(t1 + ms(6)), Some(t1 + ms(6)), "first look now");
    }

    #[test]
    fn too_many_dirty_paths_drop_them_all_and_ask_for_a_rescan() {
        let t0 = Instant::now();
        let mut s = Settle::with_max_dirty(SETTLE, 3);
        for p in ["a", "b", "c"] {
            assert_eq!(s.mark(p.into(), t0), Marked::Tracked);
        }
        assert_eq!(s.mark("d".into(), t0), Marked::Overflow);
        assert!(s.due(t0).is_empty());
        assert_eq!(s.next_wake(t0), None);
        assert_eq!(s.mark("e".into(), t0), Marked::Tracked, "room again");
    }

    #[test]
    fn ready_paths_go_out_in_bounded_sorted_batches() {
        let mut s = Settle::new(SETTLE);
        s.add_ready(["c", "a", "b"].map(String::from));
        assert_eq!(names(s.next_batch(2)), ["a", "b"]);
        assert_eq!(names(s.next_batch(2)), ["c"]);
        assert!(!s.has_ready());
        assert!(s.next_batch(2).is_empty());
    }

    #[test]
    fn failed_paths_are_marked_again_after_a_backoff_that_doubles_and_resets() {
        // The wait after a failure at `t` for step `d` lies in [d/2, d].
        let waits = |s: &Settle, t: Instant, d: Duration| {
            let at = s.retry.at.expect("a retry is due");
            at >= t + d / 2 && at <= t + d
        };
        let t0 = Instant::now();
        let mut s = Settle::new(SETTLE);
        s.batch_done(vec!["f".into()], t0);
        assert!(waits(&s, t0, RETRY_FIRST));
        let at = s.retry.at.unwrap();
        assert_eq!(s.next_wake(t0), Some(at));
        assert_eq!(s.retry_due(at - ms(1)), Marked::Tracked);
        assert!(!s.is_dirty("f"), "not before the backoff");
        s.retry_due(at);
        assert!(s.is_dirty("f"));
        assert_eq!(s.due(at), vec!["f".to_string()]);
        // It fails again: twice as long.
        let t1 = t0 + ms(1500);
        s.batch_done(vec!["f".into()], t1);
        assert!(waits(&s, t1, 2 * RETRY_FIRST));
        for _ in 0..10 {
            s.retry.at = None;
            s.batch_done(vec!["f".into()], t1);
            assert!(s.retry.at.unwrap() <= t1 + RETRY_MAX, "never above the cap");
        }
        assert!(waits(&s, t1, RETRY_MAX), "capped");
        // A batch without failures resets the backoff.
        s.batch_done(vec![], t1);
        s.retry.at = None;
        s.batch_done(vec!["g".into()], t1);
        assert!(waits(&s, t1, RETRY_FIRST));
    }

    /// `a` was written and closed at `t0`, and looked at right then.
    fn closed(t0: Instant, disk: DiskState) -> Settle {
        let mut s = Settle::new(SETTLE);
        s.mark("a".into(), t0);
        assert_eq!(s.signalled("a".into(), Signal::Closed, t0), Marked::Tracked);
        assert_eq!(s.due(t0), vec!["a".to_string()], "first look at once");
        s.looked(vec![("a".into(), disk)], t0, t0);
        s
    }

    #[test]
    fn a_file_closed_after_writing_is_ready_once_it_stays_quiet_for_the_close_wait() {
        let t0 = Instant::now();
        let mut s = closed(t0, file(1));
        assert_eq!(s.next_wake(t0), Some(t0 + CLOSE_WAIT), "not settle");
        assert!(s.due(t0 + CLOSE_WAIT - ms(1)).is_empty());
        let t1 = t0 + CLOSE_WAIT;
        assert_eq!(s.due(t1), vec!["a".to_string()]);
        s.looked(vec![("a".into(), file(1))], t1, t1);
        assert_eq!(
            s.next_batch(10),
            vec![("a".to_string(), Some(file(1)))],
            "ready long before settle, with the state the writer left"
        );
        assert!(s.is_idle());
    }

    #[test]
    fn a_write_after_the_close_restarts_the_wait_at_settle() {
        let t0 = Instant::now();
        let mut s = closed(t0, file(1));
        // The writer opens it again and writes within the close wait.
        let t1 = t0 + ms(3);
        s.mark("a".into(), t1);
        s.looked(vec![("a".into(), file(2))], t1, t1);
        let t2 = t0 + CLOSE_WAIT;
        assert!(s.due(t2).is_empty(), "no longer a closed file");
        assert_eq!(s.next_wake(t2), Some(t1 + SETTLE));
        s.looked(vec![("a".into(), file(2))], t2, t2);
        assert!(!s.has_ready());
        s.looked(vec![("a".into(), file(2))], t1 + SETTLE, t1 + SETTLE);
        assert_eq!(
            s.next_batch(10),
            vec![("a".to_string(), None)],
            "settled, not signalled"
        );
    }

    #[test]
    fn a_change_after_the_close_that_no_event_told_of_waits_settle() {
        let t0 = Instant::now();
        let mut s = closed(t0, file(1));
        let t1 = t0 + CLOSE_WAIT;
        // Written again, its event still on its way: the look sees it.
        s.looked(vec![("a".into(), file(2))], t1, t1);
        assert!(!s.has_ready());
        assert_eq!(s.next_wake(t1), Some(t1 + SETTLE));
        s.looked(
            vec![("a".into(), file(2))],
            t1 + CLOSE_WAIT,
            t1 + CLOSE_WAIT,
        );
        assert!(!s.has_ready(), "the close wait no longer applies");
        s.looked(vec![("a".into(), file(2))], t1 + SETTLE, t1 + SETTLE);
        assert_eq!(s.next_batch(10), vec![("a".to_string(), None)]);
    }

    #[test]
    fn a_close_again_after_more_writes_is_ready_after_the_close_wait() {
        let t0 = Instant::now();
        let mut s = closed(t0, file(1));
        let t1 = t0 + ms(4);
        s.mark("a".into(), t1);
        s.signalled("a".into(), Signal::Closed, t1);
        s.looked(vec![("a".into(), file(2))], t1, t1);
        let t2 = t1 + CLOSE_WAIT;
        s.looked(vec![("a".into(), file(2))], t2, t2);
        assert_eq!(s.next_batch(10), vec![("a".to_string(), Some(file(2)))]);
    }

    #[test]
    fn a_file_moved_into_place_is_ready_at_its_first_look() {
        let t0 = Instant::now();
        let mut s = Settle::new(SETTLE);
        s.signalled("a".into(), Signal::MovedIn, t0);
        assert_eq!(s.next_wake(t0), Some(t0));
        // A look asked before the move reports what was there before.
        s.looked(vec![("a".into(), DiskState::Missing)], t0 - ms(1), t0);
        assert!(!s.has_ready());
        let t1 = t0 + ms(2);
        s.looked(vec![("a".into(), file(1))], t1, t1);
        assert_eq!(s.next_batch(10), vec![("a".to_string(), Some(file(1)))]);
    }

    #[test]
    fn a_write_after_a_move_in_waits_settle() {
        let t0 = Instant::now();
        let mut s = Settle::new(SETTLE);
        s.signalled("a".into(), Signal::MovedIn, t0);
        s.mark("a".into(), t0 + ms(1));
        let t1 = t0 + ms(2);
        s.looked(vec![("a".into(), file(1))], t1, t1);
        assert!(!s.has_ready());
        assert_eq!(s.next_wake(t1), Some(t0 + ms(1) + SETTLE));
    }

    #[test]
    fn a_change_without_a_signal_waits_settle() {
        let t0 = Instant::now();
        let mut s = settling(t0, file(1));
        let t1 = t0 + CLOSE_WAIT;
        assert!(s.due(t1).is_empty());
        s.looked(vec![("a".into(), file(1))], t1, t1);
        assert!(!s.has_ready());
        assert_eq!(s.next_wake(t1), Some(t0 + SETTLE));
    }

    #[test]
    fn a_batch_back_undelivered_keeps_what_its_writer_signalled() {
        let mut s = Settle::new(SETTLE);
        s.add_ready_again([("a".to_string(), Some(file(1))), ("b".to_string(), None)]);
        s.add_ready(["a".to_string(), "c".to_string()]);
        assert_eq!(
            s.next_batch(10),
            vec![
                ("a".to_string(), Some(file(1))),
                ("b".to_string(), None),
                ("c".to_string(), None)
            ]
        );
    }

    #[test]
    fn marking_a_path_already_tracked_never_overflows() {
        let t0 = Instant::now();
        let mut s = Settle::with_max_dirty(SETTLE, 2);
        s.mark("a".into(), t0);
        s.mark("b".into(), t0);
        assert_eq!(s.signalled("b".into(), Signal::Closed, t0), Marked::Tracked);
        assert_eq!(s.mark("c".into(), t0), Marked::Overflow);
    }
}
