//! Strangers cannot lock members out (issue 9): a flood of connections
//! that never finish the handshake, from the same address as the member,
//! while a member nobody configured joins. Its own test binary, so it never
//! competes with other multi-node tests for the CPU.

use std::{
    fs,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use fleetsync_integration_tests::*;
use fleetsync_mesh::{
    iroh::{EndpointAddr, EndpointId},
    proto::CTRL_ALPN,
};

/// Stranger connections held open at once.
const STRANGERS: usize = 200;
/// What the issue allows the member, from its start to its file on n0.
const MEMBER_DEADLINE: Duration = Duration::from_secs(10);

/// What the flood did, counted by its tasks.
#[derive(Default)]
struct Flood {
    stop: AtomicBool,
    /// Connections that got through QUIC/TLS (each then says nothing).
    opened: AtomicU64,
    /// Of those, closed by the node.
    closed: AtomicU64,
    /// Open right now.
    open_now: AtomicU64,
}

/// One stranger: connect on the control ALPN, open the handshake stream,
/// send nothing; whenever the node closes the connection, connect again.
async fn stall(target: EndpointAddr, flood: Arc<Flood>) {
    let ep = loopback_endpoint().await;
    while !flood.stop.load(Ordering::Relaxed) {
        let Ok(conn) = ep.connect(target.clone(), CTRL_ALPN).await else {
            tokio::task::yield_now().await;
            continue;
        };
        flood.opened.fetch_add(1, Ordering::Relaxed);
        flood.open_now.fetch_add(1, Ordering::Relaxed);
        // Opened but never written: the node sees nothing on it.
        let stream = conn.open_bi().await;
        conn.closed().await;
        drop(stream);
        flood.open_now.fetch_sub(1, Ordering::Relaxed);
        flood.closed.fetch_add(1, Ordering::Relaxed);
    }
    ep.close().await;
}

#[test]
fn two_hundred_stalled_strangers_do_not_keep_a_member_out() {
    let mut c = Cluster::new(2, Topology::Full, |_| vec![FolderSpec::new("shared")]);
    // n0 does not know n1: n1 is a stranger until it proves membership.
    c.nodes[0].peers.clear();
    c.nodes[0].start();
    let n0 = &c.nodes[0];
    let target = EndpointAddr::new(EndpointId::from_bytes(&n0.id).unwrap()).with_ip_addr(n0.udp);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let flood = Arc::new(Flood::default());
    let tasks: Vec<_> = (0..STRANGERS)
        .map(|_| rt.spawn(stall(target.clone(), flood.clone())))
        .collect();
    wait_until(DEADLINE, "the flood to open 200 connections", || {
        flood.opened.load(Ordering::Relaxed) >= STRANGERS as u64
    });

    // The member joins in the middle of the flood, with a file to share.
    fs::write(c.nodes[1].path("from-the-member.txt"), "made it").unwrap();
    let opened_before = flood.opened.load(Ordering::Relaxed);
    let start = Instant::now();
    c.nodes[1].start();
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    let started_after = start.elapsed();
    wait_until(MEMBER_DEADLINE, "the member to connect", || {
        n1.connected_peers() >= 1
    });
    let connected_after = start.elapsed();
    wait_until(
        MEMBER_DEADLINE.saturating_sub(start.elapsed()),
        "the member's file on n0",
        || fs::read_to_string(n0.path("from-the-member.txt")).is_ok_and(|t| t == "made it"),
    );
    let synced_after = start.elapsed();
    let open_at_end = flood.open_now.load(Ordering::Relaxed);
    flood.stop.store(true, Ordering::Relaxed);
    let opened = flood.opened.load(Ordering::Relaxed);
    let closed = flood.closed.load(Ordering::Relaxed);
    eprintln!(
        "member process up after {started_after:?}, connected after {connected_after:?}, \
         file on n0 after {synced_after:?}; flood: {opened} connections opened, \
         {closed} closed by n0, {open_at_end} open at the end"
    );
    assert!(synced_after <= MEMBER_DEADLINE, "{synced_after:?}");
    // The flood was real: strangers kept connecting while the member joined,
    // and n0 turned them over instead of letting them sit.
    assert!(
        opened > opened_before,
        "the flood stopped: {opened} connections"
    );
    assert!(closed > 0, "n0 closed no stranger");
    let log = n0.log();
    assert!(
        log.contains("handshake slot taken by a newer stranger")
            || log.contains("too many pending handshakes from strangers"),
        "n0's admission was never under pressure:\n{}",
        n0.log_tail(40)
    );
    // Stop the strangers (each closes its endpoint) before the nodes go.
    rt.block_on(async {
        for t in tasks {
            t.abort();
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
}
