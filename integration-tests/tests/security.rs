//! Hostile peers: a fleet member that sends hostile paths, oversized and
//! garbage frames; a stranger without the fleet secret. The node must
//! reject and log, write nothing outside its root, and keep syncing with
//! honest peers.

use std::{fs, os::unix::fs::symlink, path::Path};

use fleetsync_integration_tests::{
    member::{addr_of, dir_entry},
    *,
};
use fleetsync_mesh::{
    auth::{self, FleetKey},
    codec::{read_msg, write_msg},
    index_stream::{IndexRequest, IndexResponse},
    iroh::endpoint::Connection,
    model::{EntryKind, FileEntry, ShortId},
    proto::{Handshake, BLOBS_ALPN, CTRL_ALPN, MIN_COMPATIBLE_VERSION, PROTOCOL_VERSION},
};

/// Serve the node's subscriptions: first a batch of hostile entries (plus
/// honest ones), then an oversized frame, then garbage, then an honest,
/// open-ended stream.
async fn misbehave(
    conn: Connection,
    me: ShortId,
    outside: String,
    next: std::sync::Arc<tokio::sync::Notify>,
) {
    let mut round = 0;
    loop {
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            return;
        };
        let Ok(Some((IndexRequest::Subscribe(want), _))) =
            read_msg::<_, IndexRequest>(&mut recv, Default::default()).await
        else {
            return;
        };
        round += 1;
        match round {
            1 => {
                let mut entries: Vec<FileEntry> = [
                    "../escape-dir",
                    &format!("{outside}/abs-escape"),
                    "a/../../escape2",
                    "nul\0byte",
                    "back\\..\\slash",
                    ".fleetsync/tmp/injected",
                    "evil/pwned-dir",
                    "honest-dir",
                ]
                .iter()
                .map(|p| dir_entry(p, me))
                .collect();
                let mut link = dir_entry("honest-link", me);
                link.kind = EntryKind::Symlink;
                link.symlink_target = Some("honest-dir".into());
                entries.push(link);
                let batch = IndexResponse::Batch {
                    folder: want.folder.clone(),
                    index_id: 42,
                    entries,
                    up_to: 9,
                };
                write_msg(&mut send, &batch).await.unwrap();
                // Once the test saw the node apply it, end the stream to
                // make the node come back for more.
                next.notified().await;
                let _ = send.finish();
            }
            2 => {
                // A frame header claiming 1 GiB.
                let _ = send.write_all(&(1u32 << 30).to_be_bytes()).await;
                let _ = send.write_all(&[0u8; 64]).await;
            }
            3 => {
                let _ = send
                    .write_all(&[0, 0, 0, 12, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7])
                    .await;
            }
            _ => {
                // Behave from now on: caught up, stream held open.
                let msg = IndexResponse::CaughtUp {
                    folder: want.folder.clone(),
                    index_id: 42,
                    seq: 9,
                };
                let _ = write_msg(&mut send, &msg).await;
                tokio::spawn(async move {
                    let _keep = (send, recv);
                    std::future::pending::<()>().await
                });
            }
        }
    }
}

#[test]
fn a_hostile_member_is_rejected_and_logged_and_honest_sync_goes_on() {
    let outside = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(2, Topology::Full, |_| vec![FolderSpec::new("shared")]);
    // A local symlink on a pointing outside the folder: a later remote
    // entry "evil/…" must not be written through it.
    symlink(outside.path(), c.nodes[0].path("evil")).unwrap();
    for n in &mut c.nodes {
        n.start();
    }
    c.wait_connected();
    let a = &c.nodes[0];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let secret = a.secret;
    let a_addr = addr_of(a);
    let outside_s = outside.path().display().to_string();
    let next = std::sync::Arc::new(tokio::sync::Notify::new());
    let next2 = next.clone();
    let (ep, _conn) = rt.block_on(async {
        let ep = loopback_endpoint().await;
        let conn = ep.connect(a_addr.clone(), CTRL_ALPN).await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let me = ep.id();
        auth::dial(
            &FleetKey::new(&secret),
            me,
            a_addr.id,
            vec![],
            &mut recv,
            &mut send,
        )
        .await
        .expect("a member with the secret is admitted");
        tokio::spawn(misbehave(
            conn.clone(),
            ShortId::from_node_id(me.as_bytes()),
            outside_s,
            next2,
        ));
        (ep, (conn, send, recv))
    });

    wait_until(
        DEADLINE,
        "the honest entries from the hostile member",
        || a.path("honest-dir").is_dir() && fs::symlink_metadata(a.path("honest-link")).is_ok(),
    );
    next.notify_one();
    wait_until(
        DEADLINE,
        "the oversized and garbage frames to be rejected",
        || {
            let log = a.log();
            log.contains("frame of 1073741824 bytes exceeds") && log.contains("malformed message")
        },
    );
    let log = a.log();
    for needle in ["rejected entry from peer", "rejected malformed index data"] {
        assert!(
            log.contains(needle),
            "log lacks {needle:?}:\n{}",
            a.log_tail(80)
        );
    }
    // Nothing escaped the root.
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "wrote through the symlink"
    );
    // "evil/pwned-dir" never went through the symlink: either it was
    // refused as leading through one, or (the symlink already recorded) the
    // file-vs-directory rule made `evil` a directory inside the folder and
    // kept the symlink, untouched, as its conflict copy.
    let kept_aside = fs::read_dir(a.path(""))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("evil.sync-conflict-")
        })
        .any(|e| fs::read_link(e.path()).is_ok_and(|t| t == outside.path()));
    assert!(
        log.contains("leads through a symlink") || (a.path("evil").is_dir() && kept_aside),
        "evil/pwned-dir neither refused nor settled:\n{}",
        a.log_tail(80)
    );
    let parent = a.path("").parent().unwrap().to_path_buf();
    assert!(!parent.join("escape-dir").exists() && !parent.join("escape2").exists());
    assert!(!Path::new(&format!("{}/abs-escape", outside.path().display())).exists());
    assert!(!a.path(".fleetsync/tmp/injected").exists());
    let st = a.folder_status("shared").unwrap();
    assert!(st["rejected"].as_u64().unwrap() >= 7, "{st}");
    // And the node is still up, syncing with its honest peer both ways.
    fs::write(c.nodes[1].path("after-attack.txt"), "still syncing").unwrap();
    wait_until(DEADLINE, "honest sync after the attack", || {
        a.path("after-attack.txt").exists()
    });
    fs::write(a.path("from-a.txt"), "a too").unwrap();
    wait_until(DEADLINE, "a's file on the honest peer", || {
        c.nodes[1].path("from-a.txt").exists()
    });
    assert!(c.nodes[0].status().is_some());
    drop(ep);
}

#[test]
fn a_stranger_without_the_secret_learns_nothing_and_can_fetch_nothing() {
    let c = Cluster::start(1, Topology::Full, |_| vec![FolderSpec::new("shared")]);
    let a = &c.nodes[0];
    fs::write(a.path("secret-plans.txt"), "members only").unwrap();
    wait_until(DEADLINE, "a to index its file", || {
        a.folder_status("shared").is_some_and(|f| f["files"] == 1)
    });
    let hash = blake3::hash(b"members only");
    let a_addr = addr_of(a);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ep = loopback_endpoint().await;
        // 1. The handshake with a wrong secret fails: the node checks the
        //    stranger's proof first and refuses it, never showing its own.
        let conn = ep.connect(a_addr.clone(), CTRL_ALPN).await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let res = auth::dial(
            &FleetKey::new(&[0xAB; 32]),
            ep.id(),
            a_addr.id,
            vec![],
            &mut recv,
            &mut send,
        )
        .await;
        assert!(
            matches!(res, Err(auth::HandshakeError::Refused(_))),
            "{res:?}"
        );

        // 2. Forging a proof: the node refuses and closes.
        let conn = ep.connect(a_addr.clone(), CTRL_ALPN).await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        write_msg(
            &mut send,
            &Handshake::Hello {
                version: PROTOCOL_VERSION,
                min_version: MIN_COMPATIBLE_VERSION,
                nonce: [1; 32],
            },
        )
        .await
        .unwrap();
        let lim = auth::HANDSHAKE_LIMITS;
        // The challenge carries versions and a nonce, no MAC: nothing to
        // test secret guesses against offline.
        let challenge = read_msg::<_, Handshake>(&mut recv, lim).await.unwrap();
        assert!(
            matches!(challenge, Some((Handshake::Challenge2 { .. }, _))),
            "expected a MAC-less Challenge2: {challenge:?}"
        );
        write_msg(
            &mut send,
            &Handshake::Proof {
                mac: [7; 32],
                listen: vec![],
            },
        )
        .await
        .unwrap();
        let reply = read_msg::<_, Handshake>(&mut recv, lim).await;
        assert!(
            matches!(reply, Ok(Some((Handshake::Refused { .. }, _)))),
            "forged proof not refused: {reply:?}"
        );
        // After the refusal: no further frame, and the node closes.
        let after = read_msg::<_, Handshake>(&mut recv, lim).await;
        assert!(matches!(after, Ok(None) | Err(_)), "{after:?}");
        tokio::time::timeout(DEADLINE, conn.closed())
            .await
            .expect("the node closes the connection after refusing");
        // 3. Pushing index entries anyway goes nowhere.
        if let Ok((mut s, _r)) = conn.open_bi().await {
            let entry = dir_entry("stranger-was-here", ShortId(1));
            let _ = write_msg(
                &mut s,
                &IndexResponse::Batch {
                    folder: "shared".into(),
                    index_id: 1,
                    entries: vec![entry],
                    up_to: 1,
                },
            )
            .await;
        }
        // 4. Blob fetch is refused at the connection gate.
        let got = match ep.connect(a_addr.clone(), BLOBS_ALPN).await {
            Ok(conn) => iroh_blobs::get::request::get_blob(conn, hash.into())
                .await
                .ok(),
            Err(_) => None,
        };
        assert!(got.is_none(), "a stranger fetched content");
    });
    let log = a.log();
    assert!(
        log.contains("rejected control connection"),
        "{}",
        a.log_tail(40)
    );
    assert!(
        log.contains("blob access requires proven fleet membership"),
        "{}",
        a.log_tail(40)
    );
    assert_eq!(a.connected_peers(), 0);

    // Positive control: with the secret, the same fetch works.
    let secret = a.secret;
    rt.block_on(async {
        let ep = loopback_endpoint().await;
        let conn = ep.connect(a_addr.clone(), CTRL_ALPN).await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        auth::dial(
            &FleetKey::new(&secret),
            ep.id(),
            a_addr.id,
            vec![],
            &mut recv,
            &mut send,
        )
        .await
        .unwrap();
        let bconn = ep.connect(a_addr.clone(), BLOBS_ALPN).await.unwrap();
        let data = iroh_blobs::get::request::get_blob(bconn, hash.into())
            .await
            .unwrap();
        assert_eq!(&data[..], b"members only");
        drop(conn);
    });
    assert!(!a.path("stranger-was-here").exists());
}
