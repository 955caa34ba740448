//! The receiver's side of index streams: one subscription per peer
//! session, kept alive for as long as the session lives. Every entry is
//! screened (hostile or malformed entries are rejected and counted,
//! ignored paths dropped) before it reaches the actor as [`Ingest`].

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use actix::Addr;
use fleetsync_mesh::{
    codec::{read_msg, write_msg, Limits},
    model::{EntryKind, FileEntry},
    proto::{FolderWant, IndexRequest, IndexResponse},
    PeerSession,
};
use tracing::{debug, info, warn};

use super::{
    msg::{CaughtUp, Ingest},
    Receiver,
};
use crate::{folder::Folder, index::RemoteMark, rt};

enum Flow {
    Stop,
}

/// Keep a subscription to one peer's index alive for the session.
pub(super) async fn pull(addr: Addr<Receiver>, ctx: Arc<Folder>, s: PeerSession) {
    let peer = s.peer.fmt_short().to_string();
    let mut backoff = Duration::from_millis(500);
    loop {
        if s.conn.close_reason().is_some() {
            return;
        }
        let c = ctx.clone();
        let pb = *s.peer.as_bytes();
        let mark = rt::blocking(move || c.index.remote_mark(c.id(), &pb))
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten()
            .unwrap_or_default();
        match subscribe(&addr, &ctx, &s, mark).await {
            Ok(Flow::Stop) => return,
            Err(e) => debug!(%peer, folder = ctx.id(), "index subscription ended: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = s.conn.closed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn subscribe(
    addr: &Addr<Receiver>,
    ctx: &Folder,
    s: &PeerSession,
    mark: RemoteMark,
) -> Result<Flow, String> {
    let peer = s.peer.fmt_short().to_string();
    let (mut send, mut recv) = s.conn.open_bi().await.map_err(|e| e.to_string())?;
    let want = FolderWant {
        folder: ctx.id().to_string(),
        index_id: mark.index_id,
        since: mark.seq,
    };
    write_msg(&mut send, &IndexRequest::Subscribe(want))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let msg = match read_msg::<_, IndexResponse>(&mut recv, Limits::default()).await {
            Ok(Some((m, _))) => m,
            Ok(None) => return Err("peer closed the index stream".into()),
            Err(fleetsync_mesh::codec::CodecError::Io(e)) => return Err(e.to_string()),
            Err(e) => {
                warn!(%peer, folder = ctx.id(), "rejected malformed index data from peer: {e}");
                ctx.status.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(e.to_string());
            }
        };
        match msg {
            IndexResponse::Batch {
                folder,
                index_id,
                entries,
                up_to,
            } => {
                if folder != ctx.id() {
                    warn!(%peer, "peer sent entries for folder {folder:?} on the {:?} stream; dropping stream", ctx.id());
                    return Err("protocol violation".into());
                }
                let entries = screen(ctx, &peer, entries);
                let res = addr
                    .send(Ingest {
                        peer: s.peer,
                        mark: RemoteMark {
                            index_id,
                            seq: up_to,
                        },
                        entries,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                res.map_err(|e| e.to_string())?;
            }
            IndexResponse::CaughtUp { seq, .. } => {
                addr.do_send(CaughtUp { peer: s.peer, seq });
            }
            IndexResponse::NotShared { folder } => {
                info!(%peer, %folder, "peer does not share this folder");
                return Ok(Flow::Stop);
            }
        }
    }
}

/// Drop what must never reach the index: malformed or hostile entries
/// (logged), and paths this folder ignores (silently: not touched).
fn screen(ctx: &Folder, peer: &str, entries: Vec<FileEntry>) -> Vec<FileEntry> {
    let ig = ctx.ignore();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        if let Err(err) = e.validate() {
            warn!(%peer, folder = ctx.id(), "rejected entry from peer: {err}");
            ctx.status.rejected.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if ig.is_ignored(&e.path, e.kind == EntryKind::Directory) {
            continue;
        }
        out.push(e);
    }
    out
}
