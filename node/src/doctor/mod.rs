//! `fleetsync doctor`: checks an operator would otherwise do by hand, each
//! a [`Check`] (ok / warn / fail, a one-line detail, and for anything not
//! ok the command or config change that fixes it).
//!
//! - [`files`]: offline — the config file, the data dir and each folder
//!   (exists, owner, mode, writable, filesystem), free space against
//!   `min_free`, inotify limits against the directories to watch.
//! - [`node`]: the running node through its admin API — reachable and
//!   healthy, folder faults, each peer (connected, proven, rtt), clock
//!   offset, recent errors and rejected inputs.
//! - [`systemd`]: the unit's state when the machine runs systemd.
//!
//! Exit code: 0 all ok, 1 something failed, 2 warnings only.

mod files;
mod node;
mod systemd;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use fleetsync_config::{Config, ConfigError, Overrides};
use serde::Serialize;

/// `doctor`: something failed.
pub const EXIT_FAIL: i32 = 1;
/// `doctor`: warnings, nothing failed.
pub const EXIT_WARN: i32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// The command or config change that fixes it (never for `ok`).
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::bad(Status::Warn, name, detail, fix)
    }

    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::bad(Status::Fail, name, detail, fix)
    }

    fn bad(
        status: Status,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Everything doctor found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
struct Summary {
    /// The worst status of any check.
    status: Status,
    ok: usize,
    warn: usize,
    fail: usize,
    exit_code: i32,
}

impl Report {
    fn worst(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    pub fn exit_code(&self) -> i32 {
        match self.worst() {
            Status::Ok => 0,
            Status::Warn => EXIT_WARN,
            Status::Fail => EXIT_FAIL,
        }
    }

    fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }

    fn summary(&self) -> Summary {
        Summary {
            status: self.worst(),
            ok: self.count(Status::Ok),
            warn: self.count(Status::Warn),
            fail: self.count(Status::Fail),
            exit_code: self.exit_code(),
        }
    }

    /// `ok    name: detail`, and under a line that is not ok its fix.
    pub fn text(&self) -> String {
        let mut o = String::new();
        for c in &self.checks {
            let _ = writeln!(o, "{:<4}  {}: {}", c.status.as_str(), c.name, c.detail);
            if let Some(fix) = &c.fix {
                let _ = writeln!(o, "      fix: {fix}");
            }
        }
        let s = self.summary();
        let _ = writeln!(o, "{} ok, {} warn, {} fail", s.ok, s.warn, s.fail);
        o
    }

    /// `{"checks":[{name,status,detail,fix}],"summary":{...}}`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "checks": self.checks, "summary": self.summary() })
    }
}

/// Where doctor looks besides the config (tests point these elsewhere).
#[derive(Debug, Clone)]
pub struct Probe {
    /// `/proc/sys/fs/inotify`.
    pub inotify_dir: PathBuf,
    /// Ask systemd about the unit (off in unit tests).
    pub systemd: bool,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            inotify_dir: PathBuf::from("/proc/sys/fs/inotify"),
            systemd: true,
        }
    }
}

/// `fleetsync doctor --config FILE [--socket PATH] [--json]`; returns the
/// exit code.
pub fn run(config_path: Option<&Path>, socket: Option<&Path>, json: bool) -> anyhow::Result<i32> {
    let report = diagnose(config_path, socket, &Probe::default());
    if json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.text());
    }
    Ok(report.exit_code())
}

/// Every check, offline ones first; the node's when it answers (through
/// `socket` if given, else the config's loopback address). A config this
/// user may not read leaves the node's checks, through the admin socket.
pub fn diagnose(config_path: Option<&Path>, socket: Option<&Path>, probe: &Probe) -> Report {
    let mut report = Report::default();
    let Some(config_path) = config_path else {
        let socket = socket.expect("the CLI asks for a config or a socket");
        report.checks.push(Check::warn(
            "config",
            "none named: only the node's checks, through its admin socket",
            "for the offline checks too: fleetsync doctor --config FILE",
        ));
        node_only(&mut report, socket, Path::new("FILE"), probe);
        return report;
    };
    let config = match Config::load(config_path, &Overrides::default()) {
        Ok(c) => c,
        Err(e) => {
            let socket = socket
                .map(Path::to_path_buf)
                .or_else(|| crate::client::default_socket(Some(config_path)));
            match socket {
                Some(s) if crate::client::unreadable(&e) => {
                    report.checks.push(Check::warn(
                        "config",
                        format!(
                            "{e}; offline checks skipped, the node is checked through its admin socket {}",
                            s.display()
                        ),
                        format!(
                            "for the offline checks, run as root or the node's user: sudo fleetsync doctor --config {}",
                            config_path.display()
                        ),
                    ));
                    node_only(&mut report, &s, config_path, probe);
                }
                _ => report.checks.push(config_error(&e)),
            }
            return report;
        }
    };
    report.checks.push(Check::ok(
        "config",
        format!(
            "{} is valid ({} folders, {} peers configured)",
            config_path.display(),
            config.folders.len(),
            config.mesh.peers.len() + config.mesh.ticket_peers.len()
        ),
    ));
    report.checks.extend(files::config_file_mode(config_path));
    report.checks.extend(files::checks(&config, probe));
    let at = match socket {
        Some(s) => Ok(crate::client::Endpoint::Unix(s.to_path_buf())),
        None => crate::client::admin_addr(&config).map(crate::client::Endpoint::Tcp),
    };
    report
        .checks
        .extend(node::checks(Some(&config), at, config_path));
    if probe.systemd {
        report.checks.push(systemd::check());
    }
    report
}

/// The node's checks through `socket`, and systemd's.
fn node_only(report: &mut Report, socket: &Path, config_path: &Path, probe: &Probe) {
    let at = Ok(crate::client::Endpoint::Unix(socket.to_path_buf()));
    report.checks.extend(node::checks(None, at, config_path));
    if probe.systemd {
        report.checks.push(systemd::check());
    }
}

/// A config that does not load is one `fail` line naming the key.
fn config_error(e: &ConfigError) -> Check {
    match e {
        ConfigError::Invalid {
            path,
            key,
            problem,
            fix,
        } => Check::fail("config", format!("{path}: {key}: {problem}"), fix.clone()),
        ConfigError::Read { path, source, fix } => Check::fail(
            "config",
            format!("cannot read {}: {source}", path.display()),
            fix.clone(),
        ),
        other => Check::fail(
            "config",
            other.to_string(),
            "correct the config file as the message says",
        ),
    }
}

#[cfg(test)]
mod tests;
