//! `fleetsync run`: one node in the foreground.

use std::time::Duration;

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
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Human => b.try_init(),
    };
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

pub fn run(config: Config) -> anyhow::Result<i32> {
    init_logging(&config);
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("fleetsync-rt")
            .build()
            .expect("tokio runtime")
    });
    system.block_on(run_node(config))
}

async fn run_node(config: Config) -> anyhow::Result<i32> {
    if config.mesh.mdns {
        info!("mesh.mdns is set, but LAN discovery is not part of this build yet: nodes find each other through mesh.peers (and inbound connections)");
    }
    let node = fleetsync_actors::start_node(&config).await?;
    let (admin, admin_addr) = match crate::admin::serve(config.admin.listen, node.clone()).await {
        Ok(h) => h,
        Err(e) => {
            node.shutdown().await;
            return Err(e);
        }
    };
    if let Err(e) = crate::admin::write_addr_file(&config.data_dir, admin_addr) {
        warn!(
            "cannot write {}: {e}",
            config.data_dir.join(crate::admin::ADDR_FILE).display()
        );
    }
    info!(
        id = %node.id(),
        admin = %admin_addr,
        folders = config.folders.len(),
        "fleetsync running"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = tokio::spawn(feed_watchdog(node.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let code = tokio::select! {
        _ = tokio::signal::ctrl_c() => { info!("interrupted; shutting down"); 0 }
        _ = term.recv() => { info!("terminated; shutting down"); 0 }
        c = node.fatal() => c,
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    watchdog.abort();
    admin.abort();
    let _ = std::fs::remove_file(config.data_dir.join(crate::admin::ADDR_FILE));
    // Shutdown must not hang forever on a wedged peer.
    if tokio::time::timeout(Duration::from_secs(10), node.shutdown())
        .await
        .is_err()
    {
        warn!("shutdown took too long; exiting anyway");
    }
    Ok(code)
}

/// `WATCHDOG=1` at half the configured interval, only while every actor
/// answers its ping: a stuck node gets restarted by systemd.
async fn feed_watchdog(node: fleetsync_actors::NodeHandle) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = interval / 2;
    loop {
        tokio::time::sleep(every).await;
        if node.healthy() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            warn!("an actor is not answering; withholding the systemd watchdog ping");
        }
    }
}
