//! The `fleetsync.service` unit's state, on a machine that runs systemd
//! and has the unit installed; otherwise an `ok` line saying it was
//! skipped.

use std::{path::Path, process::Command};

use super::Check;

const UNIT: &str = "fleetsync.service";

pub fn check() -> Check {
    // sd_booted(3): systemd is the init system iff this directory exists.
    let booted = Path::new("/run/systemd/system").is_dir();
    let load = booted.then(|| systemctl(&["show", "-p", "LoadState", "--value", UNIT]));
    let active = match &load {
        Some(Some(l)) if l == "loaded" => systemctl(&["is-active", UNIT]),
        _ => None,
    };
    judge(booted, load.flatten().as_deref(), active.as_deref())
}

/// What `systemctl` printed (trimmed), `None` when it could not run.
fn systemctl(args: &[&str]) -> Option<String> {
    let out = Command::new("systemctl").args(args).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `booted`: systemd runs this machine; `load`: the unit's LoadState;
/// `active`: what `systemctl is-active` said.
pub fn judge(booted: bool, load: Option<&str>, active: Option<&str>) -> Check {
    const NAME: &str = "systemd";
    if !booted {
        return Check::ok(NAME, "not under systemd (skipped)");
    }
    match (load, active) {
        (None, _) => Check::ok(NAME, "systemctl did not answer (skipped)"),
        (Some(l), _) if l != "loaded" => Check::ok(
            NAME,
            format!("no {UNIT} installed (LoadState {l}; skipped)"),
        ),
        (_, Some("active")) => Check::ok(NAME, format!("{UNIT} is active")),
        (_, Some("failed")) => Check::fail(
            NAME,
            format!("{UNIT} failed"),
            "see why: journalctl -u fleetsync -n 50; then: systemctl restart fleetsync",
        ),
        (_, state) => Check::warn(
            NAME,
            format!("{UNIT} is {}", state.unwrap_or("in an unknown state")),
            "systemctl enable --now fleetsync",
        ),
    }
}
