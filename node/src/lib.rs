//! The `fleetsync` binary's library half.
//!
//! - [`cli`]: subcommands (`init`, `id`, `invite`, `join`, `run`,
//!   `status`, `history`, `restore`, `demo`) and their exit codes.
//! - [`invite`]: `invite` prints a join ticket, `join` turns one into a
//!   config (rendered like `init`'s, validated with the environment).
//! - [`daemon`]: `run` — logging, the actix system on a multi-threaded
//!   tokio runtime, [`fleetsync_actors::start_node`], the admin API, systemd
//!   notification (`READY=1`, `WATCHDOG=1` only while every actor answers),
//!   signal handling.
//! - [`admin`]: the local admin API on 127.0.0.1 (JSON status, history,
//!   health, Prometheus metrics) and the text rendering the CLI prints.
//! - [`page`]: the admin API's HTML status page at `/` (maud).
//! - [`metrics`]: `/metrics` (prometheus-client) from a snapshot kept
//!   current once a second, and the `[metrics] listen` listener.
//! - [`client`]: the CLI side of the admin API.
//! - [`reload`]: SIGHUP / `fleetsync reload`: what a running node changes
//!   (peers, allow/deny, log level) and what needs a restart.
//! - [`doctor`]: `doctor` — offline checks of the setup, then the running
//!   node's health, peers and recent errors, each with its fix.
//! - [`wait`]: `status`'s exit code and `wait --in-sync` (judging `/status`).
//! - [`watch`]: `status --watch` (indicatif bars, rate/ETA from snapshots).
//! - [`restore`]: `restore`'s arguments (a version, a time) and its text.
//! - [`demo`]: a 3-node cluster on loopback that shows sync happening.
//! - [`memory`]: the allocator knobs (two malloc arenas, a trim a minute).
//!
//! `anyhow` lives here only; the library crates return typed errors.

pub mod admin;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod invite;
pub mod memory;
pub mod metrics;
pub mod page;
pub mod reload;
pub mod restore;
pub mod wait;
pub mod watch;
