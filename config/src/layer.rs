//! Stage 2: stack file values, `FLEETSYNC_*` env vars and CLI overrides,
//! keeping track of where each winning value came from.

use std::path::PathBuf;

use crate::error::ConfigError;
use crate::raw::{RawConfig, RawVersions};
use crate::{flag, suggest, Overrides, ENV_IGNORED, ENV_PREFIX};

/// Where a value was set; decides how an error about it is labelled and
/// what a relative path in it is relative to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Key path in the file, e.g. `mesh.peers` or `folders[1].path`.
    File(String),
    /// Environment variable name.
    Env(String),
    /// Command-line flag, e.g. `--listen`.
    Cli(&'static str),
}

impl Origin {
    pub fn key(&self) -> &str {
        match self {
            Origin::File(k) | Origin::Env(k) => k,
            Origin::Cli(f) => f,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Sourced<T> {
    fn file(value: T, key: impl Into<String>) -> Self {
        Sourced {
            value,
            origin: Origin::File(key.into()),
        }
    }
    fn env(value: T, var: &str) -> Self {
        Sourced {
            value,
            origin: Origin::Env(var.to_string()),
        }
    }
    fn cli(value: T, flag: &'static str) -> Self {
        Sourced {
            value,
            origin: Origin::Cli(flag),
        }
    }
}

/// One layer's say on the fleet secret. The secret has two spellings
/// (inline / file); they are one setting, so a higher layer using either
/// spelling replaces both of a lower layer's.
#[derive(Debug, Default)]
pub(crate) struct SecretLayer {
    pub inline: Option<Sourced<String>>,
    pub file: Option<Sourced<PathBuf>>,
}

#[derive(Debug, Default)]
pub(crate) struct Layered {
    pub data_dir: Option<Sourced<PathBuf>>,
    pub mesh_listen: Option<Sourced<String>>,
    /// Lowest precedence first.
    pub secret_layers: Vec<SecretLayer>,
    pub peers: Option<Sourced<Vec<String>>>,
    pub mdns: Option<Sourced<bool>>,
    pub allow: Option<Sourced<Vec<String>>>,
    pub deny: Option<Sourced<Vec<String>>>,
    pub ticket_peers: Option<Sourced<Vec<String>>>,
    pub transfer_stall_timeout: Option<Sourced<String>>,
    pub peer_exchange: Option<Sourced<bool>>,
    pub max_peers: Option<Sourced<i64>>,
    pub admin_listen: Option<Sourced<String>>,
    /// `admin.socket`: a path, or `off`.
    pub admin_socket: Option<Sourced<String>>,
    pub metrics_listen: Option<Sourced<String>>,
    pub metrics_token_file: Option<Sourced<PathBuf>>,
    pub log_level: Option<Sourced<String>>,
    pub log_format: Option<Sourced<String>>,
    pub supervisor: LayeredSupervisor,
    pub fault_injection: Option<Sourced<bool>>,
    pub folders: Vec<LayeredFolder>,
}

#[derive(Debug, Default)]
pub(crate) struct LayeredSupervisor {
    pub ping_interval: Option<Sourced<String>>,
    pub stall_timeout: Option<Sourced<String>>,
    pub max_restarts: Option<Sourced<i64>>,
    pub restart_window: Option<Sourced<String>>,
}

#[derive(Debug, Default)]
pub(crate) struct LayeredFolder {
    pub id: Option<Sourced<String>>,
    pub path: Option<Sourced<PathBuf>>,
    pub mode: Option<Sourced<String>>,
    pub settle: Option<Sourced<String>>,
    pub rescan: Option<Sourced<String>>,
    pub watch: Option<Sourced<String>>,
    pub poll_interval: Option<Sourced<String>>,
    pub max_pending: Option<Sourced<i64>>,
    pub max_files: Option<Sourced<i64>>,
    pub min_free: Option<Sourced<String>>,
    pub umask: Option<Sourced<String>>,
    pub max_delete_fraction: Option<Sourced<f64>>,
    pub tombstone_ttl: Option<Sourced<String>>,
    /// `versions = "off"` (the word form; env `..._VERSIONS`).
    pub versions_word: Option<Sourced<String>>,
    pub versions_keep: Option<Sourced<String>>,
    pub versions_max_bytes: Option<Sourced<String>>,
    pub versions_local: Option<Sourced<bool>>,
}

pub(crate) const FOLDER_ENV_KEYS: &[&str] = &[
    "PATH",
    "MODE",
    "SETTLE",
    "RESCAN",
    "WATCH",
    "POLL_INTERVAL",
    "MIN_FREE",
    "UMASK",
    "VERSIONS",
    "MAX_PENDING",
    "MAX_FILES",
    "MAX_DELETE_FRACTION",
    "TOMBSTONE_TTL",
];

pub(crate) const ENV_DATA_DIR: &str = "FLEETSYNC_DATA_DIR";
/// The folder list, `ID=PATH,ID2=PATH2`: with the two above, what a node
/// needs to start without a config file (a container).
pub(crate) const ENV_FOLDERS: &str = "FLEETSYNC_FOLDERS";
const ENV_MESH_LISTEN: &str = "FLEETSYNC_MESH_LISTEN";
pub(crate) const ENV_MESH_FLEET_SECRET: &str = "FLEETSYNC_MESH_FLEET_SECRET";
pub(crate) const ENV_MESH_FLEET_SECRET_FILE: &str = "FLEETSYNC_MESH_FLEET_SECRET_FILE";
const ENV_MESH_PEERS: &str = "FLEETSYNC_MESH_PEERS";
const ENV_MESH_MDNS: &str = "FLEETSYNC_MESH_MDNS";
const ENV_MESH_ALLOW: &str = "FLEETSYNC_MESH_ALLOW";
const ENV_MESH_DENY: &str = "FLEETSYNC_MESH_DENY";
const ENV_MESH_TICKET_PEERS: &str = "FLEETSYNC_MESH_TICKET_PEERS";
const ENV_MESH_TRANSFER_STALL_TIMEOUT: &str = "FLEETSYNC_MESH_TRANSFER_STALL_TIMEOUT";
const ENV_MESH_PEER_EXCHANGE: &str = "FLEETSYNC_MESH_PEER_EXCHANGE";
const ENV_MESH_MAX_PEERS: &str = "FLEETSYNC_MESH_MAX_PEERS";
const ENV_ADMIN_LISTEN: &str = "FLEETSYNC_ADMIN_LISTEN";
/// Also read by the CLI (`--socket`): one variable points both the node
/// and its commands at the same socket.
const ENV_ADMIN_SOCKET: &str = "FLEETSYNC_ADMIN_SOCKET";
const ENV_METRICS_LISTEN: &str = "FLEETSYNC_METRICS_LISTEN";
const ENV_METRICS_BEARER_TOKEN_FILE: &str = "FLEETSYNC_METRICS_BEARER_TOKEN_FILE";
const ENV_LOG_LEVEL: &str = "FLEETSYNC_LOG_LEVEL";
const ENV_LOG_FORMAT: &str = "FLEETSYNC_LOG_FORMAT";
const ENV_SUPERVISOR_PING_INTERVAL: &str = "FLEETSYNC_SUPERVISOR_PING_INTERVAL";
const ENV_SUPERVISOR_STALL_TIMEOUT: &str = "FLEETSYNC_SUPERVISOR_STALL_TIMEOUT";
const ENV_SUPERVISOR_MAX_RESTARTS: &str = "FLEETSYNC_SUPERVISOR_MAX_RESTARTS";
const ENV_SUPERVISOR_RESTART_WINDOW: &str = "FLEETSYNC_SUPERVISOR_RESTART_WINDOW";
const ENV_DEBUG_FAULT_INJECTION: &str = "FLEETSYNC_DEBUG_FAULT_INJECTION";

pub(crate) const ENV_FIXED: &[&str] = &[
    ENV_DATA_DIR,
    ENV_FOLDERS,
    ENV_MESH_LISTEN,
    ENV_MESH_FLEET_SECRET,
    ENV_MESH_FLEET_SECRET_FILE,
    ENV_MESH_PEERS,
    ENV_MESH_MDNS,
    ENV_MESH_ALLOW,
    ENV_MESH_DENY,
    ENV_MESH_TICKET_PEERS,
    ENV_MESH_TRANSFER_STALL_TIMEOUT,
    ENV_MESH_PEER_EXCHANGE,
    ENV_MESH_MAX_PEERS,
    ENV_ADMIN_LISTEN,
    ENV_ADMIN_SOCKET,
    ENV_METRICS_LISTEN,
    ENV_METRICS_BEARER_TOKEN_FILE,
    ENV_LOG_LEVEL,
    ENV_LOG_FORMAT,
    ENV_SUPERVISOR_PING_INTERVAL,
    ENV_SUPERVISOR_STALL_TIMEOUT,
    ENV_SUPERVISOR_MAX_RESTARTS,
    ENV_SUPERVISOR_RESTART_WINDOW,
    ENV_DEBUG_FAULT_INJECTION,
];

/// The `<ID>` part of a folder's env var names: uppercase, and every char
/// outside `[A-Z0-9]` becomes `_` so any valid folder id yields a portable
/// variable name.
pub(crate) fn folder_env_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            let c = c.to_ascii_uppercase();
            if c.is_ascii_uppercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Layered {
    pub fn from_raw(raw: RawConfig) -> Self {
        let mesh = raw.mesh.unwrap_or_default();
        let admin = raw.admin.unwrap_or_default();
        let metrics = raw.metrics.unwrap_or_default();
        let log = raw.log.unwrap_or_default();
        let supervisor = raw.supervisor.unwrap_or_default();
        let debug = raw.debug.unwrap_or_default();
        let folders = raw
            .folders
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                let key = |k: &str| format!("folders[{i}].{k}");
                LayeredFolder {
                    id: f.id.map(|v| Sourced::file(v, key("id"))),
                    path: f.path.map(|v| Sourced::file(PathBuf::from(v), key("path"))),
                    mode: f.mode.map(|v| Sourced::file(v, key("mode"))),
                    settle: f.settle.map(|v| Sourced::file(v, key("settle"))),
                    rescan: f.rescan.map(|v| Sourced::file(v, key("rescan"))),
                    watch: f.watch.map(|v| Sourced::file(v, key("watch"))),
                    poll_interval: f
                        .poll_interval
                        .map(|v| Sourced::file(v, key("poll_interval"))),
                    max_pending: f.max_pending.map(|v| Sourced::file(v, key("max_pending"))),
                    max_files: f.max_files.map(|v| Sourced::file(v, key("max_files"))),
                    min_free: f.min_free.map(|v| Sourced::file(v, key("min_free"))),
                    umask: f.umask.map(|v| Sourced::file(v, key("umask"))),
                    max_delete_fraction: f
                        .max_delete_fraction
                        .map(|v| Sourced::file(v, key("max_delete_fraction"))),
                    tombstone_ttl: f
                        .tombstone_ttl
                        .map(|v| Sourced::file(v, key("tombstone_ttl"))),
                    ..versions_layer(f.versions, &key)
                }
            })
            .collect();
        Layered {
            data_dir: raw
                .data_dir
                .map(|v| Sourced::file(PathBuf::from(v), "data_dir")),
            mesh_listen: mesh.listen.map(|v| Sourced::file(v, "mesh.listen")),
            secret_layers: vec![SecretLayer {
                inline: mesh
                    .fleet_secret
                    .map(|v| Sourced::file(v, "mesh.fleet_secret")),
                file: mesh
                    .fleet_secret_file
                    .map(|v| Sourced::file(PathBuf::from(v), "mesh.fleet_secret_file")),
            }],
            peers: mesh.peers.map(|v| Sourced::file(v, "mesh.peers")),
            mdns: mesh.mdns.map(|v| Sourced::file(v, "mesh.mdns")),
            allow: mesh.allow.map(|v| Sourced::file(v, "mesh.allow")),
            deny: mesh.deny.map(|v| Sourced::file(v, "mesh.deny")),
            ticket_peers: mesh
                .ticket_peers
                .map(|v| Sourced::file(v, "mesh.ticket_peers")),
            transfer_stall_timeout: mesh
                .transfer_stall_timeout
                .map(|v| Sourced::file(v, "mesh.transfer_stall_timeout")),
            peer_exchange: mesh
                .peer_exchange
                .map(|v| Sourced::file(v, "mesh.peer_exchange")),
            max_peers: mesh.max_peers.map(|v| Sourced::file(v, "mesh.max_peers")),
            admin_listen: admin.listen.map(|v| Sourced::file(v, "admin.listen")),
            admin_socket: admin.socket.map(|v| Sourced::file(v, "admin.socket")),
            metrics_listen: metrics.listen.map(|v| Sourced::file(v, "metrics.listen")),
            metrics_token_file: metrics
                .bearer_token_file
                .map(|v| Sourced::file(PathBuf::from(v), "metrics.bearer_token_file")),
            log_level: log.level.map(|v| Sourced::file(v, "log.level")),
            log_format: log.format.map(|v| Sourced::file(v, "log.format")),
            supervisor: LayeredSupervisor {
                ping_interval: supervisor
                    .ping_interval
                    .map(|v| Sourced::file(v, "supervisor.ping_interval")),
                stall_timeout: supervisor
                    .stall_timeout
                    .map(|v| Sourced::file(v, "supervisor.stall_timeout")),
                max_restarts: supervisor
                    .max_restarts
                    .map(|v| Sourced::file(v, "supervisor.max_restarts")),
                restart_window: supervisor
                    .restart_window
                    .map(|v| Sourced::file(v, "supervisor.restart_window")),
            },
            fault_injection: debug
                .fault_injection
                .map(|v| Sourced::file(v, "debug.fault_injection")),
            folders,
        }
    }

    /// Apply `FLEETSYNC_*` variables; other variables are skipped.
    pub fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| {
                name.starts_with(ENV_PREFIX) && !ENV_IGNORED.contains(&name.as_str())
            })
            .collect();
        // Sorted so "the first problem" is the same on every run, whatever
        // order the OS hands the environment over in. The sort is stable, so
        // a repeated name keeps "last one wins".
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        // The folder list first, whatever the sort put before it: the
        // FLEETSYNC_FOLDER_<ID>_<KEY> variables tune the folders it defines.
        if let Some(i) = vars.iter().rposition(|(name, _)| name == ENV_FOLDERS) {
            let (name, value) = vars.remove(i);
            vars.retain(|(n, _)| n != ENV_FOLDERS);
            self.folders = parse_env_folders(&name, &value)?;
        }

        let mut secret = SecretLayer::default();
        for (name, value) in vars {
            let value = value.trim().to_string();
            match name.as_str() {
                ENV_DATA_DIR => self.data_dir = Some(Sourced::env(PathBuf::from(value), &name)),
                ENV_MESH_LISTEN => self.mesh_listen = Some(Sourced::env(value, &name)),
                ENV_MESH_FLEET_SECRET => secret.inline = Some(Sourced::env(value, &name)),
                ENV_MESH_FLEET_SECRET_FILE => {
                    secret.file = Some(Sourced::env(PathBuf::from(value), &name))
                }
                ENV_MESH_PEERS => self.peers = Some(Sourced::env(split_list(&value), &name)),
                ENV_MESH_MDNS => {
                    self.mdns = Some(Sourced::env(parse_env_bool(&name, &value)?, &name))
                }
                ENV_MESH_ALLOW => self.allow = Some(Sourced::env(split_list(&value), &name)),
                ENV_MESH_DENY => self.deny = Some(Sourced::env(split_list(&value), &name)),
                ENV_MESH_TICKET_PEERS => {
                    self.ticket_peers = Some(Sourced::env(split_list(&value), &name))
                }
                ENV_MESH_TRANSFER_STALL_TIMEOUT => {
                    self.transfer_stall_timeout = Some(Sourced::env(value, &name))
                }
                ENV_MESH_PEER_EXCHANGE => {
                    let on = parse_env_bool(&name, &value)?;
                    self.peer_exchange = Some(Sourced::env(on, &name))
                }
                ENV_MESH_MAX_PEERS => {
                    self.max_peers = Some(Sourced::env(parse_env_int(&name, &value)?, &name))
                }
                ENV_ADMIN_LISTEN => self.admin_listen = Some(Sourced::env(value, &name)),
                ENV_ADMIN_SOCKET => self.admin_socket = Some(Sourced::env(value, &name)),
                ENV_METRICS_LISTEN => self.metrics_listen = Some(Sourced::env(value, &name)),
                ENV_METRICS_BEARER_TOKEN_FILE => {
                    self.metrics_token_file = Some(Sourced::env(PathBuf::from(value), &name))
                }
                ENV_LOG_LEVEL => self.log_level = Some(Sourced::env(value, &name)),
                ENV_LOG_FORMAT => self.log_format = Some(Sourced::env(value, &name)),
                ENV_SUPERVISOR_PING_INTERVAL => {
                    self.supervisor.ping_interval = Some(Sourced::env(value, &name))
                }
                ENV_SUPERVISOR_STALL_TIMEOUT => {
                    self.supervisor.stall_timeout = Some(Sourced::env(value, &name))
                }
                ENV_SUPERVISOR_MAX_RESTARTS => {
                    let n = parse_env_int(&name, &value)?;
                    self.supervisor.max_restarts = Some(Sourced::env(n, &name))
                }
                ENV_SUPERVISOR_RESTART_WINDOW => {
                    self.supervisor.restart_window = Some(Sourced::env(value, &name))
                }
                ENV_DEBUG_FAULT_INJECTION => {
                    let on = parse_env_bool(&name, &value)?;
                    self.fault_injection = Some(Sourced::env(on, &name))
                }
                _ => self.apply_folder_env(&name, value)?,
            }
        }
        if secret.inline.is_some() || secret.file.is_some() {
            self.secret_layers.push(secret);
        }
        Ok(())
    }

    fn apply_folder_env(&mut self, name: &str, value: String) -> Result<(), ConfigError> {
        let rest = name
            .strip_prefix("FLEETSYNC_FOLDER_")
            .ok_or_else(|| self.unknown_env(name, None))?;
        // The key suffix cannot be split off blindly: ids may contain '_' and
        // so does POLL_INTERVAL. Try each folder's prefix instead; with the
        // current key names at most one env id can match.
        let mut hits: Vec<(usize, &'static str)> = Vec::new();
        for (i, folder) in self.folders.iter().enumerate() {
            let Some(id) = &folder.id else { continue };
            let Some(key) = rest
                .strip_prefix(folder_env_id(&id.value).as_str())
                .and_then(|r| r.strip_prefix('_'))
            else {
                continue;
            };
            if let Some(key) = FOLDER_ENV_KEYS.iter().find(|k| **k == key) {
                hits.push((i, key));
            }
        }
        match hits.as_slice() {
            [] => Err(self.unknown_env(
                name,
                Some("no folder in the config file or FLEETSYNC_FOLDERS has this id and key"),
            )),
            [(i, key)] => {
                let folder = &mut self.folders[*i];
                let v = Some(Sourced::env(value.clone(), name));
                match *key {
                    "PATH" => folder.path = Some(Sourced::env(PathBuf::from(value), name)),
                    "MODE" => folder.mode = v,
                    "SETTLE" => folder.settle = v,
                    "RESCAN" => folder.rescan = v,
                    "WATCH" => folder.watch = v,
                    "MIN_FREE" => folder.min_free = v,
                    "UMASK" => folder.umask = v,
                    "TOMBSTONE_TTL" => folder.tombstone_ttl = v,
                    "VERSIONS" => folder.versions_word = v,
                    "MAX_PENDING" => {
                        folder.max_pending = Some(Sourced::env(parse_env_int(name, &value)?, name))
                    }
                    "MAX_FILES" => {
                        folder.max_files = Some(Sourced::env(parse_env_int(name, &value)?, name))
                    }
                    "MAX_DELETE_FRACTION" => {
                        folder.max_delete_fraction =
                            Some(Sourced::env(parse_env_fraction(name, &value)?, name))
                    }
                    _ => folder.poll_interval = v,
                }
                Ok(())
            }
            _ => {
                let ids: Vec<String> = hits
                    .iter()
                    .filter_map(|(i, _)| self.folders[*i].id.as_ref())
                    .map(|id| format!("{:?}", id.value))
                    .collect();
                Err(ConfigError::invalid(
                    "<env>",
                    name,
                    format!(
                        "ambiguous: folder ids {} all map to the same variable name",
                        ids.join(", ")
                    ),
                    "rename the folders so their ids differ in letters or digits, \
                     not only in case or punctuation",
                ))
            }
        }
    }

    fn unknown_env(&self, name: &str, why: Option<&str>) -> ConfigError {
        let folder_ids: Vec<String> = self
            .folders
            .iter()
            .filter_map(|f| f.id.as_ref())
            .map(|id| folder_env_id(&id.value))
            .collect();
        let mut candidates: Vec<String> = ENV_FIXED.iter().map(|s| s.to_string()).collect();
        for id in &folder_ids {
            for key in FOLDER_ENV_KEYS {
                candidates.push(format!("FLEETSYNC_FOLDER_{id}_{key}"));
            }
        }
        let mut problem = "unknown fleetsync environment variable".to_string();
        if let Some(why) = why {
            problem.push_str(&format!(" ({why})"));
        }
        if let Some(s) = suggest(name, candidates.iter().map(String::as_str)) {
            problem.push_str(&format!("; did you mean {s}?"));
        }
        let folders = if folder_ids.is_empty() {
            "FLEETSYNC_FOLDER_<ID>_<KEY> needs a folder with that id ([[folders]] in the \
             file, or in FLEETSYNC_FOLDERS)"
                .to_string()
        } else {
            format!(
                "FLEETSYNC_FOLDER_<ID>_<KEY> with <ID> one of {}",
                folder_ids.join(", ")
            )
        };
        ConfigError::invalid(
            "<env>",
            name,
            problem,
            format!(
                "unset it or use a valid name: {}, {folders} and <KEY> one of {} \
                 ({} are not config settings and are ignored here)",
                ENV_FIXED.join(", "),
                FOLDER_ENV_KEYS.join(", "),
                ENV_IGNORED.join(" and "),
            ),
        )
    }

    pub fn apply_overrides(&mut self, o: &Overrides) {
        if let Some(v) = &o.data_dir {
            self.data_dir = Some(Sourced::cli(v.clone(), flag::DATA_DIR));
        }
        if let Some(v) = &o.mesh_listen {
            self.mesh_listen = Some(Sourced::cli(v.clone(), flag::MESH_LISTEN));
        }
        if let Some(v) = &o.fleet_secret {
            self.secret_layers.push(SecretLayer {
                inline: Some(Sourced::cli(v.clone(), flag::FLEET_SECRET)),
                file: None,
            });
        }
        if let Some(v) = &o.peers {
            self.peers = Some(Sourced::cli(v.clone(), flag::PEERS));
        }
        if let Some(v) = o.mdns {
            self.mdns = Some(Sourced::cli(v, flag::MDNS));
        }
        if let Some(v) = &o.admin_listen {
            self.admin_listen = Some(Sourced::cli(v.clone(), flag::ADMIN_LISTEN));
        }
        if let Some(v) = &o.log_level {
            self.log_level = Some(Sourced::cli(v.clone(), flag::LOG_LEVEL));
        }
        if let Some(v) = &o.log_format {
            self.log_format = Some(Sourced::cli(v.clone(), flag::LOG_FORMAT));
        }
    }
}

const FOLDERS_FIX: &str = "write each folder as ID=PATH, comma-separated, \
     e.g. FLEETSYNC_FOLDERS=shared=/srv/shared,logs=/srv/logs";

/// `FLEETSYNC_FOLDERS=ID=PATH,ID2=PATH2`: the whole folder list (it
/// replaces the file's `[[folders]]`, as any list from a higher layer
/// does). Split at the first `=`: ids cannot hold one, paths may. The id
/// and path are checked later, like a file's, and errors name this variable.
fn parse_env_folders(name: &str, value: &str) -> Result<Vec<LayeredFolder>, ConfigError> {
    split_list(value)
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let bad = |problem: &str| {
                ConfigError::invalid(
                    "<env>",
                    name,
                    format!("entry {} {entry:?}: {problem}", i + 1),
                    FOLDERS_FIX,
                )
            };
            let (id, path) = entry.split_once('=').ok_or_else(|| bad("no '=' in it"))?;
            let (id, path) = (id.trim(), path.trim());
            if id.is_empty() {
                return Err(bad("the folder id before '=' is empty"));
            }
            if path.is_empty() {
                return Err(bad("the path after '=' is empty"));
            }
            Ok(LayeredFolder {
                id: Some(Sourced::env(id.to_string(), name)),
                path: Some(Sourced::env(PathBuf::from(path), name)),
                ..LayeredFolder::default()
            })
        })
        .collect()
}

/// Comma-separated list; blanks are dropped so `""` means an empty list and
/// a trailing comma is harmless.
fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_env_bool(name: &str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ConfigError::invalid(
            "<env>",
            name,
            format!("{value:?} is not a boolean"),
            "use true/false, 1/0 or yes/no",
        )),
    }
}

/// A whole number; the range is checked in validation, like a file value.
fn parse_env_int(name: &str, value: &str) -> Result<i64, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::invalid(
            "<env>",
            name,
            format!("{value:?} is not a whole number"),
            "use digits only, e.g. 5",
        )
    })
}

fn parse_env_fraction(name: &str, value: &str) -> Result<f64, ConfigError> {
    value.trim().parse().map_err(|_| {
        ConfigError::invalid(
            "<env>",
            name,
            format!("{value:?} is not a number"),
            "use a number above 0 and at most 1, e.g. 0.5",
        )
    })
}

/// The versions keys of a folder, flattened (each with its own origin).
fn versions_layer(raw: Option<RawVersions>, key: &dyn Fn(&str) -> String) -> LayeredFolder {
    match raw {
        None => LayeredFolder::default(),
        Some(RawVersions::Word(w)) => LayeredFolder {
            versions_word: Some(Sourced::file(w, key("versions"))),
            ..LayeredFolder::default()
        },
        Some(RawVersions::Table(t)) => LayeredFolder {
            versions_keep: t.keep.map(|v| Sourced::file(v, key("versions.keep"))),
            versions_max_bytes: t
                .max_bytes
                .map(|v| Sourced::file(v, key("versions.max_bytes"))),
            versions_local: t.local.map(|v| Sourced::file(v, key("versions.local"))),
            ..LayeredFolder::default()
        },
    }
}
