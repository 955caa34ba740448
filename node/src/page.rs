//! The admin API's status page (`GET /`): one server-rendered HTML page
//! for a person, refreshed by the browser every 2 s. No JavaScript; maud
//! escapes every value by construction (file names come from peers).
//!
//! It renders the [`NodeStatus`] that [`crate::metrics::keep_current`]
//! refreshes once a second (the struct `/status` serves as JSON), so a
//! page left open never queries an actor; only before the first snapshot
//! does it take one itself.

use std::time::{Duration, Instant};

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    Extension,
};
use fleetsync_actors::{
    status::{snapshot, ChangeInfo, FolderInfo, NodeStatus, PeerInfo, TransferInfo},
    NodeHandle,
};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::admin::human_bytes;

/// Seconds between the browser's reloads of the page.
const REFRESH_SECS: u32 = 2;

/// What the page needs besides the snapshot.
#[derive(Clone)]
pub struct PageState {
    pub cache: crate::metrics::Cache,
    /// When the admin API started (the node's uptime).
    pub started: Instant,
}

/// This node's facts that are not in [`NodeStatus`].
pub struct About {
    pub version: &'static str,
    pub uptime: Duration,
}

/// `GET /`: the page, with headers that keep a browser from running or
/// framing anything (the page has no script).
pub async fn page(State(node): State<NodeHandle>, Extension(p): Extension<PageState>) -> Response {
    let st = match p.cache.get() {
        Some(st) => st,
        None => std::sync::Arc::new(snapshot(&node).await),
    };
    let about = About {
        version: env!("CARGO_PKG_VERSION"),
        uptime: p.started.elapsed(),
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        render(&st, &about).into_string(),
    )
        .into_response()
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #e4e4e4;vertical-align:top}
th{background:#f0f0f0;font-weight:600}
.mono{font-family:ui-monospace,monospace;font-size:.92em;word-break:break-all}
.ok{color:#17803d}.bad{color:#b42318;font-weight:600}.warn{color:#b54708}.dim{color:#777}
.bar{width:14em;height:.9em;background:#e4e4e4;border-radius:3px;display:inline-block;vertical-align:middle}
.fill{height:100%;background:#2f7de1;border-radius:3px}
";

/// The whole page for `st`.
pub fn render(st: &NodeStatus, about: &About) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(REFRESH_SECS);
                title { "fleetsync " (st.short_id) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                (node_section(st, about))
                (folders_section(&st.folders))
                (peers_section(&st.peers))
                (transfers_section(&st.folders))
                (changes_section(&st.folders, &st.short_id))
            }
        }
    }
}

fn node_section(st: &NodeStatus, about: &About) -> Markup {
    let uptime = humantime::format_duration(Duration::from_secs(about.uptime.as_secs()));
    html! {
        h1 { "fleetsync node " span.mono { (st.short_id) } }
        table {
            tr { th { "id" } td.mono { (st.id) } }
            tr { th { "version" } td { (about.version) } }
            tr { th { "uptime" } td { (uptime.to_string()) } }
            tr { th { "health" } td {
                @if st.healthy { span.ok { "healthy" } }
                @else { span.bad { "UNHEALTHY" } " (an actor does not answer: run fleetsync doctor)" }
            } }
            tr { th { "listening" } td.mono { (st.listen.join(", ")) } }
        }
    }
}

fn folders_section(folders: &[FolderInfo]) -> Markup {
    html! {
        h2 { "Folders (" (folders.len()) ")" }
        table {
            tr { th { "folder" } th { "path" } th { "mode" } th { "files" } th { "size" } th { "sync" } th { "notes" } }
            @for f in folders {
                tr {
                    td.mono { (f.id) }
                    td.mono { (f.path) }
                    td { (f.mode) }
                    td { (f.files) }
                    td { (human_bytes(f.bytes)) }
                    td { (sync_cell(f)) }
                    td { (folder_notes(f)) }
                }
            }
        }
    }
}

/// In sync, or what it waits for.
fn sync_cell(f: &FolderInfo) -> Markup {
    html! {
        @if f.in_sync { span.ok { "in sync" } }
        @else if f.pending > 0 { span.warn { (f.pending) " pending" } }
        @else { span.warn { (f.state) } }
    }
}

/// Paused, held deletes, errors: what an operator must look at.
fn folder_notes(f: &FolderInfo) -> Markup {
    html! {
        @if f.paused { div.warn { "paused: fleetsync folder resume --folder " (f.id) } }
        @if f.deletes_held > 0 {
            div.warn { "holding " (f.deletes_held) " deletes from peers ("
                (f.deletes_held_files) " of " (f.deletes_held_of) " files)" }
        }
        @if let Some(e) = &f.error { div.bad { "error: " (e) } }
        @if let Some(e) = &f.last_error { div.dim { "last error: " (e) } }
        @if f.conflicts > 0 { div.dim { (f.conflicts) " conflicts resolved" } }
    }
}

/// The peer's clock against ours; past a second (what doctor warns
/// about) it is marked.
fn clock(p: &PeerInfo) -> Markup {
    match p.clock_offset_ms {
        None => html! { "–" },
        Some(ms) if ms.unsigned_abs() < 1000 => html! { (format!("{ms:+} ms")) },
        Some(ms) => html! { span.bad { (format!("{:+.1} s", ms as f64 / 1000.0)) } },
    }
}

fn peers_section(peers: &[PeerInfo]) -> Markup {
    let up = peers.iter().filter(|p| p.connected).count();
    html! {
        h2 { "Peers (" (up) " connected of " (peers.len()) ")" }
        @if peers.is_empty() { p.dim { "none known: add mesh.peers, or join with a ticket" } }
        @else { table {
            tr { th { "peer" } th { "id" } th { "source" } th { "address" } th { "rtt" } th { "clock" } th { "last seen" } th { "connected" } }
            @for p in peers {
                tr {
                    td.mono { (p.short_id) }
                    td.mono { (p.id) }
                    td { (p.source) }
                    td.mono { (peer_address(p)) }
                    td { @if let Some(ms) = p.rtt_ms { (format!("{ms:.1} ms")) } @else { "–" } }
                    td { (clock(p)) }
                    td { (last_seen(p)) }
                    td {
                        @if p.connected { span.ok { "yes" } }
                        @else {
                            span.bad { "no" }
                            @if let Some(e) = &p.last_error { " " span.dim { (e) } }
                        }
                    }
                }
            }
        } }
    }
}

/// The session's address while connected, else the addresses known.
fn peer_address(p: &PeerInfo) -> String {
    p.addr.clone().unwrap_or_else(|| p.addrs.join(", "))
}

fn last_seen(p: &PeerInfo) -> String {
    match (p.connected, p.last_seen_secs_ago) {
        (true, _) => "now".into(),
        (false, Some(s)) => format!("{} ago", humantime::format_duration(Duration::from_secs(s))),
        (false, None) => "never".into(),
    }
}

fn transfers_section(folders: &[FolderInfo]) -> Markup {
    let n: usize = folders.iter().map(|f| f.transfers.len()).sum();
    html! {
        h2 { "Transfers in flight (" (n) ")" }
        @if n == 0 { p.dim { "none" } }
        @else {
            table {
                tr { th { "folder" } th { "file" } th { "from" } th { "progress" } }
                @for f in folders { @for t in &f.transfers {
                    tr {
                        td.mono { (f.id) }
                        td.mono { (t.path) }
                        td.mono { (t.peer) }
                        td { (progress(t)) }
                    }
                } }
            }
        }
    }
}

/// Percent of `t` done, 0..=100 (an empty file counts as done).
pub fn percent_done(t: &TransferInfo) -> f64 {
    if t.bytes_total == 0 {
        return 100.0;
    }
    (t.bytes_done as f64 * 100.0 / t.bytes_total as f64).clamp(0.0, 100.0)
}

/// A bar as wide as the share done, and the bytes.
fn progress(t: &TransferInfo) -> Markup {
    let pct = percent_done(t);
    html! {
        span.bar { div.fill style=(format!("width:{pct:.1}%")) {} }
        " " (human_bytes(t.bytes_done)) " / " (human_bytes(t.bytes_total))
        " (" (format!("{pct:.0}")) "%)"
    }
}

fn changes_section(folders: &[FolderInfo], me: &str) -> Markup {
    let none = folders.iter().all(|f| f.recent_changes.is_empty());
    html! {
        h2 { "Recent changes" }
        @if none { p.dim { "none yet" } }
        @else { table {
            tr { th { "folder" } th { "file" } th { "change" } th { "made by" } th { "received from" } th { "modified" } }
            @for f in folders { @for c in &f.recent_changes {
                tr {
                    td.mono { (f.id) }
                    td.mono { (c.path) }
                    td { (change_kind(c)) }
                    td.mono { (c.modified_by) @if c.modified_by == me { " (this node)" } }
                    td.mono { @if let Some(p) = &c.received_from { (p) } @else { span.dim { "indexed here" } } }
                    td { (c.mtime.as_deref().unwrap_or("?")) }
                }
            } }
        } }
    }
}

fn change_kind(c: &ChangeInfo) -> String {
    if c.deleted {
        "deleted".into()
    } else {
        human_bytes(c.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn about() -> About {
        About {
            version: "9.9.9",
            uptime: Duration::from_secs(3725),
        }
    }

    fn status_with(folder: FolderInfo) -> NodeStatus {
        NodeStatus {
            id: "f".repeat(64),
            short_id: "ffffffff".into(),
            healthy: true,
            folders: vec![folder],
            ..Default::default()
        }
    }

    #[test]
    fn a_hostile_file_name_is_escaped_everywhere() {
        let evil = "<script>alert(1)</script>\"'&.txt";
        let folder = FolderInfo {
            id: "<b>id</b>".into(),
            transfers: vec![TransferInfo {
                path: evil.into(),
                peer: "<i>peer</i>".into(),
                bytes_done: 1,
                bytes_total: 2,
            }],
            recent_changes: vec![ChangeInfo {
                path: evil.into(),
                modified_by: "<img src=x>".into(),
                ..Default::default()
            }],
            last_error: Some("</td><script>".into()),
            ..Default::default()
        };
        let html = render(&status_with(folder), &about()).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            !html.contains("<b>id</b>") && !html.contains("<img"),
            "{html}"
        );
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;.txt"),
            "{html}"
        );
    }

    #[test]
    fn a_half_done_transfer_fills_half_its_bar() {
        let folder = FolderInfo {
            id: "shared".into(),
            transfers: vec![TransferInfo {
                path: "big.bin".into(),
                peer: "abcd".into(),
                bytes_done: 512 * 1024,
                bytes_total: 1024 * 1024,
            }],
            ..Default::default()
        };
        let html = render(&status_with(folder), &about()).into_string();
        assert!(html.contains(r#"style="width:50.0%""#), "{html}");
        assert!(html.contains("512.0 KiB / 1.0 MiB (50%)"), "{html}");
    }

    #[test]
    fn percent_done_is_bounded_and_an_empty_file_is_done() {
        let t = |done, total| TransferInfo {
            bytes_done: done,
            bytes_total: total,
            ..Default::default()
        };
        assert_eq!(percent_done(&t(0, 0)), 100.0);
        assert_eq!(percent_done(&t(0, 10)), 0.0);
        assert_eq!(percent_done(&t(25, 100)), 25.0);
        assert_eq!(percent_done(&t(20, 10)), 100.0, "a file that grew");
    }

    #[test]
    fn the_page_refreshes_itself_and_shows_the_node() {
        let html = render(&status_with(FolderInfo::default()), &about()).into_string();
        assert!(
            html.contains(r#"<meta http-equiv="refresh" content="2">"#),
            "{html}"
        );
        assert!(html.contains(&"f".repeat(64)), "{html}");
        assert!(
            html.contains("9.9.9") && html.contains("1h 2m 5s"),
            "{html}"
        );
        assert!(!html.contains("<script"), "no script at all: {html}");
    }
}
