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
/// This build's protocol version.
/// 2: the control stream carries peer lists ([`crate::exchange`]) after
/// the handshake; they are sent to version 2 peers only.
pub const PROTOCOL_VERSION: u32 = 2;
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
