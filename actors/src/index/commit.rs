//! [`Index::commit`]: a [`Commit`] resolved item by item against the index
//! as it is inside one write transaction (the hasher and the receiver
//! commit the same paths concurrently), so neither overwrites a newer state.
//!
//! - An observation (hasher): already recorded → skipped, its refs link is
//!   a duplicate and released; a pending remote entry with exactly this
//!   content → adopted (our receiver wrote it; not announced back), also
//!   one a newer row from the same peer replaced (`replaced` table: placed,
//!   then killed before its commit; the newer row stays pending); else a
//!   new local version on top of the current record.
//! - An applied record (receiver): superseded if the index moved past it
//!   (its pending rows stay); otherwise the pending rows it answers are
//!   removed (unless a newer entry replaced one meanwhile: that row stays),
//!   and it is written unless already recorded (then its refs link is a
//!   duplicate and released).
//! - Then the pending rows that needed nothing (`Commit::resolved`).

use fleetsync_mesh::model::{
    Causality, CounterOverflow, EntryKind, FileEntry, ShortId, VersionVector,
};

use super::{
    now_ns, tables::Tables, Commit, Committed, Index, IndexError, Item, Local, Observed, Released,
    Result, Via,
};
use crate::{
    record::{disk_matches, DiskState, LocalStat, Meta, Record},
    rules::{decide, Decision},
};

impl Index {
    /// Resolve and write a batch of changes (each written record gets the
    /// next sequence number), resolve pending rows, append history — one
    /// durable transaction.
    pub fn commit(&self, folder: &str, commit: Commit, local: Local) -> Result<Committed> {
        self.commit_unless(folder, commit, local, || false)
    }

    /// [`Index::commit`] by a writer that may have been replaced meanwhile
    /// (the generation fence): `replaced` is asked inside the write
    /// transaction, so a writer replaced before it commits writes nothing
    /// ([`IndexError::Fenced`]) — write transactions are serialised, so
    /// nothing its successor commits can be overwritten by it.
    pub fn commit_unless(
        &self,
        folder: &str,
        commit: Commit,
        local: Local,
        replaced: impl Fn() -> bool,
    ) -> Result<Committed> {
        let tx = self.db.begin_write()?;
        if replaced() {
            return Err(IndexError::Fenced);
        }
        let out = {
            let mut r = Resolver {
                t: Tables::open(&tx, folder)?,
                local,
                written: 0,
                superseded: Vec::new(),
                released: Vec::new(),
                replaced_locally: Vec::new(),
            };
            for item in commit.items {
                match item {
                    Item::Observed { path, seen } => r.observed(&path, &seen)?,
                    Item::Applied {
                        record,
                        note,
                        resolves,
                        from,
                    } => r.applied(record, note, &resolves, Via::Peer(from))?,
                }
            }
            for (path, peer) in &commit.resolved {
                r.t.remove_pending(path, peer)?;
            }
            r.finish()?
        };
        tx.commit()?;
        Ok(out)
    }
}

/// A commit in progress: the tables and what it has done so far.
struct Resolver<'t> {
    t: Tables<'t>,
    local: Local,
    written: usize,
    superseded: Vec<Record>,
    released: Vec<Released>,
    replaced_locally: Vec<Record>,
}

/// A pending remote entry that an observation turned out to be.
struct Adopted {
    peer: [u8; 32],
    entry: FileEntry,
    verbatim: bool,
    /// Found among the entries newer rows replaced: the newer row stays
    /// for the receiver's next round.
    replaced: bool,
}

impl Resolver<'_> {
    fn observed(&mut self, path: &str, seen: &Observed) -> Result<()> {
        let cur = self.t.get(path)?;
        if already_recorded(cur.as_ref(), seen) {
            // Typically our receiver wrote it: the link the hasher made for
            // this observation is a second one to a live file.
            self.release_duplicate(seen.link());
            return Ok(());
        }
        let candidate = match local_entry(path, cur.as_ref(), seen, self.local) {
            Ok(candidate) => candidate,
            Err(e) => {
                // Only a vector stored before validation capped counters
                // gets here: refuse loudly rather than wrap and lose the
                // change; the rest of the commit goes on.
                tracing::error!(folder = %self.t.folder(), path, "local change not recorded: {e}");
                self.release_duplicate(seen.link());
                return Ok(());
            }
        };
        let (rec, note, via) = match self.adoptable(path, cur.as_ref(), &candidate)? {
            Some(adopted) => {
                if adopted.replaced {
                    self.t.remove_replaced(path, &adopted.peer)?;
                } else {
                    self.t.remove_pending(path, &adopted.peer)?;
                }
                let via = Via::Peer(adopted.peer);
                let (rec, note) = adopted_record(adopted, seen);
                (rec, note, via)
            }
            None => {
                let (rec, note) = local_record(candidate, seen, self.local);
                if let Some(old) = cur.as_ref().filter(|c| replaces_content(c, &rec)) {
                    self.replaced_locally.push(old.clone());
                }
                (rec, note, Via::Local)
            }
        };
        self.write(cur, rec, note, via)
    }

    /// A pending entry with exactly the content the disk shows, which the
    /// rules would apply: our receiver put it there (maybe just before a
    /// crash), so it is adopted rather than minted as a local version that
    /// would be echoed back to the fleet. Also an entry a newer row from
    /// the same peer replaced: placed, then killed before its commit, while
    /// the peer deleted or changed it (minted, it would beat that delete).
    fn adoptable(
        &self,
        path: &str,
        cur: Option<&Record>,
        candidate: &FileEntry,
    ) -> Result<Option<Adopted>> {
        let pending = self.t.pending_for(path)?.into_iter().map(|r| (r, false));
        let replaced = self.t.replaced_for(path)?.into_iter().map(|r| (r, true));
        for ((peer, p), replaced) in pending.chain(replaced) {
            if !p.same_content(candidate) {
                continue;
            }
            if let Decision::Apply {
                entry, verbatim, ..
            } = decide(cur, &p)
            {
                return Ok(Some(Adopted {
                    peer,
                    entry,
                    verbatim,
                    replaced,
                }));
            }
        }
        Ok(None)
    }

    fn applied(
        &mut self,
        record: Record,
        note: String,
        resolves: &[(String, [u8; 32])],
        via: Via,
    ) -> Result<()> {
        let cur = self.t.get(&record.entry.path)?;
        if moved_past(cur.as_ref(), &record.entry) {
            // Its pending rows stay: the receiver decides again.
            self.superseded.push(record);
            return Ok(());
        }
        for (path, peer) in resolves {
            self.resolve_covered(path, peer, &record.entry.version)?;
        }
        match cur {
            Some(cur) if holds_exactly(&cur, &record) => {
                // The hasher adopted it first: the staged link is a
                // duplicate, unless it is the very link the record uses.
                if record.refs != cur.refs {
                    self.release_duplicate(record.refs);
                }
                Ok(())
            }
            cur => self.write(cur, record, note, via),
        }
    }

    /// Remove a pending row an applied record answers, unless the row is
    /// no longer the one that was applied: ingest replaces a peer's row
    /// for a path when a newer entry arrives (a delete after the create
    /// being fetched, say), and that newer row must stay for the next
    /// round, not vanish with the older one.
    fn resolve_covered(
        &mut self,
        path: &str,
        peer: &[u8; 32],
        applied: &VersionVector,
    ) -> Result<()> {
        let newer = self.t.pending_row(path, peer)?.is_some_and(|row| {
            matches!(
                row.version.compare(applied),
                Causality::Dominates | Causality::Concurrent
            )
        });
        if !newer {
            self.t.remove_pending(path, peer)?;
        }
        Ok(())
    }

    fn write(&mut self, cur: Option<Record>, rec: Record, note: String, via: Via) -> Result<()> {
        self.released.extend(self.t.write(cur, rec, note, via)?);
        self.written += 1;
        Ok(())
    }

    /// A refs link that duplicates one the index already has: nothing
    /// will reference it. Its hash is unknown to the index (None).
    fn release_duplicate(&mut self, link: Option<String>) {
        self.released
            .extend(link.map(|name| Released { name, hash: None }));
    }

    fn finish(self) -> Result<Committed> {
        Ok(Committed {
            meta: self.t.finish()?,
            written: self.written,
            superseded: self.superseded,
            released: self.released,
            replaced_locally: self.replaced_locally,
        })
    }
}

impl Observed {
    /// What `lstat` showed, as [`disk_matches`] compares it.
    fn disk(&self) -> DiskState {
        let present = |kind, stat| DiskState::Present(Meta { kind, stat });
        match self {
            Observed::Gone => DiskState::Missing,
            Observed::Dir { stat } => present(EntryKind::Directory, *stat),
            Observed::Symlink { stat, .. } => present(EntryKind::Symlink, *stat),
            Observed::File { stat, .. } => present(EntryKind::File, *stat),
        }
    }

    fn stat(&self) -> Option<LocalStat> {
        match self {
            Observed::Gone => None,
            Observed::Dir { stat }
            | Observed::Symlink { stat, .. }
            | Observed::File { stat, .. } => Some(*stat),
        }
    }

    /// The refs link made for this observation.
    fn link(&self) -> Option<String> {
        match self {
            Observed::File { refs, .. } => refs.clone(),
            _ => None,
        }
    }
}

/// Does the index already say what the disk shows? Directories, files and
/// absences by the one rule, [`disk_matches`]: a directory by its kind
/// (its mode is not synced), a file by kind, stat and exec bits
/// ([`crate::record::synced_mode`]).
/// A symlink's content is its target: one re-created with the same target
/// (a new inode and mtime) is already recorded.
fn already_recorded(cur: Option<&Record>, seen: &Observed) -> bool {
    match seen {
        Observed::Symlink { target, .. } => Record::live(cur).is_some_and(|r| {
            r.entry.kind == EntryKind::Symlink
                && r.entry.symlink_target.as_deref() == Some(target.as_str())
        }),
        _ => disk_matches(&seen.disk(), cur),
    }
}

/// Has the index moved past an applied entry (ours dominates it or is
/// concurrent with it)? A receive-only folder's unannounced local edit
/// (`local_changed`) never holds the fleet's version back.
fn moved_past(cur: Option<&Record>, applied: &FileEntry) -> bool {
    cur.is_some_and(|c| {
        !c.local_changed
            && !matches!(
                c.entry.version.compare(&applied.version),
                Causality::DominatedBy | Causality::Equal
            )
    })
}

/// Does the index hold exactly this record (its sequence number aside)?
/// Records are compared, not the disk: an applied record may change only
/// the version vector.
fn holds_exactly(cur: &Record, rec: &Record) -> bool {
    let entry = FileEntry {
        sequence: rec.entry.sequence,
        ..cur.entry.clone()
    };
    entry == rec.entry && cur.local == rec.local
}

fn adopted_record(a: Adopted, seen: &Observed) -> (Record, String) {
    let from = ShortId::from_node_id(&a.peer);
    let rec = Record {
        entry: a.entry,
        local: seen.stat(),
        local_changed: false,
        received_from: a.verbatim.then_some(from),
        refs: seen.link(),
    };
    (rec, format!("applied from {from}"))
}

/// Does the local record `new` take away content `old` had on this disk?
/// True when `old` is a live file that was on disk and `new` deletes it,
/// puts something else than a file there, or holds other content (a
/// change of mtime or mode alone keeps the content). What `versions.local`
/// keeps.
pub(crate) fn replaces_content(old: &Record, new: &Record) -> bool {
    let had = Record::live(Some(old))
        .filter(|o| o.entry.kind == EntryKind::File && o.local.is_some())
        .and_then(|o| o.entry.hash);
    let has = Record::live(Some(new))
        .filter(|n| n.entry.kind == EntryKind::File)
        .and_then(|n| n.entry.hash);
    had.is_some() && had != has
}

fn local_record(entry: FileEntry, seen: &Observed, l: Local) -> (Record, String) {
    let note = match seen {
        Observed::Gone => "local delete",
        _ => "local change",
    };
    let rec = Record {
        entry,
        local: seen.stat(),
        local_changed: l.receive_only,
        received_from: None,
        refs: seen.link(),
    };
    (rec, note.to_string())
}

/// The entry a local observation produces, on top of `cur`: the version
/// bumped for us, except in a receive-only folder (never announced).
fn local_entry(
    path: &str,
    cur: Option<&Record>,
    seen: &Observed,
    l: Local,
) -> std::result::Result<FileEntry, CounterOverflow> {
    let base = cur.map(|r| r.entry.version.clone()).unwrap_or_default();
    let version = if l.receive_only {
        base
    } else {
        base.bump(l.me)?
    };
    let mut e = FileEntry {
        path: path.to_string(),
        kind: EntryKind::File,
        size: 0,
        mtime_ns: 0,
        mode: 0,
        hash: None,
        symlink_target: None,
        deleted: false,
        version,
        modified_by: l.me,
        sequence: 0,
    };
    match seen {
        Observed::Gone => {
            e.kind = cur.map(|r| r.entry.kind).unwrap_or(EntryKind::File);
            e.deleted = true;
            e.mtime_ns = now_ns();
        }
        Observed::Dir { stat } => {
            e.kind = EntryKind::Directory;
            (e.mtime_ns, e.mode) = (stat.mtime_ns, stat.mode);
        }
        Observed::Symlink { stat, target } => {
            e.kind = EntryKind::Symlink;
            (e.mtime_ns, e.mode) = (stat.mtime_ns, stat.mode);
            e.symlink_target = Some(target.clone());
        }
        Observed::File { stat, hash, .. } => {
            (e.size, e.mtime_ns, e.mode) = (stat.size, stat.mtime_ns, stat.mode);
            e.hash = Some(*hash);
        }
    }
    Ok(e)
}
