//! `fleetsync config show`: every setting's effective value and where it
//! came from (file, environment variable, flag, or the built-in default).
//!
//! Two halves: [`origins`] records, while the layers are still known, which
//! layer set each key; [`Config::settings`] lists every key of the
//! validated config with its value, the origin recorded for it, or
//! `default`. Keys are spelled as in the file (`mesh.listen`,
//! `folders[0].versions.keep`), so a line tells the operator what to edit.
//! The fleet secret's value is never shown.

use std::{collections::BTreeMap, fmt::Display, time::Duration};

use serde::Serialize;

use crate::{
    layer::{Layered, LayeredFolder, Origin, Sourced},
    Config, FolderConfig,
};

/// Where one setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", content = "name", rename_all = "lowercase")]
pub enum Source {
    /// The config file.
    File,
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag (its name).
    Flag(String),
    /// Not set anywhere: the built-in default.
    Default,
}

impl Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File => f.write_str("file"),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Flag(v) => write!(f, "flag {v}"),
            Source::Default => f.write_str("default"),
        }
    }
}

impl From<&Origin> for Source {
    fn from(o: &Origin) -> Self {
        match o {
            Origin::File(_) => Source::File,
            Origin::Env(v) => Source::Env(v.clone()),
            Origin::Cli(f) => Source::Flag(f.to_string()),
        }
    }
}

/// One line of `config show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    /// As in the file: `mesh.listen`, `folders[0].settle`.
    pub key: String,
    /// The effective value, as text (secrets redacted).
    pub value: String,
    pub source: Source,
}

/// What the fleet secret shows as.
pub const REDACTED: &str = "<redacted>";

/// The keys some layer set, and which layer (the last one wins).
pub(crate) fn origins(l: &Layered) -> BTreeMap<String, Source> {
    let mut out = BTreeMap::new();
    let mut put = |key: &str, o: Option<&Origin>| {
        if let Some(o) = o {
            out.insert(key.to_string(), Source::from(o));
        }
    };
    put("data_dir", origin(&l.data_dir));
    put("mesh.listen", origin(&l.mesh_listen));
    let secret = l.secret_layers.iter().rev().find_map(|s| {
        s.inline
            .as_ref()
            .map(|v| &v.origin)
            .or(s.file.as_ref().map(|v| &v.origin))
    });
    put("mesh.fleet_secret", secret);
    put("mesh.peers", origin(&l.peers));
    put("mesh.mdns", origin(&l.mdns));
    put("mesh.allow", origin(&l.allow));
    put("mesh.deny", origin(&l.deny));
    put("mesh.ticket_peers", origin(&l.ticket_peers));
    put(
        "mesh.transfer_stall_timeout",
        origin(&l.transfer_stall_timeout),
    );
    put("mesh.peer_exchange", origin(&l.peer_exchange));
    put("mesh.max_peers", origin(&l.max_peers));
    put("admin.listen", origin(&l.admin_listen));
    put("admin.socket", origin(&l.admin_socket));
    put("metrics.listen", origin(&l.metrics_listen));
    put("metrics.bearer_token_file", origin(&l.metrics_token_file));
    put("log.level", origin(&l.log_level));
    put("log.format", origin(&l.log_format));
    put(
        "supervisor.ping_interval",
        origin(&l.supervisor.ping_interval),
    );
    put(
        "supervisor.stall_timeout",
        origin(&l.supervisor.stall_timeout),
    );
    put(
        "supervisor.max_restarts",
        origin(&l.supervisor.max_restarts),
    );
    put(
        "supervisor.restart_window",
        origin(&l.supervisor.restart_window),
    );
    put("debug.fault_injection", origin(&l.fault_injection));
    for (i, f) in l.folders.iter().enumerate() {
        for (key, o) in folder_origins(f) {
            put(&format!("folders[{i}].{key}"), o);
        }
    }
    out
}

fn origin<T>(s: &Option<Sourced<T>>) -> Option<&Origin> {
    s.as_ref().map(|s| &s.origin)
}

fn folder_origins(f: &LayeredFolder) -> Vec<(&'static str, Option<&Origin>)> {
    vec![
        ("id", origin(&f.id)),
        ("path", origin(&f.path)),
        ("mode", origin(&f.mode)),
        ("settle", origin(&f.settle)),
        ("rescan", origin(&f.rescan)),
        ("watch", origin(&f.watch)),
        ("poll_interval", origin(&f.poll_interval)),
        ("max_pending", origin(&f.max_pending)),
        ("max_files", origin(&f.max_files)),
        ("min_free", origin(&f.min_free)),
        ("umask", origin(&f.umask)),
        ("max_delete_fraction", origin(&f.max_delete_fraction)),
        ("tombstone_ttl", origin(&f.tombstone_ttl)),
        // `versions = "off"` and the table's keys are one setting's parts.
        ("versions", origin(&f.versions_word)),
        ("versions.keep", origin(&f.versions_keep)),
        ("versions.max_bytes", origin(&f.versions_max_bytes)),
        ("versions.local", origin(&f.versions_local)),
    ]
}

/// As an operator would write it: `180d` rather than humantime's
/// `5months 27days 19h 12m` (its months are 30.44 days).
fn duration(d: Duration) -> String {
    const UNITS: [(u64, &str); 3] = [(86_400, "d"), (3_600, "h"), (60, "m")];
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 && secs > 0 {
        if let Some((n, unit)) = UNITS.iter().find(|(n, _)| secs.is_multiple_of(*n)) {
            return format!("{}{unit}", secs / n);
        }
    }
    humantime::format_duration(d).to_string()
}

/// `1GiB` rather than `1073741824`.
fn size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    match UNITS
        .iter()
        .find(|(n, _)| bytes > 0 && bytes.is_multiple_of(*n))
    {
        Some((n, unit)) => format!("{}{unit}", bytes / n),
        None => bytes.to_string(),
    }
}

fn list<T: Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(T::to_string).collect();
    format!("[{}]", items.join(", "))
}

impl Config {
    /// Every setting with its effective value and where it came from, in
    /// the file's order (folders last).
    pub fn settings(&self) -> Vec<Setting> {
        let m = &self.mesh;
        let allow = match &m.allow {
            None => "any member (not set)".to_string(),
            Some(ids) => list(&ids.iter().map(hex::encode).collect::<Vec<_>>()),
        };
        let deny: Vec<String> = m.deny.iter().map(hex::encode).collect();
        let s = &self.supervisor;
        let mut rows: Vec<(String, String)> = vec![
            ("data_dir".into(), self.data_dir.display().to_string()),
            ("mesh.listen".into(), m.listen.to_string()),
            ("mesh.fleet_secret".into(), REDACTED.into()),
            ("mesh.peers".into(), list(&m.peers)),
            ("mesh.mdns".into(), m.mdns.to_string()),
            ("mesh.allow".into(), allow),
            ("mesh.deny".into(), list(&deny)),
            ("mesh.ticket_peers".into(), list(&m.ticket_peers)),
            (
                "mesh.transfer_stall_timeout".into(),
                duration(m.transfer_stall_timeout),
            ),
            ("mesh.peer_exchange".into(), m.peer_exchange.to_string()),
            ("mesh.max_peers".into(), m.max_peers.to_string()),
            ("admin.listen".into(), self.admin.listen.to_string()),
            (
                "admin.socket".into(),
                match &self.admin.socket {
                    crate::AdminSocket::Default => {
                        "$RUNTIME_DIRECTORY/admin.sock, else <data_dir>/admin.sock".to_string()
                    }
                    crate::AdminSocket::Off => "off".to_string(),
                    crate::AdminSocket::At(p) => p.display().to_string(),
                },
            ),
            (
                "metrics.listen".into(),
                self.metrics.as_ref().map_or_else(
                    || "off (the admin API serves /metrics)".to_string(),
                    |m| m.listen.to_string(),
                ),
            ),
            (
                "metrics.bearer_token_file".into(),
                match self.metrics.as_ref().and_then(|m| m.bearer_token.as_ref()) {
                    Some(_) => REDACTED.to_string(),
                    None => "(none)".to_string(),
                },
            ),
            ("log.level".into(), self.log.level.clone()),
            ("log.format".into(), self.log.format.to_string()),
            ("supervisor.ping_interval".into(), duration(s.ping_interval)),
            ("supervisor.stall_timeout".into(), duration(s.stall_timeout)),
            ("supervisor.max_restarts".into(), s.max_restarts.to_string()),
            (
                "supervisor.restart_window".into(),
                duration(s.restart_window),
            ),
            (
                "debug.fault_injection".into(),
                self.debug.fault_injection.to_string(),
            ),
        ];
        for (i, f) in self.folders.iter().enumerate() {
            rows.extend(
                folder_values(f)
                    .into_iter()
                    .map(|(k, v)| (format!("folders[{i}].{k}"), v)),
            );
        }
        rows.into_iter()
            .map(|(key, value)| Setting {
                source: self.origins.get(&key).cloned().unwrap_or(Source::Default),
                key,
                value,
            })
            .collect()
    }
}

/// One folder's settings as `config show` lists them (key without the
/// `folders[i].` prefix, value): what a reload compares folder by folder.
pub fn folder_values(f: &FolderConfig) -> Vec<(&'static str, String)> {
    let v = &f.versions;
    vec![
        ("id", f.id.clone()),
        ("path", f.path.display().to_string()),
        ("mode", f.mode.to_string()),
        ("settle", duration(f.settle)),
        ("rescan", duration(f.rescan)),
        ("watch", f.watch.to_string()),
        ("poll_interval", duration(f.poll_interval)),
        ("max_pending", f.max_pending.to_string()),
        ("max_files", f.max_files.to_string()),
        ("min_free", f.min_free.to_string()),
        ("umask", f.umask.to_string()),
        ("max_delete_fraction", f.max_delete_fraction.to_string()),
        ("tombstone_ttl", duration(f.tombstone_ttl)),
        ("versions", if v.enabled { "on" } else { "off" }.into()),
        ("versions.keep", duration(v.keep)),
        ("versions.max_bytes", size(v.max_bytes)),
        ("versions.local", v.local.to_string()),
    ]
}
