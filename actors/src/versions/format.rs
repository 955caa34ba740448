//! The on-disk form of one kept version, `<id>.zst`:
//!
//! ```text
//!  ┌──────────────── zstd skippable frame ────────────────┐┌── zstd frame ──┐
//!  │ 0x184D2A50 (LE u32) │ len (LE u32) │ JSON metadata ␠␠ ││ the old bytes  │
//!  └──────────────────────────────────────────────────────┘└────────────────┘
//! ```
//!
//! `zstd -d <id>.zst` skips the first frame and prints the exact old bytes.
//! The metadata is written last, over a region reserved before the data
//! (its length is fixed up front from the longest values it can take, the
//! rest padded with spaces, which JSON ignores): the file is read once,
//! hashed and compressed in the same pass.

use std::{
    collections::BTreeMap,
    io::{self, Read},
};

use serde::{Deserialize, Serialize};

use super::{Reason, VersionInfo};

/// Magic number of the skippable frame holding the metadata (the first of
/// the sixteen skippable magics zstd defines).
pub const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;

/// Longest metadata we read back (a path is at most 4 KiB; the version
/// vector of a big fleet is a few KiB): guards the loader against a
/// damaged length field.
const MAX_HEADER: u32 = 1 << 20;

/// The metadata frame's JSON: what is known about one kept version
/// (listed as part of [`VersionInfo`], which adds what it takes on disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// `<kept_at_ms>-<first 8 hex of hash>`: also the file name (`.zst`).
    pub id: String,
    /// The folder-relative path the content had.
    pub path: String,
    /// Bytes of the content (uncompressed).
    pub size: u64,
    /// The content's mtime, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// BLAKE3 of the content, hex.
    pub hash: String,
    /// The version vector of the superseded entry: short id (hex) → counter.
    pub version: BTreeMap<String, u64>,
    /// Who made the superseded content (short id).
    pub modified_by: String,
    /// Who replaced it: a peer's short id, or [`super::LOCAL`].
    pub replaced_by: String,
    /// When it was kept, milliseconds since the epoch.
    pub kept_at_ms: u64,
    pub reason: Reason,
    /// The file's permission bits when it was kept (a restore gives them
    /// back). Absent in versions kept before modes were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

impl VersionMeta {
    pub fn into_info(self, stored_bytes: u64) -> VersionInfo {
        VersionInfo {
            meta: self,
            stored_bytes,
        }
    }

    /// Bytes the JSON of this header can take at most once id, size and
    /// hash are known (they are not yet when the room is reserved).
    pub fn room(&self) -> usize {
        let widest = VersionMeta {
            id: id_of(u64::MAX, &[0xff; 32]),
            size: u64::MAX,
            hash: hex::encode([0xff; 32]),
            ..self.clone()
        };
        serde_json::to_vec(&widest).map_or(0, |v| v.len())
    }

    /// The whole skippable frame, its JSON padded to `room` bytes.
    pub fn frame(&self, room: usize) -> io::Result<Vec<u8>> {
        let mut json = serde_json::to_vec(self).map_err(io::Error::other)?;
        if json.len() > room {
            return Err(io::Error::other("version metadata outgrew its room"));
        }
        json.resize(room, b' ');
        let len = u32::try_from(room).map_err(io::Error::other)?;
        let mut out = Vec::with_capacity(8 + room);
        out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&json);
        Ok(out)
    }

    /// Read the skippable frame at the start of `r`, leaving `r` at the
    /// data frame.
    pub fn read_from(r: &mut impl Read) -> io::Result<VersionMeta> {
        let mut word = [0u8; 4];
        r.read_exact(&mut word)?;
        if u32::from_le_bytes(word) != SKIPPABLE_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a fleetsync version (no metadata frame)",
            ));
        }
        r.read_exact(&mut word)?;
        let len = u32::from_le_bytes(word);
        if len > MAX_HEADER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("metadata frame of {len} bytes is too long"),
            ));
        }
        let mut json = vec![0u8; len as usize];
        r.read_exact(&mut json)?;
        serde_json::from_slice(&json).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// A version's id: `<kept_at ms>-<first 8 hex of its hash>`, sortable by
/// age (13 digits until the year 2286).
pub fn id_of(kept_at_ms: u64, hash: &[u8; 32]) -> String {
    format!("{kept_at_ms}-{}", hex::encode(&hash[..4]))
}

/// Is `id` something [`id_of`] makes (so it names a file in the versions
/// directory and nothing else)?
pub fn valid_id(id: &str) -> bool {
    let Some((ms, h)) = id.split_once('-') else {
        return false;
    };
    !ms.is_empty()
        && ms.len() <= 20
        && ms.bytes().all(|b| b.is_ascii_digit())
        && h.len() == 8
        && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The file name of version `id`.
pub fn file_name(id: &str) -> String {
    format!("{id}.zst")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> VersionMeta {
        VersionMeta {
            id: String::new(),
            path: "dir/é.txt".into(),
            size: 0,
            mtime_ns: -5,
            hash: String::new(),
            version: BTreeMap::from([("00000000ab".to_string(), 3)]),
            modified_by: "00000000ab".into(),
            replaced_by: "local".into(),
            kept_at_ms: 0,
            reason: Reason::Delete,
            mode: Some(0o755),
        }
    }

    #[test]
    fn a_frame_reads_back_and_fits_its_room_with_the_widest_values() {
        let mut h = header();
        let room = h.room();
        h.id = id_of(u64::MAX, &[0xff; 32]);
        h.hash = hex::encode([0xff; 32]);
        h.size = u64::MAX;
        let frame = h.frame(room).unwrap();
        assert_eq!(frame.len(), 8 + room);
        let back = VersionMeta::read_from(&mut &frame[..]).unwrap();
        assert_eq!((back.id, back.size), (h.id, u64::MAX));
        let mut short = header();
        short.id = id_of(1, &[0; 32]);
        let back = VersionMeta::read_from(&mut &short.frame(room).unwrap()[..]).unwrap();
        assert_eq!(back.id, "1-00000000");
    }

    #[test]
    fn metadata_kept_before_modes_were_recorded_still_reads() {
        let mut old = header();
        old.mode = None;
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("mode"), "{json}");
        let frame = old.frame(old.room()).unwrap();
        assert_eq!(VersionMeta::read_from(&mut &frame[..]).unwrap().mode, None);
        let new = header();
        let frame = new.frame(new.room()).unwrap();
        assert_eq!(
            VersionMeta::read_from(&mut &frame[..]).unwrap().mode,
            Some(0o755)
        );
    }

    #[test]
    fn ids_sort_by_age_and_only_made_ids_are_valid() {
        let a = id_of(1_700_000_000_000, &[0xab; 32]);
        assert_eq!(a, "1700000000000-abababab");
        assert!(valid_id(&a));
        assert!(a < id_of(1_700_000_000_001, &[0; 32]));
        for bad in [
            "",
            "../x",
            "1-abc",
            "1-ABABABAB",
            "x-abababab",
            "1-abababab/..",
            "-abababab",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn anything_else_is_refused_as_a_version() {
        let err = VersionMeta::read_from(&mut &b"\x28\xb5\x2f\xfd...."[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut huge = SKIPPABLE_MAGIC.to_le_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(VersionMeta::read_from(&mut &huge[..]).is_err());
    }
}
