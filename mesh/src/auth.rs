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
//!                                     ←    Challenge2{v, min_v, nonce_a}
//!   Proof{mac_d, addrs}               →
//!                                     ←    Welcome2{mac_a, addrs}  (after checking mac_d)
//!   (check mac_a)
//! ```
//! The dialer proves first (protocol version 2): the acceptor answers
//! anyone who connects, so a MAC in its first answer would let any stranger
//! test guesses of the secret offline. Only a node that proved membership
//! gets the acceptor's MAC. The dialer only shows its MAC to a node it
//! chose to dial (a configured peer, or one a member named).
//! Strangers get a short deadline (see [`crate::admission`]) and a small
//! byte budget ([`HANDSHAKE_LIMITS`]).

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

impl HandshakeError {
    /// Whether we sent the peer a `Refused` saying why (worth letting it
    /// arrive before the connection is closed).
    pub fn refusal_sent(&self) -> bool {
        matches!(
            self,
            HandshakeError::BadProof | HandshakeError::Version { .. }
        )
    }
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

/// Tell the other side why it is not admitted. Best effort: the
/// handshake has failed either way and the connection is closed next, so a
/// peer that is already gone loses nothing.
async fn refuse<W: AsyncWrite + Unpin>(w: &mut W, reason: String) {
    if let Err(e) = write_msg(w, &Handshake::Refused { reason }).await {
        debug!("could not send the refusal: {e}");
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
    let (version, nonce_a) = match recv(r).await? {
        Handshake::Challenge2 {
            version,
            min_version,
            nonce,
        } => {
            if let Err(e) = compatible(version, min_version) {
                refuse(w, e.to_string()).await;
                return Err(e);
            }
            (version, nonce)
        }
        Handshake::Refused { reason } => return Err(HandshakeError::Refused(reason)),
        _ => return Err(HandshakeError::Unexpected("expected Challenge2")),
    };
    let mac_d = key.mac(Role::Dialer, &nonce_d, &nonce_a, &me, &peer);
    write_msg(
        w,
        &Handshake::Proof {
            mac: *mac_d.as_bytes(),
            listen,
        },
    )
    .await?;
    let (mac_a, peer_listen) = match recv(r).await? {
        Handshake::Welcome2 { mac, listen } => (mac, listen),
        Handshake::Refused { reason } => return Err(HandshakeError::Refused(reason)),
        _ => return Err(HandshakeError::Unexpected("expected Welcome2")),
    };
    if key.mac(Role::Acceptor, &nonce_d, &nonce_a, &me, &peer) != blake3::Hash::from(mac_a) {
        refuse(w, "membership proof failed".into()).await;
        return Err(HandshakeError::BadProof);
    }
    Ok(Admitted {
        peer_version: version,
        peer_listen,
    })
}

/// Run the acceptor's side. Nothing derived from the secret is sent before
/// the dialer's proof has been checked.
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
                refuse(w, e.to_string()).await;
                return Err(e);
            }
            (version, nonce)
        }
        _ => return Err(HandshakeError::Unexpected("expected Hello")),
    };
    let nonce_a = random_nonce();
    write_msg(
        w,
        &Handshake::Challenge2 {
            version: PROTOCOL_VERSION,
            min_version: MIN_COMPATIBLE_VERSION,
            nonce: nonce_a,
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
        refuse(w, "membership proof failed".into()).await;
        return Err(HandshakeError::BadProof);
    }
    let mac_a = key.mac(Role::Acceptor, &nonce_d, &nonce_a, &peer, &me);
    write_msg(
        w,
        &Handshake::Welcome2 {
            mac: *mac_a.as_bytes(),
            listen,
        },
    )
    .await?;
    Ok(Admitted {
        peer_version: version,
        peer_listen,
    })
}

#[cfg(test)]
mod tests {
    use std::{
        pin::Pin,
        sync::{Arc, Mutex},
        task::{Context, Poll},
    };

    use super::*;
    use iroh::SecretKey;
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

    fn ids() -> (EndpointId, EndpointId) {
        (
            SecretKey::generate().public(),
            SecretKey::generate().public(),
        )
    }

    type Pipe = (ReadHalf<DuplexStream>, WriteHalf<DuplexStream>);

    fn pipes() -> (Pipe, Pipe) {
        let (s1, s2) = tokio::io::duplex(4096);
        (tokio::io::split(s1), tokio::io::split(s2))
    }

    async fn run(
        kd: FleetKey,
        ka: FleetKey,
    ) -> (
        Result<Admitted, HandshakeError>,
        Result<Admitted, HandshakeError>,
    ) {
        let (d, a) = ids();
        let ((mut r1, mut w1), (mut r2, mut w2)) = pipes();
        let dialer = async move { dial(&kd, d, a, vec![], &mut r1, &mut w1).await };
        let acceptor = async move { accept(&ka, a, d, vec![], &mut r2, &mut w2).await };
        tokio::join!(dialer, acceptor)
    }

    async fn send(w: &mut WriteHalf<DuplexStream>, m: Handshake) {
        write_msg(w, &m).await.unwrap();
    }

    async fn next(r: &mut ReadHalf<DuplexStream>) -> Option<Handshake> {
        read_msg::<_, Handshake>(r, HANDSHAKE_LIMITS)
            .await
            .unwrap()
            .map(|(m, _)| m)
    }

    fn hello(nonce: [u8; 32]) -> Handshake {
        Handshake::Hello {
            version: PROTOCOL_VERSION,
            min_version: MIN_COMPATIBLE_VERSION,
            nonce,
        }
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
        assert!(matches!(d, Err(HandshakeError::Refused(_))), "{d:?}");
        assert!(matches!(a, Err(HandshakeError::BadProof)), "{a:?}");
    }

    #[tokio::test]
    async fn a_version_one_peer_is_refused_with_both_versions() {
        let (d, a) = ids();
        let ((mut r1, mut w1), (mut r2, mut w2)) = pipes();
        let acceptor = tokio::spawn(async move {
            let k = FleetKey::new(&[7; 32]);
            accept(&k, a, d, vec![], &mut r2, &mut w2).await
        });
        let old = Handshake::Hello {
            version: 1,
            min_version: 1,
            nonce: [1; 32],
        };
        send(&mut w1, old).await;
        let reply = next(&mut r1).await;
        assert!(
            matches!(&reply, Some(Handshake::Refused { reason }) if reason.contains("peer speaks 1") && reason.contains(&format!("we speak {PROTOCOL_VERSION}"))),
            "{reply:?}"
        );
        let res = acceptor.await.unwrap();
        assert!(
            matches!(res, Err(HandshakeError::Version { .. })),
            "{res:?}"
        );
    }

    /// The issue's oracle: a stranger that says Hello must get nothing it
    /// could test secret guesses against, and a bad proof gets a refusal.
    #[tokio::test]
    async fn the_acceptor_sends_no_mac_before_the_dialer_proves() {
        let (d, a) = ids();
        let ((mut r1, mut w1), (mut r2, mut w2)) = pipes();
        let acceptor = tokio::spawn(async move {
            let k = FleetKey::new(&[7; 32]);
            accept(&k, a, d, vec![], &mut r2, &mut w2).await
        });
        send(&mut w1, hello([1; 32])).await;
        let first = next(&mut r1).await;
        assert!(
            matches!(first, Some(Handshake::Challenge2 { .. })),
            "{first:?}"
        );
        let proof = Handshake::Proof {
            mac: [9; 32],
            listen: vec![],
        };
        send(&mut w1, proof).await;
        let second = next(&mut r1).await;
        assert!(
            matches!(second, Some(Handshake::Refused { .. })),
            "{second:?}"
        );
        let res = acceptor.await.unwrap();
        assert!(matches!(res, Err(HandshakeError::BadProof)), "{res:?}");
        drop(w1);
        assert!(next(&mut r1).await.is_none(), "nothing after the refusal");
    }

    /// An honest dialer's proof, captured, and replayed by another endpoint
    /// with the same Hello nonce: the acceptor's fresh nonce and the other
    /// endpoint id make it worthless.
    #[tokio::test]
    async fn a_proof_replayed_by_another_endpoint_fails() {
        let k = FleetKey::new(&[7; 32]);
        let (d, a) = ids();
        let eve = SecretKey::generate().public();
        // What the honest dialer sent for some earlier challenge.
        let nonce_d = [3; 32];
        let seen_nonce_a = [4; 32];
        let recorded = k.mac(Role::Dialer, &nonce_d, &seen_nonce_a, &d, &a);
        let ((mut r1, mut w1), (mut r2, mut w2)) = pipes();
        let acceptor =
            tokio::spawn(async move { accept(&k, a, eve, vec![], &mut r2, &mut w2).await });
        send(&mut w1, hello(nonce_d)).await;
        let Some(Handshake::Challenge2 { nonce, .. }) = next(&mut r1).await else {
            panic!("expected Challenge2");
        };
        assert_ne!(nonce, seen_nonce_a, "the acceptor's nonce is fresh");
        let replay = Handshake::Proof {
            mac: *recorded.as_bytes(),
            listen: vec![],
        };
        send(&mut w1, replay).await;
        assert!(matches!(
            next(&mut r1).await,
            Some(Handshake::Refused { .. })
        ));
        let res = acceptor.await.unwrap();
        assert!(matches!(res, Err(HandshakeError::BadProof)), "{res:?}");
        // Even had the acceptor reused its nonce, the MAC names d, not eve.
        let k = FleetKey::new(&[7; 32]);
        assert_ne!(
            recorded,
            k.mac(Role::Dialer, &nonce_d, &seen_nonce_a, &eve, &a)
        );
    }

    /// A fake acceptor without the secret answers the dialer's proof with
    /// some MAC: the dialer refuses it and does not count as admitted.
    async fn dial_a_fake(
        mac: impl FnOnce([u8; 32], [u8; 32]) -> [u8; 32] + Send + 'static,
    ) -> Result<Admitted, HandshakeError> {
        let (d, a) = ids();
        let ((mut r1, mut w1), (mut r2, mut w2)) = pipes();
        let fake = tokio::spawn(async move {
            let Some(Handshake::Hello { nonce: nonce_d, .. }) = next(&mut r2).await else {
                panic!("expected Hello");
            };
            let nonce_a = [5; 32];
            let challenge = Handshake::Challenge2 {
                version: PROTOCOL_VERSION,
                min_version: MIN_COMPATIBLE_VERSION,
                nonce: nonce_a,
            };
            send(&mut w2, challenge).await;
            let Some(Handshake::Proof { .. }) = next(&mut r2).await else {
                panic!("expected Proof");
            };
            let welcome = Handshake::Welcome2 {
                mac: mac(nonce_d, nonce_a),
                listen: vec![],
            };
            send(&mut w2, welcome).await;
            next(&mut r2).await
        });
        let k = FleetKey::new(&[7; 32]);
        let res = dial(&k, d, a, vec![], &mut r1, &mut w1).await;
        let told = fake.await.unwrap();
        assert!(matches!(told, Some(Handshake::Refused { .. })), "{told:?}");
        res
    }

    #[tokio::test]
    async fn an_impostor_acceptor_is_caught_by_the_dialer() {
        let res = dial_a_fake(|_, _| [0x42; 32]).await;
        assert!(matches!(res, Err(HandshakeError::BadProof)), "{res:?}");
    }

    /// A Welcome2 recorded from a real session (other nonces) is replayed.
    #[tokio::test]
    async fn a_replayed_welcome_fails_at_the_dialer() {
        let k = FleetKey::new(&[7; 32]);
        let (d, a) = ids();
        let old = *k.mac(Role::Acceptor, &[1; 32], &[5; 32], &d, &a).as_bytes();
        let res = dial_a_fake(move |_, _| old).await;
        assert!(matches!(res, Err(HandshakeError::BadProof)), "{res:?}");
    }

    /// Records everything written through it.
    struct Tap<W> {
        inner: W,
        seen: Arc<Mutex<Vec<u8>>>,
    }

    impl<W: AsyncWrite + Unpin> AsyncWrite for Tap<W> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let res = Pin::new(&mut self.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = res {
                self.seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            res
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn the_secret_and_mac_key_never_cross_the_wire() {
        let secret = [0x5a; 32];
        let k = FleetKey::new(&secret);
        let (d, a) = ids();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ((mut r1, w1), (mut r2, w2)) = pipes();
        let mut w1 = Tap {
            inner: w1,
            seen: seen.clone(),
        };
        let mut w2 = Tap {
            inner: w2,
            seen: seen.clone(),
        };
        let (kd, ka) = (k.clone(), k.clone());
        let (x, y) = tokio::join!(
            dial(&kd, d, a, vec![], &mut r1, &mut w1),
            accept(&ka, a, d, vec![], &mut r2, &mut w2)
        );
        assert!(x.is_ok() && y.is_ok());
        let wire = seen.lock().unwrap().clone();
        assert!(wire.len() > 64, "the handshake was captured");
        for needle in [&secret[..], &k.mac_key[..], &secret[..8], &k.mac_key[..8]] {
            assert!(
                !wire.windows(needle.len()).any(|w| w == needle),
                "key material on the wire"
            );
        }
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
