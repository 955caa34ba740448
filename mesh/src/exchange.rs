//! Peer exchange: members tell each other which members they know, on the
//! session's control stream, so one bootstrap peer is enough to find the
//! whole fleet.
//!
//! ```text
//!  session up ──► send_loop: hints_for(known members) ──► peer
//!                  again whenever our set of members changes (≥ 1 s apart)
//!  peer ──► recv_loop: read Control (capped) ──► accept_hints ──► Inner::learn
//! ```
//!
//! Rules, each in one function:
//! - only members this node has itself proven (a session once) are passed
//!   on, never hearsay ([`hints_for`] takes what the caller calls proven);
//! - loopback and link-local addresses mean nothing on another host: they
//!   are passed on only to a peer on this host ([`usable_by`]);
//! - what a peer may make us remember is capped per message
//!   ([`MAX_HINTS`], [`MAX_HINT_ADDRS`]: more is a protocol violation) and
//!   per peer (the caller's `learn` caps unproven records per source).

use std::net::{IpAddr, SocketAddr};

use iroh::EndpointId;
use serde::{Deserialize, Serialize};

use crate::codec::Limits;

/// Hints in one message, at most.
pub const MAX_HINTS: usize = 64;
/// Addresses per hint, at most.
pub const MAX_HINT_ADDRS: usize = 4;
/// Frames on the control stream: a full `Peers` message is about 4 KiB.
pub const CONTROL_LIMITS: Limits = Limits {
    max_frame: 16 << 10,
    max_decoded: 16 << 10,
};

/// Messages on the control stream after the handshake. Variants are only
/// ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// The members the sender knows (the whole list each time).
    Peers { peers: Vec<PeerHint> },
    /// The sender's clock as it sent this (protocol version 3 on; see
    /// [`crate::clock`]).
    Clock { unix_ms: i64 },
}

/// A member and where it can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHint {
    pub id: EndpointId,
    pub addrs: Vec<SocketAddr>,
}

/// A peer broke the exchange rules; its connection is closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExchangeError {
    #[error("peer list of {0} entries exceeds {MAX_HINTS}")]
    TooManyHints(usize),
    #[error("peer hint with {0} addresses exceeds {MAX_HINT_ADDRS}")]
    TooManyAddrs(usize),
}

/// What to tell `to` about the `members` we know: everyone but `to`, with
/// the addresses `to` can use (see [`usable_by`]); members left without an
/// address are skipped. At most [`MAX_HINTS`].
pub fn hints_for(
    members: &[(EndpointId, Vec<SocketAddr>)],
    to: EndpointId,
    to_is_local: bool,
) -> Vec<PeerHint> {
    members
        .iter()
        .filter(|(id, _)| *id != to)
        .filter_map(|(id, addrs)| {
            let addrs: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| usable_by(a, to_is_local))
                .take(MAX_HINT_ADDRS)
                .collect();
            (!addrs.is_empty()).then_some(PeerHint { id: *id, addrs })
        })
        .take(MAX_HINTS)
        .collect()
}

/// Check a received list against the caps and drop what is of no use:
/// ourselves, the sender (it told us its own addresses in the handshake)
/// and addresses that cannot be dialed.
pub fn accept_hints(
    hints: Vec<PeerHint>,
    me: EndpointId,
    from: EndpointId,
) -> Result<Vec<PeerHint>, ExchangeError> {
    if hints.len() > MAX_HINTS {
        return Err(ExchangeError::TooManyHints(hints.len()));
    }
    if let Some(h) = hints.iter().find(|h| h.addrs.len() > MAX_HINT_ADDRS) {
        return Err(ExchangeError::TooManyAddrs(h.addrs.len()));
    }
    Ok(hints
        .into_iter()
        .filter(|h| h.id != me && h.id != from)
        .map(|mut h| {
            h.addrs
                .retain(|a| !a.ip().is_unspecified() && a.port() != 0);
            h
        })
        .filter(|h| !h.addrs.is_empty())
        .collect())
}

/// May this address be handed to a peer? Loopback and link-local ones only
/// reach this host, so only a peer on this host gets them.
pub fn usable_by(addr: &SocketAddr, peer_is_local: bool) -> bool {
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return false;
    }
    peer_is_local || !only_this_host(&addr.ip())
}

/// Loopback or link-local: meaningful on this host (or link) only.
pub fn only_this_host(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iroh::SecretKey;

    fn id() -> EndpointId {
        SecretKey::generate().public()
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_recipient_is_never_told_of_itself_and_members_without_addresses_are_skipped() {
        let (to, x, y) = (id(), id(), id());
        let members = vec![
            (to, vec![a("10.0.0.1:7300")]),
            (x, vec![a("10.0.0.2:7300")]),
            (y, vec![]),
        ];
        let hints = hints_for(&members, to, false);
        assert_eq!(
            hints,
            vec![PeerHint {
                id: x,
                addrs: vec![a("10.0.0.2:7300")]
            }]
        );
    }

    #[test]
    fn loopback_and_link_local_stay_on_this_host() {
        let (to, x) = (id(), id());
        let addrs = vec![
            a("127.0.0.1:7300"),
            a("169.254.3.4:7300"),
            a("[fe80::1]:7300"),
            a("[::1]:7300"),
            a("192.168.1.9:7300"),
        ];
        let members = vec![(x, addrs.clone())];
        let remote = hints_for(&members, to, false);
        assert_eq!(remote[0].addrs, vec![a("192.168.1.9:7300")]);
        let local = hints_for(&members, to, true);
        assert_eq!(local[0].addrs, addrs[..MAX_HINT_ADDRS].to_vec());
        // A member reachable only over loopback is not mentioned at all.
        let only_local = vec![(x, vec![a("127.0.0.1:7300")])];
        assert!(hints_for(&only_local, to, false).is_empty());
    }

    #[test]
    fn what_is_sent_respects_the_caps() {
        let to = id();
        let many: Vec<_> = (0..100)
            .map(|i| {
                (
                    id(),
                    (0..9)
                        .map(|p| a(&format!("10.0.{i}.1:{}", 7000 + p)))
                        .collect(),
                )
            })
            .collect();
        let hints = hints_for(&many, to, false);
        assert_eq!(hints.len(), MAX_HINTS);
        assert!(hints.iter().all(|h| h.addrs.len() == MAX_HINT_ADDRS));
        assert!(accept_hints(hints, id(), id()).is_ok());
    }

    #[test]
    fn an_oversized_peer_list_is_a_protocol_violation() {
        let (me, from) = (id(), id());
        let hint = |n: usize| PeerHint {
            id: id(),
            addrs: (0..n)
                .map(|p| a(&format!("10.0.0.1:{}", 7000 + p)))
                .collect(),
        };
        let too_many: Vec<_> = (0..=MAX_HINTS).map(|_| hint(1)).collect();
        assert_eq!(
            accept_hints(too_many, me, from),
            Err(ExchangeError::TooManyHints(MAX_HINTS + 1))
        );
        assert_eq!(
            accept_hints(vec![hint(MAX_HINT_ADDRS + 1)], me, from),
            Err(ExchangeError::TooManyAddrs(MAX_HINT_ADDRS + 1))
        );
    }

    #[test]
    fn received_hints_drop_ourselves_the_sender_and_undialable_addresses() {
        let (me, from, x, y) = (id(), id(), id(), id());
        let hints = vec![
            PeerHint {
                id: me,
                addrs: vec![a("10.0.0.1:1")],
            },
            PeerHint {
                id: from,
                addrs: vec![a("10.0.0.2:1")],
            },
            PeerHint {
                id: x,
                addrs: vec![a("0.0.0.0:7300"), a("10.0.0.3:0"), a("10.0.0.3:7300")],
            },
            PeerHint {
                id: y,
                addrs: vec![a("0.0.0.0:7300")],
            },
        ];
        let got = accept_hints(hints, me, from).unwrap();
        assert_eq!(
            got,
            vec![PeerHint {
                id: x,
                addrs: vec![a("10.0.0.3:7300")]
            }]
        );
    }
}
