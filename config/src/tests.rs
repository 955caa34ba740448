use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// Absolute and nonexistent, so tests without tempfiles do no I/O.
const CFG: &str = "/etc/fleetsync/fleetsync.toml";

fn node_id(byte: u8) -> String {
    hex::encode([byte; 32])
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A file with a valid secret; `rest` continues inside `[mesh]`.
fn with_secret(rest: &str) -> String {
    format!("[mesh]\nfleet_secret = \"{SECRET}\"\n{rest}")
}

fn try_parse_full(
    text: &str,
    vars: &[(&str, &str)],
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Path::new(CFG), env(vars), overrides)
}

fn try_parse(text: &str) -> Result<Config, ConfigError> {
    try_parse_full(text, &[], &Overrides::default())
}

#[track_caller]
fn parse(text: &str) -> Config {
    try_parse(text).unwrap_or_else(|e| panic!("expected a valid config, got: {e}"))
}

#[track_caller]
fn err(text: &str) -> ConfigError {
    match try_parse(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

#[track_caller]
fn err_full(text: &str, vars: &[(&str, &str)], overrides: &Overrides) -> ConfigError {
    match try_parse_full(text, vars, overrides) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

/// The error is an `Invalid` about `key`, labelled with `path`, whose
/// one-line message names the key and whose fix contains `fix`.
#[track_caller]
fn assert_invalid_at(e: &ConfigError, path: &str, key: &str, fix: &str) {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "multi-line message: {msg:?}");
    assert_eq!(e.key(), Some(key), "wrong key in: {msg}");
    assert!(msg.contains(key), "key missing from: {msg}");
    match e {
        ConfigError::Invalid {
            path: p, fix: f, ..
        } => {
            assert_eq!(p, path, "wrong path label in: {msg}");
            assert!(f.contains(fix), "fix {fix:?} missing from: {msg}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid(e: &ConfigError, key: &str, fix: &str) {
    assert_invalid_at(e, CFG, key, fix);
}

#[track_caller]
fn problem(e: &ConfigError) -> &str {
    match e {
        ConfigError::Invalid { problem, .. } => problem,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn folder_toml(id: &str, path: &str) -> String {
    format!("[[folders]]\nid = \"{id}\"\npath = \"{path}\"\n")
}

// ---------------------------------------------------------------- defaults

#[test]
fn defaults_for_minimal_file() {
    let c = parse(&with_secret(""));
    assert_eq!(c.config_path.as_deref(), Some(Path::new(CFG)));
    assert_eq!(c.data_dir, Path::new("/etc/fleetsync"));
    assert_eq!(
        c.mesh.listen,
        DEFAULT_MESH_LISTEN.parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.mesh.fleet_secret.to_hex(), SECRET);
    assert!(c.mesh.peers.is_empty());
    assert!(c.mesh.mdns);
    assert_eq!(c.mesh.allow, None);
    assert_eq!(
        c.admin.listen,
        DEFAULT_ADMIN_LISTEN.parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Human);
    assert!(c.folders.is_empty(), "no folders is a valid relay node");
    assert_eq!(c.mesh.transfer_stall_timeout, Duration::from_secs(30));
    assert!(c.mesh.peer_exchange);
    assert_eq!(c.mesh.max_peers, 32);
    assert_eq!(c.supervisor.ping_interval, Duration::from_secs(1));
    assert_eq!(c.supervisor.stall_timeout, Duration::from_secs(10));
    assert_eq!(c.supervisor.max_restarts, 5);
    assert_eq!(c.supervisor.restart_window, Duration::from_secs(60));
    assert_eq!(c.supervisor, SupervisorConfig::default());
    assert!(!c.debug.fault_injection);
}

#[test]
fn folder_defaults() {
    let c = parse(&format!(
        "{}{}",
        with_secret(""),
        folder_toml("shared", "/srv/shared")
    ));
    let f = c.folder("shared").expect("folder by id");
    assert_eq!(f.path, Path::new("/srv/shared"));
    assert_eq!(f.mode, FolderMode::SendReceive);
    assert_eq!(f.settle, Duration::from_millis(200));
    assert_eq!(f.rescan, Duration::from_secs(3600));
    assert_eq!(f.watch, WatchMode::Notify);
    assert_eq!(f.poll_interval, Duration::from_secs(2));
    assert_eq!(f.max_pending, 100_000);
    assert_eq!(f.max_files, 10_000_000);
    assert!(c.folder("other").is_none());
}

#[test]
fn max_pending_and_max_files_are_whole_numbers_from_1_to_a_billion() {
    for key in ["max_pending", "max_files"] {
        let text = |v: &str| {
            format!(
                "{}{}{key} = {v}\n",
                with_secret(""),
                folder_toml("shared", "/srv/shared")
            )
        };
        let f = parse(&text("7")).folder("shared").unwrap().clone();
        assert_eq!(
            if key == "max_pending" {
                f.max_pending
            } else {
                f.max_files
            },
            7
        );
        for bad in ["0", "-1", "1000000001"] {
            let e = err(&text(bad));
            assert_invalid(&e, &format!("folders[0].{key}"), "whole number from 1 to");
        }
        let e = err(&text("\"lots\""));
        assert!(e.to_string().contains(&format!("folders[0].{key}")), "{e}");
    }
}

#[test]
fn every_key_set() {
    let text = format!(
        r#"data_dir = "/var/lib/fleetsync"
[mesh]
listen = "[::]:7400"
fleet_secret = "{}"
peers = ["{a}@127.0.0.1:7301", "{b}@[::1]:7302"]
mdns = false
allow = ["{a}", "{b}"]
transfer_stall_timeout = "45s"
[admin]
listen = "[::1]:7381"
[log]
level = "info,fleetsync=debug"
format = "json"
[supervisor]
ping_interval = "500ms"
stall_timeout = "20s"
max_restarts = 3
restart_window = "5m"
[debug]
fault_injection = true
[[folders]]
id = "a.B_c-1"
path = "/srv/a"
mode = "receive-only"
settle = "1s"
rescan = "10m"
watch = "poll"
poll_interval = "500ms"
[[folders]]
id = "b"
path = "/srv/b"
mode = "send-only"
"#,
        SECRET.to_uppercase(),
        a = node_id(0xaa),
        b = node_id(0xbb).to_uppercase(),
    );
    let c = parse(&text);
    assert_eq!(c.data_dir, Path::new("/var/lib/fleetsync"));
    assert_eq!(c.mesh.listen, "[::]:7400".parse::<SocketAddr>().unwrap());
    assert_eq!(c.mesh.fleet_secret.to_hex(), SECRET);
    assert_eq!(c.mesh.peers.len(), 2);
    assert_eq!(c.mesh.peers[0].id, [0xaa; 32]);
    assert_eq!(c.mesh.peers[1].id, [0xbb; 32]);
    assert_eq!(
        c.mesh.peers[1].addr,
        PeerHost::Ip("[::1]:7302".parse::<SocketAddr>().unwrap())
    );
    assert!(!c.mesh.mdns);
    assert_eq!(c.mesh.allow, Some(vec![[0xaa; 32], [0xbb; 32]]));
    assert_eq!(c.admin.listen, "[::1]:7381".parse::<SocketAddr>().unwrap());
    assert_eq!(c.log.level, "info,fleetsync=debug");
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.mesh.transfer_stall_timeout, Duration::from_secs(45));
    assert_eq!(
        c.supervisor,
        SupervisorConfig {
            ping_interval: Duration::from_millis(500),
            stall_timeout: Duration::from_secs(20),
            max_restarts: 3,
            restart_window: Duration::from_secs(300),
        }
    );
    assert!(c.debug.fault_injection);
    let a = &c.folders[0];
    assert_eq!(a.id, "a.B_c-1");
    assert_eq!(a.mode, FolderMode::ReceiveOnly);
    assert_eq!(a.settle, Duration::from_secs(1));
    assert_eq!(a.rescan, Duration::from_secs(600));
    assert_eq!(a.watch, WatchMode::Poll);
    assert_eq!(a.poll_interval, Duration::from_millis(500));
    assert_eq!(c.folders[1].mode, FolderMode::SendOnly);
}

#[test]
fn empty_allow_list_is_kept_distinct_from_absent() {
    let c = parse(&with_secret("allow = []\n"));
    assert_eq!(c.mesh.allow, Some(vec![]));
}

// ------------------------------------------------------- file shape errors

#[test]
fn unknown_key_in_section() {
    let e = err(&with_secret("listn = \"0.0.0.0:1\"\n"));
    assert_invalid(
        &e,
        "mesh.listn",
        "listen, fleet_secret, fleet_secret_file, peers, mdns, allow",
    );
    assert!(problem(&e).contains("did you mean \"listen\""), "{e}");
}

#[test]
fn unknown_key_at_top_level() {
    let e = err(&format!("data_dri = \"/x\"\n{}", with_secret("")));
    assert_invalid(
        &e,
        "data_dri",
        "data_dir, mesh, admin, metrics, log, supervisor, debug, folders",
    );
}

#[test]
fn unknown_section() {
    let e = err(&format!(
        "{}[loggging]\nlevel = \"info\"\n",
        with_secret("")
    ));
    assert_invalid(
        &e,
        "loggging",
        "data_dir, mesh, admin, metrics, log, supervisor, debug, folders",
    );
}

#[test]
fn unknown_key_in_folder() {
    let e = err(&format!(
        "{}[[folders]]\nid = \"x\"\npth = \"/srv/x\"\n",
        with_secret("")
    ));
    assert_invalid(
        &e,
        "folders[0].pth",
        "id, path, mode, settle, rescan, watch, poll_interval, max_pending, max_files, min_free, umask, max_delete_fraction, tombstone_ttl, versions",
    );
}

#[test]
fn unknown_key_in_admin_and_log() {
    let e = err(&format!("{}[admin]\nport = 1\n", with_secret("")));
    assert_invalid(&e, "admin.port", "listen");
    let e = err(&format!("{}[log]\nlevl = \"x\"\n", with_secret("")));
    assert_invalid(&e, "log.levl", "level, format");
}

#[test]
fn syntax_error_is_one_line_with_location() {
    let e = err("[mesh]\nlisten = 0.0.0.0:7300\n");
    assert_invalid(&e, "<syntax>", "TOML syntax");
    assert!(problem(&e).contains("line 2"), "{e}");
}

#[test]
fn duplicate_toml_key_is_a_syntax_error() {
    let e = err(&with_secret("mdns = true\nmdns = false\n"));
    assert_invalid(&e, "<syntax>", "TOML syntax");
}

#[test]
fn wrong_value_types() {
    let e = err(&with_secret("mdns = \"yes\"\n"));
    assert_invalid(&e, "mesh.mdns", "mdns = true");
    assert!(problem(&e).contains("found a string"), "{e}");

    let e = err(&with_secret("listen = 7300\n"));
    assert_invalid(&e, "mesh.listen", "quote the value");

    let e = err(&with_secret("peers = \"x@1.2.3.4:5\"\n"));
    assert_invalid(&e, "mesh.peers", "list of quoted strings");

    let e = err(&with_secret("allow = [1]\n"));
    assert_invalid(&e, "mesh.allow[0]", "list of quoted strings");

    let e = err("mesh = 5\n");
    assert_invalid(&e, "mesh", "[mesh]");

    let e = err(&format!(
        "{}[[folders]]\nid = 3\npath = \"/x\"\n",
        with_secret("")
    ));
    assert_invalid(&e, "folders[0].id", "quote the value");
}

#[test]
fn single_bracket_folders_table() {
    let e = err(&format!(
        "{}[folders]\nid = \"a\"\npath = \"/a\"\n",
        with_secret("")
    ));
    assert_invalid(&e, "folders", "[[folders]]");
}

#[test]
fn secret_type_error_does_not_echo_value() {
    let e = err("[mesh]\nfleet_secret = 123456789\n");
    assert_invalid(&e, "mesh.fleet_secret", "quote the value");
    assert!(!e.to_string().contains("123456789"), "{e}");
}

// ------------------------------------------------------------- fleet secret

#[test]
fn missing_fleet_secret() {
    let e = err("");
    assert_invalid(
        &e,
        "mesh.fleet_secret",
        "run \"fleetsync init\" or set fleet_secret = \"<64 hex chars>\"",
    );
}

#[test]
fn both_secret_spellings_in_file() {
    let e = err(&with_secret("fleet_secret_file = \"/etc/secret\"\n"));
    assert_invalid(&e, "mesh.fleet_secret", "only one");
}

#[test]
fn bad_secret_length_is_reported_without_the_value() {
    let short = "deadbeefcafe";
    let e = err(&format!("[mesh]\nfleet_secret = \"{short}\"\n"));
    assert_invalid(&e, "mesh.fleet_secret", "64 hex chars (32 bytes)");
    assert!(e.to_string().contains("openssl rand -hex 32"), "{e}");
    assert!(problem(&e).contains("found 12 chars"), "{e}");
    assert!(!e.to_string().contains(short), "secret echoed: {e}");
}

#[test]
fn non_hex_secret() {
    let bad = format!("{}zz", &SECRET[..62]);
    let e = err(&format!("[mesh]\nfleet_secret = \"{bad}\"\n"));
    assert_invalid(&e, "mesh.fleet_secret", "64 hex chars (32 bytes)");
    assert!(problem(&e).contains("non-hex"), "{e}");
    assert!(!e.to_string().contains(&bad), "secret echoed: {e}");
}

#[test]
fn secret_file_is_read_trimmed_and_relative_to_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fleet.secret"), format!("  {SECRET}\n\n")).unwrap();
    let cfg = dir.path().join(CONFIG_FILE_NAME);
    std::fs::write(&cfg, "[mesh]\nfleet_secret_file = \"fleet.secret\"\n").unwrap();
    let c = Config::load_with_env(&cfg, env(&[]), &Overrides::default()).unwrap();
    assert_eq!(c.mesh.fleet_secret.to_hex(), SECRET);
}

#[test]
fn unreadable_secret_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.secret");
    let text = format!("[mesh]\nfleet_secret_file = \"{}\"\n", missing.display());
    let e = err(&text);
    assert_invalid(&e, "mesh.fleet_secret_file", "readable file");
}

#[test]
fn secret_file_with_bad_content() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.secret");
    std::fs::write(&file, "not-a-secret").unwrap();
    let e = err(&format!(
        "[mesh]\nfleet_secret_file = \"{}\"\n",
        file.display()
    ));
    assert_invalid(&e, "mesh.fleet_secret_file", "64 hex chars (32 bytes)");
    assert!(!e.to_string().contains("not-a-secret"), "{e}");
}

// ------------------------------------------------------------- addresses

#[test]
fn bad_mesh_listen() {
    let e = err(&with_secret("listen = \"localhost:7300\"\n"));
    assert_invalid(&e, "mesh.listen", "0.0.0.0:7300");
}

#[test]
fn bad_admin_listen() {
    let e = err(&format!("{}[admin]\nlisten = \"7380\"\n", with_secret("")));
    assert_invalid(&e, "admin.listen", "127.0.0.1:7380");
}

// ---------------------------------------------------------------- metrics

#[test]
fn metrics_is_off_unless_listen_is_set() {
    assert!(parse(&with_secret("")).metrics.is_none());
}

#[test]
fn metrics_on_loopback_needs_no_token() {
    let c = parse(&format!(
        "{}[metrics]\nlisten = \"127.0.0.1:9380\"\n",
        with_secret("")
    ));
    let m = c.metrics.expect("metrics configured");
    assert_eq!(m.listen.port(), 9380);
    assert!(m.bearer_token.is_none());
}

#[test]
fn metrics_off_loopback_without_a_token_file_is_refused() {
    let e = err(&format!(
        "{}[metrics]\nlisten = \"0.0.0.0:9380\"\n",
        with_secret("")
    ));
    assert_invalid(&e, "metrics.listen", "bearer_token_file");
    assert!(problem(&e).contains("not a loopback address"), "{e}");
}

#[test]
fn metrics_token_is_read_trimmed_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.token");
    std::fs::write(&file, "  s3cr3t-token\n").unwrap();
    let c = parse(&format!(
        "{}[metrics]\nlisten = \"0.0.0.0:9380\"\nbearer_token_file = \"{}\"\n",
        with_secret(""),
        file.display()
    ));
    let m = c.metrics.expect("metrics configured");
    assert_eq!(
        m.bearer_token.as_ref().map(|t| t.as_str()),
        Some("s3cr3t-token")
    );
    assert!(
        !format!("{m:?}").contains("s3cr3t"),
        "token in Debug: {m:?}"
    );
}

#[test]
fn metrics_token_file_unreadable_or_empty_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.token");
    let text = |f: &std::path::Path| {
        format!(
            "{}[metrics]\nlisten = \"0.0.0.0:9380\"\nbearer_token_file = \"{}\"\n",
            with_secret(""),
            f.display()
        )
    };
    let e = err(&text(&missing));
    assert_invalid(&e, "metrics.bearer_token_file", "a file this user can read");
    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, " \n").unwrap();
    let e = err(&text(&empty));
    assert_invalid(&e, "metrics.bearer_token_file", "one token");
    assert!(problem(&e).contains("empty"), "{e}");
}

#[test]
fn metrics_token_file_without_listen_is_refused() {
    let e = err(&format!(
        "{}[metrics]\nbearer_token_file = \"/x\"\n",
        with_secret("")
    ));
    assert_invalid(&e, "metrics.bearer_token_file", "listen");
}

#[test]
fn metrics_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.token");
    std::fs::write(&file, "tok\n").unwrap();
    let file = file.display().to_string();
    let vars = [
        ("FLEETSYNC_METRICS_LISTEN", "0.0.0.0:9390"),
        ("FLEETSYNC_METRICS_BEARER_TOKEN_FILE", file.as_str()),
    ];
    let c = try_parse_full(&with_secret(""), &vars, &Overrides::default()).unwrap();
    let m = c.metrics.expect("metrics from env");
    assert_eq!(m.listen.port(), 9390);
    assert_eq!(m.bearer_token.as_ref().map(|t| t.as_str()), Some("tok"));
    let e = err_full(
        &with_secret(""),
        &[("FLEETSYNC_METRICS_LISTEN", "0.0.0.0:9390")],
        &Overrides::default(),
    );
    assert_invalid_at(&e, "<env>", "FLEETSYNC_METRICS_LISTEN", "bearer_token_file");
}

#[test]
fn bad_metrics_listen() {
    let e = err(&format!(
        "{}[metrics]\nlisten = \"9380\"\n",
        with_secret("")
    ));
    assert_invalid(&e, "metrics.listen", "0.0.0.0:9380");
}

#[test]
fn admin_listen_must_be_loopback() {
    let e = err(&format!(
        "{}[admin]\nlisten = \"0.0.0.0:7380\"\n",
        with_secret("")
    ));
    assert_invalid(&e, "admin.listen", "127.0.0.1:7380");
    assert!(problem(&e).contains("loopback"), "{e}");
    let c = parse(&format!(
        "{}[admin]\nlisten = \"127.0.0.2:9000\"\n",
        with_secret("")
    ));
    assert_eq!(c.admin.listen.port(), 9000);
}

#[test]
fn admin_socket_default_path_off_and_env() {
    let c = parse(&with_secret(""));
    assert_eq!(c.admin.socket, AdminSocket::Default);
    let c = parse(&format!(
        "{}[admin]\nsocket = \"/run/fleetsync/admin.sock\"\n",
        with_secret("")
    ));
    assert_eq!(
        c.admin.socket,
        AdminSocket::At(PathBuf::from("/run/fleetsync/admin.sock"))
    );
    // Relative to the config file's directory, like every path in the file.
    let c = parse(&format!(
        "{}[admin]\nsocket = \"a.sock\"\n",
        with_secret("")
    ));
    assert_eq!(
        c.admin.socket,
        AdminSocket::At(PathBuf::from("/etc/fleetsync/a.sock"))
    );
    let c = parse(&format!("{}[admin]\nsocket = \"off\"\n", with_secret("")));
    assert_eq!(c.admin.socket, AdminSocket::Off);
    let c = try_parse_full(
        &with_secret(""),
        &[("FLEETSYNC_ADMIN_SOCKET", "/tmp/x.sock")],
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        c.admin.socket,
        AdminSocket::At(PathBuf::from("/tmp/x.sock"))
    );
    let shown = c
        .settings()
        .into_iter()
        .find(|s| s.key == "admin.socket")
        .unwrap();
    assert_eq!(shown.source, Source::Env("FLEETSYNC_ADMIN_SOCKET".into()));
}

#[test]
fn admin_socket_too_long_names_the_key_and_limit() {
    let long = format!("/run/{}/admin.sock", "d".repeat(120));
    let e = err(&format!(
        "{}[admin]\nsocket = \"{long}\"\n",
        with_secret("")
    ));
    assert_invalid(&e, "admin.socket", "/run/fleetsync/admin.sock");
    assert!(problem(&e).contains("at most 107"), "{e}");
    let e = err_full(
        &with_secret(""),
        &[("FLEETSYNC_ADMIN_SOCKET", &long)],
        &Overrides::default(),
    );
    assert_invalid_at(&e, "<env>", "FLEETSYNC_ADMIN_SOCKET", "shorter path");
}

#[test]
fn bad_peer() {
    let text = with_secret(&format!(
        "peers = [\"{}@10.0.0.1:7300\", \"{}10.0.0.2:7300\"]\n",
        node_id(1),
        node_id(2)
    ));
    let e = err(&text);
    assert_invalid(&e, "mesh.peers[1]", "\"<64-hex node id>@<ip>:<port>\"");
}

#[test]
fn peer_with_short_id_or_bad_address() {
    let e = err(&with_secret("peers = [\"abcd@10.0.0.1:7300\"]\n"));
    assert_invalid(&e, "mesh.peers[0]", "<64-hex node id>@<ip>:<port>");
    assert!(problem(&e).contains("found 4 chars"), "{e}");
    let e = err(&with_secret(&format!(
        "peers = [\"{}@host_1:1\"]\n",
        node_id(1)
    )));
    assert_invalid(&e, "mesh.peers[0]", "<64-hex node id>@<ip>:<port>");
    assert!(problem(&e).contains("not a valid host name label"), "{e}");
    let e = err(&with_secret(&format!(
        "peers = [\"{}@10.0.0.300:7300\"]\n",
        node_id(1)
    )));
    assert_invalid(&e, "mesh.peers[0]", "<host name>:<port>");
    assert!(
        problem(&e).contains("neither an IP address nor a host name"),
        "{e}"
    );
}

#[test]
fn host_name_peers_are_accepted() {
    let text = with_secret(&format!(
        "peers = [\"{a}@host.example:7300\", \"{b}@localhost:1\", \"{a}@fleet-1.lan.:65535\"]\n",
        a = node_id(0xaa),
        b = node_id(0xbb),
    ));
    let c = parse(&text);
    let name = |host: &str, port| PeerHost::Name {
        host: host.to_string(),
        port,
    };
    assert_eq!(c.mesh.peers[0].addr, name("host.example", 7300));
    assert_eq!(c.mesh.peers[1].addr, name("localhost", 1));
    assert_eq!(c.mesh.peers[2].addr, name("fleet-1.lan.", 65535));
    // Round trip through the text form `init` and `join` write.
    assert_eq!(
        c.mesh.peers[0].to_string(),
        format!("{}@host.example:7300", node_id(0xaa))
    );
    let long_label = "a".repeat(64);
    for bad in [
        format!("{long_label}.example:7300"),
        "-host.example:7300".to_string(),
        "host..example:7300".to_string(),
        format!("{}bc:7300", "a.".repeat(126)),
    ] {
        let e = err(&with_secret(&format!(
            "peers = [\"{}@{bad}\"]\n",
            node_id(1)
        )));
        assert_invalid(&e, "mesh.peers[0]", "<host name>:<port>");
    }
}

#[test]
fn a_peer_without_a_port_is_an_error() {
    for (addr, why) in [
        ("host.example", "has no port"),
        ("host.example:0", "not a number from 1 to 65535"),
        ("host.example:99999", "not a number from 1 to 65535"),
        ("host.example:", "not a number from 1 to 65535"),
    ] {
        let e = err(&with_secret(&format!(
            "peers = [\"{}@{addr}\"]\n",
            node_id(1)
        )));
        assert_invalid(&e, "mesh.peers[0]", "<host name>:<port>");
        assert!(problem(&e).contains(why), "{addr}: {e}");
    }
}

#[test]
fn bad_allow_entry() {
    let e = err(&with_secret(&format!(
        "allow = [\"{}\", \"xyz\"]\n",
        node_id(1)
    )));
    assert_invalid(&e, "mesh.allow[1]", "64 hex chars");
}

// ------------------------------------------------------------------ log

#[test]
fn bad_log_format_names_allowed_values() {
    let e = err(&format!("{}[log]\nformat = \"text\"\n", with_secret("")));
    assert_invalid(&e, "log.format", "\"human\", \"json\"");
}

#[test]
fn bad_log_level() {
    let e = err(&format!("{}[log]\nlevel = \"\"\n", with_secret("")));
    assert_invalid(&e, "log.level", "info");
    let e = err(&format!(
        "{}[log]\nlevel = \"info debug\"\n",
        with_secret("")
    ));
    assert_invalid(&e, "log.level", "info");
}

// ------------------------------------------------- supervisor, transfers, debug

fn supervisor_toml(rest: &str) -> String {
    format!("{}[supervisor]\n{rest}", with_secret(""))
}

#[test]
fn unknown_key_in_supervisor_and_debug() {
    let e = err(&supervisor_toml("stall_timout = \"10s\"\n"));
    assert_invalid(
        &e,
        "supervisor.stall_timout",
        "ping_interval, stall_timeout, max_restarts, restart_window",
    );
    assert!(
        problem(&e).contains("did you mean \"stall_timeout\""),
        "{e}"
    );
    let e = err(&format!(
        "{}[debug]\nfault_injetion = true\n",
        with_secret("")
    ));
    assert_invalid(&e, "debug.fault_injetion", "fault_injection");
    assert!(
        problem(&e).contains("did you mean \"fault_injection\""),
        "{e}"
    );
}

#[test]
fn supervisor_and_debug_value_types() {
    let e = err(&supervisor_toml("max_restarts = \"5\"\n"));
    assert_invalid(&e, "supervisor.max_restarts", "max_restarts = 5");
    assert!(problem(&e).contains("expected an integer"), "{e}");
    let e = err(&supervisor_toml("ping_interval = 1\n"));
    assert_invalid(&e, "supervisor.ping_interval", "quote the value");
    let e = err(&format!(
        "{}[debug]\nfault_injection = \"yes\"\n",
        with_secret("")
    ));
    assert_invalid(&e, "debug.fault_injection", "fault_injection = true");
    let e = err(&supervisor_toml("stall_timeout = \"soon\"\n"));
    assert_invalid(&e, "supervisor.stall_timeout", "\"200ms\", \"5s\", \"1h\"");
}

#[test]
fn supervisor_durations_must_be_positive() {
    for key in ["ping_interval", "stall_timeout", "restart_window"] {
        let e = err(&supervisor_toml(&format!("{key} = \"0s\"\n")));
        assert_invalid(&e, &format!("supervisor.{key}"), "use a positive duration");
        assert_eq!(problem(&e), format!("{key} is 0"));
    }
}

#[test]
fn ping_interval_at_most_a_minute() {
    let e = err(&supervisor_toml(
        "ping_interval = \"61s\"\nstall_timeout = \"5m\"\n",
    ));
    assert_invalid(&e, "supervisor.ping_interval", "at most \"1m\"");
    let c = parse(&supervisor_toml(
        "ping_interval = \"1m\"\nstall_timeout = \"2m\"\nrestart_window = \"2m\"\n",
    ));
    assert_eq!(c.supervisor.ping_interval, Duration::from_secs(60));
}

#[test]
fn stall_timeout_at_least_two_ping_intervals() {
    let e = err(&supervisor_toml("stall_timeout = \"1999ms\"\n"));
    assert_invalid(&e, "supervisor.stall_timeout", "at least \"2s\"");
    assert!(problem(&e).contains("between two pings"), "{e}");
    let c = parse(&supervisor_toml("stall_timeout = \"2s\"\n"));
    assert_eq!(c.supervisor.stall_timeout, Duration::from_secs(2));
}

#[test]
fn two_pings_rule_blames_ping_interval_when_stall_timeout_is_default() {
    // The default stall_timeout is 10s, so a 6s ping breaks the rule; the
    // operator changed ping_interval, so that is the key to name.
    let e = err(&supervisor_toml("ping_interval = \"6s\"\n"));
    assert_invalid(
        &e,
        "supervisor.ping_interval",
        "ping_interval to at most \"5s\"",
    );
    let e = err_full(
        &with_secret(""),
        &[("FLEETSYNC_SUPERVISOR_PING_INTERVAL", "30s")],
        &Overrides::default(),
    );
    assert_invalid_at(
        &e,
        "<env>",
        "FLEETSYNC_SUPERVISOR_PING_INTERVAL",
        "stall_timeout to at least \"1m\"",
    );
}

#[test]
fn stall_timeout_at_most_an_hour() {
    let e = err(&supervisor_toml(
        "stall_timeout = \"61m\"\nrestart_window = \"2h\"\n",
    ));
    assert_invalid(&e, "supervisor.stall_timeout", "at most \"1h\"");
    let c = parse(&supervisor_toml(
        "stall_timeout = \"1h\"\nrestart_window = \"1h\"\n",
    ));
    assert_eq!(c.supervisor.stall_timeout, Duration::from_secs(3600));
}

#[test]
fn max_restarts_between_1_and_1000() {
    for bad in ["0", "-1", "1001"] {
        let e = err(&supervisor_toml(&format!("max_restarts = {bad}\n")));
        assert_invalid(&e, "supervisor.max_restarts", "whole number from 1 to 1000");
        assert!(problem(&e).contains(bad), "{e}");
    }
    assert!(problem(&err(&supervisor_toml("max_restarts = 0\n"))).contains("first stall"));
    for good in [1, 1000] {
        let c = parse(&supervisor_toml(&format!("max_restarts = {good}\n")));
        assert_eq!(c.supervisor.max_restarts, good);
    }
}

#[test]
fn restart_window_at_least_stall_timeout() {
    let e = err(&supervisor_toml("restart_window = \"9s\"\n"));
    assert_invalid(&e, "supervisor.restart_window", "at least \"10s\"");
    assert!(problem(&e).contains("stall_timeout 10s"), "{e}");
    // Only stall_timeout was changed, so it is the key named.
    let e = err(&supervisor_toml("stall_timeout = \"2m\"\n"));
    assert_invalid(
        &e,
        "supervisor.stall_timeout",
        "stall_timeout to at most \"1m\"",
    );
    let c = parse(&supervisor_toml("restart_window = \"10s\"\n"));
    assert_eq!(c.supervisor.restart_window, Duration::from_secs(10));
}

#[test]
fn transfer_stall_timeout_between_a_second_and_an_hour() {
    let text = |v: &str| with_secret(&format!("transfer_stall_timeout = \"{v}\"\n"));
    let e = err(&text("999ms"));
    assert_invalid(&e, "mesh.transfer_stall_timeout", "at least \"1s\"");
    let e = err(&text("0s"));
    assert_invalid(
        &e,
        "mesh.transfer_stall_timeout",
        "positive duration, e.g. \"30s\"",
    );
    let e = err(&text("61m"));
    assert_invalid(&e, "mesh.transfer_stall_timeout", "at most \"1h\"");
    let e = err(&text("later"));
    assert_invalid(
        &e,
        "mesh.transfer_stall_timeout",
        "\"200ms\", \"5s\", \"1h\"",
    );
    assert_eq!(
        parse(&text("1s")).mesh.transfer_stall_timeout,
        Duration::from_secs(1)
    );
    assert_eq!(
        parse(&text("1h")).mesh.transfer_stall_timeout,
        Duration::from_secs(3600)
    );
}

#[test]
fn max_peers_is_a_whole_number_from_1_to_1024_and_peer_exchange_a_bool() {
    let text = |v: &str| with_secret(&format!("max_peers = {v}\n"));
    assert_eq!(parse(&text("1")).mesh.max_peers, 1);
    assert_eq!(parse(&text("1024")).mesh.max_peers, 1024);
    for bad in ["0", "1025", "-3"] {
        let e = err(&text(bad));
        assert_invalid(&e, "mesh.max_peers", "whole number from 1 to 1024");
    }
    let e = err(&text("\"many\""));
    assert!(e.to_string().contains("mesh.max_peers"), "{e}");
    assert!(
        !parse(&with_secret("peer_exchange = false\n"))
            .mesh
            .peer_exchange
    );
    let e = err(&with_secret("peer_exchange = \"no\"\n"));
    assert!(e.to_string().contains("mesh.peer_exchange"), "{e}");
}

#[test]
fn fault_injection_on_loopback_admin_is_accepted() {
    let text = |admin: &str| {
        format!(
            "{}[admin]\nlisten = \"{admin}\"\n[debug]\nfault_injection = true\n",
            with_secret("")
        )
    };
    assert!(parse(&text("127.0.0.1:7380")).debug.fault_injection);
    assert!(parse(&text("[::1]:7380")).debug.fault_injection);
}

fn validate_ctx() -> validate::Ctx {
    validate::Ctx {
        file_label: CFG.to_string(),
        config_path: Some(PathBuf::from(CFG)),
        config_dir: Some(PathBuf::from("/etc/fleetsync")),
    }
}

/// Validation refuses a non-loopback admin address before it gets here, so
/// no config can reach this rule today; call it directly to keep it honest.
#[test]
fn fault_injection_refused_when_admin_is_not_loopback() {
    let ctx = validate_ctx();
    let public: SocketAddr = "0.0.0.0:7380".parse().unwrap();
    let on = |origin: layer::Origin| layer::Sourced {
        value: true,
        origin,
    };
    let e = validate::debug(
        &ctx,
        Some(&on(layer::Origin::File("debug.fault_injection".into()))),
        public,
    )
    .unwrap_err();
    assert_invalid(
        &e,
        "debug.fault_injection",
        "loopback address such as \"127.0.0.1:7380\"",
    );
    assert!(problem(&e).contains("0.0.0.0:7380"), "{e}");
    let var = "FLEETSYNC_DEBUG_FAULT_INJECTION";
    let e = validate::debug(&ctx, Some(&on(layer::Origin::Env(var.into()))), public).unwrap_err();
    assert_invalid_at(&e, "<env>", var, "set fault_injection = false");

    // Off, or on behind loopback: fine whatever the address.
    let off = layer::Sourced {
        value: false,
        origin: layer::Origin::File("debug.fault_injection".into()),
    };
    assert!(
        !validate::debug(&ctx, Some(&off), public)
            .unwrap()
            .fault_injection
    );
    assert!(!validate::debug(&ctx, None, public).unwrap().fault_injection);
    let loopback: SocketAddr = "127.0.0.1:7380".parse().unwrap();
    let allowed = on(layer::Origin::File("debug.fault_injection".into()));
    assert!(
        validate::debug(&ctx, Some(&allowed), loopback)
            .unwrap()
            .fault_injection
    );
}

#[test]
fn deny_lists_node_ids_and_names_a_bad_entry() {
    let id = "ab".repeat(32);
    let c = parse(&with_secret(&format!("deny = [\"{id}\"]\n")));
    assert_eq!(c.mesh.deny, vec![[0xab; 32]]);
    assert!(parse(&with_secret("")).mesh.deny.is_empty());
    let e = err(&with_secret("deny = [\"nope\"]\n"));
    assert!(e.to_string().contains("mesh.deny"), "{e}");
    let vars = [("FLEETSYNC_MESH_DENY", id.as_str())];
    let c = try_parse_full(&with_secret(""), &vars, &Overrides::default()).unwrap();
    assert_eq!(c.mesh.deny.len(), 1);
}

#[test]
fn env_overrides_peer_exchange_and_max_peers() {
    let file = with_secret("peer_exchange = true\nmax_peers = 8\n");
    let vars = [
        ("FLEETSYNC_MESH_PEER_EXCHANGE", "no"),
        ("FLEETSYNC_MESH_MAX_PEERS", " 3 "),
    ];
    let c = try_parse_full(&file, &vars, &Overrides::default()).unwrap();
    assert!(!c.mesh.peer_exchange);
    assert_eq!(c.mesh.max_peers, 3);
    let e = try_parse_full(
        &file,
        &[("FLEETSYNC_MESH_MAX_PEERS", "0")],
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("FLEETSYNC_MESH_MAX_PEERS"), "{e}");
}

#[test]
fn env_overrides_supervisor_transfer_and_debug() {
    let file = format!(
        "{}[supervisor]\nstall_timeout = \"30s\"\nmax_restarts = 2\n",
        with_secret("transfer_stall_timeout = \"10s\"\n")
    );
    let vars = [
        ("FLEETSYNC_MESH_TRANSFER_STALL_TIMEOUT", "2m"),
        ("FLEETSYNC_SUPERVISOR_PING_INTERVAL", "250ms"),
        ("FLEETSYNC_SUPERVISOR_STALL_TIMEOUT", "5s"),
        ("FLEETSYNC_SUPERVISOR_MAX_RESTARTS", " 7 "),
        ("FLEETSYNC_SUPERVISOR_RESTART_WINDOW", "10m"),
        ("FLEETSYNC_DEBUG_FAULT_INJECTION", "yes"),
    ];
    let c = try_parse_full(&file, &vars, &Overrides::default()).unwrap();
    assert_eq!(c.mesh.transfer_stall_timeout, Duration::from_secs(120));
    assert_eq!(
        c.supervisor,
        SupervisorConfig {
            ping_interval: Duration::from_millis(250),
            stall_timeout: Duration::from_secs(5),
            max_restarts: 7,
            restart_window: Duration::from_secs(600),
        }
    );
    assert!(c.debug.fault_injection);
    // Without the env the file's values stand.
    let c = try_parse_full(&file, &[], &Overrides::default()).unwrap();
    assert_eq!(c.supervisor.stall_timeout, Duration::from_secs(30));
    assert_eq!(c.supervisor.max_restarts, 2);
    assert_eq!(c.mesh.transfer_stall_timeout, Duration::from_secs(10));
}

#[test]
fn env_supervisor_errors_name_the_variable() {
    let check = |var: &str, value: &str, fix: &str| {
        let e = err_full(&with_secret(""), &[(var, value)], &Overrides::default());
        assert_invalid_at(&e, "<env>", var, fix);
    };
    check("FLEETSYNC_SUPERVISOR_MAX_RESTARTS", "lots", "digits only");
    check("FLEETSYNC_SUPERVISOR_MAX_RESTARTS", "0", "from 1 to 1000");
    check(
        "FLEETSYNC_SUPERVISOR_STALL_TIMEOUT",
        "1s",
        "at least \"2s\"",
    );
    check(
        "FLEETSYNC_SUPERVISOR_RESTART_WINDOW",
        "0s",
        "positive duration",
    );
    check(
        "FLEETSYNC_MESH_TRANSFER_STALL_TIMEOUT",
        "2h",
        "at most \"1h\"",
    );
    check("FLEETSYNC_DEBUG_FAULT_INJECTION", "maybe", "yes/no");
    check(
        "FLEETSYNC_SUPERVISOR_STALL_TIMOUT",
        "5s",
        "FLEETSYNC_SUPERVISOR_STALL_TIMEOUT",
    );
}

// --------------------------------------------------------------- folders

#[test]
fn folder_missing_id() {
    let e = err(&format!(
        "{}[[folders]]\npath = \"/srv/x\"\n",
        with_secret("")
    ));
    assert_invalid(&e, "folders[0].id", "id = ");
}

#[test]
fn folder_missing_path() {
    let e = err(&format!(
        "{}{}[[folders]]\nid = \"y\"\n",
        with_secret(""),
        folder_toml("x", "/srv/x")
    ));
    assert_invalid(&e, "folders[1].path", "path = ");
}

#[test]
fn bad_folder_ids() {
    let long = "a".repeat(65);
    for bad in ["", "has space", "slash/y", "ümlaut", long.as_str()] {
        let e = err(&format!(
            "{}{}",
            with_secret(""),
            folder_toml(bad, "/srv/x")
        ));
        assert_invalid(&e, "folders[0].id", "1-64 chars of A-Z a-z 0-9 . _ -");
    }
    let ok = "a".repeat(64);
    parse(&format!(
        "{}{}",
        with_secret(""),
        folder_toml(&ok, "/srv/x")
    ));
}

#[test]
fn duplicate_folder_id() {
    let e = err(&format!(
        "{}{}{}",
        with_secret(""),
        folder_toml("docs", "/srv/a"),
        folder_toml("docs", "/srv/b")
    ));
    assert_invalid(&e, "folders[1].id", "unique id");
    assert!(problem(&e).contains("\"docs\""), "{e}");
}

#[test]
fn same_folder_path_twice() {
    let e = err(&format!(
        "{}{}{}",
        with_secret(""),
        folder_toml("a", "/srv/a"),
        folder_toml("b", "/srv/x/../a/")
    ));
    assert_invalid(&e, "folders[1].path", "must not overlap");
}

#[test]
fn nested_folder_paths() {
    let e = err(&format!(
        "{}{}{}",
        with_secret(""),
        folder_toml("a", "/srv/a"),
        folder_toml("b", "/srv/a/b")
    ));
    assert_invalid(&e, "folders[1].path", "must not overlap");
    assert!(problem(&e).contains("is inside"), "{e}");
    let e = err(&format!(
        "{}{}{}",
        with_secret(""),
        folder_toml("a", "/srv/a/b"),
        folder_toml("b", "/srv/a")
    ));
    assert_invalid(&e, "folders[1].path", "must not overlap");
    assert!(problem(&e).contains("contains"), "{e}");
}

#[test]
fn sibling_with_common_name_prefix_is_not_nested() {
    // "/srv/ab" starts with the string "/srv/a" but is not inside it.
    parse(&format!(
        "{}{}{}",
        with_secret(""),
        folder_toml("a", "/srv/a"),
        folder_toml("b", "/srv/ab")
    ));
}

#[test]
fn folder_inside_data_dir() {
    let e = err(&format!(
        "data_dir = \"/var/lib/fleetsync\"\n{}{}",
        with_secret(""),
        folder_toml("a", "/var/lib/fleetsync/files")
    ));
    assert_invalid(
        &e,
        "folders[0].path",
        "move the folder or set data_dir elsewhere",
    );
}

#[test]
fn data_dir_inside_folder() {
    // data_dir defaults to the config file's directory, /etc/fleetsync.
    let e = err(&format!(
        "{}{}",
        with_secret(""),
        folder_toml("etc", "/etc")
    ));
    assert_invalid(
        &e,
        "folders[0].path",
        "move the folder or set data_dir elsewhere",
    );
    let e = err(&format!(
        "{}{}",
        with_secret(""),
        folder_toml("same", "/etc/fleetsync")
    ));
    assert_invalid(
        &e,
        "folders[0].path",
        "move the folder or set data_dir elsewhere",
    );
}

#[cfg(unix)]
#[test]
fn overlap_through_symlink_is_caught_canonically() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir_all(real.join("state")).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let text = format!(
        "data_dir = \"{}\"\n{}{}",
        real.join("state").display(),
        with_secret(""),
        folder_toml("a", &link.display().to_string())
    );
    let e = err(&text);
    assert_invalid(
        &e,
        "folders[0].path",
        "move the folder or set data_dir elsewhere",
    );
}

#[test]
fn root_folder_is_rejected() {
    for root in ["/", "/srv/.."] {
        let e = err(&format!(
            "data_dir = \"/\"\n{}{}",
            with_secret(""),
            folder_toml("root", root)
        ));
        assert_invalid(&e, "folders[0].path", "dedicated directory");
    }
}

#[test]
fn bad_durations_quote_the_value() {
    for key in ["settle", "rescan", "poll_interval"] {
        let e = err(&format!(
            "{}{}{key} = \"soon\"\n",
            with_secret(""),
            folder_toml("a", "/srv/a")
        ));
        assert_invalid(
            &e,
            &format!("folders[0].{key}"),
            "\"200ms\", \"5s\", \"1h\"",
        );
        assert!(problem(&e).contains("\"soon\""), "{e}");
    }
}

#[test]
fn settle_longer_than_an_hour() {
    let text = |v: &str| {
        format!(
            "{}{}settle = \"{v}\"\n",
            with_secret(""),
            folder_toml("a", "/srv/a")
        )
    };
    let e = err(&text("61m"));
    assert_invalid(&e, "folders[0].settle", "at most \"1h\"");
    assert_eq!(
        parse(&text("1h")).folders[0].settle,
        Duration::from_secs(3600)
    );
    assert_eq!(parse(&text("0s")).folders[0].settle, Duration::ZERO);
}

#[test]
fn tombstone_ttl_defaults_to_180_days_and_is_at_least_a_second() {
    let text = |v: &str| {
        format!(
            "{}{}tombstone_ttl = \"{v}\"\n",
            with_secret(""),
            folder_toml("a", "/srv/a")
        )
    };
    let plain = format!("{}{}", with_secret(""), folder_toml("a", "/srv/a"));
    assert_eq!(
        parse(&plain).folders[0].tombstone_ttl,
        Duration::from_secs(180 * 24 * 3600)
    );
    assert_eq!(
        parse(&text("2s")).folders[0].tombstone_ttl,
        Duration::from_secs(2)
    );
    let e = err(&text("500ms"));
    assert_invalid(&e, "folders[0].tombstone_ttl", "at least \"1s\"");
    let e = err(&text("soon"));
    assert_invalid(&e, "folders[0].tombstone_ttl", "a number with a unit");
}

#[test]
fn rescan_shorter_than_a_second() {
    let text = |v: &str| {
        format!(
            "{}{}rescan = \"{v}\"\n",
            with_secret(""),
            folder_toml("a", "/srv/a")
        )
    };
    let e = err(&text("999ms"));
    assert_invalid(&e, "folders[0].rescan", "at least \"1s\"");
    assert_eq!(parse(&text("1s")).folders[0].rescan, Duration::from_secs(1));
}

#[test]
fn zero_poll_interval() {
    let e = err(&format!(
        "{}{}poll_interval = \"0s\"\n",
        with_secret(""),
        folder_toml("a", "/srv/a")
    ));
    assert_invalid(&e, "folders[0].poll_interval", "positive interval");
}

#[test]
fn min_free_and_umask_parse_and_default() {
    let text = |extra: &str| format!("{}{}{extra}", with_secret(""), folder_toml("a", "/srv/a"));
    let f = &parse(&text("")).folders[0];
    assert_eq!(f.min_free, crate::MinFree::Default);
    assert_eq!(f.umask, crate::Umask(0o022));
    let f = &parse(&text("min_free = \"2GiB\"\numask = \"077\"\n")).folders[0];
    assert_eq!(f.min_free, crate::MinFree::Bytes(2 << 30));
    assert_eq!(f.umask, crate::Umask(0o077));
    let f = &parse(&text("min_free = \"10%\"\n")).folders[0];
    assert_eq!(f.min_free, crate::MinFree::Percent(10));
}

#[test]
fn versions_default_on_and_parse_off_or_a_table() {
    let text = |extra: &str| format!("{}{}{extra}", with_secret(""), folder_toml("a", "/srv/a"));
    let f = &parse(&text("")).folders[0];
    assert_eq!(f.versions, crate::VersionsPolicy::default());
    assert!(f.versions.enabled && !f.versions.local);
    assert_eq!(f.versions.keep, Duration::from_secs(30 * 86_400));
    assert_eq!(f.versions.max_bytes, 1 << 30);
    let f = &parse(&text("versions = \"off\"\n")).folders[0];
    assert!(!f.versions.enabled);
    let f = &parse(&text(
        "versions = { keep = \"3s\", max_bytes = \"10KiB\", local = false }\n",
    ))
    .folders[0];
    assert_eq!(
        f.versions,
        crate::VersionsPolicy {
            enabled: true,
            keep: Duration::from_secs(3),
            max_bytes: 10 << 10,
            local: false
        }
    );
    let f = &parse(&text("versions = { local = true }\n")).folders[0];
    assert!(f.versions.enabled && f.versions.local);
    assert_eq!(f.versions.keep, crate::DEFAULT_VERSIONS_KEEP);
    let f = &parse(&text("versions = { max_bytes = \"0\" }\n")).folders[0];
    assert_eq!(
        (f.versions.max_bytes, f.versions.keep),
        (0, crate::DEFAULT_VERSIONS_KEEP)
    );
}

#[test]
fn bad_versions_name_the_key_and_the_fix() {
    let text = |extra: &str| format!("{}{}{extra}", with_secret(""), folder_toml("a", "/srv/a"));
    let e = err(&text("versions = \"no\"\n"));
    assert_invalid(&e, "folders[0].versions", "versions = \"off\"");
    let e = err(&text("versions = 3\n"));
    assert_invalid(&e, "folders[0].versions", "keep = \"30d\"");
    let e = err(&text("versions = { kep = \"1d\" }\n"));
    assert_invalid(&e, "folders[0].versions.kep", "keep, max_bytes, local");
    let e = err(&text("versions = { keep = \"soon\" }\n"));
    assert_invalid(&e, "folders[0].versions.keep", "\"5s\"");
    let e = err(&text("versions = { keep = \"0s\" }\n"));
    assert_invalid(&e, "folders[0].versions.keep", "positive duration");
    let e = err(&text("versions = { max_bytes = \"lots\" }\n"));
    assert_invalid(&e, "folders[0].versions.max_bytes", "\"1GiB\"");
    let e = err(&text("versions = { local = \"yes\" }\n"));
    assert_invalid(&e, "folders[0].versions.local", "true or");
}

#[test]
fn bad_min_free_and_umask_name_the_key() {
    let text = |extra: &str| format!("{}{}{extra}", with_secret(""), folder_toml("a", "/srv/a"));
    for bad in ["lots", "1.5GiB", "80%", "-1"] {
        let e = err(&text(&format!("min_free = \"{bad}\"\n")));
        assert_invalid(&e, "folders[0].min_free", "\"1GiB\"");
    }
    for bad in ["999", "rw-", ""] {
        let e = err(&text(&format!("umask = \"{bad}\"\n")));
        assert_invalid(&e, "folders[0].umask", "\"022\"");
    }
    let e = err(&text("umask = 22\n"));
    assert_invalid(&e, "folders[0].umask", "quote the value");
}

#[test]
fn bad_mode_and_watch_name_allowed_values() {
    let e = err(&format!(
        "{}{}mode = \"both\"\n",
        with_secret(""),
        folder_toml("a", "/srv/a")
    ));
    assert_invalid(
        &e,
        "folders[0].mode",
        "\"send-receive\", \"send-only\", \"receive-only\"",
    );
    let e = err(&format!(
        "{}{}watch = \"inotify\"\n",
        with_secret(""),
        folder_toml("a", "/srv/a")
    ));
    assert_invalid(&e, "folders[0].watch", "\"notify\", \"poll\"");
}

#[test]
fn first_problem_wins() {
    let e = err(&format!(
        "{}{}mode = \"both\"\nwatch = \"inotify\"\n",
        with_secret("listen = \"nope\"\n"),
        folder_toml("a", "/srv/a")
    ));
    assert_eq!(e.key(), Some("mesh.listen"));
}

// ------------------------------------------------------------ paths

#[test]
fn relative_paths_resolve_against_config_dir() {
    let c = parse(&format!(
        "data_dir = \"state/./db\"\n{}{}",
        with_secret(""),
        folder_toml("docs", "../shared/docs")
    ));
    assert_eq!(c.data_dir, Path::new("/etc/fleetsync/state/db"));
    assert_eq!(c.folders[0].path, Path::new("/etc/shared/docs"));
}

#[test]
fn load_resolves_relative_paths_against_the_real_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join(CONFIG_FILE_NAME);
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"state\"\n{}{}",
            with_secret(""),
            folder_toml("docs", "docs")
        ),
    )
    .unwrap();
    let c = Config::load_with_env(&cfg, env(&[("HOME", "/root")]), &Overrides::default()).unwrap();
    assert_eq!(c.config_path.as_deref(), Some(cfg.as_path()));
    assert_eq!(c.data_dir, dir.path().join("state"));
    assert_eq!(c.folders[0].path, dir.path().join("docs"));
    assert!(
        !dir.path().join("docs").exists(),
        "loading must not create folders"
    );
}

#[test]
fn load_uses_process_env() {
    let ours = std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with(ENV_PREFIX));
    if ours {
        return; // the harness environment would leak into the result
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join(CONFIG_FILE_NAME);
    std::fs::write(&cfg, with_secret("")).unwrap();
    let c = Config::load(&cfg, &Overrides::default()).unwrap();
    assert_eq!(c.data_dir, dir.path());
}

#[test]
fn missing_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join(CONFIG_FILE_NAME);
    let e = Config::load_with_env(&cfg, env(&[]), &Overrides::default()).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    assert_eq!(e.key(), None);
    let msg = e.to_string();
    assert!(
        msg.contains("fleetsync init") && msg.contains(CONFIG_FILE_NAME),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}

#[test]
fn relative_config_path_is_made_absolute() {
    let cwd = std::env::current_dir().unwrap();
    let c = Config::from_toml_str(
        &with_secret(""),
        Path::new(CONFIG_FILE_NAME),
        env(&[]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.config_path, Some(cwd.join(CONFIG_FILE_NAME)));
    assert_eq!(c.data_dir, cwd);
}

#[test]
fn env_and_cli_relative_paths_use_current_dir() {
    let cwd = std::env::current_dir().unwrap();
    let c = try_parse_full(
        &with_secret(""),
        &[("FLEETSYNC_DATA_DIR", "envdata")],
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.data_dir, cwd.join("envdata"));
    let o = Overrides {
        data_dir: Some(PathBuf::from("clidata")),
        ..Default::default()
    };
    let c = try_parse_full(&with_secret(""), &[], &o).unwrap();
    assert_eq!(c.data_dir, cwd.join("clidata"));
}

// ------------------------------------------------------------ precedence

#[test]
fn cli_beats_env_beats_file() {
    let file = format!(
        "{}[log]\nlevel = \"warn\"\nformat = \"human\"\n",
        with_secret("listen = \"0.0.0.0:1000\"\nmdns = true\n")
    );
    let vars = [
        ("FLEETSYNC_MESH_LISTEN", "0.0.0.0:2000"),
        ("FLEETSYNC_MESH_MDNS", "no"),
        ("FLEETSYNC_LOG_LEVEL", "debug"),
        ("FLEETSYNC_LOG_FORMAT", "json"),
    ];
    let o = Overrides {
        mesh_listen: Some("0.0.0.0:3000".into()),
        mdns: Some(true),
        log_level: Some("trace".into()),
        ..Default::default()
    };
    let c = try_parse_full(&file, &vars, &o).unwrap();
    assert_eq!(
        c.mesh.listen.port(),
        3000,
        "override wins over env and file"
    );
    assert!(c.mesh.mdns);
    assert_eq!(c.log.level, "trace");
    assert_eq!(c.log.format, LogFormat::Json, "env wins over file");

    let c = try_parse_full(&file, &vars, &Overrides::default()).unwrap();
    assert_eq!(c.mesh.listen.port(), 2000, "env wins over file");
    assert!(!c.mesh.mdns);
    assert_eq!(c.log.level, "debug");
}

#[test]
fn lists_are_replaced_not_merged() {
    let file = with_secret(&format!(
        "peers = [\"{}@10.0.0.1:1\"]\nallow = [\"{}\"]\n",
        node_id(1),
        node_id(1)
    ));
    let peers_env = format!(" {}@10.0.0.2:2 , {}@10.0.0.3:3, ", node_id(2), node_id(3));
    let vars = [
        ("FLEETSYNC_MESH_PEERS", peers_env.as_str()),
        ("FLEETSYNC_MESH_ALLOW", ""),
    ];
    let c = try_parse_full(&file, &vars, &Overrides::default()).unwrap();
    assert_eq!(c.mesh.peers.len(), 2);
    assert_eq!(c.mesh.peers[0].id, [2; 32]);
    assert_eq!(c.mesh.allow, Some(vec![]));

    let o = Overrides {
        peers: Some(vec![]),
        ..Default::default()
    };
    let c = try_parse_full(&file, &vars, &o).unwrap();
    assert!(c.mesh.peers.is_empty());
}

#[test]
fn secret_layers_replace_both_spellings() {
    // The file's secret file does not exist; a higher layer's inline secret
    // must win without the file ever being read.
    let file = "[mesh]\nfleet_secret_file = \"/nonexistent/fleet.secret\"\n";
    let other = "ff".repeat(32);
    let c = try_parse_full(
        file,
        &[("FLEETSYNC_MESH_FLEET_SECRET", &other)],
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.mesh.fleet_secret.to_hex(), other);

    let cli = "ee".repeat(32);
    let o = Overrides {
        fleet_secret: Some(cli.clone()),
        ..Default::default()
    };
    let c = try_parse_full(file, &[("FLEETSYNC_MESH_FLEET_SECRET", &other)], &o).unwrap();
    assert_eq!(c.mesh.fleet_secret.to_hex(), cli);

    let e = err_full(
        &with_secret(""),
        &[
            ("FLEETSYNC_MESH_FLEET_SECRET", &other),
            ("FLEETSYNC_MESH_FLEET_SECRET_FILE", "/x"),
        ],
        &Overrides::default(),
    );
    assert_invalid_at(&e, "<env>", "FLEETSYNC_MESH_FLEET_SECRET", "only one");
}

#[test]
fn env_secret_file_wins_over_file_inline_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let other = "ab".repeat(32);
    std::fs::write(&path, &other).unwrap();
    let path = path.display().to_string();
    let c = try_parse_full(
        &with_secret(""),
        &[("FLEETSYNC_MESH_FLEET_SECRET_FILE", &path)],
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.mesh.fleet_secret.to_hex(), other);
}

// ------------------------------------------------------------- env vars

#[test]
fn env_folder_override() {
    let file = format!(
        "{}{}{}",
        with_secret(""),
        folder_toml("shared-logs", "/srv/logs"),
        folder_toml("shared", "/srv/shared")
    );
    let vars = [
        ("FLEETSYNC_FOLDER_SHARED_LOGS_SETTLE", "5s"),
        ("FLEETSYNC_FOLDER_SHARED_LOGS_WATCH", "poll"),
        ("FLEETSYNC_FOLDER_SHARED_LOGS_POLL_INTERVAL", "10s"),
        ("FLEETSYNC_FOLDER_SHARED_MODE", "send-only"),
        ("FLEETSYNC_FOLDER_SHARED_PATH", "/srv/elsewhere"),
        ("FLEETSYNC_FOLDER_SHARED_RESCAN", "5m"),
        ("FLEETSYNC_FOLDER_SHARED_MAX_PENDING", "500"),
        ("FLEETSYNC_FOLDER_SHARED_MAX_FILES", "2000"),
        ("FLEETSYNC_FOLDER_SHARED_UMASK", "077"),
        ("FLEETSYNC_FOLDER_SHARED_MIN_FREE", "10%"),
        ("FLEETSYNC_FOLDER_SHARED_VERSIONS", "off"),
    ];
    let c = try_parse_full(&file, &vars, &Overrides::default()).unwrap();
    let logs = c.folder("shared-logs").unwrap();
    assert_eq!(logs.settle, Duration::from_secs(5));
    assert_eq!(logs.watch, WatchMode::Poll);
    assert_eq!(logs.poll_interval, Duration::from_secs(10));
    assert_eq!(logs.path, Path::new("/srv/logs"));
    let shared = c.folder("shared").unwrap();
    assert_eq!(shared.mode, FolderMode::SendOnly);
    assert_eq!(shared.path, Path::new("/srv/elsewhere"));
    assert_eq!(shared.rescan, Duration::from_secs(300));
    assert_eq!(shared.settle, Duration::from_millis(200));
    assert_eq!((shared.max_pending, shared.max_files), (500, 2000));
    assert_eq!(shared.umask, crate::Umask::parse("077").unwrap());
    assert_eq!(shared.min_free, crate::MinFree::parse("10%").unwrap());
    assert!(!shared.versions.enabled);
    assert!(logs.versions.enabled);
    assert_eq!(logs.max_pending, crate::DEFAULT_MAX_PENDING);
}

#[test]
fn env_folder_cap_that_is_not_a_number_names_the_variable() {
    let file = format!("{}{}", with_secret(""), folder_toml("docs", "/srv/docs"));
    let e = err_full(
        &file,
        &[("FLEETSYNC_FOLDER_DOCS_MAX_FILES", "lots")],
        &Overrides::default(),
    );
    assert_invalid_at(
        &e,
        "<env>",
        "FLEETSYNC_FOLDER_DOCS_MAX_FILES",
        "digits only",
    );
}

#[test]
fn env_folder_bad_value_names_the_variable() {
    let file = format!("{}{}", with_secret(""), folder_toml("docs", "/srv/docs"));
    let e = err_full(
        &file,
        &[("FLEETSYNC_FOLDER_DOCS_SETTLE", "2h")],
        &Overrides::default(),
    );
    assert_invalid_at(
        &e,
        "<env>",
        "FLEETSYNC_FOLDER_DOCS_SETTLE",
        "at most \"1h\"",
    );
    let e = err_full(
        &file,
        &[("FLEETSYNC_FOLDER_DOCS_RESCAN", "often")],
        &Overrides::default(),
    );
    assert_invalid_at(
        &e,
        "<env>",
        "FLEETSYNC_FOLDER_DOCS_RESCAN",
        "\"200ms\", \"5s\", \"1h\"",
    );
}

#[test]
fn unknown_env_var() {
    let file = format!("{}{}", with_secret(""), folder_toml("docs", "/srv/docs"));
    let e = err_full(
        &file,
        &[("FLEETSYNC_MESH_LISTN", "0.0.0.0:1")],
        &Overrides::default(),
    );
    assert_invalid_at(&e, "<env>", "FLEETSYNC_MESH_LISTN", "FLEETSYNC_MESH_LISTEN");
    let msg = e.to_string();
    assert!(
        problem(&e).contains("did you mean FLEETSYNC_MESH_LISTEN"),
        "{msg}"
    );
    for valid in layer::ENV_FIXED {
        assert!(msg.contains(valid), "{valid} not listed in: {msg}");
    }
    assert!(msg.contains("<ID> one of DOCS"), "{msg}");
}

#[test]
fn env_var_for_missing_folder() {
    let file = format!("{}{}", with_secret(""), folder_toml("docs", "/srv/docs"));
    let e = err_full(
        &file,
        &[("FLEETSYNC_FOLDER_PHOTOS_PATH", "/p")],
        &Overrides::default(),
    );
    assert_invalid_at(
        &e,
        "<env>",
        "FLEETSYNC_FOLDER_PHOTOS_PATH",
        "FLEETSYNC_FOLDER_<ID>_<KEY>",
    );
    let e = err_full(
        &file,
        &[("FLEETSYNC_FOLDER_DOCS_PTH", "/p")],
        &Overrides::default(),
    );
    assert_invalid_at(&e, "<env>", "FLEETSYNC_FOLDER_DOCS_PTH", "PATH, MODE");
    assert!(problem(&e).contains("FLEETSYNC_FOLDER_DOCS_PATH"), "{e}");
}

#[test]
fn env_var_for_ambiguous_folder_ids() {
    let file = format!(
        "{}{}{}",
        with_secret(""),
        folder_toml("a-b", "/srv/1"),
        folder_toml("a.b", "/srv/2")
    );
    parse(&file); // fine until such a variable is used
    let e = err_full(
        &file,
        &[("FLEETSYNC_FOLDER_A_B_MODE", "send-only")],
        &Overrides::default(),
    );
    assert_invalid_at(
        &e,
        "<env>",
        "FLEETSYNC_FOLDER_A_B_MODE",
        "rename the folders",
    );
}

#[test]
fn ignored_and_foreign_env_vars() {
    let vars = [
        ("FLEETSYNC_CONFIG", "/somewhere/else.toml"),
        ("FLEETSYNC_LOG", "trace"),
        ("PATH", "/usr/bin"),
        ("fleetsync_mesh_listn", "lowercase is not ours"),
    ];
    let c = try_parse_full(&with_secret(""), &vars, &Overrides::default()).unwrap();
    assert_eq!(c.log.level, "info");
}

#[test]
fn env_bool_spellings() {
    for (v, want) in [
        ("true", true),
        ("1", true),
        ("YES", true),
        ("false", false),
        ("0", false),
        ("No", false),
    ] {
        let c = try_parse_full(
            &with_secret(""),
            &[("FLEETSYNC_MESH_MDNS", v)],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.mesh.mdns, want, "{v}");
    }
    let e = err_full(
        &with_secret(""),
        &[("FLEETSYNC_MESH_MDNS", "maybe")],
        &Overrides::default(),
    );
    assert_invalid_at(&e, "<env>", "FLEETSYNC_MESH_MDNS", "yes/no");
}

#[test]
fn env_list_errors_name_the_entry() {
    let peers = format!("{}@10.0.0.1:1,garbage", node_id(1));
    let e = err_full(
        &with_secret(""),
        &[("FLEETSYNC_MESH_PEERS", &peers)],
        &Overrides::default(),
    );
    assert_invalid_at(
        &e,
        "<env>",
        "FLEETSYNC_MESH_PEERS",
        "<64-hex node id>@<ip>:<port>",
    );
    assert!(problem(&e).starts_with("entry 2:"), "{e}");
}

#[test]
fn env_values_are_checked_like_file_values() {
    let e = err_full(
        &with_secret(""),
        &[("FLEETSYNC_ADMIN_LISTEN", "0.0.0.0:7380")],
        &Overrides::default(),
    );
    assert_invalid_at(&e, "<env>", "FLEETSYNC_ADMIN_LISTEN", "127.0.0.1:7380");
    let e = err_full(
        &with_secret(""),
        &[("FLEETSYNC_MESH_FLEET_SECRET", "abc")],
        &Overrides::default(),
    );
    assert_invalid_at(
        &e,
        "<env>",
        "FLEETSYNC_MESH_FLEET_SECRET",
        "64 hex chars (32 bytes)",
    );
    assert!(!e.to_string().contains("\"abc\""), "{e}");
}

// ------------------------------------------------------------- overrides

#[test]
fn override_errors_name_the_flag() {
    let o = Overrides {
        mesh_listen: Some("nope".into()),
        ..Default::default()
    };
    let e = err_full(&with_secret(""), &[], &o);
    assert_invalid_at(&e, "<cli>", "--listen", "0.0.0.0:7300");

    let o = Overrides {
        admin_listen: Some("10.1.1.1:7380".into()),
        ..Default::default()
    };
    let e = err_full(&with_secret(""), &[], &o);
    assert_invalid_at(&e, "<cli>", "--admin-listen", "127.0.0.1:7380");

    let o = Overrides {
        admin_listen: Some("localhost:7380".into()),
        ..Default::default()
    };
    let e = err_full(&with_secret(""), &[], &o);
    assert_invalid_at(
        &e,
        "<cli>",
        "--admin-listen",
        "loopback address, e.g. \"127.0.0.1:7380\"",
    );

    let o = Overrides {
        log_format: Some("xml".into()),
        ..Default::default()
    };
    let e = err_full(&with_secret(""), &[], &o);
    assert_invalid_at(&e, "<cli>", "--log-format", "\"human\", \"json\"");

    let o = Overrides {
        peers: Some(vec!["bad".into()]),
        ..Default::default()
    };
    let e = err_full(&with_secret(""), &[], &o);
    assert_invalid_at(&e, "<cli>", "--peer", "<64-hex node id>@<ip>:<port>");

    let o = Overrides {
        fleet_secret: Some("short".into()),
        ..Default::default()
    };
    let e = err_full(&with_secret(""), &[], &o);
    assert_invalid_at(&e, "<cli>", "--fleet-secret", "openssl rand -hex 32");
}

#[test]
fn override_satisfies_missing_secret() {
    let o = Overrides {
        fleet_secret: Some(SECRET.into()),
        ..Default::default()
    };
    let c = try_parse_full("", &[], &o).unwrap();
    assert_eq!(c.mesh.fleet_secret.to_hex(), SECRET);
}

// ------------------------------------------------------------ init render

fn init_params(folders: Vec<(String, PathBuf)>) -> InitParams {
    InitParams {
        data_dir: PathBuf::from("/var/lib/fleetsync"),
        folders,
        fleet_secret: FleetSecret([7; 32]),
        mesh_listen: "0.0.0.0:7301".parse().unwrap(),
        admin_listen: "127.0.0.1:7381".parse().unwrap(),
        peers: vec![
            PeerAddr {
                id: [1; 32],
                addr: "10.0.0.1:7300".parse().unwrap(),
            },
            PeerAddr {
                id: [2; 32],
                addr: "[fe80::1]:7300".parse().unwrap(),
            },
        ],
        mdns: false,
        ticket_peers: vec![],
    }
}

#[test]
fn render_init_config_round_trips() {
    // The odd path checks that quotes and backslashes are escaped.
    let valid = init_params(vec![
        ("shared".into(), PathBuf::from("/srv/shared")),
        ("photos".into(), PathBuf::from("/srv/odd \"name\" \\ dir")),
    ]);
    let text = render_init_config(&valid);
    let c = Config::from_toml_str(&text, Path::new(CFG), env(&[]), &Overrides::default())
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(c.data_dir, valid.data_dir);
    assert_eq!(c.mesh.fleet_secret, valid.fleet_secret);
    assert_eq!(c.mesh.listen, valid.mesh_listen);
    assert_eq!(c.admin.listen, valid.admin_listen);
    assert_eq!(c.mesh.peers, valid.peers);
    assert_eq!(c.mesh.mdns, valid.mdns);
    assert_eq!(c.mesh.allow, None);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Human);
    let got: Vec<(String, PathBuf)> = c
        .folders
        .iter()
        .map(|f| (f.id.clone(), f.path.clone()))
        .collect();
    assert_eq!(got, valid.folders);
    for f in &c.folders {
        assert_eq!(f.mode, FolderMode::SendReceive);
        assert_eq!(f.settle, Duration::from_millis(200));
        assert_eq!(f.rescan, Duration::from_secs(3600));
        assert_eq!(f.watch, WatchMode::Notify);
        assert_eq!(f.poll_interval, Duration::from_secs(2));
    }
    assert_eq!(
        c.mesh.transfer_stall_timeout,
        DEFAULT_TRANSFER_STALL_TIMEOUT
    );
    assert_eq!(c.supervisor, SupervisorConfig::default());
    assert_eq!(c.debug, DebugConfig::default());
}

#[test]
fn render_init_config_quotes_hostile_ids() {
    // Such an id is invalid, but it must fail on the id rule, not break the
    // TOML around it.
    let p = init_params(vec![("we\"ird\n[mesh]".into(), PathBuf::from("/srv/x"))]);
    let text = render_init_config(&p);
    let e =
        Config::from_toml_str(&text, Path::new(CFG), env(&[]), &Overrides::default()).unwrap_err();
    assert_eq!(e.key(), Some("folders[0].id"), "{e}");
}

#[test]
fn render_init_config_shows_every_key() {
    let text = render_init_config(&init_params(vec![("a".into(), PathBuf::from("/srv/a"))]));
    for key in [
        "data_dir",
        "[mesh]",
        "listen",
        "fleet_secret =",
        "fleet_secret_file",
        "peers",
        "mdns",
        "allow",
        "transfer_stall_timeout =",
        "[admin]",
        "[log]",
        "level",
        "format",
        "[supervisor]",
        "ping_interval =",
        "stall_timeout =",
        "max_restarts =",
        "restart_window =",
        "[debug]",
        "fault_injection =",
        "[[folders]]",
        "id =",
        "path =",
        "mode =",
        "settle =",
        "rescan =",
        "watch =",
        "poll_interval =",
    ] {
        assert!(text.contains(key), "{key} missing from:\n{text}");
    }
}

#[test]
fn render_init_config_without_folders_is_a_relay() {
    let mut p = init_params(vec![]);
    p.peers.clear();
    p.mdns = true;
    let text = render_init_config(&p);
    assert!(text.contains("# [[folders]]"), "{text}");
    let c = Config::from_toml_str(&text, Path::new(CFG), env(&[]), &Overrides::default()).unwrap();
    assert!(c.folders.is_empty());
    assert!(c.mesh.peers.is_empty());
    assert!(c.mesh.mdns);
}

// ------------------------------------------------------------ value types

#[test]
fn fleet_secret_debug_is_redacted() {
    let s = FleetSecret::from_hex(SECRET).unwrap();
    assert_eq!(format!("{s:?}"), "FleetSecret(<redacted>)");
    let c = parse(&with_secret(""));
    let dump = format!("{c:?} {c:#?}");
    assert!(!dump.contains(SECRET), "secret leaked via Debug");
    assert!(
        !dump.contains("[1, 35, 69"),
        "secret bytes leaked via Debug"
    );
}

#[test]
fn fleet_secret_hex() {
    let s = FleetSecret::from_hex(&SECRET.to_uppercase()).unwrap();
    assert_eq!(s.to_hex(), SECRET);
    assert!(FleetSecret::from_hex("")
        .unwrap_err()
        .contains("found 0 chars"));
    let err = FleetSecret::from_hex(&"g".repeat(64)).unwrap_err();
    assert!(err.contains("non-hex") && !err.contains("ggg"), "{err}");
}

#[test]
fn peer_addr_parse_and_display() {
    let upper = format!("{}@127.0.0.1:7301", node_id(0xab).to_uppercase());
    let p: PeerAddr = upper.parse().unwrap();
    assert_eq!(p.id, [0xab; 32]);
    assert_eq!(p.to_string(), format!("{}@127.0.0.1:7301", node_id(0xab)));
    let v6: PeerAddr = format!("{}@[::1]:9", node_id(1)).parse().unwrap();
    assert_eq!(v6.to_string().parse::<PeerAddr>().unwrap(), v6);

    assert!("127.0.0.1:7301"
        .parse::<PeerAddr>()
        .unwrap_err()
        .contains("'@'"));
    assert!(format!("{}@127.0.0.1", node_id(1))
        .parse::<PeerAddr>()
        .unwrap_err()
        .contains("address"));
    assert!("ab@127.0.0.1:1"
        .parse::<PeerAddr>()
        .unwrap_err()
        .contains("node id"));
}

#[test]
fn folder_mode_capabilities_and_names() {
    assert!(FolderMode::SendReceive.can_send() && FolderMode::SendReceive.can_receive());
    assert!(FolderMode::SendOnly.can_send() && !FolderMode::SendOnly.can_receive());
    assert!(!FolderMode::ReceiveOnly.can_send() && FolderMode::ReceiveOnly.can_receive());
    for m in FolderMode::ALL {
        assert_eq!(m.to_string().parse::<FolderMode>().unwrap(), m);
    }
    assert_eq!(FolderMode::SendOnly.to_string(), "send-only");
    for w in WatchMode::ALL {
        assert_eq!(w.to_string().parse::<WatchMode>().unwrap(), w);
    }
    for f in LogFormat::ALL {
        assert_eq!(f.to_string().parse::<LogFormat>().unwrap(), f);
    }
}

#[test]
fn parse_duration_accepts_humantime() {
    assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
    assert_eq!(parse_duration(" 5s ").unwrap(), Duration::from_secs(5));
    assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
    let e = parse_duration("5").unwrap_err();
    assert!(e.contains("\"5\"") && e.contains("\"200ms\""), "{e}");
}

#[test]
fn suggestions_only_for_near_misses() {
    assert_eq!(
        suggest("listn", ["listen", "mdns"].into_iter()),
        Some("listen")
    );
    assert_eq!(suggest("zzzzzz", ["listen", "mdns"].into_iter()), None);
}

proptest! {
    #[test]
    // From ip + port: a V6 address's flowinfo is not part of its text form.
    fn peer_addr_round_trips(id in any::<[u8; 32]>(), ip in any::<std::net::IpAddr>(), port in any::<u16>()) {
        let p = PeerAddr { id, addr: PeerHost::Ip(SocketAddr::new(ip, port)) };
        prop_assert_eq!(p.to_string().parse::<PeerAddr>().unwrap(), p);
    }

    #[test]
    fn fleet_secret_round_trips(bytes in any::<[u8; 32]>()) {
        let s = FleetSecret(bytes);
        prop_assert_eq!(FleetSecret::from_hex(&s.to_hex()).unwrap(), s);
    }

    #[test]
    fn arbitrary_text_never_panics_and_errors_are_one_line(text in "\\PC{0,200}") {
        if let Err(e) = try_parse(&text) {
            prop_assert!(!e.to_string().contains('\n'));
        }
    }
}

#[test]
fn max_delete_fraction_defaults_to_a_half_and_takes_numbers_above_0_up_to_1() {
    let text = |v: &str| {
        format!(
            "{}{}max_delete_fraction = {v}\n",
            with_secret(""),
            folder_toml("shared", "/srv/shared")
        )
    };
    let plain = format!(
        "{}{}",
        with_secret(""),
        folder_toml("shared", "/srv/shared")
    );
    let f = parse(&plain).folder("shared").unwrap().clone();
    assert_eq!(f.max_delete_fraction, crate::DEFAULT_MAX_DELETE_FRACTION);
    assert_eq!(f.max_delete_fraction, 0.5);
    for (v, want) in [("0.25", 0.25), ("1", 1.0), ("1.0", 1.0)] {
        let f = parse(&text(v)).folder("shared").unwrap().clone();
        assert_eq!(f.max_delete_fraction, want, "{v}");
    }
    for bad in ["0", "0.0", "-0.5", "1.5", "2"] {
        let e = err(&text(bad));
        assert_invalid(
            &e,
            "folders[0].max_delete_fraction",
            "above 0 and at most 1",
        );
    }
    let e = err(&text("\"half\""));
    assert_invalid(&e, "folders[0].max_delete_fraction", "a number");
}

#[test]
fn env_overrides_max_delete_fraction_and_names_the_variable_when_bad() {
    let file = format!("{}{}", with_secret(""), folder_toml("docs", "/srv/docs"));
    let var = "FLEETSYNC_FOLDER_DOCS_MAX_DELETE_FRACTION";
    let c = try_parse_full(&file, &[(var, "0.9")], &Overrides::default()).unwrap();
    assert_eq!(c.folder("docs").unwrap().max_delete_fraction, 0.9);
    let e = err_full(&file, &[(var, "most")], &Overrides::default());
    assert_invalid_at(&e, "<env>", var, "at most 1");
    let e = err_full(&file, &[(var, "3")], &Overrides::default());
    assert_invalid_at(&e, "<env>", var, "above 0 and at most 1");
}

// ---- `config show`: each setting's value and where it came from ----

fn setting<'a>(settings: &'a [Setting], key: &str) -> &'a Setting {
    settings
        .iter()
        .find(|s| s.key == key)
        .unwrap_or_else(|| panic!("no setting {key}"))
}

#[test]
fn settings_name_the_layer_that_set_each_value_or_the_default() {
    let text = with_secret(
        "listen = \"0.0.0.0:7400\"\n[log]\nlevel = \"debug\"\n\
         [[folders]]\nid = \"docs\"\npath = \"/srv/docs\"\nsettle = \"2s\"\nversions = { keep = \"7d\" }\n",
    );
    let overrides = Overrides {
        log_level: Some("warn".into()),
        ..Overrides::default()
    };
    let c = try_parse_full(
        &text,
        &[
            ("FLEETSYNC_FOLDER_DOCS_SETTLE", "5s"),
            ("FLEETSYNC_MESH_MDNS", "false"),
        ],
        &overrides,
    )
    .unwrap();
    let s = c.settings();
    let row = |k: &str| {
        let r = setting(&s, k);
        (r.value.as_str(), r.source.to_string())
    };
    assert_eq!(row("mesh.listen"), ("0.0.0.0:7400", "file".into()));
    assert_eq!(
        row("mesh.mdns"),
        ("false", "env FLEETSYNC_MESH_MDNS".into())
    );
    assert_eq!(row("log.level"), ("warn", "flag --log-level".into()));
    assert_eq!(
        row("admin.listen"),
        (DEFAULT_ADMIN_LISTEN, "default".into())
    );
    assert_eq!(row("folders[0].versions.keep"), ("7d", "file".into()));
    assert_eq!(
        row("folders[0].versions.max_bytes"),
        ("1GiB", "default".into())
    );
    assert_eq!(row("folders[0].tombstone_ttl"), ("180d", "default".into()));
    assert_eq!(
        row("folders[0].settle"),
        ("5s", "env FLEETSYNC_FOLDER_DOCS_SETTLE".into())
    );
    assert_eq!(row("folders[0].path"), ("/srv/docs", "file".into()));
    // data_dir: the config file's directory by default.
    assert_eq!(row("data_dir"), ("/etc/fleetsync", "default".into()));
}

#[test]
fn settings_never_show_the_fleet_secret() {
    let c = parse(&with_secret(""));
    let s = c.settings();
    assert_eq!(setting(&s, "mesh.fleet_secret").value, REDACTED);
    assert_eq!(setting(&s, "mesh.fleet_secret").source, Source::File);
    let all = format!("{s:?}");
    assert!(!all.contains(SECRET), "{all}");
    let c = try_parse_full(
        "[mesh]\n",
        &[("FLEETSYNC_MESH_FLEET_SECRET", SECRET)],
        &Overrides::default(),
    )
    .unwrap();
    let s = c.settings();
    assert_eq!(
        setting(&s, "mesh.fleet_secret").source,
        Source::Env("FLEETSYNC_MESH_FLEET_SECRET".into())
    );
}

#[test]
fn settings_list_every_key_of_every_folder_once() {
    let c = parse(&with_secret(
        "[[folders]]\nid = \"a\"\npath = \"/srv/a\"\n[[folders]]\nid = \"b\"\npath = \"/srv/b\"\n",
    ));
    let s = c.settings();
    let keys: std::collections::BTreeSet<&str> = s.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys.len(), s.len(), "a key listed twice");
    for k in [
        "folders[0].umask",
        "folders[1].tombstone_ttl",
        "supervisor.restart_window",
    ] {
        assert!(keys.contains(k), "{k} missing");
    }
    // Every key the origins map can name is one the listing shows.
    let c = try_parse_full(
        &with_secret("[[folders]]\nid = \"a\"\npath = \"/srv/a\"\nversions = \"off\"\n"),
        &[],
        &Overrides::default(),
    )
    .unwrap();
    let listed: Vec<String> = c.settings().into_iter().map(|r| r.key).collect();
    for k in c.origins.keys() {
        assert!(listed.contains(k), "origin of {k} is shown nowhere");
    }
    assert_eq!(setting(&c.settings(), "folders[0].versions").value, "off");
}

// ------------------------------------------------- no config file (env only)

fn try_env_only(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_env(env(vars), &Overrides::default())
}

#[track_caller]
fn env_only_err(vars: &[(&str, &str)]) -> ConfigError {
    match try_env_only(vars) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn env_alone_gives_a_whole_config() {
    let c = try_env_only(&[
        ("FLEETSYNC_DATA_DIR", "/var/lib/fleetsync"),
        ("FLEETSYNC_MESH_FLEET_SECRET", SECRET),
        ("FLEETSYNC_FOLDERS", "shared=/srv/shared, logs=/srv/logs,"),
        ("FLEETSYNC_FOLDER_LOGS_MODE", "send-only"),
        ("FLEETSYNC_MESH_MDNS", "false"),
    ])
    .unwrap();
    assert_eq!(c.config_path, None);
    assert_eq!(c.data_dir, Path::new("/var/lib/fleetsync"));
    assert_eq!(c.mesh.fleet_secret.to_hex(), SECRET);
    assert!(!c.mesh.mdns);
    let ids: Vec<(&str, &Path)> = c
        .folders
        .iter()
        .map(|f| (f.id.as_str(), f.path.as_path()))
        .collect();
    assert_eq!(
        ids,
        [
            ("shared", Path::new("/srv/shared")),
            ("logs", Path::new("/srv/logs"))
        ]
    );
    assert_eq!(c.folder("logs").unwrap().mode, FolderMode::SendOnly);
    assert_eq!(c.folder("shared").unwrap().mode, FolderMode::SendReceive);
    // Everything else is a default, and `config show` says where each came from.
    assert_eq!(
        c.admin.listen,
        DEFAULT_ADMIN_LISTEN.parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        c.origins.get("folders[1].path"),
        Some(&Source::Env("FLEETSYNC_FOLDERS".into()))
    );
}

#[test]
fn env_alone_reads_the_secret_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("fleet.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let secret = secret.display().to_string();
    let c = try_env_only(&[
        ("FLEETSYNC_DATA_DIR", "/data"),
        ("FLEETSYNC_MESH_FLEET_SECRET_FILE", &secret),
    ])
    .unwrap();
    assert_eq!(c.mesh.fleet_secret.to_hex(), SECRET);
    assert!(
        c.folders.is_empty(),
        "no folders is a relay node, as with a file"
    );
}

#[test]
fn env_alone_without_data_dir_names_the_variable() {
    let e = env_only_err(&[
        ("FLEETSYNC_MESH_FLEET_SECRET", SECRET),
        ("FLEETSYNC_FOLDERS", "shared=/srv/shared"),
    ]);
    assert_invalid_at(&e, "<env>", "FLEETSYNC_DATA_DIR", "set FLEETSYNC_DATA_DIR=");
}

#[test]
fn env_alone_without_secret_names_both_variables() {
    let e = env_only_err(&[
        ("FLEETSYNC_DATA_DIR", "/data"),
        ("FLEETSYNC_FOLDERS", "shared=/srv/shared"),
    ]);
    assert_invalid_at(
        &e,
        "<env>",
        "FLEETSYNC_MESH_FLEET_SECRET",
        "FLEETSYNC_MESH_FLEET_SECRET_FILE=",
    );
    assert!(!e.to_string().contains("fleetsync init"), "{e}");
}

#[test]
fn env_folders_bad_entries_name_the_variable_and_entry() {
    let base = [
        ("FLEETSYNC_DATA_DIR", "/data"),
        ("FLEETSYNC_MESH_FLEET_SECRET", SECRET),
    ];
    for (value, says) in [
        (
            "shared=/srv/shared,/srv/logs",
            "entry 2 \"/srv/logs\": no '='",
        ),
        ("=/srv/shared", "entry 1 \"=/srv/shared\": the folder id"),
        ("shared=", "the path after '=' is empty"),
    ] {
        let mut vars = base.to_vec();
        vars.push(("FLEETSYNC_FOLDERS", value));
        let e = env_only_err(&vars);
        assert_invalid_at(&e, "<env>", "FLEETSYNC_FOLDERS", "ID=PATH");
        assert!(problem(&e).contains(says), "{value}: {e}");
    }
    // Ids and paths are checked like a file's, and blamed on the variable.
    for (value, says) in [
        ("my folder=/srv/x", "invalid folder id"),
        ("a=/srv/a,a=/srv/b", "duplicate folder id"),
        ("a=/srv/a,b=/srv/a/b", "is inside"),
        ("a=/data/a", "inside data_dir"),
    ] {
        let mut vars = base.to_vec();
        vars.push(("FLEETSYNC_FOLDERS", value));
        let e = env_only_err(&vars);
        assert_eq!(e.key(), Some("FLEETSYNC_FOLDERS"), "{value}: {e}");
        assert!(problem(&e).contains(says), "{value}: {e}");
    }
}

#[test]
fn env_folders_replace_the_files_folders() {
    let file = format!("{}{}", with_secret(""), folder_toml("docs", "/srv/docs"));
    let c = try_parse_full(
        &file,
        &[
            ("FLEETSYNC_FOLDERS", "photos=/srv/photos"),
            ("FLEETSYNC_FOLDER_PHOTOS_SETTLE", "3s"),
        ],
        &Overrides::default(),
    )
    .unwrap();
    let ids: Vec<&str> = c.folders.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, ["photos"]);
    assert_eq!(c.folders[0].settle, Duration::from_secs(3));
    // The file's folder is gone, so its variables are unknown now.
    let e = err_full(
        &file,
        &[
            ("FLEETSYNC_FOLDERS", "photos=/srv/photos"),
            ("FLEETSYNC_FOLDER_DOCS_SETTLE", "3s"),
        ],
        &Overrides::default(),
    );
    assert_invalid_at(
        &e,
        "<env>",
        "FLEETSYNC_FOLDER_DOCS_SETTLE",
        "<ID> one of PHOTOS",
    );
}

#[test]
fn env_folder_variable_without_any_folder_points_at_env_folders() {
    let e = env_only_err(&[
        ("FLEETSYNC_DATA_DIR", "/data"),
        ("FLEETSYNC_MESH_FLEET_SECRET", SECRET),
        ("FLEETSYNC_FOLDER_SHARED_PATH", "/srv/shared"),
    ]);
    assert_invalid_at(
        &e,
        "<env>",
        "FLEETSYNC_FOLDER_SHARED_PATH",
        "or in FLEETSYNC_FOLDERS",
    );
}
