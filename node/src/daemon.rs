//! `fleetsync run`: one node in the foreground.

use std::{io::IsTerminal as _, time::Duration};

use fleetsync_actors::NodeHandle;
use fleetsync_config::{Config, LogFormat};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

pub fn init_logging(config: &Config) {
    // FLEETSYNC_LOG (a tracing filter) wins over log.level for debugging.
    let filter = std::env::var("FLEETSYNC_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(quiet(&config.log.level)).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Colour only for a person at a terminal: the journal and log files get
    // plain text (tracing-subscriber colours by default, even into a pipe).
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(log_colour(std::io::stderr().is_terminal()));
    // An error here means a subscriber is already set (a test harness
    // owning logging): keep that one.
    let _ = match config.log.format {
        // One object per line. The field names are a contract for log
        // shippers (README "Logs"): pinned here rather than left to the
        // library's defaults.
        LogFormat::Json => b
            .json()
            .flatten_event(false)
            .with_current_span(true)
            .with_span_list(true)
            .with_target(true)
            .with_level(true)
            .try_init(),
        LogFormat::Human => b.try_init(),
    };
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
pub type Reload = Box<dyn Fn() -> anyhow::Result<Config> + Send>;

pub fn run(config: Config, reload: Reload) -> anyhow::Result<i32> {
    init_logging(&config);
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("fleetsync-rt")
            .build()
            .expect("tokio runtime")
    });
    system.block_on(run_node(config, reload))
}

async fn run_node(config: Config, reload: Reload) -> anyhow::Result<i32> {
    let node = fleetsync_actors::start_node(&config).await?;
    let cache = crate::metrics::Cache::default();
    let listeners = match serve(&config, &node, &cache).await {
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
            _ = hup.recv() => reload_access(&node, &reload).await,
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

/// The HTTP listeners: the admin API and, with `[metrics] listen`, the
/// metrics one.
struct Listeners {
    admin: tokio::task::JoinHandle<()>,
    admin_addr: std::net::SocketAddr,
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
) -> anyhow::Result<Listeners> {
    let (admin, admin_addr) =
        crate::admin::serve(config.admin.listen, node.clone(), cache.clone()).await?;
    record_addr(config, crate::admin::ADDR_FILE, admin_addr);
    let mut listeners = Listeners {
        admin,
        admin_addr,
        metrics: None,
    };
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

/// SIGHUP: read the config again and apply `[mesh] allow` and `deny`
/// (revoking a member takes effect at once, without a restart). A config
/// that does not load is refused with its error; the node keeps running
/// as it was. Other changes need a restart.
async fn reload_access(node: &NodeHandle, reload: &Reload) {
    let config = match reload() {
        Ok(c) => c,
        Err(e) => {
            warn!("reload refused, keeping the running config: {e:#}");
            return;
        }
    };
    match fleetsync_actors::access_of(&config) {
        Ok((allow, deny)) => {
            let cut = node.mesh.set_access(allow, deny).await;
            info!(
                disconnected = cut.len(),
                "reloaded [mesh] allow and deny (other changes need a restart)"
            );
        }
        Err(e) => warn!("reload refused, keeping the running config: {e}"),
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
