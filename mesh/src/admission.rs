//! Who may run a membership handshake right now.
//!
//! Anyone can open a control connection, and until it has proven
//! membership it holds a task and a slot. With one shared pool, strangers
//! that connect and then say nothing could hold every slot and lock the
//! members out. So there are two lanes:
//!
//! - **known** ids (configured peers, the allowlist, and ids that proved
//!   membership before, see [`Admission::remember`]): [`KNOWN_SLOTS`]
//!   slots, [`KNOWN_DEADLINE`]. TLS has authenticated the id before we
//!   look, so a stranger cannot use this lane.
//! - **strangers**: at most [`STRANGER_SLOTS`] in all,
//!   [`STRANGER_SLOTS_PER_SOURCE`] per source (an IPv4 address or an IPv6
//!   /64) and one per endpoint id, each with the shorter
//!   [`STRANGER_DEADLINE`]. When a source (or the whole lane) is full, a
//!   newcomer evicts a pending stranger there: the oldest that has sent
//!   nothing yet, else the oldest that spoke but has not proven itself
//!   within [`STALE_AFTER`]; if there is none it is turned away. A member
//!   sends its first message with the connection and finishes in a few
//!   milliseconds, so eviction is what lets a member nobody configured
//!   (behind the same NAT as a flood, or on loopback in tests) get in
//!   while stalled strangers churn, and once it has spoken silent
//!   newcomers cannot push it out.
//!
//! A [`Permit`] frees its slot when dropped; an evicted one says so through
//! [`Permit::evicted`], and the holder closes its connection.

use std::{
    collections::HashSet,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use iroh::EndpointId;
use tokio::sync::Notify;

use crate::auth::HANDSHAKE_TIMEOUT;

/// Handshakes of known ids at once.
pub const KNOWN_SLOTS: usize = 64;
/// A known id gets this long (members on slow links, restarts).
pub const KNOWN_DEADLINE: Duration = HANDSHAKE_TIMEOUT;
/// Handshakes of strangers at once, from all sources.
pub const STRANGER_SLOTS: usize = 32;
/// Handshakes of strangers at once from one IPv4 address or IPv6 /64.
pub const STRANGER_SLOTS_PER_SOURCE: usize = 8;
/// From accept to a valid proof: about two round trips of work.
pub const STRANGER_DEADLINE: Duration = Duration::from_secs(2);
/// A pending stranger that spoke but has not proven itself this long may
/// be evicted by a newcomer: old enough that a member which got a slot
/// finishes its few-millisecond handshake before it can lose it.
pub const STALE_AFTER: Duration = Duration::from_millis(100);
/// Refusals are counted and reported at most this often (a flood must not
/// turn into a flood of log lines).
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Where a stranger comes from, for its per-source budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    V4([u8; 4]),
    /// The /64 prefix: one host or one site usually has a whole /64.
    V6([u8; 8]),
    /// No IP path (not expected with relays off): one shared budget.
    Unknown,
}

impl Source {
    fn of(ip: Option<IpAddr>) -> Source {
        match ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => Source::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => {
                let mut p = [0u8; 8];
                p.copy_from_slice(&v6.octets()[..8]);
                Source::V6(p)
            }
            None => Source::Unknown,
        }
    }
}

/// Set once when a pending stranger loses its slot to a newcomer.
#[derive(Debug, Default)]
struct Eviction {
    done: AtomicBool,
    wake: Notify,
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    id: EndpointId,
    source: Source,
    since: Instant,
    /// It has sent something (see [`Permit::spoke`]).
    spoke: bool,
    eviction: Arc<Eviction>,
}

impl Pending {
    /// May a newcomer evict it now? A silent one always: a dialer sends
    /// its Hello with the connection, so the newest silent slots are the
    /// ones that may still speak, and under a flood of silent connections
    /// (which costs the node more CPU than any grace period) the node's
    /// own latency would otherwise decide who gets in.
    fn evictable(&self, now: Instant) -> bool {
        !self.spoke || now.saturating_duration_since(self.since) >= STALE_AFTER
    }
}

#[derive(Debug, Default)]
struct State {
    known: HashSet<EndpointId>,
    known_pending: usize,
    strangers: Vec<Pending>,
    next_seq: u64,
    refused: u64,
    last_report: Option<Instant>,
}

/// Which lane a permit is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Known,
    Stranger,
}

/// Turned away: every slot this connection could use is held by a
/// handshake too young to evict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    /// Refusals since the last report, when one is due now (`None`: stay
    /// quiet, a report went out recently).
    pub report: Option<u64>,
}

/// Shared, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Admission(Arc<Mutex<State>>);

/// A handshake slot, freed on drop.
#[derive(Debug)]
pub struct Permit {
    admission: Admission,
    lane: Lane,
    seq: u64,
    eviction: Arc<Eviction>,
}

impl Permit {
    pub fn lane(&self) -> Lane {
        self.lane
    }

    /// How long the handshake may take.
    pub fn deadline(&self) -> Duration {
        match self.lane {
            Lane::Known => KNOWN_DEADLINE,
            Lane::Stranger => STRANGER_DEADLINE,
        }
    }

    /// The peer sent its first message: from now on only [`STALE_AFTER`]
    /// makes it evictable.
    pub fn spoke(&self) {
        if self.lane == Lane::Stranger {
            let mut st = self.admission.lock();
            if let Some(p) = st.strangers.iter_mut().find(|p| p.seq == self.seq) {
                p.spoke = true;
            }
        }
    }

    pub fn is_evicted(&self) -> bool {
        self.eviction.done.load(Ordering::Acquire)
    }

    /// Resolves when a newcomer took this slot (never for known ids).
    pub async fn evicted(&self) {
        while !self.is_evicted() {
            self.eviction.wake.notified().await;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.admission.lock();
        match self.lane {
            Lane::Known => st.known_pending -= 1,
            Lane::Stranger => st.strangers.retain(|p| p.seq != self.seq),
        }
    }
}

impl Admission {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("admission lock")
    }

    /// From now on `id` uses the known lane: it is configured, or it proved
    /// membership.
    pub fn remember(&self, id: EndpointId) {
        self.lock().known.insert(id);
    }

    /// `id` is no longer known (a forgotten peer): back to the stranger
    /// lane until it proves membership again.
    pub fn forget(&self, id: &EndpointId) {
        self.lock().known.remove(id);
    }

    pub fn is_known(&self, id: &EndpointId) -> bool {
        self.lock().known.contains(id)
    }

    /// A slot for a handshake with `id`, which connected from `ip`.
    pub fn enter(&self, id: EndpointId, ip: Option<IpAddr>) -> Result<Permit, Busy> {
        self.enter_at(id, ip, Instant::now())
    }

    fn enter_at(&self, id: EndpointId, ip: Option<IpAddr>, now: Instant) -> Result<Permit, Busy> {
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        let eviction = Arc::new(Eviction::default());
        let lane = if st.known.contains(&id) {
            if st.known_pending >= KNOWN_SLOTS {
                return Err(st.refuse(now));
            }
            st.known_pending += 1;
            Lane::Known
        } else {
            let source = Source::of(ip);
            if !st.make_room(id, source, now) {
                return Err(st.refuse(now));
            }
            st.strangers.push(Pending {
                seq,
                id,
                source,
                since: now,
                spoke: false,
                eviction: eviction.clone(),
            });
            Lane::Stranger
        };
        Ok(Permit {
            admission: self.clone(),
            lane,
            seq,
            eviction,
        })
    }
}

impl State {
    /// Free what a new stranger needs: its id's slot (the older connection
    /// of the same id is abandoned), then room in its source and in the
    /// lane. False if a full budget holds only young handshakes.
    fn make_room(&mut self, id: EndpointId, source: Source, now: Instant) -> bool {
        if let Some(i) = self.strangers.iter().position(|p| p.id == id) {
            self.evict(i);
        }
        let from_source = self.strangers.iter().filter(|p| p.source == source).count();
        if from_source >= STRANGER_SLOTS_PER_SOURCE && !self.evict_stale(Some(source), now) {
            return false;
        }
        if self.strangers.len() >= STRANGER_SLOTS && !self.evict_stale(None, now) {
            return false;
        }
        true
    }

    /// Evict a pending stranger (of `source`, if given) that may be
    /// evicted: a silent one first, the oldest first.
    fn evict_stale(&mut self, source: Option<Source>, now: Instant) -> bool {
        let victim = self
            .strangers
            .iter()
            .enumerate()
            .filter(|(_, p)| source.is_none_or(|s| p.source == s) && p.evictable(now))
            .min_by_key(|(_, p)| (p.spoke, p.since))
            .map(|(i, _)| i);
        match victim {
            Some(i) => {
                self.evict(i);
                true
            }
            None => false,
        }
    }

    fn evict(&mut self, i: usize) {
        let p = self.strangers.swap_remove(i);
        p.eviction.done.store(true, Ordering::Release);
        p.eviction.wake.notify_one();
    }

    fn refuse(&mut self, now: Instant) -> Busy {
        self.refused += 1;
        let due = self
            .last_report
            .is_none_or(|t| now.saturating_duration_since(t) >= REPORT_EVERY);
        if !due {
            return Busy { report: None };
        }
        self.last_report = Some(now);
        Busy {
            report: Some(std::mem::take(&mut self.refused)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iroh::SecretKey;

    fn id() -> EndpointId {
        SecretKey::generate().public()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    const YOUNG: Duration = Duration::from_millis(1);

    #[test]
    fn the_ninth_stranger_from_one_ip_evicts_a_stale_one_or_is_refused() {
        let a = Admission::new();
        let t0 = Instant::now();
        let held: Vec<Permit> = (0..STRANGER_SLOTS_PER_SOURCE as u64)
            .map(|i| {
                let at = t0 + Duration::from_millis(i);
                a.enter_at(id(), ip("10.0.0.1"), at).unwrap()
            })
            .collect();
        assert!(held.iter().all(|p| p.lane() == Lane::Stranger));
        assert_eq!(held[0].deadline(), STRANGER_DEADLINE);
        for p in &held {
            p.spoke();
        }
        // All young: the ninth is turned away, and nobody is evicted.
        let busy = a.enter_at(id(), ip("10.0.0.1"), t0 + YOUNG * 10);
        assert!(busy.is_err());
        assert!(held.iter().all(|p| !p.is_evicted()));
        // Another address has its own budget.
        let other = a.enter_at(id(), ip("10.0.0.2"), t0 + YOUNG * 10);
        assert!(other.is_ok());
        // Once the oldest is stale, a newcomer takes exactly its slot.
        let later = t0 + STALE_AFTER;
        let newcomer = a.enter_at(id(), ip("10.0.0.1"), later).unwrap();
        assert!(held[0].is_evicted());
        assert!(held[1..].iter().all(|p| !p.is_evicted()));
        drop(newcomer);
    }

    #[tokio::test]
    async fn an_evicted_permit_wakes_its_holder() {
        let a = Admission::new();
        let t0 = Instant::now();
        let first = a.enter_at(id(), ip("10.0.0.1"), t0).unwrap();
        let waiter = tokio::spawn(async move {
            first.evicted().await;
        });
        let rest: Vec<Permit> = (1..STRANGER_SLOTS_PER_SOURCE as u32)
            .map(|i| a.enter_at(id(), ip("10.0.0.1"), t0 + YOUNG * i).unwrap())
            .collect();
        rest.iter().for_each(Permit::spoke);
        let _new = a.enter_at(id(), ip("10.0.0.1"), t0 + STALE_AFTER).unwrap();
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the evicted holder is woken")
            .unwrap();
    }

    /// The flood case: silent strangers turn over quickly, and a member
    /// that got a slot and spoke keeps it while silent newcomers churn.
    #[test]
    fn silent_strangers_give_way_before_one_that_spoke() {
        let a = Admission::new();
        let t0 = Instant::now();
        let member = a.enter_at(id(), ip("127.0.0.1"), t0).unwrap();
        member.spoke();
        let mut flood: Vec<Permit> = (1..STRANGER_SLOTS_PER_SOURCE as u32)
            .map(|i| a.enter_at(id(), ip("127.0.0.1"), t0 + YOUNG * i).unwrap())
            .collect();
        // Wave after wave of silent newcomers get in, each evicting a
        // silent one, and never the member (younger than STALE_AFTER).
        for wave in 1..=3u32 {
            let at = t0 + YOUNG * 10 * wave;
            for _ in 0..2 * STRANGER_SLOTS_PER_SOURCE {
                flood.push(a.enter_at(id(), ip("127.0.0.1"), at).unwrap());
            }
        }
        assert!(YOUNG * 30 < STALE_AFTER);
        assert!(!member.is_evicted());
        assert_eq!(a.lock().strangers.len(), STRANGER_SLOTS_PER_SOURCE);
    }

    #[test]
    fn ipv6_strangers_share_a_budget_per_64() {
        let a = Admission::new();
        let t0 = Instant::now();
        let _held: Vec<Permit> = (0..STRANGER_SLOTS_PER_SOURCE)
            .map(|i| {
                let addr = format!("2001:db8:1:2::{:x}", i + 1);
                a.enter_at(id(), ip(&addr), t0).unwrap()
            })
            .collect();
        _held.iter().for_each(Permit::spoke);
        assert!(a.enter_at(id(), ip("2001:db8:1:2:ffff::9"), t0).is_err());
        assert!(a.enter_at(id(), ip("2001:db8:1:3::1"), t0).is_ok());
        // An IPv4-mapped address counts as the IPv4 address.
        let _v4: Vec<Permit> = (0..STRANGER_SLOTS_PER_SOURCE)
            .map(|_| a.enter_at(id(), ip("192.0.2.7"), t0).unwrap())
            .collect();
        _v4.iter().for_each(Permit::spoke);
        assert!(a.enter_at(id(), ip("::ffff:192.0.2.7"), t0).is_err());
    }

    #[test]
    fn the_lane_is_bounded_over_all_sources() {
        let a = Admission::new();
        let t0 = Instant::now();
        let held: Vec<Permit> = (0..STRANGER_SLOTS)
            .map(|i| {
                let addr = format!("10.0.{}.1", i);
                a.enter_at(id(), ip(&addr), t0).unwrap()
            })
            .collect();
        held.iter().for_each(Permit::spoke);
        assert!(a.enter_at(id(), ip("10.9.9.9"), t0 + YOUNG).is_err());
        let _n = a.enter_at(id(), ip("10.9.9.9"), t0 + STALE_AFTER).unwrap();
        assert_eq!(held.iter().filter(|p| p.is_evicted()).count(), 1);
    }

    #[test]
    fn one_pending_handshake_per_endpoint_id() {
        let a = Admission::new();
        let t0 = Instant::now();
        let x = id();
        let first = a.enter_at(x, ip("10.0.0.1"), t0).unwrap();
        let second = a.enter_at(x, ip("10.0.0.2"), t0).unwrap();
        assert!(
            first.is_evicted(),
            "the older connection of the id gives way"
        );
        assert!(!second.is_evicted());
        assert_eq!(a.lock().strangers.len(), 1);
    }

    #[test]
    fn known_ids_never_wait_for_stranger_slots() {
        let a = Admission::new();
        let t0 = Instant::now();
        let _strangers: Vec<Permit> = (0..STRANGER_SLOTS)
            .map(|i| a.enter_at(id(), ip(&format!("10.1.{i}.1")), t0).unwrap())
            .collect();
        _strangers.iter().for_each(Permit::spoke);
        let member = id();
        assert!(a.enter_at(member, ip("10.1.0.1"), t0).is_err());
        a.remember(member);
        let p = a.enter_at(member, ip("10.1.0.1"), t0).unwrap();
        assert_eq!(p.lane(), Lane::Known);
        assert_eq!(p.deadline(), KNOWN_DEADLINE);
        // Its lane is bounded too, but separately.
        let others: Vec<EndpointId> = (0..KNOWN_SLOTS).map(|_| id()).collect();
        for o in &others {
            a.remember(*o);
        }
        let held: Vec<Permit> = others[1..]
            .iter()
            .map(|o| a.enter_at(*o, None, t0).unwrap())
            .collect();
        assert!(a.enter_at(others[0], None, t0).is_err());
        drop(held);
    }

    #[test]
    fn permits_are_released_on_drop() {
        let a = Admission::new();
        let t0 = Instant::now();
        let held: Vec<Permit> = (0..STRANGER_SLOTS_PER_SOURCE)
            .map(|_| a.enter_at(id(), ip("10.0.0.1"), t0).unwrap())
            .collect();
        held.iter().for_each(Permit::spoke);
        assert!(a.enter_at(id(), ip("10.0.0.1"), t0).is_err());
        drop(held);
        assert!(a.lock().strangers.is_empty());
        assert!(a.enter_at(id(), ip("10.0.0.1"), t0).is_ok());
        let k = id();
        a.remember(k);
        drop(a.enter_at(k, None, t0).unwrap());
        assert_eq!(a.lock().known_pending, 0);
    }

    #[test]
    fn refusals_are_reported_in_batches() {
        let a = Admission::new();
        let t0 = Instant::now();
        let _held: Vec<Permit> = (0..STRANGER_SLOTS_PER_SOURCE)
            .map(|_| a.enter_at(id(), ip("10.0.0.1"), t0).unwrap())
            .collect();
        _held.iter().for_each(Permit::spoke);
        let first = a.enter_at(id(), ip("10.0.0.1"), t0).unwrap_err();
        assert_eq!(first.report, Some(1));
        for _ in 0..5 {
            let quiet = a.enter_at(id(), ip("10.0.0.1"), t0).unwrap_err();
            assert_eq!(quiet.report, None);
        }
        let mut st = a.lock();
        let later = st.refuse(t0 + REPORT_EVERY);
        assert_eq!(later.report, Some(6));
    }
}
