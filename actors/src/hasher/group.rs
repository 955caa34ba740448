//! Group commit, the hasher's pacing of index writes (plain state, no
//! I/O): files keep being hashed while a commit runs, and what was hashed
//! meanwhile goes into the next commit. So a commit's fixed cost (the blob
//! store's sync and the index transaction, an fsync each) is paid once
//! per group rather than once per file or per fixed-size chunk, and a slow
//! disk makes groups larger instead of stalling the hashing.
//!
//! Rules: at most one commit at a time, chunks in the order their files
//! were hashed; a commit starts when none runs and at least `min` files
//! are gathered, or when no more files will come (a lone file is never
//! held back); at most `max` files wait, after which the hasher stops
//! taking results until the running commit is done (memory stays
//! bounded, and a chunk stays one reasonable transaction).

/// The state of one batch's commits; `T` is a hashed file.
#[derive(Debug)]
pub struct GroupCommit<T> {
    gathered: Vec<T>,
    committing: bool,
    ended: bool,
    min: usize,
    max: usize,
}

impl<T> GroupCommit<T> {
    /// Commit at least `min` files at a time unless the batch ends, and
    /// gather at most `max` while a commit runs.
    pub fn new(min: usize, max: usize) -> Self {
        assert!(min >= 1 && max >= min, "1 <= min <= max");
        GroupCommit {
            gathered: Vec::new(),
            committing: false,
            ended: false,
            min,
            max,
        }
    }

    /// A file was hashed.
    pub fn add(&mut self, item: T) {
        debug_assert!(!self.ended, "no files after the end");
        self.gathered.push(item);
    }

    /// No more files will come.
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// The running commit finished (whatever its result).
    pub fn committed(&mut self) {
        debug_assert!(self.committing, "no commit was running");
        self.committing = false;
    }

    /// The chunk to commit now, if one should start (the caller then
    /// runs it and reports [`GroupCommit::committed`]).
    pub fn next(&mut self) -> Option<Vec<T>> {
        if self.committing || self.gathered.is_empty() {
            return None;
        }
        if self.gathered.len() < self.min && !self.ended {
            return None;
        }
        let take = self.gathered.len().min(self.max);
        let rest = self.gathered.split_off(take);
        self.committing = true;
        Some(std::mem::replace(&mut self.gathered, rest))
    }

    /// Should the hasher take another result now? Not once the batch
    /// ended, nor while `max` files already wait.
    pub fn takes_more(&self) -> bool {
        !self.ended && self.gathered.len() < self.max
    }

    /// Everything was committed: no file waits, no commit runs, none
    /// will come.
    pub fn finished(&self) -> bool {
        self.ended && !self.committing && self.gathered.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_file_is_committed_at_once_when_the_batch_ends() {
        let mut g = GroupCommit::new(64, 1024);
        g.add(1);
        assert_eq!(g.next(), None, "below min, more may come");
        g.end();
        assert_eq!(g.next(), Some(vec![1]));
        assert!(!g.finished(), "its commit runs");
        g.committed();
        assert!(g.finished());
        assert_eq!(g.next(), None);
    }

    #[test]
    fn files_hashed_during_a_commit_go_into_the_next_one_in_order() {
        let mut g = GroupCommit::new(2, 100);
        g.add(1);
        g.add(2);
        assert_eq!(g.next(), Some(vec![1, 2]));
        // While it commits, hashing goes on; nothing else starts.
        for i in 3..=7 {
            g.add(i);
            assert_eq!(g.next(), None, "one commit at a time");
        }
        assert!(!g.finished());
        g.committed();
        assert_eq!(g.next(), Some(vec![3, 4, 5, 6, 7]));
        g.add(8);
        g.end();
        assert_eq!(g.next(), None, "still committing");
        g.committed();
        assert_eq!(g.next(), Some(vec![8]));
        g.committed();
        assert!(g.finished());
    }

    #[test]
    fn at_most_max_files_wait_and_a_chunk_holds_at_most_max() {
        let mut g = GroupCommit::new(1, 3);
        g.add(0);
        assert_eq!(g.next(), Some(vec![0]));
        for i in 1..=3 {
            assert!(g.takes_more());
            g.add(i);
        }
        assert!(!g.takes_more(), "max files wait: stop taking results");
        g.committed();
        assert_eq!(g.next(), Some(vec![1, 2, 3]));
        assert!(g.takes_more());
        g.end();
        assert!(!g.takes_more(), "the batch ended");
    }

    #[test]
    fn every_file_is_committed_exactly_once_in_hashing_order() {
        // A commit finishes after every third file hashed.
        let mut g = GroupCommit::new(4, 10);
        let mut committed = Vec::new();
        let mut running: Option<Vec<u32>> = None;
        for i in 0..100u32 {
            assert!(g.takes_more() || running.is_some());
            g.add(i);
            if i % 3 == 2 {
                if let Some(c) = running.take() {
                    committed.extend(c);
                    g.committed();
                }
            }
            if let Some(c) = g.next() {
                assert!(c.len() <= 10);
                running = Some(c);
            }
        }
        g.end();
        while !g.finished() {
            if let Some(c) = running.take() {
                committed.extend(c);
                g.committed();
            }
            running = g.next();
        }
        assert_eq!(committed, (0..100).collect::<Vec<_>>());
    }
}
