//! Kept versions: what a sync overwrites or deletes on a node is kept
//! under `.fleetsync/versions/` as zstd frames of the exact old bytes,
//! listed by `fleetsync versions`, evicted oldest first past the limits,
//! and not kept at all with `versions = "off"`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use fleetsync_integration_tests::*;
use serde_json::Value;

/// The version files of folder `id` on `node`, sorted by name (= age).
fn version_files(node: &Node, id: &str) -> Vec<PathBuf> {
    let dir = node.folder(id).join(".fleetsync/versions");
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|x| x == "zst"));
    v.sort();
    v
}

/// Every kept version's bytes, decompressed with the zstd library (which
/// skips the metadata frame like `zstd -d` does).
fn kept_contents(node: &Node, id: &str) -> Vec<Vec<u8>> {
    version_files(node, id)
        .iter()
        .map(|p| zstd::stream::decode_all(&fs::read(p).unwrap()[..]).unwrap())
        .collect()
}

fn versions_count(node: &Node, id: &str) -> u64 {
    node.folder_status(id)
        .and_then(|f| f["versions_count"].as_u64())
        .unwrap_or(u64::MAX)
}

fn listed(node: &Node, args: &[&str]) -> Vec<Value> {
    let (code, out, err) = node.cli(&[&["versions", "--json"], args].concat());
    assert_eq!(code, 0, "fleetsync versions failed: {err}");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

/// When the `zstd` tool is installed, it prints the exact old bytes too.
fn zstd_tool_agrees(file: &Path, want: &[u8]) {
    let Ok(out) = Command::new("zstd").arg("-dcq").arg(file).output() else {
        eprintln!("zstd tool not installed: checked with the zstd library only");
        return;
    };
    assert!(out.status.success(), "zstd -d {}", file.display());
    assert_eq!(out.stdout, want, "zstd -d {}", file.display());
}

#[test]
fn overwrite_and_delete_on_one_node_are_kept_on_the_others() {
    let c = Cluster::start(3, Topology::Full, |_| vec![FolderSpec::new("shared")]);
    let a = &c.nodes[0];
    let v1 = pseudo_random(200_000, 1);
    let doomed = pseudo_random(5_000, 2);
    fs::create_dir_all(a.path("d")).unwrap();
    fs::write(a.path("a.bin"), &v1).unwrap();
    fs::write(a.path("d/b.txt"), &doomed).unwrap();
    c.wait_converged("the first contents everywhere");

    fs::write(a.path("a.bin"), b"second version").unwrap();
    c.wait_converged("the overwrite everywhere");
    fs::remove_file(a.path("d/b.txt")).unwrap();
    c.wait_converged("the delete everywhere");

    for node in &c.nodes[1..] {
        let mut kept = kept_contents(node, "shared");
        kept.sort();
        let mut want = vec![v1.clone(), doomed.clone()];
        want.sort();
        assert_eq!(kept, want, "{}: kept versions", node.name);
        assert_eq!(versions_count(node, "shared"), 2, "{}", node.name);
        for f in version_files(node, "shared") {
            let bytes = zstd::stream::decode_all(&fs::read(&f).unwrap()[..]).unwrap();
            zstd_tool_agrees(&f, &bytes);
        }
        let all = listed(node, &["--folder", "shared"]);
        let paths: Vec<&str> = all.iter().map(|v| v["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["d/b.txt", "a.bin"], "newest first");
        assert_eq!(all[0]["reason"], "delete");
        assert_eq!(all[1]["reason"], "overwrite");
        assert_eq!(all[1]["size"], 200_000);
        assert_eq!(all[1]["replaced_by"], a.status().unwrap()["short_id"]);
        let only = listed(node, &["--folder", "shared", "d"]);
        assert_eq!(only.len(), 1);
        let (code, text, _) = node.cli(&["versions", "--folder", "shared"]);
        assert_eq!(code, 0);
        assert!(
            text.contains("a.bin") && text.contains(all[1]["id"].as_str().unwrap()),
            "{text}"
        );
    }
    // The node whose user made the changes keeps nothing by default.
    assert_eq!(versions_count(a, "shared"), 0);
    assert!(version_files(a, "shared").is_empty());
}

#[test]
fn limits_evict_the_oldest_versions_first() {
    let c = Cluster::start(2, Topology::Full, |i| {
        let sized = FolderSpec::new("sized");
        let aged = FolderSpec::new("aged");
        if i == 1 {
            // About two 10 kB incompressible versions fit.
            vec![
                sized.key("versions", "{ max_bytes = \"25KiB\" }"),
                aged.key("versions", "{ keep = \"2s\" }"),
            ]
        } else {
            vec![sized, aged]
        }
    });
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    for i in 0..4u64 {
        fs::write(
            a.folder("sized").join(format!("f{i}")),
            pseudo_random(10_000, i),
        )
        .unwrap();
    }
    fs::write(a.folder("aged").join("x"), b"old").unwrap();
    wait_until(DEADLINE, "the files on b", || {
        (0..4).all(|i| b.folder("sized").join(format!("f{i}")).exists())
            && b.folder("aged").join("x").exists()
    });
    // Overwrite one at a time, each kept before the next.
    for i in 0..4u64 {
        let p = format!("f{i}");
        fs::write(a.folder("sized").join(&p), b"new").unwrap();
        wait_until(DEADLINE, &format!("{p} overwritten on b"), || {
            fs::read(b.folder("sized").join(&p)).is_ok_and(|c| c == b"new")
        });
    }
    let left: Vec<String> = listed(b, &["--folder", "sized"])
        .iter()
        .map(|v| v["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, ["f3", "f2"], "the two newest stay");
    assert_eq!(version_files(b, "sized").len(), 2);
    let bytes = b.folder_status("sized").unwrap()["versions_bytes"]
        .as_u64()
        .unwrap();
    assert!(bytes <= 25 * 1024, "{bytes}");

    fs::write(a.folder("aged").join("x"), b"new").unwrap();
    wait_until(DEADLINE, "x overwritten on b", || {
        fs::read(b.folder("aged").join("x")).is_ok_and(|c| c == b"new")
    });
    // Kept, then gone once older than 2 s.
    assert!(versions_count(b, "aged") <= 1);
    wait_until(DEADLINE, "the aged version to expire", || {
        versions_count(b, "aged") == 0 && version_files(b, "aged").is_empty()
    });
}

#[test]
fn versions_off_keeps_nothing() {
    let c = Cluster::start(2, Topology::Full, |i| {
        let f = FolderSpec::new("shared");
        vec![if i == 1 {
            f.key("versions", "\"off\"")
        } else {
            f
        }]
    });
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    fs::write(a.path("a"), b"one").unwrap();
    fs::write(a.path("b"), b"two").unwrap();
    c.wait_converged("the files on both");
    fs::write(a.path("a"), b"changed").unwrap();
    fs::remove_file(a.path("b")).unwrap();
    c.wait_converged("the changes on both");
    assert_eq!(versions_count(b, "shared"), 0);
    assert!(version_files(b, "shared").is_empty());
    assert!(listed(b, &["--folder", "shared"]).is_empty());
}

/// The listed versions of `path` on `node`: (reason, id, hash), newest first.
fn versions_of(node: &Node, path: &str) -> Vec<(String, String, String)> {
    listed(node, &["--folder", "shared"])
        .iter()
        .filter(|v| v["path"] == path)
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            (s("reason"), s("id"), s("hash"))
        })
        .collect()
}

/// The exact bytes of version `id` of folder "shared" on `node`.
fn version_bytes(node: &Node, id: &str) -> Vec<u8> {
    let file = node.path(&format!(".fleetsync/versions/{id}.zst"));
    let bytes = zstd::stream::decode_all(&fs::read(&file).unwrap()[..]).unwrap();
    zstd_tool_agrees(&file, &bytes);
    bytes
}

fn local_counter(node: &Node, key: &str) -> u64 {
    node.folder_status("shared")
        .and_then(|f| f[key].as_u64())
        .unwrap_or(0)
}

/// `versions = { local = true }` on A: A's own delete, its replace by
/// write-temp-and-rename and its in-place overwrites (of a file made on A
/// and of one received from B: `refs/` holds copies, not hard links, on
/// such a folder) are kept on A (reason "local", exact old bytes), a
/// restore on A reaches every node and is not kept twice, and B (the
/// default) keeps none of its own user's changes.
#[test]
fn local_deletes_and_replacements_are_kept_with_versions_local() {
    let c = Cluster::start(2, Topology::Full, |i| {
        let f = FolderSpec::new("shared");
        vec![if i == 0 {
            f.key("versions", "{ local = true }")
        } else {
            f
        }]
    });
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let gone = pseudo_random(70_000, 11);
    let (swap1, swap2) = (pseudo_random(20_000, 12), pseudo_random(9_000, 13));
    fs::create_dir_all(a.path("d")).unwrap();
    fs::write(a.path("d/gone.bin"), &gone).unwrap();
    fs::write(a.path("swap.txt"), &swap1).unwrap();
    let (inplace, received) = (pseudo_random(4_000, 14), pseudo_random(6_000, 16));
    fs::write(a.path("inplace.txt"), &inplace).unwrap();
    fs::write(a.path("b-own.txt"), pseudo_random(3_000, 15)).unwrap();
    fs::write(b.path("from-b.txt"), &received).unwrap();
    c.wait_converged("the first contents on both");

    fs::remove_file(a.path("d/gone.bin")).unwrap();
    // An editor's save: a temp file (outside the folder, same file
    // system) renamed over the old one.
    let tmp = a.folder("shared").parent().unwrap().join("swap.tmp");
    fs::write(&tmp, &swap2).unwrap();
    fs::rename(&tmp, a.path("swap.txt")).unwrap();
    // Rewritten in place (what vim does to a file with a second hard
    // link): only a copy apart from the file keeps the old bytes.
    for path in ["inplace.txt", "from-b.txt"] {
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(a.path(path))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"rewritten"))
            .unwrap();
    }
    fs::remove_file(b.path("b-own.txt")).unwrap();
    c.wait_converged("the local changes on both");

    let kept = versions_of(a, "d/gone.bin");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].0, "local");
    assert_eq!(version_bytes(a, &kept[0].1), gone);
    let kept = versions_of(a, "swap.txt");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].0, "local");
    assert_eq!(version_bytes(a, &kept[0].1), swap1);
    for (path, old) in [("inplace.txt", &inplace), ("from-b.txt", &received)] {
        let kept = versions_of(a, path);
        assert_eq!(kept.len(), 1, "{path}: {kept:?}");
        assert_eq!(kept[0].0, "local");
        assert_eq!(&version_bytes(a, &kept[0].1), old, "{path}");
    }
    assert_eq!(local_counter(a, "versions_local_kept"), 4);
    assert_eq!(local_counter(a, "versions_local_missed"), 0);
    // B's own delete is kept on A as a peer's delete; B keeps nothing of
    // its own user's (default: local = false).
    assert_eq!(versions_of(a, "b-own.txt")[0].0, "delete");
    assert!(versions_of(b, "b-own.txt").is_empty());
    assert_eq!(local_counter(b, "versions_local_kept"), 0);
    assert!(listed(b, &["--folder", "shared"])
        .iter()
        .all(|v| v["reason"] != "local"));

    // A restore on A (which alone kept these) reaches B.
    for path in ["d/gone.bin", "swap.txt"] {
        let (code, out, err) = a.cli(&["restore", "--folder", "shared", path]);
        assert_eq!(code, 0, "restore {path}: {out}\n{err}");
    }
    for n in &c.nodes {
        wait_until(DEADLINE, &format!("the restores on {}", n.name), || {
            fs::read(n.path("d/gone.bin")).is_ok_and(|g| g == gone)
                && fs::read(n.path("swap.txt")).is_ok_and(|s| s == swap1)
        });
    }
    // The restore kept what it replaced once (reason restore): the
    // watcher seeing the restored file does not keep it again.
    let reasons: Vec<String> = versions_of(a, "swap.txt")
        .into_iter()
        .map(|v| v.0)
        .collect();
    assert_eq!(reasons, ["restore", "local"]);
}
