//! The fleetsync control protocol: its ALPN, version and messages.
//!
//! One QUIC connection per peer pair carries:
//! - the *handshake stream* (first bi-stream, opened by the dialer): version
//!   check and mutual proof of the fleet secret ([`Handshake`]); it stays open
//!   afterwards as the session's control channel;
//! - one *index stream* per direction (opened by whoever wants the other's
//!   index): [`IndexRequest::Subscribe`] then a stream of
//!   [`IndexResponse`]s that never ends while both nodes run.
//!
//! Compatibility rule: the ALPN carries the major protocol version; inside
//! it, [`PROTOCOL_VERSION`] may grow and a peer accepts any version >= our
//! [`MIN_COMPATIBLE_VERSION`]. New message variants are only ever appended,
//! so postcard's positional enum tags stay stable.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::model::FileEntry;

/// ALPN of the control protocol (major version 1).
pub const CTRL_ALPN: &[u8] = b"fleetsync/ctrl/1";
/// ALPN of blob transfer (iroh-blobs).
pub const BLOBS_ALPN: &[u8] = iroh_blobs::ALPN;
/// This build's protocol version.
pub const PROTOCOL_VERSION: u32 = 1;
/// The oldest peer version this build still talks to.
pub const MIN_COMPATIBLE_VERSION: u32 = 1;

/// Handshake messages, in the order they are sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Handshake {
    /// dialer → acceptor
    Hello {
        version: u32,
        min_version: u32,
        nonce: [u8; 32],
    },
    /// acceptor → dialer: proves the acceptor holds the secret.
    Challenge {
        version: u32,
        min_version: u32,
        nonce: [u8; 32],
        mac: [u8; 32],
    },
    /// dialer → acceptor: proves the dialer holds the secret.
    Proof {
        mac: [u8; 32],
        listen: Vec<SocketAddr>,
    },
    /// acceptor → dialer: admitted.
    Welcome { listen: Vec<SocketAddr> },
    /// Either side: not admitted, and why (never includes secrets).
    Refused { reason: String },
}

/// Sent by the subscriber on an index stream: one stream per folder, so
/// each folder has its own flow control.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum IndexRequest {
    Subscribe(FolderWant),
}

/// What the subscriber already has of the server's index for one folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FolderWant {
    pub folder: String,
    /// The server's index id as last seen; a mismatch means the server's
    /// index was recreated and everything is sent again.
    pub index_id: u64,
    /// Highest server sequence number already received.
    pub since: u64,
}

/// Sent by the server on an index stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum IndexResponse {
    /// Entries with sequence numbers in `(previous up_to, up_to]`.
    Batch {
        folder: String,
        index_id: u64,
        entries: Vec<FileEntry>,
        up_to: u64,
    },
    /// The server has sent everything it had when the subscription started
    /// (and since): the subscriber is caught up for now.
    CaughtUp {
        folder: String,
        index_id: u64,
        seq: u64,
    },
    /// The server does not share this folder (or does not send it).
    NotShared { folder: String },
}

/// Cap on the subscribe frame (it holds one folder id).
pub const REQUEST_LIMITS: crate::codec::Limits = crate::codec::Limits {
    max_frame: 4096,
    max_decoded: 4096,
};

/// Entries per index batch; keeps frames far below the codec caps even for
/// long paths (4096 B × 1000 ≈ 4 MiB before compression).
pub const BATCH_ENTRIES: usize = 1000;
