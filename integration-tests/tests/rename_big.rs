//! Regressions around renaming a large directory:
//! - the old (empty) directory was left behind when the rename spanned more
//!   than one processing round, and then came back to life on every node;
//! - the receiver deleted the old paths first, which dropped the only local
//!   copy of their content, so the new paths downloaded it all again;
//! - the mass-delete guard held the rename's deletes when they reached the
//!   peer in batches before its creates.

use std::fs;

use fleetsync_integration_tests::*;

#[test]
fn renaming_a_directory_of_1000_files_leaves_no_old_directory_behind() {
    // The default mass-delete guard: a rename's deletes often reach b in
    // batches before its creates (the old name sorts first); they wait out
    // the guard's grace, then go as a move, not a mass delete.
    let c = Cluster::start(2, Topology::Full, |_| vec![FolderSpec::new("shared")]);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    fs::create_dir_all(a.path("s5/d000")).unwrap();
    for i in 0..1000 {
        fs::write(
            a.path(&format!("s5/d000/f{i:04}.bin")),
            pseudo_random(4096, i),
        )
        .unwrap();
    }
    wait_until(DEADLINE, "1000 files on b", || {
        fs::read_dir(b.path("s5/d000"))
            .map(|r| r.count())
            .unwrap_or(0)
            == 1000
    });
    c.wait_converged("the directory on both");
    let received = |n: &Node| {
        n.folder_status("shared")
            .map(|f| f["bytes_received"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    let before = received(b);
    assert!(before >= 1000 * 4096, "b received only {before} bytes");
    fs::rename(a.path("s5/d000"), a.path("s5/renamed")).unwrap();
    let t = c.wait_converged("the rename on both");
    assert!(
        !t.contains_key("s5/d000"),
        "old directory survived the rename"
    );
    assert_eq!(
        t.keys().filter(|k| k.starts_with("s5/renamed/")).count(),
        1000
    );
    assert_eq!(
        received(b),
        before,
        "content was downloaded again for a rename"
    );
}
