//! How index values are stored: one schema byte, then postcard. `enc`/`dec`
//! for values, `peer` for the 32-byte peer ids inside keys, and
//! `check_or_init`, the schema check [`super::Index::open`] runs.
//!
//! Every value starts with the schema of the build that wrote it. A table's
//! values are readable from the schema its format last changed
//! ([`readable_since`]): schema 2 changed only `history` (each line records
//! the proven sender, [`super::Via`]) and added the `pending_peers`
//! counters, so a `files` value of schema 1 is still read as it is, while a
//! `history` value of schema 1 is refused as corrupt (never misread). A
//! database whose `meta` table names a newer schema is refused at open; one
//! of schema 1 is migrated in the opening transaction ([`super::migrate`]).

use redb::{ReadableTable, WriteTransaction};
use serde::{de::DeserializeOwned, Serialize};

use super::{tables::META, IndexError, Result};

/// The format of every value this build writes and reads.
pub const SCHEMA_VERSION: u8 = 3;

/// Table names, also what [`IndexError::Corrupt`] reports.
pub(super) mod name {
    pub const META: &str = "meta";
    pub const FOLDERS: &str = "folders";
    pub const FILES: &str = "files";
    pub const SEQ: &str = "seq";
    pub const HASHES: &str = "hashes";
    pub const REMOTE: &str = "remote";
    pub const PENDING: &str = "pending";
    pub const HISTORY: &str = "history";
    pub const PENDING_PEERS: &str = "pending_peers";
    pub const PEER_READS: &str = "peer_reads";
    pub const HORIZONS: &str = "horizons";
    pub const RESCANS: &str = "rescans";
    pub const REPLACED: &str = "replaced";
}

/// The oldest schema whose values of `table` this build reads as they are:
/// the schema in which the table's value format last changed.
pub(super) fn readable_since(table: &str) -> u8 {
    match table {
        name::HISTORY => 2,
        _ => 1,
    }
}

/// The `meta` key holding the database's schema.
pub(super) const SCHEMA_KEY: &str = "schema";

/// Why a stored value or key could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptValue {
    #[error("empty value")]
    Empty,
    #[error("value of schema {found}; this build reads schema {oldest} to {SCHEMA_VERSION} here")]
    Schema { found: u8, oldest: u8 },
    #[error("{0}")]
    Decode(#[from] postcard::Error),
    /// A peer id or content hash in a key that is not 32 bytes long.
    #[error("a key holds a {len}-byte id where 32 bytes belong")]
    IdLength { len: usize },
}

fn corrupt(table: &'static str, source: CorruptValue) -> IndexError {
    IndexError::Corrupt { table, source }
}

pub(super) fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![SCHEMA_VERSION];
    out.extend(postcard::to_stdvec(v).expect("index values always serialize"));
    out
}

pub(super) fn dec<T: DeserializeOwned>(table: &'static str, b: &[u8]) -> Result<T> {
    let oldest = readable_since(table);
    match b.split_first() {
        Some((&found, rest)) if (oldest..=SCHEMA_VERSION).contains(&found) => {
            postcard::from_bytes(rest).map_err(|e| corrupt(table, e.into()))
        }
        Some((&found, _)) => Err(corrupt(table, CorruptValue::Schema { found, oldest })),
        None => Err(corrupt(table, CorruptValue::Empty)),
    }
}

/// A 32-byte id (peer id, content hash) stored in a key of `table`.
pub(super) fn id32(table: &'static str, key: &[u8]) -> Result<[u8; 32]> {
    key.try_into()
        .map_err(|_| corrupt(table, CorruptValue::IdLength { len: key.len() }))
}

/// Stamp a new database with [`SCHEMA_VERSION`], accept one of this
/// schema, migrate one of schema 1 (in `tx`, the opening transaction, so
/// a crash leaves it at schema 1), refuse anything else.
pub(super) fn check_or_init(tx: &WriteTransaction) -> Result<()> {
    let mut meta = tx.open_table(META)?;
    let found = meta.get(SCHEMA_KEY)?.map(|v| v.value().first().copied());
    match found {
        None => {}
        Some(Some(SCHEMA_VERSION)) => return Ok(()),
        Some(Some(found)) if found > SCHEMA_VERSION => {
            return Err(IndexError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            })
        }
        Some(Some(1)) => super::migrate::from_v1(tx)?,
        // Schema 3 only added tables (tombstone expiry), which
        // `tables::create_all` creates; no value changed format.
        Some(Some(2)) => {}
        Some(Some(found)) => {
            return Err(corrupt(
                name::META,
                CorruptValue::Schema { found, oldest: 1 },
            ))
        }
        Some(None) => return Err(corrupt(name::META, CorruptValue::Empty)),
    }
    meta.insert(SCHEMA_KEY, [SCHEMA_VERSION].as_slice())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::RemoteMark;

    #[test]
    fn values_round_trip_behind_the_schema_byte() {
        let m = RemoteMark {
            index_id: 3,
            seq: u64::MAX,
        };
        let b = enc(&m);
        assert_eq!(b[0], SCHEMA_VERSION);
        assert_eq!(dec::<RemoteMark>("remote", &b).unwrap(), m);
    }

    #[test]
    fn a_value_of_another_schema_is_refused_not_misread() {
        let mut b = enc(&RemoteMark::default());
        b[0] = SCHEMA_VERSION + 1;
        assert!(matches!(
            dec::<RemoteMark>("remote", &b),
            Err(IndexError::Corrupt {
                table: "remote",
                source: CorruptValue::Schema { found, .. } })
            if found == SCHEMA_VERSION + 1
        ));
        assert!(matches!(
            dec::<RemoteMark>("remote", &[]),
            Err(IndexError::Corrupt {
                source: CorruptValue::Empty,
                ..
            })
        ));
        assert!(matches!(
            id32("pending", &[1; 31]),
            Err(IndexError::Corrupt {
                table: "pending",
                source: CorruptValue::IdLength { len: 31 }
            })
        ));
    }
}
