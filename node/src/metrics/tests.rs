//! The exposition read back by OpenMetrics' own rules: every sample
//! belongs to a family with a `# TYPE`, counters' samples end in `_total`,
//! and the series the README names are there with their types.

use std::collections::BTreeMap;

use fleetsync_actors::status::{FolderInfo, NodeStatus, PeerInfo};
use fleetsync_actors::supervisor::board::ActorState;

use super::*;

fn status() -> NodeStatus {
    NodeStatus {
        healthy: true,
        peers: vec![PeerInfo {
            short_id: "abcde".into(),
            connected: true,
            rtt_ms: Some(1.5),
            clock_offset_ms: Some(-2500),
            refused_streams: 2,
            ..PeerInfo::default()
        }],
        folders: vec![FolderInfo {
            id: "shared".into(),
            files: 3,
            bytes: 300,
            pending: 4,
            conflicts: 5,
            rejected: 6,
            deferred: 7,
            files_received: 8,
            bytes_received: 900,
            bytes_received_by_peer: BTreeMap::from([("abcde".to_string(), 900)]),
            last_in_sync_secs: 1_800_000_000,
            ..FolderInfo::default()
        }],
        actors: vec![ActorState {
            name: "hasher:shared".into(),
            healthy: true,
            restarts: 9,
            last_progress_ms: 1500,
            busy: 0,
        }],
        ..NodeStatus::default()
    }
}

/// One parsed line of the exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: String,
    value: f64,
}

/// The exposition parsed: family name → type, and the samples. Panics
/// on a line OpenMetrics text does not allow.
fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    assert!(text.ends_with("# EOF\n"), "no EOF marker:\n{text}");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            let old = types.insert(name.to_string(), kind.to_string());
            assert!(old.is_none(), "family {name} declared twice");
        } else if line.starts_with("# HELP ") || line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name in {line:?}"
            );
            samples.push(Sample {
                name: name.to_string(),
                labels: labels.to_string(),
                value: value.parse().unwrap_or_else(|e| panic!("{line:?}: {e}")),
            });
        }
    }
    (types, samples)
}

/// The family a sample belongs to: its name less a type's suffix.
fn family<'a>(types: &BTreeMap<String, String>, sample: &'a str) -> (&'a str, String) {
    for suffix in ["_total", "_info", ""] {
        if let Some(base) = sample.strip_suffix(suffix) {
            if let Some(kind) = types.get(base) {
                return (base, kind.clone());
            }
        }
    }
    panic!("sample {sample} has no # TYPE")
}

fn value(samples: &[Sample], name: &str, labels: &str) -> f64 {
    samples
        .iter()
        .find(|s| s.name == name && s.labels == labels)
        .unwrap_or_else(|| panic!("no sample {name}{{{labels}}}"))
        .value
}

#[test]
fn every_total_series_is_a_counter_and_every_sample_has_a_type() {
    let text = render(Some(Arc::new(status())));
    let (types, samples) = parse(&text);
    for s in &samples {
        let (_, kind) = family(&types, &s.name);
        if s.name.ends_with("_total") {
            assert_eq!(kind, "counter", "{} is not a counter:\n{text}", s.name);
        }
        if kind == "counter" {
            assert!(
                s.name.ends_with("_total"),
                "counter {} lacks _total",
                s.name
            );
        }
    }
    for counter in [
        "fleetsync_folder_conflicts",
        "fleetsync_folder_rejected",
        "fleetsync_folder_deferred",
        "fleetsync_folder_received_files",
        "fleetsync_folder_received_bytes",
        "fleetsync_peer_received_bytes",
        "fleetsync_actor_restarts",
        "process_cpu_seconds",
    ] {
        assert_eq!(
            types.get(counter).map(String::as_str),
            Some("counter"),
            "{counter}"
        );
    }
}

#[test]
fn the_status_numbers_come_out_under_conventional_names() {
    let (types, samples) = parse(&render(Some(Arc::new(status()))));
    let f = r#"folder="shared""#;
    assert_eq!(value(&samples, "fleetsync_folder_pending_changes", f), 4.0);
    assert_eq!(value(&samples, "fleetsync_folder_transfers_active", f), 0.0);
    assert_eq!(value(&samples, "fleetsync_folder_bytes", f), 300.0);
    assert_eq!(value(&samples, "fleetsync_folder_conflicts_total", f), 5.0);
    assert_eq!(
        value(&samples, "fleetsync_folder_received_files_total", f),
        8.0
    );
    assert_eq!(
        value(&samples, "fleetsync_folder_received_bytes_total", f),
        900.0
    );
    assert_eq!(
        value(&samples, "fleetsync_folder_last_sync_timestamp_seconds", f),
        1_800_000_000.0
    );
    assert_eq!(
        value(
            &samples,
            "fleetsync_peer_received_bytes_total",
            r#"folder="shared",peer="abcde""#
        ),
        900.0
    );
    assert_eq!(
        value(&samples, "fleetsync_peer_rtt_seconds", r#"peer="abcde""#),
        0.0015
    );
    assert_eq!(
        value(
            &samples,
            "fleetsync_peer_clock_offset_seconds",
            r#"peer="abcde""#
        ),
        -2.5
    );
    assert_eq!(
        value(
            &samples,
            "fleetsync_actor_restarts_total",
            r#"actor="hasher:shared""#
        ),
        9.0
    );
    assert_eq!(
        value(
            &samples,
            "fleetsync_build_info",
            &format!(r#"version="{}""#, env!("CARGO_PKG_VERSION"))
        ),
        1.0
    );
    assert_eq!(types["fleetsync_build"], "info");
    assert_eq!(types["fleetsync_folder_pending_changes"], "gauge");
    assert!(value(&samples, "process_resident_memory_bytes", "") > 0.0);
    assert!(value(&samples, "process_open_fds", "") > 0.0);
    assert!(value(&samples, "process_start_time_seconds", "") > 0.0);
    value(&samples, "process_cpu_seconds_total", "");
}

#[test]
fn before_the_first_snapshot_build_and_process_series_are_served() {
    let (_, samples) = parse(&render(None));
    assert!(samples.iter().any(|s| s.name == "fleetsync_build_info"));
    assert!(samples.iter().any(|s| s.name == "process_open_fds"));
    assert!(!samples
        .iter()
        .any(|s| s.name.starts_with("fleetsync_folder")));
}

/// Every metric name `deploy/grafana-dashboard.json` queries is one the
/// node exports (the dashboard would show "No data" otherwise).
#[test]
fn the_grafana_dashboard_uses_only_exported_metric_names() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana-dashboard.json"
    );
    let text = std::fs::read_to_string(path).expect("deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let (_, samples) = parse(&render(Some(Arc::new(status()))));
    let exported: std::collections::BTreeSet<&str> =
        samples.iter().map(|s| s.name.as_str()).collect();
    let mut used = Vec::new();
    collect_exprs(&dashboard, &mut used);
    assert!(used.len() >= 5, "the dashboard has few queries: {used:?}");
    for expr in &used {
        for name in metric_names(expr) {
            assert!(
                exported.contains(name.as_str()),
                "the dashboard queries {name} (in {expr:?}), which the node does not export"
            );
        }
    }
}

/// Every `"expr"` (panel query) and `"query"` (template variable) string
/// anywhere in the dashboard.
fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The metric names in a PromQL expression: identifiers starting with
/// `fleetsync_` or `process_` (label names and functions never do).
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("fleetsync_") || w.starts_with("process_"))
        .map(str::to_string)
        .collect()
}
