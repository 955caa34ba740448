//! The one gate every incoming and outgoing connection passes (an iroh
//! endpoint hook, so it covers every ALPN):
//!
//! - control protocol: anyone may connect, but only to run the membership
//!   handshake (bounded in time and bytes by [`crate::auth`]);
//! - blobs: only peers that proved fleet membership in this process;
//! - anything else, a node outside the optional allowlist, or a denied
//!   node (`[mesh] deny`: it may still hold the secret): refused.

use std::{
    collections::HashSet,
    sync::{Arc, RwLock},
};

use iroh::{
    endpoint::{AfterHandshakeOutcome, Connection, EndpointHooks, VarInt},
    EndpointId,
};
use tracing::warn;

use crate::proto::{BLOBS_ALPN, CTRL_ALPN};

/// QUIC close code for "not a fleet member / not allowed".
pub const CLOSE_FORBIDDEN: u32 = 403;

#[derive(Debug, Default)]
struct State {
    members: RwLock<HashSet<EndpointId>>,
    access: RwLock<Access>,
}

/// `[mesh] allow` and `deny`, replaced as a whole on reload.
#[derive(Debug, Default)]
struct Access {
    allow: Option<HashSet<EndpointId>>,
    deny: HashSet<EndpointId>,
}

/// Shared, cheap to clone: the mesh admits members, the hook reads.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<State>);

impl Gate {
    pub fn new(allow: Option<Vec<EndpointId>>, deny: Vec<EndpointId>) -> Self {
        let g = Gate::default();
        g.set_access(allow, deny);
        g
    }

    /// Replace the allowlist and the deny list; members no longer allowed
    /// lose their membership (the caller closes their connections).
    pub fn set_access(&self, allow: Option<Vec<EndpointId>>, deny: Vec<EndpointId>) {
        *self.0.access.write().expect("gate lock") = Access {
            allow: allow.map(|a| a.into_iter().collect()),
            deny: deny.into_iter().collect(),
        };
        let mut members = self.0.members.write().expect("gate lock");
        members.retain(|id| self.allowed(id));
    }

    /// Whether this node may be talked to at all: not denied, and in the
    /// allowlist if there is one. The one rule for every protocol, the
    /// dial loop and peer exchange.
    pub fn allowed(&self, id: &EndpointId) -> bool {
        let access = self.0.access.read().expect("gate lock");
        !access.deny.contains(id) && access.allow.as_ref().is_none_or(|a| a.contains(id))
    }

    /// Named in the allowlist (`[mesh] allow`), if there is one.
    pub fn listed(&self, id: &EndpointId) -> bool {
        let access = self.0.access.read().expect("gate lock");
        access.allow.as_ref().is_some_and(|a| a.contains(id))
    }

    fn denied(&self, id: &EndpointId) -> bool {
        self.0.access.read().expect("gate lock").deny.contains(id)
    }

    /// Record a proven member. Membership lasts until [`Gate::revoke`] or
    /// the end of the process.
    pub fn admit(&self, id: EndpointId) {
        self.0.members.write().expect("gate lock").insert(id);
    }

    /// Forget a member: every protocol refuses it from now on (the blob
    /// provider checks membership on each request, so this reaches
    /// connections already open too).
    pub fn revoke(&self, id: &EndpointId) {
        self.0.members.write().expect("gate lock").remove(id);
    }

    pub fn is_member(&self, id: &EndpointId) -> bool {
        self.0.members.read().expect("gate lock").contains(id)
    }

    fn decide(&self, alpn: &[u8], remote: &EndpointId) -> Result<(), &'static str> {
        if self.denied(remote) {
            return Err("denied by this node ([mesh] deny)");
        }
        if !self.allowed(remote) {
            return Err("not in this node's allowlist");
        }
        if alpn == CTRL_ALPN {
            Ok(())
        } else if alpn == BLOBS_ALPN {
            if self.is_member(remote) {
                Ok(())
            } else {
                Err("blob access requires proven fleet membership")
            }
        } else {
            Err("unknown protocol")
        }
    }
}

impl EndpointHooks for Gate {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        let remote = conn.remote_id();
        match self.decide(conn.alpn(), &remote) {
            Ok(()) => AfterHandshakeOutcome::Accept,
            Err(reason) => {
                warn!(
                    peer = %remote.fmt_short(),
                    alpn = %String::from_utf8_lossy(conn.alpn()),
                    "rejected connection: {reason}"
                );
                AfterHandshakeOutcome::Reject {
                    error_code: VarInt::from_u32(CLOSE_FORBIDDEN),
                    reason: reason.as_bytes().to_vec(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iroh::SecretKey;

    #[test]
    fn strangers_get_the_handshake_only() {
        let g = Gate::new(None, vec![]);
        let x = SecretKey::generate().public();
        assert!(g.decide(CTRL_ALPN, &x).is_ok());
        assert!(g.decide(BLOBS_ALPN, &x).is_err());
        assert!(g.decide(b"other", &x).is_err());
        g.admit(x);
        assert!(g.decide(BLOBS_ALPN, &x).is_ok());
    }

    #[test]
    fn allowlist_narrows_everything() {
        let ok = SecretKey::generate().public();
        let no = SecretKey::generate().public();
        let g = Gate::new(Some(vec![ok]), vec![]);
        g.admit(no);
        assert!(g.decide(CTRL_ALPN, &no).is_err());
        assert!(g.decide(BLOBS_ALPN, &no).is_err());
        assert!(g.decide(CTRL_ALPN, &ok).is_ok());
    }

    #[test]
    fn a_denied_member_is_refused_everywhere_even_when_proven() {
        let bad = SecretKey::generate().public();
        let good = SecretKey::generate().public();
        let g = Gate::new(None, vec![bad]);
        g.admit(bad);
        assert!(!g.allowed(&bad));
        assert!(g.decide(CTRL_ALPN, &bad).is_err());
        assert!(g.decide(BLOBS_ALPN, &bad).is_err());
        assert!(g.allowed(&good));
        assert!(g.decide(CTRL_ALPN, &good).is_ok());
    }
}
