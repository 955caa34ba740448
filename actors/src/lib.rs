//! fleetsync's actors and the folder index they share.
//!
//! ```text
//!  filesystem ─► Watcher ─► Hasher ─► Index (redb) ─► Distributor ─► peers
//!                  ▲                    ▲    │ head signal              │
//!                  │ MarkDirty          │    ▼                          │
//!                  └──────────────── Receiver ◄─── index streams ◄──────┘
//!                                     │  ▲
//!                             apply ──┘  └── blobs (iroh-blobs, verified)
//!  Retention: temp files, blob GC protect set.   Supervisor: starts all,
//!  pings each, restarts the dead or stalled, fans mesh events out.
//! ```
//!
//! - [`index`]: the redb index — entries, sequence numbers, pending remote
//!   entries, peer marks, history. Every actor's state is rebuilt from it.
//! - [`rules`]: the convergence rules (pure, property-tested).
//! - [`fsutil`], [`scan`], [`ignore`]: confined filesystem access, walks,
//!   ignore patterns.
//! - [`watcher`], [`hasher`], [`distributor`], [`receiver`] (+ [`apply`]),
//!   [`retention`], [`supervisor`]: the actors, each with a `msg` module
//!   holding its messages and their reply types.
//! - [`folder`]: per-folder shared context and live status; [`status`]: the
//!   node's status snapshot for the admin API.
//! - [`rt`]: where blocking and async work runs (never on actor threads).

#![warn(clippy::too_many_lines)]

pub mod apply;
pub mod content;
pub mod distributor;
pub mod folder;
pub mod fsutil;
pub mod hasher;
pub mod ignore;
pub mod index;
pub mod msg;
pub mod receiver;
pub mod record;
pub mod retention;
pub mod rt;
pub mod rules;
pub mod scan;
pub mod slot;
pub mod status;
pub mod supervisor;
#[cfg(test)]
pub(crate) mod testing;
pub mod watcher;

pub use supervisor::{start_node, NodeHandle, StartError};
