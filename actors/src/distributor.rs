//! Distributor (one per node): keeps every connected peer's copy of our
//! index current.
//!
//! A peer subscribes per folder on its own QUIC stream, telling us our
//! index id and the last sequence number it has (Syncthing-style delta
//! index). We send what it lacks in batches, a `CaughtUp` marker, and then
//! each new commit as the folder's head signal moves. QUIC flow control is
//! the backpressure: a slow peer simply makes our writes wait.
//!
//! We never send entries a peer gave us verbatim back to it (no echo), nor
//! unannounced local edits of receive-only folders. Entries applied from
//! one peer are offered to all others, so changes travel across the mesh.
//!
//! Serving runs in tasks on the node runtime; the actor owns their handles
//! (aborted on peer loss or restart) and the progress it reports.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use actix::prelude::*;
use fleetsync_mesh::iroh::endpoint::{RecvStream, SendStream};
use fleetsync_mesh::{
    codec::{read_msg, write_msg},
    proto::{FolderWant, IndexRequest, IndexResponse, BATCH_ENTRIES, REQUEST_LIMITS},
    EndpointId, PeerSession,
};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::{
    folder::Folder,
    msg::{PeerDown, PeerUp, Ping},
    rt,
};

pub mod msg {
    use actix::Message;

    /// What each peer has been sent, per folder.
    #[derive(Debug, Message)]
    #[rtype(result = "Vec<super::Outbound>")]
    pub struct GetOutbound;
}

use msg::GetOutbound;

/// Progress of one subscription.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub peer: EndpointId,
    pub folder: String,
    pub sent_seq: u64,
    pub caught_up: bool,
}

type Progress = Arc<Mutex<BTreeMap<(EndpointId, String), Outbound>>>;

pub struct Distributor {
    folders: Arc<HashMap<String, Arc<Folder>>>,
    sessions: HashMap<u64, (EndpointId, JoinHandle<()>)>,
    progress: Progress,
}

impl Distributor {
    pub fn new(folders: Arc<HashMap<String, Arc<Folder>>>) -> Self {
        Distributor {
            folders,
            sessions: HashMap::new(),
            progress: Default::default(),
        }
    }
}

impl Actor for Distributor {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        for (_, (_, h)) in self.sessions.drain() {
            h.abort();
        }
    }
}

impl Handler<Ping> for Distributor {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}

impl Handler<PeerUp> for Distributor {
    type Result = ();

    fn handle(&mut self, PeerUp(s): PeerUp, _: &mut Context<Self>) {
        if self.sessions.contains_key(&s.conn_id) {
            return;
        }
        let h = rt::spawn(serve_session(
            s.clone(),
            self.folders.clone(),
            self.progress.clone(),
        ));
        self.sessions.insert(s.conn_id, (s.peer, h));
    }
}

impl Handler<PeerDown> for Distributor {
    type Result = ();

    fn handle(&mut self, m: PeerDown, _: &mut Context<Self>) {
        if let Some((_, h)) = self.sessions.remove(&m.conn_id) {
            h.abort();
        }
        self.progress
            .lock()
            .expect("progress lock")
            .retain(|(p, _), _| *p != m.peer);
    }
}

impl Handler<GetOutbound> for Distributor {
    type Result = MessageResult<GetOutbound>;

    fn handle(&mut self, _: GetOutbound, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.progress
                .lock()
                .expect("progress lock")
                .values()
                .cloned()
                .collect(),
        )
    }
}

/// Accept the peer's subscription streams for as long as the connection lives.
async fn serve_session(
    s: PeerSession,
    folders: Arc<HashMap<String, Arc<Folder>>>,
    progress: Progress,
) {
    let mut streams = JoinSet::new();
    loop {
        let (send, recv) = match s.conn.accept_bi().await {
            Ok(x) => x,
            Err(e) => {
                debug!(peer = %s.peer.fmt_short(), "session ended: {e}");
                return;
            }
        };
        streams.spawn(serve_stream(
            s.clone(),
            send,
            recv,
            folders.clone(),
            progress.clone(),
        ));
        // Reap finished streams so the set stays small.
        while streams.try_join_next().is_some() {}
    }
}

async fn serve_stream(
    s: PeerSession,
    mut send: SendStream,
    mut recv: RecvStream,
    folders: Arc<HashMap<String, Arc<Folder>>>,
    progress: Progress,
) {
    let peer = s.peer.fmt_short().to_string();
    let req = tokio::time::timeout(
        Duration::from_secs(10),
        read_msg::<_, IndexRequest>(&mut recv, REQUEST_LIMITS),
    )
    .await;
    let want: FolderWant = match req {
        Ok(Ok(Some((IndexRequest::Subscribe(w), _)))) => w,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            warn!(%peer, "rejected malformed index request: {e}");
            return;
        }
        Err(_) => {
            warn!(%peer, "index request timed out");
            return;
        }
    };
    let Some(ctx) = folders.get(&want.folder).cloned() else {
        info!(%peer, folder = %want.folder, "peer asked for a folder we do not share");
        let _ = write_msg(
            &mut send,
            &IndexResponse::NotShared {
                folder: want.folder,
            },
        )
        .await;
        let _ = send.finish();
        return;
    };
    let folder = ctx.id().to_string();
    let key = (s.peer, folder.clone());
    let mut cursor = if want.index_id == ctx.index_id {
        want.since
    } else {
        0
    };
    debug!(%peer, %folder, since = cursor, "serving index");
    let mut head = ctx.head.subscribe();
    let mut caught_up = false;
    // The subscriber closing its side ends the subscription.
    let closed = async {
        let mut buf = [0u8; 1];
        let _ = recv.read(&mut buf).await;
    };
    tokio::pin!(closed);
    loop {
        let c = ctx.clone();
        let from = cursor;
        let batch = match rt::blocking(move || c.index.since(c.id(), from, BATCH_ENTRIES)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                warn!(%folder, "cannot read index to serve {peer}: {e}");
                return;
            }
            Err(e) => {
                warn!(%folder, "cannot read index to serve {peer}: {e}");
                return;
            }
        };
        if batch.is_empty() {
            if !caught_up {
                caught_up = true;
                let msg = IndexResponse::CaughtUp {
                    folder: folder.clone(),
                    index_id: ctx.index_id,
                    seq: cursor,
                };
                if write_msg(&mut send, &msg).await.is_err() {
                    return;
                }
                progress.lock().expect("progress lock").insert(
                    key.clone(),
                    Outbound {
                        peer: s.peer,
                        folder: folder.clone(),
                        sent_seq: cursor,
                        caught_up: true,
                    },
                );
            }
            tokio::select! {
                r = head.wait_for(|h| *h > cursor) => if r.is_err() { return },
                _ = &mut closed => return,
            }
            continue;
        }
        caught_up = false;
        let up_to = batch.last().map(|r| r.entry.sequence).unwrap_or(cursor);
        let entries: Vec<_> = batch
            .into_iter()
            .filter(|r| !r.local_changed && r.received_from != Some(s.short))
            .map(|r| r.entry)
            .collect();
        let msg = IndexResponse::Batch {
            folder: folder.clone(),
            index_id: ctx.index_id,
            entries,
            up_to,
        };
        if let Err(e) = write_msg(&mut send, &msg).await {
            debug!(%peer, %folder, "index stream closed: {e}");
            return;
        }
        cursor = up_to;
        progress.lock().expect("progress lock").insert(
            key.clone(),
            Outbound {
                peer: s.peer,
                folder: folder.clone(),
                sent_seq: cursor,
                caught_up: false,
            },
        );
    }
}
