//! The mass-delete guard: one mistaken `rm -rf` on one node must not empty
//! the folder on every node.
//!
//! Rule ([`exceeds`]): deletes arriving from peers in one burst (one
//! processing round, or several within [`DELETE_BURST_WINDOW`] of each
//! other) that would remove more than `max_delete_fraction` of a folder
//! holding at least [`DELETE_GUARD_MIN_FILES`] live files are *held*: the
//! folder stops applying deletes from peers (this burst's and any later
//! one's) until the operator runs `fleetsync folder resume`. Everything
//! else (new files, edits, directories) keeps syncing.
//!
//! Held deletes stay what they were, pending rows in the index: nothing is
//! lost, and after a restart the first rounds see them again as one burst
//! and hold them again. [`DeleteGuard::resume`] approves the rows held at
//! that moment: they are applied without being counted again.
//!
//! Only deletes that remove something live here count or are held; a
//! delete of a path this node no longer has just records the tombstone.
//! Nor does a move count: a delete whose content stays live under another
//! path (arriving in the same round, or already in the index) removes
//! nothing. Each such delete uses up one live copy ([`Delete::witness`]),
//! so deleting every copy of a content still counts; a copy that excused a
//! delete and is itself deleted within the window counts twice.
//!
//! Nor does a path count twice: a path deleted, back (written again) and
//! deleted again within the window took away at most one file the folder
//! held when the burst began. Without this, a few files that are written
//! and deleted over and over (lock files, a build's scratch files) add up
//! to a "mass delete" of a folder they never were half of.
//!
//! Grace: a burst over the fraction is not held at once. Its deletes wait
//! (pending, applied by no one) for [`DELETE_GRACE`]: a big rename reaches
//! a peer in batches, its deletes (old names) often before its creates.
//! Every round in between judges them again with what has arrived since;
//! after the grace they are held only if still over the fraction.
//! The burst's share is taken of the files the folder held when it began
//! (live files now plus the deletes of the window already applied).
//!
//! Memory: the held and approved rows are pending rows (bounded by the
//! folder's `max_pending` per peer); the window keeps one count per round
//! within [`DELETE_BURST_WINDOW`], at most [`WINDOW_ROUNDS_MAX`], and the
//! paths it counted and the copies that excused a move within it, at most
//! [`WITNESSES_MAX`] each.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    time::{Duration, Instant, SystemTime},
};

pub use fleetsync_config::{DELETE_BURST_WINDOW, DELETE_GRACE, DELETE_GUARD_MIN_FILES};

/// A pending row: (path, peer that announced it).
pub type Key = (String, [u8; 32]);

/// Round counts kept in the window at most (older ones are merged).
const WINDOW_ROUNDS_MAX: usize = 1024;
/// Copies remembered as having excused a move (beyond it, a move is still
/// excused but its copy is not remembered: only a later delete of that
/// copy is under-counted), and paths remembered as counted (beyond it, a
/// path deleted again is counted again: the guard errs towards holding).
const WITNESSES_MAX: usize = 100_000;

/// The rule: does a burst of `burst` file deletes exceed `max_fraction` of
/// a folder that held `files` live files when the burst began? Folders
/// under [`DELETE_GUARD_MIN_FILES`] files are never held; a fraction of 1
/// (or more) turns the guard off.
pub fn exceeds(files: u64, burst: u64, max_fraction: f64) -> bool {
    if max_fraction >= 1.0 || files < DELETE_GUARD_MIN_FILES {
        return false;
    }
    burst as f64 > max_fraction * files as f64
}

/// What a planned delete would take away on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removes {
    /// The path is not live here: only its tombstone is recorded.
    Nothing,
    /// A live file.
    File,
    /// A live directory or symlink (held with the files, not counted).
    Other,
}

/// One planned delete: its path, the peers whose rows it answers, and
/// what it would remove.
#[derive(Debug, Clone)]
pub struct Delete {
    pub path: String,
    pub peers: Vec<[u8; 32]>,
    pub removes: Removes,
    /// A move: the live path (already in the index) that keeps this
    /// delete's content. `removes` is then [`Removes::Nothing`].
    pub witness: Option<String>,
}

/// What the guard holds, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldInfo {
    /// Paths whose deletes are held.
    pub paths: u64,
    /// Of those, live files.
    pub files_deleted: u64,
    /// Live files of the folder when the burst began.
    pub files: u64,
    pub since: SystemTime,
}

#[derive(Debug)]
struct Hold {
    files: u64,
    since: SystemTime,
    /// Held paths: the peers whose rows are held, and whether a file.
    paths: BTreeMap<String, (Vec<[u8; 32]>, bool)>,
}

/// The guard's state for one folder (in [`crate::folder::Folder`]: it
/// outlives receiver incarnations; a restart rebuilds it from the pending
/// rows, see the module doc).
#[derive(Debug)]
pub struct DeleteGuard {
    /// File deletes from peers applied recently: (when, how many).
    recent: VecDeque<(Instant, u64)>,
    hold: Option<Hold>,
    /// Rows the operator let through (`folder resume`), until resolved.
    approved: HashSet<Key>,
    /// How long a burst over the fraction waits before it is held.
    grace: Duration,
    /// When the burst now waiting first went over the fraction.
    over_since: Option<Instant>,
    /// Rows waiting out the grace after the last round.
    deferred: usize,
    /// Live copies that excused a move within the window, and when.
    witnesses: HashMap<String, Instant>,
    /// Paths whose file deletes the window counted, and when.
    counted_paths: HashMap<String, Instant>,
}

impl Default for DeleteGuard {
    fn default() -> Self {
        DeleteGuard::with_grace(DELETE_GRACE)
    }
}

impl DeleteGuard {
    pub fn with_grace(grace: Duration) -> Self {
        DeleteGuard {
            recent: VecDeque::new(),
            hold: None,
            approved: HashSet::new(),
            grace,
            over_since: None,
            deferred: 0,
            witnesses: HashMap::new(),
            counted_paths: HashMap::new(),
        }
    }

    /// Judge a round's planned deletes: `true` to apply now, `false` to
    /// leave pending (held, or waiting out the grace). `files` is the
    /// folder's live files now, before these deletes.
    pub fn judge(
        &mut self,
        now: Instant,
        files: u64,
        max_fraction: f64,
        deletes: &[Delete],
    ) -> Vec<bool> {
        self.prune(now);
        let verdict: Vec<bool> = deletes.iter().map(|d| !self.fresh(d)).collect();
        let counted: u64 = deletes
            .iter()
            .zip(&verdict)
            .filter(|(_, apply)| !**apply)
            .map(|(d, _)| self.weight(d))
            .sum();
        if self.hold.is_none() {
            let recent: u64 = self.recent.iter().map(|(_, n)| n).sum();
            let before = files + recent;
            if !exceeds(before, recent + counted, max_fraction) {
                self.calm();
                self.applied(now, counted);
                let all = vec![true; deletes.len()];
                self.remember_counted(now, deletes, &verdict);
                self.remember_moves(now, deletes, &all);
                return all;
            }
            if self.within_grace(now) {
                self.deferred = verdict.iter().filter(|apply| !**apply).count();
                self.remember_moves(now, deletes, &verdict);
                return verdict;
            }
            self.calm();
            self.hold = Some(Hold {
                files: before,
                since: SystemTime::now(),
                paths: BTreeMap::new(),
            });
        }
        self.hold_fresh(deletes, &verdict);
        self.remember_moves(now, deletes, &verdict);
        verdict
    }

    /// A delete that removes something here and that the operator has not
    /// let through: the guard judges it.
    fn fresh(&self, d: &Delete) -> bool {
        d.removes != Removes::Nothing
            && !d
                .peers
                .iter()
                .all(|p| self.approved.contains(&(d.path.clone(), *p)))
    }

    /// Files a fresh delete takes away: a file's own, plus the one whose
    /// earlier delete it excused as a move (that content is gone now). A
    /// path the window counted already came back since: none.
    fn weight(&self, d: &Delete) -> u64 {
        match d.removes {
            Removes::File if self.counted_paths.contains_key(&d.path) => 0,
            Removes::File => 1 + u64::from(self.witnesses.contains_key(&d.path)),
            Removes::Nothing | Removes::Other => 0,
        }
    }

    /// The burst is over the fraction: still within its grace? (The first
    /// time, the grace starts now.)
    fn within_grace(&mut self, now: Instant) -> bool {
        let since = *self.over_since.get_or_insert(now);
        now.saturating_duration_since(since) < self.grace
    }

    /// Nothing waits out the grace any more.
    fn calm(&mut self) {
        self.over_since = None;
        self.deferred = 0;
    }

    fn hold_fresh(&mut self, deletes: &[Delete], verdict: &[bool]) {
        let hold = self.hold.as_mut().expect("holding");
        for (d, apply) in deletes.iter().zip(verdict) {
            if !*apply {
                let (peers, _) = hold
                    .paths
                    .entry(d.path.clone())
                    .or_insert_with(|| (Vec::new(), d.removes == Removes::File));
                for p in &d.peers {
                    if !peers.contains(p) {
                        peers.push(*p);
                    }
                }
            }
        }
    }

    /// Applied file deletes the window counted remember their path: the
    /// path deleted again within the window counts no more.
    fn remember_counted(&mut self, now: Instant, deletes: &[Delete], verdict: &[bool]) {
        let judged = deletes.iter().zip(verdict).filter(|(_, apply)| !**apply);
        for (d, _) in judged.filter(|(d, _)| d.removes == Removes::File) {
            if self.counted_paths.len() < WITNESSES_MAX {
                self.counted_paths.entry(d.path.clone()).or_insert(now);
            }
        }
    }

    /// Applied moves remember the copy that excused them; an applied
    /// delete of such a copy has been counted for both.
    fn remember_moves(&mut self, now: Instant, deletes: &[Delete], verdict: &[bool]) {
        for (d, _) in deletes.iter().zip(verdict).filter(|(_, apply)| **apply) {
            if d.removes == Removes::File {
                self.witnesses.remove(&d.path);
            }
            match &d.witness {
                Some(w) if self.witnesses.len() < WITNESSES_MAX => {
                    self.witnesses.insert(w.clone(), now);
                }
                _ => {}
            }
        }
    }

    /// The round found no delete to judge: no burst waits.
    pub fn no_deletes(&mut self) {
        self.calm();
    }

    /// When the burst waiting out its grace is to be judged again, if one
    /// is (a round must run then even if nothing else arrives).
    pub fn recheck_at(&self) -> Option<Instant> {
        self.over_since
            .filter(|_| self.hold.is_none())
            .map(|since| since + self.grace)
    }

    /// Rows waiting out the grace (for the round's read limit).
    pub fn deferred_rows(&self) -> usize {
        self.deferred
    }

    /// Did this path excuse a move within the window? (Its content is
    /// used up: it excuses no other delete.)
    pub fn is_witness(&self, path: &str) -> bool {
        self.witnesses.contains_key(path)
    }

    /// Is a delete of this path held (from any peer)? Its content is not
    /// a live copy to excuse another delete with.
    pub fn is_held_path(&self, path: &str) -> bool {
        self.hold
            .as_ref()
            .is_some_and(|h| h.paths.contains_key(path))
    }

    /// Forget window counts older than [`DELETE_BURST_WINDOW`].
    fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.recent.front() {
            if now.saturating_duration_since(*at) <= DELETE_BURST_WINDOW {
                break;
            }
            self.recent.pop_front();
        }
        let within = |at: &mut Instant| now.saturating_duration_since(*at) <= DELETE_BURST_WINDOW;
        self.witnesses.retain(|_, at| within(at));
        self.counted_paths.retain(|_, at| within(at));
    }

    fn applied(&mut self, now: Instant, n: u64) {
        if n == 0 {
            return;
        }
        if self.recent.len() >= WINDOW_ROUNDS_MAX {
            // Bounded: fold the oldest into the next (kept a little longer).
            if let Some((_, old)) = self.recent.pop_front() {
                if let Some((_, next)) = self.recent.front_mut() {
                    *next += old;
                }
            }
        }
        self.recent.push_back((now, n));
    }

    /// Is this pending row held? (The round leaves it alone.)
    pub fn is_held(&self, path: &str, peer: &[u8; 32]) -> bool {
        self.hold
            .as_ref()
            .and_then(|h| h.paths.get(path))
            .is_some_and(|(peers, _)| peers.contains(peer))
    }

    /// Held rows (for the round's read limit).
    pub fn held_rows(&self) -> usize {
        self.hold
            .as_ref()
            .map_or(0, |h| h.paths.values().map(|(p, _)| p.len()).sum())
    }

    /// A row was resolved (applied, superseded, rejected): it is neither
    /// held nor approved any more. Holding ends when nothing is left held.
    pub fn done(&mut self, (path, peer): &Key) {
        self.approved.remove(&(path.clone(), *peer));
        let Some(hold) = self.hold.as_mut() else {
            return;
        };
        if let Some((peers, _)) = hold.paths.get_mut(path) {
            peers.retain(|p| p != peer);
            if peers.is_empty() {
                hold.paths.remove(path);
            }
        }
        if hold.paths.is_empty() {
            self.hold = None;
        }
    }

    /// The operator lets the held deletes through: they are applied by the
    /// next rounds and not counted again. Returns how many paths.
    pub fn resume(&mut self) -> u64 {
        let Some(hold) = self.hold.take() else {
            return 0;
        };
        let n = hold.paths.len() as u64;
        for (path, (peers, _)) in hold.paths {
            for p in peers {
                self.approved.insert((path.clone(), p));
            }
        }
        self.recent.clear();
        self.counted_paths.clear();
        self.calm();
        n
    }

    /// What is held, if anything.
    pub fn held(&self) -> Option<HeldInfo> {
        let h = self.hold.as_ref()?;
        Some(HeldInfo {
            paths: h.paths.len() as u64,
            files_deleted: h.paths.values().filter(|(_, file)| *file).count() as u64,
            files: h.files,
            since: h.since,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const A: [u8; 32] = [1; 32];
    const B: [u8; 32] = [2; 32];

    fn files(prefix: &str, n: usize, peer: [u8; 32]) -> Vec<Delete> {
        (0..n)
            .map(|i| Delete {
                path: format!("{prefix}{i:04}"),
                peers: vec![peer],
                removes: Removes::File,
                witness: None,
            })
            .collect()
    }

    #[test]
    fn the_rule_holds_more_than_the_fraction_of_a_folder_of_at_least_100_files() {
        assert!(exceeds(200, 160, 0.5));
        assert!(exceeds(200, 101, 0.5));
        assert!(!exceeds(200, 100, 0.5), "exactly the fraction passes");
        assert!(!exceeds(200, 20, 0.5));
        assert!(!exceeds(99, 99, 0.5), "small folders are never held");
        assert!(exceeds(100, 51, 0.5));
        assert!(!exceeds(200, 200, 1.0), "1 turns the guard off");
        assert!(exceeds(1000, 11, 0.01));
    }

    #[test]
    fn a_burst_in_one_round_is_held_and_a_small_one_passes() {
        let now = Instant::now();
        let mut g = DeleteGuard::with_grace(Duration::ZERO);
        assert!(g
            .judge(now, 200, 0.5, &files("a", 20, A))
            .iter()
            .all(|v| *v));
        assert_eq!(g.held(), None);
        let mut g = DeleteGuard::with_grace(Duration::ZERO);
        let v = g.judge(now, 200, 0.5, &files("a", 160, A));
        assert!(v.iter().all(|v| !*v));
        let info = g.held().unwrap();
        assert_eq!(
            (info.paths, info.files_deleted, info.files),
            (160, 160, 200)
        );
        assert!(g.is_held("a0000", &A));
        assert!(!g.is_held("a0000", &B));
        assert_eq!(g.held_rows(), 160);
    }

    #[test]
    fn rounds_within_the_window_add_up_and_older_ones_do_not() {
        let t0 = Instant::now();
        let mut g = DeleteGuard::with_grace(Duration::ZERO);
        // 60 of 200 applied, then 60 more of the remaining 140 within 10 s:
        // 120 of the 200 the burst began with.
        assert!(g.judge(t0, 200, 0.5, &files("a", 60, A)).iter().all(|v| *v));
        let t1 = t0 + Duration::from_secs(5);
        assert!(g
            .judge(t1, 140, 0.5, &files("b", 60, A))
            .iter()
            .all(|v| !*v));
        assert_eq!(g.held().unwrap().files, 200);

        let mut g = DeleteGuard::with_grace(Duration::ZERO);
        assert!(g.judge(t0, 200, 0.5, &files("a", 60, A)).iter().all(|v| *v));
        let later = t0 + DELETE_BURST_WINDOW + Duration::from_secs(1);
        assert!(g
            .judge(later, 140, 0.5, &files("b", 60, A))
            .iter()
            .all(|v| *v));
        assert_eq!(g.held(), None);
    }

    /// Regression (the 100,000-cycle soak): 20 files written and deleted
    /// over and over in a folder of 120 were held as a mass delete within
    /// seconds: every round's 20 deletes added up as if 20 more files
    /// were gone.
    #[test]
    fn paths_deleted_again_within_the_window_count_once() {
        let t0 = Instant::now();
        let mut g = DeleteGuard::with_grace(Duration::ZERO);
        for round in 0..8u64 {
            let at = t0 + Duration::from_millis(500 * round);
            let v = g.judge(at, 120, 0.5, &files("cycle/", 20, A));
            assert!(v.iter().all(|v| *v), "round {round} was held");
        }
        assert_eq!(g.held(), None);

        // A real mass delete within the same window is still held: the
        // cycled paths count once, the stable files each.
        let at = t0 + Duration::from_secs(5);
        let v = g.judge(at, 120, 0.5, &files("stable/", 80, A));
        assert!(v.iter().all(|v| !*v));
        assert_eq!(g.held().unwrap().files, 140);
    }

    #[test]
    fn a_path_counted_before_the_window_counts_again() {
        let t0 = Instant::now();
        let mut g = DeleteGuard::with_grace(Duration::ZERO);
        assert!(g.judge(t0, 200, 0.5, &files("a", 60, A)).iter().all(|v| *v));
        // The same 60 paths, back and deleted again after the window, then
        // 60 others: 120 of the 200 in one window.
        let t1 = t0 + DELETE_BURST_WINDOW + Duration::from_secs(1);
        assert!(g.judge(t1, 200, 0.5, &files("a", 60, A)).iter().all(|v| *v));
        let t2 = t1 + Duration::from_secs(1);
        assert!(g
            .judge(t2, 140, 0.5, &files("b", 60, A))
            .iter()
            .all(|v| !*v));
    }

    #[test]
    fn while_holding_every_delete_from_peers_waits_but_tombstones_of_absent_paths_pass() {
        let now = Instant::now();
        let mut g = DeleteGuard::with_grace(Duration::ZERO);
        g.judge(now, 200, 0.5, &files("a", 160, A));
        let mut later = files("z", 1, B);
        later.push(Delete {
            path: "gone".into(),
            peers: vec![B],
            removes: Removes::Nothing,
            witness: None,
        });
        later.push(Delete {
            path: "dir".into(),
            peers: vec![B],
            removes: Removes::Other,
            witness: None,
        });
        assert_eq!(g.judge(now, 200, 0.5, &later), vec![false, true, false]);
        let info = g.held().unwrap();
        assert_eq!((info.paths, info.files_deleted), (162, 161));
    }

    #[test]
    fn resume_lets_the_held_rows_through_uncounted_and_ends_the_hold() {
        let now = Instant::now();
        let mut g = DeleteGuard::with_grace(Duration::ZERO);
        let burst = files("a", 160, A);
        g.judge(now, 200, 0.5, &burst);
        assert_eq!(g.resume(), 160);
        assert_eq!(g.held(), None);
        assert!(!g.is_held("a0000", &A));
        assert!(g.judge(now, 200, 0.5, &burst).iter().all(|v| *v));
        for d in &burst {
            g.done(&(d.path.clone(), A));
        }
        // Approval was for those rows only: a new burst is held again.
        assert!(g.judge(now, 200, 0.5, &burst).iter().all(|v| !*v));
    }

    #[test]
    fn the_hold_ends_when_every_held_row_is_resolved_otherwise() {
        let now = Instant::now();
        let mut g = DeleteGuard::with_grace(Duration::ZERO);
        let burst = files("a", 150, A);
        g.judge(now, 200, 0.5, &burst);
        for d in &burst[..149] {
            g.done(&(d.path.clone(), A));
        }
        assert_eq!(g.held().unwrap().paths, 1);
        g.done(&("a0149".to_string(), A));
        assert_eq!(g.held(), None);
    }

    #[test]
    fn a_fraction_of_one_never_holds() {
        let mut g = DeleteGuard::with_grace(Duration::ZERO);
        let v = g.judge(Instant::now(), 200, 1.0, &files("a", 200, A));
        assert!(v.iter().all(|v| *v));
    }

    fn moved(path: &str, to: &str) -> Delete {
        Delete {
            path: path.into(),
            peers: vec![A],
            removes: Removes::Nothing,
            witness: Some(to.into()),
        }
    }

    #[test]
    fn a_burst_over_the_fraction_waits_out_the_grace_before_it_is_held() {
        let t0 = Instant::now();
        let mut g = DeleteGuard::with_grace(Duration::from_secs(2));
        let burst = files("a", 160, A);
        assert!(g.judge(t0, 200, 0.5, &burst).iter().all(|v| !*v));
        assert_eq!(g.held(), None, "waiting, not held");
        assert_eq!(g.deferred_rows(), 160);
        assert_eq!(g.recheck_at(), Some(t0 + Duration::from_secs(2)));
        // Judged again within the grace: still waiting, the grace does not
        // start over.
        let t1 = t0 + Duration::from_millis(1500);
        assert!(g.judge(t1, 200, 0.5, &burst).iter().all(|v| !*v));
        assert_eq!(g.recheck_at(), Some(t0 + Duration::from_secs(2)));
        // After it: held.
        let t2 = t0 + Duration::from_secs(2);
        assert!(g.judge(t2, 200, 0.5, &burst).iter().all(|v| !*v));
        assert_eq!(g.held().unwrap().paths, 160);
        assert_eq!((g.recheck_at(), g.deferred_rows()), (None, 0));
    }

    #[test]
    fn a_burst_that_turns_out_a_move_within_the_grace_is_applied_uncounted() {
        let t0 = Instant::now();
        let mut g = DeleteGuard::with_grace(Duration::from_secs(2));
        assert!(g
            .judge(t0, 200, 0.5, &files("a", 160, A))
            .iter()
            .all(|v| !*v));
        // The creates arrived: the same deletes are now moves.
        let moves: Vec<Delete> = (0..160)
            .map(|i| moved(&format!("a{i:04}"), &format!("b{i:04}")))
            .collect();
        let t1 = t0 + Duration::from_secs(1);
        assert!(g.judge(t1, 360, 0.5, &moves).iter().all(|v| *v));
        assert_eq!((g.held(), g.recheck_at()), (None, None));
        // Not counted: a real burst right after is judged on its own.
        let t2 = t1 + Duration::from_secs(1);
        assert!(g.judge(t2, 200, 0.5, &files("c", 90, A)).iter().all(|v| *v));
    }

    #[test]
    fn a_burst_that_shrinks_under_the_fraction_is_applied_and_one_that_ends_is_forgotten() {
        let t0 = Instant::now();
        let mut g = DeleteGuard::with_grace(Duration::from_secs(2));
        g.judge(t0, 200, 0.5, &files("a", 160, A));
        let t1 = t0 + Duration::from_secs(3);
        let mut some = files("a", 40, A);
        some.extend((40..160).map(|i| moved(&format!("a{i:04}"), &format!("b{i:04}"))));
        assert!(g.judge(t1, 320, 0.5, &some).iter().all(|v| *v));
        assert_eq!(g.held(), None);

        let mut g = DeleteGuard::with_grace(Duration::from_secs(2));
        g.judge(t0, 200, 0.5, &files("a", 160, A));
        g.no_deletes();
        assert_eq!((g.recheck_at(), g.deferred_rows()), (None, 0));
    }

    #[test]
    fn a_copy_that_excused_a_move_and_is_deleted_too_counts_for_both() {
        let t0 = Instant::now();
        let mut g = DeleteGuard::with_grace(Duration::ZERO);
        // 60 files moved onto their copies c0000..c0059: nothing counted.
        let moves: Vec<Delete> = (0..60)
            .map(|i| moved(&format!("a{i:04}"), &format!("c{i:04}")))
            .collect();
        assert!(g.judge(t0, 200, 0.5, &moves).iter().all(|v| *v));
        assert!(g.is_witness("c0000") && !g.is_witness("a0000"));
        // Then the copies go: 60 files, but 120 contents of the 200.
        let t1 = t0 + Duration::from_secs(1);
        assert!(g
            .judge(t1, 140, 0.5, &files("c", 60, A))
            .iter()
            .all(|v| !*v));
        assert_eq!(g.held().unwrap().files_deleted, 60);

        // Outside the window the copy is forgotten.
        let mut g = DeleteGuard::with_grace(Duration::ZERO);
        g.judge(t0, 200, 0.5, &moves);
        let later = t0 + DELETE_BURST_WINDOW + Duration::from_secs(1);
        assert!(g
            .judge(later, 140, 0.5, &files("c", 60, A))
            .iter()
            .all(|v| *v));
        assert!(!g.is_witness("c0000"));
    }

    #[test]
    fn moves_and_absent_paths_pass_while_holding() {
        let now = Instant::now();
        let mut g = DeleteGuard::with_grace(Duration::ZERO);
        g.judge(now, 200, 0.5, &files("a", 160, A));
        assert!(g.is_held_path("a0001") && !g.is_held_path("b"));
        assert_eq!(g.judge(now, 200, 0.5, &[moved("x", "y")]), vec![true]);
    }
}
