//! `fleetsync status --watch`: the running node's status again every
//! `--interval`, with one progress bar per transfer in flight (indicatif)
//! under the node and folder summary lines. Rate and ETA come from two
//! successive snapshots ([`speed`]). When stdout is not a terminal it
//! prints plain blocks instead (no escape codes), for logs and scripts.
//! Ctrl-C (SIGINT) ends it with exit code 0; `--count N` after N
//! snapshots.

use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write as _},
    sync::Arc,
    time::{Duration, Instant},
};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;

use crate::admin::human_bytes;

/// How to watch.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Time between snapshots.
    pub interval: Duration,
    /// Stop after this many snapshots (None: until Ctrl-C).
    pub count: Option<u64>,
}

/// Fetches the `/status` JSON (the CLI's admin API client).
pub type Fetch = Arc<dyn Fn() -> anyhow::Result<String> + Send + Sync>;

/// The part of `/status` the watch shows.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct View {
    pub short_id: String,
    pub healthy: bool,
    pub peers: Vec<PeerView>,
    pub folders: Vec<FolderView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PeerView {
    pub connected: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FolderView {
    pub id: String,
    pub state: String,
    pub files: u64,
    pub bytes: u64,
    pub in_sync: bool,
    pub pending: u64,
    pub paused: bool,
    pub deletes_held: u64,
    pub error: Option<String>,
    pub transfers: Vec<TransferView>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct TransferView {
    pub path: String,
    pub peer: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// A transfer's rate and time left, from two snapshots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speed {
    /// Bytes per second (None: first sight, or the transfer restarted).
    pub rate: Option<f64>,
    /// None while the rate is unknown or zero.
    pub eta: Option<Duration>,
}

/// Rate and ETA of a transfer now at `done` of `total` bytes that was at
/// `prev` bytes `elapsed` ago (`prev` None: first seen now). A transfer
/// that went backwards started over: no rate until the next snapshot.
pub fn speed(prev: Option<u64>, done: u64, total: u64, elapsed: Duration) -> Speed {
    let secs = elapsed.as_secs_f64();
    let rate = prev
        .filter(|p| done >= *p && secs > 0.0)
        .map(|p| (done - p) as f64 / secs);
    let left = total.saturating_sub(done);
    let eta = match rate {
        _ if left == 0 => Some(Duration::ZERO),
        Some(r) if r > 0.0 => Some(Duration::from_secs((left as f64 / r).ceil() as u64)),
        _ => None,
    };
    Speed { rate, eta }
}

/// `folder/path from peer`: which transfer a line or bar is.
pub fn transfer_label(folder: &str, t: &TransferView) -> String {
    format!("{folder}/{} from {}", t.path, t.peer)
}

/// `done / total (pct%), rate, ETA`: how far it is.
pub fn transfer_figures(t: &TransferView, s: Speed) -> String {
    let pct = if t.bytes_total == 0 {
        100.0
    } else {
        (t.bytes_done as f64 * 100.0 / t.bytes_total as f64).min(100.0)
    };
    let rate = s.rate.map_or("–".to_string(), |r| {
        format!("{}/s", human_bytes(r as u64))
    });
    let eta = s.eta.map_or("–".to_string(), |d| {
        humantime::format_duration(d).to_string()
    });
    format!(
        "{} / {} ({pct:.0}%), {rate}, ETA {eta}",
        human_bytes(t.bytes_done),
        human_bytes(t.bytes_total)
    )
}

/// The line a transfer renders to in the plain output.
pub fn transfer_line(folder: &str, t: &TransferView, s: Speed) -> String {
    format!(
        "  ↓ {}: {}",
        transfer_label(folder, t),
        transfer_figures(t, s)
    )
}

/// The node line and one line per folder.
pub fn summary_lines(v: &View) -> Vec<String> {
    let up = v.peers.iter().filter(|p| p.connected).count();
    let mut lines = vec![format!(
        "node {}: {}, {up} of {} peers connected",
        v.short_id,
        if v.healthy { "healthy" } else { "UNHEALTHY" },
        v.peers.len()
    )];
    lines.extend(v.folders.iter().map(folder_line));
    lines
}

fn folder_line(f: &FolderView) -> String {
    let sync = if f.in_sync {
        "in sync".to_string()
    } else if f.pending > 0 {
        format!("{} pending", f.pending)
    } else {
        f.state.clone()
    };
    let mut line = format!(
        "folder {}: {} files, {}, {sync}",
        f.id,
        f.files,
        human_bytes(f.bytes)
    );
    if f.paused {
        line.push_str(", PAUSED");
    }
    if f.deletes_held > 0 {
        line.push_str(&format!(", {} deletes held", f.deletes_held));
    }
    if let Some(e) = &f.error {
        line.push_str(&format!(", ERROR: {e}"));
    }
    line
}

/// Which transfer: folder, path, peer.
type Key = (String, String, String);

/// The bytes each transfer had at the last snapshot, and when.
#[derive(Default)]
struct Tracker {
    seen: HashMap<Key, u64>,
    at: Option<Instant>,
}

impl Tracker {
    /// Every transfer of `v` with its speed; forgets transfers that ended.
    fn update(&mut self, v: &View, now: Instant) -> Vec<(Key, TransferView, Speed)> {
        let elapsed = self.at.map_or(Duration::ZERO, |t| now - t);
        let mut out = Vec::new();
        let mut seen = HashMap::new();
        for f in &v.folders {
            for t in &f.transfers {
                let key = (f.id.clone(), t.path.clone(), t.peer.clone());
                let prev = self.seen.get(&key).copied();
                let s = speed(prev, t.bytes_done, t.bytes_total, elapsed);
                seen.insert(key.clone(), t.bytes_done);
                out.push((key, t.clone(), s));
            }
        }
        self.seen = seen;
        self.at = Some(now);
        out
    }
}

/// Where snapshots go: bars on a terminal, plain blocks elsewhere.
enum Output {
    Bars(Bars),
    Plain,
}

impl Output {
    fn show(&mut self, v: &View, transfers: &[(Key, TransferView, Speed)]) {
        match self {
            Output::Bars(b) => b.show(v, transfers),
            Output::Plain => print_block(v, transfers),
        }
    }

    /// Leave the last frame on the screen (dropped bars would clear it).
    fn finish(&mut self) {
        if let Output::Bars(b) = self {
            for bar in b.lines.iter().chain(b.bars.values()) {
                bar.abandon();
            }
        }
    }

    fn problem(&mut self, msg: &str) {
        match self {
            Output::Bars(b) => b.show_lines(&[msg.to_string()], &[]),
            Output::Plain => print_lines(&[format!("-- {}", now_rfc3339()), msg.to_string()]),
        }
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// One snapshot as plain text: a `--` header with the time, the summary,
/// the transfers.
fn print_block(v: &View, transfers: &[(Key, TransferView, Speed)]) {
    let mut lines = vec![format!("-- {}", now_rfc3339())];
    lines.extend(summary_lines(v));
    lines.extend(
        transfers
            .iter()
            .map(|((folder, _, _), t, s)| transfer_line(folder, t, *s)),
    );
    print_lines(&lines);
}

fn print_lines(lines: &[String]) {
    let mut out = std::io::stdout().lock();
    for l in lines {
        // A closed pipe (`| head`) ends the output, not the watch's
        // exit code.
        if writeln!(out, "{l}").is_err() {
            return;
        }
    }
    out.flush().ok();
}

/// The terminal view: summary lines on top, one bar per transfer below.
struct Bars {
    multi: MultiProgress,
    lines: Vec<ProgressBar>,
    bars: HashMap<Key, ProgressBar>,
}

impl Bars {
    fn new() -> Self {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            lines: Vec::new(),
            bars: HashMap::new(),
        }
    }

    fn show(&mut self, v: &View, transfers: &[(Key, TransferView, Speed)]) {
        self.show_lines(&summary_lines(v), transfers);
    }

    fn show_lines(&mut self, text: &[String], transfers: &[(Key, TransferView, Speed)]) {
        self.set_lines(text);
        self.bars.retain(|k, bar| {
            let keep = transfers.iter().any(|(key, _, _)| key == k);
            if !keep {
                bar.finish_and_clear();
                self.multi.remove(bar);
            }
            keep
        });
        for (key, t, s) in transfers {
            let bar = self
                .bars
                .entry(key.clone())
                .or_insert_with(|| self.multi.add(transfer_bar(&key.0, t)));
            bar.set_length(t.bytes_total);
            bar.set_position(t.bytes_done);
            bar.set_message(transfer_figures(t, *s));
        }
    }

    /// One text-only bar per summary line, kept above the transfers.
    fn set_lines(&mut self, text: &[String]) {
        while self.lines.len() > text.len() {
            let bar = self.lines.pop().expect("longer than text");
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        while self.lines.len() < text.len() {
            let bar = ProgressBar::new(0).with_style(text_style());
            self.lines.push(self.multi.insert(self.lines.len(), bar));
        }
        for (bar, line) in self.lines.iter().zip(text) {
            bar.set_message(line.clone());
        }
    }
}

fn text_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg}").expect("a fixed template")
}

fn transfer_bar(folder: &str, t: &TransferView) -> ProgressBar {
    let style = ProgressStyle::with_template("  ↓ {prefix} [{bar:30}] {msg}")
        .expect("a fixed template")
        .progress_chars("=> ");
    ProgressBar::new(t.bytes_total)
        .with_style(style)
        .with_prefix(transfer_label(folder, t))
}

/// Watch until Ctrl-C or `opts.count` snapshots; 0 then. The first
/// snapshot failing (node not running) is an error; later ones are shown
/// and the watch goes on (the node may be restarting).
pub fn run(opts: Options, fetch: Fetch) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = if std::io::stdout().is_terminal() {
        Output::Bars(Bars::new())
    } else {
        Output::Plain
    };
    let res = rt.block_on(watch(opts, fetch, out));
    // A fetch still blocked on a wedged node must not hold up the exit.
    rt.shutdown_background();
    res
}

async fn watch(opts: Options, fetch: Fetch, mut out: Output) -> anyhow::Result<i32> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tracker = Tracker::default();
    let mut shown = 0u64;
    while opts.count.is_none_or(|n| shown < n) {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tick.tick() => {}
        }
        let f = fetch.clone();
        let body = tokio::select! {
            _ = &mut ctrl_c => break,
            r = tokio::task::spawn_blocking(move || f()) => r?,
        };
        match body.and_then(|b| Ok(serde_json::from_str::<View>(&b)?)) {
            Ok(v) => {
                let transfers = tracker.update(&v, Instant::now());
                out.show(&v, &transfers);
            }
            Err(e) if shown == 0 => return Err(e),
            Err(e) => out.problem(&format!("fleetsync: {e:#}")),
        }
        shown += 1;
    }
    out.finish();
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_from_two_snapshots() {
        let s = speed(Some(1000), 3000, 10_000, Duration::from_secs(2));
        assert_eq!(s.rate, Some(1000.0));
        assert_eq!(s.eta, Some(Duration::from_secs(7)));
    }

    #[test]
    fn speed_unknown_at_first_sight_restart_or_no_time() {
        let none = Speed {
            rate: None,
            eta: None,
        };
        assert_eq!(speed(None, 10, 100, Duration::from_secs(1)), none);
        assert_eq!(
            speed(Some(50), 10, 100, Duration::from_secs(1)),
            none,
            "restarted"
        );
        assert_eq!(speed(Some(10), 20, 100, Duration::ZERO), none);
    }

    #[test]
    fn a_stalled_transfer_has_rate_zero_and_no_eta_a_finished_one_eta_zero() {
        let stalled = speed(Some(10), 10, 100, Duration::from_secs(1));
        assert_eq!(stalled.rate, Some(0.0));
        assert_eq!(stalled.eta, None);
        assert_eq!(
            speed(None, 100, 100, Duration::ZERO).eta,
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn the_eta_rounds_up_to_a_whole_second() {
        let s = speed(Some(0), 1000, 2500, Duration::from_secs(1));
        assert_eq!(s.eta, Some(Duration::from_secs(2)));
    }

    #[test]
    fn a_transfer_renders_to_one_line_with_bytes_rate_and_eta() {
        let t = TransferView {
            path: "dir/big.bin".into(),
            peer: "1a2b3c4d".into(),
            bytes_done: 4 << 20,
            bytes_total: 8 << 20,
        };
        let s = Speed {
            rate: Some((1 << 20) as f64),
            eta: Some(Duration::from_secs(64)),
        };
        assert_eq!(
            transfer_line("shared", &t, s),
            "  ↓ shared/dir/big.bin from 1a2b3c4d: 4.0 MiB / 8.0 MiB (50%), 1.0 MiB/s, ETA 1m 4s"
        );
        let first = Speed {
            rate: None,
            eta: None,
        };
        assert!(
            transfer_line("shared", &t, first).ends_with("(50%), –, ETA –"),
            "{}",
            transfer_line("shared", &t, first)
        );
    }

    #[test]
    fn summary_names_the_node_and_each_folder_state() {
        let v: View = serde_json::from_value(serde_json::json!({
            "short_id": "abcd1234", "healthy": true,
            "peers": [{"connected": true}, {"connected": false}],
            "folders": [
                {"id": "a", "files": 3, "bytes": 2048, "in_sync": true},
                {"id": "b", "pending": 2, "paused": true, "error": "disk full"},
            ],
        }))
        .unwrap();
        assert_eq!(
            summary_lines(&v),
            [
                "node abcd1234: healthy, 1 of 2 peers connected",
                "folder a: 3 files, 2.0 KiB, in sync",
                "folder b: 0 files, 0 B, 2 pending, PAUSED, ERROR: disk full",
            ]
        );
    }

    #[test]
    fn the_tracker_times_each_transfer_and_forgets_finished_ones() {
        let view = |done: &[(&str, u64)]| View {
            folders: vec![FolderView {
                id: "f".into(),
                transfers: done
                    .iter()
                    .map(|(p, d)| TransferView {
                        path: p.to_string(),
                        peer: "p".into(),
                        bytes_done: *d,
                        bytes_total: 1000,
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut tr = Tracker::default();
        let t0 = Instant::now();
        let first = tr.update(&view(&[("x", 100)]), t0);
        assert_eq!(first[0].2.rate, None);
        let second = tr.update(&view(&[("x", 300)]), t0 + Duration::from_secs(2));
        assert_eq!(second[0].2.rate, Some(100.0));
        tr.update(&view(&[]), t0 + Duration::from_secs(3));
        let again = tr.update(&view(&[("x", 500)]), t0 + Duration::from_secs(4));
        assert_eq!(again[0].2.rate, None, "x ended and started anew");
    }
}
