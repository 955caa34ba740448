//! Messages more than one actor answers. They live below the actors (and
//! below the supervisor, which sends them), so no actor module imports
//! another one or the supervisor.

use actix::Message;
use fleetsync_mesh::{EndpointId, PeerSession};

/// Every actor answers this; the reply proves its thread is alive.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Ping;

/// An authenticated session with a fleet member came up.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct PeerUp(pub PeerSession);

/// That session is gone.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct PeerDown {
    pub peer: EndpointId,
    pub conn_id: u64,
}
