//! The command line. Every subcommand returns an exit code:
//! 0 ok, 1 failure, 2 usage, 3 bad config, 4 node not reachable,
//! 5 node unhealthy (`status`), 6 a folder faulted (`status`),
//! 7 not in sync before the timeout (`wait`),
//! 70 the node gave up after repeated actor crashes.
//! `doctor` has its own: 0 all ok, 1 a check failed, 2 warnings only.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use fleetsync_config::{
    flag, render_init_config, Config, ConfigError, FleetSecret, InitParams, Overrides, PeerAddr,
    CONFIG_FILE_NAME, DEFAULT_ADMIN_LISTEN, DEFAULT_MESH_LISTEN, ENV_IGNORED,
};

use crate::{client, daemon, demo, invite};

pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_CONFIG: i32 = 3;
pub const EXIT_UNREACHABLE: i32 = 4;
/// `status`: an actor does not answer or its work stopped.
pub const EXIT_UNHEALTHY: i32 = 5;
/// `status`: a folder has an error (paused: its marker is gone; full:
/// `max_files`).
pub const EXIT_FAULTED: i32 = 6;
/// `wait`: the timeout passed before the node was in sync.
pub const EXIT_TIMEOUT: i32 = 7;

#[derive(Debug, Parser)]
#[command(
    name = "fleetsync",
    version,
    about = "Keep folders identical across a fleet of machines over a peer-to-peer iroh mesh"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create the node identity and a config file with a fresh fleet secret.
    Init(InitArgs),
    /// Print this node's id (creating the identity if missing).
    Id(Where),
    /// Print a join ticket for this fleet (its last line of output).
    Invite(InviteArgs),
    /// Write a config that joins the fleet of a ticket from `fleetsync invite`.
    Join(JoinArgs),
    /// Run the node in the foreground until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Show peers, folders and transfers of the running node. Exit code: 0
    /// healthy, 4 not running, 5 unhealthy, 6 a folder faulted.
    Status {
        #[command(flatten)]
        at: Target,
        /// Machine-readable output.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Reload the running node's config (as SIGHUP): peers, allow/deny and
    /// log level apply at once; other changes are listed as needing a
    /// restart. Exit 3 if the new config is refused (the node keeps its).
    Reload {
        #[command(flatten)]
        at: Target,
        #[arg(long)]
        json: bool,
    },
    /// Check this node's setup and, when it runs, the node itself: one
    /// line per check (ok, warn, fail) and the fix for every line that is
    /// not ok. Exit code: 0 all ok, 1 something failed, 2 warnings only.
    Doctor {
        #[command(flatten)]
        at: Target,
        /// One JSON object: {"checks":[{name,status,detail,fix}],"summary":{...}}.
        #[arg(long)]
        json: bool,
    },
    /// Wait until the running node is in sync (for rollout scripts): 0 in
    /// sync, 7 timeout (the reasons on stderr).
    Wait(WaitArgs),
    /// Show the audit trail of one file: who changed it, when, to what.
    History {
        #[command(flatten)]
        at: Target,
        /// Folder id.
        #[arg(long)]
        folder: String,
        /// Path inside the folder.
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// Check a config file, or show the effective config of a node.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Folder operations.
    Folder {
        #[command(subcommand)]
        cmd: FolderCmd,
    },
    /// Sweep now: remove stale temp files, unused content links and blob
    /// store content no file needs, on the running node (retention does
    /// this on its own timer; this is for operators and tests).
    Sweep {
        #[command(flatten)]
        at: Target,
        #[arg(long)]
        json: bool,
    },
    /// Bring back kept versions: a file, or every file under a directory
    /// (deleted ones included) as of a time. Each is written as a new local
    /// change that reaches the fleet; what it replaces is kept first.
    Restore(RestoreArgs),
    /// List the kept versions of a folder (newest first): when, path, size,
    /// author, what replaced it, version id.
    Versions {
        #[command(flatten)]
        at: Target,
        /// Folder id.
        #[arg(long)]
        folder: String,
        /// Only this file, or everything under this directory.
        path: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Fault injection for tests and drills (needs `[debug] fault_injection = true`).
    Debug {
        #[command(subcommand)]
        cmd: DebugCmd,
    },
    /// Start a local 3-node cluster in temp dirs and show files syncing.
    Demo {
        /// Keep the cluster running until Ctrl-C instead of exiting.
        #[arg(long)]
        keep: bool,
    },
    /// Print a shell completion script, e.g.
    /// `fleetsync completions bash > /etc/bash_completion.d/fleetsync`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `fleetsync man | man -l -`.
    Man,
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Check a config file as `fleetsync run` would load it (with the
    /// FLEETSYNC_* environment): exit 0 and a summary, or 3 and the
    /// one-line error naming the key and the fix.
    Check {
        /// The config file.
        file: PathBuf,
    },
    /// Print every setting's effective value (the fleet secret redacted).
    Show {
        #[command(flatten)]
        at: Where,
        /// Also say where each value came from: file, env VAR, flag, or
        /// default.
        #[arg(long)]
        origins: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum FolderCmd {
    /// Continue: a paused folder syncs again; a folder that is not paused
    /// applies the deletes from peers that the mass-delete guard holds
    /// (`max_delete_fraction`; `fleetsync status` shows them).
    Resume {
        #[command(flatten)]
        at: Target,
        /// Folder id.
        #[arg(long)]
        folder: String,
    },
    /// Stop applying changes from peers and indexing local ones (content
    /// already indexed is still served) until `folder resume`; kept across
    /// restarts.
    Pause {
        #[command(flatten)]
        at: Target,
        /// Folder id.
        #[arg(long)]
        folder: String,
    },
    /// Walk the folder now for changes the OS notifications missed.
    Rescan {
        #[command(flatten)]
        at: Target,
        /// Folder id.
        #[arg(long)]
        folder: String,
    },
}

#[derive(Debug, Subcommand)]
enum DebugCmd {
    /// Block an actor's thread (the supervisor should replace it).
    Stall {
        #[command(flatten)]
        at: Target,
        /// watcher, hasher, receiver, distributor or retention.
        actor: String,
        /// How long (e.g. 60s, 5m).
        #[arg(long = "for", default_value = "60s")]
        duration: String,
        /// Folder of a per-folder actor (default: the first folder).
        #[arg(long)]
        folder: Option<String>,
    },
    /// Serve blob requests without sending data (peers should fail over).
    HangFetch {
        #[command(flatten)]
        at: Target,
        /// How long (e.g. 60s, 5m).
        #[arg(long = "for")]
        duration: String,
    },
    /// Make an actor panic (the supervisor should restart it).
    Panic {
        #[command(flatten)]
        at: Target,
        /// watcher, hasher, receiver, distributor or retention.
        actor: String,
        /// Folder of a per-folder actor (default: the first folder).
        #[arg(long)]
        folder: Option<String>,
    },
}

/// `status --watch`.
#[derive(Debug, Args, Clone)]
struct WatchArgs {
    /// Redraw until Ctrl-C: folder summary lines and one progress bar per
    /// transfer in flight (bytes, rate, ETA); plain blocks when stdout is
    /// not a terminal. Exit code 0.
    #[arg(long)]
    watch: bool,
    /// Time between snapshots with --watch (e.g. 500ms, 2s).
    #[arg(long, default_value = "1s", requires = "watch")]
    interval: String,
    /// Stop after this many snapshots (for scripts).
    #[arg(long, requires = "watch")]
    count: Option<u64>,
}

/// Which node: a config file, or a data directory holding fleetsync.toml.
#[derive(Debug, Args, Clone)]
struct Where {
    /// Config file (default: $FLEETSYNC_CONFIG, or <data-dir>/fleetsync.toml).
    #[arg(long, short = 'c', env = "FLEETSYNC_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (identity, index, blob store; holds fleetsync.toml).
    #[arg(long = "data-dir", short = 'd')]
    data_dir: Option<PathBuf>,
}

/// A running node to ask: through its config, or only its admin socket.
#[derive(Debug, Args, Clone)]
struct Target {
    #[command(flatten)]
    at: Where,
    /// The node's admin socket (admin.socket): members of its group reach
    /// the node through it without reading the config. Without this flag,
    /// when the config cannot be read: <config dir>/admin.sock, then
    /// /run/fleetsync/admin.sock.
    #[arg(long, env = "FLEETSYNC_ADMIN_SOCKET")]
    socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Data directory to create.
    #[arg(long = "data-dir", short = 'd')]
    data_dir: PathBuf,
    /// Folder to sync (repeatable); its id is the directory name.
    #[arg(long)]
    folder: Vec<PathBuf>,
    /// Join an existing fleet: its secret (64 hex chars). Default: a new random one.
    #[arg(long = "fleet-secret")]
    fleet_secret: Option<String>,
    /// QUIC listen address.
    #[arg(long, default_value = DEFAULT_MESH_LISTEN)]
    listen: String,
    /// Local admin API address.
    #[arg(long = "admin-listen", default_value = DEFAULT_ADMIN_LISTEN)]
    admin_listen: String,
    /// Static peer <node-id>@<ip>:<port> or <node-id>@<host name>:<port> (repeatable).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Disable LAN discovery in the generated config.
    #[arg(long = "no-mdns")]
    no_mdns: bool,
    /// Overwrite an existing config file.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct RestoreArgs {
    #[command(flatten)]
    at: Target,
    /// Folder id.
    #[arg(long)]
    folder: String,
    /// Path inside the folder: a file, or a directory (also one that is
    /// gone); "." for the whole folder.
    path: String,
    /// Restore this version (an id `fleetsync versions` lists).
    #[arg(long, conflicts_with = "time")]
    version: Option<String>,
    /// Restore what each file held at this time: RFC 3339
    /// (2026-11-30T09:00:00Z) or a time ago (10m, 2h, 3d). Default: each
    /// file's newest kept version.
    #[arg(long = "at", id = "time")]
    time: Option<String>,
    /// Machine-readable output (the API's report).
    #[arg(long)]
    json: bool,
}

/// A restore answers once every file is written back: allow for big ones.
const RESTORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// A forced sweep answers once its blob GC run is done (the node waits up
/// to a minute for it).
const SWEEP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

#[derive(Debug, Args)]
struct WaitArgs {
    #[command(flatten)]
    at: Target,
    /// Wait until every folder has applied all that every connected peer
    /// has, nothing is pending, the node is healthy and no folder faulted
    /// (the only condition so far; required).
    #[arg(long = "in-sync", required = true)]
    in_sync: bool,
    /// Give up after this long (e.g. 30s, 10m) with exit code 7.
    #[arg(long, default_value = "10m")]
    timeout: String,
    /// In sync with no peer connected counts (a fleet of one). Without
    /// it, at least one peer must be connected.
    #[arg(long = "allow-alone")]
    allow_alone: bool,
}

#[derive(Debug, Args)]
struct InviteArgs {
    #[command(flatten)]
    at: Where,
    /// How long `join` accepts the ticket (e.g. 1h, 24h, 7d).
    #[arg(long, default_value = "24h")]
    expires: String,
    /// Address the new node dials, <ip>:<port> or <host name>:<port>
    /// (repeatable). Default: the running node's listen addresses, else
    /// mesh.listen if it is a specific address.
    #[arg(long = "addr")]
    addrs: Vec<String>,
}

#[derive(Debug, Args)]
struct JoinArgs {
    /// The ticket, or - to read it from stdin (keeps it out of the process list).
    ticket: String,
    /// Data directory to create.
    #[arg(long = "data-dir", short = 'd')]
    data_dir: PathBuf,
    /// Folder to sync.
    #[arg(long)]
    folder: PathBuf,
    /// Folder id (the same on every node sharing the folder). Default: the directory name.
    #[arg(long = "folder-id")]
    folder_id: Option<String>,
    /// Overwrite an existing config file.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    at: Where,
    /// Override mesh.listen.
    #[arg(long)]
    listen: Option<String>,
    /// Override admin.listen.
    #[arg(long = "admin-listen")]
    admin_listen: Option<String>,
    /// Override mesh.peers (repeatable; replaces the configured list).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Override mesh.mdns (true/false).
    #[arg(long)]
    mdns: Option<bool>,
    /// Override log.level (e.g. info, debug, fleetsync=debug).
    #[arg(long = "log-level")]
    log_level: Option<String>,
    /// Override log.format (human/json).
    #[arg(long = "log-format")]
    log_format: Option<String>,
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let res = match cli.cmd {
        Cmd::Init(a) => init(a),
        Cmd::Id(w) => id(w),
        Cmd::Invite(a) => invite_cmd(a),
        Cmd::Join(a) => invite::join(invite::JoinRequest {
            ticket: a.ticket,
            data_dir: a.data_dir,
            folder: a.folder,
            folder_id: a.folder_id,
            force: a.force,
        }),
        Cmd::Run(a) => run(a),
        Cmd::Status { at, watch, .. } if watch.watch => status_watch(at, watch),
        Cmd::Status { at, json, .. } => status(at, json),
        Cmd::Wait(a) => wait(a),
        Cmd::Reload { at, json } => reload(at, json),
        Cmd::Doctor { at, json } => doctor(&at, json),
        Cmd::History {
            at,
            folder,
            path,
            json,
        } => history(at, &folder, &path, json),
        Cmd::Config {
            cmd: ConfigCmd::Check { file },
        } => config_check(&file),
        Cmd::Config {
            cmd: ConfigCmd::Show { at, origins, json },
        } => config_show(at, origins, json),
        Cmd::Folder {
            cmd: FolderCmd::Resume { at, folder },
        } => resume(at, &folder),
        Cmd::Folder {
            cmd: FolderCmd::Pause { at, folder },
        } => folder_pause(at, &folder),
        Cmd::Folder {
            cmd: FolderCmd::Rescan { at, folder },
        } => folder_rescan(at, &folder),
        Cmd::Sweep { at, json } => sweep(at, json),
        Cmd::Restore(a) => restore(a),
        Cmd::Versions {
            at,
            folder,
            path,
            json,
        } => versions(at, &folder, path.as_deref(), json),
        Cmd::Debug { cmd } => debug(cmd),
        Cmd::Demo { keep } => demo::run(keep),
        Cmd::Completions { shell } => completions(shell, &mut std::io::stdout().lock()),
        Cmd::Man => man(&mut std::io::stdout().lock()),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<ConfigError>() {
                eprintln!("fleetsync: config error: {ce}");
                return EXIT_CONFIG;
            }
            if let Some(u) = e.downcast_ref::<client::Unreachable>() {
                eprintln!("fleetsync: {u}");
                return EXIT_UNREACHABLE;
            }
            eprintln!("fleetsync: {e:#}");
            EXIT_FAILURE
        }
    }
}

impl Where {
    fn config_path(&self) -> anyhow::Result<PathBuf> {
        match (&self.config, &self.data_dir) {
            (Some(c), _) => Ok(c.clone()),
            (None, Some(d)) => Ok(d.join(CONFIG_FILE_NAME)),
            (None, None) => bail!(
                "which node? pass --config FILE or --data-dir DIR (create one with: fleetsync init --data-dir DIR --folder PATH), \
                 or set FLEETSYNC_DATA_DIR, FLEETSYNC_MESH_FLEET_SECRET_FILE and FLEETSYNC_FOLDERS to run without a config file"
            ),
        }
    }

    /// No --config, --data-dir or $FLEETSYNC_CONFIG, but `FLEETSYNC_*`
    /// settings in the environment: the config is those alone (a container).
    /// Without any, the "which node?" error is the more helpful one.
    fn env_only(&self) -> anyhow::Result<Option<Vec<(String, String)>>> {
        if self.config.is_some() || self.data_dir.is_some() {
            return Ok(None);
        }
        let settings: Vec<(String, String)> = fleetsync_config::process_env()?
            .into_iter()
            .filter(|(name, _)| !ENV_IGNORED.contains(&name.as_str()))
            .collect();
        Ok((!settings.is_empty()).then_some(settings))
    }

    fn load(&self, overrides: &Overrides) -> anyhow::Result<Config> {
        if let Some(env) = self.env_only()? {
            return Ok(Config::from_env(env, overrides)?);
        }
        let path = self.config_path()?;
        Ok(Config::load(&path, overrides)?)
    }
}

impl Target {
    /// Where the admin API answers: `--socket`; else the config's loopback
    /// address; else, when the config may not be read (or none is named),
    /// an admin socket found where the node puts it by default.
    fn endpoint(&self) -> anyhow::Result<client::Endpoint> {
        if let Some(s) = &self.socket {
            return Ok(client::Endpoint::Unix(s.clone()));
        }
        let named = self.at.config.is_some() || self.at.data_dir.is_some();
        let err = match self.at.load(&Overrides::default()) {
            Ok(config) => return Ok(client::Endpoint::Tcp(client::admin_addr(&config)?)),
            Err(e) => e,
        };
        let unreadable = err
            .downcast_ref::<ConfigError>()
            .is_some_and(client::unreadable);
        if named && !unreadable {
            return Err(err);
        }
        let config_path = self.at.config_path().ok();
        if let Some(s) = client::default_socket(config_path.as_deref()) {
            return Ok(client::Endpoint::Unix(s));
        }
        if !named {
            return Err(err);
        }
        Err(err.context(format!(
            "and no admin socket was found at {}; pass --socket PATH (the node's admin.socket), \
             or run as the node's user",
            client::socket_candidates(config_path.as_deref())
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        )))
    }

    /// The config file to name in suggested commands.
    fn config_label(&self) -> String {
        self.at
            .config_path()
            .map_or_else(|_| "FILE".to_string(), |p| p.display().to_string())
    }
}

/// `doctor`: the offline checks need the config; the node's go through
/// the admin socket when the config cannot be read.
fn doctor(t: &Target, json: bool) -> anyhow::Result<i32> {
    let path = match (t.at.config_path(), &t.socket) {
        (Ok(p), _) => Some(p),
        // Only the socket: the node's checks alone.
        (Err(_), Some(_)) => None,
        (Err(e), None) => return Err(e),
    };
    crate::doctor::run(path.as_deref(), t.socket.as_deref(), json)
}

/// `config check FILE`: load it as `run` would; errors exit through the
/// config error path (code 3).
fn config_check(file: &Path) -> anyhow::Result<i32> {
    let config = Config::load(file, &Overrides::default())?;
    let folders: Vec<&str> = config.folders.iter().map(|f| f.id.as_str()).collect();
    println!(
        "config ok: {} (data dir {}, {} folder{}: {}, {} peer{} configured)",
        file.display(),
        config.data_dir.display(),
        folders.len(),
        if folders.len() == 1 { "" } else { "s" },
        folders.join(", "),
        config.mesh.peers.len(),
        if config.mesh.peers.len() == 1 {
            ""
        } else {
            "s"
        },
    );
    Ok(0)
}

/// `config show [--origins] [--json]`: one `key = value` line per setting.
fn config_show(at: Where, origins: bool, json: bool) -> anyhow::Result<i32> {
    let config = at.load(&Overrides::default())?;
    let settings = config.settings();
    if json {
        let out = serde_json::json!({
            "config": config.config_path,
            "settings": settings,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    let width = settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
    let value_width = settings.iter().map(|s| s.value.len()).max().unwrap_or(0);
    for s in &settings {
        if origins {
            println!(
                "{:width$} = {:value_width$}  # {}",
                s.key, s.value, s.source
            );
        } else {
            println!("{:width$} = {}", s.key, s.value);
        }
    }
    Ok(0)
}

pub(crate) fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

fn random_secret() -> FleetSecret {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("OS random source unavailable");
    FleetSecret(b)
}

fn init(a: InitArgs) -> anyhow::Result<i32> {
    let data_dir = absolute(&a.data_dir)?;
    let config_path = data_dir.join(CONFIG_FILE_NAME);
    if config_path.exists() && !a.force {
        bail!(
            "{} already exists; pass --force to overwrite it (the identity is kept)",
            config_path.display()
        );
    }
    let secret = match &a.fleet_secret {
        Some(s) => {
            FleetSecret::from_hex(s).map_err(|e| anyhow::anyhow!("{}: {e}", flag::FLEET_SECRET))?
        }
        None => random_secret(),
    };
    let mut folders = Vec::new();
    for f in &a.folder {
        let path = absolute(f)?;
        folders.push((folder_id_from_path(&path), path));
    }
    let peers = a
        .peers
        .iter()
        .map(|p| {
            p.parse::<PeerAddr>()
                .map_err(|e| anyhow::anyhow!("--peer {p}: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let key = fleetsync_mesh::identity::load_or_create(&data_dir)?;
    let text = render_init_config(&InitParams {
        data_dir: data_dir.clone(),
        folders,
        fleet_secret: secret,
        mesh_listen: a
            .listen
            .parse()
            .with_context(|| format!("--listen {}", a.listen))?,
        admin_listen: a
            .admin_listen
            .parse()
            .with_context(|| format!("--admin-listen {}", a.admin_listen))?,
        peers,
        mdns: !a.no_mdns,
        ticket_peers: vec![],
    });
    // Validate what we are about to write, so init never leaves a broken file.
    Config::from_toml_str(
        &text,
        &config_path,
        std::iter::empty(),
        &Overrides::default(),
    )?;
    write_private(&config_path, &text)?;
    println!("node id: {}", key.public());
    println!("config:  {}", config_path.display());
    if a.fleet_secret.is_none() {
        println!("fleet secret: generated; give the same secret to every node of this fleet (it is in the config file)");
    }
    Ok(0)
}

/// A folder id from a directory name: characters outside the id alphabet
/// become '-', so `init` and `join` agree on the id of the same directory.
pub(crate) fn folder_id_from_path(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(|s| {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

fn invite_cmd(a: InviteArgs) -> anyhow::Result<i32> {
    let config = a.at.load(&Overrides::default())?;
    let expires = fleetsync_config::parse_duration(&a.expires)
        .map_err(|e| anyhow::anyhow!("--expires {}: {e}", a.expires))?;
    if expires.is_zero() {
        bail!("--expires {}: must be longer than zero", a.expires);
    }
    invite::invite(&config, expires, &a.expires, &a.addrs)
}

/// The config holds the fleet secret: owner-only.
/// Written to a temp file in the same directory (created 0600 by
/// `tempfile`), synced, then renamed over `path`: a crash leaves the old
/// file or the new one, never half of one.
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let mut f = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("write a temp file in {}", dir.display()))?;
    f.write_all(text.as_bytes())?;
    f.as_file().sync_all()?;
    f.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

fn id(w: Where) -> anyhow::Result<i32> {
    // Without --data-dir: the config's (a file, or FLEETSYNC_* alone).
    let data_dir = match &w.data_dir {
        Some(d) => absolute(d)?,
        None => w.load(&Overrides::default())?.data_dir,
    };
    let key = fleetsync_mesh::identity::load_or_create(&data_dir)?;
    println!("{}", key.public());
    Ok(0)
}

fn run(a: RunArgs) -> anyhow::Result<i32> {
    let overrides = Overrides {
        data_dir: None,
        mesh_listen: a.listen,
        admin_listen: a.admin_listen,
        peers: if a.peers.is_empty() {
            None
        } else {
            Some(a.peers)
        },
        mdns: a.mdns,
        fleet_secret: None,
        log_level: a.log_level,
        log_format: a.log_format,
    };
    let config = a.at.load(&overrides)?;
    let at = a.at.clone();
    daemon::run(config, Box::new(move || at.load(&overrides)))
}

fn status(t: Target, json: bool) -> anyhow::Result<i32> {
    let body = client::get(&t.endpoint()?, "/status")?;
    let view: crate::wait::StatusView = serde_json::from_str(&body).context("status reply")?;
    let code = crate::wait::status_code(&view);
    if json {
        println!("{body}");
        return Ok(code);
    }
    let st: serde_json::Value = serde_json::from_str(&body).context("status reply")?;
    print!("{}", crate::admin::render_status(&st, &t.config_label()));
    Ok(code)
}

fn status_watch(t: Target, a: WatchArgs) -> anyhow::Result<i32> {
    let interval = fleetsync_config::parse_duration(&a.interval)
        .map_err(|e| anyhow::anyhow!("--interval {}: {e}", a.interval))?;
    if interval.is_zero() {
        bail!("--interval 0: give a positive duration, e.g. --interval 1s");
    }
    // The endpoint again each time: a node restarted with port 0 moves.
    let fetch = std::sync::Arc::new(move || client::get(&t.endpoint()?, "/status"));
    let opts = crate::watch::Options {
        interval,
        count: a.count,
    };
    crate::watch::run(opts, fetch)
}

fn wait(a: WaitArgs) -> anyhow::Result<i32> {
    let timeout = fleetsync_config::parse_duration(&a.timeout)
        .map_err(|e| anyhow::anyhow!("--timeout {}: {e}", a.timeout))?;
    debug_assert!(a.in_sync, "clap requires --in-sync");
    // Asked again on every poll: a restarted node may have a new port.
    let at = || a.at.endpoint();
    Ok(crate::wait::wait_in_sync(&at, timeout, a.allow_alone))
}

fn resume(w: Target, folder: &str) -> anyhow::Result<i32> {
    let v = folder_post(&w, folder, "resume")?;
    if v["unpaused"].as_bool() == Some(true) {
        println!("folder {folder}: resumed (applying and indexing again)");
        if let Some(n) = v["still_held"].as_u64().filter(|n| *n > 0) {
            println!(
                "folder {folder}: {n} deletes from peers are still held by the mass-delete guard; \
                 run `fleetsync folder resume` again to apply them"
            );
        }
        return Ok(0);
    }
    match v["resumed"].as_u64().unwrap_or(0) {
        0 => println!("folder {folder}: not paused, and no deletes were held"),
        n => println!("folder {folder}: applying {n} held deletes from peers"),
    }
    Ok(0)
}

fn folder_pause(w: Target, folder: &str) -> anyhow::Result<i32> {
    let v = folder_post(&w, folder, "pause")?;
    if v["changed"].as_bool() == Some(true) {
        println!(
            "folder {folder}: paused (resume with: fleetsync folder resume --folder {folder})"
        );
    } else {
        println!("folder {folder}: already paused");
    }
    Ok(0)
}

fn folder_rescan(w: Target, folder: &str) -> anyhow::Result<i32> {
    folder_post(&w, folder, "rescan")?;
    println!("folder {folder}: rescanning (changes found are indexed and synced as usual)");
    Ok(0)
}

/// `POST /folders/{id}/{action}` on the running node, its JSON answer.
fn folder_post(w: &Target, folder: &str, action: &str) -> anyhow::Result<serde_json::Value> {
    let q = format!("/folders/{}/{action}", crate::admin::urlencode(folder));
    let body = client::post(&w.endpoint()?, &q)?;
    serde_json::from_str(&body).with_context(|| format!("{action} reply"))
}

fn reload(w: Target, json: bool) -> anyhow::Result<i32> {
    let body = client::post(&w.endpoint()?, "/reload")?;
    let v: serde_json::Value = serde_json::from_str(&body).context("reload reply")?;
    if json {
        println!("{body}");
    }
    if let Some(e) = v["refused"].as_str() {
        eprintln!("fleetsync: reload refused, the node keeps its running config: {e}");
        return Ok(EXIT_CONFIG);
    }
    if json {
        return Ok(0);
    }
    let lines = |k: &str| -> Vec<String> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (applied, restart) = (lines("applied"), lines("restart_needed"));
    if applied.is_empty() && restart.is_empty() {
        println!("reloaded: nothing changed");
    }
    for line in applied {
        println!("reloaded: {line}");
    }
    if !restart.is_empty() {
        println!("needs a restart: {}", restart.join(", "));
    }
    Ok(0)
}

fn sweep(w: Target, json: bool) -> anyhow::Result<i32> {
    let body = client::post_slow(&w.endpoint()?, "/retention/sweep", SWEEP_TIMEOUT)?;
    if json {
        println!("{body}");
        return Ok(0);
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("sweep reply")?;
    for f in v["folders"].as_array().cloned().unwrap_or_default() {
        println!(
            "folder {}: removed {} stale files ({} bytes)",
            f["id"].as_str().unwrap_or("?"),
            f["files"].as_u64().unwrap_or(0),
            f["bytes"].as_u64().unwrap_or(0)
        );
    }
    println!(
        "blob garbage collection done ({} runs since start)",
        v["gc_runs"].as_u64().unwrap_or(0)
    );
    Ok(0)
}

fn history(w: Target, folder: &str, path: &str, json: bool) -> anyhow::Result<i32> {
    let q = format!(
        "/history?folder={}&path={}",
        crate::admin::urlencode(folder),
        crate::admin::urlencode(path)
    );
    let body = client::get(&w.endpoint()?, &q)?;
    if json {
        println!("{body}");
        return Ok(0);
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("history reply")?;
    print!("{}", crate::admin::render_history(&v));
    Ok(0)
}

fn restore(a: RestoreArgs) -> anyhow::Result<i32> {
    let enc = crate::admin::urlencode;
    let mut q = format!("/folders/{}/restore?path={}", enc(&a.folder), enc(&a.path));
    if let Some(v) = &a.version {
        q.push_str(&format!("&version={}", enc(v)));
    }
    if let Some(t) = &a.time {
        q.push_str(&format!("&at={}", enc(t)));
    }
    let body = client::post_slow(&a.at.endpoint()?, &q, RESTORE_TIMEOUT)?;
    let v: serde_json::Value = serde_json::from_str(&body).context("restore reply")?;
    if a.json {
        println!("{body}");
    } else {
        print!("{}", crate::restore::render(&v, a.time.as_deref()));
    }
    let failed = v["failed"].as_array().is_some_and(|f| !f.is_empty());
    Ok(if failed { EXIT_FAILURE } else { 0 })
}

fn versions(w: Target, folder: &str, path: Option<&str>, json: bool) -> anyhow::Result<i32> {
    let mut q = format!("/folders/{}/versions", crate::admin::urlencode(folder));
    if let Some(p) = path {
        q.push_str(&format!("?path={}", crate::admin::urlencode(p)));
    }
    let body = client::get(&w.endpoint()?, &q)?;
    if json {
        println!("{body}");
        return Ok(0);
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("versions reply")?;
    print!("{}", crate::admin::render_versions(&v));
    Ok(0)
}

fn debug(cmd: DebugCmd) -> anyhow::Result<i32> {
    let at = match &cmd {
        DebugCmd::Stall { at, .. }
        | DebugCmd::Panic { at, .. }
        | DebugCmd::HangFetch { at, .. } => at,
    };
    let enc = crate::admin::urlencode;
    let folder_q = |f: &Option<String>| {
        f.as_ref()
            .map(|f| format!("&folder={}", enc(f)))
            .unwrap_or_default()
    };
    let query = match &cmd {
        DebugCmd::Stall {
            actor,
            duration,
            folder,
            ..
        } => {
            let d = fleetsync_config::parse_duration(duration)
                .map_err(|e| anyhow::anyhow!("--for {duration}: {e}"))?;
            format!(
                "/debug/fault?kind=stall&actor={}&for_ms={}{}",
                enc(actor),
                d.as_millis(),
                folder_q(folder)
            )
        }
        DebugCmd::HangFetch { duration, .. } => {
            let d = fleetsync_config::parse_duration(duration)
                .map_err(|e| anyhow::anyhow!("--for {duration}: {e}"))?;
            format!("/debug/fault?kind=hang-fetch&for_ms={}", d.as_millis())
        }
        DebugCmd::Panic { actor, folder, .. } => {
            format!(
                "/debug/fault?kind=panic&actor={}{}",
                enc(actor),
                folder_q(folder)
            )
        }
    };
    client::post(&at.endpoint()?, &query)?;
    println!("fault injected");
    Ok(0)
}

/// Generated from the same clap tree as the parser, so it cannot drift
/// from the real flags.
fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) -> anyhow::Result<i32> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "fleetsync", out);
    Ok(0)
}

/// The top-level page: synopsis, every subcommand with its summary, version.
fn man(out: &mut dyn std::io::Write) -> anyhow::Result<i32> {
    clap_mangen::Man::new(Cli::command())
        .render(out)
        .context("write the man page")?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn man_page_lists_subcommands() {
        let mut out = Vec::new();
        assert_eq!(man(&mut out).unwrap(), 0);
        let page = String::from_utf8(out).unwrap();
        assert!(page.contains(".TH fleetsync"), "{page}");
        for sub in ["init", "run", "status", "history", "completions", "man"] {
            assert!(page.contains(sub), "{sub} missing from the man page");
        }
    }
}
