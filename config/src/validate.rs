//! Stage 3: layered values → typed, defaulted, cross-checked [`Config`].

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::error::ConfigError;
use crate::layer::{
    Layered, LayeredFolder, LayeredSupervisor, Origin, Sourced, ENV_DATA_DIR,
    ENV_MESH_FLEET_SECRET, ENV_MESH_FLEET_SECRET_FILE,
};
use crate::types::{parse_duration, parse_node_id, BearerToken, Choices, FleetSecret, PeerAddr};
use crate::{
    AdminConfig, AdminSocket, Config, DebugConfig, FolderConfig, FolderMode, LogConfig, LogFormat,
    MeshConfig, MetricsConfig, MinFree, SupervisorConfig, Umask, WatchMode, DEFAULT_ADMIN_LISTEN,
    DEFAULT_MAX_DELETE_FRACTION, DEFAULT_MAX_FILES, DEFAULT_MAX_PEERS, DEFAULT_MAX_PENDING,
    DEFAULT_MAX_RESTARTS, DEFAULT_MESH_LISTEN, DEFAULT_PING_INTERVAL, DEFAULT_RESTART_WINDOW,
    DEFAULT_STALL_TIMEOUT, DEFAULT_TRANSFER_STALL_TIMEOUT, MAX_SOCKET_PATH,
};

pub(crate) const DEFAULT_LOG_LEVEL: &str = "info";
pub(crate) const DEFAULT_SETTLE: Duration = Duration::from_millis(200);
pub(crate) const DEFAULT_RESCAN: Duration = Duration::from_secs(3600);
pub(crate) const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Longer than this and a "settle" is really a sync outage.
const MAX_SETTLE: Duration = Duration::from_secs(3600);
/// A full rescan walks the whole tree; sub-second rescans just burn CPU.
const MIN_RESCAN: Duration = Duration::from_secs(1);
/// `[[folders]] tombstone_ttl` default: 180 days.
pub(crate) const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(180 * 24 * 3600);
const MIN_TOMBSTONE_TTL: Duration = Duration::from_secs(1);
/// Pinged less often than this, a dead actor goes unnoticed for minutes.
const MAX_PING_INTERVAL: Duration = Duration::from_secs(60);
/// An actor stuck longer than this holds its folder still for over an hour:
/// that is an outage, not patience.
const MAX_STALL_TIMEOUT: Duration = Duration::from_secs(3600);
/// `stall_timeout` spans at least this many pings, so a healthy actor is
/// never judged on one late pong between two pings.
const MIN_PINGS_PER_STALL: u32 = 2;
/// At least one restart must be allowed, or the first stall ends the node.
const MIN_MAX_RESTARTS: usize = 1;
/// Sessions cost a few hundred KiB each; past this a node is a hub, not a
/// fleet member.
const MAX_MAX_PEERS: usize = 1024;
/// `max_pending` / `max_files` above this are no cap at all: the index of a
/// billion paths does not fit a node this daemon runs on.
const MAX_FOLDER_CAP: u64 = 1_000_000_000;
/// Beyond this a crash loop never exhausts its budget.
const MAX_MAX_RESTARTS: usize = 1000;
/// Shorter, and the ordinary pauses of a healthy transfer (a dial, a
/// congested link) would count as stalls.
const MIN_TRANSFER_STALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Longer, and a hung peer holds a file back for over an hour.
const MAX_TRANSFER_STALL_TIMEOUT: Duration = Duration::from_secs(3600);

const MESH_LISTEN_FIX: &str =
    "use <ip>:<port>, e.g. \"0.0.0.0:7300\" (all IPv4 interfaces) or \"[::]:7300\"";
const ADMIN_LISTEN_FIX: &str = "use <ip>:<port> on a loopback address, e.g. \"127.0.0.1:7380\"";
const SECRET_FIX: &str =
    "use 64 hex chars (32 bytes), e.g. from `openssl rand -hex 32`, or run \"fleetsync init\"";
const PEER_FIX: &str =
    "write each peer as \"<64-hex node id>@<ip>:<port>\" (IPv6: \"<64-hex node id>@[::1]:7300\") \
     or \"<64-hex node id>@<host name>:<port>\"";
const NODE_ID_FIX: &str = "a node id is 64 hex chars (32 bytes), the node's public key";
const DURATION_FIX: &str = "use a number with a unit, e.g. \"200ms\", \"5s\", \"1h\"";

/// What validation needs to know about the file being loaded.
pub(crate) struct Ctx {
    /// How errors name the file: the path as the caller gave it.
    pub file_label: String,
    /// Absolute, lexically normalised. `None`: no file, the config comes
    /// from `FLEETSYNC_*` variables alone ([`crate::Config::from_env`]).
    pub config_path: Option<PathBuf>,
    /// Base for relative paths written in the file (`None` with no file).
    pub config_dir: Option<PathBuf>,
}

impl Ctx {
    fn err(
        &self,
        origin: &Origin,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        let path = match origin {
            Origin::File(_) => self.file_label.as_str(),
            Origin::Env(_) => "<env>",
            Origin::Cli(_) => "<cli>",
        };
        ConfigError::invalid(path, origin.key(), problem, fix)
    }

    /// Error about entry `i` of a list value. The file has a key per entry
    /// (`mesh.peers[2]`); env vars and flags don't, so the problem says which.
    fn item_err(
        &self,
        origin: &Origin,
        i: usize,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        match origin {
            Origin::File(key) => self.err(&Origin::File(format!("{key}[{i}]")), problem, fix),
            _ => self.err(origin, format!("entry {}: {}", i + 1, problem.into()), fix),
        }
    }

    /// Make a path absolute. File values are relative to the config file's
    /// directory (so a config keeps working whatever directory the daemon is
    /// started from); env and CLI values are relative to the current
    /// directory, as for any other command-line tool.
    fn resolve(&self, p: &Sourced<PathBuf>) -> Result<PathBuf, ConfigError> {
        if p.value.as_os_str().is_empty() {
            return Err(self.err(&p.origin, "path is empty", "set a directory path"));
        }
        if p.value.is_absolute() {
            return Ok(normalize(&p.value));
        }
        let base = match (&p.origin, &self.config_dir) {
            (Origin::File(_), Some(dir)) => dir.clone(),
            _ => std::env::current_dir().map_err(|e| {
                self.err(
                    &p.origin,
                    format!("relative path but the current directory is unavailable: {e}"),
                    "use an absolute path",
                )
            })?,
        };
        Ok(normalize(&base.join(&p.value)))
    }
}

/// Lexical normalisation: drop `.`, fold `..`. No I/O, so it works for
/// folders the daemon has yet to create.
pub(crate) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                // At the root `..` stays at the root, as the kernel does.
                if out.file_name().is_some() {
                    out.pop();
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

pub(crate) fn validate(l: Layered, ctx: &Ctx) -> Result<Config, ConfigError> {
    let origins = crate::show::origins(&l);
    let data_dir =
        match (&l.data_dir, &ctx.config_dir) {
            (Some(d), _) => ctx.resolve(d)?,
            (None, Some(dir)) => dir.clone(),
            (None, None) => return Err(ctx.err(
                &Origin::Env(ENV_DATA_DIR.into()),
                "not set; without a config file the data directory must come from the environment",
                format!(
                    "set {ENV_DATA_DIR}=/var/lib/fleetsync (identity, index and blob store \
                     live there; a volume in a container), or pass --config FILE"
                ),
            )),
        };

    let mesh = MeshConfig {
        listen: listen_addr(
            ctx,
            l.mesh_listen.as_ref(),
            DEFAULT_MESH_LISTEN,
            MESH_LISTEN_FIX,
        )?,
        fleet_secret: fleet_secret(ctx, &l)?,
        peers: peers(ctx, l.peers.as_ref())?,
        mdns: l.mdns.as_ref().is_none_or(|m| m.value),
        allow: node_ids(ctx, l.allow.as_ref())?,
        deny: node_ids(ctx, l.deny.as_ref())?.unwrap_or_default(),
        ticket_peers: peers(ctx, l.ticket_peers.as_ref())?,
        transfer_stall_timeout: ruled_duration(
            ctx,
            l.transfer_stall_timeout.as_ref(),
            &TRANSFER_STALL_TIMEOUT,
        )?
        .value,
        peer_exchange: l.peer_exchange.as_ref().is_none_or(|m| m.value),
        max_peers: max_peers(ctx, l.max_peers.as_ref())?,
    };

    let admin_listen = listen_addr(
        ctx,
        l.admin_listen.as_ref(),
        DEFAULT_ADMIN_LISTEN,
        ADMIN_LISTEN_FIX,
    )?;
    if !admin_listen.ip().is_loopback() {
        let origin = l.admin_listen.as_ref().map(|s| &s.origin);
        return Err(ctx.err(
            origin.expect("the default admin address is loopback"),
            format!(
                "{admin_listen} is not a loopback address; the admin API is unauthenticated \
                 and must only be reachable from this machine"
            ),
            format!("use a loopback address, e.g. \"{DEFAULT_ADMIN_LISTEN}\""),
        ));
    }

    let metrics = metrics(ctx, &l)?;
    let log = LogConfig {
        level: log_level(ctx, l.log_level.as_ref())?,
        format: parse_enum(ctx, l.log_format.as_ref(), LogFormat::Human)?,
    };
    let supervisor = supervisor(ctx, &l.supervisor)?;
    let debug = debug(ctx, l.fault_injection.as_ref(), admin_listen)?;

    let mut folders: Vec<FolderConfig> = Vec::with_capacity(l.folders.len());
    for (i, f) in l.folders.iter().enumerate() {
        let folder = folder(ctx, i, f, &data_dir, &folders)?;
        folders.push(folder);
    }

    Ok(Config {
        config_path: ctx.config_path.clone(),
        data_dir,
        mesh,
        admin: AdminConfig {
            listen: admin_listen,
            socket: admin_socket(ctx, l.admin_socket.as_ref())?,
        },
        metrics,
        log,
        supervisor,
        debug,
        folders,
        origins,
    })
}

/// `admin.socket`: a path no longer than a socket address holds, or `off`.
fn admin_socket(ctx: &Ctx, value: Option<&Sourced<String>>) -> Result<AdminSocket, ConfigError> {
    let Some(v) = value else {
        return Ok(AdminSocket::Default);
    };
    if v.value.trim().eq_ignore_ascii_case("off") {
        return Ok(AdminSocket::Off);
    }
    let path = ctx.resolve(&Sourced {
        value: PathBuf::from(v.value.trim()),
        origin: v.origin.clone(),
    })?;
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(ctx.err(
            &v.origin,
            format!(
                "{} is {len} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH}",
                path.display()
            ),
            "use a shorter path, e.g. \"/run/fleetsync/admin.sock\", or \"off\"",
        ));
    }
    Ok(AdminSocket::At(path))
}

fn listen_addr(
    ctx: &Ctx,
    value: Option<&Sourced<String>>,
    default: &str,
    fix: &str,
) -> Result<SocketAddr, ConfigError> {
    let Some(v) = value else {
        return Ok(default.parse().expect("default listen address parses"));
    };
    v.value.trim().parse().map_err(|_| {
        ctx.err(
            &v.origin,
            format!(
                "{:?} is not an <ip>:<port> socket address (host names are not accepted)",
                v.value
            ),
            fix,
        )
    })
}

fn fleet_secret(ctx: &Ctx, l: &Layered) -> Result<FleetSecret, ConfigError> {
    for layer in &l.secret_layers {
        if let (Some(inline), Some(_)) = (&layer.inline, &layer.file) {
            return Err(ctx.err(
                &inline.origin,
                "both fleet_secret and fleet_secret_file are set",
                "keep only one of them",
            ));
        }
    }
    let winner = l
        .secret_layers
        .iter()
        .rev()
        .find(|layer| layer.inline.is_some() || layer.file.is_some());
    match winner {
        Some(layer) => {
            if let Some(inline) = &layer.inline {
                // The error from from_hex names the length, never the value.
                FleetSecret::from_hex(inline.value.trim()).map_err(|e| {
                    ctx.err(
                        &inline.origin,
                        format!("invalid fleet secret: {e}"),
                        SECRET_FIX,
                    )
                })
            } else {
                let file = layer.file.as_ref().expect("winning layer has a value");
                let path = ctx.resolve(file)?;
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ctx.err(
                        &file.origin,
                        format!("cannot read secret file {}: {e}", path.display()),
                        "point fleet_secret_file at a readable file holding 64 hex chars",
                    )
                })?;
                FleetSecret::from_hex(text.trim()).map_err(|e| {
                    ctx.err(
                        &file.origin,
                        format!("secret file {} is invalid: {e}", path.display()),
                        SECRET_FIX,
                    )
                })
            }
        }
        None if ctx.config_path.is_none() => Err(ctx.err(
            &Origin::Env(ENV_MESH_FLEET_SECRET.into()),
            "no fleet secret: without a config file it must come from the environment",
            format!(
                "set {ENV_MESH_FLEET_SECRET_FILE}=/path/to/fleet.secret (a file holding 64 hex \
                 chars, e.g. a container secret) or {ENV_MESH_FLEET_SECRET}=<64 hex chars> \
                 (make one with `openssl rand -hex 32`; the same on every node of the fleet)"
            ),
        )),
        None => Err(ctx.err(
            &Origin::File("mesh.fleet_secret".into()),
            "no fleet secret configured (neither fleet_secret nor fleet_secret_file is set)",
            "run \"fleetsync init\" or set fleet_secret = \"<64 hex chars>\" in [mesh] \
             (or fleet_secret_file, or FLEETSYNC_MESH_FLEET_SECRET)",
        )),
    }
}

fn peers(ctx: &Ctx, value: Option<&Sourced<Vec<String>>>) -> Result<Vec<PeerAddr>, ConfigError> {
    let Some(v) = value else {
        return Ok(Vec::new());
    };
    v.value
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<PeerAddr>()
                .map_err(|e| ctx.item_err(&v.origin, i, format!("invalid peer: {e}"), PEER_FIX))
        })
        .collect()
}

/// A list of node ids (`allow`, `deny`), each checked and named on error.
fn node_ids(
    ctx: &Ctx,
    value: Option<&Sourced<Vec<String>>>,
) -> Result<Option<Vec<[u8; 32]>>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    v.value
        .iter()
        .enumerate()
        .map(|(i, s)| {
            parse_node_id(s.trim()).map_err(|e| {
                ctx.item_err(&v.origin, i, format!("invalid node id: {e}"), NODE_ID_FIX)
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn log_level(ctx: &Ctx, value: Option<&Sourced<String>>) -> Result<String, ConfigError> {
    let Some(v) = value else {
        return Ok(DEFAULT_LOG_LEVEL.to_string());
    };
    // The directive grammar belongs to tracing-subscriber, which parses it
    // at startup; only catch what is certainly wrong here.
    let level = v.value.trim();
    if level.is_empty() || level.contains(char::is_whitespace) {
        return Err(ctx.err(
            &v.origin,
            format!("{:?} is not a tracing filter directive", v.value),
            "use e.g. \"info\", \"debug\" or \"info,fleetsync=debug\" (no spaces)",
        ));
    }
    Ok(level.to_string())
}

fn parse_enum<T>(ctx: &Ctx, value: Option<&Sourced<String>>, default: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr<Err = String> + Choices,
{
    let Some(v) = value else { return Ok(default) };
    v.value
        .trim()
        .parse::<T>()
        .map_err(|e| ctx.err(&v.origin, e, format!("use one of {}", T::choices())))
}

fn duration<'a>(
    ctx: &Ctx,
    value: Option<&'a Sourced<String>>,
    default: Duration,
) -> Result<(Duration, Option<&'a Origin>), ConfigError> {
    let Some(v) = value else {
        return Ok((default, None));
    };
    let d = parse_duration(&v.value).map_err(|_| {
        ctx.err(
            &v.origin,
            format!("{:?} is not a duration", v.value),
            DURATION_FIX,
        )
    })?;
    Ok((d, Some(&v.origin)))
}

/// A duration setting's accepted range and purpose, so that every bound
/// error names the key, the limit and what the setting is for.
struct DurationRule {
    /// The file key; a defaulted value is reported here, where it would be set.
    key: &'static str,
    default: Duration,
    /// Inclusive. Zero is never accepted, whatever this says.
    min: Duration,
    /// Inclusive; `None`: no upper bound.
    max: Option<Duration>,
    /// What the setting does, for the fix text.
    what: &'static str,
}

const PING_INTERVAL: DurationRule = DurationRule {
    key: "supervisor.ping_interval",
    default: DEFAULT_PING_INTERVAL,
    min: Duration::ZERO,
    max: Some(MAX_PING_INTERVAL),
    what: "how often the supervisor pings each actor",
};
const STALL_TIMEOUT: DurationRule = DurationRule {
    key: "supervisor.stall_timeout",
    default: DEFAULT_STALL_TIMEOUT,
    min: Duration::ZERO,
    max: Some(MAX_STALL_TIMEOUT),
    what: "how long an actor may show no progress before it is replaced",
};
const RESTART_WINDOW: DurationRule = DurationRule {
    key: "supervisor.restart_window",
    default: DEFAULT_RESTART_WINDOW,
    min: Duration::ZERO,
    max: None,
    what: "the span max_restarts is counted over",
};
const TRANSFER_STALL_TIMEOUT: DurationRule = DurationRule {
    key: "mesh.transfer_stall_timeout",
    default: DEFAULT_TRANSFER_STALL_TIMEOUT,
    min: MIN_TRANSFER_STALL_TIMEOUT,
    max: Some(MAX_TRANSFER_STALL_TIMEOUT),
    what: "how long a transfer may receive no verified bytes before it moves to another peer",
};

/// A validated duration and where it came from; a default is attributed to
/// its file key.
struct Timed {
    value: Duration,
    origin: Origin,
    explicit: bool,
}

fn ruled_duration(
    ctx: &Ctx,
    value: Option<&Sourced<String>>,
    rule: &DurationRule,
) -> Result<Timed, ConfigError> {
    let (value, origin) = duration(ctx, value, rule.default)?;
    let Some(origin) = origin else {
        return Ok(Timed {
            value,
            origin: Origin::File(rule.key.to_string()),
            explicit: false,
        });
    };
    let name = short_key(rule.key);
    let (what, default) = (rule.what, human(rule.default));
    if value.is_zero() {
        return Err(ctx.err(
            origin,
            format!("{name} is 0"),
            format!("use a positive duration, e.g. \"{default}\" (the default; {what})"),
        ));
    }
    if value < rule.min {
        return Err(ctx.err(
            origin,
            format!(
                "{name} {} is shorter than {}",
                human(value),
                human(rule.min)
            ),
            format!(
                "use a {name} of at least \"{}\" ({what}; default \"{default}\")",
                human(rule.min)
            ),
        ));
    }
    if let Some(max) = rule.max.filter(|max| value > *max) {
        return Err(ctx.err(
            origin,
            format!("{name} {} is longer than {}", human(value), human(max)),
            format!(
                "use a {name} of at most \"{}\" ({what}; default \"{default}\")",
                human(max)
            ),
        ));
    }
    Ok(Timed {
        value,
        origin: origin.clone(),
        explicit: true,
    })
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `supervisor.stall_timeout` → `stall_timeout`.
fn short_key(key: &str) -> &str {
    key.rsplit_once('.').map_or(key, |(_, k)| k)
}

fn supervisor(ctx: &Ctx, s: &LayeredSupervisor) -> Result<SupervisorConfig, ConfigError> {
    let ping = ruled_duration(ctx, s.ping_interval.as_ref(), &PING_INTERVAL)?;
    let stall = ruled_duration(ctx, s.stall_timeout.as_ref(), &STALL_TIMEOUT)?;
    let max_restarts = max_restarts(ctx, s.max_restarts.as_ref())?;
    let window = ruled_duration(ctx, s.restart_window.as_ref(), &RESTART_WINDOW)?;
    if stall.value < ping.value * MIN_PINGS_PER_STALL {
        return Err(ctx.err(
            blame(&stall, &ping),
            format!(
                "stall_timeout {} is less than {MIN_PINGS_PER_STALL} × ping_interval {}; \
                 an actor would be judged stalled between two pings",
                human(stall.value),
                human(ping.value)
            ),
            format!(
                "set stall_timeout to at least \"{}\" or ping_interval to at most \"{}\"",
                human(ping.value * MIN_PINGS_PER_STALL),
                human(stall.value / MIN_PINGS_PER_STALL)
            ),
        ));
    }
    if window.value < stall.value {
        return Err(ctx.err(
            blame(&window, &stall),
            format!(
                "restart_window {} is shorter than stall_timeout {}; restarts after stalls \
                 could never add up to max_restarts within it, so a stall loop would never end",
                human(window.value),
                human(stall.value)
            ),
            format!(
                "set restart_window to at least \"{}\" or stall_timeout to at most \"{}\"",
                human(stall.value),
                human(window.value)
            ),
        ));
    }
    Ok(SupervisorConfig {
        ping_interval: ping.value,
        stall_timeout: stall.value,
        max_restarts,
        restart_window: window.value,
    })
}

/// Which of two settings a rule between them is reported against: the
/// dependent one if it was set, else the other. The defaults satisfy every
/// rule, so when a rule fails at least one of them was set.
fn blame<'a>(dependent: &'a Timed, other: &'a Timed) -> &'a Origin {
    if dependent.explicit || !other.explicit {
        &dependent.origin
    } else {
        &other.origin
    }
}

fn max_peers(ctx: &Ctx, value: Option<&Sourced<i64>>) -> Result<usize, ConfigError> {
    let Some(v) = value else {
        return Ok(DEFAULT_MAX_PEERS);
    };
    usize::try_from(v.value)
        .ok()
        .filter(|n| (1..=MAX_MAX_PEERS).contains(n))
        .ok_or_else(|| {
            ctx.err(
                &v.origin,
                format!("max_peers {} is outside 1-{MAX_MAX_PEERS}", v.value),
                format!(
                    "use a whole number from 1 to {MAX_MAX_PEERS}: how many live sessions a node \
                     keeps before it stops dialing peers it learned of (default {DEFAULT_MAX_PEERS})"
                ),
            )
        })
}

fn max_restarts(ctx: &Ctx, value: Option<&Sourced<i64>>) -> Result<usize, ConfigError> {
    let Some(v) = value else {
        return Ok(DEFAULT_MAX_RESTARTS);
    };
    let in_range = usize::try_from(v.value)
        .ok()
        .filter(|n| (MIN_MAX_RESTARTS..=MAX_MAX_RESTARTS).contains(n));
    in_range.ok_or_else(|| {
        let too_few = usize::try_from(v.value).map_or(true, |n| n < MIN_MAX_RESTARTS);
        let why = if too_few {
            "the first stall would end the node"
        } else {
            "a crash loop would never exhaust it"
        };
        ctx.err(
            &v.origin,
            format!(
                "max_restarts {} is outside {MIN_MAX_RESTARTS}-{MAX_MAX_RESTARTS}; {why}",
                v.value
            ),
            format!(
                "use a whole number from {MIN_MAX_RESTARTS} to {MAX_MAX_RESTARTS}: the restarts \
                 allowed within restart_window before the node exits for its service manager \
                 to restart it (default {DEFAULT_MAX_RESTARTS})"
            ),
        )
    })
}

const METRICS_LISTEN_FIX: &str =
    "set metrics.listen to an <ip>:<port> address, e.g. \"0.0.0.0:9380\" (with bearer_token_file) \
     or \"127.0.0.1:9380\"";

/// `[metrics]`: `None` without `listen`. Metrics tell a stranger the
/// fleet's peers and folders, so a listener reachable from other machines
/// needs a token; the token file is read here so that a bad one stops the
/// start (or a reload) with its key named.
fn metrics(ctx: &Ctx, l: &Layered) -> Result<Option<MetricsConfig>, ConfigError> {
    let Some(listen_v) = l.metrics_listen.as_ref() else {
        if let Some(f) = &l.metrics_token_file {
            return Err(ctx.err(
                &f.origin,
                "bearer_token_file is set but metrics.listen is not, so nothing serves metrics",
                "add listen = \"0.0.0.0:9380\" to [metrics], or remove bearer_token_file",
            ));
        }
        return Ok(None);
    };
    let listen = listen_addr(ctx, Some(listen_v), "", METRICS_LISTEN_FIX)?;
    let bearer_token = match &l.metrics_token_file {
        Some(f) => Some(bearer_token(ctx, f)?),
        None if !listen.ip().is_loopback() => {
            return Err(ctx.err(
                &listen_v.origin,
                format!(
                    "{listen} is not a loopback address and [metrics] has no bearer_token_file; \
                     anyone who reaches it would read this node's peers and folders"
                ),
                "add bearer_token_file = \"/etc/fleetsync/metrics.token\" to [metrics] \
                 (a file holding one token, e.g. from: openssl rand -hex 32), \
                 or listen on \"127.0.0.1:9380\"",
            ));
        }
        None => None,
    };
    Ok(Some(MetricsConfig {
        listen,
        bearer_token,
    }))
}

/// The token in `bearer_token_file` (trimmed); an unreadable, empty or
/// blank-containing file is an error naming the key.
fn bearer_token(ctx: &Ctx, file: &Sourced<PathBuf>) -> Result<BearerToken, ConfigError> {
    let path = ctx.resolve(file)?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ctx.err(
            &file.origin,
            format!("cannot read token file {}: {e}", path.display()),
            "point bearer_token_file at a file this user can read, holding one token \
             (e.g. openssl rand -hex 32 > FILE; chmod 600 FILE)",
        )
    })?;
    BearerToken::parse(&text).ok_or_else(|| {
        ctx.err(
            &file.origin,
            format!(
                "token file {} is empty or holds whitespace inside the token",
                path.display()
            ),
            "write one token without spaces into it, e.g. openssl rand -hex 32 > FILE",
        )
    })
}

/// Fault injection lets whoever reaches the admin API stall or crash this
/// node, so it is only allowed while that API is loopback-only. The admin
/// address is already required to be loopback; this check keeps the rule
/// true should that requirement ever be relaxed.
pub(crate) fn debug(
    ctx: &Ctx,
    fault_injection: Option<&Sourced<bool>>,
    admin_listen: SocketAddr,
) -> Result<DebugConfig, ConfigError> {
    let Some(on) = fault_injection.filter(|f| f.value) else {
        return Ok(DebugConfig::default());
    };
    if !admin_listen.ip().is_loopback() {
        return Err(ctx.err(
            &on.origin,
            format!(
                "fault injection is on while the admin API listens on {admin_listen}, \
                 which is not loopback; anyone who reaches it could stall or crash this node"
            ),
            format!(
                "set fault_injection = false, or admin.listen to a loopback address such as \
                 \"{DEFAULT_ADMIN_LISTEN}\""
            ),
        ));
    }
    Ok(DebugConfig {
        fault_injection: true,
    })
}

fn folder(
    ctx: &Ctx,
    i: usize,
    f: &LayeredFolder,
    data_dir: &Path,
    earlier: &[FolderConfig],
) -> Result<FolderConfig, ConfigError> {
    let key = |k: &str| Origin::File(format!("folders[{i}].{k}"));

    let Some(id) = &f.id else {
        return Err(ctx.err(
            &key("id"),
            "missing folder id",
            "add id = \"<name>\" (1-64 chars of A-Z a-z 0-9 . _ -), the same on every node",
        ));
    };
    let id_ok = (1..=64).contains(&id.value.chars().count())
        && id
            .value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !id_ok {
        return Err(ctx.err(
            &id.origin,
            format!("invalid folder id {:?}", id.value),
            "use 1-64 chars of A-Z a-z 0-9 . _ -",
        ));
    }
    if let Some((j, _)) = earlier.iter().enumerate().find(|(_, e)| e.id == id.value) {
        return Err(ctx.err(
            &id.origin,
            format!(
                "duplicate folder id {:?} (already used by folders[{j}])",
                id.value
            ),
            "give each folder a unique id",
        ));
    }

    let Some(path_src) = &f.path else {
        return Err(ctx.err(
            &key("path"),
            format!("folder {:?} has no path", id.value),
            "add path = \"/absolute/dir\" (relative paths are taken from the config file's directory)",
        ));
    };
    let path = ctx.resolve(path_src)?;
    if path.parent().is_none() {
        return Err(ctx.err(
            &path_src.origin,
            "the filesystem root cannot be a synced folder",
            "point path at a dedicated directory",
        ));
    }
    if let Some(rel) = relation(&path, data_dir) {
        let problem = match rel {
            Relation::Same => format!("folder path {} is the data_dir", path.display()),
            Relation::Inside => format!(
                "folder path {} is inside data_dir {}",
                path.display(),
                data_dir.display()
            ),
            Relation::Contains => format!(
                "data_dir {} is inside folder path {}",
                data_dir.display(),
                path.display()
            ),
        };
        return Err(ctx.err(
            &path_src.origin,
            format!("{problem}; the daemon's own files would be synced"),
            "move the folder or set data_dir elsewhere",
        ));
    }
    for (j, other) in earlier.iter().enumerate() {
        if let Some(rel) = relation(&path, &other.path) {
            let how = match rel {
                Relation::Same => "is the same directory as",
                Relation::Inside => "is inside",
                Relation::Contains => "contains",
            };
            return Err(ctx.err(
                &path_src.origin,
                format!(
                    "folder {:?} path {} {how} folders[{j}] ({:?}) path {}",
                    id.value,
                    path.display(),
                    other.id,
                    other.path.display()
                ),
                "folders must not overlap: give each its own directory tree",
            ));
        }
    }

    let mode = parse_enum(ctx, f.mode.as_ref(), FolderMode::SendReceive)?;

    let (settle, settle_origin) = duration(ctx, f.settle.as_ref(), DEFAULT_SETTLE)?;
    if let Some(origin) = settle_origin.filter(|_| settle > MAX_SETTLE) {
        return Err(ctx.err(
            origin,
            format!(
                "settle {} is longer than 1h",
                humantime::format_duration(settle)
            ),
            "use a settle of at most \"1h\"; it is the quiet time before a change is synced, \
             typically \"200ms\"-\"5s\"",
        ));
    }
    let (rescan, rescan_origin) = duration(ctx, f.rescan.as_ref(), DEFAULT_RESCAN)?;
    if let Some(origin) = rescan_origin.filter(|_| rescan < MIN_RESCAN) {
        return Err(ctx.err(
            origin,
            format!(
                "rescan {} is shorter than 1s",
                humantime::format_duration(rescan)
            ),
            "use a rescan of at least \"1s\" (full rescans are a safety net; default \"1h\")",
        ));
    }
    let watch = parse_enum(ctx, f.watch.as_ref(), WatchMode::Notify)?;
    let (poll_interval, poll_origin) =
        duration(ctx, f.poll_interval.as_ref(), DEFAULT_POLL_INTERVAL)?;
    if let Some(origin) = poll_origin.filter(|_| poll_interval.is_zero()) {
        return Err(ctx.err(
            origin,
            "poll_interval is 0, which would rescan in a busy loop",
            "use a positive interval, e.g. \"2s\"",
        ));
    }

    let (min_free, umask) = space(ctx, f)?;

    Ok(FolderConfig {
        id: id.value.clone(),
        path,
        mode,
        settle,
        rescan,
        watch,
        poll_interval,
        max_pending: folder_cap(
            ctx,
            "max_pending",
            f.max_pending.as_ref(),
            DEFAULT_MAX_PENDING,
            "remote changes one peer may have waiting in this folder",
        )?,
        max_files: folder_cap(
            ctx,
            "max_files",
            f.max_files.as_ref(),
            DEFAULT_MAX_FILES,
            "paths the folder's index may hold",
        )?,
        min_free,
        umask,
        max_delete_fraction: delete_fraction(ctx, f.max_delete_fraction.as_ref())?,
        tombstone_ttl: tombstone_ttl(ctx, f)?,
        versions: versions(ctx, f)?,
    })
}

/// A folder's `max_delete_fraction`: above 0, at most 1.
fn delete_fraction(ctx: &Ctx, value: Option<&Sourced<f64>>) -> Result<f64, ConfigError> {
    let Some(v) = value else {
        return Ok(DEFAULT_MAX_DELETE_FRACTION);
    };
    if v.value > 0.0 && v.value <= 1.0 {
        return Ok(v.value);
    }
    Err(ctx.err(
        &v.origin,
        format!("max_delete_fraction {} is outside (0, 1]", v.value),
        format!(
            "use a number above 0 and at most 1: the share of the folder a burst of deletes \
             from peers may remove before it is held (default {DEFAULT_MAX_DELETE_FRACTION}; \
             1 turns the guard off)"
        ),
    ))
}

/// A folder's `tombstone_ttl`: at least [`MIN_TOMBSTONE_TTL`].
fn tombstone_ttl(ctx: &Ctx, f: &LayeredFolder) -> Result<Duration, ConfigError> {
    let (ttl, origin) = duration(ctx, f.tombstone_ttl.as_ref(), DEFAULT_TOMBSTONE_TTL)?;
    if let Some(origin) = origin.filter(|_| ttl < MIN_TOMBSTONE_TTL) {
        return Err(ctx.err(
            origin,
            format!(
                "tombstone_ttl {} is shorter than 1s",
                humantime::format_duration(ttl)
            ),
            "use a tombstone_ttl of at least \"1s\" (how long deletions are remembered; \
             default \"180d\", longer than any node stays offline)",
        ));
    }
    Ok(ttl)
}

const VERSIONS_FIX: &str = "write versions = \"off\", or versions = { keep = \"30d\", \
     max_bytes = \"1GiB\", local = false } (those are the defaults; each key optional)";

/// A folder's `versions`: "off", or the table's keys over the defaults.
fn versions(ctx: &Ctx, f: &LayeredFolder) -> Result<crate::VersionsPolicy, ConfigError> {
    let mut policy = crate::VersionsPolicy::default();
    // "on" (from the environment, say) keeps the table's values.
    if let Some(w) = f.versions_word.as_ref().filter(|w| w.value != "on") {
        return match w.value.as_str() {
            "off" => Ok(crate::VersionsPolicy::off()),
            other => Err(ctx.err(
                &w.origin,
                format!("versions = {other:?} is neither \"off\" nor a table"),
                VERSIONS_FIX,
            )),
        };
    }
    let (keep, origin) = duration(ctx, f.versions_keep.as_ref(), policy.keep)?;
    if let Some(origin) = origin.filter(|_| keep.is_zero()) {
        return Err(ctx.err(
            origin,
            "versions.keep is 0, which would drop every version at once",
            "use a positive duration such as \"30d\", or versions = \"off\" to keep none",
        ));
    }
    policy.keep = keep;
    if let Some(v) = &f.versions_max_bytes {
        policy.max_bytes = crate::parse_size(&v.value).map_err(|problem| {
            ctx.err(
                &v.origin,
                problem,
                "use a size such as \"1GiB\" or \"500MB\" (default 1GiB), or versions = \"off\"",
            )
        })?;
    }
    if let Some(v) = &f.versions_local {
        policy.local = v.value;
    }
    Ok(policy)
}

/// A folder's `max_pending` / `max_files`: a whole number from 1 to
/// [`MAX_FOLDER_CAP`].
fn folder_cap(
    ctx: &Ctx,
    key: &str,
    value: Option<&Sourced<i64>>,
    default: u64,
    what: &str,
) -> Result<u64, ConfigError> {
    let Some(v) = value else {
        return Ok(default);
    };
    u64::try_from(v.value)
        .ok()
        .filter(|n| (1..=MAX_FOLDER_CAP).contains(n))
        .ok_or_else(|| {
            ctx.err(
                &v.origin,
                format!("{key} {} is outside 1-{MAX_FOLDER_CAP}", v.value),
                format!(
                    "use a whole number from 1 to {MAX_FOLDER_CAP}: {what} (default {default})"
                ),
            )
        })
}

/// A folder's `min_free` and `umask`.
fn space(ctx: &Ctx, f: &LayeredFolder) -> Result<(MinFree, Umask), ConfigError> {
    let min_free = match &f.min_free {
        None => MinFree::Default,
        Some(v) => MinFree::parse(&v.value).map_err(|problem| {
            ctx.err(
                &v.origin,
                problem,
                "use a size such as \"1GiB\" or \"500MB\", or a share of the filesystem \
                 such as \"5%\" (at most 50%); default: the smaller of 1GiB and 5%",
            )
        })?,
    };
    let umask = match &f.umask {
        None => Umask::default(),
        Some(v) => Umask::parse(&v.value).map_err(|problem| {
            ctx.err(
                &v.origin,
                problem,
                "use octal permission bits such as \"022\" (default) or \"077\"",
            )
        })?,
    };
    Ok((min_free, umask))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    Same,
    /// The first path is inside the second.
    Inside,
    /// The first path contains the second.
    Contains,
}

/// How two absolute, normalised paths overlap, if they do. Lexical first;
/// when both exist the canonical paths are compared too, so a symlink cannot
/// smuggle a folder into data_dir (or into another folder).
fn relation(a: &Path, b: &Path) -> Option<Relation> {
    lexical_relation(a, b).or_else(|| {
        let (ca, cb) = (a.canonicalize().ok()?, b.canonicalize().ok()?);
        lexical_relation(&ca, &cb)
    })
}

fn lexical_relation(a: &Path, b: &Path) -> Option<Relation> {
    if a == b {
        Some(Relation::Same)
    } else if a.starts_with(b) {
        Some(Relation::Inside)
    } else if b.starts_with(a) {
        Some(Relation::Contains)
    } else {
        None
    }
}
