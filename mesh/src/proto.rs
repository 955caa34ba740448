//! The fleetsync control protocol: its ALPNs, version and handshake.
//!
//! One QUIC connection per peer pair carries:
//! - the *handshake stream* (first bi-stream, opened by the dialer): version
//!   check and mutual proof of the fleet secret ([`Handshake`]); it stays open
//!   afterwards as the session's control channel;
//! - one *index stream* per folder and direction (opened by whoever wants
//!   the other's index): see [`crate::index_stream`].
//!
//! Compatibility rule: the ALPN carries the major protocol version; inside
//! it, [`PROTOCOL_VERSION`] may grow and a peer accepts any version >= our
//! [`MIN_COMPATIBLE_VERSION`]. New message variants are only ever appended,
//! so postcard's positional enum tags stay stable.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// ALPN of the control protocol (major version 1).
pub const CTRL_ALPN: &[u8] = b"fleetsync/ctrl/1";
/// ALPN of blob transfer (iroh-blobs).
pub const BLOBS_ALPN: &[u8] = iroh_blobs::ALPN;
/// This build's protocol version. Version 2 reordered the handshake so the
/// acceptor proves itself only after the dialer has (see [`crate::auth`]);
/// version 1 nodes are refused, because a version 1 acceptor hands any
/// stranger a MAC to test secret guesses against offline.
/// The control stream carries peer lists ([`crate::exchange`]) after the
/// handshake; version 3 added clock readings there ([`crate::clock`]),
/// sent only to peers of version 3 or later.
pub const PROTOCOL_VERSION: u32 = 3;
/// The oldest peer version this build still talks to.
pub const MIN_COMPATIBLE_VERSION: u32 = 2;

/// Handshake messages. Version 2 sends `Hello` → `Challenge2` → `Proof` →
/// `Welcome2` (or `Refused` at any step); `Challenge` and `Welcome` are
/// version 1's, kept only so that postcard's positional tags stay stable,
/// and are refused as unexpected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Handshake {
    /// dialer → acceptor
    Hello {
        version: u32,
        min_version: u32,
        nonce: [u8; 32],
    },
    /// Version 1 (refused): the acceptor's MAC before the dialer proved
    /// anything.
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
    /// Version 1 (refused): admitted, without the acceptor's proof.
    Welcome { listen: Vec<SocketAddr> },
    /// Either side: not admitted, and why (never includes secrets).
    Refused { reason: String },
    /// acceptor → dialer: versions and the acceptor's nonce, and no MAC: a
    /// stranger learns nothing it could test secret guesses against.
    Challenge2 {
        version: u32,
        min_version: u32,
        nonce: [u8; 32],
    },
    /// acceptor → dialer, only after the dialer's `Proof` checked out:
    /// admitted, and the acceptor's own proof.
    Welcome2 {
        mac: [u8; 32],
        listen: Vec<SocketAddr>,
    },
}
