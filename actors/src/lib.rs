//! fleetsync's actors and the folder index they share.
//!
//! ```text
//!  filesystem ─► Watcher ─► Hasher ─► Index (redb) ─► Distributor ─► peers
//!                  ▲                    ▲    │ head signal              │
//!                  │ MarkDirty          │    ▼                          │
//!                  └──────────────── Receiver ◄─── index streams ◄──────┘
//!                                     │  ▲
//!                             apply ──┘  └── Content (blob store + peers)
//!  Retention: temp files, refs links, blob GC protect set.
//!  Supervisor: starts all, pings each, restarts the dead or stalled, fans
//!  mesh events out.
//! ```
//!
//! Layers, lowest first (a module imports only from layers below it):
//! - [`msg`] (messages several actors answer), [`record`] (what the index
//!   records about a path, what the disk shows, and the one rule comparing
//!   them), [`content`] (the [`content::Content`] seam to the blob store
//!   and peers), [`health`] (progress reports, the stall verdict, the
//!   generation fence), [`rt`], [`slot`].
//! - [`rules`] (convergence, pure and property-tested), [`fsutil`]
//!   (confined file system access), [`space`] (room for a fetch),
//!   [`ignore`], [`scan`], [`guard`] (the mass-delete guard's rule and
//!   state).
//! - [`index`]: the redb index — entries, sequence numbers, pending remote
//!   entries, peer marks, history. Every actor's state is rebuilt from it.
//! - [`folder`]: what one folder's actors share (config, index, content,
//!   live status) — survives actor restarts; [`folder_set`]: the node's
//!   folders, a set a reload can change.
//! - The actors: [`hasher`], [`watcher`], [`distributor`], [`retention`],
//!   and [`receiver`] with its [`apply`] pipeline; each keeps its messages
//!   and their reply types in a `msg` module.
//! - [`supervisor`] (starts and restarts them) and [`status`] (the admin
//!   API's snapshot).

#![warn(clippy::too_many_lines)]

pub mod apply;
pub mod content;
pub mod distributor;
pub mod folder;
pub mod folder_set;
pub mod fsutil;
pub mod gc_gate;
pub mod guard;
pub mod hasher;
pub mod health;
pub mod ignore;
pub mod index;
pub mod msg;
pub mod receiver;
pub mod record;
pub mod restore;
pub mod retention;
pub mod rt;
pub mod rules;
pub mod scan;
pub mod slot;
pub mod space;
pub mod status;
pub mod supervisor;
#[cfg(test)]
pub(crate) mod testing;
pub mod tombs;
pub mod versions;
pub mod watcher;

pub use supervisor::{access_of, peers_of, start_node, NodeHandle, StartError, StaticPeers};
