//! A scripted fleet member built from the project's own mesh parts: it holds
//! the fleet secret, passes the handshake like any node, and answers the
//! node's index subscriptions with whatever batches a test scripts. The
//! hostile-member tests use it to send what no honest node would.

use std::sync::Arc;

use fleetsync_mesh::{
    auth::{self, FleetKey},
    codec::{read_msg, write_msg},
    index_stream::{IndexRequest, IndexResponse},
    iroh::{
        endpoint::{Connection, RecvStream, SendStream},
        EndpointAddr, EndpointId,
    },
    model::{EntryKind, FileEntry, ShortId, VersionVector},
    proto::CTRL_ALPN,
};
use tokio::runtime::Runtime;

use crate::{loopback_endpoint, Node};

/// The node's address as a member dials it.
pub fn addr_of(n: &Node) -> EndpointAddr {
    EndpointAddr::new(EndpointId::from_bytes(&n.id).unwrap()).with_ip_addr(n.udp)
}

/// A directory entry authored by `me` at version `{me: 1}`.
pub fn dir_entry(path: &str, me: ShortId) -> FileEntry {
    FileEntry {
        path: path.into(),
        kind: EntryKind::Directory,
        size: 0,
        mtime_ns: 1,
        mode: 0o755,
        hash: None,
        symlink_target: None,
        deleted: false,
        version: VersionVector::from_pairs([(me, 1)]),
        modified_by: me,
        sequence: 1,
    }
}

/// A file entry authored by `me` at version `{me: 1}` announcing `hash` and
/// `size` (which a hostile member need not hold or tell the truth about).
pub fn file_entry(path: &str, me: ShortId, hash: [u8; 32], size: u64) -> FileEntry {
    FileEntry {
        kind: EntryKind::File,
        size,
        mode: 0o644,
        hash: Some(hash),
        ..dir_entry(path, me)
    }
}

/// A member connected to one node with a proven handshake. Dropping it
/// closes the connection and stops its runtime.
pub struct Member {
    pub rt: Runtime,
    pub ep: fleetsync_mesh::iroh::Endpoint,
    pub conn: Connection,
    /// The member's short id, as the node records it in version vectors.
    pub me: ShortId,
    _ctrl: (SendStream, RecvStream),
}

impl Member {
    /// Dial `node` with its fleet secret and pass the handshake (panics if
    /// refused: a member holding the secret must be admitted).
    pub fn join(node: &Node) -> Member {
        let secret = node.secret;
        let rt = Runtime::new().unwrap();
        let addr = addr_of(node);
        let (ep, conn, ctrl) = rt.block_on(async {
            let ep = loopback_endpoint().await;
            let conn = ep.connect(addr.clone(), CTRL_ALPN).await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            auth::dial(
                &FleetKey::new(&secret),
                ep.id(),
                addr.id,
                vec![],
                &mut recv,
                &mut send,
            )
            .await
            .expect("a member with the secret is admitted");
            (ep, conn, (send, recv))
        });
        let me = ShortId::from_node_id(ep.id().as_bytes());
        Member {
            rt,
            ep,
            conn,
            me,
            _ctrl: ctrl,
        }
    }

    /// Answer every index subscription the node opens: send `batches` in
    /// order (sequence numbers 1.., `up_to` counting entries), then
    /// `CaughtUp`, and hold the stream open. Each new subscription gets the
    /// same script again from the start.
    pub fn serve_batches(&self, batches: Vec<Vec<FileEntry>>) {
        let conn = self.conn.clone();
        let batches = Arc::new(batches);
        self.rt.spawn(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(answer(send, recv, batches.clone()));
            }
        });
    }
}

async fn answer(mut send: SendStream, mut recv: RecvStream, batches: Arc<Vec<Vec<FileEntry>>>) {
    let Ok(Some((IndexRequest::Subscribe(want), _))) =
        read_msg::<_, IndexRequest>(&mut recv, Default::default()).await
    else {
        return;
    };
    let mut up_to = 0u64;
    for entries in batches.iter() {
        up_to += entries.len() as u64;
        let batch = IndexResponse::Batch {
            folder: want.folder.clone(),
            index_id: 42,
            entries: entries.clone(),
            up_to,
        };
        if write_msg(&mut send, &batch).await.is_err() {
            return;
        }
    }
    let caught_up = IndexResponse::CaughtUp {
        folder: want.folder.clone(),
        index_id: 42,
        seq: up_to,
    };
    if write_msg(&mut send, &caught_up).await.is_err() {
        return;
    }
    // Hold the stream open like an honest, idle member.
    let _keep = (send, recv);
    std::future::pending::<()>().await
}
