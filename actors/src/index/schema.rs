//! How index values are stored: one schema byte, then postcard. `enc`/`dec`
//! for values, `peer` for the 32-byte peer ids inside keys, and
//! `check_or_init`, the schema check [`super::Index::open`] runs.
//!
//! Only schema 1 exists. A value of any other schema is refused as corrupt
//! (never decoded as if it were schema 1), and a database whose `meta`
//! table names a newer schema is refused at open.

use redb::{ReadableTable, Table};
use serde::{de::DeserializeOwned, Serialize};

use super::{IndexError, Result};

/// The format of every value this build writes and reads.
pub const SCHEMA_VERSION: u8 = 1;

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
}

/// The `meta` key holding the database's schema.
pub(super) const SCHEMA_KEY: &str = "schema";

/// Why a stored value or key could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptValue {
    #[error("empty value")]
    Empty,
    #[error("value of schema {found}; this build reads only schema {SCHEMA_VERSION}")]
    Schema { found: u8 },
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
    match b.split_first() {
        Some((&SCHEMA_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| corrupt(table, e.into()))
        }
        Some((&found, _)) => Err(corrupt(table, CorruptValue::Schema { found })),
        None => Err(corrupt(table, CorruptValue::Empty)),
    }
}

/// A 32-byte id (peer id, content hash) stored in a key of `table`.
pub(super) fn id32(table: &'static str, key: &[u8]) -> Result<[u8; 32]> {
    key.try_into()
        .map_err(|_| corrupt(table, CorruptValue::IdLength { len: key.len() }))
}

/// Stamp a new database with [`SCHEMA_VERSION`], accept one of this
/// schema, refuse anything else.
pub(super) fn check_or_init(meta: &mut Table<&str, &[u8]>) -> Result<()> {
    let found = meta.get(SCHEMA_KEY)?.map(|v| v.value().first().copied());
    match found {
        None => {
            meta.insert(SCHEMA_KEY, [SCHEMA_VERSION].as_slice())?;
            Ok(())
        }
        Some(Some(SCHEMA_VERSION)) => Ok(()),
        Some(Some(found)) if found > SCHEMA_VERSION => Err(IndexError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        }),
        // MIGRATION: schema 1 is the first format, so nothing older exists.
        // The first format change adds its step here: rewrite every value
        // of the previous schema, then store the new schema byte, in this
        // transaction.
        Some(Some(found)) => Err(corrupt(name::META, CorruptValue::Schema { found })),
        Some(None) => Err(corrupt(name::META, CorruptValue::Empty)),
    }
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
                source: CorruptValue::Schema { found } })
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
