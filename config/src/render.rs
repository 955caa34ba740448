//! The config file `fleetsync init` writes.

use std::fmt::Write as _;
use std::path::Path;

use crate::validate::{
    DEFAULT_LOG_LEVEL, DEFAULT_POLL_INTERVAL, DEFAULT_RESCAN, DEFAULT_SETTLE, DEFAULT_TOMBSTONE_TTL,
};
use crate::{
    FolderMode, InitParams, LogFormat, WatchMode, DEFAULT_MAX_PEERS, DEFAULT_MAX_RESTARTS,
    DEFAULT_PING_INTERVAL, DEFAULT_RESTART_WINDOW, DEFAULT_STALL_TIMEOUT,
    DEFAULT_TRANSFER_STALL_TIMEOUT,
};

/// A TOML string literal. Going through `toml` gets escaping right for
/// quotes, backslashes (Windows paths) and control characters.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Non-UTF-8 paths cannot be written to TOML; lossy is the best a text
/// file can do, and validation will then point at the mangled path.
fn qp(p: &Path) -> String {
    q(&p.to_string_lossy())
}

fn dur(d: std::time::Duration) -> String {
    q(&humantime::format_duration(d).to_string())
}

/// Text of a fresh, fully commented config file. Every key appears, either
/// set (to the given value or its default) or commented out, so the file
/// doubles as documentation. Parsing it yields the given values.
pub fn render_init_config(p: &InitParams) -> String {
    let mut s = String::new();
    // `write!` to a String cannot fail.
    let w = &mut s;
    let _ = write!(
        w,
        r#"# fleetsync configuration, written by `fleetsync init`.
#
# Precedence: command-line flags > FLEETSYNC_* environment variables > this file > defaults.
# Relative paths in this file are resolved against the directory of this file.
# This file holds the fleet secret: keep it readable by the fleetsync user only (chmod 600).

# Node identity, index and blob store. Must not be inside a synced folder.
data_dir = {data_dir}

[mesh]
# QUIC (UDP) address peers connect to.
listen = {mesh_listen}
# Shared by every node of the fleet: 64 hex chars (32 bytes).
# Instead of inline, it can live in its own file (whitespace is trimmed):
# fleet_secret_file = "fleet.secret"
fleet_secret = {secret}
# Static peers: "<64-hex node id>@<ip>:<port>" or "<64-hex node id>@<host name>:<port>"
# (names are resolved before every connection attempt).
"#,
        data_dir = qp(&p.data_dir),
        mesh_listen = q(&p.mesh_listen.to_string()),
        secret = q(&p.fleet_secret.to_hex()),
    );
    if p.peers.is_empty() {
        let _ = writeln!(w, "peers = []");
    } else {
        let _ = writeln!(w, "peers = [");
        for peer in &p.peers {
            let _ = writeln!(w, "    {},", q(&peer.to_string()));
        }
        let _ = writeln!(w, "]");
    }
    if !p.ticket_peers.is_empty() {
        let _ = writeln!(w, "# From the join ticket (dialed like peers).");
        let _ = writeln!(w, "ticket_peers = [");
        for peer in &p.ticket_peers {
            let _ = writeln!(w, "    {},", q(&peer.to_string()));
        }
        let _ = writeln!(w, "]");
    }
    let _ = write!(
        w,
        r#"# Find fleet members on the local network via mDNS.
mdns = {mdns}
# Only talk to these node ids (64 hex). Absent = any node that knows the fleet secret.
# allow = ["<64-hex node id>"]
# Refuse these nodes although they hold the fleet secret (revoked members).
# deny = ["<64-hex node id>"]
# A transfer receiving no verified bytes this long moves to another peer (1s to 1h).
transfer_stall_timeout = {transfer_stall}
# Learn the other members from the connected ones (one bootstrap peer is enough).
peer_exchange = true
# Live sessions past which peers learned by exchange are no longer dialed (1 to 1024).
max_peers = {max_peers}

[admin]
# Local HTTP admin API. Unauthenticated, so it must be a loopback address.
listen = {admin_listen}
# The same API on a Unix socket (mode 0660, the node's group), for members of
# that group without reading this file: default $RUNTIME_DIRECTORY/admin.sock
# under systemd, else <data_dir>/admin.sock; "off" for none.
# socket = "/run/fleetsync/admin.sock"

[log]
# tracing filter directive, e.g. "info" or "info,fleetsync=debug".
level = {level}
# {formats}
format = {format}

[supervisor]
# How often each internal actor is pinged (at most 1m).
ping_interval = {ping}
# An actor with work pending and no progress (or no answer) this long is replaced.
# At least 2 x ping_interval, at most 1h.
stall_timeout = {stall}
# More restarts than this within restart_window (at least stall_timeout):
# the node exits with code 70 for its service manager to restart it (1 to 1000).
max_restarts = {max_restarts}
restart_window = {window}

[debug]
# Allow `fleetsync debug stall|panic|hang-fetch` (tests and fault drills only).
fault_injection = false
"#,
        mdns = p.mdns,
        transfer_stall = dur(DEFAULT_TRANSFER_STALL_TIMEOUT),
        max_peers = DEFAULT_MAX_PEERS,
        ping = dur(DEFAULT_PING_INTERVAL),
        stall = dur(DEFAULT_STALL_TIMEOUT),
        max_restarts = DEFAULT_MAX_RESTARTS,
        window = dur(DEFAULT_RESTART_WINDOW),
        admin_listen = q(&p.admin_listen.to_string()),
        level = q(DEFAULT_LOG_LEVEL),
        formats = alternatives(LogFormat::ALL.iter().map(|f| f.as_str())),
        format = q(LogFormat::Human.as_str()),
    );

    if p.folders.is_empty() {
        let _ = write!(
            w,
            "\n# No folders: this node only relays. Add one block per folder:\n{}",
            folder_block("# ", "shared", Path::new("/srv/shared"))
        );
    }
    for (id, path) in &p.folders {
        let _ = write!(w, "\n{}", folder_block("", id, path));
    }
    s
}

/// One `[[folders]]` block; `c` is a comment prefix so the same text serves
/// as the commented-out example.
fn folder_block(c: &str, id: &str, path: &Path) -> String {
    let (id, path) = (q(id), qp(path));
    format!(
        r#"{c}[[folders]]
{c}# Same id on every node that shares this folder: 1-64 chars of A-Z a-z 0-9 . _ -
{c}id = {id}
{c}path = {path}
{c}# {modes}
{c}mode = {mode}
{c}# Quiet time after a change before it is synced (at most 1h); with watch = "notify"
{c}# a file closed after writing waits 10 ms instead, one moved in not at all.
{c}settle = {settle}
{c}# Full rescan, a safety net for missed change events (at least 1s).
{c}rescan = {rescan}
{c}# {watches}; "poll" is for file systems without change events.
{c}watch = {watch}
{c}# Scan interval when watch = "poll".
{c}poll_interval = {poll}
{c}# Remote changes one peer may have waiting here; past it, its further ones wait.
{c}max_pending = {max_pending}
{c}# Paths this folder may hold; past it, new remote paths wait (status: folder full).
{c}max_files = {max_files}
{c}# Space a fetch must leave free on this folder's and data_dir's file systems,
{c}# beyond the file's size: a size ("1GiB", "500MB") or a share ("5%").
{c}# Default: the smaller of 1GiB and 5%.
{c}# min_free = "1GiB"
{c}# Permission bits received files never get (only the executable bit is synced).
{c}umask = "022"
{c}# Deletes from peers in one burst that would remove more than this share of
{c}# a folder of 100+ files are held until: fleetsync folder resume (1 = off).
{c}max_delete_fraction = 0.5
{c}# How long deletions are remembered (at least 1s); longer than any node stays offline.
{c}tombstone_ttl = {tombstone_ttl}
{c}# What peers overwrite or delete is kept under .fleetsync/versions/ (zstd)
{c}# for `keep`, oldest first past `max_bytes`; versions = "off" keeps nothing.
{c}# fleetsync versions / fleetsync restore list and bring them back.
{c}# local = true also keeps what this node's own user deletes or replaces.
{c}versions = {{ keep = "30d", max_bytes = "1GiB", local = false }}
"#,
        modes = alternatives(FolderMode::ALL.iter().map(|m| m.as_str())),
        mode = q(FolderMode::SendReceive.as_str()),
        settle = dur(DEFAULT_SETTLE),
        rescan = dur(DEFAULT_RESCAN),
        watches = alternatives(WatchMode::ALL.iter().map(|m| m.as_str())),
        watch = q(WatchMode::Notify.as_str()),
        poll = dur(DEFAULT_POLL_INTERVAL),
        max_pending = crate::DEFAULT_MAX_PENDING,
        max_files = crate::DEFAULT_MAX_FILES,
        tombstone_ttl = dur(DEFAULT_TOMBSTONE_TTL),
    )
}

fn alternatives<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let values: Vec<String> = values.map(|v| format!("\"{v}\"")).collect();
    match values.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => values.join(""),
    }
}
