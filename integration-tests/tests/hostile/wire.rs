//! Wire-level hostility from a member holding the secret (issue 10, cases 1,
//! 2 and the mesh part of 6): oversized version vectors and counters at
//! `u64::MAX` are rejected and counted, the node stays up and keeps syncing
//! both ways, and a local edit of a path the member tried to poison still
//! propagates; index streams past the per-session cap are refused and
//! counted.

use std::fs;

use fleetsync_integration_tests::{
    member::{dir_entry, Member},
    *,
};
use fleetsync_mesh::{
    codec::write_msg,
    index_stream::{FolderWant, IndexRequest, MAX_SERVED_STREAMS},
    model::{FileEntry, ShortId, VersionVector},
};

/// Entries a hostile member sends with a `pairs`-long vector each, of
/// pseudo-random (incompressible) ids and counters, so the node's own index
/// batch carrying them would exceed the frame cap.
fn oversized(n: usize, pairs: usize) -> Vec<FileEntry> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let mut e = dir_entry(&format!("vv-{i}"), ShortId(1));
            e.version =
                VersionVector::from_pairs((0..pairs).map(|_| (ShortId(next()), next() >> 40 | 1)));
            e
        })
        .collect()
}

/// A tombstone for `path` that claims `victim`'s counter is at `u64::MAX`.
fn max_counter_tombstone(path: &str, victim: ShortId, me: ShortId) -> FileEntry {
    let mut e = dir_entry(path, me);
    e.kind = fleetsync_mesh::model::EntryKind::File;
    e.deleted = true;
    e.version = VersionVector::from_pairs([(victim, u64::MAX), (me, 1)]);
    e
}

#[test]
fn oversized_version_vectors_and_counter_overflow_are_rejected_and_sync_goes_on() {
    let c = Cluster::start(2, Topology::Full, |_| vec![FolderSpec::new("shared")]);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    fs::write(a.path("victim.txt"), "v1").unwrap();
    wait_until(DEADLINE, "victim.txt on b", || {
        fs::read(b.path("victim.txt")).is_ok_and(|d| d == b"v1")
    });

    let member = Member::join(a);
    let me = member.me;
    let a_short = ShortId::from_node_id(&a.id);
    // 100 entries × 10,000 pairs ≈ 18 MB of vectors: over the 8 MiB frame
    // cap once the node serves them. Sent 20 per batch so the member's
    // own frames fit.
    let mut batches: Vec<Vec<FileEntry>> = oversized(100, 10_000)
        .chunks(20)
        .map(<[FileEntry]>::to_vec)
        .collect();
    batches.push(vec![
        max_counter_tombstone("victim.txt", a_short, me),
        dir_entry("member-honest", me),
    ]);
    member.serve_batches(batches);

    wait_until(DEADLINE, "the member's honest entry on a", || {
        a.path("member-honest").is_dir()
    });
    let st = a.folder_status("shared").unwrap();
    assert!(st["rejected"].as_u64().unwrap() >= 101, "{st}");
    let log = a.log();
    for needle in ["longer than MAX_VECTOR_LEN", "above MAX_COUNTER"] {
        assert!(
            log.contains(needle),
            "log lacks {needle:?}:\n{}",
            a.log_tail(60)
        );
    }
    assert!(
        a.path("victim.txt").exists(),
        "the hostile tombstone was applied"
    );

    // Still syncing both ways with the honest peer.
    fs::write(b.path("from-b.txt"), "b").unwrap();
    wait_until(DEADLINE, "b's file on a", || a.path("from-b.txt").exists());
    wait_until(DEADLINE, "the member's honest entry on b", || {
        b.path("member-honest").is_dir()
    });
    // The overflow case: a local edit of the poisoned path propagates.
    fs::write(a.path("victim.txt"), "v2 after the attack").unwrap();
    wait_until(DEADLINE, "a's edit of victim.txt on b", || {
        fs::read(b.path("victim.txt")).is_ok_and(|d| d == b"v2 after the attack")
    });
    assert!(a.status().is_some(), "a is up");
    drop(member);
}

/// The member's entry in `node`'s status: its refused index streams.
fn refused_streams(node: &Node, member: &Member) -> u64 {
    let id = member.ep.id().to_string();
    node.status()
        .and_then(|st| {
            st["peers"]
                .as_array()?
                .iter()
                .find(|p| p["id"].as_str() == Some(id.as_str()))?["refused_streams"]
                .as_u64()
        })
        .unwrap_or(0)
}

#[test]
fn subscribe_streams_per_session_are_capped_and_counted() {
    let c = Cluster::start(2, Topology::Full, |_| vec![FolderSpec::new("shared")]);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let member = Member::join(a);
    let extra = 20;
    let opened = MAX_SERVED_STREAMS + extra;
    let held = member.rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..opened {
            let (mut send, recv) = member.conn.open_bi().await.unwrap();
            let want = FolderWant {
                folder: "shared".into(),
                index_id: 0,
                since: 0,
            };
            // A refused stream may already be stopped: that is the point.
            write_msg(&mut send, &IndexRequest::Subscribe(want))
                .await
                .ok();
            held.push((send, recv));
        }
        held
    });
    wait_until(DEADLINE, "the streams past the cap to be refused", || {
        refused_streams(a, &member) >= extra as u64
    });
    assert!(
        a.log()
            .contains("index streams at once; refusing the extras"),
        "{}",
        a.log_tail(40)
    );
    // The node is up and still syncing both ways.
    fs::write(b.path("from-b.txt"), "b").unwrap();
    wait_until(DEADLINE, "b's file on a", || a.path("from-b.txt").exists());
    fs::write(a.path("from-a.txt"), "a").unwrap();
    wait_until(DEADLINE, "a's file on b", || b.path("from-a.txt").exists());
    drop(held);
    drop(member);
}
