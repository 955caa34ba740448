//! Retention and undo (issue 11): kept versions, restore, the mass-delete
//! guard, tombstone expiry, garbage collection. One test binary, a module
//! per part.

mod gc;
mod guard;
mod restore;
mod tombstones;
mod versions;
