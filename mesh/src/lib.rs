//! fleetsync's network side.
//!
//! ```text
//!              ┌──────────────── Mesh (net) ──────────────────┐
//!  peers ◄───► │ iroh Endpoint ─► Gate (endpoint hook, every  │
//!              │   ALPN)            connection passes it)     │
//!              │ Router ─┬─ CTRL_ALPN → admission → handshake ├─► MeshEvent::Up(PeerSession)
//!              │         │                (auth)              │
//!              │         └─ BLOBS_ALPN → iroh-blobs (FsStore, │
//!              │              members only, every request)    │
//!              │ dial loop: known peers, backoff, dedupe      │
//!              └──────────────────────────────────────────────┘
//! ```
//!
//! - [`model`]: the data model shared by the wire and the index
//!   ([`FileEntry`](model::FileEntry), [`VersionVector`](model::VersionVector))
//!   and the validation that keeps hostile paths out.
//! - [`codec`]: length-prefixed, size-capped postcard frames (zstd when large).
//! - [`proto`]: ALPNs, protocol version and the handshake messages.
//! - [`index_stream`]: the index-stream protocol, whole: its messages, the
//!   serving end and the subscribing end, with the traits through which the
//!   actors supply folders ([`SharedFolders`](index_stream::SharedFolders),
//!   [`IndexSource`](index_stream::IndexSource)) and take batches
//!   ([`IndexSink`](index_stream::IndexSink)).
//! - [`auth`]: the mutual fleet-secret proof run on every control connection
//!   (the dialer proves first).
//! - [`admission`]: who may run a handshake now: a lane for known ids and a
//!   bounded stranger lane (per source IP, per id, overall), with eviction
//!   of stale strangers, so stalled strangers cannot lock members out.
//! - [`exchange`]: peer exchange, the rules for what members tell each
//!   other about the members they know (caps, address scope).
//! - [`clock`]: clock readings members send each other, and the offset
//!   they give (shown by doctor, status and metrics; sync never uses it).
//! - [`gate`]: access control for all protocols.
//! - [`identity`]: the node key on disk.
//! - [`lazy`]: content the actors indexed without importing it (small
//!   files, found through their `refs/` links by a [`LocalContent`] the
//!   node sets), brought into the store when a member first asks for it.
//! - [`mdns`]: LAN discovery: the fleet tag, and which mDNS finds are
//!   members to dial.
//! - [`net`]: [`Mesh`], which ties the above together and owns the blob store.
//! - [`swarm`]: one big blob from several members at once, in pieces,
//!   also from members still downloading it (observed bitfields, rarest
//!   piece first, the announcer asked only for what nobody else has).
//! - [`ticket`]: join tickets ([`FleetTicket`](ticket::FleetTicket)), the
//!   one string `fleetsync invite` prints and `fleetsync join` consumes:
//!   fleet secret, a member's id and addresses, expiry.
//! - [`loopback`]: free UDP ports on 127.0.0.1 for local clusters (the demo,
//!   tests), picked where the kernel never assigns port 0 binds.
//!
//! The mesh knows nothing about folders: the actors serve and follow index
//! streams on a [`PeerSession`] through [`index_stream`], and fetch content
//! with the blob operations in [`blobs`].

#![warn(clippy::too_many_lines)]

pub mod admission;
pub mod auth;
pub mod backoff;
pub mod blobs;
pub mod clock;
pub mod codec;
pub mod exchange;
pub mod gate;
pub mod identity;
pub mod index_stream;
pub mod lazy;
pub mod loopback;
pub mod mdns;
pub mod model;
pub mod net;
pub mod proto;
pub mod swarm;
pub mod ticket;

pub use blobs::{FetchError, StoreError};
pub use iroh;
pub use iroh::{EndpointId, SecretKey};
pub use iroh_blobs::api::TempTag;
pub use iroh_blobs::Hash;
pub use lazy::LocalContent;
pub use net::{
    Mesh, MeshError, MeshEvent, MeshOptions, PeerSession, PeerStatus, StaticPeersChanged,
};
