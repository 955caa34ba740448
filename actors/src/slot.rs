//! A restartable actor address. Handles hold a [`Slot`]; the supervisor
//! swaps in the new address when it restarts the actor, so callers never
//! hold a dead `Addr`.

use std::sync::{Arc, RwLock};

use actix::{Actor, Addr};

pub struct Slot<A: Actor>(Arc<RwLock<Option<Addr<A>>>>);

impl<A: Actor> Clone for Slot<A> {
    fn clone(&self) -> Self {
        Slot(self.0.clone())
    }
}

impl<A: Actor> Default for Slot<A> {
    fn default() -> Self {
        Slot(Arc::new(RwLock::new(None)))
    }
}

impl<A: Actor> std::fmt::Debug for Slot<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot<{}>", std::any::type_name::<A>())
    }
}

impl<A: Actor> Slot<A> {
    pub fn get(&self) -> Option<Addr<A>> {
        self.0.read().expect("slot lock").clone()
    }

    pub fn set(&self, addr: Addr<A>) {
        *self.0.write().expect("slot lock") = Some(addr);
    }
}
