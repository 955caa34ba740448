//! Prometheus metrics: the node's status rendered in the OpenMetrics text
//! format by `prometheus-client`, served by the admin API's `/metrics`
//! and, with `[metrics] listen`, by a listener of its own ([`serve`]).
//!
//! A scrape never waits on an actor: [`keep_current`] takes a status
//! snapshot (which asks the receivers and the distributor, each with a
//! deadline) once a second into a [`Cache`]; a scrape renders the cached
//! snapshot plus a `/proc/self` reading.
//!
//! Counters are exported from the node's own running totals as
//! `ConstCounter`s at each scrape (a [`Collector`]), so the numbers stay
//! those `fleetsync status` shows. Family names here omit the `_total`
//! and unit suffixes the encoder appends.

mod process;
pub mod serve;

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use fleetsync_actors::{
    status::{snapshot, FolderInfo, NodeStatus},
    supervisor::board::ActorState,
    NodeHandle,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::{Registry, Unit},
};

/// What a scrape answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How often [`keep_current`] refreshes the cache.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The latest status snapshot, shared by the refresher and the scrapes.
#[derive(Debug, Default, Clone)]
pub struct Cache(Arc<RwLock<Option<Arc<NodeStatus>>>>);

impl Cache {
    pub fn get(&self) -> Option<Arc<NodeStatus>> {
        self.0.read().expect("metrics cache lock").clone()
    }

    fn set(&self, st: NodeStatus) {
        *self.0.write().expect("metrics cache lock") = Some(Arc::new(st));
    }
}

/// Refresh `cache` every [`REFRESH_EVERY`] until aborted. The first
/// snapshot is taken at once.
pub async fn keep_current(node: NodeHandle, cache: Cache) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    // A slow snapshot (an actor at its deadline) must not cause a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        cache.set(snapshot(&node).await);
    }
}

/// The exposition for `st` (`None`: no snapshot yet; build and process
/// series only).
pub fn render(st: Option<Arc<NodeStatus>>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exported {
        status: st,
        process: process::read(),
    }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

#[derive(Debug)]
struct Exported {
    status: Option<Arc<NodeStatus>>,
    process: Option<process::Process>,
}

impl Collector for Exported {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info = Info::new([("version", env!("CARGO_PKG_VERSION"))]);
        info.encode(enc.encode_descriptor(
            "fleetsync_build",
            "The running fleetsync's version (always 1).",
            None,
            info.metric_type(),
        )?)?;
        if let Some(st) = &self.status {
            node_metrics(&mut enc, st)?;
            peer_metrics(&mut enc, st)?;
            folder_gauges(&mut enc, &st.folders)?;
            folder_counters(&mut enc, &st.folders)?;
            actor_metrics(&mut enc, &st.actors)?;
        }
        if let Some(p) = &self.process {
            process_metrics(&mut enc, p)?;
        }
        Ok(())
    }
}

/// A family's name, help and unit.
type Desc<'a> = (&'a str, &'a str, Option<Unit>);

/// One gauge family: a sample per label set.
fn gauges<L: EncodeLabelSet, V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    (name, help, unit): Desc,
    rows: impl IntoIterator<Item = (L, V)>,
) -> std::fmt::Result {
    let unit = unit.as_ref();
    let mut family =
        enc.encode_descriptor(name, help, unit, ConstGauge::new(0i64).metric_type())?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One counter family (the encoder appends `_total`).
fn counters<L: EncodeLabelSet, V: prometheus_client::encoding::EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    (name, help, unit): Desc,
    rows: impl IntoIterator<Item = (L, V)>,
) -> std::fmt::Result {
    let unit = unit.as_ref();
    let mut family =
        enc.encode_descriptor(name, help, unit, ConstCounter::new(0u64).metric_type())?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

type NoLabels = [(&'static str, &'static str); 0];

fn one<V>(v: V) -> [(NoLabels, V); 1] {
    [([], v)]
}

fn node_metrics(enc: &mut DescriptorEncoder, st: &NodeStatus) -> std::fmt::Result {
    gauges(
        enc,
        (
            "fleetsync_healthy",
            "1 if every actor answers its ping.",
            None,
        ),
        one(u64::from(st.healthy)),
    )?;
    gauges(
        enc,
        (
            "fleetsync_peers_connected",
            "Peers with a live authenticated session.",
            None,
        ),
        one(st.peers.iter().filter(|p| p.connected).count() as u64),
    )?;
    gauges(
        enc,
        ("fleetsync_peers_known", "Peers this node knows of.", None),
        one(st.peers.len() as u64),
    )?;
    counters(
        enc,
        (
            "fleetsync_peers_forgotten",
            "Peers forgotten: unconfigured and unreachable, or evicted past the cap.",
            None,
        ),
        one(st.peers_forgotten),
    )?;
    counters(
        enc,
        (
            "fleetsync_retention_gc_runs",
            "Blob garbage collection runs completed.",
            None,
        ),
        one(st.gc.runs),
    )
}

/// Per peer (its short id, as `fleetsync status` shows it).
fn peer_metrics(enc: &mut DescriptorEncoder, st: &NodeStatus) -> std::fmt::Result {
    let peer = |p: &fleetsync_actors::status::PeerInfo| [("peer", p.short_id.clone())];
    gauges(
        enc,
        (
            "fleetsync_peer_connected",
            "1 while the peer has a live authenticated session.",
            None,
        ),
        st.peers.iter().map(|p| (peer(p), u64::from(p.connected))),
    )?;
    gauges(
        enc,
        (
            "fleetsync_peer_rtt",
            "Round-trip time of the peer's session path (connected peers only).",
            Some(Unit::Seconds),
        ),
        st.peers
            .iter()
            .filter_map(|p| Some((peer(p), p.rtt_ms? / 1000.0))),
    )?;
    gauges(
        enc,
        (
            "fleetsync_peer_clock_offset",
            "The peer's clock minus this node's, as last measured (positive: the peer is ahead).",
            Some(Unit::Seconds),
        ),
        st.peers
            .iter()
            .filter_map(|p| Some((peer(p), p.clock_offset_ms? as f64 / 1000.0))),
    )?;
    counters(
        enc,
        (
            "fleetsync_peer_refused_streams",
            "Index streams a peer opened past the per-session cap, refused.",
            None,
        ),
        st.peers.iter().map(|p| (peer(p), p.refused_streams)),
    )?;
    counters(
        enc,
        (
            "fleetsync_peer_sent",
            "File content bytes served to the peer (all folders: content is stored once).",
            Some(Unit::Bytes),
        ),
        st.peers.iter().map(|p| (peer(p), p.bytes_sent)),
    )?;
    counters(
        enc,
        (
            "fleetsync_peer_received",
            "File content bytes fetched from the peer, per folder.",
            Some(Unit::Bytes),
        ),
        st.folders.iter().flat_map(|f| {
            f.bytes_received_by_peer
                .iter()
                .map(|(p, n)| ([("folder", f.id.clone()), ("peer", p.clone())], *n))
        }),
    )
}

type Get = fn(&FolderInfo) -> u64;

fn by_folder(
    folders: &[FolderInfo],
    get: Get,
) -> impl Iterator<Item = ([(&str, String); 1], u64)> + '_ {
    folders
        .iter()
        .map(move |f| ([("folder", f.id.clone())], get(f)))
}

fn folder_gauges(enc: &mut DescriptorEncoder, folders: &[FolderInfo]) -> std::fmt::Result {
    let families: [(Desc, Get); 10] = [
        (("fleetsync_folder_files", "Files in the folder index.", None), |f| f.files),
        (("fleetsync_folder", "Bytes of those files.", Some(Unit::Bytes)), |f| f.bytes),
        (
            ("fleetsync_folder_pending_changes", "Remote changes received, not yet applied.", None),
            |f| f.pending,
        ),
        (
            ("fleetsync_folder_in_sync", "1 if nothing is pending and peers sent all.", None),
            |f| u64::from(f.in_sync),
        ),
        (
            (
                "fleetsync_folder_full",
                "1 if the folder holds max_files paths and new remote paths wait.",
                None,
            ),
            |f| u64::from(f.full),
        ),
        (
            (
                "fleetsync_folder_deletes_held",
                "Deletes from peers held by the mass-delete guard (fleetsync folder resume applies them).",
                None,
            ),
            |f| f.deletes_held,
        ),
        (
            (
                "fleetsync_folder_versions",
                "Bytes the folder's kept versions take on disk (compressed).",
                Some(Unit::Bytes),
            ),
            |f| f.versions_bytes,
        ),
        (("fleetsync_folder_versions_kept", "Versions the folder keeps.", None), |f| {
            f.versions_count
        }),
        (
            ("fleetsync_folder_transfers_active", "Transfers in progress.", None),
            |f| f.transfers.len() as u64,
        ),
        (
            (
                "fleetsync_folder_last_sync_timestamp",
                "Unix time the folder was last seen in sync (0: not yet since start).",
                Some(Unit::Seconds),
            ),
            |f| f.last_in_sync_secs,
        ),
    ];
    for (desc, get) in families {
        gauges(enc, desc, by_folder(folders, get))?;
    }
    gauges(
        enc,
        (
            "fleetsync_retention_last_sweep_timestamp",
            "Unix time of the folder's last retention sweep (0: never).",
            Some(Unit::Seconds),
        ),
        by_folder(folders, |f| f.last_sweep_secs),
    )
}

fn folder_counters(enc: &mut DescriptorEncoder, folders: &[FolderInfo]) -> std::fmt::Result {
    let families: [(Desc, Get); 9] = [
        (
            ("fleetsync_folder_conflicts", "Conflict copies made.", None),
            |f| f.conflicts,
        ),
        (
            (
                "fleetsync_folder_rejected",
                "Entries or frames rejected from peers.",
                None,
            ),
            |f| f.rejected,
        ),
        (
            (
                "fleetsync_folder_deferred",
                "Remote entries deferred by max_pending / max_files (offered again later).",
                None,
            ),
            |f| f.deferred,
        ),
        (
            (
                "fleetsync_folder_received_files",
                "Files written from peers.",
                None,
            ),
            |f| f.files_received,
        ),
        (
            (
                "fleetsync_folder_received",
                "File content bytes fetched from peers.",
                Some(Unit::Bytes),
            ),
            |f| f.bytes_received,
        ),
        (
            (
                "fleetsync_retention_swept_files",
                "Stale temp files and unused links retention removed.",
                None,
            ),
            |f| f.swept_files,
        ),
        (
            (
                "fleetsync_retention_swept",
                "Bytes of those files.",
                Some(Unit::Bytes),
            ),
            |f| f.swept_bytes,
        ),
        (
            (
                "fleetsync_versions_local_kept",
                "The node's own deletes and replacements kept as versions (versions.local = true).",
                None,
            ),
            |f| f.versions_local_kept,
        ),
        (
            (
                "fleetsync_versions_local_missed",
                "The node's own changes whose old content had no intact copy left to keep \
                 (in-place overwrites, no hard link; versions.local = true).",
                None,
            ),
            |f| f.versions_local_missed,
        ),
    ];
    for (desc, get) in families {
        counters(enc, desc, by_folder(folders, get))?;
    }
    Ok(())
}

/// Per actor: restarts, health, and how long ago its work last moved.
fn actor_metrics(enc: &mut DescriptorEncoder, actors: &[ActorState]) -> std::fmt::Result {
    let actor = |a: &ActorState| [("actor", a.name.clone())];
    counters(
        enc,
        (
            "fleetsync_actor_restarts",
            "Times the supervisor replaced this actor.",
            None,
        ),
        actors.iter().map(|a| (actor(a), a.restarts)),
    )?;
    gauges(
        enc,
        (
            "fleetsync_actor_healthy",
            "1 if the actor answers its pings and its work moves.",
            None,
        ),
        actors.iter().map(|a| (actor(a), u64::from(a.healthy))),
    )?;
    gauges(
        enc,
        (
            "fleetsync_actor_last_progress",
            "Seconds since the actor's work last moved.",
            Some(Unit::Seconds),
        ),
        actors
            .iter()
            .map(|a| (actor(a), a.last_progress_ms as f64 / 1000.0)),
    )
}

fn process_metrics(enc: &mut DescriptorEncoder, p: &process::Process) -> std::fmt::Result {
    gauges(
        enc,
        (
            "process_resident_memory",
            "Resident memory size in bytes.",
            Some(Unit::Bytes),
        ),
        one(p.resident_memory_bytes),
    )?;
    counters(
        enc,
        (
            "process_cpu",
            "Total user and system CPU time spent in seconds.",
            Some(Unit::Seconds),
        ),
        one(p.cpu_seconds),
    )?;
    gauges(
        enc,
        ("process_open_fds", "Number of open file descriptors.", None),
        one(p.open_fds),
    )?;
    gauges(
        enc,
        (
            "process_start_time",
            "Start time of the process since unix epoch in seconds.",
            Some(Unit::Seconds),
        ),
        one(p.start_time_seconds),
    )
}

#[cfg(test)]
mod tests;
