//! `fleetsync invite` and `fleetsync join`: adding a node to a fleet with
//! one copy-pasteable string instead of a hand-copied secret and peer list.
//!
//! `invite` prints a [`FleetTicket`] (fleet secret, this node's id and
//! addresses, expiry) as the last line of stdout, so scripts can take it
//! with `tail -n1`. `join` turns a ticket into a config file rendered
//! exactly like `init`'s, with the inviting node as a static peer. Neither
//! command logs; the ticket and the secret only ever reach stdout (invite)
//! and the 0600 config file (join).

use std::{
    io::Read as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};
use fleetsync_config::{
    render_init_config, Config, FleetSecret, InitParams, Overrides, PeerAddr, PeerHost,
    CONFIG_FILE_NAME, DEFAULT_ADMIN_LISTEN, DEFAULT_MESH_LISTEN,
};
use fleetsync_mesh::{
    identity,
    ticket::{FleetTicket, MAX_TICKET_ADDRS, MAX_TICKET_HOSTS},
};

use crate::cli::{absolute, folder_id_from_path, write_private, EXIT_USAGE};

/// Variables that would replace the ticket's secret at run time, leaving a
/// node that never joins: `join` refuses to write a config while one is set.
const SECRET_VARS: [&str; 2] = [
    "FLEETSYNC_MESH_FLEET_SECRET",
    "FLEETSYNC_MESH_FLEET_SECRET_FILE",
];

/// Print a join ticket for the node configured in `config`: info lines,
/// then the ticket as the last line.
/// `expires_text` is `expires` as the user wrote it, for the info line.
pub fn invite(
    config: &Config,
    expires: Duration,
    expires_text: &str,
    addrs: &[String],
) -> anyhow::Result<i32> {
    let key = identity::load_or_create(&config.data_dir)?;
    let me = key.public();
    let (ips, hosts) = ticket_addrs(config, &me.to_string(), addrs)?;
    if ips.len() > MAX_TICKET_ADDRS || hosts.len() > MAX_TICKET_HOSTS {
        bail!("a ticket holds at most {MAX_TICKET_ADDRS} addresses and {MAX_TICKET_HOSTS} host names; pass fewer --addr");
    }
    let expires_at = SystemTime::now()
        .checked_add(expires)
        .with_context(|| format!("--expires {expires_text}: too far in the future"))?;
    let ticket = FleetTicket {
        secret: config.mesh.fleet_secret.0,
        node: me,
        addrs: ips.clone(),
        hosts: hosts.clone(),
        expires_unix: expires_at
            .duration_since(UNIX_EPOCH)
            .context("system clock before 1970")?
            .as_secs(),
    };
    let shown: Vec<String> = ips
        .iter()
        .map(ToString::to_string)
        .chain(hosts.iter().map(|(h, p)| format!("{h}:{p}")))
        .collect();
    println!("node id:   {me}");
    println!("addresses: {}", shown.join(", "));
    println!("expires:   in {expires_text} (join refuses it afterwards)");
    if hosts.is_empty() && ips.iter().all(|a| a.ip().is_loopback()) {
        eprintln!("fleetsync: warning: the ticket only holds loopback addresses, so only nodes on this machine can use it; pass --addr HOST:PORT for other machines");
    }
    println!("join with: fleetsync join <ticket> --data-dir DIR --folder PATH");
    println!("the ticket holds the fleet secret: pass it on privately");
    println!("{}", ticket.encode());
    Ok(0)
}

/// A host name and port, as tickets carry them.
type HostPort = (String, u16);

/// Where the new node should dial us. The first that applies: `--addr`
/// (IP or host name), the running node's listen addresses, a specific
/// `mesh.listen`.
fn ticket_addrs(
    config: &Config,
    my_id: &str,
    given: &[String],
) -> anyhow::Result<(Vec<SocketAddr>, Vec<HostPort>)> {
    let (mut ips, mut hosts) = (Vec::new(), Vec::new());
    for a in given {
        match a
            .parse::<PeerHost>()
            .map_err(|e| anyhow::anyhow!("--addr {a}: {e}"))?
        {
            PeerHost::Ip(ip) if ip.ip().is_unspecified() => {
                bail!("--addr {a}: an unspecified address cannot be dialled; give this machine's address")
            }
            PeerHost::Ip(ip) => ips.push(ip),
            PeerHost::Name { host, port } => hosts.push((host, port)),
        }
    }
    if !ips.is_empty() || !hosts.is_empty() {
        return Ok((ips, hosts));
    }
    if let Some(running) = running_listen(config, my_id) {
        return Ok((running, hosts));
    }
    let listen = config.mesh.listen;
    if !listen.ip().is_unspecified() && listen.port() != 0 {
        return Ok((vec![listen], hosts));
    }
    bail!(
        "cannot tell which address other nodes should dial: the node is not running and mesh.listen ({listen}) \
         is not a specific address; pass --addr HOST:PORT (this machine's address and mesh port, e.g. --addr 192.0.2.10:{})",
        listen.port()
    )
}

/// The listen addresses the running node reports, if it answers and is
/// the node this config describes.
fn running_listen(config: &Config, my_id: &str) -> Option<Vec<SocketAddr>> {
    let addr = crate::client::admin_addr(config).ok()?;
    let body = crate::client::get(&crate::client::Endpoint::Tcp(addr), "/status").ok()?;
    let st: serde_json::Value = serde_json::from_str(&body).ok()?;
    if st.get("id")?.as_str()? != my_id {
        return None;
    }
    let listen: Vec<SocketAddr> = st
        .get("listen")?
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str()?.parse().ok())
        .filter(|a: &SocketAddr| !a.ip().is_unspecified() && a.port() != 0)
        .collect();
    (!listen.is_empty()).then_some(listen)
}

/// What `join` was asked to do.
pub struct JoinRequest {
    /// The ticket, or `-` for stdin.
    pub ticket: String,
    pub data_dir: PathBuf,
    pub folder: PathBuf,
    pub folder_id: Option<String>,
    pub force: bool,
}

/// Write a config that makes this node a member of the ticket's fleet.
pub fn join(req: JoinRequest) -> anyhow::Result<i32> {
    let ticket = match read_ticket(&req.ticket) {
        Ok(t) => t,
        Err(msg) => {
            eprintln!("fleetsync: {msg}");
            return Ok(EXIT_USAGE);
        }
    };
    let env = fleetsync_config::process_env()?;
    if let Some((name, _)) = env.iter().find(|(n, _)| SECRET_VARS.contains(&n.as_str())) {
        bail!("{name} is set and would replace the ticket's fleet secret; unset it before joining");
    }
    let data_dir = absolute(&req.data_dir)?;
    let config_path = data_dir.join(CONFIG_FILE_NAME);
    if config_path.exists() && !req.force {
        bail!(
            "{} already exists; pass --force to overwrite it (the identity is kept)",
            config_path.display()
        );
    }
    let folder = absolute(&req.folder)?;
    let folder_id = req
        .folder_id
        .clone()
        .unwrap_or_else(|| folder_id_from_path(&folder));
    std::fs::create_dir_all(&data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let key = identity::load_or_create(&data_dir)?;
    if key.public() == ticket.node {
        bail!("this data dir is the inviting node's own; join with a new --data-dir");
    }
    let mut params = InitParams {
        data_dir: data_dir.clone(),
        folders: vec![(folder_id, folder)],
        fleet_secret: FleetSecret(ticket.secret),
        mesh_listen: DEFAULT_MESH_LISTEN.parse().expect("default mesh listen"),
        admin_listen: DEFAULT_ADMIN_LISTEN.parse().expect("default admin listen"),
        peers: vec![],
        ticket_peers: ticket_peers(&ticket),
        mdns: true,
    };
    // The environment decides listen addresses and mDNS the way it will
    // when the node runs: load the file with it, then write the values it
    // yields, so the file works with or without those variables set.
    let effective = validate(&render_init_config(&params), &config_path, &env)?;
    params.mesh_listen = effective.mesh.listen;
    params.admin_listen = effective.admin.listen;
    params.mdns = effective.mesh.mdns;
    let text = render_init_config(&params);
    validate(&text, &config_path, &env)?;
    write_private(&config_path, &text)?;
    println!("node id: {}", key.public());
    println!("config:  {}", config_path.display());
    println!("joins the fleet through {}", ticket.node);
    println!(
        "start with: fleetsync run --data-dir {}",
        data_dir.display()
    );
    Ok(0)
}

/// Load config text as the daemon would load the file at `path`.
fn validate(text: &str, path: &Path, env: &[(String, String)]) -> anyhow::Result<Config> {
    Ok(Config::from_toml_str(
        text,
        path,
        env.iter().cloned(),
        &Overrides::default(),
    )?)
}

/// Decode and check a ticket; the error is the one line to print.
fn read_ticket(arg: &str) -> Result<FleetTicket, String> {
    let text = if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut s)
            .map_err(|e| format!("cannot read the ticket from stdin: {e}"))?;
        s
    } else {
        arg.to_string()
    };
    let ticket = FleetTicket::parse(&text).map_err(|e| e.to_string())?;
    ticket
        .check_fresh(SystemTime::now())
        .map_err(|e| e.to_string())?;
    if ticket.addrs.is_empty() && ticket.hosts.is_empty() {
        return Err("the ticket holds no address to reach the fleet; ask for one made with --addr HOST:PORT".into());
    }
    Ok(ticket)
}

/// The inviting node as static peers, one per address or host name.
fn ticket_peers(t: &FleetTicket) -> Vec<PeerAddr> {
    let id = *t.node.as_bytes();
    t.addrs
        .iter()
        .map(|a| PeerHost::Ip(*a))
        .chain(t.hosts.iter().map(|(host, port)| PeerHost::Name {
            host: host.clone(),
            port: *port,
        }))
        .map(|addr| PeerAddr { id, addr })
        .collect()
}
