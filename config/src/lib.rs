//! fleetsync's configuration: where settings come from, how they combine,
//! and the checks they pass before the daemon starts.
//!
//! # Stages
//!
//! Loading runs in three stages, each in its own module, so that every value
//! can be traced back to the place the operator has to edit:
//!
//! 1. **Raw** (`raw`): the TOML text is parsed into a `toml::Table`, every
//!    key is checked against the documented key set and TOML type, and only
//!    then deserialised into serde structs (`#[serde(deny_unknown_fields)]`)
//!    whose fields are all `Option` — `None` means "the file did not say",
//!    which the next stage needs to tell a default from an explicit value.
//!    Checking keys ourselves (instead of relying on serde's error) is what
//!    makes a typo come out as one line naming `mesh.listn` or
//!    `folders[0].pth` together with the valid keys.
//! 2. **Layered** (`layer`): file values, then `FLEETSYNC_*` environment
//!    variables, then [`Overrides`] (command-line flags) are stacked. Each
//!    value carries its origin — file key, variable name or flag — so errors
//!    point at the right thing and relative paths get the right base.
//! 3. **Validated** (`validate`): the winning value of each setting is
//!    parsed into its type, defaults fill the gaps, paths are made absolute
//!    and cross-field rules are checked (folders must not overlap each other
//!    or `data_dir`, the admin API must be loopback-only, the supervisor's
//!    timings must fit each other, ...). The result is
//!    [`Config`]; the rest of the program trusts it without re-checking.
//!
//! [`Config::load`] → [`Config::load_with_env`] (reads the file) →
//! [`Config::from_toml_str`] (runs the three stages) is the call chain; the
//! later entry points exist so tests can supply their own file text and
//! environment. [`render_init_config`] writes the file `fleetsync init`
//! creates, which parses back to the values it was given.
//!
//! # Precedence
//!
//! Command-line flag > environment variable > config file > built-in default,
//! decided per setting. Lists (`mesh.peers`, `mesh.allow`) are replaced as a
//! whole by a higher layer, never merged. The fleet secret is one setting
//! with two spellings (`fleet_secret` / `fleet_secret_file`): a layer that
//! uses either spelling replaces both from lower layers, and one layer using
//! both at once is an error.
//!
//! # Environment variables
//!
//! Names are `FLEETSYNC_<SECTION>_<KEY>` in upper case: `FLEETSYNC_DATA_DIR`,
//! `FLEETSYNC_FOLDERS`, `FLEETSYNC_MESH_LISTEN`, `FLEETSYNC_MESH_FLEET_SECRET`,
//! `FLEETSYNC_MESH_FLEET_SECRET_FILE`, `FLEETSYNC_MESH_PEERS`,
//! `FLEETSYNC_MESH_MDNS`, `FLEETSYNC_MESH_ALLOW`, `FLEETSYNC_MESH_DENY`,
//! `FLEETSYNC_MESH_TICKET_PEERS`,
//! `FLEETSYNC_MESH_TRANSFER_STALL_TIMEOUT`, `FLEETSYNC_MESH_PEER_EXCHANGE`,
//! `FLEETSYNC_MESH_MAX_PEERS`, `FLEETSYNC_ADMIN_LISTEN`,
//! `FLEETSYNC_LOG_LEVEL`, `FLEETSYNC_LOG_FORMAT`,
//! `FLEETSYNC_SUPERVISOR_PING_INTERVAL`, `FLEETSYNC_SUPERVISOR_STALL_TIMEOUT`,
//! `FLEETSYNC_SUPERVISOR_MAX_RESTARTS`, `FLEETSYNC_SUPERVISOR_RESTART_WINDOW`,
//! `FLEETSYNC_DEBUG_FAULT_INJECTION`.
//!
//! * Lists (`PEERS`, `TICKET_PEERS`, `ALLOW`, `DENY`) are comma-separated; blank entries are dropped,
//!   so an empty value means an empty list.
//! * Booleans (`MDNS`, `PEER_EXCHANGE`, `FAULT_INJECTION`) accept
//!   true/false, 1/0, yes/no (any case); `MAX_RESTARTS` and `MAX_PEERS` are
//!   whole numbers.
//! * Values are trimmed of surrounding whitespace.
//! * `FLEETSYNC_FOLDERS=ID=PATH,ID2=PATH2` is the whole folder list: it
//!   replaces the file's `[[folders]]` (a list from a higher layer always
//!   replaces). Each entry splits at its first `=`.
//! * Folder settings are `FLEETSYNC_FOLDER_<ID>_<KEY>` with `<KEY>` one of
//!   `PATH`, `MODE`, `SETTLE`, `RESCAN`, `WATCH`, `POLL_INTERVAL`, `MIN_FREE`,
//!   `UMASK`. `<ID>` is
//!   the folder id upper-cased with every char outside `[A-Z0-9]` replaced
//!   by `_` (`shared-logs` → `FLEETSYNC_FOLDER_SHARED_LOGS_SETTLE`). They
//!   change a folder defined in the file or in `FLEETSYNC_FOLDERS`; they
//!   cannot create one. If two
//!   folder ids map to the same `<ID>`, setting such a variable is an error.
//! * Any other variable starting with `FLEETSYNC_` is an error naming it —
//!   a misspelt variable silently doing nothing is worse than refusing to
//!   start — except those in [`ENV_IGNORED`] (`FLEETSYNC_CONFIG`,
//!   `FLEETSYNC_LOG`), which other parts of the program read.
//!
//! # No config file
//!
//! [`Config::from_env`] builds a config from the variables alone (a
//! container): `FLEETSYNC_DATA_DIR` and the fleet secret are then required
//! (an error names the variable to set), `FLEETSYNC_FOLDERS` gives the
//! folders, everything else has its default.
//!
//! # Paths
//!
//! Relative paths in the file (`data_dir`, `folders[].path`,
//! `mesh.fleet_secret_file`) are resolved against the config file's
//! directory, so a config works whichever directory the daemon starts in.
//! Relative paths from env vars and flags are resolved against the current
//! directory, as a shell user would expect. `data_dir` defaults to the config
//! file's directory. Paths are normalised lexically; folder paths need not
//! exist (the daemon creates them). Besides the config file, the only I/O is
//! reading `fleet_secret_file` and `canonicalize()` of paths that exist, to
//! catch overlaps hidden behind symlinks.
//!
//! # Errors
//!
//! Loading stops at the first problem and reports it as one line:
//! `<where>: <key>: <problem> (fix: <fix>)`, where `<where>` is the config
//! file, `<env>` or `<cli>` and `<key>` is `mesh.peers[2]`, a variable name or
//! a flag such as `--listen`. Secret values are never echoed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod error;
mod layer;
mod raw;
mod render;
mod show;
mod space;
mod types;
mod validate;

#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub use render::render_init_config;
pub use show::{folder_values, Setting, Source, REDACTED};
pub use space::{parse_size, MinFree, Umask, DEFAULT_MIN_FREE_BYTES, DEFAULT_MIN_FREE_PERCENT};
pub use types::{
    check_host_name, parse_duration, parse_node_id, BearerToken, FleetSecret, FolderMode,
    LogFormat, NodeIdBytes, PeerAddr, PeerHost, WatchMode,
};

pub const DEFAULT_MESH_LISTEN: &str = "0.0.0.0:7300";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7380";
pub const CONFIG_FILE_NAME: &str = "fleetsync.toml";

/// `[supervisor] ping_interval`: often enough that a dead actor is noticed
/// within a second or two, rarely enough to cost nothing on an idle node.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(1);
/// `[supervisor] stall_timeout`: ten pings, and longer than any single
/// step of healthy work goes without reporting progress.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// `[supervisor] max_restarts`: a few restarts heal a transient wedge; more
/// than this within `restart_window` is a crash loop the process should not
/// hide from its service manager.
pub const DEFAULT_MAX_RESTARTS: usize = 5;
/// `[supervisor] restart_window`: the span `max_restarts` is counted over.
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(60);
/// `[mesh] transfer_stall_timeout`: long enough for a slow but live link to
/// deliver its next verified chunk, short enough that failing over to
/// another peer beats waiting.
pub const DEFAULT_TRANSFER_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// `[mesh] max_peers`: a full mesh up to 32 nodes; past it, a mesh of
/// bounded degree (every change still reaches every node, relayed).
pub const DEFAULT_MAX_PEERS: usize = 32;

/// `[[folders]] max_pending`: 100,000 waiting rows per peer (a few tens of
/// MB of index at most) is far more than one peer's normal backlog, so an
/// honest peer's initial sync of a large folder only paces itself to the
/// apply rate, while a member flooding entries stops there.
pub const DEFAULT_MAX_PENDING: u64 = 100_000;
/// `[[folders]] max_delete_fraction`: a burst of deletes from peers that
/// would remove more than half of a folder is held for the operator.
pub const DEFAULT_MAX_DELETE_FRACTION: f64 = 0.5;
/// The mass-delete guard looks only at folders holding at least this many
/// files: deleting most of a handful of files is ordinary work.
pub const DELETE_GUARD_MIN_FILES: u64 = 100;
/// Deletes from peers arriving within this window of each other count as
/// one burst.
pub const DELETE_BURST_WINDOW: Duration = Duration::from_secs(10);
/// A burst over the fraction waits this long before it is held: a big
/// rename's creates usually reach a peer within a second or two of its
/// deletes, and then the burst is a move, not a loss.
pub const DELETE_GRACE: Duration = Duration::from_secs(2);
/// `[[folders]] max_files`: 10 million paths, well above any folder a
/// fleet of this kind syncs, yet a bound on the index and inodes one
/// member's announcements can make this node create.
pub const DEFAULT_MAX_FILES: u64 = 10_000_000;

/// Every variable starting with this is either a config setting or an error.
pub const ENV_PREFIX: &str = "FLEETSYNC_";
/// `FLEETSYNC_*` variables that belong to other parts of the program (the
/// config file location, the log filter) and that the config ignores.
pub const ENV_IGNORED: &[&str] = &["FLEETSYNC_CONFIG", "FLEETSYNC_LOG"];

/// The command-line flag each [`Overrides`] field stands for. Errors about
/// an override use these as their key; the binary should declare its flags
/// under the same names so the message matches what the user typed.
pub mod flag {
    pub const DATA_DIR: &str = "--data-dir";
    pub const MESH_LISTEN: &str = "--listen";
    pub const ADMIN_LISTEN: &str = "--admin-listen";
    pub const PEERS: &str = "--peer";
    pub const MDNS: &str = "--mdns";
    pub const FLEET_SECRET: &str = "--fleet-secret";
    pub const LOG_LEVEL: &str = "--log-level";
    pub const LOG_FORMAT: &str = "--log-format";
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from (absolute).
    pub config_path: Option<PathBuf>,
    /// Absolute.
    pub data_dir: PathBuf,
    pub mesh: MeshConfig,
    pub admin: AdminConfig,
    /// `[metrics]`: the Prometheus listener, if configured.
    pub metrics: Option<MetricsConfig>,
    pub log: LogConfig,
    pub supervisor: SupervisorConfig,
    pub debug: DebugConfig,
    pub folders: Vec<FolderConfig>,
    /// Which layer set each key some layer set (file-style keys such as
    /// `mesh.listen`, `folders[0].settle`); a key not here is a default.
    /// See [`Config::settings`].
    pub origins: std::collections::BTreeMap<String, Source>,
}

#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub listen: SocketAddr,
    pub fleet_secret: FleetSecret,
    pub peers: Vec<PeerAddr>,
    pub mdns: bool,
    /// `None`: any node that knows the fleet secret.
    pub allow: Option<Vec<NodeIdBytes>>,
    /// Nodes refused although they may hold the secret (revoked members):
    /// never dialed, refused on every protocol, never passed on.
    pub deny: Vec<NodeIdBytes>,
    /// Peers written by `fleetsync join` from a ticket: dialed like
    /// `peers`, shown as found by `ticket`.
    pub ticket_peers: Vec<PeerAddr>,
    /// A fetch that receives no verified bytes for this long is cancelled
    /// and resumed with another peer. Between 1s and 1h.
    pub transfer_stall_timeout: Duration,
    /// Tell connected members which other members we know, and dial the
    /// ones they tell us of (one bootstrap peer is enough).
    pub peer_exchange: bool,
    /// Stop dialing peers learned by exchange once this many sessions are
    /// live (configured peers are always dialed). 1 to 1024.
    pub max_peers: usize,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Always a loopback address.
    pub listen: SocketAddr,
    /// `admin.socket`: where the admin API also listens on a Unix socket
    /// (mode 0660, the node's group), so members of that group reach it
    /// without reading this config.
    pub socket: AdminSocket,
}

/// `admin.socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminSocket {
    /// Not set: `$RUNTIME_DIRECTORY/admin.sock` when systemd gives the
    /// node a runtime directory, else `<data_dir>/admin.sock` (the node
    /// decides; the config does not read the environment beyond
    /// `FLEETSYNC_*`).
    Default,
    /// `admin.socket = "off"`: no socket.
    Off,
    /// An absolute path (a relative one is resolved like any other path).
    At(PathBuf),
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes
/// on Linux, one of them the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// `[metrics]`: a second HTTP listener serving only `/metrics`, for a
/// Prometheus server on another machine. Validated: a non-loopback
/// `listen` has a token.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
    /// Read from `bearer_token_file` at load; requests must send
    /// `Authorization: Bearer <token>`. `None` only on loopback.
    pub bearer_token: Option<BearerToken>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A tracing filter directive, e.g. `info,fleetsync=debug`.
    pub level: String,
    pub format: LogFormat,
}

/// How the supervisor judges and restarts actors. Validated: every duration
/// is positive, `ping_interval <= 1m`,
/// `2 * ping_interval <= stall_timeout <= 1h`,
/// `restart_window >= stall_timeout`, `1 <= max_restarts <= 1000`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// How often each actor is pinged.
    pub ping_interval: Duration,
    /// An actor with work pending and no progress for this long, or that
    /// has not answered a ping for this long, is replaced.
    pub stall_timeout: Duration,
    /// More restarts than this within `restart_window` and the process
    /// exits (code 70) for its service manager to restart it.
    pub max_restarts: usize,
    pub restart_window: Duration,
}

impl Default for SupervisorConfig {
    /// The built-in defaults, for code that runs without a config file.
    fn default() -> Self {
        SupervisorConfig {
            ping_interval: DEFAULT_PING_INTERVAL,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            max_restarts: DEFAULT_MAX_RESTARTS,
            restart_window: DEFAULT_RESTART_WINDOW,
        }
    }
}

/// Settings for tests and fault drills; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DebugConfig {
    /// Allow `fleetsync debug stall|panic|hang-fetch` through the admin
    /// API. Only valid while the admin API listens on loopback.
    pub fault_injection: bool,
}

#[derive(Debug, Clone)]
pub struct FolderConfig {
    pub id: String,
    /// Absolute; may not exist yet.
    pub path: PathBuf,
    pub mode: FolderMode,
    pub settle: Duration,
    pub rescan: Duration,
    pub watch: WatchMode,
    pub poll_interval: Duration,
    /// `max_pending`: remote changes one peer may have waiting (received,
    /// not applied yet) in this folder. Past it, that peer's further
    /// entries are deferred — not acknowledged, so it offers them again
    /// once its rows drain — and counted. Default [`DEFAULT_MAX_PENDING`].
    pub max_pending: u64,
    /// `max_files`: paths this folder's index may hold (files, directories,
    /// symlinks, remembered deletions, and pending remote changes). Past
    /// it, remote entries for new paths are deferred and status shows the
    /// folder as full; changes to paths it holds still apply. Default
    /// [`DEFAULT_MAX_FILES`].
    pub max_files: u64,
    /// `min_free`: space a fetch must leave free, beyond the announced size,
    /// on the folder's filesystem and on the one holding `data_dir` (blob
    /// store and index). A size ("1GiB", "500MB", "0") or a share of the
    /// filesystem ("5%", at most 50%). Default: the smaller of 1 GiB and 5%.
    pub min_free: MinFree,
    /// `umask`: permission bits a received file or directory never gets
    /// (octal, default "022"). Only the executable bits are synced: a
    /// received file gets `0o666 & !umask` plus the sender's exec bits
    /// `& !umask`; a directory `0o777 & !umask`.
    pub umask: Umask,
    /// `max_delete_fraction`: the mass-delete guard. When deletes arriving
    /// from peers in one burst (one batch, or several within
    /// [`DELETE_BURST_WINDOW`]) would remove more than this share of a
    /// folder holding at least [`DELETE_GUARD_MIN_FILES`] files, the folder
    /// holds its deletes from peers until `fleetsync folder resume`.
    /// Above 0, at most 1 (1 turns the guard off). Default
    /// [`DEFAULT_MAX_DELETE_FRACTION`].
    pub max_delete_fraction: f64,
    /// `tombstone_ttl`: how long a deletion is remembered ("180d" by
    /// default, at least "1s"). A tombstone older than this is forgotten
    /// once every peer seen within the TTL has read past it; a peer that
    /// comes back after missing forgotten deletions is told to rescan.
    pub tombstone_ttl: Duration,
    /// `versions`: previous contents kept when a sync overwrites or deletes
    /// a file (`<folder>/.fleetsync/versions/`). `versions = { keep =
    /// "30d", max_bytes = "1GiB", local = false }` (those are the
    /// defaults, each key optional) or `versions = "off"`.
    pub versions: VersionsPolicy,
}

/// `[[folders]] versions`: what a folder keeps of replaced content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionsPolicy {
    /// False with `versions = "off"`: nothing new is kept (versions kept
    /// earlier can still be listed, read and restored, and still expire).
    pub enabled: bool,
    /// `keep`: a version older than this goes. Default 30 days.
    pub keep: Duration,
    /// `max_bytes`: the versions of the folder take at most this much disk
    /// (compressed); past it the oldest go. Default 1 GiB.
    pub max_bytes: u64,
    /// `local`: also keep what the node's own user deleted or replaced
    /// (from the node's `refs/` copy of the synced content, when it is
    /// still intact). Default false.
    pub local: bool,
}

/// `versions.keep`'s default.
pub const DEFAULT_VERSIONS_KEEP: Duration = Duration::from_secs(30 * 24 * 3600);
/// `versions.max_bytes`'s default.
pub const DEFAULT_VERSIONS_MAX_BYTES: u64 = 1 << 30;

impl Default for VersionsPolicy {
    fn default() -> Self {
        VersionsPolicy {
            enabled: true,
            keep: DEFAULT_VERSIONS_KEEP,
            max_bytes: DEFAULT_VERSIONS_MAX_BYTES,
            local: false,
        }
    }
}

impl VersionsPolicy {
    /// `versions = "off"`.
    pub fn off() -> Self {
        VersionsPolicy {
            enabled: false,
            ..Self::default()
        }
    }
}

/// CLI flags the node binary may pass; `None` = not given. See [`flag`] for
/// the flag name each field is reported as.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub mesh_listen: Option<String>,
    pub admin_listen: Option<String>,
    /// Replaces the configured peer list.
    pub peers: Option<Vec<String>>,
    pub mdns: Option<bool>,
    pub fleet_secret: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

/// Input for [`render_init_config`].
pub struct InitParams {
    pub data_dir: PathBuf,
    /// `(id, path)` per folder.
    pub folders: Vec<(String, PathBuf)>,
    pub fleet_secret: FleetSecret,
    pub mesh_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub peers: Vec<PeerAddr>,
    /// Peers from a join ticket (`fleetsync join`).
    pub ticket_peers: Vec<PeerAddr>,
    pub mdns: bool,
}

impl Config {
    /// Read the file (must exist), apply the process environment, then
    /// `overrides`, and validate.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_with_env(path, process_env()?, overrides)
    }

    /// Like [`Config::load`], with the environment given explicitly.
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            let fix = match source.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "create it with \"fleetsync init\" or pass the path of an existing {CONFIG_FILE_NAME}"
                ),
                std::io::ErrorKind::PermissionDenied => {
                    "make the file readable by the user fleetsync runs as".to_string()
                }
                std::io::ErrorKind::InvalidData => "save the file as UTF-8 text".to_string(),
                _ => "check that the path names a readable file".to_string(),
            };
            ConfigError::Read {
                path: path.to_path_buf(),
                source,
                fix,
            }
        })?;
        Self::from_toml_str(&text, path, env, overrides)
    }

    /// Parse `text` as if it were the file at `path` (which is not read; it
    /// only names the file in errors and anchors relative paths).
    pub fn from_toml_str(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let config_path = if path.is_absolute() {
            validate::normalize(path)
        } else {
            let cwd = std::env::current_dir().map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
                fix: "pass an absolute config path".to_string(),
            })?;
            validate::normalize(&cwd.join(path))
        };
        let ctx = validate::Ctx {
            file_label: path.display().to_string(),
            config_dir: Some(
                config_path
                    .parent()
                    .map_or_else(|| config_path.clone(), Path::to_path_buf),
            ),
            config_path: Some(config_path),
        };
        let raw = raw::parse(text, &ctx.file_label)?;
        let mut layered = layer::Layered::from_raw(raw);
        layered.apply_env(env)?;
        layered.apply_overrides(overrides);
        validate::validate(layered, &ctx)
    }

    /// No config file: `env` (`FLEETSYNC_*`, as [`process_env`] gives
    /// them), then `overrides`, over the built-in defaults. For containers.
    /// `FLEETSYNC_DATA_DIR` and the fleet secret (`FLEETSYNC_MESH_FLEET_SECRET`
    /// or `..._FILE`) are required; `FLEETSYNC_FOLDERS` lists the folders
    /// (none: a relay node, as with a file). Relative paths are taken from
    /// the current directory. The result's `config_path` is `None`.
    pub fn from_env(
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let ctx = validate::Ctx {
            file_label: "<no config file>".to_string(),
            config_path: None,
            config_dir: None,
        };
        let mut layered = layer::Layered::default();
        layered.apply_env(env)?;
        layered.apply_overrides(overrides);
        validate::validate(layered, &ctx)
    }

    /// The folder with this id.
    pub fn folder(&self, id: &str) -> Option<&FolderConfig> {
        self.folders.iter().find(|f| f.id == id)
    }
}

/// The process's `FLEETSYNC_*` variables, as [`Config::load`] applies
/// them; public so commands that write a config (`fleetsync join`) can
/// validate it against the same environment the daemon will see.
/// `std::env::vars()` would panic on any non-Unicode variable, even one
/// unrelated to fleetsync, so read the raw environment and only insist on
/// Unicode for our own variables.
pub fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str().filter(|n| n.starts_with(ENV_PREFIX)) else {
            continue;
        };
        match value.into_string() {
            Ok(value) => vars.push((name.to_string(), value)),
            Err(_) if ENV_IGNORED.contains(&name) => {}
            Err(_) => {
                return Err(ConfigError::invalid(
                    "<env>",
                    name,
                    "value is not valid UTF-8",
                    "set it to UTF-8 text, or use the config file",
                ))
            }
        }
    }
    Ok(vars)
}

/// The closest candidate to a misspelt name, if one is close enough to be a
/// plausible typo.
fn suggest<'a>(wrong: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let wrong_lc = wrong.to_ascii_lowercase();
    candidates
        .map(|c| (strsim::levenshtein(&wrong_lc, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len() / 3).clamp(1, 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
