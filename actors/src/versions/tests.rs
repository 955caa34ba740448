use std::time::Duration;

use super::*;

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A folder root with its marker and staging directory.
fn folder() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join(RESERVED_DIR).join(TMP_DIR)).unwrap();
    root
}

fn meta(path: &str, reason: Reason) -> KeepMeta {
    KeepMeta {
        path: path.into(),
        mtime_ns: 1_234_567_890_123,
        version: VersionVector::from_pairs([(ShortId(0xab), 2), (ShortId(7), 1)]),
        modified_by: ShortId(0xab),
        replaced_by: "00000000cd".into(),
        reason,
    }
}

fn policy(keep: Duration, max_bytes: u64) -> VersionsPolicy {
    VersionsPolicy {
        keep,
        max_bytes,
        ..VersionsPolicy::default()
    }
}

/// Kept bytes that do not compress away (so sizes are predictable).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn keep_bytes(v: &Versions, dir: &Path, name: &str, bytes: &[u8], reason: Reason) -> VersionInfo {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    v.keep(&p, meta(name, reason)).unwrap().expect("kept")
}

#[test]
fn a_kept_version_is_a_zstd_file_that_decompresses_to_the_exact_old_bytes() {
    let root = folder();
    let v = Versions::open(root.path(), VersionsPolicy::default()).unwrap();
    let old = noise(300_000, 1);
    let info = keep_bytes(&v, root.path(), "a.bin", &old, Reason::Overwrite);
    assert_eq!(info.size, old.len() as u64);
    assert_eq!(info.hash, blake3::hash(&old).to_hex().to_string());
    assert_eq!(
        info.id,
        id_of(info.kept_at_ms, blake3::hash(&old).as_bytes())
    );
    assert_eq!(
        (info.path.as_str(), info.reason),
        ("a.bin", Reason::Overwrite)
    );
    assert_eq!(info.modified_by, ShortId(0xab).to_string());
    assert_eq!(info.version.get(&ShortId(0xab).to_string()), Some(&2));
    let file = v.dir().join(format!("{}.zst", info.id));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), info.stored_bytes);
    // Any zstd decoder skips the metadata frame: the file is the old bytes.
    let all = std::fs::read(&file).unwrap();
    assert_eq!(
        u32::from_le_bytes(all[..4].try_into().unwrap()),
        SKIPPABLE_MAGIC
    );
    assert_eq!(zstd::stream::decode_all(&all[..]).unwrap(), old);
    assert_eq!(v.read(&info.id).unwrap(), old);
    assert_eq!((v.count(), v.bytes()), (1, info.stored_bytes));
    // Nothing left in the staging directory.
    assert!(names_in(&root.path().join(RESERVED_DIR).join(TMP_DIR)).is_empty());
}

#[test]
fn an_empty_file_is_kept_too() {
    let root = folder();
    let v = Versions::open(root.path(), VersionsPolicy::default()).unwrap();
    let info = keep_bytes(&v, root.path(), "e", b"", Reason::Delete);
    assert_eq!(info.size, 0);
    assert_eq!(v.read(&info.id).unwrap(), b"");
}

#[test]
fn the_catalogue_is_rebuilt_from_the_files_at_open() {
    let root = folder();
    let v = Versions::open(root.path(), VersionsPolicy::default()).unwrap();
    std::fs::create_dir(root.path().join("d")).unwrap();
    let a = keep_bytes(&v, root.path(), "d/a", b"first", Reason::Overwrite);
    let b = keep_bytes(&v, root.path(), "d/a", b"second", Reason::Delete);
    let c = keep_bytes(&v, root.path(), "other", b"third", Reason::Local);
    // Not a version: ignored, never removed.
    std::fs::write(v.dir().join("notes.txt"), b"mine").unwrap();
    std::fs::write(v.dir().join("1-00000000.zst"), b"garbage").unwrap();
    let again = Versions::open(root.path(), VersionsPolicy::default()).unwrap();
    assert_eq!(again.list(None), v.list(None));
    assert_eq!(
        again.bytes(),
        a.stored_bytes + b.stored_bytes + c.stored_bytes
    );
    assert_eq!(again.read(&b.id).unwrap(), b"second");
    assert!(v.dir().join("notes.txt").exists());
}

#[test]
fn list_is_newest_first_and_filters_by_path_or_directory() {
    let root = folder();
    let v = Versions::open(root.path(), VersionsPolicy::default()).unwrap();
    std::fs::create_dir(root.path().join("d")).unwrap();
    let a = keep_bytes(&v, root.path(), "d/a", b"1", Reason::Overwrite);
    let b = keep_bytes(&v, root.path(), "d/a", b"2", Reason::Overwrite);
    let c = keep_bytes(&v, root.path(), "dx", b"3", Reason::Delete);
    let ids = |l: Vec<VersionInfo>| l.into_iter().map(|v| v.meta.id).collect::<Vec<_>>();
    assert_eq!(
        ids(v.list(None)),
        [c.id.clone(), b.id.clone(), a.id.clone()]
    );
    assert_eq!(ids(v.list(Some("d"))), [b.id.clone(), a.id.clone()]);
    assert_eq!(ids(v.list(Some("d/a"))), [b.id.clone(), a.id.clone()]);
    assert_eq!(ids(v.list(Some("dx"))), vec![c.id.clone()]);
    assert_eq!(ids(v.list(Some(""))).len(), 3);
    assert!(v.list(Some("d/a/b")).is_empty());
}

#[test]
fn the_same_content_kept_twice_at_once_gets_two_ids() {
    let root = folder();
    let v = Versions::open(root.path(), VersionsPolicy::default()).unwrap();
    let ids: std::collections::BTreeSet<String> = (0..5)
        .map(|_| {
            keep_bytes(&v, root.path(), "same", b"same bytes", Reason::Overwrite)
                .meta
                .id
        })
        .collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(v.count(), 5);
}

#[test]
fn off_keeps_nothing_and_creates_nothing() {
    let root = folder();
    let v = Versions::open(root.path(), VersionsPolicy::off()).unwrap();
    std::fs::write(root.path().join("a"), b"x").unwrap();
    assert!(v
        .keep(&root.path().join("a"), meta("a", Reason::Delete))
        .unwrap()
        .is_none());
    assert!(!v.dir().exists());
    assert_eq!((v.count(), v.bytes()), (0, 0));
}

#[test]
fn past_max_bytes_the_oldest_versions_go() {
    let root = folder();
    // Room for about two 10 kB versions of incompressible bytes.
    let v = Versions::open(root.path(), policy(Duration::from_secs(3600), 25_000)).unwrap();
    let kept: Vec<VersionInfo> = (0..4)
        .map(|i| {
            keep_bytes(
                &v,
                root.path(),
                &format!("f{i}"),
                &noise(10_000, i + 1),
                Reason::Overwrite,
            )
        })
        .collect();
    let left: Vec<String> = v.list(None).into_iter().map(|v| v.meta.path).collect();
    assert_eq!(left, ["f3", "f2"]);
    assert!(v.bytes() <= 25_000);
    assert!(!v.dir().join(format!("{}.zst", kept[0].id)).exists());
    assert!(matches!(
        v.read(&kept[0].id),
        Err(VersionsError::NotFound { .. })
    ));
}

#[test]
fn versions_older_than_keep_go_at_the_next_eviction() {
    let root = folder();
    let v = Versions::open(root.path(), policy(Duration::from_secs(60), u64::MAX)).unwrap();
    let a = keep_bytes(&v, root.path(), "a", b"a", Reason::Delete);
    let b = keep_bytes(&v, root.path(), "b", b"b", Reason::Delete);
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    assert_eq!(v.evict(at(a.kept_at_ms + 60_000)), Evicted::default());
    let later = b.kept_at_ms.max(a.kept_at_ms + 1);
    let gone = v.evict(at(later + 60_000));
    assert!(gone.count >= 1, "{gone:?}");
    assert!(!v.list(None).iter().any(|x| x.id == a.id));
    assert_eq!(v.evict(at(b.kept_at_ms + 60_001)).count + gone.count, 2);
    assert_eq!((v.count(), v.bytes()), (0, 0));
    assert_eq!(names_in(&v.dir()), Vec::<String>::new());
}

#[test]
fn a_symlinked_versions_directory_is_never_written_through() {
    let root = folder();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        outside.path(),
        root.path().join(RESERVED_DIR).join(VERSIONS_DIR),
    )
    .unwrap();
    assert!(matches!(
        Versions::open(root.path(), VersionsPolicy::default()),
        Err(VersionsError::NotADirectory { .. })
    ));
    let v = Versions::empty(root.path(), VersionsPolicy::default());
    std::fs::write(root.path().join("a"), b"x").unwrap();
    assert!(v
        .keep(&root.path().join("a"), meta("a", Reason::Delete))
        .is_err());
    assert!(names_in(outside.path()).is_empty());
    // A symlink to keep is refused too.
    std::fs::remove_file(root.path().join(RESERVED_DIR).join(VERSIONS_DIR)).unwrap();
    std::os::unix::fs::symlink("a", root.path().join("l")).unwrap();
    assert!(matches!(
        v.keep(&root.path().join("l"), meta("l", Reason::Delete)),
        Err(VersionsError::NotRegular { .. })
    ));
}

#[test]
fn without_the_folder_marker_nothing_is_created() {
    let root = tempfile::tempdir().unwrap();
    let v = Versions::open(root.path(), VersionsPolicy::default()).unwrap();
    std::fs::write(root.path().join("a"), b"x").unwrap();
    assert!(matches!(
        v.keep(&root.path().join("a"), meta("a", Reason::Delete)),
        Err(VersionsError::NoMarker { .. })
    ));
    assert!(!root.path().join(RESERVED_DIR).exists());
}

#[test]
fn ids_that_name_no_version_are_refused() {
    let root = folder();
    let v = Versions::open(root.path(), VersionsPolicy::default()).unwrap();
    for id in ["../../etc/passwd", "1-00000000", ""] {
        assert!(
            matches!(v.read(id), Err(VersionsError::NotFound { .. })),
            "{id}"
        );
    }
}

#[test]
fn under_matches_the_path_and_what_lies_below_it() {
    assert!(under("a/b", "a"));
    assert!(under("a/b", "a/"));
    assert!(under("a", "a"));
    assert!(!under("ab", "a"));
    assert!(under("x", ""));
    assert!(under("x", "/"));
}

/// `keep_file_as`: a copy rewritten since it was hashed is not kept (and
/// leaves no temp file); an intact one is, and is then "recently kept"
/// for the same path, hash and vector only.
#[test]
fn a_copy_is_kept_only_with_the_expected_hash_and_once_per_superseded_entry() {
    let root = folder();
    let v = Versions::open(root.path(), VersionsPolicy::default()).unwrap();
    let p = root.path().join("copy");
    std::fs::write(&p, b"rewritten in place").unwrap();
    let want = *blake3::hash(b"the old bytes").as_bytes();
    let file = File::open(&p).unwrap();
    let err = v
        .keep_file_as(&file, meta("a", Reason::Local), want, &|_| {})
        .unwrap_err();
    assert!(
        matches!(&err, VersionsError::ContentChanged { path, .. } if path == "a"),
        "{err}"
    );
    assert_eq!(v.count(), 0);
    assert!(names_in(&root.path().join(RESERVED_DIR).join(TMP_DIR)).is_empty());
    assert!(!v.recently_kept("a", &want, &meta("a", Reason::Local).version));

    std::fs::write(&p, b"the old bytes").unwrap();
    let file = File::open(&p).unwrap();
    let info = v
        .keep_file_as(&file, meta("a", Reason::Local), want, &|_| {})
        .unwrap()
        .expect("kept");
    assert_eq!(
        (info.reason, v.read(&info.id).unwrap()),
        (Reason::Local, b"the old bytes".to_vec())
    );
    let vv = meta("a", Reason::Local).version;
    assert!(v.recently_kept("a", &want, &vv));
    assert!(!v.recently_kept("b", &want, &vv));
    assert!(!v.recently_kept("a", &[0; 32], &vv));
    let newer = vv.bump(ShortId(0xab)).unwrap();
    assert!(!v.recently_kept("a", &want, &newer));
}
