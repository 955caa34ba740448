//! Checks through the running node's admin API (`GET /status`): one
//! request; without an answer, one `fail` line says the node is not
//! running and the rest is skipped.

use std::{collections::BTreeMap, path::Path, time::SystemTime};

use fleetsync_config::Config;
use serde::Deserialize;

use super::Check;
use crate::client;

/// How far back "recent" errors go.
pub const RECENT_WINDOW_SECS: u64 = 600;

/// What doctor reads from `/status`.
#[derive(Debug, Deserialize)]
pub struct NodeView {
    pub short_id: String,
    pub healthy: bool,
    #[serde(default)]
    pub peers: Vec<PeerView>,
    #[serde(default)]
    pub folders: Vec<FolderView>,
    #[serde(default)]
    pub actors: Vec<ActorView>,
}

#[derive(Debug, Deserialize)]
pub struct PeerView {
    pub id: String,
    pub short_id: String,
    pub connected: bool,
    #[serde(default)]
    pub source: String,
    pub addr: Option<String>,
    #[serde(default)]
    pub addrs: Vec<String>,
    pub rtt_ms: Option<f64>,
    pub clock_offset_ms: Option<i64>,
    pub clock_uncertainty_ms: Option<u64>,
    pub last_seen_secs_ago: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct FolderView {
    pub id: String,
    pub error: Option<String>,
    #[serde(default)]
    pub deletes_held: u64,
    #[serde(default)]
    pub recent: Vec<RecentView>,
}

#[derive(Debug, Deserialize)]
pub struct RecentView {
    pub at_secs: u64,
    pub kind: String,
    pub peer: Option<String>,
    pub message: String,
}

#[derive(Debug, Deserialize)]
pub struct ActorView {
    pub name: String,
    pub healthy: bool,
}

/// Every check that needs the running node, asked at `at` (`config`:
/// when readable, for the configured peers).
pub fn checks(
    config: Option<&Config>,
    at: anyhow::Result<client::Endpoint>,
    config_path: &Path,
) -> Vec<Check> {
    let view = match fetch(at) {
        Ok(v) => v,
        Err(c) => return vec![c],
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = vec![node_health(&view, config_path)];
    out.extend(folder_faults(&view, config_path));
    out.extend(peers(config, &view));
    out.push(clock(&view));
    out.extend(recent(&view, now, config_path));
    out
}

/// `/status`, or the `fail` line saying why there is none.
fn fetch(at: anyhow::Result<client::Endpoint>) -> Result<NodeView, Check> {
    let start = "systemctl start fleetsync (or: fleetsync run --config FILE)";
    let addr = at.map_err(|e| Check::fail("node", format!("not running: {e}"), start))?;
    let body = client::get(&addr, "/status").map_err(|e| {
        match e.downcast_ref::<client::Unreachable>() {
            Some(client::Unreachable::NotRunning { .. }) => Check::fail(
                "node",
                format!("not running: no admin API answers on {addr}"),
                start,
            ),
            Some(denied @ client::Unreachable::Denied { .. }) => Check::fail(
                "node",
                format!("cannot ask the node: {denied}"),
                "add this user to the socket's group, or run doctor as the node's user",
            ),
            None => Check::fail(
                "node",
                format!("the admin API on {addr} did not answer /status: {e:#}"),
                "restart the node: systemctl restart fleetsync",
            ),
        }
    })?;
    serde_json::from_str(&body).map_err(|e| {
        Check::fail(
            "node",
            format!("the admin API on {addr} sent a status this doctor cannot read: {e}"),
            "run the same fleetsync version as the node (fleetsync --version)",
        )
    })
}

fn node_health(v: &NodeView, config_path: &Path) -> Check {
    let sick: Vec<&str> = v
        .actors
        .iter()
        .filter(|a| !a.healthy)
        .map(|a| a.name.as_str())
        .collect();
    if v.healthy {
        return Check::ok(
            "node",
            format!(
                "running as {}, admin API answers, {} actors healthy",
                v.short_id,
                v.actors.len()
            ),
        );
    }
    Check::fail(
        "node",
        format!(
            "running as {} but unhealthy (actors: {})",
            v.short_id,
            if sick.is_empty() {
                "supervisor not answering".to_string()
            } else {
                sick.join(", ")
            }
        ),
        format!(
            "fleetsync status --config {} shows why; if it stays: systemctl restart fleetsync",
            config_path.display()
        ),
    )
}

/// A folder with an error (faulted or full) and deletes the guard holds.
fn folder_faults(v: &NodeView, config_path: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    for f in &v.folders {
        let name = format!("folder {} sync", f.id);
        if let Some(e) = &f.error {
            out.push(Check::fail(
                name.clone(),
                e.clone(),
                format!(
                    "act on the message, then check: fleetsync status --config {}",
                    config_path.display()
                ),
            ));
        }
        if f.deletes_held > 0 {
            out.push(Check::warn(
                name,
                format!(
                    "{} deletes from peers held by the mass-delete guard",
                    f.deletes_held
                ),
                format!(
                    "if they are wanted: fleetsync folder resume --config {} --folder {}",
                    config_path.display(),
                    f.id
                ),
            ));
        }
    }
    out
}

/// Each configured peer (mesh.peers and ticket peers): connected means its
/// session passed the fleet-secret handshake (proven member). Peers found
/// otherwise (mDNS, exchange, inbound) are listed while connected.
pub fn peers(config: Option<&Config>, v: &NodeView) -> Vec<Check> {
    let configured: Vec<_> = config
        .into_iter()
        .flat_map(|c| c.mesh.peers.iter().chain(&c.mesh.ticket_peers))
        .collect();
    let mut out = Vec::new();
    for p in &configured {
        let id = hex::encode(p.id);
        let seen = v.peers.iter().find(|s| s.id.eq_ignore_ascii_case(&id));
        out.push(match seen {
            Some(s) => peer_line(s),
            None => Check::warn(
                format!("peer {}", &id[..10]),
                format!("configured as {p} but the running node does not know it"),
                "restart the node to apply the config: systemctl restart fleetsync",
            ),
        });
    }
    for s in &v.peers {
        let is_configured = configured
            .iter()
            .any(|p| hex::encode(p.id).eq_ignore_ascii_case(&s.id));
        if !is_configured && s.connected {
            out.push(peer_line(s));
        }
    }
    if out.is_empty() {
        out.push(Check::warn(
            "peers",
            "none configured and none found",
            "add one to [mesh] peers = [\"<node id>@<host>:<port>\"] (fleetsync id prints a node's id), or join with a ticket: fleetsync invite / fleetsync join",
        ));
    }
    out
}

fn peer_line(s: &PeerView) -> Check {
    let name = format!("peer {}", s.short_id);
    if s.connected {
        let rtt = s.rtt_ms.map_or("rtt not measured yet".to_string(), |r| {
            format!("rtt {r:.1} ms")
        });
        return Check::ok(
            name,
            format!(
                "connected, proven fleet member ({}), {}, {rtt}",
                s.source,
                s.addr.as_deref().unwrap_or("address unknown")
            ),
        );
    }
    let mut detail = format!("not connected ({})", s.source);
    if let Some(ago) = s.last_seen_secs_ago {
        detail.push_str(&format!(", last seen {ago} s ago"));
    }
    if let Some(e) = &s.last_error {
        detail.push_str(&format!(", last error: {e}"));
    }
    let addrs = s.addrs.join(", ");
    Check::warn(
        name,
        detail,
        format!(
            "on that machine: systemctl start fleetsync (fleetsync doctor there tells why it is down); \
             check UDP reaches {} from here, and that both use the same fleet_secret",
            if addrs.is_empty() { "it" } else { &addrs }
        ),
    )
}

/// Clock offsets up to this are ok: well inside what an editor's save
/// and a sync round take, so "later" still means later.
pub const CLOCK_OK_MS: u64 = 1_000;
/// Past this a clock is plainly unsynchronised (not drift): fail.
pub const CLOCK_FAIL_MS: u64 = 60_000;

/// The clock against every connected peer that measured it (protocol
/// version 3 on), judged by the worst one, less the reading's own
/// uncertainty. Concurrent edits of one file are decided by mtime
/// (actors/src/rules.rs), so clocks seconds apart pick the wrong "later"
/// edit. When every measured peer (two or more) is off the same way, the
/// clock at fault is this node's.
pub fn clock(v: &NodeView) -> Check {
    const NAME: &str = "clock offset";
    let mut measured: Vec<(&PeerView, i64, u64)> = v
        .peers
        .iter()
        .filter(|p| p.connected)
        .filter_map(|p| Some((p, p.clock_offset_ms?, p.clock_uncertainty_ms.unwrap_or(0))))
        .collect();
    let connected = v.peers.iter().filter(|p| p.connected).count();
    let beyond = |(_, o, u): &(&PeerView, i64, u64)| o.unsigned_abs().saturating_sub(*u);
    measured.sort_by_key(|m| std::cmp::Reverse(beyond(m)));
    let Some(worst) = measured.first() else {
        return Check::ok(
            NAME,
            if connected == 0 {
                "not measured: no peer connected to compare with".to_string()
            } else {
                format!(
                    "not measured yet: none of the {connected} connected peers has sent its clock (peers older than protocol version 3 never do)"
                )
            },
        );
    };
    let (peer, offset, uncertainty) = *worst;
    let off = beyond(worst);
    let worst_text = format!(
        "peer {} is {} (±{uncertainty} ms)",
        peer.short_id,
        describe_offset(offset)
    );
    if off <= CLOCK_OK_MS {
        return Check::ok(
            NAME,
            format!(
                "within {} of {} connected peers (worst: {worst_text})",
                describe_ms(CLOCK_OK_MS),
                measured.len()
            ),
        );
    }
    let all_same_way = measured.len() >= 2
        && measured
            .iter()
            .all(|m| beyond(m) > CLOCK_OK_MS && m.1.signum() == offset.signum());
    let (detail, fix) = if all_same_way {
        (
            format!(
                "this node's clock is off: all {} measured peers differ the same way (worst: {worst_text})",
                measured.len()
            ),
            "here: timedatectl set-ntp true (or start chrony / systemd-timesyncd); timedatectl status shows whether the clock is synchronized".to_string(),
        )
    } else {
        (
            worst_text,
            format!(
                "on whichever of this node and peer {} is not synchronized (timedatectl status says): timedatectl set-ntp true, or start chrony / systemd-timesyncd",
                peer.short_id
            ),
        )
    };
    let why = "; concurrent edits are decided by mtime";
    if off > CLOCK_FAIL_MS {
        Check::fail(NAME, format!("{detail}{why}"), fix)
    } else {
        Check::warn(NAME, format!("{detail}{why}"), fix)
    }
}

/// `+1d 2m ahead` / `3.2 s behind` / `12 ms ahead`, from the peer's
/// offset (positive: the peer is ahead of this node).
fn describe_offset(offset_ms: i64) -> String {
    let way = if offset_ms >= 0 { "ahead" } else { "behind" };
    format!("{} {way}", describe_ms(offset_ms.unsigned_abs()))
}

fn describe_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string(),
    }
}

/// The last [`RECENT_WINDOW_SECS`] of errors and rejected inputs, grouped
/// (errors by message, rejected inputs by peer), the folder's own errors
/// first (the operator can act on them here), then by count.
pub fn recent(v: &NodeView, now: u64, config_path: &Path) -> Vec<Check> {
    #[derive(Default)]
    struct Group {
        count: u64,
        last_at: u64,
        last_message: String,
    }
    let mut groups: BTreeMap<(bool, String, String), Group> = BTreeMap::new();
    for f in &v.folders {
        for e in f
            .recent
            .iter()
            .filter(|e| e.at_secs + RECENT_WINDOW_SECS >= now)
        {
            let rejected = e.kind == "rejected";
            let key = if rejected {
                e.peer.clone().unwrap_or_else(|| "?".into())
            } else {
                e.message.clone()
            };
            let g = groups.entry((rejected, f.id.clone(), key)).or_default();
            g.count += 1;
            if e.at_secs >= g.last_at {
                g.last_at = e.at_secs;
                g.last_message = e.message.clone();
            }
        }
    }
    if groups.is_empty() {
        return vec![Check::ok(
            "recent errors",
            format!("none in the last {} minutes", RECENT_WINDOW_SECS / 60),
        )];
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by_key(|((rejected, _, _), g)| (*rejected, std::cmp::Reverse(g.count)));
    let log = "journalctl -u fleetsync --since -10min";
    groups
        .into_iter()
        .map(|((rejected, folder, key), g)| {
            let ago = now.saturating_sub(g.last_at);
            if rejected {
                Check::warn(
                    format!("folder {folder} rejected input"),
                    format!(
                        "{}× from peer {key} in the last 10 min (last {ago} s ago: {})",
                        g.count, g.last_message
                    ),
                    format!(
                        "peer {key} sends what this node refuses: run fleetsync doctor there and run the same fleetsync version on both; reasons: {log} | grep {key}"
                    ),
                )
            } else {
                Check::warn(
                    format!("folder {folder} errors"),
                    format!(
                        "{}× in the last 10 min (last {ago} s ago): {}",
                        g.count, g.last_message
                    ),
                    format!(
                        "act on the message, then check: fleetsync status --config {}; more in: {log}",
                        config_path.display()
                    ),
                )
            }
        })
        .collect()
}
