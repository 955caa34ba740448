//! Local admin API, on loopback TCP (the config refuses anything else; the
//! `Host` must be that address) and on a Unix socket (mode 0660: the
//! node's user and group; see [`socket`]), with the same routes:
//!
//! | route                          | answer                                  |
//! |--------------------------------|-----------------------------------------|
//! | `GET /`                        | HTML status page for a person ([`crate::page`]) |
//! | `GET /status`                  | JSON [`NodeStatus`]                     |
//! | `GET /health`                  | 200 `ok` / 503 `unhealthy`              |
//! | `GET /metrics`                 | Prometheus text                         |
//! | `GET /history?folder=&path=`   | JSON list of history events             |
//! | `POST /folders/{id}/resume`    | JSON `{"folder","resumed","unpaused","still_held"}`: a paused folder syncs again; else apply the deletes the mass-delete guard holds |
//! | `POST /folders/{id}/pause`     | JSON `{"folder","changed"}`: stop applying and indexing (kept across restarts) |
//! | `POST /folders/{id}/rescan`    | JSON `{"folder","changed"}`: walk the folder now |
//! | `POST /folders/{id}/restore?path=&version=\|at=` | restore kept versions; JSON report |
//! | `GET /folders/{id}/versions?path=` | JSON list of kept versions, newest first (under `path` if given) |
//! | `POST /debug/fault?kind=&actor=&folder=&for_ms=` | inject a fault (`[debug] fault_injection` only) |
//! | `POST /retention/sweep`        | sweep every folder and run blob GC now; JSON report |
//! | `POST /reload`                 | reload the config (as SIGHUP); JSON `{applied, restart_needed, refused}` |
//!
//! Plus the plain-text rendering `fleetsync status` / `history` print.

use std::{collections::HashMap, fmt::Write as _, net::SocketAddr};

pub mod socket;

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use fleetsync_actors::{
    index::{HistoryEvent, Via},
    restore::{self, RestoreError},
    rt,
    status::{snapshot, NodeStatus},
    supervisor::{
        faults::{Fault, FaultError},
        Injection,
    },
    NodeHandle,
};
use fleetsync_mesh::model::ShortId;
use serde::Serialize;

/// `<data_dir>/admin.addr`: the address the running node's admin API is
/// bound to. `admin.listen` may use port 0 (tests, the demo: no port to
/// pick in advance, so none to lose to another process); the CLI then
/// reads the address from here.
pub const ADDR_FILE: &str = "admin.addr";

/// Every route of the admin API, served on the loopback address and the
/// Unix socket alike.
pub fn routes(
    node: NodeHandle,
    reloads: tokio::sync::mpsc::Sender<crate::reload::ReloadRequest>,
    metrics_cache: crate::metrics::Cache,
) -> Router {
    let page = crate::page::PageState {
        cache: metrics_cache.clone(),
        started: std::time::Instant::now(),
    };
    Router::new()
        .route("/", get(crate::page::page).layer(axum::Extension(page)))
        .route("/status", get(status))
        .route("/health", get(health))
        .route(
            "/metrics",
            get(metrics).layer(axum::Extension(metrics_cache)),
        )
        .route("/history", get(history))
        .route("/folders/{id}/resume", post(resume))
        .route("/folders/{id}/pause", post(pause))
        .route("/folders/{id}/rescan", post(rescan))
        .route("/folders/{id}/restore", post(restore_folder))
        .route("/folders/{id}/versions", get(versions))
        .route("/debug/fault", post(fault))
        .route("/retention/sweep", post(sweep))
        .route("/reload", post(move || reload(reloads.clone())))
        .with_state(node)
}

/// Bind `addr` and serve `app`; returns the task and the bound address.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "admin API cannot listen on {addr}: {e} (set admin.listen to a free 127.0.0.1 port, or port 0 for any)"
        )
    })?;
    let bound = listener.local_addr()?;
    // Only TCP needs the Host check: a browser cannot reach the socket.
    let app = app.layer(axum::middleware::from_fn_with_state(
        allowed_hosts(bound),
        check_host,
    ));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("admin API stopped: {e}");
        }
    });
    Ok((task, bound))
}

/// The `Host` headers a local client sends to the admin API bound at
/// `bound`: the address itself and the loopback names of its port.
fn allowed_hosts(bound: SocketAddr) -> std::sync::Arc<Vec<String>> {
    let port = bound.port();
    let mut hosts = vec![
        bound.to_string(),
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ];
    hosts.dedup();
    std::sync::Arc::new(hosts)
}

/// Refuse (421) a request whose `Host` is not this API's own loopback
/// address: a web page that rebinds a DNS name to 127.0.0.1 sends its own
/// name there, and must not read the status.
async fn check_host(
    State(allowed): State<std::sync::Arc<Vec<String>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    match host {
        Some(h) if allowed.iter().any(|a| a.eq_ignore_ascii_case(h)) => next.run(req).await,
        _ => {
            tracing::warn!(
                host = host.unwrap_or("(none)"),
                path = req.uri().path(),
                "admin API: refused a request for another host (DNS rebinding?)"
            );
            (
                StatusCode::MISDIRECTED_REQUEST,
                "Host must be this node's loopback admin address\n",
            )
                .into_response()
        }
    }
}

/// The address a running node recorded in `<data_dir>/admin.addr`.
pub fn read_addr_file(data_dir: &std::path::Path) -> std::io::Result<SocketAddr> {
    let file = data_dir.join(ADDR_FILE);
    std::fs::read_to_string(&file)?.trim().parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: not an address: {e}", file.display()),
        )
    })
}

/// Record the bound address in `<data_dir>/admin.addr` (atomically: a
/// reader sees the old file or the new one).
pub fn write_addr_file(data_dir: &std::path::Path, addr: SocketAddr) -> std::io::Result<()> {
    write_named_addr_file(data_dir, ADDR_FILE, addr)
}

/// Record `addr` in `<data_dir>/<name>` atomically (the admin API's and
/// the metrics listener's address files).
pub fn write_named_addr_file(
    data_dir: &std::path::Path,
    name: &str,
    addr: SocketAddr,
) -> std::io::Result<()> {
    let tmp = data_dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, data_dir.join(name))
}

async fn status(State(node): State<NodeHandle>) -> Json<NodeStatus> {
    Json(snapshot(&node).await)
}

#[derive(Serialize)]
struct Resumed {
    folder: String,
    /// Paths whose held deletes are now applied.
    resumed: u64,
    /// The folder was paused and now syncs again (its held deletes, if
    /// any, stay held: a second `resume` applies them).
    unpaused: bool,
    /// Deletes the guard still holds.
    still_held: u64,
}

#[derive(Serialize)]
struct FolderDone {
    folder: String,
    /// `pause`: it was not paused before; `rescan`: a walk was asked for.
    changed: bool,
}

/// `POST /folders/{id}/resume`: the deletes from peers the mass-delete
/// guard holds in the folder are applied.
async fn resume(State(node): State<NodeHandle>, Path(id): Path<String>) -> Response {
    // Resuming a paused folder only unpauses it: deletes held by the
    // guard were judged a possible accident and want a decision of their
    // own, not one an operator ending maintenance made in passing.
    match node.unpause(&id) {
        None => return no_folder(&id),
        Some(Err(e)) => return cannot(&id, "resume", &e),
        Some(Ok(true)) => {
            let still_held = held_deletes(&node, &id).await;
            return Json(Resumed {
                folder: id,
                resumed: 0,
                unpaused: true,
                still_held,
            })
            .into_response();
        }
        Some(Ok(false)) => {}
    }
    match node.resume_deletes(&id) {
        Some(resumed) => Json(Resumed {
            folder: id,
            resumed,
            unpaused: false,
            still_held: 0,
        })
        .into_response(),
        None => no_folder(&id),
    }
}

/// `POST /folders/{id}/pause`: see `Folder::is_paused`.
async fn pause(State(node): State<NodeHandle>, Path(id): Path<String>) -> Response {
    match node.pause(&id) {
        None => no_folder(&id),
        Some(Err(e)) => cannot(&id, "pause", &e),
        Some(Ok(changed)) => Json(FolderDone {
            folder: id,
            changed,
        })
        .into_response(),
    }
}

/// `POST /folders/{id}/rescan`: walk the folder now.
async fn rescan(State(node): State<NodeHandle>, Path(id): Path<String>) -> Response {
    if node.rescan(&id) {
        Json(FolderDone {
            folder: id,
            changed: true,
        })
        .into_response()
    } else {
        no_folder(&id)
    }
}

fn no_folder(id: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("no folder {id:?}\n")).into_response()
}

fn cannot(id: &str, what: &str, e: &std::io::Error) -> Response {
    let msg = format!(
        "cannot {what} folder {id:?}: {e} (the folder's .fleetsync/ must be writable by the node)\n"
    );
    (StatusCode::INTERNAL_SERVER_ERROR, msg).into_response()
}

/// Deletes the guard holds in folder `id` now.
async fn held_deletes(node: &NodeHandle, id: &str) -> u64 {
    let st = snapshot(node).await;
    st.folders
        .iter()
        .find(|f| f.id == id)
        .map_or(0, |f| f.deletes_held)
}

/// `POST /retention/sweep`: temp files, unused links and blob garbage
/// now rather than on retention's timer (an operator command; waits for
/// the GC run).
async fn sweep(State(node): State<NodeHandle>) -> Response {
    match node.sweep().await {
        Ok(report) => Json(report).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

/// `POST /reload`: the daemon reloads the config as on SIGHUP and says
/// what it applied; a config that does not load is `refused` (200: the
/// request itself was served).
async fn reload(reloads: tokio::sync::mpsc::Sender<crate::reload::ReloadRequest>) -> Response {
    #[derive(Serialize)]
    struct Outcome {
        #[serde(flatten)]
        report: crate::reload::ReloadReport,
        refused: Option<String>,
    }
    let outcome = match crate::reload::request(&reloads).await {
        Ok(report) => Outcome {
            report,
            refused: None,
        },
        Err(e) => Outcome {
            report: Default::default(),
            refused: Some(e),
        },
    };
    Json(outcome).into_response()
}

async fn health(State(node): State<NodeHandle>) -> Response {
    if node.healthy() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n").into_response()
    }
}

/// `GET /metrics`: the snapshot the daemon keeps current, rendered (a
/// scrape never waits on an actor; see [`crate::metrics`]).
async fn metrics(axum::Extension(cache): axum::Extension<crate::metrics::Cache>) -> Response {
    crate::metrics::serve::exposition(&cache)
}

/// `POST /debug/fault?kind=stall|panic&actor=hasher[&folder=ID][&for_ms=N]`,
/// or `kind=hang-fetch&for_ms=N`.
async fn fault(
    State(node): State<NodeHandle>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let injection = match injection_of(&q) {
        Ok(i) => i,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
    match node.inject(injection).await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(e @ FaultError::Disabled) => (StatusCode::FORBIDDEN, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    }
}

/// Default stall length when `for_ms` is not given.
const DEFAULT_STALL_MS: u64 = 60_000;

fn injection_of(q: &HashMap<String, String>) -> Result<Injection, String> {
    let kind = q.get("kind").map(String::as_str);
    let ms = match q.get("for_ms") {
        Some(v) => v.parse::<u64>().map_err(|e| format!("for_ms={v}: {e}"))?,
        None => DEFAULT_STALL_MS,
    };
    let fault = match kind {
        Some("stall") => Fault::Stall(std::time::Duration::from_millis(ms)),
        Some("panic") => Fault::Panic,
        Some("hang-fetch") => {
            return Ok(Injection::HangFetch(std::time::Duration::from_millis(ms)))
        }
        other => return Err(format!("kind={other:?}: use stall, panic or hang-fetch")),
    };
    let actor = q.get("actor").cloned().ok_or("need actor=NAME")?;
    Ok(Injection::Actor {
        kind: actor,
        folder: q.get("folder").cloned(),
        fault,
    })
}

#[derive(Serialize)]
struct HistoryRow {
    seq: u64,
    modified_by: String,
    mtime_ns: i64,
    hash: Option<String>,
    deleted: bool,
    size: u64,
    recorded_ns: i64,
    /// `recorded_ns` as RFC 3339 UTC (null if out of range).
    recorded: Option<String>,
    /// `mtime_ns` as RFC 3339 UTC (null if out of range).
    mtime: Option<String>,
    applied_from: Option<String>,
    note: String,
    /// Short id of the node this change came through, as proven (the
    /// session's endpoint id; this node for a local change; null for
    /// lines recorded before the index kept it). `modified_by` is only
    /// what the entry claims.
    via: Option<String>,
    /// The full endpoint id of the peer it was received from (null for a
    /// local change).
    received_from: Option<String>,
}

impl HistoryRow {
    fn new(e: HistoryEvent, me: &str) -> Self {
        let (via, received_from) = match e.via {
            Via::Local => (Some(me.to_string()), None),
            Via::Peer(id) => (
                Some(ShortId::from_node_id(&id).to_string()),
                Some(hex::encode(id)),
            ),
            Via::Unknown => (None, None),
        };
        HistoryRow {
            seq: e.seq,
            modified_by: e.modified_by.to_string(),
            mtime_ns: e.mtime_ns,
            hash: e.hash.map(hex::encode),
            deleted: e.deleted,
            size: e.size,
            recorded_ns: e.recorded_ns,
            recorded: rfc3339_ns(e.recorded_ns, humantime::format_rfc3339_nanos),
            mtime: rfc3339_ns(e.mtime_ns, humantime::format_rfc3339_nanos),
            applied_from: e.applied_from.map(|s| s.to_string()),
            note: e.note,
            via,
            received_from,
        }
    }
}

/// Nanoseconds since the epoch as RFC 3339 UTC in `format`'s precision;
/// None before 1970 (humantime cannot print it). A u64 of nanoseconds
/// ends in 2554, well inside what humantime prints.
fn rfc3339_ns(
    ns: i64,
    format: fn(std::time::SystemTime) -> humantime::Rfc3339Timestamp,
) -> Option<String> {
    let ns = u64::try_from(ns).ok()?;
    Some(format(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns)).to_string())
}

async fn history(
    State(node): State<NodeHandle>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (Some(folder), Some(path)) = (q.get("folder").cloned(), q.get("path").cloned()) else {
        return (StatusCode::BAD_REQUEST, "need ?folder=ID&path=PATH\n").into_response();
    };
    if !node.folders.contains(&folder) {
        return (StatusCode::NOT_FOUND, format!("no folder {folder:?}\n")).into_response();
    }
    let index = node.index.clone();
    let me = node.mesh.short_id().to_string();
    let rows = rt::blocking(move || index.history(&folder, &path)).await;
    match rows {
        Ok(Ok(rows)) => Json(
            rows.into_iter()
                .map(|e| HistoryRow::new(e, &me))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// `POST /folders/{id}/restore?path=P[&version=VID | &at=TIME]`: write kept
/// versions back (see `fleetsync_actors::restore`); the JSON report. 404
/// for an unknown folder or nothing kept under the path, 400 for bad
/// arguments, 409 when the folder cannot take a restore.
async fn restore_folder(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(folder) = node.folders.get(&id) else {
        return (StatusCode::NOT_FOUND, format!("no folder {id:?}\n")).into_response();
    };
    let Some(path) = q.get("path").cloned() else {
        return (
            StatusCode::BAD_REQUEST,
            "need ?path=PATH (a file or a directory; \".\" for the whole folder)\n",
        )
            .into_response();
    };
    let arg = |k: &str| q.get(k).map(String::as_str);
    let when =
        match crate::restore::when_of(arg("version"), arg("at"), std::time::SystemTime::now()) {
            Ok(w) => w,
            Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        };
    let req = restore::Request { path, when };
    match rt::blocking(move || restore::restore(&folder, &req)).await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e @ RestoreError::Choose(_))) => {
            (StatusCode::NOT_FOUND, format!("{e}\n")).into_response()
        }
        Ok(Err(e)) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The kept versions of a folder, newest first; `?path=` limits them to
/// a file or everything under a directory.
async fn versions(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(folder) = node.folders.get(&id) else {
        return (StatusCode::NOT_FOUND, format!("no folder {id:?}\n")).into_response();
    };
    // Listing reads each version's metadata from its file.
    match rt::blocking(move || folder.versions.list(q.get("path").map(String::as_str))).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// `fleetsync versions`: one line per kept version, in columns.
pub fn render_versions(v: &serde_json::Value) -> String {
    let rows = v.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return "no kept versions\n".to_string();
    }
    let cells = rows
        .iter()
        .map(|r| {
            let ms = r["kept_at_ms"].as_u64().unwrap_or(0);
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
            let reason = match r["reason"].as_str().unwrap_or("?") {
                "overwrite" => "overwritten",
                "delete" => "deleted",
                "local" => "edited",
                "restore" => "restored over",
                other => other,
            };
            vec![
                humantime::format_rfc3339_seconds(when).to_string(),
                r["path"].as_str().unwrap_or("?").to_string(),
                human_bytes(r["size"].as_u64().unwrap_or(0)),
                format!("by {}", r["modified_by"].as_str().unwrap_or("?")),
                format!("{reason} by {}", r["replaced_by"].as_str().unwrap_or("?")),
                r["id"].as_str().unwrap_or("?").to_string(),
            ]
        })
        .collect();
    columns(cells, &[2], "")
}

/// Everything but unreserved characters and `/` is escaped (a path stays
/// readable in the admin API's access log).
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// A folder id or path as a URL path segment or query value.
pub fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// `1.5 MiB` (binary units; plain bytes below 1 KiB).
pub(crate) fn human_bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

/// Rows as aligned columns without borders (comfy-table), each line
/// indented by `indent` and without trailing blanks; `right`: the columns
/// aligned right (numbers).
fn columns(rows: Vec<Vec<String>>, right: &[usize], indent: &str) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.add_rows(rows);
    for (i, c) in t.column_iter_mut().enumerate() {
        // Two blanks between columns, none before the first.
        c.set_padding((0, 2));
        if right.contains(&i) {
            c.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    let mut o = String::new();
    for line in t.lines() {
        let line = line.trim_end();
        if !line.is_empty() {
            let _ = writeln!(o, "{indent}{line}");
        }
    }
    o
}

/// The status line of a folder whose deletes from peers are held, with
/// the commands to go on (`config`: the file the CLI was given).
fn held_line(f: &serde_json::Value, config: &str) -> Option<String> {
    let held = f["deletes_held"].as_u64().filter(|n| *n > 0)?;
    let id = f["id"].as_str().unwrap_or("?");
    let files = f["deletes_held_files"].as_u64().unwrap_or(0);
    let of = f["deletes_held_of"].as_u64().unwrap_or(0);
    let pct = (files * 100).checked_div(of).unwrap_or(0);
    Some(format!(
        "folder {id}: holding {held} deletes from peers ({files} of its {of} files, {pct}%); \
         to apply them run: fleetsync folder resume --config {config} --folder {id}; \
         to undo on the fleet: fleetsync restore --config {config} --folder {id} PATH"
    ))
}

/// `fleetsync status` text; `config` is the config file named in the
/// commands it suggests.
pub fn render_status(v: &serde_json::Value, config: &str) -> String {
    let mut o = String::new();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let u = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let _ = writeln!(
        o,
        "node {} ({}){}",
        s(&v["short_id"]),
        s(&v["id"]),
        if v["healthy"].as_bool() == Some(false) {
            "  UNHEALTHY: see the actors below"
        } else {
            ""
        }
    );
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    let up = peers
        .iter()
        .filter(|p| p["connected"].as_bool() == Some(true))
        .count();
    let _ = writeln!(o, "peers: {up} connected of {}", peers.len());
    o.push_str(&columns(peers.iter().map(peer_cells).collect(), &[4], "  "));
    render_actors(&mut o, v);
    let folders = v["folders"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(o, "folders: {}", folders.len());
    for f in &folders {
        let sync = if f["in_sync"].as_bool() == Some(true) {
            "in sync".to_string()
        } else if u(&f["pending"]) > 0 {
            format!("{} pending", u(&f["pending"]))
        } else {
            s(&f["state"])
        };
        let _ = writeln!(
            o,
            "  {} [{}] {}  {} files, {}  {}",
            s(&f["id"]),
            s(&f["mode"]),
            s(&f["path"]),
            u(&f["files"]),
            human_bytes(u(&f["bytes"])),
            sync
        );
        if let Some(e) = f["error"].as_str() {
            let _ = writeln!(o, "    ERROR: {e}");
        }
        if f["paused"].as_bool() == Some(true) {
            let id = s(&f["id"]);
            let _ = writeln!(
                o,
                "    PAUSED: nothing is applied or indexed; to continue run: fleetsync folder resume --config {config} --folder {id}"
            );
        }
        if let Some(line) = held_line(f, config) {
            let _ = writeln!(o, "    HELD: {line}");
        }
        for t in f["transfers"].as_array().cloned().unwrap_or_default() {
            let done = u(&t["bytes_done"]);
            let total = u(&t["bytes_total"]).max(1);
            let _ = writeln!(
                o,
                "    ↓ {} from {}: {} / {} ({:.0}%)",
                s(&t["path"]),
                s(&t["peer"]),
                human_bytes(done),
                human_bytes(total),
                done as f64 * 100.0 / total as f64
            );
        }
        if u(&f["versions_count"]) > 0 {
            let _ = writeln!(
                o,
                "    versions kept: {} ({})",
                u(&f["versions_count"]),
                human_bytes(u(&f["versions_bytes"]))
            );
        }
        if u(&f["conflicts"]) > 0 {
            let _ = writeln!(o, "    conflicts resolved: {}", u(&f["conflicts"]));
        }
        if let Some(at) = f["last_sweep"].as_str() {
            let _ = writeln!(
                o,
                "    last sweep {at}: {} stale files removed ({}) since start",
                u(&f["swept_files"]),
                human_bytes(u(&f["swept_bytes"]))
            );
        }
        if u(&f["rejected"]) > 0 {
            let _ = writeln!(
                o,
                "    rejected from peers: {} (see the log)",
                u(&f["rejected"])
            );
        }
        if u(&f["deferred"]) > 0 {
            let _ = writeln!(
                o,
                "    deferred by max_pending/max_files: {} (offered again when there is room)",
                u(&f["deferred"])
            );
        }
        if let Some(e) = f["last_error"].as_str() {
            let _ = writeln!(o, "    last error: {e}");
        }
    }
    o
}

/// A peer's status line as columns: connected, id, addresses, source,
/// rtt, protocol version, and when down, last seen and its error.
fn peer_cells(p: &serde_json::Value) -> Vec<String> {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let c = p["connected"].as_bool() == Some(true);
    let addrs: Vec<String> = p["addrs"]
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    let mut down = Vec::new();
    if !c {
        if let Some(ago) = p["last_seen_secs_ago"].as_u64() {
            down.push(format!("seen {ago} s ago"));
        }
        if let Some(e) = p["last_error"].as_str() {
            down.push(format!("({e})"));
        }
    }
    vec![
        format!("{} {}", if c { "●" } else { "○" }, s(&p["short_id"])),
        addrs.join(","),
        format!("({})", s(&p["source"])),
        [
            p["rtt_ms"]
                .as_f64()
                .map_or(String::new(), |r| format!("rtt {r:.1} ms")),
            clock_text(p["clock_offset_ms"].as_i64()),
        ]
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("  "),
        p["version"]
            .as_u64()
            .map_or(String::new(), |v| format!("v{v}")),
        down.join("  "),
    ]
}

/// The peer's clock offset, shown only past a second (what doctor warns
/// about): within it, the line stays short.
fn clock_text(offset_ms: Option<i64>) -> String {
    match offset_ms {
        Some(ms) if ms.unsigned_abs() >= 1000 => format!("clock {:+.1} s", ms as f64 / 1000.0),
        _ => String::new(),
    }
}

/// One line per actor: health, restarts, work in flight and its age.
fn render_actors(o: &mut String, v: &serde_json::Value) {
    let actors = v["actors"].as_array().cloned().unwrap_or_default();
    let healthy = actors
        .iter()
        .filter(|a| a["healthy"].as_bool() == Some(true))
        .count();
    let _ = writeln!(o, "actors: {healthy} healthy of {}", actors.len());
    o.push_str(&columns(
        actors.iter().map(actor_cells).collect(),
        &[],
        "  ",
    ));
}

fn actor_cells(a: &serde_json::Value) -> Vec<String> {
    let ok = a["healthy"].as_bool() == Some(true);
    let restarts = a["restarts"].as_u64().unwrap_or(0);
    let busy = a["busy"].as_u64().unwrap_or(0);
    let progress = a["last_progress_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
    vec![
        format!(
            "{} {}",
            if ok { "●" } else { "✗" },
            a["name"].as_str().unwrap_or("?")
        ),
        if busy > 0 {
            format!("working ({busy}), last progress {progress:.1} s ago")
        } else {
            String::new()
        },
        if restarts > 0 {
            format!("restarted {restarts}×")
        } else {
            String::new()
        },
        if ok { "" } else { "NOT HEALTHY" }.to_string(),
    ]
}

/// `fleetsync history` text: one line per event, in columns.
pub fn render_history(v: &serde_json::Value) -> String {
    let rows = v.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return "no history for this path\n".to_string();
    }
    let cells = rows
        .iter()
        .map(|r| {
            let when = r["recorded_ns"]
                .as_i64()
                .and_then(|ns| rfc3339_ns(ns, humantime::format_rfc3339_seconds))
                .unwrap_or_else(|| "?".to_string());
            let what = if r["deleted"].as_bool() == Some(true) {
                "deleted".to_string()
            } else {
                format!(
                    "{} ({} bytes)",
                    r["hash"]
                        .as_str()
                        .map(|h| &h[..h.len().min(16)])
                        .unwrap_or("-"),
                    r["size"].as_u64().unwrap_or(0)
                )
            };
            // `by` is what the entry claims; `via` the node it came
            // through, which the handshake proved.
            vec![
                "seq".to_string(),
                r["seq"].as_u64().unwrap_or(0).to_string(),
                when,
                format!("by {}", r["modified_by"].as_str().unwrap_or("?")),
                format!("via {}", r["via"].as_str().unwrap_or("?")),
                what,
                r["note"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    columns(cells, &[1], "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_text_shows_rfc3339_times() {
        let v = serde_json::json!([{
            "seq": 7,
            "recorded_ns": 1_796_029_200_123_456_789_i64,
            "modified_by": "abc",
            "via": "abc",
            "deleted": true,
            "note": "local",
        }]);
        let text = render_history(&v);
        assert!(text.contains("2026-11-30T09:00:00Z"), "{text}");
        assert!(!text.contains("t=1796029200"), "{text}");
    }

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(8 << 20), "8.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn history_and_versions_are_aligned_columns() {
        let v = serde_json::json!([
            {"seq": 7, "recorded_ns": 1_796_029_200_000_000_000_i64, "modified_by": "abc",
             "via": "abc", "hash": "00112233445566778899", "size": 5, "note": "local"},
            {"seq": 12345, "recorded_ns": 1_796_029_201_000_000_000_i64, "modified_by": "defghi",
             "via": "x", "deleted": true, "note": ""},
        ]);
        let text = render_history(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("seq      7  2026-11-30T09:00:00Z  by abc     via abc"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("seq  12345  2026-11-30T09:00:01Z  by defghi  via x"),
            "{text}"
        );
        assert!(
            lines[0].ends_with("0011223344556677 (5 bytes)  local"),
            "{text}"
        );
        assert_eq!(lines[1].trim_end(), lines[1]);

        let v = serde_json::json!([
            {"kept_at_ms": 1_796_029_200_000_u64, "path": "a.bin", "size": 200_000,
             "modified_by": "aaa", "reason": "overwrite", "replaced_by": "bbb", "id": "v1"},
            {"kept_at_ms": 1_796_029_200_000_u64, "path": "dir/long-name.txt", "size": 3,
             "modified_by": "aaa", "reason": "delete", "replaced_by": "bbb", "id": "v2"},
        ]);
        let text = render_versions(&v);
        let col = |l: &str, word: &str| l.find(word).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(col(lines[0], "by aaa"), col(lines[1], "by aaa"), "{text}");
        assert!(
            lines[0].contains("195.3 KiB") && lines[1].contains("  3 B"),
            "{text}"
        );
        assert!(
            lines[1].contains("deleted by bbb") && lines[1].ends_with("v2"),
            "{text}"
        );
    }

    #[test]
    fn status_peers_line_up() {
        let v = serde_json::json!({
            "short_id": "me", "id": "me", "healthy": true,
            "peers": [
                {"short_id": "aaaaaaaaaa", "connected": true, "addrs": ["127.0.0.1:1"],
                 "source": "config", "rtt_ms": 0.4, "version": 3, "clock_offset_ms": 40},
                {"short_id": "cccccccccc", "connected": true, "addrs": ["127.0.0.1:2"],
                 "source": "config", "rtt_ms": 0.5, "version": 3, "clock_offset_ms": -86_400_000},
                {"short_id": "bbbbbbbbbb", "connected": false, "addrs": ["10.0.0.2:40000"],
                 "source": "mdns", "last_seen_secs_ago": 5, "last_error": "timed out"},
            ],
            "actors": [], "folders": [],
        });
        let text = render_status(&v, "/etc/fleetsync/fleetsync.toml");
        let a = text.lines().find(|l| l.contains("aaaaaaaaaa")).unwrap();
        let b = text.lines().find(|l| l.contains("bbbbbbbbbb")).unwrap();
        assert!(a.starts_with("  ● aaaaaaaaaa  127.0.0.1:1 "), "{text}");
        assert_eq!(a.find("(config)"), b.find("(mdns)"), "{text}");
        assert!(a.contains("rtt 0.4 ms"), "{text}");
        assert!(
            !a.contains("clock"),
            "within a second it is not shown: {text}"
        );
        let c = text.lines().find(|l| l.contains("cccccccccc")).unwrap();
        assert!(c.contains("rtt 0.5 ms  clock -86400.0 s"), "{text}");
        assert_eq!(a.find("v3"), c.find("v3"), "{text}");
        assert!(b.ends_with("seen 5 s ago  (timed out)"), "{text}");
        assert!(text.contains("peers: 2 connected of 3"), "{text}");
    }

    #[test]
    fn rfc3339_of_nanoseconds() {
        assert_eq!(
            rfc3339_ns(1_500_000_000, humantime::format_rfc3339_nanos).as_deref(),
            Some("1970-01-01T00:00:01.500000000Z")
        );
        assert_eq!(rfc3339_ns(-1, humantime::format_rfc3339_seconds), None);
    }
}
