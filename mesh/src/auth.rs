//! Fleet membership proof.
//!
//! Both sides show they hold the fleet secret without sending it: each sends
//! a keyed BLAKE3 MAC over both fresh nonces and both endpoint ids (which the
//! QUIC/TLS layer has already authenticated). A recorded handshake is useless
//! to an attacker: new nonces and a different endpoint id change every MAC.
//!
//! ```text
//! dialer                                   acceptor
//!   Hello{v, min_v, nonce_d}          →
//!                                     ←    Challenge{v, min_v, nonce_a, mac_a}
//!   (check mac_a) Proof{mac_d, addrs} →
//!                                     ←    Welcome{addrs}   (check mac_d)
//! ```
//! The acceptor answers a stranger only with a MAC it cannot use, under a
//! short deadline and a small byte budget (see `mesh::HANDSHAKE_*`).

use std::{net::SocketAddr, time::Duration};

use iroh::EndpointId;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::{
    codec::{read_msg, write_msg, CodecError, Limits},
    proto::{Handshake, MIN_COMPATIBLE_VERSION, PROTOCOL_VERSION},
};

/// Handshake frames are tiny; anything bigger is hostile.
pub const HANDSHAKE_LIMITS: Limits = Limits {
    max_frame: 2048,
    max_decoded: 2048,
};
/// A stranger gets this long to prove membership.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

const KEY_CONTEXT: &str = "fleetsync 2026-11 fleet membership handshake v1";

/// The fleet secret, with the MAC key derived once.
#[derive(Clone)]
pub struct FleetKey {
    mac_key: [u8; 32],
}

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(<redacted>)")
    }
}

#[derive(Clone, Copy)]
enum Role {
    Dialer = 1,
    Acceptor = 2,
}

impl FleetKey {
    pub fn new(secret: &[u8; 32]) -> Self {
        FleetKey {
            mac_key: blake3::derive_key(KEY_CONTEXT, secret),
        }
    }

    fn mac(
        &self,
        role: Role,
        nonce_d: &[u8; 32],
        nonce_a: &[u8; 32],
        dialer: &EndpointId,
        acceptor: &EndpointId,
    ) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.mac_key);
        h.update(&[role as u8]);
        h.update(nonce_d);
        h.update(nonce_a);
        h.update(dialer.as_bytes());
        h.update(acceptor.as_bytes());
        h.finalize()
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    #[error("protocol: {0}")]
    Codec(#[from] CodecError),
    #[error("peer closed the handshake stream")]
    Closed,
    #[error("unexpected handshake message ({0})")]
    Unexpected(&'static str),
    #[error("incompatible protocol version: peer speaks {peer} (accepts >= {peer_min}), we speak {ours} (accept >= {ours_min})")]
    Version {
        peer: u32,
        peer_min: u32,
        ours: u32,
        ours_min: u32,
    },
    #[error("peer failed the fleet membership proof (it does not hold this fleet's secret)")]
    BadProof,
    #[error("peer refused us: {0}")]
    Refused(String),
    #[error("handshake timed out")]
    Timeout,
}

/// What a successful handshake tells us about the peer.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub peer_version: u32,
    pub peer_listen: Vec<SocketAddr>,
}

fn random_nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).expect("OS random source unavailable");
    n
}

fn compatible(peer: u32, peer_min: u32) -> Result<(), HandshakeError> {
    if peer < MIN_COMPATIBLE_VERSION || PROTOCOL_VERSION < peer_min {
        return Err(HandshakeError::Version {
            peer,
            peer_min,
            ours: PROTOCOL_VERSION,
            ours_min: MIN_COMPATIBLE_VERSION,
        });
    }
    Ok(())
}

async fn recv<R: AsyncRead + Unpin>(r: &mut R) -> Result<Handshake, HandshakeError> {
    match read_msg::<_, Handshake>(r, HANDSHAKE_LIMITS).await? {
        Some((m, _)) => Ok(m),
        None => Err(HandshakeError::Closed),
    }
}

/// Run the dialer's side. `me`/`peer` are TLS-authenticated endpoint ids.
pub async fn dial<R, W>(
    key: &FleetKey,
    me: EndpointId,
    peer: EndpointId,
    listen: Vec<SocketAddr>,
    r: &mut R,
    w: &mut W,
) -> Result<Admitted, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let nonce_d = random_nonce();
    write_msg(
        w,
        &Handshake::Hello {
            version: PROTOCOL_VERSION,
            min_version: MIN_COMPATIBLE_VERSION,
            nonce: nonce_d,
        },
    )
    .await?;
    let (version, nonce_a, mac_a) = match recv(r).await? {
        Handshake::Challenge {
            version,
            min_version,
            nonce,
            mac,
        } => {
            compatible(version, min_version)?;
            (version, nonce, mac)
        }
        Handshake::Refused { reason } => return Err(HandshakeError::Refused(reason)),
        _ => return Err(HandshakeError::Unexpected("expected Challenge")),
    };
    if key.mac(Role::Acceptor, &nonce_d, &nonce_a, &me, &peer) != blake3::Hash::from(mac_a) {
        let _ = write_msg(
            w,
            &Handshake::Refused {
                reason: "membership proof failed".into(),
            },
        )
        .await;
        return Err(HandshakeError::BadProof);
    }
    let mac_d = key.mac(Role::Dialer, &nonce_d, &nonce_a, &me, &peer);
    write_msg(
        w,
        &Handshake::Proof {
            mac: *mac_d.as_bytes(),
            listen,
        },
    )
    .await?;
    match recv(r).await? {
        Handshake::Welcome { listen } => Ok(Admitted {
            peer_version: version,
            peer_listen: listen,
        }),
        Handshake::Refused { reason } => Err(HandshakeError::Refused(reason)),
        _ => Err(HandshakeError::Unexpected("expected Welcome")),
    }
}

/// Run the acceptor's side.
pub async fn accept<R, W>(
    key: &FleetKey,
    me: EndpointId,
    peer: EndpointId,
    listen: Vec<SocketAddr>,
    r: &mut R,
    w: &mut W,
) -> Result<Admitted, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (version, nonce_d) = match recv(r).await? {
        Handshake::Hello {
            version,
            min_version,
            nonce,
        } => {
            if let Err(e) = compatible(version, min_version) {
                let _ = write_msg(
                    w,
                    &Handshake::Refused {
                        reason: e.to_string(),
                    },
                )
                .await;
                return Err(e);
            }
            (version, nonce)
        }
        _ => return Err(HandshakeError::Unexpected("expected Hello")),
    };
    let nonce_a = random_nonce();
    let mac_a = key.mac(Role::Acceptor, &nonce_d, &nonce_a, &peer, &me);
    write_msg(
        w,
        &Handshake::Challenge {
            version: PROTOCOL_VERSION,
            min_version: MIN_COMPATIBLE_VERSION,
            nonce: nonce_a,
            mac: *mac_a.as_bytes(),
        },
    )
    .await?;
    let (mac_d, peer_listen) = match recv(r).await? {
        Handshake::Proof { mac, listen } => (mac, listen),
        Handshake::Refused { reason } => return Err(HandshakeError::Refused(reason)),
        _ => return Err(HandshakeError::Unexpected("expected Proof")),
    };
    if key.mac(Role::Dialer, &nonce_d, &nonce_a, &peer, &me) != blake3::Hash::from(mac_d) {
        debug!(%peer, "membership proof failed");
        let _ = write_msg(
            w,
            &Handshake::Refused {
                reason: "membership proof failed".into(),
            },
        )
        .await;
        return Err(HandshakeError::BadProof);
    }
    write_msg(w, &Handshake::Welcome { listen }).await?;
    Ok(Admitted {
        peer_version: version,
        peer_listen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iroh::SecretKey;

    fn ids() -> (EndpointId, EndpointId) {
        (
            SecretKey::generate().public(),
            SecretKey::generate().public(),
        )
    }

    async fn run(
        kd: FleetKey,
        ka: FleetKey,
    ) -> (
        Result<Admitted, HandshakeError>,
        Result<Admitted, HandshakeError>,
    ) {
        let (d, a) = ids();
        let (s1, s2) = tokio::io::duplex(4096);
        let (mut r1, mut w1) = tokio::io::split(s1);
        let (mut r2, mut w2) = tokio::io::split(s2);
        let dialer = async move { dial(&kd, d, a, vec![], &mut r1, &mut w1).await };
        let acceptor = async move { accept(&ka, a, d, vec![], &mut r2, &mut w2).await };
        tokio::join!(dialer, acceptor)
    }

    #[tokio::test]
    async fn same_secret_is_admitted_both_ways() {
        let k = FleetKey::new(&[7; 32]);
        let (d, a) = run(k.clone(), k).await;
        assert!(d.is_ok(), "{d:?}");
        assert!(a.is_ok(), "{a:?}");
    }

    #[tokio::test]
    async fn wrong_secret_fails_on_both_sides() {
        let (d, a) = run(FleetKey::new(&[7; 32]), FleetKey::new(&[8; 32])).await;
        assert!(matches!(d, Err(HandshakeError::BadProof)), "{d:?}");
        assert!(a.is_err());
    }

    #[test]
    fn mac_binds_nonces_and_ids() {
        let k = FleetKey::new(&[1; 32]);
        let (x, y) = ids();
        let base = k.mac(Role::Dialer, &[1; 32], &[2; 32], &x, &y);
        assert_ne!(base, k.mac(Role::Acceptor, &[1; 32], &[2; 32], &x, &y));
        assert_ne!(base, k.mac(Role::Dialer, &[9; 32], &[2; 32], &x, &y));
        assert_ne!(base, k.mac(Role::Dialer, &[1; 32], &[2; 32], &y, &x));
    }
}
