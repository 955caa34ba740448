//! `fleetsync run`: one node in the foreground.

use std::{io::IsTerminal as _, time::Duration};

use fleetsync_actors::NodeHandle;

use crate::reload::{ReloadRequest, Reloader};
use fleetsync_config::{Config, LogFormat};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Sets the running log filter (a config reload's `log.level`).
pub type SetFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Install the log subscriber. Returns how to change its filter later,
/// unless a subscriber was installed already (a test harness owning
/// logging: that one stays).
pub fn init_logging(config: &Config) -> Option<SetFilter> {
    let filter = initial_filter(&config.log.level);
    // Colour only for a person at a terminal: the journal and log files get
    // plain text (tracing-subscriber colours by default, even into a pipe).
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(log_colour(std::io::stderr().is_terminal()));
    match config.log.format {
        // One object per line. The field names are a contract for log
        // shippers (README "Logs"): pinned here rather than left to the
        // library's defaults.
        LogFormat::Json => {
            let b = b
                .json()
                .flatten_event(false)
                .with_current_span(true)
                .with_span_list(true)
                .with_target(true)
                .with_level(true)
                .with_filter_reloading();
            let handle = b.reload_handle();
            b.try_init().ok()?;
            Some(filter_setter(handle))
        }
        LogFormat::Human => {
            let b = b.with_filter_reloading();
            let handle = b.reload_handle();
            b.try_init().ok()?;
            Some(filter_setter(handle))
        }
    }
}

/// The reload handle of either format as a [`SetFilter`].
fn filter_setter<S: 'static>(
    handle: tracing_subscriber::reload::Handle<EnvFilter, S>,
) -> SetFilter {
    Box::new(move |level| {
        handle
            .reload(level_filter(level)?)
            .map_err(|e| e.to_string())
    })
}

/// FLEETSYNC_LOG (a tracing filter) wins over log.level for debugging.
fn initial_filter(level: &str) -> EnvFilter {
    std::env::var("FLEETSYNC_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| level_filter(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

fn level_filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(quiet(level)).map_err(|e| format!("log.level {level:?}: {e}"))
}

/// Colour when stderr is a terminal, unless NO_COLOR is set
/// (https://no-color.org).
fn log_colour(stderr_is_terminal: bool) -> bool {
    stderr_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A bare level applies to fleetsync's own crates; the iroh stack stays at
/// warn so the log is one line per synced file, not a packet trace.
fn quiet(level: &str) -> String {
    if level.contains('=') || level.contains(',') {
        level.to_string()
    } else {
        format!("warn,fleetsync={level},fleetsync_actors={level},fleetsync_mesh={level}")
    }
}

/// Loads the config again (same file, env and flags) for a reload.
pub type Reload = crate::reload::Load;

pub fn run(config: Config, reload: Reload) -> anyhow::Result<i32> {
    let set_filter = init_logging(&config);
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("fleetsync-rt")
            .build()
            .expect("tokio runtime")
    });
    let reloader = Reloader::new(reload, config.clone(), set_filter);
    system.block_on(run_node(config, reloader))
}

async fn run_node(config: Config, mut reloader: Reloader) -> anyhow::Result<i32> {
    let node = fleetsync_actors::start_node(&config).await?;
    let (reloads, mut reload_requests) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
    let cache = crate::metrics::Cache::default();
    let listeners = match serve(&config, &node, &cache, reloads).await {
        Ok(l) => l,
        Err(e) => {
            node.shutdown().await;
            return Err(e);
        }
    };
    let admin_addr = listeners.admin_addr;
    let refresh = tokio::spawn(crate::metrics::keep_current(node.clone(), cache));
    info!(
        id = %node.id(),
        admin = %admin_addr,
        folders = config.folders.len(),
        "fleetsync running"
    );
    notify(&[sd_notify::NotifyState::Ready]);
    let systemd = tokio::spawn(notify_systemd(node.clone()));
    let trim = tokio::spawn(crate::memory::trim_periodically());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let code = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { info!("interrupted; shutting down"); break 0 }
            _ = term.recv() => { info!("terminated; shutting down"); break 0 }
            _ = hup.recv() => {
                // The outcome is logged; SIGHUP has no one to answer.
                reloader.reload_and_log(&node).await.ok();
            }
            Some(answer) = reload_requests.recv() => {
                // The asker may have given up waiting: nothing to tell then.
                answer.send(reloader.reload_and_log(&node).await).ok();
            }
            c = node.fatal() => break c,
        }
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    systemd.abort();
    trim.abort();
    refresh.abort();
    listeners.stop(&config.data_dir);
    // Shutdown must not hang forever on a wedged peer.
    if tokio::time::timeout(Duration::from_secs(10), node.shutdown())
        .await
        .is_err()
    {
        warn!("shutdown took too long; exiting anyway");
    }
    Ok(code)
}

/// The HTTP listeners: the admin API (loopback TCP and the Unix socket)
/// and, with `[metrics] listen`, the metrics one.
struct Listeners {
    admin: tokio::task::JoinHandle<()>,
    admin_addr: std::net::SocketAddr,
    /// The admin socket's task and path.
    socket: Option<(tokio::task::JoinHandle<()>, std::path::PathBuf)>,
    metrics: Option<tokio::task::JoinHandle<()>>,
}

impl Listeners {
    /// Stop serving and remove the address files (a stale one would point
    /// the CLI or a test at a port someone else may have by now).
    fn stop(self, data_dir: &std::path::Path) {
        self.admin.abort();
        if let Some(m) = self.metrics {
            m.abort();
        }
        if let Some((task, path)) = self.socket {
            task.abort();
            crate::admin::socket::remove(&path);
        }
        for file in [crate::admin::ADDR_FILE, crate::metrics::serve::ADDR_FILE] {
            // Best effort: the file may never have been written.
            std::fs::remove_file(data_dir.join(file)).ok();
        }
    }
}

/// Bind the admin API and the metrics listener (if configured), each
/// recording its address in the data dir.
async fn serve(
    config: &Config,
    node: &NodeHandle,
    cache: &crate::metrics::Cache,
    reloads: tokio::sync::mpsc::Sender<ReloadRequest>,
) -> anyhow::Result<Listeners> {
    let app = crate::admin::routes(node.clone(), reloads, cache.clone());
    let (admin, admin_addr) = crate::admin::serve(config.admin.listen, app.clone()).await?;
    let mut listeners = Listeners {
        admin,
        admin_addr,
        socket: None,
        metrics: None,
    };
    let runtime_dir = std::env::var("RUNTIME_DIRECTORY").ok();
    if let Some(path) = crate::admin::socket::path(config, runtime_dir.as_deref()) {
        match crate::admin::socket::serve(&path, app).await {
            Ok(task) => {
                info!(socket = %path.display(), "admin API on a Unix socket");
                listeners.socket = Some((task, path));
            }
            Err(e) => {
                listeners.stop(&config.data_dir);
                return Err(e);
            }
        }
    }
    // Written once both admin listeners are up: whoever waits for the
    // file (the CLI, tests) finds the socket too.
    record_addr(config, crate::admin::ADDR_FILE, admin_addr);
    if let Some(m) = &config.metrics {
        let served =
            crate::metrics::serve::serve(m.listen, m.bearer_token.as_ref(), cache.clone()).await;
        let (task, addr) = match served {
            Ok(s) => s,
            Err(e) => {
                listeners.stop(&config.data_dir);
                return Err(e);
            }
        };
        record_addr(config, crate::metrics::serve::ADDR_FILE, addr);
        info!(metrics = %addr, token = m.bearer_token.is_some(), "serving /metrics");
        listeners.metrics = Some(task);
    }
    Ok(listeners)
}

/// Write `<data_dir>/<file>` with a bound address; a failure is logged
/// (the node runs on; only the CLI's or a test's lookup suffers).
fn record_addr(config: &Config, file: &str, addr: std::net::SocketAddr) {
    if let Err(e) = crate::admin::write_named_addr_file(&config.data_dir, file, addr) {
        warn!("cannot write {}: {e}", config.data_dir.join(file).display());
    }
}

/// How often `STATUS=` is refreshed for the service manager.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Talk to systemd (no-op without `NOTIFY_SOCKET`): `WATCHDOG=1` at half
/// the configured interval, only while the supervisor is alive and every
/// actor is healthy (the board's freshness, not a sticky flag), so a
/// stuck node is restarted by systemd; `STATUS=` a one-line summary.
async fn notify_systemd(node: NodeHandle) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let status = tokio::spawn(report_status(node.clone()));
    if let Some(interval) = sd_notify::watchdog_enabled() {
        feed_watchdog(&node, interval / 2).await;
    }
    status.await.ok();
}

async fn feed_watchdog(node: &NodeHandle, every: Duration) {
    let mut withheld = false;
    loop {
        if node.healthy() {
            notify(&[sd_notify::NotifyState::Watchdog]);
            withheld = false;
        } else if !withheld {
            warn!("an actor is unhealthy or the supervisor is stuck; withholding the systemd watchdog ping");
            withheld = true;
        }
        tokio::time::sleep(every).await;
    }
}

async fn report_status(node: NodeHandle) {
    loop {
        let st = fleetsync_actors::status::snapshot(&node).await;
        notify(&[sd_notify::NotifyState::Status(&status_line(&st))]);
        tokio::time::sleep(STATUS_EVERY).await;
    }
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    // Best effort: the service manager may be gone (shutting down).
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!("systemd notify failed: {e}");
    }
}

/// `2/3 peers connected, 1/1 folders in sync, 0 restarts` (+ the
/// unhealthy actors, if any).
pub fn status_line(st: &fleetsync_actors::status::NodeStatus) -> String {
    let up = st.peers.iter().filter(|p| p.connected).count();
    let synced = st.folders.iter().filter(|f| f.in_sync).count();
    let restarts: u64 = st.actors.iter().map(|a| a.restarts).sum();
    let mut line = format!(
        "{up}/{} peers connected, {synced}/{} folders in sync, {restarts} restarts",
        st.peers.len(),
        st.folders.len()
    );
    let sick: Vec<&str> = st
        .actors
        .iter()
        .filter(|a| !a.healthy)
        .map(|a| a.name.as_str())
        .collect();
    if !sick.is_empty() {
        line.push_str(&format!("; unhealthy: {}", sick.join(", ")));
    }
    line
}
