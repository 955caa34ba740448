//! Fault injection, for tests and drills (`[debug] fault_injection`): make
//! an actor's handler block its thread — a wedge the supervisor must
//! notice and replace — or panic — a crash it must restart.
//!
//! The handlers for every actor are here, in one place, so no actor module
//! carries test machinery; they are reachable only through
//! [`InjectFault`], which the supervisor refuses unless fault injection is
//! enabled in the config.

use std::time::Duration;

use actix::prelude::*;
use tracing::warn;

use super::ActorId;
use crate::{
    distributor::Distributor, hasher::Hasher, receiver::Receiver, retention::Retention,
    watcher::Watcher,
};

/// Block the actor's thread for this long (it answers nothing meanwhile).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Stall {
    pub duration: Duration,
}

/// Panic inside the actor's handler (its thread dies).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Panic;

macro_rules! answer_faults {
    ($($actor:ty),*) => {$(
        impl Handler<Stall> for $actor {
            type Result = ();

            fn handle(&mut self, m: Stall, _: &mut Context<Self>) {
                warn!(actor = stringify!($actor), "fault injection: blocking this actor's thread for {:?}", m.duration);
                std::thread::sleep(m.duration);
            }
        }

        impl Handler<Panic> for $actor {
            type Result = ();

            fn handle(&mut self, _: Panic, _: &mut Context<Self>) {
                warn!(actor = stringify!($actor), "fault injection: panicking");
                panic!("fault injection: panic requested");
            }
        }
    )*};
}

answer_faults!(Watcher, Hasher, Receiver, Distributor, Retention);

/// What to do to an actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Stall(Duration),
    Panic,
}

/// Inject a fault into one actor (refused unless fault injection is on).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), FaultError>")]
pub struct InjectFault {
    pub actor: ActorId,
    pub fault: Fault,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultError {
    #[error("fault injection is off: set [debug] fault_injection = true in the config (never on a production node)")]
    Disabled,
    #[error("no actor {0} on this node")]
    NoSuchActor(String),
}
