//! Regression: renaming a directory with more entries than one processing
//! round holds left the old (empty) directory behind, which then came back
//! to life on every node.

use std::fs;

use fleetsync_integration_tests::*;

#[test]
fn renaming_a_directory_of_1000_files_leaves_no_old_directory_behind() {
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
}
